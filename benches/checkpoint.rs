//! What a checkpoint costs as keyed state grows and as the change rate varies, for the full
//! (FsBackend) and the incremental (LsmBackend) backend.
//!
//! Two parts, both run by `cargo bench --bench checkpoint`:
//! - a report (printed first): state of 100-byte values grown to 10 MB and 100 MB
//!   (`FLOWSTATE_BENCH_100MB=0` skips 100 MB, `FLOWSTATE_BENCH_1GB=1` adds 1 GB), then per rate
//!   (0.1%, 1%, 10% of keys per interval) 20 consecutive checkpoints, each timed by hand: the
//!   synchronous `snapshot()` call, the asynchronous `run()`, the bytes it added to checkpoint
//!   storage (sizes of the files that were not there before), and the zstd level-3 size of the
//!   key and value bytes changed in that interval; then restore of the last checkpoint into a
//!   fresh backend. `FLOWSTATE_BENCH_REPORT=0` skips it; `FLOWSTATE_BENCH_BACKENDS=lsm` (or `fs`)
//!   runs one backend.
//!   `FLOWSTATE_BENCH_CRITERION=0` skips the criterion part.
//! - criterion timings at 10 MB: a whole checkpoint (sync + async) after 1% changes, and restore.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use flowstate::backend::lsm::LsmBackendOptions;
use flowstate::checkpoint::storage::{CheckpointStorage, LocalDirStorage};
use flowstate::keys::{composite_key, key_group_for_key};
use flowstate::{
    BackendConfig, BackendKind, FsBackend, LsmBackend, StateBackend, StateDescriptor, StateId,
    StateKind,
};

/// Bytes of every value.
const VALUE_LEN: usize = 100;
/// Measured checkpoints per change rate.
const CHECKPOINTS: usize = 20;
/// Fractions of the keys changed between two checkpoints.
const RATES: [f64; 3] = [0.001, 0.01, 0.1];
/// Warm-up checkpoints an LSM run takes at most before measuring (see `warm_up`).
const MAX_WARM_UP: usize = 80;
const MB: u64 = 1_000_000;

/// One backend under test with its directories and the next checkpoint id.
struct Rig {
    kind: BackendKind,
    dir: tempfile::TempDir,
    backend: Backend,
    state: StateId,
    keys: u64,
    next_checkpoint: u64,
    rng: u64,
    version: u64,
    last_sync_runq: Duration,
}

fn storage_dir(dir: &Path) -> PathBuf {
    dir.join("checkpoints")
}

/// The backend under test, concrete so its own methods (`restore_latest`, stats) are reachable.
enum Backend {
    Fs(Box<FsBackend>),
    Lsm(Box<LsmBackend>),
}

impl Backend {
    fn open(kind: BackendKind, dir: &Path, work: &str) -> Backend {
        let storage: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::open(storage_dir(dir)).expect("open checkpoint storage"));
        let config = BackendConfig::default();
        match kind {
            BackendKind::Lsm => Backend::Lsm(Box::new(
                LsmBackend::open(config, storage, LsmBackendOptions::new(dir.join(work)))
                    .expect("open lsm backend"),
            )),
            _ => Backend::Fs(Box::new(
                FsBackend::new(config, storage).expect("open fs backend"),
            )),
        }
    }

    fn state(&mut self) -> &mut dyn StateBackend {
        match self {
            Backend::Fs(b) => b.as_mut(),
            Backend::Lsm(b) => b.as_mut(),
        }
    }

    fn restore_latest(&mut self) -> Option<u64> {
        match self {
            Backend::Fs(b) => b.restore_latest(),
            Backend::Lsm(b) => b.restore_latest(),
        }
        .expect("restore")
    }

    /// The last checkpoint's materialization-target bytes (LSM; 0 for fs).
    fn materialized_bytes(&self) -> u64 {
        match self {
            Backend::Fs(_) => 0,
            Backend::Lsm(b) => b
                .last_checkpoint_stats()
                .map_or(0, |s| s.materialized_bytes),
        }
    }
}

