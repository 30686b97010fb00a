//! Stable-toolchain fuzzing of the remote-write decoder: structured and byte-level
//! mutations of valid requests for a bounded time (TIMBALA_FUZZ_SECONDS, default 2),
//! each run through `timbala::ingest::fuzzing::decode_and_check`, which panics on any
//! broken invariant, and differential fuzzing of the hand-written protobuf decoder
//! against prost (`decode_matches_reference`: same accept/refuse, same reason, same
//! series; ADR 0025) on mutated requests and on random bytes; the same for the remote
//! write 2.0 decoder (`decode_v2_matches_reference`, ADR 0027) on mutated 2.0 requests
//! (broken symbol references, unsorted and duplicate labels, histograms, start
//! timestamps, exemplars). Complements the libFuzzer target in `fuzz/` (nightly).

#[path = "support/fuzz_input.rs"]
mod fuzz_input;

use std::time::Instant;

use prost::Message;
use rand::rngs::SmallRng;
use rand::Rng;
use timbala::ingest::fuzzing::{
    decode_and_check, decode_matches_reference, decode_v2_matches_reference,
};
use timbala::model::stale_nan;
use timbala::proto::{self, write_v2};

fn label(name: &str, value: &str) -> proto::Label {
    proto::Label {
        name: name.into(),
        value: value.into(),
    }
}

/// Bytes that mean something to protobuf and snappy (ends, varint continuation, the
/// tags of the first fields, newline).
const INTERESTING_BYTES: &[u8] = &[0x00, 0x7f, 0x80, 0xff, 0x0a, 0x12];

/// Field keys (tag and wire type) of every message of the request, valid and not, and
/// the group wire types, which a byte mutation rarely produces on its own.
const PROTOBUF_KEYS: &[u8] = &[
    0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x18, 0x1a, 0x1b,
    0x1c, 0x20, 0x22, 0x23, 0x24, 0x2a, 0x78, 0x7a, 0x80, 0x01, 0xff,
];

