//! [`StoredValue`]: the value bytes of one heap-store entry, inline when short.
//!
//! Each entry's value sits in its hash bucket: a short one inline (no allocation, no pointer to
//! follow: one cache miss per access of a large state, not two), a longer one behind an `Arc`
//! shared with the snapshots that copied its key group, copied on its first write after that.

use std::ops::Deref;
use std::sync::Arc;

/// Values of at most this many bytes are stored inline (a `(count, sum)` pair in postcard, with
/// or without a TTL timestamp, fits).
pub const INLINE_VALUE_LEN: usize = 30;

/// The bytes of one stored value: inline up to [`INLINE_VALUE_LEN`] bytes, else on the heap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredValue {
    /// A short value: its length and bytes (only the first `len` are meaningful).
    Inline {
        /// Number of bytes used.
        len: u8,
        /// The bytes.
        bytes: [u8; INLINE_VALUE_LEN],
    },
    /// A longer value, shared with snapshots until it is written.
    Heap(Arc<Vec<u8>>),
}

impl StoredValue {
    /// A value holding a copy of `bytes`.
    #[inline]
    pub fn new(bytes: &[u8]) -> Self {
        let mut value = StoredValue::Inline {
            len: 0,
            bytes: [0; INLINE_VALUE_LEN],
        };
        value.set(bytes);
        value
    }

    /// A value taking `bytes` (kept on the heap as is when too long to be inline).
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        if bytes.len() <= INLINE_VALUE_LEN {
            StoredValue::new(&bytes)
        } else {
            StoredValue::Heap(Arc::new(bytes))
        }
    }

    /// The bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            StoredValue::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(bytes),
            StoredValue::Heap(bytes) => bytes,
        }
    }

    /// Replaces the bytes by `value`, reusing this value's storage where it fits.
    #[inline]
    pub fn set(&mut self, value: &[u8]) {
        match self {
            StoredValue::Heap(bytes) if value.len() > INLINE_VALUE_LEN => match Arc::get_mut(bytes)
            {
                // Not shared with a snapshot: overwrite in place.
                Some(owned) => {
                    owned.clear();
                    owned.extend_from_slice(value);
                }
                None => *bytes = Arc::new(value.to_vec()),
            },
            _ => {
                let mut inline = [0; INLINE_VALUE_LEN];
                match inline.get_mut(..value.len()) {
                    Some(to) => {
                        to.copy_from_slice(value);
                        *self = StoredValue::Inline {
                            len: value.len() as u8,
                            bytes: inline,
                        };
                    }
                    None => *self = StoredValue::Heap(Arc::new(value.to_vec())),
                }
            }
        }
    }

    /// Appends `operand` to the bytes.
    pub fn append(&mut self, operand: &[u8]) {
        match self {
            StoredValue::Heap(bytes) => Arc::make_mut(bytes).extend_from_slice(operand),
            StoredValue::Inline { .. } => {
                let mut joined = Vec::with_capacity(self.as_slice().len() + operand.len());
                joined.extend_from_slice(self.as_slice());
                joined.extend_from_slice(operand);
                self.set(&joined);
            }
        }
    }
}

impl Deref for StoredValue {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fits_in_32_bytes() {
        // Inline in a hash bucket next to a 24-byte key: 56 bytes, one cache line.
        assert_eq!(std::mem::size_of::<StoredValue>(), 32);
    }

    proptest! {
        /// Every sequence of sets and appends leaves the bytes a `Vec` would hold.
        #[test]
        fn behaves_as_a_vec(first in proptest::collection::vec(any::<u8>(), 0..40),
            ops in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..12)) {
            let mut value = StoredValue::from_vec(first.clone());
            let mut model = first;
            prop_assert_eq!(value.as_slice(), &model[..]);
            for (append, bytes) in ops {
                if append {
                    value.append(&bytes);
                    model.extend_from_slice(&bytes);
                } else {
                    value.set(&bytes);
                    model = bytes;
                }
                prop_assert_eq!(value.as_slice(), &model[..]);
                // Inline exactly when short enough.
                prop_assert_eq!(
                    matches!(value, StoredValue::Inline { .. }),
                    model.len() <= INLINE_VALUE_LEN
                );
            }
        }
    }
}
