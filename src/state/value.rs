//! [`ValueState`]: one value per (key, namespace).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Handle, from_bytes, ttl};
use crate::error::Result;

/// One value of type `T` per key and namespace (Flink's `ValueState`).
pub struct ValueState<T> {
    handle: Handle<T>,
}

impl<T> Clone for ValueState<T> {
    fn clone(&self) -> Self {
        ValueState {
            handle: self.handle.clone(),
        }
    }
}

impl<T: Serialize + DeserializeOwned> ValueState<T> {
    pub(crate) fn new(handle: Handle<T>) -> Self {
        ValueState { handle }
    }

    /// The value of the current key and namespace, if set (and not expired).
    #[inline]
    pub fn value(&self) -> Result<Option<T>> {
        let mut ctx = self.handle.lock();
        let (id, ttl_config) = (self.handle.id, self.handle.ttl.as_ref());
        ctx.with_key(|ctx, key| ttl::get(ctx, id, ttl_config, key))?
            .map(|bytes| from_bytes(&bytes))
            .transpose()
    }

    /// Sets the value of the current key and namespace.
    #[inline]
    pub fn update(&self, value: &T) -> Result<()> {
        let mut ctx = self.handle.lock();
        let (id, ttl_config) = (self.handle.id, self.handle.ttl.as_ref());
        ctx.with_serialized(value, |ctx, payload| {
            ctx.with_key(|ctx, key| ttl::put(ctx, id, ttl_config, key, payload))
        })
    }

    /// Removes the value of the current key and namespace.
    pub fn clear(&self) -> Result<()> {
        let mut ctx = self.handle.lock();
        let key = ctx.composite(&[])?;
        ctx.backend.delete(self.handle.id, &key)
    }
}
