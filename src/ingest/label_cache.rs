//! The label-set cache of the remote-write decoder (ADR 0025): turns the labels of a
//! decoded series, borrowed from the request body, into a shared `model::Labels`,
//! allocating only for a label set not seen recently. A sender repeats every series'
//! full label set in each request, so nearly every lookup is a hit that costs a hash,
//! a comparison and a reference-count increment instead of a `String` per name and value
//! (and their frees after the append). Calls `model`.
//!
//! Keyed by `label_pairs_hash` of the label bytes as sent; a hit is compared byte for
//! byte, so a hash collision only costs a rebuild, and a hit proves the labels are
//! UTF-8 and follow the label rules (they were checked when the set was inserted).
//!
//! A cached set is built from `model::symbols`, the table the head interns its series'
//! labels in, so it holds two pointers per label and shares the text with the series
//! instead of keeping a second copy of every name and value (ADR 0025, amended). Bounded: each
//! shard keeps two generations of at most `GENERATION_CAPACITY / SHARDS` sets; when the
//! current one is full it becomes the previous one and the older is dropped, so memory
//! stays bounded under series churn while active series (found in either generation and
//! moved to the current one) stay cached.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::decode::RawLabel;
use crate::model::label_hash::{label_pairs_hash, PrehashedKey};
use crate::model::{symbols, Label, Labels};

const SHARDS: usize = 16;
/// Label sets per generation, all shards together: room for the active series of a
/// large single sender; each costs about 80 bytes plus 32 per label (the text is the
/// head's).
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

