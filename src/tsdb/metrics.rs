//! The TSDB's self-metrics (`timbala_tsdb_*`), exported through prometheus-client.
//!
//! Owns: metric definitions and their registration. Every handle is an `Arc` around
//! atomics, so hot-path updates are plain atomic adds (done once per batch).
//! Calls `storage` (for reject reasons) and `wal` (implements its observer).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use super::wal::WalObserver;
use crate::storage::RejectReason;

/// The TSDB's self-metrics, registered once at start-up. Cheap to clone.
#[derive(Clone)]
pub struct TsdbMetrics {
    pub head_series: Gauge,
    pub head_chunks: Gauge,
    pub samples_appended: Counter,
    rejected: Family<Vec<(String, String)>, Counter>,
    /// Indexed by `RejectReason::index`.
    rejected_by_reason: [Counter; RejectReason::ALL.len()],
    pub wal_fsync_seconds: Histogram,
    pub wal_segments: Gauge,
    pub wal_replay_seconds: Gauge<f64, AtomicU64>,
    pub wal_corruptions: Counter,
    /// 1 while the WAL refuses writes (a write or fsync failed and no recovery has
    /// succeeded yet), else 0.
    pub wal_failing: Gauge,
    pub wal_write_errors: Counter,
    pub wal_recoveries: Counter,
    /// Append requests refused because their WAL write failed.
    pub appends_refused: Counter,
    pub blocks_loaded: Gauge,
    pub compactions: Counter,
    pub compactions_failed: Counter,
    pub retention_deletions: Counter,
    pub head_cuts: Counter,
    pub future_samples_removed: Counter,
    /// Samples stored by backfill as new blocks (too old for the head).
    pub samples_backfilled: Counter,
}

impl Default for TsdbMetrics {
    /// Unregistered metrics (tests, tools).
    fn default() -> Self {
        let rejected: Family<Vec<(String, String)>, Counter> = Family::default();
        let rejected_by_reason = RejectReason::ALL.map(|r| {
            rejected
                .get_or_create(&vec![("reason".to_string(), r.as_str().to_string())])
                .clone()
        });
        TsdbMetrics {
            head_series: Gauge::default(),
            head_chunks: Gauge::default(),
            samples_appended: Counter::default(),
            rejected,
            rejected_by_reason,
            wal_fsync_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            wal_segments: Gauge::default(),
            wal_replay_seconds: Gauge::default(),
            wal_corruptions: Counter::default(),
            wal_failing: Gauge::default(),
            wal_write_errors: Counter::default(),
            wal_recoveries: Counter::default(),
            appends_refused: Counter::default(),
            blocks_loaded: Gauge::default(),
            compactions: Counter::default(),
            compactions_failed: Counter::default(),
            retention_deletions: Counter::default(),
            head_cuts: Counter::default(),
            future_samples_removed: Counter::default(),
            samples_backfilled: Counter::default(),
        }
    }
}

impl TsdbMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = TsdbMetrics::default();
        let r = registry;
        r.register(
            "timbala_tsdb_head_series",
            "Series in the head",
            m.head_series.clone(),
        );
        r.register(
            "timbala_tsdb_head_chunks",
            "Chunks in the head",
            m.head_chunks.clone(),
        );
        r.register(
            "timbala_tsdb_samples_appended",
            "Samples accepted into the TSDB",
            m.samples_appended.clone(),
        );
        r.register(
            "timbala_tsdb_samples_rejected",
            "Samples rejected by the TSDB, by reason",
            m.rejected.clone(),
        );
        r.register(
            "timbala_tsdb_wal_fsync_duration_seconds",
            "Duration of WAL fsyncs",
            m.wal_fsync_seconds.clone(),
        );
        r.register(
            "timbala_tsdb_wal_segments",
            "WAL segment files on disk",
            m.wal_segments.clone(),
        );
        r.register(
            "timbala_tsdb_wal_replay_duration_seconds",
            "Time the last WAL replay took",
            m.wal_replay_seconds.clone(),
        );
        r.register(
            "timbala_tsdb_wal_corruptions",
            "Corrupt WAL records found during replay",
            m.wal_corruptions.clone(),
        );
        r.register(
            "timbala_tsdb_wal_failing",
            "1 while the WAL cannot write (disk full, I/O error): writes are refused and /-/ready answers 503",
            m.wal_failing.clone(),
        );
        r.register(
            "timbala_tsdb_wal_write_errors",
            "Failed WAL writes, fsyncs, segment rolls and recovery attempts",
            m.wal_write_errors.clone(),
        );
        r.register(
            "timbala_tsdb_wal_recoveries",
            "Times the WAL became writable again after a failure, without a restart",
            m.wal_recoveries.clone(),
        );
        r.register(
            "timbala_tsdb_appends_refused",
            "Append requests refused because the WAL could not write them (nothing of them was stored)",
            m.appends_refused.clone(),
        );
        r.register(
            "timbala_tsdb_blocks_loaded",
            "On-disk blocks loaded",
            m.blocks_loaded.clone(),
        );
        r.register(
            "timbala_tsdb_compactions",
            "Block compactions run",
            m.compactions.clone(),
        );
        r.register(
            "timbala_tsdb_compactions_failed",
            "Block compactions that failed",
            m.compactions_failed.clone(),
        );
        r.register(
            "timbala_tsdb_retention_deletions",
            "Blocks deleted by retention",
            m.retention_deletions.clone(),
        );
        r.register(
            "timbala_tsdb_head_cuts",
            "Head cuts into blocks",
            m.head_cuts.clone(),
        );
        r.register(
            "timbala_tsdb_future_samples_removed",
            "Samples beyond the future limit moved to the quarantine at start-up",
            m.future_samples_removed.clone(),
        );
        r.register(
            "timbala_tsdb_samples_backfilled",
            "Samples a repair stored as new blocks because the head refuses them as too old",
            m.samples_backfilled.clone(),
        );
        m
    }

    /// Counts `n` rejected samples for `reason` (one atomic add).
    pub fn rejected(&self, reason: RejectReason, n: u64) {
        self.rejected_by_reason[reason.index()].inc_by(n);
    }

    pub fn rejected_count(&self, reason: RejectReason) -> u64 {
        self.rejected_by_reason[reason.index()].get()
    }
}

impl WalObserver for TsdbMetrics {
    fn fsync_done(&self, seconds: f64) {
        self.wal_fsync_seconds.observe(seconds);
    }

    fn segments(&self, count: u64) {
        self.wal_segments.set(count as i64);
    }

    fn write_error(&self) {
        self.wal_write_errors.inc();
    }

    fn failing(&self, failing: bool) {
        self.wal_failing.set(i64::from(failing));
        if !failing {
            self.wal_recoveries.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn registers_prefixed_metrics() {
        let mut registry = Registry::default();
        let m = TsdbMetrics::register(&mut registry);
        m.samples_appended.inc_by(3);
        m.rejected(RejectReason::TooOld, 2);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(out.contains("timbala_tsdb_samples_appended_total 3"));
        assert!(out.contains("timbala_tsdb_samples_rejected_total{reason=\"too_old\"} 2"));
        assert!(out.contains("timbala_tsdb_wal_fsync_duration_seconds_bucket"));
        assert_eq!(m.rejected_count(RejectReason::TooOld), 2);
    }
}
