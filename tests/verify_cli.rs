//! `flowstate verify <checkpoint-dir>` as a user runs it: the real binary on real FsBackend
//! checkpoints. A sound directory exits 0; a flipped byte or a missing file exits 1 and names
//! the file; a usage error exits 2; the directory is never changed.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use flowstate::checkpoint::storage::{CheckpointStorage, LocalDirStorage};
use flowstate::keys::{composite_key, key_group_for_key};
use flowstate::{
    BackendConfig, FsBackend, KeyGroupRange, StateBackend, StateDescriptor, StateKind,
};

const MAX_PARALLELISM: u16 = 8;

/// Checkpoints 1 and 2 of an FsBackend (one file per key group), and an incomplete chk-3.
fn write_checkpoints(dir: &Path) {
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::open(dir).unwrap());
    let config = BackendConfig::new(
        u32::from(MAX_PARALLELISM),
        KeyGroupRange::all(MAX_PARALLELISM),
    )
    .unwrap();
    let mut backend = FsBackend::new(config, storage.clone()).unwrap();
    let values = backend
        .register(&StateDescriptor::new("values", StateKind::Value))
        .unwrap();
    for checkpoint in 1..=2u64 {
        for u in 0..50u32 {
            let user = format!("user-{u}");
            let kg = key_group_for_key(user.as_bytes(), MAX_PARALLELISM);
            let key = composite_key(kg, user.as_bytes(), b"", b"");
            backend
                .put(values, &key, &(u64::from(u) * checkpoint).to_le_bytes())
                .unwrap();
        }
        backend.snapshot(checkpoint).unwrap().run().unwrap();
    }
    storage
        .write_file("chk-3/kg-00000-00000", b"partial")
        .unwrap();
}

fn verify(dir: &Path) -> (i32, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_flowstate"))
        .arg("verify")
        .arg(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.code().unwrap_or(-1), text)
}

/// Every file under `dir` with its bytes, to show verify changed nothing.
fn snapshot_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let storage = LocalDirStorage::open(dir).unwrap();
    storage
        .list("")
        .unwrap()
        .into_iter()
        .map(|p| {
            let bytes = storage.read_file(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Some data file of checkpoint 2 (not `_metadata`).
fn data_file_of_chk2(dir: &Path) -> String {
    let storage = LocalDirStorage::open(dir).unwrap();
    storage
        .list("chk-2")
        .unwrap()
        .into_iter()
        .find(|p| !p.ends_with("_metadata"))
        .unwrap()
}

#[test]
fn a_sound_directory_exits_0_and_is_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoints(dir.path());
    let before = snapshot_of(dir.path());
    let (code, out) = verify(dir.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("chk-1 OK"), "{out}");
    assert!(out.contains("chk-2 OK"), "{out}");
    assert!(out.contains("chk-3 INCOMPLETE"), "{out}");
    assert_eq!(
        snapshot_of(dir.path()),
        before,
        "verify changed the directory"
    );
}

#[test]
fn a_flipped_byte_exits_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoints(dir.path());
    let victim = data_file_of_chk2(dir.path());
    let full = dir.path().join(&victim);
    let mut bytes = std::fs::read(&full).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&full, &bytes).unwrap();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("chk-1 OK"), "{out}");
    assert!(out.contains(&format!("chk-2 BAD {victim}")), "{out}");
    assert!(out.contains("crc32 mismatch"), "{out}");
}

#[test]
fn a_missing_file_exits_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoints(dir.path());
    let victim = data_file_of_chk2(dir.path());
    std::fs::remove_file(dir.path().join(&victim)).unwrap();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("chk-2 BAD {victim} at byte 0: missing")),
        "{out}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let (code, out) = verify(&missing);
    assert_eq!(code, 2, "{out}");
    assert!(!missing.exists(), "verify created the directory");
    let status = Command::new(env!("CARGO_BIN_EXE_flowstate"))
        .arg("verify")
        .output()
        .unwrap()
        .status;
    assert_eq!(status.code(), Some(2));
}
