//! The HTTP edge: axum routers in Prometheus's API shapes.
//!
//! Owns: routing, request parsing, response and error formats. Submodules by endpoint
//! family: `health` (/-/healthy, /-/ready, /metrics), `write` (remote write), `otlp`
//! (OpenTelemetry OTLP/HTTP metrics, stored through remote write's path), `read`
//! (remote read), `admin` (TSDB admin, off unless enabled), `query` (PromQL and
//! series/labels endpoints) with `query_cache` (range query result cache, ADR 0024),
//! `status` (build, runtime, flags, tsdb, cluster), `federate`, `ui` (the built-in web
//! pages), `internal` (node-to-node), `slow_query` (the `--query-log-slow` line),
//! `active_queries` (the queries this node evaluates now).
//! Storage and query failures map to answers in one place, `ApiError`'s `From` impls
//! (ADR 0023). The routes come in two routers that are guarded
//! differently (ADR 0013): `public` (everything users and Prometheus call) and `internal`
//! (`/internal/v1/*`, node to node). Calls `ingest`, `promql`,
//! `storage` (and the local `tsdb` for admin and status) — never the other way round.

pub mod active_queries;
pub mod admin;
pub mod cluster_status;
pub mod federate;
pub mod health;
pub mod internal;
pub mod json;
pub mod otlp;
pub mod params;
pub mod query;
pub mod query_cache;
pub mod read;
pub mod slow_query;
pub mod status;
pub mod ui;
pub mod write;

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::cluster::keys::ClusterKeys;
use crate::cluster::membership::MembershipHandle;
use crate::fanout::FanoutStorage;
use crate::ingest::IngestMetrics;
use crate::peer::PeerClient;
use crate::promql::cache::{CacheMetrics, ResultCache};
use crate::promql::{Engine, QueryError};
use crate::replication::antientropy::{AntiEntropyMetrics, AntiEntropyProgress};
use crate::replication::hints::HintStore;
use crate::replication::rereplicate::RepairProgress;
use crate::storage::{SelectError, Storage, StorageError, TimeBounds};
use crate::tsdb::Tsdb;

/// What the node serves once its storage is open (after WAL replay).
pub struct NodeServices {
    /// The storage every read and write goes through.
    pub storage: Arc<dyn Storage>,
    /// The local database, for admin and status endpoints and the internal endpoints.
    pub tsdb: Tsdb,
    /// The read side of the cluster, for the status endpoints that count the cluster
    /// (`/api/v1/status/tsdb`, ADR 0022).
    pub fanout: FanoutStorage,
    /// Membership and hints, for the cluster status endpoint.
    pub cluster: ClusterServices,
}

/// What the cluster status and cluster admin endpoints read and use.
pub struct ClusterServices {
    pub membership: MembershipHandle,
    pub hints: Arc<HintStore>,
    /// Re-replication progress of this node.
    pub repair: Arc<RepairProgress>,
    /// Anti-entropy: the last pass, and the metrics the answering side counts in.
    pub anti_entropy: Arc<AntiEntropyProgress>,
    pub anti_entropy_metrics: AntiEntropyMetrics,
    /// The internal client, for cluster-wide admin requests (ADR 0023).
    pub client: PeerClient,
}

/// Static facts about this process for the status endpoints.
pub struct ServerInfo {
    pub start_time: SystemTime,
    /// Effective command-line flags as (name, value), for `/api/v1/status/flags`.
    pub flags: Vec<(String, String)>,
    pub data_dir: String,
    /// Largest accepted remote-write body (compressed), in bytes.
    pub max_write_body_bytes: usize,
    /// Wall-clock bounds on the samples of a client's remote write (ADR 0009).
    pub ingest_time_bounds: TimeBounds,
    /// Cluster keys: `/internal/v1/*` requires a credential made with one of them.
    /// None: an open cluster.
    pub cluster_keys: Option<ClusterKeys>,
    /// Memory for cached range query results (0: no cache; ADR 0024).
    pub query_cache_max_bytes: usize,
    /// Queries taking at least this long are logged (`slow_query`); None: off.
    pub query_log_slow: Option<std::time::Duration>,
}

