//! Replication: the write side of the cluster.
//!
//! Owns: routing each series of a batch to its owners (placement over the join-ordered
//! ring), appending the local share to the local TSDB, forwarding the other owners'
//! shares to their `POST /internal/v1/write` over persistent connections, and hinted
//! handoff (`hints`: a durable queue per owner that was down or failed; `handoff`: the
//! task that replays it when gossip shows the owner alive), and re-replication
//! (`rereplicate`: after a ring change, copying series to the owners they gained). The acknowledgement rule is
//! ADR 0006: a batch is acknowledged once every series has a durable copy, or a durable
//! hint, for each of its owners; otherwise the write fails with a storage error (5xx).
//!
//! Calls `cluster` (membership view, placement), `peer` (internal HTTP client), `proto`
//! (the internal write body is a snappy remote-write 1.0 request) and the local
//! `storage::Storage`. Reads are not its business: they pass through to the local store.

pub mod handoff;
pub mod hints;
pub mod rereplicate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::identity::NodeId;
use crate::cluster::membership::{MemberState, MembershipHandle};
use crate::cluster::placement;
use crate::model::{Labels, MetricMetadata, Series};
use crate::peer::{self, PeerClient};
use crate::proto;
use crate::storage::{
    AppendOutcome, BoxFuture, LabelRequest, RejectReason, SelectError, SelectRequest, Storage,
    StorageError,
};
use hints::HintStore;

/// How long a forward may take before the owner's share is stored as a hint instead.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// The write side of the cluster as a `Storage`. Cheap to clone.
#[derive(Clone)]
pub struct ReplicatingStorage {
    inner: Arc<Inner>,
}

struct Inner {
    local: Arc<dyn Storage>,
    membership: MembershipHandle,
    client: PeerClient,
    hints: Arc<HintStore>,
}

/// One owner's share of a batch.
struct Share {
    target: NodeId,
    http_addr: String,
    state: MemberState,
    series: Vec<Series>,
}

impl ReplicatingStorage {
    pub fn new(
        local: Arc<dyn Storage>,
        membership: MembershipHandle,
        client: PeerClient,
        hints: Arc<HintStore>,
    ) -> ReplicatingStorage {
        ReplicatingStorage {
            inner: Arc::new(Inner {
                local,
                membership,
                client,
                hints,
            }),
        }
    }

    async fn replicate(&self, batch: Vec<Series>) -> Result<AppendOutcome, StorageError> {
        let view = self.inner.membership.view();
        let local_id = view.local.id;
        let total_samples: u64 = batch.iter().map(|s| s.samples.len() as u64).sum();
        let (local_share, remote_shares) = split_by_owner(batch, &view, local_id);
        if remote_shares.is_empty() {
            return self.inner.local.append(local_share).await;
        }
        let mut tasks = tokio::task::JoinSet::new();
        let trace_id = peer::current_trace_id();
        for share in remote_shares {
            let inner = self.inner.clone();
            let deliver = async move { inner.deliver(share).await };
            tasks.spawn(peer::with_trace_id(trace_id.clone(), deliver));
        }
        let local = async {
            if local_share.is_empty() {
                Ok(AppendOutcome::default())
            } else {
                self.inner.local.append(local_share).await
            }
        };
        let local_outcome = local.await;
        let mut outcomes = Vec::new();
        let mut failure = None;
        match local_outcome {
            Ok(o) => outcomes.push(o),
            Err(e) => failure = Some(e),
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(o)) => outcomes.push(o),
                Ok(Err(e)) => failure = Some(e),
                Err(e) => failure = Some(StorageError::Other(format!("forward task: {e}"))),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(combine_replica_outcomes(total_samples, outcomes)),
        }
    }
}

impl Inner {
    /// Forwards a share to its owner, or stores it as a hint when the owner is down or
    /// the forward fails. Errors only when neither worked: then the batch is not durable.
    async fn deliver(&self, share: Share) -> Result<AppendOutcome, StorageError> {
        let samples: u64 = share.series.iter().map(|s| s.samples.len() as u64).sum();
        let body = encode_series(&share.series);
        drop(share.series);
        if share.state != MemberState::Down {
            match forward(&self.client, &share.http_addr, body.clone(), samples).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) => tracing::warn!(
                    target_node = %share.target, error = %e,
                    "forward failed; storing a hint"
                ),
            }
        }
        let hints = self.hints.clone();
        let target = share.target;
        tokio::task::spawn_blocking(move || hints.store(target, &body))
            .await
            .map_err(|e| StorageError::Other(format!("hint writer: {e}")))?
            .map_err(|e| {
                StorageError::Unavailable(format!(
                    "owner {target} unreachable and its hint could not be stored: {e}"
                ))
            })?;
        // The owner will store these samples when the hint is replayed.
        Ok(AppendOutcome {
            appended: samples,
            ..AppendOutcome::default()
        })
    }
}

