//! Digests of stored samples, per series and time window, for comparing replicas
//! (anti-entropy, ADR 0016).
//!
//! Owns: the hash of one sample and how a (series, window) digest combines them (a
//! wrapping sum, so the digest does not depend on the order samples are read in or on
//! how they are split over blocks and the head), and a per-block cache of those digests
//! keyed by the block's ULID and the window width: blocks are immutable, so a pass over
//! unchanged blocks only reads the head. The cached digests of blocks that touch one
//! window without overlapping in time add up; a window where samples may sit in two
//! sources (overlapping blocks, the head, a block with tombstones) is computed from the
//! merged, deduplicated samples instead, so the digest always describes what a read
//! returns. Calls `block`, `head` and `model` only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use super::block::{Block, ChunkMeta};
use super::head::{lock, Head, MemSeries};
use super::index::{PostingsSource, SeriesRef};
use crate::model::{merge_sorted_samples, Labels, Sample};
use crate::storage::StorageError;

/// The digest of one series over one time window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowDigest {
    /// Start of the window (a multiple of the window width), in milliseconds.
    pub window: i64,
    /// Wrapping sum of `sample_hash` over the window's samples.
    pub digest: u64,
    pub samples: u64,
}

/// Every window digest of one series.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesDigests {
    pub labels: Labels,
    pub windows: Vec<WindowDigest>,
}

/// The digests of a selection of series, and what computing them read.
#[derive(Clone, Debug, Default)]
pub struct DigestReport {
    pub series: Vec<SeriesDigests>,
    /// Chunk bytes decoded (blocks not in the cache, windows computed from merged
    /// samples) plus 16 bytes per head sample read.
    pub bytes_read: u64,
    /// Blocks whose digests came from the cache.
    pub blocks_cached: u64,
}

/// splitmix64's finaliser: a fast, well-mixing bijection on u64.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of one sample: its timestamp and its value's bit pattern.
pub fn sample_hash(s: &Sample) -> u64 {
    mix64(mix64(s.t as u64) ^ s.v.to_bits().rotate_left(29))
}

/// Window digests of one series' time-sorted, deduplicated samples.
pub fn window_digests(samples: &[Sample], window_ms: i64) -> Vec<WindowDigest> {
    let mut out: Vec<WindowDigest> = Vec::new();
    for s in samples {
        let window = s.t.div_euclid(window_ms).saturating_mul(window_ms);
        match out.last_mut() {
            Some(w) if w.window == window => {
                w.digest = w.digest.wrapping_add(sample_hash(s));
                w.samples += 1;
            }
            _ => out.push(WindowDigest {
                window,
                digest: sample_hash(s),
                samples: 1,
            }),
        }
    }
    out
}

/// The window starts `[min_t, max_t]` touches.
fn windows_of(min_t: i64, max_t: i64, window_ms: i64) -> impl Iterator<Item = i64> {
    let first = min_t.div_euclid(window_ms);
    let last = max_t.div_euclid(window_ms);
    (first..=last).map(move |w| w.saturating_mul(window_ms))
}

/// Every series of a block with its window digests.
type SeriesWindows = Vec<(Labels, Vec<WindowDigest>)>;
type BlockDigests = Arc<SeriesWindows>;

/// Window digests of immutable blocks, by (block ULID, window width).
#[derive(Default)]
pub struct DigestCache {
    blocks: Mutex<HashMap<(String, i64), BlockDigests>>,
}

impl DigestCache {
    /// Forgets blocks no longer in `live` (compacted away, deleted by retention).
    fn retain(&self, live: &BTreeSet<&str>) {
        lock(&self.blocks).retain(|(ulid, _), _| live.contains(ulid.as_str()));
    }

    fn get(&self, ulid: &str, window_ms: i64) -> Option<BlockDigests> {
        lock(&self.blocks)
            .get(&(ulid.to_string(), window_ms))
            .cloned()
    }

    fn put(&self, ulid: &str, window_ms: i64, digests: BlockDigests) {
        lock(&self.blocks).insert((ulid.to_string(), window_ms), digests);
    }
}

