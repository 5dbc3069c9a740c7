package io.flowstate.flink;

import java.io.IOException;

import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.core.memory.DataInputDeserializer;
import org.apache.flink.core.memory.DataOutputSerializer;
import org.apache.flink.runtime.state.internal.InternalKvState;

/**
 * What every flowstate-backed Flink state shares: its native state id, the serializers, the
 * current namespace's bytes, and the composite key of (current key, current namespace).
 */
abstract class AbstractFlowstateState<K, N, V> implements InternalKvState<K, N, V> {
    final FlowstateKeyedStateBackend<K> backend;
    final int stateId;
    TypeSerializer<N> namespaceSerializer;
    TypeSerializer<V> valueSerializer;

    final DataOutputSerializer out = new DataOutputSerializer(128);
    final DataInputDeserializer in = new DataInputDeserializer();

    private N namespace;
    byte[] namespaceBytes = new byte[0];

    AbstractFlowstateState(
            FlowstateKeyedStateBackend<K> backend,
            int stateId,
            TypeSerializer<N> namespaceSerializer,
            TypeSerializer<V> valueSerializer) {
        this.backend = backend;
        this.stateId = stateId;
        this.namespaceSerializer = namespaceSerializer;
        this.valueSerializer = valueSerializer;
    }

    /** Takes the serializers of a re-registration (after a compatible serializer change). */
    void updateSerializers(TypeSerializer<N> namespaceSerializer, TypeSerializer<V> valueSerializer) {
        this.namespaceSerializer = namespaceSerializer;
        this.valueSerializer = valueSerializer;
        this.namespace = null;
    }

    @Override
    public TypeSerializer<K> getKeySerializer() {
        return backend.getKeySerializer();
    }

    @Override
    public TypeSerializer<N> getNamespaceSerializer() {
        return namespaceSerializer;
    }

    @Override
    public TypeSerializer<V> getValueSerializer() {
        return valueSerializer;
    }

    @Override
    public void setCurrentNamespace(N namespace) {
        if (namespace == this.namespace && namespace != null) {
            return;
        }
        this.namespace = namespace;
        this.namespaceBytes = serializeNamespace(namespace);
    }

    byte[] serializeNamespace(N namespace) {
        try {
            out.clear();
            namespaceSerializer.serialize(namespace, out);
            return out.getCopyOfBuffer();
        } catch (IOException e) {
            throw new FlowstateException("cannot serialize namespace " + namespace, e);
        }
    }

    // The composite key of (current key, current namespace), kept until either changes: a
    // read-modify-write builds it once. Never modified once built.
    private long cachedKeyEpoch = -1;
    private byte[] cachedNamespace;
    private byte[] cachedKey;

    /** The composite key of (current key, current namespace). */
    byte[] currentKey() {
        long epoch = backend.keyEpoch();
        if (epoch != cachedKeyEpoch || cachedNamespace != namespaceBytes) {
            cachedKey = backend.compositeKey(namespaceBytes, null, 0);
            cachedKeyEpoch = epoch;
            cachedNamespace = namespaceBytes;
        }
        return cachedKey;
    }

    /** The composite key of (current key, {@code namespace}). */
    byte[] keyIn(byte[] namespace) {
        return backend.compositeKey(namespace, null, 0);
    }

    <T> byte[] serialize(TypeSerializer<T> serializer, T value) {
        try {
            out.clear();
            serializer.serialize(value, out);
            return out.getCopyOfBuffer();
        } catch (IOException e) {
            throw new FlowstateException("cannot serialize a value of state " + backend.stateName(stateId), e);
        }
    }

    <T> T deserialize(TypeSerializer<T> serializer, byte[] bytes, int offset, int length) {
        try {
            in.setBuffer(bytes, offset, length);
            return serializer.deserialize(in);
        } catch (IOException e) {
            throw new FlowstateException("cannot deserialize a value of state " + backend.stateName(stateId), e);
        }
    }

    byte[] getRaw(byte[] key) {
        return FlowstateNative.get(backend.handle(), stateId, key);
    }

    void putRaw(byte[] key, byte[] value) {
        FlowstateNative.put(backend.handle(), stateId, key, value);
    }

    void deleteRaw(byte[] key) {
        FlowstateNative.delete(backend.handle(), stateId, key);
    }

    @Override
    public void clear() {
        deleteRaw(currentKey());
    }

    @Override
    public byte[] getSerializedValue(
            byte[] serializedKeyAndNamespace,
            TypeSerializer<K> safeKeySerializer,
            TypeSerializer<N> safeNamespaceSerializer,
            TypeSerializer<V> safeValueSerializer) {
        throw new UnsupportedOperationException("flowstate does not serve queryable state");
    }

    @Override
    public StateIncrementalVisitor<K, N, V> getStateIncrementalVisitor(int recommendedMaxNumberOfReturnedRecords) {
        throw new UnsupportedOperationException("flowstate has no incremental state visitor (heap backends only)");
    }
}
