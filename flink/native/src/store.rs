//! One Flink keyed-state backend's native half: an [`LsmBackend`] with the calls the Java side
//! makes, in plain Rust (the JNI layer only converts arguments and errors).
//!
//! Checkpoints are staged in a local checkpoint storage directory; the Java side uploads the
//! files a snapshot lists through Flink's checkpoint streams and, on restore, downloads a
//! checkpoint's files back into a local directory with the same relative paths.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flowstate::CheckpointStorage;
use flowstate::backend::{SnapshotData, SnapshotTask, latest_snapshot_handle};
use flowstate::checkpoint::storage::metadata_path;
use flowstate::{
    BackendConfig, Error, KeyGroupRange, LocalDirStorage, LsmBackend, LsmBackendOptions, Result,
    SnapshotHandle, StateBackend, StateDescriptor, StateId, StateKind, TtlConfig,
};

/// The options a Flink job can set (`state.backend.flowstate.*`), parsed from `key=value` lines.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreOptions {
    /// Memtable size before a flush, bytes.
    pub write_buffer_size: usize,
    /// Block cache capacity, bytes.
    pub block_cache_size: usize,
    /// Write-back cache capacity, bytes (0 disables it).
    pub write_cache_size: usize,
    /// Compaction output file size, bytes.
    pub target_file_size: u64,
    /// Flushes and compactions on a background thread.
    pub background_work: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        let d = LsmBackendOptions::default();
        StoreOptions {
            write_buffer_size: d.write_buffer_size,
            block_cache_size: d.block_cache_size,
            write_cache_size: d.write_cache_size,
            target_file_size: d.target_file_size,
            background_work: d.background_work,
        }
    }
}

impl StoreOptions {
    /// Parses `key=value` lines (blank lines ignored); an unknown key or a bad value is an
    /// [`Error::InvalidArgument`] naming it.
    pub fn parse(text: &str) -> Result<StoreOptions> {
        let mut options = StoreOptions::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| invalid(format!("option line `{line}` is not key=value")))?;
            let (key, value) = (key.trim(), value.trim());
            let bytes = || -> Result<u64> {
                value
                    .parse::<u64>()
                    .map_err(|_| invalid(format!("option {key}: `{value}` is not a byte count")))
            };
            match key {
                "write-buffer-size" => options.write_buffer_size = to_usize(key, bytes()?)?,
                "block-cache-size" => options.block_cache_size = to_usize(key, bytes()?)?,
                "write-cache-size" => options.write_cache_size = to_usize(key, bytes()?)?,
                "target-file-size" => options.target_file_size = bytes()?,
                "background-work" => {
                    options.background_work = match value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(invalid(format!("option {key}: `{value}` is not a bool"))),
                    }
                }
                _ => return Err(invalid(format!("unknown option `{key}`"))),
            }
        }
        Ok(options)
    }

    fn backend_options(&self, working_dir: &Path) -> LsmBackendOptions {
        LsmBackendOptions::new(working_dir)
            .write_buffer_size(self.write_buffer_size)
            .block_cache_size(self.block_cache_size)
            .write_cache_size(self.write_cache_size)
            .target_file_size(self.target_file_size)
            .background_work(self.background_work)
    }
}

fn to_usize(key: &str, v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| invalid(format!("option {key}: {v} is too large")))
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

/// The serializer id every Flink state is registered with: Flink checks its own serializers'
/// compatibility (from the meta-data file the Java side writes), so flowstate's check sees one id.
pub const FLINK_SERIALIZER: &str = "flink";

/// A file of a staged checkpoint, relative to the staging root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedFile {
    /// Path relative to the staging root (`shared/…` or `chk-<id>/…`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether later checkpoints may list it too (under `shared/`).
    pub shared: bool,
}

/// What the asynchronous part of a snapshot produced: the staging root and every file of the
/// checkpoint (its `_metadata` included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedCheckpoint {
    /// The checkpoint's id.
    pub checkpoint_id: u64,
    /// The local staging root the paths are relative to.
    pub root: PathBuf,
    /// Every file, `_metadata` last.
    pub files: Vec<StagedFile>,
}

impl StagedCheckpoint {
    /// One line per file, `<s|p>\t<size>\t<path>` (`s` shared, `p` private), after a first line
    /// `<checkpoint id>\t<root>`: the form the Java side parses.
    pub fn to_text(&self) -> String {
        let mut out = format!("{}\t{}\n", self.checkpoint_id, self.root.display());
        for f in &self.files {
            let tag = if f.shared { 's' } else { 'p' };
            out.push_str(&format!("{tag}\t{}\t{}\n", f.size, f.path));
        }
        out
    }
}

