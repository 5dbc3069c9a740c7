//! SST tests: a BTreeMap model for lookups and scans in both directions, every truncation and a
//! flipped byte at every position (data, filter, properties, index, footer), key-group scans
//! that read only their blocks, and a committed golden file of format version 1.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::codec::block::{Compression, SharedBytes};
use crate::lsm::block_cache::BlockCache;
use crate::lsm::format::{InternalKey, MAX_SEQUENCE, ValueKind, internal_key, parse_internal_key};
use crate::lsm::iterator::InternalIterator;
use crate::lsm::sst::format::FOOTER_LEN;
use crate::lsm::sst::iter::SstIter;
use crate::lsm::sst::reader::SstEntry;

/// Internal key -> value, in `compare_internal` order.
type Model = BTreeMap<InternalKey, Vec<u8>>;

fn write_sst(path: &Path, model: &Model, options: SstOptions) -> SstMetadata {
    let mut builder = SstBuilder::create(path, options).unwrap();
    builder.set_creation_time(1_700_000_000_000);
    for (key, value) in model {
        builder.add(&key.0, value).unwrap();
    }
    builder.finish().unwrap()
}

/// The newest model entry of `user_key` with sequence <= `snapshot`.
fn model_get(model: &Model, user_key: &[u8], snapshot: u64) -> Option<SstEntry> {
    model.iter().find_map(|(key, value)| {
        let parsed = parse_internal_key(&key.0, "model", 0).unwrap();
        (parsed.user_key == user_key && parsed.sequence <= snapshot).then(|| SstEntry {
            sequence: parsed.sequence,
            kind: parsed.kind,
            value: value.clone().into(),
        })
    })
}

fn collect_forward(iter: &mut SstIter) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    iter.seek_to_first()?;
    while iter.valid() {
        out.push((iter.key().to_vec(), iter.value().to_vec()));
        iter.next()?;
    }
    Ok(out)
}

fn collect_backward(iter: &mut SstIter) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    iter.seek_to_last()?;
    while iter.valid() {
        out.push((iter.key().to_vec(), iter.value().to_vec()));
        iter.prev()?;
    }
    out.reverse();
    Ok(out)
}

fn model_entries(model: &Model) -> Vec<(Vec<u8>, Vec<u8>)> {
    model
        .iter()
        .map(|(k, v)| (k.0.clone(), v.clone()))
        .collect()
}

fn kind_strategy() -> impl Strategy<Value = ValueKind> {
    prop_oneof![
        3 => Just(ValueKind::Put),
        1 => Just(ValueKind::Delete),
        1 => Just(ValueKind::Merge),
    ]
}

/// User keys start with a two-byte key group, as flowstate's composite keys do.
fn user_key_strategy() -> impl Strategy<Value = Vec<u8>> {
    (0u8..3, proptest::collection::vec(0u8..3, 0..4)).prop_map(|(group, rest)| {
        let mut key = vec![0, group];
        key.extend(rest);
        key
    })
}

fn model_strategy() -> impl Strategy<Value = Model> {
    proptest::collection::btree_map(
        (user_key_strategy(), 1u64..40),
        (
            kind_strategy(),
            proptest::collection::vec(any::<u8>(), 0..24),
        ),
        0..120,
    )
    .prop_map(|versions| {
        versions
            .into_iter()
            .map(|((user_key, seq), (kind, value))| {
                let value = if kind == ValueKind::Delete {
                    Vec::new()
                } else {
                    value
                };
                (InternalKey(internal_key(&user_key, seq, kind)), value)
            })
            .collect()
    })
}

