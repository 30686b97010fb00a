//! Fan-out: the read side of the cluster.
//!
//! Owns: asking every alive node (itself locally, the others over the internal read
//! endpoints with a deadline) for the series matching a request, and merging the
//! replicas' answers so each series appears once with the union of its samples (equal
//! timestamps deduplicated). Which series a node holds is unknown for a matcher query,
//! so every node is asked. A query succeeds while at most `REPLICATION_FACTOR - 1` nodes
//! fail or are down (every series still has a replica that answered; ADR 0007).
//!
//! Calls `cluster` (membership view), `peer` (internal HTTP client), `proto` (remote
//! read messages for the internal select) and the local `storage::Storage`. Writes are
//! not its business: they pass through to the local store.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use prost::Message;

use crate::cluster::membership::{MemberState, MembershipHandle};
use crate::cluster::placement::REPLICATION_FACTOR;
use crate::model::{merge_sorted_samples, Label, Labels, MatchOp, MetricMetadata, Sample, Series};
use crate::peer::{self, PeerClient, WireLabelRequest};
use crate::proto;
use crate::storage::{
    AppendOutcome, BoxFuture, LabelRequest, SelectError, SelectRequest, Storage, StorageError,
};

/// How long a peer may take to answer one internal read.
const PEER_DEADLINE: Duration = Duration::from_secs(30);

/// The read side of the cluster as a `Storage`. Cheap to clone.
#[derive(Clone)]
pub struct FanoutStorage {
    inner: Arc<Inner>,
}

struct Inner {
    local: Arc<dyn Storage>,
    membership: MembershipHandle,
    client: PeerClient,
    metrics: FanoutMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// Fan-out metrics: requests by outcome (`complete`, `degraded`: answered without some
/// nodes but complete by replication, `failed`: too many nodes missing).
#[derive(Clone, Default)]
pub struct FanoutMetrics {
    requests: Family<Outcome, Counter>,
}

impl FanoutMetrics {
    pub fn register(registry: &mut Registry) -> FanoutMetrics {
        let m = FanoutMetrics::default();
        registry.register(
            "timbala_fanout_requests",
            "Fanned-out reads by outcome (complete, degraded, failed)",
            m.requests.clone(),
        );
        m
    }

    fn count(&self, outcome: &'static str) {
        self.requests.get_or_create(&Outcome { outcome }).inc();
    }
}

/// The peers to ask and how many nodes already count as failed (down in the view).
struct Targets {
    peers: Vec<String>,
    down: usize,
    /// Failures tolerated: replicas per series minus one, bounded by the ring size.
    tolerated: usize,
}

impl FanoutStorage {
    pub fn new(
        local: Arc<dyn Storage>,
        membership: MembershipHandle,
        client: PeerClient,
        metrics: FanoutMetrics,
    ) -> FanoutStorage {
        FanoutStorage {
            inner: Arc::new(Inner {
                local,
                membership,
                client,
                metrics,
            }),
        }
    }

    fn targets(&self) -> Targets {
        let view = self.inner.membership.view();
        let local = view.local.id;
        let mut peers = Vec::new();
        let mut down = 0;
        for node in view.ring.nodes_in_join_order() {
            if node.id == local {
                continue;
            }
            match view.member(node.id).map(|m| m.state) {
                Some(MemberState::Alive | MemberState::Suspect) => {
                    peers.push(node.http_addr.clone())
                }
                _ => down += 1,
            }
        }
        let replicas = REPLICATION_FACTOR.min(view.ring.len().max(1));
        Targets {
            peers,
            down,
            tolerated: replicas - 1,
        }
    }

