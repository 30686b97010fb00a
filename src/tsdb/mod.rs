//! The local time-series database of one node.
//!
//! Owns: everything on this node's disk. Submodules (one concept each): `chunk` (XOR
//! chunks, byte-compatible with Prometheus: the head's and remote read's),
//! `histogram_chunk` (native histogram chunks, byte-compatible with Prometheus's
//! encodings 2 and 3), `packed`
//! (the timestamp and value columns of sealed blocks, ADR 0026), `index` (postings and
//! matcher evaluation), `head` (in-memory series, label interning, open chunks; its
//! label-set hash is `model::label_hash`), `head_hist` (a head series' native
//! histogram chunks, which head cuts move into blocks, ADR 0030), `wal` (segments, checksums, checkpoints,
//! replay), `block`
//! (immutable on-disk blocks), `compact` (merging blocks), `digest` (per-window digests
//! of stored samples for comparing replicas, cached per block), `retention` (time and
//! size limits), `tombstones` (deletions), `querier` (reads across head and blocks),
//! `quarantine` (samples removed at start-up for lying beyond the future limit),
//! `metrics` (self-metrics), `cardinality` (head statistics of one node and their
//! merge across nodes), `changes` (the log of changes to old data that caches of
//! query results poll, ADR 0024), `db` (the database tying them together, including
//! `backfill`: repairs' samples too old for the head stored as new blocks, ADR 0016),
//! `exemplars` (the bounded in-memory exemplar store, ADR 0027; not on disk).
//! Implements `storage::Storage`, offering the PromQL engine aggregation pushdown over
//! itself (`promql::pushdown::LocalPushdown`, ADR 0029: it holds every series it has, so
//! it is one share); calls only `model`, `storage` and that.
//!
//! This file holds the public handle: it runs the blocking `db::Db` off the async
//! runtime (`spawn_blocking`) and owns the background maintenance thread.
//!
//! Data directory layout: `wal/` (segments and checkpoints, see `wal`), one directory
//! per block named by its ULID (see `block`), `<ulid>.tmp/` while a block is written,
//! `quarantine/<ulid>/` for blocks of removed far-future samples (never loaded).

pub mod block;
pub mod cardinality;
mod changes;
pub mod chunk;
pub mod compact;
mod db;
pub mod digest;
pub mod exemplars;
pub mod head;
mod head_hist;
pub mod histogram_chunk;
pub mod index;
mod metrics;
pub mod packed;
mod quarantine;
mod querier;
pub mod retention;
pub mod tombstones;
pub mod wal;

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::model::{HistogramSeries, Labels, Matcher, MetricMetadata, Series, SeriesExemplars};
use crate::storage::{
    AppendOutcome, BoxFuture, ChangeMark, ChangeReport, Changes, Clock, ExemplarRequest,
    HistogramAppendError, LabelRequest, SelectError, SelectRequest, SourceId, Storage,
    StorageError, TimeBounds, LOCAL_SOURCE,
};
pub use cardinality::HeadCardinality;

pub use db::Backfilled;
pub use head_hist::{encode_sealed as encode_histogram_chunks, SealedHistogramChunk};
pub use metrics::TsdbMetrics;

/// Settings of one TSDB. `Default` gives the server defaults.
#[derive(Clone, Debug)]
pub struct TsdbOptions {
    pub dir: PathBuf,
    /// Span of one head block before it is cut to disk (default 2h).
    pub block_duration_ms: i64,
    /// Keep blocks whose data is newer than this before the wall clock, or before the
    /// newest block's end if that is earlier (0 = keep forever). Default 15d. ADR 0009.
    pub retention_ms: i64,
    /// Delete the oldest blocks while the total size exceeds this (0 = no limit).
    pub retention_bytes: u64,
    /// How far behind a series' newest sample (or the wall clock, if that is earlier) a
    /// sample may still be accepted (default 1h).
    pub out_of_order_window_ms: i64,
    /// WAL segment size before rolling to a new segment (default 128 MiB).
    pub wal_segment_bytes: u64,
    /// Wall-clock bounds on appended timestamps; samples beyond the future limit are also
    /// dropped from the WAL and blocks at start-up (ADR 0009). Default: none, so library
    /// users and tests may store data of any age; the server sets them from its flags.
    pub time_bounds: TimeBounds,
    /// The wall clock the bounds, the head's lower bound and retention are measured on.
    pub clock: Clock,
    /// Most exemplars held in memory, all series together (0: none; default 100,000).
    pub exemplars_limit: usize,
}

