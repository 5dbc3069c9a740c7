//! Canonical, backend-independent savepoints (FORMAT.md §6).
//!
//! A savepoint is one file of framed records: a header with every state's descriptor, then each
//! state's entries in composite-key order in bounded chunks, then a footer with the entry count.
//! Any backend writes it through the `StateBackend` trait and any backend restores it, into any
//! key-group range, so a job moves between backends and parallelisms. The file is written to a
//! temporary name, fsynced, renamed and the directory fsynced: it exists whole or not at all.

use std::collections::HashSet;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::backend::{BackendKind, Entry, StateBackend, StateDescriptor, StateId, StateKind};
use crate::codec::cursor::Cursor;
use crate::codec::record::{RecordReader, put_record};
use crate::codec::varint::{put_varint32, put_varint64};
use crate::error::{Error, Result};
use crate::fs::{FileSystem, IoReader, IoWriter, StdFs, commit_temp};
use crate::keys::{KeyGroupRange, key_group_of};
use crate::ttl::drop_expired;

/// On disk: never change; FORMAT.md §6.
pub const SAVEPOINT_MAGIC: [u8; 8] = *b"FLSTSAVE";
/// The format version this code writes and reads.
pub const SAVEPOINT_VERSION: u32 = 1;
/// Largest record payload in a savepoint file (1 MiB); entry chunks are cut below it.
pub const MAX_SAVEPOINT_RECORD: u32 = 1 << 20;
/// Target payload size of one entry chunk.
const CHUNK_TARGET: usize = 64 * 1024;
/// Record tags (on disk: never change; FORMAT.md §6).
const TAG_ENTRIES: u8 = 1;
const TAG_FOOTER: u8 = 2;

/// The header of a savepoint: where it came from and which states it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavepointHeader {
    /// `max_parallelism` of the job that wrote it (restores must use the same).
    pub max_parallelism: u16,
    /// Key groups the writing backend owned.
    pub key_group_range: KeyGroupRange,
    /// Backend kind that wrote it (informational: any backend may restore it).
    pub source: BackendKind,
    /// Wall-clock ms at which it was written.
    pub created_ms: u64,
    /// Every state, in the order their entries follow.
    pub states: Vec<StateDescriptor>,
}

/// A whole savepoint in memory (tests, fuzzing, small state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Savepoint {
    /// The header.
    pub header: SavepointHeader,
    /// Per state (same order as `header.states`), its entries in composite-key order.
    pub entries: Vec<Vec<Entry>>,
}

/// Counts of what a savepoint write or restore handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SavepointStats {
    /// States in the savepoint(s).
    pub states: usize,
    /// Entries written, or entries restored into the backend's range.
    pub entries: u64,
    /// Bytes of the file(s).
    pub bytes: u64,
}

fn encode_header(header: &SavepointHeader) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&SAVEPOINT_MAGIC);
    out.extend_from_slice(&SAVEPOINT_VERSION.to_le_bytes());
    out.extend_from_slice(&header.max_parallelism.to_le_bytes());
    out.extend_from_slice(&header.key_group_range.first().to_le_bytes());
    out.extend_from_slice(&header.key_group_range.last().to_le_bytes());
    out.push(header.source.tag());
    out.extend_from_slice(&header.created_ms.to_le_bytes());
    put_varint32(&mut out, header.states.len() as u32);
    for state in &header.states {
        state.encode(&mut out);
    }
    out
}

