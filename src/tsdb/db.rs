//! The database behind a `Tsdb` handle: opening (blocks, WAL replay), the append path,
//! reads, deletion, maintenance (head cut, compaction, retention), snapshots, stats.
//!
//! Native histograms take the same append path (`append_histograms`, WAL kinds 6/7)
//! and the same cuts: a head cut moves them into the block with the floats, and the
//! WAL is truncated only after that block is durable and visible (ADR 0030).
//!
//! Owns: the order in which the parts are touched so that every acknowledged sample is
//! in the WAL, readers see each sample exactly once, and a crash at any point leaves a
//! state that replays correctly. All methods are blocking; `Tsdb` runs them off the
//! async runtime. Calls every other `tsdb` module, `model` and `storage`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::block::{Block, BlockWriter};
use super::cardinality::{HeadCardinality, PairCounter};
use super::changes::ChangeLog;
use super::compact;
use super::digest::{self, DigestCache, DigestReport};
use super::head::{lock, AppendLimits, Appended, Head, MemSeries, SeriesData};
use super::index::{PostingsSource, SeriesRef};
use super::metrics::TsdbMetrics;
use super::quarantine;
use super::querier::Querier;
use super::retention::{self, BlockExtent};
use super::wal::{self, FloatHistogramsRecord, HistogramsRecord, Record, SamplesRecord, Wal};
use super::{BlockInfo, TsdbOptions};
use crate::model::histogram::HistogramValue;
use crate::model::{
    self, conflict_winner, HistogramSeries, Labels, Matcher, MetricMetadata, Sample, Series,
};
use crate::storage::{
    AppendOutcome, ChangeMark, Changes, HistogramAppendError, RejectReason, SelectError,
    StorageError, LATE_WRITE_AGE_MS,
};

/// Compaction levels (block duration x 1, 3, 9, 27, 81).
const COMPACTION_LEVELS: usize = 5;
/// Samples per record when writing a checkpoint.
const CHECKPOINT_BATCH: usize = 4096;

