//! Bodies of the fuzz targets, shared by `fuzz/` (cargo-fuzz) and `tests/format_corpus.rs`,
//! which replays every committed corpus file so CI runs them on stable.
//!
//! Each function decodes arbitrary bytes with one decoder; decoding must return `Ok` or `Err`,
//! never panic, hang or allocate beyond the input. Where the bytes decode, the value is encoded
//! again and decoded again, and the two values must be equal (the harness panics if not: that
//! is a bug the fuzzer reports).

use std::cmp::Ordering;
use std::path::Path;
use std::sync::Arc;

use crate::backend::full_snapshot::{
    ExpectedFile, decode_full_snapshot_file, write_full_snapshot_file,
};
use crate::backend::heap::StateMap;
use crate::checkpoint::metadata::CheckpointMetadata;
use crate::checkpoint::savepoint::{decode_savepoint, encode_savepoint};
use crate::checkpoint::storage::CheckpointFileWriter;
use crate::codec::block::{Block, BlockBuilder, Comparator, Compression, bytewise};
use crate::codec::record::{decode_records, put_record};
use crate::codec::varint::{get_varint64, put_varint64};
use crate::error::Result;
use crate::keys::{CompositeKey, KeyGroupRange, composite_key};
use crate::lsm::batch::{BatchOp, WriteBatch};
use crate::lsm::format::{MAX_SEQUENCE, compare_internal, parse_internal_key, user_key};
use crate::lsm::iterator::InternalIterator;
use crate::lsm::manifest::replay;
use crate::lsm::sst::SstReader;
use crate::lsm::version::VersionEdit;
use crate::lsm::wal::{RecoveryMode, WalReader};

/// The names of every fuzz target, as in `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[&str] = &[
    "varint",
    "record",
    "composite_key",
    "savepoint",
    "manifest",
    "block",
    "sst",
    "wal",
    "batch",
    "metadata",
    "snapshot",
];

/// Runs the target `name` on `data`; unknown names do nothing and return false.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "varint" => varint(data),
        "record" => record(data),
        "composite_key" => composite(data),
        "savepoint" => savepoint(data),
        "manifest" => manifest(data),
        "block" => block(data),
        "sst" => sst(data),
        "wal" => wal(data),
        "batch" => batch(data),
        "metadata" => metadata(data),
        "snapshot" => snapshot(data),
        _ => return false,
    }
    true
}

/// Varint decoder.
pub fn varint(data: &[u8]) {
    if let Ok((value, used)) = get_varint64(data, "fuzz", 0) {
        let mut out = Vec::new();
        put_varint64(&mut out, value);
        // Overlong forms are rejected (FORMAT.md §1.1), so each value has one encoding.
        assert_eq!(
            data.get(..used),
            Some(&out[..]),
            "a varint re-encodes to its bytes"
        );
    }
}

/// A file of framed records.
pub fn record(data: &[u8]) {
    if let Ok(payloads) = decode_records(data, "fuzz") {
        let mut out = Vec::new();
        for p in &payloads {
            put_record(&mut out, p);
        }
        assert_eq!(out, data, "records re-encode to the same bytes");
    }
}

/// Composite key decoder.
pub fn composite(data: &[u8]) {
    if let Ok(k) = CompositeKey::decode(data, "fuzz", 0) {
        assert_eq!(
            composite_key(k.key_group, k.key, k.namespace, k.user_key),
            data
        );
    }
}

/// Savepoint file decoder.
pub fn savepoint(data: &[u8]) {
    if let Ok(sp) = decode_savepoint(data, "fuzz") {
        let bytes = encode_savepoint(&sp).expect("a decoded savepoint re-encodes");
        assert_eq!(decode_savepoint(&bytes, "fuzz").ok(), Some(sp));
    }
}

/// Manifest replay and version edits.
pub fn manifest(data: &[u8]) {
    let _ = replay(data, "fuzz");
    if let Ok(edit) = VersionEdit::decode(data, "fuzz", 0) {
        assert_eq!(
            VersionEdit::decode(&edit.encode(), "fuzz", 0).ok(),
            Some(edit)
        );
    }
}

