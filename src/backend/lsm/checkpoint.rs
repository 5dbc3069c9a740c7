//! Incremental checkpoints of the LSM backend with bounded upload bytes (FORMAT.md §11).
//!
//! DESIGN. Uploading every live SST not yet in storage (plain SST sharing) makes compaction
//! churn show up in checkpoints: one L1→L2 compaction can rewrite far more than the interval
//! changed. So a checkpoint is a *base* — the files of one earlier version, all uploaded — plus
//! *deltas*: the outputs of every flush since that base (the store captures them, pinned, as
//! they are made; a flush's output is the changelog of its interval). Each checkpoint uploads its
//! new deltas plus at most a budget (credit earned at max(delta bytes, a minimum) per checkpoint,
//! capped at `CREDIT_CAP` budgets) of a pending *materialization target*: a pinned later version.
//! Once every file of the target is uploaded, the checkpoint switches its base to it and drops
//! the deltas it contains. A new target is taken when the deltas outgrow `delta_ratio` × the
//! base's bytes. Per checkpoint: delta bytes + at most `CREDIT_CAP` budgets; on average: delta
//! bytes + at most delta bytes / `delta_ratio`. Files keep their numbers, so a target file that
//! is an uploaded delta (not yet compacted) costs nothing.
//!
//! Invariants: the in-memory state (uploaded files, base, deltas) changes only after `_metadata`
//! is published, so a failed checkpoint leaves nothing a later one relies on; every file a
//! checkpoint's layout names is listed in its `_metadata` (reference counted by the registry).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use super::layout::{CheckpointLayout, FileRole, LayoutFile, LayoutTombstone, file_key_groups};
use super::local_recovery::LocalCopies;
use super::transfer::{UploadJob, upload_all};
use super::write_cache::{FrozenWrites, PendingWrites};
use super::{CF_PREFIX, LsmBackendOptions};
use crate::backend::{
    BackendKind, FileRef, SnapshotHandle, SnapshotTask, StateDescriptor, fs::snapshot_handle,
};
use crate::checkpoint::metadata::{CheckpointFile, CheckpointMetadata};
use crate::checkpoint::registry::CheckpointRegistry;
use crate::checkpoint::retention;
use crate::checkpoint::storage::{CheckpointStorage, SHARED_DIR, metadata_path};
use crate::error::{Error, Result};
use crate::keys::KeyGroupRange;
use crate::lsm::db::FlushOutput;
use crate::lsm::table::sst_file_name;
use crate::lsm::version::{FileMeta, RangeTombstone};
use crate::lsm::{Db, LiveFiles};
use crate::ttl::SharedClock;

/// Unused credit carries over while a target is pending, up to this many budgets: a file larger
/// than one budget still gets uploaded, and no checkpoint uploads more than this many budgets of
/// target bytes (a file larger than the cap is uploaded once the credit reaches the cap).
pub const CREDIT_CAP: u64 = 8;

/// A file in checkpoint storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct UploadedFile {
    pub path: String,
    pub size: u64,
    pub crc32: u32,
    /// XXH3-64 of the file; `None` for a file listed by a version-1 `_metadata`.
    pub xxh3: Option<u64>,
}

/// A file a checkpoint's layout names: column family name, level, metadata.
#[derive(Clone, Debug)]
pub(super) struct CkptFile {
    pub cf: String,
    pub level: u8,
    pub meta: Arc<FileMeta>,
}

type Tombstones = Vec<(String, RangeTombstone)>;

#[derive(Clone, Debug)]
pub(super) struct Base {
    pub sequence: u64,
    pub files: Vec<CkptFile>,
    pub tombstones: Tombstones,
}

#[derive(Clone, Debug)]
struct Delta {
    sequence: u64,
    files: Vec<CkptFile>,
    tombstones: Tombstones,
}

#[derive(Debug)]
pub(super) struct Target {
    pub live: LiveFiles,
}

impl Target {
    fn files(&self) -> Vec<CkptFile> {
        self.live
            .files
            .iter()
            .filter(|f| f.cf.starts_with(CF_PREFIX))
            .map(|f| CkptFile {
                cf: f.cf.clone(),
                level: f.level as u8,
                meta: f.meta.clone(),
            })
            .collect()
    }

