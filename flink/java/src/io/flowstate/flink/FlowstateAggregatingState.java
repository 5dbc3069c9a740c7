package io.flowstate.flink;

import java.util.Collection;

import org.apache.flink.api.common.functions.AggregateFunction;
import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.runtime.state.internal.InternalAggregatingState;

/** Flink's {@code AggregatingState} over flowstate: one accumulator per (key, namespace). */
final class FlowstateAggregatingState<K, N, IN, ACC, OUT> extends AbstractFlowstateState<K, N, ACC>
        implements InternalAggregatingState<K, N, IN, ACC, OUT> {
    private final AggregateFunction<IN, ACC, OUT> aggregate;

    FlowstateAggregatingState(
            FlowstateKeyedStateBackend<K> backend,
            int stateId,
            TypeSerializer<N> namespaceSerializer,
            TypeSerializer<ACC> accumulatorSerializer,
            AggregateFunction<IN, ACC, OUT> aggregate) {
        super(backend, stateId, namespaceSerializer, accumulatorSerializer);
        this.aggregate = aggregate;
    }

    private ACC read(byte[] key) {
        byte[] bytes = getRaw(key);
        return bytes == null ? null : deserialize(valueSerializer, bytes, 0, bytes.length);
    }

    @Override
    public OUT get() {
        ACC acc = getInternal();
        return acc == null ? null : aggregate.getResult(acc);
    }

    @Override
    public ACC getInternal() {
        return read(currentKey());
    }

    @Override
    public void updateInternal(ACC accumulator) {
        if (accumulator == null) {
            clear();
        } else {
            putRaw(currentKey(), serialize(valueSerializer, accumulator));
        }
    }

    @Override
    public void add(IN value) {
        byte[] key = currentKey();
        ACC acc = read(key);
        if (acc == null) {
            acc = aggregate.createAccumulator();
        }
        putRaw(key, serialize(valueSerializer, aggregate.add(value, acc)));
    }

    @Override
    public void mergeNamespaces(N target, Collection<N> sources) {
        if (sources == null || sources.isEmpty()) {
            return;
        }
        ACC merged = null;
        for (N source : sources) {
            if (source == null) {
                continue;
            }
            byte[] key = keyIn(serializeNamespace(source));
            ACC acc = read(key);
            if (acc != null) {
                deleteRaw(key);
                merged = merged == null ? acc : aggregate.merge(merged, acc);
            }
        }
        if (merged != null) {
            byte[] key = keyIn(serializeNamespace(target));
            ACC existing = read(key);
            putRaw(key, serialize(valueSerializer, existing == null ? merged : aggregate.merge(merged, existing)));
        }
    }
}
