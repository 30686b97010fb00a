//! Remote-write validation: turns a decoded request into model series, refusing the
//! whole request when any series breaks the rules. Calls `model`, `proto`.
//!
//! Two inputs share every rule: the hand-written decoders' `RawWrite` (labels borrowed
//! from the body; the path every request takes, 1.0 and 2.0 alike, ADR 0025) and prost's
//! `proto::WriteRequest` (the reference the differential fuzz test compares it with).
//!
//! Rules (remote write 1.0 spec and Prometheus 3's receiver with UTF-8 names):
//! - a series has at least one label and a non-empty `__name__`;
//! - label names are non-empty, unique and sorted (the spec requires sorted names; an
//!   unsorted set would silently become a different series identity if we sorted it);
//! - names and values are UTF-8 (enforced while decoding);
//! - labels with an empty value are dropped: Prometheus treats them as absent;
//! - at most `MAX_LABELS_PER_SERIES` labels of at most `MAX_LABEL_BYTES_PER_SERIES` bytes
//!   together (the bounds of the node-to-node repair transfers, so every stored series can
//!   be repaired);
//! - native histograms must pass Prometheus's `Validate` (schema, spans against buckets,
//!   counts adding up); one that does not refuses the request (ADR 0030);
//! - exemplars are kept (those whose labels break Prometheus's exemplar rules are
//!   dropped and counted), also for series without samples;
//! - samples and histograms are put in time order when the sender did not (storage
//!   wants time order; the out-of-order window decides what is kept).

use std::fmt::Write as _;

use super::decode::{self, RawLabel, RawWrite};
use super::label_cache::LabelSetCache;
use super::{DecodedWrite, IngestError, RejectReason};
use crate::model::histogram::HistogramSample;
use crate::model::{
    self, HistogramSeries, Labels, MetricMetadata, Sample, Series, MAX_EXEMPLAR_LABEL_CHARS,
    MAX_LABELS_PER_SERIES, MAX_LABEL_BYTES_PER_SERIES, METRIC_NAME,
};
use crate::proto;

/// Longest label description put into an error message.
const MAX_DESCRIBED_LEN: usize = 256;

/// A label as the validation rules see it, whichever decoder produced it. Bytes: the
/// hand-written decoder's labels are checked for UTF-8 before the rules run, and the
/// rules compare bytes (a `str` sorts by its bytes too).
trait LabelPair {
    fn name(&self) -> &[u8];
    fn value(&self) -> &[u8];
}

impl LabelPair for proto::Label {
    fn name(&self) -> &[u8] {
        self.name.as_bytes()
    }
    fn value(&self) -> &[u8] {
        self.value.as_bytes()
    }
}

impl LabelPair for RawLabel<'_> {
    fn name(&self) -> &[u8] {
        self.name
    }
    fn value(&self) -> &[u8] {
        self.value
    }
}

/// Turns a client's values into storable ones (`model::plain_value`), so that no client
/// request carries a created-timestamp zero request.
pub(super) fn make_values_plain(series: &mut [Series]) {
    for s in series {
        for sample in &mut s.samples {
            sample.v = model::plain_value(sample.v);
        }
    }
}

