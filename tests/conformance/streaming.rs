//! Streaming reads of the typed API: `MapState::iter`, `keys`, `values` and `is_empty` read a
//! map in bounded chunks that resume after the last key read, `ListState::iter` decodes one
//! element at a time. A model test compares them with a `BTreeMap` across many chunk sizes and
//! with TTL; a counting backend shows that a map of 100,000 entries is never handed out more
//! than one chunk per backend call; and writes during an iteration behave as
//! `MapState::iter` documents.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flowstate::backend::{BackendConfig, EntryIter, ReadModifyWrite};
use flowstate::internals::map_iter_in_chunks;
use flowstate::state::{MAP_ITER_CHUNK, StateOptions};
use flowstate::{
    BackendKind, Clock, KeyGroupRange, KeyedState, Result, SnapshotHandle, SnapshotTask,
    StateBackend, StateDescriptor, StateId, TtlConfig,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};

use super::harness::{BackendFactory, Env, MAX_PARALLELISM, all};

const TTL_MS: u64 = 100;
const KEYS: usize = 3;
const NAMESPACES: usize = 2;

/// Which of the model's states an operation uses: without or with TTL
/// (`OnCreateAndWrite`, `NeverReturnExpired`: what is visible depends on the clock only).
#[derive(Clone, Copy, Debug)]
pub struct Which {
    ttl: bool,
    key: usize,
    namespace: usize,
}

/// One step of the streaming model test.
#[derive(Clone, Debug)]
pub enum Op {
    /// `MapState::put`.
    Put { at: Which, map_key: u16, value: u8 },
    /// `count` puts of consecutive map keys from `first`: maps that span several chunks.
    PutMany {
        at: Which,
        first: u16,
        count: u16,
        value: u8,
    },
    /// `MapState::remove`.
    Remove { at: Which, map_key: u16 },
    /// `MapState::clear`.
    Clear { at: Which },
    /// `MapState::iter` reading `chunk` entries per backend call (0: the default chunk).
    Iter { at: Which, chunk: usize },
    /// `MapState::keys`.
    Keys { at: Which },
    /// `MapState::values`.
    Values { at: Which },
    /// `MapState::is_empty`.
    IsEmpty { at: Which },
    /// `ListState::add`.
    ListAdd { at: Which, value: u8 },
    /// `ListState::update`.
    ListUpdate { at: Which, values: Vec<u8> },
    /// `ListState::iter`, compared element by element, and `ListState::get`.
    ListIter { at: Which },
    /// Move the manual clock.
    Advance { ms: u64 },
}

fn which() -> impl Strategy<Value = Which> {
    (any::<bool>(), 0..KEYS, 0..NAMESPACES).prop_map(|(ttl, key, namespace)| Which {
        ttl,
        key,
        namespace,
    })
}

fn op() -> impl Strategy<Value = Op> {
    // Map keys up to 300: postcard writes them as one- and two-byte varints, whose byte order
    // is not the numeric order.
    let map_key = 0u16..300;
    prop_oneof![
        8 => (which(), map_key.clone(), any::<u8>())
            .prop_map(|(at, map_key, value)| Op::Put { at, map_key, value }),
        2 => (which(), map_key.clone(), 0u16..40, any::<u8>())
            .prop_map(|(at, first, count, value)| Op::PutMany { at, first, count, value }),
        3 => (which(), map_key).prop_map(|(at, map_key)| Op::Remove { at, map_key }),
        1 => which().prop_map(|at| Op::Clear { at }),
        5 => (which(), prop_oneof![Just(0usize), 1usize..6])
            .prop_map(|(at, chunk)| Op::Iter { at, chunk }),
        2 => which().prop_map(|at| Op::Keys { at }),
        2 => which().prop_map(|at| Op::Values { at }),
        3 => which().prop_map(|at| Op::IsEmpty { at }),
        4 => (which(), any::<u8>()).prop_map(|(at, value)| Op::ListAdd { at, value }),
        1 => (which(), prop::collection::vec(any::<u8>(), 0..5))
            .prop_map(|(at, values)| Op::ListUpdate { at, values }),
        3 => which().prop_map(|at| Op::ListIter { at }),
        3 => (0u64..2 * TTL_MS).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// A sequence of steps.
pub fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..60)
}

