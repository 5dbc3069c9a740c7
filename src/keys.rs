//! Key groups and the composite key encoding every backend shares (FORMAT.md §2).
//!
//! A key's serialized bytes hash (MurmurHash3 x86 32-bit, seed 0) into one of `max_parallelism`
//! key groups; a task owns a contiguous [`KeyGroupRange`]. Every backend stores state under
//! `key_group (u16 BE) | varint len | key | varint len | namespace | user_key`, so one key group
//! is one contiguous byte range and one (key, namespace) is one prefix. These bytes are part of
//! every checkpoint: never change them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::varint::{get_varint32, put_varint32, varint_len};
use crate::error::{Error, Result};

/// Default number of key groups, as in Flink.
pub const DEFAULT_MAX_PARALLELISM: u16 = 128;
/// Upper bound of `max_parallelism`, as in Flink (2^15).
pub const UPPER_BOUND_MAX_PARALLELISM: u16 = 32768;

pub use crate::hash::murmur3_32;

/// Checks a `max_parallelism` value: 1 ..= 32768.
pub fn check_max_parallelism(max_parallelism: u16) -> Result<u16> {
    if max_parallelism == 0 || max_parallelism > UPPER_BOUND_MAX_PARALLELISM {
        return Err(Error::invalid(format!(
            "max_parallelism must be in 1..={UPPER_BOUND_MAX_PARALLELISM}, got {max_parallelism}"
        )));
    }
    Ok(max_parallelism)
}

/// The key group of a key's serialized bytes: `murmur3_32(key, 0) % max_parallelism`.
///
/// `max_parallelism` must be at least 1 (see [`check_max_parallelism`]).
pub fn key_group_for_key(key: &[u8], max_parallelism: u16) -> u16 {
    debug_assert!(max_parallelism >= 1);
    (murmur3_32(key, 0) % u32::from(max_parallelism.max(1))) as u16
}

/// The operator index (task) that owns `key_group` at `parallelism` (Flink's formula:
/// `key_group * parallelism / max_parallelism`).
pub fn operator_index_for_key_group(max_parallelism: u16, parallelism: u16, key_group: u16) -> u16 {
    (u32::from(key_group) * u32::from(parallelism) / u32::from(max_parallelism.max(1))) as u16
}

/// A contiguous, non-empty, inclusive range of key groups owned by one task.
///
/// Deserializing checks `first <= last`, so a range read from disk is as valid as one built
/// with [`KeyGroupRange::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawKeyGroupRange")]
pub struct KeyGroupRange {
    first: u16,
    last: u16,
}

/// The serialized form of a [`KeyGroupRange`], checked on the way in.
#[derive(Deserialize)]
struct RawKeyGroupRange {
    first: u16,
    last: u16,
}

impl TryFrom<RawKeyGroupRange> for KeyGroupRange {
    type Error = Error;

    fn try_from(raw: RawKeyGroupRange) -> Result<Self> {
        KeyGroupRange::new(raw.first, raw.last)
    }
}

impl KeyGroupRange {
    /// The range `first ..= last`; `first` must not exceed `last`.
    pub fn new(first: u16, last: u16) -> Result<Self> {
        if first > last {
            return Err(Error::invalid(format!(
                "key-group range {first}..={last} is empty (first > last)"
            )));
        }
        Ok(KeyGroupRange { first, last })
    }

    /// All key groups of a job with `max_parallelism` key groups: `0 ..= max_parallelism - 1`.
    pub fn all(max_parallelism: u16) -> Self {
        KeyGroupRange {
            first: 0,
            last: max_parallelism.saturating_sub(1),
        }
    }

    /// The range operator `index` of `parallelism` owns (Flink's
    /// `computeKeyGroupRangeForOperatorIndex`): groups `ceil(i*m/p) ..= ((i+1)*m - 1)/p`.
    pub fn for_operator(max_parallelism: u16, parallelism: u16, index: u16) -> Result<Self> {
        if parallelism == 0 || parallelism > max_parallelism {
            return Err(Error::invalid(format!(
                "parallelism must be in 1..={max_parallelism} (max_parallelism), got {parallelism}"
            )));
        }
        if index >= parallelism {
            return Err(Error::invalid(format!(
                "operator index {index} out of range for parallelism {parallelism}"
            )));
        }
        let (m, p, i) = (
            u32::from(max_parallelism),
            u32::from(parallelism),
            u32::from(index),
        );
        let first = (i * m).div_ceil(p);
        let last = ((i + 1) * m - 1) / p;
        Self::new(first as u16, last as u16)
    }

    /// First key group (inclusive).
    pub fn first(&self) -> u16 {
        self.first
    }

