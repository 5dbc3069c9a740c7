//! The `_metadata` file of a checkpoint (FORMAT.md §4).
//!
//! Not yet implemented: see the open issue that owns this module.
