//! The step evaluator: evaluates one expression at one evaluation timestamp.
//!
//! Owns: instant selectors (lookback, staleness), matrix selectors (left-open windows),
//! offset and `@`, subqueries (steps aligned to absolute multiples of the step), unary
//! minus, function calls (through `functions::call`, once per step), `__name__` removal,
//! sample accounting and timeout checks. Binary operators live in `binary`, aggregations
//! in `aggregate`; an aggregation pushed down to the storage answers from its combined
//! partials (`pushdown`). Reads only the series `plan` loaded; never calls storage.
//!
//! Keeps state across the steps of one query so per-step work stays small: range
//! selectors hand functions borrowed windows (`SeriesWindow`), selectors resume from
//! the previous step's position (`cursor`), and what is derived from a series' labels
//! (name removal, content hash, group keys) is memoised per label set (`memo`); the
//! label sets a node's vector was last proven distinct with are kept, so a step that
//! yields those series again skips the uniqueness check.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hasher};
use std::sync::Arc;
use std::time::Instant;

use promql_parser::parser::{Call, Expr, MatrixSelector, SubqueryExpr, UnaryExpr, VectorSelector};

use crate::model::histogram::CounterResetHint;
use crate::model::{is_stale_nan, Labels, Sample, Series, METRIC_NAME};

use super::aggregate::GroupingMemo;
use super::cursor::{index_after, Cursors};
use super::engine::StopFlag;
use super::functions::{self, FnArg, FnCall, FnError, FnOutput};
use super::memo::{BuildWordHasher, LabelMemo};
use super::plan::{at_ms, duration_ms, offset_ms, LoadedHistograms, LoadedSeries, QueryTimes};
use super::pushdown::{aggregate_key, Pushed, PushedAggregate};
use super::value::{Annotations, HPoint, InstantSample, RangeSeries, SeriesWindow};
use super::{aggregate, binary, EngineOptions, QueryError};

/// The value of an expression at one step.
#[derive(Debug)]
pub(crate) enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<InstantSample>),
    Matrix(Vec<RangeSeries>),
}

pub(crate) const DUPLICATE_LABELSET: &str = "vector cannot contain metrics with the same labelset";

/// An evaluation's contribution to `QueryStats`.
#[derive(Default)]
pub(crate) struct EvalCounters {
    /// Samples the selectors read, summed over every step.
    pub queryable_samples: u64,
    /// The most samples held at once.
    pub peak_samples: usize,
    /// Time spent sorting the result.
    pub result_sort: std::time::Duration,
}

pub(crate) struct Evaluator<'a> {
    data: &'a LoadedSeries,
    pub(crate) times: QueryTimes,
    opts: &'a EngineOptions,
    pub(crate) annotations: Annotations,
    deadline: Instant,
    /// Raised when the query's answer no longer matters (deadline passed, client gone).
    stop: StopFlag,
    /// Samples currently held by the evaluation (Prometheus's `currentSamples`).
    held_samples: usize,
    /// What the evaluation counted for the query's statistics.
    pub(crate) counters: EvalCounters,
    /// Per subquery node: the inner results of its latest window.
    subquery_windows: HashMap<usize, SubqueryWindow>,
    /// Label sets without their metric identity, per input label set.
    identity_removed: LabelMemo<Labels>,
    /// The hash of each label set's content, for the checks that a vector's label sets
    /// are unique.
    content_hashes: LabelMemo<u64>,
    /// Per node: the label sets of its latest vector proven distinct (clones, so their
    /// identities stay theirs). A range query's next step mostly yields the same series
    /// again: a vector whose label sets are, in order, a subsequence of these is
    /// distinct too, found by comparing addresses instead of hashing every step.
    distinct_sets: HashMap<usize, Vec<Labels>, BuildWordHasher>,
    /// Per aggregation node: the group key and group labels of each series.
    groupings: HashMap<usize, GroupingMemo>,
    /// Per selector: where the previous step's windows ended in each loaded series.
    cursors: Cursors,
    /// Aggregations the storage computed (ADR 0029), by node address.
    pushed: &'a Pushed,
}

