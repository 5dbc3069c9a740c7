//! The memtable: one column family's recent writes, ordered by internal key, before a flush
//! turns them into an SST.
//!
//! New point entries go into a small concurrent skiplist (`crossbeam_skiplist::SkipSet` of
//! `entry::Entry`s, internal key and value in one allocation). When it holds
//! [`DEFAULT_BUFFER_ENTRIES`] entries it is sealed into a `run::Run` — the same entries, sorted,
//! in one contiguous allocation with a 24-byte slot each — and runs of similar size are merged,
//! like a tiny LSM tree inside the memtable. Compared with one big skiplist this halves the memory
//! per entry (no node and no allocation header per entry), keeps inserts in a cache-sized
//! skiplist, and hands a flushed memtable's memory back to the system in a few large frees.
//! Reads, writes and iterators all run concurrently through `&self`; each (user key, sequence)
//! is inserted once and never removed. Range tombstones live in a skiplist of their own.

mod entry;
mod iter;
mod run;

use std::collections::BinaryHeap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crossbeam_skiplist::SkipSet;
use parking_lot::{Mutex, RwLock};

use crate::budget::Pool;
use crate::error::Result;
use crate::lsm::format::{MAX_SEQUENCE, TRAILER_LEN, ValueKind, compare_internal, trailer};
use entry::{Entry, Probe};
pub use iter::MemtableIter;
use run::Run;

/// Bytes charged per skiplist entry on top of its key and value in
/// [`Memtable::approximate_memory_usage`]: a skiplist node with its average tower and the
/// entry's inline prefix, trailer and pointer, and the header of the one allocation holding the
/// key and the value. Entries in sorted runs are charged their key, trailer and value plus a
/// 24-byte slot.
pub const ENTRY_OVERHEAD: usize = 80;

/// Skiplist entries before the skiplist is sealed into a sorted run, unless the memtable is
/// made with [`Memtable::with_buffer_entries`].
pub const DEFAULT_BUFFER_ENTRIES: usize = 2048;

/// Runs are merged only while the result stays within this many bytes, which bounds the copy a
/// writer makes at a seal (a 64 MiB memtable ends with about eight such runs and a few small ones).
const MAX_MERGED_RUN_BYTES: usize = 8 << 20;

type Table = SkipSet<Entry>;

/// One version of a user key, as stored in the memtable.
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemtableEntry {
    /// The sequence number of the write.
    pub sequence: u64,
    /// Put, Delete or Merge (range tombstones are kept apart).
    pub kind: ValueKind,
    /// The value or merge operand (empty for a delete).
    pub value: Arc<[u8]>,
}

/// A sealed part of the memtable.
#[derive(Clone, Debug)]
enum Source {
    /// A skiplist taken out of service, while its run is built.
    Buffer(Arc<Table>),
    /// A sorted run.
    Run(Arc<Run>),
}

/// The memtable's point entries at one moment: the skiplist taking writes and the sealed parts,
/// newest first. Replaced as a whole (copy on write) at a seal.
#[derive(Debug)]
struct Sources {
    buffer: Arc<Table>,
    older: Vec<Source>,
}

/// An ordered, concurrent in-memory table of one column family's writes.
#[derive(Debug)]
pub struct Memtable {
    /// Put, Delete and Merge entries. Writers insert into the buffer under the read lock; a
    /// seal swaps the buffer under the write lock, so no insert lands in a sealed skiplist.
    sources: RwLock<Arc<Sources>>,
    /// Held by the one thread sealing and merging (the only one changing `older`).
    seal_lock: Mutex<()>,
    buffer_entries: usize,
    /// Range tombstones: internal key of (start, sequence, RangeDelete) and end (exclusive).
    range_tombstones: Arc<Table>,
    memory: AtomicUsize,
    points: AtomicUsize,
    smallest_sequence: AtomicU64,
    largest_sequence: AtomicU64,
    /// Set when an entry came with a smaller sequence than an earlier one: a key's versions may
    /// then be out of newest-first order across sources, and reads sort them.
    unordered: AtomicBool,
    /// The store's share of the memory budget this memtable takes its charge from (given back
    /// when the last holder drops it), grown by the writer through [`Memtable::reserve`].
    pool: Option<Arc<Pool>>,
    /// The bytes taken from `pool` (`usize::MAX` without one).
    reserved: AtomicUsize,
}

