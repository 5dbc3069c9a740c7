//! TTL in every mode, driven by the manual clock: update type (create-and-write vs
//! read-and-write), visibility (never vs once-if-not-cleaned-up), per-element list and per-entry
//! map expiry, expired entries left out of snapshots, and incremental cleanup of unread keys.

use std::time::Duration;

use flowstate::internals::list_elements;
use flowstate::keys::composite_key;
use flowstate::state::StateOptions;
use flowstate::ttl::unwrap as unwrap_envelope;
use flowstate::{KeyGroupRange, TtlConfig, UpdateType, Visibility};

use super::harness::{BackendFactory, Env, MAX_PARALLELISM, START_MS, all, key_bytes, scan_named};
use super::typed::Average;

const TTL_MS: u64 = 100;

fn ttl(update: UpdateType, visibility: Visibility) -> TtlConfig {
    TtlConfig::new(Duration::from_millis(TTL_MS))
        .with_update_type(update)
        .with_visibility(visibility)
}

fn opts(name: &str, ttl: TtlConfig) -> StateOptions {
    StateOptions::new(name).with_ttl(ttl)
}

const CREATE: UpdateType = UpdateType::OnCreateAndWrite;
const READ: UpdateType = UpdateType::OnReadAndWrite;
const NEVER: Visibility = Visibility::NeverReturnExpired;
const ONCE: Visibility = Visibility::ReturnExpiredIfNotCleanedUp;

pub fn value_on_create_and_write<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let v = keyed
        .value_state::<u32>(opts("v", ttl(CREATE, NEVER)))
        .unwrap();
    keyed.set_current_key("k").unwrap();
    v.update(&1).unwrap();
    // The stored envelope carries the write time.
    let stored = scan_named(&keyed, "v");
    assert_eq!(
        unwrap_envelope(&stored[0].1).unwrap(),
        (START_MS, &[1u8][..])
    );
    env.clock().advance(TTL_MS - 1);
    assert_eq!(v.value().unwrap(), Some(1), "alive one ms before expiry");
    env.clock().advance(1);
    assert_eq!(
        v.value().unwrap(),
        None,
        "reads do not refresh; expired at ttl"
    );
    assert!(
        scan_named(&keyed, "v").is_empty(),
        "the expired read removed it"
    );
    // Writes refresh.
    v.update(&2).unwrap();
    env.clock().advance(60);
    v.update(&3).unwrap();
    env.clock().advance(60);
    assert_eq!(v.value().unwrap(), Some(3));
}

pub fn value_on_read_and_write<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let v = keyed
        .value_state::<u32>(opts("v", ttl(READ, NEVER)))
        .unwrap();
    keyed.set_current_key("k").unwrap();
    v.update(&1).unwrap();
    for _ in 0..5 {
        env.clock().advance(TTL_MS - 1);
        assert_eq!(v.value().unwrap(), Some(1), "each read refreshes");
    }
    let now = START_MS + 5 * (TTL_MS - 1);
    let stored = scan_named(&keyed, "v");
    assert_eq!(unwrap_envelope(&stored[0].1).unwrap().0, now);
    env.clock().advance(TTL_MS);
    assert_eq!(v.value().unwrap(), None);
}

/// Regression: the heap backends ran incremental cleanup at the start of every access, so the
/// read of an expired entry first had it removed by cleanup and never saw it:
/// `ReturnExpiredIfNotCleanedUp` behaved like `NeverReturnExpired` whenever the entry was among
/// the few the cleanup cursor visited (always, in a small state). Cleanup now runs after the
/// access. `list_per_element_ttl` checks the same for list elements.
pub fn value_return_expired_once<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let v = keyed
        .value_state::<u32>(opts("v", ttl(CREATE, ONCE)))
        .unwrap();
    let never = keyed
        .value_state::<u32>(opts("never", ttl(CREATE, NEVER)))
        .unwrap();
    keyed.set_current_key("k").unwrap();
    v.update(&9).unwrap();
    never.update(&9).unwrap();
    env.clock().advance(TTL_MS);
    assert_eq!(never.value().unwrap(), None);
    assert_eq!(
        v.value().unwrap(),
        Some(9),
        "expired, not cleaned up: returned"
    );
    assert_eq!(v.value().unwrap(), None, "and gone after that read");
    assert!(scan_named(&keyed, "v").is_empty());
}

