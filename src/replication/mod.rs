//! Replication: the write side of the cluster.
//!
//! Owns: routing each series of a batch (float samples, and native histogram samples
//! the same way) to its owners (placement over the join-ordered ring), each metric family's metadata to the owners of its family name (ADR
//! 0020), and each series' exemplars to the series' owners (ADR 0027), appending the local share to the local TSDB, forwarding the other owners'
//! shares to their `POST /internal/v1/write` over persistent connections, hinted
//! handoff (`hints`: a durable queue per owner that was down or failed, bounded per
//! target by `hint_window`'s window and disk cap; `handoff`: the task that replays it
//! when gossip shows the owner alive, and re-routes the hints of a removed owner to the
//! series' new owners), re-replication (`rereplicate`: after a ring change, copying
//! series to the owners they gained, over the repair write), anti-entropy
//! (`antientropy`: comparing digests with the other owners on a schedule and pulling
//! what this node lacks; ADR 0016), and read repair (`read_repair`: writing back what a
//! read found an owner lacking). The acknowledgement rule is ADR 0006 as amended by
//! ADR 0017: a batch is acknowledged once every series has a durable copy, or a durable
//! hint, for each of its owners; an owner whose hint window or cap is exceeded gets no
//! hint, and a series with such an owner is acknowledged only when a majority of its
//! owners stored it for real (`check_acknowledgement`); otherwise the write fails with
//! a storage error (5xx). A node whose ring holds no live node (it has met no placed node
//! yet) refuses writes with 503: it cannot know the owners (ADR 0019).
//!
//! Calls `cluster` (membership view, placement), `peer` (internal HTTP client), `proto`
//! (the internal write body is a snappy remote-write 1.0 request, written straight from
//! the model by `proto::write_body`: the items of a batch with the same owners are
//! encoded once, and owners with the same items share one body), `ingest` (to decode a
//! hint being re-routed; anti-entropy: pulled samples) and the local `storage::Storage`;
//! anti-entropy also calls the local `tsdb::Tsdb` (digests, backfill). Reads are not its
//! business: they pass through to the local store.

pub mod antientropy;
pub mod handoff;
pub mod hint_window;
pub mod hints;
pub mod read_repair;
pub mod rereplicate;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use serde::{Deserialize, Serialize};

use crate::cluster::identity::NodeId;
use crate::cluster::membership::{MemberState, MembershipHandle};
use crate::cluster::placement;
use crate::model::{HistogramSeries, Labels, MetricMetadata, Series, SeriesExemplars};
use crate::peer::{self, PeerClient};
use crate::proto;
use crate::storage::{
    AppendOutcome, BoxFuture, ExemplarRequest, HistogramAppendError, LabelRequest, RejectReason,
    SelectError, SelectRequest, Storage, StorageError,
};
use hint_window::Limit;
use hints::{HintStore, Hinted};

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

