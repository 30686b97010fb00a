//! Functions of how a series moves inside a window: rate, increase, delta, irate,
//! idelta, resets, changes, deriv, predict_linear, double_exponential_smoothing.
//!
//! Owns: Prometheus's extrapolation rules (`extrapolated_rate`): counter resets add the
//! value before the reset; the result is extrapolated from the first and last sample
//! towards the window edges, but by at most half an average sample interval when the
//! gap to the edge exceeds 1.1 average intervals, and for counters never below zero.
//! Calls the parent's skeleton (`per_series`) and `stats`.

use super::gofmt::go_f6;
use super::stats::linear_regression;
use super::{
    annotation, per_series, per_series_any, FnCall, FnError, FnOutput, NamePolicy, SeriesValue,
};
use crate::model::histogram::FloatHistogram;
use crate::model::{Labels, Sample};
use crate::promql::histogram_fns::{self, HistogramAnnotation};
use crate::promql::value::{Annotations, HPoint};

pub fn rate(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    extrapolated(call, Kind::Rate)
}

pub fn increase(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    extrapolated(call, Kind::Increase)
}

pub fn delta(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    extrapolated(call, Kind::Delta)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rate,
    Increase,
    Delta,
}

impl Kind {
    fn is_counter(self) -> bool {
        self != Kind::Delta
    }
}

fn extrapolated(call: &mut FnCall<'_>, kind: Kind) -> Result<FnOutput, FnError> {
    let window = Window {
        start: call.window_start,
        end: call.window_end,
    };
    per_series_any(call, 0, NamePolicy::Drop, |series, annotations| {
        let name = series.labels.metric_name().unwrap_or("");
        if !series.points.is_empty() && !series.histograms.is_empty() {
            annotations.warn(
                HistogramAnnotation::MixedFloatsHistograms {
                    metric_name: name.to_string(),
                }
                .message(),
            );
            return None;
        }
        if !series.histograms.is_empty() {
            return extrapolated_histogram_rate(series.histograms, name, window, kind, annotations)
                .map(SeriesValue::Histogram);
        }
        let v = extrapolated_rate(series.points, window, kind)?;
        if kind.is_counter() {
            if let Some(name) = non_counter_name(series.labels) {
                annotations.info(annotation::possible_non_counter(name));
            }
        }
        Some(SeriesValue::Float(v))
    })
}

/// The metric name if it does not look like a counter's (Prometheus checks the suffix).
fn non_counter_name(labels: &Labels) -> Option<&str> {
    let name = labels.metric_name().filter(|n| !n.is_empty())?;
    let counter_like = ["_total", "_sum", "_count", "_bucket"]
        .iter()
        .any(|suffix| name.ends_with(suffix));
    (!counter_like).then_some(name)
}

/// A range selector's window `(start, end]` in milliseconds.
#[derive(Clone, Copy)]
struct Window {
    start: i64,
    end: i64,
}

impl Window {
    fn seconds(self) -> f64 {
        (self.end - self.start) as f64 / 1000.0
    }
}

/// Prometheus's `extrapolatedRate` for float samples. None with fewer than two points.
fn extrapolated_rate(points: &[Sample], window: Window, kind: Kind) -> Option<f64> {
    let (first, last) = match points {
        [first, .., last] => (*first, *last),
        _ => return None,
    };
    let mut result = last.v - first.v;
    if kind.is_counter() {
        // Added one by one onto the difference, in Prometheus's order (same rounding).
        for w in points.windows(2).filter(|w| w[1].v < w[0].v) {
            result += w[0].v;
        }
    }
    let span = Span {
        first_t: first.t,
        last_t: last.t,
        intervals: points.len() - 1,
    };
    Some(result * extrapolation_factor(span, window, kind, first.v, result))
}

