//! Ingest self-metrics (`timbala_ingest_*`). Calls `storage` for its reject reasons.
//!
//! Every labelled counter is resolved once at registration and kept as a handle, so a
//! request costs a few atomic adds: no lock, no label hashing, no allocation.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::otlp::{DecodedOtlp, DropReason};
use super::{DecodedWrite, RejectReason};
use crate::storage::{self, AppendOutcome};

type ReasonFamily = Family<Vec<(&'static str, &'static str)>, Counter>;

/// Handles to the ingest counters. Cheap to clone; clones share the counters.
#[derive(Clone, Debug)]
pub struct IngestMetrics {
    requests_received: Counter,
    samples_received: Counter,
    samples_stored: Counter,
    histograms_received: Counter,
    histograms_stored: Counter,
    /// Indexed by `storage::RejectReason::index`.
    histograms_rejected: Vec<Counter>,
    exemplars_stored: Counter,
    exemplars_dropped: Counter,
    /// Indexed by `RejectReason as usize`.
    requests_refused: Vec<Counter>,
    /// Requests stored except for samples that storage refused.
    requests_partially_stored: Counter,
    requests_failed: Counter,
    /// Indexed by `storage::RejectReason::index`.
    samples_rejected: Vec<Counter>,
    /// OTLP data points translated into samples.
    otlp_points_accepted: Counter,
    /// Indexed by `otlp::DropReason::index`.
    otlp_points_rejected: Vec<Counter>,
}

impl IngestMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("timbala_ingest");
        let requests_rejected = ReasonFamily::default();
        let samples_rejected = ReasonFamily::default();
        let histograms_rejected = ReasonFamily::default();
        let otlp_points_rejected = ReasonFamily::default();
        let metrics = IngestMetrics {
            requests_received: Counter::default(),
            samples_received: Counter::default(),
            samples_stored: Counter::default(),
            histograms_received: Counter::default(),
            histograms_stored: Counter::default(),
            histograms_rejected: storage::RejectReason::ALL
                .iter()
                .map(|r| reason_counter(&histograms_rejected, r.as_str()))
                .collect(),
            exemplars_stored: Counter::default(),
            exemplars_dropped: Counter::default(),
            requests_refused: RejectReason::ALL
                .iter()
                .map(|r| reason_counter(&requests_rejected, r.as_str()))
                .collect(),
            requests_partially_stored: reason_counter(&requests_rejected, "samples_rejected"),
            requests_failed: reason_counter(&requests_rejected, "storage_error"),
            samples_rejected: storage::RejectReason::ALL
                .iter()
                .map(|r| reason_counter(&samples_rejected, r.as_str()))
                .collect(),
            otlp_points_accepted: Counter::default(),
            otlp_points_rejected: DropReason::ALL
                .iter()
                .map(|r| reason_counter(&otlp_points_rejected, r.as_str()))
                .collect(),
        };
        registry.register(
            "requests_received",
            "Write requests received (remote write and OTLP)",
            metrics.requests_received.clone(),
        );
        registry.register(
            "samples_received",
            "Float samples received in valid write requests (remote write and OTLP)",
            metrics.samples_received.clone(),
        );
        registry.register(
            "samples_stored",
            "Float samples durably stored",
            metrics.samples_stored.clone(),
        );
        registry.register(
            "histogram_samples_received",
            "Native histogram samples received in valid remote-write requests",
            metrics.histograms_received.clone(),
        );
        registry.register(
            "histogram_samples_stored",
            "Native histogram samples durably stored",
            metrics.histograms_stored.clone(),
        );
        registry.register(
            "histogram_samples_rejected",
            "Native histogram samples refused (by storage, or by the time bounds) in otherwise valid requests, by reason",
            histograms_rejected,
        );
        registry.register(
            "exemplars_stored",
            "Exemplars held by the exemplar stores of their series' owners",
            metrics.exemplars_stored.clone(),
        );
        registry.register(
            "exemplars_dropped",
            "Exemplars received and not stored (invalid labels, OTLP exemplars, or --exemplars-limit 0)",
            metrics.exemplars_dropped.clone(),
        );
        registry.register(
            "requests_rejected",
            "Write requests (remote write and OTLP) answered with an error, by reason",
            requests_rejected,
        );
        registry.register(
            "samples_rejected",
            "Samples refused (by storage, or by the time bounds) in otherwise valid requests, by reason",
            samples_rejected,
        );
        registry.register(
            "otlp_data_points_accepted",
            "OTLP data points translated into samples",
            metrics.otlp_points_accepted.clone(),
        );
        registry.register(
            "otlp_data_points_rejected",
            "OTLP data points dropped while translating (the rest of their request is stored), by reason",
            otlp_points_rejected,
        );
        metrics
    }

    pub fn on_request(&self) {
        self.requests_received.inc();
    }

    pub fn on_refused(&self, reason: RejectReason) {
        self.requests_refused[reason.index()].inc();
    }

    pub fn on_decoded(&self, decoded: &DecodedWrite) {
        self.samples_received.inc_by(decoded.num_samples);
        self.histograms_received.inc_by(decoded.num_histograms);
        if decoded.exemplars_dropped > 0 {
            self.exemplars_dropped.inc_by(decoded.exemplars_dropped);
        }
    }

    /// `held` of a request's `valid` exemplars were stored (all, unless the store is off).
    pub fn on_exemplars_stored(&self, held: u64, valid: u64) {
        self.exemplars_stored.inc_by(held);
        if valid > held {
            self.exemplars_dropped.inc_by(valid - held);
        }
    }

    /// An OTLP request translated: its points accepted and dropped, and its samples.
    pub fn on_otlp_decoded(&self, decoded: &DecodedOtlp) {
        self.on_decoded(&decoded.write);
        self.otlp_points_accepted.inc_by(decoded.accepted_points());
        for (counter, n) in self.otlp_points_rejected.iter().zip(decoded.dropped.counts) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }

    /// A request stored: its float samples' and its histogram samples' outcomes.
    pub fn on_stored(&self, samples: &AppendOutcome, histograms: &AppendOutcome) {
        self.samples_stored.inc_by(samples.appended);
        for &(reason, n) in &samples.rejected {
            self.samples_rejected[reason.index()].inc_by(n);
        }
        self.histograms_stored.inc_by(histograms.appended);
        for &(reason, n) in &histograms.rejected {
            self.histograms_rejected[reason.index()].inc_by(n);
        }
        if samples.rejected_total() + histograms.rejected_total() > 0 {
            self.requests_partially_stored.inc();
        }
    }

    pub fn on_storage_error(&self) {
        self.requests_failed.inc();
    }
}

