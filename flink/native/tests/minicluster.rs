//! End-to-end tests of the Flink state backend: the test jobs of `flink/java/jobs/` run on a
//! local Flink 2.3 MiniCluster, one JVM at a time, and each run's output must be line for line
//! (sorted) the output of the same job and input on Flink's HashMap backend.
//!
//! Needs `flink/build.sh` to have run (it writes `flink/build/classpath.txt`, the jobs' classes
//! and `flink/build/flowstate-flink.jar`) and `java` on the PATH. Without them every test prints
//! a loud skip message and passes, except under `CI=true`, where they fail.
//!
//! `FLOWSTATE_FLINK_BACKEND` picks the backend under test: `flowstate` (the default), or one of
//! Flink's own (`rocksdb`, `forst`, `hashmap`) to check the jobs and this harness themselves.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

const JOBS: &str = "io.flowstate.flink.jobs";

/// The reference job's input: enough events that a throttled run spans several 1 s checkpoints,
/// few enough that a JVM run stays well under 20 s.
const REFERENCE_EVENTS: u64 = 200_000;
const REFERENCE_KEYS: u64 = 20_000;
const ALL_STATES_EVENTS: u64 = 50_000;
const ALL_STATES_KEYS: u64 = 500;

/// A run that takes longer hangs (a normal one takes 5 to 20 s).
const JVM_TIMEOUT: Duration = Duration::from_secs(120);

/// Microseconds per record at the source: 200k events take about 5 s, so checkpoints and
/// failures happen mid-run.
const THROTTLE_US: &str = "25";
/// Slower still for the runs that are stopped or killed part way.
const SLOW_THROTTLE_US: &str = "50";

fn backend_under_test() -> String {
    std::env::var("FLOWSTATE_FLINK_BACKEND").unwrap_or_else(|_| "flowstate".to_string())
}

struct Harness {
    classpath: String,
    work: PathBuf,
    backend: String,
}

/// One JVM at a time (2 cores), and the inputs and HashMap baselines are made once.
static SERIAL: Mutex<()> = Mutex::new(());
static HARNESS: OnceLock<Option<Harness>> = OnceLock::new();
static BASELINES: Mutex<BTreeMap<String, Vec<String>>> = Mutex::new(BTreeMap::new());

fn flink_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    dir.canonicalize().unwrap_or(dir)
}

fn skip_or_fail(reason: &str) -> Option<Harness> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("Flink MiniCluster tests cannot run under CI=true: {reason}");
    }
    eprintln!();
    eprintln!("======================================================================");
    eprintln!("SKIPPING the Flink MiniCluster tests: {reason}");
    eprintln!("(run flink/build.sh first; under CI=true this is a failure)");
    eprintln!("======================================================================");
    None
}

fn make_harness() -> Option<Harness> {
    let backend = backend_under_test();
    let build = flink_dir().join("build");
    let classpath_file = build.join("classpath.txt");
    let Ok(classpath) = fs::read_to_string(&classpath_file) else {
        return skip_or_fail(&format!("no {}", classpath_file.display()));
    };
    let classpath = classpath.trim().to_string();
    if !build
        .join("jobs-classes/io/flowstate/flink/jobs/ReferenceJob.class")
        .is_file()
    {
        return skip_or_fail("the test jobs are not compiled (flink/build/jobs-classes)");
    }
    if backend == "flowstate" {
        let jar = build.join("flowstate-flink.jar");
        if !jar.is_file() {
            return skip_or_fail(&format!("no {}", jar.display()));
        }
        if !classpath.split(':').any(|entry| Path::new(entry) == jar) {
            return skip_or_fail("flink/build/classpath.txt does not list flowstate-flink.jar");
        }
    }
    match Command::new("java").arg("-version").output() {
        Ok(out) if out.status.success() => {}
        _ => return skip_or_fail("no working `java` on the PATH"),
    }
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("flink-minicluster");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    eprintln!(
        "Flink MiniCluster tests: backend under test {backend}, work directory {}",
        work.display()
    );
    Some(Harness {
        classpath,
        work,
        backend,
    })
}

