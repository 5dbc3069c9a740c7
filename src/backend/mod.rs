//! The [`StateBackend`] trait: the byte-level contract every backend implements.
//!
//! A backend stores, per registered state, composite keys (`crate::keys`) mapped to value bytes.
//! It knows nothing of user types; `crate::state` layers typed handles over it. Invariants every
//! backend keeps (and `tests/conformance.rs` checks): only key groups in its range are accepted,
//! a snapshot's synchronous part does not grow with state size, and restore gives back exactly
//! the snapshot's contents restricted to the restoring key-group range.

pub(crate) mod entry_key;
pub mod fs;
pub(crate) mod full_snapshot;
pub(crate) mod heap;
pub mod lsm;
pub mod memory;
pub(crate) mod parallel;
pub(crate) mod state_table;
pub(crate) mod stored_value;

use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::checkpoint::metadata::CheckpointMetadata;
use crate::checkpoint::registry::{CheckpointRegistry, read_metadata};
use crate::checkpoint::retention;
use crate::checkpoint::storage::{CheckpointStorage, SHARED_DIR, metadata_path};

use crate::error::{Error, Result};
use crate::keys::{DEFAULT_MAX_PARALLELISM, KeyGroupRange, check_max_parallelism};
use crate::ttl::{SharedClock, system_clock};

pub use crate::checkpoint::storage::FileRef;
pub use crate::descriptor::{BackendKind, StateDescriptor, StateId, StateKind};
pub use fs::{FsBackend, FsBackendOptions, latest_snapshot_handle};
pub use heap::HeapSnapshot;
pub use lsm::LsmBackend;
pub use memory::MemoryBackend;

/// What every backend is built with.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// Number of key groups of the job (1 ..= 32768).
    pub max_parallelism: u16,
    /// The key groups this backend owns.
    pub key_group_range: KeyGroupRange,
    /// Time source for TTL.
    pub clock: SharedClock,
}

impl BackendConfig {
    /// A config owning `range` of a job with `max_parallelism` key groups, on the system clock.
    pub fn new(max_parallelism: u16, range: KeyGroupRange) -> Result<Self> {
        let max_parallelism = check_max_parallelism(max_parallelism)?;
        if u32::from(range.last()) >= u32::from(max_parallelism) {
            return Err(Error::invalid(format!(
                "key-group range {range} exceeds max_parallelism {max_parallelism}"
            )));
        }
        Ok(BackendConfig {
            max_parallelism,
            key_group_range: range,
            clock: system_clock(),
        })
    }

    /// Sets the clock.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }
}

impl Default for BackendConfig {
    /// All 128 key groups of a job with the default max parallelism, on the system clock.
    fn default() -> Self {
        BackendConfig {
            max_parallelism: DEFAULT_MAX_PARALLELISM,
            key_group_range: KeyGroupRange::all(DEFAULT_MAX_PARALLELISM),
            clock: system_clock(),
        }
    }
}

/// One stored entry: composite key and value bytes.
pub type Entry = (Vec<u8>, Vec<u8>);

/// An iterator over entries in composite-key order.
pub type EntryIter<'a> = Box<dyn Iterator<Item = Result<Entry>> + 'a>;

/// The function of [`StateBackend::read_modify_write`]: gets the stored bytes (or `None`) and
/// writes the bytes to store into the (empty) buffer.
pub type ReadModifyWrite<'a> = dyn FnMut(Option<&[u8]>, &mut Vec<u8>) -> Result<()> + 'a;

/// [`StateBackend::read_modify_write`] as a [`StateBackend::get`] then a
/// [`StateBackend::put`]: the trait's default, and the fallback of backends that override it.
pub(crate) fn read_modify_write_by_get_put<B: StateBackend + ?Sized>(
    backend: &mut B,
    state: StateId,
    key: &[u8],
    f: &mut ReadModifyWrite<'_>,
) -> Result<()> {
    let stored = backend.get(state, key)?;
    let mut value = Vec::new();
    f(stored.as_deref(), &mut value)?;
    backend.put(state, key, &value)
}

/// Where a snapshot's data lives.
#[derive(Clone, Debug)]
pub enum SnapshotData {
    /// Held in memory by the process (memory backend): survives a task failure, not a crash.
    Memory(Arc<HeapSnapshot>),
    /// Files in checkpoint storage rooted at `root`.
    Files {
        /// Checkpoint storage root directory (or URI).
        root: String,
        /// Every file the snapshot needs.
        files: Vec<FileRef>,
    },
}

/// The result of a snapshot: what restore needs to rebuild the state.
#[derive(Clone, Debug)]
pub struct SnapshotHandle {
    /// The backend kind that wrote it; restore into another kind is refused.
    pub backend: BackendKind,
    /// The checkpoint it belongs to.
    pub checkpoint_id: u64,
    /// `max_parallelism` of the job that wrote it; restore requires the same.
    pub max_parallelism: u16,
    /// The key groups it covers.
    pub key_group_range: KeyGroupRange,
    /// Every state registered when it was taken, in state-id order.
    pub states: Vec<StateDescriptor>,
    /// The data.
    pub data: SnapshotData,
}

