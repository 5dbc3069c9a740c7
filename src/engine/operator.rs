//! The keyed operator task and its snapshot thread.
//!
//! The operator keeps each key's running `(count, sum)` in a [`ValueState`] of its own backend
//! and emits `key,count,sum` per event (rejected lines pass through to the side output). On an
//! aligned barrier it takes the synchronous snapshot part, hands the asynchronous part to its
//! snapshot thread, then forwards the barrier to its sink: processing never waits for the files.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use super::alignment::{Alignment, BarrierAligner};
use super::coordinator::OperatorAck;
use super::failure::{FailurePoint, FailureSchedule};
use super::gate::{GateEvent, GateSender, InputGate, Message};
use super::sink::{SinkBatch, SinkControl};
use super::source::{Event, EventBatch, cancelled};
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
    pub gate: InputGate<EventBatch, OperatorControl>,
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
                    let out = self.process(&state, &batch)?;
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

    fn process(&self, state: &ValueState<(u64, i128)>, batch: &EventBatch) -> Result<SinkBatch> {
        let mut out = SinkBatch {
            // Lines are `key,count,sum`: the key plus at most ~60 bytes.
            lines: Vec::with_capacity(batch.byte_len() + 24 * batch.len()),
            rejected: Vec::new(),
        };
        for event in batch.iter() {
            self.failures.check(FailurePoint::OperatorRecord)?;
            match event {
                Event::Valid {
                    key,
                    key_group,
                    value,
                } => {
                    self.keyed.set_current_key_bytes_in_group(key, key_group)?;
                    let (count, sum) = state.update_with(|current| {
                        let (count, sum) = current.unwrap_or((0, 0));
                        (count + 1, sum + i128::from(value))
                    })?;
                    out.lines.extend_from_slice(key);
                    out.lines.push(b',');
                    push_decimal(&mut out.lines, i128::from(count));
                    out.lines.push(b',');
                    push_decimal(&mut out.lines, sum);
                    out.lines.push(b'\n');
                }
                Event::Rejected { line, text } => {
                    push_decimal(&mut out.rejected, i128::from(line));
                    out.rejected.push(b',');
                    out.rejected.extend_from_slice(text);
                    out.rejected.push(b'\n');
                }
            }
        }
        self.processed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
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

/// Appends the decimal form of `n` (as `Display` writes it) to `out`, without the formatting
/// machinery: two digits per division on u64 when the value fits, which it nearly always does.
pub fn push_decimal(out: &mut Vec<u8>, n: i128) {
    if n < 0 {
        out.push(b'-');
    }
    let mut magnitude = n.unsigned_abs();
    let mut digits = [0u8; 40];
    let mut at = digits.len();
    while magnitude > u128::from(u64::MAX) {
        at -= 1;
        digits[at] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
    }
    let mut small = magnitude as u64;
    while small >= 100 {
        let pair = (small % 100) as usize * 2;
        small /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if small >= 10 {
        let pair = small as usize * 2;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + small as u8;
    }
    out.extend_from_slice(&digits[at..]);
}

/// "00" to "99", for [`push_decimal`].
const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

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
            Err(error) => CoordinatorEvent::Decline {
                checkpoint_id: job.checkpoint_id,
                task,
                error,
            },
        };
        let _ = events.send(event);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_decimal_writes_what_display_writes() {
        for n in [
            0,
            1,
            -1,
            9,
            10,
            -1000,
            i128::from(u64::MAX),
            i128::from(u64::MAX) + 1,
            i128::from(i64::MIN),
            i128::MIN,
            i128::MAX,
            99,
            100,
            -101,
            12_345,
            999_999,
        ] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    proptest::proptest! {
        #[test]
        fn push_decimal_matches_display(n in proptest::prelude::any::<i128>(), small in -100_000i64..100_000) {
            for n in [n, i128::from(small), n >> 64, n >> 100] {
                let mut out = Vec::new();
                push_decimal(&mut out, n);
                proptest::prop_assert_eq!(out, n.to_string().into_bytes());
            }
        }
    }
}
