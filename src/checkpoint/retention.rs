//! Retention of completed checkpoints and deletion of files no retained checkpoint needs.
//!
//! The policy is a pure function of the registry ([`plan`]): keep the newest N completed
//! checkpoints, discard the rest, and delete the shared files only discarded checkpoints
//! referenced. [`apply`] carries a plan out in crash-safe order (FORMAT.md §10): a discarded
//! checkpoint's `_metadata` goes first, so a crash half way leaves an incomplete directory that
//! the next start-up scan removes, never a completed checkpoint with missing files.

use std::collections::BTreeSet;

use crate::error::{Error, Result};

use super::registry::CheckpointRegistry;
use super::storage::checkpoint_dir;

/// Completed checkpoints kept by default (Flink's `state.checkpoints.num-retained` is 1; three
/// leaves room to fall back past a damaged one).
pub const DEFAULT_RETAINED_CHECKPOINTS: usize = 3;

/// What retention will do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Completed checkpoints to discard, ascending.
    pub discard: Vec<u64>,
    /// Shared files referenced only by discarded checkpoints.
    pub delete_shared: Vec<String>,
}

/// The plan that keeps the newest `retained` completed checkpoints of `registry`.
pub fn plan(registry: &CheckpointRegistry, retained: usize) -> RetentionPlan {
    let ids = registry.completed_ids();
    let discard: Vec<u64> = ids
        .iter()
        .take(ids.len().saturating_sub(retained))
        .copied()
        .collect();
    let mut kept_shared = BTreeSet::new();
    for id in ids.iter().skip(discard.len()) {
        if let Some(m) = registry.get(*id) {
            kept_shared.extend(
                m.files
                    .iter()
                    .filter(|f| f.shared)
                    .map(|f| f.file.path.clone()),
            );
        }
    }
    let mut delete_shared = BTreeSet::new();
    for id in &discard {
        if let Some(m) = registry.get(*id) {
            delete_shared.extend(
                m.files
                    .iter()
                    .filter(|f| f.shared && !kept_shared.contains(&f.file.path))
                    .map(|f| f.file.path.clone()),
            );
        }
    }
    RetentionPlan {
        discard,
        delete_shared: delete_shared.into_iter().collect(),
    }
}

/// Keeps the newest `retained` (at least 1) completed checkpoints and deletes the rest and every
/// shared file no retained checkpoint references. Returns what it did.
pub fn apply(registry: &mut CheckpointRegistry, retained: usize) -> Result<RetentionPlan> {
    if retained == 0 {
        return Err(Error::invalid(
            "retention must keep at least one completed checkpoint",
        ));
    }
    let planned = plan(registry, retained);
    let released = discard(registry, &planned.discard)?;
    debug_assert!(planned.delete_shared.iter().all(|p| released.contains(p)));
    Ok(planned)
}

/// Retention decided outside the storage (the engine's job checkpoints, which name the task
/// checkpoints they include): discards every completed checkpoint with an id up to `up_to` that
/// is not in `keep` — those whose job checkpoint was subsumed, and those whose job checkpoint
/// never completed — and deletes the shared files no remaining checkpoint references. Completed
/// checkpoints above `up_to` (still in flight at the job level) are left alone. Returns the
/// discarded ids and the deleted shared files.
pub fn release(
    registry: &mut CheckpointRegistry,
    keep: &BTreeSet<u64>,
    up_to: u64,
) -> Result<(Vec<u64>, Vec<String>)> {
    let ids: Vec<u64> = registry
        .completed_ids()
        .into_iter()
        .filter(|id| *id <= up_to && !keep.contains(id))
        .collect();
    let released = discard(registry, &ids)?;
    Ok((ids, released.into_iter().collect()))
}

