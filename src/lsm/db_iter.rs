//! [`DbIter`]: the user-facing iterator of the store, in the manner of LevelDB's `DBIter`.
//!
//! It turns a sorted stream of internal entries (a merging iterator over memtables and SSTs)
//! into one entry per user key: the value [`resolve`] gives at the snapshot, in both directions,
//! within optional bounds. Keys that resolve to nothing (deleted, or only newer writes) are
//! skipped. Invariant: see [`DbIter`] for where the inner iterator sits in each direction.

use std::sync::Arc;

use crate::error::Result;
use crate::lsm::format::{ParsedKey, TRAILER_LEN, ValueKind, parse_internal_key};
use crate::lsm::iterator::InternalIterator;
use crate::lsm::merge::{MergeOperator, VersionRef, resolve};

/// Says whether the version of a user key at a sequence is deleted by a range tombstone visible
/// at the iterator's snapshot.
pub type RangeTombstoneCheck = Box<dyn Fn(&[u8], u64) -> bool + Send>;

/// The trailer sorting before every version of a user key (LevelDB's `kValueTypeForSeek` at
/// the largest sequence).
const FIRST_TRAILER: u64 = u64::MAX;
/// The trailer sorting after every version of a user key (sequence 0 is never written).
const LAST_TRAILER: u64 = 0;

/// Label of corruption errors raised here: the inner iterator does not say which file a key
/// came from.
const SOURCE: &str = "db iterator";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Forward,
    Backward,
}

/// One collected version of the user key being resolved; its bytes live in `DbIter::arena`.
#[derive(Clone, Copy, Debug)]
struct Version {
    sequence: u64,
    kind: ValueKind,
    start: usize,
    end: usize,
}

/// A cursor over user keys and their resolved values at a snapshot.
///
/// Invariant, while valid: moving forward the inner iterator sits on the first
/// entry after every version of the current user key; moving backward it sits on the last entry
/// of the previous user key. The inner iterator is re-seeked only when the direction changes.
pub struct DbIter {
    inner: Box<dyn InternalIterator>,
    snapshot: u64,
    merge: Option<Arc<dyn MergeOperator>>,
    covered: RangeTombstoneCheck,
    lower: Option<Vec<u8>>,
    upper: Option<Vec<u8>>,
    direction: Direction,
    valid: bool,
    /// The current user key (while collecting: the key being collected).
    key: Vec<u8>,
    /// The resolved value of `key`.
    value: Vec<u8>,
    /// Versions of the key being collected, in the order the inner iterator met them.
    versions: Vec<Version>,
    /// Value bytes of `versions`, reused from key to key.
    arena: Vec<u8>,
    /// Internal seek keys, reused.
    seek_key: Vec<u8>,
}

impl DbIter {
    /// An unpositioned iterator over `inner` (internal entries in `compare_internal` order, for
    /// example a merging iterator listing newer sources first) at `snapshot`, without merge
    /// operator, range tombstones or bounds.
    pub fn new(inner: Box<dyn InternalIterator>, snapshot: u64) -> Self {
        DbIter {
            inner,
            snapshot,
            merge: None,
            covered: Box::new(|_, _| false),
            lower: None,
            upper: None,
            direction: Direction::Forward,
            valid: false,
            key: Vec::new(),
            value: Vec::new(),
            versions: Vec::new(),
            arena: Vec::new(),
            seek_key: Vec::new(),
        }
    }

    /// Sets the merge operator applied to merge operands (without one, the newest operand wins,
    /// as in [`resolve`]).
    pub fn with_merge_operator(mut self, merge: Option<Arc<dyn MergeOperator>>) -> Self {
        self.merge = merge;
        self
    }

    /// Sets the range-tombstone check: `covered(user_key, sequence)` is true when a range
    /// tombstone visible at the snapshot deletes that version.
    pub fn with_range_tombstones(mut self, covered: RangeTombstoneCheck) -> Self {
        self.covered = covered;
        self
    }

    /// Limits iteration to user keys in `[lower, upper)`; `None` leaves that side open.
    pub fn with_bounds(mut self, lower: Option<Vec<u8>>, upper: Option<Vec<u8>>) -> Self {
        self.lower = lower;
        self.upper = upper;
        self.valid = false;
        self
    }

    /// Limits iteration to user keys starting with `prefix`.
    #[cfg(test)]
    pub fn with_prefix(self, prefix: &[u8]) -> Self {
        self.with_bounds(Some(prefix.to_vec()), prefix_upper_bound(prefix))
    }

    /// Whether the iterator is positioned on an entry.
    pub fn valid(&self) -> bool {
        self.valid
    }

    /// The current user key; empty when not valid.
    pub fn key(&self) -> &[u8] {
        if self.valid { &self.key } else { &[] }
    }

