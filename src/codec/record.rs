//! crc32-framed records (FORMAT.md §1.2): `length u32 LE | crc32 u32 LE | payload`.
//!
//! The unit of every append-only file (WAL, manifest, snapshot files). `crc32` is CRC-32/IEEE
//! (`crc32fast`) of the payload only. A decoder checks the length against the bytes left before
//! slicing, so a corrupt length can never size an allocation.

use crate::error::{Error, Result};

/// Bytes of a record header: length (u32 LE) then crc32 (u32 LE).
pub const RECORD_HEADER_LEN: usize = 8;

/// Largest payload a record may carry (on disk: never change; FORMAT.md §1.2).
pub const MAX_RECORD_LEN: u32 = 1 << 30;

/// CRC-32 (IEEE 802.3 polynomial, reflected, as computed by `crc32fast`) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Appends one framed record holding `payload` to `out`.
///
/// Panics if `payload` is longer than [`MAX_RECORD_LEN`] (a programming error: callers bound
/// what they frame).
pub fn put_record(out: &mut Vec<u8>, payload: &[u8]) {
    assert!(
        payload.len() <= MAX_RECORD_LEN as usize,
        "record payload of {} bytes exceeds MAX_RECORD_LEN",
        payload.len()
    );
    out.reserve(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Why a record could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordError {
    /// The input ends inside the header or payload (a torn write at the end of a log).
    Truncated,
    /// The header or checksum is wrong.
    Corrupt(String),
}

/// Reads one record from the front of `input`; returns the payload and the bytes consumed.
///
/// Distinguishes a truncated tail ([`RecordError::Truncated`]) from corruption, which log
/// readers treat differently (FORMAT.md §1.2).
pub fn read_record(input: &[u8]) -> std::result::Result<(&[u8], usize), RecordError> {
    let Some((header, rest)) = input.split_first_chunk::<RECORD_HEADER_LEN>() else {
        return Err(RecordError::Truncated);
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_RECORD_LEN {
        return Err(RecordError::Corrupt(format!(
            "record length {len} exceeds the maximum {MAX_RECORD_LEN}"
        )));
    }
    let Some(payload) = rest.get(..len as usize) else {
        return Err(RecordError::Truncated);
    };
    let actual = crc32(payload);
    if actual != crc {
        return Err(RecordError::Corrupt(format!(
            "record crc32 mismatch: stored {crc:#010x}, computed {actual:#010x}"
        )));
    }
    Ok((payload, RECORD_HEADER_LEN + len as usize))
}

/// Whether a record that seems to run past the end of the input is in fact complete with a
/// damaged length field: the bytes after its header, taken whole as the payload, match its
/// crc32. A torn append leaves only a prefix of the payload, whose crc matches with probability
/// 2^-32, so log readers treat a match as corruption rather than a torn tail (FORMAT.md §1.2).
pub fn length_damaged(rest: &[u8]) -> bool {
    match rest.split_first_chunk::<RECORD_HEADER_LEN>() {
        Some((header, payload)) => {
            let stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            crc32(payload) == stored
        }
        None => false,
    }
}

/// Reads one record that must be complete; any failure is [`Error::Corruption`] at `offset`.
pub fn decode_record<'a>(input: &'a [u8], file: &str, offset: u64) -> Result<(&'a [u8], usize)> {
    read_record(input).map_err(|e| match e {
        RecordError::Truncated => Error::corruption(file, offset, "truncated record"),
        RecordError::Corrupt(what) => Error::corruption(file, offset, what),
    })
}

/// Splits `input` into the payloads of consecutive complete records (a whole file of records).
pub fn decode_records<'a>(input: &'a [u8], file: &str) -> Result<Vec<&'a [u8]>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < input.len() {
        let (payload, used) =
            decode_record(input.get(pos..).unwrap_or_default(), file, pos as u64)?;
        out.push(payload);
        pos += used;
    }
    Ok(out)
}

/// Reads framed records one at a time from a stream, bounding each payload by `max_len`.
///
/// For files too large to hold in memory (savepoints). Offsets in errors are stream positions.
#[derive(Debug)]
pub struct RecordReader<R> {
    inner: R,
    file: String,
    offset: u64,
    max_len: u32,
    buf: Vec<u8>,
}

