//! Active anti-entropy: finds and pulls the samples this node lacks for the series it
//! owns, by comparing digests with every other owner of the same series (ADR 0016).
//!
//! Owns: the background task that, on a schedule (`--anti-entropy-interval`, and once
//! soon after start), for each other live node in the ring compares the digests of the
//! series both own, descending only where they differ: per partition bucket (the
//! series' partition key folded into `BUCKETS`), then per (bucket x time window) cell,
//! then per series and window, and then PULLS the differing series' samples in those
//! windows and stores them through the local TSDB's backfill (only what this node lacks
//! is written; idempotent samples make the repair a union; each node pulls for itself,
//! so a difference is closed by whichever side lacks the samples). Only samples at or
//! before a settled bound (`upto`, the requester's clock minus `SETTLE`) are compared,
//! so in-flight writes do not count as differences; the head's data up to that bound is
//! included, so a node restarted with an empty data directory is rebuilt with the
//! replicas' recent data too. Also owns the answering side of the exchange (digests of
//! the series both nodes own, the samples of named series), the wire shapes, their
//! validation (untrusted input), and the `timbala_antientropy_*` metrics. A due pass
//! waits while this node still stores late writes (`postponement`): samples older than
//! the settled bound that arrived less than `SETTLE` ago are likely still in flight to
//! the other owners too.
//!
//! Pure planning (`bucket_of`, `both_own`, `cells_of`, `bucket_digests`, `differing`,
//! `series_in_cells`, `pulls`, `only_asked`) is separate from I/O: the deterministic
//! simulation (tests/sim, ADR 0019) drives it over simulated nodes and network. Calls the local TSDB (`tsdb::Tsdb`:
//! digests, select, backfill), the membership view and ring (placement), `peer` (the
//! signed internal client), `ingest` (decoding pulled samples) and `rereplicate`'s
//! throttle (`--repair-rate-limit`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::cluster::identity::{unix_millis, NodeId};
use crate::cluster::membership::{ClusterView, MemberState, MembershipHandle};
use crate::cluster::placement;
use crate::cluster::ring::Ring;
use crate::ingest::{self, DecodeLimits};
use crate::model::{Label, Labels, Matcher, Series};
use crate::peer::{self, PeerClient};
use crate::storage::{SelectRequest, Storage, StorageError};
use crate::tsdb::digest::{mix64, SeriesDigests, WindowDigest};
use crate::tsdb::Tsdb;

use super::rereplicate::Throttle;

/// Partition buckets digests are grouped in (the top level of the comparison).
pub const BUCKETS: u32 = 64;
/// Samples newer than the requester's clock minus this are not compared yet.
pub const SETTLE: Duration = Duration::from_secs(60);
/// Cells asked for per series-level request.
const CELLS_PER_REQUEST: usize = 256;
/// Series ranges pulled per request.
const RANGES_PER_PULL: usize = 100;
/// Bounds on what a peer may ask (untrusted input).
const MAX_CELLS: usize = 65_536;
const MAX_RANGES: usize = 1_000;
use crate::model::{
    MAX_LABELS_PER_SERIES as MAX_LABELS, MAX_LABEL_BYTES_PER_SERIES as MAX_LABEL_BYTES,
};
const MIN_WINDOW_MS: i64 = 60_000;
const MAX_WINDOW_MS: i64 = 31 * 24 * 3_600_000;
/// Most samples one pull answer carries.
const MAX_PULL_SAMPLES: usize = 2_000_000;
/// Largest pulled body decoded.
const MAX_PULL_BODY: usize = 256 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

// ---- pure planning ----

/// The bucket of a partition key.
pub fn bucket_of(partition_key: u64, buckets: u32) -> u32 {
    (mix64(partition_key) % u64::from(buckets.max(1))) as u32
}

/// What one series' window digest adds to its cell: depends on the series, the window
/// and the digest, so two series cannot trade differences unnoticed.
fn contribution(labels_hash: u64, d: &WindowDigest) -> u64 {
    mix64(labels_hash ^ mix64(d.digest ^ mix64(d.window as u64)))
}

/// (bucket, window start).
pub type Cell = (u32, i64);

/// The cell digests of `series`: a wrapping sum of contributions (order-independent).
pub fn cells_of<'a>(
    series: impl IntoIterator<Item = &'a SeriesDigests>,
    buckets: u32,
) -> BTreeMap<Cell, u64> {
    let mut cells: BTreeMap<Cell, u64> = BTreeMap::new();
    for s in series {
        let key = placement::partition_key(&s.labels);
        let bucket = bucket_of(key, buckets);
        let h = s.labels.stable_hash();
        for w in &s.windows {
            let c = cells.entry((bucket, w.window)).or_default();
            *c = c.wrapping_add(contribution(h, w));
        }
    }
    cells
}