impl<'a> Evaluator<'a> {
    pub(crate) fn new(
        data: &'a LoadedSeries,
        times: QueryTimes,
        opts: &'a EngineOptions,
        deadline: Instant,
        stop: StopFlag,
        pushed: &'a Pushed,
    ) -> Self {
        Evaluator {
            data,
            times,
            opts,
            annotations: Annotations::default(),
            deadline,
            stop,
            held_samples: 0,
            counters: EvalCounters::default(),
            subquery_windows: HashMap::new(),
            identity_removed: LabelMemo::default(),
            content_hashes: LabelMemo::default(),
            distinct_sets: HashMap::default(),
            groupings: HashMap::new(),
            cursors: Cursors::default(),
            pushed,
        }
    }

    fn pushed_of(
        pushed: &'a Pushed,
        a: &promql_parser::parser::AggregateExpr,
    ) -> Option<&'a PushedAggregate> {
        pushed.get(&aggregate_key(a))
    }

    /// Samples the evaluation holds now.
    pub(crate) fn held_samples(&self) -> usize {
        self.held_samples
    }

    /// A pushed-down aggregation at `ts`: its finished vector, holding what the
    /// evaluation below it would have held, with the annotations that raised.
    fn eval_pushed(&mut self, pushed: &PushedAggregate, ts: i64) -> Result<Value, QueryError> {
        let Some((vector, held, annotations)) = pushed.at(ts) else {
            return Err(QueryError::Execution(format!(
                "a pushed-down aggregation has no result at {ts}"
            )));
        };
        self.annotations.merge(annotations);
        self.hold_samples(held)?;
        let out: Vec<InstantSample> = vector
            .iter()
            .map(|s| InstantSample { t: ts, ..s.clone() })
            .collect();
        self.hold_samples(out.len())?;
        Ok(Value::Vector(out))
    }

    pub(crate) fn delayed_name_removal(&self) -> bool {
        self.opts.delayed_name_removal
    }

    pub(crate) fn is_range_query(&self) -> bool {
        self.times.start != self.times.end
    }

    /// Fails once the deadline has passed or the query was stopped. Reads the clock:
    /// called once per step (of the query or of a subquery).
    pub(crate) fn check_deadline(&self) -> Result<(), QueryError> {
        if Instant::now() >= self.deadline {
            return Err(QueryError::Timeout("expression evaluation".into()));
        }
        self.check_stop()
    }

    /// Fails once the query was stopped (raised at the deadline and when the client
    /// went away). One relaxed atomic load: called per node and per series.
    pub(crate) fn check_stop(&self) -> Result<(), QueryError> {
        check_stop(&self.stop)
    }

    /// Resets the held-sample count (at the start of a top-level step).
    pub(crate) fn set_held_samples(&mut self, n: usize) {
        self.held_samples = n;
    }

    /// Records `n` more samples held in memory; fails past the query's limit.
    pub(crate) fn hold_samples(&mut self, n: usize) -> Result<(), QueryError> {
        self.held_samples = self.held_samples.saturating_add(n);
        self.counters.peak_samples = self.counters.peak_samples.max(self.held_samples);
        if self.held_samples > self.opts.max_samples {
            return Err(QueryError::TooManySamples);
        }
        Ok(())
    }

    /// What the aggregation node at address `node` derived from each series so far.
    pub(crate) fn grouping_memo(&mut self, node: usize) -> &mut GroupingMemo {
        self.groupings.entry(node).or_default()
    }

    /// Marks a sample's metric name as dropped; removes it now unless removal is delayed.
    pub(crate) fn drop_name(&mut self, s: &mut InstantSample) {
        s.drop_name = true;
        if !self.opts.delayed_name_removal {
            self.remove_identity(&mut s.labels);
        }
    }

    /// `remove_metric_identity`, memoised per series: the same input label sets come
    /// back at every step of a range query.
    pub(crate) fn remove_identity(&mut self, labels: &mut Labels) {
        if !labels.is_shared() {
            // Changed in place, no copy: nothing else holds this label set.
            remove_metric_identity(labels);
            return;
        }
        *labels = self.identity_removed.get_or_derive(labels, |l| {
            let mut out = l.clone();
            remove_metric_identity(&mut out);
            out
        });
    }

    /// Applies `drop_name` flags set by a function (at once unless removal is delayed)
    /// and rejects outputs in which two samples share a label set.
    pub(crate) fn settle_vector(
        &mut self,
        node: usize,
        v: &mut [InstantSample],
    ) -> Result<(), QueryError> {
        if self.opts.delayed_name_removal {
            return Ok(());
        }
        for s in v.iter_mut() {
            if s.drop_name {
                self.remove_identity(&mut s.labels);
            }
        }
        self.check_unique(node, v)
    }

    /// `check_unique_labelsets` for the vector node `node` (its address) yields: free when
    /// its label sets are, in order, among those of its latest vector proven distinct;
    /// otherwise through per-series content hashes: a vector whose hashes are all
    /// distinct has distinct label sets; on a repeated hash the exact check decides.
    pub(crate) fn check_unique(
        &mut self,
        node: usize,
        v: &[InstantSample],
    ) -> Result<(), QueryError> {
        if v.len() < 2 {
            return Ok(());
        }
        if let Some(proven) = self.distinct_sets.get(&node) {
            if is_subsequence_by_identity(v, proven) {
                return Ok(());
            }
        }
        let mut seen = HashSet::with_capacity_and_hasher(v.len(), BuildWordHasher::default());
        for s in v {
            let hash = self
                .content_hashes
                .get_or_derive(&s.labels, |l| hash_labels_where(l, |_| true));
            if !seen.insert(hash) {
                check_unique_labelsets(v)?;
                break;
            }
        }
        self.distinct_sets
            .insert(node, v.iter().map(|s| s.labels.clone()).collect());
        Ok(())
    }

    pub(crate) fn eval(&mut self, expr: &Expr, ts: i64) -> Result<Value, QueryError> {
        self.check_stop()?;
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, ts),
            Expr::Unary(u) => self.eval_unary(u, ts),
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.select_instant(vs, ts)?)),
            Expr::MatrixSelector(ms) => {
                let windows = self.select_range(ms, ts, SampleCount::AllSeries)?;
                Ok(Value::Matrix(windows.iter().map(owned_series).collect()))
            }
            Expr::Subquery(sq) => Ok(Value::Matrix(self.eval_subquery(sq, ts)?)),
            Expr::Binary(b) => binary::eval_binary(self, b, ts),
            Expr::Aggregate(a) => match Self::pushed_of(self.pushed, a) {
                Some(pushed) => self.eval_pushed(pushed, ts),
                None => aggregate::eval_aggregate(self, a, ts),
            },
            Expr::Call(c) => self.eval_call(c, ts),
            Expr::Extension(_) => Err(QueryError::Execution(
                "extension expressions are not supported".into(),
            )),
        }
    }

    /// Evaluates an expression that must yield an instant vector.
    pub(crate) fn eval_vector(
        &mut self,
        expr: &Expr,
        ts: i64,
    ) -> Result<Vec<InstantSample>, QueryError> {
        match self.eval(expr, ts)? {
            Value::Vector(v) => Ok(v),
            other => Err(type_error("instant vector", &other)),
        }
    }

    /// Evaluates an expression that must yield a scalar.
    pub(crate) fn eval_scalar(&mut self, expr: &Expr, ts: i64) -> Result<f64, QueryError> {
        match self.eval(expr, ts)? {
            Value::Scalar(v) => Ok(v),
            other => Err(type_error("scalar", &other)),
        }
    }

    fn eval_unary(&mut self, u: &UnaryExpr, ts: i64) -> Result<Value, QueryError> {
        match self.eval(&u.expr, ts)? {
            Value::Scalar(v) => Ok(Value::Scalar(-v)),
            Value::Vector(mut v) => {
                for s in v.iter_mut() {
                    s.v = -s.v;
                    if let Some(h) = s.h.as_mut() {
                        Arc::make_mut(h).mul(-1.0);
                    }
                    self.drop_name(s);
                }
                if !self.opts.delayed_name_removal {
                    self.check_unique(u as *const UnaryExpr as usize, &v)?;
                }
                Ok(Value::Vector(v))
            }
            other => Err(type_error("scalar or instant vector", &other)),
        }
    }

    /// The time a selector or subquery reads at when its parent is evaluated at `ts`.
    fn reference_time(
        &self,
        at: &Option<promql_parser::parser::AtModifier>,
        offset: &Option<promql_parser::parser::Offset>,
        ts: i64,
    ) -> i64 {
        at_ms(at, &self.times)
            .unwrap_or(ts)
            .saturating_sub(offset_ms(offset))
    }

    /// An instant vector selector: per series, the newest sample in `(t - lookback, t]`,
    /// unless that sample is a staleness marker.
    fn select_instant(
        &mut self,
        vs: &VectorSelector,
        ts: i64,
    ) -> Result<Vec<InstantSample>, QueryError> {
        let t = self.reference_time(&vs.at, &vs.offset, ts);
        let oldest = t.saturating_sub(self.times.lookback);
        let mut out = Vec::new();
        let loaded = self.data.get(vs);
        let hints = self.cursors.hints(LoadedSeries::key(vs), loaded.len());
        for (series, hint) in loaded.iter().zip(hints.iter_mut()) {
            check_stop(&self.stop)?;
            let idx = index_after(&series.samples, t, hint);
            if idx == 0 {
                continue;
            }
            let sample = series.samples[idx - 1];
            if sample.t <= oldest || is_stale_nan(sample.v) {
                continue;
            }
            out.push(InstantSample {
                labels: series.labels.clone(),
                t: sample.t,
                v: sample.v,
                h: None,
                drop_name: false,
            });
        }
        let histograms = self.data.histograms(vs);
        if !histograms.is_empty() {
            merge_instant_histograms(&mut out, loaded, histograms, t, oldest);
        }
        self.counters.queryable_samples += out.len() as u64;
        self.hold_samples(out.len())?;
        Ok(out)
    }

    /// A range vector selector: per series, the samples in `(t - range, t]`, borrowed
    /// from the loaded series (`plan` left out the staleness markers of range selectors).
    fn select_range(
        &mut self,
        ms: &MatrixSelector,
        ts: i64,
        count: SampleCount,
    ) -> Result<Vec<SeriesWindow<'a>>, QueryError> {
        let t = self.reference_time(&ms.vs.at, &ms.vs.offset, ts);
        let oldest = t.saturating_sub(duration_ms(&ms.range));
        let data: &'a LoadedSeries = self.data;
        let loaded = data.get(&ms.vs);
        let hints = self
            .cursors
            .hints(LoadedSeries::key(&ms.vs), 2 * loaded.len());
        let mut out = Vec::new();
        let mut points_held = 0;
        for (series, hint) in loaded.iter().zip(hints.chunks_exact_mut(2)) {
            check_stop(&self.stop)?;
            let from = index_after(&series.samples, oldest, &mut hint[0]);
            let to = index_after(&series.samples, t, &mut hint[1]);
            if from >= to {
                continue;
            }
            let points = &series.samples[from..to];
            self.counters.queryable_samples += points.len() as u64;
            points_held = match count {
                SampleCount::AllSeries => points_held + points.len(),
                SampleCount::OneSeriesAtATime => points_held.max(points.len()),
            };
            out.push(SeriesWindow {
                labels: &series.labels,
                points,
                histograms: &[],
                drop_name: false,
            });
        }
        let histograms = data.histograms(&ms.vs);
        for series in histograms {
            check_stop(&self.stop)?;
            let from = series.points.partition_point(|p| p.t <= oldest);
            let to = series.points.partition_point(|p| p.t <= t);
            if from >= to {
                continue;
            }
            let window = &series.points[from..to];
            self.counters.queryable_samples += window.len() as u64;
            points_held = match count {
                SampleCount::AllSeries => points_held + window.len(),
                SampleCount::OneSeriesAtATime => points_held.max(window.len()),
            };
            match out.binary_search_by(|w| w.labels.cmp(&series.labels)) {
                Ok(i) => out[i].histograms = window,
                Err(i) => out.insert(
                    i,
                    SeriesWindow {
                        labels: &series.labels,
                        points: &[],
                        histograms: window,
                        drop_name: false,
                    },
                ),
            }
        }
        self.hold_samples(points_held)?;
        Ok(out)
    }

    /// A subquery: the inner expression evaluated at every multiple of the step inside
    /// `(t - range, t]`, gathered into one series per label set. Inner results are
    /// memoised per subquery node: consecutive outer steps share most inner steps.
    fn eval_subquery(
        &mut self,
        sq: &SubqueryExpr,
        ts: i64,
    ) -> Result<Vec<RangeSeries>, QueryError> {
        let t = self.reference_time(&sq.at, &sq.offset, ts);
        let step = sq
            .step
            .as_ref()
            .map(duration_ms)
            .unwrap_or(self.times.default_subquery_step)
            .max(1);
        let oldest = t.saturating_sub(duration_ms(&sq.range));
        let mut first = oldest.div_euclid(step).saturating_mul(step);
        if first <= oldest {
            first = first.saturating_add(step);
        }
        let key = sq as *const SubqueryExpr as usize;
        let mut window = self.subquery_windows.remove(&key).unwrap_or_default();
        let result = self.fill_subquery_window(sq, &mut window, first, t, step);
        let out = result.map(|()| window.series());
        self.subquery_windows.insert(key, window);
        let out = out?;
        let points: usize = out.iter().map(|s| s.points.len()).sum();
        self.hold_samples(points)?;
        Ok(out)
    }

    /// Makes `window` hold exactly the inner steps `first, first + step, ..., <= last`,
    /// evaluating only those not already there.
    fn fill_subquery_window(
        &mut self,
        sq: &SubqueryExpr,
        window: &mut SubqueryWindow,
        first: i64,
        last: i64,
        step: i64,
    ) -> Result<(), QueryError> {
        let held_before = self.held_samples;
        let mut inner_t = window.advance_to(first);
        while inner_t <= last {
            self.check_deadline()?;
            let samples = match self.eval(&sq.expr, inner_t)? {
                Value::Scalar(v) => vec![InstantSample {
                    labels: Labels::empty(),
                    t: inner_t,
                    v,
                    h: None,
                    drop_name: false,
                }],
                Value::Vector(v) => v,
                other => return Err(type_error("scalar or instant vector", &other)),
            };
            window.push_step(inner_t, samples);
            // The window's points are held until the subquery's parent consumes them:
            // a long window at a fine step must hit the sample limit, not memory.
            self.held_samples = held_before;
            self.hold_samples(window.points)?;
            match inner_t.checked_add(step) {
                Some(next) => inner_t = next,
                None => break,
            }
        }
        window.next_step = Some(inner_t);
        self.held_samples = held_before;
        Ok(())
    }

    /// `start()`, `end()`, `step()` and `range()`: constants of the query, in seconds.
    fn query_context_function(&self, name: &str) -> Option<f64> {
        let t = &self.times;
        let ms = match name {
            "start" => t.start,
            "end" => t.end,
            "step" if t.start != t.end => t.step,
            "step" => 0,
            "range" => t.end.saturating_sub(t.start),
            _ => return None,
        };
        Some(ms as f64 / 1000.0)
    }

    fn eval_call(&mut self, call: &Call, ts: i64) -> Result<Value, QueryError> {
        let name = call.func.name;
        if call.args.args.is_empty() {
            if let Some(v) = self.query_context_function(name) {
                return Ok(Value::Scalar(v));
            }
        }
        let mut values = Vec::with_capacity(call.args.args.len());
        let mut window = (ts, ts);
        // The range-vector argument (at most one): a subquery's series, or the windows
        // of loaded series.
        let mut subquery_series: Vec<RangeSeries> = Vec::new();
        let mut windows: Vec<SeriesWindow<'_>> = Vec::new();
        for arg in &call.args.args {
            let value = match unwrap_parens(arg) {
                Expr::MatrixSelector(ms) => {
                    let t = self.reference_time(&ms.vs.at, &ms.vs.offset, ts);
                    window = (t.saturating_sub(duration_ms(&ms.range)), t);
                    windows = self.select_range(ms, ts, SampleCount::OneSeriesAtATime)?;
                    Value::Matrix(Vec::new())
                }
                Expr::Subquery(sq) => {
                    let t = self.reference_time(&sq.at, &sq.offset, ts);
                    window = (t.saturating_sub(duration_ms(&sq.range)), t);
                    subquery_series = self.eval_subquery(sq, ts)?;
                    Value::Matrix(Vec::new())
                }
                Expr::VectorSelector(_) if name == "timestamp" => self.eval(arg, ts)?,
                _ => match self.eval(arg, ts)? {
                    // Only a bare selector reports its samples' own timestamps.
                    Value::Vector(mut v) => {
                        v.iter_mut().for_each(|s| s.t = ts);
                        Value::Vector(v)
                    }
                    other => other,
                },
            };
            values.push(value);
        }
        self.annotate_call(name);
        if !subquery_series.is_empty() {
            windows = subquery_series.iter().map(RangeSeries::window).collect();
        }
        let args = values
            .iter()
            .map(|v| match v {
                Value::Scalar(f) => FnArg::Scalar(*f),
                Value::String(s) => FnArg::String(s.as_str()),
                Value::Vector(v) => FnArg::Vector(v.as_slice()),
                // Only a selector or subquery argument is a range vector.
                Value::Matrix(_) => FnArg::Matrix(windows.as_slice()),
            })
            .collect();
        let output = functions::call(FnCall {
            name,
            args,
            arg_exprs: call.args.args.as_slice(),
            ts,
            window_start: window.0,
            window_end: window.1,
            delayed_name_removal: self.opts.delayed_name_removal,
            annotations: &mut self.annotations,
            stop: &self.stop,
        })
        .map_err(|e| match e {
            FnError::Unsupported(m) | FnError::Execution(m) => QueryError::Execution(m),
            FnError::Stopped => QueryError::Timeout("expression evaluation".into()),
        })?;
        match output {
            FnOutput::Scalar(v) => Ok(Value::Scalar(v)),
            FnOutput::Vector(mut v) => {
                v.iter_mut().for_each(|s| s.t = ts);
                self.settle_vector(call as *const Call as usize, &mut v)?;
                self.hold_samples(v.len())?;
                Ok(Value::Vector(v))
            }
        }
    }

    /// Annotations Prometheus's evaluator (not the function itself) raises for a call.
    /// (The non-counter info of rate/increase is the function library's.)
    fn annotate_call(&mut self, name: &str) {
        if matches!(
            name,
            "sort" | "sort_desc" | "sort_by_label" | "sort_by_label_desc"
        ) && self.is_range_query()
        {
            self.annotations.warn(
                "PromQL warning: sort is ineffective for range queries since results are always ordered by labels",
            );
        }
    }
}

