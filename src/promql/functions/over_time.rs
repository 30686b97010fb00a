//! The `*_over_time` family: one aggregate over the points of each series in a window.
//!
//! Owns: avg, sum, count, min, max, quantile, stddev, stdvar, mad, first, last, present
//! and absent over time, and the experimental `ts_of_{first,last,min,max}_over_time`.
//! Every member is a small fold handed to the parent's `per_series` skeleton; the
//! numeric kernels come from `stats`. Calls the parent, `stats` and `labels` (absent
//! labels).

use promql_parser::parser::token::{TokenId, T_AVG, T_SUM};

use super::labels::absent_labels;
use super::stats::{kahan_sum, mean, quantile, variance};
use super::{
    annotation, per_series, per_series_any, FnCall, FnError, FnOutput, NamePolicy, SeriesValue,
};
use crate::model::Sample;
use crate::promql::aggregate::HistogramGroup;
use crate::promql::histogram_fns::{HistogramAnnotation, HistogramOperation};
use crate::promql::value::{HPoint, InstantSample};

/// Runs a fold over the values of each series' points (argument 0), dropping the name.
fn fold_values(call: &mut FnCall<'_>, f: impl Fn(&[Sample]) -> f64) -> Result<FnOutput, FnError> {
    per_series(call, 0, NamePolicy::Drop, |s, _| Some(f(s.points)))
}

fn values(points: &[Sample]) -> impl Iterator<Item = f64> + '_ {
    points.iter().map(|p| p.v)
}

pub fn avg_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    fold_with_histograms(call, T_AVG, |p| mean(values(p)))
}

pub fn sum_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    fold_with_histograms(call, T_SUM, |p| kahan_sum(values(p)))
}

/// sum_over_time and avg_over_time: floats folded by `f`; a window of native
/// histograms summed or averaged as the `sum`/`avg` aggregations do; a window holding
/// both kinds gives nothing, with Prometheus's warning.
fn fold_with_histograms(
    call: &mut FnCall<'_>,
    op: TokenId,
    f: impl Fn(&[Sample]) -> f64,
) -> Result<FnOutput, FnError> {
    per_series_any(call, 0, NamePolicy::Drop, |s, annotations| {
        let name = s.labels.metric_name().unwrap_or("");
        match (s.points.is_empty(), s.histograms) {
            (false, []) => Some(SeriesValue::Float(f(s.points))),
            (true, [first, rest @ ..]) => {
                let mut group = HistogramGroup::first(&first.h);
                let mut reconciled = false;
                for p in rest {
                    match group.add(op, &p.h) {
                        Ok(c) => reconciled |= c.custom_bounds_reconciled,
                        Err(_) => {
                            HistogramAnnotation::MixedExponentialCustom {
                                metric_name: name.to_string(),
                            }
                            .record(annotations);
                            return None;
                        }
                    }
                }
                let operation = HistogramOperation::Aggregation;
                if group.counter_reset_collision() {
                    HistogramAnnotation::CounterResetCollision { operation }.record(annotations);
                }
                if reconciled {
                    HistogramAnnotation::MismatchedCustomBuckets { operation }.record(annotations);
                }
                Some(SeriesValue::Histogram(group.finish(op)))
            }
            _ => {
                HistogramAnnotation::MixedFloatsHistograms {
                    metric_name: name.to_string(),
                }
                .record(annotations);
                None
            }
        }
    })
}

/// Samples of both kinds count.
pub fn count_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    per_series_any(call, 0, NamePolicy::Drop, |s, _| {
        Some(SeriesValue::Float(
            (s.points.len() + s.histograms.len()) as f64,
        ))
    })
}

pub fn present_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    per_series_any(call, 0, NamePolicy::Drop, |_, _| {
        Some(SeriesValue::Float(1.0))
    })
}

pub fn stddev_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    fold_values(call, |p| variance(values(p)).sqrt())
}

pub fn stdvar_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    fold_values(call, |p| variance(values(p)))
}

pub fn min_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    fold_values(call, |p| select(p, |cur, best| cur < best).v)
}

pub fn max_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    fold_values(call, |p| select(p, |cur, best| cur > best).v)
}

/// The timestamp (seconds) of the last minimum.
pub fn ts_of_min_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    fold_values(call, |p| seconds(select(p, |cur, best| cur <= best).t))
}

/// The timestamp (seconds) of the last maximum.
pub fn ts_of_max_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    fold_values(call, |p| seconds(select(p, |cur, best| cur >= best).t))
}

/// The time of the window's first sample of either kind.
pub fn ts_of_first_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    per_series_any(call, 0, NamePolicy::Drop, |s, _| {
        let t = match (s.points.first(), s.histograms.first()) {
            (Some(f), Some(h)) => f.t.min(h.t),
            (Some(f), None) => f.t,
            (None, Some(h)) => h.t,
            (None, None) => return None,
        };
        Some(SeriesValue::Float(seconds(t)))
    })
}

