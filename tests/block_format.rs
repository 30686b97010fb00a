//! Block formats through the real binary (ADR 0026): a data directory written in the
//! previous format (chunks file version 1, XOR chunks; written here by the library's
//! kept XOR writer, which is that format byte for byte) is read by the binary, every
//! sample bit-exact; compaction turns such blocks into version-2 (packed) blocks that
//! read back identical, also after a restart. Remote read still streams Prometheus
//! XOR chunks for packed blocks.

mod common;
#[path = "support/remote_read.rs"]
mod remote_read;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{now_ms, wait_until, Node};
use remote_read::{remote_read, ReadSeries};
use timbala::model::{Labels, Sample, STALE_NAN_BITS};
use timbala::proto::{MatcherType, ResponseType};
use timbala::tsdb::block::{BlockWriter, ChunkFormat};

const HOUR: i64 = 3_600_000;
const BLOCK: i64 = 2 * HOUR;
const INTERVAL: i64 = 15_000;
const METRIC: &str = "block_format";

/// Labels -> (time, value bits), as remote read answers.
type Expected = BTreeMap<Vec<(String, String)>, Vec<(i64, u64)>>;

/// Values that break lossy or naive encodings, repeated through a series.
const ODD_BITS: [u64; 12] = [
    0x7ff8_0000_0000_0001, // NaN with a payload
    0xfff8_0000_0000_0000, // negative NaN
    STALE_NAN_BITS,
    0x8000_0000_0000_0000, // -0.0
    0x7ff0_0000_0000_0000, // +Inf
    0xfff0_0000_0000_0000, // -Inf
    0x0000_0000_0000_0001, // smallest subnormal
    0x000f_ffff_ffff_ffff, // largest subnormal
    0x7fef_ffff_ffff_ffff, // f64::MAX
    0x3fb9_9999_9999_999a, // 0.1
    0x3fd3_3333_3333_3334, // 0.30000000000000004
    0x43e0_0000_0000_0000, // 2^63
];

/// The value of series `kind` at scrape `i` (the scrape's index across all blocks).
fn value(kind: usize, i: i64) -> f64 {
    match kind {
        0 => (1_000_000 + i * 137 + i % 7) as f64 * 0.01, // CPU seconds, ticks * 0.01
        1 => (500_000 + i * 1337) as f64 / 100.0,         // the same, ticks / 100
        2 => ((i * 31) % 200) as f64 * 0.01 + 1.0,        // load, 0.01 steps
        3 => (i * 48_271 % 65_521) as f64 * 1024.0,       // memory in kB steps
        4 => 1.5e9,                                       // constant
        5 => f64::from_bits(ODD_BITS[(i % 12) as usize]), // adversarial
        6 => f64::from_bits(
            0x3f50_0000_0000_0000 ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 12,
        ), // full precision
        _ => {
            if i % 5 == 0 {
                f64::from_bits(ODD_BITS[(i / 5 % 12) as usize])
            } else {
                i as f64
            }
        }
    }
}

const KINDS: usize = 8;

fn labels(kind: usize) -> Labels {
    Labels::from_pairs([("__name__", METRIC), ("kind", &kind.to_string())])
}

/// Samples of every series in `[from, from + BLOCK)`; odd kinds' scrapes miss the grid
/// by up to 4 ms, as real scrapes do (late only, so every block stays in its window).
fn block_samples(base: i64, from: i64) -> Vec<(Labels, Vec<Sample>)> {
    (0..KINDS)
        .map(|kind| {
            let samples = (0..BLOCK / INTERVAL)
                .map(|j| {
                    let i = (from - base) / INTERVAL + j;
                    let jitter = if kind % 2 == 1 { i * 7 % 5 } else { 0 };
                    Sample::new(from + j * INTERVAL + jitter, value(kind, i))
                })
                .collect();
            (labels(kind), samples)
        })
        .collect()
}

/// Writes one previous-format block covering `[from, from + BLOCK)` and records it.
fn write_xor_block(data: &Path, base: i64, from: i64, expected: &mut Expected) {
    let mut writer = BlockWriter::with_format(data, ChunkFormat::Xor).expect("block writer");
    for (labels, samples) in block_samples(base, from) {
        let key = labels
            .iter()
            .map(|l| (l.name.to_string(), l.value.to_string()))
            .collect();
        expected
            .entry(key)
            .or_default()
            .extend(samples.iter().map(|s| (s.t, s.v.to_bits())));
        writer
            .add_series_samples(labels, &samples)
            .expect("add series");
    }
    let meta = writer
        .finish(1, Vec::new())
        .expect("finish")
        .expect("a block");
    assert_eq!(meta.version, 1);
}

