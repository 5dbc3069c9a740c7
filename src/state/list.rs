//! [`ListState`]: a list per (key, namespace), appended through the backend's merge.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Handle, from_bytes, to_bytes, ttl};
use crate::error::Result;

/// A list of `T` per key and namespace (Flink's `ListState`). `add` appends through
/// [`crate::StateBackend::merge`], so backends with a merge operator never read the old list.
/// With TTL, every element expires on its own.
pub struct ListState<'k, T> {
    handle: Handle<'k, T>,
}

impl<T> Clone for ListState<'_, T> {
    fn clone(&self) -> Self {
        ListState {
            handle: self.handle.clone(),
        }
    }
}

impl<'k, T: Serialize + DeserializeOwned> ListState<'k, T> {
    pub(crate) fn new(handle: Handle<'k, T>) -> Self {
        ListState { handle }
    }

    /// The elements of the current key and namespace in insertion order; empty when unset.
    pub fn get(&self) -> Result<Vec<T>> {
        let mut ctx = self.handle.lock()?;
        let key = ctx.composite(&[])?;
        let elements = ttl::get_list(&mut ctx, self.handle.id, self.handle.ttl.as_ref(), &key)?;
        elements
            .unwrap_or_default()
            .iter()
            .map(|bytes| from_bytes(bytes))
            .collect()
    }

    /// Appends one element.
    pub fn add(&self, value: &T) -> Result<()> {
        self.add_all(std::slice::from_ref(value))
    }

    /// Appends every element of `values` in one merge.
    pub fn add_all(&self, values: &[T]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut ctx = self.handle.lock()?;
        let key = ctx.composite(&[])?;
        let operand = self.encode(&ctx, values)?;
        ctx.backend.merge(self.handle.id, &key, &operand)
    }

    /// Replaces the list with `values`; an empty slice clears it.
    pub fn update(&self, values: &[T]) -> Result<()> {
        let mut ctx = self.handle.lock()?;
        let key = ctx.composite(&[])?;
        if values.is_empty() {
            return ctx.backend.delete(self.handle.id, &key);
        }
        let stored = self.encode(&ctx, values)?;
        ctx.backend.put(self.handle.id, &key, &stored)
    }

    /// Removes the list of the current key and namespace.
    pub fn clear(&self) -> Result<()> {
        let mut ctx = self.handle.lock()?;
        let key = ctx.composite(&[])?;
        ctx.backend.delete(self.handle.id, &key)
    }

    fn encode(&self, ctx: &super::Context, values: &[T]) -> Result<Vec<u8>> {
        // Only TTL states pay for reading the clock.
        let now = if self.handle.ttl.is_some() {
            ctx.now_ms()
        } else {
            0
        };
        let mut out = Vec::new();
        for value in values {
            ttl::push_element(&mut out, self.handle.ttl.as_ref(), now, &to_bytes(value)?);
        }
        Ok(out)
    }
}