fn decode_header(payload: &[u8], file: &str, base: u64) -> Result<SavepointHeader> {
    let mut c = Cursor::new(payload, file, base);
    if c.bytes(8, "magic")? != SAVEPOINT_MAGIC {
        return Err(Error::corruption(
            file,
            base,
            "not a flowstate savepoint (bad magic)",
        ));
    }
    let at = c.offset();
    let version = c.u32_le("version")?;
    if version != SAVEPOINT_VERSION {
        return Err(Error::corruption(
            file,
            at,
            format!(
                "unsupported savepoint version {version} (this build reads {SAVEPOINT_VERSION})"
            ),
        ));
    }
    let at = c.offset();
    let max_parallelism = c.u16_le("max parallelism")?;
    let first = c.u16_le("first key group")?;
    let last = c.u16_le("last key group")?;
    let key_group_range = KeyGroupRange::new(first, last)
        .ok()
        .filter(|r| max_parallelism >= 1 && u32::from(r.last()) < u32::from(max_parallelism))
        .ok_or_else(|| Error::corruption(file, at, "invalid max parallelism or key-group range"))?;
    let at = c.offset();
    let tag = c.u8("backend kind")?;
    let source = BackendKind::from_tag(tag)
        .ok_or_else(|| Error::corruption(file, at, format!("unknown backend kind {tag}")))?;
    let created_ms = c.u64_le("creation time")?;
    // A descriptor takes at least 5 bytes (name len, kind, ttl flag, serializer len, 1 name byte).
    let count = c.count(5, "state")?;
    let mut states: Vec<StateDescriptor> = Vec::with_capacity(count);
    // A hash set, not a scan of the list: a 1 MiB header of 80 000 states stays linear.
    let mut names = HashSet::with_capacity(count);
    for _ in 0..count {
        let at = c.offset();
        let state = StateDescriptor::decode(&mut c)?;
        if !names.insert(state.name.clone()) {
            return Err(Error::corruption(
                file,
                at,
                format!("state '{}' listed twice", state.name),
            ));
        }
        states.push(state);
    }
    c.finish("savepoint header")?;
    Ok(SavepointHeader {
        max_parallelism,
        key_group_range,
        source,
        created_ms,
        states,
    })
}

/// Streams entries of one state into bounded chunk records.
struct ChunkWriter {
    state_index: u32,
    chunk: Vec<u8>,
    count: u32,
}

impl ChunkWriter {
    fn push(
        &mut self,
        key: &[u8],
        value: &[u8],
        out: &mut impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let need = key.len() + value.len() + 12;
        if need + 32 > MAX_SAVEPOINT_RECORD as usize {
            return Err(Error::limit_exceeded(format!(
                "entry of {need} bytes exceeds the savepoint record limit {MAX_SAVEPOINT_RECORD}"
            )));
        }
        if self.count > 0 && self.chunk.len() + need > CHUNK_TARGET {
            self.flush(out)?;
        }
        put_varint32(&mut self.chunk, key.len() as u32);
        self.chunk.extend_from_slice(key);
        put_varint32(&mut self.chunk, value.len() as u32);
        self.chunk.extend_from_slice(value);
        self.count += 1;
        Ok(())
    }

    fn flush(&mut self, out: &mut impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        let mut payload = Vec::with_capacity(self.chunk.len() + 12);
        payload.push(TAG_ENTRIES);
        put_varint32(&mut payload, self.state_index);
        put_varint32(&mut payload, self.count);
        payload.extend_from_slice(&self.chunk);
        self.chunk.clear();
        self.count = 0;
        out(&payload)
    }
}

fn footer(total: u64) -> Vec<u8> {
    let mut payload = vec![TAG_FOOTER];
    put_varint64(&mut payload, total);
    payload
}

/// Encodes a whole in-memory savepoint (the inverse of [`decode_savepoint`]).
pub fn encode_savepoint(savepoint: &Savepoint) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    put_record(&mut out, &encode_header(&savepoint.header));
    let mut total = 0u64;
    let mut sink = |payload: &[u8]| -> Result<()> {
        put_record(&mut out, payload);
        Ok(())
    };
    for (index, entries) in savepoint.entries.iter().enumerate() {
        let mut chunks = ChunkWriter {
            state_index: index as u32,
            chunk: Vec::new(),
            count: 0,
        };
        for (k, v) in entries {
            chunks.push(k, v, &mut sink)?;
            total += 1;
        }
        chunks.flush(&mut sink)?;
    }
    sink(&footer(total))?;
    Ok(out)
}

/// Decodes and validates a whole savepoint held in memory.
pub fn decode_savepoint(bytes: &[u8], file: &str) -> Result<Savepoint> {
    let mut reader = SavepointReader::new(bytes, file)?;
    let mut entries: Vec<Vec<Entry>> = vec![Vec::new(); reader.header.states.len()];
    reader.for_each(|state, key, value| {
        if let Some(list) = entries.get_mut(state) {
            list.push((key.to_vec(), value.to_vec()));
        }
        Ok(())
    })?;
    Ok(Savepoint {
        header: reader.header,
        entries,
    })
}