/// The harness and the lock that keeps JVM runs sequential, or `None` (skip).
fn harness() -> Option<(&'static Harness, MutexGuard<'static, ()>)> {
    let guard = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let harness = HARNESS.get_or_init(make_harness).as_ref();
    if harness.is_none() {
        eprintln!("SKIPPED: the Flink MiniCluster tests cannot run (see the message above)");
    }
    harness.map(|h| (h, guard))
}

impl Harness {
    /// A fresh directory for one test's files.
    fn dir(&self, name: &str) -> PathBuf {
        let dir = self.work.join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn java(&self, class: &str, args: &[&str], log: &Path) -> Command {
        let mut cmd = Command::new("java");
        cmd.arg("-cp")
            .arg(&self.classpath)
            .arg("-Xmx768m")
            .arg(format!("{JOBS}.{class}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(log.with_extension("out")).unwrap())
            .stderr(fs::File::create(log.with_extension("err")).unwrap());
        cmd
    }

    /// Runs a job program to its end; panics with its log if it fails. Returns its stdout.
    fn run(&self, class: &str, args: &[&str], log: &Path) -> String {
        let start = Instant::now();
        let mut child = self.java(class, args, log).spawn().unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > JVM_TIMEOUT {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!(
                    "{class} {} still running after {} s, killed:\n--- stderr (tail)\n{}",
                    args.join(" "),
                    JVM_TIMEOUT.as_secs(),
                    tail(&log.with_extension("err"), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = fs::read_to_string(log.with_extension("out")).unwrap_or_default();
        eprintln!(
            "  {class} {} ({:.1} s)",
            args.join(" "),
            start.elapsed().as_secs_f64()
        );
        if !status.success() {
            panic!(
                "{class} {} failed ({status}):\n--- stdout\n{stdout}\n--- stderr (tail)\n{}",
                args.join(" "),
                tail(&log.with_extension("err"), 60)
            );
        }
        stdout
    }

    fn spawn(&self, class: &str, args: &[&str], log: &Path) -> Child {
        eprintln!("  spawn {class} {}", args.join(" "));
        self.java(class, args, log).spawn().unwrap()
    }

    /// An input file made once per (events, keys, seed).
    fn input(&self, events: u64, keys: u64, seed: u64) -> PathBuf {
        let path = self.work.join(format!("input-{events}-{keys}-{seed}.txt"));
        if !path.is_file() {
            let (e, k, s) = (events.to_string(), keys.to_string(), seed.to_string());
            self.run(
                "GenerateInput",
                &[
                    "--events",
                    &e,
                    "--keys",
                    &k,
                    "--seed",
                    &s,
                    "--output",
                    p(&path),
                ],
                &self.work.join(format!("generate-{events}-{keys}-{seed}")),
            );
        }
        path
    }

    /// The sorted output of `job` on the HashMap backend (parallelism 2, no throttle), once.
    fn baseline(&self, job: &str, input: &Path) -> Vec<String> {
        let name = format!(
            "{job}-{}",
            input
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("input-")
        );
        if let Some(lines) = BASELINES.lock().unwrap().get(&name) {
            return lines.clone();
        }
        let dir = self.dir(&format!("baseline-{name}"));
        let out = dir.join("out");
        let chk = dir.join("chk");
        self.run(
            job,
            &[
                "--backend",
                "hashmap",
                "--input",
                p(input),
                "--output",
                p(&out),
                "--checkpoint-dir",
                p(&chk),
                "--parallelism",
                "2",
            ],
            &dir.join("run"),
        );
        let lines = output_lines(&out);
        assert!(
            !lines.is_empty(),
            "the HashMap baseline of {job} wrote nothing"
        );
        BASELINES.lock().unwrap().insert(name, lines.clone());
        lines
    }

    fn reference_input(&self) -> PathBuf {
        self.input(REFERENCE_EVENTS, REFERENCE_KEYS, 7)
    }

    fn all_states_input(&self) -> PathBuf {
        self.input(ALL_STATES_EVENTS, ALL_STATES_KEYS, 3)
    }
}

fn p(path: &Path) -> &str {
    path.to_str().expect("non-UTF-8 path")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The sorted lines of the finished part files under `dir` (hidden in-progress and pending files,
/// whose names start with a dot, are left out).
fn output_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.contains("inprogress") {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let text = fs::read_to_string(&path).unwrap();
                lines.extend(text.lines().map(str::to_string));
            }
        }
    }
    lines.sort_unstable();
    lines
}

/// Panics with a readable account of the difference unless `actual` equals `expected`.
fn assert_same_lines(what: &str, actual: &[String], expected: &[String]) {
    if actual == expected {
        eprintln!(
            "  {what}: {} lines, identical to the HashMap run",
            actual.len()
        );
        return;
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for line in expected {
        *counts.entry(line).or_default() += 1;
    }
    for line in actual {
        *counts.entry(line).or_default() -= 1;
    }
    let mut missing: Vec<&str> = counts
        .iter()
        .filter(|(_, c)| **c > 0)
        .map(|(l, _)| *l)
        .collect();
    let mut extra: Vec<&str> = counts
        .iter()
        .filter(|(_, c)| **c < 0)
        .map(|(l, _)| *l)
        .collect();
    missing.sort_unstable();
    extra.sort_unstable();
    let missing_total: i64 = counts.values().filter(|c| **c > 0).sum();
    let extra_total: i64 = -counts.values().filter(|c| **c < 0).sum::<i64>();
    panic!(
        "{what}: {} lines, the HashMap run {}: {missing_total} missing (first {:?}), \
         {extra_total} extra or duplicated (first {:?})",
        actual.len(),
        expected.len(),
        &missing[..missing.len().min(10)],
        &extra[..extra.len().min(10)],
    );
}

/// `SAVEPOINT <path>` from a job's stdout.
fn savepoint_path(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("SAVEPOINT "))
        .unwrap_or_else(|| panic!("no SAVEPOINT line in:\n{stdout}"))
        .trim()
        .to_string()
}

/// The completed checkpoints (`chk-N` with a `_metadata` file) under a checkpoint directory,
/// highest number last.
fn completed_checkpoints(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found = Vec::new();
    for job in fs::read_dir(dir).into_iter().flatten().flatten() {
        for chk in fs::read_dir(job.path()).into_iter().flatten().flatten() {
            let name = chk.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_prefix("chk-")
                .and_then(|n| n.parse::<u64>().ok())
                && chk.path().join("_metadata").is_file()
            {
                found.push((n, chk.path()));
            }
        }
    }
    found.sort();
    found
}

/// Common arguments of a run: job, backend, input, output, checkpoint directory, parallelism.
fn args<'a>(
    backend: &'a str,
    input: &'a Path,
    out: &'a Path,
    chk: &'a Path,
    parallelism: &'a str,
) -> Vec<&'a str> {
    vec![
        "--backend",
        backend,
        "--input",
        p(input),
        "--output",
        p(out),
        "--checkpoint-dir",
        p(chk),
        "--parallelism",
        parallelism,
        "--checkpoint-interval-ms",
        "1000",
    ]
}

fn timed(name: &str) -> impl Drop {
    struct Timer(String, Instant);
    impl Drop for Timer {
        fn drop(&mut self) {
            eprintln!("{}: {:.1} s", self.0, self.1.elapsed().as_secs_f64());
        }
    }
    eprintln!("{name}:");
    Timer(name.to_string(), Instant::now())
}

#[test]
fn reference_job_matches_hashmap() {
    let Some((h, _serial)) = harness() else {
        return;
    };
    let _t = timed("reference_job_matches_hashmap");
    let input = h.reference_input();
    let expected = h.baseline("ReferenceJob", &input);
    let dir = h.dir("reference");
    let (out, chk) = (dir.join("out"), dir.join("chk"));
    let mut a = args(&h.backend, &input, &out, &chk, "2");
    a.extend(["--throttle-us", THROTTLE_US]);
    h.run("ReferenceJob", &a, &dir.join("run"));
    assert_same_lines("reference job", &output_lines(&out), &expected);
}

#[test]
fn all_states_job_matches_hashmap() {
    let Some((h, _serial)) = harness() else {
        return;
    };
    let _t = timed("all_states_job_matches_hashmap");
    let input = h.all_states_input();
    let expected = h.baseline("AllStatesJob", &input);
    let dir = h.dir("all-states");
    let (out, chk) = (dir.join("out"), dir.join("chk"));
    let mut a = args(&h.backend, &input, &out, &chk, "2");
    a.extend(["--throttle-us", "100"]);
    h.run("AllStatesJob", &a, &dir.join("run"));
    assert_same_lines("all-states job", &output_lines(&out), &expected);
}

/// A subtask throws once mid-run; Flink restarts the job from the latest checkpoint.
fn failover(h: &Harness, job: &str, input: &Path, fail_after: &str, throttle: &str) {
    let expected = h.baseline(job, input);
    let dir = h.dir(&format!("failover-{job}"));
    let (out, chk) = (dir.join("out"), dir.join("chk"));
    let marker = dir.join("failed-once");
    let mut a = args(&h.backend, input, &out, &chk, "2");
    a.extend(["--throttle-us", throttle, "--fail-once-after", fail_after]);
    a.extend(["--fail-marker", p(&marker)]);
    h.run(job, &a, &dir.join("run"));
    assert!(
        marker.is_file(),
        "{job} finished without the injected failure"
    );
    assert_same_lines(
        &format!("{job} after a failover"),
        &output_lines(&out),
        &expected,
    );
}

#[test]
fn failover_is_exactly_once() {
    let Some((h, _serial)) = harness() else {
        return;
    };
    let _t = timed("failover_is_exactly_once");
    failover(
        h,
        "ReferenceJob",
        &h.reference_input(),
        "40000",
        THROTTLE_US,
    );
}

#[test]
fn all_states_failover_is_exactly_once() {
    let Some((h, _serial)) = harness() else {
        return;
    };
    let _t = timed("all_states_failover_is_exactly_once");
    failover(h, "AllStatesJob", &h.all_states_input(), "10000", "100");
}

/// The JVM is SIGKILLed mid-run; a new one resumes from the latest retained checkpoint.
#[test]
fn sigkill_then_resume_from_retained_checkpoint() {
    let Some((h, _serial)) = harness() else {
        return;
    };
    let _t = timed("sigkill_then_resume_from_retained_checkpoint");
    let input = h.reference_input();
    let expected = h.baseline("ReferenceJob", &input);
    let dir = h.dir("sigkill");
    let (out, chk) = (dir.join("out"), dir.join("chk"));
    let mut a = args(&h.backend, &input, &out, &chk, "2");
    a.extend(["--throttle-us", SLOW_THROTTLE_US, "--retain"]);
    let mut child = h.spawn("ReferenceJob", &a, &dir.join("killed"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the job ended ({status}) before its second checkpoint:\n{}",
                tail(&dir.join("killed.err"), 40)
            );
        }
        if completed_checkpoints(&chk)
            .last()
            .is_some_and(|(n, _)| *n >= 2)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no second checkpoint within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Half-way between two checkpoints, so that no _metadata file is being written.
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the job ended before it was killed"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (n, latest) = completed_checkpoints(&chk).pop().unwrap();
    let before = output_lines(&out).len();
    eprintln!("  killed; {before} lines committed, resuming from checkpoint {n}");
    assert!(
        before < expected.len(),
        "the killed run had already committed all its output"
    );
    let chk2 = dir.join("chk-resumed");
    let mut a = args(&h.backend, &input, &out, &chk2, "2");
    a.extend(["--restore", p(&latest)]);
    h.run("ReferenceJob", &a, &dir.join("resumed"));
    assert_same_lines(
        "reference job killed and resumed",
        &output_lines(&out),
        &expected,
    );
}

/// A job program and how its stop-with-savepoint runs go.
#[derive(Clone, Copy)]
enum Job {
    Reference,
    AllStates,
}

impl Job {
    fn class(self) -> &'static str {
        match self {
            Job::Reference => "ReferenceJob",
            Job::AllStates => "AllStatesJob",
        }
    }

    fn input(self, h: &Harness) -> PathBuf {
        match self {
            Job::Reference => h.reference_input(),
            Job::AllStates => h.all_states_input(),
        }
    }

    /// Output lines after which the first run stops with a savepoint (about a third).
    fn stop_after(self) -> &'static str {
        match self {
            Job::Reference => "60000",
            Job::AllStates => "50000",
        }
    }

    fn throttle(self) -> &'static str {
        match self {
            Job::Reference => SLOW_THROTTLE_US,
            Job::AllStates => "150",
        }
    }
}

