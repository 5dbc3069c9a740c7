//! [`CheckpointCoordinator`]: decides when to trigger checkpoints, collects acknowledgements,
//! aborts checkpoints that time out or are declined, and keeps per-checkpoint statistics.
//!
//! It is a pure state machine over an injected `now`, so its policy (interval, minimum pause,
//! maximum concurrent, timeout, tolerable failures — Flink's options) is tested without threads.
//! A checkpoint is complete when the source, every operator and every sink acknowledged it;
//! completing n subsumes (aborts without counting a failure) every older pending checkpoint.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::growth::GrowthAlert;
use super::source::SourcePosition;
use crate::backend::SnapshotHandle;
use crate::error::{Error, Result};
use crate::observe;

/// Checkpointing options (Flink's names).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckpointOptions {
    /// Time between checkpoint triggers; `None` checkpoints only at the end of the input.
    pub interval: Option<Duration>,
    /// A checkpoint not acknowledged by every task within this time is aborted.
    pub timeout: Duration,
    /// Minimum time from the completion of one checkpoint to the trigger of the next.
    pub min_pause: Duration,
    /// Checkpoints in flight at once (at least 1).
    pub max_concurrent: usize,
    /// Completed checkpoints kept (at least 1).
    pub retained: usize,
    /// Consecutive failed (aborted or declined) checkpoints tolerated before the job fails.
    pub tolerable_failures: u32,
    /// Warn (and raise `flowstate_state_growth_alert_active`) when the state size grew by more
    /// than a fraction over the last completed checkpoints; `None`: off.
    pub growth_alert: Option<GrowthAlert>,
}

impl CheckpointOptions {
    /// Checks the options; [`Error::InvalidOption`] names the first bad one (as
    /// `CheckpointOptions::<field>`) and what it must be.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, what: String| {
            Err(Error::invalid_option(
                format!("CheckpointOptions::{field}"),
                what,
            ))
        };
        if self.interval == Some(Duration::ZERO) {
            return bad(
                "interval",
                "must be above 0 (None checkpoints only at the end)".into(),
            );
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be above 0".into());
        }
        if self.max_concurrent == 0 {
            return bad("max_concurrent", "must be at least 1".into());
        }
        if self.retained == 0 {
            return bad("retained", "must be at least 1".into());
        }
        if let Some(alert) = &self.growth_alert {
            if !(alert.fraction.is_finite() && alert.fraction > 0.0) {
                return bad(
                    "growth_alert",
                    format!(
                        "fraction must be a finite number above 0, not {}",
                        alert.fraction
                    ),
                );
            }
            if alert.checkpoints == 0 {
                return bad("growth_alert", "checkpoints must be at least 1".into());
            }
        }
        Ok(())
    }
}

impl Default for CheckpointOptions {
    /// 200 ms interval, 60 s timeout, no pause, 1 concurrent, 3 retained, 3 tolerable failures,
    /// no growth alert.
    fn default() -> Self {
        CheckpointOptions {
            interval: Some(Duration::from_millis(200)),
            timeout: Duration::from_secs(60),
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            retained: 3,
            tolerable_failures: 3,
            growth_alert: None,
        }
    }
}

/// An operator's acknowledgement of a checkpoint.
#[derive(Debug, Clone)]
pub struct OperatorAck {
    /// The state snapshot.
    pub handle: SnapshotHandle,
    /// Time of the synchronous snapshot part.
    pub sync: Duration,
    /// Time of the asynchronous snapshot part.
    pub asynchronous: Duration,
    /// Barrier alignment time.
    pub alignment: Duration,
}

/// How a checkpoint ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointStatus {
    /// Completed: durable and committed.
    Completed,
    /// Aborted, with the reason (timeout, declined, subsumed, job failure).
    Aborted(String),
}

/// Statistics of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// Checkpoint id.
    pub id: u64,
    /// How it ended.
    pub status: CheckpointStatus,
    /// Trigger to completion (or abort).
    pub duration: Duration,
    /// Longest synchronous snapshot part of any operator.
    pub sync: Duration,
    /// Longest asynchronous snapshot part of any operator.
    pub asynchronous: Duration,
    /// Longest barrier alignment of any operator.
    pub alignment: Duration,
    /// State bytes written for this checkpoint (new files only).
    pub bytes_written: u64,
    /// Total size of the state the checkpoint references.
    pub state_size: u64,
    /// Output bytes pre-committed by the sinks for this checkpoint.
    pub output_bytes: u64,
}

