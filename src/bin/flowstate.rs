//! The `flowstate` command-line tool.
//!
//! `demo` runs a small keyed job on typed state, snapshots, rescales and checks the totals;
//! `verify` checks every checkpoint under a checkpoint-storage directory without changing it.
//! Usage errors exit 2, runtime errors (and damaged checkpoints) 1; nothing here exits by panic.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use flowstate::checkpoint::storage::LocalDirStorage;
use flowstate::checkpoint::verify::{CheckpointStatus, VerifyReport, verify_storage};
use flowstate::keys::{DEFAULT_MAX_PARALLELISM, KeyGroupRange};
use flowstate::{BackendConfig, KeyedState, MemoryBackend, StateBackend};

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
    /// Run a small keyed counting job, snapshot it, restore it at another parallelism, check it.
    Demo {
        /// Number of events to generate.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Number of distinct keys.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
    },
    /// Check every checkpoint under a checkpoint-storage directory: each `chk-<id>/_metadata`
    /// decodes, and every file it lists (shared ones too) is present with the listed size and
    /// crc32 and decodes. Read only. Exits 0 if every completed checkpoint is sound, else 1.
    Verify {
        /// The checkpoint-storage root (the directory holding `chk-<id>/` and `shared/`).
        checkpoint_dir: PathBuf,
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
    let result = match cli.command {
        Command::Demo { events, keys } => demo(events, keys.max(1)),
        Command::Verify { checkpoint_dir } => return verify(&checkpoint_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Prints one line per checkpoint (and one per further damaged file) and a summary.
fn verify(dir: &std::path::Path) -> ExitCode {
    // `LocalDirStorage::open` would create a missing directory: check first, change nothing.
    if !dir.is_dir() {
        eprintln!("error: {} is not a directory", dir.display());
        return ExitCode::from(2);
    }
    let report = match LocalDirStorage::open(dir).and_then(|s| verify_storage(&s)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    print_report(&report);
    if report.is_sound() {
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

/// Counts events per key on one task, snapshots, restores into two tasks and checks every total.
fn demo(events: u64, keys: u64) -> flowstate::Result<()> {
    let started = Instant::now();
    let max = DEFAULT_MAX_PARALLELISM;
    let keyed = KeyedState::new(MemoryBackend::new(BackendConfig::new(
        u32::from(max),
        KeyGroupRange::all(max),
    )?));
    let count = keyed.value_state::<(u64, i64)>("count_sum")?;
    for i in 0..events {
        let key = format!("key-{}", i.wrapping_mul(2_654_435_761) % keys);
        keyed.set_current_key(&key)?;
        let (n, sum) = count.value()?.unwrap_or((0, 0));
        count.update(&(n + 1, sum + (i % 100) as i64))?;
    }
    let handle = keyed.snapshot(1)?.run()?;
    println!("processed {events} events over {keys} keys on 1 task, snapshot 1 taken");

    let mut restored_total = 0u64;
    for index in 0..2 {
        let range = KeyGroupRange::for_operator(max, 2, index)?;
        let config = BackendConfig::new(u32::from(max), range)?;
        let task = KeyedState::new(MemoryBackend::new(config));
        task.restore(std::slice::from_ref(&handle), range)?;
        let state = task.value_state::<(u64, i64)>("count_sum")?;
        let owned: Vec<String> = task.keys("count_sum")?;
        for key in &owned {
            task.set_current_key(key)?;
            restored_total += state.value()?.map_or(0, |(n, _)| n);
        }
        let entries =
            task.with_backend(|b: &mut dyn StateBackend| -> flowstate::Result<usize> {
                let id = b.register(&flowstate::StateDescriptor::new(
                    "count_sum",
                    flowstate::StateKind::Value,
                ))?;
                Ok(b.scan_prefix(id, &[])?.count())
            })?;
        println!("task {index} of 2 owns key groups {range}: {entries} keys restored");
    }
    let verdict = if restored_total == events {
        "OK"
    } else {
        "MISMATCH"
    };
    println!(
        "verdict: {verdict} ({restored_total} of {events} events accounted for after rescale 1 -> 2) in {:.2?}",
        started.elapsed()
    );
    if restored_total == events {
        Ok(())
    } else {
        Err(flowstate::Error::invalid("demo totals do not match"))
    }
}
