//! Canonical, backend-independent savepoints (FORMAT.md §6).
//!
//! Not yet implemented: see the open issue that owns this module.