/// Block decoder, then a walk over its entries in both directions and seeks. The first byte
/// picks the comparator (bytewise or internal-key order); the rest is the stored block.
/// A block whose entries are in strictly ascending order must iterate backwards to the same
/// entries, seek to each of its keys, and rebuild into a block with the same entries.
pub fn block(data: &[u8]) {
    let Some((&selector, stored)) = data.split_first() else {
        return;
    };
    let comparator: Comparator = if selector & 1 == 0 {
        bytewise
    } else {
        compare_internal
    };
    let Ok(block) = Block::decode(stored, "fuzz", 0) else {
        return;
    };
    let block = Arc::new(block);
    // Every entry takes at least 3 bytes of the payload.
    let bound = block.payload().len() / 3 + 1;
    let mut iter = block.iter(comparator);
    let Some(forward) = walk(&mut iter, bound, true) else {
        return;
    };
    let sorted = forward
        .windows(2)
        .all(|w| comparator(&w[0].0, &w[1].0) == Ordering::Less);
    let backward = walk(&mut iter, bound, false);
    if !sorted {
        return;
    }
    let mut reversed = forward.clone();
    reversed.reverse();
    assert_eq!(
        backward,
        Some(reversed),
        "a sorted block walks back the same"
    );
    for (key, value) in forward.iter().take(32) {
        if iter.seek(key).is_ok() {
            assert!(iter.valid(), "seek to a present key");
            assert_eq!((iter.key(), iter.value()), (&key[..], &value[..]));
        }
    }
    let mut builder = BlockBuilder::new(4, Compression::None);
    for (key, value) in &forward {
        // Less prefix sharing may make the rebuilt block too large; only then may this fail.
        if builder.add(key, value).is_err() {
            return;
        }
    }
    let rebuilt = Arc::new(Block::decode(&builder.finish(), "fuzz", 0).expect("rebuilt block"));
    let again = walk(&mut rebuilt.iter(comparator), bound, true);
    assert_eq!(
        again,
        Some(forward),
        "a rebuilt block holds the same entries"
    );
}

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Every entry of `iter` from one end; `None` if a step fails or there are more than `limit`
/// entries (a harness bound: libFuzzer's timeout and memory limit catch real hangs).
fn walk(iter: &mut dyn InternalIterator, limit: usize, forward: bool) -> Option<Entries> {
    let mut out = Vec::new();
    let start = if forward {
        iter.seek_to_first()
    } else {
        iter.seek_to_last()
    };
    start.ok()?;
    while iter.valid() {
        if out.len() >= limit {
            return None;
        }
        out.push((iter.key().to_vec(), iter.value().to_vec()));
        let step = if forward { iter.next() } else { iter.prev() };
        step.ok()?;
    }
    Some(out)
}

/// SST reader on an in-memory file: open, verify, scan both ways, point lookups. A file that
/// verifies must scan backwards to the same entries, and `get` must find the newest version
/// of each of its user keys.
pub fn sst(data: &[u8]) {
    let Ok(reader) = SstReader::from_bytes(
        Arc::new(data.to_vec()),
        Arc::from("fuzz"),
        Path::new("fuzz"),
        1,
        None,
    ) else {
        return;
    };
    let verified = reader.verify().is_ok();
    // Compressed blocks may hold more entries than the file has bytes; bound the harness.
    let bound = 1 << 16;
    let forward = walk(&mut reader.iter(), bound, true);
    let backward = walk(&mut reader.iter(), bound, false);
    for probe in [&b""[..], b"a", data.get(..4).unwrap_or_default()] {
        let _ = reader.get(probe, MAX_SEQUENCE);
        let _ = reader.may_contain_prefix(probe);
    }
    if !verified {
        return;
    }
    let Some(forward) = forward else {
        return; // more entries than the harness collects
    };
    let mut reversed = forward.clone();
    reversed.reverse();
    assert_eq!(
        backward,
        Some(reversed),
        "a verified file scans back the same"
    );
    // The first entry of each user key is its newest version.
    let mut last_user_key: Option<&[u8]> = None;
    for (key, value) in forward.iter().take(64) {
        let user = user_key(key);
        if last_user_key == Some(user) {
            continue;
        }
        last_user_key = Some(user);
        let parsed = parse_internal_key(key, "fuzz", 0).expect("verified keys parse");
        let found = reader.get(user, MAX_SEQUENCE).expect("verified file reads");
        let found = found.expect("get finds a key the file holds");
        assert_eq!((found.sequence, &found.value), (parsed.sequence, value));
    }
}