/// The bucket digests of cells.
pub fn bucket_digests(cells: &BTreeMap<Cell, u64>) -> BTreeMap<u32, u64> {
    let mut out: BTreeMap<u32, u64> = BTreeMap::new();
    for (&(bucket, window), &d) in cells {
        let b = out.entry(bucket).or_default();
        *b = b.wrapping_add(mix64(d ^ (window as u64).rotate_left(17)));
    }
    out
}

/// Keys whose remote digest this node does not match (absent here included). Keys only
/// this node has are the other side's to pull.
pub fn differing<K: Ord + Copy>(local: &BTreeMap<K, u64>, remote: &BTreeMap<K, u64>) -> Vec<K> {
    remote
        .iter()
        .filter(|(k, d)| local.get(k) != Some(d))
        .map(|(k, _)| *k)
        .collect()
}

/// A series' samples to pull, inclusive times.
#[derive(Clone, Debug, PartialEq)]
pub struct PullRange {
    pub labels: Labels,
    pub mint: i64,
    pub maxt: i64,
}

/// The ranges to pull: for each remote series window whose digest this node does not
/// match, the window (cut at `upto`); adjacent windows of a series are joined.
pub fn pulls(
    local: &[SeriesDigests],
    remote: &[SeriesDigests],
    window_ms: i64,
    upto: i64,
) -> Vec<PullRange> {
    let mine: BTreeMap<&Labels, &[WindowDigest]> = local
        .iter()
        .map(|s| (&s.labels, s.windows.as_slice()))
        .collect();
    let mut out: Vec<PullRange> = Vec::new();
    for s in remote {
        let have = mine.get(&s.labels).copied().unwrap_or(&[]);
        for w in &s.windows {
            if have.iter().any(|h| h == w) {
                continue;
            }
            let mint = w.window;
            let maxt = w.window.saturating_add(window_ms - 1).min(upto);
            match out.last_mut() {
                Some(last) if last.labels == s.labels && last.maxt.saturating_add(1) == mint => {
                    last.maxt = maxt;
                }
                _ => out.push(PullRange {
                    labels: s.labels.clone(),
                    mint,
                    maxt,
                }),
            }
        }
    }
    out
}

/// Of a pull answer, only the asked series' samples within the asked ranges: a peer's
/// answer is untrusted, and this node stores nothing it did not ask for.
pub fn only_asked(ranges: &[PullRange], answer: Vec<Series>) -> Vec<Series> {
    let asked: BTreeMap<&Labels, Vec<(i64, i64)>> =
        ranges.iter().fold(BTreeMap::new(), |mut m, r| {
            m.entry(&r.labels).or_default().push((r.mint, r.maxt));
            m
        });
    answer
        .into_iter()
        .filter_map(|mut s| {
            let spans = asked.get(&s.labels)?;
            s.samples
                .retain(|x| spans.iter().any(|&(a, z)| x.t >= a && x.t <= z));
            (!s.samples.is_empty()).then_some(s)
        })
        .collect()
}

/// Whether `node` and `other` both own the series with this key (by `ring`, the view of
/// whichever side computes it).
pub fn both_own(ring: &Ring, key: u64, node: NodeId, other: NodeId) -> bool {
    if placement::every_node_owns_every_series(ring.len()) {
        return true;
    }
    let owners = ring.owners(key);
    owners.contains(&node) && owners.contains(&other)
}

// ---- wire ----

