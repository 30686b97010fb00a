//! `POST /api/v1/write`: Prometheus remote write 1.0 and 2.0.
//!
//! Owns: the HTTP side of remote write — body size limit, status codes, plain-text error
//! bodies as Prometheus's receiver writes them, and remote write 2.0's
//! `X-Prometheus-Remote-Write-*-Written` headers. Calls `ingest` to decode and validate
//! and `storage` to append; every other rule lives in `ingest`.
//!
//! Status codes (what Prometheus's sender does with them): 204 stored; 400/413/415 bad
//! data, dropped by the sender; 500/503 retried (503 when storage refuses writes for
//! now, e.g. a full disk; nothing of such a request is stored). A request is validated
//! as a whole before anything is stored. Samples outside the wall-clock time bounds (too
//! far in the future, older than retention; ADR 0009) are taken out before the write is
//! routed; those and the samples that storage refuses (out of order, too old, duplicate
//! timestamp with another value) give 400 naming the count and the first one; the other
//! samples of that request stay stored, so the sender's retry-free drop loses nothing
//! that was accepted. Native histogram samples (both protocol versions, ADR 0030) go the
//! same way: validated with the request, bounded in time, refused one by one by storage.
//!
//! Every answer to a 2.0 request carries the three written headers, counting exactly what
//! was stored: samples as sent (not the zero samples of created timestamps), histogram
//! samples, exemplars (held by the owners' exemplar stores). A 2.0
//! sender reads a 2xx whose headers say nothing was written as a failure, so they are
//! never left out.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http_body_util::BodyExt;

use super::AppState;
use crate::ingest::{
    self, DecodeLimits, DecodedWrite, IngestError, IngestMetrics, Protocol, RejectReason,
};
use crate::storage::{wall_clock_ms, AppendOutcome, HistogramAppendError, Storage, StorageError};

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/write", post(remote_write))
}

pub const SAMPLES_WRITTEN_HEADER: &str = "X-Prometheus-Remote-Write-Samples-Written";
pub const HISTOGRAMS_WRITTEN_HEADER: &str = "X-Prometheus-Remote-Write-Histograms-Written";
pub const EXEMPLARS_WRITTEN_HEADER: &str = "X-Prometheus-Remote-Write-Exemplars-Written";

/// What a request stored, for remote write 2.0's written headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Written {
    samples: u64,
    histograms: u64,
    exemplars: u64,
}

impl Written {
    fn add_headers(self, response: &mut Response) {
        let headers = response.headers_mut();
        for (name, n) in [
            (SAMPLES_WRITTEN_HEADER, self.samples),
            (HISTOGRAMS_WRITTEN_HEADER, self.histograms),
            (EXEMPLARS_WRITTEN_HEADER, self.exemplars),
        ] {
            headers.insert(name, HeaderValue::from(n));
        }
    }
}

async fn remote_write(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let protocol = ingest::write_protocol(header_text(&headers, header::CONTENT_TYPE).as_deref());
    let mut written = Written::default();
    let mut response = write(&state, &headers, body, &mut written).await;
    if protocol == Ok(Protocol::V2) {
        written.add_headers(&mut response);
    }
    response
}

/// Decodes and stores one request, noting in `written` what was stored.
async fn write(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    written: &mut Written,
) -> Response {
    let metrics = state.ingest_metrics();
    let IngestRequest {
        storage,
        body,
        content_type,
        content_encoding,
        limits,
    } = match accept_ingest_request(state, headers, body, plain_text).await {
        Ok(request) => request,
        Err(answer) => return answer,
    };

    // Decoding is CPU work: keep it off the runtime workers. Storage futures do their
    // own blocking work on the blocking pool (the local TSDB) or the network.
    let decoded = tokio::task::spawn_blocking(move || {
        ingest::decode_write_request(
            content_type.as_deref(),
            content_encoding.as_deref(),
            &body,
            &limits,
        )
    })
    .await;
    let decoded = match decoded {
        Ok(Ok(decoded)) => decoded,
        Ok(Err(err)) => return refused(metrics, &err),
        Err(join_err) => {
            return server_error(
                metrics,
                StatusCode::INTERNAL_SERVER_ERROR,
                &join_err.to_string(),
            )
        }
    };
    metrics.on_decoded(&decoded);
    let samples = decoded.num_samples;
    let histogram_samples = decoded.num_histograms;
    match store_decoded(state, &storage, decoded).await {
        Ok(Stored {
            samples: mut outcome,
            mut histograms,
            exemplars,
        }) => {
            // Every sample sent was stored or refused; the count of stored ones leaves
            // out created-timestamp zero samples, which are not the client's (ADR 0027).
            outcome.appended = samples.saturating_sub(outcome.rejected_total());
            histograms.appended = histogram_samples.saturating_sub(histograms.rejected_total());
            written.samples = outcome.appended;
            written.histograms = histograms.appended;
            written.exemplars = exemplars;
            stored(metrics, &outcome, &histograms)
        }
        Err(StoreError::Storage(e)) => storage_failed(metrics, &e),
        Err(StoreError::InvalidHistogram(message)) => refused(
            metrics,
            &IngestError::new(RejectReason::InvalidHistogram, message),
        ),
    }
}

