//! Per-level compression: each flush and compaction writes its level's compression.

use crate::codec::block::Compression;
use crate::lsm::compaction::CompactionOptions;
use crate::lsm::options::{CfOptions, Options};
use crate::lsm::sst::SstOptions;
use crate::lsm::sst::reader::SstReader;

use super::Db;

/// Type bytes of FORMAT.md §1.3.
const NONE: u8 = 0;
const ZSTD: u8 = 1;
const LZ4: u8 = 2;

/// The data-block type bytes of every live file of the default column family, by level.
fn types_by_level(db: &Db) -> Vec<(usize, Vec<u8>)> {
    db.live_files()
        .files
        .iter()
        .filter(|f| f.cf == "default")
        .map(|f| {
            let reader = SstReader::open(&f.path, f.number(), None).expect("open sst");
            (f.level, reader.data_block_types().expect("block types"))
        })
        .collect()
}

#[test]
fn flushes_and_compactions_write_their_levels_compression() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cf = CfOptions::default()
        .sst(
            SstOptions::default()
                .compression(Compression::Zstd { level: 3 })
                .block_size(1024),
        )
        .compression_per_level(vec![Compression::None, Compression::Lz4])
        .compaction(
            CompactionOptions::default()
                .level0_file_trigger(100)
                .max_bytes_for_level_base(16 << 10)
                .level_size_multiplier(2)
                .target_file_size(8 << 10),
        );
    let options = Options::default()
        .write_buffer_size(64 << 10)
        .background_work(false)
        .default_cf_options(cf);
    let db = Db::open(dir.path(), options).expect("open");
    let default = db.default_cf();
    let value = |i: u32| format!("value {i:08} {}", "abc".repeat(20)).into_bytes();
    for i in 0..4_000u32 {
        db.put(&default, &i.to_be_bytes(), &value(i)).expect("put");
    }
    db.flush().expect("flush");
    let flushed = types_by_level(&db);
    assert!(!flushed.is_empty());
    for (level, types) in &flushed {
        assert_eq!(*level, 0);
        assert!(types.iter().all(|t| *t == NONE), "{types:?}");
    }
    db.compact_range(&default, None, None).expect("compact");
    // L1 (~200 KiB) is far above its 16 KiB target: leveled compaction moves files down
    // (a move keeps a file's compression). Overwrite every key so the next compactions
    // rewrite them into L2 and below.
    db.run_background_work().expect("compactions");
    for i in 0..4_000u32 {
        db.put(&default, &i.to_be_bytes(), &value(i)).expect("put");
    }
    db.flush().expect("flush");
    db.compact_range(&default, None, None).expect("compact");
    db.run_background_work().expect("compactions");
    let compacted = types_by_level(&db);
    let mut rewritten_below_l1 = 0;
    for (level, types) in &compacted {
        assert!(*level >= 1, "level {level}");
        let first = types[0];
        assert!(
            types.iter().all(|t| *t == first),
            "level {level}: {types:?}"
        );
        match level {
            1 => assert_eq!(first, LZ4, "level 1"),
            _ if first == ZSTD => rewritten_below_l1 += 1,
            _ => assert_eq!(first, LZ4, "level {level}: a moved L1 file"),
        }
    }
    assert!(rewritten_below_l1 > 0, "{compacted:?}");
    for i in (0..4_000u32).step_by(7) {
        assert_eq!(
            db.get(&default, &i.to_be_bytes()).expect("get"),
            Some(value(i))
        );
    }
}

#[test]
fn per_level_compression_is_validated_with_its_level() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cf = CfOptions::default()
        .compression_per_level(vec![Compression::Lz4, Compression::Zstd { level: 99 }]);
    let err = Db::open(dir.path(), Options::default().default_cf_options(cf)).unwrap_err();
    assert!(
        err.to_string().contains("compression_per_level[1]"),
        "{err}"
    );
    let cf = CfOptions::default().compression_per_level(vec![Compression::Lz4; 8]);
    let err = Db::open(dir.path(), Options::default().default_cf_options(cf)).unwrap_err();
    assert!(err.to_string().contains("compression_per_level"), "{err}");
}
