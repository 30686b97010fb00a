//! Native histograms on the wire: the `Histogram` message that remote write 1.0
//! (`prompb/types.proto`), remote write 2.0 (`io.prometheus.write.v2`, which adds
//! `start_timestamp`, field 17) and remote read share, and its conversion to and from
//! `model::histogram`.
//!
//! One struct serves both protocol versions: the messages are the same field for field
//! and a 1.0 sender never sets field 17. Conversion from the wire does not validate;
//! ingest validates the model value with Prometheus's rules before anything is stored.
//! Calls only `model`.

use std::sync::Arc;

use prost::Message;

use crate::model::histogram::{
    CounterResetHint, FloatHistogram, Histogram as IntHistogram, HistogramSample, HistogramValue,
    Span,
};
use crate::model::HistogramSeries;

#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    /// Set as `Int` for an integer histogram, `Float` for a float histogram; absent
    /// reads as an integer histogram (Prometheus's `IsFloatHistogram`).
    #[prost(oneof = "Count", tags = "1, 2")]
    pub count: Option<Count>,
    #[prost(double, tag = "3")]
    pub sum: f64,
    #[prost(sint32, tag = "4")]
    pub schema: i32,
    #[prost(double, tag = "5")]
    pub zero_threshold: f64,
    #[prost(oneof = "ZeroCount", tags = "6, 7")]
    pub zero_count: Option<ZeroCount>,
    #[prost(message, repeated, tag = "8")]
    pub negative_spans: Vec<BucketSpan>,
    /// Integer histograms: each bucket's count as a delta to the previous bucket's.
    #[prost(sint64, repeated, tag = "9")]
    pub negative_deltas: Vec<i64>,
    /// Float histograms: absolute bucket counts.
    #[prost(double, repeated, tag = "10")]
    pub negative_counts: Vec<f64>,
    #[prost(message, repeated, tag = "11")]
    pub positive_spans: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "12")]
    pub positive_deltas: Vec<i64>,
    #[prost(double, repeated, tag = "13")]
    pub positive_counts: Vec<f64>,
    /// `ResetHint`: 0 unknown, 1 yes, 2 no, 3 gauge.
    #[prost(int32, tag = "14")]
    pub reset_hint: i32,
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
    /// Bucket upper bounds of the custom-buckets schema (-53).
    #[prost(double, repeated, tag = "16")]
    pub custom_values: Vec<f64>,
    /// Remote write 2.0 only: when the counter started (Prometheus's created timestamp).
    #[prost(int64, tag = "17")]
    pub start_timestamp: i64,
}

/// `Histogram.count`: a oneof of an integer and a float field.
#[derive(Clone, Copy, PartialEq, prost::Oneof)]
pub enum Count {
    #[prost(uint64, tag = "1")]
    Int(u64),
    #[prost(double, tag = "2")]
    Float(f64),
}

/// `Histogram.zero_count`, the same oneof under other field numbers (prost's derive
/// ties a oneof type to its tags).
#[derive(Clone, Copy, PartialEq, prost::Oneof)]
pub enum ZeroCount {
    #[prost(uint64, tag = "6")]
    Int(u64),
    #[prost(double, tag = "7")]
    Float(f64),
}

#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct BucketSpan {
    #[prost(sint32, tag = "1")]
    pub offset: i32,
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

fn hint_from_wire(hint: i32) -> CounterResetHint {
    match hint {
        1 => CounterResetHint::CounterReset,
        2 => CounterResetHint::NotCounterReset,
        3 => CounterResetHint::Gauge,
        // 0, and values a newer sender might define, mean "detect it yourself".
        _ => CounterResetHint::Unknown,
    }
}

fn hint_to_wire(hint: CounterResetHint) -> i32 {
    match hint {
        CounterResetHint::Unknown => 0,
        CounterResetHint::CounterReset => 1,
        CounterResetHint::NotCounterReset => 2,
        CounterResetHint::Gauge => 3,
    }
}

fn spans_from_wire(spans: &[BucketSpan]) -> Arc<[Span]> {
    spans
        .iter()
        .map(|s| Span {
            offset: s.offset,
            length: s.length,
        })
        .collect()
}

fn spans_to_wire(spans: &[Span]) -> Vec<BucketSpan> {
    spans
        .iter()
        .map(|s| BucketSpan {
            offset: s.offset,
            length: s.length,
        })
        .collect()
}

impl Histogram {
    /// Whether this is a float histogram (its count is the float field).
    pub fn is_float(&self) -> bool {
        matches!(self.count, Some(Count::Float(_)))
    }

