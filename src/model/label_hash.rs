//! Fast hashing of label sets for in-memory maps: the head's series map and the
//! remote-write decoder's label-set cache (`ingest`, ADR 0025).
//!
//! Owns: `label_set_hash` (a word-at-a-time multiply-rotate hash with a SplitMix64
//! finish), `label_pairs_hash` (the same hash over borrowed name/value pairs, so a
//! decoder can hash labels it has not copied) and `PrehashedKey`, the map hasher for
//! keys that already are such a hash. Both maps look a series up once per series of a
//! request, so this sits on the hot write path; FNV-1a over single bytes
//! (`Labels::stable_hash`) cost several times more. These values live only in memory
//! and may change between versions: anything persisted or sent to peers (placement, ADR
//! 0004) keeps using `Labels::stable_hash`. Calls only `model`.

use std::hash::{BuildHasherDefault, Hasher};

use crate::model::{splitmix64_mix, Labels};

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// A 64-bit hash of the label set, good in its high and low bits.
pub fn label_set_hash(labels: &Labels) -> u64 {
    label_pairs_hash(
        labels
            .iter()
            .map(|l| (l.name.as_bytes(), l.value.as_bytes())),
    )
}

/// `label_set_hash` of the label set made of these (name, value) pairs, in order, as
/// bytes: a decoder may hash labels before it has checked that they are UTF-8.
pub fn label_pairs_hash<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> u64 {
    let mut h = 0u64;
    for (name, value) in pairs {
        h = mix_bytes(h, name);
        h = mix_bytes(h, value);
    }
    splitmix64_mix(h)
}

/// Mixes the bytes 8 at a time, then their length, so that `("ab", "c")` and
/// `("a", "bc")` differ.
fn mix_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        h = mix(h, u64::from_le_bytes(word.try_into().unwrap_or_default()));
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut last = [0u8; 8];
        last[..tail.len()].copy_from_slice(tail);
        h = mix(h, u64::from_le_bytes(last));
    }
    mix(h, bytes.len() as u64)
}

fn mix(h: u64, word: u64) -> u64 {
    (h.rotate_left(5) ^ word).wrapping_mul(MULTIPLIER)
}

/// Hashes a `u64` key that is already a `label_set_hash` by passing it through, instead
/// of running SipHash over it again.
#[derive(Default)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; other input still hashes deterministically.
        for &b in bytes {
            self.0 = mix(self.0, u64::from(b));
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// The map hasher for keys produced by `label_set_hash`.
pub type PrehashedKey = BuildHasherDefault<PassThroughHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinguishes_label_boundaries_and_order() {
        let a = Labels::from_pairs([("ab", "c")]);
        let b = Labels::from_pairs([("a", "bc")]);
        let c = Labels::from_pairs([("a", "b"), ("c", "d")]);
        let d = Labels::from_pairs([("a", "bc"), ("d", "")]);
        let hashes = [a, b, c, d].map(|l| label_set_hash(&l));
        for i in 0..hashes.len() {
            for j in i + 1..hashes.len() {
                assert_ne!(hashes[i], hashes[j], "{i} vs {j}");
            }
        }
    }

    #[test]
    fn equal_sets_hash_equal_and_long_values_use_every_byte() {
        let long = "x".repeat(40);
        let l1 = Labels::from_pairs([("__name__", "up"), ("job", long.as_str())]);
        let l2 = Labels::from_pairs([("__name__", "up"), ("job", long.as_str())]);
        assert_eq!(label_set_hash(&l1), label_set_hash(&l2));
        let changed = format!("{}y", &long[..39]);
        let l3 = Labels::from_pairs([("__name__", "up"), ("job", changed.as_str())]);
        assert_ne!(label_set_hash(&l1), label_set_hash(&l3));
        assert_eq!(
            label_set_hash(&l1),
            label_pairs_hash([(&b"__name__"[..], &b"up"[..]), (b"job", long.as_bytes())])
        );
    }
}