pub struct Db {
    opts: TsdbOptions,
    metrics: TsdbMetrics,
    head: Head,
    wal: Wal,
    /// Sorted by min time. Its write lock is also held while a head cut becomes visible,
    /// so readers see the cut data either in the head or in the new block.
    blocks: RwLock<Vec<Arc<Block>>>,
    metadata: Mutex<BTreeMap<String, MetricMetadata>>,
    /// Serialises maintenance, deletion and snapshots.
    maintenance: Mutex<()>,
    /// Appenders hold it shared from staging to publishing; taken exclusively to cut
    /// the WAL for a checkpoint and to log a deletion, so neither can overtake samples
    /// that are durable but not yet in the head.
    commit_gate: RwLock<()>,
    /// Tells apart the staged samples of concurrent appends.
    next_ticket: AtomicU64,
    closed: AtomicBool,
    /// Window digests of immutable blocks (anti-entropy).
    digests: DigestCache,
    /// Changes to old data, for caches of query results (ADR 0024).
    changes: ChangeLog,
    /// The clock's time at the newest late write (`note_if_late`; `i64::MIN`: none since
    /// open): anti-entropy waits for old samples to stop arriving (ADR 0016).
    last_late_write_ms: AtomicI64,
    /// Whether a native histogram may be stored here: set by the first histogram
    /// appended, replayed or found in a block, never cleared. Reads of histograms skip
    /// the index walk while it is false (most nodes never see one).
    may_hold_histograms: AtomicBool,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Db {
    pub fn open(opts: TsdbOptions, metrics: TsdbMetrics) -> Result<Db, StorageError> {
        fs::create_dir_all(&opts.dir)?;
        let blocks = load_blocks(&opts.dir)?;
        metrics.blocks_loaded.set(blocks.len() as i64);
        let head = Head::default();
        let mut metadata = BTreeMap::new();
        let started = Instant::now();
        let (wal, report, replayed_histograms) = {
            let mut replayer = Replayer {
                head: &head,
                ids: HashMap::new(),
                metadata: &mut metadata,
                saw_histograms: false,
            };
            let (wal, report) = Wal::open(
                &opts.dir.join("wal"),
                opts.wal_segment_bytes,
                Box::new(metrics.clone()),
                &mut |rec| replayer.apply(rec),
            )?;
            (wal, report, replayer.saw_histograms)
        };
        let may_hold_histograms =
            replayed_histograms || blocks.iter().any(|b| b.index.has_histograms());
        metrics
            .wal_replay_seconds
            .set(started.elapsed().as_secs_f64());
        metrics.wal_corruptions.inc_by(report.corrupt_records);
        tracing::info!(
            records = report.records,
            corrupt = report.corrupt_records,
            torn_tail = report.torn_tail_truncated,
            series = head.num_series(),
            blocks = blocks.len(),
            "TSDB opened"
        );
        head.recompute_time_range();
        let now = opts.clock.now_ms();
        if let Some(newest) = blocks.iter().map(|b| b.meta.max_time).max() {
            // Never above the wall clock: a block reaching into the future must not
            // make current samples too old (ADR 0009).
            head.set_min_valid_time(newest.min(now).saturating_sub(opts.out_of_order_window_ms));
        }
        let db = Db {
            opts,
            metrics,
            head,
            wal,
            blocks: RwLock::new(blocks),
            metadata: Mutex::new(metadata),
            maintenance: Mutex::new(()),
            commit_gate: RwLock::new(()),
            next_ticket: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            digests: DigestCache::default(),
            changes: ChangeLog::new(),
            last_late_write_ms: AtomicI64::new(i64::MIN),
            may_hold_histograms: AtomicBool::new(may_hold_histograms),
        };
        if let Some(newest_valid) = db.opts.time_bounds.newest_valid(now) {
            db.remove_future_samples(newest_valid)?;
        }
        db.update_head_gauges();
        Ok(db)
    }

    /// Start-up recovery (ADR 0009): samples newer than `newest_valid` were stored before
    /// the future limit existed, or while this node's clock was ahead. Each is copied to
    /// the quarantine, then removed: from the head with a logged deletion, from blocks
    /// with tombstones and a rewrite of the block, so no block reaches past the limit.
    fn remove_future_samples(&self, newest_valid: i64) -> Result<(), StorageError> {
        let from = newest_valid.saturating_add(1);
        let mut removed = quarantine::Removed::default();
        let mut head_ids = Vec::new();
        let mut histograms = Vec::new();
        for series in self.head.all_series() {
            let mut samples = Vec::new();
            histograms.clear();
            {
                let data = series.data();
                data.samples_in(from, i64::MAX, &mut samples);
                data.histograms_in(from, i64::MAX, &mut histograms);
            }
            if !samples.is_empty() || !histograms.is_empty() {
                head_ids.push(series.id);
            }
            if !samples.is_empty() {
                removed.add(series.labels(), samples);
            }
        }
        let blocks = read(&self.blocks).clone();
        let mut to_rewrite: Vec<(Arc<Block>, Vec<SeriesRef>)> = Vec::new();
        // `max_time` is exclusive: a block holds a sample at `from` or later iff this.
        for block in blocks.iter().filter(|b| b.meta.max_time > from) {
            let mut refs = Vec::new();
            for r in block.index.all_postings() {
                let (labels, metas, hist_metas) = block.index.series_with_histograms(r)?;
                if metas
                    .iter()
                    .chain(&hist_metas)
                    .all(|&(_, chunk_max, _)| chunk_max < from)
                {
                    continue;
                }
                let mut samples = Vec::new();
                block.samples(r, &metas, from, i64::MAX, &mut samples)?;
                if !samples.is_empty() {
                    removed.add(labels, samples);
                }
                refs.push(r);
            }
            to_rewrite.push((block.clone(), refs));
        }
        if removed.is_empty() && to_rewrite.is_empty() && head_ids.is_empty() {
            return Ok(());
        }
        let summary = removed.summary();
        let copy = removed.write(&self.opts.dir)?;
        // Histograms beyond the limit are removed too (head and blocks), without a copy:
        // the quarantine block holds floats only (a known gap, ADR 0030).
        self.delete_from_head(&head_ids, from, i64::MAX)?;
        for (block, refs) in &to_rewrite {
            self.add_tombstones(block, refs, from, i64::MAX)?;
            self.replace_blocks(std::slice::from_ref(block))?;
        }
        self.head.gc();
        self.head.recompute_time_range();
        self.metrics.future_samples_removed.inc_by(summary.samples);
        tracing::warn!(
            samples = summary.samples,
            series = summary.series,
            min_time = summary.min_time,
            max_time = summary.max_time,
            newest_valid,
            blocks_rewritten = to_rewrite.len(),
            examples = %summary.named,
            quarantine = %copy.as_ref().map_or(String::new(), |p| p.display().to_string()),
            "removed samples beyond the future limit (a sender's or this node's clock was \
             wrong); a copy is kept in the quarantine block"
        );
        Ok(())
    }

    pub(super) fn check_open(&self) -> Result<(), StorageError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Unavailable("the TSDB is closed".into()));
        }
        Ok(())
    }

    fn update_head_gauges(&self) {
        self.metrics.head_series.set(self.head.num_series() as i64);
        self.metrics.head_chunks.set(self.head.num_chunks() as i64);
    }

    // ---- writes ----

    /// What every append starts with: the store must be open; the commit gate is held
    /// (read) until the samples are published, so a checkpoint never covers a WAL record
    /// whose samples are not in the head yet; a ticket tells this append's staged samples
    /// apart; and the time limits at this moment.
    fn begin_append(
        &self,
    ) -> Result<(std::sync::RwLockReadGuard<'_, ()>, u64, AppendLimits), StorageError> {
        self.check_open()?;
        let publishing = read(&self.commit_gate);
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let limits = self.head.limits(
            self.opts.out_of_order_window_ms,
            &self.opts.time_bounds,
            self.opts.clock.now_ms(),
        );
        Ok((publishing, ticket, limits))
    }

    /// Appends a batch; returns once every stored sample is fsynced in the WAL.
    ///
    /// Acknowledge and expose in WAL order (ADR 0010): the samples are checked and
    /// staged in their series (invisible to reads), logged as one record, and stored
    /// in the head only once that record is durable; when the WAL write fails they
    /// are dropped and the whole request fails, so nothing of it is ever visible.
    pub fn append(&self, batch: &[Series]) -> Result<AppendOutcome, StorageError> {
        let (_publishing, ticket, limits) = self.begin_append()?;
        let mut record = SamplesRecord::default();
        let mut tally = Tally::default();
        let mut staged_in = Vec::new();
        for series in batch.iter().filter(|s| !s.samples.is_empty()) {
            if let Some(mem) = self.stage_series(series, &limits, ticket, &mut record, &mut tally) {
                staged_in.push(mem);
            }
        }
        let records = if record.is_empty() {
            Vec::new()
        } else {
            record.finish()
        };
        self.commit_staged(&records, &staged_in, ticket, &mut tally)?;
        if tally.mint <= tally.maxt {
            self.head.note_time_range(tally.mint, tally.maxt);
            self.note_if_late(tally.mint);
        }
        Ok(self.count_outcome(tally))
    }

    /// Logs the framed records of the samples staged under `ticket` (none when empty)
    /// and waits until they are durable, then publishes them; when the WAL write fails,
    /// drops them instead and fails (ADR 0010). The records are logged in one piece, so
    /// one group commit takes all or none of them.
    fn commit_staged(
        &self,
        records: &[u8],
        staged_in: &[Arc<MemSeries>],
        ticket: u64,
        tally: &mut Tally,
    ) -> Result<(), StorageError> {
        if !records.is_empty() {
            let seq = self.wal.log(records);
            if let Err(e) = self.wal.sync(seq) {
                for mem in staged_in {
                    mem.data().discard(ticket);
                }
                self.metrics.appends_refused.inc();
                return Err(e);
            }
        }
        for mem in staged_in {
            tally.new_chunks += mem.data().publish(ticket);
        }
        Ok(())
    }

    /// Folds a batch's tally into the metrics and the answer.
    fn count_outcome(&self, tally: Tally) -> AppendOutcome {
        self.metrics.samples_appended.inc_by(tally.appended);
        self.metrics.head_chunks.inc_by(tally.new_chunks as i64);
        for (i, &n) in tally.rejected.iter().enumerate() {
            if n > 0 {
                self.metrics.rejected(RejectReason::ALL[i], n);
            }
        }
        tally.into_outcome()
    }

    /// Appends native histogram samples; returns once every stored one is fsynced in
    /// the WAL (records of kinds 6 and 7), staged and published as `append` does.
    /// Every histogram is validated first (Prometheus's rules): one invalid histogram
    /// refuses the whole batch, nothing of it stored. The head's rules are the float
    /// path's (see `head::SeriesData::append_histogram`). Head cuts move them into
    /// blocks like floats (ADR 0030).
    pub fn append_histograms(
        &self,
        batch: &[HistogramSeries],
    ) -> Result<AppendOutcome, HistogramAppendError> {
        for series in batch {
            for s in &series.samples {
                s.h.validate()
                    .map_err(|error| HistogramAppendError::Invalid {
                        labels: series.labels.clone(),
                        t: s.t,
                        error,
                    })?;
            }
        }
        let (_publishing, ticket, limits) = self.begin_append()?;
        // Before anything is staged, so no reader can find the flag false once a
        // histogram is visible.
        self.may_hold_histograms.store(true, Ordering::Release);
        let mut ints = HistogramsRecord::default();
        let mut floats = FloatHistogramsRecord::default();
        let mut tally = Tally::default();
        let mut staged_in = Vec::new();
        for series in batch.iter().filter(|s| !s.samples.is_empty()) {
            let staged = self.with_series(&series.labels, &mut |id, data| {
                let mut staged = false;
                for s in &series.samples {
                    match data.stage_histogram(s.t, &s.h, &limits, ticket) {
                        Ok(Appended::Duplicate) => tally.appended += 1,
                        Ok(_) => {
                            match &s.h {
                                HistogramValue::Int(h) => ints.push(id, s.t, h),
                                HistogramValue::Float(h) => floats.push(id, s.t, h),
                            }
                            tally.stored(s.t);
                            staged = true;
                        }
                        Err(reason) => tally.reject(reason, &series.labels, s.t),
                    }
                }
                staged
            });
            staged_in.extend(staged);
        }
        let mut records = Vec::new();
        if !ints.is_empty() {
            records.extend(ints.finish());
        }
        if !floats.is_empty() {
            records.extend(floats.finish());
        }
        self.commit_staged(&records, &staged_in, ticket, &mut tally)?;
        // Histograms count in the head's time range: it decides head cuts, which move
        // them into blocks.
        if tally.mint <= tally.maxt {
            self.head.note_time_range(tally.mint, tally.maxt);
            self.note_if_late(tally.mint);
        }
        Ok(self.count_outcome(tally))
    }

    /// Stores samples a replica has and this node lacks (repair, anti-entropy; ADR 0016),
    /// including samples the head refuses as too old. Returns once every stored sample
    /// is durable.
    ///
    /// Per series: samples beyond the wall-clock bounds (ADR 0009) or below retention
    /// are refused as usual; samples this node already holds (same value, or a value
    /// that wins the conflict rule over the offered one, ADR 0011) are counted as
    /// appended and not written again; of the rest, those the head accepts (not below
    /// its lower bound, nor behind the series' out-of-order window, nor older than the
    /// out-of-order window before the wall clock) take the normal head path (WAL), and
    /// the older ones are written as new blocks, fsynced before this
    /// returns, one per aligned window of the largest compaction range. Such a block
    /// overlaps blocks already there; compaction merges overlapping blocks first, with
    /// the conflict rule, and reads merge them meanwhile.
    pub fn backfill(&self, batch: &[Series]) -> Result<Backfilled, StorageError> {
        self.check_open()?;
        // No head cut or compaction between reading what is here and writing the rest.
        let _serial = lock(&self.maintenance);
        let now = self.opts.clock.now_ms();
        let limits = self.head.limits(
            self.opts.out_of_order_window_ms,
            &self.opts.time_bounds,
            now,
        );
        let retention_floor = if self.opts.retention_ms > 0 {
            now.saturating_sub(self.opts.retention_ms)
        } else {
            i64::MIN
        };
        let mut outcome = AppendOutcome::default();
        let mut tally = Tally::default();
        let mut to_head: Vec<Series> = Vec::new();
        let mut to_blocks: Vec<Series> = Vec::new();
        let mut new_series = 0u64;
        for series in batch.iter().filter(|s| !s.samples.is_empty()) {
            let mut offered: Vec<Sample> = Vec::with_capacity(series.samples.len());
            for s in &series.samples {
                if s.t > limits.max_valid_time {
                    tally.reject(RejectReason::TooFarInFuture, &series.labels, s.t);
                } else if s.t < retention_floor
                    || self
                        .opts
                        .time_bounds
                        .oldest_valid(now)
                        .is_some_and(|oldest| s.t < oldest)
                {
                    tally.reject(RejectReason::TooOld, &series.labels, s.t);
                } else {
                    offered.push(*s);
                }
            }
            if offered.is_empty() {
                continue;
            }
            offered.sort_by_key(|s| s.t);
            offered.dedup_by(|later, earlier| {
                if later.t == earlier.t {
                    earlier.v = conflict_winner(earlier.v, later.v);
                    true
                } else {
                    false
                }
            });
            let first = offered[0].t;
            let held = self.held_samples(&series.labels, first)?;
            let missing = samples_missing(&held, &offered);
            tally.appended += (offered.len() - missing.len()) as u64;
            if missing.is_empty() {
                continue;
            }
            new_series += 1;
            // What the head would take: not below its bound, not behind the series'
            // out-of-order window (measured like the head does, ADR 0009), and not older
            // than the out-of-order window before the wall clock: that is where the next
            // cut puts the head's bound, so older samples would only pass through the WAL
            // and the head to be cut again (an empty head, as after a wiped data
            // directory, would otherwise take years of a rebuild and cut them one block
            // duration at a time, holding maintenance for all of it).
            let newest_held = held.last().map_or(i64::MIN, |s| s.t);
            let head_floor = limits
                .min_valid_time
                .max(
                    newest_held
                        .min(now)
                        .saturating_sub(self.opts.out_of_order_window_ms),
                )
                .max(now.saturating_sub(self.opts.out_of_order_window_ms));
            let (old, recent): (Vec<Sample>, Vec<Sample>) =
                missing.into_iter().partition(|s| s.t < head_floor);
            if !recent.is_empty() {
                to_head.push(Series {
                    labels: series.labels.clone(),
                    samples: recent,
                });
            }
            if !old.is_empty() {
                to_blocks.push(Series {
                    labels: series.labels.clone(),
                    samples: old,
                });
            }
        }
        let block_samples: u64 = to_blocks.iter().map(|s| s.samples.len() as u64).sum();
        let oldest_to_blocks = to_blocks
            .iter()
            .filter_map(|s| s.samples.first().map(|x| x.t))
            .min();
        self.write_backfill_blocks(to_blocks)?;
        // Visible now; the samples for the head are noted by `append`.
        if let Some(oldest) = oldest_to_blocks {
            self.note_if_late(oldest);
        }
        tally.appended += block_samples;
        self.metrics.samples_backfilled.inc_by(block_samples);
        self.metrics.samples_appended.inc_by(block_samples);
        for (i, &n) in tally.rejected.iter().enumerate() {
            if n > 0 {
                self.metrics.rejected(RejectReason::ALL[i], n);
            }
        }
        outcome.merge(tally.into_outcome());
        let mut new_samples = block_samples;
        if !to_head.is_empty() {
            let offered: u64 = to_head.iter().map(|s| s.samples.len() as u64).sum();
            let head = self.append(&to_head)?;
            // A conflict the offered value wins is stored, though answered as a conflict.
            let refused: u64 = head
                .rejected
                .iter()
                .filter(|(r, _)| *r != RejectReason::DuplicateTimestamp)
                .map(|(_, n)| n)
                .sum();
            new_samples += offered.saturating_sub(refused);
            outcome.merge(head);
        }
        Ok(Backfilled {
            outcome,
            new_samples,
            new_series,
        })
    }

    /// The samples this node holds for exactly `labels` from `from` on (head and blocks,
    /// merged).
    fn held_samples(&self, labels: &Labels, from: i64) -> Result<Vec<Sample>, StorageError> {
        let matchers: Vec<Matcher> = labels
            .iter()
            .map(|l| Matcher::equal(&l.name, &l.value))
            .collect();
        let found = self
            .select(&matchers, from, i64::MAX, 0)
            .map_err(|e| match e {
                SelectError::Storage(e) => e,
                SelectError::TooManySamples => StorageError::Other("too many samples".into()),
            })?;
        // Equality matchers also match series with more labels: keep the exact one.
        Ok(found
            .into_iter()
            .find(|s| &s.labels == labels)
            .map(|s| s.samples)
            .unwrap_or_default())
    }

    /// Writes backfilled series as new level-1 blocks, one per aligned window of the
    /// largest compaction range (so compaction sees them like any other block), each
    /// fsynced and renamed into place before it becomes visible.
    fn write_backfill_blocks(&self, series: Vec<Series>) -> Result<(), StorageError> {
        if series.is_empty() {
            return Ok(());
        }
        let range = *compact::ranges(
            self.opts.block_duration_ms,
            self.opts.retention_ms,
            COMPACTION_LEVELS,
        )
        .last()
        .unwrap_or(&self.opts.block_duration_ms.max(1));
        let mut windows: BTreeMap<i64, BTreeMap<Labels, Vec<Sample>>> = BTreeMap::new();
        for s in series {
            for sample in s.samples {
                windows
                    .entry(sample.t.div_euclid(range))
                    .or_default()
                    .entry(s.labels.clone())
                    .or_default()
                    .push(sample);
            }
        }
        let mut opened = Vec::new();
        for (_, by_labels) in windows {
            let mut writer = BlockWriter::new(&self.opts.dir)?;
            for (labels, samples) in by_labels {
                writer.add_series_samples(labels, &samples)?;
            }
            if let Some(meta) = writer.finish(1, Vec::new())? {
                opened.push(Arc::new(Block::open(&self.opts.dir.join(&meta.ulid))?));
            }
        }
        let mut blocks = write(&self.blocks);
        blocks.extend(opened);
        blocks.sort_by_key(|b| b.meta.min_time);
        self.metrics.blocks_loaded.set(blocks.len() as i64);
        Ok(())
    }

    /// Stages the samples of one series under `ticket`; returns the series when it
    /// staged any (those must be published or discarded).
    fn stage_series(
        &self,
        series: &Series,
        limits: &AppendLimits,
        ticket: u64,
        record: &mut SamplesRecord,
        tally: &mut Tally,
    ) -> Option<Arc<MemSeries>> {
        self.with_series(&series.labels, &mut |id, data| {
            let mut staged = false;
            for s in &series.samples {
                if model::is_created_zero(s.v) {
                    // The zero of a created timestamp (ADR 0027): stored only before
                    // everything the series holds, never counted, never refused.
                    if !data.has_sample_since(s.t)
                        && matches!(
                            data.stage(s.t, 0.0, limits, ticket),
                            Ok(Appended::Stored | Appended::StoredNewChunk)
                        )
                    {
                        record.push(id, s.t, 0.0);
                        tally.widen(s.t);
                        staged = true;
                    }
                    continue;
                }
                match data.stage(s.t, s.v, limits, ticket) {
                    Ok(Appended::Stored | Appended::StoredNewChunk) => {
                        record.push(id, s.t, s.v);
                        tally.stored(s.t);
                        staged = true;
                    }
                    Ok(Appended::Duplicate) => tally.appended += 1,
                    Ok(Appended::Conflicting) => {
                        // Logged and published like a stored sample, so the conflict rule
                        // decides what is kept, on replay too; answered as a conflict.
                        record.push(id, s.t, s.v);
                        tally.widen(s.t);
                        tally.reject(RejectReason::DuplicateTimestamp, &series.labels, s.t);
                        staged = true;
                    }
                    Err(reason) => tally.reject(reason, &series.labels, s.t),
                }
            }
            staged
        })
    }

    /// Runs `f` on the head series with `labels` (created, and logged, when new) under
    /// its lock; returns the series when `f` says it staged samples there.
    fn with_series(
        &self,
        labels: &Labels,
        f: &mut dyn FnMut(SeriesRef, &mut SeriesData) -> bool,
    ) -> Option<Arc<MemSeries>> {
        loop {
            let mem = self.head.get_or_create(labels, None, &mut |id, labels| {
                let mut buf = Vec::new();
                wal::encode_series(&mut buf, id, labels);
                self.wal.log(&buf);
                self.metrics.head_series.inc();
            });
            let mut data = mem.data();
            if data.is_removed() {
                continue; // dropped by head GC between lookup and lock
            }
            let staged = f(mem.id, &mut data);
            drop(data);
            return staged.then_some(mem);
        }
    }

    /// Ok when the node can take writes; otherwise tries to make the WAL writable
    /// again (at most once a second) and says why it cannot.
    pub fn writable(&self) -> Result<(), StorageError> {
        self.check_open()?;
        self.wal.try_recover()
    }

    /// Test hook: fails the next `n` WAL writes or recovery attempts.
    #[cfg(test)]
    pub fn inject_wal_failures(&self, n: u32) {
        self.wal.inject_failures(n);
    }

    /// Whether writes are refused right now (the WAL is failing). Never blocks.
    pub fn refusing_writes(&self) -> bool {
        self.wal.is_failing()
    }

    pub fn record_metadata(&self, metadata: Vec<MetricMetadata>) -> Result<(), StorageError> {
        self.check_open()?;
        if metadata.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        wal::encode_metadata(&mut buf, &metadata);
        let seq = self.wal.log(&buf);
        {
            let mut known = lock(&self.metadata);
            for m in metadata {
                known.insert(m.metric_family.clone(), m);
            }
        }
        self.wal.sync(seq)
    }

    pub fn metadata(&self, metric: Option<&str>) -> Vec<MetricMetadata> {
        let known = lock(&self.metadata);
        match metric {
            Some(name) => known.get(name).cloned().into_iter().collect(),
            None => known.values().cloned().collect(),
        }
    }

    /// Deletes the samples of matching series in `[mint, maxt]`: applied to the head at
    /// once (and logged), recorded as tombstones for blocks.
    pub fn delete_series(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<(), StorageError> {
        self.check_open()?;
        let _serial = lock(&self.maintenance);
        let ids = {
            let blocks = read(&self.blocks);
            Querier {
                blocks: &blocks,
                head: &self.head,
            }
            .head_ids(matchers)
        };
        self.delete_from_head(&ids, mint, maxt)?;
        let blocks = read(&self.blocks).clone();
        for block in blocks.iter().filter(|b| b.overlaps(mint, maxt)) {
            self.add_tombstones(block, &Querier::block_refs(block, matchers), mint, maxt)?;
        }
        self.head.gc();
        self.head.recompute_time_range();
        self.update_head_gauges();
        self.changes.record(mint);
        Ok(())
    }

    /// Logs a change to old data (ADR 0024) when `earliest`, the oldest timestamp just
    /// made visible, is a late write by the clock read now, after it became visible: a
    /// query that started before and missed it cannot have cached the steps it touches
    /// unless the change is logged.
    fn note_if_late(&self, earliest: i64) {
        let now = self.opts.clock.now_ms();
        if earliest < now.saturating_sub(LATE_WRITE_AGE_MS) {
            self.changes.record(earliest);
            self.last_late_write_ms.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// How long ago, by the clock, the newest late write (an append or repair of a
    /// sample older than `LATE_WRITE_AGE_MS`) was stored; `None` when there was none
    /// since the store opened.
    pub fn since_late_write_ms(&self) -> Option<i64> {
        let at = self.last_late_write_ms.load(Ordering::Relaxed);
        (at != i64::MIN).then(|| self.opts.clock.now_ms().saturating_sub(at).max(0))
    }

    /// Changes to old data since `since` (ADR 0024).
    pub fn changes_since(&self, since: Option<ChangeMark>) -> Changes {
        self.changes.since(since)
    }

    /// Deletes `[mint, maxt]` of the head series `ids`, durably (a WAL record).
    fn delete_from_head(
        &self,
        ids: &[SeriesRef],
        mint: i64,
        maxt: i64,
    ) -> Result<(), StorageError> {
        if ids.is_empty() {
            return Ok(());
        }
        // No append between staging and publishing: its samples may be logged before
        // this deletion yet stored in the head after it.
        let _no_publishing = write(&self.commit_gate);
        let mut buf = Vec::new();
        wal::encode_delete(&mut buf, mint, maxt, ids);
        let seq = self.wal.log(&buf);
        for id in ids {
            if let Some(series) = self.head.get(*id) {
                series.data().delete_range(mint, maxt);
            }
        }
        self.wal.sync(seq)
    }

    /// Marks `[mint, maxt]` of the block's series `refs` deleted (durable tombstones).
    fn add_tombstones(
        &self,
        block: &Block,
        refs: &[SeriesRef],
        mint: i64,
        maxt: i64,
    ) -> Result<(), StorageError> {
        if refs.is_empty() {
            return Ok(());
        }
        let mut tombstones = write(&block.tombstones);
        let mut updated = tombstones.clone();
        for &r in refs {
            updated.add(r, mint, maxt);
        }
        updated.store(&block.dir)?;
        *tombstones = updated;
        Ok(())
    }

    // ---- reads ----

    fn with_querier<T>(&self, f: impl FnOnce(&Querier<'_>) -> T) -> T {
        let blocks = read(&self.blocks);
        f(&Querier {
            blocks: &blocks,
            head: &self.head,
        })
    }

    pub fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        max_samples: usize,
    ) -> Result<Vec<Series>, SelectError> {
        self.with_querier(|q| q.select(matchers, mint, maxt, max_samples))
    }

    /// Matching series' native histogram samples in `[mint, maxt]` from the blocks and
    /// the head, sorted by labels (see `Querier::select_histograms`).
    pub fn select_histograms(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<HistogramSeries>, StorageError> {
        self.with_querier(|q| q.select_histograms(matchers, mint, maxt))
    }

    /// Whether a native histogram may be stored (see the field): false means a select
    /// of histograms finds none.
    pub fn may_hold_histograms(&self) -> bool {
        self.may_hold_histograms.load(Ordering::Acquire)
    }

    pub fn series(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Labels>, StorageError> {
        self.with_querier(|q| q.series(matchers, mint, maxt))
    }

    pub fn label_names(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, StorageError> {
        self.with_querier(|q| q.label_names(matchers, mint, maxt))
    }

    pub fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, StorageError> {
        self.with_querier(|q| q.label_values(name, matchers, mint, maxt))
    }

    /// Window digests of the series `include` accepts over samples at or before `upto`
    /// (anti-entropy; see `digest`).
    pub fn series_digests(
        &self,
        window_ms: i64,
        upto: i64,
        include: &mut dyn FnMut(&Labels) -> bool,
    ) -> Result<DigestReport, StorageError> {
        self.check_open()?;
        let blocks = read(&self.blocks).clone();
        digest::compute(&blocks, &self.head, &self.digests, window_ms, upto, include)
    }

    // ---- maintenance ----

    /// One round: cut the head while it spans more than 1.5 block durations, compact,
    /// then apply retention.
    pub fn maintain(&self) -> Result<(), StorageError> {
        self.check_open()?;
        let _serial = lock(&self.maintenance);
        let mut last_boundary = i64::MIN;
        while let Some(boundary) = self.cut_boundary() {
            if boundary <= last_boundary {
                break; // samples keep arriving below the boundary; next round
            }
            self.cut_head(boundary)?;
            last_boundary = boundary;
        }
        self.compact()?;
        self.apply_retention()?;
        self.update_head_gauges();
        Ok(())
    }

    /// The end of the block to cut from the head, if the head is due for a cut. The
    /// head's span is measured up to the wall clock at most, so samples ahead of the
    /// clock never push the cut (and with it the head's lower bound) past the present
    /// (ADR 0009).
    fn cut_boundary(&self) -> Option<i64> {
        let (min, max) = self.head.time_range()?;
        let max = max.min(self.opts.clock.now_ms());
        let duration = self.opts.block_duration_ms.max(1);
        if max.saturating_sub(min) <= duration / 2 * 3 {
            return None;
        }
        Some(min.div_euclid(duration) * duration + duration)
    }

    /// Moves every head sample older than `boundary` into a new block, then truncates
    /// the WAL with a checkpoint of what the head still holds.
    fn cut_head(&self, boundary: i64) -> Result<(), StorageError> {
        let series = self.head_series_in_label_order();
        let mut writer = BlockWriter::new(&self.opts.dir)?;
        let mut written = Ok(());
        for mem in &series {
            if written.is_err() {
                break;
            }
            let (chunks, histograms) = {
                let mut data = mem.data();
                (
                    data.start_cut(boundary),
                    data.start_cut_histograms(boundary),
                )
            };
            written =
                writer.add_series_with_histograms(mem.interned_labels(), &chunks, &histograms);
        }
        let opened = written
            .and_then(|()| writer.finish(1, Vec::new()))
            .and_then(|meta| {
                meta.map(|m| Block::open(&self.opts.dir.join(&m.ulid)).map(Arc::new))
                    .transpose()
            });
        let new_block = match opened {
            Ok(block) => block,
            Err(e) => {
                // Put the data back where queries and the next cut find it. A block that
                // was written but not opened is loaded at restart; reads and compaction
                // deduplicate it against the replayed head.
                for mem in &series {
                    mem.data().abort_cut();
                }
                return Err(e);
            }
        };
        {
            let mut blocks = write(&self.blocks);
            if let Some(block) = new_block {
                blocks.push(block);
                blocks.sort_by_key(|b| b.meta.min_time);
            }
            for mem in &series {
                mem.data().finish_cut();
            }
            self.metrics.blocks_loaded.set(blocks.len() as i64);
        }
        self.head
            .set_min_valid_time(boundary.saturating_sub(self.opts.out_of_order_window_ms));
        self.head.gc();
        self.head.recompute_time_range();
        self.metrics.head_cuts.inc();
        self.update_head_gauges();
        self.checkpoint()
    }

    /// Replaces the WAL segments written so far by a checkpoint of the head.
    fn checkpoint(&self) -> Result<(), StorageError> {
        // Every record in the segments it covers has its samples in the head.
        let upto = {
            let _no_publishing = write(&self.commit_gate);
            self.wal.cut_segment()?
        };
        let mut cp = self.wal.begin_checkpoint(upto)?;
        let mut buf = Vec::new();
        let mut all = self.head.all_series();
        all.sort_by_key(|s| s.id);
        for s in &all {
            wal::encode_series(&mut buf, s.id, &s.labels());
        }
        cp.write(&buf)?;
        let mut samples = Vec::new();
        let mut record = SamplesRecord::default();
        let mut in_record = 0;
        for s in &all {
            samples.clear();
            s.data().samples_in(i64::MIN, i64::MAX, &mut samples);
            for x in &samples {
                record.push(s.id, x.t, x.v);
                in_record += 1;
                if in_record == CHECKPOINT_BATCH {
                    cp.write(&std::mem::take(&mut record).finish())?;
                    in_record = 0;
                }
            }
        }
        if !record.is_empty() {
            cp.write(&record.finish())?;
        }
        self.checkpoint_histograms(&all, &mut cp)?;
        let metadata: Vec<MetricMetadata> = lock(&self.metadata).values().cloned().collect();
        if !metadata.is_empty() {
            buf.clear();
            wal::encode_metadata(&mut buf, &metadata);
            cp.write(&buf)?;
        }
        cp.commit()
    }

    /// Writes the head's histogram samples into a checkpoint (kinds 6 and 7), as the
    /// float samples: those a cut did not move into a block survive the WAL's
    /// truncation here.
    fn checkpoint_histograms(
        &self,
        all: &[Arc<MemSeries>],
        cp: &mut wal::CheckpointWriter<'_>,
    ) -> Result<(), StorageError> {
        fn flush(
            cp: &mut wal::CheckpointWriter<'_>,
            ints: &mut HistogramsRecord,
            floats: &mut FloatHistogramsRecord,
        ) -> Result<(), StorageError> {
            if !ints.is_empty() {
                cp.write(&std::mem::take(ints).finish())?;
            }
            if !floats.is_empty() {
                cp.write(&std::mem::take(floats).finish())?;
            }
            Ok(())
        }
        let mut ints = HistogramsRecord::default();
        let mut floats = FloatHistogramsRecord::default();
        let mut in_record = 0;
        let mut samples = Vec::new();
        for s in all {
            samples.clear();
            s.data().histograms_in(i64::MIN, i64::MAX, &mut samples);
            for x in &samples {
                match &x.h {
                    HistogramValue::Int(h) => ints.push(s.id, x.t, h),
                    HistogramValue::Float(h) => floats.push(s.id, x.t, h),
                }
                in_record += 1;
                if in_record == CHECKPOINT_BATCH {
                    flush(cp, &mut ints, &mut floats)?;
                    in_record = 0;
                }
            }
        }
        flush(cp, &mut ints, &mut floats)
    }

    fn compact(&self) -> Result<(), StorageError> {
        let ranges = compact::ranges(
            self.opts.block_duration_ms,
            self.opts.retention_ms,
            COMPACTION_LEVELS,
        );
        loop {
            let blocks = read(&self.blocks).clone();
            let metas: Vec<_> = blocks.iter().map(|b| b.meta.clone()).collect();
            let Some(group) = compact::plan(&metas, &ranges) else {
                return Ok(());
            };
            let chosen: Vec<Arc<Block>> = group.iter().map(|&i| blocks[i].clone()).collect();
            self.metrics.compactions.inc();
            if let Err(e) = self.replace_blocks(&chosen) {
                self.metrics.compactions_failed.inc();
                return Err(e);
            }
        }
    }

    /// Merges `old` into one new block and swaps it in (used by compaction and by
    /// tombstone cleaning).
    fn replace_blocks(&self, old: &[Arc<Block>]) -> Result<(), StorageError> {
        let meta = compact::merge_blocks(&self.opts.dir, old)?;
        let new_block = match meta {
            Some(meta) => Some(Arc::new(Block::open(&self.opts.dir.join(&meta.ulid))?)),
            None => None,
        };
        self.swap_blocks(old, new_block)
    }

    fn swap_blocks(&self, old: &[Arc<Block>], new: Option<Arc<Block>>) -> Result<(), StorageError> {
        {
            let mut blocks = write(&self.blocks);
            blocks.retain(|b| !old.iter().any(|o| Arc::ptr_eq(o, b)));
            if let Some(b) = new {
                blocks.push(b);
            }
            blocks.sort_by_key(|b| b.meta.min_time);
            self.metrics.blocks_loaded.set(blocks.len() as i64);
        }
        // Readers that still hold a removed block keep its mapping; unlinking is safe.
        for b in old {
            fs::remove_dir_all(&b.dir)?;
        }
        Ok(())
    }

    fn apply_retention(&self) -> Result<(), StorageError> {
        let blocks = read(&self.blocks).clone();
        let extents: Vec<BlockExtent> = blocks
            .iter()
            .map(|b| BlockExtent {
                id: b.meta.ulid.clone(),
                min_time: b.meta.min_time,
                max_time: b.meta.max_time,
                size_bytes: b.size_bytes,
            })
            .collect();
        let doomed = retention::expired(
            &extents,
            self.opts.clock.now_ms(),
            self.opts.retention_ms,
            self.opts.retention_bytes,
        );
        if doomed.is_empty() {
            return Ok(());
        }
        let old: Vec<Arc<Block>> = blocks
            .into_iter()
            .filter(|b| doomed.contains(&b.meta.ulid))
            .collect();
        self.metrics.retention_deletions.inc_by(old.len() as u64);
        tracing::info!(blocks = ?doomed, "retention deletes blocks");
        let swapped = self.swap_blocks(&old, None);
        // Reads of any step may have reached into the dropped blocks.
        self.changes.record(i64::MIN);
        swapped
    }

    pub fn clean_tombstones(&self) -> Result<(), StorageError> {
        self.check_open()?;
        let _serial = lock(&self.maintenance);
        let blocks = read(&self.blocks).clone();
        for block in blocks.iter().filter(|b| b.has_tombstones()) {
            self.replace_blocks(std::slice::from_ref(block))?;
        }
        Ok(())
    }

    // ---- snapshots, status ----

    pub fn snapshot(&self, dir: &Path, with_head: bool) -> Result<(), StorageError> {
        self.check_open()?;
        let _serial = lock(&self.maintenance);
        fs::create_dir_all(dir)?;
        let blocks = read(&self.blocks).clone();
        for block in &blocks {
            link_dir(&block.dir, &dir.join(&block.meta.ulid))?;
        }
        if with_head {
            self.write_head_block(dir)?;
        }
        wal::fsync_dir(dir)?;
        Ok(())
    }

    /// The head's samples, floats and histograms, as one block.
    fn write_head_block(&self, dir: &Path) -> Result<(), StorageError> {
        let mut writer = BlockWriter::new(dir)?;
        let mut samples = Vec::new();
        let mut histograms = Vec::new();
        for mem in self.head_series_in_label_order() {
            samples.clear();
            histograms.clear();
            {
                let data = mem.data();
                data.samples_in(i64::MIN, i64::MAX, &mut samples);
                data.histograms_in(i64::MIN, i64::MAX, &mut histograms);
            }
            writer.add_series_samples_with_histograms(
                mem.interned_labels(),
                &samples,
                &histograms,
            )?;
        }
        writer.finish(1, Vec::new())?;
        Ok(())
    }

    /// The head's series sorted as a block stores them. Compares the interned pairs
    /// (the same order as `Labels`) instead of building a label set per series: at a
    /// cut that would hold a second copy of every series' label list.
    fn head_series_in_label_order(&self) -> Vec<Arc<MemSeries>> {
        let mut series = self.head.all_series();
        series.sort_unstable_by(|a, b| a.interned_labels().cmp(b.interned_labels()));
        series
    }

    /// The open blocks, for tests that look into their metadata.
    #[cfg(test)]
    pub fn blocks_for_tests(&self) -> Vec<Arc<Block>> {
        read(&self.blocks).clone()
    }

    pub fn blocks(&self) -> Vec<BlockInfo> {
        read(&self.blocks)
            .iter()
            .map(|b| BlockInfo {
                id: b.meta.ulid.clone(),
                min_time: b.meta.min_time,
                max_time: b.meta.max_time,
                num_series: b.meta.stats.num_series,
                num_samples: b.meta.stats.num_samples,
                compaction_level: b.meta.compaction.level,
                size_bytes: b.size_bytes,
            })
            .collect()
    }

    /// Head cardinality over the series `counts` accepts (`/api/v1/status/tsdb`;
    /// the cluster gives each series to one node, ADR 0022).
    pub fn head_cardinality(&self, counts: &dyn Fn(&Labels) -> bool) -> HeadCardinality {
        let mut counter = PairCounter::default();
        for series in self.head.all_series() {
            let chunks = {
                let data = series.data();
                if data.is_removed() {
                    continue;
                }
                data.num_chunks()
            };
            if counts(&series.labels()) {
                counter.count(series.interned_labels(), chunks);
            }
        }
        counter.finish(self.head.time_range())
    }

    /// Flushes and fsyncs the WAL and refuses further writes.
    pub fn close(&self) -> Result<(), StorageError> {
        let _serial = lock(&self.maintenance);
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.wal.flush()
    }
}

/// What a backfill did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backfilled {
    /// As an append answers: samples already held count as appended.
    pub outcome: AppendOutcome,
    /// Samples this node did not hold and stored now.
    pub new_samples: u64,
    /// Series that received such samples.
    pub new_series: u64,
}

/// Per-batch counters, folded into an `AppendOutcome` and the metrics once.
struct Tally {
    appended: u64,
    new_chunks: u64,
    /// Indexed by `RejectReason::index`.
    rejected: [u64; RejectReason::ALL.len()],
    first_rejection: Option<String>,
    mint: i64,
    maxt: i64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            appended: 0,
            new_chunks: 0,
            rejected: [0; RejectReason::ALL.len()],
            first_rejection: None,
            mint: i64::MAX,
            maxt: i64::MIN,
        }
    }
}

impl Tally {
    fn stored(&mut self, t: i64) {
        self.appended += 1;
        self.widen(t);
    }

    /// Widens the batch's time range to `t`.
    fn widen(&mut self, t: i64) {
        self.mint = self.mint.min(t);
        self.maxt = self.maxt.max(t);
    }

    fn reject(&mut self, reason: RejectReason, labels: &Labels, t: i64) {
        self.rejected[reason.index()] += 1;
        if self.first_rejection.is_none() {
            self.first_rejection = Some(reason.describe(labels, t));
        }
    }

    fn into_outcome(self) -> AppendOutcome {
        AppendOutcome {
            appended: self.appended,
            rejected: RejectReason::ALL
                .iter()
                .zip(self.rejected)
                .filter(|(_, n)| *n > 0)
                .map(|(&r, n)| (r, n))
                .collect(),
            first_rejection: self.first_rejection,
        }
    }
}

/// Applies replayed WAL records to the head.
struct Replayer<'a> {
    head: &'a Head,
    /// WAL series id -> head series (ids are kept; a re-created series aliases).
    ids: HashMap<u64, Arc<MemSeries>>,
    metadata: &'a mut BTreeMap<String, MetricMetadata>,
    /// Whether a histogram record was replayed.
    saw_histograms: bool,
}

impl Replayer<'_> {
    /// Replay accepts everything the log holds: it was accepted once already. Conflicting
    /// values resolve by the same rule as live appends, in any order (ADR 0011).
    const LIMITS: AppendLimits = AppendLimits::NONE;

    fn apply(&mut self, rec: Record) {
        match rec {
            Record::Series { id, labels } => {
                let series = self.head.get_or_create(&labels, Some(id), &mut |_, _| {});
                self.ids.insert(id, series);
            }
            Record::Samples(samples) => {
                for (id, t, v) in samples {
                    match self.ids.get(&id) {
                        Some(series) => {
                            let _ = series.data().append(t, v, &Self::LIMITS);
                            self.head.note_time_range(t, t);
                        }
                        None => tracing::warn!(id, "WAL samples for an unknown series"),
                    }
                }
            }
            Record::Delete { mint, maxt, ids } => {
                for id in ids {
                    if let Some(series) = self.ids.get(&id) {
                        series.data().delete_range(mint, maxt);
                    }
                }
            }
            Record::Metadata(list) => {
                for m in list {
                    self.metadata.insert(m.metric_family.clone(), m);
                }
            }
            Record::Histograms(samples) => {
                self.saw_histograms = true;
                for (id, t, h) in samples {
                    self.append_histogram(id, t, HistogramValue::Int(h));
                }
            }
            Record::FloatHistograms(samples) => {
                self.saw_histograms = true;
                for (id, t, h) in samples {
                    self.append_histogram(id, t, HistogramValue::Float(h));
                }
            }
        }
    }
}

