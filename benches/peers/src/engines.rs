//! The three engines behind one small trait, each configured from the same [`Settings`] and
//! used through its fastest ordinary public API (RocksDB `get_pinned`, fjall `Slice`s,
//! flowstate `get` returning an owned `Vec`).

use std::error::Error;
use std::path::Path;

type Res<T> = Result<T, Box<dyn Error>>;

/// Settings shared by all engines.
pub struct Settings {
    pub write_buffer_size: usize,
    pub block_cache_size: usize,
    pub bloom_bits_per_key: u32,
    pub zstd_level: i32,
    pub block_size: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            write_buffer_size: 64 << 20,
            block_cache_size: 64 << 20,
            bloom_bits_per_key: 10,
            zstd_level: 3,
            block_size: 4096,
        }
    }
}

/// What the workloads need from a store.
pub trait Engine {
    fn name(&self) -> &'static str;
    /// Writes through the WAL, without fsync.
    fn put(&self, key: &[u8], value: &[u8]) -> Res<()>;
    /// Whether the key exists (the value is read).
    fn get(&self, key: &[u8]) -> Res<bool>;
    /// Iterates all keys starting with `prefix`, touching key and value; returns the count.
    fn scan_prefix(&self, prefix: &[u8]) -> Res<u64>;
    /// Flushes the memtable to an SST and waits.
    fn flush(&self) -> Res<()>;
    /// Writes an openable copy of the store to `dir` (a new directory).
    fn checkpoint(&self, dir: &Path) -> Res<()>;
}

pub struct Flowstate {
    db: flowstate::lsm::Db,
    cf: flowstate::lsm::ColumnFamily,
}

impl Flowstate {
    pub fn open(dir: &Path, s: &Settings) -> Res<Self> {
        use flowstate::lsm::Compression;
        use flowstate::lsm::SyncMode;
        let mut options = flowstate::lsm::Options::default()
            .write_buffer_size(s.write_buffer_size)
            .block_cache_size(s.block_cache_size)
            .wal_sync(SyncMode::Manual);
        let sst = &mut options.default_cf_options.sst;
        sst.block_size = s.block_size;
        sst.compression = Compression::Zstd {
            level: s.zstd_level,
        };
        sst.bloom_bits_per_key = s.bloom_bits_per_key;
        let db = flowstate::lsm::Db::open(dir, options)?;
        let cf = db.default_cf();
        Ok(Flowstate { db, cf })
    }
}

