//! Power loss and I/O errors under the fs and lsm backends' checkpoints, on the simulated file
//! system.
//!
//! The backend's checkpoint storage is a `LocalDirStorage` on `fs::SimFs`; the lsm backend's
//! working store and local-recovery copies are on it too. A deterministic job
//! applies step `n` and checkpoints it as checkpoint `n` (retaining two), for a few steps; the
//! power is cut at every mutating file operation of it. After the power loss, a new backend on
//! the same storage must open (start-up scan), find no temp file, and restore the latest
//! completed checkpoint: at least the last one acknowledged, at most the one being written, with
//! exactly the model state of its id; every retained checkpoint restores to its own state. For
//! some points the power is cut again at every operation of that recovery (start-up scan and
//! restore, local-recovery copies included) before it is checked.
//! I/O errors (EIO, ENOSPC) at every operation must surface as `Error::Io` naming a path and
//! leave storage in the same valid shape.
//!
//! `FLOWSTATE_POWER_LOSS_FULL=1` runs more steps.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use flowstate::backend::FsBackendOptions;
use flowstate::backend::lsm::LsmBackendOptions;
use flowstate::checkpoint::storage::{CheckpointStorage, LocalDirStorage};
use flowstate::fs::{FaultKind, FaultOp, FsRef, PowerLoss, SimFs};
use flowstate::internals::read_metadata;
use flowstate::internals::snapshot_handle;
use flowstate::keys::{composite_key, key_group_for_key};
use flowstate::{
    BackendConfig, FsBackend, KeyGroupRange, LsmBackend, StateBackend, StateDescriptor, StateId,
    StateKind,
};
use support::{contents, mix};

const MAX_PARALLELISM: u16 = 16;
const ROOT: &str = "/job/checkpoints";

fn full() -> bool {
    std::env::var("FLOWSTATE_POWER_LOSS_FULL").is_ok_and(|v| v == "1")
}

fn key(index: u64) -> Vec<u8> {
    let user = format!("key-{index}");
    let kg = key_group_for_key(user.as_bytes(), MAX_PARALLELISM);
    composite_key(kg, user.as_bytes(), b"", b"")
}

/// The writes of step `n`: puts and deletes of values (`Some`/`None`), independent of the code
/// under test.
fn step(n: u64) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    (0..12)
        .map(|j| {
            let h = mix(n * 1_000 + j);
            let value = (!h.is_multiple_of(5)).then(|| format!("v{n}.{j}").into_bytes());
            (key(h % 60), value)
        })
        .collect()
}

type Contents = BTreeMap<(String, Vec<u8>), Vec<u8>>;

fn model(n: u64) -> Contents {
    let mut m = Contents::new();
    for i in 1..=n {
        for (k, v) in step(i) {
            let slot = ("values".to_string(), k);
            match v {
                Some(v) => {
                    m.insert(slot, v);
                }
                None => {
                    m.remove(&slot);
                }
            }
        }
    }
    m
}

/// What the test needs of a backend beyond [`StateBackend`].
trait Restorable: StateBackend {
    fn checkpoint_storage(&self) -> Arc<dyn CheckpointStorage>;
    fn completed(&self) -> Vec<u64>;
    fn latest(&mut self) -> flowstate::Result<Option<u64>>;
}

/// Both backends answer these with methods of the same names.
macro_rules! restorable {
    ($($backend:ty),*) => {$(
        impl Restorable for $backend {
            fn checkpoint_storage(&self) -> Arc<dyn CheckpointStorage> {
                Arc::clone(self.storage())
            }
            fn completed(&self) -> Vec<u64> {
                self.completed_checkpoints()
            }
            fn latest(&mut self) -> flowstate::Result<Option<u64>> {
                self.restore_latest()
            }
        }
    )*};
}

restorable!(FsBackend, LsmBackend);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Fs,
    Lsm,
}