/// How a range selector's samples count against the query's sample limit.
#[derive(Clone, Copy)]
enum SampleCount {
    /// The whole matrix is the result (a range vector returned by the query).
    AllSeries,
    /// A function consumes the matrix: Prometheus feeds it one series at a time, so
    /// only the largest window counts.
    OneSeriesAtATime,
}

/// The inner results of one subquery node over its latest window, kept per series so an
/// outer step only evaluates the inner steps it does not share with the previous one.
#[derive(Default)]
struct SubqueryWindow {
    /// Evaluated inner steps are those in `[covered_from, next_step)`.
    covered_from: i64,
    /// The next inner step not yet evaluated (None before the first evaluation).
    next_step: Option<i64>,
    series: Vec<WindowSeries>,
    index: HashMap<Labels, usize>,
    /// Points in all of `series`.
    points: usize,
}

struct WindowSeries {
    labels: Labels,
    drop_name: bool,
    points: VecDeque<Sample>,
    histograms: VecDeque<HPoint>,
}

impl SubqueryWindow {
    /// Moves the window to start at `first`: keeps the evaluated steps it still covers
    /// and returns the first step that must be evaluated. A window that moves backwards
    /// or jumps past everything evaluated starts afresh.
    fn advance_to(&mut self, first: i64) -> i64 {
        match self.next_step {
            Some(next) if self.covered_from <= first && first < next => {
                for s in &mut self.series {
                    while s.points.front().is_some_and(|p| p.t < first) {
                        s.points.pop_front();
                        self.points -= 1;
                    }
                    while s.histograms.front().is_some_and(|p| p.t < first) {
                        s.histograms.pop_front();
                        self.points -= 1;
                    }
                }
                self.covered_from = first;
                next
            }
            _ => {
                for s in &mut self.series {
                    s.points.clear();
                    s.histograms.clear();
                }
                self.points = 0;
                self.covered_from = first;
                first
            }
        }
    }

