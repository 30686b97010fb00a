//! Node-to-node endpoints (`/internal/v1/...`): the receiving side of replication and
//! fan-out, and local-only reads for tests and debugging.
//!
//! Owns: `POST /internal/v1/write` (an already-routed batch of series, metric metadata
//! and exemplars: stored in the local TSDB, never forwarded again; answers the append
//! outcome as JSON), `POST /internal/v1/backfill` (the same for repairs: `Tsdb::backfill`, which
//! also stores samples too old for the head, ADR 0016), `POST
//! /internal/v1/anti-entropy/{digests,pull}` (JSON requests answered by
//! `replication::antientropy`: digests of the series both nodes own, and samples as a
//! snappy remote-write body), `POST /internal/v1/read-local` (remote read of this node's
//! data only, SAMPLES answers; a debugging aid), `POST /internal/v1/select` (the
//! fan-out's select: JSON `peer::WireSelectRequest`, answered one copy per series as
//! `fanout::one_copy` encodes it, ADR 0028), `POST /internal/v1/select-histograms`
//! (the same request; this node's matching native histogram series, each in full, as
//! `fanout::histograms` encodes it), `POST /internal/v1/aggregate` (this node's
//! share of a pushed-down aggregation: JSON `fanout::pushdown::WirePushdownRequest`,
//! answered as `fanout::pushdown` encodes it, 409 when it declines; ADR 0029), `POST /internal/v1/{series,labels,label-values}` (JSON,
//! `peer::WireLabelRequest`) and `POST /internal/v1/metadata` (JSON,
//! `peer::WireMetadataRequest`: this node's metadata, ADR 0020), `POST
//! /internal/v1/exemplars` (JSON, `peer::WireExemplarRequest`: this node's exemplars,
//! ADR 0027), `POST
//! /internal/v1/tsdb-status` (JSON, `peer::WireCardinalityRequest`: this node's part of
//! the cluster's head statistics, ADR 0022), `POST /internal/v1/changes` (JSON: a
//! `storage::ChangeMark` or null, answered with this node's `storage::Changes` since it;
//! the query result cache polls it, ADR 0024), and `POST
//! /internal/v1/admin/{delete-series,clean-tombstones}` (a peer's share of a
//! cluster-wide admin request, applied to this node's data when its own admin API is
//! enabled; ADR 0023).
//! Every read answer carries `X-Timbala-Hints-Pending`: the hinted batches this node
//! holds for others, so the reader knows which replicas lag (ADR 0012). Every handler
//! logs the caller's trace id. With cluster keys, `require_cluster_credential` guards
//! every route: a request without a valid `X-Timbala-Cluster-Auth` is answered 401
//! before any handler runs (ADR 0014). Calls `ingest` (decoding), `peer` (wire shapes),
//! `cluster::keys` (the credential), `fanout::{labels_to_pairs, one_copy, histograms, pushdown}`, the remote-read helpers
//! of `read`, the local `tsdb` through `storage::Storage` (and `Tsdb::backfill`), and
//! `replication::antientropy` for the anti-entropy answers.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http_body_util::BodyExt;
use tracing::Instrument;

use super::{ApiError, AppState, NodeServices};
use crate::cluster::identity::{unix_millis, NodeId};
use crate::cluster::keys::{CredentialError, CLUSTER_AUTH_HEADER};
use crate::fanout::histograms as fanout_histograms;
use crate::fanout::{counts_series, labels_to_pairs, one_copy, pushdown};
use crate::ingest::{self, DecodeLimits};
use crate::peer::{
    self, WireCardinalityRequest, WireDeleteRequest, WireExemplarRequest, WireLabelRequest,
    WireMetadataRequest, WireSelectRequest,
};
use crate::replication::antientropy::{self, AntiEntropyError};
use crate::replication::WireOutcome;
use crate::storage::{
    AppendOutcome, ExemplarRequest, HistogramAppendError, LabelRequest, SelectError, Storage,
    StorageError,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(peer::WRITE_PATH, post(internal_write))
        .route(peer::BACKFILL_PATH, post(internal_backfill))
        .route(peer::DIGESTS_PATH, post(internal_anti_entropy_digests))
        .route(peer::PULL_PATH, post(internal_anti_entropy_pull))
        .route(peer::READ_LOCAL_PATH, post(internal_read_local))
        .route(peer::SELECT_PATH, post(internal_select))
        .route(
            peer::SELECT_HISTOGRAMS_PATH,
            post(internal_select_histograms),
        )
        .route(peer::PUSHDOWN_PATH, post(internal_aggregate))
        .route(peer::SERIES_PATH, post(internal_series))
        .route(peer::LABELS_PATH, post(internal_labels))
        .route(peer::LABEL_VALUES_PATH, post(internal_label_values))
        .route(peer::METADATA_PATH, post(internal_metadata))
        .route(peer::EXEMPLARS_PATH, post(internal_exemplars))
        .route(peer::CARDINALITY_PATH, post(internal_cardinality))
        .route(peer::CHANGES_PATH, post(internal_changes))
        .route(peer::ADMIN_DELETE_SERIES_PATH, post(internal_delete_series))
        .route(
            peer::ADMIN_CLEAN_TOMBSTONES_PATH,
            post(internal_clean_tombstones),
        )
}

