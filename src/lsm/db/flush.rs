//! Flushing frozen memtables to L0: each frozen batch becomes SSTs per column family (shadowed
//! versions left out; cut like compaction output, never inside a cut prefix), installed by one
//! manifest edit after the files and the directory are fsynced; WAL files no memtable needs any
//! more are deleted afterwards.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::DbInner;
use super::background::log_and_apply;
use super::shadowed::ShadowedVersions;
use crate::error::Result;
use crate::fs::FileSystem;
use crate::fs::sync_dir;
use crate::lsm::compaction::output::{CutRule, OutputFiles};
use crate::lsm::format::parse_internal_key;
use crate::lsm::iterator::InternalIterator;
use crate::lsm::memtable::Memtable;
use crate::lsm::options::CfOptions;
use crate::lsm::sst::builder::SstMetadata;
use crate::lsm::table::sst_file_name;
use crate::lsm::version::{FileMeta, RangeTombstone, VersionEdit};
use crate::lsm::wal::parse_wal_file_name;

/// Flushes every frozen memtable on this thread; a flush the flush thread is running is waited
/// for (the flush lock), then whatever is left is flushed here.
pub(super) fn wait_for_flushes(inner: &DbInner) -> Result<()> {
    inner.check_background_error()?;
    // A failed flush leaves the store read-only, as it does on the flush thread: its WAL may be
    // gone, its manifest may end in a failed edit.
    while flush_one(inner).inspect_err(|e| inner.set_background_error(e))? {}
    Ok(())
}

/// Writes a memtable's point entries as L0 SSTs in `dir`, leaving out versions no reader can
/// see given the live `snapshots` (ascending; see [`ShadowedVersions`]); returns the files'
/// metadata in key order (none when no point entry was written) and the range tombstones.
///
/// Files are cut like compaction output (`CompactionOptions::target_file_size` and
/// `cut_prefix_len`): once a file reaches the target size, before the next user key with
/// another cut prefix. The files of one flush are disjoint in keys and share their creation
/// time, which is how L0 tells them apart from other flushes ([`l0_runs`]).
/// `new_number` hands out each file's number.
///
/// [`l0_runs`]: crate::lsm::version::l0_runs
pub(super) fn build_table(
    fs: &dyn FileSystem,
    dir: &Path,
    new_number: &mut dyn FnMut() -> u64,
    memtable: &Memtable,
    options: &CfOptions,
    now_ms: u64,
    snapshots: &[u64],
) -> Result<(Vec<FileMeta>, Vec<RangeTombstone>)> {
    let mut tombstones = Vec::new();
    let mut iter = memtable.range_tombstone_iter();
    iter.seek_to_first()?;
    while iter.valid() {
        let key = parse_internal_key(iter.key(), "memtable", 0)?;
        tombstones.push(RangeTombstone {
            start: key.user_key.to_vec(),
            end: iter.value().to_vec(),
            sequence: key.sequence,
        });
        iter.next()?;
    }
    if memtable.len() == memtable.range_tombstone_count() {
        return Ok((Vec::new(), tombstones));
    }
    let rule = CutRule {
        target_file_size: options.compaction.target_file_size,
        cut_prefix_len: options.compaction.cut_prefix_len,
    };
    let mut new_file = || {
        let number = new_number();
        Ok((number, dir.join(sst_file_name(number))))
    };
    let mut outputs = OutputFiles::new(fs, options.sst_for_level(0), now_ms, rule, &mut new_file);
    let mut shadowed = ShadowedVersions::new(snapshots);
    let written = memtable
        .for_each_entry(|key, value| {
            if shadowed.is_shadowed(key) {
                return Ok(());
            }
            outputs.add(key, value)
        })
        .and_then(|()| outputs.finish());
    let files = match written {
        Ok(files) => files,
        Err(e) => {
            outputs.remove_created();
            return Err(e);
        }
    };
    let metas: Vec<FileMeta> = files
        .into_iter()
        .map(|(number, sst)| file_meta(number, sst))
        .collect();
    tracing::debug!(
        files = metas.len(),
        entries = metas.iter().map(|m| m.entries).sum::<u64>(),
        shadowed = shadowed.dropped,
        "memtable flushed"
    );
    Ok((metas, tombstones))
}

