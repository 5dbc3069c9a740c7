//! The memtable: one column family's recent writes, ordered by internal key, before a flush
//! turns them into an SST.
//!
//! Built on `crossbeam_skiplist::SkipSet`, so reads, writes and iterators run concurrently
//! through `&self`. Point entries and range tombstones live in two skiplists of `entry::Entry`s
//! (internal key and value in one allocation, `lsm::format` order); each (user key, sequence) is
//! inserted once and never removed.

mod entry;

use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_skiplist::SkipSet;

use crate::error::Result;
use crate::lsm::format::{MAX_SEQUENCE, TRAILER_LEN, ValueKind, trailer};
use crate::lsm::iterator::InternalIterator;
use entry::Entry;

/// Bytes charged per entry on top of its key and value in
/// [`Memtable::approximate_memory_usage`]: a skiplist node with its average tower and the
/// entry's inline prefix, trailer and pointer, and the header of the one allocation holding the
/// key and the value.
pub const ENTRY_OVERHEAD: usize = 80;

type Table = SkipSet<Entry>;

/// One version of a user key, as stored in the memtable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemtableEntry {
    /// The sequence number of the write.
    pub sequence: u64,
    /// Put, Delete or Merge (range tombstones are kept apart).
    pub kind: ValueKind,
    /// The value or merge operand (empty for a delete).
    pub value: Arc<[u8]>,
}

/// An ordered, concurrent in-memory table of one column family's writes.
///
/// ```
/// use flowstate::lsm::format::ValueKind;
/// use flowstate::lsm::memtable::Memtable;
///
/// let mem = Memtable::new();
/// mem.insert(b"k", 1, ValueKind::Put, b"v1");
/// mem.insert(b"k", 2, ValueKind::Put, b"v2");
/// assert_eq!(&*mem.get(b"k", 1).unwrap().value, b"v1");
/// assert_eq!(mem.get(b"k", 5).unwrap().sequence, 2);
/// mem.insert(b"a", 3, ValueKind::RangeDelete, b"z");
/// assert!(mem.is_covered(b"k", 2, 3));
/// assert!(!mem.is_covered(b"k", 2, 2));
/// ```
#[derive(Debug)]
pub struct Memtable {
    /// Put, Delete and Merge entries: internal key and value.
    points: Arc<Table>,
    /// Range tombstones: internal key of (start, sequence, RangeDelete) and end (exclusive).
    range_tombstones: Arc<Table>,
    memory: AtomicUsize,
    smallest_sequence: AtomicU64,
    largest_sequence: AtomicU64,
}

impl Default for Memtable {
    fn default() -> Self {
        Self::new()
    }
}

impl Memtable {
    /// An empty memtable.
    pub fn new() -> Self {
        Memtable {
            points: Arc::new(SkipSet::new()),
            range_tombstones: Arc::new(SkipSet::new()),
            memory: AtomicUsize::new(0),
            smallest_sequence: AtomicU64::new(u64::MAX),
            largest_sequence: AtomicU64::new(0),
        }
    }

    /// Adds one write. For [`ValueKind::RangeDelete`], `user_key` is the range start and `value`
    /// its exclusive end; for a delete, `value` is normally empty.
    ///
    /// Each (user key, sequence) must be inserted at most once (the Db gives every operation its
    /// own sequence); `sequence` must be at most [`MAX_SEQUENCE`].
    pub fn insert(&self, user_key: &[u8], sequence: u64, kind: ValueKind, value: &[u8]) {
        assert!(
            sequence <= MAX_SEQUENCE,
            "sequence {sequence} exceeds MAX_SEQUENCE"
        );
        let table = match kind {
            ValueKind::RangeDelete => &self.range_tombstones,
            _ => &self.points,
        };
        table.insert(Entry::new(user_key, trailer(sequence, kind), value));
        self.memory.fetch_add(
            user_key.len() + TRAILER_LEN + value.len() + ENTRY_OVERHEAD,
            Ordering::Relaxed,
        );
        self.smallest_sequence
            .fetch_min(sequence, Ordering::Relaxed);
        self.largest_sequence.fetch_max(sequence, Ordering::Relaxed);
    }