/// Reads a savepoint stream: the header first, then entries in order.
struct SavepointReader<R> {
    records: RecordReader<R>,
    header: SavepointHeader,
    file: String,
}

impl<R: std::io::Read> SavepointReader<R> {
    fn new(inner: R, file: &str) -> Result<Self> {
        let mut records = RecordReader::new(inner, file, MAX_SAVEPOINT_RECORD);
        let at = records.offset();
        let payload = records
            .next_record()?
            .ok_or_else(|| Error::corruption(file, 0, "empty file: no savepoint header"))?;
        let header = decode_header(payload, file, at + 8)?;
        Ok(SavepointReader {
            records,
            header,
            file: file.to_string(),
        })
    }

    /// Calls `f(state_index, key, value)` for every entry; checks order, the footer and the total.
    fn for_each(&mut self, mut f: impl FnMut(usize, &[u8], &[u8]) -> Result<()>) -> Result<u64> {
        let file = self.file.clone();
        let states = self.header.states.len();
        let range = self.header.key_group_range;
        let mut total = 0u64;
        let mut last: Option<(usize, Vec<u8>)> = None;
        loop {
            let at = self.records.offset();
            let Some(payload) = self.records.next_record()? else {
                return Err(Error::corruption(
                    &file,
                    at,
                    "savepoint truncated: footer missing",
                ));
            };
            let mut c = Cursor::new(payload, &file, at + 8);
            match c.u8("record tag")? {
                TAG_ENTRIES => {}
                TAG_FOOTER => {
                    let declared = c.varint64()?;
                    c.finish("savepoint footer")?;
                    if declared != total {
                        return Err(Error::corruption(
                            &file,
                            at,
                            format!("footer declares {declared} entries, found {total}"),
                        ));
                    }
                    if self.records.next_record()?.is_some() {
                        return Err(Error::corruption(
                            &file,
                            self.records.offset(),
                            "data after the footer",
                        ));
                    }
                    return Ok(total);
                }
                tag => {
                    return Err(Error::corruption(
                        &file,
                        at + 8,
                        format!("unknown record tag {tag}"),
                    ));
                }
            }
            let state_at = c.offset();
            let state = c.varint32()? as usize;
            if state >= states {
                return Err(Error::corruption(
                    &file,
                    state_at,
                    format!("state index {state} of {states}"),
                ));
            }
            let count = c.count(2, "entry")?;
            for _ in 0..count {
                let key_at = c.offset();
                let key = c.len_prefixed("key")?;
                let value = c.len_prefixed("value")?;
                let in_order = match &last {
                    None => true,
                    Some((s, k)) => state > *s || (state == *s && key > k.as_slice()),
                };
                let in_range = key_group_of(key).is_some_and(|kg| range.contains(kg));
                if !in_order || !in_range {
                    return Err(Error::corruption(
                        &file,
                        key_at,
                        if in_order {
                            "key outside the savepoint's key groups"
                        } else {
                            "entries out of order"
                        },
                    ));
                }
                f(state, key, value)?;
                last = Some((state, key.to_vec()));
                total += 1;
            }
            c.finish("entry chunk")?;
        }
    }
}

/// Writes every state of `backend` as a savepoint at `path` (atomically: temp file, fsync,
/// rename, directory fsync). Expired TTL entries are left out.
///
/// The backend is scanned under `&mut`, so the savepoint is consistent; processing waits for it.
pub fn write_savepoint(backend: &mut dyn StateBackend, path: &Path) -> Result<SavepointStats> {
    write_savepoint_on(&StdFs, backend, path)
}

