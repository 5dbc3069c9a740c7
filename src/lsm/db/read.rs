//! The read path: point lookups and iterators over a pinned super version, plus statistics.
//!
//! A read clones the current `Arc<SuperVersion>` and works on it without any lock: memtables
//! first (newest to oldest), then L0 files newest first, then one file per deeper level. The
//! versions of the key found on the way are resolved by `merge::resolve`, the same rule
//! iterators and compaction use.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{CfStats, CfView, ColumnFamily, DbInner, DbStats, SuperVersion};
use crate::error::{Error, Result};
use crate::lsm::concat_iter::{self, Bounded};
use crate::lsm::db_iter::DbIter;
use crate::lsm::format::{ValueKind, compare_internal, parse_internal_key};
use crate::lsm::iterator::InternalIterator;
use crate::lsm::merge::{VersionRef, resolve};
use crate::lsm::merge_iter::MergingIterator;
use crate::lsm::pinned::PinnedValue;
use crate::lsm::sst::format::seek_key;
use crate::lsm::table::TableFile;

/// How a read is done.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// Read at this sequence (from [`super::Snapshot::sequence`]); latest when `None`.
    pub snapshot: Option<u64>,
    /// Iterators start at this user key (inclusive).
    pub lower_bound: Option<Vec<u8>>,
    /// Iterators end before this user key (exclusive).
    pub upper_bound: Option<Vec<u8>>,
}

impl ReadOptions {
    /// Reads restricted to keys starting with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        ReadOptions {
            snapshot: None,
            lower_bound: Some(prefix.to_vec()),
            upper_bound: crate::lsm::db_iter::prefix_upper_bound(prefix),
        }
    }

    /// Reads at `snapshot`.
    pub fn at(mut self, snapshot: &super::Snapshot) -> Self {
        self.snapshot = Some(snapshot.sequence());
        self
    }
}

/// One version of a key found during a lookup (a value from an SST file still in its block).
struct Found {
    sequence: u64,
    kind: ValueKind,
    value: PinnedValue,
}

fn view<'a>(sv: &'a SuperVersion, cf: &ColumnFamily) -> Result<&'a CfView> {
    sv.cfs
        .get(&cf.id)
        .ok_or_else(|| Error::not_found(format!("column family '{}' does not exist", cf.name)))
}

thread_local! {
    /// The versions a point lookup collects, kept (empty) for this thread's next lookup: one
    /// allocation per thread instead of one per `get`.
    static FOUND: Cell<Vec<Found>> = const { Cell::new(Vec::new()) };
}

/// Versions a kept [`FOUND`] buffer may hold room for (a key with many merge operands
/// does not pin a large buffer to the thread).
const FOUND_KEEP: usize = 64;

pub(super) fn get(
    inner: &DbInner,
    cf: &ColumnFamily,
    key: &[u8],
    options: &ReadOptions,
) -> Result<Option<PinnedValue>> {
    let mut found = FOUND.take();
    let result = collect_and_resolve(inner, cf, key, options, &mut found);
    found.clear();
    if found.capacity() <= FOUND_KEEP {
        FOUND.set(found);
    }
    result
}

/// [`get`] with the versions collected into `found` (empty on entry).
fn collect_and_resolve(
    inner: &DbInner,
    cf: &ColumnFamily,
    key: &[u8],
    options: &ReadOptions,
    found: &mut Vec<Found>,
) -> Result<Option<PinnedValue>> {
    let sv = inner.current();
    let snapshot = options
        .snapshot
        .unwrap_or_else(|| inner.visible_sequence.load(Ordering::Acquire));
    let view = view(&sv, cf)?;
    let mut done = false;
    for memtable in std::iter::once(&view.memtable).chain(view.frozen.iter()) {
        memtable.for_each_version(key, snapshot, |sequence, kind, value| {
            done = kind != ValueKind::Merge;
            found.push(Found {
                sequence,
                kind,
                value: value.to_vec().into(),
            });
            !done
        });
        if done {
            break;
        }
    }
    if !done {
        'levels: for (level, files) in view.levels.iter().enumerate() {
            let candidates: Box<dyn Iterator<Item = &Arc<TableFile>>> = if level == 0 {
                Box::new(files.iter())
            } else {
                // Disjoint and sorted: at most one file can hold the key.
                let i = files.partition_point(|f| f.meta().largest_user_key() < key);
                Box::new(files.get(i).into_iter())
            };
            for table in candidates {
                let meta = table.meta();
                if key < meta.smallest_user_key() || key > meta.largest_user_key() {
                    continue;
                }
                if collect_from_table(table, key, snapshot, found)? {
                    break 'levels;
                }
            }
        }
    }
    let covered = |sequence: u64| covered(view, key, sequence, snapshot);
    // The common case, one put: hand its value over instead of copying it again in `resolve`.
    if let [only] = found.as_slice()
        && only.kind == ValueKind::Put
        && only.sequence <= snapshot
    {
        if covered(only.sequence) {
            return Ok(None);
        }
        return Ok(found.pop().map(|f| f.value));
    }
    let merge = view.options.merge_operator.as_deref();
    Ok(resolve(
        key,
        found.iter().map(|f| VersionRef {
            sequence: f.sequence,
            kind: f.kind,
            value: &f.value,
        }),
        snapshot,
        covered,
        merge,
    )
    .map(PinnedValue::from))
}