pub fn list_per_element_ttl<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let never = keyed
        .list_state::<u32>(opts("never", ttl(CREATE, NEVER)))
        .unwrap();
    let once = keyed
        .list_state::<u32>(opts("once", ttl(CREATE, ONCE)))
        .unwrap();
    let read = keyed
        .list_state::<u32>(opts("read", ttl(READ, NEVER)))
        .unwrap();
    keyed.set_current_key("k").unwrap();
    for l in [&never, &once, &read] {
        l.add_all(&[1, 2]).unwrap();
    }
    env.clock().advance(60);
    for l in [&never, &once, &read] {
        l.add(&3).unwrap();
    }
    env.clock().advance(40); // 1 and 2 expire now; 3 has 60 ms left
    assert_eq!(never.get().unwrap(), [3]);
    assert_eq!(
        once.get().unwrap(),
        [1, 2, 3],
        "expired elements returned once"
    );
    assert_eq!(once.get().unwrap(), [3]);
    assert_eq!(read.get().unwrap(), [3]);
    for name in ["never", "once", "read"] {
        let stored = scan_named(&keyed, name);
        assert_eq!(stored.len(), 1);
        assert_eq!(
            list_elements(&stored[0].1).unwrap().len(),
            1,
            "{name}: expired elements dropped from storage"
        );
    }
    env.clock().advance(59);
    assert_eq!(read.get().unwrap(), [3]);
    assert_eq!(never.get().unwrap(), [3]);
    env.clock().advance(1);
    assert!(never.get().unwrap().is_empty());
    assert!(
        scan_named(&keyed, "never").is_empty(),
        "an all-expired list is removed"
    );
    assert_eq!(read.get().unwrap(), [3], "reads refreshed element 3");
    // update() stamps every element now.
    never.update(&[7, 8]).unwrap();
    env.clock().advance(TTL_MS - 1);
    assert_eq!(never.get().unwrap(), [7, 8]);
}

pub fn map_per_entry_ttl<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let never = keyed
        .map_state::<u32, u32>(opts("never", ttl(CREATE, NEVER)))
        .unwrap();
    let once = keyed
        .map_state::<u32, u32>(opts("once", ttl(CREATE, ONCE)))
        .unwrap();
    let read = keyed
        .map_state::<u32, u32>(opts("read", ttl(READ, NEVER)))
        .unwrap();
    keyed.set_current_key("k").unwrap();
    for m in [&never, &once, &read] {
        m.put(&1, &10).unwrap();
        m.put(&2, &20).unwrap();
    }
    env.clock().advance(60);
    for m in [&never, &once, &read] {
        m.put(&3, &30).unwrap();
    }
    assert_eq!(read.get(&1).unwrap(), Some(10), "refreshes entry 1 only");
    env.clock().advance(40);
    assert_eq!(all(never.iter()), [(3, 30)]);
    assert_eq!(never.get(&1).unwrap(), None);
    assert!(!never.contains(&2).unwrap());
    assert_eq!(all(once.iter()), [(1, 10), (2, 20), (3, 30)]);
    assert_eq!(all(once.iter()), [(3, 30)]);
    assert_eq!(all(read.keys()), [1, 3]);
    for name in ["never", "once", "read"] {
        let expected = if name == "read" { 2 } else { 1 };
        assert_eq!(scan_named(&keyed, name).len(), expected, "{name}");
    }
    env.clock().advance(60);
    assert!(never.is_empty().unwrap());
    assert!(scan_named(&keyed, "never").is_empty());
}

pub fn reducing_and_aggregating_ttl<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let sum = keyed
        .reducing_state::<u32, _>(opts("sum", ttl(CREATE, NEVER)), |a: u32, b: u32| a + b)
        .unwrap();
    let avg = keyed
        .aggregating_state(opts("avg", ttl(CREATE, NEVER)), Average)
        .unwrap();
    keyed.set_current_key("k").unwrap();
    sum.add(5).unwrap();
    avg.add(10).unwrap();
    env.clock().advance(60);
    sum.add(1).unwrap(); // a write refreshes the whole value
    avg.add(20).unwrap();
    env.clock().advance(60);
    assert_eq!(sum.get().unwrap(), Some(6));
    assert_eq!(avg.get().unwrap(), Some(15.0));
    env.clock().advance(TTL_MS);
    assert_eq!(sum.get().unwrap(), None);
    sum.add(2).unwrap();
    assert_eq!(
        sum.get().unwrap(),
        Some(2),
        "an expired value is not folded in"
    );
    avg.add(4).unwrap();
    assert_eq!(avg.get().unwrap(), Some(4.0));
}

