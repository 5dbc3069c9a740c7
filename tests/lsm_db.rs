//! Example-based tests of `lsm::Db`: what a user of the store relies on.

use flowstate::lsm::WriteBatch;
use flowstate::lsm::{CfOptions, Db, Options, ReadOptions};

fn options() -> Options {
    Options::default().write_buffer_size(4 << 10)
}

#[test]
fn put_get_delete_survive_reopen_and_flush() {
    put_get_delete_round(options());
}

/// The same through memory-mapped SSTs (the default reads them with `pread`).
#[test]
fn put_get_delete_survive_reopen_and_flush_with_mmap_reads() {
    put_get_delete_round(options().allow_mmap_reads(true));
}

fn put_get_delete_round(options: Options) {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), options.clone()).unwrap();
        let cf = db.default_cf();
        for i in 0..500u32 {
            db.put(&cf, &i.to_be_bytes(), format!("v{i}").as_bytes())
                .unwrap();
        }
        db.delete(&cf, &7u32.to_be_bytes()).unwrap();
        assert_eq!(
            db.get(&cf, &8u32.to_be_bytes()).unwrap(),
            Some(b"v8".to_vec())
        );
        assert_eq!(db.get(&cf, &7u32.to_be_bytes()).unwrap(), None);
        db.flush().unwrap();
        db.put(&cf, b"after-flush", b"x").unwrap();
        // In SSTs now (a background compaction may already have moved L0 files down).
        let files: usize = db.stats().column_families[0].files_per_level.iter().sum();
        assert!(files > 0);
    }
    let db = Db::open(dir.path(), options).unwrap();
    let cf = db.default_cf();
    assert_eq!(
        db.get(&cf, &8u32.to_be_bytes()).unwrap(),
        Some(b"v8".to_vec())
    );
    assert_eq!(db.get(&cf, &7u32.to_be_bytes()).unwrap(), None);
    assert_eq!(db.get(&cf, b"after-flush").unwrap(), Some(b"x".to_vec()));
    let all: Vec<_> = {
        let mut it = db.iter(&cf, ReadOptions::default()).unwrap();
        it.seek_to_first().unwrap();
        it.entries().map(Result::unwrap).collect()
    };
    assert_eq!(all.len(), 500);
}

#[test]
fn merge_snapshot_range_delete_and_column_families() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    let lists = db.create_cf("lists", CfOptions::default()).unwrap();
    db.merge(&lists, b"k", b"a").unwrap();
    let snap = db.snapshot();
    db.merge(&lists, b"k", b"b").unwrap();
    assert_eq!(db.get(&lists, b"k").unwrap(), Some(b"ab".to_vec()));
    assert_eq!(
        db.get_opt(&lists, b"k", &ReadOptions::default().at(&snap))
            .unwrap(),
        Some(b"a".to_vec())
    );
    db.flush().unwrap();
    db.merge(&lists, b"k", b"c").unwrap();
    assert_eq!(db.get(&lists, b"k").unwrap(), Some(b"abc".to_vec()));

    let cf = db.default_cf();
    let mut batch = WriteBatch::new();
    for k in [b"a", b"b", b"c", b"d"] {
        batch.put(&cf, k, b"1").unwrap();
    }
    db.write(batch).unwrap();
    db.delete_range(&cf, b"b", b"d").unwrap();
    let keys: Vec<Vec<u8>> = {
        let mut it = db.iter(&cf, ReadOptions::default()).unwrap();
        it.seek_to_first().unwrap();
        it.entries().map(|e| e.unwrap().0).collect()
    };
    assert_eq!(keys, vec![b"a".to_vec(), b"d".to_vec()]);
    db.flush().unwrap();
    assert_eq!(db.get(&cf, b"c").unwrap(), None);
    drop(snap);

    let names: Vec<String> = db
        .column_families()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    assert_eq!(names, vec!["default", "lists"]);
    db.drop_cf(&lists).unwrap();
    assert!(db.get(&lists, b"k").is_err());
    drop(db);
    let db = Db::open(dir.path(), options()).unwrap();
    assert!(db.cf("lists").is_none());
    assert_eq!(db.get(&db.default_cf(), b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(db.get(&db.default_cf(), b"c").unwrap(), None);
}

#[test]
fn checkpoint_opens_as_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("db"), options()).unwrap();
    let cf = db.default_cf();
    for i in 0..300u32 {
        db.put(&cf, &i.to_be_bytes(), &[1; 40]).unwrap();
    }
    let live = db.checkpoint(&dir.path().join("chk")).unwrap();
    assert!(!live.files.is_empty());
    db.put(&cf, b"later", b"x").unwrap();
    let copy = Db::open(dir.path().join("chk"), options()).unwrap();
    assert_eq!(
        copy.get(&copy.default_cf(), &5u32.to_be_bytes()).unwrap(),
        Some(vec![1; 40])
    );
    assert_eq!(copy.get(&copy.default_cf(), b"later").unwrap(), None);
}

