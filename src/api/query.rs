//! The PromQL and metadata read endpoints of the Prometheus HTTP API.
//!
//! Owns: `/api/v1/query`, `/api/v1/query_range` (GET and POST form), `/api/v1/series`,
//! `/api/v1/labels`, `/api/v1/label/<name>/values` and `/api/v1/query_exemplars`, with
//! Prometheus's parameter order, defaults, limits, error texts and status codes.
//! Calls `params` (parsing), `json` (rendering), the `promql::Engine` and
//! `storage::Storage` through `AppState`, `fanout::notes` (the warnings of an
//! answer given without some node, collected around the storage calls; ADR 0012), and
//! `query_cache` for range queries (`nocache=1` bypasses it; ADR 0024; `nopushdown=1`
//! bypasses aggregation pushdown, ADR 0029), and
//! `active_queries`, which lists each query while it is evaluated.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use promql_parser::parser::Expr;
use promql_parser::util::{walk_expr, ExprVisitor};

use super::active_queries::QueryDescription;
use super::params::{
    invalid_param, limit_param, parse_duration, parse_match_params, parse_time, selector_matchers,
    time_param, unescape_label_name, FormParams, MAX_TIME_MS, MIN_TIME_MS,
};
use super::query_cache::RangeQuery;
use super::slow_query::{self, SlowQuery};
use super::{json, ApiError, AppState};
use crate::fanout::notes::{self, ReadNotes};
use crate::model::{Labels, Matcher};
use crate::promql::{limits, Annotations, QueryOutput, QueryValue};
use crate::storage::{
    BoxFuture, ExemplarRequest, LabelRequest, Storage, StorageError, WithPushdown,
};

/// Most points a range query may return per series (Prometheus's fixed limit).
const MAX_POINTS_PER_SERIES: i128 = 11_000;
/// Warnings and infos listed per answer; the rest are counted (Prometheus: 10 each).
const MAX_ANNOTATIONS: usize = 10;
const TRUNCATED_WARNING: &str = "results truncated due to limit";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/query", get(instant_query).post(instant_query))
        .route("/api/v1/query_range", get(range_query).post(range_query))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(label_names).post(label_names))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route(
            "/api/v1/query_exemplars",
            get(query_exemplars).post(query_exemplars),
        )
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn instant_query(
    State(state): State<AppState>,
    params: FormParams,
) -> Result<Response, ApiError> {
    let limit = limit_param(&params)?;
    let time_ms = time_param(&params, "time", now_ms())?;
    let timeout = timeout_param(&params, &state)?;
    reject_per_query_lookback(&params)?;
    let storage = query_storage(&state, &params)?;
    let query = params.value("query");
    let engine = state.engine();
    let started = Instant::now();
    let _listed = state.active_queries().register(QueryDescription {
        endpoint: "query",
        query: query.to_string(),
        start_ms: time_ms,
        end_ms: time_ms,
        step_ms: 0,
    });
    let (output, cluster) =
        notes::collect(engine.instant_query_with_timeout(storage, query, time_ms, timeout)).await;
    let request = SlowQuery {
        endpoint: "query",
        query,
        start_ms: time_ms,
        end_ms: time_ms,
        step_ms: 0,
    };
    let threshold = state.info().query_log_slow;
    slow_query::log_if_slow(threshold, request, started.elapsed(), &output, &cluster);
    let stats = StatsParam::of(&params);
    Ok(render_query_output(
        output?, cluster, limit, time_ms, &stats,
    ))
}

async fn range_query(
    State(state): State<AppState>,
    params: FormParams,
) -> Result<Response, ApiError> {
    let limit = limit_param(&params)?;
    let start = parse_time(params.value("start")).map_err(|e| invalid_param("start", e))?;
    let end = parse_time(params.value("end")).map_err(|e| invalid_param("end", e))?;
    if end < start {
        return Err(invalid_param(
            "end",
            "end timestamp must not be before start time",
        ));
    }
    let step_ms = step_param(&params)?;
    check_resolution(start, end, step_ms)?;
    let timeout = timeout_param(&params, &state)?;
    reject_per_query_lookback(&params)?;
    let use_cache = !bool_param(&params, "nocache")?;
    let storage = query_storage(&state, &params)?;
    let query_text = params.value("query");
    let started = Instant::now();
    let query = RangeQuery {
        query: query_text,
        start,
        end,
        step: step_ms,
        timeout,
        now: now_ms(),
    };
    let _listed = state.active_queries().register(QueryDescription {
        endpoint: "query_range",
        query: query_text.to_string(),
        start_ms: start,
        end_ms: end,
        step_ms,
    });
    let (output, cluster) = state
        .query_cache()
        .range_query(state.engine(), storage, query, use_cache)
        .await;
    let request = SlowQuery {
        endpoint: "query_range",
        query: query_text,
        start_ms: start,
        end_ms: end,
        step_ms,
    };
    let threshold = state.info().query_log_slow;
    slow_query::log_if_slow(threshold, request, started.elapsed(), &output, &cluster);
    let stats = StatsParam::of(&params);
    Ok(render_query_output(output?, cluster, limit, end, &stats))
}

