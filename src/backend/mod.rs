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
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::checkpoint::metadata::CheckpointMetadata;
use crate::checkpoint::registry::{CheckpointRegistry, read_metadata};
use crate::checkpoint::retention;
use crate::checkpoint::storage::{CheckpointStorage, SHARED_DIR, metadata_path};

use crate::codec::cursor::Cursor;
use crate::codec::varint::put_varint32;
use crate::error::{Error, Result};
use crate::keys::{DEFAULT_MAX_PARALLELISM, KeyGroupRange, check_max_parallelism};
use crate::ttl::{SharedClock, TtlConfig, UpdateType, Visibility, system_clock};

pub use fs::{FsBackend, latest_snapshot_handle};
pub use heap::HeapSnapshot;
pub use lsm::LsmBackend;
pub use memory::MemoryBackend;

/// The id a backend hands out when a state is registered; valid for that backend only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StateId(pub u32);

/// The kind of a state. It decides how values are laid out (FORMAT.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StateKind {
    /// One value per (key, namespace).
    Value,
    /// A list per (key, namespace), appended to with [`StateBackend::merge`].
    List,
    /// A map per (key, namespace): one stored entry per map key (the composite key's user key).
    Map,
    /// One accumulated value per (key, namespace), folded with a reduce function.
    Reducing,
    /// One accumulator per (key, namespace), folded with an aggregate function.
    Aggregating,
}

impl StateKind {
    /// On disk: never change. The tag of the kind in metadata (FORMAT.md §3).
    pub fn tag(self) -> u8 {
        match self {
            StateKind::Value => 0,
            StateKind::List => 1,
            StateKind::Map => 2,
            StateKind::Reducing => 3,
            StateKind::Aggregating => 4,
        }
    }

    /// The kind of an on-disk tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            0 => StateKind::Value,
            1 => StateKind::List,
            2 => StateKind::Map,
            3 => StateKind::Reducing,
            4 => StateKind::Aggregating,
            _ => return None,
        })
    }
}

/// What identifies a state: name, kind, TTL and serializer id.
///
/// Registering the same name again must give an identical descriptor, or the backend answers
/// [`Error::StateMismatch`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateDescriptor {
    /// Unique name of the state within the backend.
    pub name: String,
    /// The state's kind.
    pub kind: StateKind,
    /// TTL settings, if entries expire.
    pub ttl: Option<TtlConfig>,
    /// Names the value serializer (and its version); a different id on re-registration or restore
    /// is a mismatch. The typed layer uses `"postcard"` unless told otherwise.
    pub serializer: String,
}

impl StateDescriptor {
    /// A descriptor with no TTL and the default `"postcard"` serializer id.
    pub fn new(name: impl Into<String>, kind: StateKind) -> Self {
        StateDescriptor {
            name: name.into(),
            kind,
            ttl: None,
            serializer: "postcard".to_string(),
        }
    }

    /// Sets the TTL.
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the serializer id.
    pub fn with_serializer(mut self, serializer: impl Into<String>) -> Self {
        self.serializer = serializer.into();
        self
    }

    /// Checks that `requested` may use the state registered (or restored) as `self`.
    pub fn check_compatible(&self, requested: &StateDescriptor) -> Result<()> {
        if self == requested {
            return Ok(());
        }
        Err(Error::StateMismatch {
            name: self.name.clone(),
            existing: self.summary(),
            requested: requested.summary(),
        })
    }

