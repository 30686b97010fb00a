//! The process-wide symbol table: one shared copy of each label name and value that a
//! live series uses.
//!
//! Owns: interning (`intern_labels`, `intern_all`) and dropping unused symbols (`collect`).
//! The head interns every label of a series it creates, and the remote-write label-set
//! cache (ADR 0025, amended) builds its label sets from the same table, so a cached label
//! set and its series in the head point at the same strings instead of each holding a
//! copy. One table for the process rather than one per head: the cache is process-wide,
//! and sharing immutable strings between heads is invisible to behaviour. Calls only
//! `model`.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use super::{LabelStr, Labels};

static SYMBOLS: LazyLock<Mutex<HashSet<Arc<str>>>> = LazyLock::new(Mutex::default);

fn table() -> MutexGuard<'static, HashSet<Arc<str>>> {
    SYMBOLS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The table's copy of `s`; when it has none, `new()` (a copy of `s`) becomes it.
fn intern_in(table: &mut HashSet<Arc<str>>, s: &str, new: impl FnOnce() -> Arc<str>) -> Arc<str> {
    if let Some(existing) = table.get(s) {
        return existing.clone();
    }
    let new = new();
    table.insert(new.clone());
    new
}

/// The table's copies of the names and values of `labels`, in order, under one lock. A
/// string the table does not have yet is kept as it is in `labels`, never copied.
pub fn intern_labels(labels: &Labels) -> Box<[(Arc<str>, Arc<str>)]> {
    let mut table = table();
    let mut one = |s: &LabelStr| intern_in(&mut table, s, || s.as_arc().clone());
    labels
        .iter()
        .map(|l| (one(&l.name), one(&l.value)))
        .collect()
}

/// The table's copies of `strings`, in order, under one lock: for building a label set
/// from text that is not a `LabelStr` yet (a new string is copied once, into the table).
pub fn intern_all<S: AsRef<str>>(strings: impl IntoIterator<Item = S>) -> Vec<LabelStr> {
    let mut table = table();
    strings
        .into_iter()
        .map(|s| {
            let s = s.as_ref();
            LabelStr::from(intern_in(&mut table, s, || Arc::from(s)))
        })
        .collect()
}

/// Drops the symbols only the table still holds (no series, cached label set or other
/// label set uses them). Costs a pass over the table: the head calls it after removing
/// series.
pub fn collect() {
    table().retain(|s| Arc::strong_count(s) > 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_shares_one_copy_and_collect_drops_unused_ones() {
        // Names unique to this test: the table is shared with every other test.
        let labels = Labels::from_pairs([("symbols-test-first", "symbols-test-first")]);
        let first = labels.as_slice()[0].name.as_arc().clone();
        let kept = intern_labels(&labels);
        assert!(
            Arc::ptr_eq(&kept[0].0, &first),
            "a new symbol is kept, not copied"
        );
        assert!(Arc::ptr_eq(&kept[0].1, &first), "an equal one is shared");
        let copy = Labels::from_pairs([("symbols-test-first", "x")]);
        assert!(Arc::ptr_eq(&intern_labels(&copy)[0].0, &first));
        let both = intern_all(["symbols-test-first", "symbols-test-second"]);
        assert!(Arc::ptr_eq(both[0].as_arc(), &first));
        assert_eq!(both[1], "symbols-test-second");

        let second = Arc::downgrade(both[1].as_arc());
        drop(both);
        collect();
        assert!(second.upgrade().is_none(), "unused symbols are dropped");
        let again = intern_all(["symbols-test-first"]);
        assert!(Arc::ptr_eq(again[0].as_arc(), &first), "used ones stay");
    }
}
