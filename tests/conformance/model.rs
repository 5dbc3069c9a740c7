//! Model test: random operation sequences over several states, applied to a backend through the
//! byte-level trait and to a `BTreeMap<(state, composite key), value>`, must give the same
//! answers (every get, every prefix scan, resumed or not, and a full scan at the end). Keys span several key
//! groups and namespaces; snapshots are taken and the latest one restored in between.

use std::collections::BTreeMap;

use flowstate::keys::{composite_key, key_group_for_key};
use flowstate::{KeyGroupRange, SnapshotHandle, StateBackend, StateDescriptor, StateId, StateKind};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};

use super::harness::{BackendFactory, Env, MAX_PARALLELISM};

/// The states of the model run, in index order.
const STATES: [(&str, StateKind); 4] = [
    ("value", StateKind::Value),
    ("list", StateKind::List),
    ("map", StateKind::Map),
    ("reducing", StateKind::Reducing),
];
const LIST: usize = 1;
/// What a read-modify-write of the model run appends for an absent value.
const ABSENT: &[u8] = b"<none>";
const MAP: usize = 2;

/// Keys and namespaces are drawn from small pools so operations collide often.
const KEYS: usize = 8;
const NAMESPACES: usize = 3;

/// Where an operation lands: (key index, namespace index, map user key).
#[derive(Clone, Debug)]
pub struct Target {
    key: usize,
    namespace: usize,
    user_key: Vec<u8>,
}

/// How much of a composite key a prefix operation keeps.
#[derive(Clone, Copy, Debug)]
pub enum PrefixLevel {
    /// The empty prefix: the whole state.
    Everything,
    /// The 2-byte key group.
    KeyGroup,
    /// Key group and key: every namespace of one key.
    Key,
    /// Key group, key and namespace: one map (Flink's `clear` of a map state).
    KeyAndNamespace,
}

/// One step of a model run.
#[derive(Clone, Debug)]
pub enum Op {
    /// `put` into a state (map states get the target's user key).
    Put {
        state: usize,
        at: Target,
        value: Vec<u8>,
    },
    /// `delete`.
    Delete { state: usize, at: Target },
    /// `merge` (list append) into the list state.
    Merge { at: Target, operand: Vec<u8> },
    /// `read_modify_write` storing `operand ++ old` (`old` = a marker when absent); with
    /// `fail`, the function errs after writing into its buffer and nothing may change.
    ReadModifyWrite {
        state: usize,
        at: Target,
        operand: Vec<u8>,
        fail: bool,
    },
    /// `get`, compared with the model.
    Get { state: usize, at: Target },
    /// `scan_prefix`, compared with the model.
    Scan {
        state: usize,
        at: Target,
        level: PrefixLevel,
    },
    /// `scan_prefix_after`, compared with the model: resumes after the first `cut` bytes of
    /// `after`'s composite key (all of them when `cut` is longer), a key that may or may not
    /// be stored or start with the prefix.
    ScanAfter {
        state: usize,
        at: Target,
        level: PrefixLevel,
        after: Target,
        cut: usize,
    },
    /// `delete_prefix`.
    DeletePrefix {
        state: usize,
        at: Target,
        level: PrefixLevel,
    },
    /// Snapshot (the asynchronous part run at once); becomes the latest snapshot.
    Snapshot,
    /// Restore the latest snapshot, if any.
    Restore,
}

fn key_bytes(key: usize) -> Vec<u8> {
    format!("key-{key}").into_bytes()
}

fn namespace_bytes(namespace: usize) -> Vec<u8> {
    if namespace == 0 {
        Vec::new() // the default namespace
    } else {
        vec![b'n', namespace as u8]
    }
}

impl Target {
    fn composite(&self, state: usize) -> Vec<u8> {
        let key = key_bytes(self.key);
        let kg = key_group_for_key(&key, MAX_PARALLELISM);
        let user_key: &[u8] = if state == MAP { &self.user_key } else { &[] };
        composite_key(kg, &key, &namespace_bytes(self.namespace), user_key)
    }

    fn prefix(&self, level: PrefixLevel) -> Vec<u8> {
        let full = composite_key(
            key_group_for_key(&key_bytes(self.key), MAX_PARALLELISM),
            &key_bytes(self.key),
            &namespace_bytes(self.namespace),
            &[],
        );
        let key_only = composite_key(
            key_group_for_key(&key_bytes(self.key), MAX_PARALLELISM),
            &key_bytes(self.key),
            &[],
            &[],
        );
        match level {
            PrefixLevel::Everything => Vec::new(),
            PrefixLevel::KeyGroup => full[..2].to_vec(),
            // Drop the trailing empty-namespace length byte.
            PrefixLevel::Key => key_only[..key_only.len() - 1].to_vec(),
            PrefixLevel::KeyAndNamespace => full,
        }
    }
}

