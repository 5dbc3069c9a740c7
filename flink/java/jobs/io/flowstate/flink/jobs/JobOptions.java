package io.flowstate.flink.jobs;

import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.api.common.JobStatus;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.serialization.SimpleStringEncoder;
import org.apache.flink.api.common.state.CheckpointListener;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.file.sink.FileSink;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.core.execution.SavepointFormatType;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.sink.filesystem.OutputFileConfig;
import org.apache.flink.streaming.api.functions.sink.filesystem.bucketassigners.BasePathBucketAssigner;
import org.apache.flink.streaming.api.functions.sink.filesystem.rollingpolicies.OnCheckpointRollingPolicy;

/**
 * Command-line options shared by the test jobs, the Flink configuration they imply, and the
 * pieces every job uses: a throttle after the source, an exactly-once file sink, and the way the
 * job is run (to the end, or stopped with a savepoint part way).
 */
final class JobOptions {
  /** Value of {@code state.backend.type} for {@code --backend flowstate}. */
  static final String FLOWSTATE_FACTORY = "io.flowstate.flink.FlowstateStateBackendFactory";

  /** Lines that reached the sink in this JVM (the local MiniCluster runs in-process). */
  static final AtomicLong SINK_LINES = new AtomicLong();

  /** Checkpoints completed since this JVM started the job, as subtask 0 before the sink saw. */
  static final AtomicLong CHECKPOINTS = new AtomicLong();

  String backend = "hashmap";
  String input;
  String output;
  String checkpointDir;
  int parallelism = 2;
  int maxParallelism = 128;
  long checkpointIntervalMs = 1000;
  long failOnceAfter = -1;
  String failMarker;
  String restore;
  boolean retain;
  long stopAfter = -1;
  String savepointDir;
  long throttleMicros;

  private final String usage;

  private JobOptions(String usage) {
    this.usage = usage;
  }

  /** Parses {@code args}; unknown options and missing values are errors. */
  static JobOptions parse(String[] args, String usage) {
    JobOptions o = new JobOptions(usage);
    for (int i = 0; i < args.length; i++) {
      String a = args[i];
      switch (a) {
        case "--backend" -> o.backend = o.value(args, ++i, a);
        case "--input" -> o.input = o.value(args, ++i, a);
        case "--output" -> o.output = o.value(args, ++i, a);
        case "--checkpoint-dir" -> o.checkpointDir = o.value(args, ++i, a);
        case "--parallelism" -> o.parallelism = Integer.parseInt(o.value(args, ++i, a));
        case "--max-parallelism" -> o.maxParallelism = Integer.parseInt(o.value(args, ++i, a));
        case "--checkpoint-interval-ms" ->
            o.checkpointIntervalMs = Long.parseLong(o.value(args, ++i, a));
        case "--fail-once-after" -> o.failOnceAfter = Long.parseLong(o.value(args, ++i, a));
        case "--fail-marker" -> o.failMarker = o.value(args, ++i, a);
        case "--restore" -> o.restore = o.value(args, ++i, a);
        case "--retain" -> o.retain = true;
        case "--stop-with-savepoint-after" -> {
          o.stopAfter = Long.parseLong(o.value(args, ++i, a));
          o.savepointDir = o.value(args, ++i, a);
        }
        case "--throttle-us" -> o.throttleMicros = Long.parseLong(o.value(args, ++i, a));
        default -> throw new IllegalArgumentException("unknown option " + a + "\n" + usage);
      }
    }
    if (o.input == null || o.output == null || o.checkpointDir == null) {
      throw new IllegalArgumentException(
          "--input, --output and --checkpoint-dir are required\n" + usage);
    }
    if (o.failMarker == null) {
      o.failMarker = new File(o.checkpointDir, "fail-once.marker").getPath();
    }
    return o;
  }

  private String value(String[] args, int i, String option) {
    if (i >= args.length) {
      throw new IllegalArgumentException(option + " needs a value\n" + usage);
    }
    return args[i];
  }

