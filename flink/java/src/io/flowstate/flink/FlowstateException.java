package io.flowstate.flink;

/** A failure in flowstate's native code: the message names the cause (file, offset, reason). */
public class FlowstateException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** An exception with the native side's message. */
    public FlowstateException(String message) {
        super(message);
    }

    /** An exception with a message and the Java-side cause. */
    public FlowstateException(String message, Throwable cause) {
        super(message, cause);
    }
}
