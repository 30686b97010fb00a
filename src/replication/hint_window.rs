//! Hint window and disk cap: whether one more hint may be written for a target (ADR 0017).
//!
//! Owns: the per-target bookkeeping of hinted handoff as plain data (`TargetQueue`:
//! files, bytes, when the current episode started, which limit stopped it) and the
//! decisions on it: admit or refuse a hint, when an episode ends. No I/O and no clock:
//! times are Unix milliseconds passed in, so the simulation suite can drive it. The hint
//! store (`hints`) holds one `TargetQueue` per target under a lock, logs the events this
//! module returns and does the file work. Calls nothing.
//!
//! An *episode* of a target starts with the first hint it needs while it has none queued
//! and ends when it is back and its queue is empty again (all hints delivered, or
//! re-routed after its removal). Once the window (time since the episode started) or the
//! cap (bytes queued) is exceeded, no further hint is written for the target until the
//! episode ends: hysteresis, so a target whose replay drains a little does not flip
//! between hinting and refusing (and its warning is logged once per episode).

use std::time::Duration;

/// The limits of hinted handoff, per target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HintLimits {
    /// Longest time since the start of an episode that new hints are written (0: never).
    pub window: Duration,
    /// Most bytes of hint files queued for one target (0: no hints).
    pub max_bytes_per_target: u64,
}

impl HintLimits {
    /// Cassandra's `max_hint_window` (3 h) and 1 GiB per target.
    pub const DEFAULT: HintLimits = HintLimits {
        window: Duration::from_secs(3 * 3600),
        max_bytes_per_target: 1 << 30,
    };

    fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Which limit stopped the hints of a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    Window,
    Cap,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::Window => "window",
            Limit::Cap => "cap",
        }
    }
}

/// The answer to "may I write a hint of `size` bytes for this target now?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Write it: its bytes are reserved (call `stored` or `unreserve` afterwards).
    Store,
    /// Do not write it. `first` is true for the refusal that starts the exceeded state
    /// of this episode: the one to warn about.
    Refuse { limit: Limit, first: bool },
}

/// One target's queue as the hint store tracks it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetQueue {
    /// Hint files on disk.
    pub files: u64,
    /// Bytes of hint files on disk plus bytes reserved by hints being written.
    pub bytes: u64,
    /// When the current episode started (Unix ms): the first hint this target needed,
    /// or, after a restart, the write time of its oldest queued hint file.
    pub episode_start_ms: Option<u64>,
    /// The limit that stopped new hints in this episode, if one did.
    pub exceeded: Option<Limit>,
}

impl TargetQueue {
    /// The state found on disk at start: `files` hint files of `bytes` in total, the
    /// oldest written at `oldest_ms`. The exceeded state is not stored: the first hint
    /// needed after a restart finds it again from the same numbers (and warns once more).
    pub fn recovered(files: u64, bytes: u64, oldest_ms: Option<u64>) -> TargetQueue {
        TargetQueue {
            files,
            bytes,
            episode_start_ms: if files > 0 { oldest_ms } else { None },
            exceeded: None,
        }
    }

    /// Decides on one hint of `size` bytes needed at `now_ms`, and reserves its bytes
    /// when it may be written.
    pub fn admit(&mut self, now_ms: u64, size: u64, limits: &HintLimits) -> Admission {
        if let Some(limit) = self.exceeded {
            return Admission::Refuse {
                limit,
                first: false,
            };
        }
        let start = *self.episode_start_ms.get_or_insert(now_ms);
        let limit = if limits.window.is_zero() || now_ms.saturating_sub(start) >= limits.window_ms()
        {
            Some(Limit::Window)
        } else if self.bytes.saturating_add(size) > limits.max_bytes_per_target {
            Some(Limit::Cap)
        } else {
            None
        };
        match limit {
            Some(limit) => {
                self.exceeded = Some(limit);
                Admission::Refuse { limit, first: true }
            }
            None => {
                self.bytes += size;
                Admission::Store
            }
        }
    }

    /// The hint admitted with `size` bytes is on disk.
    pub fn stored(&mut self) {
        self.files += 1;
    }

    /// The hint admitted with `size` bytes could not be written: release its bytes.
    pub fn unreserve(&mut self, size: u64) {
        self.bytes = self.bytes.saturating_sub(size);
    }

    /// A hint file of `size` bytes left the queue (delivered, re-routed or dropped).
    pub fn removed(&mut self, size: u64) {
        self.files = self.files.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(size);
    }

    /// Nothing queued and nothing being written.
    pub fn is_empty(&self) -> bool {
        self.files == 0 && self.bytes == 0
    }

    /// The target is reachable and took every hint: the episode ends. Returns the limit
    /// that had stopped its hints, if any (the recovery to log). Does nothing while
    /// hints are queued or being written.
    pub fn end_episode_if_drained(&mut self) -> Option<Limit> {
        if !self.is_empty() {
            return None;
        }
        self.episode_start_ms = None;
        self.exceeded.take()
    }

