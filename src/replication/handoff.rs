//! Hint replay: delivers queued hints to their owners once gossip shows them alive, and
//! re-routes the hints of a node removed from the ring to the series' new owners.
//!
//! Owns: the background task that, on every membership change and at least once a
//! second, sends each alive owner its hints oldest first over the internal write, and
//! deletes a hint once the owner acknowledged it; a failed delivery stops that owner's
//! replay until the next round; a hint the owner refuses (4xx) or that fails its
//! checksum is dropped and counted. A hint names the owner by the coordinator's ring at
//! the write; when this node's current ring no longer makes the target an owner of a
//! hinted series, that series goes to its current owners instead (`replay_plan`, pure):
//! delivered to a node that no longer owns it, nothing would ever compare it or move it
//! on (re-replication sends only what an old owner holds at its pass, anti-entropy
//! compares only what both sides own). When an alive owner's queue is empty its episode
//! ends (`HintStore::end_episode_if_drained`: the window/cap warning's recovery); each
//! round also refreshes the `timbala_hints_*` series of every peer. A
//! target the ring shows removed (a tombstone, ADR 0015) never comes back: each of its
//! hints is decoded, each series (float or native histogram) routed by the current ring
//! to the owners that took the removed node's replica (`reroute_plan`, pure), delivered (locally when this node is
//! one), and the hint deleted once all of them acknowledged (ADR 0017); a hint's
//! metadata and exemplars are not re-routed. Calls `hints`, `peer`, `ingest` (decoding),
//! `proto` (the re-split bodies), the local `storage::Storage` and the membership view.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::identity::NodeId;
use crate::cluster::membership::{ClusterView, MemberState, MembershipHandle};
use crate::cluster::placement;
use crate::cluster::ring::{Ring, RingSlot};
use crate::ingest::{self, DecodeLimits};
use crate::model::{HistogramSeries, Labels, Series};
use crate::peer::PeerClient;
use crate::proto;
use crate::storage::Storage;

use super::hints::{now_ms, read_hint, HintStore, Removal};

const REPLAY_INTERVAL: Duration = Duration::from_secs(1);

/// What the task works with.
pub struct Handoff {
    pub hints: Arc<HintStore>,
    pub membership: MembershipHandle,
    pub client: PeerClient,
    /// This node's own TSDB: where re-routed series go when this node is a new owner.
    pub local: Arc<dyn Storage>,
}

