//! Native histograms in a fan-out select: the wire form of a node's answer (both sides)
//! and the merge of the replicas' answers.
//!
//! Owns: `encode_answer` (the matching histogram series a node holds, each in full, as
//! a snappy remote-write 1.0 `WriteRequest` whose series carry only `histograms`),
//! `decode_answer` (the asker's side; peer bytes are untrusted, so the decompressed size
//! is bounded, label names must be sorted and unique, samples strictly time-ordered and
//! every histogram valid by `HistogramValue::validate`: a bad body is an error, never a
//! panic) and `merge` (one series per label set, sorted by labels, the union of the
//! replicas' samples; a timestamp several replicas hold is kept once).
//!
//! Unlike float samples (ADR 0028), every replica sends its copy in full: there are no
//! histogram digests, so nothing would tell the asker that a later owner holds samples
//! the first owner lacks. For the same reason lagging owners are not looked for (no
//! read repair of histograms). Calls `model`, `proto` and `one_copy`'s shared opening
//! of peer bodies.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use super::one_copy::{decode_snappy_message, labels_from_wire};
use crate::cluster::identity::NodeId;
use crate::model::histogram::{merge_sorted_histograms, HistogramSample};
use crate::model::{HistogramSeries, Labels};
use crate::proto;

/// Largest decompressed answer accepted from a peer: the peer client already bounds
/// the compressed body to 1 GiB; this bounds what its snappy header may make the asker
/// allocate.
const MAX_DECOMPRESSED_ANSWER: usize = 1 << 30;

/// A node's answer: `series` (its local store's, sorted and unique) in wire form.
pub fn encode_answer(series: &[HistogramSeries]) -> Vec<u8> {
    let mut raw = Vec::new();
    proto::write_body::encode_histograms(series, &mut raw);
    proto::compress_snappy(&raw)
}

/// Decodes `encode_answer`'s output; a malformed body is an error, never a panic.
pub fn decode_answer(body: &[u8]) -> Result<Vec<HistogramSeries>, String> {
    let len = snap::raw::decompress_len(body).map_err(|e| format!("snappy: {e}"))?;
    if len > MAX_DECOMPRESSED_ANSWER {
        return Err(format!(
            "histogram answer of {len} bytes decompressed exceeds {MAX_DECOMPRESSED_ANSWER}"
        ));
    }
    let wire: proto::WriteRequest = decode_snappy_message(body)?;
    let mut out = Vec::with_capacity(wire.timeseries.len());
    for ts in wire.timeseries {
        let labels = labels_from_wire(ts.labels, "histogram series")?;
        let mut samples = Vec::with_capacity(ts.histograms.len());
        for wire in &ts.histograms {
            let h = wire.to_model();
            h.validate()
                .map_err(|e| format!("invalid histogram in {labels}: {e}"))?;
            samples.push(HistogramSample {
                t: wire.timestamp,
                h,
            });
        }
        if !samples.windows(2).all(|w| w[0].t < w[1].t) {
            return Err(format!(
                "histograms of {labels} not in strictly increasing time order"
            ));
        }
        out.push(HistogramSeries { labels, samples });
    }
    Ok(out)
}

/// Merges the answers (each from the node named beside it) into one series per label
/// set, sorted by labels. Answers are merged in node order, so at a timestamp replicas
/// disagree about (they have not converged) every asker keeps the same sample: the
/// last node's.
pub fn merge(mut answers: Vec<(NodeId, Vec<HistogramSeries>)>) -> Vec<HistogramSeries> {
    if answers.len() == 1 {
        // One node (a cluster of one): its answer is already sorted and unique.
        return answers.pop().map(|(_, a)| a).unwrap_or_default();
    }
    answers.sort_by_key(|(node, _)| *node);
    let mut merged: BTreeMap<Labels, Vec<HistogramSample>> = BTreeMap::new();
    for series in answers.into_iter().flat_map(|(_, a)| a) {
        match merged.entry(series.labels) {
            Entry::Vacant(e) => {
                e.insert(series.samples);
            }
            Entry::Occupied(mut e) => {
                let older = std::mem::take(e.get_mut());
                *e.get_mut() = merge_sorted_histograms(older, series.samples);
            }
        }
    }
    merged
        .into_iter()
        .map(|(labels, samples)| HistogramSeries { labels, samples })
        .collect()
}

/// A valid integer histogram at `t` holding `count` observations, for unit tests.
#[cfg(test)]
pub(crate) fn test_int_histogram(t: i64, count: u64) -> HistogramSample {
    use crate::model::histogram::{CounterResetHint, Histogram, HistogramValue, Span};
    HistogramSample {
        t,
        h: HistogramValue::Int(Histogram {
            counter_reset_hint: CounterResetHint::Unknown,
            schema: 0,
            zero_threshold: 0.001,
            zero_count: 0,
            count,
            sum: count as f64 * 1.5,
            positive_spans: vec![Span {
                offset: 0,
                length: 1,
            }]
            .into(),
            positive_buckets: vec![count as i64],
            ..Default::default()
        }),
    }
}

