//! Re-replication: after the ring changed (a node removed, a node joined), copies every
//! series this node is responsible for (float samples and native histograms) to the
//! owners it gained (ADR 0015).
//!
//! Owns: the background task that compares the ring this node last finished repairing
//! for (the *base*, kept in `<data>/repair.json`) with the current ring; for each local
//! series whose owner set changed it sends the series, read whole from blocks and head,
//! to every new owner over the internal repair write (`/internal/v1/backfill`, which also
//! stores samples too old for the receiver's head, ADR 0016), when this node is the series' *sender*:
//! an old owner that loses the series and is still in the ring and alive (it may hold
//! samples the other owners lack; the gained owners are dealt among such losers), or
//! else the first of the old owners, in replica order, that is still in the ring and
//! alive in this node's view (so each copy is sent once, not three times). It throttles to the
//! configured bytes per second, retries a failed target with backoff, starts over when
//! the ring changes again, and only then moves the base forward (so a restart mid-way
//! re-sends: samples are idempotent, the copy is a union). Metric metadata follows its
//! family name's owners the same way (ADR 0020). It never deletes: a node
//! keeps series it no longer owns. Also owns the repair progress (`RepairProgress`, read
//! by the cluster status endpoint) and the `timbala_repair_*` metrics.
//!
//! Calls the membership view and ring (placement), `peer` through `replication::forward`,
//! `proto` (the bodies of copied histograms),
//! the local TSDB through `storage::Storage`, and `identity::write_atomically`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::cluster::identity::{write_atomically, NodeId};
use crate::cluster::membership::{ClusterView, MemberState, MembershipHandle};
use crate::cluster::placement;
use crate::cluster::ring::{Ring, RingSlot};
use crate::model::{HistogramSeries, Labels, Matcher, MetricMetadata, Series};
use crate::peer::PeerClient;
use crate::proto;
use crate::storage::{LabelRequest, SelectRequest, Storage};

/// File in the data directory holding the ring this node last finished repairing for.
pub const REPAIR_FILE: &str = "repair.json";

/// Series sent in one internal write.
const SERIES_PER_BATCH: usize = 200;
/// Samples sent in one internal write (a long series goes alone, in pieces).
const SAMPLES_PER_BATCH: usize = 200_000;
/// Native histogram samples sent in one internal write (each is tens of buckets).
const HISTOGRAMS_PER_BATCH: usize = 10_000;
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Settings of re-replication.
#[derive(Clone, Debug)]
pub struct RepairConfig {
    pub data_dir: PathBuf,
    /// Bytes per second sent to new owners (0: unthrottled).
    pub rate_limit_bytes: u64,
    /// Wait after the ring changed before reading, so every node routes new writes by
    /// the new ring before the copy is taken (gossip plus in-flight writes).
    pub grace: Duration,
}

/// Counters and gauges of re-replication; they exist (at 0) from start.
#[derive(Clone, Default)]
pub struct RepairMetrics {
    passes: Counter,
    series_planned: Counter,
    series_copied: Counter,
    copies_sent: Counter,
    bytes_sent: Counter,
    samples_rejected: Counter,
    failed_sends: Counter,
    series_pending: Gauge,
}

impl RepairMetrics {
    pub fn register(registry: &mut Registry) -> RepairMetrics {
        let m = RepairMetrics::default();
        let r = registry.sub_registry_with_prefix("timbala_repair");
        r.register(
            "passes",
            "Re-replication passes finished (the ring this node repairs for moved forward)",
            m.passes.clone(),
        );
        r.register(
            "series_planned",
            "Series this node found to send to new owners after ring changes",
            m.series_planned.clone(),
        );
        r.register(
            "series_copied",
            "Series this node finished sending to all their new owners",
            m.series_copied.clone(),
        );
        r.register(
            "copies_sent",
            "Series copies acknowledged by a new owner (one per series and new owner)",
            m.copies_sent.clone(),
        );
        r.register(
            "sent_bytes",
            "Bytes of internal writes sent to new owners",
            m.bytes_sent.clone(),
        );
        r.register(
            "samples_rejected",
            "Copied samples the new owner refused (too old or out of order for its head)",
            m.samples_rejected.clone(),
        );
        r.register(
            "failed_sends",
            "Internal writes to a new owner that failed and will be retried",
            m.failed_sends.clone(),
        );
        r.register(
            "series_pending",
            "Series of the current pass not yet sent",
            m.series_pending.clone(),
        );
        m
    }
}

