//! Power loss, I/O errors and a full disk under whole jobs (`run_job`, `flowstate run`), with
//! the state and output directories on the simulated file system.
//!
//! A short input is run by the reference job on `fs::SimFs` (the fs and lsm backends, two
//! tasks, a checkpoint every few milliseconds, a paced source so barriers, pre-commits, commits
//! and retention interleave with records). The power is cut at sampled mutating file operations
//! of that run — the barrier's snapshots, the sinks' pre-commit fsyncs and renames, the job
//! checkpoint's `_metadata`, the commit renames, retention's deletions, restarts — and the
//! unsynced state is lost or torn. For some points the power is cut again during the recovery
//! run. The job is then rerun on what survived (at another parallelism) until it finishes, and
//! must commit exactly the failure-free output (an oracle computed from the input here), resume
//! from no checkpoint older than the last one it reported complete, and find nothing damaged
//! (no quarantine).
//!
//! Every failure prints the backend, seed and operation index. `FLOWSTATE_POWER_LOSS_FULL=1`
//! cuts the power at every operation index instead of a sample.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flowstate::engine::BackendChoice;
use flowstate::engine::CheckpointOptions;
use flowstate::engine::FailureSchedule;
#[cfg(feature = "cli")]
use flowstate::engine::cli::{RunArgs, run_command_on};
use flowstate::engine::{CheckpointObserver, JobConfig, RestartStrategy, run_job};
use flowstate::fs::{FaultKind, FaultOp, FileSystem, FsRef, PowerLoss, SimFs};
use flowstate::internals::generate_input;
use support::mix;
use support::oracle::assert_exactly_once_on;

const STATE: &str = "/job/state";
const OUTPUT: &str = "/job/out";

fn full() -> bool {
    std::env::var("FLOWSTATE_POWER_LOSS_FULL").is_ok_and(|v| v == "1")
}