fn target() -> impl Strategy<Value = Target> {
    (0..KEYS, 0..NAMESPACES, prop::collection::vec(0u8..4, 0..3)).prop_map(
        |(key, namespace, user_key)| Target {
            key,
            namespace,
            user_key,
        },
    )
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..6)
}

fn level() -> impl Strategy<Value = PrefixLevel> {
    prop_oneof![
        1 => Just(PrefixLevel::Everything),
        2 => Just(PrefixLevel::KeyGroup),
        2 => Just(PrefixLevel::Key),
        4 => Just(PrefixLevel::KeyAndNamespace),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let state = 0..STATES.len();
    prop_oneof![
        10 => (state.clone(), target(), bytes()).prop_map(|(state, at, value)| Op::Put { state, at, value }),
        4 => (state.clone(), target()).prop_map(|(state, at)| Op::Delete { state, at }),
        6 => (target(), bytes()).prop_map(|(at, operand)| Op::Merge { at, operand }),
        6 => (state.clone(), target(), bytes(), prop::bool::weighted(0.2)).prop_map(
            |(state, at, operand, fail)| Op::ReadModifyWrite { state, at, operand, fail }),
        8 => (state.clone(), target()).prop_map(|(state, at)| Op::Get { state, at }),
        3 => (state.clone(), target(), level()).prop_map(|(state, at, level)| Op::Scan { state, at, level }),
        3 => (state.clone(), target(), level(), target(), 0usize..40).prop_map(
            |(state, at, level, after, cut)| Op::ScanAfter { state, at, level, after, cut }),
        2 => (state, target(), level()).prop_map(|(state, at, level)| Op::DeletePrefix { state, at, level }),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Restore),
    ]
}

/// A sequence of operations for one model run.
pub fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..80)
}

/// The proptest config: 256 cases. proptest applies `PROPTEST_CASES` on top of it, so
/// `PROPTEST_CASES=4096 cargo test --release --test conformance` runs more.
pub fn config() -> Config {
    Config::with_cases(256)
}

type Model = BTreeMap<(usize, Vec<u8>), Vec<u8>>;

/// Entries of one state, as (composite key, value), in key order.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn model_scan(model: &Model, state: usize, prefix: &[u8]) -> Entries {
    model
        .range((state, prefix.to_vec())..)
        .take_while(|((s, k), _)| *s == state && k.starts_with(prefix))
        .map(|((_, k), v)| (k.clone(), v.clone()))
        .collect()
}

