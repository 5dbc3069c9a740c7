//! The LSM backend's write-back cache against a model: every checkpoint holds exactly the
//! writes before its barrier, whether its frozen batch reaches the store in the checkpoint's
//! asynchronous part, on the operator thread first (a merge, a prefix scan or delete, a spill of
//! a tiny cache), or while the operator keeps reading and writing on another thread; reads see
//! every write at once; a snapshot task dropped without running loses nothing.
//!
//! Randomized: reads `FLOWSTATE_SEED` (printed); `FLOWSTATE_CACHE_CASES=N` runs more cases.

mod support;

use std::path::Path;
use std::sync::Arc;

use flowstate::backend::lsm::LsmBackendOptions;
use flowstate::checkpoint::storage::{CheckpointStorage, LocalDirStorage};
use flowstate::{
    KeyGroupRange, LsmBackend, SnapshotHandle, StateBackend, StateDescriptor, StateId, StateKind,
};
use support::{Contents, MAX_PARALLELISM, config, contents, key, mix, seed};

fn backend(dir: &Path, cache: usize) -> LsmBackend {
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::open(dir.join("checkpoints")).unwrap());
    let options = LsmBackendOptions::default()
        .write_cache_size(cache)
        .write_buffer_size(64 << 10);
    LsmBackend::open(
        config(KeyGroupRange::all(MAX_PARALLELISM)),
        storage,
        options.working_dir(dir.join("work")),
    )
    .unwrap()
}

struct States {
    value: StateId,
    list: StateId,
}

fn register(b: &mut LsmBackend) -> States {
    States {
        value: b
            .register(&StateDescriptor::new("v", StateKind::Value))
            .unwrap(),
        list: b
            .register(&StateDescriptor::new("l", StateKind::List))
            .unwrap(),
    }
}

/// `count` random operations on `b` and `model`; reads are checked against the model. With
/// `store_ops`, merges and prefix deletes (which go to the store) are among them.
fn random_ops(
    b: &mut LsmBackend,
    s: &States,
    model: &mut Contents,
    rng: &mut u64,
    count: usize,
    store_ops: bool,
) {
    for _ in 0..count {
        *rng = mix(*rng);
        let k = key(*rng % 400);
        match (*rng >> 20) % 16 {
            5 | 6 => {
                // Read-modify-write: append one byte to what is there (absent: empty).
                let byte = (*rng >> 40) as u8;
                let mut seen = None;
                b.read_modify_write(s.value, &k, &mut |old, out| {
                    seen = Some(old.map(<[u8]>::to_vec));
                    out.extend_from_slice(old.unwrap_or_default());
                    out.push(byte);
                    Ok(())
                })
                .unwrap();
                let mut expected = model.get(&("v".to_string(), k.clone())).cloned();
                assert_eq!(seen, Some(expected.clone()), "read-modify-write of {k:?}");
                expected.get_or_insert_with(Vec::new).push(byte);
                model.insert(("v".into(), k), expected.unwrap_or_default());
            }
            0..=4 => {
                let value = (*rng >> 32).to_le_bytes()[..1 + (*rng % 7) as usize].to_vec();
                b.put(s.value, &k, &value).unwrap();
                model.insert(("v".into(), k), value);
            }
            7 | 8 => {
                b.delete(s.value, &k).unwrap();
                model.remove(&("v".to_string(), k));
            }
            9..=12 => {
                let expected = model.get(&("v".to_string(), k.clone())).cloned();
                assert_eq!(b.get(s.value, &k).unwrap(), expected, "read of {k:?}");
            }
            13 | 14 if store_ops => {
                let operand = vec![(*rng >> 40) as u8; 2];
                b.merge(s.list, &k, &operand).unwrap();
                model
                    .entry(("l".into(), k))
                    .or_default()
                    .extend_from_slice(&operand);
            }
            15 if store_ops => {
                // Everything of one key group.
                let prefix = k[..2].to_vec();
                b.delete_prefix(s.value, &prefix).unwrap();
                model.retain(|(state, key), _| state != "v" || !key.starts_with(&prefix));
            }
            _ => {
                let expected = model.get(&("v".to_string(), k.clone())).cloned();
                assert_eq!(b.get(s.value, &k).unwrap(), expected, "read of {k:?}");
            }
        }
    }
}

