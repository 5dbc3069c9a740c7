//! The log-structured store, usable on its own: WAL, memtable, SST files, manifest, compaction,
//! column families, checkpoints (FORMAT.md §7–§9).

pub mod batch;
pub mod block_cache;
pub mod compaction;
pub mod db;
pub mod db_iter;
pub mod format;
pub mod iterator;
pub mod manifest;
pub mod memtable;
pub mod merge;
pub mod merge_iter;
pub mod options;
pub mod sst;
pub mod table;
pub mod version;
pub mod wal;

pub use db::{
    ColumnFamily, Db, DbIterator, DbStats, FlushOutput, LiveFile, LiveFiles, ReadOptions, Snapshot,
};
pub use options::{CfOptions, Options};
