//! [`InputGate`]: the bounded input channels of one task, one per upstream task, plus an
//! unbounded control queue (checkpoint-complete notifications, finish).
//!
//! Each input holds at most `capacity` messages; a sender blocks while its input is full, so a
//! slow task back-pressures its upstream. The reader names the inputs it is willing to read
//! (barrier alignment holds back inputs that already delivered the current barrier), and control
//! messages are always delivered first. Closing the gate wakes every blocked sender and reader.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// What flows on a task's input channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<T> {
    /// A batch of records (or one record): data.
    Record(T),
    /// Checkpoint barrier `n`: every record before it belongs to checkpoint `n`.
    Barrier(u64),
    /// The upstream task finished: nothing follows on this input.
    End,
}

/// What a reader gets from [`InputGate::recv`].
#[derive(Debug, PartialEq, Eq)]
pub enum GateEvent<T, C> {
    /// A control message (delivered before any data).
    Control(C),
    /// A message from input `.0`.
    Message(usize, Message<T>),
}

/// The gate was closed (the job attempt is being cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

struct GateState<T, C> {
    inputs: Vec<VecDeque<Message<T>>>,
    control: VecDeque<C>,
    closed: bool,
    /// Where the next scan over inputs starts, so no input starves the others.
    next_input: usize,
}

struct Shared<T, C> {
    state: Mutex<GateState<T, C>>,
    readable: Condvar,
    writable: Condvar,
    capacity: usize,
}

/// The input side of one task. Cloning shares the gate.
pub struct InputGate<T, C> {
    shared: Arc<Shared<T, C>>,
}

impl<T, C> Clone for InputGate<T, C> {
    fn clone(&self) -> Self {
        InputGate {
            shared: self.shared.clone(),
        }
    }
}

/// The sending end of one input of an [`InputGate`].
pub struct GateSender<T, C> {
    shared: Arc<Shared<T, C>>,
    input: usize,
}

impl<T, C> Clone for GateSender<T, C> {
    fn clone(&self) -> Self {
        GateSender {
            shared: self.shared.clone(),
            input: self.input,
        }
    }
}

impl<T, C> InputGate<T, C> {
    /// A gate with `inputs` inputs (at least 1) of `capacity` messages each (at least 1).
    pub fn new(inputs: usize, capacity: usize) -> Self {
        let inputs = inputs.max(1);
        InputGate {
            shared: Arc::new(Shared {
                state: Mutex::new(GateState {
                    inputs: (0..inputs).map(|_| VecDeque::new()).collect(),
                    control: VecDeque::new(),
                    closed: false,
                    next_input: 0,
                }),
                readable: Condvar::new(),
                writable: Condvar::new(),
                capacity: capacity.max(1),
            }),
        }
    }

    /// The sender for input `input` (taken modulo the number of inputs).
    pub fn sender(&self, input: usize) -> GateSender<T, C> {
        let inputs = self.shared.state.lock().inputs.len();
        GateSender {
            shared: self.shared.clone(),
            input: input % inputs,
        }
    }

    /// Queues a control message (never blocks).
    pub fn control(&self, message: C) -> Result<(), Closed> {
        let mut state = self.shared.state.lock();
        if state.closed {
            return Err(Closed);
        }
        state.control.push_back(message);
        self.shared.readable.notify_all();
        Ok(())
    }

    /// Closes the gate: pending and future calls on either side return [`Closed`] / `None`.
    pub fn close(&self) {
        let mut state = self.shared.state.lock();
        state.closed = true;
        self.shared.readable.notify_all();
        self.shared.writable.notify_all();
    }

    /// The next control message, or else the next message of an input whose `blocked` entry is
    /// not `true`; blocks until there is one. `None` once the gate is closed.
    pub fn recv(&self, blocked: &[bool]) -> Option<GateEvent<T, C>> {
        let mut state = self.shared.state.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some(control) = state.control.pop_front() {
                return Some(GateEvent::Control(control));
            }
            let count = state.inputs.len();
            let start = state.next_input;
            for step in 0..count {
                let input = (start + step) % count;
                if blocked.get(input).copied().unwrap_or(false) {
                    continue;
                }
                if let Some(message) = state.inputs[input].pop_front() {
                    state.next_input = (input + 1) % count;
                    self.shared.writable.notify_all();
                    return Some(GateEvent::Message(input, message));
                }
            }
            self.shared.readable.wait(&mut state);
        }
    }
}

impl<T, C> GateSender<T, C> {
    /// Appends `message` to this input, blocking while the input is full (back-pressure).
    pub fn send(&self, message: Message<T>) -> Result<(), Closed> {
        let mut state = self.shared.state.lock();
        loop {
            if state.closed {
                return Err(Closed);
            }
            if state.inputs[self.input].len() < self.shared.capacity {
                state.inputs[self.input].push_back(message);
                self.shared.readable.notify_all();
                return Ok(());
            }
            self.shared.writable.wait(&mut state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn control_first_then_unblocked_inputs_in_turn() {
        let gate: InputGate<u32, &str> = InputGate::new(2, 4);
        let (a, b) = (gate.sender(0), gate.sender(1));
        a.send(Message::Record(1)).unwrap();
        a.send(Message::Record(2)).unwrap();
        b.send(Message::Record(10)).unwrap();
        gate.control("done").unwrap();
        assert_eq!(gate.recv(&[false, false]), Some(GateEvent::Control("done")));
        assert_eq!(
            gate.recv(&[true, false]),
            Some(GateEvent::Message(1, Message::Record(10)))
        );
        assert_eq!(
            gate.recv(&[false, true]),
            Some(GateEvent::Message(0, Message::Record(1)))
        );
        gate.close();
        assert_eq!(gate.recv(&[false, false]), None);
        assert_eq!(a.send(Message::End), Err(Closed));
    }

    #[test]
    fn full_input_blocks_sender_until_read_or_closed() {
        let gate: InputGate<u32, ()> = InputGate::new(1, 1);
        let sender = gate.sender(0);
        sender.send(Message::Record(1)).unwrap();
        let handle = std::thread::spawn(move || sender.send(Message::Record(2)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!handle.is_finished(), "second send must wait for room");
        assert_eq!(
            gate.recv(&[false]),
            Some(GateEvent::Message(0, Message::Record(1)))
        );
        assert_eq!(handle.join().unwrap(), Ok(()));
        let sender = gate.sender(0);
        let handle = std::thread::spawn(move || sender.send(Message::Record(3)));
        std::thread::sleep(Duration::from_millis(20));
        gate.close();
        assert_eq!(handle.join().unwrap(), Err(Closed));
    }
}
