//! The PromQL function library (rate, *_over_time, math, label_*, histogram_quantile ...).
//!
//! Owns: what each function computes for one evaluation step. The evaluator (`engine`)
//! evaluates the arguments, cuts range-vector windows, applies offset and `@`, and calls
//! `call` once per step. Functions never remove `__name__` themselves: they set
//! `drop_name` and the evaluator applies it. Calls only `value` and `model` (plus
//! promql-parser's AST, read by absent(), the regex crate for label_replace, and the
//! engine's `StopFlag`, which `per_series` reads between series).
//!
//! Layout: this file holds the contract, the dispatch table (name -> implementation) and
//! the two output skeletons every family shares (`map_floats` for element-wise functions
//! over an instant vector, `per_series` for functions over the points of each series of
//! a range vector). The families live in submodules:
//!
//! - `rate`      rate, increase, delta, irate, idelta, resets, changes, deriv,
//!   predict_linear, double_exponential_smoothing
//! - `over_time` the `*_over_time` family, `ts_of_*`, present/absent_over_time
//! - `math`      element-wise math and trigonometry, clamp, round, scalar/vector, time()
//! - `date`      day_of_week, hour, year ... (UTC calendar arithmetic)
//! - `labels`    label_replace, label_join, sort*, absent
//! - `histogram` histogram_quantile(s) and histogram_fraction over classic `le` buckets
//!   and native histograms; the native-histogram-only functions (histogram_count ...)
//! - `stats`     Kahan summation, `quantile`, linear regression, variance (public: the
//!   evaluator's sum/avg/stddev aggregations use the same kernels)
//! - `gofmt`     Go-compatible number/string formatting for annotation and error texts
//!   (also the float formatting of the HTTP API's JSON and `/federate`)
//!
//! Samples may be native histograms (ADR 0032): `map_floats` and `per_series` are the
//! float skeletons (element-wise functions skip histograms, range functions say when
//! they ignored some), `per_series_any` the skeleton of functions defined on both kinds;
//! the histogram arithmetic comes from `promql::histogram_fns` and `model::histogram_ops`.

mod date;
pub mod gofmt;
mod histogram;
mod labels;
mod math;
mod over_time;
mod rate;
pub mod stats;

use promql_parser::parser::Expr;

use std::sync::Arc;

use super::engine::StopFlag;
use super::value::{Annotations, InstantSample, SeriesWindow};
use crate::model::histogram::FloatHistogram;
use crate::model::Labels;

/// One evaluated argument of a function call at one step.
#[derive(Debug)]
pub enum FnArg<'a> {
    Scalar(f64),
    String(&'a str),
    Vector(&'a [InstantSample]),
    /// For each series, the points inside the window `(window_start, window_end]`.
    Matrix(&'a [SeriesWindow<'a>]),
}

/// Everything one function call at one step may look at.
pub struct FnCall<'a> {
    pub name: &'a str,
    /// The evaluated arguments in the call's order: scalar-typed ones as `Scalar`, string
    /// literals as `String`, instant vectors as `Vector`, the range-vector argument as
    /// `Matrix` holding only the window's points.
    pub args: Vec<FnArg<'a>>,
    /// The unevaluated argument expressions (absent() derives labels from matchers).
    pub arg_exprs: &'a [Box<Expr>],
    /// Evaluation time of this step, in milliseconds.
    pub ts: i64,
    /// For a range-vector argument: the window's bounds after offset and `@`, in ms.
    /// `window_end - window_start` is the selector's range.
    pub window_start: i64,
    pub window_end: i64,
    /// Prometheus's delayed name removal is on (`EngineOptions::delayed_name_removal`).
    /// Some annotations name the metric only in that mode, as Prometheus does.
    pub delayed_name_removal: bool,
    pub annotations: &'a mut Annotations,
    /// Raised when the query's answer is no longer wanted; per-series work stops.
    pub stop: &'a StopFlag,
}

/// What a function returns for one step.
#[derive(Debug, PartialEq)]
pub enum FnOutput {
    Scalar(f64),
    Vector(Vec<InstantSample>),
}

