//! [`ReducingState`]: one value per (key, namespace), folded with a reduce function.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Handle, from_bytes, to_bytes, ttl};
use crate::error::Result;

/// The reduce function of a [`ReducingState`].
pub type ReduceFn<T> = Arc<dyn Fn(T, T) -> T + Send + Sync>;

/// One value per key and namespace; `add` folds a new value into it with the reduce function
/// (Flink's `ReducingState`).
pub struct ReducingState<'k, T> {
    handle: Handle<'k, T>,
    reduce: ReduceFn<T>,
}

impl<T> Clone for ReducingState<'_, T> {
    fn clone(&self) -> Self {
        ReducingState {
            handle: self.handle.clone(),
            reduce: self.reduce.clone(),
        }
    }
}

impl<'k, T: Serialize + DeserializeOwned> ReducingState<'k, T> {
    pub(crate) fn new(handle: Handle<'k, T>, reduce: ReduceFn<T>) -> Self {
        ReducingState { handle, reduce }
    }

    /// The reduced value of the current key and namespace, if any.
    pub fn get(&self) -> Result<Option<T>> {
        let mut ctx = self.handle.lock()?;
        let key = ctx.composite(&[])?;
        ttl::get(&mut ctx, self.handle.id, self.handle.ttl.as_ref(), &key)?
            .map(|bytes| from_bytes(&bytes))
            .transpose()
    }

    /// Folds `value` into the current value (or stores it when there is none).
    pub fn add(&self, value: T) -> Result<()> {
        let mut ctx = self.handle.lock()?;
        let key = ctx.composite(&[])?;
        let ttl_config = self.handle.ttl.as_ref();
        let next = match ttl::get(&mut ctx, self.handle.id, ttl_config, &key)? {
            Some(bytes) => (self.reduce)(from_bytes(&bytes)?, value),
            None => value,
        };
        ttl::put(
            &mut ctx,
            self.handle.id,
            ttl_config,
            &key,
            &to_bytes(&next)?,
        )
    }

    /// Removes the value of the current key and namespace.
    pub fn clear(&self) -> Result<()> {
        let mut ctx = self.handle.lock()?;
        let key = ctx.composite(&[])?;
        ctx.backend.delete(self.handle.id, &key)
    }
}
