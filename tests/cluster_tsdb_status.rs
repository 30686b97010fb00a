//! `/api/v1/status/tsdb` answers for the cluster (ADR 0022): every live node counts the
//! series it is the first live owner of, so a series held by three replicas counts
//! once whichever node is asked. Four keyed nodes (with three, every node holds every
//! series and its own head would give the same figures), series written through node
//! 0, statistics asked of node 2: exact counts, `limit`, bad limits, and a killed node
//! (named in `warnings`; its series counted again once gossip declares it down).

#[rustfmt::skip]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use common::{
    get, local_id, member_state, now_ms, remote_write, start_cluster_with, ts, wait_converged,
    wait_until, MemberSetup, Node,
};
use serde_json::{json, Value};
use timbala::proto;

/// (metric, series count, job): the series written, `i` numbering each metric's.
const METRICS: [(&str, usize, &str); 3] =
    [("card_a", 30, "a"), ("card_b", 12, "b"), ("card_c", 5, "a")];

fn tsdb_status(node: &Node, query: &str) -> (u16, Value) {
    let (status, body) = get(&node.url(&format!("/api/v1/status/tsdb{query}")));
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{status} {body}: {e}"));
    (status, json)
}

/// A list of `{name, value}` as pairs.
fn pairs(list: &Value) -> Vec<(String, u64)> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("name").to_string();
            (name, e["value"].as_u64().expect("value"))
        })
        .collect()
}

/// The full statistics the written series must give, computed from `METRICS`: series
/// by metric name, distinct values by label name, bytes by label name and series by
/// label pair (each largest first, ties by name, as Prometheus orders them).
fn expected() -> [Vec<(String, u64)>; 4] {
    let mut by_pair: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (metric, count, job) in METRICS {
        for i in 0..count {
            for (name, value) in [
                ("__name__", metric.to_string()),
                ("job", job.into()),
                ("i", i.to_string()),
            ] {
                *by_pair.entry((name.to_string(), value)).or_default() += 1;
            }
        }
    }
    let mut by_metric = Vec::new();
    let mut values: BTreeMap<String, u64> = BTreeMap::new();
    let mut bytes: BTreeMap<String, u64> = BTreeMap::new();
    let mut pair_list = Vec::new();
    for ((name, value), count) in &by_pair {
        if name == "__name__" {
            by_metric.push((value.clone(), *count));
        }
        *values.entry(name.clone()).or_default() += 1;
        *bytes.entry(name.clone()).or_default() += value.len() as u64 * count;
        pair_list.push((format!("{name}={value}"), *count));
    }
    let sorted = |mut list: Vec<(String, u64)>| {
        list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        list
    };
    [
        sorted(by_metric),
        sorted(values.into_iter().collect()),
        sorted(bytes.into_iter().collect()),
        sorted(pair_list),
    ]
}

const LISTS: [&str; 4] = [
    "seriesCountByMetricName",
    "labelValueCountByLabelName",
    "memoryInBytesByLabelName",
    "seriesCountByLabelValuePair",
];

