//! [`FsBackend`]: heap state whose snapshots are full snapshot files in checkpoint storage.
//!
//! Like Flink's HashMapStateBackend with filesystem checkpoint storage. State lives in the same
//! heap store as the memory backend; the synchronous part of a snapshot is a
//! freeze (a clone of copy-on-write tables, one `Arc` per key group) and the
//! asynchronous part writes one file per run of `key_groups_per_file` key groups (FORMAT.md §5),
//! sorting each key group's entries there, then publishes
//! `_metadata` (§4) and applies retention. A checkpoint exists once its `_metadata` is durable.

use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::full_snapshot::{
    ExpectedFile, decode_full_snapshot_file, write_full_snapshot_file_from,
};
use super::heap::{HeapSnapshot, HeapStore};
use super::{
    BackendConfig, BackendKind, FileRef, SnapshotData, SnapshotHandle, SnapshotTask, StateBackend,
    StateDescriptor, StateId, check_restore_handles, read_handle_metadata,
};
use crate::checkpoint::metadata::{CheckpointFile, CheckpointMetadata};
use crate::checkpoint::registry::{CheckpointRegistry, RecoveryReport, read_metadata};
use crate::checkpoint::retention::{self, DEFAULT_RETAINED_CHECKPOINTS};
use crate::checkpoint::storage::{
    CheckpointStorage, checkpoint_dir, checkpoint_ids, metadata_path,
};
use crate::checkpoint::uri::storage_for_root;
use crate::error::{Error, Result};
use crate::keys::KeyGroupRange;
use crate::ttl::SharedClock;

/// Key groups per snapshot file by default: one, so a restore into any smaller key-group range
/// reads only the files of the groups it owns.
pub const DEFAULT_KEY_GROUPS_PER_FILE: u16 = 1;

/// Heap state with full snapshots written as files to a [`CheckpointStorage`].
///
/// One `FsBackend` writes to a storage root: creating it scans the root and removes incomplete
/// checkpoints (FORMAT.md §4.4).
///
/// ```
/// use std::sync::Arc;
/// use flowstate::{
///     BackendConfig, FsBackend, LocalDirStorage, StateBackend, StateDescriptor, StateKind,
/// };
/// use flowstate::keys::{composite_key, key_group_for_key};
///
/// let dir = tempfile::tempdir().unwrap();
/// let storage = Arc::new(LocalDirStorage::open(dir.path())?);
/// let mut backend = FsBackend::new(BackendConfig::default(), storage.clone())?;
/// let counts = backend.register(&StateDescriptor::new("counts", StateKind::Value))?;
/// let key = composite_key(key_group_for_key(b"alice", 128), b"alice", b"", b"");
/// backend.put(counts, &key, b"1")?;
/// let handle = backend.snapshot(1)?.run()?;
/// backend.put(counts, &key, b"2")?;
///
/// let mut restored = FsBackend::new(BackendConfig::default(), storage)?;
/// assert_eq!(restored.restore_latest()?, Some(1));
/// let counts = restored.register(&StateDescriptor::new("counts", StateKind::Value))?;
/// assert_eq!(restored.get(counts, &key)?, Some(b"1".to_vec()));
/// # let _ = handle;
/// # Ok::<(), flowstate::Error>(())
/// ```
#[derive(Debug)]
pub struct FsBackend {
    store: HeapStore,
    storage: Arc<dyn CheckpointStorage>,
    registry: Arc<Mutex<CheckpointRegistry>>,
    recovery: RecoveryReport,
    retained: usize,
    key_groups_per_file: u16,
}

