//! Aggregation pushdown across the cluster (ADR 0029), both sides of the protocol.
//!
//! Owns: the share a node evaluates (`answer_share`: exactly the series it would send in
//! full under the one-copy rule, i.e. those it is the first owner of alive in the
//! asker's view, plus the `one_copy::SeriesDigest` of every matching series it holds,
//! over the range the inner expression reads); the binary form of that answer (snappy
//! protobuf: group labels, per step the partial states, annotations by step, and the
//! digests); and the coordinator's side (`FanoutStorage` as
//! `promql::pushdown::AggregatePushdown`): every node asked at once (`gather`), and the
//! shares accepted only when every asked node answered and, for every series, every
//! digest of it agrees and its first alive owner sent one (so exactly the copy the
//! ordinary read would merge was evaluated, once). Anything else declines (`None`): the
//! engine then runs the ordinary fanned-out plan, so answers never depend on a lagging
//! replica. Calls `promql::pushdown` (evaluating a share, the partial types), `one_copy`
//! (roles, digests), `gather`, `notes`, `peer` and `proto`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prost::Message;

use super::gather::PeerAnswer;
use super::notes;
use super::one_copy::{self, SeriesDigest};
use super::FanoutStorage;
use crate::cluster::identity::NodeId;
use crate::cluster::placement;
use crate::cluster::ring::Ring;
use crate::model::{Labels, Series};
use crate::peer::{self, PeerClient};
use crate::promql::pushdown::{
    evaluate_share, AggregatePushdown, PartialGroup, PartialRequest, Partials, StepPartials,
};
use crate::promql::QueryError;
use crate::proto;
use crate::storage::{BoxFuture, Storage};

/// A pushed-down aggregation on the wire (`peer::PUSHDOWN_PATH`): the request and the
/// asker's view, as a select's (`peer::WireSelectRequest`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct WirePushdownRequest {
    pub request: PartialRequest,
    /// The asker's ring: every slot in join order as (id, removed).
    pub slots: Vec<(NodeId, bool)>,
    /// The nodes the asker asks, itself included.
    pub alive: Vec<NodeId>,
    /// A second round: nodes of `alive` that did not answer the first. Just the series
    /// one of them was to evaluate are evaluated, each by its first owner among the
    /// other nodes of `alive`.
    #[serde(default)]
    pub instead_of: Vec<NodeId>,
}

/// One node's share: its partials and the digests of every matching series it holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShareAnswer {
    pub partials: Partials,
    pub digests: Vec<SeriesDigest>,
}

/// Whether node `me` evaluates `labels` in a pushed-down share: it is the first of the
/// series' owners (placement order over `ring`) among `alive`; in a second round
/// (`instead_of` not empty), the series' first owner among `alive` is one of
/// `instead_of` and `me` is its first owner among the others.
fn evaluates(
    ring: &Ring,
    alive: &[NodeId],
    instead_of: &[NodeId],
    me: NodeId,
    labels: &Labels,
) -> bool {
    let owners = ring.owners(placement::partition_key(labels));
    let first = owners.iter().find(|o| alive.contains(o));
    if instead_of.is_empty() {
        return first == Some(&me);
    }
    first.is_some_and(|f| instead_of.contains(f))
        && owners
            .iter()
            .find(|o| alive.contains(o) && !instead_of.contains(o))
            == Some(&me)
}

/// Node `me`'s share of `wire` over its own `store` (see the module comment). `None`
/// when it cannot answer so: its ring places series differently from the asker's, or
/// the request names no pushable aggregation.
pub async fn answer_share(
    store: &dyn Storage,
    ring: &Ring,
    me: NodeId,
    wire: WirePushdownRequest,
) -> Result<Option<ShareAnswer>, QueryError> {
    if !one_copy::same_placement(ring, &wire.slots) {
        return Ok(None);
    }
    let mut digests = Vec::new();
    let (alive, instead_of) = (wire.alive, wire.instead_of);
    let keep = Box::new(|s: &Series| {
        digests.push(SeriesDigest::of(s.labels.stable_hash(), &s.samples));
        evaluates(ring, &alive, &instead_of, me, &s.labels)
    });
    let partials = evaluate_share(store, wire.request, keep).await?;
    Ok(partials.map(|partials| ShareAnswer { partials, digests }))
}

