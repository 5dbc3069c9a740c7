//! Internal keys of the LSM store (FORMAT.md §7–§8): `user_key | trailer`.
//!
//! The trailer is `sequence << 8 | kind` as a u64 big-endian. Internal keys order by user key
//! ascending, then trailer descending, so the newest version of a key comes first. Constants and
//! pure encode/decode only: no I/O.

use std::cmp::Ordering;

use crate::error::{Error, Result};

/// Bytes of the trailer appended to every user key.
pub const TRAILER_LEN: usize = 8;

/// Largest sequence number (56 bits).
pub const MAX_SEQUENCE: u64 = (1 << 56) - 1;

/// What an internal entry is. On disk: never change the tags; FORMAT.md §7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ValueKind {
    /// A tombstone: the key is deleted as of this sequence.
    Delete = 0,
    /// A full value.
    Put = 1,
    /// A merge operand, appended to the older value by the column family's merge operator.
    Merge = 2,
    /// A range tombstone: deletes user keys in `[key, value)` as of this sequence.
    RangeDelete = 3,
}

impl ValueKind {
    /// The kind of an on-disk tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            0 => ValueKind::Delete,
            1 => ValueKind::Put,
            2 => ValueKind::Merge,
            3 => ValueKind::RangeDelete,
            _ => return None,
        })
    }
}

/// The trailer of `sequence` and `kind`.
pub fn trailer(sequence: u64, kind: ValueKind) -> u64 {
    debug_assert!(sequence <= MAX_SEQUENCE);
    (sequence << 8) | kind as u64
}

/// Appends the internal key of (`user_key`, `sequence`, `kind`) to `out`.
pub fn encode_internal_key(out: &mut Vec<u8>, user_key: &[u8], sequence: u64, kind: ValueKind) {
    out.reserve(user_key.len() + TRAILER_LEN);
    out.extend_from_slice(user_key);
    out.extend_from_slice(&trailer(sequence, kind).to_be_bytes());
}

/// The internal key of (`user_key`, `sequence`, `kind`) as a new vector.
pub fn internal_key(user_key: &[u8], sequence: u64, kind: ValueKind) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + TRAILER_LEN);
    encode_internal_key(&mut out, user_key, sequence, kind);
    out
}

/// The parts of an internal key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The user key.
    pub user_key: &'a [u8],
    /// The sequence number.
    pub sequence: u64,
    /// The kind.
    pub kind: ValueKind,
}

/// Splits an internal key; `file` and `offset` label a corruption error.
pub fn parse_internal_key<'a>(key: &'a [u8], file: &str, offset: u64) -> Result<ParsedKey<'a>> {
    let split = key.len().checked_sub(TRAILER_LEN).ok_or_else(|| {
        Error::corruption(
            file,
            offset,
            format!("internal key of {} bytes has no trailer", key.len()),
        )
    })?;
    let (user_key, trailer) = key.split_at(split);
    let mut raw = [0u8; TRAILER_LEN];
    raw.copy_from_slice(trailer);
    let trailer = u64::from_be_bytes(raw);
    let kind = ValueKind::from_tag((trailer & 0xff) as u8).ok_or_else(|| {
        Error::corruption(
            file,
            offset,
            format!("unknown value kind {}", trailer & 0xff),
        )
    })?;
    Ok(ParsedKey {
        user_key,
        sequence: trailer >> 8,
        kind,
    })
}

/// The user-key part of an internal key (the whole key if it is shorter than a trailer).
pub fn user_key(internal: &[u8]) -> &[u8] {
    &internal[..internal.len().saturating_sub(TRAILER_LEN)]
}

/// The trailer of an internal key (0 if it is shorter than a trailer).
fn trailer_of(internal: &[u8]) -> u64 {
    internal
        .len()
        .checked_sub(TRAILER_LEN)
        .and_then(|split| internal.get(split..))
        .and_then(|t| <[u8; TRAILER_LEN]>::try_from(t).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Orders internal keys: user key ascending, then (sequence, kind) descending.
pub fn compare_internal(a: &[u8], b: &[u8]) -> Ordering {
    user_key(a)
        .cmp(user_key(b))
        .then_with(|| trailer_of(b).cmp(&trailer_of(a)))
}

/// An owned internal key ordered by [`compare_internal`] (for ordered containers).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg(test)]
pub struct InternalKey(pub Vec<u8>);

#[cfg(test)]
impl Ord for InternalKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_internal(&self.0, &other.0)
    }
}

#[cfg(test)]
impl PartialOrd for InternalKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn newest_version_first() {
        let old = internal_key(b"k", 1, ValueKind::Put);
        let new = internal_key(b"k", 2, ValueKind::Delete);
        assert_eq!(compare_internal(&new, &old), Ordering::Less);
        let shorter = internal_key(b"a", 1, ValueKind::Put);
        let longer = internal_key(b"ab", 9, ValueKind::Put);
        assert_eq!(compare_internal(&shorter, &longer), Ordering::Less);
    }

    #[test]
    fn parse_rejects_bad_keys() {
        assert!(parse_internal_key(b"short", "f", 0).is_err());
        let mut k = internal_key(b"k", 5, ValueKind::Put);
        *k.last_mut().unwrap() = 9;
        assert!(parse_internal_key(&k, "f", 0).is_err());
    }

    proptest! {
        #[test]
        fn round_trip_and_order(a in proptest::collection::vec(any::<u8>(), 0..6), sa in 0..MAX_SEQUENCE,
                                b in proptest::collection::vec(any::<u8>(), 0..6), sb in 0..MAX_SEQUENCE) {
            let ka = internal_key(&a, sa, ValueKind::Put);
            let kb = internal_key(&b, sb, ValueKind::Merge);
            let pa = parse_internal_key(&ka, "t", 0).unwrap();
            prop_assert_eq!(pa, ParsedKey { user_key: &a, sequence: sa, kind: ValueKind::Put });
            let expected = a.cmp(&b).then((sb, 2u8).cmp(&(sa, 1u8)));
            prop_assert_eq!(compare_internal(&ka, &kb), expected);
        }
    }
}
