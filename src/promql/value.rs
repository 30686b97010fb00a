//! Values the PromQL evaluator passes around and returns.
//!
//! Owns: instant samples, range series, borrowed series windows, query results and annotations (warnings and
//! infos). Shared by the evaluator (`engine`), the function library (`functions`) and the
//! HTTP layer that renders results. Calls only `model`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::model::histogram::FloatHistogram;
use crate::model::{Labels, Sample};

/// A native histogram at a time. PromQL computes on float histograms only, as
/// Prometheus's engine does: integer histograms are converted when they are loaded.
/// Shared (`Arc`) because a histogram is large and selectors hand the same one to every
/// step that sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct HPoint {
    pub t: i64,
    pub h: Arc<FloatHistogram>,
}

/// One element of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct InstantSample {
    pub labels: Labels,
    /// For a bare vector selector: the timestamp of the stored sample that was picked
    /// (so `timestamp()` can report it). Everywhere else: the evaluation time.
    pub t: i64,
    /// The float value; 0 when the sample is a native histogram (`h`).
    pub v: f64,
    /// The sample's native histogram, if it is one (then `v` is meaningless).
    pub h: Option<Arc<FloatHistogram>>,
    /// Set when an operation dropped the metric name. The evaluator removes `__name__`
    /// from such samples (at once, or at the end with delayed name removal).
    pub drop_name: bool,
}

/// One series of a range vector (or of a range query's matrix result).
#[derive(Clone, Debug, PartialEq)]
pub struct RangeSeries {
    pub labels: Labels,
    /// Float points in time order.
    pub points: Vec<Sample>,
    /// Native histogram points in time order (a series may hold both kinds, at
    /// different times).
    pub histograms: Vec<HPoint>,
    pub drop_name: bool,
}

impl RangeSeries {
    /// The whole series as a window a function can read.
    pub fn window(&self) -> SeriesWindow<'_> {
        SeriesWindow {
            labels: &self.labels,
            points: &self.points,
            histograms: &self.histograms,
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
    pub histograms: &'a [HPoint],
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

/// Which steps of a range query raised each annotation, as inclusive runs of steps in
/// time order: what the result cache keeps so that a window of cached steps carries
/// exactly the annotations its steps raised (ADR 0024).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepAnnotations {
    pub warnings: BTreeMap<String, Vec<(i64, i64)>>,
    pub infos: BTreeMap<String, Vec<(i64, i64)>>,
}

impl StepAnnotations {
    /// Notes that the step at `t` (steps `step` apart) raised `raised`.
    pub fn record(&mut self, t: i64, step: i64, raised: &Annotations) {
        for (into, from) in [
            (&mut self.warnings, &raised.warnings),
            (&mut self.infos, &raised.infos),
        ] {
            for message in from {
                let runs = into.entry(message.clone()).or_default();
                match runs.last_mut() {
                    Some(run) if run.1.checked_add(step) == Some(t) => run.1 = t,
                    _ => runs.push((t, t)),
                }
            }
        }
    }

    /// The annotations raised by any step in `[from, to]`.
    pub fn within(&self, from: i64, to: i64) -> Annotations {
        let pick = |m: &BTreeMap<String, Vec<(i64, i64)>>| {
            m.iter()
                .filter(|(_, runs)| runs.iter().any(|&(a, b)| a <= to && b >= from))
                .map(|(message, _)| message.clone())
                .collect()
        };
        Annotations {
            warnings: pick(&self.warnings),
            infos: pick(&self.infos),
        }
    }

    /// The runs clipped to `[from, to]`.
    pub fn clipped(&self, from: i64, to: i64) -> StepAnnotations {
        let clip = |m: &BTreeMap<String, Vec<(i64, i64)>>| {
            m.iter()
                .filter_map(|(message, runs)| {
                    let kept: Vec<(i64, i64)> = runs
                        .iter()
                        .filter(|&&(a, b)| a <= to && b >= from)
                        .map(|&(a, b)| (a.max(from), b.min(to)))
                        .collect();
                    (!kept.is_empty()).then(|| (message.clone(), kept))
                })
                .collect()
        };
        StepAnnotations {
            warnings: clip(&self.warnings),
            infos: clip(&self.infos),
        }
    }

    /// Appends the runs of `later`, whose steps all follow this one's.
    pub fn extend(&mut self, later: StepAnnotations) {
        for (into, from) in [
            (&mut self.warnings, later.warnings),
            (&mut self.infos, later.infos),
        ] {
            for (message, runs) in from {
                into.entry(message).or_default().extend(runs);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.warnings.is_empty() && self.infos.is_empty()
    }

    /// Estimated heap bytes, for the cache's budget.
    pub fn bytes(&self) -> usize {
        self.warnings
            .iter()
            .chain(self.infos.iter())
            .map(|(m, runs)| m.len() + 64 + runs.len() * 16)
            .sum()
    }
}
