//! [`Run`]: an immutable sorted array of memtable entries in one contiguous allocation, and
//! [`RunIter`], a cursor over one.
//!
//! The memtable keeps its newest writes in a small skiplist and seals it into a run when full;
//! runs of similar size are merged. A run costs its entries' bytes plus one [`Slot`] per entry
//! and two allocations in all, so a flushed memtable leaves a few large free blocks in the heap
//! (which the next memtable and the block cache reuse) instead of a million small ones.

use std::cmp::Ordering;
use std::sync::Arc;

use super::entry::{Probe, compare_parts, prefix_of};
use crate::error::Result;
use crate::lsm::format::{TRAILER_LEN, ValueKind};
use crate::lsm::iterator::InternalIterator;

/// Bytes a run charges per entry on top of the entry's key, trailer and value: its [`Slot`].
pub(super) const SLOT_BYTES: usize = std::mem::size_of::<Slot>();

/// Where an entry's bytes (`user_key | trailer (u64 BE) | value`) start in the run's data, with
/// the user key's first 8 bytes inline so most comparisons need no memory access. Entries are
/// stored back to back in slot order, so an entry ends where the next one starts.
#[derive(Clone, Copy, Debug)]
struct Slot {
    prefix: u64,
    offset: u64,
    key_len: u64,
}

/// An immutable, sorted (`compare_internal` order) array of memtable entries.
#[derive(Debug)]
pub(super) struct Run {
    data: Box<[u8]>,
    slots: Box<[Slot]>,
}

/// Writes entries, in order, into a run of known total size (one allocation for the bytes,
/// one for the slots).
struct RunWriter {
    data: Vec<u8>,
    slots: Vec<Slot>,
}

impl RunWriter {
    fn new(data_len: usize, entries: usize) -> Self {
        RunWriter {
            data: Vec::with_capacity(data_len),
            slots: Vec::with_capacity(entries),
        }
    }

    /// Appends one entry given as its internal key (user key and trailer) and value.
    fn push(&mut self, internal_key: &[u8], value: &[u8]) {
        let key_len = internal_key.len().saturating_sub(TRAILER_LEN);
        self.slots.push(Slot {
            prefix: prefix_of(internal_key.get(..key_len).unwrap_or_default()),
            offset: self.data.len() as u64,
            key_len: key_len as u64,
        });
        self.data.extend_from_slice(internal_key);
        self.data.extend_from_slice(value);
    }

    fn finish(self) -> Run {
        Run {
            data: self.data.into_boxed_slice(),
            slots: self.slots.into_boxed_slice(),
        }
    }
}

impl Run {
    /// A run of `entries` (internal key, value), which must come in `compare_internal` order;
    /// `data_len` is the sum of their lengths and `count` their number.
    pub(super) fn build<'a>(
        count: usize,
        data_len: usize,
        entries: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Run {
        let mut writer = RunWriter::new(data_len, count);
        for (key, value) in entries {
            writer.push(key, value);
        }
        writer.finish()
    }

    /// The runs merged into one (entries of `newer` first among equal keys, which do not
    /// occur: every (user key, sequence) is inserted once).
    pub(super) fn merge(newer: &Run, older: &Run) -> Run {
        let (a, b) = (newer, older);
        let mut writer = RunWriter::new(a.data_len() + b.data_len(), a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            if a.compare_slots(i, b, j) != Ordering::Greater {
                writer.push(a.internal_key(i), a.value(i));
                i += 1;
            } else {
                writer.push(b.internal_key(j), b.value(j));
                j += 1;
            }
        }
        for k in i..a.len() {
            writer.push(a.internal_key(k), a.value(k));
        }
        for k in j..b.len() {
            writer.push(b.internal_key(k), b.value(k));
        }
        writer.finish()
    }

    /// Number of entries.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Bytes of keys, trailers and values.
    pub(super) fn data_len(&self) -> usize {
        self.data.len()
    }

    /// Memory charged to the run: its data and its slots.
    pub(super) fn charge(&self) -> usize {
        self.data_len() + self.len() * SLOT_BYTES
    }

    fn entry_bytes(&self, i: usize) -> (&[u8], usize) {
        let Some(slot) = self.slots.get(i) else {
            return (&[], 0);
        };
        let start = slot.offset as usize;
        let end = self
            .slots
            .get(i + 1)
            .map_or(self.data.len(), |next| next.offset as usize);
        (
            self.data.get(start..end).unwrap_or_default(),
            slot.key_len as usize,
        )
    }

    /// The user key and trailer of the entry at `slot`.
    fn key_parts(&self, slot: &Slot) -> (&[u8], u64) {
        let start = slot.offset as usize;
        let key_end = start + slot.key_len as usize;
        let trailer = self
            .data
            .get(key_end..key_end + TRAILER_LEN)
            .and_then(|t| <[u8; TRAILER_LEN]>::try_from(t).ok())
            .map_or(0, u64::from_be_bytes);
        (self.data.get(start..key_end).unwrap_or_default(), trailer)
    }

    /// The internal key (user key and trailer) of entry `i`.
    pub(super) fn internal_key(&self, i: usize) -> &[u8] {
        let (bytes, key_len) = self.entry_bytes(i);
        bytes.get(..key_len + TRAILER_LEN).unwrap_or_default()
    }

    /// The value of entry `i`.
    pub(super) fn value(&self, i: usize) -> &[u8] {
        let (bytes, key_len) = self.entry_bytes(i);
        bytes.get(key_len + TRAILER_LEN..).unwrap_or_default()
    }

