//! Heap state shared by the memory and file-system backends.
//!
//! Each state is a [`StateTable`]: a copy-on-write hash map per key group, so point access is
//! O(1) and a snapshot's synchronous part clones one `Arc` per key group, never the data
//! (Flink's `CopyOnWriteStateMap`). Key order is produced for snapshot files and prefix scans;
//! a map's prefix is answered from the table's ordered user-key index. TTL states get
//! incremental cleanup: every access checks a few entries after a cursor and drops expired ones,
//! so expired state does not pile up between snapshots.

use std::collections::HashMap;

use imbl::OrdMap;

use super::entry_key::EntryKey;
use super::state_table::StateTable;
use super::{
    BackendConfig, EntryIter, ReadModifyWrite, SnapshotHandle, StateDescriptor, StateId, StateKind,
    check_key_group,
};
use crate::error::{Error, Result};
use crate::keys::{KeyGroupRange, key_group_of};
use crate::ttl::drop_expired;

/// Entries checked for expiry per access of a TTL state (Flink's `cleanupIncrementally` size).
pub const INCREMENTAL_CLEANUP_ENTRIES: usize = 5;

/// An ordered map from composite key to value bytes: what full snapshot files are written
/// from by tools and tests (the heap store itself keeps [`StateTable`]s).
pub type StateMap = OrdMap<Vec<u8>, Vec<u8>>;

/// Receives one (key, value) entry.
pub type EntryEmit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// Key groups an access may visit looking for entries to check, beyond the entries it checks:
/// bounds the cost of cleanup in a table of mostly empty key groups.
const CLEANUP_GROUPS_PER_ACCESS: usize = 2 * INCREMENTAL_CLEANUP_ENTRIES;

#[derive(Clone, Debug)]
struct HeapState {
    descriptor: StateDescriptor,
    table: StateTable,
    /// Key group (offset in the range) whose keys incremental TTL cleanup collects next.
    cleanup_next_group: usize,
    /// Keys of the current cleanup key group still to check.
    cleanup_queue: Vec<EntryKey>,
}

/// A frozen copy of every state (structurally shared with the live tables).
#[derive(Clone, Debug)]
pub struct HeapSnapshot {
    /// The key groups the snapshot covers.
    pub(crate) key_group_range: KeyGroupRange,
    /// One (descriptor, table) per state, in state-id order.
    pub(crate) states: Vec<(StateDescriptor, StateTable)>,
}

impl HeapSnapshot {
    /// Removes expired TTL entries (and expired list elements) as of `now_ms`; copies only the
    /// key groups that change.
    pub(crate) fn drop_expired(&mut self, now_ms: u64) {
        for (descriptor, table) in &mut self.states {
            let Some(ttl) = descriptor.ttl else { continue };
            let is_list = descriptor.kind == StateKind::List;
            for key_group in table.range().iter() {
                table.rewrite_group(key_group, |v| expiry_change(is_list, &ttl, v, now_ms));
            }
        }
    }

    /// Whether any state has an entry in `key_groups` that is not expired at `now_ms`.
    pub(crate) fn has_live_entries(&self, key_groups: KeyGroupRange, now_ms: u64) -> bool {
        self.states.iter().any(|(descriptor, table)| {
            let ttl = descriptor.ttl;
            let is_list = descriptor.kind == StateKind::List;
            key_groups.iter().any(|key_group| {
                table.group(key_group).is_some_and(|group| match ttl {
                    None => !group.is_empty(),
                    Some(ttl) => group
                        .values()
                        .any(|v| !matches!(expiry_change(is_list, &ttl, v, now_ms), Some(None))),
                })
            })
        })
    }

