//! `flowstate run`: command-line arguments, the summary it prints, and the process-wide log
//! subscriber and Prometheus exporter the binary installs (the library itself installs neither).
//!
//! Exit codes: 0 done (or already done), 1 runtime error, 2 usage error; never a panic.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use super::BackendChoice;
use super::coordinator::{CheckpointOptions, completion_rate, format_table};
use super::growth::GrowthAlert;
use super::job::{JobConfig, JobSummary, run_job};
use crate::observe;

pub use super::demo::demo_command;
pub use crate::inspect::inspect_command;

/// The log filter when `RUST_LOG` is unset or invalid: warnings and errors only, so progress
/// lines and the summary stay readable.
pub const DEFAULT_LOG_FILTER: &str = "warn";

/// Histogram buckets of the `*_seconds` metrics: 0.5 ms to 60 s.
const SECONDS_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Arguments of `flowstate run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Input file: UTF-8 lines `key,value` (key 1..=256 bytes without commas, value an i64).
    #[arg(long)]
    pub input: PathBuf,
    /// Output directory: committed `part-<task>-<n>` files and `rejected/`.
    #[arg(long)]
    pub output: PathBuf,
    /// State directory: checkpoints and task state; rerun with the same one to resume.
    #[arg(long)]
    pub state: PathBuf,
    /// Where checkpoints go: a storage URI (`s3://bucket/prefix`, `file:///path`, …) or a
    /// directory; default: inside --state. Credentials and endpoint come from the environment
    /// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION). Working files,
    /// the lock and local-recovery copies stay in --state.
    #[arg(long, value_name = "URI")]
    pub checkpoint_storage: Option<String>,
    /// State backend: lsm (default, incremental checkpoints), fs (heap state, full checkpoints)
    /// or memory (cannot resume after a crash).
    #[arg(long, default_value = "lsm", value_parser = parse_backend)]
    pub backend: BackendChoice,
    /// Operator and sink parallelism (may change between reruns: state is rescaled).
    #[arg(long, default_value_t = 1)]
    pub parallelism: u16,
    /// Number of key groups (fixed for the life of the state directory; default 128).
    #[arg(long)]
    pub max_parallelism: Option<u16>,
    /// Checkpoint interval in milliseconds; 0 checkpoints only at the end of the input.
    #[arg(long, default_value_t = 200)]
    pub checkpoint_interval_ms: u64,
    /// Completed checkpoints to keep.
    #[arg(long, default_value_t = 3)]
    pub retained: usize,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Serve the metrics in Prometheus text format at `http://ADDR/metrics` while the job runs
    /// (e.g. 127.0.0.1:9898).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Resume from an older checkpoint when a newer one is damaged or missing (its `_metadata`
    /// does not decode, or is gone while output it committed remains). The committed output of
    /// the epochs after the older checkpoint is first moved to
    /// `<output>/.superseded-after-<id>/`, so the result is again exactly-once. Without this flag
    /// such a run exits 1 and says what it found.
    #[arg(long)]
    pub allow_older_checkpoint: bool,
    /// Warn when the state size grew by more than this fraction (0.5 = 50 %) over the last
    /// `--state-growth-window` completed checkpoints. Off by default.
    #[arg(long, value_name = "FRACTION")]
    pub state_growth_alert: Option<f64>,
    /// Completed checkpoints the growth alert looks back over.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub state_growth_window: usize,
    /// One memory budget in MiB for the state of every task (lsm backend): write caches,
    /// memtables, block caches, table indexes and filters and checkpoint write logs together
    /// stay within it; caches evict, memtables flush and writers wait when it is full.
    #[arg(long, value_name = "MiB")]
    pub memory: Option<usize>,
}

fn parse_backend(name: &str) -> Result<BackendChoice, String> {
    BackendChoice::parse(name)
        .ok_or_else(|| format!("unknown backend '{name}' (expected lsm, fs or memory)"))
}

