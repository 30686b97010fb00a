//! Acceptance: malformed or unsupported remote-write requests are refused with the
//! status Prometheus's sender understands and a message saying what is wrong; nothing of
//! a refused request becomes visible; the process stays up.

mod common;
#[path = "support/remote_read.rs"]
mod remote_read;

use common::{get, post, remote_write, ts, Node};
use remote_read::{remote_read, remote_read_raw};
use timbala::proto::{self, MatcherType, ResponseType};

/// Body limit given to the node, so the 413 case needs only a small request.
const BODY_LIMIT: usize = 64 * 1024;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn label(name: &str, value: &str) -> proto::Label {
    proto::Label {
        name: name.into(),
        value: value.into(),
    }
}

fn request(series: Vec<proto::TimeSeries>) -> proto::WriteRequest {
    proto::WriteRequest {
        timeseries: series,
        metadata: vec![],
    }
}

/// A series with labels exactly as given (not sorted), one sample.
fn raw_series(labels: Vec<proto::Label>, t: i64) -> proto::TimeSeries {
    proto::TimeSeries {
        labels,
        samples: vec![proto::Sample {
            value: 1.0,
            timestamp: t,
        }],
        ..Default::default()
    }
}

const RW_HEADERS: [(&str, &str); 2] = [
    ("Content-Type", "application/x-protobuf"),
    ("Content-Encoding", "snappy"),
];