/// The repair state of this node, as the cluster status shows it.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepairStatus {
    /// `idle`, `waiting` (grace after a ring change), `running`, or `retrying`.
    pub state: &'static str,
    pub series_total: u64,
    pub series_done: u64,
    pub series_to_go: u64,
    pub bytes_done: u64,
    /// Estimated from the bytes per series sent so far.
    pub bytes_to_go: u64,
    pub bytes_per_second: f64,
    pub estimated_seconds_left: Option<f64>,
    /// The last failure of the current pass, if any.
    pub last_error: Option<String>,
}

/// Shared progress of the running pass. Cheap to read.
#[derive(Default)]
pub struct RepairProgress {
    status: Mutex<RepairStatus>,
    started: Mutex<Option<Instant>>,
    /// The ring the last finished pass ran for; `None` before the task has one.
    base: Mutex<Option<Ring>>,
}

impl RepairProgress {
    /// A snapshot with rate and time left computed now. `idle` only when the last
    /// finished pass ran for a ring that places keys as `current` does; else `waiting`.
    pub fn status(&self, current: &Ring) -> RepairStatus {
        let mut s = lock(&self.status).clone();
        if s.state.is_empty() || s.state == "idle" {
            let caught_up = lock(&self.base)
                .as_ref()
                .is_some_and(|b| b.same_placement(current));
            s.state = if caught_up { "idle" } else { "waiting" };
        }
        s.series_to_go = s.series_total.saturating_sub(s.series_done);
        if let Some(per_series) = s.bytes_done.checked_div(s.series_done) {
            s.bytes_to_go = per_series * s.series_to_go;
        }
        if let Some(started) = *lock(&self.started) {
            let secs = started.elapsed().as_secs_f64();
            if secs > 0.0 && s.bytes_done > 0 {
                s.bytes_per_second = s.bytes_done as f64 / secs;
                s.estimated_seconds_left = Some(s.bytes_to_go as f64 / s.bytes_per_second);
            }
        }
        s
    }

    fn update(&self, f: impl FnOnce(&mut RepairStatus)) {
        f(&mut lock(&self.status));
    }

    fn begin(&self, series_total: u64) {
        *lock(&self.started) = Some(Instant::now());
        self.update(|s| {
            *s = RepairStatus {
                state: "running",
                series_total,
                ..RepairStatus::default()
            }
        });
    }

    fn set_base(&self, ring: &Ring) {
        *lock(&self.base) = Some(ring.clone());
    }

