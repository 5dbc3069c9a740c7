package io.flowstate.flink;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.util.List;

import org.apache.flink.api.common.state.StateDescriptor;
import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.api.common.typeutils.base.ListSerializer;
import org.apache.flink.api.common.typeutils.base.MapSerializer;
import org.apache.flink.runtime.state.ttl.TtlStateFactory;
import org.apache.flink.core.memory.DataInputDeserializer;
import org.apache.flink.core.memory.DataOutputSerializer;
import org.apache.flink.runtime.state.CompositeKeySerializationUtils;
import org.apache.flink.runtime.state.ListDelimitedSerializer;

/**
 * Conversion between flowstate's entries and the entries of Flink's canonical savepoints (the
 * layout Flink's RocksDB backend and its backend-independent savepoints use): key {@code key
 * group prefix (1 or 2 bytes) | key | [len] | namespace | [len] | user key}, where the lengths
 * follow only when both key and namespace serializers are variable-sized; list values are the
 * elements separated by one delimiter byte; map values are a null flag and the value (as
 * flowstate stores them, except TTL map values, stored without the flag); other values are the
 * serialized value (as flowstate stores them).
 */
final class CanonicalFormat {
    private final int prefixBytes;
    private final boolean ambiguous;
    private final StateDescriptor.Type type;
    private final TypeSerializer<Object> keySerializer;
    private final TypeSerializer<Object> namespaceSerializer;
    private final TypeSerializer<Object> elementSerializer;
    /** A map state whose values are stored without the null flag (TTL values are never null). */
    private final boolean flaglessMap;
    private final DataOutputSerializer out = new DataOutputSerializer(64);
    private final DataInputDeserializer in = new DataInputDeserializer();
    private final ListDelimitedSerializer lists = new ListDelimitedSerializer();
    private final Bytes.KeyParts parts = new Bytes.KeyParts();

    @SuppressWarnings("unchecked")
    CanonicalFormat(
            int numberOfKeyGroups,
            StateDescriptor.Type type,
            TypeSerializer<?> keySerializer,
            TypeSerializer<?> namespaceSerializer,
            TypeSerializer<?> stateSerializer) {
        this.prefixBytes = CompositeKeySerializationUtils.computeRequiredBytesInKeyGroupPrefix(numberOfKeyGroups);
        this.ambiguous = CompositeKeySerializationUtils.isAmbiguousKeyPossible(keySerializer, namespaceSerializer);
        this.type = type;
        this.keySerializer = (TypeSerializer<Object>) keySerializer;
        this.namespaceSerializer = (TypeSerializer<Object>) namespaceSerializer;
        this.elementSerializer = type == StateDescriptor.Type.LIST
                ? ((ListSerializer<Object>) stateSerializer).getElementSerializer()
                : null;
        this.flaglessMap = type == StateDescriptor.Type.MAP && hasTtlValues(type, stateSerializer);
    }

    /**
     * Whether a state's stored values (list elements, map values) are Flink TTL values, {@code
     * last_access_ms i64 BE | payload}: what flowstate's TTL compaction filter reads.
     */
    static boolean hasTtlValues(StateDescriptor.Type type, TypeSerializer<?> stateSerializer) {
        switch (type) {
            case LIST:
                return TtlStateFactory.TtlSerializer.isTtlStateSerializer(
                        ((ListSerializer<?>) stateSerializer).getElementSerializer());
            case MAP:
                return TtlStateFactory.TtlSerializer.isTtlStateSerializer(
                        ((MapSerializer<?, ?>) stateSerializer).getValueSerializer());
            default:
                return TtlStateFactory.TtlSerializer.isTtlStateSerializer(stateSerializer);
        }
    }

    /** The canonical key of a flowstate composite key. */
    byte[] canonicalKey(byte[] composite) throws IOException {
        Bytes.parse(composite, parts);
        out.clear();
        CompositeKeySerializationUtils.writeKeyGroup(parts.keyGroup, prefixBytes, out);
        out.write(composite, parts.keyStart, parts.keyLen);
        if (ambiguous) {
            CompositeKeySerializationUtils.writeVariableIntBytes(parts.keyLen, out);
        }
        out.write(composite, parts.nsStart, parts.nsLen);
        if (ambiguous) {
            CompositeKeySerializationUtils.writeVariableIntBytes(parts.nsLen, out);
        }
        out.write(composite, parts.userKeyStart, composite.length - parts.userKeyStart);
        return out.getCopyOfBuffer();
    }

    /** The canonical value of a flowstate value. */
    byte[] canonicalValue(byte[] value) {
        if (flaglessMap) {
            byte[] flagged = new byte[value.length + 1];
            System.arraycopy(value, 0, flagged, 1, value.length);
            return flagged;
        }
        if (type != StateDescriptor.Type.LIST) {
            return value;
        }
        ByteArrayOutputStream joined = new ByteArrayOutputStream(value.length);
        Bytes.Reader r = new Bytes.Reader(value, 0, value.length);
        boolean first = true;
        while (r.hasMore()) {
            int len = r.varint();
            int start = r.skip(len);
            if (!first) {
                joined.write(',');
            }
            joined.write(value, start, len);
            first = false;
        }
        return joined.toByteArray();
    }

    /** The flowstate composite key of a canonical key. */
    byte[] compositeKey(byte[] canonical) throws IOException {
        in.setBuffer(canonical);
        int keyGroup = CompositeKeySerializationUtils.readKeyGroup(prefixBytes, in);
        Object key = CompositeKeySerializationUtils.readKey(keySerializer, in, ambiguous);
        Object namespace = CompositeKeySerializationUtils.readNamespace(namespaceSerializer, in, ambiguous);
        int userKeyStart = in.getPosition();
        byte[] keyBytes = serialize(keySerializer, key);
        byte[] nsBytes = serialize(namespaceSerializer, namespace);
        int userKeyLen = canonical.length - userKeyStart;
        byte[] userKey = new byte[userKeyLen];
        System.arraycopy(canonical, userKeyStart, userKey, 0, userKeyLen);
        return Bytes.compositeKey(keyGroup, keyBytes, nsBytes, userKey, userKeyLen);
    }

    /** The flowstate value of a canonical value. */
    byte[] value(byte[] canonical) throws IOException {
        if (flaglessMap) {
            if (canonical.length == 0 || canonical[0] != 0) {
                throw new IOException("a TTL map value in a savepoint is null or empty");
            }
            return java.util.Arrays.copyOfRange(canonical, 1, canonical.length);
        }
        if (type != StateDescriptor.Type.LIST) {
            return canonical;
        }
        List<Object> elements = lists.deserializeList(canonical, elementSerializer);
        ByteArrayOutputStream frames = new ByteArrayOutputStream(canonical.length + 8);
        for (Object element : elements) {
            byte[] e = serialize(elementSerializer, element);
            Bytes.putVarint(frames, e.length);
            frames.writeBytes(e);
        }
        return frames.toByteArray();
    }

    private byte[] serialize(TypeSerializer<Object> serializer, Object value) throws IOException {
        out.clear();
        serializer.serialize(value, out);
        return out.getCopyOfBuffer();
    }
}
