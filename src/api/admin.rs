//! Admin endpoints (TSDB in Prometheus's shapes, cluster) and the metadata API.
//!
//! Owns: `POST|PUT /api/v1/admin/tsdb/{delete_series,clean_tombstones,snapshot}`,
//! `POST /api/v1/admin/cluster/remove` (removal of a node for good, ADR 0015) and
//! `GET /api/v1/metadata` (cluster-wide through the fan-out storage, with its warnings
//! about nodes answered without; ADR 0020). Parameters (query string and form body) and
//! `match[]` selectors are read with `params`. Calls the local `tsdb` (on blocking
//! threads: these do disk work), `storage` for metadata, `fanout::notes` for the
//! metadata answer's warnings, and the membership handle for removal.
//!
//! As in Prometheus, the admin endpoints (cluster removal included) are off unless
//! `--web-enable-admin-api`: they then answer 503 `unavailable` "admin APIs disabled"
//! before looking at the request (ADR 0013). One snapshot runs at a time; a second one
//! meanwhile gets 503.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;

use super::params::{
    invalid_param, parse_match_params, time_param, FormParams, MAX_TIME_MS, MIN_TIME_MS,
};
use super::{success, ApiError, AppState};
use crate::cluster::membership::MemberState;
use crate::fanout::notes;
use crate::storage::StorageError;
use crate::timeutil::civil_from_days;

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

    /// Prometheus's answer when the admin API is off.
    fn check_enabled(&self) -> Result<(), ApiError> {
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

/// Runs blocking TSDB work on a blocking thread, mapping failures to 500.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::storage::StorageError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("admin task failed: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))
}

async fn delete_series(
    State(state): State<AppState>,
    params: FormParams,
) -> Result<Response, ApiError> {
    state.admin().check_enabled()?;
    let tsdb = state.services()?.tsdb.clone();
    if params.values("match[]").next().is_none() {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let selectors =
        parse_match_params(params.values("match[]")).map_err(|e| invalid_param("match[]", e))?;
    let start = time_param(&params, "start", MIN_TIME_MS)?;
    let end = time_param(&params, "end", MAX_TIME_MS)?;
    blocking(move || {
        selectors
            .iter()
            .try_for_each(|matchers| tsdb.delete_series(matchers, start, end))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn clean_tombstones(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.admin().check_enabled()?;
    let tsdb = state.services()?.tsdb.clone();
    blocking(move || tsdb.clean_tombstones()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Serialize)]
struct SnapshotName {
    name: String,
}

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
    Ok(success(SnapshotName { name }, &[], &[]))
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
    let known = known.map_err(|e| match e {
        StorageError::Unavailable(_) => ApiError::unavailable(e.to_string()),
        other => ApiError::internal(other.to_string()),
    })?;
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
