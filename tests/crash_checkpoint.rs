//! Kill test: a child process (this test binary re-executed with `FLOWSTATE_CRASH_CHILD_DIR`
//! set) applies a deterministic step per checkpoint id and checkpoints in a loop; the parent
//! SIGKILLs it at seeded random moments. After every kill the parent checks that each published
//! `_metadata` is whole, that the start-up scan removes every incomplete checkpoint, that no
//! completed checkpoint was lost, and that every retained checkpoint restores to exactly the
//! model state of its id. The child resumes from the latest completed checkpoint.
//!
//! Default: a few kills. Soak: `FLOWSTATE_SOAK=1 cargo test --test crash_checkpoint`
//! (replay with `FLOWSTATE_SEED=<seed>`).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use flowstate::checkpoint::storage::{
    CheckpointStorage, LocalDirStorage, TEMP_SUFFIX, checkpoint_dir, metadata_path,
    parse_checkpoint_dir,
};
use flowstate::internals::read_metadata;
use flowstate::internals::snapshot_handle;
use flowstate::keys::{composite_key, key_group_for_key};
use flowstate::{FsBackend, KeyGroupRange, StateBackend, StateDescriptor, StateId, StateKind};
use support::{contents, fs_backend_in, kill_child_after, mix, seed};

const CHILD_ENV: &str = "FLOWSTATE_CRASH_CHILD_DIR";
const MAX_PARALLELISM: u16 = 32;
const KEYS: u64 = 400;
const WRITES_PER_STEP: u64 = 40;

fn key(index: u64) -> Vec<u8> {
    let user = format!("key-{index}");
    let kg = key_group_for_key(user.as_bytes(), MAX_PARALLELISM);
    composite_key(kg, user.as_bytes(), b"", b"")
}

/// One change to the model: `Some(v)` puts, `None` deletes.
type Write = (String, Vec<u8>, Option<Vec<u8>>);

/// The writes of step `n`, a pure function of `n`: value puts and deletes, and one list append.
fn step(n: u64) -> Vec<Write> {
    let mut out = Vec::new();
    for j in 0..WRITES_PER_STEP {
        let h = mix(n * 1_000 + j);
        let value = (!h.is_multiple_of(7)).then(|| [n.to_le_bytes(), j.to_le_bytes()].concat());
        out.push(("values".to_string(), key(h % KEYS), value));
    }
    // A list element frame (FORMAT.md §3.2): length 1, then the low byte of `n`.
    out.push(("lists".to_string(), key(n % 50), Some(vec![1, n as u8])));
    out
}

/// The state after steps 1..=n, in the form `contents` returns.
fn model(n: u64) -> BTreeMap<(String, Vec<u8>), Vec<u8>> {
    let mut m = BTreeMap::new();
    for i in 1..=n {
        for (state, k, v) in step(i) {
            let slot = (state.clone(), k);
            match v {
                None => {
                    m.remove(&slot);
                }
                Some(v) if state == "lists" => {
                    m.entry(slot).or_insert_with(Vec::new).extend_from_slice(&v);
                }
                Some(v) => {
                    m.insert(slot, v);
                }
            }
        }
    }
    m
}

fn open(dir: &Path) -> (FsBackend, StateId, StateId) {
    let mut backend = fs_backend_in(dir, MAX_PARALLELISM);
    let values = backend
        .register(&StateDescriptor::new("values", StateKind::Value))
        .unwrap();
    let lists = backend
        .register(&StateDescriptor::new("lists", StateKind::List))
        .unwrap();
    (backend, values, lists)
}

/// The child: resume from the latest completed checkpoint, then step and checkpoint forever.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // not re-executed by the parent: nothing to do
    };
    let (mut backend, values, lists) = open(Path::new(&dir));
    let start = backend.restore_latest().unwrap().unwrap_or(0);
    assert_eq!(
        contents(&mut backend),
        model(start),
        "child restored wrong state at {start}"
    );
    for n in start + 1.. {
        for (state, k, v) in step(n) {
            let id = if state == "values" { values } else { lists };
            match v {
                None => backend.delete(id, &k).unwrap(),
                Some(v) if id == lists => backend.merge(id, &k, &v).unwrap(),
                Some(v) => backend.put(id, &k, &v).unwrap(),
            }
        }
        backend.snapshot(n).unwrap().run().unwrap();
    }
}

/// What the killed child left in the storage.
struct AfterKill {
    /// Ids of the checkpoints with a `_metadata`, ascending.
    complete: Vec<u64>,
    /// Ids of the `chk-<id>` directories without one (being written or being discarded).
    incomplete: Vec<u64>,
    /// Temporary files (`_metadata.tmp` of a checkpoint being published, and any other).
    temp: Vec<String>,
}