    /// Calls `emit(key, value)` for every entry of state `index` in `key_groups`, in key order,
    /// as expiry at `now_ms` leaves it (expired entries skipped, expired list elements dropped):
    /// the entries a full snapshot file holds (FORMAT.md §5).
    pub(crate) fn emit_live_entries(
        &self,
        index: usize,
        key_groups: KeyGroupRange,
        now_ms: u64,
        emit: &mut EntryEmit<'_>,
    ) -> Result<()> {
        let Some((descriptor, table)) = self.states.get(index) else {
            return Ok(());
        };
        let is_list = descriptor.kind == StateKind::List;
        for key_group in key_groups.iter() {
            for (key, value) in table.sorted_group(key_group, &[]) {
                let change = descriptor
                    .ttl
                    .and_then(|ttl| expiry_change(is_list, &ttl, value, now_ms));
                match change {
                    None => emit(key, value)?,
                    Some(Some(kept)) => emit(key, &kept)?,
                    Some(None) => {}
                }
            }
        }
        Ok(())
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

        fn read_modify_write(
            &mut self,
            state: $crate::backend::StateId,
            key: &[u8],
            f: &mut $crate::backend::ReadModifyWrite<'_>,
        ) -> $crate::error::Result<()> {
            self.$field.read_modify_write(state, key, f)
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

        fn scan_prefix_after(
            &mut self,
            state: $crate::backend::StateId,
            prefix: &[u8],
            after: &[u8],
        ) -> $crate::error::Result<$crate::backend::EntryIter<'_>> {
            self.$field.scan_prefix_after(state, prefix, after)
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
    /// Reused buffer the function of a read-modify-write writes the new value into.
    rmw_buffer: Vec<u8>,
}

impl HeapStore {
    /// An empty store.
    pub fn new(config: BackendConfig) -> Self {
        HeapStore {
            config,
            states: Vec::new(),
            by_name: HashMap::new(),
            rmw_buffer: Vec::new(),
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
            u32::try_from(self.states.len())
                .map_err(|_| Error::limit_exceeded("too many states"))?,
        );
        self.states.push(HeapState {
            descriptor: descriptor.clone(),
            table: StateTable::new(self.config.key_group_range),
            cleanup_next_group: 0,
            cleanup_queue: Vec::new(),
        });
        self.by_name.insert(descriptor.name.clone(), id);
        Ok(id)
    }

    /// Every registered state, in id order.
    pub fn states(&self) -> Vec<StateDescriptor> {
        self.states.iter().map(|s| s.descriptor.clone()).collect()
    }

    fn state(&self, id: StateId) -> Result<&HeapState> {
        // Not `ok_or`: that builds (and drops) an error on every access.
        match self.states.get(id.0 as usize) {
            Some(state) => Ok(state),
            None => Err(Error::UnknownState(id.0)),
        }
    }

    fn state_mut(&mut self, id: StateId) -> Result<&mut HeapState> {
        // Not `ok_or`: that builds (and drops) an error on every access.
        match self.states.get_mut(id.0 as usize) {
            Some(state) => Ok(state),
            None => Err(Error::UnknownState(id.0)),
        }
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
        let value = self.access(id, key)?.table.get(key).map(<[u8]>::to_vec);
        self.cleanup_after_access(id);
        Ok(value)
    }

    /// See [`super::StateBackend::put`].
    pub fn put(&mut self, id: StateId, key: &[u8], value: &[u8]) -> Result<()> {
        self.access(id, key)?.table.put(key, value);
        self.cleanup_after_access(id);
        Ok(())
    }

    /// See [`super::StateBackend::delete`].
    pub fn delete(&mut self, id: StateId, key: &[u8]) -> Result<()> {
        self.access(id, key)?.table.remove(key);
        self.cleanup_after_access(id);
        Ok(())
    }

    /// See [`super::StateBackend::read_modify_write`]: one hash probe; no allocation when the
    /// key exists and its value is not shared with a snapshot.
    pub fn read_modify_write(
        &mut self,
        id: StateId,
        key: &[u8],
        f: &mut ReadModifyWrite<'_>,
    ) -> Result<()> {
        check_key_group(key, &self.config.key_group_range)?;
        let mut buffer = std::mem::take(&mut self.rmw_buffer);
        let result = match self.states.get_mut(id.0 as usize) {
            Some(state) => state.table.read_modify_write(key, &mut buffer, f),
            None => Err(Error::UnknownState(id.0)),
        };
        self.rmw_buffer = buffer;
        self.cleanup_after_access(id);
        result
    }

    /// See [`super::StateBackend::merge`].
    pub fn merge(&mut self, id: StateId, key: &[u8], operand: &[u8]) -> Result<()> {
        self.access(id, key)?.table.append(key, operand);
        self.cleanup_after_access(id);
        Ok(())
    }

    /// See [`super::StateBackend::scan_prefix`].
    ///
    /// A prefix that is a whole (key group, key, namespace) — a map of a `MapState`, or one key's
    /// entry — costs O(log n) to start and O(1) per entry through the table's user-key index,
    /// and the entries are produced as they are read. Any other prefix (empty, key group only,
    /// part of a key) sorts one key group's matching entries at a time: O(entries of the key
    /// groups the prefix can reach), the price of O(1) point access.
    pub fn scan_prefix(&mut self, id: StateId, prefix: &[u8]) -> Result<EntryIter<'_>> {
        // Composite keys are never empty (the range check wants a key group): every one sorts
        // after the empty key.
        self.scan_prefix_after(id, prefix, &[])
    }

    /// See [`super::StateBackend::scan_prefix_after`]; costs as [`HeapStore::scan_prefix`], with
    /// the start found in O(log n) for a whole (key group, key, namespace) prefix, and in the key
    /// group of `after` otherwise (earlier key groups are skipped).
    pub fn scan_prefix_after(
        &mut self,
        id: StateId,
        prefix: &[u8],
        after: &[u8],
    ) -> Result<EntryIter<'_>> {
        let table = &self.state(id)?.table;
        if let Some(entries) = table.sorted_under_after(prefix, after) {
            let iter = entries.map(|(k, v)| Ok((k.to_vec(), v.to_vec())));
            return Ok(Box::new(iter));
        }
        let prefix = prefix.to_vec();
        let after = after.to_vec();
        // A key group whose two bytes sort before the start of `after` holds only keys before
        // it; one that sorts after holds only keys after it.
        let start = after.get(..2).unwrap_or(&after).to_vec();
        let iter = table
            .groups_for_prefix(&prefix)
            .filter(move |key_group| key_group.to_be_bytes().as_slice() >= start.as_slice())
            .flat_map(move |key_group| {
                let mut entries = table.sorted_group(key_group, &prefix);
                entries.retain(|(k, _)| k.as_ref() > after.as_slice());
                entries
                    .into_iter()
                    .map(|(k, v)| Ok((k.to_vec(), v.to_vec())))
            });
        Ok(Box::new(iter))
    }

