//! Liveness, readiness and the self-metrics endpoint.
//!
//! `/-/healthy` answers as long as the process serves HTTP; `/-/ready` only once storage
//! is open (WAL replayed) and while it accepts writes: 503 while the WAL cannot write
//! (disk full, I/O error), 200 again once it can (ADR 0010); `/metrics` renders the
//! registry in the text format.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/-/healthy", get(healthy).head(healthy))
        .route("/-/ready", get(ready).head(ready))
        .route("/metrics", get(metrics))
}

async fn healthy() -> &'static str {
    "Timbala is Healthy.\n"
}

async fn ready(State(state): State<AppState>) -> Response {
    let Ok(services) = state.services() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n").into_response();
    };
    // A failing WAL gets a recovery attempt here too, so a balancer's probes bring the
    // node back as soon as the disk takes data again.
    match services.tsdb.writable().await {
        Ok(()) => (StatusCode::OK, "Timbala is Ready.\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Service Unavailable: this node cannot accept writes: {e}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, state.registry()) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
