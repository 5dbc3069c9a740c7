//! Snapshots and restores: a restore gives back exactly the snapshot's contents (compared byte for
//! byte over all states), the frozen snapshot ignores later writes even while its asynchronous
//! part runs on another thread, and rescaling splits and merges key-group ranges exactly.

use std::sync::{Arc, Barrier};

use flowstate::{Error, KeyGroupRange, KeyedState, SnapshotHandle};

use super::harness::{
    BackendFactory, Contents, Env, MAX_PARALLELISM, dump_keyed, group_of, restrict,
};
use super::typed::Average;

fn all() -> KeyGroupRange {
    KeyGroupRange::all(MAX_PARALLELISM)
}

/// Writes every state kind for each key of `keys` that `keyed` owns, in two namespaces;
/// `round` changes the values so later rounds overwrite and extend earlier ones.
fn populate(
    keyed: &KeyedState,
    keys: impl IntoIterator<Item = u32>,
    range: KeyGroupRange,
    round: u32,
) {
    let value = keyed.value_state::<u32>("value").unwrap();
    let list = keyed.list_state::<u32>("list").unwrap();
    let map = keyed.map_state::<u32, String>("map").unwrap();
    let sum = keyed
        .reducing_state::<u32, _>("reducing", |a: u32, b: u32| a + b)
        .unwrap();
    let avg = keyed.aggregating_state("aggregating", Average).unwrap();
    for key in keys.into_iter().filter(|k| range.contains(group_of(k))) {
        keyed.set_current_key(&key).unwrap();
        for ns in [None, Some("window-1")] {
            match ns {
                None => keyed.set_default_namespace().unwrap(),
                Some(ns) => keyed.set_current_namespace(ns).unwrap(),
            }
            value.update(&(key + round)).unwrap();
            list.add(&round).unwrap();
            map.put(&(round % 3), &format!("{key}/{round}")).unwrap();
            sum.add(key).unwrap();
            avg.add(i64::from(round)).unwrap();
        }
    }
    keyed.set_default_namespace().unwrap();
}

/// Changes, removes and adds state everywhere.
fn mutate(keyed: &KeyedState, range: KeyGroupRange) {
    populate(keyed, 0..80, range, 7);
    let value = keyed.value_state::<u32>("value").unwrap();
    let map = keyed.map_state::<u32, String>("map").unwrap();
    for key in (0..80u32)
        .step_by(5)
        .filter(|k| range.contains(group_of(k)))
    {
        keyed.set_current_key(&key).unwrap();
        value.clear().unwrap();
        map.clear().unwrap();
    }
    let late = keyed.value_state::<u32>("registered-late").unwrap();
    for key in (0..10u32).filter(|k| range.contains(group_of(k))) {
        keyed.set_current_key(&key).unwrap();
        late.update(&key).unwrap();
    }
}

pub fn restore_returns_exactly_the_snapshot<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    populate(&keyed, 0..60, all(), 1);
    populate(&keyed, 20..40, all(), 2);
    let at_snapshot = dump_keyed(&keyed);
    assert!(at_snapshot.len() > 300);
    let first = keyed.snapshot(1).unwrap().run().unwrap();
    mutate(&keyed, all());
    let mutated = dump_keyed(&keyed);
    assert_ne!(mutated, at_snapshot);
    let second = keyed.snapshot(2).unwrap().run().unwrap();

    keyed.restore(std::slice::from_ref(&first), all()).unwrap();
    assert_eq!(dump_keyed(&keyed), at_snapshot);
    // Typed reads work again once a key is set.
    let value = keyed.value_state::<u32>("value").unwrap();
    assert!(
        matches!(value.value(), Err(Error::InvalidArgument(_))),
        "restore unsets the current key"
    );
    keyed.set_current_key(&25u32).unwrap();
    assert_eq!(value.value().unwrap(), Some(27));

    keyed.restore(std::slice::from_ref(&second), all()).unwrap();
    assert_eq!(dump_keyed(&keyed), mutated, "a later snapshot restores too");

    let fresh = env.keyed_all();
    fresh.restore(&[first], all()).unwrap();
    assert_eq!(dump_keyed(&fresh), at_snapshot, "into a new backend");
    fresh.restore(&[], all()).unwrap();
    assert!(dump_keyed(&fresh).is_empty(), "no handles: empty state");
}

