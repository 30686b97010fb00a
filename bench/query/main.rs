//! Query benchmark: Grafana-like dashboard queries through `timbala::promql::Engine` over a
//! local TSDB holding 2 h of node_exporter-like data (plus an HTTP service with classic
//! histograms). Reports latency (min, p50, p99, max over N runs) and the samples each
//! query loads from storage.
//!
//! Run: `cargo run --release --example query_bench -- [series] [reps]`
//! (defaults: 10,000 series, 10 repetitions). Data: 2 h of 15 s scrapes on the exact
//! grid, seeded, built with `Storage::append` into a `Tsdb` in a temp dir (all in the
//! head: 2 h never reaches the 3 h head-cut threshold). Every query runs as an instant
//! query at the end of the data and as a range query over the whole 2 h at 15 s and
//! 60 s steps. Calls only the public `timbala` API.

// Each benchmark uses only part of the shared generator.
#[allow(dead_code)]
#[path = "../common/node_exporter.rs"]
mod node_exporter;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use node_exporter::{
    http_service_target, node_exporter_target, Generator, SeriesSpec, HISTOGRAMS_PER_SERVICE,
    INTERVAL_MS, START_MS,
};
use timbala::model::{HistogramSeries, Labels, MetricMetadata, Sample, Series, SeriesExemplars};
use timbala::promql::{Engine, EngineOptions, QueryValue};
use timbala::storage::{
    AppendOutcome, BoxFuture, ExemplarRequest, HistogramAppendError, LabelRequest, SelectError,
    SelectRequest, Storage, StorageError,
};
use timbala::tsdb::{Tsdb, TsdbMetrics, TsdbOptions};

/// 2 h of 15 s scrapes, both ends included.
const SCRAPES: i64 = 2 * 3600 * 1000 / INTERVAL_MS + 1;
const API_TARGETS: usize = 10;
const RANGE_STEPS_MS: [i64; 2] = [15_000, 60_000];

/// The dashboard: node overview panels plus an API latency panel.
const QUERIES: [&str; 9] = [
    "rate(node_network_receive_bytes_total[5m])",
    r#"sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))"#,
    r#"topk(5, sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m])))"#,
    "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
    "max_over_time(rate(node_network_transmit_bytes_total[5m])[30m:1m])",
    "avg_over_time(node_load1[5m])",
    r#"node_filesystem_avail_bytes{mountpoint=~"/|/var.*",fstype!="tmpfs"}"#,
    "count by (job) (up)",
    "sum by (instance) (rate(node_interrupts_total[5m]))",
];

/// The TSDB behind a counter of the samples `select` returns: what a query loads.
struct CountingStorage {
    inner: Tsdb,
    samples_loaded: AtomicU64,
}

impl Storage for CountingStorage {
    fn append(&self, batch: Vec<Series>) -> BoxFuture<'_, Result<AppendOutcome, StorageError>> {
        self.inner.append(batch)
    }

    fn select(&self, req: SelectRequest) -> BoxFuture<'_, Result<Vec<Series>, SelectError>> {
        Box::pin(async move {
            let found = self.inner.select(req).await?;
            let n: usize = found.iter().map(|s| s.samples.len()).sum();
            self.samples_loaded.fetch_add(n as u64, Ordering::Relaxed);
            Ok(found)
        })
    }

    fn append_histograms(
        &self,
        batch: Vec<HistogramSeries>,
    ) -> BoxFuture<'_, Result<AppendOutcome, HistogramAppendError>> {
        self.inner.append_histograms(batch)
    }

    fn select_histograms(
        &self,
        req: SelectRequest,
    ) -> BoxFuture<'_, Result<Vec<HistogramSeries>, SelectError>> {
        Box::pin(async move {
            let found = self.inner.select_histograms(req).await?;
            let n: usize = found.iter().map(|s| s.samples.len()).sum();
            self.samples_loaded.fetch_add(n as u64, Ordering::Relaxed);
            Ok(found)
        })
    }

    fn series(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<Labels>, StorageError>> {
        self.inner.series(req)
    }

    fn label_names(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        self.inner.label_names(req)
    }

    fn label_values(
        &self,
        name: String,
        req: LabelRequest,
    ) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        self.inner.label_values(name, req)
    }

    fn record_metadata(
        &self,
        metadata: Vec<MetricMetadata>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.record_metadata(metadata)
    }

    fn metadata(
        &self,
        metric: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<MetricMetadata>, StorageError>> {
        self.inner.metadata(metric)
    }

    fn append_exemplars(
        &self,
        batch: Vec<SeriesExemplars>,
    ) -> BoxFuture<'_, Result<u64, StorageError>> {
        self.inner.append_exemplars(batch)
    }

    fn exemplars(
        &self,
        req: ExemplarRequest,
    ) -> BoxFuture<'_, Result<Vec<SeriesExemplars>, StorageError>> {
        self.inner.exemplars(req)
    }
}