/// Whether the shares evaluated exactly one agreed copy of every series: for every
/// series (by label hash) all digests are equal and its first owner among `alive`
/// (all of whom answered) sent one.
fn digests_agree(ring: &Ring, alive: &[NodeId], answers: &[(NodeId, ShareAnswer)]) -> bool {
    let mut seen: HashMap<u64, (SeriesDigest, Vec<NodeId>)> = HashMap::new();
    for (node, answer) in answers {
        for digest in &answer.digests {
            let (first, holders) = seen
                .entry(digest.labels_hash)
                .or_insert_with(|| (*digest, Vec::new()));
            if first != digest {
                return false;
            }
            holders.push(*node);
        }
    }
    seen.into_iter().all(|(hash, (_, holders))| {
        ring.owners(hash)
            .into_iter()
            .find(|o| alive.contains(o))
            .is_some_and(|first| holders.contains(&first))
    })
}

impl AggregatePushdown for FanoutStorage {
    fn partials(
        &self,
        req: PartialRequest,
    ) -> BoxFuture<'_, Result<Option<Vec<Partials>>, QueryError>> {
        Box::pin(async move {
            // The attempt's notes (a node left behind) count only if its answer is used:
            // otherwise the ordinary read that follows leaves its own.
            let (shares, read_notes) = notes::collect(self.push_down(req)).await;
            let outcome = if shares.is_some() {
                "pushed"
            } else {
                "declined"
            };
            self.inner.metrics.count_pushdown(outcome);
            if shares.is_some() {
                notes::record(read_notes);
            }
            Ok(shares)
        })
    }
}

impl FanoutStorage {
    /// Asks every node for its share (`gather`: a node that does not answer is left
    /// behind as in any read). When the nodes that answered agree, the series of the
    /// nodes left behind are evaluated in a second round by their next owners (not
    /// waiting for them again, as a select's second round does not).
    async fn push_down(&self, request: PartialRequest) -> Option<Vec<Partials>> {
        let view = self.inner.membership.view();
        let me = view.local.id;
        let mut alive: Vec<NodeId> = super::gather::asked(&view).map(|n| n.id).collect();
        alive.push(me);
        let mut wire = WirePushdownRequest {
            request,
            slots: one_copy::wire_slots(&view.ring),
            alive: alive.clone(),
            instead_of: Vec::new(),
        };
        let body = Arc::new(serde_json::to_vec(&wire).ok()?);
        let local = self.local_share(&view.ring, me, wire.clone());
        let received = self.inner.metrics.read_received_bytes.clone();
        let answers = self
            .gather(view.clone(), local, move |client, peer, deadline| {
                let body = body.clone();
                let received = received.clone();
                async move { remote_share(&client, &peer, body.to_vec(), deadline, &received).await }
            })
            .await
            .ok()?;
        let answers: Vec<(NodeId, ShareAnswer)> = answers
            .into_iter()
            .map(|(node, share)| share.map(|s| (node, s)))
            .collect::<Option<_>>()?;
        let answered: Vec<NodeId> = answers.iter().map(|(node, _)| *node).collect();
        if !digests_agree(&view.ring, &answered, &answers) {
            return None;
        }
        let mut shares: Vec<Partials> = answers.into_iter().map(|(_, a)| a.partials).collect();
        wire.instead_of = alive
            .into_iter()
            .filter(|n| !answered.contains(n))
            .collect();
        if !wire.instead_of.is_empty() {
            shares.extend(self.second_round(&view.ring, me, &answered, wire).await?);
        }
        Some(shares)
    }

