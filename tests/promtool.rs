//! Acceptance test with Prometheus's own client: `promtool query instant|range|series|
//! labels` against a running node, answers checked.
//!
//! promtool comes from Debian's `prometheus` package (scripts/install-prometheus.sh).
//! Without it the test is skipped with a message on a developer machine, and fails
//! under CI (`CI` set), where the setup script must have installed it.

#[rustfmt::skip]
mod common;

use std::process::Command;

use common::{remote_write, ts, Node};
use serde_json::{json, Value};
use timbala::proto;

const STEP_MS: i64 = 15_000;
const POINTS: i64 = 9;

/// Whether promtool can be run; panics under CI when it cannot.
fn promtool_available() -> bool {
    common::tool_available("promtool", "scripts/install-prometheus.sh")
}

/// Runs `promtool query <args>` and returns its standard output; panics on failure.
fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .arg("query")
        .args(args)
        .output()
        .expect("run promtool");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "promtool query {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn promtool_json(args: &[&str]) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let out = promtool(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("promtool {args:?}: {e}: {out}"))
}

fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// A timestamp as promtool's JSON output writes it (whole seconds as an integer).
fn ts_json(ms: i64) -> Value {
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

/// Two counters and a gauge, samples every 15 s, the last one a minute ago.
fn write_data(node: &Node) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let base = now / 1000 * 1000 - 60_000 - (POINTS - 1) * STEP_MS;
    let samples = |f: fn(i64) -> f64| -> Vec<(i64, f64)> {
        (0..POINTS).map(|i| (base + i * STEP_MS, f(i))).collect()
    };
    let request = proto::WriteRequest {
        timeseries: vec![
            ts(
                &[
                    ("__name__", "jobs_done_total"),
                    ("job", "worker"),
                    ("queue", "fast"),
                ],
                &samples(|i| (i * 3) as f64),
            ),
            ts(
                &[
                    ("__name__", "jobs_done_total"),
                    ("job", "worker"),
                    ("queue", "slow"),
                ],
                &samples(|i| i as f64),
            ),
            ts(
                &[("__name__", "temperature_celsius"), ("job", "sensor")],
                &samples(|i| 20.5 + i as f64 / 4.0),
            ),
        ],
        ..Default::default()
    };
    let (status, body) = remote_write(node, &request);
    assert!(
        (200..300).contains(&status),
        "remote write: {status} {body}"
    );
    base
}

#[test]
fn promtool_queries_get_the_answers_prometheus_would_give() {
    if !promtool_available() {
        return;
    }
    let node = Node::start(&[]);
    let base = write_data(&node);
    let last = base + (POINTS - 1) * STEP_MS;
    let server = format!("http://{}", node.http_addr);

    // instant: a sum over both counters at the last sample.
    let at = secs(last);
    let out = promtool_json(&[
        "instant",
        "--time",
        &at,
        &server,
        "sum by (job) (jobs_done_total)",
    ]);
    assert_eq!(
        out,
        json!([{"metric": {"job": "worker"}, "value": [ts_json(last), "32"]}]),
        "{out}"
    );
    // The default (PromQL text) output of promtool too.
    let text = promtool(&["instant", "--time", &at, &server, "temperature_celsius"]);
    assert_eq!(
        text.trim(),
        format!(
            "temperature_celsius{{job=\"sensor\"}} => 22.5 @[{}]",
            // Prometheus's model.Time text: shortest float seconds.
            last as f64 / 1000.0
        ),
        "{text}"
    );

    // range: the slow counter at every step.
    let out = promtool_json(&[
        "range",
        "--start",
        &secs(base),
        "--end",
        &secs(last),
        "--step",
        "15s",
        &server,
        r#"jobs_done_total{queue="slow"}"#,
    ]);
    let values = out[0]["values"].as_array().expect("matrix values");
    assert_eq!(out[0]["metric"]["queue"], "slow", "{out}");
    let expected: Vec<Value> = (0..POINTS)
        .map(|i| json!([ts_json(base + i * STEP_MS), i.to_string()]))
        .collect();
    assert_eq!(values, &expected);

    // series: every matching label set.
    let out = promtool_json(&[
        "series",
        "--match",
        "jobs_done_total",
        "--match",
        "temperature_celsius",
        &server,
    ]);
    assert_eq!(
        out,
        json!([
            {"__name__": "jobs_done_total", "job": "worker", "queue": "fast"},
            {"__name__": "jobs_done_total", "job": "worker", "queue": "slow"},
            {"__name__": "temperature_celsius", "job": "sensor"},
        ])
    );

    // labels: values of one label, all and restricted by a selector.
    let out = promtool_json(&["labels", &server, "job"]);
    assert_eq!(out, json!(["sensor", "worker"]));
    let out = promtool_json(&["labels", "--match", "jobs_done_total", &server, "queue"]);
    assert_eq!(out, json!(["fast", "slow"]));
}