#[test]
fn second_open_is_refused_while_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _db = Db::open(dir.path(), options()).unwrap();
    let err = Db::open(dir.path(), options()).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
}

/// Regression (found by `lsm_crash`): a flush or compaction killed after creating its output
/// SST but before the manifest recorded the next file number left an orphan `<n>.sst`; the next
/// open handed out the same number for the replayed WAL and failed with "File exists". Open
/// now numbers new files above every file found in the directory.
#[test]
fn orphan_files_from_a_crash_do_not_collide_with_new_numbers() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), options()).unwrap();
        db.put(&db.default_cf(), b"k", b"v").unwrap();
    }
    // Plant orphans with the next numbers the store would hand out.
    for n in 1..40u64 {
        let name = dir.path().join(format!("{n:06}.sst"));
        if !name.exists() && !dir.path().join(format!("{n:06}.wal")).exists() {
            std::fs::write(&name, b"half-written").unwrap();
        }
    }
    {
        let db = Db::open(dir.path(), options()).unwrap();
        db.put(&db.default_cf(), b"k2", b"v2").unwrap();
    }
    let db = Db::open(dir.path(), options()).unwrap();
    assert_eq!(db.get(&db.default_cf(), b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(
        db.get(&db.default_cf(), b"k2").unwrap(),
        Some(b"v2".to_vec())
    );
}

fn sst_count(dir: &std::path::Path) -> usize {
    sst_files(dir).len()
}

fn sst_files(dir: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .collect()
}

/// Files a compaction replaced stay on disk while an iterator or a `live_files` pin uses them,
/// and are deleted once the last one lets go; the iterator keeps reading its old view.
#[test]
fn compacted_files_live_until_the_last_reader_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    let cf = db.default_cf();
    for round in 0..3u8 {
        for i in 0..200u32 {
            db.put(&cf, &i.to_be_bytes(), &[round; 32]).unwrap();
        }
        db.flush().unwrap();
    }
    let before = sst_count(dir.path());
    assert!(before >= 2, "{before}");
    let mut it = db.iter(&cf, ReadOptions::default()).unwrap();
    let pin = db.live_files();
    db.compact_range(&cf, None, None).unwrap();
    let stats = db.stats();
    assert!(
        stats.compaction_bytes_read > 0 && stats.compaction_bytes_written > 0,
        "{stats:?}"
    );
    assert_eq!(stats.column_families[0].files_per_level[0], 0);
    assert!(
        sst_count(dir.path())
            > stats.column_families[0]
                .files_per_level
                .iter()
                .sum::<usize>()
    );
    it.seek_to_first().unwrap();
    let mut n = 0;
    while it.valid() {
        assert_eq!(it.value(), &[2u8; 32][..]);
        n += 1;
        it.next().unwrap();
    }
    assert_eq!(n, 200);
    drop(it);
    assert!(
        sst_count(dir.path())
            > stats.column_families[0]
                .files_per_level
                .iter()
                .sum::<usize>(),
        "pinned by live_files"
    );
    drop(pin);
    assert_eq!(
        sst_count(dir.path()),
        stats.column_families[0]
            .files_per_level
            .iter()
            .sum::<usize>()
    );
    assert!(db.stats().block_cache_hits + db.stats().block_cache_misses > 0);
}