/// An input on the real file system (the job reads its input with `std::fs`).
struct Input {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn input(events: u64, seed: u64) -> Input {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.txt");
    generate_input(&path, events, 40, seed).unwrap();
    Input { _dir: dir, path }
}

/// The job on `fs`: checkpoints every 3 ms (two retained), a source that pauses 1 ms every 40
/// records, no restart (a power cut must end the run), and a record of the last checkpoint the
/// job reported complete (durable and retained).
fn config(
    fs: &FsRef,
    input: &Path,
    backend: BackendChoice,
    parallelism: u16,
    completed: &Arc<AtomicU64>,
) -> JobConfig {
    let mut config = JobConfig::new(input, OUTPUT, STATE);
    config.fs = fs.clone();
    config.backend = backend;
    config.parallelism = parallelism;
    config.batch_records = 20;
    config.channel_capacity = 4;
    config.checkpoints = CheckpointOptions::default()
        .interval(Some(Duration::from_millis(3)))
        .retained(2);
    config.restart = RestartStrategy {
        max_restarts: 0,
        delay: Duration::ZERO,
    };
    config.failures =
        Arc::new(FailureSchedule::none().with_source_pace(40, Duration::from_millis(1)));
    let completed = completed.clone();
    config.on_checkpoint = Some(CheckpointObserver(Arc::new(move |id| {
        completed.fetch_max(id, Ordering::Relaxed);
    })));
    config
}

fn new_fs(seed: u64) -> (Arc<SimFs>, FsRef) {
    let sim = SimFs::new(seed);
    let fs: FsRef = sim.clone();
    (sim, fs)
}

/// Asserts the committed output on `fs` is exactly the failure-free output of `input`.
fn assert_exact(fs: &dyn FileSystem, input: &Path, context: &str) {
    assert_exactly_once_on(fs, input, Path::new(OUTPUT), context);
}

/// Files under `dir` on `sim` whose path has a `quarantine` component.
fn quarantined(sim: &SimFs) -> Vec<String> {
    sim.files_under(Path::new(STATE))
        .into_iter()
        .map(|(path, _)| path)
        .filter(|p| p.split('/').any(|c| c == "quarantine"))
        .collect()
}

/// Reruns the job on what `sim` holds (restarts allowed, at another parallelism) until it
/// finishes; checks that it resumed from a checkpoint at least as new as `completed`, found
/// nothing damaged, and committed exactly the failure-free output.
fn finish(sim: &Arc<SimFs>, input: &Path, backend: BackendChoice, completed: u64, context: &str) {
    let fs: FsRef = sim.clone();
    let seen = Arc::new(AtomicU64::new(0));
    let mut config = config(&fs, input, backend, 1 + (completed % 3) as u16, &seen);
    config.restart.max_restarts = 3;
    let summary = run_job(&config).unwrap_or_else(|e| panic!("{context}: recovery failed: {e}"));
    if !summary.already_finished {
        assert!(
            summary.resumed_from.unwrap_or(0) >= completed,
            "{context}: resumed from {:?}, but checkpoint {completed} had completed",
            summary.resumed_from
        );
    }
    assert_eq!(quarantined(sim), Vec::<String>::new(), "{context}");
    assert_exact(fs.as_ref(), input, context);
}

/// Runs the job once on `sim` with the power cut at mutation `at` (counted from now); returns
/// the last checkpoint it reported complete. A run that fails must name a path of the job.
fn run_until_power_cut(
    sim: &Arc<SimFs>,
    input: &Path,
    backend: BackendChoice,
    parallelism: u16,
    at: u64,
    context: &str,
) -> u64 {
    let fs: FsRef = sim.clone();
    let completed = Arc::new(AtomicU64::new(0));
    sim.power_off_at(Some(sim.mutations() + at));
    let result = run_job(&config(&fs, input, backend, parallelism, &completed));
    if let Err(e) = &result {
        assert!(
            matches!(e.root_cause(), flowstate::Error::Io { path, .. } if path.starts_with("/")),
            "{context}: not an I/O error naming a path: {e}"
        );
    }
    completed.load(Ordering::Relaxed)
}

/// Mutating operations of a failure-free run (a lower bound for the sampled indices).
fn mutations_of_a_run(input: &Path, backend: BackendChoice, seed: u64) -> u64 {
    let (sim, fs) = new_fs(seed);
    let completed = Arc::new(AtomicU64::new(0));
    let summary = run_job(&config(&fs, input, backend, 2, &completed)).unwrap();
    assert!(
        summary.history.len() >= 5,
        "{backend:?}: only {} checkpoints in the failure-free run",
        summary.history.len()
    );
    assert_exact(fs.as_ref(), input, &format!("{backend:?} failure-free"));
    sim.mutations()
}

fn power_loss_everywhere(backend: BackendChoice, events: u64, points: u64) {
    let seed = 7 + events;
    let input = input(events, seed);
    let total = mutations_of_a_run(&input.path, backend, seed);
    let step = if full() { 1 } else { (total / points).max(1) };
    let mut cut = 0;
    let mut index = 0;
    while index < total {
        // Spread the sample: a seeded offset inside each stride.
        let at = (index + mix(seed ^ index) % step).min(total - 1);
        let context = format!("{backend:?}, seed {seed}, power off at mutation {at} of {total}");
        let (sim, _) = new_fs(seed ^ at);
        let completed = run_until_power_cut(&sim, &input.path, backend, 2, at, &context);
        if sim.is_off() {
            cut += 1;
        }
        sim.power_loss(if at.is_multiple_of(2) {
            PowerLoss::DropUnsynced
        } else {
            PowerLoss::Random
        });
        let mut completed = completed;
        if (at / step) % 8 == 3 {
            // A second power cut during the recovery run, at a seeded operation of it.
            let again = 1 + mix(at) % (total / 2).max(1);
            let context = format!("{context}, then during recovery at +{again}");
            completed = completed.max(run_until_power_cut(
                &sim,
                &input.path,
                backend,
                3,
                again,
                &context,
            ));
            sim.power_loss(PowerLoss::Random);
            finish(&sim, &input.path, backend, completed, &context);
        } else {
            finish(&sim, &input.path, backend, completed, &context);
        }
        index += step;
    }
    eprintln!(
        "{backend:?}: {cut} power cuts in {} runs over {total} mutations",
        total.div_ceil(step)
    );
    assert!(
        // Runs are not deterministic (threads, timing): a loaded machine takes fewer
        // checkpoints, so the last indices of the failure-free run may not be reached.
        cut * 2 >= total.div_ceil(step),
        "{backend:?}: the power was cut in only {cut} runs of {}",
        total.div_ceil(step)
    );
}

#[test]
fn power_loss_during_fs_backend_jobs_keeps_output_exactly_once() {
    power_loss_everywhere(BackendChoice::Fs, 1_200, 90);
}

#[test]
fn power_loss_during_lsm_backend_jobs_keeps_output_exactly_once() {
    power_loss_everywhere(BackendChoice::Lsm, 1_200, 90);
}

/// EIO or ENOSPC at the n-th operation of each kind: ENOSPC stops the job at once with an I/O
/// error naming a path (no restart can cure it); EIO is cured by a restart. Either way, once the
/// fault is gone the job finishes with exactly the failure-free output.
#[test]
fn io_errors_during_jobs_stop_or_restart_and_never_change_the_output() {
    let input = input(800, 3);
    let mut stopped = 0;
    for backend in [BackendChoice::Fs, BackendChoice::Lsm] {
        for (op, kind) in [
            (FaultOp::Write, FaultKind::Enospc),
            (FaultOp::Create, FaultKind::Enospc),
            (FaultOp::Sync, FaultKind::Eio),
            (FaultOp::SyncDir, FaultKind::Eio),
            (FaultOp::Rename, FaultKind::Eio),
            (FaultOp::Remove, FaultKind::Eio),
            (FaultOp::Read, FaultKind::Eio),
        ] {
            for nth in [0, 3, 17, 60, 250] {
                let context = format!("{backend:?}: {op:?} #{nth} {kind:?}");
                let (sim, fs) = new_fs(nth);
                sim.inject(op, nth, kind, false);
                let completed = Arc::new(AtomicU64::new(0));
                let mut config = config(&fs, &input.path, backend, 2, &completed);
                config.restart.max_restarts = 3;
                match run_job(&config) {
                    Ok(_) => {}
                    Err(e) => {
                        stopped += 1;
                        let text = e.to_string();
                        assert!(
                            matches!(e.root_cause(), flowstate::Error::Io { path, .. }
                                if path.starts_with("/")),
                            "{context}: not an I/O error naming a path: {text}"
                        );
                        if kind == FaultKind::Enospc {
                            // Stopped at once: never "job failed after N restarts".
                            assert!(
                                text.contains("No space left on device")
                                    && !text.contains("job failed after"),
                                "{context}: {text}"
                            );
                        }
                    }
                }
                sim.clear_faults();
                finish(
                    &sim,
                    &input.path,
                    backend,
                    completed.load(Ordering::Relaxed),
                    &context,
                );
            }
        }
    }
    assert!(stopped >= 10, "only {stopped} runs stopped on an I/O error");
}

/// `flowstate run` on a full disk exits 1 with a message naming the directory and the cause,
/// without ten restarts first; after space is freed the same command resumes and finishes with
/// exactly the failure-free output.
#[cfg(feature = "cli")]
#[test]
fn flowstate_run_on_a_full_disk_exits_1_and_resumes_after_space_is_freed() {
    let input = input(3_000, 11);
    for (backend, name) in [(BackendChoice::Fs, "fs"), (BackendChoice::Lsm, "lsm")] {
        let (sim, fs) = new_fs(5);
        let args = RunArgs {
            input: input.path.clone(),
            output: OUTPUT.into(),
            state: STATE.into(),
            checkpoint_storage: None,
            backend,
            parallelism: 2,
            max_parallelism: None,
            checkpoint_interval_ms: 5,
            retained: 2,
            quiet: true,
            metrics_addr: None,
            allow_older_checkpoint: false,
            state_growth_alert: None,
            state_growth_window: 10,
            memory: None,
        };
        sim.set_capacity(Some(20_000));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_command_on(&args, fs.clone(), &mut out, &mut err);
        let message = String::from_utf8_lossy(&err).into_owned();
        assert_eq!(code, 1, "{name}: {message}");
        assert!(
            message.contains("No space left on device") && message.contains("/job"),
            "{name}: the message names no cause or directory: {message}"
        );
        assert!(
            message.contains("without retrying"),
            "{name}: a full disk was retried: {message}"
        );
        assert!(sim.used_bytes() <= 20_000);
        sim.set_capacity(None);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_command_on(&args, fs.clone(), &mut out, &mut err);
        assert_eq!(code, 0, "{name}: {}", String::from_utf8_lossy(&err));
        assert!(
            String::from_utf8_lossy(&out).contains("job finished"),
            "{name}"
        );
        assert_exact(fs.as_ref(), &input.path, name);
    }
}