/// A memtable takes its charge from its pool in steps of this many bytes, so the pool's lock is
/// taken about once per this many bytes written.
const RESERVE_STEP: usize = 16 << 10;

impl Drop for Memtable {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.give_back(self.reserved.load(Ordering::Relaxed));
        }
    }
}

impl Default for Memtable {
    fn default() -> Self {
        Self::new()
    }
}

impl Memtable {
    /// An empty memtable sealing its skiplist every [`DEFAULT_BUFFER_ENTRIES`] entries.
    pub fn new() -> Self {
        Self::with_buffer_entries(DEFAULT_BUFFER_ENTRIES)
    }

    /// An empty memtable sealing its skiplist into a sorted run every `entries` entries (at
    /// least 1). Small values exercise runs and merges in tests; large ones keep more entries
    /// in the skiplist (more memory per entry, fewer copies).
    pub fn with_buffer_entries(entries: usize) -> Self {
        Self::with_pool(entries, None)
    }

    /// [`Memtable::with_buffer_entries`] taking its memory's charge from `pool` (see
    /// [`Memtable::reserve`]).
    pub fn with_pool(entries: usize, pool: Option<Arc<Pool>>) -> Self {
        let reserved = if pool.is_some() { 0 } else { usize::MAX };
        Memtable {
            pool,
            reserved: AtomicUsize::new(reserved),
            sources: RwLock::new(Arc::new(Sources {
                buffer: Arc::new(SkipSet::new()),
                older: Vec::new(),
            })),
            seal_lock: Mutex::new(()),
            buffer_entries: entries.max(1),
            range_tombstones: Arc::new(SkipSet::new()),
            memory: AtomicUsize::new(0),
            points: AtomicUsize::new(0),
            smallest_sequence: AtomicU64::new(u64::MAX),
            largest_sequence: AtomicU64::new(0),
            unordered: AtomicBool::new(false),
        }
    }

    /// Adds one write. For [`ValueKind::RangeDelete`], `user_key` is the range start and `value`
    /// its exclusive end; for a delete, `value` is normally empty.
    ///
    /// Each (user key, sequence) must be inserted at most once (the Db gives every operation its
    /// own sequence); `sequence` must be at most [`MAX_SEQUENCE`]. Reads are cheapest when
    /// sequences arrive in increasing order, as the Db inserts them.
    pub fn insert(&self, user_key: &[u8], sequence: u64, kind: ValueKind, value: &[u8]) {
        assert!(
            sequence <= MAX_SEQUENCE,
            "sequence {sequence} exceeds MAX_SEQUENCE"
        );
        let entry = Entry::new(user_key, trailer(sequence, kind), value);
        self.memory.fetch_add(
            user_key.len() + TRAILER_LEN + value.len() + ENTRY_OVERHEAD,
            Ordering::Relaxed,
        );
        self.smallest_sequence
            .fetch_min(sequence, Ordering::Relaxed);
        if self.largest_sequence.fetch_max(sequence, Ordering::Relaxed) > sequence {
            self.unordered.store(true, Ordering::Relaxed);
        }
        if kind == ValueKind::RangeDelete {
            self.range_tombstones.insert(entry);
            return;
        }
        let full = {
            let sources = self.sources.read();
            sources.buffer.insert(entry);
            sources.buffer.len() >= self.buffer_entries
        };
        self.points.fetch_add(1, Ordering::Relaxed);
        if full {
            self.seal();
        }
    }