/// 64 cases per backend (`PROPTEST_CASES` raises it).
pub fn config() -> Config {
    Config::with_cases(64)
}

/// A map of the model: serialized map key (the iteration order) to (map key, value, write
/// time).
type ModelMap = BTreeMap<Vec<u8>, (u16, u8, u64)>;

#[derive(Default)]
struct Model {
    maps: BTreeMap<(bool, usize, usize), ModelMap>,
    lists: BTreeMap<(bool, usize, usize), Vec<(u8, u64)>>,
}

impl Model {
    fn map(&mut self, at: Which) -> &mut ModelMap {
        self.maps.entry((at.ttl, at.key, at.namespace)).or_default()
    }

    fn list(&mut self, at: Which) -> &mut Vec<(u8, u64)> {
        self.lists
            .entry((at.ttl, at.key, at.namespace))
            .or_default()
    }

    /// The visible entries of a map at `now`, in iteration order.
    fn visible(&mut self, at: Which, now: u64) -> Vec<(u16, u8)> {
        let map = self.map(at);
        if at.ttl {
            map.retain(|_, (_, _, written)| now < *written + TTL_MS);
        }
        map.values().map(|&(k, v, _)| (k, v)).collect()
    }

    fn visible_list(&mut self, at: Which, now: u64) -> Vec<u8> {
        let list = self.list(at);
        if at.ttl {
            list.retain(|(_, written)| now < *written + TTL_MS);
        }
        list.iter().map(|&(v, _)| v).collect()
    }
}

fn ok<T>(r: Result<T>, what: &str) -> std::result::Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))
}

fn collect<T>(
    iter: Result<impl Iterator<Item = Result<T>>>,
    what: &str,
) -> std::result::Result<Vec<T>, TestCaseError> {
    ok(ok(iter, what)?.collect::<Result<Vec<T>>>(), what)
}

