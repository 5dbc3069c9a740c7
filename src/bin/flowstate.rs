//! The `flowstate` command-line tool.
//!
//! `run` runs the reference exactly-once job (see `flowstate::engine::cli`); `demo` runs it as a
//! child process, SIGKILLs it mid-run, reruns it until it finishes and checks the output;
//! `verify` checks every checkpoint under a checkpoint-storage directory (or every root of a job's
//! state directory) without changing it;
//! `inspect` lists checkpoints, their sizes and shared files, or diffs two (`inspect`).
//! Usage errors exit 2, runtime errors (and damaged checkpoints) 1; nothing here exits by panic.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use flowstate::checkpoint::storage::{CheckpointStorage, LocalDirStorage};
use flowstate::checkpoint::uri::open_storage;
use flowstate::engine::cli::demo_command;
use flowstate::engine::cli::inspect_command;
use flowstate::engine::cli::{RunArgs, run_command};
use flowstate::verify::{CheckpointStatus, VerifyReport, find_roots, verify_storage};

#[derive(Parser)]
#[command(
    name = "flowstate",
    version,
    about = "Keyed-state storage engine for stream processors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the exactly-once counting job: input `key,value` lines, output `key,count,sum` lines.
    Run(RunArgs),
    /// Run the job as a child process, SIGKILL it mid-run, rerun it until it finishes, verify.
    Demo {
        /// Number of events to generate.
        #[arg(long, default_value_t = 3_000_000)]
        events: u64,
        /// Number of distinct keys.
        #[arg(long, default_value_t = 20_000)]
        keys: u64,
        /// SIGKILLs to deliver before letting a run finish.
        #[arg(long, default_value_t = 2)]
        kills: u32,
        /// Seed of the generated input and kill timing.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Check every checkpoint under a checkpoint-storage directory: each `chk-<id>/_metadata`
    /// decodes, and every file it lists (shared ones too) is present with the listed size and
    /// crc32 and decodes. Given a job's `--state` directory (or `--checkpoint-storage` base),
    /// checks its `job/` root and every task root `tasks/<gen>/t<i>/`. Read only. Exits 0 if
    /// every completed checkpoint is sound, 1 if one is damaged or no checkpoint is found.
    Verify {
        /// The checkpoint-storage root (the directory holding `chk-<id>/` and `shared/`), or a
        /// job's state directory.
        #[arg(required_unless_present = "checkpoint_storage")]
        checkpoint_dir: Option<PathBuf>,
        /// The root as a storage URI instead (`s3://bucket/prefix/...`, `file:///path`); the
        /// credentials come from the environment as for `run`.
        #[arg(long, value_name = "URI", conflicts_with = "checkpoint_dir")]
        checkpoint_storage: Option<String>,
    },
    /// List the checkpoints under a checkpoint-storage directory: id, time (UTC), backend,
    /// states, full size, bytes new since the previous completed checkpoint, file count, then
    /// files by reference count. `--diff A B` compares the files of two checkpoints. Read only.
    /// Exits 0, 1 if the directory cannot be read or a `_metadata` is damaged, 2 on usage errors.
    Inspect {
        /// The checkpoint-storage root (the directory holding `chk-<id>/` and `shared/`).
        #[arg(required_unless_present = "checkpoint_storage")]
        checkpoint_dir: Option<PathBuf>,
        /// The root as a storage URI instead (`s3://bucket/prefix/...`, `file:///path`).
        #[arg(long, value_name = "URI", conflicts_with = "checkpoint_dir")]
        checkpoint_storage: Option<String>,
        /// Compare checkpoints A and B: files only in A, only in B, and in both.
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        diff: Option<Vec<u64>>,
        /// List every referenced file with its reference count.
        #[arg(long, conflicts_with = "diff")]
        files: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    flowstate::engine::cli::install_log_subscriber();
    match cli.command {
        Command::Run(args) => ExitCode::from(run_command(&args)),
        Command::Verify {
            checkpoint_dir,
            checkpoint_storage,
        } => match open_root(checkpoint_dir, checkpoint_storage) {
            Ok(storage) => verify(storage.as_ref()),
            Err(code) => ExitCode::from(code),
        },
        Command::Inspect {
            checkpoint_dir,
            checkpoint_storage,
            diff,
            files,
        } => match open_root(checkpoint_dir, checkpoint_storage) {
            Ok(storage) => {
                ExitCode::from(inspect_command(storage.as_ref(), diff.as_deref(), files))
            }
            Err(code) => ExitCode::from(code),
        },
        Command::Demo {
            events,
            keys,
            kills,
            seed,
        } => match demo_command(events, keys.max(1), kills, seed) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                flowstate::engine::cli::report_error(&mut std::io::stderr(), &e);
                ExitCode::from(1)
            }
        },
    }
}