/// Prometheus's `extrapolatedRate` for native histograms: `histogram_fns::histogram_rate`
/// (resets corrected, lowest schema), extrapolated like floats with the counts standing
/// in for the values. None with fewer than two histograms or incompatible ones.
fn extrapolated_histogram_rate(
    points: &[HPoint],
    metric_name: &str,
    window: Window,
    kind: Kind,
    annotations: &mut Annotations,
) -> Option<FloatHistogram> {
    let (first, last) = match points {
        [first, .., last] => (first, last),
        _ => return None,
    };
    let hs: Vec<&FloatHistogram> = points.iter().map(|p| &*p.h).collect();
    let (result, raised) = histogram_fns::histogram_rate(&hs, kind.is_counter(), metric_name);
    for a in raised {
        a.record(annotations);
    }
    let mut result = result?;
    let span = Span {
        first_t: first.t,
        last_t: last.t,
        intervals: points.len() - 1,
    };
    let factor = extrapolation_factor(span, window, kind, first.h.count, result.count);
    result.mul(factor);
    Some(result)
}

/// The first and last sample times of a window's samples and the intervals between.
#[derive(Clone, Copy)]
struct Span {
    first_t: i64,
    last_t: i64,
    intervals: usize,
}

/// How much `extrapolatedRate` scales the window's difference: towards the window's
/// edges, by at most half an average interval where the series seems to start or end
/// inside the window, for counters never past the zero point of the line through
/// `first_value` rising by `result`; per second for `rate`.
fn extrapolation_factor(
    span: Span,
    window: Window,
    kind: Kind,
    first_value: f64,
    result: f64,
) -> f64 {
    let sampled_interval = (span.last_t - span.first_t) as f64 / 1000.0;
    let average_interval = sampled_interval / span.intervals as f64;
    let threshold = average_interval * 1.1;
    let mut to_start = (span.first_t - window.start) as f64 / 1000.0;
    let mut to_end = (window.end - span.last_t) as f64 / 1000.0;

    if to_start >= threshold {
        to_start = average_interval / 2.0;
    }
    if kind.is_counter() {
        // A counter cannot go below zero: do not extrapolate past the point where the
        // line through the samples would cross zero.
        if result > 0.0 && first_value >= 0.0 {
            to_start = to_start.min(sampled_interval * (first_value / result));
        }
    }
    if to_end >= threshold {
        to_end = average_interval / 2.0;
    }

    let mut factor = if sampled_interval != 0.0 {
        (sampled_interval + to_start + to_end) / sampled_interval
    } else {
        1.0
    };
    if kind == Kind::Rate {
        factor /= window.seconds();
    }
    factor
}

pub fn irate(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    instant(call, true)
}

pub fn idelta(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    instant(call, false)
}

/// irate and idelta: from the last two samples of either kind (Prometheus's
/// `instantValue`); two histograms give a histogram, a float and a histogram nothing
/// but a warning.
fn instant(call: &mut FnCall<'_>, is_rate: bool) -> Result<FnOutput, FnError> {
    per_series_any(call, 0, NamePolicy::Drop, |s, annotations| {
        if s.histograms.is_empty() {
            return instant_value(s.points, is_rate).map(SeriesValue::Float);
        }
        let name = s.labels.metric_name().unwrap_or("");
        let (earlier, later) = match last_two(s.points, s.histograms)? {
            (Either::Histogram(a), Either::Histogram(b)) => (a, b),
            (Either::Float(a), Either::Float(b)) => {
                return instant_value(&[*a, *b], is_rate).map(SeriesValue::Float)
            }
            _ => {
                HistogramAnnotation::MixedFloatsHistograms {
                    metric_name: name.to_string(),
                }
                .record(annotations);
                return None;
            }
        };
        let interval_ms = later.t - earlier.t;
        if interval_ms == 0 {
            return None;
        }
        let (result, raised) =
            histogram_fns::histogram_instant_delta(&earlier.h, &later.h, is_rate, name);
        for a in raised {
            a.record(annotations);
        }
        let mut result = result?;
        if is_rate {
            result.div(interval_ms as f64 / 1000.0);
        }
        Some(SeriesValue::Histogram(result))
    })
}

/// A window sample of either kind.
#[derive(Clone, Copy)]
enum Either<'a> {
    Float(&'a Sample),
    Histogram(&'a HPoint),
}

impl Either<'_> {
    fn t(&self) -> i64 {
        match self {
            Either::Float(p) => p.t,
            Either::Histogram(p) => p.t,
        }
    }
}

