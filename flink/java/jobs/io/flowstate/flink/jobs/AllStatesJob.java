package io.flowstate.flink.jobs;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.AggregateFunction;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.ReduceFunction;
import org.apache.flink.api.common.state.AggregatingState;
import org.apache.flink.api.common.state.AggregatingStateDescriptor;
import org.apache.flink.api.common.state.CheckpointListener;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ReducingState;
import org.apache.flink.api.common.state.ReducingStateDescriptor;
import org.apache.flink.api.common.state.StateTtlConfig;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.api.java.tuple.Tuple4;
import org.apache.flink.connector.file.src.FileSource;
import org.apache.flink.connector.file.src.reader.TextLineInputFormat;
import org.apache.flink.core.fs.Path;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.datastream.KeyedStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.windowing.ProcessWindowFunction;
import org.apache.flink.streaming.api.windowing.assigners.EventTimeSessionWindows;
import org.apache.flink.streaming.api.windowing.assigners.SlidingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.assigners.TumblingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.windows.TimeWindow;
import org.apache.flink.util.Collector;

/**
 * Event-time job over {@code key,value,timestamp} lines (see {@link GenerateInput}) that uses
 * every kind of keyed state, with and without namespaces:
 *
 * <ul>
 *   <li>tumbling windows with {@code reduce} (reducing state in the window namespace),
 *   <li>sliding windows with {@code aggregate} (aggregating state, overlapping namespaces),
 *   <li>tumbling windows with {@code process} (list state, per-window and global state of the
 *       {@link ProcessWindowFunction}),
 *   <li>session windows with {@code reduce} (merging namespaces),
 *   <li>a {@link KeyedProcessFunction} with list, map, reducing and aggregating state, a value
 *       state and a map state with TTL (a TTL far longer than the test, so nothing expires but
 *       Flink's TTL wrappers are used), and event-time timers (registered, deleted and fired).
 * </ul>
 *
 * <p>Every output line is deterministic: timestamps are out of order by less than the watermark
 * bound, so no event is late whenever the watermarks are emitted, and per-element outputs depend
 * only on the (fixed) order of a key's events. Options as {@link ReferenceJob}, without
 * {@code --stop-with-savepoint-after} being of much use.
 */
public final class AllStatesJob {
  /** The watermarks' bound on out-of-orderness; {@link GenerateInput} stays below it. */
  static final long OUT_OF_ORDERNESS_MS = 1000;

  /** Width of the buckets the process function's timers close. */
  static final long BUCKET_MS = 5000;

  static final String USAGE = ReferenceJob.USAGE.replace("ReferenceJob", "AllStatesJob");

  public static void main(String[] args) {
    JobOptions.main("AllStatesJob", () -> run(JobOptions.parse(args, USAGE)));
  }

  static void run(JobOptions o) throws Exception {
    StreamExecutionEnvironment env = o.environment();
    FileSource<String> source =
        FileSource.forRecordStreamFormat(new TextLineInputFormat(), new Path(JobOptions.uri(o.input)))
            .build();
    WatermarkStrategy<String> watermarks =
        WatermarkStrategy.<String>forBoundedOutOfOrderness(Duration.ofMillis(OUT_OF_ORDERNESS_MS))
            .withTimestampAssigner((line, previous) -> parse(line).f2);
    TypeInformation<Tuple3<String, Long, Long>> eventType =
        Types.TUPLE(Types.STRING, Types.LONG, Types.LONG);
    DataStream<Tuple3<String, Long, Long>> events =
        // One file is one split: a single source subtask, as others would have nothing to read
        // and finish early, and a savepoint that meets a finishing subtask fails the job.
        env.fromSource(source, watermarks, "lines")
            .uid("lines")
            .setParallelism(1)
            .map(new JobOptions.Throttle<String>(o.throttleMicros))
            .name("throttle")
            .uid("throttle")
            .setParallelism(1)
            .map(AllStatesJob::parse)
            .returns(eventType)
            .name("parse")
            .uid("parse")
            .setParallelism(1);
    KeyedStream<Tuple3<String, Long, Long>, String> keyed = events.keyBy(e -> e.f0, Types.STRING);

    DataStream<String> tumbleReduce =
        keyed
            .window(TumblingEventTimeWindows.of(Duration.ofSeconds(10)))
            .reduce(new SumValues(), new EmitWindow("tumble-reduce"))
            .name("tumble-reduce")
            .uid("tumble-reduce");
    DataStream<String> slideAggregate =
        keyed
            .window(SlidingEventTimeWindows.of(Duration.ofSeconds(30), Duration.ofSeconds(10)))
            .aggregate(new CountSumMinMax(), new EmitAggregate())
            .name("slide-aggregate")
            .uid("slide-aggregate");
    DataStream<String> tumbleProcess =
        keyed
            .window(TumblingEventTimeWindows.of(Duration.ofSeconds(20)))
            .process(new ListWindow())
            .name("tumble-process")
            .uid("tumble-process");
    DataStream<String> sessionReduce =
        keyed
            .window(EventTimeSessionWindows.withGap(Duration.ofSeconds(3)))
            .reduce(new SumValues(), new EmitWindow("session-reduce"))
            .name("session-reduce")
            .uid("session-reduce");
    DataStream<String> allStates =
        keyed
            .process(new EveryState(o.failOnceAfter, o.failMarker))
            .name("every-state")
            .uid("every-state");

    o.sinkTo(tumbleReduce.union(slideAggregate, tumbleProcess, sessionReduce, allStates));
    o.run(env, "AllStatesJob");
  }

