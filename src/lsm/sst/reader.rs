//! [`SstReader`]: opens an SST file (FORMAT.md §8) through a memory map and serves lookups.
//!
//! `open` validates the footer, the layout of the meta blocks and their checksums; data blocks
//! are checked when first read (and all of them by [`SstReader::verify`]). Decoded blocks may
//! borrow from the map, which they keep alive; an optional [`BlockCache`] shares them.

use std::cell::Cell;
use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::budget::{Component, Reservation};
use crate::codec::block::{Block, BlockIter, SharedBytes, unseal};
use crate::codec::block_iter::{FlatEntry, flat_entries};
use crate::error::{Error, Result};
use crate::lsm::block_cache::BlockCache;
use crate::lsm::format::{
    ValueKind, compare_internal, parse_internal_key, user_key as user_key_of,
};
use crate::lsm::iterator::InternalIterator;
use crate::lsm::pinned::PinnedValue;
use crate::lsm::sst::bloom::BloomFilter;
use crate::lsm::sst::format::{
    BlockHandle, FOOTER_LEN, Footer, SstProperties, encode_seek_key, seek_key,
};
use crate::lsm::sst::iter::SstIter;
use crate::lsm::sst::storage::Storage;

/// The newest version of a user key visible at a snapshot, as stored in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SstEntry {
    /// Sequence number of the version.
    pub sequence: u64,
    /// Put, Delete, Merge or RangeDelete; the caller interprets it.
    pub kind: ValueKind,
    /// The stored value (empty for a Delete), still in its data block.
    pub value: PinnedValue,
}

/// Buffers a thread's point lookups reuse: the seek key and the index and data block keys.
#[derive(Default)]
struct LookupBuffers {
    target: Vec<u8>,
    index_key: Vec<u8>,
    data_key: Vec<u8>,
}

thread_local! {
    /// Taken by a lookup and put back after it (a nested lookup would find fresh ones).
    static LOOKUP_BUFFERS: Cell<LookupBuffers> = Cell::new(LookupBuffers::default());
}

/// The shared state of an open file; iterators hold it through an `Arc`.
pub(crate) struct SstFile {
    pub(crate) label: Arc<str>,
    path: PathBuf,
    file_number: u64,
    storage: Storage,
    pub(crate) footer: Footer,
    pub(crate) index: Arc<Block>,
    /// The index block's entries as slices (every index key is stored whole), for point
    /// lookups; `None` if the block is not laid out that way (then lookups use a `BlockIter`).
    index_entries: Option<Box<[FlatEntry]>>,
    filter: BloomFilter,
    properties: SstProperties,
    cache: Option<Arc<BlockCache>>,
    /// The index and filter's memory, charged to the cache's budget while the file is open.
    _charge: Reservation,
}

impl SstFile {
    /// End of the data blocks: the filter block follows them.
    pub(crate) fn data_end(&self) -> u64 {
        self.footer.filter.offset
    }

    fn decode_block(&self, handle: BlockHandle, start: u64, end: u64, what: &str) -> Result<Block> {
        decode_block(&self.storage, &self.label, handle, (start, end), what)
    }

    /// The data block at `handle`, from the cache if it has it; a block read from the file is
    /// added to the cache when `fill_cache` is set.
    pub(crate) fn data_block(&self, handle: BlockHandle, fill_cache: bool) -> Result<Arc<Block>> {
        if let Some(cache) = &self.cache
            && let Some(block) = cache.get(self.file_number, handle.offset)
        {
            return Ok(block);
        }
        let block = Arc::new(self.decode_block(handle, 0, self.data_end(), "data block")?);
        if fill_cache && let Some(cache) = &self.cache {
            cache.insert(self.file_number, handle.offset, Arc::clone(&block));
        }
        Ok(block)
    }

    /// Decodes an index entry's value into a data block handle.
    pub(crate) fn decode_handle(&self, value: &[u8], index_offset: u64) -> Result<BlockHandle> {
        BlockHandle::decode_varint(value, &self.label, index_offset)
    }
}