/// A checkpoint every task acknowledged: what the job persists and restores from.
#[derive(Debug, Clone)]
pub struct CompletedCheckpoint {
    /// Checkpoint id.
    pub id: u64,
    /// The source's position at the barrier.
    pub(crate) source: SourcePosition,
    /// One snapshot per operator task, in task order.
    pub handles: Vec<SnapshotHandle>,
    /// Its statistics (bytes are filled in by the job when it persists the checkpoint).
    pub record: CheckpointRecord,
}

#[derive(Debug)]
struct PendingCheckpoint {
    triggered: Instant,
    source: Option<SourcePosition>,
    operators: Vec<Option<OperatorAck>>,
    sinks: Vec<Option<u64>>,
}

/// The checkpoint coordinator of one job attempt.
#[derive(Debug)]
pub struct CheckpointCoordinator {
    options: CheckpointOptions,
    operators: usize,
    sinks: usize,
    next_id: u64,
    pending: BTreeMap<u64, PendingCheckpoint>,
    last_trigger: Option<Instant>,
    last_completion: Option<Instant>,
    consecutive_failures: u32,
    /// The error of the first of the current run of consecutive checkpoint failures, if it had
    /// one (a timeout has none): the cause the tolerance error names.
    first_failure: Option<Error>,
    /// The growth alert holds (raised and not cleared since).
    growth_alert_active: bool,
    /// Every checkpoint that ended, in the order they ended.
    pub history: Vec<CheckpointRecord>,
}

impl CheckpointCoordinator {
    /// A coordinator for `operators` operator tasks and `sinks` sink tasks whose first
    /// checkpoint id is `next_id` (at least 1).
    pub fn new(options: CheckpointOptions, operators: usize, sinks: usize, next_id: u64) -> Self {
        CheckpointCoordinator {
            options,
            operators,
            sinks,
            next_id: next_id.max(1),
            pending: BTreeMap::new(),
            last_trigger: None,
            last_completion: None,
            consecutive_failures: 0,
            first_failure: None,
            growth_alert_active: false,
            history: Vec::new(),
        }
    }

    /// The id the next trigger will use.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Checkpoints in flight.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Triggers a checkpoint if the options allow one at `now`; `final_input` (the source has
    /// read everything) triggers as soon as nothing is in flight, ignoring interval and pause.
    pub fn poll_trigger(&mut self, now: Instant, final_input: bool) -> Option<u64> {
        if final_input {
            if !self.pending.is_empty() {
                return None;
            }
        } else {
            if self.pending.len() >= self.options.max_concurrent.max(1) {
                return None;
            }
            let interval = self.options.interval?;
            let since =
                |t: Option<Instant>| t.map_or(Duration::MAX, |t| now.saturating_duration_since(t));
            if since(self.last_trigger) < interval
                || since(self.last_completion) < self.options.min_pause
            {
                return None;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.last_trigger = Some(now);
        self.pending.insert(
            id,
            PendingCheckpoint {
                triggered: now,
                source: None,
                operators: vec![None; self.operators],
                sinks: vec![None; self.sinks],
            },
        );
        tracing::debug!(checkpoint_id = id, final_input, "checkpoint triggered");
        Some(id)
    }

    /// The source acknowledged `id` at `position`.
    pub fn ack_source(&mut self, id: u64, position: SourcePosition) -> Option<CompletedCheckpoint> {
        self.pending.get_mut(&id)?.source = Some(position);
        tracing::trace!(
            checkpoint_id = id,
            events = position.events,
            "source acknowledged"
        );
        self.try_complete(id)
    }

    /// Operator `task` acknowledged `id`.
    pub fn ack_operator(
        &mut self,
        id: u64,
        task: usize,
        ack: OperatorAck,
    ) -> Option<CompletedCheckpoint> {
        let (sync, asynchronous, alignment) = (ack.sync, ack.asynchronous, ack.alignment);
        *self.pending.get_mut(&id)?.operators.get_mut(task)? = Some(ack);
        tracing::debug!(
            checkpoint_id = id,
            task,
            sync = ?sync,
            asynchronous = ?asynchronous,
            alignment = ?alignment,
            "operator acknowledged checkpoint"
        );
        self.try_complete(id)
    }

    /// Sink `task` pre-committed `bytes` for `id`.
    pub fn ack_sink(&mut self, id: u64, task: usize, bytes: u64) -> Option<CompletedCheckpoint> {
        *self.pending.get_mut(&id)?.sinks.get_mut(task)? = Some(bytes);
        tracing::trace!(checkpoint_id = id, task, bytes, "sink pre-committed");
        self.try_complete(id)
    }

    /// A task declined `id` (e.g. its snapshot failed): abort it. An error when that makes more
    /// consecutive failures than tolerated.
    pub fn decline(&mut self, id: u64, reason: &str, now: Instant) -> Result<()> {
        if self.pending.contains_key(&id) {
            self.abort(id, format!("declined: {reason}"), now, true);
        }
        self.check_tolerance()
    }

    /// Task `task` declined `id` with `error`: abort it. An error at once when no restart can
    /// cure `error` ([`Error::is_curable_by_restart`], e.g. a full disk), else when that makes
    /// more consecutive failures than tolerated (naming the first failure's error).
    pub fn decline_with(&mut self, id: u64, task: &str, error: Error, now: Instant) -> Result<()> {
        if self.pending.contains_key(&id) {
            self.abort(id, format!("declined: {task}: {error}"), now, true);
        }
        if !error.is_curable_by_restart() {
            return Err(error.context(format!("checkpoint {id} declined by {task}")));
        }
        if self.first_failure.is_none() {
            self.first_failure = Some(error.context(format!("checkpoint {id} declined by {task}")));
        }
        self.check_tolerance()
    }

    /// Aborts checkpoints older than the timeout at `now`. An error when that makes more
    /// consecutive failures than tolerated.
    pub fn check_timeouts(&mut self, now: Instant) -> Result<()> {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.triggered) > self.options.timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.abort(id, "timed out".to_string(), now, true);
        }
        self.check_tolerance()
    }