fn descriptor() -> StateDescriptor {
    StateDescriptor::new("values", StateKind::Value)
}

fn key(k: u64) -> Vec<u8> {
    let user = k.to_be_bytes();
    composite_key(key_group_for_key(&user, 128), &user, b"", b"")
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A 100-byte value: key and version, then lowercase letters from a seeded generator (about
/// 4.7 bits of entropy per byte, so zstd compresses values to roughly 60%).
fn value(k: u64, version: u64) -> [u8; VALUE_LEN] {
    let mut out = [0u8; VALUE_LEN];
    out[..8].copy_from_slice(&k.to_le_bytes());
    out[8..16].copy_from_slice(&version.to_le_bytes());
    let mut s = k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version.wrapping_add(1);
    s |= 1;
    for chunk in out[16..].chunks_mut(8) {
        let r = xorshift(&mut s);
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = b'a' + ((r >> (i * 8)) % 26) as u8;
        }
    }
    out
}

impl Rig {
    /// A backend of `kind` holding `bytes / 100` keys.
    fn grown(kind: BackendKind, bytes: u64) -> Rig {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut backend = Backend::open(kind, dir.path(), "work");
        let state = backend.state().register(&descriptor()).expect("register");
        let keys = bytes / VALUE_LEN as u64;
        for k in 0..keys {
            backend
                .state()
                .put(state, &key(k), &value(k, 0))
                .expect("put");
        }
        Rig {
            kind,
            dir,
            backend,
            state,
            keys,
            next_checkpoint: 1,
            rng: 0x2545_f491_4f6c_dd1d,
            version: 0,
            last_sync_runq: Duration::ZERO,
        }
    }

    /// Changes `rate` of the keys; returns the zstd level-3 size of the changed key and value
    /// bytes.
    fn change(&mut self, rate: f64) -> u64 {
        let count = ((self.keys as f64 * rate).ceil() as u64).max(1);
        self.version += 1;
        let mut changed = Vec::with_capacity(count as usize * (VALUE_LEN + 16));
        for _ in 0..count {
            let k = xorshift(&mut self.rng) % self.keys;
            let (key, value) = (key(k), value(k, self.version));
            self.backend
                .state()
                .put(self.state, &key, &value)
                .expect("put");
            changed.extend_from_slice(&key);
            changed.extend_from_slice(&value);
        }
        zstd::bulk::compress(&changed, 3).expect("zstd").len() as u64
    }

    /// Takes one checkpoint; returns (sync, async, bytes added to storage, WAL bytes the
    /// freeze synced). The run-queue wait of the sync phase goes to `last_sync_runq`.
    fn checkpoint(&mut self) -> (Duration, Duration, u64, u64) {
        let before = files(&storage_dir(self.dir.path()));
        let wal = newest_wal_len(self.dir.path());
        let id = self.next_checkpoint;
        self.next_checkpoint += 1;
        let runq = run_queue_wait();
        let start = Instant::now();
        let task = self.backend.state().snapshot(id).expect("snapshot");
        let sync = start.elapsed();
        self.last_sync_runq = run_queue_wait().saturating_sub(runq);
        let start = Instant::now();
        task.run().expect("checkpoint");
        let run = start.elapsed();
        let after = files(&storage_dir(self.dir.path()));
        let added = after
            .iter()
            .filter(|(path, _)| !before.contains_key(*path))
            .map(|(_, size)| size)
            .sum();
        (sync, run, added, wal)
    }

    /// Restores the latest checkpoint into a fresh backend; returns the time of the restore.
    fn restore(&self) -> Duration {
        let mut fresh = Backend::open(self.kind, self.dir.path(), "restore");
        let start = Instant::now();
        let restored = fresh.restore_latest();
        let elapsed = start.elapsed();
        assert_eq!(restored, Some(self.next_checkpoint - 1));
        let state = fresh.state().register(&descriptor()).expect("register");
        let probe = key(self.keys / 2);
        assert!(fresh.state().get(state, &probe).expect("get").is_some());
        drop(fresh);
        let _ = std::fs::remove_dir_all(self.dir.path().join("restore"));
        elapsed
    }
}

/// Time this thread has spent runnable but waiting for a CPU (Linux
/// `/proc/thread-self/schedstat`, second field; zero elsewhere): how much of a sync phase was
/// the scheduler's, not the backend's.
fn run_queue_wait() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Every file under `dir` (recursively) with its size, by path.
fn files(dir: &Path) -> HashMap<PathBuf, u64> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) => {
                    out.insert(entry.path(), meta.len());
                }
                Err(_) => {}
            }
        }
    }
    out
}

