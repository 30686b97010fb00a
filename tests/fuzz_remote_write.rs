//! Stable-toolchain fuzzing of the remote-write decoder: structured and byte-level
//! mutations of valid requests for a bounded time (TIMBALA_FUZZ_SECONDS, default 2),
//! each run through `timbala::ingest::fuzzing::decode_and_check`, which panics on any
//! broken invariant. Complements the libFuzzer target in `fuzz/` (nightly).

#[path = "support/fuzz_input.rs"]
mod fuzz_input;

use std::time::Instant;

use prost::Message;
use rand::rngs::SmallRng;
use rand::Rng;
use timbala::ingest::fuzzing::decode_and_check;
use timbala::model::stale_nan;
use timbala::proto;

fn label(name: &str, value: &str) -> proto::Label {
    proto::Label {
        name: name.into(),
        value: value.into(),
    }
}

/// Bytes that mean something to protobuf and snappy (ends, varint continuation, the
/// tags of the first fields, newline).
const INTERESTING_BYTES: &[u8] = &[0x00, 0x7f, 0x80, 0xff, 0x0a, 0x12];

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
        6 => ts.histograms.push(proto::Histogram { timestamp: 1 }),
        7 => ts.samples.reverse(),
        8 => ts.labels.insert(0, label("ünïcødé", "✓")),
        _ => ts.samples.clear(),
    }
}

#[test]
fn decoder_survives_mutated_requests() {
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
            fuzz_input::mutate_bytes(&mut rng, &mut raw, INTERESTING_BYTES);
        }
        // Mode byte: odd = raw protobuf (compressed by the harness), even = HTTP body.
        let input: Vec<u8> = if layer == 2 {
            let mut body = snap::raw::Encoder::new()
                .compress_vec(&raw)
                .expect("compress");
            fuzz_input::mutate_bytes(&mut rng, &mut body, INTERESTING_BYTES);
            std::iter::once(0).chain(body).collect()
        } else {
            std::iter::once(1).chain(raw).collect()
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
