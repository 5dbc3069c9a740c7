package io.flowstate.flink;

import java.io.ByteArrayOutputStream;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;

import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.api.common.typeutils.base.ListSerializer;
import org.apache.flink.runtime.state.internal.InternalListState;
import org.apache.flink.util.Preconditions;

/**
 * Flink's {@code ListState} over flowstate: one entry per (key, namespace) holding element frames
 * {@code varint len | element} (FORMAT.md §3.2); {@code add} is a native merge (no read).
 */
final class FlowstateListState<K, N, V> extends AbstractFlowstateState<K, N, List<V>>
        implements InternalListState<K, N, V> {
    private TypeSerializer<V> elementSerializer;

    FlowstateListState(
            FlowstateKeyedStateBackend<K> backend,
            int stateId,
            TypeSerializer<N> namespaceSerializer,
            TypeSerializer<List<V>> valueSerializer) {
        super(backend, stateId, namespaceSerializer, valueSerializer);
        this.elementSerializer = ((ListSerializer<V>) valueSerializer).getElementSerializer();
    }

    @Override
    void updateSerializers(TypeSerializer<N> namespaceSerializer, TypeSerializer<List<V>> valueSerializer) {
        super.updateSerializers(namespaceSerializer, valueSerializer);
        this.elementSerializer = ((ListSerializer<V>) valueSerializer).getElementSerializer();
    }

    @Override
    public Iterable<V> get() {
        return getInternal();
    }

    @Override
    public List<V> getInternal() {
        return decode(getRaw(currentKey()));
    }

    private List<V> decode(byte[] bytes) {
        if (bytes == null) {
            return null;
        }
        List<V> result = new ArrayList<>();
        Bytes.Reader r = new Bytes.Reader(bytes, 0, bytes.length);
        while (r.hasMore()) {
            int len = r.varint();
            int start = r.skip(len);
            result.add(deserialize(elementSerializer, bytes, start, len));
        }
        return result;
    }

    private byte[] frames(Collection<V> values) {
        ByteArrayOutputStream frames = new ByteArrayOutputStream();
        for (V v : values) {
            Preconditions.checkNotNull(v, "You cannot add null to a ListState.");
            byte[] element = serialize(elementSerializer, v);
            Bytes.putVarint(frames, element.length);
            frames.writeBytes(element);
        }
        return frames.toByteArray();
    }

    @Override
    public void add(V value) {
        Preconditions.checkNotNull(value, "You cannot add null to a ListState.");
        FlowstateNative.merge(backend.handle(), stateId, currentKey(), frames(List.of(value)));
    }

    @Override
    public void addAll(List<V> values) {
        Preconditions.checkNotNull(values, "List of values to add cannot be null.");
        if (!values.isEmpty()) {
            FlowstateNative.merge(backend.handle(), stateId, currentKey(), frames(values));
        }
    }

    @Override
    public void update(List<V> values) {
        Preconditions.checkNotNull(values, "List of values to add cannot be null.");
        updateInternal(values);
    }

    @Override
    public void updateInternal(List<V> values) {
        if (values == null || values.isEmpty()) {
            clear();
        } else {
            putRaw(currentKey(), frames(values));
        }
    }

    @Override
    public void mergeNamespaces(N target, Collection<N> sources) {
        if (sources == null || sources.isEmpty()) {
            return;
        }
        ByteArrayOutputStream merged = new ByteArrayOutputStream();
        for (N source : sources) {
            if (source == null) {
                continue;
            }
            byte[] key = keyIn(serializeNamespace(source));
            byte[] bytes = getRaw(key);
            if (bytes != null) {
                deleteRaw(key);
                merged.writeBytes(bytes);
            }
        }
        if (merged.size() > 0) {
            FlowstateNative.merge(backend.handle(), stateId, keyIn(serializeNamespace(target)), merged.toByteArray());
        }
    }
}
