//! [`run_job`]: runs the reference job (per-key running count and sum) through failures.
//!
//! One attempt = one source thread, and per operator task an operator thread, a snapshot
//! thread and a sink thread, all in a thread scope; the calling thread is the checkpoint
//! coordinator. Any task failure cancels the attempt (gates closed, threads joined); the job
//! then restarts from the latest completed checkpoint: state restored into the (possibly new)
//! parallelism by key group, source rewound, sink output reconciled.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::coordinator::{
    CheckpointCoordinator, CheckpointOptions, CheckpointRecord, CompletedCheckpoint,
};
use super::failure::{FailurePoint, FailureSchedule};
use super::gate::InputGate;
use super::location::{CheckpointBase, JOB_DIR};
use super::operator::{OperatorTask, run_snapshot_thread};
use super::sink::{self, SinkBatch, SinkControl, TwoPhaseFileSink};
use super::source::{EventBatch, SourceControl, SourcePosition, SourceTask};
use super::store::{JobCheckpoint, JobStore};
use super::{BackendChoice, CoordinatorEvent, OperatorControl};
use crate::backend::{BackendConfig, CheckpointReleaser, SnapshotData};
use crate::checkpoint::registry::QUARANTINE_DIR;
use crate::checkpoint::storage::checkpoint_dir;
use crate::error::{Error, Result};
use crate::fs::{FileSystem, FsRef, create_dir_durable, std_fs, write_atomic};
use crate::keys::{DEFAULT_MAX_PARALLELISM, KeyGroupRange, check_max_parallelism};
use crate::state::KeyedState;

/// Marker file: the job finished (holds the final checkpoint id and counts).
pub const FINISHED_FILE: &str = "FINISHED";
/// Marker file: a memory-backend run is (or was, if it crashed) in progress.
pub const MEMORY_RUN_FILE: &str = "MEMORY_BACKEND_RUN";
/// Lock file held while a job runs on the state directory.
pub const LOCK_FILE: &str = "LOCK";
/// The job's id (32 hex digits), naming it as the owner of a `--checkpoint-storage` base.
pub const JOB_ID_FILE: &str = "JOB_ID";

/// Fixed-delay restart strategy.
#[derive(Debug, Clone, Copy)]
pub struct RestartStrategy {
    /// Restarts allowed after failures (within one `run_job` call).
    pub max_restarts: u32,
    /// Pause before each restart.
    pub delay: Duration,
}

impl Default for RestartStrategy {
    /// 10 restarts, 100 ms apart.
    fn default() -> Self {
        RestartStrategy {
            max_restarts: 10,
            delay: Duration::from_millis(100),
        }
    }
}

/// Everything a job run needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobConfig {
    /// Input file of `key,value` lines.
    pub input: PathBuf,
    /// Output directory (committed `part-*` files, `rejected/`).
    pub output: PathBuf,
    /// State directory (checkpoints, task state, lock).
    pub state: PathBuf,
    /// Where checkpoints go instead of `state` (a storage URI such as `s3://bucket/prefix`, or
    /// a directory); `None`: under `state`. Working stores and the lock stay in `state`.
    pub checkpoint_storage: Option<String>,
    /// Operator state backend.
    pub backend: BackendChoice,
    /// Operator (and sink) parallelism.
    pub parallelism: u16,
    /// Number of key groups; `None`: the resumed checkpoint's, or the default 128.
    pub max_parallelism: Option<u16>,
    /// Checkpointing options.
    pub checkpoints: CheckpointOptions,
    /// Restart strategy.
    pub restart: RestartStrategy,
    /// Failures to inject (default none): each fails a task at the n-th occurrence of a point
    /// of the run, so a test of a deployment can check that restarts keep the output
    /// exactly-once ([`FailureSchedule`]).
    pub failures: Arc<FailureSchedule>,
    /// Print progress to stderr once a second.
    pub progress: bool,
    /// Capacity of every task input, in messages (batches).
    pub channel_capacity: usize,
    /// Resume from an older checkpoint even though a newer one is damaged or missing while
    /// output it committed exists; that output is first moved aside (into
    /// `<output>/.superseded-after-<c>/`, FORMAT.md §12.2) so the result is again exactly-once.
    /// Off by default: the job then refuses to resume ([`Error::ResumeRefused`]).
    pub allow_older_checkpoint: bool,
    /// Records per batch from the source to an operator (default
    /// [`DEFAULT_BATCH_RECORDS`](super::source::DEFAULT_BATCH_RECORDS)); tests use small
    /// batches so barriers and failures fall between many batches.
    pub batch_records: usize,
    /// Called on the coordinator thread after each completed checkpoint is durable and
    /// retention has released what it subsumed, before the next checkpoint is triggered.
    pub on_checkpoint: Option<CheckpointObserver>,
    /// The file system of the state and output directories (default the real one; a
    /// [`SimFs`](crate::fs::SimFs) injects faults and power loss). The input is read with
    /// `std::fs`.
    pub fs: FsRef,
    /// One memory budget for every task's LSM backend (default none: each task's write cache,
    /// memtables and block cache have their own sizes). `flowstate run --memory`.
    pub memory_budget: Option<Arc<crate::budget::MemoryBudget>>,
}

