package io.flowstate.flink;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.Iterator;
import java.util.List;
import java.util.PriorityQueue;
import java.util.function.Function;

import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.runtime.state.FullSnapshotResources;
import org.apache.flink.runtime.state.KeyGroupRange;
import org.apache.flink.runtime.state.KeyValueStateIterator;
import org.apache.flink.runtime.state.StreamCompressionDecorator;
import org.apache.flink.runtime.state.UncompressedStreamCompressionDecorator;
import org.apache.flink.runtime.state.metainfo.StateMetaInfoSnapshot;

/**
 * The contents of a flowstate backend for Flink's canonical savepoint writer: the states' meta
 * infos and an iterator over every entry in the order the writer needs (key group, then state,
 * then key), converted to the canonical layout ({@link CanonicalFormat}). Runs synchronously on
 * the task thread, so it reads a consistent store.
 */
final class FlowstateSavepoint<K> implements FullSnapshotResources<K> {
    /** One state to write: its meta info, native id and entry conversion. */
    static final class StateToWrite {
        final StateMetaInfoSnapshot metaInfo;
        final int id;
        final CanonicalFormat format;

        StateToWrite(StateMetaInfoSnapshot metaInfo, int id, CanonicalFormat format) {
            this.metaInfo = metaInfo;
            this.id = id;
            this.format = format;
        }
    }

    private final List<StateToWrite> states;
    private final Function<Integer, Iterator<byte[][]>> scan;
    private final KeyGroupRange keyGroupRange;
    private final TypeSerializer<K> keySerializer;

    FlowstateSavepoint(
            List<StateToWrite> states,
            Function<Integer, Iterator<byte[][]>> scan,
            KeyGroupRange keyGroupRange,
            TypeSerializer<K> keySerializer) {
        this.states = states;
        this.scan = scan;
        this.keyGroupRange = keyGroupRange;
        this.keySerializer = keySerializer;
    }

    @Override
    public List<StateMetaInfoSnapshot> getMetaInfoSnapshots() {
        List<StateMetaInfoSnapshot> out = new ArrayList<>();
        for (StateToWrite s : states) {
            out.add(s.metaInfo);
        }
        return out;
    }

    @Override
    public KeyValueStateIterator createKVStateIterator() throws IOException {
        return new MergeIterator();
    }

    @Override
    public KeyGroupRange getKeyGroupRange() {
        return keyGroupRange;
    }

    @Override
    public TypeSerializer<K> getKeySerializer() {
        return keySerializer;
    }

    @Override
    public StreamCompressionDecorator getStreamCompressionDecorator() {
        return UncompressedStreamCompressionDecorator.INSTANCE;
    }

    @Override
    public void release() {}

    /** The head of one state's scan. */
    private static final class Head {
        final int stateIndex;
        final Iterator<byte[][]> entries;
        byte[][] entry;
        int keyGroup;

        Head(int stateIndex, Iterator<byte[][]> entries) {
            this.stateIndex = stateIndex;
            this.entries = entries;
        }

        boolean advance() {
            if (!entries.hasNext()) {
                return false;
            }
            entry = entries.next();
            keyGroup = ((entry[0][0] & 0xFF) << 8) | (entry[0][1] & 0xFF);
            return true;
        }
    }

    /** Merges the states' scans by (key group, state index); each scan is in key order. */
    private final class MergeIterator implements KeyValueStateIterator {
        private final PriorityQueue<Head> heads = new PriorityQueue<>(
                Comparator.<Head>comparingInt(h -> h.keyGroup).thenComparingInt(h -> h.stateIndex));
        private Head current;
        private int keyGroup = -1;
        private int stateIndex = -1;
        private boolean newKeyGroup;
        private boolean newState;
        private byte[] key;
        private byte[] value;

        MergeIterator() throws IOException {
            for (int i = 0; i < states.size(); i++) {
                Head h = new Head(i, scan.apply(states.get(i).id));
                if (h.advance()) {
                    heads.add(h);
                }
            }
            next();
        }

        @Override
        public void next() throws IOException {
            if (current != null && current.advance()) {
                heads.add(current);
            }
            current = heads.poll();
            if (current == null) {
                key = null;
                return;
            }
            newKeyGroup = current.keyGroup != keyGroup;
            newState = newKeyGroup || current.stateIndex != stateIndex;
            keyGroup = current.keyGroup;
            stateIndex = current.stateIndex;
            CanonicalFormat format = states.get(stateIndex).format;
            key = format.canonicalKey(current.entry[0]);
            value = format.canonicalValue(current.entry[1]);
        }

        @Override
        public int keyGroup() {
            return keyGroup;
        }

        @Override
        public byte[] key() {
            return key;
        }

        @Override
        public byte[] value() {
            return value;
        }

        @Override
        public int kvStateId() {
            return stateIndex;
        }

        @Override
        public boolean isNewKeyValueState() {
            return newState;
        }

        @Override
        public boolean isNewKeyGroup() {
            return newKeyGroup;
        }

        @Override
        public boolean isValid() {
            return key != null;
        }

        @Override
        public void close() {}
    }
}