fn options_strategy() -> impl Strategy<Value = SstOptions> {
    (
        32usize..400,
        1usize..8,
        prop_oneof![
            Just(Compression::None),
            Just(Compression::Zstd { level: 1 }),
            Just(Compression::Lz4)
        ],
    )
        .prop_map(|(block_size, restart_interval, compression)| SstOptions {
            block_size,
            restart_interval,
            compression,
            ..SstOptions::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn reader_matches_model(
        model in model_strategy(),
        options in options_strategy(),
        cached in any::<bool>(),
        mmap in any::<bool>(),
        probes in proptest::collection::vec((user_key_strategy(), 0u64..45), 1..40),
        seeks in proptest::collection::vec((user_key_strategy(), 0u64..45), 1..20),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000001.sst");
        let meta = write_sst(&path, &model, options);
        let cache = cached.then(|| Arc::new(BlockCache::with_shards(2048, 2)));
        let reader = SstReader::open_with(&path, 1, cache, mmap).unwrap();
        reader.verify().unwrap();
        prop_assert_eq!(reader.file_crc32().unwrap(), meta.file_crc32);
        prop_assert_eq!(reader.file_size(), meta.file_size);
        prop_assert_eq!(reader.properties(), &meta.properties);
        prop_assert_eq!(meta.properties.entry_count, model.len() as u64);

        for (user_key, snapshot) in probes.iter().chain(&[(vec![0, 1], MAX_SEQUENCE)]) {
            prop_assert_eq!(reader.get(user_key, *snapshot).unwrap(), model_get(&model, user_key, *snapshot));
        }
        for key in model.keys() {
            let user_key = crate::lsm::format::user_key(&key.0);
            prop_assert!(reader.may_contain(user_key));
            prop_assert!(reader.get(user_key, MAX_SEQUENCE).unwrap().is_some());
        }

        let entries = model_entries(&model);
        let mut iter = reader.iter();
        prop_assert_eq!(&collect_forward(&mut iter).unwrap(), &entries);
        prop_assert_eq!(&collect_backward(&mut iter).unwrap(), &entries);

        for (user_key, seq) in &seeks {
            let target = internal_key(user_key, *seq, ValueKind::Put);
            let at = entries.partition_point(|(k, _)| InternalKey(k.clone()) < InternalKey(target.clone()));
            iter.seek(&target).unwrap();
            prop_assert_eq!(iter.valid(), at < entries.len());
            if iter.valid() {
                prop_assert_eq!(iter.key(), entries[at].0.as_slice());
                // One step back from a seek lands on the entry before it.
                iter.prev().unwrap();
                prop_assert_eq!(iter.valid(), at > 0);
                if at > 0 {
                    prop_assert_eq!(iter.key(), entries[at - 1].0.as_slice());
                }
            }
            let before = entries.partition_point(|(k, _)| InternalKey(k.clone()) <= InternalKey(target.clone()));
            iter.seek_for_prev(&target).unwrap();
            prop_assert_eq!(iter.valid(), before > 0);
            if before > 0 {
                prop_assert_eq!(iter.key(), entries[before - 1].0.as_slice());
                iter.next().unwrap();
                prop_assert_eq!(iter.valid(), before < entries.len());
            }
        }
    }
}

/// A small model: 30 user keys in 3 key groups, 1-3 versions each, all kinds.
fn small_model() -> Model {
    let mut model = Model::new();
    for i in 0..30u8 {
        let user_key = [0, i / 10, b'k', i];
        for version in 0..=(i % 3) {
            let seq = u64::from(i) * 4 + u64::from(version);
            let kind = [ValueKind::Put, ValueKind::Merge, ValueKind::Delete][usize::from(version)];
            let value = if kind == ValueKind::Delete {
                Vec::new()
            } else {
                vec![i, version, 0xaa]
            };
            model.insert(InternalKey(internal_key(&user_key, seq, kind)), value);
        }
    }
    model
}

fn small_options(compression: Compression) -> SstOptions {
    SstOptions {
        block_size: 128,
        restart_interval: 3,
        compression,
        ..SstOptions::default()
    }
}

/// Asserts `result` is Ok(expected) or a corruption naming `path`.
fn ok_or_named_corruption<T: PartialEq + std::fmt::Debug>(
    result: Result<T>,
    expected: &T,
    path: &Path,
) {
    match result {
        Ok(actual) => assert_eq!(&actual, expected, "wrong data returned silently"),
        Err(Error::Corruption { file, .. }) => assert_eq!(file, path.display().to_string()),
        Err(other) => panic!("expected corruption, got {other}"),
    }
}

#[test]
fn every_truncation_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_model();
    let good = dir.path().join("good.sst");
    write_sst(&good, &model, small_options(Compression::None));
    let bytes = std::fs::read(&good).unwrap();
    let label: Arc<str> = Arc::from("cut.sst");
    for cut in 0..bytes.len() {
        let shared: SharedBytes = Arc::new(bytes[..cut].to_vec());
        match SstReader::from_bytes(shared, Arc::clone(&label), Path::new("cut.sst"), 1, None) {
            Err(Error::Corruption { file, .. }) => assert_eq!(file, "cut.sst"),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    // And once through a real file and its memory map.
    let path = dir.path().join("cut.sst");
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert!(SstReader::open(&path, 1, None).unwrap_err().is_corruption());
    assert!(
        SstReader::open_with(&path, 1, None, false)
            .unwrap_err()
            .is_corruption()
    );
    std::fs::write(&path, b"").unwrap();
    assert!(SstReader::open(&path, 1, None).unwrap_err().is_corruption());
    assert!(
        SstReader::open_with(&path, 1, None, false)
            .unwrap_err()
            .is_corruption()
    );
}

/// The same damage read with `pread` instead of a map (every third byte, zstd blocks): opening,
/// verifying and lookups report it as corruption of the file, never panic.
#[test]
fn a_flipped_byte_read_with_pread_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_model();
    let good = dir.path().join("good.sst");
    write_sst(&good, &model, small_options(Compression::Zstd { level: 1 }));
    let bytes = std::fs::read(&good).unwrap();
    let path = dir.path().join("flipped.sst");
    for pos in (0..bytes.len()).step_by(3) {
        let mut bad = bytes.clone();
        bad[pos] ^= 0x5a;
        std::fs::write(&path, &bad).unwrap();
        let reader = match SstReader::open_with(&path, 2, None, false) {
            Ok(reader) => reader,
            Err(e) => {
                ok_or_named_corruption::<()>(Err(e), &(), &path);
                continue;
            }
        };
        assert!(
            matches!(reader.verify(), Err(Error::Corruption { .. })),
            "flip at {pos} not caught by verify"
        );
        for i in (0..30u8).step_by(7) {
            let user_key = [0, i / 10, b'k', i];
            let expected = model_get(&model, &user_key, MAX_SEQUENCE);
            ok_or_named_corruption(reader.get(&user_key, MAX_SEQUENCE), &expected, &path);
        }
    }
}

#[test]
fn a_flipped_byte_anywhere_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_model();
    let entries = model_entries(&model);
    for compression in [
        Compression::None,
        Compression::Zstd { level: 1 },
        Compression::Lz4,
    ] {
        let good = dir.path().join(format!("good-{compression:?}.sst"));
        write_sst(&good, &model, small_options(compression));
        let bytes = std::fs::read(&good).unwrap();
        let reader = SstReader::open(&good, 1, None).unwrap();
        let footer = reader.footer();
        // The regions must all be present for the test to mean what it says.
        assert!(footer.filter.offset > 2 * 128, "several data blocks");
        assert_eq!(footer.index.end() as usize, bytes.len() - FOOTER_LEN);
        let path = Path::new("flipped.sst");
        for pos in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[pos] ^= 0x5a;
            let shared: SharedBytes = Arc::new(bad);
            let label: Arc<str> = Arc::from("flipped.sst");
            let reader = match SstReader::from_bytes(shared, label, path, 2, None) {
                Ok(reader) => reader,
                Err(e) => {
                    ok_or_named_corruption::<()>(Err(e), &(), path);
                    continue;
                }
            };
            assert!(
                matches!(reader.verify(), Err(Error::Corruption { .. })),
                "flip at {pos} (data area ends at {}) not caught by verify",
                footer.filter.offset
            );
            let mut iter = reader.iter();
            ok_or_named_corruption(collect_forward(&mut iter), &entries, path);
            ok_or_named_corruption(collect_backward(&mut iter), &entries, path);
            for i in (0..30u8).step_by(7) {
                let user_key = [0, i / 10, b'k', i];
                let expected = model_get(&model, &user_key, MAX_SEQUENCE);
                ok_or_named_corruption(reader.get(&user_key, MAX_SEQUENCE), &expected, path);
            }
        }
    }
}

