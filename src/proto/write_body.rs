//! Remote-write 1.0 bytes written straight from `model` series, for the bodies nodes send
//! each other (replication, hints, repairs).
//!
//! Owns: the encoding of `model::Series` as `WriteRequest.timeseries` entries without
//! building the prost structs first, which costs a `String` per label name and value
//! and a copy of every sample vector per series. The bytes are what prost writes for
//! `series_to_proto` except that a sample value of -0.0 is kept (prost leaves a float
//! field out when it equals zero, so -0.0 would arrive as 0.0). Metadata and exemplars
//! and native histograms (rare next to samples) go through the prost structs. Calls only `model`, its parent's
//! conversions and prost's wire primitives.
//!
//! A protobuf message's repeated fields may be split over several encodings that are
//! then concatenated, so the fields written here can be appended to one another to form
//! one request, and a request's bytes can be assembled from parts encoded once.

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, message, WireType};

use crate::model::{HistogramSeries, MetricMetadata, Sample, Series, SeriesExemplars};

/// `WriteRequest.timeseries`, `TimeSeries.labels`, `Label.name`, `Sample.value`.
const TAG_1: u32 = 1;
/// `TimeSeries.samples`, `Label.value`, `Sample.timestamp`.
const TAG_2: u32 = 2;
/// `WriteRequest.metadata`.
const TAG_METADATA: u32 = 3;

/// Bytes of a length-delimited field with a one-byte key (tags below 16).
fn delimited_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn string_field_len(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        delimited_len(s.len())
    }
}

fn label_len(name: &str, value: &str) -> usize {
    string_field_len(name) + string_field_len(value)
}

fn sample_len(s: &Sample) -> usize {
    let value = if s.v.to_bits() == 0 { 0 } else { 1 + 8 };
    let timestamp = if s.t == 0 {
        0
    } else {
        1 + encoded_len_varint(s.t as u64)
    };
    value + timestamp
}

fn time_series_len(series: &Series) -> usize {
    let labels: usize = series
        .labels
        .iter()
        .map(|l| delimited_len(label_len(&l.name, &l.value)))
        .sum();
    let samples: usize = series
        .samples
        .iter()
        .map(|s| delimited_len(sample_len(s)))
        .sum();
    labels + samples
}

fn put_string(tag: u32, s: &str, out: &mut Vec<u8>) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(s.len() as u64, out);
        out.extend_from_slice(s.as_bytes());
    }
}

/// Appends `series` to `out` as `WriteRequest.timeseries` entries.
pub fn encode_series(series: &[Series], out: &mut Vec<u8>) {
    let lens: Vec<usize> = series.iter().map(time_series_len).collect();
    out.reserve(lens.iter().map(|&len| delimited_len(len)).sum());
    for (series, len) in series.iter().zip(lens) {
        encode_key(TAG_1, WireType::LengthDelimited, out);
        encode_varint(len as u64, out);
        for label in series.labels.iter() {
            encode_key(TAG_1, WireType::LengthDelimited, out);
            encode_varint(label_len(&label.name, &label.value) as u64, out);
            put_string(TAG_1, &label.name, out);
            put_string(TAG_2, &label.value, out);
        }
        for sample in &series.samples {
            encode_key(TAG_2, WireType::LengthDelimited, out);
            encode_varint(sample_len(sample) as u64, out);
            if sample.v.to_bits() != 0 {
                encode_key(TAG_1, WireType::SixtyFourBit, out);
                out.extend_from_slice(&sample.v.to_le_bytes());
            }
            if sample.t != 0 {
                encode_key(TAG_2, WireType::Varint, out);
                encode_varint(sample.t as u64, out);
            }
        }
    }
}

/// Appends each series' native histograms to `out` as a `WriteRequest.timeseries` entry
/// without float samples (through the prost structs: histograms are few next to
/// samples). prost leaves out a sum of -0.0, so it arrives as 0.0.
pub fn encode_histograms(series: &[HistogramSeries], out: &mut Vec<u8>) {
    for s in series {
        message::encode(TAG_1, &super::histogram_series_to_proto(s), out);
    }
}

