//! Storage benchmark for the local TSDB: append throughput, bytes per sample, head
//! memory per active series.
//!
//! Run: `cargo run --release --example storage_bench -- [series] [scrapes] [shards] [jitter] [harsh]`
//! (defaults 20000 series, 120 scrapes = one full chunk per series, 4 concurrent
//! appenders, i.e. blocking threads, sharing WAL fsyncs by group commit, jitter 5 ms).
//!
//! Profiles:
//! - realistic (default): node_exporter targets of 472 series each (the composition is
//!   documented in `bench/common/node_exporter.rs`: constant info/size/limit series,
//!   rarely changing gauges, bursty integer counters, 0.01 s CPU-second counters, kB-step
//!   and full-precision gauges). Timestamps sit on the exact 15 s grid, as Prometheus
//!   writes them when a scrape lands within its 2 ms tolerance; 1% of scrapes miss the
//!   grid by up to `jitter` ms.
//! - `harsh`: the earlier worst case, kept for comparison: every scrape jittered by up
//!   to +-`jitter` ms, 40% float counters with random 0.01 increments, 20% byte counters
//!   with uniform increments up to 1e6, 40% gauges flipping between three values.
//!
//! Appends go through `Storage::append` in remote-write-sized batches (2000 series, one
//! sample each); an append returns after its samples are fsynced. Afterwards the head is
//! written as a block by `snapshot`, and cut into real blocks by `maintain` when it spans
//! more than 3 h (e.g. `-- 10000 760`).
//!
//! `-- http ADDR PID ...` measures the full write path of a running server instead; see
//! `http_ingest.rs`.

// Each benchmark uses only part of the shared generator.
mod http_ingest;
#[allow(dead_code)]
#[path = "../common/node_exporter.rs"]
mod node_exporter;

use std::collections::BTreeMap;
use std::time::Instant;

use node_exporter::{node_exporter_target, Generator, Kind, ScrapeClock, INTERVAL_MS, START_MS};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use timbala::model::{Labels, Sample, Series};
use timbala::storage::Storage;
use timbala::tsdb::chunk::XorChunk;
use timbala::tsdb::{Tsdb, TsdbMetrics, TsdbOptions};

const BATCH_SERIES: usize = 2_000;
/// Share of realistic scrapes that miss Prometheus's 2 ms timestamp tolerance.
const OFF_GRID_SHARE: f64 = 0.01;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Profile {
    Realistic,
    Harsh,
}

#[derive(Clone, Copy)]
enum HarshKind {
    FloatCounter,
    ByteCounter,
    Gauge,
}

/// The earlier worst-case generator: jitter on every scrape, noisy values.
struct HarshGenerator {
    rng: SmallRng,
    jitter_ms: i64,
    kinds: Vec<HarshKind>,
    values: Vec<f64>,
}

impl HarshGenerator {
    fn new(series: usize, jitter_ms: i64) -> Self {
        let kinds = (0..series)
            .map(|i| match i % 5 {
                0 | 1 => HarshKind::FloatCounter,
                2 => HarshKind::ByteCounter,
                _ => HarshKind::Gauge,
            })
            .collect();
        HarshGenerator {
            rng: SmallRng::seed_from_u64(42),
            jitter_ms,
            kinds,
            values: vec![0.0; series],
        }
    }

    fn next_value(&mut self, i: usize) -> f64 {
        let v = &mut self.values[i];
        match self.kinds[i] {
            HarshKind::FloatCounter => {
                *v += (self.rng.random::<f64>() * 15.0 * 100.0).round() / 100.0
            }
            HarshKind::ByteCounter => *v += f64::from(self.rng.random_range(0..1_000_000u32)),
            HarshKind::Gauge => {
                if *v == 0.0 || self.rng.random::<f64>() < 0.05 {
                    *v = [1.0, 4096.0, 8_589_934_592.0][self.rng.random_range(0..3)];
                }
            }
        }
        *v
    }

