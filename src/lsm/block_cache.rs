//! A sharded LRU cache of decoded SST blocks, keyed by (file number, block offset).
//!
//! Capacity is in bytes (each block is charged [`Block::charge`]), split evenly over the shards;
//! each shard is a mutex around a map plus a recency index. File numbers must be unique among
//! the files that share one cache, or one file's blocks would answer for another's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::codec::block::Block;

/// Default number of shards.
pub const DEFAULT_SHARDS: usize = 16;

/// Where a block comes from: its file number and byte offset in that file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// The SST file number.
    pub file_number: u64,
    /// The offset of the stored block in the file.
    pub offset: u64,
}

/// Counters and usage of a [`BlockCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCacheStats {
    /// Lookups that found the block.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Blocks evicted to make room.
    pub evictions: u64,
    /// Bytes charged by the cached blocks.
    pub usage: usize,
    /// Number of cached blocks.
    pub entries: usize,
    /// Capacity in bytes.
    pub capacity: usize,
}

struct CacheEntry {
    block: Arc<Block>,
    charge: usize,
    /// Recency stamp: the key of this entry in `LruShard::recency`.
    stamp: u64,
}

#[derive(Default)]
struct LruShard {
    capacity: usize,
    usage: usize,
    clock: u64,
    entries: HashMap<BlockKey, CacheEntry>,
    /// Least recently used first.
    recency: BTreeMap<u64, BlockKey>,
}

impl LruShard {
    fn touch(&mut self, key: BlockKey) -> Option<Arc<Block>> {
        self.clock += 1;
        let stamp = self.clock;
        let entry = self.entries.get_mut(&key)?;
        self.recency.remove(&entry.stamp);
        entry.stamp = stamp;
        self.recency.insert(stamp, key);
        Some(Arc::clone(&entry.block))
    }

    fn remove(&mut self, key: &BlockKey) -> bool {
        match self.entries.remove(key) {
            Some(entry) => {
                self.recency.remove(&entry.stamp);
                self.usage -= entry.charge;
                true
            }
            None => false,
        }
    }

    /// Inserts and returns how many blocks were evicted.
    fn insert(&mut self, key: BlockKey, block: Arc<Block>) -> u64 {
        let charge = block.charge();
        self.remove(&key);
        if charge > self.capacity {
            return 0;
        }
        let mut evicted = 0;
        while self.usage + charge > self.capacity {
            let Some((_, oldest)) = self.recency.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&oldest) {
                self.usage -= entry.charge;
                evicted += 1;
            }
        }
        self.clock += 1;
        let stamp = self.clock;
        self.recency.insert(stamp, key);
        self.entries.insert(
            key,
            CacheEntry {
                block,
                charge,
                stamp,
            },
        );
        self.usage += charge;
        evicted
    }
}

/// A sharded LRU cache of decoded blocks, shared by the readers of many SST files.
pub struct BlockCache {
    shards: Box<[Mutex<LruShard>]>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("shards", &self.shards.len())
            .field("stats", &self.stats())
            .finish()
    }
}

impl BlockCache {
    /// A cache of `capacity` bytes over [`DEFAULT_SHARDS`] shards.
    pub fn new(capacity: usize) -> Self {
        BlockCache::with_shards(capacity, DEFAULT_SHARDS)
    }

