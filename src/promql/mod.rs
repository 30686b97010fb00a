//! PromQL: parse with `promql-parser`, evaluate with our own engine.
//!
//! Owns: the query engine's public face (`Engine`, options, errors, the concurrency
//! gate). Submodules: `value` (result types), `engine` (one query's pipeline: parse,
//! validate, load, evaluate every step, assemble and clean up the result), `plan` (which
//! samples each selector needs; loading them), `eval` (one expression at one step:
//! selectors with lookback and staleness, offset/@, subqueries, function calls),
//! `binary` (operators and vector matching), `aggregate` (aggregation operators),
//! `functions` (the function library), `histogram_fns` (the native-histogram
//! computations of functions and their annotations, ADR 0032), `pushdown` (aggregations computed where the
//! data is, in shares, and combined; ADR 0029), `memo` (per-query memos of what is derived from
//! a label set, such as the label set without its metric name), `cursor` (where each
//! selector's previous step ended in its loaded series), `limits` (the size and nesting
//! limits every PromQL text is checked against before it is parsed, used by the API's
//! selector parsing too), `cache` (the range query result store, which queries may be
//! cached and under which key; ADR 0024), `fuzzing` (the fuzz harness: a tiny TSDB and the promises every
//! input must keep).
//! Calls `storage` (through `Arc<dyn Storage>`) to load data; never the TSDB directly.
//!
//! Evaluation is step by step: a range query evaluates the whole expression at each
//! step, which gives Prometheus's results (its range evaluation computes the same
//! per-step values); subqueries keep a sliding window of inner results per node so no
//! inner step is evaluated twice.

mod aggregate;
mod binary;
pub mod cache;
mod cursor;
pub mod engine;
mod eval;
pub mod functions;
pub mod fuzzing;
pub mod histogram_fns;
pub mod limits;
mod memo;
mod plan;
pub mod pushdown;
pub mod value;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::storage::{Storage, StorageError};
pub use value::{Annotations, InstantSample, QueryValue, RangeSeries, StepAnnotations};

/// Engine settings. `Default` gives Prometheus's server defaults.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// How far back an instant selector looks for a sample (Prometheus: 5m).
    pub lookback_delta_ms: i64,
    /// Most samples a query may hold in memory at once (Prometheus: 50,000,000).
    pub max_samples: usize,
    /// Wall-clock limit of one query (Prometheus: 2m).
    pub timeout: Duration,
    /// Queries evaluated at once; more wait for a slot (Prometheus: 20).
    pub max_concurrent: usize,
    /// Keep `__name__` until the end of evaluation (Prometheus's delayed name removal).
    pub delayed_name_removal: bool,
    /// Allow functions Prometheus keeps behind `--enable-feature=promql-experimental-functions`.
    pub experimental_functions: bool,
    /// Step of a subquery written without one (Prometheus: the global evaluation interval, 1m).
    pub default_subquery_step_ms: i64,
    /// Ask the storage to compute pushable aggregations where the data is, when it
    /// offers to (ADR 0029; `--query.pushdown`).
    pub pushdown: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_delta_ms: 5 * 60 * 1000,
            max_samples: 50_000_000,
            timeout: Duration::from_secs(120),
            max_concurrent: 20,
            delayed_name_removal: false,
            experimental_functions: false,
            default_subquery_step_ms: 60_000,
            pushdown: true,
        }
    }
}

/// A query's answer with the annotations Prometheus would return beside it, and what
/// it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryOutput {
    pub value: QueryValue,
    pub annotations: Annotations,
    /// Range queries: which steps raised each annotation (the result cache keeps it).
    pub step_annotations: StepAnnotations,
    pub stats: QueryStats,
}

/// What one query cost, in the terms of Prometheus's query statistics (`stats=all` on
/// the HTTP API, the slow-query log).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryStats {
    /// Waiting for a slot of the concurrency gate.
    pub exec_queue: Duration,
    /// From the slot to the answer: preparation, evaluation and sorting.
    pub eval_total: Duration,
    /// Parsing and loading the selected series (the cluster's fan-out included).
    pub preparation: Duration,
    /// Evaluating the expression at every step.
    pub inner_eval: Duration,
    /// Sorting the result.
    pub result_sort: Duration,
    /// Queue and evaluation together.
    pub exec_total: Duration,
    /// Samples the selectors read, summed over every step (a sample in the window of
    /// ten steps counts ten times), as Prometheus's `totalQueryableSamples`.
    pub total_queryable_samples: u64,
    /// Samples loaded from storage for the query, each once.
    pub samples_read: u64,
    /// Most samples held at once (what `--query-max-samples` limits).
    pub peak_samples: usize,
}