/// Sends one internal write. A 4xx means the owner refused the data (it will refuse a
/// replay too): logged and counted as done, like a rejected sample.
pub async fn forward(
    client: &PeerClient,
    http_addr: &str,
    body: Vec<u8>,
    samples: u64,
) -> Result<AppendOutcome, peer::PeerError> {
    let trace_id = peer::current_trace_id();
    let headers = [
        ("content-type", "application/x-protobuf"),
        ("content-encoding", "snappy"),
        (peer::ROUTED_HEADER, "1"),
        (peer::TRACE_HEADER, trace_id.as_str()),
    ];
    let response = client
        .post(
            http_addr,
            peer::WRITE_PATH,
            "write",
            &headers,
            body,
            FORWARD_TIMEOUT,
        )
        .await?;
    client.metrics().add_samples(http_addr, "write", samples);
    if response.status >= 400 {
        tracing::error!(
            peer = http_addr, status = response.status, trace_id = %trace_id,
            body = %String::from_utf8_lossy(&response.body),
            "owner refused a forwarded batch"
        );
        return Ok(AppendOutcome::default());
    }
    serde_json::from_slice::<WireOutcome>(&response.body)
        .map(WireOutcome::into_outcome)
        .map_err(|e| peer::PeerError(format!("{http_addr}: bad write answer: {e}")))
}

/// Splits a batch into this node's share and the other owners' shares.
fn split_by_owner(
    batch: Vec<Series>,
    view: &crate::cluster::membership::ClusterView,
    local_id: NodeId,
) -> (Vec<Series>, Vec<Share>) {
    let ring = &view.ring;
    let mut local = Vec::new();
    let mut remote: HashMap<NodeId, Vec<Series>> = HashMap::new();
    // With no more nodes than replicas every node owns every series: placement need not
    // hash each series to find that out (a single node spends most time here otherwise).
    let everyone_owns_all = placement::every_node_owns_every_series(ring.len());
    let all_nodes: Vec<NodeId> = ring.nodes_in_join_order().iter().map(|n| n.id).collect();
    for series in batch {
        let placed;
        let mut owners: &[NodeId] = if everyone_owns_all {
            &all_nodes
        } else {
            placed = ring.owners(placement::partition_key(&series.labels));
            &placed
        };
        if owners.is_empty() {
            // Not placed yet (first moments of a node): keep the data here.
            owners = std::slice::from_ref(&local_id);
        }
        let last = owners.len() - 1;
        let mut series = Some(series);
        for (i, &owner) in owners.iter().enumerate() {
            let copy = if i == last {
                series.take()
            } else {
                series.clone()
            };
            let Some(copy) = copy else { break };
            if owner == local_id {
                local.push(copy);
            } else {
                remote.entry(owner).or_default().push(copy);
            }
        }
    }
    let shares = remote
        .into_iter()
        .map(|(target, series)| {
            let node = ring.nodes_in_join_order().iter().find(|n| n.id == target);
            Share {
                target,
                http_addr: node.map(|n| n.http_addr.clone()).unwrap_or_default(),
                state: view.member(target).map_or(MemberState::Down, |m| m.state),
                series,
            }
        })
        .collect();
    (local, shares)
}

/// What the client is told about a batch stored on several replicas: a sample refused by
/// one replica is normally refused by all (same data, same order), so each reason counts
/// its largest per-replica count, and every other sample counts as appended once.
fn combine_replica_outcomes(total_samples: u64, outcomes: Vec<AppendOutcome>) -> AppendOutcome {
    let mut combined = AppendOutcome::default();
    for outcome in outcomes {
        for (reason, n) in outcome.rejected {
            match combined.rejected.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, max)) => *max = (*max).max(n),
                None => combined.rejected.push((reason, n)),
            }
        }
        if combined.first_rejection.is_none() {
            combined.first_rejection = outcome.first_rejection;
        }
    }
    combined.appended = total_samples.saturating_sub(combined.rejected_total());
    combined
}

/// The body of an internal write: a snappy remote-write 1.0 request.
pub fn encode_series(series: &[Series]) -> Vec<u8> {
    let request = proto::WriteRequest {
        timeseries: series.iter().map(proto::series_to_proto).collect(),
        metadata: Vec::new(),
    };
    proto::encode_snappy(&request)
}

/// An `AppendOutcome` as the internal write answers it (JSON).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WireOutcome {
    pub appended: u64,
    pub rejected: Vec<(String, u64)>,
    pub first_rejection: Option<String>,
}

impl WireOutcome {
    pub fn from_outcome(outcome: &AppendOutcome) -> WireOutcome {
        WireOutcome {
            appended: outcome.appended,
            rejected: outcome
                .rejected
                .iter()
                .map(|(r, n)| (r.as_str().to_string(), *n))
                .collect(),
            first_rejection: outcome.first_rejection.clone(),
        }
    }

    /// Unknown reasons (a newer peer) count as out-of-order so they are still reported.
    fn into_outcome(self) -> AppendOutcome {
        let reason = |name: &str| RejectReason::from_name(name).unwrap_or(RejectReason::OutOfOrder);
        let mut outcome = AppendOutcome {
            appended: self.appended,
            ..AppendOutcome::default()
        };
        for (name, n) in self.rejected {
            outcome.merge(AppendOutcome {
                rejected: vec![(reason(&name), n)],
                ..AppendOutcome::default()
            });
        }
        outcome.first_rejection = self.first_rejection;
        outcome
    }
}

