//! The local time-series database of one node.
//!
//! Owns: everything on this node's disk. Submodules (one concept each): `chunk` (XOR
//! chunks, byte-compatible with Prometheus), `index` (postings and matcher evaluation),
//! `head` (in-memory series, label interning, open chunks), `wal` (segments, checksums,
//! checkpoints, replay), `block` (immutable on-disk blocks), `compact` (merging blocks),
//! `retention` (time and size limits), `tombstones` (deletions).
//! Implements `storage::Storage`; calls only `model` and `storage`.
//!
//! Implemented on the tsdb branch.

pub mod chunk;

use std::path::PathBuf;

use prometheus_client::registry::Registry;

/// Settings of one TSDB. `Default` gives the server defaults.
#[derive(Clone, Debug)]
pub struct TsdbOptions {
    pub dir: PathBuf,
    /// Span of one head block before it is cut to disk (default 2h).
    pub block_duration_ms: i64,
    /// Keep blocks whose data is newer than now minus this (0 = keep forever). Default 15d.
    pub retention_ms: i64,
    /// Delete the oldest blocks while the total size exceeds this (0 = no limit).
    pub retention_bytes: u64,
    /// How far behind a series' newest sample a sample may still be accepted (default 1h).
    pub out_of_order_window_ms: i64,
    /// WAL segment size before rolling to a new segment (default 128 MiB).
    pub wal_segment_bytes: u64,
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

/// The TSDB's self-metrics, registered once at start-up.
#[derive(Clone, Default)]
pub struct TsdbMetrics {}

impl TsdbMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let _ = registry;
        TsdbMetrics {}
    }
}

/// A handle to an open TSDB. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Tsdb {}

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

impl Tsdb {
    /// Opens (creating if needed) the database in `opts.dir`, loads blocks and replays
    /// the WAL, then starts background maintenance (head cut, compaction, retention).
    pub fn open(
        opts: TsdbOptions,
        metrics: TsdbMetrics,
    ) -> Result<Tsdb, crate::storage::StorageError> {
        let _ = (opts, metrics);
        todo!("tsdb branch")
    }

    /// Deletes samples of matching series within `[mint, maxt]` (tombstones; durable).
    pub fn delete_series(
        &self,
        matchers: &[crate::model::Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<(), crate::storage::StorageError> {
        let _ = (matchers, mint, maxt);
        todo!("tsdb branch")
    }

    /// Rewrites blocks that carry tombstones so deleted data is gone from disk.
    pub fn clean_tombstones(&self) -> Result<(), crate::storage::StorageError> {
        todo!("tsdb branch")
    }

    /// Writes a consistent copy of the database into `dir` (blocks hard-linked, the head
    /// written as a block when `with_head`), usable as another node's data directory.
    pub fn snapshot(
        &self,
        dir: &std::path::Path,
        with_head: bool,
    ) -> Result<(), crate::storage::StorageError> {
        let _ = (dir, with_head);
        todo!("tsdb branch")
    }

    /// Cardinality statistics; each top list has at most `limit` entries.
    pub fn stats(&self, limit: usize) -> TsdbStats {
        let _ = limit;
        todo!("tsdb branch")
    }

    /// The on-disk blocks, oldest first.
    pub fn blocks(&self) -> Vec<BlockInfo> {
        todo!("tsdb branch")
    }

    /// One round of maintenance: cut the head to a block if due, compact, apply retention.
    /// The background task runs this periodically; tests call it directly.
    pub fn maintain(&self) -> Result<(), crate::storage::StorageError> {
        todo!("tsdb branch")
    }

    /// Stops maintenance, flushes and closes the WAL. Appends after close fail.
    pub fn close(&self) -> Result<(), crate::storage::StorageError> {
        todo!("tsdb branch")
    }
}

impl crate::storage::Storage for Tsdb {
    fn append(
        &self,
        _batch: Vec<crate::model::Series>,
    ) -> crate::storage::BoxFuture<
        '_,
        Result<crate::storage::AppendOutcome, crate::storage::StorageError>,
    > {
        todo!("tsdb branch")
    }
    fn select(
        &self,
        _req: crate::storage::SelectRequest,
    ) -> crate::storage::BoxFuture<'_, Result<Vec<crate::model::Series>, crate::storage::SelectError>>
    {
        todo!("tsdb branch")
    }
    fn series(
        &self,
        _req: crate::storage::LabelRequest,
    ) -> crate::storage::BoxFuture<
        '_,
        Result<Vec<crate::model::Labels>, crate::storage::StorageError>,
    > {
        todo!("tsdb branch")
    }
    fn label_names(
        &self,
        _req: crate::storage::LabelRequest,
    ) -> crate::storage::BoxFuture<'_, Result<Vec<String>, crate::storage::StorageError>> {
        todo!("tsdb branch")
    }
    fn label_values(
        &self,
        _name: String,
        _req: crate::storage::LabelRequest,
    ) -> crate::storage::BoxFuture<'_, Result<Vec<String>, crate::storage::StorageError>> {
        todo!("tsdb branch")
    }
    fn record_metadata(
        &self,
        _metadata: Vec<crate::model::MetricMetadata>,
    ) -> crate::storage::BoxFuture<'_, Result<(), crate::storage::StorageError>> {
        todo!("tsdb branch")
    }
    fn metadata(
        &self,
        _metric: Option<String>,
    ) -> crate::storage::BoxFuture<
        '_,
        Result<Vec<crate::model::MetricMetadata>, crate::storage::StorageError>,
    > {
        todo!("tsdb branch")
    }
}
