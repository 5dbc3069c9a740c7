//! Options of the store and of each column family, with documented defaults.

use std::sync::Arc;

use crate::clock::{SharedClock, system_clock};
use crate::codec::block::Compression;
use crate::error::{Error, Result};
use crate::lsm::compaction::CompactionOptions;
use crate::lsm::merge::{AppendOperator, CompactionFilter, MergeOperator};
use crate::lsm::sst::SstOptions;
use crate::lsm::version::NUM_LEVELS;
use crate::lsm::wal::{RecoveryMode, SyncMode};

/// Default memtable size before it is flushed: 64 MiB.
pub const DEFAULT_WRITE_BUFFER_SIZE: usize = 64 << 20;
/// Default block cache size: 64 MiB.
pub const DEFAULT_BLOCK_CACHE_SIZE: usize = 64 << 20;

/// Options of one column family.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CfOptions {
    /// SST layout: block size, restart interval, compression, bloom bits per key.
    pub sst: SstOptions,
    /// Compression of the files written to each level, from L0 down (RocksDB's
    /// `compression_per_level`): a flush or compaction writing level `l` uses
    /// `compression_per_level[l]`, and `sst.compression` when the list is shorter (default
    /// empty: `sst.compression` everywhere). A file keeps its compression when a compaction moves
    /// it to another level without rewriting it; readers need no option (each block records its
    /// own).
    pub compression_per_level: Vec<Compression>,
    /// Leveled compaction sizes.
    pub compaction: CompactionOptions,
    /// Combines merge operands (default: [`AppendOperator`]).
    pub merge_operator: Option<Arc<dyn MergeOperator>>,
    /// Sees every live value during compaction and may drop it (default: none).
    pub compaction_filter: Option<Arc<dyn CompactionFilter>>,
    /// A file no compaction touched for this long (ms, by the store's clock) is compacted anyway,
    /// so the compaction filter reaches cold files (default: never).
    pub periodic_compaction_ms: Option<u64>,
}

impl Default for CfOptions {
    fn default() -> Self {
        CfOptions {
            sst: SstOptions::default(),
            compression_per_level: Vec::new(),
            compaction: CompactionOptions::default(),
            merge_operator: Some(Arc::new(AppendOperator)),
            compaction_filter: None,
            periodic_compaction_ms: None,
        }
    }
}

/// Options of a store.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// Create the store if the directory holds none (default true).
    pub create_if_missing: bool,
    /// Bytes a memtable may hold before it is frozen and flushed (default 64 MiB). All column
    /// families' memtables are frozen together, so one flush covers one consistent sequence.
    pub write_buffer_size: usize,
    /// Memtables (active plus frozen) before writers stall waiting for a flush (default 2).
    pub max_write_buffers: usize,
    /// Entries a memtable's skiplist takes before it is sealed into a sorted run (default
    /// 2048). Sealed entries cost their bytes
    /// plus a 24-byte slot instead of ~80 bytes of skiplist node and allocation; tests use tiny
    /// values so that runs and their merges happen on small workloads.
    pub memtable_buffer_entries: usize,
    /// Writers stall while any column family has this many L0 sorted runs (default 24; the
    /// files of one flush count once, `version::l0_runs`).
    pub level0_stop_writes: usize,
    /// Capacity of the block cache for decompressed blocks (default 64 MiB).
    pub block_cache_size: usize,
    /// The memory budget this store charges its memtables, block cache and open tables'
    /// indexes and filters to, shared with the other stores and backends on it (default none:
    /// only the sizes above bound the store). See [`crate::budget`].
    pub memory_budget: Option<Arc<crate::budget::MemoryBudget>>,
    /// Write no WAL at all (RocksDB's `disableWAL`): writes are faster and a memtable switch
    /// does no file I/O, but everything not yet flushed is lost when the process dies. For users
    /// whose durability comes from elsewhere, such as a state backend restoring from checkpoints
    /// (default false).
    pub disable_wal: bool,
    /// When the WAL is fsynced (default: on `sync_wal`/`flush` only, like RocksDB's
    /// `sync = false`; use [`SyncMode::EveryBatch`] for per-write durability against power loss).
    pub wal_sync: SyncMode,
    /// How WAL damage is treated on open (default: drop a torn tail, fail on damage before it).
    pub wal_recovery: RecoveryMode,
    /// The manifest is rewritten once it exceeds this many bytes (default 4 MiB).
    pub max_manifest_size: u64,
    /// Options of column families (the default one included) by name; others get
    /// `default_cf_options`.
    pub cf_options: Vec<(String, CfOptions)>,
    /// Options for column families not listed in `cf_options`.
    pub default_cf_options: CfOptions,
    /// Time source for file creation times and periodic compaction.
    pub clock: SharedClock,
    /// Read SST files through memory maps (RocksDB's `allow_mmap_reads`; default false). With
    /// false, data blocks are read with `pread` into the block cache: file pages then stay in the
    /// kernel's page cache, outside this process's RSS, instead of counting in it once touched.
    pub allow_mmap_reads: bool,
    /// Run flushes and compactions on a background thread (default true). With false they run
    /// only through `flush`/`compact_range`/`run_background_work` (deterministic tests).
    pub background_work: bool,
    /// The file system every file of the store is on (default: the real one, [`crate::fs::StdFs`];
    /// tests use [`crate::fs::SimFs`]).
    pub fs: crate::fs::FsRef,
}

