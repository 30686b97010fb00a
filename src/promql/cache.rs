//! The range query result cache: step-aligned results of range queries, kept so a
//! repeated query with a shifted window evaluates only the steps it lacks (ADR 0024).
//!
//! Owns: which queries may be cached (`cache_key`: the expression's value at a step
//! must depend only on samples at or before that step, so `@`, negative offsets, the
//! query-range functions and the sort functions are refused), the key (the expression
//! text normalised when that provably denotes the same tree, the step, the step grid),
//! the store (one contiguous run of steps per key, bounded in bytes, least recently
//! used evicted first), invalidation (every step at or after a changed timestamp is
//! dropped, and a generation counter tells in-flight queries that it happened), and
//! joining a cached prefix with freshly evaluated steps. Its metrics. Calls `engine`
//! (parsing), `value` and `model` only: the HTTP layer (`api::query_cache`) decides when
//! to look up, evaluate, poll storage for changes and store.
//!
//! Why "at or after" suffices: a step at `t` reads samples at or before `t` only (every
//! selector looks back; positive offsets look further back), so a sample written at
//! `t0` can change steps at `t >= t0` and no others.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use promql_parser::parser::{Expr, Offset};

use super::engine;
use super::value::{RangeSeries, StepAnnotations};
use super::{EngineOptions, QueryError};
use crate::model::Sample;

/// Steps later than this before the wall clock (when the query starts) are never
/// cached: samples for them may still arrive as ordinary ingest, which is not logged
/// as a change. Must exceed `storage::LATE_WRITE_AGE_MS` plus the clock difference
/// between nodes the cluster tolerates (`storage::CLOCK_SKEW_ALLOWANCE_MS`); see ADR
/// 0024 for the argument.
pub const SETTLE_MS: i64 = 2 * 60_000;

const _: () = assert!(
    SETTLE_MS > crate::storage::LATE_WRITE_AGE_MS + crate::storage::CLOCK_SKEW_ALLOWANCE_MS
);

/// Most steps one entry keeps (Prometheus's points-per-series limit): the oldest go
/// first when a moving window extends an entry past it.
const MAX_ENTRY_STEPS: i64 = 11_000;

/// What identifies reusable results: the same tree, step and step grid. The engine's
/// options (lookback, name removal, subquery step) are server-wide and fixed for the
/// cache's life, so they are not part of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    expr: String,
    step: i64,
    /// `start mod step`: steps of another grid are other timestamps.
    phase: i64,
}

/// Why a query is not cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uncacheable {
    /// `@` pins a selector to a time that is not the step's.
    AtModifier,
    /// A negative offset reads samples after the step.
    NegativeOffset,
    /// `start()`, `end()`, `step()`, `range()`: the query's range, not the step's.
    QueryRangeFunction,
    /// The sort functions warn in range queries depending on the range's shape.
    SortFunction,
}

/// The key of a range query, or why it is not cached; a parse error is the query's.
pub fn cache_key(
    query: &str,
    opts: &EngineOptions,
    start: i64,
    step: i64,
) -> Result<Result<CacheKey, Uncacheable>, QueryError> {
    let (expr, _) = engine::parse(query, opts)?;
    if let Err(why) = step_local(&expr) {
        return Ok(Err(why));
    }
    Ok(Ok(CacheKey {
        expr: normalised(query, &expr),
        step,
        phase: start.rem_euclid(step.max(1)),
    }))
}

/// The canonical text of `expr` when it parses back to exactly the same tree (compared
/// by its full debug form, which keeps every float's bits and sign), else the query as
/// given. Either way equal keys mean equal trees.
fn normalised(query: &str, expr: &Expr) -> String {
    let canonical = expr.to_string();
    let same_tree = promql_parser::parser::parse(&canonical)
        .is_ok_and(|back| format!("{back:?}") == format!("{expr:?}"));
    if same_tree {
        canonical
    } else {
        query.to_string()
    }
}

