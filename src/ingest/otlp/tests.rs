//! Decoding and translation of hand-built OTLP requests.

use std::io::Write as _;

use prost::Message;

use super::*;
use crate::model::{is_stale_nan, Labels, Series};
use crate::proto::otlp::*;

const T0_NANOS: u64 = 1_700_000_000_000_000_000;
const T0_MS: i64 = 1_700_000_000_000;
const LIMITS: DecodeLimits = DecodeLimits {
    max_decompressed_bytes: 1 << 20,
};

fn resource(attrs: &[(&str, &str)], metrics: Vec<Metric>) -> ResourceMetrics {
    ResourceMetrics {
        resource: Some(Resource {
            attributes: attrs.iter().map(|(k, v)| KeyValue::string(k, v)).collect(),
        }),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(InstrumentationScope {
                name: "my.library".into(),
                version: "1.0".into(),
                attributes: vec![],
            }),
            metrics,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

fn metric(name: &str, unit: &str, data: MetricData) -> Metric {
    Metric {
        name: name.into(),
        description: format!("{name} help"),
        unit: unit.into(),
        data: Some(data),
    }
}

fn number(attrs: &[(&str, &str)], offset_ms: u64, value: NumberValue) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs.iter().map(|(k, v)| KeyValue::string(k, v)).collect(),
        start_time_unix_nano: T0_NANOS - 60_000_000_000,
        time_unix_nano: T0_NANOS + offset_ms * 1_000_000,
        value: Some(value),
        exemplars: vec![],
        flags: 0,
    }
}

fn sum(
    points: Vec<NumberDataPoint>,
    temporality: AggregationTemporality,
    monotonic: bool,
) -> MetricData {
    MetricData::Sum(Sum {
        data_points: points,
        aggregation_temporality: temporality as i32,
        is_monotonic: monotonic,
    })
}

fn request(resources: Vec<ResourceMetrics>) -> Vec<u8> {
    ExportMetricsServiceRequest {
        resource_metrics: resources,
    }
    .encode_to_vec()
}

fn decode(body: &[u8]) -> Result<DecodedOtlp, IngestError> {
    decode_otlp_request(Some("application/x-protobuf"), None, body, &LIMITS)
}

/// The series named `name` with exactly these other labels.
fn find<'a>(decoded: &'a DecodedOtlp, name: &str, labels: &[(&str, &str)]) -> &'a Series {
    let mut pairs = vec![("__name__", name)];
    pairs.extend_from_slice(labels);
    let want = Labels::from_pairs(pairs);
    decoded
        .write
        .series
        .iter()
        .find(|s| s.labels == want)
        .unwrap_or_else(|| panic!("no series {want:?} in {:#?}", decoded.write.series))
}

fn values(series: &Series) -> Vec<(i64, f64)> {
    series.samples.iter().map(|s| (s.t, s.v)).collect()
}

const SERVICE: [(&str, &str); 4] = [
    ("service.name", "checkout"),
    ("service.namespace", "shop"),
    ("service.instance.id", "pod-1"),
    ("deployment.environment", "prod"),
];