    /// Last key group (inclusive).
    pub fn last(&self) -> u16 {
        self.last
    }

    /// Number of key groups in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Always false: ranges are non-empty by construction.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `key_group` is in the range.
    pub fn contains(&self, key_group: u16) -> bool {
        (self.first..=self.last).contains(&key_group)
    }

    /// The overlap of two ranges, if any.
    pub fn intersect(&self, other: &KeyGroupRange) -> Option<KeyGroupRange> {
        let first = self.first.max(other.first);
        let last = self.last.min(other.last);
        (first <= last).then_some(KeyGroupRange { first, last })
    }

    /// Iterates the key groups of the range.
    pub fn iter(&self) -> impl Iterator<Item = u16> + use<> {
        self.first..=self.last
    }

    /// The smallest composite key of the range (inclusive lower bound of its byte range).
    pub fn start_key(&self) -> [u8; 2] {
        self.first.to_be_bytes()
    }

    /// The exclusive upper bound of the range's composite keys, or `None` when the range ends at
    /// key group 65535 (no upper bound).
    pub fn end_key(&self) -> Option<[u8; 2]> {
        self.last.checked_add(1).map(u16::to_be_bytes)
    }
}

impl fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}..={}]", self.first, self.last)
    }
}

/// Appends the composite key `key_group | len key | key | len ns | ns | user_key` to `out`.
pub fn encode_composite_key(
    out: &mut Vec<u8>,
    key_group: u16,
    key: &[u8],
    namespace: &[u8],
    user_key: &[u8],
) {
    out.reserve(
        2 + varint_len(key.len() as u64)
            + key.len()
            + varint_len(namespace.len() as u64)
            + namespace.len()
            + user_key.len(),
    );
    out.extend_from_slice(&key_group.to_be_bytes());
    put_varint32(out, key.len() as u32);
    out.extend_from_slice(key);
    put_varint32(out, namespace.len() as u32);
    out.extend_from_slice(namespace);
    out.extend_from_slice(user_key);
}

/// The composite key as a new vector; see [`encode_composite_key`].
pub fn composite_key(key_group: u16, key: &[u8], namespace: &[u8], user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_composite_key(&mut out, key_group, key, namespace, user_key);
    out
}

/// The parts of a decoded composite key, borrowed from the encoded bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompositeKey<'a> {
    /// The key group (first two bytes, big-endian).
    pub key_group: u16,
    /// The serialized key.
    pub key: &'a [u8],
    /// The serialized namespace (empty for the default namespace).
    pub namespace: &'a [u8],
    /// The serialized map key (empty for non-map states).
    pub user_key: &'a [u8],
}

impl<'a> CompositeKey<'a> {
    /// Splits an encoded composite key. `file` and `offset` label a corruption error.
    pub fn decode(bytes: &'a [u8], file: &str, offset: u64) -> Result<Self> {
        let (kg, rest) = bytes
            .split_first_chunk::<2>()
            .ok_or_else(|| Error::corruption(file, offset, "composite key shorter than 2 bytes"))?;
        let mut pos = 2usize;
        let (key, rest) = take_prefixed(rest, file, offset, &mut pos, "key")?;
        let (namespace, user_key) = take_prefixed(rest, file, offset, &mut pos, "namespace")?;
        Ok(CompositeKey {
            key_group: u16::from_be_bytes(*kg),
            key,
            namespace,
            user_key,
        })
    }
}

fn take_prefixed<'a>(
    input: &'a [u8],
    file: &str,
    offset: u64,
    pos: &mut usize,
    what: &str,
) -> Result<(&'a [u8], &'a [u8])> {
    let at = offset + *pos as u64;
    let (len, used) = get_varint32(input, file, at)?;
    let rest = input.get(used..).unwrap_or_default();
    if len as usize > rest.len() {
        return Err(Error::corruption(
            file,
            at,
            format!(
                "composite key {what} length {len} exceeds the {} bytes left",
                rest.len()
            ),
        ));
    }
    *pos += used + len as usize;
    Ok(rest.split_at(len as usize))
}

