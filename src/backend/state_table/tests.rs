//! Tests of [`StateTable`]: point operations, prefix scans and deletes (indexed and not)
//! against a `BTreeMap` model, and clones as frozen views.

use super::*;
use crate::keys::composite_key;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn range(a: u16, b: u16) -> KeyGroupRange {
    KeyGroupRange::new(a, b).unwrap()
}

#[test]
fn a_clone_is_a_frozen_view() {
    let mut live = StateTable::new(range(0, 3));
    let k = composite_key(1, b"alice", b"", b"");
    live.put(&k, b"1");
    let frozen = live.clone();
    live.put(&k, b"2");
    live.append(&k, b"3");
    live.put(&composite_key(2, b"bob", b"", b""), b"x");
    assert_eq!(frozen.get(&k), Some(&b"1"[..]));
    assert_eq!(frozen.len(), 1);
    assert_eq!(live.get(&k), Some(&b"23"[..]));
    live.remove(&k);
    assert_eq!(frozen.get(&k), Some(&b"1"[..]));
    assert_eq!(live.get(&k), None);
    // Out-of-range keys are ignored.
    live.put(&composite_key(9, b"x", b"", b""), b"x");
    assert_eq!(live.len(), 1);
}

#[test]
fn read_modify_write_in_place_unless_shared() {
    let mut live = StateTable::new(range(0, 3));
    let k = composite_key(1, b"alice", b"", b"");
    let mut buffer = Vec::new();
    let plus_one = |stored: Option<&[u8]>, out: &mut Vec<u8>| -> Result<(), ()> {
        assert!(out.is_empty(), "the buffer is handed over empty");
        out.extend_from_slice(stored.unwrap_or(b""));
        out.push(b'1');
        Ok(())
    };
    live.read_modify_write(&k, &mut buffer, plus_one).unwrap();
    assert_eq!(live.get(&k), Some(&b"1"[..]));
    // Owned by the live table alone: the same allocation is overwritten.
    let before = live.get(&k).unwrap().as_ptr();
    live.read_modify_write(&k, &mut buffer, plus_one).unwrap();
    assert_eq!(live.get(&k), Some(&b"11"[..]));
    assert_eq!(live.get(&k).unwrap().as_ptr(), before);
    // Shared with a frozen clone: replaced, the clone keeps its bytes.
    let frozen = live.clone();
    live.read_modify_write(&k, &mut buffer, plus_one).unwrap();
    assert_eq!(frozen.get(&k), Some(&b"11"[..]));
    assert_eq!(live.get(&k), Some(&b"111"[..]));
    // A failing function changes nothing; an out-of-range key is ignored.
    assert_eq!(
        live.read_modify_write(&k, &mut buffer, |_, out| {
            out.push(b'x');
            Err("no")
        }),
        Err("no")
    );
    assert_eq!(live.get(&k), Some(&b"111"[..]));
    let foreign = composite_key(9, b"x", b"", b"");
    live.read_modify_write(&foreign, &mut buffer, plus_one)
        .unwrap();
    assert_eq!(live.len(), 1);
}

