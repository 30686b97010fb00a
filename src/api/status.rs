//! Status endpoints of the Prometheus HTTP API, in Prometheus's JSON shapes.
//!
//! Owns: `/api/v1/status/buildinfo`, `/api/v1/status/runtimeinfo`,
//! `/api/v1/status/flags`, `/api/v1/status/tsdb`, and the rule endpoints `/api/v1/rules`
//! and `/api/v1/alerts` (Timbala evaluates no rules, so their lists are empty).
//! Calls `AppState` (server info; the fan-out storage, which counts the cluster's
//! head for `tsdb`, and `tsdb::cardinality` to merge the counts, ADR 0022), `fanout::notes`
//! for that answer's warnings, and `json` for time formatting.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use super::params::FormParams;
use super::{json, success, ApiError, AppState, ServerInfo};
use crate::fanout::notes;
use crate::storage::StorageError;
use crate::tsdb::{cardinality, TsdbStats};

/// Default length of each `/api/v1/status/tsdb` top list, and the largest allowed.
const DEFAULT_TSDB_LIMIT: usize = 10;
const MAX_TSDB_LIMIT: usize = 10_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/status/buildinfo", get(build_info))
        .route("/api/v1/status/runtimeinfo", get(runtime_info))
        .route("/api/v1/status/flags", get(flags))
        .route("/api/v1/status/tsdb", get(tsdb_status))
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/alerts", get(alerts))
}

/// Prometheus's `PrometheusVersion`. `build.rs` fills the facts from git and rustc (or
/// from `TIMBALA_BUILD_*` set by a packager); one it cannot find reads "unknown".
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct BuildInfo {
    version: &'static str,
    revision: &'static str,
    branch: &'static str,
    build_user: &'static str,
    build_date: &'static str,
    go_version: &'static str,
}

const BUILD_INFO: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    revision: env!("TIMBALA_BUILD_REVISION"),
    branch: env!("TIMBALA_BUILD_BRANCH"),
    build_user: env!("TIMBALA_BUILD_USER"),
    build_date: env!("TIMBALA_BUILD_DATE"),
    // The field names the toolchain; for Timbala that is rustc's version.
    go_version: env!("TIMBALA_BUILD_RUSTC_VERSION"),
};

async fn build_info() -> Response {
    success(BUILD_INFO, &[], &[])
}

/// Prometheus's `RuntimeInfo`. The Go runtime fields carry their Rust equivalents:
/// goroutines are the tokio runtime's live tasks, GOMAXPROCS its worker threads.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct RuntimeInfo {
    start_time: String,
    #[serde(rename = "CWD")]
    cwd: String,
    hostname: String,
    server_time: String,
    reload_config_success: bool,
    last_config_time: String,
    corruption_count: i64,
    goroutine_count: usize,
    #[serde(rename = "GOMAXPROCS")]
    gomaxprocs: usize,
    /// Go reports math.MaxInt64 when no soft memory limit is set; Timbala sets none.
    #[serde(rename = "GOMEMLIMIT")]
    gomemlimit: i64,
    #[serde(rename = "GOGC")]
    gogc: &'static str,
    #[serde(rename = "GODEBUG")]
    godebug: &'static str,
    storage_retention: String,
}

async fn runtime_info(State(state): State<AppState>) -> Response {
    let info = state.info();
    let start_time = json::format_rfc3339_nano(info.start_time);
    let runtime = tokio::runtime::Handle::current().metrics();
    let body = RuntimeInfo {
        // Configuration comes from flags read once at start, so it was loaded then.
        last_config_time: start_time.clone(),
        start_time,
        cwd: current_dir(),
        hostname: hostname(),
        server_time: json::format_rfc3339_nano(std::time::SystemTime::now()),
        reload_config_success: true,
        // The TSDB does not count repaired WAL corruptions (yet): none are reported.
        corruption_count: 0,
        goroutine_count: runtime.num_alive_tasks(),
        gomaxprocs: runtime.num_workers(),
        gomemlimit: i64::MAX,
        gogc: "",
        godebug: "",
        storage_retention: storage_retention(info),
    };
    success(body, &[], &[])
}

fn current_dir() -> String {
    std::env::current_dir().map_or_else(
        |_| "<error retrieving current working directory>".to_string(),
        |d| d.display().to_string(),
    )
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// Prometheus's `storageRetention`: the time limit, the size limit, or both joined by
/// " or ", from the `retention-time` and `retention-size` flags when set and non-zero.
/// A size in plain bytes is written as Prometheus writes sizes (`512MiB`).
fn storage_retention(info: &ServerInfo) -> String {
    let flag = |name: &str| {
        info.flags
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !is_zero_limit(v))
    };
    let size = flag("retention-size").map(|v| match v.parse::<u64>() {
        Ok(bytes) => format_base2_bytes(bytes),
        Err(_) => v.to_string(),
    });
    let time = flag("retention-time").map(str::to_string);
    let limits: Vec<String> = [time, size].into_iter().flatten().collect();
    limits.join(" or ")
}

