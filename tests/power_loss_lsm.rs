//! Power loss and I/O errors under `lsm::Db`, on the simulated file system (`flowstate::fs::SimFs`).
//!
//! One deterministic scenario (puts, deletes, range deletes and merges in batches, `sync_wal`,
//! memtable switches that roll the WAL, flushes, compactions, manifest roll-overs and
//! `Db::checkpoint`) is run once to count its mutating file operations; then, for every index,
//! again with the power cut at that operation. After the power loss (everything unsynced lost,
//! or torn and undone at random) the store must open and hold exactly the model's state after
//! some prefix of the batches that includes every batch acknowledged as durable (synced WAL or a
//! completed flush). For some indices the power is cut a second time at every operation of the
//! recovery. A completed `Db::checkpoint` must open with exactly the state it was taken at.
//!
//! The error tests fail the Nth operation with EIO or ENOSPC instead: the store must return an
//! error naming a path (never panic), turn read-only after a failed WAL or manifest write,
//! answer reads from what it acknowledged, and reopen into a valid prefix.
//!
//! Flushes and compactions cut their output at 1 KiB between 7-byte key prefixes, so one flush
//! writes several L0 files; `flushes_write_several_files_per_prefix_run` checks that the
//! scenario does.
//!
//! `FLOWSTATE_POWER_LOSS_FULL=1` runs more seeds and a second power loss at every recovery
//! index of every point; failures print the seed and the operation index.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use flowstate::fs::{FaultKind, FaultOp, FsRef, PowerLoss, SimFs};
use flowstate::lsm::CompactionOptions;
use flowstate::lsm::SyncMode;
use flowstate::lsm::{CfOptions, Db, Options, ReadOptions};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn full() -> bool {
    std::env::var("FLOWSTATE_POWER_LOSS_FULL").is_ok_and(|v| v == "1")
}

fn options(fs: &FsRef, sync: SyncMode) -> Options {
    Options::default()
        .write_buffer_size(2 << 10)
        .memtable_buffer_entries(8)
        .wal_sync(sync)
        .max_manifest_size(2 << 10)
        .background_work(false)
        .fs(Arc::clone(fs))
        .default_cf_options(
            CfOptions::default().compaction(
                CompactionOptions::default()
                    .level0_file_trigger(2)
                    .max_bytes_for_level_base(8 << 10)
                    .level_size_multiplier(4)
                    // Flushes of the 2 KiB memtables are cut into several files too, only
                    // between keys of different 7-byte prefixes ("key-000", "key-001", ...).
                    .target_file_size(1 << 10)
                    .cut_prefix_len(7),
            ),
        )
}

/// One step of the scenario.
#[derive(Clone, Debug)]
enum Step {
    /// A batch of writes: (key, Some(value)) puts, (key, None) deletes.
    Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    /// Deletes `[start, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
    /// Appends an operand to a key's value (the default append operator).
    Merge(Vec<u8>, Vec<u8>),
    SyncWal,
    Flush,
    Compact,
    BackgroundWork,
    Checkpoint(u32),
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:04}").into_bytes()
}

/// A seeded scenario of about `len` steps.
fn scenario(seed: u64, len: usize) -> Vec<Step> {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut steps = Vec::new();
    let mut checkpoints = 0;
    for i in 0..len {
        let roll = next() % 100;
        let step = match roll {
            0..=59 => {
                let n = 1 + next() % 4;
                Step::Batch(
                    (0..n)
                        .map(|_| {
                            let k = key(next() % 40);
                            if next() % 5 == 0 {
                                (k, None)
                            } else {
                                let len = 20 + (next() % 80) as usize;
                                (k, Some(vec![b'a' + (i % 26) as u8; len]))
                            }
                        })
                        .collect(),
                )
            }
            60..=64 => {
                let a = next() % 40;
                Step::DeleteRange(key(a), key(a + 1 + next() % 5))
            }
            65..=71 => Step::Merge(key(next() % 40), vec![b'+'; 3]),
            72..=83 => Step::SyncWal,
            84..=89 => Step::Flush,
            90..=93 => Step::Compact,
            94..=97 => Step::BackgroundWork,
            _ => {
                checkpoints += 1;
                Step::Checkpoint(checkpoints)
            }
        };
        steps.push(step);
    }
    steps
}

