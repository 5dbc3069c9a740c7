//! [`LsmBackend`]: keyed state in the `lsm` store on local disk, with incremental checkpoints.
//!
//! Like Flink's EmbeddedRocksDBStateBackend: one column family per state, composite keys as user
//! keys, list append as a merge (no read), TTL cleanup by a compaction filter. Checkpoints upload
//! only SST files checkpoint storage does not hold yet (`checkpoint.rs`, DESIGN note there and
//! FORMAT.md §11); restore links the files of its key groups into a fresh store, rewriting the
//! few that straddle its range's boundaries with the owned entries only (`restore.rs`). Invariant: the store holds only keys of the backend's key-group range.

mod checkpoint;
mod full;
pub(crate) mod layout;
pub(crate) mod local_recovery;
mod restore;
mod transfer;
pub(crate) mod write_cache;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use self::checkpoint::{Incremental, LsmSnapshotTask};
use self::write_cache::{Lookup, WriteCache};
use super::{
    BackendConfig, BackendKind, EntryIter, ReadModifyWrite, SnapshotHandle, SnapshotTask,
    StateBackend, StateDescriptor, StateId, StateKind, check_key_group,
};
use crate::checkpoint::registry::{CheckpointRegistry, RecoveryReport};
use crate::checkpoint::retention::DEFAULT_RETAINED_CHECKPOINTS;
use crate::checkpoint::storage::CheckpointStorage;
use crate::codec::block::Compression;
use crate::error::{Error, Result};
use crate::keys::KeyGroupRange;
use crate::lsm::batch::WriteBatch;
use crate::lsm::db_iter::prefix_upper_bound;
use crate::lsm::merge::{CompactionFilter, FilterDecision};
use crate::lsm::options::{DEFAULT_BLOCK_CACHE_SIZE, DEFAULT_WRITE_BUFFER_SIZE};
use crate::lsm::{CfOptions, ColumnFamily, Db, Options, ReadOptions};
use crate::ttl::{SharedClock, TtlConfig, drop_expired};

pub use checkpoint::CheckpointStats;
pub use restore::RestoreStats;

/// Prefix of a state's column family name: `state:<name>` (so no state collides with the
/// store's `default` column family).
pub(crate) const CF_PREFIX: &str = "state:";

/// `delete_prefix` over at most this many keys deletes them one by one; a larger one writes a
/// range tombstone (tombstones stay in the version until a manual compaction, so many small
/// ones would slow every read).
pub(crate) const POINT_DELETE_LIMIT: usize = 64;

/// Default lower bound of the bytes of the materialization target one checkpoint uploads: 4 MiB.
pub const DEFAULT_MIN_MATERIALIZATION_BYTES: u64 = 4 << 20;

/// Default capacity of the write-back cache ([`LsmBackendOptions::write_cache_size`]): 64 MiB.
pub const DEFAULT_WRITE_CACHE_SIZE: usize = 64 << 20;

/// Default compression of L0, L1 and L2 in [`LsmBackendOptions::compression_per_level`]: LZ4.
///
/// Why: the upper levels are where the work is. Every flush (on a checkpoint's path) writes L0,
/// and L0 to L2 are rewritten by compaction again and again while their data is young and
/// read the most; LZ4 compresses about 1.35x and reads blocks beyond the cache about 1.5x
/// faster than zstd level 1 (`cargo bench --bench lsm -- lsm_compression`, BENCHMARKS.md) for
/// about 8% more bytes. Data that settles below L2 (beyond ~700 MB per backend with the
/// default sizes) is most of a large state and rarely rewritten, so there zstd's ratio saves
/// disk and checkpoint bytes at little cost.
pub const DEFAULT_COMPRESSION_PER_LEVEL: [Compression; 3] =
    [Compression::Lz4, Compression::Lz4, Compression::Lz4];

/// Default size at which compaction output files are cut: 4 MiB.
pub const DEFAULT_TARGET_FILE_SIZE: u64 = 4 << 20;

