//! Hand-written protobuf decoding of a remote-write 2.0 `io.prometheus.write.v2.Request`
//! (ADR 0027), borrowing every string from the decompressed body as the 1.0 decoder does
//! (ADR 0025), and the step from its symbol-table shape to the 1.0 decoder's `RawWrite`,
//! so that both versions meet the same validation (`validate`). Calls `decode` (the wire
//! reader), `model` and `proto`.
//!
//! Decoding accepts and refuses what prost's decoding of `proto::write_v2::Request`
//! does, in the same order (the differential fuzz test holds it to that): every symbol
//! is checked for UTF-8 as it is read (a symbol table is deduplicated, so that is one
//! check per distinct string), `labels_refs` may come packed or not, and a repeated
//! `metadata` field merges into the one before, as prost merges a message field.
//!
//! `into_raw_write` then refuses what the 2.0 spec calls malformed: a non-empty
//! `symbols[0]`, an odd number of label references, a reference past the symbol
//! table (labels, exemplar labels, help and unit). It resolves label references of
//! series and exemplars into `RawLabel`s that point into the body (the 1.0 decoder's
//! shape: exemplars then follow 1.0's rules too), turns each series' metadata into a metric
//! family's metadata (deduplicated within the request), and adds the created-timestamp
//! zero requests (`model::created_zero`) for the samples whose start timestamp is before
//! them. Client values that carry the reserved bits become ordinary NaN here.

use std::collections::HashSet;
use std::ops::Range;

use super::decode::{
    RawExemplar, RawLabel, RawSeries, RawWrite, Reader, WireError, RECURSION_LIMIT,
};
use super::{IngestError, RejectReason};
use crate::model::{self, Sample, METRIC_NAME};
use crate::proto::{self, write_v2};

/// One exemplar: its labels are a range of `RawV2::exemplar_refs`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct RefExemplar {
    pub labels: Range<usize>,
    pub value: f64,
    pub timestamp: i64,
}

/// A series' metadata as sent: references into the symbol table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct RawMetadata {
    pub r#type: i32,
    pub help_ref: u32,
    pub unit_ref: u32,
}

/// One `TimeSeries` of a 2.0 request.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct RawV2Series {
    /// Its label references, in pairs: a range of `RawV2::refs`.
    pub labels: Range<usize>,
    pub samples: Vec<Sample>,
    /// `(start_timestamp, timestamp)` of each sample sent with a start timestamp.
    pub starts: Vec<(i64, i64)>,
    /// The series-level created timestamp of Prometheus 3.0 to 3.4 (field 6), or 0.
    pub created_timestamp: i64,
    /// Native histograms as sent, not yet validated.
    pub histograms: Vec<proto::Histogram>,
    pub exemplars: Vec<RefExemplar>,
    pub metadata: RawMetadata,
}

/// A decoded 2.0 request whose symbols point into the body.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct RawV2<'a> {
    pub symbols: Vec<&'a str>,
    /// The label references of every series, one series after the other.
    pub refs: Vec<u32>,
    /// The label references of every exemplar, likewise.
    pub exemplar_refs: Vec<u32>,
    pub series: Vec<RawV2Series>,
}

/// Decodes `body`, a serialized `io.prometheus.write.v2.Request`.
pub(super) fn decode_request(body: &[u8]) -> Result<RawV2<'_>, WireError> {
    let mut request = RawV2::default();
    let mut reader = Reader::new(body);
    while reader.before(body.len()) {
        let (tag, wire) = reader.key()?;
        match tag {
            4 => request
                .symbols
                .push(reader.string("Request.symbols", wire)?),
            5 => {
                let end = reader.enter("Request.timeseries", wire, RECURSION_LIMIT)?;
                let series = time_series(
                    &mut reader,
                    end,
                    RECURSION_LIMIT - 1,
                    &mut request.refs,
                    &mut request.exemplar_refs,
                )?;
                request.series.push(series);
            }
            _ => reader.skip(wire, tag, RECURSION_LIMIT)?,
        }
    }
    Ok(request)
}

