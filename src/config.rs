//! Command-line flags and `TIMBALA_*` environment variables.
//!
//! Owns: every operator-facing setting, its default and its parsing (Prometheus-style
//! durations such as `15d` or `1h30m`, byte sizes such as `512MiB`). Calls only the
//! option types of the boxes it configures.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::cluster::membership::MembershipConfig;
use crate::fanout::FanoutOptions;
use crate::promql::EngineOptions;
use crate::replication::antientropy::AntiEntropyConfig;
use crate::replication::hint_window::HintLimits;
use crate::replication::rereplicate::RepairConfig;
use crate::storage::{Clock, TimeBounds, CLOCK_SKEW_ALLOWANCE_MS};
use crate::telemetry::LogFormat;
use crate::tsdb::TsdbOptions;
use crate::web::WebOptions;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "timbala",
    version,
    about = "Durable long-term storage for Prometheus metrics"
)]
pub struct Config {
    /// Directory holding the WAL and blocks.
    #[arg(long, env = "TIMBALA_DATA_DIRECTORY", default_value = "./data")]
    pub data_directory: PathBuf,

    /// Address the HTTP API listens on.
    #[arg(long, env = "TIMBALA_HTTP_BIND_ADDR", default_value = "0.0.0.0:9080")]
    pub http_bind_addr: SocketAddr,

    /// Address other nodes use to reach this node's HTTP API (default: the bind address).
    #[arg(long, env = "TIMBALA_HTTP_ADVERTISE_ADDR")]
    pub http_advertise_addr: Option<String>,

    /// Address the gossip protocol listens on (UDP). Used once clustering is enabled.
    #[arg(long, env = "TIMBALA_GOSSIP_BIND_ADDR", default_value = "0.0.0.0:7946")]
    pub gossip_bind_addr: SocketAddr,

    /// Address other nodes use to reach this node's gossip port (default: the bind address).
    #[arg(long, env = "TIMBALA_GOSSIP_ADVERTISE_ADDR")]
    pub gossip_advertise_addr: Option<String>,

    /// Gossip addresses of nodes to join (comma-separated, repeatable). None: a cluster
    /// of one.
    #[arg(long, env = "TIMBALA_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,

    /// File of cluster keys (base64, 32 bytes each, one a line): the first seals gossip
    /// and signs node-to-node requests, all are accepted. None: an open cluster.
    #[arg(long, env = "TIMBALA_CLUSTER_KEY_FILE")]
    pub cluster_key_file: Option<PathBuf>,