    /// See [`super::StateBackend::delete_prefix`]; costs as [`HeapStore::scan_prefix`].
    pub fn delete_prefix(&mut self, id: StateId, prefix: &[u8]) -> Result<()> {
        self.state_mut(id)?.table.remove_prefix(prefix);
        Ok(())
    }

    /// The synchronous part of a snapshot: an O(states x key groups) clone of the tables.
    pub fn freeze(&self) -> HeapSnapshot {
        HeapSnapshot {
            key_group_range: self.config.key_group_range,
            states: self
                .states
                .iter()
                .map(|s| (s.descriptor.clone(), s.table.clone()))
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
        self.config.key_group_range = range;
        for state in &mut self.states {
            state.table = StateTable::new(range);
            state.cleanup_next_group = 0;
            state.cleanup_queue.clear();
        }
        Ok(())
    }

    /// The id of a registered state by name.
    pub fn id_of(&self, name: &str) -> Option<StateId> {
        self.by_name.get(name).copied()
    }

    /// Adds the entries of `table` whose key group is in the store's range to state `id`. Key
    /// groups are shared with `table`, not copied (a later write copies the group it changes).
    pub fn restore_table(&mut self, id: StateId, table: &StateTable) -> Result<()> {
        let range = self.config.key_group_range;
        let state = self.state_mut(id)?;
        let Some(overlap) = range.intersect(&table.range()) else {
            return Ok(());
        };
        for key_group in overlap.iter() {
            if let Some(group) = table.shared_group(key_group) {
                state.table.adopt_group(key_group, group);
            }
        }
        Ok(())
    }

    /// Adds one restored entry to state `id` if its key group is in range; returns whether it was
    /// kept.
    pub fn restore_entry(&mut self, id: StateId, key: Vec<u8>, value: Vec<u8>) -> Result<bool> {
        let range = self.config.key_group_range;
        let keep = key_group_of(&key).is_some_and(|kg| range.contains(kg));
        if keep {
            self.state_mut(id)?.table.insert_owned(key, value);
        }
        Ok(keep)
    }
}

impl HeapState {
    /// Checks up to [`INCREMENTAL_CLEANUP_ENTRIES`] entries, key group by key group (the keys of
    /// one group are collected when the cursor enters it), visiting at most
    /// [`CLEANUP_GROUPS_PER_ACCESS`] key groups.
    fn incremental_cleanup(&mut self, now_ms: u64) {
        let Some(ttl) = self.descriptor.ttl else {
            return;
        };
        let is_list = self.descriptor.kind == StateKind::List;
        let range = self.table.range();
        let group_count = range.len() as usize;
        let mut checked = 0;
        let mut groups_visited = 0;
        let mut changes = Vec::new();
        while checked < INCREMENTAL_CLEANUP_ENTRIES {
            let Some(key) = self.cleanup_queue.pop() else {
                if groups_visited == CLEANUP_GROUPS_PER_ACCESS || group_count == 0 {
                    break;
                }
                groups_visited += 1;
                let offset = self.cleanup_next_group % group_count;
                self.cleanup_next_group = (offset + 1) % group_count;
                let key_group = range.first() + offset as u16;
                self.cleanup_queue = self.table.keys_of_group(key_group);
                continue;
            };
            // Keys removed since the group was collected are simply gone.
            let Some(value) = self.table.get(&key) else {
                continue;
            };
            checked += 1;
            if let Some(kept) = expiry_change(is_list, &ttl, value, now_ms) {
                changes.push((key, kept));
            }
        }
        for (k, kept) in changes {
            match kept {
                Some(v) => self.table.put(&k, &v),
                None => self.table.remove(&k),
            }
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