/// Appends each series' exemplars to `out` as a `WriteRequest.timeseries` entry without
/// samples, as remote write 1.0 carries them.
pub fn encode_exemplars(exemplars: &[SeriesExemplars], out: &mut Vec<u8>) {
    for series in exemplars {
        message::encode(TAG_1, &super::exemplars_to_proto(series), out);
    }
}

/// Appends `metadata` to `out` as `WriteRequest.metadata` entries.
pub fn encode_metadata(metadata: &[MetricMetadata], out: &mut Vec<u8>) {
    for family in metadata {
        message::encode(TAG_METADATA, &super::metadata_to_proto(family), out);
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::model::Labels;
    use crate::proto::{series_to_proto, WriteRequest};

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> Series {
        Series {
            labels: Labels::from_pairs(labels.iter().map(|&(n, v)| (n, v.to_string()))),
            samples: samples.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
        }
    }

    fn by_prost(series: &[Series]) -> Vec<u8> {
        WriteRequest {
            timeseries: series.iter().map(series_to_proto).collect(),
            metadata: vec![],
        }
        .encode_to_vec()
    }

    fn ours(series: &[Series]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_series(series, &mut out);
        out
    }

    #[test]
    fn writes_what_prost_writes() {
        let long = "v".repeat(300);
        let batch = vec![
            series(
                &[("__name__", "up"), ("job", "api"), ("long", &long)],
                &[(1_700_000_000_000, 1.0), (0, 0.0), (-5, f64::NAN)],
            ),
            series(&[("__name__", "ünïcode")], &[(i64::MAX, f64::INFINITY)]),
            series(&[("__name__", "m")], &[(i64::MIN, f64::MIN_POSITIVE)]),
            series(&[("__name__", "no_samples")], &[]),
            Series {
                labels: Labels::default(),
                samples: vec![Sample::new(3, 4.0)],
            },
        ];
        assert_eq!(ours(&batch), by_prost(&batch));
        assert_eq!(ours(&[]), Vec::<u8>::new());
        // Appending batches is the same as encoding them together.
        let mut out = ours(&batch[..2]);
        encode_series(&batch[2..], &mut out);
        assert_eq!(out, by_prost(&batch));
    }

    #[test]
    fn parts_concatenate_into_the_whole_request() {
        let batch = vec![series(&[("__name__", "up")], &[(5, 1.0)])];
        let exemplars = vec![SeriesExemplars {
            series: Labels::from_pairs([("__name__", "up")]),
            exemplars: vec![crate::model::Exemplar {
                labels: Labels::from_pairs([("trace_id", "abc")]),
                value: 2.0,
                t: 7,
            }],
        }];
        let metadata = vec![MetricMetadata {
            metric_family: "up".into(),
            metric_type: "gauge".into(),
            help: "is it up".into(),
            unit: String::new(),
        }];
        let mut raw = ours(&batch);
        encode_exemplars(&exemplars, &mut raw);
        encode_metadata(&metadata, &mut raw);
        let whole = WriteRequest {
            timeseries: batch
                .iter()
                .map(series_to_proto)
                .chain(exemplars.iter().map(crate::proto::exemplars_to_proto))
                .collect(),
            metadata: metadata
                .iter()
                .map(crate::proto::metadata_to_proto)
                .collect(),
        };
        assert_eq!(raw, whole.encode_to_vec());
        let body = crate::proto::compress_snappy(&raw);
        assert_eq!(
            snap::raw::Decoder::new().decompress_vec(&body).unwrap(),
            raw
        );
    }

    #[test]
    fn negative_zero_keeps_its_sign() {
        let batch = vec![series(&[("__name__", "z")], &[(1, -0.0), (2, 0.0)])];
        let decoded = WriteRequest::decode(ours(&batch).as_slice()).expect("decodes");
        let values: Vec<u64> = decoded.timeseries[0]
            .samples
            .iter()
            .map(|s| s.value.to_bits())
            .collect();
        assert_eq!(values, vec![(-0.0f64).to_bits(), 0]);
    }
}
