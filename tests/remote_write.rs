//! Acceptance: remote write 1.0 into one node, read back through remote read.
//!
//! 10,000 series x 120 samples are written in 2,000-sample requests (Prometheus's
//! default `max_samples_per_send`); every request must be answered 2xx. Remote read must
//! then return exactly those samples — bit-identical floats, including NaN payloads,
//! stale markers, infinities and subnormals — for =, !=, =~ and !~ matchers, in
//! both response types.

mod common;
#[path = "support/remote_read.rs"]
mod remote_read;

use common::{remote_write, Node};
use remote_read::{remote_read, ReadSeries, M};
use timbala::model::stale_nan;
use timbala::proto::{self, MatcherType, ResponseType};

const SERIES: usize = 10_000;
const SAMPLES_PER_SERIES: usize = 120;
const SAMPLES_PER_REQUEST: usize = 2_000;
/// Samples of one series per request; requests carry consecutive time slices.
const SLICE: usize = 20;
const STEP_MS: i64 = 15_000;
const WRITERS: usize = 4;

/// A recent start, so every sample falls inside the head's accepted range.
fn start_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    now - now % 60_000 - 40 * 60_000
}

fn labels(s: usize) -> Vec<(String, String)> {
    let mut l = vec![
        (
            "__name__".to_string(),
            if s % 2 == 0 { "rw_test_a" } else { "rw_test_b" }.to_string(),
        ),
        (
            "env".to_string(),
            if s % 3 == 0 { "prod" } else { "dev" }.to_string(),
        ),
        ("group".to_string(), (s % 10).to_string()),
        ("series".to_string(), format!("{s:05}")),
    ];
    l.sort();
    l
}

/// Deterministic values exercising every float corner the XOR encoding must keep.
fn value(s: usize, i: usize) -> f64 {
    match (s * 7 + i) % 53 {
        0 => stale_nan(),
        1 => f64::NAN,
        2 => f64::from_bits(0x7ff8_dead_beef_0001),
        3 => f64::INFINITY,
        4 => f64::NEG_INFINITY,
        // Not -0.0: proto3 elides a double equal to 0 (prost and Prometheus's gogo code
        // both compare with `!= 0.0`), so its sign cannot cross remote write.
        5 => f64::MAX,
        6 => f64::MIN_POSITIVE / 3.0,
        _ if s % 5 == 0 => (s + i / 10) as f64, // runs of repeated values
        _ => ((s * 1_000 + i) as f64).sqrt() * 1.000_1 - 17.5,
    }
}

