//! PromQL's functions over native histograms, with Prometheus v3.14's semantics
//! (`promql/quantile.go`, `promql/functions.go`): `histogram_quantile`,
//! `histogram_fraction`, `histogram_stddev`/`histogram_stdvar`, `histogram_count`,
//! `histogram_sum`, `histogram_avg`, the histogram part of `rate`/`increase`/`delta`
//! (Prometheus's `histogramRate`) and of `irate`/`idelta`, and the annotations these
//! raise, worded as Prometheus words them.
//!
//! Owns: those computations on one histogram or one window of histograms, and
//! `HistogramAnnotation` (the histogram annotations' text). The evaluator owns
//! selecting the samples, extrapolation and per-second scaling, and positions.
//! Calls `model::histogram`, `model::histogram_ops`, `promql::value::Annotations`
//! (to record annotations) and `promql::functions::gofmt` (Go's quoting).

use crate::model::histogram::{CounterResetHint, FloatHistogram};
use crate::model::histogram_ops::{kahan_inc, Bucket, Combined};
use crate::promql::functions::gofmt::go_quote;
use crate::promql::value::Annotations;

/// Which operation combined histograms, as annotations name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistogramOperation {
    Addition,
    Subtraction,
    Aggregation,
}

impl HistogramOperation {
    fn word(self) -> &'static str {
        match self {
            HistogramOperation::Addition => "addition",
            HistogramOperation::Subtraction => "subtraction",
            HistogramOperation::Aggregation => "aggregation",
        }
    }
}

/// An annotation raised by histogram arithmetic, with Prometheus's text (from
/// `util/annotations`; the query position Prometheus appends is the engine's to add).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistogramAnnotation {
    /// Warning `encountered a mix of histograms and floats for metric name "<name>"`:
    /// a range holds both floats and histograms where a function needs one kind.
    MixedFloatsHistograms { metric_name: String },
    /// Warning `this native histogram metric is not a counter: "<name>"`: a counter
    /// function (`rate`, `increase`, `irate`) met a gauge histogram.
    NotCounter { metric_name: String },
    /// Warning `this native histogram metric is not a gauge: "<name>"`: `delta` or
    /// `idelta` met a histogram that is not a gauge.
    NotGauge { metric_name: String },
    /// Warning `vector contains a mix of histograms with exponential and custom buckets
    /// schemas for metric name "<name>"`: the histograms cannot be combined.
    MixedExponentialCustom { metric_name: String },
    /// Info `mismatched custom buckets were reconciled during <operation>`.
    MismatchedCustomBuckets { operation: HistogramOperation },
    /// Warning `conflicting counter resets during histogram <operation>`.
    CounterResetCollision { operation: HistogramOperation },
    /// Info `input to histogram_quantile has NaN observations, result is NaN`, then
    /// ` for metric name "<name>"` when the name is not empty.
    QuantileNaNResult { metric_name: String },
    /// Info `input to histogram_quantile has NaN observations, result is skewed
    /// higher` (metric name as above).
    QuantileNaNSkew { metric_name: String },
    /// Info `input to histogram_fraction has NaN observations, which are excluded from
    /// all fractions` (metric name as above).
    FractionNaNs { metric_name: String },
}

impl HistogramAnnotation {
    /// Whether Prometheus files it under warnings (else under infos).
    pub fn is_warning(&self) -> bool {
        use HistogramAnnotation::*;
        matches!(
            self,
            MixedFloatsHistograms { .. }
                | NotCounter { .. }
                | NotGauge { .. }
                | MixedExponentialCustom { .. }
                | CounterResetCollision { .. }
        )
    }

    /// The full text, `PromQL warning: ...` or `PromQL info: ...`.
    pub fn message(&self) -> String {
        use HistogramAnnotation::*;
        /// Prometheus's `maybeAddMetricName`.
        fn for_name(text: &str, name: &str) -> String {
            if name.is_empty() {
                text.to_string()
            } else {
                format!("{text} for metric name {}", go_quote(name))
            }
        }
        let body = match self {
            MixedFloatsHistograms { metric_name } => format!(
                "encountered a mix of histograms and floats for metric name {}",
                go_quote(metric_name)
            ),
            NotCounter { metric_name } => format!(
                "this native histogram metric is not a counter: {}",
                go_quote(metric_name)
            ),
            NotGauge { metric_name } => format!(
                "this native histogram metric is not a gauge: {}",
                go_quote(metric_name)
            ),
            MixedExponentialCustom { metric_name } => format!(
                "vector contains a mix of histograms with exponential and custom buckets \
                 schemas for metric name {}",
                go_quote(metric_name)
            ),
            MismatchedCustomBuckets { operation } => format!(
                "mismatched custom buckets were reconciled during {}",
                operation.word()
            ),
            CounterResetCollision { operation } => format!(
                "conflicting counter resets during histogram {}",
                operation.word()
            ),
            QuantileNaNResult { metric_name } => for_name(
                "input to histogram_quantile has NaN observations, result is NaN",
                metric_name,
            ),
            QuantileNaNSkew { metric_name } => for_name(
                "input to histogram_quantile has NaN observations, result is skewed higher",
                metric_name,
            ),
            FractionNaNs { metric_name } => for_name(
                "input to histogram_fraction has NaN observations, which are excluded from \
                 all fractions",
                metric_name,
            ),
        };
        let kind = if self.is_warning() { "warning" } else { "info" };
        format!("PromQL {kind}: {body}")
    }

