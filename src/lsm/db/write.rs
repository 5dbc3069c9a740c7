//! The write path: WAL append, memtable insert, memtable switch, stalls, column families.
//!
//! A batch gets consecutive sequence numbers, is appended to the WAL as one record, and only
//! then inserted into the memtables; readers see it when the visible sequence moves past it, so a
//! batch is all or nothing to readers as well as to recovery.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{CfState, ColumnFamily, DbInner, FrozenBatch, SuperVersion, WriterState};
use crate::budget::{CHUNK, Component, MemoryBudget};
use crate::error::{Error, Result};
use crate::lsm::batch::WriteBatch;
use crate::lsm::format::TRAILER_LEN;
use crate::lsm::memtable::Memtable;
use crate::lsm::options::CfOptions;
use crate::lsm::version::VersionEdit;
use crate::lsm::wal::{WalWriter, wal_file_name};

/// How long a stalled writer sleeps before looking again (it is also woken by every flush).
const STALL_POLL: Duration = Duration::from_millis(50);

pub(super) fn write(inner: &DbInner, mut batch: WriteBatch) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut writer = inner.writer.lock();
    inner.check_background_error()?;
    // One view for validation and insertion: column families and memtables change only under
    // the writer lock, which this thread holds, so the view stays right for the whole batch.
    let mut sv = inner.current();
    if needs_room(inner, &sv) {
        make_room(inner, &mut writer)?;
        sv = inner.current();
    }
    if let Some(cf) = batch.find_cf(|cf| !sv.cfs.contains_key(&cf)) {
        return Err(Error::not_found(format!("unknown column family id {cf}")));
    }
    if let Some(budget) = &inner.options.memory_budget {
        reserve_memory(inner, &mut writer, &mut sv, &batch, budget)?;
    }
    batch.set_base_sequence(writer.last_sequence + 1)?;
    if let Some(wal) = &mut writer.wal {
        wal.append(&batch)
            .inspect_err(|e| inner.set_background_error(e))?;
    }
    for (sequence, op) in batch.iter() {
        if let Some(cf) = sv.cfs.get(&op.cf()) {
            let (key, value) = op.key_value();
            cf.memtable.insert(key, sequence, op.kind(), value);
        }
    }
    writer.last_sequence = batch.last_sequence();
    inner
        .visible_sequence
        .store(writer.last_sequence, Ordering::Release);
    Ok(())
}

/// The fast path of [`make_room`], without the core lock: whether a memtable of `sv` is full or
/// a column family has reached the L0 stop trigger. Memtables are switched only under the writer
/// lock, so the caller's view has the current ones; a flush may add an L0 file after the view
/// was taken, which lets at most this one write through before the next one stalls.
fn needs_room(inner: &DbInner, sv: &SuperVersion) -> bool {
    sv.cfs.values().any(|c| {
        c.memtable.approximate_memory_usage() >= inner.options.write_buffer_size
            || c.l0_runs >= inner.options.level0_stop_writes
    })
}

/// Whether L0 reached the stop trigger in sorted runs; `files` (at least the runs) is checked
/// first so that the runs are counted only when they might be enough.
fn l0_full(files: usize, runs: impl FnOnce() -> usize, stop: usize) -> bool {
    files >= stop && runs() >= stop
}

/// Waits while too many memtables or L0 runs are pending, and freezes full memtables.
fn make_room(inner: &DbInner, writer: &mut WriterState) -> Result<()> {
    loop {
        let mut core = inner.core.lock();
        let full = core
            .cfs
            .values()
            .any(|c| c.memtable.approximate_memory_usage() >= inner.options.write_buffer_size);
        let l0_blocked = core.version.cfs.values().any(|c| {
            l0_full(
                c.levels[0].len(),
                || c.l0_runs(),
                inner.options.level0_stop_writes,
            )
        });
        let frozen_blocked =
            full && core.frozen.len() + 1 >= inner.options.max_write_buffers.max(2);
        if l0_blocked || frozen_blocked {
            inner.counters.write_stalls.fetch_add(1, Ordering::Relaxed);
            crate::observe::write_stall();
            tracing::trace!(l0_blocked, frozen_blocked, "write stall");
            if !inner.options.background_work {
                // Nobody else will flush: do it here rather than wait forever.
                drop(core);
                super::background::run_until_idle(inner)?;
                continue;
            }
            inner.work.notify_all();
            inner.work.wait_for(&mut core, STALL_POLL);
            drop(core);
            inner.check_background_error()?;
            continue;
        }
        if full {
            let retired = freeze_locked(inner, writer, &mut core, true)?;
            drop(core);
            drop(retired);
        }
        return Ok(());
    }
}

