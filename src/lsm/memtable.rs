//! The memtable: ordered in-memory writes before they are flushed to an SST.
//!
//! Not yet implemented: see the open issue that owns this module.
