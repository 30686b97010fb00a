//! The node-to-node HTTP client and the internal wire contract both sides share.
//!
//! Owns: one pooled hyper client (persistent keep-alive connections per peer), the
//! internal paths and headers (`X-Timbala-Routed`, `X-Timbala-Trace-Id`,
//! `X-Timbala-Hints-Pending`), the cluster credential on every request it sends when
//! the node has cluster keys (ADR 0014), the per-peer forwarding metrics, and the JSON
//! shapes of the internal select (ADR 0028; the histogram select takes the same one),
//! label, metadata, exemplar and head-statistics requests. Every request has a deadline,
//! and dropping its future cancels it (the connection is closed, never handed back to
//! the pool half-read). Called by `replication` (writes, hint replay), `fanout` (reads) and
//! `api::internal` (the receiving side). Calls hyper (with hyper-rustls: https to peers
//! when the web config enables TLS, with the TLS settings `web` gives it),
//! `cluster::keys` and
//! `model`/`storage`/`cluster::identity` types only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::cluster::identity::{unix_millis, NodeId};
use crate::cluster::keys::{ClusterKeys, CLUSTER_AUTH_HEADER};
use crate::model::{Exemplar, Labels, MatchOp, Matcher, MetricMetadata, SeriesExemplars};
use crate::storage::{LabelRequest, SelectRequest};

pub const WRITE_PATH: &str = "/internal/v1/write";
/// A repair write: stored like `WRITE_PATH`, but samples too old for the head are
/// backfilled as blocks (ADR 0016).
pub const BACKFILL_PATH: &str = "/internal/v1/backfill";
/// Anti-entropy digests of the series two nodes both own (ADR 0016).
pub const DIGESTS_PATH: &str = "/internal/v1/anti-entropy/digests";
/// Anti-entropy pull: this node's samples of named series in time ranges.
pub const PULL_PATH: &str = "/internal/v1/anti-entropy/pull";
pub const READ_LOCAL_PATH: &str = "/internal/v1/read-local";
/// The fan-out's select, answered one copy per series (ADR 0028): JSON
/// `WireSelectRequest` in, `fanout::one_copy`'s snappy protobuf out (422 past the
/// request's sample limit).
pub const SELECT_PATH: &str = "/internal/v1/select";
/// The fan-out's select of native histograms: JSON `WireSelectRequest` in (`slots`,
/// `alive` and `only` unused: every matching series is sent in full), a snappy
/// remote-write 1.0 `WriteRequest` out whose series carry only `histograms`
/// (`fanout::histograms`; 422 past the request's sample limit).
pub const SELECT_HISTOGRAMS_PATH: &str = "/internal/v1/select-histograms";
/// A node's share of a pushed-down aggregation (ADR 0029): JSON
/// `fanout::pushdown::WirePushdownRequest` in, its snappy protobuf answer out (409: the
/// node declines, the asker evaluates the ordinary way).
pub const PUSHDOWN_PATH: &str = "/internal/v1/aggregate";
pub const SERIES_PATH: &str = "/internal/v1/series";
pub const LABELS_PATH: &str = "/internal/v1/labels";
pub const LABEL_VALUES_PATH: &str = "/internal/v1/label-values";
pub const METADATA_PATH: &str = "/internal/v1/metadata";
/// A node's part of the cluster's head statistics (`/api/v1/status/tsdb`, ADR 0022).
pub const CARDINALITY_PATH: &str = "/internal/v1/tsdb-status";
/// This node's changes to old data since a mark (`storage::ChangeMark`, ADR 0024).
pub const CHANGES_PATH: &str = "/internal/v1/changes";
/// Cluster-wide admin (ADR 0023): a deletion, or tombstone cleaning, applied to the
/// receiving node's own data, sent by the node an operator asked.
pub const ADMIN_DELETE_SERIES_PATH: &str = "/internal/v1/admin/delete-series";
pub const ADMIN_CLEAN_TOMBSTONES_PATH: &str = "/internal/v1/admin/clean-tombstones";
/// This node's exemplars of the series some selectors match (ADR 0027).
pub const EXEMPLARS_PATH: &str = "/internal/v1/exemplars";

