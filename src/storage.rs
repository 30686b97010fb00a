//! The interfaces every box meets at: append, select, label names and label values.
//!
//! Owns: the `Storage` trait and its request/answer types. The local TSDB implements it
//! today; the cluster's fan-out querier and replicating writer implement it later, so the
//! HTTP layer and the PromQL engine never know whether data is local or remote.
//! Calls only `model`.
//!
//! Methods return boxed futures so the trait stays object safe (`Arc<dyn Storage>`) and a
//! remote implementation can await the network; the local TSDB answers synchronously
//! inside the future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::model::{Labels, Matcher, MetricMetadata, Series};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a single sample was not stored. Reported per batch, never fatal to the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Older than the newest sample of its series by more than the out-of-order window.
    OutOfOrder,
    /// Older than what the head still accepts (before the out-of-order window of the head).
    TooOld,
    /// A different value already stored at the same timestamp.
    DuplicateTimestamp,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::OutOfOrder => "out_of_order",
            RejectReason::TooOld => "too_old",
            RejectReason::DuplicateTimestamp => "duplicate_timestamp",
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

/// A storage failure: not the client's fault, retrying may help.
#[derive(Debug)]
pub enum StorageError {
    Io(std::io::Error),
    /// Data on disk failed a checksum or could not be decoded.
    Corruption(String),
    /// The store is shutting down or not ready.
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

impl std::error::Error for StorageError {}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Io(e)
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

/// The storage interface. Implementations must be cheap to share (`Arc<dyn Storage>`).
pub trait Storage: Send + Sync + 'static {
    /// Appends a batch of series. Returns once every accepted sample is durable.
    /// A series' samples are given in time order.
    fn append(&self, batch: Vec<Series>) -> BoxFuture<'_, Result<AppendOutcome, StorageError>>;

    /// Series matching all matchers with their samples in `[mint, maxt]`, sorted by labels.
    /// Series without samples in the range are left out. Deleted data is never returned.
    fn select(&self, req: SelectRequest) -> BoxFuture<'_, Result<Vec<Series>, SelectError>>;

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
}
