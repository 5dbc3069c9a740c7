//! Block format (FORMAT.md §1.3): sorted entries with shared-prefix compression and restart
//! points, optionally zstd- or LZ4-compressed, sealed by a type byte and a crc32.
//!
//! [`BlockBuilder`] writes blocks; [`Block::decode`] checks the crc, decompresses into at most
//! [`MAX_BLOCK_SIZE`] bytes (never more than the block declares) and validates the restart array
//! before any entry is read; [`BlockIter`] walks the entries and reports damaged ones as errors.

use std::borrow::Cow;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::sync::Arc;

use crate::codec::record::crc32;
use crate::codec::varint::{get_varint64, put_varint32, put_varint64};
use crate::error::{Error, Result};

pub use super::block_iter::BlockIter;

/// Largest uncompressed payload a block may have (on disk: never change; FORMAT.md §1.3).
///
/// Decoders refuse larger blocks before allocating, so no block costs more memory than this.
pub const MAX_BLOCK_SIZE: usize = 64 << 20;

/// Bytes after the payload of a stored block: compression type (u8) then crc32 (u32 LE).
pub const BLOCK_TRAILER_LEN: usize = 5;

/// Default number of entries between restart points.
pub const DEFAULT_RESTART_INTERVAL: usize = 16;

/// Compression type byte of an uncompressed block (on disk: never change; FORMAT.md §1.3).
const TYPE_NONE: u8 = 0;
/// Compression type byte of a zstd block (on disk: never change; FORMAT.md §1.3).
const TYPE_ZSTD: u8 = 1;
/// Compression type byte of an LZ4 block (on disk: never change; FORMAT.md §1.3).
const TYPE_LZ4: u8 = 2;

/// Orders the keys of a block: [`bytewise`] for snapshot files, `lsm::format::compare_internal`
/// for SST files.
pub type Comparator = fn(&[u8], &[u8]) -> Ordering;

/// Plain lexicographic byte order.
pub fn bytewise(a: &[u8], b: &[u8]) -> Ordering {
    a.cmp(b)
}

/// How a block's payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// Stored as is.
    #[default]
    None,
    /// zstd at the given level; a block that does not shrink by at least 1/8 is stored as is.
    Zstd {
        /// zstd compression level (1..=22; 3 is zstd's default).
        level: i32,
    },
    /// LZ4 (the raw block format, no frame): several times faster than zstd to compress and
    /// to decompress, with a lower ratio; a block that does not shrink by at least 1/8 is
    /// stored as is.
    Lz4,
}

/// Bytes a decoded block may borrow instead of copying, such as the memory map of an immutable
/// SST file. The block keeps its owner alive.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Returns `payload` as a stored block: `data | type u8 | crc32 u32 LE` (FORMAT.md §1.3).
///
/// With [`Compression::Zstd`] (or [`Compression::Lz4`]), `data` is
/// `varint uncompressed_len | zstd frame` (or `| LZ4 block`) when that saves at least an eighth
/// of the payload; otherwise the payload is stored uncompressed.
pub fn seal(payload: &[u8], compression: Compression) -> Vec<u8> {
    let mut out = Vec::new();
    seal_into(payload, compression, &mut out);
    out
}

/// [`seal`] into `out` (cleared first, its allocation reused); returns whether the block was
/// stored compressed.
pub fn seal_into(payload: &[u8], compression: Compression, out: &mut Vec<u8>) -> bool {
    assert!(
        payload.len() <= MAX_BLOCK_SIZE,
        "block payload of {} bytes exceeds MAX_BLOCK_SIZE",
        payload.len()
    );
    out.clear();
    let mut kind = match compression {
        Compression::None => TYPE_NONE,
        Compression::Zstd { .. } => TYPE_ZSTD,
        Compression::Lz4 => TYPE_LZ4,
    };
    if kind != TYPE_NONE {
        put_varint64(out, payload.len() as u64);
        let compressed = match compression {
            Compression::Zstd { level } => zstd_compress_into(payload, level, out).is_ok(),
            Compression::Lz4 => lz4_compress_into(payload, out),
            Compression::None => false,
        };
        // Worth it only when it saves at least an eighth of the payload.
        if !compressed || out.len() >= payload.len() - payload.len() / 8 {
            out.clear();
            kind = TYPE_NONE;
        }
    }
    if kind == TYPE_NONE {
        out.reserve(payload.len() + BLOCK_TRAILER_LEN);
        out.extend_from_slice(payload);
    }
    out.push(kind);
    let crc = crc32(out);
    out.extend_from_slice(&crc.to_le_bytes());
    kind != TYPE_NONE
}

