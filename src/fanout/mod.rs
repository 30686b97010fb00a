//! Fan-out: the read side of the cluster.
//!
//! Owns: asking every alive node (itself locally, the others over the internal read
//! endpoints) for the series matching a request, and merging the replicas' answers so
//! each series appears once with the union of its samples (equal timestamps
//! deduplicated). Which series a node holds is unknown for a matcher query, so every
//! node is asked (ADR 0007); a select crosses the network once per series, not once per
//! replica: each peer sends in full only the series it is the first alive owner of and
//! digests of the others, and a second round fetches what a digest says is missing
//! (ADR 0028; `timbala_fanout_read_received_bytes_total` counts the bytes). Native
//! histograms are selected from the same nodes with the same waiting, refusal and
//! notes, but every node sends each matching series it holds in full (no histogram
//! digests yet, so no second round and no read repair; ADR 0030). Metric
//! metadata is read the same way (ADR 0020), so are exemplars (ADR 0027), and so are
//! the head statistics of `/api/v1/status/tsdb`, each series counted by its first owner
//! among the nodes asked (ADR 0022), and so is every node's log of changes to old data,
//! which the query result cache polls (`changes_since`, ADR 0024).
//! Submodules: `gather` (whom to ask, how long to wait, when to go on without a node or
//! refuse; ADR 0012), `one_copy` (who sends a series in full and who a digest, and the
//! select's wire form, both sides), `histograms` (the histogram select's wire form,
//! both sides, and the merge of its replicas), `pushdown` (aggregations evaluated by each node
//! over the series it would send in full, accepted when the digests of every copy
//! agree; ADR 0029), `lagging` (the merge of copies and digests, noting
//! owners that answered without samples another replica returned) and `notes` (the
//! warnings an answer given without some node carries to the HTTP API).
//!
//! Calls `cluster` (membership view, placement), `peer` (internal HTTP client),
//! `replication::hints` (this node's pending hints, read only),
//! `replication::read_repair` (offered the lags a select found; it writes them back in
//! the background, never slowing the read) and the local `storage::Storage` (and the
//! local `tsdb` for head statistics). Writes are otherwise not its business: they pass
//! through to the local store.

mod gather;
pub mod histograms;
pub mod lagging;
pub mod notes;
pub mod one_copy;
pub mod pushdown;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::cluster::identity::NodeId;
use crate::cluster::membership::{ClusterView, MemberState, MembershipHandle};
use crate::cluster::placement;
use crate::model::{HistogramSeries, Label, Labels, MetricMetadata, Series, SeriesExemplars};
use crate::peer::{
    self, PeerClient, WireCardinalityRequest, WireExemplar, WireExemplarRequest, WireLabelRequest,
    WireMetadata, WireMetadataRequest, WireSelectRequest,
};
use crate::promql::pushdown::AggregatePushdown;
use crate::replication::hints::HintStore;
use crate::replication::read_repair::ReadRepair;
use crate::storage::{
    AppendOutcome, BoxFuture, ChangeMark, ChangeReport, Changes, ExemplarRequest,
    HistogramAppendError, LabelRequest, SelectError, SelectRequest, SourceId, Storage,
    StorageError, LOCAL_SOURCE,
};
use crate::tsdb::{HeadCardinality, Tsdb};
pub use gather::FanoutOptions;
use gather::PeerAnswer;
use one_copy::SelectAnswer;

/// The read side of the cluster as a `Storage`. Cheap to clone.
#[derive(Clone)]
pub struct FanoutStorage {
    inner: Arc<Inner>,
}

