//! What every conformance test stands on: the [`BackendFactory`] a backend implements to join the
//! suite, a per-test [`Env`] (scratch directory, manual clock, backend construction), and
//! byte-level views of a backend's contents used to compare states exactly.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flowstate::keys::{composite_key, key_group_for_key, key_group_of};
use flowstate::{
    BackendConfig, KeyGroupRange, KeyedState, ManualClock, Result, StateBackend, StateDescriptor,
};
use serde::Serialize;

/// Number of key groups of every job in the suite.
pub const MAX_PARALLELISM: u16 = 128;

/// The clock reading every test starts at (ms); far from 0 so `now - ttl` never underflows.
pub const START_MS: u64 = 1_000_000;

/// How a backend joins the suite: `conformance_suite!(name, Factory);` in `tests/conformance.rs`.
pub trait BackendFactory {
    /// Whether accesses to a TTL state remove expired entries of keys nobody reads (the heap
    /// backends' incremental cleanup). A backend that drops them elsewhere (the LSM backend's
    /// compaction filter) sets this to false: the tests then compare only what does not depend
    /// on when compactions run, and its suite leaves out
    /// `ttl::incremental_cleanup_removes_unread_keys` (see `conformance_suite!`).
    const INCREMENTAL_TTL_CLEANUP: bool = true;

    /// A new, empty backend for `config`. `scratch` is a fresh, empty directory owned by this
    /// backend instance (its working directory, checkpoint directory, …); it outlives every
    /// backend of the test, so snapshot handles that point into it restore into other instances.
    fn create(config: BackendConfig, scratch: &Path) -> Result<Box<dyn StateBackend>>;
}

/// One test's surroundings: a temporary directory, a manual clock shared by all its backends,
/// and a counter naming each backend's scratch directory.
pub struct Env<F> {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    created: Cell<u32>,
    _factory: PhantomData<F>,
}

impl<F: BackendFactory> Env<F> {
    /// A fresh environment; the clock reads [`START_MS`].
    pub fn new() -> Self {
        Env {
            dir: tempfile::tempdir().expect("tests need a temporary directory"),
            clock: ManualClock::new(START_MS),
            created: Cell::new(0),
            _factory: PhantomData,
        }
    }

    /// The clock every backend of this environment reads.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// The config of a backend owning `range` of [`MAX_PARALLELISM`] groups, on the manual clock.
    pub fn config(&self, range: KeyGroupRange) -> BackendConfig {
        BackendConfig::new(MAX_PARALLELISM, range)
            .expect("the suite's ranges fit max_parallelism")
            .with_clock(self.clock.clone())
    }

    /// The config of a backend owning `range` of a job with `max_parallelism` key groups, on
    /// the manual clock.
    pub fn config_of(&self, max_parallelism: u16, range: KeyGroupRange) -> BackendConfig {
        BackendConfig::new(max_parallelism, range)
            .expect("the range fits max_parallelism")
            .with_clock(self.clock.clone())
    }

    /// A new backend owning `range`.
    pub fn backend(&self, range: KeyGroupRange) -> Box<dyn StateBackend> {
        self.backend_with(self.config(range))
    }

    /// A new backend built from `config`, in a scratch directory of its own.
    pub fn backend_with(&self, config: BackendConfig) -> Box<dyn StateBackend> {
        let n = self.created.get();
        self.created.set(n + 1);
        let scratch: PathBuf = self.dir.path().join(format!("backend-{n}"));
        std::fs::create_dir_all(&scratch).expect("create a scratch directory");
        F::create(config, &scratch).expect("the factory creates a backend")
    }

    /// Typed state over a new backend owning `range`.
    pub fn keyed(&self, range: KeyGroupRange) -> KeyedState {
        KeyedState::from_boxed(self.backend(range))
    }

    /// Typed state over a new backend owning all key groups.
    pub fn keyed_all(&self) -> KeyedState {
        self.keyed(KeyGroupRange::all(MAX_PARALLELISM))
    }
}

/// Every entry of every state, by (state name, composite key): the exact contents of a backend.
pub type Contents = BTreeMap<(String, Vec<u8>), Vec<u8>>;

/// Reads every entry of every registered state through `scan_prefix` (no TTL applied).
pub fn dump(backend: &mut dyn StateBackend) -> Contents {
    let mut out = Contents::new();
    for descriptor in backend.states() {
        for (key, value) in scan_state(backend, &descriptor, &[]) {
            out.insert((descriptor.name.clone(), key), value);
        }
    }
    out
}

/// [`dump`] of the backend under typed state.
pub fn dump_keyed(keyed: &KeyedState) -> Contents {
    keyed.with_backend(dump).unwrap()
}

/// Every entry of one state under `prefix`, in order (no TTL applied).
pub fn scan_state(
    backend: &mut dyn StateBackend,
    descriptor: &StateDescriptor,
    prefix: &[u8],
) -> Vec<(Vec<u8>, Vec<u8>)> {
    // Re-registering an identical descriptor returns its id without assuming how ids are made.
    let id = backend
        .register(descriptor)
        .expect("a registered descriptor registers again");
    backend
        .scan_prefix(id, prefix)
        .expect("scan_prefix")
        .collect::<Result<Vec<_>>>()
        .expect("scan entries")
}

/// Entries of the state called `name` (no TTL applied).
pub fn scan_named(keyed: &KeyedState, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    keyed
        .with_backend(|b| {
            let descriptor = b
                .states()
                .into_iter()
                .find(|d| d.name == name)
                .expect("state is registered");
            scan_state(b, &descriptor, &[])
        })
        .unwrap()
}

/// The contents restricted to key groups in `range`.
pub fn restrict(contents: &Contents, range: KeyGroupRange) -> Contents {
    contents
        .iter()
        .filter(|((_, key), _)| key_group_of(key).is_some_and(|kg| range.contains(kg)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The serialized bytes and key group of a typed key.
pub fn key_bytes<K: Serialize + ?Sized>(key: &K) -> (u16, Vec<u8>) {
    let bytes = postcard::to_allocvec(key).expect("serialize a test key");
    (key_group_for_key(&bytes, MAX_PARALLELISM), bytes)
}

/// The composite key of a typed key in the default namespace, with no user key.
pub fn composite_of<K: Serialize + ?Sized>(key: &K) -> Vec<u8> {
    let (kg, bytes) = key_bytes(key);
    composite_key(kg, &bytes, &[], &[])
}

/// The key group of a typed key.
pub fn group_of<K: Serialize + ?Sized>(key: &K) -> u16 {
    key_bytes(key).0
}

/// Every item of a streaming read (`MapState::iter`, `keys`, `values`, `ListState::iter`),
/// failing the test at the first error.
pub fn all<T, I: Iterator<Item = Result<T>>>(iter: Result<I>) -> Vec<T> {
    iter.expect("start the iteration")
        .collect::<Result<Vec<T>>>()
        .expect("every item reads")
}