/// Options of an [`LsmBackend`], with documented defaults: start from
/// [`LsmBackendOptions::new`] (the one option without a default is the working directory;
/// `Default` leaves it empty, which [`LsmBackendOptions::validate`] rejects, for code that
/// builds one set of options for several backends) and change fields with the setters of the
/// same names. [`LsmBackend::open`] checks them
/// ([`LsmBackendOptions::validate`]) before it touches any file.
///
/// ```
/// use flowstate::LsmBackendOptions;
/// use flowstate::lsm::Compression;
///
/// let options = LsmBackendOptions::new("/var/lib/job/state")
///     .write_buffer_size(16 << 20)
///     .state_compression("events", Compression::None)
///     .retained_checkpoints(3);
/// assert!(options.validate().is_ok());
/// assert!(options.clone().delta_ratio(-1.0).validate().is_err());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LsmBackendOptions {
    /// Directory of the working store (no default; created if missing). Each backend opens a
    /// fresh store `db-<instance>-<n>` in it and removes the stores a crashed or dropped backend
    /// left there, so two live backends must not share one.
    pub working_dir: PathBuf,
    /// Memtable size before a flush (default 64 MiB, the store's default).
    pub write_buffer_size: usize,
    /// Block cache capacity (default 64 MiB).
    pub block_cache_size: usize,
    /// Compression of SST data blocks in the levels `compression_per_level` does not list
    /// (default zstd level 3).
    pub compression: Compression,
    /// Compression of the files written to L0, L1, ... (default LZ4 for L0 to L2; see
    /// [`DEFAULT_COMPRESSION_PER_LEVEL`] for why), `compression` below them.
    pub compression_per_level: Vec<Compression>,
    /// Per-state overrides by state name: the state's files use this compression at every
    /// level, instead of `compression_per_level` and `compression` (default none).
    pub state_compression: Vec<(String, Compression)>,
    /// Completed checkpoints kept (default
    /// [`crate::checkpoint::DEFAULT_RETAINED_CHECKPOINTS`]; 0 counts
    /// as 1).
    pub retained_checkpoints: usize,
    /// TTL states get `periodic_compaction_ms = ttl` so cold files meet the TTL filter within a
    /// bounded time (FLINK-30854; default true).
    pub ttl_periodic_compaction: bool,
    /// A new materialization target is taken once the deltas exceed this fraction of the base's
    /// bytes (default 1.0: the average upload stays at most twice the changed data).
    pub delta_ratio: f64,
    /// ... or once one column family has delta files of this many flushes (default 100; the
    /// files of one flush count once).
    pub max_delta_files_per_cf: usize,
    /// A checkpoint uploads up to max(its delta bytes, this) of the target (default 4 MiB).
    pub min_materialization_bytes: u64,
    /// Compaction output files are cut at about this size (default 4 MiB). Small files make
    /// sharing between checkpoints finer and keep every file within one checkpoint's upload
    /// credit (`CREDIT_CAP` × `min_materialization_bytes`).
    pub target_file_size: u64,
    /// Run flushes and compactions on a background thread (default true).
    pub background_work: bool,
    /// Write full checkpoints instead of incremental ones (default false): every entry of every
    /// state as full snapshot files (FORMAT.md §5), so a checkpoint depends on no other and on no
    /// SST format; each costs the whole state, like Flink's full RocksDB snapshots.
    pub full_checkpoints: bool,
    /// Local recovery (Flink's `state.backend.local-recovery`; default off): keep hard-linked
    /// copies of the SSTs each checkpoint lists under this directory, and restore from a copy
    /// whose size, crc32 and xxh3 match instead of downloading it (`local_recovery`, FORMAT.md §11.6).
    /// Worth it when checkpoint storage is remote; it must be on the working store's file system.
    pub local_recovery_dir: Option<PathBuf>,
    /// Capacity of the write-back cache in front of the store (default
    /// [`DEFAULT_WRITE_CACHE_SIZE`]; 0 disables it; ignored with `full_checkpoints`): point
    /// reads and writes hit hash maps, and the writes of a checkpoint interval reach the store
    /// once per key, sorted, in the checkpoint's asynchronous part (Kafka Streams' record cache;
    /// `write_cache` module). Cached reads use up to this many bytes, writes not yet in the
    /// store up to half of it (then they are written to the store at once).
    pub write_cache_size: usize,
    /// One memory budget for this backend's write cache, memtables, block cache, open tables'
    /// indexes and filters, checkpoint write log and transfer buffers, shared with every other
    /// backend and store given the same budget (default none: each is bounded by its own size
    /// above). When it is full, caches evict, memtables flush and writers wait; see
    /// [`crate::budget`].
    pub memory_budget: Option<std::sync::Arc<crate::budget::MemoryBudget>>,
    /// The file system of the working store and the local-recovery copies (default the real
    /// one; crash tests use [`crate::fs::SimFs`], which can cut power at any operation).
    /// Checkpoint storage has its own.
    pub fs: crate::fs::FsRef,
}

/// Setters named after the fields they set (each documented on its field).
impl Default for LsmBackendOptions {
    /// The default options without a working directory (set it with
    /// [`LsmBackendOptions::working_dir`]).
    fn default() -> Self {
        LsmBackendOptions::new(PathBuf::new())
    }
}

impl LsmBackendOptions {
    /// The default options with the working store under `working_dir`.
    pub fn new(working_dir: impl Into<PathBuf>) -> Self {
        LsmBackendOptions {
            working_dir: working_dir.into(),
            write_buffer_size: DEFAULT_WRITE_BUFFER_SIZE,
            block_cache_size: DEFAULT_BLOCK_CACHE_SIZE,
            compression: Compression::Zstd { level: 3 },
            compression_per_level: DEFAULT_COMPRESSION_PER_LEVEL.to_vec(),
            state_compression: Vec::new(),
            retained_checkpoints: DEFAULT_RETAINED_CHECKPOINTS,
            ttl_periodic_compaction: true,
            delta_ratio: 1.0,
            max_delta_files_per_cf: 100,
            min_materialization_bytes: DEFAULT_MIN_MATERIALIZATION_BYTES,
            target_file_size: DEFAULT_TARGET_FILE_SIZE,
            background_work: true,
            full_checkpoints: false,
            local_recovery_dir: None,
            write_cache_size: DEFAULT_WRITE_CACHE_SIZE,
            memory_budget: None,
            fs: crate::fs::std_fs(),
        }
    }