    /// Appends the descriptor's on-disk encoding (FORMAT.md §3.4) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint32(out, self.name.len() as u32);
        out.extend_from_slice(self.name.as_bytes());
        out.push(self.kind.tag());
        match &self.ttl {
            None => out.push(0),
            Some(ttl) => {
                out.push(1);
                out.extend_from_slice(&ttl.ttl_ms.to_le_bytes());
                out.push(match ttl.update_type {
                    UpdateType::OnCreateAndWrite => 0,
                    UpdateType::OnReadAndWrite => 1,
                });
                out.push(match ttl.visibility {
                    Visibility::NeverReturnExpired => 0,
                    Visibility::ReturnExpiredIfNotCleanedUp => 1,
                });
            }
        }
        put_varint32(out, self.serializer.len() as u32);
        out.extend_from_slice(self.serializer.as_bytes());
    }

    /// Decodes a descriptor written by [`StateDescriptor::encode`].
    pub(crate) fn decode(cursor: &mut Cursor<'_>) -> Result<Self> {
        let name = cursor.string("state name")?;
        let at = cursor.offset();
        let tag = cursor.u8("state kind")?;
        let kind = StateKind::from_tag(tag).ok_or_else(|| {
            Error::corruption(cursor.file(), at, format!("unknown state kind {tag}"))
        })?;
        let at = cursor.offset();
        let ttl = match cursor.u8("ttl flag")? {
            0 => None,
            1 => {
                let ttl_ms = cursor.u64_le("ttl")?;
                let at = cursor.offset();
                let update_type = match cursor.u8("ttl update type")? {
                    0 => UpdateType::OnCreateAndWrite,
                    1 => UpdateType::OnReadAndWrite,
                    t => {
                        return Err(Error::corruption(
                            cursor.file(),
                            at,
                            format!("unknown TTL update type {t}"),
                        ));
                    }
                };
                let at = cursor.offset();
                let visibility = match cursor.u8("ttl visibility")? {
                    0 => Visibility::NeverReturnExpired,
                    1 => Visibility::ReturnExpiredIfNotCleanedUp,
                    t => {
                        return Err(Error::corruption(
                            cursor.file(),
                            at,
                            format!("unknown TTL visibility {t}"),
                        ));
                    }
                };
                Some(TtlConfig {
                    ttl_ms,
                    update_type,
                    visibility,
                })
            }
            flag => {
                return Err(Error::corruption(
                    cursor.file(),
                    at,
                    format!("bad TTL flag {flag}"),
                ));
            }
        };
        let serializer = cursor.string("serializer id")?;
        if name.is_empty() {
            return Err(cursor.error("state name is empty"));
        }
        Ok(StateDescriptor {
            name,
            kind,
            ttl,
            serializer,
        })
    }

    fn summary(&self) -> String {
        let ttl = match &self.ttl {
            None => "no TTL".to_string(),
            Some(t) => format!(
                "TTL {} ms ({:?}, {:?})",
                t.ttl_ms, t.update_type, t.visibility
            ),
        };
        format!(
            "{:?} state, {ttl}, serializer '{}'",
            self.kind, self.serializer
        )
    }
}

/// Which implementation a backend (or a snapshot handle) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackendKind {
    /// [`MemoryBackend`].
    Memory,
    /// The file-system backend (heap state, full snapshots as files).
    Fs,
    /// The log-structured backend (incremental snapshots).
    Lsm,
}

impl BackendKind {
    /// On disk: never change. The tag of the kind in `_metadata` (FORMAT.md).
    pub fn tag(self) -> u8 {
        match self {
            BackendKind::Memory => 0,
            BackendKind::Fs => 1,
            BackendKind::Lsm => 2,
        }
    }

    /// The kind of an on-disk tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            0 => BackendKind::Memory,
            1 => BackendKind::Fs,
            2 => BackendKind::Lsm,
            _ => return None,
        })
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Memory => "memory",
            BackendKind::Fs => "fs",
            BackendKind::Lsm => "lsm",
        })
    }
}

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
    pub fn new(max_parallelism: u32, range: KeyGroupRange) -> Result<Self> {
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
pub fn read_modify_write_by_get_put<B: StateBackend + ?Sized>(
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

/// A file a snapshot handle references, in checkpoint storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// Path relative to the checkpoint storage root (e.g. `chk-7/kg-0003` or `shared/000012.sst`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC-32 (IEEE) of the whole file.
    pub crc32: u32,
    /// XXH3-64 of the whole file: a content checksum (the CRC-32s inside SST blocks make the
    /// whole-file CRC-32 of an SST depend on its block sizes only). `None` for files listed by
    /// checkpoints of `_metadata` version 1.
    pub xxh3: Option<u64>,
    /// The key groups the file holds entries of.
    pub key_groups: KeyGroupRange,
}

impl FileRef {
    /// A file at `path` with the size and checksums `listed`, holding entries of `key_groups`.
    pub fn new(
        path: impl Into<String>,
        listed: &crate::checkpoint::storage::Listed,
        key_groups: KeyGroupRange,
    ) -> Self {
        FileRef {
            path: path.into(),
            size: listed.size,
            crc32: listed.crc32,
            xxh3: listed.xxh3,
            key_groups,
        }
    }
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
pub fn check_restore_handles(
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
            return Err(Error::invalid(format!(
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
pub fn check_key_group(key: &[u8], range: &KeyGroupRange) -> Result<()> {
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