impl Replayer<'_> {
    fn append_histogram(&mut self, id: u64, t: i64, h: HistogramValue) {
        match self.ids.get(&id) {
            Some(series) => {
                let _ = series.data().append_histogram(t, &h, &Self::LIMITS);
                self.head.note_time_range(t, t);
            }
            None => tracing::warn!(id, "WAL histograms for an unknown series"),
        }
    }
}

/// Opens every block directory under `dir`; removes leftovers of interrupted writes.
fn load_blocks(dir: &Path) -> Result<Vec<Arc<Block>>, StorageError> {
    let mut blocks = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_dir() || name == "wal" {
            continue;
        }
        if name.ends_with(".tmp") {
            tracing::warn!(dir = %path.display(), "removing unfinished block");
            fs::remove_dir_all(&path)?;
            continue;
        }
        if path.join(super::block::META_FILE).exists() {
            blocks.push(Arc::new(Block::open(&path)?));
        }
    }
    blocks.sort_by_key(|b| b.meta.min_time);
    Ok(blocks)
}

/// Recreates `src` (a block directory) as `dst` with hard links, copying when the
/// target is on another file system.
fn link_dir(src: &Path, dst: &Path) -> Result<(), StorageError> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let target: PathBuf = dst.join(entry.file_name());
        if fs::hard_link(entry.path(), &target).is_err() {
            fs::copy(entry.path(), &target)?;
        }
    }
    wal::fsync_dir(dst)?;
    Ok(())
}

/// Of `offered` (sorted, one sample per timestamp), the samples `held` (sorted) lacks:
/// timestamps it has no sample at, and those where the offered value wins the conflict
/// rule over the held one (ADR 0011), so a repair converges on the value every replica
/// keeps.
pub(crate) fn samples_missing(held: &[Sample], offered: &[Sample]) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut i = 0;
    for s in offered {
        while i < held.len() && held[i].t < s.t {
            i += 1;
        }
        match held.get(i) {
            Some(h) if h.t == s.t => {
                if conflict_winner(h.v, s.v).to_bits() != h.v.to_bits() {
                    out.push(*s);
                }
            }
            _ => out.push(*s),
        }
    }
    out
}