    fn tombstones(&self) -> Tombstones {
        self.live
            .version
            .cfs
            .values()
            .filter(|c| c.name.starts_with(CF_PREFIX))
            .flat_map(|c| c.tombstones.iter().map(|t| (c.name.clone(), t.clone())))
            .collect()
    }

    fn as_base(&self) -> Base {
        Base {
            sequence: self.live.sequence,
            files: self.files(),
            tombstones: self.tombstones(),
        }
    }
}

/// What one checkpoint uploaded and references.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// The checkpoint.
    pub checkpoint_id: u64,
    /// Files uploaded by this checkpoint.
    pub uploaded_files: usize,
    /// Bytes uploaded by this checkpoint (deltas and target).
    pub uploaded_bytes: u64,
    /// Bytes of the flush outputs (deltas) this checkpoint added.
    pub delta_bytes: u64,
    /// Bytes of materialization-target files uploaded.
    pub materialized_bytes: u64,
    /// Bytes of every file the checkpoint references.
    pub referenced_bytes: u64,
    /// Delta files in the checkpoint's layout.
    pub delta_files: usize,
    /// Whether this checkpoint switched to a new base.
    pub base_switched: bool,
}

/// The incremental-checkpoint state of one backend, shared with its snapshot tasks.
#[derive(Debug)]
pub(super) struct Incremental {
    /// Names the shared files of the current store: `shared/<store_id:016x>-<number>.sst`.
    pub store_id: u64,
    /// Bumped by every restore; a task of an older store refuses to run.
    pub epoch: u32,
    /// Files the last published checkpoint lists, by local file number.
    pub uploaded: HashMap<u64, UploadedFile>,
    /// The complete base (None after a restore whose files are not all in this storage).
    pub base: Option<Base>,
    deltas: Vec<Delta>,
    /// Flush outputs captured and not yet in a published checkpoint.
    pending: Vec<FlushOutput>,
    pub target: Option<Target>,
    credit: u64,
    pub last_stats: Option<CheckpointStats>,
    /// Failed checkpoint runs of this store: a file uploaded after one gets a name no earlier
    /// upload used (names are written once, FORMAT.md §11.1).
    retry: u32,
}

impl Incremental {
    pub fn new(store_id: u64) -> Self {
        Incremental {
            store_id,
            epoch: 0,
            uploaded: HashMap::new(),
            base: Some(Base {
                sequence: 0,
                files: Vec::new(),
                tombstones: Vec::new(),
            }),
            deltas: Vec::new(),
            pending: Vec::new(),
            target: None,
            credit: 0,
            last_stats: None,
            retry: 0,
        }
    }

    /// Starts over on a restored store: `live` is its whole version, `uploaded` the files of it
    /// that this storage already holds.
    pub fn reset(&mut self, store_id: u64, live: LiveFiles, uploaded: HashMap<u64, UploadedFile>) {
        let target = Target { live };
        let complete = target
            .files()
            .iter()
            .all(|f| uploaded.contains_key(&f.meta.number));
        self.store_id = store_id;
        self.epoch += 1;
        self.uploaded = uploaded;
        self.deltas.clear();
        self.pending.clear();
        self.credit = 0;
        self.retry = 0;
        if complete {
            self.base = Some(target.as_base());
            self.target = None;
        } else {
            self.base = None;
            self.target = Some(target);
        }
    }

    fn shared_path(&self, number: u64) -> String {
        match self.retry {
            0 => shared_path(self.store_id, number),
            retry => format!(
                "{SHARED_DIR}/{:016x}-{number:06}-r{retry}.sst",
                self.store_id
            ),
        }
    }
}

/// The storage path of file `number` of store `store_id` (FORMAT.md §11.1).
pub(super) fn shared_path(store_id: u64, number: u64) -> String {
    format!("{SHARED_DIR}/{store_id:016x}-{number:06}.sst")
}

