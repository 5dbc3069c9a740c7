//! Memtable tests: a model (`BTreeMap`) of its entries, seeks, snapshot reads, range
//! tombstones and concurrent readers, with buffers small enough to seal and merge runs.

use super::*;
use crate::lsm::format::{InternalKey, compare_internal, internal_key};
use crate::lsm::iterator::InternalIterator;
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
        buffer in prop_oneof![Just(DEFAULT_BUFFER_ENTRIES), 1usize..6],
        shuffled in any::<bool>(),
    ) {
        let mem = Memtable::with_buffer_entries(buffer);
        let mut model = Model::new();
        let mut bytes = 0;
        let mut order: Vec<usize> = (0..writes.len()).collect();
        if shuffled {
            // Sequences out of insertion order: reads must still give newest first.
            order.reverse();
            order.rotate_left(writes.len() / 3);
        }
        for i in order {
            let (key, kind, value) = &writes[i];
            let seq = i as u64 + 1;
            mem.insert(key, seq, *kind, value);
            model.insert(InternalKey(internal_key(key, seq, *kind)), value.clone());
            bytes += key.len() + TRAILER_LEN + value.len();
        }
        // Entries still in the skiplist are charged ENTRY_OVERHEAD, those sealed into runs a slot.
        let in_buffer = writes.len() % buffer;
        let memory = bytes + in_buffer * ENTRY_OVERHEAD + (writes.len() - in_buffer) * run::SLOT_BYTES;
        prop_assert_eq!(mem.approximate_memory_usage(), memory);
        prop_assert_eq!(mem.len(), model.len());
        let expected: Vec<(Vec<u8>, Vec<u8>)> = model.iter().map(|(k, v)| (k.0.clone(), v.clone())).collect();
        let mut iter = mem.iter();
        prop_assert_eq!(walk(&mut iter, true), expected.clone());
        let mut backward = walk(&mut iter, false);
        backward.reverse();
        prop_assert_eq!(&backward, &expected);

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
        let mut flushed = Vec::new();
        mem.for_each_entry(|k, v| { flushed.push((k.to_vec(), v.to_vec())); Ok(()) }).unwrap();
        prop_assert_eq!(&flushed, &expected);
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
    // Small skiplists: seals and run merges happen while the readers read.
    let mem = Arc::new(Memtable::with_buffer_entries(16));
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

#[test]
fn memtable_get_by_snapshot_and_range_cover() -> crate::error::Result<()> {
    use crate::lsm::format::ValueKind;
    use crate::lsm::memtable::Memtable;

    let mem = Memtable::new();
    mem.insert(b"k", 1, ValueKind::Put, b"v1");
    mem.insert(b"k", 2, ValueKind::Put, b"v2");
    assert_eq!(&*mem.get(b"k", 1).unwrap().value, b"v1");
    assert_eq!(mem.get(b"k", 5).unwrap().sequence, 2);
    mem.insert(b"a", 3, ValueKind::RangeDelete, b"z");
    assert!(mem.is_covered(b"k", 2, 3));
    assert!(!mem.is_covered(b"k", 2, 2));
    Ok(())
}