    /// Whether reads should count this target as lagging: hints queued, or writes it
    /// missed without a hint in this episode.
    pub fn lagging(&self) -> bool {
        self.files > 0 || self.exceeded.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HintLimits = HintLimits {
        window: Duration::from_secs(5),
        max_bytes_per_target: 1000,
    };

    fn store(q: &mut TargetQueue, now: u64, size: u64) -> Admission {
        let a = q.admit(now, size, &LIMITS);
        if a == Admission::Store {
            q.stored();
        }
        a
    }

    #[test]
    fn the_window_runs_from_the_first_hint_of_the_episode() {
        let mut q = TargetQueue::default();
        assert_eq!(store(&mut q, 10_000, 10), Admission::Store);
        assert_eq!(q.episode_start_ms, Some(10_000));
        assert_eq!(store(&mut q, 14_999, 10), Admission::Store);
        assert_eq!(
            store(&mut q, 15_000, 10),
            Admission::Refuse {
                limit: Limit::Window,
                first: true
            }
        );
        // Refused from then on, once warned.
        for now in [15_001, 20_000, 99_000] {
            assert_eq!(
                store(&mut q, now, 1),
                Admission::Refuse {
                    limit: Limit::Window,
                    first: false
                }
            );
        }
        assert_eq!((q.files, q.bytes), (2, 20), "refusals reserve nothing");
    }

    #[test]
    fn the_cap_bounds_bytes_and_never_lets_one_more_through() {
        let mut q = TargetQueue::default();
        for i in 0..10 {
            assert_eq!(store(&mut q, 1000 + i, 100), Admission::Store, "hint {i}");
        }
        assert_eq!(q.bytes, 1000);
        assert_eq!(
            store(&mut q, 1011, 1),
            Admission::Refuse {
                limit: Limit::Cap,
                first: true
            }
        );
        // Hysteresis: draining below the cap does not reopen the episode.
        q.removed(100);
        q.removed(100);
        assert_eq!(
            store(&mut q, 1012, 1),
            Admission::Refuse {
                limit: Limit::Cap,
                first: false
            }
        );
        assert!(q.bytes <= LIMITS.max_bytes_per_target);
    }

    #[test]
    fn one_hint_larger_than_the_cap_is_refused_even_on_an_empty_queue() {
        let mut q = TargetQueue::default();
        assert_eq!(
            store(&mut q, 1, 1001),
            Admission::Refuse {
                limit: Limit::Cap,
                first: true
            }
        );
        assert!(q.lagging(), "the target missed a write");
    }

    #[test]
    fn an_episode_ends_only_when_the_queue_is_drained() {
        let mut q = TargetQueue::default();
        store(&mut q, 0, 10);
        store(&mut q, 1, 10);
        assert!(matches!(store(&mut q, 6000, 10), Admission::Refuse { .. }));
        q.removed(10);
        assert_eq!(q.end_episode_if_drained(), None, "one hint still queued");
        assert!(q.exceeded.is_some());
        q.removed(10);
        assert_eq!(q.end_episode_if_drained(), Some(Limit::Window));
        assert!(!q.lagging());
        // A new outage gets a fresh window.
        assert_eq!(store(&mut q, 100_000, 10), Admission::Store);
        assert_eq!(q.episode_start_ms, Some(100_000));
        // An episode that never exceeded ends silently.
        q.removed(10);
        assert_eq!(q.end_episode_if_drained(), None);
        assert_eq!(q, TargetQueue::default());
    }

    #[test]
    fn a_hint_being_written_keeps_the_episode_open() {
        let mut q = TargetQueue::default();
        assert_eq!(q.admit(0, 10, &LIMITS), Admission::Store);
        assert_eq!(q.end_episode_if_drained(), None);
        assert_eq!(q.episode_start_ms, Some(0), "reserved bytes count");
        q.unreserve(10);
        assert!(q.is_empty());
    }

    #[test]
    fn a_restart_measures_the_window_from_the_oldest_hint_on_disk() {
        let mut q = TargetQueue::recovered(3, 300, Some(50_000));
        assert_eq!(q.admit(54_000, 1, &LIMITS), Admission::Store);
        q.stored();
        assert_eq!(
            q.admit(55_000, 1, &LIMITS),
            Admission::Refuse {
                limit: Limit::Window,
                first: true
            }
        );
        assert_eq!(TargetQueue::recovered(0, 0, Some(1)).episode_start_ms, None);
    }

    #[test]
    fn zero_limits_turn_hints_off() {
        for limits in [
            HintLimits {
                window: Duration::ZERO,
                max_bytes_per_target: 1 << 30,
            },
            HintLimits {
                window: Duration::from_secs(3600),
                max_bytes_per_target: 0,
            },
        ] {
            let mut q = TargetQueue::default();
            assert!(matches!(
                q.admit(1, 1, &limits),
                Admission::Refuse { first: true, .. }
            ));
            assert!(q.is_empty());
        }
    }
}
