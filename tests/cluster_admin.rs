//! Cluster-wide admin (ADR 0023) through the real binary on keyed clusters on 127.0.0.1:
//!
//! - `delete_series` sent to one node of 3 deletes every replica: the series are gone
//!   from every node's local-only reads and from queries through every node, and stay
//!   gone after every node restarts and anti-entropy has run; other series are intact.
//!   While a member is down the request is refused (503 naming it) and nothing is
//!   deleted anywhere; `clean_tombstones` runs on every member the same way.
//! - The internal admin route refuses requests without the cluster credential (401),
//!   on a node whose admin API is off (503, as the public route), and malformed ones
//!   (400), deleting nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use timbala::cluster::keys::ClusterKeys;

const DOOMED: &str = "admin_doomed";
const KEPT: &str = "admin_kept";
const SERIES: usize = 8;
/// Samples per series, 10 s apart, ending at the write: 12 minutes, so with a 1m block
/// duration most of them are in blocks (tombstones) and the rest in the head.
const SAMPLES: i64 = 72;

fn expected_copies(metric: &str, end_ms: i64) -> Copies {
    (0..SERIES)
        .map(|s| {
            let labels = vec![
                ("__name__".to_string(), metric.to_string()),
                ("series".to_string(), s.to_string()),
            ];
            (labels, samples(s, end_ms))
        })
        .collect()
}

fn samples(series: usize, end_ms: i64) -> Vec<(i64, f64)> {
    (0..SAMPLES)
        .map(|i| {
            (
                end_ms - (SAMPLES - 1 - i) * 10_000,
                (series as i64 * 1000 + i) as f64,
            )
        })
        .collect()
}

fn has_block(data: &Path) -> bool {
    std::fs::read_dir(data).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.path().join("meta.json").is_file())
    })
}

/// The series an instant query of every sample of `metric` returns through `node`.
fn queried_series(node: &Node, metric: &str, end_ms: i64) -> usize {
    let path = format!(
        "/api/v1/query?query=count_over_time({metric}[30m])&time={}",
        end_ms as f64 / 1000.0
    );
    let (status, body) = get(&node.url(&path));
    assert_eq!(status, 200, "{}: {body}", node.http_addr);
    let json: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
    json["data"]["result"].as_array().map_or(0, Vec::len)
}

