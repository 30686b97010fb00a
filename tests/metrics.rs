//! `/metrics` of a running node: after a write and a rejected write, a scrape shows the
//! build, ingest, HTTP, storage and process metrics an operator alerts on.

mod common;

use common::{get, metric_value, post, remote_write, ts, Node};
use timbala::proto;

#[test]
fn metrics_endpoint_exposes_ingest_storage_http_and_process_metrics() {
    let node = Node::start(&[]);
    // Current samples: older than retention or far ahead of the clock would be refused.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let write = proto::WriteRequest {
        timeseries: vec![ts(
            &[("__name__", "m"), ("job", "a")],
            &[(now - 2_000, 1.0), (now - 1_000, 2.0), (now, 3.0)],
        )],
        metadata: vec![],
    };
    let (status, body) = remote_write(&node, &write);
    assert_eq!(status, 204, "{body}");
    let headers = [
        ("Content-Type", "application/x-protobuf"),
        ("Content-Encoding", "snappy"),
    ];
    let (status, _) = post(&node.url("/api/v1/write"), &headers, b"not snappy at all");
    assert_eq!(status, 400);

    let (status, text) = get(&node.url("/metrics"));
    assert_eq!(status, 200);
    let value = |name: &str| {
        metric_value(&text, name).unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };

    assert_eq!(value("timbala_build_info"), 1.0);
    assert_eq!(value("timbala_ingest_requests_received_total"), 2.0);
    assert!(
        text.contains(r#"timbala_ingest_requests_rejected_total{reason="bad_snappy"} 1"#),
        "{text}"
    );
    assert_eq!(value("timbala_ingest_samples_stored_total"), 3.0);
    assert_eq!(value("timbala_tsdb_samples_appended_total"), 3.0);
    assert_eq!(value("timbala_tsdb_head_series"), 1.0);
    assert!(value("timbala_tsdb_head_chunks") >= 1.0);
    assert!(value("timbala_tsdb_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(
        text.contains("timbala_tsdb_wal_replay_duration_seconds"),
        "{text}"
    );
    assert_eq!(value("timbala_tsdb_blocks_loaded"), 0.0);
    assert_eq!(value("timbala_tsdb_compactions_total"), 0.0);
    assert!(
        text.contains(r#"timbala_http_requests_total{handler="/api/v1/write",code="204"} 1"#),
        "{text}"
    );
    assert!(value("timbala_http_request_duration_seconds_count") >= 1.0);
    // A fresh process may not have used a full clock tick of CPU yet: presence is the check.
    assert!(value("process_cpu_seconds_total").is_finite());
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") >= 3.0);
}

/// Alerts and dashboards need every family before its first event (an absent series
/// makes `rate()` and `absent()` rules lie): a node of one, untouched, shows the handoff,
/// fan-out and repair families at 0.
#[test]
fn families_exist_from_start() {
    let node = Node::start(&[]);
    let started = std::time::Instant::now();
    let text = loop {
        let (status, text) = get(&node.url("/metrics"));
        assert_eq!(status, 200);
        // The handoff task's first round runs within a second of start.
        if metric_value(&text, "timbala_handoff_rounds_total").is_some_and(|v| v >= 1.0)
            || started.elapsed() > std::time::Duration::from_secs(10)
        {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let value = |name: &str| {
        metric_value(&text, name).unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    assert!(value("timbala_handoff_rounds_total") >= 1.0);
    assert_eq!(value("timbala_handoff_targets_pending"), 0.0);
    assert_eq!(value("timbala_fanout_requests_total"), 0.0);
    assert_eq!(value("timbala_fanout_peer_timeouts_total"), 0.0);
    assert_eq!(value("timbala_fanout_read_received_bytes_total"), 0.0);
    assert_eq!(value("timbala_fanout_second_round_series_total"), 0.0);
    assert_eq!(value("timbala_repair_passes_total"), 0.0);
    assert_eq!(value("timbala_ingest_otlp_data_points_accepted_total"), 0.0);
    assert_eq!(
        value(r#"timbala_ingest_otlp_data_points_rejected_total{reason="exponential_histogram"}"#),
        0.0
    );
}