/// The asynchronous part of an LSM snapshot.
pub(super) struct LsmSnapshotTask {
    pub checkpoint_id: u64,
    /// The sequence of the memtable freeze that ends the checkpoint: the synchronous part's,
    /// or (with a `frozen` batch of the write-back cache) set by `run` once the batch is applied.
    pub sequence: u64,
    pub frozen: Option<(Arc<PendingWrites>, Arc<FrozenWrites>)>,
    pub epoch: u32,
    pub max_parallelism: u16,
    pub key_group_range: KeyGroupRange,
    pub states: Vec<StateDescriptor>,
    pub clock: SharedClock,
    pub db: Arc<Db>,
    pub storage: Arc<dyn CheckpointStorage>,
    pub registry: Arc<Mutex<CheckpointRegistry>>,
    pub incremental: Arc<Mutex<Incremental>>,
    pub retained: usize,
    pub options: LsmBackendOptions,
}

/// SST bytes per state (every registered state, 0 if it has no file) that `base` and `deltas`
/// reference: the state sizes of the checkpoint they form.
fn state_sizes<'a>(
    states: &'a [StateDescriptor],
    base: &Base,
    deltas: &[Delta],
) -> Vec<(&'a str, u64)> {
    let mut sizes: Vec<(&str, u64)> = states.iter().map(|d| (d.name.as_str(), 0)).collect();
    for f in base
        .files
        .iter()
        .chain(deltas.iter().flat_map(|d| &d.files))
    {
        let state = f.cf.strip_prefix(CF_PREFIX).unwrap_or(&f.cf);
        if let Some((_, bytes)) = sizes.iter_mut().find(|(name, _)| *name == state) {
            *bytes += f.meta.size;
        }
    }
    sizes
}

fn upload_job(inc: &Incremental, local: &std::path::Path, meta: &Arc<FileMeta>) -> UploadJob {
    UploadJob {
        local: local.to_path_buf(),
        meta: meta.clone(),
        path: inc.shared_path(meta.number),
    }
}

impl SnapshotTask for LsmSnapshotTask {
    fn run(self: Box<Self>) -> Result<SnapshotHandle> {
        // The write-back cache's batch goes into the store first (unless the operator thread
        // already put it there); the freeze after it fixes the checkpoint's sequence.
        let mut task = self;
        if let Some((pending, batch)) = &task.frozen {
            task.sequence = pending.apply(&task.db, batch)?;
        }
        let incremental = task.incremental.clone();
        let mut inc = incremental.lock();
        let result = task.run_locked(&mut inc);
        if result.is_err() {
            // Whatever this run uploaded may exist under its names: later uploads use new ones.
            inc.retry += 1;
        }
        result
    }
}

/// What a checkpoint run plans before it uploads: the files to upload (by local number) and
/// what they add up to.
struct Planned {
    uploads: BTreeMap<u64, UploadJob>,
    stats: CheckpointStats,
}

impl Planned {
    /// Plans the upload of file `meta` (at `local`) unless it is in storage or planned already;
    /// returns whether it was added.
    fn add(&mut self, inc: &Incremental, local: &std::path::Path, meta: &Arc<FileMeta>) -> bool {
        let number = meta.number;
        if inc.uploaded.contains_key(&number) || self.uploads.contains_key(&number) {
            return false;
        }
        self.stats.uploaded_files += 1;
        self.stats.uploaded_bytes += meta.size;
        self.uploads.insert(number, upload_job(inc, local, meta));
        true
    }
}

/// The in-memory state a published checkpoint leaves for the next one.
struct Published {
    listed: HashMap<u64, UploadedFile>,
    deltas: Vec<Delta>,
    base: Base,
    target: Option<Target>,
    credit: u64,
}

