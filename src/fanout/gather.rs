//! Gathering one read from every node without waiting for a node that does not answer
//! while other replicas can answer for it (ADR 0012).
//!
//! Owns: whom a read asks (every ring node alive or suspect in the view; the others
//! count as missing), how long it waits (everyone, until the answers in hand hold every
//! series; then stragglers get `peer_timeout` more and are left behind), cancelling the
//! request to a node gossip declares down while the read waits for it, refusing a read
//! once as many nodes are missing as a series has replicas (this node counts as one
//! when its own store fails: the replicas answer for it), and the fan-out's metrics
//! for all of this. Calls `cluster` (the membership view and its watch), `peer` (the
//! client, trace ids), the local hint store (this node's own pending hints) and
//! `notes` (what the answer says about itself).
//!
//! "The answers in hand hold every series": each series has `R = min(3, N)` owners, and
//! every node is asked, so while at most `R - 1` nodes are missing or still outstanding
//! every series has an owner among the nodes that answered (ADR 0007). Hedged or retried
//! requests to the other owners would repeat requests already in flight: the first
//! round asks every owner of every series. (A select's second round, ADR 0028, is no
//! hedge: it fetches the copies whose digests disagreed, from nodes that answered.)

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::notes::{self, Absence, Lag, Missing, ReadReport};
use super::FanoutStorage;
use crate::cluster::identity::NodeId;
use crate::cluster::membership::{ClusterView, MemberState};
use crate::cluster::placement::REPLICATION_FACTOR;
use crate::cluster::ring::RingNode;
use crate::peer::{self, PeerClient};
use crate::storage::StorageError;

/// How long fan-out waits for peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FanoutOptions {
    /// How long a node that has not answered is still waited for once the answers in
    /// hand hold every series (`--query-peer-timeout`).
    pub peer_timeout: Duration,
    /// Deadline of one internal request when its answer is needed: the query timeout
    /// (the engine stops the read at its own deadline anyway).
    pub request_timeout: Duration,
}

impl Default for FanoutOptions {
    fn default() -> Self {
        FanoutOptions {
            peer_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// A peer's answer and the hinted batches it holds for other nodes.
pub(super) struct PeerAnswer<T> {
    pub value: T,
    pub hints_pending: Vec<(NodeId, u64)>,
}

/// A peer asked for its share of a read.
struct Asked {
    id: NodeId,
    addr: String,
}

impl Asked {
    fn missing(&self, why: Absence) -> Missing {
        Missing {
            id: self.id,
            addr: self.addr.clone(),
            why,
        }
    }
}

type Outcome<T> = (usize, Result<PeerAnswer<T>, String>);

/// The requests of one read still in flight, by index into the asked peers. Dropping it
/// (the read ended: answered, refused, timed out or its client went away) aborts every
/// request still running and counts them.
struct InFlight<T: Send + 'static> {
    tasks: JoinSet<Outcome<T>>,
    /// `None` once the peer's request has been resolved or cancelled.
    handles: Vec<Option<AbortHandle>>,
    cancelled_when_read_ended: Counter,
}

impl<T: Send + 'static> InFlight<T> {
    fn spawn(&mut self, fut: impl Future<Output = Result<PeerAnswer<T>, String>> + Send + 'static) {
        let index = self.handles.len();
        let handle = self.tasks.spawn(async move { (index, fut.await) });
        self.handles.push(Some(handle));
    }

    fn outstanding(&self) -> impl Iterator<Item = usize> + '_ {
        self.handles
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|_| i))
    }

    fn outstanding_count(&self) -> usize {
        self.handles.iter().filter(|h| h.is_some()).count()
    }

    fn cancel(&mut self, index: usize) {
        if let Some(handle) = self.handles[index].take() {
            handle.abort();
        }
    }

    /// The next outstanding peer's outcome; `None` when none is outstanding. A task
    /// that panicked is that peer's failure.
    async fn next(&mut self) -> Option<Outcome<T>> {
        loop {
            match self.tasks.join_next().await? {
                Ok((index, outcome)) => {
                    if self.handles[index].take().is_some() {
                        return Some((index, outcome));
                    }
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => {
                    let found = self
                        .handles
                        .iter()
                        .position(|h| h.as_ref().is_some_and(|h| h.id() == e.id()));
                    if let Some(index) = found {
                        self.handles[index] = None;
                        return Some((index, Err(format!("read task failed: {e}"))));
                    }
                }
            }
        }
    }
}

