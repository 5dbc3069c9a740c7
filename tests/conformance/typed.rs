//! Every state kind through the typed API: what each call returns and what it leaves stored,
//! namespaces keeping state apart, and `KeyedState::keys`. No TTL here (see `ttl.rs`).

use flowstate::{AggregateFunction, KeyedState};
use serde::{Deserialize, Serialize};

use super::harness::{BackendFactory, Env, all, composite_of, scan_named};

/// Integer average: accumulator (sum, count), result sum / count.
pub struct Average;

impl AggregateFunction<i64, (i64, u32), f64> for Average {
    fn create_accumulator(&self) -> (i64, u32) {
        (0, 0)
    }
    fn add(&self, value: i64, acc: (i64, u32)) -> (i64, u32) {
        (acc.0 + value, acc.1 + 1)
    }
    fn get_result(&self, acc: &(i64, u32)) -> f64 {
        acc.0 as f64 / f64::from(acc.1.max(1))
    }
    fn merge(&self, a: (i64, u32), b: (i64, u32)) -> (i64, u32) {
        (a.0 + b.0, a.1 + b.1)
    }
}

/// A window namespace, as a stream processor would use one.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Window {
    /// Inclusive start, ms.
    pub start: u64,
    /// Exclusive end, ms.
    pub end: u64,
}

pub fn value_state_get_update_clear<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let count = keyed.value_state::<u64>("count").unwrap();
    keyed.set_current_key("alice").unwrap();
    assert_eq!(count.value().unwrap(), None);
    count.update(&1).unwrap();
    count.update(&7).unwrap();
    assert_eq!(count.value().unwrap(), Some(7));
    keyed.set_current_key("bob").unwrap();
    assert_eq!(count.value().unwrap(), None, "keys are independent");
    count.update(&2).unwrap();
    keyed.set_current_key("alice").unwrap();
    assert_eq!(count.value().unwrap(), Some(7));
    count.clear().unwrap();
    assert_eq!(count.value().unwrap(), None);
    count.clear().unwrap(); // clearing an absent value is fine
    // Byte level: one entry left, bob's, holding postcard(2).
    let stored = scan_named(&keyed, "count");
    assert_eq!(stored, vec![(composite_of("bob"), vec![2])]);
}

pub fn list_state_add_get_update_clear<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let list = keyed.list_state::<String>("events").unwrap();
    keyed.set_current_key(&7u32).unwrap();
    assert!(list.get().unwrap().is_empty());
    list.add(&"a".to_string()).unwrap();
    list.add_all(&["b".to_string(), "c".to_string()]).unwrap();
    list.add_all(&[]).unwrap();
    assert_eq!(list.get().unwrap(), ["a", "b", "c"]);
    list.update(&["x".to_string(), "y".to_string()]).unwrap();
    assert_eq!(list.get().unwrap(), ["x", "y"]);
    list.add(&"z".to_string()).unwrap();
    assert_eq!(list.get().unwrap(), ["x", "y", "z"]);
    list.update(&[]).unwrap();
    assert!(list.get().unwrap().is_empty());
    assert!(
        scan_named(&keyed, "events").is_empty(),
        "an empty update removes the entry"
    );
    list.add(&"again".to_string()).unwrap();
    keyed.set_current_key(&8u32).unwrap();
    list.add(&"other".to_string()).unwrap();
    list.clear().unwrap();
    assert!(list.get().unwrap().is_empty());
    keyed.set_current_key(&7u32).unwrap();
    assert_eq!(list.get().unwrap(), ["again"]);
    assert_eq!(scan_named(&keyed, "events").len(), 1);
}

