//! The in-memory head: the newest samples of every active series.
//!
//! Owns: the series map (fast in-memory label hash with
//! collision check, sharded locks), the head postings, and per-series sample storage: sealed XOR
//! chunks of at most 120 samples, one open chunk, and a sorted buffer of out-of-order
//! samples. Enforces the append rules (out-of-order window, too old, too far in the future,
//! duplicates) and resolves a conflicting value at a stored timestamp by
//! `model::conflict_winner` (ADR 0011). Holds the samples of requests whose WAL record is
//! not yet durable apart (staged), invisible to reads until published (ADR 0010).
//! Interns every label of a new series in `model::symbols`, the process-wide table the
//! remote-write label-set cache shares (ADR 0025, amended).
//! A series may also hold native histograms (`head_hist` stores them): a timestamp holds
//! a float or a histogram, never both; the out-of-order window is measured from the
//! series' newest sample of either type. The head's time range and cuts cover samples
//! of both types: a cut hands a block the histograms older than its boundary too
//! (ADR 0030).
//! Calls `chunk`, `head_hist`, `index` and `model` (including `model::label_hash` and
//! `model::symbols`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use super::chunk::{decode_xor, XorChunk};
use super::head_hist::{HistData, SealedHistogramChunk};
use super::index::{MemPostings, SeriesRef};
use crate::model::histogram::{HistogramSample, HistogramValue};
use crate::model::label_hash::{label_set_hash, PrehashedKey};
use crate::model::symbols;
use crate::model::{conflict_winner, merge_sorted_samples, Label, Labels, Sample};
use crate::storage::{RejectReason, TimeBounds};

/// Samples per chunk before a new one is started (as Prometheus).
pub const SAMPLES_PER_CHUNK: usize = 120;

const SHARDS: usize = 64;

/// Locks a mutex, ignoring poisoning: the guarded data stays consistent because every
/// critical section here only mutates through methods that cannot panic halfway.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An immutable encoded chunk with its time range.
#[derive(Clone, Debug)]
pub struct SealedChunk {
    pub min_t: i64,
    pub max_t: i64,
    pub bytes: Box<[u8]>,
}

impl SealedChunk {
    fn from_chunk(c: XorChunk) -> Self {
        SealedChunk {
            min_t: c.min_time(),
            max_t: c.max_time(),
            bytes: c.into_bytes().into_boxed_slice(),
        }
    }

    fn samples(&self) -> impl Iterator<Item = Sample> + '_ {
        decode_xor(&self.bytes).map_while(Result::ok)
    }
}

/// Encodes time-ordered samples into one chunk (callers keep it to `SAMPLES_PER_CHUNK`).
fn encode_chunk(samples: impl IntoIterator<Item = Sample>) -> XorChunk {
    let mut c = XorChunk::new();
    for s in samples {
        c.append(s.t, s.v);
    }
    c
}

/// Encodes time-ordered samples into chunks of at most `SAMPLES_PER_CHUNK`.
pub fn encode_chunks(samples: &[Sample]) -> Vec<SealedChunk> {
    samples
        .chunks(SAMPLES_PER_CHUNK)
        .map(|part| SealedChunk::from_chunk(encode_chunk(part.iter().copied())))
        .collect()
}

/// `samples` with the value at `t` replaced by `v`.
fn with_value_at(
    samples: impl Iterator<Item = Sample>,
    t: i64,
    v: f64,
) -> impl Iterator<Item = Sample> {
    samples.map(move |s| if s.t == t { Sample::new(t, v) } else { s })
}

/// The limits an append is checked against.
#[derive(Clone, Copy, Debug)]
pub struct AppendLimits {
    /// Samples older than this are `TooOld` (the head's lower bound, or the oldest time
    /// the wall-clock bounds accept).
    pub min_valid_time: i64,
    /// Samples newer than this are `TooFarInFuture` (the wall clock plus the future limit).
    pub max_valid_time: i64,
    /// How far behind the series' newest sample a sample may be.
    pub out_of_order_window_ms: i64,
    /// The wall clock. The out-of-order window ends at the series' newest sample or at
    /// this, whichever is earlier, so a sample ahead of the clock cannot close the window
    /// for the samples that follow it (ADR 0009).
    pub now_ms: i64,
}

impl AppendLimits {
    /// No limits at all (WAL replay, publishing staged samples: only what was accepted
    /// once).
    pub const NONE: AppendLimits = AppendLimits {
        min_valid_time: i64::MIN,
        max_valid_time: i64::MAX,
        out_of_order_window_ms: i64::MAX,
        now_ms: i64::MAX,
    };
}

/// What happened to one accepted sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    Stored,
    /// Stored, and it started a new head chunk (for the live head-chunks gauge).
    StoredNewChunk,
    /// The same sample was already stored; nothing changed.
    Duplicate,
    /// A different value is stored (or staged by another request) at that timestamp:
    /// this one is stored too and the conflict rule decides which is kept, so it must be
    /// logged; the write is still answered as a `DuplicateTimestamp` conflict, as
    /// Prometheus answers it (ADR 0011).
    Conflicting,
}

/// Where `append` puts an accepted sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    InOrder,
    OutOfOrder,
    /// The same sample is already stored.
    Duplicate,
    /// A different value is stored at that time and the conflict rule ranks this higher.
    Replace,
}

/// A sample of a request whose WAL record is not yet durable: invisible to reads, cuts
/// and checkpoints until `publish`, dropped by `discard` when the WAL write failed.
#[derive(Clone, Copy, Debug)]
struct StagedSample {
    t: i64,
    v: f64,
    /// The request that staged it.
    ticket: u64,
}

/// The samples of one series held by the head.
#[derive(Debug)]
pub struct SeriesData {
    sealed: Vec<SealedChunk>,
    open: XorChunk,
    /// Accepted out-of-order samples, sorted by time, disjoint from the chunks' times.
    ooo: Vec<Sample>,
    /// Chunks moved out by a head cut whose block is not yet visible to queries.
    cutting: Vec<SealedChunk>,
    /// Accepted samples waiting for their WAL record, in the order they were staged.
    staged: Vec<StagedSample>,
    /// Set when the series was dropped from the head; appenders must look it up again.
    removed: bool,
    /// Native histogram samples, for the few series that have any.
    hist: Option<Box<HistData>>,
}

impl SeriesData {
    fn new() -> Self {
        SeriesData {
            sealed: Vec::new(),
            open: XorChunk::new(),
            ooo: Vec::new(),
            cutting: Vec::new(),
            staged: Vec::new(),
            removed: false,
            hist: None,
        }
    }

    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// Newest in-order timestamp, if any sample is stored in the chunks.
    fn max_time(&self) -> Option<i64> {
        if !self.open.is_empty() {
            Some(self.open.max_time())
        } else {
            self.sealed.last().map(|c| c.max_t)
        }
    }

    /// Whether the series holds or has staged a sample at or after `t` (the test of a
    /// created-timestamp zero request, ADR 0027).
    pub fn has_sample_since(&self, t: i64) -> bool {
        self.max_time().is_some_and(|max| max >= t)
            || self.ooo.last().is_some_and(|s| s.t >= t)
            || self.staged.iter().any(|s| s.t >= t)
            || self.hist.as_ref().and_then(|h| h.max_time()) >= Some(t)
    }

    /// Newest sample of either type, out-of-order ones included: the out-of-order
    /// window is measured from it.
    fn newest_any(&self) -> Option<i64> {
        let floats = self.max_time().max(self.ooo.last().map(|s| s.t));
        floats.max(self.hist.as_ref().and_then(|h| h.max_time()))
    }

