//! Metric names and the calls that record them: one place for every `flowstate_*` metric.
//!
//! Metrics go through the [`metrics`] facade: nothing is recorded anywhere until the embedding
//! program installs a recorder (`flowstate run --metrics-addr` installs the Prometheus exporter;
//! tests use a local one). Names follow Prometheus conventions: the unit is in the name, counters
//! end in `_total`. Only per-checkpoint, per-flush, per-compaction and per-restore work records
//! here — never a per-record or per-write path.

use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

/// Histogram: trigger to completion of each completed checkpoint, in seconds.
pub const CHECKPOINT_DURATION_SECONDS: &str = "flowstate_checkpoint_duration_seconds";
/// Histogram: longest synchronous snapshot part of any operator, per completed checkpoint.
pub const CHECKPOINT_SYNC_SECONDS: &str = "flowstate_checkpoint_sync_duration_seconds";
/// Histogram: longest asynchronous snapshot part (the upload) of any operator, per checkpoint.
pub const CHECKPOINT_ASYNC_SECONDS: &str = "flowstate_checkpoint_async_duration_seconds";
/// Histogram: longest barrier alignment of any operator, per completed checkpoint.
pub const CHECKPOINT_ALIGNMENT_SECONDS: &str = "flowstate_checkpoint_alignment_duration_seconds";
/// Histogram: state bytes newly written by each completed checkpoint (files not in the previous).
pub const CHECKPOINT_WRITTEN_BYTES: &str = "flowstate_checkpoint_written_bytes";
/// Gauge: total size of the state the latest completed checkpoint references.
pub const CHECKPOINT_STATE_SIZE_BYTES: &str = "flowstate_checkpoint_state_size_bytes";
/// Counter: completed checkpoints.
pub const CHECKPOINTS_COMPLETED_TOTAL: &str = "flowstate_checkpoints_completed_total";
/// Counter: failed checkpoints (declined by a task or timed out; they count against the
/// tolerable failures).
pub const CHECKPOINTS_FAILED_TOTAL: &str = "flowstate_checkpoints_failed_total";
/// Counter: aborted checkpoints that are not failures (subsumed by a newer one, or in flight when
/// the job attempt failed).
pub const CHECKPOINTS_ABORTED_TOTAL: &str = "flowstate_checkpoints_aborted_total";
/// Gauge, labels `state` and `key_groups` (the writing task's range, `first-last`): bytes of one
/// state in the latest checkpoint of that task. LSM incremental checkpoints: the SST bytes the
/// checkpoint references for the state's column family; full snapshots: the key and value bytes
/// written for it. Sum over `key_groups` for the job's total per state.
pub const STATE_SIZE_BYTES: &str = "flowstate_state_size_bytes";
/// Counter: times the state-size growth alert was raised (entered; see
/// `engine::coordinator::GrowthAlert`).
pub const STATE_GROWTH_ALERTS_TOTAL: &str = "flowstate_state_growth_alerts_total";
/// Gauge: 1 while the state-size growth alert holds, 0 otherwise.
pub const STATE_GROWTH_ALERT_ACTIVE: &str = "flowstate_state_growth_alert_active";
/// Counter: memtable flushes to L0 (LSM store).
pub const LSM_FLUSHES_TOTAL: &str = "flowstate_lsm_flushes_total";
/// Counter: bytes of SST files written by flushes.
pub const LSM_FLUSH_WRITTEN_BYTES_TOTAL: &str = "flowstate_lsm_flush_written_bytes_total";
/// Counter: compactions run (trivial moves included).
pub const LSM_COMPACTIONS_TOTAL: &str = "flowstate_lsm_compactions_total";
/// Counter: bytes of input files read by compactions (trivial moves read nothing).
pub const LSM_COMPACTION_READ_BYTES_TOTAL: &str = "flowstate_lsm_compaction_read_bytes_total";
/// Counter: bytes of output files written by compactions.
pub const LSM_COMPACTION_WRITTEN_BYTES_TOTAL: &str = "flowstate_lsm_compaction_written_bytes_total";
/// Counter: times a writer waited for a flush or compaction (too many memtables or L0 files).
pub const LSM_WRITE_STALLS_TOTAL: &str = "flowstate_lsm_write_stalls_total";
/// Gauge, label `component` (`write_cache`, `memtable`, `block_cache`, `table_reader`,
/// `checkpoint_log`, `transfer`): bytes charged to a `MemoryBudget` (updated when the charge
/// crosses a MiB boundary).
pub const MEMORY_CHARGED_BYTES: &str = "flowstate_memory_charged_bytes";
/// Counter: times a writer waited because the `MemoryBudget` was full.
pub const MEMORY_WAITS_TOTAL: &str = "flowstate_memory_waits_total";
/// Histogram, label `backend`: wall time of each backend restore, in seconds.
pub const RESTORE_DURATION_SECONDS: &str = "flowstate_restore_duration_seconds";
/// Counter, label `backend`: bytes restores brought in from checkpoint storage.
pub const RESTORE_DOWNLOADED_BYTES_TOTAL: &str = "flowstate_restore_downloaded_bytes_total";
/// Counter, label `backend`: bytes of restored files the backend's own checkpoint storage took
/// by hard link or server-side copy from another root (so no checkpoint uploads them).
pub const RESTORE_COPIED_BYTES_TOTAL: &str = "flowstate_restore_copied_bytes_total";
/// Counter: job restarts after a task failure.
pub const JOB_RESTARTS_TOTAL: &str = "flowstate_job_restarts_total";

