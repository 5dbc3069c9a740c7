//! The iterator trait every layer of the store implements and composes (memtable, block, SST,
//! merging, user-facing), defined in [`crate::codec::iter`] next to the block iterator.
//!
//! Positioned iterators over internal keys (`lsm::format`) in [`compare_internal`] order, both
//! directions.
//!
//! [`compare_internal`]: super::format::compare_internal

pub use crate::codec::iter::InternalIterator;
