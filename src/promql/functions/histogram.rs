//! Histogram functions over classic histograms (float series with an `le` label) and
//! native histograms.
//!
//! Owns: histogram_quantile, histogram_quantiles and histogram_fraction over classic
//! buckets with Prometheus's rules (buckets grouped by all labels except `le`, sorted by
//! upper bound, equal bounds merged, a `+Inf` bucket required, counts forced monotonic
//! with an info annotation, interpolation inside the bucket) and over native histograms
//! (native ones first, in input order; a native histogram with the labels of a classic
//! one in the same vector is skipped, both are, with Prometheus's warning), and the
//! native-histogram-only functions (histogram_count, _sum, _avg, _stddev, _stdvar),
//! which skip float samples as Prometheus does. Calls the parent, `gofmt` and
//! `promql::histogram_fns` (the native computations).

use std::cmp::Ordering;

use super::gofmt::go_g;
use super::{annotation, FnCall, FnError, FnOutput};
use crate::model::{is_stale_nan, Labels};
use crate::promql::histogram_fns;
use crate::promql::value::{Annotations, InstantSample};

/// The label holding a classic bucket's upper bound.
const BUCKET_LABEL: &str = "le";

/// Relative difference below which adjacent bucket counts are taken as equal (float
/// noise from rate()), as Prometheus's `smallDeltaTolerance`.
const SMALL_DELTA_TOLERANCE: f64 = 1e-12;

/// histogram_count, histogram_sum, histogram_avg, histogram_stddev, histogram_stdvar:
/// defined on native histograms only; float samples are skipped, as in Prometheus.
fn native_only(
    call: &mut FnCall<'_>,
    f: fn(&crate::model::histogram::FloatHistogram) -> f64,
) -> Result<FnOutput, FnError> {
    let out = call
        .vector(0)?
        .iter()
        .filter_map(|s| {
            let h = s.h.as_ref()?;
            Some(result_sample(call.ts, s.labels.clone(), f(h)))
        })
        .collect();
    Ok(FnOutput::Vector(out))
}

pub fn histogram_count(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    native_only(call, histogram_fns::histogram_count)
}

pub fn histogram_sum(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    native_only(call, histogram_fns::histogram_sum)
}

pub fn histogram_avg(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    native_only(call, histogram_fns::histogram_avg)
}

pub fn histogram_stddev(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    native_only(call, histogram_fns::histogram_stddev)
}

pub fn histogram_stdvar(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    native_only(call, histogram_fns::histogram_stdvar)
}

/// The native histograms of `input` that no classic histogram of the same vector
/// shares labels with (those conflict: neither is evaluated, as in Prometheus, and a
/// warning says so). Returns them with the labels of the conflicting classic ones.
fn native_histograms<'v>(
    call: &mut FnCall<'_>,
    input: &'v [InstantSample],
) -> (Vec<&'v InstantSample>, Vec<Labels>) {
    let natives: Vec<&InstantSample> = input.iter().filter(|s| s.h.is_some()).collect();
    if natives.is_empty() {
        return (natives, Vec::new());
    }
    let mut kept = Vec::with_capacity(natives.len());
    let mut conflicts = Vec::new();
    for s in natives {
        let clashes = input.iter().any(|c| {
            c.h.is_none()
                && c.labels
                    .get(BUCKET_LABEL)
                    .is_some_and(|le| le.parse::<f64>().is_ok())
                && cmp_without(&c.labels, &s.labels, BUCKET_LABEL).is_eq()
        });
        if clashes {
            let name = call.annotation_metric_name(&s.labels).to_string();
            call.annotations
                .warn(annotation::mixed_classic_native(&name));
            conflicts.push(s.labels.clone());
        } else {
            kept.push(s);
        }
    }
    (kept, conflicts)
}

/// histogram_quantile(q, buckets)
pub fn histogram_quantile(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    let q = call.scalar(0)?;
    let input = call.vector(1)?;
    warn_if_invalid_quantile(q, call.annotations);
    let mut out = Vec::new();
    let (natives, conflicts) = native_histograms(call, input);
    for s in natives {
        let h = s.h.as_deref().unwrap_or_else(|| unreachable_histogram());
        let (v, info) = histogram_fns::histogram_quantile(q, h, metric_name(&s.labels));
        if let Some(info) = info {
            info.record(call.annotations);
        }
        out.push(result_sample(call.ts, s.labels.clone(), v));
    }
    for_each_histogram(call, input, |call, labels, buckets| {
        if conflicts.contains(labels) {
            return;
        }
        let v = quantile_with_info(call, labels, q, buckets);
        out.push(result_sample(call.ts, labels.clone(), v));
    });
    Ok(FnOutput::Vector(out))
}