    option_setters! { LsmBackendOptions {
        write_buffer_size: usize,
        block_cache_size: usize,
        compression: Compression,
        compression_per_level: Vec<Compression>,
        retained_checkpoints: usize,
        ttl_periodic_compaction: bool,
        delta_ratio: f64,
        max_delta_files_per_cf: usize,
        min_materialization_bytes: u64,
        target_file_size: u64,
        background_work: bool,
        full_checkpoints: bool,
        local_recovery_dir: Option<PathBuf>,
        write_cache_size: usize,
        memory_budget: Option<std::sync::Arc<crate::budget::MemoryBudget>>,
    }}

    /// Sets [`LsmBackendOptions::working_dir`].
    pub fn working_dir(mut self, working_dir: impl Into<PathBuf>) -> Self {
        self.working_dir = working_dir.into();
        self
    }

    /// Compresses the SST data blocks of `state` with `compression` at every level (added to
    /// [`LsmBackendOptions::state_compression`], replacing an earlier entry for the state).
    pub fn state_compression(mut self, state: impl Into<String>, compression: Compression) -> Self {
        let state = state.into();
        self.state_compression.retain(|(name, _)| *name != state);
        self.state_compression.push((state, compression));
        self
    }

    /// Sets [`LsmBackendOptions::fs`].
    pub fn fs(mut self, fs: crate::fs::FsRef) -> Self {
        self.fs = fs;
        self
    }

    /// Checks the options ([`LsmBackend::open`] does, before touching any file);
    /// [`Error::InvalidOption`] names the first bad one (as `LsmBackendOptions::<field>`) and
    /// what it must be.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, what: String| {
            Err(Error::invalid_option(
                format!("LsmBackendOptions::{field}"),
                what,
            ))
        };
        if self.working_dir.as_os_str().is_empty() {
            return bad(
                "working_dir",
                "must name a directory (LsmBackendOptions::new(dir) or .working_dir(dir))".into(),
            );
        }
        if self.write_buffer_size == 0 {
            return bad("write_buffer_size", "must be at least 1 byte".into());
        }
        let check_compression = |field: String, compression: Compression| {
            crate::lsm::SstOptions {
                compression,
                ..crate::lsm::SstOptions::default()
            }
            .validate()
            .or_else(|e| match e {
                Error::InvalidOption { what, .. } => bad(&field, what),
                other => Err(other),
            })
        };
        check_compression("compression".into(), self.compression)?;
        if self.compression_per_level.len() > crate::lsm::NUM_LEVELS {
            return bad(
                "compression_per_level",
                format!(
                    "has {} entries, the store has {} levels",
                    self.compression_per_level.len(),
                    crate::lsm::NUM_LEVELS
                ),
            );
        }
        for (level, compression) in self.compression_per_level.iter().enumerate() {
            check_compression(format!("compression_per_level[{level}]"), *compression)?;
        }
        for (state, compression) in &self.state_compression {
            check_compression(format!("state_compression['{state}']"), *compression)?;
        }
        if !(self.delta_ratio.is_finite() && self.delta_ratio > 0.0) {
            return bad(
                "delta_ratio",
                format!("must be a finite number above 0, not {}", self.delta_ratio),
            );
        }
        if self.max_delta_files_per_cf == 0 {
            return bad("max_delta_files_per_cf", "must be at least 1".into());
        }
        if self.target_file_size == 0 {
            return bad("target_file_size", "must be at least 1 byte".into());
        }
        Ok(())
    }
}

/// The TTL (ms) of each TTL state by name, shared with the states' compaction filters so that
/// [`LsmBackend::set_state_ttl`] reaches a filter the store already runs.
type TtlCells = Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>;

/// Drops expired TTL values (and expired list elements) during compaction.
#[derive(Debug)]
pub(crate) struct TtlCompactionFilter {
    ttl: TtlConfig,
    /// The current TTL in ms (`ttl.ttl_ms` as of the last `set_state_ttl`).
    ttl_ms: Arc<AtomicU64>,
    is_list: bool,
    clock: SharedClock,
}

impl TtlCompactionFilter {
    /// A filter for a state of `kind` with `ttl`, whose duration it reads from `ttl_ms` at
    /// every call, and the time from `clock`.
    fn new(ttl: TtlConfig, ttl_ms: Arc<AtomicU64>, kind: StateKind, clock: SharedClock) -> Self {
        TtlCompactionFilter {
            ttl,
            ttl_ms,
            is_list: kind == StateKind::List,
            clock,
        }
    }
}

