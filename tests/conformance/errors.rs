//! Bad input gets a clear error of the right variant, never a panic, and a rejected call changes
//! nothing: state used without a key, incompatible re-registration, keys of foreign key groups,
//! handles of another backend kind or parallelism, overlapping handles, unknown state ids.

use std::time::Duration;

use flowstate::keys::composite_key;
use flowstate::state::StateOptions;
use flowstate::{
    BackendKind, Error, KeyGroupRange, StateDescriptor, StateId, StateKind, TtlConfig,
};

use super::harness::{BackendFactory, Env, MAX_PARALLELISM, dump, dump_keyed, group_of, key_bytes};

fn all() -> KeyGroupRange {
    KeyGroupRange::all(MAX_PARALLELISM)
}

fn lower_half() -> KeyGroupRange {
    KeyGroupRange::for_operator(MAX_PARALLELISM, 2, 0).unwrap()
}

/// A key (u32) whose key group is outside `range`.
fn foreign_key(range: KeyGroupRange) -> u32 {
    (0..).find(|k| !range.contains(group_of(k))).unwrap()
}

pub fn state_without_current_key<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let value = keyed.value_state::<u32>("v").unwrap();
    let list = keyed.list_state::<u32>("l").unwrap();
    let map = keyed.map_state::<u32, u32>("m").unwrap();
    let sum = keyed
        .reducing_state::<u32, _>("r", |a: u32, b: u32| a + b)
        .unwrap();
    let invalid = |r: flowstate::Result<()>| {
        let err = r.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(
            err.to_string().contains("set_current_key"),
            "says what to do: {err}"
        );
    };
    invalid(value.value().map(drop));
    invalid(value.update(&1));
    invalid(value.clear());
    invalid(list.add(&1));
    invalid(list.get().map(drop));
    invalid(list.update(&[1]));
    invalid(map.put(&1, &1));
    invalid(map.iter().map(drop));
    invalid(map.clear());
    invalid(sum.add(1));
    assert!(dump_keyed(&keyed).is_empty());
}

pub fn incompatible_registration<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let ttl = TtlConfig::new(Duration::from_secs(1));
    keyed.value_state::<u32>("v").unwrap();
    keyed.value_state::<u32>("v").unwrap(); // the same state again: fine
    // The same descriptor with another Rust type: its bytes would not decode as that type.
    let err = keyed.value_state::<u64>("v").map(drop).unwrap_err();
    assert!(
        matches!(&err, Error::StateMismatch { existing, requested, .. }
            if existing.contains("u32") && requested.contains("u64")),
        "{err}"
    );
    keyed
        .map_state::<u32, u32>(StateOptions::new("m").with_ttl(ttl))
        .unwrap();
    let mismatch = |r: flowstate::Result<()>| {
        let err = r.unwrap_err();
        assert!(matches!(err, Error::StateMismatch { .. }), "{err}");
    };
    mismatch(keyed.list_state::<u32>("v").map(drop)); // kind
    mismatch(
        keyed
            .value_state::<u32>(StateOptions::new("v").with_ttl(ttl))
            .map(drop),
    ); // TTL
    mismatch(
        keyed
            .value_state::<u32>(StateOptions::new("v").with_serializer("json"))
            .map(drop),
    );
    mismatch(keyed.map_state::<u32, u32>("m").map(drop)); // TTL removed
    mismatch(
        keyed
            .map_state::<u32, String>(StateOptions::new("m").with_ttl(ttl))
            .map(drop),
    ); // value type
    let longer = ttl.with_update_type(flowstate::UpdateType::OnReadAndWrite);
    mismatch(
        keyed
            .map_state::<u32, u32>(StateOptions::new("m").with_ttl(longer))
            .map(drop),
    );
    // The same at byte level.
    keyed
        .with_backend(|b| {
            let d = StateDescriptor::new("v", StateKind::Value);
            let id = b.register(&d).unwrap();
            assert_eq!(b.register(&d).unwrap(), id);
            for other in [
                StateDescriptor::new("v", StateKind::Reducing),
                d.clone().with_ttl(ttl),
                d.clone().with_serializer("v2"),
            ] {
                assert!(matches!(
                    b.register(&other),
                    Err(Error::StateMismatch { .. })
                ));
            }
            assert!(
                b.register(&StateDescriptor::new("", StateKind::Value))
                    .is_err()
            );
            assert_eq!(b.states().len(), 2, "failed registrations register nothing");
        })
        .unwrap();
    // A restore whose snapshot registered "v" differently is refused and changes nothing.
    let other = env.keyed_all();
    let v = other.list_state::<u32>("v").unwrap();
    other.set_current_key(&1u32).unwrap();
    v.add(&1).unwrap();
    let handle = other.snapshot(1).unwrap().run().unwrap();
    let before = dump_keyed(&keyed);
    let err = keyed.restore(&[handle], all()).unwrap_err();
    assert!(matches!(err, Error::StateMismatch { .. }), "{err}");
    assert_eq!(dump_keyed(&keyed), before);
}