/// The storage a query reads: the node's, without its aggregation pushdown when the
/// query says `nopushdown=1` (ADR 0029; answers are the same, only where aggregations
/// are computed differs).
fn query_storage(state: &AppState, params: &FormParams) -> Result<Arc<dyn Storage>, ApiError> {
    let storage = state.services()?.storage.clone();
    if bool_param(params, "nopushdown")? {
        let pushdown = None;
        return Ok(Arc::new(WithPushdown {
            store: storage,
            pushdown,
        }));
    }
    Ok(storage)
}

/// A flag parameter such as VictoriaMetrics's `nocache`: `1`/`true` set, absent, empty,
/// `0` or `false` unset, anything else refused.
fn bool_param(params: &FormParams, name: &str) -> Result<bool, ApiError> {
    match params.value(name) {
        "1" | "true" => Ok(true),
        "" | "0" | "false" => Ok(false),
        other => Err(invalid_param(
            name,
            format!("cannot parse {other:?} as a boolean (1, 0, true or false)"),
        )),
    }
}

/// The range query step in milliseconds. Steps below a millisecond cannot be evaluated
/// on millisecond timestamps, so they get the zero-step error.
fn step_param(params: &FormParams) -> Result<i64, ApiError> {
    let step_ns = parse_duration(params.value("step")).map_err(|e| invalid_param("step", e))?;
    let step_ms = step_ns / 1_000_000;
    if step_ms <= 0 {
        return Err(invalid_param(
            "step",
            "zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    Ok(step_ms)
}

/// Prometheus refuses more than 11,000 steps per series (a plain bad_data error).
fn check_resolution(start: i64, end: i64, step_ms: i64) -> Result<(), ApiError> {
    let steps = (i128::from(end) - i128::from(start)) / i128::from(step_ms);
    if steps > MAX_POINTS_PER_SERIES {
        return Err(ApiError::bad_data(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    Ok(())
}

/// The `timeout` parameter: a per-request limit; the engine applies the shorter of it
/// and its configured timeout. Absent, the configured timeout alone applies.
fn timeout_param(params: &FormParams, state: &AppState) -> Result<Duration, ApiError> {
    let value = params.value("timeout");
    if value.is_empty() {
        return Ok(state.engine().options().timeout);
    }
    let nanos = parse_duration(value).map_err(|e| invalid_param("timeout", e))?;
    // A deadline already passed times the query out at once, as in Prometheus.
    Ok(Duration::from_nanos(u64::try_from(nanos).unwrap_or(0)))
}

/// Prometheus accepts a per-query `lookback_delta`; the engine has one lookback for all
/// queries, so answering with a different window would be silently wrong.
fn reject_per_query_lookback(params: &FormParams) -> Result<(), ApiError> {
    if params.value("lookback_delta").is_empty() {
        return Ok(());
    }
    Err(ApiError::bad_data(
        "error parsing lookback delta duration: a per-query lookback_delta is not supported; the server-wide --query-lookback-delta applies",
    ))
}

/// Renders a result; `eval_time_ms` stamps vector samples (see `json::write_query_data`).
/// The cluster's notes (nodes answered without, lagging replicas) come first and are
/// never capped: there are at most a few per node.
fn render_query_output(
    output: QueryOutput,
    cluster: ReadNotes,
    limit: usize,
    eval_time_ms: i64,
    stats_param: &StatsParam,
) -> Response {
    let QueryOutput {
        mut value,
        annotations,
        stats,
        ..
    } = output;
    let (engine_warnings, engine_infos) = annotation_strings(annotations);
    let ReadNotes {
        mut warnings,
        mut infos,
        ..
    } = cluster;
    warnings.extend(engine_warnings);
    infos.extend(engine_infos);
    if truncate_result(&mut value, limit) {
        warnings.push(TRUNCATED_WARNING.to_string());
    }
    warnings.extend(stats_param.warning.clone());
    let stats = stats_param.wanted.then_some(&stats);
    json::success_response(&warnings, &infos, |out| {
        json::write_query_data_with_stats(out, &value, eval_time_ms, stats)
    })
}

/// The `stats` parameter of query and query_range, read as Prometheus does: any
/// non-empty value adds `data.stats`; values other than `true` and `all` also get
/// Prometheus's deprecation warning.
struct StatsParam {
    wanted: bool,
    warning: Option<String>,
}

impl StatsParam {
    fn of(params: &FormParams) -> StatsParam {
        let value = params.value("stats");
        let warning = (!matches!(value, "" | "true" | "all")).then(|| {
            format!(
                "value {value:?} for parameter \"stats\" is deprecated and will be rejected in the next major release, use \"true\" or \"all\""
            )
        });
        StatsParam {
            wanted: !value.is_empty(),
            warning,
        }
    }
}

/// Warnings and infos as Prometheus lists them: at most ten each, then a count of the
/// ones left out.
fn annotation_strings(annotations: Annotations) -> (Vec<String>, Vec<String>) {
    (
        capped(annotations.warnings, "warning"),
        capped(annotations.infos, "info"),
    )
}

fn capped(messages: impl IntoIterator<Item = String>, kind: &str) -> Vec<String> {
    let mut messages = messages.into_iter();
    let mut kept: Vec<String> = messages.by_ref().take(MAX_ANNOTATIONS).collect();
    let omitted = messages.count();
    if omitted > 0 {
        kept.push(format!("{omitted} more {kind} annotations omitted"));
    }
    kept
}

/// Keeps the first `limit` series of a vector or matrix (0 = no limit); true if cut.
fn truncate_result(value: &mut QueryValue, limit: usize) -> bool {
    let len = match value {
        QueryValue::Vector(v) => v.len(),
        QueryValue::Matrix(m) => m.len(),
        QueryValue::Scalar { .. } | QueryValue::String { .. } => return false,
    };
    if limit == 0 || len <= limit {
        return false;
    }
    match value {
        QueryValue::Vector(v) => v.truncate(limit),
        QueryValue::Matrix(m) => m.truncate(limit),
        QueryValue::Scalar { .. } | QueryValue::String { .. } => {}
    }
    true
}

/// Cuts a sorted answer to `limit` (0 = no limit), returning the warnings to send.
fn apply_limit<T>(items: &mut Vec<T>, limit: usize) -> Vec<String> {
    if limit > 0 && items.len() > limit {
        items.truncate(limit);
        return vec![TRUNCATED_WARNING.to_string()];
    }
    Vec::new()
}

/// The time range of the metadata endpoints: `start`/`end`, default all time.
fn metadata_range(params: &FormParams) -> Result<(i64, i64), ApiError> {
    let start = time_param(params, "start", MIN_TIME_MS)?;
    let end = time_param(params, "end", MAX_TIME_MS)?;
    Ok((start, end))
}

/// One storage request per matcher set; a single request without matchers when there
/// are none (all series).
fn label_requests(sets: Vec<Vec<Matcher>>, mint: i64, maxt: i64) -> Vec<LabelRequest> {
    if sets.is_empty() {
        return vec![LabelRequest {
            matchers: Vec::new(),
            mint,
            maxt,
        }];
    }
    sets.into_iter()
        .map(|matchers| LabelRequest {
            matchers,
            mint,
            maxt,
        })
        .collect()
}

/// Sorted union of per-request answers (each already sorted).
fn sorted_union<T: Ord>(mut parts: Vec<Vec<T>>) -> Vec<T> {
    if parts.len() == 1 {
        return parts.pop().unwrap_or_default();
    }
    let mut all: Vec<T> = parts.into_iter().flatten().collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Asks storage once per `match[]` set (once without matchers when there is none) and
/// returns the sorted union of the answers with the cluster's notes about them.
async fn union_of_answers<'s, T: Ord>(
    sets: Vec<Vec<Matcher>>,
    start: i64,
    end: i64,
    mut ask: impl FnMut(LabelRequest) -> BoxFuture<'s, Result<Vec<T>, StorageError>>,
) -> Result<(Vec<T>, ReadNotes), ApiError> {
    let requests = label_requests(sets, start, end);
    let (parts, cluster) = notes::collect(async {
        let mut parts = Vec::with_capacity(requests.len());
        for request in requests {
            parts.push(ask(request).await?);
        }
        Ok::<_, StorageError>(parts)
    })
    .await;
    Ok((sorted_union(parts?), cluster))
}

/// The warnings of a metadata answer: the cluster's, then the limit's.
fn metadata_warnings(cluster: ReadNotes, limited: Vec<String>) -> (Vec<String>, Vec<String>) {
    let ReadNotes {
        mut warnings,
        infos,
        ..
    } = cluster;
    warnings.extend(limited);
    (warnings, infos)
}

async fn series(State(state): State<AppState>, params: FormParams) -> Result<Response, ApiError> {
    let selectors: Vec<&str> = params.values("match[]").collect();
    if selectors.is_empty() {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let limit = limit_param(&params)?;
    let (start, end) = metadata_range(&params)?;
    let sets = parse_match_params(selectors).map_err(|e| invalid_param("match[]", e))?;
    let storage = &state.services()?.storage;
    let (mut all, cluster): (Vec<Labels>, _) =
        union_of_answers(sets, start, end, |r| storage.series(r)).await?;
    let (warnings, infos) = metadata_warnings(cluster, apply_limit(&mut all, limit));
    Ok(json::success_response(&warnings, &infos, |out| {
        json::write_label_sets(out, &all)
    }))
}

async fn label_names(
    State(state): State<AppState>,
    params: FormParams,
) -> Result<Response, ApiError> {
    let limit = limit_param(&params)?;
    let (start, end) = metadata_range(&params)?;
    let sets = parse_match_params(params.values("match[]")).map_err(ApiError::bad_data)?;
    let storage = &state.services()?.storage;
    let (mut names, cluster) =
        union_of_answers(sets, start, end, |r| storage.label_names(r)).await?;
    let (warnings, infos) = metadata_warnings(cluster, apply_limit(&mut names, limit));
    Ok(json::success_response(&warnings, &infos, |out| {
        json::write_string_list(out, &names)
    }))
}

async fn label_values(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: FormParams,
) -> Result<Response, ApiError> {
    let name = unescape_label_name(&name);
    if name.is_empty() {
        return Err(ApiError::bad_data(format!("invalid label name: {name:?}")));
    }
    let limit = limit_param(&params)?;
    let (start, end) = metadata_range(&params)?;
    let sets = parse_match_params(params.values("match[]")).map_err(ApiError::bad_data)?;
    let storage = &state.services()?.storage;
    let ask = |r| storage.label_values(name.clone(), r);
    let (mut values, cluster) = union_of_answers(sets, start, end, ask).await?;
    let (warnings, infos) = metadata_warnings(cluster, apply_limit(&mut values, limit));
    Ok(json::success_response(&warnings, &infos, |out| {
        json::write_string_list(out, &values)
    }))
}

/// The exemplars of the series the query's selectors select, in `[start, end]`, from
/// every node's exemplar store (ADR 0027), in Prometheus's shape; a query without a
/// selector is answered 204, as Prometheus does.
async fn query_exemplars(
    State(state): State<AppState>,
    params: FormParams,
) -> Result<Response, ApiError> {
    let start = time_param(&params, "start", MIN_TIME_MS)?;
    let end = time_param(&params, "end", MAX_TIME_MS)?;
    if end < start {
        return Err(ApiError::bad_data(
            "end timestamp must not be before start timestamp",
        ));
    }
    let expr = limits::parse(params.value("query")).map_err(ApiError::bad_data)?;
    let storage = state.services()?.storage.clone();
    let matcher_sets = selector_matcher_sets(&expr).map_err(ApiError::bad_data)?;
    if matcher_sets.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let request = ExemplarRequest {
        matcher_sets,
        start,
        end,
    };
    let (found, cluster) = notes::collect(storage.exemplars(request)).await;
    let found = found?;
    Ok(json::success_response(
        &cluster.warnings,
        &cluster.infos,
        |out| json::write_exemplars(out, &found),
    ))
}

/// The matchers of every selector of an expression (vector and matrix selectors; each
/// `or` alternative of a selector is a set of its own), as Prometheus's
/// `parser.ExtractSelectors`.
fn selector_matcher_sets(expr: &Expr) -> Result<Vec<Vec<Matcher>>, String> {
    struct Selectors(Vec<Result<Vec<Matcher>, String>>);
    impl ExprVisitor for Selectors {
        type Error = std::convert::Infallible;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
            let vs = match expr {
                Expr::VectorSelector(vs) => vs,
                Expr::MatrixSelector(ms) => &ms.vs,
                _ => return Ok(true),
            };
            let name = vs.name.as_deref();
            if vs.matchers.or_matchers.is_empty() {
                self.0.push(selector_matchers(name, &vs.matchers.matchers));
            }
            for alternative in &vs.matchers.or_matchers {
                self.0.push(selector_matchers(name, alternative));
            }
            Ok(true)
        }
    }
    let mut selectors = Selectors(Vec::new());
    let _ = walk_expr(&mut selectors, expr);
    selectors.0.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::InstantSample;

    fn params(query: &str) -> FormParams {
        FormParams::from_parts(Some(query), None)
    }

    #[test]
    fn step_must_be_positive_milliseconds() {
        assert_eq!(step_param(&params("step=15s")), Ok(15_000));
        assert_eq!(step_param(&params("step=0.5")), Ok(500));
        for bad in ["step=0", "step=-5", "step=0.0001"] {
            let err = step_param(&params(bad)).unwrap_err();
            assert_eq!(err.error_type, "bad_data");
            assert_eq!(err.message, "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer");
        }
        assert_eq!(
            step_param(&params("step=soon")).unwrap_err().message,
            "invalid parameter \"step\": cannot parse \"soon\" to a valid duration"
        );
    }

    #[test]
    fn resolution_limit_is_11000_steps() {
        assert!(check_resolution(0, 11_000_000, 1000).is_ok());
        let err = check_resolution(0, 11_001_000, 1000).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err
            .message
            .starts_with("exceeded maximum resolution of 11,000 points"));
    }

    #[test]
    fn annotations_are_capped_at_ten() {
        let many: Vec<String> = (0..13).map(|i| format!("w{i:02}")).collect();
        let kept = capped(many, "warning");
        assert_eq!(kept.len(), 11);
        assert_eq!(kept[10], "3 more warning annotations omitted");
        assert_eq!(capped(vec!["i".to_string()], "info"), ["i"]);
    }

    #[test]
    fn limit_truncates_vectors_only_when_longer() {
        let sample = |v| InstantSample {
            labels: Labels::empty(),
            t: 0,
            v,
            h: None,
            drop_name: false,
        };
        let mut value = QueryValue::Vector(vec![sample(1.0), sample(2.0), sample(3.0)]);
        assert!(!truncate_result(&mut value, 0));
        assert!(!truncate_result(&mut value, 3));
        assert!(truncate_result(&mut value, 2));
        assert!(matches!(&value, QueryValue::Vector(v) if v.len() == 2));
        let mut scalar = QueryValue::Scalar { t: 0, v: 1.0 };
        assert!(!truncate_result(&mut scalar, 1));
    }

    #[test]
    fn unions_of_sorted_answers() {
        assert_eq!(sorted_union(vec![vec![1, 3]]), [1, 3]);
        assert_eq!(sorted_union(vec![vec![1, 3], vec![2, 3]]), [1, 2, 3]);
        assert_eq!(sorted_union::<i32>(vec![]), Vec::<i32>::new());
        let mut items = vec![1, 2, 3];
        assert_eq!(apply_limit(&mut items, 2), [TRUNCATED_WARNING]);
        assert_eq!(items, [1, 2]);
        assert!(apply_limit(&mut items, 0).is_empty());
    }

    #[test]
    fn exemplar_queries_select_by_every_selector() {
        let sets = |q| {
            let sets = selector_matcher_sets(&promql_parser::parser::parse(q).unwrap()).unwrap();
            sets.iter()
                .map(|set| {
                    set.iter()
                        .map(|m| m.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            sets(r#"rate(a{job="x"}[5m]) / b"#),
            vec![r#"__name__="a",job="x""#, r#"__name__="b""#]
        );
        assert_eq!(
            sets(r#"{job="x" or job=~"y.*"}"#),
            vec![r#"job="x""#, r#"job=~"y.*""#]
        );
        assert!(sets("1 + 2").is_empty());
    }
}