impl CompactionFilter for TtlCompactionFilter {
    fn filter(&self, _level: usize, _key: &[u8], value: &[u8]) -> FilterDecision {
        let ttl = TtlConfig {
            ttl_ms: self.ttl_ms.load(Ordering::Relaxed),
            ..self.ttl
        };
        // A value that is not a well-formed envelope is kept: cleanup never destroys what it
        // cannot read.
        match drop_expired(self.is_list, &ttl, value, self.clock.now_ms()) {
            Ok(None) => FilterDecision::Remove,
            Ok(Some(kept)) if kept != value => FilterDecision::Change(kept),
            _ => FilterDecision::Keep,
        }
    }
}

/// Keyed state in the log-structured store with incremental checkpoints.
///
/// One `LsmBackend` writes to one checkpoint storage root (creating it scans the root and
/// removes incomplete checkpoints, FORMAT.md §4.4). Its store lives in a fresh directory under
/// `working_dir`.
///
/// ```
/// use std::sync::Arc;
/// use flowstate::{
///     BackendConfig, LocalDirStorage, LsmBackend, LsmBackendOptions, StateBackend,
///     StateDescriptor, StateKind,
/// };
/// use flowstate::keys::{composite_key, key_group_for_key};
///
/// let dir = tempfile::tempdir().unwrap();
/// let storage = Arc::new(LocalDirStorage::open(dir.path().join("checkpoints"))?);
/// let work = dir.path().join("work");
/// let mut backend =
///     LsmBackend::open(BackendConfig::default(), storage.clone(), LsmBackendOptions::new(&work))?;
/// let counts = backend.register(&StateDescriptor::new("counts", StateKind::Value))?;
/// let key = composite_key(key_group_for_key(b"alice", 128), b"alice", b"", b"");
/// backend.put(counts, &key, b"1")?;
/// backend.snapshot(1)?.run()?;
/// backend.put(counts, &key, b"2")?;
///
/// let mut restored =
///     LsmBackend::open(BackendConfig::default(), storage, LsmBackendOptions::new(&work))?;
/// assert_eq!(restored.restore_latest()?, Some(1));
/// let counts = restored.register(&StateDescriptor::new("counts", StateKind::Value))?;
/// assert_eq!(restored.get(counts, &key)?, Some(b"1".to_vec()));
/// # Ok::<(), flowstate::Error>(())
/// ```
#[derive(Debug)]
pub struct LsmBackend {
    config: BackendConfig,
    options: LsmBackendOptions,
    db_dir: PathBuf,
    db: Arc<Db>,
    storage: Arc<dyn CheckpointStorage>,
    registry: Arc<Mutex<CheckpointRegistry>>,
    recovery: RecoveryReport,
    states: Vec<(StateDescriptor, ColumnFamily)>,
    by_name: HashMap<String, StateId>,
    incremental: Arc<Mutex<Incremental>>,
    /// `Incremental::epoch` as of the last restore (only restores change it).
    epoch: u32,
    instance_id: u64,
    stores_opened: u32,
    last_restore: Option<Box<RestoreStats>>,
    /// Point reads and writes not yet in the store (see `write_cache`).
    cache: WriteCache,
    /// Stores a restore replaced while something (a snapshot task, a caller of
    /// [`LsmBackend::db`]) still held them: each directory is removed once its store is gone.
    retired: Vec<(std::sync::Weak<Db>, PathBuf)>,
    /// The TTL of each TTL state, as its compaction filter reads it.
    ttl_cells: TtlCells,
}

/// A random 64-bit id (no RNG crate: the std hasher's random keys, the time and the pid).
fn random_instance_id() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

impl LsmBackend {
    /// An empty backend whose store lives under [`LsmBackendOptions::working_dir`] and whose
    /// checkpoints go to `storage`. Checks `options` first ([`LsmBackendOptions::validate`]),
    /// then scans `storage` (see [`LsmBackend::recovery_report`]).
    pub fn open(
        config: BackendConfig,
        storage: Arc<dyn CheckpointStorage>,
        options: LsmBackendOptions,
    ) -> Result<Self> {
        options.validate()?;
        let working_dir = options.working_dir.clone();
        let working_dir = working_dir.as_path();
        let (registry, recovery) = CheckpointRegistry::open(storage.clone())?;
        let instance_id = random_instance_id();
        let fs = options.fs.as_ref();
        crate::fs::create_dir_durable(fs, working_dir)?;
        remove_stale_stores(fs, working_dir)?;
        let db_dir = working_dir.join(format!("db-{instance_id:016x}-0"));
        fs.remove_dir_all(&db_dir)
            .map_err(|e| Error::io(&db_dir, e))?;
        let ttl_cells = TtlCells::default();
        let db = Db::open(&db_dir, store_options(&options, &config, &[], &ttl_cells))?;
        db.capture_flushes();
        let cache =
            WriteCache::with_budget(cache_capacity(&options), options.memory_budget.clone());
        Ok(LsmBackend {
            config,
            options,
            db_dir,
            db: Arc::new(db),
            storage,
            registry: Arc::new(Mutex::new(registry)),
            recovery,
            states: Vec::new(),
            by_name: HashMap::new(),
            incremental: Arc::new(Mutex::new(Incremental::new(instance_id))),
            epoch: 0,
            instance_id,
            stores_opened: 0,
            last_restore: None,
            cache,
            retired: Vec::new(),
            ttl_cells,
        })
    }

