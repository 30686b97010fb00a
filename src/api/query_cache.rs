//! Range queries through the result cache (ADR 0024).
//!
//! Owns: the order of one cached range query: check storage's changes to old data on
//! every node (invalidating what they touched), take the cached prefix of the window,
//! evaluate only the steps after it (with the prefix's points counted against the
//! sample limit), join (the prefix bringing the annotations its steps raised), and
//! store the settled steps back unless the cluster added warnings or infos (a node
//! missing, a lagging replica) or an invalidation happened meanwhile. A
//! query that cannot be checked (a node did not answer the change poll) or cached
//! (`promql::cache::cache_key`) is evaluated as without a cache. `nocache=1` skips it.
//! Calls `promql` (the engine and the cache store), `storage` (the change poll) and
//! `fanout::notes` (the cluster's notes of the evaluated part).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::fanout::notes::{self, ReadNotes};
use crate::promql::cache::{self, CacheKey, ResultCache, SETTLE_MS};
use crate::promql::{
    Annotations, Engine, QueryError, QueryOutput, QueryStats, QueryValue, StepAnnotations,
};
use crate::storage::{ChangeMark, ChangeReport, SourceId, Storage};

/// The cache of one node: the result store and the change marks it is valid at.
pub struct QueryCache {
    results: ResultCache,
    /// Every store's change mark the cached results have been checked against. Not
    /// held across a poll (a slow node must not serialise queries): concurrent polls
    /// each apply what they found, which is never less than what changed since the
    /// marks they started from (see `apply`).
    marks: Mutex<BTreeMap<SourceId, ChangeMark>>,
}

/// One range query, validated by the HTTP layer.
pub struct RangeQuery<'q> {
    pub query: &'q str,
    pub start: i64,
    pub end: i64,
    pub step: i64,
    pub timeout: Duration,
    /// Wall-clock milliseconds when the query arrived: steps after this minus
    /// `SETTLE_MS` are not stored.
    pub now: i64,
}

type Answer = (Result<QueryOutput, QueryError>, ReadNotes);

impl QueryCache {
    pub fn new(results: ResultCache) -> QueryCache {
        QueryCache {
            results,
            marks: Mutex::new(BTreeMap::new()),
        }
    }

    /// Answers `q` exactly as `Engine::range_query_with_timeout` would, using and
    /// filling the cache unless `use_cache` is false.
    pub async fn range_query(
        &self,
        engine: &Engine,
        storage: Arc<dyn Storage>,
        q: RangeQuery<'_>,
        use_cache: bool,
    ) -> Answer {
        let key = match self.usable_key(engine, &q, use_cache) {
            Some(key) => key,
            None => return self.uncached(engine, storage, &q).await,
        };
        let Some(generation) = self.check_changes(storage.as_ref(), q.timeout).await else {
            return self.uncached(engine, storage, &q).await;
        };
        let metrics = self.results.metrics();
        let prefix = self.results.lookup(&key, q.start, q.end);
        let last = cache::last_step(q.start, q.end, q.step);
        let tail_start = prefix.as_ref().map_or(q.start, |p| p.last + q.step);
        let prefix_points = prefix.as_ref().map_or(0, |p| p.points());
        match &prefix {
            Some(p) => {
                metrics.hits.inc();
                metrics
                    .steps_cached
                    .inc_by(steps_between(q.start, p.last, q.step));
            }
            None => {
                metrics.misses.inc();
            }
        }
        let (tail, cluster) = if tail_start <= q.end {
            metrics
                .steps_evaluated
                .inc_by(steps_between(tail_start, last, q.step));
            let evaluation = engine.range_query_after(
                storage,
                q.query,
                tail_start,
                q.end,
                q.step,
                q.timeout,
                prefix_points,
            );
            let (output, cluster) = notes::collect(evaluation).await;
            match output {
                Ok(output) => (output, cluster),
                Err(e) => return (Err(e), cluster),
            }
        } else {
            if prefix_points > engine.options().max_samples {
                return (Err(QueryError::TooManySamples), ReadNotes::default());
            }
            let empty = QueryOutput {
                value: QueryValue::Matrix(Vec::new()),
                annotations: Annotations::default(),
                step_annotations: StepAnnotations::default(),
                stats: QueryStats::default(),
            };
            (empty, ReadNotes::default())
        };
        let QueryOutput {
            value,
            mut annotations,
            step_annotations: tail_steps,
            stats,
        } = tail;
        let QueryValue::Matrix(tail_series) = value else {
            // A range evaluation always answers a matrix; anything else is passed on.
            let output = QueryOutput {
                value,
                annotations,
                step_annotations: tail_steps,
                stats,
            };
            return (Ok(output), cluster);
        };
        // The prefix's annotations are those its steps raised (ADR 0024).
        let (series, step_annotations) = match prefix {
            Some(p) => {
                annotations.merge(p.annotations.within(q.start, p.last));
                let mut steps = p.annotations;
                steps.extend(tail_steps);
                (cache::join(p.series, tail_series), steps)
            }
            None => (tail_series, tail_steps),
        };
        // A degraded or lagging cluster's answer is served, never stored.
        if cluster.warnings.is_empty() && cluster.infos.is_empty() {
            let settled = settled_step(q.start, q.step, q.now).min(last);
            self.results.store(
                key,
                (q.start, settled),
                &series,
                &step_annotations,
                generation,
            );
        }
        let output = QueryOutput {
            value: QueryValue::Matrix(series),
            annotations,
            step_annotations,
            // What this request evaluated: the tail; cached steps cost no samples.
            stats,
        };
        (Ok(output), cluster)
    }

