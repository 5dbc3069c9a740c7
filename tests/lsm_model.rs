//! Model-based test of `lsm::Db`: random interleavings of put, delete, delete_range, merge,
//! batches, gets, iteration in both directions, snapshot reads, flushes, compactions and reopens
//! over several column families must give exactly the answers of a `BTreeMap` model.
//!
//! 256 cases by default; `PROPTEST_CASES=5000 cargo test --release --test lsm_model` for more.

use std::collections::BTreeMap;
use std::sync::Arc;

use flowstate::budget::{CHUNK, MemoryBudget};

use flowstate::lsm::CompactionOptions;
use flowstate::lsm::SstOptions;
use flowstate::lsm::WriteBatch;
use flowstate::lsm::{CfOptions, ColumnFamily, Db, Options, ReadOptions, Snapshot};
use proptest::prelude::*;

type Model = BTreeMap<(usize, Vec<u8>), Vec<u8>>;

#[derive(Clone, Debug)]
enum Op {
    Put(usize, u8, u8),
    Delete(usize, u8),
    DeleteRange(usize, u8, u8),
    Merge(usize, u8, u8),
    Batch(Vec<(usize, u8, u8)>),
    Get(usize, u8),
    Scan(usize, u8, u8, bool),
    TakeSnapshot,
    ReadSnapshot(usize, u8),
    DropSnapshot,
    Flush,
    Background,
    CompactAll(usize),
    Reopen,
}

fn key(k: u8) -> Vec<u8> {
    // A small alphabet with shared prefixes, so files overlap and ranges cut through them.
    format!("k{:02}", k % 24).into_bytes()
}

fn ordered(a: u8, b: u8) -> (Vec<u8>, Vec<u8>) {
    let (a, b) = (key(a), key(b));
    if a <= b { (a, b) } else { (b, a) }
}

fn op() -> impl Strategy<Value = Op> {
    let cf = 0usize..3;
    prop_oneof![
        8 => (cf.clone(), any::<u8>(), any::<u8>()).prop_map(|(c, k, v)| Op::Put(c, k, v)),
        3 => (cf.clone(), any::<u8>()).prop_map(|(c, k)| Op::Delete(c, k)),
        1 => (cf.clone(), any::<u8>(), any::<u8>()).prop_map(|(c, a, b)| Op::DeleteRange(c, a, b)),
        4 => (cf.clone(), any::<u8>(), any::<u8>()).prop_map(|(c, k, v)| Op::Merge(c, k, v)),
        2 => proptest::collection::vec((cf.clone(), any::<u8>(), any::<u8>()), 1..6).prop_map(Op::Batch),
        4 => (cf.clone(), any::<u8>()).prop_map(|(c, k)| Op::Get(c, k)),
        2 => (cf.clone(), any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(c, a, b, r)| Op::Scan(c, a, b, r)),
        1 => Just(Op::TakeSnapshot),
        2 => (cf.clone(), any::<u8>()).prop_map(|(c, k)| Op::ReadSnapshot(c, k)),
        1 => Just(Op::DropSnapshot),
        2 => Just(Op::Flush),
        2 => Just(Op::Background),
        1 => cf.prop_map(Op::CompactAll),
        1 => Just(Op::Reopen),
    ]
}

fn options(budget: &Option<Arc<MemoryBudget>>) -> Options {
    let cf = CfOptions::default()
        .sst(SstOptions::default().block_size(256))
        .compaction(
            CompactionOptions::default()
                .level0_file_trigger(2)
                .max_bytes_for_level_base(4 << 10)
                .level_size_multiplier(4)
                .target_file_size(2 << 10),
        );
    Options::default()
        .write_buffer_size(1 << 10)
        // Seal the memtable's skiplist every 3 entries: sorted runs and their merges are read,
        // iterated and flushed in every case.
        .memtable_buffer_entries(3)
        .background_work(false)
        .memory_budget(budget.clone())
        .block_cache_size(1 << 20)
        .default_cf_options(cf)
}

