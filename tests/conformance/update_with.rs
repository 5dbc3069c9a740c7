//! Read-modify-write: `ValueState::update_with` must behave exactly as `value()` then `update()`
//! (same values seen and returned, same stored bytes), with and without TTL, across snapshots and
//! restores; and `StateBackend::read_modify_write` must never change bytes a snapshot's
//! synchronous part froze (copy-on-write in the heap store).

use std::time::Duration;

use flowstate::keys::{composite_key, key_group_for_key};
use flowstate::state::StateOptions;
use flowstate::{
    Clock, Error, KeyGroupRange, KeyedState, SnapshotHandle, StateDescriptor, StateKind, TtlConfig,
    UpdateType, Visibility,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};

use super::harness::{BackendFactory, Contents, Env, dump_keyed};

/// Key groups of the backends in the comparison. Few, so that the heap backends' incremental
/// TTL cleanup visits every key on every access and its progress cannot differ between the
/// two sides, which make different numbers of backend calls.
const GROUPS: u16 = 4;
/// Keys of the comparison: fewer than the entries incremental cleanup checks per access.
const KEYS: [&str; 3] = ["a", "b", "c"];
const TTL_MS: u64 = 100;

/// One step of the comparison.
#[derive(Clone, Debug)]
pub enum Step {
    /// Add `delta` to a key's (count, sum): `update_with` on one side, `value` + `update` on the
    /// other.
    Add { key: usize, delta: i64 },
    /// `value()` on both sides.
    Read { key: usize },
    /// `clear()` on both sides.
    Clear { key: usize },
    /// Move the manual clock.
    Advance { ms: u64 },
    /// A snapshot of both sides (asynchronous part run at once); becomes the latest.
    Snapshot,
    /// Restore both sides from their latest snapshot, if any.
    Restore,
}

fn step() -> impl Strategy<Value = Step> {
    let key = 0..KEYS.len();
    prop_oneof![
        8 => (key.clone(), -5i64..5).prop_map(|(key, delta)| Step::Add { key, delta }),
        3 => key.clone().prop_map(|key| Step::Read { key }),
        1 => key.prop_map(|key| Step::Clear { key }),
        3 => (0u64..2 * TTL_MS).prop_map(|ms| Step::Advance { ms }),
        1 => Just(Step::Snapshot),
        1 => Just(Step::Restore),
    ]
}

fn ttl_mode() -> impl Strategy<Value = Option<TtlConfig>> {
    let update = prop_oneof![
        Just(UpdateType::OnCreateAndWrite),
        Just(UpdateType::OnReadAndWrite)
    ];
    let visibility = prop_oneof![
        Just(Visibility::NeverReturnExpired),
        Just(Visibility::ReturnExpiredIfNotCleanedUp)
    ];
    proptest::option::weighted(
        0.75,
        (update, visibility).prop_map(|(u, v)| {
            TtlConfig::new(Duration::from_millis(TTL_MS))
                .with_update_type(u)
                .with_visibility(v)
        }),
    )
}

/// A TTL mode and a sequence of steps.
pub fn cases() -> impl Strategy<Value = (Option<TtlConfig>, Vec<Step>)> {
    (ttl_mode(), prop::collection::vec(step(), 1..60))
}

/// 64 cases per backend (`PROPTEST_CASES` raises it).
pub fn config() -> Config {
    Config::with_cases(64)
}

type CountSum = (u32, i64);

fn ok<T>(r: flowstate::Result<T>, what: &str) -> Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))
}

