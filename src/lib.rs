//! # flowstate
//!
//! An embeddable keyed-state storage engine for stream processors: per-key value, list, map,
//! reducing and aggregating state with namespaces and TTL, behind one [`StateBackend`] trait with
//! three backends — [`MemoryBackend`] (heap state, in-memory snapshots), [`FsBackend`] (heap
//! state, full snapshots as files) and [`LsmBackend`] (state in the log-structured store
//! [`lsm::Db`], incremental checkpoints) — and consistent snapshots that restore into any
//! key-group range (rescaling). [`engine`] runs pipelines on them with exactly-once results.
//!
//! Layers, from the bottom: `codec` (byte building blocks, internal), [`keys`] (key groups and the
//! composite key), [`ttl`] (TTL config, clock, value envelope), [`lsm`] (the store),
//! [`checkpoint`] (checkpoint storage, metadata, savepoints), [`backend`] (the trait and its
//! implementations), [`state`] (typed state handles), [`engine`] (barrier snapshots).
//! [`observe`] names the metrics every layer records through the `metrics` facade. See
//! `ARCHITECTURE.md` and `FORMAT.md`.
//!
//! **Start with the [`guide`]**: choosing a backend, typed state, TTL, snapshot and restore,
//! rescaling, the LSM store alone, checkpoints on object storage and the exactly-once engine,
//! each with an example that runs.
//!
//! ```
//! use flowstate::{KeyedState, MemoryBackend, BackendConfig};
//!
//! let keyed = KeyedState::new(MemoryBackend::new(BackendConfig::default()));
//! let count = keyed.value_state::<u64>("count")?;
//! keyed.set_current_key(&"alice")?;
//! count.update(&(count.value()?.unwrap_or(0) + 1))?;
//! assert_eq!(count.value()?, Some(1));
//! # Ok::<(), flowstate::Error>(())
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(clippy::unwrap_used)]

/// Builder-style setters for an options struct: `fn field(mut self, value: T) -> Self` per
/// listed field, each documented as setting the field of the same name.
macro_rules! option_setters {
    ($owner:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        $(
            #[doc = concat!("Sets [`", stringify!($owner), "::", stringify!($field), "`].")]
            pub fn $field(mut self, value: $ty) -> Self {
                self.$field = value;
                self
            }
        )*
    };
}

pub mod backend;
pub mod budget;
pub mod checkpoint;
mod clock;
mod codec;
mod descriptor;
pub mod engine;
pub mod error;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
#[doc = include_str!("../docs/guide.md")]
pub mod guide {}
mod hash;
#[cfg(feature = "cli")]
mod inspect;
pub mod keys;
mod lock;
pub mod lsm;
pub mod observe;
pub mod savepoint;
pub mod state;
pub mod ttl;
pub mod verify;

pub use backend::lsm::LsmBackendOptions;
pub use backend::{
    BackendConfig, BackendKind, FsBackend, LsmBackend, MemoryBackend, SnapshotHandle, SnapshotTask,
    StateBackend, StateDescriptor, StateId, StateKind,
};
pub use budget::MemoryBudget;
pub use checkpoint::storage::{CheckpointStorage, LocalDirStorage};
pub use error::{Error, Result};
pub use keys::KeyGroupRange;
pub use state::{
    AggregateFunction, AggregatingState, KeyedState, ListState, MapState, ReducingState,
    StateOptions, ValueState, key_group_for,
};
pub use ttl::{Clock, ManualClock, SystemClock, TtlConfig, UpdateType, Visibility};

/// What the crate's own integration tests, benches and fuzz targets reach below the API: not part
/// of it, no stability promise.
#[doc(hidden)]
pub mod internals {
    pub use crate::backend::lsm::local_recovery::root_key;
    pub use crate::checkpoint::metadata::CheckpointMetadata;
    pub use crate::checkpoint::registry::{CheckpointRegistry, read_metadata};
    pub use crate::codec::varint::{get_varint32, get_varint64};
    pub use crate::engine::coordinator::{CheckpointCoordinator, OperatorAck, format_table};
    pub use crate::engine::source::{
        DEFAULT_BATCH_RECORDS, SourcePosition, SplitMix, generate_input,
    };