impl<T: Send + 'static> Drop for InFlight<T> {
    fn drop(&mut self) {
        let left = self.outstanding_count() as u64;
        if left > 0 {
            self.cancelled_when_read_ended.inc_by(left);
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The peers a read asks in `view`: every ring node but this one that is alive or
/// suspect, in join order.
pub(super) fn asked(view: &ClusterView) -> impl Iterator<Item = &RingNode> + '_ {
    view.ring
        .nodes_in_join_order()
        .iter()
        .filter(|n| n.id != view.local.id && !is_down(view, n.id))
}

pub(super) fn is_down(view: &ClusterView, id: NodeId) -> bool {
    !matches!(
        view.member(id).map(|m| m.state),
        Some(MemberState::Alive | MemberState::Suspect)
    )
}

fn http_addr_of(view: &ClusterView, id: NodeId) -> Option<String> {
    view.ring
        .nodes_in_join_order()
        .iter()
        .find(|n| n.id == id)
        .map(|n| n.http_addr.clone())
}

/// Records `holder`'s pending hints; targets no longer in the ring are never replayed
/// (ADR 0006) and own nothing, so they are left out.
fn record_lags(
    report: &mut ReadReport,
    view: &ClusterView,
    holder_addr: &str,
    pending: Vec<(NodeId, u64)>,
) {
    for (target, batches) in pending {
        if let Some(target_addr) = http_addr_of(view, target) {
            report.lags.push(Lag {
                target,
                target_addr,
                holder_addr: holder_addr.to_string(),
                batches,
            });
        }
    }
}

impl FanoutStorage {
    /// Runs `local` here and `remote` on every peer alive in `view` (the caller's
    /// snapshot, so what it told the peers matches whom it asks) concurrently and
    /// returns the
    /// answers, each with the node that gave it, once they hold every series (see the
    /// module comment), leaving the read's notes in the enclosing collector; or a
    /// storage error (`Unavailable`) once as many nodes are missing as a series has
    /// replicas.
    pub(super) async fn gather<T, L, R, RF>(
        &self,
        view: Arc<ClusterView>,
        local: L,
        remote: R,
    ) -> Result<Vec<(NodeId, T)>, StorageError>
    where
        T: Send + 'static,
        L: Future<Output = Result<T, StorageError>>,
        R: Fn(PeerClient, String, Duration) -> RF,
        RF: Future<Output = Result<PeerAnswer<T>, String>> + Send + 'static,
    {
        let inner = &self.inner;
        let metrics = &inner.metrics;
        let opts = inner.options;
        let mut views = inner.membership.subscribe();
        views.borrow_and_update();
        let local_id = view.local.id;
        let mut report = ReadReport::new(REPLICATION_FACTOR.min(view.ring.len().max(1)));
        for node in view.ring.nodes_in_join_order() {
            if node.id != local_id && is_down(&view, node.id) {
                report.missing.push(Missing {
                    id: node.id,
                    addr: node.http_addr.clone(),
                    why: Absence::Down,
                });
            }
        }
        let asked: Vec<Asked> = asked(&view)
            .map(|node| Asked {
                id: node.id,
                addr: node.http_addr.clone(),
            })
            .collect();
        record_lags(
            &mut report,
            &view,
            &view.local.http_addr,
            inner.hints.pending_batches(),
        );
        if report.refused() {
            return Err(self.refuse(&report, None));
        }

        let mut flight = InFlight {
            tasks: JoinSet::new(),
            handles: Vec::with_capacity(asked.len()),
            cancelled_when_read_ended: metrics.cancelled_read_ended.clone(),
        };
        let trace_id = peer::current_trace_id();
        for peer in &asked {
            let ask = remote(
                inner.client.clone(),
                peer.addr.clone(),
                opts.request_timeout,
            );
            flight.spawn(peer::with_trace_id(trace_id.clone(), ask));
        }
        // This node's own store failing is one missing node like any other: the
        // replicas answer for it while enough of them do (ADR 0023).
        let mut answers = Vec::with_capacity(asked.len() + 1);
        let mut local_failure = None;
        match local.await {
            Ok(value) => answers.push((local_id, value)),
            Err(error) => {
                tracing::warn!(%error, "fan-out: this node's own store failed; answering from the other replicas");
                report.missing.push(Missing {
                    id: local_id,
                    addr: view.local.http_addr.clone(),
                    why: Absence::LocalStoreFailed(error.to_string()),
                });
                local_failure = Some(error);
            }
        }
        if report.refused() {
            return Err(self.refuse(&report, local_failure));
        }
        // When the answers in hand first held every series; stragglers are waited for
        // `peer_timeout` from then.
        let mut complete_since: Option<Instant> = None;
        let mut watching = true;
        loop {
            if flight.outstanding_count() == 0 {
                break;
            }
            let unanswered = report.missing.len() + flight.outstanding_count();
            if unanswered < report.replicas {
                let since = *complete_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= opts.peer_timeout {
                    let stragglers: Vec<usize> = flight.outstanding().collect();
                    for index in stragglers {
                        flight.cancel(index);
                        metrics.peer_timeouts.inc();
                        report
                            .missing
                            .push(asked[index].missing(Absence::NoAnswer(opts.peer_timeout)));
                    }
                    break;
                }
            }
            let straggler_deadline = complete_since.map(|since| since + opts.peer_timeout);
            tokio::select! {
                outcome = flight.next() => match outcome {
                    Some((index, Ok(answer))) => {
                        answers.push((asked[index].id, answer.value));
                        let latest = views.borrow().clone();
                        record_lags(&mut report, &latest, &asked[index].addr, answer.hints_pending);
                    }
                    Some((index, Err(error))) => {
                        tracing::warn!(peer = %asked[index].addr, %error, "fan-out: a node failed to answer");
                        report.missing.push(asked[index].missing(Absence::Failed(error)));
                    }
                    None => break,
                },
                () = sleep_until_some(straggler_deadline) => {}
                changed = views.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                        continue;
                    }
                    let latest = views.borrow_and_update().clone();
                    let declared_down: Vec<usize> = flight
                        .outstanding()
                        .filter(|&index| is_down(&latest, asked[index].id))
                        .collect();
                    for index in declared_down {
                        flight.cancel(index);
                        metrics.cancelled_member_down.inc();
                        report.missing.push(asked[index].missing(Absence::DeclaredDown));
                    }
                }
            }
            if report.refused() {
                return Err(self.refuse(&report, local_failure));
            }
        }

        let mut notes = report.notes();
        notes.nodes_asked = std::iter::once(view.local.http_addr.clone())
            .chain(asked.iter().map(|peer| peer.addr.clone()))
            .collect();
        if notes.warnings.is_empty() {
            metrics.count("complete");
        } else {
            metrics.count("degraded");
            tracing::warn!(warnings = ?notes.warnings, "fan-out answered with warnings");
        }
        notes::record(notes);
        Ok(answers)
    }

    /// The error of a refused read: `Unavailable`, naming the missing nodes; or, when
    /// this node's own store failed and the peers alone would not have been too few
    /// (a one-node cluster), that store's own error, which says more.
    fn refuse(&self, report: &ReadReport, local_failure: Option<StorageError>) -> StorageError {
        self.inner.metrics.count("failed");
        if let Some(error) = local_failure.filter(|_| report.missing.len() - 1 < report.replicas) {
            tracing::warn!(%error, "fan-out failed: this node's own store failed");
            return error;
        }
        let why = report.refusal();
        tracing::warn!(%why, "fan-out refused a read");
        StorageError::Unavailable(why)
    }
}