    /// The store (for statistics, manual compaction and tests). Writes still in the write-back
    /// cache are not in it: call [`LsmBackend::flush_write_cache`] first to see every write.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// Writes every write still in the write-back cache into the store (in order: frozen
    /// batches of pending checkpoints first), so [`LsmBackend::db`] shows them.
    pub fn flush_write_cache(&mut self) -> Result<()> {
        self.cache.settle(&self.db, &self.states, None)
    }

    /// Bytes the write-back cache charges for cached reads and for writes since the last
    /// snapshot.
    pub fn write_cache_bytes(&self) -> (usize, usize) {
        self.cache.charged_bytes()
    }

    /// The checkpoint storage.
    pub fn storage(&self) -> &Arc<dyn CheckpointStorage> {
        &self.storage
    }

    /// What the start-up scan of the storage found and removed.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Ids of the completed checkpoints in the storage, ascending.
    pub fn completed_checkpoints(&self) -> Vec<u64> {
        self.registry.lock().completed_ids()
    }

    /// How many completed checkpoints reference the shared file `path`.
    pub fn shared_references(&self, path: &str) -> u32 {
        self.registry.lock().shared_references(path)
    }

    /// What the last successful checkpoint uploaded and referenced.
    pub fn last_checkpoint_stats(&self) -> Option<CheckpointStats> {
        self.incremental.lock().last_stats.clone()
    }

    /// What the last restore fetched and from where (local copies, links or downloads).
    pub fn last_restore_stats(&self) -> Option<RestoreStats> {
        self.last_restore.as_deref().cloned()
    }

    /// The random id of this backend instance (it prefixes its shared file names).
    pub fn instance_id(&self) -> u64 {
        self.instance_id
    }

    /// The column family of `state`.
    pub fn column_family(&self, state: StateId) -> Result<&ColumnFamily> {
        self.states
            .get(state.0 as usize)
            .map(|(_, cf)| cf)
            .ok_or(Error::UnknownState(state.0))
    }

    /// Restores the newest completed checkpoint of the storage into this backend's key-group
    /// range; returns its id, or `None` (and changes nothing) when there is none.
    ///
    /// Fails (restoring nothing) when a checkpoint newer than the newest completed one was
    /// quarantined (its `_metadata` does not decode, FORMAT.md §4.4): older state is restored
    /// only when asked for by handle.
    pub fn restore_latest(&mut self) -> Result<Option<u64>> {
        let latest = self.registry.lock().latest_completed().cloned();
        crate::checkpoint::registry::check_no_newer_quarantined(
            self.storage.as_ref(),
            latest.as_ref().map(|m| m.checkpoint_id),
        )?;
        let Some(metadata) = latest else {
            return Ok(None);
        };
        let handle = super::fs::snapshot_handle(self.storage.as_ref(), &metadata);
        let range = self.config.key_group_range;
        self.restore(&[handle], range)?;
        Ok(Some(metadata.checkpoint_id))
    }

    /// Store options with the column-family options of every registered state and of
    /// `descriptors`.
    fn db_options(&self, descriptors: &[StateDescriptor]) -> Options {
        let all: Vec<StateDescriptor> = self
            .states
            .iter()
            .map(|(d, _)| d.clone())
            .chain(descriptors.iter().cloned())
            .collect();
        store_options(&self.options, &self.config, &all, &self.ttl_cells)
    }

    /// Changes the TTL of `state`, a state registered (or restored) with a TTL: its compaction
    /// filter drops entries by the new duration from now on, later checkpoints record it, and
    /// registering the state again must name it. The periodic compaction interval
    /// (`ttl_periodic_compaction`) stays the one the store was opened with. A state without TTL
    /// cannot get one (its values carry no timestamps): [`Error::StateMismatch`].
    pub fn set_state_ttl(&mut self, state: StateId, ttl: TtlConfig) -> Result<()> {
        let (descriptor, _) = self
            .states
            .get_mut(state.0 as usize)
            .ok_or(Error::UnknownState(state.0))?;
        if descriptor.ttl.is_none() {
            // The two differ in TTL: this is the mismatch error naming both.
            return descriptor.check_compatible(&descriptor.clone().with_ttl(ttl));
        }
        descriptor.ttl = Some(ttl);
        if let Some(cell) = self.ttl_cells.lock().get(&descriptor.name) {
            cell.store(ttl.ttl_ms, Ordering::Relaxed);
        }
        Ok(())
    }

    fn cf_of(&self, state: StateId) -> Result<&ColumnFamily> {
        self.column_family(state)
    }

