//! Running one query: parse, validate, plan and load, then evaluate every step.
//!
//! Owns: the query pipeline behind `Engine::instant_query`/`range_query`: parsing with
//! `promql-parser`, feature checks (experimental functions), loading data through
//! `plan`, evaluating on a blocking thread with `eval::Evaluator`, assembling range
//! results into a matrix, and the final `__name__` cleanup (delayed name removal).
//! Calls `plan`, `eval`, `storage` (through `plan`) and `value`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use promql_parser::parser::token::{T_BOTTOMK, T_LIMITK, T_LIMIT_RATIO, T_TOPK};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::Expr;

use crate::model::{Labels, Sample};
use crate::storage::Storage;

use super::eval::{
    check_unique_labelsets, remove_metric_identity, unwrap_parens, Evaluator, Value,
    DUPLICATE_LABELSET,
};
use super::plan::{self, QueryTimes};
use super::value::{InstantSample, QueryValue, RangeSeries};
use super::{EngineOptions, QueryError, QueryOutput};

/// One query to run: `[start, end]` with `step` (an instant query has start == end).
pub(crate) struct QueryRequest<'q> {
    pub query: &'q str,
    pub start: i64,
    pub end: i64,
    pub step: i64,
    pub deadline: Instant,
}

/// Loads generously above the evaluation limit: loaded samples are not held all at once.
const LOAD_LIMIT_FACTOR: usize = 10;

pub(crate) async fn execute(
    opts: &EngineOptions,
    storage: Arc<dyn Storage>,
    req: QueryRequest<'_>,
) -> Result<QueryOutput, QueryError> {
    // Boxed so selector addresses (the plan's keys) survive moving it to another thread.
    let expr = Box::new(parse(req.query, opts)?);
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
    let load_limit = opts.max_samples.saturating_mul(LOAD_LIMIT_FACTOR);
    let loading = plan::load(storage.as_ref(), &expr, &times, load_limit);
    let loaded = tokio::time::timeout_at(req.deadline.into(), loading)
        .await
        .map_err(|_| QueryError::Timeout("query preparation".into()))??;
    let opts = opts.clone();
    let (step, deadline) = (req.step.max(1), req.deadline);
    tokio::task::spawn_blocking(move || {
        let mut ev = Evaluator::new(&loaded, times, &opts, deadline);
        let value = if is_range {
            evaluate_range(&mut ev, &expr, step)?
        } else {
            evaluate_instant(&mut ev, &expr)?
        };
        Ok(QueryOutput {
            value,
            annotations: ev.annotations,
        })
    })
    .await
    .map_err(|e| QueryError::Execution(format!("query evaluation failed: {e}")))?
}

/// Parses `query` and rejects features the options leave disabled.
pub(crate) fn parse(query: &str, opts: &EngineOptions) -> Result<Expr, QueryError> {
    let expr = super::limits::parse(query).map_err(QueryError::BadData)?;
    if let Some(literal) = non_utf8_string_argument(query) {
        return Err(QueryError::Execution(format!(
            "invalid label name {literal}"
        )));
    }
    if !opts.experimental_functions {
        check_no_experimental(&expr)?;
    }
    Ok(expr)
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
                v.sort_by(|a, b| a.labels.cmp(&b.labels));
            }
            QueryValue::Vector(v)
        }
        Value::Matrix(m) => QueryValue::Matrix(finish_matrix(m)?),
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
) -> Result<QueryValue, QueryError> {
    let mut series: Vec<RangeSeries> = Vec::new();
    // Per label set: its series and the last step it received a point at.
    let mut index: HashMap<Labels, (usize, i64)> = HashMap::new();
    let mut retained = 0usize;
    let mut ts = ev.times.start;
    while ts <= ev.times.end {
        ev.check_deadline()?;
        ev.set_held_samples(retained);
        let samples = match ev.eval(expr, ts)? {
            Value::Scalar(v) => vec![InstantSample {
                labels: Labels::empty(),
                t: ts,
                v,
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
            let point = Sample::new(ts, s.v);
            match index.get_mut(&s.labels) {
                Some((i, last)) => {
                    if *last == ts {
                        return Err(QueryError::Execution(DUPLICATE_LABELSET.into()));
                    }
                    *last = ts;
                    series[*i].points.push(point);
                }
                None => {
                    index.insert(s.labels.clone(), (series.len(), ts));
                    series.push(RangeSeries {
                        labels: s.labels,
                        points: vec![point],
                        drop_name: s.drop_name,
                    });
                }
            }
        }
        ts = match ts.checked_add(step) {
            Some(next) => next,
            None => break,
        };
    }
    Ok(QueryValue::Matrix(finish_matrix(series)?))
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
                if prev.points.windows(2).any(|w| w[0].t == w[1].t) {
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
    use crate::promql::{Engine, EngineOptions, QueryError, QueryValue};
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
    async fn queries_wait_for_a_concurrency_slot() {
        let (_dir, s) = storage(1).await;
        let engine = Engine::new(EngineOptions {
            max_concurrent: 1,
            timeout: Duration::from_millis(50),
            ..EngineOptions::default()
        });
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