/// Shared state of every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

struct Shared {
    services: OnceLock<NodeServices>,
    engine: Engine,
    registry: Registry,
    info: ServerInfo,
    ingest_metrics: IngestMetrics,
    admin: admin::AdminApi,
    query_cache: query_cache::QueryCache,
    active_queries: active_queries::ActiveQueries,
}

impl AppState {
    /// Registers the HTTP edge's own metrics (ingest) into `registry` before keeping it.
    pub fn new(
        engine: Engine,
        mut registry: Registry,
        info: ServerInfo,
        admin: admin::AdminApi,
    ) -> Self {
        let ingest_metrics = IngestMetrics::register(&mut registry);
        let query_cache = query_cache::QueryCache::new(ResultCache::new(
            info.query_cache_max_bytes,
            CacheMetrics::register(&mut registry),
        ));
        AppState {
            shared: Arc::new(Shared {
                services: OnceLock::new(),
                engine,
                registry,
                info,
                ingest_metrics,
                admin,
                query_cache,
                active_queries: active_queries::ActiveQueries::default(),
            }),
        }
    }

    /// Marks the node ready: from now on data endpoints are served.
    pub fn set_ready(&self, services: NodeServices) {
        if self.shared.services.set(services).is_err() {
            tracing::warn!("node services were already set; keeping the first");
        }
    }

    /// The node's services, or 503 while storage is still opening.
    pub fn services(&self) -> Result<&NodeServices, ApiError> {
        self.shared.services.get().ok_or_else(ApiError::not_ready)
    }

    pub fn is_ready(&self) -> bool {
        self.shared.services.get().is_some()
    }

    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    pub fn info(&self) -> &ServerInfo {
        &self.shared.info
    }

    pub fn ingest_metrics(&self) -> &IngestMetrics {
        &self.shared.ingest_metrics
    }

    pub fn admin(&self) -> &admin::AdminApi {
        &self.shared.admin
    }

    pub fn query_cache(&self) -> &query_cache::QueryCache {
        &self.shared.query_cache
    }

    /// The queries this node is evaluating now.
    pub fn active_queries(&self) -> &active_queries::ActiveQueries {
        &self.shared.active_queries
    }
}

/// The HTTP API as two routers that the server guards differently (ADR 0013).
pub struct ApiRouters {
    /// Every endpoint users, Prometheus and Grafana call, plus the fallback for unknown
    /// paths (so that a guard layered on this router also covers them).
    pub public: Router,
    /// `/internal/v1/*`: node-to-node traffic, guarded by the cluster credential rather
    /// than users' passwords.
    pub internal: Router,
}

/// The whole HTTP API.
pub fn routers(state: AppState) -> ApiRouters {
    let public = Router::new()
        .merge(health::routes())
        .merge(write::routes())
        .merge(otlp::routes())
        .merge(read::routes())
        .merge(admin::routes())
        .merge(query::routes())
        .merge(status::routes())
        .merge(active_queries::routes())
        .merge(federate::routes())
        .merge(cluster_status::routes())
        .merge(ui::routes())
        .fallback(not_found)
        .with_state(state.clone());
    let internal = internal::routes()
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            internal::require_cluster_credential,
        ))
        .with_state(state);
    ApiRouters { public, internal }
}

/// Unknown paths: 404 with an empty body, as axum's default fallback.
async fn not_found() -> StatusCode {
    StatusCode::NOT_FOUND
}

/// An error in Prometheus's JSON format: `{"status":"error","errorType":..,"error":..}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error_type: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error_type,
            message: message.into(),
        }
    }

    pub fn bad_data(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_data", message)
    }

    pub fn execution(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "execution", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The request is well-formed but the cluster's state forbids it (409).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "bad_data", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    fn not_ready() -> Self {
        Self::unavailable("Service Unavailable: storage is still opening (WAL replay)")
    }
}