/// Marks a write as already routed: the receiver stores it locally and never forwards.
pub const ROUTED_HEADER: &str = "x-timbala-routed";
/// Follows one client request across nodes; logged in every span that handles it.
pub const TRACE_HEADER: &str = "x-timbala-trace-id";
/// On internal read answers: the hinted write batches the answering node holds for
/// other nodes (`<node id>=<batches>,...`), so the reader knows which replicas lag
/// (ADR 0012).
pub const HINTS_PENDING_HEADER: &str = "x-timbala-hints-pending";

/// Largest internal response body read into memory.
const MAX_RESPONSE_BYTES: usize = 1 << 30;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerOp {
    peer: String,
    op: &'static str,
}

/// Per-peer request metrics. Labels carry the peer's HTTP address.
#[derive(Clone)]
pub struct PeerMetrics {
    requests: Family<PeerOp, Counter>,
    errors: Family<PeerOp, Counter>,
    samples: Family<PeerOp, Counter>,
    latency: Family<PeerOp, Histogram>,
}

impl Default for PeerMetrics {
    fn default() -> Self {
        PeerMetrics {
            requests: Family::default(),
            errors: Family::default(),
            samples: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
}

impl PeerMetrics {
    pub fn register(registry: &mut Registry) -> PeerMetrics {
        let m = PeerMetrics::default();
        let r = registry.sub_registry_with_prefix("timbala_peer");
        r.register(
            "requests",
            "Internal requests sent to a peer, by operation",
            m.requests.clone(),
        );
        r.register(
            "errors",
            "Internal requests to a peer that failed (transport or 5xx)",
            m.errors.clone(),
        );
        r.register(
            "samples",
            "Samples sent to a peer in internal writes",
            m.samples.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Latency of internal requests to a peer",
            m.latency.clone(),
        );
        m
    }

    /// Counts samples forwarded to a peer.
    pub fn add_samples(&self, peer: &str, op: &'static str, n: u64) {
        let key = PeerOp {
            peer: peer.to_string(),
            op,
        };
        self.samples.get_or_create(&key).inc_by(n);
    }
}

/// A failed internal request: the peer could not be reached, timed out, or answered 5xx.
#[derive(Debug)]
pub struct PeerError(pub String);

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A 2xx or 4xx answer (4xx: the peer refused the data; retrying will not help).
pub struct PeerResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl PeerResponse {
    /// The hinted batches the peer said it holds for other nodes (none when absent).
    pub fn hints_pending(&self) -> Vec<(NodeId, u64)> {
        self.headers
            .get(HINTS_PENDING_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(decode_hints_pending)
            .unwrap_or_default()
    }
}

/// `X-Timbala-Hints-Pending`'s value: `<node id>=<batches>` joined by commas.
pub fn encode_hints_pending(pending: &[(NodeId, u64)]) -> String {
    let entries: Vec<String> = pending.iter().map(|(id, n)| format!("{id}={n}")).collect();
    entries.join(",")
}

/// Reads `X-Timbala-Hints-Pending`; malformed entries are skipped (a peer of another
/// version must not fail a read).
pub fn decode_hints_pending(value: &str) -> Vec<(NodeId, u64)> {
    value
        .split(',')
        .filter_map(|entry| {
            let (id, batches) = entry.trim().split_once('=')?;
            Some((id.parse().ok()?, batches.parse().ok()?))
        })
        .filter(|&(_, batches)| batches > 0)
        .collect()
}

/// The pooled client. Cheap to clone; connections are shared by all clones.
#[derive(Clone)]
pub struct PeerClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `https` when the listener (and so every peer's) uses TLS, else `http`.
    scheme: &'static str,
    metrics: PeerMetrics,
    /// Signs every request when the cluster has keys.
    keys: Option<Arc<ClusterKeys>>,
}

impl PeerClient {
    /// `keys`: the cluster keys requests are signed with (None: an open cluster). `tls`:
    /// the TLS client settings when the cluster's HTTP uses TLS (then only https is
    /// spoken to peers); None: plain http.
    pub fn new(
        metrics: PeerMetrics,
        keys: Option<ClusterKeys>,
        tls: Option<rustls::ClientConfig>,
    ) -> PeerClient {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        http.enforce_http(false);
        let (scheme, connector) = match tls {
            Some(config) => (
                "https",
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only()
                    .enable_http1()
                    .wrap_connector(http),
            ),
            None => (
                "http",
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(plain_only_tls_config())
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http),
            ),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(16)
            .build(connector);
        PeerClient {
            client,
            scheme,
            metrics,
            keys: keys.map(Arc::new),
        }
    }

    pub fn metrics(&self) -> &PeerMetrics {
        &self.metrics
    }

    /// POSTs `body` to `<scheme>://<peer><path>` and reads the answer within `deadline`.
    /// Dropping the returned future abandons the request and its connection.
    pub async fn post(
        &self,
        peer: &str,
        path: &str,
        op: &'static str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
        deadline: Duration,
    ) -> Result<PeerResponse, PeerError> {
        let body = body.into();
        let key = PeerOp {
            peer: peer.to_string(),
            op,
        };
        self.metrics.requests.get_or_create(&key).inc();
        let started = Instant::now();
        let result = tokio::time::timeout(deadline, self.send(peer, path, headers, body))
            .await
            .unwrap_or_else(|_| {
                Err(PeerError(format!(
                    "{peer}{path}: no answer in {deadline:?}"
                )))
            });
        self.metrics
            .latency
            .get_or_create(&key)
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.errors.get_or_create(&key).inc();
        }
        result
    }

    async fn send(
        &self,
        peer: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<PeerResponse, PeerError> {
        let mut builder = hyper::Request::post(format!("{}://{peer}{path}", self.scheme));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(keys) = &self.keys {
            // Signed per attempt, so a retried hint carries a fresh stamp.
            let credential = keys.sign_request("POST", path, &body, unix_millis());
            builder = builder.header(CLUSTER_AUTH_HEADER, credential);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| PeerError(format!("{peer}{path}: bad request: {e}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| PeerError(format!("{peer}{path}: {e}")))?;
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let body = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| PeerError(format!("{peer}{path}: reading the answer: {e}")))?
            .to_bytes();
        if status >= 500 {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(PeerError(format!("{peer}{path}: {status}: {text}")));
        }
        Ok(PeerResponse {
            status,
            headers: parts.headers,
            body,
        })
    }
}

/// A TLS configuration that trusts nobody, for the plain-http client (it never makes a
/// TLS connection: every URL it is given is http).
fn plain_only_tls_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"))
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth()
}

tokio::task_local! {
    static TRACE_ID: String;
}

/// The trace id of the request being served (set by `edge_trace`), or a new one.
pub fn current_trace_id() -> String {
    TRACE_ID
        .try_with(String::clone)
        .unwrap_or_else(|_| new_trace_id())
}

/// Runs `fut` with `trace_id` as the current trace id (re-enter it after a hop to a
/// blocking thread or a spawned task, which do not inherit it).
pub async fn with_trace_id<F: std::future::Future>(trace_id: String, fut: F) -> F::Output {
    TRACE_ID.scope(trace_id, fut).await
}

/// Edge middleware: takes the caller's `X-Timbala-Trace-Id` (another node, or a client
/// that has one) or makes a new one, serves the request inside a span that logs it and
/// with it as the current trace id, and returns it in the response header.
pub async fn edge_trace(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let trace_id = request
        .headers()
        .get(TRACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .map(str::to_string)
        .unwrap_or_else(new_trace_id);
    let span = tracing::info_span!("request", trace_id = %trace_id, path = %request.uri().path());
    let mut response = with_trace_id(trace_id.clone(), next.run(request))
        .instrument(span)
        .await;
    if let Ok(value) = axum::http::HeaderValue::from_str(&trace_id) {
        response.headers_mut().insert(TRACE_HEADER, value);
    }
    response
}

/// A new trace id: 16 hex digits, unique per process (a counter mixed with a per-process
/// random seed, so ids of different nodes do not collide either).
pub fn new_trace_id() -> String {
    use rand::{Rng, SeedableRng};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| rand::rngs::StdRng::from_os_rng().random());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut z = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("{:016x}", z ^ (z >> 31))
}

/// A label request on the wire (`/internal/v1/series`, `labels`, `label-values`).
#[derive(Debug, Serialize, Deserialize)]
pub struct WireLabelRequest {
    /// (name, op as in PromQL: `=`, `!=`, `=~`, `!~`, value).
    pub matchers: Vec<(String, String, String)>,
    pub mint: i64,
    pub maxt: i64,
    /// The label whose values are asked for (`label-values` only).
    #[serde(default)]
    pub name: Option<String>,
}

impl WireLabelRequest {
    pub fn from_request(req: &LabelRequest, name: Option<String>) -> Self {
        WireLabelRequest {
            matchers: req.matchers.iter().map(wire_matcher).collect(),
            mint: req.mint,
            maxt: req.maxt,
            name,
        }
    }

    /// Back to a storage request; a bad operator or regex is an error, never a panic.
    pub fn to_request(&self) -> Result<LabelRequest, String> {
        Ok(LabelRequest {
            matchers: matchers_from_wire(&self.matchers)?,
            mint: self.mint,
            maxt: self.maxt,
        })
    }
}

/// A fan-out select on the wire (`SELECT_PATH`, ADR 0028): the matchers and time range,
/// and the asker's view, by which the answering node sends in full only the series it
/// is the first alive owner of and digests of the others it owns.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireSelectRequest {
    /// As in `WireLabelRequest`.
    pub matchers: Vec<(String, String, String)>,
    pub mint: i64,
    pub maxt: i64,
    /// Samples the answer may hold (0: no limit).
    pub max_samples: usize,
    /// The asker's ring: every slot in join order as (id, removed).
    pub slots: Vec<(NodeId, bool)>,
    /// The nodes the asker asks, itself included.
    pub alive: Vec<NodeId>,
    /// A second round: just the series whose label hash (`Labels::stable_hash`) is
    /// listed, each in full.
    #[serde(default)]
    pub only: Option<Vec<u64>>,
}

impl WireSelectRequest {
    /// The storage select it asks for; a bad operator or regex is an error.
    pub fn to_select_request(&self) -> Result<SelectRequest, String> {
        Ok(SelectRequest {
            matchers: matchers_from_wire(&self.matchers)?,
            mint: self.mint,
            maxt: self.maxt,
            max_samples: self.max_samples,
        })
    }
}

/// The body of an internal deletion: series matching any selector (each a list of
/// matchers as in `WireLabelRequest`), their samples in `[start, end]` (ms).
#[derive(Debug, Serialize, Deserialize)]
pub struct WireDeleteRequest {
    pub selectors: Vec<Vec<(String, String, String)>>,
    pub start: i64,
    pub end: i64,
}

impl WireDeleteRequest {
    pub fn new(selectors: &[Vec<Matcher>], start: i64, end: i64) -> Self {
        WireDeleteRequest {
            selectors: selectors
                .iter()
                .map(|set| set.iter().map(wire_matcher).collect())
                .collect(),
            start,
            end,
        }
    }

    /// The selectors as matchers; a bad operator or regex is an error, never a panic.
    pub fn matcher_sets(&self) -> Result<Vec<Vec<Matcher>>, String> {
        self.selectors
            .iter()
            .map(|set| matchers_from_wire(set))
            .collect()
    }
}

/// The body of an internal exemplar read: selectors and a time range, as a deletion's.
pub type WireExemplarRequest = WireDeleteRequest;

/// One exemplar on the wire: (series labels, exemplar labels, timestamp, value bits).
/// Compared and ordered whole, so the copies that replicas return are merged into one.
pub type WireExemplar = (Vec<(String, String)>, Vec<(String, String)>, i64, u64);

fn label_pairs(labels: &Labels) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|l| (String::from(&l.name), String::from(&l.value)))
        .collect()
}

pub fn exemplars_to_wire(found: Vec<SeriesExemplars>) -> Vec<WireExemplar> {
    let mut wire = Vec::new();
    for series in found {
        let pairs = label_pairs(&series.series);
        for e in series.exemplars {
            wire.push((
                pairs.clone(),
                label_pairs(&e.labels),
                e.t,
                e.value.to_bits(),
            ));
        }
    }
    wire
}

/// Exemplars from the wire, sorted (as `fan_labels` leaves them): by series, each
/// series' in time order.
pub fn exemplars_from_wire(wire: Vec<WireExemplar>) -> Vec<SeriesExemplars> {
    let mut found: Vec<SeriesExemplars> = Vec::new();
    for (series, labels, t, bits) in wire {
        let exemplar = Exemplar {
            labels: Labels::from_pairs(labels),
            value: f64::from_bits(bits),
            t,
        };
        match found.last_mut() {
            Some(last) if label_pairs(&last.series) == series => last.exemplars.push(exemplar),
            _ => found.push(SeriesExemplars {
                series: Labels::from_pairs(series),
                exemplars: vec![exemplar],
            }),
        }
    }
    for series in &mut found {
        series.exemplars.sort_by_key(|e| e.t);
    }
    found
}

/// The body of an internal metadata read: one metric family, or all when `None`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WireMetadataRequest {
    #[serde(default)]
    pub metric: Option<String>,
}

