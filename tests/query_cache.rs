//! Acceptance tests of the range query result cache (issue 13 bar 3, ADR 0024) with the
//! real binary: a dashboard's 1 h / 30 s range query repeated with its window shifted
//! reuses the cached steps (hit counter, timings printed) and answers exactly what the
//! same query with `nocache=1` answers; late writes, repairs (backfill) and deletions
//! inside a cached range change the next answer; in a 3-node keyed cluster a late write
//! that lands on another node only is seen by the coordinator's cached answer; and
//! random shifted windows agree with and without the cache.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use timbala::cluster::keys::ClusterKeys;
use timbala::model::{Labels, Sample, Series};
use timbala::proto;

const STEP_MS: i64 = 30_000;
const HOUR_MS: i64 = 3_600_000;
const SCRAPE_MS: i64 = 15_000;
const DASHBOARD: &str = "sum by (job)(rate(x[5m]))";

/// `series` counters `x{job="j<i % 6>", instance="i<i>"}` scraped every 15 s
/// from two hours before `now` to `now`, written in batches.
fn write_counters(node: &Node, series: usize, now: i64) {
    let first = (now - 2 * HOUR_MS) / SCRAPE_MS * SCRAPE_MS;
    let times: Vec<i64> = (0..)
        .map(|k| first + k * SCRAPE_MS)
        .take_while(|&t| t <= now)
        .collect();
    for batch in (0..series).collect::<Vec<_>>().chunks(100) {
        let timeseries = batch
            .iter()
            .map(|&i| {
                let samples: Vec<(i64, f64)> = times
                    .iter()
                    .enumerate()
                    .map(|(k, &t)| (t, (k * (i % 7 + 1)) as f64))
                    .collect();
                ts(
                    &[
                        ("__name__", "x"),
                        ("job", &format!("j{}", i % 6)),
                        ("instance", &format!("i{i}")),
                    ],
                    &samples,
                )
            })
            .collect();
        let (code, body) = remote_write(
            node,
            &proto::WriteRequest {
                timeseries,
                metadata: vec![],
            },
        );
        assert_eq!(code, 204, "{body}");
    }
}

/// A range query's whole JSON answer (parsed) and how long it took.
fn range_query(
    node: &Node,
    query: &str,
    (start, end, step): (i64, i64, i64),
    nocache: bool,
) -> (serde_json::Value, Duration) {
    let secs = |ms: i64| format!("{:.3}", ms as f64 / 1000.0);
    let (start, end, step) = (secs(start), secs(end), secs(step));
    let mut form = vec![
        ("query", query),
        ("start", &start),
        ("end", &end),
        ("step", &step),
    ];
    if nocache {
        form.push(("nocache", "1"));
    }
    let began = Instant::now();
    let (code, body) = post_form(&node.url("/api/v1/query_range"), &form);
    let took = began.elapsed();
    assert_eq!(code, 200, "{query}: {body}");
    let value: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(value["status"], "success", "{body}");
    (value, took)
}

/// The cached answer of a window, checked against the uncached one.
fn cached_equals_uncached(node: &Node, query: &str, window: (i64, i64, i64)) -> serde_json::Value {
    let (cached, _) = range_query(node, query, window, false);
    let (uncached, _) = range_query(node, query, window, true);
    assert_eq!(
        cached, uncached,
        "{query} over {window:?}: the cached answer differs"
    );
    cached
}

fn cache_metric(node: &Node, name: &str) -> f64 {
    let exposition = get(&node.url("/metrics")).1;
    metric_value(&exposition, &format!("timbala_query_cache_{name}"))
        .unwrap_or_else(|| panic!("timbala_query_cache_{name} missing from /metrics"))
}

