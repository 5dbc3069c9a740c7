//! A job's final error names its first cause and keeps its kind; a cause no restart can cure
//! (a full disk) stops the job at once instead of restarting it from the last checkpoint.
//! The OS errors are injected at the engine's failure points (no real full disk needed).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate::Error;
use flowstate::engine::{
    BackendChoice, CheckpointOptions, FailurePoint, FailureSchedule, JobConfig, RestartStrategy,
    run_job,
};

fn config(dir: &Path, failures: FailureSchedule, max_restarts: u32) -> JobConfig {
    let input: String = (0..20_000)
        .map(|i| format!("k{},{}\n", i % 31, i))
        .collect();
    std::fs::write(dir.join("input"), input).unwrap();
    let mut config = JobConfig::new(dir.join("input"), dir.join("out"), dir.join("state"));
    config.backend = BackendChoice::Fs;
    config.batch_records = 16;
    config.checkpoints = CheckpointOptions::default()
        .interval(Some(Duration::from_millis(1)))
        .tolerable_failures(3);
    // Restarts are slow: a job that restarted at all would take seconds.
    config.restart = RestartStrategy {
        max_restarts,
        delay: Duration::from_secs(3),
    };
    config.failures = Arc::new(failures);
    config
}

fn assert_io(error: &Error, errno: i32, path: &Path) {
    match error.root_cause() {
        Error::Io { path: p, source } => {
            assert_eq!(source.raw_os_error(), Some(errno), "{error}");
            assert_eq!(p, path, "{error}");
        }
        other => panic!("root cause is not an I/O error: {other:?} ({error})"),
    }
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(!text.contains("invalid argument"), "{text}");
}

#[test]
fn a_full_disk_in_the_sink_stops_the_job_at_once_naming_path_and_os_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out/.part-0-0.inprogress");
    let failures = FailureSchedule::none().with_os_error(FailurePoint::SinkWrite, 5, 28, &path);
    let started = Instant::now();
    let error = run_job(&config(dir.path(), failures, 10)).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the job restarted: {error}"
    );
    assert_io(&error, 28, &path);
    let text = error.to_string();
    assert!(text.contains("No space left on device"), "{text}");
    assert!(text.contains("sink 0 failed"), "{text}");
    assert!(text.contains("without retrying"), "{text}");
}

#[test]
fn a_full_disk_while_checkpointing_stops_the_job_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir
        .path()
        .join("state/tasks/000001/t0/chk-2/kg-00000-00127");
    let failures = FailureSchedule::none().with_os_error(FailurePoint::AsyncSnapshot, 2, 28, &path);
    let started = Instant::now();
    let error = run_job(&config(dir.path(), failures, 10)).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the job restarted: {error}"
    );
    assert_io(&error, 28, &path);
    assert!(
        error.to_string().contains("No space left on device"),
        "{error}"
    );
}

#[test]
fn read_only_file_system_and_quota_stop_at_once_too() {
    for errno in [30, 122] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/.part-0-0.inprogress");
        let failures =
            FailureSchedule::none().with_os_error(FailurePoint::SinkWrite, 3, errno, &path);
        let started = Instant::now();
        let error = run_job(&config(dir.path(), failures, 10)).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{errno}: {error}"
        );
        assert_io(&error, errno, &path);
    }
}

#[test]
fn a_curable_io_error_is_retried_and_the_final_error_keeps_it() {
    // EIO (5) may pass: the job restarts; with no restarts allowed the final error is still the
    // I/O error, named once, not relabelled.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out/.part-0-0.inprogress");
    let failures = FailureSchedule::none().with_os_error(FailurePoint::SinkWrite, 5, 5, &path);
    let error = run_job(&config(dir.path(), failures, 0)).unwrap_err();
    assert_io(&error, 5, &path);
    let text = error.to_string();
    assert!(
        text.starts_with("job failed after 0 restarts: sink 0 failed: I/O error"),
        "{text}"
    );
    assert_eq!(text.matches("os error 5").count(), 1, "{text}");

    // With restarts allowed it recovers and finishes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out/.part-0-0.inprogress");
    let failures = FailureSchedule::none().with_os_error(FailurePoint::SinkWrite, 5, 5, &path);
    let mut config = config(dir.path(), failures, 3);
    config.restart.delay = Duration::ZERO;
    let summary = run_job(&config).unwrap();
    assert_eq!(summary.events, 20_000);
}

#[test]
fn tolerated_checkpoint_failures_name_the_first_cause() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir
        .path()
        .join("state/tasks/000001/t0/chk-1/kg-00000-00127");
    // EIO at four snapshots in a row: more than the 3 tolerated.
    let mut failures = FailureSchedule::none();
    for n in 1..=4 {
        failures = failures.with_os_error(FailurePoint::AsyncSnapshot, n, 5, &path);
    }
    let error = run_job(&config(dir.path(), failures, 0)).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("consecutive checkpoint failures exceed the 3 tolerated"),
        "{text}"
    );
    assert!(text.contains("Input/output error"), "{text}");
    assert_io(&error, 5, &path);
}