impl LsmSnapshotTask {
    /// The checkpoint, with the backend's incremental state locked: plans the deltas and
    /// materialization uploads, uploads them, switches the base when the target is whole,
    /// publishes `_metadata`, then commits the new state and applies retention.
    fn run_locked(&self, inc: &mut Incremental) -> Result<SnapshotHandle> {
        let id = self.checkpoint_id;
        let floor = self.prepare(inc)?;
        let mut planned = Planned {
            uploads: BTreeMap::new(),
            stats: CheckpointStats {
                checkpoint_id: id,
                ..CheckpointStats::default()
            },
        };
        // 1. Deltas: every captured flush in (floor, sequence].
        let mut deltas = self.collect_deltas(inc, floor, &mut planned);
        // 2. A new target when the deltas outgrew the base.
        let mut target = self.choose_target(inc, &deltas);
        // 3. Materialize within the budget.
        let mut credit = self.plan_materialization(inc, target.as_ref(), &mut planned);
        let Planned { uploads, mut stats } = planned;
        // Every planned file is uploaded (size and crc32 checked) before anything below uses
        // it; a failed upload fails this checkpoint only (nothing in `inc` has changed).
        let new_uploads = upload_all(
            self.options.fs.as_ref(),
            self.storage.as_ref(),
            uploads.into_values().collect(),
        )?;

        // Local recovery: copies of this checkpoint's new files, linked while they are pinned.
        self.keep_local_copies(&new_uploads);

        // 4. Switch the base once the target is whole and not newer than this checkpoint.
        let base = self.switch_base(inc, &new_uploads, &mut deltas, &mut target, &mut stats);
        if target.is_none() {
            // Credit is earned only while a target waits: no burst from idle rounds.
            credit = 0;
        }
        let Some(base) = base else {
            return Err(Error::checkpoint_failed(
                id,
                "the first full upload after a restore did not complete",
            ));
        };

        // 5. The checkpoint: base + deltas (+ staged target files, so they stay referenced).
        let (metadata, listed) =
            self.describe(inc, &new_uploads, &base, &deltas, target.as_ref())?;
        stats.referenced_bytes = metadata.files.iter().map(|f| f.file.size).sum();
        stats.delta_files = deltas.iter().map(|d| d.files.len()).sum();
        let state_sizes = state_sizes(&self.states, &base, &deltas);
        self.storage.publish_metadata(id, &metadata.encode()?)?;
        let handle = snapshot_handle(self.storage.as_ref(), &metadata);
        self.delete_unlisted(&new_uploads, &listed);
        let published = Published {
            listed,
            deltas,
            base,
            target,
            credit,
        };
        self.commit(inc, metadata, published)?;
        self.report(&stats, state_sizes);
        inc.last_stats = Some(stats);
        self.prune_local_copies();
        Ok(handle)
    }

    /// Checks that this task may still run (its store was not restored since, its checkpoint id
    /// is unused), takes the flush outputs made so far, starts a full upload when there is
    /// neither base nor target, and returns the floor: the sequence of the base (or of the
    /// pending full upload), above which flushes are deltas.
    fn prepare(&self, inc: &mut Incremental) -> Result<u64> {
        let id = self.checkpoint_id;
        if inc.epoch != self.epoch {
            return Err(Error::checkpoint_failed(
                id,
                "it was started before the backend was restored; it cannot complete",
            ));
        }
        if self.storage.exists(&metadata_path(id))? {
            return Err(Error::checkpoint_failed(
                id,
                format!(
                    "it is already completed in {}; checkpoint ids must not be reused",
                    self.storage.location()
                ),
            ));
        }
        self.db.wait_for_flushes()?;
        inc.pending.extend(self.db.take_flushed());
        if inc.base.is_none() && inc.target.is_none() {
            inc.target = Some(Target {
                live: self.db.live_files(),
            });
        }
        let floor = match (&inc.base, &inc.target) {
            (Some(b), _) => b.sequence,
            (None, Some(t)) => t.live.sequence,
            (None, None) => 0,
        };
        if inc.base.is_none() && floor > self.sequence {
            return Err(Error::checkpoint_failed(
                id,
                "the store moved past its sequence before the first full upload; take the next \
                 checkpoint",
            ));
        }
        Ok(floor)
    }

    /// The published deltas plus one per captured flush in (`floor`, sequence], whose files not
    /// yet in storage are planned for upload.
    fn collect_deltas(&self, inc: &Incremental, floor: u64, planned: &mut Planned) -> Vec<Delta> {
        let mut deltas = inc.deltas.clone();
        for out in inc
            .pending
            .iter()
            .filter(|o| o.last_sequence > floor && o.last_sequence <= self.sequence)
        {
            let mut files = Vec::new();
            for f in out.files.iter().filter(|f| f.cf.starts_with(CF_PREFIX)) {
                if planned.add(inc, &f.path, &f.meta) {
                    planned.stats.delta_bytes += f.meta.size;
                }
                files.push(CkptFile {
                    cf: f.cf.clone(),
                    level: 0,
                    meta: f.meta.clone(),
                });
            }
            let tombstones = out
                .tombstones
                .iter()
                .filter(|(cf, _)| cf.starts_with(CF_PREFIX))
                .cloned()
                .collect();
            deltas.push(Delta {
                sequence: out.last_sequence,
                files,
                tombstones,
            });
        }
        deltas
    }