/// Runs `ops` on a backend of `F` through the typed API and on the model.
pub fn run<F: BackendFactory>(ops: Vec<Op>) -> std::result::Result<(), TestCaseError> {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let ttl = TtlConfig::new(Duration::from_millis(TTL_MS));
    let maps = [
        ok(keyed.map_state::<u16, u8>("map"), "register")?,
        ok(
            keyed.map_state::<u16, u8>(StateOptions::new("ttl-map").with_ttl(ttl)),
            "register",
        )?,
    ];
    let lists = [
        ok(keyed.list_state::<u8>("list"), "register")?,
        ok(
            keyed.list_state::<u8>(StateOptions::new("ttl-list").with_ttl(ttl)),
            "register",
        )?,
    ];
    let select = |at: Which| -> std::result::Result<usize, TestCaseError> {
        ok(keyed.set_current_key(&(at.key as u32)), "set key")?;
        if at.namespace == 0 {
            ok(keyed.set_default_namespace(), "set namespace")?;
        } else {
            ok(
                keyed.set_current_namespace(&(at.namespace as u32)),
                "set namespace",
            )?;
        }
        Ok(usize::from(at.ttl))
    };
    let mut model = Model::default();
    for (step, op) in ops.into_iter().enumerate() {
        let now = env.clock().now_ms();
        match op {
            Op::Put { at, map_key, value } => {
                let i = select(at)?;
                ok(maps[i].put(&map_key, &value), "put")?;
                let bytes = postcard::to_allocvec(&map_key).expect("serialize a map key");
                model.map(at).insert(bytes, (map_key, value, now));
            }
            Op::PutMany {
                at,
                first,
                count,
                value,
            } => {
                let i = select(at)?;
                for map_key in first..first.saturating_add(count) {
                    ok(maps[i].put(&map_key, &value), "put")?;
                    let bytes = postcard::to_allocvec(&map_key).expect("serialize a map key");
                    model.map(at).insert(bytes, (map_key, value, now));
                }
            }
            Op::Remove { at, map_key } => {
                let i = select(at)?;
                ok(maps[i].remove(&map_key), "remove")?;
                let bytes = postcard::to_allocvec(&map_key).expect("serialize a map key");
                model.map(at).remove(&bytes);
            }
            Op::Clear { at } => {
                let i = select(at)?;
                ok(maps[i].clear(), "clear")?;
                model.map(at).clear();
            }
            Op::Iter { at, chunk } => {
                let i = select(at)?;
                let got = if chunk == 0 {
                    collect(maps[i].iter(), "iter")?
                } else {
                    collect(map_iter_in_chunks(&maps[i], chunk), "iter")?
                };
                prop_assert_eq!(got, model.visible(at, now), "iter at step {}", step);
            }
            Op::Keys { at } => {
                let i = select(at)?;
                let got = collect(maps[i].keys(), "keys")?;
                let expected: Vec<u16> = model.visible(at, now).iter().map(|e| e.0).collect();
                prop_assert_eq!(got, expected, "keys at step {}", step);
            }
            Op::Values { at } => {
                let i = select(at)?;
                let got = collect(maps[i].values(), "values")?;
                let expected: Vec<u8> = model.visible(at, now).iter().map(|e| e.1).collect();
                prop_assert_eq!(got, expected, "values at step {}", step);
            }
            Op::IsEmpty { at } => {
                let i = select(at)?;
                let got = ok(maps[i].is_empty(), "is_empty")?;
                prop_assert_eq!(
                    got,
                    model.visible(at, now).is_empty(),
                    "is_empty at step {}",
                    step
                );
            }
            Op::ListAdd { at, value } => {
                let i = select(at)?;
                ok(lists[i].add(&value), "add")?;
                model.list(at).push((value, now));
            }
            Op::ListUpdate { at, values } => {
                let i = select(at)?;
                ok(lists[i].update(&values), "update")?;
                *model.list(at) = values.iter().map(|&v| (v, now)).collect();
            }
            Op::ListIter { at } => {
                let i = select(at)?;
                let expected = model.visible_list(at, now);
                let got = collect(lists[i].iter(), "list iter")?;
                prop_assert_eq!(&got, &expected, "list iter at step {}", step);
                let got = ok(lists[i].get(), "list get")?;
                prop_assert_eq!(got, expected, "list get at step {}", step);
            }
            Op::Advance { ms } => env.clock().advance(ms),
        }
    }
    // Every map read once more, one entry per backend call.
    let now = env.clock().now_ms();
    for ttl in [false, true] {
        for key in 0..KEYS {
            for namespace in 0..NAMESPACES {
                let at = Which {
                    ttl,
                    key,
                    namespace,
                };
                let i = select(at)?;
                let got = collect(map_iter_in_chunks(&maps[i], 1), "final iter")?;
                prop_assert_eq!(got, model.visible(at, now), "final iter of {:?}", at);
            }
        }
    }
    Ok(())
}

/// What [`Counting`] saw of the scans it handed out.
#[derive(Debug, Default)]
struct ScanStats {
    /// `scan_prefix` and `scan_prefix_after` calls.
    calls: AtomicUsize,
    /// Of those, `scan_prefix_after` calls.
    resumed: AtomicUsize,
    /// The most entries taken from one call's iterator.
    most: AtomicUsize,
    /// Entries taken from all calls' iterators.
    entries: AtomicUsize,
}

impl ScanStats {
    fn reset(&self) {
        for n in [&self.calls, &self.resumed, &self.most, &self.entries] {
            n.store(0, Ordering::Relaxed);
        }
    }

    fn get(&self) -> (usize, usize, usize, usize) {
        (
            self.calls.load(Ordering::Relaxed),
            self.resumed.load(Ordering::Relaxed),
            self.most.load(Ordering::Relaxed),
            self.entries.load(Ordering::Relaxed),
        )
    }

