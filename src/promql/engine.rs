//! Running one query: parse, validate, plan and load, then evaluate every step.
//!
//! Owns: the query pipeline behind `Engine::instant_query`/`range_query`: parsing with
//! `promql-parser` behind the `limits` check, feature checks (experimental functions),
//! loading data through `plan`, evaluating on a blocking thread with `eval::Evaluator`,
//! assembling range results into a matrix, the final `__name__` cleanup (delayed name
//! removal), and stopping: the answer is a timeout as soon as the deadline passes, and
//! the evaluation thread is told to stop (`StopFlag`) then and when the caller's future
//! is dropped (the HTTP client went away).
//! Aggregations the storage can compute where the data is are pushed down first
//! (`pushdown`, ADR 0029; unless `EngineOptions::pushdown` is off) and their selectors
//! are not loaded. Calls `limits`, `pushdown`, `plan`, `eval`, `storage` (through
//! `plan` and `pushdown`) and `value`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use promql_parser::parser::token::{T_BOTTOMK, T_LIMITK, T_LIMIT_RATIO, T_TOPK};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::Expr;

use crate::model::{Labels, Sample};
use crate::storage::Storage;

use super::eval::{
    check_unique_labelsets, remove_metric_identity, unwrap_parens, Evaluator, Value,
    DUPLICATE_LABELSET,
};
use super::limits;
use super::plan::{self, QueryTimes};
use super::pushdown::{self, Pushed};
use super::value::{HPoint, InstantSample, QueryValue, RangeSeries, StepAnnotations};
use super::{EngineOptions, QueryError, QueryOutput, QueryStats};

/// One query to run: `[start, end]` with `step` (an instant query has start == end).
pub(crate) struct QueryRequest<'q> {
    pub query: &'q str,
    pub start: i64,
    pub end: i64,
    pub step: i64,
    pub deadline: Instant,
    /// Result points of earlier steps of the same range query that are already held
    /// elsewhere (a cache's prefix): they count against the sample limit as they would
    /// if those steps were evaluated here (ADR 0024).
    pub points_before: usize,
}

/// Loads generously above the evaluation limit: loaded samples are not held all at once.
pub(crate) const LOAD_LIMIT_FACTOR: usize = 10;

/// Tells an evaluation on a blocking thread to stop. The evaluator reads it where it
/// checks its deadline and between nodes and series (an atomic load, cheap enough for
/// the hot loops); `execute` raises it.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Raises the flag when dropped: when `execute` returns (the deadline passed while the
/// evaluation ran on) and when its future is dropped unfinished (the client went away).
pub(crate) struct RaiseOnDrop(pub(crate) StopFlag);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.raise();
    }
}

/// Runs one query holding `slot` of the engine's concurrency gate; the slot is released
/// only when the evaluation thread has stopped, so abandoned evaluations still count.
pub(crate) async fn execute(
    opts: &EngineOptions,
    storage: Arc<dyn Storage>,
    req: QueryRequest<'_>,
    slot: OwnedSemaphorePermit,
) -> Result<QueryOutput, QueryError> {
    let stop = StopFlag::default();
    let _stop_when_done = RaiseOnDrop(stop.clone());
    let preparing = Instant::now();
    let (expr, depth) = parse(req.query, opts)?;
    // Boxed so selector addresses (the plan's keys) survive moving it to another thread.
    let expr = Box::new(expr);
    let is_range = req.start != req.end || req.step > 0;
    if is_range {
        check_range_query_type(&expr)?;
    }
    let times = QueryTimes {
        start: req.start,
        end: req.end,
        step: if is_range { req.step } else { 0 },
        lookback: opts.lookback_delta_ms,
        default_subquery_step: opts.default_subquery_step_ms,
    };
    let pushed = if opts.pushdown {
        let pushing = pushdown::push_down(storage.as_ref(), &expr, req.query, &times, opts);
        tokio::time::timeout_at(req.deadline.into(), pushing)
            .await
            .map_err(|_| QueryError::Timeout("query preparation".into()))?
    } else {
        Pushed::default()
    };
    let skip: HashSet<usize> = pushed.keys().copied().collect();
    let load_limit = opts.max_samples.saturating_mul(LOAD_LIMIT_FACTOR);
    let loading = plan::load(storage.as_ref(), &expr, &times, load_limit, &skip);
    let loaded = tokio::time::timeout_at(req.deadline.into(), loading)
        .await
        .map_err(|_| QueryError::Timeout("query preparation".into()))??;
    let preparation = preparing.elapsed();
    let opts = opts.clone();
    let (step, deadline, points_before) = (req.step.max(1), req.deadline, req.points_before);
    let evaluation = run_blocking(depth, move || {
        let _slot = slot;
        let mut ev = Evaluator::new(&loaded, times, &opts, deadline, stop, &pushed);
        let mut step_annotations = StepAnnotations::default();
        let evaluating = Instant::now();
        let value = if is_range {
            evaluate_range(&mut ev, &expr, step, points_before, &mut step_annotations)?
        } else {
            evaluate_instant(&mut ev, &expr)?
        };
        let stats = QueryStats {
            preparation,
            inner_eval: evaluating.elapsed().saturating_sub(ev.counters.result_sort),
            result_sort: ev.counters.result_sort,
            total_queryable_samples: ev.counters.queryable_samples
                + pushed.values().map(|p| p.queryable_samples).sum::<u64>(),
            samples_read: loaded.samples() + pushed.values().map(|p| p.samples_read).sum::<u64>(),
            peak_samples: ev.counters.peak_samples,
            ..QueryStats::default()
        };
        Ok(QueryOutput {
            value,
            annotations: ev.annotations,
            step_annotations,
            stats,
        })
    });
    // The answer does not wait for the evaluation to notice the deadline.
    tokio::time::timeout_at(deadline.into(), evaluation)
        .await
        .map_err(|_| QueryError::Timeout("expression evaluation".into()))?
}

