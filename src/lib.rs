//! Timbala: durable, clustered long-term storage for Prometheus metrics.
//!
//! Data flows one way. Write: `api` (HTTP edge) -> `ingest` (decode, validate) ->
//! `replication` (owners by `cluster` placement; local share to the `tsdb`, the others'
//! over `peer` to their `/internal/v1/write`, hinted handoff). Query: `api` -> `promql`
//! (parse, evaluate) -> `fanout` (every alive node's local data, replicas merged) ->
//! `tsdb` and peers. Both meet at `storage::Storage`. `model` and `proto` are shared
//! vocabulary; `telemetry` is self-monitoring that every box may register metrics with.
//! `web` secures the HTTP edge (TLS, basic auth, Prometheus's web config file) and the
//! peer client's TLS. `heap` configures the allocator (`main` calls it first).

pub mod api;
pub mod cluster;
pub mod config;
pub mod dirlock;
pub mod fanout;
pub mod heap;
pub mod ingest;
pub mod model;
pub mod peer;
pub mod promql;
pub mod proto;
pub mod replication;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod timeutil;
pub mod tsdb;
pub mod web;