/// One level of the comparison.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", tag = "level")]
pub enum DigestLevel {
    /// Every bucket's digest.
    Buckets,
    /// The cells of these buckets.
    Cells { buckets: Vec<u32> },
    /// The series digests of these cells.
    Series { cells: Vec<Cell> },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestRequest {
    /// The asking node: digests cover the series it and the answering node both own.
    pub requester: NodeId,
    pub window_ms: i64,
    /// Samples after this are left out (the requester's settled bound).
    pub upto: i64,
    pub buckets: u32,
    pub level: DigestLevel,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WireSeriesDigest {
    pub labels: Vec<(String, String)>,
    /// (window start, digest, samples).
    pub windows: Vec<(i64, u64, u64)>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DigestAnswer {
    pub buckets: Vec<(u32, u64)>,
    pub cells: Vec<(u32, i64, u64)>,
    pub series: Vec<WireSeriesDigest>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireRange {
    pub labels: Vec<(String, String)>,
    pub mint: i64,
    pub maxt: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PullRequest {
    pub ranges: Vec<WireRange>,
}

/// A refused anti-entropy request or a failed answer.
#[derive(Debug)]
pub enum AntiEntropyError {
    /// The request is malformed or out of bounds (400).
    BadRequest(String),
    /// Local storage failed (503).
    Storage(StorageError),
}

impl std::fmt::Display for AntiEntropyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AntiEntropyError::BadRequest(m) => f.write_str(m),
            AntiEntropyError::Storage(e) => e.fmt(f),
        }
    }
}

fn bad(m: impl Into<String>) -> AntiEntropyError {
    AntiEntropyError::BadRequest(m.into())
}

/// Labels from the wire: bounded, names non-empty and unique.
fn labels_from_wire(pairs: Vec<(String, String)>) -> Result<Labels, AntiEntropyError> {
    if pairs.is_empty() || pairs.len() > MAX_LABELS {
        return Err(bad(format!("a series needs 1 to {MAX_LABELS} labels")));
    }
    let bytes: usize = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
    if bytes > MAX_LABEL_BYTES {
        return Err(bad("labels too long"));
    }
    let names: BTreeSet<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
    if names.len() != pairs.len() || names.contains("") {
        return Err(bad("label names must be non-empty and unique"));
    }
    Ok(Labels::from_pairs(pairs))
}

fn labels_to_wire(labels: &Labels) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|l: &Label| (String::from(&l.name), String::from(&l.value)))
        .collect()
}

impl DigestRequest {
    fn validate(&self, ring: &Ring) -> Result<(), AntiEntropyError> {
        if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&self.window_ms) {
            return Err(bad(format!(
                "windowMs must be within {MIN_WINDOW_MS}..={MAX_WINDOW_MS}"
            )));
        }
        if !(1..=4096).contains(&self.buckets) {
            return Err(bad("buckets must be within 1..=4096"));
        }
        if ring.node(self.requester).is_none() {
            return Err(bad(format!(
                "requester {} is not in this node's ring",
                self.requester
            )));
        }
        let count = match &self.level {
            DigestLevel::Buckets => 0,
            DigestLevel::Cells { buckets } => buckets.len(),
            DigestLevel::Series { cells } => cells.len(),
        };
        if count > MAX_CELLS {
            return Err(bad(format!("at most {MAX_CELLS} buckets or cells")));
        }
        Ok(())
    }
}

// ---- metrics and status ----

/// The `timbala_antientropy_*` metrics; they exist (at 0) from start.
#[derive(Clone, Default)]
pub struct AntiEntropyMetrics {
    passes: Counter,
    passes_postponed: Counter,
    failed_exchanges: Counter,
    buckets_compared: Counter,
    buckets_differing: Counter,
    series_repaired: Counter,
    samples_repaired: Counter,
    repaired_bytes: Counter,
    sent_bytes: Counter,
    received_bytes: Counter,
    digest_read_bytes: Counter,
    last_pass_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl AntiEntropyMetrics {
    pub fn register(registry: &mut Registry) -> AntiEntropyMetrics {
        let m = AntiEntropyMetrics::default();
        let r = registry.sub_registry_with_prefix("timbala_antientropy");
        r.register("passes", "Anti-entropy passes finished", m.passes.clone());
        r.register(
            "passes_postponed",
            "Passes that waited because old samples were still arriving",
            m.passes_postponed.clone(),
        );
        r.register(
            "failed_exchanges",
            "Comparisons with a peer that failed (retried next pass)",
            m.failed_exchanges.clone(),
        );
        r.register(
            "buckets_compared",
            "Partition buckets compared with a peer",
            m.buckets_compared.clone(),
        );
        r.register(
            "buckets_differing",
            "Partition buckets whose digest differed from a peer's",
            m.buckets_differing.clone(),
        );
        r.register(
            "series_repaired",
            "Series that received samples this node lacked",
            m.series_repaired.clone(),
        );
        r.register(
            "samples_repaired",
            "Samples this node lacked, pulled from a peer and stored",
            m.samples_repaired.clone(),
        );
        r.register(
            "repaired_bytes",
            "Bytes of pulled sample bodies that carried samples this node lacked",
            m.repaired_bytes.clone(),
        );
        r.register(
            "sent_bytes",
            "Bytes of anti-entropy requests and answers this node sent",
            m.sent_bytes.clone(),
        );
        r.register(
            "received_bytes",
            "Bytes of anti-entropy requests and answers this node received",
            m.received_bytes.clone(),
        );
        r.register(
            "digest_read_bytes",
            "Chunk bytes read to compute digests (cached blocks cost nothing)",
            m.digest_read_bytes.clone(),
        );
        r.register(
            "last_pass_seconds",
            "Duration of the last anti-entropy pass",
            m.last_pass_seconds.clone(),
        );
        m
    }

    /// Counts a request this node answered.
    pub fn answered(&self, request_bytes: usize, answer_bytes: usize) {
        self.received_bytes.inc_by(request_bytes as u64);
        self.sent_bytes.inc_by(answer_bytes as u64);
    }
}

/// The last anti-entropy pass of this node, for the cluster status.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AntiEntropyStatus {
    pub passes: u64,
    /// Unix milliseconds when the last pass finished.
    pub last_pass_end: Option<i64>,
    pub last_pass_seconds: Option<f64>,
    pub last_buckets_differing: u64,
    pub last_samples_repaired: u64,
    pub last_error: Option<String>,
}