    /// This node's share, `None` when it declines or fails.
    fn local_share(
        &self,
        ring: &Ring,
        me: NodeId,
        wire: WirePushdownRequest,
    ) -> impl std::future::Future<Output = Result<Option<ShareAnswer>, crate::storage::StorageError>>
           + Send
           + 'static {
        let (ring, store) = (ring.clone(), self.inner.local.clone());
        async move {
            match answer_share(store.as_ref(), &ring, me, wire).await {
                Ok(share) => Ok(share),
                Err(error) => {
                    tracing::debug!(%error, "pushdown: this node's share failed");
                    Ok(None)
                }
            }
        }
    }

    /// The second round: `nodes` (all answered the first) evaluate the series of the
    /// nodes in `wire.instead_of`; all at once, each within the request timeout.
    async fn second_round(
        &self,
        ring: &Ring,
        me: NodeId,
        nodes: &[NodeId],
        wire: WirePushdownRequest,
    ) -> Option<Vec<Partials>> {
        let body = serde_json::to_vec(&wire).ok()?;
        let mut asked = tokio::task::JoinSet::new();
        for &node in nodes.iter().filter(|n| **n != me) {
            let addr = ring.node(node)?.http_addr.clone();
            let (client, body) = (self.inner.client.clone(), body.clone());
            let deadline = self.inner.options.request_timeout;
            let received = self.inner.metrics.read_received_bytes.clone();
            asked.spawn(peer::with_trace_id(peer::current_trace_id(), async move {
                remote_share(&client, &addr, body, deadline, &received)
                    .await
                    .ok()
                    .and_then(|a| a.value)
            }));
        }
        let mut shares = Vec::with_capacity(nodes.len());
        if nodes.contains(&me) {
            shares.push(self.local_share(ring, me, wire).await.ok()??.partials);
        }
        while let Some(joined) = asked.join_next().await {
            shares.push(joined.ok()??.partials);
        }
        Some(shares)
    }
}

async fn remote_share(
    client: &PeerClient,
    peer: &str,
    body: Vec<u8>,
    deadline: Duration,
    received: &Counter,
) -> Result<PeerAnswer<Option<ShareAnswer>>, String> {
    let trace_id = peer::current_trace_id();
    let headers = [
        ("content-type", "application/json"),
        (peer::TRACE_HEADER, trace_id.as_str()),
    ];
    let response = client
        .post(
            peer,
            peer::PUSHDOWN_PATH,
            "pushdown",
            &headers,
            body,
            deadline,
        )
        .await
        .map_err(|e| e.to_string())?;
    received.inc_by(response.body.len() as u64);
    let value = match response.status {
        200 => Some(decode_answer(&response.body).map_err(|e| format!("{peer}: {e}"))?),
        // Declined: the asker evaluates the aggregation the ordinary way.
        409 => None,
        status => {
            return Err(format!(
                "{peer}: pushdown answered {status}: {}",
                String::from_utf8_lossy(&response.body)
            ))
        }
    };
    Ok(PeerAnswer {
        value,
        hints_pending: response.hints_pending(),
    })
}

#[derive(Clone, PartialEq, Message)]
struct WireShare {
    #[prost(message, repeated, tag = "1")]
    groups: Vec<WireGroup>,
    #[prost(message, repeated, tag = "2")]
    steps: Vec<WireStep>,
    #[prost(message, repeated, tag = "3")]
    notes: Vec<WireNote>,
    #[prost(uint64, tag = "4")]
    queryable_samples: u64,
    #[prost(uint64, tag = "5")]
    samples_read: u64,
    #[prost(message, repeated, tag = "6")]
    digests: Vec<one_copy::WireDigest>,
}

#[derive(Clone, PartialEq, Message)]
struct WireGroup {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<proto::Label>,
}

#[derive(Clone, PartialEq, Message)]
struct WireStep {
    #[prost(int64, tag = "1")]
    t: i64,
    #[prost(uint64, tag = "2")]
    held: u64,
    #[prost(uint64, tag = "3")]
    inner: u64,
    #[prost(message, repeated, tag = "4")]
    partials: Vec<WirePartial>,
}

/// A partial state; fields an operator does not use are zero and cost nothing.
#[derive(Clone, PartialEq, Message)]
struct WirePartial {
    #[prost(uint32, tag = "1")]
    group: u32,
    #[prost(double, tag = "2")]
    value: f64,
    #[prost(double, tag = "3")]
    compensation: f64,
    #[prost(double, tag = "4")]
    mean: f64,
    #[prost(double, tag = "5")]
    count: f64,
    #[prost(bool, tag = "6")]
    incremental_mean: bool,
    #[prost(bool, tag = "7")]
    drop_name: bool,
}

/// An annotation and the runs of steps that raised it (flattened (from, to) pairs).
#[derive(Clone, PartialEq, Message)]
struct WireNote {
    #[prost(bool, tag = "1")]
    info: bool,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(int64, repeated, tag = "3")]
    runs: Vec<i64>,
}