    fn push_step(&mut self, t: i64, samples: Vec<InstantSample>) {
        self.points += samples.len();
        for s in samples {
            let i = match self.index.get(&s.labels) {
                Some(&i) => i,
                None => {
                    self.index.insert(s.labels.clone(), self.series.len());
                    self.series.push(WindowSeries {
                        labels: s.labels,
                        drop_name: s.drop_name,
                        points: VecDeque::new(),
                        histograms: VecDeque::new(),
                    });
                    self.series.len() - 1
                }
            };
            let series = &mut self.series[i];
            match s.h {
                Some(mut h) => {
                    // As Prometheus: a subquery may skip or repeat the sample a hint is
                    // about, so reset hints become unknown (gauge hints stay).
                    if matches!(
                        h.counter_reset_hint,
                        CounterResetHint::CounterReset | CounterResetHint::NotCounterReset
                    ) {
                        Arc::make_mut(&mut h).counter_reset_hint = CounterResetHint::Unknown;
                    }
                    series.histograms.push_back(HPoint { t, h })
                }
                None => series.points.push_back(Sample::new(t, s.v)),
            }
        }
    }

    fn series(&self) -> Vec<RangeSeries> {
        self.series
            .iter()
            .filter(|s| !s.points.is_empty() || !s.histograms.is_empty())
            .map(|s| RangeSeries {
                labels: s.labels.clone(),
                points: s.points.iter().copied().collect(),
                histograms: s.histograms.iter().cloned().collect(),
                drop_name: s.drop_name,
            })
            .collect()
    }
}