/// Computes the window digests of the series `include` accepts, over samples at or
/// before `upto`, from `blocks` and `head`.
pub fn compute(
    blocks: &[Arc<Block>],
    head: &Head,
    cache: &DigestCache,
    window_ms: i64,
    upto: i64,
    include: &mut dyn FnMut(&Labels) -> bool,
) -> Result<DigestReport, StorageError> {
    let window_ms = window_ms.max(1);
    let mut report = DigestReport::default();
    // Windows whose samples may sit in more than one source (the same sample counted
    // twice, or a value the conflict rule replaces) are read merged: where two blocks
    // overlap in time, where the head has data, where a block has tombstones, and from
    // the window holding `upto` on (only partly settled, cut at `upto`). Elsewhere the
    // blocks touching a window hold disjoint samples, so their cached digests add up.
    let mut merged_windows: BTreeSet<i64> = BTreeSet::new();
    let mut newest_end = i64::MIN;
    for b in blocks {
        let (min, max) = (b.meta.min_time, b.meta.max_time - 1);
        if b.has_tombstones() {
            merged_windows.extend(windows_of(min, max, window_ms));
        }
        if min <= newest_end {
            merged_windows.extend(windows_of(min, newest_end.min(max), window_ms));
        }
        newest_end = newest_end.max(max);
    }
    if let Some((min, max)) = head.time_range() {
        // The head is never cached: its windows are always read.
        if min <= upto {
            merged_windows.extend(windows_of(min, max.min(upto), window_ms));
        }
    }
    let open_from = upto.div_euclid(window_ms).saturating_mul(window_ms);
    merged_windows.insert(open_from);
    let mut by_series: BTreeMap<Labels, BTreeMap<i64, WindowDigest>> = BTreeMap::new();
    let live: BTreeSet<&str> = blocks.iter().map(|b| b.meta.ulid.as_str()).collect();
    cache.retain(&live);
    for b in blocks.iter().filter(|b| !b.has_tombstones()) {
        let digests = match cache.get(&b.meta.ulid, window_ms) {
            Some(d) => {
                report.blocks_cached += 1;
                d
            }
            None => {
                let (d, bytes) = block_digests(b, window_ms)?;
                report.bytes_read += bytes;
                let d = Arc::new(d);
                cache.put(&b.meta.ulid, window_ms, d.clone());
                d
            }
        };
        for (labels, windows) in digests.iter() {
            let kept: Vec<&WindowDigest> = windows
                .iter()
                .filter(|w| w.window < open_from && !merged_windows.contains(&w.window))
                .collect();
            if kept.is_empty() || !include(labels) {
                continue;
            }
            let entry = by_series.entry(labels.clone()).or_default();
            for w in kept {
                let sum = entry.entry(w.window).or_insert(WindowDigest {
                    window: w.window,
                    digest: 0,
                    samples: 0,
                });
                sum.digest = sum.digest.wrapping_add(w.digest);
                sum.samples += w.samples;
            }
        }
    }
    // Adjacent merged windows are read in one sweep over the sources.
    for (first, last) in runs(&merged_windows, window_ms) {
        if first > upto {
            break;
        }
        let end = last.saturating_add(window_ms - 1).min(upto);
        report.bytes_read += merged_digests(
            blocks,
            head,
            (first, end),
            window_ms,
            &mut *include,
            &mut by_series,
        )?;
    }
    report.series = by_series
        .into_iter()
        .map(|(labels, windows)| SeriesDigests {
            labels,
            windows: windows.into_values().collect(),
        })
        .collect();
    Ok(report)
}

/// The runs of consecutive windows in `windows`, as (first start, last start).
fn runs(windows: &BTreeSet<i64>, window_ms: i64) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for &w in windows {
        match out.last_mut() {
            Some((_, last)) if last.saturating_add(window_ms) == w => *last = w,
            _ => out.push((w, w)),
        }
    }
    out
}

/// Digests of every series of one block (no tombstones), and the chunk bytes read.
fn block_digests(block: &Block, window_ms: i64) -> Result<(SeriesWindows, u64), StorageError> {
    let mut out = Vec::new();
    let mut bytes = 0u64;
    let mut samples = Vec::new();
    for r in block.index.all_postings() {
        let (labels, metas) = block.index.series(r)?;
        for &(_, _, off) in &metas {
            bytes += block.chunk(off)?.len() as u64;
        }
        samples.clear();
        block.samples(r, &metas, i64::MIN, i64::MAX, &mut samples)?;
        out.push((labels, window_digests(&samples, window_ms)));
    }
    Ok((out, bytes))
}

/// Where one series' samples sit: chunks of blocks, and the head.
#[derive(Default)]
struct SeriesSources {
    blocks: Vec<(usize, SeriesRef, Vec<ChunkMeta>)>,
    head: Option<Arc<MemSeries>>,
}