/// The time of the window's last sample of either kind.
pub fn ts_of_last_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    per_series_any(call, 0, NamePolicy::Drop, |s, _| {
        let t = match (s.points.last(), s.histograms.last()) {
            (Some(f), Some(h)) => f.t.max(h.t),
            (Some(f), None) => f.t,
            (None, Some(h)) => h.t,
            (None, None) => return None,
        };
        Some(SeriesValue::Float(seconds(t)))
    })
}

/// first_over_time and last_over_time act like an offset: they keep the metric name.
pub fn first_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    per_series_any(call, 0, NamePolicy::KeepInput, |s, _| {
        pick_point(s.points.first(), s.histograms.first(), |f, h| f < h)
    })
}

pub fn last_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    per_series_any(call, 0, NamePolicy::KeepInput, |s, _| {
        pick_point(s.points.last(), s.histograms.last(), |f, h| f > h)
    })
}

/// The float or the histogram point, whichever `float_wins(float_t, histogram_t)`
/// prefers when both exist.
fn pick_point(
    float: Option<&Sample>,
    histogram: Option<&HPoint>,
    float_wins: impl Fn(i64, i64) -> bool,
) -> Option<SeriesValue> {
    match (float, histogram) {
        (Some(f), Some(h)) if !float_wins(f.t, h.t) => Some(SeriesValue::Histogram((*h.h).clone())),
        (Some(f), _) => Some(SeriesValue::Float(f.v)),
        (None, Some(h)) => Some(SeriesValue::Histogram((*h.h).clone())),
        (None, None) => None,
    }
}

pub fn quantile_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    let q = call.scalar(0)?;
    let mut scratch = Vec::new();
    per_series(call, 1, NamePolicy::Drop, |s, annotations| {
        if q.is_nan() || !(0.0..=1.0).contains(&q) {
            annotations.warn(annotation::invalid_quantile(q));
        }
        fill(&mut scratch, s.points);
        Some(quantile(q, &mut scratch))
    })
}

/// Median absolute deviation from the median; NaN if any value is NaN.
pub fn mad_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    let mut scratch = Vec::new();
    per_series(call, 0, NamePolicy::Drop, |s, _| {
        if s.points.iter().any(|p| p.v.is_nan()) {
            return Some(f64::NAN);
        }
        fill(&mut scratch, s.points);
        let median = quantile(0.5, &mut scratch);
        scratch.iter_mut().for_each(|v| *v = (*v - median).abs());
        Some(quantile(0.5, &mut scratch))
    })
}

/// 1 with the selector's equality-matched labels when no series has a point in the
/// window, nothing otherwise.
pub fn absent_over_time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    let present = |s: &&crate::promql::value::SeriesWindow<'_>| {
        !s.points.is_empty() || !s.histograms.is_empty()
    };
    if call.matrix(0)?.iter().any(|s| present(&s)) {
        return Ok(FnOutput::Vector(Vec::new()));
    }
    Ok(FnOutput::Vector(vec![InstantSample {
        labels: absent_labels(call.arg_exprs.first().map(|e| &**e)),
        t: call.ts,
        v: 1.0,
        h: None,
        drop_name: true,
    }]))
}

/// The point that wins when each point replaces the best one so far if `better(cur,
/// best)` or the best is NaN (so NaN only wins when every value is NaN).
fn select(points: &[Sample], better: impl Fn(f64, f64) -> bool) -> Sample {
    let mut best = points.first().copied().unwrap_or(Sample::new(0, f64::NAN));
    for p in points {
        if better(p.v, best.v) || best.v.is_nan() {
            best = *p;
        }
    }
    best
}

fn seconds(t_ms: i64) -> f64 {
    t_ms as f64 / 1000.0
}