pub fn map_state_operations<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let map = keyed.map_state::<String, u32>("pages").unwrap();
    keyed.set_current_key("user-1").unwrap();
    assert!(map.is_empty().unwrap());
    assert_eq!(map.get(&"a".into()).unwrap(), None);
    assert!(!map.contains(&"a".into()).unwrap());
    let names = ["home", "a", "zz", "checkout", "b"];
    for (i, name) in names.iter().enumerate() {
        map.put(&name.to_string(), &(i as u32)).unwrap();
    }
    map.put(&"a".into(), &100).unwrap();
    assert_eq!(map.get(&"a".into()).unwrap(), Some(100));
    assert!(map.contains(&"zz".into()).unwrap());
    assert!(!map.is_empty().unwrap());
    // Iteration is in serialized-key byte order (postcard: length first, then bytes).
    let mut expected: Vec<(String, u32)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), if *n == "a" { 100 } else { i as u32 }))
        .collect();
    expected.sort_by_key(|(k, _)| postcard::to_allocvec(k).unwrap());
    assert_eq!(all(map.iter()), expected);
    assert_eq!(
        all(map.keys()),
        expected.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        all(map.values()),
        expected.iter().map(|(_, v)| *v).collect::<Vec<_>>()
    );
    map.remove(&"zz".into()).unwrap();
    map.remove(&"never-there".into()).unwrap();
    assert!(!map.contains(&"zz".into()).unwrap());
    assert_eq!(all(map.iter()).len(), 4);

    // Another key's map, including one whose serialized key starts like ours.
    keyed.set_current_key("user-10").unwrap();
    assert!(map.is_empty().unwrap());
    map.put(&"home".into(), &1).unwrap();
    keyed.set_current_key("user-1").unwrap();
    map.clear().unwrap();
    assert!(map.is_empty().unwrap());
    assert_eq!(map.get(&"home".into()).unwrap(), None);
    keyed.set_current_key("user-10").unwrap();
    assert_eq!(all(map.iter()), [("home".to_string(), 1)]);
    assert_eq!(scan_named(&keyed, "pages").len(), 1);
}

pub fn reducing_state_add_get_clear<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let max = keyed
        .reducing_state::<i64, _>("max", |a: i64, b: i64| a.max(b))
        .unwrap();
    let sum = keyed
        .reducing_state::<i64, _>("sum", |a: i64, b: i64| a + b)
        .unwrap();
    keyed.set_current_key(&1u8).unwrap();
    assert_eq!(max.get().unwrap(), None);
    for v in [3, -4, 9, 2] {
        max.add(v).unwrap();
        sum.add(v).unwrap();
    }
    assert_eq!(max.get().unwrap(), Some(9));
    assert_eq!(sum.get().unwrap(), Some(10));
    keyed.set_current_key(&2u8).unwrap();
    assert_eq!(sum.get().unwrap(), None);
    sum.add(5).unwrap();
    assert_eq!(sum.get().unwrap(), Some(5));
    keyed.set_current_key(&1u8).unwrap();
    sum.clear().unwrap();
    assert_eq!(sum.get().unwrap(), None);
    assert_eq!(
        max.get().unwrap(),
        Some(9),
        "clearing one state leaves others"
    );
    sum.add(1).unwrap();
    assert_eq!(sum.get().unwrap(), Some(1), "a cleared state starts afresh");
}

pub fn aggregating_state_add_get_clear_merge<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let avg = keyed.aggregating_state("avg", Average).unwrap();
    keyed.set_current_key("sensor").unwrap();
    assert_eq!(avg.get().unwrap(), None);
    avg.add(2).unwrap();
    avg.add(4).unwrap();
    assert_eq!(avg.get().unwrap(), Some(3.0));
    avg.clear().unwrap();
    assert_eq!(avg.get().unwrap(), None);

    // Session windows merging: [0,10) + [5,20) + [30,40) into [0,40).
    let w = |start, end| Window { start, end };
    keyed.set_current_namespace(&w(0, 10)).unwrap();
    avg.add(1).unwrap();
    avg.add(3).unwrap();
    keyed.set_current_namespace(&w(5, 20)).unwrap();
    avg.add(8).unwrap();
    keyed.set_current_namespace(&w(0, 40)).unwrap();
    avg.add(0).unwrap();
    keyed.set_current_namespace(&w(99, 100)).unwrap();
    avg.merge_namespaces(&w(0, 40), &[w(0, 10), w(5, 20), w(30, 40)])
        .unwrap();
    assert_eq!(avg.get().unwrap(), None, "the current namespace is kept");
    keyed.set_current_namespace(&w(0, 40)).unwrap();
    assert_eq!(avg.get().unwrap(), Some(3.0)); // (1 + 3 + 8 + 0) / 4
    for gone in [w(0, 10), w(5, 20), w(30, 40)] {
        keyed.set_current_namespace(&gone).unwrap();
        assert_eq!(avg.get().unwrap(), None, "merged sources are cleared");
    }
    // Merging only empty sources writes nothing.
    avg.merge_namespaces(&w(200, 300), &[w(1, 2)]).unwrap();
    keyed.set_current_namespace(&w(200, 300)).unwrap();
    assert_eq!(avg.get().unwrap(), None);
    assert_eq!(scan_named(&keyed, "avg").len(), 1);
}

