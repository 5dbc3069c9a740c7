//! [`BlockIter`]: a bidirectional cursor over one decoded [`Block`] (FORMAT.md §1.3).
//!
//! Seeks binary-search the restart points (whose keys are stored whole), then scan forward;
//! `prev` restarts from the restart point before the current entry. Every entry is checked
//! against the entry area before it is read: a damaged one makes the moving call fail with
//! `Error::Corruption` and leaves the iterator invalid.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::codec::block::{Block, Comparator};
use crate::codec::iter::InternalIterator;
use crate::codec::varint::get_varint32;
use crate::error::Result;

/// A decoded entry: where its key suffix and value lie and where the next entry starts.
struct Entry {
    shared: usize,
    suffix: (usize, usize),
    value: (usize, usize),
    next: usize,
}

/// A cursor over a [`Block`], generic over the key order through a [`Comparator`].
pub struct BlockIter {
    block: Arc<Block>,
    comparator: Comparator,
    /// Payload offset of the current entry.
    current: usize,
    /// Payload offset just after the current entry.
    next: usize,
    /// Index of the restart point at or before `current`.
    restart_index: usize,
    key: Vec<u8>,
    value: (usize, usize),
    valid: bool,
}

impl BlockIter {
    /// An unpositioned iterator over `block`.
    pub fn new(block: Arc<Block>, comparator: Comparator) -> Self {
        BlockIter {
            block,
            comparator,
            current: 0,
            next: 0,
            restart_index: 0,
            key: Vec::new(),
            value: (0, 0),
            valid: false,
        }
    }

    /// An unpositioned iterator over `block` that builds its keys in `key_buffer` (whose
    /// contents are discarded): point lookups reuse one buffer instead of allocating per block.
    pub fn with_key_buffer(block: Arc<Block>, comparator: Comparator, key_buffer: Vec<u8>) -> Self {
        let mut iter = BlockIter::new(block, comparator);
        iter.key = key_buffer;
        iter.key.clear();
        iter
    }

    /// Gives the key buffer back (see [`BlockIter::with_key_buffer`]).
    pub fn into_key_buffer(self) -> Vec<u8> {
        self.key
    }

    /// The block being iterated and the current value's range in its entry area
    /// ([`Block::entries`]): what a reader keeps to hold the value without copying it.
    pub(crate) fn value_in_block(&self) -> (&Arc<Block>, std::ops::Range<usize>) {
        (&self.block, self.value.0..self.value.1)
    }

    /// Reads the entry at `self.next` into the cursor; returns false at the end of the block.
    fn parse_next(&mut self) -> Result<bool> {
        // Borrow the block's areas once (fields are disjoint from the cursor's).
        let block = &*self.block;
        let (entries, restarts) = block.areas();
        self.current = self.next;
        let pos = self.current;
        let num_restarts = restarts.len() / 4;
        if pos >= entries.len() {
            self.valid = false;
            // A restart point the walk never landed on lies inside the last entry.
            if self.restart_index + 1 < num_restarts {
                return Err(self.skipped_restart(self.restart_index + 1));
            }
            return Ok(false);
        }
        let entry = match decode_entry(block, entries, pos) {
            Ok(entry) => entry,
            Err(e) => {
                self.valid = false;
                return Err(e);
            }
        };
        while self.restart_index + 1 < num_restarts
            && restart_at(restarts, self.restart_index + 1) <= pos
        {
            self.restart_index += 1;
            // Every restart point must be the start of an entry: seeks and `prev` decode from
            // there, so one inside an entry would read garbage only when walking backwards.
            if restart_at(restarts, self.restart_index) < pos {
                self.valid = false;
                return Err(self.skipped_restart(self.restart_index));
            }
        }
        let at_restart = restart_at(restarts, self.restart_index) == pos;
        if entry.shared > self.key.len() || (at_restart && entry.shared != 0) {
            self.valid = false;
            return Err(block.corruption(format!(
                "block entry at payload offset {pos} shares {} bytes with a {}-byte key{}",
                entry.shared,
                self.key.len(),
                if at_restart {
                    " at a restart point"
                } else {
                    ""
                }
            )));
        }
        let suffix = entries
            .get(entry.suffix.0..entry.suffix.1)
            .unwrap_or_default();
        self.key.truncate(entry.shared);
        self.key.extend_from_slice(suffix);
        self.value = entry.value;
        self.next = entry.next;
        self.valid = true;
        Ok(true)
    }

