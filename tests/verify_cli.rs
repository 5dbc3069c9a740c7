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
    let config = BackendConfig::new(MAX_PARALLELISM, KeyGroupRange::all(MAX_PARALLELISM)).unwrap();
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

/// A `flowstate run` of `backend` on a small input with state in `dir/state`; the job is left
/// unfinished-looking (no `FINISHED`) so nothing differs from a crashed run.
fn run_job(dir: &Path, backend: &str) {
    let input: String = (0..5_000).map(|i| format!("k{},{}\n", i % 17, i)).collect();
    std::fs::write(dir.join("input"), input).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flowstate"))
        .arg("run")
        .arg("--input")
        .arg(dir.join("input"))
        .arg("--output")
        .arg(dir.join("out"))
        .arg("--state")
        .arg(dir.join("state"))
        .args(["--backend", backend, "--parallelism", "2", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_job_state_directory_is_verified_job_and_task_roots_alike() {
    for backend in ["fs", "lsm"] {
        let dir = tempfile::tempdir().unwrap();
        run_job(dir.path(), backend);
        let state = dir.path().join("state");
        let before = snapshot_of(&state);
        let (code, out) = verify(&state);
        assert_eq!(code, 0, "{backend}: {out}");
        assert!(out.contains("job state directory"), "{out}");
        assert!(out.contains("/job\n"), "{out}");
        assert!(out.contains("/tasks/000001/t0\n"), "{out}");
        assert!(out.contains("/tasks/000001/t1\n"), "{out}");
        assert!(out.contains("chk-1 OK"), "{out}");
        assert!(!out.contains(" 0 checkpoints"), "{out}");
        assert_eq!(snapshot_of(&state), before, "verify changed the directory");

        // A damaged task file makes the state directory fail, naming the file.
        let storage = LocalDirStorage::open(state.join("tasks/000001/t1")).unwrap();
        let victim = storage
            .list("")
            .unwrap()
            .into_iter()
            .find(|p| !p.ends_with("_metadata"))
            .unwrap();
        let path = state.join("tasks/000001/t1").join(&victim);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        let (code, out) = verify(&state);
        assert_eq!(code, 1, "{backend}: {out}");
        assert!(out.contains(&victim), "{out}");
    }
}

#[test]
fn a_directory_without_checkpoints_exits_1_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("job")).unwrap();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no checkpoint found"), "{out}");
}