/// Ok when the value of `expr` at a step depends only on samples at or before it.
fn step_local(expr: &Expr) -> Result<(), Uncacheable> {
    let check_time = |at: &Option<promql_parser::parser::AtModifier>, offset: &Option<Offset>| {
        if at.is_some() {
            return Err(Uncacheable::AtModifier);
        }
        if matches!(offset, Some(Offset::Neg(_))) {
            return Err(Uncacheable::NegativeOffset);
        }
        Ok(())
    };
    match expr {
        Expr::VectorSelector(vs) => check_time(&vs.at, &vs.offset),
        Expr::MatrixSelector(ms) => check_time(&ms.vs.at, &ms.vs.offset),
        Expr::Subquery(sq) => {
            check_time(&sq.at, &sq.offset)?;
            step_local(&sq.expr)
        }
        Expr::Call(call) => {
            let name = call.func.name;
            if matches!(name, "start" | "end" | "step" | "range") {
                return Err(Uncacheable::QueryRangeFunction);
            }
            if matches!(
                name,
                "sort" | "sort_desc" | "sort_by_label" | "sort_by_label_desc"
            ) {
                return Err(Uncacheable::SortFunction);
            }
            call.args.args.iter().try_for_each(|a| step_local(a))
        }
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                step_local(p)?;
            }
            step_local(&a.expr)
        }
        Expr::Unary(u) => step_local(&u.expr),
        Expr::Binary(b) => {
            step_local(&b.lhs)?;
            step_local(&b.rhs)
        }
        Expr::Paren(p) => step_local(&p.expr),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        // Not produced by the parser; nothing known about it.
        Expr::Extension(_) => Err(Uncacheable::QueryRangeFunction),
    }
}

/// One key's cached steps: every step from `first` to `last` (inclusive, on the key's
/// grid) was evaluated, and `series` holds their points (a series without a point at a
/// step had none there).
struct Entry {
    first: i64,
    last: i64,
    step: i64,
    series: Vec<RangeSeries>,
    /// Which of the steps raised which annotations.
    annotations: StepAnnotations,
    bytes: usize,
    last_used: u64,
}

/// The cached steps of a query's window: `points` of the steps from the window's start
/// to `last` (the rest is to be evaluated), and the generation they were read at.
#[derive(Debug)]
pub struct CachedPrefix {
    pub last: i64,
    pub series: Vec<RangeSeries>,
    pub annotations: StepAnnotations,
}

impl CachedPrefix {
    pub fn points(&self) -> usize {
        self.series.iter().map(|s| s.points.len()).sum()
    }
}

/// Cache metrics, every family present from the start.
#[derive(Clone, Default)]
pub struct CacheMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub bypassed: Counter,
    pub evictions: Counter,
    pub invalidations: Counter,
    pub steps_cached: Counter,
    pub steps_evaluated: Counter,
    pub bytes: Gauge,
    pub entries: Gauge,
    pub max_bytes: Gauge,
}

impl CacheMetrics {
    pub fn register(registry: &mut Registry) -> CacheMetrics {
        let m = CacheMetrics::default();
        let r = registry.sub_registry_with_prefix("timbala_query_cache");
        r.register(
            "hits",
            "Range queries answered partly or wholly from cached steps",
            m.hits.clone(),
        );
        r.register(
            "misses",
            "Cacheable range queries that found no usable cached steps",
            m.misses.clone(),
        );
        r.register(
            "bypassed",
            "Range queries that did not use the cache (nocache=1, not cacheable, cache \
             disabled, or a node's changes could not be checked)",
            m.bypassed.clone(),
        );
        r.register(
            "evictions",
            "Entries evicted to stay within --query-cache-max-bytes",
            m.evictions.clone(),
        );
        r.register(
            "invalidations",
            "Changes to old data (late writes, repairs, deletions, retention) that \
             dropped cached steps at and after their time",
            m.invalidations.clone(),
        );
        r.register(
            "steps_cached",
            "Range query steps answered from the cache",
            m.steps_cached.clone(),
        );
        r.register(
            "steps_evaluated",
            "Range query steps evaluated by queries that used the cache",
            m.steps_evaluated.clone(),
        );
        r.register(
            "bytes",
            "Estimated memory held by cached results",
            m.bytes.clone(),
        );
        r.register("entries", "Cached queries", m.entries.clone());
        r.register(
            "max_bytes",
            "The cache's size limit (--query-cache-max-bytes; 0: disabled)",
            m.max_bytes.clone(),
        );
        m
    }
}

