//! Native histograms for the tests of `histogram_chunk` (the Prometheus oracle and the
//! decoder fuzzer): building valid integer histograms from absolute counts, appending
//! series into chunks as a head would, and what two encodings of the same observations
//! share. Calls `timbala::model::histogram` and `timbala::tsdb::histogram_chunk`.
#![allow(dead_code)]

use std::collections::BTreeMap;

use timbala::model::histogram::{FloatHistogram, Histogram, Span};
use timbala::tsdb::histogram_chunk::{Appended, ChunkHistogram, HistogramChunk};

pub fn span(offset: i32, length: u32) -> Span {
    Span { offset, length }
}

/// A valid integer histogram (Prometheus's default zero threshold) with the given
/// absolute bucket counts.
pub fn hist(schema: i32, pos: &[Span], p: &[u64], neg: &[Span], n: &[u64], zero: u64) -> Histogram {
    let deltas = |counts: &[u64]| {
        let mut prev = 0i64;
        counts
            .iter()
            .map(|&c| {
                let d = c as i64 - prev;
                prev = c as i64;
                d
            })
            .collect()
    };
    let h = Histogram {
        schema,
        zero_threshold: 2f64.powi(-128),
        zero_count: zero,
        count: p.iter().chain(n).sum::<u64>() + zero,
        sum: p.iter().sum::<u64>() as f64 * 0.37 - n.iter().sum::<u64>() as f64 * 1.9,
        positive_spans: pos.to_vec().into(),
        negative_spans: neg.to_vec().into(),
        positive_buckets: deltas(p),
        negative_buckets: deltas(n),
        ..Default::default()
    };
    assert_eq!(h.validate(), Ok(()));
    h
}

/// Appends `samples` in order, starting a new chunk whenever the appender cuts one.
pub fn append_all<H: ChunkHistogram>(samples: &[(i64, H)]) -> Vec<HistogramChunk<H>> {
    let mut chunks = vec![HistogramChunk::<H>::new()];
    for (t, h) in samples {
        let last = chunks.last_mut().expect("a chunk");
        if let Appended::Cut(next) = last.append(*t, h).expect("well-formed") {
            chunks.push(next);
        }
    }
    chunks
}

/// Bucket indices of `spans` in order.
fn indices(spans: &[Span]) -> Vec<i64> {
    let mut out = Vec::new();
    let mut idx = -1i64;
    for s in spans {
        idx += i64::from(s.offset);
        for _ in 0..s.length {
            idx += 1;
            out.push(idx);
        }
    }
    out
}

/// (schema, zero threshold, zero count, count, sum) as bits, and per side bucket index
/// -> absolute count bits of the non-empty buckets: what two encodings of the same
/// observations share even when one has extra empty buckets. Staleness markers are
/// their sum alone.
pub type Observed = (Vec<u64>, [BTreeMap<i64, u64>; 2]);

pub trait Observe {
    fn observed(&self) -> Observed;
}

impl Observe for Histogram {
    fn observed(&self) -> Observed {
        self.to_float().observed()
    }
}

impl Observe for FloatHistogram {
    fn observed(&self) -> Observed {
        if self.is_stale() {
            return (vec![self.sum.to_bits()], Default::default());
        }
        let scalars = [
            f64::from(self.schema),
            self.zero_threshold,
            self.zero_count,
            self.count,
            self.sum,
        ];
        let non_empty = |spans: &[Span], counts: &[f64]| {
            indices(spans)
                .into_iter()
                .zip(counts.iter().map(|c| c.to_bits()))
                .filter(|(_, c)| *c != 0)
                .collect()
        };
        (
            scalars.iter().map(|v| v.to_bits()).collect(),
            [
                non_empty(&self.positive_spans, &self.positive_buckets),
                non_empty(&self.negative_spans, &self.negative_buckets),
            ],
        )
    }
}