    /// The error for restart point `index`, which the forward walk stepped over.
    #[cold]
    fn skipped_restart(&self, index: usize) -> crate::error::Error {
        self.block.corruption(format!(
            "restart point {index} at payload offset {} is not the start of an entry",
            self.block.restart(index)
        ))
    }

    /// Resets the cursor to just before the entry at restart point `index`.
    fn seek_to_restart(&mut self, index: usize) {
        self.key.clear();
        self.restart_index = index;
        self.next = self.block.restart(index);
        self.valid = false;
    }

    /// Positions on the first entry at or after `target`, scanning from restart `index`.
    fn scan_from(&mut self, index: usize, target: &[u8]) -> Result<()> {
        self.seek_to_restart(index);
        while self.parse_next()? {
            if (self.comparator)(&self.key, target) != Ordering::Less {
                return Ok(());
            }
        }
        Ok(())
    }

    fn seek_inner(&mut self, target: &[u8]) -> Result<()> {
        let block = &*self.block;
        let (entries, restarts) = block.areas();
        let num_restarts = restarts.len() / 4;
        if num_restarts == 0 {
            self.valid = false;
            return Ok(());
        }
        // The last restart point whose key is before `target`: the answer lies after it. Restart
        // keys are stored whole, so each probe compares a slice of the block in place.
        let (mut left, mut right) = (0, num_restarts - 1);
        while left < right {
            let mid = left + (right - left).div_ceil(2);
            let key = restart_key(block, entries, restart_at(restarts, mid), mid)?;
            if (self.comparator)(key, target) == Ordering::Less {
                left = mid;
            } else {
                right = mid - 1;
            }
        }
        self.scan_from(left, target)
    }

    fn prev_inner(&mut self) -> Result<()> {
        let original = self.current;
        let mut index = self.restart_index;
        while self.block.restart(index) >= original {
            if index == 0 {
                self.valid = false;
                return Ok(());
            }
            index -= 1;
        }
        self.seek_to_restart(index);
        loop {
            if !self.parse_next()? || self.next > original {
                self.valid = false;
                return Err(self.block.corruption(format!(
                    "entries from restart point {index} do not lead to payload offset {original}"
                )));
            }
            if self.next == original {
                return Ok(());
            }
        }
    }

    fn seek_to_last_inner(&mut self) -> Result<()> {
        let count = self.block.num_restarts();
        if count == 0 {
            self.valid = false;
            return Ok(());
        }
        self.seek_to_restart(count - 1);
        while self.parse_next()? && self.next < self.block.entries().len() {}
        Ok(())
    }

    /// Runs a moving operation; on error the iterator is left invalid.
    fn moving(&mut self, op: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let result = op(self);
        if result.is_err() {
            self.valid = false;
        }
        result
    }
}

impl InternalIterator for BlockIter {
    fn valid(&self) -> bool {
        self.valid
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.moving(|it| {
            if it.block.num_restarts() == 0 {
                it.valid = false;
                return Ok(());
            }
            it.seek_to_restart(0);
            it.parse_next().map(drop)
        })
    }

    fn seek_to_last(&mut self) -> Result<()> {
        self.moving(Self::seek_to_last_inner)
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.moving(|it| it.seek_inner(target))
    }

    fn seek_for_prev(&mut self, target: &[u8]) -> Result<()> {
        self.moving(|it| {
            it.seek_inner(target)?;
            if !it.valid {
                it.seek_to_last_inner()
            } else if (it.comparator)(&it.key, target) == Ordering::Greater {
                it.prev_inner()
            } else {
                Ok(())
            }
        })
    }

    fn next(&mut self) -> Result<()> {
        debug_assert!(self.valid, "next() on an invalid BlockIter");
        self.moving(|it| it.parse_next().map(drop))
    }

    fn prev(&mut self) -> Result<()> {
        debug_assert!(self.valid, "prev() on an invalid BlockIter");
        self.moving(Self::prev_inner)
    }

    fn key(&self) -> &[u8] {
        &self.key
    }

    fn value(&self) -> &[u8] {
        self.block
            .entries()
            .get(self.value.0..self.value.1)
            .unwrap_or_default()
    }
}

/// Where one entry of a block whose keys are all stored whole lies in its entry area: the key
/// is `key_start..value_start`, the value `value_start..value_end`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FlatEntry {
    key_start: u32,
    value_start: u32,
    value_end: u32,
}

