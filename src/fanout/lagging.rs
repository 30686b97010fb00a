//! Merging the nodes' answers of one read, and noting which owners lagged (read repair).
//!
//! Owns: the merge rule of ADR 0007 (one series per label set, sorted by labels, the
//! union of the replicas' samples, equal timestamps once with `model::conflict_winner`'s
//! value) and, while merging, the samples an owner of a series that answered the read
//! lacks: every merged sample whose timestamp its answer did not have. A series whose
//! every answering owner returned the very same samples costs one comparison (the one
//! the merge made anyway); only a series whose copies differ is looked at closely. Not
//! found: an owner with a different value at the same timestamp (a conflict, ADR 0011,
//! not a gap), and an owner that did not answer. Calls `model` only; the caller gives
//! the owners of a series and the nodes that answered.

use crate::cluster::identity::NodeId;
use crate::model::{merge_sorted_samples, Labels, Series};

/// Samples one owner of a series lacked in a read: `series` holds only those.
#[derive(Clone, Debug, PartialEq)]
pub struct Lag {
    pub target: NodeId,
    pub series: Series,
}

/// Merges the answers (each from the node named beside it) and returns the merged
/// series and the lags of the owners `owners_of` names among the nodes that answered.
pub fn merge_and_find_lags(
    mut answers: Vec<(NodeId, Vec<Series>)>,
    owners_of: impl Fn(&Labels) -> Vec<NodeId>,
) -> (Vec<Series>, Vec<Lag>) {
    if answers.len() == 1 {
        // One node (a cluster of one): its answer is already sorted and unique.
        let only = answers.pop().map(|(_, a)| a).unwrap_or_default();
        return (only, Vec::new());
    }
    let answered: Vec<NodeId> = answers.iter().map(|(id, _)| *id).collect();
    let mut all: Vec<(NodeId, Series)> = answers
        .into_iter()
        .flat_map(|(id, series)| series.into_iter().map(move |s| (id, s)))
        .collect();
    all.sort_by(|a, b| a.1.labels.cmp(&b.1.labels));
    let mut merged: Vec<Series> = Vec::with_capacity(all.len() / answered.len().max(1));
    let mut lags = Vec::new();
    let mut copies = all.into_iter().peekable();
    while let Some(first) = copies.next() {
        let mut group = vec![first];
        while let Some(next) = copies.next_if(|(_, s)| s.labels == group[0].1.labels) {
            group.push(next);
        }
        merged.push(merge_group(group, &answered, &owners_of, &mut lags));
    }
    (merged, lags)
}

