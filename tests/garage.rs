//! Checkpoints on a real S3 server: Garage nodes started on loopback ports by
//! `support::garage` (skipped with a loud SKIPPED line when the `garage` binary is absent; `.ci/run`
//! installs it). Single node: the storage contract, LSM incremental checkpoints with retention and
//! a 2 -> 1 rescaling restore, a restart into a new task root by server-side copies, FsBackend
//! full checkpoints. Errors: a key without permission and a
//! closed port give clear errors in bounded time. Three nodes: one killed during an upload.
//! `flowstate run --checkpoint-storage s3://…` SIGKILLed and rerun until done: exact output.

mod support;

use std::time::{Duration, Instant};

use flowstate::checkpoint::uri::open_storage_with;
use flowstate::{KeyGroupRange, LsmBackend, LsmBackendOptions, StateBackend};
use support::garage::GarageCluster;
use support::*;

#[test]
fn garage_single_node_checkpoints_and_restores() {
    let Some(cluster) = GarageCluster::start(1) else {
        return;
    };
    let options = cluster.options();
    let contract = open_storage_with(&cluster.uri("contract"), &options).unwrap();
    assert_eq!(contract.location(), "s3://flowstate/contract");
    // Garage 2.x ignores `If-None-Match: *` on PUT: a PUT replaces an existing object there.
    storage_contract_with(contract.as_ref(), false);
    let work = tempfile::tempdir().unwrap();
    lsm_incremental_round_trip(&cluster.uri("lsm"), &options, work.path(), 5);
    fs_round_trip(&cluster.uri("fs"), &options);
    // A restart into a new task root of the bucket: S3 CopyObject instead of a re-upload.
    let (restored, checkpoint) = restart_into_a_new_root(
        &cluster.uri("tasks/000001/t0"),
        &cluster.uri("tasks/000002/t0"),
        &options,
        &work.path().join("restart"),
    );
    assert_eq!(restored.copied_files, restored.files, "{restored:?}");
    assert!(
        checkpoint.uploaded_bytes < restored.bytes / 4,
        "{checkpoint:?} after {restored:?}"
    );
}

#[test]
fn garage_denied_key_and_closed_port_fail_clearly_in_bounded_time() {
    let Some(cluster) = GarageCluster::start(1) else {
        return;
    };
    // A valid key without any permission on the bucket.
    let (key_id, secret) = cluster.create_key("no-permission");
    let denied = open_storage_with(
        &cluster.uri("job"),
        &cluster.options_for(0, &key_id, &secret),
    )
    .unwrap();
    let start = Instant::now();
    let err = denied.write_file("chk-1/x", b"x").unwrap_err().to_string();
    assert!(
        err.contains("access denied to s3://flowstate/job (check credentials / bucket policy)"),
        "{err}"
    );
    let err =
        flowstate::FsBackend::new(config(KeyGroupRange::all(MAX_PARALLELISM)), denied.clone())
            .unwrap_err()
            .to_string();
    assert!(err.contains("access denied"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10));

    // A closed port: nothing listens there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let options = cluster
        .options()
        .set("endpoint", &format!("http://127.0.0.1:{closed}"))
        .unwrap();
    let storage = open_storage_with(&cluster.uri("job"), &options).unwrap();
    let start = Instant::now();
    let err = storage.write_file("chk-1/x", b"x").unwrap_err().to_string();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(30), "took {took:?}: {err}");
    assert!(
        err.contains("s3://flowstate/job/chk-1/x") && err.contains("is the endpoint reachable"),
        "{err}"
    );
    eprintln!("closed port failed after {took:?}: {err}");
}

/// Three nodes with replication factor 3: node 2 is SIGKILLed while checkpoint 2 uploads. That
/// checkpoint completes or fails as a whole; a later one completes, and restores exactly.
#[test]
fn garage_three_nodes_survive_a_node_killed_during_upload() {
    let Some(mut cluster) = GarageCluster::start(3) else {
        return;
    };
    let options = cluster.options();
    let uri = cluster.uri("three");
    let work = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::all(MAX_PARALLELISM);
    let lsm_options = LsmBackendOptions::default().write_buffer_size(256 << 10);
    let mut b = LsmBackend::open(
        config(all),
        open_storage_with(&uri, &options).unwrap(),
        lsm_options.working_dir(work.path().join("a")),
    )
    .unwrap();
    let mut model = Contents::new();
    let mut rng = seed("garage_three_nodes");
    random_writes(&mut b, &mut model, &mut rng, 20_000);
    b.snapshot(1).unwrap().run().unwrap();
    random_writes(&mut b, &mut model, &mut rng, 60_000);
    // Kill node 2 as soon as checkpoint 2's first new object lands in the bucket.
    let watcher = open_storage_with(&uri, &options).unwrap();
    let before = watcher.list("shared").unwrap().len();
    let task = b.snapshot(2).unwrap();
    let uploading = std::thread::spawn(move || task.run());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !uploading.is_finished()
        && watcher.list("shared").unwrap().len() <= before
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mid_upload = !uploading.is_finished();
    cluster.kill(2);
    let second = uploading.join().unwrap();
    eprintln!(
        "checkpoint 2, node killed {} the upload: {:?}",
        if mid_upload { "during" } else { "after" },
        second.as_ref().map(|_| "completed")
    );
    random_writes(&mut b, &mut model, &mut rng, 2_000);
    let h = b.snapshot(3).unwrap().run().unwrap();
    assert!(b.completed_checkpoints().contains(&3));
    let mut r = LsmBackend::open(
        config(all),
        open_storage_with(&cluster.uri("three-restored"), &options).unwrap(),
        LsmBackendOptions::new(work.path().join("r")),
    )
    .unwrap();
    r.restore(&[h], all).unwrap();
    assert_eq!(contents(&mut r), model);
}