    /// The pending target (taken out of `inc`), or a new one of the current version when the
    /// deltas outgrew `delta_ratio` × the base's bytes or a column family has too many.
    fn choose_target(&self, inc: &mut Incremental, deltas: &[Delta]) -> Option<Target> {
        let base_bytes: u64 = inc
            .base
            .as_ref()
            .map_or(0, |b| b.files.iter().map(|f| f.meta.size).sum());
        let delta_bytes: u64 = deltas
            .iter()
            .flat_map(|d| &d.files)
            .map(|f| f.meta.size)
            .sum();
        // A flush may write several files per column family (cut at key groups); it counts once.
        let mut per_cf: BTreeMap<&str, usize> = BTreeMap::new();
        for d in deltas {
            let cfs: std::collections::BTreeSet<&str> =
                d.files.iter().map(|f| f.cf.as_str()).collect();
            for cf in cfs {
                *per_cf.entry(cf).or_insert(0) += 1;
            }
        }
        let too_many = per_cf
            .values()
            .any(|&n| n > self.options.max_delta_files_per_cf);
        let mut target = inc.target.take();
        if target.is_none()
            && (delta_bytes as f64 > self.options.delta_ratio * base_bytes as f64 || too_many)
        {
            target = Some(Target {
                live: self.db.live_files(),
            });
        }
        target
    }

    /// Plans uploads of `target`'s files within the credit (all of them for a first full
    /// upload), deep levels first; returns the credit left.
    fn plan_materialization(
        &self,
        inc: &Incremental,
        target: Option<&Target>,
        planned: &mut Planned,
    ) -> u64 {
        let mut credit = inc.credit;
        let Some(t) = target else {
            return credit;
        };
        let full = inc.base.is_none();
        let budget = planned
            .stats
            .delta_bytes
            .max(self.options.min_materialization_bytes)
            .max(1);
        let cap = budget.saturating_mul(CREDIT_CAP);
        credit = credit.saturating_add(budget).min(cap);
        let mut files = t
            .live
            .files
            .iter()
            .filter(|f| f.cf.starts_with(CF_PREFIX))
            .collect::<Vec<_>>();
        // Deep levels first: they change least, so their uploads are least likely wasted.
        files.sort_by(|a, b| {
            b.level
                .cmp(&a.level)
                .then(a.meta.number.cmp(&b.meta.number))
        });
        for f in files {
            let number = f.meta.number;
            if inc.uploaded.contains_key(&number) || planned.uploads.contains_key(&number) {
                continue;
            }
            if !full && f.meta.size > credit && credit < cap {
                continue;
            }
            credit = credit.saturating_sub(f.meta.size);
            planned.add(inc, &f.path, &f.meta);
            planned.stats.materialized_bytes += f.meta.size;
        }
        credit
    }

    /// The base of this checkpoint: the target's version, once every file of it is uploaded
    /// and it is not newer than this checkpoint (the target is then cleared and the deltas it
    /// contains dropped), else the current base.
    fn switch_base(
        &self,
        inc: &Incremental,
        new_uploads: &HashMap<u64, UploadedFile>,
        deltas: &mut Vec<Delta>,
        target: &mut Option<Target>,
        stats: &mut CheckpointStats,
    ) -> Option<Base> {
        let is_up = |n: &u64| inc.uploaded.contains_key(n) || new_uploads.contains_key(n);
        if let Some(t) = target.as_ref()
            && t.live.sequence <= self.sequence
            && t.files().iter().all(|f| is_up(&f.meta.number))
        {
            let new_base = t.as_base();
            deltas.retain(|d| d.sequence > new_base.sequence);
            *target = None;
            stats.base_switched = true;
            return Some(new_base);
        }
        inc.base.clone()
    }

