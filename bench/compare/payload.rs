//! The load generator's payload: node_exporter-like hosts plus HTTP services with classic
//! histograms, generated from fixed seeds and pre-encoded into remote-write 1.0 requests
//! (snappy protobuf, 2,000 samples each) before any clock starts.
//!
//! Owns: the series catalogue of the side-by-side benchmark, the split of series over
//! connections and the encoding. Calls `bench/common/node_exporter.rs` (series and values)
//! and `timbala::proto` (wire structs). No I/O.
//!
//! Every connection owns a disjoint set of series (series `i` goes to connection
//! `i % connections`) and its requests are in scrape order, so each series reaches the
//! receiver in time order whatever the interleaving of connections.

use crate::node_exporter::{
    http_service_target, node_exporter_target, Generator, ScrapeClock, SeriesSpec,
    HISTOGRAMS_PER_SERVICE, INTERVAL_MS,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use timbala::proto::{encode_snappy, labels_to_proto, Label, Sample, TimeSeries, WriteRequest};

/// Samples per remote-write request, as Prometheus's default `max_samples_per_send`.
pub const SAMPLES_PER_REQUEST: usize = 2_000;
const VALUE_SEED: u64 = 42;
const PHASE_SEED: u64 = 7;

/// What to generate.
#[derive(Clone, Debug)]
pub struct PayloadSpec {
    pub hosts: usize,
    pub services: usize,
    pub scrapes: i64,
    pub connections: usize,
    /// Timestamp of scrape 0 (aligned to the 15 s grid).
    pub start_ms: i64,
    /// Share of scrapes whose timestamp misses the grid, and by how much at most.
    pub jitter_share: f64,
    pub jitter_ms: i64,
}

/// One encoded request and the scrape its first sample belongs to.
pub struct Request {
    pub body: Vec<u8>,
    pub samples: usize,
    pub first_scrape: i64,
}

pub struct Payload {
    pub spec: PayloadSpec,
    /// Requests per connection, in send order.
    pub connections: Vec<Vec<Request>>,
    pub series: usize,
    pub samples: u64,
    /// Newest sample timestamp (ms): the dashboard's evaluation time.
    pub max_t: i64,
    pub histogram_series: usize,
    pub encoded_bytes: u64,
}

/// Every series of the payload, with the index of the target that scrapes it.
pub fn catalogue(spec: &PayloadSpec) -> Vec<(usize, SeriesSpec)> {
    let hosts = (0..spec.hosts).map(node_exporter_target);
    let services = (0..spec.services).map(|s| http_service_target(s, s * HISTOGRAMS_PER_SERVICE));
    hosts
        .chain(services)
        .enumerate()
        .flat_map(|(target, series)| series.into_iter().map(move |s| (target, s)))
        .collect()
}

/// Accumulates one connection's samples into requests of `SAMPLES_PER_REQUEST`.
struct RequestBuilder {
    pending: Vec<TimeSeries>,
    first_scrape: i64,
    done: Vec<Request>,
}

impl RequestBuilder {
    fn new() -> Self {
        RequestBuilder {
            pending: Vec::with_capacity(SAMPLES_PER_REQUEST),
            first_scrape: 0,
            done: Vec::new(),
        }
    }

    fn push(&mut self, scrape: i64, labels: &[Label], sample: Sample) {
        if self.pending.is_empty() {
            self.first_scrape = scrape;
        }
        self.pending.push(TimeSeries {
            labels: labels.to_vec(),
            samples: vec![sample],
            ..Default::default()
        });
        if self.pending.len() == SAMPLES_PER_REQUEST {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let request = WriteRequest {
            timeseries: std::mem::take(&mut self.pending),
            metadata: Vec::new(),
        };
        self.done.push(Request {
            body: encode_snappy(&request),
            samples: request.timeseries.len(),
            first_scrape: self.first_scrape,
        });
    }
}

/// Generates and encodes the whole payload. Deterministic for a given spec.
pub fn build(spec: &PayloadSpec) -> Payload {
    let series = catalogue(spec);
    let labels: Vec<Vec<Label>> = series
        .iter()
        .map(|(_, s)| labels_to_proto(&s.labels))
        .collect();
    let histogram_series = series
        .iter()
        .filter(|(_, s)| {
            s.labels
                .get("__name__")
                .is_some_and(|n| n.starts_with("http_request_duration"))
        })
        .count();
    let mut builders: Vec<RequestBuilder> = (0..spec.connections)
        .map(|_| RequestBuilder::new())
        .collect();
    let mut max_t = i64::MIN;
    generate(spec, &series, |scrape, i, timestamp, value| {
        max_t = max_t.max(timestamp);
        let sample = Sample { value, timestamp };
        builders[i % spec.connections].push(scrape, &labels[i], sample);
    });
    let connections: Vec<Vec<Request>> = builders
        .into_iter()
        .map(|mut b| {
            b.flush();
            b.done
        })
        .collect();
    let encoded_bytes = connections
        .iter()
        .flatten()
        .map(|r| r.body.len() as u64)
        .sum();
    Payload {
        spec: spec.clone(),
        series: labels.len(),
        samples: labels.len() as u64 * spec.scrapes as u64,
        max_t,
        histogram_series,
        encoded_bytes,
        connections,
    }
}

/// Calls `visit(scrape, series index, timestamp, value)` for every sample of the
/// payload's `series` (from `catalogue`), scrape by scrape. Deterministic for a spec.
pub fn generate(
    spec: &PayloadSpec,
    series: &[(usize, SeriesSpec)],
    mut visit: impl FnMut(i64, usize, i64, f64),
) {
    let targets = spec.hosts + spec.services;
    let target_of: Vec<usize> = series.iter().map(|(t, _)| *t).collect();
    let mut values = Generator::new(series.iter().map(|(_, s)| s.kind).collect(), VALUE_SEED);
    // Targets are scraped at fixed offsets spread over the interval, as Prometheus does,
    // each with its own jitter.
    let mut phase_rng = SmallRng::seed_from_u64(PHASE_SEED);
    let phases: Vec<i64> = (0..targets)
        .map(|_| phase_rng.random_range(0..INTERVAL_MS))
        .collect();
    let mut clocks: Vec<ScrapeClock> = (0..targets)
        .map(|t| {
            ScrapeClock::new(1_000 + t as u64, spec.jitter_share, spec.jitter_ms)
                .starting_at(spec.start_ms)
        })
        .collect();
    for scrape in 0..spec.scrapes {
        values.scrape();
        let times: Vec<i64> = clocks
            .iter_mut()
            .zip(&phases)
            .map(|(clock, phase)| clock.time(scrape) - phase)
            .collect();
        for i in 0..series.len() {
            visit(scrape, i, times[target_of[i]], values.value(i));
        }
    }
}
