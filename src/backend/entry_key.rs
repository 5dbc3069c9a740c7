//! [`EntryKey`]: the composite key of one heap-store entry, inline when short.
//!
//! A hash probe compares the stored key with the one looked up; a key kept inside the hash
//! bucket is read from the line the probe already loaded, where an `Arc<[u8]>` costs another
//! dependent cache miss per access. Longer keys are shared (`Arc`), so copies stay cheap. It
//! hashes, compares and orders exactly as its bytes (`Borrow<[u8]>` lookups rely on that).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// Keys of at most this many bytes are stored inline.
pub const INLINE_KEY_LEN: usize = 22;

/// The bytes of one entry's key: inline up to [`INLINE_KEY_LEN`] bytes, else shared.
#[derive(Clone)]
pub enum EntryKey {
    /// A short key: its length and bytes (only the first `len` are meaningful).
    Inline {
        /// Number of bytes used.
        len: u8,
        /// The bytes.
        bytes: [u8; INLINE_KEY_LEN],
    },
    /// A longer key.
    Shared(Arc<[u8]>),
}

impl EntryKey {
    /// The bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            EntryKey::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(bytes),
            EntryKey::Shared(bytes) => bytes,
        }
    }
}

impl From<&[u8]> for EntryKey {
    #[inline]
    fn from(key: &[u8]) -> Self {
        let mut bytes = [0; INLINE_KEY_LEN];
        match bytes.get_mut(..key.len()) {
            Some(to) => {
                to.copy_from_slice(key);
                EntryKey::Inline {
                    len: key.len() as u8,
                    bytes,
                }
            }
            None => EntryKey::Shared(Arc::from(key)),
        }
    }
}

impl From<Vec<u8>> for EntryKey {
    fn from(key: Vec<u8>) -> Self {
        if key.len() <= INLINE_KEY_LEN {
            EntryKey::from(key.as_slice())
        } else {
            EntryKey::Shared(Arc::from(key))
        }
    }
}

impl Deref for EntryKey {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Borrow<[u8]> for EntryKey {
    #[inline]
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Hash for EntryKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl PartialEq for EntryKey {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for EntryKey {}

impl PartialOrd for EntryKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EntryKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl std::fmt::Debug for EntryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::hash::BuildHasher;

    #[test]
    fn is_as_large_as_a_shared_key() {
        assert_eq!(std::mem::size_of::<EntryKey>(), 24);
    }

    proptest::proptest! {
        /// Short and long keys hash, compare and order as their bytes, and are found in a map
        /// by their bytes.
        #[test]
        fn behaves_as_its_bytes(a in proptest::collection::vec(0u8..3, 0..30),
                                b in proptest::collection::vec(0u8..3, 0..30)) {
            let (ka, kb) = (EntryKey::from(a.as_slice()), EntryKey::from(b.clone()));
            proptest::prop_assert_eq!(ka.as_slice(), &a[..]);
            proptest::prop_assert_eq!(&*kb, &b[..]);
            proptest::prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            proptest::prop_assert_eq!(ka == kb, a == b);
            let state = std::collections::hash_map::RandomState::new();
            proptest::prop_assert_eq!(state.hash_one(&ka), state.hash_one(a.as_slice()));
            let map: HashMap<EntryKey, u8> = HashMap::from([(ka, 1)]);
            proptest::prop_assert_eq!(map.get(a.as_slice()), Some(&1));
        }
    }
}