    /// Adds it to the query's annotations as a warning or an info.
    pub fn record(&self, annotations: &mut Annotations) {
        if self.is_warning() {
            annotations.warn(self.message());
        } else {
            annotations.info(self.message());
        }
    }

    /// What an `add`/`sub`/`kahan_add` noticed, as the annotations Prometheus raises for
    /// `operation`: the counter-reset collision warning (which Prometheus raises for
    /// the `+`/`-` operators and aggregations, not inside functions) and the
    /// reconciled-custom-buckets info.
    pub fn from_combined(
        operation: HistogramOperation,
        combined: Combined,
    ) -> Vec<HistogramAnnotation> {
        let mut out = Vec::new();
        if combined.counter_reset_collision {
            out.push(HistogramAnnotation::CounterResetCollision { operation });
        }
        if combined.custom_bounds_reconciled {
            out.push(HistogramAnnotation::MismatchedCustomBuckets { operation });
        }
        out
    }
}

/// Prometheus's `FloatHistogram.String()`, which `count_values` uses as the label value
/// of a histogram: `{count:C, sum:S, [l,u):n, ...}` over the buckets with a count, in
/// bucket order, numbers in Go's `%g`.
pub fn histogram_text(h: &FloatHistogram) -> String {
    use crate::promql::functions::gofmt::go_g;
    let mut out = format!("{{count:{}, sum:{}", go_g(h.count), go_g(h.sum));
    for b in h.all_buckets().iter().filter(|b| b.count != 0.0) {
        out.push_str(&format!(
            ", {}{},{}{}:{}",
            if b.lower_inclusive { '[' } else { '(' },
            go_g(b.lower),
            go_g(b.upper),
            if b.upper_inclusive { ']' } else { ')' },
            go_g(b.count)
        ));
    }
    out.push('}');
    out
}

/// `histogram_count(h)`: the count of observations.
pub fn histogram_count(h: &FloatHistogram) -> f64 {
    h.count
}

/// `histogram_sum(h)`: the sum of observations.
pub fn histogram_sum(h: &FloatHistogram) -> f64 {
    h.sum
}

/// `histogram_avg(h)`: sum / count (NaN for an empty histogram, as in Prometheus).
pub fn histogram_avg(h: &FloatHistogram) -> f64 {
    h.sum / h.count
}

/// `histogram_stdvar(h)` (Prometheus's `histogramVariance`): the variance of the
/// observations estimated from the buckets, each bucket's observations taken at its
/// arithmetic mean (custom buckets), 0 (the zero bucket) or its geometric mean
/// (exponential buckets, sign kept), around sum/count; Kahan-summed.
pub fn histogram_stdvar(h: &FloatHistogram) -> f64 {
    let mean = h.sum / h.count;
    let (mut variance, mut comp) = (0.0, 0.0);
    for b in h.all_buckets().iter().filter(|b| b.count != 0.0) {
        let val = if h.uses_custom_buckets() {
            (b.upper + b.lower) / 2.0
        } else if b.lower <= 0.0 && b.upper >= 0.0 {
            0.0
        } else {
            let geometric = (b.upper * b.lower).sqrt();
            if b.upper < 0.0 {
                -geometric
            } else {
                geometric
            }
        };
        let delta = val - mean;
        (variance, comp) = kahan_inc(b.count * delta * delta, variance, comp);
    }
    (variance + comp) / h.count
}

/// `histogram_stddev(h)`: the square root of `histogram_stdvar`.
pub fn histogram_stddev(h: &FloatHistogram) -> f64 {
    histogram_stdvar(h).sqrt()
}

/// Where a rank falls when walking the buckets.
struct Found {
    bucket: Bucket,
    /// Observations counted up to and including `bucket`.
    count: f64,
    /// How many of `buckets` were walked.
    walked: usize,
}

/// Walks the buckets with a non-zero count until `rank` observations are counted.
/// Like Prometheus's loop, the bucket returned is the last one looked at (possibly
/// an empty one, or a default one when there are no buckets at all).
fn find_rank(buckets: &[Bucket], rank: f64) -> Found {
    let mut found = Found {
        bucket: Bucket {
            lower: 0.0,
            upper: 0.0,
            lower_inclusive: false,
            upper_inclusive: false,
            count: 0.0,
            index: 0,
        },
        count: 0.0,
        walked: 0,
    };
    for b in buckets {
        found.bucket = *b;
        found.walked += 1;
        if b.count == 0.0 {
            continue;
        }
        found.count += b.count;
        if found.count >= rank {
            break;
        }
    }
    found
}

