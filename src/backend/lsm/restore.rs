//! Restore of the LSM backend: verify each handle's `_metadata` and layout, bring the SSTs into a
//! fresh store directory (hard link, else copy; size and checksums checked), write a manifest naming
//! them and open the store.
//!
//! Rescaling takes whole files. It relies on invariant I (a checkpoint's files hold keys of its
//! own key-group range only) and on the store never splitting a key group across files
//! (`CompactionOptions::cut_prefix_len`, for flushes and compactions alike): a file lies inside
//! the target key groups (taken as it is), outside them (not fetched), or straddles a boundary
//! of the target. A straddling file is rewritten at restore into a new file holding the entries
//! of the owned key groups only, as they are (`lsm::sst::copy`). The restored store then holds
//! no byte of a key group it does not own, with no range tombstone and no compaction to clip
//! it, so it keeps invariant I too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::checkpoint::{UploadedFile, shared_path};
use super::layout::{CheckpointLayout, FileRole, LayoutFile, file_key_groups};
use super::local_recovery::LocalCopies;
use super::transfer::{check_local, download};
use super::{LsmBackend, cf_name, random_instance_id};
use crate::backend::parallel::run_parallel;
use crate::backend::{
    BackendKind, SnapshotData, SnapshotHandle, StateDescriptor, StateId, check_restore_handles,
    read_handle_metadata,
};
use crate::checkpoint::metadata::CheckpointMetadata;
use crate::checkpoint::storage::{CheckpointStorage, Listed, metadata_path};
use crate::checkpoint::uri::storage_for_root;
use crate::error::{Error, Result};
use crate::fs::{FileSystem, create_dir_durable};
use crate::keys::KeyGroupRange;
use crate::lsm::db::DEFAULT_CF;
use crate::lsm::db::LiveFiles;
use crate::lsm::sst::copy::{CopyRange, copy_range};
use crate::lsm::sst::{SstMetadata, SstOptions};
use crate::lsm::table::sst_file_name;
use crate::lsm::version::{FileMeta, RangeTombstone, VersionEdit};
use crate::lsm::{CfOptions, ColumnFamily, Db, Options};

/// One verified handle.
struct Source {
    storage: Arc<dyn CheckpointStorage>,
    ours: bool,
    metadata: CheckpointMetadata,
    /// The SST layout; `None` for a full checkpoint (full snapshot files, `super::full`).
    layout: Option<CheckpointLayout>,
    /// The handle's key groups that the target owns.
    keep: KeyGroupRange,
    /// Local-recovery copies of the storage's files, when local recovery is on.
    copies: Option<LocalCopies>,
}

fn read_source(
    backend: &LsmBackend,
    handle: &SnapshotHandle,
    keep: KeyGroupRange,
) -> Result<Source> {
    let SnapshotData::Files { root, files } = &handle.data else {
        return Err(Error::invalid(
            "an lsm-backend handle must reference files, found in-memory data",
        ));
    };
    let (storage, ours) = storage_for_root(&backend.storage, root)?;
    let copies = backend
        .options
        .local_recovery_dir
        .as_ref()
        .map(|base| LocalCopies::new(&backend.options.fs, base, &storage.location()));
    let metadata = read_handle_metadata(storage.as_ref(), handle, files)?;
    let meta_path = metadata_path(handle.checkpoint_id);
    if metadata.extra.is_empty() {
        return Ok(Source {
            storage,
            ours,
            metadata,
            layout: None,
            keep,
            copies,
        });
    }
    let label = format!("{meta_path} (LSM layout)");
    let layout = CheckpointLayout::decode(&metadata.extra, &label, 0)?;
    for (state, _) in &layout.column_families {
        if !metadata.states.iter().any(|d| d.name == *state) {
            return Err(Error::corruption(
                &label,
                0,
                format!("layout names state '{state}' that _metadata does not list"),
            ));
        }
    }
    for f in &layout.files {
        let entry = metadata.files.get(f.file_index as usize).ok_or_else(|| {
            Error::corruption(
                &label,
                0,
                format!("file index {} out of range", f.file_index),
            )
        })?;
        if entry.file.size != f.meta.size || entry.file.crc32 != f.meta.crc32 {
            return Err(Error::corruption(
                &label,
                0,
                format!(
                    "file '{}' disagrees with _metadata on size or crc32",
                    entry.file.path
                ),
            ));
        }
    }
    Ok(Source {
        storage,
        ours,
        metadata,
        layout: Some(layout),
        keep,
        copies,
    })
}

