//! [`MergingIterator`]: one sorted view over several sorted children (memtables and SSTs),
//! in both directions, in the manner of LevelDB's merging iterator.
//!
//! Invariant: when moving forward every valid child is positioned at or after the current key
//! and the current child is the smallest; when moving backward every valid child is at or before
//! it and the current child is the largest. A change of direction re-seeks the other children.

use std::cmp::Ordering;

use crate::error::Result;
use crate::lsm::iterator::InternalIterator;

/// Orders keys of the merged children.
pub type Comparator = fn(&[u8], &[u8]) -> Ordering;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Forward,
    Backward,
}

/// Merges sorted children into one sorted iterator.
pub struct MergingIterator {
    children: Vec<Box<dyn InternalIterator>>,
    current: Option<usize>,
    direction: Direction,
    compare: Comparator,
}

impl MergingIterator {
    /// A merging iterator over `children`, ordered by `compare`. Among equal keys the child
    /// listed first wins (list newer sources first).
    pub fn new(children: Vec<Box<dyn InternalIterator>>, compare: Comparator) -> Self {
        MergingIterator {
            children,
            current: None,
            direction: Direction::Forward,
            compare,
        }
    }

    fn find_smallest(&mut self) {
        let mut best: Option<usize> = None;
        for (i, child) in self.children.iter().enumerate() {
            if !child.valid() {
                continue;
            }
            best = match best {
                Some(b)
                    if (self.compare)(child.key(), self.children[b].key()) != Ordering::Less =>
                {
                    Some(b)
                }
                _ => Some(i),
            };
        }
        self.current = best;
    }

    fn find_largest(&mut self) {
        let mut best: Option<usize> = None;
        for (i, child) in self.children.iter().enumerate().rev() {
            if !child.valid() {
                continue;
            }
            best = match best {
                Some(b)
                    if (self.compare)(child.key(), self.children[b].key()) != Ordering::Greater =>
                {
                    Some(b)
                }
                _ => Some(i),
            };
        }
        self.current = best;
    }
}

impl InternalIterator for MergingIterator {
    fn valid(&self) -> bool {
        self.current.is_some()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        for child in &mut self.children {
            child.seek_to_first()?;
        }
        self.direction = Direction::Forward;
        self.find_smallest();
        Ok(())
    }

    fn seek_to_last(&mut self) -> Result<()> {
        for child in &mut self.children {
            child.seek_to_last()?;
        }
        self.direction = Direction::Backward;
        self.find_largest();
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        for child in &mut self.children {
            child.seek(target)?;
        }
        self.direction = Direction::Forward;
        self.find_smallest();
        Ok(())
    }

    fn seek_for_prev(&mut self, target: &[u8]) -> Result<()> {
        for child in &mut self.children {
            child.seek_for_prev(target)?;
        }
        self.direction = Direction::Backward;
        self.find_largest();
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        let Some(current) = self.current else {
            return Ok(());
        };
        if self.direction == Direction::Backward {
            // Put every other child just after the current key.
            let key = self.children[current].key().to_vec();
            for (i, child) in self.children.iter_mut().enumerate() {
                if i == current {
                    continue;
                }
                child.seek(&key)?;
                if child.valid() && (self.compare)(child.key(), &key) == Ordering::Equal {
                    child.next()?;
                }
            }
            self.direction = Direction::Forward;
        }
        self.children[current].next()?;
        self.find_smallest();
        Ok(())
    }

    fn prev(&mut self) -> Result<()> {
        let Some(current) = self.current else {
            return Ok(());
        };
        if self.direction == Direction::Forward {
            // Put every other child just before the current key.
            let key = self.children[current].key().to_vec();
            for (i, child) in self.children.iter_mut().enumerate() {
                if i == current {
                    continue;
                }
                child.seek_for_prev(&key)?;
                if child.valid() && (self.compare)(child.key(), &key) == Ordering::Equal {
                    child.prev()?;
                }
            }
            self.direction = Direction::Backward;
        }
        self.children[current].prev()?;
        self.find_largest();
        Ok(())
    }

    fn key(&self) -> &[u8] {
        self.current.map_or(&[], |c| self.children[c].key())
    }