    /// Whether `t` is farther behind the series' newest sample (of either type; or the
    /// wall clock, whichever is earlier) than the out-of-order window allows.
    fn beyond_window(&self, t: i64, limits: &AppendLimits) -> bool {
        self.newest_any().is_some_and(|newest| {
            t < newest
                && newest.min(limits.now_ms).saturating_sub(t) > limits.out_of_order_window_ms
        })
    }

    fn hist_holds(&self, t: i64) -> bool {
        self.hist.as_ref().is_some_and(|h| h.at(t).is_some())
    }

    fn last_value_bits(&self) -> Option<u64> {
        if !self.open.is_empty() {
            return Some(self.open.last_value().to_bits());
        }
        self.sealed
            .last()
            .and_then(|c| c.samples().last())
            .map(|s| s.v.to_bits())
    }

    pub fn min_time(&self) -> Option<i64> {
        let chunk_min = self
            .sealed
            .first()
            .map(|c| c.min_t)
            .or((!self.open.is_empty()).then(|| self.open.min_time()));
        let ooo_min = self.ooo.first().map(|s| s.t);
        match (chunk_min, ooo_min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn num_chunks(&self) -> usize {
        self.sealed.len()
            + usize::from(!self.open.is_empty())
            + self.hist.as_ref().map_or(0, |h| h.num_chunks())
    }

    /// Whether the series stores no sample of either type.
    pub fn is_empty(&self) -> bool {
        self.sealed.is_empty()
            && self.open.is_empty()
            && self.ooo.is_empty()
            && self.hist.as_ref().is_none_or(|h| h.is_empty())
    }

    /// Whether samples of either type wait for their WAL record.
    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty() || self.hist.as_ref().is_some_and(|h| h.has_staged())
    }

    /// Appends one sample, applying the head's rules.
    pub fn append(
        &mut self,
        t: i64,
        v: f64,
        limits: &AppendLimits,
    ) -> Result<Appended, RejectReason> {
        match self.placement(t, v, limits)? {
            Placement::Duplicate => Ok(Appended::Duplicate),
            Placement::Replace => {
                self.replace_value(t, v);
                Ok(Appended::Conflicting)
            }
            Placement::InOrder => Ok(self.append_in_order(t, v)),
            Placement::OutOfOrder => {
                let at = self.ooo.partition_point(|s| s.t < t);
                self.ooo.insert(at, Sample::new(t, v));
                Ok(Appended::Stored)
            }
        }
    }

    /// Where the head's rules put `(t, v)`, without storing it.
    fn placement(&self, t: i64, v: f64, limits: &AppendLimits) -> Result<Placement, RejectReason> {
        if t < limits.min_valid_time {
            return Err(RejectReason::TooOld);
        }
        if t > limits.max_valid_time {
            return Err(RejectReason::TooFarInFuture);
        }
        if self.hist.is_some() {
            if self.hist_holds(t) {
                return Err(RejectReason::DuplicateTimestamp);
            }
            if self.beyond_window(t, limits) {
                return Err(RejectReason::OutOfOrder);
            }
        }
        let Some(max_t) = self.max_time() else {
            return self.in_order_placement(t, v);
        };
        if t > max_t {
            return self.in_order_placement(t, v);
        }
        if t == max_t {
            return match self.last_value_bits() {
                Some(bits) => conflict_placement(f64::from_bits(bits), v),
                None => Err(RejectReason::DuplicateTimestamp),
            };
        }
        if max_t.min(limits.now_ms).saturating_sub(t) > limits.out_of_order_window_ms {
            return Err(RejectReason::OutOfOrder);
        }
        match self.value_bits_at(t) {
            Some(bits) => conflict_placement(f64::from_bits(bits), v),
            None => Ok(Placement::OutOfOrder),
        }
    }

    fn in_order_placement(&self, t: i64, v: f64) -> Result<Placement, RejectReason> {
        // An out-of-order sample may already sit at a newer time than the chunks' end.
        if let Ok(i) = self.ooo.binary_search_by_key(&t, |s| s.t) {
            return conflict_placement(self.ooo[i].v, v);
        }
        Ok(Placement::InOrder)
    }

    fn append_in_order(&mut self, t: i64, v: f64) -> Appended {
        if self.open.num_samples() >= SAMPLES_PER_CHUNK {
            let full = std::mem::take(&mut self.open);
            self.sealed.push(SealedChunk::from_chunk(full));
        }
        let new_chunk = self.open.num_samples() == 0;
        self.open.append(t, v);
        if new_chunk {
            Appended::StoredNewChunk
        } else {
            Appended::Stored
        }
    }

    /// Checks a sample as `append` would, and also against the samples other requests
    /// staged, then stages it under `ticket` (invisible until `publish`). `Stored` and
    /// `Conflicting` mean the caller must log it; `Duplicate` means it is stored already
    /// (durable) or staged by this same request. A request staging the same sample as
    /// another one stages its own copy, so its acknowledgement never depends on the
    /// other's WAL write. A different value staged by another request is a conflict; this
    /// one is staged anyway when it could change what is durable (the other's WAL write
    /// may fail), and `publish` applies the conflict rule.
    pub fn stage(
        &mut self,
        t: i64,
        v: f64,
        limits: &AppendLimits,
        ticket: u64,
    ) -> Result<Appended, RejectReason> {
        if self.hist.as_ref().is_some_and(|h| h.is_staged_at(t)) {
            return Err(RejectReason::DuplicateTimestamp);
        }
        let mut in_flight_conflict = false;
        for s in self.staged.iter().filter(|s| s.t == t) {
            if s.v.to_bits() != v.to_bits() {
                in_flight_conflict = true;
            } else if s.ticket == ticket {
                return Ok(Appended::Duplicate);
            }
        }
        match self.placement(t, v, limits)? {
            Placement::Duplicate if in_flight_conflict => Err(RejectReason::DuplicateTimestamp),
            Placement::Duplicate => Ok(Appended::Duplicate),
            placement => {
                self.staged.push(StagedSample { t, v, ticket });
                let conflict = in_flight_conflict || placement == Placement::Replace;
                Ok(if conflict {
                    Appended::Conflicting
                } else {
                    Appended::Stored
                })
            }
        }
    }

    /// Stores the samples staged under `ticket`, now that their WAL record is durable.
    /// Returns how many head chunks they started.
    pub fn publish(&mut self, ticket: u64) -> u64 {
        let mut new_chunks = 0;
        let staged_hist = self.hist.as_mut().map(|h| h.take_staged(ticket));
        for s in staged_hist.into_iter().flatten() {
            if let Ok(Appended::StoredNewChunk) =
                self.append_histogram(s.t, &s.h, &AppendLimits::NONE)
            {
                new_chunks += 1;
            }
        }
        for s in self.take_staged(ticket) {
            // Checked when staged; the time limits may have moved since (a head cut).
            if let Ok(Appended::StoredNewChunk) = self.append(s.t, s.v, &AppendLimits::NONE) {
                new_chunks += 1;
            }
        }
        new_chunks
    }

    /// Drops the samples staged under `ticket`: their WAL write failed.
    pub fn discard(&mut self, ticket: u64) {
        self.take_staged(ticket);
        if let Some(h) = self.hist.as_mut() {
            h.take_staged(ticket);
        }
    }

    fn take_staged(&mut self, ticket: u64) -> Vec<StagedSample> {
        let staged = std::mem::take(&mut self.staged);
        if staged.iter().all(|s| s.ticket == ticket) {
            return staged;
        }
        let (mine, others) = staged.into_iter().partition(|s| s.ticket == ticket);
        self.staged = others;
        mine
    }

    /// Replaces the value stored at `t` (which exists) by `v`. Only conflicts take this
    /// path, so re-encoding one chunk of at most 120 samples is affordable.
    fn replace_value(&mut self, t: i64, v: f64) {
        if let Ok(i) = self.ooo.binary_search_by_key(&t, |s| s.t) {
            self.ooo[i].v = v;
            return;
        }
        if !self.open.is_empty() && self.open.min_time() <= t && t <= self.open.max_time() {
            self.open = encode_chunk(with_value_at(self.open.iter(), t, v));
            return;
        }
        if let Some(c) = self
            .sealed
            .iter_mut()
            .find(|c| c.min_t <= t && t <= c.max_t)
        {
            *c = SealedChunk::from_chunk(encode_chunk(with_value_at(c.samples(), t, v)));
            return;
        }
        // The stored sample is in a chunk being cut into a block, which is already
        // written: keep the winner as an out-of-order sample (no chunk holds `t` any
        // more), and reads and compaction resolve the two copies by the same rule.
        let at = self.ooo.partition_point(|s| s.t < t);
        self.ooo.insert(at, Sample::new(t, v));
    }

    /// The value bits stored at exactly `t`, looking at every place a sample may live.
    fn value_bits_at(&self, t: i64) -> Option<u64> {
        if let Ok(i) = self.ooo.binary_search_by_key(&t, |s| s.t) {
            return Some(self.ooo[i].v.to_bits());
        }
        fn value_in(
            t: i64,
            min_t: i64,
            max_t: i64,
            samples: impl Iterator<Item = Sample>,
        ) -> Option<u64> {
            if t < min_t || t > max_t {
                return None;
            }
            samples
                .take_while(|s| s.t <= t)
                .find(|s| s.t == t)
                .map(|s| s.v.to_bits())
        }
        self.sealed
            .iter()
            .chain(self.cutting.iter())
            .find_map(|c| value_in(t, c.min_t, c.max_t, c.samples()))
            .or_else(|| {
                value_in(
                    t,
                    self.open.min_time(),
                    self.open.max_time(),
                    self.open.iter(),
                )
            })
    }

    /// Whether a chunk or an out-of-order sample of the series overlaps `[mint, maxt]`.
    pub fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        let chunk = |c: &SealedChunk| c.max_t >= mint && c.min_t <= maxt;
        self.sealed.iter().chain(&self.cutting).any(chunk)
            || (!self.open.is_empty()
                && self.open.max_time() >= mint
                && self.open.min_time() <= maxt)
            || self.ooo.iter().any(|s| s.t >= mint && s.t <= maxt)
            || self.hist.as_deref().is_some_and(|h| h.overlaps(mint, maxt))
    }