impl Storage for ReplicatingStorage {
    fn append(&self, batch: Vec<Series>) -> BoxFuture<'_, Result<AppendOutcome, StorageError>> {
        Box::pin(self.replicate(batch))
    }

    fn select(&self, req: SelectRequest) -> BoxFuture<'_, Result<Vec<Series>, SelectError>> {
        self.inner.local.select(req)
    }

    fn series(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<Labels>, StorageError>> {
        self.inner.local.series(req)
    }

    fn label_names(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        self.inner.local.label_names(req)
    }

    fn label_values(
        &self,
        name: String,
        req: LabelRequest,
    ) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        self.inner.local.label_values(name, req)
    }

    /// Metadata is kept on the node that received it (not replicated; a known gap).
    fn record_metadata(
        &self,
        metadata: Vec<MetricMetadata>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.local.record_metadata(metadata)
    }

    fn metadata(
        &self,
        metric: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<MetricMetadata>, StorageError>> {
        self.inner.local.metadata(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::identity::NodeIdentity;
    use crate::cluster::membership::{ClusterView, Member};
    use crate::cluster::ring::{RingEntry, RingState};
    use crate::model::Sample;

    fn view_of(n: u128, down: u128) -> ClusterView {
        let identity = |i: u128| NodeIdentity {
            id: NodeId(i),
            generation: 1,
            join_seq: Some(i as u64),
            gossip_addr: format!("127.0.0.1:{}", 7000 + i).parse().expect("addr"),
            http_addr: format!("127.0.0.1:{}", 9000 + i),
        };
        let ring: RingState = (1..=n)
            .map(|i| RingEntry {
                id: NodeId(i),
                join_seq: i as u64,
                generation: 1,
                gossip_addr: identity(i).gossip_addr,
                http_addr: identity(i).http_addr,
                removed: false,
            })
            .collect::<Vec<_>>()
            .into();
        ClusterView {
            local: identity(1),
            members: (1..=n)
                .map(|i| Member {
                    identity: identity(i),
                    state: if i == down {
                        MemberState::Down
                    } else {
                        MemberState::Alive
                    },
                })
                .collect(),
            ring: ring.ring(),
        }
    }

    fn batch(n: usize) -> Vec<Series> {
        (0..n)
            .map(|i| Series {
                labels: Labels::from_pairs([("__name__", "m".to_string()), ("i", i.to_string())]),
                samples: vec![Sample::new(1, i as f64)],
            })
            .collect()
    }

    #[test]
    fn every_series_goes_to_exactly_its_owners() {
        let view = view_of(5, 3);
        let (local, shares) = split_by_owner(batch(500), &view, NodeId(1));
        let mut held: HashMap<NodeId, Vec<Labels>> = HashMap::new();
        held.insert(NodeId(1), local.into_iter().map(|s| s.labels).collect());
        for share in shares {
            assert_eq!(
                share.http_addr,
                format!("127.0.0.1:{}", 9000 + share.target.0)
            );
            let down = share.target == NodeId(3);
            assert_eq!(share.state == MemberState::Down, down);
            held.insert(
                share.target,
                share.series.into_iter().map(|s| s.labels).collect(),
            );
        }
        for series in batch(500) {
            let owners = view.ring.owners(placement::partition_key(&series.labels));
            assert_eq!(owners.len(), 3);
            for id in 1..=5u128 {
                let has = held
                    .get(&NodeId(id))
                    .is_some_and(|v| v.contains(&series.labels));
                assert_eq!(
                    has,
                    owners.contains(&NodeId(id)),
                    "{:?} on {id}",
                    series.labels
                );
            }
        }
    }

    #[test]
    fn replica_outcomes_count_each_sample_once() {
        let rejected = |n| AppendOutcome {
            appended: 10 - n,
            rejected: vec![(RejectReason::OutOfOrder, n)],
            first_rejection: Some("x".into()),
        };
        let combined = combine_replica_outcomes(10, vec![rejected(2), rejected(2), rejected(1)]);
        assert_eq!(combined.appended, 8);
        assert_eq!(combined.rejected, vec![(RejectReason::OutOfOrder, 2)]);
        assert_eq!(combined.first_rejection.as_deref(), Some("x"));
    }

    #[test]
    fn wire_outcome_round_trips() {
        let outcome = AppendOutcome {
            appended: 3,
            rejected: vec![
                (RejectReason::TooOld, 1),
                (RejectReason::DuplicateTimestamp, 2),
                (RejectReason::TooFarInFuture, 3),
            ],
            first_rejection: Some("first".into()),
        };
        let json = serde_json::to_vec(&WireOutcome::from_outcome(&outcome)).expect("encode");
        let back: WireOutcome = serde_json::from_slice(&json).expect("decode");
        assert_eq!(back.into_outcome(), outcome);
    }
}
