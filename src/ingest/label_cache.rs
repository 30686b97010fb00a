//! The label-set cache of the remote-write decoder (ADR 0025): turns the labels of a
//! decoded series, borrowed from the request body, into a shared `model::Labels`,
//! allocating only for a label set not seen recently. A sender repeats every series'
//! full label set in each request, so nearly every lookup is a hit that costs a hash,
//! a comparison and a reference-count increment instead of a `String` per name and value
//! (and their frees after the append). Calls `model`.
//!
//! Keyed by `label_pairs_hash` of the labels that are kept (empty values dropped); a hit
//! is compared label by label, so a hash collision only costs a rebuild. Bounded: each
//! shard keeps two generations of at most `GENERATION_CAPACITY / SHARDS` sets; when the
//! current one is full it becomes the previous one and the older is dropped, so memory
//! stays bounded under series churn while active series (found in either generation and
//! moved to the current one) stay cached.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::decode::RawLabel;
use crate::model::label_hash::{label_pairs_hash, PrehashedKey};
use crate::model::{Label, Labels};

const SHARDS: usize = 16;
/// Label sets per generation, all shards together: room for the active series of a
/// large single sender; a few hundred bytes each.
const GENERATION_CAPACITY: usize = 1 << 17;

type Generation = HashMap<u64, Labels, PrehashedKey>;

#[derive(Default)]
struct Shard {
    current: Generation,
    previous: Generation,
}

pub(super) struct LabelSetCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl Default for LabelSetCache {
    fn default() -> Self {
        Self::with_capacity(GENERATION_CAPACITY)
    }
}

/// Whether `labels` (as sent) without their empty-valued labels equal `cached`.
fn same_labels(cached: &Labels, labels: &[RawLabel<'_>]) -> bool {
    let mut cached = cached.iter();
    for l in labels.iter().filter(|l| !l.value.is_empty()) {
        match cached.next() {
            Some(c) if c.name == l.name && c.value == l.value => {}
            _ => return false,
        }
    }
    cached.next().is_none()
}

impl LabelSetCache {
    /// A cache holding at most about `2 * capacity` label sets.
    pub fn with_capacity(capacity: usize) -> Self {
        LabelSetCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// The label set of a checked series: its labels as sent (names sorted and unique)
    /// without those with an empty value.
    pub fn labels(&self, labels: &[RawLabel<'_>]) -> Labels {
        let kept = || {
            labels
                .iter()
                .filter(|l| !l.value.is_empty())
                .map(|l| (l.name, l.value))
        };
        let hash = label_pairs_hash(kept());
        let mut shard = self.shards[(hash >> 40) as usize % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = shard.current.get(&hash) {
            if same_labels(cached, labels) {
                return cached.clone();
            }
        } else if let Some(cached) = shard.previous.remove(&hash) {
            if same_labels(&cached, labels) {
                self.insert(&mut shard, hash, cached.clone());
                return cached;
            }
        }
        let built = Labels::from_sorted(kept().map(|(n, v)| Label::new(n, v)).collect());
        self.insert(&mut shard, hash, built.clone());
        built
    }

    fn insert(&self, shard: &mut Shard, hash: u64, labels: Labels) {
        if shard.current.len() >= self.per_shard && !shard.current.contains_key(&hash) {
            shard.previous = std::mem::take(&mut shard.current);
        }
        shard.current.insert(hash, labels);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.current.len() + s.previous.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<RawLabel<'a>> {
        pairs
            .iter()
            .map(|&(name, value)| RawLabel { name, value })
            .collect()
    }

    #[test]
    fn hits_share_the_label_set_and_empty_values_are_dropped() {
        let cache = LabelSetCache::default();
        let first = cache.labels(&raw(&[("__name__", "up"), ("a", ""), ("job", "x")]));
        assert_eq!(first, Labels::from_pairs([("__name__", "up"), ("job", "x")]));
        let again = cache.labels(&raw(&[("__name__", "up"), ("job", "x")]));
        assert_eq!(again.identity(), first.identity());
        let other = cache.labels(&raw(&[("__name__", "up"), ("job", "y")]));
        assert_eq!(other, Labels::from_pairs([("__name__", "up"), ("job", "y")]));
    }

    #[test]
    fn a_colliding_entry_is_never_returned_for_other_labels() {
        let cache = LabelSetCache::default();
        let wanted = raw(&[("__name__", "up"), ("job", "x")]);
        let hash = label_pairs_hash(wanted.iter().map(|l| (l.name, l.value)));
        // Plant a different label set under the same hash, as a collision would.
        let planted = Labels::from_pairs([("__name__", "impostor")]);
        cache.shards[(hash >> 40) as usize % SHARDS]
            .lock()
            .unwrap()
            .current
            .insert(hash, planted);
        assert_eq!(
            cache.labels(&wanted),
            Labels::from_pairs([("__name__", "up"), ("job", "x")])
        );
    }

    #[test]
    fn stays_bounded_and_keeps_recent_sets() {
        let cache = LabelSetCache::with_capacity(64);
        let names: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
        for name in &names {
            cache.labels(&raw(&[("__name__", name)]));
        }
        assert!(cache.len() <= 2 * 64 + 2 * SHARDS, "{}", cache.len());
        let recent = cache.labels(&raw(&[("__name__", "m999")]));
        let again = cache.labels(&raw(&[("__name__", "m999")]));
        assert_eq!(recent.identity(), again.identity());
    }
}
