//! The JNI boundary from Java: every native failure (bad options, a closed handle, a foreign key
//! group, a restore from a damaged checkpoint) reaches Java as a `FlowstateException` naming its
//! cause, and the JVM and the store live on (`flink/java/checks/.../NativeErrors.java`, run in
//! a JVM here).
//!
//! Needs `flink/build.sh` (the jar, `flink/build/classpath.txt` and the checks' classes) and
//! `java`; without them the test prints a loud skip message and passes, except under `CI=true`,
//! where it fails.

use std::path::Path;
use std::process::Command;

fn skip_or_fail(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the JNI error check cannot run under CI=true: {reason}");
    }
    eprintln!("SKIPPING the JNI error check: {reason} (run flink/build.sh first)");
}

#[test]
fn native_failures_become_java_exceptions_naming_the_cause() {
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build");
    let Ok(classpath) = std::fs::read_to_string(build.join("classpath.txt")) else {
        return skip_or_fail("no flink/build/classpath.txt");
    };
    let checks = build.join("checks-classes");
    if !checks
        .join("io/flowstate/flink/checks/NativeErrors.class")
        .is_file()
    {
        return skip_or_fail("no compiled NativeErrors check");
    }
    let classpath = format!("{}:{}", checks.display(), classpath.trim());
    let output = match Command::new("java")
        .args(["-cp", &classpath, "io.flowstate.flink.checks.NativeErrors"])
        .output()
    {
        Ok(output) => output,
        Err(e) => return skip_or_fail(&format!("cannot run java: {e}")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("OK NativeErrors"),
        "NativeErrors failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}