/// Reuses `scratch` (one buffer per call, not per point) for the values of `points`.
fn fill(scratch: &mut Vec<f64>, points: &[Sample]) {
    scratch.clear();
    scratch.extend(values(points));
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::FnArg;

    const MIN: i64 = 60_000;

    fn over(name: &str, points: &[(f64, f64)]) -> f64 {
        let m = [series(&[("__name__", "m")], points)];
        out_values(&eval(
            name,
            vec![FnArg::Matrix(&windows(&m))],
            10 * MIN,
            10 * MIN,
        ))[0]
    }

    fn pts(vals: &[f64]) -> Vec<(f64, f64)> {
        vals.iter()
            .enumerate()
            .map(|(i, v)| (i as f64 * 10.0, *v))
            .collect()
    }

    #[test]
    fn simple_aggregates() {
        let p = pts(&[1.0, 4.0, 2.0, 3.0]);
        assert_eq!(over("avg_over_time", &p), 2.5);
        assert_eq!(over("sum_over_time", &p), 10.0);
        assert_eq!(over("count_over_time", &p), 4.0);
        assert_eq!(over("min_over_time", &p), 1.0);
        assert_eq!(over("max_over_time", &p), 4.0);
        assert_eq!(over("first_over_time", &p), 1.0);
        assert_eq!(over("last_over_time", &p), 3.0);
        assert_eq!(over("present_over_time", &p), 1.0);
        assert_eq!(over("stdvar_over_time", &p), 1.25);
        assert_eq!(over("stddev_over_time", &p), 1.25f64.sqrt());
        assert_eq!(over("mad_over_time", &p), 1.0);
    }

    #[test]
    fn nan_handling_of_min_max() {
        // NaN is only the result when all values are NaN.
        let p = pts(&[f64::NAN, 2.0, f64::NAN, 1.0]);
        assert_eq!(over("min_over_time", &p), 1.0);
        assert_eq!(over("max_over_time", &p), 2.0);
        assert!(over("max_over_time", &pts(&[f64::NAN, f64::NAN])).is_nan());
        assert!(over("mad_over_time", &p).is_nan());
        assert!(over("avg_over_time", &p).is_nan());
    }

    #[test]
    fn timestamps_of_extremes() {
        let p = pts(&[1.0, 5.0, 0.0, 5.0, 0.0]);
        // The last of equal extremes wins.
        assert_eq!(over("ts_of_max_over_time", &p), 30.0);
        assert_eq!(over("ts_of_min_over_time", &p), 40.0);
        assert_eq!(over("ts_of_first_over_time", &p), 0.0);
        assert_eq!(over("ts_of_last_over_time", &p), 40.0);
    }

    #[test]
    fn sum_is_compensated() {
        assert_eq!(over("sum_over_time", &pts(&[1e100, 1.0, -1e100, 1.0])), 2.0);
        assert_eq!(over("avg_over_time", &pts(&[1e100, 1.0, -1e100, 1.0])), 0.5);
    }

    #[test]
    fn quantile_over_time_warns_on_bad_q() {
        let m = [series(&[("__name__", "m")], &pts(&[1.0, 2.0, 3.0, 4.0]))];
        let w = windows(&m);
        let args = |q| vec![FnArg::Scalar(q), FnArg::Matrix(&w)];
        let (out, ann) = eval_with("quantile_over_time", args(0.5), &[], MIN, MIN, false);
        assert_eq!(out_values(&out.unwrap()), vec![2.5]);
        assert!(ann.is_empty());
        let (out, ann) = eval_with("quantile_over_time", args(1.5), &[], MIN, MIN, false);
        assert_eq!(out_values(&out.unwrap()), vec![f64::INFINITY]);
        assert!(ann
            .warnings
            .contains("PromQL warning: quantile value should be between 0 and 1, got 1.5"));
        let (_, ann) = eval_with("quantile_over_time", args(f64::NAN), &[], MIN, MIN, false);
        assert!(ann
            .warnings
            .contains("PromQL warning: quantile value should be between 0 and 1, got NaN"));
    }

    #[test]
    fn names_dropped_except_first_and_last() {
        let m = [series(&[("__name__", "m")], &pts(&[1.0]))];
        for name in ["avg_over_time", "ts_of_last_over_time", "count_over_time"] {
            let out = out_vector(eval(name, vec![FnArg::Matrix(&windows(&m))], MIN, MIN));
            assert!(out[0].drop_name, "{name}");
        }
        for name in ["first_over_time", "last_over_time"] {
            let out = out_vector(eval(name, vec![FnArg::Matrix(&windows(&m))], MIN, MIN));
            assert!(!out[0].drop_name, "{name}");
        }
        // An input that already drops its name (e.g. from a subquery) keeps doing so.
        let mut m = m;
        m[0].drop_name = true;
        let out = out_vector(eval(
            "last_over_time",
            vec![FnArg::Matrix(&windows(&m))],
            MIN,
            MIN,
        ));
        assert!(out[0].drop_name);
    }

    #[test]
    fn empty_series_produce_nothing() {
        let m = [
            series(&[("__name__", "a")], &[]),
            series(&[("__name__", "b")], &[(1.0, 2.0)]),
        ];
        let out = out_vector(eval(
            "sum_over_time",
            vec![FnArg::Matrix(&windows(&m))],
            MIN,
            MIN,
        ));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].labels.metric_name(), Some("b"));
    }

    #[test]
    fn absent_over_time_only_without_points() {
        let exprs = [Box::new(
            promql_parser::parser::parse(r#"x{job="a", i!="b"}[5m]"#).unwrap(),
        )];
        let empty = [series(&[("__name__", "x")], &[])];
        let (out, _) = eval_with(
            "absent_over_time",
            vec![FnArg::Matrix(&windows(&empty))],
            &exprs,
            MIN,
            MIN,
            false,
        );
        let out = out_vector(out.unwrap());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].labels, labels(&[("job", "a")]));
        assert_eq!(out[0].v, 1.0);
        let full = [series(&[("__name__", "x")], &[(1.0, 1.0)])];
        let (out, _) = eval_with(
            "absent_over_time",
            vec![FnArg::Matrix(&windows(&full))],
            &exprs,
            MIN,
            MIN,
            false,
        );
        assert!(out_vector(out.unwrap()).is_empty());
    }
}
