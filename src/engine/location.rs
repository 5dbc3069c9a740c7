//! Where a job's checkpoints live: under the local state directory (the default) or at a
//! checkpoint-storage URI such as `s3://bucket/prefix` (`flowstate run --checkpoint-storage`).
//!
//! [`CheckpointBase`] owns the layout of FORMAT.md §12.1 relative to that base — `job/` (job
//! checkpoints) and `tasks/<generation>/t<task>` (one storage root per task and attempt) — and the
//! local directories that stay on this machine whatever the base: working stores and local-recovery
//! copies. Task roots are storage locations (strings), so a handle's root reopens its storage.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::backend::lsm::local_recovery::{LocalCopies, ROOT_FILE_NAME};
use crate::checkpoint::registry::QUARANTINE_DIR;
use crate::checkpoint::storage::{
    CheckpointStorage, LocalDirStorage, SHARED_DIR, metadata_path, parse_checkpoint_dir,
    validate_path,
};
use crate::checkpoint::uri::{StorageOptions, open_storage_with};
use crate::error::{Error, Result};
use crate::fs::{FileSystem, FsRef};

/// Directory (under the base) of job checkpoints.
pub const JOB_DIR: &str = "job";
/// Directory (under the base) of task state roots.
pub const TASKS_DIR: &str = "tasks";
/// Directory (under the local state directory) of working stores when the base is remote.
pub const WORK_DIR: &str = "work";
/// Directory (under the local state directory) of local-recovery copies when the base is remote.
pub const LOCAL_RECOVERY_DIR: &str = "local-recovery";

/// Opens the checkpoint storage at `location`: a URI (`s3://…`, `memory://…`, `file://…`) or a
/// local directory path, on `fs`.
pub fn open_location(fs: &FsRef, location: &str) -> Result<Arc<dyn CheckpointStorage>> {
    let options = StorageOptions {
        fs: fs.clone(),
        ..StorageOptions::default()
    };
    open_storage_with(location, &options)
}

/// One task's storage and local directories for one attempt.
#[derive(Debug, Clone)]
pub struct TaskRoot {
    /// Where its checkpoints go.
    pub storage: Arc<dyn CheckpointStorage>,
    /// Its working store directory (LSM backend).
    pub working_dir: PathBuf,
    /// Local-recovery copies (LSM backend), when checkpoints are remote.
    pub local_recovery_dir: Option<PathBuf>,
    /// The file system of the local directories.
    pub fs: FsRef,
}

/// The base of a job's checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointBase {
    /// The base location, without a trailing `/`.
    location: String,
    /// Whether the base is the local state directory.
    local: bool,
    storage: Arc<dyn CheckpointStorage>,
    state_dir: PathBuf,
    /// The file system of the state directory (and of a local base).
    fs: FsRef,
    /// Task-root storages opened so far (an object-store client is not free to make).
    opened: Arc<Mutex<HashMap<String, Arc<dyn CheckpointStorage>>>>,
    /// Generations kept although unreferenced because a task root in them holds quarantined
    /// checkpoints (FORMAT.md §12.1).
    preserved: Arc<Mutex<BTreeSet<String>>>,
}

impl CheckpointBase {
    /// The local default: checkpoints under `state_dir` (a canonical path) on `fs`.
    pub fn local(fs: &FsRef, state_dir: &Path) -> Result<Self> {
        Ok(CheckpointBase {
            location: state_dir.display().to_string(),
            local: true,
            storage: Arc::new(LocalDirStorage::open_on(fs.clone(), state_dir)?),
            state_dir: state_dir.to_path_buf(),
            fs: fs.clone(),
            opened: Arc::default(),
            preserved: Arc::default(),
        })
    }

    /// Checkpoints at `uri` (`s3://bucket/prefix`, …); `state_dir` (on `fs`) keeps the local
    /// parts.
    pub fn remote(fs: &FsRef, uri: &str, state_dir: &Path) -> Result<Self> {
        let location = uri.trim_end_matches('/').to_string();
        Ok(CheckpointBase {
            storage: open_location(fs, &location)?,
            location,
            local: false,
            state_dir: state_dir.to_path_buf(),
            fs: fs.clone(),
            opened: Arc::default(),
            preserved: Arc::default(),
        })
    }

    /// The base location (a directory path or a URI).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether checkpoints are on the local state directory.
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// The location of `relative` (a storage path) under the base.
    pub fn join(&self, relative: &str) -> String {
        format!("{}/{relative}", self.location)
    }