/// Tree depth up to which evaluation runs on tokio's blocking pool, whose threads have
/// 2 MiB stacks: a level of evaluation takes at most ~7 KiB of stack in a debug build
/// (nested subqueries; about 2 KiB optimised), so this leaves a wide margin.
const POOL_EVAL_MAX_DEPTH: usize = 64;
/// Stack per level, and beyond the levels, of a thread evaluating a deeper query.
const DEEP_EVAL_STACK_PER_LEVEL: usize = 32 << 10;
const DEEP_EVAL_STACK_BASE: usize = 1 << 20;

/// Runs `work` (an evaluation, which recurses once per level of a tree at most `depth`
/// deep) where its stack suffices: on the blocking pool, or for deep trees on a thread
/// of its own with a stack sized for `depth` (only address space until touched).
pub(crate) async fn run_blocking<T: Send + 'static>(
    depth: usize,
    work: impl FnOnce() -> Result<T, QueryError> + Send + 'static,
) -> Result<T, QueryError> {
    let failed =
        |e: &dyn std::fmt::Display| QueryError::Execution(format!("query evaluation failed: {e}"));
    if depth <= POOL_EVAL_MAX_DEPTH {
        return tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| failed(&e))?;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("promql-deep-eval".into())
        .stack_size(DEEP_EVAL_STACK_BASE + depth * DEEP_EVAL_STACK_PER_LEVEL)
        .spawn(move || {
            // The receiver is gone when the query was abandoned: nothing to tell.
            let _ = tx.send(work());
        })
        .map_err(|e| failed(&e))?;
    rx.await
        .map_err(|_| failed(&"the evaluation thread panicked"))?
}

/// Parses `query` (within the `limits`) and rejects features the options leave disabled.
/// Returns the tree and a bound of its depth.
pub(crate) fn parse(query: &str, opts: &EngineOptions) -> Result<(Expr, usize), QueryError> {
    let (expr, depth) = limits::parse_with_depth(query).map_err(QueryError::BadData)?;
    if let Some(literal) = non_utf8_string_argument(query) {
        return Err(QueryError::Execution(format!(
            "invalid label name {literal}"
        )));
    }
    if !opts.experimental_functions {
        check_no_experimental(&expr)?;
    }
    Ok((expr, depth))
}

/// A quoted string argument (not a matcher value) whose escapes spell bytes that are not
/// UTF-8, as `"a\xc5z"`. Go keeps such bytes and rejects them as label names; the parser
/// we use turns `\xc5` into the character U+00C5, so the check runs on the query text.
fn non_utf8_string_argument(query: &str) -> Option<&str> {
    let bytes = query.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let quote = bytes[i];
        if !matches!(quote, b'"' | b'\'' | b'`') {
            i += 1;
            continue;
        }
        let start = i;
        let is_matcher_value = query[..start].trim_end().ends_with(['=', '~']);
        let (end, decoded) = scan_quoted(bytes, start);
        if quote != b'`' && !is_matcher_value && std::str::from_utf8(&decoded).is_err() {
            return query.get(start..end);
        }
        i = end;
    }
    None
}

