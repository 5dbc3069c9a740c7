package io.flowstate.flink.jobs;

import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.CheckpointListener;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.connector.file.src.FileSource;
import org.apache.flink.connector.file.src.reader.TextLineInputFormat;
import org.apache.flink.core.fs.Path;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;

/**
 * {@code key,value[,...]} lines → keyBy(key) → running count and sum per key in two value states →
 * {@code key,count,sum} per event → exactly-once file sink.
 *
 * <p>Options (see {@link JobOptions}): {@code --backend hashmap|rocksdb|forst|flowstate --input
 * FILE --output DIR --checkpoint-dir DIR [--parallelism 2] [--max-parallelism 128]
 * [--checkpoint-interval-ms 1000] [--fail-once-after N] [--fail-marker FILE] [--restore PATH]
 * [--retain] [--stop-with-savepoint-after N DIR] [--throttle-us US]}.
 */
public final class ReferenceJob {
  static final String USAGE =
      "usage: ReferenceJob --backend hashmap|rocksdb|forst|flowstate --input FILE --output DIR"
          + " --checkpoint-dir DIR [--parallelism P] [--max-parallelism M]"
          + " [--checkpoint-interval-ms MS] [--fail-once-after N] [--fail-marker FILE]"
          + " [--restore PATH] [--retain] [--stop-with-savepoint-after N DIR] [--throttle-us US]";

  public static void main(String[] args) {
    JobOptions.main("ReferenceJob", () -> run(JobOptions.parse(args, USAGE)));
  }

  static void run(JobOptions o) throws Exception {
    StreamExecutionEnvironment env = o.environment();
    FileSource<String> source =
        FileSource.forRecordStreamFormat(new TextLineInputFormat(), new Path(JobOptions.uri(o.input)))
            .build();
    DataStream<Tuple2<String, Long>> events =
        // One file is one split: a single source subtask, as others would have nothing to read
        // and finish early, and a savepoint that meets a finishing subtask fails the job.
        env.fromSource(source, WatermarkStrategy.noWatermarks(), "lines")
            .uid("lines")
            .setParallelism(1)
            .map(new JobOptions.Throttle<String>(o.throttleMicros))
            .name("throttle")
            .uid("throttle")
            .setParallelism(1)
            .map(ReferenceJob::parse)
            .returns(Types.TUPLE(Types.STRING, Types.LONG))
            .name("parse")
            .uid("parse")
            .setParallelism(1);
    DataStream<String> totals =
        events
            .keyBy(e -> e.f0, Types.STRING)
            .process(new CountAndSum(o.failOnceAfter, o.failMarker))
            .name("count-and-sum")
            .uid("count-and-sum");
    o.sinkTo(totals);
    o.run(env, "ReferenceJob");
  }

  static Tuple2<String, Long> parse(String line) {
    int a = line.indexOf(',');
    if (a < 0) {
      throw new IllegalArgumentException("not a key,value line: " + line);
    }
    int b = line.indexOf(',', a + 1);
    String value = b < 0 ? line.substring(a + 1) : line.substring(a + 1, b);
    return Tuple2.of(line.substring(0, a), Long.parseLong(value.trim()));
  }

  /** Two value states per key: the number of events and the sum of their values. */
  static final class CountAndSum extends KeyedProcessFunction<String, Tuple2<String, Long>, String>
      implements CheckpointListener {
    private final long failOnceAfter;
    private final String failMarker;
    private transient ValueState<Long> count;
    private transient ValueState<Long> sum;
    private transient long seen;
    private transient boolean checkpointed;

    CountAndSum(long failOnceAfter, String failMarker) {
      this.failOnceAfter = failOnceAfter;
      this.failMarker = failMarker;
    }

    @Override
    public void open(OpenContext openContext) {
      count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Types.LONG));
      sum = getRuntimeContext().getState(new ValueStateDescriptor<>("sum", Types.LONG));
      seen = 0;
      checkpointed = false;
    }

    @Override
    public void processElement(Tuple2<String, Long> e, Context ctx, Collector<String> out)
        throws Exception {
      seen++;
      // The injected failure waits for a completed checkpoint so that the restart restores state.
      if (failOnceAfter >= 0
          && seen > failOnceAfter
          && checkpointed
          && getRuntimeContext().getTaskInfo().getIndexOfThisSubtask() == 0
          && JobOptions.failurePending(failMarker)) {
        JobOptions.markFailed(failMarker);
        System.err.println("ReferenceJob: injected failure after " + seen + " records");
        throw new RuntimeException("injected failure after " + seen + " records (--fail-once-after)");
      }
      Long c = count.value();
      Long s = sum.value();
      long nc = (c == null ? 0 : c) + 1;
      long ns = (s == null ? 0 : s) + e.f1;
      count.update(nc);
      sum.update(ns);
      out.collect(e.f0 + "," + nc + "," + ns);
    }

    @Override
    public void notifyCheckpointComplete(long checkpointId) {
      checkpointed = true;
    }
  }
}
