//! Corruption sweep over a real FsBackend checkpoint: for every file (data files and
//! `_metadata`), truncate it at many lengths and flip many bytes; every restore must fail with
//! `Error::Corruption` naming that file, never panic, and leave the backend's state untouched.
//!
//! The default run samples: every truncation length and byte flip in the first 64 bytes and the
//! last 32 of each file, plus a seeded sample of the rest (seed from `FLOWSTATE_SEED`). Run
//! everything with `FLOWSTATE_FULL_SWEEP=1 cargo test --test corruption`.

mod support;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use flowstate::backend::SnapshotData;
use flowstate::checkpoint::storage::{CheckpointStorage, LocalDirStorage};
use flowstate::keys::{composite_key, key_group_for_key};
use flowstate::{
    BackendConfig, Error, FsBackend, KeyGroupRange, SnapshotHandle, StateBackend, StateDescriptor,
    StateKind,
};
use support::{Contents, contents, fs_backend_in, mix, seed};

const MAX_PARALLELISM: u16 = 8;
const HEAD: usize = 64;
const TAIL: usize = 32;
const SAMPLES: usize = 256;

/// splitmix64: a tiny deterministic generator for the sampled positions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let out = mix(self.0);
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        out
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn full_sweep() -> bool {
    std::env::var("FLOWSTATE_FULL_SWEEP").is_ok_and(|v| v == "1")
}

/// The positions (0..len) to mutate: all of them in a full sweep or for small files, else the
/// head, the tail and a seeded sample.
fn positions(len: usize, rng: &mut Rng, full: bool) -> Vec<usize> {
    if full || len <= HEAD + TAIL + SAMPLES {
        return (0..len).collect();
    }
    let mut out: Vec<usize> = (0..HEAD).chain(len - TAIL..len).collect();
    out.extend((0..SAMPLES).map(|_| HEAD + rng.below(len - HEAD - TAIL)));
    out.sort_unstable();
    out.dedup();
    out
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Cut the file to this many bytes.
    Truncate(usize),
    /// XOR the byte at this position with the mask.
    Flip(usize, u8),
    /// Append one zero byte.
    Append,
}

/// A checkpoint with three states over all 8 key groups, one file larger than 4 KiB.
fn write_checkpoint(dir: &Path) -> (SnapshotHandle, Contents) {
    let mut backend = fs_backend_in(dir, MAX_PARALLELISM);
    let values = backend
        .register(&StateDescriptor::new("values", StateKind::Value))
        .unwrap();
    let lists = backend
        .register(&StateDescriptor::new("lists", StateKind::List))
        .unwrap();
    let blobs = backend
        .register(&StateDescriptor::new("blobs", StateKind::Value))
        .unwrap();
    for u in 0..40u32 {
        let user = format!("user-{u}");
        let kg = key_group_for_key(user.as_bytes(), MAX_PARALLELISM);
        let key = composite_key(kg, user.as_bytes(), b"", b"");
        backend.put(values, &key, &u.to_le_bytes()).unwrap();
        backend.merge(lists, &key, &[2, u as u8, 7]).unwrap();
    }
    let key = composite_key(3, b"blob", b"", b"");
    backend
        .put(
            blobs,
            &key,
            &(0..6000u32).map(|i| i as u8).collect::<Vec<_>>(),
        )
        .unwrap();
    let expected = contents(&mut backend);
    let handle = backend.snapshot(1).unwrap().run().unwrap();
    (handle, expected)
}

