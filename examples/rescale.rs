//! Rescaling on the LSM backend: 20,000 keys counted by two tasks, each checkpointing to its own
//! storage; then three tasks restore from both checkpoints, each into its own key-group range,
//! and every key must be in exactly the task that owns its key group, with its count, and no
//! task may hold an entry of a key group it does not own. Finally one task restores from the
//! three new checkpoints and must hold everything. Exits non-zero on a wrong answer.
//!
//! `cargo run --release --example rescale`

use std::path::Path;
use std::sync::Arc;

use flowstate::keys::{key_group_for_key, key_group_of, operator_index_for_key_group};
use flowstate::{
    BackendConfig, Error, KeyGroupRange, KeyedState, LocalDirStorage, LsmBackend,
    LsmBackendOptions, SnapshotHandle, StateDescriptor, StateKind,
};

const MAX_PARALLELISM: u16 = 128;
const KEYS: u64 = 20_000;

fn key(i: u64) -> Vec<u8> {
    format!("key-{i}").into_bytes()
}

/// The task that owns `key` at `parallelism`.
fn owner(key: &[u8], parallelism: u16) -> usize {
    let key_group = key_group_for_key(key, MAX_PARALLELISM);
    usize::from(operator_index_for_key_group(
        MAX_PARALLELISM,
        parallelism,
        key_group,
    ))
}

/// Task `index` of `parallelism`: its key groups, its working directory and its storage.
fn task(dir: &Path, parallelism: u16, index: u16) -> flowstate::Result<KeyedState> {
    let range = KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, index)?;
    let config = BackendConfig::new(MAX_PARALLELISM, range)?;
    let name = format!("p{parallelism}-t{index}");
    let storage = Arc::new(LocalDirStorage::open(dir.join("checkpoints").join(&name))?);
    let options = LsmBackendOptions::new(dir.join("work").join(&name))
        .write_buffer_size(1 << 20)
        .write_cache_size(1 << 20);
    let backend = LsmBackend::open(config, storage, options)?;
    Ok(KeyedState::new(backend))
}

/// Starts `parallelism` tasks and restores each from `handles` into its own range.
fn restored(
    dir: &Path,
    parallelism: u16,
    handles: &[SnapshotHandle],
) -> flowstate::Result<Vec<KeyedState>> {
    (0..parallelism)
        .map(|index| {
            let keyed = task(dir, parallelism, index)?;
            let range = KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, index)?;
            keyed.restore(handles, range)?;
            Ok(keyed)
        })
        .collect()
}

fn snapshot_all(
    tasks: &[KeyedState],
    checkpoint_id: u64,
) -> flowstate::Result<Vec<SnapshotHandle>> {
    tasks
        .iter()
        .map(|keyed| {
            let handle = keyed.snapshot(checkpoint_id)?.run()?;
            keyed.notify_checkpoint_complete(checkpoint_id)?;
            Ok(handle)
        })
        .collect()
}

/// Every key is readable in its owner only, with count `i % 97 + 1`; every stored entry of a
/// task lies in its key-group range; the tasks hold `KEYS` entries together.
fn check(tasks: &[KeyedState], parallelism: u16) -> flowstate::Result<()> {
    let counts = tasks
        .iter()
        .map(|keyed| keyed.value_state::<u64>("count"))
        .collect::<flowstate::Result<Vec<_>>>()?;
    for i in 0..KEYS {
        let key = key(i);
        let owner = owner(&key, parallelism);
        for (index, keyed) in tasks.iter().enumerate() {
            let set = keyed.set_current_key_bytes(&key);
            if index == owner {
                set?;
                assert_eq!(counts[index].value()?, Some(i % 97 + 1), "key-{i}");
            } else {
                assert!(
                    matches!(set, Err(Error::KeyGroupOutOfRange { .. })),
                    "task {index} accepted key-{i} of task {owner}"
                );
            }
        }
    }
    let mut entries = 0u64;
    for (index, keyed) in tasks.iter().enumerate() {
        let range = KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, index as u16)?;
        entries += keyed.with_backend(|backend| -> flowstate::Result<u64> {
            let count = backend.register(&StateDescriptor::new("count", StateKind::Value))?;
            let mut n = 0;
            for entry in backend.scan_prefix(count, &[])? {
                let (composite, _) = entry?;
                let key_group = key_group_of(&composite).expect("a composite key");
                assert!(
                    range.contains(key_group),
                    "task {index} holds key group {key_group}"
                );
                n += 1;
            }
            Ok(n)
        })??;
    }
    assert_eq!(entries, KEYS);
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir()?;

    let two = [task(dir.path(), 2, 0)?, task(dir.path(), 2, 1)?];
    let counts = [
        two[0].value_state::<u64>("count")?,
        two[1].value_state::<u64>("count")?,
    ];
    for i in 0..KEYS {
        let key = key(i);
        let owner = owner(&key, 2);
        two[owner].set_current_key_bytes(&key)?;
        counts[owner].update(&(i % 97 + 1))?;
    }
    check(&two, 2)?;
    let handles = snapshot_all(&two, 1)?;

    let three = restored(dir.path(), 3, &handles)?;
    check(&three, 3)?;
    let handles = snapshot_all(&three, 2)?;

    let one = restored(dir.path(), 1, &handles)?;
    check(&one, 1)?;

    println!(
        "rescale: {KEYS} keys, parallelism 2 -> 3 -> 1, every key in its owner in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
