package io.flowstate.flink;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

/**
 * The JNI functions of the native library ({@code flink/native}). Handles are opaque {@code long}s:
 * a store from {@link #open}, freed by {@link #close}; a pending snapshot from {@link #snapshot},
 * consumed by {@link #runSnapshot} or {@link #dropSnapshot}. Every failure, a Rust panic included,
 * arrives as a {@link FlowstateException}.
 *
 * <p>The library is loaded once per class loader: from the path in the system property {@code
 * flowstate.native.library} when set, otherwise extracted from this jar ({@code
 * native/<os>-<arch>/libflowstate_flink.so}) into a temporary file.
 */
public final class FlowstateNative {
    private FlowstateNative() {}

    /** State kinds, flowstate's on-disk tags. */
    public static final int VALUE = 0, LIST = 1, MAP = 2, REDUCING = 3, AGGREGATING = 4;

    static {
        load();
    }

    private static void load() {
        String explicit = System.getProperty("flowstate.native.library");
        if (explicit != null) {
            System.load(explicit);
            return;
        }
        String os = System.getProperty("os.name").toLowerCase().startsWith("linux") ? "linux" : "unsupported";
        String arch = System.getProperty("os.arch");
        if (arch.equals("amd64")) {
            arch = "x86_64";
        }
        String resource = "/native/" + os + "-" + arch + "/libflowstate_flink.so";
        try (InputStream in = FlowstateNative.class.getResourceAsStream(resource)) {
            if (in == null) {
                throw new UnsatisfiedLinkError(
                        "flowstate-flink.jar has no native library for this platform: " + resource);
            }
            Path file = Files.createTempFile("libflowstate_flink", ".so");
            Files.copy(in, file, StandardCopyOption.REPLACE_EXISTING);
            file.toFile().deleteOnExit();
            System.load(file.toAbsolutePath().toString());
        } catch (IOException e) {
            throw new UnsatisfiedLinkError("cannot extract " + resource + ": " + e);
        }
    }

    /** Opens a store for key groups {@code first..=last} working under {@code dir}. */
    public static native long open(String dir, int maxParallelism, int first, int last, String options);

    /** Frees the store. */
    public static native void close(long handle);

    /**
     * Registers (or finds) a state; returns its id. With {@code ttlMs >= 0} its values are Flink
     * TTL values, which compaction drops once expired; negative for none.
     */
    public static native int register(long handle, String name, int kind, long ttlMs);

    /** The value under {@code key}, or null. */
    public static native byte[] get(long handle, int state, byte[] key);

    /** Stores {@code value} under {@code key}. */
    public static native void put(long handle, int state, byte[] key, byte[] value);

    /** Removes {@code key}. */
    public static native void delete(long handle, int state, byte[] key);

    /** Appends list element frames to the value under {@code key}. */
    public static native void merge(long handle, int state, byte[] key, byte[] operand);

    /** Removes every entry under {@code prefix}. */
    public static native void deletePrefix(long handle, int state, byte[] prefix);

    /**
     * Up to {@code maxEntries} entries under {@code prefix} after {@code after} (null: from the
     * start), packed as {@code int keyLen, key, int valueLen, value}; empty at the end.
     */
    public static native byte[] scan(long handle, int state, byte[] prefix, byte[] after, int maxEntries, int maxBytes);

    /** The synchronous part of a checkpoint; returns the pending asynchronous part. */
    public static native long snapshot(long handle, long checkpointId);

    /** Runs the asynchronous part; returns the staged files, one per line. */
    public static native String runSnapshot(long task);

    /** Abandons a pending snapshot. */
    public static native void dropSnapshot(long task);

    /** Checkpoint {@code checkpointId} completed. */
    public static native void notifyCheckpointComplete(long handle, long checkpointId);

    /** Replaces the contents with the downloaded checkpoints in {@code roots}, clipped to the range. */
    public static native void restore(long handle, String[] roots, int first, int last);

    /** Store statistics, {@code name=value} lines. */
    public static native String stats(long handle);
}