pub(super) fn file_meta(number: u64, sst: SstMetadata) -> FileMeta {
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

/// Flushes the oldest frozen batch of memtables; false when there is none.
///
/// Once the batch's edit is installed the flush lock is released and waiters are woken before
/// the cleanup that nobody waits for: unlinking the WALs the batch made obsolete (tens of ms
/// for a 64 MiB log) and freeing the memtables (about a sixth of the flush's instructions when
/// this holds their last reference). A `Db::flush` waiting on the flush thread's flush
/// returns while that runs on the other core.
pub(super) fn flush_one(inner: &DbInner) -> Result<bool> {
    // One flush at a time: a batch must be flushed once, and batches in order.
    let flushing = inner.flush_lock.lock();
    let batch = {
        let core = inner.core.lock();
        match core.frozen.first() {
            Some(batch) => batch.clone(),
            None => return Ok(false),
        }
    };
    let started = Instant::now();
    let now = inner.options.clock.now_ms();
    // Snapshots taken after this point read at or above every sequence of the frozen batch,
    // so they see the newest versions the flush keeps anyway.
    let snapshots = inner.snapshot_sequences();
    let mut edit = VersionEdit::default();
    let mut written = 0u64;
    for (cf, memtable) in &batch.memtables {
        let options = {
            let core = inner.core.lock();
            let Some(state) = core.cfs.get(cf) else {
                continue;
            };
            state.options.clone()
        };
        let (metas, tombstones) = build_table(
            inner.options.fs.as_ref(),
            &inner.dir,
            &mut || inner.core.lock().allocate_file_number(),
            memtable,
            &options,
            now,
            &snapshots,
        )?;
        for meta in metas {
            written += meta.size;
            edit.new_files.push((*cf, 0, meta));
        }
        edit.tombstones_added
            .extend(tombstones.into_iter().map(|t| (*cf, t)));
    }
    sync_dir(inner.options.fs.as_ref(), &inner.dir)?;
    let min_log = log_and_apply(
        inner,
        |core| {
            // Column families dropped meanwhile take no files.
            let live_cfs: Vec<u32> = core.cfs.keys().copied().collect();
            edit.new_files.retain(|(cf, _, _)| live_cfs.contains(cf));
            edit.tombstones_added
                .retain(|(cf, _)| live_cfs.contains(cf));
            edit.cf_log_numbers = live_cfs
                .iter()
                .map(|cf| (*cf, batch.next_log_number))
                .collect();
            edit.last_sequence = Some(batch.last_sequence);
            Some((edit, ()))
        },
        |core, edit, ()| {
            if let Some(log) = inner.flush_log.lock().as_mut() {
                log.push(super::checkpoint::flush_output(
                    core,
                    batch.last_sequence,
                    edit,
                ));
            }
            core.frozen.remove(0);
            core.version
                .cfs
                .values()
                .map(|c| c.log_number)
                .min()
                .unwrap_or(0)
        },
    )?
    .unwrap_or(0);
    inner
        .counters
        .flush_bytes_written
        .fetch_add(written, Ordering::Relaxed);
    crate::observe::flush_finished(written);
    tracing::debug!(
        memtables = batch.memtables.len(),
        bytes = written,
        last_sequence = batch.last_sequence,
        duration = ?started.elapsed(),
        "flush finished"
    );
    {
        let _core = inner.core.lock();
        inner.work.notify_all();
    }
    drop(flushing);
    // WALs below `min_log` stay below it (log numbers only grow), so a racing flush deleting
    // the same files is harmless.
    delete_wals_below(inner.options.fs.as_ref(), &inner.dir, min_log);
    drop(batch);
    Ok(true)
}

fn delete_wals_below(fs: &dyn FileSystem, dir: &Path, min_log: u64) {
    let Ok(entries) = fs.read_dir(dir) else {
        return;
    };
    for entry in entries {
        if let Some(number) = parse_wal_file_name(&entry.name)
            && number < min_log
        {
            let _ = fs.remove_file(&dir.join(&entry.name));
        }
    }
}
