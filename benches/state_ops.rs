//! Typed state operations on the memory backend against a raw `HashMap<Vec<u8>, Vec<u8>>` doing the
//! equivalent work in the same run (postcard-serialize key and value, then insert or look up), over
//! 10k keys per iteration: what the typed layer, key groups, composite keys and the persistent
//! maps cost on top of a plain hash map; and `MapState` iteration among many other entries
//! (`map_iter`). Run with `cargo bench --bench state_ops`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use flowstate::checkpoint::storage::{CheckpointStorage, LocalDirStorage};
use flowstate::{
    BackendConfig, FsBackend, KeyedState, ListState, MapState, MemoryBackend, StateBackend,
    ValueState,
};

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
                keyed.list_state::<u64>("l").expect("register");
                keyed
            },
            |keyed| {
                {
                    // A handle borrows its keyed state; the setup's registration makes this a
                    // lookup.
                    let state: ListState<u64> = keyed.list_state("l").expect("register");
                    for key in 0..KEYS {
                        keyed.set_current_key(&key).expect("own key group");
                        state.add(&key).expect("add");
                    }
                }
                keyed
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

/// Keys whose maps fill the state in the iteration bench.
const ITER_KEYS: u64 = 10_000;
/// Entries of each map in the iteration bench: ITER_KEYS x ITER_MAP_ENTRIES = 100k entries.
const ITER_MAP_ENTRIES: u64 = 10;
/// Maps iterated per bench iteration.
const ITER_PER_ROUND: u64 = 1_000;

/// `MapState::iter` of one 10-entry map in a state of 100k entries (10k keys, 128 key groups):
/// a per-(key, namespace) prefix scan, which should cost the map's size, not the key group's.
fn map_iter(c: &mut Criterion) {
    let mut group = c.benchmark_group("map_iter");
    group.throughput(Throughput::Elements(ITER_PER_ROUND));
    let dir = tempfile::tempdir().expect("temp dir");
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::open(dir.path()).expect("open checkpoint storage"));
    let fs = FsBackend::new(BackendConfig::default(), storage).expect("open fs backend");
    let backends: [(&str, Box<dyn StateBackend>); 2] = [
        (
            "memory_backend",
            Box::new(MemoryBackend::new(BackendConfig::default())),
        ),
        ("fs_backend", Box::new(fs)),
    ];
    for (name, backend) in backends {
        let keyed = KeyedState::from_boxed(backend);
        let state: MapState<u64, u64> = keyed.map_state("m").expect("register");
        for key in 0..ITER_KEYS {
            keyed.set_current_key(&key).expect("own key group");
            for map_key in 0..ITER_MAP_ENTRIES {
                state.put(&map_key, &key).expect("put");
            }
        }
        let mut round = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                for i in 0..ITER_PER_ROUND {
                    round += 1;
                    keyed
                        .set_current_key(&(round.wrapping_mul(7919) % ITER_KEYS))
                        .expect("own key group");
                    let mut entries = 0u64;
                    for entry in state.iter().expect("iter") {
                        black_box(entry.expect("entry"));
                        entries += 1;
                    }
                    debug_assert_eq!(entries, ITER_MAP_ENTRIES, "{i}");
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, value_update, map_put_get, list_add, map_iter);
criterion_main!(benches);