impl Engine for Flowstate {
    fn name(&self) -> &'static str {
        "flowstate"
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Res<()> {
        Ok(self.db.put(&self.cf, key, value)?)
    }
    fn get(&self, key: &[u8]) -> Res<bool> {
        Ok(self.db.get(&self.cf, key)?.is_some_and(|v| !v.is_empty()))
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Res<u64> {
        let mut iter = self
            .db
            .iter(&self.cf, flowstate::lsm::ReadOptions::prefix(prefix))?;
        iter.seek_to_first()?;
        let mut n = 0u64;
        let mut bytes = 0usize;
        while iter.valid() {
            bytes += iter.key().len() + iter.value().len();
            n += 1;
            iter.next()?;
        }
        std::hint::black_box(bytes);
        Ok(n)
    }
    fn flush(&self) -> Res<()> {
        self.db.flush()?;
        Ok(())
    }
    fn checkpoint(&self, dir: &Path) -> Res<()> {
        self.db.checkpoint(dir)?;
        Ok(())
    }
}

pub struct Rocks {
    db: rocksdb::DB,
    write: rocksdb::WriteOptions,
    _cache: rocksdb::Cache,
}

impl Rocks {
    pub fn open(dir: &Path, s: &Settings) -> Res<Self> {
        let cache = rocksdb::Cache::new_lru_cache(s.block_cache_size);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_block_size(s.block_size);
        table.set_bloom_filter(f64::from(s.bloom_bits_per_key), false);
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.set_write_buffer_size(s.write_buffer_size);
        options.set_compression_type(rocksdb::DBCompressionType::Zstd);
        // window_bits -14 is RocksDB's default; level, strategy 0, no dictionary.
        options.set_compression_options(-14, s.zstd_level, 0, 0);
        options.set_block_based_table_factory(&table);
        let db = rocksdb::DB::open(&options, dir)?;
        let mut write = rocksdb::WriteOptions::default();
        write.set_sync(false);
        write.disable_wal(false);
        Ok(Rocks {
            db,
            write,
            _cache: cache,
        })
    }
}

impl Engine for Rocks {
    fn name(&self) -> &'static str {
        "rocksdb"
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Res<()> {
        Ok(self.db.put_opt(key, value, &self.write)?)
    }
    fn get(&self, key: &[u8]) -> Res<bool> {
        Ok(self.db.get_pinned(key)?.is_some_and(|v| !v.is_empty()))
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Res<u64> {
        let mut read = rocksdb::ReadOptions::default();
        read.set_iterate_range(rocksdb::PrefixRange(prefix));
        let mut iter = self.db.raw_iterator_opt(read);
        iter.seek_to_first();
        let mut n = 0u64;
        let mut bytes = 0usize;
        while iter.valid() {
            bytes += iter.key().map_or(0, <[u8]>::len) + iter.value().map_or(0, <[u8]>::len);
            n += 1;
            iter.next();
        }
        iter.status()?;
        std::hint::black_box(bytes);
        Ok(n)
    }
    fn flush(&self) -> Res<()> {
        Ok(self.db.flush()?)
    }
    fn checkpoint(&self, dir: &Path) -> Res<()> {
        // Flushes the memtable first (log_size_for_flush 0), like flowstate's checkpoint.
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(())
    }
}

pub struct Fjall {
    keyspace: fjall::Keyspace,
    partition: fjall::PartitionHandle,
}

impl Fjall {
    pub fn open(dir: &Path, s: &Settings) -> Res<Self> {
        // fjall 2 has no zstd: lz4 is the closest (and cheaper) block compression it offers.
        let keyspace = fjall::Config::new(dir)
            .cache_size(s.block_cache_size as u64)
            .max_write_buffer_size(s.write_buffer_size as u64)
            .manual_journal_persist(false)
            .open()?;
        let options = fjall::PartitionCreateOptions::default()
            .max_memtable_size(s.write_buffer_size as u32)
            .block_size(s.block_size as u32)
            .bloom_filter_bits(Some(s.bloom_bits_per_key as u8))
            .compression(fjall::CompressionType::Lz4);
        let partition = keyspace.open_partition("default", options)?;
        Ok(Fjall {
            keyspace,
            partition,
        })
    }
}

impl Engine for Fjall {
    fn name(&self) -> &'static str {
        "fjall"
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Res<()> {
        Ok(self.partition.insert(key, value)?)
    }
    fn get(&self, key: &[u8]) -> Res<bool> {
        Ok(self.partition.get(key)?.is_some_and(|v| !v.is_empty()))
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Res<u64> {
        let mut n = 0u64;
        let mut bytes = 0usize;
        for kv in self.partition.prefix(prefix) {
            let (k, v) = kv?;
            bytes += k.len() + v.len();
            n += 1;
        }
        std::hint::black_box(bytes);
        Ok(n)
    }
    fn flush(&self) -> Res<()> {
        Ok(self.partition.rotate_memtable_and_wait()?)
    }
    /// fjall 2 has no checkpoint API: flush, persist the journal, then hard-link the immutable
    /// segment files and copy everything else (journals, manifests) — what a user would do.
    fn checkpoint(&self, dir: &Path) -> Res<()> {
        self.partition.rotate_memtable_and_wait()?;
        self.keyspace.persist(fjall::PersistMode::SyncAll)?;
        copy_tree(
            self.partition
                .path()
                .parent()
                .and_then(Path::parent)
                .unwrap_or(self.partition.path()),
            dir,
        )
    }
}

/// Copies `from` to `to` recursively, hard-linking files under a `segments` directory.
fn copy_tree(from: &Path, to: &Path) -> Res<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            let in_segments = from.file_name().is_some_and(|n| n == "segments");
            let done = if in_segments {
                std::fs::hard_link(&path, &target)
            } else {
                std::fs::copy(&path, &target).map(|_| ())
            };
            match done {
                // A compaction deleted it since the directory was read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
    }
    Ok(())
}