/// With `disable_wal` no WAL file is written; flushed data survives a reopen, unflushed data
/// does not (the documented trade).
#[test]
fn disabled_wal_writes_no_log_and_keeps_flushed_data() {
    let dir = tempfile::tempdir().unwrap();
    let no_wal = || options().disable_wal(true);
    {
        let db = Db::open(dir.path(), no_wal()).unwrap();
        let cf = db.default_cf();
        db.put(&cf, b"flushed", b"1").unwrap();
        db.flush().unwrap();
        db.put(&cf, b"unflushed", b"2").unwrap();
        assert_eq!(db.get(&cf, b"unflushed").unwrap(), Some(b"2".to_vec()));
        let wals = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "wal")
            })
            .count();
        assert_eq!(wals, 0);
    }
    let db = Db::open(dir.path(), no_wal()).unwrap();
    assert_eq!(
        db.get(&db.default_cf(), b"flushed").unwrap(),
        Some(b"1".to_vec())
    );
    assert_eq!(db.get(&db.default_cf(), b"unflushed").unwrap(), None);
}

/// A flush writes one version per key unless a live snapshot still sees an older one: an
/// overwrite-heavy memtable used to flush every version into L0 (the peers bench's store ended
/// 1.7x RocksDB's size after its overwrite phase).
#[test]
fn flush_leaves_out_versions_no_snapshot_sees() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default().background_work(false)).unwrap();
    let cf = db.default_cf();
    let l0_entries = |db: &Db| -> u64 {
        let live = db.live_files();
        live.files.iter().map(|f| f.entries()).sum()
    };
    for round in 0..100u32 {
        for key in 0..10u32 {
            db.put(&cf, &key.to_be_bytes(), &round.to_be_bytes())
                .unwrap();
        }
    }
    db.flush().unwrap();
    assert_eq!(l0_entries(&db), 10, "one version per key");

    for key in 0..10u32 {
        db.put(&cf, &key.to_be_bytes(), b"seen").unwrap();
    }
    let snapshot = db.snapshot();
    for key in 0..10u32 {
        db.put(&cf, &key.to_be_bytes(), b"hidden").unwrap();
        db.put(&cf, &key.to_be_bytes(), b"latest").unwrap();
    }
    db.flush().unwrap();
    // The snapshot's versions and the latest stay; the "hidden" ones go.
    assert_eq!(l0_entries(&db), 10 + 20);
    for key in 0..10u32 {
        let k = key.to_be_bytes();
        let at = ReadOptions::default().at(&snapshot);
        assert_eq!(
            db.get_opt(&cf, &k, &at).unwrap().as_deref(),
            Some(&b"seen"[..])
        );
        assert_eq!(db.get(&cf, &k).unwrap().as_deref(), Some(&b"latest"[..]));
    }
}

