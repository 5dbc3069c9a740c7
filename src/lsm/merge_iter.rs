//! [`MergingIterator`]: one sorted view over several sorted children (memtables and SSTs),
//! in both directions, in the manner of LevelDB's merging iterator.
//!
//! Invariant: when moving forward every valid child is positioned at or after the current key
//! and the current child is the smallest; when moving backward every valid child is at or before
//! it and the current child is the largest. A change of direction re-seeks the other children.
//! Moving forward (scans, compactions) keeps the valid children in a binary min-heap, so a step
//! costs about 2 log2(n) key comparisons instead of n; moving backward scans them all.

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
    /// Moving forward: the valid children, a min-heap by (key, index), `current` its top.
    /// Empty moving backward.
    heap: Vec<usize>,
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
            heap: Vec::new(),
        }
    }

    /// Whether child `a` sorts before child `b` (both valid): by key, then the one listed first.
    fn before(&self, a: usize, b: usize) -> bool {
        match (self.compare)(self.children[a].key(), self.children[b].key()) {
            Ordering::Less => true,
            Ordering::Equal => a < b,
            Ordering::Greater => false,
        }
    }

    /// Moves the heap entry at `at` down to its place.
    fn sift_down(&mut self, mut at: usize) {
        let len = self.heap.len();
        loop {
            let left = 2 * at + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let smaller = if right < len && self.before(self.heap[right], self.heap[left]) {
                right
            } else {
                left
            };
            if !self.before(self.heap[smaller], self.heap[at]) {
                break;
            }
            self.heap.swap(at, smaller);
            at = smaller;
        }
    }

    /// Rebuilds the heap from every valid child and makes the smallest current.
    fn build_heap(&mut self) {
        let mut heap = std::mem::take(&mut self.heap);
        heap.clear();
        heap.extend((0..self.children.len()).filter(|&i| self.children[i].valid()));
        self.heap = heap;
        for at in (0..self.heap.len() / 2).rev() {
            self.sift_down(at);
        }
        self.current = self.heap.first().copied();
    }

    /// After the heap's top child moved forward: puts it back in place (or drops it when it
    /// ran out) and makes the new smallest current.
    fn advance_top(&mut self) {
        if let Some(&top) = self.heap.first() {
            if !self.children[top].valid() {
                let last = self.heap.len() - 1;
                self.heap.swap(0, last);
                self.heap.pop();
            }
            self.sift_down(0);
        }
        self.current = self.heap.first().copied();
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
        self.build_heap();
        Ok(())
    }

    fn seek_to_last(&mut self) -> Result<()> {
        for child in &mut self.children {
            child.seek_to_last()?;
        }
        self.direction = Direction::Backward;
        self.heap.clear();
        self.find_largest();
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        for child in &mut self.children {
            child.seek(target)?;
        }
        self.direction = Direction::Forward;
        self.build_heap();
        Ok(())
    }

    fn seek_for_prev(&mut self, target: &[u8]) -> Result<()> {
        for child in &mut self.children {
            child.seek_for_prev(target)?;
        }
        self.direction = Direction::Backward;
        self.heap.clear();
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
            self.children[current].next()?;
            self.build_heap();
            return Ok(());
        }
        self.children[current].next()?;
        self.advance_top();
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
            self.heap.clear();
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

/// Byte order, for tests.
#[cfg(test)]
pub fn bytewise(a: &[u8], b: &[u8]) -> Ordering {
    a.cmp(b)
}

/// Runs `ops` (op code, target key) on `it` and on `model`, a sorted run holding the same
/// entries, and checks after each that both are on the same entry: 0 seek, 1 seek_for_prev,
/// 2 next, 3 prev (both only when positioned), 4 seek_to_first, else seek_to_last.
#[cfg(test)]
pub fn check_against_model(
    it: &mut dyn InternalIterator,
    model: &mut VecIterator,
    ops: &[(u8, Vec<u8>)],
) -> std::result::Result<(), proptest::test_runner::TestCaseError> {
    for (op, target) in ops {
        match op {
            0 => {
                it.seek(target).unwrap();
                model.seek(target).unwrap();
            }
            1 => {
                it.seek_for_prev(target).unwrap();
                model.seek_for_prev(target).unwrap();
            }
            2 | 3 if !model.valid() => {}
            2 => {
                it.next().unwrap();
                model.next().unwrap();
            }
            3 => {
                it.prev().unwrap();
                model.prev().unwrap();
            }
            4 => {
                it.seek_to_first().unwrap();
                model.seek_to_first().unwrap();
            }
            _ => {
                it.seek_to_last().unwrap();
                model.seek_to_last().unwrap();
            }
        }
        proptest::prop_assert_eq!(it.valid(), model.valid());
        if model.valid() {
            proptest::prop_assert_eq!(it.key(), model.key());
            proptest::prop_assert_eq!(it.value(), model.value());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Moving forward, equal keys of several children come out in the children's order
        /// (the first listed first), as one run sorted by (key, child) would have them.
        #[test]
        fn forward_ties_come_out_in_child_order(
            runs in proptest::collection::vec(proptest::collection::btree_set(0u8..30, 0..20), 1..9),
            start in 0u8..32,
        ) {
            let mut model = Vec::new();
            let mut children: Vec<Box<dyn InternalIterator>> = Vec::new();
            for (i, run) in runs.iter().enumerate() {
                let entries: Vec<_> = run.iter().map(|&k| (vec![k], vec![i as u8])).collect();
                model.extend(entries.iter().map(|(k, v)| (k[0], v[0])));
                children.push(Box::new(VecIterator::new(entries, bytewise)));
            }
            model.sort();
            let expected: Vec<(u8, u8)> = model.into_iter().filter(|&(k, _)| k >= start).collect();
            let mut it = MergingIterator::new(children, bytewise);
            it.seek(&[start]).unwrap();
            let mut got = Vec::new();
            while it.valid() {
                got.push((it.key()[0], it.value()[0]));
                it.next().unwrap();
            }
            prop_assert_eq!(got, expected);
        }

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
            let ops: Vec<_> = ops
                .into_iter()
                .map(|(op, k)| (op, [k.to_be_bytes().as_slice(), &[2]].concat()))
                .collect();
            check_against_model(&mut it, &mut m, &ops)?;
        }
    }
}
