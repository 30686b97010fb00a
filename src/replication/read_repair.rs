//! Read repair: writing back to a lagging owner the samples a fan-out read found it
//! lacking, in the background (issue 12; ADR 0007).
//!
//! Owns: the bounded queue the fan-out offers lags to (`offer` never waits: past
//! `MAX_QUEUED_SAMPLES` samples or `MAX_QUEUED_WRITES` writes a lag is dropped and
//! counted, so a query is never slowed by repair), the one task that sends each queued
//! write to its target over the internal repair write (`/internal/v1/backfill`, so
//! samples older than the target's head are stored too; ADR 0016) when gossip shows the
//! target alive, and the `timbala_read_repair_*` metrics. No retry: a lag
//! still there is found again by the next read that sees it (or by anti-entropy).
//! Finding lags is the fan-out's (`fanout::lagging`). Calls the membership view (the
//! target's address and state), `peer` through `replication::send_write`, and
//! `rereplicate::pieces` (writes of bounded size).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use crate::cluster::identity::NodeId;
use crate::cluster::membership::{MemberState, MembershipHandle};
use crate::model::Series;
use crate::peer::PeerClient;

/// Samples waiting in the queue at most (about 16 bytes each, plus labels).
const MAX_QUEUED_SAMPLES: i64 = 1_000_000;
/// Writes waiting in the queue at most.
const MAX_QUEUED_WRITES: usize = 1024;
/// Samples in one repair write.
const SAMPLES_PER_WRITE: usize = 50_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// Counters of read repair; every outcome exists (at 0) from start.
#[derive(Clone, Default)]
pub struct ReadRepairMetrics {
    /// Series copies found lagging (one per series and lagging owner).
    lagging_series: Counter,
    /// Samples by outcome: `found` (missing on an owner), `written` (the owner stored
    /// them), `rejected` (the owner refused them: too old for its head, out of order),
    /// `dropped_queue_full`, `dropped_target_down`, `failed` (the write failed).
    samples: Family<Outcome, Counter>,
    queued_samples: Gauge,
}

const OUTCOMES: [&str; 6] = [
    "found",
    "written",
    "rejected",
    "dropped_queue_full",
    "dropped_target_down",
    "failed",
];

impl ReadRepairMetrics {
    pub fn register(registry: &mut Registry) -> ReadRepairMetrics {
        let m = ReadRepairMetrics::default();
        for outcome in OUTCOMES {
            let _ = m.samples.get_or_create(&Outcome { outcome });
        }
        let r = registry.sub_registry_with_prefix("timbala_read_repair");
        r.register(
            "lagging_series",
            "Series copies a fan-out read found lacking samples another replica returned \
             (one per series and lagging owner)",
            m.lagging_series.clone(),
        );
        r.register(
            "samples",
            "Samples of read repair by outcome (found missing on an owner; written back; \
             rejected by the owner; dropped_queue_full; dropped_target_down; failed)",
            m.samples.clone(),
        );
        r.register(
            "queued_samples",
            "Samples waiting in the read-repair queue",
            m.queued_samples.clone(),
        );
        m
    }

    fn add(&self, outcome: &'static str, samples: u64) {
        self.samples
            .get_or_create(&Outcome { outcome })
            .inc_by(samples);
    }
}

/// One write back to one lagging owner.
struct Write {
    target: NodeId,
    series: Vec<Series>,
    samples: u64,
}

/// The read-repair queue. Cheap to share (`Arc`).
pub struct ReadRepair {
    queue: mpsc::Sender<Write>,
    queued_samples: Arc<AtomicI64>,
    metrics: ReadRepairMetrics,
}

impl ReadRepair {
    /// Starts the sending task; it ends when the last `ReadRepair` is dropped.
    pub fn start(
        membership: MembershipHandle,
        client: PeerClient,
        metrics: ReadRepairMetrics,
    ) -> Arc<ReadRepair> {
        let (repair, queue) = ReadRepair::new(metrics);
        let sender = Sender {
            membership,
            client,
            queued_samples: repair.queued_samples.clone(),
            metrics: repair.metrics.clone(),
        };
        tokio::spawn(sender.run(queue));
        Arc::new(repair)
    }

    fn new(metrics: ReadRepairMetrics) -> (ReadRepair, mpsc::Receiver<Write>) {
        let (queue, receiver) = mpsc::channel(MAX_QUEUED_WRITES);
        let repair = ReadRepair {
            queue,
            queued_samples: Arc::new(AtomicI64::new(0)),
            metrics,
        };
        (repair, receiver)
    }

