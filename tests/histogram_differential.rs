//! Differential test of native histograms against real Prometheus (Debian's
//! `prometheus`, 2.42, started with `--enable-feature=native-histograms`): the same
//! integer native histograms go by remote write 1.0 to Prometheus, to a single Timbala
//! node and to a 3-node Timbala cluster, and a set of queries that 2.42 answers with
//! today's semantics must give the same answers from all three (numbers compared to a
//! relative 1e-9, since sums may be added in another order).
//!
//! The data: four instances of a counter histogram over ten minutes at 15 s, schema 0
//! and schema 3, with a zero bucket, negative buckets on one instance, buckets that
//! appear half-way (the layout widens) and a counter reset; they exercise rate and
//! increase across resets and layout changes, sums across schemas, and the JSON
//! `histogram`/`histograms` shapes.
//!
//! Evaluation times are 7 s after a sample, so that no range selector starts exactly
//! on a sample: Prometheus 3.0 made ranges left-open (2.42's include a sample at their
//! start), and Timbala follows current Prometheus. Range queries start two minutes
//! into the data: where a rate's range holds a series' first samples, current
//! Prometheus stops the extrapolation at the histogram count's zero point, as it long
//! did for float counters, and 2.42 does not (both differences were seen here first).
//!
//! Left out on purpose: `histogram_quantile` and `histogram_fraction` inside
//! exponential buckets (Prometheus 2.51 changed their interpolation from linear to
//! exponential; Timbala follows current Prometheus, so 2.42 differs there by design;
//! the quantile checked here lies in the zero bucket, which both interpolate linearly),
//! float and gauge histograms and custom buckets (2.42's remote-write receiver takes
//! integer histograms only), and functions 2.42 does not have for histograms.
//!
//! Without Prometheus the test is skipped with a message; under CI its absence fails it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use timbala::proto::histogram::{Count, ZeroCount};
use timbala::proto::{self, BucketSpan};

const STEP_MS: i64 = 15_000;
const SAMPLES: i64 = 41;

/// Absolute bucket counts by bucket index, and the zero bucket's count.
struct Observed {
    positive: Vec<(i32, u64)>,
    negative: Vec<(i32, u64)>,
    zero: u64,
}

/// Spans and delta-encoded counts of buckets given by (index, count), indices ascending.
fn spans_and_deltas(buckets: &[(i32, u64)]) -> (Vec<BucketSpan>, Vec<i64>) {
    let mut spans: Vec<BucketSpan> = Vec::new();
    let mut deltas = Vec::new();
    let mut previous_index: Option<i32> = None;
    let mut previous_count = 0i64;
    for &(index, count) in buckets {
        match previous_index {
            Some(p) if index == p + 1 => spans.last_mut().expect("a span").length += 1,
            Some(p) => spans.push(BucketSpan {
                offset: index - p - 1,
                length: 1,
            }),
            None => spans.push(BucketSpan {
                offset: index,
                length: 1,
            }),
        }
        deltas.push(count as i64 - previous_count);
        previous_count = count as i64;
        previous_index = Some(index);
    }
    (spans, deltas)
}

/// The upper bound of bucket `index` under `schema` (2^(index * 2^-schema)).
fn upper_bound(schema: i32, index: i32) -> f64 {
    (f64::from(index) * 2f64.powi(-schema)).exp2()
}

fn histogram(t: i64, schema: i32, observed: &Observed) -> proto::Histogram {
    let (positive_spans, positive_deltas) = spans_and_deltas(&observed.positive);
    let (negative_spans, negative_deltas) = spans_and_deltas(&observed.negative);
    let total = |b: &[(i32, u64)]| b.iter().map(|&(_, c)| c).sum::<u64>();
    // Every observation sits at its bucket's upper bound (the zero bucket's at 0).
    let weighted = |b: &[(i32, u64)]| {
        b.iter()
            .map(|&(i, c)| c as f64 * upper_bound(schema, i))
            .sum::<f64>()
    };
    proto::Histogram {
        count: Some(Count::Int(
            total(&observed.positive) + total(&observed.negative) + observed.zero,
        )),
        sum: weighted(&observed.positive) - weighted(&observed.negative),
        schema,
        zero_threshold: 0.001,
        zero_count: Some(ZeroCount::Int(observed.zero)),
        positive_spans,
        positive_deltas,
        negative_spans,
        negative_deltas,
        timestamp: t,
        ..Default::default()
    }
}

/// Instance `i`'s histogram after `step` scrapes: counts grow by a per-bucket rate;
/// instance 1 gains two higher buckets half-way, instance 2 is reset at step 25,
/// instance 3 has negative buckets.
fn observed(i: u64, step: i64) -> Observed {
    let step = step as u64;
    let grown = |rate: u64| rate * step + i;
    let (since_reset, reset) = if i == 2 && step >= 25 {
        (step - 25, true)
    } else {
        (step, false)
    };
    // After the reset the counts restart at 10 steps' worth, not at 0: a range starting
    // on a zero count is where current Prometheus and 2.42 extrapolate differently.
    let counter = |rate: u64| {
        if reset {
            rate * (since_reset + 10)
        } else {
            grown(rate)
        }
    };
    let mut positive = vec![
        (-1, counter(2)),
        (0, counter(3)),
        (1, counter(5)),
        (3, counter(1)),
    ];
    if i == 1 && step >= 20 {
        positive.extend([(4, counter(2) - 40), (6, counter(1) - 20)]);
    }
    let negative = if i == 3 {
        vec![(0, counter(1)), (2, counter(2))]
    } else {
        Vec::new()
    };
    Observed {
        positive,
        negative,
        zero: counter(4),
    }
}

