//! Merging the nodes' answers of one read, and noting which owners lagged (read repair).
//!
//! Owns: the merge rule of ADR 0007 (one series per label set, sorted by labels, the
//! union of the replicas' samples, equal timestamps once with `model::conflict_winner`'s
//! value) over the copies the answers hold, and what digests stand for (ADR 0028). A
//! node answers each series it holds with its full copy or with a digest; a digest equal
//! to a copy in hand counts as a copy held by its node, and the digests that match none
//! are what a second round fetches in full (`Collation::fetches`: one node per distinct
//! digest of a series), so the merge is the union of every copy that answered. While
//! merging, it notes the samples an owner of a series that answered lacks: every merged
//! sample whose timestamp its copy did not have. A series whose copies are all the same
//! costs one comparison (the one the merge made anyway); only a series whose copies
//! differ is looked at closely. Not found: an owner with a different value at the same
//! timestamp (a conflict, ADR 0011, not a gap), an owner that did not answer, and an
//! owner whose digest matches nothing after the second round (its copy changed between
//! the rounds, or fetching it failed: what it holds is unknown). Calls `model` and
//! `one_copy` (digests) only; the caller gives the owners of a series.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::one_copy::{SelectAnswer, SeriesDigest};
use crate::cluster::identity::NodeId;
use crate::model::{merge_sorted_samples, Labels, Sample, Series};

/// Samples one owner of a series lacked in a read: `series` holds only those.
#[derive(Clone, Debug, PartialEq)]
pub struct Lag {
    pub target: NodeId,
    pub series: Series,
}

/// Merges the answers (each from the node named beside it, every series in full) and
/// returns the merged series and the lags of the owners `owners_of` names among the
/// nodes that answered.
pub fn merge_and_find_lags(
    mut answers: Vec<(NodeId, Vec<Series>)>,
    owners_of: impl Fn(&Labels) -> Vec<NodeId>,
) -> (Vec<Series>, Vec<Lag>) {
    if answers.len() == 1 {
        // One node (a cluster of one): its answer is already sorted and unique.
        let only = answers.pop().map(|(_, a)| a).unwrap_or_default();
        return (only, Vec::new());
    }
    let answers = answers
        .into_iter()
        .map(|(id, full)| {
            let digests = Vec::new();
            (id, SelectAnswer { full, digests })
        })
        .collect();
    Collation::new(answers).finish(owners_of)
}

/// One distinct copy of a series' samples, and the nodes known to hold exactly it.
struct Copy {
    holders: Vec<NodeId>,
    samples: Vec<Sample>,
    /// Computed when a digest is first compared with it.
    digest: Option<SeriesDigest>,
}

impl Copy {
    fn digest(&mut self, labels_hash: u64) -> SeriesDigest {
        *self
            .digest
            .get_or_insert_with(|| SeriesDigest::of(labels_hash, &self.samples))
    }
}

/// The copies of one series in hand.
#[derive(Default)]
struct Group {
    copies: Vec<Copy>,
    /// Nodes that answered with a digest no copy matched: not judged for lags.
    unknown: Vec<NodeId>,
}

/// The answers of one read, collated by series, waiting for the second round.
pub struct Collation {
    answered: Vec<NodeId>,
    groups: BTreeMap<Labels, Group>,
    /// Label sets by `Labels::stable_hash`, the key digests carry.
    by_hash: HashMap<u64, Vec<Labels>>,
    /// Digests that match no copy in hand yet, with their node.
    pending: Vec<(NodeId, SeriesDigest)>,
}

impl Collation {
    /// Collates the first round's answers (each from the node named beside it).
    pub fn new(answers: Vec<(NodeId, SelectAnswer)>) -> Collation {
        let mut collation = Collation {
            answered: Vec::with_capacity(answers.len()),
            groups: BTreeMap::new(),
            by_hash: HashMap::new(),
            pending: Vec::new(),
        };
        for (node, answer) in answers {
            collation.answered.push(node);
            for series in answer.full {
                collation.add_copy(node, series);
            }
            collation
                .pending
                .extend(answer.digests.into_iter().map(|d| (node, d)));
        }
        collation.settle();
        collation
    }

    fn add_copy(&mut self, node: NodeId, series: Series) {
        let copy = |samples| Copy {
            holders: vec![node],
            samples,
            digest: None,
        };
        match self.groups.entry(series.labels) {
            Entry::Vacant(entry) => {
                let labels = entry.key().clone();
                entry.insert(Group {
                    copies: vec![copy(series.samples)],
                    unknown: Vec::new(),
                });
                self.by_hash
                    .entry(labels.stable_hash())
                    .or_default()
                    .push(labels);
            }
            Entry::Occupied(mut entry) => {
                let group = entry.get_mut();
                match group
                    .copies
                    .iter_mut()
                    .find(|c| c.samples == series.samples)
                {
                    Some(same) => {
                        if !same.holders.contains(&node) {
                            same.holders.push(node);
                        }
                    }
                    None => group.copies.push(copy(series.samples)),
                }
            }
        }
    }

