//! Peer benchmark: flowstate's LSM store against RocksDB, fjall and cobble on the same
//! workloads.
//!
//! One engine per process, so the peak RSS read from `/proc/self/status` (VmHWM) at the end is
//! that engine's alone. Prints one tab-separated `RESULT` line per workload for `run.sh`.

mod engines;

use std::collections::HashSet;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::{Parser, ValueEnum};

use engines::{Engine, Settings};

type Res<T> = Result<T, Box<dyn Error>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum EngineName {
    Flowstate,
    Rocksdb,
    Fjall,
    Cobble,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    All,
    Fillrandom,
    Readrandom,
    Overwrite,
    Prefixscan,
    Checkpoint,
}

#[derive(Parser, Debug)]
#[command(about = "flowstate vs RocksDB vs fjall vs cobble, one engine per invocation")]
struct Args {
    /// Engine to run.
    #[arg(long, value_enum)]
    engine: EngineName,
    /// Workload (`all` runs fill, read, scan, checkpoints and overwrite in that order; the others
    /// fill first when they need data).
    #[arg(long, value_enum, default_value = "all")]
    workload: Workload,
    /// Keys loaded by fillrandom; readrandom and overwrite do this many operations too.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Number of 2-byte key groups the keys are spread over.
    #[arg(long, default_value_t = 128)]
    groups: u16,
    /// Key groups scanned by prefixscan (each one a fresh iterator).
    #[arg(long, default_value_t = 16)]
    scan_groups: u16,
    /// Distinct keys hit by overwrite.
    #[arg(long, default_value_t = 10_000)]
    hot_keys: u64,
    /// Values half random, half repeated (compress about 2:1, like db_bench's default) instead
    /// of fully random.
    #[arg(long)]
    compressible: bool,
    /// Directory for the store and checkpoints (a fresh one under the system temp dir if unset;
    /// removed at the end either way).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// PRNG seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Block cache size in MiB, for every engine.
    #[arg(long, default_value_t = 64)]
    cache_mib: usize,
    /// zstd level, for the engines that compress with zstd (flowstate, RocksDB).
    #[arg(long, default_value_t = 3)]
    zstd_level: i32,
}

/// splitmix64 finalizer: a bijection on u64, so distinct inputs give distinct keys.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xorshift64* generator for random indices and value bytes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(mix(seed) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, buf: &mut [u8], compressible: bool) {
        let random = if compressible {
            buf.len() / 2
        } else {
            buf.len()
        };
        for chunk in buf[..random].chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        for i in random..buf.len() {
            buf[i] = buf[i - random];
        }
    }
}

/// Salt XORed into the index before hashing it into a key.
///
/// Unsalted, `mix(i)` is bit for bit the hash cobble's skiplist memtable draws a node's height
/// from (of its insertion ordinal, which is `i` while fillrandom fills the first memtable), and
/// the key group is the hash's low bits: key order and node height would be correlated and the
/// skiplist would degrade to long linear runs. Any salt breaks that; the keys stay uniform.
const KEY_SALT: u64 = 0x6b65_795f_7361_6c74;

/// The hash that places index `i`'s key (see [`KEY_SALT`]).
fn key_hash(i: u64) -> u64 {
    mix(i ^ KEY_SALT)
}

/// Key of index `i`: key group (u16 BE) | key_hash(i) (u64 BE) | low 6 bytes of i — 16 bytes,
/// unique per index and in random order relative to the index.
fn key(i: u64, groups: u16) -> [u8; 16] {
    let h = key_hash(i);
    let group = (h % u64::from(groups)) as u16;
    let mut k = [0u8; 16];
    k[..2].copy_from_slice(&group.to_be_bytes());
    k[2..10].copy_from_slice(&h.to_be_bytes());
    k[10..].copy_from_slice(&i.to_be_bytes()[2..]);
    k
}

struct Report {
    engine: &'static str,
    cpu: std::cell::Cell<f64>,
    /// The largest anonymous RSS (KiB) sampled since the previous line; reset by each line.
    phase_anon: Arc<AtomicU64>,
}

/// User plus system CPU seconds of this process, all threads (`/proc/self/stat`, 100 Hz).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

