package io.flowstate.flink;

import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.configuration.MemorySize;
import org.apache.flink.configuration.ReadableConfig;

/** The {@code state.backend.flowstate.*} configuration keys and their defaults. */
public final class FlowstateOptions {
    private FlowstateOptions() {}

    /** Where each backend's working directory goes; default: the task manager's temp directories. */
    public static final ConfigOption<String> LOCAL_DIR = ConfigOptions.key("state.backend.flowstate.local-dir")
            .stringType()
            .noDefaultValue()
            .withDescription("Directory for flowstate's working stores; default the task manager's temp directories.");

    /** Memtable size before a flush. */
    public static final ConfigOption<MemorySize> WRITE_BUFFER_SIZE = ConfigOptions.key(
                    "state.backend.flowstate.write-buffer-size")
            .memoryType()
            .defaultValue(MemorySize.parse("64mb"))
            .withDescription("Memtable size before a flush to an L0 file.");

    /** Block cache capacity per backend. */
    public static final ConfigOption<MemorySize> BLOCK_CACHE_SIZE = ConfigOptions.key(
                    "state.backend.flowstate.block-cache-size")
            .memoryType()
            .defaultValue(MemorySize.parse("64mb"))
            .withDescription("Capacity of the block cache of each backend.");

    /** Write-back cache in front of the store; 0 disables it. */
    public static final ConfigOption<MemorySize> WRITE_CACHE_SIZE = ConfigOptions.key(
                    "state.backend.flowstate.write-cache-size")
            .memoryType()
            .defaultValue(MemorySize.parse("64mb"))
            .withDescription("Capacity of the write-back cache in front of the store (0 disables it): "
                    + "the writes of a checkpoint interval reach the store once per key.");

    /** Size at which compaction cuts its output files. */
    public static final ConfigOption<MemorySize> TARGET_FILE_SIZE = ConfigOptions.key(
                    "state.backend.flowstate.target-file-size")
            .memoryType()
            .defaultValue(MemorySize.parse("4mb"))
            .withDescription("Compaction output files are cut at about this size (smaller files share better "
                    + "between incremental checkpoints).");

    /** Flushes and compactions on a background thread. */
    public static final ConfigOption<Boolean> BACKGROUND_WORK = ConfigOptions.key(
                    "state.backend.flowstate.background-work")
            .booleanType()
            .defaultValue(true)
            .withDescription("Run flushes and compactions on a background thread.");

    /** Checkpoint files a restore brings to the local disk at once. */
    public static final ConfigOption<Integer> TRANSFER_THREADS = ConfigOptions.key(
                    "state.backend.flowstate.transfer-threads")
            .intType()
            .defaultValue(4)
            .withDescription("Checkpoint files a restore downloads at once (files on the local file system are "
                    + "hard-linked instead).");

    /** The options as the native side's {@code key=value} lines. */
    static String nativeOptions(ReadableConfig config) {
        return "write-buffer-size=" + config.get(WRITE_BUFFER_SIZE).getBytes() + "\n"
                + "block-cache-size=" + config.get(BLOCK_CACHE_SIZE).getBytes() + "\n"
                + "write-cache-size=" + config.get(WRITE_CACHE_SIZE).getBytes() + "\n"
                + "target-file-size=" + config.get(TARGET_FILE_SIZE).getBytes() + "\n"
                + "background-work=" + config.get(BACKGROUND_WORK) + "\n";
    }
}
