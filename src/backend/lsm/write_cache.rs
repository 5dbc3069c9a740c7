//! The write-back cache in front of an [`LsmBackend`](super::LsmBackend)'s store (Kafka Streams'
//! record cache in front of RocksDB): the operator thread's point reads and writes hit hash maps,
//! and the writes of one checkpoint interval reach the store once, sorted, in that checkpoint's
//! asynchronous part.
//!
//! DESIGN. Per state, `latest` holds the newest value of every key it holds (`None`: known
//! absent) and `dirty` the writes since the last snapshot. A snapshot's synchronous part moves
//! every `dirty` map into a [`FrozenWrites`] batch (O(states), no copy) queued in
//! [`PendingWrites`]. Applying a batch writes its entries into the store and then freezes the
//! memtables: the freeze's sequence is that checkpoint's, so the checkpoint holds exactly the
//! writes before its barrier. Batches are applied once, in order, by whichever thread comes
//! first (the checkpoint's asynchronous part, or the operator thread when it must write to the
//! store itself: a merge, a prefix scan or delete, a spill of an over-full cache). Invariant:
//! nothing writes to the store while an earlier batch waits, so no write after a barrier lands
//! below that barrier's freeze. Until a batch is applied, reads see it through the frozen list.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::backend::StateId;
use crate::backend::state_table::KeyHasherBuilder;
use crate::error::Result;
use crate::lsm::batch::WriteBatch;
use crate::lsm::{ColumnFamily, Db};

/// Bytes charged per cached entry on top of its key and value: the hash-table slot and the
/// headers of the two allocations.
pub const ENTRY_OVERHEAD: usize = 64;

/// Entries per store write batch when a batch or a spill is written (bounds the batch's memory).
const WRITE_CHUNK: usize = 4096;

/// Key -> value (`None`: deleted / known absent).
type Map = HashMap<Box<[u8]>, Option<Box<[u8]>>, KeyHasherBuilder>;

fn new_map() -> Map {
    Map::with_hasher(KeyHasherBuilder::random())
}

fn entry_cost(key: &[u8], value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD
}

/// Sets `key` to `value` in `map` (reusing the value's allocation when the length matches);
/// returns the change in charged bytes.
fn upsert(map: &mut Map, key: &[u8], value: Option<&[u8]>) -> isize {
    match map.get_mut(key) {
        Some(slot) => {
            let old = slot.as_deref().map_or(0, <[u8]>::len) as isize;
            match (slot.as_mut(), value) {
                (Some(existing), Some(new)) if existing.len() == new.len() => {
                    existing.copy_from_slice(new);
                }
                _ => *slot = value.map(Box::from),
            }
            value.map_or(0, <[u8]>::len) as isize - old
        }
        None => {
            map.insert(Box::from(key), value.map(Box::from));
            entry_cost(key, value) as isize
        }
    }
}

/// Writes `entries` of `cf` into `db` in key order, in chunks.
fn write_sorted<'a>(
    db: &Db,
    cf: &ColumnFamily,
    entries: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Result<()> {
    let mut sorted: Vec<(&[u8], Option<&[u8]>)> = entries.collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for chunk in sorted.chunks(WRITE_CHUNK) {
        let mut batch = WriteBatch::new();
        for (key, value) in chunk {
            match value {
                Some(value) => batch.put(cf.id(), key, value)?,
                None => batch.delete(cf.id(), key)?,
            }
        }
        db.write(batch)?;
    }
    Ok(())
}

/// One checkpoint interval's writes, frozen by a snapshot's synchronous part.
#[derive(Debug)]
pub struct FrozenWrites {
    /// Position in the backend's sequence of batches.
    ordinal: u64,
    /// Per state (by `StateId`): its column family and its writes.
    states: Vec<(ColumnFamily, Map)>,
    /// The sequence of the memtable freeze that followed the batch's writes, once applied.
    sequence: OnceLock<u64>,
}

impl FrozenWrites {
    /// The checkpoint's sequence, once the batch is in the store.
    pub fn sequence(&self) -> Option<u64> {
        self.sequence.get().copied()
    }

    fn lookup(&self, state: StateId, key: &[u8]) -> Option<Option<&[u8]>> {
        let (_, map) = self.states.get(state.0 as usize)?;
        map.get(key).map(Option::as_deref)
    }
}