    /// Aborts everything in flight (the attempt failed); not counted as checkpoint failures.
    pub fn abort_all(&mut self, reason: &str, now: Instant) {
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            self.abort(id, reason.to_string(), now, false);
        }
    }

    /// Records that a completed checkpoint is durable (with its final statistics): counts it in
    /// the metrics and evaluates the growth alert.
    pub fn record_completed(&mut self, record: CheckpointRecord, now: Instant) {
        self.consecutive_failures = 0;
        self.first_failure = None;
        self.last_completion = Some(now);
        tracing::info!(
            checkpoint_id = record.id,
            duration = ?record.duration,
            bytes_written = record.bytes_written,
            state_size = record.state_size,
            "checkpoint completed"
        );
        observe::checkpoint_completed(&observe::CheckpointSample {
            duration: record.duration,
            sync: record.sync,
            asynchronous: record.asynchronous,
            alignment: record.alignment,
            bytes_written: record.bytes_written,
            state_size: record.state_size,
        });
        self.history.push(record);
        self.check_growth();
    }

    /// Raises the growth alert on entering it (a warning and the metric), clears it on leaving.
    fn check_growth(&mut self) {
        let Some(alert) = self.options.growth_alert else {
            return;
        };
        let sizes: Vec<u64> = self
            .history
            .iter()
            .filter(|r| r.status == CheckpointStatus::Completed)
            .map(|r| r.state_size)
            .collect();
        match alert.exceeded(&sizes) {
            Some(growth) if !self.growth_alert_active => {
                self.growth_alert_active = true;
                let newest = sizes.last().copied().unwrap_or(0);
                let old = sizes
                    .len()
                    .checked_sub(alert.checkpoints.max(1) + 1)
                    .and_then(|i| sizes.get(i))
                    .copied()
                    .unwrap_or(0);
                tracing::warn!(
                    "state size grew by {:.1}% ({old} -> {newest} bytes) over the last {} \
                     completed checkpoints, more than the {:.1}% alert threshold",
                    growth * 100.0,
                    alert.checkpoints.max(1),
                    alert.fraction * 100.0
                );
                observe::state_growth_alert(true);
            }
            None if self.growth_alert_active => {
                self.growth_alert_active = false;
                tracing::info!("state size growth back under the alert threshold");
                observe::state_growth_alert(false);
            }
            _ => {}
        }
    }

    /// Whether the state-size growth alert holds.
    pub fn growth_alert_active(&self) -> bool {
        self.growth_alert_active
    }

    fn check_tolerance(&mut self) -> Result<()> {
        if self.consecutive_failures > self.options.tolerable_failures {
            let what = format!(
                "{} consecutive checkpoint failures exceed the {} tolerated",
                self.consecutive_failures, self.options.tolerable_failures
            );
            return Err(match self.first_failure.take() {
                Some(first) => first.context(format!("{what}; the first")),
                None => Error::invalid(what),
            });
        }
        Ok(())
    }

    fn abort(&mut self, id: u64, reason: String, now: Instant, counts: bool) {
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        if counts {
            self.consecutive_failures += 1;
            tracing::warn!(checkpoint_id = id, reason = %reason, "checkpoint failed");
        } else {
            tracing::debug!(checkpoint_id = id, reason = %reason, "checkpoint aborted");
        }
        observe::checkpoint_ended_incomplete(counts);
        let mut record = empty_record(id, CheckpointStatus::Aborted(reason));
        record.duration = now.saturating_duration_since(pending.triggered);
        self.history.push(record);
    }

    fn try_complete(&mut self, id: u64) -> Option<CompletedCheckpoint> {
        let pending = self.pending.get(&id)?;
        let source = pending.source?;
        if pending.operators.iter().any(Option::is_none)
            || pending.sinks.iter().any(Option::is_none)
        {
            return None;
        }
        let pending = self.pending.remove(&id)?;
        let now = Instant::now();
        let older: Vec<u64> = self.pending.range(..id).map(|(id, _)| *id).collect();
        for old in older {
            self.abort(old, format!("subsumed by {id}"), now, false);
        }
        let mut record = empty_record(id, CheckpointStatus::Completed);
        record.duration = now.saturating_duration_since(pending.triggered);
        let mut handles = Vec::with_capacity(pending.operators.len());
        for ack in pending.operators.into_iter().flatten() {
            record.sync = record.sync.max(ack.sync);
            record.asynchronous = record.asynchronous.max(ack.asynchronous);
            record.alignment = record.alignment.max(ack.alignment);
            handles.push(ack.handle);
        }
        record.output_bytes = pending.sinks.into_iter().flatten().sum();
        Some(CompletedCheckpoint {
            id,
            source,
            handles,
            record,
        })
    }
}

