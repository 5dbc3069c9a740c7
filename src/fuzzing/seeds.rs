//! Seed inputs for the fuzz targets of `crate::fuzzing`: valid encodings of every format,
//! written to `fuzz/corpus/<target>/` by `tests/format_corpus.rs` (`write_seed_corpus`).

use super::*;

/// Valid seed inputs for every target: (target, file name, bytes).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use crate::backend::{BackendKind, StateDescriptor, StateKind};
    use crate::keys::KeyGroupRange;
    use crate::lsm::format::{ValueKind, internal_key};
    use crate::lsm::version::{FileMeta, RangeTombstone};
    use crate::savepoint::{Savepoint, SavepointHeader};

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
    out.extend(layout_seeds());
    out
}

type Seed = (&'static str, String, Vec<u8>);

fn block_seeds() -> Vec<Seed> {
    use crate::lsm::format::{ValueKind, internal_key};
    let mut out = Vec::new();
    for (i, compression) in [
        Compression::None,
        Compression::Zstd { level: 3 },
        Compression::Lz4,
    ]
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
        first.put_id(0, b"apple", b"red")?;
        first.delete_id(1, b"pear")?;
        first.delete_range_id(0, b"b", b"c")?;
        first.merge_id(2, b"list", b"\x01x")?;
        first.set_base_sequence(1)?;
        second.put_id(0, b"apple", b"green")?;
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

/// LSM checkpoint layouts (FORMAT.md §11.3): valid ones of different shapes, named `layout-*`,
/// and damaged ones the decoder must reject (truncations, bad fields, a count the bytes cannot
/// hold), named otherwise.
fn layout_seeds() -> Vec<Seed> {
    use crate::backend::lsm::layout::CheckpointLayout;

    let one_cf = CheckpointLayout {
        sequence: 5,
        base_sequence: 5,
        instance_id: 1,
        column_families: layout_cfs(1),
        ..CheckpointLayout::default()
    };
    let mixed = mixed_layout();
    let mut out = Vec::new();
    for (name, layout) in [
        ("layout-empty", CheckpointLayout::default()),
        ("layout-one-cf", one_cf),
        ("layout-mixed", mixed.clone()),
        ("layout-wide", wide_layout()),
    ] {
        out.push(("layout", name.to_string(), layout.encode()));
    }
    let bytes = mixed.encode();
    // Cuts inside the magic, the header, the column families, the files (where the file count
    // no longer fits, then inside the last file) and the last tombstone.
    for cut in [3, 20, 35, 127, 200, bytes.len() - 1] {
        out.push(("layout", format!("truncated-{cut}"), bytes[..cut].to_vec()));
    }
    damaged_layouts(&mixed, &mut out);
    damaged_layout_bytes(&bytes, &mut out);
    out
}

/// The metadata of a seed layout's file `number` with user keys `smallest`..`largest` and
/// sequences `seqs`; the other fields follow from `number`.
fn layout_file_meta(
    number: u64,
    smallest: &[u8],
    largest: &[u8],
    seqs: (u64, u64),
) -> crate::lsm::version::FileMeta {
    use crate::lsm::format::{ValueKind, internal_key};

    crate::lsm::version::FileMeta {
        number,
        size: 4096 + number,
        crc32: 0xdead_beef ^ number as u32,
        smallest: internal_key(smallest, seqs.0, ValueKind::Put),
        largest: internal_key(largest, seqs.1, ValueKind::Delete),
        smallest_seq: seqs.0,
        largest_seq: seqs.1,
        entries: 10 * number,
        created_ms: 1_700_000_000_000,
    }
}

/// A file of a seed layout.
fn layout_file(
    cf: u32,
    role: crate::backend::lsm::layout::FileRole,
    level: u8,
    file_index: u32,
    meta: crate::lsm::version::FileMeta,
) -> crate::backend::lsm::layout::LayoutFile {
    crate::backend::lsm::layout::LayoutFile {
        cf,
        role,
        level,
        file_index,
        meta,
    }
}

/// A range tombstone of a seed layout.
fn layout_tombstone(
    cf: u32,
    start: &[u8],
    end: &[u8],
    sequence: u64,
) -> crate::backend::lsm::layout::LayoutTombstone {
    crate::backend::lsm::layout::LayoutTombstone {
        cf,
        tombstone: crate::lsm::version::RangeTombstone {
            start: start.to_vec(),
            end: end.to_vec(),
            sequence,
        },
    }
}

/// `n` column families of a seed layout: (`s<i>`, `state:s<i>`).
fn layout_cfs(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("s{i}"), format!("state:s{i}")))
        .collect()
}

/// A seed layout with base files at several levels, a delta at L0 and a tombstone per column
/// family; the damaged seeds are changes of it.
fn mixed_layout() -> crate::backend::lsm::layout::CheckpointLayout {
    use crate::backend::lsm::layout::{CheckpointLayout, FileRole};

    let (meta, file, tombstone) = (layout_file_meta, layout_file, layout_tombstone);
    CheckpointLayout {
        sequence: 900,
        base_sequence: 400,
        instance_id: 0x0123_4567_89ab_cdef,
        column_families: layout_cfs(2),
        files: vec![
            file(
                0,
                FileRole::Base,
                1,
                0,
                meta(7, b"\0\x01k", b"\0\x05z", (3, 390)),
            ),
            file(
                0,
                FileRole::Base,
                6,
                1,
                meta(8, b"\0\x00", b"\x7f\xff", (1, 400)),
            ),
            file(
                1,
                FileRole::Base,
                0,
                2,
                meta(9, b"\0\x02a", b"\0\x02b", (12, 12)),
            ),
            file(
                1,
                FileRole::Delta,
                0,
                3,
                meta(15, b"\0\x02a", b"\0\x09", (401, 900)),
            ),
        ],
        tombstones: vec![
            tombstone(0, b"\0\x01", b"\0\x02", 350),
            tombstone(1, b"\0\x03a", b"\0\x03b", 800),
        ],
    }
}

