//! One error mapping for every read endpoint (ADR 0023), through the real binary on a
//! keyed 4-node cluster on 127.0.0.1:
//!
//! - with 3 of 4 nodes killed, `query`, `query_range`, `series`, `labels` and
//!   `label/<n>/values` all answer 503 `unavailable` in Prometheus's JSON, naming the
//!   missing nodes; `federate` and remote read answer 503 in their plain-text format;
//! - with the answering node's own TSDB failing (its blocks' chunk files overwritten on
//!   disk, as bit rot would: every local read of them fails its checksum), a query is
//!   answered from the other replicas, complete, with a warning naming the local node.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use timbala::proto;

fn get_json(node: &Node, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = get(&node.url(path));
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn write(node: &Node, series: Vec<proto::TimeSeries>) {
    let (status, body) = remote_write(
        node,
        &proto::WriteRequest {
            timeseries: series,
            metadata: vec![],
        },
    );
    assert_eq!(status, 204, "remote write: {body}");
}

#[test]
fn three_of_four_nodes_down_every_read_endpoint_answers_503_unavailable() {
    let mut cluster = start_keyed_cluster(4, &[]);
    let t_ms = now_ms();
    let t_s = t_ms as f64 / 1000.0;
    write(
        &cluster.members[0].node,
        vec![ts(
            &[("__name__", "mapping_probe"), ("job", "a")],
            &[(t_ms, 1.0)],
        )],
    );
    let endpoints = [
        format!("/api/v1/query?query=mapping_probe&time={t_s}"),
        format!(
            "/api/v1/query_range?query=mapping_probe&start={}&end={t_s}&step=15",
            t_s - 60.0
        ),
        "/api/v1/series?match[]=mapping_probe".to_string(),
        "/api/v1/labels".to_string(),
        "/api/v1/label/job/values".to_string(),
    ];
    let first = &cluster.members[0].node;
    for path in &endpoints {
        let (status, json) = get_json(first, path);
        assert_eq!(
            (status, &json["status"]),
            (200, &"success".into()),
            "{path}: {json}"
        );
    }

    let killed: Vec<String> = cluster.members[1..]
        .iter_mut()
        .map(|m| {
            m.node.kill();
            m.node.http_addr.clone()
        })
        .collect();
    let first = &cluster.members[0].node;
    for path in &endpoints {
        let (status, json) = get_json(first, path);
        println!("{path}: {status} {json}");
        assert_eq!(status, 503, "{path}: {json}");
        assert_eq!(
            (&json["status"], &json["errorType"]),
            (&"error".into(), &"unavailable".into()),
            "{path}: {json}"
        );
        let error = json["error"].as_str().unwrap_or("");
        for addr in &killed {
            assert!(
                error.contains(addr.as_str()),
                "{path}: {addr} not named: {error}"
            );
        }
    }
    // The formats without JSON errors answer the same status, in plain text.
    let (status, body) = get(&first.url("/federate?match[]=mapping_probe"));
    assert_eq!(status, 503, "federate: {body}");
    assert!(body.contains("unavailable"), "federate: {body}");
    let remote = read_samples_at(
        first,
        "/api/v1/read",
        vec![eq("__name__", "mapping_probe")],
        0,
        t_ms,
    );
    let error = remote.expect_err("remote read refused");
    assert!(error.starts_with("remote read answered 503"), "{error}");
}

const METRIC: &str = "local_fault_probe";
const SERIES: usize = 24;
/// Samples per series, 10 s apart, ending now: 15 minutes, so a 1m block duration cuts
/// most of them into blocks.
const SAMPLES: i64 = 90;

/// The block directories (holding a chunks file) under a data directory.
fn block_chunk_files(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("chunks"))
                .filter(|chunks| chunks.is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// Overwrites every chunk record of a block's chunks file in place (the header stays,
/// the length too: the node maps the file, and a shorter file would fault the mapping).
fn rot(chunks: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let Ok(mut file) = std::fs::OpenOptions::new().write(true).open(chunks) else {
        return; // compacted away meanwhile: the next round finds its successor
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len <= 5 {
        return;
    }
    file.seek(SeekFrom::Start(5)).expect("seek");
    file.write_all(&vec![0x55u8; (len - 5) as usize])
        .expect("overwrite chunks");
    file.sync_all().expect("sync");
}

#[test]
fn a_failing_local_store_is_answered_from_the_replicas() {
    let cluster = start_keyed_cluster(4, &["--block-duration", "1m"]);
    let nodes = cluster.nodes();
    let first = nodes[0];
    let end_ms = now_ms();
    let request = numbered_series_request(METRIC, SERIES, |s| {
        (0..SAMPLES)
            .map(|i| {
                (
                    end_ms - (SAMPLES - 1 - i) * 10_000,
                    (s as i64 * 1000 + i) as f64,
                )
            })
            .collect()
    });
    let (status, body) = remote_write(first, &request);
    assert_eq!(status, 204, "remote write: {body}");
    let query = format!(
        "/api/v1/query?query=count_over_time({METRIC}[20m])&time={}",
        end_ms as f64 / 1000.0
    );
    let complete = |json: &serde_json::Value| {
        let result = json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        result.len() == SERIES
            && result
                .iter()
                .all(|r| r["value"][1].as_str() == Some(&SAMPLES.to_string()))
    };
    let (status, json) = get_json(first, &query);
    assert!(status == 200 && complete(&json), "before the fault: {json}");
    let own = local_copies_of(first, Some(&cluster.keys), METRIC);
    assert!(
        !own.is_empty(),
        "the first node owns none of {SERIES} series"
    );

    // Wait for the head to be cut into blocks, then rot them until a local read fails
    // (compaction may replace a block between listing and overwriting it).
    let data = &cluster.members[0].node.data_dir;
    wait_until("blocks on the first node", Duration::from_secs(120), || {
        !block_chunk_files(data).is_empty()
    });
    let local_read = || {
        read_samples_as(
            first,
            Some(&cluster.keys),
            LOCAL_READ,
            vec![eq("__name__", METRIC)],
            0,
            i64::MAX / 2,
        )
    };
    wait_until("the local store failing", Duration::from_secs(60), || {
        block_chunk_files(data).iter().for_each(|c| rot(c));
        local_read().is_err()
    });
    let failure = local_read().expect_err("local read fails");
    println!("local read now: {failure}");
    assert!(failure.contains("corruption"), "{failure}");

    let (status, json) = get_json(first, &query);
    println!("query with the local store failing: {status} {json}");
    assert_eq!(status, 200, "{json}");
    assert!(complete(&json), "the replicas answer every sample: {json}");
    let warnings = strings(&json["warnings"]);
    assert!(
        warnings.iter().any(|w| w.contains(&first.http_addr)
            && w.contains("own store failed")
            && w.contains("corruption")),
        "no warning names the local node {}: {warnings:?}",
        first.http_addr
    );
    // The other nodes' answers are unaffected: every series is still there through them.
    for node in &nodes[1..] {
        let (status, json) = get_json(node, &query);
        assert!(
            status == 200 && complete(&json),
            "{}: {json}",
            node.http_addr
        );
    }
}