/// Checks the storage as the killed child left it: every `_metadata` in place decodes (it is
/// published atomically).
fn inspect_after_kill(storage: &dyn CheckpointStorage) -> AfterKill {
    let (mut complete, mut incomplete) = (Vec::new(), Vec::new());
    for name in storage.children("").unwrap() {
        let Some(id) = parse_checkpoint_dir(&name) else {
            continue;
        };
        if storage.exists(&metadata_path(id)).unwrap() {
            read_metadata(storage, id)
                .unwrap_or_else(|e| panic!("published _metadata of {id} is damaged: {e}"));
            complete.push(id);
        } else {
            incomplete.push(id);
        }
    }
    complete.sort_unstable();
    let temp = temp_files(storage);
    AfterKill {
        complete,
        incomplete,
        temp,
    }
}

fn temp_files(storage: &dyn CheckpointStorage) -> Vec<String> {
    let mut temp: Vec<String> = storage
        .list("")
        .unwrap()
        .into_iter()
        .filter(|p| p.ends_with(TEMP_SUFFIX))
        .collect();
    temp.sort();
    temp
}

#[test]
fn killed_checkpointing_restores_latest_complete_checkpoint() {
    let soak = std::env::var("FLOWSTATE_SOAK").is_ok_and(|v| v == "1");
    let kills = if soak { 100 } else { 6 };
    let mut rng = seed("crash_checkpoint");
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalDirStorage::open(dir.path()).unwrap();
    let exe = std::env::current_exe().unwrap();
    let (mut latest, mut incomplete_seen, mut temp_seen) = (0u64, 0usize, 0usize);
    for round in 0..kills {
        rng = mix(rng);
        let delay = Duration::from_millis(30 + rng % 300);
        kill_child_after(&exe, "crash_child", CHILD_ENV, dir.path(), delay, round);

        let AfterKill {
            complete,
            incomplete,
            temp,
        } = inspect_after_kill(&storage);
        incomplete_seen += incomplete.len();
        temp_seen += temp.len();
        let newest = complete.last().copied().unwrap_or(0);
        assert!(
            newest >= latest,
            "round {round}: completed checkpoint {latest} was lost"
        );
        // Incomplete: being written (newer than every completed one) or being discarded by
        // retention (older than every completed one), never in between.
        let oldest = complete.first().copied().unwrap_or(0);
        assert!(
            incomplete.iter().all(|id| *id > newest || *id < oldest),
            "round {round}: incomplete {incomplete:?} among completed {complete:?}"
        );

        let (mut backend, _, _) = open(dir.path());
        assert_eq!(backend.recovery_report().removed_incomplete, incomplete);
        assert_eq!(backend.completed_checkpoints(), complete);
        // The start-up scan removed what it reports: no incomplete directory, no temp file.
        let left = storage.children("").unwrap();
        for id in &incomplete {
            assert!(
                !left.contains(&checkpoint_dir(*id)),
                "round {round}: incomplete checkpoint {id} is still there: {left:?}"
            );
        }
        assert_eq!(
            temp_files(&storage),
            Vec::<String>::new(),
            "round {round}: temp files left (before recovery: {temp:?})"
        );
        latest = backend.restore_latest().unwrap().unwrap_or(0);
        assert_eq!(latest, newest);
        assert_eq!(
            contents(&mut backend),
            model(latest),
            "round {round}: checkpoint {latest}"
        );
        // Every retained checkpoint, not only the latest, holds the model state of its id.
        for id in complete.iter().rev().skip(1) {
            let metadata = read_metadata(&storage, *id).unwrap();
            backend
                .restore(
                    &[snapshot_handle(&storage, &metadata)],
                    KeyGroupRange::all(MAX_PARALLELISM),
                )
                .unwrap();
            assert_eq!(
                contents(&mut backend),
                model(*id),
                "round {round}: checkpoint {id}"
            );
        }
        eprintln!(
            "round {round}: killed after {delay:?}; latest {latest}, incomplete {incomplete:?}, \
             temp {temp:?}"
        );
    }
    assert!(latest > 0, "the child never completed a checkpoint");
    eprintln!(
        "crash_checkpoint: {kills} kills, {incomplete_seen} incomplete checkpoints and \
         {temp_seen} temp files cleaned up"
    );
    // Without an incomplete checkpoint to clean, the rounds checked the scan on nothing.
    assert!(
        incomplete_seen > 0,
        "no kill left an incomplete checkpoint: the start-up scan was not exercised"
    );
}
