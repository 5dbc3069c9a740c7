//! Full checkpoints of the LSM backend (`LsmBackendOptions::full_checkpoints`): every entry of
//! every state, read at one snapshot of the store, written as full snapshot files (FORMAT.md §5,
//! the fs backend's format) owned by the checkpoint, so it depends on no other checkpoint and on
//! no SST file. Restore loads the entries of the owned key groups into a fresh store.
//!
//! The `_metadata` of such a checkpoint has backend kind lsm and an empty `extra` (an incremental
//! checkpoint's `extra` holds its layout, FORMAT.md §11.3).

use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::backend::fs::{FullCheckpoint, write_full_checkpoint};
use crate::backend::full_snapshot::{
    ExpectedFile, decode_full_snapshot_file, write_full_snapshot_file_from,
};
use crate::backend::{BackendKind, SnapshotHandle, SnapshotTask, StateDescriptor, StateKind};
use crate::checkpoint::metadata::CheckpointMetadata;
use crate::checkpoint::registry::CheckpointRegistry;
use crate::checkpoint::storage::{CheckpointStorage, Listed, read_listed};
use crate::error::{Error, Result};
use crate::keys::{KeyGroupRange, key_group_of};
use crate::lsm::batch::WriteBatch;
use crate::lsm::{ColumnFamily, Db, ReadOptions, Snapshot};
use crate::ttl::{SharedClock, drop_expired};

/// Key groups per full snapshot file (fewer files and fsyncs than one per group).
const KEY_GROUPS_PER_FILE: u16 = 16;
/// Entries per write batch while loading.
const LOAD_BATCH: usize = 4096;

/// The asynchronous part of a full checkpoint.
pub(super) struct FullSnapshotTask {
    pub checkpoint_id: u64,
    pub max_parallelism: u16,
    pub key_group_range: KeyGroupRange,
    pub states: Vec<(StateDescriptor, ColumnFamily)>,
    pub snapshot: Snapshot,
    pub db: Arc<Db>,
    pub clock: SharedClock,
    pub storage: Arc<dyn CheckpointStorage>,
    pub registry: Arc<Mutex<CheckpointRegistry>>,
    pub retained: usize,
}

impl FullSnapshotTask {
    fn bounds(&self, key_groups: KeyGroupRange) -> ReadOptions {
        ReadOptions {
            snapshot: Some(self.snapshot.sequence()),
            lower_bound: Some(key_groups.start_key().to_vec()),
            upper_bound: key_groups.end_key().map(|k| k.to_vec()),
        }
    }

    fn has_entries(&self, key_groups: KeyGroupRange) -> Result<bool> {
        for (_, cf) in &self.states {
            let mut it = self.db.iter(cf, self.bounds(key_groups))?;
            it.seek_to_first()?;
            if it.valid() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl SnapshotTask for FullSnapshotTask {
    fn run(self: Box<Self>) -> Result<SnapshotHandle> {
        let now = self.clock.now_ms();
        let state_count = u32::try_from(self.states.len())
            .map_err(|_| Error::limit_exceeded("too many states to snapshot"))?;
        let names: Vec<String> = self.states.iter().map(|(d, _)| d.name.clone()).collect();
        let sizes: Vec<AtomicU64> = self.states.iter().map(|_| AtomicU64::new(0)).collect();
        let spec = FullCheckpoint {
            storage: &self.storage,
            registry: &self.registry,
            retained: self.retained,
            checkpoint_id: self.checkpoint_id,
            backend: BackendKind::Lsm,
            max_parallelism: self.max_parallelism,
            key_group_range: self.key_group_range,
            timestamp_ms: now,
            states: self.states.iter().map(|(d, _)| d.clone()).collect(),
            key_groups_per_file: KEY_GROUPS_PER_FILE,
        };
        let handle = write_full_checkpoint(
            spec,
            &mut |key_groups| self.has_entries(key_groups),
            &|out, id, key_groups| {
                write_full_snapshot_file_from(
                    out,
                    id,
                    key_groups,
                    state_count,
                    &mut |index, emit| {
                        let Some((descriptor, cf)) = self.states.get(index) else {
                            return Ok(());
                        };
                        let is_list = descriptor.kind == StateKind::List;
                        let mut it = self.db.iter(cf, self.bounds(key_groups))?;
                        it.seek_to_first()?;
                        while it.valid() {
                            // Expired entries are not written (a value that is not a well-formed
                            // envelope is kept: never drop what cannot be read).
                            match descriptor
                                .ttl
                                .as_ref()
                                .map(|ttl| drop_expired(is_list, ttl, it.value(), now))
                            {
                                Some(Ok(None)) => {}
                                Some(Ok(Some(kept))) => emit(it.key(), &kept)?,
                                _ => emit(it.key(), it.value())?,
                            }
                            it.next()?;
                        }
                        Ok(())
                    },
                    &sizes,
                )
            },
        )?;
        let sizes: Vec<u64> = sizes.iter().map(|s| s.load(Ordering::Relaxed)).collect();
        crate::observe::full_state_sizes(
            &names,
            (self.key_group_range.first(), self.key_group_range.last()),
            &sizes,
        );
        Ok(handle)
    }
}

/// Loads the entries of a full checkpoint whose key group is in `keep` into `db` (whose column
/// families for the checkpoint's states exist). Every file is checked against its size and checksums
/// in `_metadata`, and fully decoded, before its entries are written.
pub(super) fn load(
    db: &Db,
    storage: &dyn CheckpointStorage,
    metadata: &CheckpointMetadata,
    keep: KeyGroupRange,
) -> Result<()> {
    let mut cfs = Vec::with_capacity(metadata.states.len());
    for d in &metadata.states {
        let cf = db
            .cf(&super::cf_name(&d.name))
            .ok_or_else(|| Error::not_found(format!("restored store lacks state '{}'", d.name)))?;
        cfs.push(cf);
    }
    let state_count =
        u32::try_from(cfs.len()).map_err(|_| Error::limit_exceeded("too many states"))?;
    for entry in metadata
        .files
        .iter()
        .filter(|f| f.file.key_groups.intersect(&keep).is_some())
    {
        let file = &entry.file;
        let bytes = read_listed(storage, &file.path, &Listed::of(file))?;
        let expected = ExpectedFile {
            checkpoint_id: metadata.checkpoint_id,
            key_groups: file.key_groups,
            state_count,
        };
        decode_full_snapshot_file(&bytes, &file.path, &expected, |_, _, _| Ok(()))?;
        let mut batch = WriteBatch::new();
        let mut pending = 0usize;
        decode_full_snapshot_file(&bytes, &file.path, &expected, |state, key, value| {
            if key_group_of(key).is_some_and(|kg| keep.contains(kg)) {
                let cf = cfs.get(state as usize).ok_or(Error::UnknownState(state))?;
                batch.put(cf, key, value)?;
                pending += 1;
                if pending == LOAD_BATCH {
                    db.write(std::mem::take(&mut batch))?;
                    pending = 0;
                }
            }
            Ok(())
        })?;
        db.write(batch)?;
    }
    Ok(())
}
