//! FsBackend through real files: snapshot, mutate, restore; rescaling 1 -> 2 and 2 -> 1; a
//! restore into a smaller range reads only the files of the key groups it owns; TTL entries
//! expired at snapshot time are not written; retention and start-up clean-up.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use proptest::prelude::*;

use flowstate::backend::latest_snapshot_handle;
use flowstate::backend::{FsBackendOptions, SnapshotData};
use flowstate::checkpoint::storage::{CheckpointStorage, LocalDirStorage};
use flowstate::keys::{composite_key, key_group_for_key};
use flowstate::ttl::wrap;
use flowstate::{
    BackendConfig, Error, FsBackend, KeyGroupRange, ManualClock, MemoryBackend, StateBackend,
    StateDescriptor, StateKind, TtlConfig,
};
use support::{Contents, InterceptedStorage, StorageInterceptor, contents};

/// Records every path read from the storage it intercepts.
#[derive(Debug, Default)]
struct ReadLog {
    reads: Mutex<Vec<String>>,
}

impl StorageInterceptor for ReadLog {
    fn read_file(&self, inner: &dyn CheckpointStorage, path: &str) -> flowstate::Result<Vec<u8>> {
        self.reads.lock().push(path.to_string());
        inner.read_file(path)
    }
    fn read_range(
        &self,
        inner: &dyn CheckpointStorage,
        path: &str,
        offset: u64,
        len: u64,
    ) -> flowstate::Result<Vec<u8>> {
        self.reads.lock().push(path.to_string());
        inner.read_range(path, offset, len)
    }
}

/// A [`LocalDirStorage`] that records every path read.
type CountingStorage = InterceptedStorage<ReadLog>;

impl CountingStorage {
    fn new(dir: &std::path::Path) -> Arc<Self> {
        Arc::new(InterceptedStorage {
            inner: Arc::new(LocalDirStorage::open(dir).unwrap()),
            interceptor: ReadLog::default(),
        })
    }
}

fn storage(dir: &std::path::Path) -> Arc<dyn CheckpointStorage> {
    Arc::new(LocalDirStorage::open(dir).unwrap())
}

fn config(max_parallelism: u16, range: KeyGroupRange) -> BackendConfig {
    BackendConfig::new(max_parallelism, range).unwrap()
}

fn key(user: &str, max_parallelism: u16) -> Vec<u8> {
    composite_key(
        key_group_for_key(user.as_bytes(), max_parallelism),
        user.as_bytes(),
        b"",
        b"",
    )
}

/// Fills a backend with the users whose key group is in `range`: value, list and map entries.
fn filled(backend: &mut FsBackend, users: u32, max_parallelism: u16, range: KeyGroupRange) {
    let values = backend
        .register(&StateDescriptor::new("values", StateKind::Value))
        .unwrap();
    let lists = backend
        .register(&StateDescriptor::new("lists", StateKind::List))
        .unwrap();
    let maps = backend
        .register(&StateDescriptor::new("maps", StateKind::Map))
        .unwrap();
    for u in 0..users {
        let user = format!("user-{u}");
        let kg = key_group_for_key(user.as_bytes(), max_parallelism);
        if !range.contains(kg) {
            continue;
        }
        backend
            .put(values, &key(&user, max_parallelism), &u.to_le_bytes())
            .unwrap();
        backend
            .merge(lists, &key(&user, max_parallelism), &[1, u as u8])
            .unwrap();
        for m in 0..(u % 3) {
            let k = composite_key(kg, user.as_bytes(), b"ns", &m.to_be_bytes());
            backend.put(maps, &k, b"mapped").unwrap();
        }
    }
}