/// An open, immutable SST file. Cheap to clone; clones share the map and meta blocks.
#[derive(Clone)]
pub struct SstReader {
    file: Arc<SstFile>,
}

impl std::fmt::Debug for SstReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SstReader")
            .field("path", &self.file.path)
            .field("file_number", &self.file.file_number)
            .field("entries", &self.file.properties.entry_count)
            .finish()
    }
}

impl SstReader {
    /// Opens the SST at `path` through a memory map. `file_number` keys its blocks in `cache` and
    /// must be unique among the files sharing that cache.
    #[cfg(test)]
    pub fn open(path: &Path, file_number: u64, cache: Option<Arc<BlockCache>>) -> Result<Self> {
        SstReader::open_with(path, file_number, cache, true)
    }

    /// Opens the SST at `path`, reading it through a memory map when `mmap` is true and with
    /// positioned reads (`pread`) into the blocks otherwise (then only the block cache holds its
    /// data in this process's memory).
    #[cfg(test)]
    pub fn open_with(
        path: &Path,
        file_number: u64,
        cache: Option<Arc<BlockCache>>,
        mmap: bool,
    ) -> Result<Self> {
        SstReader::open_on(crate::fs::std_fs().as_ref(), path, file_number, cache, mmap)
    }

    /// [`SstReader::open_with`] on the file system `fs`.
    pub fn open_on(
        fs: &dyn crate::fs::FileSystem,
        path: &Path,
        file_number: u64,
        cache: Option<Arc<BlockCache>>,
        mmap: bool,
    ) -> Result<Self> {
        let label: Arc<str> = Arc::from(path.display().to_string());
        let file = fs.open_read(path).map_err(|e| Error::io(path, e))?;
        let len = file.len();
        if len < FOOTER_LEN as u64 {
            return Err(Error::corruption(
                &*label,
                0,
                format!("file of {len} bytes is shorter than the {FOOTER_LEN}-byte SST footer"),
            ));
        }
        if !mmap {
            let storage = Storage::File {
                file,
                len,
                path: Arc::from(path),
            };
            return SstReader::from_storage(storage, label, path, file_number, cache);
        }
        // SST files are immutable once published, as `ReadableFile::map` requires.
        let map = file.map().map_err(|e| Error::io(path, e))?;
        SstReader::from_bytes(map, label, path, file_number, cache)
    }

    /// Opens an SST held in memory (tests, fuzzing, files fetched from checkpoint storage);
    /// `label` names it in errors and `path` is reported by [`path`](Self::path).
    pub fn from_bytes(
        map: SharedBytes,
        label: Arc<str>,
        path: &Path,
        file_number: u64,
        cache: Option<Arc<BlockCache>>,
    ) -> Result<Self> {
        SstReader::from_storage(Storage::Mapped(map), label, path, file_number, cache)
    }

