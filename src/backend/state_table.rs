//! [`StateTable`]: one heap state's entries, a copy-on-write hash map per key group.
//!
//! Flink's `StateTable` of `CopyOnWriteStateMap`s: point reads and writes hash the composite key
//! (O(1), no comparisons along long shared key prefixes); a snapshot clones one `Arc` per key
//! group, and the first write to a key group after a snapshot copies that group's table shallowly
//! (keys and values are reference counted, so the copy never duplicates bytes). Key order is
//! produced only where it is needed: prefix scans and snapshot files sort one key group at a time.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use crate::keys::{KeyGroupRange, key_group_of};

/// A key group's entries: composite key to value. Values are `Arc<Vec<u8>>` so that a value
/// owned by the live table alone is overwritten or appended to in place.
pub type KeyGroupMap = HashMap<Arc<[u8]>, Arc<Vec<u8>>, KeyHasherBuilder>;

/// One entry of a [`KeyGroupMap`], borrowed.
pub type SharedEntry<'a> = (&'a Arc<[u8]>, &'a Arc<Vec<u8>>);

/// A key and what happens to it: a new value, or `None` for removal.
type EntryChange = (Arc<[u8]>, Option<Vec<u8>>);

/// One heap state: a [`KeyGroupMap`] per key group of its range. Cloning is O(key groups) and
/// shares every entry; a clone is an immutable view as long as the other side only writes
/// through the methods here (which copy a shared key group before changing it).
#[derive(Clone, Debug)]
pub struct StateTable {
    range: KeyGroupRange,
    groups: Vec<Arc<KeyGroupMap>>,
}

impl StateTable {
    /// An empty table over `range`.
    pub fn new(range: KeyGroupRange) -> Self {
        let hasher = KeyHasherBuilder::random();
        let empty = Arc::new(KeyGroupMap::with_hasher(hasher));
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

    /// The key group map of `key_group`, if it is in range.
    pub fn group(&self, key_group: u16) -> Option<&KeyGroupMap> {
        if !self.range.contains(key_group) {
            return None;
        }
        self.groups
            .get(usize::from(key_group - self.range.first()))
            .map(|g| g.as_ref())
    }

    /// The writable map of `key`'s key group: copied first if a snapshot shares it.
    fn group_mut(&mut self, key: &[u8]) -> Option<&mut KeyGroupMap> {
        let slot = self.slot(key)?;
        self.groups.get_mut(slot).map(Arc::make_mut)
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let slot = self.slot(key)?;
        self.groups.get(slot)?.get(key).map(|v| v.as_slice())
    }

    /// Sets `key` to `value`; a key outside the range is ignored (callers check the range).
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        let Some(group) = self.group_mut(key) else {
            return;
        };
        match group.get_mut(key) {
            Some(current) => match Arc::get_mut(current) {
                // Owned by this table alone: overwrite in place, no allocation.
                Some(owned) => {
                    owned.clear();
                    owned.extend_from_slice(value);
                }
                None => *current = Arc::new(value.to_vec()),
            },
            None => {
                group.insert(Arc::from(key), Arc::new(value.to_vec()));
            }
        }
    }

    /// Appends `operand` to the value of `key` (or sets it).
    pub fn append(&mut self, key: &[u8], operand: &[u8]) {
        let Some(group) = self.group_mut(key) else {
            return;
        };
        match group.get_mut(key) {
            Some(current) => Arc::make_mut(current).extend_from_slice(operand),
            None => {
                group.insert(Arc::from(key), Arc::new(operand.to_vec()));
            }
        }
    }

    /// Inserts an entry whose key and value are already owned (restore). Keys outside the range
    /// are ignored.
    pub fn insert_owned(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if let Some(group) = self.group_mut(&key) {
            group.insert(Arc::from(key), Arc::new(value));
        }
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &[u8]) {
        let Some(slot) = self.slot(key) else { return };
        let Some(group) = self.groups.get_mut(slot) else {
            return;
        };
        // Copy a shared group only when there is something to remove.
        if group.contains_key(key) {
            Arc::make_mut(group).remove(key);
        }
    }

    /// Removes every key that starts with `prefix`.
    pub fn remove_prefix(&mut self, prefix: &[u8]) {
        let first = self.range.first();
        for (index, group) in self.groups.iter_mut().enumerate() {
            let key_group = first + index as u16;
            if !group_may_match(key_group, prefix) || group.is_empty() {
                continue;
            }
            if group.keys().any(|k| k.starts_with(prefix)) {
                Arc::make_mut(group).retain(|k, _| !k.starts_with(prefix));
            }
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.len()).sum()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(|g| g.is_empty())
    }

