//! Wiring of one node: metrics registry, web security, storage, cluster membership,
//! engine and HTTP server (public routes behind the web config's guard, internal ones
//! beside them; ADR 0013), and the orderly shutdown on SIGTERM (leave the cluster, stop
//! accepting, finish in-flight requests, close the WAL).
//!
//! Owns: process lifecycle, including holding the data directory lock (`dirlock`) for
//! the whole run. Calls every box's constructor; no box calls it.

use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::admin::AdminApi;
use crate::api::{self, AppState, ClusterServices, NodeServices, ServerInfo};
use crate::cluster::keys::ClusterKeys;
use crate::cluster::membership::{ClusterMetrics, Membership};
use crate::config::Config;
use crate::dirlock::DirLock;
use crate::fanout::{FanoutMetrics, FanoutStorage, Split};
use crate::peer::{PeerClient, PeerMetrics};
use crate::promql::Engine;
use crate::replication::antientropy::{AntiEntropy, AntiEntropyMetrics, AntiEntropyProgress};
use crate::replication::handoff::Handoff;
use crate::replication::hints::{HandoffMetrics, HintStore};
use crate::replication::read_repair::{ReadRepair, ReadRepairMetrics};
use crate::replication::rereplicate::{RepairMetrics, RepairProgress, Repairer};
use crate::replication::ReplicatingStorage;
use crate::storage::Storage;
use crate::telemetry::{self, http::HttpMetrics};
use crate::tsdb::{Tsdb, TsdbMetrics};
use crate::web::{self, WebSecurity};