#[test]
fn tsdb_status_counts_each_series_of_the_cluster_once() {
    let keys_dir = tempfile::tempdir().expect("temp dir");
    let key_file = keys_dir.path().join("cluster.key");
    let key = base64::engine::general_purpose::STANDARD.encode(rand_bytes());
    std::fs::write(&key_file, format!("{key}\n")).expect("write the key");
    let key_arg = key_file.display().to_string();
    let mut cluster = start_cluster_with(4, &[], |_| MemberSetup {
        args: vec!["--cluster-key-file".into(), key_arg.clone()],
        ..MemberSetup::default()
    });
    let nodes: Vec<&Node> = cluster.iter().map(|m| &m.node).collect();
    wait_converged(&nodes, 4, Duration::from_secs(60));

    // card_a at t0, the others a second later: the head range spans both.
    let t0 = now_ms() - 60_000;
    let series = METRICS
        .iter()
        .enumerate()
        .flat_map(|(m, (metric, count, job))| {
            (0..*count).map(move |i| {
                let t = t0 + if m == 0 { 0 } else { 1000 };
                ts(
                    &[("__name__", metric), ("job", job), ("i", &i.to_string())],
                    &[(t, 1.0)],
                )
            })
        })
        .collect();
    let (status, body) = remote_write(
        nodes[0],
        &proto::WriteRequest {
            timeseries: series,
            metadata: vec![],
        },
    );
    assert_eq!(status, 204, "{body}");
    let total: u64 = METRICS.iter().map(|(_, n, _)| *n as u64).sum();

    let asked = nodes[2];
    let (status, answer) = tsdb_status(asked, "?limit=1000");
    assert_eq!(status, 200, "{answer}");
    let data = &answer["data"];
    let [by_metric, by_name, by_bytes, by_pair] = expected();
    assert_eq!(
        data["headStats"],
        json!({
            "numSeries": total,
            "numLabelPairs": by_pair.len(),
            "chunkCount": total,
            "minTime": t0,
            "maxTime": t0 + 1000,
        }),
        "{answer}"
    );
    for (list, want) in LISTS
        .iter()
        .zip([&by_metric, &by_name, &by_bytes, &by_pair])
    {
        assert_eq!(&pairs(&data[list]), want, "{list}");
    }
    assert!(answer.get("warnings").is_none(), "{answer}");
    // Every node gives the same answer; a node's own head holds only its share.
    for node in &nodes {
        assert_eq!(tsdb_status(node, "?limit=1000").1["data"], *data);
    }
    println!(
        "4 nodes: {total} series, {} label pairs counted once through {}",
        by_pair.len(),
        asked.http_addr
    );

    // limit: default 10, and any positive number up to 10,000.
    let (_, default) = tsdb_status(asked, "");
    assert_eq!(
        pairs(&default["data"]["seriesCountByLabelValuePair"]),
        by_pair[..10]
    );
    let (_, two) = tsdb_status(asked, "?limit=2");
    for (list, want) in LISTS
        .iter()
        .zip([&by_metric, &by_name, &by_bytes, &by_pair])
    {
        assert_eq!(
            pairs(&two["data"][list]),
            want[..2.min(want.len())],
            "{list}"
        );
    }
    assert_eq!(two["data"]["headStats"]["numSeries"], total);
    for (bad, message) in [
        ("0", "limit must be a positive number"),
        ("-3", "limit must be a positive number"),
        ("ten", "limit must be a positive number"),
        ("1.5", "limit must be a positive number"),
        ("99999999999999999999", "limit must be a positive number"),
        ("10001", "limit must not exceed 10000"),
    ] {
        let (status, answer) = tsdb_status(asked, &format!("?limit={bad}"));
        assert_eq!(status, 400, "limit={bad}: {answer}");
        assert_eq!(answer["status"], "error");
        assert_eq!(answer["errorType"], "bad_data");
        assert_eq!(answer["error"], message, "limit={bad}");
    }

    // A node killed: until gossip declares it down the answer goes without the series
    // it counts and says so; then the next live owner of each counts it again.
    let victim = 3;
    let victim_id = local_id(&cluster[victim].node);
    let victim_addr = cluster[victim].node.http_addr.clone();
    cluster[victim].node.kill();
    let nodes: Vec<&Node> = cluster.iter().map(|m| &m.node).collect();
    let (status, answer) = tsdb_status(nodes[2], "");
    assert_eq!(status, 200, "{answer}");
    let warnings = answer["warnings"].to_string();
    assert!(
        warnings.contains(&victim_addr),
        "the killed node named: {answer}"
    );
    let counted = answer["data"]["headStats"]["numSeries"]
        .as_u64()
        .expect("numSeries");
    if warnings.contains("partial statistics") {
        assert!(counted < total, "{answer}");
        println!("right after the kill: {counted} of {total} series, partial: {warnings}");
    } else {
        assert_eq!(counted, total, "{answer}");
        println!("right after the kill (already down): {counted} series, {warnings}");
    }
    wait_until(
        "the killed node declared down",
        Duration::from_secs(30),
        || member_state(nodes[2], &victim_id).as_deref() == Some("down"),
    );
    let (status, answer) = tsdb_status(nodes[2], "?limit=1000");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["headStats"]["numSeries"], total, "{answer}");
    assert_eq!(
        pairs(&answer["data"]["seriesCountByLabelValuePair"]),
        by_pair
    );
    let warnings = answer["warnings"].to_string();
    assert!(warnings.contains(&victim_addr), "{answer}");
    assert!(!warnings.contains("partial statistics"), "{answer}");
    println!("with the killed node down: {total} series again, warnings {warnings}");
}

fn rand_bytes() -> [u8; 32] {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("random bytes");
    bytes
}