    /// Seals a full skiplist into a sorted run and merges runs of similar size.
    fn seal(&self) {
        let _sealing = self.seal_lock.lock();
        let (sealed, mut older) = {
            let mut sources = self.sources.write();
            if sources.buffer.len() < self.buffer_entries {
                return; // another writer sealed it meanwhile
            }
            let sealed = Arc::clone(&sources.buffer);
            let mut older = Vec::with_capacity(sources.older.len() + 1);
            older.push(Source::Buffer(Arc::clone(&sealed)));
            older.extend(sources.older.iter().cloned());
            *sources = Arc::new(Sources {
                buffer: Arc::new(SkipSet::new()),
                older: older.clone(),
            });
            (sealed, older)
        };
        // Readers keep seeing the sealed skiplist until the run replaces it below; only this
        // thread changes `older` until then.
        let run = run_of_table(&sealed);
        let mut freed = run.data_len() + run.len() * ENTRY_OVERHEAD;
        let mut added = run.charge();
        let mut newest = Arc::new(run);
        older.remove(0);
        while let Some(Source::Run(previous)) = older.first() {
            let merged_len = newest.data_len() + previous.data_len();
            if previous.data_len() > 2 * newest.data_len() || merged_len > MAX_MERGED_RUN_BYTES {
                break;
            }
            let merged = Run::merge(&newest, previous);
            freed += previous.charge();
            added = added - newest.charge() + merged.charge();
            newest = Arc::new(merged);
            older.remove(0);
        }
        older.insert(0, Source::Run(newest));
        {
            let mut sources = self.sources.write();
            *sources = Arc::new(Sources {
                buffer: Arc::clone(&sources.buffer),
                older,
            });
        }
        self.memory.fetch_add(added, Ordering::Relaxed);
        self.memory.fetch_sub(freed, Ordering::Relaxed);
    }

    /// The newest version of `user_key` with sequence at most `snapshot`, ignoring range
    /// tombstones (ask [`Memtable::max_covering_tombstone_sequence`] for those).
    #[cfg(test)]
    pub fn get(&self, user_key: &[u8], snapshot: u64) -> Option<MemtableEntry> {
        let mut found = None;
        self.for_each_version(user_key, snapshot, |sequence, kind, value| {
            found = Some(MemtableEntry {
                sequence,
                kind,
                value: value.into(),
            });
            false
        });
        found
    }

    /// Every version of `user_key` with sequence at most `snapshot`, newest first: what the Db
    /// walks to collect merge operands down to a put or delete.
    #[cfg(test)]
    pub fn versions(&self, user_key: &[u8], snapshot: u64) -> impl Iterator<Item = MemtableEntry> {
        let mut all = Vec::new();
        self.for_each_version(user_key, snapshot, |sequence, kind, value| {
            all.push(MemtableEntry {
                sequence,
                kind,
                value: value.into(),
            });
            true
        });
        all.into_iter()
    }

    /// Calls `f(sequence, kind, value)` for the versions of `user_key` with sequence at most
    /// `snapshot`, newest first, while `f` returns true: [`Memtable::versions`] without copying
    /// each value into a new allocation (the read path copies it once, into its result).
    pub fn for_each_version(
        &self,
        user_key: &[u8],
        snapshot: u64,
        mut f: impl FnMut(u64, ValueKind, &[u8]) -> bool,
    ) {
        let sources = Arc::clone(&self.sources.read());
        let snapshot_trailer = lookup_trailer(snapshot);
        if !self.unordered.load(Ordering::Relaxed) {
            visit_versions(&sources, user_key, snapshot_trailer, &mut f);
            return;
        }
        // Sequences came out of order: a newer version may sit in an older source, so collect
        // every source's versions and sort them newest first.
        let mut all: Vec<(u64, ValueKind, Vec<u8>)> = Vec::new();
        visit_versions(
            &sources,
            user_key,
            snapshot_trailer,
            &mut |sequence, kind, value| {
                all.push((sequence, kind, value.to_vec()));
                true
            },
        );
        all.sort_by_key(|v| std::cmp::Reverse(v.0));
        for (sequence, kind, value) in all {
            if !f(sequence, kind, &value) {
                return;
            }
        }
    }

