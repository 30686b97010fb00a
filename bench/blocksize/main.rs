//! Bytes per sample of flushed blocks, previous format (XOR chunks, chunks file version
//! 1) against the current one (packed columns, version 2), and decode speed of both.
//!
//! Run: `cargo run --release --example block_size` (no arguments; about a minute).
//!
//! Sizes are deterministic: the payloads come from the seeded generator of `make bench`
//! (`bench/compare/payload.rs`), blocks are written by the real `BlockWriter` into a
//! temporary directory and measured as whole block directories (`chunks`, `index`,
//! `meta.json`; no WAL), as the snapshot endpoint leaves them. Payloads:
//! - `make bench`: 40 node_exporter hosts + 20 HTTP services (20,180 series) x 480
//!   scrapes (2 h), every scrape off the 15 s grid by up to 2 ms; one block, as the
//!   harness's snapshot writes the head.
//! - 6 h of 10k series: 21 node_exporter hosts (9,912 series) x 1,440 scrapes, same
//!   jitter; written as three 2 h blocks (head cuts) and as the one 6 h block that
//!   compaction makes of them.
//!
//! Decode speed (samples/s, single thread, best of 3 passes over every series of the
//! `make bench` block) depends on the machine's load; sizes do not.

#[allow(dead_code)]
#[path = "../common/node_exporter.rs"]
mod node_exporter;
#[allow(dead_code)]
#[path = "../compare/payload.rs"]
mod payload;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use payload::PayloadSpec;
use timbala::model::{Labels, Sample};
use timbala::tsdb::block::{dir_size, Block, BlockWriter, ChunkFormat};
use timbala::tsdb::index::PostingsSource;

const HOUR: i64 = 3_600_000;

struct Series {
    labels: Labels,
    kind: String,
    samples: Vec<Sample>,
}

fn build(spec: &PayloadSpec) -> Vec<Series> {
    let catalogue = payload::catalogue(spec);
    let mut out: Vec<Series> = catalogue
        .iter()
        .map(|(_, s)| Series {
            labels: s.labels.clone(),
            kind: format!("{:?}", s.kind)
                .split([' ', '('])
                .next()
                .unwrap_or_default()
                .to_string(),
            samples: Vec::with_capacity(spec.scrapes as usize),
        })
        .collect();
    payload::generate(spec, &catalogue, |_, i, t, v| {
        out[i].samples.push(Sample::new(t, v))
    });
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    out
}

/// Writes the samples of `series` within `[from, to)` as one block; returns its size.
fn write_block(dir: &Path, series: &[Series], from: i64, to: i64, format: ChunkFormat) -> u64 {
    let mut writer = BlockWriter::with_format(dir, format).expect("block writer");
    for s in series {
        let lo = s.samples.partition_point(|x| x.t < from);
        let hi = s.samples.partition_point(|x| x.t < to);
        writer
            .add_series_samples(s.labels.clone(), &s.samples[lo..hi])
            .expect("add series");
    }
    let meta = writer
        .finish(1, Vec::new())
        .expect("finish")
        .expect("block");
    dir_size(&dir.join(&meta.ulid)).expect("block size")
}

fn format_name(format: ChunkFormat) -> &'static str {
    match format {
        ChunkFormat::Xor => "XOR (version 1, before)",
        ChunkFormat::Packed => "packed (version 2, after)",
    }
}