    /// Runs `local` here and `remote` on every alive peer concurrently; returns the
    /// answers, or an error once more nodes failed than replication tolerates.
    async fn gather<T, L, R, RF>(&self, local: L, remote: R) -> Result<Vec<T>, StorageError>
    where
        T: Send + 'static,
        L: std::future::Future<Output = Result<T, StorageError>>,
        R: Fn(PeerClient, String) -> RF,
        RF: std::future::Future<Output = Result<T, String>> + Send + 'static,
    {
        let targets = self.targets();
        let mut tasks = tokio::task::JoinSet::new();
        let trace_id = peer::current_trace_id();
        for peer in targets.peers {
            let ask = remote(self.inner.client.clone(), peer);
            tasks.spawn(peer::with_trace_id(trace_id.clone(), ask));
        }
        let mut answers = vec![local.await?];
        let mut failed = targets.down;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(answer)) => answers.push(answer),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "fan-out: a node failed to answer");
                    failed += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fan-out task failed");
                    failed += 1;
                }
            }
        }
        if failed > targets.tolerated {
            self.inner.metrics.count("failed");
            return Err(StorageError::Unavailable(format!(
                "{failed} nodes failed or are down; at most {} may be for a complete answer",
                targets.tolerated
            )));
        }
        if failed > 0 {
            self.inner.metrics.count("degraded");
            tracing::warn!(
                failed,
                "fan-out answered without some nodes; complete by replication"
            );
        } else {
            self.inner.metrics.count("complete");
        }
        Ok(answers)
    }

    async fn fan_select(&self, req: SelectRequest) -> Result<Vec<Series>, SelectError> {
        let body = Arc::new(proto::encode_snappy(&read_request(&req)));
        let max_samples = req.max_samples;
        let local = async {
            match self.inner.local.select(req).await {
                Ok(series) => Ok(Ok(series)),
                Err(SelectError::TooManySamples) => Ok(Err(())),
                Err(SelectError::Storage(e)) => Err(e),
            }
        };
        let answers = self
            .gather(local, move |client, peer| {
                let body = body.clone();
                async move { remote_select(&client, &peer, body.to_vec()).await.map(Ok) }
            })
            .await?;
        let mut all = Vec::new();
        for answer in answers {
            all.push(answer.map_err(|()| SelectError::TooManySamples)?);
        }
        let merged = merge_series(all);
        let total: usize = merged.iter().map(|s| s.samples.len()).sum();
        if max_samples > 0 && total > max_samples {
            return Err(SelectError::TooManySamples);
        }
        Ok(merged)
    }

    async fn fan_labels<T>(
        &self,
        path: &'static str,
        local: BoxFuture<'_, Result<Vec<T>, StorageError>>,
        wire: WireLabelRequest,
    ) -> Result<Vec<T>, StorageError>
    where
        T: Ord + Send + serde::de::DeserializeOwned + 'static,
    {
        let body =
            Arc::new(serde_json::to_vec(&wire).map_err(|e| StorageError::Other(e.to_string()))?);
        let answers = self
            .gather(local, move |client, peer| {
                let body = body.clone();
                async move { remote_json::<Vec<T>>(&client, &peer, path, body.to_vec()).await }
            })
            .await?;
        let mut all: Vec<T> = answers.into_iter().flatten().collect();
        all.sort();
        all.dedup();
        Ok(all)
    }
}

fn read_request(req: &SelectRequest) -> proto::ReadRequest {
    let matchers = req
        .matchers
        .iter()
        .map(|m| proto::LabelMatcher {
            r#type: match m.op {
                MatchOp::Equal => proto::MatcherType::Eq,
                MatchOp::NotEqual => proto::MatcherType::Neq,
                MatchOp::RegexMatch => proto::MatcherType::Re,
                MatchOp::RegexNoMatch => proto::MatcherType::Nre,
            } as i32,
            name: m.name.clone(),
            value: m.value.clone(),
        })
        .collect();
    proto::ReadRequest {
        queries: vec![proto::Query {
            start_timestamp_ms: req.mint,
            end_timestamp_ms: req.maxt,
            matchers,
            hints: None,
        }],
        accepted_response_types: vec![proto::ResponseType::Samples as i32],
    }
}

fn internal_headers(trace_id: &str) -> [(&str, &str); 2] {
    [
        ("content-type", "application/x-protobuf"),
        (peer::TRACE_HEADER, trace_id),
    ]
}

async fn remote_select(
    client: &PeerClient,
    peer: &str,
    body: Vec<u8>,
) -> Result<Vec<Series>, String> {
    let trace_id = peer::current_trace_id();
    let response = client
        .post(
            peer,
            peer::READ_LOCAL_PATH,
            "select",
            &internal_headers(&trace_id),
            body,
            PEER_DEADLINE,
        )
        .await
        .map_err(|e| e.to_string())?;
    if response.status != 200 {
        return Err(format!(
            "{peer}: read-local answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        ));
    }
    decode_read_response(&response.body).map_err(|e| format!("{peer}: {e}"))
}

/// Decodes a SAMPLES remote-read answer of one query into series.
pub fn decode_read_response(body: &[u8]) -> Result<Vec<Series>, String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("snappy: {e}"))?;
    let resp = proto::ReadResponse::decode(raw.as_slice()).map_err(|e| format!("protobuf: {e}"))?;
    let result = resp.results.into_iter().next().unwrap_or_default();
    Ok(result
        .timeseries
        .into_iter()
        .map(|ts| Series {
            labels: Labels::from_sorted(
                ts.labels
                    .into_iter()
                    .map(|l| Label::new(l.name, l.value))
                    .collect(),
            ),
            samples: ts
                .samples
                .into_iter()
                .map(|s| Sample::new(s.timestamp, s.value))
                .collect(),
        })
        .collect())
}

async fn remote_json<T: serde::de::DeserializeOwned>(
    client: &PeerClient,
    peer: &str,
    path: &'static str,
    body: Vec<u8>,
) -> Result<T, String> {
    let trace_id = peer::current_trace_id();
    let headers = [
        ("content-type", "application/json"),
        (peer::TRACE_HEADER, trace_id.as_str()),
    ];
    let response = client
        .post(peer, path, "labels", &headers, body, PEER_DEADLINE)
        .await
        .map_err(|e| e.to_string())?;
    if response.status != 200 {
        return Err(format!("{peer}{path}: answered {}", response.status));
    }
    serde_json::from_slice(&response.body).map_err(|e| format!("{peer}{path}: {e}"))
}