proptest! {
    /// Sorting a key group by its keys' first 16 bytes as an integer, ties in full, gives the
    /// keys' byte order: keys of every length, with zero bytes and long shared prefixes.
    #[test]
    fn sorted_group_is_byte_order(keys in proptest::collection::btree_set(
        proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(0xff)], 0..24), 0..60)) {
        let mut table = StateTable::new(range(0, 3));
        let mut expected = Vec::new();
        for user in &keys {
            let mut key = vec![0, 2];
            key.extend_from_slice(user);
            table.put(&key, b"v");
            expected.push(key);
        }
        expected.sort();
        let sorted: Vec<Vec<u8>> =
            table.sorted_group(2, &[]).into_iter().map(|(k, _)| k.to_vec()).collect();
        prop_assert_eq!(sorted, expected);
    }

    /// Puts, appends, read-modify-writes and removes against a BTreeMap model; a clone taken in the middle keeps
    /// the model's state of that moment, and sorted groups give the model's order.
    #[test]
    fn matches_a_btreemap(ops in proptest::collection::vec(
        (0u8..5, 0u16..4, 0u8..6, proptest::collection::vec(any::<u8>(), 0..4)), 0..120),
        freeze_at in 0usize..120,
    ) {
        let mut table = StateTable::new(range(0, 3));
        let mut model = BTreeMap::new();
        let mut frozen = None;
        for (i, (op, kg, key, value)) in ops.into_iter().enumerate() {
            if i == freeze_at {
                frozen = Some((table.clone(), model.clone()));
            }
            let k = composite_key(kg, &[key], b"", b"");
            match op {
                0 => { table.put(&k, &value); model.insert(k, value); }
                1 => {
                    table.append(&k, &value);
                    model.entry(k).or_insert_with(Vec::new).extend_from_slice(&value);
                }
                2 => { table.remove(&k); model.remove(&k); }
                3 => {
                    let mut buffer = Vec::new();
                    table.read_modify_write(&k, &mut buffer, |old, out| -> Result<(), ()> {
                        out.extend_from_slice(&value);
                        out.extend_from_slice(old.unwrap_or(b"-"));
                        Ok(())
                    }).unwrap();
                    let mut new = value.clone();
                    new.extend_from_slice(model.get(&k).map_or(&b"-"[..], |v: &Vec<u8>| v));
                    model.insert(k, new);
                }
                _ => {
                    let prefix = &k[..3];
                    table.remove_prefix(prefix);
                    model.retain(|mk: &Vec<u8>, _| !mk.starts_with(prefix));
                }
            }
        }
        let check = |table: &StateTable, model: &BTreeMap<Vec<u8>, Vec<u8>>| {
            let all: Vec<(Vec<u8>, Vec<u8>)> = table
                .groups_for_prefix(&[])
                .flat_map(|kg| table.sorted_group(kg, &[]))
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect();
            let expected: Vec<(Vec<u8>, Vec<u8>)> =
                model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(all, expected);
            Ok(())
        };
        check(&table, &model)?;
        if let Some((table, model)) = frozen {
            check(&table, &model)?;
        }
    }
}