fn open(kind: Kind, fs: &FsRef) -> flowstate::Result<(Box<dyn Restorable>, StateId)> {
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::open_on(Arc::clone(fs), ROOT)?);
    let config = BackendConfig::new(MAX_PARALLELISM, KeyGroupRange::all(MAX_PARALLELISM))?;
    let mut backend: Box<dyn Restorable> = match kind {
        Kind::Fs => Box::new(FsBackend::open(
            config,
            storage,
            FsBackendOptions::default().retained_checkpoints(2),
        )?),
        Kind::Lsm => {
            let options = LsmBackendOptions::default()
                .fs(Arc::clone(fs))
                .retained_checkpoints(2)
                .background_work(false)
                .write_buffer_size(4 << 10)
                .write_cache_size(0)
                .local_recovery_dir(Some("/job/local-recovery".into()));
            Box::new(LsmBackend::open(
                config,
                storage,
                options.working_dir(Path::new("/job/work")),
            )?)
        }
    };
    let values = backend.register(&StateDescriptor::new("values", StateKind::Value))?;
    Ok((backend, values))
}

/// Runs steps `1..=steps`, checkpointing each; returns the last acknowledged checkpoint and
/// the first error.
fn job(kind: Kind, fs: &FsRef, steps: u64) -> (u64, Option<flowstate::Error>) {
    let (mut backend, values) = match open(kind, fs) {
        Ok(ok) => ok,
        Err(e) => return (0, Some(e)),
    };
    let mut acknowledged = 0;
    for n in 1..=steps {
        for (k, v) in step(n) {
            match v {
                Some(v) => backend.put(values, &k, &v).expect("in-memory put"),
                None => backend.delete(values, &k).expect("in-memory delete"),
            }
        }
        match backend.snapshot(n).and_then(|task| task.run()) {
            Ok(_) => acknowledged = n,
            Err(e) => return (acknowledged, Some(e)),
        }
    }
    (acknowledged, None)
}

/// Checks storage after a crash or failure: `acknowledged` must survive, nothing beyond
/// `attempted` may appear, and each retained checkpoint restores to its model state.
fn check(kind: Kind, fs: &FsRef, acknowledged: u64, attempted: u64, context: &str) {
    let (mut backend, _) =
        open(kind, fs).unwrap_or_else(|e| panic!("{context}: the backend does not open: {e}"));
    let storage = backend.checkpoint_storage();
    let leftovers: Vec<String> = storage
        .list("")
        .unwrap()
        .into_iter()
        .filter(|p| p.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "{context}: temp files left: {leftovers:?}"
    );
    let completed = backend.completed();
    let latest = backend
        .latest()
        .unwrap_or_else(|e| panic!("{context}: restore failed: {e}"))
        .unwrap_or(0);
    assert!(
        latest >= acknowledged && latest <= attempted,
        "{context}: restored checkpoint {latest}, acknowledged {acknowledged}, attempted {attempted}"
    );
    assert_eq!(
        contents(backend.as_mut()),
        model(latest),
        "{context}: checkpoint {latest}"
    );
    for id in completed.iter().rev().skip(1) {
        let metadata = read_metadata(storage.as_ref(), *id)
            .unwrap_or_else(|e| panic!("{context}: retained checkpoint {id}: {e}"));
        backend
            .restore(
                &[snapshot_handle(storage.as_ref(), &metadata)],
                KeyGroupRange::all(MAX_PARALLELISM),
            )
            .unwrap_or_else(|e| panic!("{context}: retained checkpoint {id}: {e}"));
        assert_eq!(
            contents(backend.as_mut()),
            model(*id),
            "{context}: checkpoint {id}"
        );
    }
}

fn new_fs(seed: u64) -> (Arc<SimFs>, FsRef) {
    let sim = SimFs::new(seed);
    let fs: FsRef = sim.clone();
    (sim, fs)
}

/// Opens a backend and restores its latest checkpoint, as a restarted job does (errors ignored:
/// the power may go off in the middle).
fn recover(kind: Kind, fs: &FsRef) {
    if let Ok((mut backend, _)) = open(kind, fs) {
        let _ = backend.latest();
    }
}

