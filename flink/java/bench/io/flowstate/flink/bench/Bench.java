package io.flowstate.flink.bench;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.flink.api.common.JobID;
import org.apache.flink.api.common.JobStatus;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichFlatMapFunction;
import org.apache.flink.api.common.serialization.SimpleStringEncoder;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.file.sink.FileSink;
import org.apache.flink.connector.file.src.FileSource;
import org.apache.flink.connector.file.src.reader.TextLineInputFormat;
import org.apache.flink.core.fs.Path;
import org.apache.flink.runtime.checkpoint.AbstractCheckpointStats;
import org.apache.flink.runtime.checkpoint.CheckpointStatsSnapshot;
import org.apache.flink.runtime.checkpoint.CompletedCheckpointStats;
import org.apache.flink.runtime.checkpoint.SubtaskStateStats;
import org.apache.flink.runtime.checkpoint.TaskStateStats;
import org.apache.flink.runtime.executiongraph.ArchivedExecutionGraph;
import org.apache.flink.runtime.jobmaster.JobResult;
import org.apache.flink.runtime.minicluster.MiniCluster;
import org.apache.flink.runtime.minicluster.MiniClusterConfiguration;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.sink.filesystem.bucketassigners.BasePathBucketAssigner;
import org.apache.flink.streaming.api.functions.sink.filesystem.rollingpolicies.OnCheckpointRollingPolicy;
import org.apache.flink.streaming.api.graph.StreamGraph;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;
import org.apache.flink.util.Collector;

/**
 * The Flink benchmarks of BENCHMARKS.md, one backend per run, on a local MiniCluster:
 *
 * <ul>
 *   <li>{@code reference}: the reference job (file of {@code key,value} lines, count and sum per key
 *       in two value states, exactly-once file sink) with 1 s checkpoints;
 *   <li>{@code hot}: 100-byte values, {@code --load} updates over {@code --keys} keys, then updates
 *       of 1% of the keys until {@code --hot-checkpoints} checkpoints of the hot phase (triggered
 *       after the first checkpoint that follows the load) have completed, 5 s checkpoints; then a
 *       restore of its last checkpoint.
 * </ul>
 *
 * <p>Prints a {@code CHECKPOINT} line per completed checkpoint and one {@code RESULT key=value ...}
 * line: events/s (of the load phase for {@code hot}), checkpoints, mean and max incremental
 * checkpoint bytes, sync-phase mean / p99 / max over every subtask of the stateful operator, and
 * (hot) the restore time: submission to the stateful operator's {@code open} with the restore,
 * minus the same without state. {@code hot} adds a {@code RESULT_HOT} line: the hot phase's
 * events/s, its checkpoints' mean and max incremental bytes, and the bytes that changed between
 * two of them.
 */
public final class Bench {
    private static final AtomicLong PROCESSED = new AtomicLong();
    private static final AtomicInteger OPENED = new AtomicInteger();
    private static final AtomicLong OPENED_AT = new AtomicLong();

