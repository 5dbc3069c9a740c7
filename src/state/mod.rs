//! Typed keyed state over any [`StateBackend`]: the API user functions program against.
//!
//! [`KeyedState`] owns the backend and the current key and namespace; state handles
//! ([`ValueState`], [`ListState`], [`MapState`], [`ReducingState`], [`AggregatingState`]) borrow
//! it and read and write under its current key and namespace. A keyed state and its handles
//! belong to one thread (see [`KeyedState`] for what may cross threads). Keys, namespaces, values
//! and map keys are serialized with postcard. TTL (see [`crate::TtlConfig`]) wraps every value,
//! list element and map entry in a timestamp envelope.

mod aggregating;
mod list;
mod map;
mod reducing;
pub(crate) mod ttl;
mod value;

use std::any::type_name;
use std::cell::{Cell, RefCell, RefMut};
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{
    SnapshotHandle, SnapshotTask, StateBackend, StateDescriptor, StateId, StateKind,
};
use crate::codec::varint::put_varint32;
use crate::error::{Error, Result};
use crate::keys::{CompositeKey, KeyGroupRange, check_max_parallelism, key_group_for_key};
use crate::ttl::TtlConfig;

pub use aggregating::{AggregateFunction, AggregatingState};
pub use list::{ListIter, ListState};
pub use map::{MAP_ITER_CHUNK, MapIter, MapKeys, MapState, MapValues};
pub use reducing::ReducingState;
pub use value::ValueState;

/// How a state is registered: its name, TTL and serializer id.
#[derive(Clone, Debug)]
pub struct StateOptions {
    name: String,
    ttl: Option<TtlConfig>,
    serializer: String,
}

impl StateOptions {
    /// Options for a state called `name`, without TTL, with the `"postcard"` serializer id.
    pub fn new(name: impl Into<String>) -> Self {
        StateOptions {
            name: name.into(),
            ttl: None,
            serializer: "postcard".to_string(),
        }
    }

    /// Entries expire per `ttl`.
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Names the serializer (bump it when the value type changes incompatibly: restoring a
    /// snapshot written with another id then fails with [`Error::StateMismatch`]).
    pub fn with_serializer(mut self, serializer: impl Into<String>) -> Self {
        self.serializer = serializer.into();
        self
    }

    fn descriptor(&self, kind: StateKind) -> StateDescriptor {
        StateDescriptor {
            name: self.name.clone(),
            kind,
            ttl: self.ttl,
            serializer: self.serializer.clone(),
        }
    }
}

impl From<&str> for StateOptions {
    fn from(name: &str) -> Self {
        StateOptions::new(name)
    }
}

impl From<String> for StateOptions {
    fn from(name: String) -> Self {
        StateOptions::new(name)
    }
}

pub(crate) struct Context {
    backend: Box<dyn StateBackend>,
    /// Serialized current namespace (empty bytes: the default namespace).
    namespace: Vec<u8>,
    /// The composite key of the current key and namespace (no user key), kept in step with
    /// both so the hot path encodes it once per key, not once per access. Empty when no key is
    /// set (a composite key is never empty). It is the only copy of the current key's bytes.
    prefix: Vec<u8>,
    /// Length of `prefix` up to the end of the key (where the namespace's length starts).
    key_end: usize,
    /// Reused buffer for serializing values (no allocation per update).
    scratch: Vec<u8>,
    /// The Rust type each state name was registered with here (`std::any::type_name`): a second
    /// registration with another type is refused, since the bytes would not decode.
    types: std::collections::HashMap<String, String>,
}

impl Context {
    fn no_key() -> Error {
        Error::invalid("no current key: call KeyedState::set_current_key before using state")
    }

    /// Makes `key` (serialized, of `key_group`) the current key: encodes `prefix` anew.
    fn set_key(&mut self, key_group: u16, key: &[u8]) {
        // The layout of `keys::encode_composite_key`, with no user key (FORMAT.md §2.2).
        self.prefix.clear();
        self.prefix.extend_from_slice(&key_group.to_be_bytes());
        put_varint32(&mut self.prefix, key.len() as u32);
        self.prefix.extend_from_slice(key);
        self.key_end = self.prefix.len();
        put_varint32(&mut self.prefix, self.namespace.len() as u32);
        self.prefix.extend_from_slice(&self.namespace);
        debug_assert_eq!(
            self.prefix,
            crate::keys::composite_key(key_group, key, &self.namespace, &[])
        );
    }

