//! Transport security of the HTTP edge, configured by Prometheus's web configuration file
//! (`--web-config-file`): TLS on the listener, basic authentication and rate limiting of
//! the public API, response headers, and TLS for the node's own requests to its peers.
//! ADR 0013 has the model.
//!
//! Owns: the live configuration (swapped whole on reload, so each request and connection
//! sees one consistent version), reloading when the file or a file it names changes or on
//! SIGHUP (a broken file is logged and the previous configuration kept), and the
//! submodules: `file` (format), `tls` (rustls configs), `auth` (middleware), `listener`
//! (accept loop). Called by `server` (wiring) and `peer` (client TLS config); calls no
//! other box.

pub mod auth;
pub mod file;
pub mod listener;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::client::WebPkiServerVerifier;
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

pub use file::{WebConfig, WebConfigError};

/// The operator's settings for the web layer.
#[derive(Clone, Debug, Default)]
pub struct WebOptions {
    /// `--web-config-file`; None: plain HTTP, no authentication.
    pub config_file: Option<PathBuf>,
    /// `--peer-ca-file`: the CA peers' certificates are verified against (default: the
    /// web config's client CA).
    pub peer_ca_file: Option<PathBuf>,
    /// How often the files are checked for changes; zero: only on SIGHUP.
    pub reload_interval: Duration,
    /// Whether `--peers` names other nodes (TLS then needs a CA to verify them with).
    pub has_peers: bool,
}

/// Self-metrics of the web layer.
#[derive(Clone, Default)]
pub struct WebMetrics {
    pub reload_successful: Gauge,
    pub reload_success_timestamp: Gauge,
    pub tls_handshake_failures: Counter,
    pub basic_auth_failures: Counter,
}

impl WebMetrics {
    fn register(registry: &mut Registry) -> WebMetrics {
        let m = WebMetrics::default();
        let r = registry.sub_registry_with_prefix("timbala_web");
        r.register(
            "config_last_reload_successful",
            "Whether the last (re)load of the web config file succeeded",
            m.reload_successful.clone(),
        );
        r.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful (re)load of the web config file",
            m.reload_success_timestamp.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "Connections dropped because the TLS handshake failed or timed out",
            m.tls_handshake_failures.clone(),
        );
        r.register(
            "basic_auth_failures",
            "Requests refused with 401: missing, unknown or wrong basic-auth credentials",
            m.basic_auth_failures.clone(),
        );
        m
    }
}

/// One consistent version of the configuration, as built from the files.
pub struct Active {
    pub config: WebConfig,
    headers: Vec<(HeaderName, HeaderValue)>,
    tls: Option<tls::TlsMaterial>,
    rate_limiter: Option<auth::TokenBucket>,
}

impl Active {
    /// Builds everything from the files. `tls_fixed`: whether TLS was on at start (it
    /// cannot be switched without a restart: open listeners and peers' URLs depend on it).
    fn build(options: &WebOptions, tls_fixed: Option<bool>) -> Result<Active, WebConfigError> {
        let config = match &options.config_file {
            Some(path) => WebConfig::load(path)?,
            None => WebConfig::parse("", Path::new(""))?,
        };
        if let Some(was_on) = tls_fixed {
            if config.tls.is_some() != was_on {
                return Err(WebConfigError::Invalid(
                    "turning TLS on or off needs a restart; keeping the previous configuration"
                        .into(),
                ));
            }
        }
        let peer_ca = options.peer_ca_file.clone().map(file::PemSource::File);
        let tls = match &config.tls {
            None => None,
            Some(settings) => {
                let material = tls::build(settings, peer_ca.as_ref())?;
                if material.peer_verifier.is_none() && options.has_peers {
                    return Err(WebConfigError::Invalid(
                        "TLS is on, so peers are reached over https and verified: set \
                         --peer-ca-file (or client_ca_file in the web config)"
                            .into(),
                    ));
                }
                Some(material)
            }
        };
        Ok(Active {
            headers: auth::header_values(&config.headers),
            rate_limiter: config
                .rate_limit
                .map(|limit| auth::TokenBucket::new(limit, Instant::now())),
            tls,
            config,
        })
    }

    /// Files whose change triggers a reload.
    fn watched_files(&self, options: &WebOptions) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = options.config_file.iter().cloned().collect();
        files.extend(self.config.referenced_files());
        files.extend(options.peer_ca_file.iter().cloned());
        files
    }
}

/// The live web security state. Cheap to clone.
#[derive(Clone)]
pub struct WebSecurity {
    inner: Arc<Inner>,
}

struct Inner {
    options: WebOptions,
    tls_on: bool,
    active: RwLock<Arc<Active>>,
    /// What the watched files looked like when last read (changed or not, good or bad).
    seen: Mutex<Stamps>,
    passwords: auth::PasswordCache,
    metrics: WebMetrics,
}

impl std::fmt::Debug for WebSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSecurity")
            .field("config_file", &self.inner.options.config_file)
            .field("tls", &self.inner.tls_on)
            .finish()
    }
}

impl WebSecurity {
    /// Reads the configuration at start-up; an error stops the node.
    pub fn load(
        options: WebOptions,
        registry: &mut Registry,
    ) -> Result<WebSecurity, WebConfigError> {
        let metrics = WebMetrics::register(registry);
        let (active, seen) = read_files(&options, None, &initial_watch_list(&options));
        let active = active?;
        metrics.reload_successful.set(1);
        metrics.reload_success_timestamp.set(unix_seconds());
        if let Some(path) = &options.config_file {
            tracing::info!(
                file = %path.display(),
                tls = active.tls.is_some(),
                users = active.config.users.len(),
                "web config loaded"
            );
        }
        Ok(WebSecurity {
            inner: Arc::new(Inner {
                tls_on: active.tls.is_some(),
                active: RwLock::new(Arc::new(active)),
                seen: Mutex::new(seen),
                passwords: auth::PasswordCache::default(),
                metrics,
                options,
            }),
        })
    }