/// Scans the quoted string starting at `start`; returns the index after its closing
/// quote and its bytes with Go's escapes decoded.
fn scan_quoted(bytes: &[u8], start: usize) -> (usize, Vec<u8>) {
    let quote = bytes[start];
    let mut decoded = Vec::new();
    let mut i = start + 1;
    while i < bytes.len() && bytes[i] != quote {
        if bytes[i] != b'\\' || quote == b'`' || i + 1 >= bytes.len() {
            decoded.push(bytes[i]);
            i += 1;
            continue;
        }
        let escape = bytes[i + 1];
        let hex_byte = |from: usize, digits: usize, radix: u32| {
            bytes
                .get(from..from + digits)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, radix).ok())
        };
        match escape {
            b'x' => match hex_byte(i + 2, 2, 16) {
                Some(b) => {
                    decoded.push(b);
                    i += 4;
                }
                None => i += 2,
            },
            b'0'..=b'7' => match hex_byte(i + 1, 3, 8) {
                Some(b) => {
                    decoded.push(b);
                    i += 4;
                }
                None => i += 2,
            },
            _ => {
                // Other escapes (\n, \u00e9, ...) always produce valid UTF-8.
                decoded.push(b'?');
                i += 2;
            }
        }
    }
    (i.saturating_add(1).min(bytes.len()), decoded)
}

fn check_no_experimental(expr: &Expr) -> Result<(), QueryError> {
    match expr {
        Expr::Call(c) => {
            if c.func.experimental {
                return Err(QueryError::BadData(format!(
                    "function {:?} is not enabled",
                    c.func.name
                )));
            }
            c.args
                .args
                .iter()
                .try_for_each(|a| check_no_experimental(a))
        }
        Expr::Aggregate(a) => {
            if matches!(a.op.id(), T_LIMITK | T_LIMIT_RATIO) {
                return Err(QueryError::BadData(
                    "limitk() and limit_ratio() are experimental and must be enabled with --enable-feature=promql-experimental-functions".into(),
                ));
            }
            if let Some(p) = &a.param {
                check_no_experimental(p)?;
            }
            check_no_experimental(&a.expr)
        }
        Expr::Unary(u) => check_no_experimental(&u.expr),
        Expr::Binary(b) => {
            check_no_experimental(&b.lhs)?;
            check_no_experimental(&b.rhs)
        }
        Expr::Paren(p) => check_no_experimental(&p.expr),
        Expr::Subquery(s) => check_no_experimental(&s.expr),
        _ => Ok(()),
    }
}

fn check_range_query_type(expr: &Expr) -> Result<(), QueryError> {
    let name = match expr.value_type() {
        ValueType::Scalar | ValueType::Vector => return Ok(()),
        ValueType::Matrix => "range vector",
        ValueType::String => "string",
    };
    Err(QueryError::BadData(format!(
        "invalid expression type {name:?} for range query, must be Scalar or instant Vector"
    )))
}

fn evaluate_instant(ev: &mut Evaluator<'_>, expr: &Expr) -> Result<QueryValue, QueryError> {
    let t = ev.times.start;
    ev.check_deadline()?;
    ev.set_held_samples(0);
    Ok(match ev.eval(expr, t)? {
        Value::Scalar(v) => QueryValue::Scalar { t, v },
        Value::String(s) => QueryValue::String { t, s },
        Value::Vector(mut v) => {
            for s in v.iter_mut() {
                s.t = t;
                remove_dropped_name(&mut s.labels, &mut s.drop_name);
            }
            check_unique_labelsets(&v)?;
            if !defines_order(expr) {
                let sorting = Instant::now();
                v.sort_by(|a, b| a.labels.cmp(&b.labels));
                ev.counters.result_sort += sorting.elapsed();
            }
            QueryValue::Vector(v)
        }
        Value::Matrix(m) => {
            let sorting = Instant::now();
            let m = finish_matrix(m)?;
            ev.counters.result_sort += sorting.elapsed();
            QueryValue::Matrix(m)
        }
    })
}