/// histogram_quantiles(buckets, "label", q1, q2, ...): one result per quantile, told
/// apart by `label`.
pub fn histogram_quantiles(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    let input = call.vector(0)?;
    let label = call.string(1)?;
    let qs = (2..call.args.len())
        .map(|i| call.scalar(i))
        .collect::<Result<Vec<_>, _>>()?;
    for q in &qs {
        warn_if_invalid_quantile(*q, call.annotations);
    }
    // Group once, then emit quantile by quantile as Prometheus does.
    let (natives, conflicts) = native_histograms(call, input);
    let mut groups: Vec<(Labels, Vec<Bucket>)> = Vec::new();
    for_each_histogram(call, input, |_, labels, buckets| {
        if !conflicts.contains(labels) {
            groups.push((labels.clone(), buckets.to_vec()));
        }
    });
    let mut out = Vec::with_capacity((natives.len() + groups.len()) * qs.len());
    let mut scratch = Vec::new();
    for q in &qs {
        let q_label = open_metrics_float(*q);
        for s in &natives {
            let h = s.h.as_deref().unwrap_or_else(|| unreachable_histogram());
            let (v, info) = histogram_fns::histogram_quantile(*q, h, metric_name(&s.labels));
            if let Some(info) = info {
                info.record(call.annotations);
            }
            let mut labels = s.labels.clone();
            labels.set(label, &q_label);
            out.push(result_sample(call.ts, labels, v));
        }
        for (labels, buckets) in &groups {
            scratch.clear();
            scratch.extend_from_slice(buckets);
            let v = quantile_with_info(call, labels, *q, &mut scratch);
            let mut labels = labels.clone();
            labels.set(label, &q_label);
            out.push(result_sample(call.ts, labels, v));
        }
    }
    Ok(FnOutput::Vector(out))
}

/// histogram_fraction(lower, upper, buckets): the estimated share of observations
/// between the bounds.
pub fn histogram_fraction(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    let lower = call.scalar(0)?;
    let upper = call.scalar(1)?;
    let input = call.vector(2)?;
    let mut out = Vec::new();
    let (natives, conflicts) = native_histograms(call, input);
    for s in natives {
        let h = s.h.as_deref().unwrap_or_else(|| unreachable_histogram());
        let (v, info) = histogram_fns::histogram_fraction(lower, upper, h, metric_name(&s.labels));
        if let Some(info) = info {
            info.record(call.annotations);
        }
        out.push(result_sample(call.ts, s.labels.clone(), v));
    }
    for_each_histogram(call, input, |call, labels, buckets| {
        if conflicts.contains(labels) {
            return;
        }
        let v = bucket_fraction(lower, upper, buckets);
        out.push(result_sample(call.ts, labels.clone(), v));
    });
    Ok(FnOutput::Vector(out))
}

/// The metric name native-histogram annotations mention (Prometheus names it whether
/// or not names are removed late; it is empty once removed).
fn metric_name(labels: &Labels) -> &str {
    labels.metric_name().unwrap_or("")
}

/// `native_histograms` only yields samples that carry a histogram.
fn unreachable_histogram() -> &'static crate::model::histogram::FloatHistogram {
    static EMPTY: std::sync::OnceLock<crate::model::histogram::FloatHistogram> =
        std::sync::OnceLock::new();
    EMPTY.get_or_init(Default::default)
}

fn warn_if_invalid_quantile(q: f64, annotations: &mut Annotations) {
    if q.is_nan() || !(0.0..=1.0).contains(&q) {
        annotations.warn(annotation::invalid_quantile(q));
    }
}

fn result_sample(ts: i64, labels: Labels, v: f64) -> InstantSample {
    InstantSample {
        labels,
        t: ts,
        v,
        h: None,
        drop_name: true,
    }
}

/// The quantile of one histogram, with the monotonicity info when counts were fixed.
fn quantile_with_info(
    call: &mut FnCall<'_>,
    labels: &Labels,
    q: f64,
    buckets: &mut Vec<Bucket>,
) -> f64 {
    let (v, forced_monotonic) = bucket_quantile(q, buckets);
    if forced_monotonic {
        let name = call.annotation_metric_name(labels);
        call.annotations.info(annotation::forced_monotonicity(name));
    }
    v
}

