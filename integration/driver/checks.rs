//! What the driver checks: that the stack has converged, that PromQL answers from
//! Prometheus's local storage and from every Timbala node agree, that every sample
//! Prometheus scraped over a window reached every node, that the replicas hold the same
//! data, that Prometheus's remote-write counters show no failed or dropped sample, and
//! that answers given while a node is unreachable name it in their warnings, and that
//! re-replication has finished after a node was replaced.
//!
//! Owns: the query list, the waits (each bounded), the per-window accounting and the
//! warnings expected of answers given while a node is unreachable.
//! Calls `api` only.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::api::{self, RawSeries, NODES, PROMETHEUS};
use crate::histogram_workload;

/// Instant queries compared at one evaluation time: selectors, rate, aggregation,
/// histogram_quantile over scraped histograms, topk/bottomk, offset, *_over_time.
///
/// Left out because Debian's Prometheus 2.42 and Timbala (which follows current
/// Prometheus) legitimately differ: `avg_over_time` (2.42 averages incrementally,
/// current Prometheus sums with Kahan compensation: last digits differ), `sum` over three
/// or more non-integer values (the same: 2.42 adds naively, current Prometheus with
/// Kahan compensation; so `sum by` here groups integers or single rates, and
/// `histogram_quantile` reads each scraped histogram unaggregated), `topk`/`bottomk`
/// over values that tie (which tied series wins is unspecified). Windows that contain the
/// first samples of a counter differ too (2.42 caps the extrapolation towards zero
/// before applying the 1.1-interval threshold, current Prometheus after it), so the
/// driver compares only once the stack has run longer than any window reaches back.
const INSTANT_QUERIES: &[&str] = &[
    "up",
    r#"up{job="timbala"}"#,
    r#"prometheus_http_requests_total{handler="/metrics"}"#,
    r#"{__name__=~"prometheus_tsdb_head_(series|chunks)"}"#,
    r#"scrape_samples_scraped{instance=~"timbala-.*"}"#,
    "rate(prometheus_http_requests_total[30s])",
    "irate(timbala_http_requests_total[10s])",
    "increase(prometheus_tsdb_head_samples_appended_total[1m])",
    "sum by (job) (scrape_samples_scraped)",
    "sum by (instance) (rate(scrape_duration_seconds[30s]))",
    "count by (job) (up)",
    "histogram_quantile(0.9, rate(prometheus_http_request_duration_seconds_bucket[1m]))",
    r#"histogram_quantile(0.5, rate(prometheus_http_request_duration_seconds_bucket{handler="/metrics"}[1m]))"#,
    "histogram_quantile(0.99, rate(timbala_http_request_duration_seconds_bucket[1m]))",
    "topk(3, scrape_duration_seconds)",
    "bottomk(2, scrape_duration_seconds)",
    "up offset 30s",
    "rate(prometheus_http_requests_total[30s] offset 20s)",
    "min_over_time(scrape_duration_seconds[1m])",
    "max_over_time(scrape_samples_scraped[1m])",
    "count_over_time(up[1m])",
    "delta(prometheus_tsdb_head_series[1m])",
    "scrape_samples_scraped / scrape_samples_post_metric_relabeling",
    r#"label_replace(up, "host", "$1", "instance", "(.*):.*")"#,
    "absent(no_such_metric)",
];

/// Range queries compared over the 30 s before the evaluation time, step 5 s.
const RANGE_QUERIES: &[&str] = &[
    "rate(prometheus_http_requests_total[30s])",
    "sum by (job) (up)",
    "histogram_quantile(0.9, rate(timbala_http_request_duration_seconds_bucket[1m]))",
];

const RANGE_SPAN_S: f64 = 30.0;

/// How far before the evaluation time the compared queries read data: the range span
/// plus the longest range selector (1m). The first comparison waits for this much data.
pub const QUERY_REACH_S: f64 = RANGE_SPAN_S + 60.0;