    /// The largest sequence of a range tombstone visible at `snapshot` (sequence at most
    /// `snapshot`) whose range holds `user_key`; a version of `user_key` with a smaller
    /// sequence is deleted.
    ///
    /// Scans the tombstones starting at or before `user_key`: cheap for the few range deletes a
    /// memtable usually holds.
    pub fn max_covering_tombstone_sequence(&self, user_key: &[u8], snapshot: u64) -> Option<u64> {
        if self.range_tombstones.is_empty() {
            return None;
        }
        // The smallest trailer sorts last, so this bound takes every start <= user_key.
        let last = Entry::probe(user_key, 0);
        self.range_tombstones
            .range((Bound::Unbounded, Bound::Included(last)))
            .filter_map(|entry| {
                let entry = entry.value();
                let sequence = entry.sequence();
                (sequence <= snapshot && user_key < entry.value()).then_some(sequence)
            })
            .max()
    }

    /// Whether the version of `user_key` at `sequence` is deleted by a range tombstone in this
    /// memtable that is visible at `snapshot`.
    pub fn is_covered(&self, user_key: &[u8], sequence: u64, snapshot: u64) -> bool {
        self.max_covering_tombstone_sequence(user_key, snapshot)
            .is_some_and(|tombstone| tombstone > sequence)
    }

    /// Calls `f(internal_key, value)` for every point entry in order (a flush): one pass merging
    /// the sorted runs, with the skiplists copied into runs first.
    pub fn for_each_entry(&self, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        let sources = Arc::clone(&self.sources.read());
        let mut runs: Vec<Arc<Run>> = Vec::with_capacity(sources.older.len() + 1);
        if !sources.buffer.is_empty() {
            runs.push(Arc::new(run_of_table(&sources.buffer)));
        }
        for source in &sources.older {
            runs.push(match source {
                Source::Buffer(table) => Arc::new(run_of_table(table)),
                Source::Run(run) => Arc::clone(run),
            });
        }
        if let [run] = runs.as_slice() {
            for i in 0..run.len() {
                f(run.internal_key(i), run.value(i))?;
            }
            return Ok(());
        }
        let mut heap: BinaryHeap<Head<'_>> = runs
            .iter()
            .enumerate()
            .filter(|(_, run)| run.len() > 0)
            .map(|(source, run)| Head {
                key: run.internal_key(0),
                source,
                position: 0,
            })
            .collect();
        while let Some(head) = heap.pop() {
            let run = &runs[head.source];
            f(head.key, run.value(head.position))?;
            let position = head.position + 1;
            if position < run.len() {
                heap.push(Head {
                    key: run.internal_key(position),
                    source: head.source,
                    position,
                });
            }
        }
        Ok(())
    }

    /// An iterator over the point entries (internal key -> value), valid while others insert.
    pub fn iter(&self) -> MemtableIter {
        let sources = Arc::clone(&self.sources.read());
        MemtableIter::over_sources(&sources.buffer, &sources.older)
    }

    /// An iterator over the range tombstones: internal key of (start, sequence, RangeDelete) ->
    /// exclusive end. A flush writes these to the SST's range-deletion block.
    pub fn range_tombstone_iter(&self) -> MemtableIter {
        MemtableIter::over_sources(&self.range_tombstones, &[])
    }