/// Largest internal request body the credential check reads (the body is part of what
/// the credential covers): the larger of the remote-write limit and the remote-read one.
const MIN_CHECKED_BODY_BYTES: usize = 32 << 20;

/// Middleware on the internal routes: with cluster keys, checks the request's cluster
/// credential (method, path, stamp and body hash) against every configured key and
/// answers 401 in Prometheus's error format when it is missing, stale or wrong; without
/// keys every request passes, as in an open cluster.
pub async fn require_cluster_credential(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(keys) = state.info().cluster_keys.as_ref() else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let header = parts
        .headers
        .get(CLUSTER_AUTH_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let refuse = |why: CredentialError| {
        tracing::debug!(path = %parts.uri.path(), reason = why.label(), "internal request refused");
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why.to_string()).into_response()
    };
    if header.is_none() {
        // Refused before reading the body.
        return refuse(CredentialError::Missing);
    }
    let limit = state
        .info()
        .max_write_body_bytes
        .max(MIN_CHECKED_BODY_BYTES);
    let body = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return ApiError::bad_data(format!("reading body: {e}")).into_response();
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    if let Err(why) = keys.verify_request(header, parts.method.as_str(), path, &body, unix_millis())
    {
        return refuse(why);
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

fn trace_id(headers: &HeaderMap) -> String {
    headers
        .get(peer::TRACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// This node's hint backlog, taken before a read is answered: a hint delivered while
/// the read runs is still reported, so the reader errs towards a warning.
fn hints_pending(state: &AppState) -> Vec<(NodeId, u64)> {
    state
        .services()
        .map(|services| services.cluster.hints.pending_batches())
        .unwrap_or_default()
}

/// Adds a hint backlog to a read answer.
fn with_hints_pending(pending: &[(NodeId, u64)], mut response: Response) -> Response {
    if pending.is_empty() {
        return response;
    }
    if let Ok(value) = HeaderValue::from_str(&peer::encode_hints_pending(pending)) {
        response
            .headers_mut()
            .insert(peer::HINTS_PENDING_HEADER, value);
    }
    response
}

async fn internal_read_local(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let pending = hints_pending(&state);
    let response = super::read::local_read(State(state), headers, body).await;
    with_hints_pending(&pending, response)
}

/// Largest fan-out select request (matchers, the asker's view, and in a second round
/// the label hashes of the series it fetches).
const MAX_SELECT_BODY: usize = 32 << 20;

/// `POST /internal/v1/select`: this node's share of a fan-out select, one copy per
/// series (ADR 0028): the matching series it is the first alive owner of in the asker's
/// view in full, digests of the others it owns (`fanout::one_copy`). 422 past the
/// request's sample limit, so the asker refuses the query rather than the node.
async fn internal_select(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("internal_select", trace_id = %trace_id(&headers));
    async move {
        let (tsdb, membership) = match state.services() {
            Ok(services) => (services.tsdb.clone(), services.cluster.membership.clone()),
            Err(e) => return error(e.status, e.message),
        };
        let pending = hints_pending(&state);
        let body = match read_body(body, MAX_SELECT_BODY).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let wire: WireSelectRequest = match serde_json::from_slice(&body) {
            Ok(w) => w,
            Err(e) => {
                return ApiError::bad_data(format!("bad select request: {e}")).into_response()
            }
        };
        let request = match wire.to_select_request() {
            Ok(r) => r,
            Err(e) => return ApiError::bad_data(e).into_response(),
        };
        let series = match tsdb.select(request).await {
            Ok(series) => series,
            Err(SelectError::TooManySamples) => {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "exceeded sample limit")
            }
            Err(SelectError::Storage(e)) => {
                return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        };
        let view = membership.view();
        let encoded = tokio::task::spawn_blocking(move || {
            let answer = one_copy::answer_select(&view.ring, view.local.id, &wire, series);
            one_copy::encode_answer(&answer)
        })
        .await;
        match encoded {
            Ok(bytes) => with_hints_pending(
                &pending,
                ([("content-type", "application/x-protobuf")], bytes).into_response(),
            ),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    .instrument(span)
    .await
}

/// Largest pushed-down aggregation request: the query text (bounded by the PromQL
/// limits) and the asker's view.
const MAX_PUSHDOWN_BODY: usize = 4 << 20;

/// `POST /internal/v1/aggregate`: this node's share of a pushed-down aggregation (ADR
/// 0029): the aggregation evaluated over the matching series it is the first alive
/// owner of in the asker's view, and digests of every matching series it holds. The
/// body is untrusted: it is parsed and bounded, the query goes through the PromQL
/// limits, and the share holds no more samples than this node's own query limit. 409
/// when the node declines (another ring, a query it cannot evaluate so, a failure):
/// the asker then reads the ordinary way.
async fn internal_aggregate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("internal_aggregate", trace_id = %trace_id(&headers));
    async move {
        let (tsdb, membership) = match state.services() {
            Ok(services) => (services.tsdb.clone(), services.cluster.membership.clone()),
            Err(e) => return error(e.status, e.message),
        };
        let pending = hints_pending(&state);
        let body = match read_body(body, MAX_PUSHDOWN_BODY).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let mut wire: pushdown::WirePushdownRequest = match serde_json::from_slice(&body) {
            Ok(w) => w,
            Err(e) => {
                return ApiError::bad_data(format!("bad pushdown request: {e}")).into_response()
            }
        };
        let own_limit = state.engine().options().max_samples;
        if wire.request.max_samples == 0 || wire.request.max_samples > own_limit {
            wire.request.max_samples = own_limit;
        }
        let view = membership.view();
        let store: &dyn Storage = &tsdb;
        match pushdown::answer_share(store, &view.ring, view.local.id, wire).await {
            Ok(Some(answer)) => {
                let encoded =
                    tokio::task::spawn_blocking(move || pushdown::encode_answer(&answer)).await;
                match encoded {
                    Ok(bytes) => with_hints_pending(
                        &pending,
                        ([("content-type", "application/x-protobuf")], bytes).into_response(),
                    ),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
            Ok(None) => error(StatusCode::CONFLICT, "declined"),
            Err(e) => error(StatusCode::CONFLICT, format!("declined: {e}")),
        }
    }
    .instrument(span)
    .await
}

/// `POST /internal/v1/select-histograms`: this node's share of a fan-out select of
/// native histograms: every matching histogram series its store holds, in full, as
/// `fanout::histograms` encodes it (the asker merges the replicas). 422 past the
/// request's sample limit, as for `internal_select`.
async fn internal_select_histograms(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("internal_select_histograms", trace_id = %trace_id(&headers));
    async move {
        let tsdb = match state.services() {
            Ok(services) => services.tsdb.clone(),
            Err(e) => return error(e.status, e.message),
        };
        let pending = hints_pending(&state);
        let body = match read_body(body, MAX_SELECT_BODY).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let request = match serde_json::from_slice::<WireSelectRequest>(&body)
            .map_err(|e| format!("bad select request: {e}"))
            .and_then(|wire| wire.to_select_request())
        {
            Ok(r) => r,
            Err(e) => return ApiError::bad_data(e).into_response(),
        };
        let series = match tsdb.select_histograms(request).await {
            Ok(series) => series,
            Err(SelectError::TooManySamples) => {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "exceeded sample limit")
            }
            Err(SelectError::Storage(e)) => {
                return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        };
        let encoded =
            tokio::task::spawn_blocking(move || fanout_histograms::encode_answer(&series)).await;
        match encoded {
            Ok(bytes) => with_hints_pending(
                &pending,
                ([("content-type", "application/x-protobuf")], bytes).into_response(),
            ),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    .instrument(span)
    .await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("reading body: {e}")))
}

/// How an internal write is stored.
#[derive(Clone, Copy)]
enum WriteMode {
    /// The head's rules (replication, hint replay).
    Head,
    /// Repair: samples already held are skipped, those too old for the head become
    /// blocks (`Tsdb::backfill`, ADR 0016).
    Backfill,
}

async fn internal_write(state: State<AppState>, headers: HeaderMap, body: Body) -> Response {
    stored_write(state, headers, body, WriteMode::Head).await
}

async fn internal_backfill(state: State<AppState>, headers: HeaderMap, body: Body) -> Response {
    stored_write(state, headers, body, WriteMode::Backfill).await
}

async fn stored_write(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
    mode: WriteMode,
) -> Response {
    let span = tracing::info_span!("internal_write", trace_id = %trace_id(&headers));
    async move {
        if !headers.contains_key(peer::ROUTED_HEADER) {
            return error(
                StatusCode::BAD_REQUEST,
                "internal writes must be marked as routed",
            );
        }
        let tsdb = match state.services() {
            Ok(services) => services.tsdb.clone(),
            Err(e) => return error(e.status, e.message),
        };
        let max_body = state.info().max_write_body_bytes;
        let body = match read_body(body, max_body).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let limits = DecodeLimits::for_body_limit(max_body);
        let decoded = tokio::task::spawn_blocking(move || {
            ingest::decode_internal_write_request(&body, &limits)
        })
        .await;
        let decoded = match decoded {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let stored = async {
            if !decoded.metadata.is_empty() {
                tsdb.record_metadata(decoded.metadata).await?;
            }
            // Replication sends exemplars and native histograms apart from samples (ADR
            // 0027, 0030): an answer counts one of the three.
            let mut exemplars_held = 0;
            if !decoded.exemplars.is_empty() {
                exemplars_held = tsdb.append_exemplars(decoded.exemplars).await?;
            }
            let mut histograms = AppendOutcome::default();
            if !decoded.histograms.is_empty() {
                histograms =
                    tsdb.append_histograms(decoded.histograms)
                        .await
                        .map_err(|e| match e {
                            HistogramAppendError::Storage(e) => e,
                            invalid => StorageError::Other(invalid.to_string()),
                        })?;
            }
            if decoded.series.is_empty() {
                histograms.appended += exemplars_held;
                return Ok(histograms);
            }
            let mut outcome = match mode {
                WriteMode::Head => tsdb.append(decoded.series).await,
                WriteMode::Backfill => tsdb.backfill(decoded.series).await.map(|b| b.outcome),
            }?;
            outcome.appended += exemplars_held;
            outcome.merge(histograms);
            Ok::<_, StorageError>(outcome)
        };
        match stored.await {
            Ok(outcome) => axum::Json(WireOutcome::from_outcome(&outcome)).into_response(),
            Err(e) => {
                tracing::warn!(error = %e, "internal write: local storage failed");
                error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }
    .instrument(span)
    .await
}

/// Decodes a JSON request of type `W`, runs `answer` on the local TSDB and returns JSON
/// with this node's hint backlog.
async fn json_answer<W, T, F>(
    state: AppState,
    headers: HeaderMap,
    body: Body,
    answer: F,
) -> Response
where
    W: serde::de::DeserializeOwned,
    T: serde::Serialize,
    F: AsyncFnOnce(crate::tsdb::Tsdb, W) -> Result<T, InternalReadError>,
{
    let span = tracing::info_span!("internal_read", trace_id = %trace_id(&headers));
    async move {
        let tsdb = match state.services() {
            Ok(services) => services.tsdb.clone(),
            Err(e) => return error(e.status, e.message),
        };
        let pending = hints_pending(&state);
        let body = match read_body(body, 16 << 20).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let wire: W = match serde_json::from_slice(&body) {
            Ok(w) => w,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        match answer(tsdb, wire).await {
            Ok(value) => with_hints_pending(&pending, axum::Json(value).into_response()),
            Err(InternalReadError::BadRequest(e)) => error(StatusCode::BAD_REQUEST, e),
            Err(InternalReadError::Storage(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        }
    }
    .instrument(span)
    .await
}

/// Why an internal read was not answered: the request (400) or the local store (503).
enum InternalReadError {
    BadRequest(String),
    Storage(String),
}

impl From<crate::storage::StorageError> for InternalReadError {
    fn from(e: crate::storage::StorageError) -> Self {
        InternalReadError::Storage(e.to_string())
    }
}

/// `json_answer` for the label requests (`peer::WireLabelRequest`).
async fn label_answer<T, F>(state: AppState, headers: HeaderMap, body: Body, answer: F) -> Response
where
    T: serde::Serialize,
    F: AsyncFnOnce(
        crate::tsdb::Tsdb,
        WireLabelRequest,
        LabelRequest,
    ) -> Result<T, InternalReadError>,
{
    json_answer(
        state,
        headers,
        body,
        async |tsdb, wire: WireLabelRequest| {
            let request = wire.to_request().map_err(InternalReadError::BadRequest)?;
            answer(tsdb, wire, request).await
        },
    )
    .await
}

async fn internal_series(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    label_answer(state, headers, body, async |tsdb, _, req| {
        let series = tsdb.series(req).await?;
        Ok(series.into_iter().map(labels_to_pairs).collect::<Vec<_>>())
    })
    .await
}

async fn internal_labels(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    label_answer(state, headers, body, async |tsdb, _, req| {
        Ok(tsdb.label_names(req).await?)
    })
    .await
}

async fn internal_label_values(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    label_answer(state, headers, body, async |tsdb, wire, req| {
        let name = wire.name.ok_or(InternalReadError::BadRequest(
            "label-values needs a label name".into(),
        ))?;
        Ok(tsdb.label_values(name, req).await?)
    })
    .await
}

/// Largest anti-entropy request body (digest and pull requests are JSON lists bounded
/// by `antientropy`'s limits; this bounds the bytes read before parsing).
const MAX_ANTI_ENTROPY_BODY: usize = 16 << 20;

fn anti_entropy_error(e: AntiEntropyError) -> Response {
    match e {
        AntiEntropyError::BadRequest(m) => ApiError::bad_data(m).into_response(),
        AntiEntropyError::Storage(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The node's services and an anti-entropy request read and parsed (with its size in
/// bytes); a node not ready yet answers 503, bad input 400.
async fn anti_entropy_input<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Body,
) -> Result<(&NodeServices, T, usize), Response> {
    let services = state.services().map_err(|e| error(e.status, e.message))?;
    let body = read_body(body, MAX_ANTI_ENTROPY_BODY).await?;
    serde_json::from_slice(&body)
        .map(|request| (services, request, body.len()))
        .map_err(|e| ApiError::bad_data(format!("bad anti-entropy request: {e}")).into_response())
}

async fn internal_anti_entropy_digests(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("anti_entropy_digests", trace_id = %trace_id(&headers));
    async move {
        let (services, request, request_bytes) = match anti_entropy_input(&state, body).await {
            Ok(input) => input,
            Err(refused) => return refused,
        };
        let view = services.cluster.membership.view();
        let metrics = &services.cluster.anti_entropy_metrics;
        match antientropy::answer_digests(&services.tsdb, &view, request, metrics).await {
            Ok(answer) => match serde_json::to_vec(&answer) {
                Ok(bytes) => {
                    metrics.answered(request_bytes, bytes.len());
                    ([("content-type", "application/json")], bytes).into_response()
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            },
            Err(e) => anti_entropy_error(e),
        }
    }
    .instrument(span)
    .await
}

async fn internal_anti_entropy_pull(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("anti_entropy_pull", trace_id = %trace_id(&headers));
    async move {
        let (services, request, request_bytes) = match anti_entropy_input(&state, body).await {
            Ok(input) => input,
            Err(refused) => return refused,
        };
        match antientropy::answer_pull(&services.tsdb, request).await {
            Ok(bytes) => {
                services
                    .cluster
                    .anti_entropy_metrics
                    .answered(request_bytes, bytes.len());
                (
                    [
                        ("content-type", "application/x-protobuf"),
                        ("content-encoding", "snappy"),
                    ],
                    bytes,
                )
                    .into_response()
            }
            Err(e) => anti_entropy_error(e),
        }
    }
    .instrument(span)
    .await
}

/// This node's metric metadata (one family, or all), as `peer::WireMetadata` tuples.
async fn internal_metadata(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    json_answer(
        state,
        headers,
        body,
        async |tsdb, wire: WireMetadataRequest| {
            let known = tsdb.metadata(wire.metric).await?;
            Ok(known
                .into_iter()
                .map(peer::metadata_to_wire)
                .collect::<Vec<_>>())
        },
    )
    .await
}

/// This node's exemplars of the series the selectors match, as `peer::WireExemplar`s.
async fn internal_exemplars(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    json_answer(
        state,
        headers,
        body,
        async |tsdb, wire: WireExemplarRequest| {
            let matcher_sets = wire.matcher_sets().map_err(InternalReadError::BadRequest)?;
            let found = tsdb
                .exemplars(ExemplarRequest {
                    matcher_sets,
                    start: wire.start,
                    end: wire.end,
                })
                .await?;
            Ok(peer::exemplars_to_wire(found))
        },
    )
    .await
}

/// This node's part of the cluster's head statistics: the series whose first owner
/// among the asker's counting nodes is this node (ADR 0022), as a `HeadCardinality`.
async fn internal_cardinality(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let membership = match state.services() {
        Ok(services) => services.cluster.membership.clone(),
        Err(e) => return error(e.status, e.message),
    };
    json_answer(
        state,
        headers,
        body,
        async move |tsdb, wire: WireCardinalityRequest| {
            let view = membership.view();
            let me = view.local.id;
            tokio::task::spawn_blocking(move || {
                tsdb.head_cardinality(&|labels| {
                    counts_series(&view.ring, &wire.counters, me, labels)
                })
            })
            .await
            .map_err(|e| InternalReadError::Storage(format!("counting the head failed: {e}")))
        },
    )
    .await
}

/// This node's changes to old data since the caller's mark (ADR 0024).
async fn internal_changes(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    json_answer(
        state,
        headers,
        body,
        async |tsdb, since: Option<crate::storage::ChangeMark>| Ok(tsdb.changes_since(since)),
    )
    .await
}

/// A peer's share of a cluster-wide deletion (ADR 0023): this node deletes its own
/// copies. Refused unless this node's admin API is enabled too, so that in an open
/// cluster (no key) the internal route opens nothing the public one keeps closed.
async fn internal_delete_series(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let span = tracing::info_span!("internal_delete_series", trace_id = %trace_id(&headers));
    async move {
        state.admin().check_enabled()?;
        let tsdb = state.services()?.tsdb.clone();
        let body = read_body(body, 16 << 20)
            .await
            .map_err(|_| ApiError::bad_data("reading the deletion request failed"))?;
        let wire: WireDeleteRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_data(format!("bad deletion request: {e}")))?;
        let selectors = wire.matcher_sets().map_err(ApiError::bad_data)?;
        if selectors.is_empty() {
            return Err(ApiError::bad_data("a deletion needs at least one selector"));
        }
        let (start, end) = (wire.start, wire.end);
        tokio::task::spawn_blocking(move || {
            super::admin::delete_locally(&tsdb, &selectors, start, end)
        })
        .await
        .map_err(|e| ApiError::internal(format!("deletion task failed: {e}")))??;
        tracing::info!(
            start,
            end,
            "deleted series as a peer asked (cluster-wide delete_series)"
        );
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .instrument(span)
    .await
}

/// A peer's share of a cluster-wide `clean_tombstones`; guarded as the deletion.
async fn internal_clean_tombstones(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let span = tracing::info_span!("internal_clean_tombstones", trace_id = %trace_id(&headers));
    async move {
        state.admin().check_enabled()?;
        let tsdb = state.services()?.tsdb.clone();
        tokio::task::spawn_blocking(move || tsdb.clean_tombstones())
            .await
            .map_err(|e| ApiError::internal(format!("tombstone cleaning task failed: {e}")))??;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .instrument(span)
    .await
}
