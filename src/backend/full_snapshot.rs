//! Full snapshot files (FORMAT.md §5): one file per run of key groups, every state's entries in
//! composite-key order, in crc32-framed blocks of at most ~64 KiB.
//!
//! The writer streams block by block (memory bounded by one block, whatever the state size) and
//! returns the file's size and whole-file crc32 for `_metadata`. The decoder never panics,
//! never allocates by a length from the file, and checks order, key groups and counts.

use std::ops::Bound;

use crate::checkpoint::storage::{CheckpointFileWriter, Digest, Listed};
use crate::codec::cursor::Cursor;
use crate::codec::record::{MAX_RECORD_LEN, RECORD_HEADER_LEN, decode_record, put_record};
use crate::codec::varint::{put_varint32, varint_len};
use crate::error::{Error, Result};
use crate::keys::{CompositeKey, KeyGroupRange};

use super::heap::StateMap;

/// First 8 bytes of a full snapshot file. On disk: never change; FORMAT.md §5.
pub const FULL_SNAPSHOT_MAGIC: [u8; 8] = *b"FLWSFULL";
/// The format version this code writes and the newest it reads. FORMAT.md §5.
pub const FULL_SNAPSHOT_VERSION: u32 = 1;
/// The entries of one block take at most this many bytes, unless a single entry is larger (it
/// then sits alone in its block).
pub const BLOCK_TARGET_LEN: usize = 64 << 10;

// Record types: the first payload byte of every record. On disk: never change; FORMAT.md §5.
const RECORD_HEADER: u8 = 1;
const RECORD_BLOCK: u8 = 2;
const RECORD_FOOTER: u8 = 3;
const HEADER_PAYLOAD_LEN: usize = 17;
const FOOTER_PAYLOAD_LEN: usize = 17;
const PREAMBLE_LEN: usize = 12;

/// What `_metadata` says a file must be; the decoder checks the file's header against it.
#[derive(Clone, Copy, Debug)]
pub struct ExpectedFile {
    /// The checkpoint the file belongs to.
    pub checkpoint_id: u64,
    /// The key groups the file covers.
    pub key_groups: KeyGroupRange,
    /// Number of states in the checkpoint.
    pub state_count: u32,
}

/// A writer that hashes and counts what it passes on.
struct HashingWriter<'a> {
    inner: &'a mut dyn CheckpointFileWriter,
    digest: Digest,
}

impl HashingWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.digest.update(bytes);
        self.inner.write_all(bytes)
    }
}

/// The entries of `map` in `key_groups`, in key order.
pub(crate) fn entries_in(
    map: &StateMap,
    key_groups: KeyGroupRange,
) -> impl Iterator<Item = (&Vec<u8>, &Vec<u8>)> {
    let lower = key_groups.start_key();
    let upper = key_groups.end_key();
    let upper_bound = match &upper {
        Some(u) => Bound::Excluded(u.to_vec()),
        None => Bound::Unbounded,
    };
    map.range::<_, Vec<u8>>((Bound::Included(lower.to_vec()), upper_bound))
}

/// Writes the entries of `states` (indexed by position) in `key_groups` as one full snapshot
/// file to `out`; returns the file's size and checksums. Does not finish (fsync) `out`.
pub fn write_full_snapshot_file(
    out: &mut dyn CheckpointFileWriter,
    checkpoint_id: u64,
    key_groups: KeyGroupRange,
    states: &[StateMap],
) -> Result<Listed> {
    let state_count = u32::try_from(states.len())
        .map_err(|_| Error::limit_exceeded("too many states to snapshot"))?;
    write_full_snapshot_file_from(
        out,
        checkpoint_id,
        key_groups,
        state_count,
        &mut |index, emit| {
            if let Some(map) = states.get(index) {
                for (key, value) in entries_in(map, key_groups) {
                    emit(key, value)?;
                }
            }
            Ok(())
        },
        &[],
    )
}