    /// Counts each pending digest that equals a copy in hand (or whose node's own copy
    /// is in hand) as that copy; the others stay pending.
    fn settle(&mut self) {
        for (node, digest) in std::mem::take(&mut self.pending) {
            if !self.match_digest(node, &digest) {
                self.pending.push((node, digest));
            }
        }
    }

    fn match_digest(&mut self, node: NodeId, digest: &SeriesDigest) -> bool {
        let Some(label_sets) = self.by_hash.get(&digest.labels_hash) else {
            return false;
        };
        for labels in label_sets {
            let Some(group) = self.groups.get_mut(labels) else {
                continue;
            };
            if group.copies.iter().any(|c| c.holders.contains(&node)) {
                return true;
            }
            for copy in &mut group.copies {
                if copy.digest(digest.labels_hash) == *digest {
                    copy.holders.push(node);
                    return true;
                }
            }
        }
        false
    }

    /// What a second round must fetch in full, per node: the label hashes of its
    /// digests that match no copy in hand. Of several nodes with equal digests of a
    /// series only the first is asked: its copy stands for theirs.
    pub fn fetches(&self) -> BTreeMap<NodeId, Vec<u64>> {
        let mut asked = HashSet::new();
        let mut fetches: BTreeMap<NodeId, Vec<u64>> = BTreeMap::new();
        for (node, digest) in &self.pending {
            if asked.insert(*digest) {
                fetches.entry(*node).or_default().push(digest.labels_hash);
            }
        }
        fetches
    }

    /// Adds the series a second round fetched from `node`, and matches the pending
    /// digests against them.
    pub fn add_fetched(&mut self, node: NodeId, series: Vec<Series>) {
        for s in series {
            self.add_copy(node, s);
        }
        self.settle();
    }

    /// The merged series, sorted by labels, and the lags of the owners `owners_of`
    /// names among the nodes that answered.
    pub fn finish(mut self, owners_of: impl Fn(&Labels) -> Vec<NodeId>) -> (Vec<Series>, Vec<Lag>) {
        for (node, digest) in std::mem::take(&mut self.pending) {
            for labels in self.by_hash.get(&digest.labels_hash).into_iter().flatten() {
                if let Some(group) = self.groups.get_mut(labels) {
                    group.unknown.push(node);
                }
            }
        }
        let mut merged = Vec::with_capacity(self.groups.len());
        let mut lags = Vec::new();
        for (labels, group) in self.groups {
            merged.push(merge_group(
                labels,
                group,
                &self.answered,
                &owners_of,
                &mut lags,
            ));
        }
        (merged, lags)
    }
}

