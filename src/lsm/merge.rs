//! Merge operators, compaction filters, and the rule that resolves the versions of one user key
//! into what a reader at a snapshot sees.
//!
//! [`resolve`] is the single place where puts, deletes, merge operands and range tombstones meet;
//! `get`, iterators and compaction all call it, so they cannot disagree.

use crate::lsm::format::ValueKind;

/// Combines merge operands with an existing value (RocksDB's associative merge operator).
pub trait MergeOperator: Send + Sync + std::fmt::Debug {
    /// The value after applying `operands` (oldest first) to `existing` (`None` = absent).
    fn full_merge(&self, key: &[u8], existing: Option<&[u8]>, operands: &[&[u8]]) -> Vec<u8>;

    /// Combines consecutive operands (oldest first) into one, if the operator can; compaction
    /// then keeps one operand instead of many. The default cannot.
    fn partial_merge(&self, key: &[u8], operands: &[&[u8]]) -> Option<Vec<u8>> {
        let _ = (key, operands);
        None
    }
}

/// Concatenates operands onto the existing bytes: list append without reading the list.
#[derive(Clone, Copy, Debug, Default)]
pub struct AppendOperator;

impl MergeOperator for AppendOperator {
    fn full_merge(&self, _key: &[u8], existing: Option<&[u8]>, operands: &[&[u8]]) -> Vec<u8> {
        let len = existing.map_or(0, <[u8]>::len) + operands.iter().map(|o| o.len()).sum::<usize>();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(existing.unwrap_or_default());
        for op in operands {
            out.extend_from_slice(op);
        }
        out
    }

    fn partial_merge(&self, key: &[u8], operands: &[&[u8]]) -> Option<Vec<u8>> {
        Some(self.full_merge(key, None, operands))
    }
}

/// What a compaction filter decides for one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterDecision {
    /// Keep the entry as it is.
    Keep,
    /// Drop the entry (older versions below are deleted too: a tombstone is written where one is
    /// needed).
    Remove,
    /// Replace the value.
    Change(Vec<u8>),
}

/// Sees each live value during compaction and may drop or rewrite it (the TTL filter of the
/// state layer plugs in here).
pub trait CompactionFilter: Send + Sync + std::fmt::Debug {
    /// Decides for the value of `key` written at output `level`.
    fn filter(&self, level: usize, key: &[u8], value: &[u8]) -> FilterDecision;
}

/// One version of a user key, newest first when given to [`resolve`].
#[derive(Clone, Copy, Debug)]
pub struct VersionRef<'a> {
    /// Sequence number.
    pub sequence: u64,
    /// Kind.
    pub kind: ValueKind,
    /// Value or operand bytes.
    pub value: &'a [u8],
}

/// What a reader at `snapshot` sees for a user key whose versions are `versions` (newest first).
/// `covered(seq)` says whether a range tombstone visible at the snapshot deletes that version.
/// Returns `None` when the key is absent.
pub fn resolve<'a>(
    key: &[u8],
    versions: impl IntoIterator<Item = VersionRef<'a>>,
    snapshot: u64,
    covered: impl Fn(u64) -> bool,
    merge: Option<&dyn MergeOperator>,
) -> Option<Vec<u8>> {
    let mut operands: Vec<&[u8]> = Vec::new();
    let mut base: Option<&[u8]> = None;
    for v in versions {
        if v.sequence > snapshot || v.kind == ValueKind::RangeDelete {
            continue;
        }
        if covered(v.sequence) {
            break;
        }
        match v.kind {
            ValueKind::Put => {
                base = Some(v.value);
                break;
            }
            ValueKind::Delete | ValueKind::RangeDelete => break,
            ValueKind::Merge => operands.push(v.value),
        }
    }
    if operands.is_empty() {
        return base.map(<[u8]>::to_vec);
    }
    operands.reverse();
    Some(match merge {
        Some(op) => op.full_merge(key, base, &operands),
        // Without an operator the newest operand wins (documented; the store always has one
        // for column families that take merges).
        None => operands.last().map(|o| o.to_vec()).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(sequence: u64, kind: ValueKind, value: &[u8]) -> VersionRef<'_> {
        VersionRef {
            sequence,
            kind,
            value,
        }
    }

    #[test]
    fn newest_visible_version_wins_and_merges_stack() {
        let op = AppendOperator;
        let versions = [
            v(9, ValueKind::Put, b"new"),
            v(5, ValueKind::Merge, b"c"),
            v(4, ValueKind::Merge, b"b"),
            v(3, ValueKind::Put, b"a"),
            v(2, ValueKind::Delete, b""),
        ];
        let r = |snap| resolve(b"k", versions, snap, |_| false, Some(&op));
        assert_eq!(r(10), Some(b"new".to_vec()));
        assert_eq!(r(5), Some(b"abc".to_vec()));
        assert_eq!(r(3), Some(b"a".to_vec()));
        assert_eq!(r(2), None);
        assert_eq!(r(1), None);
        // A range tombstone at sequence 4.5 deletes everything below 5.
        assert_eq!(
            resolve(b"k", versions, 5, |s| s < 5, Some(&op)),
            Some(b"c".to_vec())
        );
        // Merge onto nothing starts from empty.
        assert_eq!(
            resolve(
                b"k",
                [v(1, ValueKind::Merge, b"x")],
                1,
                |_| false,
                Some(&op)
            ),
            Some(b"x".to_vec())
        );
    }
}