/// One series' copies merged; its lagging owners' missing samples added to `lags`.
fn merge_group(
    mut group: Vec<(NodeId, Series)>,
    answered: &[NodeId],
    owners_of: &impl Fn(&Labels) -> Vec<NodeId>,
    lags: &mut Vec<Lag>,
) -> Series {
    let identical = group.iter().all(|(_, s)| s.samples == group[0].1.samples);
    // Every node that answered returned it: every answering owner is among them.
    if identical && group.len() == answered.len() {
        return group.swap_remove(0).1;
    }
    let owners: Vec<NodeId> = owners_of(&group[0].1.labels)
        .into_iter()
        .filter(|o| answered.contains(o))
        .collect();
    let holds = |owner: &NodeId| group.iter().any(|(id, _)| id == owner);
    if identical && owners.iter().all(holds) {
        return group.swap_remove(0).1;
    }
    // The timestamps each answering owner had, before the merge consumes the copies.
    let held: Vec<(NodeId, Vec<i64>)> = owners
        .iter()
        .map(|owner| {
            let times = group
                .iter()
                .find(|(id, _)| id == owner)
                .map(|(_, s)| s.samples.iter().map(|x| x.t).collect())
                .unwrap_or_default();
            (*owner, times)
        })
        .collect();
    let labels = group[0].1.labels.clone();
    let samples = group
        .into_iter()
        .map(|(_, s)| s.samples)
        .reduce(merge_sorted_samples)
        .unwrap_or_default();
    for (target, times) in held {
        if times.len() >= samples.len() {
            continue;
        }
        let mut have = times.iter().peekable();
        let missing = samples
            .iter()
            .filter(|x| {
                while have.next_if(|&&t| t < x.t).is_some() {}
                have.peek().is_none_or(|&&t| t != x.t)
            })
            .copied()
            .collect();
        lags.push(Lag {
            target,
            series: Series {
                labels: labels.clone(),
                samples: missing,
            },
        });
    }
    Series { labels, samples }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sample;

    fn series(name: &str, samples: &[(i64, f64)]) -> Series {
        Series {
            labels: Labels::from_pairs([("__name__", name)]),
            samples: samples.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
        }
    }

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);
    const D: NodeId = NodeId(4);

    fn everyone(_: &Labels) -> Vec<NodeId> {
        vec![A, B, C]
    }

    #[test]
    fn identical_replicas_merge_without_lags() {
        let x = series("x", &[(1, 1.0), (2, 2.0)]);
        let answers = vec![
            (A, vec![x.clone()]),
            (B, vec![x.clone()]),
            (C, vec![x.clone()]),
        ];
        let (merged, lags) = merge_and_find_lags(answers, everyone);
        assert_eq!(merged, vec![x]);
        assert!(lags.is_empty());
    }

    #[test]
    fn an_owner_missing_samples_or_the_whole_series_lags_by_exactly_those() {
        let full = series("x", &[(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]);
        let gappy = series("x", &[(1, 1.0), (4, 4.0)]);
        let other = series("y", &[(5, 5.0)]);
        let answers = vec![
            (A, vec![full.clone(), other.clone()]),
            (B, vec![gappy]),
            (C, vec![full.clone(), other.clone()]),
        ];
        let (merged, mut lags) = merge_and_find_lags(answers, everyone);
        assert_eq!(merged, vec![full, other.clone()]);
        lags.sort_by_key(|l| l.series.labels.clone());
        assert_eq!(
            lags,
            vec![
                Lag {
                    target: B,
                    series: series("x", &[(2, 2.0), (3, 3.0)]),
                },
                Lag {
                    target: B,
                    series: other,
                },
            ]
        );
    }

    #[test]
    fn replicas_with_different_gaps_each_get_what_they_lack() {
        let answers = vec![
            (A, vec![series("x", &[(1, 1.0), (2, 2.0)])]),
            (B, vec![series("x", &[(2, 2.0), (3, 3.0)])]),
        ];
        let (merged, lags) = merge_and_find_lags(answers, |_| vec![A, B]);
        assert_eq!(merged, vec![series("x", &[(1, 1.0), (2, 2.0), (3, 3.0)])]);
        assert_eq!(
            lags,
            vec![
                Lag {
                    target: A,
                    series: series("x", &[(3, 3.0)]),
                },
                Lag {
                    target: B,
                    series: series("x", &[(1, 1.0)]),
                },
            ]
        );
    }

    #[test]
    fn non_owners_silent_owners_and_conflicts_are_not_lags() {
        // D answered without the series but does not own it; C owns it but did not
        // answer; B has another value at the same timestamp (a conflict, not a gap).
        let answers = vec![
            (A, vec![series("x", &[(1, 1.0), (2, 2.0)])]),
            (B, vec![series("x", &[(1, 1.0), (2, 7.0)])]),
            (D, vec![]),
        ];
        let (merged, lags) = merge_and_find_lags(answers, everyone);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].samples.len(), 2);
        assert!(lags.is_empty(), "{lags:?}");
    }

    #[test]
    fn one_answer_is_passed_through() {
        let x = vec![series("x", &[(1, 1.0)])];
        let (merged, lags) = merge_and_find_lags(vec![(A, x.clone())], everyone);
        assert_eq!((merged, lags), (x, vec![]));
    }
}