/// What `store_decoded` stored.
pub(super) struct Stored {
    /// The samples' outcome (`appended` counts created-timestamp zeros stored on a
    /// single node; the HTTP edge counts the client's samples itself).
    pub samples: AppendOutcome,
    /// The native histogram samples' outcome (`appended` as for samples).
    pub histograms: AppendOutcome,
    /// Exemplars held now.
    pub exemplars: u64,
}

/// Why `store_decoded` failed.
pub(super) enum StoreError {
    Storage(StorageError),
    /// Storage found a histogram invalid that ingest's validation let through (the two
    /// apply the same rules, so this is a bug; it is still the client's 400).
    InvalidHistogram(String),
}

impl From<StorageError> for StoreError {
    fn from(e: StorageError) -> Self {
        StoreError::Storage(e)
    }
}

/// An ingest request read and ready to decode.
pub(super) struct IngestRequest {
    pub storage: Arc<dyn Storage>,
    pub body: Bytes,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub limits: DecodeLimits,
}

/// What every ingest endpoint (remote write, OTLP) does before decoding: counts the
/// request, finds the storage, and reads the body within `--write-max-body-size`
/// (counting an oversize body as refused). A failure is answered by `answer`, in the
/// endpoint's own error format.
pub(super) async fn accept_ingest_request(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    answer: fn(StatusCode, &str) -> Response,
) -> Result<IngestRequest, Response> {
    let metrics = state.ingest_metrics();
    metrics.on_request();
    let storage = match state.services() {
        Ok(services) => services.storage.clone(),
        Err(err) => return Err(answer(err.status, &err.message)),
    };
    let max_body = state.info().max_write_body_bytes;
    let body = match read_limited(headers, body, max_body).await {
        Ok(body) => body,
        Err(err) => {
            if err.status == StatusCode::PAYLOAD_TOO_LARGE {
                metrics.on_refused(RejectReason::TooLarge);
            }
            return Err(answer(err.status, &err.message));
        }
    };
    Ok(IngestRequest {
        storage,
        body,
        content_type: header_text(headers, header::CONTENT_TYPE),
        content_encoding: header_text(headers, header::CONTENT_ENCODING),
        limits: DecodeLimits::for_body_limit(max_body),
    })
}

/// Stores a validated write where a client's write enters: its metadata, then its
/// samples and native histograms within the wall-clock time bounds (ADR 0009; those
/// outside them are reported as refused), then its exemplars, routed by `storage` to
/// their owners. Shared by remote write and OTLP, so both store the same way.
pub(super) async fn store_decoded(
    state: &AppState,
    storage: &Arc<dyn Storage>,
    decoded: DecodedWrite,
) -> Result<Stored, StoreError> {
    if !decoded.metadata.is_empty() {
        storage.record_metadata(decoded.metadata).await?;
    }
    let bounds = &state.info().ingest_time_bounds;
    let now = wall_clock_ms();
    let mut series = decoded.series;
    let mut outcome = ingest::enforce_time_bounds(&mut series, bounds, now);
    if !series.is_empty() {
        outcome.merge(storage.append(series).await?);
    }
    let mut histogram_series = decoded.histograms;
    let mut histograms = ingest::enforce_time_bounds(&mut histogram_series, bounds, now);
    if !histogram_series.is_empty() {
        match storage.append_histograms(histogram_series).await {
            Ok(stored) => histograms.merge(stored),
            Err(HistogramAppendError::Storage(e)) => return Err(StoreError::Storage(e)),
            Err(invalid @ HistogramAppendError::Invalid { .. }) => {
                return Err(StoreError::InvalidHistogram(invalid.to_string()))
            }
        }
    }
    let mut exemplars = 0;
    if !decoded.exemplars.is_empty() {
        exemplars = storage.append_exemplars(decoded.exemplars).await?;
        state
            .ingest_metrics()
            .on_exemplars_stored(exemplars, decoded.num_exemplars);
    }
    Ok(Stored {
        samples: outcome,
        histograms,
        exemplars,
    })
}

