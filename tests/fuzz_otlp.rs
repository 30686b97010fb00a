//! Stable-toolchain fuzzing of the OTLP/HTTP metrics decoder and translator: structured
//! and byte-level mutations of valid export requests for a bounded time
//! (TIMBALA_FUZZ_SECONDS, default 2), each run through
//! `timbala::ingest::fuzzing::otlp_decode_and_check`, which panics on any broken
//! invariant. Complements the libFuzzer target `fuzz/fuzz_targets/otlp.rs` (nightly).

#[path = "support/fuzz_input.rs"]
mod fuzz_input;

use std::time::Instant;

use prost::Message;
use rand::rngs::SmallRng;
use rand::Rng;
use timbala::ingest::fuzzing::otlp_decode_and_check;
use timbala::proto::otlp::*;

/// Bytes that mean something to protobuf and gzip (ends, varint continuation, the tags
/// of the first fields, gzip's magic).
const INTERESTING_BYTES: &[u8] = &[0x00, 0x7f, 0x80, 0xff, 0x0a, 0x12, 0x1f, 0x8b];

/// Attribute keys and units that stress the name translation.
const KEYS: &[&str] = &[
    "http.method",
    "job",
    "__name__",
    "le",
    "0day",
    "a..b",
    "ünï",
    "...",
    "",
    "service.name",
    "__x__",
];
const UNITS: &[&str] = &[
    "",
    "1",
    "s",
    "ms",
    "By/s",
    "{request}",
    "%",
    "/",
    "a/b/c",
    " s ",
];
const NAMES: &[&str] = &[
    "http.requests",
    "requests_total",
    "2xx",
    "...",
    "",
    "ns:metric",
    "ratio.ratio",
];

fn any_value(rng: &mut SmallRng, depth: u32) -> AnyValue {
    let value = match rng.random_range(0..if depth > 3 { 5 } else { 7 }) {
        0 => Value::StringValue("v".repeat(rng.random_range(0..4))),
        1 => Value::BoolValue(rng.random()),
        2 => Value::IntValue(rng.random()),
        3 => Value::DoubleValue(f64::from_bits(rng.random())),
        4 => Value::BytesValue(vec![rng.random(); rng.random_range(0..4)]),
        5 => Value::ArrayValue(ArrayValue {
            values: (0..rng.random_range(0..3))
                .map(|_| any_value(rng, depth + 1))
                .collect(),
        }),
        _ => Value::KvlistValue(KeyValueList {
            values: (0..rng.random_range(0..3))
                .map(|_| KeyValue {
                    key: KEYS[rng.random_range(0..KEYS.len())].into(),
                    value: Some(any_value(rng, depth + 1)),
                })
                .collect(),
        }),
    };
    AnyValue { value: Some(value) }
}

fn attributes(rng: &mut SmallRng) -> Vec<KeyValue> {
    (0..rng.random_range(0..4))
        .map(|_| KeyValue {
            key: KEYS[rng.random_range(0..KEYS.len())].into(),
            value: Some(any_value(rng, 0)),
        })
        .collect()
}

fn time(rng: &mut SmallRng) -> u64 {
    1_700_000_000_000_000_000 + rng.random_range(0..3_600_000_000_000)
}