/// The body of an internal head-statistics read: the nodes the asker asked (itself
/// included), in join order. The answering node counts each series whose first owner
/// (placement order) among them is itself, so every series is counted by one node
/// (ADR 0022). The answer is a `tsdb::HeadCardinality` as JSON.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WireCardinalityRequest {
    pub counters: Vec<NodeId>,
}

/// One metric family's metadata on the wire: (family, type, help, unit).
pub type WireMetadata = (String, String, String, String);

pub fn metadata_to_wire(m: MetricMetadata) -> WireMetadata {
    (m.metric_family, m.metric_type, m.help, m.unit)
}

pub fn metadata_from_wire(
    (metric_family, metric_type, help, unit): WireMetadata,
) -> MetricMetadata {
    MetricMetadata {
        metric_family,
        metric_type,
        help,
        unit,
    }
}

pub fn wire_matcher(m: &Matcher) -> (String, String, String) {
    (m.name.clone(), m.op.as_str().to_string(), m.value.clone())
}

/// A list of `(name, op, value)` matchers back to matchers; the first bad one is an error.
pub fn matchers_from_wire(wire: &[(String, String, String)]) -> Result<Vec<Matcher>, String> {
    wire.iter()
        .map(|(n, op, v)| matcher_from_wire(n, op, v))
        .collect()
}

