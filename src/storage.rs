//! The interfaces every box meets at: append, select, label names and label values.
//!
//! Owns: the `Storage` trait and its request/answer types. The local TSDB implements it
//! today; the cluster's fan-out querier and replicating writer implement it later, so the
//! HTTP layer and the PromQL engine never know whether data is local or remote. Also the
//! wall-clock rule shared by the ingest edge and the TSDB (`TimeBounds`, `Clock`; ADR
//! 0009). Calls only `model`, and names the PromQL engine's pushdown interface
//! (`promql::pushdown::AggregatePushdown`, ADR 0029) so that a store can offer it.
//!
//! Methods return boxed futures so the trait stays object safe (`Arc<dyn Storage>`) and a
//! remote implementation can await the network; the local TSDB answers synchronously
//! inside the future.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::{HistogramSeries, Labels, Matcher, MetricMetadata, Series, SeriesExemplars};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a single sample was not stored. Reported per batch, never fatal to the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Older than the newest sample of its series by more than the out-of-order window.
    OutOfOrder,
    /// Older than what the head still accepts (before the out-of-order window of the head),
    /// or older than the retention window measured from the wall clock.
    TooOld,
    /// A different value already stored at the same timestamp.
    DuplicateTimestamp,
    /// Further ahead of the wall clock than the future limit (ADR 0009).
    TooFarInFuture,
}

impl RejectReason {
    /// Every reason, in the order of `index`.
    pub const ALL: [RejectReason; 4] = [
        RejectReason::OutOfOrder,
        RejectReason::TooOld,
        RejectReason::DuplicateTimestamp,
        RejectReason::TooFarInFuture,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::OutOfOrder => "out_of_order",
            RejectReason::TooOld => "too_old",
            RejectReason::DuplicateTimestamp => "duplicate_timestamp",
            RejectReason::TooFarInFuture => "too_far_in_future",
        }
    }

    /// The reason named `name` by `as_str` (a peer's answer), if known.
    pub fn from_name(name: &str) -> Option<RejectReason> {
        RejectReason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Position in `ALL`, for per-reason counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The client-facing description of one refused sample, e.g.
    /// `too old: series up{job="a"}, timestamp 5`.
    pub fn describe(self, labels: &Labels, t: i64) -> String {
        format!(
            "{}: series {labels}, timestamp {t}",
            self.as_str().replace('_', " ")
        )
    }
}

/// Wall-clock milliseconds since the Unix epoch (negative before it).
pub fn wall_clock_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// A source of wall-clock time. The system clock in service; tests substitute one they
/// can move, to show what a clock jump does.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(wall_clock_ms))
    }

    /// A clock reading whatever `now_ms` returns.
    pub fn from_fn(now_ms: impl Fn() -> i64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now_ms))
    }

    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock(now={})", self.now_ms())
    }
}

/// How far from the wall clock a sample's timestamp may be to be stored (ADR 0009). The
/// node where a client's write enters applies these bounds; an owner applies them again,
/// `widened` by `CLOCK_SKEW_ALLOWANCE_MS`, to every write (routed ones included), so a
/// sample the entry node accepted is not refused by an owner whose clock differs by
/// less than that, and nothing far out of bounds is stored whoever sent it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeBounds {
    /// Samples more than this ahead of the wall clock are `TooFarInFuture` (0 = no limit).
    pub max_future_ms: i64,
    /// Samples more than this behind the wall clock are `TooOld` (0 = no limit).
    pub max_age_ms: i64,
}

/// The clock difference between two nodes that the time bounds tolerate (see
/// `TimeBounds`). NTP keeps real clusters within milliseconds.
pub const CLOCK_SKEW_ALLOWANCE_MS: i64 = 60_000;

impl TimeBounds {
    /// No bounds: every timestamp is accepted.
    pub const NONE: TimeBounds = TimeBounds {
        max_future_ms: 0,
        max_age_ms: 0,
    };

    /// The newest timestamp accepted at wall-clock time `now_ms`, if there is a limit.
    pub fn newest_valid(&self, now_ms: i64) -> Option<i64> {
        (self.max_future_ms > 0).then(|| now_ms.saturating_add(self.max_future_ms))
    }

    /// The oldest timestamp accepted at wall-clock time `now_ms`, if there is a limit.
    pub fn oldest_valid(&self, now_ms: i64) -> Option<i64> {
        (self.max_age_ms > 0).then(|| now_ms.saturating_sub(self.max_age_ms))
    }

    /// Whether a sample at `t` may be stored at wall-clock time `now_ms`.
    pub fn check(&self, t: i64, now_ms: i64) -> Result<(), RejectReason> {
        if self.newest_valid(now_ms).is_some_and(|newest| t > newest) {
            return Err(RejectReason::TooFarInFuture);
        }
        if self.oldest_valid(now_ms).is_some_and(|oldest| t < oldest) {
            return Err(RejectReason::TooOld);
        }
        Ok(())
    }

