//! The native half of the Flink backend without a JVM: the calls the Java side makes, checked
//! against a `BTreeMap` model, snapshots staged and restored the way the Java side moves their
//! files (rescaling included), option errors, and open/close without leaking memory.

use std::collections::BTreeMap;
use std::path::Path;

use flowstate_flink::store::{FlinkStore, StagedCheckpoint, StoreOptions};
use proptest::prelude::*;

const MAX_PARALLELISM: u32 = 128;

fn options() -> StoreOptions {
    // Small buffers so that flushes and compactions happen within a test's writes.
    StoreOptions::parse("write-buffer-size=65536\nblock-cache-size=1048576\nwrite-cache-size=0")
        .unwrap()
}

/// A composite key as the Java side builds it: key group, varint lengths, key, namespace.
fn composite(key_group: u16, key: &[u8], namespace: &[u8], user_key: &[u8]) -> Vec<u8> {
    assert!(key.len() < 128 && namespace.len() < 128);
    let mut out = key_group.to_be_bytes().to_vec();
    out.push(key.len() as u8);
    out.extend_from_slice(key);
    out.push(namespace.len() as u8);
    out.extend_from_slice(namespace);
    out.extend_from_slice(user_key);
    out
}

/// Decodes a packed scan chunk.
fn unpack(chunk: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    let take = |pos: &mut usize| {
        let len = u32::from_be_bytes(chunk[*pos..*pos + 4].try_into().unwrap()) as usize;
        let part = chunk[*pos + 4..*pos + 4 + len].to_vec();
        *pos += 4 + len;
        part
    };
    while pos < chunk.len() {
        let k = take(&mut pos);
        let v = take(&mut pos);
        out.push((k, v));
    }
    out
}

/// Every entry under `prefix`, read in chunks of `chunk` entries as the Java iterators do.
fn scan_all(
    store: &mut FlinkStore,
    state: u32,
    prefix: &[u8],
    chunk: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut all: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    loop {
        let after = all.last().map(|(k, _)| k.clone());
        let packed = store
            .scan(state, prefix, after.as_deref(), chunk, 1 << 20)
            .unwrap();
        if packed.is_empty() {
            return all;
        }
        all.extend(unpack(&packed));
    }
}

