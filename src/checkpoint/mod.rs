//! Checkpoint storage, `_metadata`, the registry of completed checkpoints, retention and
//! canonical savepoints (FORMAT.md §4–§6, §10).

pub mod inspect;
pub mod metadata;
#[cfg(feature = "object-store")]
pub mod object_store;
pub mod registry;
pub mod retention;
pub mod savepoint;
pub mod storage;
pub mod uri;
pub mod verify;
