//! A small, deterministic LSM workload split into phases for instruction counting with
//! `valgrind --tool=callgrind --toggle-collect='*lsm_phases::phase_*'` (repeatable whatever the
//! machine load): random puts into the memtable, gets from the memtable, a flush, gets from SSTs.
//! Usage: `cargo run --release --example lsm_phases -- [keys]` (default 100k; 16-byte keys,
//! 100-byte values, zstd, 10-bit bloom, like `benches/lsm.rs`). `FLOWSTATE_MMAP_READS=1` reads
//! SSTs through memory maps, `FLOWSTATE_CACHE_MB=n` sizes the block cache,
//! `FLOWSTATE_COMPRESSION=none|lz4|zstd1|zstd3` picks the block compression (default zstd3) and
//! `FLOWSTATE_COMPRESSIBLE=1` makes the second half of each value a repeated pattern (about 50%
//! compressible; the default values are random); peak and final RSS are printed at the end. The hits of both read phases are checked against the keys the fill
//! wrote (exits non-zero on a wrong count). A last phase, in a store of its own with 256 KiB
//! files, compacts four L0 files of overwrites into the files below (75 at 100k keys; the whole
//! key range: every file an input) and checks the keys that remain.

use std::collections::HashSet;
use std::path::Path;

use flowstate::lsm::{Compression, Db, Options};

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn key(i: u64) -> [u8; 16] {
    let h = mix(i);
    let mut k = [0u8; 16];
    k[..2].copy_from_slice(&((h % 64) as u16).to_be_bytes());
    k[2..10].copy_from_slice(&h.to_be_bytes());
    k[10..].copy_from_slice(&i.to_be_bytes()[2..]);
    k
}

/// Whether `FLOWSTATE_COMPRESSIBLE` is set (read once: a lookup per value would be most of the
/// fill phase's profile).
fn compressible() -> bool {
    static COMPRESSIBLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *COMPRESSIBLE.get_or_init(|| std::env::var_os("FLOWSTATE_COMPRESSIBLE").is_some())
}

