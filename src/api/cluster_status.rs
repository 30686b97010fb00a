//! `GET /api/v1/status/cluster`: members, join order (with removed nodes' tombstoned
//! slots), key-space share, handoff backlog per target (files, bytes, oldest hint age,
//! window/cap exceeded; ADR 0017) with the hint limits, this node's re-replication
//! progress and its last anti-entropy pass.
//!
//! Owns: the JSON shape of the cluster status. The share a node owns is measured by
//! running 10,000 fixed pseudo-random partition keys through placement: the fraction of
//! keys of which the node is one of the owners (so shares add up to the replication
//! factor, 3, with three or more nodes). Calls the membership view, `placement` through
//! the ring, the hint store (its in-memory backlog), the re-replication progress and the
//! anti-entropy progress.

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use super::{success, ApiError, AppState};
use crate::cluster::ring::Ring;
use crate::replication::antientropy::AntiEntropyStatus;
use crate::replication::hint_window::Limit;
use crate::replication::hints::now_ms;
use crate::replication::rereplicate::RepairStatus;

const SHARE_SAMPLE_KEYS: u64 = 10_000;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/status/cluster", get(cluster_status))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterStatus {
    local: String,
    members: Vec<MemberStatus>,
    /// Node ids in join order: jump-hash bucket i is `joinOrder[i]`.
    join_order: Vec<String>,
    /// Every slot jump hash numbers, removed nodes included (ADR 0015).
    slots: Vec<SlotStatus>,
    /// Hints this node holds, per target with hints queued or a limit exceeded.
    handoff_backlog: Vec<BacklogStatus>,
    hint_limits: HintLimitsStatus,
    /// This node's re-replication: series and bytes to go, done, rate, time left.
    repair: RepairStatus,
    /// This node's last anti-entropy pass (ADR 0016).
    anti_entropy: AntiEntropyStatus,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SlotStatus {
    id: String,
    removed: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MemberStatus {
    id: String,
    gossip_addr: String,
    http_addr: String,
    state: &'static str,
    join_seq: Option<u64>,
    /// Fraction of the partition-key space this node holds a replica of.
    key_share: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BacklogStatus {
    target: String,
    /// Hint files queued.
    batches: u64,
    bytes: u64,
    oldest_hint_age_seconds: Option<u64>,
    /// How long since the target first missed a write of the current episode.
    missing_for_seconds: Option<u64>,
    window_exceeded: bool,
    cap_exceeded: bool,
    /// The target was removed from the ring: its hints go to the new owners.
    removed: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HintLimitsStatus {
    window_seconds: u64,
    max_bytes_per_target: u64,
}

async fn cluster_status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let cluster = &state.services()?.cluster;
    let view = cluster.membership.view();
    let shares = key_shares(&view.ring);
    let now = now_ms();
    let limits = cluster.hints.limits();
    let members = view
        .members
        .iter()
        .map(|m| MemberStatus {
            id: m.identity.id.to_string(),
            gossip_addr: m.identity.gossip_addr.to_string(),
            http_addr: m.identity.http_addr.clone(),
            state: m.state.label(),
            join_seq: m.identity.join_seq,
            key_share: view.ring.position(m.identity.id).map_or(0.0, |i| shares[i]),
        })
        .collect();
    let body = ClusterStatus {
        local: view.local.id.to_string(),
        members,
        join_order: view
            .ring
            .nodes_in_join_order()
            .iter()
            .map(|n| n.id.to_string())
            .collect(),
        slots: view
            .ring
            .slots()
            .iter()
            .map(|s| SlotStatus {
                id: s.node.id.to_string(),
                removed: s.removed,
            })
            .collect(),
        handoff_backlog: cluster
            .hints
            .backlog()
            .into_iter()
            .map(|b| BacklogStatus {
                target: b.target.to_string(),
                batches: b.batches,
                bytes: b.bytes,
                oldest_hint_age_seconds: b.oldest_age_seconds,
                missing_for_seconds: b
                    .episode_start_ms
                    .map(|start| now.saturating_sub(start) / 1000),
                window_exceeded: b.exceeded == Some(Limit::Window),
                cap_exceeded: b.exceeded == Some(Limit::Cap),
                removed: view.ring.removed().contains(&b.target),
            })
            .collect(),
        hint_limits: HintLimitsStatus {
            window_seconds: limits.window.as_secs(),
            max_bytes_per_target: limits.max_bytes_per_target,
        },
        repair: cluster.repair.status(&view.ring),
        anti_entropy: cluster.anti_entropy.status(),
    };
    Ok(success(body, &[], &[]))
}

/// Per ring slot (removed nodes included, at 0), the fraction of sampled keys it owns a
/// replica of.
fn key_shares(ring: &Ring) -> Vec<f64> {
    let mut owned = vec![0u64; ring.slots().len()];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..SHARE_SAMPLE_KEYS {
        let key = splitmix64(&mut state);
        for position in ring.owner_positions(key) {
            owned[position] += 1;
        }
    }
    owned
        .into_iter()
        .map(|n| n as f64 / SHARE_SAMPLE_KEYS as f64)
        .collect()
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
