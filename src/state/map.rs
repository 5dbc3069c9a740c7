//! [`MapState`]: a map per (key, namespace), one stored entry per map key.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Handle, from_bytes, to_bytes, ttl};
use crate::error::Result;

/// A map from `K` to `V` per key and namespace (Flink's `MapState`). Each map entry is its own
/// backend entry (the map key is the composite key's user key), so a `get` or `put` touches one
/// entry; iteration is a prefix scan, in the order of the serialized map keys' bytes. With TTL,
/// every entry expires on its own.
pub struct MapState<'k, K, V> {
    handle: Handle<'k, (K, V)>,
}

impl<K, V> Clone for MapState<'_, K, V> {
    fn clone(&self) -> Self {
        MapState {
            handle: self.handle.clone(),
        }
    }
}

impl<'k, K, V> MapState<'k, K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    pub(crate) fn new(handle: Handle<'k, (K, V)>) -> Self {
        MapState { handle }
    }

    /// The value under `map_key`, if any.
    pub fn get(&self, map_key: &K) -> Result<Option<V>> {
        let user_key = to_bytes(map_key)?;
        let mut ctx = self.handle.lock()?;
        let key = ctx.composite(&user_key)?;
        ttl::get(&mut ctx, self.handle.id, self.handle.ttl.as_ref(), &key)?
            .map(|bytes| from_bytes(&bytes))
            .transpose()
    }

    /// Sets `map_key` to `value`.
    pub fn put(&self, map_key: &K, value: &V) -> Result<()> {
        let user_key = to_bytes(map_key)?;
        let payload = to_bytes(value)?;
        let mut ctx = self.handle.lock()?;
        let key = ctx.composite(&user_key)?;
        ttl::put(
            &mut ctx,
            self.handle.id,
            self.handle.ttl.as_ref(),
            &key,
            &payload,
        )
    }

    /// Sets every pair of `entries`.
    pub fn put_all<'a>(&self, entries: impl IntoIterator<Item = (&'a K, &'a V)>) -> Result<()>
    where
        K: 'a,
        V: 'a,
    {
        for (k, v) in entries {
            self.put(k, v)?;
        }
        Ok(())
    }

    /// Removes `map_key`.
    pub fn remove(&self, map_key: &K) -> Result<()> {
        let user_key = to_bytes(map_key)?;
        let mut ctx = self.handle.lock()?;
        let key = ctx.composite(&user_key)?;
        ctx.backend.delete(self.handle.id, &key)
    }

    /// Whether `map_key` has a (visible) value.
    pub fn contains(&self, map_key: &K) -> Result<bool> {
        Ok(self.get(map_key)?.is_some())
    }

    /// Every (map key, value) pair, in serialized-key byte order.
    pub fn iter(&self) -> Result<Vec<(K, V)>> {
        self.entries()?
            .into_iter()
            .map(|(k, v)| Ok((from_bytes(&k)?, from_bytes(&v)?)))
            .collect()
    }

    /// Every map key, in serialized-key byte order.
    pub fn keys(&self) -> Result<Vec<K>> {
        self.entries()?.iter().map(|(k, _)| from_bytes(k)).collect()
    }

    /// Every value, in serialized-key byte order of their keys.
    pub fn values(&self) -> Result<Vec<V>> {
        self.entries()?.iter().map(|(_, v)| from_bytes(v)).collect()
    }

    /// Whether the map of the current key and namespace has no (visible) entry.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.entries()?.is_empty())
    }

    /// Removes every entry of the current key and namespace.
    pub fn clear(&self) -> Result<()> {
        let mut ctx = self.handle.lock()?;
        let prefix = ctx.composite(&[])?;
        ctx.backend.delete_prefix(self.handle.id, &prefix)
    }

    fn entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut ctx = self.handle.lock()?;
        let prefix = ctx.composite(&[])?;
        ttl::scan(&mut ctx, self.handle.id, self.handle.ttl.as_ref(), &prefix)
    }
}
