//! [`FailureSchedule`]: deterministic failure injection for tests.
//!
//! Tasks consult the schedule at hook points; each point has a counter shared across restarts,
//! and a scheduled failure fires when its point's counter reaches the given occurrence. Because
//! counters are never reset, every scheduled failure fires at most once and a job always
//! finishes once the schedule is exhausted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// A place in the pipeline where a failure can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailurePoint {
    /// The source, after reading a line.
    SourceRecord,
    /// An operator, before processing an event.
    OperatorRecord,
    /// A sink, before writing a batch of output.
    SinkWrite,
    /// A sink, while pre-committing on a barrier (after the epoch file was renamed).
    SinkPreCommit,
    /// A sink, while committing on checkpoint completion (after the first renamed file).
    SinkCommit,
    /// The synchronous part of an operator snapshot.
    SyncSnapshot,
    /// The asynchronous part of an operator snapshot (the checkpoint is declined).
    AsyncSnapshot,
    /// The coordinator, after a job checkpoint is durable and before sinks are told to commit.
    AfterCheckpointPersisted,
}

impl FailurePoint {
    /// Every point, in a fixed order (for generating schedules).
    pub const ALL: [FailurePoint; 8] = [
        FailurePoint::SourceRecord,
        FailurePoint::OperatorRecord,
        FailurePoint::SinkWrite,
        FailurePoint::SinkPreCommit,
        FailurePoint::SinkCommit,
        FailurePoint::SyncSnapshot,
        FailurePoint::AsyncSnapshot,
        FailurePoint::AfterCheckpointPersisted,
    ];

    fn index(self) -> usize {
        Self::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

/// Failures to inject, each at the n-th occurrence (1-based) of a point.
#[derive(Debug, Default)]
pub struct FailureSchedule {
    armed: AtomicBool,
    counters: [AtomicU64; 8],
    failures: Mutex<Vec<(FailurePoint, u64)>>,
    /// (remaining delayed snapshots, delay).
    async_snapshot_delay: Mutex<Option<(u64, Duration)>>,
    /// Failures that are I/O errors: (point, occurrence, raw OS error, path).
    os_errors: Mutex<Vec<(FailurePoint, u64, i32, PathBuf)>>,
    /// (every n-th source record, pause): a slow source, so checkpoints fall between records.
    source_pace: Option<(u64, Duration)>,
}

impl FailureSchedule {
    /// No failures.
    pub fn none() -> Self {
        Self::default()
    }

    /// Fails at each `(point, occurrence)`.
    pub fn new(failures: Vec<(FailurePoint, u64)>) -> Self {
        let schedule = Self::default();
        schedule
            .armed
            .store(!failures.is_empty(), Ordering::Relaxed);
        *schedule.failures.lock() = failures;
        schedule
    }

    /// Also fails at the `occurrence`-th `point` with an [`Error::Io`] on `path` carrying the raw
    /// OS error `errno` (e.g. 28, ENOSPC), as the real call there would report it.
    pub fn with_os_error(
        self,
        point: FailurePoint,
        occurrence: u64,
        errno: i32,
        path: impl Into<PathBuf>,
    ) -> Self {
        self.armed.store(true, Ordering::Relaxed);
        self.os_errors
            .lock()
            .push((point, occurrence, errno, path.into()));
        self
    }

    /// Makes the source sleep `pause` before every `every`-th record (a slow source: tests on
    /// short inputs still see many checkpoints).
    pub fn with_source_pace(mut self, every: u64, pause: Duration) -> Self {
        self.armed.store(true, Ordering::Relaxed);
        self.source_pace = Some((every.max(1), pause));
        self
    }

    /// Makes the first `count` asynchronous snapshot parts sleep `delay` first (to provoke
    /// timeouts).
    pub fn with_slow_async_snapshots(self, count: u64, delay: Duration) -> Self {
        *self.async_snapshot_delay.lock() = Some((count, delay));
        self
    }

    /// The delay to apply to the next asynchronous snapshot part, if any.
    pub fn async_snapshot_delay(&self) -> Option<Duration> {
        let mut slot = self.async_snapshot_delay.lock();
        match slot.as_mut() {
            Some((remaining, delay)) if *remaining > 0 => {
                *remaining -= 1;
                Some(*delay)
            }
            _ => None,
        }
    }

    /// Counts one occurrence of `point`; an error if a failure is scheduled for it.
    pub fn check(&self, point: FailurePoint) -> Result<()> {
        if !self.armed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let occurrence = self.counters[point.index()].fetch_add(1, Ordering::Relaxed) + 1;
        if point == FailurePoint::SourceRecord
            && let Some((every, pause)) = self.source_pace
            && occurrence.is_multiple_of(every)
        {
            std::thread::sleep(pause);
        }
        {
            let mut os_errors = self.os_errors.lock();
            if let Some(at) = os_errors
                .iter()
                .position(|(p, n, _, _)| *p == point && *n == occurrence)
            {
                let (_, _, errno, path) = os_errors.swap_remove(at);
                return Err(Error::io(path, std::io::Error::from_raw_os_error(errno)));
            }
        }
        let mut failures = self.failures.lock();
        if let Some(at) = failures
            .iter()
            .position(|(p, n)| *p == point && *n == occurrence)
        {
            failures.swap_remove(at);
            return Err(Error::injected(format!(
                "injected failure at {point:?} #{occurrence}"
            )));
        }
        Ok(())
    }

    /// Scheduled failures that have not fired yet.
    pub fn remaining(&self) -> usize {
        self.failures.lock().len() + self.os_errors.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_at_the_scheduled_occurrence() {
        let schedule = FailureSchedule::new(vec![(FailurePoint::SinkWrite, 2)]);
        schedule.check(FailurePoint::SinkWrite).unwrap();
        schedule.check(FailurePoint::SourceRecord).unwrap();
        assert!(schedule.check(FailurePoint::SinkWrite).is_err());
        schedule.check(FailurePoint::SinkWrite).unwrap();
        assert_eq!(schedule.remaining(), 0);
    }
}
