//! The JNI boundary from Java, each check a small program run in a JVM here
//! (`flink/java/checks/...`):
//!
//! - `NativeErrors`: every native failure (bad options, a closed handle, a foreign key group, a
//!   restore from a damaged checkpoint) reaches Java as a `FlowstateException` naming its
//!   cause, and the JVM and the store live on;
//! - `ThreadChurn`: stores opened, used, checkpointed and closed on hundreds of short-lived Java
//!   threads, as a task manager's tasks come and go, with the native allocator's per-thread
//!   state; a crash would end the JVM.
//!
//! Needs `flink/build.sh` (the jar, `flink/build/classpath.txt` and the checks' classes) and
//! `java`; without them the tests print a loud skip message and pass, except under `CI=true`,
//! where they fail.

use std::path::Path;
use std::process::Command;

fn skip_or_fail(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("a JNI check cannot run under CI=true: {reason}");
    }
    eprintln!("SKIPPING a JNI check: {reason} (run flink/build.sh first)");
}

/// Runs check `class` in a JVM; it must exit 0 and print `OK <class>`.
fn run_check(class: &str) {
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build");
    let Ok(classpath) = std::fs::read_to_string(build.join("classpath.txt")) else {
        return skip_or_fail("no flink/build/classpath.txt");
    };
    let checks = build.join("checks-classes");
    if !checks
        .join(format!("io/flowstate/flink/checks/{class}.class"))
        .is_file()
    {
        return skip_or_fail(&format!("no compiled {class} check"));
    }
    let classpath = format!("{}:{}", checks.display(), classpath.trim());
    let output = match Command::new("java")
        .args([
            "-cp",
            &classpath,
            &format!("io.flowstate.flink.checks.{class}"),
        ])
        .output()
    {
        Ok(output) => output,
        Err(e) => return skip_or_fail(&format!("cannot run java: {e}")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(&format!("OK {class}")),
        "{class} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

#[test]
fn native_failures_become_java_exceptions_naming_the_cause() {
    run_check("NativeErrors");
}

#[test]
fn stores_on_short_lived_threads_neither_crash_nor_lose_values() {
    run_check("ThreadChurn");
}
