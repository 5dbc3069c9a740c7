//! The four engines behind one small trait, each configured from the same [`Settings`] and
//! used through its fastest ordinary public API (RocksDB `get_pinned`, fjall `Slice`s,
//! flowstate `get` returning an owned `Vec`, cobble `SingleDb` rows of `Bytes` columns).

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
            "segments",
        )
    }
}

/// Copies `from` to `to` recursively, hard-linking the (immutable) files in directories named
/// `link_dir` and copying the others.
fn copy_tree(from: &Path, to: &Path, link_dir: &str) -> Res<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&path, &target, link_dir)?;
        } else {
            let link = from.file_name().is_some_and(|n| n == link_dir);
            let done = if link {
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

/// cobble through its single-node API ([`cobble::SingleDb`]): one bucket, one column.
pub struct Cobble {
    db: cobble::SingleDb,
    write: cobble::WriteOptions,
    /// The snapshot volume: cobble hard-links (or copies) the data files a snapshot references
    /// here and writes the snapshot manifests and schema here (it is also the meta volume).
    snapshots: std::path::PathBuf,
    /// The global snapshot id of the latest checkpoint, expired by the next one.
    last_checkpoint: std::sync::Mutex<Option<u64>>,
}

impl Cobble {
    /// Opens a store with its data files and WAL in `dir` and its snapshot volume in the sibling
    /// directory `snapshots-<name of dir>`.
    pub fn open(dir: &Path, s: &Settings) -> Res<Self> {
        let (config, snapshots) = Self::config(dir, s)?;
        let db = cobble::SingleDb::open(config)?;
        // Puts return once in the memtable and the WAL buffer, without waiting for the segment
        // to be published: the closest to a WAL write without fsync.
        let write = cobble::WriteOptions::default().with_await_durable(false);
        Ok(Cobble {
            db,
            write,
            snapshots,
            last_checkpoint: std::sync::Mutex::new(None),
        })
    }

    /// The configuration for a store in `dir` (created if missing), and its snapshot volume.
    fn config(dir: &Path, s: &Settings) -> Res<(cobble::Config, std::path::PathBuf)> {
        use cobble::{SstCompressionAlgorithm, VolumeDescriptor, VolumeUsageKind};
        let name = dir.file_name().ok_or("cobble: dir has no file name")?;
        // Not `<dir>-snapshots`: cobble resolves a file's URL against the first volume whose base
        // URL is a string prefix of it, so one volume's path must not start with the other's.
        let snapshots = dir.with_file_name(format!("snapshots-{}", name.to_string_lossy()));
        std::fs::create_dir_all(dir)?;
        std::fs::create_dir_all(&snapshots)?;
        let dir = dir.canonicalize()?;
        let snapshots = snapshots.canonicalize()?;
        let url = |p: &Path| format!("file://{}", p.display());
        let config = cobble::Config {
            volumes: vec![
                VolumeDescriptor::new(
                    url(&dir),
                    vec![
                        VolumeUsageKind::PrimaryDataPriorityHigh,
                        VolumeUsageKind::Wal,
                    ],
                ),
                VolumeDescriptor::new(
                    url(&snapshots),
                    vec![VolumeUsageKind::Meta, VolumeUsageKind::Snapshot],
                ),
            ],
            num_columns: 1,
            total_buckets: 1,
            memtable_capacity: size::Size::from_bytes(s.write_buffer_size),
            block_cache_size: size::Size::from_bytes(s.block_cache_size),
            sst_bloom_filter_enabled: true,
            sst_bloom_bits_per_key: s.bloom_bits_per_key,
            // cobble 0.5 has no zstd: lz4 (on every level; its default leaves L0 and L1
            // uncompressed) is the closest it offers. Its SST block size is fixed at 4 KiB.
            sst_compression_by_level: vec![SstCompressionAlgorithm::Lz4],
            // Group-committed WAL segments, published every 5 ms by a background thread (each
            // published segment is fsynced; there is no switch for that).
            wal_enabled: true,
            // The rest as cobble ships it: the adaptive memtable (a skiplist that may switch to
            // a vector or hash table at a flush), 2 memtables, 64 MiB SSTs, leveled compaction.
            ..cobble::Config::default()
        };
        Ok((config, snapshots))
    }
}

/// The smallest key above every key starting with `prefix` (`None`: no upper bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Engine for Cobble {
    fn name(&self) -> &'static str {
        "cobble"
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Res<()> {
        Ok(self.db.put_with_options(0, key, 0, value, &self.write)?)
    }
    fn get(&self, key: &[u8]) -> Res<bool> {
        Ok(self.db.get(0, key)?.is_some_and(|row| {
            row.first()
                .and_then(Option::as_ref)
                .is_some_and(|v| !v.is_empty())
        }))
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Res<u64> {
        let end = prefix_end(prefix);
        let mut iter = self.db.scan_bounds(0, Some(prefix), end.as_deref())?;
        let mut n = 0u64;
        let mut bytes = 0usize;
        while let Some(len) = iter.consume_next_row(|k, columns| {
            Ok(k.len() + columns.iter().flatten().map(|v| v.len()).sum::<usize>())
        })? {
            bytes += len;
            n += 1;
        }
        std::hint::black_box(bytes);
        Ok(n)
    }
    /// cobble has no public flush that can be waited for: a shard snapshot flushes the active
    /// memtable to an SST and reports when it is published, so flush takes one, waits for it
    /// and expires it (its extra cost: hard links in the snapshot volume and a small manifest).
    fn flush(&self) -> Res<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let id = self.db.db().snapshot_with_callback(move |r| {
            let _ = tx.send(r.map(|_| ()));
        })?;
        rx.recv()??;
        self.db.db().expire_snapshot(id)?;
        Ok(())
    }
    /// A cobble snapshot cannot be pointed at a directory: its volumes are fixed when the store
    /// opens, and its manifests name data files by absolute path. So this takes a single-node
    /// global snapshot (memtable flushed first, data files hard-linked into the snapshot volume,
    /// copied if it were on another device, manifests written there), waits until it is
    /// materialized, expires the previous
    /// checkpoint's snapshot (so the volume holds what the new one references), then mirrors
    /// the snapshot volume into `dir`: data files hard-linked, metadata copied. `dir` holds the
    /// snapshot's files for byte counting; cobble reopens it from the snapshot volume
    /// (`SingleDb::resume` with the same volumes and the snapshot id).
    fn checkpoint(&self, dir: &Path) -> Res<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let id = self.db.snapshot_with_callback(move |r| {
            let _ = tx.send(r.map(|_| ()));
        })?;
        rx.recv()??;
        let previous = self.last_checkpoint.lock().unwrap().replace(id);
        if let Some(previous) = previous {
            self.db.expire_snapshot(previous)?;
        }
        copy_tree(&self.snapshots, dir, "data")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint's snapshot reopens (`SingleDb::resume`) with the data it was taken with.
    #[test]
    fn cobble_checkpoint_resumes() -> Res<()> {
        let root = std::env::temp_dir().join(format!("peers-cobble-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let data = root.join("db");
        let settings = Settings::default();
        let id = {
            let db = Cobble::open(&data, &settings)?;
            for i in 0..1000u32 {
                db.put(&i.to_be_bytes(), b"one")?;
            }
            db.flush()?;
            db.checkpoint(&root.join("checkpoint-1"))?;
            for i in 0..1000u32 {
                db.put(&i.to_be_bytes(), b"two")?;
            }
            db.checkpoint(&root.join("checkpoint-2"))?;
            db.put(b"after", b"three")?;
            assert_eq!(db.scan_prefix(&[0, 0])?, 1000);
            let id = db.last_checkpoint.lock().unwrap().expect("a checkpoint");
            db.db.close()?;
            id
        };
        let (config, _) = Cobble::config(&data, &settings)?;
        let resumed = cobble::SingleDb::resume(config, id)?;
        let row = resumed.get(0, &7u32.to_be_bytes())?.expect("key 7");
        assert_eq!(row[0].as_deref(), Some(&b"two"[..]));
        assert!(resumed.get(0, b"after")?.is_none());
        resumed.close()?;
        drop(resumed);
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }
}