/// `histogram_quantile(q, h)` for a native histogram (Prometheus's
/// `HistogramQuantile`): -Inf for q < 0, +Inf for q > 1, NaN for NaN q or an empty
/// histogram. The rank is found walking up (q < 0.5, or when the sum is NaN so NaN
/// observations may be missing from the buckets) or down; within the bucket found,
/// the value is interpolated linearly for custom buckets and the zero bucket (whose
/// lower or upper bound counts as 0 when all other buckets are on one side), and
/// exponentially otherwise. Under custom buckets, a rank in the +Inf bucket gives its
/// lower bound, and one in the first bucket its upper bound if that is at most 0.
/// The info returned, if any, is about NaN observations.
pub fn histogram_quantile(
    q: f64,
    h: &FloatHistogram,
    metric_name: &str,
) -> (f64, Option<HistogramAnnotation>) {
    if q < 0.0 {
        return (f64::NEG_INFINITY, None);
    }
    if q > 1.0 {
        return (f64::INFINITY, None);
    }
    if h.count == 0.0 || q.is_nan() {
        return (f64::NAN, None);
    }
    let forward = h.sum.is_nan() || q < 0.5;
    let (buckets, mut rank) = if forward {
        (h.all_buckets(), q * h.count)
    } else {
        (h.all_buckets_reverse(), (1.0 - q) * h.count)
    };
    let Found {
        mut bucket,
        mut count,
        walked,
    } = find_rank(&buckets, rank);
    if !h.uses_custom_buckets() && bucket.lower < 0.0 && bucket.upper > 0.0 {
        if h.negative_buckets.is_empty() && !h.positive_buckets.is_empty() {
            bucket.lower = 0.0;
        } else if h.positive_buckets.is_empty() && !h.negative_buckets.is_empty() {
            bucket.upper = 0.0;
        }
    } else if h.uses_custom_buckets() {
        if bucket.lower == f64::NEG_INFINITY {
            if bucket.upper <= 0.0 {
                return (bucket.upper, None);
            }
            bucket.lower = 0.0;
        } else if bucket.upper == f64::INFINITY {
            return (bucket.lower, None);
        }
    }
    // Rounding can count more than the histogram's count.
    if count > h.count {
        count = h.count;
    }
    if count < rank {
        // The buckets ran out before the rank: NaN observations (sum NaN), or a
        // histogram whose count exceeds its buckets.
        if h.sum.is_nan() {
            let info = HistogramAnnotation::QuantileNaNResult {
                metric_name: metric_name.to_string(),
            };
            return (f64::NAN, Some(info));
        }
        return (bucket.upper, None);
    }
    if forward {
        rank -= count - bucket.count;
    } else {
        rank = count - rank;
    }
    let mut annotation = None;
    if h.sum.is_nan() {
        // NaN observations are in the count but in no bucket.
        let total = count
            + buckets[walked..]
                .iter()
                .map(|b| b.count)
                .fold(0.0, |a, c| a + c);
        if total < h.count {
            annotation = Some(HistogramAnnotation::QuantileNaNSkew {
                metric_name: metric_name.to_string(),
            });
        }
    }
    let fraction = rank / bucket.count;
    if h.uses_custom_buckets() || (bucket.lower <= 0.0 && bucket.upper >= 0.0) {
        return (
            bucket.lower + (bucket.upper - bucket.lower) * fraction,
            annotation,
        );
    }
    // Exponential buckets are equally wide on a logarithmic scale.
    let log_lower = bucket.lower.abs().log2();
    let log_upper = bucket.upper.abs().log2();
    let value = if bucket.lower > 0.0 {
        (log_lower + (log_upper - log_lower) * fraction).exp2()
    } else {
        -(log_upper + (log_lower - log_upper) * (1.0 - fraction)).exp2()
    };
    (value, annotation)
}

/// Prometheus's `Bucket.FractionBelow`: the share of the bucket's width at or below
/// `v` (strictly inside its finite bounds), linearly or on a logarithmic scale.
fn fraction_below(b: &Bucket, v: f64, linear: bool) -> f64 {
    if linear {
        return (v - b.lower) / (b.upper - b.lower);
    }
    let log_lower = b.lower.abs().log2();
    let log_upper = b.upper.abs().log2();
    let log_v = v.abs().log2();
    if v > 0.0 {
        (log_v - log_lower) / (log_upper - log_lower)
    } else {
        1.0 - ((log_v - log_upper) / (log_lower - log_upper))
    }
}