    /// These bounds loosened by `by_ms` on each side that has a limit.
    pub fn widened(self, by_ms: i64) -> TimeBounds {
        let widen = |limit: i64| {
            if limit > 0 {
                limit.saturating_add(by_ms)
            } else {
                0
            }
        };
        TimeBounds {
            max_future_ms: widen(self.max_future_ms),
            max_age_ms: widen(self.max_age_ms),
        }
    }
}

/// What happened to one appended batch. Every sample not counted in `rejected` is
/// durable when the append returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    pub appended: u64,
    /// Rejected sample counts by reason.
    pub rejected: Vec<(RejectReason, u64)>,
    /// The first rejection, described for the client (series and timestamp).
    pub first_rejection: Option<String>,
}

impl AppendOutcome {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|(_, n)| n).sum()
    }

    /// Folds another outcome into this one (used when a batch is split across stores).
    pub fn merge(&mut self, other: AppendOutcome) {
        self.appended += other.appended;
        for (reason, n) in other.rejected {
            match self.rejected.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, total)) => *total += n,
                None => self.rejected.push((reason, n)),
            }
        }
        if self.first_rejection.is_none() {
            self.first_rejection = other.first_rejection;
        }
    }
}

/// A storage failure: not the client's fault. Typed all the way to the HTTP edge, where
/// one mapping (`api::ApiError::from`, ADR 0023) turns each kind into Prometheus's
/// status and `errorType`: `Unavailable` is 503 `unavailable` (retrying may help: nodes
/// are missing or the store is not ready), everything else is 500 `internal`.
/// Cloneable (the i/o error is shared) so that query errors carrying it stay cloneable.
#[derive(Clone, Debug)]
pub enum StorageError {
    Io(Arc<std::io::Error>),
    /// Data on disk failed a checksum or could not be decoded.
    Corruption(String),
    /// The store is shutting down or not ready, or too few nodes answered a read for
    /// its answer to be complete.
    Unavailable(String),
    /// Anything else, described.
    Other(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io(e) => write!(f, "i/o error: {e}"),
            StorageError::Corruption(m) => write!(f, "corruption: {m}"),
            StorageError::Unavailable(m) => write!(f, "unavailable: {m}"),
            StorageError::Other(m) => f.write_str(m),
        }
    }
}

/// Two errors are equal when they are of the same kind with the same description (an
/// i/o error by its kind and text: `io::Error` has no equality of its own).
impl PartialEq for StorageError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (StorageError::Io(a), StorageError::Io(b)) => {
                a.kind() == b.kind() && a.to_string() == b.to_string()
            }
            (StorageError::Corruption(a), StorageError::Corruption(b))
            | (StorageError::Unavailable(a), StorageError::Unavailable(b))
            | (StorageError::Other(a), StorageError::Other(b)) => a == b,
            _ => false,
        }
    }
}

impl std::error::Error for StorageError {}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Io(Arc::new(e))
    }
}

/// Why a batch of native histograms was refused (`Storage::append_histograms`).
#[derive(Debug, PartialEq)]
pub enum HistogramAppendError {
    /// A histogram breaks Prometheus's rules; nothing of the batch was stored.
    Invalid {
        labels: Labels,
        t: i64,
        error: crate::model::histogram::HistogramError,
    },
    Storage(StorageError),
}

impl From<StorageError> for HistogramAppendError {
    fn from(e: StorageError) -> Self {
        HistogramAppendError::Storage(e)
    }
}

impl fmt::Display for HistogramAppendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistogramAppendError::Invalid { labels, t, error } => {
                write!(f, "invalid native histogram for {labels} at {t}: {error}")
            }
            HistogramAppendError::Storage(e) => e.fmt(f),
        }
    }
}

/// Which series and which time range a read wants. Times are inclusive milliseconds.
#[derive(Clone, Debug)]
pub struct SelectRequest {
    /// All must match (AND). At least one matcher should not match the empty string.
    pub matchers: Vec<Matcher>,
    pub mint: i64,
    pub maxt: i64,
    /// Stop with `SelectError::TooManySamples` once more samples than this would be
    /// returned (0 = no limit). Lets a query limit bound memory at the source.
    pub max_samples: usize,
}

#[derive(Debug)]
pub enum SelectError {
    Storage(StorageError),
    TooManySamples,
}

impl fmt::Display for SelectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectError::Storage(e) => e.fmt(f),
            SelectError::TooManySamples => f.write_str("too many samples selected"),
        }
    }
}

impl From<StorageError> for SelectError {
    fn from(e: StorageError) -> Self {
        SelectError::Storage(e)
    }
}