/// What a restore brought into the new store, and from where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// The checkpoints restored from (one per handle that overlaps the target range).
    pub checkpoint_ids: Vec<u64>,
    /// SST files placed in the new store.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files taken from local-recovery copies (no download).
    pub local_files: u64,
    /// Bytes taken from local-recovery copies.
    pub local_bytes: u64,
    /// Files hard-linked from checkpoint storage on the local file system (no copy).
    pub linked_files: u64,
    /// Bytes hard-linked from checkpoint storage.
    pub linked_bytes: u64,
    /// Files read from checkpoint storage: SSTs not found locally, and full-checkpoint files.
    pub downloaded_files: u64,
    /// Bytes read from checkpoint storage.
    pub downloaded_bytes: u64,
    /// Restored files from another storage root that this backend's storage took by hard link
    /// or server-side copy ([`CheckpointStorage::copy_from`]), so no checkpoint uploads them.
    pub copied_files: u64,
    /// Their bytes.
    pub copied_bytes: u64,
    /// Fetched files that straddled the target key groups and were rewritten with the entries
    /// of owned key groups only (counted in `files` and `bytes` as fetched).
    pub rewritten_files: u64,
    /// Bytes of the straddling files read to rewrite them.
    pub rewritten_source_bytes: u64,
    /// Bytes of the rewritten files written (the owned part).
    pub rewritten_bytes: u64,
    /// Wall time of the whole restore.
    pub duration: std::time::Duration,
}

/// Where [`fetch`] found a file.
enum Fetched {
    /// A local-recovery copy.
    Copy,
    /// Hard-linked from checkpoint storage on this file system.
    Linked,
    /// Read from checkpoint storage.
    Downloaded,
}

/// One file [`fetch`] brings into the new store: its source, its storage path with the size and
/// crc32 `_metadata` lists, and its number in the new store.
struct FetchJob<'a> {
    source: &'a Source,
    path: &'a str,
    listed: Listed,
    number: u64,
    /// For a file straddling the target key groups: how to rewrite it.
    rewrite: Option<Rewrite>,
}

/// A straddling file's rewrite: the entries of `keep` go to the new file `number` (the fetched
/// file is removed), written with `sst` and stamped `created_ms` like the original, at `level`
/// of column family `cf`.
struct Rewrite {
    keep: KeyGroupRange,
    number: u64,
    sst: SstOptions,
    created_ms: u64,
    cf: u32,
    level: u8,
}

/// What [`fetch`] did with one file: where it came from, and for a rewritten one its
/// replacement (None when no entry of the owned key groups was in it).
struct FetchResult {
    how: Fetched,
    rewritten: Option<Option<FileMeta>>,
}

/// Brings one file into `dir` as `<number>.sst` and checks its size and checksums: from a local
/// copy if one matches, else by hard link from local storage, else by reading it from storage
/// (in chunks of at most `transfer::DOWNLOAD_CHUNK`). Safe to run for several files at once.
fn fetch(fs: &dyn FileSystem, job: &FetchJob<'_>, dir: &Path) -> Result<FetchResult> {
    let how = fetch_file(fs, job, dir)?;
    let Some(rewrite) = &job.rewrite else {
        return Ok(FetchResult {
            how,
            rewritten: None,
        });
    };
    let from = dir.join(sst_file_name(job.number));
    let to = dir.join(sst_file_name(rewrite.number));
    let start = rewrite.keep.start_key();
    let end = rewrite.keep.end_key();
    let copied = copy_range(
        fs,
        &CopyRange {
            from: &from,
            to: &to,
            options: rewrite.sst,
            start: &start,
            end: end.as_ref().map(|k| k.as_slice()),
            created_ms: rewrite.created_ms,
        },
    )
    .map_err(|e| match e {
        Error::InvalidArgument(what) => Error::corruption(job.path, 0, what),
        other => other,
    })?;
    fs.remove_file(&from).map_err(|e| Error::io(&from, e))?;
    Ok(FetchResult {
        how,
        rewritten: Some(copied.map(|sst| file_meta(rewrite.number, sst))),
    })
}

