package io.flowstate.flink;

import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.UUID;

import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.IllegalConfigurationException;
import org.apache.flink.configuration.ReadableConfig;
import org.apache.flink.core.execution.SavepointFormatType;
import org.apache.flink.runtime.execution.Environment;
import org.apache.flink.runtime.state.AbstractKeyedStateBackend;
import org.apache.flink.runtime.state.AbstractStateBackend;
import org.apache.flink.runtime.state.BackendBuildingException;
import org.apache.flink.runtime.state.ConfigurableStateBackend;
import org.apache.flink.runtime.state.DefaultOperatorStateBackendBuilder;
import org.apache.flink.runtime.state.InternalKeyContextImpl;
import org.apache.flink.runtime.state.KeyedStateHandle;
import org.apache.flink.runtime.state.OperatorStateBackend;

/**
 * flowstate as a Flink state backend: keyed state in flowstate's LSM store (native), operator
 * state in Flink's default operator state backend.
 */
public class FlowstateStateBackend extends AbstractStateBackend implements ConfigurableStateBackend {
    private static final long serialVersionUID = 1L;

    private final Configuration config;

    /** A backend with the default options. */
    public FlowstateStateBackend() {
        this(new Configuration());
    }

    private FlowstateStateBackend(Configuration config) {
        this.config = config;
    }

    @Override
    public FlowstateStateBackend configure(ReadableConfig config, ClassLoader classLoader)
            throws IllegalConfigurationException {
        Configuration merged = new Configuration(this.config);
        for (var option : List.of(FlowstateOptions.WRITE_BUFFER_SIZE, FlowstateOptions.BLOCK_CACHE_SIZE,
                FlowstateOptions.WRITE_CACHE_SIZE, FlowstateOptions.TARGET_FILE_SIZE)) {
            config.getOptional(option).ifPresent(v -> merged.set(option, v));
        }
        config.getOptional(FlowstateOptions.BACKGROUND_WORK).ifPresent(v -> merged.set(FlowstateOptions.BACKGROUND_WORK, v));
        config.getOptional(FlowstateOptions.LOCAL_DIR).ifPresent(v -> merged.set(FlowstateOptions.LOCAL_DIR, v));
        config.getOptional(FlowstateOptions.TRANSFER_THREADS)
                .ifPresent(v -> merged.set(FlowstateOptions.TRANSFER_THREADS, v));
        return new FlowstateStateBackend(merged);
    }

    @Override
    public String getName() {
        return FlowstateKeyedStateBackend.BACKEND_TYPE;
    }

    @Override
    public <K> AbstractKeyedStateBackend<K> createKeyedStateBackend(KeyedStateBackendParameters<K> params)
            throws IOException {
        Environment env = params.getEnv();
        Path dir = workingDirectory(env, params.getOperatorIdentifier());
        InternalKeyContextImpl<K> keyContext =
                new InternalKeyContextImpl<>(params.getKeyGroupRange(), params.getNumberOfKeyGroups());
        FlowstateKeyedStateBackend<K> backend;
        try {
            backend = new FlowstateKeyedStateBackend<>(
                    params.getKvStateRegistry(),
                    params.getKeySerializer(),
                    env.getUserCodeClassLoader().asClassLoader(),
                    env.getExecutionConfig(),
                    params.getTtlTimeProvider(),
                    params.getCancelStreamRegistry(),
                    keyContext,
                    dir,
                    FlowstateOptions.nativeOptions(config),
                    params.getMetricGroup());
        } catch (FlowstateException e) {
            throw new BackendBuildingException("cannot open flowstate in " + dir + ": " + e.getMessage(), e);
        }
        Collection<KeyedStateHandle> handles = params.getStateHandles();
        if (handles != null && !handles.isEmpty()) {
            try {
                backend.restore(new ArrayList<>(handles), params.getCancelStreamRegistry(),
                        config.get(FlowstateOptions.TRANSFER_THREADS));
            } catch (Exception e) {
                backend.dispose();
                throw new BackendBuildingException("flowstate failed to restore: " + e.getMessage(), e);
            }
        }
        return backend;
    }

    private Path workingDirectory(Environment env, String operator) throws IOException {
        String base = config.get(FlowstateOptions.LOCAL_DIR);
        if (base == null) {
            String[] tmp = env.getTaskManagerInfo().getTmpDirectories();
            int pick = Math.floorMod(env.getTaskInfo().getIndexOfThisSubtask(), tmp.length);
            base = tmp[pick];
        }
        String name = "flowstate-" + env.getJobID() + "-" + sanitize(operator) + "-"
                + env.getTaskInfo().getIndexOfThisSubtask() + "-" + UUID.randomUUID();
        Path dir = new File(base).toPath().resolve(name);
        Files.createDirectories(dir);
        return dir;
    }

    private static String sanitize(String s) {
        return s.replaceAll("[^A-Za-z0-9_.-]", "_");
    }

    @Override
    public OperatorStateBackend createOperatorStateBackend(OperatorStateBackendParameters params) throws Exception {
        return new DefaultOperatorStateBackendBuilder(
                        params.getEnv().getUserCodeClassLoader().asClassLoader(),
                        params.getEnv().getExecutionConfig(),
                        true,
                        params.getStateHandles(),
                        params.getCancelStreamRegistry())
                .build();
    }

    /** Restores read the checkpoint's files and never change them. */
    @Override
    public boolean supportsNoClaimRestoreMode() {
        return true;
    }

    @Override
    public boolean supportsSavepointFormat(SavepointFormatType formatType) {
        return formatType == SavepointFormatType.NATIVE || formatType == SavepointFormatType.CANONICAL;
    }
}
