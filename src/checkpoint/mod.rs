//! Checkpoint storage, `_metadata`, the registry of completed checkpoints and retention
//! (FORMAT.md §4, §10).

pub(crate) mod metadata;
#[cfg(feature = "object-store")]
pub(crate) mod object_store;
pub(crate) mod registry;
pub(crate) mod retention;
pub mod storage;
pub mod uri;

pub use registry::{QUARANTINE_DIR, Quarantined, RecoveryReport};
pub use retention::DEFAULT_RETAINED_CHECKPOINTS;