/// Why a query failed, mapped by the HTTP layer to Prometheus's `errorType` and status.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryError {
    /// The query does not parse or is semantically invalid: `bad_data`, 400.
    BadData(String),
    /// Evaluation failed: `execution`, 422.
    Execution(String),
    /// More samples than `max_samples`: `execution`, 422, Prometheus's message.
    TooManySamples,
    /// The timeout ran out: `timeout`, 503.
    Timeout(String),
    /// Storage failed underneath, kept typed so the HTTP edge maps it like every other
    /// endpoint's storage failure (ADR 0023): `unavailable`, 503, when too many nodes
    /// are missing for a complete answer; `internal`, 500, otherwise.
    Storage(StorageError),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::BadData(m) | QueryError::Execution(m) => f.write_str(m),
            QueryError::Storage(e) => e.fmt(f),
            QueryError::TooManySamples => f.write_str(
                "query processing would load too many samples into memory in query execution",
            ),
            QueryError::Timeout(m) => write!(f, "query timed out in {m}"),
        }
    }
}

impl std::error::Error for QueryError {}

/// The PromQL engine. Cheap to share; holds the concurrency gate.
pub struct Engine {
    opts: EngineOptions,
    /// At most `max_concurrent` queries evaluate at once; the rest wait their turn
    /// (the wait counts against their timeout, as Prometheus's query queue). A query
    /// keeps its slot until its evaluation thread has really stopped.
    gate: Arc<Semaphore>,
}

impl Engine {
    pub fn new(opts: EngineOptions) -> Self {
        let permits = opts.max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        Engine {
            opts,
            gate: Arc::new(Semaphore::new(permits)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        storage: Arc<dyn Storage>,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        timeout: Duration,
        points_before: usize,
    ) -> Result<QueryOutput, QueryError> {
        let started = Instant::now();
        let deadline = started + timeout.min(self.opts.timeout);
        let permit = tokio::time::timeout_at(deadline.into(), self.gate.clone().acquire_owned())
            .await
            .map_err(|_| QueryError::Timeout("query queue".into()))?
            .map_err(|_| QueryError::Execution("query engine is shutting down".into()))?;
        let queued = started.elapsed();
        // A free slot is taken without waiting, so a deadline that has already passed
        // (`timeout=1ns`) is noticed here, not by chance later.
        if Instant::now() >= deadline {
            return Err(QueryError::Timeout("query queue".into()));
        }
        let req = engine::QueryRequest {
            query,
            start: start_ms,
            end: end_ms,
            step: step_ms,
            deadline,
            points_before,
        };
        let mut output = engine::execute(&self.opts, storage, req, permit).await?;
        output.stats.exec_queue = queued;
        output.stats.exec_total = started.elapsed();
        output.stats.eval_total = output.stats.exec_total.saturating_sub(queued);
        Ok(output)
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Evaluates `query` at one instant (milliseconds).
    pub async fn instant_query(
        &self,
        storage: Arc<dyn Storage>,
        query: &str,
        time_ms: i64,
    ) -> Result<QueryOutput, QueryError> {
        self.run(storage, query, time_ms, time_ms, 0, self.opts.timeout, 0)
            .await
    }

    /// `instant_query` under a per-request timeout (the HTTP API's `timeout` parameter):
    /// the shorter of it and the configured timeout stops the evaluation.
    pub async fn instant_query_with_timeout(
        &self,
        storage: Arc<dyn Storage>,
        query: &str,
        time_ms: i64,
        timeout: Duration,
    ) -> Result<QueryOutput, QueryError> {
        self.run(storage, query, time_ms, time_ms, 0, timeout, 0)
            .await
    }

    /// Evaluates `query` at every step from `start_ms` to `end_ms` inclusive.
    pub async fn range_query(
        &self,
        storage: Arc<dyn Storage>,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryOutput, QueryError> {
        self.range_query_with_timeout(storage, query, start_ms, end_ms, step_ms, self.opts.timeout)
            .await
    }

    /// `range_query` under a per-request timeout (the HTTP API's `timeout` parameter):
    /// the shorter of it and the configured timeout stops the evaluation.
    pub async fn range_query_with_timeout(
        &self,
        storage: Arc<dyn Storage>,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        timeout: Duration,
    ) -> Result<QueryOutput, QueryError> {
        self.range_query_after(storage, query, start_ms, end_ms, step_ms, timeout, 0)
            .await
    }

    /// The steps `start_ms..=end_ms` of a range query whose earlier steps, holding
    /// `points_before` result points, were answered elsewhere (the result cache, ADR
    /// 0024): those points count against the sample limit as if evaluated here.
    #[allow(clippy::too_many_arguments)]
    pub async fn range_query_after(
        &self,
        storage: Arc<dyn Storage>,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        timeout: Duration,
        points_before: usize,
    ) -> Result<QueryOutput, QueryError> {
        if step_ms <= 0 {
            return Err(QueryError::BadData(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        if end_ms < start_ms {
            return Err(QueryError::BadData(
                "end timestamp must not be before start time".into(),
            ));
        }
        self.run(
            storage,
            query,
            start_ms,
            end_ms,
            step_ms,
            timeout,
            points_before,
        )
        .await
    }
}