    fn finish(&self) {
        *lock(&self.started) = None;
        self.update(|s| {
            s.state = "idle";
            s.last_error = None;
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One series to send, and to whom.
#[derive(Debug, PartialEq, Eq)]
pub struct Transfer {
    pub labels: Labels,
    pub targets: Vec<NodeId>,
}

/// The new owners a series gained from `base` to `current` that this node must send it
/// to. The old owners that lose the series, are still in `current` and not down in
/// `view` (the *losers*) send it, the gained owners dealt among them in replica order:
/// a loser may hold samples no other owner has (a write routed to it by a ring that did
/// not name the others), and once it no longer owns the series nothing compares them;
/// sent to a new owner, anti-entropy spreads them over the owners (ADR 0015, ADR 0019).
/// When there is no loser (a removal: the loser is the removed node), the sender is the
/// first old owner (replica order) still in `current` and not down. Either way each
/// gained copy is sent once.
pub fn targets_for(
    partition_key: u64,
    base: &Ring,
    current: &Ring,
    view: &ClusterView,
    local: NodeId,
) -> Vec<NodeId> {
    let old = base.owners(partition_key);
    let new = current.owners(partition_key);
    let gained: Vec<NodeId> = new.iter().copied().filter(|o| !old.contains(o)).collect();
    if gained.is_empty() {
        return gained;
    }
    let can_send = |o: NodeId| {
        current.node(o).is_some()
            && (o == local || view.member(o).is_some_and(|m| m.state != MemberState::Down))
    };
    let losers: Vec<NodeId> = old
        .iter()
        .copied()
        .filter(|o| !new.contains(o) && can_send(*o))
        .collect();
    if !losers.is_empty() {
        let Some(mine) = losers.iter().position(|&o| o == local) else {
            return Vec::new();
        };
        return gained
            .into_iter()
            .enumerate()
            .filter(|(j, _)| j % losers.len() == mine)
            .map(|(_, o)| o)
            .collect();
    }
    let sender = old.iter().copied().find(|&o| can_send(o));
    if sender == Some(local) {
        gained
    } else {
        Vec::new()
    }
}

/// The metric metadata this node must send to each owner its family name gained from
/// `base` to `current` (placed by `placement::metadata_partition_key`).
pub fn metadata_transfers(
    known: Vec<MetricMetadata>,
    base: &Ring,
    current: &Ring,
    view: &ClusterView,
    local: NodeId,
) -> BTreeMap<NodeId, Vec<MetricMetadata>> {
    let mut by_target: BTreeMap<NodeId, Vec<MetricMetadata>> = BTreeMap::new();
    for m in known {
        let key = placement::metadata_partition_key(&m.metric_family);
        for node in targets_for(key, base, current, view, local) {
            by_target.entry(node).or_default().push(m.clone());
        }
    }
    by_target
}

/// The ring this node last finished repairing for; `None` when it never stored one.
pub fn load_base(data_dir: &Path) -> std::io::Result<Option<Ring>> {
    match std::fs::read(data_dir.join(REPAIR_FILE)) {
        Ok(bytes) => serde_json::from_slice::<Vec<RingSlot>>(&bytes)
            .map(|slots| Some(Ring::from_slots(slots)))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn save_base(data_dir: &Path, ring: &Ring) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(ring.slots()).map_err(std::io::Error::other)?;
    write_atomically(&data_dir.join(REPAIR_FILE), &bytes)
}

/// What the task works with.
pub struct Repairer {
    pub config: RepairConfig,
    pub local: Arc<dyn Storage>,
    pub membership: MembershipHandle,
    pub client: PeerClient,
    pub metrics: RepairMetrics,
    pub progress: Arc<RepairProgress>,
}

/// Why a pass stopped before its end.
enum Interrupted {
    /// The ring changed: start over against the newest ring.
    RingChanged,
    /// The membership runtime stopped: the node is shutting down.
    Stopped,
}

impl Repairer {
    /// Starts the task; it ends when membership stops publishing views.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run().await })
    }

    async fn run(self) {
        let mut views = self.membership.subscribe();
        // Wait for our own place: before it, the ring we see may be incomplete.
        if views
            .wait_for(|v| v.local.join_seq.is_some())
            .await
            .is_err()
        {
            return;
        }
        let mut base = match load_base(&self.config.data_dir) {
            Ok(Some(base)) => base,
            Ok(None) => {
                let ring = self.membership.ring();
                self.store_base(&ring);
                ring
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read {REPAIR_FILE}; re-replication is off");
                return;
            }
        };
        self.progress.set_base(&base);
        loop {
            if base.same_placement(&self.membership.ring()) {
                if views.changed().await.is_err() {
                    return;
                }
                continue;
            }
            self.progress.update(|s| s.state = "waiting");
            tokio::time::sleep(self.config.grace).await;
            let target = self.membership.ring();
            match self.pass(&base, &target, &mut views).await {
                Ok(()) => {
                    self.store_base(&target);
                    self.progress.set_base(&target);
                    base = target;
                    self.metrics.passes.inc();
                    self.progress.finish();
                }
                Err(Interrupted::RingChanged) => {
                    tracing::info!("ring changed during re-replication; starting over");
                }
                Err(Interrupted::Stopped) => return,
            }
        }
    }

    fn store_base(&self, ring: &Ring) {
        if let Err(e) = save_base(&self.config.data_dir, ring) {
            // The next start repeats the pass: harmless, only work.
            tracing::warn!(error = %e, "cannot store {REPAIR_FILE}");
        }
    }

    /// Sends every series whose new owners need it from this node, from `base` to
    /// `target`. Returns early when the ring moves on.
    async fn pass(
        &self,
        base: &Ring,
        target: &Ring,
        views: &mut tokio::sync::watch::Receiver<Arc<ClusterView>>,
    ) -> Result<(), Interrupted> {
        let plan = self.plan(base, target).await;
        let series_total = plan.len() as u64;
        let mut per_owner: BTreeMap<String, u64> = BTreeMap::new();
        for transfer in &plan {
            for owner in &transfer.targets {
                let name = target.node(*owner).map_or_else(
                    || owner.to_string(),
                    |n| format!("{owner} ({})", n.http_addr),
                );
                *per_owner.entry(name).or_default() += 1;
            }
        }
        tracing::info!(
            series = series_total,
            new_owners = ?per_owner,
            "re-replication: sending series to their new owners"
        );
        self.metrics.series_planned.inc_by(series_total);
        self.metrics.series_pending.set(series_total as i64);
        self.progress.begin(series_total);
        let throttle = Throttle::new(self.config.rate_limit_bytes);
        for chunk in plan.chunks(SERIES_PER_BATCH) {
            let mut by_target: BTreeMap<NodeId, Vec<Series>> = BTreeMap::new();
            let mut histograms_by_target: BTreeMap<NodeId, Vec<HistogramSeries>> = BTreeMap::new();
            for transfer in chunk {
                let series = self.read_series(&transfer.labels).await;
                let histograms = self.read_histograms(&transfer.labels).await;
                for t in &transfer.targets {
                    if let Some(s) = &series {
                        by_target.entry(*t).or_default().push(s.clone());
                    }
                    if let Some(h) = &histograms {
                        histograms_by_target.entry(*t).or_default().push(h.clone());
                    }
                }
            }
            for (node, series) in by_target {
                let copies = series.len() as u64;
                for piece in pieces(series, SAMPLES_PER_BATCH) {
                    self.send(node, &piece, target, views, &throttle).await?;
                }
                self.metrics.copies_sent.inc_by(copies);
            }
            for (node, histograms) in histograms_by_target {
                for piece in histogram_pieces(histograms, HISTOGRAMS_PER_BATCH) {
                    let samples = piece.iter().map(|s| s.samples.len() as u64).sum();
                    let mut raw = Vec::new();
                    proto::write_body::encode_histograms(&piece, &mut raw);
                    let body = proto::compress_snappy(&raw);
                    self.send_body(node, body, samples, target, views, &throttle)
                        .await?;
                }
            }
            let done = chunk.len() as u64;
            self.metrics.series_copied.inc_by(done);
            self.metrics.series_pending.dec_by(done as i64);
            self.progress.update(|s| s.series_done += done);
            if views.has_changed().unwrap_or(false) {
                let now = views.borrow_and_update().ring.clone();
                if !now.same_placement(target) {
                    self.metrics.series_pending.set(0);
                    return Err(Interrupted::RingChanged);
                }
            }
        }
        self.copy_metadata(base, target, views, &throttle).await
    }

    /// Sends each metric family's metadata to the owners its family name gained, by
    /// the series' sender rule (ADR 0020). Metadata is small: one write per target.
    async fn copy_metadata(
        &self,
        base: &Ring,
        target: &Ring,
        views: &mut tokio::sync::watch::Receiver<Arc<ClusterView>>,
        throttle: &Throttle,
    ) -> Result<(), Interrupted> {
        let known = match self.local.metadata(None).await {
            Ok(known) => known,
            Err(e) => {
                tracing::error!(error = %e, "re-replication cannot list local metadata");
                return Ok(());
            }
        };
        let view = self.membership.view();
        for (node, metadata) in metadata_transfers(known, base, target, &view, view.local.id) {
            let body = super::encode_write(&[], &metadata);
            self.send_body(node, body, 0, target, views, throttle)
                .await?;
        }
        Ok(())
    }

    /// The series this node holds whose owner set changed and which it must send.
    async fn plan(&self, base: &Ring, target: &Ring) -> Vec<Transfer> {
        let view = self.membership.view();
        let local = view.local.id;
        let all = LabelRequest {
            matchers: Vec::new(),
            mint: i64::MIN,
            maxt: i64::MAX,
        };
        let labels = match self.local.series(all).await {
            Ok(labels) => labels,
            Err(e) => {
                tracing::error!(error = %e, "re-replication cannot list local series");
                return Vec::new();
            }
        };
        labels
            .into_iter()
            .filter_map(|labels| {
                let key = placement::partition_key(&labels);
                let targets = targets_for(key, base, target, &view, local);
                (!targets.is_empty()).then_some(Transfer { labels, targets })
            })
            .collect()
    }

    /// Every sample of one series, from blocks and head; `None` if it vanished (deleted).
    async fn read_series(&self, labels: &Labels) -> Option<Series> {
        match self.local.select(whole_series(labels)).await {
            // Equality matchers also match series with more labels: keep the exact one.
            Ok(found) => found.into_iter().find(|s| &s.labels == labels),
            Err(e) => {
                tracing::warn!(error = %e, series = ?labels, "re-replication cannot read a series");
                None
            }
        }
    }

    /// Every native histogram sample of one series; `None` if it holds none.
    async fn read_histograms(&self, labels: &Labels) -> Option<HistogramSeries> {
        match self.local.select_histograms(whole_series(labels)).await {
            Ok(found) => found.into_iter().find(|s| &s.labels == labels),
            Err(e) => {
                tracing::warn!(error = %e, series = ?labels, "re-replication cannot read a series' histograms");
                None
            }
        }
    }

    /// Sends one batch to one new owner, retrying with backoff until it is stored or the
    /// ring moves on.
    async fn send(
        &self,
        node: NodeId,
        series: &[Series],
        target: &Ring,
        views: &mut tokio::sync::watch::Receiver<Arc<ClusterView>>,
        throttle: &Throttle,
    ) -> Result<(), Interrupted> {
        let body = super::encode_series(series);
        let samples: u64 = series.iter().map(|s| s.samples.len() as u64).sum();
        self.send_body(node, body, samples, target, views, throttle)
            .await
    }

    /// Sends one encoded internal write to one new owner, retrying with backoff until
    /// it is stored or the ring moves on.
    async fn send_body(
        &self,
        node: NodeId,
        body: Vec<u8>,
        samples: u64,
        target: &Ring,
        views: &mut tokio::sync::watch::Receiver<Arc<ClusterView>>,
        throttle: &Throttle,
    ) -> Result<(), Interrupted> {
        let mut backoff = RETRY_FIRST;
        loop {
            let Some(addr) = self
                .membership
                .ring()
                .node(node)
                .map(|n| n.http_addr.clone())
            else {
                return Err(Interrupted::RingChanged);
            };
            throttle.wait_for(body.len() as u64).await;
            // The repair write: samples older than the new owner's head are backfilled
            // as blocks instead of refused (ADR 0016).
            let sent = super::send_write(
                &self.client,
                &addr,
                crate::peer::BACKFILL_PATH,
                "backfill",
                body.clone(),
                samples,
            );
            match sent.await {
                Ok(outcome) => {
                    let bytes = body.len() as u64;
                    self.metrics.bytes_sent.inc_by(bytes);
                    self.metrics
                        .samples_rejected
                        .inc_by(outcome.rejected_total());
                    if let Some(first) = outcome.first_rejection {
                        tracing::warn!(target_node = %node, first = %first, "new owner refused copied samples");
                    }
                    self.progress.update(|s| {
                        s.bytes_done += bytes;
                        s.state = "running";
                    });
                    return Ok(());
                }
                Err(e) => {
                    self.metrics.failed_sends.inc();
                    tracing::warn!(target_node = %node, error = %e, "re-replication send failed; retrying");
                    self.progress.update(|s| {
                        s.state = "retrying";
                        s.last_error = Some(e.to_string());
                    });
                    tokio::select! {
                        changed = views.changed() => {
                            if changed.is_err() {
                                return Err(Interrupted::Stopped);
                            }
                            if !views.borrow_and_update().ring.same_placement(target) {
                                return Err(Interrupted::RingChanged);
                            }
                        }
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

/// A select of every sample of the series `labels` (and of those with more labels, which
/// the caller leaves out).
fn whole_series(labels: &Labels) -> SelectRequest {
    SelectRequest {
        matchers: labels
            .iter()
            .map(|l| Matcher::equal(&l.name, &l.value))
            .collect(),
        mint: i64::MIN,
        maxt: i64::MAX,
        max_samples: 0,
    }
}

/// Groups a target's histogram series into internal writes of about `max_samples`
/// histogram samples (a longer series goes alone, whole: histogram series are few).
fn histogram_pieces(series: Vec<HistogramSeries>, max_samples: usize) -> Vec<Vec<HistogramSeries>> {
    let mut out: Vec<Vec<HistogramSeries>> = Vec::new();
    let mut samples = 0usize;
    for s in series {
        if out.is_empty() || samples + s.samples.len() > max_samples {
            out.push(Vec::new());
            samples = 0;
        }
        samples += s.samples.len();
        out.last_mut().expect("just pushed").push(s);
    }
    out
}

/// Splits a target's series into internal writes of at most `max_samples` samples (a
/// series longer than the bound is split into several writes of its own). Also used by
/// read repair.
pub(super) fn pieces(series: Vec<Series>, max_samples: usize) -> Vec<Vec<Series>> {
    let mut out: Vec<Vec<Series>> = Vec::new();
    let mut current: Vec<Series> = Vec::new();
    let mut samples = 0usize;
    for s in series {
        for part in s.samples.chunks(max_samples.max(1)) {
            if samples + part.len() > max_samples && !current.is_empty() {
                out.push(std::mem::take(&mut current));
                samples = 0;
            }
            samples += part.len();
            current.push(Series {
                labels: s.labels.clone(),
                samples: part.to_vec(),
            });
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Paces sends to a byte rate: before sending n bytes, sleeps until the bytes sent so
/// far fit the rate since the start.
pub(crate) struct Throttle {
    bytes_per_second: u64,
    started: Instant,
    sent: AtomicU64,
}

impl Throttle {
    pub(crate) fn new(bytes_per_second: u64) -> Throttle {
        Throttle {
            bytes_per_second,
            started: Instant::now(),
            sent: AtomicU64::new(0),
        }
    }

    pub(crate) async fn wait_for(&self, bytes: u64) {
        if self.bytes_per_second == 0 {
            return;
        }
        let sent = self.sent.fetch_add(bytes, Ordering::Relaxed);
        let due = Duration::from_secs_f64(sent as f64 / self.bytes_per_second as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::identity::NodeIdentity;
    use crate::cluster::membership::Member;
    use crate::cluster::ring::{RingEntry, RingState};
    use crate::model::Sample;

    fn identity(i: u128) -> NodeIdentity {
        NodeIdentity {
            id: NodeId(i),
            generation: 1,
            join_seq: Some(i as u64),
            gossip_addr: format!("127.0.0.1:{}", 7000 + i).parse().expect("addr"),
            http_addr: format!("127.0.0.1:{}", 9000 + i),
        }
    }

    fn state_of(n: u128) -> RingState {
        (1..=n)
            .map(|i| RingEntry::from_identity(&identity(i)).expect("placed"))
            .collect::<Vec<_>>()
            .into()
    }

    fn view(local: u128, ring: &Ring, down: &[u128]) -> ClusterView {
        ClusterView {
            local: identity(local),
            members: ring
                .nodes_in_join_order()
                .iter()
                .map(|n| Member {
                    identity: identity(n.id.0),
                    state: if down.contains(&n.id.0) {
                        MemberState::Down
                    } else {
                        MemberState::Alive
                    },
                })
                .collect(),
            ring: ring.clone(),
        }
    }

    fn key(i: u64) -> u64 {
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234_5678
    }

    /// Over all nodes of the cluster, each gained copy is sent exactly once, by a live
    /// old owner, to exactly the owners that lack it.
    #[test]
    fn every_new_copy_is_sent_once_by_a_surviving_owner() {
        for n in 4..=6u128 {
            for victim in 1..=n {
                let base = state_of(n).ring();
                let mut s = state_of(n);
                s.remove(NodeId(victim));
                let current = s.ring();
                let mut sent = 0usize;
                let mut share = 0usize;
                for k in (0..3000).map(key) {
                    let old = base.owners(k);
                    share += usize::from(old.contains(&NodeId(victim)));
                    let mut received: Vec<NodeId> = Vec::new();
                    for local in (1..=n).filter(|&i| i != victim) {
                        let v = view(local, &current, &[victim]);
                        let targets = targets_for(k, &base, &current, &v, NodeId(local));
                        if !targets.is_empty() {
                            assert!(old.contains(&NodeId(local)), "only an old owner sends");
                        }
                        received.extend(targets);
                    }
                    sent += received.len();
                    let new = current.owners(k);
                    let lacking: Vec<NodeId> =
                        new.iter().copied().filter(|o| !old.contains(o)).collect();
                    assert_eq!(received, lacking, "key {k:#x}");
                }
                assert_eq!(sent, share, "{n} nodes, {victim} removed");
            }
        }
    }

    #[test]
    fn metadata_reaches_the_owners_its_family_gained_once() {
        let known: Vec<MetricMetadata> = (0..300)
            .map(|i| MetricMetadata {
                metric_family: format!("family_{i}"),
                metric_type: "gauge".into(),
                help: String::new(),
                unit: String::new(),
            })
            .collect();
        let base = state_of(5).ring();
        let mut s = state_of(5);
        s.remove(NodeId(2));
        let current = s.ring();
        let mut received: BTreeMap<NodeId, Vec<MetricMetadata>> = BTreeMap::new();
        for local in [1, 3, 4, 5] {
            let v = view(local, &current, &[2]);
            for (node, sent) in
                metadata_transfers(known.clone(), &base, &current, &v, NodeId(local))
            {
                received.entry(node).or_default().extend(sent);
            }
        }
        let mut moved = 0;
        for m in &known {
            let key = placement::metadata_partition_key(&m.metric_family);
            let (old, new) = (base.owners(key), current.owners(key));
            for node in [1, 3, 4, 5].map(NodeId) {
                let got = received
                    .get(&node)
                    .map_or(0, |v| v.iter().filter(|x| *x == m).count());
                let gained = new.contains(&node) && !old.contains(&node);
                assert_eq!(got, usize::from(gained), "{m:?} to {node}");
                moved += got;
            }
        }
        // Only the removed node's families move: about 3/5 of them.
        assert!((120..=240).contains(&moved), "{moved} copies moved");
    }

    #[test]
    fn a_down_first_owner_hands_the_sending_to_the_next() {
        let base = state_of(5).ring();
        let mut s = state_of(5);
        s.remove(NodeId(5));
        let current = s.ring();
        let k = (0..1000)
            .map(key)
            .find(|&k| base.owners(k).contains(&NodeId(5)) && base.owners(k)[0] != NodeId(5))
            .expect("a key owned by node 5 as a later replica");
        let first = base.owners(k)[0];
        let second = *base
            .owners(k)
            .iter()
            .find(|&&o| o != first && o != NodeId(5))
            .expect("another survivor");
        let v = view(second.0, &current, &[5, first.0]);
        assert!(!targets_for(k, &base, &current, &v, second).is_empty());
        let v = view(second.0, &current, &[5]);
        assert!(targets_for(k, &base, &current, &v, second).is_empty());
    }

    #[test]
    fn a_join_sends_to_the_new_node_only() {
        let base = state_of(4).ring();
        let current = state_of(5).ring();
        for k in (0..2000).map(key) {
            let mut all = Vec::new();
            for local in 1..=4 {
                let v = view(local, &current, &[]);
                all.extend(targets_for(k, &base, &current, &v, NodeId(local)));
            }
            assert!(all.len() <= 2);
            if !all.is_empty() {
                assert!(all.contains(&NodeId(5)));
            }
        }
    }

    /// On a join every owner a series loses sends it to at least one new owner (it may
    /// hold samples written to it alone), and each gained copy is sent exactly once.
    #[test]
    fn the_owner_that_loses_a_series_sends_it() {
        for (from, to) in [(4u128, 5u128), (5, 6), (1, 4), (2, 6)] {
            let base = state_of(from).ring();
            let current = state_of(to).ring();
            for k in (0..2000).map(key) {
                let old = base.owners(k);
                let new = current.owners(k);
                let losers: Vec<NodeId> =
                    old.iter().copied().filter(|o| !new.contains(o)).collect();
                let gained: Vec<NodeId> =
                    new.iter().copied().filter(|o| !old.contains(o)).collect();
                let mut received: Vec<NodeId> = Vec::new();
                for local in 1..=from {
                    let v = view(local, &current, &[]);
                    let targets = targets_for(k, &base, &current, &v, NodeId(local));
                    if gained.is_empty() {
                        assert!(targets.is_empty());
                    } else if losers.is_empty() {
                        // Only owners gained (a ring of fewer nodes than replicas grew):
                        // the first old owner sends.
                        assert_eq!(!targets.is_empty(), old[0] == NodeId(local));
                    } else {
                        assert_eq!(!targets.is_empty(), losers.contains(&NodeId(local)));
                    }
                    received.extend(targets);
                }
                received.sort();
                let mut want = gained.clone();
                want.sort();
                assert_eq!(received, want, "{from} -> {to} nodes, key {k:#x}");
            }
        }
    }

    #[test]
    fn base_ring_round_trips_and_damage_is_an_error() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(load_base(dir.path()).expect("none").is_none());
        let mut s = state_of(3);
        s.remove(NodeId(2));
        save_base(dir.path(), &s.ring()).expect("save");
        let back = load_base(dir.path()).expect("load").expect("some");
        assert_eq!(back, s.ring());
        std::fs::write(dir.path().join(REPAIR_FILE), b"{").expect("write");
        assert!(load_base(dir.path()).is_err());
    }

    #[test]
    fn histogram_pieces_bound_samples_and_keep_every_series_whole() {
        use crate::model::histogram::{FloatHistogram, HistogramSample, HistogramValue};
        let series = |name: &str, n: i64| HistogramSeries {
            labels: Labels::from_pairs([("__name__", name)]),
            samples: (0..n)
                .map(|t| HistogramSample {
                    t,
                    h: HistogramValue::Float(FloatHistogram::default()),
                })
                .collect(),
        };
        let pieces = histogram_pieces(
            vec![
                series("a", 3),
                series("b", 4),
                series("long", 20),
                series("c", 1),
            ],
            8,
        );
        let names: Vec<Vec<String>> = pieces
            .iter()
            .map(|p| {
                p.iter()
                    .map(|s| s.labels.get("__name__").unwrap().to_string())
                    .collect()
            })
            .collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["long"], vec!["c"]]);
        assert_eq!(pieces[1][0].samples.len(), 20);
        assert!(histogram_pieces(Vec::new(), 8).is_empty());
    }

    #[test]
    fn pieces_bound_samples_and_keep_every_sample() {
        let long = Series {
            labels: Labels::from_pairs([("__name__", "a")]),
            samples: (0..(SAMPLES_PER_BATCH as i64 * 2 + 5))
                .map(|t| Sample::new(t, 1.0))
                .collect(),
        };
        let short = Series {
            labels: Labels::from_pairs([("__name__", "b")]),
            samples: vec![Sample::new(1, 2.0)],
        };
        let out = pieces(vec![short.clone(), long.clone()], SAMPLES_PER_BATCH);
        assert!(out
            .iter()
            .all(|p| p.iter().map(|s| s.samples.len()).sum::<usize>() <= SAMPLES_PER_BATCH));
        let total: usize = out.iter().flatten().map(|s| s.samples.len()).sum();
        assert_eq!(total, long.samples.len() + 1);
    }

    #[test]
    fn progress_estimates_what_is_left() {
        let p = RepairProgress::default();
        let ring = Ring::default();
        assert_eq!(p.status(&ring).state, "waiting", "no base yet");
        p.set_base(&ring);
        assert_eq!(p.status(&ring).state, "idle");
        p.begin(10);
        p.update(|s| {
            s.series_done = 4;
            s.bytes_done = 400;
        });
        let s = p.status(&ring);
        assert_eq!((s.series_to_go, s.bytes_to_go), (6, 600));
        assert!(s.estimated_seconds_left.is_some());
        p.finish();
        assert_eq!(p.status(&ring).state, "idle");
        let mut moved = RingState::default();
        moved.merge_entry(RingEntry::from_identity(&identity(1)).expect("placed"));
        assert_eq!(p.status(&moved.ring()).state, "waiting", "ring moved on");
    }
}
