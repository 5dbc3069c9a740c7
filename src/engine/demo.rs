//! `flowstate demo`: runs `flowstate run` as a child process, SIGKILLs it mid-run, reruns it
//! (with changing parallelism) until it finishes, and checks the committed output exactly.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::output_check::{check_output, expected_output};
use super::sink::committed_files;
use super::source::{SplitMix, generate_input};
use crate::error::{Error, Result};
use crate::fs::{FileSystem, StdFs, create_dir_durable};

/// Runs the demo; `Ok(true)` when the output is exactly right.
pub fn demo_command(events: u64, keys: u64, kills: u32, seed: u64) -> Result<bool> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("flowstate-demo-{}-{}", std::process::id(), seed));
    // The scratch directory holds the runs' state and output: through the file-system seam.
    let seam: &dyn FileSystem = &StdFs;
    let _ = seam.remove_dir_all(&dir);
    create_dir_durable(seam, &dir)?;
    let result = demo_in(&dir, events, keys, kills, seed, started);
    let _ = seam.remove_dir_all(&dir);
    result
}

fn demo_in(
    dir: &Path,
    events: u64,
    keys: u64,
    kills: u32,
    seed: u64,
    started: Instant,
) -> Result<bool> {
    let input = dir.join("input.txt");
    let output = dir.join("out");
    let state = dir.join("state");
    generate_input(&input, events, keys, seed)?;
    println!(
        "generated {events} events over {keys} keys (plus invalid lines) in {}",
        input.display()
    );
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    let mut rng = SplitMix(seed ^ 0xD1B5_4A32_D192_ED03);
    let parallelisms = [2u16, 3, 1, 4];
    let mut killed = 0u32;
    let mut summary = String::new();
    for run in 0.. {
        if started.elapsed() > Duration::from_secs(50) {
            return Err(Error::invalid("demo took too long"));
        }
        let parallelism = parallelisms[run % parallelisms.len()];
        let mut child = spawn_run(&exe, &input, &output, &state, parallelism)?;
        if killed < kills {
            let before = committed_files(&StdFs, &output)?.len();
            let exited = wait_for_progress(&mut child, &output, before, &mut rng)?;
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
                killed += 1;
                println!(
                    "run {}: parallelism {parallelism}, SIGKILLed mid-run ({} committed files so far)",
                    run + 1,
                    committed_files(&StdFs, &output)?.len()
                );
                continue;
            }
        }
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        let status = child.wait().map_err(|e| Error::io("flowstate run", e))?;
        println!(
            "run {}: parallelism {parallelism}, exited with {status}",
            run + 1
        );
        if status.success() {
            summary = stdout;
            break;
        }
    }
    println!("\nlast run's summary:\n{summary}");
    let expected = expected_output(&input)?;
    let verdict = check_output(&StdFs, &output, &expected)?;
    println!(
        "verdict: {} — {} committed lines over {} keys vs {} expected: {} missing, {} unexpected; \
         rejected side output: {} missing, {} unexpected; {killed} SIGKILLs; {:.1} s",
        if verdict.is_exact() {
            "EXACTLY ONCE"
        } else {
            "MISMATCH"
        },
        verdict.lines,
        expected.keys,
        expected.lines.len(),
        verdict.missing,
        verdict.unexpected,
        verdict.rejected_missing,
        verdict.rejected_unexpected,
        started.elapsed().as_secs_f64()
    );
    Ok(verdict.is_exact())
}

fn spawn_run(
    exe: &Path,
    input: &Path,
    output: &Path,
    state: &Path,
    parallelism: u16,
) -> Result<Child> {
    Command::new(exe)
        .arg("run")
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .arg("--state")
        .arg(state)
        .args(["--checkpoint-interval-ms", "100", "--quiet"])
        .args(["--parallelism", &parallelism.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::io(PathBuf::from(exe), e))
}

/// Waits until the child committed a new file (then a little more, at random) or exited;
/// returns whether it exited.
fn wait_for_progress(
    child: &mut Child,
    output: &Path,
    before: usize,
    rng: &mut SplitMix,
) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child
            .try_wait()
            .map_err(|e| Error::io("flowstate run", e))?
            .is_some()
        {
            return Ok(true);
        }
        if committed_files(&StdFs, output)?.len() > before {
            std::thread::sleep(Duration::from_millis(rng.below(40)));
            return Ok(child
                .try_wait()
                .map_err(|e| Error::io("flowstate run", e))?
                .is_some());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(false)
}