/// The store's metadata of SST `number` just written.
fn file_meta(number: u64, sst: SstMetadata) -> FileMeta {
    let p = sst.properties;
    FileMeta {
        number,
        size: sst.file_size,
        crc32: sst.file_crc32,
        smallest: p.smallest_key,
        largest: p.largest_key,
        smallest_seq: p.smallest_seq,
        largest_seq: p.largest_seq,
        entries: p.entry_count,
        created_ms: p.creation_time_ms,
    }
}

/// Brings one file into `dir` as `<number>.sst` (see [`fetch`]).
fn fetch_file(fs: &dyn FileSystem, job: &FetchJob<'_>, dir: &Path) -> Result<Fetched> {
    let FetchJob {
        source,
        path,
        ref listed,
        number,
        ..
    } = *job;
    let local = dir.join(sst_file_name(number));
    if let Some(copies) = &source.copies
        && let Some(copy) = copies.find(path, listed.size)
        && fs.hard_link(&copy, &local).is_ok()
    {
        if check_local(fs, &local, path, listed).is_ok() {
            return Ok(Fetched::Copy);
        }
        // A stale or damaged copy: drop it and fetch the file from storage.
        fs.remove_file(&local).map_err(|e| Error::io(&local, e))?;
        copies.discard(path)?;
    }
    // A local directory's file is hard-linked (then checked); any other is downloaded.
    let linked = source.storage.local_path(path);
    let fetched = if linked.is_some_and(|p| fs.is_file(&p) && fs.hard_link(&p, &local).is_ok()) {
        check_local(fs, &local, path, listed)?;
        Fetched::Linked
    } else {
        download(fs, source.storage.as_ref(), path, listed, &local)?;
        Fetched::Downloaded
    };
    if source.ours
        && let Some(copies) = &source.copies
    {
        // The next restore on this machine need not download it again.
        let _ = copies.keep(&source.storage.location(), path, &local);
    }
    Ok(fetched)
}

