//! Retention of completed checkpoints and deletion of files no retained checkpoint needs.
//!
//! Not yet implemented: see the open issue that owns this module.