    /// The model value, as Prometheus's `ToIntHistogram`/`ToFloatHistogram` read it:
    /// the fields of the other kind are ignored, as is a oneof set to the other kind.
    pub fn to_model(&self) -> HistogramValue {
        let (count_int, count_float) = match self.count {
            Some(Count::Int(n)) => (n, 0.0),
            Some(Count::Float(x)) => (0, x),
            None => (0, 0.0),
        };
        let (zero_int, zero_float) = match self.zero_count {
            Some(ZeroCount::Int(n)) => (n, 0.0),
            Some(ZeroCount::Float(x)) => (0, x),
            None => (0, 0.0),
        };
        if self.is_float() {
            HistogramValue::Float(FloatHistogram {
                counter_reset_hint: hint_from_wire(self.reset_hint),
                schema: self.schema,
                zero_threshold: self.zero_threshold,
                zero_count: zero_float,
                count: count_float,
                sum: self.sum,
                positive_spans: spans_from_wire(&self.positive_spans),
                negative_spans: spans_from_wire(&self.negative_spans),
                positive_buckets: self.positive_counts.clone(),
                negative_buckets: self.negative_counts.clone(),
                custom_values: self.custom_values.as_slice().into(),
            })
        } else {
            HistogramValue::Int(IntHistogram {
                counter_reset_hint: hint_from_wire(self.reset_hint),
                schema: self.schema,
                zero_threshold: self.zero_threshold,
                zero_count: zero_int,
                count: count_int,
                sum: self.sum,
                positive_spans: spans_from_wire(&self.positive_spans),
                negative_spans: spans_from_wire(&self.negative_spans),
                positive_buckets: self.positive_deltas.clone(),
                negative_buckets: self.negative_deltas.clone(),
                custom_values: self.custom_values.as_slice().into(),
            })
        }
    }

    /// The wire form of a sample (Prometheus's `FromIntHistogram`/`FromFloatHistogram`).
    pub fn from_sample(sample: &HistogramSample) -> Histogram {
        match &sample.h {
            HistogramValue::Int(h) => Histogram {
                count: Some(Count::Int(h.count)),
                sum: h.sum,
                schema: h.schema,
                zero_threshold: h.zero_threshold,
                zero_count: Some(ZeroCount::Int(h.zero_count)),
                negative_spans: spans_to_wire(&h.negative_spans),
                negative_deltas: h.negative_buckets.clone(),
                positive_spans: spans_to_wire(&h.positive_spans),
                positive_deltas: h.positive_buckets.clone(),
                reset_hint: hint_to_wire(h.counter_reset_hint),
                timestamp: sample.t,
                custom_values: h.custom_values.to_vec(),
                ..Default::default()
            },
            HistogramValue::Float(h) => Histogram {
                count: Some(Count::Float(h.count)),
                sum: h.sum,
                schema: h.schema,
                zero_threshold: h.zero_threshold,
                zero_count: Some(ZeroCount::Float(h.zero_count)),
                negative_spans: spans_to_wire(&h.negative_spans),
                negative_counts: h.negative_buckets.clone(),
                positive_spans: spans_to_wire(&h.positive_spans),
                positive_counts: h.positive_buckets.clone(),
                reset_hint: hint_to_wire(h.counter_reset_hint),
                timestamp: sample.t,
                custom_values: h.custom_values.to_vec(),
                ..Default::default()
            },
        }
    }
}

/// The wire form of a series with its histogram samples (remote write 1.0, remote read).
pub fn histogram_series_to_proto(series: &HistogramSeries) -> super::TimeSeries {
    super::TimeSeries {
        labels: super::labels_to_proto(&series.labels),
        histograms: series.samples.iter().map(Histogram::from_sample).collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int_sample() -> HistogramSample {
        HistogramSample {
            t: 1_700_000_000_000,
            h: HistogramValue::Int(IntHistogram {
                counter_reset_hint: CounterResetHint::NotCounterReset,
                schema: 1,
                zero_threshold: 0.001,
                zero_count: 2,
                count: 9,
                sum: -3.5,
                positive_spans: vec![Span {
                    offset: -2,
                    length: 2,
                }]
                .into(),
                negative_spans: vec![Span {
                    offset: 1,
                    length: 1,
                }]
                .into(),
                positive_buckets: vec![3, -1],
                negative_buckets: vec![2],
                custom_values: Arc::from([]),
            }),
        }
    }

    #[test]
    fn both_kinds_round_trip_through_the_wire() {
        let int = int_sample();
        let HistogramValue::Int(h) = &int.h else {
            unreachable!()
        };
        let mut float = h.to_float();
        float.schema = -53;
        float.custom_values = vec![0.5, 1.0].into();
        float.counter_reset_hint = CounterResetHint::Gauge;
        let float = HistogramSample {
            t: -7,
            h: HistogramValue::Float(float),
        };
        for sample in [int, float] {
            let wire = Histogram::from_sample(&sample);
            let decoded = Histogram::decode(wire.encode_to_vec().as_slice()).unwrap();
            assert_eq!(decoded.timestamp, sample.t);
            assert_eq!(decoded.to_model(), sample.h);
        }
    }

    #[test]
    fn missing_count_reads_as_an_integer_histogram_and_unknown_hints_as_unknown() {
        let wire = Histogram {
            reset_hint: 9,
            zero_count: Some(ZeroCount::Float(4.0)),
            positive_counts: vec![1.0],
            ..Default::default()
        };
        let HistogramValue::Int(h) = wire.to_model() else {
            panic!("not an integer histogram")
        };
        assert_eq!(h.counter_reset_hint, CounterResetHint::Unknown);
        // The other kind's fields are ignored, as Prometheus does.
        assert_eq!(h.zero_count, 0);
        assert!(h.positive_buckets.is_empty());
    }
}