/// [`write_savepoint`] on the file system `fs`.
pub fn write_savepoint_on(
    fs: &dyn FileSystem,
    backend: &mut dyn StateBackend,
    path: &Path,
) -> Result<SavepointStats> {
    let config = backend.config().clone();
    let states = backend.states();
    let header = SavepointHeader {
        max_parallelism: config.max_parallelism,
        key_group_range: config.key_group_range,
        source: backend.kind(),
        created_ms: config.clock.now_ms(),
        states: states.clone(),
    };
    let now = config.clock.now_ms();
    let tmp = temp_path(path);
    let file = fs.create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut writer = BufWriter::new(IoWriter(file));
    let mut bytes = 0u64;
    let mut record = Vec::new();
    let mut sink = |payload: &[u8]| -> Result<()> {
        record.clear();
        put_record(&mut record, payload);
        bytes += record.len() as u64;
        writer.write_all(&record).map_err(|e| Error::io(&tmp, e))
    };
    sink(&encode_header(&header))?;
    let mut total = 0u64;
    for (index, descriptor) in states.iter().enumerate() {
        let id = StateId(index as u32);
        let mut chunks = ChunkWriter {
            state_index: index as u32,
            chunk: Vec::new(),
            count: 0,
        };
        for entry in backend.scan_prefix(id, &[])? {
            let (key, value) = entry?;
            let value = match &descriptor.ttl {
                Some(ttl) => {
                    match drop_expired(descriptor.kind == StateKind::List, ttl, &value, now) {
                        Ok(Some(kept)) => kept,
                        Ok(None) => continue,
                        Err(_) => value,
                    }
                }
                None => value,
            };
            chunks.push(&key, &value, &mut sink)?;
            total += 1;
        }
        chunks.flush(&mut sink)?;
    }
    sink(&footer(total))?;
    let file = writer
        .into_inner()
        .map_err(|e| Error::io(&tmp, e.into_error()))?;
    commit_temp(fs, file.0, &tmp, path)?;
    Ok(SavepointStats {
        states: states.len(),
        entries: total,
        bytes,
    })
}

/// Restores savepoint files into `backend`: registers their states (an incompatible descriptor
/// is [`Error::StateMismatch`]), clears those states, then inserts every entry whose key group is
/// in the backend's range. Several files (from tasks of another parallelism) may be given; all
/// must share one `max_parallelism`. Every file is validated completely before the backend is
/// touched, so a corrupt file leaves the backend as it was.
pub fn restore_savepoint(
    backend: &mut dyn StateBackend,
    paths: &[PathBuf],
) -> Result<SavepointStats> {
    restore_savepoint_on(&StdFs, backend, paths)
}

/// [`restore_savepoint`] from the file system `fs`.
pub fn restore_savepoint_on(
    fs: &dyn FileSystem,
    backend: &mut dyn StateBackend,
    paths: &[PathBuf],
) -> Result<SavepointStats> {
    let max_parallelism = backend.config().max_parallelism;
    let mut stats = SavepointStats::default();
    let mut headers = Vec::with_capacity(paths.len());
    for path in paths {
        let name = path.display().to_string();
        let file = fs.open_read(path).map_err(|e| Error::io(path, e))?;
        let len = file.len();
        let mut reader = SavepointReader::new(BufReader::new(IoReader::new(file)), &name)?;
        if reader.header.max_parallelism != max_parallelism {
            return Err(Error::incompatible(format!(
                "savepoint {name} has max_parallelism {}, the backend {max_parallelism}",
                reader.header.max_parallelism
            )));
        }
        reader.for_each(|_, _, _| Ok(()))?;
        stats.bytes += len;
        headers.push(reader.header);
    }
    let existing = backend.states();
    for header in &headers {
        for state in &header.states {
            if let Some(found) = existing.iter().find(|d| d.name == state.name) {
                found.check_compatible(state)?;
            }
        }
    }
    let mut cleared = Vec::new();
    for header in &headers {
        for state in &header.states {
            let id = backend.register(state)?;
            if !cleared.contains(&id) {
                backend.delete_prefix(id, &[])?;
                cleared.push(id);
            }
        }
    }
    stats.states = cleared.len();
    let range = backend.config().key_group_range;
    for path in paths {
        let name = path.display().to_string();
        let mut reader = SavepointReader::new(open(fs, path)?, &name)?;
        let ids = reader
            .header
            .states
            .iter()
            .map(|s| backend.register(s))
            .collect::<Result<Vec<_>>>()?;
        reader.for_each(|state, key, value| {
            if key_group_of(key).is_some_and(|kg| range.contains(kg)) {
                let id = ids
                    .get(state)
                    .copied()
                    .ok_or(Error::UnknownState(state as u32))?;
                backend.put(id, key, value)?;
                stats.entries += 1;
            }
            Ok(())
        })?;
    }
    Ok(stats)
}

