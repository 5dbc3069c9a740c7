//! [`SstIter`]: a two-level iterator over an SST file, index block then data blocks.
//!
//! The index iterator picks the data block (its key is the block's last key, so a seek lands on
//! the only block that can hold the target); the data iterator walks inside it and steps to the
//! neighbouring block at either end. A failed move leaves the iterator invalid.

use std::sync::Arc;

use crate::codec::block::BlockIter;
use crate::error::Result;
use crate::lsm::format::compare_internal;
use crate::lsm::iterator::InternalIterator;
use crate::lsm::sst::format::BlockHandle;
use crate::lsm::sst::reader::SstFile;

/// A cursor over every entry of one SST file in `compare_internal` order.
pub struct SstIter {
    file: Arc<SstFile>,
    index: BlockIter,
    /// The data block under the index position, and its handle.
    data: Option<(BlockHandle, BlockIter)>,
    /// Whether blocks read from the file go into the block cache.
    fill_cache: bool,
}

impl SstIter {
    pub(crate) fn new(file: Arc<SstFile>, fill_cache: bool) -> Self {
        let index = file.index.iter(compare_internal);
        SstIter {
            file,
            index,
            data: None,
            fill_cache,
        }
    }

    /// Loads the data block the index points at (or clears it when the index is exhausted).
    fn load_data_block(&mut self) -> Result<()> {
        if !self.index.valid() {
            self.data = None;
            return Ok(());
        }
        let handle = self
            .file
            .decode_handle(self.index.value(), self.file.footer.index.offset)?;
        if self.data.as_ref().is_some_and(|(h, _)| *h == handle) {
            return Ok(());
        }
        let block = self.file.data_block(handle, self.fill_cache)?;
        self.data = Some((handle, block.iter(compare_internal)));
        Ok(())
    }

    fn data_valid(&self) -> bool {
        self.data.as_ref().is_some_and(|(_, d)| d.valid())
    }

    /// Moves to the first entry of following blocks while the current block is exhausted.
    fn skip_forward(&mut self) -> Result<()> {
        while !self.data_valid() {
            if !self.index.valid() {
                self.data = None;
                return Ok(());
            }
            self.index.next()?;
            self.load_data_block()?;
            if let Some((_, data)) = &mut self.data {
                data.seek_to_first()?;
            }
        }
        Ok(())
    }

    /// Moves to the last entry of preceding blocks while the current block is exhausted.
    fn skip_backward(&mut self) -> Result<()> {
        while !self.data_valid() {
            if !self.index.valid() {
                self.data = None;
                return Ok(());
            }
            self.index.prev()?;
            self.load_data_block()?;
            if let Some((_, data)) = &mut self.data {
                data.seek_to_last()?;
            }
        }
        Ok(())
    }

    fn seek_inner(&mut self, target: &[u8]) -> Result<()> {
        self.index.seek(target)?;
        self.load_data_block()?;
        if let Some((_, data)) = &mut self.data {
            data.seek(target)?;
        }
        self.skip_forward()
    }

    fn seek_for_prev_inner(&mut self, target: &[u8]) -> Result<()> {
        // The first block whose last key is >= target holds the answer or follows it.
        self.index.seek(target)?;
        if !self.index.valid() {
            self.index.seek_to_last()?;
        }
        self.load_data_block()?;
        if let Some((_, data)) = &mut self.data {
            data.seek_for_prev(target)?;
        }
        self.skip_backward()
    }

    /// Runs a moving operation; on error the iterator is left invalid.
    fn moving(&mut self, op: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let result = op(self);
        if result.is_err() {
            self.data = None;
        }
        result
    }

    /// The data iterator; callers check `valid()` first.
    fn data_mut(&mut self) -> Option<&mut BlockIter> {
        self.data.as_mut().map(|(_, d)| d)
    }
}

impl InternalIterator for SstIter {
    fn valid(&self) -> bool {
        self.data_valid()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.moving(|it| {
            it.index.seek_to_first()?;
            it.load_data_block()?;
            if let Some(data) = it.data_mut() {
                data.seek_to_first()?;
            }
            it.skip_forward()
        })
    }

    fn seek_to_last(&mut self) -> Result<()> {
        self.moving(|it| {
            it.index.seek_to_last()?;
            it.load_data_block()?;
            if let Some(data) = it.data_mut() {
                data.seek_to_last()?;
            }
            it.skip_backward()
        })
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.moving(|it| it.seek_inner(target))
    }

    fn seek_for_prev(&mut self, target: &[u8]) -> Result<()> {
        self.moving(|it| it.seek_for_prev_inner(target))
    }

    fn next(&mut self) -> Result<()> {
        debug_assert!(self.valid(), "next() on an invalid SstIter");
        self.moving(|it| {
            if let Some(data) = it.data_mut() {
                data.next()?;
            }
            it.skip_forward()
        })
    }

    fn prev(&mut self) -> Result<()> {
        debug_assert!(self.valid(), "prev() on an invalid SstIter");
        self.moving(|it| {
            if let Some(data) = it.data_mut() {
                data.prev()?;
            }
            it.skip_backward()
        })
    }

    fn key(&self) -> &[u8] {
        self.data.as_ref().map_or(&[], |(_, d)| d.key())
    }

    fn value(&self) -> &[u8] {
        self.data.as_ref().map_or(&[], |(_, d)| d.value())
    }
}