/// Shared between the task and the status endpoint.
#[derive(Default)]
pub struct AntiEntropyProgress(Mutex<AntiEntropyStatus>);

impl AntiEntropyProgress {
    pub fn status(&self) -> AntiEntropyStatus {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, status: AntiEntropyStatus) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }
}

// ---- the answering side ----

/// Digests of the series this node and the requester both own, at the asked level.
pub async fn answer_digests(
    tsdb: &Tsdb,
    view: &ClusterView,
    request: DigestRequest,
    metrics: &AntiEntropyMetrics,
) -> Result<DigestAnswer, AntiEntropyError> {
    request.validate(&view.ring)?;
    let ring = view.ring.clone();
    let (me, them, buckets) = (view.local.id, request.requester, request.buckets);
    let wanted: Option<BTreeSet<u32>> = match &request.level {
        DigestLevel::Buckets => None,
        DigestLevel::Cells { buckets } => Some(buckets.iter().copied().collect()),
        DigestLevel::Series { cells } => Some(cells.iter().map(|c| c.0).collect()),
    };
    let include = Box::new(move |labels: &Labels| {
        let key = placement::partition_key(labels);
        wanted
            .as_ref()
            .is_none_or(|w| w.contains(&bucket_of(key, buckets)))
            && both_own(&ring, key, me, them)
    });
    let report = tsdb
        .series_digests(request.window_ms, request.upto, include)
        .await
        .map_err(AntiEntropyError::Storage)?;
    metrics.digest_read_bytes.inc_by(report.bytes_read);
    let mut answer = DigestAnswer::default();
    match request.level {
        DigestLevel::Buckets => {
            answer.buckets = bucket_digests(&cells_of(&report.series, buckets))
                .into_iter()
                .collect();
        }
        DigestLevel::Cells { .. } => {
            answer.cells = cells_of(&report.series, buckets)
                .into_iter()
                .map(|((b, w), d)| (b, w, d))
                .collect();
        }
        DigestLevel::Series { cells } => {
            let cells: BTreeSet<Cell> = cells.into_iter().collect();
            answer.series = series_in_cells(&report.series, &cells, buckets)
                .into_iter()
                .map(|s| WireSeriesDigest {
                    labels: labels_to_wire(&s.labels),
                    windows: s
                        .windows
                        .iter()
                        .map(|w| (w.window, w.digest, w.samples))
                        .collect(),
                })
                .collect();
        }
    }
    Ok(answer)
}

/// The series digests restricted to the windows of `cells`.
pub fn series_in_cells(
    series: &[SeriesDigests],
    cells: &BTreeSet<Cell>,
    buckets: u32,
) -> Vec<SeriesDigests> {
    series
        .iter()
        .filter_map(|s| {
            let bucket = bucket_of(placement::partition_key(&s.labels), buckets);
            let windows: Vec<WindowDigest> = s
                .windows
                .iter()
                .filter(|w| cells.contains(&(bucket, w.window)))
                .copied()
                .collect();
            (!windows.is_empty()).then(|| SeriesDigests {
                labels: s.labels.clone(),
                windows,
            })
        })
        .collect()
}

/// This node's samples of the named series in the asked ranges, as a snappy
/// remote-write body.
pub async fn answer_pull(tsdb: &Tsdb, request: PullRequest) -> Result<Vec<u8>, AntiEntropyError> {
    if request.ranges.len() > MAX_RANGES {
        return Err(bad(format!("at most {MAX_RANGES} ranges")));
    }
    let mut out: Vec<Series> = Vec::new();
    let mut total = 0usize;
    for range in request.ranges {
        if range.mint > range.maxt {
            return Err(bad("a range's mint is after its maxt"));
        }
        let labels = labels_from_wire(range.labels)?;
        let found = tsdb
            .select(SelectRequest {
                matchers: labels
                    .iter()
                    .map(|l| Matcher::equal(&l.name, &l.value))
                    .collect(),
                mint: range.mint,
                maxt: range.maxt,
                max_samples: MAX_PULL_SAMPLES,
            })
            .await
            .map_err(|e| match e {
                crate::storage::SelectError::Storage(e) => AntiEntropyError::Storage(e),
                crate::storage::SelectError::TooManySamples => bad("too many samples asked"),
            })?;
        if let Some(series) = found.into_iter().find(|s| s.labels == labels) {
            total += series.samples.len();
            if total > MAX_PULL_SAMPLES {
                return Err(bad("too many samples asked"));
            }
            out.push(series);
        }
    }
    Ok(super::encode_series(&out))
}