struct Inner {
    local: Arc<dyn Storage>,
    membership: MembershipHandle,
    client: PeerClient,
    /// This node's hint queue: the replicas it knows to lag.
    hints: Arc<HintStore>,
    /// Where the replicas a read finds lagging are written back.
    read_repair: Arc<ReadRepair>,
    options: FanoutOptions,
    metrics: FanoutMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CancelReason {
    reason: &'static str,
}

/// Fan-out metrics, every series present (zero) from the start.
#[derive(Clone)]
pub struct FanoutMetrics {
    /// Fanned-out reads by outcome: `complete`, `degraded` (answered with warnings:
    /// without some node, or with lagging replicas), `failed` (refused: too many nodes
    /// missing).
    requests: Family<Outcome, Counter>,
    cancelled: Family<CancelReason, Counter>,
    /// Peers left behind `peer_timeout` after the answers in hand held every series.
    peer_timeouts: Counter,
    /// In-flight peer requests cancelled because gossip declared the peer down.
    cancelled_member_down: Counter,
    /// In-flight peer requests cancelled because the read ended first (refused, query
    /// timed out, client gone).
    cancelled_read_ended: Counter,
    /// Bytes of peers' select answers (both rounds) this node received as coordinator.
    read_received_bytes: Counter,
    /// Series fetched in full in a select's second round (a digest matched no copy).
    second_round_series: Counter,
    /// Pushed-down aggregations by outcome: `pushed` (the shares answered), `declined`
    /// (evaluated the ordinary way: a node declined or failed, or copies disagreed).
    pushdowns: Family<Outcome, Counter>,
}

impl Default for FanoutMetrics {
    fn default() -> Self {
        let requests = Family::<Outcome, Counter>::default();
        for outcome in ["complete", "degraded", "failed"] {
            let _ = requests.get_or_create(&Outcome { outcome });
        }
        let pushdowns = Family::<Outcome, Counter>::default();
        for outcome in ["pushed", "declined"] {
            let _ = pushdowns.get_or_create(&Outcome { outcome });
        }
        let cancelled = Family::<CancelReason, Counter>::default();
        let reason = |reason| cancelled.get_or_create(&CancelReason { reason }).clone();
        FanoutMetrics {
            requests,
            peer_timeouts: Counter::default(),
            cancelled_member_down: reason("member_down"),
            cancelled_read_ended: reason("read_ended"),
            cancelled,
            read_received_bytes: Counter::default(),
            second_round_series: Counter::default(),
            pushdowns,
        }
    }
}

impl FanoutMetrics {
    pub fn register(registry: &mut Registry) -> FanoutMetrics {
        let m = FanoutMetrics::default();
        let r = registry.sub_registry_with_prefix("timbala_fanout");
        r.register(
            "requests",
            "Fanned-out reads by outcome (complete; degraded: answered with warnings; \
             failed: refused, too many nodes missing)",
            m.requests.clone(),
        );
        r.register(
            "peer_timeouts",
            "Peers a read went on without: no answer --query-peer-timeout after the \
             other replicas' answers held every series",
            m.peer_timeouts.clone(),
        );
        r.register(
            "cancelled_requests",
            "In-flight peer requests cancelled, by reason (member_down: gossip declared \
             the peer down; read_ended: the read was refused or abandoned first)",
            m.cancelled.clone(),
        );
        r.register(
            "read_received_bytes",
            "Bytes of the select answers (both rounds; ADR 0028) and pushed-down \
             aggregation answers (ADR 0029) this node received from peers as the \
             coordinator of fanned-out reads",
            m.read_received_bytes.clone(),
        );
        r.register(
            "second_round_series",
            "Series a fanned-out read fetched in full in a second round because a \
             replica's digest matched no copy in hand (ADR 0028)",
            m.second_round_series.clone(),
        );
        r.register(
            "pushdowns",
            "Aggregations this node pushed down to the nodes holding the data, by outcome \
             (pushed; declined: evaluated from a fanned-out select instead; ADR 0029)",
            m.pushdowns.clone(),
        );
        m
    }

    fn count_pushdown(&self, outcome: &'static str) {
        self.pushdowns.get_or_create(&Outcome { outcome }).inc();
    }

    fn count(&self, outcome: &'static str) {
        self.requests.get_or_create(&Outcome { outcome }).inc();
    }
}

impl FanoutStorage {
    pub fn new(
        local: Arc<dyn Storage>,
        membership: MembershipHandle,
        client: PeerClient,
        hints: Arc<HintStore>,
        read_repair: Arc<ReadRepair>,
        options: FanoutOptions,
        metrics: FanoutMetrics,
    ) -> FanoutStorage {
        FanoutStorage {
            inner: Arc::new(Inner {
                local,
                membership,
                client,
                hints,
                read_repair,
                options,
                metrics,
            }),
        }
    }

    /// A select over every node, one copy of each series on the wire (ADR 0028): each
    /// peer sends in full the series it is the first alive owner of in this node's view
    /// and digests of the other series it owns; this node reads its own store in full.
    /// Digests that match no copy in hand are fetched in full in a second round, so the
    /// merge is the union of every replica that answered, as in ADR 0007.
    async fn fan_select(&self, req: SelectRequest) -> Result<Vec<Series>, SelectError> {
        let view = self.inner.membership.view();
        let wire = select_wire(&view, &req);
        let max_samples = req.max_samples;
        let local = async {
            let full = self.inner.local.select(req).await?;
            let digests = Vec::new();
            Ok(SelectAnswer { full, digests })
        };
        let mut all = self
            .gather_select(view.clone(), &wire, local, RemoteSelect::FLOATS)
            .await?;
        let merged = match all.as_mut_slice() {
            // A cluster of one: its answer is already sorted and unique.
            [(_, only)] => std::mem::take(&mut only.full),
            _ => self.merge_rounds(&view, wire, all).await?,
        };
        check_total(max_samples, merged.iter().map(|s| s.samples.len()))?;
        Ok(merged)
    }