/// How long a writer waits for the memory budget before it charges past the limit rather than
/// stop for good (nothing on the budget handed memory back in that time).
const BUDGET_GIVE_UP: Duration = Duration::from_secs(10);

/// Makes the memory budget cover `batch` in every memtable it writes to, before any of it is
/// inserted: asks the caches on the budget to evict, freezes this store's memtables for a
/// flush, asks the other stores to flush theirs, and waits until memory comes back.
fn reserve_memory(
    inner: &DbInner,
    writer: &mut WriterState,
    sv: &mut Arc<SuperVersion>,
    batch: &WriteBatch,
    budget: &MemoryBudget,
) -> Result<()> {
    let extra = batch.encoded().len()
        + batch.count() as usize * (crate::lsm::memtable::ENTRY_OVERHEAD + TRAILER_LEN);
    let covered = |sv: &SuperVersion| {
        sv.cfs
            .iter()
            .filter(|(id, _)| batch.find_cf(|cf| cf == **id).is_some())
            .all(|(_, cf)| cf.memtable.reserve(extra))
    };
    if covered(sv) {
        return Ok(());
    }
    let own = inner.budget_id.load(Ordering::Relaxed);
    let started = std::time::Instant::now();
    let mut waited = false;
    loop {
        if budget.reclaim(extra.max(CHUNK), 0) > 0 {
            if covered(sv) {
                return Ok(());
            }
            continue;
        }
        let own_memory: usize = sv
            .cfs
            .values()
            .map(|c| c.memtable.approximate_memory_usage())
            .sum();
        // Like RocksDB's write buffer manager, the largest memtables flush: other stores on
        // the budget holding more than this one flush theirs, else this one freezes its own.
        let others = budget.request_flushes(own, own_memory);
        if others == 0 {
            let mut core = inner.core.lock();
            let holds_writes = core.cfs.values().any(|c| !c.memtable.is_empty());
            if holds_writes && core.frozen.len() + 1 < inner.options.max_write_buffers.max(2) {
                let retired = freeze_locked(inner, writer, &mut core, true)?;
                drop(core);
                drop(retired);
                *sv = inner.current();
                if covered(sv) {
                    return Ok(());
                }
                continue;
            }
        }
        if !inner.options.background_work {
            super::background::run_until_idle(inner)?;
        }
        // The view holds the memtables it saw: a flushed one is released only when no view
        // holds it any more.
        *sv = inner.current();
        if covered(sv) {
            return Ok(());
        }
        if !waited {
            waited = true;
            budget.note_wait(Component::Memtable, extra);
        }
        if started.elapsed() >= BUDGET_GIVE_UP {
            tracing::warn!(
                used = budget.used(),
                limit = budget.limit(),
                wanted = extra,
                "nothing on the memory budget handed memory back: charging past the limit"
            );
            for (id, cf) in &sv.cfs {
                if batch.find_cf(|c| c == *id).is_some() {
                    cf.memtable.force_reserve(extra);
                }
            }
            return Ok(());
        }
        budget.wait_for_release(STALL_POLL);
        inner.check_background_error()?;
        *sv = inner.current();
        if covered(sv) {
            return Ok(());
        }
    }
}

/// Freezes the memtables for a flush another store on the memory budget asked for, unless a
/// writer holds the writer lock (a writer waiting for memory freezes its own) or a flush is
/// already pending.
pub(super) fn freeze_requested(inner: &DbInner) -> Result<()> {
    let Some(mut writer) = inner.writer.try_lock() else {
        return Ok(());
    };
    let mut core = inner.core.lock();
    if !core.frozen.is_empty() || core.cfs.values().all(|c| c.memtable.is_empty()) {
        return Ok(());
    }
    let retired = freeze_locked(inner, &mut writer, &mut core, false)?;
    drop(core);
    drop(retired);
    Ok(())
}