fn delete(node: &Node, selector: &str) -> (u16, serde_json::Value) {
    let (status, body) = post_form(
        &node.url("/api/v1/admin/tsdb/delete_series"),
        &[("match[]", selector)],
    );
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Every node: no copy of `DOOMED` in its own data, none through its queries, and all
/// of `KEPT` in both.
fn check_deleted_everywhere(nodes: &[&Node], keys: &ClusterKeys, end_ms: i64, when: &str) {
    for node in nodes {
        let doomed = local_copies_of(node, Some(keys), DOOMED);
        assert!(
            doomed.is_empty(),
            "{when}: {} still holds {doomed:?}",
            node.http_addr
        );
        assert_eq!(
            local_copies_of(node, Some(keys), KEPT),
            expected_copies(KEPT, end_ms),
            "{when}: {}'s copies of the other series",
            node.http_addr
        );
        assert_eq!(
            queried_series(node, DOOMED, end_ms),
            0,
            "{when}: {}",
            node.http_addr
        );
        assert_eq!(
            queried_series(node, KEPT, end_ms),
            SERIES,
            "{when}: {}",
            node.http_addr
        );
    }
}

fn passes(node: &Node) -> f64 {
    metric_value(
        &get(&node.url("/metrics")).1,
        "timbala_antientropy_passes_total",
    )
    .unwrap_or(0.0)
}

#[test]
fn delete_series_sent_to_one_node_deletes_every_replica_for_good() {
    let mut cluster = start_keyed_cluster(
        3,
        &[
            "--web-enable-admin-api",
            "--block-duration",
            "1m",
            "--anti-entropy-interval",
            "5s",
        ],
    );
    let end_ms = now_ms();
    let first = &cluster.members[0].node;
    for metric in [DOOMED, KEPT] {
        let request = numbered_series_request(metric, SERIES, |s| samples(s, end_ms));
        let (status, body) = remote_write(first, &request);
        assert_eq!(status, 204, "remote write: {body}");
    }
    // Three nodes, three replicas: every node holds every series.
    for node in cluster.nodes() {
        for metric in [DOOMED, KEPT] {
            assert_eq!(
                local_copies_of(node, Some(&cluster.keys), metric),
                expected_copies(metric, end_ms),
                "{}: {metric} before the delete",
                node.http_addr
            );
        }
    }
    for member in &cluster.members {
        let data = member.node.data_dir.clone();
        wait_until("a block on every node", Duration::from_secs(120), || {
            has_block(&data)
        });
    }

    // A member down: refused, nothing deleted anywhere.
    let third_id = local_id(&cluster.members[2].node);
    cluster.members[2].node.kill();
    let third_addr = cluster.members[2].node.http_addr.clone();
    wait_until("the third node seen down", Duration::from_secs(60), || {
        member_state(&cluster.members[1].node, &third_id).as_deref() == Some("down")
    });
    let (status, json) = delete(&cluster.members[1].node, DOOMED);
    println!("delete with a member down: {status} {json}");
    assert_eq!(
        (status, &json["errorType"]),
        (503, &"unavailable".into()),
        "{json}"
    );
    let error = json["error"].as_str().unwrap_or("");
    assert!(
        error.contains(&third_addr),
        "the down node is not named: {error}"
    );
    for node in &cluster.nodes()[..2] {
        assert_eq!(
            local_copies_of(node, Some(&cluster.keys), DOOMED),
            expected_copies(DOOMED, end_ms),
            "{}: deleted although refused",
            node.http_addr
        );
    }
    cluster.members[2].spawn();
    cluster.members[2].node.wait_ready(Duration::from_secs(60));
    wait_converged(&cluster.nodes(), 3, Duration::from_secs(60));

    // Sent to the second node: every replica goes.
    let (status, json) = delete(&cluster.members[1].node, DOOMED);
    assert_eq!(status, 204, "delete_series: {json}");
    check_deleted_everywhere(&cluster.nodes(), &cluster.keys, end_ms, "after the delete");

    // Tombstones are cleaned on every member; the answers stay the same.
    let (status, body) = post_form(
        &cluster.members[2]
            .node
            .url("/api/v1/admin/tsdb/clean_tombstones"),
        &[],
    );
    assert_eq!(status, 204, "clean_tombstones: {body}");
    check_deleted_everywhere(&cluster.nodes(), &cluster.keys, end_ms, "after cleaning");

    // Every node restarts; anti-entropy then runs a pass on each: nothing comes back.
    for member in &mut cluster.members {
        assert_eq!(member.node.terminate(), Some(0), "clean exit on SIGTERM");
    }
    for member in &mut cluster.members {
        member.spawn();
    }
    for member in &cluster.members {
        member.node.wait_ready(Duration::from_secs(60));
    }
    wait_converged(&cluster.nodes(), 3, Duration::from_secs(60));
    let before: Vec<f64> = cluster.nodes().iter().map(|n| passes(n)).collect();
    wait_until(
        "an anti-entropy pass on every node",
        Duration::from_secs(90),
        || {
            cluster
                .nodes()
                .iter()
                .zip(&before)
                .all(|(n, b)| passes(n) > *b)
        },
    );
    check_deleted_everywhere(&cluster.nodes(), &cluster.keys, end_ms, "after restarts");
}

/// An internal admin request signed with `keys` (none: unsigned).
fn internal_delete(node: &Node, keys: Option<&ClusterKeys>, body: &[u8]) -> (u16, String) {
    let path = "/internal/v1/admin/delete-series";
    let credential = keys.map(|k| cluster_credential(k, path, body));
    let mut headers = vec![("content-type", "application/json")];
    if let Some((name, value)) = &credential {
        headers.push((name.as_str(), value.as_str()));
    }
    let (status, body) = post(&node.url(path), &headers, body);
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn the_internal_admin_route_refuses_strangers_disabled_nodes_and_bad_requests() {
    let (_key_dir, key_file, keys) = new_cluster_key();
    let key_file = key_file.display().to_string();
    let node = Node::start(&["--cluster-key-file", &key_file]);
    let end_ms = now_ms();
    let (status, body) = remote_write(
        &node,
        &numbered_series_request(DOOMED, SERIES, |s| samples(s, end_ms)),
    );
    assert_eq!(status, 204, "{body}");
    let valid =
        br#"{"selectors":[[["__name__","=","admin_doomed"]]],"start":0,"end":9223372036854775807}"#;

    let (status, body) = internal_delete(&node, None, valid);
    assert_eq!(status, 401, "unsigned: {body}");
    let (status, body) = internal_delete(&node, Some(&keys), valid);
    assert_eq!(status, 503, "admin API off: {body}");
    assert!(body.contains("admin APIs disabled"), "{body}");
    assert_eq!(
        local_copies_of(&node, Some(&keys), DOOMED),
        expected_copies(DOOMED, end_ms)
    );
    drop(node);

    let node = Node::start(&["--cluster-key-file", &key_file, "--web-enable-admin-api"]);
    let (status, body) = remote_write(
        &node,
        &numbered_series_request(DOOMED, SERIES, |s| samples(s, end_ms)),
    );
    assert_eq!(status, 204, "{body}");
    for hostile in [
        &b"not json"[..],
        br#"{"selectors":[],"start":0,"end":1}"#,
        br#"{"selectors":[[["__name__","~~","x"]]],"start":0,"end":1}"#,
        br#"{"selectors":[[["__name__","=~","(unclosed"]]],"start":0,"end":1}"#,
        br#"{"selectors":"everything","start":0,"end":1}"#,
    ] {
        let (status, body) = internal_delete(&node, Some(&keys), hostile);
        assert_eq!(status, 400, "{}: {body}", String::from_utf8_lossy(hostile));
        let json: serde_json::Value = serde_json::from_str(&body).expect("error JSON");
        assert_eq!(json["errorType"], "bad_data", "{body}");
    }
    assert_eq!(
        local_copies_of(&node, Some(&keys), DOOMED),
        expected_copies(DOOMED, end_ms),
        "a refused request deleted something"
    );
    let (status, body) = internal_delete(&node, Some(&keys), valid);
    assert_eq!(status, 204, "{body}");
    assert!(local_copies_of(&node, Some(&keys), DOOMED).is_empty());
}