    /// A select of native histograms over every node, asked and answered like
    /// `fan_select` (`gather`: the same nodes, waiting, refusal and notes), but every
    /// node sends each matching series it holds in full (`histograms`: no digests), and
    /// the replicas' copies are merged by `histograms::merge`.
    async fn fan_select_histograms(
        &self,
        req: SelectRequest,
    ) -> Result<Vec<HistogramSeries>, SelectError> {
        let view = self.inner.membership.view();
        let wire = select_wire(&view, &req);
        let max_samples = req.max_samples;
        let local = self.inner.local.select_histograms(req);
        let all = self
            .gather_select(view, &wire, local, RemoteSelect::HISTOGRAMS)
            .await?;
        let merged = histograms::merge(all);
        check_total(max_samples, merged.iter().map(|s| s.samples.len()))?;
        Ok(merged)
    }

    /// The first round of a select (`wire`) of either kind: `local` here and `select`
    /// on every peer alive in `view`, through `gather`; refused when any node was past
    /// the request's sample limit.
    async fn gather_select<T: Send + 'static>(
        &self,
        view: Arc<ClusterView>,
        wire: &WireSelectRequest,
        local: impl std::future::Future<Output = Result<T, SelectError>>,
        select: RemoteSelect<T>,
    ) -> Result<Vec<(NodeId, T)>, SelectError> {
        let body =
            Arc::new(serde_json::to_vec(wire).map_err(|e| StorageError::Other(e.to_string()))?);
        // Past the sample limit is the read's answer (the query is refused), not this
        // node's failure to be answered for by the replicas.
        let local = async {
            match local.await {
                Ok(answer) => Ok(Ok(answer)),
                Err(SelectError::TooManySamples) => Ok(Err(())),
                Err(SelectError::Storage(e)) => Err(e),
            }
        };
        let received = self.inner.metrics.read_received_bytes.clone();
        let answers = self
            .gather(view, local, move |client, peer, deadline| {
                let body = body.clone();
                let received = received.clone();
                async move {
                    select
                        .ask(&client, &peer, body.to_vec(), deadline, &received)
                        .await
                }
            })
            .await?;
        answers
            .into_iter()
            .map(|(node, answer)| Ok((node, answer.map_err(|()| SelectError::TooManySamples)?)))
            .collect()
    }

    /// Merges the first round's answers, fetching in a second round the copies whose
    /// digests match no copy in hand, and offers the lags found to read repair.
    async fn merge_rounds(
        &self,
        view: &ClusterView,
        wire: WireSelectRequest,
        answers: Vec<(NodeId, SelectAnswer)>,
    ) -> Result<Vec<Series>, SelectError> {
        let mut collation = lagging::Collation::new(answers);
        let fetches = collation.fetches();
        if !fetches.is_empty() {
            for (node, fetched) in self.fetch_in_full(view, wire, fetches).await {
                match fetched {
                    Ok(Ok(answer)) => collation.add_fetched(node, answer.full),
                    Ok(Err(())) => return Err(SelectError::TooManySamples),
                    Err(why) => {
                        tracing::warn!(%why, "fan-out: a second-round fetch failed");
                        notes::record(notes::ReadNotes {
                            warnings: vec![why],
                            ..Default::default()
                        });
                    }
                }
            }
        }
        let (merged, lags) = collation.finish(|labels| series_owners(&view.ring, labels));
        if !lags.is_empty() {
            let lags = lags.into_iter().map(|l| (l.target, l.series)).collect();
            self.inner.read_repair.offer(lags);
        }
        Ok(merged)
    }

