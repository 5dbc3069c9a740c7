//! [`ConcatIterator`]: one sorted view over children that are sorted and do not overlap (the
//! files of one level below L0), in both directions, positioned on one child at a time.
//!
//! A level of n files merged as n children of a [`MergingIterator`] costs n key comparisons per
//! step; as one concatenated child it costs one. Invariant: `current` is the index of the child
//! the iterator is on, or `children.len()` when it is on no entry; every entry of child i sorts
//! before every entry of child i + 1.
//!
//! [`MergingIterator`]: super::merge_iter::MergingIterator

use std::cmp::Ordering;

use crate::error::Result;
use crate::lsm::iterator::InternalIterator;
use crate::lsm::merge_iter::Comparator;

/// One child of a [`ConcatIterator`] with the smallest and largest keys it can hold.
pub struct Bounded {
    /// The child's iterator.
    pub iter: Box<dyn InternalIterator>,
    /// No entry of the child sorts before this key.
    pub smallest: Vec<u8>,
    /// No entry of the child sorts after this key.
    pub largest: Vec<u8>,
}

/// Concatenates sorted, non-overlapping children (see the module comment).
pub struct ConcatIterator {
    children: Vec<Bounded>,
    current: usize,
    compare: Comparator,
}

impl ConcatIterator {
    /// Concatenates `children` in their order, or gives them back when they are not sorted by
    /// `compare` without overlap (each child's `largest` below the next one's `smallest`), so
    /// the caller can merge them instead.
    pub fn new(
        children: Vec<Bounded>,
        compare: Comparator,
    ) -> std::result::Result<Self, Vec<Bounded>> {
        let ordered = children
            .iter()
            .all(|c| compare(&c.smallest, &c.largest) != Ordering::Greater)
            && children
                .windows(2)
                .all(|w| compare(&w[0].largest, &w[1].smallest) == Ordering::Less);
        if !ordered {
            return Err(children);
        }
        let current = children.len();
        Ok(ConcatIterator {
            children,
            current,
            compare,
        })
    }

    /// From child `current` on, the first child with an entry, positioning each child it
    /// enters on its first entry.
    fn skip_forward(&mut self) -> Result<()> {
        while self.current < self.children.len() && !self.children[self.current].iter.valid() {
            self.current += 1;
            if let Some(child) = self.children.get_mut(self.current) {
                child.iter.seek_to_first()?;
            }
        }
        Ok(())
    }

    /// From child `current` back, the last child with an entry, positioning each child it
    /// enters on its last entry; on no entry when none has one.
    fn skip_backward(&mut self) -> Result<()> {
        while self.current < self.children.len() && !self.children[self.current].iter.valid() {
            if self.current == 0 {
                self.current = self.children.len();
                break;
            }
            self.current -= 1;
            self.children[self.current].iter.seek_to_last()?;
        }
        Ok(())
    }
}

/// The children for the files of one level below L0, in any order: one concatenated child
/// (none for no file, the file itself for one), or the files one by one when they overlap
/// (never, in a consistent version), for a [`MergingIterator`] to merge.
///
/// [`MergingIterator`]: super::merge_iter::MergingIterator
pub fn level_children(
    mut files: Vec<Bounded>,
    compare: Comparator,
) -> Vec<Box<dyn InternalIterator>> {
    if files.len() < 2 {
        return files.into_iter().map(|f| f.iter).collect();
    }
    files.sort_by(|a, b| compare(&a.smallest, &b.smallest));
    match ConcatIterator::new(files, compare) {
        Ok(level) => vec![Box::new(level)],
        Err(files) => files.into_iter().map(|f| f.iter).collect(),
    }
}

impl InternalIterator for ConcatIterator {
    fn valid(&self) -> bool {
        self.children
            .get(self.current)
            .is_some_and(|c| c.iter.valid())
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.current = 0;
        if let Some(child) = self.children.first_mut() {
            child.iter.seek_to_first()?;
        }
        self.skip_forward()
    }

    fn seek_to_last(&mut self) -> Result<()> {
        self.current = self.children.len();
        if let Some(last) = self.children.len().checked_sub(1) {
            self.current = last;
            self.children[last].iter.seek_to_last()?;
        }
        self.skip_backward()
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        // The first child that can hold a key at or after `target`.
        let compare = self.compare;
        self.current = self
            .children
            .partition_point(|c| compare(&c.largest, target) == Ordering::Less);
        if let Some(child) = self.children.get_mut(self.current) {
            child.iter.seek(target)?;
        }
        self.skip_forward()
    }

    fn seek_for_prev(&mut self, target: &[u8]) -> Result<()> {
        // The last child that can hold a key at or before `target`.
        let compare = self.compare;
        let after = self
            .children
            .partition_point(|c| compare(&c.smallest, target) != Ordering::Greater);
        self.current = self.children.len();
        if let Some(i) = after.checked_sub(1) {
            self.current = i;
            self.children[i].iter.seek_for_prev(target)?;
        }
        self.skip_backward()
    }