fn value(i: u64) -> [u8; 100] {
    let mut v = [0u8; 100];
    for (n, chunk) in v.chunks_mut(8).enumerate() {
        let r = mix(i.wrapping_mul(31).wrapping_add(n as u64)).to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    if compressible() {
        let pattern = (i % 7).to_le_bytes();
        for (n, b) in v[50..].iter_mut().enumerate() {
            *b = pattern[n % 4];
        }
    }
    v
}

/// The block compression `FLOWSTATE_COMPRESSION` names (default zstd level 3).
fn compression() -> Compression {
    match std::env::var("FLOWSTATE_COMPRESSION").as_deref() {
        Ok("none") => Compression::None,
        Ok("lz4") => Compression::Lz4,
        Ok("zstd1") => Compression::Zstd { level: 1 },
        Ok("zstd3") | Err(_) => Compression::Zstd { level: 3 },
        Ok(other) => panic!("FLOWSTATE_COMPRESSION={other}: expected none, lz4, zstd1 or zstd3"),
    }
}

/// How many reads of `phase_read(_, keys, salt)` find a key `phase_fill(_, keys)` wrote.
fn expected_hits(keys: u64, salt: u64) -> usize {
    let written: HashSet<u64> = (0..keys).map(|i| mix(i) % keys).collect();
    (0..keys)
        .filter(|&i| written.contains(&(mix(i ^ salt) % keys)))
        .count()
}

#[inline(never)]
fn phase_fill(db: &Db, keys: u64) {
    let cf = db.default_cf();
    for i in 0..keys {
        db.put(&cf, &key(mix(i) % keys), &value(i)).expect("put");
    }
}

#[inline(never)]
fn phase_read(db: &Db, keys: u64, salt: u64) -> usize {
    let cf = db.default_cf();
    let mut found = 0;
    for i in 0..keys {
        let k = key(mix(i ^ salt) % keys);
        found += usize::from(db.get(&cf, &k).expect("get").is_some());
    }
    found
}

#[inline(never)]
fn phase_memtable_read(db: &Db, keys: u64) -> usize {
    phase_read(db, keys, 0x5555)
}

#[inline(never)]
fn phase_sst_read(db: &Db, keys: u64) -> usize {
    phase_read(db, keys, 0xaaaa)
}

#[inline(never)]
fn phase_flush(db: &Db) {
    db.flush().expect("flush");
}

#[inline(never)]
fn phase_compact(db: &Db) {
    db.compact_range(&db.default_cf(), None, None)
        .expect("compact");
}

/// The compaction phase's store: `keys` keys flushed and compacted into files of 256 KiB, then
/// four flushed L0 files of overwrites of a quarter of the keys each; times and checks
/// [`phase_compact`].
fn run_compaction(dir: &Path, keys: u64) {
    let mut options = Options::default();
    options.default_cf_options.sst.compression = compression();
    options.default_cf_options.sst.bloom_bits_per_key = 10;
    options.default_cf_options.compaction.target_file_size = 256 << 10;
    options.background_work = false;
    let db = Db::open(dir, options).expect("open");
    let cf = db.default_cf();
    phase_fill(&db, keys);
    db.flush().expect("flush");
    db.compact_range(&cf, None, None).expect("compact");
    for round in 0..4u64 {
        for i in (round..keys).step_by(4) {
            db.put(&cf, &key(i), &value(i ^ round)).expect("put");
        }
        db.flush().expect("flush");
    }
    let files = |db: &Db| {
        db.stats()
            .column_families
            .iter()
            .map(|c| c.files_per_level.iter().sum::<usize>())
            .sum::<usize>()
    };
    let before = files(&db);
    let t = std::time::Instant::now();
    phase_compact(&db);
    let compact = t.elapsed();
    // The overwrites wrote every key of 0..keys.
    let present = (0..keys)
        .filter(|&i| db.get(&cf, &key(i)).expect("get").is_some())
        .count();
    println!(
        "compaction of {before} files ({} after): {compact:?}",
        files(&db)
    );
    assert_eq!(present as u64, keys, "keys after the compaction");
}

fn run(dir: &Path, keys: u64) {
    let mut options = Options::default();
    options.default_cf_options.sst.compression = compression();
    options.default_cf_options.sst.bloom_bits_per_key = 10;
    options.background_work = false;
    options.allow_mmap_reads = std::env::var_os("FLOWSTATE_MMAP_READS").is_some();
    if let Some(mb) = std::env::var("FLOWSTATE_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        options.block_cache_size = mb << 20;
    }
    let db = Db::open(dir, options).expect("open");
    let t = std::time::Instant::now();
    phase_fill(&db, keys);
    let fill = t.elapsed();
    let t = std::time::Instant::now();
    let memtable_hits = phase_memtable_read(&db, keys);
    let mem_read = t.elapsed();
    let t = std::time::Instant::now();
    phase_flush(&db);
    let flush = t.elapsed();
    let t = std::time::Instant::now();
    let sst_hits = phase_sst_read(&db, keys);
    let sst_read = t.elapsed();
    println!(
        "keys {keys}: fill {fill:?}, memtable reads {mem_read:?} ({memtable_hits} hits), \
         flush {flush:?}, sst reads {sst_read:?} ({sst_hits} hits); mmap reads {}",
        db.stats().block_cache_misses > 0 && std::env::var_os("FLOWSTATE_MMAP_READS").is_some()
    );
    assert_eq!(memtable_hits, expected_hits(keys, 0x5555), "memtable reads");
    assert_eq!(sst_hits, expected_hits(keys, 0xaaaa), "SST reads");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in status.lines() {
        if line.starts_with("VmHWM") || line.starts_with("RssAnon") || line.starts_with("RssFile") {
            println!("{line}");
        }
    }
}

fn main() {
    let keys = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    run(&dir.path().join("phases"), keys);
    run_compaction(&dir.path().join("compaction"), keys);
}
