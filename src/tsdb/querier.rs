//! Reads across the head and the blocks: select, series, label names and values.
//!
//! Owns: gathering matching series from every source that overlaps the time range and
//! merging them so each series appears once, its samples in time order with identical
//! timestamps deduplicated (the value kept is the conflict rule's, ADR 0011); native
//! histogram samples apart (`select_histograms`: the newest source's histogram is kept
//! at a shared timestamp, ADR 0030). Calls `head`, `block`, `index` and `storage` types.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;

use super::block::{Block, ChunkMeta};
use super::head::Head;
use super::index::{select_postings, PostingsSource};
use crate::model::histogram::{merge_sorted_histograms, HistogramSample};
use crate::model::merge_sorted_samples;
use crate::model::{HistogramSeries, Labels, Matcher, Sample, Series};
use crate::storage::{SelectError, StorageError};

/// A consistent view of the data: the blocks and the head at one moment.
pub struct Querier<'a> {
    pub blocks: &'a [Arc<Block>],
    pub head: &'a Head,
}

/// Accumulates series from several sources, enforcing the sample limit.
///
/// Series arrive in label order within each source (block indexes are sorted, head
/// series are visited sorted), so they are appended to a vector and sorted once at the
/// end, a linear pass when only one source contributed, instead of being looked up in
/// an ordered map per series (two searches of full label-set compares each, which were
/// a third of a dashboard's instructions: RESULTS.md, issue 13).
struct Merger {
    series: Vec<(Labels, Vec<Sample>)>,
    /// Samples held, duplicates across sources included.
    held: usize,
    /// `held` above which the duplicates are merged to check the limit exactly.
    check_above: usize,
    max_samples: usize,
}

impl Merger {
    fn new(max_samples: usize) -> Self {
        Merger {
            series: Vec::new(),
            held: 0,
            check_above: max_samples,
            max_samples,
        }
    }

    fn add(&mut self, labels: Labels, samples: Vec<Sample>) -> Result<(), SelectError> {
        if samples.is_empty() {
            return Ok(());
        }
        self.held += samples.len();
        self.series.push((labels, samples));
        if self.max_samples > 0 && self.held > self.check_above {
            self.merge_duplicates();
            if self.held > self.max_samples {
                return Err(SelectError::TooManySamples);
            }
            // Holds at most twice the limit before checking again, so a query whose
            // sources overlap heavily is not merged once per series.
            self.check_above = self.held + self.max_samples;
        }
        Ok(())
    }

    /// Sorts by labels (stable: sorted runs cost a linear pass) and merges the samples
    /// of a series held by several sources, recounting `held`.
    fn merge_duplicates(&mut self) {
        self.series.sort_by(|a, b| a.0.cmp(&b.0));
        let mut merged: Vec<(Labels, Vec<Sample>)> = Vec::with_capacity(self.series.len());
        for (labels, samples) in self.series.drain(..) {
            match merged.last_mut() {
                Some(last) if last.0 == labels => {
                    last.1 = merge_sorted_samples(std::mem::take(&mut last.1), samples);
                }
                _ => merged.push((labels, samples)),
            }
        }
        self.held = merged.iter().map(|(_, s)| s.len()).sum();
        self.series = merged;
    }

    fn finish(mut self) -> Result<Vec<Series>, SelectError> {
        self.merge_duplicates();
        if self.max_samples > 0 && self.held > self.max_samples {
            return Err(SelectError::TooManySamples);
        }
        Ok(self
            .series
            .into_iter()
            .map(|(labels, samples)| Series { labels, samples })
            .collect())
    }
}

/// `Labels`'s order (label by label, name then value) on a head series' interned
/// labels, without building the `Labels`: interned strings that are the same `Arc`
/// are equal without comparing bytes.
fn cmp_interned(a: &[(Arc<str>, Arc<str>)], b: &[(Arc<str>, Arc<str>)]) -> Ordering {
    for ((an, av), (bn, bv)) in a.iter().zip(b) {
        for (x, y) in [(an, bn), (av, bv)] {
            if !Arc::ptr_eq(x, y) {
                match x.as_ref().cmp(y.as_ref()) {
                    Ordering::Equal => {}
                    unequal => return unequal,
                }
            }
        }
    }
    a.len().cmp(&b.len())
}

