//! Read-only verification of checkpoint storage (`flowstate verify`): every `chk-<id>`
//! directory's `_metadata` must decode, and every file it lists must be present with the listed
//! size and crc32 and, where flowstate can read its format, decode completely.
//!
//! Only the reading methods of [`CheckpointStorage`] are called: verifying never creates,
//! renames or deletes anything (unlike the registry's start-up scan, FORMAT.md §4.4).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::backend::BackendKind;
use crate::backend::full_snapshot::{ExpectedFile, decode_full_snapshot_file};
use crate::error::{Error, Result};
use crate::lsm::sst::SstReader;

use crate::checkpoint::metadata::{CheckpointFile, CheckpointMetadata};
use crate::checkpoint::registry::read_metadata;
use crate::checkpoint::storage::{
    CheckpointStorage, Listed, checkpoint_ids, metadata_path, read_listed,
};

/// One damaged or missing file: which, where in it, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProblem {
    /// Path relative to the storage root (`chk-8/kg-00003-00003`, `shared/000012.sst`).
    pub path: String,
    /// Byte offset in the file where the problem was seen (0 for a missing file or a crc32
    /// mismatch, which has no better position).
    pub offset: u64,
    /// What is wrong, in words.
    pub what: String,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}: {}", self.path, self.offset, self.what)
    }
}

/// The verdict on one `chk-<id>` directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointStatus {
    /// `_metadata` decodes and every listed file is present, of the listed size and crc32, and
    /// decodes where its format is known.
    Sound,
    /// The checkpoint is published (its `_metadata` exists) but something is wrong: the
    /// `_metadata` itself, or one or more of its files. Every problem found is listed.
    Damaged(Vec<FileProblem>),
    /// No `_metadata` in place: a checkpoint that was never completed (or was being written).
    /// Not damage: restore never uses it, and a writer's start-up scan removes it.
    Incomplete,
}

/// What verification found for one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointReport {
    /// The `<id>` of the `chk-<id>` directory.
    pub checkpoint_id: u64,
    /// The verdict.
    pub status: CheckpointStatus,
    /// Number of files `_metadata` lists (0 if it does not decode).
    pub file_count: usize,
    /// Sum of the listed sizes of those files, in bytes.
    pub total_bytes: u64,
}

/// What verification found in a whole checkpoint storage, checkpoints in ascending id order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Every `chk-<id>` directory found.
    pub checkpoints: Vec<CheckpointReport>,
}

impl VerifyReport {
    /// True when no published checkpoint is damaged (incomplete ones do not count).
    pub fn is_sound(&self) -> bool {
        self.checkpoints
            .iter()
            .all(|c| !matches!(c.status, CheckpointStatus::Damaged(_)))
    }
}

/// The checkpoint roots to verify under `storage`, as storage paths relative to it: `""` when it
/// is a checkpoint root itself (it holds a `chk-<id>` directory, a `shared/` or a
/// `quarantine/`); else, for a job's `--state` directory or `--checkpoint-storage` base
/// (FORMAT.md §12.1), `job` and every task root `tasks/<gen>/t<i>`. Empty when there is none.
pub fn find_roots(storage: &dyn CheckpointStorage) -> Result<Vec<String>> {
    let is_root = |prefix: &str| -> Result<bool> {
        Ok(storage.children(prefix)?.iter().any(|name| {
            crate::checkpoint::storage::parse_checkpoint_dir(name).is_some()
                || name == crate::checkpoint::storage::SHARED_DIR
                || name == crate::checkpoint::registry::QUARANTINE_DIR
        }))
    };
    if is_root("")? {
        return Ok(vec![String::new()]);
    }
    let mut roots = Vec::new();
    let top = storage.children("")?;
    if top.iter().any(|n| n == "job") && is_root("job")? {
        roots.push("job".to_string());
    }
    if top.iter().any(|n| n == "tasks") {
        for generation in storage.children("tasks")? {
            if generation.parse::<u64>().is_err() {
                continue;
            }
            for task in storage.children(&format!("tasks/{generation}"))? {
                let root = format!("tasks/{generation}/{task}");
                if task.starts_with('t') && !task.contains('.') && is_root(&root)? {
                    roots.push(root);
                }
            }
        }
    }
    Ok(roots)
}

/// Verifies every `chk-<id>` directory under the storage root. An error is returned only when
/// the storage itself cannot be listed; damage is reported in the result.
pub fn verify_storage(storage: &dyn CheckpointStorage) -> Result<VerifyReport> {
    let ids = checkpoint_ids(storage)?;
    let checkpoints = ids
        .into_iter()
        .map(|id| verify_checkpoint(storage, id))
        .collect();
    Ok(VerifyReport { checkpoints })
}

