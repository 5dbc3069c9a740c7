//! Block cache of decompressed SST blocks.
//!
//! Not yet implemented: see the open issue that owns this module.
