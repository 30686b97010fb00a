//! Aggregation pushdown (ADR 0029): the aggregations that dominate dashboards computed
//! where the data is, as partial aggregates per group and step, and combined here.
//!
//! Owns: which aggregation nodes may be pushed down (`pushable_aggregates`: `sum`,
//! `count`, `min`, `max`, `avg` or `group`, by or without labels, over a vector
//! selector or over a per-series range function of a matrix selector that names its
//! metric, and not inside a subquery); the interface a store offers for them
//! (`AggregatePushdown`) and its request and answer (`PartialRequest`, `Partials`); the
//! evaluation of one share of the series (`evaluate_share`, which the local
//! implementation `LocalPushdown` and the cluster's reuse); and, for the engine, asking
//! the store and combining the shares into each step's finished vector (`push_down`).
//! A store that cannot answer returns `None` (or fails), and the engine evaluates that
//! aggregation itself from loaded series: pushdown never changes an answer, only where
//! it is computed. Calls `plan` (loading a share), `eval` (the inner expression),
//! `aggregate` (partial states), `engine` (parsing) and `storage`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use promql_parser::parser::{AggregateExpr, Expr};
use serde::{Deserialize, Serialize};

use crate::model::{Labels, Series, METRIC_NAME};
use crate::storage::{BoxFuture, Storage};

pub use super::aggregate::PartialGroup;
use super::aggregate::{partial_groups, PUSHABLE_OPS};
use super::engine::{self, RaiseOnDrop, StopFlag};
use super::eval::{unwrap_parens, Evaluator};
use super::plan::{self, QueryTimes};
use super::value::{InstantSample, StepAnnotations};
use super::{EngineOptions, QueryError};

/// Range functions that compute each series' value from that series' window alone, so
/// a share of the series gives exactly those series' values.
const PER_SERIES_RANGE_FUNCTIONS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "changes",
    "resets",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
];

/// Most steps a pushed-down request may cover (a range query's own step limit is
/// 11,000 points; this bounds an untrusted request).
pub const MAX_STEPS: i64 = 1_000_000;

/// One aggregation to compute in shares: the whole query text (every node parses it the
/// same way) and which of its pushable aggregations (`pushable_aggregates` order), with
/// the query's times and the evaluation settings that change values.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartialRequest {
    pub query: String,
    pub aggregate: u32,
    pub start: i64,
    pub end: i64,
    /// 0 for an instant query.
    pub step: i64,
    pub lookback: i64,
    /// Most samples a share may hold at a step (the query's limit).
    pub max_samples: usize,
    pub delayed_name_removal: bool,
}

impl PartialRequest {
    /// The evaluation times, with an error for times no query could have asked.
    fn times(&self) -> Result<QueryTimes, QueryError> {
        let bad = |why: &str| Err(QueryError::BadData(format!("bad pushdown request: {why}")));
        if self.end < self.start || self.step < 0 || self.lookback <= 0 {
            return bad("times out of order");
        }
        if self.step == 0 && self.start != self.end {
            return bad("a range needs a step");
        }
        let steps = match self.step {
            0 => 1,
            step => self
                .end
                .checked_sub(self.start)
                .map_or(i64::MAX, |d| d / step),
        };
        if steps > MAX_STEPS {
            return bad("too many steps");
        }
        Ok(QueryTimes {
            start: self.start,
            end: self.end,
            step: self.step,
            lookback: self.lookback,
            default_subquery_step: EngineOptions::default().default_subquery_step_ms,
        })
    }

    /// Every step evaluated, in order.
    fn steps(&self) -> impl Iterator<Item = i64> {
        let (start, end, step) = (self.start, self.end, self.step.max(1));
        std::iter::successors(Some(start), move |t| t.checked_add(step))
            .take_while(move |t| *t <= end)
    }
}

/// One share's partial aggregates: per step, the state of every group that share's
/// series fell in, plus what the share cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Partials {
    /// The label sets of the groups, numbered by position.
    pub groups: Vec<Labels>,
    pub steps: Vec<StepPartials>,
    /// The annotations the inner expression raised, by step.
    pub annotations: StepAnnotations,
    /// Samples the share's selectors read, summed over every step.
    pub queryable_samples: u64,
    /// Samples the share loaded, each once.
    pub samples_read: u64,
}

/// One step of a share.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepPartials {
    pub t: i64,
    /// Samples the share held at this step (its windows and its inner vector).
    pub held: u64,
    /// Of those, the samples of the inner expression's vector.
    pub inner: u64,
    /// (group number, state).
    pub partials: Vec<(u32, PartialGroup)>,
}

/// The pushdown interface a store may offer (`Storage::pushdown`).
pub trait AggregatePushdown: Send + Sync {
    /// The partial aggregates of `req`'s aggregation, one `Partials` per share (each
    /// series in exactly one share), or `None` when this store cannot answer it so.
    fn partials(
        &self,
        req: PartialRequest,
    ) -> BoxFuture<'_, Result<Option<Vec<Partials>>, QueryError>>;
}

/// Pushdown over one store holding every series (a single node): one share, all of it.
pub struct LocalPushdown {
    store: Arc<dyn Storage>,
}