/// `histogram_fraction(lower, upper, h)` for a native histogram (Prometheus's
/// `HistogramFraction`): the estimated share of observations in [lower, upper]; NaN
/// for an empty histogram or a NaN bound, 0 when lower >= upper. Bounds inside a
/// bucket are interpolated linearly (custom buckets, the zero bucket) or exponentially;
/// a bucket reaching -Inf contributes all or nothing. When the sum is NaN, the NaN
/// observations (counted, in no bucket) are in no fraction, and an info says so.
pub fn histogram_fraction(
    lower: f64,
    upper: f64,
    h: &FloatHistogram,
    metric_name: &str,
) -> (f64, Option<HistogramAnnotation>) {
    if h.count == 0.0 || lower.is_nan() || upper.is_nan() {
        return (f64::NAN, None);
    }
    if lower >= upper {
        return (0.0, None);
    }
    let buckets = h.all_buckets();
    let (mut count, mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    let mut walked = 0;
    for b in &buckets {
        walked += 1;
        let mut b = *b;
        count += b.count;
        let mut zero_bucket = false;
        if b.lower <= 0.0 && b.upper >= 0.0 {
            zero_bucket = true;
            if h.negative_buckets.is_empty() && !h.positive_buckets.is_empty() {
                b.lower = 0.0;
            } else if h.positive_buckets.is_empty() && !h.negative_buckets.is_empty() {
                b.upper = 0.0;
            }
        }
        let linear = h.uses_custom_buckets() || zero_bucket;
        // The rank at `v` inside this bucket. A bucket down to -Inf cannot be
        // interpolated in: it counts whole (like the +Inf bucket counts not at all).
        let rank_at = |v: f64| {
            if linear && b.lower == f64::NEG_INFINITY {
                b.count
            } else {
                rank + b.count * fraction_below(&b, v, linear)
            }
        };
        if !lower_set && b.lower >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && b.lower >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && b.lower < lower && b.upper > lower {
            lower_rank = rank_at(lower);
            lower_set = true;
        }
        if !upper_set && b.lower < upper && b.upper > upper {
            upper_rank = rank_at(upper);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank += b.count;
    }
    let mut annotation = None;
    if h.sum.is_nan() {
        count = buckets[walked..].iter().fold(count, |a, b| a + b.count);
        if count < h.count {
            annotation = Some(HistogramAnnotation::FractionNaNs {
                metric_name: metric_name.to_string(),
            });
        }
    } else {
        count = h.count;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    ((upper_rank - lower_rank) / h.count, annotation)
}

/// The histogram part of `rate`, `increase` and `delta` (Prometheus's
/// `histogramRate`): the last histogram minus the first of the window (at least two,
/// oldest first), at the lowest schema in the window, with every counter reset (for
/// counters: `is_counter`) corrected by adding back the histogram before it. A reset
/// between the first two histograms makes the first count as empty. The result is a
/// compacted gauge histogram, not yet extrapolated or scaled (the caller does that as
/// for floats, with the histograms' counts standing in for the values).
///
/// None when the histograms cannot be combined (custom buckets mixed with exponential
/// ones; the annotations then hold the warning), or with fewer than two histograms.
/// Annotations: not-a-counter for gauge histograms under a counter function,
/// not-a-gauge for `delta` over non-gauges, and reconciled custom buckets. Start
/// timestamps (Prometheus's optional reset evidence) are not used: none are stored.
pub fn histogram_rate(
    points: &[&FloatHistogram],
    is_counter: bool,
    metric_name: &str,
) -> (Option<FloatHistogram>, Vec<HistogramAnnotation>) {
    let (Some(&first), Some(&last)) = (points.first(), points.last()) else {
        return (None, Vec::new());
    };
    if points.len() < 2 {
        return (None, Vec::new());
    }
    let name = || metric_name.to_string();
    let mixed = || HistogramAnnotation::MixedExponentialCustom {
        metric_name: name(),
    };
    let mut annos = Vec::new();
    if is_counter
        && (first.counter_reset_hint == CounterResetHint::Gauge
            || last.counter_reset_hint == CounterResetHint::Gauge)
    {
        annos.push(HistogramAnnotation::NotCounter {
            metric_name: name(),
        });
    }
    // After a reset between the first two, the first one's buckets do not matter (nor
    // do their layout's incompatibilities): it counts as empty.
    let emptied;
    let mut prev = first;
    let second = points[1];
    if is_counter && second.detect_reset(first) {
        emptied = FloatHistogram {
            schema: second.schema,
            custom_values: second.custom_values.clone(),
            ..FloatHistogram::default()
        };
        prev = &emptied;
    }
    let using_custom = prev.uses_custom_buckets();
    if last.uses_custom_buckets() != using_custom {
        annos.push(mixed());
        return (None, annos);
    }
    let mut min_schema = last.schema.min(prev.schema);
    for curr in &points[1..points.len() - 1] {
        // As in Prometheus, only counters look at the schemas in between (a gauge's
        // in-between histograms play no part).
        if !is_counter {
            continue;
        }
        if curr.counter_reset_hint == CounterResetHint::Gauge {
            annos.push(HistogramAnnotation::NotCounter {
                metric_name: name(),
            });
        }
        min_schema = min_schema.min(curr.schema);
        if curr.uses_custom_buckets() != using_custom {
            // Prometheus drops the annotations gathered so far here.
            return (None, vec![mixed()]);
        }
    }
    let Ok(mut h) = last.copy_to_schema(min_schema) else {
        return (None, vec![mixed()]);
    };
    // Counter resets are handled below; a hint collision here means nothing.
    match h.sub(prev) {
        Err(_) => return (None, vec![mixed()]),
        Ok(c) if c.custom_bounds_reconciled => {
            annos.push(HistogramAnnotation::MismatchedCustomBuckets {
                operation: HistogramOperation::Subtraction,
            })
        }
        Ok(_) => {}
    }
    if is_counter {
        for &curr in &points[1..] {
            if curr.detect_reset(prev) {
                match h.add(prev) {
                    Err(_) => return (None, vec![mixed()]),
                    Ok(c) if c.custom_bounds_reconciled => {
                        annos.push(HistogramAnnotation::MismatchedCustomBuckets {
                            operation: HistogramOperation::Addition,
                        })
                    }
                    Ok(_) => {}
                }
            }
            prev = curr;
        }
    } else if first.counter_reset_hint != CounterResetHint::Gauge
        || last.counter_reset_hint != CounterResetHint::Gauge
    {
        annos.push(HistogramAnnotation::NotGauge {
            metric_name: name(),
        });
    }
    h.counter_reset_hint = CounterResetHint::Gauge;
    h.compact(0);
    (Some(h), annos)
}

/// The histogram part of `irate` (`is_rate`) and `idelta` (Prometheus's
/// `instantValue` for two histograms, `earlier` before `later`): `later - earlier`,
/// or `later` alone after a counter reset under `irate`, as a compacted gauge
/// histogram; the caller divides by the seconds between them for `irate`. None (with
/// the warning) when custom and exponential buckets meet. Annotations: not-a-counter
/// for `irate` over a gauge histogram, not-a-gauge for `idelta` over anything else,
/// reconciled custom buckets.
pub fn histogram_instant_delta(
    earlier: &FloatHistogram,
    later: &FloatHistogram,
    is_rate: bool,
    metric_name: &str,
) -> (Option<FloatHistogram>, Vec<HistogramAnnotation>) {
    let gauge = |h: &FloatHistogram| h.counter_reset_hint == CounterResetHint::Gauge;
    let mut annos = Vec::new();
    if is_rate && (gauge(later) || gauge(earlier)) {
        annos.push(HistogramAnnotation::NotCounter {
            metric_name: metric_name.to_string(),
        });
    }
    if !is_rate && (!gauge(later) || !gauge(earlier)) {
        annos.push(HistogramAnnotation::NotGauge {
            metric_name: metric_name.to_string(),
        });
    }
    let mut result = later.clone();
    if !is_rate || !later.detect_reset(earlier) {
        match result.sub(earlier) {
            Err(_) => {
                annos.push(HistogramAnnotation::MixedExponentialCustom {
                    metric_name: metric_name.to_string(),
                });
                return (None, annos);
            }
            Ok(c) if c.custom_bounds_reconciled => {
                annos.push(HistogramAnnotation::MismatchedCustomBuckets {
                    operation: HistogramOperation::Subtraction,
                })
            }
            Ok(_) => {}
        }
    }
    result.counter_reset_hint = CounterResetHint::Gauge;
    result.compact(0);
    (Some(result), annos)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::histogram::{Span, CUSTOM_BUCKETS_SCHEMA};

    /// promqltest's `{{schema:s count:c sum:s z_bucket:z z_bucket_w:w buckets:[..]
    /// n_buckets:[..]}}`: one span per side starting at bucket index 0.
    fn h(
        schema: i32,
        count: f64,
        sum: f64,
        zero: (f64, f64),
        pos: &[f64],
        neg: &[f64],
    ) -> FloatHistogram {
        let spans = |b: &[f64]| -> Arc<[Span]> {
            if b.is_empty() {
                Arc::from([])
            } else {
                vec![Span {
                    offset: 0,
                    length: b.len() as u32,
                }]
                .into()
            }
        };
        FloatHistogram {
            schema,
            count,
            sum,
            zero_threshold: zero.1,
            zero_count: zero.0,
            positive_spans: spans(pos),
            negative_spans: spans(neg),
            positive_buckets: pos.to_vec(),
            negative_buckets: neg.to_vec(),
            ..FloatHistogram::default()
        }
    }

    fn custom(bounds: &[f64], buckets: &[f64]) -> FloatHistogram {
        let count = buckets.iter().sum();
        FloatHistogram {
            schema: CUSTOM_BUCKETS_SCHEMA,
            count,
            sum: count,
            positive_spans: vec![Span {
                offset: 0,
                length: buckets.len() as u32,
            }]
            .into(),
            positive_buckets: buckets.to_vec(),
            custom_values: bounds.to_vec().into(),
            ..FloatHistogram::default()
        }
    }

    #[track_caller]
    fn close(got: f64, want: f64) {
        let ok = got == want || (got - want).abs() <= 1e-12 * want.abs().max(1e-300);
        assert!(ok, "got {got}, want {want}");
    }

    fn quantile(q: f64, hist: &FloatHistogram) -> f64 {
        let (v, anno) = histogram_quantile(q, hist, "m");
        assert_eq!(anno, None);
        v
    }

    #[test]
    // Expected values are native_histograms.test's, one of them one ulp off -SQRT_2.
    #[allow(clippy::approx_constant)]
    fn quantiles_of_native_histograms_test() {
        // native_histograms.test: histogram_quantile_1 (positive buckets, zero bucket).
        let h1 = h(
            0,
            12.0,
            100.0,
            (2.0, 0.001),
            &[2.0, 3.0, 0.0, 1.0, 4.0],
            &[],
        );
        assert_eq!(quantile(1.001, &h1), f64::INFINITY);
        assert_eq!(quantile(-1.0, &h1), f64::NEG_INFINITY);
        close(quantile(1.0, &h1), 16.0);
        close(quantile(0.99, &h1), 15.67072476139083);
        close(quantile(0.9, &h1), 12.99603834169977);
        close(quantile(0.6, &h1), 4.594793419988138);
        close(quantile(0.5, &h1), 1.5874010519681994);
        close(quantile(0.1, &h1), 0.0006);
        assert_eq!(quantile(0.0, &h1), 0.0);
        assert!(quantile(f64::NAN, &h1).is_nan());
        // histogram_quantile_2: the same mirrored to negative buckets.
        let h2 = h(
            0,
            12.0,
            100.0,
            (2.0, 0.001),
            &[],
            &[2.0, 3.0, 0.0, 1.0, 4.0],
        );
        assert_eq!(quantile(1.0, &h2), 0.0);
        close(quantile(0.99, &h2), -0.00006);
        close(quantile(0.9, &h2), -0.0006);
        close(quantile(0.5, &h2), -1.5874010519681996);
        close(quantile(0.1, &h2), -12.996038341699768);
        close(quantile(0.0, &h2), -16.0);
        // histogram_quantile_3: both sides.
        let h3 = h(
            0,
            24.0,
            100.0,
            (4.0, 0.001),
            &[2.0, 3.0, 0.0, 1.0, 4.0],
            &[2.0, 3.0, 0.0, 1.0, 4.0],
        );
        close(quantile(0.99, &h3), 15.34822590920423);
        close(quantile(0.7, &h3), 1.2030250360821164);
        close(quantile(0.55, &h3), 0.0006);
        assert_eq!(quantile(0.5, &h3), 0.0);
        close(quantile(0.45, &h3), -0.0006);
        close(quantile(0.3, &h3), -1.2030250360821169);
        close(quantile(0.01, &h3), -15.34822590920423);
        close(quantile(0.0, &h3), -16.0);
        // negative_histogram: exponential interpolation mirrored.
        let neg = h(0, 4.0, -5.0, (0.0, 0.0), &[], &[1.0, 2.0, 1.0]);
        close(quantile(0.5, &neg), -1.414213562373095);
        // An empty histogram has no quantiles.
        assert!(quantile(0.5, &h(0, 0.0, 0.0, (0.0, 0.0), &[], &[])).is_nan());
    }

    #[test]
    fn quantile_after_adding_negated_histograms() {
        // balanced_histogram: the quantile in a run of empty buckets is the lower
        // bound of the next populated one.
        let mut balanced = h(0, 4.0, 4.0, (0.0, 0.0), &[1.0, 2.0, 1.0], &[]);
        balanced
            .add(&h(0, 4.0, -4.0, (0.0, 0.0), &[], &[1.0, 2.0, 1.0]))
            .unwrap();
        assert_eq!(quantile(0.5, &balanced), 0.5);
        assert_eq!(histogram_fraction(0.0, 4.0, &balanced, "m"), (0.5, None));
    }

    #[test]
    fn quantiles_of_custom_buckets_interpolate_linearly() {
        let c = custom(&[5.0, 10.0], &[1.0, 2.0, 1.0]);
        // The first bucket counts from 0 when its bound is positive.
        close(quantile(0.125, &c), 2.5);
        close(quantile(0.5, &c), 7.5);
        // The +Inf bucket gives its lower bound.
        assert_eq!(quantile(0.99, &c), 10.0);
        // A first bucket ending at or below 0 gives its upper bound.
        let below = custom(&[-1.0, 10.0], &[2.0, 2.0]);
        assert_eq!(quantile(0.25, &below), -1.0);
    }

    #[test]
    fn quantile_with_nan_observations() {
        // Sum NaN and more counted than in the buckets: NaN observations.
        let mut nan = h(0, 5.0, f64::NAN, (0.0, 0.0), &[1.0, 2.0, 1.0], &[]);
        let (v, anno) = histogram_quantile(0.99, &nan, "m");
        assert!(v.is_nan());
        assert_eq!(
            anno.map(|a| a.message()),
            Some(
                "PromQL info: input to histogram_quantile has NaN observations, result is \
                 NaN for metric name \"m\""
                    .to_string()
            )
        );
        let (v, anno) = histogram_quantile(0.5, &nan, "");
        close(v, 1.681792830507429);
        assert_eq!(
            anno.map(|a| a.message()),
            Some(
                "PromQL info: input to histogram_quantile has NaN observations, result is \
                 skewed higher"
                    .to_string()
            )
        );
        nan.count = 4.0;
        assert_eq!(histogram_quantile(0.5, &nan, "m").1, None);
    }

    #[test]
    fn fractions() {
        let single = h(0, 4.0, 5.0, (0.0, 0.0), &[1.0, 2.0, 1.0], &[]);
        assert_eq!(histogram_fraction(1.0, 2.0, &single, "m"), (0.5, None));
        assert_eq!(histogram_fraction(0.0, 8.0, &single, "m"), (1.0, None));
        assert_eq!(histogram_fraction(2.0, 1.0, &single, "m"), (0.0, None));
        assert!(histogram_fraction(f64::NAN, 1.0, &single, "m").0.is_nan());
        // Exponential interpolation: half of (1,2] lies below sqrt(2).
        close(
            histogram_fraction(0.0, std::f64::consts::SQRT_2, &single, "m").0,
            0.5,
        );
        let zero = h(0, 1.0, 0.25, (1.0, 0.5), &[], &[]);
        assert_eq!(histogram_fraction(-0.5, 0.5, &zero, "m"), (1.0, None));
        // Linear within the zero bucket, which starts at 0 when all buckets are
        // positive.
        let with_zero = h(0, 4.0, 5.0, (2.0, 0.5), &[0.0, 2.0], &[]);
        close(histogram_fraction(0.0, 0.25, &with_zero, "m").0, 0.25);
        let negative = h(0, 4.0, -5.0, (0.0, 0.0), &[], &[1.0, 2.0, 1.0]);
        assert_eq!(histogram_fraction(-2.0, -1.0, &negative, "m"), (0.5, None));
        // Custom buckets: linear, and a bound inside the bucket down to -Inf counts
        // that whole bucket below it.
        let c = custom(&[5.0, 10.0], &[1.0, 2.0, 1.0]);
        close(histogram_fraction(5.0, 7.5, &c, "m").0, 0.25);
        let below = custom(&[-1.0, 10.0], &[2.0, 2.0]);
        close(histogram_fraction(-5.0, 10.0, &below, "m").0, 0.5);
        // NaN observations count in no fraction.
        let nan = h(0, 5.0, f64::NAN, (0.0, 0.0), &[1.0, 2.0, 1.0], &[]);
        let (v, anno) = histogram_fraction(0.0, 8.0, &nan, "m");
        assert_eq!(v, 0.8);
        assert_eq!(
            anno.unwrap().message(),
            "PromQL info: input to histogram_fraction has NaN observations, which are \
             excluded from all fractions for metric name \"m\""
        );
    }

    #[test]
    fn stddev_and_stdvar_of_native_histograms_test() {
        let one = h(
            2,
            4.0,
            10.0,
            (0.0, 0.0),
            &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0],
            &[],
        );
        close(histogram_stddev(&one), 1.0787993180043811);
        close(histogram_stdvar(&one), 1.163807968526718);
        let two = h(8, 10.0, 10.0, (0.0, 0.0), &[1.0, 2.0, 3.0, 4.0], &[]);
        close(histogram_stddev(&two), 0.0048960313898237465);
        close(histogram_stdvar(&two), 2.3971123370139447e-05);
        let mut n = vec![0.0; 18];
        for (i, c) in [
            (2, 1.0),
            (3, 1.0),
            (4, 1.0),
            (6, 1.0),
            (7, 1.0),
            (10, 3.0),
            (14, 1.0),
            (17, 1.0),
        ] {
            n[i] = c;
        }
        let four = h(0, 10.0, -112946.0, (0.0, 0.0), &[], &n);
        close(histogram_stddev(&four), 27556.344499842);
        close(histogram_stdvar(&four), 759352122.1939945);
        let five = h(
            0,
            10.0,
            -100.0,
            (0.0, 0.0),
            &[],
            &[0.0, 0.0, 0.0, 0.0, 10.0],
        );
        close(histogram_stddev(&five), 1.3137084989848);
        close(histogram_stdvar(&five), 1.725830020304794);
        let mut nan = five.clone();
        nan.sum = f64::NAN;
        assert!(histogram_stdvar(&nan).is_nan());
        let mut inf = five;
        inf.sum = f64::INFINITY;
        assert_eq!(histogram_stdvar(&inf), f64::INFINITY);
        // Custom buckets count at their midpoints: 3 here, around the mean 1.
        let c = custom(&[2.0, 4.0], &[0.0, 2.0]);
        assert_eq!(histogram_stdvar(&c), 4.0);
        assert_eq!(
            (histogram_count(&c), histogram_sum(&c), histogram_avg(&c)),
            (2.0, 2.0, 1.0)
        );
    }

    /// The histogram_rate series of native_histograms.test at 4m30s, 4m45s and 5m.
    fn rate_series() -> Vec<FloatHistogram> {
        (18..=20)
            .map(|k| {
                let k = f64::from(k);
                let b = |first: f64| [first + k, 2.0 + k, 0.0, 1.0 + k, 1.0 + k];
                h(
                    1,
                    12.0 + 9.0 * k,
                    18.4 * (k + 1.0),
                    (2.0 + k, 0.001),
                    &b(1.0),
                    &b(1.0),
                )
            })
            .collect()
    }

    #[test]
    fn rate_takes_the_difference_over_the_window() {
        let series = rate_series();
        let refs: Vec<&FloatHistogram> = series.iter().collect();
        let (got, annos) = histogram_rate(&refs, true, "histogram_rate");
        assert_eq!(annos, vec![]);
        let mut got = got.unwrap();
        assert_eq!(got.counter_reset_hint, CounterResetHint::Gauge);
        close(got.count, 18.0);
        close(got.sum, 36.8);
        close(got.zero_count, 2.0);
        // The bucket that stayed empty is compacted away.
        assert_eq!(got.positive_buckets, vec![2.0, 2.0, 2.0, 2.0]);
        assert_eq!(got.negative_buckets, vec![2.0, 2.0, 2.0, 2.0]);
        // What rate(histogram_rate[45s]) at 5m returns after extrapolating (x1.5)
        // and dividing by 45s.
        got.mul(1.5 / 45.0);
        close(got.count, 0.6);
        close(got.sum, 1.2266666666666652);
        close(got.positive_buckets[0], 0.06666666666666667);
    }

    #[test]
    fn rate_corrects_counter_resets_and_reduces_schemas() {
        let a = h(1, 10.0, 10.0, (0.0, 0.0), &[4.0, 6.0], &[]);
        let b = h(0, 12.0, 12.0, (0.0, 0.0), &[5.0, 7.0], &[]);
        // Reset: fewer observations, then growing again.
        let c = h(1, 3.0, 3.0, (0.0, 0.0), &[1.0, 2.0], &[]);
        let (got, annos) = histogram_rate(&[&a, &b, &c], true, "m");
        assert_eq!(annos, vec![]);
        let got = got.unwrap();
        // At schema 0: c - a + b = (1, 2) - (4, 6) + (5, 7).
        assert_eq!(got.schema, 0);
        assert_eq!(got.positive_buckets, vec![2.0, 3.0]);
        assert_eq!(got.count, 5.0);
        // A reset between the first two drops the first.
        let (got, _) = histogram_rate(&[&b, &c, &a], true, "m");
        let got = got.unwrap();
        assert_eq!(
            (got.schema, got.positive_buckets.clone()),
            (1, vec![4.0, 6.0])
        );
    }

    #[test]
    fn rate_warnings() {
        let mut g1 = h(0, 1.0, 1.0, (0.0, 0.0), &[1.0], &[]);
        g1.counter_reset_hint = CounterResetHint::Gauge;
        let mut g2 = h(0, 2.0, 2.0, (0.0, 0.0), &[2.0], &[]);
        g2.counter_reset_hint = CounterResetHint::Gauge;
        let (got, annos) = histogram_rate(&[&g1, &g2], true, "m");
        assert!(got.is_some());
        assert_eq!(
            annos.iter().map(|a| a.message()).collect::<Vec<_>>(),
            vec![
                "PromQL warning: this native histogram metric is not a counter: \"m\"".to_string()
            ]
        );
        let (got, annos) = histogram_rate(&[&g1, &g2], false, "m");
        assert_eq!(got.unwrap().positive_buckets, vec![1.0]);
        assert!(annos.is_empty());
        let c = custom(&[1.0], &[1.0]);
        let (got, annos) = histogram_rate(&[&g1, &g1, &c], false, "m");
        assert!(got.is_none());
        assert_eq!(
            annos[0].message(),
            "PromQL warning: vector contains a mix of histograms with exponential and \
             custom buckets schemas for metric name \"m\""
        );
        // delta over NHCB with other bounds: nhcb_metric in native_histograms.test.
        let (got, annos) = histogram_rate(
            &[&custom(&[5.0, 10.0], &[1.0]), &custom(&[5.0], &[1.0])],
            false,
            "nhcb_metric",
        );
        let got = got.unwrap();
        assert_eq!((&*got.custom_values, got.count), (&[5.0][..], 0.0));
        assert!(got.positive_buckets.is_empty());
        let messages: Vec<String> = annos.iter().map(|a| a.message()).collect();
        assert_eq!(
            messages,
            vec![
                "PromQL info: mismatched custom buckets were reconciled during subtraction",
                "PromQL warning: this native histogram metric is not a gauge: \"nhcb_metric\"",
            ]
        );
        assert!(!annos[0].is_warning() && annos[1].is_warning());
    }

    #[test]
    fn irate_and_idelta() {
        let a = h(0, 10.0, 10.0, (0.0, 0.0), &[4.0, 6.0], &[]);
        let b = h(0, 12.0, 12.0, (0.0, 0.0), &[5.0, 7.0], &[]);
        let (got, annos) = histogram_instant_delta(&a, &b, true, "m");
        assert!(annos.is_empty());
        assert_eq!(got.unwrap().positive_buckets, vec![1.0, 1.0]);
        // After a reset irate takes the later histogram alone.
        let (got, _) = histogram_instant_delta(&b, &a, true, "m");
        assert_eq!(got.unwrap().positive_buckets, vec![4.0, 6.0]);
        // idelta subtracts anyway, and warns about non-gauges.
        let (got, annos) = histogram_instant_delta(&b, &a, false, "m");
        assert_eq!(got.unwrap().positive_buckets, vec![-1.0, -1.0]);
        assert_eq!(
            annos,
            vec![HistogramAnnotation::NotGauge {
                metric_name: "m".into()
            }]
        );
        // irate sees a reset (custom after exponential) and needs no subtraction;
        // idelta cannot subtract.
        let nhcb = custom(&[1.0], &[1.0]);
        assert_eq!(
            histogram_instant_delta(&a, &nhcb, true, "m")
                .0
                .unwrap()
                .count,
            1.0
        );
        let (got, annos) = histogram_instant_delta(&a, &nhcb, false, "m");
        assert!(got.is_none());
        assert!(matches!(
            annos.last(),
            Some(HistogramAnnotation::MixedExponentialCustom { .. })
        ));
    }

    #[test]
    fn annotation_texts_and_recording() {
        let combined = Combined {
            counter_reset_collision: true,
            custom_bounds_reconciled: true,
        };
        let annos = HistogramAnnotation::from_combined(HistogramOperation::Aggregation, combined);
        let mut recorded = Annotations::default();
        for a in &annos {
            a.record(&mut recorded);
        }
        assert_eq!(
            recorded.warnings.iter().collect::<Vec<_>>(),
            vec!["PromQL warning: conflicting counter resets during histogram aggregation"]
        );
        assert_eq!(
            recorded.infos.iter().collect::<Vec<_>>(),
            vec!["PromQL info: mismatched custom buckets were reconciled during aggregation"]
        );
        let mixed = HistogramAnnotation::MixedFloatsHistograms {
            metric_name: "a\"b".into(),
        };
        assert_eq!(
            mixed.message(),
            "PromQL warning: encountered a mix of histograms and floats for metric name \"a\\\"b\""
        );
    }
}