/// Size of the newest WAL file of the LSM store under `dir/work` (0 for fs): what the next
/// freeze has to fsync.
fn newest_wal_len(dir: &Path) -> u64 {
    files(&dir.join("work"))
        .into_iter()
        .filter(|(path, _)| path.extension().is_some_and(|e| e == "wal"))
        .max_by_key(|(path, _)| path.file_name().map(|n| n.to_os_string()))
        .map_or(0, |(_, size)| size)
}

/// Per-checkpoint measurements of one run.
#[derive(Default)]
struct Samples {
    sync: Vec<Duration>,
    /// Run-queue wait during each sync phase.
    sync_runq: Vec<Duration>,
    run: Vec<Duration>,
    bytes: Vec<u64>,
    changed_compressed: Vec<u64>,
    materialized: Vec<u64>,
    wal: Vec<u64>,
}

fn mean_ms(d: &[Duration]) -> f64 {
    d.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / d.len().max(1) as f64
}

fn max_ms(d: &[Duration]) -> f64 {
    d.iter().map(Duration::as_secs_f64).fold(0.0, f64::max) * 1000.0
}

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
}

fn max(v: &[u64]) -> u64 {
    v.iter().copied().max().unwrap_or(0)
}

/// Takes checkpoints with `rate` changes until one uploads no materialization bytes, so that
/// the measured ones start from a settled LSM layout (fs: one checkpoint). Returns how many.
fn warm_up(rig: &mut Rig, rate: f64) -> usize {
    for n in 1..=MAX_WARM_UP {
        rig.change(rate);
        rig.checkpoint();
        if rig.kind != BackendKind::Lsm || rig.backend.materialized_bytes() == 0 {
            return n;
        }
    }
    MAX_WARM_UP
}

fn measure(rig: &mut Rig, rate: f64) -> Samples {
    let mut samples = Samples::default();
    for _ in 0..CHECKPOINTS {
        samples.changed_compressed.push(rig.change(rate));
        let (sync, run, bytes, wal) = rig.checkpoint();
        samples.sync.push(sync);
        samples.sync_runq.push(rig.last_sync_runq);
        samples.run.push(run);
        samples.bytes.push(bytes);
        samples.wal.push(wal);
        samples.materialized.push(rig.backend.materialized_bytes());
    }
    samples
}

fn human(bytes: f64) -> String {
    if bytes >= 1e6 {
        format!("{:.1} MB", bytes / 1e6)
    } else {
        format!("{:.1} KB", bytes / 1e3)
    }
}

/// Runs the report for `bytes` of state on `kind`, printing one table row per change rate.
fn report_size(kind: BackendKind, bytes: u64) {
    let start = Instant::now();
    let mut rig = Rig::grown(kind, bytes);
    let grow = start.elapsed();
    for rate in RATES {
        let warm = warm_up(&mut rig, rate);
        let s = measure(&mut rig, rate);
        let restore = rig.restore();
        let ratio_mean = mean(&s.bytes) / mean(&s.changed_compressed).max(1.0);
        let ratio_max = s
            .bytes
            .iter()
            .zip(&s.changed_compressed)
            .map(|(b, c)| *b as f64 / (*c).max(1) as f64)
            .fold(0.0, f64::max);
        let slowest = s
            .sync
            .iter()
            .zip(&s.sync_runq)
            .max_by_key(|(sync, _)| **sync)
            .map_or(0.0, |(_, runq)| runq.as_secs_f64() * 1000.0);
        println!(
            "| {kind} | {} MB | {}% | {:.2} / {:.2} ({slowest:.2}) | {:.1} / {:.1} | {} / {} | {} | {:.1}x / {:.1}x | {} | {} | {:.0} | {warm} |",
            bytes / MB,
            rate * 100.0,
            mean_ms(&s.sync),
            max_ms(&s.sync),
            mean_ms(&s.run),
            max_ms(&s.run),
            human(mean(&s.bytes)),
            human(max(&s.bytes) as f64),
            human(mean(&s.changed_compressed)),
            ratio_mean,
            ratio_max,
            human(mean(&s.materialized)),
            human(mean(&s.wal)),
            restore.as_secs_f64() * 1000.0,
        );
    }
    eprintln!(
        "({kind} {} MB: grown in {grow:.1?}, whole run {:.1?})",
        bytes / MB,
        start.elapsed()
    );
}

