//! Job checkpoints: the per-task snapshot handles plus the source position, kept in memory
//! (memory backend) or durably in `<state>/job/` (persistent backends), with retention.
//!
//! A persistent job checkpoint is a `_metadata` file (FORMAT.md §4.3) in its own checkpoint
//! storage `<state>/job`, published atomically; its `extra` field holds the engine's record
//! (version u32 = 1, then the postcard encoding of the source position and one handle per task:
//! backend, checkpoint id, max parallelism, key groups, states, storage root relative to the
//! state directory, files). Task state lives in `<state>/tasks/<generation>/t<task>/`, one
//! storage root per task and job attempt, so no two writers ever share a root.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::BackendChoice;
use super::source::SourcePosition;
use crate::backend::{BackendKind, FileRef, SnapshotData, SnapshotHandle, StateDescriptor};
use crate::checkpoint::metadata::CheckpointMetadata;
use crate::checkpoint::registry::CheckpointRegistry;
use crate::checkpoint::retention;
use crate::checkpoint::storage::{
    CheckpointStorage, LocalDirStorage, checkpoint_dir, parse_checkpoint_dir, validate_path,
};
use crate::error::{Error, Result};
use crate::keys::KeyGroupRange;

/// Version of the engine record in `extra`. On disk: never change meaning; bump for a new layout.
const JOB_RECORD_VERSION: u32 = 1;

/// Directory (under the state directory) of job checkpoints.
pub const JOB_DIR: &str = "job";
/// Directory (under the state directory) of task state roots.
pub const TASKS_DIR: &str = "tasks";

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

#[derive(Serialize, Deserialize)]
struct JobRecord {
    version: u32,
    source: SourcePosition,
    handles: Vec<PersistedHandle>,
}

#[derive(Serialize, Deserialize)]
struct PersistedHandle {
    backend: BackendKind,
    checkpoint_id: u64,
    max_parallelism: u16,
    key_group_range: KeyGroupRange,
    states: Vec<StateDescriptor>,
    /// Relative to the state directory when inside it, else absolute.
    root: String,
    files: Vec<FileRef>,
}

/// Where completed job checkpoints are kept.
#[derive(Debug)]
pub struct JobStore {
    state_dir: PathBuf,
    retained: usize,
    /// Retained checkpoints, oldest first (all backends keep them here too).
    retained_checkpoints: Vec<JobCheckpoint>,
    registry: Option<CheckpointRegistry>,
}

impl JobStore {
    /// Opens the store of `state_dir` (canonical path) for `backend`.
    pub fn open(state_dir: &Path, backend: BackendChoice, retained: usize) -> Result<Self> {
        let mut store = JobStore {
            state_dir: state_dir.to_path_buf(),
            retained: retained.max(1),
            retained_checkpoints: Vec::new(),
            registry: None,
        };
        let job_dir = state_dir.join(JOB_DIR);
        if !backend.persistent() {
            if job_dir.is_dir() && has_checkpoints(&job_dir)? {
                return Err(Error::invalid(format!(
                    "{} holds checkpoints of a persistent backend; rerun with the backend that \
                     wrote them (--backend fs or lsm), or use a fresh --state",
                    state_dir.display()
                )));
            }
            return Ok(store);
        }
        let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::open(&job_dir)?);
        let (registry, _report) = CheckpointRegistry::open(storage.clone())?;
        for id in registry.completed_ids() {
            if let Some(metadata) = registry.get(id) {
                if metadata.backend != backend.kind() {
                    return Err(Error::invalid(format!(
                        "{} holds checkpoints of the {} backend; rerun with --backend {}",
                        state_dir.display(),
                        metadata.backend,
                        metadata.backend
                    )));
                }
                let checkpoint = decode(metadata, state_dir)?;
                store.retained_checkpoints.push(checkpoint);
            }
        }
        store.registry = Some(registry);
        Ok(store)
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
            let metadata = encode(&checkpoint, max_parallelism, now_ms, &self.state_dir)?;
            registry
                .storage()
                .publish_metadata(checkpoint.id, &metadata.encode())?;
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