    /// The newest version of `user_key` with sequence at most `snapshot`, ignoring range
    /// tombstones (ask [`Memtable::max_covering_tombstone_sequence`] for those).
    pub fn get(&self, user_key: &[u8], snapshot: u64) -> Option<MemtableEntry> {
        self.versions(user_key, snapshot).next()
    }

    /// Every version of `user_key` with sequence at most `snapshot`, newest first: what the Db
    /// walks to collect merge operands down to a put or delete.
    pub fn versions<'a>(
        &'a self,
        user_key: &'a [u8],
        snapshot: u64,
    ) -> impl Iterator<Item = MemtableEntry> + 'a {
        self.points
            .range((
                Bound::Included(lookup_probe(user_key, snapshot)),
                Bound::Unbounded,
            ))
            .map_while(move |entry| {
                let entry = entry.value();
                (entry.user_key() == user_key).then(|| MemtableEntry {
                    sequence: entry.sequence(),
                    kind: entry.kind(),
                    value: entry.value().into(),
                })
            })
    }

    /// Calls `f(sequence, kind, value)` for the versions of `user_key` with sequence at most
    /// `snapshot`, newest first, while `f` returns true: [`Memtable::versions`] without copying
    /// each value into a new allocation (the read path copies it once, into its result).
    pub fn for_each_version(
        &self,
        user_key: &[u8],
        snapshot: u64,
        mut f: impl FnMut(u64, ValueKind, &[u8]) -> bool,
    ) {
        let probe = lookup_probe(user_key, snapshot);
        let mut next = self.points.lower_bound(Bound::Included(&probe));
        while let Some(node) = next {
            let entry = node.value();
            if entry.user_key() != user_key || !f(entry.sequence(), entry.kind(), entry.value()) {
                return;
            }
            next = node.next();
        }
    }

    /// The largest sequence of a range tombstone visible at `snapshot` (sequence at most
    /// `snapshot`) whose range holds `user_key`; a version of `user_key` with a smaller
    /// sequence is deleted.
    ///
    /// Scans the tombstones starting at or before `user_key`: cheap for the few range deletes a
    /// memtable usually holds.
    pub fn max_covering_tombstone_sequence(&self, user_key: &[u8], snapshot: u64) -> Option<u64> {
        if self.range_tombstones.is_empty() {
            return None;
        }
        // The smallest trailer sorts last, so this bound takes every start <= user_key.
        let last = Entry::probe(user_key, 0);
        self.range_tombstones
            .range((Bound::Unbounded, Bound::Included(last)))
            .filter_map(|entry| {
                let entry = entry.value();
                let sequence = entry.sequence();
                (sequence <= snapshot && user_key < entry.value()).then_some(sequence)
            })
            .max()
    }

    /// Whether the version of `user_key` at `sequence` is deleted by a range tombstone in this
    /// memtable that is visible at `snapshot`.
    pub fn is_covered(&self, user_key: &[u8], sequence: u64, snapshot: u64) -> bool {
        self.max_covering_tombstone_sequence(user_key, snapshot)
            .is_some_and(|tombstone| tombstone > sequence)
    }

    /// Calls `f(internal_key, value)` for every point entry in order, in one pass over the
    /// skiplist (a flush: [`MemtableIter`] re-searches on every step so it can outlive borrows,
    /// which costs O(log n) per entry).
    pub fn for_each_entry(&self, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        for node in self.points.iter() {
            let entry = node.value();
            f(entry.internal_key(), entry.value())?;
        }
        Ok(())
    }

    /// An iterator over the point entries (internal key -> value), valid while others insert.
    pub fn iter(&self) -> MemtableIter {
        MemtableIter::new(Arc::clone(&self.points))
    }

    /// An iterator over the range tombstones: internal key of (start, sequence, RangeDelete) ->
    /// exclusive end. A flush writes these to the SST's range-deletion block.
    pub fn range_tombstone_iter(&self) -> MemtableIter {
        MemtableIter::new(Arc::clone(&self.range_tombstones))
    }

    /// Bytes of keys and values plus [`ENTRY_OVERHEAD`] per entry: what the write-buffer limit
    /// is checked against.
    pub fn approximate_memory_usage(&self) -> usize {
        self.memory.load(Ordering::Relaxed)
    }

    /// Number of entries, range tombstones included.
    pub fn len(&self) -> usize {
        self.points.len() + self.range_tombstones.len()
    }

    /// True when nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of range tombstones.
    pub fn range_tombstone_count(&self) -> usize {
        self.range_tombstones.len()
    }

    /// The smallest and largest sequence inserted, or `None` when empty.
    pub fn sequence_range(&self) -> Option<(u64, u64)> {
        let smallest = self.smallest_sequence.load(Ordering::Relaxed);
        (smallest != u64::MAX).then(|| (smallest, self.largest_sequence.load(Ordering::Relaxed)))
    }
}

