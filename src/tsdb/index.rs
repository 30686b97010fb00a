//! Postings and label-matcher evaluation, shared by the head and the on-disk blocks.
//!
//! Owns: sorted postings lists (series references per label pair), the set operations on
//! them, the in-memory postings of the head (`MemPostings`), and `select_postings`, which
//! answers a list of matchers from any `PostingsSource` with Prometheus's semantics: a
//! matcher that matches "" also matches series lacking the label. Calls only `model`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{MatchOp, Matcher};

/// Identifies a series inside one source (head series id, or index offset in a block).
pub type SeriesRef = u64;

/// Anything that can answer postings queries: the head index or a block index.
pub trait PostingsSource {
    /// Every series, sorted.
    fn all_postings(&self) -> Vec<SeriesRef>;
    /// Series with label `name` = `value`, sorted (empty when unknown).
    fn postings(&self, name: &str, value: &str) -> Vec<SeriesRef>;
    /// Union of the postings of every value of `name` for which `keep` is true, sorted.
    fn postings_where(&self, name: &str, keep: &mut dyn FnMut(&str) -> bool) -> Vec<SeriesRef>;
}

/// Intersection of two sorted lists.
pub fn intersect(a: &[SeriesRef], b: &[SeriesRef]) -> Vec<SeriesRef> {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut out = Vec::with_capacity(small.len());
    let mut rest = large;
    for &x in small {
        match rest.binary_search(&x) {
            Ok(i) => {
                out.push(x);
                rest = &rest[i + 1..];
            }
            Err(i) => rest = &rest[i..],
        }
        if rest.is_empty() {
            break;
        }
    }
    out
}

/// Elements of sorted `a` not in sorted `b`.
pub fn subtract(a: &[SeriesRef], b: &[SeriesRef]) -> Vec<SeriesRef> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j >= b.len() || b[j] != x {
            out.push(x);
        }
    }
    out
}

/// Union of sorted lists, sorted and without duplicates.
pub fn union(mut lists: Vec<Vec<SeriesRef>>) -> Vec<SeriesRef> {
    match lists.len() {
        0 => Vec::new(),
        1 => lists.pop().unwrap_or_default(),
        _ => {
            let mut all: Vec<SeriesRef> = lists.into_iter().flatten().collect();
            all.sort_unstable();
            all.dedup();
            all
        }
    }
}

/// The alternatives of a regex that is only literals joined by `|` (like `a|b|c`),
/// so it can be answered by direct postings lookups instead of scanning values.
fn literal_alternatives(pattern: &str) -> Option<Vec<&str>> {
    const META: &[char] = &[
        '\\', '.', '+', '*', '?', '(', ')', '[', ']', '{', '}', '^', '$',
    ];
    if pattern.contains(META) {
        return None;
    }
    Some(pattern.split('|').collect())
}

/// `=~".*"` restricts nothing: skip it instead of testing every value.
fn matches_everything(m: &Matcher) -> bool {
    m.op == MatchOp::RegexMatch && m.value == ".*"
}

/// Series whose label `name` has one of the literal `values` (an empty value stands for
/// an absent label, which has no postings).
fn postings_for_any_of(src: &dyn PostingsSource, name: &str, values: Vec<&str>) -> Vec<SeriesRef> {
    union(
        values
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(|v| src.postings(name, v))
            .collect(),
    )
}

/// Series whose label `m.name` has a value matching `m` (not counting absent labels).
fn postings_with_matching_value(src: &dyn PostingsSource, m: &Matcher) -> Vec<SeriesRef> {
    match m.op {
        MatchOp::Equal => src.postings(&m.name, &m.value),
        MatchOp::RegexMatch => match literal_alternatives(&m.value) {
            Some(values) => postings_for_any_of(src, &m.name, values),
            // `.+`: any value at all.
            None if m.value == ".+" => src.postings_where(&m.name, &mut |_| true),
            None => src.postings_where(&m.name, &mut |v| m.matches(v)),
        },
        MatchOp::NotEqual | MatchOp::RegexNoMatch => {
            src.postings_where(&m.name, &mut |v| m.matches(v))
        }
    }
}