    /// All samples in `[mint, maxt]`, in time order, appended to `out`.
    pub fn samples_in(&self, mint: i64, maxt: i64, out: &mut Vec<Sample>) {
        let start = out.len();
        let overlaps = |c: &SealedChunk| c.max_t >= mint && c.min_t <= maxt;
        for c in self
            .cutting
            .iter()
            .chain(&self.sealed)
            .filter(|c| overlaps(c))
        {
            out.extend(c.samples().filter(|s| s.t >= mint && s.t <= maxt));
        }
        if !self.open.is_empty() && self.open.max_time() >= mint && self.open.min_time() <= maxt {
            out.extend(self.open.iter().filter(|s| s.t >= mint && s.t <= maxt));
        }
        out.extend(self.ooo.iter().filter(|s| s.t >= mint && s.t <= maxt));
        if !self.ooo.is_empty() || !self.cutting.is_empty() {
            // A sample appended while its time range was being cut may repeat one in
            // `cutting` with another value: the conflict rule picks the one kept.
            let mut mine = out.split_off(start);
            mine.sort_by_key(|s| s.t);
            mine.dedup_by(|later, kept| {
                let same_time = later.t == kept.t;
                if same_time {
                    kept.v = conflict_winner(kept.v, later.v);
                }
                same_time
            });
            out.extend(mine);
        }
    }

    /// Every sample the series owns (not those being cut away), in time order.
    fn all_samples(&self) -> Vec<Sample> {
        let mut out: Vec<Sample> = self.sealed.iter().flat_map(|c| c.samples()).collect();
        out.extend(self.open.iter());
        if self.ooo.is_empty() {
            return out;
        }
        merge_sorted_samples(out, self.ooo.clone())
    }

    /// Rebuilds the chunks from time-ordered samples (used after deletions and cuts).
    fn rebuild_from(&mut self, samples: &[Sample]) {
        let mut chunks = encode_chunks(samples);
        self.open = XorChunk::new();
        if let Some(last) = chunks.pop() {
            self.open = encode_chunk(last.samples());
        }
        self.sealed = chunks;
        self.ooo.clear();
    }

    /// Removes samples in `[mint, maxt]`. Returns how many were removed.
    pub fn delete_range(&mut self, mint: i64, maxt: i64) -> usize {
        let hist_removed = self.hist.as_mut().map_or(0, |h| h.delete_range(mint, maxt));
        let all = self.all_samples();
        let kept: Vec<Sample> = all
            .iter()
            .copied()
            .filter(|s| s.t < mint || s.t > maxt)
            .collect();
        let removed = all.len() - kept.len();
        if removed > 0 {
            self.rebuild_from(&kept);
        }
        removed + hist_removed
    }

    /// Moves every sample older than `boundary` into `cutting` and returns those chunks,
    /// so a block can be written while queries still see the data.
    pub fn start_cut(&mut self, boundary: i64) -> Vec<SealedChunk> {
        let all_old = self.sealed.last().is_none_or(|c| c.max_t < boundary)
            && (self.open.is_empty() || self.open.min_time() >= boundary)
            && self.ooo.first().is_none_or(|s| s.t >= boundary);
        if all_old && self.ooo.is_empty() {
            // Fast path: whole sealed chunks move unchanged.
            let moved = std::mem::take(&mut self.sealed);
            self.cutting.extend(moved.iter().cloned());
            return moved;
        }
        let all = self.all_samples();
        let split = all.partition_point(|s| s.t < boundary);
        let old = encode_chunks(&all[..split]);
        self.rebuild_from(&all[split..]);
        self.cutting.extend(old.iter().cloned());
        old
    }

    // ---- native histograms ----

    /// Appends one native histogram (validated by the caller) with the float path's
    /// rules: too old, too far in the future, out of order beyond the window (measured
    /// from the series' newest sample of either type). Unlike floats, a different
    /// value at a stored time is refused (`DuplicateTimestamp`), as Prometheus refuses
    /// it: there is no conflict rule between histograms.
    pub fn append_histogram(
        &mut self,
        t: i64,
        h: &HistogramValue,
        limits: &AppendLimits,
    ) -> Result<Appended, RejectReason> {
        let placement = self.histogram_placement(t, h, limits)?;
        // Floats stored after the histograms' end: the next histogram starts a chunk.
        let after_floats = self.max_time() > self.hist.as_ref().and_then(|d| d.chunk_max_time());
        let hist = self.hist.get_or_insert_with(Box::default);
        match placement {
            Placement::Duplicate => Ok(Appended::Duplicate),
            Placement::InOrder => match hist.append_in_order(t, h, after_floats) {
                Ok(true) => Ok(Appended::StoredNewChunk),
                Ok(false) => Ok(Appended::Stored),
                // Callers validate, and a valid histogram always encodes; should one
                // not, it is kept unencoded beside the chunks rather than lost.
                Err(_) => {
                    hist.insert_unchunked(HistogramSample { t, h: h.clone() });
                    Ok(Appended::Stored)
                }
            },
            Placement::OutOfOrder => {
                hist.insert_unchunked(HistogramSample { t, h: h.clone() });
                Ok(Appended::Stored)
            }
            Placement::Replace => Err(RejectReason::DuplicateTimestamp),
        }
    }

