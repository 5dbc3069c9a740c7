//! Seed inputs for the fuzz targets of `crate::fuzzing`: valid encodings of every format,
//! written to `fuzz/corpus/<target>/` by `tests/format_corpus.rs` (`write_seed_corpus`).

use super::*;

/// Valid seed inputs for every target: (target, file name, bytes).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use crate::backend::{BackendKind, StateDescriptor, StateKind};
    use crate::checkpoint::savepoint::{Savepoint, SavepointHeader};
    use crate::keys::KeyGroupRange;
    use crate::lsm::format::{ValueKind, internal_key};
    use crate::lsm::version::{FileMeta, RangeTombstone};

    let mut out = Vec::new();
    for (i, v) in [0u64, 127, 128, 300, u64::MAX].iter().enumerate() {
        let mut b = Vec::new();
        put_varint64(&mut b, *v);
        out.push(("varint", format!("seed-{i}"), b));
    }
    let mut records = Vec::new();
    for p in [&b""[..], b"hello", &[7u8; 300]] {
        put_record(&mut records, p);
    }
    out.push(("record", "seed-0".to_string(), records));
    out.push((
        "composite_key",
        "seed-0".to_string(),
        composite_key(7, b"user-1", b"window", b"mapkey"),
    ));
    out.push((
        "composite_key",
        "seed-1".to_string(),
        composite_key(0, b"", b"", b""),
    ));
    let ttl = crate::ttl::TtlConfig::new(std::time::Duration::from_secs(60));
    let sp = Savepoint {
        header: SavepointHeader {
            max_parallelism: 128,
            key_group_range: KeyGroupRange::all(128),
            source: BackendKind::Memory,
            created_ms: 1,
            states: vec![
                StateDescriptor::new("values", StateKind::Value),
                StateDescriptor::new("lists", StateKind::List).with_ttl(ttl),
            ],
        },
        entries: vec![
            vec![
                (composite_key(1, b"a", b"", b""), b"1".to_vec()),
                (composite_key(2, b"b", b"", b""), b"2".to_vec()),
            ],
            vec![(
                composite_key(3, b"c", b"ns", b""),
                vec![9, 0, 0, 0, 0, 0, 0, 0, 1, 7],
            )],
        ],
    };
    if let Ok(bytes) = encode_savepoint(&sp) {
        out.push(("savepoint", "seed-0".to_string(), bytes));
    }
    let edit = VersionEdit {
        next_file_number: Some(9),
        last_sequence: Some(100),
        cf_added: vec![(0, "default".to_string())],
        cf_log_numbers: vec![(0, 3)],
        new_files: vec![(
            0,
            1,
            FileMeta {
                number: 5,
                size: 4096,
                crc32: 1,
                smallest: internal_key(b"a", 1, ValueKind::Put),
                largest: internal_key(b"z", 2, ValueKind::Put),
                smallest_seq: 1,
                largest_seq: 2,
                entries: 10,
                created_ms: 3,
            },
        )],
        tombstones_added: vec![(
            0,
            RangeTombstone {
                start: b"b".to_vec(),
                end: b"c".to_vec(),
                sequence: 50,
            },
        )],
        ..VersionEdit::default()
    };
    out.push(("manifest", "edit-0".to_string(), edit.encode()));
    let mut manifest = Vec::new();
    let mut header = crate::lsm::manifest::MANIFEST_MAGIC.to_vec();
    header.extend_from_slice(&crate::lsm::manifest::MANIFEST_VERSION.to_le_bytes());
    put_record(&mut manifest, &header);
    put_record(&mut manifest, &edit.encode());
    out.push(("manifest", "manifest-0".to_string(), manifest));
    out.extend(block_seeds());
    out.extend(sst_seeds());
    out.extend(wal_and_batch_seeds());
    out.extend(checkpoint_seeds());
    out
}

