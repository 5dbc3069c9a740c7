package io.flowstate.flink;

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.Spliterator;
import java.util.Spliterators;
import java.util.UUID;
import java.util.concurrent.Callable;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.FutureTask;
import java.util.concurrent.RunnableFuture;
import java.util.concurrent.atomic.AtomicLong;
import java.util.stream.Stream;
import java.util.stream.StreamSupport;

import org.apache.flink.api.common.ExecutionConfig;
import org.apache.flink.api.common.state.AggregatingStateDescriptor;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ReducingStateDescriptor;
import org.apache.flink.api.common.state.State;
import org.apache.flink.api.common.state.StateDescriptor;
import org.apache.flink.api.common.state.StateTtlConfig;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.api.common.typeutils.TypeSerializerSchemaCompatibility;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.core.fs.CloseableRegistry;
import org.apache.flink.core.fs.FSDataInputStream;
import org.apache.flink.core.memory.DataInputDeserializer;
import org.apache.flink.core.memory.DataInputViewStreamWrapper;
import org.apache.flink.core.memory.DataOutputSerializer;
import org.apache.flink.core.memory.DataOutputViewStreamWrapper;
import org.apache.flink.metrics.Gauge;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.runtime.checkpoint.CheckpointOptions;
import org.apache.flink.runtime.checkpoint.SnapshotType;
import org.apache.flink.runtime.query.TaskKvStateRegistry;
import org.apache.flink.runtime.state.AbstractKeyedStateBackend;
import org.apache.flink.runtime.state.CheckpointStateOutputStream;
import org.apache.flink.runtime.state.CheckpointStreamFactory;
import org.apache.flink.runtime.state.CheckpointedStateScope;
import org.apache.flink.runtime.state.IncrementalKeyedStateHandle.HandleAndLocalPath;
import org.apache.flink.runtime.state.IncrementalRemoteKeyedStateHandle;
import org.apache.flink.runtime.state.InternalKeyContext;
import org.apache.flink.runtime.state.KeyGroupRange;
import org.apache.flink.runtime.state.CompositeKeySerializationUtils;
import org.apache.flink.runtime.state.KeyGroupedInternalPriorityQueue;
import org.apache.flink.runtime.state.KeyGroupsStateHandle;
import org.apache.flink.runtime.state.RegisteredPriorityQueueStateBackendMetaInfo;
import org.apache.flink.runtime.state.SnapshotExecutionType;
import org.apache.flink.runtime.state.StateSerializerProvider;
import org.apache.flink.runtime.state.restore.FullSnapshotRestoreOperation;
import org.apache.flink.runtime.state.restore.KeyGroup;
import org.apache.flink.runtime.state.restore.KeyGroupEntry;
import org.apache.flink.runtime.state.restore.SavepointRestoreResult;
import org.apache.flink.runtime.state.restore.ThrowingIterator;
import org.apache.flink.runtime.state.Keyed;
import org.apache.flink.runtime.state.KeyedBackendSerializationProxy;
import org.apache.flink.runtime.state.KeyedStateHandle;
import org.apache.flink.runtime.state.PlaceholderStreamStateHandle;
import org.apache.flink.runtime.state.filesystem.FileStateHandle;
import org.apache.flink.runtime.state.PriorityComparable;
import org.apache.flink.runtime.state.RegisteredKeyValueStateBackendMetaInfo;
import org.apache.flink.runtime.state.SavepointResources;
import org.apache.flink.runtime.state.SnapshotResult;
import org.apache.flink.runtime.state.StateSnapshotTransformer.StateSnapshotTransformFactory;
import org.apache.flink.runtime.state.StreamStateHandle;
import org.apache.flink.runtime.state.UncompressedStreamCompressionDecorator;
import org.apache.flink.runtime.state.heap.HeapPriorityQueueElement;
import org.apache.flink.runtime.state.heap.HeapPriorityQueueSetFactory;
import org.apache.flink.runtime.state.metainfo.StateMetaInfoSnapshot;
import org.apache.flink.runtime.state.metrics.LatencyTrackingStateConfig;
import org.apache.flink.runtime.state.metrics.SizeTrackingStateConfig;
import org.apache.flink.runtime.state.ttl.TtlTimeProvider;
import org.apache.flink.util.FlinkRuntimeException;
import org.apache.flink.util.StateMigrationException;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A Flink keyed-state backend whose state lives in flowstate's LSM backend (native, through
 * {@link FlowstateNative}).
 *
 * <p>Every entry is stored under flowstate's composite key {@code key_group u16 BE | varint len |
 * key | varint len | namespace | user_key} of the bytes Flink's serializers write, so one key
 * group is one contiguous range (rescaling restores whole key groups) and one (key, namespace)
 * one prefix. Timers are Flink's heap priority queues, written by Flink into raw keyed state at
 * each checkpoint ({@link #requiresLegacySynchronousTimerSnapshots}).
 *
 * <p>A checkpoint's synchronous part is flowstate's freeze (no I/O); its asynchronous part writes
 * the new immutable files into a local staging directory and uploads those Flink has not got yet
 * through the checkpoint streams: SSTs under {@code shared/} in the {@code SHARED} scope (later
 * checkpoints list them again as placeholders, so Flink's shared-state registry counts and
 * discards them), the checkpoint's own {@code _metadata} and the Flink meta-data (serializer
 * snapshots) in the {@code EXCLUSIVE} scope. The handle is an {@link
 * IncrementalRemoteKeyedStateHandle} whose local paths are the files' flowstate paths.
 */
public class FlowstateKeyedStateBackend<K> extends AbstractKeyedStateBackend<K> {
    private static final Logger LOG = LoggerFactory.getLogger(FlowstateKeyedStateBackend.class);

    /** What {@link #getBackendTypeIdentifier} returns. */
    public static final String BACKEND_TYPE = "flowstate";

    /** Bytes per read of a restore's copy of a checkpoint file. */
    private static final int TRANSFER_BUFFER = 1 << 20;

    private static final int SCAN_CHUNK = 512;

    /** A registered state: its native id, Flink meta info and the state object. */
    private static final class Registered {
        final int id;
        RegisteredKeyValueStateBackendMetaInfo<?, ?> metaInfo;
        AbstractFlowstateState<?, ?, ?> state;

        Registered(int id) {
            this.id = id;
        }
    }

    private final Path workingDir;
    private final UUID backendUid = UUID.randomUUID();
    private long handle;
    private final Map<String, Registered> states = new HashMap<>();
    private final Map<Integer, String> stateNames = new HashMap<>();
    /** Meta infos of restored states not yet registered again, by name. */
    private final Map<String, StateMetaInfoSnapshot> restoredMetaInfos = new HashMap<>();
    private final HeapPriorityQueueSetFactory priorityQueueFactory;
    /** Timer queues restored from a canonical savepoint, handed out by {@link #create}. */
    private final Map<String, KeyGroupedInternalPriorityQueue<?>> restoredQueues = new HashMap<>();

    /** Shared files of completed checkpoints: flowstate path → the uploaded handle. */
    private final Map<String, StreamStateHandle> uploaded = new ConcurrentHashMap<>();
    /** Shared files uploaded by checkpoints not yet confirmed complete, by checkpoint id. */
    private final Map<Long, Map<String, StreamStateHandle>> pendingUploads = new ConcurrentHashMap<>();

    private final Map<String, Long> stats = new ConcurrentHashMap<>();

    // The current key's serialized bytes, computed on first use after a key change.
    private final DataOutputSerializer keyOut = new DataOutputSerializer(64);
    private byte[] currentKeyBytes;
    private boolean keyChanged = true;
    /** Counts key changes: states keep their composite keys while it stays the same. */
    private long keyEpoch;

    private boolean disposed;

    FlowstateKeyedStateBackend(
            TaskKvStateRegistry kvStateRegistry,
            TypeSerializer<K> keySerializer,
            ClassLoader userCodeClassLoader,
            ExecutionConfig executionConfig,
            TtlTimeProvider ttlTimeProvider,
            CloseableRegistry cancelStreamRegistry,
            InternalKeyContext<K> keyContext,
            Path workingDir,
            String nativeOptions,
            MetricGroup metricGroup) {
        super(
                kvStateRegistry,
                keySerializer,
                userCodeClassLoader,
                executionConfig,
                ttlTimeProvider,
                LatencyTrackingStateConfig.disabled(),
                SizeTrackingStateConfig.disabled(),
                cancelStreamRegistry,
                UncompressedStreamCompressionDecorator.INSTANCE,
                keyContext);
        this.workingDir = workingDir;
        this.priorityQueueFactory = new HeapPriorityQueueSetFactory(keyGroupRange, numberOfKeyGroups, 128);
        this.handle = FlowstateNative.open(
                workingDir.toString(),
                numberOfKeyGroups,
                keyGroupRange.getStartKeyGroup(),
                keyGroupRange.getEndKeyGroup(),
                nativeOptions);
        if (metricGroup != null) {
            registerMetrics(metricGroup.addGroup("flowstate"));
        }
    }

    private void registerMetrics(MetricGroup group) {
        for (String name : new String[] {
            "live-sst-bytes", "memtable-bytes", "compaction-bytes-read", "compaction-bytes-written",
            "flush-bytes-written", "write-stalls", "block-cache-hits", "block-cache-misses",
            "write-cache-read-bytes", "write-cache-write-bytes"
        }) {
            group.gauge(name, (Gauge<Long>) () -> stats.getOrDefault(name, 0L));
        }
    }

    /** Reads the store's statistics for the metric gauges (on the task thread). */
    private void refreshStats() {
        for (String line : FlowstateNative.stats(handle()).split("\n")) {
            int eq = line.indexOf('=');
            if (eq > 0) {
                stats.put(line.substring(0, eq), Long.parseLong(line.substring(eq + 1)));
            }
        }
    }

    long handle() {
        if (handle == 0) {
            throw new FlowstateException("the flowstate backend is disposed");
        }
        return handle;
    }

    String stateName(int id) {
        return stateNames.getOrDefault(id, "#" + id);
    }

    // ---------------------------------------------------------------------------------------
    // Keys

    @Override
    public void setCurrentKey(K newKey) {
        super.setCurrentKey(newKey);
        keyChanged = true;
        keyEpoch++;
    }

    @Override
    public void setCurrentKeyAndKeyGroup(K newKey, int keyGroupIndex) {
        super.setCurrentKeyAndKeyGroup(newKey, keyGroupIndex);
        keyChanged = true;
        keyEpoch++;
    }

    @Override
    public void setCurrentKeyGroupIndex(int currentKeyGroupIndex) {
        super.setCurrentKeyGroupIndex(currentKeyGroupIndex);
        keyEpoch++;
    }

    long keyEpoch() {
        return keyEpoch;
    }

    /** The composite key of the current key, {@code namespace} and {@code userKey[..len]}. */
    byte[] compositeKey(byte[] namespace, byte[] userKey, int userKeyLen) {
        if (keyChanged) {
            try {
                keyOut.clear();
                keySerializer.serialize(getCurrentKey(), keyOut);
                currentKeyBytes = keyOut.getCopyOfBuffer();
            } catch (IOException e) {
                throw new FlowstateException("cannot serialize key " + getCurrentKey(), e);
            }
            keyChanged = false;
        }
        return Bytes.compositeKey(getCurrentKeyGroupIndex(), currentKeyBytes, namespace, userKey, userKeyLen);
    }

    // ---------------------------------------------------------------------------------------
    // States

    @Override
    @SuppressWarnings("unchecked")
    public <N, SV, SEV, S extends State, IS extends S> IS createOrUpdateInternalState(
            TypeSerializer<N> namespaceSerializer,
            StateDescriptor<S, SV> stateDesc,
            StateSnapshotTransformFactory<SEV> snapshotTransformFactory)
            throws Exception {
        String name = stateDesc.getName();
        TypeSerializer<SV> stateSerializer = stateDesc.getSerializer();
        Registered registered = states.get(name);
        if (registered == null) {
            int kind = kindOf(stateDesc.getType());
            registered = new Registered(FlowstateNative.register(handle(), name, kind, compactionTtlMs(stateDesc)));
            StateMetaInfoSnapshot restored = restoredMetaInfos.remove(name);
            if (restored != null) {
                registered.metaInfo = checkRestored(restored, stateDesc, namespaceSerializer, stateSerializer);
            } else {
                registered.metaInfo = new RegisteredKeyValueStateBackendMetaInfo<>(
                        stateDesc.getType(), name, namespaceSerializer, stateSerializer);
            }
            states.put(name, registered);
            stateNames.put(registered.id, name);
        } else {
            registered.metaInfo = checkReRegistration(registered.metaInfo, stateDesc, namespaceSerializer, stateSerializer);
        }
        if (registered.state == null) {
            registered.state = newState(registered.id, namespaceSerializer, stateDesc);
        } else {
            ((AbstractFlowstateState<K, N, SV>) registered.state).updateSerializers(namespaceSerializer, stateSerializer);
        }
        return (IS) registered.state;
    }

    /**
     * The TTL flowstate's compaction filter applies: Flink's, when its cleanup in compaction is on
     * (the default; {@code cleanupInRocksdbCompactFilter}); -1 for none.
     */
    private static long compactionTtlMs(StateDescriptor<?, ?> desc) {
        StateTtlConfig ttl = desc.getTtlConfig();
        if (ttl == null || !ttl.isEnabled() || !ttl.getCleanupStrategies().inRocksdbCompactFilter()) {
            return -1;
        }
        return ttl.getTimeToLive().toMillis();
    }

    /**
     * The TTL a state of a canonical savepoint is registered with before the job names its own:
     * whether its values carry TTL timestamps is known from its serializer, not the duration,
     * which the job's registration then sets.
     */
    private static final long UNKNOWN_TTL_MS = 100L * 365 * 24 * 3600 * 1000;

    private static int kindOf(StateDescriptor.Type type) {
        switch (type) {
            case VALUE:
                return FlowstateNative.VALUE;
            case LIST:
                return FlowstateNative.LIST;
            case MAP:
                return FlowstateNative.MAP;
            case REDUCING:
                return FlowstateNative.REDUCING;
            case AGGREGATING:
                return FlowstateNative.AGGREGATING;
            default:
                throw new UnsupportedOperationException("flowstate does not support " + type + " state");
        }
    }

    @SuppressWarnings({"unchecked", "rawtypes"})
    private <N, SV> AbstractFlowstateState<K, N, ?> newState(
            int id, TypeSerializer<N> namespaceSerializer, StateDescriptor<?, SV> desc) {
        switch (desc.getType()) {
            case VALUE:
                return new FlowstateValueState<>(this, id, namespaceSerializer, desc.getSerializer(),
                        ((ValueStateDescriptor<SV>) desc).getDefaultValue());
            case LIST:
                return new FlowstateListState(this, id, namespaceSerializer, ((ListStateDescriptor) desc).getSerializer());
            case MAP:
                return new FlowstateMapState(this, id, namespaceSerializer, ((MapStateDescriptor) desc).getSerializer());
            case REDUCING:
                return new FlowstateReducingState<>(this, id, namespaceSerializer, desc.getSerializer(),
                        ((ReducingStateDescriptor<SV>) desc).getReduceFunction());
            case AGGREGATING:
                AggregatingStateDescriptor agg = (AggregatingStateDescriptor) desc;
                return new FlowstateAggregatingState(this, id, namespaceSerializer, agg.getSerializer(),
                        agg.getAggregateFunction());
            default:
                throw new UnsupportedOperationException("flowstate does not support " + desc.getType() + " state");
        }
    }

    /** Checks a restored state against its new descriptor; returns the meta info to keep. */
    @SuppressWarnings("unchecked")
    private <N, SV> RegisteredKeyValueStateBackendMetaInfo<N, SV> checkRestored(
            StateMetaInfoSnapshot restored,
            StateDescriptor<?, SV> desc,
            TypeSerializer<N> namespaceSerializer,
            TypeSerializer<SV> stateSerializer)
            throws StateMigrationException {
        RegisteredKeyValueStateBackendMetaInfo<N, SV> meta =
                (RegisteredKeyValueStateBackendMetaInfo<N, SV>) RegisteredKeyValueStateBackendMetaInfo.fromMetaInfoSnapshot(restored);
        return checkReRegistration(meta, desc, namespaceSerializer, stateSerializer);
    }

    @SuppressWarnings("unchecked")
    private <N, SV> RegisteredKeyValueStateBackendMetaInfo<N, SV> checkReRegistration(
            RegisteredKeyValueStateBackendMetaInfo<?, ?> existing,
            StateDescriptor<?, SV> desc,
            TypeSerializer<N> namespaceSerializer,
            TypeSerializer<SV> stateSerializer)
            throws StateMigrationException {
        RegisteredKeyValueStateBackendMetaInfo<N, SV> meta = (RegisteredKeyValueStateBackendMetaInfo<N, SV>) existing;
        if (meta.getStateType() != desc.getType()) {
            throw new StateMigrationException("State " + desc.getName() + " was registered as " + meta.getStateType()
                    + " and is now requested as " + desc.getType() + ".");
        }
        TypeSerializerSchemaCompatibility<N> ns = meta.updateNamespaceSerializer(namespaceSerializer);
        if (ns.isIncompatible() || ns.isCompatibleAfterMigration()) {
            throw new StateMigrationException("The new namespace serializer of state " + desc.getName()
                    + " (" + namespaceSerializer + ") must not be incompatible with the old one.");
        }
        TypeSerializerSchemaCompatibility<SV> value = meta.updateStateSerializer(stateSerializer);
        if (value.isIncompatible()) {
            throw new StateMigrationException("The new state serializer of state " + desc.getName()
                    + " (" + stateSerializer + ") must not be incompatible with the old state serializer ("
                    + meta.getPreviousStateSerializer() + ").");
        }
        if (value.isCompatibleAfterMigration()) {
            throw new StateMigrationException("The new state serializer of state " + desc.getName()
                    + " (" + stateSerializer + ") needs a migration of the stored state, which flowstate does not do.");
        }
        return meta;
    }

    @Override
    public int numKeyValueStatesByName() {
        return states.size();
    }

    @Override
    public int numKeyValueStateEntries() {
        int count = 0;
        for (Registered r : states.values()) {
            Iterator<byte[][]> it = scan(r.id, new byte[0]);
            while (it.hasNext()) {
                it.next();
                count++;
            }
        }
        return count;
    }

    /** Every entry of state {@code id} under {@code prefix}, as {key, value}, in key order. */
    private Iterator<byte[][]> scan(int id, byte[] prefix) {
        return new Iterator<>() {
            private byte[] chunk = new byte[0];
            private Bytes.Reader reader = new Bytes.Reader(chunk, 0, 0);
            private byte[] after;
            private boolean done;

            @Override
            public boolean hasNext() {
                if (reader.hasMore()) {
                    return true;
                }
                if (done) {
                    return false;
                }
                chunk = FlowstateNative.scan(handle(), id, prefix, after, SCAN_CHUNK, 1 << 20);
                reader = new Bytes.Reader(chunk, 0, chunk.length);
                done = chunk.length == 0;
                return reader.hasMore();
            }

            @Override
            public byte[][] next() {
                if (!hasNext()) {
                    throw new NoSuchElementException();
                }
                int klen = reader.u32();
                int kstart = reader.skip(klen);
                int vlen = reader.u32();
                int vstart = reader.skip(vlen);
                byte[] key = Arrays.copyOfRange(chunk, kstart, kstart + klen);
                after = key;
                return new byte[][] {key, Arrays.copyOfRange(chunk, vstart, vstart + vlen)};
            }
        };
    }

    @Override
    public <N> Stream<K> getKeys(String state, N namespace) {
        return getKeys(List.of(state), namespace);
    }

    @Override
    @SuppressWarnings("unchecked")
    public <N> Stream<K> getKeys(List<String> stateNames, N namespace) {
        List<Iterator<K>> parts = new ArrayList<>();
        for (String name : stateNames) {
            Registered r = states.get(name);
            if (r == null) {
                continue;
            }
            TypeSerializer<N> nsSerializer = (TypeSerializer<N>) r.metaInfo.getNamespaceSerializer();
            byte[] ns = serialize(nsSerializer, namespace);
            Iterator<byte[][]> entries = scan(r.id, new byte[0]);
            parts.add(new KeyIterator<>(entries, ns, (key, nsBytes) -> deserializeKey(key)));
        }
        Stream<K> keys = Stream.empty();
        for (Iterator<K> part : parts) {
            keys = Stream.concat(keys, StreamSupport.stream(
                    Spliterators.spliteratorUnknownSize(part, Spliterator.ORDERED), false));
        }
        return stateNames.size() > 1 ? keys.distinct() : keys;
    }

    @Override
    @SuppressWarnings("unchecked")
    public <N> Stream<Tuple2<K, N>> getKeysAndNamespaces(String state) {
        Registered r = states.get(state);
        if (r == null) {
            return Stream.empty();
        }
        TypeSerializer<N> nsSerializer = (TypeSerializer<N>) r.metaInfo.getNamespaceSerializer();
        Iterator<Tuple2<K, N>> it = new KeyIterator<>(scan(r.id, new byte[0]), null,
                (key, ns) -> Tuple2.of(deserializeKey(key), deserialize(nsSerializer, ns)));
        return StreamSupport.stream(Spliterators.spliteratorUnknownSize(it, Spliterator.ORDERED), false);
    }

    /** Maps (key bytes, namespace bytes) to what a key iterator yields. */
    private interface KeyMapper<T> {
        T map(byte[] key, byte[] namespace);
    }

    /**
     * The distinct (key, namespace) pairs of a state's entries (consecutive in key order), only
     * those in namespace {@code onlyNamespace} when it is not null.
     */
    private static final class KeyIterator<T> implements Iterator<T> {
        private final Iterator<byte[][]> entries;
        private final byte[] onlyNamespace;
        private final KeyMapper<T> mapper;
        private final Bytes.KeyParts parts = new Bytes.KeyParts();
        private byte[] lastPrefix;
        private T next;

        KeyIterator(Iterator<byte[][]> entries, byte[] onlyNamespace, KeyMapper<T> mapper) {
            this.entries = entries;
            this.onlyNamespace = onlyNamespace;
            this.mapper = mapper;
        }

        @Override
        public boolean hasNext() {
            while (next == null && entries.hasNext()) {
                byte[] composite = entries.next()[0];
                Bytes.parse(composite, parts);
                byte[] prefix = Arrays.copyOf(composite, parts.userKeyStart);
                if (Arrays.equals(prefix, lastPrefix)) {
                    continue;
                }
                lastPrefix = prefix;
                byte[] ns = Arrays.copyOfRange(composite, parts.nsStart, parts.nsStart + parts.nsLen);
                if (onlyNamespace != null && !Arrays.equals(ns, onlyNamespace)) {
                    continue;
                }
                byte[] key = Arrays.copyOfRange(composite, parts.keyStart, parts.keyStart + parts.keyLen);
                next = mapper.map(key, ns);
            }
            return next != null;
        }

        @Override
        public T next() {
            if (!hasNext()) {
                throw new NoSuchElementException();
            }
            T result = next;
            next = null;
            return result;
        }
    }

    private K deserializeKey(byte[] key) {
        return deserialize(keySerializer, key);
    }

    private static <T> byte[] serialize(TypeSerializer<T> serializer, T value) {
        try {
            DataOutputSerializer out = new DataOutputSerializer(32);
            serializer.serialize(value, out);
            return out.getCopyOfBuffer();
        } catch (IOException e) {
            throw new FlowstateException("cannot serialize " + value, e);
        }
    }

    private static <T> T deserialize(TypeSerializer<T> serializer, byte[] bytes) {
        try {
            return serializer.deserialize(new DataInputDeserializer(bytes));
        } catch (IOException e) {
            throw new FlowstateException("cannot deserialize a stored key or namespace", e);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Timers

    @Override
    public <T extends HeapPriorityQueueElement & PriorityComparable<? super T> & Keyed<?>>
            KeyGroupedInternalPriorityQueue<T> create(String stateName, TypeSerializer<T> byteOrderedElementSerializer) {
        @SuppressWarnings("unchecked")
        KeyGroupedInternalPriorityQueue<T> restored = (KeyGroupedInternalPriorityQueue<T>) (Object) restoredQueues.get(stateName);
        if (restored != null) {
            return restored;
        }
        return priorityQueueFactory.create(stateName, byteOrderedElementSerializer);
    }

    /** Timers are heap queues that Flink writes into raw keyed state with every snapshot. */
    @Override
    public boolean requiresLegacySynchronousTimerSnapshots(SnapshotType checkpointType) {
        return true;
    }

    // ---------------------------------------------------------------------------------------
    // Snapshots

    @Override
    public RunnableFuture<SnapshotResult<KeyedStateHandle>> snapshot(
            long checkpointId, long timestamp, CheckpointStreamFactory streamFactory, CheckpointOptions options)
            throws Exception {
        List<StateMetaInfoSnapshot> metaInfos = new ArrayList<>();
        for (Registered r : states.values()) {
            metaInfos.add(r.metaInfo.snapshot());
        }
        // Restored states not registered again yet still hold data: keep their meta infos.
        metaInfos.addAll(restoredMetaInfos.values());
        // Flink says which files may be shared: none for a savepoint (self-contained), only with
        // later checkpoints for the first checkpoint after a no-claim restore, both ways otherwise.
        SnapshotType.SharingFilesStrategy sharing = options.getCheckpointType().getSharingFilesStrategy();
        boolean savepoint = sharing == SnapshotType.SharingFilesStrategy.NO_SHARING;
        Map<String, StreamStateHandle> reusable =
                sharing == SnapshotType.SharingFilesStrategy.FORWARD_BACKWARD ? new HashMap<>(uploaded) : Map.of();
        // The synchronous part: a freeze only. Metrics are refreshed when a checkpoint completes,
        // not here (reading the store's statistics may wait for a background job's lock).
        AtomicLong task = new AtomicLong(FlowstateNative.snapshot(handle(), checkpointId));
        return new FutureTask<>(() -> {
            long pending = task.getAndSet(0);
            if (pending == 0) {
                throw new IllegalStateException("snapshot " + checkpointId + " was cancelled");
            }
            String listing = FlowstateNative.runSnapshot(pending);
            return SnapshotResult.of(upload(checkpointId, listing, metaInfos, reusable, streamFactory, savepoint));
        }) {
            @Override
            public boolean cancel(boolean mayInterruptIfRunning) {
                boolean cancelled = super.cancel(mayInterruptIfRunning);
                long pending = task.getAndSet(0);
                if (pending != 0) {
                    FlowstateNative.dropSnapshot(pending);
                }
                return cancelled;
            }
        };
    }

    private KeyedStateHandle upload(
            long checkpointId,
            String listing,
            List<StateMetaInfoSnapshot> metaInfos,
            Map<String, StreamStateHandle> reusable,
            CheckpointStreamFactory streamFactory,
            boolean savepoint)
            throws IOException {
        String[] lines = listing.split("\n");
        Path root = Path.of(lines[0].substring(lines[0].indexOf('\t') + 1));
        List<HandleAndLocalPath> shared = new ArrayList<>();
        List<HandleAndLocalPath> privateFiles = new ArrayList<>();
        Map<String, StreamStateHandle> newlyUploaded = new HashMap<>();
        long uploadedBytes = 0;
        for (int i = 1; i < lines.length; i++) {
            String[] f = lines[i].split("\t", 3);
            boolean isShared = f[0].equals("s") && !savepoint;
            long size = Long.parseLong(f[1]);
            String path = f[2];
            StreamStateHandle previous = isShared ? reusable.get(path) : null;
            if (previous != null) {
                shared.add(HandleAndLocalPath.of(
                        new PlaceholderStreamStateHandle(previous.getStreamStateHandleID(), previous.getStateSize(), false),
                        path));
                continue;
            }
            StreamStateHandle h = uploadFile(root.resolve(path), isShared ? CheckpointedStateScope.SHARED
                    : CheckpointedStateScope.EXCLUSIVE, streamFactory);
            uploadedBytes += size;
            if (isShared) {
                shared.add(HandleAndLocalPath.of(h, path));
                newlyUploaded.put(path, h);
            } else {
                privateFiles.add(HandleAndLocalPath.of(h, path));
            }
        }
        StreamStateHandle meta;
        try (CheckpointStateOutputStream out = streamFactory.createCheckpointStateOutputStream(CheckpointedStateScope.EXCLUSIVE)) {
            new KeyedBackendSerializationProxy<>(keySerializer, metaInfos, false).write(new DataOutputViewStreamWrapper(out));
            meta = out.closeAndGetHandle();
        }
        uploadedBytes += meta.getStateSize();
        if (!savepoint) {
            pendingUploads.put(checkpointId, newlyUploaded);
        }
        return new IncrementalRemoteKeyedStateHandle(
                backendUid, keyGroupRange, checkpointId, shared, privateFiles, meta, uploadedBytes);
    }

    private static StreamStateHandle uploadFile(Path file, CheckpointedStateScope scope, CheckpointStreamFactory factory)
            throws IOException {
        try (CheckpointStateOutputStream out = factory.createCheckpointStateOutputStream(scope);
                InputStream in = Files.newInputStream(file)) {
            in.transferTo(out);
            return out.closeAndGetHandle();
        }
    }

    @Override
    public void notifyCheckpointComplete(long checkpointId) {
        Iterator<Map.Entry<Long, Map<String, StreamStateHandle>>> it = pendingUploads.entrySet().iterator();
        while (it.hasNext()) {
            Map.Entry<Long, Map<String, StreamStateHandle>> e = it.next();
            if (e.getKey() <= checkpointId) {
                if (e.getKey() == checkpointId) {
                    uploaded.putAll(e.getValue());
                }
                it.remove();
            }
        }
        FlowstateNative.notifyCheckpointComplete(handle(), checkpointId);
        refreshStats();
    }

    @Override
    public void notifyCheckpointAborted(long checkpointId) {
        pendingUploads.remove(checkpointId);
    }

    /**
     * A canonical savepoint: Flink's backend-independent format, written synchronously on the task
     * thread from a consistent view of the store (timers travel in raw keyed state).
     */
    @Override
    public SavepointResources<K> savepoint() {
        List<FlowstateSavepoint.StateToWrite> toWrite = new ArrayList<>();
        List<String> names = new ArrayList<>(states.keySet());
        names.sort(Comparator.naturalOrder());
        for (String name : names) {
            Registered r = states.get(name);
            toWrite.add(stateToWrite(r.metaInfo.snapshot(), r.id));
        }
        for (StateMetaInfoSnapshot restored : restoredMetaInfos.values()) {
            StateDescriptor.Type type = typeOf(restored);
            RegisteredKeyValueStateBackendMetaInfo<?, ?> info = new RegisteredKeyValueStateBackendMetaInfo<>(restored);
            long ttl = CanonicalFormat.hasTtlValues(type, info.getStateSerializer()) ? UNKNOWN_TTL_MS : -1;
            toWrite.add(stateToWrite(restored, FlowstateNative.register(handle(), restored.getName(), kindOf(type), ttl)));
        }
        return new SavepointResources<>(
                new FlowstateSavepoint<>(toWrite, id -> scan(id, new byte[0]), keyGroupRange, keySerializer),
                SnapshotExecutionType.SYNCHRONOUS);
    }

    private FlowstateSavepoint.StateToWrite stateToWrite(StateMetaInfoSnapshot snapshot, int id) {
        RegisteredKeyValueStateBackendMetaInfo<?, ?> info = new RegisteredKeyValueStateBackendMetaInfo<>(snapshot);
        CanonicalFormat format = new CanonicalFormat(numberOfKeyGroups, info.getStateType(), keySerializer,
                info.getNamespaceSerializer(), info.getStateSerializer());
        return new FlowstateSavepoint.StateToWrite(snapshot, id, format);
    }

    private static StateDescriptor.Type typeOf(StateMetaInfoSnapshot snapshot) {
        return StateDescriptor.Type.valueOf(snapshot.getOption(StateMetaInfoSnapshot.CommonOptionsKeys.KEYED_STATE_TYPE));
    }

    // ---------------------------------------------------------------------------------------
    // Restore

    /**
     * Downloads every handle's files ({@code transferThreads} at once) and restores them, clipped
     * to this backend's key groups.
     */
    void restore(List<KeyedStateHandle> handles, CloseableRegistry registry, int transferThreads) throws Exception {
        List<String> roots = new ArrayList<>();
        List<KeyedStateHandle> canonical = new ArrayList<>();
        List<Callable<Void>> downloads = new ArrayList<>();
        int n = 0;
        for (KeyedStateHandle h : handles) {
            if (h == null) {
                continue;
            }
            if (h instanceof KeyGroupsStateHandle) {
                canonical.add(h);
                continue;
            }
            if (!(h instanceof IncrementalRemoteKeyedStateHandle)) {
                throw new FlinkRuntimeException("flowstate cannot restore a " + h.getClass().getSimpleName() + ": " + h);
            }
            IncrementalRemoteKeyedStateHandle handle = (IncrementalRemoteKeyedStateHandle) h;
            Path dir = workingDir.resolve("restore-" + n++);
            for (HandleAndLocalPath f : handle.getSharedState()) {
                downloads.add(() -> download(f, dir, registry));
            }
            for (HandleAndLocalPath f : handle.getPrivateState()) {
                downloads.add(() -> download(f, dir, registry));
            }
            readMetaInfos(handle.getMetaDataStateHandle(), registry);
            roots.add(dir.toString());
        }
        runAll(downloads, transferThreads);
        if (!roots.isEmpty()) {
            FlowstateNative.restore(handle(), roots.toArray(new String[0]),
                    keyGroupRange.getStartKeyGroup(), keyGroupRange.getEndKeyGroup());
            for (String root : roots) {
                deleteRecursively(Path.of(root));
            }
        }
        if (!canonical.isEmpty()) {
            restoreCanonical(canonical);
        }
    }

    /** What the entries of one state of a canonical savepoint go into. */
    private static final class RestoreTarget {
        final int id;
        final CanonicalFormat format;
        final KeyGroupedInternalPriorityQueue<Object> queue;
        final TypeSerializer<Object> elementSerializer;

        RestoreTarget(int id, CanonicalFormat format, KeyGroupedInternalPriorityQueue<Object> queue,
                TypeSerializer<Object> elementSerializer) {
            this.id = id;
            this.format = format;
            this.queue = queue;
            this.elementSerializer = elementSerializer;
        }
    }

    /** Restores canonical savepoints (of any backend) through Flink's own reader. */
    @SuppressWarnings({"unchecked", "rawtypes"})
    private void restoreCanonical(List<KeyedStateHandle> handles) throws Exception {
        FullSnapshotRestoreOperation<K> operation = new FullSnapshotRestoreOperation<>(
                keyGroupRange, userCodeClassLoader, handles, StateSerializerProvider.fromNewRegisteredSerializer(keySerializer));
        int prefixBytes = CompositeKeySerializationUtils.computeRequiredBytesInKeyGroupPrefix(numberOfKeyGroups);
        DataInputDeserializer in = new DataInputDeserializer();
        try (ThrowingIterator<SavepointRestoreResult> results = operation.restore()) {
            while (results.hasNext()) {
                SavepointRestoreResult result = results.next();
                List<StateMetaInfoSnapshot> metas = result.getStateMetaInfoSnapshots();
                RestoreTarget[] targets = new RestoreTarget[metas.size()];
                for (int i = 0; i < metas.size(); i++) {
                    StateMetaInfoSnapshot meta = metas.get(i);
                    switch (meta.getBackendStateType()) {
                        case KEY_VALUE: {
                            RegisteredKeyValueStateBackendMetaInfo<?, ?> info = new RegisteredKeyValueStateBackendMetaInfo<>(meta);
                            long ttl = CanonicalFormat.hasTtlValues(info.getStateType(), info.getPreviousStateSerializer())
                                    ? UNKNOWN_TTL_MS : -1;
                            int id = FlowstateNative.register(handle(), meta.getName(), kindOf(info.getStateType()), ttl);
                            restoredMetaInfos.putIfAbsent(meta.getName(), meta);
                            targets[i] = new RestoreTarget(id, new CanonicalFormat(numberOfKeyGroups, info.getStateType(),
                                    keySerializer, info.getPreviousNamespaceSerializer(), info.getPreviousStateSerializer()),
                                    null, null);
                            break;
                        }
                        case PRIORITY_QUEUE: {
                            RegisteredPriorityQueueStateBackendMetaInfo info = new RegisteredPriorityQueueStateBackendMetaInfo(meta);
                            TypeSerializer elementSerializer = info.getPreviousElementSerializer();
                            KeyGroupedInternalPriorityQueue queue = restoredQueues.computeIfAbsent(meta.getName(),
                                    name -> (KeyGroupedInternalPriorityQueue) priorityQueueFactory.create(name, elementSerializer));
                            targets[i] = new RestoreTarget(-1, null, queue, elementSerializer);
                            break;
                        }
                        default:
                            throw new FlinkRuntimeException("a savepoint holds state " + meta.getName() + " of type "
                                    + meta.getBackendStateType() + ", which a keyed backend does not restore");
                    }
                }
                try (ThrowingIterator<KeyGroup> groups = result.getRestoredKeyGroups()) {
                    while (groups.hasNext()) {
                        try (ThrowingIterator<KeyGroupEntry> entries = groups.next().getKeyGroupEntries()) {
                            while (entries.hasNext()) {
                                KeyGroupEntry entry = entries.next();
                                RestoreTarget target = targets[entry.getKvStateId()];
                                if (target.queue != null) {
                                    in.setBuffer(entry.getKey());
                                    CompositeKeySerializationUtils.readKeyGroup(prefixBytes, in);
                                    target.queue.add(target.elementSerializer.deserialize(in));
                                } else {
                                    FlowstateNative.put(handle(), target.id, target.format.compositeKey(entry.getKey()),
                                            target.format.value(entry.getValue()));
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /** Runs every job on up to {@code threads} threads; the first failure cancels the rest. */
    private static void runAll(List<Callable<Void>> jobs, int threads) throws Exception {
        if (jobs.isEmpty()) {
            return;
        }
        ExecutorService pool = Executors.newFixedThreadPool(Math.max(1, Math.min(threads, jobs.size())), r -> {
            Thread t = new Thread(r, "flowstate-restore-transfer");
            t.setDaemon(true);
            return t;
        });
        try {
            List<Future<Void>> futures = new ArrayList<>();
            for (Callable<Void> job : jobs) {
                futures.add(pool.submit(job));
            }
            for (Future<Void> f : futures) {
                try {
                    f.get();
                } catch (ExecutionException e) {
                    futures.forEach(other -> other.cancel(true));
                    Throwable cause = e.getCause();
                    throw cause instanceof Exception ? (Exception) cause : new FlinkRuntimeException(cause);
                }
            }
        } finally {
            pool.shutdownNow();
        }
    }

    /**
     * Brings one checkpoint file to its local path under {@code dir}: a hard link when the file is
     * on the local file system (checkpoint files are immutable, and a link outlives the deletion
     * of the checkpoint's name), a copy otherwise. The native restore checks every file's size and
     * checksums either way.
     */
    private static Void download(HandleAndLocalPath file, Path dir, CloseableRegistry registry) throws IOException {
        String local = file.getLocalPath();
        Path target = dir.resolve(local).normalize();
        if (!target.startsWith(dir) || local.isEmpty()) {
            throw new FlinkRuntimeException("a flowstate checkpoint lists a file outside its directory: " + local);
        }
        Files.createDirectories(target.getParent());
        if (file.getHandle() instanceof FileStateHandle) {
            org.apache.flink.core.fs.Path remote = ((FileStateHandle) file.getHandle()).getFilePath();
            if ("file".equals(remote.toUri().getScheme()) && !remote.getFileSystem().isDistributedFS()) {
                try {
                    Files.createLink(target, Path.of(remote.toUri()));
                    return null;
                } catch (IOException | UnsupportedOperationException e) {
                    // Another file system, or no hard links there: copy.
                    Files.deleteIfExists(target);
                }
            }
        }
        try (FSDataInputStream in = file.getHandle().openInputStream();
                OutputStream out = Files.newOutputStream(target)) {
            registry.registerCloseable(in);
            byte[] buffer = new byte[TRANSFER_BUFFER];
            for (int read; (read = in.read(buffer)) >= 0; ) {
                out.write(buffer, 0, read);
            }
            registry.unregisterCloseable(in);
        }
        return null;
    }

    private void readMetaInfos(StreamStateHandle meta, CloseableRegistry registry) throws Exception {
        try (FSDataInputStream in = meta.openInputStream()) {
            registry.registerCloseable(in);
            KeyedBackendSerializationProxy<K> proxy = new KeyedBackendSerializationProxy<>(userCodeClassLoader);
            proxy.read(new DataInputViewStreamWrapper(in));
            registry.unregisterCloseable(in);
            TypeSerializerSchemaCompatibility<K> keyCompat =
                    proxy.getKeySerializerSnapshot().resolveSchemaCompatibility(keySerializer.snapshotConfiguration());
            if (keyCompat.isCompatibleAfterMigration() || keyCompat.isIncompatible()) {
                throw new StateMigrationException("The new key serializer (" + keySerializer
                        + ") must be compatible with the previous key serializer.");
            }
            for (StateMetaInfoSnapshot s : proxy.getStateMetaInfoSnapshots()) {
                restoredMetaInfos.putIfAbsent(s.getName(), s);
            }
        }
    }

    private static void deleteRecursively(Path dir) throws IOException {
        if (!Files.exists(dir)) {
            return;
        }
        try (Stream<Path> paths = Files.walk(dir)) {
            for (Path p : paths.sorted(Comparator.reverseOrder()).toArray(Path[]::new)) {
                Files.deleteIfExists(p);
            }
        } catch (UncheckedIOException e) {
            // The walk met a file removed meanwhile.
            throw e.getCause();
        }
    }

    // ---------------------------------------------------------------------------------------
    // Life cycle

    @Override
    public String getBackendTypeIdentifier() {
        return BACKEND_TYPE;
    }

    @Override
    public void dispose() {
        if (disposed) {
            return;
        }
        disposed = true;
        super.dispose();
        long h = handle;
        handle = 0;
        if (h != 0) {
            FlowstateNative.close(h);
        }
        states.clear();
        removeWorkingDirectory();
    }

    /**
     * Removes the working directory. The asynchronous part of a checkpoint still in flight when
     * a task fails may write into it meanwhile, which fails a pass: a few passes are tried, then
     * what is left stays (logged). A failure here must not fail the task manager, which runs
     * this from its task-failure handler.
     */
    private void removeWorkingDirectory() {
        IOException last = null;
        for (int attempt = 0; attempt < 5; attempt++) {
            try {
                deleteRecursively(workingDir);
                return;
            } catch (IOException e) {
                last = e;
            }
            try {
                Thread.sleep(20L << attempt);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            }
        }
        LOG.warn("cannot remove flowstate's working directory {}; leaving it", workingDir, last);
    }

    /** The working directory (store, staging, downloads). */
    File workingDirectory() {
        return workingDir.toFile();
    }
}
