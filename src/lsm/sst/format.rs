//! Constants and pure encode/decode of the SST layout (FORMAT.md §8): block handles, the
//! properties block, the fixed-size footer. No I/O.
//!
//! A file is `data blocks | filter block | properties block | index block | footer`; the footer
//! locates the three meta blocks, and the index maps each data block's last key to its handle.

use crate::codec::block::{
    BLOCK_TRAILER_LEN, Block, BlockBuilder, Compression, MAX_BLOCK_SIZE, bytewise,
};
use crate::codec::record::crc32;
use crate::codec::varint::{get_varint64, put_varint64};
use crate::error::{Error, Result};
use crate::lsm::format::{MAX_SEQUENCE, TRAILER_LEN};
use crate::lsm::iterator::InternalIterator;

/// Magic number closing every SST file: the bytes `flowSST1` (on disk: never change; FORMAT.md §8).
pub const SST_MAGIC: u64 = u64::from_le_bytes(*b"flowSST1");

/// The SST format version this code writes and reads (FORMAT.md §8).
pub const SST_FORMAT_VERSION: u32 = 1;

/// Bytes of the footer at the end of every SST file.
pub const FOOTER_LEN: usize = 64;

/// Largest stored block a handle may point at: the largest payload plus its trailer and the
/// varint of a compressed block's size.
pub const MAX_STORED_BLOCK_SIZE: u64 = (MAX_BLOCK_SIZE + BLOCK_TRAILER_LEN + 10) as u64;

/// Where a stored block lies in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BlockHandle {
    /// Byte offset of the stored block.
    pub offset: u64,
    /// Size of the stored block, trailer included.
    pub size: u64,
}

impl BlockHandle {
    /// Offset just past the block.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }

    /// Appends `varint offset | varint size` (the value of an index entry).
    pub fn encode_varint(&self, out: &mut Vec<u8>) {
        put_varint64(out, self.offset);
        put_varint64(out, self.size);
    }

    /// Decodes an index entry's value; `file` and `offset` label errors.
    pub fn decode_varint(input: &[u8], file: &str, offset: u64) -> Result<Self> {
        let (block_offset, used) = get_varint64(input, file, offset)?;
        let rest = input.get(used..).unwrap_or_default();
        let (size, used_size) = get_varint64(rest, file, offset)?;
        if used + used_size != input.len() {
            return Err(Error::corruption(
                file,
                offset,
                "trailing bytes after a block handle",
            ));
        }
        Ok(BlockHandle {
            offset: block_offset,
            size,
        })
    }

    /// Checks that the handle is a plausible stored block inside `[start, end)`.
    pub fn check_within(&self, start: u64, end: u64, what: &str, file: &str) -> Result<()> {
        let fits = self.offset >= start
            && self.offset.checked_add(self.size).is_some_and(|e| e <= end)
            && self.size >= BLOCK_TRAILER_LEN as u64
            && self.size <= MAX_STORED_BLOCK_SIZE;
        if fits {
            Ok(())
        } else {
            Err(Error::corruption(
                file,
                self.offset,
                format!(
                    "{what} handle (offset {}, size {}) is outside {start}..{end}",
                    self.offset, self.size
                ),
            ))
        }
    }
}

/// The fixed-size footer (FORMAT.md §8.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Footer {
    /// The index block.
    pub index: BlockHandle,
    /// The filter block.
    pub filter: BlockHandle,
    /// The properties block.
    pub properties: BlockHandle,
}