  /** {@code path} as a URI; one that already has a scheme ({@code file:/...}) stays as it is. */
  static String uri(String path) {
    if (path.matches("^[a-zA-Z][a-zA-Z0-9+.-]*:.*")) {
      return path;
    }
    return new File(path).getAbsoluteFile().toURI().toString();
  }

  /** The Flink configuration of the local MiniCluster and the job. */
  Configuration configuration() {
    Map<String, String> c = new HashMap<>();
    switch (backend) {
      case "hashmap" -> c.put("state.backend.type", "hashmap");
      case "rocksdb", "forst" -> {
        c.put("state.backend.type", backend);
        c.put("execution.checkpointing.incremental", "true");
      }
      case "flowstate" -> c.put("state.backend.type", FLOWSTATE_FACTORY);
      default ->
          throw new IllegalArgumentException(
              "--backend must be hashmap, rocksdb, forst or flowstate, not " + backend);
    }
    c.put("parallelism.default", Integer.toString(parallelism));
    c.put("pipeline.max-parallelism", Integer.toString(maxParallelism));
    c.put("execution.checkpointing.interval", checkpointIntervalMs + " ms");
    c.put("execution.checkpointing.mode", "EXACTLY_ONCE");
    c.put("execution.checkpointing.storage", "filesystem");
    c.put("execution.checkpointing.dir", uri(checkpointDir));
    c.put(
        "execution.checkpointing.externalized-checkpoint-retention",
        retain ? "RETAIN_ON_CANCELLATION" : "DELETE_ON_CANCELLATION");
    if (savepointDir != null) {
      c.put("execution.checkpointing.savepoint-dir", uri(savepointDir));
    }
    if (restore != null) {
      c.put("execution.state-recovery.path", uri(restore));
    }
    if (failOnceAfter >= 0) {
      c.put("restart-strategy.type", "fixed-delay");
      c.put("restart-strategy.fixed-delay.attempts", "3");
      c.put("restart-strategy.fixed-delay.delay", "500 ms");
    } else {
      c.put("restart-strategy.type", "none");
    }
    c.put("taskmanager.numberOfTaskSlots", Integer.toString(parallelism));
    c.put("rest.bind-port", "0");
    return Configuration.fromMap(c);
  }

  StreamExecutionEnvironment environment() {
    return StreamExecutionEnvironment.getExecutionEnvironment(configuration());
  }

  /** Exactly-once row-format sink: one flat directory, part files finished on checkpoints. */
  void sinkTo(DataStream<String> lines) {
    FileSink<String> sink =
        FileSink.forRowFormat(
                new org.apache.flink.core.fs.Path(uri(output)),
                new SimpleStringEncoder<String>("UTF-8"))
            .withBucketAssigner(new BasePathBucketAssigner<>())
            .withRollingPolicy(OnCheckpointRollingPolicy.build())
            .withOutputFileConfig(OutputFileConfig.builder().withPartPrefix("part").build())
            .build();
    lines.map(new CountLines()).name("count-lines").uid("count-lines").sinkTo(sink).name("file-sink")
        .uid("file-sink");
  }

