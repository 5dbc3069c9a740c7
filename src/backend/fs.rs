//! FsBackend: heap state whose snapshots are full snapshot files in checkpoint storage.
//!
//! Not yet implemented: see the open issue that owns this module.