    /// The query's cache key, or None (counted as bypassed) when the cache is not to
    /// be used for it. A query that does not parse is left to the engine's own error.
    fn usable_key(&self, engine: &Engine, q: &RangeQuery<'_>, use_cache: bool) -> Option<CacheKey> {
        let key = if use_cache && self.results.enabled() && ordinary_times(q) {
            cache::cache_key(q.query, engine.options(), q.start, q.step)
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        if key.is_none() {
            self.results.metrics().bypassed.inc();
        }
        key
    }

    /// Polls every store's changes to old data since the cache's marks and drops the
    /// cached steps they touched. Returns the cache generation the query may store at,
    /// or None when some store could not be checked (the query must not use the cache).
    async fn check_changes(&self, storage: &dyn Storage, timeout: Duration) -> Option<u64> {
        // Read after any query that started before this poll read its own clock.
        let now = super::query::now_ms();
        let since = self.marks().clone();
        let poll = tokio::time::timeout(timeout, storage.changes_since(since)).await;
        let report = match poll {
            Ok(Ok(report)) if report.complete => report,
            Ok(Ok(_)) | Err(_) => {
                self.results.metrics().bypassed.inc();
                return None;
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "query cache: the change poll failed");
                self.results.metrics().bypassed.inc();
                return None;
            }
        };
        Some(self.apply(report, now))
    }

    fn marks(&self) -> MutexGuard<'_, BTreeMap<SourceId, ChangeMark>> {
        self.marks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one poll's report: drops what it says changed and advances the marks,
    /// under the marks' lock so the generation read last is after this invalidation.
    /// Out of order with a concurrent poll is safe: each invalidates everything since
    /// the marks it started from (which are never ahead of the marks here), a mark only
    /// moves forward within an epoch, and an epoch or membership mix-up only costs an
    /// extra invalidation of everything at the next poll.
    fn apply(&self, report: ChangeReport, now: i64) -> u64 {
        let mut marks = self.marks();
        if let Some(earliest) = report.earliest {
            self.results.invalidate_from(earliest, now);
        }
        marks.retain(|source, _| report.marks.contains_key(source));
        for (source, mark) in report.marks {
            let current = marks.entry(source).or_insert(mark);
            if current.epoch != mark.epoch || current.seq < mark.seq {
                *current = mark;
            }
        }
        self.results.generation()
    }

    async fn uncached(
        &self,
        engine: &Engine,
        storage: Arc<dyn Storage>,
        q: &RangeQuery<'_>,
    ) -> Answer {
        notes::collect(
            engine.range_query_with_timeout(storage, q.query, q.start, q.end, q.step, q.timeout),
        )
        .await
    }
}

/// Largest timestamp or step (in milliseconds, about 285,000 years) of a cached query:
/// beyond it the step arithmetic could overflow, and such windows are evaluated
/// without the cache.
const MAX_CACHED_TIME_MS: i64 = 1 << 53;

fn ordinary_times(q: &RangeQuery<'_>) -> bool {
    [q.start, q.end, q.step, q.now]
        .iter()
        .all(|t| t.unsigned_abs() <= MAX_CACHED_TIME_MS as u64)
}

/// The last step of the grid through `start` that is settled at `now`.
fn settled_step(start: i64, step: i64, now: i64) -> i64 {
    let settled = now.saturating_sub(SETTLE_MS);
    if settled < start {
        return start - step;
    }
    cache::last_step(start, settled, step)
}

/// Steps from `from` to `to` inclusive on a grid of `step`.
fn steps_between(from: i64, to: i64, step: i64) -> u64 {
    if to < from {
        return 0;
    }
    u64::try_from((to - from) / step + 1).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_steps_stay_on_the_grid_and_behind_the_settle_window() {
        let now = 10_000_000;
        let step = 30_000;
        let start = 1_000;
        let settled = settled_step(start, step, now);
        assert_eq!((settled - start) % step, 0);
        assert!(settled <= now - SETTLE_MS && settled + step > now - SETTLE_MS);
        assert!(settled_step(now, step, now) < now, "nothing settled yet");
        assert_eq!(steps_between(0, 90, 30), 4);
        assert_eq!(steps_between(30, 0, 30), 0);
    }
}
