//! PromQL: parse with `promql-parser`, evaluate with our own engine.
//!
//! Owns: the query engine's public face (`Engine`, options, errors). Submodules: `value`
//! (result types), `engine` (the evaluator: selectors, lookback and staleness, operators,
//! aggregations, offset/@, subqueries, range queries), `functions` (the function library).
//! Calls `storage` (through `Arc<dyn Storage>`) to load data; never the TSDB directly.

pub mod engine;
pub mod functions;
pub mod value;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::storage::Storage;
pub use value::{Annotations, InstantSample, QueryValue, RangeSeries};

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
        }
    }
}

/// A query's answer with the annotations Prometheus would return beside it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryOutput {
    pub value: QueryValue,
    pub annotations: Annotations,
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
    /// Storage failed underneath: `internal`, 500 (or `unavailable`, 503).
    Storage(String),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::BadData(m) | QueryError::Execution(m) | QueryError::Storage(m) => {
                f.write_str(m)
            }
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
}

impl Engine {
    pub fn new(opts: EngineOptions) -> Self {
        Engine { opts }
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
        let _ = (storage, query, time_ms);
        todo!("engine: implemented on the engine branch")
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
        let _ = (storage, query, start_ms, end_ms, step_ms);
        todo!("engine: implemented on the engine branch")
    }
}