/// Writes made after the synchronous part, before and while the asynchronous part runs on
/// another thread, are not in the snapshot.
pub fn snapshot_ignores_writes_after_its_synchronous_part<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    populate(&keyed, 0..50, all(), 1);
    let at_snapshot = dump_keyed(&keyed);
    let task = keyed.snapshot(1).unwrap();
    mutate(&keyed, all()); // before run()
    let started = Arc::new(Barrier::new(2));
    let worker = {
        let started = started.clone();
        std::thread::spawn(move || {
            started.wait();
            task.run()
        })
    };
    started.wait();
    populate(&keyed, 50..100, all(), 3); // while run() may be going on
    let handle = worker.join().expect("snapshot thread").unwrap();
    let live = dump_keyed(&keyed);
    assert_eq!(handle.checkpoint_id, 1);
    assert_eq!(handle.key_group_range, all());

    let restored = env.keyed_all();
    restored.restore(&[handle], all()).unwrap();
    assert_eq!(dump_keyed(&restored), at_snapshot);
    assert_eq!(
        dump_keyed(&keyed),
        live,
        "snapshotting changed nothing live"
    );
}

fn snapshot(keyed: &KeyedState, checkpoint_id: u64) -> SnapshotHandle {
    keyed.snapshot(checkpoint_id).unwrap().run().unwrap()
}

/// One backend over all 128 groups → two halves → one again.
pub fn rescale_split_and_merge<F: BackendFactory>() {
    let env = Env::<F>::new();
    let whole = env.keyed_all();
    populate(&whole, 0..200, all(), 1);
    let everything = dump_keyed(&whole);
    let handle = snapshot(&whole, 1);

    let halves: Vec<KeyGroupRange> = (0..2)
        .map(|i| KeyGroupRange::for_operator(MAX_PARALLELISM, 2, i).unwrap())
        .collect();
    let mut half_handles = Vec::new();
    let mut half_contents = Contents::new();
    for (i, &range) in halves.iter().enumerate() {
        let half = env.keyed(range);
        half.restore(std::slice::from_ref(&handle), range).unwrap();
        let expected = restrict(&everything, range);
        assert!(!expected.is_empty());
        assert_eq!(
            dump_keyed(&half),
            expected,
            "half {range} sees exactly its keys"
        );
        // Typed access sees its own keys and refuses the other half's.
        let value = half.value_state::<u32>("value").unwrap();
        for key in 0..200u32 {
            let owned = range.contains(group_of(&key));
            match half.set_current_key(&key) {
                Ok(()) => {
                    assert!(owned);
                    assert_eq!(value.value().unwrap(), Some(key + 1));
                }
                Err(Error::KeyGroupOutOfRange { .. }) => assert!(!owned),
                Err(other) => panic!("unexpected {other}"),
            }
        }
        populate(&half, 0..200, range, 10 + i as u32); // diverge after the restore
        half_contents.extend(dump_keyed(&half));
        half_handles.push(snapshot(&half, 2));
    }

    let merged = env.keyed_all();
    merged.restore(&half_handles, all()).unwrap();
    assert_eq!(
        dump_keyed(&merged),
        half_contents,
        "the merge sees all keys"
    );
    // Handles in the other order give the same state.
    half_handles.reverse();
    whole.restore(&half_handles, all()).unwrap();
    assert_eq!(dump_keyed(&whole), half_contents);
}

/// Three tasks' snapshots restored into two tasks (ranges from `for_operator`).
pub fn rescale_three_to_two<F: BackendFactory>() {
    let env = Env::<F>::new();
    let mut handles = Vec::new();
    let mut everything = Contents::new();
    for i in 0..3 {
        let range = KeyGroupRange::for_operator(MAX_PARALLELISM, 3, i).unwrap();
        let task = env.keyed(range);
        populate(&task, 0..300, range, u32::from(i));
        let contents = dump_keyed(&task);
        assert_eq!(restrict(&contents, range), contents);
        everything.extend(contents);
        handles.push(snapshot(&task, 5));
    }
    let mut seen = Contents::new();
    for j in 0..2 {
        let range = KeyGroupRange::for_operator(MAX_PARALLELISM, 2, j).unwrap();
        let task = env.keyed(range);
        task.restore(&handles, range).unwrap();
        let contents = dump_keyed(&task);
        assert_eq!(contents, restrict(&everything, range), "task {j} of 2");
        seen.extend(contents);
    }
    assert_eq!(seen, everything, "nothing lost, nothing duplicated");
}