    /// The second round of a select (ADR 0028): asks each node in `fetches` for the
    /// series it named by digest, by label hash, in full; all at once, each within the
    /// request timeout. A node that cannot be asked or fails is an `Err` naming it.
    async fn fetch_in_full(
        &self,
        view: &ClusterView,
        mut wire: WireSelectRequest,
        fetches: BTreeMap<NodeId, Vec<u64>>,
    ) -> Vec<(NodeId, Result<PeerSelect, String>)> {
        let inner = &self.inner;
        let series: usize = fetches.values().map(Vec::len).sum();
        inner.metrics.second_round_series.inc_by(series as u64);
        let trace_id = peer::current_trace_id();
        let mut asked = tokio::task::JoinSet::new();
        let mut nodes_of = std::collections::HashMap::new();
        let mut results = Vec::with_capacity(fetches.len());
        for (node, hashes) in fetches {
            let Some(addr) = view.ring.node(node).map(|n| n.http_addr.clone()) else {
                results.push((
                    node,
                    Err(format!(
                        "answered without node {node}: no longer in the ring"
                    )),
                ));
                continue;
            };
            wire.only = Some(hashes);
            let body = match serde_json::to_vec(&wire) {
                Ok(body) => body,
                Err(e) => {
                    results.push((node, Err(e.to_string())));
                    continue;
                }
            };
            let client = inner.client.clone();
            let deadline = inner.options.request_timeout;
            let received = inner.metrics.read_received_bytes.clone();
            let task = asked.spawn(peer::with_trace_id(trace_id.clone(), async move {
                let select = RemoteSelect::FLOATS;
                let answer = select.ask(&client, &addr, body, deadline, &received).await;
                let answer = answer.map(|a| a.value).map_err(|e| {
                    format!(
                        "answered without some series of node {addr}: fetching them failed \
                         ({e}); samples only that node holds may be missing"
                    )
                });
                (node, answer)
            }));
            nodes_of.insert(task.id(), node);
        }
        while let Some(joined) = asked.join_next_with_id().await {
            match joined {
                Ok((_, result)) => results.push(result),
                Err(e) => {
                    if let Some(&node) = nodes_of.get(&e.id()) {
                        results.push((node, Err(format!("a second-round fetch failed: {e}"))));
                    }
                }
            }
        }
        results
    }

    /// Asks every node over one of the internal JSON reads (`wire` is the request
    /// body) and returns the sorted, deduplicated union of the answers.
    async fn fan_labels<T>(
        &self,
        path: &'static str,
        local: BoxFuture<'_, Result<Vec<T>, StorageError>>,
        wire: impl serde::Serialize,
    ) -> Result<Vec<T>, StorageError>
    where
        T: Ord + Send + serde::de::DeserializeOwned + 'static,
    {
        let body =
            Arc::new(serde_json::to_vec(&wire).map_err(|e| StorageError::Other(e.to_string()))?);
        let view = self.inner.membership.view();
        let answers = self
            .gather(view, local, move |client, peer, deadline| {
                let body = body.clone();
                async move {
                    remote_json::<Vec<T>>(&client, &peer, path, body.to_vec(), deadline).await
                }
            })
            .await?;
        let mut all: Vec<T> = answers.into_iter().flat_map(|(_, a)| a).collect();
        all.sort();
        all.dedup();
        Ok(all)
    }
}

/// The head statistics of the nodes that answered a cluster-wide count.
pub struct ClusterCardinality {
    /// One part per node that answered; no series is in two parts.
    pub parts: Vec<HeadCardinality>,
    /// Nodes that were to count series but did not answer ("<id> (<address>)"): the
    /// series they are the first live owner of are not counted.
    pub not_counted: Vec<String>,
}

impl FanoutStorage {
    /// Counts the cluster's head (`/api/v1/status/tsdb`, ADR 0022): every node alive in
    /// this node's view counts the series it is the first owner of among those nodes,
    /// so a series held by three replicas is counted once, by one of them. Asked like
    /// any read (`gather`): a node that does not answer is left out with a warning, and
    /// the count is refused once a series could have no counter at all.
    pub async fn cardinality(&self, tsdb: Tsdb) -> Result<ClusterCardinality, StorageError> {
        let view = self.inner.membership.view();
        let me = view.local.id;
        let counters: Vec<NodeId> = view
            .ring
            .nodes_in_join_order()
            .iter()
            .filter(|n| n.id == me || !gather::is_down(&view, n.id))
            .map(|n| n.id)
            .collect();
        let wire = WireCardinalityRequest {
            counters: counters.clone(),
        };
        let body =
            Arc::new(serde_json::to_vec(&wire).map_err(|e| StorageError::Other(e.to_string()))?);
        let ring = view.ring.clone();
        let local_counters = counters.clone();
        let local = async move {
            tokio::task::spawn_blocking(move || {
                tsdb.head_cardinality(&|labels| counts_series(&ring, &local_counters, me, labels))
            })
            .await
            .map_err(|e| StorageError::Other(format!("counting the head failed: {e}")))
        };
        let answers = self
            .gather(view.clone(), local, move |client, peer, deadline| {
                let body = body.clone();
                async move {
                    remote_json::<HeadCardinality>(
                        &client,
                        &peer,
                        peer::CARDINALITY_PATH,
                        body.to_vec(),
                        deadline,
                    )
                    .await
                }
            })
            .await?;
        let not_counted = view
            .ring
            .nodes_in_join_order()
            .iter()
            .filter(|n| counters.contains(&n.id) && !answers.iter().any(|(id, _)| *id == n.id))
            .map(|n| format!("{} ({})", n.id, n.http_addr))
            .collect();
        Ok(ClusterCardinality {
            parts: answers.into_iter().map(|(_, part)| part).collect(),
            not_counted,
        })
    }
}

