//! Per-query memos of what the evaluator derives from a label set.
//!
//! Owns: `LabelMemo`, a map from a label set's identity (its shared storage, see
//! `Labels::identity`) to a value derived from it (the label set without its metric
//! name, the hash of its content). A range query meets the same input label sets at
//! every step; deriving once per series instead of once per series and step removes a
//! copy-on-write allocation or a hash of every label per step. Calls only `model`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::model::Labels;

/// Memo of `derive(labels)` per label set, for the lifetime of one query.
///
/// Only shared label sets (those some other owner, such as the loaded series, also
/// holds) are memoised: a label set built for one step alone is never met again.
pub(crate) struct LabelMemo<T> {
    /// identity -> (a clone keeping the identity alive and unique, the derived value)
    entries: HashMap<usize, (Labels, T), BuildWordHasher>,
}

impl<T> Default for LabelMemo<T> {
    fn default() -> Self {
        LabelMemo {
            entries: HashMap::default(),
        }
    }
}

impl<T: Clone> LabelMemo<T> {
    /// `derive(labels)`, computed once per shared label set.
    pub(crate) fn get_or_derive(
        &mut self,
        labels: &Labels,
        derive: impl FnOnce(&Labels) -> T,
    ) -> T {
        if !labels.is_shared() {
            return derive(labels);
        }
        let (_, value) = self
            .entries
            .entry(labels.identity())
            .or_insert_with(|| (labels.clone(), derive(labels)));
        value.clone()
    }
}

/// Hashes one word: a heap address or a hash computed beforehand. Folds a 128-bit
/// product so the always-zero low bits of an aligned address do not leave the table's
/// low bits constant.
#[derive(Default)]
pub(crate) struct WordHasher(u64);

/// A `HashMap`/`HashSet` hasher for word keys (`WordHasher`).
pub(crate) type BuildWordHasher = BuildHasherDefault<WordHasher>;

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        let product = u128::from(self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (product as u64) ^ ((product >> 64) as u64)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = n as u64;
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_label_sets_are_derived_once() {
        let loaded = Labels::from_pairs([("__name__", "m"), ("a", "1")]);
        let mut memo = LabelMemo::default();
        let mut calls = 0;
        for _ in 0..3 {
            let step_copy = loaded.clone();
            let len = memo.get_or_derive(&step_copy, |l| {
                calls += 1;
                l.len()
            });
            assert_eq!(len, 2);
        }
        assert_eq!(calls, 1);
    }

    #[test]
    fn distinct_label_sets_are_derived_separately() {
        let mut memo = LabelMemo::default();
        let a = Labels::from_pairs([("a", "1")]);
        let b = Labels::from_pairs([("a", "2")]);
        let (_a2, _b2) = (a.clone(), b.clone());
        assert_eq!(
            memo.get_or_derive(&a, |l| l.get("a").map(str::to_string)),
            Some("1".into())
        );
        assert_eq!(
            memo.get_or_derive(&b, |l| l.get("a").map(str::to_string)),
            Some("2".into())
        );
    }

    #[test]
    fn unshared_label_sets_are_not_kept() {
        let mut memo = LabelMemo::default();
        memo.get_or_derive(&Labels::from_pairs([("a", "1")]), |l| l.len());
        assert!(memo.entries.is_empty());
    }
}
