//! Query planning: which samples each selector of a parsed query needs, and loading them.
//!
//! Owns: the walk over the AST that computes, for every vector and matrix selector, the
//! time range it reads (evaluation range, lookback delta, selector range, offset, `@`,
//! enclosing subqueries), and the `storage.select` calls that fetch those samples before
//! evaluation starts, all started at once and awaited together (range selectors' series
//! without staleness markers, so the evaluator borrows each step's window as a slice).
//! Aggregations whose partials were pushed down to the storage (ADR 0029) are skipped:
//! their selectors are not loaded. A pushed-down share loads through `load_filtered`,
//! which lets the caller see every selected series and keep only its share. Calls
//! `storage` and `model`; the evaluator reads the result.

use std::collections::{HashMap, HashSet};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use promql_parser::label::MatchOp as ParserMatchOp;
use promql_parser::parser::{AggregateExpr, AtModifier, Expr, Offset, VectorSelector};

use std::sync::Arc;

use crate::model::histogram::{CounterResetHint, FloatHistogram, HistogramValue};
use crate::model::{is_stale_nan, HistogramSeries, Labels, MatchOp, Matcher, Series, METRIC_NAME};
use crate::storage::{BoxFuture, SelectError, SelectRequest, Storage};

use super::value::HPoint;
use super::QueryError;

/// The series each selector of the query reads, keyed by the selector's address in the
/// AST (the AST is not moved between planning and evaluation).
#[derive(Default)]
pub(crate) struct LoadedSeries {
    by_selector: HashMap<usize, Vec<Series>>,
    /// Native histogram samples, by selector, for the selectors that found any (sorted
    /// by labels; kept apart so the float path stays as it is when there are none).
    histograms: HashMap<usize, Vec<LoadedHistograms>>,
}

/// One selected series' native histogram samples, converted to float histograms.
pub(crate) struct LoadedHistograms {
    pub labels: Labels,
    pub points: Vec<HPoint>,
}

impl LoadedSeries {
    pub(crate) fn key(vs: &VectorSelector) -> usize {
        vs as *const VectorSelector as usize
    }

    /// Samples loaded for every selector, each series' once per selector.
    pub(crate) fn samples(&self) -> u64 {
        self.by_selector
            .values()
            .flatten()
            .map(|s| s.samples.len() as u64)
            .chain(
                self.histograms
                    .values()
                    .flatten()
                    .map(|s| s.points.len() as u64),
            )
            .sum()
    }

    pub(crate) fn get(&self, vs: &VectorSelector) -> &[Series] {
        self.by_selector
            .get(&Self::key(vs))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The native histogram series a selector found (usually none).
    pub(crate) fn histograms(&self, vs: &VectorSelector) -> &[LoadedHistograms] {
        self.histograms
            .get(&Self::key(vs))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Whether any selector found native histograms.
    pub(crate) fn has_histograms(&self) -> bool {
        !self.histograms.is_empty()
    }
}

/// The query-level times every part of the plan and the evaluation agree on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueryTimes {
    pub start: i64,
    pub end: i64,
    /// Step of a range query; 0 for an instant query.
    pub step: i64,
    pub lookback: i64,
    pub default_subquery_step: i64,
}

/// One selector and the inclusive time range it must read.
struct SelectorNeed<'a> {
    vs: &'a VectorSelector,
    mint: i64,
    maxt: i64,
    /// A range selector never returns staleness markers: they are dropped at load, so
    /// each step's window is a plain slice of the loaded samples.
    drop_stale: bool,
    /// Only histograms' count and sum are used (`StatsPath::Stats`).
    stats_only: bool,
}

/// What the functions above a selector need of its native histograms, as Prometheus's
/// `detectHistogramStatsDecoding` decides it: under `histogram_count`, `histogram_sum`
/// or `histogram_avg` only the count and sum (read through its
/// `HistogramStatsIterator`: buckets dropped, counter resets detected sample by
/// sample), unless a subquery or a function that reads buckets (`histogram_quantile`,
/// `histogram_quantiles`, `histogram_fraction`) is anywhere above it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StatsPath {
    Whole,
    Stats,
    Blocked,
}

impl StatsPath {
    fn through_call(self, function: &str) -> StatsPath {
        match (self, function) {
            (StatsPath::Blocked, _) => StatsPath::Blocked,
            (_, "histogram_quantile" | "histogram_quantiles" | "histogram_fraction") => {
                StatsPath::Blocked
            }
            (_, "histogram_count" | "histogram_sum" | "histogram_avg") => StatsPath::Stats,
            (path, _) => path,
        }
    }
}

pub(crate) fn duration_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn offset_ms(offset: &Option<Offset>) -> i64 {
    match offset {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(d),
        Some(Offset::Neg(d)) => -duration_ms(d),
    }
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => duration_ms(&d),
        Err(e) => -duration_ms(&e.duration()),
    }
}

