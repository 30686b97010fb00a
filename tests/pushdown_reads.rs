//! Acceptance test of aggregation pushdown (ADR 0029) with real processes on 127.0.0.1:
//! three nodes, one started with `--query-pushdown=false`. Every pushed-down shape asked
//! through a node with pushdown gives the answer (values up to promqltest's tolerance,
//! and annotations) the node without it gives from series, and is counted as pushed
//! (and is not with `nopushdown=1`), also while another node is stopped;
//! with the newest samples of every series on two of its three owners only, the shares'
//! digests disagree, the aggregation is evaluated from series instead, and the answer
//! holds every sample.

mod common;

use std::time::Duration;

use common::*;
use timbala::model::{Labels, Sample, Series};

fn counter(node: &Node, name: &str) -> f64 {
    metric_value(&get(&node.url("/metrics")).1, name).unwrap_or(0.0)
}

const PUSHED: &str = "timbala_fanout_pushdowns_total{outcome=\"pushed\"}";
const DECLINED: &str = "timbala_fanout_pushdowns_total{outcome=\"declined\"}";

/// promqltest's float comparison (Prometheus's `almost.Equal`, epsilon 1e-6).
fn almost_equal(a: f64, b: f64) -> bool {
    if a == b || (a.is_nan() && b.is_nan()) {
        return true;
    }
    let (sum, diff) = (a.abs() + b.abs(), (a - b).abs());
    if a == 0.0 || b == 0.0 || sum < f64::MIN_POSITIVE {
        return diff < 1e-6 * f64::MIN_POSITIVE;
    }
    diff / sum.min(f64::MAX) < 1e-6
}

/// The value strings of a query answer's `[t, "v"]` pairs, parsed.
fn values(pairs: &serde_json::Value) -> Vec<(f64, f64)> {
    let pair = |p: &serde_json::Value| {
        let t = p[0].as_f64().expect("a timestamp");
        let v: f64 = p[1].as_str().expect("a value").parse().expect("a number");
        (t, v)
    };
    match pairs.as_array() {
        Some(list) if list.first().is_some_and(|p| p.is_array()) => list.iter().map(pair).collect(),
        _ => vec![pair(pairs)],
    }
}

/// A query answer reduced to what must agree: per series its labels and points, and
/// the sorted warnings and infos.
type Answer = (Vec<(String, Vec<(f64, f64)>)>, Vec<String>, Vec<String>);