/// Appends one LZ4 block of `payload` to `out`; false if the encoder failed.
fn lz4_compress_into(payload: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    out.resize(
        start + lz4_flex::block::get_maximum_output_size(payload.len()),
        0,
    );
    match lz4_flex::block::compress_into(payload, &mut out[start..]) {
        Ok(written) => {
            out.truncate(start + written);
            true
        }
        Err(_) => false,
    }
}

thread_local! {
    /// One zstd decompression context per thread: creating one per block would dominate the cost
    /// of decoding small blocks.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
    /// One zstd compression context per thread and level, for the same reason (a fresh context
    /// per 4 KiB block was ~4% of a fill's CPU time); the frames are the same bytes.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
}

/// Appends one zstd frame of `payload` at `level` to `out`, reusing this thread's context.
fn zstd_compress_into(payload: &[u8], level: i32, out: &mut Vec<u8>) -> std::io::Result<usize> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match slot.as_mut() {
            Some((current, c)) if *current == level => c,
            _ => &mut slot.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        let start = out.len();
        out.reserve(zstd::zstd_safe::compress_bound(payload.len()));
        let mut tail = std::io::Cursor::new(out);
        tail.set_position(start as u64);
        compressor.compress_to_buffer(payload, &mut tail)
    })
}

/// Decompresses `frame`, which must expand to exactly `declared` bytes (at most MAX_BLOCK_SIZE).
fn zstd_decompress(frame: &[u8], declared: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        // `decompress` allocates exactly `declared` bytes and fails if the frame is larger.
        decompressor.decompress(frame, declared)
    })
}

/// Checks a stored block's trailer and returns its payload, decompressed if needed.
///
/// `file` and `offset` (the block's position in the file) label errors; every failure is
/// [`Error::Corruption`].
pub fn unseal<'a>(stored: &'a [u8], file: &str, offset: u64) -> Result<Cow<'a, [u8]>> {
    let corrupt = |what: String| Error::corruption(file, offset, what);
    let Some((covered, crc)) = stored.split_last_chunk::<4>() else {
        return Err(corrupt(format!(
            "block of {} bytes has no trailer",
            stored.len()
        )));
    };
    let Some((&kind, data)) = covered.split_last() else {
        return Err(corrupt(format!(
            "block of {} bytes has no trailer",
            stored.len()
        )));
    };
    let stored_crc = u32::from_le_bytes(*crc);
    let actual = crc32(covered);
    if stored_crc != actual {
        return Err(corrupt(format!(
            "block crc32 mismatch: stored {stored_crc:#010x}, computed {actual:#010x}"
        )));
    }
    match kind {
        TYPE_NONE if data.len() > MAX_BLOCK_SIZE => Err(corrupt(format!(
            "block payload of {} bytes exceeds the maximum {MAX_BLOCK_SIZE}",
            data.len()
        ))),
        TYPE_NONE => Ok(Cow::Borrowed(data)),
        TYPE_ZSTD | TYPE_LZ4 => {
            let (declared, used) = get_varint64(data, file, offset)?;
            if declared > MAX_BLOCK_SIZE as u64 {
                return Err(corrupt(format!(
                    "block declares {declared} uncompressed bytes, more than the maximum \
                     {MAX_BLOCK_SIZE}"
                )));
            }
            let compressed = data.get(used..).unwrap_or_default();
            let (name, out) = if kind == TYPE_ZSTD {
                let out = zstd_decompress(compressed, declared as usize)
                    .map_err(|e| corrupt(format!("zstd block does not decompress: {e}")))?;
                ("zstd", out)
            } else {
                let mut out = vec![0; declared as usize];
                let written = lz4_flex::block::decompress_into(compressed, &mut out)
                    .map_err(|e| corrupt(format!("LZ4 block does not decompress: {e}")))?;
                out.truncate(written);
                ("LZ4", out)
            };
            if out.len() as u64 != declared {
                return Err(corrupt(format!(
                    "{name} block decompressed to {} bytes, declared {declared}",
                    out.len()
                )));
            }
            Ok(Cow::Owned(out))
        }
        other => Err(corrupt(format!("unknown block compression type {other}"))),
    }
}