/// Whether node `me` counts the series `labels` in the cluster's head statistics: it is
/// the first of the series' owners (placement order over `ring`) among `counters`,
/// the nodes asked (ADR 0022). Every node applies it to the same ring and list, so each
/// series has exactly one counter among them.
pub fn counts_series(
    ring: &crate::cluster::ring::Ring,
    counters: &[NodeId],
    me: NodeId,
    labels: &Labels,
) -> bool {
    series_owners(ring, labels)
        .into_iter()
        .find(|owner| counters.contains(owner))
        == Some(me)
}

impl FanoutStorage {
    /// Every node's changes to old data since `marks` (ADR 0024): this node's own log
    /// and every ring node's over `CHANGES_PATH`, asked at once. Complete only when
    /// every ring node answered within the peer timeout; a node that appeared, vanished
    /// or restarted since `marks` counts as a change of everything.
    async fn poll_changes(
        &self,
        marks: BTreeMap<SourceId, ChangeMark>,
    ) -> Result<ChangeReport, StorageError> {
        let inner = &self.inner;
        let view = inner.membership.view();
        let local_id = view.local.id;
        let mut asked = tokio::task::JoinSet::new();
        let mut complete = true;
        for node in view.ring.nodes_in_join_order() {
            if node.id == local_id {
                continue;
            }
            let alive = matches!(
                view.member(node.id).map(|m| m.state),
                Some(MemberState::Alive | MemberState::Suspect)
            );
            if !alive {
                complete = false;
                continue;
            }
            let since = marks.get(&node.id.0).copied();
            let body =
                serde_json::to_vec(&since).map_err(|e| StorageError::Other(e.to_string()))?;
            let client = inner.client.clone();
            let addr = node.http_addr.clone();
            let deadline = inner.options.peer_timeout;
            let id = node.id;
            asked.spawn(peer::with_trace_id(peer::current_trace_id(), async move {
                let answer =
                    remote_json::<Changes>(&client, &addr, peer::CHANGES_PATH, body, deadline)
                        .await;
                (id, answer.map(|a| a.value))
            }));
        }
        let local_since = marks.get(&local_id.0).copied();
        let local = inner
            .local
            .changes_since(local_since.map(|m| (LOCAL_SOURCE, m)).into_iter().collect())
            .await?;
        let mut report = ChangeReport {
            marks: BTreeMap::new(),
            earliest: local.earliest,
            complete: complete && local.complete,
        };
        if let Some(mark) = local.marks.get(&LOCAL_SOURCE) {
            report.marks.insert(local_id.0, *mark);
        }
        while let Some(joined) = asked.join_next().await {
            let Ok((id, answer)) = joined else {
                report.complete = false;
                continue;
            };
            match answer {
                Ok(changes) => {
                    report.marks.insert(id.0, changes.mark);
                    report.earliest = earlier(report.earliest, changes.earliest);
                }
                Err(error) => {
                    tracing::debug!(%error, "change poll: a node did not answer");
                    report.complete = false;
                }
            }
        }
        if marks.keys().any(|id| !report.marks.contains_key(id)) {
            // A node whose data the marks covered is gone from the reads.
            report.earliest = Some(i64::MIN);
        }
        Ok(report)
    }
}

