//! [`Entry`]: one memtable entry — internal key and value in a single reference-counted
//! allocation — ordered exactly like `format::compare_internal` without parsing anything.
//!
//! The first eight user-key bytes and the trailer are kept inline next to the pointer, so a
//! skiplist search decides most comparisons from the node alone, and otherwise needs one memcmp
//! of the user keys (one pointer chase) before comparing trailers.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::lsm::format::{TRAILER_LEN, ValueKind};

/// A memtable entry: `bytes` is `user_key | trailer (u64 BE) | value`.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The user key's first 8 bytes as a big-endian integer, zero-padded: when two prefixes
    /// differ they order the user keys (a zero pad only ties with a real zero byte, and then the
    /// full comparison decides).
    prefix: u64,
    /// `sequence << 8 | kind` (FORMAT.md §7), also stored in `bytes`.
    trailer: u64,
    user_key_len: usize,
    bytes: Arc<[u8]>,
}

thread_local! {
    /// Where an entry is assembled before it is copied into its one allocation.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Entry {
    /// The entry of (`user_key`, `trailer`) holding `value`.
    pub(crate) fn new(user_key: &[u8], trailer: u64, value: &[u8]) -> Self {
        let bytes = SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            buf.clear();
            buf.extend_from_slice(user_key);
            buf.extend_from_slice(&trailer.to_be_bytes());
            buf.extend_from_slice(value);
            let bytes: Arc<[u8]> = Arc::from(&buf[..]);
            if buf.capacity() > 1 << 16 {
                // A huge value passed through: do not keep its buffer for the thread's life.
                *buf = Vec::new();
            }
            bytes
        });
        Entry {
            prefix: prefix_of(user_key),
            trailer,
            user_key_len: user_key.len(),
            bytes,
        }
    }

    /// A search key with no value: orders like the internal key `user_key | trailer`.
    pub(crate) fn probe(user_key: &[u8], trailer: u64) -> Self {
        Entry::new(user_key, trailer, &[])
    }

    /// A search key ordered like `internal` under `compare_internal`, even when `internal` is no
    /// valid internal key (shorter than a trailer: empty user key, trailer 0).
    pub(crate) fn probe_internal(internal: &[u8]) -> Self {
        let probe = Probe::internal(internal);
        Entry::probe(probe.user_key, probe.trailer)
    }

    /// The user key.
    pub(crate) fn user_key(&self) -> &[u8] {
        self.bytes.get(..self.user_key_len).unwrap_or_default()
    }

    /// The internal key: user key and trailer.
    pub(crate) fn internal_key(&self) -> &[u8] {
        self.bytes
            .get(..self.user_key_len + TRAILER_LEN)
            .unwrap_or_default()
    }

    /// The value (a range tombstone's exclusive end).
    pub(crate) fn value(&self) -> &[u8] {
        self.bytes
            .get(self.user_key_len + TRAILER_LEN..)
            .unwrap_or_default()
    }

    /// The sequence number.
    pub(crate) fn sequence(&self) -> u64 {
        self.trailer >> 8
    }

    /// The kind; entries are built from a `ValueKind`, so the tag is always known.
    pub(crate) fn kind(&self) -> ValueKind {
        let kind = ValueKind::from_tag((self.trailer & 0xff) as u8);
        debug_assert!(kind.is_some(), "memtable entry with an unknown kind");
        kind.unwrap_or(ValueKind::Delete)
    }
}

/// A search key borrowed from the caller: what runs are searched with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Probe<'a> {
    pub(crate) prefix: u64,
    pub(crate) user_key: &'a [u8],
    pub(crate) trailer: u64,
}

impl<'a> Probe<'a> {
    /// The probe of (`user_key`, `trailer`).
    pub(crate) fn new(user_key: &'a [u8], trailer: u64) -> Self {
        Probe {
            prefix: prefix_of(user_key),
            user_key,
            trailer,
        }
    }