/// Fetches every job into `dir` (rewriting the straddling files), up to the largest
/// `upload_parallelism` of the storages involved at once, counts where the files came from, and
/// returns the rewritten files that hold entries: (column family, level, metadata).
fn fetch_all(
    fs: &dyn FileSystem,
    jobs: &[FetchJob<'_>],
    dir: &Path,
    stats: &mut RestoreStats,
) -> Result<Vec<(u32, u8, FileMeta)>> {
    let workers = jobs
        .iter()
        .map(|job| job.source.storage.upload_parallelism())
        .max()
        .unwrap_or(1);
    let fetched = run_parallel(jobs, workers, |job| fetch(fs, job, dir))?;
    let mut rewritten = Vec::new();
    for (
        job,
        FetchResult {
            how,
            rewritten: new,
        },
    ) in jobs.iter().zip(fetched)
    {
        if let (Some(rewrite), Some(new)) = (&job.rewrite, new) {
            stats.rewritten_files += 1;
            stats.rewritten_source_bytes += job.listed.size;
            if let Some(meta) = new {
                stats.rewritten_bytes += meta.size;
                rewritten.push((rewrite.cf, rewrite.level, meta));
            }
        }
        stats.files += 1;
        stats.bytes += job.listed.size;
        let (files, bytes) = match how {
            Fetched::Copy => (&mut stats.local_files, &mut stats.local_bytes),
            Fetched::Linked => (&mut stats.linked_files, &mut stats.linked_bytes),
            Fetched::Downloaded => (&mut stats.downloaded_files, &mut stats.downloaded_bytes),
        };
        *files += 1;
        *bytes += job.listed.size;
    }
    Ok(rewritten)
}

/// `[start, end)` of a tombstone clipped to the keys of `range`; None when nothing is left.
fn clip(t: &RangeTombstone, range: &KeyGroupRange, limit: &[u8]) -> Option<RangeTombstone> {
    let lower = range.start_key().to_vec();
    let upper = range
        .end_key()
        .map_or_else(|| limit.to_vec(), |k| k.to_vec());
    let start = t.start.clone().max(lower);
    let end = t.end.clone().min(upper);
    (start < end).then_some(RangeTombstone {
        start,
        end,
        sequence: t.sequence,
    })
}

/// Restores `handles` into `backend` for key groups `target`: verifies every handle that meets
/// `target`, brings its files into a new store directory (rewriting those that straddle
/// `target`'s boundaries), opens the store, and only then swaps it in for the current one. A failure before the swap leaves the backend as it was.
pub(super) fn restore(
    backend: &mut LsmBackend,
    handles: &[SnapshotHandle],
    target: KeyGroupRange,
) -> Result<()> {
    let started = std::time::Instant::now();
    let _span =
        tracing::info_span!("restore", backend = "lsm", handles = handles.len(), %target).entered();
    let max_parallelism = backend.config.max_parallelism;
    check_restore_handles(BackendKind::Lsm, max_parallelism, handles, target)?;
    let states = restored_states(backend, handles)?;
    let mut sources = Vec::new();
    for handle in handles {
        if let Some(keep) = handle.key_group_range.intersect(&target) {
            sources.push(read_source(backend, handle, keep)?);
        }
    }
    // Every valid composite key sorts below this one (key group max_parallelism).
    let limit = KeyGroupRange::all(max_parallelism)
        .end_key()
        .map_or_else(|| vec![0xff; 3], |k| k.to_vec());
    let db_options = backend.db_options(&states);

    let store_id = random_instance_id();
    let dir = new_store_dir(backend, store_id)?;
    let fs = std::sync::Arc::clone(&backend.options.fs);
    let mut stats = RestoreStats {
        checkpoint_ids: sources.iter().map(|s| s.metadata.checkpoint_id).collect(),
        ..RestoreStats::default()
    };
    count_full_downloads(&sources, &mut stats);
    let built = build_store(
        fs.as_ref(),
        &sources,
        &states,
        &db_options,
        target,
        &limit,
        &dir,
        &mut stats,
    );
    let Built {
        edit,
        mut uploaded,
        fetched,
    } = match built {
        Ok(ok) => ok,
        Err(e) => {
            let _ = fs.remove_dir_all(&dir);
            return Err(e);
        }
    };
    let db = match open_restored(&dir, &sources, &states, &edit, db_options) {
        Ok(db) => db,
        Err(e) => {
            let _ = fs.remove_dir_all(&dir);
            return Err(e);
        }
    };
    // Committed: swap the store in.
    db.capture_flushes();
    let (new_states, by_name) = state_column_families(&db, states)?;
    // Nothing below fails: copies made now are never left unreferenced by a failed restore.
    let live = db.live_files();
    let local_copies = backend
        .options
        .local_recovery_dir
        .as_ref()
        .map(|base| LocalCopies::new(&backend.options.fs, base, &backend.storage.location()));
    uploaded.extend(copy_into_own(
        backend.storage.as_ref(),
        local_copies.as_ref(),
        &fetched,
        &live,
        store_id,
        &mut stats,
    ));
    swap_store(backend, db, dir)?;
    backend.states = new_states;
    backend.by_name = by_name;
    backend.config.key_group_range = target;
    {
        let mut incremental = backend.incremental.lock();
        incremental.reset(store_id, live, uploaded);
        backend.epoch = incremental.epoch;
    }
    stats.duration = started.elapsed();
    report_restore(&stats);
    backend.last_restore = Some(Box::new(stats));
    Ok(())
}

/// The states of the restored store: registered ones keep their ids, then those only the handles
/// have; every handle's descriptor of a state must agree with the registered one and the other
/// handles'.
fn restored_states(
    backend: &LsmBackend,
    handles: &[SnapshotHandle],
) -> Result<Vec<StateDescriptor>> {
    let mut states: Vec<StateDescriptor> = backend.states.iter().map(|(d, _)| d.clone()).collect();
    for handle in handles {
        for d in &handle.states {
            match states.iter().find(|s| s.name == d.name) {
                Some(existing) => existing.check_compatible(d)?,
                None => states.push(d.clone()),
            }
        }
    }
    Ok(states)
}

/// A new, empty, durable directory for store `store_id` in the backend's working directory
/// (whatever an earlier run left under its name is removed first).
fn new_store_dir(backend: &mut LsmBackend, store_id: u64) -> Result<PathBuf> {
    backend.stores_opened += 1;
    let dir: PathBuf = backend
        .options
        .working_dir
        .join(format!("db-{store_id:016x}-{}", backend.stores_opened));
    let fs = backend.options.fs.as_ref();
    fs.remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    create_dir_durable(fs, &dir)?;
    Ok(dir)
}

/// Counts the files of the full checkpoints among `sources` as downloaded: they are read from
/// storage whole.
fn count_full_downloads(sources: &[Source], stats: &mut RestoreStats) {
    for source in sources.iter().filter(|s| s.layout.is_none()) {
        // A full checkpoint is read from storage whole (`super::full::load`).
        stats.downloaded_files += source.metadata.files.len() as u64;
        stats.downloaded_bytes += source
            .metadata
            .files
            .iter()
            .map(|f| f.file.size)
            .sum::<u64>();
    }
}

/// Opens the store fetched into `dir`: writes a manifest holding the version of `edit`, opens
/// it, loads the full checkpoints among `sources` and runs the TTL filter over every TTL state.
fn open_restored(
    dir: &Path,
    sources: &[Source],
    states: &[StateDescriptor],
    edit: &VersionEdit,
    options: Options,
) -> Result<Db> {
    let db = Db::open_from_files(dir, edit, "restored layout", options)?;
    for source in sources.iter().filter(|s| s.layout.is_none()) {
        super::full::load(&db, source.storage.as_ref(), &source.metadata, source.keep)?;
    }
    // Like a full snapshot, a restore leaves out what expired: the TTL filter runs over
    // every TTL state once (the only restore step whose cost grows with the data).
    for d in states.iter().filter(|d| d.ttl.is_some()) {
        if let Some(cf) = db.cf(&cf_name(&d.name)) {
            db.compact_range(&cf, None, None)?;
        }
    }
    Ok(db)
}

/// Each state with its column family, in state-id order (`LsmBackend::states`).
type StateColumnFamilies = Vec<(StateDescriptor, ColumnFamily)>;

/// The restored store's column family of each state, and the state ids by name.
fn state_column_families(
    db: &Db,
    states: Vec<StateDescriptor>,
) -> Result<(StateColumnFamilies, HashMap<String, StateId>)> {
    let mut new_states = Vec::with_capacity(states.len());
    let mut by_name = HashMap::new();
    for (i, d) in states.into_iter().enumerate() {
        let cf = db
            .cf(&cf_name(&d.name))
            .ok_or_else(|| Error::not_found(format!("restored store lacks state '{}'", d.name)))?;
        by_name.insert(d.name.clone(), StateId(i as u32));
        new_states.push((d, cf));
    }
    Ok((new_states, by_name))
}

/// Makes `db` in `dir` the backend's store. The old store is closed and its directory removed
/// now if nothing else holds it, else retired: removed by the first restore or snapshot after
/// its last holder let it go (and by the next [`LsmBackend::open`] on the working directory if
/// the process ends first).
fn swap_store(backend: &mut LsmBackend, db: Db, dir: PathBuf) -> Result<()> {
    let old = std::mem::replace(&mut backend.db, Arc::new(db));
    let old_dir = std::mem::replace(&mut backend.db_dir, dir);
    backend.retired.push((Arc::downgrade(&old), old_dir));
    let closed = if Arc::strong_count(&old) == 1 {
        old.close()
    } else {
        Ok(())
    };
    drop(old);
    remove_retired_stores(backend);
    closed
}

/// Removes the directory of every retired store nobody holds any more; a directory that cannot
/// be removed is logged and tried again next time.
pub(super) fn remove_retired_stores(backend: &mut LsmBackend) {
    let fs = backend.options.fs.clone();
    backend.retired.retain(|(store, dir)| {
        if store.strong_count() > 0 {
            return true;
        }
        match fs.remove_dir_all(dir) {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a replaced store");
                true
            }
        }
    });
}