/// Go's `units.Base2Bytes` text: each non-zero 1024-power part, largest first
/// (`536870912` is `512MiB`, `1610612736` is `1GiB512MiB`, `0` is `0B`).
fn format_base2_bytes(mut bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes == 0 {
        return "0B".to_string();
    }
    let mut parts = Vec::new();
    for unit in UNITS {
        if bytes % 1024 != 0 {
            parts.push(format!("{}{unit}", bytes % 1024));
        }
        bytes /= 1024;
        if bytes == 0 {
            break;
        }
    }
    parts.reverse();
    parts.concat()
}

/// "", "0", "0s", "0B": no limit.
fn is_zero_limit(value: &str) -> bool {
    value.chars().filter(char::is_ascii_digit).all(|c| c == '0')
}

/// The effective flags as a JSON object sorted by name (Go's map encoding).
async fn flags(State(state): State<AppState>) -> Response {
    let map: BTreeMap<&str, &str> = state
        .info()
        .flags
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    success(map, &[], &[])
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct HeadStats {
    num_series: u64,
    num_label_pairs: u64,
    chunk_count: u64,
    min_time: i64,
    max_time: i64,
}

#[derive(Serialize, Debug, PartialEq)]
struct TsdbStat {
    name: String,
    value: u64,
}

/// Prometheus's `TSDBStatus`.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct TsdbStatus {
    head_stats: HeadStats,
    series_count_by_metric_name: Vec<TsdbStat>,
    label_value_count_by_label_name: Vec<TsdbStat>,
    memory_in_bytes_by_label_name: Vec<TsdbStat>,
    series_count_by_label_value_pair: Vec<TsdbStat>,
}

impl From<TsdbStats> for TsdbStatus {
    fn from(s: TsdbStats) -> Self {
        let list = |pairs: Vec<(String, u64)>| {
            pairs
                .into_iter()
                .map(|(name, value)| TsdbStat { name, value })
                .collect()
        };
        TsdbStatus {
            head_stats: HeadStats {
                num_series: s.num_series,
                num_label_pairs: s.num_label_pairs,
                chunk_count: s.chunk_count,
                min_time: s.min_time,
                max_time: s.max_time,
            },
            series_count_by_metric_name: list(s.series_count_by_metric_name),
            label_value_count_by_label_name: list(s.label_value_count_by_label_name),
            memory_in_bytes_by_label_name: list(s.memory_in_bytes_by_label_name),
            series_count_by_label_value_pair: list(s.series_count_by_label_value_pair),
        }
    }
}

/// The `limit` of `/api/v1/status/tsdb`: 1 to 10,000, default 10.
fn tsdb_limit(params: &FormParams) -> Result<usize, ApiError> {
    let value = params.value("limit");
    if value.is_empty() {
        return Ok(DEFAULT_TSDB_LIMIT);
    }
    let limit = value
        .parse::<i64>()
        .ok()
        .filter(|&l| l >= 1)
        .ok_or_else(|| ApiError::bad_data("limit must be a positive number"))?;
    match usize::try_from(limit) {
        Ok(l) if l <= MAX_TSDB_LIMIT => Ok(l),
        _ => Err(ApiError::bad_data(format!(
            "limit must not exceed {MAX_TSDB_LIMIT}"
        ))),
    }
}

/// The cluster's head statistics: every live node counts the series it is the first
/// live owner of (ADR 0022) and the parts are merged, so each series counts once. A node
/// that did not answer is named in `warnings` (its series are not counted); with as
/// many nodes missing as a series has replicas the answer is 503 `unavailable`.
async fn tsdb_status(
    State(state): State<AppState>,
    params: FormParams,
) -> Result<Response, ApiError> {
    let limit = tsdb_limit(&params)?;
    let services = state.services()?;
    let (tsdb, fanout) = (services.tsdb.clone(), services.fanout.clone());
    let (counted, notes) = notes::collect(fanout.cardinality(tsdb)).await;
    let counted = counted.map_err(|e| match e {
        StorageError::Unavailable(_) => ApiError::unavailable(e.to_string()),
        other => ApiError::internal(format!("error gathering TSDB statistics: {other}")),
    })?;
    let mut warnings = notes.warnings;
    warnings.extend(counted.not_counted.iter().map(|node| {
        format!("partial statistics: node {node} did not answer; the series it counts are missing")
    }));
    // Merging walks every label pair of the cluster: keep that off the async workers.
    let parts = counted.parts;
    let stats = tokio::task::spawn_blocking(move || cardinality::merge(parts, limit))
        .await
        .map_err(|e| ApiError::internal(format!("error gathering TSDB statistics: {e}")))?;
    Ok(success(TsdbStatus::from(stats), &warnings, &notes.infos))
}

