//! Acceptance: Prometheus remote write 2.0 (`io.prometheus.write.v2.Request`, ADR 0027)
//! into the real binary, requests built here with a symbol table as Prometheus 3.x
//! builds them.
//!
//! - Samples, per-series metadata and start timestamps are stored and read back through
//!   `/api/v1/query`, `/api/v1/series` and `/api/v1/metadata`; a start timestamp gives
//!   one zero sample before the first sample of a counter, and only then; the
//!   `X-Prometheus-Remote-Write-*-Written` headers count exactly what was stored.
//! - Native histograms (integer, float, custom buckets) are stored, counted in the
//!   written headers, and read back through the query API (functions and Prometheus's
//!   JSON `histogram` shape) and remote read exactly as sent; one refused by storage is
//!   counted alone; an invalid one refuses its whole request, leaving nothing visible.
//! - Malformed requests are each refused with 400 and a message, and nothing of them is
//!   visible afterwards; an unknown `proto=` is 415; remote write 1.0 is unchanged.
//! - Exemplars (2.0 and 1.0) are stored in a bounded per-node store and answered by
//!   `/api/v1/query_exemplars` in Prometheus's shape; the oldest make room for new ones;
//!   they do not survive a restart.
//! - In a cluster of four, a 2.0 write to one node is answered by every node, samples, metadata
//!   and exemplars alike, and every series (with its created-timestamp zero) is on three
//!   nodes.

mod common;

use std::time::Duration;

use common::*;
use prost::Message;
use serde_json::Value;
use timbala::proto::histogram::{Count, ZeroCount};
use timbala::proto::{self, write_v2};

const RW2_CONTENT_TYPE: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

/// The answer to a 2.0 write: status, body and the three written headers.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
    samples: Option<u64>,
    histograms: Option<u64>,
    exemplars: Option<u64>,
}

fn send_raw(node: &Node, content_type: &str, raw: &[u8]) -> Answer {
    let body = snap::raw::Encoder::new()
        .compress_vec(raw)
        .expect("compress");
    let (status, body, headers) = post_with_response_headers(
        &node.url("/api/v1/write"),
        &[
            ("Content-Type", content_type),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "2.0.0"),
        ],
        &body,
    );
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.parse::<u64>().expect("a count"))
    };
    Answer {
        status,
        body,
        samples: header("X-Prometheus-Remote-Write-Samples-Written"),
        histograms: header("X-Prometheus-Remote-Write-Histograms-Written"),
        exemplars: header("X-Prometheus-Remote-Write-Exemplars-Written"),
    }
}

fn send(node: &Node, request: &write_v2::Request) -> Answer {
    send_raw(node, RW2_CONTENT_TYPE, &request.encode_to_vec())
}

/// Builds a 2.0 request series by series over one symbol table.
#[derive(Default)]
struct Builder {
    symbols: write_v2::SymbolTable,
    series: Vec<write_v2::TimeSeries>,
}

impl Builder {
    /// A series with float samples `(t, v)`, each with `start` as its start timestamp
    /// (0: none), and metadata when `metadata` is given: (type, help, unit).
    fn series(
        &mut self,
        labels: &[(&str, &str)],
        samples: &[(i64, f64)],
        start: i64,
        metadata: Option<(proto::MetricType, &str, &str)>,
    ) -> &mut write_v2::TimeSeries {
        let mut labels = labels.to_vec();
        labels.sort();
        let labels_refs = self.symbols.symbolize_labels(labels);
        let metadata = metadata.map(|(t, help, unit)| write_v2::Metadata {
            r#type: t as i32,
            help_ref: self.symbols.symbolize(help),
            unit_ref: self.symbols.symbolize(unit),
        });
        self.series.push(write_v2::TimeSeries {
            labels_refs,
            samples: samples
                .iter()
                .map(|&(timestamp, value)| write_v2::Sample {
                    value,
                    timestamp,
                    start_timestamp: start,
                })
                .collect(),
            metadata,
            ..Default::default()
        });
        self.series.last_mut().expect("just pushed")
    }

    /// Adds an exemplar with one label, `trace_id`, to the last series.
    fn exemplar(&mut self, trace_id: &str, value: f64, t: i64) -> &mut Self {
        let labels_refs = self.symbols.symbolize_labels([("trace_id", trace_id)]);
        let series = self.series.last_mut().expect("a series first");
        series.exemplars.push(write_v2::Exemplar {
            labels_refs,
            value,
            timestamp: t,
        });
        self
    }

    fn build(self) -> write_v2::Request {
        write_v2::Request {
            symbols: self.symbols.into_symbols(),
            timeseries: self.series,
        }
    }
}

