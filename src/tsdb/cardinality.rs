//! Head cardinality for `/api/v1/status/tsdb`: what one node counts, and how the
//! counts of several nodes become one answer (ADR 0022).
//!
//! Owns: `HeadCardinality` (the counts of one node over the series it was told to
//! count: series, chunks, the head's time range and every label pair with its series
//! count) and `merge` (parts of disjoint series sets summed into Prometheus's
//! `TSDBStatus` figures, each top list cut at `limit`). A single node's answer is the
//! merge of one part, so one rule serves both. Which series a node counts is the
//! caller's choice (the cluster asks each series of its first live owner); this module
//! only requires that no series is counted in two parts. Calls `model` only.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::TsdbStats;
use crate::model::METRIC_NAME;

/// One node's counts over the series it counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadCardinality {
    pub num_series: u64,
    /// Chunks (sealed and open) of the counted series.
    pub chunk_count: u64,
    /// The node's whole head time range (min, max), None when the head is empty.
    pub time_range: Option<(i64, i64)>,
    /// (label name, label value, series count) over the counted series, each pair once.
    pub pairs: Vec<(String, String, u64)>,
}

/// Per-pair series counts while a node walks its head; interned names and values are
/// shared with the head, so counting copies nothing until the answer is built.
#[derive(Default)]
pub(super) struct PairCounter {
    counts: HashMap<(Arc<str>, Arc<str>), u64>,
    series: u64,
    chunks: u64,
}

impl PairCounter {
    pub(super) fn count(&mut self, labels: &[(Arc<str>, Arc<str>)], chunks: usize) {
        self.series += 1;
        self.chunks += chunks as u64;
        for (name, value) in labels {
            *self
                .counts
                .entry((name.clone(), value.clone()))
                .or_default() += 1;
        }
    }

    pub(super) fn finish(self, time_range: Option<(i64, i64)>) -> HeadCardinality {
        let mut pairs: Vec<(String, String, u64)> = self
            .counts
            .into_iter()
            .map(|((n, v), c)| (n.to_string(), v.to_string(), c))
            .collect();
        pairs.sort_unstable();
        HeadCardinality {
            num_series: self.series,
            chunk_count: self.chunks,
            time_range,
            pairs,
        }
    }
}

/// The cluster's statistics from the parts of nodes that counted disjoint series:
/// series, chunks and per-pair series counts add up; label pairs and the values of a
/// label name are counted once however many parts have them; memory per label name is
/// the bytes of its values over every counted series (as a single head counts it); the
/// time range spans every part's. Top lists are largest first, ties by name, at most
/// `limit` entries.
pub fn merge(parts: Vec<HeadCardinality>, limit: usize) -> TsdbStats {
    let mut num_series = 0;
    let mut chunk_count = 0;
    let mut time_range: Option<(i64, i64)> = None;
    let mut pairs: HashMap<(String, String), u64> = HashMap::new();
    for part in parts {
        num_series += part.num_series;
        chunk_count += part.chunk_count;
        if let Some((lo, hi)) = part.time_range {
            time_range = Some(time_range.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
        }
        for (name, value, count) in part.pairs {
            *pairs.entry((name, value)).or_default() += count;
        }
    }
    let mut by_metric = Vec::new();
    let mut values_per_name: HashMap<String, u64> = HashMap::new();
    let mut bytes_per_name: HashMap<String, u64> = HashMap::new();
    let mut by_pair = Vec::with_capacity(pairs.len());
    let num_label_pairs = pairs.len() as u64;
    for ((name, value), count) in pairs {
        *values_per_name.entry(name.clone()).or_default() += 1;
        *bytes_per_name.entry(name.clone()).or_default() += value.len() as u64 * count;
        if name == METRIC_NAME {
            by_metric.push((value.clone(), count));
        }
        by_pair.push((format!("{name}={value}"), count));
    }
    let (min_time, max_time) = time_range.unwrap_or((0, 0));
    TsdbStats {
        num_series,
        num_label_pairs,
        chunk_count,
        min_time,
        max_time,
        series_count_by_metric_name: top(by_metric, limit),
        label_value_count_by_label_name: top(values_per_name.into_iter().collect(), limit),
        memory_in_bytes_by_label_name: top(bytes_per_name.into_iter().collect(), limit),
        series_count_by_label_value_pair: top(by_pair, limit),
    }
}

/// Largest first (ties by name), at most `limit` entries.
fn top(mut items: Vec<(String, u64)>, limit: usize) -> Vec<(String, u64)> {
    items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    items.truncate(limit);
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(series: &[&[(&str, &str)]], range: Option<(i64, i64)>) -> HeadCardinality {
        let mut counter = PairCounter::default();
        for labels in series {
            let interned: Vec<(Arc<str>, Arc<str>)> = labels
                .iter()
                .map(|(n, v)| (Arc::from(*n), Arc::from(*v)))
                .collect();
            counter.count(&interned, 2);
        }
        counter.finish(range)
    }

    #[test]
    fn disjoint_parts_add_up_and_shared_pairs_count_once() {
        let a = part(
            &[
                &[("__name__", "up"), ("job", "a")],
                &[("__name__", "up"), ("job", "b")],
            ],
            Some((10, 20)),
        );
        let b = part(
            &[
                &[("__name__", "up"), ("job", "c")],
                &[("__name__", "x"), ("job", "a")],
            ],
            Some((5, 15)),
        );
        let stats = merge(vec![a, b, HeadCardinality::default()], 10);
        assert_eq!(stats.num_series, 4);
        assert_eq!(stats.chunk_count, 8);
        assert_eq!((stats.min_time, stats.max_time), (5, 20));
        // __name__=up, __name__=x, job=a, job=b, job=c.
        assert_eq!(stats.num_label_pairs, 5);
        assert_eq!(
            stats.series_count_by_metric_name,
            vec![("up".to_string(), 3), ("x".to_string(), 1)]
        );
        assert_eq!(
            stats.label_value_count_by_label_name,
            vec![("job".to_string(), 3), ("__name__".to_string(), 2)]
        );
        // "up" * 3 + "x" * 1; "a" * 2 + "b" + "c".
        assert_eq!(
            stats.memory_in_bytes_by_label_name,
            vec![("__name__".to_string(), 7), ("job".to_string(), 4)]
        );
        assert_eq!(
            stats.series_count_by_label_value_pair[0],
            ("__name__=up".to_string(), 3)
        );
        assert_eq!(
            stats.series_count_by_label_value_pair[1],
            ("job=a".to_string(), 2)
        );
        let limited = merge(vec![part(&[&[("__name__", "up")]], None)], 1);
        assert_eq!(limited.series_count_by_label_value_pair.len(), 1);
        assert_eq!((limited.min_time, limited.max_time), (0, 0));
    }
}