/// Logs a finished restore and records its metrics.
fn report_restore(stats: &RestoreStats) {
    tracing::info!(
        bytes = stats.bytes,
        downloaded = stats.downloaded_bytes,
        local_recovery = stats.local_bytes,
        linked = stats.linked_bytes,
        copied = stats.copied_bytes,
        duration = ?stats.duration,
        "lsm restore finished"
    );
    crate::observe::restore_finished("lsm", stats.duration, stats.downloaded_bytes);
    crate::observe::restore_copied("lsm", stats.copied_bytes);
}

/// What [`build_store`] made: the version edit naming the fetched files, the files this
/// storage already holds (by new local number), and every file fetched and where from.
struct Built<'a> {
    edit: VersionEdit,
    uploaded: HashMap<u64, UploadedFile>,
    fetched: Vec<FetchJob<'a>>,
}

/// Gives this backend's storage, under the names its checkpoints will use, every file of the
/// restored store `live` that came from another storage and that the storage can take without
/// a transfer ([`CheckpointStorage::copy_from`]: a hard link, a server-side copy). Those files
/// count as uploaded, so the first checkpoint after a restart from another task root uploads
/// only what changed since. With local recovery on, each copied file also gets its local copy,
/// as an uploaded one does. A copy that fails is left to that checkpoint (logged, not fatal).
fn copy_into_own(
    own: &dyn CheckpointStorage,
    local_copies: Option<&LocalCopies>,
    fetched: &[FetchJob<'_>],
    live: &LiveFiles,
    store_id: u64,
    stats: &mut RestoreStats,
) -> HashMap<u64, UploadedFile> {
    let origins: HashMap<u64, &FetchJob<'_>> = fetched
        .iter()
        .filter(|job| !job.source.ours)
        .map(|job| (job.number, job))
        .collect();
    let jobs: Vec<(&Path, &FetchJob<'_>)> = live
        .files
        .iter()
        .filter_map(|f| Some((f.path.as_path(), *origins.get(&f.meta.number)?)))
        .collect();
    let location = own.location();
    // The files of one source in `parallelism` groups, each copied by one call, so a local
    // directory fsyncs once per group and directory rather than once per file.
    let parallelism = own.upload_parallelism().max(1);
    let mut by_source: Vec<Vec<(&Path, &FetchJob<'_>)>> = Vec::new();
    for job in jobs {
        match by_source
            .iter_mut()
            .find(|g| std::ptr::eq(g[0].1.source, job.1.source))
        {
            Some(group) => group.push(job),
            None => by_source.push(vec![job]),
        }
    }
    let groups: Vec<&[(&Path, &FetchJob<'_>)]> = by_source
        .iter()
        .flat_map(|files| files.chunks(files.len().div_ceil(parallelism)))
        .collect();
    let copied = run_parallel(&groups, parallelism, |group| {
        let paths: Vec<String> = group
            .iter()
            .map(|(_, origin)| shared_path(store_id, origin.number))
            .collect();
        let pairs: Vec<(&str, &str)> = group
            .iter()
            .zip(&paths)
            .map(|((_, origin), path)| (origin.path, path.as_str()))
            .collect();
        let source = group[0].1.source.storage.as_ref();
        match own.copy_many_from(source, &pairs) {
            Ok(done) => Ok(group
                .iter()
                .zip(paths)
                .zip(done)
                .filter(|(_, done)| *done)
                .map(|((&(local, origin), path), _)| {
                    if let Some(copies) = local_copies {
                        // Only a missed shortcut if it fails: a later restore downloads it.
                        let _ = copies.keep(&location, &path, local);
                    }
                    (origin, path)
                })
                .collect::<Vec<_>>()),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    files = group.len(),
                    "copy into this backend's storage failed; a checkpoint uploads the files"
                );
                Ok(Vec::new())
            }
        }
    });
    let mut uploaded = HashMap::new();
    for (origin, path) in copied.unwrap_or_default().into_iter().flatten() {
        stats.copied_files += 1;
        stats.copied_bytes += origin.listed.size;
        uploaded.insert(
            origin.number,
            UploadedFile {
                path,
                size: origin.listed.size,
                crc32: origin.listed.crc32,
                xxh3: origin.listed.xxh3,
            },
        );
    }
    uploaded
}

/// Fetches the files of every source into `dir`, rewriting those that straddle `target`, and
/// returns the version edit that names them and the files this storage already holds (by new
/// local number).
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, each argument distinct"
)]
fn build_store<'a>(
    fs: &dyn FileSystem,
    sources: &'a [Source],
    states: &[StateDescriptor],
    options: &Options,
    target: KeyGroupRange,
    limit: &[u8],
    dir: &Path,
    stats: &mut RestoreStats,
) -> Result<Built<'a>> {
    let mut builder = StoreBuilder::new(states, options);
    for source in sources {
        builder.add_source(source, target, limit)?;
    }
    let rewritten = fetch_all(fs, &builder.fetches, dir, stats)?;
    builder.edit.new_files.extend(rewritten);
    let StoreBuilder {
        mut edit,
        uploaded,
        fetches,
        number,
        max_sequence,
        ..
    } = builder;
    edit.last_sequence = Some(max_sequence);
    edit.next_file_number = Some(number + 1);
    Ok(Built {
        edit,
        uploaded,
        fetched: fetches,
    })
}