/// The earlier of two "earliest change" answers (`None`: no change).
fn earlier(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A peer's select answer; `Err(())`: past the request's sample limit.
type PeerSelect = Result<SelectAnswer, ()>;

/// The first round's request of `fan_select` and `fan_select_histograms` in `view`.
fn select_wire(view: &ClusterView, req: &SelectRequest) -> WireSelectRequest {
    let mut alive: Vec<NodeId> = gather::asked(view).map(|n| n.id).collect();
    alive.push(view.local.id);
    WireSelectRequest {
        matchers: req.matchers.iter().map(peer::wire_matcher).collect(),
        mint: req.mint,
        maxt: req.maxt,
        max_samples: req.max_samples,
        slots: one_copy::wire_slots(&view.ring),
        alive,
        only: None,
    }
}

/// Refuses a merged answer whose series hold more than `max_samples` samples (0: no
/// limit); each series is counted once, however many replicas sent it.
fn check_total(
    max_samples: usize,
    per_series: impl Iterator<Item = usize>,
) -> Result<(), SelectError> {
    if max_samples > 0 && per_series.sum::<usize>() > max_samples {
        return Err(SelectError::TooManySamples);
    }
    Ok(())
}

/// One of the internal selects, as the asker sends it: where, the name its metrics
/// give it, and how its answer is decoded.
struct RemoteSelect<T> {
    path: &'static str,
    op: &'static str,
    decode: fn(&[u8]) -> Result<T, String>,
}

// By hand: a derive would ask `T: Copy` of the answer type, which is never copied.
impl<T> Clone for RemoteSelect<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for RemoteSelect<T> {}

impl RemoteSelect<SelectAnswer> {
    const FLOATS: Self = RemoteSelect {
        path: peer::SELECT_PATH,
        op: "select",
        decode: one_copy::decode_answer,
    };
}

impl RemoteSelect<Vec<HistogramSeries>> {
    const HISTOGRAMS: Self = RemoteSelect {
        path: peer::SELECT_HISTOGRAMS_PATH,
        op: "select_histograms",
        decode: histograms::decode_answer,
    };
}

impl<T> RemoteSelect<T> {
    /// Sends `body` (JSON `WireSelectRequest`) to `peer`; 422 is the peer's answer
    /// that the request's sample limit was exceeded (`Ok(Err(()))`).
    async fn ask(
        &self,
        client: &PeerClient,
        peer: &str,
        body: Vec<u8>,
        deadline: Duration,
        received: &Counter,
    ) -> Result<PeerAnswer<Result<T, ()>>, String> {
        let trace_id = peer::current_trace_id();
        let headers = [
            ("content-type", "application/json"),
            (peer::TRACE_HEADER, trace_id.as_str()),
        ];
        let response = client
            .post(peer, self.path, self.op, &headers, body, deadline)
            .await
            .map_err(|e| e.to_string())?;
        received.inc_by(response.body.len() as u64);
        let value = match response.status {
            200 => Ok((self.decode)(&response.body).map_err(|e| format!("{peer}: {e}"))?),
            422 => Err(()),
            status => {
                return Err(format!(
                    "{peer}: {} answered {status}: {}",
                    self.op,
                    String::from_utf8_lossy(&response.body)
                ))
            }
        };
        Ok(PeerAnswer {
            value,
            hints_pending: response.hints_pending(),
        })
    }
}

async fn remote_json<T: serde::de::DeserializeOwned>(
    client: &PeerClient,
    peer: &str,
    path: &'static str,
    body: Vec<u8>,
    deadline: Duration,
) -> Result<PeerAnswer<T>, String> {
    let trace_id = peer::current_trace_id();
    let headers = [
        ("content-type", "application/json"),
        (peer::TRACE_HEADER, trace_id.as_str()),
    ];
    let op = match path {
        peer::METADATA_PATH => "metadata",
        peer::EXEMPLARS_PATH => "exemplars",
        peer::CARDINALITY_PATH => "tsdb_status",
        _ => "labels",
    };
    let response = client
        .post(peer, path, op, &headers, body, deadline)
        .await
        .map_err(|e| e.to_string())?;
    if response.status != 200 {
        return Err(format!("{peer}{path}: answered {}", response.status));
    }
    Ok(PeerAnswer {
        value: serde_json::from_slice(&response.body).map_err(|e| format!("{peer}{path}: {e}"))?,
        hints_pending: response.hints_pending(),
    })
}

/// The owners of a series in `ring` (placement, ADR 0004/0015).
fn series_owners(ring: &crate::cluster::ring::Ring, labels: &Labels) -> Vec<NodeId> {
    ring.owners(placement::partition_key(labels))
}

/// Merges replicas: one series per label set, sorted by labels, with the union of the
/// replicas' samples in time order; a timestamp present on several replicas is kept once,
/// with the value `model::conflict_winner` picks (replicas that have not converged yet
/// give the answer they will converge to, whichever replica answered first). The rule
/// is `lagging::merge_and_find_lags`'s, without looking for lagging owners.
pub fn merge_series(answers: Vec<Vec<Series>>) -> Vec<Series> {
    let numbered = answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| (NodeId(i as u128), a))
        .collect();
    lagging::merge_and_find_lags(numbered, |_| Vec::new()).0
}

