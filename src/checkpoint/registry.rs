//! The registry of completed checkpoints and the reference counts of shared files.
//!
//! Opening it scans checkpoint storage (FORMAT.md §4.4): a `chk-<id>` directory is a completed
//! checkpoint exactly when its `_metadata` decodes and every file it lists exists with the listed
//! size; everything else (incomplete directories, temp
//! files, files no completed checkpoint references) is removed. Afterwards it keeps, for every
//! file under `shared/`, how many completed checkpoints reference it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};

use super::metadata::{
    CheckpointMetadata, MAX_METADATA_BODY_LEN, METADATA_HEADER_LEN, METADATA_TRAILER_LEN,
};
use super::storage::{
    CheckpointStorage, SHARED_DIR, TEMP_SUFFIX, checkpoint_dir, metadata_path, parse_checkpoint_dir,
};

/// What the start-up scan found and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Ids of the completed checkpoints, ascending.
    pub completed: Vec<u64>,
    /// Ids of incomplete checkpoint directories that were removed.
    pub removed_incomplete: Vec<u64>,
    /// Files removed because no completed checkpoint references them (including temp files).
    pub removed_files: Vec<String>,
}

/// Completed checkpoints in one checkpoint storage and the reference counts of its shared files.
///
/// One writer per storage root: the scan in [`CheckpointRegistry::open`] deletes whatever is not
/// part of a completed checkpoint, which would include a checkpoint another process is writing.
#[derive(Debug)]
pub struct CheckpointRegistry {
    storage: Arc<dyn CheckpointStorage>,
    completed: BTreeMap<u64, CheckpointMetadata>,
    shared_refs: BTreeMap<String, u32>,
}

/// Reads and decodes `chk-<id>/_metadata`. A missing file is an I/O error; a damaged one is
/// [`Error::Corruption`] naming it.
pub fn read_metadata(
    storage: &dyn CheckpointStorage,
    checkpoint_id: u64,
) -> Result<CheckpointMetadata> {
    let size = storage.file_size(&metadata_path(checkpoint_id))?;
    read_metadata_of_size(storage, checkpoint_id, size)
}

/// [`read_metadata`] when the size of `_metadata` is known already (from a listing).
fn read_metadata_of_size(
    storage: &dyn CheckpointStorage,
    checkpoint_id: u64,
    size: u64,
) -> Result<CheckpointMetadata> {
    let path = metadata_path(checkpoint_id);
    let limit =
        (METADATA_HEADER_LEN + METADATA_TRAILER_LEN) as u64 + u64::from(MAX_METADATA_BODY_LEN);
    if size > limit {
        return Err(Error::corruption(
            &path,
            0,
            format!("file of {size} bytes exceeds the largest _metadata ({limit} bytes)"),
        ));
    }
    let bytes = storage.read_file(&path)?;
    let metadata = CheckpointMetadata::decode(&bytes, &path)?;
    if metadata.checkpoint_id != checkpoint_id {
        return Err(Error::corruption(
            &path,
            METADATA_HEADER_LEN as u64,
            format!(
                "holds checkpoint id {} but sits in {}",
                metadata.checkpoint_id,
                checkpoint_dir(checkpoint_id)
            ),
        ));
    }
    Ok(metadata)
}

/// Whether every file `metadata` lists exists with its listed size (FORMAT.md §4.4, §4.5): on
/// an object store a `_metadata` alone does not make a checkpoint complete. `sizes` holds every
/// file of the storage with its size, from one listing taken before the scan.
fn all_listed_present(metadata: &CheckpointMetadata, sizes: &BTreeMap<String, u64>) -> bool {
    metadata
        .files
        .iter()
        .all(|listed| sizes.get(&listed.file.path) == Some(&listed.file.size))
}

