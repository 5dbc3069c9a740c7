//! Reads a WAL back batch by batch, telling a torn tail (a crash mid-append) from corruption.
//!
//! Relies on the record framing of `codec::record` and the batch decoder. The rule (FORMAT.md
//! §7.5): damage at offset `p` is a torn tail iff no valid record starts anywhere after `p`;
//! otherwise synced data follows the damage and recovery must not silently drop it.

use std::path::Path;

use crate::codec::record::{RECORD_HEADER_LEN, RecordError, length_damaged, read_record};
use crate::error::{Error, Result};
use crate::lsm::batch::{BATCH_HEADER_LEN, MAX_BATCH_LEN, WriteBatch};
use crate::lsm::format::MAX_SEQUENCE;
use crate::lsm::wal::{HeaderState, WAL_HEADER_LEN, decode_header};

/// What recovery does when it finds a damaged record (FORMAT.md §7.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Drop a torn tail (reported in the log); damage followed by valid records is
    /// [`Error::Corruption`]. Like RocksDB's `kTolerateCorruptedTailRecords`.
    #[default]
    TolerateTornTail,
    /// Return the batches before the first damage of any kind and report where it stopped.
    /// Like RocksDB's `kPointInTimeRecovery`.
    StopAtFirstCorruption,
    /// Any damage, a torn tail included, is [`Error::Corruption`]. Like RocksDB's
    /// `kAbsoluteConsistency`.
    Strict,
}

/// Whether damage ends the file or has valid records after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DamageKind {
    /// Nothing valid follows: a crash interrupted the last append (or the log's creation).
    TornTail,
    /// A valid record follows the damage: the file was damaged after it was written.
    Corruption,
}

/// Where and why reading stopped before the end of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the damaged record (or 0 for a torn header).
    pub offset: u64,
    /// Bytes from `offset` to the end of the file, which recovery did not use.
    pub dropped_bytes: u64,
    /// Torn tail or corruption.
    pub kind: DamageKind,
    /// What was wrong, in words.
    pub what: String,
}

/// Everything recovered from one WAL file.
#[derive(Clone, Debug)]
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the store's recovery reads the batches; reopening a WAL reads the rest"
    )
)]
pub struct WalRecovery {
    /// The header's log number; `None` if the header itself was torn.
    pub log_number: Option<u64>,
    /// The batches, in the order they were appended.
    pub batches: Vec<WriteBatch>,
    /// Bytes of the file up to the end of the last good record (the header included); new
    /// appends go here.
    pub valid_len: u64,
    /// Why reading stopped early, if it did.
    pub stop: Option<Damage>,
}

impl WalRecovery {
    /// Reads every batch of the WAL at `path` according to `mode`.
    #[cfg(test)]
    pub fn read(path: &Path, mode: RecoveryMode) -> Result<WalRecovery> {
        WalRecovery::read_on(crate::fs::std_fs().as_ref(), path, mode)
    }

    /// [`WalRecovery::read`] on the file system `fs`.
    pub fn read_on(
        fs: &dyn crate::fs::FileSystem,
        path: &Path,
        mode: RecoveryMode,
    ) -> Result<WalRecovery> {
        let mut reader = WalReader::open_on(fs, path, mode)?;
        let mut batches = Vec::new();
        while let Some(batch) = reader.next_batch()? {
            batches.push(batch);
        }
        Ok(WalRecovery {
            log_number: reader.log_number(),
            batches,
            valid_len: reader.valid_len(),
            stop: reader.stop().cloned(),
        })
    }

    /// Bytes at the end of the file that recovery did not use.
    #[cfg(test)]
    pub fn dropped_bytes(&self) -> u64 {
        self.stop.as_ref().map_or(0, |d| d.dropped_bytes)
    }
}

/// Why the record at the read position is unusable.
struct BadRecord {
    what: String,
    /// The framing and crc were intact: the payload itself is wrong, which no torn write does.
    crc_valid: bool,
}