/// Series whose label `m.name` is present with a value `m` rejects.
fn postings_with_rejected_value(src: &dyn PostingsSource, m: &Matcher) -> Vec<SeriesRef> {
    match m.op {
        MatchOp::NotEqual => src.postings(&m.name, &m.value),
        MatchOp::RegexNoMatch => match literal_alternatives(&m.value) {
            Some(values) => postings_for_any_of(src, &m.name, values),
            None => src.postings_where(&m.name, &mut |v| !m.matches(v)),
        },
        MatchOp::Equal | MatchOp::RegexMatch => src.postings_where(&m.name, &mut |v| !m.matches(v)),
    }
}

/// The sorted series matching all `matchers`. Matchers that match "" subtract the series
/// carrying a rejected value; the others intersect. With no restricting matcher the
/// start set is every series.
pub fn select_postings(src: &dyn PostingsSource, matchers: &[Matcher]) -> Vec<SeriesRef> {
    let (subtracting, intersecting): (Vec<&Matcher>, Vec<&Matcher>) = matchers
        .iter()
        .filter(|m| !matches_everything(m))
        .partition(|m| m.matches_empty());
    let mut result: Option<Vec<SeriesRef>> = None;
    for m in intersecting {
        let p = postings_with_matching_value(src, m);
        result = Some(match result {
            None => p,
            Some(r) => intersect(&r, &p),
        });
        if result.as_ref().is_some_and(Vec::is_empty) {
            return Vec::new();
        }
    }
    let mut result = result.unwrap_or_else(|| src.all_postings());
    for m in subtracting {
        if result.is_empty() {
            break;
        }
        let p = postings_with_rejected_value(src, m);
        result = subtract(&result, &p);
    }
    result
}

/// The head's postings: label name -> label value -> sorted series ids.
/// Interned strings are shared with the series' label sets.
#[derive(Default)]
pub struct MemPostings {
    by_label: HashMap<Arc<str>, HashMap<Arc<str>, Vec<SeriesRef>>>,
    all: Vec<SeriesRef>,
}

impl MemPostings {
    /// Adds a series. Ids are handed out increasing, so pushing keeps lists sorted; the
    /// insert path handles ids replayed out of order.
    pub fn add(&mut self, id: SeriesRef, labels: &[(Arc<str>, Arc<str>)]) {
        insert_sorted(&mut self.all, id);
        for (name, value) in labels {
            let values = self.by_label.entry(name.clone()).or_default();
            insert_sorted(values.entry(value.clone()).or_default(), id);
        }
    }

    pub fn remove(&mut self, id: SeriesRef, labels: &[(Arc<str>, Arc<str>)]) {
        remove_sorted(&mut self.all, id);
        for (name, value) in labels {
            let Some(values) = self.by_label.get_mut(name.as_ref()) else {
                continue;
            };
            if let Some(list) = values.get_mut(value.as_ref()) {
                remove_sorted(list, id);
                if list.is_empty() {
                    values.remove(value.as_ref());
                }
            }
            if values.is_empty() {
                self.by_label.remove(name.as_ref());
            }
        }
    }

    pub fn label_names(&self) -> impl Iterator<Item = &str> {
        self.by_label.keys().map(|k| k.as_ref())
    }

    /// (value, series count) of one label name.
    pub fn label_values(&self, name: &str) -> impl Iterator<Item = (&str, usize)> {
        self.by_label
            .get(name)
            .into_iter()
            .flat_map(|values| values.iter().map(|(v, p)| (v.as_ref(), p.len())))
    }

    pub fn num_series(&self) -> usize {
        self.all.len()
    }
}

fn insert_sorted(list: &mut Vec<SeriesRef>, id: SeriesRef) {
    match list.last() {
        Some(&last) if last >= id => {
            if let Err(i) = list.binary_search(&id) {
                list.insert(i, id);
            }
        }
        _ => list.push(id),
    }
}

fn remove_sorted(list: &mut Vec<SeriesRef>, id: SeriesRef) {
    if let Ok(i) = list.binary_search(&id) {
        list.remove(i);
    }
}

impl PostingsSource for MemPostings {
    fn all_postings(&self) -> Vec<SeriesRef> {
        self.all.clone()
    }

