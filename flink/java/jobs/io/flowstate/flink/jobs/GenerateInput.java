package io.flowstate.flink.jobs;

import java.io.BufferedWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.SplittableRandom;

/**
 * Writes a deterministic input file of {@code key,value,timestamp} lines.
 *
 * <p>{@code --events E --keys K --seed S --output FILE [--step-ms 10] [--jitter-ms 500]}: event
 * {@code i} has a key drawn from {@code K} keys (a quarter of the events go to the first 1% of the
 * keys, so some keys are hot), a value in 0..999 and the timestamp {@code i * step + jitter} with a
 * jitter below {@code jitter-ms}, so timestamps are out of order by less than {@code jitter-ms}
 * (the jobs' watermarks allow {@link AllStatesJob#OUT_OF_ORDERNESS_MS}, so no event is ever
 * late and event-time results do not depend on when watermarks are emitted).
 */
public final class GenerateInput {
  public static void main(String[] args) {
    JobOptions.main("GenerateInput", () -> generate(args));
  }

  private static void generate(String[] args) throws Exception {
    long events = -1;
    int keys = -1;
    long seed = 1;
    long stepMs = 10;
    long jitterMs = 500;
    String output = null;
    for (int i = 0; i < args.length; i++) {
      String a = args[i];
      if (i + 1 >= args.length) {
        throw new IllegalArgumentException(a + " needs a value");
      }
      String v = args[++i];
      switch (a) {
        case "--events" -> events = Long.parseLong(v);
        case "--keys" -> keys = Integer.parseInt(v);
        case "--seed" -> seed = Long.parseLong(v);
        case "--step-ms" -> stepMs = Long.parseLong(v);
        case "--jitter-ms" -> jitterMs = Long.parseLong(v);
        case "--output" -> output = v;
        default -> throw new IllegalArgumentException("unknown option " + a);
      }
    }
    if (events < 0 || keys <= 0 || output == null) {
      throw new IllegalArgumentException(
          "usage: GenerateInput --events E --keys K [--seed S] [--step-ms 10] [--jitter-ms 500]"
              + " --output FILE");
    }
    if (jitterMs >= AllStatesJob.OUT_OF_ORDERNESS_MS) {
      throw new IllegalArgumentException(
          "--jitter-ms must stay below " + AllStatesJob.OUT_OF_ORDERNESS_MS);
    }
    SplittableRandom random = new SplittableRandom(seed);
    int hot = Math.max(1, keys / 100);
    Path path = Path.of(output);
    if (path.toAbsolutePath().getParent() != null) {
      Files.createDirectories(path.toAbsolutePath().getParent());
    }
    try (BufferedWriter w = Files.newBufferedWriter(path, StandardCharsets.UTF_8)) {
      StringBuilder line = new StringBuilder();
      for (long i = 0; i < events; i++) {
        int key = random.nextInt(4) == 0 ? random.nextInt(hot) : random.nextInt(keys);
        int value = random.nextInt(1000);
        long ts = i * stepMs + (jitterMs > 0 ? random.nextLong(jitterMs) : 0);
        line.setLength(0);
        line.append("key").append(key).append(',').append(value).append(',').append(ts).append('\n');
        w.write(line.toString());
      }
    }
    System.out.println("wrote " + events + " events over " + keys + " keys to " + output);
  }
}
