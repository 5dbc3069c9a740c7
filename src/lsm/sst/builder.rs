//! SST builder (FORMAT.md §8).
//!
//! Not yet implemented: see the open issue that owns this module.
