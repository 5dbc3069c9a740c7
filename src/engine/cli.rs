//! `flowstate run`: command-line arguments and the summary it prints.
//!
//! Exit codes: 0 done (or already done), 1 runtime error, 2 usage error; never a panic.

use std::path::PathBuf;
use std::time::Duration;

use super::BackendChoice;
use super::coordinator::{CheckpointOptions, completion_rate, format_table};
use super::job::{JobConfig, JobSummary, run_job};

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
}

fn parse_backend(name: &str) -> Result<BackendChoice, String> {
    BackendChoice::parse(name)
        .ok_or_else(|| format!("unknown backend '{name}' (expected lsm, fs or memory)"))
}

/// Runs `flowstate run`; returns the process exit code.
pub fn run_command(args: &RunArgs) -> u8 {
    if args.parallelism == 0 {
        eprintln!("error: --parallelism must be at least 1");
        return 2;
    }
    if args.retained == 0 {
        eprintln!("error: --retained must be at least 1");
        return 2;
    }
    if let Some(max) = args.max_parallelism
        && (max == 0 || max > 32768 || args.parallelism > max)
    {
        eprintln!(
            "error: --max-parallelism must be in 1..=32768 and at least --parallelism ({})",
            args.parallelism
        );
        return 2;
    }
    if args.checkpoint_storage.is_some() && !args.backend.persistent() {
        eprintln!(
            "error: --checkpoint-storage needs a persistent backend (--backend lsm or fs); the \
             memory backend keeps its checkpoints in process memory"
        );
        return 2;
    }
    let mut config = JobConfig::new(&args.input, &args.output, &args.state);
    config.checkpoint_storage = args.checkpoint_storage.clone();
    config.backend = args.backend;
    config.parallelism = args.parallelism;
    config.max_parallelism = args.max_parallelism;
    config.progress = !args.quiet;
    config.checkpoints = CheckpointOptions {
        interval: (args.checkpoint_interval_ms > 0)
            .then(|| Duration::from_millis(args.checkpoint_interval_ms)),
        retained: args.retained,
        ..CheckpointOptions::default()
    };
    match run_job(&config) {
        Ok(summary) => {
            print!("{}", format_summary(&summary));
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
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