impl LocalPushdown {
    pub fn new(store: Arc<dyn Storage>) -> LocalPushdown {
        LocalPushdown { store }
    }
}

impl AggregatePushdown for LocalPushdown {
    fn partials(
        &self,
        req: PartialRequest,
    ) -> BoxFuture<'_, Result<Option<Vec<Partials>>, QueryError>> {
        Box::pin(async move {
            let share = evaluate_share(self.store.as_ref(), req, Box::new(|_| true)).await?;
            Ok(share.map(|p| vec![p]))
        })
    }
}

/// The aggregation nodes of `expr` that may be pushed down, in a fixed (pre-)order:
/// the index in this list names a node on the wire.
pub fn pushable_aggregates(expr: &Expr) -> Vec<&AggregateExpr> {
    let mut out = Vec::new();
    walk(expr, &mut out);
    out
}

fn walk<'a>(expr: &'a Expr, out: &mut Vec<&'a AggregateExpr>) {
    match expr {
        Expr::Aggregate(a) => {
            if is_pushable(a) {
                out.push(a);
                return;
            }
            if let Some(p) = &a.param {
                walk(p, out);
            }
            walk(&a.expr, out);
        }
        Expr::Unary(u) => walk(&u.expr, out),
        Expr::Binary(b) => {
            walk(&b.lhs, out);
            walk(&b.rhs, out);
        }
        Expr::Paren(p) => walk(&p.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, out)),
        // Inside a subquery an aggregation is evaluated at the subquery's steps, not
        // the query's: not pushed.
        Expr::Subquery(_)
        | Expr::VectorSelector(_)
        | Expr::MatrixSelector(_)
        | Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::Extension(_) => {}
    }
}

fn is_pushable(a: &AggregateExpr) -> bool {
    if a.param.is_some() || !PUSHABLE_OPS.contains(&a.op.id()) {
        return false;
    }
    match unwrap_parens(&a.expr) {
        Expr::VectorSelector(_) => true,
        Expr::Call(c) if PER_SERIES_RANGE_FUNCTIONS.contains(&c.func.name) => {
            // With the metric named, dropping the name cannot make two series of
            // different shares collide (that must fail as in Prometheus; each share
            // sees only its own).
            matches!(
                c.args.args.as_slice(),
                [arg] if matches!(unwrap_parens(arg), Expr::MatrixSelector(ms) if names_metric(&ms.vs))
            )
        }
        _ => false,
    }
}

fn names_metric(vs: &promql_parser::parser::VectorSelector) -> bool {
    vs.matchers.or_matchers.is_empty()
        && (vs.name.is_some()
            || vs
                .matchers
                .matchers
                .iter()
                .any(|m| m.name == METRIC_NAME && m.op == promql_parser::label::MatchOp::Equal))
}

/// Evaluates one share of `req`'s aggregation over `store`: the inner expression over
/// the series `keep` accepts (it sees every series selected, staleness markers in),
/// grouped into partial states per step. `None` when the request names no pushable
/// aggregation of its query.
pub async fn evaluate_share(
    store: &dyn Storage,
    req: PartialRequest,
    mut keep: Box<dyn FnMut(&Series) -> bool + Send + '_>,
) -> Result<Option<Partials>, QueryError> {
    let times = req.times()?;
    let opts = EngineOptions {
        lookback_delta_ms: req.lookback,
        max_samples: req.max_samples,
        delayed_name_removal: req.delayed_name_removal,
        // The asking node decided what the query may use.
        experimental_functions: true,
        ..EngineOptions::default()
    };
    let (expr, depth) = engine::parse(&req.query, &opts)?;
    let expr = Box::new(expr);
    let Some(a) = pushable_aggregates(&expr)
        .get(req.aggregate as usize)
        .copied()
    else {
        return Ok(None);
    };
    let limit = opts.max_samples.saturating_mul(engine::LOAD_LIMIT_FACTOR);
    let loaded =
        plan::load_filtered(store, &a.expr, &times, limit, &HashSet::new(), &mut keep).await?;
    drop(keep);
    let stop = StopFlag::default();
    let _stop_when_done = RaiseOnDrop(stop.clone());
    let deadline = Instant::now() + opts.timeout;
    engine::run_blocking(depth, move || {
        let Some(a) = pushable_aggregates(&expr)
            .get(req.aggregate as usize)
            .copied()
        else {
            return Ok(None);
        };
        let pushed = Pushed::default();
        let mut ev = Evaluator::new(&loaded, times, &opts, deadline, stop, &pushed);
        let mut share = Partials {
            samples_read: loaded.samples(),
            ..Partials::default()
        };
        let mut numbers: HashMap<Labels, u32> = HashMap::new();
        for t in req.steps() {
            ev.check_deadline()?;
            ev.set_held_samples(0);
            let earlier = std::mem::take(&mut ev.annotations);
            let input = ev.eval_vector(&a.expr, t);
            let raised = std::mem::replace(&mut ev.annotations, earlier);
            share.annotations.record(t, req.step.max(1), &raised);
            let input = input?;
            let inner = input.len() as u64;
            let mut step = StepPartials {
                t,
                held: ev.held_samples() as u64,
                inner,
                partials: Vec::new(),
            };
            for (labels, partial) in partial_groups(&mut ev, a, input) {
                let next = share.groups.len() as u32;
                let number = *numbers.entry(labels.clone()).or_insert(next);
                if number == next {
                    share.groups.push(labels);
                }
                step.partials.push((number, partial));
            }
            share.steps.push(step);
        }
        share.queryable_samples = ev.counters.queryable_samples;
        Ok(Some(share))
    })
    .await
}