    /// Wraps one call's iterator so that every entry taken from it is counted.
    fn count<'a>(self: &Arc<Self>, iter: EntryIter<'a>) -> EntryIter<'a> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::clone(self);
        let mut taken = 0;
        Box::new(iter.inspect(move |_| {
            taken += 1;
            stats.most.fetch_max(taken, Ordering::Relaxed);
            stats.entries.fetch_add(1, Ordering::Relaxed);
        }))
    }
}

/// A backend that hands every call to `inner` and counts the entries each scan call hands out.
struct Counting {
    inner: Box<dyn StateBackend>,
    stats: Arc<ScanStats>,
}

impl StateBackend for Counting {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    fn config(&self) -> &BackendConfig {
        self.inner.config()
    }
    fn register(&mut self, descriptor: &StateDescriptor) -> Result<StateId> {
        self.inner.register(descriptor)
    }
    fn states(&self) -> Vec<StateDescriptor> {
        self.inner.states()
    }
    fn get(&mut self, state: StateId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(state, key)
    }
    fn put(&mut self, state: StateId, key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.put(state, key, value)
    }
    fn delete(&mut self, state: StateId, key: &[u8]) -> Result<()> {
        self.inner.delete(state, key)
    }
    fn read_modify_write(
        &mut self,
        state: StateId,
        key: &[u8],
        f: &mut ReadModifyWrite<'_>,
    ) -> Result<()> {
        self.inner.read_modify_write(state, key, f)
    }
    fn merge(&mut self, state: StateId, key: &[u8], operand: &[u8]) -> Result<()> {
        self.inner.merge(state, key, operand)
    }
    fn scan_prefix(&mut self, state: StateId, prefix: &[u8]) -> Result<EntryIter<'_>> {
        let iter = self.inner.scan_prefix(state, prefix)?;
        Ok(self.stats.count(iter))
    }
    fn scan_prefix_after(
        &mut self,
        state: StateId,
        prefix: &[u8],
        after: &[u8],
    ) -> Result<EntryIter<'_>> {
        self.stats.resumed.fetch_add(1, Ordering::Relaxed);
        let iter = self.inner.scan_prefix_after(state, prefix, after)?;
        Ok(self.stats.count(iter))
    }
    fn delete_prefix(&mut self, state: StateId, prefix: &[u8]) -> Result<()> {
        self.inner.delete_prefix(state, prefix)
    }
    fn snapshot(&mut self, checkpoint_id: u64) -> Result<Box<dyn SnapshotTask>> {
        self.inner.snapshot(checkpoint_id)
    }
    fn restore(&mut self, handles: &[SnapshotHandle], range: KeyGroupRange) -> Result<()> {
        self.inner.restore(handles, range)
    }
}

/// Map keys whose serialized bytes sort as their numbers do (postcard: length, then bytes).
fn padded(n: usize) -> String {
    format!("k{n:06}")
}