/// The restored store as [`build_store`] assembles it from the sources' layouts.
struct StoreBuilder<'a> {
    /// Names the column families, files and tombstones of the new store.
    edit: VersionEdit,
    /// Column family id by state name.
    cf_ids: HashMap<String, u32>,
    /// Options of each column family by id (a rewritten file is written with its level's).
    cf_options: HashMap<u32, CfOptions>,
    /// Files this storage already holds, by new local number.
    uploaded: HashMap<u64, UploadedFile>,
    /// Every file to fetch.
    fetches: Vec<FetchJob<'a>>,
    /// The last file number handed out.
    number: u64,
    /// The highest sequence of anything restored.
    max_sequence: u64,
}

impl<'a> StoreBuilder<'a> {
    /// An empty store with the default column family and one per state, in state order, whose
    /// files are written with `options`.
    fn new(states: &[StateDescriptor], options: &Options) -> Self {
        let mut edit = VersionEdit {
            cf_added: vec![(0, DEFAULT_CF.to_string())],
            ..VersionEdit::default()
        };
        let mut cf_ids: HashMap<String, u32> = HashMap::new();
        let mut cf_options = HashMap::new();
        for (i, d) in states.iter().enumerate() {
            let id = i as u32 + 1;
            let name = cf_name(&d.name);
            cf_options.insert(id, options.cf(&name));
            edit.cf_added.push((id, name));
            cf_ids.insert(d.name.clone(), id);
        }
        edit.next_cf_id = Some(states.len() as u32 + 1);
        StoreBuilder {
            edit,
            cf_ids,
            cf_options,
            uploaded: HashMap::new(),
            fetches: Vec::new(),
            number: 0,
            max_sequence: 0,
        }
    }