impl Default for TsdbOptions {
    fn default() -> Self {
        TsdbOptions {
            dir: PathBuf::from("./data"),
            block_duration_ms: 2 * 3600 * 1000,
            retention_ms: 15 * 24 * 3600 * 1000,
            retention_bytes: 0,
            out_of_order_window_ms: 3600 * 1000,
            wal_segment_bytes: 128 << 20,
            time_bounds: TimeBounds::NONE,
            clock: Clock::system(),
            exemplars_limit: 100_000,
        }
    }
}

/// Cardinality statistics for `/api/v1/status/tsdb`, in Prometheus's shape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TsdbStats {
    pub num_series: u64,
    pub num_label_pairs: u64,
    pub chunk_count: u64,
    pub min_time: i64,
    pub max_time: i64,
    /// (metric name, series count), largest first, at most `limit` entries.
    pub series_count_by_metric_name: Vec<(String, u64)>,
    /// (label name, distinct value count), largest first.
    pub label_value_count_by_label_name: Vec<(String, u64)>,
    /// (label name, bytes used by its values), largest first.
    pub memory_in_bytes_by_label_name: Vec<(String, u64)>,
    /// ("name=value", series count), largest first.
    pub series_count_by_label_value_pair: Vec<(String, u64)>,
}

impl std::error::Error for HistogramAppendError {}

/// A handle to an open TSDB. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Tsdb {
    inner: Arc<Inner>,
}

struct Inner {
    db: db::Db,
    exemplars: exemplars::ExemplarStore,
    /// Dropping the sender stops the maintenance thread.
    stop_maintenance: Mutex<Option<mpsc::Sender<()>>>,
}

/// Description of one on-disk block, for status pages and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    pub id: String,
    pub min_time: i64,
    pub max_time: i64,
    pub num_series: u64,
    pub num_samples: u64,
    pub compaction_level: u32,
    pub size_bytes: u64,
}

/// How often background maintenance runs: every 15s, or more often for short block
/// durations (a twelfth of the duration, at least 1s) so small test setups see blocks.
fn maintenance_interval(opts: &TsdbOptions) -> Duration {
    let twelfth = u64::try_from(opts.block_duration_ms / 12).unwrap_or(0);
    Duration::from_millis(twelfth.clamp(1_000, 15_000))
}