    /// Queues the writes that give each lagging owner its missing samples; what does
    /// not fit is dropped and counted. Never waits.
    pub fn offer(&self, lags: Vec<(NodeId, Series)>) {
        let mut by_target: BTreeMap<NodeId, Vec<Series>> = BTreeMap::new();
        for (target, series) in lags {
            self.metrics.lagging_series.inc();
            self.metrics.add("found", series.samples.len() as u64);
            by_target.entry(target).or_default().push(series);
        }
        for (target, series) in by_target {
            for piece in super::rereplicate::pieces(series, SAMPLES_PER_WRITE) {
                let samples: u64 = piece.iter().map(|s| s.samples.len() as u64).sum();
                self.enqueue(Write {
                    target,
                    series: piece,
                    samples,
                });
            }
        }
    }

    fn enqueue(&self, write: Write) {
        let n = write.samples as i64;
        let before = self.queued_samples.fetch_add(n, Ordering::Relaxed);
        if before + n > MAX_QUEUED_SAMPLES {
            self.queued_samples.fetch_sub(n, Ordering::Relaxed);
            self.metrics.add("dropped_queue_full", write.samples);
            return;
        }
        let samples = write.samples;
        if self.queue.try_send(write).is_err() {
            self.queued_samples.fetch_sub(n, Ordering::Relaxed);
            self.metrics.add("dropped_queue_full", samples);
            return;
        }
        self.metrics
            .queued_samples
            .set(self.queued_samples.load(Ordering::Relaxed));
    }
}

/// The task that drains the queue.
struct Sender {
    membership: MembershipHandle,
    client: PeerClient,
    queued_samples: Arc<AtomicI64>,
    metrics: ReadRepairMetrics,
}

impl Sender {
    async fn run(self, mut queue: mpsc::Receiver<Write>) {
        while let Some(write) = queue.recv().await {
            self.send(&write).await;
            let left = self
                .queued_samples
                .fetch_sub(write.samples as i64, Ordering::Relaxed)
                - write.samples as i64;
            self.metrics.queued_samples.set(left);
        }
    }

    async fn send(&self, write: &Write) {
        let view = self.membership.view();
        let alive = view
            .member(write.target)
            .is_some_and(|m| m.state == MemberState::Alive);
        let addr = view.ring.node(write.target).map(|n| n.http_addr.clone());
        let Some(addr) = addr.filter(|_| alive) else {
            self.metrics.add("dropped_target_down", write.samples);
            return;
        };
        let body = super::encode_series(&write.series);
        let sent = super::send_write(
            &self.client,
            &addr,
            crate::peer::BACKFILL_PATH,
            "backfill",
            body,
            write.samples,
        );
        match sent.await {
            Ok(outcome) => {
                let rejected = outcome.rejected_total();
                self.metrics.add("rejected", rejected);
                self.metrics
                    .add("written", write.samples.saturating_sub(rejected));
            }
            Err(e) => {
                tracing::debug!(target_node = %write.target, peer = %addr, error = %e, "read repair write failed");
                self.metrics.add("failed", write.samples);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Labels, Sample};

    fn lag(target: u128, samples: usize) -> (NodeId, Series) {
        (
            NodeId(target),
            Series {
                labels: Labels::from_pairs([("__name__", format!("s{samples}"))]),
                samples: (0..samples as i64).map(|t| Sample::new(t, 1.0)).collect(),
            },
        )
    }

    fn count(m: &ReadRepairMetrics, outcome: &'static str) -> u64 {
        m.samples.get_or_create(&Outcome { outcome }).get()
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = ReadRepairMetrics::default();
        let (repair, mut queue) = ReadRepair::new(metrics.clone());
        // Fills the sample bound: one write per SAMPLES_PER_WRITE samples.
        let fitting = MAX_QUEUED_SAMPLES as usize;
        repair.offer(vec![lag(2, fitting)]);
        repair.offer(vec![lag(3, 10)]);
        assert_eq!(count(&metrics, "found"), fitting as u64 + 10);
        assert_eq!(count(&metrics, "dropped_queue_full"), 10);
        let mut queued = 0;
        while let Ok(write) = queue.try_recv() {
            assert_eq!(write.target, NodeId(2));
            assert!(write.samples as usize <= SAMPLES_PER_WRITE);
            queued += write.samples;
        }
        assert_eq!(queued, fitting as u64);
        assert_eq!(metrics.lagging_series.get(), 2);
    }

    #[test]
    fn the_write_count_bound_drops_too() {
        let metrics = ReadRepairMetrics::default();
        let (repair, _queue) = ReadRepair::new(metrics.clone());
        let lags: Vec<_> = (0..MAX_QUEUED_WRITES as u128 + 5)
            .map(|i| lag(i, 1))
            .collect();
        repair.offer(lags);
        assert_eq!(count(&metrics, "dropped_queue_full"), 5);
    }
}
