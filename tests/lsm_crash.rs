//! Crash recovery of `lsm::Db`: a child process writing with `sync` on every batch, or with no
//! sync at all (a process crash must not lose an acknowledged batch either way), is SIGKILLed
//! at seeded random moments (during writes, flushes and compactions, which a small write buffer
//! makes frequent; flushes write several L0 files, cut at 2 KiB between 3-byte key prefixes).
//! After every kill the store must reopen without corruption and hold exactly the writes of a
//! prefix of the batches: every batch acknowledged before the kill, and nothing after a gap.
//!
//! A few kills run in `cargo test`; `FLOWSTATE_SOAK=1` runs many. `FLOWSTATE_SEED` replays a run.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flowstate::lsm::CompactionOptions;
use flowstate::lsm::SyncMode;
use flowstate::lsm::{CfOptions, Db, Options};

const KEYS: u64 = 300;
const CHILD_ENV: &str = "FLOWSTATE_LSM_CRASH_CHILD";
/// Set (to anything) in a child that writes with `SyncMode::Manual` and never syncs.
const NO_SYNC_ENV: &str = "FLOWSTATE_LSM_CRASH_NO_SYNC";

fn options(sync: SyncMode) -> Options {
    Options::default()
        .write_buffer_size(8 << 10)
        .memtable_buffer_entries(8)
        .wal_sync(sync)
        .default_cf_options(
            CfOptions::default().compaction(
                CompactionOptions::default()
                    .level0_file_trigger(2)
                    .max_bytes_for_level_base(32 << 10)
                    .level_size_multiplier(4)
                    // Flushes of the 8 KiB memtables are cut into several files as well, only
                    // between keys of different 3-byte prefixes ("k00", "k01", ..., "las").
                    .target_file_size(2 << 10)
                    .cut_prefix_len(3),
            ),
        )
}

fn value(i: u64) -> Vec<u8> {
    let mut v = i.to_be_bytes().to_vec();
    v.resize(48, (i % 251) as u8);
    v
}

/// The child: continue the sequence of batches after the last one present, acknowledging each.
fn child(dir: &str, sync: SyncMode) {
    let db = Db::open(std::path::Path::new(dir), options(sync)).expect("child open");
    let cf = db.default_cf();
    let next = db.get(&cf, b"last").expect("read last").map_or(0, |v| {
        u64::from_be_bytes(v[..8].try_into().expect("8 bytes")) + 1
    });
    for i in next.. {
        let mut batch = flowstate::lsm::WriteBatch::new();
        batch
            .put(&cf, format!("k{:04}", i % KEYS).as_bytes(), &value(i))
            .expect("put");
        batch.put(&cf, b"last", &value(i)).expect("put");
        if i % 7 == 0 {
            batch
                .delete(&cf, format!("k{:04}", (i + 3) % KEYS).as_bytes())
                .expect("delete");
        }
        db.write(batch).expect("write");
        println!("{i}");
    }
}

/// What the store must hold after batches 0..=last.
fn expected(last: u64) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = std::collections::BTreeMap::new();
    for i in 0..=last {
        m.insert(format!("k{:04}", i % KEYS).into_bytes(), value(i));
        m.insert(b"last".to_vec(), value(i));
        if i % 7 == 0 {
            m.remove(format!("k{:04}", (i + 3) % KEYS).as_bytes());
        }
    }
    m
}

#[test]
fn killed_writer_recovers_an_acknowledged_prefix() {
    kill_and_recover(
        "killed_writer_recovers_an_acknowledged_prefix",
        SyncMode::EveryBatch,
    );
}

/// Without any sync the WAL's appends are in the OS's page cache only (written through a memory
/// map on Linux), which a process crash keeps: still every acknowledged batch comes back.
#[test]
fn killed_writer_without_sync_recovers_every_acknowledged_batch() {
    kill_and_recover(
        "killed_writer_without_sync_recovers_every_acknowledged_batch",
        SyncMode::Manual,
    );
}

/// Runs the child `test` (this binary, filtered to it) in rounds, killing it at a seeded moment
/// each round and checking what a reopened store holds.
fn kill_and_recover(test: &str, sync: SyncMode) {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        // The child runs this test alone (`--exact`); its mode comes from the environment.
        let child_sync = if std::env::var_os(NO_SYNC_ENV).is_some() {
            SyncMode::Manual
        } else {
            SyncMode::EveryBatch
        };
        child(&dir, child_sync);
        return;
    }
    let soak = std::env::var("FLOWSTATE_SOAK").is_ok();
    let rounds = if soak { 60 } else { 4 };
    let seed: u64 = std::env::var("FLOWSTATE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Instant::now().elapsed().as_nanos() as u64 ^ std::process::id() as u64);
    println!("FLOWSTATE_SEED={seed}");
    let mut rng = seed;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked_max: Option<u64> = None;
    for round in 0..rounds {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let run_for = Duration::from_millis(100 + (rng >> 33) % 400);
        let mut command = Command::new(&exe);
        command
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path());
        if sync == SyncMode::Manual {
            command.env(NO_SYNC_ENV, "1");
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(i) = line.trim().parse::<u64>() {
                    last = Some(i);
                }
            }
            last
        });
        std::thread::sleep(run_for);
        child.kill().unwrap();
        child.wait().unwrap();
        if let Some(i) = reader.join().unwrap() {
            acked_max = Some(acked_max.map_or(i, |m: u64| m.max(i)));
        }
        let db = Db::open(dir.path(), options(sync))
            .unwrap_or_else(|e| panic!("round {round} seed {seed}: {e}"));
        let cf = db.default_cf();
        let last = db
            .get(&cf, b"last")
            .unwrap()
            .map(|v| u64::from_be_bytes(v[..8].try_into().unwrap()));
        if let Some(acked) = acked_max {
            let last = last.unwrap_or_else(|| {
                panic!("round {round} seed {seed}: acknowledged {acked} but store is empty")
            });
            assert!(
                last >= acked,
                "round {round} seed {seed}: acknowledged {acked}, store ends at {last}"
            );
            let mut it = db.iter(&cf, Default::default()).unwrap();
            it.seek_to_first().unwrap();
            let actual: std::collections::BTreeMap<_, _> =
                it.entries().map(Result::unwrap).collect();
            assert!(
                actual == expected(last),
                "round {round} seed {seed}: contents differ from batches 0..={last}"
            );
            acked_max = Some(last);
        }
    }
}
