//! Where each selector's previous step ended in its loaded series.
//!
//! Owns: `Cursors`, per selector and series the index found at the previous step, and
//! `index_after`, which finds the next one by walking a few samples forward from there.
//! A range query's steps move forward by about one scrape interval, so the walk is a
//! step or two where a binary search over the whole series was about ten. Steps that
//! move backwards (subquery windows starting afresh) or far ahead fall back to binary
//! search, so any order of steps gives the same answer. Calls only `model`.

use std::collections::HashMap;

use crate::model::Sample;

use super::memo::BuildWordHasher;

/// How many samples `index_after` walks before it falls back to a binary search.
const WALK_LIMIT: usize = 8;

/// Per selector (keyed by its address in the AST), a vector of hints: the index each
/// bound of each series had at the previous step.
#[derive(Default)]
pub(crate) struct Cursors {
    by_selector: HashMap<usize, Vec<usize>, BuildWordHasher>,
}

impl Cursors {
    /// The hints of selector `key`: `len` of them, all 0 when first asked for.
    pub(crate) fn hints(&mut self, key: usize, len: usize) -> &mut [usize] {
        let hints = self.by_selector.entry(key).or_default();
        hints.resize(len, 0);
        hints
    }
}

/// `samples.partition_point(|s| s.t <= t)` (samples sorted by time), walking forward
/// from `*hint`, the answer for an earlier bound; stores the answer in `*hint`.
pub(crate) fn index_after(samples: &[Sample], t: i64, hint: &mut usize) -> usize {
    let start = (*hint).min(samples.len());
    let found = if start > 0 && samples[start - 1].t > t {
        samples.partition_point(|s| s.t <= t)
    } else {
        let ahead = &samples[start..];
        match ahead.iter().take(WALK_LIMIT).position(|s| s.t > t) {
            Some(i) => start + i,
            None => start + ahead.partition_point(|s| s.t <= t),
        }
    };
    *hint = found;
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_hint_gives_the_binary_search_answer() {
        let samples: Vec<Sample> = (0..50).map(|i| Sample::new(i * 10, 0.0)).collect();
        for t in [-5, 0, 5, 10, 95, 240, 489, 490, 500] {
            let want = samples.partition_point(|s| s.t <= t);
            for start in [0, 1, 3, 9, 10, 25, 49, 50, 60] {
                let mut hint = start;
                assert_eq!(
                    index_after(&samples, t, &mut hint),
                    want,
                    "t {t} hint {start}"
                );
                assert_eq!(hint, want);
            }
        }
    }

    #[test]
    fn hints_are_per_selector_and_start_at_zero() {
        let mut cursors = Cursors::default();
        cursors.hints(1, 3)[2] = 7;
        assert_eq!(cursors.hints(1, 3), &[0, 0, 7]);
        assert_eq!(cursors.hints(2, 2), &[0, 0]);
    }
}