    /// Gossip timing: `lan` (production) or `fast` (tests: failures detected in about a
    /// second). Hidden: operators never need it.
    #[arg(
        long,
        env = "TIMBALA_GOSSIP_PROFILE",
        value_enum,
        default_value = "lan",
        hide = true
    )]
    pub gossip_profile: GossipProfile,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long, env = "TIMBALA_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log output format.
    #[arg(long, env = "TIMBALA_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Keep data newer than this (0s keeps everything).
    #[arg(long, env = "TIMBALA_RETENTION_TIME", default_value = "15d", value_parser = parse_duration)]
    pub retention_time: Duration,

    /// Delete the oldest blocks while the data exceeds this size (0 = no limit).
    #[arg(long, env = "TIMBALA_RETENTION_SIZE", default_value = "0", value_parser = parse_bytes)]
    pub retention_size: u64,

    /// Time span of the in-memory head before it is written as a block.
    #[arg(long, env = "TIMBALA_BLOCK_DURATION", default_value = "2h", value_parser = parse_duration)]
    pub block_duration: Duration,

    /// How far behind a series' newest sample an older sample is still accepted.
    #[arg(long, env = "TIMBALA_OUT_OF_ORDER_WINDOW", default_value = "1h", value_parser = parse_duration)]
    pub out_of_order_window: Duration,

    /// Most exemplars kept in memory on this node, all series together; the oldest
    /// make room for new ones (0: exemplars are not stored). Not kept across restarts.
    #[arg(long, env = "TIMBALA_EXEMPLARS_LIMIT", default_value_t = 100_000)]
    pub exemplars_limit: usize,

    /// Refuse samples further ahead of this node's clock than this (0s: no limit).
    #[arg(long, env = "TIMBALA_INGEST_MAX_FUTURE", default_value = "10m", value_parser = parse_duration)]
    pub ingest_max_future: Duration,

    /// Size of one write-ahead-log segment file.
    #[arg(long, env = "TIMBALA_WAL_SEGMENT_SIZE", default_value = "128MiB", value_parser = parse_bytes)]
    pub wal_segment_size: u64,

    /// Largest accepted remote-write request body (compressed).
    #[arg(long, env = "TIMBALA_WRITE_MAX_BODY_SIZE", default_value = "32MiB", value_parser = parse_bytes)]
    pub write_max_body_size: u64,

    /// Longest a query may run.
    #[arg(long, env = "TIMBALA_QUERY_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub query_timeout: Duration,

    /// How long a query waits for a node that has not answered once the nodes that did
    /// answer hold every series; then it answers without it, with a warning.
    #[arg(long, env = "TIMBALA_QUERY_PEER_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub query_peer_timeout: Duration,

    /// Queries (query, query_range) that take at least this long are logged, one line
    /// each with the query, its duration, samples and the nodes asked (0s: off).
    #[arg(long, env = "TIMBALA_QUERY_LOG_SLOW", default_value = "0s", value_parser = parse_duration)]
    pub query_log_slow: Duration,

    /// Most samples one query may hold in memory.
    #[arg(long, env = "TIMBALA_QUERY_MAX_SAMPLES", default_value = "50000000")]
    pub query_max_samples: usize,

    /// Queries evaluated at once; more wait.
    #[arg(long, env = "TIMBALA_QUERY_MAX_CONCURRENCY", default_value = "20")]
    pub query_max_concurrency: usize,

    /// Memory for cached range query results, reused when a query is repeated with a
    /// shifted window (0: no cache; ADR 0024).
    #[arg(long, env = "TIMBALA_QUERY_CACHE_MAX_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub query_cache_max_bytes: u64,

    /// Bytes per second a node sends when copying series to new owners after a node was
    /// removed or joined (re-replication); 0 = unthrottled.
    #[arg(long, env = "TIMBALA_REPAIR_RATE_LIMIT", default_value = "16MiB", value_parser = parse_bytes)]
    pub repair_rate_limit: u64,

    /// How long after an owner first missed a write hints are still written for it
    /// (Cassandra's max_hint_window); past it the owner's copy is left to anti-entropy
    /// and writes need a majority of real copies. 0s: no hints at all.
    #[arg(long, env = "TIMBALA_HINT_WINDOW", default_value = "3h", value_parser = parse_duration)]
    pub hint_window: Duration,

    /// Most disk space hints for one owner may take; past it, as past the window.
    /// 0: no hints at all.
    #[arg(long, env = "TIMBALA_HINT_MAX_BYTES_PER_TARGET", default_value = "1GiB", value_parser = parse_bytes)]
    pub hint_max_bytes_per_target: u64,
    /// How often this node compares the series it owns with their other owners and
    /// pulls what it lacks (anti-entropy; 0s: off). A first pass runs soon after start.
    #[arg(long, env = "TIMBALA_ANTI_ENTROPY_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub anti_entropy_interval: Duration,

    /// How far back an instant selector looks for a sample.
    #[arg(long, env = "TIMBALA_QUERY_LOOKBACK_DELTA", default_value = "5m", value_parser = parse_duration)]
    pub query_lookback_delta: Duration,

    /// Push the aggregations dashboards use down to the nodes holding the data, which
    /// send partial aggregates instead of series (ADR 0029). `false`: every query reads
    /// series and aggregates them on the node it entered.
    #[arg(long, env = "TIMBALA_QUERY_PUSHDOWN", default_value_t = true, action = clap::ArgAction::Set)]
    pub query_pushdown: bool,

    /// Prometheus's web configuration file (TLS, basic auth, headers); re-read when it
    /// changes and on SIGHUP. None: plain HTTP without authentication.
    #[arg(long, env = "TIMBALA_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,

    /// How often the web config file and the files it names are checked for changes
    /// (0s: only on SIGHUP).
    #[arg(long, env = "TIMBALA_WEB_CONFIG_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub web_config_reload_interval: Duration,

    /// CA certificates (PEM) that peers' HTTPS certificates are verified against when the
    /// web config enables TLS (default: the web config's client CA).
    #[arg(long, env = "TIMBALA_PEER_CA_FILE")]
    pub peer_ca_file: Option<PathBuf>,

    /// Enable the admin endpoints (delete_series, clean_tombstones, snapshot). Off, they
    /// answer 503 "admin APIs disabled", as in Prometheus.
    #[arg(long, env = "TIMBALA_WEB_ENABLE_ADMIN_API")]
    pub web_enable_admin_api: bool,
}

/// SWIM timing presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GossipProfile {
    Lan,
    Fast,
}