/// Window digests over `[mint, maxt]` of the included series, each computed from its
/// samples merged over blocks and head, put into `by_series`; answers the bytes read.
///
/// Series by series: first every source of every included series is noted (labels and
/// chunk references, no samples), then each series' samples are read, merged, digested
/// and dropped before the next. A pass over the whole head therefore holds one series'
/// samples at a time, not the head decoded at 16 bytes a sample (which made a single
/// node's peak memory follow its head size, bench/RESULTS.md).
fn merged_digests(
    blocks: &[Arc<Block>],
    head: &Head,
    (mint, maxt): (i64, i64),
    window_ms: i64,
    include: &mut dyn FnMut(&Labels) -> bool,
    by_series: &mut BTreeMap<Labels, BTreeMap<i64, WindowDigest>>,
) -> Result<u64, StorageError> {
    let mut sources: BTreeMap<Labels, SeriesSources> = BTreeMap::new();
    let mut bytes = 0u64;
    for (i, b) in blocks.iter().enumerate() {
        if !b.overlaps(mint, maxt) {
            continue;
        }
        for r in b.index.all_postings() {
            let (labels, metas) = b.index.series(r)?;
            if !metas.iter().any(|&(a, z, _)| z >= mint && a <= maxt) || !include(&labels) {
                continue;
            }
            sources
                .entry(labels)
                .or_default()
                .blocks
                .push((i, r, metas));
        }
    }
    for series in head.all_series() {
        if !series.data().overlaps(mint, maxt) {
            continue;
        }
        let labels = series.labels();
        if include(&labels) {
            sources.entry(labels).or_default().head = Some(series);
        }
    }
    let mut samples = Vec::new();
    for (labels, found) in sources {
        samples.clear();
        for (i, r, metas) in &found.blocks {
            let b = &blocks[*i];
            for &(a, z, off) in metas {
                if z >= mint && a <= maxt {
                    bytes += b.chunk(off)?.len() as u64;
                }
            }
            let mut from_block = Vec::new();
            b.samples(*r, metas, mint, maxt, &mut from_block)?;
            samples = merge_sorted_samples(std::mem::take(&mut samples), from_block);
        }
        if let Some(series) = &found.head {
            let mut from_head = Vec::new();
            series.data().samples_in(mint, maxt, &mut from_head);
            bytes += 16 * from_head.len() as u64;
            samples = merge_sorted_samples(std::mem::take(&mut samples), from_head);
        }
        if samples.is_empty() {
            continue;
        }
        let entry = by_series.entry(labels).or_default();
        for d in window_digests(&samples, window_ms) {
            entry.insert(d.window, d);
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: i64, v: f64) -> Sample {
        Sample::new(t, v)
    }

    #[test]
    fn digests_do_not_depend_on_how_samples_are_split() {
        let all: Vec<Sample> = (0..100).map(|i| s(i * 7, i as f64)).collect();
        let whole = window_digests(&all, 50);
        // The same samples split in two interleaved halves, summed per window.
        let (a, b): (Vec<Sample>, Vec<Sample>) = all.iter().partition(|x| x.t % 2 == 0);
        let mut sums: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
        for d in window_digests(&a, 50)
            .into_iter()
            .chain(window_digests(&b, 50))
        {
            let e = sums.entry(d.window).or_default();
            e.0 = e.0.wrapping_add(d.digest);
            e.1 += d.samples;
        }
        let split: Vec<WindowDigest> = sums
            .into_iter()
            .map(|(window, (digest, samples))| WindowDigest {
                window,
                digest,
                samples,
            })
            .collect();
        assert_eq!(whole, split);
    }

    #[test]
    fn any_difference_changes_the_digest() {
        let base = vec![s(0, 1.0), s(10, 2.0), s(20, 3.0)];
        let d = window_digests(&base, 100)[0].digest;
        let other_value = vec![s(0, 1.0), s(10, 2.5), s(20, 3.0)];
        let other_time = vec![s(0, 1.0), s(11, 2.0), s(20, 3.0)];
        let missing = vec![s(0, 1.0), s(20, 3.0)];
        for o in [other_value, other_time, missing] {
            assert_ne!(window_digests(&o, 100)[0].digest, d);
        }
        // Swapped values at two times differ too (a plain XOR of parts would not).
        let swapped = vec![s(0, 2.0), s(10, 1.0), s(20, 3.0)];
        assert_ne!(window_digests(&swapped, 100)[0].digest, d);
    }

    #[test]
    fn adjacent_windows_are_read_in_one_run() {
        let set: BTreeSet<i64> = [0, 100, 200, 500, 700, 800].into_iter().collect();
        assert_eq!(runs(&set, 100), vec![(0, 200), (500, 500), (700, 800)]);
        assert!(runs(&BTreeSet::new(), 100).is_empty());
    }

    #[test]
    fn windows_are_aligned_also_before_the_epoch() {
        let d = window_digests(&[s(-1, 0.0), s(0, 0.0), s(99, 0.0), s(100, 0.0)], 100);
        let starts: Vec<i64> = d.iter().map(|w| w.window).collect();
        assert_eq!(starts, vec![-100, 0, 100]);
        assert_eq!(d[1].samples, 2);
    }
}