#[derive(Debug, PartialEq)]
pub enum FnError {
    /// The function is not known or needs a feature Timbala does not have.
    Unsupported(String),
    /// A runtime error Prometheus reports as `execution` (e.g. label_replace bad regex).
    Execution(String),
    /// The query was stopped (`FnCall::stop`) before the function finished.
    Stopped,
}

/// Evaluates function `call.name` for one step.
pub fn call(mut call: FnCall<'_>) -> Result<FnOutput, FnError> {
    match lookup(call.name) {
        Some(implementation) => implementation(&mut call),
        None => Err(FnError::Unsupported(format!(
            "function {:?} is not supported",
            call.name
        ))),
    }
}

/// The q-quantile of `values` (sorted in place), with Prometheus's interpolation rules:
/// no values give NaN, q < 0 gives -Inf, q > 1 gives +Inf.
pub fn quantile(q: f64, values: &mut [f64]) -> f64 {
    stats::quantile(q, values)
}

/// True when `name` is a function `call` can evaluate.
pub fn is_supported(name: &str) -> bool {
    lookup(name).is_some()
}

/// The implementation of one function for one step.
type Implementation = fn(&mut FnCall<'_>) -> Result<FnOutput, FnError>;

/// Name -> implementation, sorted by name (checked by a test) for binary search.
///
/// Not here on purpose: `info` (needs storage; the evaluator owns it), `start`, `end`,
/// `range`, `step` (query-context constants the evaluator folds into numbers).
static TABLE: &[(&str, Implementation)] = &[
    ("abs", math::abs),
    ("absent", labels::absent),
    ("absent_over_time", over_time::absent_over_time),
    ("acos", math::acos),
    ("acosh", math::acosh),
    ("asin", math::asin),
    ("asinh", math::asinh),
    ("atan", math::atan),
    ("atanh", math::atanh),
    ("avg_over_time", over_time::avg_over_time),
    ("ceil", math::ceil),
    ("changes", rate::changes),
    ("clamp", math::clamp),
    ("clamp_max", math::clamp_max),
    ("clamp_min", math::clamp_min),
    ("cos", math::cos),
    ("cosh", math::cosh),
    ("count_over_time", over_time::count_over_time),
    ("day_of_month", date::day_of_month),
    ("day_of_week", date::day_of_week),
    ("day_of_year", date::day_of_year),
    ("days_in_month", date::days_in_month),
    ("deg", math::deg),
    ("delta", rate::delta),
    ("deriv", rate::deriv),
    (
        "double_exponential_smoothing",
        rate::double_exponential_smoothing,
    ),
    ("exp", math::exp),
    ("first_over_time", over_time::first_over_time),
    ("floor", math::floor),
    ("histogram_avg", histogram::histogram_avg),
    ("histogram_count", histogram::histogram_count),
    ("histogram_fraction", histogram::histogram_fraction),
    ("histogram_quantile", histogram::histogram_quantile),
    ("histogram_quantiles", histogram::histogram_quantiles),
    ("histogram_stddev", histogram::histogram_stddev),
    ("histogram_stdvar", histogram::histogram_stdvar),
    ("histogram_sum", histogram::histogram_sum),
    ("hour", date::hour),
    ("idelta", rate::idelta),
    ("increase", rate::increase),
    ("irate", rate::irate),
    ("label_join", labels::label_join),
    ("label_replace", labels::label_replace),
    ("last_over_time", over_time::last_over_time),
    ("ln", math::ln),
    ("log10", math::log10),
    ("log2", math::log2),
    ("mad_over_time", over_time::mad_over_time),
    ("max_of", math::max_of),
    ("max_over_time", over_time::max_over_time),
    ("min_of", math::min_of),
    ("min_over_time", over_time::min_over_time),
    ("minute", date::minute),
    ("month", date::month),
    ("pi", math::pi),
    ("predict_linear", rate::predict_linear),
    ("present_over_time", over_time::present_over_time),
    ("quantile_over_time", over_time::quantile_over_time),
    ("rad", math::rad),
    ("rate", rate::rate),
    ("resets", rate::resets),
    ("round", math::round),
    ("scalar", math::scalar),
    ("sgn", math::sgn),
    ("sin", math::sin),
    ("sinh", math::sinh),
    ("sort", labels::sort),
    ("sort_by_label", labels::sort_by_label),
    ("sort_by_label_desc", labels::sort_by_label_desc),
    ("sort_desc", labels::sort_desc),
    ("sqrt", math::sqrt),
    ("start_timestamp", math::start_timestamp),
    ("stddev_over_time", over_time::stddev_over_time),
    ("stdvar_over_time", over_time::stdvar_over_time),
    ("sum_over_time", over_time::sum_over_time),
    ("tan", math::tan),
    ("tanh", math::tanh),
    ("time", math::time),
    ("timestamp", math::timestamp),
    ("ts_of_first_over_time", over_time::ts_of_first_over_time),
    ("ts_of_last_over_time", over_time::ts_of_last_over_time),
    ("ts_of_max_over_time", over_time::ts_of_max_over_time),
    ("ts_of_min_over_time", over_time::ts_of_min_over_time),
    ("vector", math::vector),
    ("year", date::year),
];

fn lookup(name: &str) -> Option<Implementation> {
    TABLE
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| TABLE[i].1)
}