fn time_series(
    reader: &mut Reader<'_>,
    end: usize,
    depth: u32,
    refs: &mut Vec<u32>,
    exemplar_refs: &mut Vec<u32>,
) -> Result<RawV2Series, WireError> {
    // Only this series writes to `refs` until it ends, so its references stay one range
    // even when they come split over several fields.
    let mut series = RawV2Series {
        labels: refs.len()..refs.len(),
        ..RawV2Series::default()
    };
    while reader.before(end) {
        let (tag, wire) = reader.key()?;
        match tag {
            1 => reader.uint32s("TimeSeries.labels_refs", wire, refs)?,
            2 => {
                let sample_end = reader.enter("TimeSeries.samples", wire, depth)?;
                let (sample, start) = sample(reader, sample_end, depth - 1)?;
                if start != 0 {
                    series.starts.push((start, sample.t));
                }
                series.samples.push(sample);
            }
            3 => {
                let histogram_end = reader.enter("TimeSeries.histograms", wire, depth)?;
                series
                    .histograms
                    .push(reader.histogram(histogram_end, depth - 1)?);
            }
            4 => {
                let exemplar_end = reader.enter("TimeSeries.exemplars", wire, depth)?;
                let exemplar = exemplar(reader, exemplar_end, depth - 1, exemplar_refs)?;
                series.exemplars.push(exemplar);
            }
            5 => {
                let metadata_end = reader.enter("TimeSeries.metadata", wire, depth)?;
                metadata(reader, metadata_end, depth - 1, &mut series.metadata)?;
            }
            6 => series.created_timestamp = reader.int64("TimeSeries.created_timestamp", wire)?,
            _ => reader.skip(wire, tag, depth)?,
        }
    }
    reader.leave(end)?;
    series.labels.end = refs.len();
    Ok(series)
}

/// A sample and its start timestamp (0 when absent).
fn sample(reader: &mut Reader<'_>, end: usize, depth: u32) -> Result<(Sample, i64), WireError> {
    let mut sample = Sample::new(0, 0.0);
    let mut start = 0;
    while reader.before(end) {
        let (tag, wire) = reader.key()?;
        match tag {
            1 => sample.v = reader.double("Sample.value", wire)?,
            2 => sample.t = reader.int64("Sample.timestamp", wire)?,
            3 => start = reader.int64("Sample.start_timestamp", wire)?,
            _ => reader.skip(wire, tag, depth)?,
        }
    }
    reader.leave(end)?;
    Ok((sample, start))
}

fn exemplar(
    reader: &mut Reader<'_>,
    end: usize,
    depth: u32,
    refs: &mut Vec<u32>,
) -> Result<RefExemplar, WireError> {
    let start = refs.len();
    let (mut value, mut timestamp) = (0.0, 0);
    while reader.before(end) {
        let (tag, wire) = reader.key()?;
        match tag {
            1 => reader.uint32s("Exemplar.labels_refs", wire, refs)?,
            2 => value = reader.double("Exemplar.value", wire)?,
            3 => timestamp = reader.int64("Exemplar.timestamp", wire)?,
            _ => reader.skip(wire, tag, depth)?,
        }
    }
    reader.leave(end)?;
    Ok(RefExemplar {
        labels: start..refs.len(),
        value,
        timestamp,
    })
}

/// Merges one occurrence of the metadata field into `into`.
fn metadata(
    reader: &mut Reader<'_>,
    end: usize,
    depth: u32,
    into: &mut RawMetadata,
) -> Result<(), WireError> {
    while reader.before(end) {
        let (tag, wire) = reader.key()?;
        match tag {
            // An enum is an int32: the varint truncated, as prost reads it.
            1 => into.r#type = reader.int64("Metadata.type", wire)? as i32,
            3 => into.help_ref = reader.int64("Metadata.help_ref", wire)? as u32,
            4 => into.unit_ref = reader.int64("Metadata.unit_ref", wire)? as u32,
            _ => reader.skip(wire, tag, depth)?,
        }
    }
    reader.leave(end)
}

/// The same shape from a request prost decoded: the reference the hand-written decoder
/// is compared with (`fuzzing`).
pub(super) fn from_reference(request: &write_v2::Request) -> RawV2<'_> {
    let mut raw = RawV2 {
        symbols: request.symbols.iter().map(String::as_str).collect(),
        ..RawV2::default()
    };
    for ts in &request.timeseries {
        let mut series = RawV2Series {
            created_timestamp: ts.created_timestamp,
            histograms: ts.histograms.clone(),
            ..RawV2Series::default()
        };
        for s in &ts.samples {
            if s.start_timestamp != 0 {
                series.starts.push((s.start_timestamp, s.timestamp));
            }
            series.samples.push(Sample::new(s.timestamp, s.value));
        }
        for e in &ts.exemplars {
            let start = raw.exemplar_refs.len();
            raw.exemplar_refs.extend_from_slice(&e.labels_refs);
            series.exemplars.push(RefExemplar {
                labels: start..raw.exemplar_refs.len(),
                value: e.value,
                timestamp: e.timestamp,
            });
        }
        if let Some(m) = &ts.metadata {
            series.metadata = RawMetadata {
                r#type: m.r#type,
                help_ref: m.help_ref,
                unit_ref: m.unit_ref,
            };
        }
        series.labels = raw.refs.len()..raw.refs.len() + ts.labels_refs.len();
        raw.refs.extend_from_slice(&ts.labels_refs);
        raw.series.push(series);
    }
    raw
}