/// A seed layout with multi-byte varints everywhere: long names and keys, large numbers and
/// sequences.
fn wide_layout() -> crate::backend::lsm::layout::CheckpointLayout {
    use crate::backend::lsm::layout::{CheckpointLayout, FileRole};

    CheckpointLayout {
        sequence: u64::MAX - 1,
        base_sequence: 1 << 40,
        instance_id: u64::MAX,
        column_families: (0..5)
            .map(|i| (format!("{i}{}", "n".repeat(150)), format!("state:{i}")))
            .collect(),
        files: (0..4)
            .map(|i| {
                let (first, last) = (vec![b'k'; 200 + i], vec![b'l'; 200 + i]);
                let mut meta = layout_file_meta(1 << 33, &first, &last, (1 << 20, 1 << 41));
                meta.size = u64::MAX;
                meta.entries = u64::MAX;
                layout_file(4 - i as u32, FileRole::Base, 2, 300 + i as u32, meta)
            })
            .collect(),
        tombstones: vec![layout_tombstone(4, &[0; 140], &[1; 140], u64::MAX)],
    }
}

/// Seeds `damaged-<field>`: encodings of `mixed` with one field changed to a value the decoder
/// must reject.
fn damaged_layouts(mixed: &crate::backend::lsm::layout::CheckpointLayout, out: &mut Vec<Seed>) {
    use crate::backend::lsm::layout::CheckpointLayout;

    let mut damaged = |name: &str, change: &dyn Fn(&mut CheckpointLayout)| {
        let mut layout = mixed.clone();
        change(&mut layout);
        out.push(("layout", format!("damaged-{name}"), layout.encode()));
    };
    damaged("base-above-sequence", &|l| l.base_sequence = l.sequence + 1);
    damaged("duplicate-cf", &|l| {
        l.column_families[1].1 = "state:s0".into()
    });
    damaged("empty-name", &|l| l.column_families[0].0.clear());
    damaged("cf-index", &|l| l.files[2].cf = 2);
    damaged("delta-level", &|l| l.files[3].level = 3);
    damaged("level", &|l| l.files[0].level = 7);
    damaged("key-order", &|l| {
        let m = &mut l.files[0].meta;
        std::mem::swap(&mut m.smallest, &mut m.largest);
    });
    damaged("short-key", &|l| l.files[1].meta.largest.truncate(7));
    damaged("sequence-order", &|l| l.files[1].meta.smallest_seq = 401);
    damaged("tombstone-range", &|l| {
        l.tombstones[1].tombstone.end = b"\0\x03a".to_vec()
    });
}

/// Damaged seeds made at the byte level: a bad magic, version, trailing byte or file role, and
/// a column-family count far beyond the bytes (`bytes` is the encoding of the mixed layout).
fn damaged_layout_bytes(bytes: &[u8], out: &mut Vec<Seed>) {
    use crate::backend::lsm::layout::{CheckpointLayout, FileRole, LAYOUT_MAGIC, LAYOUT_VERSION};

    let mut magic = bytes.to_vec();
    magic[0] = b'X';
    out.push(("layout", "damaged-magic".to_string(), magic));
    let mut version = bytes.to_vec();
    version[4] = LAYOUT_VERSION + 1;
    out.push(("layout", "damaged-version".to_string(), version));
    let mut trailing = bytes.to_vec();
    trailing.push(0);
    out.push(("layout", "damaged-trailing".to_string(), trailing));
    // A file role byte that is neither base nor delta. Header (29 bytes), the column-family
    // count (1), one column family ("s0", "state:s0": 1 + 2 + 1 + 8 bytes), the file count and
    // the file's cf index (1 each), then the role.
    let mut one_file = CheckpointLayout {
        column_families: layout_cfs(1),
        files: vec![layout_file(
            0,
            FileRole::Base,
            0,
            0,
            layout_file_meta(1, b"a", b"b", (1, 2)),
        )],
        sequence: 2,
        ..CheckpointLayout::default()
    }
    .encode();
    let role_at = 29 + 1 + 12 + 1 + 1;
    assert_eq!(one_file[role_at], 0, "the role byte of a base file");
    one_file[role_at] = 2;
    out.push(("layout", "damaged-role".to_string(), one_file));
    // A huge column-family count with a few bytes behind it.
    let mut huge = LAYOUT_MAGIC.to_vec();
    huge.push(LAYOUT_VERSION);
    huge.extend_from_slice(&[0; 24]);
    crate::codec::varint::put_varint32(&mut huge, u32::MAX);
    huge.extend_from_slice(&[1, b'a', 1, b'b']);
    out.push(("layout", "damaged-huge-count".to_string(), huge));
}