/// Runs `steps` on two backends of `F` and compares every answer and, after every step, the
/// stored bytes.
pub fn run<F: BackendFactory>(
    ttl: Option<TtlConfig>,
    steps: Vec<Step>,
) -> Result<(), TestCaseError> {
    // The LSM backend drops expired entries in background compactions: whether an expired value
    // is still there to be returned once is timing-dependent, on both sides alike. Compare its
    // deterministic visibility only.
    let ttl = ttl.map(|mut ttl| {
        if !F::INCREMENTAL_TTL_CLEANUP {
            ttl.visibility = Visibility::NeverReturnExpired;
        }
        ttl
    });
    let env = Env::<F>::new();
    let range = KeyGroupRange::all(GROUPS);
    let rmw = KeyedState::from_boxed(env.backend_with(env.config_of(GROUPS, range)));
    let plain = KeyedState::from_boxed(env.backend_with(env.config_of(GROUPS, range)));
    let mut options = StateOptions::new("count_sum");
    if let Some(ttl) = ttl {
        options = options.with_ttl(ttl);
    }
    let rmw_state = ok(rmw.value_state::<CountSum>(options.clone()), "register")?;
    let plain_state = ok(plain.value_state::<CountSum>(options), "register")?;
    let mut latest: Option<(SnapshotHandle, SnapshotHandle)> = None;
    let mut checkpoint_id = 0;
    for (index, step) in steps.into_iter().enumerate() {
        match step {
            Step::Add { key, delta } => {
                ok(rmw.set_current_key(KEYS[key]), "key")?;
                ok(plain.set_current_key(KEYS[key]), "key")?;
                let mut seen = None;
                let new = ok(
                    rmw_state.update_with(|current| {
                        seen = Some(current);
                        add(current, delta)
                    }),
                    "update_with",
                )?;
                let current = ok(plain_state.value(), "value")?;
                let expected = add(current, delta);
                ok(plain_state.update(&expected), "update")?;
                prop_assert_eq!(seen, Some(current), "value seen at step {}", index);
                prop_assert_eq!(new, expected, "value returned at step {}", index);
            }
            Step::Read { key } => {
                ok(rmw.set_current_key(KEYS[key]), "key")?;
                ok(plain.set_current_key(KEYS[key]), "key")?;
                let got = ok(rmw_state.value(), "value")?;
                prop_assert_eq!(got, ok(plain_state.value(), "value")?, "read at {}", index);
            }
            Step::Clear { key } => {
                ok(rmw.set_current_key(KEYS[key]), "key")?;
                ok(plain.set_current_key(KEYS[key]), "key")?;
                ok(rmw_state.clear(), "clear")?;
                ok(plain_state.clear(), "clear")?;
            }
            Step::Advance { ms } => env.clock().advance(ms),
            Step::Snapshot => {
                checkpoint_id += 1;
                let a = ok(rmw.snapshot(checkpoint_id), "snapshot")?;
                let b = ok(plain.snapshot(checkpoint_id), "snapshot")?;
                latest = Some((ok(a.run(), "snapshot run")?, ok(b.run(), "snapshot run")?));
            }
            Step::Restore => {
                if let Some((a, b)) = &latest {
                    ok(rmw.restore(std::slice::from_ref(a), range), "restore")?;
                    ok(plain.restore(std::slice::from_ref(b), range), "restore")?;
                }
            }
        }
        let now = env.clock().now_ms();
        prop_assert_eq!(
            stored::<F>(&rmw, ttl.as_ref(), now),
            stored::<F>(&plain, ttl.as_ref(), now),
            "stored bytes after step {}",
            index
        );
    }
    Ok(())
}

/// The stored entries: all of them with the heap backends' deterministic cleanup, else the
/// ones not expired at `now` (expired ones may or may not have been compacted away yet).
fn stored<F: BackendFactory>(keyed: &KeyedState, ttl: Option<&TtlConfig>, now: u64) -> Contents {
    let mut contents = dump_keyed(keyed);
    if let Some(ttl) = ttl
        && !F::INCREMENTAL_TTL_CLEANUP
    {
        contents.retain(|_, value| {
            flowstate::ttl::unwrap(value)
                .is_ok_and(|(timestamp, _)| !ttl.is_expired(timestamp, now))
        });
    }
    contents
}

fn add(current: Option<CountSum>, delta: i64) -> CountSum {
    let (count, sum) = current.unwrap_or((0, 0));
    (count + 1, sum + delta)
}