/// Whether the outermost operation of `expr` decides the order of its result (sort
/// functions, topk/bottomk, limitk/limit_ratio). Other instant vectors are returned
/// sorted by labels, so answers do not depend on storage or fan-out order.
fn defines_order(expr: &Expr) -> bool {
    match unwrap_parens(expr) {
        Expr::Call(c) => matches!(
            c.func.name,
            "sort" | "sort_desc" | "sort_by_label" | "sort_by_label_desc"
        ),
        Expr::Aggregate(a) => matches!(a.op.id(), T_TOPK | T_BOTTOMK | T_LIMITK | T_LIMIT_RATIO),
        _ => false,
    }
}

fn remove_dropped_name(labels: &mut Labels, drop_name: &mut bool) {
    if *drop_name {
        remove_metric_identity(labels);
        *drop_name = false;
    }
}

/// Evaluates every step of a range query and gathers the results into series.
fn evaluate_range(
    ev: &mut Evaluator<'_>,
    expr: &Expr,
    step: i64,
    points_before: usize,
    step_annotations: &mut StepAnnotations,
) -> Result<QueryValue, QueryError> {
    let mut series: Vec<RangeSeries> = Vec::new();
    // Per label set: its series and the last step it received a point at.
    let mut index: HashMap<Labels, (usize, i64)> = HashMap::new();
    let mut retained = points_before;
    let mut ts = ev.times.start;
    while ts <= ev.times.end {
        ev.check_deadline()?;
        ev.set_held_samples(retained);
        // This step's annotations apart, to note which steps raised what.
        let earlier = std::mem::take(&mut ev.annotations);
        let value = ev.eval(expr, ts);
        let raised = std::mem::replace(&mut ev.annotations, earlier);
        if !raised.is_empty() {
            step_annotations.record(ts, step, &raised);
            ev.annotations.merge(raised);
        }
        let samples = match value? {
            Value::Scalar(v) => vec![InstantSample {
                labels: Labels::empty(),
                t: ts,
                v,
                h: None,
                drop_name: false,
            }],
            Value::Vector(v) => v,
            Value::String(_) | Value::Matrix(_) => {
                return Err(QueryError::BadData(
                    "range query result must be a scalar or an instant vector".into(),
                ))
            }
        };
        retained += samples.len();
        ev.set_held_samples(retained);
        ev.hold_samples(0)?;
        for s in samples {
            let i = match index.get_mut(&s.labels) {
                Some((i, last)) => {
                    if *last == ts {
                        return Err(QueryError::Execution(DUPLICATE_LABELSET.into()));
                    }
                    *last = ts;
                    *i
                }
                None => {
                    index.insert(s.labels.clone(), (series.len(), ts));
                    series.push(RangeSeries {
                        labels: s.labels,
                        points: Vec::new(),
                        histograms: Vec::new(),
                        drop_name: s.drop_name,
                    });
                    series.len() - 1
                }
            };
            match s.h {
                Some(h) => series[i].histograms.push(HPoint { t: ts, h }),
                None => series[i].points.push(Sample::new(ts, s.v)),
            }
        }
        ts = match ts.checked_add(step) {
            Some(next) => next,
            None => break,
        };
    }
    let sorting = Instant::now();
    let series = finish_matrix(series)?;
    ev.counters.result_sort += sorting.elapsed();
    Ok(QueryValue::Matrix(series))
}

