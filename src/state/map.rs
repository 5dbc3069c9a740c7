//! [`MapState`]: a map per (key, namespace), one stored entry per map key.

use std::iter::FusedIterator;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ttl::PrefixScan;
use super::{Handle, KeyedState, from_bytes, to_bytes, ttl};
use crate::backend::Entry;
use crate::error::Result;

/// A map from `K` to `V` per key and namespace (Flink's `MapState`). Each map entry is its own
/// backend entry (the map key is the composite key's user key), so a `get` or `put` touches one
/// entry; iteration is a prefix scan, in the order of the serialized map keys' bytes, that
/// streams the map in chunks ([`MapState::iter`]). With TTL, every entry expires on its own.
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

    /// Every (map key, value) pair of the current key and namespace, in the byte order of the
    /// serialized map keys, read from the backend in chunks of [`MAP_ITER_CHUNK`] entries.
    ///
    /// The iterator reads the map of the key and namespace current when `iter` is called, even
    /// if they change during the loop. It does not hold the keyed state between chunks: the
    /// loop may call any state method, including writes to this map. Each chunk is one backend
    /// scan that resumes after the last key the one before read, so map keys come strictly
    /// ascending and none comes twice. A write to this map during the iteration is seen exactly
    /// when its map key sorts after the last key read so far (the end of the chunk being handed
    /// out): an entry put there is returned when the iteration gets there, one removed there is
    /// not returned. A write at or before that key is not seen: a new entry there is not
    /// returned, and an entry already read into the chunk is returned as it was read even if it
    /// is removed or overwritten before the loop gets to it.
    ///
    /// With TTL, each entry's expiry is judged when its chunk is read, and reading it has the
    /// effects of a [`MapState::get`] of it: an expired entry is not returned (but once with
    /// [`Visibility::ReturnExpiredIfNotCleanedUp`](crate::Visibility)) and is removed, and
    /// [`UpdateType::OnReadAndWrite`](crate::UpdateType) refreshes a live one.
    ///
    /// An error reading a chunk (from the backend, or a damaged TTL envelope) is yielded and
    /// ends the iteration; an entry whose key or value does not deserialize yields its error
    /// and the iteration goes on. Fails at once when no key is set.
    ///
    /// ```
    /// use flowstate::{BackendConfig, KeyedState, MemoryBackend};
    ///
    /// let keyed = KeyedState::new(MemoryBackend::new(BackendConfig::default()));
    /// let visits = keyed.map_state::<u32, u64>("visits")?;
    /// keyed.set_current_key("alice")?;
    /// for page in 0..1000u32 {
    ///     visits.put(&page, &1)?;
    /// }
    /// let mut total = 0;
    /// for entry in visits.iter()? {
    ///     let (page, count) = entry?;
    ///     total += count;
    ///     visits.put(&page, &(count + 1))?; // a write to an entry already read
    /// }
    /// assert_eq!(total, 1000);
    /// assert_eq!(visits.get(&999)?, Some(2));
    /// # Ok::<(), flowstate::Error>(())
    /// ```
    pub fn iter(&self) -> Result<MapIter<'k, K, V>> {
        self.iter_in_chunks(MAP_ITER_CHUNK)
    }

    /// [`MapState::iter`] reading `chunk` entries per backend call (at least 1).
    pub(crate) fn iter_in_chunks(&self, chunk: usize) -> Result<MapIter<'k, K, V>> {
        Ok(MapIter {
            scan: self.scan(chunk)?,
            _types: PhantomData,
        })
    }

    /// Every map key, in serialized-key byte order; streams as [`MapState::iter`] does (values
    /// are not decoded).
    pub fn keys(&self) -> Result<MapKeys<'k, K>> {
        Ok(MapKeys {
            scan: self.scan(MAP_ITER_CHUNK)?,
            _types: PhantomData,
        })
    }

    /// Every value, in serialized-key byte order of their keys; streams as [`MapState::iter`]
    /// does (map keys are not decoded).
    pub fn values(&self) -> Result<MapValues<'k, V>> {
        Ok(MapValues {
            scan: self.scan(MAP_ITER_CHUNK)?,
            _types: PhantomData,
        })
    }

    /// Whether the map of the current key and namespace has no (visible) entry. Reads up to the
    /// first visible entry only (expired entries before it are removed on the way, as reads
    /// of them do).
    pub fn is_empty(&self) -> Result<bool> {
        let mut scan = self.scan(MAP_ITER_CHUNK)?;
        loop {
            if !scan.inner.buffer.is_empty() {
                return Ok(false);
            }
            if scan.inner.done {
                return Ok(true);
            }
            scan.fill(1)?;
        }
    }

    /// Removes every entry of the current key and namespace.
    pub fn clear(&self) -> Result<()> {
        let mut ctx = self.handle.lock()?;
        let prefix = ctx.composite(&[])?;
        ctx.backend.delete_prefix(self.handle.id, &prefix)
    }

    /// A chunked scan of the map of the current key and namespace.
    fn scan(&self, chunk: usize) -> Result<Scan<'k>> {
        let prefix = self.handle.lock()?.composite(&[])?;
        Ok(Scan {
            keyed: self.handle.keyed,
            inner: PrefixScan::new(self.handle.id, self.handle.ttl, prefix, chunk),
        })
    }
}