/// Validates a request from the hand-written decoder; label sets come from `cache`.
///
/// A label set found in the cache byte for byte was checked when it was first seen (it
/// is UTF-8 and follows the label rules), so only the other sets are checked: for UTF-8
/// first, over the whole request (prost refuses non-UTF-8 while decoding, before any
/// rule runs), then for the rules, series by series.
pub(super) fn raw_into_decoded_write(
    req: RawWrite<'_>,
    cache: &LabelSetCache,
) -> Result<DecodedWrite, IngestError> {
    let known: Vec<Option<Labels>> = req
        .series
        .iter()
        .map(|ts| cache.get(req.labels_of(ts)))
        .collect();
    let unchecked = || {
        req.series
            .iter()
            .zip(&known)
            .filter(|(_, known)| known.is_none())
            .map(|(ts, _)| req.labels_of(ts))
    };
    if !unchecked().flatten().all(RawLabel::is_utf8) {
        return Err(super::utf8_error(&decode::not_utf8().to_string()));
    }
    let mut histograms = Vec::with_capacity(req.series.len());
    for (index, (ts, known)) in req.series.iter().zip(&known).enumerate() {
        check_series(index, req.labels_of(ts), known.is_none())?;
        histograms.push(histogram_samples(index, req.labels_of(ts), &ts.histograms)?);
    }
    let mut decoded = DecodedWrite {
        series: Vec::with_capacity(req.series.len()),
        metadata: req.metadata.into_iter().filter_map(into_metadata).collect(),
        ..DecodedWrite::default()
    };
    for ((ts, known), histograms) in req.series.into_iter().zip(known).zip(histograms) {
        if ts.samples.is_empty() && ts.exemplars.is_empty() && histograms.is_empty() {
            continue;
        }
        let labels = known.unwrap_or_else(|| cache.insert(&req.labels[ts.labels.clone()]));
        add_histograms(&mut decoded, &labels, histograms);
        let exemplars = ts.exemplars.iter().map(|e| {
            let labels = &req.exemplar_labels[e.labels.clone()];
            (labels, e.value, e.timestamp)
        });
        add_exemplars(&mut decoded, &labels, exemplars);
        if ts.samples.is_empty() {
            continue;
        }
        decoded.num_samples += (ts.samples.len() - ts.created_zeros) as u64;
        decoded.series.push(Series {
            labels,
            samples: time_ordered(ts.samples),
        });
    }
    Ok(decoded)
}

