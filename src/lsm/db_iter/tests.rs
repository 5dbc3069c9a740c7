//! Model tests of [`DbIter`](super::DbIter): random histories split across children, random
//! snapshots, bounds and range tombstones, random cursor moves, checked against a `BTreeMap` built
//! with `resolve` at every step.

use std::collections::BTreeMap;
use std::ops::Bound;

use proptest::prelude::*;

use super::*;
use crate::error::Error;
use crate::lsm::format::{compare_internal, internal_key};
use crate::lsm::memtable::Memtable;
use crate::lsm::merge::AppendOperator;
use crate::lsm::merge_iter::{MergingIterator, VecIterator};
use crate::lsm::version::RangeTombstone;

/// One write of a history; its sequence is its position + 1.
#[derive(Clone, Debug)]
enum Event {
    Point {
        key: Vec<u8>,
        kind: ValueKind,
        value: u8,
        child: usize,
    },
    RangeDelete {
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
enum Op {
    First,
    Last,
    Seek(Vec<u8>),
    SeekForPrev(Vec<u8>),
    Next,
    Prev,
}

fn history_key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop::sample::select(vec![b'a', b'b', b'c']), 0..3)
}

fn probe_key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop::sample::select(vec![0u8, b'a', b'b', b'c', 0xff]),
        0..4,
    )
}

fn event(children: usize) -> impl Strategy<Value = Event> {
    let kind = prop_oneof![
        3 => Just(ValueKind::Put),
        2 => Just(ValueKind::Delete),
        3 => Just(ValueKind::Merge),
    ];
    prop_oneof![
        10 => (history_key(), kind, any::<u8>(), 0..children).prop_map(
            |(key, kind, value, child)| Event::Point { key, kind, value, child }
        ),
        1 => (history_key(), history_key())
            .prop_map(|(start, end)| Event::RangeDelete { start, end }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::First),
        1 => Just(Op::Last),
        2 => probe_key().prop_map(Op::Seek),
        2 => probe_key().prop_map(Op::SeekForPrev),
        4 => Just(Op::Next),
        4 => Just(Op::Prev),
    ]
}

fn tombstones(events: &[Event]) -> Vec<RangeTombstone> {
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if let Event::RangeDelete { start, end } = e {
            out.push(RangeTombstone {
                start: start.clone(),
                end: end.clone(),
                sequence: i as u64 + 1,
            });
        }
    }
    out
}

/// For each user key, `resolve` on its versions newest first, then the bounds.
fn model(
    events: &[Event],
    snapshot: u64,
    merge: Option<&dyn MergeOperator>,
    lower: Option<&[u8]>,
    upper: Option<&[u8]>,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let ranges = tombstones(events);
    let mut versions: BTreeMap<&[u8], Vec<VersionRef<'_>>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate().rev() {
        if let Event::Point {
            key, kind, value, ..
        } = e
        {
            versions.entry(key).or_default().push(VersionRef {
                sequence: i as u64 + 1,
                kind: *kind,
                value: std::slice::from_ref(value),
            });
        }
    }
    versions
        .into_iter()
        .filter(|(k, _)| lower.is_none_or(|l| *k >= l) && upper.is_none_or(|u| *k < u))
        .filter_map(|(k, vs)| {
            let covered = |s| ranges.iter().any(|t| t.covers(k, s, snapshot));
            resolve(k, vs, snapshot, covered, merge).map(|v| (k.to_vec(), v))
        })
        .collect()
}

/// Sorted internal entries of each child.
fn children(events: &[Event], count: usize) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = vec![Vec::new(); count];
    for (i, e) in events.iter().enumerate() {
        if let Event::Point {
            key,
            kind,
            value,
            child,
        } = e
        {
            out[*child].push((internal_key(key, i as u64 + 1, *kind), vec![*value]));
        }
    }
    for entries in &mut out {
        entries.sort_by(|a, b| compare_internal(&a.0, &b.0));
    }
    out
}

/// Runs `ops` on `it` and on the model, comparing after every step.
fn check(
    it: &mut DbIter,
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    ops: &[Op],
) -> std::result::Result<(), TestCaseError> {
    let mut current: Option<&Vec<u8>> = None;
    for op in ops {
        let (result, expected) = match op {
            Op::First => (it.seek_to_first(), model.keys().next()),
            Op::Last => (it.seek_to_last(), model.keys().next_back()),
            Op::Seek(t) => (it.seek(t), model.range(t.clone()..).next().map(|e| e.0)),
            Op::SeekForPrev(t) => (
                it.seek_for_prev(t),
                model.range(..=t.clone()).next_back().map(|e| e.0),
            ),
            Op::Next => (
                it.next(),
                current.and_then(|c| {
                    let after = (Bound::Excluded(c.clone()), Bound::Unbounded);
                    model.range(after).next().map(|e| e.0)
                }),
            ),
            Op::Prev => (
                it.prev(),
                current.and_then(|c| model.range(..c.clone()).next_back().map(|e| e.0)),
            ),
        };
        prop_assert!(result.is_ok(), "{op:?}: {result:?}");
        current = expected;
        prop_assert_eq!(it.valid(), current.is_some(), "after {:?}", op);
        if let Some(key) = current {
            prop_assert_eq!(it.key(), key.as_slice(), "after {:?}", op);
            prop_assert_eq!(it.value(), model[key].as_slice(), "after {:?}", op);
        }
    }
    Ok(())
}