/// The key group of an encoded composite key (its first two bytes).
pub fn key_group_of(composite: &[u8]) -> Option<u16> {
    composite.first_chunk::<2>().map(|b| u16::from_be_bytes(*b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn murmur3_reference_vectors() {
        // Published test vectors of MurmurHash3_x86_32.
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"", 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3_32(&[0, 0, 0, 0], 0), 0x2362_f9de);
        assert_eq!(murmur3_32(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0x9747_b28c),
            0x2fa8_26cd
        );
        assert_eq!(murmur3_32(&[0x21, 0x43, 0x65], 0), 0x7e4a_8634);
    }

    #[test]
    fn operator_ranges_match_flink() {
        // Flink: max 128, parallelism 3 -> [0,42], [43,85], [86,127].
        let r: Vec<_> = (0..3)
            .map(|i| KeyGroupRange::for_operator(128, 3, i).unwrap())
            .map(|r| (r.first(), r.last()))
            .collect();
        assert_eq!(r, [(0, 42), (43, 85), (86, 127)]);
        assert!(KeyGroupRange::for_operator(128, 0, 0).is_err());
        assert!(KeyGroupRange::for_operator(128, 129, 0).is_err());
        assert!(KeyGroupRange::for_operator(128, 2, 2).is_err());
    }

    #[test]
    fn deserialize_rejects_empty_ranges() {
        let good = postcard::to_allocvec(&KeyGroupRange::new(3, 9).unwrap()).unwrap();
        assert_eq!(
            postcard::from_bytes::<KeyGroupRange>(&good).unwrap(),
            KeyGroupRange::new(3, 9).unwrap()
        );
        let bad = postcard::to_allocvec(&(9u16, 3u16)).unwrap();
        assert!(postcard::from_bytes::<KeyGroupRange>(&bad).is_err());
    }

    #[test]
    fn max_parallelism_bounds() {
        assert!(check_max_parallelism(0).is_err());
        assert!(check_max_parallelism(32769).is_err());
        assert_eq!(check_max_parallelism(32768).unwrap(), 32768);
    }

    #[test]
    fn decode_rejects_bad_lengths() {
        assert!(CompositeKey::decode(&[0], "f", 0).is_err());
        assert!(CompositeKey::decode(&[0, 1, 5, b'a'], "f", 0).is_err());
        let err = CompositeKey::decode(&[0, 1, 1, b'a', 9], "f", 100).unwrap_err();
        match err {
            Error::Corruption { offset, .. } => assert_eq!(offset, 104),
            other => panic!("unexpected {other}"),
        }
    }

    proptest! {
        #[test]
        fn ranges_partition_all_groups(max in 1u16..=1024, par_seed in any::<u16>()) {
            let par = par_seed % max + 1;
            let mut next = 0u32;
            for i in 0..par {
                let r = KeyGroupRange::for_operator(max, par, i).unwrap();
                prop_assert_eq!(u32::from(r.first()), next);
                for kg in r.iter() {
                    prop_assert_eq!(operator_index_for_key_group(max, par, kg), i);
                }
                next = u32::from(r.last()) + 1;
            }
            prop_assert_eq!(next, u32::from(max));
        }

        #[test]
        fn composite_round_trips(kg in any::<u16>(), key in proptest::collection::vec(any::<u8>(), 0..300),
                                 ns in proptest::collection::vec(any::<u8>(), 0..20),
                                 uk in proptest::collection::vec(any::<u8>(), 0..20)) {
            let enc = composite_key(kg, &key, &ns, &uk);
            let dec = CompositeKey::decode(&enc, "t", 0).unwrap();
            prop_assert_eq!(dec, CompositeKey { key_group: kg, key: &key, namespace: &ns, user_key: &uk });
            prop_assert_eq!(key_group_of(&enc), Some(kg));
        }

        #[test]
        fn order_preserving_where_it_must_be(
            a in (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..8), proptest::collection::vec(any::<u8>(), 0..4), proptest::collection::vec(any::<u8>(), 0..6)),
            b in (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..8), proptest::collection::vec(any::<u8>(), 0..4), proptest::collection::vec(any::<u8>(), 0..6)),
        ) {
            let ea = composite_key(a.0, &a.1, &a.2, &a.3);
            let eb = composite_key(b.0, &b.1, &b.2, &b.3);
            // Key groups order the whole space: one group is one contiguous range.
            if a.0 != b.0 {
                prop_assert_eq!(ea.cmp(&eb), a.0.cmp(&b.0));
            }
            // Within one (key group, key, namespace), user keys keep their byte order, and the
            // (key, namespace) prefix is a prefix of exactly its own entries.
            let prefix_a = composite_key(a.0, &a.1, &a.2, &[]);
            if (a.0, &a.1, &a.2) == (b.0, &b.1, &b.2) {
                prop_assert_eq!(ea.cmp(&eb), a.3.cmp(&b.3));
            } else {
                prop_assert!(!eb.starts_with(&prefix_a));
            }
            prop_assert!(KeyGroupRange::new(a.0, a.0).unwrap().start_key().as_slice() <= ea.as_slice());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = CompositeKey::decode(&bytes, "t", 0);
        }
    }
}