fn reason_counter(family: &ReasonFamily, reason: &'static str) -> Counter {
    family.get_or_create(&vec![("reason", reason)]).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn counters_show_up_with_prefix_and_reason() {
        let mut registry = Registry::default();
        let m = IngestMetrics::register(&mut registry);
        m.on_request();
        m.on_refused(RejectReason::BadSnappy);
        m.on_stored(
            &AppendOutcome {
                appended: 5,
                rejected: vec![(storage::RejectReason::OutOfOrder, 2)],
                first_rejection: None,
            },
            &AppendOutcome {
                appended: 3,
                rejected: vec![(storage::RejectReason::DuplicateTimestamp, 1)],
                first_rejection: None,
            },
        );
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("timbala_ingest_requests_received_total 1"),
            "{text}"
        );
        assert!(text.contains(r#"timbala_ingest_requests_rejected_total{reason="bad_snappy"} 1"#));
        assert!(text.contains(r#"timbala_ingest_samples_rejected_total{reason="out_of_order"} 2"#));
        assert!(text.contains("timbala_ingest_samples_stored_total 5"));
        assert!(text.contains(r#"{reason="samples_rejected"} 1"#));
        assert!(text.contains("timbala_ingest_histogram_samples_stored_total 3"));
        assert!(text.contains(
            r#"timbala_ingest_histogram_samples_rejected_total{reason="duplicate_timestamp"} 1"#
        ));
        // OTLP families exist before the first OTLP request.
        assert!(text.contains("timbala_ingest_otlp_data_points_accepted_total 0"));
        assert!(text.contains(
            r#"timbala_ingest_otlp_data_points_rejected_total{reason="delta_temporality"} 0"#
        ));
    }
}