/// A map of 100,000 entries (between the maps of other keys) is read by `iter`, `keys` and
/// `values` in calls that each hand out at most one chunk, and by `is_empty` in one call that
/// hands out one entry.
pub fn map_iteration_reads_one_chunk_per_call<F: BackendFactory>() {
    const ENTRIES: usize = 100_000;
    let env = Env::<F>::new();
    let stats = Arc::new(ScanStats::default());
    let keyed = KeyedState::new(Counting {
        inner: env.backend(KeyGroupRange::all(MAX_PARALLELISM)),
        stats: Arc::clone(&stats),
    });
    let map = keyed.map_state::<String, u32>("big").unwrap();
    for neighbour in ["big-0", "big-2"] {
        keyed.set_current_key(neighbour).unwrap();
        for i in 0..100 {
            map.put(&padded(i), &0).unwrap();
        }
    }
    keyed.set_current_key("big-1").unwrap();
    for i in 0..ENTRIES {
        map.put(&padded(i), &(i as u32)).unwrap();
    }
    let calls = ENTRIES / MAP_ITER_CHUNK + 1; // the last one finds the end
    let expect_chunked = |what: &str| {
        let (scans, resumed, most, entries) = stats.get();
        assert_eq!(most, MAP_ITER_CHUNK, "{what}: at most one chunk per call");
        assert_eq!(entries, ENTRIES, "{what}: every entry handed out once");
        assert_eq!(scans, calls, "{what}: one call per chunk");
        assert_eq!(
            resumed,
            calls - 1,
            "{what}: every call after the first resumes"
        );
        stats.reset();
    };

    stats.reset();
    let mut read = 0;
    for (i, entry) in map.iter().unwrap().enumerate() {
        let (key, value) = entry.unwrap();
        assert_eq!((key, value), (padded(i), i as u32));
        read += 1;
        let (_, _, most, _) = stats.get();
        assert!(
            most <= MAP_ITER_CHUNK,
            "never more than one chunk at a time"
        );
    }
    assert_eq!(read, ENTRIES);
    expect_chunked("iter");

    let mut read = 0;
    for (i, key) in map.keys().unwrap().enumerate() {
        assert_eq!(key.unwrap(), padded(i));
        read += 1;
    }
    assert_eq!(read, ENTRIES);
    expect_chunked("keys");

    let mut read = 0;
    for (i, value) in map.values().unwrap().enumerate() {
        assert_eq!(value.unwrap(), i as u32);
        read += 1;
    }
    assert_eq!(read, ENTRIES);
    expect_chunked("values");

    assert!(!map.is_empty().unwrap());
    assert_eq!(
        stats.get(),
        (1, 0, 1, 1),
        "is_empty stops at the first entry"
    );
}

/// Writes to a map during its iteration: seen exactly when their key sorts after the last key
/// read so far, as `MapState::iter` documents; keys come strictly ascending. A list iterator
/// keeps what it read.
pub fn writes_during_iteration_are_seen_after_the_chunk<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let map = keyed.map_state::<String, u32>("m").unwrap();
    let other = keyed.value_state::<u32>("other").unwrap();
    // Stored map keys are the even numbers; new ones are odd, between two stored ones.
    let entries = 3 * MAP_ITER_CHUNK + 10;
    keyed.set_current_key("user").unwrap();
    for i in 0..entries {
        map.put(&padded(2 * i), &0).unwrap();
    }
    // Within the first chunk (read when the iteration starts) and in later ones.
    let read_removed = padded(2 * 100);
    let read_updated = padded(2 * 200);
    let new_in_read = padded(2 * 300 + 1);
    let new_before = "a".to_string(); // shorter: its serialized bytes sort first
    let later_removed = padded(2 * (2 * MAP_ITER_CHUNK + 5));
    let later_updated = padded(2 * (MAP_ITER_CHUNK + 7));
    let new_later = padded(2 * (2 * MAP_ITER_CHUNK) + 1);
    let new_last = padded(999_999);

    let mut seen: Vec<(String, u32)> = Vec::new();
    for (n, entry) in map.iter().unwrap().enumerate() {
        let (key, value) = entry.unwrap();
        if n == 0 {
            map.remove(&read_removed).unwrap();
            map.put(&read_updated, &1).unwrap();
            map.put(&new_in_read, &1).unwrap();
            map.put(&new_before, &1).unwrap();
            map.remove(&later_removed).unwrap();
            map.put(&later_updated, &1).unwrap();
            map.put(&new_later, &1).unwrap();
            map.put(&new_last, &1).unwrap();
            // Another key and another state in the loop: the iteration keeps its map.
            keyed.set_current_key("someone-else").unwrap();
            other.update(&7).unwrap();
            map.put(&padded(1), &9).unwrap();
        }
        if n == 1 {
            keyed.set_current_key("user").unwrap();
        }
        if let Some((last, _)) = seen.last() {
            let order = postcard::to_allocvec(last).unwrap() < postcard::to_allocvec(&key).unwrap();
            assert!(order, "keys strictly ascending: {last} then {key}");
        }
        seen.push((key, value));
    }
    let lookup = |key: &String| seen.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
    assert_eq!(
        lookup(&read_removed),
        Some(0),
        "read before its removal: returned"
    );
    assert_eq!(
        lookup(&read_updated),
        Some(0),
        "read before its update: as read"
    );
    assert_eq!(
        lookup(&new_in_read),
        None,
        "new, at or before the last key read"
    );
    assert_eq!(lookup(&new_before), None, "new, before the start");
    assert_eq!(lookup(&later_removed), None, "removed before it was read");
    assert_eq!(
        lookup(&later_updated),
        Some(1),
        "updated before it was read"
    );
    assert_eq!(lookup(&new_later), Some(1), "new, after the last key read");
    assert_eq!(lookup(&new_last), Some(1), "new, at the end");
    assert_eq!(lookup(&padded(1)), None, "another key's map");
    assert_eq!(seen.len(), entries - 1 + 2);
    // Afterwards the map holds every write.
    assert_eq!(map.get(&read_removed).unwrap(), None);
    assert_eq!(map.get(&read_updated).unwrap(), Some(1));
    assert_eq!(map.get(&new_in_read).unwrap(), Some(1));
    assert_eq!(all(map.keys()).len(), entries - 2 + 4);

    let list = keyed.list_state::<u32>("l").unwrap();
    list.add_all(&[1, 2, 3]).unwrap();
    let mut elements = list.iter().unwrap();
    assert_eq!(elements.next().unwrap().unwrap(), 1);
    list.add(&4).unwrap();
    list.update(&[9]).unwrap();
    let rest: Vec<u32> = elements.map(|e| e.unwrap()).collect();
    assert_eq!(rest, [2, 3], "the iterator keeps the list it read");
    assert_eq!(all(list.iter()), [9]);
}

