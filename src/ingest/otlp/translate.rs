//! OTLP metrics to remote-write series, as Prometheus 3.x's OTLP receiver translates them
//! with its default settings (ADR 0021). Calls `proto` and `naming`.
//!
//! - Names: `naming` (unit and type suffixes, underscore escaping). Data point attributes
//!   become labels (sanitized; attributes colliding after sanitization are joined with
//!   `;` in key order); an attribute named `__name__` is ignored.
//! - Resource: `service.namespace/service.name` becomes `job`, `service.instance.id`
//!   `instance` (overriding data point attributes of those names); the other resource
//!   attributes go into a `target_info` series of value 1 with `job`/`instance`, written at
//!   the resource's earliest and latest point time and every 2.5 min (half the default
//!   lookback) between, at most `MAX_TARGET_INFO_SAMPLES` per resource. Scope name,
//!   version and attributes are not labels (Prometheus's `promote_scope_metadata` is off by
//!   default).
//! - Gauges and non-monotonic sums are gauges; cumulative monotonic sums are counters
//!   (`_total`); explicit-bucket histograms become classic ones (`_bucket{le}` cumulative,
//!   `+Inf` = count, `_sum` when present, `_count`); summaries `{quantile}`, `_sum`,
//!   `_count`. A point flagged "no recorded value" is written as staleness markers.
//! - Dropped and counted per reason (the rest of the request is stored; the answer is a
//!   partial success naming them): sums and histograms of delta or unspecified
//!   temporality (Prometheus accepts delta only behind a feature flag), exponential
//!   histograms (they become native histograms in Prometheus; Timbala has none yet),
//!   metrics whose name normalizes to nothing, points with an attribute key that does.
//! - Exemplars are counted and dropped. A metric without data has no points to store.
//!
//! The output is bounded: every label set written costs its bytes against a budget, so
//! a small request of many histogram buckets times many attributes cannot expand into
//! gigabytes of labels.

use std::collections::BTreeMap;

use base64::Engine as _;

use super::naming::{self, NamingKind};
use crate::ingest::{IngestError, RejectReason};
use crate::model::stale_nan;
use crate::proto::{self, otlp};

/// Why data points were dropped. Each maps to one `reason` label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Sum or histogram with delta temporality.
    DeltaTemporality,
    /// Sum or histogram whose temporality is unspecified (or unknown).
    UnspecifiedTemporality,
    /// Exponential histograms need native histograms, which Timbala does not store yet.
    ExponentialHistogram,
    /// The metric name normalizes to an empty or underscore-only name.
    InvalidMetricName,
    /// An attribute key normalizes to an empty or underscore-only label name.
    InvalidAttributeKey,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::DeltaTemporality,
        DropReason::UnspecifiedTemporality,
        DropReason::ExponentialHistogram,
        DropReason::InvalidMetricName,
        DropReason::InvalidAttributeKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::DeltaTemporality => "delta_temporality",
            DropReason::UnspecifiedTemporality => "unspecified_temporality",
            DropReason::ExponentialHistogram => "exponential_histogram",
            DropReason::InvalidMetricName => "invalid_metric_name",
            DropReason::InvalidAttributeKey => "invalid_attribute_key",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Data points dropped while translating, by reason, with the first one described.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DroppedPoints {
    pub counts: [u64; DropReason::ALL.len()],
    pub first: Option<String>,
}

impl DroppedPoints {
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn add(&mut self, reason: DropReason, points: u64, describe: impl FnOnce() -> String) {
        if points == 0 {
            return;
        }
        self.counts[reason.index()] += points;
        if self.first.is_none() {
            self.first = Some(describe());
        }
    }

    /// "3 data points rejected (delta_temporality: 3); first: ..." for the client.
    pub fn describe(&self) -> String {
        let by_reason: Vec<String> = DropReason::ALL
            .iter()
            .zip(self.counts)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{}: {n}", r.as_str()))
            .collect();
        let mut message = format!(
            "{} data points rejected ({})",
            self.total(),
            by_reason.join(", ")
        );
        if let Some(first) = &self.first {
            message.push_str("; first: ");
            message.push_str(first);
        }
        message
    }
}

/// An OTLP request as remote write would have carried it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Translated {
    /// Labels sorted and unique per series, ready for the remote-write validation.
    pub request: proto::WriteRequest,
    /// Data points in the request.
    pub data_points: u64,
    pub dropped: DroppedPoints,
    pub exemplars: u64,
}