/// Opens the checkpoint storage to read: an existing directory, or a URI. Prints the error and
/// returns the exit code (2 usage, 1 runtime) when it cannot.
fn open_root(dir: Option<PathBuf>, uri: Option<String>) -> Result<Arc<dyn CheckpointStorage>, u8> {
    let opened = match (dir, uri) {
        (Some(dir), _) => {
            // `LocalDirStorage::open` would create a missing directory: check first, change nothing.
            if !dir.is_dir() {
                eprintln!("error: {} is not a directory", dir.display());
                return Err(2);
            }
            LocalDirStorage::open(&dir).map(|s| Arc::new(s) as Arc<dyn CheckpointStorage>)
        }
        (None, Some(uri)) => open_storage(&uri),
        (None, None) => {
            eprintln!("error: give a checkpoint directory or --checkpoint-storage URI");
            return Err(2);
        }
    };
    opened.map_err(|e| {
        flowstate::engine::cli::report_error(&mut std::io::stderr(), &e);
        1
    })
}

/// Verifies the checkpoint root `storage`, or every checkpoint root of a job's state directory
/// (`job/` and each task root under `tasks/`); exits 1 when nothing checkpoint-like is there.
fn verify(storage: &dyn CheckpointStorage) -> ExitCode {
    let fail = |e: flowstate::Error| {
        flowstate::engine::cli::report_error(&mut std::io::stderr(), &e);
        ExitCode::from(1)
    };
    let roots = match find_roots(storage) {
        Ok(roots) => roots,
        Err(e) => return fail(e),
    };
    if roots.is_empty() {
        eprintln!(
            "error: no checkpoint found under {}: expected a checkpoint root (chk-<id>/ \
             directories) or a job's --state directory (job/ and tasks/<gen>/t<i>/)",
            storage.location()
        );
        return ExitCode::from(1);
    }
    if roots == [""] {
        let report = match verify_storage(storage) {
            Ok(report) => report,
            Err(e) => return fail(e),
        };
        print_report(&report);
        if report.checkpoints.is_empty() {
            eprintln!("error: no checkpoint found under {}", storage.location());
            return ExitCode::from(1);
        }
        return if report.is_sound() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    println!(
        "{}: a job state directory with {} checkpoint roots (job/ and task roots)",
        storage.location(),
        roots.len()
    );
    let (mut total, mut sound) = (0, true);
    for root in &roots {
        let location = format!("{}/{root}", storage.location().trim_end_matches('/'));
        let report = match open_storage(&location).and_then(|s| verify_storage(s.as_ref())) {
            Ok(report) => report,
            Err(e) => return fail(e),
        };
        println!("== {location}");
        print_report(&report);
        total += report.checkpoints.len();
        sound &= report.is_sound();
    }
    println!(
        "{} roots, {total} checkpoints: {}",
        roots.len(),
        if sound { "all sound" } else { "DAMAGE FOUND" }
    );
    if total == 0 {
        eprintln!("error: no checkpoint found under {}", storage.location());
        return ExitCode::from(1);
    }
    if sound {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_report(report: &VerifyReport) {
    let (mut sound, mut damaged, mut incomplete) = (0, 0, 0);
    for c in &report.checkpoints {
        let name = format!("chk-{}", c.checkpoint_id);
        match &c.status {
            CheckpointStatus::Sound => {
                sound += 1;
                println!(
                    "{name} OK  {} files {}",
                    c.file_count,
                    human_bytes(c.total_bytes)
                );
            }
            CheckpointStatus::Incomplete => {
                incomplete += 1;
                println!("{name} INCOMPLETE  no _metadata (never completed; not used by restore)");
            }
            CheckpointStatus::Damaged(problems) => {
                damaged += 1;
                let mut lines = problems.iter();
                if let Some(first) = lines.next() {
                    println!("{name} BAD {first}");
                }
                for more in lines {
                    println!("{:width$} {more}", "", width = name.len() + 4);
                }
            }
        }
    }
    println!(
        "{} checkpoints: {sound} OK, {damaged} BAD, {incomplete} incomplete",
        report.checkpoints.len()
    );
}

/// `1536` -> `1.5 KiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