/// Deletes the completed checkpoints `ids` (each `_metadata` first) and then the shared files
/// only they referenced; returns those files.
fn discard(registry: &mut CheckpointRegistry, ids: &[u64]) -> Result<BTreeSet<String>> {
    let storage = registry.storage().clone();
    let mut released = BTreeSet::new();
    for id in ids {
        // `_metadata` first: from here on the checkpoint is incomplete, never half deleted.
        storage.unpublish_metadata(*id)?;
        storage.delete_all(&checkpoint_dir(*id))?;
        if let Some((_, freed)) = registry.remove_completed(*id) {
            released.extend(freed);
        }
    }
    for path in &released {
        storage.delete(path)?;
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::checkpoint::metadata::{CheckpointFile, CheckpointMetadata};
    use crate::checkpoint::storage::FileRef;
    use crate::checkpoint::storage::{CheckpointStorage, LocalDirStorage};
    use crate::descriptor::BackendKind;
    use crate::keys::KeyGroupRange;

    fn file(path: &str, shared: bool) -> CheckpointFile {
        CheckpointFile {
            file: FileRef {
                path: path.into(),
                size: 1,
                crc32: 0,
                xxh3: None,
                key_groups: KeyGroupRange::all(4),
            },
            shared,
        }
    }

    /// Checkpoint `id` owns `chk-<id>/own` and shares `shared/<s>` for each `s` in `shared`.
    fn publish(storage: &dyn CheckpointStorage, id: u64, shared: &[&str]) -> CheckpointMetadata {
        let mut files = vec![file(&format!("chk-{id}/own"), false)];
        storage.write_file(&format!("chk-{id}/own"), b"x").unwrap();
        for s in shared {
            let path = format!("shared/{s}");
            if !storage.exists(&path).unwrap() {
                storage.write_file(&path, b"x").unwrap(); // written once, shared after
            }
            files.push(file(&path, true));
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
        m
    }

    #[test]
    fn keeps_newest_three_of_five_with_shared_refcounts() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::open(dir.path()).unwrap());
        let (mut registry, _) = CheckpointRegistry::open(storage.clone()).unwrap();
        // a: only 1; b: 1-3; c: 2-5; d: 5.
        let sharing: [&[&str]; 5] = [&["a", "b"], &["b", "c"], &["b", "c"], &["c"], &["c", "d"]];
        for (i, shared) in sharing.iter().enumerate() {
            registry.add_completed(publish(storage.as_ref(), i as u64 + 1, shared));
        }
        assert_eq!(registry.shared_references("shared/c"), 4);
        let p = plan(&registry, 3);
        assert_eq!(p.discard, [1, 2]);
        assert_eq!(p.delete_shared, ["shared/a"]);
        assert_eq!(apply(&mut registry, 3).unwrap(), p);
        assert_eq!(registry.completed_ids(), [3, 4, 5]);
        assert_eq!(registry.shared_references("shared/b"), 1);
        assert_eq!(registry.shared_references("shared/c"), 3);
        assert!(!storage.exists("shared/a").unwrap());
        assert!(storage.exists("shared/b").unwrap());
        assert!(
            storage
                .children("")
                .unwrap()
                .iter()
                .all(|n| n != "chk-1" && n != "chk-2")
        );
        // Reopening rebuilds the same counts from the `_metadata` files alone.
        let (reopened, report) = CheckpointRegistry::open(storage.clone()).unwrap();
        assert_eq!(report.completed, [3, 4, 5]);
        assert!(report.removed_files.is_empty(), "{report:?}");
        assert_eq!(reopened.shared_references("shared/c"), 3);
        assert!(apply(&mut registry, 0).is_err());
    }

    #[test]
    fn release_discards_what_outside_retention_drops_and_leaves_newer_ones() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::open(dir.path()).unwrap());
        let (mut registry, _) = CheckpointRegistry::open(storage.clone()).unwrap();
        // 1 subsumed, 2 kept, 3 never completed at the job level, 4 kept, 5 still in flight.
        let sharing: [&[&str]; 5] = [&["a", "b"], &["b"], &["c"], &["b", "d"], &["e"]];
        for (i, shared) in sharing.iter().enumerate() {
            registry.add_completed(publish(storage.as_ref(), i as u64 + 1, shared));
        }
        let keep = BTreeSet::from([2, 4]);
        let (discarded, deleted) = release(&mut registry, &keep, 4).unwrap();
        assert_eq!(discarded, [1, 3]);
        assert_eq!(deleted, ["shared/a", "shared/c"]);
        assert_eq!(registry.completed_ids(), [2, 4, 5]);
        for (path, exists) in [
            ("shared/a", false),
            ("shared/b", true),
            ("shared/c", false),
            ("shared/d", true),
            ("shared/e", true),
            ("chk-1/own", false),
            ("chk-3/_metadata", false),
            ("chk-5/_metadata", true),
        ] {
            assert_eq!(storage.exists(path).unwrap(), exists, "{path}");
        }
    }

    #[test]
    fn start_up_removes_incomplete_checkpoints_and_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::open(dir.path()).unwrap());
        publish(storage.as_ref(), 1, &["kept"]);
        publish(storage.as_ref(), 2, &["kept"]);
        // 3: data written, no _metadata. 4: a temp _metadata only. 5: garbage _metadata.
        storage.write_file("chk-3/own", b"x").unwrap();
        storage.write_file("shared/orphan", b"x").unwrap();
        storage
            .write_file("chk-4/_metadata.tmp", b"partial")
            .unwrap();
        storage
            .write_file("chk-5/_metadata", b"FLWSMETA garbage")
            .unwrap();
        storage.write_file("chk-2/stray", b"x").unwrap();
        storage.write_file("upload.tmp", b"x").unwrap();
        storage.write_file("README", b"not ours").unwrap();
        let (registry, report) = CheckpointRegistry::open(storage.clone()).unwrap();
        assert_eq!(report.completed, [1, 2]);
        assert_eq!(report.removed_incomplete, [3, 4]);
        // A `_metadata` that does not decode is damage: moved aside, with the shared file no
        // completed checkpoint lists (it may have been the damaged checkpoint's).
        assert_eq!(report.quarantined.len(), 1);
        assert_eq!(report.quarantined[0].checkpoint_id, 5);
        assert_eq!(report.quarantined[0].moved_to, "quarantine/chk-5");
        let mut removed = report.removed_files.clone();
        removed.sort();
        assert_eq!(removed, ["chk-2/stray", "upload.tmp"]);
        assert_eq!(
            registry.latest_completed().map(|m| m.checkpoint_id),
            Some(2)
        );
        assert_eq!(registry.shared_references("shared/kept"), 2);
        assert_eq!(
            storage.list("").unwrap(),
            [
                "README",
                "chk-1/_metadata",
                "chk-1/own",
                "chk-2/_metadata",
                "chk-2/own",
                "quarantine/chk-5/_metadata",
                "quarantine/chk-5/shared/orphan",
                "shared/kept"
            ]
        );
    }
}
