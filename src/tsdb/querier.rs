//! Reads across the head and the blocks: select, series, label names and values.
//!
//! Owns: gathering matching series from every source that overlaps the time range and
//! merging them so each series appears once, its samples in time order with identical
//! timestamps deduplicated (the value kept is the conflict rule's, ADR 0011). Calls `head`, `block`, `index` and `storage` types.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::block::Block;
use super::head::Head;
use super::index::{select_postings, PostingsSource};
use crate::model::merge_sorted_samples;
use crate::model::{Labels, Matcher, Sample, Series};
use crate::storage::{SelectError, StorageError};

/// A consistent view of the data: the blocks and the head at one moment.
pub struct Querier<'a> {
    pub blocks: &'a [Arc<Block>],
    pub head: &'a Head,
}

/// Accumulates series from several sources, enforcing the sample limit.
struct Merger {
    series: BTreeMap<Labels, Vec<Sample>>,
    total: usize,
    max_samples: usize,
}

impl Merger {
    fn add(&mut self, labels: Labels, samples: Vec<Sample>) -> Result<(), SelectError> {
        if samples.is_empty() {
            return Ok(());
        }
        let added = samples.len();
        match self.series.get_mut(&labels) {
            None => {
                self.total += added;
                self.series.insert(labels, samples);
            }
            Some(existing) => {
                let before = existing.len();
                *existing = merge_sorted_samples(std::mem::take(existing), samples);
                self.total += existing.len() - before;
            }
        }
        if self.max_samples > 0 && self.total > self.max_samples {
            return Err(SelectError::TooManySamples);
        }
        Ok(())
    }
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
        for block in self.overlapping_blocks(mint, maxt) {
            for r in select_postings(&block.index, matchers) {
                let (labels, metas) = block.index.series(r)?;
                if !metas.iter().any(|&(a, b, _)| b >= mint && a <= maxt) {
                    continue;
                }
                let mut samples = Vec::new();
                if load_samples || block.has_tombstones_for(r) {
                    block.samples(r, &metas, mint, maxt, &mut samples)?;
                    if samples.is_empty() {
                        continue;
                    }
                }
                if !load_samples {
                    samples.clear();
                }
                visit(labels, samples)?;
            }
        }
        let ids = select_postings(&*self.head.postings(), matchers);
        for id in ids {
            let Some(series) = self.head.get(id) else {
                continue;
            };
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
        let mut merger = Merger {
            series: BTreeMap::new(),
            total: 0,
            max_samples,
        };
        self.for_each_series(matchers, mint, maxt, true, &mut |l, s| merger.add(l, s))?;
        Ok(merger
            .series
            .into_iter()
            .map(|(labels, samples)| Series { labels, samples })
            .collect())
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