/// Verifies checkpoint `checkpoint_id`: its `_metadata`, then every file it lists.
pub fn verify_checkpoint(storage: &dyn CheckpointStorage, checkpoint_id: u64) -> CheckpointReport {
    let mut report = CheckpointReport {
        checkpoint_id,
        status: CheckpointStatus::Sound,
        file_count: 0,
        total_bytes: 0,
    };
    let path = metadata_path(checkpoint_id);
    match storage.exists(&path) {
        Ok(false) => {
            report.status = CheckpointStatus::Incomplete;
            return report;
        }
        Ok(true) => {}
        Err(e) => {
            report.status = CheckpointStatus::Damaged(vec![problem(&path, e)]);
            return report;
        }
    }
    let metadata = match read_metadata(storage, checkpoint_id) {
        Ok(metadata) => metadata,
        Err(e) => {
            report.status = CheckpointStatus::Damaged(vec![problem(&path, e)]);
            return report;
        }
    };
    report.file_count = metadata.files.len();
    report.total_bytes = metadata
        .files
        .iter()
        .fold(0u64, |sum, f| sum.saturating_add(f.file.size));
    let problems: Vec<FileProblem> = metadata
        .files
        .iter()
        .filter_map(|file| {
            verify_file(storage, &metadata, file)
                .err()
                .map(|e| problem(&file.file.path, e))
        })
        .collect();
    if !problems.is_empty() {
        report.status = CheckpointStatus::Damaged(problems);
    }
    report
}

/// Checks one listed file: present, listed size, listed crc32, then its own format where known
/// (full snapshot files of the fs backend, FORMAT.md §5; SST files, §8).
fn verify_file(
    storage: &dyn CheckpointStorage,
    metadata: &CheckpointMetadata,
    entry: &CheckpointFile,
) -> Result<()> {
    let file = &entry.file;
    let path = file.path.as_str();
    if !storage.exists(path)? {
        return Err(Error::corruption(path, 0, "missing: _metadata lists it"));
    }
    let bytes = read_listed(storage, path, &Listed::of(file))?;
    if !entry.shared && matches!(metadata.backend, BackendKind::Fs | BackendKind::Lsm) {
        let expected = ExpectedFile {
            checkpoint_id: metadata.checkpoint_id,
            key_groups: file.key_groups,
            state_count: u32::try_from(metadata.states.len())
                .map_err(|_| Error::corruption(path, 0, "too many states"))?,
        };
        decode_full_snapshot_file(&bytes, path, &expected, |_, _, _| Ok(()))?;
    } else if path.ends_with(".sst") {
        let reader =
            SstReader::from_bytes(Arc::new(bytes), Arc::from(path), Path::new(path), 0, None)?;
        reader.verify()?;
    }
    Ok(())
}