    fn from_storage(
        storage: Storage,
        label: Arc<str>,
        path: &Path,
        file_number: u64,
        cache: Option<Arc<BlockCache>>,
    ) -> Result<Self> {
        let footer_offset = storage
            .len()
            .checked_sub(FOOTER_LEN as u64)
            .ok_or_else(|| {
                Error::corruption(
                    &*label,
                    0,
                    format!(
                        "file of {} bytes is shorter than the {FOOTER_LEN}-byte SST footer",
                        storage.len()
                    ),
                )
            })?;
        let footer_bytes = storage.read(footer_offset, FOOTER_LEN, &label)?;
        let footer_bytes = <&[u8; FOOTER_LEN]>::try_from(&*footer_bytes)
            .map_err(|_| Error::corruption(&*label, 0, "footer out of range"))?;
        let footer = Footer::decode(footer_bytes, &label, footer_offset)?;
        check_layout(&footer, footer_offset, &label)?;

        let stored_filter =
            storage.read(footer.filter.offset, footer.filter.size as usize, &label)?;
        let filter_bytes = unseal(&stored_filter, &label, footer.filter.offset)?;
        let filter = BloomFilter::decode(&filter_bytes, &label, footer.filter.offset)?;
        let end = footer_offset;
        let properties = decode_block(&storage, &label, footer.properties, (0, end), "properties")?;
        let properties = SstProperties::decode(Arc::new(properties))?;
        let index = Arc::new(decode_block(
            &storage,
            &label,
            footer.index,
            (0, end),
            "index",
        )?);
        let index_entries = flat_entries(&index);
        let resident = index.charge()
            + index_entries
                .as_ref()
                .map_or(0, |e| std::mem::size_of_val::<[FlatEntry]>(e))
            + filter.len_bytes();
        let budget = cache.as_ref().and_then(|c| c.budget().cloned());
        let charge = Reservation::charge_now(budget, Component::TableReader, resident);
        let file = SstFile {
            label,
            path: path.to_path_buf(),
            file_number,
            storage,
            footer,
            index,
            index_entries,
            filter,
            properties,
            cache,
            _charge: charge,
        };
        Ok(SstReader {
            file: Arc::new(file),
        })
    }

    /// The recorded properties.
    #[cfg(test)]
    pub fn properties(&self) -> &SstProperties {
        &self.file.properties
    }

    /// The footer: where the index, filter and properties blocks lie.
    #[cfg(test)]
    pub fn footer(&self) -> Footer {
        self.file.footer
    }

    /// Size of the file in bytes.
    #[cfg(test)]
    pub fn file_size(&self) -> u64 {
        self.file.storage.len()
    }

    /// False if the file certainly holds no version of `user_key` (bloom filter).
    pub fn may_contain(&self, user_key: &[u8]) -> bool {
        self.file.filter.may_contain(user_key)
    }

    /// False if no user key of the file starts with `prefix` (such as a key group's two bytes),
    /// judged from the recorded smallest and largest keys without reading any block.
    pub fn may_contain_prefix(&self, prefix: &[u8]) -> bool {
        let props = &self.file.properties;
        if props.entry_count == 0 {
            return false;
        }
        let smallest = user_key_of(&props.smallest_key);
        let largest = user_key_of(&props.largest_key);
        let below = largest < prefix;
        let above = !smallest.starts_with(prefix) && smallest > prefix;
        !(below || above)
    }

    /// The newest entry for `user_key` with sequence <= `snapshot_seq`, if the file has one.
    ///
    /// Searches the index block, then the one data block it names, directly (no [`SstIter`]),
    /// building keys in buffers this thread reuses across lookups.
    pub fn get(&self, user_key: &[u8], snapshot_seq: u64) -> Result<Option<SstEntry>> {
        if !self.may_contain(user_key) {
            return Ok(None);
        }
        let mut buffers = LOOKUP_BUFFERS.take();
        let result = self.search(user_key, snapshot_seq, &mut buffers);
        LOOKUP_BUFFERS.set(buffers);
        result
    }

