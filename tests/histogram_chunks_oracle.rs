//! Oracle test of the native histogram chunk encodings against real Prometheus
//! (Debian's `prometheus`, 2.42, from scripts/install-prometheus.sh): native histograms
//! go to Prometheus by remote write 1.0, come back by streamed remote read as
//! Prometheus's own chunks, which `histogram_chunk` must decode to what was sent, and
//! which our appender, fed the same samples, must reproduce byte for byte (counter-reset
//! headers included).
//!
//! Without Prometheus the test is skipped with a message; under CI (`CI` set) its
//! absence fails it. Prometheus listens on loopback only.
//!
//! Samples avoid what 2.42 does differently from current Prometheus, which our appender
//! follows: an emptied bucket that vanishes (2.42 cuts a chunk with a reset header,
//! current Prometheus widens the sample), and custom-bucket histograms (schema -53,
//! unknown to 2.42). The byte format itself is the same in both.

#[rustfmt::skip]
mod common;
#[path = "support/histograms.rs"]
mod histograms;

use std::time::Duration;

use histograms::{append_all, hist, span, Observe};

use prost::Message;
use timbala::model::histogram::{
    CounterResetHint, FloatHistogram, Histogram, HistogramSample, HistogramValue,
};
use timbala::model::stale_nan;
use timbala::proto::{self, ChunkEncoding, MatcherType, ResponseType};
use timbala::tsdb::histogram_chunk::{decode_histogram_chunk, ChunkHistogram, CounterResetHeader};

/// A histogram of either kind as remote write carries it.
trait Wire: ChunkHistogram + Observe {
    fn value(&self) -> HistogramValue;

    fn to_wire(&self, t: i64) -> proto::Histogram {
        proto::Histogram::from_sample(&HistogramSample { t, h: self.value() })
    }
}

impl Wire for Histogram {
    fn value(&self) -> HistogramValue {
        HistogramValue::Int(self.clone())
    }
}

impl Wire for FloatHistogram {
    fn value(&self) -> HistogramValue {
        HistogramValue::Float(self.clone())
    }
}