/// The timestamp an `@` modifier pins evaluation to, if any.
pub(crate) fn at_ms(at: &Option<AtModifier>, times: &QueryTimes) -> Option<i64> {
    match at {
        None => None,
        Some(AtModifier::Start) => Some(times.start),
        Some(AtModifier::End) => Some(times.end),
        Some(AtModifier::At(t)) => Some(system_time_ms(t)),
    }
}

/// Range of reference times `[lo, hi]` a selector or subquery sees when its parent is
/// evaluated at times in `[lo, hi]`.
fn reference_range(
    at: &Option<AtModifier>,
    offset: &Option<Offset>,
    eval: (i64, i64),
    times: &QueryTimes,
) -> (i64, i64) {
    let off = offset_ms(offset);
    match at_ms(at, times) {
        Some(t) => (t.saturating_sub(off), t.saturating_sub(off)),
        None => (eval.0.saturating_sub(off), eval.1.saturating_sub(off)),
    }
}

/// The selectors `expr` reads and their ranges, leaving out those under the aggregation
/// nodes (by address) in `skip`.
fn collect_needs<'a>(
    expr: &'a Expr,
    eval: (i64, i64),
    times: &QueryTimes,
    skip: &HashSet<usize>,
    path: StatsPath,
    out: &mut Vec<SelectorNeed<'a>>,
) {
    let recurse = |e: &'a Expr, eval: (i64, i64), out: &mut Vec<SelectorNeed<'a>>| {
        collect_needs(e, eval, times, skip, path, out)
    };
    match expr {
        Expr::VectorSelector(vs) => {
            let (lo, hi) = reference_range(&vs.at, &vs.offset, eval, times);
            out.push(SelectorNeed {
                vs,
                mint: lo.saturating_sub(times.lookback) + 1,
                maxt: hi,
                drop_stale: false,
                stats_only: path == StatsPath::Stats,
            });
        }
        Expr::MatrixSelector(ms) => {
            let (lo, hi) = reference_range(&ms.vs.at, &ms.vs.offset, eval, times);
            out.push(SelectorNeed {
                vs: &ms.vs,
                mint: lo.saturating_sub(duration_ms(&ms.range)) + 1,
                maxt: hi,
                drop_stale: true,
                stats_only: path == StatsPath::Stats,
            });
        }
        Expr::Subquery(sq) => {
            let (lo, hi) = reference_range(&sq.at, &sq.offset, eval, times);
            let range = (lo.saturating_sub(duration_ms(&sq.range)), hi);
            collect_needs(&sq.expr, range, times, skip, StatsPath::Blocked, out);
        }
        Expr::Aggregate(a) => {
            if skip.contains(&(a as *const AggregateExpr as usize)) {
                return;
            }
            if let Some(p) = &a.param {
                recurse(p, eval, out);
            }
            recurse(&a.expr, eval, out);
        }
        Expr::Unary(u) => recurse(&u.expr, eval, out),
        Expr::Binary(b) => {
            recurse(&b.lhs, eval, out);
            recurse(&b.rhs, eval, out);
        }
        Expr::Paren(p) => recurse(&p.expr, eval, out),
        Expr::Call(c) => {
            let path = path.through_call(c.func.name);
            for a in &c.args.args {
                collect_needs(a, eval, times, skip, path, out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Converts a parser matcher into the storage's matcher (regexes anchored with `(?s)`).
fn to_storage_matcher(m: &promql_parser::label::Matcher) -> Result<Matcher, QueryError> {
    let op = match m.op {
        ParserMatchOp::Equal => MatchOp::Equal,
        ParserMatchOp::NotEqual => MatchOp::NotEqual,
        ParserMatchOp::Re(_) => MatchOp::RegexMatch,
        ParserMatchOp::NotRe(_) => MatchOp::RegexNoMatch,
    };
    Matcher::new(op, m.name.clone(), m.value.clone())
        .map_err(|e| QueryError::BadData(format!("invalid regular expression {:?}: {e}", m.value)))
}

/// The matcher sets of a selector: one set normally, several for `{a="x" or b="y"}`.
fn matcher_sets(vs: &VectorSelector) -> Result<Vec<Vec<Matcher>>, QueryError> {
    let name = vs
        .name
        .as_ref()
        .map(|n| Matcher::equal(METRIC_NAME, n.clone()));
    let groups: Vec<&Vec<promql_parser::label::Matcher>> = if vs.matchers.or_matchers.is_empty() {
        vec![&vs.matchers.matchers]
    } else {
        vs.matchers.or_matchers.iter().collect()
    };
    groups
        .into_iter()
        .map(|group| {
            let mut set: Vec<Matcher> = name.iter().cloned().collect();
            for m in group {
                set.push(to_storage_matcher(m)?);
            }
            Ok(set)
        })
        .collect()
}

/// Loads, for every selector in `expr` outside the aggregations in `skip` (pushed
/// down), the samples evaluation over `[start, end]` needs. `max_samples` bounds what
/// one select may return (0 = unbounded).
pub(crate) async fn load(
    storage: &dyn Storage,
    expr: &Expr,
    times: &QueryTimes,
    max_samples: usize,
    skip: &HashSet<usize>,
) -> Result<LoadedSeries, QueryError> {
    load_filtered(storage, expr, times, max_samples, skip, &mut |_| true).await
}

/// `load`, keeping of each selector's float series (sorted by labels, staleness markers
/// still in) those `keep` accepts; `keep` sees every float series selected. Native
/// histogram series are selected alongside (concurrently) and kept whole.
///
/// Every select is started at once and awaited together: in a cluster each is a fan-out
/// with its own round trips, so a query with several selectors waits for the slowest
/// select rather than for the sum of them. The first error ends the load (the other
/// selects are dropped, which cancels their requests).
pub(crate) async fn load_filtered(
    storage: &dyn Storage,
    expr: &Expr,
    times: &QueryTimes,
    max_samples: usize,
    skip: &HashSet<usize>,
    keep: &mut (dyn FnMut(&Series) -> bool + Send),
) -> Result<LoadedSeries, QueryError> {
    let mut needs = Vec::new();
    collect_needs(
        expr,
        (times.start, times.end),
        times,
        skip,
        StatsPath::Whole,
        &mut needs,
    );
    let mut selects: Vec<(usize, BoxFuture<'_, Result<Selected, SelectError>>)> = Vec::new();
    for (index, need) in needs.iter().enumerate() {
        for matchers in matcher_sets(need.vs)? {
            let req = SelectRequest {
                matchers,
                mint: need.mint,
                maxt: need.maxt,
                max_samples,
            };
            let histograms = storage.select_histograms(req.clone());
            let floats = storage.select(req);
            selects.push((
                index,
                Box::pin(async move { floats.await.map(Selected::Floats) }),
            ));
            selects.push((
                index,
                Box::pin(async move { histograms.await.map(Selected::Histograms) }),
            ));
        }
    }
    let (owners, futures): (Vec<usize>, Vec<_>) = selects.into_iter().unzip();
    let answers = join_all(futures).await.map_err(|e| match e {
        SelectError::TooManySamples => QueryError::TooManySamples,
        SelectError::Storage(e) => QueryError::Storage(e),
    })?;
    let mut per_need: Vec<Vec<Series>> = needs.iter().map(|_| Vec::new()).collect();
    let mut histograms_per_need: Vec<Vec<HistogramSeries>> =
        needs.iter().map(|_| Vec::new()).collect();
    let mut selects_per_need = vec![0usize; needs.len()];
    for (index, found) in owners.into_iter().zip(answers) {
        match found {
            Selected::Floats(found) => {
                per_need[index].extend(found);
                selects_per_need[index] += 1;
            }
            Selected::Histograms(found) => histograms_per_need[index].extend(found),
        }
    }
    let mut loaded = LoadedSeries::default();
    for (((need, mut series), mut histograms), selects) in needs
        .iter()
        .zip(per_need)
        .zip(histograms_per_need)
        .zip(selects_per_need)
    {
        if selects > 1 {
            series.sort_by(|a, b| a.labels.cmp(&b.labels));
            series.dedup_by(|a, b| a.labels == b.labels);
            histograms.sort_by(|a, b| a.labels.cmp(&b.labels));
            histograms.dedup_by(|a, b| a.labels == b.labels);
        }
        // Shares of a pushed-down aggregation (the only callers that filter) give up
        // when there are histograms (`pushdown::evaluate_share`), so these are kept whole.
        series.retain(|s| keep(s));
        if need.drop_stale {
            for s in &mut series {
                s.samples.retain(|p| !is_stale_nan(p.v));
            }
        }
        let key = LoadedSeries::key(need.vs);
        let histograms: Vec<LoadedHistograms> = histograms
            .into_iter()
            .map(|s| {
                let floats = s.samples.into_iter().map(|p| {
                    let h = match p.h {
                        HistogramValue::Int(h) => h.to_float(),
                        HistogramValue::Float(h) => h,
                    };
                    (p.t, h)
                });
                let floats: Vec<(i64, FloatHistogram)> = if need.stats_only {
                    stats_only(floats)
                } else {
                    floats.collect()
                };
                LoadedHistograms {
                    labels: s.labels,
                    points: floats
                        .into_iter()
                        .filter(|(_, h)| !(need.drop_stale && h.is_stale()))
                        .map(|(t, h)| HPoint { t, h: Arc::new(h) })
                        .collect(),
                }
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if !histograms.is_empty() {
            loaded.histograms.insert(key, histograms);
        }
        loaded.by_selector.insert(key, series);
    }
    Ok(loaded)
}

/// A series' histograms as Prometheus's `HistogramStatsIterator` reads them: count, sum
/// and schema only, and each sample whose counter-reset hint is unknown given the
/// hint that comparing it with the previous sample (staleness markers aside) finds.
fn stats_only(samples: impl Iterator<Item = (i64, FloatHistogram)>) -> Vec<(i64, FloatHistogram)> {
    let mut last: Option<FloatHistogram> = None;
    samples
        .map(|(t, mut current)| {
            if !current.is_stale() {
                if current.counter_reset_hint == CounterResetHint::Unknown {
                    if let Some(previous) = &last {
                        current.counter_reset_hint = if current.detect_reset(previous) {
                            CounterResetHint::CounterReset
                        } else {
                            CounterResetHint::NotCounterReset
                        };
                    }
                }
                last = Some(current.clone());
            }
            let stats = FloatHistogram {
                counter_reset_hint: current.counter_reset_hint,
                schema: current.schema,
                count: current.count,
                sum: current.sum,
                ..FloatHistogram::default()
            };
            (t, stats)
        })
        .collect()
}

/// One select's answer: float or native histogram samples.
enum Selected {
    Floats(Vec<Series>),
    Histograms(Vec<HistogramSeries>),
}

/// Awaits every future, answering their outputs in order or the first error (the rest
/// are dropped unfinished). Polls only the futures not yet done.
pub(crate) async fn join_all<T, E>(futures: Vec<BoxFuture<'_, Result<T, E>>>) -> Result<Vec<T>, E> {
    let mut pending: Vec<Option<BoxFuture<'_, Result<T, E>>>> =
        futures.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            let Some(future) = slot else { continue };
            match future.as_mut().poll(cx) {
                Poll::Ready(Ok(value)) => {
                    *output = Some(value);
                    *slot = None;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => all_done = false,
            }
        }
        if all_done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await?;
    Ok(outputs.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_reads_keep_count_and_sum_and_find_resets_sample_by_sample() {
        use crate::model::histogram::Span;
        let h = |count: f64, hint: CounterResetHint| FloatHistogram {
            counter_reset_hint: hint,
            schema: 1,
            zero_threshold: 0.001,
            count,
            sum: 2.0 * count,
            positive_spans: vec![Span {
                offset: 0,
                length: 1,
            }]
            .into(),
            positive_buckets: vec![count],
            ..FloatHistogram::default()
        };
        let mut stale = h(0.0, CounterResetHint::Unknown);
        stale.sum = f64::from_bits(crate::model::STALE_NAN_BITS);
        use CounterResetHint::*;
        let read = stats_only(
            [
                (1, h(5.0, Unknown)),
                (2, h(7.0, Unknown)),
                (3, h(3.0, Unknown)),
                (4, stale),
                (5, h(2.0, Unknown)),
                (6, h(9.0, Gauge)),
            ]
            .into_iter(),
        );
        let hints: Vec<CounterResetHint> = read.iter().map(|(_, h)| h.counter_reset_hint).collect();
        // The first is unknown (nothing before it); the staleness marker is passed over.
        assert_eq!(
            hints,
            vec![
                Unknown,
                NotCounterReset,
                CounterReset,
                Unknown,
                CounterReset,
                Gauge
            ]
        );
        for (_, stats) in &read {
            assert!(stats.positive_buckets.is_empty() && stats.positive_spans.is_empty());
            assert_eq!(stats.zero_threshold, 0.0);
        }
        assert_eq!(
            (read[1].1.count, read[1].1.sum, read[1].1.schema),
            (7.0, 14.0, 1)
        );
        assert!(read[3].1.is_stale());
    }

    #[tokio::test]
    async fn selects_run_concurrently_and_answer_in_order() {
        // The first future finishes only once the second has run: awaiting them one
        // after the other would never finish.
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let first: BoxFuture<'_, Result<u32, ()>> =
            Box::pin(async move { Ok(rx.await.unwrap() + 1) });
        let second: BoxFuture<'_, Result<u32, ()>> = Box::pin(async move {
            tx.send(41).unwrap();
            Ok(7)
        });
        let joined = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            join_all(vec![first, second]),
        )
        .await
        .expect("both selects finish together");
        assert_eq!(joined, Ok(vec![42, 7]));
    }

    #[tokio::test]
    async fn the_first_error_ends_the_load() {
        let never: BoxFuture<'_, Result<u32, &str>> = Box::pin(std::future::pending());
        let failing: BoxFuture<'_, Result<u32, &str>> = Box::pin(async { Err("too many") });
        assert_eq!(join_all(vec![never, failing]).await, Err("too many"));
    }
}