/// Registers the description and unit of every metric with the installed recorder. Call once
/// after installing one (a recorder installed later knows none of it; metrics still work).
pub fn describe() {
    let seconds = [
        (
            CHECKPOINT_DURATION_SECONDS,
            "Checkpoint trigger to completion.",
        ),
        (
            CHECKPOINT_SYNC_SECONDS,
            "Longest synchronous snapshot part of a checkpoint.",
        ),
        (
            CHECKPOINT_ASYNC_SECONDS,
            "Longest asynchronous snapshot part of a checkpoint.",
        ),
        (
            CHECKPOINT_ALIGNMENT_SECONDS,
            "Longest barrier alignment of a checkpoint.",
        ),
        (
            RESTORE_DURATION_SECONDS,
            "Wall time of a state backend restore.",
        ),
    ];
    for (name, text) in seconds {
        describe_histogram!(name, Unit::Seconds, text);
    }
    describe_histogram!(
        CHECKPOINT_WRITTEN_BYTES,
        Unit::Bytes,
        "State bytes newly written by a completed checkpoint."
    );
    describe_gauge!(
        CHECKPOINT_STATE_SIZE_BYTES,
        Unit::Bytes,
        "State size referenced by the latest completed checkpoint."
    );
    describe_gauge!(
        STATE_SIZE_BYTES,
        Unit::Bytes,
        "Bytes of one state in a task's latest checkpoint."
    );
    describe_gauge!(
        MEMORY_CHARGED_BYTES,
        Unit::Bytes,
        "Bytes charged to the memory budget, per component."
    );
    describe_gauge!(
        STATE_GROWTH_ALERT_ACTIVE,
        "1 while the state-size growth alert holds."
    );
    let counts = [
        (CHECKPOINTS_COMPLETED_TOTAL, "Completed checkpoints."),
        (
            CHECKPOINTS_FAILED_TOTAL,
            "Checkpoints declined or timed out.",
        ),
        (
            CHECKPOINTS_ABORTED_TOTAL,
            "Checkpoints subsumed or cut short by a job failure.",
        ),
        (
            STATE_GROWTH_ALERTS_TOTAL,
            "Times the state-size growth alert was raised.",
        ),
        (LSM_FLUSHES_TOTAL, "Memtable flushes."),
        (
            LSM_COMPACTIONS_TOTAL,
            "Compactions, trivial moves included.",
        ),
        (
            LSM_WRITE_STALLS_TOTAL,
            "Writer waits for a flush or compaction.",
        ),
        (JOB_RESTARTS_TOTAL, "Job restarts after a task failure."),
        (
            MEMORY_WAITS_TOTAL,
            "Writer waits because the memory budget was full.",
        ),
    ];
    for (name, text) in counts {
        describe_counter!(name, Unit::Count, text);
    }
    let bytes = [
        (
            LSM_FLUSH_WRITTEN_BYTES_TOTAL,
            "SST bytes written by flushes.",
        ),
        (
            LSM_COMPACTION_READ_BYTES_TOTAL,
            "Input bytes read by compactions.",
        ),
        (
            LSM_COMPACTION_WRITTEN_BYTES_TOTAL,
            "Output bytes written by compactions.",
        ),
        (
            RESTORE_DOWNLOADED_BYTES_TOTAL,
            "Bytes restores brought in from checkpoint storage.",
        ),
        (
            RESTORE_COPIED_BYTES_TOTAL,
            "Bytes of restored files copied into this backend's checkpoint storage by link or \
             server-side copy.",
        ),
    ];
    for (name, text) in bytes {
        describe_counter!(name, Unit::Bytes, text);
    }
}

/// Timings and sizes of one completed checkpoint, as the coordinator knows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CheckpointSample {
    /// Trigger to completion.
    pub duration: Duration,
    /// Longest synchronous part.
    pub sync: Duration,
    /// Longest asynchronous part.
    pub asynchronous: Duration,
    /// Longest alignment.
    pub alignment: Duration,
    /// Bytes newly written.
    pub bytes_written: u64,
    /// Total state size referenced.
    pub state_size: u64,
}