/// The window's samples of both kinds in time order (floats first on equal times).
fn merged<'a>(points: &'a [Sample], histograms: &'a [HPoint]) -> Vec<Either<'a>> {
    let mut all: Vec<Either<'a>> = points
        .iter()
        .map(Either::Float)
        .chain(histograms.iter().map(Either::Histogram))
        .collect();
    all.sort_by_key(Either::t);
    all
}

/// The window's last two samples of either kind, oldest first.
fn last_two<'a>(
    points: &'a [Sample],
    histograms: &'a [HPoint],
) -> Option<(Either<'a>, Either<'a>)> {
    let floats = &points[points.len().saturating_sub(2)..];
    let hists = &histograms[histograms.len().saturating_sub(2)..];
    let tail = merged(floats, hists);
    match tail.as_slice() {
        [.., a, b] => Some((*a, *b)),
        _ => None,
    }
}

/// From the last two points: the per-second rate (a drop counts as a reset, so the rate
/// is the last value over the interval) or the plain difference.
fn instant_value(points: &[Sample], is_rate: bool) -> Option<f64> {
    let [previous, last] = points.get(points.len().checked_sub(2)?..)? else {
        return None;
    };
    let interval_ms = last.t - previous.t;
    if interval_ms == 0 {
        return None;
    }
    if !is_rate {
        return Some(last.v - previous.v);
    }
    let increase = if last.v < previous.v {
        last.v
    } else {
        last.v - previous.v
    };
    Some(increase / (interval_ms as f64 / 1000.0))
}

/// Counter resets between consecutive samples: a float drop, a histogram reset
/// (`detect_reset`), or a switch between floats and histograms.
pub fn resets(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    per_series_any(call, 0, NamePolicy::Drop, |s, _| {
        if s.histograms.is_empty() {
            return Some(SeriesValue::Float(
                s.points.windows(2).filter(|w| w[1].v < w[0].v).count() as f64,
            ));
        }
        let all = merged(s.points, s.histograms);
        let count = all
            .windows(2)
            .filter(|w| match (w[0], w[1]) {
                (Either::Float(a), Either::Float(b)) => b.v < a.v,
                (Either::Histogram(a), Either::Histogram(b)) => b.h.detect_reset(&a.h),
                _ => true,
            })
            .count();
        Some(SeriesValue::Float(count as f64))
    })
}

/// Changes between consecutive samples: a different float (NaN equals NaN), a
/// histogram that is not `equals` the previous one, or a switch of kind.
pub fn changes(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    per_series_any(call, 0, NamePolicy::Drop, |s, _| {
        let float_changed = |a: &Sample, b: &Sample| b.v != a.v && !(b.v.is_nan() && a.v.is_nan());
        if s.histograms.is_empty() {
            return Some(SeriesValue::Float(
                s.points
                    .windows(2)
                    .filter(|w| float_changed(&w[0], &w[1]))
                    .count() as f64,
            ));
        }
        let all = merged(s.points, s.histograms);
        let count = all
            .windows(2)
            .filter(|w| match (w[0], w[1]) {
                (Either::Float(a), Either::Float(b)) => float_changed(a, b),
                (Either::Histogram(a), Either::Histogram(b)) => !b.h.equals(&a.h),
                _ => true,
            })
            .count();
        Some(SeriesValue::Float(count as f64))
    })
}

pub fn deriv(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    per_series(call, 0, NamePolicy::Drop, |s, _| {
        // Relative to the first sample's time, to keep the x values small.
        let first = s.points.first()?;
        (s.points.len() >= 2).then(|| linear_regression(s.points, first.t).0)
    })
}

pub fn predict_linear(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    let seconds_ahead = call.scalar(1)?;
    let ts = call.ts;
    per_series(call, 0, NamePolicy::Drop, |s, _| {
        (s.points.len() >= 2).then(|| {
            let (slope, intercept) = linear_regression(s.points, ts);
            slope * seconds_ahead + intercept
        })
    })
}