/// Freezes every non-empty memtable and rolls the WAL (both locks held).
fn freeze_locked(
    inner: &DbInner,
    writer: &mut WriterState,
    core: &mut super::Core,
    notify: bool,
) -> Result<Option<Arc<super::SuperVersion>>> {
    let memtables: Vec<(u32, Arc<Memtable>)> = core
        .cfs
        .iter()
        .filter(|(_, c)| !c.memtable.is_empty())
        .map(|(id, c)| (*id, c.memtable.clone()))
        .collect();
    if memtables.is_empty() {
        return Ok(None);
    }
    let log_number = core.allocate_file_number();
    if !inner.options.disable_wal {
        let path = inner.dir.join(wal_file_name(log_number));
        let wal =
            WalWriter::create_on(&inner.options.fs, &path, log_number, inner.options.wal_sync)?;
        // The old WAL keeps what was written to it; make it durable before it stops growing.
        writer
            .sync()
            .inspect_err(|e| inner.set_background_error(e))?;
        writer.wal = Some(wal);
    }
    writer.log_number = log_number;
    for (id, _) in &memtables {
        if let Some(cf) = core.cfs.get_mut(id) {
            cf.memtable = Arc::new(inner.options.new_memtable(&inner.memtable_pool));
        }
    }
    core.frozen.push(FrozenBatch {
        memtables,
        next_log_number: log_number,
        last_sequence: writer.last_sequence,
    });
    let retired = inner.install_super_version(core);
    if notify {
        inner.work.notify_all();
    }
    Ok(Some(retired))
}

/// Freezes the memtables now (for `flush` and checkpoints); returns the sequence they cover.
/// Without `notify` the flush thread is not woken (it finds the batch on its next poll, or a
/// caller of `wait_for_flushes` flushes it): waking it would let it preempt this thread on a
/// busy machine, and the synchronous part of a checkpoint must stay short.
pub(super) fn freeze_memtables(inner: &DbInner, notify: bool) -> Result<u64> {
    let mut writer = inner.writer.lock();
    inner.check_background_error()?;
    let mut core = inner.core.lock();
    let retired = freeze_locked(inner, &mut writer, &mut core, notify)?;
    drop(core);
    drop(retired);
    Ok(writer.last_sequence)
}

pub(super) fn create_cf(inner: &DbInner, name: &str, options: CfOptions) -> Result<ColumnFamily> {
    if name.is_empty() {
        return Err(Error::invalid("column family name must not be empty"));
    }
    // The writer lock keeps other creations out until this one is installed.
    let writer = inner.writer.lock();
    inner.check_background_error()?;
    if let Some((id, c)) = inner.core.lock().cfs.iter().find(|(_, c)| c.name == name) {
        return Ok(ColumnFamily {
            id: *id,
            name: c.name.clone(),
        });
    }
    let created = super::background::log_and_apply(
        inner,
        |core| {
            let id = core.version.next_cf_id;
            let edit = VersionEdit {
                next_cf_id: Some(id + 1),
                cf_added: vec![(id, name.to_string())],
                cf_log_numbers: vec![(id, writer.log_number)],
                ..VersionEdit::default()
            };
            Some((edit, id))
        },
        |core, _, id| {
            core.cfs.insert(
                id,
                CfState {
                    name: name.to_string(),
                    options: Arc::new(options),
                    memtable: Arc::new(inner.options.new_memtable(&inner.memtable_pool)),
                },
            );
            id
        },
    )?;
    let id = created.ok_or_else(|| Error::invalid("column family creation had nothing to do"))?;
    Ok(ColumnFamily {
        id,
        name: name.to_string(),
    })
}

pub(super) fn drop_cf(inner: &DbInner, cf: &ColumnFamily) -> Result<()> {
    if cf.id == 0 {
        return Err(Error::invalid(
            "the default column family cannot be dropped",
        ));
    }
    let _writer = inner.writer.lock();
    inner.check_background_error()?;
    let dropped = super::background::log_and_apply(
        inner,
        |core| {
            core.cfs.contains_key(&cf.id).then(|| {
                let edit = VersionEdit {
                    cf_dropped: vec![cf.id],
                    ..VersionEdit::default()
                };
                (edit, ())
            })
        },
        |core, _, ()| {
            core.cfs.remove(&cf.id);
            for batch in &mut core.frozen {
                batch.memtables.retain(|(id, _)| *id != cf.id);
            }
        },
    )?;
    if dropped.is_none() {
        return Err(Error::not_found(format!(
            "column family '{}' does not exist",
            cf.name
        )));
    }
    Ok(())
}