/// Appends the versions of `key` in `table` (newest first, at most `snapshot`); returns true
/// once a put or delete ends the search.
fn collect_from_table(
    table: &TableFile,
    key: &[u8],
    snapshot: u64,
    found: &mut Vec<Found>,
) -> Result<bool> {
    let reader = table.reader()?;
    let Some(first) = reader.get(key, snapshot)? else {
        return Ok(false);
    };
    if first.kind != ValueKind::Merge {
        found.push(Found {
            sequence: first.sequence,
            kind: first.kind,
            value: first.value,
        });
        return Ok(true);
    }
    // Merge operands: walk the older versions in this file too.
    let mut iter = reader.iter();
    iter.seek(&seek_key(key, snapshot))?;
    let file = table.path().display().to_string();
    while iter.valid() {
        let parsed = parse_internal_key(iter.key(), &file, 0)?;
        if parsed.user_key != key {
            break;
        }
        let end = parsed.kind != ValueKind::Merge;
        if parsed.kind != ValueKind::RangeDelete {
            found.push(Found {
                sequence: parsed.sequence,
                kind: parsed.kind,
                value: iter.value().to_vec().into(),
            });
        }
        if end && parsed.kind != ValueKind::RangeDelete {
            return Ok(true);
        }
        iter.next()?;
    }
    Ok(false)
}

/// Whether a range tombstone visible at `snapshot` deletes (`key`, `sequence`).
fn covered(view: &CfView, key: &[u8], sequence: u64, snapshot: u64) -> bool {
    view.tombstones
        .iter()
        .any(|t| t.covers(key, sequence, snapshot))
        || std::iter::once(&view.memtable)
            .chain(view.frozen.iter())
            .any(|m| m.is_covered(key, sequence, snapshot))
}

/// A user-level iterator over one column family; holds the super version it reads, so the
/// memtables and files under it stay alive however long it lives.
pub struct DbIterator {
    iter: DbIter,
    _pinned: Arc<SuperVersion>,
}

impl DbIterator {
    /// Whether the iterator is on an entry.
    pub fn valid(&self) -> bool {
        self.iter.valid()
    }
    /// The current user key.
    pub fn key(&self) -> &[u8] {
        self.iter.key()
    }
    /// The current value.
    pub fn value(&self) -> &[u8] {
        self.iter.value()
    }
    /// Moves to the first key (within bounds).
    pub fn seek_to_first(&mut self) -> Result<()> {
        self.iter.seek_to_first()
    }
    /// Moves to the last key (within bounds).
    pub fn seek_to_last(&mut self) -> Result<()> {
        self.iter.seek_to_last()
    }
    /// Moves to the first key at or after `key`.
    pub fn seek(&mut self, key: &[u8]) -> Result<()> {
        self.iter.seek(key)
    }
    /// Moves to the last key at or before `key`.
    pub fn seek_for_prev(&mut self, key: &[u8]) -> Result<()> {
        self.iter.seek_for_prev(key)
    }
    /// Moves to the next key.
    #[expect(
        clippy::should_implement_trait,
        reason = "a fallible cursor step, named like LevelDB's; `entries()` is the Iterator"
    )]
    pub fn next(&mut self) -> Result<()> {
        self.iter.next()
    }
    /// Moves to the previous key.
    pub fn prev(&mut self) -> Result<()> {
        self.iter.prev()
    }
    /// Every (key, value) from the current position forward.
    pub fn entries(self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> {
        let pinned = self._pinned;
        // The closure owns the pin, so the files stay alive as long as the iterator.
        self.iter.entries().inspect(move |_| {
            let _ = &pinned;
        })
    }
}