/// Runs `flowstate run`; returns the process exit code.
pub fn run_command(args: &RunArgs) -> u8 {
    run_command_on(
        args,
        crate::fs::std_fs(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    )
}

/// [`run_command`] with the state and output directories on `fs`, the summary written to `out`
/// and the error messages to `err` (progress lines still go to stderr).
pub fn run_command_on(
    args: &RunArgs,
    fs: crate::fs::FsRef,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let most = super::job::MAX_PARALLELISM_TASKS;
    if args.parallelism == 0 || args.parallelism > most {
        let _ = writeln!(
            err,
            "error: --parallelism must be in 1..={most} (each task runs three threads), not {}",
            args.parallelism
        );
        return 2;
    }
    if args.retained == 0 {
        let _ = writeln!(err, "error: --retained must be at least 1");
        return 2;
    }
    if let Some(max) = args.max_parallelism
        && (max == 0 || max > 32768 || args.parallelism > max)
    {
        let _ = writeln!(
            err,
            "error: --max-parallelism must be in 1..=32768 and at least --parallelism ({})",
            args.parallelism
        );
        return 2;
    }
    if args.checkpoint_storage.is_some() && !args.backend.persistent() {
        let _ = writeln!(
            err,
            "error: --checkpoint-storage needs a persistent backend (--backend lsm or fs); the \
             memory backend keeps its checkpoints in process memory"
        );
        return 2;
    }
    if let Some(fraction) = args.state_growth_alert
        && !(fraction.is_finite() && fraction > 0.0)
    {
        let _ = writeln!(
            err,
            "error: --state-growth-alert must be a fraction above 0 (e.g. 0.5 for 50%)"
        );
        return 2;
    }
    if args.state_growth_window == 0 {
        let _ = writeln!(err, "error: --state-growth-window must be at least 1");
        return 2;
    }
    if let Some(addr) = args.metrics_addr
        && let Err(e) = serve_metrics(addr)
    {
        let _ = writeln!(err, "error: {e}");
        return 1;
    }
    if args.memory == Some(0) {
        let _ = writeln!(err, "error: --memory must be at least 1 (MiB)");
        return 2;
    }
    let mut config = JobConfig::new(&args.input, &args.output, &args.state);
    config.fs = fs;
    config.memory_budget = args.memory.map(crate::budget::MemoryBudget::with_mib);
    config.checkpoint_storage = args.checkpoint_storage.clone();
    config.backend = args.backend;
    config.parallelism = args.parallelism;
    config.max_parallelism = args.max_parallelism;
    config.progress = !args.quiet;
    config.allow_older_checkpoint = args.allow_older_checkpoint;
    config.checkpoints = CheckpointOptions {
        interval: (args.checkpoint_interval_ms > 0)
            .then(|| Duration::from_millis(args.checkpoint_interval_ms)),
        retained: args.retained,
        growth_alert: args.state_growth_alert.map(|fraction| GrowthAlert {
            fraction,
            checkpoints: args.state_growth_window,
        }),
        ..CheckpointOptions::default()
    };
    match run_job(&config) {
        Ok(summary) => {
            let _ = write!(out, "{}", format_summary(&summary));
            0
        }
        Err(e) => {
            report_error(err, &e);
            1
        }
    }
}

/// Writes `error: <e>` and, when the first cause is damage on disk, what the user can do.
pub fn report_error(err: &mut dyn Write, e: &crate::Error) {
    let _ = writeln!(err, "error: {e}");
    if e.root_cause().is_corruption() {
        let _ = writeln!(
            err,
            "hint: the file is damaged; `flowstate verify` checks every checkpoint, and an \
             older checkpoint may still restore"
        );
    }
}

/// The summary `flowstate run` prints.
pub fn format_summary(summary: &JobSummary) -> String {
    if summary.already_finished {
        return format!(
            "job already finished (final checkpoint {}): nothing to do; {} events, {} rejected lines\n",
            summary.final_checkpoint, summary.events, summary.rejected
        );
    }
    let (completed, aborted, rate) = completion_rate(&summary.history);
    let resumed = summary
        .resumed_from
        .map_or("started fresh".to_string(), |id| {
            format!("resumed from checkpoint {id}")
        });
    let mut out = format!(
        "job finished: {} events, {} rejected lines, final checkpoint {}\n\
         this run: {resumed}; {} records processed in {:.2} s ({:.0} events/s); \
         {completed} checkpoints completed, {aborted} aborted (completion rate {:.1}%); {} restores\n",
        summary.events,
        summary.rejected,
        summary.final_checkpoint,
        summary.records_processed,
        summary.elapsed.as_secs_f64(),
        summary.events_per_second(),
        rate * 100.0,
        summary.restores,
    );
    out.push_str(&format_table(&summary.history, 12));
    out
}

/// Installs the process-wide `tracing` subscriber: formatted events on stderr, filtered by
/// `RUST_LOG` (e.g. `RUST_LOG=flowstate=debug`), else [`DEFAULT_LOG_FILTER`]. Does nothing if a
/// subscriber is already installed.
pub fn install_log_subscriber() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colours only on a terminal: logs redirected to a file or a pipe stay plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Installs the Prometheus exporter as the process-wide metrics recorder, serving
/// `GET /metrics` (any path, in fact) on `addr` from a background thread for the rest of the
/// process, and describes every flowstate metric. An error names the address when it cannot be
/// bound (in use, not local) or when a recorder is already installed.
pub fn serve_metrics(addr: SocketAddr) -> Result<(), String> {
    let builder = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(observe::CHECKPOINT_WRITTEN_BYTES.into()),
                &bytes_buckets(),
            )
        })
        .map_err(|e| format!("cannot configure the metrics exporter: {e}"))?;
    builder
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    observe::describe();
    Ok(())
}

/// Histogram buckets of checkpoint bytes: 1 KiB to 16 GiB, powers of 4.
fn bytes_buckets() -> Vec<f64> {
    (0..13).map(|i| 1024.0 * 4f64.powi(i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_on_disk_gets_a_hint_other_errors_do_not() {
        let text = |e: crate::Error| {
            let mut out = Vec::new();
            report_error(&mut out, &e);
            String::from_utf8(out).unwrap()
        };
        let damaged = crate::Error::corruption("chk-3/_metadata", 17, "bad crc32")
            .context("restoring the job");
        let out = text(damaged);
        assert!(out.starts_with("error: restoring the job: corruption in chk-3/_metadata"));
        assert!(
            out.contains("hint:") && out.contains("flowstate verify"),
            "{out}"
        );
        let out = text(crate::Error::invalid("no"));
        assert!(!out.contains("hint:"), "{out}");
        // The library's own message carries no command-line advice.
        let plain = crate::Error::corruption("f", 0, "x").to_string();
        assert!(!plain.contains("flowstate verify"), "{plain}");
    }
}