/// Typed access to the evaluated arguments. The parser has checked the types, so a
/// mismatch means the evaluator and this library disagree: an error, never a panic.
impl<'a> FnCall<'a> {
    fn arg(&self, i: usize) -> Result<&FnArg<'a>, FnError> {
        self.args.get(i).ok_or_else(|| self.bad_arg(i, "present"))
    }

    fn scalar(&self, i: usize) -> Result<f64, FnError> {
        match self.arg(i)? {
            FnArg::Scalar(v) => Ok(*v),
            _ => Err(self.bad_arg(i, "a scalar")),
        }
    }

    fn string(&self, i: usize) -> Result<&'a str, FnError> {
        match self.arg(i)? {
            FnArg::String(s) => Ok(s),
            _ => Err(self.bad_arg(i, "a string")),
        }
    }

    fn vector(&self, i: usize) -> Result<&'a [InstantSample], FnError> {
        match self.arg(i)? {
            FnArg::Vector(v) => Ok(v),
            _ => Err(self.bad_arg(i, "an instant vector")),
        }
    }

    fn matrix(&self, i: usize) -> Result<&'a [SeriesWindow<'a>], FnError> {
        match self.arg(i)? {
            FnArg::Matrix(m) => Ok(m),
            _ => Err(self.bad_arg(i, "a range vector")),
        }
    }

    fn bad_arg(&self, i: usize, expected: &str) -> FnError {
        FnError::Execution(format!(
            "function {}: argument {} must be {expected}",
            self.name,
            i + 1
        ))
    }

    /// The metric name an annotation may mention: only with delayed name removal, as in
    /// Prometheus (without it the name is already gone when the annotation is made).
    fn annotation_metric_name<'l>(&self, labels: &'l Labels) -> &'l str {
        if self.delayed_name_removal {
            labels.metric_name().unwrap_or("")
        } else {
            ""
        }
    }
}

/// Applies `f` to every sample of the instant vector in argument `i`, dropping the
/// metric name (the skeleton of abs, ln, clamp, round, day_of_week(v) ...).
fn map_floats(call: &FnCall<'_>, i: usize, f: impl Fn(f64) -> f64) -> Result<FnOutput, FnError> {
    let input = call.vector(i)?;
    // Float functions leave native histograms out, as Prometheus does.
    let out = input
        .iter()
        .filter(|s| s.h.is_none())
        .map(|s| InstantSample {
            labels: s.labels.clone(),
            t: call.ts,
            v: f(s.v),
            h: None,
            drop_name: true,
        })
        .collect();
    Ok(FnOutput::Vector(out))
}

/// What a range function computed for one series: a float or a native histogram.
pub(crate) enum SeriesValue {
    Float(f64),
    Histogram(FloatHistogram),
}

