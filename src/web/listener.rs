//! The HTTP listener's accept loop: plain HTTP, or TLS with the configuration of the
//! moment (a reload reaches every connection accepted after it), HTTP/1.1 on top, and a
//! graceful stop that lets in-flight requests finish.
//!
//! Owns: accepting, the per-connection TLS handshake (bounded in time, on the
//! connection's own task so a slow client cannot hold up the others), Go's answer to a
//! plain HTTP request on the TLS port, and hyper's per-connection limits. Calls hyper,
//! tokio-rustls and the live `WebSecurity`.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::WebSecurity;

/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client may take to send a request's headers (hyper's header timeout).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Go's answer when a plain HTTP request reaches an HTTPS server.
const PLAIN_HTTP_ON_TLS_PORT: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// Serves `app` on `listener` until `stop` turns true, then waits for open connections
/// to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    web: WebSecurity,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((tcp, _remote)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve_connection(
                    tcp,
                    app.clone(),
                    web.clone(),
                    graceful.watcher(),
                ));
            }
            // Per-connection failures (reset before accept) are the client's problem.
            Err(e) if is_connection_error(&e) => {}
            // Out of file descriptors and the like: back off instead of spinning.
            Err(e) => {
                tracing::error!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

async fn serve_connection(tcp: TcpStream, app: Router, web: WebSecurity, watcher: Watcher) {
    let Some(server_tls) = web.server_tls() else {
        serve_http(TokioIo::new(tcp), app, watcher).await;
        return;
    };
    let handshake = async {
        if looks_like_plain_http(&tcp).await {
            let mut tcp = tcp;
            let _ = tcp.write_all(PLAIN_HTTP_ON_TLS_PORT).await;
            let _ = tcp.shutdown().await;
            return Err("plain HTTP request on the TLS port".to_string());
        }
        tokio_rustls::TlsAcceptor::from(server_tls)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => serve_http(TokioIo::new(tls), app, watcher).await,
        Ok(Err(reason)) => {
            web.metrics().tls_handshake_failures.inc();
            tracing::debug!(%reason, "TLS handshake failed");
        }
        Err(_) => {
            web.metrics().tls_handshake_failures.inc();
            tracing::debug!("TLS handshake timed out");
        }
    }
}

/// Whether the first bytes are an HTTP request line rather than a TLS record (as Go's
/// server checks, so a client with the wrong scheme gets a readable answer).
async fn looks_like_plain_http(tcp: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(1) => first[0] != TLS_HANDSHAKE_RECORD && first[0].is_ascii_uppercase(),
        _ => false,
    }
}

async fn serve_http<I>(io: I, app: Router, watcher: Watcher)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = http.serve_connection(io, TowerToHyperService::new(app));
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}