    fn postings(&self, name: &str, value: &str) -> Vec<SeriesRef> {
        self.by_label
            .get(name)
            .and_then(|values| values.get(value))
            .cloned()
            .unwrap_or_default()
    }

    fn postings_where(&self, name: &str, keep: &mut dyn FnMut(&str) -> bool) -> Vec<SeriesRef> {
        let Some(values) = self.by_label.get(name) else {
            return Vec::new();
        };
        union(
            values
                .iter()
                .filter(|(v, _)| keep(v))
                .map(|(_, p)| p.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arc_labels(pairs: &[(&str, &str)]) -> Vec<(Arc<str>, Arc<str>)> {
        pairs
            .iter()
            .map(|(n, v)| (Arc::from(*n), Arc::from(*v)))
            .collect()
    }

    fn sample_index() -> MemPostings {
        let mut p = MemPostings::default();
        p.add(1, &arc_labels(&[("__name__", "up"), ("job", "api")]));
        p.add(2, &arc_labels(&[("__name__", "up"), ("job", "db")]));
        p.add(3, &arc_labels(&[("__name__", "up")]));
        p.add(4, &arc_labels(&[("__name__", "x"), ("job", "api")]));
        p
    }

    fn m(op: MatchOp, name: &str, value: &str) -> Matcher {
        Matcher::new(op, name, value).unwrap()
    }

    #[test]
    fn set_operations() {
        assert_eq!(intersect(&[1, 3, 5, 7], &[2, 3, 7, 9]), vec![3, 7]);
        assert_eq!(subtract(&[1, 3, 5, 7], &[3, 4, 7]), vec![1, 5]);
        assert_eq!(union(vec![vec![1, 4], vec![2, 4], vec![]]), vec![1, 2, 4]);
    }

    #[test]
    fn matchers_follow_prometheus_semantics() {
        let p = sample_index();
        let sel = |ms: &[Matcher]| select_postings(&p, ms);
        let up = Matcher::equal("__name__", "up");
        assert_eq!(sel(std::slice::from_ref(&up)), vec![1, 2, 3]);
        assert_eq!(
            sel(&[up.clone(), m(MatchOp::NotEqual, "job", "api")]),
            vec![2, 3]
        );
        assert_eq!(sel(&[up.clone(), Matcher::equal("job", "")]), vec![3]);
        assert_eq!(
            sel(&[up.clone(), m(MatchOp::NotEqual, "job", "")]),
            vec![1, 2]
        );
        assert_eq!(
            sel(&[up.clone(), m(MatchOp::RegexMatch, "job", "a.*")]),
            vec![1]
        );
        assert_eq!(
            sel(&[up.clone(), m(MatchOp::RegexMatch, "job", "api|")]),
            vec![1, 3]
        );
        assert_eq!(
            sel(&[up.clone(), m(MatchOp::RegexNoMatch, "job", "api|db")]),
            vec![3]
        );
        assert_eq!(
            sel(&[m(MatchOp::RegexMatch, "job", "api|db")]),
            vec![1, 2, 4]
        );
        assert_eq!(sel(&[m(MatchOp::RegexMatch, "job", ".+")]), vec![1, 2, 4]);
        assert_eq!(
            sel(&[m(MatchOp::RegexMatch, "job", ".*")]),
            vec![1, 2, 3, 4]
        );
        assert_eq!(sel(&[Matcher::equal("nope", "x")]), Vec::<u64>::new());
        assert_eq!(sel(&[]), vec![1, 2, 3, 4]);
    }

    #[test]
    fn removal_cleans_empty_entries() {
        let mut p = sample_index();
        p.remove(3, &arc_labels(&[("__name__", "up")]));
        p.remove(4, &arc_labels(&[("__name__", "x"), ("job", "api")]));
        assert_eq!(p.num_series(), 2);
        assert_eq!(p.postings("__name__", "x"), Vec::<u64>::new());
        assert_eq!(p.label_values("__name__").count(), 1);
        p.add(0, &arc_labels(&[("job", "api")]));
        assert_eq!(p.postings("job", "api"), vec![0, 1]);
    }
}