impl Report {
    /// `RESULT engine workload ops seconds ops_per_sec extra`, where extra ends with the
    /// process CPU time (all threads) since the previous line: on a shared machine the CPU
    /// cost is steadier than wall time.
    fn line(&self, workload: &str, ops: u64, seconds: f64, extra: &str) {
        let rate = if seconds > 0.0 {
            ops as f64 / seconds
        } else {
            0.0
        };
        let cpu = cpu_seconds();
        let used = cpu - self.cpu.replace(cpu);
        let per_cpu = if used > 0.0 { ops as f64 / used } else { 0.0 };
        let anon = self
            .phase_anon
            .swap(0, Ordering::Relaxed)
            .max(status_kib("RssAnon:"));
        println!(
            "RESULT\t{}\t{workload}\t{ops}\t{seconds:.6}\t{rate:.0}\t{extra} cpu_s={used:.2} \
             ops_per_cpu_s={per_cpu:.0} phase_peak_anon_kib={anon}",
            self.engine
        );
    }
}

fn fill(db: &dyn Engine, args: &Args, rng: &mut Rng, report: &Report) -> Res<()> {
    let mut value = vec![0u8; args.value_size];
    let start = Instant::now();
    for i in 0..args.keys {
        rng.fill(&mut value, args.compressible);
        db.put(&key(i, args.groups), &value)?;
    }
    let secs = start.elapsed().as_secs_f64();
    report.line("fillrandom", args.keys, secs, "");
    let start = Instant::now();
    db.flush()?;
    report.line("flush_after_fill", 1, start.elapsed().as_secs_f64(), "");
    Ok(())
}

fn read_random(db: &dyn Engine, args: &Args, rng: &mut Rng, report: &Report) -> Res<()> {
    let start = Instant::now();
    let mut found = 0u64;
    for _ in 0..args.keys {
        if db.get(&key(rng.below(args.keys), args.groups))? {
            found += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if found != args.keys {
        return Err(format!("readrandom found {found} of {} keys", args.keys).into());
    }
    report.line("readrandom", args.keys, secs, &format!("found={found}"));
    Ok(())
}

fn prefix_scan(db: &dyn Engine, args: &Args, report: &Report) -> Res<()> {
    let groups = args.scan_groups.min(args.groups);
    let start = Instant::now();
    let mut keys = 0u64;
    for g in 0..groups {
        keys += db.scan_prefix(&g.to_be_bytes())?;
    }
    let secs = start.elapsed().as_secs_f64();
    let expected = (0..args.keys)
        .filter(|i| (key_hash(*i) % u64::from(args.groups)) < u64::from(groups))
        .count() as u64;
    if keys != expected {
        return Err(format!("prefixscan saw {keys} keys, expected {expected}").into());
    }
    let per_scan_ms = secs * 1000.0 / f64::from(groups.max(1));
    report.line(
        "prefixscan",
        keys,
        secs,
        &format!("groups={groups} ms_per_group={per_scan_ms:.2}"),
    );
    Ok(())
}

fn overwrite(db: &dyn Engine, args: &Args, rng: &mut Rng, report: &Report) -> Res<()> {
    let mut value = vec![0u8; args.value_size];
    let hot = args.hot_keys.min(args.keys).max(1);
    let start = Instant::now();
    for _ in 0..args.keys {
        rng.fill(&mut value, args.compressible);
        db.put(&key(rng.below(hot), args.groups), &value)?;
    }
    report.line(
        "overwrite",
        args.keys,
        start.elapsed().as_secs_f64(),
        &format!("hot_keys={hot}"),
    );
    Ok(())
}

/// Files of a checkpoint by inode, with sizes (hard links share the inode of the file they
/// link to, so a file already in an earlier checkpoint has a known inode).
fn files_by_inode(dir: &Path) -> Res<Vec<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = std::fs::symlink_metadata(entry.path())?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((meta.ino(), meta.len()));
            }
        }
    }
    Ok(out)
}