fn post_write(node: &Node, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let (status, body) = post(&node.url("/api/v1/write"), headers, body);
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn expect(case: &str, got: (u16, String), status: u16, needle: &str) {
    assert_eq!(got.0, status, "{case}: status (body: {})", got.1);
    assert!(
        got.1.to_lowercase().contains(&needle.to_lowercase()),
        "{case}: message {:?} should mention {needle:?}",
        got.1
    );
}

/// Snappy-compressed protobuf of a request whose only series has a label value that is
/// not UTF-8 (protobuf strings must be UTF-8), next to a valid series.
fn invalid_utf8_body(t: i64) -> Vec<u8> {
    let req = request(vec![
        ts(&[("__name__", "bad_valid_neighbour_of_utf8")], &[(t, 1.0)]),
        ts(
            &[("__name__", "bad_utf8"), ("v", "PLACEHOLDER")],
            &[(t, 1.0)],
        ),
    ]);
    let mut raw = prost::Message::encode_to_vec(&req);
    let at = raw
        .windows(11)
        .position(|w| w == b"PLACEHOLDER")
        .expect("placeholder encoded");
    raw[at..at + 11].copy_from_slice(b"\xff\xfe\xfdPLACEHOL");
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("compress")
}

/// A well-mixed 64-bit hash, so label values do not compress.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn bad_requests_are_refused_and_leave_no_trace() {
    let limit = BODY_LIMIT.to_string();
    let node = Node::start(&["--write-max-body-size", &limit]);
    let t = now_ms() - 60_000;
    let snappy = |raw: &[u8]| {
        snap::raw::Encoder::new()
            .compress_vec(raw)
            .expect("compress")
    };
    let valid = proto::encode_snappy(&request(vec![ts(
        &[("__name__", "bad_valid_body")],
        &[(t, 1.0)],
    )]));

    expect(
        "bad snappy",
        post_write(&node, &RW_HEADERS, b"this is not snappy"),
        400,
        "snappy",
    );
    expect(
        "empty body",
        post_write(&node, &RW_HEADERS, b""),
        400,
        "snappy",
    );
    expect(
        "bad protobuf",
        post_write(&node, &RW_HEADERS, &snappy(b"\x0a\xff\xff\xff\xff\x0f\x01")),
        400,
        "protobuf",
    );
    expect(
        "unsorted labels",
        remote_write(
            &node,
            &request(vec![raw_series(
                vec![
                    label("__name__", "bad_unsorted"),
                    label("job", "a"),
                    label("instance", "b"),
                ],
                t,
            )]),
        ),
        400,
        "not sorted",
    );
    expect(
        "duplicate label names",
        remote_write(
            &node,
            &request(vec![raw_series(
                vec![
                    label("__name__", "bad_duplicate"),
                    label("job", "a"),
                    label("job", "b"),
                ],
                t,
            )]),
        ),
        400,
        "duplicate label name \"job\"",
    );
    expect(
        "empty label name",
        remote_write(
            &node,
            &request(vec![raw_series(
                vec![label("", "x"), label("__name__", "bad_empty_name")],
                t,
            )]),
        ),
        400,
        "empty",
    );
    expect(
        "missing metric name, after a valid series",
        remote_write(
            &node,
            &request(vec![
                ts(&[("__name__", "bad_valid_neighbour")], &[(t, 1.0)]),
                ts(&[("job", "bad_no_name")], &[(t, 1.0)]),
            ]),
        ),
        400,
        "missing metric name",
    );
    expect(
        "invalid UTF-8",
        post_write(&node, &RW_HEADERS, &invalid_utf8_body(t)),
        400,
        "UTF-8",
    );
    // A native histogram whose buckets hold 3 observations but whose count says 5.
    let mut histogram = ts(&[("__name__", "bad_histogram")], &[(t, 1.0)]);
    histogram.histograms.push(proto::Histogram {
        count: Some(proto::histogram::Count::Int(5)),
        positive_spans: vec![proto::BucketSpan {
            offset: 0,
            length: 1,
        }],
        positive_deltas: vec![3],
        timestamp: t,
        ..Default::default()
    });
    expect(
        "invalid native histogram",
        remote_write(&node, &request(vec![histogram])),
        400,
        "invalid native histogram",
    );

    let big: Vec<proto::TimeSeries> = (0..10_000u64)
        .map(|i| {
            let id = format!("{:016x}", splitmix64(i));
            ts(
                &[("__name__", "bad_too_large"), ("id", &id)],
                &[(t, i as f64)],
            )
        })
        .collect();
    let big_body = proto::encode_snappy(&request(big));
    assert!(big_body.len() > BODY_LIMIT, "{} bytes", big_body.len());
    expect(
        "oversized body",
        post_write(&node, &RW_HEADERS, &big_body),
        413,
        "too large",
    );

    expect(
        "wrong content type",
        post_write(
            &node,
            &[
                ("Content-Type", "application/json"),
                ("Content-Encoding", "snappy"),
            ],
            &valid,
        ),
        415,
        "Content-Type",
    );
    expect(
        "unknown protobuf message",
        post_write(
            &node,
            &[
                (
                    "Content-Type",
                    "application/x-protobuf;proto=io.prometheus.write.v3.Request",
                ),
                ("Content-Encoding", "snappy"),
            ],
            &valid,
        ),
        415,
        "io.prometheus.write.v3.Request",
    );
    expect(
        "wrong encoding",
        post_write(
            &node,
            &[
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", "gzip"),
            ],
            &valid,
        ),
        415,
        "gzip",
    );

    // The node is up and a valid request right after all that is stored.
    assert_eq!(get(&node.url("/-/healthy")).0, 200);
    let (status, body) = remote_write(
        &node,
        &request(vec![ts(&[("__name__", "bad_control")], &[(t, 42.0)])]),
    );
    assert_eq!(status, 204, "{body}");
    let (status, body) = remote_write(&node, &proto::WriteRequest::default());
    assert_eq!(status, 204, "an empty request is valid: {body}");

    let (_, metrics) = get(&node.url("/metrics"));
    for line in [
        r#"timbala_ingest_requests_rejected_total{reason="bad_snappy"} 2"#,
        r#"timbala_ingest_requests_rejected_total{reason="invalid_labels"} 4"#,
        r#"timbala_ingest_requests_rejected_total{reason="unsupported_content_type"} 2"#,
        r#"timbala_ingest_requests_rejected_total{reason="too_large"} 1"#,
        "timbala_ingest_samples_stored_total 1",
    ] {
        assert!(metrics.contains(line), "/metrics lacks {line}");
    }

    let everything = [(MatcherType::Re, "__name__", "bad_.*")];
    for rt in [ResponseType::Samples, ResponseType::StreamedXorChunks] {
        let seen: Vec<String> = remote_read(&node, &everything, 0, i64::MAX, rt)
            .into_iter()
            .map(|s| format!("{:?}", s.labels))
            .collect();
        assert_eq!(
            seen,
            vec![r#"[("__name__", "bad_control")]"#.to_string()],
            "{rt:?}"
        );
    }
}

#[test]
fn bad_remote_read_requests_are_400() {
    let node = Node::start(&[]);
    let (status, _) = post(&node.url("/api/v1/read"), &RW_HEADERS, b"garbage");
    assert_eq!(status, 400);
    let (status, body) = remote_read_raw(
        &node,
        &[(MatcherType::Re, "job", "(")],
        0,
        1,
        ResponseType::Samples,
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert_eq!(get(&node.url("/-/healthy")).0, 200);
}

#[test]
fn samples_refused_by_storage_give_400_and_the_rest_is_stored() {
    let node = Node::start(&["--out-of-order-window", "10m"]);
    let now = now_ms();
    let first = request(vec![ts(&[("__name__", "partial")], &[(now, 1.0)])]);
    assert_eq!(remote_write(&node, &first).0, 204);
    // One sample far behind the series' newest one, one new sample, one new series.
    let second = request(vec![
        ts(
            &[("__name__", "partial")],
            &[(now - 3_600_000, 2.0), (now + 1_000, 3.0)],
        ),
        ts(&[("__name__", "partial_other")], &[(now, 4.0)]),
    ]);
    let (status, body) = remote_write(&node, &second);
    assert_eq!(status, 400, "{body}");
    assert!(body.starts_with("1 samples rejected"), "{body}");
    // Resending is harmless: the same samples again change nothing.
    assert_eq!(remote_write(&node, &first).0, 204);

    let all = [(MatcherType::Re, "__name__", "partial.*")];
    let got = remote_read(&node, &all, 0, i64::MAX, ResponseType::Samples);
    let values: Vec<(String, Vec<i64>)> = got
        .into_iter()
        .map(|s| {
            (
                s.labels[0].1.clone(),
                s.samples.iter().map(|x| x.0).collect(),
            )
        })
        .collect();
    assert_eq!(
        values,
        vec![
            ("partial".to_string(), vec![now, now + 1_000]),
            ("partial_other".to_string(), vec![now]),
        ]
    );
}