impl CfOptions {
    /// Checks the options of column family `name`; [`Error::InvalidOption`] names the first
    /// bad one (as `CfOptions::<field>` with the column family) and what it must be.
    pub fn validate(&self, name: &str) -> Result<()> {
        let option = |field: &str| format!("lsm::CfOptions::{field} of column family '{name}'");
        self.sst.validate().map_err(|e| match e {
            Error::InvalidOption {
                option: field,
                what,
            } => Error::invalid_option(option(&format!("sst.{field}")), what),
            other => other,
        })?;
        if self.compression_per_level.len() > NUM_LEVELS {
            return Err(Error::invalid_option(
                option("compression_per_level"),
                format!(
                    "has {} entries, the store has {NUM_LEVELS} levels",
                    self.compression_per_level.len()
                ),
            ));
        }
        for level in 0..self.compression_per_level.len() {
            self.sst_for_level(level).validate().map_err(|e| match e {
                Error::InvalidOption { what, .. } => {
                    Error::invalid_option(option(&format!("compression_per_level[{level}]")), what)
                }
                other => other,
            })?;
        }
        let c = &self.compaction;
        if c.level0_file_trigger == 0 {
            return Err(Error::invalid_option(
                option("compaction.level0_file_trigger"),
                "must be at least 1",
            ));
        }
        if c.max_bytes_for_level_base == 0 {
            return Err(Error::invalid_option(
                option("compaction.max_bytes_for_level_base"),
                "must be at least 1",
            ));
        }
        if c.target_file_size == 0 {
            return Err(Error::invalid_option(
                option("compaction.target_file_size"),
                "must be at least 1",
            ));
        }
        if c.level_size_multiplier < 2 {
            return Err(Error::invalid_option(
                option("compaction.level_size_multiplier"),
                format!("must be at least 2, not {}", c.level_size_multiplier),
            ));
        }
        if self.periodic_compaction_ms == Some(0) {
            return Err(Error::invalid_option(
                option("periodic_compaction_ms"),
                "must be above 0 (None turns it off)",
            ));
        }
        Ok(())
    }
}
impl Options {
    /// Checks the options ([`Db::open`](crate::lsm::Db::open) does, before touching any file);
    /// [`Error::InvalidOption`] names the first bad option and what it must be.
    pub fn validate(&self) -> Result<()> {
        let at_least_one = [
            ("write_buffer_size", self.write_buffer_size),
            ("max_write_buffers", self.max_write_buffers),
            ("memtable_buffer_entries", self.memtable_buffer_entries),
            ("level0_stop_writes", self.level0_stop_writes),
        ];
        for (name, value) in at_least_one {
            if value == 0 {
                return Err(Error::invalid_option(
                    format!("lsm::Options::{name}"),
                    "must be at least 1, not 0",
                ));
            }
        }
        if self.max_manifest_size < 1024 {
            return Err(Error::invalid_option(
                "lsm::Options::max_manifest_size",
                format!(
                    "must be at least 1024 bytes, not {}",
                    self.max_manifest_size
                ),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (name, cf) in &self.cf_options {
            if name.is_empty() || !names.insert(name.as_str()) {
                return Err(Error::invalid_option(
                    "lsm::Options::cf_options",
                    format!("column family name '{name}' is empty or listed twice"),
                ));
            }
            cf.validate(name)?;
        }
        self.default_cf_options.validate("(default options)")
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            create_if_missing: true,
            write_buffer_size: DEFAULT_WRITE_BUFFER_SIZE,
            max_write_buffers: 2,
            memtable_buffer_entries: crate::lsm::memtable::DEFAULT_BUFFER_ENTRIES,
            level0_stop_writes: 24,
            block_cache_size: DEFAULT_BLOCK_CACHE_SIZE,
            memory_budget: None,
            disable_wal: false,
            wal_sync: SyncMode::default(),
            wal_recovery: RecoveryMode::TolerateTornTail,
            max_manifest_size: 4 << 20,
            cf_options: Vec::new(),
            default_cf_options: CfOptions::default(),
            clock: system_clock(),
            allow_mmap_reads: false,
            background_work: true,
            fs: crate::fs::std_fs(),
        }
    }
}

impl Options {
    /// A new, empty memtable as these options make them, charged to `pool` (the store's share
    /// of the memory budget).
    pub(crate) fn new_memtable(
        &self,
        pool: &Option<Arc<crate::budget::Pool>>,
    ) -> crate::lsm::memtable::Memtable {
        crate::lsm::memtable::Memtable::with_pool(self.memtable_buffer_entries, pool.clone())
    }

    /// The options for column family `name`.
    pub fn cf(&self, name: &str) -> CfOptions {
        self.cf_options
            .iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| self.default_cf_options.clone(), |(_, o)| o.clone())
    }
}

impl CfOptions {
    /// The SST options of a file written to `level`: `sst` with that level's compression
    /// ([`CfOptions::compression_per_level`]).
    pub(crate) fn sst_for_level(&self, level: usize) -> SstOptions {
        let mut sst = self.sst;
        if let Some(compression) = self.compression_per_level.get(level) {
            sst.compression = *compression;
        }
        sst
    }