    /// The entries of `state` within the bounds of `options`, after the cached writes of the
    /// state reached the store (scans read the store alone).
    fn scan(&mut self, state: StateId, options: ReadOptions) -> Result<EntryIter<'_>> {
        if self.cache.enabled() {
            self.cache.settle(&self.db, &self.states, Some(state))?;
        }
        let cf = self.cf_of(state)?;
        let mut iter = self.db.iter(cf, options)?;
        iter.seek_to_first()?;
        Ok(Box::new(iter.entries()))
    }

    /// A put (`Some`) or delete (`None`) through the write-back cache, or straight to the store.
    fn write(&mut self, state: StateId, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let cf = self.access(state, key)?;
        if !self.cache.enabled() {
            return match value {
                Some(value) => self.db.put(cf, key, value),
                None => self.db.delete(cf, key),
            };
        }
        if self.cache.write(state, key, value) {
            self.make_room()?;
        }
        Ok(())
    }

    /// The write-back cache is over budget: hand the store every write, then evict.
    fn make_room(&mut self) -> Result<()> {
        self.cache.settle(&self.db, &self.states, None)?;
        self.cache.evict();
        Ok(())
    }

    /// Checks the key's group and returns the state's column family.
    fn access(&self, state: StateId, key: &[u8]) -> Result<&ColumnFamily> {
        check_key_group(key, &self.config.key_group_range)?;
        self.cf_of(state)
    }
}

/// The options of a state's column family: compression, and for TTL states the TTL compaction
/// filter and periodic compaction.
fn cf_options(
    options: &LsmBackendOptions,
    config: &BackendConfig,
    descriptor: &StateDescriptor,
    ttl_cells: &TtlCells,
) -> CfOptions {
    let mut cf = CfOptions::default();
    cf.compaction.target_file_size = options.target_file_size.max(1);
    // Composite keys start with the key group (u16 BE): compaction never splits one across
    // files, so a file of L1 and below holds whole key groups.
    cf.compaction.cut_prefix_len = 2;
    match options
        .state_compression
        .iter()
        .find(|(name, _)| *name == descriptor.name)
    {
        Some((_, compression)) => cf.sst.compression = *compression,
        None => {
            cf.sst.compression = options.compression;
            cf.compression_per_level = options.compression_per_level.clone();
        }
    }
    if let Some(ttl) = descriptor.ttl {
        let cell = {
            let mut cells = ttl_cells.lock();
            let cell = cells.entry(descriptor.name.clone()).or_default();
            cell.store(ttl.ttl_ms, Ordering::Relaxed);
            Arc::clone(cell)
        };
        cf.compaction_filter = Some(Arc::new(TtlCompactionFilter::new(
            ttl,
            cell,
            descriptor.kind,
            config.clock.clone(),
        )));
        if options.ttl_periodic_compaction {
            cf.periodic_compaction_ms = Some(ttl.ttl_ms.max(1));
        }
    }
    cf
}

/// The write-back cache's capacity for `options` (none with full checkpoints, whose
/// synchronous part takes a read view of the store).
fn cache_capacity(options: &LsmBackendOptions) -> usize {
    if options.full_checkpoints {
        0
    } else {
        options.write_cache_size
    }
}