/// Parses a Prometheus duration (`1h30m`, `15d`, `250ms`, `0s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    // promql-parser refuses zero durations; flags use `0s` to mean "off".
    let number = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if !number.is_empty() && number.bytes().all(|b| b == b'0') {
        return Ok(Duration::ZERO);
    }
    promql_parser::util::parse_duration(s)
}

/// Parses a byte size: a plain number of bytes or one with a unit. Decimal units (KB, MB,
/// GB, TB) are powers of 1024 as in Prometheus's `--storage.tsdb.retention.size`; binary
/// units (KiB, MiB, GiB, TiB) are accepted too.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 512MiB"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "KB" | "KIB" | "K" => 10,
        "MB" | "MIB" | "M" => 20,
        "GB" | "GIB" | "G" => 30,
        "TB" | "TIB" | "T" => 40,
        other => return Err(format!("invalid size unit {other:?} in {s:?}")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// SWIM timings scaled down about tenfold: a killed node is declared down in about a
/// second. Costs more gossip traffic; meant for tests on one host.
fn apply_fast_gossip(mc: &mut MembershipConfig) {
    use std::num::NonZeroUsize;
    let swim = &mut mc.swim;
    swim.probe_period = Duration::from_millis(150);
    swim.probe_rtt = Duration::from_millis(60);
    swim.suspect_to_down_after = Duration::from_millis(600);
    swim.periodic_gossip = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(50),
        num_members: NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
    });
    swim.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(500),
        num_members: NonZeroUsize::MIN,
    });
    swim.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(500),
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    mc.settle = Duration::from_millis(300);
    mc.ring_sync_interval = Duration::from_millis(100);
    mc.announce_backoff_max = Duration::from_millis(400);
    mc.reconnect_interval = Duration::from_secs(1);
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Config {
    pub fn tsdb_options(&self) -> TsdbOptions {
        TsdbOptions {
            dir: self.data_directory.clone(),
            block_duration_ms: millis(self.block_duration),
            retention_ms: millis(self.retention_time),
            retention_bytes: self.retention_size,
            out_of_order_window_ms: millis(self.out_of_order_window),
            wal_segment_bytes: self.wal_segment_size,
            // Wider than the edge's by the tolerated clock skew: writes routed here by
            // another node were checked against that node's clock (ADR 0009).
            time_bounds: self.ingest_time_bounds().widened(CLOCK_SKEW_ALLOWANCE_MS),
            clock: Clock::system(),
            exemplars_limit: self.exemplars_limit,
        }
    }

    /// The time bounds applied where a client's write enters (ADR 0009): the future
    /// limit, and retention as the oldest accepted age.
    pub fn ingest_time_bounds(&self) -> TimeBounds {
        TimeBounds {
            max_future_ms: millis(self.ingest_max_future),
            max_age_ms: millis(self.retention_time),
        }
    }

    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            lookback_delta_ms: millis(self.query_lookback_delta),
            max_samples: self.query_max_samples,
            timeout: self.query_timeout,
            max_concurrent: self.query_max_concurrency.max(1),
            pushdown: self.query_pushdown,
            ..EngineOptions::default()
        }
    }

    pub fn fanout_options(&self) -> FanoutOptions {
        FanoutOptions {
            peer_timeout: self.query_peer_timeout,
            request_timeout: self.query_timeout,
        }
    }

    /// Where other nodes reach this node's HTTP API: the advertise flag, else the bind
    /// address. Membership replaces a wildcard bind's IP with the address it gossips
    /// from (`membership::http_advertise_for`).
    pub fn http_advertise(&self) -> String {
        match &self.http_advertise_addr {
            Some(addr) => addr.clone(),
            None => self.http_bind_addr.to_string(),
        }
    }

    /// Membership settings of this node.
    pub fn membership_config(&self) -> MembershipConfig {
        let mut mc = MembershipConfig::new(
            self.data_directory.clone(),
            self.gossip_bind_addr,
            self.http_advertise(),
        );
        mc.advertise_addr = self.gossip_advertise_addr.clone();
        mc.peers = self.peers.clone();
        if self.gossip_profile == GossipProfile::Fast {
            apply_fast_gossip(&mut mc);
        }
        mc
    }

    /// Re-replication settings of this node.
    pub fn repair_config(&self) -> RepairConfig {
        RepairConfig {
            data_dir: self.data_directory.clone(),
            rate_limit_bytes: self.repair_rate_limit,
            // Ring changes reach every node within a few gossip rounds, and a forward
            // gives up after 5 s: past this, new writes go by the new ring everywhere.
            grace: match self.gossip_profile {
                GossipProfile::Lan => Duration::from_secs(10),
                GossipProfile::Fast => Duration::from_secs(6),
            },
        }
    }

    /// The hint window and disk cap of hinted handoff.
    pub fn hint_limits(&self) -> HintLimits {
        HintLimits {
            window: self.hint_window,
            max_bytes_per_target: self.hint_max_bytes_per_target,
        }
    }

    /// Anti-entropy settings of this node (ADR 0016).
    pub fn anti_entropy_config(&self) -> AntiEntropyConfig {
        AntiEntropyConfig {
            interval: self.anti_entropy_interval,
            // Soon after start (a node rebuilt from its replicas starts pulling at once),
            // but after gossip has shown it the other members.
            first_delay: self.anti_entropy_interval.min(match self.gossip_profile {
                GossipProfile::Lan => Duration::from_secs(15),
                GossipProfile::Fast => Duration::from_secs(3),
            }),
            // Windows of at least an hour: few cells for long retention, and every block
            // (cut at the block duration) lies within one window.
            window_ms: millis(self.block_duration).max(3_600_000),
            rate_limit_bytes: self.repair_rate_limit,
        }
    }

    /// Settings of the web layer (TLS, authentication, peer TLS).
    pub fn web_options(&self) -> WebOptions {
        WebOptions {
            config_file: self.web_config_file.clone(),
            peer_ca_file: self.peer_ca_file.clone(),
            reload_interval: self.web_config_reload_interval,
            has_peers: !self.peers.is_empty(),
        }
    }

    /// Rejects combinations that parse but cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.block_duration < Duration::from_secs(60) {
            return Err("--block-duration must be at least 1m".into());
        }
        if self.query_peer_timeout.is_zero() {
            return Err("--query-peer-timeout must be positive".into());
        }
        if self.wal_segment_size < 64 << 10 {
            return Err("--wal-segment-size must be at least 64KiB".into());
        }
        Ok(())
    }

    /// The effective settings as (flag name, value) pairs for `/api/v1/status/flags`.
    pub fn flag_values(&self) -> Vec<(String, String)> {
        let d = |d: Duration| promql_parser::util::display_duration(&d);
        let opt = |o: &Option<String>| o.clone().unwrap_or_default();
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        [
            ("data-directory", self.data_directory.display().to_string()),
            ("http-bind-addr", self.http_bind_addr.to_string()),
            ("http-advertise-addr", opt(&self.http_advertise_addr)),
            ("gossip-bind-addr", self.gossip_bind_addr.to_string()),
            ("gossip-advertise-addr", opt(&self.gossip_advertise_addr)),
            ("peers", self.peers.join(",")),
            (
                "cluster-key-file",
                self.cluster_key_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            ("log-level", self.log_level.clone()),
            ("retention-time", d(self.retention_time)),
            ("retention-size", self.retention_size.to_string()),
            ("block-duration", d(self.block_duration)),
            ("out-of-order-window", d(self.out_of_order_window)),
            ("ingest-max-future", d(self.ingest_max_future)),
            ("exemplars-limit", self.exemplars_limit.to_string()),
            ("wal-segment-size", self.wal_segment_size.to_string()),
            ("write-max-body-size", self.write_max_body_size.to_string()),
            ("query-timeout", d(self.query_timeout)),
            ("query-peer-timeout", d(self.query_peer_timeout)),
            ("query-log-slow", d(self.query_log_slow)),
            ("query-max-samples", self.query_max_samples.to_string()),
            (
                "query-max-concurrency",
                self.query_max_concurrency.to_string(),
            ),
            ("query-lookback-delta", d(self.query_lookback_delta)),
            ("query-pushdown", self.query_pushdown.to_string()),
            (
                "query-cache-max-bytes",
                self.query_cache_max_bytes.to_string(),
            ),
            ("repair-rate-limit", self.repair_rate_limit.to_string()),
            ("hint-window", d(self.hint_window)),
            (
                "hint-max-bytes-per-target",
                self.hint_max_bytes_per_target.to_string(),
            ),
            ("anti-entropy-interval", d(self.anti_entropy_interval)),
            ("web-config-file", path(&self.web_config_file)),
            (
                "web-config-reload-interval",
                d(self.web_config_reload_interval),
            ),
            ("peer-ca-file", path(&self.peer_ca_file)),
            (
                "web-enable-admin-api",
                self.web_enable_admin_api.to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("512MB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert!(parse_bytes("12XB").is_err());
        assert!(parse_bytes("MB").is_err());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("15d"), Ok(Duration::from_secs(15 * 86400)));
        assert!(parse_duration("fortnight").is_err());
    }

    #[test]
    fn http_advertise_defaults_to_the_bind_address() {
        let c = Config::parse_from(["timbala"]);
        assert_eq!(c.http_advertise(), "0.0.0.0:9080");
        let c = Config::parse_from(["timbala", "--http-bind-addr", "10.1.2.3:9000"]);
        assert_eq!(c.http_advertise(), "10.1.2.3:9000");
        let c = Config::parse_from(["timbala", "--http-advertise-addr", "node-a:9080"]);
        assert_eq!(c.http_advertise(), "node-a:9080");
    }

    #[test]
    fn peers_are_accepted_and_reach_membership() {
        let c = Config::parse_from(["timbala", "--peers", "a:7946,b:7946"]);
        assert!(c.validate().is_ok());
        let mc = c.membership_config();
        assert_eq!(mc.peers, vec!["a:7946".to_string(), "b:7946".to_string()]);
        assert_eq!(mc.http_advertise_addr, "0.0.0.0:9080");
        let fast = Config::parse_from(["timbala", "--gossip-profile", "fast"]).membership_config();
        assert!(fast.swim.probe_period < mc.swim.probe_period);
    }

    #[test]
    fn ingest_time_bounds_follow_the_flags() {
        let c = Config::parse_from(["timbala"]);
        let edge = c.ingest_time_bounds();
        assert_eq!(edge.max_future_ms, 10 * 60_000);
        assert_eq!(edge.max_age_ms, 15 * 24 * 3_600_000);
        let tsdb = c.tsdb_options().time_bounds;
        assert_eq!(
            tsdb.max_future_ms,
            edge.max_future_ms + CLOCK_SKEW_ALLOWANCE_MS
        );
        let off = Config::parse_from([
            "timbala",
            "--ingest-max-future",
            "0s",
            "--retention-time",
            "0s",
        ]);
        assert_eq!(off.ingest_time_bounds(), TimeBounds::NONE);
        assert_eq!(off.tsdb_options().time_bounds, TimeBounds::NONE);
    }

    #[test]
    fn web_security_flags() {
        let c = Config::parse_from(["timbala"]);
        assert!(!c.web_enable_admin_api);
        let web = c.web_options();
        assert_eq!(web.config_file, None);
        assert_eq!(web.reload_interval, Duration::from_secs(2));
        let c = Config::parse_from([
            "timbala",
            "--web-config-file",
            "/etc/timbala/web.yml",
            "--peer-ca-file",
            "ca.crt",
            "--web-enable-admin-api",
            "--web-config-reload-interval",
            "0s",
            "--peers",
            "a:7946",
        ]);
        assert!(c.web_enable_admin_api);
        let web = c.web_options();
        assert_eq!(web.config_file, Some(PathBuf::from("/etc/timbala/web.yml")));
        assert_eq!(web.peer_ca_file, Some(PathBuf::from("ca.crt")));
        assert!(web.reload_interval.is_zero() && web.has_peers);
        let flags = c.flag_values();
        assert!(flags.contains(&("web-enable-admin-api".into(), "true".into())));
        assert!(flags.contains(&("web-config-file".into(), "/etc/timbala/web.yml".into())));
    }

    #[test]
    fn hint_limits_default_to_three_hours_and_one_gibibyte() {
        let c = Config::parse_from(["timbala"]);
        assert_eq!(c.hint_limits(), HintLimits::DEFAULT);
        let c = Config::parse_from([
            "timbala",
            "--hint-window",
            "5s",
            "--hint-max-bytes-per-target",
            "64KiB",
        ]);
        assert_eq!(
            c.hint_limits(),
            HintLimits {
                window: Duration::from_secs(5),
                max_bytes_per_target: 64 << 10,
            }
        );
        assert!(c
            .flag_values()
            .contains(&("hint-max-bytes-per-target".into(), "65536".into())));
        assert!(Config::try_parse_from(["timbala", "--hint-window", "soon"]).is_err());
        assert!(Config::try_parse_from(["timbala", "--hint-max-bytes-per-target", "-1"]).is_err());
    }

    #[test]
    fn defaults_match_the_documented_ports() {
        let c = Config::parse_from(["timbala"]);
        assert_eq!(c.http_bind_addr.port(), 9080);
        assert_eq!(c.gossip_bind_addr.port(), 7946);
        assert_eq!(c.data_directory, PathBuf::from("./data"));
        assert!(c.validate().is_ok());
    }
}