/// Removes dropped metric names, merges series that became identical (their points
/// must not collide), and sorts by labels as Prometheus does for matrices.
fn finish_matrix(mut series: Vec<RangeSeries>) -> Result<Vec<RangeSeries>, QueryError> {
    for s in series.iter_mut() {
        remove_dropped_name(&mut s.labels, &mut s.drop_name);
    }
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    let mut out: Vec<RangeSeries> = Vec::with_capacity(series.len());
    for s in series {
        match out.last_mut() {
            Some(prev) if prev.labels == s.labels => {
                prev.points.extend(s.points);
                prev.points.sort_by_key(|p| p.t);
                prev.histograms.extend(s.histograms);
                prev.histograms.sort_by_key(|p| p.t);
                let mut times: Vec<i64> = prev.points.iter().map(|p| p.t).collect();
                times.extend(prev.histograms.iter().map(|p| p.t));
                times.sort_unstable();
                if times.windows(2).any(|w| w[0] == w[1]) {
                    return Err(QueryError::Execution(DUPLICATE_LABELSET.into()));
                }
            }
            _ => out.push(s),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use prometheus_client::registry::Registry;

    use crate::model::{stale_nan, Labels, Sample, Series};
    use crate::promql::{limits, Engine, EngineOptions, QueryError, QueryValue};
    use crate::storage::Storage;
    use crate::tsdb::{Tsdb, TsdbMetrics, TsdbOptions};

    /// A TSDB holding `series_count` series `m{i="..."}` with one sample per minute over
    /// ten minutes, the value being the minute; series 0 goes stale at minute 5.
    async fn storage(series_count: usize) -> (tempfile::TempDir, Arc<dyn Storage>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = TsdbOptions {
            dir: dir.path().to_path_buf(),
            retention_ms: 0,
            ..TsdbOptions::default()
        };
        let tsdb =
            Tsdb::open(opts, TsdbMetrics::register(&mut Registry::default())).expect("open tsdb");
        let batch = (0..series_count)
            .map(|i| Series {
                labels: Labels::from_pairs([("__name__", "m".to_string()), ("i", i.to_string())]),
                samples: (0..=10)
                    .map(|m| {
                        let v = if i == 0 && m == 5 {
                            stale_nan()
                        } else {
                            m as f64
                        };
                        Sample::new(m * 60_000, v)
                    })
                    .collect(),
            })
            .collect();
        tsdb.append(batch).await.expect("append");
        (dir, Arc::new(tsdb))
    }

    fn engine(max_samples: usize) -> Engine {
        Engine::new(EngineOptions {
            max_samples,
            ..EngineOptions::default()
        })
    }

    #[tokio::test]
    async fn instant_selector_honours_staleness_and_lookback() {
        let (_dir, s) = storage(2).await;
        let out = engine(100)
            .instant_query(s, "m", 5 * 60_000)
            .await
            .expect("query");
        let QueryValue::Vector(v) = out.value else {
            panic!("not a vector: {:?}", out.value);
        };
        // Series 0 is stale at minute 5; series 1 has its sample.
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].labels.get("i"), Some("1"));
        assert_eq!((v[0].t, v[0].v), (5 * 60_000, 5.0));
    }

    #[tokio::test]
    async fn range_query_builds_sorted_matrix() {
        let (_dir, s) = storage(3).await;
        let out = engine(1000)
            .range_query(s, "m * 2", 0, 2 * 60_000, 60_000)
            .await
            .expect("query");
        let QueryValue::Matrix(m) = out.value else {
            panic!("not a matrix");
        };
        assert_eq!(m.len(), 3);
        assert!(m.windows(2).all(|w| w[0].labels < w[1].labels));
        assert!(m.iter().all(|s| s.labels.metric_name().is_none()));
        let points: Vec<(i64, f64)> = m[1].points.iter().map(|p| (p.t, p.v)).collect();
        assert_eq!(points, vec![(0, 0.0), (60_000, 2.0), (120_000, 4.0)]);
    }

    #[tokio::test]
    async fn too_many_samples_is_prometheus_error() {
        let (_dir, s) = storage(5).await;
        let err = engine(4)
            .instant_query(s, "m", 60_000)
            .await
            .expect_err("over the limit");
        assert_eq!(err, QueryError::TooManySamples);
        assert_eq!(
            err.to_string(),
            "query processing would load too many samples into memory in query execution"
        );
    }

    #[tokio::test]
    async fn functions_over_ranges_hold_one_window_at_a_time() {
        let (_dir, s) = storage(5).await;
        let e = engine(20);
        // Five windows of ten samples: Prometheus holds one window at a time.
        e.instant_query(Arc::clone(&s), "count_over_time(m[10m])", 600_000)
            .await
            .expect("one window at a time fits");
        // The same matrix returned whole does not fit.
        let err = e
            .instant_query(s, "m[10m]", 600_000)
            .await
            .expect_err("whole matrix");
        assert_eq!(err, QueryError::TooManySamples);
    }

    #[tokio::test]
    async fn timeout_is_reported() {
        let (_dir, s) = storage(1).await;
        let engine = Engine::new(EngineOptions {
            timeout: Duration::ZERO,
            ..EngineOptions::default()
        });
        let err = engine
            .range_query(s, "m", 0, 600_000, 1_000)
            .await
            .expect_err("no time at all");
        assert!(matches!(err, QueryError::Timeout(_)), "{err:?}");
    }

    #[tokio::test]
    async fn an_expired_timeout_always_times_out() {
        let (_dir, s) = storage(1).await;
        let e = engine(1000);
        for _ in 0..20 {
            for query in ["m", "1"] {
                let err = e
                    .instant_query_with_timeout(
                        Arc::clone(&s),
                        query,
                        60_000,
                        Duration::from_nanos(1),
                    )
                    .await
                    .expect_err("deadline already passed");
                assert!(matches!(err, QueryError::Timeout(_)), "{err:?}");
            }
        }
    }

    /// A range query that would evaluate a 60,000-step subquery window at each of 11,000
    /// steps (hours of work) while holding only one window of samples.
    const ENDLESS_RANGE: (&str, i64, i64, i64) = (
        "count_over_time(vector(1)[1m:1ms])",
        0,
        11_000 * 60_000,
        60_000,
    );

    /// An engine that evaluates one query at a time.
    fn one_slot_engine(timeout: Duration) -> Engine {
        Engine::new(EngineOptions {
            max_concurrent: 1,
            timeout,
            ..EngineOptions::default()
        })
    }

    /// The engine's only slot is freed within 2 s: the last evaluation thread stopped.
    async fn assert_evaluation_stops(engine: &Engine) {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while engine.gate.available_permits() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "evaluation still running"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_timed_out_evaluation_answers_at_the_deadline_and_stops() {
        let (_dir, s) = storage(1).await;
        let e = one_slot_engine(Duration::from_millis(300));
        let (query, start, end, step) = ENDLESS_RANGE;
        let began = std::time::Instant::now();
        let err = e
            .range_query(Arc::clone(&s), query, start, end, step)
            .await
            .expect_err("endless");
        let answered = began.elapsed();
        assert!(matches!(err, QueryError::Timeout(_)), "{err:?}");
        assert!(
            answered < Duration::from_secs(2),
            "answered after {answered:?}"
        );
        assert_evaluation_stops(&e).await;
    }

    #[tokio::test]
    async fn a_dropped_query_stops_its_evaluation() {
        let (_dir, s) = storage(1).await;
        let e = Arc::new(one_slot_engine(Duration::from_secs(120)));
        let (query, start, end, step) = ENDLESS_RANGE;
        let running = {
            let (e, s) = (Arc::clone(&e), Arc::clone(&s));
            tokio::spawn(async move { e.range_query(s, query, start, end, step).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(e.gate.available_permits(), 0, "the query is evaluating");
        running.abort();
        assert_evaluation_stops(&e).await;
    }

    #[tokio::test]
    async fn subquery_windows_count_against_the_sample_limit() {
        let (_dir, s) = storage(1).await;
        let err = engine(100_000)
            .instant_query(s, "count_over_time(vector(1)[1d:1ms])", 0)
            .await
            .expect_err("86,400,000 points");
        assert_eq!(err, QueryError::TooManySamples);
    }

    /// Queries of every recursive shape at nesting `n` around `m`.
    fn nested_queries(n: usize) -> Vec<String> {
        let wrap = |open: &str, close: &str| format!("{}m{}", open.repeat(n), close.repeat(n));
        vec![
            wrap("(", ")"),
            wrap("abs(", ")"),
            wrap("sum(", ")"),
            wrap("sum by (i) (", ")"),
            wrap("topk(1, ", ")"),
            wrap("vector(scalar(", "))"),
            wrap("label_replace(", ", \"a\", \"b\", \"c\", \"d\")"),
            wrap("max_over_time((", ")[2m:1m])"),
            wrap("-(", ")"),
            vec!["m"; n].join(" + "),
            vec!["m"; n].join(" ^ "),
            vec!["m"; n].join(" and "),
            vec!["1"; n].join(" + "),
        ]
    }

    /// The deepest nesting of `query_at(n)` the limits accept, with its depth bound.
    fn deepest_accepted(query_at: impl Fn(usize) -> String) -> (String, usize) {
        (1..=limits::MAX_DEPTH)
            .rev()
            .find_map(|n| {
                let q = query_at(n);
                limits::check_text(&q).ok().map(|depth| (q, depth))
            })
            .expect("some nesting is accepted")
    }

    #[tokio::test]
    async fn the_deepest_accepted_queries_evaluate_on_either_thread() {
        let (_dir, s) = storage(2).await;
        let e = engine(1_000_000);
        for kind in 0..nested_queries(1).len() {
            // The deepest on the blocking pool, and the deepest of all (own thread).
            let on_pool = deepest_accepted(|n| {
                let q = nested_queries(n).swap_remove(kind);
                let fits = limits::check_text(&q).is_ok_and(|d| d <= super::POOL_EVAL_MAX_DEPTH);
                if fits {
                    q
                } else {
                    "(".repeat(limits::MAX_DEPTH + 1)
                }
            });
            let deepest = deepest_accepted(|n| nested_queries(n).swap_remove(kind));
            assert!(
                on_pool.1 <= super::POOL_EVAL_MAX_DEPTH && deepest.1 > super::POOL_EVAL_MAX_DEPTH
            );
            for (query, _) in [on_pool, deepest] {
                let instant = e.instant_query(Arc::clone(&s), &query, 300_000).await;
                let range = e
                    .range_query(Arc::clone(&s), &query, 0, 300_000, 60_000)
                    .await;
                for result in [instant, range] {
                    if let Err(err) = result {
                        // Some shapes are type errors (scalar `and`); none may fail otherwise.
                        assert!(
                            matches!(err, QueryError::BadData(_) | QueryError::Execution(_)),
                            "{query:.40}: {err:?}"
                        );
                        assert!(!err.to_string().contains("panicked"), "{err}");
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn queries_wait_for_a_concurrency_slot() {
        let (_dir, s) = storage(1).await;
        let engine = one_slot_engine(Duration::from_millis(50));
        let held = engine.gate.acquire().await.expect("permit");
        let err = engine
            .instant_query(Arc::clone(&s), "m", 0)
            .await
            .expect_err("gate is full");
        assert_eq!(err, QueryError::Timeout("query queue".into()));
        drop(held);
        engine.instant_query(s, "m", 0).await.expect("slot free");
    }

    #[tokio::test]
    async fn bad_queries_are_bad_data() {
        let (_dir, s) = storage(1).await;
        let e = engine(100);
        for q in ["sum(", "limitk(1, m)", "sort_by_label(m, \"i\")"] {
            let err = e.instant_query(Arc::clone(&s), q, 0).await.expect_err(q);
            assert!(matches!(err, QueryError::BadData(_)), "{q}: {err:?}");
        }
        let err = e
            .range_query(Arc::clone(&s), "m[5m]", 0, 60_000, 1_000)
            .await
            .expect_err("matrix range query");
        assert!(matches!(err, QueryError::BadData(_)), "{err:?}");
        let err = e
            .range_query(s, "m", 0, 60_000, 0)
            .await
            .expect_err("step 0");
        assert!(matches!(err, QueryError::BadData(_)), "{err:?}");
    }

    #[tokio::test]
    async fn extreme_timestamps_do_not_panic() {
        let (_dir, s) = storage(1).await;
        let e = engine(1000);
        for q in [
            "m offset -1000000000000000w",
            "max_over_time(m[1000000000000000w])",
            "sum_over_time(m[5m:1m] @ 9223372036854775)",
            "m @ -9223372036854775",
            // Found by the fuzzer: the pinned time minus the offset overflowed in planning.
            "m @ -9223372036854775 offset 1y",
            "rate(m[5m] @ 9223372036854775 offset -1y)",
        ] {
            // Either an answer or an error; never a panic (which would surface as a
            // failed evaluation task).
            for t in [i64::MAX / 2, i64::MIN / 2] {
                if let Err(err) = e.instant_query(Arc::clone(&s), q, t).await {
                    assert!(!err.to_string().contains("panicked"), "{q} at {t}: {err}");
                }
            }
        }
    }

    #[tokio::test]
    async fn many_to_one_without_group_modifier_fails_like_prometheus() {
        let (_dir, s) = storage(2).await;
        let err = engine(100)
            .instant_query(s, "m + ignoring(i) vector(1)", 60_000)
            .await
            .expect_err("many-to-one");
        assert_eq!(
            err.to_string(),
            "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
        );
    }
}