    /// Unsets the current key.
    fn clear_key(&mut self) {
        self.prefix.clear();
        self.key_end = 0;
    }

    fn set_namespace_bytes(&mut self, namespace: Vec<u8>) {
        self.namespace = namespace;
        if !self.prefix.is_empty() {
            self.prefix.truncate(self.key_end);
            put_varint32(&mut self.prefix, self.namespace.len() as u32);
            self.prefix.extend_from_slice(&self.namespace);
        }
    }

    /// The composite key of the current key and namespace with `user_key` appended.
    fn composite(&self, user_key: &[u8]) -> Result<Vec<u8>> {
        if self.prefix.is_empty() {
            return Err(Self::no_key());
        }
        let mut out = Vec::with_capacity(self.prefix.len() + user_key.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(user_key);
        Ok(out)
    }

    /// Runs `f` with the composite key of the current key and namespace, without copying it.
    fn with_key<R>(&mut self, f: impl FnOnce(&mut Context, &[u8]) -> Result<R>) -> Result<R> {
        if self.prefix.is_empty() {
            return Err(Self::no_key());
        }
        let key = std::mem::take(&mut self.prefix);
        let result = f(self, &key);
        // `f` cannot change the key or namespace (only `KeyedState` does), so this is still it.
        self.prefix = key;
        result
    }

    fn now_ms(&self) -> u64 {
        self.backend.config().clock.now_ms()
    }

    /// Runs `f` with `value` serialized into the context's reused buffer.
    fn with_serialized<T: Serialize + ?Sized, R>(
        &mut self,
        value: &T,
        f: impl FnOnce(&mut Context, &[u8]) -> Result<R>,
    ) -> Result<R> {
        let mut buffer = std::mem::take(&mut self.scratch);
        buffer.clear();
        let buffer =
            postcard::to_extend(value, buffer).map_err(|e| Error::Serialization(e.to_string()))?;
        let result = f(self, &buffer);
        self.scratch = buffer;
        result
    }
}

/// Keyed state of one task: a backend, the current key and the current namespace.
///
/// State handles ([`ValueState`], [`ListState`], [`MapState`], [`ReducingState`],
/// [`AggregatingState`]) borrow the keyed state they are made from and read and write under its
/// current key and namespace, the ones set last:
///
/// ```
/// use flowstate::{BackendConfig, KeyedState, MemoryBackend};
///
/// let keyed = KeyedState::new(MemoryBackend::new(BackendConfig::default()));
/// let count = keyed.value_state::<u64>("count")?;
/// let also_count = count.clone(); // another handle, same key
/// keyed.set_current_key("alice")?;
/// count.update(&1)?;
/// keyed.set_current_key("bob")?;
/// also_count.update(&2)?;
/// keyed.set_current_key("alice")?;
/// assert_eq!(also_count.value()?, Some(1));
/// # Ok::<(), flowstate::Error>(())
/// ```
///
/// # Threads
///
/// There is one current key and namespace per keyed state, shared by all its handles: were a
/// handle on one thread to `update` while another thread set another key, the value would land
/// under whichever key was set last. The types keep a keyed state and every handle sharing its
/// key on one thread, so that this cannot be written:
///
/// - `KeyedState` is [`Send`]: it may be created (and restored) on one thread and moved to the
///   thread that runs its task, as long as no handle of it exists. Handles borrow it, so it
///   cannot move while one does.
/// - `KeyedState` is neither [`Sync`] nor [`Clone`]: no second thread can reach it.
/// - Handles (and the iterators of [`MapState`]) are neither `Send` nor `Sync`: they stay on
///   the thread that made them, and live no longer than their keyed state.
/// - The asynchronous part of a snapshot ([`KeyedState::snapshot`]) holds no key; it is `Send`
///   and may run on any thread.
///
/// To use state from several threads, give each thread its own `KeyedState` over its own
/// backend owning its own key groups, as the engine does with one per operator task.
///
/// Moving a keyed state to its task thread, then making handles there:
///
/// ```
/// use flowstate::{BackendConfig, KeyedState, MemoryBackend};
///
/// let keyed = KeyedState::new(MemoryBackend::new(BackendConfig::default()));
/// let task = std::thread::spawn(move || -> flowstate::Result<Option<u64>> {
///     let count = keyed.value_state::<u64>("count")?;
///     keyed.set_current_key("alice")?;
///     count.update_with(|c| c.unwrap_or(0) + 1)?;
///     count.value()
/// });
/// assert_eq!(task.join().expect("task thread")?, Some(1));
/// # Ok::<(), flowstate::Error>(())
/// ```
///
/// A handle cannot be sent to another thread:
///
/// ```compile_fail,E0277
/// use flowstate::{BackendConfig, KeyedState, MemoryBackend};
///
/// let keyed = KeyedState::new(MemoryBackend::new(BackendConfig::default()));
/// let count = keyed.value_state::<u64>("count").unwrap();
/// std::thread::scope(|s| {
///     s.spawn(move || count.update(&1));
/// });
/// ```
///
/// nor shared with one:
///
/// ```compile_fail,E0277
/// use flowstate::{BackendConfig, KeyedState, MemoryBackend};
///
/// let keyed = KeyedState::new(MemoryBackend::new(BackendConfig::default()));
/// let count = keyed.value_state::<u64>("count").unwrap();
/// std::thread::scope(|s| {
///     s.spawn(|| count.update(&1));
///     keyed.set_current_key("bob").unwrap();
/// });
/// ```
///
/// A keyed state cannot be shared with another thread:
///
/// ```compile_fail,E0277
/// use flowstate::{BackendConfig, KeyedState, MemoryBackend};
///
/// let keyed = KeyedState::new(MemoryBackend::new(BackendConfig::default()));
/// std::thread::scope(|s| {
///     s.spawn(|| keyed.set_current_key("a"));
///     keyed.set_current_key("b").unwrap();
/// });
/// ```
///
/// nor cloned:
///
/// ```compile_fail,E0599
/// use flowstate::{BackendConfig, KeyedState, MemoryBackend};
///
/// let keyed = KeyedState::new(MemoryBackend::new(BackendConfig::default()));
/// let other = keyed.clone();
/// ```
///
/// nor moved to another thread while a handle of it is in use:
///
/// ```compile_fail,E0505
/// use flowstate::{BackendConfig, KeyedState, MemoryBackend};
///
/// let keyed = KeyedState::new(MemoryBackend::new(BackendConfig::default()));
/// let count = keyed.value_state::<u64>("count").unwrap();
/// let task = std::thread::spawn(move || keyed.set_current_key("a"));
/// count.update(&1).unwrap();
/// ```
///
/// # Re-entrant calls
///
/// A call into the keyed state or its handles while one is already running on the same thread
/// (from inside the function given to [`ValueState::update_with`], a reduce or aggregate
/// function, or [`KeyedState::with_backend`]) is refused with [`Error::InvalidArgument`]; it
/// neither blocks nor panics.
pub struct KeyedState {
    context: RefCell<Context>,
    /// The key group of the current key, if one is set (kept beside `context` so that
    /// [`KeyedState::current_key_group`] needs no access to it).
    current_key_group: Cell<Option<u16>>,
}

impl std::fmt::Debug for KeyedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("KeyedState");
        match self.context.try_borrow() {
            Ok(ctx) => out
                .field("backend", &ctx.backend.kind())
                .field("key_group_range", &ctx.backend.config().key_group_range),
            Err(_) => out.field("backend", &"<in use>"),
        };
        out.field("current_key_group", &self.current_key_group.get())
            .finish()
    }
}