#[test]
fn gauges_counters_and_resource_labels() {
    let body = request(vec![resource(
        &SERVICE,
        vec![
            metric(
                "http.server.requests",
                "{request}",
                sum(
                    vec![number(
                        &[("http.method", "GET"), ("job", "ignored")],
                        0,
                        NumberValue::AsInt(42),
                    )],
                    AggregationTemporality::Cumulative,
                    true,
                ),
            ),
            metric(
                "queue.depth",
                "1",
                sum(
                    vec![number(&[], 0, NumberValue::AsDouble(-3.0))],
                    AggregationTemporality::Cumulative,
                    false,
                ),
            ),
            metric(
                "memory.utilization",
                "1",
                MetricData::Gauge(Gauge {
                    data_points: vec![number(&[], 0, NumberValue::AsDouble(0.25))],
                }),
            ),
        ],
    )]);
    let decoded = decode(&body).unwrap();
    let id = [("instance", "pod-1"), ("job", "shop/checkout")];
    let counter = find(
        &decoded,
        "http_server_requests_total",
        &[("http_method", "GET"), id[0], id[1]],
    );
    assert_eq!(values(counter), vec![(T0_MS, 42.0)]);
    assert_eq!(
        values(find(&decoded, "queue_depth", &id)),
        vec![(T0_MS, -3.0)]
    );
    assert_eq!(
        values(find(&decoded, "memory_utilization_ratio", &id)),
        vec![(T0_MS, 0.25)]
    );
    let info = find(
        &decoded,
        "target_info",
        &[("deployment_environment", "prod"), id[0], id[1]],
    );
    assert_eq!(values(info), vec![(T0_MS, 1.0)]);
    assert_eq!(decoded.data_points, 3);
    assert_eq!(decoded.accepted_points(), 3);
    assert_eq!(
        decoded.write.series.len(),
        4,
        "no scope labels, no other series"
    );
    let types: Vec<(&str, &str)> = decoded
        .write
        .metadata
        .iter()
        .map(|m| (m.metric_family.as_str(), m.metric_type.as_str()))
        .collect();
    assert_eq!(
        types,
        vec![
            ("http_server_requests_total", "counter"),
            ("memory_utilization_ratio", "gauge"),
            ("queue_depth", "gauge"),
        ]
    );
}

