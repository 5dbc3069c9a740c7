//! [`StateTable`]: one heap state's entries, a copy-on-write hash map per key group.
//!
//! Flink's `StateTable` of `CopyOnWriteStateMap`s: point reads and writes hash the composite key
//! (O(1), no comparisons along long shared key prefixes); a snapshot clones one `Arc` per key
//! group, and the first write to a key group after a snapshot copies that group's table shallowly
//! (short keys sit in the buckets, longer ones and values are reference counted: the copy
//! allocates nothing per entry). Key order is
//! produced only where it is needed: snapshot files sort one key group at a time, and keys with a
//! user key (map entries) are also indexed, in order, under their (key group, key, namespace)
//! part, so a scan or delete of one map costs the map's size (Flink's nested map per key).

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use super::entry_key::EntryKey;
use super::stored_value::StoredValue;
use crate::hash::KeyHasherBuilder;
use crate::keys::{CompositeKey, KeyGroupRange, key_group_of};

/// A key group's entries: composite key to value. A short value lives in its bucket (copied
/// when a snapshot's key group is copied, then overwritten in place); a long one is shared with
/// snapshots behind an `Arc` until written ([`StoredValue`]).
pub type KeyGroupMap = HashMap<EntryKey, StoredValue, KeyHasherBuilder>;

/// One entry of a [`KeyGroupMap`], borrowed.
pub type SharedEntry<'a> = (&'a EntryKey, &'a StoredValue);

/// A key and what happens to it: a new value, or `None` for removal.
type EntryChange = (EntryKey, Option<Vec<u8>>);

/// Keys with a non-empty user key, in key order, by their primary part (see [`primary_len`]).
type UserKeyIndex = HashMap<EntryKey, BTreeSet<EntryKey>, KeyHasherBuilder>;

/// One key group of a [`StateTable`]: its entries, and an index of the entries' keys that have
/// a user key, grouped by (key group, key, namespace) and ordered (shares the key bytes).
/// Keys without a user key (value, list, reducing states) and keys that do not decode as
/// composite keys are in `entries` only.
#[derive(Clone, Debug)]
pub struct KeyGroupTable {
    entries: KeyGroupMap,
    user_keys: UserKeyIndex,
}

/// One heap state: a [`KeyGroupTable`] per key group of its range. Cloning is O(key groups) and
/// shares every entry; a clone is an immutable view as long as the other side only writes
/// through the methods here (which copy a shared key group before changing it).
#[derive(Clone, Debug)]
pub struct StateTable {
    range: KeyGroupRange,
    groups: Vec<Arc<KeyGroupTable>>,
}

/// The length of the (key group, key, namespace) part of a composite key (FORMAT.md §2.2), or
/// `None` when `key` does not decode as a composite key. Every key that starts with a decodable
/// prefix decodes to the same primary part as the prefix (the varint lengths fix the split).
#[inline]
pub fn primary_len(key: &[u8]) -> Option<usize> {
    // Fast path (every put of a new key parses it): key and namespace shorter than 128 bytes,
    // so both lengths are one-byte varints.
    if let Some(&key_len) = key.get(2)
        && key_len < 0x80
    {
        let namespace_at = 3 + usize::from(key_len);
        if let Some(&namespace_len) = key.get(namespace_at)
            && namespace_len < 0x80
        {
            let end = namespace_at + 1 + usize::from(namespace_len);
            return (end <= key.len()).then_some(end);
        }
    }
    CompositeKey::decode(key, "state key", 0)
        .ok()
        .map(|parts| key.len() - parts.user_key.len())
}

impl KeyGroupTable {
    fn new(hasher: KeyHasherBuilder) -> Self {
        KeyGroupTable {
            entries: KeyGroupMap::with_hasher(hasher),
            user_keys: UserKeyIndex::with_hasher(hasher),
        }
    }

    /// The entries: composite key to value, in no particular order.
    pub fn entries(&self) -> &KeyGroupMap {
        &self.entries
    }