    fn search(
        &self,
        user_key: &[u8],
        snapshot_seq: u64,
        buffers: &mut LookupBuffers,
    ) -> Result<Option<SstEntry>> {
        let file = &self.file;
        encode_seek_key(&mut buffers.target, user_key, snapshot_seq);
        let target = &buffers.target;
        let handle = if let Some(flat) = &file.index_entries {
            // The first index key at or after the target, by binary search over whole keys.
            let entries = file.index.entries();
            let at = flat
                .partition_point(|e| compare_internal(e.key(entries), target) == Ordering::Less);
            match flat.get(at) {
                Some(e) => Some(file.decode_handle(e.value(entries), file.footer.index.offset)?),
                None => None,
            }
        } else {
            let index_key = std::mem::take(&mut buffers.index_key);
            let mut index =
                BlockIter::with_key_buffer(Arc::clone(&file.index), compare_internal, index_key);
            index.seek(target)?;
            let handle = if index.valid() {
                Some(file.decode_handle(index.value(), file.footer.index.offset)?)
            } else {
                None
            };
            buffers.index_key = index.into_key_buffer();
            handle
        };
        // Index keys are the blocks' last keys: no block ends at or after the target.
        let Some(handle) = handle else {
            return Ok(None);
        };
        let data_key = std::mem::take(&mut buffers.data_key);
        let mut data =
            BlockIter::with_key_buffer(file.data_block(handle, true)?, compare_internal, data_key);
        data.seek(target)?;
        let found = if data.valid() {
            let parsed = parse_internal_key(data.key(), &file.label, handle.offset)?;
            (parsed.user_key == user_key).then(|| {
                let (block, range) = data.value_in_block();
                SstEntry {
                    sequence: parsed.sequence,
                    kind: parsed.kind,
                    value: PinnedValue::in_block(Arc::clone(block), range),
                }
            })
        } else {
            // The block's last key is at or after the target, so this is a damaged file: read
            // it the long way, which reports the damage or skips to the next block.
            None
        };
        let fallback = !data.valid();
        buffers.data_key = data.into_key_buffer();
        if fallback {
            return self.get_by_iterator(user_key, snapshot_seq);
        }
        Ok(found)
    }

    /// [`SstReader::get`] through an [`SstIter`].
    fn get_by_iterator(&self, user_key: &[u8], snapshot_seq: u64) -> Result<Option<SstEntry>> {
        let mut iter = self.iter();
        iter.seek(&seek_key(user_key, snapshot_seq))?;
        if !iter.valid() {
            return Ok(None);
        }
        let parsed = parse_internal_key(iter.key(), &self.file.label, 0)?;
        if parsed.user_key != user_key {
            return Ok(None);
        }
        Ok(Some(SstEntry {
            sequence: parsed.sequence,
            kind: parsed.kind,
            value: iter.value().to_vec().into(),
        }))
    }

    /// An unpositioned iterator over every entry in `compare_internal` order. Blocks it reads
    /// from the file are added to the block cache.
    pub fn iter(&self) -> SstIter {
        SstIter::new(Arc::clone(&self.file), true)
    }

    /// [`SstReader::iter`] for one pass over the whole file (a compaction, RocksDB's
    /// `fill_cache = false`): cached blocks are used, but blocks read from the file are not
    /// added to the cache, so a compaction neither evicts the readers' hot blocks nor fills an
    /// idle cache with blocks nobody will read again.
    pub fn scan_iter(&self) -> SstIter {
        SstIter::new(Arc::clone(&self.file), false)
    }

    /// CRC-32 of the whole file (compare with [`SstMetadata::file_crc32`](super::SstMetadata)).
    #[cfg(test)]
    pub fn file_crc32(&self) -> Result<u32> {
        self.file.storage.crc32(&self.file.label)
    }

    /// The compression type byte of every data block, in file order (FORMAT.md §1.3).
    #[cfg(test)]
    pub(crate) fn data_block_types(&self) -> Result<Vec<u8>> {
        let file = &self.file;
        let mut index = file.index.iter(compare_internal);
        let mut types = Vec::new();
        index.seek_to_first()?;
        while index.valid() {
            let handle = file.decode_handle(index.value(), file.footer.index.offset)?;
            let stored = file
                .storage
                .read(handle.offset, handle.size as usize, &file.label)?;
            types.push(stored[stored.len() - crate::codec::block::BLOCK_TRAILER_LEN]);
            index.next()?;
        }
        Ok(types)
    }