/// The pushed-down aggregations of one query, by node address.
pub(crate) type Pushed = HashMap<usize, PushedAggregate>;

/// One pushed-down aggregation, combined and finished: what the evaluator returns for
/// the node at each step, and what the shares cost.
#[derive(Default)]
pub(crate) struct PushedAggregate {
    steps: HashMap<i64, PushedStep>,
    annotations: StepAnnotations,
    pub queryable_samples: u64,
    pub samples_read: u64,
}

struct PushedStep {
    /// Samples the unpushed evaluation would have held below the aggregation.
    held: usize,
    out: Vec<InstantSample>,
}

impl PushedAggregate {
    /// The aggregation's vector at `t`, the samples held below it, and the annotations
    /// its inner expression raised at `t`. `None` for a step no share evaluated.
    pub(crate) fn at(&self, t: i64) -> Option<(&[InstantSample], usize, super::Annotations)> {
        let step = self.steps.get(&t)?;
        Some((&step.out, step.held, self.annotations.within(t, t)))
    }
}

pub(crate) fn aggregate_key(a: &AggregateExpr) -> usize {
    a as *const AggregateExpr as usize
}

/// Asks `store` for the partials of every pushable aggregation of `expr` (the boxed,
/// parsed `query`) and combines them. An aggregation the store cannot answer (or whose
/// request fails) is left out: the engine evaluates it from loaded series.
pub(crate) async fn push_down(
    store: &dyn Storage,
    expr: &Expr,
    query: &str,
    times: &QueryTimes,
    opts: &EngineOptions,
) -> Pushed {
    let mut pushed = Pushed::new();
    let Some(pushdown) = store.pushdown() else {
        return pushed;
    };
    for (i, a) in pushable_aggregates(expr).into_iter().enumerate() {
        let req = PartialRequest {
            query: query.to_string(),
            aggregate: i as u32,
            start: times.start,
            end: times.end,
            step: times.step,
            lookback: times.lookback,
            max_samples: opts.max_samples,
            delayed_name_removal: opts.delayed_name_removal,
        };
        match pushdown.partials(req).await {
            Ok(Some(shares)) => {
                pushed.insert(aggregate_key(a), combine(a, shares));
            }
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(%error, "aggregation pushdown failed; evaluating it here");
            }
        }
    }
    pushed
}

/// The shares' partial states merged per group and step, and finished.
fn combine(a: &AggregateExpr, shares: Vec<Partials>) -> PushedAggregate {
    let op = a.op.id();
    let mut numbers: HashMap<Labels, usize> = HashMap::new();
    let mut labels: Vec<Labels> = Vec::new();
    // Per step: inner samples, the largest window any share held, the merged states.
    let mut steps: HashMap<i64, (u64, u64, HashMap<usize, PartialGroup>)> = HashMap::new();
    let mut out = PushedAggregate::default();
    for share in shares {
        out.queryable_samples += share.queryable_samples;
        out.samples_read += share.samples_read;
        let global: Vec<usize> = share
            .groups
            .into_iter()
            .map(|l| {
                *numbers.entry(l).or_insert_with_key(|l| {
                    labels.push(l.clone());
                    labels.len() - 1
                })
            })
            .collect();
        for step in share.steps {
            let (inner, window, groups) = steps.entry(step.t).or_default();
            *inner = inner.saturating_add(step.inner);
            *window = (*window).max(step.held.saturating_sub(step.inner));
            for (number, partial) in step.partials {
                let Some(&group) = global.get(number as usize) else {
                    continue;
                };
                match groups.get_mut(&group) {
                    Some(state) => state.merge(op, &partial),
                    None => {
                        groups.insert(group, partial);
                    }
                }
            }
        }
        for (into, from) in [
            (&mut out.annotations.warnings, share.annotations.warnings),
            (&mut out.annotations.infos, share.annotations.infos),
        ] {
            for (message, runs) in from {
                into.entry(message).or_default().extend(runs);
            }
        }
    }
    for (t, (inner, window, groups)) in steps {
        let mut vector: Vec<InstantSample> = groups
            .into_iter()
            .map(|(group, state)| InstantSample {
                labels: labels[group].clone(),
                t,
                v: state.finish(op),
                drop_name: state.drop_name,
            })
            .collect();
        vector.sort_by(|x, y| x.labels.cmp(&y.labels));
        let held = usize::try_from(inner.saturating_add(window)).unwrap_or(usize::MAX);
        out.steps.insert(t, PushedStep { held, out: vector });
    }
    out
}