pub fn matcher_from_wire(name: &str, op: &str, value: &str) -> Result<Matcher, String> {
    let op = match op {
        "=" => MatchOp::Equal,
        "!=" => MatchOp::NotEqual,
        "=~" => MatchOp::RegexMatch,
        "!~" => MatchOp::RegexNoMatch,
        other => return Err(format!("unknown matcher operator {other:?}")),
    };
    Matcher::new(op, name, value).map_err(|e| format!("invalid regex for {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_requests_survive_the_wire() {
        let req = LabelRequest {
            matchers: vec![
                Matcher::equal("job", "a"),
                Matcher::new(MatchOp::RegexNoMatch, "x", "b.*").expect("regex"),
            ],
            mint: 5,
            maxt: 9,
        };
        let wire = WireLabelRequest::from_request(&req, Some("job".into()));
        let json = serde_json::to_vec(&wire).expect("encode");
        let back: WireLabelRequest = serde_json::from_slice(&json).expect("decode");
        let again = back.to_request().expect("valid");
        assert_eq!(again.matchers, req.matchers);
        assert_eq!((again.mint, again.maxt), (5, 9));
        assert_eq!(back.name.as_deref(), Some("job"));
    }

    #[test]
    fn hints_pending_survive_the_header() {
        let a: NodeId = "0000000000000000000000000000000a".parse().expect("id");
        let b: NodeId = "ffffffffffffffffffffffffffffffff".parse().expect("id");
        let value = encode_hints_pending(&[(a, 3), (b, 12)]);
        assert_eq!(decode_hints_pending(&value), [(a, 3), (b, 12)]);
        assert_eq!(decode_hints_pending(""), []);
        // Garbage and empty backlogs are skipped, the rest is kept.
        let mixed = format!("nonsense,{a}=x,{b}=0, {a}=4 ,=5");
        assert_eq!(decode_hints_pending(&mixed), [(a, 4)]);
    }

    #[test]
    fn bad_wire_matchers_are_errors() {
        assert!(matcher_from_wire("a", "==", "b").is_err());
        assert!(matcher_from_wire("a", "=~", "(").is_err());
    }
}