/// Time of an fsync of a file of `len` freshly written bytes: what the LSM freeze pays for a
/// WAL of that size (its writes sit in the page cache until then).
fn fsync_cost(dir: &Path, len: usize) -> Duration {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).expect("create probe");
    file.write_all(&vec![7u8; len]).expect("write probe");
    let start = Instant::now();
    file.sync_all().expect("fsync probe");
    let elapsed = start.elapsed();
    let _ = std::fs::remove_file(&path);
    elapsed
}

fn report() {
    let mut sizes = vec![10 * MB];
    if std::env::var("FLOWSTATE_BENCH_100MB").map_or(true, |v| v != "0") {
        sizes.push(100 * MB);
    }
    if std::env::var("FLOWSTATE_BENCH_1GB").is_ok_and(|v| v == "1") {
        sizes.push(1000 * MB);
    }
    let backends: Vec<BackendKind> = match std::env::var("FLOWSTATE_BENCH_BACKENDS").as_deref() {
        Ok("fs") => vec![BackendKind::Fs],
        Ok("lsm") => vec![BackendKind::Lsm],
        _ => vec![BackendKind::Fs, BackendKind::Lsm],
    };
    println!(
        "{CHECKPOINTS} checkpoints per row; a / b = mean / max per checkpoint; (c) = of the slowest sync, ms spent waiting for a CPU (run queue); bytes = new files in checkpoint storage; \
         changed = zstd-3 size of the changed keys and values of one interval; ratio = bytes / changed"
    );
    println!(
        "| backend | state | changed keys | sync ms | async ms | bytes | changed (zstd) | ratio | of which target | WAL at freeze | restore ms | warm-up ckpts |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &size in &sizes {
        for &kind in &backends {
            report_size(kind, size);
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    for len in [4 << 10, 1 << 20, 16 << 20] {
        println!(
            "fsync of a freshly written {} file: {:.2} ms",
            human(len as f64),
            fsync_cost(dir.path(), len).as_secs_f64() * 1000.0
        );
    }
}

fn criterion_benches(c: &mut Criterion) {
    for kind in [BackendKind::Fs, BackendKind::Lsm] {
        let mut rig = Rig::grown(kind, 10 * MB);
        rig.change(0.01);
        rig.checkpoint();
        let mut group = c.benchmark_group(format!("checkpoint_10MB/{kind}"));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(5));
        group.bench_function("sync_and_async_after_1pct_changes", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    rig.change(0.01);
                    let (sync, run, _, _) = rig.checkpoint();
                    total += sync + run;
                }
                total
            })
        });
        group.bench_function("restore", |b| {
            b.iter_custom(|iters| (0..iters).map(|_| black_box(rig.restore())).sum())
        });
        group.finish();
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then only smoke-test.
    let benching = std::env::args().any(|a| a == "--bench");
    if benching && std::env::var("FLOWSTATE_BENCH_REPORT").map_or(true, |v| v != "0") {
        report();
    }
    if std::env::var("FLOWSTATE_BENCH_CRITERION").is_ok_and(|v| v == "0") {
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    criterion_benches(&mut criterion);
    criterion.final_summary();
}