/// The `job` labels of a matrix answer.
fn jobs(answer: &serde_json::Value) -> Vec<String> {
    answer["data"]["result"]
        .as_array()
        .expect("matrix")
        .iter()
        .map(|s| s["metric"]["job"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// An hour-long dashboard window ending `back` steps before `end`.
fn dashboard_window(end: i64, back: i64) -> (i64, i64, i64) {
    let end = end - back * STEP_MS;
    (end - HOUR_MS, end, STEP_MS)
}

fn aligned_now() -> i64 {
    now_ms() / STEP_MS * STEP_MS
}

#[test]
fn a_shifted_dashboard_window_reuses_cached_steps() {
    let node = Node::start(&[]);
    for family in [
        "hits_total",
        "misses_total",
        "bypassed_total",
        "evictions_total",
        "invalidations_total",
        "bytes",
        "entries",
    ] {
        cache_metric(&node, family);
    }
    assert_eq!(
        cache_metric(&node, "max_bytes"),
        64.0 * 1024.0 * 1024.0,
        "64 MiB by default"
    );
    let series = 1200;
    let written = now_ms();
    write_counters(&node, series, written);
    let end = aligned_now();
    let shifts = 6;
    let (first, first_took) = range_query(&node, DASHBOARD, dashboard_window(end, shifts), false);
    assert_eq!(jobs(&first).len(), 6, "one series per job");
    // `x` does not look like a counter's name: every step raises Prometheus's info,
    // which cached steps must bring along.
    assert!(
        first["infos"]
            .to_string()
            .contains("might not be a counter"),
        "{first}"
    );
    let hits_before = cache_metric(&node, "hits_total");
    let mut repeats = Vec::new();
    for back in (0..shifts).rev() {
        let window = dashboard_window(end, back);
        let (cached, took) = range_query(&node, DASHBOARD, window, false);
        let (uncached, uncached_took) = range_query(&node, DASHBOARD, window, true);
        assert_eq!(cached, uncached, "window {window:?}");
        repeats.push((took, uncached_took));
    }
    let hits = cache_metric(&node, "hits_total") - hits_before;
    assert_eq!(hits, shifts as f64, "every shifted window hit the cache");
    assert!(cache_metric(&node, "steps_cached_total") > 0.0);
    assert!(cache_metric(&node, "entries") >= 1.0);
    assert!(cache_metric(&node, "bytes") > 0.0);
    println!(
        "{series} series, {DASHBOARD}, 1h at 30s: first evaluation {first_took:?}; \
         shifted by 30s (cached, nocache=1): {repeats:?}"
    );

    // nocache takes a boolean only.
    let (code, body) = post_form(
        &node.url("/api/v1/query_range"),
        &[
            ("query", DASHBOARD),
            ("start", "0"),
            ("end", "60"),
            ("step", "30"),
            ("nocache", "maybe"),
        ],
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"errorType\":\"bad_data\""), "{body}");
    assert!(body.contains("nocache"), "{body}");

    // Windows at the ends of time answer as without the cache (and nothing panics).
    for (start, end, step) in [
        (
            "-292273086-05-16T16:47:06Z",
            "292277026596-12-04T15:30:07Z",
            "1000000000000000w",
        ),
        ("-9000000000000", "-8999999999000", "1000"),
        ("9000000000000", "9000000000060", "30"),
    ] {
        let ask = |nocache: &str| {
            let form = [
                ("query", "vector(1) + sum(x)"),
                ("start", start),
                ("end", end),
                ("step", step),
                ("nocache", nocache),
            ];
            post_form(&node.url("/api/v1/query_range"), &form)
        };
        let cached = ask("0");
        assert_eq!(cached, ask("0"), "{start}..{end}");
        assert_eq!(cached, ask("1"), "{start}..{end}");
    }
}

/// `Series` of `x{job="late"}` with samples every 15 s in `[from, to]`.
fn late_series(from: i64, to: i64) -> Series {
    Series {
        labels: Labels::from_pairs([("__name__", "x"), ("job", "late"), ("instance", "l")]),
        samples: (0..)
            .map(|k| from + k * SCRAPE_MS)
            .take_while(|&t| t <= to)
            .enumerate()
            .map(|(k, t)| Sample::new(t, k as f64 * 10.0))
            .collect(),
    }
}

/// Stores `batch` on one node only over an internal route (`/internal/v1/write` or
/// `/internal/v1/backfill`), as replication or a repair would, signed when `keys`.
fn store_on_one(node: &Node, path: &str, batch: &[Series], keys: Option<&ClusterKeys>) {
    let body = timbala::replication::encode_series(batch);
    let mut headers = vec![("X-Timbala-Routed".to_string(), "1".to_string())];
    if let Some(keys) = keys {
        headers.push(cluster_credential(keys, path, &body));
    }
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let (code, answer) = post(&node.url(path), &headers, &body);
    assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&answer));
}