impl KeyedState {
    /// Typed state over `backend`.
    pub fn new(backend: impl StateBackend + 'static) -> Self {
        Self::from_boxed(Box::new(backend))
    }

    /// Typed state over a boxed backend (when the kind is chosen at run time).
    pub fn from_boxed(backend: Box<dyn StateBackend>) -> Self {
        KeyedState {
            context: RefCell::new(Context {
                backend,
                namespace: Vec::new(),
                prefix: Vec::new(),
                key_end: 0,
                scratch: Vec::new(),
                types: std::collections::HashMap::new(),
            }),
            current_key_group: Cell::new(None),
        }
    }

    /// The context, or [`Error::InvalidArgument`] when a call on this thread is using it.
    fn lock(&self) -> Result<RefMut<'_, Context>> {
        self.context.try_borrow_mut().map_err(|_| {
            Error::invalid(
                "keyed state is in use: state was called from inside a function it runs \
                 (update_with, a reduce or aggregate function, with_backend)",
            )
        })
    }

    /// Sets the key that state handles read and write. Its key group must be owned by the
    /// backend, or [`Error::KeyGroupOutOfRange`] is returned and the current key is unset.
    pub fn set_current_key<K: Serialize + ?Sized>(&self, key: &K) -> Result<()> {
        let bytes = to_bytes(key)?;
        self.set_current_key_bytes(&bytes)
    }

    /// Sets the current key from its serialized bytes.
    pub fn set_current_key_bytes(&self, key: &[u8]) -> Result<()> {
        let key_group = key_group_for_key(key, self.lock()?.backend.config().max_parallelism);
        self.set_current_key_bytes_in_group(key, key_group)
    }

    /// Sets the current key from its serialized bytes and its key group, which the caller has
    /// already computed with [`key_group_for_key`] for this backend's max parallelism (a record
    /// router has: the hash is then computed once per record, not twice).
    pub fn set_current_key_bytes_in_group(&self, key: &[u8], key_group: u16) -> Result<()> {
        let mut ctx = self.lock()?;
        let config = ctx.backend.config();
        debug_assert_eq!(key_group, key_group_for_key(key, config.max_parallelism));
        if !config.key_group_range.contains(key_group) {
            let range = config.key_group_range;
            ctx.clear_key();
            self.current_key_group.set(None);
            return Err(Error::KeyGroupOutOfRange {
                key_group,
                first: range.first(),
                last: range.last(),
            });
        }
        ctx.set_key(key_group, key);
        self.current_key_group.set(Some(key_group));
        Ok(())
    }

    /// The key group of the current key, if one is set.
    pub fn current_key_group(&self) -> Option<u16> {
        self.current_key_group.get()
    }

    /// Sets the namespace (e.g. a window) that state handles read and write.
    pub fn set_current_namespace<N: Serialize + ?Sized>(&self, namespace: &N) -> Result<()> {
        let bytes = to_bytes(namespace)?;
        self.lock()?.set_namespace_bytes(bytes);
        Ok(())
    }

    /// Goes back to the default (empty) namespace.
    pub fn set_default_namespace(&self) -> Result<()> {
        self.lock()?.set_namespace_bytes(Vec::new());
        Ok(())
    }

    /// A [`ValueState`].
    pub fn value_state<T>(&self, options: impl Into<StateOptions>) -> Result<ValueState<'_, T>>
    where
        T: Serialize + DeserializeOwned,
    {
        Ok(ValueState::new(self.handle(
            options.into(),
            StateKind::Value,
            type_name::<T>().to_string(),
        )?))
    }

    /// A [`ListState`].
    pub fn list_state<T>(&self, options: impl Into<StateOptions>) -> Result<ListState<'_, T>>
    where
        T: Serialize + DeserializeOwned,
    {
        Ok(ListState::new(self.handle(
            options.into(),
            StateKind::List,
            type_name::<T>().to_string(),
        )?))
    }

    /// A [`MapState`].
    pub fn map_state<K, V>(&self, options: impl Into<StateOptions>) -> Result<MapState<'_, K, V>>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        let types = format!("{} -> {}", type_name::<K>(), type_name::<V>());
        Ok(MapState::new(self.handle(
            options.into(),
            StateKind::Map,
            types,
        )?))
    }

    /// A [`ReducingState`] folding added values with `reduce`.
    pub fn reducing_state<T, F>(
        &self,
        options: impl Into<StateOptions>,
        reduce: F,
    ) -> Result<ReducingState<'_, T>>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        Ok(ReducingState::new(
            self.handle(
                options.into(),
                StateKind::Reducing,
                type_name::<T>().to_string(),
            )?,
            Arc::new(reduce),
        ))
    }

    /// An [`AggregatingState`] folding inputs with `function`.
    pub fn aggregating_state<IN, ACC, OUT>(
        &self,
        options: impl Into<StateOptions>,
        function: impl AggregateFunction<IN, ACC, OUT> + 'static,
    ) -> Result<AggregatingState<'_, IN, ACC, OUT>>
    where
        ACC: Serialize + DeserializeOwned,
    {
        Ok(AggregatingState::new(
            self.handle(
                options.into(),
                StateKind::Aggregating,
                type_name::<ACC>().to_string(),
            )?,
            Arc::new(function),
        ))
    }

    /// Registers the state of `options` (of `kind`, holding values of the Rust type `types`).
    fn handle<T>(
        &self,
        options: StateOptions,
        kind: StateKind,
        types: String,
    ) -> Result<Handle<'_, T>> {
        let descriptor = options.descriptor(kind);
        let mut ctx = self.lock()?;
        if let Some(existing) = ctx.types.get(&descriptor.name)
            && *existing != types
        {
            return Err(Error::StateMismatch {
                name: descriptor.name.clone(),
                existing: format!("{kind:?} state of {existing}"),
                requested: format!("{kind:?} state of {types}"),
            });
        }
        let id = ctx.backend.register(&descriptor)?;
        ctx.types.insert(descriptor.name.clone(), types);
        drop(ctx);
        Ok(Handle {
            keyed: self,
            id,
            ttl: descriptor.ttl,
            _type: PhantomData,
        })
    }

    /// Every distinct key (deserialized) that has an entry in state `name` under the current
    /// namespace, in composite-key order (Flink's `getKeys`).
    pub fn keys<K: DeserializeOwned>(&self, name: &str) -> Result<Vec<K>> {
        let mut ctx = self.lock()?;
        let id = ctx
            .backend
            .states()
            .iter()
            .position(|d| d.name == name)
            .ok_or_else(|| Error::not_found(format!("no state named '{name}' is registered")))?;
        let namespace = ctx.namespace.clone();
        let id = StateId(id as u32);
        let mut keys = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        for entry in ctx.backend.scan_prefix(id, &[])? {
            let (composite, _) = entry?;
            let parts = CompositeKey::decode(&composite, "state key", 0)?;
            if parts.namespace != namespace.as_slice() || last.as_deref() == Some(parts.key) {
                continue;
            }
            keys.push(from_bytes(parts.key)?);
            last = Some(parts.key.to_vec());
        }
        Ok(keys)
    }

    /// Runs `f` with the backend (for byte-level access, stats, or backend-specific calls).
    /// `f` must not call this keyed state or its handles: such a call returns an error.
    pub fn with_backend<R>(&self, f: impl FnOnce(&mut dyn StateBackend) -> R) -> Result<R> {
        Ok(f(self.lock()?.backend.as_mut()))
    }

    /// The synchronous part of a snapshot; run the returned task (on any thread) to finish it.
    pub fn snapshot(&self, checkpoint_id: u64) -> Result<Box<dyn SnapshotTask>> {
        self.lock()?.backend.snapshot(checkpoint_id)
    }

    /// Restores from `handles` into `key_group_range`; the current key is unset.
    pub fn restore(
        &self,
        handles: &[SnapshotHandle],
        key_group_range: KeyGroupRange,
    ) -> Result<()> {
        let mut ctx = self.lock()?;
        ctx.clear_key();
        self.current_key_group.set(None);
        ctx.backend.restore(handles, key_group_range)
    }

    /// Tells the backend a checkpoint completed.
    pub fn notify_checkpoint_complete(&self, checkpoint_id: u64) -> Result<()> {
        self.lock()?
            .backend
            .notify_checkpoint_complete(checkpoint_id)
    }
}