    /// Inserts a key that is not in `entries` yet, indexing it if it has a user key.
    #[inline]
    fn insert_new(&mut self, key: EntryKey, value: StoredValue) {
        // Value, list and reducing state keys (no user key) stop at the length check.
        if let Some(primary) = primary_len(&key)
            && primary < key.len()
        {
            self.index_user_key(&key, primary);
        }
        self.entries.insert(key, value);
    }

    /// Adds `key`, whose first `primary` bytes are its primary part, to the user-key index.
    #[inline(never)]
    fn index_user_key(&mut self, key: &EntryKey, primary: usize) {
        let Some(primary) = key.get(..primary) else {
            return;
        };
        match self.user_keys.get_mut(primary) {
            Some(set) => {
                set.insert(key.clone());
            }
            None => {
                self.user_keys
                    .insert(EntryKey::from(primary), BTreeSet::from([key.clone()]));
            }
        }
    }

    /// Removes `key` from `entries` and from the user-key index.
    fn remove(&mut self, key: &[u8]) {
        if self.entries.remove(key).is_none() {
            return;
        }
        let Some(primary) = primary_len(key).and_then(|n| key.get(..n)) else {
            return;
        };
        if let Some(set) = self.user_keys.get_mut(primary) {
            set.remove(key);
            if set.is_empty() {
                self.user_keys.remove(primary);
            }
        }
    }

    /// The keys that start with `prefix`, in key order, when `prefix` decodes as a composite
    /// key (`primary` is its primary length): O(log n + matches). The key equal to the primary
    /// part (empty user key) sorts first.
    fn keys_under<'a>(&'a self, prefix: &[u8], primary: usize) -> Vec<&'a EntryKey> {
        self.keys_under_after(prefix, primary, &[]).collect()
    }

    /// The keys that start with `prefix` and sort after `after`, in key order, when `prefix`
    /// decodes as a composite key (`primary` is its primary length), lazily: O(log n) to start,
    /// then O(1) per key (amortized).
    fn keys_under_after<'a>(
        &'a self,
        prefix: &[u8],
        primary: usize,
        after: &[u8],
    ) -> impl Iterator<Item = &'a EntryKey> + use<'a> {
        // The key equal to the primary part has no user key: it is in `entries` only.
        let own = (primary == prefix.len() && prefix > after)
            .then(|| self.entries.get_key_value(prefix).map(|(key, _)| key))
            .flatten();
        let lower = if after < prefix {
            Bound::Included(prefix)
        } else {
            Bound::Excluded(after)
        };
        let owned_prefix = prefix.to_vec();
        let indexed = prefix
            .get(..primary)
            .and_then(|p| self.user_keys.get(p))
            .map(|set| set.range::<[u8], _>((lower, Bound::Unbounded)))
            .into_iter()
            .flatten()
            .take_while(move |key| key.starts_with(&owned_prefix));
        own.into_iter().chain(indexed)
    }
}

impl StateTable {
    /// An empty table over `range`.
    pub fn new(range: KeyGroupRange) -> Self {
        let hasher = KeyHasherBuilder::random();
        let empty = Arc::new(KeyGroupTable::new(hasher));
        StateTable {
            range,
            groups: vec![empty; range.len() as usize],
        }
    }

    /// The key groups the table covers.
    pub fn range(&self) -> KeyGroupRange {
        self.range
    }

    /// Index of the key group of `key` in `groups`, or `None` when the key is outside the range.
    fn slot(&self, key: &[u8]) -> Option<usize> {
        let key_group = key_group_of(key)?;
        self.range
            .contains(key_group)
            .then(|| usize::from(key_group - self.range.first()))
    }

    /// The entries of `key_group`, if it is in range.
    pub fn group(&self, key_group: u16) -> Option<&KeyGroupMap> {
        if !self.range.contains(key_group) {
            return None;
        }
        self.groups
            .get(usize::from(key_group - self.range.first()))
            .map(|g| g.entries())
    }