/// Runs the dashboard on the window ending 10 steps before `end` and on the one ending
/// 9 steps before (a hit), and returns the second window.
fn warm(node: &Node, end: i64) -> (i64, i64, i64) {
    range_query(node, DASHBOARD, dashboard_window(end, 10), false);
    let window = dashboard_window(end, 9);
    let hits = cache_metric(node, "hits_total");
    cached_equals_uncached(node, DASHBOARD, window);
    assert_eq!(cache_metric(node, "hits_total"), hits + 1.0);
    window
}

#[test]
fn late_writes_repairs_and_deletions_inside_a_cached_range_change_the_next_answer() {
    let node = Node::start(&["--web-enable-admin-api"]);
    write_counters(&node, 60, now_ms());
    let end = aligned_now();
    let window = warm(&node, end);
    let invalidations = cache_metric(&node, "invalidations_total");

    // An out-of-order write through the public API, 40 minutes back.
    let late = late_series(end - 45 * 60_000, end - 35 * 60_000);
    let request = proto::WriteRequest {
        timeseries: vec![ts(
            &[("__name__", "x"), ("job", "late"), ("instance", "l")],
            &late.samples.iter().map(|s| (s.t, s.v)).collect::<Vec<_>>(),
        )],
        metadata: vec![],
    };
    let (code, body) = remote_write(&node, &request);
    assert_eq!(code, 204, "{body}");
    let answer = cached_equals_uncached(&node, DASHBOARD, window);
    assert!(jobs(&answer).contains(&"late".to_string()), "{answer}");
    assert!(cache_metric(&node, "invalidations_total") > invalidations);

    // A deletion of that series.
    let (code, body) = post_form(
        &node.url("/api/v1/admin/tsdb/delete_series"),
        &[("match[]", "x{job=\"late\"}")],
    );
    assert_eq!(code, 204, "{body}");
    let answer = cached_equals_uncached(&node, DASHBOARD, window);
    assert!(!jobs(&answer).contains(&"late".to_string()), "{answer}");

    // A repair (backfill) older than the out-of-order window: stored as a block.
    let old_end = end - 3 * STEP_MS;
    let window = warm(&node, old_end);
    // Older than the out-of-order window (1 h): the repair writes it as a new block.
    let repaired = late_series(old_end - 68 * 60_000, old_end - 62 * 60_000);
    store_on_one(&node, "/internal/v1/backfill", &[repaired], None);
    let answer = cached_equals_uncached(&node, DASHBOARD, window);
    assert!(jobs(&answer).contains(&"late".to_string()), "{answer}");
}