/// API targets first (so the histograms are always present), then as many node_exporter
/// targets as needed, cut to exactly `total` series.
fn catalogue(total: usize) -> Vec<SeriesSpec> {
    let mut specs: Vec<SeriesSpec> = (0..API_TARGETS)
        .flat_map(|t| http_service_target(t, t * HISTOGRAMS_PER_SERVICE))
        .collect();
    let mut host = 0;
    while specs.len() < total {
        specs.extend(node_exporter_target(host));
        host += 1;
    }
    specs.truncate(total);
    specs
}

/// Appends every scrape of every series, one remote-write-like batch per scrape.
async fn load(db: &Tsdb, specs: &[SeriesSpec]) -> u64 {
    let mut gen = Generator::new(specs.iter().map(|s| s.kind).collect(), 7);
    let mut appended = 0;
    for scrape in 0..SCRAPES {
        gen.scrape();
        let t = START_MS + scrape * INTERVAL_MS;
        let batch = specs
            .iter()
            .enumerate()
            .map(|(i, s)| Series {
                labels: s.labels.clone(),
                samples: vec![Sample::new(t, gen.value(i))],
            })
            .collect();
        let outcome = db.append(batch).await.expect("append");
        assert_eq!(outcome.rejected_total(), 0, "{:?}", outcome.first_rejection);
        appended += outcome.appended;
    }
    appended
}

/// What one measured query shape is: instant, or range with a step.
#[derive(Clone, Copy)]
enum Shape {
    Instant,
    Range { step_ms: i64 },
}

impl Shape {
    fn describe(self) -> String {
        match self {
            Shape::Instant => "instant".to_string(),
            Shape::Range { step_ms } => format!("range {}s", step_ms / 1000),
        }
    }
}

struct Measurement {
    latencies: Vec<Duration>,
    samples_loaded: u64,
    result_series: usize,
    points: usize,
}

/// Runs one query `reps` times (after one warm-up run) and keeps every latency.
async fn measure(
    engine: &Engine,
    storage: &Arc<CountingStorage>,
    query: &str,
    shape: Shape,
    reps: usize,
) -> Measurement {
    let end = START_MS + (SCRAPES - 1) * INTERVAL_MS;
    let dyn_storage: Arc<dyn Storage> = storage.clone();
    let run = || async {
        let out = match shape {
            Shape::Instant => engine.instant_query(dyn_storage.clone(), query, end).await,
            Shape::Range { step_ms } => {
                engine
                    .range_query(dyn_storage.clone(), query, START_MS, end, step_ms)
                    .await
            }
        };
        out.unwrap_or_else(|e| panic!("{query}: {e}")).value
    };
    let (result_series, points) = result_size(&run().await);
    let mut latencies = Vec::with_capacity(reps);
    storage.samples_loaded.store(0, Ordering::Relaxed);
    for _ in 0..reps {
        let started = Instant::now();
        std::hint::black_box(run().await);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    Measurement {
        latencies,
        samples_loaded: storage.samples_loaded.load(Ordering::Relaxed) / reps.max(1) as u64,
        result_series,
        points,
    }
}

/// Series (or vector elements) and points in a result.
fn result_size(value: &QueryValue) -> (usize, usize) {
    match value {
        QueryValue::Vector(v) => (v.len(), v.len()),
        QueryValue::Matrix(m) => (m.len(), m.iter().map(|s| s.points.len()).sum()),
        QueryValue::Scalar { .. } | QueryValue::String { .. } => (1, 1),
    }
}

/// Nearest-rank percentile of sorted latencies, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let total = args.first().copied().unwrap_or(10_000);
    let reps = args.get(1).copied().unwrap_or(10).max(1);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let specs = catalogue(total);
    rt.block_on(async {
        let opts = TsdbOptions {
            dir: dir.path().to_path_buf(),
            ..TsdbOptions::default()
        };
        let db = Tsdb::open(opts, TsdbMetrics::default()).expect("open");
        let started = Instant::now();
        let appended = load(&db, &specs).await;
        println!(
            "loaded {} series x {SCRAPES} scrapes = {appended} samples in {:.1}s",
            specs.len(),
            started.elapsed().as_secs_f64()
        );
        let storage = Arc::new(CountingStorage {
            inner: db.clone(),
            samples_loaded: AtomicU64::new(0),
        });
        let engine = Engine::new(EngineOptions::default());
        let shapes = std::iter::once(Shape::Instant)
            .chain(RANGE_STEPS_MS.map(|step_ms| Shape::Range { step_ms }));
        println!(
            "\n| query | shape | min ms | p50 ms | p99 ms | max ms | samples loaded | result series | points |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for shape in shapes {
            for query in QUERIES {
                let m = measure(&engine, &storage, query, shape, reps).await;
                println!(
                    "| `{}` | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
                    query.replace('|', "\\|"),
                    shape.describe(),
                    percentile_ms(&m.latencies, 0.0),
                    percentile_ms(&m.latencies, 50.0),
                    percentile_ms(&m.latencies, 99.0),
                    percentile_ms(&m.latencies, 100.0),
                    m.samples_loaded,
                    m.result_series,
                    m.points
                );
            }
        }
        db.close().expect("close");
    });
}