fn empty_record(id: u64, status: CheckpointStatus) -> CheckpointRecord {
    CheckpointRecord {
        id,
        status,
        duration: Duration::ZERO,
        sync: Duration::ZERO,
        asynchronous: Duration::ZERO,
        alignment: Duration::ZERO,
        bytes_written: 0,
        state_size: 0,
        output_bytes: 0,
    }
}

/// Completed and aborted counts of `records`, and the completion rate (completed / ended).
pub fn completion_rate(records: &[CheckpointRecord]) -> (usize, usize, f64) {
    let completed = records
        .iter()
        .filter(|r| r.status == CheckpointStatus::Completed)
        .count();
    let aborted = records.len() - completed;
    let rate = if records.is_empty() {
        1.0
    } else {
        completed as f64 / records.len() as f64
    };
    (completed, aborted, rate)
}

/// A text table of the last `rows` records and a completion-rate line.
pub fn format_table(records: &[CheckpointRecord], rows: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6} {:>10} {:>9} {:>8} {:>9} {:>9} {:>11} {:>11} {:>10}",
        "id", "status", "duration", "sync", "async", "align", "written", "state", "output"
    );
    let ms = |d: Duration| format!("{:.1}ms", d.as_secs_f64() * 1e3);
    for r in records.iter().skip(records.len().saturating_sub(rows)) {
        let status = match &r.status {
            CheckpointStatus::Completed => "completed".to_string(),
            CheckpointStatus::Aborted(why) => {
                format!("aborted ({})", why.split(':').next().unwrap_or(why))
            }
        };
        let _ = writeln!(
            out,
            "{:>6} {:>10} {:>9} {:>8} {:>9} {:>9} {:>11} {:>11} {:>10}",
            r.id,
            status,
            ms(r.duration),
            ms(r.sync),
            ms(r.asynchronous),
            ms(r.alignment),
            r.bytes_written,
            r.state_size,
            r.output_bytes
        );
    }
    let (completed, aborted, rate) = completion_rate(records);
    let _ = writeln!(
        out,
        "checkpoints: {completed} completed, {aborted} aborted, completion rate {:.1}%",
        rate * 100.0
    );
    out
}