/// The one mapping of storage failures to answers, used by every endpoint that reads
/// or changes data (ADR 0023): too few nodes for a complete answer, or a store not
/// ready, is 503 `unavailable`; anything else (i/o, corruption, a bug) is 500
/// `internal`, as Prometheus answers a PromQL storage error.
impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::Unavailable(_) => ApiError::unavailable(err.to_string()),
            StorageError::Io(_) | StorageError::Corruption(_) | StorageError::Other(_) => {
                ApiError::internal(err.to_string())
            }
        }
    }
}

/// A select's failure: the sample limit is 422 `execution` with Prometheus's message
/// (its limits are execution errors), the rest as `StorageError`.
impl From<SelectError> for ApiError {
    fn from(err: SelectError) -> Self {
        match err {
            SelectError::TooManySamples => ApiError::from(QueryError::TooManySamples),
            SelectError::Storage(e) => ApiError::from(e),
        }
    }
}

/// A PromQL query's failure, in Prometheus's types: the query's own faults are 400
/// `bad_data` (named as the `query` parameter's), limits and evaluation errors 422
/// `execution`, the timeout 503 `timeout`, storage failures as `StorageError`.
impl From<QueryError> for ApiError {
    fn from(err: QueryError) -> Self {
        match err {
            QueryError::BadData(message) => params::invalid_param("query", message),
            QueryError::Execution(_) | QueryError::TooManySamples => {
                ApiError::execution(err.to_string())
            }
            QueryError::Timeout(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", err.to_string())
            }
            QueryError::Storage(e) => ApiError::from(e),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: &'static str,
    #[serde(rename = "errorType")]
    error_type: &'a str,
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            status: "error",
            error_type: self.error_type,
            error: &self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

#[derive(Serialize)]
struct SuccessBody<'a, T: Serialize> {
    status: &'static str,
    data: T,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    infos: &'a [String],
}

/// A success answer in Prometheus's shape, with optional warnings and infos.
pub fn success<T: Serialize>(data: T, warnings: &[String], infos: &[String]) -> Response {
    axum::Json(SuccessBody {
        status: "success",
        data,
        warnings,
        infos,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every failure kind and the status and `errorType` it is answered with (ADR 0023).
    #[test]
    fn one_mapping_for_every_failure() {
        let io = || StorageError::from(std::io::Error::other("disk gone"));
        let cases: [(ApiError, u16, &str); 10] = [
            (
                QueryError::BadData("1:1: parse error: x".into()).into(),
                400,
                "bad_data",
            ),
            (
                QueryError::Execution("boom".into()).into(),
                422,
                "execution",
            ),
            (QueryError::TooManySamples.into(), 422, "execution"),
            (SelectError::TooManySamples.into(), 422, "execution"),
            (
                QueryError::Timeout("expression evaluation".into()).into(),
                503,
                "timeout",
            ),
            (
                QueryError::Storage(StorageError::Unavailable("3 nodes".into())).into(),
                503,
                "unavailable",
            ),
            (
                SelectError::Storage(StorageError::Unavailable("3 nodes".into())).into(),
                503,
                "unavailable",
            ),
            (QueryError::Storage(io()).into(), 500, "internal"),
            (
                StorageError::Corruption("chunk".into()).into(),
                500,
                "internal",
            ),
            (StorageError::Other("bug".into()).into(), 500, "internal"),
        ];
        for (api, status, kind) in cases {
            assert_eq!(
                (api.status.as_u16(), api.error_type),
                (status, kind),
                "{}",
                api.message
            );
        }
        let bad = ApiError::from(QueryError::BadData("1:1: parse error: x".into()));
        assert_eq!(
            bad.message,
            "invalid parameter \"query\": 1:1: parse error: x"
        );
        let timeout = ApiError::from(QueryError::Timeout("expression evaluation".into()));
        assert_eq!(timeout.message, "query timed out in expression evaluation");
        let limit = ApiError::from(SelectError::TooManySamples);
        assert_eq!(
            limit.message,
            "query processing would load too many samples into memory in query execution"
        );
        assert_eq!(
            ApiError::from(io()).message,
            "i/o error: disk gone",
            "the storage error's own text"
        );
    }
}