#[test]
fn snapshot_mutate_restore_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend =
        FsBackend::new(config(32, KeyGroupRange::all(32)), storage(dir.path())).unwrap();
    filled(&mut backend, 200, 32, KeyGroupRange::all(32));
    let before = contents(&mut backend);
    let task = backend.snapshot(1).unwrap();
    // The asynchronous part runs on another thread while processing goes on.
    let writer = std::thread::spawn(move || task.run());
    let values = backend
        .register(&StateDescriptor::new("values", StateKind::Value))
        .unwrap();
    for u in 0..300u32 {
        backend
            .put(values, &key(&format!("user-{u}"), 32), b"changed")
            .unwrap();
    }
    let handle = writer.join().unwrap().unwrap();
    assert_ne!(contents(&mut backend), before);
    let SnapshotData::Files { files, .. } = &handle.data else {
        panic!("files expected")
    };
    assert!(!files.is_empty() && files.len() <= 32);
    backend
        .restore(std::slice::from_ref(&handle), KeyGroupRange::all(32))
        .unwrap();
    assert_eq!(contents(&mut backend), before);

    // A fresh process restores the same from storage alone.
    let mut fresh =
        FsBackend::new(config(32, KeyGroupRange::all(32)), storage(dir.path())).unwrap();
    assert_eq!(fresh.restore_latest().unwrap(), Some(1));
    assert_eq!(contents(&mut fresh), before);

    // A memory handle is refused, and a checkpoint id is never reused.
    let mut memory = MemoryBackend::new(config(32, KeyGroupRange::all(32)));
    let memory_handle = memory.snapshot(1).unwrap().run().unwrap();
    assert!(matches!(
        backend.restore(&[memory_handle], KeyGroupRange::all(32)),
        Err(Error::BackendMismatch { .. })
    ));
    assert!(matches!(
        backend.snapshot(1).unwrap().run(),
        Err(Error::CheckpointFailed {
            checkpoint_id: 1,
            ..
        })
    ));
}

#[test]
fn rescale_one_to_two_reads_only_owned_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut source =
        FsBackend::new(config(64, KeyGroupRange::all(64)), storage(dir.path())).unwrap();
    filled(&mut source, 300, 64, KeyGroupRange::all(64));
    let all = contents(&mut source);
    let handle = source.snapshot(5).unwrap().run().unwrap();
    let SnapshotData::Files { files, .. } = &handle.data else {
        panic!("files expected")
    };
    assert!(
        files.iter().all(|f| f.key_groups.len() == 1),
        "one key group per file by default"
    );

    let mut union = Contents::new();
    for index in 0..2 {
        let range = KeyGroupRange::for_operator(64, 2, index).unwrap();
        let counting = CountingStorage::new(dir.path());
        let mut target = FsBackend::new(config(64, range), counting.clone()).unwrap();
        counting.interceptor.reads.lock().clear(); // the start-up scan read every _metadata
        target
            .restore(std::slice::from_ref(&handle), range)
            .unwrap();
        let mut reads = counting.interceptor.reads.lock().clone();
        reads.sort();
        let mut expected: Vec<String> = files
            .iter()
            .filter(|f| range.contains(f.key_groups.first()))
            .map(|f| f.path.clone())
            .collect();
        expected.push("chk-5/_metadata".to_string());
        expected.sort();
        assert_eq!(
            reads, expected,
            "operator {index} read files it does not own"
        );
        let part = contents(&mut target);
        let want: Contents = all
            .iter()
            .filter(|((_, k), _)| range.contains(u16::from_be_bytes([k[0], k[1]])))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(part, want);
        union.extend(part);
    }
    assert_eq!(union, all);
}

#[test]
fn rescale_two_to_one_merges_handles_from_two_roots() {
    let dirs = [
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    ];
    let mut combined =
        FsBackend::new(config(16, KeyGroupRange::all(16)), storage(dirs[2].path())).unwrap();
    filled(&mut combined, 120, 16, KeyGroupRange::all(16));
    let all = contents(&mut combined);
    let mut handles = Vec::new();
    for (index, dir) in dirs.iter().take(2).enumerate() {
        let range = KeyGroupRange::for_operator(16, 2, index as u16).unwrap();
        let mut part = FsBackend::new(config(16, range), storage(dir.path())).unwrap();
        filled(&mut part, 120, 16, range);
        handles.push(part.snapshot(20).unwrap().run().unwrap());
    }
    let mut merged =
        FsBackend::new(config(16, KeyGroupRange::all(16)), storage(dirs[2].path())).unwrap();
    merged.restore(&handles, KeyGroupRange::all(16)).unwrap();
    assert_eq!(contents(&mut merged), all);
}

#[test]
fn expired_ttl_entries_are_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let cfg = config(8, KeyGroupRange::all(8)).with_clock(clock.clone());
    let mut backend = FsBackend::new(cfg.clone(), storage(dir.path())).unwrap();
    let ttl = TtlConfig::new(Duration::from_millis(100));
    let state = backend
        .register(&StateDescriptor::new("ttl", StateKind::Value).with_ttl(ttl))
        .unwrap();
    for i in 0..50u32 {
        let ts = if i % 2 == 0 { 1_000 } else { 1_150 };
        backend
            .put(state, &key(&format!("k{i}"), 8), &wrap(ts, b"v"))
            .unwrap();
    }
    clock.set(1_120); // the even keys are expired now, the odd ones not.
    let handle = backend.snapshot(1).unwrap().run().unwrap();
    let mut restored = FsBackend::new(cfg, storage(dir.path())).unwrap();
    restored.restore(&[handle], KeyGroupRange::all(8)).unwrap();
    let got = contents(&mut restored);
    assert_eq!(got.len(), 25);
    assert!(
        got.values()
            .all(|v| flowstate::ttl::unwrap(v).unwrap().0 == 1_150)
    );
}

