//! A task thread the operating system refuses to start fails the job attempt with an error that
//! names the task and keeps the OS error; the tasks already started are stopped and joined (no
//! panic, no hang), and the job runs to the end once threads can be started again.
//!
//! Threads are refused for real, in this process only (`harness = false`: no test threads, this
//! binary is its own process): every spawned thread gets a 512 MiB stack (`RUST_MIN_STACK`, read
//! once, set before the first spawn) and the address-space limit (`RLIMIT_AS`) is set to what the
//! process maps now plus room for `k` such stacks and 256 MiB of slack, so thread `k + 1` of the
//! attempt cannot map its stack. glibc's malloc is held to one arena so threads that start do
//! not reserve 64 MiB arenas of the budget, and the stacks glibc keeps of exited threads are
//! freed before each measure. Linux with glibc only; elsewhere it does nothing.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    linux::main();
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    println!("thread_spawn_failure: needs Linux with glibc; skipped");
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod linux {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use flowstate::Error;
    use flowstate::engine::{
        BackendChoice, CheckpointOptions, FailureSchedule, JobConfig, RestartStrategy, run_job,
    };

    const STACK: u64 = 512 << 20;
    const SLACK: u64 = 256 << 20;
    const EVENTS: usize = 20_000;

    #[repr(C)]
    struct RLimit {
        cur: u64,
        max: u64,
    }

    const RLIMIT_AS: i32 = 9;
    const M_ARENA_MAX: i32 = -8;

    unsafe extern "C" {
        fn getrlimit(resource: i32, limit: *mut RLimit) -> i32;
        fn setrlimit(resource: i32, limit: *const RLimit) -> i32;
        fn mallopt(param: i32, value: i32) -> i32;
    }

    fn address_space_limit() -> RLimit {
        let mut limit = RLimit { cur: 0, max: 0 };
        // SAFETY: getrlimit writes one struct rlimit (two rlim_t, u64 on Linux) to `limit`.
        assert_eq!(unsafe { getrlimit(RLIMIT_AS, &mut limit) }, 0);
        limit
    }

    fn set_address_space_limit(cur: u64, max: u64) {
        let limit = RLimit { cur, max };
        // SAFETY: setrlimit reads one struct rlimit from `limit`.
        let rc = unsafe { setrlimit(RLIMIT_AS, &limit) };
        assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
    }

    /// Bytes of address space the process maps now (`VmSize`).
    fn mapped() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
        let kib: u64 = line
            .trim_start_matches("VmSize:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kib << 10
    }

    /// Waits until no thread stack of an earlier run is still mapped: the job's threads are
    /// detached when their scope ends, and glibc keeps the stack of an exited detached thread
    /// for reuse (a later spawn would take it without mapping a new one) until a join frees it.
    fn settle() -> u64 {
        let mut last = u64::MAX;
        for _ in 0..100 {
            std::thread::spawn(|| {}).join().unwrap();
            let now = mapped();
            if now == last {
                return now;
            }
            last = now;
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the mapped address space does not settle ({last} bytes)");
    }

    fn config(dir: &Path) -> JobConfig {
        let input: String = (0..EVENTS)
            .map(|i| format!("k{},{}\n", i % 31, i))
            .collect();
        std::fs::write(dir.join("input"), input).unwrap();
        let mut config = JobConfig::new(dir.join("input"), dir.join("out"), dir.join("state"));
        config.backend = BackendChoice::Fs;
        config.parallelism = 2;
        config.checkpoints = CheckpointOptions::default().interval(Some(Duration::from_millis(5)));
        config.restart = RestartStrategy {
            max_restarts: 0,
            delay: Duration::ZERO,
        };
        config.failures = Arc::new(FailureSchedule::none());
        config
    }

    pub fn main() {
        // SAFETY: no other thread exists yet (harness = false), so nothing reads the environment
        // concurrently.
        unsafe { std::env::set_var("RUST_MIN_STACK", STACK.to_string()) };
        // SAFETY: mallopt only changes a malloc parameter.
        assert_eq!(unsafe { mallopt(M_ARENA_MAX, 1) }, 1, "mallopt");
        // Spawn order of an attempt with parallelism 2: source, then operator, snapshot and
        // sink of task 0, then of task 1. `started` threads fit; the next is refused.
        let cases = [
            (0, "source", "flowstate-source"),
            (1, "operator 0", "flowstate-op-0"),
            (2, "snapshot 0", "flowstate-snap-0"),
            (3, "sink 0", "flowstate-sink-0"),
            (6, "sink 1", "flowstate-sink-1"),
        ];
        for (started, task, thread) in cases {
            let dir = tempfile::tempdir().unwrap();
            let config = config(dir.path());
            let before = address_space_limit();
            set_address_space_limit(settle() + started * STACK + SLACK, before.max);
            let began = Instant::now();
            let result = run_job(&config);
            set_address_space_limit(before.cur, before.max);
            let error = match result {
                Ok(summary) => {
                    panic!("{task}: the job ran with thread {thread} refused: {summary:?}")
                }
                Err(error) => error,
            };
            let text = error.to_string();
            assert!(
                text.contains(&format!("could not start a thread for the {task} task")),
                "{task}: {text}"
            );
            assert!(text.contains(thread), "{task}: {text}");
            match error.root_cause() {
                Error::Io { source, .. } => {
                    assert!(source.raw_os_error().is_some(), "{task}: {text}")
                }
                other => panic!("{task}: root cause is not the OS error: {other:?}"),
            }
            // The started tasks stopped; the attempt did not wait for the input to run out.
            assert!(
                began.elapsed() < Duration::from_secs(20),
                "{task}: slow stop"
            );
            // With threads to be had again, the same job runs to the end.
            let summary = run_job(&config).unwrap_or_else(|e| panic!("{task}: rerun: {e}"));
            assert_eq!(summary.events, EVENTS as u64, "{task}: {summary:?}");
            println!("thread {thread} refused: {text}");
        }
        println!("thread_spawn_failure: ok");
    }
}