/// Accumulates sorted entries into one block.
///
/// Keys must be added in strictly increasing order of the comparator the block will be read
/// with; the builder does not compare keys (its callers do, with the right comparator).
#[derive(Debug)]
pub struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    since_restart: usize,
    restart_interval: usize,
    compression: Compression,
    last_key: Vec<u8>,
    entries: usize,
    /// Blocks in a row that zstd did not shrink by an eighth (saturates at `SKIP_AFTER`).
    incompressible_run: u32,
    /// Blocks still to store uncompressed without trying zstd.
    skip_remaining: u32,
    /// Length of the next skip: `SKIP_BLOCKS`, doubled by every probe that fails, up to
    /// `MAX_SKIP_BLOCKS`; back to `SKIP_BLOCKS` when a block compresses.
    next_skip: u32,
}

/// After this many blocks in a row that do not compress, a builder stops trying zstd...
const SKIP_AFTER: u32 = 8;
/// ...for this many blocks, then probes one again (data such as random values never
/// compresses, and the attempt was most of a flush's CPU time)...
const SKIP_BLOCKS: u32 = 32;
/// ...and each probe that fails doubles the skip, up to this many blocks (2 MiB of 4 KiB
/// blocks): a 64 MiB flush of random values then makes ~30 zstd attempts instead of ~290.
const MAX_SKIP_BLOCKS: u32 = 512;

impl BlockBuilder {
    /// A builder with a restart point every `restart_interval` entries (at least 1).
    pub fn new(restart_interval: usize, compression: Compression) -> Self {
        BlockBuilder {
            buf: Vec::new(),
            restarts: Vec::new(),
            since_restart: 0,
            restart_interval: restart_interval.max(1),
            compression,
            last_key: Vec::new(),
            entries: 0,
            incompressible_run: 0,
            skip_remaining: 0,
            next_skip: SKIP_BLOCKS,
        }
    }

    /// Appends an entry. Fails with [`Error::LimitExceeded`] if the block would exceed
    /// [`MAX_BLOCK_SIZE`]; the builder is unchanged then.
    pub fn add(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let restart = self.entries == 0 || self.since_restart >= self.restart_interval;
        let shared = if restart {
            0
        } else {
            shared_prefix_len(&self.last_key, key)
        };
        let unshared = key.len() - shared;
        let grows = 3 * 10 + unshared + value.len() + if restart { 4 } else { 0 };
        if self.estimated_size() - BLOCK_TRAILER_LEN + grows > MAX_BLOCK_SIZE {
            return Err(Error::limit_exceeded(format!(
                "entry with a {}-byte key and a {}-byte value does not fit in a block of at \
                 most {MAX_BLOCK_SIZE} bytes",
                key.len(),
                value.len()
            )));
        }
        if restart {
            self.restarts.push(self.buf.len() as u32);
            self.since_restart = 0;
        }
        self.buf.reserve(3 * 5 + unshared + value.len());
        if shared < 0x80 && unshared < 0x80 && value.len() < 0x80 {
            // The common case (short keys and values): three one-byte varints.
            self.buf
                .extend_from_slice(&[shared as u8, unshared as u8, value.len() as u8]);
        } else {
            put_varint32(&mut self.buf, shared as u32);
            put_varint32(&mut self.buf, unshared as u32);
            put_varint32(&mut self.buf, value.len() as u32);
        }
        self.buf.extend_from_slice(&key[shared..]);
        self.buf.extend_from_slice(value);
        self.last_key.truncate(shared);
        self.last_key.extend_from_slice(&key[shared..]);
        self.since_restart += 1;
        self.entries += 1;
        Ok(())
    }

    /// Stored size of the block if it were finished now, before compression.
    pub fn estimated_size(&self) -> usize {
        self.buf.len() + 4 * self.restarts.len() + 4 + BLOCK_TRAILER_LEN
    }