/// Half of Prometheus's default lookback delta (5m): `target_info` is written this often
/// between a resource's first and last point, so a query at any time in between finds it.
const TARGET_INFO_INTERVAL_MS: i64 = 150_000;
/// Most `target_info` samples per resource: a hostile span (a point at 1970 and one now)
/// must not become millions of samples. 64 intervals are 2 h 40 min, far longer than an
/// export interval.
const MAX_TARGET_INFO_SAMPLES: i64 = 64;
const TARGET_INFO: &str = "target_info";
const SERVICE_NAME: &str = "service.name";
const SERVICE_NAMESPACE: &str = "service.namespace";
const SERVICE_INSTANCE_ID: &str = "service.instance.id";
/// Cost of a sample beyond its labels, in budget bytes.
const SAMPLE_COST: usize = 16;

/// Translates one request. `max_output_bytes` bounds the labels and samples produced
/// (413 `too_large` above).
pub fn translate(
    request: otlp::ExportMetricsServiceRequest,
    max_output_bytes: usize,
) -> Result<Translated, IngestError> {
    let mut translator = Translator {
        series: BTreeMap::new(),
        metadata: BTreeMap::new(),
        budget: max_output_bytes,
        out: Translated::default(),
    };
    for resource_metrics in request.resource_metrics {
        translator.resource(resource_metrics)?;
    }
    Ok(translator.finish())
}

type LabelSet = BTreeMap<String, String>;

/// `job` and `instance` of one resource.
#[derive(Default)]
struct ResourceIdentity {
    job: Option<String>,
    instance: Option<String>,
}

impl ResourceIdentity {
    fn of(attributes: &[otlp::KeyValue]) -> Self {
        let find = |key: &str| {
            attributes
                .iter()
                .find(|kv| kv.key == key)
                .map(|kv| value_text(kv.value.as_ref()))
        };
        let job = find(SERVICE_NAME).map(|name| match find(SERVICE_NAMESPACE) {
            Some(namespace) => format!("{namespace}/{name}"),
            None => name,
        });
        ResourceIdentity {
            job,
            instance: find(SERVICE_INSTANCE_ID),
        }
    }
}

struct Translator {
    series: BTreeMap<Vec<(String, String)>, Vec<proto::Sample>>,
    metadata: BTreeMap<String, proto::MetricMetadata>,
    budget: usize,
    out: Translated,
}

impl Translator {
    fn resource(&mut self, resource_metrics: otlp::ResourceMetrics) -> Result<(), IngestError> {
        let attributes = resource_metrics
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default();
        let identity = ResourceIdentity::of(&attributes);
        let mut span: Option<(i64, i64)> = None;
        for scope_metrics in resource_metrics.scope_metrics {
            for metric in scope_metrics.metrics {
                self.metric(metric, &identity, &mut span)?;
            }
        }
        if let Some((earliest, latest)) = span {
            self.target_info(&attributes, &identity, earliest, latest)?;
        }
        Ok(())
    }