/// Deletes the stores (`db-*` directories) a crashed or dropped backend left in `working_dir`:
/// a store whose `LOCK` nobody holds belongs to no live backend (a live store holds its lock,
/// also against other backends of this process), and the working store is never part of a
/// checkpoint, so nothing is lost.
fn remove_stale_stores(fs: &dyn crate::fs::FileSystem, working_dir: &Path) -> Result<()> {
    let entries = fs
        .read_dir(working_dir)
        .map_err(|e| Error::io(working_dir, e))?;
    for entry in entries {
        if !entry.is_dir || !entry.name.starts_with("db-") {
            continue;
        }
        let path = working_dir.join(&entry.name);
        let lock = path.join(crate::lsm::db::LOCK_FILE);
        if crate::lock::try_lock_file(fs, &lock)?.is_some() {
            fs.remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Store options for a backend with states `descriptors`.
fn store_options(
    options: &LsmBackendOptions,
    config: &BackendConfig,
    descriptors: &[StateDescriptor],
    ttl_cells: &TtlCells,
) -> Options {
    let mut cf_list: Vec<(String, CfOptions)> = Vec::new();
    for d in descriptors {
        let name = cf_name(&d.name);
        if !cf_list.iter().any(|(n, _)| *n == name) {
            cf_list.push((name, cf_options(options, config, d, ttl_cells)));
        }
    }
    Options {
        write_buffer_size: options.write_buffer_size,
        block_cache_size: options.block_cache_size,
        memory_budget: options.memory_budget.clone(),
        clock: config.clock.clone(),
        background_work: options.background_work,
        cf_options: cf_list,
        // A state backend's durability is its checkpoints: restore never reads the working
        // store's WAL, so writing one would only slow writes and the snapshot's sync phase.
        disable_wal: true,
        fs: std::sync::Arc::clone(&options.fs),
        ..Options::default()
    }
}

/// The column family name of state `name`.
pub(crate) fn cf_name(state: &str) -> String {
    format!("{CF_PREFIX}{state}")
}

/// The user-key range `[lower, upper)` of `range`'s key groups (`None` = unbounded above).
fn key_group_bounds(range: &KeyGroupRange) -> (Vec<u8>, Option<Vec<u8>>) {
    (
        range.start_key().to_vec(),
        range.end_key().map(|k| k.to_vec()),
    )
}

impl StateBackend for LsmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Lsm
    }

    fn config(&self) -> &BackendConfig {
        &self.config
    }

    fn register(&mut self, descriptor: &StateDescriptor) -> Result<StateId> {
        if descriptor.name.is_empty() {
            return Err(Error::invalid("state name must not be empty"));
        }
        if let Some(&id) = self.by_name.get(&descriptor.name) {
            let (existing, _) = self
                .states
                .get(id.0 as usize)
                .ok_or(Error::UnknownState(id.0))?;
            existing.check_compatible(descriptor)?;
            return Ok(id);
        }
        let id = StateId(
            u32::try_from(self.states.len())
                .map_err(|_| Error::limit_exceeded("too many states"))?,
        );
        let cf = self.db.create_cf(
            &cf_name(&descriptor.name),
            cf_options(&self.options, &self.config, descriptor, &self.ttl_cells),
        )?;
        self.states.push((descriptor.clone(), cf));
        self.by_name.insert(descriptor.name.clone(), id);
        Ok(id)
    }

    fn states(&self) -> Vec<StateDescriptor> {
        self.states.iter().map(|(d, _)| d.clone()).collect()
    }

    fn get(&mut self, state: StateId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        check_key_group(key, &self.config.key_group_range)?;
        if let Lookup::Hit(value) = self.cache.get(state, key) {
            return Ok(value.map(<[u8]>::to_vec));
        }
        let cf = self.cf_of(state)?;
        let value = self.db.get(cf, key)?;
        if self.cache.fill(state, key, value.as_deref()) {
            self.make_room()?;
        }
        Ok(value)
    }

    fn put(&mut self, state: StateId, key: &[u8], value: &[u8]) -> Result<()> {
        self.write(state, key, Some(value))
    }

    fn delete(&mut self, state: StateId, key: &[u8]) -> Result<()> {
        self.write(state, key, None)
    }

    fn read_modify_write(
        &mut self,
        state: StateId,
        key: &[u8],
        f: &mut ReadModifyWrite<'_>,
    ) -> Result<()> {
        if self.cache.enabled() {
            self.access(state, key)?;
            match self.cache.update_cached(state, key, f)? {
                Some(true) => return self.make_room(),
                Some(false) => return Ok(()),
                // Not cached: read (which caches it) and write through the cache.
                None => {}
            }
        }
        super::read_modify_write_by_get_put(self, state, key, f)
    }

    fn merge(&mut self, state: StateId, key: &[u8], operand: &[u8]) -> Result<()> {
        let cf = self.access(state, key)?.clone();
        if self.cache.enabled() {
            self.cache.settle(&self.db, &self.states, Some(state))?;
            self.cache.forget_key(state, key);
        }
        self.db.merge(&cf, key, operand)
    }

    fn scan_prefix(&mut self, state: StateId, prefix: &[u8]) -> Result<EntryIter<'_>> {
        self.scan(state, ReadOptions::prefix(prefix))
    }

    /// Seeks: the store's iterator starts at the first key after `after` (bounded below by
    /// `prefix`), so each call costs O(log n) plus the entries it yields.
    fn scan_prefix_after(
        &mut self,
        state: StateId,
        prefix: &[u8],
        after: &[u8],
    ) -> Result<EntryIter<'_>> {
        // The smallest key after `after` is `after` followed by a zero byte.
        let lower = if after < prefix {
            prefix.to_vec()
        } else {
            let mut lower = Vec::with_capacity(after.len() + 1);
            lower.extend_from_slice(after);
            lower.push(0);
            lower
        };
        let upper = prefix_upper_bound(prefix);
        if upper.as_ref().is_some_and(|upper| lower >= *upper) {
            return Ok(Box::new(std::iter::empty()));
        }
        let options = ReadOptions {
            snapshot: None,
            lower_bound: Some(lower),
            upper_bound: upper,
        };
        self.scan(state, options)
    }

    fn delete_prefix(&mut self, state: StateId, prefix: &[u8]) -> Result<()> {
        let cf = self.cf_of(state)?.clone();
        if self.cache.enabled() {
            self.cache.settle(&self.db, &self.states, Some(state))?;
            self.cache.forget_state(state);
        }
        // Clip to the key groups this backend owns: a short prefix never deletes (with a
        // sequence number of this store) keys another backend's checkpoint may bring in.
        let (kg_lower, kg_upper) = key_group_bounds(&self.config.key_group_range);
        let lower = std::cmp::max(prefix.to_vec(), kg_lower);
        let upper = match (prefix_upper_bound(prefix), kg_upper) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => vec![0xff; 3],
        };
        if lower >= upper {
            return Ok(());
        }
        let options = ReadOptions {
            snapshot: None,
            lower_bound: Some(lower.clone()),
            upper_bound: Some(upper.clone()),
        };
        let mut keys = Vec::new();
        let mut iter = self.db.iter(&cf, options)?;
        iter.seek_to_first()?;
        for entry in iter.entries() {
            let (key, _) = entry?;
            keys.push(key);
            if keys.len() > POINT_DELETE_LIMIT {
                return self.db.delete_range(&cf, &lower, &upper);
            }
        }
        if keys.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        for key in &keys {
            batch.delete(&cf, key)?;
        }
        self.db.write(batch)
    }

    fn checkpoint_releaser(&self) -> Option<crate::backend::CheckpointReleaser> {
        let local_recovery = self.options.local_recovery_dir.as_ref().map(|dir| {
            local_recovery::LocalCopies::new(&self.options.fs, dir, &self.storage.location())
        });
        Some(crate::backend::CheckpointReleaser::new(
            self.registry.clone(),
            local_recovery,
        ))
    }

    fn snapshot(&mut self, checkpoint_id: u64) -> Result<Box<dyn SnapshotTask>> {
        restore::remove_retired_stores(self);
        if self.options.full_checkpoints {
            // Synchronous part: a read view of the store (no I/O at all).
            return Ok(Box::new(full::FullSnapshotTask {
                checkpoint_id,
                max_parallelism: self.config.max_parallelism,
                key_group_range: self.config.key_group_range,
                states: self.states.clone(),
                snapshot: self.db.snapshot(),
                db: self.db.clone(),
                clock: self.config.clock.clone(),
                storage: self.storage.clone(),
                registry: self.registry.clone(),
                retained: self.options.retained_checkpoints.max(1),
            }));
        }
        // Synchronous part: freeze the write-back cache's writes (O(states)) — the asynchronous
        // part writes them into the store and freezes the memtables — or, without the cache,
        // freeze the memtables (no I/O that grows with state).
        let (sequence, frozen) = if self.cache.enabled() {
            let batch = self.cache.freeze(&self.states);
            (0, Some((self.cache.pending().clone(), batch)))
        } else {
            (self.db.freeze_memtables()?, None)
        };
        Ok(Box::new(LsmSnapshotTask {
            checkpoint_id,
            sequence,
            frozen,
            // Not read through the lock: a running async part holds it for its whole upload.
            epoch: self.epoch,
            max_parallelism: self.config.max_parallelism,
            key_group_range: self.config.key_group_range,
            states: self.states(),
            clock: self.config.clock.clone(),
            db: self.db.clone(),
            storage: self.storage.clone(),
            registry: self.registry.clone(),
            incremental: self.incremental.clone(),
            retained: self.options.retained_checkpoints.max(1),
            options: self.options.clone(),
        }))
    }

    fn restore(
        &mut self,
        handles: &[SnapshotHandle],
        key_group_range: KeyGroupRange,
    ) -> Result<()> {
        // By address, not by a clone: a clone held here would keep the replaced store alive and
        // its directory on disk. The new store is created before the old one is released, so
        // the two addresses differ whenever the store was replaced.
        let before = Arc::as_ptr(&self.db);
        let result = restore::restore(self, handles, key_group_range);
        if !std::ptr::eq(before, Arc::as_ptr(&self.db)) {
            // The store was replaced: cached reads and unapplied writes belong to the old one.
            self.cache.reset();
        }
        result
    }
}

