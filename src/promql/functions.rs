//! The PromQL function library (rate, *_over_time, math, label_*, histogram_quantile ...).
//!
//! Owns: what each function computes for one evaluation step. The evaluator (`engine`)
//! evaluates the arguments, cuts range-vector windows, applies offset and `@`, and calls
//! `call` once per step. Functions never remove `__name__` themselves: they set
//! `drop_name` and the evaluator applies it. Calls only `value` and `model`.

use promql_parser::parser::Expr;

use super::value::{Annotations, InstantSample, RangeSeries};

/// One evaluated argument of a function call at one step.
#[derive(Debug)]
pub enum FnArg<'a> {
    Scalar(f64),
    String(&'a str),
    Vector(&'a [InstantSample]),
    /// For each series, the points inside the window `(window_start, window_end]`.
    Matrix(&'a [RangeSeries]),
}

/// Everything one function call at one step may look at.
pub struct FnCall<'a> {
    pub name: &'a str,
    pub args: Vec<FnArg<'a>>,
    /// The unevaluated argument expressions (absent() derives labels from matchers).
    pub arg_exprs: &'a [Expr],
    /// Evaluation time of this step, in milliseconds.
    pub ts: i64,
    /// For a range-vector argument: the window's bounds after offset and `@`, in ms.
    /// `window_end - window_start` is the selector's range.
    pub window_start: i64,
    pub window_end: i64,
    pub annotations: &'a mut Annotations,
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
}

/// Evaluates function `call.name` for one step.
pub fn call(call: FnCall<'_>) -> Result<FnOutput, FnError> {
    let _ = call;
    todo!("promql functions: implemented on the functions branch")
}

/// The q-quantile of `values` (sorted in place), with Prometheus's interpolation rules:
/// no values give NaN, q < 0 gives -Inf, q > 1 gives +Inf.
pub fn quantile(q: f64, values: &mut [f64]) -> f64 {
    let _ = (q, values);
    todo!("implemented on the functions branch")
}
