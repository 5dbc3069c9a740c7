//! [`InternalIterator`]: the positioned, bidirectional cursor over sorted entries that block
//! iterators here and every iterator of the LSM store (memtable, SST, merging, user-facing)
//! implement and compose, in the manner of LevelDB's `Iterator`.
//!
//! Errors (a corrupt block, a failed read) are returned by the moving call and leave the iterator
//! invalid.

use crate::error::Result;

/// A bidirectional, seekable cursor over sorted entries.
pub trait InternalIterator: Send {
    /// Whether the iterator is positioned on an entry.
    fn valid(&self) -> bool;
    /// Positions on the first entry.
    fn seek_to_first(&mut self) -> Result<()>;
    /// Positions on the last entry.
    fn seek_to_last(&mut self) -> Result<()>;
    /// Positions on the first entry whose key is at or after `target`.
    fn seek(&mut self, target: &[u8]) -> Result<()>;
    /// Positions on the last entry whose key is at or before `target`.
    fn seek_for_prev(&mut self, target: &[u8]) -> Result<()>;
    /// Moves to the next entry; requires `valid()`.
    fn next(&mut self) -> Result<()>;
    /// Moves to the previous entry; requires `valid()`.
    fn prev(&mut self) -> Result<()>;
    /// The current key; requires `valid()`.
    fn key(&self) -> &[u8];
    /// The current value; requires `valid()`.
    fn value(&self) -> &[u8];
}