/// `model` written with 256-byte blocks and opened with a 1 MiB block cache.
fn small_block_sst_with_cache(path: &Path, model: &Model) -> (SstReader, Arc<BlockCache>) {
    let options = SstOptions {
        block_size: 256,
        ..SstOptions::default()
    };
    write_sst(path, model, options);
    let cache = Arc::new(BlockCache::new(1 << 20));
    let reader = SstReader::open(path, 1, Some(Arc::clone(&cache))).unwrap();
    (reader, cache)
}

#[test]
fn key_group_scan_reads_only_its_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("groups.sst");
    let mut model = Model::new();
    for group in 0..64u16 {
        for i in 0..20u8 {
            let mut user_key = group.to_be_bytes().to_vec();
            user_key.extend_from_slice(&[b'k', i]);
            model.insert(
                InternalKey(internal_key(&user_key, 7, ValueKind::Put)),
                vec![i; 16],
            );
        }
    }
    let (reader, cache) = small_block_sst_with_cache(&path, &model);
    let prefix = 41u16.to_be_bytes();
    assert!(reader.may_contain_prefix(&prefix));
    assert!(!reader.may_contain_prefix(&64u16.to_be_bytes()));
    let mut iter = reader.iter();
    iter.seek(&format::seek_key(&prefix, MAX_SEQUENCE)).unwrap();
    let mut found = 0;
    while iter.valid() && iter.key().starts_with(&prefix) {
        found += 1;
        iter.next().unwrap();
    }
    assert_eq!(found, 20);
    let total_blocks = reader.footer().filter.offset / 256;
    let read = cache.stats().misses;
    // 20 entries of ~30 bytes span 3-4 blocks of 256 bytes; the scan may touch one more.
    assert!(read <= 5, "read {read} blocks of about {total_blocks}");
}