/// Bad options are refused before any file is touched, with an error naming the option.
#[test]
fn bad_options_are_refused_by_name_before_any_file_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut zero_buffer = options();
    zero_buffer.write_buffer_size = 0;
    let mut bad_multiplier = options();
    bad_multiplier
        .default_cf_options
        .compaction
        .level_size_multiplier = 1;
    let mut twice = options();
    twice.cf_options = vec![
        ("a".to_string(), CfOptions::default()),
        ("a".to_string(), CfOptions::default()),
    ];
    for (options, name) in [
        (zero_buffer, "write_buffer_size"),
        (bad_multiplier, "level_size_multiplier"),
        (twice, "listed twice"),
    ] {
        let err = Db::open(&path, options).unwrap_err();
        assert!(
            matches!(err, flowstate::Error::InvalidOption { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(name), "{err}");
        assert!(!path.exists(), "{name}: nothing is created");
    }
}

/// `get_pinned` borrows a value found in an SST file from its data block, owns one from the
/// memtable or a merge, and the borrowed bytes stay valid after the block cache evicted the
/// block, after a compaction deleted the file and after the store is closed.
#[test]
fn pinned_values_outlive_cache_eviction_compaction_and_close() {
    for mmap in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(
            dir.path(),
            options().block_cache_size(8 << 10).allow_mmap_reads(mmap),
        )
        .unwrap();
        let cf = db.default_cf();
        let lists = db.create_cf("lists", CfOptions::default()).unwrap();
        let value = |i: u32| format!("value-{i:05}-{}", "x".repeat(40)).into_bytes();
        for i in 0..2_000u32 {
            db.put(&cf, &i.to_be_bytes(), &value(i)).unwrap();
        }
        db.merge(&lists, b"k", b"a").unwrap();
        db.flush().unwrap();
        db.merge(&lists, b"k", b"b").unwrap();
        db.put(&cf, b"fresh", b"in the memtable").unwrap();
        let read = ReadOptions::default();

        let held: Vec<_> = (0..2_000u32)
            .step_by(97)
            .map(|i| {
                (
                    i,
                    db.get_pinned(&cf, &i.to_be_bytes(), &read)
                        .unwrap()
                        .unwrap(),
                )
            })
            .collect();
        assert!(held.iter().all(|(_, v)| v.is_pinned()), "mmap {mmap}");
        let fresh = db.get_pinned(&cf, b"fresh", &read).unwrap().unwrap();
        assert!(!fresh.is_pinned());
        assert_eq!(fresh, b"in the memtable"[..]);
        let merged = db.get_pinned(&lists, b"k", &read).unwrap().unwrap();
        assert!(!merged.is_pinned());
        assert_eq!(merged.into_vec(), b"ab".to_vec());
        assert_eq!(db.get_pinned(&cf, b"absent", &read).unwrap(), None);

        // Evict every block (the cache holds two), rewrite and delete every file, close.
        for i in 0..2_000u32 {
            assert_eq!(db.get(&cf, &i.to_be_bytes()).unwrap(), Some(value(i)));
        }
        let before = sst_files(dir.path());
        db.compact_range(&cf, None, None).unwrap();
        drop(db);
        let after = sst_files(dir.path());
        assert!(
            before.difference(&after).count() >= 2,
            "the flushed files were deleted: {before:?} -> {after:?}"
        );
        for (i, v) in &held {
            assert_eq!(**v, value(*i)[..], "key {i}, mmap {mmap}");
            assert_eq!(v.clone().into_vec(), value(*i));
        }
    }
}

#[test]
fn writers_stall_on_l0_runs_until_a_compaction_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::default().background_work(false);
    options.level0_stop_writes = 2;
    options.default_cf_options.compaction.level0_file_trigger = 2;
    let db = Db::open(dir.path(), options).unwrap();
    let cf = db.default_cf();
    for round in 0..2u8 {
        db.put(&cf, &[b'k', round], &[round; 8]).unwrap();
        db.flush().unwrap();
    }
    let stats = db.stats();
    assert_eq!(stats.column_families[0].files_per_level[0], 2);
    assert_eq!(stats.write_stalls, 0);
    // Two L0 runs reach the stop trigger: this put waits, and with no background threads it
    // runs the compaction itself before writing.
    db.put(&cf, b"after", b"stall").unwrap();
    let stats = db.stats();
    assert_eq!(stats.write_stalls, 1, "the put stalled once");
    assert!(
        stats.column_families[0].files_per_level[0] < 2,
        "L0 compacted"
    );
    for round in 0..2u8 {
        assert_eq!(db.get(&cf, &[b'k', round]).unwrap(), Some(vec![round; 8]));
    }
    assert_eq!(db.get(&cf, b"after").unwrap(), Some(b"stall".to_vec()));
    // Below the trigger again: writes go straight through.
    db.put(&cf, b"next", b"x").unwrap();
    assert_eq!(db.stats().write_stalls, 1);
}
