//! Sorted string tables: immutable sorted files of blocks (FORMAT.md §8).
//!
//! [`SstBuilder`] writes a file of internal keys in `compare_internal` order and fsyncs it;
//! [`SstReader`] maps it, validates footer and meta blocks on open, and serves point lookups
//! (bloom first) and [`SstIter`] scans. A published file is never modified; [`copy::copy_range`]
//! writes a new file holding one key range of another.

pub mod bloom;
pub mod builder;
pub mod copy;
pub mod format;
pub mod iter;
pub mod reader;
mod storage;

pub use builder::{SstBuilder, SstMetadata};
pub use reader::SstReader;

use crate::codec::block::{Compression, DEFAULT_RESTART_INTERVAL};
use crate::error::{Error, Result};

/// Default target size of a data block before compression.
pub const DEFAULT_BLOCK_SIZE: usize = 4096;

/// Largest configurable data block size, so that an entry still fits next to a full block.
pub const MAX_CONFIGURED_BLOCK_SIZE: usize = crate::codec::block::MAX_BLOCK_SIZE / 2;

/// How SST files of one column family are written. Readers need none of it: every choice is
/// recorded in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SstOptions {
    /// A data block is closed once its estimated size reaches this many bytes
    /// (default [`DEFAULT_BLOCK_SIZE`], at most [`MAX_CONFIGURED_BLOCK_SIZE`]).
    pub block_size: usize,
    /// Entries between restart points in data blocks (default 16).
    pub restart_interval: usize,
    /// Compression of data blocks (default none).
    pub compression: Compression,
    /// Bloom filter bits per distinct user key (default 10, about 1% false positives).
    pub bloom_bits_per_key: u32,
}

impl Default for SstOptions {
    fn default() -> Self {
        SstOptions {
            block_size: DEFAULT_BLOCK_SIZE,
            restart_interval: DEFAULT_RESTART_INTERVAL,
            compression: Compression::None,
            bloom_bits_per_key: bloom::DEFAULT_BITS_PER_KEY,
        }
    }
}

impl SstOptions {
    /// Checks the options; [`Error::InvalidOption`] names the first bad one (`block_size`,
    /// `restart_interval`, `bloom_bits_per_key`, `compression`) and what it must be.
    pub fn validate(&self) -> Result<()> {
        if self.block_size == 0 || self.block_size > MAX_CONFIGURED_BLOCK_SIZE {
            return Err(Error::invalid_option(
                "block_size",
                format!(
                    "must be in 1..={MAX_CONFIGURED_BLOCK_SIZE}, got {}",
                    self.block_size
                ),
            ));
        }
        if self.restart_interval == 0 || self.restart_interval > u16::MAX as usize {
            return Err(Error::invalid_option(
                "restart_interval",
                format!("must be in 1..=65535, got {}", self.restart_interval),
            ));
        }
        if self.bloom_bits_per_key == 0 || self.bloom_bits_per_key > 64 {
            return Err(Error::invalid_option(
                "bloom_bits_per_key",
                format!("must be in 1..=64, got {}", self.bloom_bits_per_key),
            ));
        }
        if let Compression::Zstd { level } = self.compression
            && !(1..=22).contains(&level)
        {
            return Err(Error::invalid_option(
                "compression",
                format!("the zstd level must be in 1..=22, got {level}"),
            ));
        }
        Ok(())
    }
}

impl SstOptions {
    option_setters! { SstOptions {
        block_size: usize,
        restart_interval: usize,
        compression: Compression,
        bloom_bits_per_key: u32,
    }}
}

#[cfg(test)]
mod tests;