#[test]
fn histograms_become_classic_buckets() {
    let point = HistogramDataPoint {
        attributes: vec![KeyValue::string("route", "/a")],
        start_time_unix_nano: 0,
        time_unix_nano: T0_NANOS,
        count: 10,
        sum: Some(12.5),
        bucket_counts: vec![2, 3, 5],
        explicit_bounds: vec![0.5, 1.0],
        exemplars: vec![Exemplar { time_unix_nano: 1 }],
        flags: 0,
    };
    let no_sum = HistogramDataPoint {
        attributes: vec![KeyValue::string("route", "/b")],
        sum: None,
        ..point.clone()
    };
    let body = request(vec![resource(
        &[("service.name", "api")],
        vec![metric(
            "http.server.duration",
            "ms",
            MetricData::Histogram(Histogram {
                data_points: vec![point, no_sum],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        )],
    )]);
    let decoded = decode(&body).unwrap();
    let base = "http_server_duration_milliseconds";
    let a = [("job", "api"), ("route", "/a")];
    let bucket = |le: &str| {
        values(find(
            &decoded,
            &format!("{base}_bucket"),
            &[a[0], ("le", le), a[1]],
        ))[0]
            .1
    };
    assert_eq!(
        (bucket("0.5"), bucket("1"), bucket("+Inf")),
        (2.0, 5.0, 10.0)
    );
    assert_eq!(
        values(find(&decoded, &format!("{base}_sum"), &a)),
        vec![(T0_MS, 12.5)]
    );
    assert_eq!(
        values(find(&decoded, &format!("{base}_count"), &a)),
        vec![(T0_MS, 10.0)]
    );
    let b_sum = Labels::from_pairs([
        ("__name__", format!("{base}_sum").as_str()),
        ("job", "api"),
        ("route", "/b"),
    ]);
    assert!(
        decoded.write.series.iter().all(|s| s.labels != b_sum),
        "no _sum without a sum"
    );
    assert_eq!(decoded.write.exemplars_dropped, 2);
    assert!(
        decoded
            .write
            .series
            .iter()
            .all(|s| s.labels.get("__name__") != Some("target_info")),
        "only job: no target_info"
    );
}

#[test]
fn summaries_and_no_recorded_value() {
    let point = SummaryDataPoint {
        attributes: vec![],
        start_time_unix_nano: 0,
        time_unix_nano: T0_NANOS,
        count: 4,
        sum: 2.0,
        quantile_values: vec![
            ValueAtQuantile {
                quantile: 0.5,
                value: 0.4,
            },
            ValueAtQuantile {
                quantile: 0.99,
                value: 0.9,
            },
        ],
        flags: 0,
    };
    let mut gone = number(&[], 0, NumberValue::AsDouble(7.0));
    gone.flags = FLAG_NO_RECORDED_VALUE;
    let body = request(vec![resource(
        &[("service.name", "api")],
        vec![
            metric(
                "rpc.latency",
                "s",
                MetricData::Summary(Summary {
                    data_points: vec![point],
                }),
            ),
            metric(
                "temperature",
                "Cel",
                MetricData::Gauge(Gauge {
                    data_points: vec![gone],
                }),
            ),
        ],
    )]);
    let decoded = decode(&body).unwrap();
    let job = ("job", "api");
    assert_eq!(
        values(find(
            &decoded,
            "rpc_latency_seconds",
            &[job, ("quantile", "0.99")]
        )),
        vec![(T0_MS, 0.9)]
    );
    assert_eq!(
        values(find(
            &decoded,
            "rpc_latency_seconds",
            &[job, ("quantile", "0.5")]
        )),
        vec![(T0_MS, 0.4)]
    );
    assert_eq!(
        values(find(&decoded, "rpc_latency_seconds_sum", &[job])),
        vec![(T0_MS, 2.0)]
    );
    assert_eq!(
        values(find(&decoded, "rpc_latency_seconds_count", &[job])),
        vec![(T0_MS, 4.0)]
    );
    let stale = find(&decoded, "temperature_celsius", &[job]);
    assert!(is_stale_nan(stale.samples[0].v));
}

#[test]
fn delta_and_exponential_histograms_are_dropped_and_counted() {
    let body = request(vec![resource(
        &[("service.name", "api")],
        vec![
            metric(
                "requests",
                "",
                sum(
                    vec![
                        number(&[], 0, NumberValue::AsInt(1)),
                        number(&[], 1, NumberValue::AsInt(2)),
                    ],
                    AggregationTemporality::Delta,
                    true,
                ),
            ),
            metric(
                "latency",
                "s",
                MetricData::ExponentialHistogram(ExponentialHistogram {
                    data_points: vec![ExponentialHistogramDataPoint {
                        attributes: vec![],
                        time_unix_nano: T0_NANOS,
                        count: 3,
                        scale: 2,
                    }],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            ),
            metric(
                "unspecified",
                "",
                sum(
                    vec![number(&[], 0, NumberValue::AsInt(1))],
                    AggregationTemporality::Unspecified,
                    true,
                ),
            ),
            metric(
                "...",
                "",
                MetricData::Gauge(Gauge {
                    data_points: vec![number(&[], 0, NumberValue::AsInt(1))],
                }),
            ),
            metric(
                "kept",
                "",
                MetricData::Gauge(Gauge {
                    data_points: vec![
                        number(&[("ok", "1")], 0, NumberValue::AsInt(5)),
                        number(&[("...", "bad key")], 0, NumberValue::AsInt(6)),
                    ],
                }),
            ),
        ],
    )]);
    let decoded = decode(&body).unwrap();
    assert_eq!(decoded.data_points, 7);
    assert_eq!(decoded.accepted_points(), 1);
    let counts: Vec<(&str, u64)> = DropReason::ALL
        .iter()
        .map(|r| (r.as_str(), decoded.dropped.counts[r.index()]))
        .collect();
    assert_eq!(
        counts,
        vec![
            ("delta_temporality", 2),
            ("unspecified_temporality", 1),
            ("exponential_histogram", 1),
            ("invalid_metric_name", 1),
            ("invalid_attribute_key", 1),
        ]
    );
    let message = decoded.dropped.describe();
    assert!(
        message.starts_with("6 data points rejected (delta_temporality: 2"),
        "{message}"
    );
    assert!(message.contains("cumulative"), "{message}");
    assert_eq!(
        values(find(&decoded, "kept", &[("job", "api"), ("ok", "1")])),
        vec![(T0_MS, 5.0)]
    );
    assert_eq!(decoded.write.series.len(), 1);
}

#[test]
fn attribute_values_and_collisions() {
    let kv = |key: &str, value: Value| KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    };
    let mut point = number(&[], 0, NumberValue::AsInt(1));
    point.attributes = vec![
        kv("b.x", Value::StringValue("second".into())),
        kv("b_x", Value::StringValue("first".into())),
        kv("flag", Value::BoolValue(true)),
        kv("int", Value::IntValue(-7)),
        kv("tiny", Value::DoubleValue(1e-7)),
        kv("huge", Value::DoubleValue(1e21)),
        kv("bytes", Value::BytesValue(vec![0xff, 0x00])),
        kv(
            "list",
            Value::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(Value::IntValue(1)),
                    },
                    AnyValue {
                        value: Some(Value::StringValue("a".into())),
                    },
                ],
            }),
        ),
        kv(
            "map",
            Value::KvlistValue(KeyValueList {
                values: vec![KeyValue::string("z", "1"), KeyValue::string("a", "2")],
            }),
        ),
        KeyValue {
            key: "__name__".into(),
            value: None,
        },
    ];
    let body = request(vec![resource(
        &[],
        vec![metric(
            "m",
            "",
            MetricData::Gauge(Gauge {
                data_points: vec![point],
            }),
        )],
    )]);
    let decoded = decode(&body).unwrap();
    let series = &decoded.write.series[0];
    let get = |name: &str| series.labels.get(name).unwrap_or_default().to_string();
    assert_eq!(get("__name__"), "m");
    assert_eq!(
        get("b_x"),
        "second;first",
        "sorted by original key: b.x < b_x"
    );
    assert_eq!(get("flag"), "true");
    assert_eq!(get("int"), "-7");
    assert_eq!(get("tiny"), "1e-7");
    assert_eq!(get("huge"), "1e+21");
    assert_eq!(get("bytes"), "/wA=");
    assert_eq!(get("list"), r#"[1,"a"]"#);
    assert_eq!(get("map"), r#"{"a":"2","z":"1"}"#);
}

#[test]
fn deeply_nested_values_are_a_decode_error_not_a_crash() {
    let mut value = AnyValue {
        value: Some(Value::StringValue("leaf".into())),
    };
    for depth in 0..1_000 {
        value = if depth % 2 == 0 {
            AnyValue {
                value: Some(Value::ArrayValue(ArrayValue {
                    values: vec![value],
                })),
            }
        } else {
            AnyValue {
                value: Some(Value::KvlistValue(KeyValueList {
                    values: vec![KeyValue {
                        key: "k".into(),
                        value: Some(value),
                    }],
                })),
            }
        };
    }
    // Encoding recurses too: do it on a thread with room, as a hostile client would
    // (decoding runs on the server's ordinary stack).
    let body = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let mut point = number(&[], 0, NumberValue::AsInt(1));
            point.attributes = vec![KeyValue {
                key: "deep".into(),
                value: Some(value),
            }];
            request(vec![resource(
                &[],
                vec![metric(
                    "m",
                    "",
                    MetricData::Gauge(Gauge {
                        data_points: vec![point],
                    }),
                )],
            )])
        })
        .unwrap()
        .join()
        .unwrap();
    let err = std::thread::Builder::new()
        .stack_size(2 << 20) // tokio's blocking-pool default
        .spawn(move || decode(&body).unwrap_err())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(err.reason, RejectReason::BadProtobuf);
    assert!(err.message.contains("recursion"), "{}", err.message);
}

