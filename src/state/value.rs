//! [`ValueState`]: one value per (key, namespace).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Handle, from_bytes, ttl};
use crate::error::Result;

/// One value of type `T` per key and namespace (Flink's `ValueState`).
pub struct ValueState<'k, T> {
    handle: Handle<'k, T>,
}

impl<T> Clone for ValueState<'_, T> {
    fn clone(&self) -> Self {
        ValueState {
            handle: self.handle.clone(),
        }
    }
}

impl<'k, T: Serialize + DeserializeOwned> ValueState<'k, T> {
    pub(crate) fn new(handle: Handle<'k, T>) -> Self {
        ValueState { handle }
    }

    /// The value of the current key and namespace, if set (and not expired).
    #[inline]
    pub fn value(&self) -> Result<Option<T>> {
        let mut ctx = self.handle.lock()?;
        let (id, ttl_config) = (self.handle.id, self.handle.ttl.as_ref());
        ctx.with_key(|ctx, key| ttl::get(ctx, id, ttl_config, key))?
            .map(|bytes| from_bytes(&bytes))
            .transpose()
    }

    /// Sets the value of the current key and namespace.
    #[inline]
    pub fn update(&self, value: &T) -> Result<()> {
        let mut ctx = self.handle.lock()?;
        let (id, ttl_config) = (self.handle.id, self.handle.ttl.as_ref());
        ctx.with_serialized(value, |ctx, payload| {
            ctx.with_key(|ctx, key| ttl::put(ctx, id, ttl_config, key, payload))
        })
    }

    /// Replaces the value of the current key and namespace by `f(current)` in one backend call
    /// ([`StateBackend::read_modify_write`](crate::StateBackend::read_modify_write)) and returns
    /// the new value. Same result and TTL semantics as [`ValueState::value`] then
    /// [`ValueState::update`]: `f` gets `None` for an absent value, and for an expired one
    /// unless the state's [`Visibility`](crate::Visibility) is `ReturnExpiredIfNotCleanedUp`;
    /// the new value gets a fresh TTL timestamp. When reading or decoding fails, `f` is not
    /// called and nothing is written.
    ///
    /// ```
    /// use flowstate::{BackendConfig, KeyedState, MemoryBackend};
    ///
    /// let keyed = KeyedState::new(MemoryBackend::new(BackendConfig::default()));
    /// let count = keyed.value_state::<u64>("count")?;
    /// keyed.set_current_key("alice")?;
    /// assert_eq!(count.update_with(|c| c.unwrap_or(0) + 1)?, 1);
    /// assert_eq!(count.update_with(|c| c.unwrap_or(0) + 1)?, 2);
    /// assert_eq!(count.value()?, Some(2));
    /// # Ok::<(), flowstate::Error>(())
    /// ```
    #[inline]
    pub fn update_with(&self, f: impl FnOnce(Option<T>) -> T) -> Result<T> {
        let mut ctx = self.handle.lock()?;
        let (id, ttl_config) = (self.handle.id, self.handle.ttl.as_ref());
        ctx.with_key(|ctx, key| ttl::read_modify_write(ctx, id, ttl_config, key, f))
    }

    /// Removes the value of the current key and namespace.
    pub fn clear(&self) -> Result<()> {
        let mut ctx = self.handle.lock()?;
        let key = ctx.composite(&[])?;
        ctx.backend.delete(self.handle.id, &key)
    }
}