/// One owner's share of a batch (series, metric metadata placed by family name, or
/// exemplars placed with their series), encoded as the body of its internal write.
struct Share {
    target: NodeId,
    http_addr: String,
    state: MemberState,
    /// Owners whose shares hold the same items share these bytes (with three nodes and
    /// three replicas, both other nodes get the whole batch: encoded once).
    body: Bytes,
    /// Samples in `body` (for the peer metrics; 0 for metadata and exemplars).
    samples: u64,
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
        self.replicate_by_series(
            batch,
            |s: &Series| &s.labels,
            proto::write_body::encode_series,
            |s| s.samples.len() as u64,
            |share| self.inner.local.append(share),
            |e| e,
        )
        .await
    }

    /// Stores native histogram samples on their series' owners exactly as `replicate`
    /// stores float samples (the internal write body carries them as remote write 1.0's
    /// `histograms`).
    async fn replicate_histograms(
        &self,
        batch: Vec<HistogramSeries>,
    ) -> Result<AppendOutcome, HistogramAppendError> {
        self.replicate_by_series(
            batch,
            |s: &HistogramSeries| &s.labels,
            proto::write_body::encode_histograms,
            |s| s.samples.len() as u64,
            |share| self.inner.local.append_histograms(share),
            // Ingest validated every histogram with the rules the local store applies,
            // so a refusal here is a bug: fail the write rather than store it on only
            // some owners.
            |e| match e {
                HistogramAppendError::Storage(e) => e,
                invalid => StorageError::Other(invalid.to_string()),
            },
        )
        .await
    }

    /// Stores series of samples (`samples` counts an item's) on their owners by their
    /// labels: the local share with `append_local`, the others' forwarded as internal
    /// writes `encode` writes, hints for owners that are down, and the acknowledgement
    /// rule. A batch that is all local answers with `append_local`'s own error; once other
    /// owners are involved a local failure becomes the storage error `local_failure` says.
    async fn replicate_by_series<'a, T, E: From<StorageError>>(
        &'a self,
        batch: Vec<T>,
        labels: impl Fn(&T) -> &Labels,
        encode: impl Fn(&[T], &mut Vec<u8>),
        samples: impl Fn(&T) -> u64,
        append_local: impl Fn(Vec<T>) -> BoxFuture<'a, Result<AppendOutcome, E>>,
        local_failure: impl Fn(E) -> StorageError,
    ) -> Result<AppendOutcome, E> {
        let view = self.inner.membership.view();
        if view.ring.is_empty() {
            // A node that has met no placed node yet cannot know the owners; data kept
            // here would never reach them (re-replication only sends from owners), so
            // the client retries instead (found by the simulation, ADR 0019).
            return Err(StorageError::Unavailable(
                "this node has not joined its cluster yet (no peer answered)".to_string(),
            )
            .into());
        }
        let local_id = view.local.id;
        let total_samples: u64 = batch.iter().map(&samples).sum();
        let split = split_by_owner(
            batch,
            &view,
            local_id,
            |item: &T| placement::partition_key(labels(item)),
            encode,
            samples,
        );
        if split.remote.is_empty() {
            return append_local(split.local).await;
        }
        let local_share = split.local;
        let local = async {
            if local_share.is_empty() {
                Ok(AppendOutcome::default())
            } else {
                append_local(local_share).await.map_err(local_failure)
            }
        };
        let outcomes = self
            .deliver_all(local_id, local, split.remote, &split.owner_sets)
            .await?;
        Ok(combine_replica_outcomes(total_samples, outcomes))
    }

    /// Stores each family's metadata on the owners of its family name (ADR 0020), with
    /// the acknowledgement rule of series.
    async fn replicate_metadata(&self, metadata: Vec<MetricMetadata>) -> Result<(), StorageError> {
        let view = self.inner.membership.view();
        let split = split_by_owner(
            metadata,
            &view,
            view.local.id,
            |m: &MetricMetadata| placement::metadata_partition_key(&m.metric_family),
            proto::write_body::encode_metadata,
            |_| 0,
        );
        let local_share = split.local;
        let local = async {
            if !local_share.is_empty() {
                self.inner.local.record_metadata(local_share).await?;
            }
            Ok(AppendOutcome::default())
        };
        self.deliver_all(view.local.id, local, split.remote, &split.owner_sets)
            .await
            .map(drop)
    }

    /// Stores each series' exemplars on the series' owners, with the acknowledgement
    /// rule of series (a down owner gets them in its hints). Answers how many are held:
    /// all of them once the write is acknowledged, or none when no owner that answered
    /// keeps exemplars (`--exemplars-limit 0`, a setting meant to be the same on every
    /// node).
    async fn replicate_exemplars(&self, batch: Vec<SeriesExemplars>) -> Result<u64, StorageError> {
        let view = self.inner.membership.view();
        if view.ring.is_empty() {
            return Err(StorageError::Unavailable(
                "this node has not joined its cluster yet (no peer answered)".to_string(),
            ));
        }
        let total: u64 = batch.iter().map(|s| s.exemplars.len() as u64).sum();
        let split = split_by_owner(
            batch,
            &view,
            view.local.id,
            |s: &SeriesExemplars| placement::partition_key(&s.series),
            proto::write_body::encode_exemplars,
            |_| 0,
        );
        let local_share = split.local;
        let local = async {
            let held = if local_share.is_empty() {
                0
            } else {
                self.inner.local.append_exemplars(local_share).await?
            };
            Ok(AppendOutcome {
                appended: held,
                ..AppendOutcome::default()
            })
        };
        let outcomes = self
            .deliver_all(view.local.id, local, split.remote, &split.owner_sets)
            .await?;
        let held = outcomes.iter().any(|o| o.appended > 0);
        Ok(if held { total } else { 0 })
    }

    /// Runs the local store's part and every remote share's delivery concurrently, then
    /// applies the acknowledgement rule; every outcome, or the failure.
    async fn deliver_all(
        &self,
        local_id: NodeId,
        local: impl std::future::Future<Output = Result<AppendOutcome, StorageError>>,
        remote: Vec<Share>,
        owner_sets: &BTreeSet<Vec<NodeId>>,
    ) -> Result<Vec<AppendOutcome>, StorageError> {
        let mut tasks = tokio::task::JoinSet::new();
        let trace_id = peer::current_trace_id();
        for share in remote {
            let inner = self.inner.clone();
            let target = share.target;
            let deliver = async move { (target, inner.deliver(share).await) };
            tasks.spawn(peer::with_trace_id(trace_id.clone(), deliver));
        }
        let local_outcome = local.await;
        let mut outcomes = Vec::new();
        let mut failure = None;
        let mut copies = ShareResults::default();
        match local_outcome {
            Ok(o) => {
                copies.stored.insert(local_id);
                outcomes.push(o);
            }
            Err(e) => failure = Some(e),
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((target, Ok(delivery))) => match delivery {
                    Delivery::Forwarded(o) => {
                        copies.stored.insert(target);
                        outcomes.push(o);
                    }
                    Delivery::Hinted => {}
                    Delivery::NoHint(limit) => {
                        copies.written_off.insert(target, limit);
                    }
                },
                Ok((_, Err(e))) => failure = Some(e),
                Err(e) => failure = Some(StorageError::Other(format!("forward task: {e}"))),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        check_acknowledgement(owner_sets, &copies).map_err(|e| {
            tracing::warn!(error = %e, "write not acknowledged");
            StorageError::Unavailable(e.to_string())
        })?;
        Ok(outcomes)
    }
}

