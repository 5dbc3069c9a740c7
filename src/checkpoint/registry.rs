//! The registry of completed checkpoints and the reference counts of shared files.
//!
//! Opening it scans checkpoint storage (FORMAT.md §4.4): a `chk-<id>` directory is a completed
//! checkpoint exactly when its `_metadata` decodes and every file it lists exists with the listed
//! size. A `chk-<id>` whose `_metadata` exists but does not decode is damage, not a crash
//! artifact: it is moved whole to `quarantine/chk-<id>` (never deleted) and reported. Everything
//! else (incomplete directories, temp files, files no completed checkpoint references) is
//! removed. Afterwards it keeps, for every file under `shared/`, how many completed checkpoints
//! reference it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};

use super::metadata::{
    CheckpointMetadata, MAX_METADATA_BODY_LEN, METADATA_HEADER_LEN, METADATA_TRAILER_LEN,
};
use super::storage::{
    CheckpointStorage, SHARED_DIR, TEMP_SUFFIX, checkpoint_dir, metadata_path, parse_checkpoint_dir,
};

/// Directory (under the storage root) holding quarantined checkpoints (FORMAT.md §4.4): neither
/// the start-up scan nor retention ever deletes anything under it.
pub const QUARANTINE_DIR: &str = "quarantine";

/// A checkpoint the start-up scan moved aside because its `_metadata` does not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// Id of the checkpoint.
    pub checkpoint_id: u64,
    /// The storage path of the directory now holding it (`quarantine/chk-<id>`, or
    /// `quarantine/chk-<id>.<n>` when that name was taken).
    pub moved_to: String,
    /// Why: the decode error of its `_metadata` (names the file and the byte offset).
    pub cause: String,
}

/// What the start-up scan found and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Ids of the completed checkpoints, ascending.
    pub completed: Vec<u64>,
    /// Ids of incomplete checkpoint directories that were removed.
    pub removed_incomplete: Vec<u64>,
    /// Files removed because no completed checkpoint references them (including temp files).
    pub removed_files: Vec<String>,
    /// Checkpoints whose `_metadata` does not decode, moved under [`QUARANTINE_DIR`](crate::checkpoint::QUARANTINE_DIR),
    /// ascending.
    pub quarantined: Vec<Quarantined>,
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

/// The storage path `quarantine/chk-<id>` for `checkpoint_id`, or `quarantine/chk-<id>.<n>`
/// (n = 1, 2, …) when a directory of that name exists already.
fn quarantine_target(storage: &dyn CheckpointStorage, checkpoint_id: u64) -> Result<String> {
    let taken = storage.children(QUARANTINE_DIR)?;
    let base = checkpoint_dir(checkpoint_id);
    let mut name = base.clone();
    let mut n = 0u64;
    while taken.contains(&name) {
        n += 1;
        name = format!("{base}.{n}");
    }
    Ok(format!("{QUARANTINE_DIR}/{name}"))
}

/// Copies the file `from` of `storage` to `to`: a link or server-side copy where the storage can,
/// else the bytes are read and written. `to` is durable when this returns.
fn copy_file(storage: &dyn CheckpointStorage, from: &str, to: &str) -> Result<()> {
    if !storage.copy_from(storage, from, to)? {
        let bytes = storage.read_file(from)?;
        storage.write_file(to, &bytes)?;
    }
    Ok(())
}

/// Moves the file `from` of `storage` to `to`: the copy is complete and durable before the
/// original goes.
fn move_file(storage: &dyn CheckpointStorage, from: &str, to: &str) -> Result<()> {
    copy_file(storage, from, to)?;
    storage.delete(from)
}

/// Moves the whole directory `chk-<checkpoint_id>` of `storage` (whatever it holds) under
/// [`QUARANTINE_DIR`] and returns the new directory's storage path. On a local directory every
/// file is hard-linked to its new name before the old names go; on an object store it is a
/// server-side copy and delete (FORMAT.md §4.4). Deletes nothing but the moved originals, and
/// `_metadata` is removed first, so a crash half-way leaves an incomplete checkpoint and a
/// complete copy.
pub fn quarantine_checkpoint(
    storage: &dyn CheckpointStorage,
    checkpoint_id: u64,
) -> Result<String> {
    let target = quarantine_target(storage, checkpoint_id)?;
    let dir = checkpoint_dir(checkpoint_id);
    let files = storage.list(&dir)?;
    for path in &files {
        let Some(rest) = path.strip_prefix(&dir) else {
            continue;
        };
        copy_file(storage, path, &format!("{target}{rest}"))?;
    }
    storage.unpublish_metadata(checkpoint_id)?;
    storage.delete_all(&dir)?;
    Ok(target)
}