impl Handoff {
    /// Starts the replay task; it ends when membership stops publishing views.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut views = self.membership.subscribe();
            loop {
                self.round().await;
                tokio::select! {
                    changed = views.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(REPLAY_INTERVAL) => {}
                }
            }
        })
    }

    async fn round(&self) {
        let view = self.membership.view();
        let Ok(targets) = self.hints.targets() else {
            return;
        };
        for target in targets {
            if view.ring.removed().contains(&target) {
                self.reroute_target(&view, target).await;
                continue;
            }
            let alive = view
                .member(target)
                .is_some_and(|m| m.state == MemberState::Alive);
            let addr = view.ring.node(target).map(|n| n.http_addr.clone());
            if let (true, Some(addr)) = (alive, addr) {
                if self.replay_target(&view, target, &addr).await {
                    self.hints.end_episode_if_drained(target);
                }
            }
        }
        let peers: Vec<NodeId> = view
            .ring
            .nodes_in_join_order()
            .iter()
            .map(|n| n.id)
            .filter(|&id| id != view.local.id)
            .collect();
        self.hints.refresh_gauges(now_ms(), &peers);
    }

    /// Replays a target's hints oldest first; true when every listed hint left the queue.
    async fn replay_target(&self, view: &ClusterView, target: NodeId, addr: &str) -> bool {
        let Some(files) = self.pending(target) else {
            return false;
        };
        for (i, file) in files.iter().enumerate() {
            let next = files.get(i + 1).cloned();
            let body = match read_hint(file) {
                Ok(body) => body,
                Err(e) => {
                    tracing::error!(target_node = %target, peer = %addr, error = %e, "dropping a corrupt hint");
                    self.remove(target, file, next, Removal::Dropped).await;
                    continue;
                }
            };
            // Decoded only to route: a hint whose series the target still owns (nearly
            // every one) is forwarded as it was written.
            let delivered = match decode_hint_body(&body)
                .map(|share| share.plan(|items| replay_plan(items, &view.ring, target)))
            {
                Ok(plan) if plan.keys().any(|&owner| owner != target) => {
                    self.deliver_plan(view, plan).await
                }
                _ => super::forward(&self.client, addr, body, 0)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            match delivered {
                Ok(()) => self.remove(target, file, next, Removal::Delivered).await,
                Err(e) => {
                    tracing::debug!(target_node = %target, peer = %addr, error = %e, "hint delivery failed; retrying later");
                    self.hints.metrics().on_failed_attempt(target);
                    return false;
                }
            }
        }
        if !files.is_empty() {
            tracing::info!(
                target_node = %target, peer = %addr, hints = files.len(),
                "hinted handoff: every queued hint delivered"
            );
        }
        true
    }

    /// Delivers a removed target's hints to the series' new owners, oldest first; a hint
    /// is deleted once every new owner of its series acknowledged. A failure stops until
    /// the next round (redelivery is a duplicate the owners ignore).
    async fn reroute_target(&self, view: &ClusterView, target: NodeId) {
        let Some(files) = self.pending(target) else {
            return;
        };
        for (i, file) in files.iter().enumerate() {
            let next = files.get(i + 1).cloned();
            let share = match read_hint(file).and_then(|body| decode_hint_body(&body)) {
                Ok(share) => share,
                Err(e) => {
                    tracing::error!(target_node = %target, error = %e, "dropping a corrupt hint of a removed node");
                    self.remove(target, file, next, Removal::Dropped).await;
                    continue;
                }
            };
            let count = (share.series.len() + share.histograms.len()) as u64;
            let plan = share.plan(|items| reroute_plan(items, &view.ring, target));
            if let Err(e) = self.deliver_plan(view, plan).await {
                tracing::debug!(target_node = %target, error = %e, "re-routing a hint failed; retrying later");
                self.hints.metrics().on_failed_attempt(target);
                return;
            }
            self.remove(target, file, next, Removal::Rerouted { series: count })
                .await;
        }
        if self.pending(target).is_some_and(|left| left.is_empty()) {
            tracing::info!(target_node = %target, "hints of a removed node re-routed to the new owners");
            self.hints.forget_if_drained(target);
        }
    }

    async fn deliver_plan(
        &self,
        view: &ClusterView,
        plan: BTreeMap<NodeId, HintShare>,
    ) -> Result<(), String> {
        for (owner, share) in plan {
            if owner == view.local.id {
                if !share.series.is_empty() {
                    self.local
                        .append(share.series)
                        .await
                        .map_err(|e| format!("local append: {e}"))?;
                }
                if !share.histograms.is_empty() {
                    self.local
                        .append_histograms(share.histograms)
                        .await
                        .map_err(|e| format!("local append of histograms: {e}"))?;
                }
                continue;
            }
            let addr = view
                .ring
                .node(owner)
                .map(|n| n.http_addr.clone())
                .ok_or_else(|| format!("owner {owner} left the ring"))?;
            if view
                .member(owner)
                .is_some_and(|m| m.state == MemberState::Down)
            {
                return Err(format!("owner {owner} is down"));
            }
            let samples = share.samples();
            super::forward(&self.client, &addr, share.encode(), samples)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn pending(&self, target: NodeId) -> Option<Vec<PathBuf>> {
        match self.hints.pending(target) {
            Ok(files) => Some(files),
            Err(e) => {
                tracing::warn!(target_node = %target, error = %e, "cannot list hints");
                None
            }
        }
    }

    async fn remove(&self, target: NodeId, file: &Path, next: Option<PathBuf>, why: Removal) {
        let hints = self.hints.clone();
        let file = file.to_path_buf();
        let removed = tokio::task::spawn_blocking(move || {
            hints
                .remove(target, &file, next.as_deref(), why)
                .map_err(|e| format!("{}: {e}", file.display()))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        if let Err(e) = removed {
            tracing::warn!(target_node = %target, error = %e, "cannot remove a hint");
        }
    }
}

/// What a hint carries that is routed series by series: float series and native
/// histogram series (the other owners' share of a write). Metadata and exemplars in a
/// hint reach an owner only by replay of the hint as written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HintShare {
    pub series: Vec<Series>,
    pub histograms: Vec<HistogramSeries>,
}

impl HintShare {
    /// Routes the float series and the histogram series alike by `plan` (`replay_plan`
    /// or `reroute_plan`), grouped by owner.
    fn plan(
        self,
        plan: impl Fn(Vec<Routed>) -> BTreeMap<NodeId, Vec<Routed>>,
    ) -> BTreeMap<NodeId, HintShare> {
        let items = (self.series.into_iter().map(Routed::Floats))
            .chain(self.histograms.into_iter().map(Routed::Histograms))
            .collect();
        let mut shares: BTreeMap<NodeId, HintShare> = BTreeMap::new();
        for (owner, items) in plan(items) {
            let share = shares.entry(owner).or_default();
            for item in items {
                match item {
                    Routed::Floats(s) => share.series.push(s),
                    Routed::Histograms(h) => share.histograms.push(h),
                }
            }
        }
        shares
    }

    fn samples(&self) -> u64 {
        let floats: usize = self.series.iter().map(|s| s.samples.len()).sum();
        let histograms: usize = self.histograms.iter().map(|s| s.samples.len()).sum();
        (floats + histograms) as u64
    }

    /// The internal-write body that stores this share.
    fn encode(&self) -> Vec<u8> {
        let mut raw = Vec::new();
        proto::write_body::encode_series(&self.series, &mut raw);
        proto::write_body::encode_histograms(&self.histograms, &mut raw);
        proto::compress_snappy(&raw)
    }
}

/// One series of a hint as the plans route it: placement is by labels alone, whatever
/// the samples are.
#[derive(Clone, Debug, PartialEq)]
pub enum Routed {
    Floats(Series),
    Histograms(HistogramSeries),
}

/// The series of a hint's payload (an internal-write body).
fn decode_hint_body(body: &[u8]) -> Result<HintShare, String> {
    ingest::decode_internal_write_request(body, &DecodeLimits::for_body_limit(body.len()))
        .map(|decoded| HintShare {
            series: decoded.series,
            histograms: decoded.histograms,
        })
        .map_err(|e| e.to_string())
}

/// What the plans route: anything placed by its labels.
pub trait RoutedSeries: Clone {
    fn labels(&self) -> &Labels;
}

impl RoutedSeries for Series {
    fn labels(&self) -> &Labels {
        &self.labels
    }
}

impl RoutedSeries for Routed {
    fn labels(&self) -> &Labels {
        match self {
            Routed::Floats(s) => &s.labels,
            Routed::Histograms(h) => &h.labels,
        }
    }
}

/// Where the series of a hint for `removed` go now: to the owners each series gained
/// when `removed` became a tombstone (its owners under `current` that it did not have
/// with `removed` still live), grouped by owner. A series `removed` did not own under
/// that ring (the hint predates a later placement change) goes to all its current
/// owners: a copy too many is a duplicate they ignore, a copy too few a lost sample.
pub fn reroute_plan<S: RoutedSeries>(
    series: Vec<S>,
    current: &Ring,
    removed: NodeId,
) -> BTreeMap<NodeId, Vec<S>> {
    let before = ring_with_live(current, removed);
    let mut plan: BTreeMap<NodeId, Vec<S>> = BTreeMap::new();
    for s in series {
        let key = placement::partition_key(s.labels());
        let now = current.owners(key);
        let old = before.owners(key);
        let gained: Vec<NodeId> = if old.contains(&removed) {
            now.iter().copied().filter(|o| !old.contains(o)).collect()
        } else {
            now
        };
        for owner in gained {
            plan.entry(owner).or_default().push(s.clone());
        }
    }
    plan
}

/// Where the series of a hint for `target` (alive, in the ring) go: to `target` when
/// `current` still makes it an owner, otherwise to every current owner of the series (a
/// copy too many is a duplicate they ignore).
pub fn replay_plan<S: RoutedSeries>(
    series: Vec<S>,
    current: &Ring,
    target: NodeId,
) -> BTreeMap<NodeId, Vec<S>> {
    let mut plan: BTreeMap<NodeId, Vec<S>> = BTreeMap::new();
    for s in series {
        let owners = current.owners(placement::partition_key(s.labels()));
        if owners.contains(&target) {
            plan.entry(target).or_default().push(s);
            continue;
        }
        for owner in owners {
            plan.entry(owner).or_default().push(s.clone());
        }
    }
    plan
}

/// `ring` with `node`'s tombstone lifted: placement as it was before its removal.
fn ring_with_live(ring: &Ring, node: NodeId) -> Ring {
    Ring::from_slots(
        ring.slots()
            .iter()
            .map(|s| RingSlot {
                node: s.node.clone(),
                removed: s.removed && s.node.id != node,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::identity::NodeIdentity;
    use crate::cluster::ring::{RingEntry, RingState};
    use crate::model::{Labels, Sample};

    fn state_of(n: u128) -> RingState {
        (1..=n)
            .map(|i| {
                RingEntry::from_identity(&NodeIdentity {
                    id: NodeId(i),
                    generation: 1,
                    join_seq: Some(i as u64),
                    gossip_addr: format!("127.0.0.1:{}", 7000 + i).parse().expect("addr"),
                    http_addr: format!("127.0.0.1:{}", 9000 + i),
                })
                .expect("placed")
            })
            .collect::<Vec<_>>()
            .into()
    }

    fn series(n: usize) -> Vec<Series> {
        (0..n)
            .map(|i| Series {
                labels: Labels::from_pairs([("__name__", "m".to_string()), ("i", i.to_string())]),
                samples: vec![Sample::new(i as i64, 1.0)],
            })
            .collect()
    }

    /// A hint for a live node goes to it for the series it still owns, and to the
    /// current owners (never to it) for the series a join took from it since the write.
    #[test]
    fn a_hint_for_an_owner_that_lost_the_series_goes_to_the_current_owners() {
        for n in 3..=6u128 {
            let before = state_of(n).ring();
            let after = state_of(n + 1).ring();
            for target in (1..=n).map(NodeId) {
                let hinted: Vec<Series> = series(500)
                    .into_iter()
                    .filter(|s| {
                        before
                            .owners(placement::partition_key(&s.labels))
                            .contains(&target)
                    })
                    .collect();
                let plan = replay_plan(hinted.clone(), &after, target);
                let mut moved = 0;
                for s in &hinted {
                    let now = after.owners(placement::partition_key(&s.labels));
                    let to: Vec<NodeId> = plan
                        .iter()
                        .filter(|(_, v)| v.contains(s))
                        .map(|(&o, _)| o)
                        .collect();
                    if now.contains(&target) {
                        assert_eq!(to, vec![target]);
                    } else {
                        moved += 1;
                        let mut want = now.clone();
                        want.sort();
                        assert_eq!(to, want);
                    }
                }
                // A join moves some of a node's series away, never all of them.
                assert!(
                    moved > 0 && moved < hinted.len(),
                    "{n} nodes, target {target}"
                );
            }
        }
    }

    /// Each series of a removed node's hint goes to exactly the one survivor that took
    /// its replica, never to an owner that already had it, never to the removed node.
    #[test]
    fn hints_of_a_removed_node_go_to_the_owner_that_took_its_replica() {
        for n in 4..=6u128 {
            for victim in 1..=n {
                let before = state_of(n).ring();
                let mut s = state_of(n);
                s.remove(NodeId(victim));
                let after = s.ring();
                // The hint holds what the victim owned (what a coordinator hinted for it).
                let hinted: Vec<Series> = series(2000)
                    .into_iter()
                    .filter(|s| {
                        before
                            .owners(placement::partition_key(&s.labels))
                            .contains(&NodeId(victim))
                    })
                    .collect();
                let plan = reroute_plan(hinted.clone(), &after, NodeId(victim));
                assert!(!plan.contains_key(&NodeId(victim)));
                let routed: usize = plan.values().map(Vec::len).sum();
                assert_eq!(routed, hinted.len(), "{n} nodes, {victim} removed");
                for (owner, list) in &plan {
                    for s in list {
                        let key = placement::partition_key(&s.labels);
                        assert!(after.owners(key).contains(owner));
                        assert!(!before.owners(key).contains(owner));
                    }
                }
            }
        }
    }

    #[test]
    fn a_series_the_removed_node_did_not_own_goes_to_every_current_owner() {
        let mut s = state_of(5);
        s.remove(NodeId(5));
        let after = s.ring();
        let before = state_of(5).ring();
        let stray: Vec<Series> = series(500)
            .into_iter()
            .filter(|s| {
                !before
                    .owners(placement::partition_key(&s.labels))
                    .contains(&NodeId(5))
            })
            .take(10)
            .collect();
        assert_eq!(stray.len(), 10);
        let plan = reroute_plan(stray, &after, NodeId(5));
        assert_eq!(plan.values().map(Vec::len).sum::<usize>(), 30);
    }

    #[test]
    fn lifting_a_tombstone_restores_the_old_placement() {
        let mut s = state_of(4);
        s.remove(NodeId(2));
        let restored = ring_with_live(&s.ring(), NodeId(2));
        assert!(restored.same_placement(&state_of(4).ring()));
    }

    /// Histogram series with the labels of `series(n)`.
    fn histogram_series(n: usize) -> Vec<HistogramSeries> {
        use crate::fanout::histograms::{test_float_histogram, test_int_histogram};
        series(n)
            .into_iter()
            .enumerate()
            .map(|(i, s)| HistogramSeries {
                labels: s.labels,
                samples: vec![
                    test_int_histogram(i as i64, 3),
                    test_float_histogram(i as i64 + 1, 4.5),
                ],
            })
            .collect()
    }

    #[test]
    fn hint_bodies_decode_back_to_their_series() {
        let original = series(3);
        let body = super::super::encode_series(&original);
        let decoded = decode_hint_body(&body).expect("decode");
        assert_eq!(decoded.series, original);
        assert!(decoded.histograms.is_empty());
        assert!(decode_hint_body(b"not snappy").is_err());
        // A hint of a histogram write (as `replicate_histograms` hints it), and a
        // re-split share of both kinds, decode back to what they carry.
        let histograms = histogram_series(3);
        let mut raw = Vec::new();
        proto::write_body::encode_histograms(&histograms, &mut raw);
        let decoded = decode_hint_body(&proto::compress_snappy(&raw)).expect("decode");
        assert_eq!(decoded.histograms, histograms);
        assert!(decoded.series.is_empty());
        let both = HintShare {
            series: original,
            histograms,
        };
        assert_eq!(decode_hint_body(&both.encode()).expect("decode"), both);
        assert_eq!(both.samples(), 3 + 3 * 2);
    }

    /// The histograms of a removed node's hint go where its float series go: to the
    /// owner that took its replica, each once.
    #[test]
    fn histograms_in_a_removed_nodes_hints_are_rerouted_too() {
        let before = state_of(5).ring();
        let mut s = state_of(5);
        s.remove(NodeId(2));
        let after = s.ring();
        let owned = |labels: &Labels| {
            before
                .owners(placement::partition_key(labels))
                .contains(&NodeId(2))
        };
        let floats: Vec<Series> = series(300)
            .into_iter()
            .filter(|s| owned(&s.labels))
            .collect();
        let histograms: Vec<HistogramSeries> = histogram_series(300)
            .into_iter()
            .filter(|s| owned(&s.labels))
            .collect();
        assert!(!histograms.is_empty());
        let share = HintShare {
            series: floats.clone(),
            histograms: histograms.clone(),
        };
        let plan = share.plan(|items| reroute_plan(items, &after, NodeId(2)));
        let float_plan = reroute_plan(floats, &after, NodeId(2));
        assert!(!plan.contains_key(&NodeId(2)));
        let mut routed = 0;
        for (owner, share) in &plan {
            let float_labels: Vec<&Labels> = float_plan[owner].iter().map(|s| &s.labels).collect();
            let histogram_labels: Vec<&Labels> =
                share.histograms.iter().map(|s| &s.labels).collect();
            assert_eq!(histogram_labels, float_labels, "owner {owner}");
            for h in &share.histograms {
                assert!(histograms.contains(h));
            }
            routed += share.histograms.len();
        }
        assert_eq!(routed, histograms.len());
    }

    /// A replayed hint whose target lost some series sends their histograms to the
    /// current owners as well, never dropping them.
    #[test]
    fn histograms_of_a_replayed_hint_follow_their_series() {
        let before = state_of(4).ring();
        let after = state_of(5).ring();
        let target = NodeId(1);
        let histograms: Vec<HistogramSeries> = histogram_series(300)
            .into_iter()
            .filter(|s| {
                before
                    .owners(placement::partition_key(&s.labels))
                    .contains(&target)
            })
            .collect();
        let share = HintShare {
            series: Vec::new(),
            histograms: histograms.clone(),
        };
        let plan = share.plan(|items| replay_plan(items, &after, target));
        for h in &histograms {
            let now = after.owners(placement::partition_key(&h.labels));
            let to: Vec<NodeId> = plan
                .iter()
                .filter(|(_, share)| share.histograms.contains(h))
                .map(|(&o, _)| o)
                .collect();
            if now.contains(&target) {
                assert_eq!(to, vec![target]);
            } else {
                let mut want = now;
                want.sort();
                assert_eq!(to, want);
            }
        }
        assert!(plan.keys().any(|&o| o != target), "some series moved");
    }
}