/// A metric name, its samples, and the headers of the chunks Prometheus should cut.
type Scenario<H> = (&'static str, Vec<(i64, H)>, Vec<CounterResetHeader>);

/// Series of integer histograms, each with the chunk headers Prometheus should give it.
fn integer_scenarios(base: i64) -> Vec<Scenario<Histogram>> {
    let t = |i: i64| base + i * 15_000;
    use CounterResetHeader::*;
    let steady: Vec<_> = (0..25u64)
        .map(|i| {
            let h = hist(
                3,
                &[span(-3, 3), span(2, 2)],
                &[i, 3 * i + 1, 7 * i, i * i, 2],
                &[span(0, 1)],
                &[i / 3],
                5 * i,
            );
            (t(i as i64), h)
        })
        .chain([(
            t(25),
            Histogram {
                sum: stale_nan(),
                ..Default::default()
            },
        )])
        .collect();
    // Buckets appear on both sides: Prometheus re-encodes its chunk each time.
    let growing: Vec<_> = (0..20u64)
        .map(|i| {
            let extra = i.min(6) as u32;
            let p: Vec<u64> = (0..2 + u64::from(extra)).map(|k| 10 * i + k).collect();
            let (ns, n) = if i >= 10 {
                (vec![span(-2, 1)], vec![i])
            } else {
                (vec![], vec![])
            };
            (t(i as i64), hist(0, &[span(1, 2 + extra)], &p, &ns, &n, 0))
        })
        .collect();
    // A counter reset, then (in the new chunk) a schema change.
    let resets: Vec<_> = (0..18u64)
        .map(|i| {
            let (schema, c) = match i {
                0..=7 => (2, 100 + i),
                8..=12 => (2, i),
                _ => (1, i),
            };
            (
                t(i as i64),
                hist(schema, &[span(0, 2)], &[c, 2 * c], &[], &[], c),
            )
        })
        .collect();
    // A gauge histogram goes down and changes buckets both ways in one chunk. 2.42
    // re-encodes a series' open head chunk when it is read, with the counter checks, and
    // fails on a gauge chunk; a last sample of another schema closes the chunk, which is
    // then served as stored.
    let gauge: Vec<_> = (0..13u64)
        .map(|i| {
            let h = match i % 3 {
                _ if i == 12 => hist(1, &[span(0, 1)], &[1], &[], &[], 0),
                0 => hist(0, &[span(0, 2)], &[20 - i, 3], &[], &[], i),
                1 => hist(0, &[span(1, 2)], &[1, i], &[], &[], 0),
                _ => hist(0, &[span(0, 1)], &[i], &[span(0, 1)], &[4], 2),
            };
            let h = Histogram {
                counter_reset_hint: CounterResetHint::Gauge,
                ..h
            };
            (t(i as i64), h)
        })
        .collect();
    vec![
        ("nh_steady", steady, vec![Unknown]),
        ("nh_growing", growing, vec![Unknown]),
        ("nh_resets", resets, vec![Unknown, CounterReset, Unknown]),
        ("nh_gauge", gauge, vec![Gauge, Gauge]),
    ]
}

/// Float histograms (counts of any real value): encoding 3.
fn float_scenarios(base: i64) -> Vec<Scenario<FloatHistogram>> {
    let t = |i: i64| base + i * 15_000;
    let steady: Vec<_> = (0..20u64)
        .map(|i| {
            let mut h = hist(2, &[span(0, 3)], &[i, i + 4, 9], &[span(-1, 1)], &[1], 1).to_float();
            let f = i as f64;
            h.positive_buckets = vec![f * 0.5, f * 1.25 + 4.0, 9.0 + f / 3.0];
            h.count = h.positive_buckets.iter().sum::<f64>() + 1.0 + 1.0;
            h.sum = f * 2.2;
            if i >= 12 {
                // A new bucket: re-encoded with it.
                h.positive_spans = vec![span(0, 4)].into();
                h.positive_buckets.push(f);
                h.count += f;
            }
            (t(i as i64), h)
        })
        .collect();
    vec![("nh_float", steady, vec![CounterResetHeader::Unknown])]
}

/// The chunks Prometheus streams for metric `name` (all frames joined).
fn prometheus_chunks(
    prometheus: &common::Prometheus,
    name: &str,
    start: i64,
    end: i64,
) -> Vec<proto::Chunk> {
    let req = proto::ReadRequest {
        queries: vec![proto::Query {
            start_timestamp_ms: start,
            end_timestamp_ms: end,
            matchers: vec![proto::LabelMatcher {
                r#type: MatcherType::Eq as i32,
                name: "__name__".into(),
                value: name.into(),
            }],
            hints: None,
        }],
        accepted_response_types: vec![ResponseType::StreamedXorChunks as i32],
    };
    let (status, body) = common::post(
        &prometheus.url("/api/v1/read"),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Read-Version", "0.1.0"),
        ],
        &proto::encode_snappy(&req),
    );
    assert_eq!(
        status,
        200,
        "remote read of {name}: {}",
        String::from_utf8_lossy(&body)
    );
    let mut body = &body[..];
    let mut chunks = Vec::new();
    while !body.is_empty() {
        let len = prost::encoding::decode_varint(&mut body).expect("frame length") as usize;
        let (crc, rest) = body.split_at(4);
        let (message, rest) = rest.split_at(len);
        assert_eq!(crc, crc32c::crc32c(message).to_be_bytes(), "frame checksum");
        body = rest;
        let frame = proto::ChunkedReadResponse::decode(message).expect("frame");
        for series in frame.chunked_series {
            chunks.extend(series.chunks);
        }
    }
    chunks
}