/// A damaged list value read element by element: the elements before the damage, then its
/// error, then nothing; `get` fails as a whole. A map entry that does not decode yields its
/// error and the iteration goes on.
pub fn damaged_values_while_streaming<F: BackendFactory>() {
    let env = Env::<F>::new();
    let keyed = env.keyed_all();
    let list = keyed.list_state::<u32>("l").unwrap();
    let map = keyed.map_state::<u32, String>("m").unwrap();
    keyed.set_current_key(&1u32).unwrap();
    list.add_all(&[7, 8]).unwrap();
    map.put(&1, &"one".to_string()).unwrap();
    map.put(&3, &"three".to_string()).unwrap();
    let key = super::harness::composite_of(&1u32);
    keyed
        .with_backend(|b| {
            let l = b.register(&StateDescriptor::new("l", flowstate::StateKind::List));
            // A frame that claims 200 bytes, where 2 are left.
            b.merge(l.unwrap(), &key, &[200, 1, 2]).unwrap();
            let m = b.register(&StateDescriptor::new("m", flowstate::StateKind::Map));
            // Map key 2 (between 1 and 3) whose value is not a string.
            b.put(m.unwrap(), &[key.as_slice(), &[2]].concat(), &[9])
                .unwrap();
        })
        .unwrap();
    let mut elements = list.iter().unwrap();
    assert_eq!(elements.next().unwrap().unwrap(), 7);
    assert_eq!(elements.next().unwrap().unwrap(), 8);
    assert!(elements.next().unwrap().unwrap_err().is_corruption());
    assert!(elements.next().is_none(), "nothing after the damage");
    assert!(list.get().unwrap_err().is_corruption());
    let entries: Vec<_> = map.iter().unwrap().collect();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0].as_ref().unwrap(), &(1, "one".to_string()));
    assert!(matches!(
        entries[1],
        Err(flowstate::Error::Serialization(_))
    ));
    assert_eq!(entries[2].as_ref().unwrap(), &(3, "three".to_string()));
}