  static Tuple3<String, Long, Long> parse(String line) {
    String[] f = line.split(",");
    if (f.length < 3) {
      throw new IllegalArgumentException("not a key,value,timestamp line: " + line);
    }
    return Tuple3.of(f[0], Long.parseLong(f[1].trim()), Long.parseLong(f[2].trim()));
  }

  static final class SumValues implements ReduceFunction<Tuple3<String, Long, Long>> {
    @Override
    public Tuple3<String, Long, Long> reduce(
        Tuple3<String, Long, Long> a, Tuple3<String, Long, Long> b) {
      // The timestamp field keeps the smaller one: a deterministic result for any order.
      return Tuple3.of(a.f0, a.f1 + b.f1, Math.min(a.f2, b.f2));
    }
  }

  static final class EmitWindow
      extends ProcessWindowFunction<Tuple3<String, Long, Long>, String, String, TimeWindow> {
    private final String tag;

    EmitWindow(String tag) {
      this.tag = tag;
    }

    @Override
    public void process(
        String key,
        Context ctx,
        Iterable<Tuple3<String, Long, Long>> reduced,
        Collector<String> out) {
      for (Tuple3<String, Long, Long> r : reduced) {
        TimeWindow w = ctx.window();
        out.collect(
            tag + "," + key + "," + w.getStart() + "," + w.getEnd() + "," + r.f1 + "," + r.f2);
      }
    }
  }

  /** count, sum, min, max of the values. */
  static final class CountSumMinMax
      implements AggregateFunction<
          Tuple3<String, Long, Long>, Tuple4<Long, Long, Long, Long>, Tuple4<Long, Long, Long, Long>> {
    @Override
    public Tuple4<Long, Long, Long, Long> createAccumulator() {
      return Tuple4.of(0L, 0L, Long.MAX_VALUE, Long.MIN_VALUE);
    }

    @Override
    public Tuple4<Long, Long, Long, Long> add(
        Tuple3<String, Long, Long> e, Tuple4<Long, Long, Long, Long> acc) {
      return Tuple4.of(acc.f0 + 1, acc.f1 + e.f1, Math.min(acc.f2, e.f1), Math.max(acc.f3, e.f1));
    }

    @Override
    public Tuple4<Long, Long, Long, Long> getResult(Tuple4<Long, Long, Long, Long> acc) {
      return acc;
    }

    @Override
    public Tuple4<Long, Long, Long, Long> merge(
        Tuple4<Long, Long, Long, Long> a, Tuple4<Long, Long, Long, Long> b) {
      return Tuple4.of(a.f0 + b.f0, a.f1 + b.f1, Math.min(a.f2, b.f2), Math.max(a.f3, b.f3));
    }
  }