/// The seek trailer for reads at `snapshot`: sorts before every version with sequence at most
/// `snapshot`, and after every newer one (kind byte 0xff, like LevelDB's `kValueTypeForSeek`).
fn lookup_trailer(snapshot: u64) -> u64 {
    (snapshot.min(MAX_SEQUENCE) << 8) | 0xff
}

fn lookup_probe(user_key: &[u8], snapshot: u64) -> Entry {
    Entry::probe(user_key, lookup_trailer(snapshot))
}

/// The seek key for reads at `snapshot`: sorts before every version of `user_key` with
/// sequence at most `snapshot`, and after every newer one (kind byte 0xff, like LevelDB's
/// `kValueTypeForSeek`).
pub fn lookup_key(user_key: &[u8], snapshot: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(user_key.len() + TRAILER_LEN);
    key.extend_from_slice(user_key);
    key.extend_from_slice(&lookup_trailer(snapshot).to_be_bytes());
    key
}

/// A cursor over one of a memtable's skiplists, in `compare_internal` order.
///
/// It holds the current entry (reference-counted, no copy) and re-seeks from it on each move,
/// so it stays correct while other threads insert: `next` goes to the smallest key after the
/// current one as the table is at that moment, and may therefore see newer inserts.
pub struct MemtableIter {
    table: Arc<Table>,
    current: Option<Entry>,
}

impl MemtableIter {
    fn new(table: Arc<Table>) -> Self {
        MemtableIter {
            table,
            current: None,
        }
    }

    fn set(&mut self, entry: Option<crossbeam_skiplist::set::Entry<'_, Entry>>) {
        self.current = entry.map(|e| e.value().clone());
    }
}

impl InternalIterator for MemtableIter {
    fn valid(&self) -> bool {
        self.current.is_some()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        let table = Arc::clone(&self.table);
        self.set(table.front());
        Ok(())
    }

    fn seek_to_last(&mut self) -> Result<()> {
        let table = Arc::clone(&self.table);
        self.set(table.back());
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let table = Arc::clone(&self.table);
        self.set(table.lower_bound(Bound::Included(&Entry::probe_internal(target))));
        Ok(())
    }

    fn seek_for_prev(&mut self, target: &[u8]) -> Result<()> {
        let table = Arc::clone(&self.table);
        self.set(table.upper_bound(Bound::Included(&Entry::probe_internal(target))));
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        debug_assert!(self.valid(), "next on an invalid memtable iterator");
        if let Some(current) = self.current.take() {
            let table = Arc::clone(&self.table);
            self.set(table.lower_bound(Bound::Excluded(&current)));
        }
        Ok(())
    }

    fn prev(&mut self) -> Result<()> {
        debug_assert!(self.valid(), "prev on an invalid memtable iterator");
        if let Some(current) = self.current.take() {
            let table = Arc::clone(&self.table);
            self.set(table.upper_bound(Bound::Excluded(&current)));
        }
        Ok(())
    }

    fn key(&self) -> &[u8] {
        self.current.as_ref().map_or(&[], Entry::internal_key)
    }

    fn value(&self) -> &[u8] {
        self.current.as_ref().map_or(&[], Entry::value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::format::{InternalKey, compare_internal, internal_key};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The model: internal key -> value, in the same order as the memtable.
    type Model = BTreeMap<InternalKey, Vec<u8>>;

    fn kind() -> impl Strategy<Value = ValueKind> {
        prop_oneof![
            Just(ValueKind::Put),
            Just(ValueKind::Delete),
            Just(ValueKind::Merge)
        ]
    }

    fn small_key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0u8..4, 0..3)
    }