/// The asynchronous part of a snapshot, run off the task thread.
pub struct PendingSnapshot {
    task: Box<dyn SnapshotTask>,
    checkpoint_id: u64,
    root: PathBuf,
    storage: Arc<dyn CheckpointStorage>,
}

impl PendingSnapshot {
    /// Writes the checkpoint into the staging root and lists its files.
    pub fn run(self) -> Result<StagedCheckpoint> {
        let handle = self.task.run()?;
        let SnapshotData::Files { files, .. } = &handle.data else {
            return Err(invalid(
                "the LSM backend returned an in-memory snapshot".into(),
            ));
        };
        let mut staged: Vec<StagedFile> = files
            .iter()
            .map(|f| StagedFile {
                path: f.path.clone(),
                size: f.size,
                shared: f.path.starts_with("shared/"),
            })
            .collect();
        let metadata = metadata_path(self.checkpoint_id);
        let size = self.storage.file_size(&metadata)?;
        staged.push(StagedFile {
            path: metadata,
            size,
            shared: false,
        });
        Ok(StagedCheckpoint {
            checkpoint_id: self.checkpoint_id,
            root: self.root,
            files: staged,
        })
    }
}

/// The native half of one Flink keyed-state backend.
pub struct FlinkStore {
    backend: LsmBackend,
    staging: PathBuf,
}

impl FlinkStore {
    /// A store for key groups `first..=last` of `max_parallelism`, working under `dir`
    /// (`dir/db` for the store, `dir/staging` for checkpoints before their upload).
    pub fn open(
        dir: &Path,
        max_parallelism: u32,
        first: u32,
        last: u32,
        options: &StoreOptions,
    ) -> Result<FlinkStore> {
        let max = u16::try_from(max_parallelism)
            .map_err(|_| invalid(format!("max parallelism {max_parallelism} > 32768")))?;
        let range = key_group_range(first, last)?;
        let staging = dir.join("staging");
        let storage = Arc::new(LocalDirStorage::open(&staging)?);
        let backend = LsmBackend::open(
            BackendConfig::new(max, range)?,
            storage,
            options.backend_options(&dir.join("db")),
        )?;
        Ok(FlinkStore { backend, staging })
    }

    /// Registers (or finds) the state `name` of `kind` (flowstate's tag, FORMAT.md §3.1), whose
    /// values carry Flink's TTL timestamps when `ttl_ms` is given: flowstate's compaction filter
    /// then drops the expired ones. A state that exists already (restored) keeps whether it has
    /// a TTL, and takes the new duration when both have one: Flink lets a job change a TTL.
    pub fn register(&mut self, name: &str, kind: u32, ttl_ms: Option<u64>) -> Result<u32> {
        let kind = match kind {
            0 => StateKind::Value,
            1 => StateKind::List,
            2 => StateKind::Map,
            3 => StateKind::Reducing,
            4 => StateKind::Aggregating,
            other => return Err(invalid(format!("unknown state kind {other}"))),
        };
        let requested = ttl_ms.map(|ms| TtlConfig::new(Duration::from_millis(ms)));
        let states = self.backend.states();
        let ttl = match states.iter().position(|d| d.name == name) {
            Some(id) => {
                let existing = states[id].ttl;
                match (existing, requested) {
                    (Some(old), Some(new)) if old != new && states[id].kind == kind => {
                        self.backend.set_state_ttl(StateId(id as u32), new)?;
                        Some(new)
                    }
                    _ => existing,
                }
            }
            None => requested,
        };
        let mut descriptor = StateDescriptor::new(name, kind).with_serializer(FLINK_SERIALIZER);
        if let Some(ttl) = ttl {
            descriptor = descriptor.with_ttl(ttl);
        }
        Ok(self.backend.register(&descriptor)?.0)
    }

    /// The value under `key`.
    pub fn get(&mut self, state: u32, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.backend.get(StateId(state), key)
    }

    /// Stores `value` under `key`.
    pub fn put(&mut self, state: u32, key: &[u8], value: &[u8]) -> Result<()> {
        self.backend.put(StateId(state), key, value)
    }

    /// Removes `key`.
    pub fn delete(&mut self, state: u32, key: &[u8]) -> Result<()> {
        self.backend.delete(StateId(state), key)
    }

