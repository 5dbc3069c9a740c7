//! `flowstate inspect <checkpoint-dir> [--diff A B] [--files]` as a user runs it: the real binary
//! on checkpoints of a real LsmBackend (shared files) and a real FsBackend. Listing and diff exit
//! 0; a damaged `_metadata` exits 1 and is named; usage errors exit 2; nothing is changed.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use flowstate::backend::lsm::LsmBackendOptions;
use flowstate::checkpoint::storage::{CheckpointStorage, LocalDirStorage};
use flowstate::keys::{composite_key, key_group_for_key};
use flowstate::{
    BackendConfig, FsBackend, KeyGroupRange, LsmBackend, StateBackend, StateDescriptor, StateId,
    StateKind,
};

const MAX_PARALLELISM: u16 = 8;

fn config() -> BackendConfig {
    BackendConfig::new(MAX_PARALLELISM, KeyGroupRange::all(MAX_PARALLELISM)).unwrap()
}

fn put_keys(
    backend: &mut dyn StateBackend,
    state: StateId,
    keys: std::ops::Range<u32>,
    round: u64,
) {
    for k in keys {
        let user = format!("user-{k}");
        let kg = key_group_for_key(user.as_bytes(), MAX_PARALLELISM);
        let key = composite_key(kg, user.as_bytes(), b"", b"");
        backend
            .put(state, &key, format!("{k}/{round}").as_bytes())
            .unwrap();
    }
}

/// Checkpoints 1..=4 of an LsmBackend (default retention keeps 2, 3, 4) and an incomplete chk-5.
fn write_lsm_checkpoints(root: &Path) -> Vec<u64> {
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::open(root.join("checkpoints")).unwrap());
    let mut backend = LsmBackend::open(
        config(),
        storage.clone(),
        LsmBackendOptions::new(root.join("work")),
    )
    .unwrap();
    let counts = backend
        .register(&StateDescriptor::new("counts", StateKind::Value))
        .unwrap();
    put_keys(&mut backend, counts, 0..300, 0);
    for checkpoint in 1..=4u64 {
        let first = checkpoint as u32 * 20;
        put_keys(&mut backend, counts, first..first + 20, checkpoint);
        backend.snapshot(checkpoint).unwrap().run().unwrap();
    }
    storage.write_file("chk-5/partial", b"half").unwrap();
    backend.completed_checkpoints()
}

fn inspect(args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_flowstate"))
        .arg("inspect")
        .args(args)
        .output()
        .unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn tree(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
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
fn lists_lsm_checkpoints_with_shared_files_and_diffs_two() {
    let dir = tempfile::tempdir().unwrap();
    let completed = write_lsm_checkpoints(dir.path());
    assert_eq!(completed, [2, 3, 4]);
    let root = dir.path().join("checkpoints");
    let root_arg = root.to_str().unwrap();
    let before = tree(&root);

    let (code, out, err) = inspect(&[root_arg]);
    assert_eq!(code, 0, "{out}{err}");
    for id in [2, 3, 4] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("chk-{id} ")))
            .unwrap_or_else(|| panic!("no line for chk-{id}: {out}"));
        assert!(line.contains(" UTC  lsm "), "{line}");
        assert!(line.contains("states: counts"), "{line}");
    }
    assert!(out.contains("chk-5     INCOMPLETE"), "{out}");
    assert!(
        out.contains("3 completed, 1 incomplete, 0 damaged"),
        "{out}"
    );
    // Some file is referenced by all three retained checkpoints.
    let refs3 = out
        .lines()
        .find(|l| l.trim_start().starts_with("3 "))
        .unwrap_or_else(|| panic!("no row for 3 references: {out}"));
    assert!(
        !refs3.trim_start().starts_with("3             0"),
        "{refs3}"
    );

    let (code, every, _) = inspect(&[root_arg, "--files"]);
    assert_eq!(code, 0);
    assert!(
        every
            .lines()
            .any(|l| l.contains("shared/") && l.ends_with("(2,3,4)")),
        "{every}"
    );

    let (code, diff, err) = inspect(&[root_arg, "--diff", "2", "4"]);
    assert_eq!(code, 0, "{diff}{err}");
    assert!(diff.contains("only in chk-2: "), "{diff}");
    assert!(diff.contains("only in chk-4: "), "{diff}");
    let shared = diff.lines().find(|l| l.starts_with("shared: ")).unwrap();
    assert!(!shared.starts_with("shared: 0 files"), "{diff}");

    assert_eq!(tree(&root), before, "inspect changed the directory");
}

#[test]
fn damaged_metadata_exits_1_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::open(dir.path()).unwrap());
    let mut backend = FsBackend::new(config(), storage).unwrap();
    let counts = backend
        .register(&StateDescriptor::new("counts", StateKind::Value))
        .unwrap();
    for checkpoint in 1..=2u64 {
        put_keys(&mut backend, counts, 0..30, checkpoint);
        backend.snapshot(checkpoint).unwrap().run().unwrap();
    }
    let root = dir.path().to_str().unwrap();
    let (code, out, _) = inspect(&[root, "--diff", "1", "2"]);
    assert_eq!(code, 0);
    assert!(out.contains("shared: 0 files, 0 B"), "{out}");

    let meta = dir.path().join("chk-2/_metadata");
    let mut bytes = std::fs::read(&meta).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&meta, &bytes).unwrap();
    let (code, out, err) = inspect(&[root]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("chk-2     DAMAGED  chk-2/_metadata at byte"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("chk-1 ") && l.contains(" fs ")),
        "{out}"
    );
    let (code, _, err) = inspect(&[root, "--diff", "1", "2"]);
    assert_eq!(code, 1);
    assert!(err.contains("chk-2/_metadata"), "{err}");

    let missing = dir.path().join("nope");
    let (code, _, err) = inspect(&[missing.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(!missing.exists(), "inspect created the directory");
    assert_eq!(inspect(&[root, "--diff", "1"]).0, 2);
    assert_eq!(inspect(&[root, "--diff", "1", "x"]).0, 2);
    assert_eq!(inspect(&[root, "--diff", "1", "7"]).0, 2);
    assert_eq!(inspect(&[]).0, 2);
}