impl Tsdb {
    /// Opens (creating if needed) the database in `opts.dir`, loads blocks and replays
    /// the WAL, then starts background maintenance (head cut, compaction, retention).
    pub fn open(opts: TsdbOptions, metrics: TsdbMetrics) -> Result<Tsdb, StorageError> {
        let interval = maintenance_interval(&opts);
        let exemplars = exemplars::ExemplarStore::new(opts.exemplars_limit);
        let db = db::Db::open(opts, metrics)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let inner = Arc::new(Inner {
            db,
            exemplars,
            stop_maintenance: Mutex::new(Some(stop)),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("tsdb-maintenance".into())
            .spawn(move || run_maintenance(weak, stopped, interval))?;
        Ok(Tsdb { inner })
    }

    /// Stores samples a replica has and this node lacks, old ones included (as new
    /// blocks when the head refuses them as too old). See `db::Db::backfill`.
    pub async fn backfill(&self, batch: Vec<Series>) -> Result<Backfilled, StorageError> {
        self.blocking(move |db| db.backfill(&batch)).await?
    }

    /// Window digests of the series `include` accepts, over samples at or before
    /// `upto`; immutable blocks' digests are cached (see `digest`).
    pub async fn series_digests(
        &self,
        window_ms: i64,
        upto: i64,
        mut include: Box<dyn FnMut(&Labels) -> bool + Send>,
    ) -> Result<digest::DigestReport, StorageError> {
        self.blocking(move |db| db.series_digests(window_ms, upto, &mut *include))
            .await?
    }

    /// How long ago, by the store's clock, the newest late write was stored: an append
    /// or repair of a sample older than `storage::LATE_WRITE_AGE_MS`. `None`: none since
    /// the store opened. Anti-entropy compares only once old samples stopped arriving
    /// (ADR 0016).
    pub fn since_late_write(&self) -> Option<std::time::Duration> {
        self.inner
            .db
            .since_late_write_ms()
            .map(|ms| std::time::Duration::from_millis(ms as u64))
    }

    /// Changes to old data since `since`: late writes, repairs, deletions, retention
    /// (ADR 0024).
    pub fn changes_since(&self, since: Option<ChangeMark>) -> Changes {
        self.inner.db.changes_since(since)
    }

    /// Deletes samples of matching series within `[mint, maxt]` (tombstones; durable).
    pub fn delete_series(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<(), StorageError> {
        self.inner.db.delete_series(matchers, mint, maxt)
    }

    /// Rewrites blocks that carry tombstones so deleted data is gone from disk.
    pub fn clean_tombstones(&self) -> Result<(), StorageError> {
        self.inner.db.clean_tombstones()
    }

    /// Writes a consistent copy of the database into `dir` (blocks hard-linked, the head
    /// written as a block when `with_head`), usable as another node's data directory.
    pub fn snapshot(&self, dir: &std::path::Path, with_head: bool) -> Result<(), StorageError> {
        self.inner.db.snapshot(dir, with_head)
    }

    /// Cardinality statistics of this node's head; each top list has at most `limit`
    /// entries.
    pub fn stats(&self, limit: usize) -> TsdbStats {
        cardinality::merge(vec![self.head_cardinality(&|_| true)], limit)
    }

    /// Head cardinality over the series `counts` accepts (one node's part of the
    /// cluster's `/api/v1/status/tsdb`, ADR 0022). Walks the whole head: call it off
    /// the async workers.
    pub fn head_cardinality(&self, counts: &dyn Fn(&Labels) -> bool) -> HeadCardinality {
        self.inner.db.head_cardinality(counts)
    }

    /// The on-disk blocks, oldest first.
    pub fn blocks(&self) -> Vec<BlockInfo> {
        self.inner.db.blocks()
    }

    /// One round of maintenance: cut the head to a block if due, compact, apply retention.
    /// The background task runs this periodically; tests call it directly.
    pub fn maintain(&self) -> Result<(), StorageError> {
        self.inner.db.maintain()
    }

    /// Ok when the node can take writes. While the WAL is failing (disk full, I/O
    /// error) this tries to recover it first, off the async runtime and at most once a
    /// second, and otherwise says why writes are refused.
    pub async fn writable(&self) -> Result<(), StorageError> {
        if !self.inner.db.refusing_writes() {
            return Ok(());
        }
        self.blocking(|db| db.writable()).await?
    }

    /// Test hook: fails the next `n` WAL writes or recovery attempts.
    #[cfg(test)]
    fn inject_wal_failures(&self, n: u32) {
        self.inner.db.inject_wal_failures(n);
    }

    /// Stops maintenance, flushes and closes the WAL. Appends after close fail.
    pub fn close(&self) -> Result<(), StorageError> {
        head::lock(&self.inner.stop_maintenance).take();
        self.inner.db.close()
    }

    /// Runs `f` on the database on tokio's blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&db::Db) -> T + Send + 'static,
    ) -> Result<T, StorageError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner.db))
            .await
            .map_err(|e| StorageError::Other(format!("storage task failed: {e}")))
    }
}

fn run_maintenance(db: Weak<Inner>, stop: mpsc::Receiver<()>, interval: Duration) {
    loop {
        match stop.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(inner) = db.upgrade() else { return };
        // Writes recover even when nobody writes or probes readiness.
        if let Err(e) = inner.db.writable() {
            tracing::warn!(error = %e, "TSDB still refuses writes");
        }
        if let Err(e) = inner.db.maintain() {
            tracing::error!(error = %e, "TSDB maintenance failed");
        }
    }
}

