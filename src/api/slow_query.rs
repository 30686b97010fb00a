//! The slow-query log (`--query-log-slow`).
//!
//! Owns: the rule (a PromQL query of `/api/v1/query` or `/api/v1/query_range` that
//! took at least the threshold, answered or failed) and the log line: one `warn` event
//! with target `timbala::slow_query` and the fields `endpoint`, `query`, `start`, `end`,
//! `step` (ms), `duration_seconds`, `samples` (totalQueryableSamples), `peak_samples`,
//! `nodes_asked` (the HTTP addresses the fan-out asked, this node first) and `outcome`
//! (`ok` or the error). With `--log-format json` each is one JSON line. Called by
//! `query`; calls the `promql` and `fanout::notes` types only.

use std::time::Duration;

use crate::fanout::notes::ReadNotes;
use crate::promql::{QueryError, QueryOutput};

/// What the log line says of the request besides its outcome.
pub struct SlowQuery<'a> {
    pub endpoint: &'static str,
    pub query: &'a str,
    pub start_ms: i64,
    pub end_ms: i64,
    pub step_ms: i64,
}

/// Logs `request` when `threshold` is set and `elapsed` reached it.
pub fn log_if_slow(
    threshold: Option<Duration>,
    request: SlowQuery<'_>,
    elapsed: Duration,
    outcome: &Result<QueryOutput, QueryError>,
    cluster: &ReadNotes,
) {
    if threshold.is_none_or(|t| elapsed < t) {
        return;
    }
    let (samples, peak_samples, outcome) = match outcome {
        Ok(output) => (
            output.stats.total_queryable_samples,
            output.stats.peak_samples,
            "ok".to_string(),
        ),
        Err(e) => (0, 0, e.to_string()),
    };
    tracing::warn!(
        target: "timbala::slow_query",
        endpoint = request.endpoint,
        query = request.query,
        start = request.start_ms,
        end = request.end_ms,
        step = request.step_ms,
        duration_seconds = elapsed.as_secs_f64(),
        samples,
        peak_samples,
        nodes_asked = cluster.nodes_asked.join(","),
        outcome = outcome.as_str(),
        "slow query"
    );
}