impl CheckpointOptions {
    option_setters! { CheckpointOptions {
        interval: Option<Duration>,
        timeout: Duration,
        min_pause: Duration,
        max_concurrent: usize,
        retained: usize,
        tolerable_failures: u32,
        growth_alert: Option<GrowthAlert>,
    }}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendKind, SnapshotData};
    use crate::keys::KeyGroupRange;

    fn ack() -> OperatorAck {
        OperatorAck {
            handle: SnapshotHandle {
                backend: BackendKind::Fs,
                checkpoint_id: 0,
                max_parallelism: 128,
                key_group_range: KeyGroupRange::all(128),
                states: Vec::new(),
                data: SnapshotData::Files {
                    root: String::new(),
                    files: Vec::new(),
                },
            },
            sync: Duration::from_millis(1),
            asynchronous: Duration::from_millis(2),
            alignment: Duration::ZERO,
        }
    }

    fn complete(c: &mut CheckpointCoordinator, id: u64) -> Option<CompletedCheckpoint> {
        let pos = SourcePosition::default();
        assert!(c.ack_source(id, pos).is_none());
        assert!(c.ack_operator(id, 0, ack()).is_none());
        c.ack_sink(id, 0, 10)
    }

    fn options() -> CheckpointOptions {
        CheckpointOptions {
            interval: Some(Duration::from_millis(100)),
            timeout: Duration::from_millis(500),
            min_pause: Duration::from_millis(50),
            max_concurrent: 1,
            retained: 1,
            tolerable_failures: 1,
            growth_alert: None,
        }
    }

    #[test]
    fn interval_pause_and_max_concurrent() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut c = CheckpointCoordinator::new(options(), 1, 1, 1);
        assert_eq!(c.poll_trigger(t0, false), Some(1));
        assert_eq!(
            c.poll_trigger(ms(200), false),
            None,
            "one in flight at most"
        );
        let done = complete(&mut c, 1).expect("all acks in");
        assert_eq!(done.record.output_bytes, 10);
        c.record_completed(done.record, ms(200));
        assert_eq!(c.poll_trigger(ms(220), false), None, "min pause");
        assert_eq!(c.poll_trigger(ms(250), false), Some(2));
        assert_eq!(
            c.poll_trigger(ms(260), true),
            None,
            "final waits for the pending one"
        );
    }

    #[test]
    fn timeout_aborts_and_the_job_goes_on() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut c = CheckpointCoordinator::new(options(), 1, 1, 1);
        assert_eq!(c.poll_trigger(t0, false), Some(1));
        c.check_timeouts(ms(400)).unwrap();
        assert_eq!(c.pending(), 1);
        c.check_timeouts(ms(501)).expect("one failure is tolerated");
        assert_eq!(c.pending(), 0);
        assert!(
            matches!(c.history[0].status, CheckpointStatus::Aborted(ref w) if w == "timed out")
        );
        // A late acknowledgement of the aborted checkpoint is ignored.
        assert!(complete(&mut c, 1).is_none());
        assert_eq!(c.poll_trigger(ms(600), false), Some(2));
        let done = complete(&mut c, 2).expect("checkpoint 2 completes");
        c.record_completed(done.record, ms(610));
        // The success reset the failure count: another timeout is tolerated again.
        assert_eq!(c.poll_trigger(ms(700), false), Some(3));
        c.check_timeouts(ms(1300)).unwrap();
        assert_eq!(c.poll_trigger(ms(1400), false), Some(4));
        assert!(
            c.check_timeouts(ms(2000)).is_err(),
            "two in a row exceed the tolerance"
        );
        let (completed, aborted, rate) = completion_rate(&c.history);
        assert_eq!((completed, aborted), (1, 3));
        assert!((rate - 0.25).abs() < 1e-9);
        assert!(format_table(&c.history, 10).contains("completion rate 25.0%"));
    }

    #[test]
    fn completion_subsumes_older_and_decline_counts() {
        let t0 = Instant::now();
        let mut opts = options();
        opts.max_concurrent = 2;
        opts.min_pause = Duration::ZERO;
        opts.tolerable_failures = 0;
        let mut c = CheckpointCoordinator::new(opts, 1, 1, 7);
        assert_eq!(c.poll_trigger(t0, false), Some(7));
        assert_eq!(
            c.poll_trigger(t0 + Duration::from_millis(100), false),
            Some(8)
        );
        assert!(complete(&mut c, 8).is_some());
        assert_eq!(c.pending(), 0, "7 was subsumed");
        assert_eq!(
            c.poll_trigger(t0 + Duration::from_millis(200), false),
            Some(9)
        );
        assert!(c.decline(9, "disk full", t0).is_err());
    }
}
