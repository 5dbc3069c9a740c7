//! Job checkpoints: the per-task snapshot handles plus the source position, kept in memory
//! (memory backend) or durably in `<base>/job/` (persistent backends; the base is the state
//! directory or `--checkpoint-storage`, `location.rs`), with retention.
//!
//! A persistent job checkpoint is a `_metadata` file (FORMAT.md §4.3) in its own checkpoint
//! storage `<base>/job`, published atomically; its `extra` field holds the engine's record
//! (version u32 = 1, then the postcard encoding of the source position and one handle per task:
//! backend, checkpoint id, max parallelism, key groups, states, storage root relative to the
//! base, files). Task state lives in `<base>/tasks/<generation>/t<task>/`, one
//! storage root per task and job attempt, so no two writers ever share a root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::BackendChoice;
use super::location::{CheckpointBase, JOB_DIR, RootReferences};
use super::source::SourcePosition;
use crate::backend::{BackendKind, FileRef, SnapshotData, SnapshotHandle, StateDescriptor};
use crate::checkpoint::metadata::CheckpointMetadata;
use crate::checkpoint::registry::{CheckpointRegistry, quarantine_checkpoint, quarantined_ids};
use crate::checkpoint::retention;
use crate::checkpoint::storage::{
    CheckpointStorage, checkpoint_dir, metadata_path, parse_checkpoint_dir, validate_path,
};
use crate::error::{Error, Result};
use crate::keys::KeyGroupRange;

/// Version of the engine record in `extra`. On disk: never change meaning; bump for a new layout.
/// Version 2 lists each file's XXH3-64; version 1 records are still read.
const JOB_RECORD_VERSION: u32 = 2;

/// A completed job checkpoint.
#[derive(Debug, Clone)]
pub struct JobCheckpoint {
    /// Checkpoint id.
    pub id: u64,
    /// The source position at the barrier.
    pub source: SourcePosition,
    /// One handle per operator task of the attempt that took it.
    pub handles: Vec<SnapshotHandle>,
}

/// The engine record, generic over how a file is listed ([`FileRef`] since version 2,
/// [`FileRefV1`] in version 1).
#[derive(Serialize, Deserialize)]
struct JobRecord<F = FileRef> {
    version: u32,
    source: SourcePosition,
    handles: Vec<PersistedHandle<F>>,
}

#[derive(Serialize, Deserialize)]
struct PersistedHandle<F = FileRef> {
    backend: BackendKind,
    checkpoint_id: u64,
    max_parallelism: u16,
    key_group_range: KeyGroupRange,
    states: Vec<StateDescriptor>,
    /// Relative to the state directory when inside it, else absolute.
    root: String,
    files: Vec<F>,
}

/// A file as a version-1 record lists it: without XXH3-64.
#[derive(Serialize, Deserialize)]
struct FileRefV1 {
    path: String,
    size: u64,
    crc32: u32,
    key_groups: KeyGroupRange,
}

impl From<JobRecord<FileRefV1>> for JobRecord {
    fn from(old: JobRecord<FileRefV1>) -> Self {
        let handles = old.handles.into_iter().map(|h| PersistedHandle {
            backend: h.backend,
            checkpoint_id: h.checkpoint_id,
            max_parallelism: h.max_parallelism,
            key_group_range: h.key_group_range,
            states: h.states,
            root: h.root,
            files: h
                .files
                .into_iter()
                .map(|f| FileRef {
                    path: f.path,
                    size: f.size,
                    crc32: f.crc32,
                    xxh3: None,
                    key_groups: f.key_groups,
                })
                .collect(),
        });
        JobRecord {
            version: old.version,
            source: old.source,
            handles: handles.collect(),
        }
    }
}

/// Where completed job checkpoints are kept.
#[derive(Debug)]
pub struct JobStore {
    base: CheckpointBase,
    retained: usize,
    /// Retained checkpoints, oldest first (all backends keep them here too).
    retained_checkpoints: Vec<JobCheckpoint>,
    registry: Option<CheckpointRegistry>,
    /// What opening found damaged or missing (and quarantined), in words.
    damage: Vec<String>,
    /// Ids of every quarantined job checkpoint (this open's and earlier ones).
    quarantined: Vec<u64>,
    /// Ids of job checkpoint directories the start-up scan removed for want of a `_metadata`.
    removed_incomplete: Vec<u64>,
}