/// What every typed handle holds: the keyed state it borrows, the state id and its TTL.
pub(crate) struct Handle<'k, T> {
    keyed: &'k KeyedState,
    id: StateId,
    ttl: Option<TtlConfig>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Handle<'_, T> {
    fn clone(&self) -> Self {
        Handle {
            keyed: self.keyed,
            id: self.id,
            ttl: self.ttl,
            _type: PhantomData,
        }
    }
}

impl<'k, T> Handle<'k, T> {
    /// The context, or an error when a call on this thread is using it.
    fn lock(&self) -> Result<RefMut<'k, Context>> {
        self.keyed.lock()
    }
}

/// The key group [`KeyedState::set_current_key`] puts `key` in, for a job with
/// `max_parallelism` key groups: the hash of the key's postcard encoding
/// ([`key_group_for_key`] of those bytes, FORMAT.md §2.1). A router sends a record to the task
/// that owns this group
/// ([`operator_index_for_key_group`](crate::keys::operator_index_for_key_group)).
///
/// ```
/// use flowstate::{BackendConfig, KeyedState, MemoryBackend, key_group_for};
///
/// let keyed = KeyedState::new(MemoryBackend::new(BackendConfig::default()));
/// keyed.set_current_key(&("alice", 7u32))?;
/// assert_eq!(keyed.current_key_group(), Some(key_group_for(&("alice", 7u32), 128)?));
/// # Ok::<(), flowstate::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidArgument`] when `max_parallelism` is outside `1..=32768`;
/// [`Error::Serialization`] when the key does not serialize.
pub fn key_group_for<K: Serialize + ?Sized>(key: &K, max_parallelism: u16) -> Result<u16> {
    let max_parallelism = check_max_parallelism(max_parallelism)?;
    Ok(key_group_for_key(&to_bytes(key)?, max_parallelism))
}