/// The store. Cheap operations under one mutex; nothing awaits while holding it.
pub struct ResultCache {
    max_bytes: usize,
    state: Mutex<State>,
    metrics: CacheMetrics,
}

#[derive(Default)]
struct State {
    entries: HashMap<CacheKey, Entry>,
    bytes: usize,
    tick: u64,
    /// Bumped by every invalidation: a query that read the cache (or checked storage's
    /// changes) at an older generation stores nothing, since what it evaluated may
    /// predate the change.
    generation: u64,
}

impl ResultCache {
    pub fn new(max_bytes: usize, metrics: CacheMetrics) -> ResultCache {
        metrics
            .max_bytes
            .set(i64::try_from(max_bytes).unwrap_or(i64::MAX));
        ResultCache {
            max_bytes,
            state: Mutex::new(State::default()),
            metrics,
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    pub fn metrics(&self) -> &CacheMetrics {
        &self.metrics
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    /// Drops every cached step at or after `earliest` (ADR 0024). `now` is the wall
    /// clock of the poll that found the change: a change after `now - SETTLE_MS` touches
    /// no step that is cached or that a query in flight (which started earlier) stores.
    pub fn invalidate_from(&self, earliest: i64, now: i64) {
        if earliest > now.saturating_sub(SETTLE_MS) {
            return;
        }
        let mut state = self.state();
        state.generation += 1;
        self.metrics.invalidations.inc();
        let mut freed = 0usize;
        state.entries.retain(|_, entry| {
            if earliest <= entry.first {
                freed += entry.bytes;
                return false;
            }
            if earliest <= entry.last {
                let step = entry.step;
                let kept_last = entry.first + (earliest - 1 - entry.first) / step * step;
                for s in entry.series.iter_mut() {
                    let cut = s.points.partition_point(|p| p.t <= kept_last);
                    s.points.truncate(cut);
                }
                entry.series.retain(|s| !s.points.is_empty());
                entry.last = kept_last;
                entry.annotations = entry.annotations.clipped(entry.first, kept_last);
                let bytes = entry_bytes(&entry.series) + entry.annotations.bytes();
                freed += entry.bytes - bytes.min(entry.bytes);
                entry.bytes = bytes;
            }
            true
        });
        state.bytes -= freed.min(state.bytes);
        self.update_gauges(&state);
    }

    /// The cached steps of the window starting at `start` and ending at or before `end`,
    /// if its first step is cached.
    pub fn lookup(&self, key: &CacheKey, start: i64, end: i64) -> Option<CachedPrefix> {
        let mut state = self.state();
        state.tick += 1;
        let tick = state.tick;
        let entry = state.entries.get_mut(key)?;
        if start < entry.first || start > entry.last {
            return None;
        }
        entry.last_used = tick;
        let last = entry.last.min(last_step(start, end, key.step));
        let series = entry
            .series
            .iter()
            .filter_map(|s| {
                let from = s.points.partition_point(|p| p.t < start);
                let to = s.points.partition_point(|p| p.t <= last);
                (from < to).then(|| RangeSeries {
                    labels: s.labels.clone(),
                    points: s.points[from..to].to_vec(),
                    histograms: Vec::new(),
                    drop_name: false,
                })
            })
            .collect();
        let annotations = entry.annotations.clipped(start, last);
        Some(CachedPrefix {
            last,
            series,
            annotations,
        })
    }

    /// Stores the steps `start..=last` of `result` (a whole answer from `start` on,
    /// with the steps its annotations came from), joined with the key's entry when they
    /// meet, unless an invalidation happened since `generation` (what was evaluated may
    /// predate it).
    pub fn store(
        &self,
        key: CacheKey,
        (start, last): (i64, i64),
        result: &[RangeSeries],
        annotations: &StepAnnotations,
        generation: u64,
    ) {
        // Results with native histograms are not kept: the cache's series are float
        // points only (ADR 0024), and such answers are recomputed whole.
        if !self.enabled() || last < start || result.iter().any(|s| !s.histograms.is_empty()) {
            return;
        }
        let mut series: Vec<RangeSeries> = result
            .iter()
            .filter_map(|s| {
                let to = s.points.partition_point(|p| p.t <= last);
                (to > 0).then(|| RangeSeries {
                    labels: s.labels.clone(),
                    points: s.points[..to].to_vec(),
                    histograms: Vec::new(),
                    drop_name: false,
                })
            })
            .collect();
        let mut state = self.state();
        if state.generation != generation {
            return;
        }
        let mut first = start;
        let mut annotations = annotations.clipped(start, last);
        if let Some(old) = state.entries.get(&key) {
            // Keep the older steps of an entry this window continues.
            if old.first < start && start <= old.last.saturating_add(key.step) {
                series = join(prefix_before(&old.series, start), series);
                let mut older = old.annotations.clipped(old.first, start - 1);
                older.extend(annotations);
                annotations = older;
                first = old.first;
            }
        }
        let span = (last - first) / key.step + 1;
        if span > MAX_ENTRY_STEPS {
            first += (span - MAX_ENTRY_STEPS) * key.step;
            for s in series.iter_mut() {
                let cut = s.points.partition_point(|p| p.t < first);
                s.points.drain(..cut);
            }
            series.retain(|s| !s.points.is_empty());
            annotations = annotations.clipped(first, last);
        }
        let bytes = entry_bytes(&series) + annotations.bytes() + key.expr.len();
        if bytes > self.max_bytes / 2 {
            // One query may not flush the whole cache.
            if let Some(old) = state.entries.remove(&key) {
                state.bytes -= old.bytes.min(state.bytes);
            }
            self.update_gauges(&state);
            return;
        }
        state.tick += 1;
        let entry = Entry {
            first,
            last,
            step: key.step,
            series,
            annotations,
            bytes,
            last_used: state.tick,
        };
        if let Some(old) = state.entries.insert(key, entry) {
            state.bytes -= old.bytes.min(state.bytes);
        }
        state.bytes += bytes;
        while state.bytes > self.max_bytes {
            let Some(oldest) = state
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(evicted) = state.entries.remove(&oldest) {
                state.bytes -= evicted.bytes.min(state.bytes);
                self.metrics.evictions.inc();
            }
        }
        self.update_gauges(&state);
    }

    fn update_gauges(&self, state: &State) {
        self.metrics
            .bytes
            .set(i64::try_from(state.bytes).unwrap_or(i64::MAX));
        self.metrics
            .entries
            .set(i64::try_from(state.entries.len()).unwrap_or(i64::MAX));
    }
}

/// The last step of a window: the largest `start + k * step` not after `end`.
pub fn last_step(start: i64, end: i64, step: i64) -> i64 {
    if end < start {
        return start - step;
    }
    start + (end - start) / step * step
}

/// The points of `series` before `t`.
fn prefix_before(series: &[RangeSeries], t: i64) -> Vec<RangeSeries> {
    series
        .iter()
        .filter_map(|s| {
            let to = s.points.partition_point(|p| p.t < t);
            (to > 0).then(|| RangeSeries {
                labels: s.labels.clone(),
                points: s.points[..to].to_vec(),
                histograms: Vec::new(),
                drop_name: false,
            })
        })
        .collect()
}

/// Joins two answers sorted by labels whose points do not overlap in time, `earlier`'s
/// all before `later`'s: one series per label set, sorted, as one evaluation of both
/// ranges would give.
pub fn join(earlier: Vec<RangeSeries>, later: Vec<RangeSeries>) -> Vec<RangeSeries> {
    let mut out = Vec::with_capacity(earlier.len().max(later.len()));
    let mut a = earlier.into_iter().peekable();
    let mut b = later.into_iter().peekable();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(x), Some(y)) => match x.labels.cmp(&y.labels) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => {
                    let (Some(mut x), Some(y)) = (a.next(), b.next()) else {
                        break;
                    };
                    x.points.extend(y.points);
                    out.push(x);
                    continue;
                }
            },
        };
        let next = if take_a { a.next() } else { b.next() };
        out.extend(next);
    }
    out
}