/// Merges into `out` (an instant selector's float samples at `t`, sorted by labels) the
/// newest native histogram of each series in `(oldest, t]`: a series answers its newest
/// sample of either kind, and nothing when that sample is a staleness marker.
fn merge_instant_histograms(
    out: &mut Vec<InstantSample>,
    floats: &[Series],
    histograms: &[LoadedHistograms],
    t: i64,
    oldest: i64,
) {
    for series in histograms {
        let idx = series.points.partition_point(|p| p.t <= t);
        let Some(point) = idx.checked_sub(1).map(|i| &series.points[i]) else {
            continue;
        };
        if point.t <= oldest {
            continue;
        }
        match out.binary_search_by(|s| s.labels.cmp(&series.labels)) {
            Ok(i) if out[i].t > point.t => {}
            Ok(i) if point.h.is_stale() => {
                out.remove(i);
            }
            Ok(i) => {
                out[i].t = point.t;
                out[i].v = 0.0;
                out[i].h = Some(point.h.clone());
            }
            Err(_) if point.h.is_stale() => {}
            Err(i) => {
                // A newer float staleness marker (left out of `out`) hides the histogram.
                let newer_stale_float = floats
                    .binary_search_by(|s| s.labels.cmp(&series.labels))
                    .ok()
                    .and_then(|f| {
                        let samples = &floats[f].samples;
                        let n = samples.partition_point(|p| p.t <= t);
                        n.checked_sub(1).map(|k| samples[k])
                    })
                    .is_some_and(|p| p.t > point.t);
                if !newer_stale_float {
                    out.insert(
                        i,
                        InstantSample {
                            labels: series.labels.clone(),
                            t: point.t,
                            v: 0.0,
                            h: Some(point.h.clone()),
                            drop_name: false,
                        },
                    );
                }
            }
        }
    }
}