impl JobStore {
    /// Opens the job checkpoints under `base` for `backend`.
    pub fn open(base: &CheckpointBase, backend: BackendChoice, retained: usize) -> Result<Self> {
        let mut store = JobStore {
            base: base.clone(),
            retained: retained.max(1),
            retained_checkpoints: Vec::new(),
            registry: None,
            damage: Vec::new(),
            quarantined: Vec::new(),
            removed_incomplete: Vec::new(),
        };
        if !backend.persistent() {
            if base.is_local() && has_checkpoints(base.job_storage()?.as_ref())? {
                return Err(Error::incompatible(format!(
                    "{} holds checkpoints of a persistent backend; rerun with the backend that \
                     wrote them (--backend fs or lsm), or use a fresh --state",
                    base.location()
                )));
            }
            return Ok(store);
        }
        let storage: Arc<dyn CheckpointStorage> = base.job_storage()?;
        let (mut registry, report) = CheckpointRegistry::open(storage.clone())?;
        for q in &report.quarantined {
            store.damage.push(format!(
                "job checkpoint {}: {}; moved to {}",
                q.checkpoint_id,
                q.cause,
                base.join(&format!("{JOB_DIR}/{}", q.moved_to))
            ));
        }
        store.removed_incomplete = report.removed_incomplete.clone();
        for id in registry.completed_ids() {
            if let Some(metadata) = registry.get(id) {
                if metadata.backend != backend.kind() {
                    return Err(Error::incompatible(format!(
                        "{} holds checkpoints of the {} backend; rerun with --backend {}",
                        base.location(),
                        metadata.backend,
                        metadata.backend
                    )));
                }
                let checkpoint = decode(metadata, base)?;
                store.retained_checkpoints.push(checkpoint);
            }
        }
        // The newest job checkpoint is usable only with every task checkpoint it names; one
        // that is damaged or gone makes the job checkpoint unusable too (both are quarantined).
        while let Some(latest) = store.retained_checkpoints.last() {
            let problems = check_task_checkpoints(&store.base, latest)?;
            if problems.is_empty() {
                break;
            }
            let id = latest.id;
            let moved = quarantine_checkpoint(storage.as_ref(), id)?;
            let moved = base.join(&format!("{JOB_DIR}/{moved}"));
            tracing::warn!(
                checkpoint = id,
                moved_to = %moved,
                problems = %problems.join("; "),
                "a task checkpoint of the newest job checkpoint is damaged or missing: job \
                 checkpoint quarantined"
            );
            store.damage.push(format!(
                "job checkpoint {id}: {}; the job checkpoint was moved to {moved}",
                problems.join("; ")
            ));
            registry.remove_completed(id);
            store.retained_checkpoints.pop();
        }
        store.quarantined = quarantined_ids(storage.as_ref())?;
        store.registry = Some(registry);
        Ok(store)
    }

    /// What opening found damaged or missing (each item names the checkpoint and where it was
    /// moved); empty when everything was sound.
    pub fn damage(&self) -> &[String] {
        &self.damage
    }

    /// Ids of the quarantined job checkpoints (under `<base>/job/quarantine/`), ascending.
    pub fn quarantined_ids(&self) -> &[u64] {
        &self.quarantined
    }

    /// Ids of the job checkpoint directories the start-up scan removed because they had no
    /// `_metadata` (a crash while publishing, or a deleted `_metadata`).
    pub fn removed_incomplete(&self) -> &[u64] {
        &self.removed_incomplete
    }

    /// The newest completed checkpoint, if any.
    pub fn latest(&self) -> Option<&JobCheckpoint> {
        self.retained_checkpoints.last()
    }