    /// The new store's column family id of `layout`'s column family `index`.
    fn cf_of(&self, layout: &CheckpointLayout, label: &str, index: u32) -> Result<u32> {
        let (state, _) = layout
            .column_families
            .get(index as usize)
            .ok_or_else(|| Error::corruption(label, 0, "column family index out of range"))?;
        self.cf_ids
            .get(state)
            .copied()
            .ok_or_else(|| Error::not_found(format!("state '{state}' is not registered")))
    }

    /// Adds the files of `source`'s layout that hold key groups it keeps, and its tombstones
    /// clipped to those key groups. A full checkpoint adds nothing: it is loaded into the
    /// opened store (`super::full`).
    fn add_source(
        &mut self,
        source: &'a Source,
        target: KeyGroupRange,
        limit: &[u8],
    ) -> Result<()> {
        let label = metadata_path(source.metadata.checkpoint_id);
        let Some(layout) = &source.layout else {
            return Ok(()); // A full checkpoint: loaded into the opened store (`super::full`).
        };
        self.max_sequence = self.max_sequence.max(layout.sequence);
        for f in &layout.files {
            self.add_file(source, layout, &label, f, target)?;
        }
        // A tombstone deletes only keys of its own handle: the same sequence number may mean
        // different moments in different handles.
        for t in &layout.tombstones {
            self.max_sequence = self.max_sequence.max(t.tombstone.sequence);
            if let Some(clipped) = clip(&t.tombstone, &source.keep, limit) {
                let cf = self.cf_of(layout, &label, t.cf)?;
                self.edit.tombstones_added.push((cf, clipped));
            }
        }
        Ok(())
    }