/// What became of one owner's share.
enum Delivery {
    /// The owner stored it (or refused it with a 4xx, like a rejected sample).
    Forwarded(AppendOutcome),
    /// It is in a durable hint for the owner.
    Hinted,
    /// The owner was unreachable and its window or cap is exceeded: no copy, no hint.
    NoHint(Limit),
}

/// Per owner of a batch: who stored its share for real, who got neither copy nor hint.
#[derive(Debug, Default)]
pub struct ShareResults {
    pub stored: HashSet<NodeId>,
    pub written_off: HashMap<NodeId, Limit>,
}

/// Why a batch is not acknowledged although nothing failed outright.
#[derive(Debug, PartialEq, Eq)]
pub struct NoMajority {
    pub owners: usize,
    pub stored: usize,
    pub written_off: Vec<(NodeId, Limit)>,
}

impl std::fmt::Display for NoMajority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self
            .written_off
            .iter()
            .map(|(n, l)| format!("{n} (hint {} exceeded)", l.label()))
            .collect();
        write!(
            f,
            "only {} of {} owners stored a series and {} got no hint; \
             a majority ({}) of real copies is needed",
            self.stored,
            self.owners,
            nodes.join(", "),
            majority(self.owners)
        )
    }
}

fn majority(owners: usize) -> usize {
    owners / 2 + 1
}

/// The acknowledgement rule (ADR 0006 as amended by ADR 0017), given the owner sets of
/// the batch's series. An owner either stored its share, holds a hint (else the write
/// already failed), or is written off (window or cap exceeded: neither). A series none
/// of whose owners is written off is acknowledged (every owner has a copy or a hint); a
/// series with a written-off owner needs real copies on a majority of its owners, so an
/// acknowledged sample is never on fewer than `R / 2 + 1` disks while hints cover less.
pub fn check_acknowledgement(
    owner_sets: &BTreeSet<Vec<NodeId>>,
    results: &ShareResults,
) -> Result<(), NoMajority> {
    if results.written_off.is_empty() {
        return Ok(());
    }
    for owners in owner_sets {
        let written_off: Vec<(NodeId, Limit)> = owners
            .iter()
            .filter_map(|o| results.written_off.get(o).map(|&l| (*o, l)))
            .collect();
        if written_off.is_empty() {
            continue;
        }
        let stored = owners.iter().filter(|o| results.stored.contains(o)).count();
        if stored < majority(owners.len()) {
            return Err(NoMajority {
                owners: owners.len(),
                stored,
                written_off,
            });
        }
    }
    Ok(())
}