struct Harness {
    dir: tempfile::TempDir,
    db: Option<Db>,
    cfs: Vec<ColumnFamily>,
    snapshots: Vec<(Snapshot, Model)>,
    budget: Option<Arc<MemoryBudget>>,
}

impl Harness {
    fn open(dir: tempfile::TempDir, budget: Option<Arc<MemoryBudget>>) -> Self {
        let db = Db::open(dir.path(), options(&budget)).unwrap();
        let cfs = vec![
            db.default_cf(),
            db.create_cf("one", options(&budget).default_cf_options)
                .unwrap(),
            db.create_cf("two", options(&budget).default_cf_options)
                .unwrap(),
        ];
        Harness {
            dir,
            db: Some(db),
            cfs,
            snapshots: Vec::new(),
            budget,
        }
    }

    fn db(&self) -> &Db {
        self.db.as_ref().unwrap()
    }
}

fn scan(
    db: &Db,
    cf: &ColumnFamily,
    lo: &[u8],
    hi: &[u8],
    reverse: bool,
    snap: Option<&Snapshot>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut options = ReadOptions {
        lower_bound: Some(lo.to_vec()),
        upper_bound: Some(hi.to_vec()),
        ..ReadOptions::default()
    };
    if let Some(s) = snap {
        options = options.at(s);
    }
    let mut it = db.iter(cf, options).unwrap();
    let mut out = Vec::new();
    if reverse {
        it.seek_to_last().unwrap();
        while it.valid() {
            out.push((it.key().to_vec(), it.value().to_vec()));
            it.prev().unwrap();
        }
        out.reverse();
    } else {
        it.seek_to_first().unwrap();
        while it.valid() {
            out.push((it.key().to_vec(), it.value().to_vec()));
            it.next().unwrap();
        }
    }
    out
}

fn model_scan(model: &Model, cf: usize, lo: &[u8], hi: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    model
        .range((cf, lo.to_vec())..(cf, hi.to_vec()))
        .map(|((_, k), v)| (k.clone(), v.clone()))
        .collect()
}

/// Runs `ops`; returns the number of files below L0 at the end.
fn run(ops: Vec<Op>) -> usize {
    run_on(ops, None)
}