    /// Makes `checkpoint` the newest completed one (durably for persistent backends) and
    /// applies retention.
    pub fn add(
        &mut self,
        checkpoint: JobCheckpoint,
        max_parallelism: u16,
        now_ms: u64,
    ) -> Result<()> {
        if let Some(registry) = self.registry.as_mut() {
            let metadata = encode(&checkpoint, max_parallelism, now_ms, &self.base)?;
            registry
                .storage()
                .publish_metadata(checkpoint.id, &metadata.encode()?)?;
            registry.add_completed(metadata);
            retention::apply(registry, self.retained)?;
        }
        self.retained_checkpoints.push(checkpoint);
        let excess = self
            .retained_checkpoints
            .len()
            .saturating_sub(self.retained);
        self.retained_checkpoints.drain(..excess);
        Ok(())
    }

    /// Ids of the retained checkpoints.
    pub fn retained_ids(&self) -> BTreeSet<u64> {
        self.retained_checkpoints.iter().map(|c| c.id).collect()
    }

    /// Per task storage root: the task checkpoints and the files the retained checkpoints
    /// reference in it.
    pub fn referenced_files(&self) -> BTreeMap<String, RootReferences> {
        let mut roots: BTreeMap<String, RootReferences> = BTreeMap::new();
        for checkpoint in &self.retained_checkpoints {
            for handle in &checkpoint.handles {
                if let SnapshotData::Files { root, files } = &handle.data {
                    let entry = roots.entry(root.clone()).or_default();
                    entry.checkpoints.insert(handle.checkpoint_id);
                    entry.files.extend(files.iter().map(|f| f.path.clone()));
                }
            }
        }
        roots
    }

    /// Task storage roots the retained checkpoints reference.
    pub fn referenced_roots(&self) -> BTreeSet<String> {
        let mut roots = BTreeSet::new();
        for checkpoint in &self.retained_checkpoints {
            for handle in &checkpoint.handles {
                if let SnapshotData::Files { root, .. } = &handle.data {
                    roots.insert(root.clone());
                }
            }
        }
        roots
    }
}

/// Checks that every task checkpoint `checkpoint` names has a `_metadata` that decodes; a damaged
/// or incomplete one is quarantined in its task root. Returns what was wrong, in words.
fn check_task_checkpoints(
    base: &CheckpointBase,
    checkpoint: &JobCheckpoint,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for handle in &checkpoint.handles {
        let SnapshotData::Files { root, .. } = &handle.data else {
            continue;
        };
        let storage = base.open(root)?;
        let id = handle.checkpoint_id;
        let problem = match crate::checkpoint::registry::read_metadata(storage.as_ref(), id) {
            Ok(_) => continue,
            Err(cause @ Error::Corruption { .. }) => cause.to_string(),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                format!("{root}/{} is missing", metadata_path(id))
            }
            Err(other) => return Err(other),
        };
        let moved = if storage.children("")?.contains(&checkpoint_dir(id)) {
            format!(
                "; moved to {root}/{}",
                quarantine_checkpoint(storage.as_ref(), id)?
            )
        } else {
            String::new()
        };
        problems.push(format!(
            "task checkpoint {root}/{}: {problem}{moved}",
            checkpoint_dir(id)
        ));
    }
    Ok(problems)
}