/// Prometheus's `FormatOpenMetricsFloat`: Go's `%g` with ".0" added to integers.
fn open_metrics_float(f: f64) -> String {
    let mut s = go_g(f);
    if f.is_finite() && !s.contains(['.', 'e']) {
        s.push_str(".0");
    }
    s
}

/// One classic bucket: observations less than or equal to `upper`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Bucket {
    upper: f64,
    count: f64,
}

/// Groups the samples of `input` into classic histograms (same labels but `le`) and
/// calls `f` with each histogram's labels (without `le`) and buckets, in the order the
/// histograms first appear. Samples with a missing or malformed `le` are skipped with
/// a warning.
fn for_each_histogram(
    call: &mut FnCall<'_>,
    input: &[InstantSample],
    mut f: impl FnMut(&mut FnCall<'_>, &Labels, &mut Vec<Bucket>),
) {
    let mut valid: Vec<(usize, f64)> = Vec::with_capacity(input.len());
    for (i, s) in input.iter().enumerate().filter(|(_, s)| s.h.is_none()) {
        let le = s.labels.get(BUCKET_LABEL).unwrap_or("");
        match le.parse::<f64>() {
            Ok(upper) => valid.push((i, upper)),
            Err(_) => {
                let name = call.annotation_metric_name(&s.labels).to_string();
                call.annotations
                    .warn(annotation::bad_bucket_label(&name, le));
            }
        }
    }
    // Sort by histogram identity, ties by position, so each group's first element is
    // where it first appeared.
    valid.sort_by(|a, b| {
        cmp_without(&input[a.0].labels, &input[b.0].labels, BUCKET_LABEL).then(a.0.cmp(&b.0))
    });
    let mut groups: Vec<&[(usize, f64)]> = valid
        .chunk_by(|a, b| cmp_without(&input[a.0].labels, &input[b.0].labels, BUCKET_LABEL).is_eq())
        .collect();
    groups.sort_by_key(|g| g[0].0);

    let mut buckets = Vec::new();
    for group in groups {
        buckets.clear();
        buckets.extend(group.iter().map(|&(i, upper)| Bucket {
            upper,
            count: input[i].v,
        }));
        let mut labels = input[group[0].0].labels.clone();
        labels.remove(BUCKET_LABEL);
        f(call, &labels, &mut buckets);
    }
}

/// Compares two label sets as if neither had label `skip`.
fn cmp_without(a: &Labels, b: &Labels, skip: &str) -> Ordering {
    let a = a.iter().filter(|l| l.name != skip);
    let b = b.iter().filter(|l| l.name != skip);
    a.cmp(b)
}

/// Sorts by upper bound and merges buckets with equal bounds. False when there is no
/// `+Inf` bucket (the histogram is unusable).
fn normalize(buckets: &mut Vec<Bucket>) -> bool {
    buckets.sort_by(|a, b| a.upper.partial_cmp(&b.upper).unwrap_or(Ordering::Equal));
    if buckets.last().is_none_or(|b| b.upper != f64::INFINITY) {
        return false;
    }
    buckets.dedup_by(|later, kept| {
        if later.upper == kept.upper {
            kept.count += later.count;
            true
        } else {
            false
        }
    });
    true
}

/// Raises each count to at least the one before (counts are cumulative); counts within
/// the tolerance of the previous one are set equal to it. True if a real decrease had
/// to be fixed.
fn force_monotonic(buckets: &mut [Bucket]) -> bool {
    let mut forced = false;
    let Some(mut prev) = buckets.first().map(|b| b.count) else {
        return false;
    };
    for b in buckets.iter_mut().skip(1) {
        let curr = b.count;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, SMALL_DELTA_TOLERANCE) {
            b.count = prev;
            continue;
        }
        if curr < prev {
            b.count = prev;
            forced = true;
            continue;
        }
        prev = curr;
    }
    forced
}

/// Prometheus's `almost.Equal`: relative comparison, NaN equals NaN, stale markers
/// only equal each other.
fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if is_stale_nan(a) || is_stale_nan(b) {
        return is_stale_nan(a) && is_stale_nan(b);
    }
    if (a.is_nan() && b.is_nan()) || a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < epsilon * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < epsilon
}