/// [`run`] with the store on `budget`.
fn run_on(ops: Vec<Op>, budget: Option<Arc<MemoryBudget>>) -> usize {
    let mut h = Harness::open(tempfile::tempdir().unwrap(), budget);
    let mut model: Model = BTreeMap::new();
    for op in ops {
        match op {
            Op::Put(c, k, v) => {
                h.db().put(&h.cfs[c], &key(k), &[v]).unwrap();
                model.insert((c, key(k)), vec![v]);
            }
            Op::Delete(c, k) => {
                h.db().delete(&h.cfs[c], &key(k)).unwrap();
                model.remove(&(c, key(k)));
            }
            Op::DeleteRange(c, a, b) => {
                let (lo, hi) = ordered(a, b);
                h.db().delete_range(&h.cfs[c], &lo, &hi).unwrap();
                let doomed: Vec<_> = model
                    .range((c, lo.clone())..(c, hi.clone()))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    model.remove(&k);
                }
            }
            Op::Merge(c, k, v) => {
                h.db().merge(&h.cfs[c], &key(k), &[v]).unwrap();
                model.entry((c, key(k))).or_default().push(v);
            }
            Op::Batch(writes) => {
                let mut batch = WriteBatch::new();
                for (c, k, v) in &writes {
                    if v % 3 == 0 {
                        batch.delete(&h.cfs[*c], &key(*k)).unwrap();
                    } else {
                        batch.put(&h.cfs[*c], &key(*k), &[*v]).unwrap();
                    }
                }
                h.db().write(batch).unwrap();
                for (c, k, v) in writes {
                    if v % 3 == 0 {
                        model.remove(&(c, key(k)));
                    } else {
                        model.insert((c, key(k)), vec![v]);
                    }
                }
            }
            Op::Get(c, k) => {
                let expected = model.get(&(c, key(k))).cloned();
                assert_eq!(
                    h.db().get(&h.cfs[c], &key(k)).unwrap(),
                    expected,
                    "get {c} {:?}",
                    key(k)
                );
                let pinned = h
                    .db()
                    .get_pinned(&h.cfs[c], &key(k), &ReadOptions::default())
                    .unwrap();
                assert_eq!(pinned.map(|v| v.to_vec()), expected, "get_pinned {c} {k}");
            }
            Op::Scan(c, a, b, reverse) => {
                let (lo, hi) = ordered(a, b);
                assert_eq!(
                    scan(h.db(), &h.cfs[c], &lo, &hi, reverse, None),
                    model_scan(&model, c, &lo, &hi)
                );
            }
            Op::TakeSnapshot => {
                let s = h.db().snapshot();
                h.snapshots.push((s, model.clone()));
            }
            Op::ReadSnapshot(c, k) => {
                if let Some((s, m)) = h.snapshots.first() {
                    let got = h
                        .db()
                        .get_opt(&h.cfs[c], &key(k), &ReadOptions::default().at(s))
                        .unwrap();
                    assert_eq!(got, m.get(&(c, key(k))).cloned(), "snapshot get");
                    let all = scan(h.db(), &h.cfs[c], b"", b"z", k % 2 == 0, Some(s));
                    assert_eq!(all, model_scan(m, c, b"", b"z"), "snapshot scan");
                }
            }
            Op::DropSnapshot => {
                if !h.snapshots.is_empty() {
                    h.snapshots.remove(0);
                }
            }
            Op::Flush => {
                h.db().flush().unwrap();
            }
            Op::Background => h.db().run_background_work().unwrap(),
            Op::CompactAll(c) => h.db().compact_range(&h.cfs[c], None, None).unwrap(),
            Op::Reopen => {
                h.snapshots.clear();
                h.db.take();
                let db = Db::open(h.dir.path(), options(&h.budget)).unwrap();
                h.cfs = vec![
                    db.default_cf(),
                    db.cf("one").unwrap(),
                    db.cf("two").unwrap(),
                ];
                h.db = Some(db);
            }
        }
    }
    for c in 0..3 {
        assert_eq!(
            scan(h.db(), &h.cfs[c], b"", b"z", false, None),
            model_scan(&model, c, b"", b"z")
        );
    }
    h.db()
        .stats()
        .column_families
        .iter()
        .map(|c| c.files_per_level[1..].iter().sum::<usize>())
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn db_matches_btreemap_model(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// A budget of two charge chunks for three column families' memtables and the block cache:
    /// writes keep running out of memory, freeze and flush, and the cache keeps evicting; the
    /// answers stay the model's, nothing is charged once the store is gone, and the limit is
    /// passed by no more than the open tables' indexes and filters (the one charge that never
    /// waits).
    #[test]
    fn db_on_a_tiny_memory_budget_matches_the_model(
        ops in proptest::collection::vec(op(), 1..120)
    ) {
        let budget = MemoryBudget::new(2 * CHUNK);
        run_on(ops, Some(budget.clone()));
        prop_assert_eq!(budget.used(), 0, "{:?}", budget);
        prop_assert!(budget.overshoot() <= 64 << 10, "{:?} peak {}", budget, budget.peak());
    }
}

/// The model test only means something if flushes and compactions really happen: a long
/// deterministic run must reach levels below L0, and still agree with the model.
#[test]
fn long_run_reaches_deep_levels_and_matches_the_model() {
    let mut rng: u64 = 0x5eed;
    let mut next = move || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) as u8
    };
    let mut ops = Vec::new();
    for _ in 0..2500 {
        let (c, k, v) = ((next() % 3) as usize, next(), next());
        ops.push(match next() % 10 {
            0..=5 => Op::Put(c, k, v),
            6 => Op::Delete(c, k),
            7 => Op::Merge(c, k, v),
            8 => Op::Get(c, k),
            _ => Op::Background,
        });
    }
    ops.push(Op::Scan(0, 0, 23, true));
    let deep = run(ops);
    assert!(deep > 0, "no file ever left L0");
}
