//! Write-ahead log (FORMAT.md §7): a file header, then one framed record (§1.2) per write batch.
//!
//! This module holds the on-disk constants, the file naming and the header codec shared by
//! [`writer`] and [`reader`]; the invariant both keep is that a log's batches carry strictly
//! increasing sequence numbers, so recovery replays them in commit order.

pub mod reader;
pub mod writer;

pub use reader::{RecoveryMode, WalReader, WalRecovery};
pub use writer::{SyncMode, WalWriter};

use crate::codec::record::crc32;
use crate::error::{Error, Result};

/// Magic number at offset 0 of every WAL file: the bytes `"fstatWAL"` read as a u64 LE
/// (on disk: never change; FORMAT.md §7.2).
pub const WAL_MAGIC: u64 = u64::from_le_bytes(*b"fstatWAL");

/// The WAL format version this code writes and the highest it reads (FORMAT.md §7.2).
pub const WAL_FORMAT_VERSION: u32 = 1;

/// Bytes of the WAL file header: magic u64, version u32, log number u64, crc32 u32 (all LE).
pub const WAL_HEADER_LEN: usize = 24;

/// Suffix of WAL file names (FORMAT.md §7.1).
pub const WAL_FILE_SUFFIX: &str = ".wal";

/// The file name of log `log_number`: at least six decimal digits, then `.wal` (`000042.wal`).
pub fn wal_file_name(log_number: u64) -> String {
    format!("{log_number:06}{WAL_FILE_SUFFIX}")
}

/// The log number of a WAL file name, or `None` if `name` is not one.
pub fn parse_wal_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(WAL_FILE_SUFFIX)?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header of log `log_number` (FORMAT.md §7.2).
pub fn encode_header(log_number: u64) -> [u8; WAL_HEADER_LEN] {
    let mut header = [0u8; WAL_HEADER_LEN];
    header[0..8].copy_from_slice(&WAL_MAGIC.to_le_bytes());
    header[8..12].copy_from_slice(&WAL_FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&log_number.to_le_bytes());
    let crc = crc32(&header[..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

/// What the first bytes of a WAL file hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeaderState {
    /// A valid header of this log number.
    Valid(u64),
    /// The file ends inside the header, or the header and everything after it are zero bytes:
    /// the crash came while the log was being created.
    Torn,
}

/// Decodes the header at the front of `bytes` (the whole file); `file` labels errors.
pub(crate) fn decode_header(bytes: &[u8], file: &str) -> Result<HeaderState> {
    let Some(header) = bytes.first_chunk::<WAL_HEADER_LEN>() else {
        return Ok(HeaderState::Torn);
    };
    if bytes.iter().all(|&b| b == 0) {
        return Ok(HeaderState::Torn);
    }
    let u64_at = |at: usize| {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(raw)
    };
    let u32_at = |at: usize| {
        let mut raw = [0u8; 4];
        raw.copy_from_slice(&header[at..at + 4]);
        u32::from_le_bytes(raw)
    };
    let magic = u64_at(0);
    if magic != WAL_MAGIC {
        return Err(Error::corruption(
            file,
            0,
            format!("bad WAL magic {magic:#018x}, expected {WAL_MAGIC:#018x}"),
        ));
    }
    let stored_crc = u32_at(20);
    let actual_crc = crc32(&header[..20]);
    if stored_crc != actual_crc {
        return Err(Error::corruption(
            file,
            20,
            format!(
                "WAL header crc32 mismatch: stored {stored_crc:#010x}, computed {actual_crc:#010x}"
            ),
        ));
    }
    let version = u32_at(8);
    if version == 0 || version > WAL_FORMAT_VERSION {
        return Err(Error::corruption(
            file,
            8,
            format!(
                "unsupported WAL format version {version} (this build reads 1..={WAL_FORMAT_VERSION})"
            ),
        ));
    }
    Ok(HeaderState::Valid(u64_at(12)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(wal_file_name(42), "000042.wal");
        assert_eq!(wal_file_name(12_345_678), "12345678.wal");
        assert_eq!(parse_wal_file_name("000042.wal"), Some(42));
        assert_eq!(parse_wal_file_name("12345678.wal"), Some(12_345_678));
        assert_eq!(parse_wal_file_name("42.wal"), None);
        assert_eq!(parse_wal_file_name("000042.sst"), None);
        assert_eq!(parse_wal_file_name("+00042.wal"), None);
    }

    #[test]
    fn header_round_trip_and_rejections() {
        let h = encode_header(7);
        assert_eq!(&h[..8], b"fstatWAL");
        assert_eq!(decode_header(&h, "f").unwrap(), HeaderState::Valid(7));
        assert_eq!(decode_header(&h[..23], "f").unwrap(), HeaderState::Torn);
        assert_eq!(decode_header(&[0; 40], "f").unwrap(), HeaderState::Torn);
        let mut bad = h;
        bad[0] ^= 1;
        assert!(matches!(
            decode_header(&bad, "f"),
            Err(Error::Corruption { offset: 0, .. })
        ));
        let mut bad = h;
        bad[13] ^= 1;
        assert!(matches!(
            decode_header(&bad, "f"),
            Err(Error::Corruption { offset: 20, .. })
        ));
        let mut future = h;
        future[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32(&future[..20]);
        future[20..24].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_header(&future, "f"),
            Err(Error::Corruption { offset: 8, .. })
        ));
    }
}