/// A cursor over the batches of one WAL file, held in memory.
///
/// The whole file is read at open; a WAL is bounded by the write-buffer size the Db rolls it at.
pub struct WalReader {
    file: String,
    bytes: Vec<u8>,
    mode: RecoveryMode,
    log_number: Option<u64>,
    /// Offset of the next record to read.
    pos: usize,
    /// The smallest base sequence the next batch may have.
    next_sequence: u64,
    stop: Option<Damage>,
    done: bool,
}

impl WalReader {
    /// Opens the WAL at `path` on the file system `fs` and checks its header.
    pub fn open_on(
        fs: &dyn crate::fs::FileSystem,
        path: &Path,
        mode: RecoveryMode,
    ) -> Result<WalReader> {
        let bytes = fs.read(path).map_err(|e| Error::io(path, e))?;
        WalReader::from_bytes(bytes, path.display().to_string(), mode)
    }

    /// A reader over the bytes of a WAL file; `file` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, file: String, mode: RecoveryMode) -> Result<WalReader> {
        let mut reader = WalReader {
            file,
            bytes,
            mode,
            log_number: None,
            pos: WAL_HEADER_LEN,
            next_sequence: 0,
            stop: None,
            done: false,
        };
        match decode_header(&reader.bytes, &reader.file)? {
            HeaderState::Valid(log_number) => reader.log_number = Some(log_number),
            HeaderState::Torn => {
                reader.pos = 0;
                reader.done = true;
                let damage = Damage {
                    offset: 0,
                    dropped_bytes: reader.bytes.len() as u64,
                    kind: DamageKind::TornTail,
                    what: "torn WAL header".to_string(),
                };
                if mode == RecoveryMode::Strict {
                    return Err(reader.damage_error(&damage));
                }
                reader.stop = Some(damage);
            }
        }
        Ok(reader)
    }

    /// The next batch, or `None` at the end of the valid part of the file.
    pub fn next_batch(&mut self) -> Result<Option<WriteBatch>> {
        if self.done {
            return Ok(None);
        }
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        // The clean end: the file ends here, or only zero bytes follow (space preallocated for
        // appends; no record starts with a zero length).
        if rest.iter().all(|&b| b == 0) {
            self.done = true;
            return Ok(None);
        }
        match self.batch_at(self.pos) {
            Ok((batch, used)) => {
                self.pos += used;
                self.next_sequence = batch.last_sequence() + u64::from(!batch.is_empty());
                Ok(Some(batch))
            }
            Err(BadRecord { what, crc_valid }) => {
                self.done = true;
                // A torn write cannot produce a crc-valid record with a bad payload.
                let kind = if crc_valid || self.valid_record_after(self.pos) {
                    DamageKind::Corruption
                } else {
                    DamageKind::TornTail
                };
                let damage = Damage {
                    offset: self.pos as u64,
                    dropped_bytes: (self.bytes.len() - self.pos) as u64,
                    kind,
                    what,
                };
                let fatal = match self.mode {
                    RecoveryMode::TolerateTornTail => kind == DamageKind::Corruption,
                    RecoveryMode::StopAtFirstCorruption => false,
                    RecoveryMode::Strict => true,
                };
                if fatal {
                    return Err(self.damage_error(&damage));
                }
                self.stop = Some(damage);
                Ok(None)
            }
        }
    }

    /// The header's log number (`None` if the header was torn).
    pub fn log_number(&self) -> Option<u64> {
        self.log_number
    }

    /// End of the last good record read so far (the header's end before any record; 0 when the
    /// header was torn).
    pub fn valid_len(&self) -> u64 {
        self.pos as u64
    }

    /// Why reading stopped early, once it has.
    pub fn stop(&self) -> Option<&Damage> {
        self.stop.as_ref()
    }

    fn damage_error(&self, damage: &Damage) -> Error {
        let kind = match damage.kind {
            DamageKind::TornTail => "torn tail",
            DamageKind::Corruption => "damaged record followed by valid records",
        };
        Error::corruption(
            &self.file,
            damage.offset,
            format!("{kind}: {}", damage.what),
        )
    }

    /// Decodes the record at `pos` as a batch that may follow the ones already read.
    fn batch_at(&self, pos: usize) -> std::result::Result<(WriteBatch, usize), BadRecord> {
        let rest = self.bytes.get(pos..).unwrap_or_default();
        let framing = |what: String| BadRecord {
            what,
            crc_valid: false,
        };
        let (payload, used) = read_record(rest).map_err(|e| match e {
            RecordError::Truncated if length_damaged(rest) => BadRecord {
                what: "record length field damaged (the whole record is present)".to_string(),
                crc_valid: true,
            },
            RecordError::Truncated => framing("the file ends inside the record".to_string()),
            RecordError::Corrupt(what) => framing(what),
        })?;
        if payload.is_empty() {
            // A zero-filled header reads as a crc-valid empty record; no batch is empty.
            return Err(framing("empty record (zero-filled)".to_string()));
        }
        let batch = self.batch_of(payload, pos).map_err(|what| BadRecord {
            what,
            crc_valid: true,
        })?;
        Ok((batch, used))
    }

    /// The batch in the crc-valid `payload` of the record at `pos`, if it may follow the
    /// batches already read.
    fn batch_of(&self, payload: &[u8], pos: usize) -> std::result::Result<WriteBatch, String> {
        let batch = WriteBatch::decode(payload, &self.file, (pos + RECORD_HEADER_LEN) as u64)
            .map_err(|e| e.to_string())?;
        if batch.base_sequence() < self.next_sequence {
            return Err(format!(
                "batch base sequence {} is below the next expected sequence {}",
                batch.base_sequence(),
                self.next_sequence
            ));
        }
        Ok(batch)
    }

    /// Whether a valid batch record starts at any offset after `damaged` (FORMAT.md §7.5).
    ///
    /// Linear in the file's size however the bytes after the damage are crafted: cheap header
    /// checks pick the candidates; a candidate's payload crc comes from a table of prefix crcs
    /// (one pass over the file) in O(log n) instead of hashing the payload again; and the
    /// payloads whose crc matches are decoded as batches up to a budget of
    /// [`RESYNC_DECODE_BUDGET`] times the file's size, past which a crc-matching record counts
    /// as valid (damage is then reported as corruption, never silently dropped).
    fn valid_record_after(&self, damaged: usize) -> bool {
        let crcs = PrefixCrc::new(&self.bytes);
        let mut budget = RESYNC_DECODE_BUDGET.saturating_mul(self.bytes.len());
        for q in damaged + 1..self.bytes.len() {
            if !self.plausible_record_at(q) {
                continue;
            }
            let (len, stored) = (read_u32(&self.bytes, q), read_u32(&self.bytes, q + 4));
            let start = q + RECORD_HEADER_LEN;
            let end = start + len as usize;
            if crcs.range(start, end) != stored {
                continue;
            }
            if budget < len as usize {
                return true;
            }
            budget -= len as usize;
            // `plausible_record_at` checked that the payload lies within the file.
            let payload = self.bytes.get(start..end).unwrap_or_default();
            if self.batch_of(payload, q).is_ok() {
                return true;
            }
        }
        false
    }

    fn plausible_record_at(&self, q: usize) -> bool {
        let Some(head) = self
            .bytes
            .get(q..)
            .and_then(|r| r.get(..RECORD_HEADER_LEN + BATCH_HEADER_LEN))
        else {
            return false;
        };
        let mut raw4 = [0u8; 4];
        let mut raw8 = [0u8; 8];
        raw4.copy_from_slice(&head[..4]);
        let len = u32::from_le_bytes(raw4) as usize;
        raw8.copy_from_slice(&head[8..16]);
        let base = u64::from_le_bytes(raw8);
        raw4.copy_from_slice(&head[16..20]);
        let count = u32::from_le_bytes(raw4) as usize;
        let left = self.bytes.len() - q - RECORD_HEADER_LEN;
        (BATCH_HEADER_LEN..=MAX_BATCH_LEN.min(left)).contains(&len)
            && (self.next_sequence..=MAX_SEQUENCE).contains(&base)
            && count <= (len - BATCH_HEADER_LEN) / 3
    }
}