    fn next(&mut self) -> Result<()> {
        let Some(child) = self.children.get_mut(self.current) else {
            return Ok(());
        };
        child.iter.next()?;
        self.skip_forward()
    }

    fn prev(&mut self) -> Result<()> {
        let Some(child) = self.children.get_mut(self.current) else {
            return Ok(());
        };
        child.iter.prev()?;
        self.skip_backward()
    }

    fn key(&self) -> &[u8] {
        self.children
            .get(self.current)
            .map_or(&[], |c| c.iter.key())
    }

    fn value(&self) -> &[u8] {
        self.children
            .get(self.current)
            .map_or(&[], |c| c.iter.value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::merge_iter::{VecIterator, bytewise, check_against_model};
    use proptest::prelude::*;

    fn bounded(entries: Vec<(Vec<u8>, Vec<u8>)>, smallest: Vec<u8>, largest: Vec<u8>) -> Bounded {
        Bounded {
            iter: Box::new(VecIterator::new(entries, bytewise)),
            smallest,
            largest,
        }
    }

    #[test]
    fn overlapping_or_unsorted_children_are_given_back() {
        let child = |lo: u8, hi: u8| {
            bounded(
                vec![(vec![lo], vec![]), (vec![hi], vec![])],
                vec![lo],
                vec![hi],
            )
        };
        assert!(ConcatIterator::new(vec![child(1, 5), child(5, 9)], bytewise).is_err());
        assert!(ConcatIterator::new(vec![child(6, 9), child(1, 5)], bytewise).is_err());
        assert!(ConcatIterator::new(vec![bounded(vec![], vec![4], vec![3])], bytewise).is_err());
        let back = ConcatIterator::new(vec![child(1, 5), child(3, 9)], bytewise)
            .err()
            .unwrap();
        assert_eq!(back.len(), 2);
        assert!(ConcatIterator::new(vec![child(1, 5), child(6, 9)], bytewise).is_ok());
        assert!(ConcatIterator::new(vec![], bytewise).is_ok());
    }

    #[test]
    fn level_children_sorts_files_into_one_child_or_keeps_overlapping_ones_apart() {
        let child = |lo: u8, hi: u8| {
            bounded(
                vec![(vec![lo], vec![lo]), (vec![hi], vec![hi])],
                vec![lo],
                vec![hi],
            )
        };
        let mut one = level_children(vec![child(7, 9), child(1, 3), child(4, 6)], bytewise);
        assert_eq!(one.len(), 1);
        let it = &mut one[0];
        it.seek_to_first().unwrap();
        let mut keys = Vec::new();
        while it.valid() {
            keys.push(it.key()[0]);
            it.next().unwrap();
        }
        assert_eq!(keys, [1, 3, 4, 6, 7, 9]);
        assert_eq!(
            level_children(vec![child(1, 5), child(4, 9)], bytewise).len(),
            2
        );
        assert_eq!(level_children(vec![child(1, 5)], bytewise).len(), 1);
        assert!(level_children(vec![], bytewise).is_empty());
    }

    proptest! {
        /// Every operation gives the answer of one sorted run holding all the children's
        /// entries: children may be empty, and their bounds may be wider than their entries.
        #[test]
        fn matches_one_sorted_run(
            cuts in proptest::collection::btree_set(1u16..400, 0..8),
            keys in proptest::collection::btree_set(0u16..400, 0..60),
            widen in any::<bool>(),
            ops in proptest::collection::vec((0u8..6, 0u16..410), 1..50),
        ) {
            let key = |k: u16| k.to_be_bytes().to_vec();
            let mut bounds: Vec<u16> = vec![0];
            bounds.extend(cuts.iter().copied());
            bounds.push(400);
            let mut children = Vec::new();
            for w in bounds.windows(2) {
                let (lo, hi) = (w[0], w[1] - 1);
                let entries: Vec<_> = keys
                    .iter()
                    .filter(|&&k| lo <= k && k <= hi)
                    .map(|&k| (key(k), vec![k as u8]))
                    .collect();
                // Bounds are the child's range (wider than its entries), or its entries' own.
                let (smallest, largest) = match (widen, entries.first(), entries.last()) {
                    (false, Some(first), Some(last)) => (first.0.clone(), last.0.clone()),
                    _ => (key(lo), key(hi)),
                };
                children.push(bounded(entries, smallest, largest));
            }
            let model: Vec<_> = keys.iter().map(|&k| (key(k), vec![k as u8])).collect();
            let mut it = ConcatIterator::new(children, bytewise).ok().unwrap();
            let mut m = VecIterator::new(model, bytewise);
            let ops: Vec<_> = ops.into_iter().map(|(op, k)| (op, key(k))).collect();
            check_against_model(&mut it, &mut m, &ops)?;
        }
    }
}