pub fn encode_answer(answer: &ShareAnswer) -> Vec<u8> {
    let p = &answer.partials;
    let notes = |info: bool, m: &std::collections::BTreeMap<String, Vec<(i64, i64)>>| {
        m.iter()
            .map(|(message, runs)| WireNote {
                info,
                message: message.clone(),
                runs: runs.iter().flat_map(|&(a, b)| [a, b]).collect(),
            })
            .collect::<Vec<_>>()
    };
    let wire = WireShare {
        groups: p
            .groups
            .iter()
            .map(|l| WireGroup {
                labels: proto::labels_to_proto(l),
            })
            .collect(),
        steps: p
            .steps
            .iter()
            .map(|s| WireStep {
                t: s.t,
                held: s.held,
                inner: s.inner,
                partials: s
                    .partials
                    .iter()
                    .map(|(group, g)| WirePartial {
                        group: *group,
                        value: g.value,
                        compensation: g.compensation,
                        mean: g.mean,
                        count: g.count,
                        incremental_mean: g.incremental_mean,
                        drop_name: g.drop_name,
                    })
                    .collect(),
            })
            .collect(),
        notes: [
            notes(false, &p.annotations.warnings),
            notes(true, &p.annotations.infos),
        ]
        .concat(),
        queryable_samples: p.queryable_samples,
        samples_read: p.samples_read,
        digests: answer
            .digests
            .iter()
            .map(one_copy::WireDigest::of)
            .collect(),
    };
    proto::encode_snappy(&wire)
}