/// A valid request of a few series, the starting point of every mutation.
fn seed(rng: &mut SmallRng) -> proto::WriteRequest {
    let series = rng.random_range(1..6);
    let timeseries = (0..series)
        .map(|s| proto::TimeSeries {
            labels: vec![
                label("__name__", &format!("metric_{s}")),
                label("instance", "host:9100"),
                label("job", if s % 2 == 0 { "node" } else { "api" }),
            ],
            samples: (0..rng.random_range(1..20))
                .map(|i| proto::Sample {
                    value: if i == 3 {
                        stale_nan()
                    } else {
                        rng.random::<f64>() * 1e3
                    },
                    timestamp: 1_700_000_000_000 + i * 15_000,
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    proto::WriteRequest {
        timeseries,
        metadata: vec![proto::MetricMetadata {
            r#type: rng.random_range(-1..9),
            metric_family_name: "metric_0".into(),
            help: "help".into(),
            unit: String::new(),
        }],
    }
}

/// A native histogram that is valid or breaks one of Prometheus's rules (schema out of
/// range, counts not adding up, a negative bucket, spans and buckets disagreeing),
/// integer or float.
fn random_histogram(rng: &mut SmallRng) -> proto::Histogram {
    use proto::histogram::{Count, ZeroCount};
    let buckets = rng.random_range(0..4usize);
    let deltas: Vec<i64> = (0..buckets).map(|_| rng.random_range(-1..4)).collect();
    let mut running = 0i64;
    let absolute: Vec<i64> = deltas
        .iter()
        .map(|d| {
            running += d;
            running
        })
        .collect();
    let zero = rng.random_range(0..3u64);
    let in_buckets = absolute.iter().sum::<i64>().max(0) as u64 + zero;
    let spans = vec![proto::BucketSpan {
        offset: rng.random_range(-3..3),
        length: (buckets + usize::from(rng.random_bool(0.1))) as u32,
    }];
    let mut h = proto::Histogram {
        sum: rng.random_range(0..100) as f64,
        schema: rng.random_range(-5..10),
        zero_threshold: 0.001,
        positive_spans: spans,
        timestamp: rng.random_range(0..1_000),
        ..Default::default()
    };
    if rng.random_bool(0.5) {
        h.count = Some(Count::Int(in_buckets + u64::from(rng.random_bool(0.1))));
        h.zero_count = Some(ZeroCount::Int(zero));
        h.positive_deltas = deltas;
    } else {
        h.count = Some(Count::Float(in_buckets as f64));
        h.zero_count = Some(ZeroCount::Float(zero as f64));
        h.positive_counts = absolute.iter().map(|&c| c as f64).collect();
    }
    h
}

/// Breaks the request's structure in one of the ways senders get wrong.
fn mutate_structure(rng: &mut SmallRng, req: &mut proto::WriteRequest) {
    let n = req.timeseries.len();
    let ts = &mut req.timeseries[rng.random_range(0..n)];
    if ts.labels.is_empty() {
        ts.labels.push(label("__name__", "revived"));
    }
    let labels = ts.labels.len();
    match rng.random_range(0..10) {
        0 if labels > 1 => ts.labels.swap(0, labels - 1),
        1 => ts.labels.push(ts.labels[0].clone()),
        2 => ts.labels[rng.random_range(0..labels)].name.clear(),
        3 => ts.labels[rng.random_range(0..labels)].value.clear(),
        4 => ts.labels.retain(|l| l.name != "__name__"),
        5 => ts.labels.clear(),
        6 => ts.histograms.push(random_histogram(rng)),
        7 => ts.samples.reverse(),
        8 => ts.labels.insert(0, label("ünïcødé", "✓")),
        _ => ts.samples.clear(),
    }
}

/// Mutated requests of one protocol fed to the decoder until the fuzz time is up: the
/// message is mutated structurally, then either its protobuf bytes (with `raw_keys`
/// among the interesting bytes) or its snappy body; the harness's mode byte says which
/// (`mode` for the raw protobuf, `mode - 1` for an HTTP body) and the protocol. Every
/// input must decode or be refused cleanly, and both must happen.
fn fuzz_decoder<M: Message>(
    seed: fn(&mut SmallRng) -> M,
    mutate_structure: fn(&mut SmallRng, &mut M),
    raw_keys: &[u8],
    mode: u8,
) {
    let run_for = fuzz_input::duration();
    let deadline = Instant::now() + run_for;
    let mut rng = fuzz_input::rng();
    let (mut runs, mut accepted) = (0u64, 0u64);
    while Instant::now() < deadline {
        let mut req = seed(&mut rng);
        for _ in 0..rng.random_range(0..3) {
            mutate_structure(&mut rng, &mut req);
        }
        let mut raw = req.encode_to_vec();
        let layer = rng.random_range(0..3);
        if layer == 1 {
            fuzz_input::mutate_bytes(&mut rng, &mut raw, raw_keys);
        }
        let input: Vec<u8> = if layer == 2 {
            let mut body = snap::raw::Encoder::new()
                .compress_vec(&raw)
                .expect("compress");
            fuzz_input::mutate_bytes(&mut rng, &mut body, INTERESTING_BYTES);
            std::iter::once(mode - 1).chain(body).collect()
        } else {
            std::iter::once(mode).chain(raw).collect()
        };
        accepted += u64::from(decode_and_check(&input));
        runs += 1;
    }
    println!("{runs} inputs, {accepted} accepted");
    assert!(runs > 100, "too few inputs in {run_for:?}: {runs}");
    assert!(
        accepted > 0 && accepted < runs,
        "mutations must produce both outcomes"
    );
}

#[test]
fn decoder_survives_mutated_requests() {
    // Mode byte: odd = raw protobuf (compressed by the harness), even = HTTP body.
    fuzz_decoder(seed, mutate_structure, INTERESTING_BYTES, 1);
}

/// One input for the differential test: a mutated valid request (most inputs), random
/// protobuf-ish bytes, or a request with unknown fields, groups and exemplars spliced in.
fn differential_input(rng: &mut SmallRng) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => (0..rng.random_range(0..64))
            .map(|_| {
                if rng.random_bool(0.5) {
                    PROTOBUF_KEYS[rng.random_range(0..PROTOBUF_KEYS.len())]
                } else {
                    rng.random()
                }
            })
            .collect(),
        1 => {
            let mut req = seed(rng);
            let ts = &mut req.timeseries[0];
            ts.exemplars.push(proto::Exemplar {
                labels: vec![label("trace_id", "t")],
                value: 1.0,
                timestamp: 2,
            });
            let mut raw = req.encode_to_vec();
            // An unknown field 9 holding a group (field 5) with a varint inside.
            let at = if raw.is_empty() {
                0
            } else {
                rng.random_range(0..raw.len())
            };
            for (i, b) in [0x4a, 0x04, 0x2b, 0x08, 0x01, 0x2c].into_iter().enumerate() {
                raw.insert(at + i, b);
            }
            if rng.random_bool(0.5) {
                fuzz_input::mutate_bytes(rng, &mut raw, PROTOBUF_KEYS);
            }
            raw
        }
        _ => {
            let mut req = seed(rng);
            for _ in 0..rng.random_range(0..3) {
                mutate_structure(rng, &mut req);
            }
            let mut raw = req.encode_to_vec();
            if rng.random_bool(0.7) {
                let interesting = if rng.random_bool(0.5) {
                    INTERESTING_BYTES
                } else {
                    PROTOBUF_KEYS
                };
                fuzz_input::mutate_bytes(rng, &mut raw, interesting);
            }
            raw
        }
    }
}

#[test]
fn hand_written_decoder_matches_prost() {
    let run_for = fuzz_input::duration();
    let deadline = Instant::now() + run_for;
    let mut rng = fuzz_input::rng();
    let (mut runs, mut accepted) = (0u64, 0u64);
    while Instant::now() < deadline {
        let raw = differential_input(&mut rng);
        accepted += u64::from(decode_matches_reference(&raw));
        runs += 1;
    }
    println!("{runs} inputs, {accepted} accepted by both decoders");
    assert!(runs > 100, "too few inputs in {run_for:?}: {runs}");
    assert!(
        accepted > 0 && accepted < runs,
        "inputs must produce both outcomes"
    );
}

/// Field keys of the 2.0 messages: `Request` (symbols, timeseries), `TimeSeries`
/// (label references packed and not, samples, histograms, exemplars, metadata, created
/// timestamp), `Sample`, `Metadata`, `Histogram` (fields 15 and 17), groups.
const V2_KEYS: &[u8] = &[
    0x22, 0x2a, 0x08, 0x0a, 0x12, 0x1a, 0x30, 0x09, 0x10, 0x18, 0x20, 0x78, 0x88, 0x01, 0x2b, 0x2c,
    0x0b, 0x0c, 0xff,
];

/// A valid 2.0 request of a few series, the starting point of every 2.0 mutation.
fn seed_v2(rng: &mut SmallRng) -> write_v2::Request {
    let mut symbols = write_v2::SymbolTable::default();
    let series = rng.random_range(1..6);
    let timeseries = (0..series)
        .map(|s| {
            let name = format!("metric_{s}_total");
            let job = if s % 2 == 0 { "node" } else { "api" };
            let labels_refs = symbols.symbolize_labels([
                ("__name__", name.as_str()),
                ("instance", "host:9100"),
                ("job", job),
            ]);
            let start = if rng.random_bool(0.5) {
                1_699_999_000_000
            } else {
                0
            };
            write_v2::TimeSeries {
                labels_refs,
                samples: (0..rng.random_range(1..20))
                    .map(|i| write_v2::Sample {
                        value: if i == 3 {
                            stale_nan()
                        } else {
                            rng.random::<f64>() * 1e3
                        },
                        timestamp: 1_700_000_000_000 + i * 15_000,
                        start_timestamp: start,
                    })
                    .collect(),
                metadata: Some(write_v2::Metadata {
                    r#type: rng.random_range(-1..9),
                    help_ref: symbols.symbolize("help"),
                    unit_ref: 0,
                }),
                ..Default::default()
            }
        })
        .collect();
    write_v2::Request {
        symbols: symbols.into_symbols(),
        timeseries,
    }
}

/// Breaks a 2.0 request in one of the ways a sender (or an attacker) could.
fn mutate_structure_v2(rng: &mut SmallRng, req: &mut write_v2::Request) {
    let n = req.timeseries.len();
    let symbols = req.symbols.len() as u32;
    let ts = &mut req.timeseries[rng.random_range(0..n)];
    let refs = ts.labels_refs.len();
    match rng.random_range(0..14) {
        0 if refs >= 4 => ts.labels_refs.swap(0, 2),
        1 if refs >= 2 => {
            let pair = [ts.labels_refs[0], ts.labels_refs[1]];
            ts.labels_refs.extend(pair);
        }
        2 if refs >= 1 => ts.labels_refs[0] = 0,
        3 if refs >= 2 => ts.labels_refs[1] = 0,
        4 => ts.labels_refs.push(1),
        5 if refs >= 1 => ts.labels_refs[refs - 1] = symbols + rng.random_range(0..3),
        6 => req.symbols[0] = "x".into(),
        7 => ts.histograms.push(random_histogram(rng)),
        8 => ts.exemplars.push(write_v2::Exemplar {
            labels_refs: vec![1, rng.random_range(0..symbols + 2)],
            value: 1.0,
            timestamp: 2,
        }),
        9 => ts.created_timestamp = rng.random_range(-5..1_800_000_000_000),
        10 => {
            if let Some(m) = ts.metadata.as_mut() {
                m.help_ref = rng.random_range(0..symbols + 2);
            }
        }
        11 => ts.samples.reverse(),
        12 => ts.samples.clear(),
        _ => req.symbols.push("\u{fc}n\u{ef}c\u{f8}d\u{e9}".into()),
    }
}

#[test]
fn v2_decoder_survives_mutated_requests() {
    // Mode byte with bit 1 set (remote write 2.0): 3 = raw protobuf, 2 = HTTP body.
    fuzz_decoder(seed_v2, mutate_structure_v2, V2_KEYS, 3);
}

#[test]
fn hand_written_v2_decoder_matches_prost() {
    let run_for = fuzz_input::duration();
    let deadline = Instant::now() + run_for;
    let mut rng = fuzz_input::rng();
    let (mut runs, mut accepted) = (0u64, 0u64);
    while Instant::now() < deadline {
        let raw = match rng.random_range(0..4) {
            // Random bytes made mostly of 2.0 field keys.
            0 => (0..rng.random_range(0..64))
                .map(|_| {
                    if rng.random_bool(0.5) {
                        V2_KEYS[rng.random_range(0..V2_KEYS.len())]
                    } else {
                        rng.random()
                    }
                })
                .collect(),
            // A 1.0 request read as 2.0.
            1 => seed(&mut rng).encode_to_vec(),
            _ => {
                let mut req = seed_v2(&mut rng);
                for _ in 0..rng.random_range(0..3) {
                    mutate_structure_v2(&mut rng, &mut req);
                }
                let mut raw = req.encode_to_vec();
                if rng.random_bool(0.6) {
                    fuzz_input::mutate_bytes(&mut rng, &mut raw, V2_KEYS);
                }
                raw
            }
        };
        accepted += u64::from(decode_v2_matches_reference(&raw));
        runs += 1;
    }
    println!("{runs} inputs, {accepted} accepted by both decoders");
    assert!(runs > 100, "too few inputs in {run_for:?}: {runs}");
    assert!(
        accepted > 0 && accepted < runs,
        "inputs must produce both outcomes"
    );
}