pub fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Polls `ready` every 500 ms until it answers Ok(true) or `timeout` passes; the last
/// reason it was not ready is in the error.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("not ready");
    loop {
        match ready() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {timeout:?} waiting for {what}: {last}"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Hinted batches a node's cluster status lists: (for ring members, for removed nodes).
/// Hints for a removed node are never replayed to it (ADR 0006/0015): the new owners get
/// those samples from the surviving replicas by re-replication instead.
fn backlog_of(data: &serde_json::Value) -> (u64, u64) {
    let removed: BTreeSet<&str> = data["slots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["removed"] == true)
        .filter_map(|s| s["id"].as_str())
        .collect();
    let mut backlog = (0, 0);
    for b in data["handoffBacklog"].as_array().into_iter().flatten() {
        let batches = b["batches"].as_u64().unwrap_or(0);
        if b["target"].as_str().is_some_and(|t| removed.contains(t)) {
            backlog.1 += batches;
        } else {
            backlog.0 += batches;
        }
    }
    backlog
}

/// Every node sees three alive members and no handoff backlog for a ring member, and
/// Prometheus scrapes all four targets.
pub fn cluster_converged() -> Result<bool, String> {
    for (name, base) in NODES {
        let status = api::get_json(&format!("{base}/api/v1/status/cluster"))?;
        let data = &status["data"];
        let alive = data["members"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
        if alive != NODES.len() {
            return Err(format!("{name} sees {alive} alive members"));
        }
        let (backlog, _) = backlog_of(data);
        if backlog > 0 {
            return Err(format!("{name} still holds {backlog} hinted batches"));
        }
    }
    let up = api::api_value(PROMETHEUS, "count(up == 1)")?;
    if up < 4.0 {
        return Err(format!("{up} of 4 targets up"));
    }
    Ok(true)
}

/// Every node's re-replication is idle: its last finished pass ran for the ring it sees
/// now (ADR 0015).
pub fn repair_idle() -> Result<bool, String> {
    for (name, base) in NODES {
        let status = api::get_json(&format!("{base}/api/v1/status/cluster"))?;
        let repair = &status["data"]["repair"];
        if repair["state"] != "idle" {
            return Err(format!("{name} re-replication: {repair}"));
        }
    }
    Ok(true)
}

/// What a replacement left on one node.
pub struct ReplacementNode {
    pub name: &'static str,
    /// Series copies its re-replication sent (`timbala_repair_copies_sent_total`).
    pub copies_sent: f64,
    /// Hinted batches it still holds for removed nodes.
    pub hints_for_removed: u64,
    /// Whether it lists the replaced node's old identity as removed.
    pub lists_old_as_removed: bool,
}

/// Every node's `ReplacementNode` after `old_id` was replaced.
pub fn replacement_report(old_id: &str) -> Result<Vec<ReplacementNode>, String> {
    let mut report = Vec::new();
    for (name, base) in NODES {
        let status = api::get_json(&format!("{base}/api/v1/status/cluster"))?;
        let data = &status["data"];
        let lists_old_as_removed = data["slots"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["id"] == old_id && s["removed"] == true);
        report.push(ReplacementNode {
            name,
            copies_sent: api::exposed_sum(base, "timbala_repair_copies_sent_total")?,
            hints_for_removed: backlog_of(data).1,
            lists_old_as_removed,
        });
    }
    Ok(report)
}

/// While `service` cannot be reached, an instant query on each other node answers 200
/// within 5 s and names it in `warnings` (ADR 0012: an answer given without a node says
/// so). Prints each answer's latency and warnings; returns the failed checks.
pub fn answers_name_unreachable_node(service: &str) -> Vec<String> {
    let unreachable = format!("{service}:9080");
    let mut failures = Vec::new();
    for (name, base) in NODES.iter().filter(|(name, _)| *name != service) {
        let url = format!("{base}/api/v1/query?query=count(up)");
        let started = Instant::now();
        let answer = match api::get_json(&url) {
            Ok(answer) => answer,
            Err(e) => {
                failures.push(format!("query on {name} during the fault: {e}"));
                continue;
            }
        };
        let latency = started.elapsed();
        let warnings: Vec<&str> = answer["warnings"]
            .as_array()
            .map(|w| w.iter().filter_map(|w| w.as_str()).collect())
            .unwrap_or_default();
        println!(
            "  query on {name} during the fault: {:.2} s, warnings {warnings:?}",
            latency.as_secs_f64()
        );
        if !warnings.iter().any(|w| w.contains(&unreachable)) {
            failures.push(format!(
                "query on {name} during the fault: no warning naming {unreachable}"
            ));
        }
        if latency > Duration::from_secs(5) {
            failures.push(format!(
                "query on {name} during the fault took {:.1} s",
                latency.as_secs_f64()
            ));
        }
    }
    failures
}

/// Prometheus has sent every sample up to `t_s` (the remote-write queue's highest sent
/// timestamp is past it).
pub fn remote_write_past(t_s: f64) -> Result<bool, String> {
    let sent = api::api_value(
        PROMETHEUS,
        "prometheus_remote_storage_queue_highest_sent_timestamp_seconds",
    )?;
    if sent < t_s {
        return Err(format!(
            "remote write has sent up to {sent:.3}, need {t_s:.3}"
        ));
    }
    Ok(true)
}

/// Prometheus's remote-write sample counters at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteCounters {
    pub failed: f64,
    pub dropped: f64,
    pub retried: f64,
    pub sent: f64,
}

pub fn write_counters() -> Result<WriteCounters, String> {
    let value = |name: &str| api::api_value(PROMETHEUS, &format!("sum({name})"));
    Ok(WriteCounters {
        failed: value("prometheus_remote_storage_samples_failed_total")?,
        dropped: value("prometheus_remote_storage_samples_dropped_total")?,
        retried: value("prometheus_remote_storage_samples_retried_total")?,
        sent: value("prometheus_remote_storage_samples_total")?,
    })
}

/// Hinted-handoff counters summed over the nodes, to show a fault made the cluster
/// store and replay hints.
#[derive(Clone, Copy, Debug, Default)]
pub struct HandoffCounters {
    per_node: [(f64, f64); 3],
}

pub fn handoff_counters() -> Result<HandoffCounters, String> {
    let mut counters = HandoffCounters::default();
    for (slot, (_, base)) in counters.per_node.iter_mut().zip(NODES) {
        *slot = (
            api::exposed_sum(base, "timbala_handoff_stored_total")?,
            api::exposed_sum(base, "timbala_handoff_delivered_total")?,
        );
    }
    Ok(counters)
}

impl HandoffCounters {
    /// Batches stored as hints and delivered between `before` and `self`; a node whose
    /// counters went down was restarted, so it counts from zero.
    pub fn since(&self, before: &HandoffCounters) -> (f64, f64) {
        let increase = |now: f64, then: f64| if now < then { now } else { now - then };
        self.per_node.iter().zip(before.per_node.iter()).fold(
            (0.0, 0.0),
            |(stored, delivered), (now, then)| {
                (
                    stored + increase(now.0, then.0),
                    delivered + increase(now.1, then.1),
                )
            },
        )
    }
}

/// Compares every query's answer from Prometheus with each node's; returns the number
/// of (query, node) pairs compared and a description of each disagreement.
pub fn compare_queries(at_s: f64) -> (usize, Vec<String>) {
    let mut compared = 0;
    let mut failures = Vec::new();
    let mut check = |label: &str, answer: &dyn Fn(&str) -> Result<String, String>| {
        let expected = match answer(PROMETHEUS) {
            Ok(e) => e,
            Err(e) => {
                failures.push(format!("{label}: Prometheus: {e}"));
                return;
            }
        };
        for (name, base) in NODES {
            compared += 1;
            match answer(base) {
                Ok(got) if got == expected => {}
                Ok(got) => failures.push(format!(
                    "{label} on {name}:\n    prometheus: {}\n    timbala:    {}",
                    clip(&expected),
                    clip(&got)
                )),
                Err(e) => failures.push(format!("{label} on {name}: {e}")),
            }
        }
    };
    for query in INSTANT_QUERIES {
        check(query, &|base| api::promtool_instant(base, query, at_s));
    }
    for query in RANGE_QUERIES {
        let label = format!("range {query}");
        check(&label, &|base| {
            api::promtool_range(base, query, at_s - RANGE_SPAN_S, at_s, 5)
        });
    }
    (compared, failures)
}

/// The native histograms the driver writes (issue 15): Prometheus 2.42 cannot scrape
/// native histograms from anything in the stack (none of its targets exposes them), so
/// the driver writes the same ones to Prometheus's remote-write receiver and to the
/// cluster.
const HISTOGRAM_METRIC: &str = "timbala_integration_native_seconds";

/// Writes the native-histogram workload (`histogram_workload`), its first sample at
/// `base_ms`, to Prometheus and, through the balancer, to the cluster.
pub fn write_native_histograms(base_ms: i64) -> Result<(), String> {
    let request = histogram_workload::request(HISTOGRAM_METRIC, base_ms);
    api::remote_write(PROMETHEUS, &request)?;
    api::remote_write(api::BALANCER, &request)
}

/// Asks every query of the native-histogram workload of Prometheus and of each node
/// (JSON through the HTTP API: promtool 2.42 prints no histograms) and compares the
/// answers, numbers to a relative 1e-9. Returns how many answers were compared and the
/// ones that differ.
pub fn compare_native_histograms(base_ms: i64) -> (usize, Vec<String>) {
    let data = |base: &str, path: &str| -> Result<serde_json::Value, String> {
        let answer = api::get_json(&format!("{base}{path}"))?;
        Ok(histogram_workload::normalized(answer["data"].clone()))
    };
    let mut compared = 0;
    let mut failures = Vec::new();
    for (name, path) in histogram_workload::queries(HISTOGRAM_METRIC, base_ms) {
        let expected = match data(PROMETHEUS, &path) {
            Ok(e) if e["result"].as_array().is_some_and(|r| !r.is_empty()) => e,
            Ok(e) => {
                failures.push(format!("{name}: Prometheus has no answer: {e}"));
                continue;
            }
            Err(e) => {
                failures.push(format!("{name}: Prometheus: {e}"));
                continue;
            }
        };
        for (node, base) in NODES {
            compared += 1;
            match data(base, &path) {
                Ok(got) if histogram_workload::same(&expected, &got) => {}
                Ok(got) => failures.push(format!(
                    "{name} on {node}:\n    prometheus: {}\n    timbala:    {}",
                    clip(&expected.to_string()),
                    clip(&got.to_string())
                )),
                Err(e) => failures.push(format!("{name} on {node}: {e}")),
            }
        }
    }
    (compared, failures)
}

/// The series the remote-read check writes; Prometheus never scrapes it.
const REMOTE_READ_PROBE: &str = "timbala_integration_remote_read_probe";

/// Prometheus's `remote_read` from the cluster. A probe series is written to the cluster
/// (through the balancer) at times before Prometheus's own data starts, so Prometheus can
/// only answer it through remote read (`read_recent: false` consults the cluster exactly
/// for such times). Prometheus's answer must hold the probe's samples and equal every
/// node's answer to the same promtool query. Returns the failed checks.
pub fn remote_read_through_prometheus(before_local_data_s: f64) -> Result<Vec<String>, String> {
    let at_s = before_local_data_s.floor();
    let at_ms = at_s as i64 * 1000;
    let samples = [(at_ms - 60_000, 1.0), (at_ms - 30_000, 2.0), (at_ms, 3.0)];
    let probe = timbala::proto::TimeSeries {
        labels: vec![
            timbala::proto::Label {
                name: "__name__".into(),
                value: REMOTE_READ_PROBE.into(),
            },
            timbala::proto::Label {
                name: "source".into(),
                value: "integration-driver".into(),
            },
        ],
        samples: samples
            .iter()
            .map(|&(timestamp, value)| timbala::proto::Sample { value, timestamp })
            .collect(),
        ..Default::default()
    };
    let request = timbala::proto::WriteRequest {
        timeseries: vec![probe],
        ..Default::default()
    };
    api::remote_write(api::BALANCER, &request)?;

    let query = format!("sum_over_time({REMOTE_READ_PROBE}[2m])");
    let through_prometheus = api::promtool_instant(PROMETHEUS, &query, at_s)?;
    let mut failures = Vec::new();
    let expected_sum = samples.iter().map(|(_, v)| v).sum::<f64>().to_string();
    if !through_prometheus.contains(&format!("\"{expected_sum}\"")) {
        failures.push(format!(
            "remote read: Prometheus answered {query} at {at_s} with {through_prometheus}, \
             expected the probe's sum {expected_sum}"
        ));
    }
    for (name, base) in NODES {
        let direct = api::promtool_instant(base, &query, at_s)?;
        if direct != through_prometheus {
            failures.push(format!(
                "remote read: {name} answers {direct}, Prometheus through remote read {through_prometheus}"
            ));
        }
    }
    println!(
        "\n== remote read: Prometheus answers {query} at {at_s} (before its own data starts) \
         with {through_prometheus}: {}",
        if failures.is_empty() {
            "the probe's samples, same as every node"
        } else {
            "WRONG"
        }
    );
    Ok(failures)
}

pub fn query_count() -> usize {
    INSTANT_QUERIES.len() + RANGE_QUERIES.len()
}

fn clip(s: &str) -> String {
    const MAX: usize = 400;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// One node's view of a window compared with Prometheus's.
#[derive(Debug, Default)]
pub struct NodeAccount {
    pub name: &'static str,
    /// Samples a PromQL query on this node returns (fan-out, replicas merged).
    pub found_query: usize,
    /// Samples in this node's own storage (its replica of every series).
    pub found_local: usize,
    /// Prometheus samples absent from the query answer or from the local replica.
    pub missing: usize,
    /// Series whose samples differ from Prometheus's in either view.
    pub differing_series: usize,
}

/// Prometheus's samples over a window against every node's.
#[derive(Debug, Default)]
pub struct WindowAccount {
    pub series: usize,
    pub written: usize,
    pub nodes: Vec<NodeAccount>,
    /// Series whose local data is not identical on all three nodes.
    pub replica_mismatches: usize,
}

impl WindowAccount {
    pub fn clean(&self) -> bool {
        self.replica_mismatches == 0
            && self
                .nodes
                .iter()
                .all(|n| n.missing == 0 && n.differing_series == 0)
    }
}

/// Accounts for every sample in `[end_s - range_s, end_s]`.
pub fn account_window(end_s: f64, range_s: u64) -> Result<WindowAccount, String> {
    let end_ms = (end_s * 1000.0).floor() as i64;
    let end_s = end_ms as f64 / 1000.0;
    let start_ms = end_ms - i64::try_from(range_s).unwrap_or(0) * 1000;
    let expected = api::query_raw(PROMETHEUS, range_s, end_s)?;
    let mut account = WindowAccount {
        series: expected.len(),
        written: expected.values().map(Vec::len).sum(),
        ..WindowAccount::default()
    };
    let mut locals = Vec::new();
    for (name, base) in NODES {
        let queried = api::query_raw(base, range_s, end_s)?;
        let local = api::read_local(base, start_ms, end_ms)?;
        let (missing_q, differing_q) = compare_series(&expected, &queried);
        let (missing_l, differing_l) = compare_series(&expected, &local);
        account.nodes.push(NodeAccount {
            name,
            found_query: queried.values().map(Vec::len).sum(),
            found_local: local.values().map(Vec::len).sum(),
            missing: missing_q.max(missing_l),
            differing_series: differing_q.max(differing_l),
        });
        locals.push(local);
    }
    account.replica_mismatches = replica_mismatches(&locals);
    Ok(account)
}

/// Samples of `expected` that `got` lacks, and series that are not identical (either
/// side may have a series the other lacks). NaN payloads are not compared: a query
/// answer spells every NaN "NaN", while raw storage keeps the scraped bits.
fn compare_series(expected: &RawSeries, got: &RawSeries) -> (usize, usize) {
    let mut missing = 0;
    let mut differing = 0;
    for (labels, samples) in expected {
        let ours = canonical_nans(samples);
        let theirs = canonical_nans(got.get(labels).map_or(&[][..], Vec::as_slice));
        if theirs != ours {
            differing += 1;
            let have: BTreeSet<_> = theirs.iter().collect();
            missing += ours.iter().filter(|s| !have.contains(s)).count();
        }
    }
    differing += got.keys().filter(|l| !expected.contains_key(*l)).count();
    (missing, differing)
}

fn canonical_nans(samples: &[(i64, u64)]) -> Vec<(i64, u64)> {
    samples
        .iter()
        .map(|&(t, bits)| {
            let bits = if f64::from_bits(bits).is_nan() {
                f64::NAN.to_bits()
            } else {
                bits
            };
            (t, bits)
        })
        .collect()
}

/// Series that are not identical (bit for bit) on every replica.
fn replica_mismatches(replicas: &[RawSeries]) -> usize {
    let all: BTreeSet<_> = replicas.iter().flat_map(|r| r.keys()).collect();
    all.into_iter()
        .filter(|labels| {
            let first = replicas[0].get(*labels);
            replicas[1..].iter().any(|r| r.get(*labels) != first)
        })
        .count()
}
