//! OTLP/HTTP metrics ingest (`POST /api/v1/otlp/v1/metrics`) against the real binary:
//! the OpenTelemetry Python SDK (PyPI, in a venv under target/ made by
//! scripts/install-otel-python.sh) exporting to one node of a 3-node cluster and the
//! Prometheus 3.x names, values, `job`/`instance` and `target_info` read from another, on
//! every owner; and hand-built protobuf requests for every metric type, delta and
//! exponential histograms (partial success), gzip, bad bodies, oversize bodies, refused
//! samples, a node that cannot take writes, the web config's basic auth, and the OTLP
//! counters in /metrics.
//! Without Python or PyPI the SDK test is skipped with a message (failed under CI).

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use prost::Message;
use timbala::cluster::keys::ClusterKeys;
use timbala::proto::otlp::*;

const PATH: &str = "/api/v1/otlp/v1/metrics";
const INSTALL_SCRIPT: &str = "scripts/install-otel-python.sh";
const PROTOBUF: (&str, &str) = ("Content-Type", "application/x-protobuf");

/// The venv's python with the OpenTelemetry SDK, or None when it could not be installed
/// (then the caller skips, or fails under CI, through `tool_available`).
fn otel_python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("bash")
        .arg(root.join(INSTALL_SCRIPT))
        .stderr(Stdio::inherit())
        .output()
        .ok();
    let python = output.and_then(|o| {
        let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
        (o.status.success() && !path.is_empty()).then(|| root.join(path))
    });
    let name = python
        .as_ref()
        .map_or("opentelemetry-sdk python".to_string(), |p| {
            p.display().to_string()
        });
    tool_available(&name, INSTALL_SCRIPT).then(|| PathBuf::from(name))
}

/// Exports a counter, an observable gauge, an UpDownCounter and an explicit-bucket
/// histogram once, gzip-compressed, the way an instrumented service does.
const SDK_PROGRAM: &str = r#"
import sys
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource

resource = Resource.create({
    "service.name": "checkout",
    "service.namespace": "shop",
    "service.instance.id": "pod-1",
    "deployment.environment": "prod",
})
reader = InMemoryMetricReader()
meter = MeterProvider(resource=resource, metric_readers=[reader]).get_meter("otlp-test", "1.0")
requests = meter.create_counter("http.requests", unit="{request}", description="Requests served")
requests.add(3, {"http.method": "GET"})
requests.add(4, {"http.method": "GET"})
requests.add(1, {"http.method": "POST"})
meter.create_observable_gauge(
    "memory.utilization", unit="1", callbacks=[lambda options: [Observation(0.25)]])
queue = meter.create_up_down_counter("queue.size", unit="{item}")
queue.add(5)
queue.add(-2)
duration = meter.create_histogram(
    "http.server.duration", unit="ms", explicit_bucket_boundaries_advisory=[10.0, 100.0])
for v in (5, 50, 500):
    duration.record(v, {"http.route": "/cart"})
exporter = OTLPMetricExporter(endpoint=sys.argv[1], compression=Compression.Gzip)
result = exporter.export(reader.get_metrics_data())
print(result.name)
sys.exit(0 if result == MetricExportResult.SUCCESS else 1)
"#;

