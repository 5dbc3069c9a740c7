//! Checkpoint storage, `_metadata`, retention and canonical savepoints (FORMAT.md §4–§6).

pub mod metadata;
pub mod retention;
pub mod savepoint;
pub mod storage;