impl Inner {
    /// Forwards a share to its owner, or stores it as a hint when the owner is down or
    /// the forward fails, unless the owner's hint window or cap is exceeded. Errors only
    /// when neither worked for a reason other than the limits (an I/O error).
    async fn deliver(&self, share: Share) -> Result<Delivery, StorageError> {
        let body = share.body;
        if share.state != MemberState::Down {
            match forward(&self.client, &share.http_addr, body.clone(), share.samples).await {
                Ok(outcome) => return Ok(Delivery::Forwarded(outcome)),
                Err(e) => tracing::warn!(
                    target_node = %share.target, peer = %share.http_addr, error = %e,
                    "forward failed; storing a hint"
                ),
            }
        }
        let hints = self.hints.clone();
        let target = share.target;
        let hinted = tokio::task::spawn_blocking(move || hints.store(target, &body))
            .await
            .map_err(|e| StorageError::Other(format!("hint writer: {e}")))?
            .map_err(|e| {
                StorageError::Unavailable(format!(
                    "owner {target} unreachable and its hint could not be stored: {e}"
                ))
            })?;
        // A stored hint: the owner will store these samples when it is replayed.
        Ok(match hinted {
            Hinted::Stored => Delivery::Hinted,
            Hinted::Refused(limit) => Delivery::NoHint(limit),
        })
    }
}

/// Sends one internal write. A 4xx means the owner refused the data (it will refuse a
/// replay too): logged and counted as done, like a rejected sample.
pub async fn forward(
    client: &PeerClient,
    http_addr: &str,
    body: impl Into<Bytes>,
    samples: u64,
) -> Result<AppendOutcome, peer::PeerError> {
    send_write(client, http_addr, peer::WRITE_PATH, "write", body, samples).await
}

