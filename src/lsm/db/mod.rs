//! [`Db`]: the log-structured store — open and recovery, column families, the public API.
//!
//! Concurrency: writers are serialized by the writer lock (which owns the WAL); the core lock
//! guards the version, memtables and manifest and is held only briefly; readers take an
//! `Arc<SuperVersion>` (memtables + files) and never wait for a flush or a compaction. One
//! background thread flushes frozen memtables, another runs compactions.

mod background;
mod checkpoint;
mod flush;
#[cfg(test)]
mod level_compression_tests;
mod read;
mod recovery;
mod shadowed;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::error::{Error, Result};
use crate::lsm::block_cache::BlockCache;
use crate::lsm::manifest::Manifest;
use crate::lsm::memtable::Memtable;
use crate::lsm::options::{CfOptions, Options};
use crate::lsm::pinned::PinnedValue;
use crate::lsm::table::TableFile;
use crate::lsm::version::{NUM_LEVELS, RangeTombstone, Version};
use crate::lsm::wal::WalWriter;

pub(crate) use checkpoint::FlushOutput;
pub use checkpoint::{LiveFile, LiveFiles};
pub use read::{DbIterator, ReadOptions};
pub use recovery::LOCK_FILE;

/// Name of the column family every store has.
pub const DEFAULT_CF: &str = "default";

/// A column family handle: id and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ColumnFamily {
    id: u32,
    name: String,
}

impl ColumnFamily {
    /// The column family's id (stable for its lifetime, never reused).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The column family's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A consistent read view: reads at it see the store as of its sequence number, whatever is
/// written later. Released on drop.
#[derive(Debug)]
pub struct Snapshot {
    sequence: u64,
    inner: Arc<DbInner>,
}

impl Snapshot {
    /// The sequence number the snapshot reads at.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut snapshots = self.inner.snapshots.lock();
        if let Some(count) = snapshots.get_mut(&self.sequence) {
            *count -= 1;
            if *count == 0 {
                snapshots.remove(&self.sequence);
            }
        }
    }
}

/// Counters of a store's work, all since open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbStats {
    /// Per column family: name, live SST bytes, SST count per level, memtable bytes.
    pub column_families: Vec<CfStats>,
    /// Bytes read by compactions.
    pub compaction_bytes_read: u64,
    /// Bytes written by compactions.
    pub compaction_bytes_written: u64,
    /// Bytes written by flushes.
    pub flush_bytes_written: u64,
    /// Number of times a writer waited for a flush or compaction.
    pub write_stalls: u64,
    /// Block cache hits.
    pub block_cache_hits: u64,
    /// Block cache misses.
    pub block_cache_misses: u64,
}

impl DbStats {
    /// Live SST bytes over all column families.
    pub fn live_data_size(&self) -> u64 {
        self.column_families.iter().map(|c| c.live_data_size).sum()
    }
}

/// Statistics of one column family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CfStats {
    /// Name.
    pub name: String,
    /// Bytes of its live SST files.
    pub live_data_size: u64,
    /// SST files per level.
    pub files_per_level: [usize; NUM_LEVELS],
    /// Bytes in its memtables (active and frozen).
    pub memtable_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    compaction_bytes_read: AtomicU64,
    compaction_bytes_written: AtomicU64,
    flush_bytes_written: AtomicU64,
    write_stalls: AtomicU64,
}

/// The log-structured store. `Send + Sync`; clone the `Arc` to share it.
///
/// ```
/// use flowstate::lsm::{Db, Options};
/// let dir = tempfile::tempdir()?;
/// let db = Db::open(dir.path(), Options::default())?;
/// let cf = db.default_cf();
/// db.put(&cf, b"key", b"value")?;
/// assert_eq!(db.get(&cf, b"key")?, Some(b"value".to_vec()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Db {
    inner: Arc<DbInner>,
    background: Mutex<Vec<JoinHandle<()>>>,
}

/// Memtables frozen together at one switch, flushed together by one version edit.
#[derive(Debug, Clone)]
struct FrozenBatch {
    memtables: Vec<(u32, Arc<Memtable>)>,
    /// WAL number in use after the switch: every write of the batch is in older WALs.
    next_log_number: u64,
    /// Largest sequence in the batch.
    last_sequence: u64,
}

#[derive(Debug)]
struct CfState {
    name: String,
    options: Arc<CfOptions>,
    memtable: Arc<Memtable>,
}

#[derive(Debug)]
struct Core {
    version: Arc<Version>,
    cfs: BTreeMap<u32, CfState>,
    frozen: Vec<FrozenBatch>,
    tables: HashMap<u64, Arc<TableFile>>,
    next_file_number: u64,
}