    /// Adds file `f` of `source`'s `layout` under the next file number, to be fetched, unless
    /// it holds none of the key groups the source keeps. A file that also holds other key
    /// groups is fetched under a number of its own and rewritten under the next (its entries
    /// of kept key groups only); it enters the version after the rewrite.
    fn add_file(
        &mut self,
        source: &'a Source,
        layout: &CheckpointLayout,
        label: &str,
        f: &LayoutFile,
        target: KeyGroupRange,
    ) -> Result<()> {
        let groups = file_key_groups(&f.meta).ok_or_else(|| {
            Error::corruption(
                label,
                0,
                format!("file {} has keys without a key group", f.meta.number),
            )
        })?;
        if groups.intersect(&source.keep).is_none() {
            return Ok(()); // Wholly outside the key groups this backend now owns.
        }
        // `keep` lies within `target`; by invariant I the file holds no key group of the
        // handle's outside `keep` that `target` owns.
        let straddles = groups.intersect(&target) != Some(groups);
        let entry = source
            .metadata
            .files
            .get(f.file_index as usize)
            .ok_or_else(|| Error::corruption(label, 0, "file index out of range"))?;
        self.number += 1;
        let number = self.number;
        self.max_sequence = self.max_sequence.max(f.meta.largest_seq);
        let level = if f.role == FileRole::Delta {
            0
        } else {
            f.level
        };
        let cf = self.cf_of(layout, label, f.cf)?;
        let rewrite = if straddles {
            self.number += 1;
            let sst = self
                .cf_options
                .get(&cf)
                .map(|o| o.sst_for_level(usize::from(level)))
                .unwrap_or_default();
            Some(Rewrite {
                keep: source.keep,
                number: self.number,
                sst,
                created_ms: f.meta.created_ms,
                cf,
                level,
            })
        } else {
            None
        };
        // The layout's size and crc32 agree with `_metadata`'s (checked at read); the
        // xxh3 is `_metadata`'s.
        self.fetches.push(FetchJob {
            source,
            path: &entry.file.path,
            listed: Listed::of(&entry.file),
            number,
            rewrite,
        });
        if straddles {
            return Ok(()); // Added once rewritten; the new file is no upload of any storage.
        }
        if source.ours {
            self.uploaded.insert(
                number,
                UploadedFile {
                    path: entry.file.path.clone(),
                    size: entry.file.size,
                    crc32: entry.file.crc32,
                    xxh3: entry.file.xxh3,
                },
            );
        }
        let mut meta = f.meta.clone();
        meta.number = number;
        self.edit.new_files.push((cf, level, meta));
        Ok(())
    }
}
