//! The `flowstate` command-line tool.
//!
//! `run` runs the reference exactly-once job (see `flowstate::engine::cli`); `demo` runs it as a
//! child process, SIGKILLs it mid-run, reruns it until it finishes and checks the output.
//! Usage errors exit 2, runtime errors 1; nothing here exits by panic.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flowstate::engine::cli::{RunArgs, run_command};
use flowstate::engine::demo::demo_command;

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
        #[arg(long, default_value_t = 300_000)]
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
    match cli.command {
        Command::Run(args) => ExitCode::from(run_command(&args)),
        Command::Demo {
            events,
            keys,
            kills,
            seed,
        } => match demo_command(events, keys.max(1), kills, seed) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
    }
}