    /// Task storage roots the retained checkpoints reference.
    pub fn referenced_roots(&self) -> BTreeSet<PathBuf> {
        let mut roots = BTreeSet::new();
        for checkpoint in &self.retained_checkpoints {
            for handle in &checkpoint.handles {
                if let SnapshotData::Files { root, .. } = &handle.data {
                    roots.insert(PathBuf::from(root));
                }
            }
        }
        roots
    }
}

fn has_checkpoints(dir: &Path) -> Result<bool> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if let Some(name) = entry.file_name().to_str()
            && parse_checkpoint_dir(name).is_some()
            && entry.path().join("_metadata").exists()
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
    state_dir: &Path,
) -> Result<CheckpointMetadata> {
    let mut handles = Vec::with_capacity(checkpoint.handles.len());
    let mut backend = BackendKind::Memory;
    for handle in &checkpoint.handles {
        let SnapshotData::Files { root, files } = &handle.data else {
            return Err(Error::invalid("only file-based snapshots can be persisted"));
        };
        backend = handle.backend;
        let root = Path::new(root)
            .strip_prefix(state_dir)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_else(|_| root.clone());
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

fn decode(metadata: &CheckpointMetadata, state_dir: &Path) -> Result<JobCheckpoint> {
    let file = format!(
        "{JOB_DIR}/{}/_metadata",
        checkpoint_dir(metadata.checkpoint_id)
    );
    let bad = |what: String| Error::corruption(&file, 0, format!("engine record: {what}"));
    let record: JobRecord =
        postcard::from_bytes(&metadata.extra).map_err(|e| bad(e.to_string()))?;
    if record.version != JOB_RECORD_VERSION {
        return Err(bad(format!("unknown version {}", record.version)));
    }
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
        let root = if Path::new(&h.root).is_absolute() {
            PathBuf::from(&h.root)
        } else {
            validate_path(&h.root).map_err(|e| bad(e.to_string()))?;
            state_dir.join(&h.root)
        };
        handles.push(SnapshotHandle {
            backend: h.backend,
            checkpoint_id: h.checkpoint_id,
            max_parallelism: h.max_parallelism,
            key_group_range: range,
            states: h.states,
            data: SnapshotData::Files {
                root: root.display().to_string(),
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

/// The next task-root generation under `<state>/tasks` (one more than the largest there).
pub fn next_generation(state_dir: &Path) -> Result<u64> {
    let tasks = state_dir.join(TASKS_DIR);
    let mut next = 1;
    if tasks.is_dir() {
        for entry in fs::read_dir(&tasks).map_err(|e| Error::io(&tasks, e))? {
            let entry = entry.map_err(|e| Error::io(&tasks, e))?;
            if let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            {
                next = next.max(n + 1);
            }
        }
    }
    Ok(next)
}

/// The storage root of `task` in generation `generation`.
pub fn task_root(state_dir: &Path, generation: u64, task: usize) -> PathBuf {
    state_dir
        .join(TASKS_DIR)
        .join(format!("{generation:06}"))
        .join(format!("t{task}"))
}

/// Deletes every generation directory under `<state>/tasks` other than `current` that no
/// root in `referenced` lies in.
pub fn remove_unreferenced_generations(
    state_dir: &Path,
    current: u64,
    referenced: &BTreeSet<PathBuf>,
) -> Result<()> {
    let tasks = state_dir.join(TASKS_DIR);
    if !tasks.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(&tasks).map_err(|e| Error::io(&tasks, e))? {
        let entry = entry.map_err(|e| Error::io(&tasks, e))?;
        let path = entry.path();
        let is_current = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
            == Some(current);
        if is_current || referenced.iter().any(|root| root.starts_with(&path)) {
            continue;
        }
        fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// Deletes the checkpoints below `below` in task root `root` that are not in `keep`
/// (`_metadata` first, so a crash leaves an incomplete checkpoint, never a broken one).
pub fn remove_task_checkpoints(root: &Path, keep: &BTreeSet<u64>, below: u64) -> Result<()> {
    if !root.is_dir() {
        return Ok(());
    }
    let storage = LocalDirStorage::open(root)?;
    for name in storage.children("")? {
        if let Some(id) = parse_checkpoint_dir(&name)
            && id < below
            && !keep.contains(&id)
        {
            storage.unpublish_metadata(id)?;
            storage.delete_all(&name)?;
        }
    }
    Ok(())
}