/// Calls `emit(key, value)` for every entry of one state, in key order.
pub type EntrySource<'a> =
    dyn FnMut(usize, &mut dyn FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> + 'a;

/// Writes one full snapshot file like [`write_full_snapshot_file`], taking each state's entries
/// in `key_groups` from `entries(state_index, emit)` (any backend can feed it). The key and
/// value bytes written for state `i` are added to `state_bytes[i]` when it exists (the
/// per-state size metrics; files of one checkpoint may be written in parallel).
pub fn write_full_snapshot_file_from(
    out: &mut dyn CheckpointFileWriter,
    checkpoint_id: u64,
    key_groups: KeyGroupRange,
    state_count: u32,
    entries: &mut EntrySource<'_>,
    state_bytes: &[std::sync::atomic::AtomicU64],
) -> Result<Listed> {
    let mut w = HashingWriter {
        inner: out,
        digest: Digest::new(),
    };
    let mut preamble = Vec::with_capacity(PREAMBLE_LEN);
    preamble.extend_from_slice(&FULL_SNAPSHOT_MAGIC);
    preamble.extend_from_slice(&FULL_SNAPSHOT_VERSION.to_le_bytes());
    w.write(&preamble)?;
    let mut header = Vec::with_capacity(HEADER_PAYLOAD_LEN);
    header.push(RECORD_HEADER);
    header.extend_from_slice(&checkpoint_id.to_le_bytes());
    header.extend_from_slice(&key_groups.first().to_le_bytes());
    header.extend_from_slice(&key_groups.last().to_le_bytes());
    header.extend_from_slice(&state_count.to_le_bytes());
    write_record(&mut w, &header)?;

    let (mut block_count, mut entry_count) = (0u64, 0u64);
    let mut block = Vec::with_capacity(BLOCK_TARGET_LEN);
    for index in 0..state_count {
        let mut in_block = 0u32;
        let mut bytes = 0u64;
        entries(index as usize, &mut |key, value| {
            let entry_len = varint_len(key.len() as u64)
                + key.len()
                + varint_len(value.len() as u64)
                + value.len();
            // 1 type byte + two varint32s of block prefix.
            if entry_len + 11 > MAX_RECORD_LEN as usize {
                return Err(Error::limit_exceeded(format!(
                    "entry of {entry_len} bytes exceeds the largest snapshot block ({MAX_RECORD_LEN} bytes)"
                )));
            }
            if in_block > 0 && block.len() + entry_len > BLOCK_TARGET_LEN {
                write_block(&mut w, index, in_block, &block)?;
                block_count += 1;
                block.clear();
                in_block = 0;
            }
            put_varint32(&mut block, key.len() as u32);
            block.extend_from_slice(key);
            put_varint32(&mut block, value.len() as u32);
            block.extend_from_slice(value);
            in_block += 1;
            entry_count += 1;
            bytes += (key.len() + value.len()) as u64;
            Ok(())
        })?;
        if let Some(total) = state_bytes.get(index as usize) {
            total.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
        if in_block > 0 {
            write_block(&mut w, index, in_block, &block)?;
            block_count += 1;
            block.clear();
        }
    }
    let mut footer = Vec::with_capacity(FOOTER_PAYLOAD_LEN);
    footer.push(RECORD_FOOTER);
    footer.extend_from_slice(&block_count.to_le_bytes());
    footer.extend_from_slice(&entry_count.to_le_bytes());
    write_record(&mut w, &footer)?;
    Ok(w.digest.finish())
}

/// Writes one block record: the bytes `put_record` would frame for the payload
/// `RECORD_BLOCK | state_index | count | entries`, without copying `entries` into a payload
/// and a frame first (the record's crc32 is computed over the pieces).
fn write_block(
    w: &mut HashingWriter<'_>,
    state_index: u32,
    count: u32,
    entries: &[u8],
) -> Result<()> {
    let mut payload_head = Vec::with_capacity(11);
    payload_head.push(RECORD_BLOCK);
    put_varint32(&mut payload_head, state_index);
    put_varint32(&mut payload_head, count);
    let len = payload_head.len() + entries.len();
    if len > MAX_RECORD_LEN as usize {
        return Err(Error::limit_exceeded(format!(
            "snapshot block of {len} bytes exceeds the largest record ({MAX_RECORD_LEN} bytes)"
        )));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&payload_head);
    crc.update(entries);
    let mut head = Vec::with_capacity(RECORD_HEADER_LEN + payload_head.len());
    head.extend_from_slice(&(len as u32).to_le_bytes());
    head.extend_from_slice(&crc.finalize().to_le_bytes());
    head.extend_from_slice(&payload_head);
    w.write(&head)?;
    w.write(entries)
}

fn write_record(w: &mut HashingWriter<'_>, payload: &[u8]) -> Result<()> {
    let mut framed = Vec::with_capacity(payload.len() + 8);
    put_record(&mut framed, payload);
    w.write(&framed)
}

/// Decodes a full snapshot file, calling `visit(state_index, key, value)` for every entry in
/// file order; returns the number of entries. Every check of FORMAT.md §5 is made, and an error
/// names `file` and the byte offset. Call it with a no-op visitor to validate a file.
pub fn decode_full_snapshot_file(
    bytes: &[u8],
    file: &str,
    expected: &ExpectedFile,
    mut visit: impl FnMut(u32, &[u8], &[u8]) -> Result<()>,
) -> Result<u64> {
    check_preamble(bytes, file)?;
    let mut pos = PREAMBLE_LEN;
    let next_record = |pos: &mut usize| -> Result<(&[u8], u64)> {
        let at = *pos as u64;
        let (payload, used) = decode_record(bytes.get(*pos..).unwrap_or_default(), file, at)?;
        *pos += used;
        Ok((payload, at + 8))
    };

    let (payload, at) = next_record(&mut pos)?;
    check_header(payload, file, at, expected)?;

    let (mut blocks, mut entries) = (0u64, 0u64);
    let mut last: Option<(u32, &[u8])> = None;
    loop {
        let (payload, at) = next_record(&mut pos)?;
        let mut c = Cursor::new(payload, file, at);
        match c.u8("record type")? {
            RECORD_BLOCK => {
                let count = decode_block(&mut c, at, file, expected, &mut last, &mut visit)?;
                blocks += 1;
                entries += u64::from(count);
            }
            RECORD_FOOTER => {
                check_footer(&mut c, payload.len(), at, (blocks, entries))?;
                if pos != bytes.len() {
                    return Err(Error::corruption(
                        file,
                        pos as u64,
                        "trailing bytes after the footer",
                    ));
                }
                return Ok(entries);
            }
            other => return Err(c.error_at(at, format!("unknown record type {other}"))),
        }
    }
}

/// Checks the preamble of a full snapshot file: its magic and format version.
fn check_preamble(bytes: &[u8], file: &str) -> Result<()> {
    let mut preamble = Cursor::new(bytes, file, 0);
    if preamble.bytes(8, "magic")? != FULL_SNAPSHOT_MAGIC {
        return Err(Error::corruption(
            file,
            0,
            "bad magic: not a full snapshot file",
        ));
    }
    let version = preamble.u32_le("format version")?;
    if version != FULL_SNAPSHOT_VERSION {
        return Err(Error::corruption(
            file,
            8,
            format!("unsupported version {version} (this reader knows {FULL_SNAPSHOT_VERSION})"),
        ));
    }
    Ok(())
}

/// Decodes the rest of a block record at `at` (its type byte already read from `c`): checks
/// the state index, the count, each entry's key group and the (state, key) order after `last`,
/// calls `visit` for each entry, and returns the block's entry count.
fn decode_block<'a>(
    c: &mut Cursor<'a>,
    at: u64,
    file: &str,
    expected: &ExpectedFile,
    last: &mut Option<(u32, &'a [u8])>,
    visit: &mut impl FnMut(u32, &[u8], &[u8]) -> Result<()>,
) -> Result<u32> {
    let state_index = c.varint32()?;
    if state_index >= expected.state_count {
        return Err(c.error_at(
            at + 1,
            format!(
                "state index {state_index} >= state count {}",
                expected.state_count
            ),
        ));
    }
    let count_at = c.offset();
    let count = c.varint32()?;
    if count == 0 {
        return Err(c.error_at(count_at, "empty block"));
    }
    for _ in 0..count {
        let entry_at = c.offset();
        let key_len = c.varint32()?;
        let key = c.bytes(key_len as usize, "key")?;
        let value_len = c.varint32()?;
        let value = c.bytes(value_len as usize, "value")?;
        let parsed = CompositeKey::decode(key, file, entry_at)?;
        if !expected.key_groups.contains(parsed.key_group) {
            return Err(c.error_at(
                entry_at,
                format!(
                    "key group {} outside the file's {}",
                    parsed.key_group, expected.key_groups
                ),
            ));
        }
        if let Some((last_state, last_key)) = *last
            && (last_state, last_key) >= (state_index, key)
        {
            return Err(c.error_at(entry_at, "entries out of (state, key) order"));
        }
        *last = Some((state_index, key));
        visit(state_index, key, value)?;
    }
    if !c.is_empty() {
        return Err(c.error_at(c.offset(), "trailing bytes after the block's entries"));
    }
    Ok(count)
}

/// Checks a footer record of `len` payload bytes at `at` (its type byte already read from `c`)
/// against the `(blocks, entries)` the file held before it.
fn check_footer(c: &mut Cursor<'_>, len: usize, at: u64, seen: (u64, u64)) -> Result<()> {
    let (blocks, entries) = seen;
    if len != FOOTER_PAYLOAD_LEN {
        return Err(c.error_at(
            at,
            format!("footer of {len} bytes, expected {FOOTER_PAYLOAD_LEN}"),
        ));
    }
    let block_count = c.u64_le("block count")?;
    let entry_count = c.u64_le("entry count")?;
    if (block_count, entry_count) != (blocks, entries) {
        return Err(c.error_at(at + 1, format!(
            "footer counts {block_count} blocks / {entry_count} entries, file has {blocks} / {entries}"
        )));
    }
    Ok(())
}

fn check_header(payload: &[u8], file: &str, at: u64, expected: &ExpectedFile) -> Result<()> {
    let mut c = Cursor::new(payload, file, at);
    if payload.len() != HEADER_PAYLOAD_LEN || c.u8("record type")? != RECORD_HEADER {
        return Err(c.error_at(at, "first record is not a file header"));
    }
    let checkpoint_id = c.u64_le("checkpoint id")?;
    let first = c.u16_le("first key group")?;
    let last = c.u16_le("last key group")?;
    let state_count = c.u32_le("state count")?;
    let key_groups = &expected.key_groups;
    if checkpoint_id != expected.checkpoint_id
        || (first, last) != (key_groups.first(), key_groups.last())
        || state_count != expected.state_count
    {
        return Err(c.error_at(at + 1, format!(
            "header says checkpoint {checkpoint_id}, key groups {first}..={last}, {state_count} states; \
             _metadata says checkpoint {}, key groups {key_groups}, {} states",
            expected.checkpoint_id, expected.state_count
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::composite_key;
    use proptest::prelude::*;

    #[derive(Default)]
    struct VecWriter(Vec<u8>);

    impl CheckpointFileWriter for VecWriter {
        fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
            self.0.extend_from_slice(bytes);
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<u64> {
            Ok(self.0.len() as u64)
        }
    }

    fn encode(states: &[StateMap], groups: KeyGroupRange) -> Vec<u8> {
        let mut w = VecWriter::default();
        let listed = write_full_snapshot_file(&mut w, 9, groups, states).unwrap();
        assert_eq!(listed, Listed::of_bytes(&w.0));
        w.0
    }

    type Decoded = (u32, Vec<u8>, Vec<u8>);

    fn decode(bytes: &[u8], groups: KeyGroupRange, states: u32) -> Result<Vec<Decoded>> {
        let mut out = Vec::new();
        let expected = ExpectedFile {
            checkpoint_id: 9,
            key_groups: groups,
            state_count: states,
        };
        decode_full_snapshot_file(bytes, "f", &expected, |s, k, v| {
            out.push((s, k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn block_is_framed_as_put_record_frames_it() {
        for (state_index, count, entries) in [(0, 1, &b"x"[..]), (300, 70_000, &[7; 1000][..])] {
            let mut out = VecWriter::default();
            let mut w = HashingWriter {
                inner: &mut out,
                digest: Digest::new(),
            };
            write_block(&mut w, state_index, count, entries).unwrap();
            let mut payload = vec![RECORD_BLOCK];
            put_varint32(&mut payload, state_index);
            put_varint32(&mut payload, count);
            payload.extend_from_slice(entries);
            let mut framed = Vec::new();
            put_record(&mut framed, &payload);
            assert_eq!(out.0, framed);
        }
    }

    #[test]
    fn large_state_spans_many_bounded_blocks() {
        let mut map = StateMap::new();
        for i in 0u32..3000 {
            map.insert(composite_key(2, &i.to_be_bytes(), b"", b""), vec![7; 100]);
        }
        map.insert(composite_key(3, b"other group", b"", b""), vec![1]);
        let groups = KeyGroupRange::new(2, 2).unwrap();
        let bytes = encode(&[StateMap::new(), map.clone()], groups);
        let decoded = decode(&bytes, groups, 2).unwrap();
        assert_eq!(decoded.len(), 3000);
        assert!(decoded.iter().all(|(s, _, _)| *s == 1));
        assert!(bytes.len() > 4 * BLOCK_TARGET_LEN);
        // A wrong expectation is refused.
        assert!(decode(&bytes, groups, 3).unwrap_err().is_corruption());
        assert!(decode(&bytes, KeyGroupRange::new(2, 3).unwrap(), 2).is_err());
    }

    #[test]
    fn every_truncation_and_unknown_version_fail() {
        let mut map = StateMap::new();
        map.insert(composite_key(0, b"k", b"", b""), b"v".to_vec());
        let groups = KeyGroupRange::new(0, 0).unwrap();
        let bytes = encode(&[map], groups);
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut], groups, 1)
                    .unwrap_err()
                    .is_corruption(),
                "cut {cut}"
            );
        }
        let mut v2 = bytes.clone();
        v2[8] = 2;
        let e = decode(&v2, groups, 1).unwrap_err();
        assert!(e.to_string().contains("unsupported version 2"), "{e}");
    }

    proptest! {
        #[test]
        fn round_trip(entries in proptest::collection::btree_map(
            (0u32..2, 0u16..4, proptest::collection::vec(any::<u8>(), 0..6)),
            proptest::collection::vec(any::<u8>(), 0..20), 0..40)) {
            let mut states = vec![StateMap::new(), StateMap::new()];
            for ((s, kg, key), v) in &entries {
                states[*s as usize].insert(composite_key(*kg, key, b"ns", b""), v.clone());
            }
            let groups = KeyGroupRange::new(1, 2).unwrap();
            let decoded = decode(&encode(&states, groups), groups, 2).unwrap();
            let mut expect = Vec::new();
            for (s, map) in states.iter().enumerate() {
                for (k, v) in entries_in(map, groups) {
                    expect.push((s as u32, k.clone(), v.clone()));
                }
            }
            prop_assert_eq!(decoded, expect);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes, KeyGroupRange::new(0, 3).unwrap(), 2);
        }

        #[test]
        fn records_with_valid_crcs_never_panic(payloads in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..40), 0..5), kind in 1u8..4) {
            // Structure fuzzing past the crc32s: a valid preamble, then arbitrary framed records.
            let mut bytes = FULL_SNAPSHOT_MAGIC.to_vec();
            bytes.extend_from_slice(&FULL_SNAPSHOT_VERSION.to_le_bytes());
            for mut p in payloads {
                p.insert(0, kind);
                put_record(&mut bytes, &p);
            }
            let _ = decode(&bytes, KeyGroupRange::new(0, 3).unwrap(), 2);
        }
    }
}
