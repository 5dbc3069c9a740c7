//! Tests of `inspect.rs` on directories written by a real FsBackend and a real LsmBackend.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::backend::lsm::LsmBackendOptions;
use crate::backend::{BackendConfig, FsBackend, LsmBackend, StateBackend, StateDescriptor};
use crate::backend::{StateId, StateKind};
use crate::checkpoint::storage::LocalDirStorage;
use crate::keys::{KeyGroupRange, composite_key, key_group_for_key};

const MAX_PARALLELISM: u16 = 8;

fn config() -> BackendConfig {
    BackendConfig::new(MAX_PARALLELISM, KeyGroupRange::all(MAX_PARALLELISM)).unwrap()
}

/// Puts `count` keys starting at `first`, with values naming `round`.
fn put_keys(backend: &mut dyn StateBackend, state: StateId, first: u32, count: u32, round: u64) {
    for k in first..first + count {
        let user = format!("user-{k}");
        let kg = key_group_for_key(user.as_bytes(), MAX_PARALLELISM);
        let key = composite_key(kg, user.as_bytes(), b"", b"");
        let value = format!("value of {k} in round {round} ........................");
        backend.put(state, &key, value.as_bytes()).unwrap();
    }
}

fn completed(inventory: &Inventory) -> Vec<&CheckpointSummary> {
    inventory.completed().collect()
}

fn listing(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), meta.len()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn utc_time_formats_known_instants() {
    assert_eq!(utc_time(0), "1970-01-01 00:00:00.000 UTC");
    assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00.000 UTC");
    assert_eq!(utc_time(1_700_000_000_123), "2023-11-14 22:13:20.123 UTC");
    // The largest timestamp does not overflow.
    assert!(utc_time(u64::MAX).ends_with(" UTC"));
}

#[test]
fn fs_checkpoints_own_every_file_and_write_it_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalDirStorage::open(dir.path()).unwrap());
    let mut backend = FsBackend::new(config(), storage.clone()).unwrap();
    let values = backend
        .register(&StateDescriptor::new("values", StateKind::Value))
        .unwrap();
    for round in 1..=3u64 {
        put_keys(&mut backend, values, 0, 40, round);
        backend.snapshot(round).unwrap().run().unwrap();
    }
    storage.write_file("chk-4/kg-00000-00000", b"half").unwrap();
    let before = listing(dir.path());

    let inventory = inspect_storage(storage.as_ref()).unwrap();
    assert_eq!(listing(dir.path()), before, "inspect changed the directory");
    assert!(inventory.is_sound());
    let summaries = completed(&inventory);
    assert_eq!(summaries.len(), 3);
    for s in &summaries {
        assert_eq!(s.backend, BackendKind::Fs);
        assert_eq!(s.states, ["values"]);
        assert_eq!(
            s.new_bytes, s.full_bytes,
            "a full snapshot writes everything"
        );
        assert_eq!(s.new_file_count, s.file_count);
        assert!(s.full_bytes > 0);
    }
    assert!(inventory.files.iter().all(|f| f.checkpoints.len() == 1));
    assert_eq!(
        inventory.checkpoints.last(),
        Some(&InspectedCheckpoint::Incomplete { checkpoint_id: 4 })
    );
    let text = inventory.render(false);
    assert!(text.contains("chk-4     INCOMPLETE"), "{text}");
    assert!(
        text.contains("3 completed, 1 incomplete, 0 damaged"),
        "{text}"
    );
    let every = inventory.render(true);
    assert_eq!(
        every.lines().filter(|l| l.contains("chk-2/kg-")).count(),
        summaries[1].file_count,
        "{every}"
    );

    let diff = diff_checkpoints(storage.as_ref(), 1, 3).unwrap();
    assert!(diff.in_both.is_empty());
    assert_eq!(total_bytes(&diff.only_in_from), summaries[0].full_bytes);
    let e = diff_checkpoints(storage.as_ref(), 1, 4).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
}

