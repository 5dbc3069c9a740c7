package io.flowstate.flink;

import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.runtime.state.internal.InternalValueState;

/** Flink's {@code ValueState} over flowstate: one entry per (key, namespace). */
final class FlowstateValueState<K, N, V> extends AbstractFlowstateState<K, N, V>
        implements InternalValueState<K, N, V> {
    private final V defaultValue;

    FlowstateValueState(
            FlowstateKeyedStateBackend<K> backend,
            int stateId,
            TypeSerializer<N> namespaceSerializer,
            TypeSerializer<V> valueSerializer,
            V defaultValue) {
        super(backend, stateId, namespaceSerializer, valueSerializer);
        this.defaultValue = defaultValue;
    }

    @Override
    public V value() {
        byte[] bytes = getRaw(currentKey());
        if (bytes == null) {
            return defaultValue == null ? null : valueSerializer.copy(defaultValue);
        }
        return deserialize(valueSerializer, bytes, 0, bytes.length);
    }

    @Override
    public void update(V value) {
        if (value == null) {
            clear();
            return;
        }
        putRaw(currentKey(), serialize(valueSerializer, value));
    }
}