impl Storage for Tsdb {
    fn append(&self, batch: Vec<Series>) -> BoxFuture<'_, Result<AppendOutcome, StorageError>> {
        Box::pin(async move { self.blocking(move |db| db.append(&batch)).await? })
    }

    fn select(&self, req: SelectRequest) -> BoxFuture<'_, Result<Vec<Series>, SelectError>> {
        Box::pin(async move {
            self.blocking(move |db| db.select(&req.matchers, req.mint, req.maxt, req.max_samples))
                .await?
        })
    }

    fn append_histograms(
        &self,
        batch: Vec<HistogramSeries>,
    ) -> BoxFuture<'_, Result<AppendOutcome, HistogramAppendError>> {
        Box::pin(async move {
            self.blocking(move |db| db.append_histograms(&batch))
                .await?
        })
    }

    fn select_histograms(
        &self,
        req: SelectRequest,
    ) -> BoxFuture<'_, Result<Vec<HistogramSeries>, SelectError>> {
        Box::pin(async move {
            // Every selector of a query asks for histograms beside floats: on a node
            // that never stored one, answer without a blocking task or an index walk.
            if !self.inner.db.may_hold_histograms() {
                return Ok(Vec::new());
            }
            let series = self
                .blocking(move |db| db.select_histograms(&req.matchers, req.mint, req.maxt))
                .await??;
            let samples: usize = series.iter().map(|s| s.samples.len()).sum();
            if req.max_samples > 0 && samples > req.max_samples {
                return Err(SelectError::TooManySamples);
            }
            Ok(series)
        })
    }

    fn series(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<Labels>, StorageError>> {
        Box::pin(async move {
            self.blocking(move |db| db.series(&req.matchers, req.mint, req.maxt))
                .await?
        })
    }

    fn label_names(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        Box::pin(async move {
            self.blocking(move |db| db.label_names(&req.matchers, req.mint, req.maxt))
                .await?
        })
    }

    fn label_values(
        &self,
        name: String,
        req: LabelRequest,
    ) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        Box::pin(async move {
            self.blocking(move |db| db.label_values(&name, &req.matchers, req.mint, req.maxt))
                .await?
        })
    }

    fn record_metadata(
        &self,
        metadata: Vec<MetricMetadata>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.blocking(move |db| db.record_metadata(metadata))
                .await?
        })
    }

    fn metadata(
        &self,
        metric: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<MetricMetadata>, StorageError>> {
        Box::pin(async move {
            self.blocking(move |db| Ok(db.metadata(metric.as_deref())))
                .await?
        })
    }

    fn append_exemplars(
        &self,
        batch: Vec<SeriesExemplars>,
    ) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(async move {
            self.inner.db.check_open()?;
            Ok(self.inner.exemplars.append(&batch))
        })
    }

    fn exemplars(
        &self,
        req: ExemplarRequest,
    ) -> BoxFuture<'_, Result<Vec<SeriesExemplars>, StorageError>> {
        Box::pin(async move {
            Ok(self
                .inner
                .exemplars
                .select(&req.matcher_sets, req.start, req.end))
        })
    }

    fn pushdown(&self) -> Option<Arc<dyn crate::promql::pushdown::AggregatePushdown>> {
        let store: Arc<dyn Storage> = Arc::new(self.clone());
        Some(Arc::new(crate::promql::pushdown::LocalPushdown::new(store)))
    }

    /// One store: its own log, as `LOCAL_SOURCE`.
    fn changes_since(
        &self,
        marks: std::collections::BTreeMap<SourceId, ChangeMark>,
    ) -> BoxFuture<'_, Result<ChangeReport, StorageError>> {
        let changes = self
            .inner
            .db
            .changes_since(marks.get(&LOCAL_SOURCE).copied());
        Box::pin(async move {
            Ok(ChangeReport {
                marks: [(LOCAL_SOURCE, changes.mark)].into(),
                earliest: changes.earliest,
                complete: true,
            })
        })
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_backfill;
#[cfg(test)]
mod tests_hist_blocks;
#[cfg(test)]
mod tests_histograms;
#[cfg(test)]
mod tests_time_bounds;
