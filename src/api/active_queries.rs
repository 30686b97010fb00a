//! The queries this node is evaluating now: `GET /api/v1/status/active_queries`.
//!
//! Owns: the registry of in-flight PromQL queries coordinated by this node (a query
//! enters when `/api/v1/query` or `/api/v1/query_range` starts evaluating and leaves when
//! its answer is ready, whether it succeeded, failed or its client went away: the entry
//! is dropped with the handler's future) and the endpoint listing them, oldest first, in
//! VictoriaMetrics's shape (`id`, `query`, `start`, `end`, `step` in ms, `duration` as
//! text) plus the endpoint name. Prometheus keeps the same facts in its
//! `queries.active` file; an operator facing a node that burns CPU wants them over
//! HTTP. The list is this node's only: a query's evaluation is owned by the node that
//! received it, the others merely answer its reads. Called by `query`; calls nothing
//! outside `api`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use super::{success, ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/status/active_queries", get(list))
}

/// What a query was asked for, as the slow-query log names it.
#[derive(Clone, Debug)]
pub struct QueryDescription {
    pub endpoint: &'static str,
    pub query: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub step_ms: i64,
}

struct Running {
    description: QueryDescription,
    since: Instant,
}

/// In-flight queries by id. Ids grow, so the map's order is the order queries started.
#[derive(Clone, Default)]
pub struct ActiveQueries {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    running: BTreeMap<u64, Running>,
}

/// Keeps a query listed while it lives.
pub struct ActiveQuery {
    registry: ActiveQueries,
    id: u64,
}

impl Drop for ActiveQuery {
    fn drop(&mut self) {
        self.registry.lock().running.remove(&self.id);
    }
}

/// One entry of the answer.
#[derive(Serialize, Debug, PartialEq)]
struct ActiveQueryEntry {
    id: String,
    endpoint: &'static str,
    query: String,
    start: i64,
    end: i64,
    step: i64,
    duration: String,
    duration_seconds: f64,
}

impl ActiveQueries {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding this lock cannot leave the map inconsistent (every
        // critical section is one insert, remove or read), so a poisoned lock is used as is.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lists `description` until the returned guard is dropped.
    pub fn register(&self, description: QueryDescription) -> ActiveQuery {
        let mut registry = self.lock();
        registry.next_id += 1;
        let id = registry.next_id;
        registry.running.insert(
            id,
            Running {
                description,
                since: Instant::now(),
            },
        );
        ActiveQuery {
            registry: self.clone(),
            id,
        }
    }

    fn entries(&self) -> Vec<ActiveQueryEntry> {
        let now = Instant::now();
        self.lock()
            .running
            .iter()
            .map(|(id, running)| {
                let elapsed = now.saturating_duration_since(running.since).as_secs_f64();
                let d = &running.description;
                ActiveQueryEntry {
                    id: format!("{id:016X}"),
                    endpoint: d.endpoint,
                    query: d.query.clone(),
                    start: d.start_ms,
                    end: d.end_ms,
                    step: d.step_ms,
                    duration: format!("{elapsed:.3}s"),
                    duration_seconds: elapsed,
                }
            })
            .collect()
    }
}

async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(success(state.active_queries().entries(), &[], &[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description(query: &str) -> QueryDescription {
        QueryDescription {
            endpoint: "query_range",
            query: query.to_string(),
            start_ms: 1000,
            end_ms: 2000,
            step_ms: 15_000,
        }
    }

    #[test]
    fn a_query_is_listed_while_its_guard_lives_in_start_order() {
        let active = ActiveQueries::default();
        let first = active.register(description("up"));
        let second = active.register(description("rate(x[5m])"));
        let listed: Vec<String> = active.entries().into_iter().map(|e| e.query).collect();
        assert_eq!(listed, ["up", "rate(x[5m])"]);
        drop(first);
        let left = active.entries();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].query, "rate(x[5m])");
        assert_eq!(left[0].id, "0000000000000002");
        assert_eq!(
            (left[0].start, left[0].end, left[0].step),
            (1000, 2000, 15_000)
        );
        drop(second);
        assert!(active.entries().is_empty());
    }
}