/// What a fresh backend without a cache restores from `handle`.
fn restored(dir: &Path, handle: &SnapshotHandle) -> Contents {
    let mut fresh = backend(dir, 0);
    fresh
        .restore(
            std::slice::from_ref(handle),
            KeyGroupRange::all(MAX_PARALLELISM),
        )
        .unwrap();
    contents(&mut fresh)
}

#[test]
fn checkpoints_hold_exactly_the_writes_before_their_barrier() {
    let mut rng = seed("lsm_write_cache");
    let cases: u64 = std::env::var("FLOWSTATE_CACHE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    for case in 0..cases {
        let dir = tempfile::tempdir().unwrap();
        // A tiny cache evicts and spills all the time; a large one never does.
        let cache = if case % 2 == 0 { 700 } else { 4 << 20 };
        let mut b = backend(dir.path(), cache);
        let s = register(&mut b);
        let mut model = Contents::new();
        for id in 1..=5 {
            random_ops(&mut b, &s, &mut model, &mut rng, 300, true);
            let expected = model.clone();
            let task = b.snapshot(id).unwrap();
            rng = mix(rng);
            let handle = match rng % 4 {
                // The asynchronous part applies the batch.
                0 => task.run().unwrap(),
                // Point writes and reads go on first (the batch stays frozen, reads see it).
                1 => {
                    random_ops(&mut b, &s, &mut model, &mut rng, 200, false);
                    task.run().unwrap()
                }
                // A merge or prefix delete applies the batch on the operator thread first.
                2 => {
                    random_ops(&mut b, &s, &mut model, &mut rng, 200, true);
                    task.run().unwrap()
                }
                // Both at once.
                _ => {
                    let runner = std::thread::spawn(move || task.run().unwrap());
                    random_ops(&mut b, &s, &mut model, &mut rng, 400, true);
                    runner.join().unwrap()
                }
            };
            let scratch = tempfile::tempdir().unwrap();
            assert_eq!(
                restored(scratch.path(), &handle),
                expected,
                "case {case} (cache {cache} B), checkpoint {id}"
            );
        }
        assert_eq!(contents(&mut b), model, "case {case}: live contents");
    }
}

#[test]
fn a_dropped_snapshot_task_loses_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = backend(dir.path(), 1 << 20);
    let s = register(&mut b);
    b.put(s.value, &key(1), b"one").unwrap();
    drop(b.snapshot(1).unwrap());
    assert_eq!(b.get(s.value, &key(1)).unwrap(), Some(b"one".to_vec()));
    b.put(s.value, &key(2), b"two").unwrap();
    let handle = b.snapshot(2).unwrap().run().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut expected = Contents::new();
    expected.insert(("v".into(), key(1)), b"one".to_vec());
    expected.insert(("v".into(), key(2)), b"two".to_vec());
    assert_eq!(restored(scratch.path(), &handle), expected);
    assert_eq!(contents(&mut b), expected);
}

#[test]
fn the_cache_stays_within_its_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let capacity = 64 << 10;
    let mut b = backend(dir.path(), capacity);
    let s = register(&mut b);
    for i in 0..20_000 {
        b.put(s.value, &key(i), &[7; 20]).unwrap();
        let (reads, writes) = b.write_cache_bytes();
        assert!(reads <= capacity, "cached reads {reads} B > {capacity} B");
        assert!(writes <= capacity / 2 + 200, "writes {writes} B over half");
    }
    // Spilled writes are in the store, cached or not.
    for i in (0..20_000).step_by(97) {
        assert_eq!(b.get(s.value, &key(i)).unwrap(), Some(vec![7; 20]));
    }
    b.flush_write_cache().unwrap();
    assert_eq!(b.write_cache_bytes().1, 0);
}