/// Stops `job` with a canonical savepoint on `from` at parallelism `p1`, resumes it on `to` at
/// `p2` into the same output directory, and compares.
fn savepoint_and_resume(
    h: &Harness,
    job: Job,
    name: &str,
    from: &str,
    p1: &str,
    to: &str,
    p2: &str,
) {
    let input = job.input(h);
    let expected = h.baseline(job.class(), &input);
    let dir = h.dir(name);
    let out = dir.join("out");
    let savepoints = dir.join("savepoints");
    let (chk1, chk2) = (dir.join("chk-1"), dir.join("chk-2"));
    let mut a = args(from, &input, &out, &chk1, p1);
    a.extend(["--throttle-us", job.throttle()]);
    a.extend([
        "--stop-with-savepoint-after",
        job.stop_after(),
        p(&savepoints),
    ]);
    let stdout = h.run(job.class(), &a, &dir.join("stopped"));
    let savepoint = savepoint_path(&stdout);
    let before = output_lines(&out).len();
    eprintln!("  stopped with savepoint {savepoint}; {before} lines committed");
    assert!(
        before > 0 && before < expected.len(),
        "{before} of {} lines committed before the savepoint",
        expected.len()
    );
    let mut a = args(to, &input, &out, &chk2, p2);
    a.extend(["--restore", &savepoint]);
    h.run(job.class(), &a, &dir.join("resumed"));
    assert_same_lines(
        &format!(
            "{}: {from} savepoint at parallelism {p1} resumed on {to} at {p2}",
            job.class()
        ),
        &output_lines(&out),
        &expected,
    );
}

