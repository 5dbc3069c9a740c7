//! Heap state shared by the memory and file-system backends.
//!
//! Each state is a persistent ordered map (`imbl::OrdMap`): cloning it is O(1) and later writes
//! copy only the tree path they touch, so a snapshot's synchronous part is a clone per state and
//! never a copy of the data (Flink's copy-on-write state map, at node granularity). TTL states
//! get incremental cleanup: every access checks a few entries after a cursor and drops expired
//! ones, so expired state does not pile up between snapshots.

use std::collections::HashMap;
use std::ops::Bound;

use imbl::OrdMap;

use super::{
    BackendConfig, EntryIter, SnapshotHandle, StateDescriptor, StateId, StateKind, check_key_group,
};
use crate::error::{Error, Result};
use crate::keys::{KeyGroupRange, key_group_of};
use crate::ttl::drop_expired;

/// Entries checked for expiry per access of a TTL state (Flink's `cleanupIncrementally` size).
pub const INCREMENTAL_CLEANUP_ENTRIES: usize = 5;

/// One state's ordered map from composite key to value bytes.
pub type StateMap = OrdMap<Vec<u8>, Vec<u8>>;

#[derive(Clone, Debug)]
struct HeapState {
    descriptor: StateDescriptor,
    map: StateMap,
    /// Where incremental TTL cleanup resumes (exclusive); empty = from the start.
    cleanup_cursor: Vec<u8>,
}

/// A frozen copy of every state (structurally shared with the live maps).
#[derive(Clone, Debug)]
pub struct HeapSnapshot {
    /// The key groups the snapshot covers.
    pub key_group_range: KeyGroupRange,
    /// One (descriptor, map) per state, in state-id order.
    pub states: Vec<(StateDescriptor, StateMap)>,
}

impl HeapSnapshot {
    /// Removes expired TTL entries (and expired list elements) as of `now_ms`.
    pub fn drop_expired(&mut self, now_ms: u64) {
        for (descriptor, map) in &mut self.states {
            let Some(ttl) = descriptor.ttl else { continue };
            let is_list = descriptor.kind == StateKind::List;
            let mut changes = Vec::new();
            for (k, v) in map.iter() {
                if let Some(kept) = expiry_change(is_list, &ttl, v, now_ms) {
                    changes.push((k.clone(), kept));
                }
            }
            for (k, kept) in changes {
                match kept {
                    Some(v) => map.insert(k, v),
                    None => map.remove(&k),
                };
            }
        }
    }

    /// Number of entries over all states.
    pub fn len(&self) -> usize {
        self.states.iter().map(|(_, m)| m.len()).sum()
    }

    /// True when no state has an entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Implements every key-addressed method of `StateBackend` (and `config`, `register`, `states`)
/// by delegating to the `HeapStore` in field `$field`: the memory and fs backends differ only in
/// how they snapshot and restore.
macro_rules! delegate_to_heap_store {
    ($field:ident) => {
        fn config(&self) -> &$crate::backend::BackendConfig {
            self.$field.config()
        }

        fn register(
            &mut self,
            descriptor: &$crate::backend::StateDescriptor,
        ) -> $crate::error::Result<$crate::backend::StateId> {
            self.$field.register(descriptor)
        }

        fn states(&self) -> Vec<$crate::backend::StateDescriptor> {
            self.$field.states()
        }

        fn get(
            &mut self,
            state: $crate::backend::StateId,
            key: &[u8],
        ) -> $crate::error::Result<Option<Vec<u8>>> {
            self.$field.get(state, key)
        }

        fn put(
            &mut self,
            state: $crate::backend::StateId,
            key: &[u8],
            value: &[u8],
        ) -> $crate::error::Result<()> {
            self.$field.put(state, key, value)
        }

        fn delete(
            &mut self,
            state: $crate::backend::StateId,
            key: &[u8],
        ) -> $crate::error::Result<()> {
            self.$field.delete(state, key)
        }

        fn merge(
            &mut self,
            state: $crate::backend::StateId,
            key: &[u8],
            operand: &[u8],
        ) -> $crate::error::Result<()> {
            self.$field.merge(state, key, operand)
        }

        fn scan_prefix(
            &mut self,
            state: $crate::backend::StateId,
            prefix: &[u8],
        ) -> $crate::error::Result<$crate::backend::EntryIter<'_>> {
            self.$field.scan_prefix(state, prefix)
        }

        fn delete_prefix(
            &mut self,
            state: $crate::backend::StateId,
            prefix: &[u8],
        ) -> $crate::error::Result<()> {
            self.$field.delete_prefix(state, prefix)
        }
    };
}
pub(crate) use delegate_to_heap_store;