    /// Appends `operand` (list element frames) to the value under `key`.
    pub fn merge(&mut self, state: u32, key: &[u8], operand: &[u8]) -> Result<()> {
        self.backend.merge(StateId(state), key, operand)
    }

    /// Removes every entry whose key starts with `prefix`.
    pub fn delete_prefix(&mut self, state: u32, prefix: &[u8]) -> Result<()> {
        self.backend.delete_prefix(StateId(state), prefix)
    }

    /// Up to `max_entries` entries (and about `max_bytes`) of `state` under `prefix`, after
    /// `after` when given, packed as `u32 BE key len | key | u32 BE value len | value` each.
    pub fn scan(
        &mut self,
        state: u32,
        prefix: &[u8],
        after: Option<&[u8]>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<u8>> {
        let entries = match after {
            Some(after) => self
                .backend
                .scan_prefix_after(StateId(state), prefix, after)?,
            None => self.backend.scan_prefix(StateId(state), prefix)?,
        };
        let mut out = Vec::new();
        for (n, entry) in entries.enumerate() {
            if n >= max_entries.max(1) || out.len() >= max_bytes {
                break;
            }
            let (key, value) = entry?;
            for part in [&key, &value] {
                let len = u32::try_from(part.len())
                    .map_err(|_| invalid("entry larger than 4 GiB".into()))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(part);
            }
        }
        Ok(out)
    }

    /// The synchronous part of checkpoint `checkpoint_id`.
    pub fn snapshot(&mut self, checkpoint_id: u64) -> Result<PendingSnapshot> {
        let task = self.backend.snapshot(checkpoint_id)?;
        Ok(PendingSnapshot {
            task,
            checkpoint_id,
            root: self.staging.clone(),
            storage: self.backend.storage().clone(),
        })
    }

    /// Checkpoint `checkpoint_id` is complete in Flink.
    pub fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        self.backend.notify_checkpoint_complete(checkpoint_id)
    }

    /// Replaces the contents with the checkpoints in `roots` (each a local directory holding
    /// one downloaded checkpoint), restricted to key groups `first..=last`.
    pub fn restore(&mut self, roots: &[PathBuf], first: u32, last: u32) -> Result<()> {
        let range = key_group_range(first, last)?;
        let mut handles: Vec<SnapshotHandle> = Vec::with_capacity(roots.len());
        for root in roots {
            let storage = LocalDirStorage::open(root)?;
            let handle = latest_snapshot_handle(&storage)?.ok_or_else(|| {
                invalid(format!(
                    "no checkpoint with a _metadata in {}",
                    root.display()
                ))
            })?;
            handles.push(handle);
        }
        self.backend.restore(&handles, range)
    }

    /// Writes every cached write to the store and compacts each state's whole key range (so
    /// that the TTL filter meets every file): for maintenance and tests.
    pub fn compact(&mut self) -> Result<()> {
        self.backend.flush_write_cache()?;
        let db = Arc::clone(self.backend.db());
        db.flush()?;
        for id in 0..self.backend.states().len() {
            let cf = self.backend.column_family(StateId(id as u32))?.clone();
            db.compact_range(&cf, None, None)?;
        }
        Ok(())
    }

    /// Store statistics as `name=value` lines (what Flink's metric group reports).
    pub fn stats(&self) -> String {
        let stats = self.backend.db().stats();
        let (cache_read_bytes, cache_write_bytes) = self.backend.write_cache_bytes();
        let memtable: u64 = stats.column_families.iter().map(|c| c.memtable_bytes).sum();
        [
            ("live-sst-bytes", stats.live_data_size()),
            ("memtable-bytes", memtable),
            ("compaction-bytes-read", stats.compaction_bytes_read),
            ("compaction-bytes-written", stats.compaction_bytes_written),
            ("flush-bytes-written", stats.flush_bytes_written),
            ("write-stalls", stats.write_stalls),
            ("block-cache-hits", stats.block_cache_hits),
            ("block-cache-misses", stats.block_cache_misses),
            ("write-cache-read-bytes", cache_read_bytes as u64),
            ("write-cache-write-bytes", cache_write_bytes as u64),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect()
    }
}

fn key_group_range(first: u32, last: u32) -> Result<KeyGroupRange> {
    let narrow =
        |v: u32| u16::try_from(v).map_err(|_| invalid(format!("key group {v} is beyond 32767")));
    KeyGroupRange::new(narrow(first)?, narrow(last)?)
}