fn request(start: i64, slice: usize, series: std::ops::Range<usize>) -> proto::WriteRequest {
    let timeseries = series
        .map(|s| proto::TimeSeries {
            labels: labels(s)
                .into_iter()
                .map(|(name, value)| proto::Label { name, value })
                .collect(),
            samples: (slice * SLICE..(slice + 1) * SLICE)
                .map(|i| proto::Sample {
                    value: value(s, i),
                    timestamp: start + i as i64 * STEP_MS,
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    proto::WriteRequest {
        timeseries,
        metadata: vec![],
    }
}

fn expected(start: i64, keep: impl Fn(&[(String, String)]) -> bool) -> Vec<ReadSeries> {
    let mut out: Vec<ReadSeries> = (0..SERIES)
        .map(|s| (s, labels(s)))
        .filter(|(_, l)| keep(l))
        .map(|(s, labels)| ReadSeries {
            labels,
            samples: (0..SAMPLES_PER_SERIES)
                .map(|i| (start + i as i64 * STEP_MS, value(s, i).to_bits()))
                .collect(),
        })
        .collect();
    out.sort();
    out
}

fn get<'a>(labels: &'a [(String, String)], name: &str) -> &'a str {
    labels
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn write_everything(node: &Node, start: i64) {
    let series_per_request = SAMPLES_PER_REQUEST / SLICE;
    let requests: Vec<(usize, usize)> = (0..SAMPLES_PER_SERIES / SLICE)
        .flat_map(|slice| (0..SERIES / series_per_request).map(move |g| (slice, g)))
        .collect();
    // Time slices in order; within one slice, writers work on disjoint series groups.
    for slice_requests in requests.chunks(SERIES / series_per_request) {
        std::thread::scope(|scope| {
            for part in slice_requests.chunks(slice_requests.len().div_ceil(WRITERS)) {
                scope.spawn(move || {
                    for &(slice, g) in part {
                        let req = request(
                            start,
                            slice,
                            g * series_per_request..(g + 1) * series_per_request,
                        );
                        let (status, body) = remote_write(node, &req);
                        assert!(
                            (200..300).contains(&status),
                            "slice {slice} group {g}: {status} {body}"
                        );
                    }
                });
            }
        });
    }
}

#[test]
fn written_samples_read_back_bit_identical_with_every_matcher_type() {
    let node = Node::start(&[]);
    let start = start_ms();
    write_everything(&node, start);
    let end = start + SAMPLES_PER_SERIES as i64 * STEP_MS;

    type Keep = Box<dyn Fn(&[(String, String)]) -> bool>;
    let cases: Vec<(Vec<M>, Keep)> = vec![
        (
            vec![(MatcherType::Eq, "__name__", "rw_test_a")],
            Box::new(|l| get(l, "__name__") == "rw_test_a"),
        ),
        (
            vec![
                (MatcherType::Eq, "__name__", "rw_test_b"),
                (MatcherType::Neq, "env", "dev"),
            ],
            Box::new(|l| get(l, "__name__") == "rw_test_b" && get(l, "env") != "dev"),
        ),
        (
            vec![
                (MatcherType::Re, "__name__", "rw_test_.*"),
                (MatcherType::Re, "group", "1|3"),
            ],
            Box::new(|l| matches!(get(l, "group"), "1" | "3")),
        ),
        (
            vec![
                (MatcherType::Re, "__name__", "rw_test_a|rw_test_b"),
                (MatcherType::Nre, "series", ".*[0-8]"),
            ],
            Box::new(|l| get(l, "series").ends_with('9')),
        ),
        (
            // Anchoring: "rw_test" alone must match nothing.
            vec![(MatcherType::Re, "__name__", "rw_test")],
            Box::new(|_| false),
        ),
    ];
    for (matchers, keep) in &cases {
        let want = expected(start, keep);
        for rt in [ResponseType::Samples, ResponseType::StreamedXorChunks] {
            let mut got = remote_read(&node, matchers, start, end, rt);
            got.sort();
            assert_eq!(got.len(), want.len(), "{matchers:?} {rt:?}: series count");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g, w, "{matchers:?} {rt:?}");
            }
        }
    }
}

#[test]
fn metadata_deletion_and_snapshot_endpoints() {
    let node = Node::start(&["--web-enable-admin-api"]);
    let t = start_ms();
    let req = proto::WriteRequest {
        timeseries: vec![
            common::ts(
                &[("__name__", "adm_requests_total"), ("job", "x")],
                &[(t, 1.0)],
            ),
            common::ts(
                &[("__name__", "adm_requests_total"), ("job", "y")],
                &[(t, 2.0)],
            ),
        ],
        metadata: vec![proto::MetricMetadata {
            r#type: proto::MetricType::Counter as i32,
            metric_family_name: "adm_requests_total".into(),
            help: "Requests served.".into(),
            unit: "requests".into(),
        }],
    };
    let (status, body) = remote_write(&node, &req);
    assert_eq!(status, 204, "{body}");

    let (status, body) = common::get(&node.url("/api/v1/metadata?metric=adm_requests_total"));
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("metadata JSON");
    assert_eq!(
        json["data"]["adm_requests_total"],
        serde_json::json!([{"type": "counter", "help": "Requests served.", "unit": "requests"}])
    );
    let (_, body) = common::get(&node.url("/api/v1/metadata?limit=abc"));
    assert!(body.contains("limit must be a number"), "{body}");

    let jobs = |node: &Node| -> Vec<String> {
        let matcher = [(MatcherType::Eq, "__name__", "adm_requests_total")];
        remote_read(node, &matcher, 0, i64::MAX, ResponseType::Samples)
            .into_iter()
            .map(|s| get(&s.labels, "job").to_string())
            .collect()
    };
    let delete = node.url("/api/v1/admin/tsdb/delete_series");
    let (status, body) = common::post_form(&delete, &[]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no match[] parameter provided"), "{body}");
    let (status, body) =
        common::post_form(&delete, &[("match[]", r#"adm_requests_total{job="x"}"#)]);
    assert_eq!(status, 204, "{body}");
    assert_eq!(jobs(&node), vec!["y"]);
    let (status, body) = common::post_form(&node.url("/api/v1/admin/tsdb/clean_tombstones"), &[]);
    assert_eq!(status, 204, "{body}");
    assert_eq!(jobs(&node), vec!["y"]);

    let (status, body) = common::post_form(&node.url("/api/v1/admin/tsdb/snapshot"), &[]);
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("snapshot JSON");
    assert_eq!(json["status"], "success");
    let name = json["data"]["name"].as_str().expect("snapshot name");
    // Which node took it, and that it holds this node's data only (ADR 0023).
    assert!(
        json["data"]["node"]
            .as_str()
            .is_some_and(|n| n.starts_with(&node.http_addr)),
        "{json}"
    );
    assert!(
        json["data"]["scope"]
            .as_str()
            .is_some_and(|s| s.starts_with("this node's data only")),
        "{json}"
    );
    assert!(node.data_dir.join("snapshots").join(name).is_dir());
}