fn snapshot_of(events: &[Event], choice: u64) -> u64 {
    choice % (events.len() as u64 + 2)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn matches_the_model(
        count in 1usize..4,
        events in proptest::collection::vec(event(3), 0..40),
        snapshot in any::<u64>(),
        append in any::<bool>(),
        lower in proptest::option::of(probe_key()),
        upper in proptest::option::of(probe_key()),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let events: Vec<Event> = events.into_iter().map(|mut e| {
            if let Event::Point { child, .. } = &mut e { *child %= count; }
            e
        }).collect();
        let snapshot = snapshot_of(&events, snapshot);
        let merge: Option<Arc<dyn MergeOperator>> =
            append.then(|| Arc::new(AppendOperator) as Arc<dyn MergeOperator>);
        let expected = model(&events, snapshot, merge.as_deref(), lower.as_deref(),
                             upper.as_deref());
        let inner: Vec<Box<dyn InternalIterator>> = children(&events, count)
            .into_iter()
            .map(|c| Box::new(VecIterator::new(c, compare_internal)) as Box<dyn InternalIterator>)
            .collect();
        let ranges = tombstones(&events);
        let mut it = DbIter::new(Box::new(MergingIterator::new(inner, compare_internal)), snapshot)
            .with_merge_operator(merge)
            .with_range_tombstones(Box::new(move |k, s| {
                ranges.iter().any(|t| t.covers(k, s, snapshot))
            }))
            .with_bounds(lower, upper);
        check(&mut it, &expected, &ops)?;
    }

    #[test]
    fn matches_the_model_through_a_memtable(
        events in proptest::collection::vec(event(2), 0..40),
        snapshot in any::<u64>(),
        prefix in proptest::option::of(history_key()),
        ops in proptest::collection::vec(op(), 1..30),
    ) {
        // Child 0 is the memtable (newest source) holding the range tombstones too; child 1
        // stands for an SST.
        let snapshot = snapshot_of(&events, snapshot);
        let upper = prefix.as_deref().and_then(prefix_upper_bound);
        let expected = model(&events, snapshot, Some(&AppendOperator), prefix.as_deref(),
                             upper.as_deref());
        let mem = Arc::new(Memtable::new());
        for (i, e) in events.iter().enumerate() {
            match e {
                Event::Point { key, kind, value, child: 0 } =>
                    mem.insert(key, i as u64 + 1, *kind, &[*value]),
                Event::RangeDelete { start, end } =>
                    mem.insert(start, i as u64 + 1, ValueKind::RangeDelete, end),
                Event::Point { .. } => {}
            }
        }
        let sst = children(&events, 2).pop().unwrap_or_default();
        let inner: Vec<Box<dyn InternalIterator>> = vec![
            Box::new(mem.iter()),
            Box::new(VecIterator::new(sst, compare_internal)),
        ];
        let covering = Arc::clone(&mem);
        let mut it = DbIter::new(Box::new(MergingIterator::new(inner, compare_internal)), snapshot)
            .with_merge_operator(Some(Arc::new(AppendOperator)))
            .with_range_tombstones(Box::new(move |k, s| covering.is_covered(k, s, snapshot)));
        if let Some(p) = &prefix {
            it = it.with_prefix(p);
        }
        check(&mut it, &expected, &ops)?;
    }
}

fn vec_iter(entries: Vec<(Vec<u8>, Vec<u8>)>) -> Box<dyn InternalIterator> {
    Box::new(VecIterator::new(entries, compare_internal))
}

fn put(key: &[u8], sequence: u64, value: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (internal_key(key, sequence, ValueKind::Put), value.to_vec())
}

fn del(key: &[u8], sequence: u64) -> (Vec<u8>, Vec<u8>) {
    (internal_key(key, sequence, ValueKind::Delete), Vec::new())
}

fn position(it: &DbIter) -> Option<(&[u8], &[u8])> {
    it.valid().then(|| (it.key(), it.value()))
}