/// Which series a label-name or label-value lookup is restricted to.
#[derive(Clone, Debug, Default)]
pub struct LabelRequest {
    /// Empty means all series.
    pub matchers: Vec<Matcher>,
    pub mint: i64,
    pub maxt: i64,
}

/// Which exemplars `/api/v1/query_exemplars` asks for: those of series matching any of
/// the matcher sets (one per selector of the query), in `[start, end]`.
#[derive(Clone, Debug, Default)]
pub struct ExemplarRequest {
    pub matcher_sets: Vec<Vec<Matcher>>,
    pub start: i64,
    pub end: i64,
}

/// A sample older than this behind the storing node's wall clock is a late write: the
/// store logs it as a change to old data (`ChangeMark`), so cached query results that
/// may lack it are dropped (ADR 0024). Samples newer than this are ordinary ingest
/// (remote write delivers within seconds), which no cached step may depend on: the
/// cache keeps only steps older than this plus `CLOCK_SKEW_ALLOWANCE_MS` and a margin.
pub const LATE_WRITE_AGE_MS: i64 = 30_000;

/// Where one store's log of changes to old data stood when it was read: `epoch` names
/// the process run (a restarted store starts a new log), `seq` counts the changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeMark {
    pub epoch: u64,
    pub seq: u64,
}

/// One store's changes to old data since a mark: its mark now, and the earliest
/// timestamp any of them touched (`None`: nothing changed; `i64::MIN`: anything may
/// have, e.g. the mark was of another epoch or retention dropped blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Changes {
    pub mark: ChangeMark,
    pub earliest: Option<i64>,
}

/// Identifies a store in a `ChangeReport`: a node id in a cluster, `LOCAL_SOURCE` for a
/// store that is not part of one.
pub type SourceId = u128;
pub const LOCAL_SOURCE: SourceId = 0;

/// The changes to old data behind a read, across every store it reads from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeReport {
    /// Each store's mark now; the next poll passes them back.
    pub marks: BTreeMap<SourceId, ChangeMark>,
    /// The earliest timestamp changed since the marks passed in (`i64::MIN` when a
    /// store appeared, vanished or restarted).
    pub earliest: Option<i64>,
    /// False when some store did not answer (or the storage keeps no change log): then
    /// nothing may be cached or served from a cache.
    pub complete: bool,
}