    /// A cache of `capacity` bytes over `shards` shards (at least 1); each shard holds
    /// `capacity / shards` bytes, and a block larger than that is never cached.
    pub fn with_shards(capacity: usize, shards: usize) -> Self {
        let shards = shards.max(1);
        let per_shard = capacity / shards;
        BlockCache {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(LruShard {
                        capacity: per_shard,
                        ..LruShard::default()
                    })
                })
                .collect(),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &BlockKey) -> &Mutex<LruShard> {
        // splitmix64's finalizer spreads consecutive offsets of one file over the shards.
        let mut h = key.file_number.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key.offset;
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        let index = (h % self.shards.len() as u64) as usize;
        &self.shards[index]
    }

    /// The cached block at (`file_number`, `offset`), marking it most recently used.
    pub fn get(&self, file_number: u64, offset: u64) -> Option<Arc<Block>> {
        let key = BlockKey {
            file_number,
            offset,
        };
        let found = self.shard(&key).lock().touch(key);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Caches `block` under (`file_number`, `offset`), evicting least recently used blocks of
    /// its shard to make room.
    pub fn insert(&self, file_number: u64, offset: u64, block: Arc<Block>) {
        let key = BlockKey {
            file_number,
            offset,
        };
        let evicted = self.shard(&key).lock().insert(key, block);
        self.evictions.fetch_add(evicted, Ordering::Relaxed);
    }

    /// Drops every block of `file_number` (call when the file is deleted, so its memory map
    /// is released).
    pub fn erase_file(&self, file_number: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let keys: Vec<BlockKey> = shard
                .entries
                .keys()
                .filter(|k| k.file_number == file_number)
                .copied()
                .collect();
            for key in keys {
                shard.remove(&key);
            }
        }
    }

    /// Current counters and usage.
    pub fn stats(&self) -> BlockCacheStats {
        let (usage, entries) = self.shards.iter().fold((0, 0), |(usage, entries), shard| {
            let shard = shard.lock();
            (usage + shard.usage, entries + shard.entries.len())
        });
        BlockCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            usage,
            entries,
            capacity: self.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::block::{BlockBuilder, Compression};

    fn block_of(value_len: usize) -> Arc<Block> {
        let mut builder = BlockBuilder::new(16, Compression::None);
        builder.add(b"k", &vec![7u8; value_len]).unwrap();
        Arc::new(Block::decode(&builder.finish(), "t", 0).unwrap())
    }

    #[test]
    fn counts_hits_and_misses() {
        let cache = BlockCache::new(1 << 20);
        assert!(cache.get(1, 0).is_none());
        cache.insert(1, 0, block_of(10));
        assert!(cache.get(1, 0).is_some());
        assert!(cache.get(1, 4096).is_none());
        assert!(cache.get(2, 0).is_none());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 3, 1));
        assert_eq!(stats.usage, block_of(10).charge());
    }

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let charge = block_of(100).charge();
        let cache = BlockCache::with_shards(3 * charge, 1);
        for offset in 0..3 {
            cache.insert(1, offset, block_of(100));
        }
        // Touch 0 so that 1 is now the least recently used.
        assert!(cache.get(1, 0).is_some());
        cache.insert(1, 3, block_of(100));
        assert!(cache.get(1, 1).is_none());
        for offset in [0, 2, 3] {
            assert!(cache.get(1, offset).is_some(), "offset {offset}");
        }
        let stats = cache.stats();
        assert_eq!(stats.evictions, 1);
        assert_eq!(stats.usage, 3 * charge);
        assert!(stats.usage <= stats.capacity);
        // A block larger than a shard is not cached at all.
        cache.insert(2, 0, block_of(10 * charge));
        assert!(cache.get(2, 0).is_none());
        assert_eq!(cache.stats().entries, 3);
    }

    #[test]
    fn reinsert_replaces_and_erase_file_drops() {
        let cache = BlockCache::with_shards(1 << 20, 4);
        cache.insert(1, 0, block_of(10));
        cache.insert(1, 0, block_of(20));
        cache.insert(1, 64, block_of(10));
        cache.insert(2, 0, block_of(10));
        assert_eq!(
            cache.stats().usage,
            block_of(20).charge() + 2 * block_of(10).charge()
        );
        cache.erase_file(1);
        let stats = cache.stats();
        assert_eq!(stats.entries, 1);
        assert!(cache.get(2, 0).is_some());
        assert!(cache.get(1, 64).is_none());
    }
}