/// A checkpoint completed.
pub(crate) fn checkpoint_completed(sample: &CheckpointSample) {
    counter!(CHECKPOINTS_COMPLETED_TOTAL).increment(1);
    histogram!(CHECKPOINT_DURATION_SECONDS).record(sample.duration.as_secs_f64());
    histogram!(CHECKPOINT_SYNC_SECONDS).record(sample.sync.as_secs_f64());
    histogram!(CHECKPOINT_ASYNC_SECONDS).record(sample.asynchronous.as_secs_f64());
    histogram!(CHECKPOINT_ALIGNMENT_SECONDS).record(sample.alignment.as_secs_f64());
    histogram!(CHECKPOINT_WRITTEN_BYTES).record(sample.bytes_written as f64);
    gauge!(CHECKPOINT_STATE_SIZE_BYTES).set(sample.state_size as f64);
}

/// A checkpoint ended without completing: `failed` when it counts against the tolerable
/// failures (declined, timed out), else it was aborted (subsumed, job attempt failed).
pub(crate) fn checkpoint_ended_incomplete(failed: bool) {
    let name = if failed {
        CHECKPOINTS_FAILED_TOTAL
    } else {
        CHECKPOINTS_ABORTED_TOTAL
    };
    counter!(name).increment(1);
}

/// One state's bytes in the latest checkpoint of the task owning key groups `first..=last`.
pub(crate) fn state_size(state: &str, key_groups: (u16, u16), bytes: u64) {
    let range = format!("{}-{}", key_groups.0, key_groups.1);
    gauge!(STATE_SIZE_BYTES, "state" => state.to_string(), "key_groups" => range).set(bytes as f64);
}

/// [`state_size`] of every state of a full snapshot of the key groups `range` (first, last): `names[i]` wrote
/// `sizes[i]` key and value bytes.
pub(crate) fn full_state_sizes(names: &[String], range: (u16, u16), sizes: &[u64]) {
    for (name, bytes) in names.iter().zip(sizes) {
        state_size(name, range, *bytes);
    }
}

/// The state-size growth alert changed: `raised` entering the alert (counted), else cleared.
pub(crate) fn state_growth_alert(raised: bool) {
    if raised {
        counter!(STATE_GROWTH_ALERTS_TOTAL).increment(1);
    }
    gauge!(STATE_GROWTH_ALERT_ACTIVE).set(if raised { 1.0 } else { 0.0 });
}

/// A flush wrote `bytes` of SST files.
pub(crate) fn flush_finished(bytes: u64) {
    counter!(LSM_FLUSHES_TOTAL).increment(1);
    counter!(LSM_FLUSH_WRITTEN_BYTES_TOTAL).increment(bytes);
}

/// A compaction read `bytes_read` and wrote `bytes_written` (both 0 for a trivial move).
pub(crate) fn compaction_finished(bytes_read: u64, bytes_written: u64) {
    counter!(LSM_COMPACTIONS_TOTAL).increment(1);
    counter!(LSM_COMPACTION_READ_BYTES_TOTAL).increment(bytes_read);
    counter!(LSM_COMPACTION_WRITTEN_BYTES_TOTAL).increment(bytes_written);
}

/// A writer stalled for a flush or compaction.
pub(crate) fn write_stall() {
    counter!(LSM_WRITE_STALLS_TOTAL).increment(1);
}

/// A writer waited because the memory budget was full.
pub(crate) fn memory_wait() {
    counter!(MEMORY_WAITS_TOTAL).increment(1);
}

/// `component` now holds `bytes` of the memory budget.
pub(crate) fn memory_charged(component: &'static str, bytes: usize) {
    gauge!(MEMORY_CHARGED_BYTES, "component" => component).set(bytes as f64);
}

/// A restore of `backend` (`memory`, `fs`, `lsm`) finished after `duration`, having brought
/// `bytes_downloaded` bytes in from checkpoint storage. What counts as brought in is the
/// backend's: fs reads every file it restores; lsm counts the SST files it links or copies into
/// its new store (a hard link moves no data, so on local storage this is an upper bound);
/// memory reports 0.
pub(crate) fn restore_finished(backend: &'static str, duration: Duration, bytes_downloaded: u64) {
    histogram!(RESTORE_DURATION_SECONDS, "backend" => backend).record(duration.as_secs_f64());
    counter!(RESTORE_DOWNLOADED_BYTES_TOTAL, "backend" => backend).increment(bytes_downloaded);
}

/// A restore gave the backend's own checkpoint storage `bytes` of restored files by hard link
/// or server-side copy.
pub(crate) fn restore_copied(backend: &'static str, bytes: u64) {
    counter!(RESTORE_COPIED_BYTES_TOTAL, "backend" => backend).increment(bytes);
}

/// The job restarts after a task failure.
pub(crate) fn job_restarted() {
    counter!(JOB_RESTARTS_TOTAL).increment(1);
}
