//! `flowstate run` as a process: SIGKILL at seeded random moments, rerun (sometimes at another
//! parallelism) until it exits 0, and check the committed output exactly; plus the lock, the
//! memory-backend resume refusal, the finished no-op and the exit codes.
//!
//! `FLOWSTATE_SEED=<n>` replays a run; `FLOWSTATE_SOAK=1` runs 40 kill rounds instead of 2.

mod support;

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use flowstate::internals::{SplitMix, generate_input};
use support::oracle::{assert_exactly_once, committed};
use support::seed;

const EXE: &str = env!("CARGO_BIN_EXE_flowstate");

fn run_args(dir: &Path, parallelism: u16, backend: &str) -> Vec<String> {
    run_args_with(dir, parallelism, backend, &[])
}

fn run_args_with(dir: &Path, parallelism: u16, backend: &str, extra: &[String]) -> Vec<String> {
    let p = |name: &str| dir.join(name).display().to_string();
    let mut args: Vec<String> = vec![
        "run".into(),
        "--input".into(),
        p("input"),
        "--output".into(),
        p("out"),
        "--state".into(),
        p("state"),
        "--backend".into(),
        backend.into(),
        "--parallelism".into(),
        parallelism.to_string(),
        "--checkpoint-interval-ms".into(),
        "20".into(),
        "--quiet".into(),
    ];
    args.extend(extra.iter().cloned());
    args
}

fn spawn(dir: &Path, parallelism: u16, backend: &str, extra: &[String]) -> Child {
    Command::new(EXE)
        .args(run_args_with(dir, parallelism, backend, extra))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn run(dir: &Path, parallelism: u16, backend: &str) -> Output {
    Command::new(EXE)
        .args(run_args(dir, parallelism, backend))
        .output()
        .unwrap()
}

/// Kills the child after `delay` unless it exits first; returns its exit code if it exited.
fn kill_after(child: &mut Child, delay: Duration) -> Option<i32> {
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    None
}

/// Kill rounds of `--backend backend` with the extra arguments `extra(dir)`.
fn kill_rounds(rounds: u32, seed: u64, backend: &str, extra: &dyn Fn(&Path) -> Vec<String>) {
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let extra = extra(dir.path());
        let mut rng = SplitMix(seed.wrapping_add(u64::from(round)));
        // Large enough that the first kill (at most 130 ms in) lands before the job ends: 400k
        // events take a debug build about 0.2 s at parallelism 3, longer at 1; a release build
        // runs 4M in about that time.
        let events = if cfg!(debug_assertions) {
            400_000
        } else {
            4_000_000
        };
        generate_input(&dir.path().join("input"), events, 2_000, rng.next_u64()).unwrap();
        let mut kills = 0;
        let mut parallelism = 1 + rng.below(3) as u16;
        for attempt in 0.. {
            assert!(attempt < 200, "round {round}: no finish after 200 attempts");
            let mut child = spawn(dir.path(), parallelism, backend, &extra);
            // Growing delays: a run always finishes eventually, whatever its start-up costs.
            let delay = Duration::from_millis(10 + rng.below(120) + 40 * attempt);
            match kill_after(&mut child, delay) {
                Some(0) => break,
                Some(code) => {
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "round {round}: exit {code}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                None => kills += 1,
            }
            if rng.below(3) == 0 {
                parallelism = 1 + rng.below(4) as u16;
            }
        }
        assert!(
            kills > 0,
            "round {round}: the job finished before the first kill"
        );
        let (input, out) = (dir.path().join("input"), dir.path().join("out"));
        assert_exactly_once(&input, &out, &format!("round {round} ({kills} kills)"));
        let again = Command::new(EXE)
            .args(run_args_with(dir.path(), 2, backend, &extra))
            .output()
            .unwrap();
        assert_eq!(again.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&again.stdout).contains("already finished"));
        assert_exactly_once(&input, &out, &format!("round {round}, rerun"));
    }
}

#[test]
fn sigkill_at_random_moments_then_resume_is_exactly_once() {
    let soak = std::env::var("FLOWSTATE_SOAK").is_ok_and(|v| v == "1");
    kill_rounds(
        if soak { 40 } else { 2 },
        seed("sigkill_at_random_moments"),
        "fs",
        &|_| Vec::new(),
    );
}

#[test]
fn sigkill_with_checkpoints_in_separate_storage_is_exactly_once() {
    // --checkpoint-storage outside --state: task roots are storage locations, the LSM working
    // stores and local-recovery copies stay in --state.
    let soak = std::env::var("FLOWSTATE_SOAK").is_ok_and(|v| v == "1");
    let storage = |dir: &Path| {
        vec![
            "--checkpoint-storage".to_string(),
            dir.join("checkpoints").display().to_string(),
        ]
    };
    kill_rounds(
        if soak { 20 } else { 1 },
        seed("sigkill_with_checkpoints_in_separate_storage"),
        "lsm",
        &storage,
    );
}

#[test]
fn clean_run_prints_summary_and_commits_everything() {
    let dir = tempfile::tempdir().unwrap();
    generate_input(&dir.path().join("input"), 60_000, 500, 11).unwrap();
    let out = run(dir.path(), 2, "fs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("job finished: 60000 events, 1 rejected lines"),
        "{stdout}"
    );
    assert!(stdout.contains("events/s"), "{stdout}");
    assert_exactly_once(
        &dir.path().join("input"),
        &dir.path().join("out"),
        "clean run",
    );
    assert!(!committed(&dir.path().join("out")).is_empty());
}

#[test]
fn state_dir_in_use_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    generate_input(&dir.path().join("input"), 100, 10, 1).unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.path().join("state/LOCK"))
        .unwrap();
    lock.try_lock().unwrap();
    let out = run(dir.path(), 1, "fs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another flowstate run"));
    drop(lock);
    assert_eq!(run(dir.path(), 1, "fs").status.code(), Some(0));
}

#[test]
fn memory_backend_refuses_to_resume_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    generate_input(&dir.path().join("input"), 400_000, 1_000, 5).unwrap();
    let mut child = spawn(dir.path(), 1, "memory", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed(&dir.path().join("out")).is_empty() {
        assert!(Instant::now() < deadline);
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let out = run(dir.path(), 1, "memory");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--backend memory") && stderr.contains("cannot resume"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2_runtime_errors_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let code = |args: &[&str]| Command::new(EXE).args(args).output().unwrap().status.code();
    assert_eq!(code(&["run"]), Some(2));
    assert_eq!(code(&["bogus"]), Some(2));
    let mut args = run_args(dir.path(), 0, "fs");
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(code(&strs), Some(2), "parallelism 0");
    args = run_args(dir.path(), 32768, "fs");
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = Command::new(EXE).args(&strs).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "parallelism 32768: {stderr}");
    assert!(
        stderr.contains("--parallelism must be in 1..=1024"),
        "{stderr}"
    );
    args = run_args(dir.path(), 1, "rocks");
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(code(&strs), Some(2), "unknown backend");
    args = run_args(dir.path(), 1, "fs");
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(code(&strs), Some(1), "missing input file");
}

/// The README's run command: `flowstate demo` with its defaults kills itself mid-run at least
/// once, finishes, and prints an exactly-once verdict (a faster job must not outrun its kills).
#[test]
fn demo_kills_itself_and_reports_exactly_once() {
    let out = Command::new(EXE).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("SIGKILLed mid-run"), "{stdout}");
    assert!(stdout.contains("verdict: EXACTLY ONCE"), "{stdout}");
}