    /// Deletes the files of `new_uploads` that the published checkpoint does not list.
    fn delete_unlisted(
        &self,
        new_uploads: &HashMap<u64, UploadedFile>,
        listed: &HashMap<u64, UploadedFile>,
    ) {
        // A delta uploaded by this checkpoint and dropped by its base switch (compacted into
        // the new base) is referenced by no checkpoint: delete it now rather than leave an
        // orphan until the next start-up scan. Best effort, for the same reason.
        for (number, up) in new_uploads {
            if !listed.contains_key(number) {
                let _ = self.storage.delete(&up.path);
            }
        }
    }

    /// Adds the published checkpoint to the registry, commits `published` to `inc`, then
    /// applies retention (whose failure fails the checkpoint, after the commit).
    fn commit(
        &self,
        inc: &mut Incremental,
        metadata: CheckpointMetadata,
        published: Published,
    ) -> Result<()> {
        let Published {
            listed,
            deltas,
            base,
            target,
            credit,
        } = published;
        let mut registry = self.registry.lock();
        registry.add_completed(metadata);
        // Published and counted: commit before retention, so that a retention failure
        // (which fails this checkpoint) leaves the uploaded files known and a later
        // checkpoint lists them again instead of uploading them once more.
        let retention = retention::apply(&mut registry, self.retained);
        // Published: commit. A file the registry no longer counts (checkpoint ids out of
        // order let retention discard this very checkpoint) forces a full upload next time.
        let lost = listed
            .values()
            .any(|f| registry.shared_references(&f.path) == 0);
        inc.uploaded = listed;
        inc.deltas = deltas;
        inc.base = Some(base);
        inc.target = target;
        inc.credit = credit;
        let sequence = self.sequence;
        inc.pending.retain(|o| o.last_sequence > sequence);
        if lost {
            inc.uploaded
                .retain(|_, f| registry.shared_references(&f.path) > 0);
            inc.base = None;
            inc.deltas.clear();
            inc.target = None;
        }
        retention?;
        Ok(())
    }

    /// Logs the checkpoint's upload statistics and records the state sizes it references.
    fn report(&self, stats: &CheckpointStats, state_sizes: Vec<(&str, u64)>) {
        tracing::debug!(
            checkpoint_id = self.checkpoint_id,
            uploaded_files = stats.uploaded_files,
            uploaded_bytes = stats.uploaded_bytes,
            delta_bytes = stats.delta_bytes,
            materialized_bytes = stats.materialized_bytes,
            referenced_bytes = stats.referenced_bytes,
            base_switched = stats.base_switched,
            "lsm incremental checkpoint written"
        );
        let range = (self.key_group_range.first(), self.key_group_range.last());
        for (state, bytes) in state_sizes {
            crate::observe::state_size(state, range, bytes);
        }
    }

    /// Links the local SSTs of `new_uploads` into the local-recovery directory, if configured.
    /// A copy that cannot be made is only a missed shortcut: restore downloads that file.
    fn keep_local_copies(&self, new_uploads: &HashMap<u64, UploadedFile>) {
        let Some(base) = &self.options.local_recovery_dir else {
            return;
        };
        let location = self.storage.location();
        let copies = LocalCopies::new(&self.options.fs, base, &location);
        for (number, up) in new_uploads {
            let local = self.db.path().join(sst_file_name(*number));
            // Errors are ignored on purpose: the checkpoint itself is complete without copies.
            let _ = copies.keep(&location, &up.path, &local);
        }
    }

    /// Drops local copies no retained checkpoint lists any more.
    fn prune_local_copies(&self) {
        let Some(base) = &self.options.local_recovery_dir else {
            return;
        };
        let copies = LocalCopies::new(&self.options.fs, base, &self.storage.location());
        let registry = self.registry.lock();
        let _ = copies.prune(SHARED_DIR, |path| registry.shared_references(path) > 0);
    }