fn checkpoints(
    db: &dyn Engine,
    args: &Args,
    rng: &mut Rng,
    report: &Report,
    dir: &Path,
) -> Res<()> {
    let first = dir.join("checkpoint-1");
    let start = Instant::now();
    db.checkpoint(&first)?;
    let secs = start.elapsed().as_secs_f64();
    let files = files_by_inode(&first)?;
    let bytes: u64 = files.iter().map(|f| f.1).sum();
    report.line(
        "checkpoint",
        1,
        secs,
        &format!("files={} bytes={bytes} new_bytes={bytes}", files.len()),
    );
    let known: HashSet<u64> = files.iter().map(|f| f.0).collect();

    let updates = (args.keys / 100).max(1);
    let mut value = vec![0u8; args.value_size];
    for _ in 0..updates {
        rng.fill(&mut value, args.compressible);
        db.put(&key(rng.below(args.keys), args.groups), &value)?;
    }
    let second = dir.join("checkpoint-2");
    let start = Instant::now();
    db.checkpoint(&second)?;
    let secs = start.elapsed().as_secs_f64();
    let files = files_by_inode(&second)?;
    let bytes: u64 = files.iter().map(|f| f.1).sum();
    let new: Vec<&(u64, u64)> = files.iter().filter(|f| !known.contains(&f.0)).collect();
    let new_bytes: u64 = new.iter().map(|f| f.1).sum();
    report.line(
        "checkpoint_incr",
        1,
        secs,
        &format!(
            "updates={updates} files={} bytes={bytes} new_files={} new_bytes={new_bytes}",
            files.len(),
            new.len()
        ),
    );
    Ok(())
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn dir_size(dir: &Path) -> u64 {
    files_by_inode(dir)
        .map(|f| f.iter().map(|x| x.1).sum())
        .unwrap_or(0)
}

fn run(args: &Args, root: &Path) -> Res<()> {
    let data = root.join("db");
    let settings = Settings {
        block_cache_size: args.cache_mib << 20,
        zstd_level: args.zstd_level,
        ..Settings::default()
    };
    let db: Box<dyn Engine> = match args.engine {
        EngineName::Flowstate => Box::new(engines::Flowstate::open(&data, &settings)?),
        EngineName::Rocksdb => Box::new(engines::Rocks::open(&data, &settings)?),
        EngineName::Fjall => Box::new(engines::Fjall::open(&data, &settings)?),
        EngineName::Cobble => Box::new(engines::Cobble::open(&data, &settings)?),
    };
    let peak_anon = Arc::new(AtomicU64::new(0));
    let report = Report {
        engine: db.name(),
        cpu: std::cell::Cell::new(cpu_seconds()),
        phase_anon: Arc::new(AtomicU64::new(0)),
    };
    {
        // The kernel keeps no high-water mark of anonymous memory: sample it every 10 ms.
        let peak_anon = Arc::clone(&peak_anon);
        let phase_anon = Arc::clone(&report.phase_anon);
        std::thread::spawn(move || {
            loop {
                let anon = status_kib("RssAnon:");
                peak_anon.fetch_max(anon, Ordering::Relaxed);
                phase_anon.fetch_max(anon, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
    }
    let mut rng = Rng::new(args.seed);
    let w = args.workload;
    fill(db.as_ref(), args, &mut rng, &report)?;
    if matches!(w, Workload::All | Workload::Readrandom) {
        read_random(db.as_ref(), args, &mut rng, &report)?;
    }
    if matches!(w, Workload::All | Workload::Prefixscan) {
        prefix_scan(db.as_ref(), args, &report)?;
    }
    if matches!(w, Workload::All | Workload::Checkpoint) {
        checkpoints(db.as_ref(), args, &mut rng, &report, root)?;
    }
    if matches!(w, Workload::All | Workload::Overwrite) {
        overwrite(db.as_ref(), args, &mut rng, &report)?;
    }
    let disk = dir_size(&data);
    peak_anon.fetch_max(status_kib("RssAnon:"), Ordering::Relaxed);
    let rss = status_kib("VmRSS:");
    let rss_file = status_kib("RssFile:");
    drop(db);
    println!(
        "RESULT\t{}\tmemory\t0\t0\t0\tpeak_rss_kib={} peak_anon_kib={} rss_kib={rss} \
         rss_file_kib={rss_file} db_bytes={disk}",
        report.engine,
        status_kib("VmHWM:"),
        peak_anon.load(Ordering::Relaxed),
    );
    Ok(())
}

fn main() -> Res<()> {
    let args = Args::parse();
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("flowstate-peers-{}", std::process::id())),
    };
    if root.exists() {
        return Err(format!("{} already exists", root.display()).into());
    }
    std::fs::create_dir_all(&root)?;
    let result = run(&args, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}
