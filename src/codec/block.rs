//! Block format (FORMAT.md §1.3): prefix-compressed entries with restart points, optional zstd, crc32.
//!
//! Not yet implemented: see the open issue that owns this module.
