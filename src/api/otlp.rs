//! `POST /api/v1/otlp/v1/metrics`: OpenTelemetry's OTLP/HTTP metrics export (protobuf,
//! gzip or uncompressed), the path Prometheus 3.x serves it at.
//!
//! Owns: the HTTP side of OTLP — body size limit, status codes and answer bodies as the
//! OTLP/HTTP specification asks. Calls `ingest::otlp` to decode, translate and validate,
//! and stores through remote write's own path (`write::store_decoded`: metadata, time
//! bounds, replication to the owners), so an OTLP point is stored exactly like a
//! remote-written sample.
//!
//! Answers: 200 with an `ExportMetricsServiceResponse` (empty, or a `partial_success`
//! counting the data points dropped in translation with the first reason: delta
//! temporality, exponential histograms...; the rest is stored). Errors carry a
//! `google.rpc.Status` in protobuf: 400 undecodable or invalid (nothing stored), or
//! samples refused by storage or the time bounds (out of order, too old, too far in the
//! future; the rest is stored, as remote write does); 413 over the body limit (the
//! `--write-max-body-size` of remote write; decompressed within the same bound); 500/503
//! storage failures (503: writes cannot be taken now, e.g. the cluster cannot reach the
//! owners; nothing stored, OTLP exporters retry). 415 for another `Content-Type` or
//! `Content-Encoding` answers in plain text, since the client's type is not one to answer in.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use prost::Message;

use super::write::{
    accept_ingest_request, describe_rejections, plain_text, storage_failure_status, store_decoded,
    IngestRequest, StoreError,
};
use super::AppState;
use crate::ingest::otlp::{decode_otlp_request, DecodedOtlp};
use crate::ingest::IngestMetrics;
use crate::proto::otlp as wire;

pub const OTLP_METRICS_PATH: &str = "/api/v1/otlp/v1/metrics";
const PROTOBUF: &str = "application/x-protobuf";

pub fn routes() -> Router<AppState> {
    Router::new().route(OTLP_METRICS_PATH, post(export_metrics))
}

async fn export_metrics(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let metrics = state.ingest_metrics();
    let IngestRequest {
        storage,
        body,
        content_type,
        content_encoding,
        limits,
    } = match accept_ingest_request(&state, &headers, body, status_answer).await {
        Ok(request) => request,
        Err(answer) => return answer,
    };
    // Decompression, decoding and translation are CPU work: off the runtime workers.
    let decoded = tokio::task::spawn_blocking(move || {
        decode_otlp_request(
            content_type.as_deref(),
            content_encoding.as_deref(),
            &body,
            &limits,
        )
    })
    .await;
    let decoded = match decoded {
        Ok(Ok(decoded)) => decoded,
        Ok(Err(err)) => {
            metrics.on_refused(err.reason);
            tracing::debug!(reason = err.reason.as_str(), error = %err, "OTLP write refused");
            let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                return plain_text(status, &err.message);
            }
            return status_answer(status, &err.message);
        }
        Err(join_err) => {
            return failed(
                metrics,
                StatusCode::INTERNAL_SERVER_ERROR,
                &join_err.to_string(),
            )
        }
    };
    metrics.on_otlp_decoded(&decoded);
    let DecodedOtlp { write, dropped, .. } = decoded;
    // OTLP is translated into float samples only, so its histograms' outcome is empty.
    let stored = match store_decoded(&state, &storage, write).await {
        Ok(stored) => stored,
        Err(StoreError::Storage(e)) => {
            return failed(metrics, storage_failure_status(&e), &e.to_string())
        }
        Err(StoreError::InvalidHistogram(message)) => {
            return failed(metrics, StatusCode::BAD_REQUEST, &message)
        }
    };
    let outcome = stored.samples;
    metrics.on_stored(&outcome, &stored.histograms);
    if outcome.rejected_total() > 0 {
        let mut message = describe_rejections(&outcome, "samples");
        if dropped.total() > 0 {
            message.push_str("; also ");
            message.push_str(&dropped.describe());
        }
        return status_answer(StatusCode::BAD_REQUEST, &message);
    }
    let partial_success = (dropped.total() > 0).then(|| wire::ExportMetricsPartialSuccess {
        rejected_data_points: dropped.total() as i64,
        error_message: dropped.describe(),
    });
    protobuf(
        StatusCode::OK,
        wire::ExportMetricsServiceResponse { partial_success }.encode_to_vec(),
    )
}

/// A failure that is not the client's fault (5xx).
fn failed(metrics: &IngestMetrics, status: StatusCode, message: &str) -> Response {
    metrics.on_storage_error();
    tracing::warn!(error = %message, "OTLP write: storage failed");
    status_answer(status, message)
}

/// An error answer as OTLP/HTTP asks: a protobuf `google.rpc.Status`.
fn status_answer(status: StatusCode, message: &str) -> Response {
    let code = match status {
        StatusCode::SERVICE_UNAVAILABLE => 14, // UNAVAILABLE
        StatusCode::PAYLOAD_TOO_LARGE => 8,    // RESOURCE_EXHAUSTED
        s if s.is_server_error() => 13,        // INTERNAL
        _ => 3,                                // INVALID_ARGUMENT
    };
    let body = wire::Status {
        code,
        message: message.to_string(),
    };
    protobuf(status, body.encode_to_vec())
}

fn protobuf(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, PROTOBUF)], body).into_response()
}
