//! A fixed dashboard of PromQL queries run against each system on the same data: one
//! untimed pass that records how many series each answer has (so the timing compares like
//! with like), then `REPEATS` timed passes.
//!
//! Owns: the query set and its timing. Calls `systems::http`.

use std::time::Instant;

use crate::systems::http;

pub const REPEATS: usize = 10;
/// Range queries cover the last hour of the payload at this step.
const RANGE_S: i64 = 3600;
const STEP_S: i64 = 30;

/// (name, PromQL, range query?)
pub const DASHBOARD: [(&str, &str, bool); 11] = [
    ("cpu rate", r#"rate(node_cpu_seconds_total{mode="user"}[5m])"#, true),
    (
        "cpu busy by instance",
        r#"sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))"#,
        true,
    ),
    ("top receivers", "topk(5, rate(node_network_receive_bytes_total[5m]))", true),
    (
        "latency p99",
        "histogram_quantile(0.99, sum by (le, handler) (rate(http_request_duration_seconds_bucket[5m])))",
        true,
    ),
    ("load smoothed", "avg_over_time(node_load1[5m])", true),
    (
        "nvme writes",
        r#"sum by (instance) (rate(node_disk_written_bytes_total{device=~"nvme.+"}[5m]))"#,
        true,
    ),
    (
        "disk used",
        r#"1 - node_filesystem_avail_bytes{fstype!="tmpfs"} / node_filesystem_size_bytes{fstype!="tmpfs"}"#,
        true,
    ),
    ("targets up", "count by (job) (up)", true),
    ("requests by code", "sum by (code) (rate(http_requests_total[5m]))", false),
    ("interrupt lines", "count(node_interrupts_total)", false),
    (
        "fullest filesystem",
        "max by (instance) (node_filesystem_avail_bytes)",
        false,
    ),
];

pub struct QueryReport {
    /// Series in each answer, in `DASHBOARD` order (None: the query failed).
    pub series: Vec<Option<usize>>,
    /// Latency of every timed query, in seconds.
    pub latencies: Vec<f64>,
    pub errors: usize,
}

fn url(base: &str, query: &str, range: bool, end_s: i64) -> String {
    let q: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
    if range {
        let start = end_s - RANGE_S;
        format!("{base}/api/v1/query_range?query={q}&start={start}&end={end_s}&step={STEP_S}")
    } else {
        format!("{base}/api/v1/query?query={q}&time={end_s}")
    }
}

/// Series in a successful answer.
fn series_count(status: u16, body: &str) -> Option<usize> {
    if status != 200 {
        return None;
    }
    let answer: serde_json::Value = serde_json::from_str(body).ok()?;
    answer["data"]["result"].as_array().map(Vec::len)
}

/// Runs the dashboard against `base` with the evaluation time `end_s` (Unix seconds).
pub fn run(base: &str, end_s: i64) -> QueryReport {
    let urls: Vec<String> = DASHBOARD
        .iter()
        .map(|(_, q, range)| url(base, q, *range, end_s))
        .collect();
    let series = urls
        .iter()
        .map(|u| http("GET", u).ok().and_then(|(s, b)| series_count(s, &b)))
        .collect();
    let mut report = QueryReport {
        series,
        latencies: Vec::with_capacity(REPEATS * urls.len()),
        errors: 0,
    };
    for _ in 0..REPEATS {
        for u in &urls {
            let started = Instant::now();
            let answer = http("GET", u);
            report.latencies.push(started.elapsed().as_secs_f64());
            if !matches!(answer, Ok((200, _))) {
                report.errors += 1;
            }
        }
    }
    report
}
