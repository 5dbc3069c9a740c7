//! The LSM store (`flowstate::lsm::Db`) on 100k keys of 16 bytes (`key_group u16 BE | hash u64 BE
//! | index u48 BE`) with 100-byte values, zstd and a 10-bit bloom filter: put, get of present and
//! absent keys from flushed SSTs, a prefix scan of one key group, and a flush of a 100k-key
//! memtable; and per block compression (none, LZ4, zstd 1 and 3) on values half compressible,
//! a flush and random gets through a block cache 1/8 of the data (every block read is
//! decompressed). Quick by design; the comparison with RocksDB and fjall is
//! `benches/peers/run.sh`. Run with `cargo bench --bench lsm`.

use std::hint::black_box;
use std::path::Path;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use flowstate::lsm::Compression;
use flowstate::lsm::{Db, Options, ReadOptions};

/// Keys loaded before the read benches.
const KEYS: u64 = 100_000;
/// Operations per measured iteration of put and get.
const OPS: u64 = 10_000;
/// Key groups the keys are spread over (about 1.5k keys per group).
const GROUPS: u64 = 64;
/// Value size.
const VALUE_SIZE: usize = 100;

/// splitmix64 finalizer: a bijection, so distinct indices give distinct keys.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn key(i: u64) -> [u8; 16] {
    let h = mix(i);
    let mut k = [0u8; 16];
    k[..2].copy_from_slice(&((h % GROUPS) as u16).to_be_bytes());
    k[2..10].copy_from_slice(&h.to_be_bytes());
    k[10..].copy_from_slice(&i.to_be_bytes()[2..]);
    k
}

fn value(i: u64) -> [u8; VALUE_SIZE] {
    let mut v = [0u8; VALUE_SIZE];
    for (n, chunk) in v.chunks_mut(8).enumerate() {
        let r = mix(i.wrapping_mul(31).wrapping_add(n as u64)).to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    v
}

fn options() -> Options {
    let mut options = Options::default();
    options.default_cf_options.sst.compression = Compression::Zstd { level: 3 };
    options.default_cf_options.sst.bloom_bits_per_key = 10;
    options
}

fn open(dir: &Path) -> Db {
    Db::open(dir, options()).expect("open store")
}

fn load(db: &Db, keys: u64) {
    let cf = db.default_cf();
    for i in 0..keys {
        db.put(&cf, &key(i), &value(i)).expect("put");
    }
}

fn put(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let cf = db.default_cf();
    let mut group = c.benchmark_group("lsm_put");
    group.throughput(Throughput::Elements(OPS));
    let mut next = 0u64;
    group.bench_function("random_16b_key_100b_value", |b| {
        b.iter(|| {
            for _ in 0..OPS {
                let i = next % KEYS;
                next += 1;
                db.put(&cf, &key(i), &value(next)).expect("put");
            }
        })
    });
    group.finish();
}

fn get(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    load(&db, KEYS);
    db.flush().expect("flush");
    let cf = db.default_cf();
    let mut group = c.benchmark_group("lsm_get");
    group.throughput(Throughput::Elements(OPS));
    let mut next = 0u64;
    group.bench_function("hit", |b| {
        b.iter(|| {
            for _ in 0..OPS {
                next += 1;
                let found = db.get(&cf, &key(mix(next) % KEYS)).expect("get");
                black_box(found.expect("present"));
            }
        })
    });
    group.bench_function("miss", |b| {
        b.iter(|| {
            for _ in 0..OPS {
                next += 1;
                let found = db.get(&cf, &key(KEYS + next)).expect("get");
                debug_assert!(found.is_none());
                black_box(found);
            }
        })
    });
    group.finish();
}

fn prefix_scan(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    load(&db, KEYS);
    db.flush().expect("flush");
    let cf = db.default_cf();
    let prefix = 7u16.to_be_bytes();
    let expected = (0..KEYS).filter(|i| mix(*i) % GROUPS == 7).count() as u64;
    let mut group = c.benchmark_group("lsm_prefix_scan");
    group.throughput(Throughput::Elements(expected));
    group.bench_function("one_key_group", |b| {
        b.iter(|| {
            let mut iter = db.iter(&cf, ReadOptions::prefix(&prefix)).expect("iter");
            iter.seek_to_first().expect("seek");
            let mut n = 0u64;
            while iter.valid() {
                black_box((iter.key(), iter.value()));
                n += 1;
                iter.next().expect("next");
            }
            assert_eq!(n, expected);
        })
    });
    group.finish();
}

fn flush(c: &mut Criterion) {
    let mut group = c.benchmark_group("lsm_flush");
    group.throughput(Throughput::Elements(KEYS));
    group.sample_size(10);
    group.bench_function("memtable_100k_keys", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("tempdir");
                let db = open(dir.path());
                load(&db, KEYS);
                (dir, db)
            },
            |(dir, db)| {
                db.flush().expect("flush");
                (dir, db)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// A value whose second half repeats a 4-byte pattern: about 50% compressible, like the peer
/// comparison's values.
fn half_compressible_value(i: u64) -> [u8; VALUE_SIZE] {
    let mut v = value(i);
    let pattern = (i % 7).to_le_bytes();
    for (n, b) in v[VALUE_SIZE / 2..].iter_mut().enumerate() {
        *b = pattern[n % 4];
    }
    v
}

const COMPRESSIONS: [(&str, Compression); 4] = [
    ("none", Compression::None),
    ("lz4", Compression::Lz4),
    ("zstd1", Compression::Zstd { level: 1 }),
    ("zstd3", Compression::Zstd { level: 3 }),
];

fn compressed_store(dir: &Path, compression: Compression, block_cache_size: usize) -> Db {
    let mut options = options().block_cache_size(block_cache_size);
    options.default_cf_options.sst.compression = compression;
    let db = Db::open(dir, options).expect("open store");
    let cf = db.default_cf();
    for i in 0..KEYS {
        db.put(&cf, &key(i), &half_compressible_value(i))
            .expect("put");
    }
    db
}

fn compression(c: &mut Criterion) {
    let mut group = c.benchmark_group("lsm_compression");
    group.sample_size(10);
    for (name, compression) in COMPRESSIONS {
        group.throughput(Throughput::Elements(KEYS));
        group.bench_function(format!("flush_100k/{name}"), |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let db = compressed_store(dir.path(), compression, 64 << 20);
                    (dir, db)
                },
                |(dir, db)| {
                    db.flush().expect("flush");
                    (dir, db)
                },
                BatchSize::PerIteration,
            )
        });
        let dir = tempfile::tempdir().expect("tempdir");
        // ~12 MB of 4 KiB blocks uncompressed; the cache holds an eighth of that.
        let db = compressed_store(dir.path(), compression, 1536 << 10);
        db.flush().expect("flush");
        let bytes = db.live_files().total_size();
        eprintln!("lsm_compression/{name}: {bytes} bytes of SST for {KEYS} keys");
        let cf = db.default_cf();
        let mut next = 0u64;
        group.throughput(Throughput::Elements(OPS));
        group.bench_function(format!("get_beyond_cache/{name}"), |b| {
            b.iter(|| {
                for _ in 0..OPS {
                    next += 1;
                    let found = db.get(&cf, &key(mix(next) % KEYS)).expect("get");
                    black_box(found.expect("present"));
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = put, get, prefix_scan, flush, compression
}
criterion_main!(benches);