  static final class EmitAggregate
      extends ProcessWindowFunction<Tuple4<Long, Long, Long, Long>, String, String, TimeWindow> {
    @Override
    public void process(
        String key,
        Context ctx,
        Iterable<Tuple4<Long, Long, Long, Long>> results,
        Collector<String> out) {
      for (Tuple4<Long, Long, Long, Long> r : results) {
        TimeWindow w = ctx.window();
        out.collect(
            "slide-aggregate," + key + "," + w.getStart() + "," + w.getEnd() + "," + r.f0 + ","
                + r.f1 + "," + r.f2 + "," + r.f3);
      }
    }
  }

  /**
   * A full-list window: the sorted values of the window, the number of windows of the key fired
   * so far (global state) and a per-window counter (window state, cleared with the window).
   */
  static final class ListWindow
      extends ProcessWindowFunction<Tuple3<String, Long, Long>, String, String, TimeWindow> {
    private static final ValueStateDescriptor<Long> FIRED =
        new ValueStateDescriptor<>("windows-fired", Types.LONG);
    private static final ValueStateDescriptor<Long> FIRINGS =
        new ValueStateDescriptor<>("firings-of-window", Types.LONG);

    @Override
    public void process(
        String key,
        Context ctx,
        Iterable<Tuple3<String, Long, Long>> elements,
        Collector<String> out)
        throws Exception {
      List<Long> values = new ArrayList<>();
      for (Tuple3<String, Long, Long> e : elements) {
        values.add(e.f1);
      }
      Collections.sort(values);
      ValueState<Long> fired = ctx.globalState().getState(FIRED);
      long windows = (fired.value() == null ? 0 : fired.value()) + 1;
      fired.update(windows);
      ValueState<Long> firings = ctx.windowState().getState(FIRINGS);
      long times = (firings.value() == null ? 0 : firings.value()) + 1;
      firings.update(times);
      TimeWindow w = ctx.window();
      out.collect(
          "tumble-process," + key + "," + w.getStart() + "," + w.getEnd() + "," + windows + ","
              + times + "," + values.size() + "," + digest(values));
    }

    @Override
    public void clear(Context ctx) {
      ctx.windowState().getState(FIRINGS).clear();
    }
  }

  static String digest(List<Long> values) {
    if (values.size() <= 8) {
      return values.toString().replace(", ", " ");
    }
    long h = 1125899906842597L;
    for (long v : values) {
      h = 31 * h + v;
    }
    return "h" + Long.toHexString(h);
  }