/// Holt's linear (double exponential) smoothing; experimental in Prometheus.
pub fn double_exponential_smoothing(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    let smoothing = call.scalar(1)?;
    let trend = call.scalar(2)?;
    // Prometheus validates inside the per-series call, so only when a series has points.
    if call.matrix(0)?.iter().any(|s| !s.points.is_empty()) {
        check_factor("smoothing factor", "sf", smoothing)?;
        check_factor("trend factor", "tf", trend)?;
    }
    per_series(call, 0, NamePolicy::Drop, |s, _| {
        smooth(s.points, smoothing, trend)
    })
}

/// Rejects factors outside (0, 1). NaN passes, as in Prometheus (its comparisons fail).
fn check_factor(what: &str, symbol: &str, v: f64) -> Result<(), FnError> {
    if !(v <= 0.0 || v >= 1.0) {
        return Ok(());
    }
    Err(FnError::Execution(format!(
        "invalid {what}. Expected: 0 < {symbol} < 1, got: {}",
        go_f6(v)
    )))
}

/// The smoothed value after the last point; None with fewer than two points.
fn smooth(points: &[Sample], sf: f64, tf: f64) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let mut s0 = 0.0;
    let mut s1 = points[0].v;
    let mut b = points[1].v - points[0].v;
    for (i, p) in points.iter().enumerate().skip(1) {
        // The trend starts as the first difference, then follows the smoothed values.
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let next = sf * p.v + (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = next;
    }
    Some(s1)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::FnArg;
    use super::*;

    const MIN: i64 = 60_000;

    /// `name(metric[range])` at `at_ms` over one series of points (seconds, value).
    fn one(
        name: &str,
        metric: &str,
        points: &[(f64, f64)],
        at_ms: i64,
        range_ms: i64,
    ) -> Option<f64> {
        let m = [series(&[("__name__", metric)], points)];
        let out = eval(name, vec![FnArg::Matrix(&windows(&m))], at_ms, range_ms);
        out_values(&out).first().copied()
    }

    /// 0, 10, 20 ... every 5m, as `0+10x10` in Prometheus's test scripts.
    fn counter_every_5m(n: usize) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| (i as f64 * 300.0, i as f64 * 10.0))
            .collect()
    }

    #[test]
    fn rate_extrapolates_to_window_edges() {
        // The window (0, 50m] over 0+10x10 every 5m holds 5m..50m: 90 over 45m. The 5m gap
        // to the start is below 1.1 intervals, and the zero crossing is exactly 5m before
        // the first sample, so the result extrapolates to the full 50m: 100.
        let pts: Vec<_> = counter_every_5m(11).into_iter().skip(1).collect();
        let got = one("increase", "x_total", &pts, 50 * MIN, 50 * MIN).unwrap();
        assert_close(got, 100.0);
        let got = one("rate", "x_total", &pts, 50 * MIN, 50 * MIN).unwrap();
        assert_close(got, 100.0 / 3000.0);
        // Evaluated 7m30s later, the end gap (7.5m) exceeds 1.1 intervals: only half an
        // interval (2.5m) is added at the end.
        let got = one(
            "increase",
            "x_total",
            &pts,
            57 * MIN + 30_000,
            57 * MIN + 30_000,
        );
        assert_close(got.unwrap(), 90.0 * (45.0 + 5.0 + 2.5) / 45.0);
    }

    /// Points of a Prometheus test-script series `values` every `step_s` from 0, keeping
    /// only those inside the window `(at - range, at]` as the evaluator would.
    fn window(values: &[f64], step_s: f64, at_s: f64, range_s: f64) -> Vec<(f64, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64 * step_s, *v))
            .filter(|(t, _)| *t > at_s - range_s && *t <= at_s)
            .collect()
    }

    #[test]
    fn prometheus_rate_cases() {
        // functions.test: increase over 0 1 2 3 2 3 4 (5m) at 30m [30m] is 7.
        let pts = window(&[0.0, 1.0, 2.0, 3.0, 2.0, 3.0, 4.0], 300.0, 1800.0, 1800.0);
        assert_close(
            one("increase", "r_total", &pts, 30 * MIN, 30 * MIN).unwrap(),
            7.0,
        );
        // rate(testcounter_reset_middle_total[50m]) at 50m is 0.08.
        let vals: Vec<f64> = (0..5).chain(0..6).map(|i| f64::from(i) * 27.0).collect();
        let pts = window(&vals, 300.0, 3000.0, 3000.0);
        assert_close(
            one("rate", "r_total", &pts, 50 * MIN, 50 * MIN).unwrap(),
            0.08,
        );
        // Zero cutoff: testcounter_zero_cutoff_total (4m steps) at 10m [20m].
        for (start, want) in [(0.0, 0.5), (60.0, 0.55), (120.0, 0.6), (300.0, 0.6)] {
            let vals: Vec<f64> = (0..11).map(|i| start + f64::from(i) * 240.0).collect();
            let pts = window(&vals, 240.0, 600.0, 1200.0);
            let got = one("rate", "z_total", &pts, 10 * MIN, 20 * MIN).unwrap();
            assert_close(got, want);
        }
        // Counter reset right at the end: rate(testcounter_reset_end_total[6m]) is 0.
        let vals: Vec<f64> = (0..10)
            .map(|i| f64::from(i) * 10.0)
            .chain([0.0, 10.0])
            .collect();
        let pts = window(&vals, 300.0, 3000.0, 360.0);
        assert_close(
            one("rate", "e_total", &pts, 50 * MIN, 6 * MIN).unwrap(),
            0.0,
        );
    }

    #[test]
    fn increase_handles_counter_resets() {
        // 0 10 20 5 15 (reset after 20) sampled each minute; window covers all exactly.
        let pts = [
            (60.0, 0.0),
            (120.0, 10.0),
            (180.0, 20.0),
            (240.0, 5.0),
            (300.0, 15.0),
        ];
        let got = one("increase", "c_total", &pts, 5 * MIN, 4 * MIN).unwrap();
        // raw increase 15 + 20 lost in the reset = 35 over 4m; window (60s, 300s].
        // to_start: 0 >= threshold? no. zero-crossing at 0 for first value 0.
        assert_close(got, 35.0);
    }

    #[test]
    fn counter_extrapolation_stops_at_zero() {
        // Starts at 5 with slope 10/min: zero is reached 30s before the first sample, so
        // extrapolation to the start is capped at 30s even though the gap is 60s (< 1.1 * 60).
        let pts = [(60.0, 5.0), (120.0, 15.0), (180.0, 25.0)];
        let got = one("increase", "c_total", &pts, 3 * MIN, 3 * MIN).unwrap();
        assert_close(got, 20.0 * (120.0 + 30.0) / 120.0);
        // delta is not a counter: the full 60s are used.
        let got = one("delta", "g", &pts, 3 * MIN, 3 * MIN).unwrap();
        assert_close(got, 20.0 * 180.0 / 120.0);
    }

    #[test]
    fn single_point_gives_nothing() {
        assert_eq!(one("rate", "c_total", &[(60.0, 1.0)], MIN, MIN), None);
        assert_eq!(one("irate", "c_total", &[(60.0, 1.0)], MIN, MIN), None);
        assert_eq!(one("deriv", "g", &[(60.0, 1.0)], MIN, MIN), None);
    }

    #[test]
    fn non_counter_names_get_an_info() {
        // `name` over one series called `metric`: its result and annotations.
        let run = |name: &str, metric: &str| {
            let m = [series(&[("__name__", metric)], &[(0.0, 1.0), (30.0, 2.0)])];
            eval_with(
                name,
                vec![FnArg::Matrix(&windows(&m))],
                &[],
                MIN,
                MIN,
                false,
            )
        };
        let (out, ann) = run("rate", "some_gauge");
        assert_eq!(out_values(&out.unwrap()).len(), 1);
        assert!(ann.infos.contains(
            "PromQL info: metric might not be a counter, name does not end in \
             _total/_sum/_count/_bucket: \"some_gauge\""
        ));
        for ok in ["a_total", "a_sum", "a_count", "a_bucket"] {
            assert!(run("increase", ok).1.is_empty(), "{ok}");
        }
        // delta is for gauges: no info.
        assert!(run("delta", "some_gauge").1.is_empty());
    }

    #[test]
    fn output_drops_the_name() {
        let m = [series(
            &[("__name__", "a_total"), ("job", "x")],
            &[(0.0, 1.0), (30.0, 2.0)],
        )];
        let out = out_vector(eval("rate", vec![FnArg::Matrix(&windows(&m))], MIN, MIN));
        assert!(out[0].drop_name);
        assert_eq!(out[0].t, MIN);
        assert_eq!(out[0].labels, m[0].labels);
    }

    #[test]
    fn irate_and_idelta_use_the_last_two_points() {
        let pts = [(0.0, 1.0), (10.0, 5.0), (20.0, 11.0)];
        assert_close(one("irate", "c_total", &pts, MIN, MIN).unwrap(), 0.6);
        assert_close(one("idelta", "g", &pts, MIN, MIN).unwrap(), 6.0);
        // A drop is a reset for irate, a negative delta for idelta.
        let pts = [(0.0, 10.0), (10.0, 4.0)];
        assert_close(one("irate", "c_total", &pts, MIN, MIN).unwrap(), 0.4);
        assert_close(one("idelta", "g", &pts, MIN, MIN).unwrap(), -6.0);
    }

    #[test]
    fn resets_and_changes_count() {
        let pts = [(0.0, 1.0), (1.0, 0.0), (2.0, 0.0), (3.0, 3.0), (4.0, 2.0)];
        assert_eq!(one("resets", "c", &pts, MIN, MIN), Some(2.0));
        assert_eq!(one("changes", "c", &pts, MIN, MIN), Some(3.0));
        let pts = [(0.0, f64::NAN), (1.0, f64::NAN), (2.0, 1.0)];
        assert_eq!(one("changes", "c", &pts, MIN, MIN), Some(1.0));
        assert_eq!(one("changes", "c", &[(0.0, 1.0)], MIN, MIN), Some(0.0));
        assert_eq!(one("resets", "c", &[(0.0, 1.0)], MIN, MIN), Some(0.0));
    }

    #[test]
    fn deriv_and_predict_linear() {
        // functions.test: 0+10x10 every 5m, deriv over 30m at 30m... slope = 10/300.
        let pts = counter_every_5m(7);
        assert_close(
            one("deriv", "g", &pts, 30 * MIN, 30 * MIN).unwrap(),
            10.0 / 300.0,
        );
        let m = [series(&[("__name__", "g")], &pts)];
        let out = eval(
            "predict_linear",
            vec![FnArg::Matrix(&windows(&m)), FnArg::Scalar(3600.0)],
            30 * MIN,
            30 * MIN,
        );
        // Value at 30m is 60; an hour later 60 + 3600 * 10/300 = 180.
        assert_close(out_values(&out)[0], 180.0);
    }

    #[test]
    fn double_exponential_smoothing_values_and_errors() {
        let pts = [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)];
        let m = [series(&[("__name__", "g")], &pts)];
        let out = eval(
            "double_exponential_smoothing",
            vec![
                FnArg::Matrix(&windows(&m)),
                FnArg::Scalar(0.5),
                FnArg::Scalar(0.5),
            ],
            MIN,
            MIN,
        );
        // A perfect line is followed exactly.
        assert_close(out_values(&out)[0], 4.0);
        let (out, _) = eval_with(
            "double_exponential_smoothing",
            vec![
                FnArg::Matrix(&windows(&m)),
                FnArg::Scalar(1.0),
                FnArg::Scalar(0.5),
            ],
            &[],
            MIN,
            MIN,
            false,
        );
        assert_eq!(
            out,
            Err(FnError::Execution(
                "invalid smoothing factor. Expected: 0 < sf < 1, got: 1.000000".into()
            ))
        );
        let (out, _) = eval_with(
            "double_exponential_smoothing",
            vec![
                FnArg::Matrix(&windows(&m)),
                FnArg::Scalar(0.5),
                FnArg::Scalar(0.0),
            ],
            &[],
            MIN,
            MIN,
            false,
        );
        assert_eq!(
            out,
            Err(FnError::Execution(
                "invalid trend factor. Expected: 0 < tf < 1, got: 0.000000".into()
            ))
        );
    }
}