    /// Number of entries added since the last [`finish`](Self::finish).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether no entry was added since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Returns the stored block and resets the builder for the next block.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.finish_into(&mut out);
        out
    }

    /// Writes the stored block into `out` (cleared first, its allocation reused) and resets the
    /// builder for the next block.
    ///
    /// Compression is adaptive: after `SKIP_AFTER` (8) blocks in a row that zstd did not shrink
    /// by an eighth, the next `SKIP_BLOCKS` (32) are stored uncompressed without trying, then
    /// one is tried again; each such probe that fails doubles the next skip (up to
    /// `MAX_SKIP_BLOCKS`, 512), one that succeeds ends the skipping. Either way each block is a
    /// valid block of FORMAT.md §1.3.
    pub fn finish_into(&mut self, out: &mut Vec<u8>) {
        for restart in &self.restarts {
            self.buf.extend_from_slice(&restart.to_le_bytes());
        }
        self.buf
            .extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        let compression = if self.skip_remaining > 0 {
            self.skip_remaining -= 1;
            Compression::None
        } else {
            self.compression
        };
        let compressed = seal_into(&self.buf, compression, out);
        if compression != Compression::None {
            if compressed {
                self.incompressible_run = 0;
                self.next_skip = SKIP_BLOCKS;
            } else {
                self.incompressible_run = (self.incompressible_run + 1).min(SKIP_AFTER);
                if self.incompressible_run >= SKIP_AFTER {
                    self.skip_remaining = self.next_skip;
                    self.next_skip = (self.next_skip * 2).min(MAX_SKIP_BLOCKS);
                }
            }
        }
        self.buf.clear();
        self.restarts.clear();
        self.last_key.clear();
        self.since_restart = 0;
        self.entries = 0;
    }
}

/// Length of the longest common prefix of `a` and `b`, compared 8 bytes at a time.
fn shared_prefix_len(a: &[u8], b: &[u8]) -> usize {
    let mut shared = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let word = |c: &[u8]| <[u8; 8]>::try_from(c).map_or(0, u64::from_le_bytes);
        let diff = word(x) ^ word(y);
        if diff != 0 {
            // Little-endian: the first differing byte holds the lowest set bit.
            return shared + (diff.trailing_zeros() / 8) as usize;
        }
        shared += 8;
    }
    let tail = a.get(shared..).unwrap_or_default();
    let other = b.get(shared..).unwrap_or_default();
    shared + tail.iter().zip(other).take_while(|(x, y)| x == y).count()
}

/// Where a decoded payload lives.
enum Contents {
    Owned(Box<[u8]>),
    Shared {
        owner: SharedBytes,
        start: usize,
        end: usize,
    },
}

/// A decoded, validated block: its payload and restart array, ready to iterate.
pub struct Block {
    contents: Contents,
    /// End of the entries = start of the restart array.
    restarts_offset: usize,
    num_restarts: usize,
    file: Arc<str>,
    offset: u64,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("file", &self.file)
            .field("offset", &self.offset)
            .field("payload_len", &self.payload().len())
            .field("num_restarts", &self.num_restarts)
            .finish()
    }
}

impl Block {
    /// Decodes a stored block read from `file` at byte `offset` (both only label errors).
    pub fn decode(stored: &[u8], file: &str, offset: u64) -> Result<Block> {
        Block::decode_copied(stored, Arc::from(file), offset)
    }

    /// Decodes a stored block into a payload the block owns: an uncompressed payload is copied
    /// once, a compressed one is decompressed straight into its own exact-size buffer (so
    /// `stored` can be a reused read buffer).
    pub fn decode_copied(stored: &[u8], file: Arc<str>, offset: u64) -> Result<Block> {
        let payload: Box<[u8]> = match unseal(stored, &file, offset)? {
            Cow::Borrowed(payload) => Box::from(payload),
            Cow::Owned(payload) => payload.into_boxed_slice(),
        };
        Block::from_contents(Contents::Owned(payload), file, offset)
    }

    /// Decodes the stored block at `owner[start..end]`; an uncompressed payload is borrowed
    /// from `owner` (kept alive by the block) instead of copied.
    pub fn decode_shared(
        owner: SharedBytes,
        start: usize,
        end: usize,
        file: Arc<str>,
        offset: u64,
    ) -> Result<Block> {
        let bytes: &[u8] = (*owner).as_ref();
        let stored = bytes.get(start..end).ok_or_else(|| {
            Error::corruption(
                &*file,
                offset,
                format!(
                    "block range {start}..{end} is outside the {} bytes",
                    bytes.len()
                ),
            )
        })?;
        let contents = match unseal(stored, &file, offset)? {
            Cow::Borrowed(payload) => {
                let end = start + payload.len();
                Contents::Shared { owner, start, end }
            }
            Cow::Owned(payload) => Contents::Owned(payload.into_boxed_slice()),
        };
        Block::from_contents(contents, file, offset)
    }

