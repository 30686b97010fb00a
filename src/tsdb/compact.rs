//! Compaction: merging blocks into larger ones.
//!
//! Owns: choosing which blocks to merge (`plan`) and merging them into one new block
//! (`merge_blocks`), which also drops tombstoned samples and deduplicates samples that
//! overlapping blocks share (a timestamp with two values keeps the conflict rule's
//! winner, ADR 0011); native histograms likewise, where a timestamp two blocks hold
//! keeps the histogram of the block written last (greatest ULID), as reads do (ADR
//! 0030). Ranges grow exponentially like Prometheus's: the block duration times 3, 9,
//! 27, ... Calls `block` (which encodes the merged samples), `tombstones`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::block::{Block, BlockMeta, BlockWriter, ChunkMeta};
use super::index::{PostingsSource, SeriesRef};
use crate::model::histogram::{merge_sorted_histograms, HistogramSample};
use crate::model::merge_sorted_samples;
use crate::model::{Labels, Sample};
use crate::storage::StorageError;

/// The compaction ranges: `block_duration * 3^i` for i in 0..levels, capped so a block
/// never spans more than a tenth of the retention time (when retention is set).
pub fn ranges(block_duration_ms: i64, retention_ms: i64, levels: usize) -> Vec<i64> {
    let mut out = vec![block_duration_ms.max(1)];
    while out.len() < levels {
        let next = out[out.len() - 1].saturating_mul(3);
        if retention_ms > 0 && next > retention_ms / 10 {
            break;
        }
        out.push(next);
    }
    out
}

/// Picks the next group of blocks to merge (indexes into `metas`, which is sorted by
/// min time), or None. Overlapping blocks come first (they would otherwise make reads
/// merge twice); then, for each range from small to large, blocks that fall in one
/// aligned window which newer data has already moved past.
pub fn plan(metas: &[BlockMeta], ranges: &[i64]) -> Option<Vec<usize>> {
    if let Some(group) = overlapping_group(metas) {
        return Some(group);
    }
    let newest_max = metas.iter().map(|m| m.max_time).max()?;
    for &range in ranges.iter().skip(1) {
        let mut windows: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, m) in metas.iter().enumerate() {
            let start = m.min_time.div_euclid(range) * range;
            if m.max_time <= start.saturating_add(range) {
                windows.entry(start).or_default().push(i);
            }
        }
        for (start, group) in windows {
            let closed = newest_max > start.saturating_add(range)
                || group
                    .iter()
                    .any(|&i| metas[i].max_time - metas[i].min_time >= range);
            if group.len() > 1 && closed {
                return Some(group);
            }
        }
    }
    None
}

fn overlapping_group(metas: &[BlockMeta]) -> Option<Vec<usize>> {
    let mut group: Vec<usize> = Vec::new();
    let mut group_max = i64::MIN;
    for (i, m) in metas.iter().enumerate() {
        if !group.is_empty() && m.min_time < group_max {
            group.push(i);
            group_max = group_max.max(m.max_time);
            continue;
        }
        if group.len() > 1 {
            return Some(group);
        }
        group = vec![i];
        group_max = m.max_time;
    }
    (group.len() > 1).then_some(group)
}

/// Merges `blocks` into one new block under `parent`, applying their tombstones.
/// Returns None when nothing survives.
pub fn merge_blocks(
    parent: &Path,
    blocks: &[Arc<Block>],
) -> Result<Option<BlockMeta>, StorageError> {
    // labels -> (block, series ref, chunk metas, histogram chunk metas) for every
    // source of that series, blocks visited oldest written first so histograms of a
    // later block win.
    type Sources = Vec<(usize, SeriesRef, Vec<ChunkMeta>, Vec<ChunkMeta>)>;
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by(|&a, &b| blocks[a].meta.ulid.cmp(&blocks[b].meta.ulid));
    let mut series: BTreeMap<Labels, Sources> = BTreeMap::new();
    for bi in order {
        let block = &blocks[bi];
        for r in block.index.all_postings() {
            let (labels, metas, hist_metas) = block.index.series_with_histograms(r)?;
            series
                .entry(labels)
                .or_default()
                .push((bi, r, metas, hist_metas));
        }
    }
    let mut writer = BlockWriter::new(parent)?;
    let mut samples: Vec<Sample> = Vec::new();
    for (labels, sources) in series {
        let mut merged: Vec<Sample> = Vec::new();
        let mut merged_hist: Vec<HistogramSample> = Vec::new();
        for (bi, r, metas, hist_metas) in sources {
            samples.clear();
            blocks[bi].samples(r, &metas, i64::MIN, i64::MAX, &mut samples)?;
            merged = merge_sorted_samples(merged, std::mem::take(&mut samples));
            let mut hist = Vec::new();
            blocks[bi].histograms(r, &hist_metas, i64::MIN, i64::MAX, &mut hist)?;
            merged_hist = merge_sorted_histograms(merged_hist, hist);
        }
        writer.add_series_samples_with_histograms(labels, &merged, &merged_hist)?;
    }
    let level = blocks
        .iter()
        .map(|b| b.meta.compaction.level)
        .max()
        .unwrap_or(0)
        + 1;
    let mut sources: Vec<String> = blocks
        .iter()
        .flat_map(|b| b.meta.compaction.sources.iter().cloned())
        .collect();
    sources.sort();
    sources.dedup();
    writer.finish(level, sources)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsdb::block::{BlockStats, Compaction};

    fn meta(min: i64, max: i64) -> BlockMeta {
        BlockMeta {
            ulid: format!("{min}-{max}"),
            min_time: min,
            max_time: max,
            stats: BlockStats::default(),
            compaction: Compaction::default(),
            version: 1,
        }
    }

    #[test]
    fn ranges_grow_by_three_and_respect_retention() {
        assert_eq!(ranges(10, 0, 4), vec![10, 30, 90, 270]);
        assert_eq!(ranges(10, 1000, 5), vec![10, 30, 90]);
    }

    #[test]
    fn plans_overlaps_first_then_closed_windows() {
        let r = ranges(10, 0, 3);
        assert_eq!(
            plan(&[meta(0, 10), meta(5, 15), meta(20, 30)], &r),
            Some(vec![0, 1])
        );
        // Three 10-wide blocks fill the 30 window; a newer block closes it.
        let blocks = [meta(0, 10), meta(10, 20), meta(20, 30), meta(30, 40)];
        assert_eq!(plan(&blocks, &r), Some(vec![0, 1, 2]));
        // The window still being filled is left alone.
        assert_eq!(plan(&[meta(30, 40), meta(40, 50)], &r), None);
        assert_eq!(
            plan(&[meta(30, 40), meta(40, 50), meta(60, 70)], &r),
            Some(vec![0, 1])
        );
        assert_eq!(plan(&[], &r), None);
    }
}
