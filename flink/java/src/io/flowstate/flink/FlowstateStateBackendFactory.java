package io.flowstate.flink;

import org.apache.flink.configuration.IllegalConfigurationException;
import org.apache.flink.configuration.ReadableConfig;
import org.apache.flink.runtime.state.StateBackendFactory;

/**
 * What {@code state.backend.type: io.flowstate.flink.FlowstateStateBackendFactory} names: builds a
 * {@link FlowstateStateBackend} from the job's configuration.
 */
public class FlowstateStateBackendFactory implements StateBackendFactory<FlowstateStateBackend> {
    /** The factory Flink instantiates by class name. */
    public FlowstateStateBackendFactory() {}

    @Override
    public FlowstateStateBackend createFromConfig(ReadableConfig config, ClassLoader classLoader)
            throws IllegalConfigurationException {
        return new FlowstateStateBackend().configure(config, classLoader);
    }
}