    /// Whether the memory budget covers this memtable's memory plus `extra` more bytes, taking
    /// more from the pool when it can; always true without a pool. Only the writer calls it
    /// (under the store's writer lock), before inserting a batch of about `extra` bytes.
    pub fn reserve(&self, extra: usize) -> bool {
        let need = self.approximate_memory_usage().saturating_add(extra);
        let reserved = self.reserved.load(Ordering::Relaxed);
        if need <= reserved {
            return true;
        }
        let Some(pool) = &self.pool else {
            return true;
        };
        let more = (need - reserved).div_ceil(RESERVE_STEP) * RESERVE_STEP;
        if pool.try_take(more) {
            self.reserved.store(reserved + more, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Takes the charge for the memory plus `extra` even past the budget's limit.
    pub fn force_reserve(&self, extra: usize) {
        let need = self.approximate_memory_usage().saturating_add(extra);
        let reserved = self.reserved.load(Ordering::Relaxed);
        if let Some(pool) = &self.pool
            && need > reserved
        {
            pool.force_take(need - reserved);
            self.reserved.store(need, Ordering::Relaxed);
        }
    }

    /// Bytes of keys and values plus [`ENTRY_OVERHEAD`] per skiplist entry and a 24-byte slot
    /// per sorted-run entry: what the write-buffer limit is checked against.
    pub fn approximate_memory_usage(&self) -> usize {
        self.memory.load(Ordering::Relaxed)
    }

    /// Number of entries, range tombstones included.
    pub fn len(&self) -> usize {
        self.points.load(Ordering::Relaxed) + self.range_tombstones.len()
    }

    /// True when nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of range tombstones.
    pub fn range_tombstone_count(&self) -> usize {
        self.range_tombstones.len()
    }

    /// The smallest and largest sequence inserted, or `None` when empty.
    #[cfg(test)]
    pub fn sequence_range(&self) -> Option<(u64, u64)> {
        let smallest = self.smallest_sequence.load(Ordering::Relaxed);
        (smallest != u64::MAX).then(|| (smallest, self.largest_sequence.load(Ordering::Relaxed)))
    }
}

/// A sorted run of a skiplist's entries (those present when it is called).
fn run_of_table(table: &Table) -> Run {
    let entries: Vec<Entry> = table.iter().map(|node| node.value().clone()).collect();
    let len = entries
        .iter()
        .map(|e| e.internal_key().len() + e.value().len())
        .sum();
    Run::build(
        entries.len(),
        len,
        entries.iter().map(|e| (e.internal_key(), e.value())),
    )
}

/// The versions of `user_key` in one skiplist from `lookup` on, newest first, while `f` returns
/// true; false when `f` stopped the walk.
fn table_versions(
    table: &Table,
    user_key: &[u8],
    lookup: &Entry,
    f: &mut impl FnMut(u64, ValueKind, &[u8]) -> bool,
) -> bool {
    let mut next = table.lower_bound(Bound::Included(lookup));
    while let Some(node) = next {
        let entry = node.value();
        if entry.user_key() != user_key {
            return true;
        }
        if !f(entry.sequence(), entry.kind(), entry.value()) {
            return false;
        }
        next = node.next();
    }
    true
}

/// Calls `f` for the versions of `user_key` from `snapshot_trailer` on, source by source (the
/// skiplist, then sealed sources newest first), each source's newest first, while `f` returns
/// true.
fn visit_versions(
    sources: &Sources,
    user_key: &[u8],
    snapshot_trailer: u64,
    f: &mut impl FnMut(u64, ValueKind, &[u8]) -> bool,
) {
    let probe = Probe::new(user_key, snapshot_trailer);
    let lookup = Entry::probe(user_key, snapshot_trailer);
    if !table_versions(&sources.buffer, user_key, &lookup, f) {
        return;
    }
    for source in &sources.older {
        let more = match source {
            Source::Buffer(table) => table_versions(table, user_key, &lookup, f),
            Source::Run(run) => run.for_each_version(user_key, &probe, f),
        };
        if !more {
            return;
        }
    }
}

/// One run's next entry in a flush's merge: the smallest key comes out of the heap first.
struct Head<'a> {
    key: &'a [u8],
    source: usize,
    position: usize,
}

impl Ord for Head<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: `BinaryHeap` is a max-heap.
        compare_internal(other.key, self.key).then_with(|| other.source.cmp(&self.source))
    }
}

impl PartialOrd for Head<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Head<'_> {}

/// The seek trailer for reads at `snapshot`: sorts before every version with sequence at most
/// `snapshot`, and after every newer one (kind byte 0xff, like LevelDB's `kValueTypeForSeek`).
fn lookup_trailer(snapshot: u64) -> u64 {
    (snapshot.min(MAX_SEQUENCE) << 8) | 0xff
}

#[cfg(test)]
mod tests;
