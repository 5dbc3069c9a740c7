//! Typed keyed state over any [`StateBackend`]: the API user functions program against.
//!
//! [`KeyedState`] owns the backend and the current key and namespace; state handles
//! ([`ValueState`], [`ListState`], [`MapState`], [`ReducingState`], [`AggregatingState`]) are
//! cheap clones that read and write under the current key and namespace. Keys, namespaces, values
//! and map keys are serialized with postcard. TTL (see [`crate::TtlConfig`]) wraps every value, list element
//! and map entry in a timestamp envelope.

mod aggregating;
mod list;
mod map;
mod reducing;
pub(crate) mod ttl;
mod value;

use std::any::type_name;
use std::marker::PhantomData;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{
    SnapshotHandle, SnapshotTask, StateBackend, StateDescriptor, StateId, StateKind,
};
use crate::codec::varint::put_varint32;
use crate::error::{Error, Result};
use crate::keys::{CompositeKey, KeyGroupRange, key_group_for_key};
use crate::ttl::TtlConfig;

pub use aggregating::{AggregateFunction, AggregatingState};
pub use list::ListState;
pub use map::MapState;
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
    /// The key group of the current key, if one is set.
    current_key_group: Option<u16>,
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
        self.current_key_group = Some(key_group);
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
        self.current_key_group = None;
        self.prefix.clear();
        self.key_end = 0;
    }

    fn set_namespace_bytes(&mut self, namespace: Vec<u8>) {
        self.namespace = namespace;
        if self.current_key_group.is_some() {
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
/// Cloning is cheap and shares everything. Handles created from it see the key and namespace set
/// last. See the crate docs for an example.
#[derive(Clone)]
pub struct KeyedState {
    context: Arc<Mutex<Context>>,
}

impl std::fmt::Debug for KeyedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ctx = self.context.lock();
        f.debug_struct("KeyedState")
            .field("backend", &ctx.backend.kind())
            .field("key_group_range", &ctx.backend.config().key_group_range)
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
            context: Arc::new(Mutex::new(Context {
                backend,
                current_key_group: None,
                namespace: Vec::new(),
                prefix: Vec::new(),
                key_end: 0,
                scratch: Vec::new(),
                types: std::collections::HashMap::new(),
            })),
        }
    }

    /// Sets the key that state handles read and write. Its key group must be owned by the
    /// backend, or [`Error::KeyGroupOutOfRange`] is returned and the current key is unset.
    pub fn set_current_key<K: Serialize + ?Sized>(&self, key: &K) -> Result<()> {
        let bytes = to_bytes(key)?;
        self.set_current_key_bytes(&bytes)
    }

    /// Sets the current key from its serialized bytes.
    pub fn set_current_key_bytes(&self, key: &[u8]) -> Result<()> {
        let key_group = {
            let ctx = self.context.lock();
            key_group_for_key(key, ctx.backend.config().max_parallelism)
        };
        self.set_current_key_bytes_in_group(key, key_group)
    }

    /// Sets the current key from its serialized bytes and its key group, which the caller has
    /// already computed with [`key_group_for_key`] for this backend's max parallelism (a record
    /// router has: the hash is then computed once per record, not twice).
    pub fn set_current_key_bytes_in_group(&self, key: &[u8], key_group: u16) -> Result<()> {
        let mut ctx = self.context.lock();
        let config = ctx.backend.config();
        debug_assert_eq!(key_group, key_group_for_key(key, config.max_parallelism));
        if !config.key_group_range.contains(key_group) {
            let range = config.key_group_range;
            ctx.clear_key();
            return Err(Error::KeyGroupOutOfRange {
                key_group,
                first: range.first(),
                last: range.last(),
            });
        }
        ctx.set_key(key_group, key);
        Ok(())
    }

    /// The key group of the current key, if one is set.
    pub fn current_key_group(&self) -> Option<u16> {
        self.context.lock().current_key_group
    }

    /// Sets the namespace (e.g. a window) that state handles read and write.
    pub fn set_current_namespace<N: Serialize + ?Sized>(&self, namespace: &N) -> Result<()> {
        let bytes = to_bytes(namespace)?;
        self.context.lock().set_namespace_bytes(bytes);
        Ok(())
    }

    /// Goes back to the default (empty) namespace.
    pub fn set_default_namespace(&self) {
        self.context.lock().set_namespace_bytes(Vec::new());
    }

    /// A [`ValueState`].
    pub fn value_state<T>(&self, options: impl Into<StateOptions>) -> Result<ValueState<T>>
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
    pub fn list_state<T>(&self, options: impl Into<StateOptions>) -> Result<ListState<T>>
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
    pub fn map_state<K, V>(&self, options: impl Into<StateOptions>) -> Result<MapState<K, V>>
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
    ) -> Result<ReducingState<T>>
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
    ) -> Result<AggregatingState<IN, ACC, OUT>>
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
    ) -> Result<Handle<T>> {
        let descriptor = options.descriptor(kind);
        let mut ctx = self.context.lock();
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
            context: self.context.clone(),
            id,
            ttl: descriptor.ttl,
            _type: PhantomData,
        })
    }

    /// Every distinct key (deserialized) that has an entry in state `name` under the current
    /// namespace, in composite-key order (Flink's `getKeys`).
    pub fn keys<K: DeserializeOwned>(&self, name: &str) -> Result<Vec<K>> {
        let mut ctx = self.context.lock();
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
    pub fn with_backend<R>(&self, f: impl FnOnce(&mut dyn StateBackend) -> R) -> R {
        f(self.context.lock().backend.as_mut())
    }

    /// The synchronous part of a snapshot; run the returned task (on any thread) to finish it.
    pub fn snapshot(&self, checkpoint_id: u64) -> Result<Box<dyn SnapshotTask>> {
        self.context.lock().backend.snapshot(checkpoint_id)
    }

    /// Restores from `handles` into `key_group_range`; the current key is unset.
    pub fn restore(
        &self,
        handles: &[SnapshotHandle],
        key_group_range: KeyGroupRange,
    ) -> Result<()> {
        let mut ctx = self.context.lock();
        ctx.clear_key();
        ctx.backend.restore(handles, key_group_range)
    }

    /// Tells the backend a checkpoint completed.
    pub fn notify_checkpoint_complete(&self, checkpoint_id: u64) -> Result<()> {
        self.context
            .lock()
            .backend
            .notify_checkpoint_complete(checkpoint_id)
    }
}

/// What every typed handle holds: the shared context, the state id and its TTL.
pub(crate) struct Handle<T> {
    context: Arc<Mutex<Context>>,
    id: StateId,
    ttl: Option<TtlConfig>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Handle {
            context: self.context.clone(),
            id: self.id,
            ttl: self.ttl,
            _type: PhantomData,
        }
    }
}

impl<T> Handle<T> {
    fn lock(&self) -> MutexGuard<'_, Context> {
        self.context.lock()
    }
}

pub(crate) fn to_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|e| Error::Serialization(e.to_string()))
}

pub(crate) fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Serialization(e.to_string()))
}