    /// The current value; empty when not valid.
    pub fn value(&self) -> &[u8] {
        if self.valid { &self.value } else { &[] }
    }

    /// Positions on the first user key (at or after the lower bound).
    pub fn seek_to_first(&mut self) -> Result<()> {
        let result = self.seek_to_first_inner();
        self.settle(result)
    }

    /// Positions on the last user key (before the upper bound).
    pub fn seek_to_last(&mut self) -> Result<()> {
        let result = self.seek_to_last_inner();
        self.settle(result)
    }

    /// Positions on the first user key at or after `target` (and the lower bound).
    pub fn seek(&mut self, target: &[u8]) -> Result<()> {
        let result = self.seek_inner(target);
        self.settle(result)
    }

    /// Positions on the last user key at or before `target` (and before the upper bound).
    pub fn seek_for_prev(&mut self, target: &[u8]) -> Result<()> {
        let result = self.seek_for_prev_inner(target);
        self.settle(result)
    }

    /// Moves to the next user key; does nothing when not valid.
    pub fn next(&mut self) -> Result<()> {
        if !self.valid {
            return Ok(());
        }
        let result = self.next_inner();
        self.settle(result)
    }

    /// Moves to the previous user key; does nothing when not valid.
    pub fn prev(&mut self) -> Result<()> {
        if !self.valid {
            return Ok(());
        }
        let result = self.prev_inner();
        self.settle(result)
    }

    /// A forward scan from the current position: yields the current entry (if valid), then
    /// moves with [`DbIter::next`]. After an error it yields the error and ends.
    pub fn entries(self) -> Entries {
        Entries {
            iter: self,
            started: false,
            done: false,
        }
    }

    /// An error leaves the iterator invalid.
    fn settle(&mut self, result: Result<()>) -> Result<()> {
        if result.is_err() {
            self.valid = false;
        }
        result
    }

    fn seek_to_first_inner(&mut self) -> Result<()> {
        self.direction = Direction::Forward;
        match self.lower.take() {
            Some(lower) => {
                set_seek_key(&mut self.seek_key, &lower, FIRST_TRAILER);
                self.lower = Some(lower);
                self.inner.seek(&self.seek_key)?;
            }
            None => self.inner.seek_to_first()?,
        }
        self.find_next_user_entry()
    }

    fn seek_to_last_inner(&mut self) -> Result<()> {
        self.direction = Direction::Backward;
        match self.upper.take() {
            Some(upper) => {
                // The last entry before every version of `upper`.
                set_seek_key(&mut self.seek_key, &upper, FIRST_TRAILER);
                self.upper = Some(upper);
                self.inner.seek_for_prev(&self.seek_key)?;
            }
            None => self.inner.seek_to_last()?,
        }
        self.find_prev_user_entry()
    }

    fn seek_inner(&mut self, target: &[u8]) -> Result<()> {
        self.direction = Direction::Forward;
        let target = match &self.lower {
            Some(lower) if target < lower.as_slice() => lower.as_slice(),
            _ => target,
        };
        set_seek_key(&mut self.seek_key, target, FIRST_TRAILER);
        self.inner.seek(&self.seek_key)?;
        self.find_next_user_entry()
    }

    fn seek_for_prev_inner(&mut self, target: &[u8]) -> Result<()> {
        if self.upper.as_deref().is_some_and(|upper| target >= upper) {
            return self.seek_to_last_inner();
        }
        self.direction = Direction::Backward;
        set_seek_key(&mut self.seek_key, target, LAST_TRAILER);
        self.inner.seek_for_prev(&self.seek_key)?;
        self.find_prev_user_entry()
    }

    fn next_inner(&mut self) -> Result<()> {
        if self.direction == Direction::Backward {
            // The inner iterator is before the current key: move it past the key's versions.
            set_seek_key(&mut self.seek_key, &self.key, LAST_TRAILER);
            self.inner.seek(&self.seek_key)?;
            while self.inner.valid() && parse(self.inner.key())?.user_key == self.key.as_slice() {
                self.inner.next()?;
            }
            self.direction = Direction::Forward;
        }
        self.find_next_user_entry()
    }

    fn prev_inner(&mut self) -> Result<()> {
        if self.direction == Direction::Forward {
            // The inner iterator is after the current key: move it before the key's versions.
            set_seek_key(&mut self.seek_key, &self.key, FIRST_TRAILER);
            self.inner.seek_for_prev(&self.seek_key)?;
            while self.inner.valid() && parse(self.inner.key())?.user_key >= self.key.as_slice() {
                self.inner.prev()?;
            }
            self.direction = Direction::Backward;
        }
        self.find_prev_user_entry()
    }

