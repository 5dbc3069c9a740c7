//! Background work: the flush and compaction threads' loop, running compactions, and installing
//! flushes' and compactions' results with one manifest edit each (the flush itself is in
//! `flush.rs`).
//!
//! Order of durability for every change: new SST files are fsynced by their builder, the
//! directory is fsynced, then the edit naming them is appended to the manifest and fsynced,
//! and only then do readers see the new version. Files an edit removes are deleted when the last
//! reader lets go of them (`TableFile`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::flush::{file_meta, flush_one, wait_for_flushes};
use super::{Core, DbInner};
use crate::error::{Error, Result};
use crate::fs::sync_dir;
use crate::lsm::compaction::job::{self, JobOutput, JobParams};
use crate::lsm::compaction::picker;
use crate::lsm::concat_iter::{Bounded, level_children};
use crate::lsm::format::compare_internal;
use crate::lsm::iterator::InternalIterator;
use crate::lsm::manifest::Manifest;
use crate::lsm::merge_iter::MergingIterator;
use crate::lsm::options::CfOptions;
use crate::lsm::table::{TableFile, sst_file_name};
use crate::lsm::version::{FileMeta, NUM_LEVELS, RangeTombstone, VersionEdit};

/// How often an idle background thread looks for periodic work.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// The kind of work a background thread does. Flushes get their own thread so a long
/// compaction never delays them: a checkpoint waits for a flush, never for a compaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Worker {
    /// Writes frozen memtables to L0.
    Flush,
    /// Runs picked compactions.
    Compaction,
}

/// A background thread's loop, until shutdown.
pub(super) fn run(inner: &Arc<DbInner>, worker: Worker) {
    loop {
        {
            let mut core = inner.core.lock();
            while !inner.shutdown.load(Ordering::Acquire)
                && !match worker {
                    Worker::Flush => {
                        !core.frozen.is_empty() || inner.flush_requested.load(Ordering::Acquire)
                    }
                    Worker::Compaction => next_compaction(inner, &core).is_some(),
                }
            {
                inner.work.wait_for(&mut core, IDLE_POLL);
            }
        }
        if inner.shutdown.load(Ordering::Acquire) {
            return;
        }
        if worker == Worker::Flush
            && inner.flush_requested.swap(false, Ordering::AcqRel)
            && let Err(e) = super::write::freeze_requested(inner)
        {
            inner.set_background_error(&e);
            let _core = inner.core.lock();
            inner.work.notify_all();
            return;
        }
        let done = match worker {
            Worker::Flush => flush_one(inner),
            Worker::Compaction => compact_one(inner),
        };
        if let Err(e) = done {
            inner.set_background_error(&e);
            let _core = inner.core.lock();
            inner.work.notify_all();
            return;
        }
    }
}

/// One unit of background work; false when there was nothing to do.
fn step(inner: &DbInner) -> Result<bool> {
    if flush_one(inner)? {
        return Ok(true);
    }
    compact_one(inner)
}

