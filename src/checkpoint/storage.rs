//! Checkpoint storage: where checkpoint files live (a local directory).
//!
//! Not yet implemented: see the open issue that owns this module.
