//! [`MemtableIter`]: a cursor over a memtable's point entries (its skiplist and sorted runs,
//! merged) or over its range tombstones.

use std::ops::Bound;
use std::sync::Arc;

use super::entry::Entry;
use super::run::RunIter;
use super::{Source, Table};
use crate::error::Result;
use crate::lsm::format::compare_internal;
use crate::lsm::iterator::InternalIterator;
use crate::lsm::merge_iter::MergingIterator;

/// A cursor over a memtable, in `compare_internal` order.
///
/// It sees the memtable's skiplist and runs as they were when it was made, plus whatever is
/// inserted into that skiplist later (it re-seeks on each move, so `next` may see newer
/// inserts); readers at a snapshot sequence see exactly the entries visible at it.
pub struct MemtableIter {
    merged: MergingIterator,
}

impl MemtableIter {
    /// A cursor over `buffer` and the sealed sources (newest first).
    pub(super) fn over_sources(buffer: &Arc<Table>, older: &[Source]) -> Self {
        let mut children: Vec<Box<dyn InternalIterator>> = Vec::with_capacity(older.len() + 1);
        children.push(Box::new(SkipIter::new(Arc::clone(buffer))));
        for source in older {
            children.push(match source {
                Source::Buffer(table) => Box::new(SkipIter::new(Arc::clone(table))),
                Source::Run(run) => Box::new(RunIter::new(Arc::clone(run))),
            });
        }
        MemtableIter {
            merged: MergingIterator::new(children, compare_internal),
        }
    }
}

impl InternalIterator for MemtableIter {
    fn valid(&self) -> bool {
        self.merged.valid()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.merged.seek_to_first()
    }

    fn seek_to_last(&mut self) -> Result<()> {
        self.merged.seek_to_last()
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.merged.seek(target)
    }

    fn seek_for_prev(&mut self, target: &[u8]) -> Result<()> {
        self.merged.seek_for_prev(target)
    }

    fn next(&mut self) -> Result<()> {
        self.merged.next()
    }

    fn prev(&mut self) -> Result<()> {
        self.merged.prev()
    }

    fn key(&self) -> &[u8] {
        self.merged.key()
    }

    fn value(&self) -> &[u8] {
        self.merged.value()
    }
}

/// A cursor over one skiplist. It holds the current entry (reference-counted, no copy) and
/// re-seeks from it on each move, so it stays correct while other threads insert.
struct SkipIter {
    table: Arc<Table>,
    current: Option<Entry>,
}

impl SkipIter {
    fn new(table: Arc<Table>) -> Self {
        SkipIter {
            table,
            current: None,
        }
    }

    fn set(&mut self, entry: Option<crossbeam_skiplist::set::Entry<'_, Entry>>) {
        self.current = entry.map(|e| e.value().clone());
    }
}

impl InternalIterator for SkipIter {
    fn valid(&self) -> bool {
        self.current.is_some()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        let table = Arc::clone(&self.table);
        self.set(table.front());
        Ok(())
    }

    fn seek_to_last(&mut self) -> Result<()> {
        let table = Arc::clone(&self.table);
        self.set(table.back());
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let table = Arc::clone(&self.table);
        self.set(table.lower_bound(Bound::Included(&Entry::probe_internal(target))));
        Ok(())
    }

    fn seek_for_prev(&mut self, target: &[u8]) -> Result<()> {
        let table = Arc::clone(&self.table);
        self.set(table.upper_bound(Bound::Included(&Entry::probe_internal(target))));
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        if let Some(current) = self.current.take() {
            let table = Arc::clone(&self.table);
            self.set(table.lower_bound(Bound::Excluded(&current)));
        }
        Ok(())
    }

    fn prev(&mut self) -> Result<()> {
        if let Some(current) = self.current.take() {
            let table = Arc::clone(&self.table);
            self.set(table.upper_bound(Bound::Excluded(&current)));
        }
        Ok(())
    }

    fn key(&self) -> &[u8] {
        self.current.as_ref().map_or(&[], Entry::internal_key)
    }

    fn value(&self) -> &[u8] {
        self.current.as_ref().map_or(&[], Entry::value)
    }
}