impl Core {
    fn allocate_file_number(&mut self) -> u64 {
        let n = self.next_file_number;
        self.next_file_number += 1;
        n
    }
}

struct WriterState {
    /// The current WAL; `None` with `Options::disable_wal`.
    wal: Option<WalWriter>,
    /// Number of the current WAL (allocated even without a WAL: column families' log numbers).
    log_number: u64,
    last_sequence: u64,
}

impl WriterState {
    fn sync(&mut self) -> Result<()> {
        match &mut self.wal {
            Some(wal) => wal.sync(),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for WriterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterState")
            .field("log_number", &self.log_number)
            .field("last_sequence", &self.last_sequence)
            .finish()
    }
}

/// What a reader needs of one column family, frozen in time.
#[derive(Debug)]
struct CfView {
    options: Arc<CfOptions>,
    memtable: Arc<Memtable>,
    /// Frozen memtables, newest first.
    frozen: Vec<Arc<Memtable>>,
    /// Files per level (L0 newest first), pinned.
    levels: [Vec<Arc<TableFile>>; NUM_LEVELS],
    /// Sorted runs among the L0 files (`version::l0_runs`), counted once per view: every write
    /// compares it with the stop trigger.
    l0_runs: usize,
    tombstones: Vec<RangeTombstone>,
}

/// An immutable view of the whole store for readers.
#[derive(Debug)]
struct SuperVersion {
    cfs: BTreeMap<u32, CfView>,
}

#[derive(Debug)]
struct DbInner {
    dir: PathBuf,
    options: Options,
    cache: Arc<BlockCache>,
    writer: Mutex<WriterState>,
    /// The live manifest; held by whoever installs a version edit (see
    /// `background::log_and_apply`), so edits are appended and applied one at a time.
    manifest: Mutex<Manifest>,
    core: Mutex<Core>,
    /// Signalled when background work may be due, and when a flush or compaction finished.
    work: Condvar,
    super_version: RwLock<Arc<SuperVersion>>,
    visible_sequence: AtomicU64,
    snapshots: Mutex<BTreeMap<u64, usize>>,
    shutdown: AtomicBool,
    /// The first failure of background work (or of a flush run for a caller): the store is
    /// read-only from then on. The path and kind of an I/O error are kept for the error callers get.
    background_error: Mutex<Option<BackgroundError>>,
    counters: Counters,
    /// Held while a compaction runs: one at a time, background or manual.
    compaction_lock: Mutex<()>,
    /// Held while a flush runs: frozen batches are flushed one at a time, in order.
    flush_lock: Mutex<()>,
    /// Outputs of flushes since the last `take_flushed`, when capturing is on.
    flush_log: Mutex<Option<Vec<FlushOutput>>>,
    /// Set by another store on the memory budget that needs memory: the flush thread freezes
    /// the memtables (if the writer lock is free) and flushes them.
    flush_requested: AtomicBool,
    /// The memory budget's charge for this store's memtables (none without a budget).
    memtable_pool: Option<Arc<crate::budget::Pool>>,
    /// This store's reclaimer id on the memory budget (0 without one).
    budget_id: std::sync::atomic::AtomicUsize,
    _lock: Box<dyn crate::fs::FileLock>,
}

/// What stopped the store: see `DbInner::background_error`.
#[derive(Debug)]
struct BackgroundError {
    path: PathBuf,
    kind: std::io::ErrorKind,
    what: String,
}

/// An empty batch with room for one operation on `key` and `value`, so that encoding it never
/// grows the buffer (a single put would otherwise reallocate it two or three times).
fn single_op_batch(key: &[u8], value: &[u8]) -> crate::lsm::batch::WriteBatch {
    crate::lsm::batch::WriteBatch::with_capacity(key.len().saturating_add(value.len()) + 16)
}

impl Db {
    /// Opens a store made of SST files already placed in `dir` (`<number:06>.sst`, linked or
    /// copied there by the caller): writes the manifest that lists them as `edit` says (levels,
    /// key ranges, range tombstones; `label` names `edit` in errors), fsyncs `dir`, then opens
    /// the store as [`Db::open`] does. The files must be durable before the call.
    pub(crate) fn open_from_files(
        dir: &Path,
        edit: &crate::lsm::version::VersionEdit,
        label: &str,
        options: Options,
    ) -> Result<Db> {
        options.validate()?;
        let mut version = crate::lsm::version::Version::default().apply(edit, label, 0)?;
        crate::fs::sync_dir(options.fs.as_ref(), dir)?;
        let manifest_number = version.next_file_number;
        version.next_file_number = manifest_number + 1;
        crate::lsm::manifest::Manifest::create(&options.fs, dir, manifest_number, &version)?;
        Db::open(dir, options)
    }