/// Prometheus's `BucketQuantile`: the q-quantile by linear interpolation inside the
/// bucket holding the rank (the lowest bucket interpolates from 0 when its bound is
/// positive). Returns the value and whether counts had to be forced monotonic.
fn bucket_quantile(q: f64, buckets: &mut Vec<Bucket>) -> (f64, bool) {
    if q.is_nan() {
        return (f64::NAN, false);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, false);
    }
    if q > 1.0 {
        return (f64::INFINITY, false);
    }
    if !normalize(buckets) {
        return (f64::NAN, false);
    }
    let forced = force_monotonic(buckets);
    let n = buckets.len();
    if n < 2 {
        return (f64::NAN, forced);
    }
    let observations = buckets[n - 1].count;
    if observations == 0.0 {
        return (f64::NAN, forced);
    }
    let mut rank = q * observations;
    let b = buckets[..n - 1].partition_point(|b| b.count < rank);
    if b == n - 1 {
        return (buckets[n - 2].upper, forced);
    }
    if b == 0 && buckets[0].upper <= 0.0 {
        return (buckets[0].upper, forced);
    }
    let (mut start, end, mut count) = (0.0, buckets[b].upper, buckets[b].count);
    if b > 0 {
        start = buckets[b - 1].upper;
        count -= buckets[b - 1].count;
        rank -= buckets[b - 1].count;
    }
    (start + (end - start) * (rank / count), forced)
}