/// Options of an [`FsBackend`]: build from `default()` with the setters.
///
/// ```
/// use flowstate::backend::fs::FsBackendOptions;
///
/// let options = FsBackendOptions::default().retained_checkpoints(5).key_groups_per_file(16);
/// assert!(options.validate().is_ok());
/// assert!(FsBackendOptions::default().retained_checkpoints(0).validate().is_err());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FsBackendOptions {
    /// Completed checkpoints kept, at least 1 (default
    /// [`crate::checkpoint::DEFAULT_RETAINED_CHECKPOINTS`]).
    pub retained_checkpoints: usize,
    /// One snapshot file per aligned run of this many key groups, at least 1 (default
    /// [`DEFAULT_KEY_GROUPS_PER_FILE`]). Larger runs mean fewer files, but a restore into a
    /// smaller range then also reads the other groups of a run it partly owns.
    pub key_groups_per_file: u16,
}

impl Default for FsBackendOptions {
    fn default() -> Self {
        FsBackendOptions {
            retained_checkpoints: DEFAULT_RETAINED_CHECKPOINTS,
            key_groups_per_file: DEFAULT_KEY_GROUPS_PER_FILE,
        }
    }
}

impl FsBackendOptions {
    /// Sets [`FsBackendOptions::retained_checkpoints`].
    pub fn retained_checkpoints(mut self, retained: usize) -> Self {
        self.retained_checkpoints = retained;
        self
    }

    /// Sets [`FsBackendOptions::key_groups_per_file`].
    pub fn key_groups_per_file(mut self, key_groups: u16) -> Self {
        self.key_groups_per_file = key_groups;
        self
    }