/// `Evaluator::check_stop` for loops that hold a borrow of another evaluator field.
fn check_stop(stop: &StopFlag) -> Result<(), QueryError> {
    if stop.is_raised() {
        return Err(QueryError::Timeout("expression evaluation".into()));
    }
    Ok(())
}

/// A window copied out into a series of its own (a range vector as a query's result).
fn owned_series(w: &SeriesWindow<'_>) -> RangeSeries {
    RangeSeries {
        labels: w.labels.clone(),
        points: w.points.to_vec(),
        histograms: w.histograms.to_vec(),
        drop_name: w.drop_name,
    }
}

/// Removes the labels that name what a metric is (`__name__`, and the `__type__` and
/// `__unit__` metadata labels): Prometheus drops them together once a value changes meaning.
/// A 64-bit hash of the labels `keep` selects, the key both grouping (`by`/`without`)
/// and vector matching (`on`/`ignoring`) bucket series by, as Prometheus does.
pub(crate) fn hash_labels_where(labels: &Labels, keep: impl Fn(&str) -> bool) -> u64 {
    let mut hasher = DefaultHasher::new();
    for l in labels.iter().filter(|l| keep(&l.name)) {
        hasher.write(l.name.as_bytes());
        hasher.write_u8(0xff);
        hasher.write(l.value.as_bytes());
        hasher.write_u8(0xff);
    }
    hasher.finish()
}