/// The queue of frozen batches not yet in the store, shared by a backend and its snapshot tasks.
#[derive(Debug, Default)]
pub struct PendingWrites {
    queue: Mutex<VecDeque<Arc<FrozenWrites>>>,
}

impl PendingWrites {
    /// Applies, in order, every queued batch up to and including ordinal `through` (every batch
    /// when `None`): writes its entries, then freezes the memtables and records the sequence.
    /// A batch that fails stays queued (applying it again writes the same values).
    pub fn apply_through(&self, db: &Db, through: Option<u64>) -> Result<()> {
        let mut queue = self.queue.lock();
        while let Some(batch) = queue.front() {
            if through.is_some_and(|last| batch.ordinal > last) {
                break;
            }
            for (cf, map) in &batch.states {
                if !map.is_empty() {
                    write_sorted(db, cf, map.iter().map(|(k, v)| (k.as_ref(), v.as_deref())))?;
                }
            }
            let sequence = db.flush(false)?;
            // Set once: the batch leaves the queue right after, under the same lock.
            let _ = batch.sequence.set(sequence);
            queue.pop_front();
        }
        Ok(())
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
    latest: Option<Map>,
    dirty: Option<Map>,
}

impl StateCache {
    fn latest(&mut self) -> &mut Map {
        self.latest.get_or_insert_with(new_map)
    }