pub fn foreign_key_groups<F: BackendFactory>() {
    let env = Env::<F>::new();
    let range = lower_half();
    let keyed = env.keyed(range);
    let value = keyed.value_state::<u32>("v").unwrap();
    let own = (0..).find(|k| range.contains(group_of(k))).unwrap();
    keyed.set_current_key(&own).unwrap();
    value.update(&1).unwrap();
    let foreign = foreign_key(range);
    match keyed.set_current_key(&foreign) {
        Err(Error::KeyGroupOutOfRange {
            key_group,
            first,
            last,
        }) => {
            assert_eq!(key_group, group_of(&foreign));
            assert_eq!((first, last), (range.first(), range.last()));
        }
        other => panic!("expected KeyGroupOutOfRange, got {other:?}"),
    }
    assert!(
        matches!(value.update(&2), Err(Error::InvalidArgument(_))),
        "a refused key leaves no current key, so nothing is written under the old one"
    );
    keyed.set_current_key(&own).unwrap();
    assert_eq!(value.value().unwrap(), Some(1));

    keyed
        .with_backend(|b| {
            let id = b
                .register(&StateDescriptor::new("v", StateKind::Value))
                .unwrap();
            let (kg, bytes) = key_bytes(&foreign);
            let key = composite_key(kg, &bytes, &[], &[]);
            let out_of_range = |r: flowstate::Result<()>| match r {
                Err(Error::KeyGroupOutOfRange { key_group, .. }) => assert_eq!(key_group, kg),
                other => panic!("expected KeyGroupOutOfRange, got {other:?}"),
            };
            out_of_range(b.put(id, &key, b"x"));
            out_of_range(b.merge(id, &key, b"x"));
            out_of_range(b.get(id, &key).map(drop));
            out_of_range(b.delete(id, &key));
            let beyond = composite_key(MAX_PARALLELISM + 5, b"k", &[], &[]);
            assert!(matches!(
                b.put(id, &beyond, b"x"),
                Err(Error::KeyGroupOutOfRange { .. })
            ));
            // Too short to hold a key group at all.
            assert!(matches!(
                b.put(id, &[0], b"x"),
                Err(Error::InvalidArgument(_))
            ));
            assert!(matches!(b.get(id, &[]), Err(Error::InvalidArgument(_))));
            assert_eq!(dump(b).len(), 1);
        })
        .unwrap();
}

pub fn unknown_state_id<F: BackendFactory>() {
    let env = Env::<F>::new();
    let mut b = env.backend(all());
    let id = b
        .register(&StateDescriptor::new("v", StateKind::Value))
        .unwrap();
    let bogus = StateId(id.0 + 1000);
    let key = composite_key(0, b"k", &[], &[]);
    let unknown = |r: flowstate::Result<()>| match r {
        Err(Error::UnknownState(n)) => assert_eq!(n, bogus.0),
        other => panic!("expected UnknownState, got {other:?}"),
    };
    unknown(b.get(bogus, &key).map(drop));
    unknown(b.put(bogus, &key, b"v"));
    unknown(b.delete(bogus, &key));
    unknown(b.merge(bogus, &key, b"v"));
    unknown(b.scan_prefix(bogus, &[]).map(drop));
    unknown(b.delete_prefix(bogus, &[]));
    assert!(dump(b.as_mut()).is_empty());
}