    fn metric(
        &mut self,
        metric: otlp::Metric,
        identity: &ResourceIdentity,
        span: &mut Option<(i64, i64)>,
    ) -> Result<(), IngestError> {
        use otlp::MetricData;
        let Some(data) = metric.data else {
            return Ok(());
        };
        let points = match &data {
            MetricData::Gauge(g) => g.data_points.len(),
            MetricData::Sum(s) => s.data_points.len(),
            MetricData::Histogram(h) => h.data_points.len(),
            MetricData::ExponentialHistogram(h) => h.data_points.len(),
            MetricData::Summary(s) => s.data_points.len(),
        } as u64;
        self.out.data_points += points;
        let name = &metric.name;
        let temporality = match &data {
            MetricData::Sum(s) => Some(s.aggregation_temporality),
            MetricData::Histogram(h) => Some(h.aggregation_temporality),
            MetricData::ExponentialHistogram(h) => Some(h.aggregation_temporality),
            MetricData::Gauge(_) | MetricData::Summary(_) => None,
        };
        match temporality.map(otlp::AggregationTemporality::try_from) {
            None | Some(Ok(otlp::AggregationTemporality::Cumulative)) => {}
            Some(Ok(otlp::AggregationTemporality::Delta)) => {
                self.out.dropped.add(DropReason::DeltaTemporality, points, || {
                    format!(
                        "metric {name:?}: delta temporality is not supported; configure the \
                         exporter for cumulative temporality (Prometheus refuses delta by default too)"
                    )
                });
                return Ok(());
            }
            Some(_) => {
                self.out
                    .dropped
                    .add(DropReason::UnspecifiedTemporality, points, || {
                        format!(
                            "metric {name:?}: aggregation temporality is unspecified; only \
                             cumulative is accepted"
                        )
                    });
                return Ok(());
            }
        }
        let (kind, metric_type) = match &data {
            MetricData::Gauge(_) => (NamingKind::Gauge, proto::MetricType::Gauge),
            MetricData::Sum(s) if s.is_monotonic => {
                (NamingKind::MonotonicCounter, proto::MetricType::Counter)
            }
            MetricData::Sum(_) => (NamingKind::NonMonotonicCounter, proto::MetricType::Gauge),
            MetricData::Histogram(_) => (NamingKind::Histogram, proto::MetricType::Histogram),
            MetricData::Summary(_) => (NamingKind::Summary, proto::MetricType::Summary),
            MetricData::ExponentialHistogram(_) => {
                self.out
                    .dropped
                    .add(DropReason::ExponentialHistogram, points, || {
                        format!(
                            "metric {name:?}: exponential histograms are not supported (they need \
                             native histograms, which Timbala does not store yet); configure the \
                             exporter's histogram aggregation as explicit buckets"
                        )
                    });
                return Ok(());
            }
        };
        let family = match naming::metric_name(name, &metric.unit, kind) {
            Ok(family) => family,
            Err(problem) => {
                self.out
                    .dropped
                    .add(DropReason::InvalidMetricName, points, || problem);
                return Ok(());
            }
        };
        self.metadata
            .entry(family.clone())
            .or_insert_with(|| proto::MetricMetadata {
                r#type: metric_type as i32,
                metric_family_name: family.clone(),
                help: metric.description.clone(),
                unit: naming::unit_name(&metric.unit),
            });
        let mut emitter = PointEmitter {
            translator: self,
            family: &family,
            identity,
            span,
        };
        match data {
            MetricData::Gauge(otlp::Gauge { data_points })
            | MetricData::Sum(otlp::Sum { data_points, .. }) => {
                for point in &data_points {
                    emitter.number(point)?;
                }
            }
            MetricData::Histogram(h) => {
                for point in &h.data_points {
                    emitter.histogram(point)?;
                }
            }
            MetricData::Summary(s) => {
                for point in &s.data_points {
                    emitter.summary(point)?;
                }
            }
            MetricData::ExponentialHistogram(_) => unreachable!("refused above"),
        }
        Ok(())
    }

    fn target_info(
        &mut self,
        attributes: &[otlp::KeyValue],
        identity: &ResourceIdentity,
        earliest: i64,
        latest: i64,
    ) -> Result<(), IngestError> {
        let descriptive: Vec<&otlp::KeyValue> = attributes
            .iter()
            .filter(|kv| {
                ![SERVICE_NAME, SERVICE_NAMESPACE, SERVICE_INSTANCE_ID].contains(&kv.key.as_str())
            })
            .collect();
        if descriptive.is_empty() {
            return Ok(()); // only job and instance: target_info would say nothing
        }
        // A resource attribute that cannot be a label name leaves the resource without
        // target_info; its points were stored (as in Prometheus, it is no data point).
        let Ok(labels) = labels_of(descriptive.into_iter(), identity) else {
            return Ok(());
        };
        if !labels.contains_key("job") && !labels.contains_key("instance") {
            return Ok(());
        }
        let steps = (latest - earliest) / TARGET_INFO_INTERVAL_MS;
        let first_step = (steps - MAX_TARGET_INFO_SAMPLES).max(0);
        let mut t = earliest + first_step * TARGET_INFO_INTERVAL_MS;
        while t < latest {
            self.push(&labels, TARGET_INFO, None, t, 1.0)?;
            t += TARGET_INFO_INTERVAL_MS;
        }
        self.push(&labels, TARGET_INFO, None, latest, 1.0)
    }

