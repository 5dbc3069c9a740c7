package io.flowstate.flink;

import java.util.AbstractMap;
import java.util.ArrayDeque;
import java.util.Iterator;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.function.Function;

import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.api.common.typeutils.base.MapSerializer;
import org.apache.flink.runtime.state.internal.InternalMapState;
import org.apache.flink.runtime.state.ttl.TtlStateFactory;

/**
 * Flink's {@code MapState} over flowstate: one entry per map key, the composite key of (key,
 * namespace) followed by the serialized map key; the value is a null flag ({@code 1} null, {@code
 * 0} followed by the serialized map value), as in Flink's RocksDB backend and its canonical
 * savepoints; TTL values, never null, without the flag (where the TTL filter reads their time). Iteration reads the entries in chunks, resuming after the last key.
 */
final class FlowstateMapState<K, N, UK, UV> extends AbstractFlowstateState<K, N, Map<UK, UV>>
        implements InternalMapState<K, N, UK, UV> {
    private static final int CHUNK = 256;

    private TypeSerializer<UK> userKeySerializer;
    private TypeSerializer<UV> userValueSerializer;
    /** TTL values (never null) are stored without the null flag, so the TTL filter reads them. */
    private boolean flagless;

    FlowstateMapState(
            FlowstateKeyedStateBackend<K> backend,
            int stateId,
            TypeSerializer<N> namespaceSerializer,
            TypeSerializer<Map<UK, UV>> valueSerializer) {
        super(backend, stateId, namespaceSerializer, valueSerializer);
        takeSerializers(valueSerializer);
    }

    private void takeSerializers(TypeSerializer<Map<UK, UV>> valueSerializer) {
        MapSerializer<UK, UV> map = (MapSerializer<UK, UV>) valueSerializer;
        this.userKeySerializer = map.getKeySerializer();
        this.userValueSerializer = map.getValueSerializer();
        this.flagless = TtlStateFactory.TtlSerializer.isTtlStateSerializer(userValueSerializer);
    }

    @Override
    void updateSerializers(TypeSerializer<N> namespaceSerializer, TypeSerializer<Map<UK, UV>> valueSerializer) {
        super.updateSerializers(namespaceSerializer, valueSerializer);
        takeSerializers(valueSerializer);
    }

    private byte[] entryKey(UK userKey) {
        byte[] uk = serialize(userKeySerializer, userKey);
        return backend.compositeKey(namespaceBytes, uk, uk.length);
    }

    private byte[] encodeValue(UV value) {
        if (flagless) {
            if (value == null) {
                throw new FlowstateException("a null TTL map value in state " + backend.stateName(stateId));
            }
            return serialize(userValueSerializer, value);
        }
        if (value == null) {
            return new byte[] {1};
        }
        byte[] v = serialize(userValueSerializer, value);
        byte[] out = new byte[v.length + 1];
        out[0] = 0;
        System.arraycopy(v, 0, out, 1, v.length);
        return out;
    }

    private UV decodeValue(byte[] bytes, int offset, int length) {
        if (flagless) {
            return deserialize(userValueSerializer, bytes, offset, length);
        }
        if (length < 1) {
            throw new FlowstateException("empty map value in state " + backend.stateName(stateId));
        }
        if (bytes[offset] != 0) {
            return null;
        }
        return deserialize(userValueSerializer, bytes, offset + 1, length - 1);
    }

    @Override
    public UV get(UK key) {
        byte[] bytes = getRaw(entryKey(key));
        return bytes == null ? null : decodeValue(bytes, 0, bytes.length);
    }

    @Override
    public void put(UK key, UV value) {
        putRaw(entryKey(key), encodeValue(value));
    }

    @Override
    public void putAll(Map<UK, UV> map) {
        if (map == null) {
            return;
        }
        for (Map.Entry<UK, UV> e : map.entrySet()) {
            put(e.getKey(), e.getValue());
        }
    }

    @Override
    public void remove(UK key) {
        deleteRaw(entryKey(key));
    }

    @Override
    public boolean contains(UK key) {
        return getRaw(entryKey(key)) != null;
    }

    @Override
    public Iterable<Map.Entry<UK, UV>> entries() {
        return () -> iterator(e -> e);
    }

    @Override
    public Iterable<UK> keys() {
        return () -> iterator(Map.Entry::getKey);
    }

    @Override
    public Iterable<UV> values() {
        return () -> iterator(Map.Entry::getValue);
    }

    @Override
    public Iterator<Map.Entry<UK, UV>> iterator() {
        return iterator(e -> e);
    }

    @Override
    public boolean isEmpty() {
        byte[] chunk = FlowstateNative.scan(backend.handle(), stateId, currentKey(), null, 1, 1);
        return chunk.length == 0;
    }

    @Override
    public void clear() {
        FlowstateNative.deletePrefix(backend.handle(), stateId, currentKey());
    }

    private <T> Iterator<T> iterator(Function<Map.Entry<UK, UV>, T> project) {
        return new ChunkIterator<>(currentKey(), project);
    }

    /** Iterates the map of one (key, namespace) a chunk at a time; {@code remove} deletes the last entry. */
    private final class ChunkIterator<T> implements Iterator<T> {
        private final byte[] prefix;
        private final Function<Map.Entry<UK, UV>, T> project;
        private final ArrayDeque<byte[][]> buffered = new ArrayDeque<>();
        private byte[] after;
        private byte[] lastReturned;
        private boolean exhausted;

        ChunkIterator(byte[] prefix, Function<Map.Entry<UK, UV>, T> project) {
            this.prefix = prefix;
            this.project = project;
        }

        private void fill() {
            if (!buffered.isEmpty() || exhausted) {
                return;
            }
            byte[] chunk = FlowstateNative.scan(backend.handle(), stateId, prefix, after, CHUNK, 1 << 20);
            Bytes.Reader r = new Bytes.Reader(chunk, 0, chunk.length);
            while (r.hasMore()) {
                int klen = r.u32();
                int kstart = r.skip(klen);
                int vlen = r.u32();
                int vstart = r.skip(vlen);
                byte[] key = java.util.Arrays.copyOfRange(chunk, kstart, kstart + klen);
                byte[] value = java.util.Arrays.copyOfRange(chunk, vstart, vstart + vlen);
                buffered.add(new byte[][] {key, value});
                after = key;
            }
            if (buffered.isEmpty()) {
                exhausted = true;
            }
        }

        @Override
        public boolean hasNext() {
            fill();
            return !buffered.isEmpty();
        }

        @Override
        public T next() {
            if (!hasNext()) {
                throw new NoSuchElementException();
            }
            byte[][] entry = buffered.poll();
            lastReturned = entry[0];
            UK userKey = deserialize(userKeySerializer, entry[0], prefix.length, entry[0].length - prefix.length);
            UV value = decodeValue(entry[1], 0, entry[1].length);
            return project.apply(new MapEntry(entry[0], userKey, value));
        }

        @Override
        public void remove() {
            if (lastReturned == null) {
                throw new IllegalStateException("next() has not returned an entry to remove");
            }
            deleteRaw(lastReturned);
            lastReturned = null;
        }
    }

    /** A map entry whose {@code setValue} writes through. */
    private final class MapEntry extends AbstractMap.SimpleEntry<UK, UV> {
        private static final long serialVersionUID = 1L;
        private final transient byte[] storedKey;

        MapEntry(byte[] storedKey, UK key, UV value) {
            super(key, value);
            this.storedKey = storedKey;
        }

        @Override
        public UV setValue(UV value) {
            UV old = super.setValue(value);
            putRaw(storedKey, encodeValue(value));
            return old;
        }
    }
}
