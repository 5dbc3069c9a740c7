//! The write-back cache in front of an [`LsmBackend`](super::LsmBackend)'s store (Kafka Streams'
//! record cache in front of RocksDB): the operator thread's point reads and writes hit hash maps,
//! and the writes of one checkpoint interval reach the store once, sorted, in that checkpoint's
//! asynchronous part.
//!
//! DESIGN. Per state, `latest` holds the newest value of every key it holds (`None`: known
//! absent) — always every key written since the store last received every write, so a miss
//! means the store is current — and `dirty` logs the writes since the last snapshot in order
//! (appending needs no lookup; applying keeps each key's last write). A snapshot's synchronous part moves
//! every `dirty` map into a [`FrozenWrites`] batch (O(states), no copy) queued in
//! [`PendingWrites`]. Applying a batch writes its entries into the store and then freezes the
//! memtables: the freeze's sequence is that checkpoint's, so the checkpoint holds exactly the
//! writes before its barrier. Batches are applied once, in order, by whichever thread comes
//! first (the checkpoint's asynchronous part, or the operator thread when it must write to the
//! store itself: a merge, a prefix scan or delete, a spill of an over-full cache). Invariant:
//! nothing writes to the store while an earlier batch waits, so no write after a barrier lands
//! below that barrier's freeze. Evicting cached entries first hands the store every write.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use hashbrown::HashTable;
use parking_lot::Mutex;

use crate::backend::{ReadModifyWrite, StateDescriptor, StateId};
use crate::budget::{Component, MemoryBudget, Reservation};
use crate::error::Result;
use crate::hash::KeyHasherBuilder;
use crate::lsm::batch::WriteBatch;
use crate::lsm::{ColumnFamily, Db};

/// Bytes charged per cached entry on top of its key and value: the table slot (with its share
/// of empty slots) and the header of the entry's one allocation.
pub const ENTRY_OVERHEAD: usize = 64;

/// The backend's registered states by `StateId`: descriptor and column family.
pub type States = [(StateDescriptor, ColumnFamily)];

/// Entries per store write batch when a batch or a spill is written (bounds the batch's memory).
const WRITE_CHUNK: usize = 4096;

/// Key and value bytes of up to this many bytes are stored in the slot itself.
const INLINE: usize = 30;

/// A slot's key and value bytes: inline when short (no allocation, no pointer to follow on a
/// lookup), else one allocation.
#[derive(Debug)]
enum Bytes {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Bytes {
    fn concat(key: &[u8], value: &[u8]) -> Bytes {
        let len = key.len() + value.len();
        if len <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..key.len()].copy_from_slice(key);
            buf[key.len()..len].copy_from_slice(value);
            // len <= INLINE < 256.
            Bytes::Inline {
                len: len as u8,
                buf,
            }
        } else {
            let mut bytes = Vec::with_capacity(len);
            bytes.extend_from_slice(key);
            bytes.extend_from_slice(value);
            Bytes::Heap(bytes.into_boxed_slice())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Inline { len, buf } => &buf[..*len as usize],
            Bytes::Heap(b) => b,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Bytes::Inline { len, buf } => &mut buf[..*len as usize],
            Bytes::Heap(b) => b,
        }
    }
}

/// One cached key: key and value together (inline when short), the key's hash, and whether
/// the value is present (`false`: deleted / known absent).
#[derive(Debug)]
struct Slot {
    bytes: Bytes,
    hash: u64,
    key_len: u32,
    present: bool,
}

impl Slot {
    fn new(hash: u64, key: &[u8], value: Option<&[u8]>) -> Slot {
        Slot {
            bytes: Bytes::concat(key, value.unwrap_or_default()),
            hash,
            // Composite keys are far below 4 GiB (the key codec bounds them).
            key_len: u32::try_from(key.len()).unwrap_or(u32::MAX),
            present: value.is_some(),
        }
    }

    fn key(&self) -> &[u8] {
        &self.bytes.as_slice()[..self.key_len as usize]
    }

    fn value(&self) -> Option<&[u8]> {
        self.present
            .then(|| &self.bytes.as_slice()[self.key_len as usize..])
    }