#[test]
fn every_damaged_file_is_reported_never_restored() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, expected) = write_checkpoint(dir.path());
    let SnapshotData::Files { files, .. } = &handle.data else {
        panic!("files expected")
    };
    let mut paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    paths.push("chk-1/_metadata".to_string());
    assert!(
        files.iter().any(|f| f.size > 4096),
        "one file must exceed 4 KiB"
    );

    let full = full_sweep();
    let mut rng = Rng(seed("corruption sweep"));
    // The restoring backend holds sentinel state; a failed restore must leave it untouched.
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::open(dir.path()).unwrap());
    let config = BackendConfig::new(MAX_PARALLELISM, KeyGroupRange::all(MAX_PARALLELISM)).unwrap();
    let mut target = FsBackend::new(config, storage).unwrap();
    let sentinel_state = target
        .register(&StateDescriptor::new("sentinel", StateKind::Value))
        .unwrap();
    target
        .put(
            sentinel_state,
            &composite_key(0, b"s", b"", b""),
            b"untouched",
        )
        .unwrap();
    let sentinel = contents(&mut target);

    let range = KeyGroupRange::all(MAX_PARALLELISM);
    let mut attempts = 0usize;
    for path in &paths {
        let on_disk = dir.path().join(path);
        let original = std::fs::read(&on_disk).unwrap();
        // Damage in place (no truncate-to-zero rewrite, which makes ext4 flush on close).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&on_disk)
            .unwrap();
        let mut check = |damage: Damage| {
            match damage {
                Damage::Truncate(cut) => file.set_len(cut as u64).unwrap(),
                Damage::Flip(at, mask) => file
                    .write_all_at(&[original[at] ^ mask], at as u64)
                    .unwrap(),
                Damage::Append => file.write_all_at(&[0], original.len() as u64).unwrap(),
            }
            match target.restore(std::slice::from_ref(&handle), range) {
                Err(Error::Corruption { file, .. }) => assert_eq!(&file, path, "{damage:?}"),
                Err(other) => panic!("{path} {damage:?}: expected corruption, got {other}"),
                Ok(()) => panic!("{path} {damage:?}: damaged checkpoint was restored"),
            }
            match damage {
                Damage::Truncate(cut) => file.write_all_at(&original[cut..], cut as u64).unwrap(),
                Damage::Flip(at, _) => file.write_all_at(&original[at..=at], at as u64).unwrap(),
                Damage::Append => file.set_len(original.len() as u64).unwrap(),
            }
            attempts += 1;
            if attempts.is_multiple_of(16) {
                assert_eq!(
                    contents(&mut target),
                    sentinel,
                    "{path} {damage:?}: state changed"
                );
            }
        };
        for cut in positions(original.len(), &mut rng, full) {
            check(Damage::Truncate(cut));
        }
        for at in positions(original.len(), &mut rng, full) {
            check(Damage::Flip(at, 1 << (at % 8) as u8 | 0x10));
        }
        check(Damage::Append);
        assert_eq!(std::fs::read(&on_disk).unwrap(), original);
    }
    eprintln!(
        "corruption sweep: {attempts} damaged restores over {} files",
        paths.len()
    );
    target.restore(&[handle], range).unwrap();
    assert_eq!(contents(&mut target), expected);
}

#[test]
fn damaged_latest_metadata_is_quarantined_not_a_silent_fallback_and_damaged_data_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::open(dir.path()).unwrap());
    let config = BackendConfig::new(4, KeyGroupRange::all(4)).unwrap();
    let mut backend = FsBackend::new(config.clone(), storage.clone()).unwrap();
    let state = backend
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    let key = composite_key(1, b"k", b"", b"");
    for id in 1..=3u64 {
        backend.put(state, &key, &id.to_le_bytes()).unwrap();
        backend.snapshot(id).unwrap().run().unwrap();
    }
    // A data file of checkpoint 3 is damaged: restoring it is an error naming the file.
    let data = storage
        .list("chk-3")
        .unwrap()
        .into_iter()
        .find(|p| p.contains("kg-"))
        .unwrap();
    let mut bytes = storage.read_file(&data).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(dir.path().join(&data), &bytes).unwrap();
    let mut restarted = FsBackend::new(config.clone(), storage.clone()).unwrap();
    match restarted.restore_latest() {
        Err(Error::Corruption { file, offset, .. }) => {
            assert_eq!((file.as_str(), offset), (data.as_str(), 0))
        }
        other => panic!("expected corruption of {data}, got {other:?}"),
    }
    // Checkpoint 3's _metadata is damaged: it is quarantined, not deleted, and restore_latest
    // refuses to step back to 2 silently; restoring 2 by its handle stays possible.
    let mut metadata = storage.read_file("chk-3/_metadata").unwrap();
    metadata[30] ^= 1;
    std::fs::write(dir.path().join("chk-3/_metadata"), &metadata).unwrap();
    let mut restarted = FsBackend::new(config, storage.clone()).unwrap();
    assert!(restarted.recovery_report().removed_incomplete.is_empty());
    let quarantined = &restarted.recovery_report().quarantined;
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].checkpoint_id, 3);
    assert_eq!(
        storage.read_file("quarantine/chk-3/_metadata").unwrap(),
        metadata
    );
    assert_eq!(restarted.completed_checkpoints(), [1, 2]);
    match restarted.restore_latest() {
        Err(Error::Corruption { file, .. }) => {
            assert!(file.ends_with("quarantine/chk-3/_metadata"), "{file}")
        }
        other => panic!("expected an error naming the quarantined checkpoint, got {other:?}"),
    }
    let older = flowstate::internals::read_metadata(storage.as_ref(), 2).unwrap();
    let handle = flowstate::internals::snapshot_handle(storage.as_ref(), &older);
    restarted.restore(&[handle], KeyGroupRange::all(4)).unwrap();
    let state = restarted
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    assert_eq!(
        restarted.get(state, &key).unwrap(),
        Some(2u64.to_le_bytes().to_vec())
    );
}