fn ask(node: &Node, path_and_query: &str) -> Answer {
    let (code, body) = get(&node.url(path_and_query));
    assert_eq!(code, 200, "{path_and_query}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let mut series: Vec<(String, Vec<(f64, f64)>)> = json["data"]["result"]
        .as_array()
        .expect("a vector or matrix")
        .iter()
        .map(|s| {
            let points = s.get("values").unwrap_or(&s["value"]);
            (s["metric"].to_string(), values(points))
        })
        .collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    let notes = |key: &str| {
        let mut list: Vec<String> = json[key]
            .as_array()
            .map(|l| l.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default();
        list.sort();
        list
    };
    (series, notes("warnings"), notes("infos"))
}

fn assert_same(query: &str, pushed: &Answer, unpushed: &Answer) {
    assert_eq!(pushed.1, unpushed.1, "warnings of {query}");
    assert_eq!(pushed.2, unpushed.2, "infos of {query}");
    let labels = |a: &Answer| a.0.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>();
    assert_eq!(labels(pushed), labels(unpushed), "series of {query}");
    for ((labels, a), (_, b)) in pushed.0.iter().zip(&unpushed.0) {
        assert_eq!(a.len(), b.len(), "points of {query} {labels}");
        for (p, q) in a.iter().zip(b) {
            assert!(
                p.0 == q.0 && almost_equal(p.1, q.1),
                "{query} {labels}: pushed {p:?}, unpushed {q:?}"
            );
        }
    }
}

fn encode(q: &str) -> String {
    q.replace('%', "%25")
        .replace(' ', "%20")
        .replace('[', "%5B")
        .replace(']', "%5D")
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('{', "%7B")
        .replace('}', "%7D")
        .replace('"', "%22")
        .replace('=', "%3D")
}

const SHAPES: &[&str] = &[
    "sum by (instance) (rate(pd_x[5m]))",
    "count without (cpu) (irate(pd_x[5m]))",
    "min by (cpu) (increase(pd_x[5m]))",
    "max(delta(pd_g[5m]))",
    "avg by (instance) (idelta(pd_g[5m]))",
    "group by (instance) (max_over_time(pd_g[5m]))",
    "sum without (cpu) (avg_over_time(pd_g[5m] offset 1m))",
    "sum(pd_g)",
    "avg without (instance) (pd_g)",
    "min(pd_g)",
    "max by (cpu) (pd_x)",
    // Two pushed aggregations under one operator.
    "sum by (instance) (rate(pd_x[5m])) / on (instance) count by (instance) (pd_x)",
    // rate of a gauge: the "might not be a counter" info must travel with the partials.
    "sum(rate(pd_g[5m]))",
];

#[test]
fn pushed_down_aggregations_answer_as_the_ordinary_plan_and_fall_back_when_owners_disagree() {
    // Anti-entropy off: nothing but the reads under test may repair the gaps.
    let cluster = start_cluster_with(3, &[], |i| MemberSetup {
        args: [
            vec!["--anti-entropy-interval".to_string(), "0s".to_string()],
            if i == 0 {
                vec!["--query-pushdown=false".to_string()]
            } else {
                Vec::new()
            },
        ]
        .concat(),
        gid: None,
    });
    let nodes: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
    wait_converged(&nodes, 3, Duration::from_secs(30));
    let (off, on) = (nodes[0], nodes[1]);
    let t0 = (now_ms() / 60_000) * 60_000 - 30 * 60_000;

    // Every owner holds every sample (3 nodes: every node owns every series).
    let mut batch = Vec::new();
    for i in 0..60 {
        let labels = |name: &str| {
            Labels::from_pairs([
                ("__name__", name.to_string()),
                ("instance", format!("host-{}", i / 10)),
                ("cpu", (i % 10).to_string()),
            ])
        };
        let counter: Vec<Sample> = (0..100)
            .map(|s| {
                // A reset in some series, to give rate something to correct.
                let v = if i % 7 == 0 && s > 60 {
                    s - 60
                } else {
                    s * (i + 1)
                };
                Sample::new(t0 + s * 15_000, v as f64 * 1.25)
            })
            .collect();
        let gauge: Vec<Sample> = (0..100)
            .map(|s| Sample::new(t0 + s * 15_000, ((i * 31 + s * 17) % 97) as f64 / 3.0))
            .collect();
        batch.push(Series {
            labels: labels("pd_x"),
            samples: counter,
        });
        batch.push(Series {
            labels: labels("pd_g"),
            samples: gauge,
        });
    }
    for node in &nodes {
        write_to_one(node, &batch);
    }

    let (start, end) = ((t0 + 5 * 60_000) / 1000, (t0 + 25 * 60_000) / 1000);
    let mut answers = Vec::new();
    for query in SHAPES {
        let q = encode(query);
        for path in [
            format!("/api/v1/query_range?query={q}&start={start}&end={end}&step=60"),
            format!("/api/v1/query?query={q}&time={}", end - 120),
        ] {
            let pushed_before = counter(on, PUSHED);
            let pushed = ask(on, &path);
            assert!(
                counter(on, PUSHED) > pushed_before,
                "{query} was not pushed down"
            );
            let unpushed = ask(off, &path);
            assert!(!unpushed.0.is_empty(), "{query} answers something");
            assert_same(query, &pushed, &unpushed);
            // The per-query bypass reads series on the node that pushes.
            let pushed_before = counter(on, PUSHED);
            let bypassed = ask(on, &format!("{path}&nopushdown=1&nocache=1"));
            assert_eq!(
                counter(on, PUSHED),
                pushed_before,
                "{query}: nopushdown pushed"
            );
            assert_same(query, &bypassed, &unpushed);
            answers.push((query, path, unpushed));
        }
    }
    assert_eq!(
        counter(off, PUSHED),
        0.0,
        "the node without pushdown pushed"
    );

    // A node that stops answering is left behind as in any read (here gossip declares
    // it down while the first query waits), and the series it was to evaluate are
    // evaluated by their next owners in a second round; later queries leave it out.
    let stopped = nodes[2];
    send_signal(stopped, libc::SIGSTOP);
    let resume = Resume(stopped);
    for (query, path, unpushed) in answers.iter().take(4) {
        let pushed_before = counter(on, PUSHED);
        let (series, warnings, _) = ask(on, &format!("{path}&nocache=1"));
        assert!(
            counter(on, PUSHED) > pushed_before,
            "{query} was not pushed down"
        );
        assert!(
            warnings.iter().any(|w| w.contains(&stopped.http_addr)),
            "{query}: {warnings:?}"
        );
        let without_notes = (series, unpushed.1.clone(), unpushed.2.clone());
        assert_same(query, &without_notes, unpushed);
    }
    drop(resume);
    let stopped_id = local_id(stopped);
    wait_until(
        "the stopped node is alive again",
        Duration::from_secs(60),
        || member_state(on, &stopped_id).as_deref() == Some("alive"),
    );

    // The newest samples of every series on two of its three owners only: the digests
    // of the owner that lacks them disagree, and the query is evaluated from series.
    const SERIES: usize = 30;
    const EARLY: i64 = 20;
    const LATE: i64 = 10;
    let slots = slots_of(on);
    let ids: Vec<String> = nodes.iter().map(|n| local_id(n)).collect();
    let node_of = |id: &str| nodes[ids.iter().position(|i| i == id).expect("a member")];
    let t1 = now_ms() - 120_000;
    for i in 0..SERIES {
        let labels = Labels::from_pairs([("__name__", "pd_lag".to_string()), ("i", i.to_string())]);
        let owners = ordered_owners_by_slots(&slots, &labels);
        let sample = |s: i64| Sample::new(t1 + s * 1000, 1.0);
        let early = Series {
            labels: labels.clone(),
            samples: (0..EARLY).map(sample).collect(),
        };
        let late = Series {
            labels,
            samples: (EARLY..EARLY + LATE).map(sample).collect(),
        };
        let lacking = &owners[i % 3];
        for owner in &owners {
            write_to_one(node_of(owner), std::slice::from_ref(&early));
            if owner != lacking {
                write_to_one(node_of(owner), std::slice::from_ref(&late));
            }
        }
    }
    let at = (t1 + (EARLY + LATE) * 1000) as f64 / 1000.0;
    let query = encode("sum(count_over_time(pd_lag[10m]))");
    let declined_before = counter(on, DECLINED);
    let (series, _, _) = ask(on, &format!("/api/v1/query?query={query}&time={at:.3}"));
    assert!(
        counter(on, DECLINED) > declined_before,
        "the shares were used"
    );
    assert_eq!(
        series.first().map(|(_, v)| v[0].1),
        Some((SERIES as i64 * (EARLY + LATE)) as f64),
        "every acknowledged sample counted"
    );
}
