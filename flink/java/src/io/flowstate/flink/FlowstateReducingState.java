package io.flowstate.flink;

import java.util.Collection;

import org.apache.flink.api.common.functions.ReduceFunction;
import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.runtime.state.internal.InternalReducingState;

/** Flink's {@code ReducingState} over flowstate: one reduced value per (key, namespace). */
final class FlowstateReducingState<K, N, V> extends AbstractFlowstateState<K, N, V>
        implements InternalReducingState<K, N, V> {
    private final ReduceFunction<V> reduce;

    FlowstateReducingState(
            FlowstateKeyedStateBackend<K> backend,
            int stateId,
            TypeSerializer<N> namespaceSerializer,
            TypeSerializer<V> valueSerializer,
            ReduceFunction<V> reduce) {
        super(backend, stateId, namespaceSerializer, valueSerializer);
        this.reduce = reduce;
    }

    private V read(byte[] key) {
        byte[] bytes = getRaw(key);
        return bytes == null ? null : deserialize(valueSerializer, bytes, 0, bytes.length);
    }

    @Override
    public V get() {
        return getInternal();
    }

    @Override
    public V getInternal() {
        return read(currentKey());
    }

    @Override
    public void updateInternal(V value) {
        if (value == null) {
            clear();
        } else {
            putRaw(currentKey(), serialize(valueSerializer, value));
        }
    }

    @Override
    public void add(V value) throws Exception {
        if (value == null) {
            clear();
            return;
        }
        byte[] key = currentKey();
        V old = read(key);
        putRaw(key, serialize(valueSerializer, old == null ? value : reduce.reduce(old, value)));
    }

    @Override
    public void mergeNamespaces(N target, Collection<N> sources) throws Exception {
        if (sources == null || sources.isEmpty()) {
            return;
        }
        V merged = null;
        for (N source : sources) {
            if (source == null) {
                continue;
            }
            byte[] key = keyIn(serializeNamespace(source));
            V value = read(key);
            if (value != null) {
                deleteRaw(key);
                merged = merged == null ? value : reduce.reduce(merged, value);
            }
        }
        if (merged != null) {
            byte[] key = keyIn(serializeNamespace(target));
            V existing = read(key);
            putRaw(key, serialize(valueSerializer, existing == null ? merged : reduce.reduce(merged, existing)));
        }
    }
}
