//! One `MemoryBudget` shared by several stores and backends: what is charged stays within the
//! limit while writers, readers, flushes and compactions run; a writer that finds the budget
//! full waits until another store's flush hands memory back, then goes on; everything charged
//! is released when the stores close.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use flowstate::budget::{CHUNK, Component, MemoryBudget};
use flowstate::lsm::{Db, Options};

fn value(i: u64) -> Vec<u8> {
    format!("{i:08}-{}", "v".repeat(120)).into_bytes()
}

fn store_options(budget: &Arc<MemoryBudget>) -> Options {
    Options::default()
        .memory_budget(Some(budget.clone()))
        .write_buffer_size(64 << 20)
        .block_cache_size(8 << 20)
        .disable_wal(true)
}

#[test]
fn a_writer_waits_for_the_larger_store_to_flush_and_resumes() {
    let budget = MemoryBudget::with_mib(4);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Db::open(dir_a.path(), store_options(&budget)).unwrap();
    let b = Db::open(dir_b.path(), store_options(&budget)).unwrap();
    let (cf_a, cf_b) = (a.default_cf(), b.default_cf());
    // B fills most of the budget and then sits idle with a large memtable.
    let mut i = 0u64;
    while budget.charged(Component::Memtable) < 3 << 20 {
        b.put(&cf_b, &i.to_be_bytes(), &value(i)).unwrap();
        i += 1;
    }
    let b_keys = i;
    assert_eq!(
        b.stats().flush_bytes_written,
        0,
        "B flushed before it was asked"
    );
    // A writes more than the rest of the budget: it must wait for B's flush.
    for j in 0..20_000u64 {
        a.put(&cf_a, &j.to_be_bytes(), &value(j)).unwrap();
        assert!(budget.used() <= budget.limit() + budget.charged(Component::TableReader));
    }
    assert!(budget.waits() >= 1, "A never waited: {budget:?}");
    assert!(
        b.stats().flush_bytes_written >= 1,
        "B never flushed for A: {budget:?}"
    );
    for j in (0..20_000u64).step_by(97) {
        assert_eq!(a.get(&cf_a, &j.to_be_bytes()).unwrap(), Some(value(j)));
    }
    for k in (0..b_keys).step_by(31) {
        assert_eq!(b.get(&cf_b, &k.to_be_bytes()).unwrap(), Some(value(k)));
    }
    drop((a, b));
    assert_eq!(
        budget.used(),
        0,
        "charges left after both stores closed: {budget:?}"
    );
}

#[test]
fn concurrent_writers_and_readers_on_three_stores_stay_within_the_budget() {
    let budget = MemoryBudget::with_mib(6);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let stores: Vec<Arc<Db>> = dirs
        .iter()
        .map(|d| {
            let options = store_options(&budget)
                .write_buffer_size(2 << 20)
                .block_cache_size(4 << 20);
            Arc::new(Db::open(d.path(), options).unwrap())
        })
        .collect();
    const KEYS: u64 = 30_000;
    let done = AtomicBool::new(false);
    let worst_over = std::thread::scope(|s| {
        for db in &stores {
            let writer = db.clone();
            s.spawn(move || {
                let db = writer;
                let cf = db.default_cf();
                for round in 0..2u64 {
                    for i in 0..KEYS {
                        db.put(&cf, &i.to_be_bytes(), &value(i + round)).unwrap();
                    }
                }
            });
            let db = db.clone();
            let done = &done;
            s.spawn(move || {
                let cf = db.default_cf();
                let mut i = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let _ = db.get(&cf, &(i % KEYS).to_be_bytes()).unwrap();
                    i = i
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                }
            });
        }
        let sampler = s.spawn(|| {
            // How far the charge ever went past the limit beyond the open tables' indexes and
            // filters, the one charge that never waits.
            let mut worst = 0usize;
            while !done.load(Ordering::Relaxed) {
                let tables = budget.charged(Component::TableReader);
                let over = budget.used().saturating_sub(budget.limit() + tables);
                worst = worst.max(over);
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            worst
        });
        // Writers finish first; then stop readers and the sampler.
        while stores.iter().any(|db| {
            db.get(&db.default_cf(), &(KEYS - 1).to_be_bytes()).unwrap() != Some(value(KEYS))
        }) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        done.store(true, Ordering::Relaxed);
        sampler.join().unwrap()
    });
    eprintln!(
        "budget {budget:?}: peak {} (overshoot {}), worst over limit beyond table readers {worst_over}, waits {}",
        budget.peak(),
        budget.overshoot(),
        budget.waits()
    );
    // Samples race with releases by a few chunks at most.
    assert!(
        worst_over <= 4 * CHUNK,
        "{worst_over} bytes over: {budget:?}"
    );
    for db in &stores {
        let cf = db.default_cf();
        for i in (0..KEYS).step_by(101) {
            assert_eq!(db.get(&cf, &i.to_be_bytes()).unwrap(), Some(value(i + 1)));
        }
    }
    drop(stores);
    assert_eq!(
        budget.used(),
        0,
        "charges left after the stores closed: {budget:?}"
    );
}
