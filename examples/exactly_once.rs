//! The exactly-once engine: the reference job (running count and sum per key) on 50,000 events.
//! The first run, at parallelism 2 on the LSM backend, has a sink fail once (it restarts from
//! its latest completed checkpoint) and then an operator fail with no restarts left, so it
//! stops with an error; the second run resumes from the latest completed checkpoint at
//! parallelism 3 (rescaling by key group) and finishes. The committed output must be exactly
//! that of one run without failures: every count of every key once, with the right sum. Exits
//! non-zero on a wrong answer.
//!
//! `cargo run --release --example exactly_once`

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flowstate::engine::{BackendChoice, FailurePoint, FailureSchedule, JobConfig, run_job};

const EVENTS: i64 = 50_000;
const KEYS: i64 = 300;

fn write_input(path: &Path) -> std::io::Result<()> {
    let mut text = String::new();
    for i in 0..EVENTS {
        text.push_str(&format!("key-{},{}\n", i % KEYS, i - EVENTS / 2));
        if i % 10_000 == 0 {
            text.push_str("a line that is not an event\n");
        }
    }
    std::fs::write(path, text)
}

/// Per key, the (count, sum) of each of its output lines.
type Lines = BTreeMap<String, Vec<(i64, i128)>>;

/// Every committed `key,count,sum` line, by key.
fn committed(output: &Path) -> Result<Lines, Box<dyn std::error::Error>> {
    let mut lines = Lines::new();
    for entry in std::fs::read_dir(output)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if !name.is_some_and(|n| n.starts_with("part-")) {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            let fields: Vec<&str> = line.split(',').collect();
            let [key, count, sum] = fields[..] else {
                return Err(format!("{}: bad line {line:?}", path.display()).into());
            };
            lines
                .entry(key.to_string())
                .or_default()
                .push((count.parse()?, sum.parse()?));
        }
    }
    Ok(lines)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("events.txt");
    write_input(&input)?;
    let output = dir.path().join("out");

    let mut config = JobConfig::new(&input, &output, dir.path().join("state"));
    config.backend = BackendChoice::Lsm;
    config.parallelism = 2;
    config.batch_records = 64;
    config.checkpoints.interval = Some(Duration::from_millis(10));
    config.restart.delay = Duration::from_millis(10);
    config.restart.max_restarts = 1;
    // A slow source, so that checkpoints complete between the failures.
    config.failures = Arc::new(
        FailureSchedule::new(vec![
            (FailurePoint::SinkWrite, 40),
            (FailurePoint::OperatorRecord, 35_000),
        ])
        .with_source_pace(500, Duration::from_millis(2)),
    );
    let first = run_job(&config);
    assert!(
        first.is_err(),
        "the first run must stop at its second failure"
    );
    assert_eq!(config.failures.remaining(), 0);
    println!(
        "first run stopped: {}",
        first.err().map(|e| e.to_string()).unwrap_or_default()
    );

    config.parallelism = 3;
    config.failures = Arc::new(FailureSchedule::none());
    let second = run_job(&config)?;
    let resumed = second
        .resumed_from
        .expect("the second run resumes from a checkpoint");
    assert_eq!((second.events, second.rejected), (EVENTS as u64, 5));

    let lines = committed(&output)?;
    assert_eq!(lines.len(), KEYS as usize);
    for (key, mut counts) in lines {
        counts.sort();
        let k: i64 = key.trim_start_matches("key-").parse()?;
        let values: Vec<i64> = (0..EVENTS)
            .filter(|i| i % KEYS == k)
            .map(|i| i - EVENTS / 2)
            .collect();
        let expected: Vec<(i64, i128)> = values
            .iter()
            .scan(0i128, |sum, v| {
                *sum += i128::from(*v);
                Some(*sum)
            })
            .enumerate()
            .map(|(n, sum)| (n as i64 + 1, sum))
            .collect();
        assert_eq!(counts, expected, "{key}");
    }
    println!(
        "exactly_once: {EVENTS} events, {KEYS} keys; resumed from checkpoint {resumed} at \
         parallelism 3, output exactly once in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
