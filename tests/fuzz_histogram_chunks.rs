//! Stable-toolchain fuzzing of the native histogram chunk decoders (encodings 2 and 3,
//! `timbala::tsdb::histogram_chunk`), whose input comes from disk or a peer: valid
//! chunks built by the appender, damaged byte by byte, and random bytes, for a bounded
//! time (TIMBALA_FUZZ_SECONDS, default 2). Invariants: no panic; no more samples than
//! the header announces; and whatever decodes, appended again, decodes to the same
//! observations (so a chunk we accept, we can also store).

#[path = "support/fuzz_input.rs"]
mod fuzz_input;
#[path = "support/histograms.rs"]
mod histograms;

use std::time::Instant;

use histograms::{append_all, hist, span, Observe};
use rand::rngs::SmallRng;
use rand::Rng;
use timbala::model::histogram::{CounterResetHint, FloatHistogram, Histogram, Span};
use timbala::model::stale_nan;
use timbala::tsdb::histogram_chunk::{decode_histogram_chunk, ChunkHistogram};

/// Bytes that mean something to the layout (zero-threshold markers, varbit prefixes).
const INTERESTING_BYTES: &[u8] = &[0x00, 0x01, 0x74, 0x7f, 0x80, 0xfe, 0xff];

/// A short series of valid histograms: growing counters, new buckets, a reset or a
/// schema change now and then, staleness markers, gauges.
fn series(rng: &mut SmallRng) -> Vec<(i64, Histogram)> {
    let mut t = rng.random_range(-1_000_000..1_000_000_000_000i64);
    let mut out = Vec::new();
    let mut base = rng.random_range(0..1000u64);
    let schema = if rng.random_bool(0.1) {
        -53
    } else {
        rng.random_range(-4..=8)
    };
    let gauge = rng.random_bool(0.2);
    for i in 0..rng.random_range(1..40u64) {
        t += rng.random_range(1..100_000);
        if rng.random_bool(0.05) {
            out.push((t, Histogram::stale(stale_nan())));
            continue;
        }
        if rng.random_bool(0.05) {
            base = 0;
        }
        base += rng.random_range(0..50);
        let width = if rng.random_bool(0.2) { 4 } else { 2 };
        let p: Vec<u64> = (0..width).map(|k| base + k * i).collect();
        let pos: Vec<Span> = vec![span(rng.random_range(0..3), width as u32)];
        let mut h = if schema == -53 {
            let mut h = hist(0, &pos, &p, &[], &[], 0);
            h.schema = -53;
            h.zero_threshold = 0.0;
            h.custom_values = vec![0.1, 0.25, 1.0, 2.5, 10.0, 100.0].into();
            h
        } else {
            hist(schema, &pos, &p, &[span(-1, 1)], &[base / 2], base)
        };
        if gauge {
            h.counter_reset_hint = CounterResetHint::Gauge;
        }
        if rng.random_bool(0.1) {
            h.sum = f64::NAN;
        }
        out.push((t, h));
    }
    out
}

/// Decodes `bytes` as kind `H` and checks the invariants.
fn check<H: ChunkHistogram + Observe>(bytes: &[u8]) {
    let announced = bytes
        .get(..2)
        .map_or(0, |h| usize::from(u16::from_be_bytes([h[0], h[1]])));
    let decoded: Vec<_> = decode_histogram_chunk::<H>(bytes).collect();
    assert!(decoded.len() <= announced.max(1), "more than announced");
    let Ok(samples) = decoded.into_iter().collect::<Result<Vec<(i64, H)>, _>>() else {
        return;
    };
    let again: Vec<(i64, H)> = append_all(&samples)
        .iter()
        .flat_map(|c| c.iter().collect::<Vec<_>>())
        .collect();
    assert_eq!(again.len(), samples.len(), "re-encoding lost samples");
    for ((t, h), (t2, h2)) in samples.iter().zip(&again) {
        assert_eq!(t, t2);
        assert_eq!(h.observed(), h2.observed(), "re-encoded differently at {t}");
    }
}

#[test]
fn histogram_chunk_decoders_survive_damaged_and_random_bytes() {
    let mut rng = fuzz_input::rng();
    let until = Instant::now() + fuzz_input::duration();
    let mut runs = 0u64;
    while Instant::now() < until {
        let samples = series(&mut rng);
        let floats: Vec<(i64, FloatHistogram)> =
            samples.iter().map(|(t, h)| (*t, h.to_float())).collect();
        let mut inputs: Vec<Vec<u8>> = append_all(&samples)
            .into_iter()
            .map(|c| c.into_bytes())
            .chain(append_all(&floats).into_iter().map(|c| c.into_bytes()))
            .collect();
        inputs.push((0..rng.random_range(0..64)).map(|_| rng.random()).collect());
        for mut bytes in inputs {
            for _ in 0..8 {
                check::<Histogram>(&bytes);
                check::<FloatHistogram>(&bytes);
                fuzz_input::mutate_bytes(&mut rng, &mut bytes, INTERESTING_BYTES);
                runs += 1;
            }
        }
    }
    println!("{runs} chunks decoded");
}
