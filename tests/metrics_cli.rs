//! `flowstate run --metrics-addr` and the growth-alert flags as a process: a port in use is a
//! runtime error (exit 1, saying so) before the job starts; an address that does not parse and
//! a bad growth fraction are usage errors (exit 2).

use std::net::TcpListener;
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_flowstate");

fn run(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let p = |name: &str| dir.join(name).display().to_string();
    Command::new(EXE)
        .args(["run", "--input", &p("input"), "--output", &p("out")])
        .args(["--state", &p("state"), "--quiet"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_taken_port_exits_1_and_a_bad_address_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input"), "a,1\nb,2\n").unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(dir.path(), &["--metrics-addr", &addr]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot serve metrics on {addr}")),
        "{stderr}"
    );
    assert!(!dir.path().join("out").exists(), "the job did not start");

    for bad in ["localhost", "127.0.0.1", "127.0.0.1:99999", "::1:80"] {
        let out = run(dir.path(), &["--metrics-addr", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--metrics-addr"));
    }
    for bad in ["0", "-1", "NaN", "x"] {
        let out = run(dir.path(), &["--state-growth-alert", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
    let out = run(dir.path(), &["--state-growth-window", "0"]);
    assert_eq!(out.status.code(), Some(2));

    // A free port: the job runs and finishes as usual.
    drop(taken);
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let out = run(
        dir.path(),
        &["--metrics-addr", &addr, "--state-growth-alert", "0.5"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("job finished: 2 events"));
}