/// Runs the compaction due most, if any.
fn compact_one(inner: &DbInner) -> Result<bool> {
    let _compacting = inner.compaction_lock.lock();
    let job = {
        let core = inner.core.lock();
        next_compaction(inner, &core)
    };
    match job {
        Some(job) => {
            run_compaction(inner, job)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Runs flushes and compactions on this thread until none is due.
pub(super) fn run_until_idle(inner: &DbInner) -> Result<()> {
    inner.check_background_error()?;
    // A failure here stops the store as it would on the background threads.
    while step(inner).inspect_err(|e| inner.set_background_error(e))? {}
    Ok(())
}

/// Logs and applies one version edit.
///
/// `prepare` builds the edit from the core as it is (`None`: nothing to do). The manifest
/// append and its fsync then run with no core lock held, so writers, memtable switches (the
/// synchronous part of a checkpoint) and readers never wait for that I/O; `finish` runs under
/// the core lock right after the new version is in place, with the edit and what `prepare`
/// handed over. Installers are serialized by the manifest lock, so the version `prepare` saw is
/// still current when the edit is applied. Lock order: writer, then manifest, then core.
/// Returns `finish`'s result, or `None` when `prepare` had nothing to do.
pub(super) fn log_and_apply<T, R>(
    inner: &DbInner,
    prepare: impl FnOnce(&Core) -> Option<(VersionEdit, T)>,
    finish: impl FnOnce(&mut Core, &VersionEdit, T) -> R,
) -> Result<Option<R>> {
    let mut manifest = inner.manifest.lock();
    let (edit, version, handed) = {
        let core = inner.core.lock();
        let Some((mut edit, handed)) = prepare(&core) else {
            return Ok(None);
        };
        edit.next_file_number = Some(core.next_file_number);
        let version = core.version.apply(&edit, "live version edit", 0)?;
        (edit, version, handed)
    };
    manifest
        .append(&edit)
        .inspect_err(|e| inner.set_background_error(e))?;
    let mut core = inner.core.lock();
    for (_, _, meta) in &edit.new_files {
        if core.tables.contains_key(&meta.number) {
            continue; // A trivial move: the same file at another level.
        }
        if let Some(file) = version
            .cfs
            .values()
            .flat_map(|c| c.files())
            .find(|f| f.number == meta.number)
        {
            core.tables.insert(
                meta.number,
                TableFile::new(
                    &inner.options.fs,
                    &inner.dir,
                    file.clone(),
                    Some(inner.cache.clone()),
                    inner.options.allow_mmap_reads,
                ),
            );
        }
    }
    let live: std::collections::HashSet<u64> = version.live_file_numbers().into_iter().collect();
    let gone: Vec<u64> = core
        .tables
        .keys()
        .filter(|n| !live.contains(n))
        .copied()
        .collect();
    let mut retired_tables = Vec::new();
    for number in gone {
        if let Some(table) = core.tables.remove(&number) {
            table.mark_obsolete();
            retired_tables.push(table);
        }
    }
    core.version = Arc::new(version);
    let result = finish(&mut core, &edit, handed);
    let retired = inner.install_super_version(&core);
    let rollover = (manifest.size() > inner.options.max_manifest_size).then(|| {
        let number = core.allocate_file_number();
        let mut snapshot = (*core.version).clone();
        snapshot.next_file_number = core.next_file_number;
        (number, snapshot)
    });
    drop(core);
    // Unlinking obsolete files and evicting their blocks happens here, after the core lock is
    // released: under it, it stalled writers and memtable switches by milliseconds.
    drop(retired);
    drop(retired_tables);
    if let Some((number, snapshot)) = rollover {
        *manifest = Manifest::create(&inner.options.fs, &inner.dir, number, &snapshot)
            .inspect_err(|e| inner.set_background_error(e))?;
    }
    Ok(Some(result))
}

/// A user-key range; `None` ends are unbounded.
type KeyRange = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A compaction to run: input files with their levels, merged into `output_level`.
#[derive(Debug)]
struct Job {
    cf: u32,
    output_level: usize,
    inputs: Vec<(usize, Arc<FileMeta>)>,
    bottommost: bool,
    /// One input file and nothing below it overlaps: move the file to the output level
    /// without rewriting it (RocksDB's trivial move), which costs no I/O and uploads nothing new.
    trivial_move: bool,
    /// For manual compactions: the (widened) user-key range every overlapping file of which is
    /// an input; `None` ends are unbounded.
    range: Option<KeyRange>,
}

impl Job {
    /// A job for a picker task; `may_move` allows a trivial move (never for periodic
    /// compactions, whose point is to rewrite the file through the compaction filter).
    fn from_task(task: picker::CompactionTask, may_move: bool) -> Job {
        let trivial_move = may_move
            && task.inputs.len() == 1
            && task.next_inputs.is_empty()
            && task.level != task.output_level;
        let inputs = task
            .inputs
            .iter()
            .map(|f| (task.level, f.clone()))
            .chain(
                task.next_inputs
                    .iter()
                    .map(|f| (task.output_level, f.clone())),
            )
            .collect();
        Job {
            cf: task.cf,
            output_level: task.output_level,
            inputs,
            bottommost: task.bottommost,
            trivial_move,
            range: None,
        }
    }
}

fn next_compaction(inner: &DbInner, core: &Core) -> Option<Job> {
    let now = inner.options.clock.now_ms();
    for (id, cf) in &core.version.cfs {
        let options = core.cfs.get(id)?.options.clone();
        if let Some(task) = picker::pick(*id, cf, &options.compaction) {
            return Some(Job::from_task(task, true));
        }
        if let Some(period) = options.periodic_compaction_ms {
            let cold = cf
                .levels
                .iter()
                .enumerate()
                .flat_map(|(level, files)| files.iter().map(move |f| (level, f)))
                .find(|(_, f)| f.created_ms.saturating_add(period) <= now);
            if let Some((level, file)) = cold
                && let Some(task) = picker::pick_file(*id, cf, level, file.number)
            {
                return Some(Job::from_task(task, false));
            }
        }
    }
    None
}

/// Manual compaction of `[start, end]`: every file overlapping the range — widened until no
/// file outside it overlaps what is taken — at every level is merged into the deepest level
/// that holds one, so the result is bottommost and tombstones and filtered entries leave disk.
pub(super) fn compact_range(
    inner: &DbInner,
    cf: u32,
    start: Option<&[u8]>,
    end: Option<&[u8]>,
) -> Result<()> {
    super::write::freeze_memtables(inner, true)?;
    wait_for_flushes(inner)?;
    let _compacting = inner.compaction_lock.lock();
    let job = {
        let core = inner.core.lock();
        let Some(version) = core.version.cfs.get(&cf) else {
            return Err(Error::not_found(format!("unknown column family id {cf}")));
        };
        let mut lo = start.map(<[u8]>::to_vec);
        let mut hi = end.map(<[u8]>::to_vec);
        let mut inputs: Vec<(usize, Arc<FileMeta>)>;
        loop {
            inputs = version
                .levels
                .iter()
                .enumerate()
                .flat_map(|(level, files)| files.iter().map(move |f| (level, f.clone())))
                .filter(|(_, f)| f.overlaps(lo.as_deref(), hi.as_deref()))
                .collect();
            let new_lo = inputs
                .iter()
                .map(|(_, f)| f.smallest_user_key())
                .min()
                .map(<[u8]>::to_vec);
            let new_hi = inputs
                .iter()
                .map(|(_, f)| f.largest_user_key())
                .max()
                .map(<[u8]>::to_vec);
            let widened_lo = match (&lo, &new_lo) {
                (Some(l), Some(n)) if n < l => Some(n.clone()),
                _ => lo.clone(),
            };
            let widened_hi = match (&hi, &new_hi) {
                (Some(h), Some(n)) if n > h => Some(n.clone()),
                _ => hi.clone(),
            };
            if widened_lo == lo && widened_hi == hi {
                break;
            }
            lo = widened_lo;
            hi = widened_hi;
        }
        if inputs.is_empty() {
            return Ok(());
        }
        let output_level = inputs
            .iter()
            .map(|(l, _)| *l)
            .max()
            .unwrap_or(0)
            .clamp(1, NUM_LEVELS - 1);
        Job {
            cf,
            output_level,
            inputs,
            bottommost: true,
            trivial_move: false,
            range: Some((lo, hi)),
        }
    };
    run_compaction(inner, job)
}

/// Merges a job's inputs into new files of its output level and installs the result.
fn run_compaction(inner: &DbInner, job: Job) -> Result<()> {
    if job.trivial_move {
        return move_file(inner, &job);
    }
    let started = Instant::now();
    let Some(CompactionInputs {
        tables,
        options,
        tombstones,
    }) = compaction_inputs(inner, &job)
    else {
        return Ok(());
    };
    let children = compaction_children(&job, &tables)?;
    let mut merged = MergingIterator::new(children, compare_internal);
    merged.seek_to_first()?;
    let snapshots = inner.snapshot_sequences();
    let sst_options = options.sst_for_level(job.output_level);
    let params = JobParams {
        fs: inner.options.fs.as_ref(),
        level: job.output_level,
        bottommost: job.bottommost,
        snapshots: &snapshots,
        tombstones: &tombstones,
        merge_operator: options.merge_operator.as_deref(),
        filter: options.compaction_filter.as_deref(),
        sst_options: &sst_options,
        target_file_size: options.compaction.target_file_size,
        cut_prefix_len: options.compaction.cut_prefix_len,
        now_ms: inner.options.clock.now_ms(),
    };
    let mut new_file = || -> Result<(u64, std::path::PathBuf)> {
        let number = inner.core.lock().allocate_file_number();
        Ok((number, inner.dir.join(sst_file_name(number))))
    };
    let output = job::run(&mut merged, &params, &mut new_file)?;
    drop(merged);
    sync_dir(inner.options.fs.as_ref(), &inner.dir)?;
    let read: u64 = job.inputs.iter().map(|(_, f)| f.size).sum();
    let written = output.bytes_written;
    let edit = compaction_edit(&job, output, &tombstones, &snapshots);
    log_and_apply(
        inner,
        |core| core.cfs.contains_key(&job.cf).then_some((edit, ())),
        |_, _, ()| {},
    )?;
    record_compaction(inner, &job, read, written, started);
    inner.work.notify_all();
    Ok(())
}

/// What a compaction reads: its input tables and its column family's options and range
/// tombstones.
struct CompactionInputs {
    tables: Vec<Arc<TableFile>>,
    options: Arc<CfOptions>,
    tombstones: Vec<RangeTombstone>,
}

/// The inputs of `job`; `None` when the column family is gone or the version moved on (an
/// input is no longer live).
fn compaction_inputs(inner: &DbInner, job: &Job) -> Option<CompactionInputs> {
    let core = inner.core.lock();
    let state = core.cfs.get(&job.cf)?;
    let tables: Vec<Arc<TableFile>> = job
        .inputs
        .iter()
        .filter_map(|(_, f)| core.tables.get(&f.number).cloned())
        .collect();
    if tables.len() != job.inputs.len() {
        return None; // The version moved on; the picker will look again.
    }
    let tombstones = core
        .version
        .cfs
        .get(&job.cf)
        .map(|c| c.tombstones.clone())
        .unwrap_or_default();
    Some(CompactionInputs {
        tables,
        options: state.options.clone(),
        tombstones,
    })
}

/// The merge inputs of a compaction over `tables` (the files of `job.inputs`, in that order):
/// each L0 file on its own, and the files of each lower level concatenated into one child, so a
/// step of the merge compares one key per level rather than one per file. A level whose files
/// overlap (never, in a consistent version) is merged file by file.
fn compaction_children(
    job: &Job,
    tables: &[Arc<TableFile>],
) -> Result<Vec<Box<dyn InternalIterator>>> {
    let mut children: Vec<Box<dyn InternalIterator>> = Vec::new();
    let mut levels: BTreeMap<usize, Vec<Bounded>> = BTreeMap::new();
    for ((level, meta), table) in job.inputs.iter().zip(tables) {
        let iter = Box::new(table.reader()?.scan_iter());
        if *level == 0 {
            children.push(iter);
            continue;
        }
        levels.entry(*level).or_default().push(Bounded {
            iter,
            smallest: meta.smallest.clone(),
            largest: meta.largest.clone(),
        });
    }
    for (_, files) in levels {
        children.extend(level_children(files, compare_internal));
    }
    Ok(children)
}

/// The version edit of a finished compaction: its inputs deleted, its outputs added at the
/// output level, and (for a manual compaction) the tombstones it made redundant removed.
fn compaction_edit(
    job: &Job,
    output: JobOutput,
    tombstones: &[RangeTombstone],
    snapshots: &[u64],
) -> VersionEdit {
    let mut edit = VersionEdit {
        deleted_files: job
            .inputs
            .iter()
            .map(|(level, f)| (job.cf, *level as u8, f.number))
            .collect(),
        ..VersionEdit::default()
    };
    for (number, sst) in output.files {
        edit.new_files
            .push((job.cf, job.output_level as u8, file_meta(number, sst)));
    }
    if let Some((lo, hi)) = &job.range {
        // A tombstone inside the range: every file it could cover was an input and was rewritten
        // without what it deleted — unless a snapshot older than the tombstone kept some of it.
        let oldest_snapshot = snapshots.first().copied().unwrap_or(u64::MAX);
        for t in tombstones {
            let inside = lo.as_deref().is_none_or(|l| l <= t.start.as_slice())
                && hi.as_deref().is_none_or(|h| t.end.as_slice() <= h);
            if inside && t.sequence <= oldest_snapshot {
                edit.tombstones_removed.push((job.cf, t.clone()));
            }
        }
    }
    edit
}

/// Counts an installed compaction's bytes read and written (counters and metrics) and logs it.
fn record_compaction(inner: &DbInner, job: &Job, read: u64, written: u64, started: Instant) {
    inner
        .counters
        .compaction_bytes_read
        .fetch_add(read, Ordering::Relaxed);
    inner
        .counters
        .compaction_bytes_written
        .fetch_add(written, Ordering::Relaxed);
    crate::observe::compaction_finished(read, written);
    tracing::debug!(
        cf = job.cf,
        output_level = job.output_level,
        input_files = job.inputs.len(),
        bytes_in = read,
        bytes_out = written,
        manual = job.range.is_some(),
        duration = ?started.elapsed(),
        "compaction finished"
    );
}

/// A trivial move: the file changes level in the manifest and nowhere else.
fn move_file(inner: &DbInner, job: &Job) -> Result<()> {
    let mut edit = VersionEdit::default();
    for (level, file) in &job.inputs {
        edit.deleted_files.push((job.cf, *level as u8, file.number));
        edit.new_files
            .push((job.cf, job.output_level as u8, (**file).clone()));
    }
    let moved = log_and_apply(
        inner,
        |core| {
            let still_there = core.version.cfs.get(&job.cf).is_some_and(|cf| {
                job.inputs
                    .iter()
                    .all(|(level, f)| cf.levels[*level].iter().any(|g| g.number == f.number))
            });
            still_there.then_some((edit, ()))
        },
        |_, _, ()| {},
    )?;
    if moved.is_some() {
        crate::observe::compaction_finished(0, 0);
        tracing::debug!(
            cf = job.cf,
            output_level = job.output_level,
            files = job.inputs.len(),
            "trivial move"
        );
    }
    let _core = inner.core.lock();
    inner.work.notify_all();
    Ok(())
}