    fn matches(&self, hash: u64, key: &[u8]) -> bool {
        self.hash == hash && self.key() == key
    }

    fn cost(&self) -> usize {
        self.bytes.as_slice().len() + ENTRY_OVERHEAD
    }

    /// Replaces the value, in place when the length matches.
    fn set(&mut self, value: Option<&[u8]>) {
        let key_len = self.key_len as usize;
        let new = value.unwrap_or_default();
        let bytes = self.bytes.as_mut_slice();
        if bytes.len() - key_len == new.len() {
            bytes[key_len..].copy_from_slice(new);
        } else {
            self.bytes = Bytes::concat(&bytes[..key_len], new);
        }
        self.present = value.is_some();
    }

    /// The first 16 key bytes as a big-endian number (zero-padded).
    fn key_prefix16(&self) -> u128 {
        let mut word = [0u8; 16];
        let key = self.key();
        let n = key.len().min(16);
        word[..n].copy_from_slice(&key[..n]);
        u128::from_be_bytes(word)
    }
}

/// Key -> value, by the cache's hash.
#[derive(Debug, Default)]
struct Table {
    slots: HashTable<Slot>,
}

impl Table {
    fn find(&self, hash: u64, key: &[u8]) -> Option<&Slot> {
        self.slots.find(hash, |s| s.matches(hash, key))
    }

    /// Sets `key` to `value`; returns the change in charged bytes.
    fn upsert(&mut self, hash: u64, key: &[u8], value: Option<&[u8]>) -> isize {
        match self.slots.find_mut(hash, |s| s.matches(hash, key)) {
            Some(slot) => {
                let before = slot.cost() as isize;
                slot.set(value);
                slot.cost() as isize - before
            }
            None => {
                let slot = Slot::new(hash, key, value);
                let cost = slot.cost() as isize;
                self.slots.insert_unique(hash, slot, |s| s.hash);
                cost
            }
        }
    }

    fn remove(&mut self, hash: u64, key: &[u8]) -> Option<Slot> {
        self.slots
            .find_entry(hash, |s| s.matches(hash, key))
            .ok()
            .map(|e| e.remove().0)
    }

    fn cost(&self) -> usize {
        self.slots.iter().map(Slot::cost).sum()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }

    /// Drops about half of the entries (those whose hash has bit `bit` set); returns the bytes freed.
    fn evict_half(&mut self, bit: u32) -> usize {
        let mut freed = 0;
        self.slots.retain(|s| {
            let keep = (s.hash >> bit) & 1 == 0;
            if !keep {
                freed += s.cost();
            }
            keep
        });
        freed
    }
}

/// Writes in the order they were made (appending costs no lookup); applying one keeps the last
/// write of each key.
#[derive(Debug, Default)]
struct WriteLog {
    entries: Vec<Slot>,
}

impl WriteLog {
    fn with_capacity(capacity: usize) -> WriteLog {
        WriteLog {
            entries: Vec::with_capacity(capacity),
        }
    }

    /// Appends a write; returns its charged bytes.
    fn push(&mut self, key: &[u8], value: Option<&[u8]>) -> usize {
        let slot = Slot::new(0, key, value);
        let cost = slot.cost();
        self.entries.push(slot);
        cost
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The last write of each key, in key order.
    fn last_writes(&self) -> Vec<&Slot> {
        // Sorted by (first 16 key bytes zero-padded, key length, position): for keys of at
        // most 16 bytes that is byte order and equal keys sit together, with no pointer to
        // follow; longer keys that tie on 16 bytes are compared in full. The last of a run of
        // equal keys wins.
        let mut order: Vec<(u128, u32, u32)> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key_prefix16(), s.key_len, i as u32))
            .collect();
        let key = |i: u32| self.entries[i as usize].key();
        order.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| {
                    if a.1 <= 16 && b.1 <= 16 {
                        a.1.cmp(&b.1)
                    } else {
                        key(a.2).cmp(key(b.2))
                    }
                })
                .then(a.2.cmp(&b.2))
        });
        let mut last: Vec<&Slot> = Vec::with_capacity(order.len());
        let mut previous: Option<(u128, u32)> = None;
        for (prefix, len, i) in order {
            let slot = &self.entries[i as usize];
            let same = previous == Some((prefix, len))
                && (len <= 16 || last.last().is_some_and(|p| p.key() == slot.key()));
            match last.last_mut() {
                Some(p) if same => *p = slot,
                _ => last.push(slot),
            }
            previous = Some((prefix, len));
        }
        last
    }

    /// Writes the last write of every key into `cf` of `db` in key order, in chunks.
    fn write_to(&self, db: &Db, cf: &ColumnFamily) -> Result<()> {
        for chunk in self.last_writes().chunks(WRITE_CHUNK) {
            // Sized up front: a chunk's batch is written without growing.
            let bytes = chunk.iter().map(|s| s.bytes.as_slice().len() + 16).sum();
            let mut batch = WriteBatch::with_capacity(bytes);
            for slot in chunk {
                match slot.value() {
                    Some(value) => batch.put(cf, slot.key(), value)?,
                    None => batch.delete(cf, slot.key())?,
                }
            }
            db.write(batch)?;
        }
        Ok(())
    }
}