/// Writes under the snapshot's feet: a read-modify-write between a snapshot's synchronous and
/// asynchronous parts must leave the snapshot with the bytes of its synchronous part, both for
/// an existing key (a value the frozen copy shares: never overwritten in place) and a new one.
pub fn read_modify_write_keeps_frozen_bytes<F: BackendFactory>() {
    let env = Env::<F>::new();
    let all = KeyGroupRange::all(super::harness::MAX_PARALLELISM);
    let mut backend = env.backend(all);
    let id = backend
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    let key = |name: &[u8]| {
        let kg = key_group_for_key(name, super::harness::MAX_PARALLELISM);
        composite_key(kg, name, b"", b"")
    };
    let (old, new) = (key(b"old"), key(b"new"));
    backend.put(id, &old, b"frozen").unwrap();
    // Overwritten in place while nothing shares it.
    let mut append = |stored: Option<&[u8]>, out: &mut Vec<u8>| {
        out.extend_from_slice(stored.unwrap_or(b"<none>"));
        out.push(b'+');
        Ok(())
    };
    backend.read_modify_write(id, &old, &mut append).unwrap();
    assert_eq!(
        backend.get(id, &old).unwrap().as_deref(),
        Some(&b"frozen+"[..])
    );
    let task = backend.snapshot(1).unwrap();
    backend.read_modify_write(id, &old, &mut append).unwrap();
    backend.read_modify_write(id, &new, &mut append).unwrap();
    assert_eq!(
        backend.get(id, &old).unwrap().as_deref(),
        Some(&b"frozen++"[..])
    );
    assert_eq!(
        backend.get(id, &new).unwrap().as_deref(),
        Some(&b"<none>+"[..])
    );
    let handle = task.run().unwrap();
    let mut restored = env.backend(all);
    restored.restore(&[handle], all).unwrap();
    let id = restored
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    assert_eq!(
        restored.get(id, &old).unwrap().as_deref(),
        Some(&b"frozen+"[..])
    );
    assert_eq!(restored.get(id, &new).unwrap(), None);
    // A failing function writes nothing and its error comes back.
    let mut fail = |_: Option<&[u8]>, out: &mut Vec<u8>| {
        out.extend_from_slice(b"half written");
        Err(Error::invalid("refused"))
    };
    let err = restored.read_modify_write(id, &old, &mut fail).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    let err = restored.read_modify_write(id, &new, &mut fail).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(
        restored.get(id, &old).unwrap().as_deref(),
        Some(&b"frozen+"[..])
    );
    assert_eq!(restored.get(id, &new).unwrap(), None);
    // Keys outside the range are refused as for put.
    let mut half = env.backend(KeyGroupRange::new(0, 63).unwrap());
    let id = half
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    let foreign = composite_key(100, b"x", b"", b"");
    assert!(matches!(
        half.read_modify_write(id, &foreign, &mut append),
        Err(Error::KeyGroupOutOfRange { .. })
    ));
}

/// A typed `update_with` whose stored bytes do not decode fails, without calling the function
/// or writing anything.
pub fn update_with_on_garbage_is_an_error<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let state = keyed.value_state::<(u64, i128)>("v").unwrap();
    keyed.set_current_key("k").unwrap();
    let key = super::harness::composite_of("k");
    keyed
        .with_backend(|b| {
            let id = b
                .register(&StateDescriptor::new("v", StateKind::Value))
                .unwrap();
            b.put(id, &key, &[0xff; 3]).unwrap();
        })
        .unwrap();
    let mut called = false;
    assert!(
        state
            .update_with(|_| {
                called = true;
                (0, 0)
            })
            .is_err()
    );
    assert!(!called);
    let stored = keyed
        .with_backend(|b| {
            let id = b
                .register(&StateDescriptor::new("v", StateKind::Value))
                .unwrap();
            b.get(id, &key).unwrap()
        })
        .unwrap();
    assert_eq!(stored, Some(vec![0xff; 3]));
}
