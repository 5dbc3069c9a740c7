//! Bloom filter of an SST (FORMAT.md §8).
//!
//! Not yet implemented: see the open issue that owns this module.