pub(super) fn iter(inner: &DbInner, cf: &ColumnFamily, options: ReadOptions) -> Result<DbIterator> {
    let sv = inner.current();
    let snapshot = options
        .snapshot
        .unwrap_or_else(|| inner.visible_sequence.load(Ordering::Acquire));
    let view = view(&sv, cf)?;
    let mut children: Vec<Box<dyn InternalIterator>> = Vec::new();
    children.push(Box::new(view.memtable.iter()));
    for m in &view.frozen {
        children.push(Box::new(m.iter()));
    }
    let lower = options.lower_bound.as_deref();
    let upper = options.upper_bound.as_deref();
    for (level, files) in view.levels.iter().enumerate() {
        let overlapping = files.iter().filter(|table| {
            let meta = table.meta();
            let before = upper.is_some_and(|u| meta.smallest_user_key() >= u);
            let after = lower.is_some_and(|l| meta.largest_user_key() < l);
            !before && !after
        });
        if level == 0 {
            for table in overlapping {
                children.push(Box::new(table.reader()?.iter()));
            }
            continue;
        }
        // Below L0 a level's files do not overlap: one child per level, not per file.
        let mut level_files = Vec::new();
        for table in overlapping {
            level_files.push(Bounded {
                iter: Box::new(table.reader()?.iter()),
                smallest: table.meta().smallest.clone(),
                largest: table.meta().largest.clone(),
            });
        }
        children.extend(concat_iter::level_children(level_files, compare_internal));
    }
    let merged = MergingIterator::new(children, compare_internal);
    let tombstone_view = TombstoneView {
        tombstones: view.tombstones.clone(),
        memtables: std::iter::once(view.memtable.clone())
            .chain(view.frozen.iter().cloned())
            .collect(),
        snapshot,
    };
    let iter = DbIter::new(Box::new(merged), snapshot)
        .with_merge_operator(view.options.merge_operator.clone())
        .with_range_tombstones(Box::new(move |key, sequence| {
            tombstone_view.covers(key, sequence)
        }))
        .with_bounds(options.lower_bound, options.upper_bound);
    Ok(DbIterator {
        iter,
        _pinned: sv.clone(),
    })
}

struct TombstoneView {
    tombstones: Vec<crate::lsm::version::RangeTombstone>,
    memtables: Vec<Arc<crate::lsm::memtable::Memtable>>,
    snapshot: u64,
}

impl TombstoneView {
    fn covers(&self, key: &[u8], sequence: u64) -> bool {
        self.tombstones
            .iter()
            .any(|t| t.covers(key, sequence, self.snapshot))
            || self
                .memtables
                .iter()
                .any(|m| m.is_covered(key, sequence, self.snapshot))
    }
}

pub(super) fn stats(inner: &DbInner) -> DbStats {
    let sv = inner.current();
    let core = inner.core.lock();
    let mut column_families = Vec::new();
    for (id, state) in &core.cfs {
        let mut stats = CfStats {
            name: state.name.clone(),
            ..CfStats::default()
        };
        if let Some(v) = core.version.cfs.get(id) {
            for (level, files) in v.levels.iter().enumerate() {
                stats.files_per_level[level] = files.len();
                stats.live_data_size += files.iter().map(|f| f.size).sum::<u64>();
            }
        }
        if let Some(view) = sv.cfs.get(id) {
            stats.memtable_bytes = std::iter::once(&view.memtable)
                .chain(view.frozen.iter())
                .map(|m| m.approximate_memory_usage() as u64)
                .sum();
        }
        column_families.push(stats);
    }
    let cache = inner.cache.stats();
    let c = &inner.counters;
    DbStats {
        column_families,
        compaction_bytes_read: c.compaction_bytes_read.load(Ordering::Relaxed),
        compaction_bytes_written: c.compaction_bytes_written.load(Ordering::Relaxed),
        flush_bytes_written: c.flush_bytes_written.load(Ordering::Relaxed),
        write_stalls: c.write_stalls.load(Ordering::Relaxed),
        block_cache_hits: cache.hits,
        block_cache_misses: cache.misses,
    }
}