    /// Collects an iterator's entries, walking forward or backward from an end.
    fn walk(iter: &mut MemtableIter, forward: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        if forward {
            iter.seek_to_first().unwrap();
        } else {
            iter.seek_to_last().unwrap();
        }
        while iter.valid() {
            out.push((iter.key().to_vec(), iter.value().to_vec()));
            if forward {
                iter.next().unwrap();
            } else {
                iter.prev().unwrap();
            }
        }
        out
    }

    proptest! {
        #[test]
        fn matches_a_btreemap_model(
            writes in proptest::collection::vec((small_key(), kind(), proptest::collection::vec(any::<u8>(), 0..4)), 0..40),
            probes in proptest::collection::vec((small_key(), 0u64..45, any::<u8>()), 1..12),
        ) {
            let mem = Memtable::new();
            let mut model = Model::new();
            let mut memory = 0;
            for (i, (key, kind, value)) in writes.iter().enumerate() {
                let seq = i as u64 + 1;
                mem.insert(key, seq, *kind, value);
                model.insert(InternalKey(internal_key(key, seq, *kind)), value.clone());
                memory += key.len() + TRAILER_LEN + value.len() + ENTRY_OVERHEAD;
            }
            prop_assert_eq!(mem.approximate_memory_usage(), memory);
            prop_assert_eq!(mem.len(), model.len());
            let expected: Vec<(Vec<u8>, Vec<u8>)> = model.iter().map(|(k, v)| (k.0.clone(), v.clone())).collect();
            let mut iter = mem.iter();
            prop_assert_eq!(walk(&mut iter, true), expected.clone());
            let mut backward = walk(&mut iter, false);
            backward.reverse();
            prop_assert_eq!(backward, expected);

            for (key, snapshot, trailer_byte) in probes {
                // Snapshot reads: every visible version, newest first.
                let want: Vec<MemtableEntry> = model
                    .iter()
                    .filter_map(|(k, v)| {
                        let p = crate::lsm::format::parse_internal_key(&k.0, "m", 0).unwrap();
                        (p.user_key == key.as_slice() && p.sequence <= snapshot).then(|| MemtableEntry {
                            sequence: p.sequence, kind: p.kind, value: v.as_slice().into(),
                        })
                    })
                    .collect();
                let got: Vec<MemtableEntry> = mem.versions(&key, snapshot).collect();
                prop_assert_eq!(mem.get(&key, snapshot), want.first().cloned());
                prop_assert_eq!(got, want.clone());
                let mut visited = Vec::new();
                mem.for_each_version(&key, snapshot, |sequence, kind, value| {
                    visited.push(MemtableEntry { sequence, kind, value: value.into() });
                    kind == ValueKind::Merge
                });
                let until_non_merge = want.iter().position(|e| e.kind != ValueKind::Merge).map_or(want.len(), |i| i + 1);
                prop_assert_eq!(visited, want[..until_non_merge].to_vec());

                // Seeks to arbitrary targets, including ones that are no valid internal key.
                let mut target = key.clone();
                target.extend_from_slice(&((snapshot << 8) | u64::from(trailer_byte)).to_be_bytes());
                for t in [target.clone(), key.clone()] {
                    let probe = InternalKey(t.clone());
                    iter.seek(&t).unwrap();
                    let at_or_after = model.range(probe.clone()..).next().map(|(k, _)| k.0.clone());
                    prop_assert_eq!(iter.valid().then(|| iter.key().to_vec()), at_or_after);
                    iter.seek_for_prev(&t).unwrap();
                    let at_or_before = model.range(..=probe).next_back().map(|(k, _)| k.0.clone());
                    prop_assert_eq!(iter.valid().then(|| iter.key().to_vec()), at_or_before);
                }
            }
        }

        #[test]
        fn range_tombstones_match_brute_force(
            tombstones in proptest::collection::vec((small_key(), small_key(), 1u64..30), 0..8),
            probes in proptest::collection::vec((small_key(), 0u64..32, 0u64..32), 1..16),
        ) {
            let mem = Memtable::new();
            let mut seen = std::collections::BTreeSet::new();
            let mut model = Vec::new();
            for (start, end, seq) in tombstones {
                if seen.insert(seq) {
                    mem.insert(&start, seq, ValueKind::RangeDelete, &end);
                    model.push((start, end, seq));
                }
            }
            prop_assert_eq!(mem.range_tombstone_count(), model.len());
            prop_assert!(mem.iter().seek_to_first().is_ok());
            for (key, seq, snapshot) in probes {
                let want = model
                    .iter()
                    .filter(|(s, e, t)| s <= &key && &key < e && *t <= snapshot)
                    .map(|(_, _, t)| *t)
                    .max();
                prop_assert_eq!(mem.max_covering_tombstone_sequence(&key, snapshot), want);
                prop_assert_eq!(mem.is_covered(&key, seq, snapshot), want.is_some_and(|t| t > seq));
            }
            let mut iter = mem.range_tombstone_iter();
            prop_assert_eq!(walk(&mut iter, true).len(), model.len());
        }
    }