/// Prometheus's `BucketFraction`: the share of observations in `(lower, upper]`,
/// interpolating linearly inside buckets.
fn bucket_fraction(lower: f64, upper: f64, buckets: &mut Vec<Bucket>) -> f64 {
    if !normalize(buckets) {
        return f64::NAN;
    }
    let count = buckets[buckets.len() - 1].count;
    if count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let mut rank = 0.0;
    let mut lower_rank = None;
    let mut upper_rank = None;
    let mut bucket_start = if buckets[0].upper <= 0.0 {
        f64::NEG_INFINITY
    } else {
        0.0
    };
    for (i, b) in buckets.iter().enumerate() {
        if i > 0 {
            bucket_start = buckets[i - 1].upper;
        }
        let bucket_end = b.upper;
        let interpolate = |v: f64| {
            if bucket_start == f64::NEG_INFINITY {
                b.count
            } else {
                rank + (b.count - rank) * (v - bucket_start) / (bucket_end - bucket_start)
            }
        };
        if lower_rank.is_none() && bucket_start >= lower {
            lower_rank = Some(rank);
        }
        if upper_rank.is_none() && bucket_start >= upper {
            upper_rank = Some(rank);
        }
        if lower_rank.is_some() && upper_rank.is_some() {
            break;
        }
        if lower_rank.is_none() && bucket_start < lower && bucket_end > lower {
            lower_rank = Some(interpolate(lower));
        }
        if upper_rank.is_none() && bucket_start < upper && bucket_end > upper {
            upper_rank = Some(interpolate(upper));
        }
        if lower_rank.is_some() && upper_rank.is_some() {
            break;
        }
        rank = b.count;
    }
    let clamp = |r: Option<f64>| match r {
        Some(r) if r <= count => r,
        _ => count,
    };
    (clamp(upper_rank) - clamp(lower_rank)) / count
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::FnArg;
    use super::*;

    /// A classic histogram `name_bucket{le=...}` with extra labels.
    fn histogram(extra: &[(&str, &str)], buckets: &[(&str, f64)]) -> Vec<InstantSample> {
        buckets
            .iter()
            .map(|(le, v)| {
                let mut pairs = vec![("__name__", "h_bucket"), ("le", *le)];
                pairs.extend_from_slice(extra);
                sample(&pairs, *v)
            })
            .collect()
    }

    fn hq(q: f64, input: &[InstantSample], delayed: bool) -> (Vec<InstantSample>, Annotations) {
        let args = vec![FnArg::Scalar(q), FnArg::Vector(input)];
        let (out, ann) = eval_with("histogram_quantile", args, &[], 0, 0, delayed);
        (out_vector(out.unwrap()), ann)
    }

    // From histograms.test: testhistogram_bucket{start="positive"} at 50m:
    // le=0.1: 50, 0.2: 70, +Inf: 100 (0+5x10, 0+7x10, 0+10x10).
    fn positive() -> Vec<InstantSample> {
        histogram(
            &[("start", "positive")],
            &[("0.1", 50.0), ("0.2", 70.0), ("+Inf", 100.0)],
        )
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let cases = [
            (0.0, 0.0),
            (0.25, 0.05),
            (0.5, 0.1),
            (0.6, 0.15),
            (0.7, 0.2),
            (0.8, 0.2),
            (1.0, 0.2),
        ];
        for (q, want) in cases {
            let (out, ann) = hq(q, &positive(), false);
            assert_eq!(out.len(), 1);
            assert_close(out[0].v, want);
            assert!(ann.is_empty());
        }
    }

    #[test]
    fn output_labels_drop_le_and_name() {
        let (out, _) = hq(0.5, &positive(), false);
        assert_eq!(
            out[0].labels,
            labels(&[("__name__", "h_bucket"), ("start", "positive")])
        );
        assert!(out[0].drop_name);
    }

    #[test]
    fn negative_buckets() {
        // testhistogram_bucket{start="negative"}: le=-0.2: 1, -0.1: 2, 0.3: 2, +Inf: 3 (x10).
        let h = histogram(
            &[("start", "negative")],
            &[
                ("-0.2", 10.0),
                ("-0.1", 20.0),
                ("0.3", 20.0),
                ("+Inf", 30.0),
            ],
        );
        let (out, _) = hq(0.2, &h, false);
        assert_close(out[0].v, -0.2);
        let (out, _) = hq(0.5, &h, false);
        assert_close(out[0].v, -0.15);
        let (out, _) = hq(0.8, &h, false);
        assert_close(out[0].v, 0.3);
    }

    #[test]
    fn out_of_range_q_warns() {
        let (out, ann) = hq(-0.1, &positive(), false);
        assert_eq!(out[0].v, f64::NEG_INFINITY);
        assert!(ann
            .warnings
            .contains("PromQL warning: quantile value should be between 0 and 1, got -0.1"));
        let (out, _) = hq(1.01, &positive(), false);
        assert_eq!(out[0].v, f64::INFINITY);
        let (out, ann) = hq(f64::NAN, &positive(), false);
        assert!(out[0].v.is_nan());
        assert!(ann
            .warnings
            .contains("PromQL warning: quantile value should be between 0 and 1, got NaN"));
    }

    #[test]
    fn missing_inf_bucket_or_empty_histogram_is_nan() {
        let h = histogram(&[], &[("0.1", 1.0), ("0.2", 2.0)]);
        assert!(hq(0.5, &h, false).0[0].v.is_nan());
        let h = histogram(&[], &[("0.1", 0.0), ("+Inf", 0.0)]);
        assert!(hq(0.5, &h, false).0[0].v.is_nan());
        let h = histogram(&[], &[("+Inf", 5.0)]);
        assert!(hq(0.5, &h, false).0[0].v.is_nan());
    }

    #[test]
    fn nonmonotonic_buckets_are_fixed_with_info() {
        // histograms.test: nonmonotonic_bucket at 50m.
        let h = histogram(
            &[],
            &[
                ("0.1", 20.0),
                ("1", 10.0),
                ("10", 50.0),
                ("100", 40.0),
                ("1000", 90.0),
                ("+Inf", 80.0),
            ],
        );
        let info = "PromQL info: input to histogram_quantile needed to be fixed for \
                    monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile)";
        for (q, want) in [(0.01, 0.0045), (0.5, 8.5), (0.99, 979.75)] {
            let (out, ann) = hq(q, &h, false);
            assert_close(out[0].v, want);
            assert!(ann.infos.contains(info), "{:?}", ann.infos);
        }
        let (_, ann) = hq(0.5, &h, true);
        assert!(ann
            .infos
            .contains(&format!("{info} for metric name \"h_bucket\"")));
    }

    #[test]
    fn bad_le_is_skipped_with_warning() {
        let h = vec![sample(
            &[("__name__", "series"), ("le", "Hello World")],
            2.0,
        )];
        let (out, ann) = hq(0.8, &h, true);
        assert!(out.is_empty());
        assert!(ann.warnings.contains(
            "PromQL warning: bucket label \"le\" is missing or has a malformed value of \
             \"Hello World\" for metric name \"series\""
        ));
        let h = vec![sample(&[("__name__", "series")], 2.0)];
        let (_, ann) = hq(0.8, &h, false);
        assert!(ann.warnings.contains(
            "PromQL warning: bucket label \"le\" is missing or has a malformed value of \"\""
        ));
    }

    #[test]
    fn groups_by_all_labels_but_le_in_first_seen_order() {
        let mut input = histogram(&[("i", "b")], &[("1", 1.0), ("+Inf", 2.0)]);
        input.extend(histogram(&[("i", "a")], &[("1", 2.0), ("+Inf", 2.0)]));
        // Interleave to check grouping does not rely on adjacency.
        input.swap(1, 2);
        let (out, _) = hq(0.5, &input, false);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].labels.get("i"), Some("b"));
        assert_close(out[0].v, 1.0);
        assert_eq!(out[1].labels.get("i"), Some("a"));
        assert_close(out[1].v, 0.5);
    }

    #[test]
    fn equal_bounds_are_merged() {
        // "1" and "1.0" are the same bound: counts add up.
        let h = histogram(&[], &[("1", 1.0), ("1.0", 1.0), ("+Inf", 4.0)]);
        let (out, _) = hq(0.25, &h, false);
        assert_close(out[0].v, 0.5);
    }

    #[test]
    fn histogram_quantiles_labels_each_quantile() {
        let input = positive();
        let args = vec![
            FnArg::Vector(&input),
            FnArg::String("q"),
            FnArg::Scalar(0.5),
            FnArg::Scalar(1.0),
        ];
        let out = out_vector(eval("histogram_quantiles", args, 0, 0));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].labels.get("q"), Some("0.5"));
        assert_close(out[0].v, 0.1);
        assert_eq!(out[1].labels.get("q"), Some("1.0"));
        assert_close(out[1].v, 0.2);
    }

    #[test]
    fn open_metrics_float_format() {
        assert_eq!(open_metrics_float(1.0), "1.0");
        assert_eq!(open_metrics_float(0.0), "0.0");
        assert_eq!(open_metrics_float(0.01), "0.01");
        assert_eq!(open_metrics_float(-0.1), "-0.1");
        assert_eq!(open_metrics_float(f64::NAN), "NaN");
        assert_eq!(open_metrics_float(f64::INFINITY), "+Inf");
        assert_eq!(open_metrics_float(1e6), "1e+06");
    }

    #[test]
    fn fractions_match_prometheus_tests() {
        // testhistogram2_bucket at 50m: le=0: 0, 2: 10, 4: 20, 6: 30, +Inf: 30 (x10/10).
        let h = histogram(
            &[],
            &[
                ("0", 0.0),
                ("2", 10.0),
                ("4", 20.0),
                ("6", 30.0),
                ("+Inf", 30.0),
            ],
        );
        let frac = |lo: f64, hi: f64| {
            let args = vec![FnArg::Scalar(lo), FnArg::Scalar(hi), FnArg::Vector(&h)];
            out_values(&eval("histogram_fraction", args, 0, 0))[0]
        };
        assert_close(frac(0.0, 4.0), 2.0 / 3.0);
        assert_close(frac(0.0, 6.0), 1.0);
        assert_close(frac(0.0, 3.5), 0.5833333333333334);
        assert_close(frac(5.0, 1.0), 0.0);
        assert_close(frac(f64::NEG_INFINITY, f64::INFINITY), 1.0);
        assert!(frac(f64::NAN, 1.0).is_nan());
    }

    #[test]
    fn fractions_at_the_edges() {
        // histograms.test cases for classic buckets.
        let frac = |buckets: &[(&str, f64)], lo: f64, hi: f64| {
            let h = histogram(&[], buckets);
            let args = vec![FnArg::Scalar(lo), FnArg::Scalar(hi), FnArg::Vector(&h)];
            out_values(&eval("histogram_fraction", args, 0, 0))[0]
        };
        let positive = [("1", 1.0), ("2", 3.0), ("3", 6.0), ("+Inf", 100.0)];
        let negative = [("-3", 10.0), ("-2", 12.0), ("-1", 15.0), ("+Inf", 100.0)];
        assert_close(frac(&positive, 0.0, 1.5), 0.02);
        assert_close(frac(&negative, -4.0, -2.0), 0.02);
        assert_close(frac(&negative, f64::NEG_INFINITY, -1.5), 0.135);
        assert_close(frac(&positive, f64::NEG_INFINITY, f64::INFINITY), 1.0);
        assert_close(frac(&negative, f64::NEG_INFINITY, f64::INFINITY), 1.0);
        // Both bounds in the +Inf bucket: no interpolation into an infinite bucket.
        assert_close(frac(&positive, 4.0, 5.0), 0.0);
    }

    #[test]
    fn native_only_functions_ignore_floats() {
        let input = positive();
        for name in [
            "histogram_count",
            "histogram_sum",
            "histogram_avg",
            "histogram_stddev",
            "histogram_stdvar",
        ] {
            let out = out_vector(eval(name, vec![FnArg::Vector(&input)], 0, 0));
            assert!(out.is_empty(), "{name}");
        }
    }
}