    fn value(&self) -> &[u8] {
        self.current.map_or(&[], |c| self.children[c].value())
    }
}

/// A sorted in-memory iterator (tests, and small sorted runs such as recovered entries).
#[cfg(test)]
pub struct VecIterator {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    position: Option<usize>,
    compare: Comparator,
}

#[cfg(test)]
impl VecIterator {
    /// An iterator over `entries`, which must be sorted by `compare`.
    pub fn new(entries: Vec<(Vec<u8>, Vec<u8>)>, compare: Comparator) -> Self {
        debug_assert!(
            entries
                .windows(2)
                .all(|w| compare(&w[0].0, &w[1].0) != Ordering::Greater)
        );
        VecIterator {
            entries,
            position: None,
            compare,
        }
    }
}

#[cfg(test)]
impl InternalIterator for VecIterator {
    fn valid(&self) -> bool {
        self.position.is_some()
    }
    fn seek_to_first(&mut self) -> Result<()> {
        self.position = (!self.entries.is_empty()).then_some(0);
        Ok(())
    }
    fn seek_to_last(&mut self) -> Result<()> {
        self.position = self.entries.len().checked_sub(1);
        Ok(())
    }
    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let i = self
            .entries
            .partition_point(|(k, _)| (self.compare)(k, target) == Ordering::Less);
        self.position = (i < self.entries.len()).then_some(i);
        Ok(())
    }
    fn seek_for_prev(&mut self, target: &[u8]) -> Result<()> {
        let i = self
            .entries
            .partition_point(|(k, _)| (self.compare)(k, target) != Ordering::Greater);
        self.position = i.checked_sub(1);
        Ok(())
    }
    fn next(&mut self) -> Result<()> {
        self.position = self
            .position
            .map(|p| p + 1)
            .filter(|&p| p < self.entries.len());
        Ok(())
    }
    fn prev(&mut self) -> Result<()> {
        self.position = self.position.and_then(|p| p.checked_sub(1));
        Ok(())
    }
    fn key(&self) -> &[u8] {
        self.position.map_or(&[], |p| self.entries[p].0.as_slice())
    }
    fn value(&self) -> &[u8] {
        self.position.map_or(&[], |p| self.entries[p].1.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytewise(a: &[u8], b: &[u8]) -> Ordering {
        a.cmp(b)
    }

    proptest! {
        #[test]
        fn matches_a_sorted_union(
            runs in proptest::collection::vec(proptest::collection::btree_set(0u16..200, 0..20), 1..5),
            ops in proptest::collection::vec((0u8..6, 0u16..210), 1..40),
        ) {
            // Distinct keys across children, as internal keys are.
            let mut model = Vec::new();
            let mut children: Vec<Box<dyn InternalIterator>> = Vec::new();
            for (i, run) in runs.iter().enumerate() {
                let entries: Vec<_> = run.iter().map(|k| {
                    let key = [k.to_be_bytes().as_slice(), &[i as u8]].concat();
                    (key, vec![i as u8])
                }).collect();
                model.extend(entries.iter().cloned());
                children.push(Box::new(VecIterator::new(entries, bytewise)));
            }
            model.sort();
            let mut it = MergingIterator::new(children, bytewise);
            let mut m = VecIterator::new(model, bytewise);
            for (op, k) in ops {
                let target = [k.to_be_bytes().as_slice(), &[2]].concat();
                match op {
                    0 => { it.seek(&target).unwrap(); m.seek(&target).unwrap(); }
                    1 => { it.seek_for_prev(&target).unwrap(); m.seek_for_prev(&target).unwrap(); }
                    2 if m.valid() => { it.next().unwrap(); m.next().unwrap(); }
                    3 if m.valid() => { it.prev().unwrap(); m.prev().unwrap(); }
                    4 => { it.seek_to_first().unwrap(); m.seek_to_first().unwrap(); }
                    _ => { it.seek_to_last().unwrap(); m.seek_to_last().unwrap(); }
                }
                prop_assert_eq!(it.valid(), m.valid());
                if m.valid() {
                    prop_assert_eq!(it.key(), m.key());
                    prop_assert_eq!(it.value(), m.value());
                }
            }
        }
    }
}