/// Copies a staged checkpoint's files into `dir` under their listed paths (the Java side's
/// upload and download).
fn download(staged: &StagedCheckpoint, dir: &Path) {
    for file in &staged.files {
        let target = dir.join(&file.path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(staged.root.join(&file.path), &target).unwrap();
        assert_eq!(
            std::fs::metadata(&target).unwrap().len(),
            file.size,
            "{}",
            file.path
        );
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put(u16, u8, u8, Vec<u8>),
    Delete(u16, u8, u8),
    Append(u16, u8, u8, Vec<u8>),
    DeletePrefix(u16, u8),
    Scan(u16, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let kg = 0u16..8;
    let key = 0u8..6;
    let user = 0u8..4;
    let value = proptest::collection::vec(any::<u8>(), 0..12);
    prop_oneof![
        4 => (kg.clone(), key.clone(), user.clone(), value.clone()).prop_map(|(g, k, u, v)| Op::Put(g, k, u, v)),
        2 => (kg.clone(), key.clone(), user.clone()).prop_map(|(g, k, u)| Op::Delete(g, k, u)),
        2 => (kg.clone(), key.clone(), user).prop_map(|(g, k, u)| Op::Append(g, k, u, vec![u])),
        1 => (kg.clone(), key.clone()).prop_map(|(g, k)| Op::DeletePrefix(g, k)),
        1 => (kg, key).prop_map(|(g, k)| Op::Scan(g, k)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Puts, deletes, list appends, prefix deletes and chunked prefix scans give the model's
    /// answers, before and after a snapshot restored into a fresh store.
    #[test]
    fn calls_match_a_model(ops in proptest::collection::vec(op(), 1..120), chunk in 1usize..5) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FlinkStore::open(&dir.path().join("a"), MAX_PARALLELISM, 0, 127, &options()).unwrap();
        let state = store.register("s", 2, None).unwrap();
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for op in &ops {
            match op {
                Op::Put(g, k, u, v) => {
                    let key = composite(*g, &[*k], b"ns", &[*u]);
                    store.put(state, &key, v).unwrap();
                    model.insert(key, v.clone());
                }
                Op::Delete(g, k, u) => {
                    let key = composite(*g, &[*k], b"ns", &[*u]);
                    store.delete(state, &key).unwrap();
                    model.remove(&key);
                }
                Op::Append(g, k, u, frame) => {
                    let key = composite(*g, &[*k], b"ns", &[*u]);
                    store.merge(state, &key, frame).unwrap();
                    model.entry(key).or_default().extend_from_slice(frame);
                }
                Op::DeletePrefix(g, k) => {
                    let prefix = composite(*g, &[*k], b"ns", &[]);
                    store.delete_prefix(state, &prefix).unwrap();
                    model.retain(|key, _| !key.starts_with(&prefix));
                }
                Op::Scan(g, k) => {
                    let prefix = composite(*g, &[*k], b"ns", &[]);
                    let expected: Vec<_> = model
                        .iter()
                        .filter(|(key, _)| key.starts_with(&prefix))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    prop_assert_eq!(scan_all(&mut store, state, &prefix, chunk), expected);
                }
            }
        }
        for (key, value) in &model {
            prop_assert_eq!(store.get(state, key).unwrap(), Some(value.clone()));
        }
        let expected: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(scan_all(&mut store, state, &[], chunk), expected.clone());

        let staged = store.snapshot(1).unwrap().run().unwrap();
        let downloaded = dir.path().join("download");
        download(&staged, &downloaded);
        let mut restored = FlinkStore::open(&dir.path().join("b"), MAX_PARALLELISM, 0, 127, &options()).unwrap();
        restored.restore(std::slice::from_ref(&downloaded), 0, 127).unwrap();
        let state = restored.register("s", 2, None).unwrap();
        prop_assert_eq!(scan_all(&mut restored, state, &[], chunk), expected);
    }
}

#[test]
fn rescale_restores_exactly_the_owned_key_groups() {
    let dir = tempfile::tempdir().unwrap();
    // Two tasks of parallelism 2, then one of parallelism 3 owning the middle third.
    let halves = [(0u32, 63u32), (64, 127)];
    let mut roots = Vec::new();
    let mut expected = BTreeMap::new();
    for (i, (first, last)) in halves.iter().enumerate() {
        let mut store = FlinkStore::open(
            &dir.path().join(format!("t{i}")),
            MAX_PARALLELISM,
            *first,
            *last,
            &options(),
        )
        .unwrap();
        let state = store.register("count", 0, None).unwrap();
        for g in *first..=*last {
            for k in 0..20u8 {
                let key = composite(g as u16, &[k], &[], &[]);
                let value = vec![k; 40];
                store.put(state, &key, &value).unwrap();
                expected.insert(key, value);
            }
        }
        // Two checkpoints: the second shares the first one's files.
        store.snapshot(1).unwrap().run().unwrap();
        store.notify_checkpoint_complete(1).unwrap();
        let staged = store.snapshot(2).unwrap().run().unwrap();
        let root = dir.path().join(format!("download-{i}"));
        download(&staged, &root);
        roots.push(root);
    }
    let (first, last) = (43u32, 85u32);
    let mut store = FlinkStore::open(
        &dir.path().join("new"),
        MAX_PARALLELISM,
        first,
        last,
        &options(),
    )
    .unwrap();
    store.restore(&roots, first, last).unwrap();
    let state = store.register("count", 0, None).unwrap();
    let owned: Vec<_> = expected
        .into_iter()
        .filter(|(k, _)| (first..=last).contains(&u32::from(u16::from_be_bytes([k[0], k[1]]))))
        .collect();
    assert_eq!(owned.len(), 43 * 20);
    assert_eq!(scan_all(&mut store, state, &[], 100), owned);
    // A key of a group it does not own is refused, not stored.
    let foreign = composite(0, b"x", &[], &[]);
    assert!(store.put(state, &foreign, b"v").is_err());
}

#[test]
fn staged_listing_names_metadata_last_and_shares_ssts() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = FlinkStore::open(dir.path(), MAX_PARALLELISM, 0, 127, &options()).unwrap();
    let state = store.register("v", 0, None).unwrap();
    for i in 0..5000u32 {
        let key = composite((i % 128) as u16, &i.to_be_bytes(), &[], &[]);
        store.put(state, &key, &[7u8; 100]).unwrap();
    }
    let first = store.snapshot(1).unwrap().run().unwrap();
    store.notify_checkpoint_complete(1).unwrap();
    assert_eq!(first.files.last().unwrap().path, "chk-1/_metadata");
    assert!(
        first
            .files
            .iter()
            .any(|f| f.shared && f.path.starts_with("shared/"))
    );
    let text = first.to_text();
    assert!(text.starts_with("1\t"), "{text}");
    assert_eq!(text.lines().count(), first.files.len() + 1);
    // Nothing changed: the next checkpoint lists the same shared files.
    let second = store.snapshot(2).unwrap().run().unwrap();
    let shared = |c: &StagedCheckpoint| -> Vec<String> {
        c.files
            .iter()
            .filter(|f| f.shared)
            .map(|f| f.path.clone())
            .collect()
    };
    assert_eq!(shared(&first), shared(&second));
}

#[test]
fn bad_options_and_arguments_are_errors_naming_them() {
    let err = StoreOptions::parse("write-buffer-size=lots")
        .unwrap_err()
        .to_string();
    assert!(err.contains("write-buffer-size"), "{err}");
    let err = StoreOptions::parse("no-such-option=1")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-option"), "{err}");
    let err = StoreOptions::parse("background-work=maybe")
        .unwrap_err()
        .to_string();
    assert!(err.contains("background-work"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = FlinkStore::open(dir.path(), 40000, 0, 1, &options())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("40000"), "{err}");
    let mut store = FlinkStore::open(dir.path(), MAX_PARALLELISM, 0, 127, &options()).unwrap();
    let err = store.register("s", 9, None).unwrap_err().to_string();
    assert!(err.contains("kind 9"), "{err}");
    // A restore from a directory without a checkpoint says so.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = store.restore(&[empty], 0, 127).unwrap_err().to_string();
    assert!(err.contains("no checkpoint"), "{err}");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A Flink TTL value: `last_access_ms i64 BE | payload`.
fn ttl_value(timestamp_ms: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = timestamp_ms.to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Flink's TTL values expire in compaction (values and list elements), and a restored state
/// takes the TTL duration its new registration names.
#[test]
fn compaction_drops_expired_flink_ttl_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut store =
        FlinkStore::open(&dir.path().join("a"), MAX_PARALLELISM, 0, 127, &options()).unwrap();
    let values = store.register("v", 0, Some(60_000)).unwrap();
    let lists = store.register("l", 1, Some(60_000)).unwrap();
    let now = now_ms();
    for i in 0..100u8 {
        let old = composite(1, &[i], &[], &[]);
        store
            .put(values, &old, &ttl_value(now - 120_000, b"old"))
            .unwrap();
        let fresh = composite(2, &[i], &[], &[]);
        store
            .put(values, &fresh, &ttl_value(now, b"fresh"))
            .unwrap();
        // One expired and one live element per list.
        let mut frames = Vec::new();
        for ts in [now - 120_000, now] {
            let element = ttl_value(ts, &[i]);
            frames.push(element.len() as u8);
            frames.extend_from_slice(&element);
        }
        store.merge(lists, &old, &frames).unwrap();
    }
    store.compact().unwrap();
    let kept = scan_all(&mut store, values, &[], 64);
    assert_eq!(kept.len(), 100);
    assert!(kept.iter().all(|(k, _)| k[1] == 2), "only the fresh values");
    let lists_kept = scan_all(&mut store, lists, &[], 64);
    assert_eq!(lists_kept.len(), 100);
    assert!(
        lists_kept.iter().all(|(_, v)| v.len() == 1 + 8 + 1),
        "one element left per list"
    );

    // Restored, then registered with a 10 s TTL: values 30 s old expire.
    let staged = store.snapshot(1).unwrap().run().unwrap();
    let downloaded = dir.path().join("download");
    download(&staged, &downloaded);
    let mut restored =
        FlinkStore::open(&dir.path().join("b"), MAX_PARALLELISM, 0, 127, &options()).unwrap();
    restored.restore(&[downloaded], 0, 127).unwrap();
    let values = restored.register("v", 0, Some(10_000)).unwrap();
    let key = composite(3, b"k", &[], &[]);
    restored
        .put(values, &key, &ttl_value(now - 30_000, b"half a minute"))
        .unwrap();
    restored.compact().unwrap();
    assert_eq!(restored.get(values, &key).unwrap(), None);
    // A state without TTL stays without one when registered with a TTL: nothing is dropped.
    let plain = restored.register("p", 0, None).unwrap();
    restored
        .put(plain, &key, &ttl_value(0, b"ancient"))
        .unwrap();
    assert_eq!(restored.register("p", 0, Some(1)).unwrap(), plain);
    restored.compact().unwrap();
    assert!(restored.get(plain, &key).unwrap().is_some());
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Opening and closing 1,000 stores (with a write and a checkpoint each) leaves the resident
/// set flat: no store, thread or cache outlives its close.
#[test]
fn open_close_a_thousand_stores_keeps_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let cycle = |i: usize| {
        let work = dir.path().join(format!("s{}", i % 4));
        let mut store = FlinkStore::open(&work, MAX_PARALLELISM, 0, 127, &options()).unwrap();
        let state = store.register("v", 0, None).unwrap();
        store
            .put(state, &composite(1, b"k", &[], &[]), &[1u8; 1000])
            .unwrap();
        store.snapshot(1).unwrap().run().unwrap();
        drop(store);
        std::fs::remove_dir_all(&work).unwrap();
    };
    for i in 0..100 {
        cycle(i);
    }
    let before = rss_bytes();
    for i in 100..1000 {
        cycle(i);
    }
    let after = rss_bytes();
    assert!(
        after < before + (16 << 20),
        "RSS grew from {before} to {after} bytes over 900 open/close cycles"
    );
}