/// Model of [`StateTable`]: an ordered map of the in-range keys.
type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// A prefix scan as the heap store does it: indexed when the prefix decodes, else key group by
/// key group.
fn scan(table: &StateTable, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let entries = match table.sorted_under(prefix) {
        Some(entries) => entries,
        None => table
            .groups_for_prefix(prefix)
            .flat_map(|kg| table.sorted_group(kg, prefix))
            .collect(),
    };
    entries
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

fn model_scan(model: &Model, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    model
        .range(prefix.to_vec()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A key in the test's small key space: key group 0..4 (the table covers 0..=2), key from
/// {"", "a", "ab"}, namespace from {"", "n"}, user key of up to 3 bytes from {0, 1, 255}; shape
/// 3 is a key that does not decode (a key length beyond the end).
fn test_key(shape: u8, kg: u16, key: u8, ns: u8, user_key: &[u8]) -> Vec<u8> {
    let key: &[u8] = [&b""[..], b"a", b"ab"][usize::from(key % 3)];
    let ns: &[u8] = [&b""[..], b"n"][usize::from(ns % 2)];
    let user_key: Vec<u8> = user_key
        .iter()
        .map(|b| [0, 1, 255][usize::from(b % 3)])
        .collect();
    match shape % 4 {
        3 => {
            let mut raw = kg.to_be_bytes().to_vec();
            raw.push(9);
            raw.extend_from_slice(&user_key);
            raw
        }
        _ => composite_key(kg, key, ns, &user_key),
    }
}

/// Prefix shapes: the (kg, key, ns) part with part of the user key (indexed), the (kg, key, ns)
/// part, the key cut inside the namespace (not decodable), the key group, its first byte, empty.
fn test_prefix(key: &[u8], shape: u8) -> Vec<u8> {
    let primary = primary_len(key).unwrap_or(key.len());
    let cut = match shape % 6 {
        0 => (primary + 1).min(key.len()),
        1 => primary,
        2 => primary.saturating_sub(1),
        3 => 2,
        4 => 1,
        _ => 0,
    };
    key[..cut.min(key.len())].to_vec()
}

#[test]
fn map_prefix_scans_use_the_index_and_keep_key_order() {
    let mut table = StateTable::new(range(0, 3));
    for kg in 0..4 {
        for key in [&b"k"[..], b"k2"] {
            table.put(&composite_key(kg, key, b"", b""), b"value");
            for user_key in [&[2u8][..], &[1], &[1, 0], &[255]] {
                table.put(&composite_key(kg, key, b"", user_key), user_key);
            }
        }
    }
    let prefix = composite_key(2, b"k", b"", b"");
    let keys: Vec<Vec<u8>> = table
        .sorted_under(&prefix)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k[prefix.len()..].to_vec())
        .collect();
    assert_eq!(keys, [vec![], vec![1], vec![1, 0], vec![2], vec![255]]);
    // Not a decodable prefix: no index answer.
    assert!(table.sorted_under(&prefix[..3]).is_none());
    table.remove_prefix(&composite_key(2, b"k", b"", &[1]));
    assert_eq!(table.sorted_under(&prefix).unwrap().len(), 3);
    table.remove_prefix(&prefix);
    assert!(table.sorted_under(&prefix).unwrap().is_empty());
    assert_eq!(table.len(), 4 * 2 * 5 - 5);
    let group = table.groups.get(2).unwrap();
    assert_eq!(
        group.user_keys.len(),
        1,
        "the emptied map leaves no index entry"
    );
}

proptest! {
    /// Puts, appends, deletes, gets, prefix scans and prefix deletes of every shape over keys
    /// with several user keys per (key, namespace) (and keys that do not decode), against a
    /// BTreeMap model; a clone taken in the middle keeps the model's state of that moment
    /// through every later operation, indexed scans included.
    #[test]
    fn prefix_operations_match_a_btreemap(ops in proptest::collection::vec(
        (0u8..6, (0u8..4, 0u16..4, 0u8..3, 0u8..2, proptest::collection::vec(0u8..3, 0..3)),
         0u8..6, proptest::collection::vec(any::<u8>(), 0..3)), 0..150),
        freeze_at in 0usize..150,
    ) {
        let range = range(0, 2);
        let mut table = StateTable::new(range);
        let mut model = Model::new();
        let mut frozen = None;
        for (i, (op, (shape, kg, key, ns, user_key), prefix_shape, value)) in
            ops.into_iter().enumerate()
        {
            if i == freeze_at {
                frozen = Some((table.clone(), model.clone()));
            }
            let k = test_key(shape, kg, key, ns, &user_key);
            let in_range = range.contains(kg);
            let prefix = test_prefix(&k, prefix_shape);
            match op {
                0 => {
                    table.put(&k, &value);
                    if in_range { model.insert(k, value); }
                }
                1 => {
                    table.append(&k, &value);
                    if in_range { model.entry(k).or_default().extend_from_slice(&value); }
                }
                2 => { table.remove(&k); model.remove(&k); }
                3 => prop_assert_eq!(table.get(&k), model.get(&k).map(Vec::as_slice)),
                4 => prop_assert_eq!(scan(&table, &prefix), model_scan(&model, &prefix)),
                _ => {
                    table.remove_prefix(&prefix);
                    model.retain(|mk, _| !mk.starts_with(&prefix));
                }
            }
            if let Some((frozen_table, frozen_model)) = &frozen {
                prop_assert_eq!(scan(frozen_table, &prefix), model_scan(frozen_model, &prefix));
            }
        }
        for (table, model) in [Some((table, model)), frozen].into_iter().flatten() {
            prop_assert_eq!(scan(&table, &[]), model_scan(&model, &[]));
            prop_assert_eq!(table.len(), model.len());
            // Every primary part's indexed scan gives the model's, and the index holds exactly
            // the keys with a user key.
            for key in model.keys() {
                if let Some(n) = primary_len(key) {
                    prop_assert_eq!(scan(&table, &key[..n]), model_scan(&model, &key[..n]));
                }
            }
            let indexed: usize = table
                .groups
                .iter()
                .flat_map(|g| g.user_keys.values())
                .map(BTreeSet::len)
                .sum();
            let with_user_key = model
                .keys()
                .filter(|k| primary_len(k).is_some_and(|n| n < k.len()))
                .count();
            prop_assert_eq!(indexed, with_user_key);
        }
    }
}

proptest! {
    /// The fast path of `primary_len` agrees with the composite-key decoder on any bytes, and on
    /// composite keys with long keys (multi-byte varint lengths).
    #[test]
    fn primary_len_matches_the_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..12),
        key_len in 0usize..300,
        user_key in proptest::collection::vec(any::<u8>(), 0..4),
    ) {
        let decoded = |k: &[u8]| {
            CompositeKey::decode(k, "t", 0).ok().map(|p| k.len() - p.user_key.len())
        };
        prop_assert_eq!(primary_len(&bytes), decoded(&bytes));
        let long = composite_key(1, &vec![7u8; key_len], b"ns", &user_key);
        prop_assert_eq!(primary_len(&long), Some(long.len() - user_key.len()));
    }
}
