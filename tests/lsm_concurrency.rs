//! Readers run while a writer, flushes and compactions go on: every read sees whole batches
//! (atomicity), snapshots stay fixed, and nothing waits forever. 400 write rounds by default;
//! `FLOWSTATE_LSM_ROUNDS=100000 cargo test --release --test lsm_concurrency` for a soak.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use flowstate::lsm::CompactionOptions;
use flowstate::lsm::WriteBatch;
use flowstate::lsm::{CfOptions, Db, Options, ReadOptions};

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn readers_see_whole_batches_while_flushes_and_compactions_run() {
    assert_send_sync::<Db>();
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .write_buffer_size(16 << 10)
        .memtable_buffer_entries(8)
        .default_cf_options(
            CfOptions::default().compaction(
                CompactionOptions::default()
                    .level0_file_trigger(2)
                    .max_bytes_for_level_base(64 << 10)
                    .level_size_multiplier(4)
                    .target_file_size(16 << 10),
            ),
        );
    let db = Arc::new(Db::open(dir.path(), options).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    const GROUPS: u32 = 50;
    let rounds: u32 = std::env::var("FLOWSTATE_LSM_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(400);
    println!("{rounds} rounds (FLOWSTATE_LSM_ROUNDS)");

    let writer = {
        let db = db.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let cf = db.default_cf();
            for round in 1..=rounds {
                // Every batch sets all keys of one group to the same round number.
                let group = round % GROUPS;
                let mut batch = WriteBatch::new();
                for member in 0..4u32 {
                    batch
                        .put(
                            &cf,
                            format!("g{group:03}-{member}").as_bytes(),
                            &round.to_be_bytes(),
                        )
                        .unwrap();
                }
                db.write(batch).unwrap();
            }
            done.store(true, Ordering::Release);
        })
    };

    let readers: Vec<_> = (0..2)
        .map(|_| {
            let db = db.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let cf = db.default_cf();
                let mut checks = 0u64;
                while !done.load(Ordering::Acquire) || checks < 10 {
                    let snap = db.snapshot();
                    let mut it = db.iter(&cf, ReadOptions::default().at(&snap)).unwrap();
                    it.seek_to_first().unwrap();
                    let mut groups: std::collections::BTreeMap<String, Vec<u32>> =
                        Default::default();
                    while it.valid() {
                        let key = String::from_utf8(it.key().to_vec()).unwrap();
                        let value = u32::from_be_bytes(it.value().try_into().unwrap());
                        groups.entry(key[..4].to_string()).or_default().push(value);
                        it.next().unwrap();
                    }
                    for (group, values) in &groups {
                        assert_eq!(values.len(), 4, "group {group} partially visible");
                        assert!(
                            values.iter().all(|v| *v == values[0]),
                            "group {group} torn: {values:?}"
                        );
                        // A point read at the same snapshot agrees with the scan.
                        let got = db
                            .get_opt(
                                &cf,
                                format!("{group}-2").as_bytes(),
                                &ReadOptions::default().at(&snap),
                            )
                            .unwrap();
                        assert_eq!(got, Some(values[0].to_be_bytes().to_vec()));
                    }
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    writer.join().unwrap();
    for r in readers {
        assert!(r.join().unwrap() >= 10);
    }
    let stats = db.stats();
    assert!(
        stats.flush_bytes_written > 0,
        "no flush happened: {stats:?}"
    );
}