// ---- the pulling side ----

/// How much longer a due pass waits, given how long ago this node last stored a late
/// write (`Tsdb::since_late_write`) and how long the pass has waited: while samples
/// older than the settled bound arrived less than `SETTLE` ago (a replay, a catch-up, a
/// hint being delivered), the same writes are likely still on their way to the other
/// owners, and a comparison would find them missing and pull what is coming anyway. A
/// pass waits at most `limit` (the interval) past due, so a steady trickle of late
/// samples delays it but never stops it. `None`: compare now (ADR 0016).
pub fn postponement(
    since_late_write: Option<Duration>,
    waited: Duration,
    limit: Duration,
) -> Option<Duration> {
    let since = since_late_write?;
    if since >= SETTLE || waited >= limit {
        return None;
    }
    Some((SETTLE - since).min(limit - waited))
}

/// Settings of anti-entropy.
#[derive(Clone, Debug)]
pub struct AntiEntropyConfig {
    /// Between passes (0: anti-entropy off).
    pub interval: Duration,
    /// Before the first pass after start.
    pub first_delay: Duration,
    /// Width of a time window (a multiple of nothing in particular: every node must use
    /// the same one to compare, so it comes with the request).
    pub window_ms: i64,
    /// Bytes per second pulled (0: unthrottled), `--repair-rate-limit`.
    pub rate_limit_bytes: u64,
}

/// The anti-entropy task of one node.
pub struct AntiEntropy {
    pub config: AntiEntropyConfig,
    pub tsdb: Tsdb,
    pub membership: MembershipHandle,
    pub client: PeerClient,
    pub metrics: AntiEntropyMetrics,
    pub progress: Arc<AntiEntropyProgress>,
}

/// What one pass did.
#[derive(Debug, Default)]
struct PassTally {
    buckets_differing: u64,
    samples_repaired: u64,
    /// "<node id> (<address>)" of each peer samples were pulled from.
    repaired_from: Vec<String>,
    errors: Vec<String>,
}

impl AntiEntropy {
    pub fn spawn(self) -> Option<tokio::task::JoinHandle<()>> {
        if self.config.interval.is_zero() {
            return None;
        }
        Some(tokio::spawn(async move { self.run().await }))
    }

    async fn run(self) {
        self.membership.wait_placed().await;
        tokio::time::sleep(self.config.first_delay).await;
        loop {
            self.wait_for_late_writes().await;
            let started = Instant::now();
            let tally = self.pass().await;
            let seconds = started.elapsed().as_secs_f64();
            self.metrics.passes.inc();
            self.metrics.last_pass_seconds.set(seconds);
            let mut status = self.progress.status();
            status.passes += 1;
            status.last_pass_end = i64::try_from(unix_millis()).ok();
            status.last_pass_seconds = Some(seconds);
            status.last_buckets_differing = tally.buckets_differing;
            status.last_samples_repaired = tally.samples_repaired;
            status.last_error = tally.errors.first().cloned();
            self.progress.set(status);
            if tally.samples_repaired > 0 || !tally.errors.is_empty() {
                tracing::info!(
                    seconds,
                    buckets_differing = tally.buckets_differing,
                    samples_repaired = tally.samples_repaired,
                    repaired_from = ?tally.repaired_from,
                    errors = ?tally.errors,
                    "anti-entropy pass"
                );
            }
            tokio::time::sleep(self.config.interval).await;
        }
    }