/// (chunks file version byte, compaction level) of every block in `data`.
fn block_formats(data: &Path) -> Vec<(u8, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(data).expect("data dir").flatten() {
        let dir: PathBuf = entry.path();
        let (Ok(chunks), Ok(meta)) = (
            std::fs::read(dir.join("chunks")),
            std::fs::read(dir.join("meta.json")),
        ) else {
            continue;
        };
        let meta: serde_json::Value = serde_json::from_slice(&meta).expect("meta JSON");
        let level = meta["compaction"]["level"].as_u64().expect("level");
        out.push((chunks[4], level));
    }
    out.sort_unstable();
    out
}

/// Reads everything back both ways and compares every sample's bits.
fn assert_reads_back(node: &Node, expected: &Expected, from: i64, to: i64) {
    let want: Vec<ReadSeries> = expected
        .iter()
        .map(|(labels, samples)| ReadSeries {
            labels: labels.clone(),
            samples: samples.clone(),
        })
        .collect();
    let matchers = [(MatcherType::Eq, "__name__", METRIC)];
    for rt in [ResponseType::Samples, ResponseType::StreamedXorChunks] {
        let mut got = remote_read(node, &matchers, from, to, rt);
        got.sort();
        let mut want = want.clone();
        for s in &mut want {
            s.samples.sort_unstable();
        }
        if rt == ResponseType::Samples {
            // proto3 leaves out a double equal to zero, and -0.0 == 0.0, so the SAMPLES
            // response carries -0.0 as 0.0 (Prometheus's encoder does the same). The
            // streamed XOR chunks below carry its bits.
            for (_, bits) in want.iter_mut().flat_map(|s| s.samples.iter_mut()) {
                if *bits == (-0.0f64).to_bits() {
                    *bits = 0;
                }
            }
        }
        assert_eq!(got.len(), want.len(), "{rt:?}: series");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.labels, w.labels, "{rt:?}");
            assert_eq!(g.samples.len(), w.samples.len(), "{rt:?} {:?}", w.labels);
            let first_difference = g.samples.iter().zip(&w.samples).find(|(a, b)| a != b);
            assert!(
                first_difference.is_none(),
                "{rt:?} {:?}: first difference (got, want) {first_difference:x?}",
                w.labels
            );
        }
    }
}

#[test]
fn previous_format_blocks_are_read_and_compacted_into_packed_blocks() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    // A 6 h compaction window (3 x the 2 h block duration) that ended a day ago.
    let window = 3 * BLOCK;
    let base = (now_ms() - 30 * HOUR).div_euclid(window) * window;
    let mut expected = Expected::new();

    // First start: two previous-format blocks in different windows, which compaction
    // leaves alone, so the binary reads version-1 chunks.
    write_xor_block(&data, base, base, &mut expected);
    write_xor_block(&data, base, base + window, &mut expected);
    assert_eq!(block_formats(&data), vec![(1, 1), (1, 1)]);
    let mut node = Node::start_in(&data, &[]);
    assert_reads_back(&node, &expected, base - 1, base + 2 * window);
    assert_eq!(block_formats(&data), vec![(1, 1), (1, 1)]);
    node.terminate();

    // Second start: the first window filled and closed; compaction merges its three
    // version-1 blocks into one version-2 block.
    write_xor_block(&data, base, base + BLOCK, &mut expected);
    write_xor_block(&data, base, base + 2 * BLOCK, &mut expected);
    let node = Node::start_in(&data, &[]);
    wait_until(
        "compaction of the filled window",
        Duration::from_secs(90),
        || block_formats(&data) == vec![(1, 1), (2, 2)],
    );
    assert_reads_back(&node, &expected, base - 1, base + 2 * window);
    // A narrower range cuts inside the packed chunks.
    let narrow: Expected = expected
        .iter()
        .map(|(l, s)| {
            let kept = s
                .iter()
                .copied()
                .filter(|&(t, _)| t >= base + HOUR && t <= base + 5 * HOUR)
                .collect();
            (l.clone(), kept)
        })
        .collect();
    assert_reads_back(&node, &narrow, base + HOUR, base + 5 * HOUR);
    drop(node);

    // Third start: the packed block and the remaining version-1 block both load.
    let node = Node::start_in(&data, &[]);
    assert_reads_back(&node, &expected, base - 1, base + 2 * window);
}