    fn scrape_time(&mut self, scrape: i64) -> i64 {
        let jitter = self.rng.random_range(-self.jitter_ms..=self.jitter_ms);
        START_MS + scrape * INTERVAL_MS + jitter
    }

    fn labels(i: usize) -> Labels {
        Labels::from_pairs([
            ("__name__", format!("node_metric_{}", i % 200)),
            ("instance", format!("host-{}:9100", i / 200)),
            ("job", "node".to_string()),
            ("cpu", (i % 8).to_string()),
        ])
    }
}

/// The series and values of one profile, produced deterministically scrape by scrape:
/// call `scrape_time` once per scrape, then `value` once per series in index order.
enum Workload {
    Harsh(HarshGenerator),
    Realistic { gen: Generator, clock: ScrapeClock },
}

impl Workload {
    fn new(profile: Profile, series: usize, jitter_ms: i64) -> Self {
        match profile {
            Profile::Harsh => Workload::Harsh(HarshGenerator::new(series, jitter_ms)),
            Profile::Realistic => {
                let kinds = realistic_series(series)
                    .into_iter()
                    .map(|(_, k)| k)
                    .collect();
                Workload::Realistic {
                    gen: Generator::new(kinds, 42),
                    clock: ScrapeClock::new(43, OFF_GRID_SHARE, jitter_ms),
                }
            }
        }
    }

    fn labels(profile: Profile, series: usize) -> Vec<Labels> {
        match profile {
            Profile::Harsh => (0..series).map(HarshGenerator::labels).collect(),
            Profile::Realistic => realistic_series(series)
                .into_iter()
                .map(|(l, _)| l)
                .collect(),
        }
    }

    /// Starts a scrape: its timestamp, with every series' value advanced.
    fn scrape_time(&mut self, scrape: i64) -> i64 {
        match self {
            Workload::Harsh(g) => g.scrape_time(scrape),
            Workload::Realistic { gen, clock } => {
                gen.scrape();
                clock.time(scrape)
            }
        }
    }

    fn value(&mut self, i: usize) -> f64 {
        match self {
            Workload::Harsh(g) => g.next_value(i),
            Workload::Realistic { gen, .. } => gen.value(i),
        }
    }

    /// The value class of series `i`, for the per-class bytes-per-sample breakdown.
    fn class(&self, i: usize) -> &'static str {
        match self {
            Workload::Harsh(g) => match g.kinds[i] {
                HarshKind::FloatCounter => "float counter",
                HarshKind::ByteCounter => "byte counter",
                HarshKind::Gauge => "3-value gauge",
            },
            Workload::Realistic { gen, .. } => match gen.kind(i) {
                Kind::Constant(_) => "constant",
                Kind::RareGauge { .. } => "rarely changing gauge",
                Kind::Gauge { .. } => "stepped gauge",
                Kind::NoisyGauge { .. } => "full-precision gauge",
                Kind::IntCounter { .. } => "integer counter",
                Kind::FloatCounter { .. } => "float counter",
                Kind::Bucket { .. } | Kind::HistogramSum { .. } => "histogram",
            },
        }
    }
}

/// Whole node_exporter targets until `series` is reached, cut to exactly `series`.
fn realistic_series(series: usize) -> Vec<(Labels, Kind)> {
    let mut out = Vec::with_capacity(series);
    let mut host = 0;
    while out.len() < series {
        out.extend(
            node_exporter_target(host)
                .into_iter()
                .map(|s| (s.labels, s.kind)),
        );
        host += 1;
    }
    out.truncate(series);
    out
}

/// Builds the same batches as the append run and drops them: the harness's own cost.
fn harness_cpu_seconds(
    profile: Profile,
    label_sets: &[Labels],
    scrapes: i64,
    jitter_ms: i64,
) -> f64 {
    let mut work = Workload::new(profile, label_sets.len(), jitter_ms);
    let before = cpu_seconds();
    for scrape in 0..scrapes {
        let t = work.scrape_time(scrape);
        for start in (0..label_sets.len()).step_by(BATCH_SERIES) {
            let batch = make_batch(&mut work, label_sets, start, t);
            std::hint::black_box(batch);
        }
    }
    cpu_seconds() - before
}