fn malformed(message: String) -> IngestError {
    IngestError::new(RejectReason::InvalidSymbolRefs, message)
}

/// Resolves a 2.0 request into the 1.0 decoder's shape, refusing malformed references
/// (see the module comment). Labels still have to pass `validate`'s rules.
pub(super) fn into_raw_write(request: RawV2<'_>) -> Result<RawWrite<'_>, IngestError> {
    let RawV2 {
        symbols,
        refs,
        exemplar_refs,
        series,
    } = request;
    if let Some(first) = symbols.first().filter(|s| !s.is_empty()) {
        return Err(malformed(format!(
            "symbols[0] must be the empty string, got {:?}",
            first.chars().take(64).collect::<String>()
        )));
    }
    let symbol = |r: u32, index: usize, what: &str| -> Result<&str, IngestError> {
        symbols.get(r as usize).copied().ok_or_else(|| {
            malformed(format!(
                "series #{index}: {what} reference {r} is outside the symbol table of {} symbols",
                symbols.len()
            ))
        })
    };
    let pairs = |refs: &[u32], index: usize, what: &str| -> Result<(), IngestError> {
        if refs.len() % 2 != 0 {
            return Err(malformed(format!(
                "series #{index}: {what} has an odd number ({}) of label references; \
                 they come in name/value pairs",
                refs.len()
            )));
        }
        refs.iter()
            .try_for_each(|&r| symbol(r, index, what).map(drop))
    };

    let mut write = RawWrite {
        labels: Vec::with_capacity(refs.len() / 2),
        exemplar_labels: Vec::with_capacity(exemplar_refs.len() / 2),
        series: Vec::with_capacity(series.len()),
        metadata: Vec::new(),
    };
    let label = |pair: &[u32]| RawLabel {
        name: symbols[pair[0] as usize].as_bytes(),
        value: symbols[pair[1] as usize].as_bytes(),
    };
    let mut families = HashSet::new();
    for (index, ts) in series.into_iter().enumerate() {
        pairs(&refs[ts.labels.clone()], index, "labels_refs")?;
        for e in &ts.exemplars {
            pairs(
                &exemplar_refs[e.labels.clone()],
                index,
                "exemplar labels_refs",
            )?;
        }
        let help = symbol(ts.metadata.help_ref, index, "metadata help_ref")?;
        let unit = symbol(ts.metadata.unit_ref, index, "metadata unit_ref")?;

        let first_label = write.labels.len();
        let mut name = "";
        for pair in refs[ts.labels.clone()].chunks_exact(2) {
            let (n, v) = (symbols[pair[0] as usize], symbols[pair[1] as usize]);
            if n == METRIC_NAME {
                name = v;
            }
            write.labels.push(RawLabel {
                name: n.as_bytes(),
                value: v.as_bytes(),
            });
        }
        if ts.metadata != RawMetadata::default() {
            let family = family_name(name, ts.metadata.r#type);
            if !family.is_empty() && families.insert((family, ts.metadata.r#type, help, unit)) {
                write.metadata.push(proto::MetricMetadata {
                    r#type: ts.metadata.r#type,
                    metric_family_name: family.to_string(),
                    help: help.to_string(),
                    unit: unit.to_string(),
                });
            }
        }
        let (samples, created_zeros) =
            with_created_zeros(ts.samples, &ts.starts, ts.created_timestamp);
        let exemplars = ts
            .exemplars
            .iter()
            .map(|e| {
                let first = write.exemplar_labels.len();
                let pairs = exemplar_refs[e.labels.clone()].chunks_exact(2);
                write.exemplar_labels.extend(pairs.map(label));
                RawExemplar {
                    labels: first..write.exemplar_labels.len(),
                    value: e.value,
                    timestamp: e.timestamp,
                }
            })
            .collect();
        write.series.push(RawSeries {
            labels: first_label..write.labels.len(),
            samples,
            created_zeros,
            exemplars,
            histograms: ts.histograms,
        });
    }
    Ok(write)
}

/// The metric family a series belongs to, for the metadata API: its name without the
/// suffix its type gives the family's component series (`_bucket`, `_count`, `_sum` of a
/// histogram or summary, `_gcount`, `_gsum` of a gauge histogram). A counter keeps its
/// name, as Prometheus's scrape names the family of a text-format counter.
fn family_name(name: &str, metric_type: i32) -> &str {
    let suffixes: &[&str] = match proto::MetricType::try_from(metric_type) {
        Ok(proto::MetricType::Histogram) => &["_bucket", "_count", "_sum"],
        Ok(proto::MetricType::Summary) => &["_count", "_sum"],
        Ok(proto::MetricType::Gaugehistogram) => &["_bucket", "_gcount", "_gsum"],
        _ => &[],
    };
    suffixes
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .filter(|family| !family.is_empty())
        .unwrap_or(name)
}

/// The samples with client values made plain (`model::plain_value`) and a created-zero
/// request before each sample whose start timestamp (or, for a series sent with the
/// older series-level created timestamp, the series' first sample) is earlier than it,
/// as Prometheus's receiver with `created-timestamp-zero-ingestion` does. A zero
/// timestamp means "not sent". Returns the samples and how many zero requests were added.
fn with_created_zeros(
    mut samples: Vec<Sample>,
    starts: &[(i64, i64)],
    created_timestamp: i64,
) -> (Vec<Sample>, usize) {
    for s in &mut samples {
        s.v = model::plain_value(s.v);
    }
    let sent = samples.len();
    let mut zeros: Vec<i64> = starts
        .iter()
        .filter(|&&(start, t)| t != 0 && start < t)
        .map(|&(start, _)| start)
        .collect();
    if created_timestamp != 0 && starts.is_empty() {
        if let Some(first) = samples.iter().map(|s| s.t).min() {
            if first != 0 && created_timestamp < first {
                zeros.push(created_timestamp);
            }
        }
    }
    zeros.sort_unstable();
    zeros.dedup();
    samples.extend(
        zeros
            .into_iter()
            .map(|t| Sample::new(t, model::created_zero())),
    );
    let added = samples.len() - sent;
    (samples, added)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn request() -> write_v2::Request {
        let mut symbols = write_v2::SymbolTable::default();
        let labels = symbols.symbolize_labels([("__name__", "http_requests_total"), ("job", "a")]);
        let exemplar = symbols.symbolize_labels([("trace_id", "abc")]);
        let help = symbols.symbolize("Requests.");
        write_v2::Request {
            timeseries: vec![write_v2::TimeSeries {
                labels_refs: labels,
                samples: vec![
                    write_v2::Sample {
                        value: 3.0,
                        timestamp: 2_000,
                        start_timestamp: 1_000,
                    },
                    write_v2::Sample {
                        value: 5.0,
                        timestamp: 3_000,
                        start_timestamp: 1_000,
                    },
                ],
                exemplars: vec![write_v2::Exemplar {
                    labels_refs: exemplar,
                    value: 1.0,
                    timestamp: 2_000,
                }],
                metadata: Some(write_v2::Metadata {
                    r#type: proto::MetricType::Counter as i32,
                    help_ref: help,
                    unit_ref: 0,
                }),
                ..Default::default()
            }],
            symbols: symbols.into_symbols(),
        }
    }

    #[test]
    fn decodes_what_prost_encodes() {
        let request = request();
        let body = request.encode_to_vec();
        let ours = decode_request(&body).unwrap();
        assert_eq!(ours, from_reference(&request));
        assert_eq!(ours.series[0].starts, vec![(1_000, 2_000), (1_000, 3_000)]);
        assert_eq!(ours.series[0].exemplars.len(), 1);
    }

    #[test]
    fn unpacked_and_split_label_refs_decode_like_prost() {
        // TimeSeries{labels_refs: 1 (unpacked), [2] (packed)} inside Request.timeseries.
        let series: &[u8] = &[0x08, 0x01, 0x0a, 0x01, 0x02];
        let mut body = vec![0x2a, series.len() as u8];
        body.extend_from_slice(series);
        let reference = write_v2::Request::decode(body.as_slice()).unwrap();
        assert_eq!(reference.timeseries[0].labels_refs, vec![1, 2]);
        assert_eq!(decode_request(&body).unwrap(), from_reference(&reference));
        // A packed run whose last varint runs past its length.
        let bad: &[u8] = &[0x2a, 0x04, 0x0a, 0x01, 0x80, 0x01];
        assert!(write_v2::Request::decode(bad).is_err());
        assert!(decode_request(bad).is_err());
    }

    #[test]
    fn symbols_are_checked_for_utf8_and_metadata_merges() {
        let bad: &[u8] = &[0x22, 0x01, 0xff];
        assert!(write_v2::Request::decode(bad).is_err());
        assert!(decode_request(bad).unwrap_err().is_utf8());
        // Two metadata fields: {type: 1} then {help_ref: 2} merge into one.
        let series: &[u8] = &[0x2a, 0x02, 0x08, 0x01, 0x2a, 0x02, 0x18, 0x02];
        let mut body = vec![0x2a, series.len() as u8];
        body.extend_from_slice(series);
        let reference = write_v2::Request::decode(body.as_slice()).unwrap();
        let ours = decode_request(&body).unwrap();
        assert_eq!(ours, from_reference(&reference));
        assert_eq!(
            ours.series[0].metadata,
            RawMetadata {
                r#type: 1,
                help_ref: 2,
                unit_ref: 0
            }
        );
    }

    #[test]
    fn resolves_labels_metadata_and_created_zeros() {
        let body = request().encode_to_vec();
        let write = into_raw_write(decode_request(&body).unwrap()).unwrap();
        let series = &write.series[0];
        let labels: Vec<_> = write.labels_of(series).to_vec();
        assert_eq!(labels[0].name, b"__name__");
        assert_eq!(labels[1].value, b"a");
        assert_eq!(series.created_zeros, 1);
        assert_eq!(series.samples.len(), 3);
        assert!(model::is_created_zero(series.samples[2].v));
        assert_eq!(series.samples[2].t, 1_000);
        assert_eq!(write.metadata.len(), 1);
        assert_eq!(write.metadata[0].metric_family_name, "http_requests_total");
        assert_eq!(write.metadata[0].help, "Requests.");
    }

    fn malformed_message(request: write_v2::Request) -> String {
        let body = request.encode_to_vec();
        let err = into_raw_write(decode_request(&body).unwrap()).unwrap_err();
        assert_eq!(err.reason, RejectReason::InvalidSymbolRefs);
        err.message
    }

    #[test]
    fn malformed_references_are_refused() {
        let mut r = request();
        r.symbols[0] = "x".into();
        assert!(malformed_message(r).contains("symbols[0]"));
        let mut r = request();
        r.timeseries[0].labels_refs.pop();
        assert!(malformed_message(r).contains("odd number"));
        let mut r = request();
        r.timeseries[0].labels_refs[3] = 99;
        assert!(malformed_message(r).contains("reference 99"));
        let mut r = request();
        r.timeseries[0].exemplars[0].labels_refs[0] = 99;
        assert!(malformed_message(r).contains("exemplar"));
        let mut r = request();
        r.timeseries[0].metadata.as_mut().unwrap().unit_ref = 99;
        assert!(malformed_message(r).contains("unit_ref"));
    }

    #[test]
    fn created_zero_rules() {
        let s = |t: i64, v: f64| Sample::new(t, v);
        // Start timestamps: one zero per distinct start before its sample.
        let (got, added) = with_created_zeros(
            vec![s(20, 1.0), s(30, 2.0), s(40, 1.0)],
            &[(10, 20), (10, 30), (35, 40)],
            0,
        );
        assert_eq!(added, 2);
        let zeros: Vec<i64> = got
            .iter()
            .filter(|s| model::is_created_zero(s.v))
            .map(|s| s.t)
            .collect();
        assert_eq!(zeros, vec![10, 35]);
        // Not before its sample, or a zero sample time: nothing.
        assert_eq!(with_created_zeros(vec![s(20, 1.0)], &[(20, 20)], 0).1, 0);
        assert_eq!(with_created_zeros(vec![s(0, 1.0)], &[(-5, 0)], 0).1, 0);
        // The series-level created timestamp applies before the first sample.
        let (got, added) = with_created_zeros(vec![s(30, 1.0), s(20, 1.0)], &[], 5);
        assert_eq!((added, got[2].t), (1, 5));
        assert_eq!(with_created_zeros(vec![s(20, 1.0)], &[], 25).1, 0);
        // A client's reserved bits become a plain NaN.
        let (got, _) = with_created_zeros(vec![s(1, model::created_zero())], &[], 0);
        assert!(got[0].v.is_nan() && !model::is_created_zero(got[0].v));
    }

    #[test]
    fn family_names() {
        let h = proto::MetricType::Histogram as i32;
        assert_eq!(family_name("rpc_seconds_bucket", h), "rpc_seconds");
        assert_eq!(family_name("rpc_seconds_count", h), "rpc_seconds");
        assert_eq!(family_name("_bucket", h), "_bucket");
        let c = proto::MetricType::Counter as i32;
        assert_eq!(family_name("requests_total", c), "requests_total");
        let s = proto::MetricType::Summary as i32;
        assert_eq!(family_name("rpc_quantiles", s), "rpc_quantiles");
    }
}
