//! The exemplar store of one node (ADR 0027): at most `limit` exemplars of all series
//! together in one circular buffer, as Prometheus's `CircularExemplarStorage`
//! (`--storage.exemplars.exemplars-limit`): when it is full, each new exemplar replaces
//! the oldest one stored. Memory only: exemplars are not in the WAL and do not survive a
//! restart. Calls `model`.
//!
//! Each series' exemplars form a list through the buffer, oldest to newest in arrival
//! order, so a series is found by its labels and its exemplars without scanning the
//! buffer, and the slot overwritten next is always the oldest of its own series.
//! An exemplar identical (labels, value bits, timestamp) to one the series holds is
//! not stored twice: replicas, retries and hint replays repeat them. Unlike Prometheus,
//! an exemplar older than the series' newest is stored rather than refused: a node
//! receives a series' exemplars from several paths (forwards, hints) whose order is not
//! the sender's, and a query sorts them by time anyway.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::model::{Exemplar, Labels, Matcher, SeriesExemplars};

struct Slot {
    series: Labels,
    exemplar: Exemplar,
    /// The next newer slot of the same series.
    next: Option<usize>,
}

#[derive(Clone, Copy)]
struct SeriesList {
    oldest: usize,
    newest: usize,
}

#[derive(Default)]
struct Ring {
    slots: Vec<Slot>,
    /// The slot written next: once the buffer is full, the oldest exemplar.
    next: usize,
    series: HashMap<Labels, SeriesList>,
}

/// A bounded, circular store of exemplars by series.
pub struct ExemplarStore {
    limit: usize,
    ring: Mutex<Ring>,
}

fn same(a: &Exemplar, b: &Exemplar) -> bool {
    a.t == b.t && a.value.to_bits() == b.value.to_bits() && a.labels == b.labels
}

impl Ring {
    fn holds(&self, list: SeriesList, exemplar: &Exemplar) -> bool {
        let newest = &self.slots[list.newest].exemplar;
        if same(newest, exemplar) {
            return true;
        }
        if exemplar.t > newest.t {
            return false;
        }
        let mut at = Some(list.oldest);
        while let Some(i) = at {
            if same(&self.slots[i].exemplar, exemplar) {
                return true;
            }
            at = self.slots[i].next;
        }
        false
    }

    /// Frees slot `i` (the oldest of the buffer, so the oldest of its series).
    fn evict(&mut self, i: usize) {
        let series = &self.slots[i].series;
        let next = self.slots[i].next;
        match next {
            Some(next) => {
                if let Some(list) = self.series.get_mut(series) {
                    list.oldest = next;
                }
            }
            None => {
                self.series.remove(series);
            }
        }
    }

    fn push(&mut self, limit: usize, series: &Labels, exemplar: Exemplar) {
        let i = self.next;
        if self.slots.len() == limit {
            self.evict(i);
        }
        let slot = Slot {
            series: series.clone(),
            exemplar,
            next: None,
        };
        if i == self.slots.len() {
            self.slots.push(slot);
        } else {
            self.slots[i] = slot;
        }
        self.next = (i + 1) % limit;
        match self.series.get_mut(series) {
            Some(list) => {
                let newest = list.newest;
                list.newest = i;
                self.slots[newest].next = Some(i);
            }
            None => {
                self.series.insert(
                    series.clone(),
                    SeriesList {
                        oldest: i,
                        newest: i,
                    },
                );
            }
        }
    }
}