/// Merges replicas: one series per label set, sorted by labels, with the union of the
/// replicas' samples in time order; a timestamp present on several replicas is kept once
/// (the first replica's value: replicas hold the same sample).
pub fn merge_series(mut answers: Vec<Vec<Series>>) -> Vec<Series> {
    if answers.len() == 1 {
        // One node (a cluster of one): its answer is already sorted and unique.
        return answers.pop().unwrap_or_default();
    }
    let mut all: Vec<Series> = answers.into_iter().flatten().collect();
    all.sort_by(|a, b| a.labels.cmp(&b.labels));
    let mut merged: Vec<Series> = Vec::with_capacity(all.len());
    for series in all {
        match merged.last_mut() {
            Some(last) if last.labels == series.labels => {
                last.samples =
                    merge_sorted_samples(std::mem::take(&mut last.samples), series.samples);
            }
            _ => merged.push(series),
        }
    }
    merged
}

impl Storage for FanoutStorage {
    /// Writes are the replication layer's; this passes through to the local store.
    fn append(&self, batch: Vec<Series>) -> BoxFuture<'_, Result<AppendOutcome, StorageError>> {
        self.inner.local.append(batch)
    }

    fn select(&self, req: SelectRequest) -> BoxFuture<'_, Result<Vec<Series>, SelectError>> {
        Box::pin(self.fan_select(req))
    }

    fn series(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<Labels>, StorageError>> {
        Box::pin(async move {
            let wire = WireLabelRequest::from_request(&req, None);
            let local = Box::pin(async move {
                let series = self.inner.local.series(req).await?;
                Ok(series.into_iter().map(labels_to_pairs).collect())
            });
            let pairs: Vec<Vec<(String, String)>> =
                self.fan_labels(peer::SERIES_PATH, local, wire).await?;
            Ok(pairs.into_iter().map(pairs_to_labels).collect())
        })
    }

    fn label_names(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        Box::pin(async move {
            let wire = WireLabelRequest::from_request(&req, None);
            let local = self.inner.local.label_names(req);
            self.fan_labels(peer::LABELS_PATH, local, wire).await
        })
    }

    fn label_values(
        &self,
        name: String,
        req: LabelRequest,
    ) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        Box::pin(async move {
            let wire = WireLabelRequest::from_request(&req, Some(name.clone()));
            let local = self.inner.local.label_values(name, req);
            self.fan_labels(peer::LABEL_VALUES_PATH, local, wire).await
        })
    }

    fn record_metadata(
        &self,
        metadata: Vec<MetricMetadata>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.local.record_metadata(metadata)
    }

    /// Metadata stays on the node that received it; answered locally (a known gap).
    fn metadata(
        &self,
        metric: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<MetricMetadata>, StorageError>> {
        self.inner.local.metadata(metric)
    }
}

/// Labels as (name, value) pairs, the internal series answer's shape.
pub fn labels_to_pairs(labels: Labels) -> Vec<(String, String)> {
    labels
        .into_vec()
        .into_iter()
        .map(|l| (l.name, l.value))
        .collect()
}

fn pairs_to_labels(pairs: Vec<(String, String)>) -> Labels {
    Labels::from_sorted(pairs.into_iter().map(|(n, v)| Label::new(n, v)).collect())
}

/// Reads go to one store, writes to another: the node's public storage is
/// `Split { writes: replication, reads: fan-out }`.
pub struct Split {
    pub writes: Arc<dyn Storage>,
    pub reads: Arc<dyn Storage>,
}

impl Storage for Split {
    fn append(&self, batch: Vec<Series>) -> BoxFuture<'_, Result<AppendOutcome, StorageError>> {
        self.writes.append(batch)
    }
    fn select(&self, req: SelectRequest) -> BoxFuture<'_, Result<Vec<Series>, SelectError>> {
        self.reads.select(req)
    }
    fn series(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<Labels>, StorageError>> {
        self.reads.series(req)
    }
    fn label_names(&self, req: LabelRequest) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        self.reads.label_names(req)
    }
    fn label_values(
        &self,
        name: String,
        req: LabelRequest,
    ) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        self.reads.label_values(name, req)
    }
    fn record_metadata(
        &self,
        metadata: Vec<MetricMetadata>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.writes.record_metadata(metadata)
    }
    fn metadata(
        &self,
        metric: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<MetricMetadata>, StorageError>> {
        self.reads.metadata(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, samples: &[(i64, f64)]) -> Series {
        Series {
            labels: Labels::from_pairs([("__name__", name)]),
            samples: samples.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
        }
    }

    #[test]
    fn replicas_merge_into_one_series_with_the_union_of_samples() {
        let a = vec![series("a", &[(1, 1.0), (3, 3.0)]), series("b", &[(1, 1.0)])];
        let b = vec![series("a", &[(2, 2.0), (3, 3.0), (4, 4.0)])];
        let c = vec![series("b", &[(1, 1.0)]), series("c", &[(5, 5.0)])];
        let merged = merge_series(vec![a, b, c]);
        assert_eq!(
            merged,
            vec![
                series("a", &[(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]),
                series("b", &[(1, 1.0)]),
                series("c", &[(5, 5.0)]),
            ]
        );
    }
}