/// The heap store: registered states and their maps.
#[derive(Debug)]
pub struct HeapStore {
    config: BackendConfig,
    states: Vec<HeapState>,
    by_name: HashMap<String, StateId>,
}

impl HeapStore {
    /// An empty store.
    pub fn new(config: BackendConfig) -> Self {
        HeapStore {
            config,
            states: Vec::new(),
            by_name: HashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// Registers a state (see [`super::StateBackend::register`]).
    pub fn register(&mut self, descriptor: &StateDescriptor) -> Result<StateId> {
        if descriptor.name.is_empty() {
            return Err(Error::invalid("state name must not be empty"));
        }
        if let Some(&id) = self.by_name.get(&descriptor.name) {
            self.state(id)?.descriptor.check_compatible(descriptor)?;
            return Ok(id);
        }
        let id = StateId(
            u32::try_from(self.states.len()).map_err(|_| Error::invalid("too many states"))?,
        );
        self.states.push(HeapState {
            descriptor: descriptor.clone(),
            map: StateMap::new(),
            cleanup_cursor: Vec::new(),
        });
        self.by_name.insert(descriptor.name.clone(), id);
        Ok(id)
    }

    /// Every registered state, in id order.
    pub fn states(&self) -> Vec<StateDescriptor> {
        self.states.iter().map(|s| s.descriptor.clone()).collect()
    }

    fn state(&self, id: StateId) -> Result<&HeapState> {
        self.states
            .get(id.0 as usize)
            .ok_or(Error::UnknownState(id.0))
    }

    fn state_mut(&mut self, id: StateId) -> Result<&mut HeapState> {
        self.states
            .get_mut(id.0 as usize)
            .ok_or(Error::UnknownState(id.0))
    }

    /// Checks the key's group and returns the state.
    fn access(&mut self, id: StateId, key: &[u8]) -> Result<&mut HeapState> {
        check_key_group(key, &self.config.key_group_range)?;
        self.state_mut(id)
    }

    /// Incremental TTL cleanup, run once an access has done its work. Cleaning before the access
    /// would remove an expired entry right before the read that may still return it
    /// (`ReturnExpiredIfNotCleanedUp`), so that visibility could never be observed.
    fn cleanup_after_access(&mut self, id: StateId) {
        let clock = &self.config.clock;
        if let Some(state) = self.states.get_mut(id.0 as usize)
            && state.descriptor.ttl.is_some()
        {
            // Only TTL states pay for reading the clock.
            state.incremental_cleanup(clock.now_ms());
        }
    }

    /// See [`super::StateBackend::get`].
    pub fn get(&mut self, id: StateId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let value = self.access(id, key)?.map.get(key).cloned();
        self.cleanup_after_access(id);
        Ok(value)
    }

    /// See [`super::StateBackend::put`].
    pub fn put(&mut self, id: StateId, key: &[u8], value: &[u8]) -> Result<()> {
        self.access(id, key)?
            .map
            .insert(key.to_vec(), value.to_vec());
        self.cleanup_after_access(id);
        Ok(())
    }

    /// See [`super::StateBackend::delete`].
    pub fn delete(&mut self, id: StateId, key: &[u8]) -> Result<()> {
        self.access(id, key)?.map.remove(key);
        self.cleanup_after_access(id);
        Ok(())
    }

    /// See [`super::StateBackend::merge`].
    pub fn merge(&mut self, id: StateId, key: &[u8], operand: &[u8]) -> Result<()> {
        let state = self.access(id, key)?;
        match state.map.get_mut(key) {
            Some(value) => value.extend_from_slice(operand),
            None => {
                state.map.insert(key.to_vec(), operand.to_vec());
            }
        }
        self.cleanup_after_access(id);
        Ok(())
    }

    /// See [`super::StateBackend::scan_prefix`].
    pub fn scan_prefix(&mut self, id: StateId, prefix: &[u8]) -> Result<EntryIter<'_>> {
        let state = self.state(id)?;
        let prefix = prefix.to_vec();
        let iter = state
            .map
            .range::<_, [u8]>((Bound::Included(prefix.as_slice()), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| Ok((k.clone(), v.clone())));
        Ok(Box::new(iter))
    }

    /// See [`super::StateBackend::delete_prefix`].
    pub fn delete_prefix(&mut self, id: StateId, prefix: &[u8]) -> Result<()> {
        let state = self.state_mut(id)?;
        let doomed: Vec<Vec<u8>> = state
            .map
            .range::<_, [u8]>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            state.map.remove(&k);
        }
        Ok(())
    }

    /// The synchronous part of a snapshot: an O(states) clone of the maps.
    pub fn freeze(&self) -> HeapSnapshot {
        HeapSnapshot {
            key_group_range: self.config.key_group_range,
            states: self
                .states
                .iter()
                .map(|s| (s.descriptor.clone(), s.map.clone()))
                .collect(),
        }
    }

    /// Starts a restore: checks every handle's descriptors against what is registered and
    /// across handles, registers the missing states, clears all contents, and sets the range.
    pub fn begin_restore(
        &mut self,
        handles: &[SnapshotHandle],
        range: KeyGroupRange,
    ) -> Result<()> {
        // Check against what is registered and against the earlier handles' descriptors; register
        // only after every check passed, so a failed restore registers nothing half way.
        let mut seen: HashMap<&str, &StateDescriptor> = HashMap::new();
        for handle in handles {
            for descriptor in &handle.states {
                if let Some(&id) = self.by_name.get(&descriptor.name) {
                    self.state(id)?.descriptor.check_compatible(descriptor)?;
                }
                if let Some(earlier) = seen.insert(&descriptor.name, descriptor) {
                    earlier.check_compatible(descriptor)?;
                }
            }
        }
        for handle in handles {
            for descriptor in &handle.states {
                self.register(descriptor)?;
            }
        }
        for state in &mut self.states {
            state.map = StateMap::new();
            state.cleanup_cursor.clear();
        }
        self.config.key_group_range = range;
        Ok(())
    }

    /// The id of a registered state by name.
    pub fn id_of(&self, name: &str) -> Option<StateId> {
        self.by_name.get(name).copied()
    }

    /// Adds the entries of `map` whose key group is in the store's range to state `id`.
    /// `map_range` is the key-group range `map` covers: a map wholly inside the store's range
    /// is unioned without looking at its entries.
    pub fn restore_map(
        &mut self,
        id: StateId,
        map: &StateMap,
        map_range: KeyGroupRange,
    ) -> Result<()> {
        let range = self.config.key_group_range;
        let state = self.state_mut(id)?;
        if range.intersect(&map_range) == Some(map_range) {
            state.map = if state.map.is_empty() {
                map.clone()
            } else {
                std::mem::take(&mut state.map).union(map.clone())
            };
            return Ok(());
        }
        let lower = range.start_key();
        let upper = range.end_key();
        let upper_bound = match &upper {
            Some(u) => Bound::Excluded(u.as_slice()),
            None => Bound::Unbounded,
        };
        for (k, v) in map.range::<_, [u8]>((Bound::Included(lower.as_slice()), upper_bound)) {
            state.map.insert(k.clone(), v.clone());
        }
        Ok(())
    }

    /// Adds one restored entry to state `id` if its key group is in range; returns whether it was
    /// kept.
    pub fn restore_entry(&mut self, id: StateId, key: Vec<u8>, value: Vec<u8>) -> Result<bool> {
        let range = self.config.key_group_range;
        let keep = key_group_of(&key).is_some_and(|kg| range.contains(kg));
        if keep {
            self.state_mut(id)?.map.insert(key, value);
        }
        Ok(keep)
    }
}

impl HeapState {
    fn incremental_cleanup(&mut self, now_ms: u64) {
        let Some(ttl) = self.descriptor.ttl else {
            return;
        };
        let is_list = self.descriptor.kind == StateKind::List;
        let start = if self.cleanup_cursor.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(self.cleanup_cursor.as_slice())
        };
        let mut last_checked = None;
        let mut checked = 0;
        let mut changes = Vec::new();
        for (k, v) in self
            .map
            .range::<_, [u8]>((start, Bound::Unbounded))
            .take(INCREMENTAL_CLEANUP_ENTRIES)
        {
            if let Some(kept) = expiry_change(is_list, &ttl, v, now_ms) {
                changes.push((k.clone(), kept));
            }
            last_checked = Some(k);
            checked += 1;
        }
        // Wrap around to the start once the end is reached.
        self.cleanup_cursor = match last_checked {
            Some(k) if checked == INCREMENTAL_CLEANUP_ENTRIES => k.clone(),
            _ => Vec::new(),
        };
        for (k, kept) in changes {
            match kept {
                Some(v) => self.map.insert(k, v),
                None => self.map.remove(&k),
            };
        }
    }
}

/// What expiry does to a stored value: `None` = unchanged, `Some(None)` = remove,
/// `Some(Some(v))` = replace (a list that lost elements). A value that is not a well-formed TTL
/// envelope is left alone: cleanup never destroys what it cannot read.
fn expiry_change(
    is_list: bool,
    ttl: &crate::ttl::TtlConfig,
    value: &[u8],
    now_ms: u64,
) -> Option<Option<Vec<u8>>> {
    match drop_expired(is_list, ttl, value, now_ms) {
        Ok(kept) if kept.as_deref() != Some(value) => Some(kept),
        _ => None,
    }
}