    /// From the first entry of some user key, moving forward: stops on the first user key that
    /// resolves to a value, with the inner iterator past its versions.
    fn find_next_user_entry(&mut self) -> Result<()> {
        self.valid = false;
        while self.inner.valid() {
            let first = parse(self.inner.key())?;
            if self
                .upper
                .as_deref()
                .is_some_and(|upper| first.user_key >= upper)
            {
                return Ok(());
            }
            self.collect_versions(true)?;
            // Collected newest first.
            if self.resolve_collected(false) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// From the last entry of some user key, moving backward: stops on the first user key that
    /// resolves to a value, with the inner iterator on the last entry of the key before it.
    fn find_prev_user_entry(&mut self) -> Result<()> {
        self.valid = false;
        while self.inner.valid() {
            let last = parse(self.inner.key())?;
            if self
                .upper
                .as_deref()
                .is_some_and(|upper| last.user_key >= upper)
            {
                self.inner.prev()?;
                continue;
            }
            if self
                .lower
                .as_deref()
                .is_some_and(|lower| last.user_key < lower)
            {
                return Ok(());
            }
            self.collect_versions(false)?;
            // Collected oldest first.
            if self.resolve_collected(true) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Collects every version of the user key the inner iterator is on, moving forward (newest
    /// first) or backward (oldest first), and leaves it on the first entry past them.
    fn collect_versions(&mut self, forward: bool) -> Result<()> {
        let current = parse(self.inner.key())?;
        self.key.clear();
        self.key.extend_from_slice(current.user_key);
        self.versions.clear();
        self.arena.clear();
        while self.inner.valid() {
            let entry = parse(self.inner.key())?;
            if entry.user_key != self.key.as_slice() {
                break;
            }
            collect(
                &mut self.versions,
                &mut self.arena,
                &entry,
                self.inner.value(),
            );
            if forward {
                self.inner.next()?;
            } else {
                self.inner.prev()?;
            }
        }
        Ok(())
    }

    /// Resolves the collected versions of `key`; on a value, stores it and becomes valid.
    fn resolve_collected(&mut self, oldest_first: bool) -> bool {
        let arena = &self.arena;
        let as_ref = |v: &Version| VersionRef {
            sequence: v.sequence,
            kind: v.kind,
            value: arena.get(v.start..v.end).unwrap_or_default(),
        };
        let key = self.key.as_slice();
        let covered = |sequence| (self.covered)(key, sequence);
        let merge = self.merge.as_deref();
        let resolved = if oldest_first {
            let newest_first = self.versions.iter().rev().map(as_ref);
            resolve(key, newest_first, self.snapshot, covered, merge)
        } else {
            let newest_first = self.versions.iter().map(as_ref);
            resolve(key, newest_first, self.snapshot, covered, merge)
        };
        match resolved {
            Some(value) => {
                self.value = value;
                self.valid = true;
                true
            }
            None => false,
        }
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` when there is
/// none (`prefix` empty or all 0xff).
pub fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let keep = prefix.iter().rposition(|&b| b != 0xff)?;
    let mut upper = prefix.get(..=keep)?.to_vec();
    if let Some(last) = upper.last_mut() {
        *last += 1;
    }
    Some(upper)
}

/// A forward scan of a [`DbIter`], from [`DbIter::entries`].
pub struct Entries {
    iter: DbIter,
    started: bool,
    done: bool,
}

impl Iterator for Entries {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.started
            && let Err(error) = self.iter.next()
        {
            self.done = true;
            return Some(Err(error));
        }
        self.started = true;
        if !self.iter.valid() {
            self.done = true;
            return None;
        }
        Some(Ok((self.iter.key().to_vec(), self.iter.value().to_vec())))
    }
}

fn parse(internal: &[u8]) -> Result<ParsedKey<'_>> {
    parse_internal_key(internal, SOURCE, 0)
}

fn set_seek_key(out: &mut Vec<u8>, user_key: &[u8], trailer: u64) {
    out.clear();
    out.reserve(user_key.len() + TRAILER_LEN);
    out.extend_from_slice(user_key);
    out.extend_from_slice(&trailer.to_be_bytes());
}

fn collect(versions: &mut Vec<Version>, arena: &mut Vec<u8>, entry: &ParsedKey<'_>, value: &[u8]) {
    let start = arena.len();
    arena.extend_from_slice(value);
    versions.push(Version {
        sequence: entry.sequence,
        kind: entry.kind,
        start,
        end: arena.len(),
    });
}

impl std::fmt::Debug for DbIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbIter")
            .field("snapshot", &self.snapshot)
            .field("lower", &self.lower)
            .field("upper", &self.upper)
            .field("valid", &self.valid)
            .field("key", &self.key())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