/// The labels `keep` selects, as a label set.
pub(crate) fn labels_where(labels: &Labels, keep: impl Fn(&str) -> bool) -> Labels {
    let mut out = labels.clone();
    out.retain(|l| keep(&l.name));
    out
}

pub(crate) fn remove_metric_identity(labels: &mut Labels) {
    labels.retain(|l| !matches!(l.name.as_str(), METRIC_NAME | "__type__" | "__unit__"));
}

pub(crate) fn unwrap_parens(mut expr: &Expr) -> &Expr {
    while let Expr::Paren(p) = expr {
        expr = &p.expr;
    }
    expr
}

fn value_type_name(v: &Value) -> &'static str {
    match v {
        Value::Scalar(_) => "scalar",
        Value::String(_) => "string",
        Value::Vector(_) => "instant vector",
        Value::Matrix(_) => "range vector",
    }
}

pub(crate) fn type_error(want: &str, got: &Value) -> QueryError {
    QueryError::Execution(format!("expected {want}, got {}", value_type_name(got)))
}

/// Whether `v`'s label sets are, in order, the very label sets (same storage) of a
/// subsequence of `proven`. Each match moves past its element, so a label set repeated
/// in `v` matches only if it is repeated in `proven`.
fn is_subsequence_by_identity(v: &[InstantSample], proven: &[Labels]) -> bool {
    let mut rest = proven.iter();
    v.iter().all(|s| {
        let id = s.labels.identity();
        rest.any(|p| p.identity() == id)
    })
}