/// Ids of the checkpoints under [`QUARANTINE_DIR`] of `storage` (`chk-<id>` and `chk-<id>.<n>`),
/// ascending, without duplicates.
pub fn quarantined_ids(storage: &dyn CheckpointStorage) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = storage
        .children(QUARANTINE_DIR)?
        .iter()
        .filter_map(|name| {
            let base = match name.split_once('.') {
                Some((base, n)) if n.parse::<u64>().is_ok() => base,
                Some(_) => return None,
                None => name.as_str(),
            };
            parse_checkpoint_dir(base)
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Fails when a quarantined checkpoint of `storage` is newer than `latest` (the newest
/// completed one, or none): restoring `latest` then would silently go back to older state. The
/// error is [`Error::Corruption`] naming the quarantined `_metadata`.
pub fn check_no_newer_quarantined(
    storage: &dyn CheckpointStorage,
    latest: Option<u64>,
) -> Result<()> {
    let Some(newest) = quarantined_ids(storage)?.pop() else {
        return Ok(());
    };
    if latest.is_some_and(|latest| latest > newest) {
        return Ok(());
    }
    let fallback = latest.map_or("there is no older completed checkpoint".to_string(), |id| {
        format!(
            "restoring the newest completed checkpoint {id} instead would silently bring back              older state; restore it explicitly (by its handle) if that is intended"
        )
    });
    Err(Error::corruption(
        format!(
            "{}/{QUARANTINE_DIR}/{}/_metadata",
            storage.location(),
            checkpoint_dir(newest)
        ),
        0,
        format!(
            "checkpoint {newest}'s _metadata does not decode, so the checkpoint was moved to              {QUARANTINE_DIR}/; {fallback}"
        ),
    ))
}

impl CheckpointRegistry {
    /// Scans `storage`, quarantines checkpoints whose `_metadata` does not decode, removes
    /// everything else that is not part of a completed checkpoint, and returns the registry of
    /// the completed ones.
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
                    Err(cause @ Error::Corruption { .. }) => {
                        // Damage, not a crash artifact (`_metadata` is published atomically):
                        // keep the evidence, and let the caller decide whether an older
                        // checkpoint may stand in for it.
                        let moved_to = quarantine_checkpoint(storage.as_ref(), id)?;
                        tracing::warn!(
                            storage = %storage.location(),
                            checkpoint = id,
                            moved_to = %moved_to,
                            cause = %cause,
                            "checkpoint _metadata does not decode: checkpoint quarantined"
                        );
                        report.quarantined.push(Quarantined {
                            checkpoint_id: id,
                            moved_to,
                            cause: cause.to_string(),
                        });
                        continue;
                    }
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
        // A quarantined checkpoint's `_metadata` cannot say which shared files it used: the
        // unreferenced ones go with the newest quarantined checkpoint instead of being deleted.
        let keep_in = report.quarantined.last().map(|q| q.moved_to.clone());
        for path in under(SHARED_DIR.to_string()) {
            if !self.shared_refs.contains_key(path) {
                match &keep_in {
                    Some(dir) => move_file(self.storage.as_ref(), path, &format!("{dir}/{path}"))?,
                    None => {
                        self.storage.delete(path)?;
                        report.removed_files.push(path.clone());
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::metadata::CheckpointFile;
    use crate::checkpoint::storage::FileRef;
    use crate::checkpoint::storage::LocalDirStorage;
    use crate::descriptor::BackendKind;
    use crate::keys::KeyGroupRange;

    /// Publishes checkpoint `id` owning `chk-<id>/own` (and sharing `shared/s<id>`).
    fn publish(storage: &dyn CheckpointStorage, id: u64) {
        let mut files = Vec::new();
        for (path, shared) in [
            (format!("chk-{id}/own"), false),
            (format!("shared/s{id}"), true),
        ] {
            storage.write_file(&path, b"x").unwrap();
            files.push(CheckpointFile {
                file: FileRef {
                    path,
                    size: 1,
                    crc32: 0,
                    xxh3: None,
                    key_groups: KeyGroupRange::all(4),
                },
                shared,
            });
        }
        let m = CheckpointMetadata {
            checkpoint_id: id,
            backend: BackendKind::Lsm,
            max_parallelism: 4,
            key_group_range: KeyGroupRange::all(4),
            timestamp_ms: id,
            states: vec![],
            files,
            extra: vec![],
        };
        storage.publish_metadata(id, &m.encode().unwrap()).unwrap();
    }

    fn local(dir: &std::path::Path) -> Arc<dyn CheckpointStorage> {
        Arc::new(LocalDirStorage::open(dir).unwrap())
    }

    #[test]
    fn undecodable_metadata_is_quarantined_with_its_files_and_kept_across_scans() {
        type Damage = fn(&mut Vec<u8>);
        let damages: [(&str, Damage); 3] = [
            ("flipped byte", |b| b[20] ^= 0x40),
            ("truncated", |b| b.truncate(b.len() - 3)),
            ("zeroed", |b| b.iter_mut().for_each(|x| *x = 0)),
        ];
        for (what, damage) in damages {
            let dir = tempfile::tempdir().unwrap();
            let storage = local(dir.path());
            for id in 1..=3 {
                publish(storage.as_ref(), id);
            }
            let mut bytes = storage.read_file("chk-3/_metadata").unwrap();
            damage(&mut bytes);
            // Damage in place: the published file is replaced (names are write-once).
            storage.delete("chk-3/_metadata").unwrap();
            storage.write_file("chk-3/_metadata", &bytes).unwrap();
            let (registry, report) = CheckpointRegistry::open(storage.clone()).unwrap();
            assert_eq!(registry.completed_ids(), [1, 2], "{what}");
            assert!(report.removed_incomplete.is_empty(), "{what}");
            assert_eq!(report.quarantined.len(), 1, "{what}");
            let q = &report.quarantined[0];
            assert_eq!(
                (q.checkpoint_id, q.moved_to.as_str()),
                (3, "quarantine/chk-3")
            );
            assert!(q.cause.contains("chk-3/_metadata"), "{what}: {}", q.cause);
            // Everything the damaged checkpoint had is kept, byte for byte, its shared file too.
            assert_eq!(
                storage.read_file("quarantine/chk-3/_metadata").unwrap(),
                bytes
            );
            assert_eq!(storage.read_file("quarantine/chk-3/own").unwrap(), b"x");
            assert!(storage.exists("quarantine/chk-3/shared/s3").unwrap());
            assert!(!storage.exists("chk-3/own").unwrap());
            assert!(!storage.exists("shared/s3").unwrap());
            assert_eq!(quarantined_ids(storage.as_ref()).unwrap(), [3]);
            // Later scans and retention leave the quarantine alone.
            let (mut registry, report) = CheckpointRegistry::open(storage.clone()).unwrap();
            assert!(report.quarantined.is_empty());
            assert!(
                report
                    .removed_files
                    .iter()
                    .all(|f| !f.starts_with(QUARANTINE_DIR))
            );
            for id in 4..=6 {
                publish(storage.as_ref(), id);
                let metadata = read_metadata(storage.as_ref(), id).unwrap();
                registry.add_completed(metadata);
                crate::checkpoint::retention::apply(&mut registry, 1).unwrap();
            }
            let (_, report) = CheckpointRegistry::open(storage.clone()).unwrap();
            assert_eq!(report.completed, [6]);
            assert_eq!(
                storage.read_file("quarantine/chk-3/_metadata").unwrap(),
                bytes
            );
        }
    }

    #[test]
    fn a_second_quarantine_of_the_same_id_gets_its_own_directory() {
        let dir = tempfile::tempdir().unwrap();
        let storage = local(dir.path());
        for round in 0..2 {
            publish(storage.as_ref(), 1);
            storage.delete("chk-1/_metadata").unwrap();
            storage.write_file("chk-1/_metadata", b"garbage").unwrap();
            let (registry, report) = CheckpointRegistry::open(storage.clone()).unwrap();
            assert!(registry.completed_ids().is_empty());
            let expected = ["quarantine/chk-1", "quarantine/chk-1.1"][round];
            assert_eq!(report.quarantined[0].moved_to, expected);
        }
        assert_eq!(quarantined_ids(storage.as_ref()).unwrap(), [1]);
        assert_eq!(
            storage.children(QUARANTINE_DIR).unwrap(),
            ["chk-1", "chk-1.1"]
        );
    }

    #[test]
    fn missing_metadata_is_an_incomplete_checkpoint_not_a_quarantined_one() {
        let dir = tempfile::tempdir().unwrap();
        let storage = local(dir.path());
        publish(storage.as_ref(), 1);
        storage.write_file("chk-2/own", b"x").unwrap();
        let (_, report) = CheckpointRegistry::open(storage.clone()).unwrap();
        assert_eq!(report.removed_incomplete, [2]);
        assert!(report.quarantined.is_empty());
        assert!(quarantined_ids(storage.as_ref()).unwrap().is_empty());
    }
}