fn power_loss_everywhere(kind: Kind, steps: u64, double_every: u64) {
    let (sim, fs) = new_fs(0);
    let (done, error) = job(kind, &fs, steps);
    assert!(error.is_none() && done == steps, "{error:?}");
    let total = sim.mutations();
    assert!(total > 100, "{total} operations");
    let mut points = 0;
    for index in 0..total {
        let (sim, fs) = new_fs(index);
        sim.power_off_at(Some(index));
        // The last operations may belong to dropping the backend, whose errors nobody sees.
        let (acknowledged, _) = job(kind, &fs, steps);
        for mode in [PowerLoss::DropUnsynced, PowerLoss::Random] {
            // Both outcomes from the same moment: rerun to the same point for the second.
            let (sim, fs) = if mode == PowerLoss::DropUnsynced {
                (sim.clone(), fs.clone())
            } else {
                let (sim, fs) = new_fs(index);
                sim.power_off_at(Some(index));
                let _ = job(kind, &fs, steps);
                (sim, fs)
            };
            sim.power_loss(mode);
            let context = format!("{kind:?} index {index} of {total} ({mode:?})");
            check(
                kind,
                &fs,
                acknowledged,
                (acknowledged + 1).min(steps),
                &context,
            );
            points += 1;
        }
        if index % double_every == 0 {
            // A second power loss at every operation of the recovery (start-up scan, restore).
            let image = || {
                let (sim, fs) = new_fs(index);
                sim.power_off_at(Some(index));
                let _ = job(kind, &fs, steps);
                sim.power_loss(PowerLoss::DropUnsynced);
                (sim, fs)
            };
            let (sim, fs) = image();
            let before = sim.mutations();
            recover(kind, &fs);
            let probe = sim.mutations() - before;
            for second in 0..probe {
                let (sim, fs) = image();
                sim.power_off_at(Some(sim.mutations() + second));
                recover(kind, &fs);
                sim.power_loss(PowerLoss::Random);
                let context = format!("{kind:?} index {index} of {total}, recovery index {second}");
                check(
                    kind,
                    &fs,
                    acknowledged,
                    (acknowledged + 1).min(steps),
                    &context,
                );
                points += 1;
            }
        }
    }
    eprintln!("power_loss_checkpoint ({kind:?}): {points} power-off points");
}

#[test]
fn power_loss_at_every_operation_of_fs_checkpoints_and_retention() {
    power_loss_everywhere(
        Kind::Fs,
        if full() { 12 } else { 6 },
        if full() { 1 } else { 17 },
    );
}

#[test]
fn power_loss_at_every_operation_of_lsm_checkpoints_restores_and_local_recovery() {
    power_loss_everywhere(
        Kind::Lsm,
        if full() { 16 } else { 8 },
        if full() { 1 } else { 5 },
    );
}

fn io_errors_everywhere(kind: Kind, steps: u64) {
    let mut fired = 0;
    for (op, fault) in [
        (FaultOp::Write, FaultKind::Enospc),
        (FaultOp::Sync, FaultKind::Eio),
        (FaultOp::SyncDir, FaultKind::Eio),
        (FaultOp::Create, FaultKind::Enospc),
        (FaultOp::Rename, FaultKind::Eio),
        (FaultOp::Remove, FaultKind::Eio),
        (FaultOp::Read, FaultKind::Eio),
        (FaultOp::List, FaultKind::Eio),
    ] {
        for nth in 0.. {
            let (sim, fs) = new_fs(nth);
            sim.inject(op, nth, fault, false);
            let (acknowledged, error) = job(kind, &fs, steps);
            let Some(error) = error else { break };
            fired += 1;
            let context = format!("{kind:?}: {op:?} #{nth} {fault:?}");
            match error.root_cause() {
                flowstate::Error::Io { path, .. } => {
                    assert!(
                        path.starts_with("/job") || Path::new(ROOT).starts_with(path),
                        "{context}: error names {path:?}"
                    )
                }
                other => panic!("{context}: not an I/O error naming a path: {other}"),
            }
            sim.clear_faults();
            check(
                kind,
                &fs,
                acknowledged,
                acknowledged + 1,
                &format!("{context} (reopened)"),
            );
            sim.power_loss(PowerLoss::DropUnsynced);
            check(
                kind,
                &fs,
                acknowledged,
                acknowledged + 1,
                &format!("{context} (power loss)"),
            );
        }
    }
    assert!(fired > 50, "only {fired} faults fired");
}