#[cfg(test)]
mod compression_tests {
    use super::*;
    use crate::descriptor::StateKind;

    fn descriptor(name: &str) -> StateDescriptor {
        StateDescriptor::new(name, StateKind::Value)
    }

    #[test]
    fn states_get_lz4_upper_levels_and_zstd_below_unless_overridden() {
        let options = LsmBackendOptions::new("/unused")
            .state_compression("raw", Compression::None)
            .state_compression("raw", Compression::Lz4);
        let config = BackendConfig::default();
        let cf = cf_options(
            &options,
            &config,
            &descriptor("counts"),
            &TtlCells::default(),
        );
        assert_eq!(
            cf.compression_per_level,
            DEFAULT_COMPRESSION_PER_LEVEL.to_vec()
        );
        assert_eq!(cf.sst_for_level(0).compression, Compression::Lz4);
        assert_eq!(cf.sst_for_level(2).compression, Compression::Lz4);
        assert_eq!(
            cf.sst_for_level(3).compression,
            Compression::Zstd { level: 3 }
        );
        assert_eq!(
            cf.sst_for_level(6).compression,
            Compression::Zstd { level: 3 }
        );
        // An override applies at every level; a second one for the state replaces the first.
        assert_eq!(options.state_compression.len(), 1);
        let cf = cf_options(&options, &config, &descriptor("raw"), &TtlCells::default());
        for level in 0..crate::lsm::NUM_LEVELS {
            assert_eq!(
                cf.sst_for_level(level).compression,
                Compression::Lz4,
                "L{level}"
            );
        }
        assert_eq!(
            cf.compaction.cut_prefix_len, 2,
            "key groups are never split"
        );
        let options = options.compression_per_level(Vec::new());
        let cf = cf_options(
            &options,
            &config,
            &descriptor("counts"),
            &TtlCells::default(),
        );
        assert_eq!(
            cf.sst_for_level(0).compression,
            Compression::Zstd { level: 3 }
        );
    }
}