    /// Adds one sample to the series `labels` + `__name__=name` (+ `extra`).
    fn push(
        &mut self,
        labels: &LabelSet,
        name: &str,
        extra: Option<(&str, String)>,
        t: i64,
        v: f64,
    ) -> Result<(), IngestError> {
        let mut set = labels.clone();
        if let Some((label, value)) = extra {
            set.insert(label.to_string(), value);
        }
        set.insert(crate::model::METRIC_NAME.to_string(), name.to_string());
        let cost = SAMPLE_COST + set.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
        self.budget = self.budget.checked_sub(cost).ok_or_else(|| {
            IngestError::new(
                RejectReason::TooLarge,
                "the OTLP request translates into more series data than the decompressed \
                 body limit allows; send smaller batches",
            )
        })?;
        self.series
            .entry(set.into_iter().collect())
            .or_default()
            .push(proto::Sample {
                value: v,
                timestamp: t,
            });
        Ok(())
    }

    fn finish(mut self) -> Translated {
        self.out.request.timeseries = self
            .series
            .into_iter()
            .map(|(labels, mut samples)| {
                // target_info written by two resources of one identity, or a point sent
                // twice: identical samples collapse, as Prometheus deduplicates them.
                samples.sort_by_key(|s| s.timestamp);
                samples.dedup_by(|a, b| {
                    a.timestamp == b.timestamp && a.value.to_bits() == b.value.to_bits()
                });
                proto::TimeSeries {
                    labels: labels
                        .into_iter()
                        .map(|(name, value)| proto::Label { name, value })
                        .collect(),
                    samples,
                    ..Default::default()
                }
            })
            .collect();
        self.out.request.metadata = self.metadata.into_values().collect();
        self.out
    }
}

/// Writes the points of one metric family.
struct PointEmitter<'a> {
    translator: &'a mut Translator,
    family: &'a str,
    identity: &'a ResourceIdentity,
    span: &'a mut Option<(i64, i64)>,
}

impl PointEmitter<'_> {
    /// The point's labels (None when dropped: an attribute key cannot be a label name)
    /// and its time in milliseconds.
    fn start(
        &mut self,
        attributes: &[otlp::KeyValue],
        time_unix_nano: u64,
    ) -> Option<(LabelSet, i64)> {
        let labels = match labels_of(
            attributes
                .iter()
                .filter(|kv| kv.key != crate::model::METRIC_NAME),
            self.identity,
        ) {
            Ok(labels) => labels,
            Err(problem) => {
                let family = self.family;
                self.translator
                    .out
                    .dropped
                    .add(DropReason::InvalidAttributeKey, 1, || {
                        format!("a point of {family:?}: {problem}")
                    });
                return None;
            }
        };
        let t = (time_unix_nano / 1_000_000) as i64;
        *self.span = Some(match *self.span {
            Some((earliest, latest)) => (earliest.min(t), latest.max(t)),
            None => (t, t),
        });
        Some((labels, t))
    }

    fn push(
        &mut self,
        labels: &LabelSet,
        suffix: &str,
        extra: Option<(&str, String)>,
        t: i64,
        v: f64,
    ) -> Result<(), IngestError> {
        let name = format!("{}{suffix}", self.family);
        self.translator.push(labels, &name, extra, t, v)
    }

    fn number(&mut self, point: &otlp::NumberDataPoint) -> Result<(), IngestError> {
        self.translator.out.exemplars += point.exemplars.len() as u64;
        let Some((labels, t)) = self.start(&point.attributes, point.time_unix_nano) else {
            return Ok(());
        };
        let value = match point.value {
            Some(otlp::NumberValue::AsDouble(v)) => v,
            Some(otlp::NumberValue::AsInt(v)) => v as f64,
            None => 0.0,
        };
        self.push(&labels, "", None, t, recorded(point.flags, value))
    }

    fn histogram(&mut self, point: &otlp::HistogramDataPoint) -> Result<(), IngestError> {
        self.translator.out.exemplars += point.exemplars.len() as u64;
        let Some((labels, t)) = self.start(&point.attributes, point.time_unix_nano) else {
            return Ok(());
        };
        let flags = point.flags;
        if let Some(sum) = point.sum {
            self.push(&labels, "_sum", None, t, recorded(flags, sum))?;
        }
        let count = recorded(flags, point.count as f64);
        self.push(&labels, "_count", None, t, count)?;
        let mut cumulative: u64 = 0;
        for (bound, n) in point.explicit_bounds.iter().zip(&point.bucket_counts) {
            cumulative = cumulative.saturating_add(*n);
            let le = Some(("le", float_label(*bound)));
            self.push(
                &labels,
                "_bucket",
                le,
                t,
                recorded(flags, cumulative as f64),
            )?;
        }
        self.push(&labels, "_bucket", Some(("le", "+Inf".into())), t, count)
    }

    fn summary(&mut self, point: &otlp::SummaryDataPoint) -> Result<(), IngestError> {
        let Some((labels, t)) = self.start(&point.attributes, point.time_unix_nano) else {
            return Ok(());
        };
        let flags = point.flags;
        self.push(&labels, "_sum", None, t, recorded(flags, point.sum))?;
        self.push(
            &labels,
            "_count",
            None,
            t,
            recorded(flags, point.count as f64),
        )?;
        for q in &point.quantile_values {
            let quantile = Some(("quantile", float_label(q.quantile)));
            self.push(&labels, "", quantile, t, recorded(flags, q.value))?;
        }
        Ok(())
    }
}