#[test]
fn a_late_write_on_another_node_reaches_the_coordinators_cached_answer() {
    let keys_dir = tempfile::tempdir().expect("temp dir");
    let key = {
        use base64::Engine as _;
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::StdRng::from_os_rng(), &mut bytes);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let key_file = keys_dir.path().join("cluster.key");
    std::fs::write(&key_file, format!("{key}\n")).expect("key file");
    let keys = ClusterKeys::load(&key_file).expect("keys");
    let mut members = start_cluster_with(3, &[], |_| MemberSetup {
        args: vec!["--cluster-key-file".into(), key_file.display().to_string()],
        ..MemberSetup::default()
    });
    let nodes: Vec<&Node> = members.iter().map(|m| &m.node).collect();
    wait_converged(&nodes, 3, Duration::from_secs(60));
    write_counters(nodes[0], 60, now_ms());
    let coordinator = nodes[2];
    let end = aligned_now();
    let window = warm(coordinator, end);
    let before = cached_equals_uncached(coordinator, DASHBOARD, window);
    assert!(!jobs(&before).contains(&"late".to_string()));

    // Samples 40 minutes old stored on node 1 only: the coordinator's own data lacks
    // them, only node 1's change log knows.
    let late = late_series(end - 45 * 60_000, end - 35 * 60_000);
    store_on_one(nodes[1], "/internal/v1/write", &[late], Some(&keys));
    let hits = cache_metric(coordinator, "hits_total");
    let answer = cached_equals_uncached(coordinator, DASHBOARD, window);
    assert!(jobs(&answer).contains(&"late".to_string()), "{answer}");
    assert_eq!(cache_metric(coordinator, "hits_total"), hits + 1.0);

    // The next shift is served from the cache again, still complete.
    let hits = cache_metric(coordinator, "hits_total");
    let next = cached_equals_uncached(coordinator, DASHBOARD, dashboard_window(end, 8));
    assert!(jobs(&next).contains(&"late".to_string()));
    assert_eq!(cache_metric(coordinator, "hits_total"), hits + 1.0);
    drop(nodes);

    // A node dies: its changes cannot be checked, so the cache is neither used nor
    // filled, and the degraded answer says so.
    members[1].node.kill();
    let coordinator = &members[2].node;
    let (hits, bypassed) = (
        cache_metric(coordinator, "hits_total"),
        cache_metric(coordinator, "bypassed_total"),
    );
    for back in [7, 6] {
        let (degraded, _) = range_query(coordinator, DASHBOARD, dashboard_window(end, back), false);
        assert!(
            degraded["warnings"]
                .as_array()
                .is_some_and(|w| !w.is_empty()),
            "{degraded}"
        );
    }
    assert_eq!(cache_metric(coordinator, "hits_total"), hits);
    assert_eq!(cache_metric(coordinator, "bypassed_total"), bypassed + 2.0);

    // Back (a new process: a new change-log epoch), the cache starts over and answers
    // completely again.
    members[1].spawn();
    members[1].node.wait_ready(Duration::from_secs(60));
    let nodes: Vec<&Node> = members.iter().map(|m| &m.node).collect();
    wait_converged(&nodes, 3, Duration::from_secs(60));
    let coordinator = nodes[2];
    for back in [6, 5] {
        let answer = cached_equals_uncached(coordinator, DASHBOARD, dashboard_window(end, back));
        assert!(answer.get("warnings").is_none(), "{answer}");
        assert!(jobs(&answer).contains(&"late".to_string()));
    }
}

#[test]
fn random_shifted_windows_agree_with_and_without_the_cache() {
    let node = Node::start(&[]);
    let now = now_ms();
    write_counters(&node, 50, now);
    let seed: u64 = std::env::var("CACHE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::RngCore::next_u64(&mut rand::rngs::StdRng::from_os_rng()));
    println!("CACHE_SEED={seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let queries = [
        DASHBOARD,
        "x",
        "sum(rate(x[1m])) - sum(rate(x[1m] offset 5m))",
        "max_over_time(sum by (job)(rate(x[2m]))[10m:1m])",
        "count(x > 100) or vector(0)",
        "topk(2, sum by (instance)(x))",
        "time() - timestamp(x{instance=\"i3\"})",
    ];
    let steps = [15_000, 30_000, 60_000];
    let hits = cache_metric(&node, "hits_total");
    for _ in 0..40 {
        let query = queries[rng.random_range(0..queries.len())];
        let step = steps[rng.random_range(0..steps.len())];
        // A window somewhere in the data, shifted forward a few steps at a time.
        let mut start = now - 100 * 60_000 + rng.random_range(0..40) * step;
        let len = rng.random_range(1..120) * step;
        for _ in 0..rng.random_range(1..4) {
            let end = start + len + rng.random_range(0..step);
            cached_equals_uncached(&node, query, (start, end, step));
            start += rng.random_range(0..4) * step;
        }
    }
    assert!(
        cache_metric(&node, "hits_total") > hits,
        "some windows were served from the cache"
    );
}
