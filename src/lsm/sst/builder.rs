//! [`SstBuilder`]: writes one SST file (FORMAT.md §8) from internal entries added in order.
//!
//! Data blocks are cut at `block_size`; each closed block adds `last key -> handle` to the index.
//! `finish` appends filter, properties, index and footer, then fsyncs the file. Publishing the
//! file (renaming into place, fsyncing the directory, recording it in the manifest) is the
//! caller's job.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::codec::block::{BlockBuilder, Compression, MAX_BLOCK_SIZE, seal};
use crate::error::{Error, Result};
use crate::fs::{FileSystem, IoWriter};
use crate::lsm::format::{ValueKind, compare_internal, parse_internal_key};
use crate::lsm::sst::SstOptions;
use crate::lsm::sst::bloom::BloomBuilder;
use crate::lsm::sst::format::{BlockHandle, Footer, SstProperties};

/// What a finished SST holds and how to check it later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SstMetadata {
    /// The file's path.
    pub path: PathBuf,
    /// Size of the file in bytes.
    pub file_size: u64,
    /// CRC-32 (FORMAT.md §1.2) of the whole file, for checkpoint metadata.
    pub file_crc32: u32,
    /// The recorded properties (entry count, key and sequence ranges, tombstones, time).
    pub properties: SstProperties,
}

/// Writes one SST file.
pub struct SstBuilder {
    path: PathBuf,
    label: String,
    writer: BufWriter<IoWriter>,
    /// Running CRC-32 of every byte written.
    file_crc: crc32fast::Hasher,
    offset: u64,
    options: SstOptions,
    data_block: BlockBuilder,
    index_block: BlockBuilder,
    bloom: BloomBuilder,
    last_key: Vec<u8>,
    properties: SstProperties,
    /// The stored data block being written, reused from block to block.
    stored: Vec<u8>,
}

impl std::fmt::Debug for SstBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SstBuilder")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .field("entries", &self.properties.entry_count)
            .finish()
    }
}

impl SstBuilder {
    /// Creates a new file at `path` (which must not exist) for writing.
    pub fn create(path: &Path, options: SstOptions) -> Result<Self> {
        SstBuilder::create_on(crate::fs::std_fs().as_ref(), path, options)
    }

    /// [`SstBuilder::create`] on the file system `fs`.
    pub fn create_on(fs: &dyn FileSystem, path: &Path, options: SstOptions) -> Result<Self> {
        options.validate()?;
        let file = IoWriter(fs.create_new(path).map_err(|e| Error::io(path, e))?);
        let creation_time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Ok(SstBuilder {
            path: path.to_path_buf(),
            label: path.display().to_string(),
            writer: BufWriter::with_capacity(256 << 10, file),
            file_crc: crc32fast::Hasher::new(),
            offset: 0,
            options,
            data_block: BlockBuilder::new(options.restart_interval, options.compression),
            // Restart interval 1: every index key is whole, so seeks binary-search exactly.
            index_block: BlockBuilder::new(1, Compression::None),
            bloom: BloomBuilder::new(options.bloom_bits_per_key),
            last_key: Vec::new(),
            properties: SstProperties {
                creation_time_ms,
                ..SstProperties::default()
            },
            stored: Vec::new(),
        })
    }

    /// Records `creation_time_ms` instead of the wall clock (for reproducible files).
    pub fn set_creation_time(&mut self, creation_time_ms: u64) {
        self.properties.creation_time_ms = creation_time_ms;
    }

    /// Appends an entry. `key` is an internal key (`lsm::format`) strictly after the previous
    /// one in `compare_internal` order; otherwise [`Error::InvalidArgument`].
    pub fn add(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let parsed = parse_internal_key(key, &self.label, self.offset)
            .map_err(|e| Error::invalid(format!("SST entry key: {e}")))?;
        let first = self.properties.entry_count == 0;
        if !first && compare_internal(&self.last_key, key) != std::cmp::Ordering::Less {
            return Err(Error::invalid(
                "SST entries must be added in strictly increasing internal key order",
            ));
        }
        if !self.data_block.is_empty()
            && self.data_block.estimated_size() + key.len() + value.len() + 32 > MAX_BLOCK_SIZE
        {
            self.flush_data_block()?;
        }
        self.data_block.add(key, value)?;
        if first || parsed.user_key != crate::lsm::format::user_key(&self.last_key) {
            self.bloom.add_key(parsed.user_key);
        }
        let props = &mut self.properties;
        if first {
            props.smallest_key = key.to_vec();
            props.smallest_seq = parsed.sequence;
            props.largest_seq = parsed.sequence;
        }
        props.smallest_seq = props.smallest_seq.min(parsed.sequence);
        props.largest_seq = props.largest_seq.max(parsed.sequence);
        props.entry_count += 1;
        if matches!(parsed.kind, ValueKind::Delete | ValueKind::RangeDelete) {
            props.tombstone_count += 1;
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        if self.data_block.estimated_size() >= self.options.block_size {
            self.flush_data_block()?;
        }
        Ok(())
    }

    /// Size the file would have if finished now, roughly (meta blocks not counted).
    pub fn estimated_file_size(&self) -> u64 {
        self.offset + self.data_block.estimated_size() as u64
    }

    fn write_stored(&mut self, stored: &[u8]) -> Result<BlockHandle> {
        let handle = BlockHandle {
            offset: self.offset,
            size: stored.len() as u64,
        };
        self.writer
            .write_all(stored)
            .map_err(|e| Error::io(&self.path, e))?;
        self.file_crc.update(stored);
        self.offset += stored.len() as u64;
        Ok(handle)
    }

    fn flush_data_block(&mut self) -> Result<()> {
        if self.data_block.is_empty() {
            return Ok(());
        }
        let mut stored = std::mem::take(&mut self.stored);
        self.data_block.finish_into(&mut stored);
        let handle = self.write_stored(&stored);
        self.stored = stored;
        let handle = handle?;
        let mut value = Vec::with_capacity(20);
        handle.encode_varint(&mut value);
        // The index key is the block's last key: every key of the block is <= it, every key of
        // the next block is > it.
        self.index_block.add(&self.last_key, &value)
    }

    /// Writes the meta blocks and footer, fsyncs the file, and returns its metadata.
    pub fn finish(mut self) -> Result<SstMetadata> {
        self.flush_data_block()?;
        self.properties.largest_key = self.last_key.clone();
        let filter = seal(&self.bloom.finish(), Compression::None);
        let filter = self.write_stored(&filter)?;
        let properties = self.properties.encode()?;
        let properties = self.write_stored(&properties)?;
        let index = self.index_block.finish();
        let index = self.write_stored(&index)?;
        let footer = Footer {
            index,
            filter,
            properties,
        };
        self.write_stored(&footer.encode())?;
        let IoWriter(mut file) = self
            .writer
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::fsync(&self.path, e))?;
        Ok(SstMetadata {
            path: self.path,
            file_size: self.offset,
            file_crc32: self.file_crc.finalize(),
            properties: self.properties,
        })
    }
}