impl Storage for FanoutStorage {
    /// Writes are the replication layer's; this passes through to the local store.
    fn append(&self, batch: Vec<Series>) -> BoxFuture<'_, Result<AppendOutcome, StorageError>> {
        self.inner.local.append(batch)
    }

    fn select(&self, req: SelectRequest) -> BoxFuture<'_, Result<Vec<Series>, SelectError>> {
        Box::pin(self.fan_select(req))
    }

    /// Writes are the replication layer's; this passes through to the local store.
    fn append_histograms(
        &self,
        batch: Vec<HistogramSeries>,
    ) -> BoxFuture<'_, Result<AppendOutcome, HistogramAppendError>> {
        self.inner.local.append_histograms(batch)
    }

    fn select_histograms(
        &self,
        req: SelectRequest,
    ) -> BoxFuture<'_, Result<Vec<HistogramSeries>, SelectError>> {
        Box::pin(self.fan_select_histograms(req))
    }

    fn series(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<Labels>, StorageError>> {
        Box::pin(async move {
            let wire = WireLabelRequest::from_request(&req, None);
            let local = Box::pin(async move {
                let series = self.inner.local.series(req).await?;
                Ok(series.into_iter().map(labels_to_pairs).collect())
            });
            let pairs: Vec<Vec<(String, String)>> =
                self.fan_labels(peer::SERIES_PATH, local, wire).await?;
            Ok(pairs.into_iter().map(pairs_to_labels).collect())
        })
    }

    fn label_names(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        Box::pin(async move {
            let wire = WireLabelRequest::from_request(&req, None);
            let local = self.inner.local.label_names(req);
            self.fan_labels(peer::LABELS_PATH, local, wire).await
        })
    }

    fn label_values(
        &self,
        name: String,
        req: LabelRequest,
    ) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        Box::pin(async move {
            let wire = WireLabelRequest::from_request(&req, Some(name.clone()));
            let local = self.inner.local.label_values(name, req);
            self.fan_labels(peer::LABEL_VALUES_PATH, local, wire).await
        })
    }

    fn record_metadata(
        &self,
        metadata: Vec<MetricMetadata>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.local.record_metadata(metadata)
    }

    /// Metadata lives on the owners of its family name (ADR 0020), so every node is
    /// asked as for series; the answer is the sorted union, each entry once.
    fn metadata(
        &self,
        metric: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<MetricMetadata>, StorageError>> {
        Box::pin(async move {
            let wire = WireMetadataRequest {
                metric: metric.clone(),
            };
            let local = Box::pin(async move {
                let known = self.inner.local.metadata(metric).await?;
                Ok(known.into_iter().map(peer::metadata_to_wire).collect())
            });
            let all: Vec<WireMetadata> = self.fan_labels(peer::METADATA_PATH, local, wire).await?;
            Ok(all.into_iter().map(peer::metadata_from_wire).collect())
        })
    }

    fn append_exemplars(
        &self,
        batch: Vec<SeriesExemplars>,
    ) -> BoxFuture<'_, Result<u64, StorageError>> {
        self.inner.local.append_exemplars(batch)
    }

    /// Exemplars live on the owners of their series (ADR 0027), so every node is asked,
    /// and the replicas' copies are merged.
    fn exemplars(
        &self,
        req: ExemplarRequest,
    ) -> BoxFuture<'_, Result<Vec<SeriesExemplars>, StorageError>> {
        Box::pin(async move {
            let wire = WireExemplarRequest::new(&req.matcher_sets, req.start, req.end);
            let local = Box::pin(async move {
                let found = self.inner.local.exemplars(req).await?;
                Ok(peer::exemplars_to_wire(found))
            });
            let all: Vec<WireExemplar> = self.fan_labels(peer::EXEMPLARS_PATH, local, wire).await?;
            Ok(peer::exemplars_from_wire(all))
        })
    }

    fn changes_since(
        &self,
        marks: BTreeMap<SourceId, ChangeMark>,
    ) -> BoxFuture<'_, Result<ChangeReport, StorageError>> {
        Box::pin(self.poll_changes(marks))
    }

    fn pushdown(&self) -> Option<Arc<dyn AggregatePushdown>> {
        Some(Arc::new(self.clone()))
    }
}