/// Adds the exemplars of the series `series`, in time order, to the request; an
/// exemplar whose labels break the rules (an empty or repeated name, more than
/// `MAX_EXEMPLAR_LABEL_CHARS` characters) is dropped and counted, not a reason to refuse
/// the request, as in Prometheus. Labels with an empty value are dropped.
fn add_exemplars<'l, L: LabelPair + 'l>(
    decoded: &mut DecodedWrite,
    series: &Labels,
    sent: impl Iterator<Item = (&'l [L], f64, i64)>,
) {
    let mut kept = Vec::new();
    for (labels, value, t) in sent {
        if !exemplar_labels_ok(labels) {
            decoded.exemplars_dropped += 1;
            continue;
        }
        let pairs = labels
            .iter()
            .filter(|l| !l.value().is_empty())
            .map(|l| (text(l.name()).into_owned(), text(l.value()).into_owned()));
        kept.push(model::Exemplar {
            labels: Labels::from_pairs(pairs),
            value,
            t,
        });
    }
    if kept.is_empty() {
        return;
    }
    kept.sort_by_key(|e| e.t);
    decoded.num_exemplars += kept.len() as u64;
    decoded.exemplars.push(model::SeriesExemplars {
        series: series.clone(),
        exemplars: kept,
    });
}

fn exemplar_labels_ok(labels: &[impl LabelPair]) -> bool {
    let mut chars = 0;
    for (i, label) in labels.iter().enumerate() {
        if label.name().is_empty() || labels[..i].iter().any(|l| l.name() == label.name()) {
            return false;
        }
        chars += text(label.name()).chars().count() + text(label.value()).chars().count();
    }
    chars <= MAX_EXEMPLAR_LABEL_CHARS
}

/// A series' native histograms as model samples in time order, each validated with
/// Prometheus's rules; the first invalid one refuses the request, named with its series
/// and timestamp.
fn histogram_samples(
    index: usize,
    labels: &[impl LabelPair],
    sent: &[proto::Histogram],
) -> Result<Vec<HistogramSample>, IngestError> {
    let mut samples = Vec::with_capacity(sent.len());
    for wire in sent {
        let h = wire.to_model();
        if let Err(problem) = h.validate() {
            return Err(IngestError::new(
                RejectReason::InvalidHistogram,
                format!(
                    "invalid native histogram in series #{index} {} at timestamp {}: {problem}",
                    describe(labels),
                    wire.timestamp
                ),
            ));
        }
        samples.push(HistogramSample {
            t: wire.timestamp,
            h,
        });
    }
    if !samples.is_sorted_by_key(|s| s.t) {
        samples.sort_by_key(|s| s.t);
    }
    Ok(samples)
}

fn add_histograms(decoded: &mut DecodedWrite, labels: &Labels, samples: Vec<HistogramSample>) {
    if samples.is_empty() {
        return;
    }
    decoded.num_histograms += samples.len() as u64;
    decoded.histograms.push(HistogramSeries {
        labels: labels.clone(),
        samples,
    });
}

/// Validates a request decoded by prost (the reference decoder).
pub(super) fn into_decoded_write(req: proto::WriteRequest) -> Result<DecodedWrite, IngestError> {
    let mut decoded = DecodedWrite {
        series: Vec::with_capacity(req.timeseries.len()),
        metadata: req.metadata.into_iter().filter_map(into_metadata).collect(),
        ..DecodedWrite::default()
    };
    for (index, mut ts) in req.timeseries.into_iter().enumerate() {
        check_series(index, &ts.labels, true)?;
        let histograms = histogram_samples(index, &ts.labels, &ts.histograms)?;
        let exemplars = std::mem::take(&mut ts.exemplars);
        if ts.samples.is_empty() && exemplars.is_empty() && histograms.is_empty() {
            continue;
        }
        let series = into_series(ts);
        add_histograms(&mut decoded, &series.labels, histograms);
        let sent = exemplars
            .iter()
            .map(|e| (e.labels.as_slice(), e.value, e.timestamp));
        add_exemplars(&mut decoded, &series.labels, sent);
        if series.samples.is_empty() {
            continue;
        }
        decoded.num_samples += series.samples.len() as u64;
        decoded.series.push(series);
    }
    Ok(decoded)
}

/// Refuses labels that break the rules unless `check_rules` is false (a label set known
/// to follow them).
fn check_series(
    index: usize,
    labels: &[impl LabelPair],
    check_rules: bool,
) -> Result<(), IngestError> {
    if !check_rules {
        return Ok(());
    }
    check_labels(labels).map_err(|problem| {
        IngestError::new(
            RejectReason::InvalidLabels,
            format!("invalid series #{index} {}: {problem}", describe(labels)),
        )
    })
}

fn check_labels(labels: &[impl LabelPair]) -> Result<(), String> {
    if labels.is_empty() {
        return Err("series has no labels".into());
    }
    let mut previous: Option<&[u8]> = None;
    let mut has_metric_name = false;
    for label in labels {
        let name = label.name();
        if name.is_empty() {
            return Err("label name is empty".into());
        }
        if let Some(previous) = previous {
            if name == previous {
                return Err(format!("duplicate label name {:?}", text(name)));
            }
            if name < previous {
                return Err(format!(
                    "label names are not sorted ({:?} comes before {:?}); \
                     remote write requires labels sorted by name",
                    text(previous),
                    text(name)
                ));
            }
        }
        previous = Some(name);
        has_metric_name |= name == METRIC_NAME.as_bytes() && !label.value().is_empty();
    }
    if !has_metric_name {
        return Err(format!("missing metric name (label {METRIC_NAME})"));
    }
    let stored = labels.iter().filter(|l| !l.value().is_empty());
    let (count, bytes) = stored.fold((0, 0), |(n, b), l| {
        (n + 1, b + l.name().len() + l.value().len())
    });
    if count > MAX_LABELS_PER_SERIES {
        return Err(format!(
            "{count} labels, more than the limit of {MAX_LABELS_PER_SERIES} per series"
        ));
    }
    if bytes > MAX_LABEL_BYTES_PER_SERIES {
        return Err(format!(
            "labels of {bytes} bytes, more than the limit of {MAX_LABEL_BYTES_PER_SERIES} bytes per series"
        ));
    }
    Ok(())
}

/// Label bytes for a message (they are UTF-8 by the time a rule is checked).
fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Moves a checked series into the model; its label names are sorted and unique.
fn into_series(ts: proto::TimeSeries) -> Series {
    let labels: Vec<model::Label> = ts
        .labels
        .into_iter()
        .filter(|l| !l.value.is_empty())
        .map(|l| model::Label::new(l.name, l.value))
        .collect();
    // By value: the conversion then reuses the decoded vector's allocation in place.
    let samples: Vec<Sample> = ts
        .samples
        .into_iter()
        .map(|s| Sample::new(s.timestamp, s.value))
        .collect();
    Series {
        labels: Labels::from_sorted(labels),
        samples: time_ordered(samples),
    }
}

/// The samples in time order; stable, so samples at one timestamp keep the sender's order.
fn time_ordered(mut samples: Vec<Sample>) -> Vec<Sample> {
    if !samples.is_sorted_by_key(|s| s.t) {
        samples.sort_by_key(|s| s.t);
    }
    samples
}

fn into_metadata(m: proto::MetricMetadata) -> Option<MetricMetadata> {
    if m.metric_family_name.is_empty() {
        return None;
    }
    let metric_type = proto::MetricType::try_from(m.r#type).unwrap_or(proto::MetricType::Unknown);
    Some(MetricMetadata {
        metric_family: m.metric_family_name,
        metric_type: metric_type.api_name().to_string(),
        help: m.help,
        unit: m.unit,
    })
}

/// The labels as sent, `{a="1", b="2"}`, cut to a readable length.
fn describe(labels: &[impl LabelPair]) -> String {
    let mut out = String::from("{");
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}={:?}", text(l.name()), text(l.value()));
        if out.len() > MAX_DESCRIBED_LEN {
            let mut cut = MAX_DESCRIBED_LEN;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push_str("...");
            break;
        }
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(pairs: &[(&str, &str)], samples: &[(i64, f64)]) -> proto::TimeSeries {
        proto::TimeSeries {
            labels: pairs
                .iter()
                .map(|(n, v)| proto::Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(timestamp, value)| proto::Sample { value, timestamp })
                .collect(),
            ..Default::default()
        }
    }

    /// Validates through both decoders and checks that they agree.
    fn validate(ts: Vec<proto::TimeSeries>) -> Result<DecodedWrite, IngestError> {
        let request = proto::WriteRequest {
            timeseries: ts,
            metadata: vec![],
        };
        let body = prost::Message::encode_to_vec(&request);
        let raw = super::super::decode::decode_write_request(&body).unwrap();
        let ours = raw_into_decoded_write(raw, &LabelSetCache::default());
        let reference = into_decoded_write(request);
        assert_eq!(ours, reference);
        reference
    }

    fn problem(pairs: &[(&str, &str)]) -> String {
        let err = validate(vec![series(pairs, &[(1, 1.0)])]).unwrap_err();
        assert_eq!(err.reason, RejectReason::InvalidLabels);
        err.message
    }

    #[test]
    fn label_rules() {
        assert!(problem(&[]).contains("no labels"));
        assert!(problem(&[("job", "a")]).contains("missing metric name"));
        assert!(problem(&[("__name__", ""), ("job", "a")]).contains("missing metric name"));
        assert!(problem(&[("", "x"), ("__name__", "up")]).contains("empty"));
        assert!(problem(&[("__name__", "up"), ("b", "1"), ("a", "2")]).contains("not sorted"));
        assert!(problem(&[("__name__", "up"), ("a", "1"), ("a", "2")]).contains("duplicate"));
        let names: Vec<String> = (0..MAX_LABELS_PER_SERIES)
            .map(|i| format!("l{i:03}"))
            .collect();
        let mut wide: Vec<(&str, &str)> = vec![("__name__", "up")];
        wide.extend(names.iter().map(|n| (n.as_str(), "v")));
        assert!(problem(&wide).contains("more than the limit of 256"));
        let long = "x".repeat(MAX_LABEL_BYTES_PER_SERIES);
        assert!(problem(&[("__name__", "up"), ("a", &long)]).contains("bytes per series"));
    }

    /// Encodes `ts` as a remote-write body, with `patch` applied to its bytes.
    fn decode_with(
        cache: &LabelSetCache,
        ts: Vec<proto::TimeSeries>,
        patch: impl FnOnce(&mut Vec<u8>),
    ) -> Result<DecodedWrite, IngestError> {
        let mut body = prost::Message::encode_to_vec(&proto::WriteRequest {
            timeseries: ts,
            metadata: vec![],
        });
        patch(&mut body);
        let raw = super::super::decode::decode_write_request(&body)
            .map_err(|err| super::super::wire_error(err, "prometheus.WriteRequest"))?;
        raw_into_decoded_write(raw, cache)
    }

    #[test]
    fn a_set_one_byte_away_from_a_cached_one_is_checked_again() {
        let cache = LabelSetCache::default();
        let known = series(&[("__name__", "up"), ("a", "1"), ("b", "2")], &[(1, 1.0)]);
        assert!(decode_with(&cache, vec![known.clone()], |_| {}).is_ok());
        assert!(decode_with(&cache, vec![known], |_| {}).is_ok());
        // `a` -> `c`: one byte differs and the names are no longer sorted.
        let unsorted = series(&[("__name__", "up"), ("c", "1"), ("b", "2")], &[(1, 1.0)]);
        let err = decode_with(&cache, vec![unsorted], |_| {}).unwrap_err();
        assert_eq!(err.reason, RejectReason::InvalidLabels);
        assert!(err.message.contains("not sorted"), "{}", err.message);
        // `1` -> 0xff: one byte differs and the value is not UTF-8.
        let patched = series(&[("__name__", "up"), ("a", "1"), ("b", "2")], &[(1, 1.0)]);
        let err = decode_with(&cache, vec![patched], |body| {
            let at = body.iter().position(|&b| b == b'1').unwrap();
            body[at] = 0xff;
        })
        .unwrap_err();
        assert_eq!(err.reason, RejectReason::InvalidUtf8);
    }

    #[test]
    fn a_known_label_set_does_not_excuse_what_the_cache_key_leaves_out() {
        let cache = LabelSetCache::default();
        let decode = |ts: Vec<proto::TimeSeries>| decode_with(&cache, ts, |_| {});
        let good = series(&[("__name__", "up"), ("job", "x")], &[(1, 1.0)]);
        assert!(decode(vec![good.clone()]).is_ok());
        // Same kept labels (the empty value is dropped), but a duplicate name.
        let hidden = series(
            &[("__name__", "up"), ("job", ""), ("job", "x")],
            &[(1, 1.0)],
        );
        let err = decode(vec![hidden]).unwrap_err();
        assert!(err.message.contains("duplicate"), "{}", err.message);
        // A known set still has its histograms validated.
        let mut with_histogram = good;
        with_histogram.histograms.push(proto::Histogram {
            schema: 9,
            timestamp: 1,
            ..Default::default()
        });
        let err = decode(vec![with_histogram]).unwrap_err();
        assert_eq!(err.reason, RejectReason::InvalidHistogram);
    }

    #[test]
    fn one_bad_series_refuses_the_request() {
        let err = validate(vec![
            series(&[("__name__", "ok")], &[(1, 1.0)]),
            series(&[("job", "x")], &[(1, 1.0)]),
        ])
        .unwrap_err();
        assert!(err.message.contains("#1"), "{}", err.message);
    }

    #[test]
    fn utf8_names_and_empty_values() {
        let got = validate(vec![series(
            &[("__name__", "up"), ("a", ""), ("ünïcode.name", "v")],
            &[(1, 1.0)],
        )])
        .unwrap();
        assert_eq!(
            got.series[0].labels,
            Labels::from_pairs([("__name__", "up"), ("ünïcode.name", "v")])
        );
    }

    #[test]
    fn histograms_validated_and_ordered_exemplars_kept_empty_series_skipped() {
        let histogram = |t: i64, count: u64, deltas: Vec<i64>| proto::Histogram {
            count: Some(proto::histogram::Count::Int(count)),
            sum: 1.5,
            positive_spans: vec![proto::BucketSpan {
                offset: 0,
                length: deltas.len() as u32,
            }],
            positive_deltas: deltas,
            timestamp: t,
            ..Default::default()
        };
        let mut with_histograms = series(&[("__name__", "h")], &[]);
        with_histograms.histograms = vec![histogram(20, 3, vec![1, 1]), histogram(10, 1, vec![1])];
        let got = validate(vec![with_histograms.clone()]).unwrap();
        assert_eq!(got.num_histograms, 2);
        assert!(got.series.is_empty());
        let times: Vec<i64> = got.histograms[0].samples.iter().map(|s| s.t).collect();
        assert_eq!(times, vec![10, 20]);
        // Buckets adding up to 2 under a count of 3: the whole request is refused.
        with_histograms.histograms[0] = histogram(20, 3, vec![1, 0]);
        let err = validate(vec![
            series(&[("__name__", "ok")], &[(1, 1.0)]),
            with_histograms,
        ])
        .unwrap_err();
        assert_eq!(err.reason, RejectReason::InvalidHistogram);
        assert!(
            err.message.contains("#1") && err.message.contains("timestamp 20"),
            "{}",
            err.message
        );

        let exemplar = |pairs: &[(&str, &str)], t: i64| proto::Exemplar {
            labels: series(pairs, &[]).labels,
            value: 0.5,
            timestamp: t,
        };
        let mut with_exemplar = series(&[("__name__", "c")], &[(1, 1.0)]);
        with_exemplar.exemplars = vec![
            exemplar(&[("trace_id", "b")], 9),
            exemplar(&[("trace_id", "a"), ("span", "")], 2),
            exemplar(&[("", "x")], 3),
            exemplar(&[("a", "1"), ("a", "2")], 4),
            exemplar(&[("trace_id", &"x".repeat(121))], 5),
        ];
        // Exemplars of a series without samples are kept too.
        let mut only_exemplar = series(&[("__name__", "e")], &[]);
        only_exemplar.exemplars = vec![exemplar(&[("trace_id", "ü".repeat(120).as_str())], 1)];
        let got = validate(vec![
            with_exemplar,
            series(&[("__name__", "empty")], &[]),
            only_exemplar,
        ])
        .unwrap();
        assert_eq!((got.num_exemplars, got.exemplars_dropped), (3, 3));
        assert_eq!(got.series.len(), 1);
        assert_eq!(got.num_samples, 1);
        let kept = &got.exemplars[0];
        assert_eq!(kept.series, Labels::from_pairs([("__name__", "c")]));
        let times: Vec<i64> = kept.exemplars.iter().map(|e| e.t).collect();
        assert_eq!(times, vec![2, 9]);
        assert_eq!(
            kept.exemplars[0].labels,
            Labels::from_pairs([("trace_id", "a")])
        );
        assert_eq!(
            got.exemplars[1].series,
            Labels::from_pairs([("__name__", "e")])
        );
    }

    #[test]
    fn samples_sorted_stably_and_bits_kept() {
        let stale = model::stale_nan();
        let got = validate(vec![series(
            &[("__name__", "up")],
            &[(3, 3.0), (1, stale), (2, f64::NAN), (1, 1.5)],
        )])
        .unwrap();
        let samples = &got.series[0].samples;
        assert_eq!(samples[0], Sample::new(1, stale));
        assert_eq!(samples[1], Sample::new(1, 1.5));
        assert_eq!(samples[2].t, 2);
        assert!(samples[2].v.is_nan() && !model::is_stale_nan(samples[2].v));
    }

    #[test]
    fn metadata_types_named_like_the_api() {
        let got = into_decoded_write(proto::WriteRequest {
            timeseries: vec![],
            metadata: vec![
                proto::MetricMetadata {
                    r#type: proto::MetricType::Counter as i32,
                    metric_family_name: "http_requests".into(),
                    help: "Requests.".into(),
                    unit: String::new(),
                },
                proto::MetricMetadata {
                    r#type: 99,
                    metric_family_name: String::new(),
                    help: String::new(),
                    unit: String::new(),
                },
            ],
        })
        .unwrap();
        assert_eq!(got.metadata.len(), 1);
        assert_eq!(got.metadata[0].metric_type, "counter");
    }

    #[test]
    fn long_descriptions_are_cut_on_char_boundaries() {
        let value = "é".repeat(400);
        let text = describe(&[proto::Label {
            name: "__name__".into(),
            value,
        }]);
        assert!(text.len() < MAX_DESCRIBED_LEN + 8);
        assert!(text.ends_with("...}"));
    }
}
