//! The native-histogram workload both differential checks use (`tests/
//! histogram_differential.rs` against a local Prometheus 2.42, and the docker-compose
//! suite's driver against the stack's): integer histograms of four instances over ten
//! minutes at 15 s, the queries whose answers 2.42 and current Prometheus agree on, and
//! how two JSON answers are compared. Calls `timbala::proto` only.
//!
//! The data: schema 0 and schema 3, a zero bucket, negative buckets on one instance,
//! buckets that appear half-way (the layout widens) and a counter reset; they exercise
//! rate and increase across resets and layout changes, sums across schemas, and the
//! JSON `histogram`/`histograms` shapes.
//!
//! Evaluation times are 7 s after a sample, so that no range selector starts exactly on
//! a sample: Prometheus 3.0 made ranges left-open (2.42's include a sample at their
//! start), and Timbala follows current Prometheus. Range queries start two minutes into
//! the data: where a rate's range holds a series' first samples, current Prometheus
//! stops the extrapolation at the histogram count's zero point, as it long did for float
//! counters, and 2.42 does not; for the same reason the counter reset does not restart
//! from zero.
//!
//! Left out on purpose: `histogram_quantile` and `histogram_fraction` inside
//! exponential buckets (Prometheus 2.51 changed their interpolation from linear to
//! exponential; the quantile asked here lies in the zero bucket, which both interpolate
//! linearly), float and gauge histograms and custom buckets (2.42's remote-write
//! receiver takes integer histograms only), and functions 2.42 does not have for
//! histograms.

#![allow(dead_code)]

use serde_json::Value;
use timbala::proto::histogram::{Count, ZeroCount};
use timbala::proto::{self, BucketSpan};

pub const STEP_MS: i64 = 15_000;
pub const SAMPLES: i64 = 41;

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

/// The workload's remote-write request: series `metric`, first sample at `base` (ms).
pub fn request(metric: &str, base: i64) -> proto::WriteRequest {
    let timeseries = (0..4u64)
        .map(|i| {
            let schema = if i % 2 == 0 { 0 } else { 3 };
            let instance = format!("host-{i}");
            let label = |name: &str, value: &str| proto::Label {
                name: name.into(),
                value: value.into(),
            };
            proto::TimeSeries {
                labels: vec![
                    label("__name__", metric),
                    label("instance", &instance),
                    label("job", if i < 2 { "api" } else { "db" }),
                ],
                histograms: (0..SAMPLES)
                    .map(|step| histogram(base + step * STEP_MS, schema, &observed(i, step)))
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    proto::WriteRequest {
        timeseries,
        metadata: vec![],
    }
}

pub fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The result with its series in label order (servers may order them differently).
pub fn normalized(mut data: Value) -> Value {
    if let Some(result) = data["result"].as_array_mut() {
        result.sort_by_key(|series| series["metric"].to_string());
    }
    data
}

/// Whether two answers agree: same shape and strings, numbers (and numeric strings) equal
/// to a relative 1e-9.
pub fn same(a: &Value, b: &Value) -> bool {
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
pub const INSTANT_QUERIES: &[&str] = &[
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

pub const RANGE_QUERIES: &[&str] = &[
    "histogram_count(rate(diff_latency_seconds[1m]))",
    "histogram_sum(diff_latency_seconds)",
    "sum(rate(diff_latency_seconds[2m]))",
];

/// Every query (over series `metric`, data from `base`) as the API paths to ask, with
/// a name for reports.
pub fn queries(metric: &str, base: i64) -> Vec<(String, String)> {
    let end = base + (SAMPLES - 1) * STEP_MS;
    let seconds = |ms: i64| ms as f64 / 1000.0;
    let mut out = Vec::new();
    // Mid-way (across instance 1's new buckets and instance 2's reset) and at the end,
    // 7 s after a sample (see the module comment).
    for at in [base + 26 * STEP_MS + 7_000, end + 7_000] {
        for query in INSTANT_QUERIES {
            let query = query.replace("diff_latency_seconds", metric);
            let path = format!(
                "/api/v1/query?query={}&time={}",
                encode(&query),
                seconds(at)
            );
            out.push((format!("{query} @ {at}"), path));
        }
    }
    for query in RANGE_QUERIES {
        let query = query.replace("diff_latency_seconds", metric);
        let path = format!(
            "/api/v1/query_range?query={}&start={}&end={}&step=30",
            encode(&query),
            seconds(base + 2 * 60_000 + 7_000),
            seconds(end + 7_000)
        );
        out.push((format!("{query} (range)"), path));
    }
    out
}