#[test]
fn retention_keeps_three_of_five_and_start_up_removes_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let store = storage(dir.path());
    let mut backend = FsBackend::new(config(4, KeyGroupRange::all(4)), store.clone()).unwrap();
    let values = backend
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    for id in 1..=5u64 {
        backend
            .put(values, &key("k", 4), &id.to_le_bytes())
            .unwrap();
        backend.snapshot(id).unwrap().run().unwrap();
    }
    assert_eq!(backend.completed_checkpoints(), [3, 4, 5]);
    let dirs: Vec<String> = store.children("").unwrap();
    assert_eq!(dirs, ["chk-3", "chk-4", "chk-5"]);

    // A crash while writing checkpoint 6: a data file and a temp _metadata, no _metadata.
    store
        .write_file("chk-6/kg-00000-00000", b"partial")
        .unwrap();
    store.write_file("chk-6/_metadata.tmp", b"partial").unwrap();
    // A reader that is not the writer finds the latest without cleaning anything up.
    let handle = latest_snapshot_handle(store.as_ref()).unwrap().unwrap();
    assert_eq!(handle.checkpoint_id, 5);
    assert!(store.exists("chk-6/_metadata.tmp").unwrap());
    let mut restarted = FsBackend::new(config(4, KeyGroupRange::all(4)), store.clone()).unwrap();
    assert_eq!(restarted.recovery_report().removed_incomplete, [6]);
    assert_eq!(store.children("").unwrap(), ["chk-3", "chk-4", "chk-5"]);
    assert_eq!(restarted.restore_latest().unwrap(), Some(5));
    let values = restarted
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    assert_eq!(
        restarted.get(values, &key("k", 4)).unwrap(),
        Some(5u64.to_le_bytes().to_vec())
    );

    let mut one = FsBackend::open(
        config(4, KeyGroupRange::all(4)),
        store.clone(),
        FsBackendOptions::default().retained_checkpoints(1),
    )
    .unwrap();
    one.snapshot(7).unwrap().run().unwrap();
    assert_eq!(store.children("").unwrap(), ["chk-7"]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Model-based: random writes, a snapshot, more random writes, then restore; the restored
    /// contents equal the model at snapshot time, clipped to the restore range.
    #[test]
    fn restore_equals_model_at_snapshot(
        before in proptest::collection::vec((0u8..40, proptest::option::of(any::<u16>())), 0..80),
        after in proptest::collection::vec((0u8..40, any::<u16>()), 0..40),
        (first, last) in (0u16..8).prop_flat_map(|f| (Just(f), f..8)),
        per_file in 1u16..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = FsBackend::open(
            config(8, KeyGroupRange::all(8)),
            storage(dir.path()),
            FsBackendOptions::default().key_groups_per_file(per_file),
        )
        .unwrap();
        let state = backend.register(&StateDescriptor::new("s", StateKind::Value)).unwrap();
        let mut model = BTreeMap::new();
        for (user, value) in before {
            let k = key(&format!("u{user}"), 8);
            match value {
                Some(v) => { backend.put(state, &k, &v.to_le_bytes()).unwrap(); model.insert(k, v.to_le_bytes().to_vec()); }
                None => { backend.delete(state, &k).unwrap(); model.remove(&k); }
            }
        }
        let handle = backend.snapshot(1).unwrap().run().unwrap();
        for (user, v) in after {
            backend.put(state, &key(&format!("u{user}"), 8), &v.to_le_bytes()).unwrap();
        }
        let range = KeyGroupRange::new(first, last).unwrap();
        backend.restore(&[handle], range).unwrap();
        let got: BTreeMap<Vec<u8>, Vec<u8>> = backend.scan_prefix(state, &[]).unwrap().map(Result::unwrap).collect();
        model.retain(|k, _| range.contains(u16::from_be_bytes([k[0], k[1]])));
        prop_assert_eq!(got, model);
    }
}