    fn dirty(&mut self) -> &mut Map {
        self.dirty.get_or_insert_with(new_map)
    }
}

/// The operator thread's side of the cache (owned by the backend).
#[derive(Debug)]
pub struct WriteCache {
    capacity: usize,
    states: Vec<StateCache>,
    latest_bytes: usize,
    dirty_bytes: usize,
    /// Batches frozen by this cache that were not yet seen applied, oldest first.
    frozen: Vec<Arc<FrozenWrites>>,
    pending: Arc<PendingWrites>,
    next_ordinal: u64,
}

impl WriteCache {
    /// A cache of about `capacity` bytes (0: disabled, every access goes to the store).
    pub fn new(capacity: usize) -> Self {
        WriteCache {
            capacity,
            states: Vec::new(),
            latest_bytes: 0,
            dirty_bytes: 0,
            frozen: Vec::new(),
            pending: Arc::new(PendingWrites::default()),
            next_ordinal: 0,
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

    /// What the cache knows of `key`: the newest write, a frozen batch's write or a cached read.
    pub fn get(&mut self, state: StateId, key: &[u8]) -> Lookup<'_> {
        self.frozen.retain(|b| b.sequence().is_none());
        let index = state.0 as usize;
        let Some(cache) = self.states.get(index) else {
            return Lookup::Miss;
        };
        if let Some(value) = cache.latest.as_ref().and_then(|m| m.get(key)) {
            return Lookup::Hit(value.as_deref());
        }
        if let Some(value) = cache.dirty.as_ref().and_then(|m| m.get(key)) {
            return Lookup::Hit(value.as_deref());
        }
        for batch in self.frozen.iter().rev() {
            if let Some(value) = batch.lookup(state, key) {
                return Lookup::Hit(value);
            }
        }
        Lookup::Miss
    }

    /// Remembers what the store returned for `key` (after a [`Lookup::Miss`]).
    pub fn fill(&mut self, state: StateId, key: &[u8], value: Option<&[u8]>) {
        if !self.enabled() {
            return;
        }
        let cost = entry_cost(key, value);
        if self.latest_bytes + cost > self.capacity {
            self.evict_latest();
        }
        let delta = upsert(self.state(state).latest(), key, value);
        self.latest_bytes = self.latest_bytes.saturating_add_signed(delta);
    }

    /// Records a write (`None`: a delete). Returns true when the writes since the last
    /// snapshot outgrew half the capacity: the caller should [`WriteCache::spill`].
    pub fn write(&mut self, state: StateId, key: &[u8], value: Option<&[u8]>) -> bool {
        if self.latest_bytes + entry_cost(key, value) > self.capacity {
            self.evict_latest();
        }
        let cache = self.state(state);
        let latest = upsert(cache.latest(), key, value);
        let dirty = upsert(cache.dirty(), key, value);
        self.latest_bytes = self.latest_bytes.saturating_add_signed(latest);
        self.dirty_bytes = self.dirty_bytes.saturating_add_signed(dirty);
        self.dirty_bytes > self.capacity / 2
    }

    /// Drops every cached read (writes not yet in the store stay in `dirty` and frozen batches).
    fn evict_latest(&mut self) {
        for cache in &mut self.states {
            cache.latest = None;
        }
        self.latest_bytes = 0;
    }

    /// Moves the writes since the last snapshot into a new frozen batch, queued for the store.
    /// `cfs` are the column families of the states, by `StateId`.
    pub fn freeze(&mut self, cfs: &[ColumnFamily]) -> Arc<FrozenWrites> {
        let states = cfs
            .iter()
            .enumerate()
            .map(|(index, cf)| {
                let dirty = self
                    .states
                    .get_mut(index)
                    .and_then(|c| c.dirty.take())
                    .unwrap_or_else(new_map);
                (cf.clone(), dirty)
            })
            .collect();
        self.dirty_bytes = 0;
        let batch = Arc::new(FrozenWrites {
            ordinal: self.next_ordinal,
            states,
            sequence: OnceLock::new(),
        });
        self.next_ordinal += 1;
        self.pending.queue.lock().push_back(batch.clone());
        self.frozen.push(batch.clone());
        batch
    }

    /// Applies every frozen batch, then writes `state`'s writes since the last snapshot into
    /// the store (every state's when `None`): afterwards the store alone answers for them.
    pub fn settle(&mut self, db: &Db, cfs: &[ColumnFamily], state: Option<StateId>) -> Result<()> {
        if !self.pending.is_empty() {
            self.pending.apply_through(db, None)?;
        }
        self.frozen.clear();
        for (index, cache) in self.states.iter_mut().enumerate() {
            if state.is_some_and(|s| s.0 as usize != index) {
                continue;
            }
            let (Some(dirty), Some(cf)) = (cache.dirty.take(), cfs.get(index)) else {
                continue;
            };
            let bytes: usize = dirty.iter().map(|(k, v)| entry_cost(k, v.as_deref())).sum();
            write_sorted(
                db,
                cf,
                dirty.iter().map(|(k, v)| (k.as_ref(), v.as_deref())),
            )?;
            self.dirty_bytes = self.dirty_bytes.saturating_sub(bytes);
        }
        Ok(())
    }

    /// Writes `key`'s pending write (if any) into the store and forgets the key, so the next
    /// store operation on it (a merge) sees everything before it.
    pub fn settle_key(
        &mut self,
        db: &Db,
        cf: &ColumnFamily,
        state: StateId,
        key: &[u8],
    ) -> Result<()> {
        if !self.pending.is_empty() {
            self.pending.apply_through(db, None)?;
        }
        self.frozen.clear();
        let Some(cache) = self.states.get_mut(state.0 as usize) else {
            return Ok(());
        };
        if let Some(latest) = cache.latest.as_mut()
            && let Some(value) = latest.remove(key)
        {
            self.latest_bytes = self
                .latest_bytes
                .saturating_sub(entry_cost(key, value.as_deref()));
        }
        if let Some(dirty) = cache.dirty.as_mut()
            && let Some(value) = dirty.remove(key)
        {
            self.dirty_bytes = self
                .dirty_bytes
                .saturating_sub(entry_cost(key, value.as_deref()));
            match value {
                Some(value) => db.put(cf, key, &value)?,
                None => db.delete(cf, key)?,
            }
        }
        Ok(())
    }

    /// Forgets every cached read of `state` (after a prefix delete changed the store under it).
    /// Call [`WriteCache::settle`] for the state first.
    pub fn forget_state(&mut self, state: StateId) {
        if let Some(cache) = self.states.get_mut(state.0 as usize)
            && let Some(latest) = cache.latest.take()
        {
            let bytes: usize = latest
                .iter()
                .map(|(k, v)| entry_cost(k, v.as_deref()))
                .sum();
            self.latest_bytes = self.latest_bytes.saturating_sub(bytes);
        }
    }

    /// Empties the cache and detaches it from its batches (a restore replaced the store).
    pub fn reset(&mut self) {
        *self = WriteCache::new(self.capacity);
    }

    /// Bytes charged for cached reads and for writes not yet frozen.
    pub fn charged_bytes(&self) -> (usize, usize) {
        (self.latest_bytes, self.dirty_bytes)
    }
}
