//! The barrier-snapshot engine: a replayable file source, keyed operators on typed state, and
//! two-phase file sinks, checkpointed with aligned barriers and restarted from the latest
//! completed checkpoint after any failure — exactly-once output through crashes.
//!
//! [`run_job`] runs the reference job behind `flowstate run` (see `cli`, feature `cli`) as
//! configured by a [`JobConfig`]; the last section of [the guide](crate::guide) shows a run. The
//! pieces (gate, aligner, coordinator, sink, store) are internal and tested on their own.

pub(crate) mod alignment;
#[cfg(feature = "cli")]
pub mod cli;
pub(crate) mod coordinator;
#[cfg(feature = "cli")]
mod demo;
pub(crate) mod failure;
pub(crate) mod gate;
pub(crate) mod growth;
pub(crate) mod job;
pub(crate) mod location;
pub(crate) mod operator;
#[cfg(feature = "cli")]
mod output_check;
pub(crate) mod sink;
pub(crate) mod source;
pub(crate) mod store;

use self::location::TaskRoot;
use crate::backend::lsm::{LsmBackend, LsmBackendOptions};
use crate::backend::{
    BackendConfig, BackendKind, FsBackend, FsBackendOptions, MemoryBackend, StateBackend,
};
use crate::error::{Error, Result};

pub use coordinator::{CheckpointOptions, CheckpointRecord, CheckpointStatus};
pub use failure::{FailurePoint, FailureSchedule};
pub use growth::GrowthAlert;
pub use job::{
    CheckpointObserver, JobConfig, JobSummary, MAX_PARALLELISM_TASKS, RestartStrategy, run_job,
};

/// Which state backend the job's operators use. Adding a backend is one variant here, one arm
/// in `BackendChoice::create` and one name in [`BackendChoice::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// [`MemoryBackend`]: checkpoints in process memory; cannot resume after a process crash.
    Memory,
    /// [`FsBackend`]: heap state, full snapshots in the task's storage root.
    Fs,
    /// [`LsmBackend`]: state in the log-structured store next to the task's storage root,
    /// incremental checkpoints sharing SST files. The default.
    Lsm,
}

impl BackendChoice {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Memory => "memory",
            BackendChoice::Fs => "fs",
            BackendChoice::Lsm => "lsm",
        }
    }

    /// The choice named `name` (`memory`, `fs`, `lsm`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "memory" => Some(BackendChoice::Memory),
            "fs" => Some(BackendChoice::Fs),
            "lsm" => Some(BackendChoice::Lsm),
            _ => None,
        }
    }

    /// The backend kind it creates.
    pub fn kind(self) -> BackendKind {
        match self {
            BackendChoice::Memory => BackendKind::Memory,
            BackendChoice::Fs => BackendKind::Fs,
            BackendChoice::Lsm => BackendKind::Lsm,
        }
    }

    /// Whether its checkpoints survive a process crash.
    pub fn persistent(self) -> bool {
        !matches!(self, BackendChoice::Memory)
    }

    /// A backend for one task; persistent backends write their checkpoints to `root`'s storage,
    /// which belongs to this task alone. The LSM backend charges `memory_budget` (shared by the
    /// job's tasks) when there is one.
    pub(crate) fn create(
        self,
        config: BackendConfig,
        root: &TaskRoot,
        memory_budget: Option<std::sync::Arc<crate::budget::MemoryBudget>>,
    ) -> Result<Box<dyn StateBackend>> {
        Ok(match self {
            BackendChoice::Memory => Box::new(MemoryBackend::new(config)),
            BackendChoice::Fs => {
                // Job-level retention releases task checkpoints through the backend's
                // releaser (`job.rs`), so the backend's own retention keeps all;
                // 16 key groups per file: fewer fsyncs per checkpoint, still fine-grained
                // enough that a rescaled task reads little it does not own.
                let options = FsBackendOptions::default()
                    .retained_checkpoints(usize::MAX)
                    .key_groups_per_file(16);
                Box::new(FsBackend::open(config, root.storage.clone(), options)?)
            }
            BackendChoice::Lsm => {
                let options = LsmBackendOptions::new(&root.working_dir)
                    .write_buffer_size(16 << 20)
                    .block_cache_size(16 << 20)
                    // Job-level retention releases task checkpoints through the backend's
                    // releaser (`job.rs`): the backend's own retention keeps all.
                    .retained_checkpoints(usize::MAX)
                    .local_recovery_dir(root.local_recovery_dir.clone())
                    .memory_budget(memory_budget)
                    .fs(root.fs.clone());
                Box::new(LsmBackend::open(config, root.storage.clone(), options)?)
            }
        })
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s).ok_or_else(|| {
            Error::invalid(format!(
                "unknown backend '{s}' (expected memory, fs or lsm)"
            ))
        })
    }
}

/// Control messages from the coordinator to an operator task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OperatorControl {
    /// Checkpoint n completed.
    Complete(u64),
}

/// What tasks tell the coordinator.
#[derive(Debug)]
pub(crate) enum CoordinatorEvent {
    /// The source emitted barrier n at `position`.
    SourceAck {
        /// Checkpoint id.
        checkpoint_id: u64,
        /// Position at the barrier.
        position: source::SourcePosition,
    },
    /// The source read its whole input.
    SourceExhausted,
    /// An operator's snapshot of n is done.
    OperatorAck {
        /// Checkpoint id.
        checkpoint_id: u64,
        /// Operator task.
        task: usize,
        /// Handle and timings.
        ack: coordinator::OperatorAck,
    },
    /// An operator could not snapshot n.
    Decline {
        /// Checkpoint id.
        checkpoint_id: u64,
        /// Operator task.
        task: usize,
        /// Why: the snapshot's error.
        error: crate::error::Error,
    },
    /// A sink pre-committed n.
    SinkAck {
        /// Checkpoint id.
        checkpoint_id: u64,
        /// Sink task.
        task: usize,
        /// Bytes pre-committed.
        bytes: u64,
    },
    /// A task failed: the attempt restarts.
    Failed {
        /// Which task.
        task: String,
        /// The error.
        error: Error,
    },
    /// A task's thread ended (after any `Failed`).
    Exited,
}