impl Footer {
    /// The 64 footer bytes.
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut out = Vec::with_capacity(FOOTER_LEN);
        for handle in [self.index, self.filter, self.properties] {
            out.extend_from_slice(&handle.offset.to_le_bytes());
            out.extend_from_slice(&handle.size.to_le_bytes());
        }
        out.extend_from_slice(&SST_FORMAT_VERSION.to_le_bytes());
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&SST_MAGIC.to_le_bytes());
        let mut footer = [0u8; FOOTER_LEN];
        footer.copy_from_slice(&out);
        footer
    }

    /// Decodes the footer found at `offset` of `file`: magic, then crc, then version.
    pub fn decode(bytes: &[u8; FOOTER_LEN], file: &str, offset: u64) -> Result<Self> {
        let u64_at = |pos: usize| {
            bytes
                .get(pos..pos + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes)
        };
        let u32_at = |pos: usize| {
            bytes
                .get(pos..pos + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, u32::from_le_bytes)
        };
        let magic = u64_at(56);
        if magic != SST_MAGIC {
            return Err(Error::corruption(
                file,
                offset + 56,
                format!("bad SST magic {magic:#018x}: not an SST file, or truncated"),
            ));
        }
        let stored_crc = u32_at(52);
        let actual = crc32(bytes.get(..52).unwrap_or_default());
        if stored_crc != actual {
            return Err(Error::corruption(
                file,
                offset + 52,
                format!(
                    "footer crc32 mismatch: stored {stored_crc:#010x}, computed {actual:#010x}"
                ),
            ));
        }
        let version = u32_at(48);
        if version != SST_FORMAT_VERSION {
            return Err(Error::corruption(
                file,
                offset + 48,
                format!(
                    "unsupported SST format version {version} (this build reads {SST_FORMAT_VERSION})"
                ),
            ));
        }
        let handle = |pos: usize| BlockHandle {
            offset: u64_at(pos),
            size: u64_at(pos + 8),
        };
        Ok(Footer {
            index: handle(0),
            filter: handle(16),
            properties: handle(32),
        })
    }
}

/// What a file holds, recorded in its properties block (FORMAT.md §8.4).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SstProperties {
    /// Number of entries (all kinds).
    pub entry_count: u64,
    /// Entries of kind Delete or RangeDelete.
    pub tombstone_count: u64,
    /// Smallest internal key (empty if the file has no entries).
    pub smallest_key: Vec<u8>,
    /// Largest internal key (empty if the file has no entries).
    pub largest_key: Vec<u8>,
    /// Smallest sequence number (0 if the file has no entries).
    pub smallest_seq: u64,
    /// Largest sequence number (0 if the file has no entries).
    pub largest_seq: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub creation_time_ms: u64,
}

/// Property names, sorted bytewise as the block requires (on disk: never change; FORMAT.md §8.4).
const CREATION_TIME: &[u8] = b"creation_time";
const ENTRY_COUNT: &[u8] = b"entry_count";
const LARGEST_KEY: &[u8] = b"largest_key";
const LARGEST_SEQ: &[u8] = b"largest_seq";
const SMALLEST_KEY: &[u8] = b"smallest_key";
const SMALLEST_SEQ: &[u8] = b"smallest_seq";
const TOMBSTONE_COUNT: &[u8] = b"tombstone_count";
/// Every property a reader of version 1 requires.
const REQUIRED: [&[u8]; 7] = [
    CREATION_TIME,
    ENTRY_COUNT,
    LARGEST_KEY,
    LARGEST_SEQ,
    SMALLEST_KEY,
    SMALLEST_SEQ,
    TOMBSTONE_COUNT,
];

