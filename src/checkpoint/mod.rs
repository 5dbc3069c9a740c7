//! Checkpoint storage, `_metadata`, the registry of completed checkpoints, retention and
//! canonical savepoints (FORMAT.md §4–§6, §10).

#[cfg(feature = "cli")]
pub(crate) mod inspect;
pub(crate) mod metadata;
#[cfg(feature = "object-store")]
pub(crate) mod object_store;
pub(crate) mod registry;
pub(crate) mod retention;
pub mod savepoint;
pub mod storage;
pub mod uri;
pub mod verify;

pub use registry::{QUARANTINE_DIR, Quarantined, RecoveryReport};
pub use retention::DEFAULT_RETAINED_CHECKPOINTS;
