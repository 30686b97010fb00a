//! Values the PromQL evaluator passes around and returns.
//!
//! Owns: instant samples, range series, borrowed series windows, query results and annotations (warnings and
//! infos). Shared by the evaluator (`engine`), the function library (`functions`) and the
//! HTTP layer that renders results. Calls only `model`.

use std::collections::BTreeSet;

use crate::model::{Labels, Sample};

/// One element of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct InstantSample {
    pub labels: Labels,
    /// For a bare vector selector: the timestamp of the stored sample that was picked
    /// (so `timestamp()` can report it). Everywhere else: the evaluation time.
    pub t: i64,
    pub v: f64,
    /// Set when an operation dropped the metric name. The evaluator removes `__name__`
    /// from such samples (at once, or at the end with delayed name removal).
    pub drop_name: bool,
}

/// One series of a range vector (or of a range query's matrix result).
#[derive(Clone, Debug, PartialEq)]
pub struct RangeSeries {
    pub labels: Labels,
    pub points: Vec<Sample>,
    pub drop_name: bool,
}

impl RangeSeries {
    /// The whole series as a window a function can read.
    pub fn window(&self) -> SeriesWindow<'_> {
        SeriesWindow {
            labels: &self.labels,
            points: &self.points,
            drop_name: self.drop_name,
        }
    }
}

/// One series of a range-vector argument at one step: the points in the window,
/// borrowed from the loaded series (or a subquery's results) rather than copied.
#[derive(Clone, Copy, Debug)]
pub struct SeriesWindow<'a> {
    pub labels: &'a Labels,
    pub points: &'a [Sample],
    pub drop_name: bool,
}

/// The result of a query.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryValue {
    Scalar { t: i64, v: f64 },
    String { t: i64, s: String },
    Vector(Vec<InstantSample>),
    Matrix(Vec<RangeSeries>),
}

impl QueryValue {
    /// Prometheus's name for the result type in the HTTP API.
    pub fn type_name(&self) -> &'static str {
        match self {
            QueryValue::Scalar { .. } => "scalar",
            QueryValue::String { .. } => "string",
            QueryValue::Vector(_) => "vector",
            QueryValue::Matrix(_) => "matrix",
        }
    }
}

/// Warnings and infos collected during evaluation, deduplicated, in Prometheus's wording.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Annotations {
    pub warnings: BTreeSet<String>,
    pub infos: BTreeSet<String>,
}

impl Annotations {
    pub fn warn(&mut self, msg: impl Into<String>) {
        self.warnings.insert(msg.into());
    }

    pub fn info(&mut self, msg: impl Into<String>) {
        self.infos.insert(msg.into());
    }

    pub fn merge(&mut self, other: Annotations) {
        self.warnings.extend(other.warnings);
        self.infos.extend(other.infos);
    }

    pub fn is_empty(&self) -> bool {
        self.warnings.is_empty() && self.infos.is_empty()
    }
}