#[test]
fn savepoint_rescale_2_to_3() {
    let Some((h, _serial)) = harness() else {
        return;
    };
    let _t = timed("savepoint_rescale_2_to_3");
    savepoint_and_resume(
        h,
        Job::Reference,
        "rescale-2-3",
        &h.backend,
        "2",
        &h.backend,
        "3",
    );
}

#[test]
fn savepoint_rescale_3_to_1() {
    let Some((h, _serial)) = harness() else {
        return;
    };
    let _t = timed("savepoint_rescale_3_to_1");
    savepoint_and_resume(
        h,
        Job::Reference,
        "rescale-3-1",
        &h.backend,
        "3",
        &h.backend,
        "1",
    );
}

#[test]
fn rocksdb_savepoint_restored_into_backend() {
    let Some((h, _serial)) = harness() else {
        return;
    };
    let _t = timed("rocksdb_savepoint_restored_into_backend");
    savepoint_and_resume(
        h,
        Job::Reference,
        "rocksdb-to-backend",
        "rocksdb",
        "2",
        &h.backend,
        "2",
    );
}

#[test]
fn backend_savepoint_restored_into_rocksdb() {
    let Some((h, _serial)) = harness() else {
        return;
    };
    let _t = timed("backend_savepoint_restored_into_rocksdb");
    savepoint_and_resume(
        h,
        Job::Reference,
        "backend-to-rocksdb",
        &h.backend,
        "2",
        "rocksdb",
        "2",
    );
}