/// A function called with the id of each completed checkpoint (see
/// [`JobConfig::on_checkpoint`]); measurements and tests observe checkpoint storage with it.
#[derive(Clone)]
pub struct CheckpointObserver(pub Arc<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for CheckpointObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointObserver")
    }
}

impl JobConfig {
    option_setters! { JobConfig {
        checkpoint_storage: Option<String>,
        backend: BackendChoice,
        parallelism: u16,
        max_parallelism: Option<u16>,
        checkpoints: CheckpointOptions,
        restart: RestartStrategy,
        failures: Arc<FailureSchedule>,
        progress: bool,
        channel_capacity: usize,
        allow_older_checkpoint: bool,
        batch_records: usize,
        on_checkpoint: Option<CheckpointObserver>,
        fs: FsRef,
        memory_budget: Option<Arc<crate::budget::MemoryBudget>>,
    }}

    /// A config with default checkpointing, restarts, parallelism 1 and the LSM backend.
    pub fn new(
        input: impl Into<PathBuf>,
        output: impl Into<PathBuf>,
        state: impl Into<PathBuf>,
    ) -> Self {
        JobConfig {
            input: input.into(),
            output: output.into(),
            state: state.into(),
            checkpoint_storage: None,
            backend: BackendChoice::Lsm,
            parallelism: 1,
            max_parallelism: None,
            checkpoints: CheckpointOptions::default(),
            restart: RestartStrategy::default(),
            failures: Arc::new(FailureSchedule::none()),
            progress: false,
            channel_capacity: 16,
            allow_older_checkpoint: false,
            batch_records: super::source::DEFAULT_BATCH_RECORDS,
            on_checkpoint: None,
            fs: std_fs(),
            memory_budget: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct JobSummary {
    /// Valid events in the input.
    pub events: u64,
    /// Rejected lines in the input.
    pub rejected: u64,
    /// The job had already finished: nothing was run.
    pub already_finished: bool,
    /// The checkpoint the run resumed from at start, if any.
    pub resumed_from: Option<u64>,
    /// Restores from a checkpoint (at start and after failures).
    pub restores: u32,
    /// Records processed by operators in this run (replays included).
    pub records_processed: u64,
    /// Wall time of this run.
    pub elapsed: Duration,
    /// Every checkpoint that ended in this run.
    pub history: Vec<CheckpointRecord>,
    /// The final checkpoint id.
    pub final_checkpoint: u64,
}

impl JobSummary {
    /// Records processed per second of wall time.
    pub fn events_per_second(&self) -> f64 {
        self.records_processed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The largest operator parallelism a job runs: each parallel task takes three threads
/// (operator, snapshot, sink), so 1024 tasks are 3,073 threads with the source.
pub const MAX_PARALLELISM_TASKS: u16 = 1024;

/// Runs the job to completion: resumes from `config.state` if a previous run left completed
/// checkpoints, restarts after failures, and returns once all output is committed.
pub fn run_job(config: &JobConfig) -> Result<JobSummary> {
    let started = Instant::now();
    config.validate()?;
    let fs = config.fs.as_ref();
    create_dir_durable(fs, &config.state)?;
    let state_dir = fs
        .canonicalize(&config.state)
        .map_err(|e| Error::io(&config.state, e))?;
    let _lock = lock_state_dir(fs, &state_dir)?;
    create_dir_durable(fs, &config.output)?;
    let mut summary = JobSummary {
        events: 0,
        rejected: 0,
        already_finished: false,
        resumed_from: None,
        restores: 0,
        records_processed: 0,
        elapsed: Duration::ZERO,
        history: Vec::new(),
        final_checkpoint: 0,
    };
    if let Some((id, position)) = read_finished(fs, &state_dir)? {
        sink::reconcile(fs, &config.output, id)?;
        summary.already_finished = true;
        summary.final_checkpoint = id;
        summary.events = position.events;
        summary.rejected = position.rejected;
        summary.elapsed = started.elapsed();
        return Ok(summary);
    }
    let memory_marker = state_dir.join(MEMORY_RUN_FILE);
    check_no_memory_run(fs, &memory_marker, &state_dir)?;
    let base = match &config.checkpoint_storage {
        Some(uri) if config.backend.persistent() => {
            let base = CheckpointBase::remote(&config.fs, uri, &state_dir)?;
            base.claim(&job_id(fs, &state_dir)?)?;
            base
        }
        _ => CheckpointBase::local(&config.fs, &state_dir)?,
    };
    let mut store = JobStore::open(&base, config.backend, config.checkpoints.retained)?;
    let max_parallelism = job_max_parallelism(config, &store, &state_dir)?;
    check_resume_point(config, &store, &base)?;
    if !config.backend.persistent() {
        write_atomic(fs, &memory_marker, b"memory backend run in progress\n")?;
    }
    summary.resumed_from = store.latest().map(|c| c.id);
    let processed = AtomicU64::new(0);
    let attempt = Attempt {
        config,
        base: &base,
        max_parallelism,
        processed: &processed,
        started,
    };
    let (final_id, position) = run_attempts(&attempt, &mut store, &mut summary)?;
    write_atomic(
        fs,
        &state_dir.join(FINISHED_FILE),
        format!("{final_id} {} {}\n", position.events, position.rejected).as_bytes(),
    )?;
    if fs.is_file(&memory_marker) {
        fs.remove_file(&memory_marker)
            .map_err(|e| Error::io(&memory_marker, e))?;
        crate::fs::sync_parent(fs, &memory_marker)?;
    }
    summary.final_checkpoint = final_id;
    summary.events = position.events;
    summary.rejected = position.rejected;
    summary.records_processed = processed.load(Ordering::Relaxed);
    summary.elapsed = started.elapsed();
    Ok(summary)
}

impl JobConfig {
    /// Checks the configuration ([`run_job`] does, before touching any file);
    /// [`Error::InvalidOption`] names the first bad field (as `JobConfig::<field>`) and what it
    /// must be.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, what: String| {
            Err(Error::invalid_option(format!("JobConfig::{field}"), what))
        };
        if self.parallelism == 0 || self.parallelism > MAX_PARALLELISM_TASKS {
            return bad(
                "parallelism",
                format!(
                    "must be in 1..={MAX_PARALLELISM_TASKS} (each task runs three threads), \
                     not {}",
                    self.parallelism
                ),
            );
        }
        if let Some(max) = self.max_parallelism
            && (max == 0 || max > crate::keys::UPPER_BOUND_MAX_PARALLELISM)
        {
            return bad(
                "max_parallelism",
                format!(
                    "must be in 1..={}, not {max}",
                    crate::keys::UPPER_BOUND_MAX_PARALLELISM
                ),
            );
        }
        for (field, path) in [
            ("input", &self.input),
            ("output", &self.output),
            ("state", &self.state),
        ] {
            if path.as_os_str().is_empty() {
                return bad(field, "must not be empty".into());
            }
        }
        if self.channel_capacity == 0 {
            return bad("channel_capacity", "must be at least 1".into());
        }
        if self.batch_records == 0 {
            return bad("batch_records", "must be at least 1".into());
        }
        self.checkpoints.validate()
    }
}

/// Refuses to run on a state directory whose `memory_marker` says a memory-backend run did not
/// finish there: its checkpoints are gone.
fn check_no_memory_run(fs: &dyn FileSystem, memory_marker: &Path, state_dir: &Path) -> Result<()> {
    if fs.is_file(memory_marker) {
        return Err(Error::incompatible(format!(
            "{} was used by a --backend memory run that did not finish; its checkpoints lived in \
             that process's memory and are gone, so it cannot resume. Delete --state and --output \
             to start over (or use --backend fs to survive crashes)",
            state_dir.display()
        )));
    }
    Ok(())
}

/// The job's number of key groups: the latest checkpoint's (a different requested one is an
/// error), else the requested one or the default; the parallelism must not exceed it.
fn job_max_parallelism(config: &JobConfig, store: &JobStore, state_dir: &Path) -> Result<u16> {
    let max_parallelism = match (store.latest(), config.max_parallelism) {
        (Some(latest), requested) => {
            let had = latest
                .handles
                .first()
                .map_or(DEFAULT_MAX_PARALLELISM, |h| h.max_parallelism);
            if let Some(requested) = requested.filter(|r| *r != had) {
                return Err(Error::incompatible(format!(
                    "the checkpoints in {} were taken with --max-parallelism {had}; it cannot \
                     change to {requested}",
                    state_dir.display()
                )));
            }
            had
        }
        (None, requested) => check_max_parallelism(requested.unwrap_or(DEFAULT_MAX_PARALLELISM))?,
    };
    if config.parallelism > max_parallelism {
        return Err(Error::invalid(format!(
            "parallelism {} exceeds max parallelism {max_parallelism}",
            config.parallelism
        )));
    }
    Ok(max_parallelism)
}

/// Runs `attempt` until it finishes, again after each failure a restart can cure, up to the
/// configured restarts; returns the final checkpoint's id and source position. Counts the
/// restores and collects the checkpoint history in `summary`.
fn run_attempts(
    attempt: &Attempt<'_>,
    store: &mut JobStore,
    summary: &mut JobSummary,
) -> Result<(u64, SourcePosition)> {
    let config = attempt.config;
    let mut restarts = 0u32;
    loop {
        if store.latest().is_some() {
            summary.restores += 1;
        }
        match attempt.run(store, &mut summary.history) {
            Ok(done) => return Ok(done),
            Err(e) => {
                if !e.is_curable_by_restart() {
                    // A full disk, a read-only file system or a failed fsync: every restart
                    // would meet it again.
                    return Err(e.context(format!(
                        "job stopped after {restarts} restarts without retrying (a restart \
                         cannot cure this)"
                    )));
                }
                restarts += 1;
                if restarts > config.restart.max_restarts {
                    return Err(e.context(format!("job failed after {} restarts", restarts - 1)));
                }
                crate::observe::job_restarted();
                tracing::info!(
                    error = %e,
                    restart = restarts,
                    checkpoint = store.latest().map(|c| c.id),
                    "task failure: restarting the job"
                );
                eprintln!(
                    "task failure: {e}; restarting from checkpoint {} (restart {restarts} of {})",
                    store
                        .latest()
                        .map_or("none (from the start)".to_string(), |c| c.id.to_string()),
                    config.restart.max_restarts
                );
                std::thread::sleep(config.restart.delay);
            }
        }
    }
}

/// Refuses to resume from the newest usable checkpoint c when a newer checkpoint was damaged
/// (quarantined) or when committed output of an epoch after c exists (a newer checkpoint's
/// `_metadata` is damaged or missing): replaying from c would commit that output twice. With
/// `allow_older_checkpoint` the committed output after c is moved aside instead.
fn check_resume_point(config: &JobConfig, store: &JobStore, base: &CheckpointBase) -> Result<()> {
    let resume = store.latest().map(|c| c.id);
    let at = resume.unwrap_or(0);
    let beyond = sink::committed_beyond(config.fs.as_ref(), &config.output, at)?;
    let quarantined: Vec<u64> = store
        .quarantined_ids()
        .iter()
        .copied()
        .filter(|id| *id > at)
        .collect();
    if beyond.is_empty() && quarantined.is_empty() {
        return Ok(());
    }
    let mut found: Vec<String> = store.damage().to_vec();
    for id in &quarantined {
        let dir = checkpoint_dir(*id);
        if !found
            .iter()
            .any(|f| f.starts_with(&format!("job checkpoint {id}:")))
        {
            found.push(format!(
                "job checkpoint {id} was quarantined by an earlier run ({})",
                base.join(&format!("{JOB_DIR}/{QUARANTINE_DIR}/{dir}"))
            ));
        }
    }
    for id in store.removed_incomplete().iter().filter(|id| **id > at) {
        found.push(format!(
            "job checkpoint directory {} had no _metadata (a deleted _metadata, or a crash \
             while publishing it) and was removed as incomplete",
            base.join(&format!("{JOB_DIR}/{}", checkpoint_dir(*id)))
        ));
    }
    if let Some((last, _)) = beyond.last() {
        let names: Vec<String> = beyond
            .iter()
            .take(4)
            .map(|(_, p)| p.display().to_string())
            .collect();
        let more = beyond.len().saturating_sub(names.len());
        found.push(format!(
            "{} committed output file(s) of epochs {}..={last}, which only checkpoints after {} \
             can have committed: {}{}",
            beyond.len(),
            at + 1,
            resume.map_or("none".to_string(), |id| id.to_string()),
            names.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    } else {
        found.push(format!(
            "no committed output of epochs after {at} in {}",
            config.output.display()
        ));
    }
    let from = resume.map_or_else(
        || "the start of the input (no usable checkpoint is left)".to_string(),
        |id| format!("checkpoint {id}"),
    );
    let aside = config
        .output
        .join(format!(".superseded-after-{at}"))
        .display()
        .to_string();
    if !config.allow_older_checkpoint {
        return Err(Error::ResumeRefused(format!(
            "the newest usable checkpoint in {} is {from}, but: {}. Resuming from it would \
             commit output a second time. Either put the damaged or missing _metadata back \
             (e.g. from a backup) and rerun, or rerun with --allow-older-checkpoint to resume \
             from {from}: the committed output after it is then moved to {aside}/ and computed \
             again",
            base.join(JOB_DIR),
            found.join("; ")
        )));
    }
    if beyond.is_empty() {
        tracing::warn!(found = %found.join("; "), resume = at, "resuming from an older checkpoint (--allow-older-checkpoint)");
        return Ok(());
    }
    let moved = sink::move_aside(config.fs.as_ref(), &config.output, at, &beyond)?;
    tracing::warn!(
        found = %found.join("; "),
        resume = at,
        moved_to = %moved.display(),
        files = beyond.len(),
        "resuming from an older checkpoint (--allow-older-checkpoint): committed output beyond \
         it moved aside"
    );
    eprintln!(
        "resuming from {from} (--allow-older-checkpoint): moved {} committed output file(s) of \
         later epochs to {}",
        beyond.len(),
        moved.display()
    );
    Ok(())
}

fn lock_state_dir(fs: &dyn FileSystem, state_dir: &Path) -> Result<Box<dyn crate::fs::FileLock>> {
    let path = state_dir.join(LOCK_FILE);
    crate::lock::try_lock_file(fs, &path)?.ok_or_else(|| {
        Error::in_use(format!(
            "state directory {} is in use by another flowstate run (lock {})",
            state_dir.display(),
            path.display()
        ))
    })
}

/// The id of the job whose state directory is `state_dir`: the content of its [`JOB_ID_FILE`],
/// written (random, 128 bits in hex) by the first run that needs it.
fn job_id(fs: &dyn FileSystem, state_dir: &Path) -> Result<String> {
    let path = state_dir.join(JOB_ID_FILE);
    match fs.read(&path) {
        Ok(bytes) => {
            let id = String::from_utf8_lossy(&bytes).trim().to_string();
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(id);
            }
            Err(Error::corruption(
                path.display(),
                0,
                "expected a job id of 32 hex digits",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::hash::{BuildHasher, Hasher};
            let mut id = String::new();
            for salt in 0..2u64 {
                let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
                hasher.write_u64(salt ^ now_ms() ^ u64::from(std::process::id()));
                id.push_str(&format!("{:016x}", hasher.finish()));
            }
            write_atomic(fs, &path, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(Error::io(&path, e)),
    }
}

fn read_finished(fs: &dyn FileSystem, state_dir: &Path) -> Result<Option<(u64, SourcePosition)>> {
    let path = state_dir.join(FINISHED_FILE);
    let bytes = match fs.read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let text = String::from_utf8_lossy(&bytes);
    let fields: Vec<u64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let [id, events, rejected] = fields[..] else {
        return Err(Error::corruption(
            path.display(),
            0,
            "expected '<checkpoint> <events> <rejected>'",
        ));
    };
    let position = SourcePosition {
        events,
        rejected,
        exhausted: true,
        ..SourcePosition::default()
    };
    Ok(Some((id, position)))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One attempt: tasks from the latest checkpoint until finished or failed.
struct Attempt<'a> {
    config: &'a JobConfig,
    base: &'a CheckpointBase,
    max_parallelism: u16,
    processed: &'a AtomicU64,
    started: Instant,
}

type OperatorGate = InputGate<EventBatch, OperatorControl>;
type SinkGate = InputGate<SinkBatch, SinkControl>;

/// Runs `body` as task `name`: reports an error or panic as `Failed` (unless cancelled), then
/// `Exited`.
fn task_body(
    name: String,
    events: &Sender<CoordinatorEvent>,
    cancelled: &AtomicBool,
    body: impl FnOnce() -> Result<()>,
) {
    let result = catch_unwind(AssertUnwindSafe(body))
        .unwrap_or_else(|_| Err(Error::panicked(format!("task {name} panicked"))));
    if let Err(error) = result
        && !cancelled.load(Ordering::Relaxed)
    {
        let _ = events.send(CoordinatorEvent::Failed { task: name, error });
    }
    let _ = events.send(CoordinatorEvent::Exited);
}

/// Starts task `task` on a thread named `thread` in `scope`, run by [`task_body`]. A thread the
/// operating system refuses is an error naming the task (the OS error underneath), not a panic.
fn spawn_task<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    thread: String,
    task: String,
    events: Sender<CoordinatorEvent>,
    cancelled: &'scope AtomicBool,
    body: impl FnOnce() -> Result<()> + Send + 'scope,
) -> Result<()> {
    let failed = format!("could not start a thread for the {task} task");
    match std::thread::Builder::new()
        .name(thread.clone())
        .spawn_scoped(scope, move || task_body(task, &events, cancelled, body))
    {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::io(format!("thread {thread}"), e).context(failed)),
    }
}

/// What the tasks of one attempt start with (see [`Attempt::spawn_tasks`]).
struct TaskInputs<'a> {
    /// The operator tasks' keyed state, restored.
    keyed: Vec<KeyedState>,
    /// Where the source starts reading.
    position: SourcePosition,
    /// The checkpoint restored from (0: none).
    restored_id: u64,
    operator_gates: &'a [OperatorGate],
    sink_gates: &'a [SinkGate],
    source_control: mpsc::Receiver<SourceControl>,
    events: &'a Sender<CoordinatorEvent>,
}

impl Attempt<'_> {
    /// Returns the final checkpoint's id and source position.
    fn run(
        &self,
        store: &mut JobStore,
        history: &mut Vec<CheckpointRecord>,
    ) -> Result<(u64, SourcePosition)> {
        let config = self.config;
        let parallelism = config.parallelism;
        let restore = store.latest().cloned();
        let restored_id = restore.as_ref().map_or(0, |c| c.id);
        if let Some(checkpoint) = &restore
            && checkpoint.handles.len() != usize::from(parallelism)
        {
            tracing::info!(
                checkpoint = checkpoint.id,
                from = checkpoint.handles.len(),
                to = parallelism,
                "rescaling operator state"
            );
        }
        let generation = self.prepare_roots(store, restored_id)?;
        let (keyed, releasers) = self.open_backends(generation, restore.as_ref())?;
        let position = restore
            .as_ref()
            .map_or_else(SourcePosition::default, |c| c.source);
        let operator_gates: Vec<OperatorGate> = (0..parallelism)
            .map(|_| InputGate::new(1, config.channel_capacity))
            .collect();
        let sink_gates: Vec<SinkGate> = (0..parallelism)
            .map(|_| InputGate::new(1, config.channel_capacity))
            .collect();
        let (events_tx, events_rx) = mpsc::channel::<CoordinatorEvent>();
        let (source_tx, source_rx) = mpsc::channel::<SourceControl>();
        let cancelled = AtomicBool::new(false);
        let tasks = 1 + 3 * usize::from(parallelism);

        std::thread::scope(|scope| {
            let inputs = TaskInputs {
                keyed,
                position,
                restored_id,
                operator_gates: &operator_gates,
                sink_gates: &sink_gates,
                source_control: source_rx,
                events: &events_tx,
            };
            // Every task's thread, or the error of the first that could not be started.
            let started = self.spawn_tasks(scope, inputs, &cancelled);
            // Makes every running task return; the scope joins them before returning.
            let stop_tasks = || {
                cancelled.store(true, Ordering::Relaxed);
                for gate in &operator_gates {
                    gate.close();
                }
                for gate in &sink_gates {
                    gate.close();
                }
            };
            if let Err(error) = started {
                stop_tasks();
                return Err(error);
            }
            let mut coordinator = CheckpointCoordinator::new(
                config.checkpoints.clone(),
                usize::from(parallelism),
                usize::from(parallelism),
                restored_id + 1,
            );
            let mut run = CoordinatorLoop {
                attempt: self,
                store,
                coordinator: &mut coordinator,
                operator_gates: &operator_gates,
                sink_gates: &sink_gates,
                source: &source_tx,
                generation,
                releasers: &releasers,
                previous_files: BTreeSet::new(),
                finished: None,
            };
            let outcome = run.run_catching_panics(&events_rx, tasks);
            if outcome.is_err() {
                stop_tasks();
                coordinator.abort_all("job attempt failed", Instant::now());
            }
            history.append(&mut coordinator.history);
            outcome
        })
    }

    /// Brings the output in line with checkpoint `restored_id` and the checkpoint base in
    /// line with `store` (unreferenced generations removed; with a persistent backend, earlier
    /// roots pruned to what the retained checkpoints list); returns this attempt's generation.
    fn prepare_roots(&self, store: &JobStore, restored_id: u64) -> Result<u64> {
        let config = self.config;
        sink::reconcile(config.fs.as_ref(), &config.output, restored_id)?;
        let generation = self.base.next_generation()?;
        self.base
            .remove_unreferenced_generations(generation, &store.referenced_roots())?;
        if config.backend.persistent() {
            // Earlier attempts' roots are written no more: keep in them only what the retained
            // checkpoints list (a failed attempt leaves task checkpoints no job checkpoint has).
            self.base.prune_roots(&store.referenced_files())?;
        }
        Ok(generation)
    }

    /// Creates each operator task's backend in its root of `generation`, restored from the
    /// handles of `restore` that meet its key groups; returns their keyed state and checkpoint
    /// releasers.
    fn open_backends(
        &self,
        generation: u64,
        restore: Option<&JobCheckpoint>,
    ) -> Result<(Vec<KeyedState>, Vec<CheckpointReleaser>)> {
        let config = self.config;
        let parallelism = config.parallelism;
        let mut keyed = Vec::with_capacity(usize::from(parallelism));
        let mut releasers = Vec::with_capacity(usize::from(parallelism));
        for index in 0..parallelism {
            let range = KeyGroupRange::for_operator(self.max_parallelism, parallelism, index)?;
            let backend_config = BackendConfig::new(self.max_parallelism, range)?;
            let root = self.base.task(generation, usize::from(index))?;
            let backend =
                config
                    .backend
                    .create(backend_config, &root, config.memory_budget.clone())?;
            releasers.extend(backend.checkpoint_releaser());
            let state = KeyedState::from_boxed(backend);
            if let Some(checkpoint) = restore {
                let handles: Vec<_> = checkpoint
                    .handles
                    .iter()
                    .filter(|h| h.key_group_range.intersect(&range).is_some())
                    .cloned()
                    .collect();
                state.restore(&handles, range)?;
            }
            keyed.push(state);
        }
        Ok((keyed, releasers))
    }

    /// Starts the source task and, per operator task, its operator, snapshot and sink tasks in
    /// `scope`; stops at the first thread that cannot be started and returns its error.
    fn spawn_tasks<'scope, 'env>(
        &'env self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        inputs: TaskInputs<'env>,
        cancel: &'scope AtomicBool,
    ) -> Result<()> {
        let config = self.config;
        let failures: &FailureSchedule = &config.failures;
        let TaskInputs {
            keyed,
            position,
            restored_id,
            operator_gates,
            sink_gates,
            source_control,
            events: events_tx,
        } = inputs;
        let source = SourceTask {
            input: &config.input,
            position,
            outputs: operator_gates.iter().map(|g| g.sender(0)).collect(),
            control: source_control,
            events: events_tx.clone(),
            max_parallelism: self.max_parallelism,
            failures,
            cancelled: cancel,
            batch_records: config.batch_records,
        };
        spawn_task(
            scope,
            "flowstate-source".into(),
            "source".into(),
            events_tx.clone(),
            cancel,
            move || source.run(),
        )?;
        for (index, state) in keyed.into_iter().enumerate() {
            let (snapshot_tx, snapshot_rx) = mpsc::channel();
            let operator = OperatorTask {
                index,
                keyed: state,
                gate: operator_gates[index].clone(),
                inputs: 1,
                sink: sink_gates[index].sender(0),
                snapshots: snapshot_tx,
                failures,
                processed: self.processed,
            };
            spawn_task(
                scope,
                format!("flowstate-op-{index}"),
                format!("operator {index}"),
                events_tx.clone(),
                cancel,
                move || operator.run(),
            )?;
            let events = events_tx.clone();
            spawn_task(
                scope,
                format!("flowstate-snap-{index}"),
                format!("snapshot {index}"),
                events_tx.clone(),
                cancel,
                move || run_snapshot_thread(index, snapshot_rx, &events, failures),
            )?;
            let gate = sink_gates[index].clone();
            let events = events_tx.clone();
            let output = config.output.clone();
            let fs = config.fs.clone();
            spawn_task(
                scope,
                format!("flowstate-sink-{index}"),
                format!("sink {index}"),
                events_tx.clone(),
                cancel,
                move || run_sink(&fs, index, &output, restored_id, gate, &events, failures),
            )?;
        }
        Ok(())
    }
}

fn run_sink(
    fs: &FsRef,
    index: usize,
    output: &Path,
    restored_id: u64,
    gate: SinkGate,
    events: &Sender<CoordinatorEvent>,
    failures: &FailureSchedule,
) -> Result<()> {
    use super::gate::{GateEvent, Message};
    let mut sink = TwoPhaseFileSink::open(fs, output, index as u16, restored_id)?;
    while let Some(event) = gate.recv(&[false]) {
        match event {
            GateEvent::Control(SinkControl::Complete(id)) => sink.commit(id, failures)?,
            GateEvent::Message(_, Message::Record(batch)) => {
                failures.check(FailurePoint::SinkWrite)?;
                sink.write(&batch)?;
            }
            GateEvent::Message(_, Message::Barrier(id)) => {
                let bytes = sink.pre_commit(id, failures)?;
                let _ = events.send(CoordinatorEvent::SinkAck {
                    checkpoint_id: id,
                    task: index,
                    bytes,
                });
            }
            GateEvent::Message(_, Message::End) => return Ok(()),
        }
    }
    Ok(())
}

struct CoordinatorLoop<'a, 'b> {
    attempt: &'a Attempt<'b>,
    store: &'a mut JobStore,
    coordinator: &'a mut CheckpointCoordinator,
    operator_gates: &'a [OperatorGate],
    sink_gates: &'a [SinkGate],
    source: &'a Sender<SourceControl>,
    generation: u64,
    /// Releases the task checkpoints of this attempt's backends (job-level retention).
    releasers: &'a [CheckpointReleaser],
    /// (root, path) of every file the previous completed checkpoint referenced.
    previous_files: BTreeSet<(String, String)>,
    finished: Option<(u64, SourcePosition)>,
}

impl CoordinatorLoop<'_, '_> {
    /// [`CoordinatorLoop::run`], with a panic in it (in the coordinator, or in an
    /// `on_checkpoint` observer) turned into an error, so that the caller still cancels the
    /// tasks: the thread scope would otherwise wait for them forever.
    fn run_catching_panics(
        &mut self,
        events: &mpsc::Receiver<CoordinatorEvent>,
        tasks: usize,
    ) -> Result<(u64, SourcePosition)> {
        catch_unwind(AssertUnwindSafe(|| self.run(events, tasks))).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Error::panicked(format!(
                "the checkpoint coordinator panicked: {what}"
            )))
        })
    }

    fn run(
        &mut self,
        events: &mpsc::Receiver<CoordinatorEvent>,
        tasks: usize,
    ) -> Result<(u64, SourcePosition)> {
        let config = self.attempt.config;
        let mut exhausted = false;
        let mut exited = 0;
        let mut last_progress = Instant::now();
        let mut last_processed = self.attempt.processed.load(Ordering::Relaxed);
        loop {
            match events.recv_timeout(Duration::from_millis(2)) {
                Ok(event) => match event {
                    CoordinatorEvent::SourceExhausted => exhausted = true,
                    CoordinatorEvent::SourceAck {
                        checkpoint_id,
                        position,
                    } => {
                        let done = self.coordinator.ack_source(checkpoint_id, position);
                        self.on_complete(done)?;
                    }
                    CoordinatorEvent::OperatorAck {
                        checkpoint_id,
                        task,
                        ack,
                    } => {
                        let done = self.coordinator.ack_operator(checkpoint_id, task, ack);
                        self.on_complete(done)?;
                    }
                    CoordinatorEvent::SinkAck {
                        checkpoint_id,
                        task,
                        bytes,
                    } => {
                        let done = self.coordinator.ack_sink(checkpoint_id, task, bytes);
                        self.on_complete(done)?;
                    }
                    CoordinatorEvent::Decline {
                        checkpoint_id,
                        task,
                        error,
                    } => {
                        self.coordinator.decline_with(
                            checkpoint_id,
                            &format!("operator {task}"),
                            error,
                            Instant::now(),
                        )?;
                    }
                    CoordinatorEvent::Failed { task, error } => {
                        return Err(error.context(format!("{task} failed")));
                    }
                    CoordinatorEvent::Exited => {
                        exited += 1;
                        if exited == tasks {
                            return self.finished.ok_or_else(|| {
                                Error::cancelled("every task ended before the final checkpoint")
                            });
                        }
                    }
                },
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::cancelled("every task ended unexpectedly"));
                }
            }
            if self.finished.is_none() {
                let now = Instant::now();
                self.coordinator.check_timeouts(now)?;
                if let Some(id) = self.coordinator.poll_trigger(now, exhausted) {
                    // A send error means the source ended: its failure event follows.
                    let _ = self.source.send(SourceControl::InjectBarrier(id));
                }
            }
            if config.progress && last_progress.elapsed() >= Duration::from_secs(1) {
                let processed = self.attempt.processed.load(Ordering::Relaxed);
                let rate =
                    (processed - last_processed) as f64 / last_progress.elapsed().as_secs_f64();
                let last = self
                    .coordinator
                    .history
                    .iter()
                    .rev()
                    .find(|r| r.status == super::coordinator::CheckpointStatus::Completed);
                eprintln!(
                    "[{:>6.1}s] {processed} events processed, {rate:.0} events/s, last checkpoint {}",
                    self.attempt.started.elapsed().as_secs_f64(),
                    last.map_or("none".to_string(), |r| format!(
                        "{} ({:.1} ms)",
                        r.id,
                        r.duration.as_secs_f64() * 1e3
                    ))
                );
                last_progress = Instant::now();
                last_processed = processed;
            }
        }
    }

    fn on_complete(&mut self, done: Option<CompletedCheckpoint>) -> Result<()> {
        let Some(done) = done else {
            return Ok(());
        };
        let attempt = self.attempt;
        let mut record = done.record;
        let mut files = BTreeSet::new();
        for handle in &done.handles {
            if let SnapshotData::Files { root, files: refs } = &handle.data {
                for file in refs {
                    record.state_size += file.size;
                    let key = (root.clone(), file.path.clone());
                    if !self.previous_files.contains(&key) {
                        record.bytes_written += file.size;
                    }
                    files.insert(key);
                }
            }
        }
        self.previous_files = files;
        let checkpoint = JobCheckpoint {
            id: done.id,
            source: done.source,
            handles: done.handles,
        };
        self.store
            .add(checkpoint, attempt.max_parallelism, now_ms())?;
        self.coordinator.record_completed(record, Instant::now());
        attempt
            .config
            .failures
            .check(FailurePoint::AfterCheckpointPersisted)?;
        for gate in self.sink_gates {
            let _ = gate.control(SinkControl::Complete(done.id));
        }
        for gate in self.operator_gates {
            let _ = gate.control(OperatorControl::Complete(done.id));
        }
        if attempt.config.backend.persistent() {
            // Task checkpoint ids are job checkpoint ids: every task checkpoint up to this one
            // that no retained job checkpoint includes goes (subsumed, or its job checkpoint
            // failed), with the shared files only it referenced.
            let keep = self.store.retained_ids();
            for releaser in self.releasers {
                releaser.release(&keep, done.id)?;
            }
            // Roots of earlier attempts that retained checkpoints still use keep only what
            // those use (their subsumed task checkpoints have no backend to release them).
            let own = format!("{}/", attempt.base.generation_root(self.generation));
            let mut earlier = self.store.referenced_files();
            earlier.retain(|root, _| !root.starts_with(&own));
            attempt.base.prune_roots(&earlier)?;
            attempt
                .base
                .remove_unreferenced_generations(self.generation, &self.store.referenced_roots())?;
        }
        if let Some(observer) = &attempt.config.on_checkpoint {
            (observer.0)(done.id);
        }
        if done.source.exhausted {
            self.finished = Some((done.id, done.source));
            let _ = self.source.send(SourceControl::Finish);
        }
        Ok(())
    }
}