/// Sends an internal write to `path`: the ordinary write, or the repair write
/// (`peer::BACKFILL_PATH`) that also stores samples too old for the receiver's head.
pub async fn send_write(
    client: &PeerClient,
    http_addr: &str,
    path: &str,
    op: &'static str,
    body: impl Into<Bytes>,
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
        .post(http_addr, path, op, &headers, body, FORWARD_TIMEOUT)
        .await?;
    client.metrics().add_samples(http_addr, op, samples);
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

/// A batch (of series, metadata or exemplars) split by owner.
struct SplitBatch<T> {
    /// This node's share.
    local: Vec<T>,
    /// The other owners' shares, encoded.
    remote: Vec<Share>,
    /// Every distinct owner set of the batch's items (for the acknowledgement rule).
    owner_sets: BTreeSet<Vec<NodeId>>,
}

/// Items of a batch that have the same owners, in the batch's order.
struct Group<T> {
    owners: Vec<NodeId>,
    items: Vec<T>,
}

/// Puts each item in the group of its owners (placed by the partition key `key` gives
/// it); items with the same owners keep their order.
fn group_by_owners<T>(
    items: Vec<T>,
    ring: &crate::cluster::ring::Ring,
    local_id: NodeId,
    key: impl Fn(&T) -> u64,
) -> Vec<Group<T>> {
    if items.is_empty() {
        return Vec::new();
    }
    // Only with an empty ring, which `replicate` refuses before splitting.
    let or_local = |owners: Vec<NodeId>| {
        if owners.is_empty() {
            vec![local_id]
        } else {
            owners
        }
    };
    // With no more nodes than replicas every node owns every series: placement need not
    // hash each series to find that out (a single node spends most time here otherwise).
    if placement::every_node_owns_every_series(ring.len()) {
        let owners = ring.nodes_in_join_order().iter().map(|n| n.id).collect();
        return vec![Group {
            owners: or_local(owners),
            items,
        }];
    }
    let mut groups: Vec<Group<T>> = Vec::new();
    let mut index: HashMap<Vec<NodeId>, usize> = HashMap::new();
    for item in items {
        let owners = or_local(ring.owners(key(&item)));
        let at = *index.entry(owners).or_insert_with_key(|owners| {
            groups.push(Group {
                owners: owners.clone(),
                items: Vec::new(),
            });
            groups.len() - 1
        });
        groups[at].items.push(item);
    }
    groups
}

/// Splits items into this node's share and the other owners' shares. Each group of
/// items with the same owners is encoded once (`encode` appends its `WriteRequest`
/// fields, `samples` counts an item's samples), an owner's body is the concatenation of
/// its groups' bytes, and owners with the same groups share one body; this node's items
/// are moved, not copied.
fn split_by_owner<T>(
    items: Vec<T>,
    view: &crate::cluster::membership::ClusterView,
    local_id: NodeId,
    key: impl Fn(&T) -> u64,
    encode: impl Fn(&[T], &mut Vec<u8>),
    samples: impl Fn(&T) -> u64,
) -> SplitBatch<T> {
    let ring = &view.ring;
    let mut local = Vec::new();
    let mut owner_sets = BTreeSet::new();
    // Encoded groups (with their samples), and which of them each remote owner gets.
    let mut encoded: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut parts_of: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
    for group in group_by_owners(items, ring, local_id, key) {
        let remote = group.owners.iter().filter(|&&o| o != local_id);
        if remote.clone().next().is_some() {
            let mut raw = Vec::new();
            encode(&group.items, &mut raw);
            encoded.push((raw, group.items.iter().map(&samples).sum()));
            for &owner in remote {
                parts_of.entry(owner).or_default().push(encoded.len() - 1);
            }
        }
        if group.owners.contains(&local_id) {
            local.extend(group.items);
        }
        owner_sets.insert(group.owners);
    }
    let mut bodies: HashMap<Vec<usize>, (Bytes, u64)> = HashMap::new();
    let remote = parts_of
        .into_iter()
        .map(|(target, parts)| {
            let (body, samples) = bodies
                .entry(parts)
                .or_insert_with_key(|parts| {
                    let samples = parts.iter().map(|&p| encoded[p].1).sum();
                    let body = match parts.as_slice() {
                        [one] => proto::compress_snappy(&encoded[*one].0),
                        many => proto::compress_snappy(
                            &many
                                .iter()
                                .flat_map(|&p| encoded[p].0.iter().copied())
                                .collect::<Vec<u8>>(),
                        ),
                    };
                    (Bytes::from(body), samples)
                })
                .clone();
            let node = ring.nodes_in_join_order().iter().find(|n| n.id == target);
            Share {
                target,
                http_addr: node.map(|n| n.http_addr.clone()).unwrap_or_default(),
                state: view.member(target).map_or(MemberState::Down, |m| m.state),
                body,
                samples,
            }
        })
        .collect();
    SplitBatch {
        local,
        remote,
        owner_sets,
    }
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

/// The body of an internal write of series: a snappy remote-write 1.0 request.
pub fn encode_series(series: &[Series]) -> Vec<u8> {
    encode_write(series, &[])
}

/// The body of an internal write of series and metric metadata.
pub fn encode_write(series: &[Series], metadata: &[MetricMetadata]) -> Vec<u8> {
    encode_write_with_exemplars(series, metadata, &[])
}

/// The body of an internal write of series, metric metadata and exemplars (each series'
/// exemplars as a `TimeSeries` without samples, as remote write 1.0 carries them).
pub fn encode_write_with_exemplars(
    series: &[Series],
    metadata: &[MetricMetadata],
    exemplars: &[SeriesExemplars],
) -> Vec<u8> {
    let mut raw = Vec::new();
    proto::write_body::encode_series(series, &mut raw);
    proto::write_body::encode_exemplars(exemplars, &mut raw);
    proto::write_body::encode_metadata(metadata, &mut raw);
    proto::compress_snappy(&raw)
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

    fn append_histograms(
        &self,
        batch: Vec<HistogramSeries>,
    ) -> BoxFuture<'_, Result<AppendOutcome, HistogramAppendError>> {
        Box::pin(self.replicate_histograms(batch))
    }

    fn select_histograms(
        &self,
        req: SelectRequest,
    ) -> BoxFuture<'_, Result<Vec<HistogramSeries>, SelectError>> {
        self.inner.local.select_histograms(req)
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

    fn record_metadata(
        &self,
        metadata: Vec<MetricMetadata>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(self.replicate_metadata(metadata))
    }

    fn metadata(
        &self,
        metric: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<MetricMetadata>, StorageError>> {
        self.inner.local.metadata(metric)
    }

    fn append_exemplars(
        &self,
        batch: Vec<SeriesExemplars>,
    ) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(self.replicate_exemplars(batch))
    }

    fn exemplars(
        &self,
        req: ExemplarRequest,
    ) -> BoxFuture<'_, Result<Vec<SeriesExemplars>, StorageError>> {
        self.inner.local.exemplars(req)
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

    /// What an owner decodes from its share's body.
    fn decoded(share: &Share) -> crate::ingest::DecodedWrite {
        crate::ingest::decode_internal_write_request(
            &share.body,
            &crate::ingest::DecodeLimits::for_body_limit(1 << 20),
        )
        .expect("a share's body decodes")
    }

    fn split_series(view: &ClusterView, series: Vec<Series>) -> SplitBatch<Series> {
        split_by_owner(
            series,
            view,
            NodeId(1),
            |s: &Series| placement::partition_key(&s.labels),
            proto::write_body::encode_series,
            |s| s.samples.len() as u64,
        )
    }

    #[test]
    fn every_series_goes_to_exactly_its_owners() {
        let view = view_of(5, 3);
        let split = split_series(&view, batch(500));
        let mut held: HashMap<NodeId, Vec<Labels>> = HashMap::new();
        held.insert(
            NodeId(1),
            split.local.into_iter().map(|s| s.labels).collect(),
        );
        let expected_sets: BTreeSet<Vec<NodeId>> = batch(500)
            .iter()
            .map(|s| view.ring.owners(placement::partition_key(&s.labels)))
            .collect();
        assert_eq!(split.owner_sets, expected_sets);
        for share in split.remote {
            assert_eq!(
                share.http_addr,
                format!("127.0.0.1:{}", 9000 + share.target.0)
            );
            let down = share.target == NodeId(3);
            assert_eq!(share.state == MemberState::Down, down);
            let series = decoded(&share).series;
            assert_eq!(share.samples, series.len() as u64);
            held.insert(share.target, series.into_iter().map(|s| s.labels).collect());
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

    fn family(i: usize) -> MetricMetadata {
        MetricMetadata {
            metric_family: format!("family_{i}"),
            metric_type: ["counter", "gauge", "histogram", "unknown"][i % 4].to_string(),
            help: format!("help {i}"),
            unit: if i % 2 == 0 { "seconds" } else { "" }.to_string(),
        }
    }

    #[test]
    fn metadata_goes_to_the_owners_of_its_family_name() {
        let view = view_of(5, 0);
        let families: Vec<MetricMetadata> = (0..200).map(family).collect();
        let split = split_by_owner(
            families.clone(),
            &view,
            NodeId(1),
            |m: &MetricMetadata| placement::metadata_partition_key(&m.metric_family),
            proto::write_body::encode_metadata,
            |_| 0,
        );
        let mut held: HashMap<NodeId, Vec<MetricMetadata>> = HashMap::new();
        held.insert(NodeId(1), split.local);
        for share in split.remote {
            let body = decoded(&share);
            assert!(body.series.is_empty());
            assert_eq!(share.samples, 0);
            held.insert(share.target, body.metadata);
        }
        let mut spread = HashMap::<NodeId, usize>::new();
        for m in &families {
            let owners = view
                .ring
                .owners(placement::metadata_partition_key(&m.metric_family));
            assert_eq!(owners.len(), 3);
            for id in 1..=5u128 {
                let has = held.get(&NodeId(id)).is_some_and(|v| v.contains(m));
                assert_eq!(has, owners.contains(&NodeId(id)), "{m:?} on {id}");
                *spread.entry(NodeId(id)).or_default() += usize::from(has);
            }
        }
        // Families spread over every node, not all on the same three.
        assert_eq!(spread.len(), 5);
        assert!(spread.values().all(|&n| n > 60), "{spread:?}");
    }

    #[test]
    fn owners_of_the_same_items_share_one_body() {
        // Three nodes, three replicas: both other nodes get the whole batch, in order,
        // from one encoding; this node keeps its items.
        let view = view_of(3, 0);
        let split = split_series(&view, batch(50));
        assert_eq!(split.local, batch(50));
        assert_eq!(split.remote.len(), 2);
        let (a, b) = (&split.remote[0], &split.remote[1]);
        assert_eq!(a.body.as_ptr(), b.body.as_ptr(), "one encoding");
        assert_eq!(decoded(a).series, batch(50));
        assert_eq!(a.samples, 50);
        // An empty batch has no shares.
        let split = split_series(&view, Vec::new());
        assert!(split.remote.is_empty() && split.owner_sets.is_empty());
    }

    #[test]
    fn a_series_in_a_batch_twice_keeps_its_order_on_every_owner() {
        let view = view_of(5, 0);
        let mut twice = batch(40);
        twice.extend(batch(40).into_iter().map(|mut s| {
            s.samples[0].t = 2;
            s
        }));
        let split = split_series(&view, twice);
        let mut copies = vec![split.local];
        copies.extend(split.remote.iter().map(|share| decoded(share).series));
        for series in copies {
            for s in &series {
                let times: Vec<i64> = series
                    .iter()
                    .filter(|o| o.labels == s.labels)
                    .map(|o| o.samples[0].t)
                    .collect();
                assert_eq!(times, vec![1, 2], "{:?}", s.labels);
            }
        }
    }

    #[test]
    fn internal_write_bodies_carry_metadata_unchanged() {
        let metadata: Vec<MetricMetadata> = (0..8).map(family).collect();
        let body = encode_write(&batch(2), &metadata);
        let decoded = crate::ingest::decode_write_request(
            Some("application/x-protobuf"),
            Some("snappy"),
            &body,
            &crate::ingest::DecodeLimits::for_body_limit(1 << 20),
        )
        .expect("decodes");
        assert_eq!(decoded.metadata, metadata);
        assert_eq!(decoded.series, batch(2));
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

    fn results(stored: &[u128], written_off: &[(u128, Limit)]) -> ShareResults {
        ShareResults {
            stored: stored.iter().map(|&i| NodeId(i)).collect(),
            written_off: written_off.iter().map(|&(i, l)| (NodeId(i), l)).collect(),
        }
    }

    fn sets(sets: &[&[u128]]) -> BTreeSet<Vec<NodeId>> {
        sets.iter()
            .map(|s| s.iter().map(|&i| NodeId(i)).collect())
            .collect()
    }

    #[test]
    fn hints_count_as_copies_while_no_owner_is_written_off() {
        // Owner 3 hinted, 2 hinted: one real copy, acknowledged as before (ADR 0006).
        assert_eq!(
            check_acknowledgement(&sets(&[&[1, 2, 3]]), &results(&[1], &[])),
            Ok(())
        );
    }

    #[test]
    fn a_written_off_owner_needs_a_majority_of_real_copies() {
        let all = sets(&[&[1, 2, 3]]);
        // 3 past its window, 1 and 2 stored: two real copies of three, acknowledged.
        assert_eq!(
            check_acknowledgement(&all, &results(&[1, 2], &[(3, Limit::Window)])),
            Ok(())
        );
        // 3 past its window and 2 only hinted: one real copy, refused.
        let refused = check_acknowledgement(&all, &results(&[1], &[(3, Limit::Cap)]));
        assert_eq!(
            refused,
            Err(NoMajority {
                owners: 3,
                stored: 1,
                written_off: vec![(NodeId(3), Limit::Cap)],
            })
        );
        let message = refused.expect_err("refused").to_string();
        assert!(message.contains("hint cap exceeded"), "{message}");
        // Two written off: refused whatever else happened.
        assert!(check_acknowledgement(
            &all,
            &results(&[1], &[(2, Limit::Window), (3, Limit::Window)])
        )
        .is_err());
        // Two replicas (two nodes): both must store, a written-off one means refusal.
        assert!(
            check_acknowledgement(&sets(&[&[1, 2]]), &results(&[1], &[(2, Limit::Window)]))
                .is_err()
        );
    }

    #[test]
    fn only_series_owned_by_a_written_off_node_need_the_majority() {
        // 5 nodes: series on {1,2,3} lack a majority (3 hinted, 2 written off) but series
        // on {1,4,5} do not involve node 2: the batch still fails as a whole, because one
        // of its series would be acknowledged with a single real copy.
        let batch_sets = sets(&[&[1, 4, 5], &[1, 2, 3]]);
        let r = results(&[1, 4, 5], &[(2, Limit::Window)]);
        assert!(check_acknowledgement(&batch_sets, &r).is_err());
        let r = results(&[1, 3, 4, 5], &[(2, Limit::Window)]);
        assert_eq!(check_acknowledgement(&batch_sets, &r), Ok(()));
        assert_eq!(
            check_acknowledgement(&sets(&[&[1, 4, 5]]), &results(&[1], &[(2, Limit::Window)])),
            Ok(()),
            "a written-off node that owns none of the batch changes nothing"
        );
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