impl<R: std::io::Read> RecordReader<R> {
    /// A reader of `inner` (named `file` in errors) accepting payloads up to `max_len` bytes.
    pub fn new(inner: R, file: impl Into<String>, max_len: u32) -> Self {
        RecordReader {
            inner,
            file: file.into(),
            offset: 0,
            max_len: max_len.min(MAX_RECORD_LEN),
            buf: Vec::new(),
        }
    }

    /// Stream position of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next payload, or `None` at a clean end of stream (between records). A stream that ends
    /// inside a record is corruption.
    pub fn next_record(&mut self) -> Result<Option<&[u8]>> {
        let at = self.offset;
        let mut header = [0u8; RECORD_HEADER_LEN];
        let got = read_full(&mut self.inner, &mut header, &self.file)?;
        if got == 0 {
            return Ok(None);
        }
        if got < RECORD_HEADER_LEN {
            return Err(Error::corruption(
                &self.file,
                at,
                "stream ends inside a record header",
            ));
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > self.max_len {
            return Err(Error::corruption(
                &self.file,
                at,
                format!("record length {len} exceeds the limit {}", self.max_len),
            ));
        }
        self.buf.resize(len as usize, 0);
        if read_full(&mut self.inner, &mut self.buf, &self.file)? < len as usize {
            return Err(Error::corruption(
                &self.file,
                at,
                "stream ends inside a record payload",
            ));
        }
        let actual = crc32(&self.buf);
        if actual != crc {
            return Err(Error::corruption(
                &self.file,
                at,
                format!("record crc32 mismatch: stored {crc:#010x}, computed {actual:#010x}"),
            ));
        }
        self.offset += (RECORD_HEADER_LEN + self.buf.len()) as u64;
        Ok(Some(&self.buf))
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(reader: &mut impl std::io::Read, buf: &mut [u8], file: &str) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(file, e)),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc32_is_ieee() {
        // The check value of CRC-32/ISO-HDLC (IEEE 802.3).
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn truncation_and_corruption_are_told_apart() {
        let mut buf = Vec::new();
        put_record(&mut buf, b"hello");
        for cut in 0..buf.len() {
            assert_eq!(
                read_record(&buf[..cut]),
                Err(RecordError::Truncated),
                "cut {cut}"
            );
        }
        let mut bad = buf.clone();
        bad[RECORD_HEADER_LEN] ^= 1;
        assert!(matches!(read_record(&bad), Err(RecordError::Corrupt(_))));
        let mut huge = buf.clone();
        huge[3] = 0xff;
        assert!(matches!(read_record(&huge), Err(RecordError::Corrupt(_))));
        let mut long = buf.clone();
        long[1] = 1; // The length now says 261 bytes, but the whole 5-byte record is there.
        assert_eq!(read_record(&long), Err(RecordError::Truncated));
        assert!(length_damaged(&long));
        assert!(!length_damaged(&buf[..buf.len() - 1]), "a real torn append");
        let err = decode_records(&[buf.as_slice(), &bad].concat(), "f").unwrap_err();
        match err {
            Error::Corruption { offset, .. } => assert_eq!(offset, buf.len() as u64),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn stream_reader_bounds_and_detects_truncation() {
        let mut buf = Vec::new();
        put_record(&mut buf, b"one");
        put_record(&mut buf, &[7u8; 100]);
        let mut r = RecordReader::new(buf.as_slice(), "s", 1000);
        assert_eq!(r.next_record().unwrap(), Some(&b"one"[..]));
        assert_eq!(r.next_record().unwrap().map(<[u8]>::len), Some(100));
        assert_eq!(r.next_record().unwrap(), None);
        let mut small = RecordReader::new(buf.as_slice(), "s", 50);
        small.next_record().unwrap();
        assert!(small.next_record().unwrap_err().is_corruption());
        for cut in 1..buf.len() {
            let mut r = RecordReader::new(&buf[..cut], "s", 1000);
            let outcome = (|| -> Result<()> {
                while r.next_record()?.is_some() {}
                Ok(())
            })();
            let boundary = cut == RECORD_HEADER_LEN + 3;
            assert_eq!(outcome.is_ok(), boundary, "cut {cut}");
        }
    }

    proptest! {
        #[test]
        fn round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut buf = Vec::new();
            for p in &payloads {
                put_record(&mut buf, p);
            }
            let decoded = decode_records(&buf, "t").unwrap();
            prop_assert_eq!(decoded, payloads.iter().map(Vec::as_slice).collect::<Vec<_>>());
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_records(&bytes, "t");
        }
    }
}