    /// `root` relative to the base when it lies under it, for storing in job records.
    pub fn relative<'a>(&self, root: &'a str) -> Option<&'a str> {
        root.strip_prefix(self.location.as_str())?.strip_prefix('/')
    }

    /// The storage of job checkpoints (`<base>/job`).
    pub fn job_storage(&self) -> Result<Arc<dyn CheckpointStorage>> {
        open_location(&self.fs, &self.join(JOB_DIR))
    }

    /// Opens the storage at `location` (a task root or a URI) on this base's file system.
    pub fn open(&self, location: &str) -> Result<Arc<dyn CheckpointStorage>> {
        open_location(&self.fs, location)
    }

    /// The storage root of `task` in `generation`: `<base>/tasks/<generation:06>/t<task>`.
    pub fn task_root(&self, generation: u64, task: usize) -> String {
        self.join(&format!("{TASKS_DIR}/{generation:06}/t{task}"))
    }

    /// The storage at `location`, opened once per base.
    fn open_root(&self, location: &str) -> Result<Arc<dyn CheckpointStorage>> {
        let mut opened = self.opened.lock();
        if let Some(storage) = opened.get(location) {
            return Ok(storage.clone());
        }
        let storage = open_location(&self.fs, location)?;
        opened.insert(location.to_string(), storage.clone());
        Ok(storage)
    }

    /// The location of `generation`'s directory of task roots: `<base>/tasks/<generation:06>`.
    pub fn generation_root(&self, generation: u64) -> String {
        self.join(&format!("{TASKS_DIR}/{generation:06}"))
    }

    /// The storage and local directories of `task` in `generation`.
    pub fn task(&self, generation: u64, task: usize) -> Result<TaskRoot> {
        let location = self.task_root(generation, task);
        if self.local {
            // The working store sits beside the task's storage root, inside the same generation
            // directory, so generation clean-up removes both together.
            return Ok(TaskRoot {
                storage: self.open_root(&location)?,
                working_dir: PathBuf::from(format!("{location}.work")),
                local_recovery_dir: None,
                fs: self.fs.clone(),
            });
        }
        Ok(TaskRoot {
            storage: self.open_root(&location)?,
            working_dir: self
                .state_dir
                .join(WORK_DIR)
                .join(format!("{generation:06}"))
                .join(format!("t{task}")),
            local_recovery_dir: Some(self.state_dir.join(LOCAL_RECOVERY_DIR)),
            fs: self.fs.clone(),
        })
    }

    /// The next generation: one more than the largest under `<base>/tasks`.
    pub fn next_generation(&self) -> Result<u64> {
        let mut next = 1;
        for name in self.storage.children(TASKS_DIR)? {
            if let Ok(n) = name.parse::<u64>() {
                next = next.max(n + 1);
            }
        }
        Ok(next)
    }

    /// Deletes every generation other than `current` that no root in `referenced` lies in,
    /// with its local working stores and local-recovery copies.
    pub fn remove_unreferenced_generations(
        &self,
        current: u64,
        referenced: &BTreeSet<String>,
    ) -> Result<()> {
        let in_use = |generation: &str| {
            let prefix = self.join(&format!("{TASKS_DIR}/{generation}/"));
            generation.parse::<u64>().ok() == Some(current)
                || referenced.iter().any(|root| root.starts_with(&prefix))
        };
        for name in self.storage.children(TASKS_DIR)? {
            if in_use(&name) || self.holds_quarantine(&name)? {
                continue;
            }
            if validate_path(&name).is_ok() {
                let prefix = self.join(&format!("{TASKS_DIR}/{name}/"));
                self.opened
                    .lock()
                    .retain(|root, _| !root.starts_with(&prefix));
                self.storage.delete_all(&format!("{TASKS_DIR}/{name}"))?;
            }
        }
        if !self.local {
            let work = self.state_dir.join(WORK_DIR);
            for name in local_children(self.fs.as_ref(), &work)? {
                if !in_use(&name) {
                    remove_dir(self.fs.as_ref(), &work.join(name))?;
                }
            }
            let copies = self.state_dir.join(LOCAL_RECOVERY_DIR);
            for name in local_children(self.fs.as_ref(), &copies)? {
                let dir = copies.join(&name);
                let root = self
                    .fs
                    .read(&dir.join(ROOT_FILE_NAME))
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let generation = self
                    .relative(&root)
                    .and_then(|r| r.strip_prefix(&format!("{TASKS_DIR}/")))
                    .and_then(|r| r.split('/').next())
                    .unwrap_or("");
                if !in_use(generation) {
                    remove_dir(self.fs.as_ref(), &dir)?;
                }
            }
        }
        Ok(())
    }

    /// Whether a task root of generation `generation` holds quarantined checkpoints (evidence
    /// of damage, never deleted automatically).
    fn holds_quarantine(&self, generation: &str) -> Result<bool> {
        if self.preserved.lock().contains(generation) {
            return Ok(true);
        }
        if validate_path(generation).is_err() {
            return Ok(false);
        }
        let dir = format!("{TASKS_DIR}/{generation}");
        for task in self.storage.children(&dir)? {
            if validate_path(&task).is_ok()
                && self
                    .storage
                    .children(&format!("{dir}/{task}"))?
                    .iter()
                    .any(|c| c == QUARANTINE_DIR)
            {
                self.preserved.lock().insert(generation.to_string());
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Keeps in each task root of `referenced` only what the retained checkpoints need there:
    /// the task checkpoints they include (their `_metadata`) and the files they list; other
    /// task checkpoints go `_metadata` first, then every unlisted file, and the local-recovery
    /// copies of unlisted files. Only for roots no running attempt writes.
    pub fn prune_roots(&self, referenced: &BTreeMap<String, RootReferences>) -> Result<()> {
        for (root, refs) in referenced {
            let storage = self.open_root(root)?;
            for name in storage.children("")? {
                if let Some(id) = parse_checkpoint_dir(&name)
                    && !refs.checkpoints.contains(&id)
                {
                    storage.unpublish_metadata(id)?;
                    storage.delete_all(&name)?;
                }
            }
            let kept_metadata: BTreeSet<String> = refs
                .checkpoints
                .iter()
                .map(|id| metadata_path(*id))
                .collect();
            for path in storage.list("")? {
                // Quarantined checkpoints are evidence: never pruned.
                let quarantined = path
                    .strip_prefix(QUARANTINE_DIR)
                    .is_some_and(|rest| rest.starts_with('/'));
                if !quarantined && !refs.files.contains(&path) && !kept_metadata.contains(&path) {
                    storage.delete(&path)?;
                }
            }
            if !self.local {
                let copies =
                    LocalCopies::new(&self.fs, &self.state_dir.join(LOCAL_RECOVERY_DIR), root);
                copies.prune(SHARED_DIR, |path| refs.files.contains(path))?;
            }
        }
        Ok(())
    }
}

/// The object at the root of a checkpoint base given with `--checkpoint-storage` that names the
/// job owning it (FORMAT.md §12.1): two jobs on one base would delete each other's checkpoints.
pub const OWNER_FILE: &str = "OWNER";

impl CheckpointBase {
    /// Claims the base for the job `job_id` (whose state directory is `state_dir`): creates
    /// [`OWNER_FILE`] if absent (atomically: a hard link locally, a conditional PUT on object
    /// stores), or accepts it when it names this job. Another job's claim is an error saying
    /// which job holds the base and what the user can do. Not needed for the local default
    /// base, which the state directory's lock covers.
    pub fn claim(&self, job_id: &str) -> Result<()> {
        let text = format!(
            "flowstate checkpoint base owner\njob {job_id}\nstate {}\npid {}\nsince_ms {}\n",
            self.state_dir.display(),
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        );
        if self.storage.create_once(OWNER_FILE, text.as_bytes())? {
            return Ok(());
        }
        let held = self.storage.read_file(OWNER_FILE)?;
        let held = String::from_utf8_lossy(&held);
        let owner = held
            .lines()
            .find_map(|l| l.strip_prefix("job "))
            .map(str::trim);
        if owner == Some(job_id) {
            return Ok(());
        }
        let field = |name: &str| {
            held.lines()
                .find_map(|l| l.strip_prefix(name))
                .map_or("?".to_string(), |v| v.trim().to_string())
        };
        Err(Error::in_use(format!(
            "checkpoint storage {} belongs to another job (its {} names job {}, state directory \
             {}, pid {}); two jobs sharing a checkpoint storage would delete each other's \
             checkpoints. Give this job its own --checkpoint-storage, or, if that job and its \
             checkpoints are no longer wanted, delete {} (and its checkpoints) first",
            self.location,
            self.join(OWNER_FILE),
            owner.unwrap_or("(unreadable)"),
            field("state "),
            field("pid "),
            self.join(OWNER_FILE),
        )))
    }
}

/// What the retained job checkpoints reference in one task storage root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootReferences {
    /// Ids of the task checkpoints they include.
    pub checkpoints: BTreeSet<u64>,
    /// Paths (relative to the root) of the files they list.
    pub files: BTreeSet<String>,
}

/// Names of the entries of a local directory; a missing directory has none.
fn local_children(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<String>> {
    match fs.read_dir(dir) {
        Ok(entries) => Ok(entries.into_iter().map(|e| e.name).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Removes a local directory and what it holds (a missing one is no error), then fsyncs its
/// parent so the removal is durable.
fn remove_dir(fs: &dyn FileSystem, path: &Path) -> Result<()> {
    fs.remove_dir_all(path).map_err(|e| Error::io(path, e))?;
    crate::fs::sync_parent(fs, path)
}