/// One checkpoint interval's writes, frozen by a snapshot's synchronous part.
#[derive(Debug)]
pub struct FrozenWrites {
    /// Position in the backend's sequence of batches.
    ordinal: u64,
    /// Per state (by `StateId`): its column family and its writes.
    states: Vec<(ColumnFamily, WriteLog)>,
    /// The sequence of the memtable freeze that followed the batch's writes, once applied.
    sequence: OnceLock<u64>,
    /// The writes' memory on the budget (the write cache's charge for them, moved here).
    _charge: Reservation,
}

impl FrozenWrites {
    /// The checkpoint's sequence, once the batch is in the store.
    pub fn sequence(&self) -> Option<u64> {
        self.sequence.get().copied()
    }
}

/// The queue of frozen batches not yet in the store, shared by a backend and its snapshot tasks.
#[derive(Debug, Default)]
pub struct PendingWrites {
    /// Held only to push, peek and pop: a snapshot's synchronous part never waits for an
    /// application in progress.
    queue: Mutex<VecDeque<Arc<FrozenWrites>>>,
    /// Held while batches are applied, so they go into the store one at a time, in order.
    applying: Mutex<()>,
}

impl PendingWrites {
    /// Applies, in order, every queued batch up to and including ordinal `through` (every batch
    /// when `None`): writes its entries, then freezes the memtables and records the sequence.
    /// A batch that fails stays queued (applying it again writes the same values).
    pub fn apply_through(&self, db: &Db, through: Option<u64>) -> Result<()> {
        let _applying = self.applying.lock();
        loop {
            let Some(batch) = self.queue.lock().front().cloned() else {
                return Ok(());
            };
            if through.is_some_and(|last| batch.ordinal > last) {
                return Ok(());
            }
            for (cf, log) in &batch.states {
                if !log.is_empty() {
                    log.write_to(db, cf)?;
                }
            }
            let sequence = db.freeze_memtables()?;
            // Set once: only the holder of `applying` applies, and the batch leaves the queue now.
            let _ = batch.sequence.set(sequence);
            self.queue.lock().pop_front();
        }
    }

    /// Applies every batch up to and including `batch` (if not applied already) and returns
    /// the sequence of the freeze that followed it: the sequence of `batch`'s checkpoint.
    pub fn apply(&self, db: &Db, batch: &FrozenWrites) -> Result<u64> {
        if let Some(sequence) = batch.sequence() {
            return Ok(sequence);
        }
        self.apply_through(db, Some(batch.ordinal))?;
        batch.sequence().ok_or_else(|| {
            crate::error::Error::invalid(format!(
                "write batch {} was not applied to the store (it belongs to a store a restore \
                 replaced)",
                batch.ordinal
            ))
        })
    }

    fn is_empty(&self) -> bool {
        self.queue.lock().is_empty()
    }
}

/// A cache lookup's answer.
pub enum Lookup<'a> {
    /// The cache knows the key: its value, or `None` when it is deleted or absent.
    Hit(Option<&'a [u8]>),
    /// Ask the store (then [`WriteCache::fill`]).
    Miss,
}

