//! [`PinnedValue`]: a value a point lookup hands out without copying it out of the block it
//! was found in.

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;

use crate::codec::block::Block;

/// The value of a key as [`Db::get_pinned`](super::Db::get_pinned) returns it: a value found in
/// an SST file stays in its decoded data block, which this value keeps alive (one reference
/// count, no copy); a value from the memtable, or one a merge operator computed, is owned.
///
/// It dereferences to `&[u8]`. Holding it keeps its whole block in memory even after the block
/// cache has evicted it, so hold it for the work on the value, not for long.
#[derive(Clone)]
pub struct PinnedValue(Repr);

#[derive(Clone)]
enum Repr {
    /// `block.entries()[range]`.
    Block {
        block: Arc<Block>,
        range: Range<usize>,
    },
    Owned(Vec<u8>),
}

impl PinnedValue {
    /// The value at `range` of `block`'s entry area.
    pub(crate) fn in_block(block: Arc<Block>, range: Range<usize>) -> Self {
        PinnedValue(Repr::Block { block, range })
    }

    /// Whether the value borrows a data block (true) or owns its bytes.
    pub fn is_pinned(&self) -> bool {
        matches!(self.0, Repr::Block { .. })
    }

    /// The value as an owned vector: moved when owned, copied once when pinned.
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Repr::Owned(bytes) => bytes,
            Repr::Block { .. } => self.as_ref().to_vec(),
        }
    }
}

impl From<Vec<u8>> for PinnedValue {
    fn from(bytes: Vec<u8>) -> Self {
        PinnedValue(Repr::Owned(bytes))
    }
}

impl Deref for PinnedValue {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            // The range was taken from this block's entry area when the value was found.
            Repr::Block { block, range } => block.entries().get(range.clone()).unwrap_or_default(),
            Repr::Owned(bytes) => bytes,
        }
    }
}

impl AsRef<[u8]> for PinnedValue {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for PinnedValue {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for PinnedValue {}

impl PartialEq<[u8]> for PinnedValue {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

impl PartialEq<&[u8]> for PinnedValue {
    fn eq(&self, other: &&[u8]) -> bool {
        **self == **other
    }
}

impl PartialEq<Vec<u8>> for PinnedValue {
    fn eq(&self, other: &Vec<u8>) -> bool {
        **self == **other
    }
}

impl fmt::Debug for PinnedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PinnedValue").field(&&**self).finish()
    }
}