/// Reads only the header of a savepoint file.
pub fn read_savepoint_header(path: &Path) -> Result<SavepointHeader> {
    read_savepoint_header_on(&StdFs, path)
}

/// [`read_savepoint_header`] from the file system `fs`.
pub fn read_savepoint_header_on(fs: &dyn FileSystem, path: &Path) -> Result<SavepointHeader> {
    Ok(SavepointReader::new(open(fs, path)?, &path.display().to_string())?.header)
}

fn open(fs: &dyn FileSystem, path: &Path) -> Result<BufReader<IoReader>> {
    let file = fs.open_read(path).map_err(|e| Error::io(path, e))?;
    Ok(BufReader::new(IoReader::new(file)))
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::composite_key;
    use proptest::prelude::*;

    fn sample() -> Savepoint {
        let header = SavepointHeader {
            max_parallelism: 128,
            key_group_range: KeyGroupRange::all(128),
            source: BackendKind::Memory,
            created_ms: 42,
            states: vec![
                StateDescriptor::new("a", StateKind::Value),
                StateDescriptor::new("b", StateKind::List).with_ttl(crate::ttl::TtlConfig::new(
                    std::time::Duration::from_secs(1),
                )),
            ],
        };
        let entries = vec![
            (0..300u32)
                .map(|i| {
                    (
                        composite_key((i % 128) as u16, &i.to_be_bytes(), b"", b""),
                        vec![1; 300],
                    )
                })
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .collect(),
            vec![(composite_key(5, b"k", b"ns", b""), b"v".to_vec())],
        ];
        Savepoint { header, entries }
    }

    #[test]
    fn round_trips_and_rejects_every_truncation() {
        let sp = sample();
        let bytes = encode_savepoint(&sp).unwrap();
        assert_eq!(decode_savepoint(&bytes, "sp").unwrap(), sp);
        for cut in (0..bytes.len()).step_by(97) {
            let err = decode_savepoint(&bytes[..cut], "sp").unwrap_err();
            assert!(err.is_corruption(), "cut {cut}: {err}");
        }
    }

    #[test]
    fn a_header_of_many_states_decodes_and_a_late_duplicate_is_found() {
        // 40 000 states in one header record (at most 1 MiB): a pairwise check
        // would compare 8 * 10^8 pairs; the hash set looks each up once.
        let mut header = sample().header;
        header.states = (0..40_000)
            .map(|i| StateDescriptor::new(format!("s{i}"), StateKind::Value))
            .collect();
        let bytes = encode_header(&header);
        assert!(
            bytes.len() < MAX_SAVEPOINT_RECORD as usize,
            "{}",
            bytes.len()
        );
        assert_eq!(decode_header(&bytes, "sp", 8).unwrap(), header);
        let at = bytes.len() as u64;
        header
            .states
            .push(StateDescriptor::new("s0", StateKind::Map));
        let err = decode_header(&encode_header(&header), "sp", 8).unwrap_err();
        assert!(err.to_string().contains("state 's0' listed twice"), "{err}");
        assert!(
            matches!(err, Error::Corruption { offset, .. } if offset == 8 + at),
            "{err}"
        );
    }

    #[test]
    fn rejects_unknown_version_and_out_of_order() {
        let sp = sample();
        let mut bytes = encode_savepoint(&sp).unwrap();
        // Version field: record header (8) + magic (8).
        bytes[16] = 9;
        let payload_len = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
        let crc = crate::codec::record::crc32(&bytes[8..8 + payload_len]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        let err = decode_savepoint(&bytes, "sp").unwrap_err().to_string();
        assert!(err.contains("unsupported savepoint version 9"), "{err}");
        let mut swapped = sp.clone();
        swapped.entries[0].swap(0, 1);
        let bytes = encode_savepoint(&swapped).unwrap();
        assert!(
            decode_savepoint(&bytes, "sp")
                .unwrap_err()
                .to_string()
                .contains("out of order")
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), flip in any::<prop::sample::Index>()) {
            let _ = decode_savepoint(&bytes, "fuzz");
            let mut valid = encode_savepoint(&sample()).unwrap();
            let i = flip.index(valid.len());
            valid[i] ^= 0x5a;
            prop_assert!(decode_savepoint(&valid, "fuzz").is_err());
        }
    }
}
