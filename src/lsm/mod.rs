//! The log-structured store, usable on its own: WAL, memtable, SST files, manifest, compaction,
//! column families, checkpoints (FORMAT.md §7–§9).

pub(crate) mod batch;
pub(crate) mod block_cache;
pub(crate) mod compaction;
pub(crate) mod concat_iter;
pub(crate) mod db;
pub(crate) mod db_iter;
pub(crate) mod format;
pub(crate) mod iterator;
pub(crate) mod manifest;
pub(crate) mod memtable;
pub(crate) mod merge;
pub(crate) mod merge_iter;
pub(crate) mod options;
pub(crate) mod pinned;
pub(crate) mod sst;
pub(crate) mod table;
pub(crate) mod version;
pub(crate) mod wal;

pub use crate::codec::block::Compression;
pub use batch::WriteBatch;
pub use compaction::CompactionOptions;
pub use db::{
    CfStats, ColumnFamily, Db, DbIterator, DbStats, LiveFile, LiveFiles, ReadOptions, Snapshot,
};
pub use merge::{AppendOperator, CompactionFilter, FilterDecision, MergeOperator};
pub use options::{CfOptions, DEFAULT_BLOCK_CACHE_SIZE, DEFAULT_WRITE_BUFFER_SIZE, Options};
pub use pinned::PinnedValue;
pub use sst::{DEFAULT_BLOCK_SIZE, MAX_CONFIGURED_BLOCK_SIZE, SstOptions};
pub use version::NUM_LEVELS;
pub use wal::{RecoveryMode, SyncMode};