    /// Holds a due pass while old samples are still arriving (`postponement`).
    async fn wait_for_late_writes(&self) {
        let due = Instant::now();
        let mut counted = false;
        while let Some(wait) = postponement(
            self.tsdb.since_late_write(),
            due.elapsed(),
            self.config.interval,
        ) {
            if !counted {
                self.metrics.passes_postponed.inc();
                counted = true;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Compares with every other live node in the ring and pulls what this node lacks.
    async fn pass(&self) -> PassTally {
        let mut tally = PassTally::default();
        let view = self.membership.view();
        let me = view.local.id;
        let upto = i64::try_from(unix_millis())
            .unwrap_or(i64::MAX)
            .saturating_sub(SETTLE.as_millis() as i64);
        let ring = view.ring.clone();
        let peers: Vec<_> = ring
            .nodes_in_join_order()
            .iter()
            .filter(|node| {
                node.id != me
                    && view
                        .member(node.id)
                        .is_some_and(|m| m.state != MemberState::Down)
            })
            .collect();
        if peers.is_empty() {
            // Nobody to compare with (a single node, or every peer down): reading every
            // digest would cost a pass over the head and change nothing.
            return tally;
        }
        let include = {
            let ring = ring.clone();
            Box::new(move |labels: &Labels| {
                let key = placement::partition_key(labels);
                placement::every_node_owns_every_series(ring.len())
                    || ring.owners(key).contains(&me)
            })
        };
        let mine = match self
            .tsdb
            .series_digests(self.config.window_ms, upto, include)
            .await
        {
            Ok(report) => {
                self.metrics.digest_read_bytes.inc_by(report.bytes_read);
                report.series
            }
            Err(e) => {
                tally.errors.push(format!("local digests: {e}"));
                return tally;
            }
        };
        let throttle = Throttle::new(self.config.rate_limit_bytes);
        for node in peers {
            let shared: Vec<SeriesDigests> = mine
                .iter()
                .filter(|s| both_own(&ring, placement::partition_key(&s.labels), me, node.id))
                .cloned()
                .collect();
            let exchange = Exchange {
                task: self,
                addr: &node.http_addr,
                me,
                upto,
                throttle: &throttle,
            };
            let repaired_before = tally.samples_repaired;
            if let Err(e) = exchange.run(&shared, &mut tally).await {
                self.metrics.failed_exchanges.inc();
                tracing::warn!(peer_node = %node.id, peer = %node.http_addr, error = %e, "anti-entropy exchange failed");
                tally
                    .errors
                    .push(format!("{} ({}): {e}", node.id, node.http_addr));
            }
            if tally.samples_repaired > repaired_before {
                tally
                    .repaired_from
                    .push(format!("{} ({})", node.id, node.http_addr));
            }
        }
        tally
    }
}

/// One comparison with one peer.
struct Exchange<'a> {
    task: &'a AntiEntropy,
    addr: &'a str,
    me: NodeId,
    upto: i64,
    throttle: &'a Throttle,
}

impl Exchange<'_> {
    async fn run(&self, shared: &[SeriesDigests], tally: &mut PassTally) -> Result<(), String> {
        let window_ms = self.task.config.window_ms;
        let metrics = &self.task.metrics;
        let local_cells = cells_of(shared, BUCKETS);
        let local_buckets = bucket_digests(&local_cells);
        let remote_buckets: BTreeMap<u32, u64> = self
            .digests(DigestLevel::Buckets)
            .await?
            .buckets
            .into_iter()
            .collect();
        let mut all: BTreeSet<u32> = remote_buckets.keys().copied().collect();
        all.extend(local_buckets.keys().copied());
        metrics.buckets_compared.inc_by(all.len() as u64);
        let buckets = differing(&local_buckets, &remote_buckets);
        if buckets.is_empty() {
            return Ok(());
        }
        metrics.buckets_differing.inc_by(buckets.len() as u64);
        tally.buckets_differing += buckets.len() as u64;
        let remote_cells: BTreeMap<Cell, u64> = self
            .digests(DigestLevel::Cells { buckets })
            .await?
            .cells
            .into_iter()
            .map(|(b, w, d)| ((b, w), d))
            .collect();
        let cells = differing(&local_cells, &remote_cells);
        for part in cells.chunks(CELLS_PER_REQUEST) {
            let set: BTreeSet<Cell> = part.iter().copied().collect();
            let answer = self
                .digests(DigestLevel::Series {
                    cells: part.to_vec(),
                })
                .await?;
            let mut remote = Vec::with_capacity(answer.series.len());
            for s in answer.series {
                remote.push(SeriesDigests {
                    labels: labels_from_wire(s.labels).map_err(|e| e.to_string())?,
                    windows: s
                        .windows
                        .into_iter()
                        .map(|(window, digest, samples)| WindowDigest {
                            window,
                            digest,
                            samples,
                        })
                        .collect(),
                });
            }
            let local = series_in_cells(shared, &set, BUCKETS);
            let ranges = pulls(&local, &remote, window_ms, self.upto);
            for batch in ranges.chunks(RANGES_PER_PULL) {
                self.pull(batch, tally).await?;
            }
        }
        Ok(())
    }

    async fn post(&self, path: &str, op: &'static str, body: Vec<u8>) -> Result<Vec<u8>, String> {
        let metrics = &self.task.metrics;
        metrics.sent_bytes.inc_by(body.len() as u64);
        let trace_id = peer::current_trace_id();
        let headers = [
            ("content-type", "application/json"),
            (peer::TRACE_HEADER, trace_id.as_str()),
        ];
        let response = self
            .task
            .client
            .post(self.addr, path, op, &headers, body, REQUEST_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        metrics.received_bytes.inc_by(response.body.len() as u64);
        if response.status != 200 {
            return Err(format!(
                "{path}: {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body[..response.body.len().min(256)])
            ));
        }
        Ok(response.body.to_vec())
    }

    async fn digests(&self, level: DigestLevel) -> Result<DigestAnswer, String> {
        let request = DigestRequest {
            requester: self.me,
            window_ms: self.task.config.window_ms,
            upto: self.upto,
            buckets: BUCKETS,
            level,
        };
        let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let answer = self
            .post(peer::DIGESTS_PATH, "anti_entropy_digests", body)
            .await?;
        serde_json::from_slice(&answer).map_err(|e| format!("bad digest answer: {e}"))
    }

    /// Pulls the ranges and stores what this node lacks.
    async fn pull(&self, ranges: &[PullRange], tally: &mut PassTally) -> Result<(), String> {
        let request = PullRequest {
            ranges: ranges
                .iter()
                .map(|r| WireRange {
                    labels: labels_to_wire(&r.labels),
                    mint: r.mint,
                    maxt: r.maxt,
                })
                .collect(),
        };
        let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let answer = self
            .post(peer::PULL_PATH, "anti_entropy_pull", body)
            .await?;
        self.throttle.wait_for(answer.len() as u64).await;
        let bytes = answer.len() as u64;
        let limits = DecodeLimits::for_body_limit(MAX_PULL_BODY);
        let decoded = tokio::task::spawn_blocking(move || {
            ingest::decode_write_request(
                Some("application/x-protobuf"),
                Some("snappy"),
                &answer,
                &limits,
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("bad pull answer: {e}"))?;
        let series = only_asked(ranges, decoded.series);
        let repaired = self
            .task
            .tsdb
            .backfill(series)
            .await
            .map_err(|e| format!("storing pulled samples: {e}"))?;
        if let Some(first) = &repaired.outcome.first_rejection {
            tracing::warn!(peer = %self.addr, first = %first, "pulled samples refused locally");
        }
        let metrics = &self.task.metrics;
        metrics.samples_repaired.inc_by(repaired.new_samples);
        metrics.series_repaired.inc_by(repaired.new_series);
        if repaired.new_samples > 0 {
            metrics.repaired_bytes.inc_by(bytes);
        }
        tally.samples_repaired += repaired.new_samples;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sample;
    use crate::tsdb::digest::window_digests;

    #[test]
    fn a_pass_waits_for_late_writes_to_settle_but_at_most_its_interval() {
        let s = Duration::from_secs;
        let limit = s(300);
        // No late write since start, or the last one settled: compare now.
        assert_eq!(postponement(None, s(0), limit), None);
        assert_eq!(postponement(Some(SETTLE), s(0), limit), None);
        assert_eq!(postponement(Some(s(3600)), s(0), limit), None);
        // One 10 s ago: wait until it is SETTLE old.
        assert_eq!(postponement(Some(s(10)), s(0), limit), Some(SETTLE - s(10)));
        // Still arriving after most of the limit: only what is left of it.
        assert_eq!(postponement(Some(s(0)), s(290), limit), Some(s(10)));
        assert_eq!(postponement(Some(s(0)), limit, limit), None);
        // A short interval bounds the wait too.
        assert_eq!(postponement(Some(s(0)), s(0), s(5)), Some(s(5)));
    }

    fn series(job: &str, samples: &[(i64, f64)]) -> SeriesDigests {
        let s: Vec<Sample> = samples.iter().map(|&(t, v)| Sample::new(t, v)).collect();
        SeriesDigests {
            labels: Labels::from_pairs([("__name__", "up"), ("job", job)]),
            windows: window_digests(&s, 100),
        }
    }

    fn many(n: usize) -> Vec<SeriesDigests> {
        (0..n)
            .map(|i| series(&format!("j{i}"), &[(10, i as f64), (150, 1.0), (250, 2.0)]))
            .collect()
    }

    #[test]
    fn equal_replicas_compare_equal_at_every_level_in_any_order() {
        let a = many(200);
        let mut b = a.clone();
        b.reverse();
        let (ca, cb) = (cells_of(&a, BUCKETS), cells_of(&b, BUCKETS));
        assert_eq!(ca, cb);
        assert!(differing(&bucket_digests(&ca), &bucket_digests(&cb)).is_empty());
        assert!(pulls(&a, &b, 100, i64::MAX).is_empty());
    }

    #[test]
    fn a_difference_is_found_in_one_bucket_one_cell_one_series_window() {
        let a = many(200);
        let mut b = a.clone();
        // The replica `b` has one more sample in series 17, window [100, 200).
        b[17] = series("j17", &[(10, 17.0), (150, 1.0), (160, 5.0), (250, 2.0)]);
        let (ca, cb) = (cells_of(&a, BUCKETS), cells_of(&b, BUCKETS));
        let buckets = differing(&bucket_digests(&ca), &bucket_digests(&cb));
        assert_eq!(buckets.len(), 1);
        let cells = differing(&ca, &cb);
        assert_eq!(cells.len(), 1);
        assert_eq!(cells[0].1, 100);
        assert_eq!(cells[0].0, buckets[0]);
        let set: BTreeSet<Cell> = cells.into_iter().collect();
        let local = series_in_cells(&a, &set, BUCKETS);
        let remote = series_in_cells(&b, &set, BUCKETS);
        let p = pulls(&local, &remote, 100, i64::MAX);
        assert_eq!(
            p,
            vec![PullRange {
                labels: b[17].labels.clone(),
                mint: 100,
                maxt: 199
            }]
        );
    }

    #[test]
    fn an_empty_node_pulls_everything_in_joined_ranges_cut_at_upto() {
        let remote = many(3);
        let p = pulls(&[], &remote, 100, 260);
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|r| r.mint == 0 && r.maxt == 260));
        // Keys only the local side has are the peer's business.
        assert!(differing(&cells_of(&remote, 4), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn swapping_samples_between_series_is_still_a_difference() {
        let a = vec![series("x", &[(10, 1.0)]), series("y", &[(10, 2.0)])];
        let b = vec![series("x", &[(10, 2.0)]), series("y", &[(10, 1.0)])];
        // Both series may share a bucket: one bucket count forces it.
        assert_ne!(cells_of(&a, 1), cells_of(&b, 1));
    }

    #[test]
    fn a_pull_answer_is_cut_to_what_was_asked() {
        let labels = |job: &str| Labels::from_pairs([("__name__", "up"), ("job", job)]);
        let asked = vec![
            PullRange {
                labels: labels("a"),
                mint: 10,
                maxt: 20,
            },
            PullRange {
                labels: labels("a"),
                mint: 40,
                maxt: 50,
            },
        ];
        let answer = vec![
            Series {
                labels: labels("a"),
                samples: [5, 10, 20, 30, 45, 60]
                    .map(|t| Sample::new(t, 1.0))
                    .to_vec(),
            },
            Series {
                labels: labels("smuggled"),
                samples: vec![Sample::new(15, 1.0)],
            },
        ];
        let kept = only_asked(&asked, answer);
        assert_eq!(kept.len(), 1);
        let times: Vec<i64> = kept[0].samples.iter().map(|s| s.t).collect();
        assert_eq!(times, vec![10, 20, 45]);
    }

    #[test]
    fn hostile_requests_are_refused() {
        assert!(labels_from_wire(vec![]).is_err());
        assert!(
            labels_from_wire(vec![("a".into(), "1".into()), ("a".into(), "2".into())]).is_err()
        );
        assert!(labels_from_wire(vec![("".into(), "1".into())]).is_err());
        assert!(labels_from_wire(vec![("a".into(), "x".repeat(MAX_LABEL_BYTES))]).is_err());
        assert!(labels_from_wire(vec![("__name__".into(), "up".into())]).is_ok());
        let ring = Ring::default();
        let req = |window_ms, buckets| DigestRequest {
            requester: NodeId(1),
            window_ms,
            upto: 0,
            buckets,
            level: DigestLevel::Buckets,
        };
        assert!(req(1, 64).validate(&ring).is_err());
        assert!(req(3_600_000, 0).validate(&ring).is_err());
        // Unknown requester.
        assert!(req(3_600_000, 64).validate(&ring).is_err());
        let wire = r#"{"requester":"00000000000000000000000000000001","windowMs":3600000,"upto":5,"buckets":64,"level":{"level":"cells","buckets":[1,2]}}"#;
        let parsed: DigestRequest = serde_json::from_str(wire).expect("well-formed");
        assert_eq!(
            parsed.level,
            DigestLevel::Cells {
                buckets: vec![1, 2]
            }
        );
        let unknown = wire.replace("\"cells\"", "\"everything\"");
        assert!(serde_json::from_str::<DigestRequest>(&unknown).is_err());
    }
}
