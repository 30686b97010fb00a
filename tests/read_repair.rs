//! Acceptance test of read repair (issue 12; ADR 0007) with real processes on
//! 127.0.0.1: a replica that missed samples (written only to the other two owners'
//! internal write, as when a hint was lost) gets exactly those samples back in the
//! background after a query reads the series; a complete series is never rewritten; a
//! node that does not answer is not taken for a lagging one. Counted on `/metrics`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use timbala::model::{Labels, Sample, Series};

const METRIC: &str = "repaired";
const SERIES: usize = 40;
/// Series whose odd-second samples one replica never got.
const GAPPY: usize = 10;
const SECONDS: i64 = 30;

fn labels(i: usize) -> Labels {
    Labels::from_pairs([("__name__", METRIC.to_string()), ("i", i.to_string())])
}

/// Series `i` at the given seconds after `t0`.
fn series(i: usize, t0: i64, seconds: impl Iterator<Item = i64>) -> Series {
    Series {
        labels: labels(i),
        samples: seconds
            .map(|s| Sample::new(t0 + s * 1000, (i as i64 * 1000 + s) as f64))
            .collect(),
    }
}

/// Samples per series a node holds itself.
fn local_counts(node: &Node) -> BTreeMap<String, usize> {
    read_samples_at(
        node,
        LOCAL_READ,
        vec![eq("__name__", METRIC)],
        0,
        i64::MAX / 2,
    )
    .expect("local read")
    .into_iter()
    .map(|(labels, samples)| {
        let i = labels
            .iter()
            .find(|(n, _)| n == "i")
            .map(|(_, v)| v.clone())
            .expect("i label");
        (i, samples.len())
    })
    .collect()
}

fn repair_samples(node: &Node, outcome: &str) -> f64 {
    let exposition = get(&node.url("/metrics")).1;
    metric_value(
        &exposition,
        &format!("timbala_read_repair_samples_total{{outcome=\"{outcome}\"}}"),
    )
    .unwrap_or(0.0)
}

fn query_sample_count(node: &Node, at_s: f64) -> usize {
    let url = node.url(&format!(
        "/api/v1/query?query={METRIC}%5B5m%5D&time={at_s:.3}"
    ));
    let (code, body) = get(&url);
    assert_eq!(code, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
    json["data"]["result"]
        .as_array()
        .expect("matrix")
        .iter()
        .map(|s| s["values"].as_array().map_or(0, Vec::len))
        .sum()
}

#[test]
fn a_read_writes_the_missing_samples_back_to_the_lagging_owner() {
    let mut cluster = start_cluster(3, &[]);
    {
        let nodes: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
        wait_converged(&nodes, 3, Duration::from_secs(30));
    }
    let t0 = now_ms() - 120_000;
    // Every series' even seconds on all three nodes (3 nodes: each owns every series);
    // the odd seconds of the first GAPPY series on nodes 0 and 1 only.
    let even: Vec<Series> = (0..SERIES)
        .map(|i| series(i, t0, (0..SECONDS).step_by(2)))
        .collect();
    for c in &cluster {
        write_to_one(&c.node, &even);
    }
    let odd: Vec<Series> = (0..GAPPY)
        .map(|i| series(i, t0, (1..SECONDS).step_by(2)))
        .collect();
    write_to_one(&cluster[0].node, &odd);
    write_to_one(&cluster[1].node, &odd);
    let missing = GAPPY * (SECONDS as usize / 2);
    let lagging = &cluster[2].node;
    let before = local_counts(lagging);
    assert_eq!(
        before.values().sum::<usize>(),
        SERIES * SECONDS as usize / 2
    );

    // One query through node 1 reads every series from all three nodes.
    let at_s = (t0 + SECONDS * 1000) as f64 / 1000.0;
    let total = SERIES * (SECONDS as usize / 2) + missing;
    assert_eq!(query_sample_count(&cluster[1].node, at_s), total);
    let queried = Instant::now();
    let repaired = {
        let started = Instant::now();
        loop {
            let counts = local_counts(lagging);
            if counts.values().sum::<usize>() == total {
                break started.elapsed();
            }
            assert!(
                queried.elapsed() < Duration::from_secs(30),
                "not repaired: {counts:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    println!("{missing} missing samples written back {repaired:?} after the query answered");
    let asked = &cluster[1].node;
    assert_eq!(repair_samples(asked, "found"), missing as f64);
    assert_eq!(repair_samples(asked, "written"), missing as f64);
    assert_eq!(repair_samples(asked, "dropped_queue_full"), 0.0);
    // The repaired copy is sample-identical to the others.
    let read = |node: &Node| {
        read_samples_at(
            node,
            LOCAL_READ,
            vec![eq("__name__", METRIC)],
            0,
            i64::MAX / 2,
        )
        .expect("local read")
    };
    assert_eq!(read(lagging), read(&cluster[0].node));

    // In sync now: another read finds nothing to repair.
    assert_eq!(query_sample_count(&cluster[0].node, at_s), total);
    assert_eq!(query_sample_count(&cluster[1].node, at_s), total);
    assert_eq!(repair_samples(asked, "found"), missing as f64);
    assert_eq!(repair_samples(&cluster[0].node, "found"), 0.0);

    // A node that does not answer is missing from the read, not lagging: with node 2
    // killed, samples only nodes 0 and 1 have are not queued for it.
    cluster[2].node.kill();
    let late = vec![series(GAPPY, t0, SECONDS..SECONDS + 1)];
    write_to_one(&cluster[0].node, &late);
    let (code, body) = get(&cluster[0].node.url(&format!(
        "/api/v1/query?query={METRIC}%5B5m%5D&time={:.3}",
        at_s + 1.0
    )));
    assert_eq!(code, 200, "{body}");
    // Node 1 answered without the late sample: it lags, and gets it; node 2 is not asked.
    let started = Instant::now();
    while repair_samples(&cluster[0].node, "written") < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "late sample not repaired"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(repair_samples(&cluster[0].node, "found"), 1.0);
    assert_eq!(repair_samples(&cluster[0].node, "dropped_target_down"), 0.0);
}
