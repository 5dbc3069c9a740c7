//! The tracing events of a job's checkpoints, captured by a global fmt subscriber writing to a
//! buffer (its own test binary: the subscriber is process-wide). One job on the lsm backend with
//! an injected failure of the second asynchronous snapshot part must log every checkpoint phase —
//! trigger, sync part, async part, acknowledgement, completion — the failed checkpoint with its
//! reason, the flushes, and the restore after the injected task failure.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowstate::engine::{FailurePoint, FailureSchedule, JobConfig, RestartStrategy, run_job};
use flowstate::internals::generate_input;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_checkpointed_job_logs_its_phases() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("flowstate=debug"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    generate_input(&dir.path().join("input"), 200_000, 500, 3).unwrap();
    let mut config = JobConfig::new(
        dir.path().join("input"),
        dir.path().join("out"),
        dir.path().join("state"),
    );
    config.checkpoints.interval = Some(Duration::from_millis(5));
    // The failure comes late, and the source is paced (at least 300 ms of pauses before it),
    // so checkpoints complete before it even on a loaded machine and the restart restores one.
    config.failures = Arc::new(
        FailureSchedule::new(vec![
            (FailurePoint::AsyncSnapshot, 2),
            (FailurePoint::OperatorRecord, 150_000),
        ])
        .with_source_pace(1_000, Duration::from_millis(2)),
    );
    config.restart = RestartStrategy {
        max_restarts: 3,
        delay: Duration::ZERO,
    };
    let summary = run_job(&config).unwrap();
    assert!(summary.restores >= 1);

    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    for phase in [
        "checkpoint triggered",
        "checkpoint sync part done",
        "checkpoint async part done",
        "lsm incremental checkpoint written",
        "operator acknowledged checkpoint",
        "checkpoint completed",
        "checkpoint async part failed; declining",
        "flush finished",
        "task failure: restarting the job",
        "lsm restore finished",
    ] {
        assert!(log.contains(phase), "no '{phase}' in the log:\n{log}");
    }
    let failed = log
        .lines()
        .find(|l| l.contains("checkpoint failed"))
        .unwrap_or_else(|| panic!("no failed checkpoint in:\n{log}"));
    assert!(
        failed.contains("WARN")
            && failed.contains("reason=declined: operator 0:")
            && failed.contains("injected failure at AsyncSnapshot"),
        "{failed}"
    );
    // The async part's events sit in its span, which names checkpoint and task.
    assert!(
        log.lines()
            .any(|l| l.contains("checkpoint_async{checkpoint_id=") && l.contains("written")),
        "{log}"
    );
}