pub(crate) fn to_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|e| Error::Serialization(e.to_string()))
}

pub(crate) fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Serialization(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendConfig, MemoryBackend};

    fn keyed() -> KeyedState {
        KeyedState::new(MemoryBackend::new(BackendConfig::default()))
    }

    #[test]
    fn key_group_for_is_the_group_set_current_key_uses() {
        let max_parallelism = 16;
        let config = BackendConfig::new(max_parallelism, KeyGroupRange::all(max_parallelism))
            .expect("config");
        let keyed = KeyedState::new(MemoryBackend::new(config));
        let mut groups = std::collections::BTreeSet::new();
        for i in 0..200u64 {
            let key = (format!("user-{i}"), i);
            let group = key_group_for(&key, max_parallelism).expect("key group");
            keyed.set_current_key(&key).expect("set key");
            assert_eq!(keyed.current_key_group(), Some(group));
            let bytes = postcard::to_allocvec(&key).expect("encode");
            assert_eq!(group, key_group_for_key(&bytes, max_parallelism));
            groups.insert(group);
        }
        // The keys spread over the groups (a constant would pass the equalities above).
        assert!(groups.len() > 8, "{groups:?}");
        assert!(key_group_for(&1u32, 0).is_err());
        assert!(key_group_for(&1u32, 32769).is_err());
        assert!(key_group_for(&1u32, 32768).is_ok());
    }

    #[test]
    fn a_router_using_key_group_for_sends_each_key_to_its_owner() {
        let max_parallelism = 32;
        let tasks: Vec<KeyedState> = (0..3)
            .map(|index| {
                let range = KeyGroupRange::for_operator(max_parallelism, 3, index).expect("range");
                let config = BackendConfig::new(max_parallelism, range).expect("config");
                KeyedState::new(MemoryBackend::new(config))
            })
            .collect();
        for key in 0..300u32 {
            let group = key_group_for(&key, max_parallelism).expect("key group");
            let owner =
                crate::keys::operator_index_for_key_group(max_parallelism, 3, group) as usize;
            for (index, task) in tasks.iter().enumerate() {
                assert_eq!(
                    task.set_current_key(&key).is_ok(),
                    index == owner,
                    "key {key}"
                );
            }
        }
    }

    #[test]
    fn keyed_state_moves_to_its_task_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<KeyedState>();
        let keyed = keyed();
        keyed.value_state::<u32>("v").unwrap(); // registered, handle dropped
        let value = std::thread::spawn(move || {
            let v = keyed.value_state::<u32>("v").unwrap();
            keyed.set_current_key("k").unwrap();
            v.update(&3).unwrap();
            v.value().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(value, Some(3));
    }

    #[test]
    fn reentrant_calls_are_refused_not_blocked() {
        let keyed = keyed();
        let a = keyed.value_state::<u32>("a").unwrap();
        let b = keyed.value_state::<u32>("b").unwrap();
        keyed.set_current_key("k").unwrap();
        let mut inner = None;
        let new = a
            .update_with(|old| {
                inner = Some(b.value());
                old.unwrap_or(0) + 1
            })
            .unwrap();
        assert_eq!(new, 1);
        assert!(matches!(inner, Some(Err(Error::InvalidArgument(_)))));
        let nested = keyed
            .with_backend(|_| {
                (
                    keyed.with_backend(|_| ()).is_err(),
                    keyed.set_default_namespace().is_err(),
                    keyed.current_key_group(),
                    format!("{keyed:?}"),
                )
            })
            .unwrap();
        assert!(nested.0 && nested.1);
        assert_eq!(nested.2, keyed.current_key_group());
        assert!(nested.2.is_some());
        assert!(nested.3.contains("<in use>"));
        // Nothing is left borrowed.
        assert_eq!(a.value().unwrap(), Some(1));
        assert_eq!(b.value().unwrap(), None);
    }
}
