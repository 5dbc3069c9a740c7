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
use crate::backend::lsm::layout::CheckpointLayout;
use crate::checkpoint::metadata::{CheckpointMetadata, METADATA_VERSION};
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
use crate::savepoint::{decode_savepoint, encode_savepoint};

mod seeds;
pub use seeds::seeds;

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
    "layout",
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
        "layout" => layout(data),
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
    // A block that flattens (every key whole) holds the same entries in the same order.
    if let Some(flat) = crate::codec::block_iter::flat_entries(&block) {
        let area = block.entries();
        let flat: Entries = flat
            .iter()
            .map(|e| (e.key(area).to_vec(), e.value(area).to_vec()))
            .collect();
        assert_eq!(flat, forward, "flat entries match the iterator");
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
        assert_eq!(
            (found.sequence, &*found.value),
            (parsed.sequence, &value[..])
        );
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
            BatchOp::Put { cf, key, value } => rebuilt.put_id(cf, key, value),
            BatchOp::Delete { cf, key } => rebuilt.delete_id(cf, key),
            BatchOp::DeleteRange { cf, start, end } => rebuilt.delete_range_id(cf, start, end),
            BatchOp::Merge { cf, key, operand } => rebuilt.merge_id(cf, key, operand),
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

/// `_metadata` decoder; a decoded file of the current version encodes to the same bytes, and one
/// of an older version re-encodes (as the current version) to a file that decodes to the same
/// value.
pub fn metadata(data: &[u8]) {
    if let Ok(m) = CheckpointMetadata::decode(data, "fuzz") {
        let encoded = m.encode().expect("a decoded _metadata re-encodes");
        let current = data.get(8..12) == Some(&METADATA_VERSION.to_le_bytes()[..]);
        if current {
            assert_eq!(encoded, data, "_metadata re-encodes to the same bytes");
        } else {
            let again = CheckpointMetadata::decode(&encoded, "fuzz")
                .expect("a re-encoded older _metadata decodes");
            assert_eq!(
                again, m,
                "an older _metadata keeps its value when re-encoded"
            );
        }
    }
}

/// LSM checkpoint layout decoder (`_metadata`'s `extra`, FORMAT.md §11.3); a decoded layout
/// encodes to the same bytes (varints have one encoding, every other field is fixed-size), and
/// those decode to the same layout.
pub fn layout(data: &[u8]) {
    if let Ok(layout) = CheckpointLayout::decode(data, "fuzz", 0) {
        let bytes = layout.encode();
        assert_eq!(bytes, data, "a layout re-encodes to the same bytes");
        assert_eq!(
            CheckpointLayout::decode(&bytes, "fuzz", 0).ok(),
            Some(layout),
            "a re-encoded layout decodes to the same layout"
        );
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
    let listed = written.expect("decoded entries write");
    assert_eq!(listed, crate::checkpoint::storage::Listed::of_bytes(&out.0));
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
                // Damaged layouts are seeds too; only the `layout-*` ones must decode.
                "layout" => {
                    CheckpointLayout::decode(bytes, "s", 0).is_ok() == name.starts_with("layout-")
                }
                "snapshot" => {
                    let expected = snapshot_expectation(bytes);
                    decode_full_snapshot_file(bytes, "s", &expected, |_, _, _| Ok(())).is_ok()
                }
                _ => true,
            };
            assert!(
                ok,
                "seed {target}/{name} does not decode (or decodes though damaged)"
            );
            assert!(run(target, bytes));
        }
    }
}