impl CheckpointRegistry {
    /// Scans `storage`, removes everything that is not part of a completed checkpoint, and
    /// returns the registry of the completed ones.
    pub fn open(storage: Arc<dyn CheckpointStorage>) -> Result<(Self, RecoveryReport)> {
        let mut report = RecoveryReport::default();
        let mut registry = CheckpointRegistry {
            storage: storage.clone(),
            completed: BTreeMap::new(),
            shared_refs: BTreeMap::new(),
        };
        let mut checkpoint_ids = Vec::new();
        for name in storage.children("")? {
            if let Some(id) = parse_checkpoint_dir(&name) {
                checkpoint_ids.push(id);
            } else if name.ends_with(TEMP_SUFFIX) {
                storage.delete(&name)?;
                report.removed_files.push(name);
            }
        }
        checkpoint_ids.sort_unstable();
        // One listing answers "is every listed file there with its size" for all checkpoints
        // (on an object store: a LIST per 1000 files instead of a HEAD per file).
        let sizes: BTreeMap<String, u64> = storage.list_sizes("")?.into_iter().collect();
        for id in checkpoint_ids {
            let complete = match sizes.get(&metadata_path(id)) {
                None => None,
                Some(&size) => match read_metadata_of_size(storage.as_ref(), id, size) {
                    Ok(metadata) => Some(metadata),
                    Err(Error::Corruption { .. }) => None,
                    Err(other) => return Err(other),
                },
            };
            let complete = match complete {
                Some(metadata) if all_listed_present(&metadata, &sizes) => Some(metadata),
                _ => None,
            };
            match complete {
                Some(metadata) => registry.add_completed(metadata),
                None => {
                    // `_metadata` first, as in retention: never a completed checkpoint half gone.
                    storage.unpublish_metadata(id)?;
                    storage.delete_all(&checkpoint_dir(id))?;
                    report.removed_incomplete.push(id);
                }
            }
        }
        registry.remove_unreferenced(&sizes, &mut report)?;
        report.completed = registry.completed.keys().copied().collect();
        Ok((registry, report))
    }

    /// Deletes files inside completed checkpoint directories and under `shared/` that no
    /// completed checkpoint references (only safe while no checkpoint is being written).
    /// `listed` is the scan's listing of the whole storage (these directories are not touched
    /// by the scan before this runs).
    fn remove_unreferenced(
        &self,
        listed: &BTreeMap<String, u64>,
        report: &mut RecoveryReport,
    ) -> Result<()> {
        let under = |dir: String| {
            let prefix = format!("{dir}/");
            listed
                .range(prefix.clone()..)
                .map(|(path, _)| path)
                .take_while(move |path| path.starts_with(&prefix))
        };
        for (id, metadata) in &self.completed {
            let own = metadata_path(*id);
            for path in under(checkpoint_dir(*id)) {
                let referenced =
                    *path == own || metadata.files.iter().any(|f| f.file.path == *path);
                if !referenced {
                    self.storage.delete(path)?;
                    report.removed_files.push(path.clone());
                }
            }
        }
        for path in under(SHARED_DIR.to_string()) {
            if !self.shared_refs.contains_key(path) {
                self.storage.delete(path)?;
                report.removed_files.push(path.clone());
            }
        }
        Ok(())
    }

    /// The storage the registry describes.
    pub fn storage(&self) -> &Arc<dyn CheckpointStorage> {
        &self.storage
    }

    /// Records a checkpoint whose `_metadata` was just published; counts its shared files.
    pub fn add_completed(&mut self, metadata: CheckpointMetadata) {
        if let Some(old) = self.completed.remove(&metadata.checkpoint_id) {
            self.release(&old);
        }
        for file in metadata.files.iter().filter(|f| f.shared) {
            *self.shared_refs.entry(file.file.path.clone()).or_insert(0) += 1;
        }
        self.completed.insert(metadata.checkpoint_id, metadata);
    }

    /// Forgets a completed checkpoint; returns its metadata and the shared files no completed
    /// checkpoint references any more. Deletes nothing (see `retention`).
    pub fn remove_completed(
        &mut self,
        checkpoint_id: u64,
    ) -> Option<(CheckpointMetadata, Vec<String>)> {
        let metadata = self.completed.remove(&checkpoint_id)?;
        let released = self.release(&metadata);
        Some((metadata, released))
    }

    fn release(&mut self, metadata: &CheckpointMetadata) -> Vec<String> {
        let mut released = Vec::new();
        for file in metadata.files.iter().filter(|f| f.shared) {
            if let Some(count) = self.shared_refs.get_mut(&file.file.path) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.shared_refs.remove(&file.file.path);
                    released.push(file.file.path.clone());
                }
            }
        }
        released
    }

    /// The newest completed checkpoint, the one to restore from.
    pub fn latest_completed(&self) -> Option<&CheckpointMetadata> {
        self.completed.values().next_back()
    }

    /// A completed checkpoint by id.
    pub fn get(&self, checkpoint_id: u64) -> Option<&CheckpointMetadata> {
        self.completed.get(&checkpoint_id)
    }

    /// Ids of the completed checkpoints, ascending.
    pub fn completed_ids(&self) -> Vec<u64> {
        self.completed.keys().copied().collect()
    }

    /// How many completed checkpoints reference the shared file `path`.
    pub fn shared_references(&self, path: &str) -> u32 {
        self.shared_refs.get(path).copied().unwrap_or(0)
    }
}