/// Whether `cached` holds exactly `labels`, byte for byte.
fn same_labels(cached: &Labels, labels: &[RawLabel<'_>]) -> bool {
    cached.len() == labels.len()
        && cached
            .iter()
            .zip(labels)
            .all(|(c, l)| c.name.as_bytes() == l.name && c.value.as_bytes() == l.value)
}

fn pairs<'a>(labels: &'a [RawLabel<'a>]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    labels.iter().map(|l| (l.name, l.value))
}

impl LabelSetCache {
    /// A cache holding at most about `2 * capacity` label sets.
    pub fn with_capacity(capacity: usize) -> Self {
        LabelSetCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        self.shards[(hash >> 40) as usize % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached label set equal to `labels` as sent, byte for byte. Such a set was
    /// checked when it was inserted: it is UTF-8 and follows the label rules. Labels
    /// with an empty value are never found (they are dropped when a set is built, so
    /// the sent labels must be checked to know they are valid).
    pub fn get(&self, labels: &[RawLabel<'_>]) -> Option<Labels> {
        if labels.iter().any(|l| l.value.is_empty()) {
            return None;
        }
        let hash = label_pairs_hash(pairs(labels));
        let mut shard = self.shard(hash);
        if let Some(cached) = shard.current.get(&hash) {
            return same_labels(cached, labels).then(|| cached.clone());
        }
        let cached = shard.previous.remove(&hash)?;
        if !same_labels(&cached, labels) {
            return None;
        }
        self.insert_into(&mut shard, hash, cached.clone());
        Some(cached)
    }

    /// Builds the label set of a checked series (labels UTF-8, names sorted and unique)
    /// without its empty-valued labels, from the interned names and values, and caches it.
    pub fn insert(&self, labels: &[RawLabel<'_>]) -> Labels {
        let kept: Vec<RawLabel<'_>> = labels
            .iter()
            .filter(|l| !l.value.is_empty())
            .copied()
            .collect();
        let hash = label_pairs_hash(pairs(&kept));
        let mut strings = symbols::intern_all(
            kept.iter()
                .flat_map(|l| [l.name, l.value])
                .map(String::from_utf8_lossy),
        )
        .into_iter();
        let mut built = Vec::with_capacity(kept.len());
        while let (Some(name), Some(value)) = (strings.next(), strings.next()) {
            built.push(Label { name, value });
        }
        let built = Labels::from_sorted(built);
        self.insert_into(&mut self.shard(hash), hash, built.clone());
        built
    }

    fn insert_into(&self, shard: &mut Shard, hash: u64, labels: Labels) {
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
            .map(|&(name, value)| RawLabel {
                name: name.as_bytes(),
                value: value.as_bytes(),
            })
            .collect()
    }

    #[test]
    fn hits_share_the_label_set_and_empty_values_are_dropped() {
        let cache = LabelSetCache::default();
        let first = cache.insert(&raw(&[("__name__", "up"), ("a", ""), ("job", "x")]));
        assert_eq!(
            first,
            Labels::from_pairs([("__name__", "up"), ("job", "x")])
        );
        let again = cache
            .get(&raw(&[("__name__", "up"), ("job", "x")]))
            .unwrap();
        assert_eq!(again.identity(), first.identity());
        // Sent with an empty value, a set is never taken from the cache unchecked.
        assert!(cache
            .get(&raw(&[("__name__", "up"), ("a", ""), ("job", "x")]))
            .is_none());
        assert!(cache
            .get(&raw(&[("__name__", "up"), ("job", "y")]))
            .is_none());
    }

    #[test]
    fn a_set_differing_in_one_byte_is_not_a_hit() {
        let cache = LabelSetCache::default();
        cache.insert(&raw(&[("__name__", "up"), ("job", "abc")]));
        for other in [
            [("__name__", "up"), ("job", "abd")],
            [("__name__", "up"), ("jpb", "abc")],
            [("__name__", "uq"), ("job", "abc")],
        ] {
            assert!(cache.get(&raw(&other)).is_none(), "{other:?}");
        }
        assert!(cache
            .get(&raw(&[("__name__", "up"), ("job", "ab")]))
            .is_none());
        assert!(cache.get(&raw(&[("__name__", "up")])).is_none());
        assert!(cache
            .get(&raw(&[("__name__", "up"), ("job", "abc")]))
            .is_some());
    }

    #[test]
    fn cached_sets_share_the_interned_text() {
        let cache = LabelSetCache::default();
        // Values unique to this test: the symbol table is shared with every other test.
        let a = cache.insert(&raw(&[("__name__", "up"), ("job", "cache-share-test")]));
        let b = cache.insert(&raw(&[("__name__", "down"), ("job", "cache-share-test")]));
        let interned = symbols::intern_all(["cache-share-test", "job"]);
        for set in [&a, &b] {
            let job = &set.as_slice()[1];
            assert!(std::sync::Arc::ptr_eq(
                job.value.as_arc(),
                interned[0].as_arc()
            ));
            assert!(std::sync::Arc::ptr_eq(
                job.name.as_arc(),
                interned[1].as_arc()
            ));
        }
        // A hit hands out the very set cached, not a rebuilt one.
        let hit = cache
            .get(&raw(&[("__name__", "up"), ("job", "cache-share-test")]))
            .unwrap();
        assert_eq!(hit.identity(), a.identity());
    }

    #[test]
    fn a_set_from_the_previous_generation_moves_back_and_stays() {
        let cache = LabelSetCache::with_capacity(SHARDS);
        let kept = raw(&[("__name__", "kept")]);
        let first = cache.insert(&kept);
        let names: Vec<String> = (0..SHARDS * 8).map(|i| format!("m{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            cache.insert(&raw(&[("__name__", name)]));
            // Found each round, wherever its generation went, and never rebuilt.
            let again = cache.get(&kept).unwrap_or_else(|| panic!("lost after {i}"));
            assert_eq!(again.identity(), first.identity());
        }
    }

    #[test]
    fn a_colliding_entry_is_never_returned_for_other_labels() {
        let cache = LabelSetCache::default();
        let wanted = raw(&[("__name__", "up"), ("job", "x")]);
        let hash = label_pairs_hash(pairs(&wanted));
        // Plant a different label set under the same hash, as a collision would.
        let planted = Labels::from_pairs([("__name__", "impostor")]);
        cache.shard(hash).current.insert(hash, planted);
        assert!(cache.get(&wanted).is_none());
        assert_eq!(
            cache.insert(&wanted),
            Labels::from_pairs([("__name__", "up"), ("job", "x")])
        );
        assert!(cache.get(&wanted).is_some());
    }

    #[test]
    fn stays_bounded_and_keeps_recent_sets() {
        let cache = LabelSetCache::with_capacity(64);
        let names: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
        for name in &names {
            cache.insert(&raw(&[("__name__", name)]));
        }
        assert!(cache.len() <= 2 * 64 + 2 * SHARDS, "{}", cache.len());
        let recent = cache.get(&raw(&[("__name__", "m999")])).unwrap();
        let again = cache.get(&raw(&[("__name__", "m999")])).unwrap();
        assert_eq!(recent.identity(), again.identity());
        assert!(cache.get(&raw(&[("__name__", "m0")])).is_none());
    }
}