/// The asynchronous part of a snapshot: runs off the processing thread while the backend goes on.
pub trait SnapshotTask: Send {
    /// Writes (or finishes) the snapshot and returns its handle.
    fn run(self: Box<Self>) -> Result<SnapshotHandle>;
}

/// The byte-level contract of a keyed-state backend.
///
/// Keys are composite keys (`crate::keys::encode_composite_key`); their key group must be in the
/// backend's range. A backend belongs to one task and is driven from one thread at a time
/// (`Send`, `&mut self`); only [`SnapshotTask`]s run elsewhere.
pub trait StateBackend: Send {
    /// Which implementation this is.
    fn kind(&self) -> BackendKind;

    /// The configuration (max parallelism, key-group range, clock).
    fn config(&self) -> &BackendConfig;

    /// Registers a state, or returns the id of the identical state registered (or restored)
    /// before. A different kind, TTL or serializer under the same name is
    /// [`Error::StateMismatch`].
    fn register(&mut self, descriptor: &StateDescriptor) -> Result<StateId>;

    /// Every registered state, in state-id order.
    fn states(&self) -> Vec<StateDescriptor>;

    /// The value stored under `key`, if any.
    fn get(&mut self, state: StateId, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Stores `value` under `key`, replacing what was there.
    fn put(&mut self, state: StateId, key: &[u8], value: &[u8]) -> Result<()>;

    /// Removes `key` (no error if absent).
    fn delete(&mut self, state: StateId, key: &[u8]) -> Result<()>;

    /// Read-modify-write of one key in one call: `f` gets the bytes stored under `key` (or
    /// `None`) and writes the new bytes into the empty buffer it is handed; they are then stored
    /// under `key`, replacing what was there. When `f` fails, nothing is written and its error is
    /// returned. `f` is called exactly once per successful call.
    ///
    /// The default is [`StateBackend::get`] then [`StateBackend::put`]; a backend that can do
    /// better overrides it (the heap backends: one hash probe, and no allocation when the key
    /// exists and its value is not shared with a snapshot).
    fn read_modify_write(
        &mut self,
        state: StateId,
        key: &[u8],
        f: &mut ReadModifyWrite<'_>,
    ) -> Result<()> {
        read_modify_write_by_get_put(self, state, key, f)
    }

    /// Appends `operand` to the bytes stored under `key` (absent counts as empty): list append
    /// without a read of the old value in backends that support it.
    fn merge(&mut self, state: StateId, key: &[u8], operand: &[u8]) -> Result<()>;

    /// Every entry of `state` whose key starts with `prefix`, in key order. An empty prefix
    /// iterates the whole state.
    fn scan_prefix(&mut self, state: StateId, prefix: &[u8]) -> Result<EntryIter<'_>>;

    /// The entries of `state` whose key starts with `prefix` and sorts after `after` (byte
    /// order), in key order: [`StateBackend::scan_prefix`] resumed after the last key a caller
    /// has seen. A long scan can so go in bounded chunks, one call each, releasing the backend
    /// in between (the typed map iterators do). `after` need not be a stored key, nor start
    /// with `prefix`.
    ///
    /// The default skips the entries of [`StateBackend::scan_prefix`] up to `after`, which
    /// costs them on every call; backends that can seek override it (all of this crate's do).
    fn scan_prefix_after(
        &mut self,
        state: StateId,
        prefix: &[u8],
        after: &[u8],
    ) -> Result<EntryIter<'_>> {
        let after = after.to_vec();
        let entries = self.scan_prefix(state, prefix)?;
        Ok(Box::new(entries.skip_while(
            move |entry| matches!(entry, Ok((key, _)) if key.as_slice() <= after.as_slice()),
        )))
    }

    /// Removes every entry of `state` whose key starts with `prefix`.
    fn delete_prefix(&mut self, state: StateId, prefix: &[u8]) -> Result<()>;

    /// Synchronous part of a snapshot: freezes the current contents (cost independent of state
    /// size) and returns the asynchronous part, which may run on another thread.
    fn snapshot(&mut self, checkpoint_id: u64) -> Result<Box<dyn SnapshotTask>>;

    /// Replaces all contents with those of `handles` restricted to `key_group_range`, which
    /// becomes the backend's range. Several handles (a rescale merge) must cover disjoint key
    /// groups. States registered before keep their ids if compatible.
    fn restore(&mut self, handles: &[SnapshotHandle], key_group_range: KeyGroupRange)
    -> Result<()>;

    /// Tells the backend checkpoint `checkpoint_id` is complete (incremental backends use it to
    /// know which files are durably shared). The default does nothing.
    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        let _ = checkpoint_id;
        Ok(())
    }

    /// A handle through which retention decided outside the backend (the engine's job-level
    /// retention) releases this backend's checkpoints from another thread; `None` for backends
    /// whose checkpoints hold no storage (memory). The default is `None`.
    fn checkpoint_releaser(&self) -> Option<CheckpointReleaser> {
        None
    }
}