    /// Entries of `key_group` whose key starts with `prefix`, sorted by key.
    pub fn sorted_group(&self, key_group: u16, prefix: &[u8]) -> Vec<SharedEntry<'_>> {
        let Some(group) = self.group(key_group) else {
            return Vec::new();
        };
        if !group_may_match(key_group, prefix) {
            return Vec::new();
        }
        let mut entries: Vec<_> = group
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        entries
    }

    /// Every key group of the range that may hold keys starting with `prefix`, ascending.
    pub fn groups_for_prefix(&self, prefix: &[u8]) -> impl Iterator<Item = u16> + use<> {
        let prefix: Vec<u8> = prefix.iter().take(2).copied().collect();
        self.range
            .iter()
            .filter(move |kg| group_may_match(*kg, &prefix))
    }

    /// Replaces the map of `key_group` by `map` (shared, no copy) when ours is empty, else adds
    /// its entries. Key groups outside the range are ignored.
    pub fn adopt_group(&mut self, key_group: u16, map: &Arc<KeyGroupMap>) {
        if !self.range.contains(key_group) || map.is_empty() {
            return;
        }
        let slot = usize::from(key_group - self.range.first());
        let Some(group) = self.groups.get_mut(slot) else {
            return;
        };
        if group.is_empty() {
            *group = map.clone();
        } else {
            let group = Arc::make_mut(group);
            for (k, v) in map.iter() {
                group.insert(k.clone(), v.clone());
            }
        }
    }

    /// The shared map of `key_group` (for [`StateTable::adopt_group`]).
    pub fn shared_group(&self, key_group: u16) -> Option<&Arc<KeyGroupMap>> {
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
                    group.insert(k, Arc::new(v));
                }
                None => {
                    group.remove(&k);
                }
            }
        }
    }

    /// The keys of `key_group` (shared), in no particular order.
    pub fn keys_of_group(&self, key_group: u16) -> Vec<Arc<[u8]>> {
        self.group(key_group)
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Whether keys of `key_group` can start with `prefix` (compares the 2-byte key group prefix).
fn group_may_match(key_group: u16, prefix: &[u8]) -> bool {
    let bytes = key_group.to_be_bytes();
    let n = prefix.len().min(2);
    bytes.get(..n) == prefix.get(..n)
}

/// Builds [`KeyHasher`]s with one random seed per table, so the layout of one process's tables
/// cannot be predicted from the keys alone.
#[derive(Clone, Copy, Debug)]
pub struct KeyHasherBuilder {
    seed: u64,
}

impl KeyHasherBuilder {
    fn random() -> Self {
        // RandomState is seeded from the OS once per thread and then incremented: hashing a
        // constant with it yields a fresh seed per table.
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        KeyHasherBuilder { seed }
    }
}

impl BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher { state: self.seed }
    }
}

/// A fast multiply-rotate hasher over 8-byte words (in the style of rustc's FxHash, with a
/// seed and a final avalanche). Composite keys are short and hashed on every access; SipHash
/// costs several times more for them.
#[derive(Clone, Copy, Debug)]
pub struct KeyHasher {
    state: u64,
}

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl KeyHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.state = (self.state.rotate_left(26) ^ word).wrapping_mul(MULTIPLIER);
    }
}

impl Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // Avalanche (murmur3's fmix64) so the table's low bits depend on every input bit.
        let mut h = self.state;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::composite_key;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn range(a: u16, b: u16) -> KeyGroupRange {
        KeyGroupRange::new(a, b).unwrap()
    }

    #[test]
    fn a_clone_is_a_frozen_view() {
        let mut live = StateTable::new(range(0, 3));
        let k = composite_key(1, b"alice", b"", b"");
        live.put(&k, b"1");
        let frozen = live.clone();
        live.put(&k, b"2");
        live.append(&k, b"3");
        live.put(&composite_key(2, b"bob", b"", b""), b"x");
        assert_eq!(frozen.get(&k), Some(&b"1"[..]));
        assert_eq!(frozen.len(), 1);
        assert_eq!(live.get(&k), Some(&b"23"[..]));
        live.remove(&k);
        assert_eq!(frozen.get(&k), Some(&b"1"[..]));
        assert_eq!(live.get(&k), None);
        // Out-of-range keys are ignored.
        live.put(&composite_key(9, b"x", b"", b""), b"x");
        assert_eq!(live.len(), 1);
    }

    proptest! {
        /// Puts, appends and removes against a BTreeMap model; a clone taken in the middle keeps
        /// the model's state of that moment, and sorted groups give the model's order.
        #[test]
        fn matches_a_btreemap(ops in proptest::collection::vec(
            (0u8..4, 0u16..4, 0u8..6, proptest::collection::vec(any::<u8>(), 0..4)), 0..120),
            freeze_at in 0usize..120,
        ) {
            let mut table = StateTable::new(range(0, 3));
            let mut model = BTreeMap::new();
            let mut frozen = None;
            for (i, (op, kg, key, value)) in ops.into_iter().enumerate() {
                if i == freeze_at {
                    frozen = Some((table.clone(), model.clone()));
                }
                let k = composite_key(kg, &[key], b"", b"");
                match op {
                    0 => { table.put(&k, &value); model.insert(k, value); }
                    1 => {
                        table.append(&k, &value);
                        model.entry(k).or_insert_with(Vec::new).extend_from_slice(&value);
                    }
                    2 => { table.remove(&k); model.remove(&k); }
                    _ => {
                        let prefix = &k[..3];
                        table.remove_prefix(prefix);
                        model.retain(|mk: &Vec<u8>, _| !mk.starts_with(prefix));
                    }
                }
            }
            let check = |table: &StateTable, model: &BTreeMap<Vec<u8>, Vec<u8>>| {
                let all: Vec<(Vec<u8>, Vec<u8>)> = table
                    .groups_for_prefix(&[])
                    .flat_map(|kg| table.sorted_group(kg, &[]))
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .collect();
                let expected: Vec<(Vec<u8>, Vec<u8>)> =
                    model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                prop_assert_eq!(all, expected);
                Ok(())
            };
            check(&table, &model)?;
            if let Some((table, model)) = frozen {
                check(&table, &model)?;
            }
        }
    }
}
