//! Admin endpoints (TSDB in Prometheus's shapes, cluster) and the metadata API.
//!
//! Owns: `POST|PUT /api/v1/admin/tsdb/{delete_series,clean_tombstones,snapshot}`,
//! `POST /api/v1/admin/cluster/remove` (removal of a node for good, ADR 0015) and
//! `GET /api/v1/metadata` (cluster-wide through the fan-out storage, with its warnings
//! about nodes answered without; ADR 0020). Parameters (query string and form body) and
//! `match[]` selectors are read with `params`. Calls the local `tsdb` (on blocking
//! threads: these do disk work), `storage` for metadata, `fanout::notes` for the
//! metadata answer's warnings, the membership handle for removal, and `peer` (the
//! internal client) for the cluster-wide admin requests.
//!
//! `delete_series` and `clean_tombstones` apply on every member (ADR 0023): here, and
//! through `/internal/v1/admin/*` on the others (`api::internal` answers those); they
//! are refused while a member is down. A snapshot stays on the node asked, and its
//! answer says so.
//!
//! As in Prometheus, the admin endpoints (cluster removal included) are off unless
//! `--web-enable-admin-api`: they then answer 503 `unavailable` "admin APIs disabled"
//! before looking at the request (ADR 0013). One snapshot runs at a time; a second one
//! meanwhile gets 503.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;

use super::params::{
    invalid_param, parse_match_params, time_param, FormParams, MAX_TIME_MS, MIN_TIME_MS,
};
use super::{success, ApiError, AppState, NodeServices};
use crate::cluster::membership::MemberState;
use crate::fanout::notes;
use crate::model::Matcher;
use crate::peer::{self, WireDeleteRequest};
use crate::storage::StorageError;
use crate::timeutil::civil_from_days;
use crate::tsdb::Tsdb;

/// Whether the admin endpoints are on, and the one-snapshot-at-a-time gate.
pub struct AdminApi {
    enabled: bool,
    snapshot_running: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl AdminApi {
    pub fn new(enabled: bool) -> AdminApi {
        AdminApi {
            enabled,
            snapshot_running: Default::default(),
        }
    }

    /// Prometheus's answer when the admin API is off. Also guards the internal admin
    /// routes: a node with the admin API off applies no peer's admin request either.
    pub(super) fn check_enabled(&self) -> Result<(), ApiError> {
        if self.enabled {
            Ok(())
        } else {
            Err(ApiError::unavailable("admin APIs disabled"))
        }
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/admin/tsdb/delete_series",
            post(delete_series).put(delete_series),
        )
        .route(
            "/api/v1/admin/tsdb/clean_tombstones",
            post(clean_tombstones).put(clean_tombstones),
        )
        .route("/api/v1/admin/tsdb/snapshot", post(snapshot).put(snapshot))
        .route("/api/v1/admin/cluster/remove", post(remove_node))
        .route("/api/v1/metadata", get(metadata).post(metadata))
}

/// Runs blocking TSDB work on a blocking thread; failures map as every storage error.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("admin task failed: {e}")))?
        .map_err(ApiError::from)
}

/// How long a peer may take to apply a cluster-wide admin request: cleaning tombstones
/// rewrites every block that has some.
const ADMIN_PEER_TIMEOUT: Duration = Duration::from_secs(600);