/// Releases a backend's completed checkpoints for a retention that lives outside the backend:
/// the engine's job checkpoints include one task checkpoint each, and a task checkpoint goes
/// when the job checkpoint that included it is subsumed, or when its job checkpoint never
/// completed. Releasing deletes the checkpoint (`_metadata` first), the shared files no
/// remaining checkpoint references, and their local-recovery copies.
#[derive(Debug, Clone)]
pub struct CheckpointReleaser {
    registry: Arc<Mutex<CheckpointRegistry>>,
    /// The backend's local-recovery copies, when it keeps them.
    local_recovery: Option<lsm::local_recovery::LocalCopies>,
}

impl CheckpointReleaser {
    pub(crate) fn new(
        registry: Arc<Mutex<CheckpointRegistry>>,
        local_recovery: Option<lsm::local_recovery::LocalCopies>,
    ) -> Self {
        CheckpointReleaser {
            registry,
            local_recovery,
        }
    }

    /// Discards every completed checkpoint with an id up to `up_to` that is not in `keep`, the
    /// shared files only they referenced and those files' local-recovery copies; checkpoints
    /// above `up_to` (in flight at the job level) stay. Returns the discarded ids.
    ///
    /// Safe while a snapshot of the backend runs: a running snapshot only relies on files of
    /// the newest published checkpoint, which is above `up_to` or in `keep`.
    pub fn release(&self, keep: &BTreeSet<u64>, up_to: u64) -> Result<Vec<u64>> {
        let mut registry = self.registry.lock();
        let (discarded, _) = retention::release(&mut registry, keep, up_to)?;
        if let Some(copies) = &self.local_recovery {
            copies.prune(SHARED_DIR, |path| registry.shared_references(path) > 0)?;
        }
        Ok(discarded)
    }
}

/// Checks the common preconditions of a restore: handles of `kind`, the same max parallelism,
/// disjoint key groups, and a target range inside `max_parallelism`.
pub(crate) fn check_restore_handles(
    kind: BackendKind,
    max_parallelism: u16,
    handles: &[SnapshotHandle],
    target: KeyGroupRange,
) -> Result<()> {
    if u32::from(target.last()) >= u32::from(max_parallelism) {
        return Err(Error::invalid(format!(
            "restore range {target} exceeds max_parallelism {max_parallelism}"
        )));
    }
    for (i, h) in handles.iter().enumerate() {
        if h.backend != kind {
            return Err(Error::BackendMismatch {
                expected: kind.to_string(),
                found: h.backend.to_string(),
            });
        }
        if h.max_parallelism != max_parallelism {
            return Err(Error::incompatible(format!(
                "snapshot of checkpoint {} was taken with max_parallelism {}, this backend has {}; \
                 max_parallelism cannot change across restores",
                h.checkpoint_id, h.max_parallelism, max_parallelism
            )));
        }
        for other in handles.iter().skip(i + 1) {
            if let Some(overlap) = h.key_group_range.intersect(&other.key_group_range) {
                return Err(Error::invalid(format!(
                    "restore handles overlap in key groups {overlap}"
                )));
            }
        }
    }
    Ok(())
}

/// Reads the `_metadata` of `handle`'s checkpoint from `storage`, the storage its files
/// (`files`) live in, and checks that it describes `handle`: the same backend, max parallelism,
/// key-group range, states and files. A `_metadata` that does not is an
/// [`Error::InvalidArgument`] naming it.
pub(crate) fn read_handle_metadata(
    storage: &dyn CheckpointStorage,
    handle: &SnapshotHandle,
    files: &[FileRef],
) -> Result<CheckpointMetadata> {
    let metadata = read_metadata(storage, handle.checkpoint_id)?;
    let listed: Vec<&FileRef> = metadata.files.iter().map(|f| &f.file).collect();
    if metadata.backend != handle.backend
        || metadata.max_parallelism != handle.max_parallelism
        || metadata.key_group_range != handle.key_group_range
        || metadata.states != handle.states
        || listed != files.iter().collect::<Vec<_>>()
    {
        return Err(Error::invalid(format!(
            "{} does not describe the snapshot handle of checkpoint {}",
            metadata_path(handle.checkpoint_id),
            handle.checkpoint_id
        )));
    }
    Ok(metadata)
}

/// Checks that `key`'s key group is in `range`.
pub(crate) fn check_key_group(key: &[u8], range: &KeyGroupRange) -> Result<()> {
    let key_group = crate::keys::key_group_of(key)
        .ok_or_else(|| Error::invalid("composite key shorter than its 2-byte key group"))?;
    if range.contains(key_group) {
        Ok(())
    } else {
        Err(Error::KeyGroupOutOfRange {
            key_group,
            first: range.first(),
            last: range.last(),
        })
    }
}