/// A recent start on a whole second, so every sample falls inside the head.
fn base_ms() -> i64 {
    let now = now_ms();
    now - now % 1_000 - 10 * 60_000
}

fn api(node: &Node, path_and_query: &str) -> Value {
    let (code, body) = get(&node.url(path_and_query));
    assert_eq!(code, 200, "{path_and_query}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The samples of the one series `selector[range]` selects at `at_ms`: (ms, value).
fn range_samples(node: &Node, selector: &str, range: &str, at_ms: i64) -> Vec<(i64, f64)> {
    let query = encode(&format!("{selector}[{range}]"));
    let answer = api(
        node,
        &format!("/api/v1/query?query={query}&time={}", at_ms as f64 / 1000.0),
    );
    let result = answer["data"]["result"].as_array().expect("result");
    assert_eq!(result.len(), 1, "{selector}: {answer}");
    result[0]["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|p| {
            let t = (p[0].as_f64().expect("time") * 1000.0).round() as i64;
            let v: f64 = p[1].as_str().expect("value").parse().expect("float");
            (t, v)
        })
        .collect()
}

/// The label sets of the series matching `selector`, as `name=value` strings.
fn series_of(node: &Node, selector: &str) -> Vec<String> {
    let answer = api(
        node,
        &format!("/api/v1/series?match[]={}", encode(selector)),
    );
    let mut out: Vec<String> = answer["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|labels| {
            let mut pairs: Vec<String> = labels
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            pairs.sort();
            pairs.join(",")
        })
        .collect();
    out.sort();
    out
}

/// The `data` of `/api/v1/query_exemplars` for `query` over `[start, end]` (ms).
fn exemplars(node: &Node, query: &str, start: i64, end: i64) -> Value {
    let answer = api(
        node,
        &format!(
            "/api/v1/query_exemplars?query={}&start={}&end={}",
            encode(query),
            start as f64 / 1000.0,
            end as f64 / 1000.0
        ),
    );
    assert_eq!(answer["status"], "success", "{answer}");
    answer["data"].clone()
}

