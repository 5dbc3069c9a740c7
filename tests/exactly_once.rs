//! Exactly-once through injected failures, in process: a proptest over failure schedules
//! (source, operator, sink write / pre-commit / commit, sync and async snapshot parts, and the
//! window between a durable checkpoint and the sinks' commit) for the memory and fs backends,
//! sometimes stopping the job and resuming it at another parallelism. The committed output must
//! equal the failure-free output line for line (none missing, none twice).
//!
//! `PROPTEST_CASES` raises the case count (default 64 per backend).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flowstate::engine::{
    BackendChoice, CheckpointOptions, CheckpointStatus, FailurePoint, FailureSchedule, JobConfig,
    RestartStrategy, run_job,
};
use flowstate::internals::generate_input;
use proptest::prelude::*;

fn config(dir: &Path, backend: BackendChoice, parallelism: u16) -> JobConfig {
    let mut config = JobConfig::new(dir.join("input"), dir.join("out"), dir.join("state"));
    config.backend = backend;
    config.parallelism = parallelism;
    config.max_parallelism = Some(8);
    config.channel_capacity = 2;
    // Small batches: barriers and injected failures fall between many of them.
    config.batch_records = 16;
    config.checkpoints = CheckpointOptions::default()
        .interval(Some(Duration::from_millis(1)))
        .timeout(Duration::from_secs(30))
        .min_pause(Duration::ZERO)
        .max_concurrent(2)
        .retained(2)
        .tolerable_failures(1);
    config.restart = RestartStrategy {
        max_restarts: 20,
        delay: Duration::ZERO,
    };
    config
}

/// The upper bound of the occurrence at which each point may fail, for a small input.
fn occurrence_bound(point: FailurePoint) -> u64 {
    match point {
        FailurePoint::SourceRecord | FailurePoint::OperatorRecord => 1_500,
        FailurePoint::SinkWrite => 12,
        _ => 4,
    }
}

fn schedule() -> impl Strategy<Value = Vec<(FailurePoint, u64)>> {
    prop::collection::vec(
        (0..FailurePoint::ALL.len(), 1u64..=1_500).prop_map(|(p, n)| {
            let point = FailurePoint::ALL[p];
            (point, 1 + (n - 1) % occurrence_bound(point))
        }),
        0..=3,
    )
}

fn run_case(
    backend: BackendChoice,
    failures: Vec<(FailurePoint, u64)>,
    parallelism: u16,
    resume_at: Option<u16>,
    seed: u64,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    generate_input(&dir.path().join("input"), 1_200, 40, seed).unwrap();
    let schedule = Arc::new(FailureSchedule::new(failures.clone()));
    let mut first = config(dir.path(), backend, parallelism);
    first.failures = schedule.clone();
    if let (Some(_), BackendChoice::Fs | BackendChoice::Lsm) = (resume_at, backend) {
        // Stop at the first failure, then resume in a new "process" at another parallelism.
        first.restart.max_restarts = 0;
        if run_job(&first).is_err() {
            let mut second = config(dir.path(), backend, resume_at.unwrap_or(1));
            second.failures = schedule;
            let summary = run_job(&second).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(!summary.already_finished || failures.is_empty());
        }
    } else {
        run_job(&first).map_err(|e| TestCaseError::fail(format!("{failures:?}: {e}")))?;
    }
    support::oracle::assert_exactly_once(
        &dir.path().join("input"),
        &dir.path().join("out"),
        &format!("{failures:?} p={parallelism} resume={resume_at:?}"),
    );
    // A rerun after the job finished is a no-op.
    let again = run_job(&config(dir.path(), backend, parallelism)).unwrap();
    prop_assert!(again.already_finished);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn memory_backend_output_is_exactly_once(
        failures in schedule(),
        parallelism in 1u16..=3,
        seed in any::<u64>(),
    ) {
        run_case(BackendChoice::Memory, failures, parallelism, None, seed)?;
    }

    #[test]
    fn fs_backend_output_is_exactly_once(
        failures in schedule(),
        parallelism in 1u16..=3,
        resume_at in prop::option::of(1u16..=4),
        seed in any::<u64>(),
    ) {
        run_case(BackendChoice::Fs, failures, parallelism, resume_at, seed)?;
    }

}

proptest! {
    // `PROPTEST_CASES=256 cargo test --release --test exactly_once lsm` for more.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn lsm_backend_output_is_exactly_once(
        failures in schedule(),
        parallelism in 1u16..=3,
        resume_at in prop::option::of(1u16..=4),
        seed in any::<u64>(),
    ) {
        run_case(BackendChoice::Lsm, failures, parallelism, resume_at, seed)?;
    }
}

/// The failure-free run commits exactly the lines the input implies, and a run with failures
/// commits the same lines as the failure-free run.
#[test]
fn failure_free_and_failing_runs_commit_the_same_lines() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean");
    let failing = dir.path().join("failing");
    for d in [&clean, &failing] {
        std::fs::create_dir_all(d).unwrap();
        generate_input(&d.join("input"), 3_000, 100, 7).unwrap();
    }
    run_job(&config(&clean, BackendChoice::Fs, 2)).unwrap();
    let mut with_failures = config(&failing, BackendChoice::Fs, 2);
    with_failures.failures = Arc::new(FailureSchedule::new(vec![
        (FailurePoint::OperatorRecord, 700),
        (FailurePoint::SinkCommit, 1),
        (FailurePoint::AfterCheckpointPersisted, 1),
    ]));
    let summary = run_job(&with_failures).unwrap();
    assert!(summary.restores >= 1, "{summary:?}");
    let clean_lines = support::oracle::committed(&clean.join("out"));
    assert_eq!(clean_lines.len(), 3_000);
    assert_eq!(
        clean_lines,
        support::oracle::committed(&failing.join("out"))
    );
    support::oracle::assert_exactly_once(&clean.join("input"), &clean.join("out"), "clean run");
}

/// A checkpoint whose snapshot outlives the timeout is aborted and the job still finishes.
#[test]
fn slow_snapshots_time_out_and_the_job_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    generate_input(&dir.path().join("input"), 2_000, 50, 3).unwrap();
    let mut config = config(dir.path(), BackendChoice::Memory, 1);
    config.checkpoints.timeout = Duration::from_millis(5);
    config.checkpoints.tolerable_failures = u32::MAX;
    config.checkpoints.interval = Some(Duration::from_millis(10));
    config.failures =
        Arc::new(FailureSchedule::none().with_slow_async_snapshots(3, Duration::from_millis(30)));
    let summary = run_job(&config).unwrap();
    assert_eq!(summary.events, 2_000);
    let timed_out = summary
        .history
        .iter()
        .filter(|r| r.status == CheckpointStatus::Aborted("timed out".into()))
        .count();
    assert!(timed_out >= 1, "{:?}", summary.history);
    assert!(
        summary
            .history
            .iter()
            .any(|r| r.status == CheckpointStatus::Completed)
    );
    support::oracle::assert_exactly_once(
        &dir.path().join("input"),
        &dir.path().join("out"),
        "slow snapshots",
    );
}