fn metric(rng: &mut SmallRng) -> Metric {
    let temporality = rng.random_range(0..4);
    let flags = if rng.random_range(0..5) == 0 {
        FLAG_NO_RECORDED_VALUE
    } else {
        0
    };
    let points = rng.random_range(0..4);
    let data = match rng.random_range(0..6) {
        0 | 1 => {
            let data_points = (0..points)
                .map(|_| NumberDataPoint {
                    attributes: attributes(rng),
                    start_time_unix_nano: 0,
                    time_unix_nano: time(rng),
                    value: Some(NumberValue::AsDouble(rng.random::<f64>() * 100.0)),
                    exemplars: vec![Exemplar { time_unix_nano: 1 }],
                    flags,
                })
                .collect();
            if rng.random() {
                MetricData::Gauge(Gauge { data_points })
            } else {
                MetricData::Sum(Sum {
                    data_points,
                    aggregation_temporality: temporality,
                    is_monotonic: rng.random(),
                })
            }
        }
        2 => {
            let buckets = rng.random_range(0..5);
            MetricData::Histogram(Histogram {
                data_points: (0..points)
                    .map(|_| HistogramDataPoint {
                        attributes: attributes(rng),
                        start_time_unix_nano: 0,
                        time_unix_nano: time(rng),
                        count: rng.random_range(0..100),
                        sum: rng.random::<bool>().then(|| rng.random()),
                        bucket_counts: (0..buckets + rng.random_range(0..2))
                            .map(|_| rng.random())
                            .collect(),
                        explicit_bounds: (0..buckets).map(|b| b as f64 * 0.5).collect(),
                        exemplars: vec![],
                        flags,
                    })
                    .collect(),
                aggregation_temporality: temporality,
            })
        }
        3 => MetricData::ExponentialHistogram(ExponentialHistogram {
            data_points: (0..points)
                .map(|_| ExponentialHistogramDataPoint {
                    attributes: attributes(rng),
                    time_unix_nano: time(rng),
                    count: 1,
                    scale: rng.random_range(-4..8),
                })
                .collect(),
            aggregation_temporality: temporality,
        }),
        _ => MetricData::Summary(Summary {
            data_points: (0..points)
                .map(|_| SummaryDataPoint {
                    attributes: attributes(rng),
                    start_time_unix_nano: 0,
                    time_unix_nano: time(rng),
                    count: 3,
                    sum: 1.5,
                    quantile_values: vec![ValueAtQuantile {
                        quantile: 0.5,
                        value: 1.0,
                    }],
                    flags,
                })
                .collect(),
        }),
    };
    Metric {
        name: NAMES[rng.random_range(0..NAMES.len())].into(),
        description: "help".into(),
        unit: UNITS[rng.random_range(0..UNITS.len())].into(),
        data: (rng.random_range(0..10) > 0).then_some(data),
    }
}

/// A valid request of a few resources, the starting point of every mutation.
fn seed(rng: &mut SmallRng) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: (0..rng.random_range(1..3))
            .map(|_| {
                let mut resource = attributes(rng);
                resource.push(KeyValue::string("service.name", "svc"));
                if rng.random() {
                    resource.push(KeyValue::string("service.instance.id", "i-1"));
                }
                ResourceMetrics {
                    resource: Some(Resource {
                        attributes: resource,
                    }),
                    scope_metrics: vec![ScopeMetrics {
                        scope: None,
                        metrics: (0..rng.random_range(1..5)).map(|_| metric(rng)).collect(),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }
            })
            .collect(),
    }
}

#[test]
fn otlp_decoder_survives_mutated_requests() {
    let run_for = fuzz_input::duration();
    let deadline = Instant::now() + run_for;
    let mut rng = fuzz_input::rng();
    let (mut runs, mut accepted) = (0u64, 0u64);
    while Instant::now() < deadline {
        let mut raw = seed(&mut rng).encode_to_vec();
        // Mode byte: 0 = body as sent, 1 = gzipped by the harness, 2 = gzip as sent.
        let input: Vec<u8> = match rng.random_range(0..4) {
            0 => std::iter::once(0).chain(raw).collect(),
            1 => {
                fuzz_input::mutate_bytes(&mut rng, &mut raw, INTERESTING_BYTES);
                std::iter::once(1).chain(raw).collect()
            }
            2 => {
                fuzz_input::mutate_bytes(&mut rng, &mut raw, INTERESTING_BYTES);
                std::iter::once(0).chain(raw).collect()
            }
            _ => {
                use std::io::Write as _;
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&raw).expect("gzip");
                let mut body = gz.finish().expect("gzip");
                fuzz_input::mutate_bytes(&mut rng, &mut body, INTERESTING_BYTES);
                std::iter::once(2).chain(body).collect()
            }
        };
        accepted += u64::from(otlp_decode_and_check(&input));
        runs += 1;
    }
    println!("{runs} inputs, {accepted} accepted");
    assert!(runs > 100, "too few inputs in {run_for:?}: {runs}");
    assert!(
        accepted > 0 && accepted < runs,
        "mutations must produce both outcomes"
    );
}
