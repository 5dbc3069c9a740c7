package io.flowstate.flink.checks;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicReference;
import java.util.stream.Stream;

import io.flowstate.flink.FlowstateNative;

/**
 * The native library on short-lived Java threads, as a task manager runs it: every round starts
 * threads that each open a store, write, read, checkpoint (the asynchronous part on yet another
 * new thread), close it and end, while other threads of the round are still starting or ending.
 * Its allocator keeps per-thread state, so threads that the library never saw before, and the
 * reuse of the memory of threads that ended, are what this exercises. A crash ends the JVM
 * (the caller sees its exit status); a wrong value prints {@code FAILED ThreadChurn}; else
 * {@code OK ThreadChurn}.
 */
public final class ThreadChurn {
    private static final int ROUNDS = 40;
    private static final int THREADS = 6;

    public static void main(String[] args) throws Exception {
        Path dir = Files.createTempDirectory("flowstate-thread-churn");
        AtomicReference<String> failure = new AtomicReference<>();
        for (int round = 0; round < ROUNDS && failure.get() == null; round++) {
            List<Thread> threads = new ArrayList<>();
            for (int t = 0; t < THREADS; t++) {
                Path work = dir.resolve("r" + round + "-t" + t);
                int seed = round * THREADS + t;
                Thread thread = new Thread(() -> {
                    try {
                        cycle(work, seed);
                    } catch (Throwable e) {
                        failure.compareAndSet(null, "thread " + seed + ": " + e);
                    }
                });
                thread.start();
                threads.add(thread);
            }
            for (Thread thread : threads) {
                thread.join();
            }
        }
        try (Stream<Path> paths = Files.walk(dir)) {
            paths.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        }
        if (failure.get() != null) {
            System.out.println("FAILED ThreadChurn: " + failure.get());
            System.exit(1);
        }
        System.out.println("OK ThreadChurn");
    }

    /** One store's life on the calling thread, its checkpoint's asynchronous part on another. */
    private static void cycle(Path work, int seed) throws Exception {
        long h = FlowstateNative.open(work.toString(), 128, 0, 127, "");
        try {
            int state = FlowstateNative.register(h, "v", FlowstateNative.VALUE, -1);
            for (int i = 0; i < 500; i++) {
                FlowstateNative.put(h, state, NativeErrors.key(i % 128, "k" + i), value(seed, i));
            }
            long task = FlowstateNative.snapshot(h, 1);
            AtomicReference<Throwable> asyncFailure = new AtomicReference<>();
            Thread async = new Thread(() -> {
                try {
                    FlowstateNative.runSnapshot(task);
                } catch (Throwable e) {
                    asyncFailure.set(e);
                }
            });
            async.start();
            for (int i = 0; i < 500; i += 7) {
                byte[] got = FlowstateNative.get(h, state, NativeErrors.key(i % 128, "k" + i));
                if (got == null || !new String(got, StandardCharsets.UTF_8).equals(new String(value(seed, i), StandardCharsets.UTF_8))) {
                    throw new IllegalStateException("key k" + i + " read back " + (got == null ? "nothing" : new String(got, StandardCharsets.UTF_8)));
                }
            }
            async.join();
            if (asyncFailure.get() != null) {
                throw new IllegalStateException("asynchronous snapshot part failed", asyncFailure.get());
            }
        } finally {
            FlowstateNative.close(h);
        }
    }

    private static byte[] value(int seed, int i) {
        return ("value-" + seed + "-" + i + "-" + "x".repeat(i % 90)).getBytes(StandardCharsets.UTF_8);
    }
}