#[test]
fn attribute_counts_hit_the_label_limits() {
    let mut point = number(&[], 0, NumberValue::AsInt(1));
    point.attributes = (0..300)
        .map(|i| KeyValue::string(&format!("a{i}"), "v"))
        .collect();
    let body = request(vec![resource(
        &[],
        vec![metric(
            "m",
            "",
            MetricData::Gauge(Gauge {
                data_points: vec![point],
            }),
        )],
    )]);
    let err = decode(&body).unwrap_err();
    assert_eq!(err.reason, RejectReason::InvalidLabels);
    assert!(err.message.contains("limit of 256"), "{}", err.message);
}

#[test]
fn output_is_bounded() {
    // 2,000 buckets times a 1 KiB attribute: a small body, megabytes of labels.
    let point = HistogramDataPoint {
        attributes: vec![KeyValue::string("pad", &"x".repeat(1024))],
        start_time_unix_nano: 0,
        time_unix_nano: T0_NANOS,
        count: 1,
        sum: None,
        bucket_counts: vec![0; 2_001],
        explicit_bounds: (0..2_000).map(f64::from).collect(),
        exemplars: vec![],
        flags: 0,
    };
    let body = request(vec![resource(
        &[],
        vec![metric(
            "h",
            "",
            MetricData::Histogram(Histogram {
                data_points: vec![point],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        )],
    )]);
    assert!(body.len() < 64 << 10);
    let err = decode(&body).unwrap_err();
    assert_eq!(err.reason, RejectReason::TooLarge);
}

#[test]
fn target_info_spans_the_resource_and_is_capped() {
    let hour_ms = 3_600_000u64;
    let points = vec![
        number(&[], 0, NumberValue::AsInt(1)),
        number(&[], 10 * 60_000, NumberValue::AsInt(2)),
    ];
    let far = vec![
        number(&[], 0, NumberValue::AsInt(1)),
        number(&[], 1000 * hour_ms, NumberValue::AsInt(2)),
    ];
    let attrs = [("service.name", "a"), ("host.name", "h1")];
    let decoded = decode(&request(vec![resource(
        &attrs,
        vec![metric(
            "g",
            "",
            MetricData::Gauge(Gauge {
                data_points: points,
            }),
        )],
    )]))
    .unwrap();
    let info = find(
        &decoded,
        "target_info",
        &[("host_name", "h1"), ("job", "a")],
    );
    let times: Vec<i64> = info.samples.iter().map(|s| s.t - T0_MS).collect();
    assert_eq!(times, vec![0, 150_000, 300_000, 450_000, 600_000]);
    let decoded = decode(&request(vec![resource(
        &attrs,
        vec![metric(
            "g",
            "",
            MetricData::Gauge(Gauge { data_points: far }),
        )],
    )]))
    .unwrap();
    let info = find(
        &decoded,
        "target_info",
        &[("host_name", "h1"), ("job", "a")],
    );
    assert!(info.samples.len() <= 65, "{}", info.samples.len());
    assert_eq!(
        info.samples.last().unwrap().t,
        T0_MS + 1000 * hour_ms as i64
    );
}

#[test]
fn envelope_content_types_encodings_and_bad_bodies() {
    let body = request(vec![resource(
        &[],
        vec![metric(
            "g",
            "",
            MetricData::Gauge(Gauge {
                data_points: vec![number(&[], 0, NumberValue::AsInt(1))],
            }),
        )],
    )]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let gzipped = gz.finish().unwrap();
    let with =
        |ct: Option<&str>, enc: Option<&str>, b: &[u8]| decode_otlp_request(ct, enc, b, &LIMITS);
    let pb = Some("application/x-protobuf");
    assert_eq!(
        with(pb, Some("gzip"), &gzipped).unwrap(),
        with(pb, None, &body).unwrap()
    );
    assert!(with(
        Some("application/x-protobuf; charset=utf-8"),
        Some("identity"),
        &body
    )
    .is_ok());
    let json = with(Some("application/json"), None, b"{}").unwrap_err();
    assert_eq!(
        (json.http_status(), json.message.contains("http/protobuf")),
        (415, true)
    );
    assert_eq!(with(None, None, &body).unwrap_err().http_status(), 415);
    assert_eq!(
        with(pb, Some("snappy"), &body).unwrap_err().reason,
        RejectReason::UnsupportedEncoding
    );
    assert_eq!(
        with(pb, Some("gzip"), &body).unwrap_err().reason,
        RejectReason::BadGzip
    );
    assert_eq!(
        with(pb, None, b"\x0a\xff\xff\xff\xff\x0f")
            .unwrap_err()
            .reason,
        RejectReason::BadProtobuf
    );
    // A gzip bomb: 4 MiB of zeros against a 1 MiB limit.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0u8; 4 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    assert_eq!(
        with(pb, Some("gzip"), &bomb).unwrap_err().http_status(),
        413
    );
    // An empty request is valid and stores nothing.
    assert_eq!(with(pb, None, b"").unwrap().write.series.len(), 0);
}
