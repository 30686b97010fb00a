//! Differential test of native histograms against real Prometheus (Debian's
//! `prometheus`, 2.42, started with `--enable-feature=native-histograms`): the workload
//! of `support/histogram_workload.rs` (integer native histograms, see there for what it
//! covers and which known differences it avoids) goes by remote write 1.0 to
//! Prometheus, to a single Timbala node and to a 3-node Timbala cluster, and every
//! query of the workload must give the same answer from Prometheus and from each
//! Timbala node (numbers compared to a relative 1e-9, since sums may be added in
//! another order).
//!
//! Without Prometheus the test is skipped with a message; under CI its absence fails it.

mod common;
#[path = "support/histogram_workload.rs"]
mod histogram_workload;

use std::time::Duration;

use common::*;
use histogram_workload::{normalized, queries, request, same};
use serde_json::Value;

/// The `data` of a query answer from the server at `base_url`.
fn answer(base_url: &str, path_and_query: &str) -> Value {
    let url = format!("{base_url}{path_and_query}");
    let (code, body) = get(&url);
    assert_eq!(code, 200, "{url}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["status"], "success", "{url}: {body}");
    v["data"].clone()
}

#[test]
fn timbala_answers_native_histogram_queries_as_prometheus_2_42_does() {
    if !prometheus_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let prometheus = start_prometheus_with(
        dir.path(),
        "",
        &[
            "--enable-feature=native-histograms",
            "--web.enable-remote-write-receiver",
        ],
    );
    wait_until("Prometheus ready", Duration::from_secs(60), || {
        try_get(&prometheus.url("/-/ready")).is_ok_and(|(code, _)| code == 200)
    });
    let single = Node::start(&[]);
    let cluster = start_cluster(3, &[]);
    let members: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
    wait_converged(&members, 3, Duration::from_secs(30));

    // Inside Prometheus's appendable window: its head already holds its own scrapes.
    let now = now_ms();
    let base = now - now % 1_000 - 15 * 60_000;
    let req = request("diff_latency_seconds", base);
    let prometheus_node = Node::handle(&format!("127.0.0.1:{}", prometheus.port));
    for target in [&prometheus_node, &single, members[1]] {
        let (status, body) = remote_write(target, &req);
        assert_eq!(status, 204, "{}: {body}", target.http_addr);
    }

    let asked = queries("diff_latency_seconds", base);
    let answers = |base_url: &str| -> Vec<Value> {
        asked
            .iter()
            .map(|(_, path)| normalized(answer(base_url, path)))
            .collect()
    };
    let expected = answers(&prometheus.url(""));
    // Prometheus must have understood the data, or the comparison proves nothing.
    assert_eq!(
        expected[0]["result"].as_array().map(Vec::len),
        Some(4),
        "{}: {}",
        asked[0].0,
        expected[0]
    );
    let mut servers = vec![("single node".to_string(), single.url(""))];
    for (i, node) in members.iter().enumerate() {
        servers.push((format!("cluster node {i}"), node.url("")));
    }
    let mut differences = Vec::new();
    for (server, url) in &servers {
        for (((name, _), want), got) in asked.iter().zip(&expected).zip(answers(url)) {
            if !same(want, &got) {
                differences.push(format!(
                    "{server}: {name}\n  prometheus: {want}\n  timbala:    {got}"
                ));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} answers differ:\n{}",
        differences.len(),
        expected.len() * servers.len(),
        differences.join("\n")
    );
    eprintln!(
        "{} queries x {} Timbala servers: every answer equals Prometheus 2.42's",
        expected.len(),
        servers.len()
    );
}