fn request(base: i64) -> proto::WriteRequest {
    let timeseries = (0..4u64)
        .map(|i| {
            let schema = if i % 2 == 0 { 0 } else { 3 };
            let instance = format!("host-{i}");
            let mut series = ts(
                &[
                    ("__name__", "diff_latency_seconds"),
                    ("instance", &instance),
                    ("job", if i < 2 { "api" } else { "db" }),
                ],
                &[],
            );
            series.histograms = (0..SAMPLES)
                .map(|step| histogram(base + step * STEP_MS, schema, &observed(i, step)))
                .collect();
            series
        })
        .collect();
    proto::WriteRequest {
        timeseries,
        metadata: vec![],
    }
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `data` of a query answer from the server at `base_url`.
fn answer(base_url: &str, path_and_query: &str) -> Value {
    let url = format!("{base_url}{path_and_query}");
    let (code, body) = get(&url);
    assert_eq!(code, 200, "{url}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["status"], "success", "{url}: {body}");
    v["data"].clone()
}

/// The result with its series in label order (servers may order them differently).
fn normalized(mut data: Value) -> Value {
    if let Some(result) = data["result"].as_array_mut() {
        result.sort_by_key(|series| series["metric"].to_string());
    }
    data
}

/// Whether two answers agree: same shape and strings, numbers (and numeric strings) equal
/// to a relative 1e-9.
fn same(a: &Value, b: &Value) -> bool {
    fn close(x: f64, y: f64) -> bool {
        x == y || (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => {
            x == y || matches!((x.parse::<f64>(), y.parse::<f64>()), (Ok(x), Ok(y)) if close(x, y))
        }
        (Value::Number(x), Value::Number(y)) => close(
            x.as_f64().unwrap_or(f64::NAN),
            y.as_f64().unwrap_or(f64::NAN),
        ),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Instant queries (at each of `times`) and range queries over the data's span.
const INSTANT_QUERIES: &[&str] = &[
    "diff_latency_seconds",
    "diff_latency_seconds[1m]",
    "diff_latency_seconds offset 2m",
    "histogram_count(diff_latency_seconds)",
    "histogram_sum(diff_latency_seconds)",
    "rate(diff_latency_seconds[1m])",
    "increase(diff_latency_seconds[2m])",
    "delta(diff_latency_seconds[3m])",
    "histogram_count(rate(diff_latency_seconds[2m]))",
    "histogram_sum(increase(diff_latency_seconds[5m]))",
    "sum(diff_latency_seconds)",
    "sum by (job) (rate(diff_latency_seconds[1m]))",
    "histogram_count(sum(rate(diff_latency_seconds[5m])))",
    "diff_latency_seconds + diff_latency_seconds",
    "count_over_time(diff_latency_seconds[2m])",
    "count by (job) (diff_latency_seconds)",
    r#"histogram_quantile(0.05, diff_latency_seconds{instance!="host-3"})"#,
];

const RANGE_QUERIES: &[&str] = &[
    "histogram_count(rate(diff_latency_seconds[1m]))",
    "histogram_sum(diff_latency_seconds)",
    "sum(rate(diff_latency_seconds[2m]))",
];

/// Every query's answer from `base_url`, as (what was asked, answer).
fn answers(base_url: &str, base: i64) -> Vec<(String, Value)> {
    let end = base + (SAMPLES - 1) * STEP_MS;
    let seconds = |ms: i64| ms as f64 / 1000.0;
    let mut out = Vec::new();
    // Mid-way (across instance 1's new buckets and instance 2's reset) and at the end,
    // 7 s after a sample: no range's start falls on a sample, where 2.42's closed
    // ranges and current Prometheus's left-open ones (3.0) differ by design.
    for at in [base + 26 * STEP_MS + 7_000, end + 7_000] {
        for query in INSTANT_QUERIES {
            let asked = format!("/api/v1/query?query={}&time={}", encode(query), seconds(at));
            out.push((
                format!("{query} @ {at}"),
                normalized(answer(base_url, &asked)),
            ));
        }
    }
    for query in RANGE_QUERIES {
        let asked = format!(
            "/api/v1/query_range?query={}&start={}&end={}&step=30",
            encode(query),
            seconds(base + 2 * 60_000 + 7_000),
            seconds(end + 7_000)
        );
        out.push((
            format!("{query} (range)"),
            normalized(answer(base_url, &asked)),
        ));
    }
    out
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
    let req = request(base);
    let prometheus_node = Node::handle(&format!("127.0.0.1:{}", prometheus.port));
    for target in [&prometheus_node, &single, members[1]] {
        let (status, body) = remote_write(target, &req);
        assert_eq!(status, 204, "{}: {body}", target.http_addr);
    }

    let expected = answers(&prometheus.url(""), base);
    // Prometheus must have understood the data, or the comparison proves nothing.
    let at_end = &expected[INSTANT_QUERIES.len()];
    assert_eq!(
        at_end.1["result"].as_array().map(Vec::len),
        Some(4),
        "{}: {}",
        at_end.0,
        at_end.1
    );
    let mut servers = vec![("single node".to_string(), single.url(""))];
    for (i, node) in members.iter().enumerate() {
        servers.push((format!("cluster node {i}"), node.url("")));
    }
    let mut differences = Vec::new();
    for (server, url) in &servers {
        for ((asked, want), (_, got)) in expected.iter().zip(answers(url, base)) {
            if !same(want, &got) {
                differences.push(format!(
                    "{server}: {asked}\n  prometheus: {want}\n  timbala:    {got}"
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