/// One series' copies merged; its lagging owners' missing samples added to `lags`.
fn merge_group(
    labels: Labels,
    group: Group,
    answered: &[NodeId],
    owners_of: &impl Fn(&Labels) -> Vec<NodeId>,
    lags: &mut Vec<Lag>,
) -> Series {
    let Group {
        mut copies,
        unknown,
    } = group;
    let judged: usize = copies.iter().map(|c| c.holders.len()).sum::<usize>() + unknown.len();
    // One copy that every node that answered holds (or is not judged for).
    if copies.len() == 1 && judged >= answered.len() {
        let samples = copies.pop().map(|c| c.samples).unwrap_or_default();
        return Series { labels, samples };
    }
    let owners: Vec<NodeId> = owners_of(&labels)
        .into_iter()
        .filter(|o| answered.contains(o) && !unknown.contains(o))
        .collect();
    let copy_of = |owner: &NodeId| copies.iter().find(|c| c.holders.contains(owner));
    if copies.len() == 1 && owners.iter().all(|o| copy_of(o).is_some()) {
        let samples = copies.pop().map(|c| c.samples).unwrap_or_default();
        return Series { labels, samples };
    }
    // The timestamps each answering owner had, before the merge consumes the copies.
    let held: Vec<(NodeId, Vec<i64>)> = owners
        .iter()
        .map(|owner| {
            let times = copy_of(owner)
                .map(|c| c.samples.iter().map(|x| x.t).collect())
                .unwrap_or_default();
            (*owner, times)
        })
        .collect();
    let samples = copies
        .into_iter()
        .map(|c| c.samples)
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

    use crate::fanout::test_series as series;

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

    fn full(series: Vec<Series>) -> SelectAnswer {
        SelectAnswer {
            full: series,
            digests: Vec::new(),
        }
    }

    fn digests(series: &[&Series]) -> SelectAnswer {
        SelectAnswer {
            full: Vec::new(),
            digests: series
                .iter()
                .map(|s| SeriesDigest::of(s.labels.stable_hash(), &s.samples))
                .collect(),
        }
    }

    #[test]
    fn digests_equal_to_the_data_need_no_second_round_and_count_as_copies() {
        let x = series("x", &[(1, 1.0), (2, 2.0)]);
        let collation = Collation::new(vec![
            (A, full(vec![x.clone()])),
            (B, digests(&[&x])),
            (C, digests(&[&x])),
        ]);
        assert!(collation.fetches().is_empty());
        let (merged, lags) = collation.finish(everyone);
        assert_eq!(merged, vec![x]);
        assert!(lags.is_empty(), "{lags:?}");
    }

    #[test]
    fn a_digest_that_disagrees_is_fetched_in_full_and_merged_with_its_lags() {
        // The first owner A lacks sample 2 (a hint for it is pending); C holds it.
        let gappy = series("x", &[(1, 1.0), (3, 3.0)]);
        let whole = series("x", &[(1, 1.0), (2, 2.0), (3, 3.0)]);
        let mut collation = Collation::new(vec![
            (A, full(vec![gappy.clone()])),
            (B, digests(&[&gappy])),
            (C, digests(&[&whole])),
        ]);
        let fetches = collation.fetches();
        assert_eq!(
            fetches,
            BTreeMap::from([(C, vec![whole.labels.stable_hash()])])
        );
        collation.add_fetched(C, vec![whole.clone()]);
        assert!(collation.fetches().is_empty());
        let (merged, mut lags) = collation.finish(everyone);
        assert_eq!(merged, vec![whole]);
        lags.sort_by_key(|l| l.target);
        // A sent the gappy copy and B's digest said it holds the same: both lag.
        let missing = series("x", &[(2, 2.0)]);
        assert_eq!(
            lags,
            vec![
                Lag {
                    target: A,
                    series: missing.clone(),
                },
                Lag {
                    target: B,
                    series: missing,
                },
            ]
        );
    }

    #[test]
    fn without_the_first_owners_data_one_copy_per_distinct_digest_is_fetched() {
        // A (the first owner) did not answer: B and C sent equal digests of x, and
        // different digests of y.
        let x = series("x", &[(1, 1.0)]);
        let y_b = series("y", &[(1, 1.0)]);
        let y_c = series("y", &[(1, 1.0), (2, 2.0)]);
        let mut collation =
            Collation::new(vec![(B, digests(&[&x, &y_b])), (C, digests(&[&x, &y_c]))]);
        let fetches = collation.fetches();
        let x_hash = x.labels.stable_hash();
        let y_hash = y_b.labels.stable_hash();
        assert_eq!(
            fetches,
            BTreeMap::from([(B, vec![x_hash, y_hash]), (C, vec![y_hash])])
        );
        collation.add_fetched(B, vec![x.clone(), y_b.clone()]);
        collation.add_fetched(C, vec![y_c.clone()]);
        let (merged, lags) = collation.finish(everyone);
        assert_eq!(merged, vec![x, y_c]);
        // B lacks y's sample 2; C's equal digest of x counts as a full copy.
        assert_eq!(
            lags,
            vec![Lag {
                target: B,
                series: series("y", &[(2, 2.0)]),
            }]
        );
    }

    #[test]
    fn an_owner_without_the_series_lags_and_a_failed_fetch_is_not_judged() {
        let x = series("x", &[(1, 1.0), (2, 2.0)]);
        let other = series("x", &[(1, 1.0)]);
        // A sends x, B says nothing of x (it lacks it), C's digest disagrees and the
        // fetch from C fails.
        let collation = Collation::new(vec![
            (A, full(vec![x.clone()])),
            (B, full(vec![])),
            (C, digests(&[&other])),
        ]);
        assert_eq!(collation.fetches().len(), 1);
        let (merged, lags) = collation.finish(everyone);
        assert_eq!(merged, vec![x.clone()]);
        assert_eq!(
            lags,
            vec![Lag {
                target: B,
                series: x,
            }]
        );
    }

    #[test]
    fn one_answer_is_passed_through() {
        let x = vec![series("x", &[(1, 1.0)])];
        let (merged, lags) = merge_and_find_lags(vec![(A, x.clone())], everyone);
        assert_eq!((merged, lags), (x, vec![]));
    }
}
