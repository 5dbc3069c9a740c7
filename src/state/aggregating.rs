//! [`AggregatingState`]: an accumulator per (key, namespace), driven by an [`AggregateFunction`].

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Handle, from_bytes, to_bytes, ttl};
use crate::error::Result;

/// How an [`AggregatingState`] folds inputs of type `IN` into an accumulator `ACC` and reads an
/// output `OUT` from it (Flink's `AggregateFunction`).
pub trait AggregateFunction<IN, ACC, OUT>: Send + Sync {
    /// A new, empty accumulator.
    fn create_accumulator(&self) -> ACC;
    /// Folds `value` into `accumulator`.
    fn add(&self, value: IN, accumulator: ACC) -> ACC;
    /// The output of an accumulator.
    fn get_result(&self, accumulator: &ACC) -> OUT;
    /// Merges two accumulators (used when namespaces such as session windows merge).
    fn merge(&self, a: ACC, b: ACC) -> ACC;
}

/// An accumulator per key and namespace (Flink's `AggregatingState`): `add` folds an input in,
/// `get` returns the function's result.
pub struct AggregatingState<'k, IN, ACC, OUT> {
    handle: Handle<'k, ACC>,
    function: Arc<dyn AggregateFunction<IN, ACC, OUT>>,
    _types: PhantomData<fn(IN) -> OUT>,
}

impl<IN, ACC, OUT> Clone for AggregatingState<'_, IN, ACC, OUT> {
    fn clone(&self) -> Self {
        AggregatingState {
            handle: self.handle.clone(),
            function: self.function.clone(),
            _types: PhantomData,
        }
    }
}

impl<'k, IN, ACC, OUT> AggregatingState<'k, IN, ACC, OUT>
where
    ACC: Serialize + DeserializeOwned,
{
    pub(crate) fn new(
        handle: Handle<'k, ACC>,
        function: Arc<dyn AggregateFunction<IN, ACC, OUT>>,
    ) -> Self {
        AggregatingState {
            handle,
            function,
            _types: PhantomData,
        }
    }

    /// The result for the current key and namespace, or `None` when nothing was added.
    pub fn get(&self) -> Result<Option<OUT>> {
        Ok(self
            .accumulator()?
            .map(|acc| self.function.get_result(&acc)))
    }

    /// Folds `value` into the accumulator of the current key and namespace.
    pub fn add(&self, value: IN) -> Result<()> {
        let mut ctx = self.handle.lock()?;
        let key = ctx.composite(&[])?;
        let ttl_config = self.handle.ttl.as_ref();
        let acc = match ttl::get(&mut ctx, self.handle.id, ttl_config, &key)? {
            Some(bytes) => from_bytes(&bytes)?,
            None => self.function.create_accumulator(),
        };
        let acc = self.function.add(value, acc);
        ttl::put(&mut ctx, self.handle.id, ttl_config, &key, &to_bytes(&acc)?)
    }

    /// Merges the accumulators of `sources` namespaces into `target` (window merging); the
    /// sources are cleared.
    pub fn merge_namespaces<N: Serialize>(&self, target: &N, sources: &[N]) -> Result<()> {
        let mut ctx = self.handle.lock()?;
        let ttl_config = self.handle.ttl.as_ref();
        let saved = ctx.namespace.clone();
        let result = (|| {
            let mut merged: Option<ACC> = None;
            for source in sources {
                ctx.set_namespace_bytes(to_bytes(source)?);
                let key = ctx.composite(&[])?;
                if let Some(bytes) = ttl::get(&mut ctx, self.handle.id, ttl_config, &key)? {
                    let acc = from_bytes(&bytes)?;
                    merged = Some(match merged {
                        Some(m) => self.function.merge(m, acc),
                        None => acc,
                    });
                    ctx.backend.delete(self.handle.id, &key)?;
                }
            }
            let Some(merged) = merged else { return Ok(()) };
            ctx.set_namespace_bytes(to_bytes(target)?);
            let key = ctx.composite(&[])?;
            let merged = match ttl::get(&mut ctx, self.handle.id, ttl_config, &key)? {
                Some(bytes) => self.function.merge(from_bytes(&bytes)?, merged),
                None => merged,
            };
            ttl::put(
                &mut ctx,
                self.handle.id,
                ttl_config,
                &key,
                &to_bytes(&merged)?,
            )
        })();
        ctx.set_namespace_bytes(saved);
        result
    }

    /// Removes the accumulator of the current key and namespace.
    pub fn clear(&self) -> Result<()> {
        let mut ctx = self.handle.lock()?;
        let key = ctx.composite(&[])?;
        ctx.backend.delete(self.handle.id, &key)
    }

    fn accumulator(&self) -> Result<Option<ACC>> {
        let mut ctx = self.handle.lock()?;
        let key = ctx.composite(&[])?;
        ttl::get(&mut ctx, self.handle.id, self.handle.ttl.as_ref(), &key)?
            .map(|bytes| from_bytes(&bytes))
            .transpose()
    }
}