/// How many times the file's size the resync may spend decoding crc-matching payloads.
const RESYNC_DECODE_BUDGET: usize = 4;

/// Bytes between two entries of the resync's prefix-crc table.
const CRC_STRIDE: usize = 256;

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    if let Some(b) = bytes.get(at..at + 4) {
        raw.copy_from_slice(b);
    }
    u32::from_le_bytes(raw)
}

/// The crc32 of any range of a byte string in O(stride + log n), from the crcs of its prefixes
/// at every [`CRC_STRIDE`] bytes (4 bytes of table per 256 of input).
///
/// The crc is affine: `crc(A || B) = shift(crc(A), |B|) ^ crc(B)`, where `shift` appends
/// `|B|` zero bytes to a crc (what `crc32fast::Hasher::combine` computes), so
/// `crc(B) = crc(A || B) ^ shift(crc(A), |B|)`.
struct PrefixCrc<'a> {
    bytes: &'a [u8],
    /// `table[i]` is the crc32 of `bytes[..i * CRC_STRIDE]`.
    table: Vec<u32>,
}

impl<'a> PrefixCrc<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        let mut table = Vec::with_capacity(bytes.len() / CRC_STRIDE + 1);
        let mut hasher = crc32fast::Hasher::new();
        table.push(0);
        for chunk in bytes.chunks_exact(CRC_STRIDE) {
            count_hashed(chunk.len());
            hasher.update(chunk);
            table.push(hasher.clone().finalize());
        }
        PrefixCrc { bytes, table }
    }

    /// crc32 of `bytes[..end]`.
    fn prefix(&self, end: usize) -> u32 {
        let i = (end / CRC_STRIDE).min(self.table.len() - 1);
        let from = i * CRC_STRIDE;
        let mut hasher = crc32fast::Hasher::new_with_initial_len(self.table[i], from as u64);
        let tail = self.bytes.get(from..end).unwrap_or_default();
        count_hashed(tail.len());
        hasher.update(tail);
        hasher.finalize()
    }

    /// crc32 of `bytes[start..end]` (`start <= end <= bytes.len()`).
    fn range(&self, start: usize, end: usize) -> u32 {
        let mut shifted = crc32fast::Hasher::new_with_initial_len(self.prefix(start), 0);
        shifted.combine(&crc32fast::Hasher::new_with_initial_len(
            0,
            (end - start) as u64,
        ));
        shifted.finalize() ^ self.prefix(end)
    }
}