    #[test]
    fn point_iterator_skips_range_tombstones_and_reports_sequences() {
        let mem = Memtable::new();
        assert_eq!(mem.sequence_range(), None);
        mem.insert(b"b", 7, ValueKind::Put, b"x");
        mem.insert(b"a", 9, ValueKind::RangeDelete, b"c");
        mem.insert(b"b", 8, ValueKind::Delete, b"");
        assert_eq!(mem.sequence_range(), Some((7, 9)));
        let mut iter = mem.iter();
        let keys: Vec<_> = walk(&mut iter, true).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                internal_key(b"b", 8, ValueKind::Delete),
                internal_key(b"b", 7, ValueKind::Put)
            ]
        );
        let mut tombstones = mem.range_tombstone_iter();
        tombstones.seek_to_first().unwrap();
        assert_eq!(
            tombstones.key(),
            internal_key(b"a", 9, ValueKind::RangeDelete)
        );
        assert_eq!(tombstones.value(), b"c");
        assert!(mem.is_covered(b"b", 8, 9));
        assert!(!mem.is_covered(b"c", 8, 9), "the end is exclusive");
    }

    #[test]
    fn memtable_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Memtable>();
        fn check_send<T: Send>() {}
        check_send::<MemtableIter>();
    }

    /// One writer inserts key `i % KEYS` at sequence `i` and then publishes `i`; readers check
    /// that every scan is sorted and that a read at a published snapshot sees exactly the
    /// newest write at or below it.
    #[test]
    fn readers_see_a_sorted_consistent_view_while_a_writer_inserts() {
        const KEYS: u64 = 37;
        const WRITES: u64 = 4_000;
        let mem = Arc::new(Memtable::new());
        let published = Arc::new(AtomicU64::new(0));
        let key_of = |i: u64| format!("key{:03}", i % KEYS).into_bytes();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for i in 1..=WRITES {
                    mem.insert(&key_of(i), i, ValueKind::Put, &i.to_le_bytes());
                    published.store(i, Ordering::Release);
                }
            });
            for reader in 0..2u64 {
                let (mem, published) = (Arc::clone(&mem), Arc::clone(&published));
                scope.spawn(move || {
                    let mut round = 0u64;
                    loop {
                        let snapshot = published.load(Ordering::Acquire);
                        let forward = (round + reader).is_multiple_of(2);
                        let entries = walk(&mut mem.iter(), forward);
                        let keys: Vec<&[u8]> = entries.iter().map(|(k, _)| k.as_slice()).collect();
                        let sorted = keys.windows(2).all(|w| {
                            let order = compare_internal(w[0], w[1]);
                            if forward {
                                order.is_lt()
                            } else {
                                order.is_gt()
                            }
                        });
                        assert!(sorted, "scan out of order in round {round}");
                        assert!(
                            entries.len() as u64 >= snapshot,
                            "scan lost published writes"
                        );
                        for (k, v) in &entries {
                            let seq = crate::lsm::format::parse_internal_key(k, "m", 0)
                                .unwrap()
                                .sequence;
                            assert_eq!(v.as_slice(), seq.to_le_bytes());
                        }
                        if snapshot > 0 {
                            let probe = snapshot - round % snapshot.min(KEYS);
                            let newest = (1..=snapshot).rev().find(|i| i % KEYS == probe % KEYS);
                            let got = mem.get(&key_of(probe), snapshot).map(|e| e.sequence);
                            assert_eq!(got, newest, "snapshot {snapshot}");
                        }
                        round += 1;
                        if snapshot == WRITES {
                            break;
                        }
                    }
                });
            }
        });
        assert_eq!(mem.len() as u64, WRITES);
    }
}