impl Querier<'_> {
    fn head_overlaps(&self, mint: i64, maxt: i64) -> bool {
        self.head
            .time_range()
            .is_some_and(|(a, b)| a <= maxt && b >= mint)
    }

    fn overlapping_blocks(&self, mint: i64, maxt: i64) -> impl Iterator<Item = &Arc<Block>> {
        self.blocks.iter().filter(move |b| b.overlaps(mint, maxt))
    }

    /// Calls `visit` with every matching series' labels and its samples in range. With
    /// `load_samples` false, series are visited with no samples when one of their
    /// chunks overlaps the range (as Prometheus answers series lookups).
    fn for_each_series(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        load_samples: bool,
        visit: &mut dyn FnMut(Labels, Vec<Sample>) -> Result<(), SelectError>,
    ) -> Result<(), SelectError> {
        let in_range = |metas: &[ChunkMeta]| metas.iter().any(|&(a, b, _)| b >= mint && a <= maxt);
        for block in self.overlapping_blocks(mint, maxt) {
            // A lookup also finds a series by its histogram chunks; a select of float
            // samples has no use for them.
            let lookup_histograms = !load_samples && block.index.has_histograms();
            for r in select_postings(&block.index, matchers) {
                let (labels, metas, hist_metas) = if lookup_histograms {
                    block.index.series_with_histograms(r)?
                } else {
                    let (labels, metas) = block.index.series(r)?;
                    (labels, metas, Vec::new())
                };
                let histograms_in_range = in_range(&hist_metas);
                if !in_range(&metas) && !histograms_in_range {
                    continue;
                }
                let mut samples = Vec::new();
                if load_samples || block.has_tombstones_for(r) {
                    block.samples(r, &metas, mint, maxt, &mut samples)?;
                    if samples.is_empty() && !histograms_in_range {
                        continue;
                    }
                }
                if !load_samples {
                    samples.clear();
                }
                visit(labels, samples)?;
            }
        }
        // In label order, so the merge after this is a linear pass (see `Merger`).
        let mut head_series: Vec<_> = select_postings(&*self.head.postings(), matchers)
            .into_iter()
            .filter_map(|id| self.head.get(id))
            .collect();
        head_series.sort_unstable_by(|a, b| cmp_interned(a.interned_labels(), b.interned_labels()));
        for series in head_series {
            if !load_samples {
                if series.data().overlaps(mint, maxt) {
                    visit(series.labels(), Vec::new())?;
                }
                continue;
            }
            let mut samples = Vec::new();
            series.data().samples_in(mint, maxt, &mut samples);
            if !samples.is_empty() {
                visit(series.labels(), samples)?;
            }
        }
        Ok(())
    }

    /// Matching series with their samples in `[mint, maxt]`, sorted by labels.
    pub fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        max_samples: usize,
    ) -> Result<Vec<Series>, SelectError> {
        let mut merger = Merger::new(max_samples);
        self.for_each_series(matchers, mint, maxt, true, &mut |l, s| merger.add(l, s))?;
        merger.finish()
    }

    /// Matching series with native histogram samples in `[mint, maxt]` from the blocks
    /// and the head, sorted by labels, each series once with its samples in time order.
    /// At a timestamp several sources hold (a crash between a cut's block and the WAL's
    /// truncation, or a histogram appended after its time was cut), the newest source's
    /// is kept: the head's, else the block written last (greatest ULID) — compaction
    /// keeps the same one (ADR 0030).
    pub fn select_histograms(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<HistogramSeries>, StorageError> {
        // (labels, rank of the source: older first, samples)
        let mut found: Vec<(Labels, usize, Vec<HistogramSample>)> = Vec::new();
        let mut blocks: Vec<&Arc<Block>> = self
            .overlapping_blocks(mint, maxt)
            .filter(|b| b.index.has_histograms())
            .collect();
        blocks.sort_by(|a, b| a.meta.ulid.cmp(&b.meta.ulid));
        for (rank, block) in blocks.iter().enumerate() {
            for r in select_postings(&block.index, matchers) {
                let (labels, _, hist_metas) = block.index.series_with_histograms(r)?;
                if !hist_metas.iter().any(|&(a, b, _)| b >= mint && a <= maxt) {
                    continue;
                }
                let mut samples = Vec::new();
                block.histograms(r, &hist_metas, mint, maxt, &mut samples)?;
                if !samples.is_empty() {
                    found.push((labels, rank, samples));
                }
            }
        }
        let head_rank = blocks.len();
        for id in select_postings(&*self.head.postings(), matchers) {
            let Some(series) = self.head.get(id) else {
                continue;
            };
            let mut samples = Vec::new();
            series.data().histograms_in(mint, maxt, &mut samples);
            if !samples.is_empty() {
                found.push((series.labels(), head_rank, samples));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut out: Vec<HistogramSeries> = Vec::with_capacity(found.len());
        for (labels, _, samples) in found {
            match out.last_mut() {
                Some(last) if last.labels == labels => {
                    last.samples =
                        merge_sorted_histograms(std::mem::take(&mut last.samples), samples);
                }
                _ => out.push(HistogramSeries { labels, samples }),
            }
        }
        Ok(out)
    }

    /// Label sets of matching series with a sample in range, sorted.
    pub fn series(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Labels>, StorageError> {
        let mut out = BTreeSet::new();
        self.for_each_series(matchers, mint, maxt, false, &mut |l, _| {
            out.insert(l);
            Ok(())
        })
        .map_err(into_storage_error)?;
        Ok(out.into_iter().collect())
    }

    /// Sorted label names of matching series (all series when `matchers` is empty).
    pub fn label_names(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, StorageError> {
        let mut names: BTreeSet<String> = BTreeSet::new();
        if matchers.is_empty() {
            for block in self.overlapping_blocks(mint, maxt) {
                names.extend(block.index.label_names().into_iter().map(str::to_string));
            }
            if self.head_overlaps(mint, maxt) {
                names.extend(self.head.postings().label_names().map(str::to_string));
            }
        } else {
            for labels in self.series(matchers, mint, maxt)? {
                names.extend(labels.iter().map(|l| String::from(&l.name)));
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Sorted distinct values of `name` among matching series.
    pub fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, StorageError> {
        let mut values: BTreeSet<String> = BTreeSet::new();
        if matchers.is_empty() {
            for block in self.overlapping_blocks(mint, maxt) {
                values.extend(
                    block
                        .index
                        .label_values(name)
                        .into_iter()
                        .map(str::to_string),
                );
            }
            if self.head_overlaps(mint, maxt) {
                let postings = self.head.postings();
                values.extend(postings.label_values(name).map(|(v, _)| v.to_string()));
            }
        } else {
            for labels in self.series(matchers, mint, maxt)? {
                if let Some(v) = labels.get(name) {
                    values.insert(v.to_string());
                }
            }
        }
        values.remove("");
        Ok(values.into_iter().collect())
    }

    /// Head series ids matching `matchers` (used by deletion).
    pub fn head_ids(&self, matchers: &[Matcher]) -> Vec<u64> {
        select_postings(&*self.head.postings(), matchers)
    }

    /// Every series reference in `block` matching `matchers`.
    pub fn block_refs(block: &Block, matchers: &[Matcher]) -> Vec<u64> {
        select_postings(&block.index as &dyn PostingsSource, matchers)
    }
}

fn into_storage_error(e: SelectError) -> StorageError {
    match e {
        SelectError::Storage(e) => e,
        SelectError::TooManySamples => StorageError::Other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::conflict_winner;

    fn labels(job: &str) -> Labels {
        Labels::from_pairs([("__name__", "up"), ("job", job)])
    }

    fn samples(points: &[(i64, f64)]) -> Vec<Sample> {
        points.iter().map(|&(t, v)| Sample::new(t, v)).collect()
    }

    #[test]
    fn series_held_by_several_sources_come_out_once_in_label_order() {
        let mut merger = Merger::new(0);
        // A block, then the head: each in label order, overlapping in `a`.
        merger
            .add(labels("a"), samples(&[(1, 1.0), (2, 2.0)]))
            .unwrap();
        merger.add(labels("c"), samples(&[(1, 5.0)])).unwrap();
        merger
            .add(labels("a"), samples(&[(2, 9.0), (3, 3.0)]))
            .unwrap();
        merger.add(labels("b"), samples(&[(1, 4.0)])).unwrap();
        merger.add(labels("z"), Vec::new()).unwrap();
        let out = merger.finish().unwrap();
        let jobs: Vec<_> = out.iter().map(|s| s.labels.get("job").unwrap()).collect();
        assert_eq!(jobs, ["a", "b", "c"]);
        assert_eq!(
            out[0].samples,
            samples(&[(1, 1.0), (2, conflict_winner(2.0, 9.0)), (3, 3.0)])
        );
    }

    #[test]
    fn the_sample_limit_counts_a_duplicated_sample_once() {
        let limit = 4;
        let mut merger = Merger::new(limit);
        let three = samples(&[(1, 1.0), (2, 2.0), (3, 3.0)]);
        merger.add(labels("a"), three.clone()).unwrap();
        // Six held, three distinct: under the limit.
        merger.add(labels("a"), three.clone()).unwrap();
        merger.add(labels("a"), three).unwrap();
        merger.add(labels("b"), samples(&[(1, 1.0)])).unwrap();
        let out = merger.finish().unwrap();
        assert_eq!(out.iter().map(|s| s.samples.len()).sum::<usize>(), limit);

        let mut over = Merger::new(limit);
        over.add(labels("a"), samples(&[(1, 1.0), (2, 2.0)]))
            .unwrap();
        over.add(labels("a"), samples(&[(2, 2.0), (3, 3.0)]))
            .unwrap();
        // Held 5 > 4 triggers the exact recount: 4 distinct, at the limit, passes.
        over.add(labels("b"), samples(&[(1, 1.0)])).unwrap();
        // 5 distinct: the add may defer the check, the result may not.
        over.add(labels("c"), samples(&[(1, 1.0)])).unwrap();
        assert!(matches!(over.finish(), Err(SelectError::TooManySamples)));

        // Distinct samples past the limit stop the select at the add that passes it.
        let mut early = Merger::new(limit);
        let five = samples(&[(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0)]);
        assert!(matches!(
            early.add(labels("a"), five),
            Err(SelectError::TooManySamples)
        ));
    }
}