/// `per_series` for functions defined on native histograms too: every series with a
/// point of either kind in the window is shown to `f`.
fn per_series_any(
    call: &mut FnCall<'_>,
    i: usize,
    names: NamePolicy,
    mut f: impl FnMut(&SeriesWindow<'_>, &mut Annotations) -> Option<SeriesValue>,
) -> Result<FnOutput, FnError> {
    let matrix = call.matrix(i)?;
    let mut out = Vec::with_capacity(matrix.len());
    for series in matrix
        .iter()
        .filter(|s| !s.points.is_empty() || !s.histograms.is_empty())
    {
        if call.stop.is_raised() {
            return Err(FnError::Stopped);
        }
        let (v, h) = match f(series, call.annotations) {
            Some(SeriesValue::Float(v)) => (v, None),
            Some(SeriesValue::Histogram(h)) => (0.0, Some(Arc::new(h))),
            None => continue,
        };
        out.push(InstantSample {
            labels: series.labels.clone(),
            t: call.ts,
            v,
            h,
            drop_name: names == NamePolicy::Drop || series.drop_name,
        });
    }
    Ok(FnOutput::Vector(out))
}

/// Whether a range function's output keeps the input series' metric name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NamePolicy {
    /// The usual case: the result is a new quantity, the name goes.
    Drop,
    /// last_over_time and first_over_time act like an offset: keep the name unless the
    /// input (e.g. a subquery) already asked to drop it.
    KeepInput,
}