/// Prometheus's chunks decode to what was sent, and ours are the same bytes.
fn check_series<H: Wire>(
    prometheus: &common::Prometheus,
    name: &str,
    samples: &[(i64, H)],
    headers: &[CounterResetHeader],
    encoding: ChunkEncoding,
) {
    let (start, end) = (samples[0].0, samples[samples.len() - 1].0);
    let theirs = prometheus_chunks(prometheus, name, start, end);
    let ours = append_all(samples);
    assert_eq!(theirs.len(), ours.len(), "{name}: chunk count");
    let mut decoded = Vec::new();
    for (i, (their, our)) in theirs.iter().zip(&ours).enumerate() {
        assert_eq!(their.r#type, encoding as i32, "{name}: chunk {i} encoding");
        let samples: Vec<(i64, H)> = decode_histogram_chunk::<H>(&their.data)
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{name}: Prometheus's chunk {i} does not decode: {e}"));
        assert_eq!(
            their.min_time_ms, samples[0].0,
            "{name}: chunk {i} min time"
        );
        assert_eq!(their.max_time_ms, samples[samples.len() - 1].0);
        assert_eq!(our.header(), headers[i], "{name}: chunk {i}: our header");
        let their_header = decode_histogram_chunk::<H>(&their.data).header();
        let mut their_bytes = their.data.clone();
        if i + 1 == theirs.len() && their_header == CounterResetHeader::Unknown {
            // 2.42 re-encodes the open head chunk when it is read and drops its header
            // there (its re-encoder copies the header only from an unwrapped chunk).
            // Every byte but the header's still has to match.
            their_bytes[2] = our.bytes()[2];
        } else {
            assert_eq!(their_header, headers[i], "{name}: chunk {i} header");
        }
        assert_eq!(
            their_bytes,
            our.bytes(),
            "{name}: chunk {i}: our encoding differs from Prometheus's"
        );
        decoded.extend(samples);
    }
    assert_eq!(decoded.len(), samples.len(), "{name}: sample count");
    println!(
        "{name}: {} chunk(s) of {} samples byte-identical to Prometheus's",
        ours.len(),
        samples.len()
    );
    for ((t, sent), (bt, back)) in samples.iter().zip(&decoded) {
        assert_eq!(t, bt, "{name}: timestamps");
        assert_eq!(sent.observed(), back.observed(), "{name} at {t}");
    }
}

fn write<H: Wire>(prometheus: &common::Prometheus, series: &[(&str, Vec<(i64, H)>)]) {
    let req = proto::WriteRequest {
        timeseries: series
            .iter()
            .map(|(name, samples)| proto::TimeSeries {
                labels: vec![
                    proto::Label {
                        name: "__name__".into(),
                        value: (*name).into(),
                    },
                    proto::Label {
                        name: "job".into(),
                        value: "oracle".into(),
                    },
                ],
                histograms: samples.iter().map(|(t, h)| h.to_wire(*t)).collect(),
                ..Default::default()
            })
            .collect(),
        metadata: vec![],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .expect("snappy");
    let (status, answer) = common::post(
        &prometheus.url("/api/v1/write"),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        &body,
    );
    assert_eq!(
        status,
        204,
        "remote write: {}",
        String::from_utf8_lossy(&answer)
    );
}

/// First timestamp of the samples: inside the head's appendable window (at most an
/// hour before its newest sample, the self-scrape's now) and inside one two-hour
/// block range, so Prometheus cuts chunks only where the samples say.
fn base_ms() -> i64 {
    const RANGE: i64 = 2 * 3_600_000;
    let now = common::now_ms();
    let window = now - now.rem_euclid(RANGE);
    if now + 15 * 60_000 < window + RANGE {
        window.max(now - 30 * 60_000)
    } else {
        window + RANGE
    }
}

#[test]
fn prometheus_histogram_chunks_match_ours_byte_for_byte() {
    if !common::prometheus_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let prometheus = common::start_prometheus_with(
        dir.path(),
        "",
        &[
            "--enable-feature=native-histograms",
            "--web.enable-remote-write-receiver",
        ],
    );
    common::wait_until("Prometheus ready", Duration::from_secs(60), || {
        common::try_get(&prometheus.url("/-/ready")).is_ok_and(|(code, _)| code == 200)
    });
    let base = base_ms();
    let ints = integer_scenarios(base);
    let floats = float_scenarios(base);
    write(
        &prometheus,
        &ints
            .iter()
            .map(|(n, s, _)| (*n, s.clone()))
            .collect::<Vec<_>>(),
    );
    write(
        &prometheus,
        &floats
            .iter()
            .map(|(n, s, _)| (*n, s.clone()))
            .collect::<Vec<_>>(),
    );
    for (name, samples, headers) in &ints {
        check_series(
            &prometheus,
            name,
            samples,
            headers,
            ChunkEncoding::Histogram,
        );
    }
    for (name, samples, headers) in &floats {
        check_series(
            &prometheus,
            name,
            samples,
            headers,
            ChunkEncoding::FloatHistogram,
        );
    }
}