type Seed = (&'static str, String, Vec<u8>);

fn block_seeds() -> Vec<Seed> {
    use crate::lsm::format::{ValueKind, internal_key};
    let mut out = Vec::new();
    for (i, compression) in [Compression::None, Compression::Zstd { level: 3 }]
        .into_iter()
        .enumerate()
    {
        let mut builder = BlockBuilder::new(2, compression);
        for n in 0u32..12 {
            let key = format!("key-{n:03}");
            if builder.add(key.as_bytes(), &[b'v'; 40]).is_err() {
                return out;
            }
        }
        let mut seed = vec![0u8]; // bytewise
        seed.extend_from_slice(&builder.finish());
        out.push(("block", format!("bytewise-{i}"), seed));
    }
    let mut builder = BlockBuilder::new(16, Compression::None);
    for (user, seq, kind) in [
        (&b"a"[..], 9, ValueKind::Put),
        (b"a", 4, ValueKind::Delete),
        (b"b", 7, ValueKind::Merge),
    ] {
        if builder
            .add(&internal_key(user, seq, kind), b"value")
            .is_err()
        {
            return out;
        }
    }
    let mut seed = vec![1u8]; // internal-key order
    seed.extend_from_slice(&builder.finish());
    out.push(("block", "internal-0".to_string(), seed));
    out
}

/// Small SST files, built in a scratch directory under the system temp dir (the builder
/// writes files only); none if that fails.
fn sst_seeds() -> Vec<Seed> {
    use crate::lsm::format::{ValueKind, internal_key};
    use crate::lsm::sst::{SstBuilder, SstOptions};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir =
        std::env::temp_dir().join(format!("flowstate-sst-seed-{}-{nanos}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let options = [
        SstOptions {
            block_size: 128,
            ..SstOptions::default()
        },
        SstOptions {
            block_size: 256,
            compression: Compression::Zstd { level: 3 },
            ..SstOptions::default()
        },
    ];
    for (i, options) in options.into_iter().enumerate() {
        let path = dir.join(format!("{i:06}.sst"));
        let built = (|| -> Result<Vec<u8>> {
            let mut builder = SstBuilder::create(&path, options)?;
            builder.set_creation_time(1_700_000_000_000);
            let mut keys = Vec::new();
            for n in 0u64..24 {
                let user = composite_key((n % 4) as u16, &n.to_be_bytes(), b"", b"");
                keys.push((internal_key(&user, 100 + n, ValueKind::Put), vec![b'x'; 20]));
                if n % 5 == 0 {
                    keys.push((internal_key(&user, n, ValueKind::Delete), Vec::new()));
                }
            }
            keys.sort_by(|a, b| compare_internal(&a.0, &b.0));
            for (key, value) in &keys {
                builder.add(key, value)?;
            }
            builder.finish()?;
            std::fs::read(&path).map_err(|e| crate::error::Error::io(&path, e))
        })();
        if let Ok(bytes) = built {
            out.push(("sst", format!("sst-{i}"), bytes));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn wal_and_batch_seeds() -> Vec<Seed> {
    let mut first = WriteBatch::new();
    let mut second = WriteBatch::new();
    let built = (|| -> Result<()> {
        first.put(0, b"apple", b"red")?;
        first.delete(1, b"pear")?;
        first.delete_range(0, b"b", b"c")?;
        first.merge(2, b"list", b"\x01x")?;
        first.set_base_sequence(1)?;
        second.put(0, b"apple", b"green")?;
        second.set_base_sequence(5)
    })();
    if built.is_err() {
        return Vec::new();
    }
    let mut log = crate::lsm::wal::encode_header(7).to_vec();
    put_record(&mut log, first.encoded());
    put_record(&mut log, second.encoded());
    let mut torn = log.clone();
    torn.truncate(log.len() - 3);
    vec![
        ("batch", "batch-0".to_string(), first.encoded().to_vec()),
        (
            "batch",
            "batch-1".to_string(),
            WriteBatch::new().encoded().to_vec(),
        ),
        ("wal", "wal-0".to_string(), log),
        ("wal", "torn-0".to_string(), torn),
    ]
}

fn checkpoint_seeds() -> Vec<Seed> {
    use crate::backend::{BackendKind, FileRef, StateDescriptor, StateKind};
    use crate::checkpoint::metadata::CheckpointFile;
    let ttl = crate::ttl::TtlConfig::new(std::time::Duration::from_secs(60));
    let key_groups = KeyGroupRange::all(128);
    let metadata = CheckpointMetadata {
        checkpoint_id: 7,
        backend: BackendKind::Fs,
        max_parallelism: 128,
        key_group_range: key_groups,
        timestamp_ms: 1_700_000_000_000,
        states: vec![
            StateDescriptor::new("counts", StateKind::Value),
            StateDescriptor::new("seen", StateKind::Map).with_ttl(ttl),
        ],
        files: vec![
            CheckpointFile {
                file: FileRef {
                    path: "chk-7/kg-00000-00127".into(),
                    size: 1234,
                    crc32: 0xdead_beef,
                    xxh3: Some(0x0123_4567_89ab_cdef),
                    key_groups,
                },
                shared: false,
            },
            CheckpointFile {
                file: FileRef {
                    path: "shared/000012.sst".into(),
                    size: 99,
                    crc32: 1,
                    xxh3: None,
                    key_groups,
                },
                shared: true,
            },
        ],
        extra: b"source offsets".to_vec(),
    };
    let mut counts = StateMap::new();
    let mut seen = StateMap::new();
    for n in 0u32..20 {
        let key = n.to_be_bytes();
        counts.insert(composite_key((n % 7) as u16, &key, b"", b""), vec![n as u8]);
        seen.insert(composite_key(3, &key, b"ns", b"map-key"), vec![0; 9]);
    }
    let mut file = VecFileWriter(Vec::new());
    let mut out = Vec::new();
    if let Ok(bytes) = metadata.encode() {
        out.push(("metadata", "metadata-0".to_string(), bytes));
    }
    if write_full_snapshot_file(&mut file, 7, key_groups, &[counts, seen]).is_ok() {
        out.push(("snapshot", "snapshot-0".to_string(), file.0));
    }
    out
}