fn fill_namespaces(keyed: &KeyedState) {
    let value = keyed.value_state::<u32>("v").unwrap();
    let list = keyed.list_state::<u32>("l").unwrap();
    let map = keyed.map_state::<u32, u32>("m").unwrap();
    let sum = keyed
        .reducing_state::<u32, _>("r", |a: u32, b: u32| a + b)
        .unwrap();
    for key in 0..4u32 {
        keyed.set_current_key(&key).unwrap();
        for ns in 0..3u32 {
            if ns == 0 {
                keyed.set_default_namespace().unwrap();
            } else {
                keyed.set_current_namespace(&ns).unwrap();
            }
            let tag = key * 10 + ns;
            value.update(&tag).unwrap();
            list.add_all(&[tag, tag + 100]).unwrap();
            map.put(&ns, &tag).unwrap();
            sum.add(tag).unwrap();
        }
    }
}

pub fn namespaces_keep_state_apart<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    fill_namespaces(&keyed);
    let value = keyed.value_state::<u32>("v").unwrap();
    let list = keyed.list_state::<u32>("l").unwrap();
    let map = keyed.map_state::<u32, u32>("m").unwrap();
    let sum = keyed
        .reducing_state::<u32, _>("r", |a: u32, b: u32| a + b)
        .unwrap();
    for key in 0..4u32 {
        keyed.set_current_key(&key).unwrap();
        for ns in 0..3u32 {
            if ns == 0 {
                keyed.set_default_namespace().unwrap();
            } else {
                keyed.set_current_namespace(&ns).unwrap();
            }
            let tag = key * 10 + ns;
            assert_eq!(value.value().unwrap(), Some(tag));
            assert_eq!(list.get().unwrap(), [tag, tag + 100]);
            assert_eq!(all(map.iter()), [(ns, tag)]);
            assert_eq!(sum.get().unwrap(), Some(tag));
        }
    }
    // Clearing in one namespace leaves the others.
    keyed.set_current_key(&1u32).unwrap();
    keyed.set_current_namespace(&2u32).unwrap();
    value.clear().unwrap();
    list.clear().unwrap();
    map.clear().unwrap();
    assert_eq!(value.value().unwrap(), None);
    assert!(map.is_empty().unwrap());
    keyed.set_current_namespace(&1u32).unwrap();
    assert_eq!(value.value().unwrap(), Some(11));
    assert_eq!(all(map.iter()), [(1, 11)]);
    keyed.set_default_namespace().unwrap();
    assert_eq!(list.get().unwrap(), [10, 110]);
    keyed.set_current_namespace(&7u32).unwrap();
    assert_eq!(value.value().unwrap(), None, "an unused namespace is empty");
}

pub fn keys_lists_keys_of_a_state_in_a_namespace<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let value = keyed.value_state::<u32>("v").unwrap();
    let map = keyed.map_state::<u32, u32>("m").unwrap();
    let _other = keyed.value_state::<u32>("other").unwrap();
    for key in 0..40u32 {
        keyed.set_current_key(&key).unwrap();
        if key % 2 == 0 {
            value.update(&key).unwrap();
        }
        if key % 3 == 0 {
            keyed.set_current_namespace("w").unwrap();
            value.update(&key).unwrap();
            for user_key in 0..3 {
                map.put(&user_key, &key).unwrap(); // several entries, one key
            }
            keyed.set_default_namespace().unwrap();
        }
    }
    let sorted = |mut v: Vec<u32>| {
        v.sort_unstable();
        v
    };
    let evens: Vec<u32> = (0..40).filter(|k| k % 2 == 0).collect();
    let thirds: Vec<u32> = (0..40).filter(|k| k % 3 == 0).collect();
    assert_eq!(sorted(keyed.keys::<u32>("v").unwrap()), evens);
    assert!(keyed.keys::<u32>("m").unwrap().is_empty());
    assert!(keyed.keys::<u32>("other").unwrap().is_empty());
    keyed.set_current_namespace("w").unwrap();
    assert_eq!(sorted(keyed.keys::<u32>("v").unwrap()), thirds);
    let map_keys = keyed.keys::<u32>("m").unwrap();
    assert_eq!(map_keys.len(), thirds.len(), "each key listed once");
    assert_eq!(sorted(map_keys), thirds);
    assert!(keyed.keys::<u32>("no-such-state").is_err());
}
