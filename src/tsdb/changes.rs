//! The log of changes to old data: what a cache of query results must hear about.
//!
//! Owns: the per-process epoch, the change counter, and a bounded record of the
//! earliest timestamp each change touched (ADR 0024). `db` records a change after the
//! samples (or the deletion) became visible to reads: an append or repair that stored
//! a sample older than `storage::LATE_WRITE_AGE_MS` behind the wall clock, a deletion
//! (from its start), and blocks dropped by retention (everything). Readers ask what
//! changed since the mark they last saw. Calls only `storage` (types).
//!
//! Bounded: the newest `CAPACITY` changes are kept one by one; older ones are folded
//! into one `floor` (their count and earliest timestamp), so a reader far behind gets
//! an answer that is early enough, never one that is too late.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;

use crate::storage::{ChangeMark, Changes};

/// Changes kept one by one before the oldest are folded into the floor.
const CAPACITY: usize = 1024;

pub struct ChangeLog {
    epoch: u64,
    state: Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    seq: u64,
    /// (seq, earliest timestamp touched), oldest first.
    recent: VecDeque<(u64, i64)>,
    /// Changes folded out of `recent`: every seq up to `.0`, earliest timestamp `.1`.
    floor: Option<(u64, i64)>,
}

impl Default for ChangeLog {
    fn default() -> Self {
        ChangeLog::new()
    }
}

impl ChangeLog {
    /// A new log with a random epoch: a reader's mark of an earlier run never matches.
    pub fn new() -> ChangeLog {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        hasher.write_u32(std::process::id());
        ChangeLog {
            epoch: hasher.finish(),
            state: Mutex::new(LogState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a change touching data at `earliest` and later.
    pub fn record(&self, earliest: i64) {
        let mut state = self.state();
        state.seq += 1;
        let seq = state.seq;
        state.recent.push_back((seq, earliest));
        if state.recent.len() > CAPACITY {
            if let Some((folded_seq, folded_t)) = state.recent.pop_front() {
                let floor_t = state.floor.map_or(folded_t, |(_, t)| t.min(folded_t));
                state.floor = Some((folded_seq, floor_t));
            }
        }
    }

    /// What changed since `since` (`None`: a reader that has seen nothing yet).
    pub fn since(&self, since: Option<ChangeMark>) -> Changes {
        let state = self.state();
        let mark = ChangeMark {
            epoch: self.epoch,
            seq: state.seq,
        };
        let earliest = match since {
            Some(seen) if seen.epoch == self.epoch && seen.seq <= state.seq => {
                let from_floor = state
                    .floor
                    .filter(|&(upto, _)| upto > seen.seq)
                    .map(|(_, t)| t);
                let from_recent = state
                    .recent
                    .iter()
                    .filter(|&&(seq, _)| seq > seen.seq)
                    .map(|&(_, t)| t)
                    .min();
                match (from_floor, from_recent) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            _ => Some(i64::MIN),
        };
        Changes { mark, earliest }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_hears_the_earliest_change_since_its_mark() {
        let log = ChangeLog::new();
        let start = log.since(None);
        assert_eq!(start.earliest, Some(i64::MIN), "unknown history");
        assert_eq!(log.since(Some(start.mark)).earliest, None);
        log.record(500);
        log.record(300);
        let after_two = log.since(Some(start.mark));
        assert_eq!(after_two.earliest, Some(300));
        log.record(900);
        assert_eq!(log.since(Some(after_two.mark)).earliest, Some(900));
        let other_epoch = ChangeMark {
            epoch: start.mark.epoch ^ 1,
            seq: 0,
        };
        assert_eq!(log.since(Some(other_epoch)).earliest, Some(i64::MIN));
        let ahead = ChangeMark {
            epoch: start.mark.epoch,
            seq: 99,
        };
        assert_eq!(log.since(Some(ahead)).earliest, Some(i64::MIN));
    }

    #[test]
    fn folded_changes_still_count_for_readers_behind() {
        let log = ChangeLog::new();
        let start = log.since(None).mark;
        log.record(7);
        for t in 0..(CAPACITY as i64 + 10) {
            log.record(1_000 + t);
        }
        // The change at 7 was folded into the floor; a reader from before it hears it.
        assert_eq!(log.since(Some(start)).earliest, Some(7));
        let recent = ChangeMark {
            epoch: start.epoch,
            seq: CAPACITY as u64 + 5,
        };
        // A reader within the kept changes hears only those after its mark... or the
        // floor, which covers seqs it may not have seen: never later than the truth.
        let heard = log.since(Some(recent)).earliest.expect("changes");
        assert!(heard <= 1_000 + CAPACITY as i64 + 4, "{heard}");
    }
}