#[derive(Debug, Default)]
struct StateCache {
    /// The newest value of each key held. Holds every key written since the store last got
    /// every write (a settle): evicting needs a settle first.
    latest: Table,
    /// Writes since the last snapshot, in order.
    dirty: WriteLog,
    /// Writes of the last frozen batch: the next log starts with room for as many.
    last_dirty_len: usize,
}

impl StateCache {
    /// Logs a write (the first of an interval sizes the log like the last interval's); returns
    /// its charged bytes.
    fn log(&mut self, key: &[u8], value: Option<&[u8]>) -> usize {
        if self.dirty.entries.capacity() == 0 && self.last_dirty_len > 0 {
            self.dirty = WriteLog::with_capacity(self.last_dirty_len);
        }
        self.dirty.push(key, value)
    }
}

/// The operator thread's side of the cache (owned by the backend).
#[derive(Debug)]
pub struct WriteCache {
    capacity: usize,
    hasher: KeyHasherBuilder,
    states: Vec<StateCache>,
    latest_bytes: usize,
    dirty_bytes: usize,
    /// Which hash bit the next eviction uses (so evictions do not always hit the same keys).
    eviction_bit: u32,
    pending: Arc<PendingWrites>,
    next_ordinal: u64,
    /// Reused output buffer of [`WriteCache::update_cached`].
    scratch: Vec<u8>,
    /// The charge on the memory budget for `latest_bytes + dirty_bytes`.
    reservation: Reservation,
}

/// The share of a memory budget all write caches on it may hold together: the rest is left to
/// memtables and block caches, so the memtables a settle writes into can always get memory.
const WRITE_CACHE_SHARE: usize = 4;

impl WriteCache {
    /// A cache of about `capacity` bytes (0: disabled) charging its bytes to `budget`: when the budget (or the write
    /// caches' quarter of it) is full, the cache reports itself over budget, so it settles and
    /// evicts.
    pub fn with_budget(capacity: usize, budget: Option<Arc<MemoryBudget>>) -> Self {
        WriteCache {
            reservation: Reservation::new(budget, Component::WriteCache),
            capacity,
            hasher: KeyHasherBuilder::random(),
            states: Vec::new(),
            latest_bytes: 0,
            dirty_bytes: 0,
            eviction_bit: 7,
            pending: Arc::new(PendingWrites::default()),
            next_ordinal: 0,
            scratch: Vec::new(),
        }
    }

    /// Whether reads and writes go through the cache.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The queue shared with snapshot tasks.
    pub fn pending(&self) -> &Arc<PendingWrites> {
        &self.pending
    }

    fn state(&mut self, state: StateId) -> &mut StateCache {
        let index = state.0 as usize;
        if self.states.len() <= index {
            self.states.resize_with(index + 1, StateCache::default);
        }
        &mut self.states[index]
    }

    /// Whether the cache is over its budget: the caller should [`WriteCache::settle`] every
    /// state and then [`WriteCache::evict`].
    fn over_budget(&mut self) -> bool {
        if self.latest_bytes > self.capacity || self.dirty_bytes > self.capacity / 2 {
            return true;
        }
        let held = self.latest_bytes + self.dirty_bytes;
        !self.reservation.covers(held) && !self.try_cover(held)
    }

    /// Grows the budget charge to `bytes`, within the write caches' share of the budget.
    fn try_cover(&mut self, bytes: usize) -> bool {
        let cap = self
            .reservation
            .budget()
            .map_or(usize::MAX, |b| b.limit() / WRITE_CACHE_SHARE);
        self.reservation.try_cover_within(bytes, cap)
    }