impl ExemplarStore {
    /// A store of at most `limit` exemplars; 0 stores none.
    pub fn new(limit: usize) -> Self {
        ExemplarStore {
            limit,
            ring: Mutex::new(Ring::default()),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Stores the exemplars; returns how many are held now (new ones and ones already
    /// held), all of them unless the store is off (`limit` 0).
    pub fn append(&self, batch: &[SeriesExemplars]) -> u64 {
        if self.limit == 0 {
            return 0;
        }
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let mut held = 0;
        for series in batch {
            for exemplar in &series.exemplars {
                held += 1;
                if let Some(&list) = ring.series.get(&series.series) {
                    if ring.holds(list, exemplar) {
                        continue;
                    }
                }
                ring.push(self.limit, &series.series, exemplar.clone());
            }
        }
        held
    }

    /// The exemplars in `[start, end]` of every series matching all matchers of any of
    /// `matcher_sets`, by series (sorted by labels), each series' in time order.
    pub fn select(
        &self,
        matcher_sets: &[Vec<Matcher>],
        start: i64,
        end: i64,
    ) -> Vec<SeriesExemplars> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let mut found: Vec<SeriesExemplars> = ring
            .series
            .iter()
            .filter(|(labels, _)| {
                matcher_sets
                    .iter()
                    .any(|set| set.iter().all(|m| m.matches_labels(labels)))
            })
            .filter_map(|(labels, list)| {
                let mut exemplars = Vec::new();
                let mut at = Some(list.oldest);
                while let Some(i) = at {
                    let e = &ring.slots[i].exemplar;
                    if start <= e.t && e.t <= end {
                        exemplars.push(e.clone());
                    }
                    at = ring.slots[i].next;
                }
                exemplars.sort_by_key(|e| e.t);
                (!exemplars.is_empty()).then(|| SeriesExemplars {
                    series: labels.clone(),
                    exemplars,
                })
            })
            .collect();
        found.sort_by(|a, b| a.series.cmp(&b.series));
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exemplar(trace: &str, t: i64) -> Exemplar {
        Exemplar {
            labels: Labels::from_pairs([("trace_id", trace)]),
            value: t as f64,
            t,
        }
    }

    fn batch(name: &str, exemplars: Vec<Exemplar>) -> Vec<SeriesExemplars> {
        vec![SeriesExemplars {
            series: Labels::from_pairs([("__name__", name)]),
            exemplars,
        }]
    }

    fn times(store: &ExemplarStore, name: &str) -> Vec<i64> {
        let sets = vec![vec![Matcher::equal("__name__", name)]];
        store
            .select(&sets, i64::MIN, i64::MAX)
            .into_iter()
            .flat_map(|s| s.exemplars)
            .map(|e| e.t)
            .collect()
    }

    #[test]
    fn the_oldest_exemplar_makes_room() {
        let store = ExemplarStore::new(3);
        assert_eq!(store.append(&batch("a", vec![exemplar("1", 1)])), 1);
        store.append(&batch("b", vec![exemplar("2", 2), exemplar("3", 3)]));
        // Full: "a"'s only exemplar goes, and with it the series.
        store.append(&batch("b", vec![exemplar("4", 4)]));
        assert!(times(&store, "a").is_empty());
        assert_eq!(times(&store, "b"), vec![2, 3, 4]);
        // Around the ring again, one series overwriting itself.
        store.append(&batch("b", vec![exemplar("5", 5), exemplar("6", 6)]));
        assert_eq!(times(&store, "b"), vec![4, 5, 6]);
        store.append(&batch("a", vec![exemplar("7", 7)]));
        assert_eq!(times(&store, "a"), vec![7]);
        assert_eq!(times(&store, "b"), vec![5, 6]);
    }

    #[test]
    fn repeats_are_held_once_and_late_ones_kept() {
        let store = ExemplarStore::new(10);
        store.append(&batch("a", vec![exemplar("1", 1), exemplar("3", 3)]));
        // A retry, and a replica's late delivery of an older one.
        let held = store.append(&batch("a", vec![exemplar("1", 1), exemplar("3", 3)]));
        assert_eq!(held, 2);
        store.append(&batch("a", vec![exemplar("2", 2)]));
        assert_eq!(times(&store, "a"), vec![1, 2, 3]);
        // Same time, other trace: a different exemplar.
        store.append(&batch("a", vec![exemplar("x", 3)]));
        assert_eq!(times(&store, "a"), vec![1, 2, 3, 3]);
    }

    #[test]
    fn select_by_matchers_and_time() {
        let store = ExemplarStore::new(10);
        store.append(&batch("a", vec![exemplar("1", 10), exemplar("2", 20)]));
        store.append(&batch("b", vec![exemplar("3", 15)]));
        let re = Matcher::new(crate::model::MatchOp::RegexMatch, "__name__", "a|b").unwrap();
        let got = store.select(&[vec![re]], 12, 20);
        let names: Vec<_> = got.iter().map(|s| s.series.metric_name()).collect();
        assert_eq!(names, vec![Some("a"), Some("b")]);
        assert_eq!(got[0].exemplars.len(), 1);
        assert!(store
            .select(&[vec![Matcher::equal("__name__", "c")]], 0, 99)
            .is_empty());
    }

    #[test]
    fn a_limit_of_zero_stores_nothing() {
        let store = ExemplarStore::new(0);
        assert_eq!(store.append(&batch("a", vec![exemplar("1", 1)])), 0);
        assert!(times(&store, "a").is_empty());
    }
}
