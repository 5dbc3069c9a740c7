//! WriteBatch: writes applied atomically across column families.
//!
//! Not yet implemented: see the open issue that owns this module.
