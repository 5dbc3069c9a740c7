//! A sharded LRU cache of decoded SST blocks, keyed by (file number, block offset).
//!
//! Capacity is in bytes (each block is charged [`Block::charge`] plus [`ENTRY_OVERHEAD`]), split
//! evenly over the shards; each shard is a mutex around a map into a slab of slots linked in
//! recency order (O(1) hits and evictions). File numbers must be unique among
//! the files that share one cache, or one file's blocks would answer for another's.
//!
//! On a [`MemoryBudget`] the cache charges every block before it holds it: when the budget is
//! full it evicts its own least recently used blocks, then asks the other reclaimers on the
//! budget, and leaves the block uncached if that is still not enough. It is itself a
//! [`Reclaim`]er, so writers and other caches on the budget can make it evict.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::budget::{Component, MemoryBudget, Reclaim};
use crate::codec::block::Block;
use crate::hash::KeyHasherBuilder;

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
    /// Blocks left uncached because the memory budget was full.
    pub refused: u64,
    /// Bytes charged by the cached blocks.
    pub usage: usize,
    /// Number of cached blocks.
    pub entries: usize,
    /// Capacity in bytes.
    pub capacity: usize,
}

/// Marks the end of the recency list.
const NIL: u32 = u32::MAX;

/// Memory a cached block costs beyond [`Block::charge`]: its slot, its map entry and the
/// `Arc`'s counters, so that the capacity bounds what the cache really holds.
pub const ENTRY_OVERHEAD: usize =
    std::mem::size_of::<Slot>() + std::mem::size_of::<(BlockKey, u32)>() + 2 * 8;

/// One cached block in a shard's slab, linked into the recency list by slab indices.
struct Slot {
    key: BlockKey,
    /// `None` while the slot is free.
    block: Option<Arc<Block>>,
    charge: usize,
    /// Towards the most recently used end.
    prev: u32,
    /// Towards the least recently used end.
    next: u32,
}

