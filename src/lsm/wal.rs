//! Write-ahead log (FORMAT.md §7).
//!
//! Not yet implemented: see the open issue that owns this module.