    fn from_contents(contents: Contents, file: Arc<str>, offset: u64) -> Result<Block> {
        let mut block = Block {
            contents,
            restarts_offset: 0,
            num_restarts: 0,
            file,
            offset,
        };
        let (restarts_offset, num_restarts) = block.check_restarts()?;
        block.restarts_offset = restarts_offset;
        block.num_restarts = num_restarts;
        Ok(block)
    }

    /// Validates the restart array: it fits, starts at 0 when there are entries, and strictly
    /// increases inside the entry area. Returns (start of restart array, number of restarts).
    fn check_restarts(&self) -> Result<(usize, usize)> {
        let payload = self.payload();
        let Some((_, count)) = payload.split_last_chunk::<4>() else {
            return Err(self.corruption(format!(
                "block payload of {} bytes has no restart count",
                payload.len()
            )));
        };
        let count = u32::from_le_bytes(*count) as usize;
        let restarts_offset = count
            .checked_mul(4)
            .and_then(|len| (payload.len() - 4).checked_sub(len))
            .ok_or_else(|| {
                self.corruption(format!(
                    "{count} restart points do not fit in a block payload of {} bytes",
                    payload.len()
                ))
            })?;
        if count == 0 && restarts_offset != 0 {
            return Err(self.corruption("block has entries but no restart point"));
        }
        let mut previous: Option<usize> = None;
        for i in 0..count {
            let restart = read_u32(payload, restarts_offset + 4 * i);
            let ok = match previous {
                None => restart == 0,
                Some(p) => restart > p && restart < restarts_offset,
            };
            if !ok {
                return Err(self.corruption(format!(
                    "restart point {i} at payload offset {restart} is out of order or outside \
                     the {restarts_offset} bytes of entries"
                )));
            }
            previous = Some(restart);
        }
        Ok((restarts_offset, count))
    }

    /// The decoded payload: entries, restart array, restart count.
    pub fn payload(&self) -> &[u8] {
        match &self.contents {
            Contents::Owned(bytes) => bytes,
            Contents::Shared { owner, start, end } => {
                let bytes: &[u8] = (**owner).as_ref();
                bytes.get(*start..*end).unwrap_or_default()
            }
        }
    }

    /// The entry area of the payload.
    pub(crate) fn entries(&self) -> &[u8] {
        self.payload()
            .get(..self.restarts_offset)
            .unwrap_or_default()
    }

    /// The entry area and the restart array (`num_restarts` u32 LE offsets), borrowed together
    /// so that a seek resolves the payload once.
    #[inline]
    pub(crate) fn areas(&self) -> (&[u8], &[u8]) {
        let payload = self.payload();
        let restarts_end = self.restarts_offset + 4 * self.num_restarts;
        (
            payload.get(..self.restarts_offset).unwrap_or_default(),
            payload
                .get(self.restarts_offset..restarts_end)
                .unwrap_or_default(),
        )
    }

    /// Number of restart points (0 only for an empty block).
    pub fn num_restarts(&self) -> usize {
        self.num_restarts
    }

    /// Payload offset of restart point `index` (validated at decode; 0 when out of range).
    pub(crate) fn restart(&self, index: usize) -> usize {
        if index >= self.num_restarts {
            return 0;
        }
        read_u32(self.payload(), self.restarts_offset + 4 * index)
    }

    /// Whether the block has no entries.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.restarts_offset == 0
    }

    /// Memory the block holds on to, for cache accounting.
    pub fn charge(&self) -> usize {
        self.payload().len() + std::mem::size_of::<Block>()
    }

    /// The file the block came from (as given to the decoder).
    pub fn file(&self) -> &Arc<str> {
        &self.file
    }

    /// The byte offset of the stored block in its file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// A corruption error about this block.
    pub(crate) fn corruption(&self, what: impl Into<String>) -> Error {
        Error::corruption(&*self.file, self.offset, what)
    }

    /// An iterator over the block's entries in `comparator` order.
    pub fn iter(self: &Arc<Self>, comparator: Comparator) -> BlockIter {
        BlockIter::new(Arc::clone(self), comparator)
    }
}

/// A u32 LE at `pos` (0 if out of range; callers validate positions first).
fn read_u32(bytes: &[u8], pos: usize) -> usize {
    bytes
        .get(pos..)
        .and_then(|b| b.first_chunk::<4>())
        .map_or(0, |b| u32::from_le_bytes(*b) as usize)
}

#[cfg(test)]
#[path = "block_tests.rs"]
mod tests;