/// Decodes `encode_answer`'s output; a malformed body is an error, never a panic.
pub fn decode_answer(body: &[u8]) -> Result<ShareAnswer, String> {
    let wire: WireShare = one_copy::decode_snappy_message(body)?;
    let mut groups = Vec::with_capacity(wire.groups.len());
    for g in wire.groups {
        groups.push(one_copy::labels_from_wire(g.labels, "group")?);
    }
    let mut steps = Vec::with_capacity(wire.steps.len());
    for s in wire.steps {
        let mut partials = Vec::with_capacity(s.partials.len());
        for p in s.partials {
            if p.group as usize >= groups.len() {
                return Err(format!("partial of unknown group {}", p.group));
            }
            let state = PartialGroup {
                value: p.value,
                compensation: p.compensation,
                mean: p.mean,
                count: p.count,
                incremental_mean: p.incremental_mean,
                drop_name: p.drop_name,
            };
            partials.push((p.group, state));
        }
        steps.push(StepPartials {
            t: s.t,
            held: s.held,
            inner: s.inner,
            partials,
        });
    }
    let mut partials = Partials {
        groups,
        steps,
        queryable_samples: wire.queryable_samples,
        samples_read: wire.samples_read,
        ..Partials::default()
    };
    for note in wire.notes {
        if note.runs.len() % 2 != 0 {
            return Err("annotation runs not in pairs".into());
        }
        let runs = note.runs.chunks_exact(2).map(|r| (r[0], r[1])).collect();
        let into = if note.info {
            &mut partials.annotations.infos
        } else {
            &mut partials.annotations.warnings
        };
        into.insert(note.message, runs);
    }
    let digests = wire
        .digests
        .iter()
        .map(one_copy::WireDigest::digest)
        .collect();
    Ok(ShareAnswer { partials, digests })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sample;

    fn ring(ids: &[u128]) -> Ring {
        crate::fanout::test_ring(ids, &[])
    }

    fn share(digests: Vec<SeriesDigest>) -> ShareAnswer {
        ShareAnswer {
            partials: Partials::default(),
            digests,
        }
    }

    #[test]
    fn shares_count_only_when_every_copy_agrees_and_the_first_owner_answered() {
        let ring = ring(&[1, 2, 3]);
        let alive: Vec<NodeId> = [1, 2, 3].map(NodeId).to_vec();
        let labels = Labels::from_pairs([("__name__", "x")]);
        let hash = labels.stable_hash();
        let owners = ring.owners(hash);
        let d = SeriesDigest::of(hash, &[Sample::new(1, 1.0), Sample::new(2, 2.0)]);
        let lagging = SeriesDigest::of(hash, &[Sample::new(1, 1.0)]);
        let all = |d: SeriesDigest| -> Vec<(NodeId, ShareAnswer)> {
            owners.iter().map(|&o| (o, share(vec![d]))).collect()
        };
        assert!(digests_agree(&ring, &alive, &all(d)));
        // One owner lags: its digest differs.
        let mut one_lags = all(d);
        one_lags[2].1 = share(vec![lagging]);
        assert!(!digests_agree(&ring, &alive, &one_lags));
        // The first owner lacks the series: nobody evaluated it.
        let mut first_lacks = all(d);
        first_lacks[0].1 = share(Vec::new());
        assert!(!digests_agree(&ring, &alive, &first_lacks));
        // A later owner lacking it entirely does not change the union.
        let mut later_lacks = all(d);
        later_lacks[2].1 = share(Vec::new());
        assert!(digests_agree(&ring, &alive, &later_lacks));
        // With the first owner not alive, the second is the one that must answer.
        let without_first: Vec<NodeId> =
            alive.iter().copied().filter(|n| *n != owners[0]).collect();
        assert!(digests_agree(&ring, &without_first, &all(d)[1..]));
    }

    #[test]
    fn each_series_is_evaluated_by_exactly_one_node() {
        let ring = ring(&[1, 2, 3, 4]);
        for alive in [vec![1, 2, 3, 4], vec![1, 3, 4], vec![2, 4]] {
            let alive: Vec<NodeId> = alive.into_iter().map(NodeId).collect();
            for i in 0..50 {
                let labels =
                    Labels::from_pairs([("__name__", "x".to_string()), ("i", i.to_string())]);
                // Three owners of four nodes: with two alive, one of them owns it.
                let evaluators = alive
                    .iter()
                    .filter(|&&me| evaluates(&ring, &alive, &[], me, &labels));
                assert_eq!(evaluators.count(), 1, "{labels}");
                // Without one node: its series by exactly one other, the rest by nobody.
                let gone = alive[0];
                let second: Vec<NodeId> = alive
                    .iter()
                    .copied()
                    .filter(|&me| evaluates(&ring, &alive, &[gone], me, &labels))
                    .collect();
                let others: Vec<NodeId> = alive.iter().copied().filter(|n| *n != gone).collect();
                let orphaned = evaluates(&ring, &alive, &[], gone, &labels)
                    && ring
                        .owners(labels.stable_hash())
                        .iter()
                        .any(|o| others.contains(o));
                assert_eq!(second.len(), usize::from(orphaned), "{labels}");
                assert!(!second.contains(&gone));
            }
        }
    }

    #[test]
    fn answers_survive_the_wire_and_garbage_is_refused() {
        let mut partials = Partials {
            groups: vec![Labels::from_pairs([("instance", "a")]), Labels::empty()],
            steps: vec![StepPartials {
                t: 60_000,
                held: 12,
                inner: 3,
                partials: vec![(
                    1,
                    PartialGroup {
                        value: 1.5,
                        compensation: 1e-17,
                        mean: f64::NAN,
                        count: 3.0,
                        incremental_mean: true,
                        drop_name: true,
                    },
                )],
            }],
            queryable_samples: 40,
            samples_read: 20,
            ..Partials::default()
        };
        partials
            .annotations
            .infos
            .insert("info".into(), vec![(0, 60_000)]);
        partials
            .annotations
            .warnings
            .insert("warn".into(), vec![(5, 5)]);
        let answer = ShareAnswer {
            partials,
            digests: vec![SeriesDigest::of(7, &[Sample::new(1, 2.0)])],
        };
        let back = decode_answer(&encode_answer(&answer)).expect("decodes");
        // NaN != NaN: compare the rest, then the NaN by its bits.
        let (mut a, mut b) = (answer.clone(), back);
        assert!(b.partials.steps[0].partials[0].1.mean.is_nan());
        a.partials.steps[0].partials[0].1.mean = 0.0;
        b.partials.steps[0].partials[0].1.mean = 0.0;
        assert_eq!(a, b);
        assert!(decode_answer(b"garbage").is_err());
        // A partial naming a group that is not there.
        let mut bad = answer;
        bad.partials.groups.clear();
        assert!(decode_answer(&encode_answer(&bad)).is_err());
    }
}
