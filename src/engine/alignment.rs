//! [`BarrierAligner`]: exactly-once barrier alignment for a task with several inputs.
//!
//! When the first input delivers barrier n, alignment starts: every input that has delivered
//! barrier n is held back (not read) until all inputs have delivered it, so no record after the
//! barrier on one input is processed before the snapshot of n. An input that ended counts as
//! having delivered every later barrier. The aligner only decides; the task reads accordingly.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The outcome of a barrier or end-of-input seen by the aligner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alignment {
    /// Still waiting for other inputs to deliver the barrier.
    Pending,
    /// Every input delivered barrier `checkpoint_id` (or ended): snapshot, then forward it.
    Aligned {
        /// The checkpoint whose barrier is aligned.
        checkpoint_id: u64,
        /// From the first input's barrier to the last one's.
        alignment: Duration,
    },
}

/// Alignment state of one task.
#[derive(Debug)]
pub struct BarrierAligner {
    blocked: Vec<bool>,
    ended: Vec<bool>,
    current: Option<(u64, Instant)>,
    last_aligned: u64,
}

impl BarrierAligner {
    /// An aligner for `inputs` inputs (at least 1).
    pub fn new(inputs: usize) -> Self {
        let inputs = inputs.max(1);
        BarrierAligner {
            blocked: vec![false; inputs],
            ended: vec![false; inputs],
            current: None,
            last_aligned: 0,
        }
    }

    /// Which inputs must not be read now.
    pub fn blocked(&self) -> &[bool] {
        &self.blocked
    }

    /// The checkpoint being aligned, if any.
    #[cfg(test)]
    pub fn aligning(&self) -> Option<u64> {
        self.current.map(|(id, _)| id)
    }

    /// Input `input` delivered barrier `checkpoint_id`.
    pub fn on_barrier(&mut self, input: usize, checkpoint_id: u64) -> Result<Alignment> {
        if input >= self.blocked.len() || self.blocked[input] || self.ended[input] {
            return Err(Error::invalid(format!(
                "barrier {checkpoint_id} on input {input}, which is blocked, ended or unknown"
            )));
        }
        match self.current {
            None if checkpoint_id <= self.last_aligned => {
                return Err(Error::invalid(format!(
                    "barrier {checkpoint_id} after barrier {} was already aligned",
                    self.last_aligned
                )));
            }
            None => self.current = Some((checkpoint_id, Instant::now())),
            Some((current, _)) if current != checkpoint_id => {
                return Err(Error::invalid(format!(
                    "barrier {checkpoint_id} on input {input} while aligning barrier {current}"
                )));
            }
            Some(_) => {}
        }
        self.blocked[input] = true;
        Ok(self.try_complete())
    }

    /// Input `input` ended. Returns the alignment outcome (an end can complete an alignment)
    /// and whether every input has now ended.
    pub fn on_end(&mut self, input: usize) -> Result<(Alignment, bool)> {
        if input >= self.ended.len() || self.ended[input] {
            return Err(Error::invalid(format!(
                "end of input {input}, which already ended or is unknown"
            )));
        }
        self.ended[input] = true;
        self.blocked[input] = false;
        let outcome = if self.current.is_some() {
            self.try_complete()
        } else {
            Alignment::Pending
        };
        Ok((outcome, self.ended.iter().all(|e| *e)))
    }

    fn try_complete(&mut self) -> Alignment {
        let Some((checkpoint_id, started)) = self.current else {
            return Alignment::Pending;
        };
        let done = self
            .blocked
            .iter()
            .zip(&self.ended)
            .all(|(blocked, ended)| *blocked || *ended);
        if !done {
            return Alignment::Pending;
        }
        self.blocked.iter_mut().for_each(|b| *b = false);
        self.current = None;
        self.last_aligned = checkpoint_id;
        Alignment::Aligned {
            checkpoint_id,
            alignment: started.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gate::{GateEvent, InputGate, Message};

    fn aligned(outcome: Alignment) -> Option<u64> {
        match outcome {
            Alignment::Aligned { checkpoint_id, .. } => Some(checkpoint_id),
            Alignment::Pending => None,
        }
    }

    #[test]
    fn single_input_aligns_at_once() {
        let mut aligner = BarrierAligner::new(1);
        assert_eq!(aligned(aligner.on_barrier(0, 1).unwrap()), Some(1));
        assert_eq!(aligner.blocked(), [false]);
        assert!(
            aligner.on_barrier(0, 1).is_err(),
            "a barrier id never repeats"
        );
    }

    #[test]
    fn three_inputs_block_until_all_delivered() {
        let mut aligner = BarrierAligner::new(3);
        assert_eq!(aligner.on_barrier(1, 4).unwrap(), Alignment::Pending);
        assert_eq!(aligner.blocked(), [false, true, false]);
        assert!(
            aligner.on_barrier(1, 4).is_err(),
            "a blocked input is not read"
        );
        assert!(
            aligner.on_barrier(0, 5).is_err(),
            "barrier 5 before 4 aligned"
        );
        assert_eq!(aligner.on_barrier(2, 4).unwrap(), Alignment::Pending);
        assert_eq!(aligner.blocked(), [false, true, true]);
        assert_eq!(aligned(aligner.on_barrier(0, 4).unwrap()), Some(4));
        assert_eq!(aligner.blocked(), [false, false, false]);
        assert_eq!(aligner.aligning(), None);
    }

    #[test]
    fn ended_input_counts_as_aligned() {
        let mut aligner = BarrierAligner::new(2);
        assert_eq!(aligner.on_barrier(0, 1).unwrap(), Alignment::Pending);
        let (outcome, all_ended) = aligner.on_end(1).unwrap();
        assert_eq!(aligned(outcome), Some(1));
        assert!(!all_ended);
        assert_eq!(aligned(aligner.on_barrier(0, 2).unwrap()), Some(2));
        assert!(aligner.on_end(0).unwrap().1);
    }

    /// Records after barrier n on a fast input are never processed before barrier n has
    /// arrived on the slow input: the snapshot of n sees exactly the records before the barriers.
    #[test]
    fn records_after_barrier_wait_for_alignment_through_the_gate() {
        let gate: InputGate<&str, ()> = InputGate::new(2, 8);
        let (fast, slow) = (gate.sender(0), gate.sender(1));
        fast.send(Message::Record("f1")).unwrap();
        fast.send(Message::Barrier(1)).unwrap();
        fast.send(Message::Record("f2-after")).unwrap();
        fast.send(Message::End).unwrap();
        slow.send(Message::Record("s1")).unwrap();
        slow.send(Message::Record("s2")).unwrap();
        slow.send(Message::Barrier(1)).unwrap();
        slow.send(Message::End).unwrap();
        let mut aligner = BarrierAligner::new(2);
        let mut before_snapshot = Vec::new();
        let mut after_snapshot = Vec::new();
        let mut snapshotted = false;
        while let Some(GateEvent::Message(input, message)) = gate.recv(aligner.blocked()) {
            match message {
                Message::Record(r) if snapshotted => after_snapshot.push(r),
                Message::Record(r) => before_snapshot.push(r),
                Message::Barrier(id) => {
                    if aligned(aligner.on_barrier(input, id).unwrap()).is_some() {
                        snapshotted = true;
                    }
                }
                Message::End => {
                    if aligner.on_end(input).unwrap().1 {
                        break;
                    }
                }
            }
        }
        before_snapshot.sort_unstable();
        assert_eq!(before_snapshot, ["f1", "s1", "s2"]);
        assert_eq!(after_snapshot, ["f2-after"]);
    }
}
