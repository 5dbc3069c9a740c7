//! Canonical savepoints: written from one backend, restored into another backend kind and into
//! another parallelism, with identical contents.

use std::path::PathBuf;

use flowstate::keys::{DEFAULT_MAX_PARALLELISM, KeyGroupRange, composite_key, key_group_for_key};
use flowstate::savepoint::{read_savepoint_header, restore_savepoint, write_savepoint};
use flowstate::ttl::ManualClock;
use flowstate::{
    BackendConfig, Error, MemoryBackend, StateBackend, StateDescriptor, StateKind, TtlConfig,
};

type Contents = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

fn contents(backend: &mut dyn StateBackend) -> Contents {
    let states = backend.states();
    states
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let id = flowstate::StateId(i as u32);
            let entries = backend
                .scan_prefix(id, &[])
                .unwrap()
                .map(Result::unwrap)
                .collect();
            (d.name.clone(), entries)
        })
        .collect()
}

fn config(range: KeyGroupRange) -> BackendConfig {
    BackendConfig::new(DEFAULT_MAX_PARALLELISM, range).unwrap()
}

fn filled() -> MemoryBackend {
    let mut b = MemoryBackend::new(config(KeyGroupRange::all(DEFAULT_MAX_PARALLELISM)));
    let values = b
        .register(&StateDescriptor::new("values", StateKind::Value))
        .unwrap();
    let lists = b
        .register(&StateDescriptor::new("lists", StateKind::List))
        .unwrap();
    for i in 0..2000u32 {
        let key = i.to_le_bytes();
        let kg = key_group_for_key(&key, DEFAULT_MAX_PARALLELISM);
        b.put(values, &composite_key(kg, &key, b"", b""), &i.to_be_bytes())
            .unwrap();
        if i % 3 == 0 {
            b.merge(lists, &composite_key(kg, &key, b"w1", b""), &[1, i as u8])
                .unwrap();
        }
    }
    b
}

fn path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn round_trip_into_a_fresh_backend() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = filled();
    let stats = write_savepoint(&mut source, &path(&dir, "sp")).unwrap();
    assert_eq!(stats.states, 2);
    let mut target = MemoryBackend::new(config(KeyGroupRange::all(DEFAULT_MAX_PARALLELISM)));
    let restored = restore_savepoint(&mut target, &[path(&dir, "sp")]).unwrap();
    assert_eq!(restored.entries, stats.entries);
    assert_eq!(contents(&mut target), contents(&mut source));
    assert_eq!(
        read_savepoint_header(&path(&dir, "sp")).unwrap().states,
        source.states()
    );
}

#[test]
fn rescale_split_and_merge_through_savepoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = filled();
    write_savepoint(&mut source, &path(&dir, "all")).unwrap();
    let mut halves = Vec::new();
    for i in 0..2 {
        let range = KeyGroupRange::for_operator(DEFAULT_MAX_PARALLELISM, 2, i).unwrap();
        let mut half = MemoryBackend::new(config(range));
        restore_savepoint(&mut half, &[path(&dir, "all")]).unwrap();
        for (_, entries) in contents(&mut half) {
            for (k, _) in entries {
                assert!(range.contains(u16::from_be_bytes([k[0], k[1]])));
            }
        }
        write_savepoint(&mut half, &path(&dir, &format!("half{i}"))).unwrap();
        halves.push(path(&dir, &format!("half{i}")));
    }
    let mut merged = MemoryBackend::new(config(KeyGroupRange::all(DEFAULT_MAX_PARALLELISM)));
    restore_savepoint(&mut merged, &halves).unwrap();
    assert_eq!(contents(&mut merged), contents(&mut source));
}

#[test]
fn expired_entries_are_not_written_and_mismatches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let cfg = config(KeyGroupRange::all(DEFAULT_MAX_PARALLELISM)).with_clock(clock.clone());
    let mut b = MemoryBackend::new(cfg);
    let ttl = TtlConfig::new(std::time::Duration::from_millis(100));
    let id = b
        .register(&StateDescriptor::new("t", StateKind::Value).with_ttl(ttl))
        .unwrap();
    let old = composite_key(1, b"old", b"", b"");
    let new = composite_key(1, b"new", b"", b"");
    b.put(id, &old, &flowstate::ttl::wrap(900, b"x")).unwrap();
    b.put(id, &new, &flowstate::ttl::wrap(1_000, b"y")).unwrap();
    write_savepoint(&mut b, &path(&dir, "sp")).unwrap();
    // The target reads the same clock: on the wall clock every entry would be long expired.
    let mut target = MemoryBackend::new(
        config(KeyGroupRange::all(DEFAULT_MAX_PARALLELISM)).with_clock(clock.clone()),
    );
    restore_savepoint(&mut target, &[path(&dir, "sp")]).unwrap();
    let keys: Vec<_> = contents(&mut target)[0]
        .1
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(keys, vec![new]);

    let mut other = MemoryBackend::new(config(KeyGroupRange::all(DEFAULT_MAX_PARALLELISM)));
    other
        .register(&StateDescriptor::new("t", StateKind::Map))
        .unwrap();
    let err = restore_savepoint(&mut other, &[path(&dir, "sp")]).unwrap_err();
    assert!(matches!(err, Error::StateMismatch { .. }), "{err}");
}

#[test]
fn corrupt_file_leaves_backend_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = filled();
    write_savepoint(&mut source, &path(&dir, "sp")).unwrap();
    let mut bytes = std::fs::read(path(&dir, "sp")).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(path(&dir, "bad"), &bytes).unwrap();
    let mut target = filled();
    let before = contents(&mut target);
    let err = restore_savepoint(&mut target, &[path(&dir, "bad")]).unwrap_err();
    match &err {
        Error::Corruption { file, .. } => assert!(file.ends_with("bad"), "{err}"),
        other => panic!("expected corruption, got {other}"),
    }
    assert_eq!(contents(&mut target), before);
}

/// A job moves from the memory backend to the fs backend and back through savepoints, with
/// identical contents at every step.
#[test]
fn memory_to_fs_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut memory = filled();
    write_savepoint(&mut memory, &path(&dir, "from-memory")).unwrap();

    let storage =
        flowstate::checkpoint::storage::LocalDirStorage::open(dir.path().join("fs")).unwrap();
    let mut fs = flowstate::FsBackend::new(
        config(KeyGroupRange::all(DEFAULT_MAX_PARALLELISM)),
        std::sync::Arc::new(storage),
    )
    .unwrap();
    restore_savepoint(&mut fs, &[path(&dir, "from-memory")]).unwrap();
    assert_eq!(contents(&mut fs), contents(&mut memory));
    // The fs backend's own checkpoint round trip keeps them too.
    let handle = fs.snapshot(1).unwrap().run().unwrap();
    fs.restore(&[handle], KeyGroupRange::all(DEFAULT_MAX_PARALLELISM))
        .unwrap();
    write_savepoint(&mut fs, &path(&dir, "from-fs")).unwrap();

    let mut back = MemoryBackend::new(config(KeyGroupRange::all(DEFAULT_MAX_PARALLELISM)));
    restore_savepoint(&mut back, &[path(&dir, "from-fs")]).unwrap();
    assert_eq!(contents(&mut back), contents(&mut memory));
}
