//! The process as an operator's supervisor sees it: a start-up error is printed once and
//! exits non-zero, a closed log pipe never ends the node, and build info names the build.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, get, Node};

#[test]
fn a_start_up_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the data directory should be: the lock cannot be taken.
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_timbala"))
        .arg("--data-directory")
        .arg(&not_a_dir)
        .args(["--http-bind-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--gossip-bind-addr", &format!("127.0.0.1:{}", free_port())])
        .stdin(Stdio::null())
        .output()
        .expect("run timbala");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("data directory"))
        .collect();
    assert_eq!(lines.len(), 1, "the error once, got:\n{stderr}");
    assert!(
        lines[0].contains("ERROR"),
        "through the logger: {}",
        lines[0]
    );
}

#[test]
fn a_closed_log_pipe_does_not_end_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_timbala"))
        .arg("--data-directory")
        .arg(dir.path().join("data"))
        .args(["--http-bind-addr", &http])
        .args(["--gossip-bind-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--log-level", "debug"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn timbala");
    // Read the first log line, then close both pipes: every later log line fails to write.
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty());
    drop(child.stdout.take());
    let node = Node::handle(&http);
    node.wait_ready(Duration::from_secs(60));
    // Requests that log (a bad query, a bad write), then the node still answers.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        get(&node.url("/api/v1/query?query=sum(("));
        common::post(&node.url("/api/v1/write"), &[], b"not snappy");
    }
    assert_eq!(child.try_wait().unwrap(), None, "the node exited");
    let (code, body) = get(&node.url("/api/v1/query?query=1%2B1"));
    assert_eq!(code, 200, "{body}");
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn build_info_names_the_build() {
    let node = Node::start(&[]);
    let (code, body) = get(&node.url("/api/v1/status/buildinfo"));
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let data = &v["data"];
    for field in [
        "version",
        "revision",
        "branch",
        "buildUser",
        "buildDate",
        "goVersion",
    ] {
        let value = data[field].as_str().unwrap_or_default();
        assert!(!value.is_empty(), "{field} empty in {body}");
    }
    assert!(data["goVersion"].as_str().unwrap().starts_with("rustc"));
    // Inside a git checkout (the tests run from one) the revision is the commit's hash.
    if let Ok(out) = Command::new("git").args(["rev-parse", "HEAD"]).output() {
        if out.status.success() {
            let head = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert_eq!(data["revision"].as_str().unwrap(), head);
        }
    }
}