    /// Reads and checks every block, bypassing the cache: checksums, that the data blocks tile
    /// the data area, that keys are valid internal keys in strictly increasing order, that each
    /// index key is its block's last key, that the filter holds every user key, and that the
    /// properties match the contents.
    pub fn verify(&self) -> Result<()> {
        let file = &self.file;
        let label = &*file.label;
        let corrupt = |offset: u64, what: String| Error::corruption(label, offset, what);
        let mut index = file.index.iter(compare_internal);
        let mut expected_offset = 0u64;
        let mut seen = SstProperties::default();
        index.seek_to_first()?;
        while index.valid() {
            let handle = file.decode_handle(index.value(), file.footer.index.offset)?;
            if handle.offset != expected_offset {
                return Err(corrupt(
                    handle.offset,
                    format!(
                        "data block at {} but the previous one ended at {expected_offset}",
                        handle.offset
                    ),
                ));
            }
            let block = Arc::new(file.decode_block(handle, 0, file.data_end(), "data block")?);
            let mut entries = block.iter(compare_internal);
            entries.seek_to_first()?;
            if !entries.valid() {
                return Err(corrupt(handle.offset, "empty data block".into()));
            }
            while entries.valid() {
                check_entry(&mut seen, entries.key(), handle.offset, label)?;
                if !file.filter.may_contain(user_key_of(entries.key())) {
                    return Err(corrupt(
                        file.footer.filter.offset,
                        "bloom filter misses a key".into(),
                    ));
                }
                entries.next()?;
            }
            if seen.largest_key != index.key() {
                return Err(corrupt(
                    file.footer.index.offset,
                    format!("index key of block {} is not its last key", handle.offset),
                ));
            }
            expected_offset = handle.end();
            index.next()?;
        }
        if expected_offset != file.data_end() {
            return Err(corrupt(
                expected_offset,
                format!(
                    "data blocks end at {expected_offset}, the filter starts at {}",
                    file.data_end()
                ),
            ));
        }
        seen.creation_time_ms = file.properties.creation_time_ms;
        if seen != file.properties {
            return Err(corrupt(
                file.footer.properties.offset,
                format!(
                    "properties {:?} do not match the contents {seen:?}",
                    file.properties
                ),
            ));
        }
        Ok(())
    }
}

/// Decodes the stored block at `handle`, which must lie within `[range.0, range.1)`.
fn decode_block(
    storage: &Storage,
    label: &Arc<str>,
    handle: BlockHandle,
    range: (u64, u64),
    what: &str,
) -> Result<Block> {
    handle.check_within(range.0, range.1, what, label)?;
    storage.decode_block(handle, label)
}

/// Checks that filter, properties and index follow each other and end at the footer.
fn check_layout(footer: &Footer, footer_offset: u64, label: &str) -> Result<()> {
    footer
        .filter
        .check_within(0, footer_offset, "filter", label)?;
    footer
        .properties
        .check_within(0, footer_offset, "properties", label)?;
    footer
        .index
        .check_within(0, footer_offset, "index", label)?;
    let contiguous = footer.filter.end() == footer.properties.offset
        && footer.properties.end() == footer.index.offset
        && footer.index.end() == footer_offset;
    if !contiguous {
        return Err(Error::corruption(
            label,
            footer_offset,
            format!(
                "footer handles {footer:?} do not tile the meta area before byte {footer_offset}"
            ),
        ));
    }
    Ok(())
}

/// Folds one entry into the statistics `seen` gathered by `verify`, checking its key and order.
fn check_entry(seen: &mut SstProperties, key: &[u8], block_offset: u64, label: &str) -> Result<()> {
    let parsed = parse_internal_key(key, label, block_offset)?;
    if seen.entry_count == 0 {
        seen.smallest_key = key.to_vec();
        seen.smallest_seq = parsed.sequence;
        seen.largest_seq = parsed.sequence;
    } else if compare_internal(&seen.largest_key, key) != Ordering::Less {
        return Err(Error::corruption(label, block_offset, "keys out of order"));
    }
    seen.smallest_seq = seen.smallest_seq.min(parsed.sequence);
    seen.largest_seq = seen.largest_seq.max(parsed.sequence);
    seen.entry_count += 1;
    if matches!(parsed.kind, ValueKind::Delete | ValueKind::RangeDelete) {
        seen.tombstone_count += 1;
    }
    seen.largest_key = key.to_vec();
    Ok(())
}