fn apply(model: &mut Model, step: &Step) {
    match step {
        Step::Batch(ops) => {
            for (k, v) in ops {
                match v {
                    Some(v) => {
                        model.insert(k.clone(), v.clone());
                    }
                    None => {
                        model.remove(k);
                    }
                }
            }
        }
        Step::DeleteRange(start, end) => {
            let doomed: Vec<Vec<u8>> = model
                .range(start.clone()..end.clone())
                .map(|(k, _)| k.clone())
                .collect();
            for k in doomed {
                model.remove(&k);
            }
        }
        Step::Merge(k, operand) => {
            model
                .entry(k.clone())
                .or_default()
                .extend_from_slice(operand);
        }
        _ => {}
    }
}

fn is_write(step: &Step) -> bool {
    matches!(
        step,
        Step::Batch(_) | Step::DeleteRange(..) | Step::Merge(..)
    )
}

/// What a run of the scenario got through before the first error.
struct Run {
    /// Model states: `states[k]` after the first `k` writes.
    states: Vec<Model>,
    /// Writes acknowledged (returned Ok).
    acknowledged: usize,
    /// The model after the write that failed, if a write failed: it may have reached the log.
    pending: Option<Model>,
    /// Writes known durable (a later sync_wal, flush or checkpoint returned Ok; or every
    /// acknowledged write with `SyncMode::EveryBatch`).
    durable: usize,
    /// Completed checkpoints: directory and the number of writes they hold.
    checkpoints: Vec<(String, usize)>,
    /// The first error, if any.
    error: Option<flowstate::Error>,
}

const DIR: &str = "/state/db";