/// The status a storage failure is answered with: 503 when storage refuses writes for
/// now (full disk, failing WAL, a cluster that cannot reach enough owners; nothing of the
/// request was stored), else 500.
pub(super) fn storage_failure_status(error: &StorageError) -> StatusCode {
    match error {
        StorageError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A storage failure, answered in plain text with `storage_failure_status`.
fn storage_failed(metrics: &IngestMetrics, error: &StorageError) -> Response {
    server_error(metrics, storage_failure_status(error), &error.to_string())
}

/// A failure that is not the client's fault: a 5xx, which Prometheus's sender retries.
fn server_error(metrics: &IngestMetrics, status: StatusCode, message: &str) -> Response {
    metrics.on_storage_error();
    tracing::warn!(error = %message, "remote write: storage failed");
    plain_text(status, message)
}

/// How much of an oversized body is still read and dropped before answering 413, so a
/// client that sends its whole body before reading the answer sees the 413 rather than a
/// broken pipe (Go's HTTP server drains 256 KiB for the same reason).
const OVERSIZE_DRAIN_BYTES: u64 = 4 << 20;

/// Why a body could not be read: 413 over the limit, 400 for a broken stream.
pub(super) struct BodyError {
    pub status: StatusCode,
    pub message: String,
}

/// Reads the body, refusing with 413 once it is known to exceed `max` bytes.
pub(super) async fn read_limited(
    headers: &HeaderMap,
    mut body: Body,
    max: usize,
) -> Result<Bytes, BodyError> {
    let too_large = || BodyError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("request body too large: the limit is {max} bytes (compressed)"),
    };
    let max = max as u64;
    let declared = header_text(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max.saturating_add(OVERSIZE_DRAIN_BYTES)) {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(max) as usize);
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError {
            status: StatusCode::BAD_REQUEST,
            message: format!("error reading request body: {e}"),
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        seen += data.len() as u64;
        if seen > max.saturating_add(OVERSIZE_DRAIN_BYTES) {
            return Err(too_large());
        }
        if seen <= max {
            buf.extend_from_slice(&data);
        }
    }
    if seen > max {
        return Err(too_large());
    }
    Ok(Bytes::from(buf))
}

/// The answer to a stored request: 204, or 400 naming the samples and histogram
/// samples refused one by one (the request's rest is stored either way).
fn stored(
    metrics: &IngestMetrics,
    outcome: &AppendOutcome,
    histograms: &AppendOutcome,
) -> Response {
    metrics.on_stored(outcome, histograms);
    let mut problems = Vec::new();
    if outcome.rejected_total() > 0 {
        problems.push(describe_rejections(outcome, "samples"));
    }
    if histograms.rejected_total() > 0 {
        problems.push(describe_rejections(histograms, "histogram samples"));
    }
    if problems.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    plain_text(StatusCode::BAD_REQUEST, &problems.join("; "))
}

/// "3 samples rejected (out_of_order: 2, duplicate_timestamp: 1); 10 samples stored;
/// first: ...", of `what` ("samples", "histogram samples").
pub(super) fn describe_rejections(outcome: &AppendOutcome, what: &str) -> String {
    let by_reason: Vec<String> = outcome
        .rejected
        .iter()
        .map(|(reason, n)| format!("{}: {n}", reason.as_str()))
        .collect();
    let mut message = format!(
        "{} {what} rejected ({}); {} {what} stored",
        outcome.rejected_total(),
        by_reason.join(", "),
        outcome.appended
    );
    if let Some(first) = &outcome.first_rejection {
        message.push_str("; first rejected: ");
        message.push_str(first);
    }
    message
}

fn refused(metrics: &IngestMetrics, err: &IngestError) -> Response {
    metrics.on_refused(err.reason);
    tracing::debug!(reason = err.reason.as_str(), error = %err, "remote write refused");
    let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    plain_text(status, &err.message)
}

/// A header as text; non-ASCII bytes are kept lossily so errors can still show them.
pub(super) fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// A plain-text error body, as Prometheus's `http.Error` writes it.
pub(crate) fn plain_text(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::RejectReason as StorageReject;

    #[test]
    fn rejection_message_names_counts_and_first() {
        let outcome = AppendOutcome {
            appended: 10,
            rejected: vec![
                (StorageReject::OutOfOrder, 2),
                (StorageReject::DuplicateTimestamp, 1),
            ],
            first_rejection: Some(r#"up{job="a"} @ 5"#.into()),
        };
        assert_eq!(
            describe_rejections(&outcome, "samples"),
            "3 samples rejected (out_of_order: 2, duplicate_timestamp: 1); 10 samples stored; \
             first rejected: up{job=\"a\"} @ 5"
        );
    }
}
