//! Self-monitoring: the metrics registry's process-wide parts, HTTP metrics and logs.
//!
//! Owns: `timbala_build_info`, the process collector (CPU, memory, file descriptors),
//! HTTP request metrics (a tower middleware), and log set-up. Every other box registers
//! its own metrics struct with the registry at start-up; nothing here knows their names.
//! Calls no other box.

pub mod http;
pub mod process;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The version this binary reports everywhere (build info, /api/v1/status/buildinfo).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Registers the process-wide metrics: build info and the process collector.
pub fn register_process_metrics(registry: &mut Registry) {
    let build_info = Family::<Vec<(String, String)>, Gauge>::default();
    build_info
        .get_or_create(&vec![
            ("version".to_string(), VERSION.to_string()),
            (
                "revision".to_string(),
                env!("TIMBALA_BUILD_REVISION").to_string(),
            ),
            (
                "branch".to_string(),
                env!("TIMBALA_BUILD_BRANCH").to_string(),
            ),
            (
                "rustc".to_string(),
                env!("TIMBALA_BUILD_RUSTC_VERSION").to_string(),
            ),
        ])
        .set(1);
    registry.register(
        "timbala_build_info",
        "Build information of this timbala binary; always 1",
        build_info,
    );
    registry.register_collector(Box::new(process::ProcessCollector::new()));
}

/// Stderr for the logger, where a failed write counts as written. tracing-subscriber
/// reports a failed write with `eprintln!`, which panics once stderr is closed (the
/// reader of the log pipe went away); a node must carry on without its log.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global structured logger. `level` is a tracing filter ("info",
/// "timbala=debug,info", ...); `RUST_LOG` overrides it when set.
pub fn init_logging(level: &str, format: LogFormat) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(env),
        _ => EnvFilter::try_new(level),
    }
    .map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr);
    let result = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| format!("cannot install logger: {e}"))
}