fn make_batch(work: &mut Workload, label_sets: &[Labels], start: usize, t: i64) -> Vec<Series> {
    let end = (start + BATCH_SERIES).min(label_sets.len());
    (start..end)
        .map(|i| Series {
            labels: label_sets[i].clone(),
            samples: vec![Sample::new(t, work.value(i))],
        })
        .collect()
}

/// Total size of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Resident set size after returning freed memory to the OS.
fn rss_bytes() -> u64 {
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe { libc::malloc_trim(0) };
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Bytes and samples of sealed chunks.
#[derive(Clone, Copy, Default)]
struct Tally {
    bytes: usize,
    samples: usize,
}

impl Tally {
    fn add(&mut self, bytes: usize, samples: usize) {
        self.bytes += bytes;
        self.samples += samples;
    }

    fn per_sample(self) -> f64 {
        self.bytes as f64 / self.samples.max(1) as f64
    }
}

/// XOR chunk sizes of the workload: sealed 120-sample chunks overall and per value
/// class (with the class's share of series), and all chunks including open ones.
struct ChunkReport {
    sealed: Tally,
    by_class: BTreeMap<&'static str, (Tally, usize)>,
    overall: f64,
}

fn chunk_report(profile: Profile, series: usize, scrapes: i64, jitter_ms: i64) -> ChunkReport {
    let mut work = Workload::new(profile, series, jitter_ms);
    let mut chunks: Vec<XorChunk> = (0..series).map(|_| XorChunk::new()).collect();
    let mut by_class: BTreeMap<&'static str, (Tally, usize)> = BTreeMap::new();
    for i in 0..series {
        by_class.entry(work.class(i)).or_default().1 += 1;
    }
    let mut sealed = Tally::default();
    for scrape in 0..scrapes {
        let t = work.scrape_time(scrape);
        for (i, chunk) in chunks.iter_mut().enumerate() {
            chunk.append(t, work.value(i));
            if chunk.num_samples() == 120 {
                let bytes = chunk.bytes().len();
                sealed.add(bytes, 120);
                by_class.entry(work.class(i)).or_default().0.add(bytes, 120);
                *chunk = XorChunk::new();
            }
        }
    }
    let open_bytes: usize = chunks.iter().map(|c| c.bytes().len()).sum();
    let overall = (sealed.bytes + open_bytes) as f64 / (series as f64 * scrapes as f64);
    ChunkReport {
        sealed,
        by_class,
        overall,
    }
}

fn print_chunk_report(report: &ChunkReport, series: usize) {
    println!(
        "chunk bytes/sample: sealed 120-sample chunks {:.3}, all chunks incl. open {:.3}",
        report.sealed.per_sample(),
        report.overall
    );
    println!("| value class | share of series | sealed bytes/sample |");
    println!("|---|---:|---:|");
    for (class, (tally, count)) in &report.by_class {
        println!(
            "| {class} | {:.1}% | {:.3} |",
            100.0 * *count as f64 / series as f64,
            tally.per_sample()
        );
    }
}

/// Cuts the head as background maintenance would and reports the blocks' size: a real
/// cut needs a head spanning more than 1.5 block durations (over 720 scrapes at 2 h).
fn report_block_cut(db: &Tsdb) {
    db.maintain().expect("maintain");
    let blocks = db.blocks();
    if blocks.is_empty() {
        println!("block cut: none (the head spans under 1.5 block durations; use > 720 scrapes)");
    }
    for b in blocks {
        println!(
            "block cut: {:.3} bytes per sample on disk ({} series, {} samples, {:.2} h, {} bytes)",
            b.size_bytes as f64 / b.num_samples.max(1) as f64,
            b.num_series,
            b.num_samples,
            (b.max_time - b.min_time) as f64 / 3_600_000.0,
            b.size_bytes
        );
    }
}

struct Args {
    series: usize,
    scrapes: i64,
    shards: usize,
    jitter_ms: i64,
    profile: Profile,
}

fn parse_args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let numbers: Vec<usize> = raw.iter().filter_map(|a| a.parse().ok()).collect();
    let profile = if raw.iter().any(|a| a == "harsh") {
        Profile::Harsh
    } else {
        Profile::Realistic
    };
    Args {
        series: numbers.first().copied().unwrap_or(20_000).max(1),
        scrapes: numbers.get(1).copied().unwrap_or(120).max(1) as i64,
        shards: numbers.get(2).copied().unwrap_or(4).max(1),
        jitter_ms: numbers.get(3).copied().unwrap_or(5) as i64,
        profile,
    }
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().is_some_and(|a| a == "http") {
        http_ingest::run(&raw[1..]);
        return;
    }
    let Args {
        series,
        scrapes,
        shards,
        jitter_ms,
        profile,
    } = parse_args();
    let name = match profile {
        Profile::Realistic => "realistic",
        Profile::Harsh => "harsh",
    };
    println!("profile {name}: {series} series, {scrapes} scrapes, {shards} appenders, jitter {jitter_ms} ms");
    print_chunk_report(&chunk_report(profile, series, scrapes, jitter_ms), series);

    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(shards)
        .build()
        .expect("runtime");
    let label_sets = Workload::labels(profile, series);
    let mut work = Workload::new(profile, series, jitter_ms);
    let rss_before = rss_bytes();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let db = rt.block_on(async {
        let opts = TsdbOptions {
            dir: dir.path().to_path_buf(),
            ..TsdbOptions::default()
        };
        let db = Tsdb::open(opts, TsdbMetrics::default()).expect("open");
        for scrape in 0..scrapes {
            let t = work.scrape_time(scrape);
            // One scrape round is sent as concurrent batches, like remote-write shards.
            let tasks: Vec<_> = (0..series)
                .step_by(BATCH_SERIES)
                .map(|start| {
                    let batch = make_batch(&mut work, &label_sets, start, t);
                    let db = db.clone();
                    tokio::spawn(async move { db.append(batch).await.expect("append") })
                })
                .collect();
            for task in tasks {
                task.await.expect("append task");
            }
        }
        db
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let samples = series as f64 * scrapes as f64;
    let rss_after = rss_bytes();
    let harness = harness_cpu_seconds(profile, &label_sets, scrapes, jitter_ms);
    let tsdb_cpu = (cpu - harness).max(f64::EPSILON);
    println!(
        "append: {samples} samples in {wall:.2}s wall, {cpu:.2}s CPU ({harness:.2}s of it \
         building batches) -> {:.0} samples/s wall, {:.0} samples per TSDB CPU-second",
        samples / wall,
        samples / tsdb_cpu
    );
    println!(
        "head memory: {:.0} bytes per active series ({} series, {} samples each, RSS delta)",
        rss_after.saturating_sub(rss_before) as f64 / series as f64,
        series,
        scrapes
    );
    println!(
        "wal: {:.3} bytes per sample",
        dir_bytes(&dir.path().join("wal")) as f64 / samples
    );
    // The snapshot writes the head through the same block writer as the 2 h head cut.
    let snapshot = dir.path().join("snapshot");
    db.snapshot(&snapshot, true).expect("snapshot");
    println!(
        "on disk: {:.3} bytes per sample for the head written as a block (chunks, index, meta)",
        dir_bytes(&snapshot) as f64 / samples
    );
    report_block_cut(&db);
    let stats = db.stats(1);
    println!(
        "head: {} series, {} chunks",
        stats.num_series, stats.chunk_count
    );
    db.close().expect("close");
}