fn backend_scan(
    backend: &mut dyn StateBackend,
    id: StateId,
    prefix: &[u8],
) -> Result<Entries, TestCaseError> {
    backend
        .scan_prefix(id, prefix)
        .map_err(|e| TestCaseError::fail(format!("scan_prefix: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TestCaseError::fail(format!("scan entry: {e}")))
}

/// `prefix`'s entries read `chunk` at a time, each chunk one `scan_prefix_after` call that
/// resumes after the last key of the one before (the first a `scan_prefix`).
fn backend_scan_chunked(
    backend: &mut dyn StateBackend,
    id: StateId,
    prefix: &[u8],
    chunk: usize,
) -> Result<Entries, TestCaseError> {
    let mut out: Entries = Vec::new();
    loop {
        let before = out.len();
        let entries = match out.last() {
            None => backend.scan_prefix(id, prefix),
            Some((last, _)) => {
                let last = last.clone();
                backend.scan_prefix_after(id, prefix, &last)
            }
        };
        let entries = entries.map_err(|e| TestCaseError::fail(format!("scan: {e}")))?;
        for entry in entries.take(chunk) {
            out.push(entry.map_err(|e| TestCaseError::fail(format!("scan entry: {e}")))?);
        }
        if out.len() - before < chunk {
            return Ok(out);
        }
    }
}

fn backend_scan_after(
    backend: &mut dyn StateBackend,
    id: StateId,
    prefix: &[u8],
    after: &[u8],
) -> Result<Entries, TestCaseError> {
    backend
        .scan_prefix_after(id, prefix, after)
        .map_err(|e| TestCaseError::fail(format!("scan_prefix_after: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TestCaseError::fail(format!("scan entry: {e}")))
}

fn ok<T>(r: flowstate::Result<T>, what: &str) -> Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))
}

/// Runs `ops` against a new backend and the model; fails at the first difference.
pub fn run<F: BackendFactory>(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let env = Env::<F>::new();
    let all = KeyGroupRange::all(MAX_PARALLELISM);
    let mut backend = env.backend(all);
    let mut ids = Vec::new();
    for (name, kind) in STATES {
        ids.push(ok(
            backend.register(&StateDescriptor::new(name, kind)),
            "register",
        )?);
    }
    let mut model = Model::new();
    let mut latest: Option<(SnapshotHandle, Model)> = None;
    let mut checkpoint_id = 0;
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Put { state, at, value } => {
                let key = at.composite(state);
                ok(backend.put(ids[state], &key, &value), "put")?;
                model.insert((state, key), value);
            }
            Op::Delete { state, at } => {
                let key = at.composite(state);
                ok(backend.delete(ids[state], &key), "delete")?;
                model.remove(&(state, key));
            }
            Op::Merge { at, operand } => {
                let key = at.composite(LIST);
                ok(backend.merge(ids[LIST], &key, &operand), "merge")?;
                model
                    .entry((LIST, key))
                    .or_default()
                    .extend_from_slice(&operand);
            }
            Op::ReadModifyWrite {
                state,
                at,
                operand,
                fail,
            } => {
                let key = at.composite(state);
                let mut seen = None;
                let result = backend.read_modify_write(ids[state], &key, &mut |stored, out| {
                    seen = Some(stored.map(<[u8]>::to_vec));
                    out.extend_from_slice(&operand);
                    out.extend_from_slice(stored.unwrap_or(ABSENT));
                    if fail {
                        return Err(flowstate::Error::invalid("function failed"));
                    }
                    Ok(())
                });
                let current = model.get(&(state, key.clone())).cloned();
                prop_assert_eq!(seen, Some(current.clone()), "rmw read at step {}", step);
                if fail {
                    prop_assert!(result.is_err(), "rmw error lost at step {}", step);
                } else {
                    ok(result, "read_modify_write")?;
                    let mut new = operand;
                    new.extend_from_slice(current.as_deref().unwrap_or(ABSENT));
                    model.insert((state, key), new);
                }
            }
            Op::Get { state, at } => {
                let key = at.composite(state);
                let got = ok(backend.get(ids[state], &key), "get")?;
                prop_assert_eq!(
                    got.as_ref(),
                    model.get(&(state, key)),
                    "get at step {}",
                    step
                );
            }
            Op::Scan { state, at, level } => {
                let prefix = at.prefix(level);
                let got = backend_scan(backend.as_mut(), ids[state], &prefix)?;
                let expected = model_scan(&model, state, &prefix);
                prop_assert_eq!(&got, &expected, "scan at step {}", step);
                let chunked = backend_scan_chunked(backend.as_mut(), ids[state], &prefix, 2)?;
                prop_assert_eq!(chunked, expected, "chunked scan at step {}", step);
            }
            Op::ScanAfter {
                state,
                at,
                level,
                after,
                cut,
            } => {
                let prefix = at.prefix(level);
                let mut after = after.composite(state);
                after.truncate(cut);
                let got = backend_scan_after(backend.as_mut(), ids[state], &prefix, &after)?;
                let mut expected = model_scan(&model, state, &prefix);
                expected.retain(|(key, _)| *key > after);
                prop_assert_eq!(got, expected, "scan after at step {}", step);
            }
            Op::DeletePrefix { state, at, level } => {
                let prefix = at.prefix(level);
                ok(backend.delete_prefix(ids[state], &prefix), "delete_prefix")?;
                for (key, _) in model_scan(&model, state, &prefix) {
                    model.remove(&(state, key));
                }
            }
            Op::Snapshot => {
                checkpoint_id += 1;
                let task = ok(backend.snapshot(checkpoint_id), "snapshot")?;
                let handle = ok(task.run(), "snapshot run")?;
                latest = Some((handle, model.clone()));
            }
            Op::Restore => {
                if let Some((handle, saved)) = &latest {
                    ok(
                        backend.restore(std::slice::from_ref(handle), all),
                        "restore",
                    )?;
                    model = saved.clone();
                }
            }
        }
    }
    for (state, &id) in ids.iter().enumerate() {
        let got = backend_scan(backend.as_mut(), id, &[])?;
        let expected = model_scan(&model, state, &[]);
        prop_assert_eq!(&got, &expected, "final scan of state {}", state);
        let chunked = backend_scan_chunked(backend.as_mut(), id, &[], 3)?;
        prop_assert_eq!(chunked, expected, "final chunked scan of state {}", state);
    }
    Ok(())
}