    /// Where the head's rules put histogram `h` at `t`, without storing it.
    fn histogram_placement(
        &self,
        t: i64,
        h: &HistogramValue,
        limits: &AppendLimits,
    ) -> Result<Placement, RejectReason> {
        if t < limits.min_valid_time {
            return Err(RejectReason::TooOld);
        }
        if t > limits.max_valid_time {
            return Err(RejectReason::TooFarInFuture);
        }
        if self.value_bits_at(t).is_some() {
            return Err(RejectReason::DuplicateTimestamp);
        }
        let hist = self.hist.as_deref();
        if let Some(stored) = hist.and_then(|d| d.at(t)) {
            return if stored.same(h) {
                Ok(Placement::Duplicate)
            } else {
                Err(RejectReason::DuplicateTimestamp)
            };
        }
        if self.beyond_window(t, limits) {
            return Err(RejectReason::OutOfOrder);
        }
        match hist.and_then(|d| d.chunk_max_time()) {
            Some(end) if t < end => Ok(Placement::OutOfOrder),
            _ => Ok(Placement::InOrder),
        }
    }

    /// Checks a histogram as `append_histogram` would, and against what other requests
    /// staged, then stages it under `ticket` (see `stage`). Any other value in flight
    /// at `t` (a float, or a different histogram) is refused: there is no conflict rule
    /// to settle it later.
    pub fn stage_histogram(
        &mut self,
        t: i64,
        h: &HistogramValue,
        limits: &AppendLimits,
        ticket: u64,
    ) -> Result<Appended, RejectReason> {
        if self.staged.iter().any(|s| s.t == t) {
            return Err(RejectReason::DuplicateTimestamp);
        }
        if let Some(hist) = self.hist.as_deref() {
            for (other, other_ticket) in hist.staged_at(t) {
                if !other.same(h) {
                    return Err(RejectReason::DuplicateTimestamp);
                }
                if other_ticket == ticket {
                    return Ok(Appended::Duplicate);
                }
            }
        }
        match self.histogram_placement(t, h, limits)? {
            Placement::Duplicate => Ok(Appended::Duplicate),
            _ => {
                let sample = HistogramSample { t, h: h.clone() };
                self.hist
                    .get_or_insert_with(Box::default)
                    .stage(sample, ticket);
                Ok(Appended::Stored)
            }
        }
    }

    /// The histogram samples in `[mint, maxt]`, in time order, appended to `out`.
    pub fn histograms_in(&self, mint: i64, maxt: i64, out: &mut Vec<HistogramSample>) {
        if let Some(h) = &self.hist {
            h.samples_in(mint, maxt, out);
        }
    }

    /// Moves every histogram older than `boundary` out for a cut, as `start_cut` does
    /// floats, and returns its chunks for the block.
    pub fn start_cut_histograms(&mut self, boundary: i64) -> Vec<SealedHistogramChunk> {
        self.hist
            .as_mut()
            .map_or_else(Vec::new, |h| h.start_cut(boundary))
    }

    /// Whether samples of either type are out for a head cut.
    fn is_cutting(&self) -> bool {
        !self.cutting.is_empty() || self.hist.as_ref().is_some_and(|h| h.is_cutting())
    }

    /// (oldest, newest) stored histogram time.
    fn histogram_time_range(&self) -> Option<(i64, i64)> {
        let h = self.hist.as_ref()?;
        Some((h.min_time()?, h.max_time()?))
    }

    /// Drops the samples handed out by `start_cut` and `start_cut_histograms` once
    /// their block is queryable.
    pub fn finish_cut(&mut self) {
        self.cutting.clear();
        if let Some(h) = self.hist.as_mut() {
            h.finish_cut();
        }
    }

    /// Takes the samples handed out by `start_cut` and `start_cut_histograms` back
    /// (their block was not written).
    pub fn abort_cut(&mut self) {
        if let Some(h) = self.hist.as_mut() {
            h.abort_cut();
        }
        if self.cutting.is_empty() {
            return;
        }
        let old: Vec<Sample> = self.cutting.iter().flat_map(|c| c.samples()).collect();
        self.cutting.clear();
        let merged = merge_sorted_samples(self.all_samples(), old);
        self.rebuild_from(&merged);
    }
}

/// A write of `v` where `stored` is kept: identical is a harmless duplicate; a different
/// value is a conflict, placed as a replacement when the conflict rule ranks it higher.
fn conflict_placement(stored: f64, v: f64) -> Result<Placement, RejectReason> {
    if stored.to_bits() == v.to_bits() {
        Ok(Placement::Duplicate)
    } else if conflict_winner(stored, v).to_bits() == stored.to_bits() {
        Err(RejectReason::DuplicateTimestamp)
    } else {
        Ok(Placement::Replace)
    }
}

/// A series held by the head.
pub struct MemSeries {
    pub id: SeriesRef,
    labels: Box<[(Arc<str>, Arc<str>)]>,
    data: Mutex<SeriesData>,
}

impl MemSeries {
    pub fn data(&self) -> MutexGuard<'_, SeriesData> {
        lock(&self.data)
    }

    /// The series' labels, sharing the interned strings (no copy of any text).
    pub fn labels(&self) -> Labels {
        Labels::from_sorted(self.labels.iter().map(|(n, v)| Label::new(n, v)).collect())
    }

    pub fn interned_labels(&self) -> &[(Arc<str>, Arc<str>)] {
        &self.labels
    }

    fn has_labels(&self, labels: &Labels) -> bool {
        self.labels.len() == labels.len()
            && self
                .labels
                .iter()
                .zip(labels.iter())
                .all(|((n, v), l)| n.as_ref() == l.name && v.as_ref() == l.value)
    }
}

type HashBuckets = HashMap<u64, Vec<Arc<MemSeries>>, PrehashedKey>;
type IdMap = HashMap<SeriesRef, Arc<MemSeries>>;

/// The head: all in-memory series with their index.
pub struct Head {
    /// label hash -> series with that hash (a list, for collisions), sharded.
    by_hash: Box<[Mutex<HashBuckets>]>,
    by_id: Box<[RwLock<IdMap>]>,
    postings: RwLock<MemPostings>,
    next_id: AtomicU64,
    /// Lower bound of accepted samples (the last cut boundary minus the OOO window).
    min_valid_time: AtomicI64,
    /// Oldest and newest sample time seen since the last cut (approximate bounds).
    min_time: AtomicI64,
    max_time: AtomicI64,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            by_hash: (0..SHARDS).map(|_| Mutex::default()).collect(),
            by_id: (0..SHARDS).map(|_| RwLock::default()).collect(),
            postings: RwLock::default(),
            next_id: AtomicU64::new(1),
            min_valid_time: AtomicI64::new(i64::MIN),
            min_time: AtomicI64::new(i64::MAX),
            max_time: AtomicI64::new(i64::MIN),
        }
    }
}