  /**
   * Per element: the running maximum (reducing state), the running mean (aggregating state) and
   * the count of events (value state with TTL). Elements are also kept in a list state and summed
   * per {@link #BUCKET_MS} bucket in a map state with TTL; an event-time timer at the end of each
   * bucket emits the bucket's elements and sum and drops them.
   */
  static final class EveryState
      extends KeyedProcessFunction<String, Tuple3<String, Long, Long>, String>
      implements CheckpointListener {
    private final long failOnceAfter;
    private final String failMarker;
    private transient ListState<Tuple2<Long, Long>> elements;
    private transient MapState<Long, Long> bucketSums;
    private transient ReducingState<Long> max;
    private transient AggregatingState<Long, String> mean;
    private transient ValueState<Long> count;
    private transient long seen;
    private transient boolean checkpointed;

    EveryState(long failOnceAfter, String failMarker) {
      this.failOnceAfter = failOnceAfter;
      this.failMarker = failMarker;
    }

    @Override
    public void open(OpenContext openContext) {
      StateTtlConfig ttl =
          StateTtlConfig.newBuilder(Duration.ofDays(7))
              .setUpdateType(StateTtlConfig.UpdateType.OnCreateAndWrite)
              .setStateVisibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
              .build();
      elements =
          getRuntimeContext()
              .getListState(
                  new ListStateDescriptor<>("elements", Types.TUPLE(Types.LONG, Types.LONG)));
      MapStateDescriptor<Long, Long> sums =
          new MapStateDescriptor<>("bucket-sums", Types.LONG, Types.LONG);
      sums.enableTimeToLive(ttl);
      bucketSums = getRuntimeContext().getMapState(sums);
      max =
          getRuntimeContext()
              .getReducingState(new ReducingStateDescriptor<>("max", Math::max, Types.LONG));
      mean =
          getRuntimeContext()
              .getAggregatingState(
                  new AggregatingStateDescriptor<>(
                      "mean", new Mean(), Types.TUPLE(Types.LONG, Types.LONG)));
      ValueStateDescriptor<Long> countDescriptor = new ValueStateDescriptor<>("count", Types.LONG);
      countDescriptor.enableTimeToLive(ttl);
      count = getRuntimeContext().getState(countDescriptor);
      seen = 0;
      checkpointed = false;
    }

    @Override
    public void processElement(Tuple3<String, Long, Long> e, Context ctx, Collector<String> out)
        throws Exception {
      seen++;
      if (failOnceAfter >= 0
          && seen > failOnceAfter
          && checkpointed
          && getRuntimeContext().getTaskInfo().getIndexOfThisSubtask() == 0
          && JobOptions.failurePending(failMarker)) {
        JobOptions.markFailed(failMarker);
        System.err.println("AllStatesJob: injected failure after " + seen + " records");
        throw new RuntimeException("injected failure after " + seen + " records (--fail-once-after)");
      }
      long ts = ctx.timestamp();
      long bucketEnd = (Math.floorDiv(ts, BUCKET_MS) + 1) * BUCKET_MS;
      elements.add(Tuple2.of(ts, e.f1));
      Long s = bucketSums.get(bucketEnd);
      bucketSums.put(bucketEnd, (s == null ? 0 : s) + e.f1);
      ctx.timerService().registerEventTimeTimer(bucketEnd - 1);
      // A timer that is deleted again: every deletion path runs, and it never fires.
      ctx.timerService().registerEventTimeTimer(bucketEnd + BUCKET_MS / 2);
      ctx.timerService().deleteEventTimeTimer(bucketEnd + BUCKET_MS / 2);
      max.add(e.f1);
      mean.add(e.f1);
      Long c = count.value();
      long n = (c == null ? 0 : c) + 1;
      count.update(n);
      out.collect("element," + e.f0 + "," + n + "," + max.get() + "," + mean.get());
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<String> out)
        throws Exception {
      long bucketEnd = timestamp + 1;
      List<Long> closed = new ArrayList<>();
      List<Tuple2<Long, Long>> open = new ArrayList<>();
      for (Tuple2<Long, Long> e : elements.get()) {
        if (e.f0 < bucketEnd) {
          closed.add(e.f1);
        } else {
          open.add(e);
        }
      }
      Collections.sort(closed);
      if (open.isEmpty()) {
        elements.clear();
      } else {
        elements.update(open);
      }
      Long sum = bucketSums.get(bucketEnd);
      bucketSums.remove(bucketEnd);
      // Later buckets may already hold events (which ones depends on timing): not in the output,
      // but no earlier bucket may be left.
      for (Map.Entry<Long, Long> b : bucketSums.entries()) {
        if (b.getKey() <= bucketEnd) {
          throw new IllegalStateException("bucket " + b.getKey() + " outlived its timer");
        }
      }
      out.collect(
          "timer," + ctx.getCurrentKey() + "," + bucketEnd + "," + sum + "," + closed.size() + ","
              + digest(closed));
    }

    @Override
    public void notifyCheckpointComplete(long checkpointId) {
      checkpointed = true;
    }
  }

  /** Mean of the values as {@code sum/count} (integer division), accumulator (count, sum). */
  static final class Mean implements AggregateFunction<Long, Tuple2<Long, Long>, String> {
    @Override
    public Tuple2<Long, Long> createAccumulator() {
      return Tuple2.of(0L, 0L);
    }

    @Override
    public Tuple2<Long, Long> add(Long value, Tuple2<Long, Long> acc) {
      return Tuple2.of(acc.f0 + 1, acc.f1 + value);
    }

    @Override
    public String getResult(Tuple2<Long, Long> acc) {
      return acc.f0 == 0 ? "none" : Long.toString(acc.f1 / acc.f0);
    }

    @Override
    public Tuple2<Long, Long> merge(Tuple2<Long, Long> a, Tuple2<Long, Long> b) {
      return Tuple2.of(a.f0 + b.f0, a.f1 + b.f1);
    }
  }
}