    /// The entry at `slot` against (`prefix`, the user key and trailer `other()` gives): the
    /// inline prefixes decide unless they tie.
    fn compare_slot<'o>(
        &self,
        slot: &Slot,
        prefix: u64,
        other: impl FnOnce() -> (&'o [u8], u64),
    ) -> Ordering {
        slot.prefix.cmp(&prefix).then_with(|| {
            let (key, trailer) = self.key_parts(slot);
            let (other_key, other_trailer) = other();
            compare_parts(key, trailer, other_key, other_trailer)
        })
    }

    /// Entry `i` of `self` against entry `j` of `other`.
    fn compare_slots(&self, i: usize, other: &Run, j: usize) -> Ordering {
        match (self.slots.get(i), other.slots.get(j)) {
            (Some(a), Some(b)) => self.compare_slot(a, b.prefix, || other.key_parts(b)),
            _ => Ordering::Equal,
        }
    }

    /// The index of the first entry at or after `probe` (`len()` when none is).
    pub(super) fn lower_bound(&self, probe: &Probe<'_>) -> usize {
        self.slots.partition_point(|slot| {
            self.compare_slot(slot, probe.prefix, || (probe.user_key, probe.trailer))
                == Ordering::Less
        })
    }

    /// The index of the first entry after `probe` (`len()` when none is).
    pub(super) fn upper_bound(&self, probe: &Probe<'_>) -> usize {
        self.slots.partition_point(|slot| {
            self.compare_slot(slot, probe.prefix, || (probe.user_key, probe.trailer))
                != Ordering::Greater
        })
    }

    /// Calls `f(sequence, kind, value)` for the versions of `user_key` from `probe` on, newest
    /// first, while `f` returns true; returns false when `f` stopped the walk.
    pub(super) fn for_each_version(
        &self,
        user_key: &[u8],
        probe: &Probe<'_>,
        f: &mut impl FnMut(u64, ValueKind, &[u8]) -> bool,
    ) -> bool {
        let start = self.lower_bound(probe);
        for (i, slot) in self.slots.iter().enumerate().skip(start) {
            let (key, trailer) = self.key_parts(slot);
            if key != user_key {
                break;
            }
            if !f(trailer >> 8, kind_of(trailer), self.value(i)) {
                return false;
            }
        }
        true
    }
}

/// The kind of a trailer written by the memtable (always a known tag).
pub(super) fn kind_of(trailer: u64) -> ValueKind {
    ValueKind::from_tag((trailer & 0xff) as u8).unwrap_or(ValueKind::Delete)
}

/// A cursor over one run.
pub(super) struct RunIter {
    run: Arc<Run>,
    /// The current entry; `run.len()` (or more) when not valid.
    position: usize,
}

impl RunIter {
    /// A cursor over `run`, not yet positioned.
    pub(super) fn new(run: Arc<Run>) -> Self {
        let position = run.len();
        RunIter { run, position }
    }
}

impl InternalIterator for RunIter {
    fn valid(&self) -> bool {
        self.position < self.run.len()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.position = 0;
        Ok(())
    }

    fn seek_to_last(&mut self) -> Result<()> {
        self.position = self.run.len().checked_sub(1).unwrap_or(usize::MAX);
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.position = self.run.lower_bound(&Probe::internal(target));
        Ok(())
    }

    fn seek_for_prev(&mut self, target: &[u8]) -> Result<()> {
        let after = self.run.upper_bound(&Probe::internal(target));
        self.position = after.checked_sub(1).unwrap_or(usize::MAX);
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        self.position = self.position.saturating_add(1);
        Ok(())
    }

    fn prev(&mut self) -> Result<()> {
        self.position = self.position.checked_sub(1).unwrap_or(usize::MAX);
        Ok(())
    }

    fn key(&self) -> &[u8] {
        self.run.internal_key(self.position)
    }

    fn value(&self) -> &[u8] {
        self.run.value(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::format::{compare_internal, internal_key};
    use proptest::prelude::*;

    fn run_of(mut entries: Vec<(Vec<u8>, Vec<u8>)>) -> Run {
        entries.sort_by(|a, b| compare_internal(&a.0, &b.0));
        let len = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        Run::build(
            entries.len(),
            len,
            entries.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        )
    }

    fn entries() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
        proptest::collection::btree_map(
            (proptest::collection::vec(0u8..3, 0..10), 1u64..20),
            proptest::collection::vec(any::<u8>(), 0..5),
            0..40,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|((k, s), v)| (internal_key(&k, s, ValueKind::Put), v))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn build_merge_and_seek_match_a_sorted_vec(a in entries(), b in entries(),
                                                    target in proptest::collection::vec(0u8..3, 0..12)) {
            // Keep the two sides disjoint, as the memtable's runs are.
            let b: Vec<_> = b.into_iter().filter(|e| !a.iter().any(|x| x.0 == e.0)).collect();
            let merged = Run::merge(&run_of(a.clone()), &run_of(b.clone()));
            let mut want: Vec<_> = a.into_iter().chain(b).collect();
            want.sort_by(|x, y| compare_internal(&x.0, &y.0));
            let got: Vec<_> = (0..merged.len())
                .map(|i| (merged.internal_key(i).to_vec(), merged.value(i).to_vec()))
                .collect();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(merged.charge(), merged.data_len() + merged.len() * SLOT_BYTES);

            let run = Arc::new(merged);
            let mut iter = RunIter::new(Arc::clone(&run));
            iter.seek(&target)?;
            let at_or_after = want.iter().position(|e| compare_internal(&e.0, &target) != Ordering::Less);
            prop_assert_eq!(iter.valid().then_some(iter.position), at_or_after);
            iter.seek_for_prev(&target)?;
            let at_or_before = want.iter().rposition(|e| compare_internal(&e.0, &target) != Ordering::Greater);
            prop_assert_eq!(iter.valid().then_some(iter.position), at_or_before);
        }
    }
}
