//! The keyed operator task and its snapshot thread.
//!
//! The operator keeps each key's running `(count, sum)` in a [`ValueState`] of its own backend
//! and emits `key,count,sum` per event (rejected lines pass through to the side output). On an
//! aligned barrier it takes the synchronous snapshot part, hands the asynchronous part to its
//! snapshot thread, then forwards the barrier to its sink: processing never waits for the files.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use super::alignment::{Alignment, BarrierAligner};
use super::coordinator::OperatorAck;
use super::failure::{FailurePoint, FailureSchedule};
use super::gate::{GateEvent, GateSender, InputGate, Message};
use super::sink::{SinkBatch, SinkControl};
use super::source::{Event, cancelled};
use super::{CoordinatorEvent, OperatorControl};
use crate::backend::SnapshotTask;
use crate::error::Result;
use crate::state::{KeyedState, ValueState};

/// Name of the operator's state.
pub const COUNT_SUM_STATE: &str = "count_sum";

/// The asynchronous part of one operator snapshot, queued for the snapshot thread.
pub struct SnapshotJob {
    /// Checkpoint id.
    pub checkpoint_id: u64,
    /// The asynchronous part.
    pub task: Box<dyn SnapshotTask>,
    /// How long the synchronous part took.
    pub sync: Duration,
    /// How long alignment took.
    pub alignment: Duration,
}

/// One keyed operator task.
pub struct OperatorTask<'a> {
    /// Task index.
    pub index: usize,
    /// Its keyed state (backend restored already).
    pub keyed: KeyedState,
    /// Its input gate (one input per source task).
    pub gate: InputGate<Vec<Event>, OperatorControl>,
    /// Number of inputs.
    pub inputs: usize,
    /// Its sink's input.
    pub sink: GateSender<SinkBatch, SinkControl>,
    /// Its snapshot thread's queue.
    pub snapshots: Sender<SnapshotJob>,
    /// Failure injection.
    pub failures: &'a FailureSchedule,
    /// Events processed by all operators (progress).
    pub processed: &'a AtomicU64,
}

impl OperatorTask<'_> {
    /// Runs until every input ended or the gate is closed.
    pub fn run(self) -> Result<()> {
        let state: ValueState<(u64, i128)> = self.keyed.value_state(COUNT_SUM_STATE)?;
        let mut aligner = BarrierAligner::new(self.inputs);
        loop {
            let Some(event) = self.gate.recv(aligner.blocked()) else {
                return Ok(());
            };
            match event {
                GateEvent::Control(OperatorControl::Complete(id)) => {
                    self.keyed.notify_checkpoint_complete(id)?;
                }
                GateEvent::Message(_, Message::Record(batch)) => {
                    let out = self.process(&state, batch)?;
                    self.sink
                        .send(Message::Record(out))
                        .map_err(|_| cancelled())?;
                }
                GateEvent::Message(input, Message::Barrier(id)) => {
                    let outcome = aligner.on_barrier(input, id)?;
                    self.on_alignment(outcome)?;
                }
                GateEvent::Message(input, Message::End) => {
                    let (outcome, all_ended) = aligner.on_end(input)?;
                    self.on_alignment(outcome)?;
                    if all_ended {
                        self.sink.send(Message::End).map_err(|_| cancelled())?;
                        return Ok(());
                    }
                }
            }
        }
    }

    fn process(&self, state: &ValueState<(u64, i128)>, batch: Vec<Event>) -> Result<SinkBatch> {
        let mut out = SinkBatch::default();
        let records = batch.len() as u64;
        for event in batch {
            self.failures.check(FailurePoint::OperatorRecord)?;
            match event {
                Event::Valid { key, value } => {
                    self.keyed.set_current_key_bytes(&key)?;
                    let (count, sum) = state.value()?.unwrap_or((0, 0));
                    let (count, sum) = (count + 1, sum + i128::from(value));
                    state.update(&(count, sum))?;
                    out.lines.extend_from_slice(&key);
                    let _ = writeln!(out.lines, ",{count},{sum}");
                }
                Event::Rejected { line, text } => {
                    let _ = write!(out.rejected, "{line},");
                    out.rejected.extend_from_slice(&text);
                    out.rejected.push(b'\n');
                }
            }
        }
        self.processed.fetch_add(records, Ordering::Relaxed);
        Ok(out)
    }

    fn on_alignment(&self, outcome: Alignment) -> Result<()> {
        let Alignment::Aligned {
            checkpoint_id,
            alignment,
        } = outcome
        else {
            return Ok(());
        };
        self.failures.check(FailurePoint::SyncSnapshot)?;
        let started = Instant::now();
        let task = self.keyed.snapshot(checkpoint_id)?;
        let sync = started.elapsed();
        tracing::debug!(
            checkpoint_id,
            task = self.index,
            sync = ?sync,
            alignment = ?alignment,
            "checkpoint sync part done"
        );
        self.snapshots
            .send(SnapshotJob {
                checkpoint_id,
                task,
                sync,
                alignment,
            })
            .map_err(|_| cancelled())?;
        self.sink
            .send(Message::Barrier(checkpoint_id))
            .map_err(|_| cancelled())
    }
}

/// The snapshot thread of operator `task`: runs asynchronous parts in order and acknowledges
/// (or declines) each checkpoint to the coordinator. Ends when the operator drops its queue.
pub fn run_snapshot_thread(
    task: usize,
    jobs: Receiver<SnapshotJob>,
    events: &Sender<CoordinatorEvent>,
    failures: &FailureSchedule,
) -> Result<()> {
    for job in jobs {
        if let Some(delay) = failures.async_snapshot_delay() {
            std::thread::sleep(delay);
        }
        let started = Instant::now();
        let span =
            tracing::debug_span!("checkpoint_async", checkpoint_id = job.checkpoint_id, task);
        let result = span.in_scope(|| {
            failures
                .check(FailurePoint::AsyncSnapshot)
                .and_then(|()| job.task.run())
        });
        match &result {
            Ok(_) => tracing::debug!(
                checkpoint_id = job.checkpoint_id,
                task,
                asynchronous = ?started.elapsed(),
                "checkpoint async part done"
            ),
            Err(e) => tracing::warn!(
                checkpoint_id = job.checkpoint_id,
                task,
                error = %e,
                "checkpoint async part failed; declining"
            ),
        }
        let event = match result {
            Ok(handle) => CoordinatorEvent::OperatorAck {
                checkpoint_id: job.checkpoint_id,
                task,
                ack: OperatorAck {
                    handle,
                    sync: job.sync,
                    asynchronous: started.elapsed(),
                    alignment: job.alignment,
                },
            },
            Err(e) => CoordinatorEvent::Decline {
                checkpoint_id: job.checkpoint_id,
                task,
                reason: e.to_string(),
            },
        };
        let _ = events.send(event);
    }
    Ok(())
}