/// `flowstate run --checkpoint-storage s3://…` SIGKILLed at seeded moments and rerun (sometimes
/// at another parallelism) until it exits 0: the committed output is exact, and `inspect` and
/// `verify` read the checkpoints through the same URI.
#[test]
fn garage_flowstate_run_sigkilled_is_exactly_once() {
    use flowstate::internals::{SplitMix, generate_input};
    use std::process::{Command, Stdio};

    let Some(cluster) = GarageCluster::start(1) else {
        return;
    };
    let exe = env!("CARGO_BIN_EXE_flowstate");
    let dir = tempfile::tempdir().unwrap();
    let seed = seed("garage_flowstate_run_sigkilled_is_exactly_once");
    let mut rng = SplitMix(seed);
    let input = dir.path().join("input");
    // Large enough that a run outlives the first two kill delays (the job does ~1M events/s).
    generate_input(&input, 1_000_000, 20_000, rng.next_u64()).unwrap();
    let uri = cluster.uri(&format!("run-{seed:x}"));
    let command = |parallelism: u16, args: &[&str]| {
        let mut c = Command::new(exe);
        c.env("AWS_ACCESS_KEY_ID", &cluster.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &cluster.secret)
            .env("AWS_ENDPOINT_URL", cluster.endpoint(0))
            .env("AWS_REGION", "garage")
            .env("AWS_ALLOW_HTTP", "true")
            .args(args);
        if args.first() == Some(&"run") {
            c.args(["--parallelism", &parallelism.to_string()]);
        }
        c
    };
    let p = |name: &str| dir.path().join(name).display().to_string();
    let (input_s, out_s, state_s) = (p("input"), p("out"), p("state"));
    let run_args = [
        "run",
        "--input",
        &input_s,
        "--output",
        &out_s,
        "--state",
        &state_s,
        "--checkpoint-storage",
        &uri,
        "--checkpoint-interval-ms",
        "50",
        "--quiet",
    ];
    let mut parallelism = 1 + rng.below(2) as u16;
    let mut kills = 0;
    for attempt in 0u64.. {
        assert!(attempt < 100, "no finish after 100 attempts");
        let log = dir.path().join(format!("stderr-{attempt}"));
        let mut child = command(parallelism, &run_args)
            .env("RUST_LOG", "flowstate=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // The first runs die early (mid-checkpoint, mid-upload); growing delays let one finish.
        let delay = if attempt < 2 {
            30 + rng.below(200)
        } else {
            100 + rng.below(500) + 150 * attempt
        };
        let deadline = Instant::now() + Duration::from_millis(delay);
        let mut exited = None;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        match exited {
            Some(status) if status.success() => {
                // Local recovery: every LSM restore on this machine came from the local copies
                // (or links), not from S3.
                let stderr = std::fs::read_to_string(&log).unwrap();
                let restores: Vec<&str> = stderr
                    .lines()
                    .filter(|l| l.contains("lsm restore finished"))
                    .collect();
                eprintln!("final run: {} task restores", restores.len());
                for line in restores {
                    assert!(line.contains(" downloaded=0 "), "{line}");
                }
                break;
            }
            Some(status) => {
                panic!("exit {status}: {}", std::fs::read_to_string(&log).unwrap());
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
            }
        }
        if rng.below(3) == 0 {
            parallelism = 1 + rng.below(3) as u16;
        }
    }
    support::oracle::assert_exactly_once(
        &input,
        &dir.path().join("out"),
        &format!("{kills} kills"),
    );
    assert!(kills >= 2, "the first two runs are killed");
    eprintln!("exact after {kills} kills");
    let again = command(2, &run_args).output().unwrap();
    assert_eq!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already finished"));
    // The job checkpoints read back through the same URI.
    let inspect = command(
        0,
        &["inspect", "--checkpoint-storage", &format!("{uri}/job")],
    )
    .output()
    .unwrap();
    assert_eq!(
        inspect.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    assert!(String::from_utf8_lossy(&inspect.stdout).contains("chk-"));
}

/// Bench (opt-in; numbers in BENCHMARKS.md "Checkpoints on S3"): grow 100-byte values to
/// `FLOWSTATE_BENCH_MB` MB (default 100), then 10 rounds of changing 1% of the keys and
/// checkpointing to a local single-node Garage, for FsBackend (full) and LsmBackend
/// (incremental): bytes uploaded and time per checkpoint, and the restore time.
///
/// `cargo test --release --test garage -- --ignored --nocapture garage_upload_bench`
#[test]
#[ignore]
fn garage_upload_bench() {
    use flowstate::backend::FsBackendOptions;
    use flowstate::backend::lsm::LsmBackendOptions;
    use flowstate::{FsBackend, StateDescriptor, StateKind};

    let Some(cluster) = GarageCluster::start(1) else {
        return;
    };
    let mb: u64 = std::env::var("FLOWSTATE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let keys = mb * 1_000_000 / 120;
    let options = cluster.options();
    let uploaded = |prefix: &str| -> u64 {
        let storage = open_storage_with(&cluster.uri(prefix), &options).unwrap();
        storage
            .list("")
            .unwrap()
            .iter()
            .map(|p| storage.file_size(p).unwrap())
            .sum()
    };
    println!(
        "| backend | state | checkpoint | bytes uploaded (mean / max) | time ms (mean / max) | restore ms |"
    );
    println!("|---|---|---|---|---|---|");
    for kind in ["fs", "lsm"] {
        let prefix = format!("bench-{kind}-{mb}");
        let work = tempfile::tempdir().unwrap();
        let storage = open_storage_with(&cluster.uri(&prefix), &options).unwrap();
        let config = config(KeyGroupRange::all(MAX_PARALLELISM));
        let make = |dir: &str| -> Box<dyn StateBackend> {
            let storage = open_storage_with(&cluster.uri(&prefix), &options).unwrap();
            match kind {
                "fs" => Box::new(
                    FsBackend::open(
                        config.clone(),
                        storage,
                        FsBackendOptions::default().retained_checkpoints(1_000),
                    )
                    .unwrap(),
                ),
                _ => Box::new(
                    LsmBackend::open(
                        config.clone(),
                        storage,
                        LsmBackendOptions::default()
                            .retained_checkpoints(1_000)
                            .working_dir(work.path().join(dir)),
                    )
                    .unwrap(),
                ),
            }
        };
        let mut backend = make("work");
        let state = backend
            .register(&StateDescriptor::new("values", StateKind::Value))
            .unwrap();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut value = |round: u64, k: u64| -> Vec<u8> {
            rng = mix(rng ^ k ^ (round << 40));
            let mut v = format!("{round}:{k}:").into_bytes();
            while v.len() < 100 {
                v.extend_from_slice(&mix(rng.wrapping_add(v.len() as u64)).to_le_bytes());
            }
            v.truncate(100);
            v
        };
        for k in 0..keys {
            backend.put(state, &key(k), &value(0, k)).unwrap();
        }
        let start = Instant::now();
        backend.snapshot(1).unwrap().run().unwrap();
        let first = start.elapsed();
        let first_bytes = uploaded(&prefix);
        let (mut bytes, mut times) = (Vec::new(), Vec::new());
        for round in 1..=10u64 {
            for i in 0..keys / 100 {
                let k = mix(round * 1_000_003 + i) % keys;
                backend.put(state, &key(k), &value(round, k)).unwrap();
            }
            let before = uploaded(&prefix);
            let start = Instant::now();
            backend.snapshot(round + 1).unwrap().run().unwrap();
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            bytes.push(uploaded(&prefix).saturating_sub(before));
        }
        drop(backend);
        let start = Instant::now();
        let (mut restored, latest): (Box<dyn StateBackend>, _) = match kind {
            "fs" => {
                let mut fs = FsBackend::new(config.clone(), storage.clone()).unwrap();
                let id = fs.restore_latest().unwrap();
                (Box::new(fs), id)
            }
            _ => {
                let mut lsm = LsmBackend::open(
                    config.clone(),
                    storage.clone(),
                    LsmBackendOptions::new(work.path().join("restore2")),
                )
                .unwrap();
                let id = lsm.restore_latest().unwrap();
                (Box::new(lsm), id)
            }
        };
        let restore = start.elapsed();
        assert_eq!(latest, Some(11));
        let state = restored
            .register(&StateDescriptor::new("values", StateKind::Value))
            .unwrap();
        assert!(restored.get(state, &key(keys / 2)).unwrap().is_some());
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let fb: Vec<f64> = bytes.iter().map(|b| *b as f64 / 1e6).collect();
        println!(
            "| {kind} | {mb} MB | first (full) | {:.1} MB | {:.0} | |",
            first_bytes as f64 / 1e6,
            first.as_secs_f64() * 1000.0
        );
        println!(
            "| {kind} | {mb} MB | 1% changed, 10 rounds | {:.2} / {:.2} MB | {:.0} / {:.0} | {:.0} |",
            mean(&fb),
            fb.iter().cloned().fold(0.0, f64::max),
            mean(&times),
            times.iter().cloned().fold(0.0, f64::max),
            restore.as_secs_f64() * 1000.0
        );
    }
}