/// splitmix64's finalizer.
fn mix64(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// One shard: a map from key to slab slot, and a doubly linked recency list through the slab
/// (most recently used at `head`), so hits, inserts and evictions are O(1).
struct LruShard {
    capacity: usize,
    usage: usize,
    map: HashMap<BlockKey, u32, KeyHasherBuilder>,
    slots: Vec<Slot>,
    /// Free slots of the slab.
    free: Vec<u32>,
    head: u32,
    tail: u32,
}

impl LruShard {
    fn new(capacity: usize) -> Self {
        LruShard {
            capacity,
            usage: 0,
            map: HashMap::with_hasher(KeyHasherBuilder::random()),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    fn slot(&mut self, index: u32) -> Option<&mut Slot> {
        self.slots.get_mut(index as usize)
    }

    /// Takes slot `index` out of the recency list.
    fn unlink(&mut self, index: u32) {
        let Some(slot) = self.slot(index) else {
            return;
        };
        let (prev, next) = (slot.prev, slot.next);
        slot.prev = NIL;
        slot.next = NIL;
        match self.slot(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slot(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    /// Links slot `index` in as the most recently used.
    fn push_front(&mut self, index: u32) {
        let old_head = self.head;
        if let Some(slot) = self.slot(index) {
            slot.prev = NIL;
            slot.next = old_head;
        }
        match self.slot(old_head) {
            Some(h) => h.prev = index,
            None => self.tail = index,
        }
        self.head = index;
    }

    fn touch(&mut self, key: BlockKey) -> Option<Arc<Block>> {
        let index = *self.map.get(&key)?;
        if self.head != index {
            self.unlink(index);
            self.push_front(index);
        }
        self.slots
            .get(index as usize)
            .and_then(|slot| slot.block.clone())
    }

    /// Unlinks and frees slot `index` (already out of the map).
    fn release(&mut self, index: u32) {
        self.unlink(index);
        if let Some(slot) = self.slot(index) {
            slot.block = None;
            let charge = std::mem::take(&mut slot.charge);
            self.usage -= charge;
            self.free.push(index);
        }
    }

    fn remove(&mut self, key: &BlockKey) -> bool {
        match self.map.remove(key) {
            Some(index) => {
                self.release(index);
                true
            }
            None => false,
        }
    }

    /// Evicts least recently used blocks until `bytes` are freed or the shard is empty;
    /// returns the bytes freed and the blocks evicted.
    fn evict_bytes(&mut self, bytes: usize) -> (usize, u64) {
        let before = self.usage;
        let mut evicted = 0;
        while before - self.usage < bytes && self.tail != NIL {
            let oldest = self.tail;
            if let Some(slot) = self.slots.get(oldest as usize) {
                let old_key = slot.key;
                self.map.remove(&old_key);
            }
            self.release(oldest);
            evicted += 1;
        }
        (before - self.usage, evicted)
    }

    /// Inserts and returns how many blocks were evicted. A block larger than the shard is not
    /// cached.
    fn insert(&mut self, key: BlockKey, block: Arc<Block>) -> u64 {
        let charge = block.charge() + ENTRY_OVERHEAD;
        self.remove(&key);
        if charge > self.capacity {
            return 0;
        }
        let mut evicted = 0;
        while self.usage + charge > self.capacity && self.tail != NIL {
            let oldest = self.tail;
            if let Some(slot) = self.slots.get(oldest as usize) {
                let old_key = slot.key;
                self.map.remove(&old_key);
            }
            self.release(oldest);
            evicted += 1;
        }
        let slot = Slot {
            key,
            block: Some(block),
            charge,
            prev: NIL,
            next: NIL,
        };
        let index = match self.free.pop() {
            Some(index) => {
                if let Some(free) = self.slot(index) {
                    *free = slot;
                }
                index
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.push_front(index);
        self.map.insert(key, index);
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
    /// The budget every cached byte is charged to, and this cache's reclaimer id on it.
    budget: Option<(Arc<MemoryBudget>, usize)>,
    /// Blocks left uncached because the budget was full.
    refused: AtomicU64,
    /// Where the next budget eviction starts, so it does not always empty the same shard.
    next_victim: AtomicUsize,
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
                .map(|_| Mutex::new(LruShard::new(per_shard)))
                .collect(),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            budget: None,
            refused: AtomicU64::new(0),
            next_victim: AtomicUsize::new(0),
        }
    }

    /// A cache of `capacity` bytes whose blocks are also charged to `budget` (none: the plain
    /// [`BlockCache::new`]); registered on the budget as a reclaimer.
    pub fn with_budget(capacity: usize, budget: Option<Arc<MemoryBudget>>) -> Arc<BlockCache> {
        let Some(budget) = budget else {
            return Arc::new(BlockCache::new(capacity));
        };
        Arc::new_cyclic(|weak: &std::sync::Weak<BlockCache>| {
            let id = budget.register(weak.clone() as std::sync::Weak<dyn Reclaim>);
            let mut cache = BlockCache::new(capacity);
            cache.budget = Some((budget, id));
            cache
        })
    }

    /// The budget the cache charges, if any.
    pub fn budget(&self) -> Option<&Arc<MemoryBudget>> {
        self.budget.as_ref().map(|(b, _)| b)
    }

    /// Hands `bytes` the cache no longer holds back to the budget.
    fn release(&self, bytes: usize) {
        if let Some((budget, _)) = &self.budget {
            budget.release(Component::BlockCache, bytes);
        }
    }

    /// Evicts least recently used blocks, a shard at a time, until about `bytes` are freed;
    /// returns the bytes freed (already released to the budget).
    pub fn evict_bytes(&self, bytes: usize) -> usize {
        let shards = self.shards.len();
        let start = self.next_victim.fetch_add(1, Ordering::Relaxed);
        let mut freed = 0;
        for i in 0..shards {
            if freed >= bytes {
                break;
            }
            let (bytes_freed, evicted) = self.shards[(start + i) % shards]
                .lock()
                .evict_bytes((bytes - freed).div_ceil(shards - i));
            freed += bytes_freed;
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        if freed < bytes {
            for shard in self.shards.iter() {
                if freed >= bytes {
                    break;
                }
                let (bytes_freed, evicted) = shard.lock().evict_bytes(bytes - freed);
                freed += bytes_freed;
                self.evictions.fetch_add(evicted, Ordering::Relaxed);
            }
        }
        self.release(freed);
        freed
    }

    /// Charges `charge` bytes to the budget, evicting this cache's blocks and then asking the
    /// other reclaimers when it is full; false when there is still no room. Called without any
    /// shard lock held, so two caches reclaiming from each other cannot deadlock.
    fn charge_budget(&self, budget: &MemoryBudget, id: usize, charge: usize) -> bool {
        if budget.try_charge(Component::BlockCache, charge) {
            return true;
        }
        self.evict_bytes(charge);
        if budget.try_charge(Component::BlockCache, charge) {
            return true;
        }
        budget.reclaim(charge, id);
        budget.try_charge(Component::BlockCache, charge)
    }

    fn shard(&self, key: &BlockKey) -> &Mutex<LruShard> {
        // splitmix64's finalizer spreads consecutive offsets of one file over the shards.
        let h = mix64(key.file_number.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key.offset);
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
        let Some((budget, id)) = &self.budget else {
            let evicted = self.shard(&key).lock().insert(key, block);
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
            return;
        };
        let charge = block.charge() + ENTRY_OVERHEAD;
        if !self.charge_budget(budget, *id, charge) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (evicted, released) = {
            let mut shard = self.shard(&key).lock();
            let before = shard.usage;
            let evicted = shard.insert(key, block);
            (evicted, before + charge - shard.usage)
        };
        self.evictions.fetch_add(evicted, Ordering::Relaxed);
        self.release(released);
    }

    /// Drops every block of `file_number` (call when the file is deleted, so its memory map
    /// is released).
    pub fn erase_file(&self, file_number: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let keys: Vec<BlockKey> = shard
                .map
                .keys()
                .filter(|k| k.file_number == file_number)
                .copied()
                .collect();
            let before = shard.usage;
            for key in keys {
                shard.remove(&key);
            }
            let freed = before - shard.usage;
            drop(shard);
            self.release(freed);
        }
    }

    /// Current counters and usage.
    pub fn stats(&self) -> BlockCacheStats {
        let (usage, entries) = self.shards.iter().fold((0, 0), |(usage, entries), shard| {
            let shard = shard.lock();
            (usage + shard.usage, entries + shard.map.len())
        });
        BlockCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            usage,
            entries,
            capacity: self.capacity,
        }
    }
}

impl Reclaim for BlockCache {
    fn reclaim(&self, bytes: usize) -> usize {
        self.evict_bytes(bytes)
    }
}

impl Drop for BlockCache {
    fn drop(&mut self) {
        let usage: usize = self.shards.iter().map(|s| s.lock().usage).sum();
        self.release(usage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::block::{BlockBuilder, Compression};
    use proptest::prelude::*;

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
        assert_eq!(stats.usage, block_of(10).charge() + ENTRY_OVERHEAD);
    }

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let charge = block_of(100).charge() + ENTRY_OVERHEAD;
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
            block_of(20).charge() + 2 * block_of(10).charge() + 3 * ENTRY_OVERHEAD
        );
        cache.erase_file(1);
        let stats = cache.stats();
        assert_eq!(stats.entries, 1);
        assert!(cache.get(2, 0).is_some());
        assert!(cache.get(1, 64).is_none());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Get(u64),
        Insert(u64, usize),
        EraseFile(u64),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..12).prop_map(Op::Get),
            ((0u64..12), (0usize..300)).prop_map(|(k, len)| Op::Insert(k, len)),
            (0u64..3).prop_map(Op::EraseFile),
        ]
    }

    proptest! {
        /// One shard against a model: a list in recency order (most recent first) with the
        /// charges, evicting from the back until the new block fits.
        #[test]
        fn lru_matches_model(ops in proptest::collection::vec(op_strategy(), 1..200)) {
            let capacity = 4 * (block_of(150).charge() + ENTRY_OVERHEAD);
            let cache = BlockCache::with_shards(capacity, 1);
            let mut model: Vec<(BlockKey, usize, usize)> = Vec::new(); // key, value len, charge
            let key_of = |k: u64| BlockKey { file_number: k % 3, offset: k * 4096 };
            let mut evictions = 0;
            for op in &ops {
                match *op {
                    Op::Get(k) => {
                        let key = key_of(k);
                        let found = cache.get(key.file_number, key.offset);
                        let at = model.iter().position(|e| e.0 == key);
                        prop_assert_eq!(found.is_some(), at.is_some());
                        if let (Some(block), Some(at)) = (found, at) {
                            let entry = model.remove(at);
                            prop_assert_eq!(block.charge() + ENTRY_OVERHEAD, entry.2);
                            model.insert(0, entry);
                        }
                    }
                    Op::Insert(k, len) => {
                        let key = key_of(k);
                        let block = block_of(len);
                        let charge = block.charge() + ENTRY_OVERHEAD;
                        cache.insert(key.file_number, key.offset, block);
                        model.retain(|e| e.0 != key);
                        if charge <= capacity {
                            while model.iter().map(|e| e.2).sum::<usize>() + charge > capacity {
                                model.pop();
                                evictions += 1;
                            }
                            model.insert(0, (key, len, charge));
                        }
                    }
                    Op::EraseFile(f) => {
                        cache.erase_file(f);
                        model.retain(|e| e.0.file_number != f);
                    }
                }
                let stats = cache.stats();
                prop_assert_eq!(stats.entries, model.len());
                prop_assert_eq!(stats.usage, model.iter().map(|e| e.2).sum::<usize>());
                prop_assert!(stats.usage <= stats.capacity);
                prop_assert_eq!(stats.evictions, evictions);
            }
            // The recency order itself: walking the list from the head gives the model's order.
            let shard = cache.shards[0].lock();
            let mut order = Vec::new();
            let mut at = shard.head;
            while let Some(slot) = shard.slots.get(at as usize) {
                order.push(slot.key);
                at = slot.next;
            }
            prop_assert_eq!(order, model.iter().map(|e| e.0).collect::<Vec<_>>());
        }
    }
}