/// The `by_hash` shard of a label-set hash: middle bits, because the shard's map
/// indexes its buckets by the low bits and tags them with the top 7.
fn hash_shard(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

impl Head {
    /// Finds the series with `labels`, creating it (id from `id` or the next free one)
    /// when absent. `on_create` runs while the series is not yet visible to other
    /// appenders, so a WAL series record always precedes any sample record of it.
    pub fn get_or_create(
        &self,
        labels: &Labels,
        id: Option<SeriesRef>,
        on_create: &mut dyn FnMut(SeriesRef, &Labels),
    ) -> Arc<MemSeries> {
        let hash = label_set_hash(labels);
        let mut shard = lock(&self.by_hash[hash_shard(hash)]);
        let bucket = shard.entry(hash).or_default();
        if let Some(s) = bucket.iter().find(|s| s.has_labels(labels)) {
            return s.clone();
        }
        let id = match id {
            Some(id) => {
                self.next_id.fetch_max(id + 1, Ordering::Relaxed);
                id
            }
            None => self.next_id.fetch_add(1, Ordering::Relaxed),
        };
        let series = Arc::new(MemSeries {
            id,
            labels: symbols::intern_labels(labels),
            data: Mutex::new(SeriesData::new()),
        });
        on_create(id, labels);
        write(&self.postings).add(id, &series.labels);
        write(&self.by_id[(id % SHARDS as u64) as usize]).insert(id, series.clone());
        bucket.push(series.clone());
        series
    }

    pub fn get(&self, id: SeriesRef) -> Option<Arc<MemSeries>> {
        read(&self.by_id[(id % SHARDS as u64) as usize])
            .get(&id)
            .cloned()
    }

    pub fn postings(&self) -> std::sync::RwLockReadGuard<'_, MemPostings> {
        read(&self.postings)
    }

    /// The limits of appends at wall-clock time `now_ms`: the head's lower bound
    /// tightened by `bounds`, which also set the upper bound.
    pub fn limits(
        &self,
        out_of_order_window_ms: i64,
        bounds: &TimeBounds,
        now_ms: i64,
    ) -> AppendLimits {
        let head_bound = self.min_valid_time.load(Ordering::Relaxed);
        AppendLimits {
            min_valid_time: bounds
                .oldest_valid(now_ms)
                .map_or(head_bound, |oldest| oldest.max(head_bound)),
            max_valid_time: bounds.newest_valid(now_ms).unwrap_or(i64::MAX),
            out_of_order_window_ms,
            now_ms,
        }
    }

    /// Widens the head's time bounds after samples in `[mint, maxt]` were stored.
    pub fn note_time_range(&self, mint: i64, maxt: i64) {
        self.min_time.fetch_min(mint, Ordering::Relaxed);
        self.max_time.fetch_max(maxt, Ordering::Relaxed);
    }

    /// (min, max) sample time of the head, or None when it holds nothing.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        let (min, max) = (
            self.min_time.load(Ordering::Relaxed),
            self.max_time.load(Ordering::Relaxed),
        );
        (min <= max).then_some((min, max))
    }

    pub fn set_min_valid_time(&self, t: i64) {
        self.min_valid_time.fetch_max(t, Ordering::Relaxed);
    }

    pub fn num_series(&self) -> usize {
        self.postings().num_series()
    }

    /// Every series of the head (unordered).
    pub fn all_series(&self) -> Vec<Arc<MemSeries>> {
        self.by_id
            .iter()
            .flat_map(|shard| read(shard).values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Drops series that hold no samples, and symbols nobody uses any more.
    /// Returns the number of series removed.
    pub fn gc(&self) -> usize {
        let mut removed = 0;
        for shard in self.by_hash.iter() {
            let mut shard = lock(shard);
            for bucket in shard.values_mut() {
                bucket.retain(|s| {
                    let mut data = s.data();
                    if !data.is_empty() || data.is_cutting() || data.has_staged() {
                        return true;
                    }
                    data.removed = true;
                    write(&self.postings).remove(s.id, &s.labels);
                    write(&self.by_id[(s.id % SHARDS as u64) as usize]).remove(&s.id);
                    removed += 1;
                    false
                });
            }
            shard.retain(|_, bucket| !bucket.is_empty());
        }
        if removed > 0 {
            // Only the symbol table itself still holds an unused symbol.
            symbols::collect();
        }
        removed
    }

    /// Recomputes the head's time bounds from its series (after a cut or deletion).
    pub fn recompute_time_range(&self) {
        let (mut min, mut max) = (i64::MAX, i64::MIN);
        for s in self.all_series() {
            let data = s.data();
            if let Some(t) = data.min_time() {
                min = min.min(t);
            }
            if let Some(t) = data.max_time() {
                max = max.max(t);
            }
            if let Some(last) = data.ooo.last() {
                max = max.max(last.t);
            }
            if let Some((a, b)) = data.histogram_time_range() {
                min = min.min(a);
                max = max.max(b);
            }
        }
        self.min_time.store(min, Ordering::Relaxed);
        self.max_time.store(max, Ordering::Relaxed);
    }

    /// Number of chunks held (sealed plus open).
    pub fn num_chunks(&self) -> usize {
        self.all_series()
            .iter()
            .map(|s| s.data().num_chunks())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stale_nan;

    const LIMITS: AppendLimits = AppendLimits {
        min_valid_time: 0,
        max_valid_time: 100_000,
        out_of_order_window_ms: 1_000,
        now_ms: i64::MAX,
    };
    const ANY_TIME: AppendLimits = AppendLimits::NONE;

    fn collect(d: &SeriesData) -> Vec<(i64, u64)> {
        let mut out = Vec::new();
        d.samples_in(i64::MIN, i64::MAX, &mut out);
        out.iter().map(|s| (s.t, s.v.to_bits())).collect()
    }

    #[test]
    fn append_rules() {
        let mut d = SeriesData::new();
        assert_eq!(d.append(5_000, 1.0, &LIMITS), Ok(Appended::StoredNewChunk));
        assert_eq!(d.append(5_000, 1.0, &LIMITS), Ok(Appended::Duplicate));
        // A different value the conflict rule ranks lower (see the conflict tests).
        assert_eq!(
            d.append(5_000, 0.5, &LIMITS),
            Err(RejectReason::DuplicateTimestamp)
        );
        assert_eq!(d.append(4_500, 0.5, &LIMITS), Ok(Appended::Stored));
        assert_eq!(d.append(4_500, 0.5, &LIMITS), Ok(Appended::Duplicate));
        assert_eq!(
            d.append(4_500, 0.3, &LIMITS),
            Err(RejectReason::DuplicateTimestamp)
        );
        assert_eq!(d.append(3_999, 1.0, &LIMITS), Err(RejectReason::OutOfOrder));
        assert_eq!(d.append(-1, 1.0, &LIMITS), Err(RejectReason::TooOld));
        assert_eq!(
            d.append(100_001, 1.0, &LIMITS),
            Err(RejectReason::TooFarInFuture)
        );
        assert_eq!(d.append(6_000, stale_nan(), &LIMITS), Ok(Appended::Stored));
        assert_eq!(
            collect(&d),
            vec![
                (4_500, 0.5f64.to_bits()),
                (5_000, 1.0f64.to_bits()),
                (6_000, stale_nan().to_bits())
            ]
        );
    }

    #[test]
    fn out_of_order_window_ends_at_the_wall_clock() {
        let now = 50_000;
        let limits = AppendLimits {
            now_ms: now,
            max_valid_time: i64::MAX,
            ..LIMITS
        };
        let mut d = SeriesData::new();
        d.append(10_000_000, 1.0, &limits).unwrap();
        assert_eq!(d.append(now, 2.0, &limits), Ok(Appended::Stored));
        assert_eq!(d.append(now - 1_000, 3.0, &limits), Ok(Appended::Stored));
        assert_eq!(
            d.append(now - 1_001, 4.0, &limits),
            Err(RejectReason::OutOfOrder)
        );
    }

    #[test]
    fn chunks_hold_at_most_120_samples() {
        let mut d = SeriesData::new();
        for i in 0..250 {
            d.append(i * 10, i as f64, &LIMITS).unwrap();
        }
        assert_eq!(d.num_chunks(), 3);
        assert!(d.sealed.iter().all(|c| decode_xor(&c.bytes).count() == 120));
        let mut out = Vec::new();
        d.samples_in(1_000, 1_100, &mut out);
        assert_eq!(out.len(), 11);
    }

    #[test]
    fn cut_splits_at_boundary_and_keeps_data_visible() {
        let mut d = SeriesData::new();
        for i in 0..300 {
            d.append(i * 10, i as f64, &LIMITS).unwrap();
        }
        d.append(2_995, -1.0, &LIMITS).unwrap();
        let cut = d.start_cut(1_500);
        let cut_samples: usize = cut.iter().map(|c| decode_xor(&c.bytes).count()).sum();
        assert_eq!(cut_samples, 150);
        assert_eq!(collect(&d).len(), 301);
        d.finish_cut();
        let left = collect(&d);
        assert_eq!(left.len(), 151);
        assert_eq!(left[0].0, 1_500);
    }

    #[test]
    fn aborted_cut_restores_samples() {
        let mut d = SeriesData::new();
        for i in 0..200 {
            d.append(i * 10, i as f64, &LIMITS).unwrap();
        }
        let before = collect(&d);
        assert!(!d.start_cut(1_000).is_empty());
        d.append(2_500, 1.0, &LIMITS).unwrap();
        d.abort_cut();
        let after = collect(&d);
        assert_eq!(after.len(), before.len() + 1);
        assert!(d.cutting.is_empty());
        assert!(after.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn delete_range_removes_samples() {
        let mut d = SeriesData::new();
        for i in 0..10 {
            d.append(i, i as f64, &LIMITS).unwrap();
        }
        assert_eq!(d.delete_range(3, 5), 3);
        assert_eq!(collect(&d).len(), 7);
        d.append(20, 1.0, &LIMITS).unwrap();
        assert_eq!(collect(&d).len(), 8);
    }

    #[test]
    fn series_lookup_interns_and_gcs() {
        let head = Head::default();
        // A value unique to this test: the symbol table is shared with every other test.
        let l = Labels::from_pairs([("__name__", "up"), ("job", "head-gc-test")]);
        let mut created = Vec::new();
        let a = head.get_or_create(&l, None, &mut |id, _| created.push(id));
        let equal = Labels::from_pairs([("__name__", "up"), ("job", "head-gc-test")]);
        let b = head.get_or_create(&equal, None, &mut |id, _| created.push(id));
        assert_eq!(a.id, b.id);
        assert_eq!(created, vec![a.id]);
        assert_eq!(a.labels(), l);
        // The series keeps the first label set's strings (interned, not copied), and the
        // label sets it hands out share them.
        let job = &a.interned_labels()[1].1;
        assert!(Arc::ptr_eq(job, l.as_slice()[1].value.as_arc()));
        assert!(Arc::ptr_eq(job, a.labels().as_slice()[1].value.as_arc()));
        let job = Arc::downgrade(job);
        assert_eq!(head.num_series(), 1);
        a.data().append(1, 1.0, &LIMITS).unwrap();
        assert_eq!(head.gc(), 0);
        a.data().delete_range(0, 10);
        assert!(a.data().is_empty());
        drop((a, b, l, equal));
        assert_eq!(head.gc(), 1);
        assert_eq!(head.num_series(), 0);
        assert!(job.upgrade().is_none(), "gc dropped the unused symbol");
    }

    #[test]
    fn staged_samples_stay_invisible_until_published() {
        let mut d = SeriesData::new();
        d.append(1_000, 1.0, &LIMITS).unwrap();
        let bits = |v: f64| v.to_bits();
        assert_eq!(d.stage(1_000, 1.0, &LIMITS, 7), Ok(Appended::Duplicate));
        assert_eq!(
            d.stage(1_000, 0.5, &LIMITS, 7),
            Err(RejectReason::DuplicateTimestamp)
        );
        assert_eq!(d.stage(2_000, 2.0, &LIMITS, 7), Ok(Appended::Stored));
        assert_eq!(d.stage(2_000, 2.0, &LIMITS, 7), Ok(Appended::Duplicate));
        // Another request with the same sample logs its own copy.
        assert_eq!(d.stage(2_000, 2.0, &LIMITS, 8), Ok(Appended::Stored));
        // A different value in flight is a conflict; staged too, the rule decides later.
        assert_eq!(d.stage(2_000, 9.0, &LIMITS, 9), Ok(Appended::Conflicting));
        d.discard(9);
        assert_eq!(d.stage(3_000, 3.0, &LIMITS, 8), Ok(Appended::Stored));
        assert_eq!(collect(&d), vec![(1_000, bits(1.0))]);
        assert!(!d.overlaps(3_000, 3_000));
        d.discard(7);
        assert_eq!(collect(&d), vec![(1_000, bits(1.0))]);
        assert_eq!(d.publish(8), 0);
        assert_eq!(
            collect(&d),
            vec![(1_000, bits(1.0)), (2_000, bits(2.0)), (3_000, bits(3.0))]
        );
        assert!(d.staged.is_empty());
    }

    #[test]
    fn conflicting_staged_values_publish_to_the_rules_winner() {
        let bits = |v: f64| v.to_bits();
        for first in [1, 2] {
            let mut d = SeriesData::new();
            assert_eq!(d.stage(1_000, 1.0, &LIMITS, 1), Ok(Appended::Stored));
            assert_eq!(d.stage(1_000, 3.0, &LIMITS, 2), Ok(Appended::Conflicting));
            d.publish(first);
            d.publish(3 - first);
            assert_eq!(
                collect(&d),
                vec![(1_000, bits(3.0))],
                "published {first} first"
            );
        }
        // The winner's WAL write failed: the other value is kept.
        let mut d = SeriesData::new();
        d.stage(1_000, 1.0, &LIMITS, 1).unwrap();
        d.stage(1_000, 3.0, &LIMITS, 2).unwrap();
        d.discard(2);
        d.publish(1);
        assert_eq!(collect(&d), vec![(1_000, bits(1.0))]);
        // The durable value again while a higher one is in flight: a conflict, and
        // nothing to log.
        assert_eq!(d.stage(1_000, 5.0, &LIMITS, 3), Ok(Appended::Conflicting));
        assert_eq!(
            d.stage(1_000, 1.0, &LIMITS, 4),
            Err(RejectReason::DuplicateTimestamp)
        );
        d.publish(3);
        assert_eq!(collect(&d), vec![(1_000, bits(5.0))]);
        assert!(d.staged.is_empty());
    }

    #[test]
    fn gc_keeps_a_series_whose_samples_are_staged() {
        let head = Head::default();
        let l = Labels::from_pairs([("__name__", "up")]);
        let s = head.get_or_create(&l, None, &mut |_, _| {});
        s.data().stage(1, 1.0, &LIMITS, 1).unwrap();
        assert_eq!(head.gc(), 0);
        s.data().discard(1);
        assert_eq!(head.gc(), 1);
    }

    type Answers = Vec<Result<Appended, RejectReason>>;

    /// Appends `values` at `t` in order to a series that holds `base` first; returns
    /// the answers and the stored samples.
    fn conflicts(base: &[(i64, f64)], t: i64, values: &[f64]) -> (Answers, Vec<(i64, u64)>) {
        let mut d = SeriesData::new();
        for &(bt, bv) in base {
            d.append(bt, bv, &LIMITS).unwrap();
        }
        let answers = values.iter().map(|&v| d.append(t, v, &LIMITS)).collect();
        (answers, collect(&d))
    }

    #[test]
    fn conflicting_values_keep_the_rules_winner_in_any_order() {
        use Appended::{Conflicting, Duplicate};
        let dup = Err(RejectReason::DuplicateTimestamp);
        // 1.0 < 2.0 by bits; -1.0 has the sign bit and outranks both.
        for (values, answers) in [
            (
                vec![1.0, 2.0, 2.0, 1.0],
                vec![Ok(Conflicting), Ok(Duplicate), dup],
            ),
            (vec![2.0, 1.0, -1.0], vec![dup, Ok(Conflicting)]),
        ] {
            let (got, stored) = conflicts(&[], 5_000, &values);
            assert_eq!(got[1..], answers[..], "{values:?}");
            let winner = values.iter().copied().reduce(conflict_winner).unwrap();
            assert_eq!(stored, vec![(5_000, winner.to_bits())], "{values:?}");
        }
        // A real value beats a staleness marker whichever came first.
        let stale_first = conflicts(&[], 5_000, &[stale_nan(), 0.0]);
        let real_first = conflicts(&[], 5_000, &[0.0, stale_nan()]);
        assert_eq!(stale_first.0[1], Ok(Conflicting));
        assert_eq!(real_first.0[1], dup);
        assert_eq!(stale_first.1, vec![(5_000, 0.0f64.to_bits())]);
        assert_eq!(stale_first.1, real_first.1);
    }

    #[test]
    fn conflicts_resolve_inside_sealed_open_and_out_of_order_samples() {
        let base: Vec<(i64, f64)> = (0..250).map(|i| (i * 10, i as f64)).collect();
        let mut expected: Vec<(i64, u64)> = base.iter().map(|&(t, v)| (t, v.to_bits())).collect();
        let mut d = SeriesData::new();
        for &(t, v) in &base {
            d.append(t, v, &ANY_TIME).unwrap();
        }
        d.append(2_485, 7.0, &ANY_TIME).unwrap(); // out of order, between two samples
        expected.insert(249, (2_485, 7.0f64.to_bits()));
        // A sealed chunk's middle, the open chunk's middle and end, the OOO buffer.
        for (t, winner, loser) in [
            (500, 1e9, 0.0),
            (2_450, 1e9, 0.5),
            (2_490, 1e9, 3.0),
            (2_485, 8.0, 6.0),
        ] {
            let dup = Err(RejectReason::DuplicateTimestamp);
            assert_eq!(d.append(t, loser, &ANY_TIME), dup, "{t}");
            assert_eq!(d.append(t, winner, &ANY_TIME), Ok(Appended::Conflicting));
            assert_eq!(d.append(t, winner, &ANY_TIME), Ok(Appended::Duplicate));
            let at = expected.iter().position(|&(et, _)| et == t).unwrap();
            expected[at].1 = winner.to_bits();
        }
        assert_eq!(collect(&d), expected);
        assert_eq!(d.num_chunks(), 3);
        // Appending goes on normally after a rewritten open chunk.
        d.append(2_500, 1.0, &ANY_TIME).unwrap();
        assert_eq!(collect(&d).len(), expected.len() + 1);
    }

    #[test]
    fn a_conflict_with_a_sample_being_cut_is_resolved_when_read() {
        for finish in [true, false] {
            let mut d = SeriesData::new();
            for i in 0..200 {
                d.append(i * 10, i as f64, &LIMITS).unwrap();
            }
            let cut = d.start_cut(1_000);
            assert_eq!(cut.iter().map(|c| c.samples().count()).sum::<usize>(), 100);
            // 990 holds 99.0 in a chunk being cut; -1.0 outranks it, 2.0 does not.
            assert_eq!(d.append(990, -1.0, &LIMITS), Ok(Appended::Conflicting));
            assert_eq!(
                d.append(990, 2.0, &LIMITS),
                Err(RejectReason::DuplicateTimestamp)
            );
            let read = collect(&d);
            assert_eq!(read.len(), 200);
            assert_eq!(read[99], (990, (-1.0f64).to_bits()));
            if finish {
                // The block holds 99.0 at 990; the head keeps the winner to merge with it.
                d.finish_cut();
                assert_eq!(collect(&d)[0], (990, (-1.0f64).to_bits()));
            } else {
                d.abort_cut();
                assert_eq!(collect(&d), read);
            }
        }
    }

    // ---- native histograms ----

    use crate::model::histogram::{Histogram, Span};

    /// An integer histogram (schema 0) with these spans and absolute bucket counts.
    fn hist(spans: &[(i32, u32)], counts: &[i64]) -> HistogramValue {
        let mut prev = 0;
        let deltas = counts
            .iter()
            .map(|&c| {
                let d = c - prev;
                prev = c;
                d
            })
            .collect();
        let count = counts.iter().sum::<i64>() as u64;
        HistogramValue::Int(Histogram {
            schema: 0,
            zero_threshold: 0.001,
            count,
            sum: count as f64 * 1.5,
            positive_spans: spans
                .iter()
                .map(|&(offset, length)| Span { offset, length })
                .collect(),
            positive_buckets: deltas,
            ..Histogram::default()
        })
    }

    fn float_hist(spans: &[(i32, u32)], counts: &[i64]) -> HistogramValue {
        match hist(spans, counts) {
            HistogramValue::Int(h) => HistogramValue::Float(h.to_float()),
            HistogramValue::Float(_) => unreachable!(),
        }
    }

    /// What a histogram observed, independent of its bucket layout (a chunk widens
    /// earlier samples with empty buckets): kind, count, sum and non-empty buckets.
    /// Kind (integer?), count bits, sum bits, (bucket index, count bits) of non-empty buckets.
    type Observed = (bool, u64, u64, Vec<(i32, u64)>);

    fn observed(h: &HistogramValue) -> Observed {
        let (int, f) = match h {
            HistogramValue::Int(h) => (true, h.to_float()),
            HistogramValue::Float(h) => (false, h.clone()),
        };
        let mut buckets = Vec::new();
        let (mut idx, mut i) = (0, 0);
        for span in f.positive_spans.iter() {
            idx += span.offset;
            for _ in 0..span.length {
                if f.positive_buckets[i] != 0.0 {
                    buckets.push((idx, f.positive_buckets[i].to_bits()));
                }
                idx += 1;
                i += 1;
            }
        }
        (int, f.count.to_bits(), f.sum.to_bits(), buckets)
    }

    fn histograms(d: &SeriesData) -> Vec<(i64, Observed)> {
        let mut out = Vec::new();
        d.histograms_in(i64::MIN, i64::MAX, &mut out);
        out.iter().map(|s| (s.t, observed(&s.h))).collect()
    }

    #[test]
    fn histograms_round_trip_through_layout_changes_resets_and_kinds() {
        let mut d = SeriesData::new();
        let written = [
            (1_000, hist(&[(0, 2)], &[1, 2])),
            (2_000, hist(&[(0, 2)], &[2, 3])),
            // A new bucket: the chunk is re-encoded with it.
            (3_000, hist(&[(0, 2), (3, 1)], &[2, 4, 1])),
            // A bucket went down: a counter reset starts a chunk.
            (4_000, hist(&[(0, 2)], &[1, 1])),
            // The other kind starts a chunk of the other encoding.
            (5_000, float_hist(&[(0, 2)], &[2, 2])),
            (6_000, float_hist(&[(0, 3)], &[2, 3, 1])),
        ];
        let mut new_chunks = 0;
        for (t, h) in &written {
            match d.append_histogram(*t, h, &LIMITS) {
                Ok(Appended::StoredNewChunk) => new_chunks += 1,
                Ok(Appended::Stored) => {}
                other => panic!("{t}: {other:?}"),
            }
        }
        assert_eq!(new_chunks, 3);
        assert_eq!(d.num_chunks(), 3);
        let want: Vec<_> = written.iter().map(|(t, h)| (*t, observed(h))).collect();
        assert_eq!(histograms(&d), want);
        // Floats are untouched; the head's time range is the floats'.
        assert!(collect(&d).is_empty());
        assert_eq!(d.min_time(), None);
        // The same histogram again is a duplicate; another one at that time is not.
        let (t, h) = &written[5];
        assert_eq!(d.append_histogram(*t, h, &LIMITS), Ok(Appended::Duplicate));
        assert_eq!(
            d.append_histogram(*t, &float_hist(&[(0, 1)], &[9]), &LIMITS),
            Err(RejectReason::DuplicateTimestamp)
        );
        // Many samples: chunks hold at most 120.
        for i in 0..250 {
            let t = 10_000 + i * 10;
            d.append_histogram(t, &hist(&[(0, 1)], &[i]), &LIMITS)
                .unwrap();
        }
        assert_eq!(d.num_chunks(), 3 + 3);
        assert_eq!(histograms(&d).len(), 6 + 250);
    }

    #[test]
    fn histogram_append_rules_are_the_float_paths() {
        let mut d = SeriesData::new();
        let h = hist(&[(0, 1)], &[1]);
        d.append_histogram(5_000, &h, &LIMITS).unwrap();
        assert_eq!(
            d.append_histogram(-1, &h, &LIMITS),
            Err(RejectReason::TooOld)
        );
        assert_eq!(
            d.append_histogram(100_001, &h, &LIMITS),
            Err(RejectReason::TooFarInFuture)
        );
        assert_eq!(
            d.append_histogram(3_999, &h, &LIMITS),
            Err(RejectReason::OutOfOrder)
        );
        // Within the window: stored out of order, read in time order.
        assert_eq!(d.append_histogram(4_500, &h, &LIMITS), Ok(Appended::Stored));
        assert_eq!(
            d.append_histogram(4_500, &h, &LIMITS),
            Ok(Appended::Duplicate)
        );
        assert_eq!(d.append_histogram(4_200, &h, &LIMITS), Ok(Appended::Stored));
        let times: Vec<i64> = histograms(&d).iter().map(|x| x.0).collect();
        assert_eq!(times, vec![4_200, 4_500, 5_000]);
        // The window is measured from the newest sample of either type.
        d.append(7_000, 1.0, &LIMITS).unwrap();
        assert_eq!(
            d.append_histogram(5_500, &h, &LIMITS),
            Err(RejectReason::OutOfOrder)
        );
        assert_eq!(d.append(5_500, 1.0, &LIMITS), Err(RejectReason::OutOfOrder));
        // Floats were stored after the histograms' chunk: the next one starts a chunk.
        assert_eq!(
            d.append_histogram(6_500, &h, &LIMITS),
            Ok(Appended::StoredNewChunk)
        );
    }

    #[test]
    fn a_series_switches_between_floats_and_histograms() {
        let mut d = SeriesData::new();
        let h = hist(&[(0, 1)], &[1]);
        d.append(1_000, 1.0, &LIMITS).unwrap();
        assert_eq!(
            d.append_histogram(2_000, &h, &LIMITS),
            Ok(Appended::StoredNewChunk)
        );
        d.append(3_000, 2.0, &LIMITS).unwrap();
        // After floats, the next histogram starts a chunk, as Prometheus's type switch.
        assert_eq!(
            d.append_histogram(4_000, &h, &LIMITS),
            Ok(Appended::StoredNewChunk)
        );
        assert_eq!(d.append_histogram(5_000, &h, &LIMITS), Ok(Appended::Stored));
        // A timestamp holds one type.
        assert_eq!(
            d.append(4_000, 1.0, &LIMITS),
            Err(RejectReason::DuplicateTimestamp)
        );
        assert_eq!(
            d.append_histogram(3_000, &h, &LIMITS),
            Err(RejectReason::DuplicateTimestamp)
        );
        let float_times: Vec<i64> = collect(&d).iter().map(|x| x.0).collect();
        let hist_times: Vec<i64> = histograms(&d).iter().map(|x| x.0).collect();
        assert_eq!(float_times, vec![1_000, 3_000]);
        assert_eq!(hist_times, vec![2_000, 4_000, 5_000]);
        // Deleting keeps the other type's samples and the series.
        assert_eq!(d.delete_range(2_000, 3_000), 2);
        assert_eq!(histograms(&d).len(), 2);
        assert_eq!(collect(&d).len(), 1);
        assert!(!d.is_empty());
    }

    #[test]
    fn staged_histograms_stay_invisible_until_published() {
        let mut d = SeriesData::new();
        let h = hist(&[(0, 1)], &[1]);
        let other = hist(&[(0, 1)], &[2]);
        assert_eq!(
            d.stage_histogram(1_000, &h, &LIMITS, 1),
            Ok(Appended::Stored)
        );
        assert_eq!(
            d.stage_histogram(1_000, &h, &LIMITS, 1),
            Ok(Appended::Duplicate)
        );
        // Another request: the same histogram stages its own copy; another value or a
        // float at that time cannot be settled later, so it is refused.
        assert_eq!(
            d.stage_histogram(1_000, &h, &LIMITS, 2),
            Ok(Appended::Stored)
        );
        assert_eq!(
            d.stage_histogram(1_000, &other, &LIMITS, 3),
            Err(RejectReason::DuplicateTimestamp)
        );
        assert_eq!(
            d.stage(1_000, 1.0, &LIMITS, 3),
            Err(RejectReason::DuplicateTimestamp)
        );
        d.stage(2_000, 1.0, &LIMITS, 3).unwrap();
        assert_eq!(
            d.stage_histogram(2_000, &h, &LIMITS, 4),
            Err(RejectReason::DuplicateTimestamp)
        );
        assert!(histograms(&d).is_empty());
        assert!(d.has_staged());
        d.discard(1);
        d.discard(3);
        assert!(histograms(&d).is_empty());
        assert_eq!(d.publish(2), 1);
        assert_eq!(histograms(&d), vec![(1_000, observed(&h))]);
        assert!(!d.has_staged());
    }

    #[test]
    fn a_head_cut_moves_histograms_with_the_floats() {
        let mut d = SeriesData::new();
        for i in 0..200 {
            d.append(i * 10, i as f64, &LIMITS).unwrap();
            d.append_histogram(i * 10 + 5, &hist(&[(0, 1)], &[i]), &LIMITS)
                .unwrap();
        }
        let cut = d.start_cut(1_000);
        assert_eq!(cut.iter().map(|c| c.samples().count()).sum::<usize>(), 100);
        let cut_hist = d.start_cut_histograms(1_000);
        assert_eq!(cut_hist.iter().map(|c| c.num_samples).sum::<usize>(), 100);
        assert_eq!(histograms(&d).len(), 200, "readable until the block is");
        d.finish_cut();
        assert_eq!(collect(&d).len(), 100);
        assert_eq!(histograms(&d).len(), 100);
        assert!(histograms(&d).iter().all(|(t, _)| *t > 1_000));

        let head = Head::default();
        let l = Labels::from_pairs([("__name__", "h"), ("job", "head-hist-gc-test")]);
        let s = head.get_or_create(&l, None, &mut |_, _| {});
        s.data()
            .append_histogram(1, &hist(&[], &[]), &LIMITS)
            .unwrap();
        drop(s.data().start_cut(i64::MAX));
        s.data().finish_cut();
        assert_eq!(head.gc(), 0, "a series holding only histograms stays");
        drop(s.data().start_cut_histograms(i64::MAX));
        assert_eq!(
            head.gc(),
            0,
            "nor is it dropped while its histograms are cut"
        );
        s.data().finish_cut();
        assert_eq!(head.gc(), 1, "collected once they are in a block");
    }
}