    public static void main(String[] args) throws Exception {
        Map<String, String> o = new HashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) {
            o.put(args[i].replaceFirst("^--", ""), args[i + 1]);
        }
        String job = o.getOrDefault("job", "reference");
        String backend = o.getOrDefault("backend", "flowstate");
        int parallelism = Integer.parseInt(o.getOrDefault("parallelism", "2"));
        String dir = new File(o.getOrDefault("dir", "/tmp/flowstate-bench")).getAbsolutePath();
        Configuration conf = configuration(backend, parallelism, dir,
                Long.parseLong(o.getOrDefault("checkpoint-interval-ms", job.equals("hot") ? "5000" : "1000")));
        MiniCluster cluster = new MiniCluster(new MiniClusterConfiguration.Builder()
                .setConfiguration(conf)
                .setNumTaskManagers(1)
                .setNumSlotsPerTaskManager(parallelism)
                .build());
        cluster.start();
        try {
            if (job.equals("reference")) {
                reference(cluster, conf, o.get("input"), dir, backend);
            } else {
                hot(cluster, conf, dir, backend, Long.parseLong(o.getOrDefault("keys", "1000000")),
                        Long.parseLong(o.getOrDefault("load", "5000000")),
                        Integer.parseInt(o.getOrDefault("hot-checkpoints", "6")));
            }
        } finally {
            cluster.closeAsync().get(1, TimeUnit.MINUTES);
        }
        System.exit(0);
    }

    static Configuration configuration(String backend, int parallelism, String dir, long intervalMs) {
        Map<String, String> c = new HashMap<>();
        switch (backend) {
            case "hashmap":
                c.put("state.backend.type", "hashmap");
                break;
            case "rocksdb":
            case "forst":
                c.put("state.backend.type", backend);
                c.put("execution.checkpointing.incremental", "true");
                break;
            case "flowstate":
                c.put("state.backend.type", "io.flowstate.flink.FlowstateStateBackendFactory");
                break;
            default:
                throw new IllegalArgumentException("unknown backend " + backend);
        }
        c.put("parallelism.default", Integer.toString(parallelism));
        c.put("execution.checkpointing.interval", intervalMs + " ms");
        c.put("execution.checkpointing.dir", new File(dir, "checkpoints").toURI().toString());
        c.put("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION");
        c.put("web.checkpoints.history", "10000");
        c.put("restart-strategy.type", "none");
        c.put("taskmanager.memory.managed.size", "512m");
        return Configuration.fromMap(c);
    }

    // ----------------------------------------------------------------------------------------

    static void reference(MiniCluster cluster, Configuration conf, String input, String dir, String backend)
            throws Exception {
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(conf);
        FileSource<String> source = FileSource.forRecordStreamFormat(new TextLineInputFormat(),
                new Path(new File(input).toURI().toString())).build();
        DataStream<String> out = env.fromSource(source, WatermarkStrategy.noWatermarks(), "lines")
                .map(line -> {
                    int a = line.indexOf(',');
                    int b = line.indexOf(',', a + 1);
                    return Tuple2.of(line.substring(0, a), Long.parseLong(b < 0 ? line.substring(a + 1) : line.substring(a + 1, b)));
                })
                .returns(Types.TUPLE(Types.STRING, Types.LONG))
                .keyBy(t -> t.f0, Types.STRING)
                .process(new CountAndSum())
                .name("count-and-sum");
        out.sinkTo(FileSink.forRowFormat(new Path(new File(dir, "output").toURI().toString()),
                        new SimpleStringEncoder<String>("UTF-8"))
                .withBucketAssigner(new BasePathBucketAssigner<>())
                .withRollingPolicy(OnCheckpointRollingPolicy.build())
                .build());
        StreamGraph graph = env.getStreamGraph();
        JobID id = cluster.submitJob(graph.getJobGraph()).get().getJobID();
        JobResult result = cluster.requestJobResult(id).get();
        if (!result.isSuccess()) {
            throw new IllegalStateException("job failed", result.getSerializedThrowable().get());
        }
        long events = PROCESSED.get();
        report("reference", backend, events, result.getNetRuntime(), stats(cluster, id, "count-and-sum", Long.MAX_VALUE), -1);
    }

    /** Count and sum per key, two value states, a line out per event. */
    static final class CountAndSum extends KeyedProcessFunction<String, Tuple2<String, Long>, String> {
        private transient ValueState<Long> count;
        private transient ValueState<Long> sum;

        @Override
        public void open(OpenContext ctx) {
            count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Types.LONG));
            sum = getRuntimeContext().getState(new ValueStateDescriptor<>("sum", Types.LONG));
        }

        @Override
        public void processElement(Tuple2<String, Long> e, Context ctx, Collector<String> out) throws Exception {
            Long c = count.value();
            Long s = sum.value();
            long nc = (c == null ? 0 : c) + 1;
            long ns = (s == null ? 0 : s) + e.f1;
            count.update(nc);
            sum.update(ns);
            PROCESSED.incrementAndGet();
            out.collect(e.f0 + "," + nc + "," + ns);
        }
    }

    // ----------------------------------------------------------------------------------------

    static void hot(MiniCluster cluster, Configuration conf, String dir, String backend, long keys, long load,
            int hotCheckpoints) throws Exception {
        long start = System.nanoTime();
        JobID id = cluster.submitJob(hotGraph(conf, keys, load, Long.MAX_VALUE, null).getJobGraph()).get().getJobID();
        while (PROCESSED.get() < load) {
            checkRunning(cluster, id);
            Thread.sleep(10);
        }
        long loadEnd = System.nanoTime();
        long loadEndWallMs = System.currentTimeMillis();
        long hotStartEvents = PROCESSED.get();
        // The first checkpoint triggered after the load still holds the load's last updates; the
        // ones triggered after it hold hot-phase updates only. The hot phase lasts until this many
        // of those have completed.
        long firstAfterLoad;
        while ((firstAfterLoad = firstTriggeredAfter(cluster, id, loadEndWallMs)) < 0) {
            checkRunning(cluster, id);
            Thread.sleep(50);
        }
        while (checkpointsTriggeredAfter(cluster, id, firstAfterLoad + 1) < hotCheckpoints) {
            checkRunning(cluster, id);
            Thread.sleep(50);
        }
        long hotEnd = System.nanoTime();
        long hotEvents = PROCESSED.get() - hotStartEvents;
        Stats stats = stats(cluster, id, "update", firstAfterLoad + 1);
        cluster.cancelJob(id).get();
        waitTerminal(cluster, id);
        String latest = latestCheckpointPath(cluster, id);

        long fresh = timeToOpen(cluster, hotGraph(conf, keys, 0, 0, null));
        long restored = timeToOpen(cluster, hotGraph(conf, keys, 0, 0, latest));
        long loadMs = (loadEnd - start) / 1_000_000;
        long hotMs = (hotEnd - loadEnd) / 1_000_000;
        // Every hot key changes within each 5 s interval (hundreds of updates per key): the bytes
        // changed between two hot-phase checkpoints are the hot keys' keys and values.
        long hotKeys = keys / 100;
        long changed = hotKeys * (8 + 100);
        report("hot", backend, load, loadMs, stats, restored - fresh);
        System.out.printf("RESULT_HOT backend=%s hot_events=%d hot_ms=%d hot_events_per_s=%d hot_checkpoints=%d"
                        + " changed_bytes_per_checkpoint=%d hot_mean_incremental_bytes=%d hot_max_incremental_bytes=%d%n",
                backend, hotEvents, hotMs, hotMs > 0 ? hotEvents * 1000 / hotMs : 0, stats.laterCheckpoints, changed,
                stats.laterMeanIncremental, stats.laterMaxIncremental);
    }

    /** The trigger time of the first checkpoint triggered at or after {@code wallMs}, or -1. */
    static long firstTriggeredAfter(MiniCluster cluster, JobID id, long wallMs) throws Exception {
        long first = -1;
        for (AbstractCheckpointStats c : snapshot(cluster, id).getHistory().getCheckpoints()) {
            long t = c.getTriggerTimestamp();
            if (t >= wallMs && (first < 0 || t < first)) {
                first = t;
            }
        }
        return first;
    }

    /** Completed checkpoints of a job triggered at or after {@code wallMs}. */
    static int checkpointsTriggeredAfter(MiniCluster cluster, JobID id, long wallMs) throws Exception {
        int n = 0;
        for (AbstractCheckpointStats c : snapshot(cluster, id).getHistory().getCheckpoints()) {
            if (c instanceof CompletedCheckpointStats && c.getTriggerTimestamp() >= wallMs) {
                n++;
            }
        }
        return n;
    }

    static StreamGraph hotGraph(Configuration conf, long keys, long load, long total, String restorePath) {
        Configuration c = new Configuration(conf);
        if (restorePath != null) {
            c.setString("execution.state-recovery.path", restorePath);
        }
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(c);
        env.fromSequence(0, Long.MAX_VALUE - 1)
                .flatMap(new Events(keys, load, total))
                .returns(new org.apache.flink.api.common.typeinfo.TypeHint<Tuple2<Long, byte[]>>() {})
                .keyBy(t -> t.f0, Types.LONG)
                .process(new Update())
                .name("update")
                .sinkTo(new DiscardingSink<>());
        return env.getStreamGraph();
    }

    /** The i-th event of a subtask: first every key in turn, then 1% of the keys, 100-byte values. */
    static final class Events extends RichFlatMapFunction<Long, Tuple2<Long, byte[]>> {
        private final long keys, load, total;
        private transient long n;
        private transient int subtask, parallelism;

        Events(long keys, long load, long total) {
            this.keys = keys;
            this.load = load;
            this.total = total;
        }

        @Override
        public void open(OpenContext ctx) {
            subtask = getRuntimeContext().getTaskInfo().getIndexOfThisSubtask();
            parallelism = getRuntimeContext().getTaskInfo().getNumberOfParallelSubtasks();
        }

        @Override
        public void flatMap(Long ignored, Collector<Tuple2<Long, byte[]>> out) {
            long i = n++ * parallelism + subtask;
            if (i >= total) {
                return;
            }
            long mixed = mix(i);
            long key = i < load ? i % keys : Math.floorMod(mixed, keys / 100) * 100;
            byte[] value = new byte[100];
            // Half random, half repeated: about 50% compressible.
            for (int b = 0; b < 50; b += 8) {
                long r = mix(mixed + b);
                for (int j = 0; j < 8 && b + j < 50; j++) {
                    value[b + j] = (byte) (r >>> (8 * j));
                }
            }
            byte[] tag = Long.toString(key).getBytes(StandardCharsets.US_ASCII);
            for (int b = 50; b < 100; b++) {
                value[b] = tag[b % tag.length];
            }
            out.collect(Tuple2.of(key, value));
        }

        static long mix(long z) {
            z = (z ^ (z >>> 30)) * 0xbf58476d1ce4e5b9L;
            z = (z ^ (z >>> 27)) * 0x94d049bb133111ebL;
            return z ^ (z >>> 31);
        }
    }

    static final class Update extends KeyedProcessFunction<Long, Tuple2<Long, byte[]>, Long> {
        private transient ValueState<byte[]> value;

        @Override
        public void open(OpenContext ctx) {
            value = getRuntimeContext().getState(new ValueStateDescriptor<>("value", byte[].class));
            if (OPENED.incrementAndGet() == getRuntimeContext().getTaskInfo().getNumberOfParallelSubtasks()) {
                OPENED_AT.set(System.nanoTime());
            }
        }

        @Override
        public void processElement(Tuple2<Long, byte[]> e, Context ctx, Collector<Long> out) throws Exception {
            value.update(e.f1);
            PROCESSED.incrementAndGet();
        }
    }

    /** Milliseconds from submission until every subtask of the stateful operator has opened. */
    static long timeToOpen(MiniCluster cluster, StreamGraph graph) throws Exception {
        OPENED.set(0);
        OPENED_AT.set(0);
        long start = System.nanoTime();
        JobID id = cluster.submitJob(graph.getJobGraph()).get().getJobID();
        while (OPENED_AT.get() == 0) {
            checkRunning(cluster, id);
            Thread.sleep(1);
        }
        long ms = (OPENED_AT.get() - start) / 1_000_000;
        cluster.cancelJob(id).get();
        waitTerminal(cluster, id);
        return ms;
    }

    // ----------------------------------------------------------------------------------------

    static void checkRunning(MiniCluster cluster, JobID id) throws Exception {
        JobStatus status = cluster.getJobStatus(id).get();
        if (status.isGloballyTerminalState()) {
            JobResult r = cluster.requestJobResult(id).get();
            throw new IllegalStateException("job ended " + status, r.getSerializedThrowable().orElse(null));
        }
    }

    static void waitTerminal(MiniCluster cluster, JobID id) throws Exception {
        while (!cluster.getJobStatus(id).get().isGloballyTerminalState()) {
            Thread.sleep(20);
        }
    }

    static long completedCount(MiniCluster cluster, JobID id) throws Exception {
        return snapshot(cluster, id).getCounts().getNumberOfCompletedCheckpoints();
    }

    static CheckpointStatsSnapshot snapshot(MiniCluster cluster, JobID id) throws Exception {
        return cluster.getExecutionGraph(id).get().getCheckpointStatsSnapshot();
    }

    static String latestCheckpointPath(MiniCluster cluster, JobID id) throws Exception {
        ArchivedExecutionGraph graph = cluster.getArchivedExecutionGraph(id).get();
        CompletedCheckpointStats latest = graph.getCheckpointStatsSnapshot().getHistory().getLatestCompletedCheckpoint();
        return latest.getExternalPath();
    }

    /** Checkpoint statistics of a job. */
    static final class Stats {
        int checkpoints, laterCheckpoints;
        long meanIncremental, maxIncremental, meanEndToEnd, laterMeanIncremental, laterMaxIncremental;
        long syncMean, syncP99, syncMax;
    }

    /**
     * Statistics of the completed checkpoints (not savepoints) of a job: bytes over all of them
     * and, separately, over those triggered at or after {@code laterThanMs}; synchronous-phase
     * durations of every subtask of the vertex whose name contains {@code vertex}.
     */
    static Stats stats(MiniCluster cluster, JobID id, String vertex, long laterThanMs) throws Exception {
        ArchivedExecutionGraph graph = cluster.getArchivedExecutionGraph(id).get();
        CheckpointStatsSnapshot snapshot = graph.getCheckpointStatsSnapshot();
        Stats s = new Stats();
        List<Long> syncs = new ArrayList<>();
        long incremental = 0, later = 0, endToEnd = 0;
        for (AbstractCheckpointStats c : snapshot.getHistory().getCheckpoints()) {
            if (!(c instanceof CompletedCheckpointStats) || c.getProperties().isSavepoint()) {
                continue;
            }
            s.checkpoints++;
            incremental += c.getCheckpointedSize();
            s.maxIncremental = Math.max(s.maxIncremental, c.getCheckpointedSize());
            if (c.getTriggerTimestamp() >= laterThanMs) {
                s.laterCheckpoints++;
                later += c.getCheckpointedSize();
                s.laterMaxIncremental = Math.max(s.laterMaxIncremental, c.getCheckpointedSize());
            }
            endToEnd += c.getEndToEndDuration();
            StringBuilder line = new StringBuilder("CHECKPOINT id=" + c.getCheckpointId() + " bytes="
                    + c.getCheckpointedSize() + " sync_ms=");
            for (TaskStateStats task : c.getAllTaskStateStats()) {
                if (!graph.getAllVertices().get(task.getJobVertexId()).getName().contains(vertex)) {
                    continue;
                }
                for (SubtaskStateStats sub : task.getSubtaskStats()) {
                    if (sub != null && sub.getSyncCheckpointDuration() >= 0) {
                        syncs.add(sub.getSyncCheckpointDuration());
                        line.append(sub.getSyncCheckpointDuration()).append(',');
                    }
                }
            }
            System.out.println(line);
        }
        if (s.checkpoints > 0) {
            s.meanIncremental = incremental / s.checkpoints;
            s.meanEndToEnd = endToEnd / s.checkpoints;
        }
        if (s.laterCheckpoints > 0) {
            s.laterMeanIncremental = later / s.laterCheckpoints;
        }
        if (!syncs.isEmpty()) {
            Collections.sort(syncs);
            long sum = 0;
            for (long v : syncs) {
                sum += v;
            }
            s.syncMean = sum / syncs.size();
            s.syncP99 = syncs.get(Math.min(syncs.size() - 1, (int) Math.ceil(syncs.size() * 0.99) - 1));
            s.syncMax = syncs.get(syncs.size() - 1);
        }
        return s;
    }

    static void report(String job, String backend, long events, long runMs, Stats s, long restoreMs) {
        System.out.printf(
                "RESULT job=%s backend=%s events=%d ms=%d events_per_s=%d checkpoints=%d mean_incremental_bytes=%d"
                        + " max_incremental_bytes=%d mean_end_to_end_ms=%d sync_mean_ms=%d"
                        + " sync_p99_ms=%d sync_max_ms=%d restore_ms=%d%n",
                job, backend, events, runMs, runMs > 0 ? events * 1000 / runMs : 0, s.checkpoints, s.meanIncremental,
                s.maxIncremental, s.meanEndToEnd, s.syncMean, s.syncP99, s.syncMax, restoreMs);
    }
}