#[test]
fn io_errors_at_every_operation_of_fs_checkpoints_and_retention() {
    io_errors_everywhere(Kind::Fs, 4);
}

#[test]
fn io_errors_at_every_operation_of_lsm_checkpoints_and_restores() {
    io_errors_everywhere(Kind::Lsm, 3);
}

/// Two local storages on one simulated file system, and `files` files in the first,
/// `shared/<i>.sst` holding 64 bytes of `i`, with the names they get in the second
/// (`shared/7/<i>.sst`).
fn linked_storages(
    seed: u64,
    files: u8,
) -> (
    Arc<SimFs>,
    LocalDirStorage,
    LocalDirStorage,
    Vec<(String, String)>,
) {
    let (sim, fs) = new_fs(seed);
    let theirs = LocalDirStorage::open_on(Arc::clone(&fs), "/other/checkpoints").unwrap();
    let ours = LocalDirStorage::open_on(fs, ROOT).unwrap();
    let names: Vec<(String, String)> = (0..files)
        .map(|i| (format!("shared/{i}.sst"), format!("shared/7/{i}.sst")))
        .collect();
    for (i, (from, _)) in names.iter().enumerate() {
        theirs.write_file(from, &[i as u8; 64]).unwrap();
    }
    (sim, theirs, ours, names)
}

/// `names` as the `(from, to)` pairs `copy_many_from` takes.
fn pairs(names: &[(String, String)]) -> Vec<(&str, &str)> {
    names
        .iter()
        .map(|(from, to)| (from.as_str(), to.as_str()))
        .collect()
}

/// Files linked from one local storage into another in one call: one fsync of the directory
/// that gained the names (not one per file), and every name survives a power loss right after.
#[test]
fn copy_many_from_fsyncs_each_directory_once_and_the_links_survive() {
    let (sim, theirs, ours, names) = linked_storages(7, 4);
    let mut pairs = pairs(&names);
    // A file the source does not have is reported as not copied.
    pairs.push(("shared/missing.sst", "shared/7/missing.sst"));
    sim.enable_trace();
    let done = ours.copy_many_from(&theirs, &pairs).unwrap();
    assert_eq!(done, [true, true, true, true, false]);
    let trace = sim.trace();
    let dir_syncs: Vec<&String> = trace
        .iter()
        .filter(|op| op.contains("sync_dir") && op.ends_with("/job/checkpoints/shared/7"))
        .collect();
    assert_eq!(dir_syncs.len(), 1, "{trace:#?}");
    sim.power_loss(PowerLoss::DropUnsynced);
    for (i, (_, to)) in names.iter().enumerate() {
        assert_eq!(ours.read_file(to).unwrap(), vec![i as u8; 64], "{to}");
    }
    assert!(!ours.exists("shared/7/missing.sst").unwrap());
}

/// A directory fsync that fails: the call errs, and the names it made are taken back so the
/// uploads that follow find them free.
#[test]
fn copy_many_from_takes_its_links_back_when_the_directory_fsync_fails() {
    let (sim, theirs, ours, names) = linked_storages(8, 3);
    // The destination directory exists, so the next sync_dir is the one after the links.
    ours.write_file("shared/7/other.sst", b"x").unwrap();
    let pairs = pairs(&names);
    sim.inject(FaultOp::SyncDir, 0, FaultKind::Eio, false);
    assert!(ours.copy_many_from(&theirs, &pairs).is_err());
    for (_, to) in &names {
        assert!(!ours.exists(to).unwrap(), "{to} left behind");
    }
    // The sources are untouched and a retry succeeds.
    assert_eq!(ours.copy_many_from(&theirs, &pairs).unwrap(), [true; 3]);
    assert_eq!(ours.read_file("shared/7/2.sst").unwrap(), vec![2u8; 64]);
}