/// Windows (with merging session windows), timers and TTL state through a savepoint.
#[test]
fn all_states_savepoint_rescale_2_to_3() {
    let Some((h, _serial)) = harness() else {
        return;
    };
    let _t = timed("all_states_savepoint_rescale_2_to_3");
    let b = &h.backend;
    savepoint_and_resume(h, Job::AllStates, "all-states-2-3", b, "2", b, "3");
}

#[test]
fn all_states_rocksdb_savepoint_restored_into_backend() {
    let Some((h, _serial)) = harness() else {
        return;
    };
    let _t = timed("all_states_rocksdb_savepoint_restored_into_backend");
    let b = &h.backend;
    savepoint_and_resume(
        h,
        Job::AllStates,
        "all-states-rocksdb-to-backend",
        "rocksdb",
        "2",
        b,
        "3",
    );
}

/// Heap timers and heap state on the other side of the savepoint.
#[test]
fn all_states_backend_savepoint_restored_into_hashmap() {
    let Some((h, _serial)) = harness() else {
        return;
    };
    let _t = timed("all_states_backend_savepoint_restored_into_hashmap");
    let b = &h.backend;
    savepoint_and_resume(
        h,
        Job::AllStates,
        "all-states-backend-to-hashmap",
        b,
        "3",
        "hashmap",
        "1",
    );
}