  /**
   * Runs the job to the end, or with {@code --stop-with-savepoint-after} until the sink has seen
   * that many lines and then stops it with a canonical savepoint, printing {@code SAVEPOINT path}.
   */
  void run(StreamExecutionEnvironment env, String name) throws Exception {
    if (stopAfter < 0) {
      JobExecutionResult result = env.execute(name);
      System.out.println("FINISHED " + name + " in " + result.getNetRuntime() + " ms");
      return;
    }
    JobClient client = env.executeAsync(name);
    long deadline = System.nanoTime() + TimeUnit.MINUTES.toNanos(5);
    // After a completed checkpoint: every task is running then.
    while (SINK_LINES.get() < stopAfter || CHECKPOINTS.get() < 1) {
      JobStatus status = client.getJobStatus().get();
      if (status.isGloballyTerminalState()) {
        throw new IllegalStateException(
            "job reached "
                + status
                + " after "
                + SINK_LINES.get()
                + " lines, before the savepoint at "
                + stopAfter
                + " lines (slow it down with --throttle-us)");
      }
      if (System.nanoTime() > deadline) {
        throw new IllegalStateException(
            "sink saw only " + SINK_LINES.get() + " lines and " + CHECKPOINTS.get()
                + " checkpoints in 5 min");
      }
      Thread.sleep(20);
    }
    // A declined savepoint ("tasks not ready") leaves the job running: try again.
    String path = null;
    for (int attempt = 1; path == null; attempt++) {
      try {
        path =
            client
                .stopWithSavepoint(false, uri(savepointDir), SavepointFormatType.CANONICAL)
                .get(5, TimeUnit.MINUTES);
      } catch (ExecutionException e) {
        JobStatus status = client.getJobStatus().get();
        if (attempt >= 10 || status != JobStatus.RUNNING) {
          throw e;
        }
        System.err.println(
            "stop-with-savepoint attempt " + attempt + " failed (" + e.getCause() + "); again");
        Thread.sleep(200);
      }
    }
    System.out.println("SAVEPOINT " + path);
    System.out.println("stopped after " + SINK_LINES.get() + " lines at the sink");
  }

  /** Runs {@code body} as a program's main: a clear message and exit code 1 on any failure. */
  static void main(String name, ThrowingRunnable body) {
    try {
      body.run();
    } catch (Throwable t) {
      System.err.println("FAILED " + name + ": " + rootMessage(t));
      t.printStackTrace();
      System.exit(1);
    }
    System.exit(0);
  }

  private static String rootMessage(Throwable t) {
    List<String> messages = new ArrayList<>();
    for (Throwable c = t; c != null; c = c.getCause()) {
      messages.add(c.getClass().getSimpleName() + ": " + c.getMessage());
      if (c.getCause() == c) {
        break;
      }
    }
    return String.join(" <- ", messages);
  }

  interface ThrowingRunnable {
    void run() throws Exception;
  }

  /**
   * Whether the failure injected by {@code --fail-once-after} is still to come: the marker file
   * survives task restarts, so only the first attempt fails.
   */
  static boolean failurePending(String marker) {
    return !Files.exists(Path.of(marker));
  }

  /** Records the injected failure (before throwing it). */
  static void markFailed(String marker) throws IOException {
    Path p = Path.of(marker);
    Files.createDirectories(p.toAbsolutePath().getParent());
    Files.writeString(p, "failed once\n");
  }

  /** Passes records on at most one per {@code micros} per subtask (0: no limit). */
  static final class Throttle<T> extends RichMapFunction<T, T> {
    private final long micros;
    private transient long start;
    private transient long count;

    Throttle(long micros) {
      this.micros = micros;
    }

    @Override
    public void open(OpenContext openContext) {
      start = System.nanoTime();
      count = 0;
    }

    @Override
    public T map(T value) throws Exception {
      if (micros > 0) {
        count++;
        long ahead = count * micros * 1000 - (System.nanoTime() - start);
        if (ahead > 1_000_000) {
          Thread.sleep(ahead / 1_000_000, (int) (ahead % 1_000_000));
        }
      }
      return value;
    }
  }

  /** Counts the lines that reach the sink and the completed checkpoints. */
  static final class CountLines extends RichMapFunction<String, String>
      implements CheckpointListener {
    @Override
    public String map(String value) {
      SINK_LINES.incrementAndGet();
      return value;
    }

    @Override
    public void notifyCheckpointComplete(long checkpointId) {
      if (getRuntimeContext().getTaskInfo().getIndexOfThisSubtask() == 0) {
        CHECKPOINTS.incrementAndGet();
      }
    }
  }
}
