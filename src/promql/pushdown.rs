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
    if loaded.has_histograms() {
        // Partial states are floats: an aggregation over native histograms is
        // evaluated where the series are loaded whole.
        return Ok(None);
    }
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
    let aggregates = pushable_aggregates(expr);
    // All asked at once, as `plan` loads selectors: each is a round trip of its own.
    let asks: Vec<BoxFuture<'_, Result<_, std::convert::Infallible>>> = aggregates
        .iter()
        .enumerate()
        .map(|(i, _)| {
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
            let pushdown = pushdown.clone();
            Box::pin(async move { Ok(pushdown.partials(req).await) }) as BoxFuture<'_, _>
        })
        .collect();
    let Ok(answers) = plan::join_all(asks).await;
    for (a, answer) in aggregates.into_iter().zip(answers) {
        match answer {
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
                h: None,
                drop_name: state.drop_name,
            })
            .collect();
        vector.sort_by(|x, y| x.labels.cmp(&y.labels));
        let held = usize::try_from(inner.saturating_add(window)).unwrap_or(usize::MAX);
        out.steps.insert(t, PushedStep { held, out: vector });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::model::{stale_nan, Sample};
    use crate::promql::{Engine, QueryOutput, QueryValue};
    use crate::storage::WithPushdown;
    use crate::tsdb::{Tsdb, TsdbMetrics, TsdbOptions};

    #[test]
    fn only_the_dashboard_shapes_outside_subqueries_are_pushed() {
        let count = |q: &str| {
            let (expr, _) = engine::parse(q, &EngineOptions::default()).expect(q);
            pushable_aggregates(&expr).len()
        };
        for q in [
            "sum(x)",
            "avg without (a) (x{b=\"c\"} offset 1m)",
            "max by (a) (rate(x[5m]))",
            "group(count_over_time({__name__=\"x\"}[1m] @ 100))",
            "count((increase(x[5m])))",
        ] {
            assert_eq!(count(q), 1, "{q}");
        }
        assert_eq!(count("sum(rate(x[5m])) / sum by (a) (y)"), 2);
        // Counted by the outermost pushable one only.
        assert_eq!(count("sum(sum by (a) (x))"), 1);
        for q in [
            "topk(1, x)",
            "quantile(0.5, x)",
            "sum(x + 1)",
            "sum(rate({a=\"b\"}[5m]))",
            "sum(rate({__name__=~\"x|y\"}[5m]))",
            "sum(absent_over_time(x[5m]))",
            "sum(quantile_over_time(0.5, x[5m]))",
            "max_over_time(sum(x)[5m:1m])",
            "sum(rate(x[5m:1m]))",
        ] {
            assert_eq!(count(q), 0, "{q}");
        }
    }

    /// A pushdown over a store that answers in three shares (by label hash), as a
    /// cluster's nodes would, to compare merged shares with the unsplit evaluation.
    struct ThreeShares(Arc<dyn Storage>);

    /// Aggregations `ThreeShares` answered, all tests together.
    static ANSWERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    impl AggregatePushdown for ThreeShares {
        fn partials(
            &self,
            req: PartialRequest,
        ) -> BoxFuture<'_, Result<Option<Vec<Partials>>, QueryError>> {
            Box::pin(async move {
                let mut shares = Vec::new();
                for share in 0..3 {
                    let keep = Box::new(move |s: &Series| s.labels.stable_hash() % 3 == share);
                    let partials = evaluate_share(self.0.as_ref(), req.clone(), keep).await?;
                    shares.extend(partials);
                }
                ANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(Some(shares))
            })
        }
    }

    /// 24 series of `c` (counters, one reset) and `g` (gauges with NaN, infinities,
    /// values near the float limit and a staleness marker), a sample every 15 s.
    async fn sharded() -> (tempfile::TempDir, Arc<dyn Storage>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = TsdbOptions {
            dir: dir.path().to_path_buf(),
            retention_ms: 0,
            ..TsdbOptions::default()
        };
        let tsdb = Tsdb::open(opts, TsdbMetrics::register(&mut Registry::default())).expect("open");
        let mut batch = Vec::new();
        for i in 0..24i64 {
            let labels = |name: &str| {
                Labels::from_pairs([
                    ("__name__", name.to_string()),
                    ("a", (i % 4).to_string()),
                    ("b", (i / 4).to_string()),
                ])
            };
            let counter = (0..80)
                .map(|s| {
                    let v = if i == 5 && s > 40 {
                        s - 40
                    } else {
                        s * (i + 1)
                    };
                    Sample::new(s * 15_000, v as f64 / 3.0)
                })
                .collect();
            let gauge = (0..80)
                .map(|s| {
                    let v = match (i, s) {
                        (3, 10) => f64::NAN,
                        (4, 20..=30) => f64::INFINITY,
                        (7, 20..=25) => f64::NEG_INFINITY,
                        (8 | 9, _) => 1.5e308,
                        (10, 50) => stale_nan(),
                        _ => ((i * 13 + s * 7) % 29) as f64 * 0.1,
                    };
                    Sample::new(s * 15_000, v)
                })
                .collect();
            batch.push(Series {
                labels: labels("c"),
                samples: counter,
            });
            batch.push(Series {
                labels: labels("g"),
                samples: gauge,
            });
        }
        tsdb.append(batch).await.expect("append");
        let store: Arc<dyn Storage> = Arc::new(tsdb);
        let pushdown: Option<Arc<dyn AggregatePushdown>> =
            Some(Arc::new(ThreeShares(store.clone())));
        (dir, Arc::new(WithPushdown { store, pushdown }))
    }

    fn same_value(a: f64, b: f64) -> bool {
        a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
    }

    fn assert_same(q: &str, on: &QueryOutput, off: &QueryOutput) {
        assert_eq!(on.annotations, off.annotations, "{q}");
        assert_eq!(on.step_annotations, off.step_annotations, "{q}");
        assert_eq!(
            on.stats.total_queryable_samples, off.stats.total_queryable_samples,
            "{q}"
        );
        assert_eq!(on.stats.samples_read, off.stats.samples_read, "{q}");
        assert_eq!(on.stats.peak_samples, off.stats.peak_samples, "{q}");
        let points = |v: &QueryValue| -> Vec<(Labels, i64, f64)> {
            match v {
                QueryValue::Vector(v) => v.iter().map(|s| (s.labels.clone(), s.t, s.v)).collect(),
                QueryValue::Matrix(m) => m
                    .iter()
                    .flat_map(|s| s.points.iter().map(|p| (s.labels.clone(), p.t, p.v)))
                    .collect(),
                other => panic!("{q}: {other:?}"),
            }
        };
        let (a, b) = (points(&on.value), points(&off.value));
        assert_eq!(a.len(), b.len(), "{q}");
        for (x, y) in a.iter().zip(&b) {
            assert!(
                x.0 == y.0 && x.1 == y.1 && same_value(x.2, y.2),
                "{q}: {x:?} vs {y:?}"
            );
        }
    }

    #[tokio::test]
    async fn shares_merged_answer_as_the_unsplit_evaluation() {
        let (_dir, store) = sharded().await;
        let on = Engine::new(EngineOptions::default());
        let off = Engine::new(EngineOptions {
            pushdown: false,
            ..EngineOptions::default()
        });
        let mut asked = 0;
        for op in ["sum", "count", "min", "max", "avg", "group"] {
            for grouping in ["", " by (a)", " without (a)"] {
                for inner in ["g", "rate(c[2m])", "avg_over_time(g[1m])", "rate(g[5m])"] {
                    let q = format!("{op}{grouping} ({inner})");
                    let range = (
                        on.range_query(store.clone(), &q, 0, 1_200_000, 30_000)
                            .await,
                        off.range_query(store.clone(), &q, 0, 1_200_000, 30_000)
                            .await,
                    );
                    let instant = (
                        on.instant_query(store.clone(), &q, 600_000).await,
                        off.instant_query(store.clone(), &q, 600_000).await,
                    );
                    for (a, b) in [range, instant] {
                        assert_same(&q, &a.expect(&q), &b.expect(&q));
                        asked += 1;
                    }
                }
            }
        }
        assert_eq!(asked, 6 * 3 * 4 * 2);
        // Every one of them was answered from shares.
        assert!(ANSWERED.load(std::sync::atomic::Ordering::Relaxed) >= asked);
        // The sample limit counts the same samples: one limit, both fail or neither.
        for limit in [20, 100, 300] {
            let engine = |pushdown| {
                Engine::new(EngineOptions {
                    max_samples: limit,
                    pushdown,
                    ..EngineOptions::default()
                })
            };
            let q = "sum by (a) (rate(c[5m]))";
            let a = engine(true)
                .range_query(store.clone(), q, 0, 1_200_000, 60_000)
                .await;
            let b = engine(false)
                .range_query(store.clone(), q, 0, 1_200_000, 60_000)
                .await;
            assert_eq!(a.is_ok(), b.is_ok(), "limit {limit}");
        }
    }

    #[tokio::test]
    async fn requests_no_query_could_make_are_refused() {
        let (_dir, store) = sharded().await;
        let good = PartialRequest {
            query: "sum(g)".into(),
            aggregate: 0,
            start: 0,
            end: 60_000,
            step: 15_000,
            lookback: 300_000,
            max_samples: 1000,
            delayed_name_removal: false,
        };
        let share = |req: PartialRequest| {
            let store = store.clone();
            async move { evaluate_share(store.as_ref(), req, Box::new(|_| true)).await }
        };
        assert!(share(good.clone()).await.expect("answers").is_some());
        for bad in [
            PartialRequest {
                step: 0,
                ..good.clone()
            },
            PartialRequest {
                end: -1,
                ..good.clone()
            },
            PartialRequest {
                step: 1,
                end: i64::MAX,
                start: i64::MIN,
                ..good.clone()
            },
            PartialRequest {
                lookback: 0,
                ..good.clone()
            },
            PartialRequest {
                query: "sum(".into(),
                ..good.clone()
            },
        ] {
            assert!(share(bad).await.is_err());
        }
        // No such aggregation: declined, not an error.
        let other = PartialRequest {
            aggregate: 1,
            ..good.clone()
        };
        assert!(share(other).await.expect("answers").is_none());
        let unpushable = PartialRequest {
            query: "topk(1, g)".into(),
            ..good
        };
        assert!(share(unpushable).await.expect("answers").is_none());
    }
}