/// Runs a node until SIGTERM or SIGINT. Returns an error message on a fatal failure.
pub async fn run(config: Config) -> Result<(), String> {
    // First of all: nothing in the directory is read or written without the lock.
    let _data_directory_lock =
        DirLock::acquire(&config.data_directory).map_err(|e| e.to_string())?;
    let mut registry = Registry::default();
    telemetry::register_process_metrics(&mut registry);
    let http_metrics = HttpMetrics::register(&mut registry);
    let tsdb_metrics = TsdbMetrics::register(&mut registry);
    let cluster_metrics = ClusterMetrics::register(&mut registry);
    let peer_metrics = PeerMetrics::register(&mut registry);
    let handoff_metrics = HandoffMetrics::register(&mut registry);
    let fanout_metrics = FanoutMetrics::register(&mut registry);
    let repair_metrics = RepairMetrics::register(&mut registry);
    let anti_entropy_metrics = AntiEntropyMetrics::register(&mut registry);
    let read_repair_metrics = ReadRepairMetrics::register(&mut registry);
    let web_security = WebSecurity::load(config.web_options(), &mut registry)
        .map_err(|e| format!("--web-config-file: {e}"))?;

    let cluster_keys = match &config.cluster_key_file {
        Some(path) => Some(
            ClusterKeys::load(path)
                .map_err(|e| format!("--cluster-key-file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let info = ServerInfo {
        start_time: SystemTime::now(),
        flags: config.flag_values(),
        data_dir: config.data_directory.display().to_string(),
        max_write_body_bytes: usize::try_from(config.write_max_body_size).unwrap_or(usize::MAX),
        ingest_time_bounds: config.ingest_time_bounds(),
        cluster_keys: cluster_keys.clone(),
        query_cache_max_bytes: usize::try_from(config.query_cache_max_bytes).unwrap_or(usize::MAX),
        query_log_slow: Some(config.query_log_slow).filter(|d| !d.is_zero()),
    };
    let admin = AdminApi::new(config.web_enable_admin_api);
    let state = AppState::new(Engine::new(config.engine_options()), registry, info, admin);

    let listener = TcpListener::bind(config.http_bind_addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.http_bind_addr))?;
    tracing::info!(
        addr = %config.http_bind_addr,
        tls = web_security.tls_enabled(),
        "HTTP API listening"
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let app = http_app(state.clone(), &web_security, http_metrics);
    let server = tokio::spawn(web::listener::serve(
        listener,
        app,
        web_security.clone(),
        shutdown_rx,
    ));
    let reload_task = web_security.spawn_reloader();

    let tsdb = open_storage(&config, tsdb_metrics).await?;
    let mut membership_config = config.membership_config();
    membership_config.metrics = cluster_metrics;
    membership_config.keys = cluster_keys.clone();
    let (membership, membership_task) = Membership::start(membership_config)
        .await
        .map_err(|e| format!("cannot start cluster membership: {e}"))?;
    let hints = HintStore::open(
        &config.data_directory,
        handoff_metrics,
        config.hint_limits(),
    )
    .map_err(|e| format!("cannot open the hint directory: {e}"))?;
    let hints = Arc::new(hints);
    let client = PeerClient::new(peer_metrics, cluster_keys, web_security.peer_client_tls());
    let local: Arc<dyn Storage> = Arc::new(tsdb.clone());
    let writes = ReplicatingStorage::new(
        local.clone(),
        membership.clone(),
        client.clone(),
        hints.clone(),
    );
    let read_repair = ReadRepair::start(membership.clone(), client.clone(), read_repair_metrics);
    let reads = FanoutStorage::new(
        local,
        membership.clone(),
        client.clone(),
        hints.clone(),
        read_repair,
        config.fanout_options(),
        fanout_metrics,
    );
    let handoff_task = Handoff {
        hints: hints.clone(),
        membership: membership.clone(),
        client: client.clone(),
        local: Arc::new(tsdb.clone()),
    }
    .spawn();
    let repair = Arc::new(RepairProgress::default());
    let repair_task = Repairer {
        config: config.repair_config(),
        local: Arc::new(tsdb.clone()),
        membership: membership.clone(),
        client: client.clone(),
        metrics: repair_metrics,
        progress: repair.clone(),
    }
    .spawn();
    let anti_entropy = Arc::new(AntiEntropyProgress::default());
    let anti_entropy_task = AntiEntropy {
        config: config.anti_entropy_config(),
        tsdb: tsdb.clone(),
        membership: membership.clone(),
        client: client.clone(),
        metrics: anti_entropy_metrics.clone(),
        progress: anti_entropy.clone(),
    }
    .spawn();
    state.set_ready(NodeServices {
        storage: Arc::new(Split {
            writes: Arc::new(writes),
            reads: Arc::new(reads.clone()),
        }),
        fanout: reads,
        tsdb: tsdb.clone(),
        cluster: ClusterServices {
            membership: membership.clone(),
            hints,
            repair,
            anti_entropy,
            anti_entropy_metrics,
            client,
        },
    });
    tracing::info!(dir = %config.data_directory.display(), "storage open; node ready");

    wait_for_signal().await;
    tracing::info!("shutting down: leaving the cluster");
    membership.leave().await;
    if let Err(e) = membership_task.await {
        tracing::warn!(error = %e, "membership task failed");
    }
    handoff_task.abort();
    repair_task.abort();
    if let Some(task) = anti_entropy_task {
        task.abort();
    }
    if let Some(task) = reload_task {
        task.abort();
    }
    tracing::info!("shutting down: draining HTTP requests");
    let _ = shutdown_tx.send(true);
    if let Err(e) = server.await {
        tracing::error!(error = %e, "HTTP server task failed");
    }
    close_storage(tsdb).await
}

/// The HTTP application: the public routes behind the web config's guard (rate limit,
/// basic auth), the internal routes beside them (guarded by the cluster credential, not
/// users' passwords), configured headers on every answer, then trace ids and metrics.
fn http_app(state: AppState, web_security: &WebSecurity, metrics: HttpMetrics) -> axum::Router {
    use axum::middleware::{from_fn, from_fn_with_state};
    let api::ApiRouters { public, internal } = api::routers(state);
    public
        .layer(from_fn_with_state(
            web_security.clone(),
            web::auth::guard_public,
        ))
        .merge(internal)
        .layer(from_fn_with_state(
            web_security.clone(),
            web::auth::add_headers,
        ))
        .layer(from_fn(crate::peer::edge_trace))
        .layer(from_fn_with_state(metrics, telemetry::http::track))
}

async fn open_storage(config: &Config, metrics: TsdbMetrics) -> Result<Tsdb, String> {
    let opts = config.tsdb_options();
    tokio::task::spawn_blocking(move || Tsdb::open(opts, metrics))
        .await
        .map_err(|e| format!("opening storage panicked: {e}"))?
        .map_err(|e| {
            format!(
                "cannot open storage in {}: {e}",
                config.data_directory.display()
            )
        })
}

async fn close_storage(tsdb: Tsdb) -> Result<(), String> {
    tokio::task::spawn_blocking(move || tsdb.close())
        .await
        .map_err(|e| format!("closing storage panicked: {e}"))?
        .map_err(|e| format!("closing storage: {e}"))?;
    tracing::info!("storage closed cleanly");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = int.recv() => tracing::info!("received SIGINT"),
    }
}