/// Stored entries a map iterator reads per backend call ([`MapState::iter`], [`MapState::keys`],
/// [`MapState::values`]): what one chunk of a map's entries costs in memory.
pub const MAP_ITER_CHUNK: usize = 512;

/// What the map iterators share: the keyed state (used only while a chunk is read) and the
/// scan.
struct Scan<'k> {
    keyed: &'k KeyedState,
    inner: PrefixScan,
}

impl std::fmt::Debug for Scan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapScan")
            .field("buffered", &self.inner.buffer.len())
            .field("done", &self.inner.done)
            .finish()
    }
}

impl Scan<'_> {
    /// Reads one chunk, stopping after `max_visible` returned entries.
    fn fill(&mut self, max_visible: usize) -> Result<()> {
        let mut ctx = self.keyed.lock()?;
        self.inner.fill(&mut ctx, max_visible)
    }

    /// The next (composite key, payload), reading a chunk when the last one is used up.
    fn next_entry(&mut self) -> Option<Result<Entry>> {
        loop {
            if let Some(entry) = self.inner.buffer.pop_front() {
                return Some(Ok(entry));
            }
            if self.inner.done {
                return None;
            }
            if let Err(error) = self.fill(usize::MAX) {
                self.inner.done = true;
                self.inner.buffer.clear();
                return Some(Err(error));
            }
        }
    }

    /// The serialized map key of a composite key read by this scan.
    fn user_key<'a>(&self, key: &'a [u8]) -> &'a [u8] {
        key.get(self.inner.prefix_len()..).unwrap_or_default()
    }
}

/// The (map key, value) pairs of one map, from [`MapState::iter`]. Borrows its keyed state
/// (neither `Send` nor `Sync`), so it stays on the keyed state's thread:
///
/// ```compile_fail,E0277
/// use flowstate::{BackendConfig, KeyedState, MemoryBackend};
///
/// let keyed = KeyedState::new(MemoryBackend::new(BackendConfig::default()));
/// let map = keyed.map_state::<u32, u32>("m").unwrap();
/// keyed.set_current_key("k").unwrap();
/// let entries = map.iter().unwrap();
/// std::thread::scope(|s| {
///     s.spawn(move || entries.count());
/// });
/// ```
pub struct MapIter<'k, K, V> {
    scan: Scan<'k>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> std::fmt::Debug for MapIter<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MapIter").field(&self.scan).finish()
    }
}

impl<K: DeserializeOwned, V: DeserializeOwned> Iterator for MapIter<'_, K, V> {
    type Item = Result<(K, V)>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.scan.next_entry()?.and_then(|(key, value)| {
            Ok((from_bytes(self.scan.user_key(&key))?, from_bytes(&value)?))
        }))
    }
}

impl<K: DeserializeOwned, V: DeserializeOwned> FusedIterator for MapIter<'_, K, V> {}

/// The map keys of one map, from [`MapState::keys`]. Borrows its keyed state.
pub struct MapKeys<'k, K> {
    scan: Scan<'k>,
    _types: PhantomData<fn() -> K>,
}

impl<K> std::fmt::Debug for MapKeys<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MapKeys").field(&self.scan).finish()
    }
}

impl<K: DeserializeOwned> Iterator for MapKeys<'_, K> {
    type Item = Result<K>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(
            self.scan
                .next_entry()?
                .and_then(|(key, _)| from_bytes(self.scan.user_key(&key))),
        )
    }
}

impl<K: DeserializeOwned> FusedIterator for MapKeys<'_, K> {}

/// The values of one map, from [`MapState::values`]. Borrows its keyed state.
pub struct MapValues<'k, V> {
    scan: Scan<'k>,
    _types: PhantomData<fn() -> V>,
}

impl<V> std::fmt::Debug for MapValues<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MapValues").field(&self.scan).finish()
    }
}

impl<V: DeserializeOwned> Iterator for MapValues<'_, V> {
    type Item = Result<V>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(
            self.scan
                .next_entry()?
                .and_then(|(_, value)| from_bytes(&value)),
        )
    }
}

impl<V: DeserializeOwned> FusedIterator for MapValues<'_, V> {}