    /// A probe ordered like `internal` under `compare_internal`, even when `internal` is no
    /// valid internal key (see [`Entry::probe_internal`]).
    pub(crate) fn internal(internal: &'a [u8]) -> Self {
        let split = internal.len().saturating_sub(TRAILER_LEN);
        let (user_key, trailer) = internal.split_at(split);
        let trailer = <[u8; TRAILER_LEN]>::try_from(trailer).map_or(0, u64::from_be_bytes);
        Probe::new(user_key, trailer)
    }
}

/// `compare_internal` on split internal keys: user key ascending, then trailer descending.
#[inline]
pub(crate) fn compare_parts(
    a_key: &[u8],
    a_trailer: u64,
    b_key: &[u8],
    b_trailer: u64,
) -> Ordering {
    a_key.cmp(b_key).then_with(|| b_trailer.cmp(&a_trailer))
}

/// The first 8 bytes of `user_key` as a big-endian integer, zero-padded.
pub(crate) fn prefix_of(user_key: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    let n = user_key.len().min(8);
    raw[..n].copy_from_slice(&user_key[..n]);
    u64::from_be_bytes(raw)
}

impl Ord for Entry {
    /// User key ascending, then trailer (sequence, kind) descending: `compare_internal`'s order.
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        self.prefix.cmp(&other.prefix).then_with(|| {
            compare_parts(
                self.user_key(),
                self.trailer,
                other.user_key(),
                other.trailer,
            )
        })
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::format::{compare_internal, internal_key, trailer};
    use proptest::prelude::*;

    #[test]
    fn parts_round_trip() {
        let e = Entry::new(b"user", trailer(7, ValueKind::Merge), b"value");
        assert_eq!(e.user_key(), b"user");
        assert_eq!(e.internal_key(), internal_key(b"user", 7, ValueKind::Merge));
        assert_eq!(e.value(), b"value");
        assert_eq!((e.sequence(), e.kind()), (7, ValueKind::Merge));
    }

    #[test]
    fn user_key_ascending_then_sequence_descending_then_kind_descending() {
        let e = |k: &[u8], s, kind| Entry::new(k, trailer(s, kind), b"");
        let ordered = [
            e(b"", 1, ValueKind::Put),
            e(b"a", 9, ValueKind::Put),
            e(b"a", 2, ValueKind::Merge),
            e(b"a", 2, ValueKind::Put),
            e(b"a", 2, ValueKind::Delete),
            e(b"a\0", 5, ValueKind::Put),
            e(b"abcdefgh", 1, ValueKind::Put),
            e(b"abcdefgh\0", 3, ValueKind::Put),
            e(b"abcdefgha", 3, ValueKind::Put),
            e(b"abcdefgi", 3, ValueKind::Put),
            e(b"b", 1, ValueKind::Put),
        ];
        for pair in ordered.windows(2) {
            assert_eq!(pair[0].cmp(&pair[1]), Ordering::Less, "{pair:?}");
        }
    }

    /// Keys over a tiny alphabet with zero bytes, around the 8-byte inline prefix.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(255u8)], 0..11)
    }

    proptest! {
        #[test]
        fn orders_like_compare_internal(a in key(), ta in any::<u64>(), b in key(), tb in any::<u64>(),
                                        raw in proptest::collection::vec(any::<u8>(), 0..12)) {
            let (ea, eb) = (Entry::new(&a, ta, b"x"), Entry::new(&b, tb, b""));
            let (ka, kb) = (ea.internal_key().to_vec(), eb.internal_key().to_vec());
            prop_assert_eq!(ea.cmp(&eb), compare_internal(&ka, &kb));
            // Probes built from arbitrary bytes (even too short for a trailer) order the same.
            let probe = Entry::probe_internal(&raw);
            prop_assert_eq!(probe.cmp(&ea), compare_internal(&raw, &ka));
            prop_assert_eq!(eb.cmp(&probe), compare_internal(&kb, &raw));
        }
    }
}