/// A compaction's pass over a file (`scan_iter`) uses cached blocks but adds none: found when
/// the peers benchmark's write-only overwrite phase filled an idle 64 MiB cache with compaction
/// input and peaked 60 MB above RocksDB.
#[test]
fn scan_iter_reads_through_the_cache_without_filling_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scan.sst");
    let model: Model = (0..200u32)
        .map(|i| {
            (
                InternalKey(internal_key(&i.to_be_bytes(), 1, ValueKind::Put)),
                vec![7; 40],
            )
        })
        .collect();
    let (reader, cache) = small_block_sst_with_cache(&path, &model);
    let count = |mut iter: SstIter| {
        iter.seek_to_first().unwrap();
        let mut n = 0;
        while iter.valid() {
            n += 1;
            iter.next().unwrap();
        }
        n
    };
    assert_eq!(count(reader.scan_iter()), 200);
    assert_eq!(cache.stats().entries, 0, "a scan filled the cache");
    assert_eq!(count(reader.iter()), 200);
    let filled = cache.stats();
    assert!(filled.entries > 10, "{filled:?}");
    // A scan now finds every block in the cache.
    assert_eq!(count(reader.scan_iter()), 200);
    assert_eq!(cache.stats().misses, filled.misses);
    assert_eq!(cache.stats().entries, filled.entries);
}

#[test]
fn rejects_bad_input_to_the_builder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.sst");
    let mut builder = SstBuilder::create(&path, SstOptions::default()).unwrap();
    builder
        .add(&internal_key(b"b", 5, ValueKind::Put), b"1")
        .unwrap();
    let err = builder
        .add(&internal_key(b"a", 5, ValueKind::Put), b"1")
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let err = builder.add(b"short", b"1").unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    // The same key twice is out of order too.
    let err = builder
        .add(&internal_key(b"b", 5, ValueKind::Put), b"1")
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(
        SstBuilder::create(&path, SstOptions::default()).is_err(),
        "never overwrites"
    );
    let bad = SstOptions {
        block_size: 0,
        ..SstOptions::default()
    };
    assert!(SstBuilder::create(&dir.path().join("y.sst"), bad).is_err());
}

#[test]
fn empty_file_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.sst");
    let meta = write_sst(&path, &Model::new(), SstOptions::default());
    let reader = SstReader::open(&path, 1, None).unwrap();
    reader.verify().unwrap();
    assert_eq!(meta.properties.entry_count, 0);
    assert_eq!(reader.get(b"a", MAX_SEQUENCE).unwrap(), None);
    let mut iter = reader.iter();
    assert!(collect_forward(&mut iter).unwrap().is_empty());
    assert!(!reader.may_contain_prefix(b"\0\0"));
}

/// The committed golden file must stay readable and byte-identical to what the builder writes.
#[test]
fn golden_file_of_version_1() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lsm/sst/testdata/v1_small.sst");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.sst");
    write_sst(&path, &small_model(), small_options(Compression::None));
    let fresh = std::fs::read(&path).unwrap();
    if std::env::var_os("FLOWSTATE_BLESS").is_some() {
        std::fs::write(&golden, &fresh).unwrap();
    }
    let committed = std::fs::read(&golden).unwrap();
    assert_eq!(
        committed, fresh,
        "the SST format changed: bump the version or restore it"
    );
    let reader = SstReader::open(&golden, 1, None).unwrap();
    reader.verify().unwrap();
    let entry = reader
        .get(&[0, 1, b'k', 13], MAX_SEQUENCE)
        .unwrap()
        .unwrap();
    assert_eq!((entry.sequence, entry.kind), (53, ValueKind::Merge));
}

#[test]
fn sst_written_and_read_back_by_snapshot() -> std::result::Result<(), Box<dyn std::error::Error>> {
    use crate::lsm::format::{ValueKind, internal_key};
    use crate::lsm::sst::{SstBuilder, SstOptions, SstReader};

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("000007.sst");
    let mut builder = SstBuilder::create(&path, SstOptions::default())?;
    builder.add(&internal_key(b"apple", 9, ValueKind::Put), b"red")?;
    builder.add(&internal_key(b"apple", 4, ValueKind::Put), b"green")?;
    let metadata = builder.finish()?;
    assert_eq!(metadata.properties.entry_count, 2);

    let reader = SstReader::open(&path, 7, None)?;
    assert_eq!(
        reader.get(b"apple", 5)?.map(|e| e.value.into_vec()),
        Some(b"green".to_vec())
    );
    assert_eq!(reader.get(b"apple", 3)?, None);
    Ok(())
}