/// Estimated heap bytes of cached series: labels, points and per-series overhead.
fn entry_bytes(series: &[RangeSeries]) -> usize {
    series
        .iter()
        .map(|s| {
            let labels: usize = s
                .labels
                .iter()
                .map(|l| l.name.len() + l.value.len() + 48)
                .sum();
            labels + s.points.len() * std::mem::size_of::<Sample>() + 64
        })
        .sum::<usize>()
        + 128
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;

    fn key(query: &str) -> Result<CacheKey, Uncacheable> {
        cache_key(query, &EngineOptions::default(), 0, 30_000).expect("parses")
    }

    fn series(name: &str, points: &[(i64, f64)]) -> RangeSeries {
        RangeSeries {
            labels: Labels::from_pairs([("job", name)]),
            points: points.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
            histograms: Vec::new(),
            drop_name: false,
        }
    }

    fn none() -> StepAnnotations {
        StepAnnotations::default()
    }

    fn cache() -> ResultCache {
        ResultCache::new(1 << 20, CacheMetrics::default())
    }

    #[test]
    fn spellings_of_one_tree_share_a_key_and_other_trees_do_not() {
        let a = key("sum by (job)(rate(x[5m]))").expect("cacheable");
        let b = key("sum(rate(x[5m]))   by (job)").expect("cacheable");
        assert_eq!(a, b);
        assert_ne!(a, key("sum by (job)(rate(x[1m]))").expect("cacheable"));
        // Zero and negative zero are equal floats but give different answers.
        assert_ne!(key("x / 0").expect("ok"), key("x / -0").expect("ok"));
        assert_ne!(
            key("x * 1e-300").expect("ok"),
            key("x * 1.000000000000001e-300").expect("ok")
        );
        // Spellings of one float are one float.
        assert_eq!(
            key("x * 1e-300").expect("ok"),
            key("x * 1.0000000000000001e-300").expect("ok")
        );
        let other_grid = cache_key("x", &EngineOptions::default(), 1_000, 30_000)
            .expect("parses")
            .expect("cacheable");
        assert_ne!(key("x").expect("ok"), other_grid);
    }

    #[test]
    fn only_step_local_expressions_are_cacheable() {
        for ok in [
            "rate(x[5m] offset 1h)",
            "time() - timestamp(x)",
            "max_over_time(rate(x[1m])[10m:30s] offset 5m)",
            "topk(3, x) + on() group_left vector(1)",
        ] {
            assert!(key(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("x @ 100", Uncacheable::AtModifier),
            ("rate(x[5m] @ end())", Uncacheable::AtModifier),
            ("sum(x offset -5m)", Uncacheable::NegativeOffset),
            (
                "max_over_time(x[5m:1m] offset -1m)",
                Uncacheable::NegativeOffset,
            ),
            ("sort(x)", Uncacheable::SortFunction),
        ] {
            assert_eq!(key(bad), Err(why), "{bad}");
        }
        assert!(cache_key("sum(", &EngineOptions::default(), 0, 1).is_err());
    }

    #[test]
    fn a_cached_prefix_joins_the_evaluated_tail() {
        let c = cache();
        let k = key("x").expect("ok");
        let first = vec![
            series("a", &[(0, 1.0), (30_000, 2.0), (60_000, 3.0)]),
            series("b", &[(30_000, 5.0)]),
        ];
        c.store(k.clone(), (0, 60_000), &first, &none(), c.generation());
        // The window shifted by one step: steps 30s and 60s are cached.
        let prefix = c.lookup(&k, 30_000, 90_000).expect("cached");
        assert_eq!(prefix.last, 60_000);
        assert_eq!(prefix.points(), 3);
        let tail = vec![series("a", &[(90_000, 4.0)]), series("c", &[(90_000, 9.0)])];
        let joined = join(prefix.series, tail);
        assert_eq!(
            joined,
            vec![
                series("a", &[(30_000, 2.0), (60_000, 3.0), (90_000, 4.0)]),
                series("b", &[(30_000, 5.0)]),
                series("c", &[(90_000, 9.0)]),
            ]
        );
        // Storing the joined answer extends the entry, keeping its older steps.
        c.store(
            k.clone(),
            (30_000, 90_000),
            &joined,
            &none(),
            c.generation(),
        );
        let all = c.lookup(&k, 0, 90_000).expect("cached");
        assert_eq!(all.last, 90_000);
        assert_eq!(all.points(), 6);
        // A window starting before the entry, or off its grid, finds nothing.
        assert!(c.lookup(&k, -30_000, 90_000).is_none());
        assert!(c.lookup(&k, 120_000, 150_000).is_none());
    }

    #[test]
    fn a_cached_window_brings_the_annotations_its_steps_raised() {
        let c = cache();
        let k = key("x").expect("ok");
        let mut raised = StepAnnotations::default();
        let mut info = crate::promql::Annotations::default();
        info.info("only at the first two steps");
        raised.record(0, 30_000, &info);
        raised.record(30_000, 30_000, &info);
        let points: Vec<(i64, f64)> = (0..4).map(|i| (i * 30_000, 1.0)).collect();
        c.store(
            k.clone(),
            (0, 90_000),
            &[series("a", &points)],
            &raised,
            c.generation(),
        );
        let from_start = c.lookup(&k, 0, 90_000).expect("cached");
        assert_eq!(from_start.annotations.within(0, 90_000).infos.len(), 1);
        let later = c.lookup(&k, 60_000, 90_000).expect("cached");
        assert!(later.annotations.within(60_000, 90_000).is_empty());
        // Truncated by an invalidation, the runs are clipped with the steps.
        c.invalidate_from(30_000, 10_000_000);
        let kept = c.lookup(&k, 0, 90_000).expect("first step kept");
        assert_eq!(
            kept.annotations.infos["only at the first two steps"],
            [(0, 0)]
        );
    }

    #[test]
    fn invalidation_drops_steps_at_and_after_the_change() {
        let c = cache();
        let k = key("x").expect("ok");
        let points: Vec<(i64, f64)> = (0..10).map(|i| (i * 30_000, i as f64)).collect();
        c.store(
            k.clone(),
            (0, 270_000),
            &[series("a", &points)],
            &none(),
            c.generation(),
        );
        let now = 10_000_000;
        let generation = c.generation();
        // Too recent to touch any cached step: nothing happens.
        c.invalidate_from(now - SETTLE_MS + 1, now);
        assert_eq!(c.generation(), generation);
        c.invalidate_from(100_000, now);
        assert_ne!(c.generation(), generation);
        let kept = c.lookup(&k, 0, 270_000).expect("older steps kept");
        assert_eq!(kept.last, 90_000);
        assert_eq!(kept.points(), 4);
        // A query that read before the invalidation stores nothing.
        c.store(
            k.clone(),
            (0, 270_000),
            &[series("a", &points)],
            &none(),
            generation,
        );
        assert_eq!(c.lookup(&k, 0, 270_000).expect("kept").last, 90_000);
        c.invalidate_from(i64::MIN, now);
        assert!(c.lookup(&k, 0, 270_000).is_none());
        assert_eq!(c.metrics().entries.get(), 0);
        assert_eq!(c.metrics().bytes.get(), 0);
    }

    #[test]
    fn least_recently_used_entries_are_evicted_to_fit() {
        let c = ResultCache::new(8 << 10, CacheMetrics::default());
        let points: Vec<(i64, f64)> = (0..100).map(|i| (i * 30_000, 1.0)).collect();
        let result = [series("a", &points)];
        for i in 0..10 {
            let k = key(&format!("x{i}")).expect("ok");
            c.store(k, (0, 99 * 30_000), &result, &none(), c.generation());
            // Keep x0 in use.
            c.lookup(&key("x0").expect("ok"), 0, 0);
        }
        assert!(c.metrics().evictions.get() > 0);
        assert!(c.metrics().bytes.get() <= 8 << 10);
        assert!(c.lookup(&key("x0").expect("ok"), 0, 0).is_some());
        assert!(c.lookup(&key("x1").expect("ok"), 0, 0).is_none());
        // Larger than half the cache: not stored at all.
        let huge: Vec<(i64, f64)> = (0..1000).map(|i| (i * 30_000, 1.0)).collect();
        let k = key("huge").expect("ok");
        c.store(
            k.clone(),
            (0, 999 * 30_000),
            &[series("a", &huge)],
            &none(),
            c.generation(),
        );
        assert!(c.lookup(&k, 0, 0).is_none());
        // Disabled: nothing is stored.
        let off = ResultCache::new(0, CacheMetrics::default());
        off.store(
            k.clone(),
            (0, 0),
            &[series("a", &[(0, 1.0)])],
            &none(),
            off.generation(),
        );
        assert!(off.lookup(&k, 0, 0).is_none());
    }
}