#[derive(Serialize)]
struct RuleDiscovery {
    groups: [(); 0],
}

#[derive(Serialize)]
struct AlertDiscovery {
    alerts: [(); 0],
}

/// Recording and alerting rules are out of scope: there are never any groups.
async fn rules() -> Response {
    success(RuleDiscovery { groups: [] }, &[], &[])
}

async fn alerts() -> Response {
    success(AlertDiscovery { alerts: [] }, &[], &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn info(flags: &[(&str, &str)]) -> ServerInfo {
        ServerInfo {
            start_time: SystemTime::UNIX_EPOCH,
            flags: flags
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            data_dir: "data".into(),
            max_write_body_bytes: 0,
            ingest_time_bounds: crate::storage::TimeBounds::NONE,
            cluster_keys: None,
            query_cache_max_bytes: 0,
            query_log_slow: None,
        }
    }

    #[test]
    fn retention_joins_time_and_size() {
        assert_eq!(storage_retention(&info(&[])), "");
        assert_eq!(
            storage_retention(&info(&[("retention-time", "15d")])),
            "15d"
        );
        assert_eq!(
            storage_retention(&info(&[
                ("retention-time", "30d"),
                ("retention-size", "536870912")
            ])),
            "30d or 512MiB"
        );
        assert_eq!(format_base2_bytes(1_610_612_736), "1GiB512MiB");
        assert_eq!(format_base2_bytes(1000), "1000B");
        assert_eq!(format_base2_bytes(0), "0B");
        assert_eq!(
            storage_retention(&info(&[
                ("retention-time", "0s"),
                ("retention-size", "1GB")
            ])),
            "1GB"
        );
    }

    #[test]
    fn tsdb_limit_bounds() {
        let p = |q: &str| FormParams::from_parts(Some(q), None);
        assert_eq!(tsdb_limit(&p("")), Ok(10));
        assert_eq!(tsdb_limit(&p("limit=3")), Ok(3));
        assert_eq!(tsdb_limit(&p("limit=10000")), Ok(10_000));
        for bad in ["limit=0", "limit=-2", "limit=x"] {
            assert_eq!(
                tsdb_limit(&p(bad)).unwrap_err().message,
                "limit must be a positive number"
            );
        }
        assert_eq!(
            tsdb_limit(&p("limit=10001")).unwrap_err().message,
            "limit must not exceed 10000"
        );
    }

    #[test]
    fn tsdb_status_shape() {
        let stats = TsdbStats {
            num_series: 2,
            num_label_pairs: 3,
            chunk_count: 4,
            min_time: 1000,
            max_time: 2000,
            series_count_by_metric_name: vec![("up".into(), 2)],
            label_value_count_by_label_name: vec![("job".into(), 2)],
            memory_in_bytes_by_label_name: vec![("job".into(), 6)],
            series_count_by_label_value_pair: vec![("job=a".into(), 1)],
        };
        let json = serde_json::to_string(&TsdbStatus::from(stats)).unwrap();
        assert_eq!(
            json,
            r#"{"headStats":{"numSeries":2,"numLabelPairs":3,"chunkCount":4,"minTime":1000,"maxTime":2000},"seriesCountByMetricName":[{"name":"up","value":2}],"labelValueCountByLabelName":[{"name":"job","value":2}],"memoryInBytesByLabelName":[{"name":"job","value":6}],"seriesCountByLabelValuePair":[{"name":"job=a","value":1}]}"#
        );
    }

    #[test]
    fn empty_rule_lists_and_build_info_shape() {
        assert_eq!(
            serde_json::to_string(&RuleDiscovery { groups: [] }).unwrap(),
            r#"{"groups":[]}"#
        );
        assert_eq!(
            serde_json::to_string(&AlertDiscovery { alerts: [] }).unwrap(),
            r#"{"alerts":[]}"#
        );
        let build = serde_json::to_value(BUILD_INFO).unwrap();
        let keys: Vec<&String> = build.as_object().unwrap().keys().collect();
        assert_eq!(
            keys.len(),
            6,
            "version, revision, branch, buildUser, buildDate, goVersion"
        );
        assert_eq!(build["version"], env!("CARGO_PKG_VERSION"));
        for field in ["revision", "branch", "buildUser", "buildDate", "goVersion"] {
            let value = build[field].as_str().unwrap();
            assert!(
                !value.is_empty(),
                "{field} is filled (a fact or \"unknown\")"
            );
        }
        assert!(build["goVersion"].as_str().unwrap().starts_with("rustc"));
    }

    #[test]
    fn hostname_is_known() {
        assert!(!hostname().is_empty());
    }
}
