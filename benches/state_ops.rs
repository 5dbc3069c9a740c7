//! Typed state operations on the memory backend against a raw `HashMap<Vec<u8>, Vec<u8>>` doing the
//! equivalent work in the same run (postcard-serialize key and value, then insert or look up), over
//! 10k keys per iteration: what the typed layer, key groups, composite keys and the persistent
//! maps cost on top of a plain hash map. Run with `cargo bench --bench state_ops`.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use flowstate::{BackendConfig, KeyedState, ListState, MapState, MemoryBackend, ValueState};

/// Keys touched per iteration.
const KEYS: u64 = 10_000;
/// Distinct map keys per key in the map benches.
const MAP_KEYS_PER_KEY: u64 = 16;

type RawMap = HashMap<Vec<u8>, Vec<u8>>;

fn ser<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard serializes integers")
}

fn keyed() -> KeyedState {
    KeyedState::new(MemoryBackend::new(BackendConfig::default()))
}

fn value_update(c: &mut Criterion) {
    let mut group = c.benchmark_group("value_update");
    group.throughput(Throughput::Elements(KEYS));
    let keyed = keyed();
    let state: ValueState<u64> = keyed.value_state("v").expect("register");
    let mut round = 0u64;
    group.bench_function("memory_backend", |b| {
        b.iter(|| {
            round += 1;
            for key in 0..KEYS {
                keyed.set_current_key(&key).expect("own key group");
                state.update(&(key + round)).expect("update");
            }
        })
    });
    let mut raw = RawMap::new();
    group.bench_function("hashmap_baseline", |b| {
        b.iter(|| {
            round += 1;
            for key in 0..KEYS {
                raw.insert(ser(&key), ser(&(key + round)));
            }
        })
    });
    group.finish();
}

fn map_key(key: u64, map_key: u64) -> Vec<u8> {
    let mut out = ser(&key);
    out.extend_from_slice(&ser(&map_key));
    out
}

fn map_put_get(c: &mut Criterion) {
    let mut group = c.benchmark_group("map");
    group.throughput(Throughput::Elements(KEYS));
    let keyed = keyed();
    let state: MapState<u64, u64> = keyed.map_state("m").expect("register");
    let mut round = 0u64;
    group.bench_function("put/memory_backend", |b| {
        b.iter(|| {
            round += 1;
            for key in 0..KEYS {
                keyed.set_current_key(&key).expect("own key group");
                state
                    .put(&((key + round) % MAP_KEYS_PER_KEY), &round)
                    .expect("put");
            }
        })
    });
    let mut raw = RawMap::new();
    group.bench_function("put/hashmap_baseline", |b| {
        b.iter(|| {
            round += 1;
            for key in 0..KEYS {
                raw.insert(map_key(key, (key + round) % MAP_KEYS_PER_KEY), ser(&round));
            }
        })
    });
    // Every get hits: fill all MAP_KEYS_PER_KEY entries of every key on both sides first.
    for key in 0..KEYS {
        keyed.set_current_key(&key).expect("own key group");
        for map_key_index in 0..MAP_KEYS_PER_KEY {
            state.put(&map_key_index, &key).expect("put");
            raw.insert(map_key(key, map_key_index), ser(&key));
        }
    }
    group.bench_function("get/memory_backend", |b| {
        b.iter(|| {
            round += 1;
            for key in 0..KEYS {
                keyed.set_current_key(&key).expect("own key group");
                black_box(state.get(&(round % MAP_KEYS_PER_KEY)).expect("get"));
            }
        })
    });
    group.bench_function("get/hashmap_baseline", |b| {
        b.iter(|| {
            round += 1;
            for key in 0..KEYS {
                let value = raw.get(&map_key(key, round % MAP_KEYS_PER_KEY));
                black_box(value.map(|v| postcard::from_bytes::<u64>(v)));
            }
        })
    });
    group.finish();
}

fn list_add(c: &mut Criterion) {
    let mut group = c.benchmark_group("list_add");
    group.throughput(Throughput::Elements(KEYS));
    // A fresh state per iteration so lists do not grow with the iteration count.
    group.bench_function("memory_backend", |b| {
        b.iter_batched(
            || {
                let keyed = keyed();
                let state: ListState<u64> = keyed.list_state("l").expect("register");
                (keyed, state)
            },
            |(keyed, state)| {
                for key in 0..KEYS {
                    keyed.set_current_key(&key).expect("own key group");
                    state.add(&key).expect("add");
                }
                (keyed, state)
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("hashmap_baseline", |b| {
        b.iter_batched(
            RawMap::new,
            |mut raw| {
                for key in 0..KEYS {
                    // The backend's framing: varint length (one byte here), then the element.
                    let bytes = ser(&key);
                    let list = raw.entry(ser(&key)).or_default();
                    list.push(bytes.len() as u8);
                    list.extend_from_slice(&bytes);
                }
                raw
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, value_update, map_put_get, list_add);
criterion_main!(benches);
