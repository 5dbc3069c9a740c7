//! `serve_metrics` (what `flowstate run --metrics-addr` calls): the Prometheus exporter is the
//! process-wide recorder, so this test has its own binary. A real job runs on the lsm backend,
//! then `GET /metrics` over a plain TcpStream must show the flowstate metrics with the job's
//! numbers, and a second exporter on the same port is refused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use flowstate::engine::cli::serve_metrics;
use flowstate::engine::{CheckpointStatus, JobConfig, run_job};
use flowstate::internals::generate_input;
use flowstate::observe;

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the sample line `name{labels} value` (or `name value`) that starts with `prefix`.
fn value(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{body}"))
}

#[test]
fn a_job_s_metrics_are_scraped_in_prometheus_text_format() {
    let addr = free_port();
    serve_metrics(addr).unwrap();
    let dir = tempfile::tempdir().unwrap();
    generate_input(&dir.path().join("input"), 20_000, 500, 7).unwrap();
    let mut config = JobConfig::new(
        dir.path().join("input"),
        dir.path().join("out"),
        dir.path().join("state"),
    );
    config.parallelism = 2;
    config.checkpoints.interval = Some(Duration::from_millis(5));
    let summary = run_job(&config).unwrap();
    let completed = summary
        .history
        .iter()
        .filter(|r| r.status == CheckpointStatus::Completed)
        .count();
    assert!(completed >= 1);

    let body = scrape(addr);
    assert!(
        body.contains(&format!(
            "# TYPE {} counter",
            observe::CHECKPOINTS_COMPLETED_TOTAL
        )),
        "{body}"
    );
    assert_eq!(
        value(&body, observe::CHECKPOINTS_COMPLETED_TOTAL) as usize,
        completed
    );
    let last = summary
        .history
        .iter()
        .rev()
        .find(|r| r.status == CheckpointStatus::Completed)
        .unwrap();
    assert_eq!(
        value(&body, observe::CHECKPOINT_STATE_SIZE_BYTES) as u64,
        last.state_size
    );
    // Histograms have buckets, a sum and a count.
    let count = format!("{}_count", observe::CHECKPOINT_DURATION_SECONDS);
    assert_eq!(value(&body, &count) as usize, completed);
    assert!(body.contains(&format!(
        "{}_bucket{{le=\"+Inf\"}}",
        observe::CHECKPOINT_SYNC_SECONDS
    )));
    // Per-state sizes of both tasks' key groups (64 of the default 128 each).
    for range in ["0-63", "64-127"] {
        let sample = format!(
            "{}{{state=\"count_sum\",key_groups=\"{range}\"}}",
            observe::STATE_SIZE_BYTES
        );
        assert!(value(&body, &sample) > 0.0, "{sample}");
    }
    assert!(value(&body, observe::LSM_FLUSHES_TOTAL) >= 1.0);
    assert!(body.contains(&format!(
        "# HELP {}",
        observe::LSM_FLUSH_WRITTEN_BYTES_TOTAL
    )));

    let taken = serve_metrics(addr).unwrap_err();
    assert!(taken.contains(&addr.to_string()), "{taken}");
}