#[test]
fn lsm_checkpoints_share_files_and_write_only_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalDirStorage::open(dir.path().join("checkpoints")).unwrap());
    let mut backend = LsmBackend::open(
        config(),
        storage.clone(),
        LsmBackendOptions::new(dir.path().join("work")),
    )
    .unwrap();
    let values = backend
        .register(&StateDescriptor::new("values", StateKind::Value))
        .unwrap();
    let counts = backend
        .register(&StateDescriptor::new("counts", StateKind::Value))
        .unwrap();
    put_keys(&mut backend, values, 0, 500, 0);
    for round in 1..=5u64 {
        put_keys(&mut backend, counts, (round as u32) * 10, 10, round);
        backend.snapshot(round).unwrap().run().unwrap();
    }
    let inventory = inspect_storage(storage.as_ref()).unwrap();
    let summaries = completed(&inventory);
    let ids: Vec<u64> = summaries.iter().map(|s| s.checkpoint_id).collect();
    assert_eq!(ids, backend.completed_checkpoints());
    assert_eq!(ids.len(), 3, "default retention keeps 3");
    // The oldest retained checkpoint has no predecessor in the directory: all its files count
    // as new. Every later one writes only its new flush output.
    assert_eq!(summaries[0].new_bytes, summaries[0].full_bytes);
    for s in &summaries {
        assert_eq!(s.backend, BackendKind::Lsm);
        assert_eq!(s.states, ["values", "counts"]);
    }
    for s in summaries.iter().skip(1) {
        assert!(
            s.new_bytes < s.full_bytes,
            "chk-{}: new {} full {}",
            s.checkpoint_id,
            s.new_bytes,
            s.full_bytes
        );
    }
    let max_refs = inventory
        .files
        .iter()
        .map(|f| f.checkpoints.len())
        .max()
        .unwrap();
    assert_eq!(
        max_refs, 3,
        "the first flush output is in every retained checkpoint"
    );
    for f in inventory.files.iter().filter(|f| f.shared) {
        assert_eq!(
            f.checkpoints.len(),
            backend.shared_references(&f.path) as usize,
            "{}",
            f.path
        );
    }
    let text = inventory.render(false);
    assert!(text.contains("files by reference count"), "{text}");
    assert!(text.contains("states: values,counts"), "{text}");

    let (a, b) = (ids[0], ids[2]);
    let diff = diff_checkpoints(storage.as_ref(), a, b).unwrap();
    assert!(!diff.in_both.is_empty());
    assert!(!diff.only_in_to.is_empty());
    let full_b = summaries[2].full_bytes;
    assert_eq!(
        total_bytes(&diff.in_both) + total_bytes(&diff.only_in_to),
        full_b
    );
    let text = diff.render();
    assert!(text.contains(&format!("only in chk-{b}: ")), "{text}");
    assert!(text.contains("shared: "), "{text}");
}

#[test]
fn damaged_metadata_is_named_and_the_rest_still_listed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalDirStorage::open(dir.path()).unwrap());
    let mut backend = FsBackend::new(config(), storage.clone()).unwrap();
    let values = backend
        .register(&StateDescriptor::new("values", StateKind::Value))
        .unwrap();
    for round in 1..=2u64 {
        put_keys(&mut backend, values, 0, 10, round);
        backend.snapshot(round).unwrap().run().unwrap();
    }
    let meta = dir.path().join("chk-1/_metadata");
    let mut bytes = std::fs::read(&meta).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&meta, &bytes).unwrap();

    let inventory = inspect_storage(storage.as_ref()).unwrap();
    assert!(!inventory.is_sound());
    match &inventory.checkpoints[0] {
        InspectedCheckpoint::Damaged { problem, .. } => {
            assert_eq!(problem.path, "chk-1/_metadata");
            assert!(problem.what.contains("crc32"), "{problem}");
        }
        other => panic!("expected damage, got {other:?}"),
    }
    let summaries = completed(&inventory);
    assert_eq!(summaries.len(), 1);
    // chk-1 does not count as the previous checkpoint: chk-2's files are all new.
    assert_eq!(summaries[0].new_bytes, summaries[0].full_bytes);
    assert!(
        inventory
            .render(false)
            .contains("chk-1     DAMAGED  chk-1/_metadata at byte")
    );
    let e = diff_checkpoints(storage.as_ref(), 1, 2).unwrap_err();
    assert!(e.is_corruption(), "{e}");
}