/// Expired entries (values, map entries, list elements) are not in the next snapshot, whether or
/// not anyone read them.
pub fn snapshot_leaves_out_expired<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let t = ttl(CREATE, ONCE); // even the most permissive visibility
    let value = keyed.value_state::<u32>(opts("v", t)).unwrap();
    let list = keyed.list_state::<u32>(opts("l", t)).unwrap();
    let map = keyed.map_state::<u32, u32>(opts("m", t)).unwrap();
    let plain = keyed.value_state::<u32>("plain").unwrap();
    for key in 0..30u32 {
        keyed.set_current_key(&key).unwrap();
        value.update(&key).unwrap();
        list.add(&key).unwrap();
        map.put(&0, &key).unwrap();
        plain.update(&key).unwrap();
    }
    env.clock().advance(60);
    for key in (0..30u32).filter(|k| k % 3 == 0) {
        keyed.set_current_key(&key).unwrap();
        value.update(&(key + 1000)).unwrap();
        list.add(&(key + 1000)).unwrap();
        map.put(&1, &key).unwrap();
    }
    env.clock().advance(40);
    let handle = keyed.snapshot(1).unwrap().run().unwrap();

    let restored = env.keyed_all();
    restored
        .restore(&[handle], KeyGroupRange::all(MAX_PARALLELISM))
        .unwrap();
    let fresh: Vec<Vec<u8>> = (0..30u32)
        .filter(|k| k % 3 == 0)
        .map(|k| {
            let (kg, bytes) = key_bytes(&k);
            composite_key(kg, &bytes, &[], &[])
        })
        .collect();
    let keys = |name: &str| -> Vec<Vec<u8>> {
        scan_named(&restored, name)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    let mut sorted_fresh = fresh.clone();
    sorted_fresh.sort();
    assert_eq!(keys("v"), sorted_fresh, "only rewritten values survive");
    assert_eq!(
        keys("l"),
        sorted_fresh,
        "only lists with a live element survive"
    );
    for (_, stored) in scan_named(&restored, "l") {
        let elements = list_elements(&stored).unwrap();
        assert_eq!(elements.len(), 1, "the expired element is dropped");
        assert!(unwrap_envelope(elements[0]).unwrap().0 == START_MS + 60);
    }
    let map_keys: Vec<Vec<u8>> = sorted_fresh
        .iter()
        .map(|prefix| [prefix.as_slice(), &[1]].concat())
        .collect();
    assert_eq!(keys("m"), map_keys, "only the live map entry of each key");
    assert_eq!(
        scan_named(&restored, "plain").len(),
        30,
        "no TTL, nothing dropped"
    );
}

/// Expired entries of keys that are never read again disappear as other keys are accessed.
/// Only in the suites of backends with incremental cleanup (see `conformance_suite!`).
pub fn incremental_cleanup_removes_unread_keys<F: BackendFactory>() {
    assert!(
        F::INCREMENTAL_TTL_CLEANUP,
        "a backend without incremental TTL cleanup cannot run this test; leave it out of its suite"
    );
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let t = ttl(CREATE, NEVER);
    let value = keyed.value_state::<u32>(opts("v", t)).unwrap();
    let list = keyed.list_state::<u32>(opts("l", t)).unwrap();
    let map = keyed.map_state::<u32, u32>(opts("m", t)).unwrap();
    for key in 0..50u32 {
        keyed.set_current_key(&key).unwrap();
        value.update(&key).unwrap();
        list.add(&key).unwrap();
        map.put(&key, &key).unwrap();
    }
    env.clock().advance(TTL_MS);
    keyed.set_current_key("hot").unwrap();
    value.update(&1).unwrap();
    list.add(&1).unwrap();
    map.put(&1, &1).unwrap();
    for _ in 0..100 {
        assert_eq!(value.value().unwrap(), Some(1));
        assert_eq!(list.get().unwrap(), [1]);
        assert_eq!(map.get(&1).unwrap(), Some(1));
    }
    let hot = key_bytes("hot");
    for name in ["v", "l", "m"] {
        let left = scan_named(&keyed, name);
        assert_eq!(left.len(), 1, "{name}: only the hot key is left");
        assert!(
            left[0]
                .0
                .starts_with(&composite_key(hot.0, &hot.1, &[], &[]))
        );
    }
}
