//! The fs backend's full snapshot on the reference job's state shape, for instruction counting:
//! `valgrind --tool=callgrind --toggle-collect='*fs_snapshot::checkpoint_phase*'
//! target/release/examples/fs_snapshot [keys]` counts only the snapshots (sync and async parts:
//! sort each key group, encode, write). One task of a parallelism-2 job: key groups 0..=63 of
//! 128, keys `key-<i>` (default 500k) with the job's postcard `(count, sum)` values; three
//! checkpoints, a tenth of the keys updated between them. Prints each checkpoint's time and
//! bytes, then restores the newest checkpoint into a new backend and checks every entry (exits
//! non-zero on a wrong one).

use std::sync::Arc;
use std::time::Instant;

use flowstate::backend::SnapshotData;
use flowstate::keys::{composite_key, key_group_for_key};
use flowstate::{
    BackendConfig, FsBackend, KeyGroupRange, LocalDirStorage, StateBackend, StateDescriptor,
    StateKind,
};

const MAX_PARALLELISM: u16 = 128;

fn main() -> flowstate::Result<()> {
    let keys: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500_000);
    let dir = tempfile::tempdir().map_err(|e| flowstate::Error::io("tempdir", e))?;
    let storage = Arc::new(LocalDirStorage::open(dir.path())?);
    let range = KeyGroupRange::new(0, MAX_PARALLELISM / 2 - 1)?;
    let config = BackendConfig::new(MAX_PARALLELISM, range)?;
    let mut backend = FsBackend::new(config.clone(), storage.clone())?;
    let descriptor = StateDescriptor::new("count_sum", StateKind::Value);
    let state = backend.register(&descriptor)?;
    let mut written = 0u64;
    let mut i = 0u64;
    while written < keys {
        let user = format!("key-{i}").into_bytes();
        i += 1;
        let key_group = key_group_for_key(&user, MAX_PARALLELISM);
        if !range.contains(key_group) {
            continue;
        }
        backend.put(
            state,
            &composite_key(key_group, &user, b"", b""),
            &value(i)?,
        )?;
        written += 1;
    }
    const CHECKPOINTS: u64 = 3;
    for checkpoint_id in 1..=CHECKPOINTS {
        let started = Instant::now();
        let bytes = checkpoint_phase(&mut backend, checkpoint_id)?;
        println!(
            "checkpoint {checkpoint_id}: {:.1} ms, {bytes} bytes",
            started.elapsed().as_secs_f64() * 1e3
        );
        assert!(bytes > 0, "checkpoint {checkpoint_id} wrote nothing");
        // A tenth of the keys change before the next one.
        for k in (0..i).step_by(10) {
            let user = format!("key-{k}").into_bytes();
            let key_group = key_group_for_key(&user, MAX_PARALLELISM);
            if range.contains(key_group) {
                let key = composite_key(key_group, &user, b"", b"");
                backend.put(state, &key, &updated(checkpoint_id))?;
            }
        }
    }

    // The newest checkpoint holds every key, a tenth of them as updated after checkpoint 2.
    let mut restored = FsBackend::new(config, storage)?;
    assert_eq!(restored.restore_latest()?, Some(CHECKPOINTS));
    let state = restored.register(&descriptor)?;
    let mut checked = 0u64;
    for k in 0..i {
        let user = format!("key-{k}").into_bytes();
        let key_group = key_group_for_key(&user, MAX_PARALLELISM);
        if !range.contains(key_group) {
            continue;
        }
        let expected = if k % 10 == 0 {
            updated(CHECKPOINTS - 1)
        } else {
            value(k + 1)?
        };
        let stored = restored.get(state, &composite_key(key_group, &user, b"", b""))?;
        assert_eq!(stored, Some(expected), "key-{k}");
        checked += 1;
    }
    assert_eq!(checked, keys);
    let entries = restored.scan_prefix(state, &[])?.count() as u64;
    assert_eq!(entries, keys, "entries in the restored state");
    println!("restored checkpoint {CHECKPOINTS}: {checked} keys checked");
    Ok(())
}

/// The value first written for the `i`-th key (1-based): the job's postcard `(count, sum)`.
fn value(i: u64) -> flowstate::Result<Vec<u8>> {
    postcard::to_allocvec(&(i % 7 + 1, i128::from(i as i64) - 500))
        .map_err(|e| flowstate::Error::Serialization(e.to_string()))
}

/// The value of an updated key after checkpoint `checkpoint_id`.
fn updated(checkpoint_id: u64) -> Vec<u8> {
    vec![checkpoint_id as u8, 2]
}

/// One whole checkpoint (sync part, then the async part on this thread); returns its bytes.
#[inline(never)]
fn checkpoint_phase(backend: &mut FsBackend, checkpoint_id: u64) -> flowstate::Result<u64> {
    let handle = backend.snapshot(checkpoint_id)?.run()?;
    Ok(match handle.data {
        SnapshotData::Files { files, .. } => files.iter().map(|f| f.size).sum(),
        SnapshotData::Memory(_) => 0,
    })
}