/// Runs `f` over the points of each series of the range vector in argument `i` and emits
/// one sample per series for which `f` returns a value. Series without points in the
/// window produce nothing and are not shown to `f`, as in Prometheus.
fn per_series(
    call: &mut FnCall<'_>,
    i: usize,
    names: NamePolicy,
    mut f: impl FnMut(&SeriesWindow<'_>, &mut Annotations) -> Option<f64>,
) -> Result<FnOutput, FnError> {
    let matrix = call.matrix(i)?;
    let mut out = Vec::with_capacity(matrix.len());
    for series in matrix.iter().filter(|s| !s.points.is_empty()) {
        // One relaxed load per series: less than the label clone below.
        if call.stop.is_raised() {
            return Err(FnError::Stopped);
        }
        if let Some(v) = f(series, call.annotations) {
            if !series.histograms.is_empty() {
                call.annotations.info(format!(
                    "PromQL info: ignored histograms in a range containing both floats and \
                     histograms for metric name {}",
                    gofmt::go_quote(series.labels.metric_name().unwrap_or(""))
                ));
            }
            out.push(InstantSample {
                labels: series.labels.clone(),
                t: call.ts,
                v,
                h: None,
                drop_name: names == NamePolicy::Drop || series.drop_name,
            });
        }
    }
    Ok(FnOutput::Vector(out))
}

/// Annotation texts, in Prometheus's wording (util/annotations), without the position
/// suffix Prometheus appends when it renders them for an HTTP response.
mod annotation {
    use super::gofmt::{go_g, go_quote};

    pub fn invalid_quantile(q: f64) -> String {
        format!(
            "PromQL warning: quantile value should be between 0 and 1, got {}",
            go_g(q)
        )
    }

    pub fn possible_non_counter(metric_name: &str) -> String {
        format!(
            "PromQL info: metric might not be a counter, name does not end in \
             _total/_sum/_count/_bucket: {}",
            go_quote(metric_name)
        )
    }

    pub fn bad_bucket_label(metric_name: &str, le: &str) -> String {
        with_metric_name(
            format!(
                "PromQL warning: bucket label \"le\" is missing or has a malformed value of {}",
                go_quote(le)
            ),
            metric_name,
        )
    }

    pub fn mixed_classic_native(metric_name: &str) -> String {
        with_metric_name(
            "PromQL warning: vector contains a mix of classic and native histograms".to_string(),
            metric_name,
        )
    }

    pub fn forced_monotonicity(metric_name: &str) -> String {
        with_metric_name(
            "PromQL info: input to histogram_quantile needed to be fixed for monotonicity \
             (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile)"
                .to_string(),
            metric_name,
        )
    }

    /// Prometheus's `maybeAddMetricName`.
    fn with_metric_name(mut msg: String, metric_name: &str) -> String {
        if !metric_name.is_empty() {
            msg.push_str(" for metric name ");
            msg.push_str(&go_quote(metric_name));
        }
        msg
    }
}

#[cfg(test)]
mod test_support {
    //! Builders shared by the families' unit tests.

    use super::*;
    use crate::model::Sample;
    use crate::promql::value::RangeSeries;

    pub fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    pub fn sample(pairs: &[(&str, &str)], v: f64) -> InstantSample {
        InstantSample {
            labels: labels(pairs),
            t: 0,
            v,
            h: None,
            drop_name: false,
        }
    }

    /// A series with points at `(seconds, value)`.
    pub fn series(pairs: &[(&str, &str)], points: &[(f64, f64)]) -> RangeSeries {
        RangeSeries {
            labels: labels(pairs),
            points: points
                .iter()
                .map(|&(t, v)| Sample::new((t * 1000.0) as i64, v))
                .collect(),
            histograms: Vec::new(),
            drop_name: false,
        }
    }

    /// The series of a range vector as the windows a function reads.
    pub fn windows(m: &[RangeSeries]) -> Vec<SeriesWindow<'_>> {
        m.iter().map(RangeSeries::window).collect()
    }

    /// Evaluates `name` at `ts_ms` with a window `(ts_ms - range_ms, ts_ms]`.
    pub fn eval_with(
        name: &str,
        args: Vec<FnArg<'_>>,
        arg_exprs: &[Box<Expr>],
        ts_ms: i64,
        range_ms: i64,
        delayed_name_removal: bool,
    ) -> (Result<FnOutput, FnError>, Annotations) {
        let mut annotations = Annotations::default();
        let out = call(FnCall {
            name,
            args,
            arg_exprs,
            ts: ts_ms,
            window_start: ts_ms - range_ms,
            window_end: ts_ms,
            delayed_name_removal,
            annotations: &mut annotations,
            stop: &StopFlag::default(),
        });
        (out, annotations)
    }

    pub fn eval(name: &str, args: Vec<FnArg<'_>>, ts_ms: i64, range_ms: i64) -> FnOutput {
        let (out, _) = eval_with(name, args, &[], ts_ms, range_ms, false);
        out.expect("function call failed")
    }

    /// The output vector's values, in order.
    pub fn out_values(out: &FnOutput) -> Vec<f64> {
        match out {
            FnOutput::Vector(v) => v.iter().map(|s| s.v).collect(),
            FnOutput::Scalar(v) => vec![*v],
        }
    }

    pub fn out_vector(out: FnOutput) -> Vec<InstantSample> {
        match out {
            FnOutput::Vector(v) => v,
            FnOutput::Scalar(v) => panic!("expected a vector, got scalar {v}"),
        }
    }

    /// Float equality that treats NaN as equal to NaN and tolerates rounding.
    pub fn assert_close(got: f64, want: f64) {
        let ok = (got.is_nan() && want.is_nan())
            || got == want
            || ((got - want).abs() <= 1e-9 * want.abs().max(1.0));
        assert!(ok, "got {got}, want {want}");
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(TABLE.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn every_prometheus_function_the_parser_knows_is_dispatched() {
        // Functions the evaluator owns (info, query-context constants) are excluded;
        // everything else the parser accepts must have an implementation here.
        let evaluator_owned = ["info", "start", "end", "range", "step"];
        for name in TABLE.iter().map(|(n, _)| *n) {
            let err = promql_parser::parser::parse(&format!("{name}()")).err();
            let unknown = format!("unknown function with name '{name}'");
            assert!(
                !err.is_some_and(|e| e.contains(&unknown)),
                "{name} is not known to the parser"
            );
        }
        for name in evaluator_owned {
            assert!(!is_supported(name));
        }
    }

    #[test]
    fn unknown_function_is_unsupported() {
        let (out, _) = eval_with("xrate", vec![], &[], 0, 0, false);
        assert!(matches!(out, Err(FnError::Unsupported(_))));
    }

    #[test]
    fn wrong_argument_kind_is_an_error_not_a_panic() {
        let (out, _) = eval_with("abs", vec![FnArg::Scalar(1.0)], &[], 0, 0, false);
        assert!(matches!(out, Err(FnError::Execution(_))));
        let (out, _) = eval_with("rate", vec![], &[], 0, 0, false);
        assert!(matches!(out, Err(FnError::Execution(_))));
    }

    #[test]
    fn quantile_public_contract() {
        assert!(quantile(0.5, &mut []).is_nan());
        assert_eq!(quantile(-1.0, &mut [1.0]), f64::NEG_INFINITY);
        assert_eq!(quantile(2.0, &mut [1.0]), f64::INFINITY);
        assert_eq!(quantile(0.5, &mut [3.0, 1.0, 2.0, 4.0]), 2.5);
    }
}