/// Decodes every sample of every block in `dir`; returns (samples, best seconds).
fn decode_speed(dir: &Path) -> (u64, f64) {
    let blocks: Vec<Block> = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| Block::open(&e.path()).expect("open block"))
        .collect();
    let mut best = f64::MAX;
    let mut total = 0;
    for _ in 0..3 {
        let started = Instant::now();
        total = 0u64;
        let mut out = Vec::with_capacity(2_000);
        for b in &blocks {
            for r in b.index.all_postings() {
                let (_, metas) = b.index.series(r).expect("series");
                out.clear();
                b.samples(r, &metas, i64::MIN, i64::MAX, &mut out)
                    .expect("samples");
                total += out.len() as u64;
            }
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    (total, best)
}

/// Bytes per sample of each series kind's value columns in a packed block (timestamp
/// records and the index counted apart).
fn packed_breakdown(dir: &Path, series: &[Series], samples: u64) {
    let entry = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .next()
        .expect("a block");
    let block = Block::open(&entry.path()).expect("open block");
    let kind_of: BTreeMap<&Labels, (&str, u64)> = series
        .iter()
        .map(|s| (&s.labels, (s.kind.as_str(), s.samples.len() as u64)))
        .collect();
    let mut by_kind: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut value_bytes = 0;
    for r in block.index.all_postings() {
        let (labels, metas) = block.index.series(r).expect("series");
        let (kind, n) = kind_of.get(&labels).copied().unwrap_or(("?", 0));
        let slot = by_kind.entry(kind).or_default();
        for &(_, _, off) in &metas {
            let len = block.chunk(off).expect("chunk").len() as u64;
            slot.0 += len;
            value_bytes += len;
        }
        slot.1 += n;
    }
    let index = std::fs::metadata(entry.path().join("index"))
        .expect("index")
        .len();
    let chunks = std::fs::metadata(entry.path().join("chunks"))
        .expect("chunks")
        .len();
    println!(
        "  packed block: chunks file {:.3} B/sample (value records {:.3}, timestamp records \
         and framing {:.3}), index {:.3} B/sample",
        chunks as f64 / samples as f64,
        value_bytes as f64 / samples as f64,
        (chunks - value_bytes) as f64 / samples as f64,
        index as f64 / samples as f64
    );
    for (kind, (bytes, n)) in by_kind {
        println!(
            "    {kind:<14} {:>6.1}% of samples, value record bytes/sample {:.3}",
            100.0 * n as f64 / samples as f64,
            bytes as f64 / n.max(1) as f64
        );
    }
}

fn main() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let make_bench = PayloadSpec {
        hosts: 40,
        services: 20,
        scrapes: 480,
        connections: 1,
        start_ms: node_exporter::START_MS,
        jitter_share: 1.0,
        jitter_ms: 2,
    };
    let six_hours = PayloadSpec {
        hosts: 21,
        services: 0,
        scrapes: 1440,
        ..make_bench.clone()
    };

    let series = build(&make_bench);
    let samples: u64 = series.iter().map(|s| s.samples.len() as u64).sum();
    println!(
        "make bench payload: {} series, {samples} samples, one block",
        series.len()
    );
    for format in [ChunkFormat::Xor, ChunkFormat::Packed] {
        let dir = scratch.path().join(format!("bench-{format:?}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let bytes = write_block(&dir, &series, i64::MIN, i64::MAX, format);
        println!(
            "  {:<26} {bytes:>11} bytes  {:.3} bytes/sample",
            format_name(format),
            bytes as f64 / samples as f64
        );
    }
    packed_breakdown(&scratch.path().join("bench-Packed"), &series, samples);
    for format in [ChunkFormat::Xor, ChunkFormat::Packed] {
        let (n, secs) = decode_speed(&scratch.path().join(format!("bench-{format:?}")));
        println!(
            "  decode {:<26} {:.1} M samples/s ({n} samples in {secs:.3} s)",
            format_name(format),
            n as f64 / secs / 1e6
        );
    }
    drop(series);

    let series = build(&six_hours);
    let samples: u64 = series.iter().map(|s| s.samples.len() as u64).sum();
    let first = series
        .iter()
        .filter_map(|s| s.samples.first())
        .map(|s| s.t)
        .min()
        .expect("samples");
    println!("6 h payload: {} series, {samples} samples", series.len());
    for format in [ChunkFormat::Xor, ChunkFormat::Packed] {
        let dir = scratch.path().join(format!("six-{format:?}"));
        std::fs::create_dir_all(&dir).expect("dir");
        // Head cuts: blocks aligned to the 2 h block duration.
        let start = first.div_euclid(2 * HOUR) * 2 * HOUR;
        let cuts: u64 = (0..4)
            .map(|i| {
                let from = start + i * 2 * HOUR;
                write_block(&dir, &series, from, from + 2 * HOUR, format)
            })
            .sum();
        let whole = scratch.path().join(format!("six-one-{format:?}"));
        std::fs::create_dir_all(&whole).expect("dir");
        let one = write_block(&whole, &series, i64::MIN, i64::MAX, format);
        println!(
            "  {:<26} 2 h blocks: {:.3} bytes/sample   one 6 h block: {:.3} bytes/sample",
            format_name(format),
            cuts as f64 / samples as f64,
            one as f64 / samples as f64
        );
    }
    packed_breakdown(&scratch.path().join("six-one-Packed"), &series, samples);
}