    /// Checks the options; [`Error::InvalidOption`] names the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.retained_checkpoints == 0 {
            return Err(Error::invalid_option(
                "FsBackendOptions::retained_checkpoints",
                "must be at least 1",
            ));
        }
        if self.key_groups_per_file == 0 {
            return Err(Error::invalid_option(
                "FsBackendOptions::key_groups_per_file",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl FsBackend {
    /// An empty backend writing checkpoints to `storage`, with the default options
    /// ([`FsBackend::open`]).
    pub fn new(config: BackendConfig, storage: Arc<dyn CheckpointStorage>) -> Result<Self> {
        FsBackend::open(config, storage, FsBackendOptions::default())
    }

    /// An empty backend writing checkpoints to `storage`. Checks `options` first, then scans
    /// `storage`: incomplete checkpoints and unreferenced files are removed (see
    /// [`FsBackend::recovery_report`]).
    pub fn open(
        config: BackendConfig,
        storage: Arc<dyn CheckpointStorage>,
        options: FsBackendOptions,
    ) -> Result<Self> {
        options.validate()?;
        let (registry, recovery) = CheckpointRegistry::open(storage.clone())?;
        Ok(FsBackend {
            store: HeapStore::new(config),
            storage,
            registry: Arc::new(Mutex::new(registry)),
            recovery,
            retained: options.retained_checkpoints,
            key_groups_per_file: options.key_groups_per_file,
        })
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
        let handle = snapshot_handle(self.storage.as_ref(), &metadata);
        let range = self.store.config().key_group_range;
        self.restore(&[handle], range)?;
        Ok(Some(metadata.checkpoint_id))
    }
}

/// The snapshot handle of a completed checkpoint described by `metadata` in `storage`.
pub(crate) fn snapshot_handle(
    storage: &dyn CheckpointStorage,
    metadata: &CheckpointMetadata,
) -> SnapshotHandle {
    SnapshotHandle {
        backend: metadata.backend,
        checkpoint_id: metadata.checkpoint_id,
        max_parallelism: metadata.max_parallelism,
        key_group_range: metadata.key_group_range,
        states: metadata.states.clone(),
        data: SnapshotData::Files {
            root: storage.location(),
            files: metadata.files.iter().map(|f| f.file.clone()).collect(),
        },
    }
}

/// The handle of the newest checkpoint in `storage` that has a `_metadata`, without changing
/// the storage (no clean-up): for a reader that is not the storage's writer. A newest
/// `_metadata` that does not decode is an error ([`Error::Corruption`]), never a silent step
/// back to an older checkpoint; so is a newer quarantined checkpoint.
pub fn latest_snapshot_handle(storage: &dyn CheckpointStorage) -> Result<Option<SnapshotHandle>> {
    let ids = checkpoint_ids(storage)?;
    for id in ids.into_iter().rev() {
        if !storage.exists(&metadata_path(id))? {
            continue;
        }
        let metadata = read_metadata(storage, id)?;
        crate::checkpoint::registry::check_no_newer_quarantined(storage, Some(id))?;
        return Ok(Some(snapshot_handle(storage, &metadata)));
    }
    crate::checkpoint::registry::check_no_newer_quarantined(storage, None)?;
    Ok(None)
}

/// The aligned runs of `per_file` key groups that cover `range`, clipped to it.
pub(crate) fn file_ranges(
    range: KeyGroupRange,
    per_file: u16,
) -> impl Iterator<Item = KeyGroupRange> {
    let per_file = u32::from(per_file.max(1));
    let (first, last) = (u32::from(range.first()), u32::from(range.last()));
    let mut start = first;
    std::iter::from_fn(move || {
        if start > last {
            return None;
        }
        let end = ((start / per_file + 1) * per_file - 1).min(last);
        let run = KeyGroupRange::new(start as u16, end as u16).ok();
        start = end + 1;
        run
    })
}

struct FsSnapshotTask {
    checkpoint_id: u64,
    max_parallelism: u16,
    frozen: HeapSnapshot,
    clock: SharedClock,
    storage: Arc<dyn CheckpointStorage>,
    registry: Arc<Mutex<CheckpointRegistry>>,
    retained: usize,
    key_groups_per_file: u16,
}

impl SnapshotTask for FsSnapshotTask {
    fn run(self: Box<Self>) -> Result<SnapshotHandle> {
        let now = self.clock.now_ms();
        let frozen = self.frozen;
        let range = frozen.key_group_range;
        let descriptors: Vec<StateDescriptor> =
            frozen.states.iter().map(|(d, _)| d.clone()).collect();
        let state_count = u32::try_from(descriptors.len())
            .map_err(|_| Error::limit_exceeded("too many states to snapshot"))?;
        let names: Vec<String> = descriptors.iter().map(|d| d.name.clone()).collect();
        let sizes: Vec<AtomicU64> = descriptors.iter().map(|_| AtomicU64::new(0)).collect();
        let spec = FullCheckpoint {
            storage: &self.storage,
            registry: &self.registry,
            retained: self.retained,
            checkpoint_id: self.checkpoint_id,
            backend: BackendKind::Fs,
            max_parallelism: self.max_parallelism,
            key_group_range: range,
            timestamp_ms: now,
            states: descriptors,
            key_groups_per_file: self.key_groups_per_file,
        };
        // Expired entries are left out while writing (no copy of the frozen tables), and each
        // key group is sorted here, off the processing thread.
        let handle = write_full_checkpoint(
            spec,
            &mut |key_groups| Ok(frozen.has_live_entries(key_groups, now)),
            &|out, id, key_groups| {
                write_full_snapshot_file_from(
                    out,
                    id,
                    key_groups,
                    state_count,
                    &mut |index, emit| frozen.emit_live_entries(index, key_groups, now, emit),
                    &sizes,
                )
            },
        )?;
        let sizes: Vec<u64> = sizes.iter().map(|s| s.load(Ordering::Relaxed)).collect();
        crate::observe::full_state_sizes(&names, (range.first(), range.last()), &sizes);
        Ok(handle)
    }
}

/// What a full checkpoint is: where it goes and the fields of its `_metadata`.
pub(crate) struct FullCheckpoint<'a> {
    pub storage: &'a Arc<dyn CheckpointStorage>,
    pub registry: &'a Mutex<CheckpointRegistry>,
    pub retained: usize,
    pub checkpoint_id: u64,
    pub backend: BackendKind,
    pub max_parallelism: u16,
    pub key_group_range: KeyGroupRange,
    pub timestamp_ms: u64,
    pub states: Vec<StateDescriptor>,
    pub key_groups_per_file: u16,
}

/// Writes one full snapshot file of (checkpoint id, key groups) to the writer; returns its size
/// and checksums. Called from several threads at once when the storage uploads in parallel.
pub(crate) type FileWrite<'a> = dyn Fn(
        &mut dyn crate::checkpoint::storage::CheckpointFileWriter,
        u64,
        KeyGroupRange,
    ) -> Result<crate::checkpoint::storage::Listed>
    + Sync
    + 'a;

/// Writes a full checkpoint (FORMAT.md §5): one file per run of key groups for which
/// `has_entries` says yes, written by `write_file(out, checkpoint_id, key_groups)`, then publishes
/// `_metadata` and applies retention. Shared by the fs backend and the LSM backend's full mode.
pub(crate) fn write_full_checkpoint(
    spec: FullCheckpoint<'_>,
    has_entries: &mut dyn FnMut(KeyGroupRange) -> Result<bool>,
    write_file: &FileWrite<'_>,
) -> Result<SnapshotHandle> {
    let id = spec.checkpoint_id;
    if spec.storage.exists(&metadata_path(id))? {
        return Err(Error::checkpoint_failed(
            id,
            format!(
                "it is already completed in {}; checkpoint ids must not be reused",
                spec.storage.location()
            ),
        ));
    }
    let mut ranges = Vec::new();
    for key_groups in file_ranges(spec.key_group_range, spec.key_groups_per_file) {
        if has_entries(key_groups)? {
            ranges.push(key_groups);
        }
    }
    let storage = spec.storage.as_ref();
    let write_one = |key_groups: KeyGroupRange| -> Result<CheckpointFile> {
        let path = format!(
            "{}/kg-{:05}-{:05}",
            checkpoint_dir(id),
            key_groups.first(),
            key_groups.last()
        );
        let mut writer = storage.create_file(&path)?;
        let listed = write_file(writer.as_mut(), id, key_groups)?;
        let written = writer.finish()?;
        debug_assert_eq!(written, listed.size);
        Ok(CheckpointFile {
            file: FileRef::new(path, &listed, key_groups),
            shared: false,
        })
    };
    // Files are encoded and streamed by up to `upload_parallelism` threads (object stores: one
    // request latency per file would otherwise add up); each streams, nothing is buffered whole.
    let parallelism = storage.upload_parallelism().clamp(1, ranges.len().max(1));
    let files = crate::backend::parallel::run_parallel(&ranges, parallelism, |r| write_one(*r))?;
    let metadata = CheckpointMetadata {
        checkpoint_id: id,
        backend: spec.backend,
        max_parallelism: spec.max_parallelism,
        key_group_range: spec.key_group_range,
        timestamp_ms: spec.timestamp_ms,
        states: spec.states,
        files,
        extra: Vec::new(),
    };
    spec.storage.publish_metadata(id, &metadata.encode()?)?;
    let handle = snapshot_handle(spec.storage.as_ref(), &metadata);
    let mut registry = spec.registry.lock();
    registry.add_completed(metadata);
    retention::apply(&mut registry, spec.retained)?;
    Ok(handle)
}

/// A verified file of a handle, ready to decode.
struct VerifiedFile {
    path: String,
    bytes: Vec<u8>,
    expected: ExpectedFile,
    /// State names by the file's state index.
    states: Arc<Vec<StateDescriptor>>,
}

impl FsBackend {
    /// Reads `_metadata` and every file of `handle` whose key groups meet `range`, verifying
    /// size, crc32 and the whole file structure before anything is restored.
    fn verify_handle(
        &self,
        handle: &SnapshotHandle,
        range: KeyGroupRange,
        out: &mut Vec<VerifiedFile>,
    ) -> Result<()> {
        let SnapshotData::Files { root, files } = &handle.data else {
            return Err(Error::invalid(
                "an fs-backend handle must reference files, found in-memory data",
            ));
        };
        let (storage, _) = storage_for_root(&self.storage, root)?;
        let metadata = read_handle_metadata(storage.as_ref(), handle, files)?;
        let states = Arc::new(metadata.states.clone());
        let state_count =
            u32::try_from(states.len()).map_err(|_| Error::limit_exceeded("too many states"))?;
        for file in metadata
            .files
            .iter()
            .map(|f| &f.file)
            .filter(|f| f.key_groups.intersect(&range).is_some())
        {
            let path = file.path.as_str();
            let bytes = crate::checkpoint::storage::read_listed(
                storage.as_ref(),
                path,
                &crate::checkpoint::storage::Listed::of(file),
            )?;
            let expected = ExpectedFile {
                checkpoint_id: handle.checkpoint_id,
                key_groups: file.key_groups,
                state_count,
            };
            decode_full_snapshot_file(&bytes, path, &expected, |_, _, _| Ok(()))?;
            out.push(VerifiedFile {
                path: file.path.clone(),
                bytes,
                expected,
                states: states.clone(),
            });
        }
        Ok(())
    }
}

impl StateBackend for FsBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Fs
    }

    super::heap::delegate_to_heap_store!(store);

    fn checkpoint_releaser(&self) -> Option<super::CheckpointReleaser> {
        Some(super::CheckpointReleaser::new(self.registry.clone(), None))
    }

    fn snapshot(&mut self, checkpoint_id: u64) -> Result<Box<dyn SnapshotTask>> {
        let config = self.store.config();
        Ok(Box::new(FsSnapshotTask {
            checkpoint_id,
            max_parallelism: config.max_parallelism,
            clock: config.clock.clone(),
            frozen: self.store.freeze(),
            storage: self.storage.clone(),
            registry: self.registry.clone(),
            retained: self.retained,
            key_groups_per_file: self.key_groups_per_file,
        }))
    }

    fn restore(
        &mut self,
        handles: &[SnapshotHandle],
        key_group_range: KeyGroupRange,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let _span = tracing::info_span!(
            "restore",
            backend = "fs",
            handles = handles.len(),
            target = %key_group_range
        )
        .entered();
        check_restore_handles(
            BackendKind::Fs,
            self.store.config().max_parallelism,
            handles,
            key_group_range,
        )?;
        let mut verified = Vec::new();
        for handle in handles {
            self.verify_handle(handle, key_group_range, &mut verified)?;
        }
        // Everything was checked: from here on a failure would be a bug, not bad input.
        self.store.begin_restore(handles, key_group_range)?;
        for file in &verified {
            let ids: Vec<Option<StateId>> = file
                .states
                .iter()
                .map(|d| self.store.id_of(&d.name))
                .collect();
            let store = &mut self.store;
            decode_full_snapshot_file(
                &file.bytes,
                &file.path,
                &file.expected,
                |index, key, value| {
                    let id = ids.get(index as usize).copied().flatten().ok_or_else(|| {
                        Error::not_found(format!(
                            "state index {index} of {} is not registered",
                            file.path
                        ))
                    })?;
                    store
                        .restore_entry(id, key.to_vec(), value.to_vec())
                        .map(|_| ())
                },
            )?;
        }
        let read: u64 = verified.iter().map(|f| f.bytes.len() as u64).sum();
        let elapsed = started.elapsed();
        tracing::info!(
            files = verified.len(),
            bytes = read,
            duration = ?elapsed,
            "fs restore finished"
        );
        crate::observe::restore_finished("fs", elapsed, read);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ranges_are_aligned_and_clipped() {
        let r = |a, b| KeyGroupRange::new(a, b).unwrap();
        let runs: Vec<_> = file_ranges(r(3, 17), 8)
            .map(|g| (g.first(), g.last()))
            .collect();
        assert_eq!(runs, [(3, 7), (8, 15), (16, 17)]);
        let runs: Vec<_> = file_ranges(r(65534, 65535), 1)
            .map(|g| (g.first(), g.last()))
            .collect();
        assert_eq!(runs, [(65534, 65534), (65535, 65535)]);
        assert_eq!(file_ranges(r(0, 32767), 1).count(), 32768);
        assert_eq!(file_ranges(r(0, 127), 200).count(), 1);
    }
}
