//! Acceptance test of native histograms in a 4-node cluster of real processes (so most
//! series are not on every node): histograms written to one node land on exactly their
//! 3 owners; every node answers PromQL over them and the raw selector identically and
//! correctly, each series once (the fan-out asks the owners); with one owner killed,
//! writes are acknowledged through hints and queries stay right; restarted, the owner
//! receives the hinted histograms.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use prost::Message;
use serde_json::Value;
use timbala::cluster::placement;
use timbala::model::Labels;
use timbala::proto::histogram::{Count, ZeroCount};
use timbala::proto::{self, BucketSpan, Histogram};

const SERIES: usize = 40;

/// An integer histogram (exponential schema 0) at `t` holding `n + 2` observations.
fn int_histogram(t: i64, n: u64) -> Histogram {
    Histogram {
        count: Some(Count::Int(n + 2)),
        sum: 1.5 * n as f64,
        schema: 0,
        zero_threshold: 0.001,
        zero_count: Some(ZeroCount::Int(2)),
        positive_spans: vec![BucketSpan {
            offset: 1,
            length: 1,
        }],
        positive_deltas: vec![n as i64],
        timestamp: t,
        ..Default::default()
    }
}

/// A float histogram with custom bounds 0.5 and 1 at `t` holding `a + b + c`
/// observations.
fn float_histogram(t: i64, a: f64, b: f64, c: f64) -> Histogram {
    Histogram {
        count: Some(Count::Float(a + b + c)),
        sum: 0.25 * a + 0.75 * b + 2.0 * c,
        schema: -53,
        zero_count: Some(ZeroCount::Float(0.0)),
        positive_spans: vec![BucketSpan {
            offset: 0,
            length: 3,
        }],
        positive_counts: vec![a, b, c],
        custom_values: vec![0.5, 1.0],
        timestamp: t,
        ..Default::default()
    }
}

fn kind(i: usize) -> &'static str {
    if i % 2 == 0 {
        "int"
    } else {
        "float"
    }
}

fn labels_of(i: usize) -> Vec<(String, String)> {
    vec![
        ("__name__".to_string(), "nh".to_string()),
        ("i".to_string(), format!("{i:02}")),
        ("kind".to_string(), kind(i).to_string()),
    ]
}

/// Series `i`'s histogram at step `step` (time `t`), and its count and sum.
fn histogram(i: usize, step: u64, t: i64) -> (Histogram, f64, f64) {
    let h = if i % 2 == 0 {
        int_histogram(t, i as u64 + step)
    } else {
        let x = (i as f64) + step as f64;
        float_histogram(t, x, 1.0, 0.5)
    };
    let count = match h.count {
        Some(Count::Int(n)) => n as f64,
        Some(Count::Float(x)) => x,
        None => 0.0,
    };
    let sum = h.sum;
    (h, count, sum)
}

fn write_step(node: &Node, step: u64, t: i64) -> (u16, String) {
    let timeseries = (0..SERIES)
        .map(|i| proto::TimeSeries {
            labels: labels_of(i)
                .into_iter()
                .map(|(name, value)| proto::Label { name, value })
                .collect(),
            histograms: vec![histogram(i, step, t).0],
            ..Default::default()
        })
        .collect();
    remote_write(
        node,
        &proto::WriteRequest {
            timeseries,
            ..Default::default()
        },
    )
}

/// Owner ids of a series, by placement over the join order.
fn owners(order: &[String], labels: &[(String, String)]) -> BTreeSet<String> {
    let labels = Labels::from_pairs(labels.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    placement::owners(placement::partition_key(&labels), order.len(), 3)
        .into_iter()
        .map(|i| order[i].clone())
        .collect()
}

/// Remote read (SAMPLES) of `nh` at `path`: each series' histogram timestamps.
fn histograms_at(node: &Node, path: &str) -> BTreeMap<Vec<(String, String)>, Vec<i64>> {
    let request = proto::ReadRequest {
        queries: vec![proto::Query {
            start_timestamp_ms: 0,
            end_timestamp_ms: i64::MAX / 2,
            matchers: vec![eq("__name__", "nh")],
            hints: None,
        }],
        accepted_response_types: vec![proto::ResponseType::Samples as i32],
    };
    let (status, body) = post(
        &node.url(path),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Read-Version", "0.1.0"),
        ],
        &proto::encode_snappy(&request),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&body)
        .expect("snappy");
    let response = proto::ReadResponse::decode(raw.as_slice()).expect("ReadResponse");
    response.results[0]
        .timeseries
        .iter()
        .map(|ts| {
            assert!(ts.samples.is_empty(), "no float samples were written");
            let labels = ts
                .labels
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect();
            (labels, ts.histograms.iter().map(|h| h.timestamp).collect())
        })
        .collect()
}

fn query(node: &Node, q: &str, t_ms: i64) -> Value {
    let url = node.url(&format!(
        "/api/v1/query?query={}&time={}",
        urlencode(q),
        t_ms as f64 / 1000.0
    ));
    let (code, body) = get(&url);
    assert_eq!(code, 200, "{q} on {}: {body}", node.http_addr);
    serde_json::from_str(&body).expect("json")
}