    option_setters! { CfOptions {
        sst: SstOptions,
        compression_per_level: Vec<Compression>,
        compaction: CompactionOptions,
        merge_operator: Option<Arc<dyn MergeOperator>>,
        compaction_filter: Option<Arc<dyn CompactionFilter>>,
        periodic_compaction_ms: Option<u64>,
    }}
}

impl Options {
    option_setters! { Options {
        create_if_missing: bool,
        write_buffer_size: usize,
        max_write_buffers: usize,
        memtable_buffer_entries: usize,
        level0_stop_writes: usize,
        block_cache_size: usize,
        memory_budget: Option<Arc<crate::budget::MemoryBudget>>,
        disable_wal: bool,
        wal_sync: SyncMode,
        wal_recovery: RecoveryMode,
        max_manifest_size: u64,
        default_cf_options: CfOptions,
        clock: SharedClock,
        allow_mmap_reads: bool,
        background_work: bool,
        fs: crate::fs::FsRef,
    }}

    /// Sets the options of column family `name` (added to [`Options::cf_options`], replacing
    /// an earlier entry of the same name).
    pub fn cf_options(mut self, name: impl Into<String>, options: CfOptions) -> Self {
        let name = name.into();
        self.cf_options.retain(|(n, _)| *n != name);
        self.cf_options.push((name, options));
        self
    }
}