    /// Opens the store in `dir`, creating it if allowed, replaying the WAL into fresh L0 files.
    /// The options are checked first ([`Options::validate`]): a bad one is an error naming it.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Db> {
        let dir = dir.as_ref();
        options.validate()?;
        let inner = Arc::new(recovery::open(dir, options)?);
        if let Some(budget) = &inner.options.memory_budget {
            let reclaimer = Arc::downgrade(&inner);
            let id = budget.register(reclaimer as std::sync::Weak<dyn crate::budget::Reclaim>);
            inner.budget_id.store(id, Ordering::Relaxed);
        }
        let mut background = Vec::new();
        if inner.options.background_work {
            for (name, worker) in [
                ("flowstate-lsm-flush", background::Worker::Flush),
                ("flowstate-lsm-compact", background::Worker::Compaction),
            ] {
                let shared = inner.clone();
                let handle = std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || background::run(&shared, worker))
                    .map_err(|e| Error::io(dir, e))?;
                background.push(handle);
            }
        }
        Ok(Db {
            inner,
            background: Mutex::new(background),
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// The default column family.
    pub fn default_cf(&self) -> ColumnFamily {
        ColumnFamily {
            id: 0,
            name: DEFAULT_CF.to_string(),
        }
    }

    /// The column family called `name`, if it exists.
    pub fn cf(&self, name: &str) -> Option<ColumnFamily> {
        let core = self.inner.core.lock();
        core.cfs
            .iter()
            .find(|(_, c)| c.name == name)
            .map(|(id, c)| ColumnFamily {
                id: *id,
                name: c.name.clone(),
            })
    }

    /// Every column family, by id.
    pub fn column_families(&self) -> Vec<ColumnFamily> {
        let core = self.inner.core.lock();
        core.cfs
            .iter()
            .map(|(id, c)| ColumnFamily {
                id: *id,
                name: c.name.clone(),
            })
            .collect()
    }

    /// Creates a column family (or returns the existing one of that name) with `options`.
    pub fn create_cf(&self, name: &str, options: CfOptions) -> Result<ColumnFamily> {
        write::create_cf(&self.inner, name, options)
    }

    /// Drops a column family; its files are deleted once no reader holds them.
    pub fn drop_cf(&self, cf: &ColumnFamily) -> Result<()> {
        write::drop_cf(&self.inner, cf)
    }

    /// Sets `key` to `value`.
    pub fn put(&self, cf: &ColumnFamily, key: &[u8], value: &[u8]) -> Result<()> {
        let mut batch = single_op_batch(key, value);
        batch.put(cf, key, value)?;
        self.write(batch)
    }

    /// Deletes `key`.
    pub fn delete(&self, cf: &ColumnFamily, key: &[u8]) -> Result<()> {
        let mut batch = single_op_batch(key, &[]);
        batch.delete(cf, key)?;
        self.write(batch)
    }

    /// Deletes every key in `[start, end)`.
    pub fn delete_range(&self, cf: &ColumnFamily, start: &[u8], end: &[u8]) -> Result<()> {
        let mut batch = single_op_batch(start, end);
        batch.delete_range(cf, start, end)?;
        self.write(batch)
    }

    /// Adds a merge operand for `key` (appended to the value by the default operator).
    pub fn merge(&self, cf: &ColumnFamily, key: &[u8], operand: &[u8]) -> Result<()> {
        let mut batch = single_op_batch(key, operand);
        batch.merge(cf, key, operand)?;
        self.write(batch)
    }

    /// Applies `batch` atomically: readers see all of it or none of it, and so does recovery.
    pub fn write(&self, batch: crate::lsm::batch::WriteBatch) -> Result<()> {
        write::write(&self.inner, batch)
    }

    /// fsyncs the WAL: every write acknowledged before survives power loss.
    pub fn sync_wal(&self) -> Result<()> {
        let mut writer = self.inner.writer.lock();
        self.inner.check_background_error()?;
        writer
            .sync()
            .inspect_err(|e| self.inner.set_background_error(e))
    }

    /// The value of `key`, as of now.
    pub fn get(&self, cf: &ColumnFamily, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_opt(cf, key, &ReadOptions::default())
    }

    /// The value of `key` with read options (e.g. at a snapshot).
    pub fn get_opt(
        &self,
        cf: &ColumnFamily,
        key: &[u8],
        options: &ReadOptions,
    ) -> Result<Option<Vec<u8>>> {
        Ok(read::get(&self.inner, cf, key, options)?.map(PinnedValue::into_vec))
    }

    /// [`Db::get_opt`] without copying a value found in an SST file out of its data block:
    /// the [`PinnedValue`] keeps the block alive and dereferences to the value's bytes.
    ///
    /// ```
    /// use flowstate::lsm::{Db, Options, ReadOptions};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    ///
    /// let db = Db::open(dir.path(), Options::default())?;
    /// let cf = db.default_cf();
    /// db.put(&cf, b"k", b"a value")?;
    /// db.flush()?;
    /// let value = db.get_pinned(&cf, b"k", &ReadOptions::default())?.expect("written");
    /// assert_eq!(&*value, b"a value");
    /// assert!(value.is_pinned());
    /// # Ok::<(), flowstate::Error>(())
    /// ```
    pub fn get_pinned(
        &self,
        cf: &ColumnFamily,
        key: &[u8],
        options: &ReadOptions,
    ) -> Result<Option<PinnedValue>> {
        read::get(&self.inner, cf, key, options)
    }

    /// An iterator over `cf` (bounds and snapshot in `options`); it pins what it reads.
    pub fn iter(&self, cf: &ColumnFamily, options: ReadOptions) -> Result<DbIterator> {
        read::iter(&self.inner, cf, options)
    }

    /// A consistent read view at the current sequence.
    pub fn snapshot(&self) -> Snapshot {
        let sequence = self.inner.visible_sequence.load(Ordering::Acquire);
        *self.inner.snapshots.lock().entry(sequence).or_insert(0) += 1;
        Snapshot {
            sequence,
            inner: self.inner.clone(),
        }
    }

    /// The last sequence number visible to readers.
    pub fn latest_sequence(&self) -> u64 {
        self.inner.visible_sequence.load(Ordering::Acquire)
    }

    /// Freezes every non-empty memtable and flushes them to L0 before returning (on this
    /// thread, or by waiting for the flush thread). Returns the sequence the flushed memtables
    /// cover: every write at or below it is in SSTs.
    pub fn flush(&self) -> Result<u64> {
        let sequence = write::freeze_memtables(&self.inner, false)?;
        flush::wait_for_flushes(&self.inner)?;
        Ok(sequence)
    }

    /// Freezes every non-empty memtable without flushing: no I/O, no thread woken — the
    /// synchronous part of a checkpoint. The frozen memtables are flushed by the next
    /// [`Db::flush`] or by the flush thread's next look (within 500 ms). Returns the sequence
    /// the frozen memtables cover.
    pub fn freeze_memtables(&self) -> Result<u64> {
        write::freeze_memtables(&self.inner, false)
    }

    /// Compacts every file of `cf` overlapping `[start, end]` (None = unbounded) down to the
    /// last level, dropping what tombstones, TTL filters and overwrites made dead.
    pub fn compact_range(
        &self,
        cf: &ColumnFamily,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
    ) -> Result<()> {
        background::compact_range(&self.inner, cf.id, start, end)
    }

    /// Runs pending flushes and compactions on the calling thread until none is due (for stores
    /// opened with `background_work = false`).
    pub fn run_background_work(&self) -> Result<()> {
        background::run_until_idle(&self.inner)
    }

    /// Makes an openable copy of the store in `dir` (which must not exist): memtables are
    /// flushed, SSTs hard-linked (copied across file systems), and a fresh manifest written.
    pub fn checkpoint(&self, dir: &Path) -> Result<LiveFiles> {
        self.flush()?;
        checkpoint::checkpoint(&self.inner, dir)
    }

    /// The files a consistent view of the store consists of right now, pinned against deletion
    /// while the result is alive (the base of incremental checkpoints).
    pub fn live_files(&self) -> LiveFiles {
        checkpoint::live_files(&self.inner)
    }

    /// Blocks until every memtable frozen so far is flushed (without freezing anything new).
    pub fn wait_for_flushes(&self) -> Result<()> {
        flush::wait_for_flushes(&self.inner)
    }

    /// From now on, every flush's output is recorded (and its files pinned) until
    /// [`Db::take_flushed`] hands it out: the changelog an incremental checkpoint uploads.
    pub(crate) fn capture_flushes(&self) {
        self.inner.flush_log.lock().get_or_insert_with(Vec::new);
    }

    /// The flushes recorded since the last call, oldest first (empty when not capturing).
    pub(crate) fn take_flushed(&self) -> Vec<FlushOutput> {
        self.inner
            .flush_log
            .lock()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Counters and sizes.
    pub fn stats(&self) -> DbStats {
        read::stats(&self.inner)
    }

    /// Stops background work and closes the store (also done on drop). Writes acknowledged
    /// before are in the WAL; unsynced ones reached the OS.
    pub fn close(&self) -> Result<()> {
        self.inner.shutdown.store(true, Ordering::Release);
        {
            let _core = self.inner.core.lock();
            self.inner.work.notify_all();
        }
        for handle in std::mem::take(&mut *self.background.lock()) {
            let _ = handle.join();
        }
        let mut writer = self.inner.writer.lock();
        writer.sync()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl crate::budget::Reclaim for DbInner {
    /// The store's block cache is a reclaimer of its own; a store frees memory only by
    /// flushing.
    fn reclaim(&self, _bytes: usize) -> usize {
        0
    }

    fn request_flush(&self, larger_than: usize) -> bool {
        if !self.options.background_work {
            return false;
        }
        let core = self.core.lock();
        let memory: usize = core
            .cfs
            .values()
            .map(|c| c.memtable.approximate_memory_usage())
            .sum();
        if memory <= larger_than || !core.frozen.is_empty() {
            // Smaller than the asker's, or a flush that will hand memory back is under way.
            return !core.frozen.is_empty() && memory > larger_than;
        }
        self.flush_requested.store(true, Ordering::Release);
        self.work.notify_all();
        true
    }
}

impl DbInner {
    fn check_background_error(&self) -> Result<()> {
        if self.shutdown.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        match self.background_error.lock().as_ref() {
            Some(failed) => Err(Error::io(
                &failed.path,
                std::io::Error::new(
                    failed.kind,
                    format!(
                        "the store at {} is read-only after a failed write: {}; reopen it to recover",
                        self.dir.display(),
                        failed.what
                    ),
                ),
            )),
            None => Ok(()),
        }
    }

    /// Records `error` as the store's background error (the first one wins): every later write,
    /// flush and compaction fails with it until the store is reopened.
    fn set_background_error(&self, error: &Error) {
        let mut slot = self.background_error.lock();
        if slot.is_none() {
            let (path, kind) = match error.root_cause() {
                Error::Io { path, source } => (path.clone(), source.kind()),
                _ => (self.dir.clone(), std::io::ErrorKind::Other),
            };
            tracing::error!(dir = %self.dir.display(), error = %error, "store turns read-only");
            *slot = Some(BackgroundError {
                path,
                kind,
                what: error.to_string(),
            });
        }
    }

    /// Rebuilds the readers' view from the core (call with the core lock held).
    /// Returns the view it replaced: drop it after releasing the core lock, since the last
    /// reference to an obsolete file deletes it (I/O that must not stall the core lock).
    #[must_use = "drop the retired view after releasing the core lock"]
    fn install_super_version(&self, core: &Core) -> Arc<SuperVersion> {
        let mut cfs = BTreeMap::new();
        for (id, state) in &core.cfs {
            let mut frozen: Vec<Arc<Memtable>> = core
                .frozen
                .iter()
                .flat_map(|b| b.memtables.iter())
                .filter(|(cf, _)| cf == id)
                .map(|(_, m)| m.clone())
                .collect();
            frozen.reverse();
            let (levels, l0_runs, tombstones) = match core.version.cfs.get(id) {
                Some(v) => {
                    let levels = std::array::from_fn(|level| {
                        v.levels[level]
                            .iter()
                            .filter_map(|f| core.tables.get(&f.number).cloned())
                            .collect()
                    });
                    (levels, v.l0_runs(), v.tombstones.clone())
                }
                None => (Default::default(), 0, Vec::new()),
            };
            cfs.insert(
                *id,
                CfView {
                    options: state.options.clone(),
                    memtable: state.memtable.clone(),
                    frozen,
                    levels,
                    l0_runs,
                    tombstones,
                },
            );
        }
        let retired = std::mem::replace(
            &mut *self.super_version.write(),
            Arc::new(SuperVersion { cfs }),
        );
        if let Some(budget) = &self.options.memory_budget {
            // A writer waiting for memory holds a view of the old memtables: it lets go of a
            // flushed one only when it looks again.
            budget.wake();
        }
        retired
    }

    fn current(&self) -> Arc<SuperVersion> {
        self.super_version.read().clone()
    }

    /// Sequence numbers of live snapshots, ascending.
    fn snapshot_sequences(&self) -> Vec<u64> {
        self.snapshots.lock().keys().copied().collect()
    }
}