fn urlencode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn scalar(answer: &Value) -> f64 {
    let result = answer["data"]["result"].as_array().expect("result");
    assert_eq!(result.len(), 1, "{answer}");
    result[0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("number")
}

/// Checks every node in `nodes` answers the queries over the histograms at step `step`
/// (time `t`) correctly and, for the raw selector, identically.
fn check_queries(nodes: &[&Node], step: u64, t: i64) {
    let expected: Vec<(f64, f64)> = (0..SERIES)
        .map(|i| {
            let (_, count, sum) = histogram(i, step, t);
            (count, sum)
        })
        .collect();
    let total_count: f64 = expected.iter().map(|e| e.0).sum();
    let total_sum: f64 = expected.iter().map(|e| e.1).sum();
    let int_count: f64 = (0..SERIES).step_by(2).map(|i| expected[i].0).sum();
    let mut raw_answers = Vec::new();
    for node in nodes {
        let at = |q: &str| scalar(&query(node, q, t));
        let who = &node.http_addr;
        let counted = at("count(histogram_count(nh))");
        assert_eq!(counted, SERIES as f64, "{who}: each series once");
        assert_eq!(at("sum(histogram_count(nh))"), total_count, "{who}");
        assert!(
            (at("sum(histogram_sum(nh))") - total_sum).abs() < 1e-9,
            "{who}"
        );
        assert_eq!(
            at("histogram_count(sum(nh{kind=\"int\"}))"),
            int_count,
            "{who}: sum of histograms"
        );
        assert_eq!(at("histogram_count(nh{i=\"07\"})"), expected[7].0, "{who}");
        let raw = query(node, "nh", t);
        let result = raw["data"]["result"].as_array().expect("result");
        assert_eq!(result.len(), SERIES, "{who}: {raw}");
        for series in result {
            let i: usize = series["metric"]["i"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("i");
            let count: f64 = series["histogram"][1]["count"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("count");
            assert_eq!(count, expected[i].0, "{who}: series {i}");
        }
        raw_answers.push(raw["data"].to_string());
    }
    assert!(
        raw_answers.windows(2).all(|w| w[0] == w[1]),
        "every node answers the raw selector identically"
    );
}

#[test]
fn four_nodes_replicate_and_read_native_histograms_through_a_kill() {
    let started = Instant::now();
    let mut cluster = start_cluster(4, &[]);
    let order = {
        let nodes: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
        wait_converged(&nodes, 4, Duration::from_secs(15))
    };
    let t0 = now_ms() - 60_000;

    // Two steps written through one node.
    for (step, t) in [(0, t0), (1, t0 + 10_000)] {
        let (code, body) = write_step(&cluster[0].node, step, t);
        assert!((200..300).contains(&code), "write: {code} {body}");
    }

    // Each series is held by exactly its 3 owners, with both samples.
    let mut holders: BTreeMap<Vec<(String, String)>, BTreeSet<String>> = BTreeMap::new();
    for member in &cluster {
        let id = seen(&member.node).expect("status").0;
        for (labels, times) in histograms_at(&member.node, LOCAL_READ) {
            assert_eq!(times, vec![t0, t0 + 10_000], "{id}: {labels:?}");
            holders.entry(labels).or_default().insert(id.clone());
        }
    }
    assert_eq!(holders.len(), SERIES);
    for (labels, held_by) in &holders {
        assert_eq!(held_by, &owners(&order, labels), "{labels:?}");
    }

    // Every node answers for every series, each once.
    let nodes: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
    check_queries(&nodes, 1, t0 + 10_000);
    for node in &nodes {
        let all = histograms_at(node, "/api/v1/read");
        assert_eq!(all.len(), SERIES, "remote read on {}", node.http_addr);
        assert!(all.values().all(|t| t == &vec![t0, t0 + 10_000]));
    }
    println!("replicated and read after {:?}", started.elapsed());

    // One owner killed: writes are acknowledged (hints for it), queries stay right.
    let victim_id = seen(&cluster[3].node).expect("status").0;
    cluster[3].node.kill();
    let t2 = t0 + 20_000;
    let (code, body) = write_step(&cluster[0].node, 2, t2);
    assert!(
        (200..300).contains(&code),
        "write with an owner down: {code} {body}"
    );
    let survivors: Vec<&Node> = cluster[..3].iter().map(|c| &c.node).collect();
    check_queries(&survivors, 2, t2);

    // Restarted, it receives the hinted histograms of every series it owns.
    cluster[3].spawn();
    cluster[3].node.wait_ready(Duration::from_secs(30));
    let mine: BTreeSet<Vec<(String, String)>> = (0..SERIES)
        .map(labels_of)
        .filter(|l| owners(&order, l).contains(&victim_id))
        .collect();
    assert!(!mine.is_empty() && mine.len() < SERIES);
    let want = vec![t0, t0 + 10_000, t2];
    wait_until(
        "the hinted histograms reach the restarted owner",
        Duration::from_secs(60),
        || {
            let held = histograms_at(&cluster[3].node, LOCAL_READ);
            held.keys().cloned().collect::<BTreeSet<_>>() == mine
                && held.values().all(|times| times == &want)
        },
    );
    let nodes: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
    wait_converged(&nodes, 4, Duration::from_secs(15));
    check_queries(&nodes, 2, t2);
    println!("handoff complete after {:?}", started.elapsed());
}