impl SstProperties {
    /// The stored properties block.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let varint = |v: u64| {
            let mut out = Vec::new();
            put_varint64(&mut out, v);
            out
        };
        let mut builder = BlockBuilder::new(1, Compression::None);
        builder.add(CREATION_TIME, &varint(self.creation_time_ms))?;
        builder.add(ENTRY_COUNT, &varint(self.entry_count))?;
        builder.add(LARGEST_KEY, &self.largest_key)?;
        builder.add(LARGEST_SEQ, &varint(self.largest_seq))?;
        builder.add(SMALLEST_KEY, &self.smallest_key)?;
        builder.add(SMALLEST_SEQ, &varint(self.smallest_seq))?;
        builder.add(TOMBSTONE_COUNT, &varint(self.tombstone_count))?;
        Ok(builder.finish())
    }

    /// Reads the properties from a decoded properties block; unknown names are skipped, and a
    /// missing required one is corruption.
    pub fn decode(block: std::sync::Arc<Block>) -> Result<Self> {
        let file = block.file().to_string();
        let offset = block.offset();
        let mut props = SstProperties::default();
        let mut seen = 0u8;
        let mut it = block.iter(bytewise);
        it.seek_to_first()?;
        while it.valid() {
            let number = || get_varint64(it.value(), &file, offset).map(|(v, _)| v);
            match it.key() {
                CREATION_TIME => props.creation_time_ms = number()?,
                ENTRY_COUNT => props.entry_count = number()?,
                LARGEST_KEY => props.largest_key = it.value().to_vec(),
                LARGEST_SEQ => props.largest_seq = number()?,
                SMALLEST_KEY => props.smallest_key = it.value().to_vec(),
                SMALLEST_SEQ => props.smallest_seq = number()?,
                TOMBSTONE_COUNT => props.tombstone_count = number()?,
                _ => {}
            }
            if let Some(bit) = REQUIRED.iter().position(|name| *name == it.key()) {
                seen |= 1 << bit;
            }
            it.next()?;
        }
        if seen != (1 << REQUIRED.len()) - 1 {
            return Err(Error::corruption(
                file,
                offset,
                format!("properties block lacks required properties (found mask {seen:#04x})"),
            ));
        }
        Ok(props)
    }
}

/// The internal key that sorts before every version of `user_key` visible at `snapshot_seq`:
/// `user_key | (snapshot_seq << 8 | 0xff) BE`. Seeking to it lands on the newest visible version.
pub fn seek_key(user_key: &[u8], snapshot_seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(user_key.len() + TRAILER_LEN);
    encode_seek_key(&mut key, user_key, snapshot_seq);
    key
}

/// Replaces the contents of `out` with [`seek_key`]`(user_key, snapshot_seq)`.
pub fn encode_seek_key(out: &mut Vec<u8>, user_key: &[u8], snapshot_seq: u64) {
    let trailer = (snapshot_seq.min(MAX_SEQUENCE) << 8) | 0xff;
    out.clear();
    out.extend_from_slice(user_key);
    out.extend_from_slice(&trailer.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn footer_round_trip_and_checks() {
        let footer = Footer {
            index: BlockHandle {
                offset: 300,
                size: 40,
            },
            filter: BlockHandle {
                offset: 200,
                size: 20,
            },
            properties: BlockHandle {
                offset: 220,
                size: 80,
            },
        };
        let bytes = footer.encode();
        assert_eq!(&bytes[56..], b"flowSST1");
        assert_eq!(Footer::decode(&bytes, "f", 0).unwrap(), footer);
        for pos in 0..FOOTER_LEN {
            let mut bad = bytes;
            bad[pos] ^= 0x10;
            assert!(
                Footer::decode(&bad, "f", 0).unwrap_err().is_corruption(),
                "byte {pos}"
            );
        }
    }

    #[test]
    fn properties_round_trip() {
        let props = SstProperties {
            entry_count: 9,
            tombstone_count: 2,
            smallest_key: b"a\0\0\0\0\0\0\x01\x01".to_vec(),
            largest_key: b"z\0\0\0\0\0\0\x09\x01".to_vec(),
            smallest_seq: 1,
            largest_seq: 9,
            creation_time_ms: 1_700_000_000_000,
        };
        let block = Block::decode(&props.encode().unwrap(), "f", 0).unwrap();
        assert_eq!(SstProperties::decode(Arc::new(block)).unwrap(), props);
    }

    #[test]
    fn handle_rejects_trailing_bytes() {
        let mut buf = Vec::new();
        BlockHandle { offset: 5, size: 6 }.encode_varint(&mut buf);
        assert!(BlockHandle::decode_varint(&buf, "f", 0).is_ok());
        buf.push(0);
        assert!(BlockHandle::decode_varint(&buf, "f", 0).is_err());
    }
}