impl FlatEntry {
    /// The entry's key in `entries` (the block's entry area).
    #[inline]
    pub(crate) fn key<'a>(&self, entries: &'a [u8]) -> &'a [u8] {
        entries
            .get(self.key_start as usize..self.value_start as usize)
            .unwrap_or_default()
    }

    /// The entry's value in `entries`.
    #[inline]
    pub(crate) fn value<'a>(&self, entries: &'a [u8]) -> &'a [u8] {
        entries
            .get(self.value_start as usize..self.value_end as usize)
            .unwrap_or_default()
    }
}

/// The entries of `block` as slices of its entry area, when every key is stored whole
/// (`shared = 0`, as in index blocks, restart interval 1) and every entry decodes; `None`
/// otherwise (then read the block with a [`BlockIter`], which reports any damage). A seek is
/// then a binary search over these, with no entry decoded or key copied per probe.
pub(crate) fn flat_entries(block: &Block) -> Option<Box<[FlatEntry]>> {
    let entries = block.entries();
    let mut out = Vec::with_capacity(block.num_restarts());
    let mut pos = 0;
    while pos < entries.len() {
        let entry = decode_entry(block, entries, pos).ok()?;
        if entry.shared != 0 {
            return None;
        }
        out.push(FlatEntry {
            key_start: u32::try_from(entry.suffix.0).ok()?,
            value_start: u32::try_from(entry.value.0).ok()?,
            value_end: u32::try_from(entry.value.1).ok()?,
        });
        pos = entry.next;
    }
    Some(out.into_boxed_slice())
}

/// Restart offset `index` (u32 LE) of the restart array `restarts` (0 if out of range; the
/// array was validated when the block was decoded).
#[inline]
fn restart_at(restarts: &[u8], index: usize) -> usize {
    index
        .checked_mul(4)
        .and_then(|at| restarts.get(at..)?.first_chunk::<4>())
        .map_or(0, |b| u32::from_le_bytes(*b) as usize)
}

/// The three lengths at the front of the entry at `pos` (shared, unshared, value length) and
/// the bytes they take; `None` if they are truncated or malformed.
#[inline]
fn entry_header(entries: &[u8], pos: usize) -> Option<(usize, usize, usize, usize)> {
    // Fast path: in practice all three lengths are single-byte varints.
    if let Some(&[a, b, c]) = entries.get(pos..).and_then(|e| e.first_chunk::<3>())
        && (a | b | c) < 0x80
    {
        return Some((a as usize, b as usize, c as usize, 3));
    }
    entry_header_slow(entries, pos)
}

#[cold]
fn entry_header_slow(entries: &[u8], pos: usize) -> Option<(usize, usize, usize, usize)> {
    let mut at = pos;
    let mut field = || -> Option<usize> {
        let (value, used) = get_varint32(entries.get(at..)?, "", 0).ok()?;
        at += used;
        Some(value as usize)
    };
    let shared = field()?;
    let unshared = field()?;
    let value_len = field()?;
    Some((shared, unshared, value_len, at - pos))
}

/// Decodes the entry at payload offset `pos` of `entries` (the entry area of `block`), checking
/// every length against the entry area.
#[inline]
fn decode_entry(block: &Block, entries: &[u8], pos: usize) -> Result<Entry> {
    let bad = |what: &str| block.corruption(format!("block entry at payload offset {pos}: {what}"));
    let (shared, unshared, value_len, header) =
        entry_header(entries, pos).ok_or_else(|| bad("truncated or malformed length"))?;
    let at = pos + header;
    let suffix_end = at
        .checked_add(unshared)
        .filter(|&end| end <= entries.len())
        .ok_or_else(|| bad("key runs past the entries"))?;
    let value_end = suffix_end
        .checked_add(value_len)
        .filter(|&end| end <= entries.len())
        .ok_or_else(|| bad("value runs past the entries"))?;
    Ok(Entry {
        shared,
        suffix: (at, suffix_end),
        value: (suffix_end, value_end),
        next: value_end,
    })
}

/// The whole key stored at restart point `index` (payload offset `pos`), borrowed from `entries`.
#[inline]
fn restart_key<'a>(block: &Block, entries: &'a [u8], pos: usize, index: usize) -> Result<&'a [u8]> {
    let entry = decode_entry(block, entries, pos)?;
    if entry.shared != 0 {
        return Err(block.corruption(format!(
            "block entry at restart point {index} (payload offset {pos}) shares a prefix"
        )));
    }
    Ok(entries
        .get(entry.suffix.0..entry.suffix.1)
        .unwrap_or_default())
}
