//! [`ListState`]: a list per (key, namespace), appended through the backend's merge.

use std::iter::FusedIterator;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Handle, from_bytes, to_bytes, ttl};
use crate::error::Result;
use crate::ttl::TtlConfig;

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
    /// Collects [`ListState::iter`].
    pub fn get(&self) -> Result<Vec<T>> {
        self.iter()?.collect()
    }

    /// The elements of the current key and namespace in insertion order, decoded one at a time
    /// as the iterator is advanced (the stored list is one value, read once; no `Vec` of its
    /// elements is built). The iterator owns what it read: later writes to the list do not
    /// change it, and it may outlive the call that made it.
    ///
    /// With TTL the read's effects happen here, before the first element, exactly as for
    /// [`ListState::get`]: expired elements leave storage and are not returned (but once with
    /// [`Visibility::ReturnExpiredIfNotCleanedUp`](crate::Visibility)), and
    /// [`UpdateType::OnReadAndWrite`](crate::UpdateType) refreshes the others. A damaged element
    /// yields an error and ends the iteration; one that does not decode as `T` yields its error
    /// and the iteration goes on.
    ///
    /// ```
    /// use flowstate::{BackendConfig, KeyedState, MemoryBackend};
    ///
    /// let keyed = KeyedState::new(MemoryBackend::new(BackendConfig::default()));
    /// let events = keyed.list_state::<u32>("events")?;
    /// keyed.set_current_key("alice")?;
    /// events.add_all(&[3, 1, 4, 1, 5])?;
    /// let first_big = events.iter()?.find(|e| matches!(e, Ok(v) if *v > 3));
    /// assert_eq!(first_big.transpose()?, Some(4));
    /// # Ok::<(), flowstate::Error>(())
    /// ```
    pub fn iter(&self) -> Result<ListIter<T>> {
        let mut ctx = self.handle.lock()?;
        let key = ctx.composite(&[])?;
        let ttl_config = self.handle.ttl.as_ref();
        let (bytes, now_ms) =
            ttl::read_list(&mut ctx, self.handle.id, ttl_config, &key)?.unwrap_or_default();
        Ok(ListIter {
            bytes,
            pos: 0,
            ttl: self.handle.ttl,
            now_ms,
            done: false,
            _type: PhantomData,
        })
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

/// The elements of one list, from [`ListState::iter`]: decodes one element per step from the
/// list value it holds.
pub struct ListIter<T> {
    /// The stored list value: `varint len | element` frames (FORMAT.md §3).
    bytes: Vec<u8>,
    /// Where the next frame starts.
    pos: usize,
    ttl: Option<TtlConfig>,
    /// When the list was read (TTL).
    now_ms: u64,
    /// Set after a damaged frame: what follows it cannot be found.
    done: bool,
    _type: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for ListIter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListIter")
            .field("bytes", &self.bytes.len())
            .field("pos", &self.pos)
            .field("done", &self.done)
            .finish()
    }
}

impl<T: DeserializeOwned> Iterator for ListIter<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match ttl::next_list_payload(&self.bytes, self.pos, self.ttl.as_ref(), self.now_ms) {
            Ok(Some((payload, next))) => {
                self.pos = next;
                Some(from_bytes(payload))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }
}

impl<T: DeserializeOwned> FusedIterator for ListIter<T> {}
