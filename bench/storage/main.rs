//! Storage benchmark for the local TSDB: append throughput, bytes per sample, head
//! memory per active series, on node_exporter-like data.
//!
//! Run: `cargo run --release --example storage_bench -- [series] [scrapes] [shards] [jitter]`
//! (defaults 20000 series, 120 scrapes = one full chunk per series, 4 concurrent
//! appenders, i.e. blocking threads, sharing WAL fsyncs by group commit, timestamps
//! jittered by up to +-5 ms; Prometheus itself snaps jitter under 2 ms, so 0 models it).
//!
//! Data: 15s scrape interval with milliseconds of jitter per scrape; 40% float
//! counters growing like CPU seconds, 20% integer byte counters, 40% gauges that take
//! one of three values and change rarely. Appends go through `Storage::append` in
//! remote-write-sized batches (2000 series, one sample each); an append returns after
//! its samples are fsynced.

use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use timbala::model::{Labels, Sample, Series};
use timbala::storage::Storage;
use timbala::tsdb::chunk::XorChunk;
use timbala::tsdb::{Tsdb, TsdbMetrics, TsdbOptions};

const INTERVAL_MS: i64 = 15_000;
const BATCH_SERIES: usize = 2_000;

#[derive(Clone, Copy)]
enum Kind {
    FloatCounter = 0,
    ByteCounter = 1,
    Gauge = 2,
}

struct Generator {
    rng: SmallRng,
    jitter_ms: i64,
    kinds: Vec<Kind>,
    values: Vec<f64>,
}

impl Generator {
    fn new(series: usize, jitter_ms: i64) -> Self {
        let kinds = (0..series)
            .map(|i| match i % 5 {
                0 | 1 => Kind::FloatCounter,
                2 => Kind::ByteCounter,
                _ => Kind::Gauge,
            })
            .collect();
        Generator {
            rng: SmallRng::seed_from_u64(42),
            jitter_ms,
            kinds,
            values: vec![0.0; series],
        }
    }

    fn next_value(&mut self, i: usize) -> f64 {
        let v = &mut self.values[i];
        match self.kinds[i] {
            Kind::FloatCounter => *v += (self.rng.random::<f64>() * 15.0 * 100.0).round() / 100.0,
            Kind::ByteCounter => *v += f64::from(self.rng.random_range(0..1_000_000u32)),
            Kind::Gauge => {
                if *v == 0.0 || self.rng.random::<f64>() < 0.05 {
                    *v = [1.0, 4096.0, 8_589_934_592.0][self.rng.random_range(0..3)];
                }
            }
        }
        *v
    }

    fn scrape_time(&mut self, scrape: i64) -> i64 {
        let jitter = self.rng.random_range(-self.jitter_ms..=self.jitter_ms);
        1_700_000_000_000 + scrape * INTERVAL_MS + jitter
    }
}

fn labels(i: usize) -> Labels {
    Labels::from_pairs([
        ("__name__", format!("node_metric_{}", i % 200)),
        ("instance", format!("host-{}:9100", i / 200)),
        ("job", "node".to_string()),
        ("cpu", (i % 8).to_string()),
    ])
}

/// Builds the same batches as the append run and drops them: the harness's own cost.
fn harness_cpu_seconds(label_sets: &[Labels], scrapes: i64, jitter_ms: i64) -> f64 {
    let mut gen = Generator::new(label_sets.len(), jitter_ms);
    let before = cpu_seconds();
    for scrape in 0..scrapes {
        let t = gen.scrape_time(scrape);
        for start in (0..label_sets.len()).step_by(BATCH_SERIES) {
            let batch = make_batch(&mut gen, label_sets, start, t);
            std::hint::black_box(batch);
        }
    }
    cpu_seconds() - before
}

fn make_batch(gen: &mut Generator, label_sets: &[Labels], start: usize, t: i64) -> Vec<Series> {
    let end = (start + BATCH_SERIES).min(label_sets.len());
    (start..end)
        .map(|i| Series {
            labels: label_sets[i].clone(),
            samples: vec![Sample::new(t, gen.next_value(i))],
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

/// Bytes per sample of XOR chunks: (sealed 120-sample chunks overall, all chunks
/// overall, sealed chunks per kind [float counters, byte counters, gauges]).
fn bytes_per_sample(series: usize, scrapes: i64, jitter_ms: i64) -> (f64, f64, [f64; 3]) {
    let mut gen = Generator::new(series, jitter_ms);
    let mut chunks: Vec<XorChunk> = (0..series).map(|_| XorChunk::new()).collect();
    let mut sealed = [(0usize, 0usize); 3];
    for scrape in 0..scrapes {
        let t = gen.scrape_time(scrape);
        for (i, chunk) in chunks.iter_mut().enumerate() {
            let v = gen.next_value(i);
            chunk.append(t, v);
            if chunk.num_samples() == 120 {
                let kind = gen.kinds[i] as usize;
                sealed[kind].0 += chunk.bytes().len();
                sealed[kind].1 += 120;
                *chunk = XorChunk::new();
            }
        }
    }
    let ratio = |(bytes, samples): (usize, usize)| bytes as f64 / samples as f64;
    let sealed_total = sealed
        .iter()
        .fold((0, 0), |acc, &(b, s)| (acc.0 + b, acc.1 + s));
    let open_bytes: usize = chunks.iter().map(|c| c.bytes().len()).sum();
    let overall = (sealed_total.0 + open_bytes) as f64 / (series as f64 * scrapes as f64);
    (ratio(sealed_total), overall, sealed.map(ratio))
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let series = args.first().copied().unwrap_or(20_000);
    let scrapes = args.get(1).copied().unwrap_or(120) as i64;
    let shards = args.get(2).copied().unwrap_or(4).max(1);
    let jitter_ms = args.get(3).copied().unwrap_or(5) as i64;

    let (sealed, overall, by_kind) = bytes_per_sample(series, scrapes, jitter_ms);
    println!(
        "chunk bytes/sample: sealed 120-sample chunks {sealed:.3} (float counters {:.3}, \
         byte counters {:.3}, gauges {:.3}), all chunks incl. open {overall:.3}",
        by_kind[0], by_kind[1], by_kind[2]
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(shards)
        .build()
        .expect("runtime");
    let label_sets: Vec<Labels> = (0..series).map(labels).collect();
    let mut gen = Generator::new(series, jitter_ms);
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
            let t = gen.scrape_time(scrape);
            // One scrape round is sent as concurrent batches, like remote-write shards.
            let tasks: Vec<_> = (0..series)
                .step_by(BATCH_SERIES)
                .map(|start| {
                    let batch = make_batch(&mut gen, &label_sets, start, t);
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
    let harness = harness_cpu_seconds(&label_sets, scrapes, jitter_ms);
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
    let snapshot = dir.path().join("snapshot");
    db.snapshot(&snapshot, true).expect("snapshot");
    println!(
        "on disk: {:.3} bytes per sample for the head written as a block (chunks, index, meta)",
        dir_bytes(&snapshot) as f64 / samples
    );
    let stats = db.stats(1);
    println!(
        "head: {} series, {} chunks",
        stats.num_series, stats.chunk_count
    );
    db.close().expect("close");
}