    /// What the cache knows of `key`. A key written since the store last got every write is
    /// always here, so a miss means the store has the newest value.
    pub fn get(&self, state: StateId, key: &[u8]) -> Lookup<'_> {
        let Some(cache) = self.states.get(state.0 as usize) else {
            return Lookup::Miss;
        };
        match cache.latest.find(self.hasher.hash_one(key), key) {
            Some(slot) => Lookup::Hit(slot.value()),
            None => Lookup::Miss,
        }
    }

    /// Remembers what the store returned for `key` (after a [`Lookup::Miss`]). Returns true
    /// when the cache is over its budget (settle, then evict).
    pub fn fill(&mut self, state: StateId, key: &[u8], value: Option<&[u8]>) -> bool {
        if !self.enabled() {
            return false;
        }
        let hash = self.hasher.hash_one(key);
        let delta = self.state(state).latest.upsert(hash, key, value);
        self.latest_bytes = self.latest_bytes.saturating_add_signed(delta);
        self.over_budget()
    }

    /// Records a write (`None`: a delete). Returns true when the cache is over its budget
    /// (settle, then evict).
    pub fn write(&mut self, state: StateId, key: &[u8], value: Option<&[u8]>) -> bool {
        let hash = self.hasher.hash_one(key);
        let cache = self.state(state);
        let latest = cache.latest.upsert(hash, key, value);
        let dirty = cache.log(key, value);
        self.latest_bytes = self.latest_bytes.saturating_add_signed(latest);
        self.dirty_bytes += dirty;
        self.over_budget()
    }

    /// Read-modify-write of `key` when the cache holds its newest value: `f` gets that value
    /// and writes the new one into a cleared buffer, which is then recorded as a write (nothing
    /// is written when `f` fails). Returns `None` (nothing called) when the cache does not hold
    /// the key — the caller reads and writes through the backend — or `Some(over_budget)` as
    /// [`WriteCache::write`] does.
    pub fn update_cached(
        &mut self,
        state: StateId,
        key: &[u8],
        f: &mut ReadModifyWrite<'_>,
    ) -> Result<Option<bool>> {
        let hash = self.hasher.hash_one(key);
        let Some(cache) = self.states.get_mut(state.0 as usize) else {
            return Ok(None);
        };
        let Some(slot) = cache.latest.slots.find_mut(hash, |s| s.matches(hash, key)) else {
            return Ok(None);
        };
        let scratch = &mut self.scratch;
        scratch.clear();
        f(slot.value(), scratch)?;
        let before = slot.cost();
        slot.set(Some(scratch));
        let latest = slot.cost() as isize - before as isize;
        let dirty = cache.log(key, Some(&self.scratch));
        self.latest_bytes = self.latest_bytes.saturating_add_signed(latest);
        self.dirty_bytes += dirty;
        Ok(Some(self.over_budget()))
    }

    /// Evicts about half of the cached entries (all, if that is not enough) when over the
    /// capacity. Only right after a settle of every state: then the store holds every write.
    pub fn evict(&mut self) {
        let held = self.latest_bytes + self.dirty_bytes;
        if self.latest_bytes <= self.capacity
            && (self.reservation.covers(held) || self.try_cover(held))
        {
            self.reservation.shrink_to(held);
            return;
        }
        let bit = self.eviction_bit;
        self.eviction_bit = 7 + (self.eviction_bit - 6) % 50;
        for cache in &mut self.states {
            let freed = cache.latest.evict_half(bit);
            self.latest_bytes = self.latest_bytes.saturating_sub(freed);
        }
        let held = self.latest_bytes + self.dirty_bytes;
        if self.latest_bytes > self.capacity
            || !(self.reservation.covers(held) || self.try_cover(held))
        {
            for cache in &mut self.states {
                cache.latest = Table::default();
            }
            self.latest_bytes = 0;
        }
        self.reservation
            .shrink_to(self.latest_bytes + self.dirty_bytes);
    }

    /// Moves the writes since the last snapshot into a new frozen batch, queued for the store.
    pub fn freeze(&mut self, states: &States) -> Arc<FrozenWrites> {
        let states = states
            .iter()
            .enumerate()
            .map(|(index, (_, cf))| {
                let dirty = match self.states.get_mut(index) {
                    Some(cache) => {
                        cache.last_dirty_len = cache.dirty.len();
                        std::mem::take(&mut cache.dirty)
                    }
                    None => WriteLog::default(),
                };
                (cf.clone(), dirty)
            })
            .collect();
        let charge = self
            .reservation
            .split_off(self.dirty_bytes, Component::CheckpointLog);
        self.dirty_bytes = 0;
        let batch = Arc::new(FrozenWrites {
            ordinal: self.next_ordinal,
            states,
            sequence: OnceLock::new(),
            _charge: charge,
        });
        self.next_ordinal += 1;
        self.pending.queue.lock().push_back(batch.clone());
        batch
    }

    /// Applies every frozen batch, then writes `state`'s writes since the last snapshot into
    /// the store (every state's when `None`): afterwards the store alone answers for them.
    pub fn settle(&mut self, db: &Db, states: &States, state: Option<StateId>) -> Result<()> {
        if !self.pending.is_empty() {
            self.pending.apply_through(db, None)?;
        }
        for (index, cache) in self.states.iter_mut().enumerate() {
            if state.is_some_and(|s| s.0 as usize != index) || cache.dirty.is_empty() {
                continue;
            }
            let Some((_, cf)) = states.get(index) else {
                continue;
            };
            cache.dirty.write_to(db, cf)?;
            let dirty = std::mem::take(&mut cache.dirty);
            let bytes: usize = dirty.entries.iter().map(Slot::cost).sum();
            self.dirty_bytes = self.dirty_bytes.saturating_sub(bytes);
        }
        Ok(())
    }

    /// Forgets `key` after [`WriteCache::settle`] of its state, so the next store operation on
    /// it (a merge) and the next read see the store.
    pub fn forget_key(&mut self, state: StateId, key: &[u8]) {
        let hash = self.hasher.hash_one(key);
        if let Some(cache) = self.states.get_mut(state.0 as usize)
            && let Some(slot) = cache.latest.remove(hash, key)
        {
            self.latest_bytes = self.latest_bytes.saturating_sub(slot.cost());
        }
    }

    /// Forgets every cached entry of `state` (after a prefix delete changed the store under
    /// it). Call [`WriteCache::settle`] for the state first.
    pub fn forget_state(&mut self, state: StateId) {
        if let Some(cache) = self.states.get_mut(state.0 as usize) {
            let latest = std::mem::take(&mut cache.latest);
            self.latest_bytes = self.latest_bytes.saturating_sub(latest.cost());
        }
    }

    /// Empties the cache and detaches it from its batches (a restore replaced the store).
    pub fn reset(&mut self) {
        *self = WriteCache::with_budget(self.capacity, self.reservation.budget().cloned());
    }

    /// Bytes charged for cached entries and for writes since the last snapshot.
    pub fn charged_bytes(&self) -> (usize, usize) {
        (self.latest_bytes, self.dirty_bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn hash(key: &[u8]) -> u64 {
        KeyHasherBuilder::random().hash_one(key)
    }

    #[test]
    fn a_full_budget_makes_the_cache_over_budget_and_freeze_moves_the_charge() {
        use crate::budget::CHUNK;
        // The write caches' share is a quarter of the budget: one chunk.
        let budget = MemoryBudget::new(4 * CHUNK);
        let mut cache = WriteCache::with_budget(64 << 20, Some(budget.clone()));
        let state = StateId(0);
        let value = vec![7u8; 1000];
        let mut writes = 0u32;
        while !cache.write(state, &writes.to_be_bytes(), Some(&value)) {
            writes += 1;
            assert!(writes < 10_000, "never over budget: {budget:?}");
        }
        let (latest, dirty) = cache.charged_bytes();
        assert!(
            latest + dirty > CHUNK,
            "over budget before its share was used"
        );
        assert_eq!(budget.charged(Component::WriteCache), CHUNK);
        // A frozen batch takes the charge of its writes along.
        let batch = cache.freeze(&Vec::new());
        assert!(budget.charged(Component::CheckpointLog) > 0);
        assert!(budget.used() <= budget.limit());
        cache.reset();
        assert_eq!(budget.charged(Component::WriteCache), 0);
        drop(batch);
        cache.pending.queue.lock().clear();
        assert_eq!(budget.used(), 0, "{budget:?}");
    }

    #[test]
    fn slots_keep_key_and_value_across_the_inline_boundary() {
        let key = b"composite-key".to_vec();
        let mut slot = Slot::new(7, &key, Some(b"v"));
        assert!(matches!(slot.bytes, Bytes::Inline { .. }));
        for len in [0, 1, INLINE - key.len(), INLINE - key.len() + 1, 100, 3] {
            let value = vec![len as u8; len];
            slot.set(Some(&value));
            assert_eq!(slot.key(), key.as_slice());
            assert_eq!(slot.value(), Some(value.as_slice()));
            assert_eq!(slot.cost(), key.len() + len + ENTRY_OVERHEAD);
        }
        slot.set(None);
        assert_eq!((slot.key(), slot.value()), (key.as_slice(), None));
    }

    proptest! {
        /// A table gives a `BTreeMap`'s answers and its charged bytes add up.
        #[test]
        fn table_matches_a_model(
            ops in proptest::collection::vec(
                (0u8..4, proptest::collection::vec(0u8..3, 0..12), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))),
                1..200,
            )
        ) {
            let builder = KeyHasherBuilder::random();
            let mut table = Table::default();
            let mut model: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            let mut charged: isize = 0;
            for (op, key, value) in ops {
                let h = builder.hash_one(key.as_slice());
                match op {
                    0 | 1 => {
                        charged += table.upsert(h, &key, value.as_deref());
                        model.insert(key, value);
                    }
                    2 => {
                        let removed = table.remove(h, &key);
                        prop_assert_eq!(removed.is_some(), model.remove(&key).is_some());
                        if let Some(slot) = removed {
                            charged -= slot.cost() as isize;
                        }
                    }
                    _ => {
                        let found = table.find(h, &key).map(|s| s.value().map(<[u8]>::to_vec));
                        prop_assert_eq!(found, model.get(&key).cloned());
                    }
                }
                prop_assert_eq!(charged as usize, table.cost());
                prop_assert_eq!(table.len(), model.len());
            }
            let mut keys: Vec<&[u8]> = table.slots.iter().map(Slot::key).collect();
            keys.sort_unstable();
            let expected: Vec<&[u8]> = model.keys().map(Vec::as_slice).collect();
            prop_assert_eq!(keys, expected);
        }
    }

    proptest! {
        /// Applying a log writes each key's last write, in key order.
        #[test]
        fn a_log_keeps_the_last_write_of_each_key(
            writes in proptest::collection::vec(
                (proptest::collection::vec(0u8..3, 0..24), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))),
                0..300,
            )
        ) {
            let mut log = WriteLog::default();
            let mut model: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            for (key, value) in writes {
                log.push(&key, value.as_deref());
                model.insert(key, value);
            }
            let last: Vec<(Vec<u8>, Option<Vec<u8>>)> = log
                .last_writes()
                .iter()
                .map(|s| (s.key().to_vec(), s.value().map(<[u8]>::to_vec)))
                .collect();
            prop_assert_eq!(last, model.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_log_orders_long_keys_that_share_sixteen_bytes() {
        let long = |suffix: &[u8]| [&[7u8; 16][..], suffix].concat();
        let mut log = WriteLog::default();
        let mut model: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let keys = [
            long(b"b"),
            long(b""),
            long(b"a\0"),
            long(b"a"),
            [7u8; 15].to_vec(),
        ];
        for round in 0u8..3 {
            for (i, key) in keys.iter().enumerate().rev() {
                let value = (i as u8 + round % 2 == 0).then_some(vec![round, i as u8]);
                log.push(key, value.as_deref());
                model.insert(key.clone(), value);
            }
        }
        let last: Vec<(Vec<u8>, Option<Vec<u8>>)> = log
            .last_writes()
            .iter()
            .map(|s| (s.key().to_vec(), s.value().map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(last, model.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn eviction_frees_what_it_charged() {
        let mut table = Table::default();
        for i in 0u32..1000 {
            let key = i.to_be_bytes();
            table.upsert(hash(&key), &key, Some(&[1; 50]));
        }
        let before = table.cost();
        let freed = table.evict_half(7);
        assert_eq!(table.cost(), before - freed);
        assert!(table.len() > 300 && table.len() < 700, "{}", table.len());
    }
}