/// Labels as (name, value) pairs, the internal series answer's shape.
pub fn labels_to_pairs(labels: Labels) -> Vec<(String, String)> {
    labels
        .into_vec()
        .into_iter()
        .map(|l| (l.name.into(), l.value.into()))
        .collect()
}

fn pairs_to_labels(pairs: Vec<(String, String)>) -> Labels {
    Labels::from_sorted(pairs.into_iter().map(|(n, v)| Label::new(n, v)).collect())
}

/// Reads go to one store, writes to another: the node's public storage is
/// `Split { writes: replication, reads: fan-out }`.
pub struct Split {
    pub writes: Arc<dyn Storage>,
    pub reads: Arc<dyn Storage>,
}

impl Storage for Split {
    fn append(&self, batch: Vec<Series>) -> BoxFuture<'_, Result<AppendOutcome, StorageError>> {
        self.writes.append(batch)
    }
    fn select(&self, req: SelectRequest) -> BoxFuture<'_, Result<Vec<Series>, SelectError>> {
        self.reads.select(req)
    }
    fn append_histograms(
        &self,
        batch: Vec<HistogramSeries>,
    ) -> BoxFuture<'_, Result<AppendOutcome, HistogramAppendError>> {
        self.writes.append_histograms(batch)
    }
    fn select_histograms(
        &self,
        req: SelectRequest,
    ) -> BoxFuture<'_, Result<Vec<HistogramSeries>, SelectError>> {
        self.reads.select_histograms(req)
    }
    fn series(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<Labels>, StorageError>> {
        self.reads.series(req)
    }
    fn label_names(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        self.reads.label_names(req)
    }
    fn label_values(
        &self,
        name: String,
        req: LabelRequest,
    ) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        self.reads.label_values(name, req)
    }
    fn record_metadata(
        &self,
        metadata: Vec<MetricMetadata>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.writes.record_metadata(metadata)
    }
    fn metadata(
        &self,
        metric: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<MetricMetadata>, StorageError>> {
        self.reads.metadata(metric)
    }
    fn append_exemplars(
        &self,
        batch: Vec<SeriesExemplars>,
    ) -> BoxFuture<'_, Result<u64, StorageError>> {
        self.writes.append_exemplars(batch)
    }
    fn exemplars(
        &self,
        req: ExemplarRequest,
    ) -> BoxFuture<'_, Result<Vec<SeriesExemplars>, StorageError>> {
        self.reads.exemplars(req)
    }
    fn changes_since(
        &self,
        marks: BTreeMap<SourceId, ChangeMark>,
    ) -> BoxFuture<'_, Result<ChangeReport, StorageError>> {
        self.reads.changes_since(marks)
    }
    fn pushdown(&self) -> Option<Arc<dyn AggregatePushdown>> {
        self.reads.pushdown()
    }
}

/// A series named `name` holding `samples`, for the fan-out's unit tests.
#[cfg(test)]
pub(crate) fn test_series(name: &str, samples: &[(i64, f64)]) -> Series {
    Series {
        labels: Labels::from_pairs([("__name__", name)]),
        samples: samples
            .iter()
            .map(|&(t, v)| crate::model::Sample::new(t, v))
            .collect(),
    }
}

/// A ring of `ids` in join order, those in `removed` marked removed, for the fan-out's
/// unit tests.
#[cfg(test)]
pub(crate) fn test_ring(ids: &[u128], removed: &[u128]) -> crate::cluster::ring::Ring {
    use crate::cluster::identity::NodeId;
    use crate::cluster::ring::{Ring, RingNode, RingSlot};
    Ring::from_slots(
        ids.iter()
            .enumerate()
            .map(|(i, &id)| RingSlot {
                node: RingNode {
                    id: NodeId(id),
                    join_seq: i as u64,
                    gossip_addr: "127.0.0.1:1".parse().expect("addr"),
                    http_addr: format!("127.0.0.1:{}", 1000 + i),
                },
                removed: removed.contains(&id),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_series as series;

    #[test]
    fn replicas_merge_into_one_series_with_the_union_of_samples() {
        let a = vec![series("a", &[(1, 1.0), (3, 3.0)]), series("b", &[(1, 1.0)])];
        let b = vec![series("a", &[(2, 2.0), (3, 3.0), (4, 4.0)])];
        let c = vec![series("b", &[(1, 1.0)]), series("c", &[(5, 5.0)])];
        let merged = merge_series(vec![a, b, c]);
        assert_eq!(
            merged,
            vec![
                series("a", &[(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]),
                series("b", &[(1, 1.0)]),
                series("c", &[(5, 5.0)]),
            ]
        );
    }
}