    /// The configuration of the moment.
    pub fn active(&self) -> Arc<Active> {
        self.inner
            .active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn tls_enabled(&self) -> bool {
        self.inner.tls_on
    }

    /// The listener's TLS configuration of the moment; None: plain HTTP.
    pub fn server_tls(&self) -> Option<Arc<ServerConfig>> {
        self.active().tls.as_ref().map(|t| t.server.clone())
    }

    /// TLS configuration for requests to peers; None when TLS is off (plain http).
    pub fn peer_client_tls(&self) -> Option<rustls::ClientConfig> {
        self.inner
            .tls_on
            .then(|| tls::peer_client_config(Arc::new(self.clone())))
    }

    pub fn metrics(&self) -> &WebMetrics {
        &self.inner.metrics
    }

    fn passwords(&self) -> &auth::PasswordCache {
        &self.inner.passwords
    }

    /// Reads the files again. On error the previous configuration stays in force.
    pub fn reload(&self) -> Result<(), WebConfigError> {
        let inner = &self.inner;
        let (result, seen) = read_files(&inner.options, Some(inner.tls_on), &self.watched());
        *inner.seen.lock().unwrap_or_else(|e| e.into_inner()) = seen;
        match result {
            Ok(active) => {
                *inner.active.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(active);
                inner.metrics.reload_successful.set(1);
                inner.metrics.reload_success_timestamp.set(unix_seconds());
                Ok(())
            }
            Err(e) => {
                inner.metrics.reload_successful.set(0);
                Err(e)
            }
        }
    }

    fn watched(&self) -> Vec<PathBuf> {
        self.inner
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(path, _)| path.clone())
            .collect()
    }

    /// Whether a watched file changed since it was last read.
    fn files_changed(&self) -> bool {
        let seen = self
            .inner
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        seen.iter()
            .any(|(path, stamp)| FileStamp::of(path) != *stamp)
    }

    /// Reloads when the files change (checked every `reload_interval`) and on SIGHUP.
    /// Does nothing without a config file.
    pub fn spawn_reloader(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.inner.options.config_file.as_ref()?;
        let web = self.clone();
        Some(tokio::spawn(async move { web.reload_loop().await }))
    }

    async fn reload_loop(self) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; web config reloads on change only");
                None
            }
        };
        let interval = self.inner.options.reload_interval;
        loop {
            let sighup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let tick = async {
                if interval.is_zero() {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep(interval).await
                }
            };
            let reason = tokio::select! {
                _ = sighup => "SIGHUP",
                _ = tick => {
                    let web = self.clone();
                    let changed = tokio::task::spawn_blocking(move || web.files_changed())
                        .await
                        .unwrap_or(false);
                    if !changed {
                        continue;
                    }
                    "file changed"
                }
            };
            let web = self.clone();
            let outcome = tokio::task::spawn_blocking(move || web.reload()).await;
            match outcome {
                Ok(Ok(())) => tracing::info!(reason, "web config reloaded"),
                Ok(Err(e)) => {
                    tracing::error!(reason, error = %e, "web config reload failed; keeping the previous configuration")
                }
                Err(e) => tracing::error!(error = %e, "web config reload task failed"),
            }
        }
    }
}

impl tls::PeerMaterialSource for WebSecurity {
    fn peer_verifier(&self) -> Option<Arc<WebPkiServerVerifier>> {
        self.active().tls.as_ref()?.peer_verifier.clone()
    }

    fn own_key(&self) -> Option<Arc<CertifiedKey>> {
        Some(self.active().tls.as_ref()?.own_key.clone())
    }
}

fn initial_watch_list(options: &WebOptions) -> Vec<PathBuf> {
    options
        .config_file
        .iter()
        .chain(options.peer_ca_file.iter())
        .cloned()
        .collect()
}

/// Builds the configuration and says what the watched files looked like. The stamps of
/// files watched so far are taken before reading, so a change made during the read is
/// seen at the next check; a file named for the first time is stamped after.
type Stamps = Vec<(PathBuf, Option<FileStamp>)>;

fn read_files(
    options: &WebOptions,
    tls_fixed: Option<bool>,
    watched: &[PathBuf],
) -> (Result<Active, WebConfigError>, Stamps) {
    let before = stamps(watched);
    match Active::build(options, tls_fixed) {
        Ok(active) => {
            let seen = active
                .watched_files(options)
                .into_iter()
                .map(|path| match before.iter().find(|(p, _)| *p == path) {
                    Some((_, stamp)) => (path, *stamp),
                    None => {
                        let stamp = FileStamp::of(&path);
                        (path, stamp)
                    }
                })
                .collect();
            (Ok(active), seen)
        }
        Err(e) => (Err(e), before),
    }
}

/// What identifies a version of a file without reading it: replaced files (editors,
/// certificate renewers, Kubernetes secrets) change inode; rewritten ones mtime or size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        })
    }
}

fn stamps(paths: &[PathBuf]) -> Stamps {
    paths
        .iter()
        .map(|path| (path.clone(), FileStamp::of(path)))
        .collect()
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