/// A valid float histogram at `t` holding `count` observations, for unit tests.
#[cfg(test)]
pub(crate) fn test_float_histogram(t: i64, count: f64) -> HistogramSample {
    use crate::model::histogram::{CounterResetHint, FloatHistogram, HistogramValue, Span};
    HistogramSample {
        t,
        h: HistogramValue::Float(FloatHistogram {
            counter_reset_hint: CounterResetHint::Unknown,
            schema: 1,
            zero_threshold: 0.001,
            zero_count: 0.5,
            count,
            sum: 2.0,
            positive_spans: vec![Span {
                offset: 1,
                length: 2,
            }]
            .into(),
            positive_buckets: vec![count / 2.0 - 0.25, count / 2.0 - 0.25],
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::test_float_histogram as float;
    use super::test_int_histogram as int;
    use super::*;
    use prost::Message;

    fn series(name: &str, samples: Vec<HistogramSample>) -> HistogramSeries {
        HistogramSeries {
            labels: Labels::from_pairs([("__name__", name)]),
            samples,
        }
    }

    #[test]
    fn answers_survive_the_wire() {
        let answer = vec![
            series("a", vec![int(1, 3), int(2, 4), float(3, 5.0)]),
            series("b", vec![float(-7, 9.0)]),
        ];
        for s in &answer {
            for sample in &s.samples {
                sample.h.validate().expect("test histograms are valid");
            }
        }
        let bytes = encode_answer(&answer);
        assert_eq!(decode_answer(&bytes).expect("decodes"), answer);
        assert_eq!(decode_answer(&encode_answer(&[])).expect("empty"), vec![]);
    }

    #[test]
    fn replicas_merge_into_one_series_each_sample_once() {
        let a = vec![
            series("x", vec![int(1, 1), int(3, 3)]),
            series("y", vec![int(1, 1)]),
        ];
        let b = vec![series("x", vec![int(2, 2), int(3, 3), int(4, 4)])];
        let c = vec![series("y", vec![int(1, 1)]), series("z", vec![int(5, 5)])];
        let merged = merge(vec![(NodeId(3), c), (NodeId(1), a), (NodeId(2), b)]);
        assert_eq!(
            merged,
            vec![
                series("x", vec![int(1, 1), int(2, 2), int(3, 3), int(4, 4)]),
                series("y", vec![int(1, 1)]),
                series("z", vec![int(5, 5)]),
            ]
        );
        // Disagreeing replicas: the same winner whatever order the answers came in.
        let one = || (NodeId(1), vec![series("x", vec![int(1, 1)])]);
        let two = || (NodeId(2), vec![series("x", vec![int(1, 2)])]);
        assert_eq!(merge(vec![one(), two()]), merge(vec![two(), one()]));
    }

    /// The wire form of `series` with one histogram changed by `spoil`.
    fn spoiled(spoil: impl Fn(&mut proto::Histogram)) -> Vec<u8> {
        let mut ts = proto::histogram_series_to_proto(&series("x", vec![int(1, 3), int(2, 4)]));
        spoil(&mut ts.histograms[1]);
        proto::encode_snappy(&proto::WriteRequest {
            timeseries: vec![ts],
            ..Default::default()
        })
    }

    #[test]
    fn bad_peer_bodies_are_errors_not_panics() {
        let good = encode_answer(&[series("x", vec![int(1, 3), float(2, 4.0)])]);
        assert!(decode_answer(&good).is_ok());
        // Garbage, and every truncation of a good body.
        assert!(decode_answer(b"garbage").is_err());
        for end in 0..good.len() {
            let _ = decode_answer(&good[..end]);
        }
        // Snappy that opens to bytes that are no protobuf, and a header claiming 4 GiB.
        assert!(decode_answer(&proto::compress_snappy(&[0xff; 64])).is_err());
        assert!(decode_answer(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        // Pseudo-random bytes, raw and snappy-framed.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_answer(&bytes);
            let _ = decode_answer(&proto::compress_snappy(&bytes));
        }
        // Histograms that break Prometheus's rules, and samples out of order.
        let bucket_count_mismatch = spoiled(|h| h.positive_deltas = vec![1, 1]);
        assert!(decode_answer(&bucket_count_mismatch).is_err());
        let bad_schema = spoiled(|h| h.schema = 99);
        assert!(decode_answer(&bad_schema).is_err());
        let out_of_order = spoiled(|h| h.timestamp = 1);
        assert!(decode_answer(&out_of_order).is_err());
        // Unsorted labels ("A" sorts before "__name__").
        let mut ts = proto::histogram_series_to_proto(&series("x", vec![int(1, 3)]));
        ts.labels.push(proto::Label {
            name: "A".into(),
            value: "b".into(),
        });
        let unsorted = proto::compress_snappy(
            &proto::WriteRequest {
                timeseries: vec![ts],
                ..Default::default()
            }
            .encode_to_vec(),
        );
        assert!(decode_answer(&unsorted).is_err());
    }
}