#[cfg(test)]
thread_local! {
    /// Bytes the resync of this thread fed to crc32 (tests bound it by the file's size).
    static HASHED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn count_hashed(_bytes: usize) {
    #[cfg(test)]
    HASHED.with(|h| h.set(h.get() + _bytes as u64));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::record::put_record;
    use crate::lsm::wal::encode_header;
    use proptest::prelude::*;

    /// A log of `n` batches with base sequences 1, 3, 5, …; returns the bytes and record offsets.
    fn log(n: usize) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = encode_header(9).to_vec();
        let mut offsets = Vec::new();
        for i in 0..n {
            let mut b = WriteBatch::new();
            b.put_id(0, format!("key{i}").as_bytes(), &[i as u8; 20])
                .unwrap();
            b.merge_id(1, b"m", b"op").unwrap();
            b.set_base_sequence(1 + 2 * i as u64).unwrap();
            offsets.push(bytes.len());
            put_record(&mut bytes, b.encoded());
        }
        (bytes, offsets)
    }

    fn read_all(
        bytes: Vec<u8>,
        mode: RecoveryMode,
    ) -> Result<(Vec<WriteBatch>, Option<Damage>, u64)> {
        let mut r = WalReader::from_bytes(bytes, "000009.wal".into(), mode)?;
        let mut out = Vec::new();
        while let Some(b) = r.next_batch()? {
            out.push(b);
        }
        Ok((out, r.stop().cloned(), r.valid_len()))
    }

    #[test]
    fn every_cut_in_the_last_record_keeps_the_earlier_batches() {
        let (bytes, offsets) = log(4);
        let last = offsets[3];
        for cut in last..bytes.len() {
            let (batches, stop, valid) =
                read_all(bytes[..cut].to_vec(), RecoveryMode::TolerateTornTail).unwrap();
            assert_eq!(batches.len(), 3, "cut {cut}");
            assert_eq!(valid, last as u64);
            if cut > last {
                let stop = stop.unwrap();
                assert_eq!(
                    (stop.offset, stop.dropped_bytes),
                    (last as u64, (cut - last) as u64)
                );
                assert_eq!(stop.kind, DamageKind::TornTail);
                assert!(read_all(bytes[..cut].to_vec(), RecoveryMode::Strict).is_err());
            } else {
                assert!(stop.is_none());
            }
        }
    }

    #[test]
    fn zeros_after_a_record_are_the_clean_end_and_zeros_inside_one_a_torn_tail() {
        let (records, offsets) = log(3);
        let end = records.len();
        let mut bytes = records.clone();
        bytes.resize(end + 4096, 0);
        // Preallocated space after the last record, in every mode.
        for mode in [
            RecoveryMode::Strict,
            RecoveryMode::TolerateTornTail,
            RecoveryMode::StopAtFirstCorruption,
        ] {
            let (batches, stop, valid) = read_all(bytes.clone(), mode).unwrap();
            assert_eq!(
                (batches.len(), valid, stop),
                (3, end as u64, None),
                "{mode:?}"
            );
        }
        // A record whose payload is zeros (its blocks never reached the disk) before the zeros.
        bytes[offsets[2] + RECORD_HEADER_LEN..].fill(0);
        let (batches, stop, valid) =
            read_all(bytes.clone(), RecoveryMode::TolerateTornTail).unwrap();
        assert_eq!((batches.len(), valid), (2, offsets[2] as u64));
        let stop = stop.unwrap();
        assert_eq!(
            (stop.offset, stop.kind),
            (offsets[2] as u64, DamageKind::TornTail)
        );
        assert!(read_all(bytes.clone(), RecoveryMode::Strict).is_err());
        // A nonzero byte far into the zeros: the zeros before it are no clean end.
        let mut bytes = records;
        bytes.resize(end + 4096, 0);
        bytes[end + 4000] = 1;
        let (batches, stop, _) = read_all(bytes, RecoveryMode::TolerateTornTail).unwrap();
        assert_eq!(batches.len(), 3);
        let stop = stop.unwrap();
        assert_eq!((stop.offset, stop.dropped_bytes), (end as u64, 4096));
    }

    #[test]
    fn flipped_byte_in_a_middle_record_is_corruption_at_its_offset() {
        let (bytes, offsets) = log(5);
        for victim in 0..4 {
            let record_end = offsets[victim + 1];
            for at in offsets[victim]..record_end {
                let mut bad = bytes.clone();
                bad[at] ^= 0x40;
                match read_all(bad.clone(), RecoveryMode::TolerateTornTail) {
                    Err(Error::Corruption { offset, file, .. }) => {
                        assert_eq!(
                            (offset, file.as_str()),
                            (offsets[victim] as u64, "000009.wal"),
                            "byte {at}"
                        )
                    }
                    other => panic!("byte {at}: {other:?}"),
                }
                let (batches, stop, valid) =
                    read_all(bad, RecoveryMode::StopAtFirstCorruption).unwrap();
                assert_eq!(batches.len(), victim, "byte {at}");
                assert_eq!(valid, offsets[victim] as u64);
                let stop = stop.unwrap();
                assert_eq!(
                    (stop.offset, stop.kind),
                    (offsets[victim] as u64, DamageKind::Corruption)
                );
            }
        }
    }

    #[test]
    fn sequence_going_backwards_is_corruption() {
        let mut bytes = encode_header(1).to_vec();
        for base in [10, 5, 20] {
            let mut b = WriteBatch::new();
            b.delete_id(0, b"k").unwrap();
            b.set_base_sequence(base).unwrap();
            put_record(&mut bytes, b.encoded());
        }
        assert!(
            read_all(bytes, RecoveryMode::TolerateTornTail)
                .unwrap_err()
                .is_corruption()
        );
        // Even as the last record: a crc-valid record is never a torn write.
        let (mut bytes, offsets) = log(2);
        let mut last = WriteBatch::new();
        last.delete_id(0, b"k").unwrap();
        last.set_base_sequence(1).unwrap();
        let last_offset = bytes.len() as u64;
        put_record(&mut bytes, last.encoded());
        assert!(offsets[1] < bytes.len());
        match read_all(bytes, RecoveryMode::TolerateTornTail) {
            Err(Error::Corruption { offset, .. }) => assert_eq!(offset, last_offset),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn torn_header() {
        let header = encode_header(3);
        for cut in 0..WAL_HEADER_LEN {
            let (batches, stop, valid) =
                read_all(header[..cut].to_vec(), RecoveryMode::TolerateTornTail).unwrap();
            assert!(batches.is_empty());
            assert_eq!(valid, 0);
            assert_eq!(stop.unwrap().dropped_bytes, cut as u64);
            assert!(read_all(header[..cut].to_vec(), RecoveryMode::Strict).is_err());
        }
    }

    #[test]
    fn prefix_crcs_give_the_crc_of_every_range() {
        let bytes: Vec<u8> = (0..3 * CRC_STRIDE as u32 + 17)
            .map(|i| (i * 7 + i / 5) as u8)
            .collect();
        let crcs = PrefixCrc::new(&bytes);
        for start in (0..bytes.len()).step_by(13) {
            for end in (start..=bytes.len()).step_by(29) {
                assert_eq!(
                    crcs.range(start, end),
                    crate::codec::record::crc32(&bytes[start..end]),
                    "{start}..{end}"
                );
            }
        }
    }

    /// Damage, then a fake record header every 64 bytes, each claiming the rest of the file as
    /// its payload (plausible length, base sequence and count; wrong crc).
    fn crafted_log(size: usize) -> (Vec<u8>, usize) {
        let (mut bytes, _) = log(2);
        let damaged = bytes.len();
        bytes.extend_from_slice(&[0xff; 64]);
        while bytes.len() + 64 <= size {
            let at = bytes.len();
            let len = (size - at - RECORD_HEADER_LEN) as u32;
            let mut fake = [0u8; 64];
            fake[..4].copy_from_slice(&len.to_le_bytes());
            fake[4..8].copy_from_slice(&0x1234_5678u32.to_le_bytes());
            fake[8..16].copy_from_slice(&1000u64.to_le_bytes());
            bytes.extend_from_slice(&fake);
        }
        bytes.resize(size, 0);
        (bytes, damaged)
    }

    #[test]
    fn resync_over_crafted_damage_hashes_each_byte_a_bounded_number_of_times() {
        let size = 1 << 20;
        let (bytes, damaged) = crafted_log(size);
        HASHED.with(|h| h.set(0));
        let (batches, stop, _) = read_all(bytes.clone(), RecoveryMode::TolerateTornTail).unwrap();
        let hashed = HASHED.with(|h| h.get());
        // 16 000 candidates claiming 0.5 MB each on average: hashing each payload again would
        // be 8 * 10^9 bytes. The prefix table hashes the file once, each candidate 2 strides.
        assert!(hashed <= 16 * size as u64, "{hashed} bytes hashed");
        assert_eq!(batches.len(), 2);
        let stop = stop.unwrap();
        assert_eq!(
            (stop.offset, stop.kind),
            (damaged as u64, DamageKind::TornTail)
        );

        // A real record at the end after the same crafted region is still found.
        let (mut bytes, damaged) = crafted_log(size);
        let mut b = WriteBatch::new();
        b.put_id(0, b"synced", b"after the damage").unwrap();
        b.set_base_sequence(2000).unwrap();
        put_record(&mut bytes, b.encoded());
        match read_all(bytes.clone(), RecoveryMode::TolerateTornTail) {
            Err(Error::Corruption { offset, .. }) => assert_eq!(offset, damaged as u64),
            other => panic!("{other:?}"),
        }
        let (_, stop, _) = read_all(bytes, RecoveryMode::StopAtFirstCorruption).unwrap();
        assert_eq!(stop.unwrap().kind, DamageKind::Corruption);
    }

    /// A log of one batch, 16 damaged bytes, then a crc-valid record that is not a batch and
    /// holds another such record, `depth` levels deep.
    fn nested_log(depth: usize) -> (Vec<u8>, usize) {
        let (mut bytes, _) = log(1);
        let damaged = bytes.len();
        bytes.extend_from_slice(&[0xff; 16]);
        let mut payload = Vec::new();
        for _ in 0..depth {
            let mut next = 1000u64.to_le_bytes().to_vec();
            next.extend_from_slice(&1u32.to_le_bytes());
            next.push(9); // tag 9: not a batch
            put_record(&mut next, &payload);
            payload = next;
        }
        put_record(&mut bytes, &payload);
        (bytes, damaged)
    }

    #[test]
    fn crc_valid_payloads_past_the_decode_budget_count_as_valid() {
        // Every level's payload matches its crc and is decoded as a batch (and rejected): about
        // depth^2 * 10 bytes decoded for a file of depth * 21. Up to 4x the file that is done,
        // and nothing valid follows the damage: a torn tail.
        let (bytes, damaged) = nested_log(4);
        let (_, stop, _) = read_all(bytes, RecoveryMode::StopAtFirstCorruption).unwrap();
        let stop = stop.unwrap();
        assert_eq!(
            (stop.offset, stop.kind),
            (damaged as u64, DamageKind::TornTail)
        );
        // Past the budget the next crc-matching record counts as valid: corruption, not dropped.
        let (bytes, damaged) = nested_log(40);
        let (_, stop, _) = read_all(bytes, RecoveryMode::StopAtFirstCorruption).unwrap();
        let stop = stop.unwrap();
        assert_eq!(
            (stop.offset, stop.kind),
            (damaged as u64, DamageKind::Corruption)
        );
    }

    proptest! {
        #[test]
        fn never_panics(tail in proptest::collection::vec(any::<u8>(), 0..120), with_header in any::<bool>()) {
            let mut bytes = if with_header { encode_header(1).to_vec() } else { Vec::new() };
            bytes.extend_from_slice(&tail);
            for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::StopAtFirstCorruption, RecoveryMode::Strict] {
                let _ = read_all(bytes.clone(), mode);
            }
        }

        #[test]
        fn mutated_logs_never_panic(at in any::<prop::sample::Index>(), byte in any::<u8>(),
                                    cut in any::<prop::sample::Index>()) {
            let (mut bytes, _) = log(3);
            let i = at.index(bytes.len());
            bytes[i] = byte;
            bytes.truncate(cut.index(bytes.len() + 1));
            if let Ok((batches, _, valid)) = read_all(bytes.clone(), RecoveryMode::StopAtFirstCorruption) {
                prop_assert!(batches.len() <= 3);
                prop_assert!(valid as usize <= bytes.len());
            }
        }
    }
}
