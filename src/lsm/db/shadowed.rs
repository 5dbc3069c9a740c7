//! [`ShadowedVersions`]: which of a flushed memtable's versions no reader can see, so the flush
//! leaves them out of the L0 file (RocksDB's flush does the same through its compaction
//! iterator): an overwrite-heavy memtable then flushes one version per key instead of all.

use crate::lsm::compaction::job::stripe_of;
use crate::lsm::format::{TRAILER_LEN, ValueKind};

/// Decides, for point entries given in `compare_internal` order (user key ascending, newest
/// version first), whether each is shadowed: a newer put or delete of the same user key lies in
/// the same snapshot stripe (no live snapshot sequence `s` with `older <= s < newer`), so every
/// reader that could see the older version sees the newer one instead, and no merge chain
/// reaches past a put or delete.
#[derive(Debug)]
pub(super) struct ShadowedVersions<'a> {
    snapshots: &'a [u64],
    key: Vec<u8>,
    /// The stripe in which a put or delete of `key` was seen, if one was.
    shadow_stripe: Option<u64>,
    /// Entries found shadowed so far.
    pub(super) dropped: u64,
}

impl<'a> ShadowedVersions<'a> {
    /// A filter for the live snapshot sequences `snapshots` (ascending).
    pub(super) fn new(snapshots: &'a [u64]) -> Self {
        ShadowedVersions {
            snapshots,
            key: Vec::new(),
            shadow_stripe: None,
            dropped: 0,
        }
    }

    /// Whether the entry with this internal key is shadowed by a newer one passed before it.
    /// Keys too short to hold a trailer, and unknown kinds, are never shadowed nor shadow.
    pub(super) fn is_shadowed(&mut self, internal_key: &[u8]) -> bool {
        let Some(split) = internal_key.len().checked_sub(TRAILER_LEN) else {
            self.shadow_stripe = None;
            return false;
        };
        let (user_key, trailer) = internal_key.split_at(split);
        let trailer = <[u8; TRAILER_LEN]>::try_from(trailer).map_or(0, u64::from_be_bytes);
        let stripe = stripe_of(self.snapshots, trailer >> 8);
        if self.key != user_key {
            self.key.clear();
            self.key.extend_from_slice(user_key);
            self.shadow_stripe = None;
        }
        let shadowed = self.shadow_stripe == Some(stripe);
        if !shadowed {
            let shadows = matches!(
                ValueKind::from_tag((trailer & 0xff) as u8),
                Some(ValueKind::Put | ValueKind::Delete)
            );
            self.shadow_stripe = shadows.then_some(stripe);
        }
        self.dropped += u64::from(shadowed);
        shadowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::format::internal_key;

    fn decisions(snapshots: &[u64], versions: &[(&[u8], u64, ValueKind)]) -> Vec<bool> {
        let mut filter = ShadowedVersions::new(snapshots);
        versions
            .iter()
            .map(|(k, s, kind)| filter.is_shadowed(&internal_key(k, *s, *kind)))
            .collect()
    }

    #[test]
    fn older_versions_behind_a_put_or_delete_go_unless_a_snapshot_sees_them() {
        use ValueKind::{Delete, Merge, Put};
        // No snapshot: only the newest version of each key stays.
        let v: &[(&[u8], u64, ValueKind)] = &[
            (b"a", 9, Put),
            (b"a", 5, Put),
            (b"a", 2, Delete),
            (b"b", 8, Delete),
            (b"b", 1, Put),
        ];
        assert_eq!(decisions(&[], v), [false, true, true, false, true]);
        // A snapshot at 5 sees a@5 (and not a@2); one at 4 sees a@2.
        assert_eq!(decisions(&[5], v), [false, false, true, false, false]);
        assert_eq!(decisions(&[4], v), [false, true, false, false, false]);
        // Merge operands stay down to and including the first put or delete.
        let m: &[(&[u8], u64, ValueKind)] = &[
            (b"k", 9, Merge),
            (b"k", 8, Merge),
            (b"k", 7, Put),
            (b"k", 3, Merge),
            (b"k", 2, Put),
        ];
        assert_eq!(decisions(&[], m), [false, false, false, true, true]);
        // A snapshot between the put and an older merge keeps that merge's chain.
        assert_eq!(decisions(&[3], m), [false, false, false, false, false]);
    }

    #[test]
    fn short_keys_are_kept() {
        let mut filter = ShadowedVersions::new(&[]);
        assert!(!filter.is_shadowed(b"abc"));
        assert!(!filter.is_shadowed(&internal_key(b"", 3, ValueKind::Put)));
        assert!(filter.is_shadowed(&internal_key(b"", 2, ValueKind::Put)));
        assert_eq!(filter.dropped, 1);
    }
}