/// A [`FileProblem`] from an error about `path` (a corruption error keeps its own file and
/// offset).
pub(crate) fn problem(path: &str, error: Error) -> FileProblem {
    match error {
        Error::Corruption { file, offset, what } => FileProblem {
            path: file,
            offset,
            what,
        },
        other => FileProblem {
            path: path.to_string(),
            offset: 0,
            what: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{FileRef, StateDescriptor, StateKind};
    use crate::checkpoint::storage::LocalDirStorage;
    use crate::keys::{KeyGroupRange, composite_key};

    fn snapshot_file(id: u64, groups: KeyGroupRange) -> Vec<u8> {
        struct Sink(Vec<u8>);
        impl crate::checkpoint::storage::CheckpointFileWriter for Sink {
            fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
                self.0.extend_from_slice(bytes);
                Ok(())
            }
            fn finish(self: Box<Self>) -> Result<u64> {
                Ok(self.0.len() as u64)
            }
        }
        let mut map = crate::backend::heap::StateMap::new();
        map.insert(composite_key(groups.first(), b"k", b"", b""), b"v".to_vec());
        let mut sink = Sink(Vec::new());
        crate::backend::full_snapshot::write_full_snapshot_file(&mut sink, id, groups, &[map])
            .unwrap();
        sink.0
    }

    /// Publishes checkpoint `id` of the fs backend with one full snapshot file and one shared
    /// file; returns the paths of both.
    fn publish(storage: &LocalDirStorage, id: u64) -> (String, String) {
        let groups = KeyGroupRange::new(0, 3).unwrap();
        let owned = format!("chk-{id}/kg-00000-00003");
        let shared = "shared/blob".to_string();
        let bytes = snapshot_file(id, groups);
        storage.write_file(&owned, &bytes).unwrap();
        if !storage.exists(&shared).unwrap() {
            storage.write_file(&shared, b"shared bytes").unwrap(); // written once, shared after
        }
        let entry = |path: &str, bytes: &[u8], shared| CheckpointFile {
            file: FileRef {
                path: path.to_string(),
                size: bytes.len() as u64,
                crc32: crc32fast::hash(bytes),
                xxh3: None,
                key_groups: groups,
            },
            shared,
        };
        let metadata = CheckpointMetadata {
            checkpoint_id: id,
            backend: BackendKind::Fs,
            max_parallelism: 4,
            key_group_range: groups,
            timestamp_ms: 1,
            states: vec![StateDescriptor::new("s", StateKind::Value)],
            files: vec![
                entry(&owned, &bytes, false),
                entry(&shared, b"shared bytes", true),
            ],
            extra: Vec::new(),
        };
        storage
            .publish_metadata(id, &metadata.encode().unwrap())
            .unwrap();
        (owned, shared)
    }

    fn damaged(report: &CheckpointReport) -> &[FileProblem] {
        match &report.status {
            CheckpointStatus::Damaged(problems) => problems,
            other => panic!("expected damage, got {other:?}"),
        }
    }

    #[test]
    fn sound_incomplete_and_damaged_checkpoints_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalDirStorage::open(dir.path()).unwrap();
        publish(&storage, 1);
        let (owned, _) = publish(&storage, 2);
        let (_, shared) = publish(&storage, 3);
        storage.write_file("chk-4/kg-00000-00003", b"half").unwrap();
        // Flip one byte of chk-2's snapshot file, delete the shared file chk-3 lists.
        let full = dir.path().join(&owned);
        let mut bytes = std::fs::read(&full).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&full, &bytes).unwrap();
        std::fs::remove_file(dir.path().join(&shared)).unwrap();
        let before = storage.list("").unwrap();

        let report = verify_storage(&storage).unwrap();
        assert_eq!(
            storage.list("").unwrap(),
            before,
            "verify changed the directory"
        );
        let ids: Vec<u64> = report.checkpoints.iter().map(|c| c.checkpoint_id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        // chk-3 shares the same (now missing) shared file as chk-1 and chk-2.
        assert!(damaged(&report.checkpoints[0])[0].what.contains("missing"));
        let problems = damaged(&report.checkpoints[1]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].path, owned);
        assert!(problems[0].what.contains("crc32 mismatch"), "{problems:?}");
        assert_eq!(report.checkpoints[3].status, CheckpointStatus::Incomplete);
        assert!(!report.is_sound());
    }

    #[test]
    fn a_sound_storage_passes_and_damaged_metadata_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalDirStorage::open(dir.path()).unwrap();
        publish(&storage, 5);
        let report = verify_storage(&storage).unwrap();
        assert!(report.is_sound(), "{report:?}");
        assert_eq!(report.checkpoints[0].file_count, 2);
        assert_eq!(report.checkpoints[0].status, CheckpointStatus::Sound);

        let meta = dir.path().join("chk-5/_metadata");
        let mut bytes = std::fs::read(&meta).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&meta, &bytes).unwrap();
        let report = verify_storage(&storage).unwrap();
        let problems = damaged(&report.checkpoints[0]);
        assert_eq!(problems[0].path, "chk-5/_metadata");
        assert_eq!(problems[0].offset, last as u64 - 3);
    }

    #[test]
    fn a_snapshot_file_with_a_valid_crc_but_wrong_structure_is_caught() {
        // A file whose crc32 matches _metadata but whose header names another checkpoint: only
        // decoding the file finds it.
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalDirStorage::open(dir.path()).unwrap();
        let (owned, _) = publish(&storage, 6);
        let wrong = snapshot_file(99, KeyGroupRange::new(0, 3).unwrap());
        storage.delete(&owned).unwrap();
        storage.write_file(&owned, &wrong).unwrap();
        let mut metadata = read_metadata(&storage, 6).unwrap();
        metadata.files[0].file.crc32 = crc32fast::hash(&wrong);
        metadata.files[0].file.size = wrong.len() as u64;
        storage
            .publish_metadata(6, &metadata.encode().unwrap())
            .unwrap();
        let report = verify_checkpoint(&storage, 6);
        let problems = damaged(&report);
        assert_eq!(problems[0].path, owned);
        assert!(
            problems[0].what.contains("header says checkpoint 99"),
            "{problems:?}"
        );
    }
}