fn run(fs: &FsRef, steps: &[Step], sync: SyncMode) -> Run {
    let mut model = Model::new();
    let mut out = Run {
        states: vec![Model::new()],
        acknowledged: 0,
        pending: None,
        durable: 0,
        checkpoints: Vec::new(),
        error: None,
    };
    let db = match Db::open(Path::new(DIR), options(fs, sync)) {
        Ok(db) => db,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let cf = db.default_cf();
    for step in steps {
        let result = match step {
            Step::Batch(ops) => {
                let mut batch = flowstate::lsm::WriteBatch::new();
                for (k, v) in ops {
                    match v {
                        Some(v) => batch.put(&cf, k, v).expect("batch put"),
                        None => batch.delete(&cf, k).expect("batch delete"),
                    }
                }
                db.write(batch)
            }
            Step::DeleteRange(a, b) => db.delete_range(&cf, a, b),
            Step::Merge(k, operand) => db.merge(&cf, k, operand),
            Step::SyncWal => db.sync_wal(),
            Step::Flush => db.flush().map(|_| ()),
            Step::Compact => db.compact_range(&cf, None, None),
            Step::BackgroundWork => db.run_background_work(),
            Step::Checkpoint(n) => db
                .checkpoint(Path::new(&format!("/state/chk-{n}")))
                .map(|_| ()),
        };
        if let Err(e) = result {
            if is_write(step) {
                let mut next = model.clone();
                apply(&mut next, step);
                out.pending = Some(next);
            }
            out.error = Some(e);
            break;
        }
        if is_write(step) {
            apply(&mut model, step);
            out.states.push(model.clone());
            out.acknowledged += 1;
            if sync == SyncMode::EveryBatch {
                out.durable = out.acknowledged;
            }
        }
        match step {
            Step::SyncWal | Step::Flush => out.durable = out.acknowledged,
            Step::Checkpoint(n) => {
                out.durable = out.acknowledged;
                out.checkpoints
                    .push((format!("/state/chk-{n}"), out.acknowledged));
            }
            _ => {}
        }
    }
    drop(db);
    out
}

/// Everything the store at `dir` holds, read with an iterator and with point gets.
fn contents(db: &Db) -> flowstate::Result<Model> {
    let cf = db.default_cf();
    let mut out = Model::new();
    let mut iter = db.iter(&cf, ReadOptions::default())?;
    iter.seek_to_first()?;
    while iter.valid() {
        out.insert(iter.key().to_vec(), iter.value().to_vec());
        iter.next()?;
    }
    for i in 0..48 {
        let k = key(i);
        let got = db.get(&cf, &k)?;
        if got.as_ref() != out.get(&k) {
            panic!("get and iterator disagree on {k:?}");
        }
    }
    Ok(out)
}

/// Opens the store after a power loss and checks it against the run; `context` names the case.
fn check_recovered(fs: &FsRef, run: &Run, sync: SyncMode, context: &str) {
    let db = Db::open(Path::new(DIR), options(fs, sync))
        .unwrap_or_else(|e| panic!("{context}: the store does not open after power loss: {e}"));
    let got = contents(&db).unwrap_or_else(|e| panic!("{context}: reading failed: {e}"));
    let attempted = run.acknowledged + usize::from(run.pending.is_some());
    let matched = (run.durable..=run.acknowledged).any(|k| run.states[k] == got)
        || run.pending.as_ref() == Some(&got);
    if !matched {
        panic!(
            "{context}: recovered state is no prefix between {} (durable) and {attempted} \
             (attempted) writes: {} keys recovered, durable state has {}",
            run.durable,
            got.len(),
            run.states[run.durable].len()
        );
    }
    drop(db);
    for (dir, writes) in &run.checkpoints {
        let mut opts = options(fs, sync);
        opts.create_if_missing = false;
        let chk = Db::open(Path::new(dir), opts)
            .unwrap_or_else(|e| panic!("{context}: completed checkpoint {dir} does not open: {e}"));
        let got = contents(&chk).unwrap_or_else(|e| panic!("{context}: {dir}: {e}"));
        assert!(
            got == run.states[*writes],
            "{context}: checkpoint {dir} does not hold the state it was taken at"
        );
    }
}

fn new_fs(seed: u64) -> (Arc<SimFs>, FsRef) {
    let sim = SimFs::new(seed);
    let fs: FsRef = sim.clone();
    (sim, fs)
}

/// Power off at every mutating operation of the scenario; returns the points checked.
fn power_off_everywhere(seed: u64, steps: &[Step], sync: SyncMode, double_every: u64) -> u64 {
    let (sim, fs) = new_fs(seed);
    let reference = run(&fs, steps, sync);
    assert!(
        reference.error.is_none(),
        "seed {seed}: the scenario fails without faults: {:?}",
        reference.error
    );
    let total = sim.mutations();
    assert!(
        total > 50,
        "seed {seed}: scenario too small ({total} operations)"
    );
    let mut points = 0;
    // `FLOWSTATE_POWER_LOSS_INDEX=n` replays one index and prints the operations.
    let only: Option<u64> = std::env::var("FLOWSTATE_POWER_LOSS_INDEX")
        .ok()
        .and_then(|v| v.parse().ok());
    for index in 0..total {
        if only.is_some_and(|only| only != index) {
            continue;
        }
        let (sim, fs) = new_fs(seed ^ index);
        if only.is_some() {
            sim.enable_trace();
        }
        sim.power_off_at(Some(index));
        // The last operations belong to closing the store, whose errors nobody sees: a run may
        // then end without an error.
        let run = run(&fs, steps, sync);
        if only.is_some() {
            for line in sim.trace() {
                eprintln!("{line}");
            }
        }
        let mode = if index % 2 == 0 {
            PowerLoss::DropUnsynced
        } else {
            PowerLoss::Random
        };
        sim.power_loss(mode);
        points += 1;
        let context = format!("seed {seed} index {index} of {total} ({mode:?}, {sync:?})");
        if double_every > 0 && index % double_every == 0 {
            // Cut the power again at every operation of the recovery.
            let before = sim.mutations();
            let probe = {
                let db = Db::open(Path::new(DIR), options(&fs, sync));
                drop(db);
                sim.mutations() - before
            };
            // The probe itself was a recovery; start again from the same crash image each time.
            for second in 0..probe {
                let (sim2, fs2) = new_fs(seed ^ index);
                sim2.power_off_at(Some(index));
                let run2 = self::run(&fs2, steps, sync);
                sim2.power_loss(mode);
                sim2.power_off_at(Some(sim2.mutations() + second));
                let _ = Db::open(Path::new(DIR), options(&fs2, sync));
                sim2.power_loss(PowerLoss::DropUnsynced);
                check_recovered(
                    &fs2,
                    &run2,
                    sync,
                    &format!("{context}, recovery index {second}"),
                );
                points += 1;
            }
        }
        check_recovered(&fs, &run, sync, &context);
    }
    points
}

#[test]
fn power_loss_at_every_operation_keeps_synced_writes_and_checkpoints() {
    let seeds: Vec<u64> = if full() {
        (1..=24).collect()
    } else {
        vec![1, 2]
    };
    let mut points = 0;
    for seed in seeds {
        let steps = scenario(seed, 150);
        let double = if full() { 1 } else { 29 };
        points += power_off_everywhere(seed, &steps, SyncMode::Manual, double);
    }
    eprintln!("power_loss_lsm (Manual): {points} power-off points");
    assert!(points >= 1400, "only {points} power-off points checked");
}

#[test]
fn flushes_write_several_files_per_prefix_run() {
    let (_, fs) = new_fs(1);
    // One memtable holds every write, so one flush writes every file.
    let one_flush = options(&fs, SyncMode::Manual).write_buffer_size(64 << 10);
    let db = Db::open(Path::new(DIR), one_flush.clone()).unwrap();
    let cf = db.default_cf();
    let mut model = Model::new();
    for i in 0..120u64 {
        let k = key(i * 7 % 1000);
        let v = vec![b'v'; 24];
        db.put(&cf, &k, &v).unwrap();
        model.insert(k, v);
    }
    db.flush().unwrap();
    let live = db.live_files();
    let l0: Vec<_> = live.files.iter().filter(|f| f.level == 0).collect();
    assert!(l0.len() > 1, "one flush wrote {} L0 file(s)", l0.len());
    let runs = flowstate::internals::l0_runs(&db);
    assert_eq!(
        runs[0].1, 1,
        "the files of one flush are one L0 run: {runs:?}"
    );
    // No 7-byte prefix spans two files.
    let mut ranges: Vec<(Vec<u8>, Vec<u8>)> = l0
        .iter()
        .map(|f| {
            let (smallest, largest, _) =
                flowstate::internals::sst_contents_on(fs.as_ref(), f).expect("readable SST");
            (smallest, largest)
        })
        .collect();
    ranges.sort();
    for pair in ranges.windows(2) {
        assert_ne!(pair[0].1[..7], pair[1].0[..7], "a prefix spans two files");
    }
    drop(live);
    drop(db);
    // Recovery opens the files of the flush and reads what was written.
    let db = Db::open(Path::new(DIR), one_flush).unwrap();
    assert_eq!(contents(&db).unwrap(), model);
}

#[test]
fn power_loss_with_every_batch_synced_loses_no_acknowledged_write() {
    let seeds: Vec<u64> = if full() {
        (100..=116).collect()
    } else {
        vec![100, 101]
    };
    let mut points = 0;
    for seed in seeds {
        let steps = scenario(seed, 80);
        points += power_off_everywhere(seed, &steps, SyncMode::EveryBatch, 0);
    }
    eprintln!("power_loss_lsm (EveryBatch): {points} power-off points");
    assert!(points >= 600, "only {points} power-off points checked");
}

#[test]
fn io_errors_at_every_operation_are_reported_and_leave_a_valid_store() {
    let seed = 7;
    let steps = scenario(seed, 70);
    let sync = SyncMode::Manual;
    // Per kind, the nth operation fails for nth = 0, stride, 2 stride, ... until the scenario
    // has fewer operations of that kind (or up to a cap in the default run).
    let stride = if full() { 1 } else { 3 };
    let cap = if full() { u64::MAX } else { 240 };
    let mut checked = 0;
    for (op, kind) in [
        (FaultOp::Write, FaultKind::Enospc),
        (FaultOp::Write, FaultKind::Eio),
        (FaultOp::Sync, FaultKind::Eio),
        (FaultOp::SyncDir, FaultKind::Eio),
        (FaultOp::Create, FaultKind::Enospc),
        (FaultOp::Rename, FaultKind::Eio),
        (FaultOp::Read, FaultKind::Eio),
    ] {
        for nth in (0..cap).step_by(stride) {
            let (sim, fs) = new_fs(seed);
            sim.inject(op, nth, kind, false);
            let context = format!("seed {seed} {op:?} #{nth} {kind:?}");
            let run = run(&fs, &steps, sync);
            let Some(error) = &run.error else {
                // Fewer operations of this kind than `nth`: the fault never fired.
                break;
            };
            checked += 1;
            match error.root_cause() {
                flowstate::Error::Io { path, .. } => {
                    assert!(!path.as_os_str().is_empty(), "{context}: {error}")
                }
                other => panic!("{context}: not an I/O error naming a path: {other}"),
            }
            // The process goes on (no power loss): the store reopens into a valid prefix...
            check_recovered(&fs, &run, sync, &format!("{context} (reopened)"));
            // ...and after a power loss too.
            sim.power_loss(PowerLoss::DropUnsynced);
            check_recovered(&fs, &run, sync, &format!("{context} (power loss)"));
        }
    }
    assert!(checked > 100, "only {checked} faults fired");
}

#[test]
fn a_failed_wal_fsync_turns_the_store_read_only_but_reads_go_on() {
    let (sim, fs) = new_fs(3);
    let db = Db::open(Path::new(DIR), options(&fs, SyncMode::Manual)).unwrap();
    let cf = db.default_cf();
    db.put(&cf, b"a", b"1").unwrap();
    db.sync_wal().unwrap();
    db.put(&cf, b"b", b"2").unwrap();
    sim.inject(FaultOp::Sync, 0, FaultKind::Eio, false);
    let err = db.sync_wal().unwrap_err();
    assert!(
        matches!(err.root_cause(), flowstate::Error::Io { .. }),
        "{err}"
    );
    // The fault fired once; the file system would accept the next fsync, the store must not.
    let again = db.put(&cf, b"c", b"3").unwrap_err();
    assert!(again.to_string().contains("read-only"), "{again}");
    assert!(db.sync_wal().is_err());
    assert!(db.flush().is_err());
    assert_eq!(db.get(&cf, b"a").unwrap().as_deref(), Some(&b"1"[..]));
    drop(db);
    sim.power_loss(PowerLoss::Random);
    let db = Db::open(Path::new(DIR), options(&fs, SyncMode::Manual)).unwrap();
    assert_eq!(db.get(&cf, b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(db.get(&cf, b"c").unwrap(), None);
}

#[test]
fn a_synced_write_after_a_wal_roll_survives_power_loss() {
    // The WAL is rolled at a memtable switch; a sync_wal afterwards must make the new log's
    // name durable too, not only its bytes.
    let (sim, fs) = new_fs(4);
    let db = Db::open(Path::new(DIR), options(&fs, SyncMode::Manual)).unwrap();
    let cf = db.default_cf();
    for i in 0..200u64 {
        db.put(&cf, &key(i), &[b'v'; 64]).unwrap();
    }
    let logs = sim
        .files_under(Path::new(DIR))
        .iter()
        .filter(|(name, _)| name.ends_with(".wal"))
        .count();
    assert!(logs >= 2, "the WAL was rolled at least once ({logs} logs)");
    db.put(&cf, b"last", b"synced").unwrap();
    db.sync_wal().unwrap();
    drop(db);
    sim.power_loss(PowerLoss::DropUnsynced);
    let db = Db::open(Path::new(DIR), options(&fs, SyncMode::Manual)).unwrap();
    assert_eq!(
        db.get(&cf, b"last").unwrap().as_deref(),
        Some(&b"synced"[..])
    );
    for i in 0..200u64 {
        assert!(db.get(&cf, &key(i)).unwrap().is_some(), "key {i} lost");
    }
}

#[test]
fn a_new_store_directory_is_durable_in_its_parent() {
    let (sim, fs) = new_fs(5);
    let db = Db::open(Path::new("/a/b/db"), options(&fs, SyncMode::EveryBatch)).unwrap();
    let cf = db.default_cf();
    db.put(&cf, b"k", b"v").unwrap();
    drop(db);
    sim.power_loss(PowerLoss::DropUnsynced);
    let mut opts = options(&fs, SyncMode::EveryBatch);
    opts.create_if_missing = false;
    let db = Db::open(Path::new("/a/b/db"), opts).unwrap();
    assert_eq!(db.get(&cf, b"k").unwrap().as_deref(), Some(&b"v"[..]));
}