/// Fails when two samples of `v` carry the same label set.
pub(crate) fn check_unique_labelsets(v: &[InstantSample]) -> Result<(), QueryError> {
    if v.len() < 2 {
        return Ok(());
    }
    let mut seen = std::collections::HashSet::with_capacity(v.len());
    for s in v {
        if !seen.insert(&s.labels) {
            return Err(QueryError::Execution(DUPLICATE_LABELSET.into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(labels: &Labels) -> InstantSample {
        InstantSample {
            labels: labels.clone(),
            t: 0,
            v: 0.0,
            h: None,
            drop_name: false,
        }
    }

    #[test]
    fn proven_distinct_sets_cover_their_subsequences_by_identity_only() {
        let a = Labels::from_pairs([("a", "1")]);
        let b = Labels::from_pairs([("a", "2")]);
        let c = Labels::from_pairs([("a", "3")]);
        let proven = vec![a.clone(), b.clone(), c.clone()];
        assert!(is_subsequence_by_identity(
            &[sample(&a), sample(&c)],
            &proven
        ));
        assert!(is_subsequence_by_identity(&[sample(&b)], &proven));
        // Out of order, repeated, or equal content in other storage: not covered.
        assert!(!is_subsequence_by_identity(
            &[sample(&c), sample(&a)],
            &proven
        ));
        assert!(!is_subsequence_by_identity(
            &[sample(&a), sample(&a)],
            &proven
        ));
        let a_copy = Labels::from_pairs([("a", "1")]);
        assert!(!is_subsequence_by_identity(&[sample(&a_copy)], &proven));
    }
}
