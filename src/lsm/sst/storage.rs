//! [`Storage`]: where an open SST's bytes come from — a memory map (or bytes held in memory), or
//! the file itself read with positioned reads (`pread`, like RocksDB without `allow_mmap_reads`).
//!
//! Mapped blocks borrow from the map, so every page a read touches counts in the process's RSS;
//! read blocks are copied into buffers the block cache owns, and only the kernel's page cache
//! (which RSS does not count) holds file pages.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use crate::codec::block::{Block, SharedBytes};
#[cfg(test)]
use crate::codec::record::crc32;
use crate::error::{Error, Result};
use crate::fs::ReadableFile;
use crate::lsm::sst::format::BlockHandle;

/// A thread's read buffer is dropped after a read that grew it past this (an unusually large
/// block), so that idle threads do not hold on to it.
const MAX_KEPT_READ_BUFFER: usize = 256 << 10;

thread_local! {
    /// The buffer a thread reads stored blocks into before decoding them.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Bytes read at a time when checksumming a whole file through `pread`.
#[cfg(test)]
const CHECKSUM_CHUNK: usize = 1 << 20;

/// The bytes of one open SST.
pub(crate) enum Storage {
    /// The whole file in memory: a map, or bytes given to `SstReader::from_bytes`.
    Mapped(SharedBytes),
    /// An open file of `len` bytes, read with positioned reads.
    File {
        /// The open file.
        file: Arc<dyn ReadableFile>,
        /// Its length when opened (SSTs never change once published).
        len: u64,
        /// Its path, for I/O errors.
        path: Arc<Path>,
    },
}

impl Storage {
    /// The file's length.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Storage::Mapped(map) => (**map).as_ref().len() as u64,
            Storage::File { len, .. } => *len,
        }
    }

    /// The `len` bytes at `offset`, which the caller checked lie within the file.
    pub(crate) fn read(&self, offset: u64, len: usize, label: &str) -> Result<Cow<'_, [u8]>> {
        match self {
            Storage::Mapped(map) => {
                let bytes: &[u8] = (**map).as_ref();
                usize::try_from(offset)
                    .ok()
                    .and_then(|start| bytes.get(start..start.checked_add(len)?))
                    .map(Cow::Borrowed)
                    .ok_or_else(|| out_of_range(label, offset, len, bytes.len() as u64))
            }
            Storage::File {
                file,
                len: size,
                path,
            } => {
                let end = offset.checked_add(len as u64);
                if end.is_none_or(|end| end > *size) {
                    return Err(out_of_range(label, offset, len, *size));
                }
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, offset)
                    .map_err(|e| Error::io(&**path, e))?;
                Ok(Cow::Owned(buf))
            }
        }
    }

    /// Decodes the stored block at `handle` (checked to lie within the file by the caller): a
    /// mapped uncompressed payload is borrowed from the map, a read one owns its buffer.
    pub(crate) fn decode_block(&self, handle: BlockHandle, label: &Arc<str>) -> Result<Block> {
        match self {
            Storage::Mapped(map) => {
                let (start, end) = (handle.offset as usize, handle.end() as usize);
                Block::decode_shared(
                    Arc::clone(map),
                    start,
                    end,
                    Arc::clone(label),
                    handle.offset,
                )
            }
            Storage::File {
                file,
                len: size,
                path,
            } => {
                let len = handle.size as usize;
                if handle.end() > *size {
                    return Err(out_of_range(label, handle.offset, len, *size));
                }
                READ_BUFFER.with_borrow_mut(|buf| {
                    // The block is read into this thread's buffer and copied (or decompressed)
                    // once into the block's own payload: no allocation per read but that one.
                    // Only bytes the buffer never had are zeroed; `read_exact_at` overwrites
                    // the rest.
                    if buf.len() < len {
                        buf.resize(len, 0);
                    }
                    let stored = buf.get_mut(..len).unwrap_or_default();
                    file.read_exact_at(stored, handle.offset)
                        .map_err(|e| Error::io(&**path, e))?;
                    let block = Block::decode_copied(stored, Arc::clone(label), handle.offset);
                    if buf.capacity() > MAX_KEPT_READ_BUFFER {
                        *buf = Vec::new();
                    }
                    block
                })
            }
        }
    }

    /// CRC-32 of the whole file.
    #[cfg(test)]
    pub(crate) fn crc32(&self, label: &str) -> Result<u32> {
        match self {
            Storage::Mapped(map) => Ok(crc32((**map).as_ref())),
            Storage::File { len, .. } => {
                let mut hasher = crc32fast::Hasher::new();
                let mut offset = 0u64;
                while offset < *len {
                    let chunk = (*len - offset).min(CHECKSUM_CHUNK as u64) as usize;
                    hasher.update(&self.read(offset, chunk, label)?);
                    offset += chunk as u64;
                }
                Ok(hasher.finalize())
            }
        }
    }
}

fn out_of_range(label: &str, offset: u64, len: usize, size: u64) -> Error {
    Error::corruption(
        label,
        offset,
        format!("{len} bytes at {offset} run past the end of the {size}-byte file"),
    )
}