/// The storage interface. Implementations must be cheap to share (`Arc<dyn Storage>`).
pub trait Storage: Send + Sync + 'static {
    /// Appends a batch of series. Returns once every accepted sample is durable.
    /// A series' samples are given in time order.
    fn append(&self, batch: Vec<Series>) -> BoxFuture<'_, Result<AppendOutcome, StorageError>>;

    /// Series matching all matchers with their samples in `[mint, maxt]`, sorted by labels.
    /// Series without samples in the range are left out. Deleted data is never returned.
    fn select(&self, req: SelectRequest) -> BoxFuture<'_, Result<Vec<Series>, SelectError>>;

    /// Appends native histogram samples (ADR 0030), validated by Prometheus's rules: an
    /// invalid one refuses the whole batch. Returns once every accepted sample is durable.
    fn append_histograms(
        &self,
        batch: Vec<HistogramSeries>,
    ) -> BoxFuture<'_, Result<AppendOutcome, HistogramAppendError>>;

    /// As `select`, for native histogram samples: a series holding both kinds appears in
    /// both answers, each with its own samples. `max_samples` counts histogram samples.
    fn select_histograms(
        &self,
        req: SelectRequest,
    ) -> BoxFuture<'_, Result<Vec<HistogramSeries>, SelectError>>;

    /// Label sets of matching series with any sample in the range, sorted.
    fn series(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<Labels>, StorageError>>;

    /// Sorted label names of matching series.
    fn label_names(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<String>, StorageError>>;

    /// Sorted distinct values of one label among matching series.
    fn label_values(
        &self,
        name: String,
        req: LabelRequest,
    ) -> BoxFuture<'_, Result<Vec<String>, StorageError>>;

    /// Remembers metric metadata (type, help, unit) received with writes.
    fn record_metadata(
        &self,
        metadata: Vec<MetricMetadata>,
    ) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Metadata known for a metric (all metrics when `metric` is None).
    fn metadata(
        &self,
        metric: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<MetricMetadata>, StorageError>>;

    /// Stores exemplars of series (in memory and bounded on each node that owns the
    /// series; ADR 0027). Returns how many are held now, repeats of held ones included:
    /// all of them, unless the store keeps none (`--exemplars-limit 0`).
    fn append_exemplars(
        &self,
        batch: Vec<SeriesExemplars>,
    ) -> BoxFuture<'_, Result<u64, StorageError>>;

    /// Exemplars `req` selects, by series sorted by labels, each series' in time order.
    fn exemplars(
        &self,
        req: ExemplarRequest,
    ) -> BoxFuture<'_, Result<Vec<SeriesExemplars>, StorageError>>;

    /// The changes to old data (late writes, repairs, deletions, retention) since
    /// `marks`, for caches of query results (ADR 0024). A store without a change log
    /// answers an incomplete report, which disables such caches.
    fn changes_since(
        &self,
        marks: BTreeMap<SourceId, ChangeMark>,
    ) -> BoxFuture<'_, Result<ChangeReport, StorageError>> {
        let _ = marks;
        Box::pin(async { Ok(ChangeReport::default()) })
    }

    /// Where the engine may push aggregations down to (ADR 0029); `None`: nowhere, the
    /// engine loads series and aggregates them itself.
    fn pushdown(&self) -> Option<Arc<dyn crate::promql::pushdown::AggregatePushdown>> {
        None
    }
}

/// A store with its aggregation pushdown replaced (ADR 0029): `None` for one query that
/// asked to bypass it (`nopushdown=1`), another implementation in tests. Every other
/// call goes to the store as it is.
pub struct WithPushdown {
    pub store: Arc<dyn Storage>,
    pub pushdown: Option<Arc<dyn crate::promql::pushdown::AggregatePushdown>>,
}

impl Storage for WithPushdown {
    fn append(&self, batch: Vec<Series>) -> BoxFuture<'_, Result<AppendOutcome, StorageError>> {
        self.store.append(batch)
    }
    fn select(&self, req: SelectRequest) -> BoxFuture<'_, Result<Vec<Series>, SelectError>> {
        self.store.select(req)
    }
    fn append_histograms(
        &self,
        batch: Vec<HistogramSeries>,
    ) -> BoxFuture<'_, Result<AppendOutcome, HistogramAppendError>> {
        self.store.append_histograms(batch)
    }
    fn select_histograms(
        &self,
        req: SelectRequest,
    ) -> BoxFuture<'_, Result<Vec<HistogramSeries>, SelectError>> {
        self.store.select_histograms(req)
    }
    fn series(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<Labels>, StorageError>> {
        self.store.series(req)
    }
    fn label_names(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        self.store.label_names(req)
    }
    fn label_values(
        &self,
        name: String,
        req: LabelRequest,
    ) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        self.store.label_values(name, req)
    }
    fn record_metadata(
        &self,
        metadata: Vec<MetricMetadata>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.store.record_metadata(metadata)
    }
    fn metadata(
        &self,
        metric: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<MetricMetadata>, StorageError>> {
        self.store.metadata(metric)
    }
    fn append_exemplars(
        &self,
        batch: Vec<SeriesExemplars>,
    ) -> BoxFuture<'_, Result<u64, StorageError>> {
        self.store.append_exemplars(batch)
    }
    fn exemplars(
        &self,
        req: ExemplarRequest,
    ) -> BoxFuture<'_, Result<Vec<SeriesExemplars>, StorageError>> {
        self.store.exemplars(req)
    }
    fn changes_since(
        &self,
        marks: BTreeMap<SourceId, ChangeMark>,
    ) -> BoxFuture<'_, Result<ChangeReport, StorageError>> {
        self.store.changes_since(marks)
    }
    fn pushdown(&self) -> Option<Arc<dyn crate::promql::pushdown::AggregatePushdown>> {
        self.pushdown.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_refuse_far_future_and_expired_samples() {
        let bounds = TimeBounds {
            max_future_ms: 600_000,
            max_age_ms: 3_600_000,
        };
        let now = 1_800_000_000_000;
        assert_eq!(bounds.check(now, now), Ok(()));
        assert_eq!(bounds.check(now + 600_000, now), Ok(()));
        assert_eq!(
            bounds.check(now + 600_001, now),
            Err(RejectReason::TooFarInFuture)
        );
        assert_eq!(
            bounds.check(i64::MAX, now),
            Err(RejectReason::TooFarInFuture)
        );
        assert_eq!(bounds.check(now - 3_600_000, now), Ok(()));
        assert_eq!(
            bounds.check(now - 3_600_001, now),
            Err(RejectReason::TooOld)
        );
        assert_eq!(bounds.check(i64::MIN, now), Err(RejectReason::TooOld));
        for t in [i64::MIN, 0, i64::MAX] {
            assert_eq!(TimeBounds::NONE.check(t, now), Ok(()));
        }
        let wide = bounds.widened(CLOCK_SKEW_ALLOWANCE_MS);
        assert_eq!(wide.check(now + 600_001, now), Ok(()));
        assert_eq!(TimeBounds::NONE.widened(1), TimeBounds::NONE);
    }

    #[test]
    fn reasons_round_trip_by_name_and_index() {
        for (i, reason) in RejectReason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i);
            assert_eq!(RejectReason::from_name(reason.as_str()), Some(reason));
        }
        assert_eq!(RejectReason::from_name("bogus"), None);
    }
}