#[test]
fn switches_direction_across_deleted_and_newer_keys() {
    let entries = vec![
        put(b"a", 1, b"a1"),
        del(b"b", 4),
        put(b"b", 2, b"b2"),
        put(b"c", 9, b"future"),
        put(b"d", 3, b"d3"),
        put(b"d", 1, b"d1"),
        put(b"e", 5, b"e5"),
    ];
    let mut it = DbIter::new(vec_iter(entries), 5);
    it.seek_to_first().unwrap();
    assert_eq!(position(&it), Some((&b"a"[..], &b"a1"[..])));
    it.next().unwrap();
    assert_eq!(position(&it), Some((&b"d"[..], &b"d3"[..])));
    it.prev().unwrap();
    assert_eq!(position(&it), Some((&b"a"[..], &b"a1"[..])));
    it.prev().unwrap();
    assert!(!it.valid());
    it.seek_for_prev(b"dz").unwrap();
    assert_eq!(position(&it), Some((&b"d"[..], &b"d3"[..])));
    it.next().unwrap();
    assert_eq!(position(&it), Some((&b"e"[..], &b"e5"[..])));
    it.prev().unwrap();
    it.prev().unwrap();
    assert_eq!(position(&it), Some((&b"a"[..], &b"a1"[..])));
    let rest: Vec<_> = it.entries().collect::<Result<_>>().unwrap();
    let expected = [(b"a", b"a1"), (b"d", b"d3"), (b"e", b"e5")];
    let expected: Vec<_> = expected
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(rest, expected);
}

#[test]
fn prefix_bounds() {
    assert_eq!(prefix_upper_bound(b"ab"), Some(b"ac".to_vec()));
    assert_eq!(prefix_upper_bound(b"a\xff\xff"), Some(b"b".to_vec()));
    assert_eq!(prefix_upper_bound(b"\xff\xff"), None);
    assert_eq!(prefix_upper_bound(b""), None);
    let entries = vec![
        put(b"a", 1, b"1"),
        put(b"b", 2, b"2"),
        put(b"b\x00", 3, b"3"),
        put(b"b\xff", 4, b"4"),
        put(b"c", 5, b"5"),
    ];
    let mut it = DbIter::new(vec_iter(entries), 10).with_prefix(b"b");
    it.seek_to_last().unwrap();
    assert_eq!(position(&it), Some((&b"b\xff"[..], &b"4"[..])));
    it.seek_to_first().unwrap();
    let keys: Vec<_> = it.entries().map(|e| e.unwrap().0).collect();
    assert_eq!(keys, [b"b".to_vec(), b"b\x00".to_vec(), b"b\xff".to_vec()]);
}

#[test]
fn corrupt_inner_key_is_an_error_and_leaves_it_invalid() {
    let mut corrupt = internal_key(b"b", 2, ValueKind::Put);
    if let Some(tag) = corrupt.last_mut() {
        *tag = 0x7f;
    }
    let entries = vec![
        put(b"a", 1, b"1"),
        (corrupt, Vec::new()),
        put(b"c", 3, b"3"),
    ];
    let mut it = DbIter::new(vec_iter(entries), 10);
    assert!(matches!(it.seek_to_first(), Err(Error::Corruption { .. })));
    assert!(!it.valid());
    it.seek(b"c").unwrap();
    assert_eq!(position(&it), Some((&b"c"[..], &b"3"[..])));
    assert!(matches!(it.prev(), Err(Error::Corruption { .. })));
    assert!(!it.valid());
    it.seek_for_prev(b"a").unwrap();
    assert_eq!(position(&it), Some((&b"a"[..], &b"1"[..])));
    let scan: Vec<_> = it.entries().collect();
    assert!(matches!(
        scan.as_slice(),
        [Ok(_), Err(Error::Corruption { .. })]
    ));
}

#[test]
fn is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<DbIter>();
    assert_send::<Entries>();
}

#[test]
fn db_iter_hides_deleted_and_shadowed_versions()
-> std::result::Result<(), Box<dyn std::error::Error>> {
    use crate::lsm::db_iter::DbIter;
    use crate::lsm::format::{ValueKind, compare_internal, internal_key};
    use crate::lsm::merge_iter::VecIterator;

    let entries = vec![
        (internal_key(b"a", 3, ValueKind::Delete), vec![]),
        (internal_key(b"a", 1, ValueKind::Put), b"old".to_vec()),
        (internal_key(b"b", 2, ValueKind::Put), b"bee".to_vec()),
    ];
    let inner = Box::new(VecIterator::new(entries, compare_internal));
    let mut it = DbIter::new(inner, 3);
    it.seek_to_first()?;
    assert_eq!((it.key(), it.value()), (&b"b"[..], &b"bee"[..]));
    it.next()?;
    assert!(!it.valid());

    // At snapshot 2 the delete of `a` is not yet visible.
    let entries = vec![
        (internal_key(b"a", 3, ValueKind::Delete), vec![]),
        (internal_key(b"a", 1, ValueKind::Put), b"old".to_vec()),
    ];
    let mut it = DbIter::new(Box::new(VecIterator::new(entries, compare_internal)), 2);
    it.seek_to_last()?;
    assert_eq!(it.value(), b"old");
    Ok(())
}