pub fn bad_restore_handles<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let value = keyed.value_state::<u32>("v").unwrap();
    for key in 0..20u32 {
        keyed.set_current_key(&key).unwrap();
        value.update(&key).unwrap();
    }
    let handle = keyed.snapshot(1).unwrap().run().unwrap();
    let kind = keyed.with_backend(|b| b.kind()).unwrap();
    value.update(&99).unwrap(); // so a restore that went through would show
    let before = dump_keyed(&keyed);
    let unchanged = |what: &str| assert_eq!(dump_keyed(&keyed), before, "{what} changed state");

    let mut foreign = handle.clone();
    foreign.backend = if kind == BackendKind::Fs {
        BackendKind::Memory
    } else {
        BackendKind::Fs
    };
    match keyed.restore(&[foreign], all()) {
        Err(Error::BackendMismatch { expected, found }) => {
            assert_eq!(expected, kind.to_string());
            assert_ne!(found, expected);
        }
        other => panic!("expected BackendMismatch, got {other:?}"),
    }
    unchanged("a foreign handle");

    // Two handles covering the same key groups.
    let second = keyed.snapshot(2).unwrap().run().unwrap();
    let err = keyed.restore(&[handle.clone(), second], all()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("overlap"), "{err}");
    unchanged("overlapping handles");

    let mut other_parallelism = handle.clone();
    other_parallelism.max_parallelism = MAX_PARALLELISM * 2;
    let err = keyed.restore(&[other_parallelism], all()).unwrap_err();
    assert!(matches!(err, Error::Incompatible(_)), "{err}");
    unchanged("a handle of another max_parallelism");

    let too_wide = KeyGroupRange::new(0, MAX_PARALLELISM).unwrap();
    let err = keyed
        .restore(std::slice::from_ref(&handle), too_wide)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    unchanged("a range beyond max_parallelism");

    keyed.restore(&[handle], all()).unwrap();
    keyed.set_current_key(&19u32).unwrap();
    assert_eq!(
        value.value().unwrap(),
        Some(19),
        "the good handle still restores"
    );
}

/// Regression: two handles that register the same state name differently (two tasks of a job
/// that disagree) must be refused as a whole. The heap backends checked each handle only against
/// the states already registered, not against each other, so the restore failed half way: the
/// first handle's states stayed registered although the restore reported an error.
pub fn handles_that_disagree_on_a_state<F: BackendFactory>() {
    let env = Env::<F>::new();
    let halves: Vec<KeyGroupRange> = (0..2)
        .map(|i| KeyGroupRange::for_operator(MAX_PARALLELISM, 2, i).unwrap())
        .collect();
    let kinds = [StateKind::Value, StateKind::List];
    let mut handles = Vec::new();
    for (range, kind) in halves.iter().zip(kinds) {
        let mut b = env.backend(*range);
        b.register(&StateDescriptor::new("first", StateKind::Value))
            .unwrap();
        b.register(&StateDescriptor::new("clash", kind)).unwrap();
        handles.push(b.snapshot(1).unwrap().run().unwrap());
    }
    let mut target = env.backend(all());
    let own = target
        .register(&StateDescriptor::new("own", StateKind::Map))
        .unwrap();
    let key = composite_key(3, b"k", &[], b"u");
    target.put(own, &key, b"v").unwrap();
    let err = target.restore(&handles, all()).unwrap_err();
    assert!(matches!(err, Error::StateMismatch { .. }), "{err}");
    assert_eq!(
        target.states(),
        vec![StateDescriptor::new("own", StateKind::Map)],
        "a refused restore registers nothing"
    );
    assert_eq!(target.get(own, &key).unwrap(), Some(b"v".to_vec()));
}

/// Garbage bytes under a TTL state (written at byte level) read as an error, not a panic.
pub fn garbage_values_are_errors<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let ttl = TtlConfig::new(Duration::from_secs(1));
    let value = keyed
        .value_state::<u32>(StateOptions::new("v").with_ttl(ttl))
        .unwrap();
    let list = keyed
        .list_state::<u32>(StateOptions::new("l").with_ttl(ttl))
        .unwrap();
    let plain = keyed.value_state::<String>("s").unwrap();
    keyed.set_current_key(&1u32).unwrap();
    let (kg, bytes) = key_bytes(&1u32);
    let key = composite_key(kg, &bytes, &[], &[]);
    keyed
        .with_backend(|b| {
            for (name, kind, garbage) in [
                ("v", StateKind::Value, &[1u8, 2][..]),
                ("l", StateKind::List, &[200, 1, 2][..]),
                ("s", StateKind::Value, &[5, b'a'][..]),
            ] {
                let mut d = StateDescriptor::new(name, kind);
                if name != "s" {
                    d = d.with_ttl(ttl);
                }
                let id = b.register(&d).unwrap();
                b.put(id, &key, garbage).unwrap();
            }
        })
        .unwrap();
    assert!(value.value().unwrap_err().is_corruption());
    assert!(list.get().unwrap_err().is_corruption());
    assert!(matches!(plain.value(), Err(Error::Serialization(_))));
    // Other operations on the same states still work, and a snapshot carries the bytes as they are.
    keyed.set_current_key(&2u32).unwrap();
    value.update(&5).unwrap();
    assert_eq!(value.value().unwrap(), Some(5));
    let handle = keyed.snapshot(1).unwrap().run().unwrap();
    let restored = env.keyed_all();
    restored.restore(&[handle], all()).unwrap();
    assert_eq!(dump_keyed(&restored), dump_keyed(&keyed));
}