    /// The handle of checkpoint `metadata.checkpoint_id` in `storage` (what a backend's snapshot
    /// returned for it).
    pub fn snapshot_handle(
        storage: &dyn crate::checkpoint::storage::CheckpointStorage,
        metadata: &CheckpointMetadata,
    ) -> crate::SnapshotHandle {
        crate::backend::fs::snapshot_handle(storage, metadata)
    }

    /// [`MapState::iter`](crate::MapState::iter) reading `chunk` entries per backend call (at
    /// least 1) instead of [`MAP_ITER_CHUNK`](crate::state::MAP_ITER_CHUNK): lets tests cross
    /// many chunk boundaries with small maps.
    pub fn map_iter_in_chunks<'k, K, V>(
        map: &crate::MapState<'k, K, V>,
        chunk: usize,
    ) -> crate::Result<crate::state::MapIter<'k, K, V>>
    where
        K: serde::Serialize + serde::de::DeserializeOwned,
        V: serde::Serialize + serde::de::DeserializeOwned,
    {
        map.iter_in_chunks(chunk)
    }

    /// The elements of a stored list value (FORMAT.md §3.2), each still in its TTL envelope
    /// when the state has TTL.
    pub fn list_elements(bytes: &[u8]) -> crate::Result<Vec<&[u8]>> {
        crate::ttl::list_elements(bytes)
    }

    /// Appends one element to a stored list value (FORMAT.md §3.2).
    pub fn push_list_element(out: &mut Vec<u8>, element: &[u8]) {
        crate::ttl::push_list_element(out, element)
    }

    /// Decodes a write batch as the WAL reader does (FORMAT.md §7.4): `Ok` if `bytes` is one.
    pub fn decode_write_batch(bytes: &[u8], file: &str, offset: u64) -> crate::Result<()> {
        crate::lsm::batch::WriteBatch::decode(bytes, file, offset).map(drop)
    }

    /// One entry of an SST file: user key, sequence, kind (FORMAT.md §8.2: 0 Delete, 1 Put,
    /// 2 Merge, 3 RangeDelete).
    pub type SstEntry = (Vec<u8>, u64, u8);

    /// The smallest and largest user keys the store's metadata records for a live file, and
    /// every entry of the file as read from it, in file order.
    pub fn sst_contents(
        file: &crate::lsm::LiveFile,
    ) -> crate::Result<(Vec<u8>, Vec<u8>, Vec<SstEntry>)> {
        sst_contents_on(crate::fs::std_fs().as_ref(), file)
    }

    /// [`sst_contents`] of a file on `fs`.
    pub fn sst_contents_on(
        fs: &dyn crate::fs::FileSystem,
        file: &crate::lsm::LiveFile,
    ) -> crate::Result<(Vec<u8>, Vec<u8>, Vec<SstEntry>)> {
        use crate::lsm::iterator::InternalIterator;
        let reader = crate::lsm::sst::SstReader::open_on(fs, &file.path, 0, None, false)?;
        let mut iter = reader.scan_iter();
        iter.seek_to_first()?;
        let mut entries = Vec::new();
        let label = file.path.display().to_string();
        while iter.valid() {
            let key = crate::lsm::format::parse_internal_key(iter.key(), &label, 0)?;
            entries.push((key.user_key.to_vec(), key.sequence, key.kind as u8));
            iter.next()?;
        }
        Ok((
            file.meta.smallest_user_key().to_vec(),
            file.meta.largest_user_key().to_vec(),
            entries,
        ))
    }

    /// The range tombstones of the store's current version: (column family, start, end
    /// exclusive, sequence).
    pub fn range_tombstones(db: &crate::lsm::Db) -> Vec<(String, Vec<u8>, Vec<u8>, u64)> {
        let live = db.live_files();
        live.version
            .cfs
            .values()
            .flat_map(|cf| {
                cf.tombstones
                    .iter()
                    .map(|t| (cf.name.clone(), t.start.clone(), t.end.clone(), t.sequence))
            })
            .collect()
    }

    /// The number of sorted runs in L0 of each column family (name, runs, files): the files of
    /// one flush form one run.
    pub fn l0_runs(db: &crate::lsm::Db) -> Vec<(String, usize, usize)> {
        let live = db.live_files();
        live.version
            .cfs
            .values()
            .map(|cf| (cf.name.clone(), cf.l0_runs(), cf.levels[0].len()))
            .collect()
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