/// WAL reader in every recovery mode. The modes must agree: where `TolerateTornTail`
/// succeeds, `StopAtFirstCorruption` returns the same batches, and where `Strict` succeeds,
/// so does `TolerateTornTail`, with the same batches.
pub fn wal(data: &[u8]) {
    let read = |mode| -> Result<Vec<Vec<u8>>> {
        let mut reader = WalReader::from_bytes(data.to_vec(), "fuzz".to_string(), mode)?;
        let mut batches = Vec::new();
        while let Some(batch) = reader.next_batch()? {
            assert!(batches.len() <= data.len(), "WAL reader does not terminate");
            batches.push(batch.encoded().to_vec());
        }
        assert!(reader.valid_len() <= data.len() as u64);
        Ok(batches)
    };
    let stop_first = read(RecoveryMode::StopAtFirstCorruption);
    let tolerate = read(RecoveryMode::TolerateTornTail);
    let strict = read(RecoveryMode::Strict);
    if let Ok(batches) = &tolerate {
        assert_eq!(
            stop_first.as_ref().ok(),
            Some(batches),
            "tolerant vs point-in-time"
        );
    }
    if let Ok(batches) = &strict {
        assert_eq!(tolerate.as_ref().ok(), Some(batches), "strict vs tolerant");
    }
}

/// Write batch decoder; a decoded batch rebuilt operation by operation encodes to the same bytes.
pub fn batch(data: &[u8]) {
    let Ok(decoded) = WriteBatch::decode(data, "fuzz", 0) else {
        return;
    };
    let mut rebuilt = WriteBatch::new();
    for (expected, (sequence, op)) in (decoded.base_sequence()..).zip(decoded.iter()) {
        assert_eq!(sequence, expected, "sequences are consecutive");
        let added = match op {
            BatchOp::Put { cf, key, value } => rebuilt.put(cf, key, value),
            BatchOp::Delete { cf, key } => rebuilt.delete(cf, key),
            BatchOp::DeleteRange { cf, start, end } => rebuilt.delete_range(cf, start, end),
            BatchOp::Merge { cf, key, operand } => rebuilt.merge(cf, key, operand),
        };
        added.expect("an operation of a decoded batch fits a batch");
    }
    assert_eq!(rebuilt.count(), decoded.count());
    rebuilt
        .set_base_sequence(decoded.base_sequence())
        .expect("the decoded base sequence is valid");
    assert_eq!(
        rebuilt.encoded(),
        data,
        "a batch re-encodes to the same bytes"
    );
}

/// `_metadata` decoder; a decoded file encodes to the same bytes.
pub fn metadata(data: &[u8]) {
    if let Ok(m) = CheckpointMetadata::decode(data, "fuzz") {
        assert_eq!(m.encode(), data, "_metadata re-encodes to the same bytes");
    }
}

