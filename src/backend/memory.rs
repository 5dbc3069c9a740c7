//! [`MemoryBackend`]: heap state whose snapshots stay in memory.
//!
//! Like Flink's HashMapStateBackend with JobManager checkpoint storage: a snapshot survives a task
//! failure (restore from the handle) but not a process crash. The synchronous part clones the
//! copy-on-write state tables (O(states x key groups)); the asynchronous part drops expired TTL
//! entries from the frozen copy.

use std::sync::Arc;

use super::heap::{HeapSnapshot, HeapStore};
use super::{
    BackendConfig, BackendKind, SnapshotData, SnapshotHandle, SnapshotTask, StateBackend,
    check_restore_handles,
};
use crate::error::{Error, Result};
use crate::keys::KeyGroupRange;
use crate::ttl::SharedClock;

/// Heap state with in-memory snapshots.
///
/// ```
/// use flowstate::{BackendConfig, MemoryBackend, StateBackend, StateDescriptor, StateKind};
/// use flowstate::keys::{composite_key, key_group_for_key};
///
/// let mut backend = MemoryBackend::new(BackendConfig::default());
/// let counts = backend.register(&StateDescriptor::new("counts", StateKind::Value))?;
/// let key = composite_key(key_group_for_key(b"alice", 128), b"alice", b"", b"");
/// backend.put(counts, &key, b"1")?;
/// assert_eq!(backend.get(counts, &key)?, Some(b"1".to_vec()));
/// # Ok::<(), flowstate::Error>(())
/// ```
#[derive(Debug)]
pub struct MemoryBackend {
    store: HeapStore,
}

impl MemoryBackend {
    /// An empty memory backend.
    pub fn new(config: BackendConfig) -> Self {
        MemoryBackend {
            store: HeapStore::new(config),
        }
    }
}

struct MemorySnapshotTask {
    checkpoint_id: u64,
    max_parallelism: u16,
    frozen: HeapSnapshot,
    clock: SharedClock,
}

impl SnapshotTask for MemorySnapshotTask {
    fn run(self: Box<Self>) -> Result<SnapshotHandle> {
        let mut frozen = self.frozen;
        frozen.drop_expired(self.clock.now_ms());
        Ok(SnapshotHandle {
            backend: BackendKind::Memory,
            checkpoint_id: self.checkpoint_id,
            max_parallelism: self.max_parallelism,
            key_group_range: frozen.key_group_range,
            states: frozen.states.iter().map(|(d, _)| d.clone()).collect(),
            data: SnapshotData::Memory(Arc::new(frozen)),
        })
    }
}

impl StateBackend for MemoryBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Memory
    }

    super::heap::delegate_to_heap_store!(store);

    fn snapshot(&mut self, checkpoint_id: u64) -> Result<Box<dyn SnapshotTask>> {
        let config = self.store.config();
        Ok(Box::new(MemorySnapshotTask {
            checkpoint_id,
            max_parallelism: config.max_parallelism,
            clock: config.clock.clone(),
            frozen: self.store.freeze(),
        }))
    }

    fn restore(
        &mut self,
        handles: &[SnapshotHandle],
        key_group_range: KeyGroupRange,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let max_parallelism = self.store.config().max_parallelism;
        check_restore_handles(
            BackendKind::Memory,
            max_parallelism,
            handles,
            key_group_range,
        )?;
        let mut snapshots = Vec::with_capacity(handles.len());
        for handle in handles {
            match &handle.data {
                SnapshotData::Memory(snapshot) => snapshots.push(snapshot.clone()),
                SnapshotData::Files { .. } => {
                    return Err(Error::invalid(
                        "a memory-backend handle must hold its snapshot in memory, found files",
                    ));
                }
            }
        }
        self.store.begin_restore(handles, key_group_range)?;
        for snapshot in snapshots {
            for (descriptor, table) in &snapshot.states {
                let id = self.store.id_of(&descriptor.name).ok_or_else(|| {
                    Error::not_found(format!(
                        "state '{}' vanished during restore",
                        descriptor.name
                    ))
                })?;
                self.store.restore_table(id, table)?;
            }
        }
        // Nothing is downloaded: the snapshots are in this process's memory.
        crate::observe::restore_finished("memory", started.elapsed(), 0);
        Ok(())
    }
}
