//! Storage benchmark for the local TSDB: append throughput, bytes per sample, head
//! memory per active series, on node_exporter-like data.
//!
//! Run: `cargo run --release --example storage_bench -- [series] [scrapes]`
//! (defaults 20000 series, 120 scrapes = one full chunk per series).
//!
//! Data: 15s scrape interval with a few milliseconds of jitter per scrape; 40% float
//! counters growing like CPU seconds, 20% integer byte counters, 40% gauges that take
//! one of three values and change rarely. Appends go through `Storage::append` in
//! remote-write-sized batches (2000 series, one sample each), each batch fsynced.

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
    kinds: Vec<Kind>,
    values: Vec<f64>,
}

impl Generator {
    fn new(series: usize) -> Self {
        let kinds = (0..series)
            .map(|i| match i % 5 {
                0 | 1 => Kind::FloatCounter,
                2 => Kind::ByteCounter,
                _ => Kind::Gauge,
            })
            .collect();
        Generator {
            rng: SmallRng::seed_from_u64(42),
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
        1_700_000_000_000 + scrape * INTERVAL_MS + self.rng.random_range(-5..=5)
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

fn rss_bytes() -> u64 {
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
fn bytes_per_sample(series: usize, scrapes: i64) -> (f64, f64, [f64; 3]) {
    let mut gen = Generator::new(series);
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

    let (sealed, overall, by_kind) = bytes_per_sample(series, scrapes);
    println!(
        "chunk bytes/sample: sealed 120-sample chunks {sealed:.3} (float counters {:.3}, \
         byte counters {:.3}, gauges {:.3}), all chunks incl. open {overall:.3}",
        by_kind[0], by_kind[1], by_kind[2]
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .build()
        .expect("runtime");
    let label_sets: Vec<Labels> = (0..series).map(labels).collect();
    let mut gen = Generator::new(series);
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
            for start in (0..series).step_by(BATCH_SERIES) {
                let end = (start + BATCH_SERIES).min(series);
                let batch: Vec<Series> = (start..end)
                    .map(|i| Series {
                        labels: label_sets[i].clone(),
                        samples: vec![Sample::new(t, gen.next_value(i))],
                    })
                    .collect();
                db.append(batch).await.expect("append");
            }
        }
        db
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let samples = series as f64 * scrapes as f64;
    let rss_after = rss_bytes();
    println!(
        "append: {samples} samples in {wall:.2}s wall, {cpu:.2}s CPU -> {:.0} samples/s, {:.0} samples per CPU-second",
        samples / wall,
        samples / cpu
    );
    println!(
        "head memory: {:.0} bytes per active series ({} series, {} samples each, RSS delta incl. label sets)",
        rss_after.saturating_sub(rss_before) as f64 / series as f64,
        series,
        scrapes
    );
    let stats = db.stats(1);
    println!(
        "head: {} series, {} chunks",
        stats.num_series, stats.chunk_count
    );
    db.close().expect("close");
}