/// Full snapshot file decoder. The expectation `_metadata` would supply is taken from the
/// file's own header where it parses (so the fuzzer gets past the header check), else fixed.
/// The decoded entries, written again as a snapshot file, decode to the same entries.
pub fn snapshot(data: &[u8]) {
    let expected = snapshot_expectation(data);
    let mut entries: Vec<(u32, Vec<u8>, Vec<u8>)> = Vec::new();
    let decoded = decode_full_snapshot_file(data, "fuzz", &expected, |state, key, value| {
        entries.push((state, key.to_vec(), value.to_vec()));
        Ok(())
    });
    let Ok(count) = decoded else {
        return;
    };
    assert_eq!(count, entries.len() as u64);
    let state_count = entries.last().map_or(0, |(s, _, _)| *s as usize + 1);
    let mut states = vec![StateMap::new(); state_count];
    for (state, key, value) in &entries {
        if let Some(map) = states.get_mut(*state as usize) {
            map.insert(key.clone(), value.clone());
        }
    }
    let mut out = VecFileWriter(Vec::new());
    let written = write_full_snapshot_file(
        &mut out,
        expected.checkpoint_id,
        expected.key_groups,
        &states,
    );
    let (size, crc) = written.expect("decoded entries write");
    assert_eq!((size, crc), (out.0.len() as u64, crc32fast::hash(&out.0)));
    let again = ExpectedFile {
        state_count: state_count as u32,
        ..expected
    };
    let mut reread = Vec::new();
    decode_full_snapshot_file(&out.0, "fuzz", &again, |state, key, value| {
        reread.push((state, key.to_vec(), value.to_vec()));
        Ok(())
    })
    .expect("a rewritten snapshot file decodes");
    assert_eq!(reread, entries, "snapshot entries survive a rewrite");
}

/// The header fields of a full snapshot file at their fixed offsets (FORMAT.md §5: preamble
/// 12 bytes, record frame 8, type 1), or a fixed expectation where they do not parse.
fn snapshot_expectation(data: &[u8]) -> ExpectedFile {
    let field = |at: usize, len: usize| data.get(at..at + len).unwrap_or_default();
    let u16_at = |at| field(at, 2).try_into().map(u16::from_le_bytes).ok();
    let header = (|| {
        let checkpoint_id = u64::from_le_bytes(field(21, 8).try_into().ok()?);
        let key_groups = KeyGroupRange::new(u16_at(29)?, u16_at(31)?).ok()?;
        let state_count = u32::from_le_bytes(field(33, 4).try_into().ok()?);
        Some(ExpectedFile {
            checkpoint_id,
            key_groups,
            state_count,
        })
    })();
    header.unwrap_or(ExpectedFile {
        checkpoint_id: 1,
        key_groups: KeyGroupRange::all(128),
        state_count: 2,
    })
}

/// Collects what a snapshot writer writes.
struct VecFileWriter(Vec<u8>);

impl CheckpointFileWriter for VecFileWriter {
    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<u64> {
        Ok(self.0.len() as u64)
    }
}

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
                    key_groups,
                },
                shared: false,
            },
            CheckpointFile {
                file: FileRef {
                    path: "shared/000012.sst".into(),
                    size: 99,
                    crc32: 1,
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
    let mut out = vec![("metadata", "metadata-0".to_string(), metadata.encode())];
    if write_full_snapshot_file(&mut file, 7, key_groups, &[counts, seen]).is_ok() {
        out.push(("snapshot", "snapshot-0".to_string(), file.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seed the decoder rejects would leave the fuzzer to find the format by chance.
    #[test]
    fn every_target_has_seeds_that_decode() {
        let seeds = seeds();
        for target in TARGETS {
            assert!(seeds.iter().any(|(t, _, _)| t == target), "{target}");
        }
        for (target, name, bytes) in &seeds {
            let ok = match *target {
                "block" => Block::decode(&bytes[1..], "s", 0).is_ok(),
                "sst" => SstReader::from_bytes(
                    Arc::new(bytes.clone()),
                    Arc::from("s"),
                    Path::new("s"),
                    1,
                    None,
                )
                .and_then(|r| r.verify())
                .is_ok(),
                "batch" => WriteBatch::decode(bytes, "s", 0).is_ok(),
                "metadata" => CheckpointMetadata::decode(bytes, "s").is_ok(),
                "snapshot" => {
                    let expected = snapshot_expectation(bytes);
                    decode_full_snapshot_file(bytes, "s", &expected, |_, _, _| Ok(())).is_ok()
                }
                _ => true,
            };
            assert!(ok, "seed {target}/{name} does not decode");
            assert!(run(target, bytes));
        }
    }
}