/// The value, or a staleness marker when the point says no value was recorded.
fn recorded(flags: u32, value: f64) -> f64 {
    if flags & otlp::FLAG_NO_RECORDED_VALUE != 0 {
        stale_nan()
    } else {
        value
    }
}

/// A float as `le` and `quantile` labels carry it (Go's `FormatFloat(v, 'f', -1, 64)`).
fn float_label(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Labels from attributes plus the resource's `job` and `instance`: keys sanitized,
/// values of colliding keys joined with `;` in key order.
fn labels_of<'a>(
    attributes: impl Iterator<Item = &'a otlp::KeyValue>,
    identity: &ResourceIdentity,
) -> Result<LabelSet, String> {
    let mut sorted: Vec<&otlp::KeyValue> = attributes.collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut labels = LabelSet::new();
    for kv in sorted {
        let name = naming::label_name(&kv.key)?;
        let value = value_text(kv.value.as_ref());
        match labels.get_mut(&name) {
            Some(existing) if !existing.is_empty() => {
                existing.push(';');
                existing.push_str(&value);
            }
            _ => {
                labels.insert(name, value);
            }
        }
    }
    if let Some(job) = &identity.job {
        labels.insert("job".into(), job.clone());
    }
    if let Some(instance) = &identity.instance {
        labels.insert("instance".into(), instance.clone());
    }
    Ok(labels)
}

/// An attribute value as label text, as OpenTelemetry's `AsString` writes it: strings
/// as they are, numbers and booleans in decimal, bytes in base64, arrays and key-value
/// lists as JSON. The nesting depth is bounded by prost's decode recursion limit.
fn value_text(value: Option<&otlp::AnyValue>) -> String {
    use otlp::Value;
    match value.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => double_text(*d),
        Some(Value::BytesValue(b)) => base64::engine::general_purpose::STANDARD.encode(b),
        Some(Value::ArrayValue(_) | Value::KvlistValue(_)) => json_of(value).to_string(),
    }
}

fn json_of(value: Option<&otlp::AnyValue>) -> serde_json::Value {
    use otlp::Value;
    use serde_json::Value as Json;
    match value.and_then(|v| v.value.as_ref()) {
        None => Json::Null,
        Some(Value::StringValue(s)) => Json::String(s.clone()),
        Some(Value::BoolValue(b)) => Json::Bool(*b),
        Some(Value::IntValue(i)) => Json::from(*i),
        Some(Value::DoubleValue(d)) => {
            serde_json::Number::from_f64(*d).map_or(Json::Null, Json::Number)
        }
        Some(Value::BytesValue(b)) => {
            Json::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Some(Value::ArrayValue(a)) => {
            Json::Array(a.values.iter().map(|v| json_of(Some(v))).collect())
        }
        Some(Value::KvlistValue(kv)) => Json::Object(
            kv.values
                .iter()
                .map(|kv| (kv.key.clone(), json_of(kv.value.as_ref())))
                .collect(),
        ),
    }
}

/// A double as JavaScript (and OpenTelemetry's Go `AsString`) writes it: shortest
/// round-trip digits, exponent form below 1e-6 and from 1e21.
fn double_text(d: f64) -> String {
    if d.is_nan() {
        return "NaN".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let abs = d.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let text = format!("{d:e}");
        match text.split_once('e') {
            Some((mantissa, exponent)) if !exponent.starts_with('-') => {
                format!("{mantissa}e+{exponent}")
            }
            _ => text,
        }
    } else {
        format!("{d}")
    }
}