fn has_checkpoints(storage: &dyn CheckpointStorage) -> Result<bool> {
    for name in storage.children("")? {
        if let Some(id) = parse_checkpoint_dir(&name)
            && storage.exists(&metadata_path(id))?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn encode(
    checkpoint: &JobCheckpoint,
    max_parallelism: u16,
    now_ms: u64,
    base: &CheckpointBase,
) -> Result<CheckpointMetadata> {
    let mut handles = Vec::with_capacity(checkpoint.handles.len());
    let mut backend = BackendKind::Memory;
    for handle in &checkpoint.handles {
        let SnapshotData::Files { root, files } = &handle.data else {
            return Err(Error::invalid("only file-based snapshots can be persisted"));
        };
        backend = handle.backend;
        let root = base.relative(root).unwrap_or(root).to_string();
        handles.push(PersistedHandle {
            backend: handle.backend,
            checkpoint_id: handle.checkpoint_id,
            max_parallelism: handle.max_parallelism,
            key_group_range: handle.key_group_range,
            states: handle.states.clone(),
            root,
            files: files.clone(),
        });
    }
    let record = JobRecord {
        version: JOB_RECORD_VERSION,
        source: checkpoint.source,
        handles,
    };
    let extra = postcard::to_allocvec(&record).map_err(|e| Error::Serialization(e.to_string()))?;
    Ok(CheckpointMetadata {
        checkpoint_id: checkpoint.id,
        backend,
        max_parallelism,
        key_group_range: KeyGroupRange::all(max_parallelism),
        timestamp_ms: now_ms,
        states: Vec::new(),
        files: Vec::new(),
        extra,
    })
}

fn decode(metadata: &CheckpointMetadata, base: &CheckpointBase) -> Result<JobCheckpoint> {
    let file = format!(
        "{JOB_DIR}/{}/_metadata",
        checkpoint_dir(metadata.checkpoint_id)
    );
    let bad = |what: String| Error::corruption(&file, 0, format!("engine record: {what}"));
    let (version, _) =
        postcard::take_from_bytes::<u32>(&metadata.extra).map_err(|e| bad(e.to_string()))?;
    let record: JobRecord = match version {
        1 => postcard::from_bytes::<JobRecord<FileRefV1>>(&metadata.extra)
            .map_err(|e| bad(e.to_string()))?
            .into(),
        JOB_RECORD_VERSION => {
            postcard::from_bytes(&metadata.extra).map_err(|e| bad(e.to_string()))?
        }
        other => return Err(bad(format!("unknown version {other}"))),
    };
    let mut handles = Vec::with_capacity(record.handles.len());
    for h in record.handles {
        let range = h.key_group_range;
        if range.first() > range.last()
            || range.last() >= h.max_parallelism
            || h.max_parallelism != metadata.max_parallelism
            || h.backend != metadata.backend
        {
            return Err(bad(format!(
                "task handle with key groups {range} does not fit the job"
            )));
        }
        let root = if Path::new(&h.root).is_absolute() || h.root.contains("://") {
            h.root.clone()
        } else {
            validate_path(&h.root).map_err(|e| bad(e.to_string()))?;
            base.join(&h.root)
        };
        handles.push(SnapshotHandle {
            backend: h.backend,
            checkpoint_id: h.checkpoint_id,
            max_parallelism: h.max_parallelism,
            key_group_range: range,
            states: h.states,
            data: SnapshotData::Files {
                root,
                files: h.files,
            },
        });
    }
    Ok(JobCheckpoint {
        id: metadata.checkpoint_id,
        source: record.source,
        handles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_records_decode_with_files_without_xxh3() {
        let dir = tempfile::tempdir().unwrap();
        let base = CheckpointBase::local(&crate::fs::std_fs(), dir.path()).unwrap();
        let range = KeyGroupRange::all(128);
        let old = JobRecord::<FileRefV1> {
            version: 1,
            source: SourcePosition::default(),
            handles: vec![PersistedHandle {
                backend: BackendKind::Fs,
                checkpoint_id: 4,
                max_parallelism: 128,
                key_group_range: range,
                states: Vec::new(),
                root: "tasks/000001/t0".into(),
                files: vec![FileRefV1 {
                    path: "chk-4/kg-00000-00127".into(),
                    size: 10,
                    crc32: 7,
                    key_groups: range,
                }],
            }],
        };
        let metadata = CheckpointMetadata {
            checkpoint_id: 4,
            backend: BackendKind::Fs,
            max_parallelism: 128,
            key_group_range: range,
            timestamp_ms: 0,
            states: Vec::new(),
            files: Vec::new(),
            extra: postcard::to_allocvec(&old).unwrap(),
        };
        let checkpoint = decode(&metadata, &base).unwrap();
        let SnapshotData::Files { root, files } = &checkpoint.handles[0].data else {
            panic!("a file handle");
        };
        assert_eq!(root, &base.join("tasks/000001/t0"));
        assert_eq!(
            (files[0].size, files[0].crc32, files[0].xxh3),
            (10, 7, None)
        );
        // An unknown version is corruption naming the record.
        let mut newer = metadata.clone();
        newer.extra[0] = 3;
        let err = decode(&newer, &base).unwrap_err();
        assert!(err.to_string().contains("unknown version 3"), "{err}");
    }
}