/// Deletes the matching series' samples in `[start, end]` on every member of the
/// cluster (ADR 0023): each replica deletes its own copies, so neither the fan-out nor
/// anti-entropy brings them back. Refused (503, nothing deleted) while a member is
/// down; 503 naming the members that failed when some did (the request is idempotent:
/// the operator retries it).
async fn delete_series(
    State(state): State<AppState>,
    params: FormParams,
) -> Result<Response, ApiError> {
    state.admin().check_enabled()?;
    let services = state.services()?;
    if params.values("match[]").next().is_none() {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let selectors =
        parse_match_params(params.values("match[]")).map_err(|e| invalid_param("match[]", e))?;
    let start = time_param(&params, "start", MIN_TIME_MS)?;
    let end = time_param(&params, "end", MAX_TIME_MS)?;
    let wire = WireDeleteRequest::new(&selectors, start, end);
    let body = serde_json::to_vec(&wire).map_err(|e| ApiError::internal(e.to_string()))?;
    let tsdb = services.tsdb.clone();
    on_every_member(
        services,
        "delete_series",
        peer::ADMIN_DELETE_SERIES_PATH,
        body,
        move || delete_locally(&tsdb, &selectors, start, end),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// This node's part of a deletion (also run for a peer's internal request).
pub(super) fn delete_locally(
    tsdb: &Tsdb,
    selectors: &[Vec<Matcher>],
    start: i64,
    end: i64,
) -> Result<(), StorageError> {
    selectors
        .iter()
        .try_for_each(|matchers| tsdb.delete_series(matchers, start, end))
}

/// Rewrites the blocks with tombstones on every member (ADR 0023), with
/// `delete_series`'s rules for members that are down or fail.
async fn clean_tombstones(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.admin().check_enabled()?;
    let services = state.services()?;
    let tsdb = services.tsdb.clone();
    on_every_member(
        services,
        "clean_tombstones",
        peer::ADMIN_CLEAN_TOMBSTONES_PATH,
        Vec::new(),
        move || tsdb.clean_tombstones(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Runs an admin operation on every member of the cluster: `local` here (on a blocking
/// thread), `body` POSTed to `path` on every other member not removed, all at once.
/// Before anything runs, a member down in this node's view refuses the request: it
/// holds replicas too, and applying the operation elsewhere only would let its copies
/// come back (ADR 0023). Afterwards, members that failed are named in a 503; a failure
/// of this node alone is answered as its storage error.
async fn on_every_member(
    services: &NodeServices,
    what: &str,
    path: &'static str,
    body: Vec<u8>,
    local: impl FnOnce() -> Result<(), StorageError> + Send + 'static,
) -> Result<(), ApiError> {
    let view = services.cluster.membership.view();
    let others: Vec<_> = view
        .members
        .iter()
        .filter(|m| m.identity.id != view.local.id)
        .collect();
    let down: Vec<String> = others
        .iter()
        .filter(|m| !matches!(m.state, MemberState::Alive | MemberState::Suspect))
        .map(|m| format!("{} ({})", m.identity.http_addr, m.identity.id))
        .collect();
    if !down.is_empty() {
        return Err(ApiError::unavailable(format!(
            "{what} was not applied on any node: {} down in this node's view, and every \
             node holding replicas must apply it or their copies come back; start them \
             again, or remove them for good (/api/v1/admin/cluster/remove), then retry",
            down.join(", ")
        )));
    }
    let mut asked = tokio::task::JoinSet::new();
    for member in others {
        let client = services.cluster.client.clone();
        let addr = member.identity.http_addr.clone();
        let id = member.identity.id;
        let body = body.clone();
        let trace_id = peer::current_trace_id();
        asked.spawn(async move {
            let headers = [
                ("content-type", "application/json"),
                (peer::TRACE_HEADER, trace_id.as_str()),
            ];
            let outcome = match client
                .post(&addr, path, "admin", &headers, body, ADMIN_PEER_TIMEOUT)
                .await
            {
                Ok(r) if (200..300).contains(&r.status) => Ok(()),
                Ok(r) => Err(format!(
                    "answered {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body[..r.body.len().min(512)])
                )),
                Err(e) => Err(e.to_string()),
            };
            (format!("{addr} ({id})"), outcome)
        });
    }
    let local_outcome = blocking_storage(local).await;
    let mut applied = vec![format!("{} ({})", view.local.http_addr, view.local.id)];
    let mut failed = Vec::new();
    while let Some(joined) = asked.join_next().await {
        match joined {
            Ok((member, Ok(()))) => applied.push(member),
            Ok((member, Err(e))) => failed.push(format!("{member}: {e}")),
            Err(e) => failed.push(format!("a request task failed: {e}")),
        }
    }
    match local_outcome {
        Err(e) if failed.is_empty() => {
            let mut err = ApiError::from(e);
            err.message = format!(
                "{what} failed on this node (the others applied it): {}",
                err.message
            );
            Err(err)
        }
        Err(e) => {
            applied.remove(0);
            failed.insert(
                0,
                format!("{} ({}): {e}", view.local.http_addr, view.local.id),
            );
            Err(partly_applied(what, &applied, &failed))
        }
        Ok(()) if !failed.is_empty() => Err(partly_applied(what, &applied, &failed)),
        Ok(()) => {
            tracing::info!(
                operation = what,
                members = applied.len(),
                "cluster-wide admin request applied on every member"
            );
            Ok(())
        }
    }
}

fn partly_applied(what: &str, applied: &[String], failed: &[String]) -> ApiError {
    tracing::warn!(
        operation = what,
        ?applied,
        ?failed,
        "cluster-wide admin request failed on some members"
    );
    ApiError::unavailable(format!(
        "{what} was not applied on every node: failed on {}; applied on {}; it is \
         idempotent: retry it",
        failed.join("; "),
        if applied.is_empty() {
            "none".to_string()
        } else {
            applied.join(", ")
        }
    ))
}

/// Runs blocking TSDB work on a blocking thread, keeping its storage error.
async fn blocking_storage<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(StorageError::Other(format!("admin task failed: {e}"))))
}

/// A snapshot's answer: Prometheus's `name`, and which node took it. A snapshot stays
/// on the node asked (ADR 0023): `scope` says so, and a backup of the cluster takes one
/// on every node.
#[derive(Serialize)]
struct SnapshotName {
    name: String,
    node: String,
    scope: &'static str,
}

/// The snapshot answer's `scope`.
const SNAPSHOT_SCOPE: &str =
    "this node's data only: a cluster backup takes a snapshot on every node";

async fn snapshot(State(state): State<AppState>, params: FormParams) -> Result<Response, ApiError> {
    state.admin().check_enabled()?;
    // A snapshot copies every block and the head: two at once would double the disk and
    // I/O bill for no gain, so a second one is turned away until the first is done. The
    // gate moves into the blocking work: a client that hangs up does not open it early.
    let Ok(running) = state.admin().snapshot_running.clone().try_lock_owned() else {
        return Err(ApiError::unavailable(
            "a snapshot is already being taken; try again when it is done",
        ));
    };
    let tsdb = state.services()?.tsdb.clone();
    let skip_head = bool_param(&params, "skip_head")?;
    let name = snapshot_name(std::time::SystemTime::now(), random_u63());
    let dir = std::path::Path::new(&state.info().data_dir)
        .join("snapshots")
        .join(&name);
    blocking(move || {
        let _running = running;
        std::fs::create_dir_all(&dir)?;
        tsdb.snapshot(&dir, !skip_head)
    })
    .await?;
    let local = &state.services()?.cluster.membership.view().local;
    let node = format!("{} ({})", local.http_addr, local.id);
    let answer = SnapshotName {
        name,
        node,
        scope: SNAPSHOT_SCOPE,
    };
    Ok(success(answer, &[], &[]))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Removal {
    node: String,
    gossip_addr: String,
    /// False when the node had been removed already (the call is idempotent).
    removed_now: bool,
}

/// Marks a node removed for good (`node=<id or gossip address>`, `force=true` to remove
/// one this node sees alive). The tombstone spreads by ring sync; the node's slot stays
/// in the numbering, so only its replicas move, and re-replication copies them.
async fn remove_node(
    State(state): State<AppState>,
    params: FormParams,
) -> Result<Response, ApiError> {
    state.admin().check_enabled()?;
    let membership = &state.services()?.cluster.membership;
    let wanted = params.value("node").trim();
    if wanted.is_empty() {
        return Err(ApiError::bad_data("no node parameter provided"));
    }
    let force = bool_param(&params, "force")?;
    let view = membership.view();
    let ring = &view.ring;
    let matching: Vec<_> = ring
        .slots()
        .iter()
        .filter(|s| s.node.id.to_string() == wanted || s.node.gossip_addr.to_string() == wanted)
        .collect();
    // A gossip address may name a removed node and the live node that took its place.
    let slot = matching
        .iter()
        .find(|s| !s.removed)
        .or(matching.first())
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "unknown node {wanted:?}: not a node id or gossip address in the ring"
            ))
        })?;
    let id = slot.node.id;
    let answer = |removed_now| {
        success(
            Removal {
                node: id.to_string(),
                gossip_addr: slot.node.gossip_addr.to_string(),
                removed_now,
            },
            &[],
            &[],
        )
    };
    if slot.removed {
        return Ok(answer(false));
    }
    if id == view.local.id {
        return Err(ApiError::conflict(format!(
            "node {id} is the node answering this request; stop it and ask another member"
        )));
    }
    if ring.len() <= 1 {
        return Err(ApiError::conflict(format!(
            "node {id} is the last live node of the cluster"
        )));
    }
    let state_now = view.member(id).map(|m| m.state);
    if !force && state_now.is_some_and(|s| s != MemberState::Down) {
        return Err(ApiError::conflict(format!(
            "node {id} is {} in this node's view; stop it first, or pass force=true",
            state_now.map_or("unknown", MemberState::label)
        )));
    }
    let removed_now = membership.remove_node(id).await;
    tracing::warn!(node = %id, force, "node removed from the cluster by an operator");
    Ok(answer(removed_now))
}

fn bool_param(params: &FormParams, name: &str) -> Result<bool, ApiError> {
    match params.value(name) {
        "" => Ok(false),
        v => parse_bool(v)
            .ok_or_else(|| invalid_param(name, format!("unable to parse boolean: {v:?}"))),
    }
}

#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct MetadataEntry {
    #[serde(rename = "type")]
    metric_type: String,
    help: String,
    unit: String,
}

async fn metadata(State(state): State<AppState>, params: FormParams) -> Result<Response, ApiError> {
    let storage = state.services()?.storage.clone();
    let limit = int_param(&params, "limit")?;
    let limit_per_metric = int_param(&params, "limit_per_metric")?;
    let metric = Some(params.value("metric"))
        .filter(|m| !m.is_empty())
        .map(str::to_string);
    let (known, cluster) = notes::collect(storage.metadata(metric)).await;
    let known = known?;
    let mut by_metric: BTreeMap<String, Vec<MetadataEntry>> = BTreeMap::new();
    for m in known {
        let entries = by_metric.entry(m.metric_family).or_default();
        let entry = MetadataEntry {
            metric_type: m.metric_type,
            help: m.help,
            unit: m.unit,
        };
        let full = limit_per_metric.is_some_and(|l| l > 0 && entries.len() as i64 >= l);
        if !full && !entries.contains(&entry) {
            entries.push(entry);
        }
    }
    if let Some(limit) = limit.filter(|l| *l >= 0) {
        by_metric = by_metric.into_iter().take(limit as usize).collect();
    }
    Ok(success(by_metric, &cluster.warnings, &cluster.infos))
}

fn int_param(params: &FormParams, name: &str) -> Result<Option<i64>, ApiError> {
    Some(params.value(name))
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::bad_data(format!("{name} must be a number")))
        })
        .transpose()
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A non-negative random number, as Go's `rand.Int63` that Prometheus uses.
fn random_u63() -> u64 {
    use rand::{RngCore, SeedableRng};
    rand::rngs::SmallRng::from_os_rng().next_u64() >> 1
}

/// Prometheus's snapshot name: `20060102T150405Z-<16 hex digits>`.
fn snapshot_name(now: std::time::SystemTime, random: u64) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let in_day = secs.rem_euclid(86_400);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z-{random:016x}",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn snapshot_names_like_prometheus() {
        let t = UNIX_EPOCH + Duration::from_secs(1_763_737_200); // 2025-11-21T15:00:00Z
        assert_eq!(snapshot_name(t, 0xabc), "20251121T150000Z-0000000000000abc");
    }

    #[test]
    fn admin_api_is_off_unless_enabled() {
        let off = AdminApi::new(false).check_enabled().unwrap_err();
        assert_eq!(off.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            (off.error_type, off.message.as_str()),
            ("unavailable", "admin APIs disabled")
        );
        assert!(AdminApi::new(true).check_enabled().is_ok());
    }

    #[test]
    fn booleans_parse_like_go() {
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("yes"), None);
    }
}