/// Result of an instant query at `t_ms`: (labels, value) per series.
fn instant(node: &Node, query: &str, t_ms: i64) -> Vec<(BTreeMap<String, String>, f64)> {
    let encoded: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", query)
        .append_pair("time", &format!("{}", t_ms as f64 / 1000.0))
        .finish();
    let (code, body) = get(&node.url(&format!("/api/v1/query?{encoded}")));
    assert_eq!(code, 200, "{query}: {body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
    answer["data"]["result"]
        .as_array()
        .expect("vector")
        .iter()
        .map(|r| {
            let labels = serde_json::from_value(r["metric"].clone()).expect("labels");
            let value = r["value"][1]
                .as_str()
                .expect("value")
                .parse()
                .expect("float");
            (labels, value)
        })
        .collect()
}

/// The value of the single series `query` selects.
fn single(node: &Node, query: &str, t_ms: i64) -> f64 {
    let result = instant(node, query, t_ms);
    assert_eq!(result.len(), 1, "{query}: {result:?}");
    result[0].1
}

#[test]
fn opentelemetry_sdk_exports_to_a_cluster_in_prometheus_names() {
    let Some(python) = otel_python() else {
        return;
    };
    // A cluster key of its own: no stray node of another test can join.
    let keys_dir = tempfile::tempdir().expect("temp dir");
    let key_file = keys_dir.path().join("cluster.key");
    let key = {
        use base64::Engine as _;
        use rand::{RngCore, SeedableRng};
        let mut bytes = [0u8; 32];
        rand::rngs::StdRng::from_os_rng().fill_bytes(&mut bytes);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    std::fs::write(&key_file, format!("{key}\n")).expect("write the key");
    let keys = ClusterKeys::parse(&key).expect("key");
    let key_arg = key_file.display().to_string();
    let cluster = start_cluster_with(3, &[], |_| MemberSetup {
        args: vec!["--cluster-key-file".into(), key_arg.clone()],
        ..MemberSetup::default()
    });
    let nodes: Vec<&Node> = cluster.iter().map(|m| &m.node).collect();
    wait_converged(&nodes, 3, Duration::from_secs(60));

    let output = Command::new(&python)
        .args(["-c", SDK_PROGRAM, &nodes[0].url(PATH)])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the SDK's export failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim(), "SUCCESS");

    let reader = nodes[1];
    let t = now_ms() + 1_000;
    let id = r#"job="shop/checkout",instance="pod-1""#;
    assert_eq!(
        single(
            reader,
            &format!(r#"http_requests_total{{{id},http_method="GET"}}"#),
            t
        ),
        7.0
    );
    assert_eq!(
        single(
            reader,
            &format!(r#"http_requests_total{{{id},http_method="POST"}}"#),
            t
        ),
        1.0
    );
    assert_eq!(
        single(reader, &format!("memory_utilization_ratio{{{id}}}"), t),
        0.25
    );
    assert_eq!(single(reader, &format!("queue_size{{{id}}}"), t), 3.0);
    let histogram = "http_server_duration_milliseconds";
    let route = r#"http_route="/cart""#;
    for (le, count) in [("10", 1.0), ("100", 2.0), ("+Inf", 3.0)] {
        let q = format!(r#"{histogram}_bucket{{{id},{route},le="{le}"}}"#);
        assert_eq!(single(reader, &q, t), count, "{q}");
    }
    assert_eq!(
        single(reader, &format!("{histogram}_sum{{{id},{route}}}"), t),
        555.0
    );
    assert_eq!(
        single(reader, &format!("{histogram}_count{{{id},{route}}}"), t),
        3.0
    );
    let info = instant(reader, "target_info", t);
    assert_eq!(info.len(), 1, "{info:?}");
    let (labels, value) = &info[0];
    assert_eq!(*value, 1.0);
    assert_eq!(labels["job"], "shop/checkout");
    assert_eq!(labels["instance"], "pod-1");
    assert_eq!(labels["deployment_environment"], "prod");
    assert_eq!(labels["telemetry_sdk_language"], "python");
    assert!(!labels.contains_key("service_name"), "{labels:?}");
    // Scope name and version are not labels (Prometheus's default).
    let scoped = instant(reader, r#"{otel_scope_name!=""}"#, t);
    assert!(scoped.is_empty(), "{scoped:?}");

    // Replicated like a remote write: every node of three holds its own copy.
    for node in &nodes {
        let copies = local_copies_of(node, Some(&keys), "http_requests_total");
        assert_eq!(copies.len(), 2, "{} holds {copies:?}", node.http_addr);
    }
}

// ---- hand-built requests against one node ----

fn now_nanos() -> u64 {
    now_ms() as u64 * 1_000_000
}

fn metric(name: &str, unit: &str, data: MetricData) -> Metric {
    Metric {
        name: name.into(),
        description: String::new(),
        unit: unit.into(),
        data: Some(data),
    }
}

fn point(attrs: &[(&str, &str)], time_unix_nano: u64, value: f64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs.iter().map(|(k, v)| KeyValue::string(k, v)).collect(),
        start_time_unix_nano: 0,
        time_unix_nano,
        value: Some(NumberValue::AsDouble(value)),
        exemplars: vec![],
        flags: 0,
    }
}

fn sum(points: Vec<NumberDataPoint>, temporality: AggregationTemporality) -> MetricData {
    MetricData::Sum(Sum {
        data_points: points,
        aggregation_temporality: temporality as i32,
        is_monotonic: true,
    })
}

fn gauge(points: Vec<NumberDataPoint>) -> MetricData {
    MetricData::Gauge(Gauge {
        data_points: points,
    })
}

fn export_request(service: &str, metrics: Vec<Metric>) -> Vec<u8> {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![KeyValue::string("service.name", service)],
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: None,
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
    .encode_to_vec()
}

fn export(node: &Node, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    post(&node.url(PATH), headers, body)
}

/// The `google.rpc.Status` of an error answer.
fn status_of(code: u16, body: &[u8]) -> Status {
    Status::decode(body).unwrap_or_else(|e| panic!("{code}: not a Status ({e}): {body:?}"))
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body).expect("gzip");
    gz.finish().expect("gzip")
}

#[test]
fn every_metric_type_is_stored_and_delta_is_a_partial_success() {
    let node = Node::start(&[]);
    let now = now_nanos();
    let histogram = HistogramDataPoint {
        attributes: vec![],
        start_time_unix_nano: 0,
        time_unix_nano: now,
        count: 4,
        sum: Some(2.5),
        bucket_counts: vec![1, 3],
        explicit_bounds: vec![0.5],
        exemplars: vec![],
        flags: 0,
    };
    let summary = SummaryDataPoint {
        attributes: vec![],
        start_time_unix_nano: 0,
        time_unix_nano: now,
        count: 2,
        sum: 0.3,
        quantile_values: vec![ValueAtQuantile {
            quantile: 0.9,
            value: 0.2,
        }],
        flags: 0,
    };
    let body = export_request(
        "api",
        vec![
            metric(
                "cpu.temperature",
                "Cel",
                gauge(vec![point(&[("core", "0")], now, 61.5)]),
            ),
            metric(
                "jobs.done",
                "",
                sum(
                    vec![point(&[], now, 12.0)],
                    AggregationTemporality::Cumulative,
                ),
            ),
            metric(
                "jobs.delta",
                "",
                sum(
                    vec![point(&[], now, 1.0), point(&[], now, 2.0)],
                    AggregationTemporality::Delta,
                ),
            ),
            metric(
                "request.size",
                "By",
                MetricData::Histogram(Histogram {
                    data_points: vec![histogram],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            ),
            metric(
                "gc.pause",
                "s",
                MetricData::Summary(Summary {
                    data_points: vec![summary],
                }),
            ),
        ],
    );
    let (code, answer) = export(&node, &[PROTOBUF], &body);
    assert_eq!(code, 200, "{answer:?}");
    let response = ExportMetricsServiceResponse::decode(answer.as_slice()).expect("response");
    let partial = response.partial_success.expect("partial success");
    assert_eq!(partial.rejected_data_points, 2);
    assert!(
        partial.error_message.contains("delta_temporality: 2"),
        "{}",
        partial.error_message
    );
    assert!(
        partial.error_message.contains("jobs.delta"),
        "{}",
        partial.error_message
    );

    let t = now_ms() + 1_000;
    assert_eq!(
        single(&node, r#"cpu_temperature_celsius{job="api",core="0"}"#, t),
        61.5
    );
    assert_eq!(single(&node, "jobs_done_total", t), 12.0);
    assert!(instant(&node, r#"{__name__=~"jobs_delta.*"}"#, t).is_empty());
    assert_eq!(
        single(&node, r#"request_size_bytes_bucket{le="0.5"}"#, t),
        1.0
    );
    assert_eq!(
        single(&node, r#"request_size_bytes_bucket{le="+Inf"}"#, t),
        4.0
    );
    assert_eq!(single(&node, "request_size_bytes_sum", t), 2.5);
    assert_eq!(single(&node, "request_size_bytes_count", t), 4.0);
    assert_eq!(single(&node, r#"gc_pause_seconds{quantile="0.9"}"#, t), 0.2);
    assert_eq!(single(&node, "gc_pause_seconds_sum", t), 0.3);
    assert_eq!(single(&node, "gc_pause_seconds_count", t), 2.0);
    // Metadata as Prometheus derives it.
    let (_, metadata) = get(&node.url("/api/v1/metadata?metric=jobs_done_total"));
    assert!(metadata.contains(r#""type":"counter""#), "{metadata}");

    // A gzip body as exporters send it; a clean request answers with an empty response.
    // The gauge's point says "no recorded value": a staleness marker ends its series.
    let later = now + 1_000_000_000;
    let mut gone = point(&[("core", "0")], later, 0.0);
    gone.flags = FLAG_NO_RECORDED_VALUE;
    let body = export_request(
        "api",
        vec![
            metric(
                "jobs.done",
                "",
                sum(
                    vec![point(&[], later, 13.0)],
                    AggregationTemporality::Cumulative,
                ),
            ),
            metric("cpu.temperature", "Cel", gauge(vec![gone])),
        ],
    );
    let (code, answer) = export(
        &node,
        &[PROTOBUF, ("Content-Encoding", "gzip")],
        &gzip(&body),
    );
    assert_eq!((code, answer.len()), (200, 0), "{answer:?}");
    let after = (later / 1_000_000) as i64 + 1_000;
    assert_eq!(single(&node, "jobs_done_total", after), 13.0);
    let stale = instant(&node, "cpu_temperature_celsius", after);
    assert!(
        stale.is_empty(),
        "a stale series is not returned: {stale:?}"
    );

    // Points, not samples: gauge, sum, histogram and summary, then the sum and the gauge.
    let (_, text) = get(&node.url("/metrics"));
    assert_eq!(
        metric_value(&text, "timbala_ingest_otlp_data_points_accepted_total"),
        Some(6.0),
        "{text}"
    );
    assert!(
        text.contains(
            r#"timbala_ingest_otlp_data_points_rejected_total{reason="delta_temporality"} 2"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"timbala_ingest_otlp_data_points_rejected_total{reason="exponential_histogram"} 0"#
    ));
}

#[test]
fn bad_requests_get_the_otlp_error_statuses() {
    let node = Node::start(&["--write-max-body-size", "64KiB"]);
    let now = now_nanos();
    let good = export_request(
        "api",
        vec![metric("g", "", gauge(vec![point(&[], now, 1.0)]))],
    );

    // Not protobuf: 400 with a google.rpc.Status saying why; nothing stored.
    let (code, body) = export(&node, &[PROTOBUF], b"\x0a\xff\xff\xff\xff\x0f");
    assert_eq!(code, 400);
    let status = status_of(code, &body);
    assert_eq!(status.code, 3);
    assert!(
        status.message.contains("ExportMetricsServiceRequest"),
        "{}",
        status.message
    );
    let (code, body) = export(&node, &[PROTOBUF, ("Content-Encoding", "gzip")], &good);
    assert_eq!(code, 400);
    assert!(status_of(code, &body).message.contains("gzip"));

    // Unknown types and encodings: 415 in plain text.
    for headers in [
        &[("Content-Type", "application/json")][..],
        &[("Content-Type", "text/plain")][..],
        &[PROTOBUF, ("Content-Encoding", "br")][..],
    ] {
        let (code, body) = export(&node, headers, &good);
        let text = String::from_utf8_lossy(&body);
        assert_eq!(code, 415, "{headers:?}: {text}");
        assert!(text.contains("protobuf") || text.contains("gzip"), "{text}");
    }

    // Over the body limit: 413; a gzip bomb under it: 413 too.
    let (code, body) = export(&node, &[PROTOBUF], &vec![0u8; 100 << 10]);
    assert_eq!(code, 413, "{}", String::from_utf8_lossy(&body));
    let bomb = gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 64 << 10);
    let (code, body) = export(&node, &[PROTOBUF, ("Content-Encoding", "gzip")], &bomb);
    assert_eq!(code, 413, "{}", String::from_utf8_lossy(&body));

    // Attributes past the label limit: 400, nothing stored.
    let wide: Vec<(String, String)> = (0..300)
        .map(|i| (format!("a{i}"), "v".to_string()))
        .collect();
    let wide: Vec<(&str, &str)> = wide.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let body = export_request(
        "api",
        vec![metric("wide", "", gauge(vec![point(&wide, now, 1.0)]))],
    );
    let (code, body) = export(&node, &[PROTOBUF], &body);
    assert_eq!(code, 400);
    assert!(status_of(code, &body).message.contains("limit of 256"));

    // A sample a day ahead: 400 naming it, the current one of the same request stored.
    let day = 86_400 * 1_000_000_000;
    let body = export_request(
        "api",
        vec![metric(
            "clock",
            "",
            gauge(vec![
                point(&[("t", "now")], now, 1.0),
                point(&[("t", "future")], now + day, 2.0),
            ]),
        )],
    );
    let (code, body) = export(&node, &[PROTOBUF], &body);
    assert_eq!(code, 400);
    assert!(status_of(code, &body)
        .message
        .contains("too_far_in_future: 1"));
    assert_eq!(single(&node, r#"clock{t="now"}"#, now_ms() + 1_000), 1.0);
    assert!(instant(&node, "wide", now_ms() + 1_000).is_empty());

    let (_, text) = get(&node.url("/metrics"));
    for reason in [
        "bad_protobuf",
        "bad_gzip",
        "unsupported_content_type",
        "too_large",
        "invalid_labels",
    ] {
        let line = format!(r#"timbala_ingest_requests_rejected_total{{reason="{reason}"}}"#);
        assert!(
            metric_value(&text, &line).is_some_and(|v| v >= 1.0),
            "{line} in {text}"
        );
    }
}

#[test]
fn a_node_that_cannot_take_writes_answers_503() {
    // Its only peer does not answer: it cannot know the owners of any series.
    let absent_peer = format!("127.0.0.1:{}", free_port());
    let node = Node::start(&["--peers", &absent_peer, "--gossip-profile", "fast"]);
    let body = export_request(
        "api",
        vec![metric("g", "", gauge(vec![point(&[], now_nanos(), 1.0)]))],
    );
    let (code, body) = export(&node, &[PROTOBUF], &body);
    assert_eq!(code, 503);
    let status = status_of(code, &body);
    assert_eq!(status.code, 14);
    assert!(status.message.contains("not joined"), "{}", status.message);
}

#[test]
fn basic_auth_of_the_web_config_guards_otlp() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("web-config.yml");
    let hash = bcrypt::hash("wonderland", 4).expect("bcrypt");
    std::fs::write(&config, format!("basic_auth_users:\n  alice: {hash}\n")).expect("write");
    let node = Node::spawn_at(
        &dir.path().join("data"),
        &format!("127.0.0.1:{}", free_port()),
        &format!("127.0.0.1:{}", free_port()),
        &["--web-config-file", &config.display().to_string()],
    );
    let credentials = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:wonderland")
    );
    let auth = ("Authorization", credentials.as_str());
    // Ready once an empty export with the password is stored (200, not 503 or refused).
    wait_until("the node takes writes", Duration::from_secs(60), || {
        try_post(&node.url(PATH), &[PROTOBUF, auth], b"").is_ok_and(|(code, _)| code == 200)
    });
    let body = export_request(
        "api",
        vec![metric(
            "guarded",
            "",
            gauge(vec![point(&[], now_nanos(), 1.0)]),
        )],
    );
    let (code, _) = export(&node, &[PROTOBUF], &body);
    assert_eq!(code, 401);
    let (code, answer) = export(&node, &[PROTOBUF, auth], &body);
    assert_eq!((code, answer.len()), (200, 0), "{answer:?}");
}