    /// The `_metadata` of the checkpoint and the files it lists by local number.
    fn describe(
        &self,
        inc: &Incremental,
        new_uploads: &HashMap<u64, UploadedFile>,
        base: &Base,
        deltas: &[Delta],
        target: Option<&Target>,
    ) -> Result<(CheckpointMetadata, HashMap<u64, UploadedFile>)> {
        let column_families: Vec<(String, String)> = self
            .states
            .iter()
            .map(|d| (d.name.clone(), super::cf_name(&d.name)))
            .collect();
        let mut list = FileList {
            uploaded: &inc.uploaded,
            new_uploads,
            fallback: self.key_group_range,
            files: Vec::new(),
            listed: HashMap::new(),
            index_of: HashMap::new(),
        };
        let mut layout = CheckpointLayout {
            sequence: self.sequence,
            base_sequence: base.sequence,
            instance_id: inc.store_id,
            column_families: column_families.clone(),
            ..CheckpointLayout::default()
        };
        let roles = base.files.iter().map(|f| (FileRole::Base, f)).chain(
            deltas
                .iter()
                .flat_map(|d| d.files.iter().map(|f| (FileRole::Delta, f))),
        );
        for (role, f) in roles {
            layout.files.push(LayoutFile {
                cf: cf_index(&column_families, &f.cf)?,
                role,
                level: if role == FileRole::Base { f.level } else { 0 },
                file_index: list.list(&f.meta)?,
                meta: (*f.meta).clone(),
            });
        }
        let tombstones = base
            .tombstones
            .iter()
            .chain(deltas.iter().flat_map(|d| d.tombstones.iter()));
        for (cf, t) in tombstones {
            let entry = LayoutTombstone {
                cf: cf_index(&column_families, cf)?,
                tombstone: t.clone(),
            };
            if !layout.tombstones.contains(&entry) {
                layout.tombstones.push(entry);
            }
        }
        if let Some(t) = target {
            for f in t.files() {
                if list.lookup(f.meta.number).is_some() {
                    list.list(&f.meta)?;
                }
            }
        }
        let metadata = CheckpointMetadata {
            checkpoint_id: self.checkpoint_id,
            backend: BackendKind::Lsm,
            max_parallelism: self.max_parallelism,
            key_group_range: self.key_group_range,
            timestamp_ms: self.clock.now_ms(),
            states: self.states.clone(),
            files: list.files,
            extra: layout.encode(),
        };
        Ok((metadata, list.listed))
    }
}

/// The index of column family `cf` in a checkpoint's `column_families`, or an error when no
/// registered state has it.
fn cf_index(column_families: &[(String, String)], cf: &str) -> Result<u32> {
    column_families
        .iter()
        .position(|(_, n)| n == cf)
        .map(|i| i as u32)
        .ok_or_else(|| {
            Error::invalid(format!(
                "column family '{cf}' has data in the checkpoint but no registered state"
            ))
        })
}

/// The file list of a checkpoint's `_metadata` as [`LsmSnapshotTask::describe`] builds it: each
/// file once, in the order first listed.
struct FileList<'a> {
    /// Files the last published checkpoint lists.
    uploaded: &'a HashMap<u64, UploadedFile>,
    /// Files this checkpoint uploaded.
    new_uploads: &'a HashMap<u64, UploadedFile>,
    /// The key groups of a file whose keys name none.
    fallback: KeyGroupRange,
    files: Vec<CheckpointFile>,
    /// The listed files by local number.
    listed: HashMap<u64, UploadedFile>,
    /// Index in `files` by local number.
    index_of: HashMap<u64, u32>,
}

impl FileList<'_> {
    /// The stored file of local file `number`, if it is in storage.
    fn lookup(&self, number: u64) -> Option<UploadedFile> {
        self.uploaded
            .get(&number)
            .or_else(|| self.new_uploads.get(&number))
            .cloned()
    }

    /// Lists file `meta` (once) and returns its index in the list; an error if it was never
    /// uploaded.
    fn list(&mut self, meta: &FileMeta) -> Result<u32> {
        if let Some(i) = self.index_of.get(&meta.number) {
            return Ok(*i);
        }
        let up = self.lookup(meta.number).ok_or_else(|| {
            Error::invalid(format!(
                "file {} of the checkpoint was never uploaded",
                meta.number
            ))
        })?;
        let i = self.files.len() as u32;
        self.files.push(CheckpointFile {
            file: FileRef {
                path: up.path.clone(),
                size: up.size,
                crc32: up.crc32,
                xxh3: up.xxh3,
                key_groups: file_key_groups(meta).unwrap_or(self.fallback),
            },
            shared: true,
        });
        self.listed.insert(meta.number, up);
        self.index_of.insert(meta.number, i);
        Ok(i)
    }
}