    /// The writable table of `key`'s key group: copied first if a snapshot shares it.
    fn group_mut(&mut self, key: &[u8]) -> Option<&mut KeyGroupTable> {
        let slot = self.slot(key)?;
        self.groups.get_mut(slot).map(Arc::make_mut)
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let slot = self.slot(key)?;
        self.groups
            .get(slot)?
            .entries
            .get(key)
            .map(|v| v.as_slice())
    }

    /// Sets `key` to `value`; a key outside the range is ignored (callers check the range).
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        let Some(group) = self.group_mut(key) else {
            return;
        };
        match group.entries.get_mut(key) {
            // In place, no allocation (a long value shared with a snapshot is replaced).
            Some(current) => current.set(value),
            None => group.insert_new(EntryKey::from(key), StoredValue::new(value)),
        }
    }

    /// Read-modify-write of `key` in one hash probe: `f(stored, out)` gets the current value
    /// (or `None`) and writes the new one into `out` (cleared first), which is then stored. A
    /// value owned by the live table alone is overwritten in place (no allocation); one shared
    /// with a snapshot is replaced, so the snapshot keeps its bytes. When `f` fails, nothing
    /// changes (but a key group shared with a snapshot may have been copied). A key outside the
    /// range is ignored and `f` is not called (callers check the range).
    pub fn read_modify_write<E>(
        &mut self,
        key: &[u8],
        out: &mut Vec<u8>,
        f: impl FnOnce(Option<&[u8]>, &mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let Some(group) = self.group_mut(key) else {
            return Ok(());
        };
        out.clear();
        match group.entries.get_mut(key) {
            Some(current) => {
                f(Some(current.as_slice()), out)?;
                current.set(out);
            }
            None => {
                f(None, out)?;
                group.insert_new(EntryKey::from(key), StoredValue::new(out));
            }
        }
        Ok(())
    }

    /// Appends `operand` to the value of `key` (or sets it).
    pub fn append(&mut self, key: &[u8], operand: &[u8]) {
        let Some(group) = self.group_mut(key) else {
            return;
        };
        match group.entries.get_mut(key) {
            Some(current) => current.append(operand),
            None => group.insert_new(EntryKey::from(key), StoredValue::new(operand)),
        }
    }

    /// Inserts an entry whose key and value are already owned (restore). Keys outside the range
    /// are ignored.
    pub fn insert_owned(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if let Some(group) = self.group_mut(&key) {
            match group.entries.get_mut(key.as_slice()) {
                Some(current) => *current = StoredValue::from_vec(value),
                None => group.insert_new(EntryKey::from(key), StoredValue::from_vec(value)),
            }
        }
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &[u8]) {
        let Some(slot) = self.slot(key) else { return };
        let Some(group) = self.groups.get_mut(slot) else {
            return;
        };
        // Copy a shared group only when there is something to remove.
        if group.entries.contains_key(key) {
            Arc::make_mut(group).remove(key);
        }
    }

    /// Removes every key that starts with `prefix`. A prefix that decodes as a composite key
    /// (a whole (key group, key, namespace), optionally with the start of a user key) costs
    /// O(log n + matches); any other prefix visits the key groups it can reach.
    pub fn remove_prefix(&mut self, prefix: &[u8]) {
        if let Some(primary) = primary_len(prefix) {
            let Some(slot) = self.slot(prefix) else {
                return;
            };
            let Some(group) = self.groups.get_mut(slot) else {
                return;
            };
            let doomed: Vec<EntryKey> = group
                .keys_under(prefix, primary)
                .into_iter()
                .cloned()
                .collect();
            if !doomed.is_empty() {
                let group = Arc::make_mut(group);
                for key in doomed {
                    group.remove(&key);
                }
            }
            return;
        }
        let first = self.range.first();
        for (index, group) in self.groups.iter_mut().enumerate() {
            let key_group = first + index as u16;
            if !group_may_match(key_group, prefix) || group.entries.is_empty() {
                continue;
            }
            if group.entries.keys().any(|k| k.starts_with(prefix)) {
                let group = Arc::make_mut(group);
                group.entries.retain(|k, _| !k.starts_with(prefix));
                group.user_keys.retain(|_, set| {
                    set.retain(|k| !k.starts_with(prefix));
                    !set.is_empty()
                });
            }
        }
    }

    /// The entries whose key starts with `prefix`, in key order, when `prefix` decodes as a
    /// composite key (see [`StateTable::remove_prefix`]): O(log n + matches). `None` for any
    /// other prefix.
    #[cfg(test)]
    pub fn sorted_under(&self, prefix: &[u8]) -> Option<Vec<SharedEntry<'_>>> {
        // Composite keys are never empty: every one sorts after the empty key.
        self.sorted_under_after(prefix, &[]).map(Iterator::collect)
    }

    /// The entries whose key starts with `prefix` and sorts after `after`, in key order,
    /// lazily, when `prefix` decodes as a composite key: O(log n) to start, then O(1) per entry.
    /// `None` for any other prefix (use [`StateTable::groups_for_prefix`] and
    /// [`StateTable::sorted_group`]).
    pub fn sorted_under_after<'a>(
        &'a self,
        prefix: &[u8],
        after: &[u8],
    ) -> Option<impl Iterator<Item = SharedEntry<'a>> + use<'a>> {
        let primary = primary_len(prefix)?;
        let group: Option<&'a KeyGroupTable> = self
            .slot(prefix)
            .and_then(|slot| self.groups.get(slot))
            .map(|group| group.as_ref());
        let keys = group.map(|group| (group, group.keys_under_after(prefix, primary, after)));
        let entries = keys.into_iter().flat_map(|(group, keys)| {
            keys.filter_map(move |key| group.entries.get_key_value(key.as_ref()))
        });
        Some(entries)
    }

    /// Number of entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.entries.len()).sum()
    }

    /// Entries of `key_group` whose key starts with `prefix`, sorted by key.
    pub fn sorted_group(&self, key_group: u16, prefix: &[u8]) -> Vec<SharedEntry<'_>> {
        let Some(group) = self.group(key_group) else {
            return Vec::new();
        };
        if !group_may_match(key_group, prefix) {
            return Vec::new();
        }
        let mut entries: Vec<SharedEntry<'_>> = Vec::with_capacity(group.len());
        entries.extend(group.iter().filter(|(k, _)| k.starts_with(prefix)));
        sort_entries(entries)
    }

    /// Every key group of the range that may hold keys starting with `prefix`, ascending.
    pub fn groups_for_prefix(&self, prefix: &[u8]) -> impl Iterator<Item = u16> + use<> {
        let prefix: Vec<u8> = prefix.iter().take(2).copied().collect();
        self.range
            .iter()
            .filter(move |kg| group_may_match(*kg, &prefix))
    }

    /// Replaces the table of `key_group` by `table` (shared, no copy) when ours is empty, else
    /// adds its entries. Key groups outside the range are ignored.
    pub fn adopt_group(&mut self, key_group: u16, table: &Arc<KeyGroupTable>) {
        if !self.range.contains(key_group) || table.entries.is_empty() {
            return;
        }
        let slot = usize::from(key_group - self.range.first());
        let Some(group) = self.groups.get_mut(slot) else {
            return;
        };
        if group.entries.is_empty() {
            *group = table.clone();
        } else {
            let group = Arc::make_mut(group);
            for (k, v) in table.entries.iter() {
                match group.entries.get_mut(k) {
                    Some(current) => *current = v.clone(),
                    None => group.insert_new(k.clone(), v.clone()),
                }
            }
        }
    }

    /// The shared table of `key_group` (for [`StateTable::adopt_group`]).
    pub fn shared_group(&self, key_group: u16) -> Option<&Arc<KeyGroupTable>> {
        if !self.range.contains(key_group) {
            return None;
        }
        self.groups.get(usize::from(key_group - self.range.first()))
    }

    /// Applies `change` to every entry of `key_group`: `None` keeps it, `Some(None)` removes it,
    /// `Some(Some(v))` replaces its value. The group is copied only if something changes.
    pub fn rewrite_group(
        &mut self,
        key_group: u16,
        mut change: impl FnMut(&[u8]) -> Option<Option<Vec<u8>>>,
    ) {
        if !self.range.contains(key_group) {
            return;
        }
        let slot = usize::from(key_group - self.range.first());
        let Some(group) = self.groups.get_mut(slot) else {
            return;
        };
        let changes: Vec<EntryChange> = group
            .entries
            .iter()
            .filter_map(|(k, v)| change(v).map(|kept| (k.clone(), kept)))
            .collect();
        if changes.is_empty() {
            return;
        }
        let group = Arc::make_mut(group);
        for (k, kept) in changes {
            match kept {
                Some(v) => {
                    group.entries.insert(k, StoredValue::from_vec(v));
                }
                None => group.remove(&k),
            }
        }
    }

    /// The keys of `key_group` (shared), in no particular order.
    pub fn keys_of_group(&self, key_group: u16) -> Vec<EntryKey> {
        self.group(key_group)
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Sorts the entries of one key group by key. Each key's first [`SORT_PREFIX_LEN`] bytes after
/// the key group and its index are packed into one `u128` and those integers sorted (no
/// `memcmp` call per comparison, 16-byte moves); keys that tie on those bytes (only keys
/// longer than that) are then sorted in full within their run, so the order is the keys' byte
/// order.
fn sort_entries(entries: Vec<SharedEntry<'_>>) -> Vec<SharedEntry<'_>> {
    let Ok(_) = u32::try_from(entries.len()) else {
        let mut entries = entries;
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        return entries;
    };
    let mut order: Vec<u128> = entries
        .iter()
        .enumerate()
        .map(|(index, (key, _))| sort_prefix(key) | index as u128)
        .collect();
    order.sort_unstable();
    let mut sorted: Vec<SharedEntry<'_>> = order
        .iter()
        .filter_map(|packed| entries.get(*packed as u32 as usize).copied())
        .collect();
    let mut at = 0;
    for run in order.chunk_by(|a, b| a >> 32 == b >> 32) {
        if run.len() > 1
            && let Some(tied) = sorted.get_mut(at..at + run.len())
        {
            tied.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }
        at += run.len();
    }
    sorted
}

/// Key bytes after the key group that [`sort_entries`] compares as an integer.
const SORT_PREFIX_LEN: usize = 12;

/// The first [`SORT_PREFIX_LEN`] bytes of `key` after its 2-byte key group, zero-padded, in the
/// top 96 bits of a `u128` (big-endian); the low 32 bits are zero.
#[inline]
fn sort_prefix(key: &[u8]) -> u128 {
    let mut word = [0u8; 16];
    let rest = key.get(2..).unwrap_or_default();
    // A fixed-size copy when the key is long enough: no `memcpy` call.
    if let (Some(to), Some(from)) = (
        word.first_chunk_mut::<SORT_PREFIX_LEN>(),
        rest.first_chunk::<SORT_PREFIX_LEN>(),
    ) {
        *to = *from;
    } else {
        for (to, from) in word.iter_mut().zip(rest) {
            *to = *from;
        }
    }
    u128::from_be_bytes(word)
}

/// Whether keys of `key_group` can start with `prefix` (compares the 2-byte key group prefix).
fn group_may_match(key_group: u16, prefix: &[u8]) -> bool {
    let bytes = key_group.to_be_bytes();
    let n = prefix.len().min(2);
    bytes.get(..n) == prefix.get(..n)
}

#[cfg(test)]
mod tests;