#[test]
fn samples_metadata_and_start_timestamps_are_stored_and_counted() {
    let node = Node::start(&[]);
    let t0 = base_ms();
    let counter = [("__name__", "rw2_requests_total"), ("job", "api")];
    let mut b = Builder::default();
    b.series(
        &counter,
        &[(t0 + 15_000, 5.0), (t0 + 30_000, 7.0)],
        t0,
        Some((proto::MetricType::Counter, "Requests served.", "")),
    );
    b.exemplar("trace-b", 2.0, t0 + 29_500)
        .exemplar("trace-a", 1.5, t0 + 14_250);
    b.series(
        &[("__name__", "rw2_temperature_celsius"), ("room", "ünï")],
        &[(t0 + 15_000, 21.5)],
        0,
        Some((proto::MetricType::Gauge, "Room temperature.", "celsius")),
    );
    b.series(
        &[("__name__", "rw2_latency_seconds_bucket"), ("le", "+Inf")],
        &[(t0 + 15_000, 3.0), (t0 + 30_000, 4.0)],
        t0 + 1_000,
        Some((proto::MetricType::Histogram, "Latency.", "seconds")),
    );
    b.series(
        &[("__name__", "rw2_latency_seconds_count"), ("le", "")],
        &[(t0 + 15_000, 3.0)],
        t0 + 1_000,
        Some((proto::MetricType::Histogram, "Latency.", "seconds")),
    );
    let request = b.build();
    let answer = send(&node, &request);
    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(
        (answer.samples, answer.histograms, answer.exemplars),
        (Some(6), Some(0), Some(2)),
        "the zero samples of start timestamps are not the client's samples"
    );
    // The exemplars, in Prometheus's shape (value as a string, time in seconds).
    let data = exemplars(&node, "rate(rw2_requests_total[5m])", t0, t0 + 60_000);
    let seconds = |ms: i64| serde_json::Number::from_f64(ms as f64 / 1000.0).expect("finite");
    assert_eq!(
        data,
        serde_json::json!([{
            "seriesLabels": {"__name__": "rw2_requests_total", "job": "api"},
            "exemplars": [
                {"labels": {"trace_id": "trace-a"}, "value": "1.5", "timestamp": seconds(t0 + 14_250)},
                {"labels": {"trace_id": "trace-b"}, "value": "2", "timestamp": seconds(t0 + 29_500)}
            ]
        }])
    );
    // Outside the time range, or another series: nothing.
    assert_eq!(
        exemplars(&node, "rw2_requests_total", t0 + 30_000, t0 + 60_000),
        serde_json::json!([])
    );
    assert_eq!(
        exemplars(&node, "rw2_temperature_celsius", t0, t0 + 60_000),
        serde_json::json!([])
    );

    // The counter: a zero at its start, then its samples.
    let at = t0 + 30_000;
    assert_eq!(
        range_samples(&node, "rw2_requests_total", "1m", at),
        vec![(t0, 0.0), (t0 + 15_000, 5.0), (t0 + 30_000, 7.0)]
    );
    // A gauge sent without a start timestamp gets no zero.
    assert_eq!(
        range_samples(&node, "rw2_temperature_celsius", "1m", at),
        vec![(t0 + 15_000, 21.5)]
    );
    assert_eq!(
        range_samples(&node, "rw2_latency_seconds_bucket", "1m", at),
        vec![(t0 + 1_000, 0.0), (t0 + 15_000, 3.0), (t0 + 30_000, 4.0)]
    );
    assert_eq!(
        series_of(&node, r#"{__name__=~"rw2_.*"}"#),
        vec![
            "__name__=rw2_latency_seconds_bucket,le=+Inf",
            "__name__=rw2_latency_seconds_count",
            "__name__=rw2_requests_total,job=api",
            "__name__=rw2_temperature_celsius,room=ünï",
        ]
    );

    // Metadata, by metric family.
    let metadata = api(&node, "/api/v1/metadata")["data"].clone();
    assert_eq!(
        metadata["rw2_requests_total"],
        serde_json::json!([{"type": "counter", "help": "Requests served.", "unit": ""}])
    );
    assert_eq!(
        metadata["rw2_temperature_celsius"],
        serde_json::json!([{"type": "gauge", "help": "Room temperature.", "unit": "celsius"}])
    );
    assert_eq!(
        metadata["rw2_latency_seconds"],
        serde_json::json!([{"type": "histogram", "help": "Latency.", "unit": "seconds"}])
    );

    // The same request again (a retry): samples and exemplars count as written, and
    // neither a second zero nor a second copy of an exemplar is stored.
    let again = send(&node, &request);
    assert_eq!(
        (again.status, again.samples, again.exemplars),
        (204, Some(6), Some(2)),
        "{again:?}"
    );
    assert_eq!(
        exemplars(&node, "rw2_requests_total", t0, t0 + 60_000)[0]["exemplars"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    // The next request of the same counter carries the same start: no new zero.
    let mut b = Builder::default();
    b.series(&counter, &[(t0 + 45_000, 9.0)], t0, None);
    let next = send(&node, &b.build());
    assert_eq!((next.status, next.samples), (204, Some(1)), "{next:?}");
    // A counter reset: the new start is after everything held, so a zero goes there.
    let mut b = Builder::default();
    b.series(&counter, &[(t0 + 75_000, 1.0)], t0 + 60_000, None);
    let reset = send(&node, &b.build());
    assert_eq!((reset.status, reset.samples), (204, Some(1)), "{reset:?}");
    assert_eq!(
        range_samples(&node, "rw2_requests_total", "2m", t0 + 75_000),
        vec![
            (t0, 0.0),
            (t0 + 15_000, 5.0),
            (t0 + 30_000, 7.0),
            (t0 + 45_000, 9.0),
            (t0 + 60_000, 0.0),
            (t0 + 75_000, 1.0)
        ]
    );
    // Samples refused by storage are left out of the count: a different value at a
    // stored timestamp is a conflict (400), the new sample next to it is stored.
    let mut b = Builder::default();
    b.series(&counter, &[(t0 + 75_000, 2.0), (t0 + 90_000, 3.0)], 0, None);
    let partial = send(&node, &b.build());
    assert_eq!(partial.status, 400, "{partial:?}");
    assert_eq!(partial.samples, Some(1), "{partial:?}");
    assert!(partial.body.contains("duplicate_timestamp"), "{partial:?}");
}

/// An integer histogram of schema 0 at `t`: 2 observations in the zero bucket (of
/// width 0.001) and `n` in (1, 2], each of 1.5.
fn int_histogram(t: i64, n: u64) -> write_v2::Histogram {
    write_v2::Histogram {
        count: Some(Count::Int(n + 2)),
        sum: 1.5 * n as f64,
        schema: 0,
        zero_threshold: 0.001,
        zero_count: Some(ZeroCount::Int(2)),
        positive_spans: vec![proto::BucketSpan {
            offset: 1,
            length: 1,
        }],
        positive_deltas: vec![n as i64],
        timestamp: t,
        ..Default::default()
    }
}

/// A float histogram with custom bucket bounds 0.5 and 1 (schema -53) at `t`: `a` in
/// (-Inf, 0.5], `b` in (0.5, 1], `c` in (1, +Inf].
fn custom_histogram(t: i64, a: f64, b: f64, c: f64) -> write_v2::Histogram {
    write_v2::Histogram {
        count: Some(Count::Float(a + b + c)),
        sum: 0.25 * a + 0.75 * b + 2.0 * c,
        schema: -53,
        zero_count: Some(ZeroCount::Float(0.0)),
        positive_spans: vec![proto::BucketSpan {
            offset: 0,
            length: 3,
        }],
        positive_counts: vec![a, b, c],
        custom_values: vec![0.5, 1.0],
        timestamp: t,
        ..Default::default()
    }
}

/// The value of the one series `query` gives at `at_ms`.
fn scalar_at(node: &Node, query: &str, at_ms: i64) -> String {
    let answer = api(
        node,
        &format!(
            "/api/v1/query?query={}&time={}",
            encode(query),
            at_ms as f64 / 1000.0
        ),
    );
    let result = answer["data"]["result"].as_array().expect("result");
    assert_eq!(result.len(), 1, "{query}: {answer}");
    result[0]["value"][1].as_str().expect("value").to_string()
}

/// Remote read (SAMPLES) of `name` over `[start, end]`: each series' float samples and
/// native histograms.
fn remote_read_histograms(
    node: &Node,
    name: &str,
    start: i64,
    end: i64,
) -> Vec<(Vec<f64>, Vec<proto::Histogram>)> {
    let request = proto::ReadRequest {
        queries: vec![proto::Query {
            start_timestamp_ms: start,
            end_timestamp_ms: end,
            matchers: vec![eq("__name__", name)],
            hints: None,
        }],
        accepted_response_types: vec![proto::ResponseType::Samples as i32],
    };
    let (status, body) = post(
        &node.url("/api/v1/read"),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Read-Version", "0.1.0"),
        ],
        &proto::encode_snappy(&request),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&body)
        .expect("snappy");
    let response = proto::ReadResponse::decode(raw.as_slice()).expect("ReadResponse");
    response.results[0]
        .timeseries
        .iter()
        .map(|ts| {
            let floats = ts.samples.iter().map(|s| s.value).collect();
            (floats, ts.histograms.clone())
        })
        .collect()
}

/// The histogram as stored, for comparing with what was sent: the counter-reset hint
/// is the chunk's to decide (Prometheus's `Equals` ignores it too).
fn without_hint(mut h: proto::Histogram) -> proto::Histogram {
    h.reset_hint = 0;
    h.start_timestamp = 0;
    h
}

#[test]
fn native_histograms_are_stored_counted_and_read_back() {
    let node = Node::start(&[]);
    let t0 = base_ms();
    let mut b = Builder::default();
    b.series(
        &[("__name__", "rw2_hist_floats"), ("job", "a")],
        &[(t0, 1.0), (t0 + 15_000, 2.0)],
        0,
        Some((proto::MetricType::Gauge, "Floats.", "")),
    );
    b.series(
        &[("__name__", "rw2_native_seconds"), ("job", "a")],
        &[],
        0,
        Some((proto::MetricType::Histogram, "Latency.", "seconds")),
    )
    .histograms = vec![int_histogram(t0 + 15_000, 7), int_histogram(t0, 3)];
    b.exemplar("trace-h", 1.5, t0 + 15_000);
    b.series(&[("__name__", "rw2_custom"), ("job", "a")], &[], 0, None)
        .histograms = vec![
        custom_histogram(t0, 1.0, 2.0, 1.0),
        custom_histogram(t0 + 15_000, 2.0, 4.0, 2.0),
    ];
    let sent = b.build();
    let answer = send(&node, &sent);
    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(
        (answer.samples, answer.histograms, answer.exemplars),
        (Some(2), Some(4), Some(1)),
        "{answer:?}"
    );
    let at = t0 + 15_000;
    assert_eq!(
        scalar_at(&node, "histogram_count(rw2_native_seconds)", at),
        "9"
    );
    assert_eq!(
        scalar_at(&node, "histogram_sum(rw2_native_seconds)", at),
        "10.5"
    );
    assert_eq!(
        scalar_at(
            &node,
            "histogram_count(rw2_native_seconds) - histogram_count(rw2_native_seconds offset 15s)",
            at
        ),
        "4"
    );
    assert_eq!(scalar_at(&node, "histogram_count(rw2_custom)", at), "8");
    assert_eq!(
        scalar_at(&node, "histogram_fraction(0.5, 1, rw2_custom)", at),
        "0.5"
    );
    assert_eq!(
        scalar_at(&node, "histogram_quantile(0.5, rw2_custom)", at),
        "0.75"
    );
    // The raw histogram in Prometheus's JSON shape.
    let raw = api(
        &node,
        &format!(
            "/api/v1/query?query=rw2_native_seconds&time={}",
            at as f64 / 1000.0
        ),
    );
    let histogram = &raw["data"]["result"][0]["histogram"];
    assert_eq!(histogram[1]["count"], "9", "{raw}");
    assert_eq!(histogram[1]["sum"], "10.5", "{raw}");
    assert_eq!(
        histogram[1]["buckets"],
        serde_json::json!([[3, "-0.001", "0.001", "2"], [0, "1", "2", "7"]]),
        "{raw}"
    );
    assert_eq!(
        exemplars(&node, "rw2_native_seconds", t0, at)[0]["exemplars"][0]["labels"]["trace_id"],
        "trace-h"
    );
    // Series holding histograms only are found by the series API too.
    assert_eq!(
        series_of(&node, r#"{__name__=~"rw2_.*"}"#),
        vec![
            "__name__=rw2_custom,job=a",
            "__name__=rw2_hist_floats,job=a",
            "__name__=rw2_native_seconds,job=a"
        ]
    );
    let metadata = api(&node, "/api/v1/metadata?metric=rw2_native_seconds");
    assert_eq!(
        metadata["data"]["rw2_native_seconds"],
        serde_json::json!([{"type": "histogram", "help": "Latency.", "unit": "seconds"}])
    );

    // Remote read gives back exactly what was sent, in time order.
    let read = remote_read_histograms(&node, "rw2_native_seconds", t0, at);
    assert_eq!(read.len(), 1);
    assert!(read[0].0.is_empty());
    let mut want: Vec<proto::Histogram> = sent.timeseries[1]
        .histograms
        .iter()
        .cloned()
        .map(without_hint)
        .collect();
    want.sort_by_key(|h| h.timestamp);
    let got: Vec<proto::Histogram> = read[0].1.iter().cloned().map(without_hint).collect();
    assert_eq!(got, want);
    let read = remote_read_histograms(&node, "rw2_custom", t0, at);
    let got: Vec<proto::Histogram> = read[0].1.iter().cloned().map(without_hint).collect();
    let want: Vec<proto::Histogram> = sent.timeseries[2]
        .histograms
        .iter()
        .cloned()
        .map(without_hint)
        .collect();
    assert_eq!(got, want);

    // A histogram at a time already stored with another value is refused alone and
    // counted; the request's float sample is stored.
    let mut b = Builder::default();
    b.series(
        &[("__name__", "rw2_hist_floats"), ("job", "a")],
        &[(t0 + 30_000, 3.0)],
        0,
        None,
    );
    b.series(
        &[("__name__", "rw2_native_seconds"), ("job", "a")],
        &[],
        0,
        None,
    )
    .histograms = vec![int_histogram(t0 + 15_000, 8), int_histogram(t0 + 30_000, 9)];
    let partial = send(&node, &b.build());
    assert_eq!(partial.status, 400, "{partial:?}");
    assert_eq!(
        (partial.samples, partial.histograms, partial.exemplars),
        (Some(1), Some(1), Some(0)),
        "{partial:?}"
    );
    assert!(
        partial.body.contains("1 histogram samples rejected"),
        "{partial:?}"
    );
    assert_eq!(
        scalar_at(&node, "histogram_count(rw2_native_seconds)", t0 + 30_000),
        "11"
    );
    let metrics = get(&node.url("/metrics")).1;
    for line in [
        "timbala_ingest_histogram_samples_received_total 6",
        "timbala_ingest_histogram_samples_stored_total 5",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
}

#[test]
fn invalid_native_histograms_refuse_the_whole_request() {
    let node = Node::start(&[]);
    let t = base_ms();
    type Break = fn(&mut write_v2::Histogram);
    let cases: Vec<(&str, Break)> = vec![
        ("Count field is 99", |h| h.count = Some(Count::Int(99))),
        ("schema", |h| h.schema = 9),
        ("spans need 2 buckets", |h| h.positive_spans[0].length = 2),
        ("negative", |h| h.positive_deltas[0] = -4),
        ("must not have custom bounds", |h| {
            h.custom_values = vec![1.0]
        }),
    ];
    for (case, (message, break_it)) in cases.iter().enumerate() {
        let mut b = Builder::default();
        valid_neighbour(&mut b, case, t);
        let mut broken = int_histogram(t, 4);
        break_it(&mut broken);
        b.series(&[("__name__", "rw2_broken_h"), ("job", "a")], &[], 0, None)
            .histograms = vec![int_histogram(t - 15_000, 2), broken];
        let answer = send(&node, &b.build());
        assert_eq!(answer.status, 400, "case {case}: {answer:?}");
        assert!(
            answer.body.contains("invalid native histogram") && answer.body.contains(message),
            "case {case}: wanted {message:?} in {:?}",
            answer.body
        );
        assert_eq!(
            (answer.samples, answer.histograms, answer.exemplars),
            (Some(0), Some(0), Some(0)),
            "case {case}"
        );
    }
    assert!(series_of(&node, r#"{__name__=~"rw2_.*"}"#).is_empty());
    let metrics = get(&node.url("/metrics")).1;
    assert!(
        metrics.contains(&format!(
            r#"timbala_ingest_requests_rejected_total{{reason="invalid_histogram"}} {}"#,
            cases.len()
        )),
        "{metrics}"
    );
}

/// A valid series to put next to a malformed one: it must not become visible.
fn valid_neighbour(b: &mut Builder, case: usize, t: i64) {
    b.series(
        &[("__name__", &format!("rw2_bad_{case}")), ("job", "a")],
        &[(t, 1.0)],
        t - 1_000,
        Some((proto::MetricType::Counter, "Never stored.", "")),
    );
}

#[test]
fn malformed_requests_are_refused_whole_and_leave_nothing() {
    let node = Node::start(&[]);
    let t = base_ms();
    type Break = fn(&mut write_v2::Request);
    let cases: Vec<(&str, Break)> = vec![
        ("symbols[0] must be the empty string", |r| {
            r.symbols[0] = "x".into()
        }),
        ("odd number", |r| {
            r.timeseries[1].labels_refs.pop();
        }),
        ("outside the symbol table", |r| {
            r.timeseries[1].labels_refs[1] = 1_000
        }),
        ("label name is empty", |r| {
            r.timeseries[1].labels_refs[2] = 0
        }),
        ("not sorted", |r| r.timeseries[1].labels_refs.swap(0, 2)),
        ("duplicate label name", |r| {
            let (n, v) = (
                r.timeseries[1].labels_refs[2],
                r.timeseries[1].labels_refs[3],
            );
            r.timeseries[1].labels_refs.extend([n, v]);
        }),
        ("missing metric name", |r| {
            r.timeseries[1].labels_refs.drain(0..2);
        }),
        ("exemplar labels_refs", |r| {
            r.timeseries[1].exemplars.push(write_v2::Exemplar {
                labels_refs: vec![1, 9_999],
                value: 1.0,
                timestamp: 1,
            })
        }),
        ("metadata help_ref", |r| {
            r.timeseries[1].metadata = Some(write_v2::Metadata {
                r#type: 1,
                help_ref: 9_999,
                unit_ref: 0,
            })
        }),
    ];
    for (case, (message, break_it)) in cases.iter().enumerate() {
        let mut b = Builder::default();
        valid_neighbour(&mut b, case, t);
        b.series(
            &[("__name__", "rw2_broken"), ("zone", "z")],
            &[(t, 2.0)],
            0,
            None,
        );
        let mut request = b.build();
        break_it(&mut request);
        let answer = send(&node, &request);
        assert_eq!(answer.status, 400, "case {case}: {answer:?}");
        assert!(
            answer.body.contains(message),
            "case {case}: wanted {message:?} in {:?}",
            answer.body
        );
        assert_eq!(
            (answer.samples, answer.histograms, answer.exemplars),
            (Some(0), Some(0), Some(0)),
            "case {case}"
        );
    }
    // Bytes that are not a 2.0 request, and a symbol that is not UTF-8.
    let garbage = send_raw(&node, RW2_CONTENT_TYPE, b"\x2a\x05\x0a");
    assert_eq!(garbage.status, 400, "{garbage:?}");
    assert!(garbage.body.contains("io.prometheus.write.v2.Request"));
    assert_eq!(garbage.samples, Some(0));
    let not_utf8 = send_raw(&node, RW2_CONTENT_TYPE, b"\x22\x00\x22\x02\xff\xfe");
    assert_eq!(not_utf8.status, 400, "{not_utf8:?}");
    assert!(not_utf8.body.contains("UTF-8"), "{not_utf8:?}");

    assert!(series_of(&node, r#"{__name__=~"rw2_.*"}"#).is_empty());
    let metadata = api(&node, "/api/v1/metadata")["data"].clone();
    assert!(
        metadata.as_object().expect("object").is_empty(),
        "{metadata}"
    );
    let metrics = get(&node.url("/metrics")).1;
    assert!(
        metrics
            .contains(r#"timbala_ingest_requests_rejected_total{reason="invalid_symbol_refs"} 5"#),
        "{metrics}"
    );

    // An unknown message in Content-Type is 415, and no 2.0 headers are promised.
    let mut b = Builder::default();
    valid_neighbour(&mut b, 99, t);
    let raw = b.build().encode_to_vec();
    let unknown = send_raw(
        &node,
        "application/x-protobuf;proto=io.prometheus.write.v3.Request",
        &raw,
    );
    assert_eq!(unknown.status, 415, "{unknown:?}");
    assert!(unknown.body.contains("v3"), "{unknown:?}");
    assert!(series_of(&node, r#"{__name__=~"rw2_.*"}"#).is_empty());
}

#[test]
fn remote_write_1_is_unchanged_and_its_exemplars_are_stored() {
    let node = Node::start(&[]);
    let t = base_ms();
    let mut with_exemplar = ts(&[("__name__", "rw1_up"), ("job", "a")], &[(t, 1.0)]);
    with_exemplar.exemplars.push(proto::Exemplar {
        labels: vec![proto::Label {
            name: "trace_id".into(),
            value: "rw1".into(),
        }],
        value: 0.25,
        timestamp: t,
    });
    let (status, body, headers) = post_with_response_headers(
        &node.url("/api/v1/write"),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
        ],
        &proto::encode_snappy(&proto::WriteRequest {
            timeseries: vec![with_exemplar],
            metadata: vec![],
        }),
    );
    assert_eq!(status, 204, "{body}");
    assert!(
        !headers
            .iter()
            .any(|(k, _)| k.starts_with("x-prometheus-remote-write")),
        "{headers:?}"
    );
    // A 1.0 request's native histograms are stored too.
    let mut with_histogram = ts(&[("__name__", "rw1_h")], &[(t, 1.0)]);
    with_histogram.histograms.push(int_histogram(t + 1_000, 5));
    let (status, body) = remote_write(
        &node,
        &proto::WriteRequest {
            timeseries: vec![with_histogram],
            metadata: vec![],
        },
    );
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        series_of(&node, r#"{__name__=~"rw1_.*"}"#),
        vec!["__name__=rw1_h", "__name__=rw1_up,job=a"]
    );
    assert_eq!(scalar_at(&node, "histogram_count(rw1_h)", t + 1_000), "7");
    assert_eq!(range_samples(&node, "rw1_up", "1m", t), vec![(t, 1.0)]);
    let found = exemplars(&node, "rw1_up", t - 1_000, t);
    assert_eq!(
        found[0]["exemplars"][0]["labels"]["trace_id"], "rw1",
        "{found}"
    );
    assert_eq!(found[0]["exemplars"][0]["value"], "0.25", "{found}");
}

#[test]
fn exemplars_are_bounded_per_node_and_invalid_ones_dropped() {
    let node = Node::start(&["--exemplars-limit", "3"]);
    let t0 = base_ms();
    let mut b = Builder::default();
    b.series(
        &[("__name__", "rw2_bounded_total"), ("job", "a")],
        &[(t0 + 10_000, 1.0)],
        0,
        None,
    );
    for i in 1..=5 {
        b.exemplar(&format!("trace-{i}"), i as f64, t0 + i * 1_000);
    }
    // Prometheus's limit: 128 characters of exemplar labels.
    b.exemplar(&"x".repeat(121), 9.0, t0 + 6_000);
    let answer = send(&node, &b.build());
    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(answer.exemplars, Some(5), "{answer:?}");
    let found = exemplars(&node, "rw2_bounded_total", t0, t0 + 10_000);
    let traces: Vec<&str> = found[0]["exemplars"]
        .as_array()
        .expect("exemplars")
        .iter()
        .map(|e| e["labels"]["trace_id"].as_str().expect("trace"))
        .collect();
    assert_eq!(
        traces,
        ["trace-3", "trace-4", "trace-5"],
        "the newest three"
    );
    let metrics = get(&node.url("/metrics")).1;
    for line in [
        "timbala_ingest_exemplars_stored_total 5",
        "timbala_ingest_exemplars_dropped_total 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // Not kept across a restart (memory only; ADR 0027).
    let dir = node.data_dir.clone();
    let mut node = node;
    let _tmp = node.take_tempdir();
    node.terminate();
    let node = Node::start_in(&dir, &["--exemplars-limit", "3"]);
    assert_eq!(
        exemplars(&node, "rw2_bounded_total", t0, t0 + 10_000),
        serde_json::json!([])
    );
    assert_eq!(
        range_samples(&node, "rw2_bounded_total", "1m", t0 + 10_000).len(),
        1
    );
}

#[test]
fn a_cluster_answers_remote_write_2_from_every_node() {
    // Four nodes: each series on three of them, so most writes are forwarded.
    let cluster = start_cluster(4, &[]);
    let nodes: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
    wait_converged(&nodes, 4, Duration::from_secs(30));
    let t0 = base_ms();
    const SERIES: usize = 24;
    let mut b = Builder::default();
    for i in 0..SERIES {
        b.series(
            &[
                ("__name__", "rw2_cluster_total"),
                ("instance", &format!("host-{i:02}")),
            ],
            &[(t0 + 15_000, i as f64 + 1.0), (t0 + 30_000, i as f64 + 2.0)],
            t0,
            Some((proto::MetricType::Counter, "Cluster counter.", "")),
        );
        b.exemplar(&format!("trace-{i:02}"), i as f64, t0 + 20_000);
    }
    let answer = send(nodes[1], &b.build());
    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(answer.samples, Some(2 * SERIES as u64), "{answer:?}");
    assert_eq!(answer.exemplars, Some(SERIES as u64), "{answer:?}");

    for node in &nodes {
        let count = api(
            node,
            &format!(
                "/api/v1/query?query={}&time={}",
                encode("count(count_over_time(rw2_cluster_total[1m]) == 3)"),
                (t0 + 30_000) as f64 / 1000.0
            ),
        );
        assert_eq!(
            count["data"]["result"][0]["value"][1].as_str(),
            Some(SERIES.to_string().as_str()),
            "{}: {count}",
            node.http_addr
        );
        assert_eq!(
            range_samples(
                node,
                r#"rw2_cluster_total{instance="host-07"}"#,
                "1m",
                t0 + 30_000
            ),
            vec![(t0, 0.0), (t0 + 15_000, 8.0), (t0 + 30_000, 9.0)]
        );
        // Every exemplar once, though each is held by three nodes.
        let found = exemplars(node, "rw2_cluster_total", t0, t0 + 30_000);
        let found = found.as_array().expect("series");
        assert_eq!(found.len(), SERIES, "{}", node.http_addr);
        for series in found {
            assert_eq!(
                series["exemplars"].as_array().map(Vec::len),
                Some(1),
                "{series}"
            );
        }
        let metadata = api(node, "/api/v1/metadata?metric=rw2_cluster_total");
        assert_eq!(
            metadata["data"]["rw2_cluster_total"],
            serde_json::json!([{"type": "counter", "help": "Cluster counter.", "unit": ""}]),
            "{}",
            node.http_addr
        );
    }
    // Every series, its created zero included, is stored on three nodes.
    let mut copies: std::collections::BTreeMap<Vec<(String, String)>, usize> = Default::default();
    for node in &nodes {
        for (labels, samples) in local_copies_of(node, None, "rw2_cluster_total") {
            assert_eq!(samples.first(), Some(&(t0, 0.0)), "{labels:?}");
            assert_eq!(samples.len(), 3, "{labels:?}");
            *copies.entry(labels).or_default() += 1;
        }
    }
    assert_eq!(copies.len(), SERIES);
    assert!(copies.values().all(|&n| n == 3), "{copies:?}");
    // Every exemplar is held by exactly the three nodes that own its series: each
    // node's own exemplars, through the internal read the fan-out uses.
    let mut exemplar_copies: std::collections::BTreeMap<String, usize> = Default::default();
    for node in &nodes {
        let (status, body) = post(
            &node.url("/internal/v1/exemplars"),
            &[("Content-Type", "application/json")],
            br#"{"selectors":[[["__name__","=","rw2_cluster_total"]]],"start":0,"end":9223372036854775807}"#,
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let held: Value = serde_json::from_slice(&body).expect("json");
        for exemplar in held.as_array().expect("list") {
            *exemplar_copies.entry(exemplar[0].to_string()).or_default() += 1;
        }
    }
    assert_eq!(exemplar_copies.len(), SERIES);
    assert!(
        exemplar_copies.values().all(|&n| n == 3),
        "{exemplar_copies:?}"
    );
    // Each node holds a share, not everything: the series were routed.
    for node in &nodes {
        let held = local_copies_of(node, None, "rw2_cluster_total").len();
        assert!(held < SERIES, "{}: {held}", node.http_addr);
    }
}
