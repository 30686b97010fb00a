//! TSDB admin endpoints and the metadata API, in Prometheus's shapes.
//!
//! Owns: `POST|PUT /api/v1/admin/tsdb/{delete_series,clean_tombstones,snapshot}` and
//! `GET /api/v1/metadata`. Parameters come from the query string and, for POST/PUT, a
//! form body, like Go's `r.FormValue`. Calls `selectors` for `match[]`, the local `tsdb`
//! (on blocking threads: these do disk work) and `storage` for metadata.
//!
//! Unlike Prometheus, the admin API is always on (there is no `--web.enable-admin-api`).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;

use super::selectors::parse_match_param;
use super::{success, ApiError, AppState};
use crate::model::Matcher;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/admin/tsdb/delete_series",
            post(delete_series).put(delete_series),
        )
        .route(
            "/api/v1/admin/tsdb/clean_tombstones",
            post(clean_tombstones).put(clean_tombstones),
        )
        .route("/api/v1/admin/tsdb/snapshot", post(snapshot).put(snapshot))
        .route("/api/v1/metadata", get(metadata).post(metadata))
}

/// Request parameters from the query string and an urlencoded body, in order.
struct Params(Vec<(String, String)>);

impl Params {
    fn from_request(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Self {
        let mut pairs: Vec<(String, String)> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            pairs.extend(form_urlencoded::parse(body).into_owned());
        }
        Params(pairs)
    }

    /// The first non-empty value of `name`, as Go's `FormValue` (empty means absent).
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Runs blocking TSDB work on a blocking thread, mapping failures to 500.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::storage::StorageError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("admin task failed: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))
}

async fn delete_series(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tsdb = state.services()?.tsdb.clone();
    let params = Params::from_request(query.as_deref(), &headers, &body);
    let selectors: Vec<Vec<Matcher>> = params
        .all("match[]")
        .map(parse_match_param)
        .collect::<Result<_, _>>()?;
    if selectors.is_empty() {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let start = time_param(&params, "start", i64::MIN)?;
    let end = time_param(&params, "end", i64::MAX)?;
    blocking(move || {
        selectors
            .iter()
            .try_for_each(|matchers| tsdb.delete_series(matchers, start, end))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn clean_tombstones(State(state): State<AppState>) -> Result<Response, ApiError> {
    let tsdb = state.services()?.tsdb.clone();
    blocking(move || tsdb.clean_tombstones()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Serialize)]
struct SnapshotName {
    name: String,
}

async fn snapshot(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tsdb = state.services()?.tsdb.clone();
    let params = Params::from_request(query.as_deref(), &headers, &body);
    let skip_head = match params.get("skip_head") {
        None => false,
        Some(v) => parse_bool(v).ok_or_else(|| {
            ApiError::bad_data(format!(
                "invalid parameter \"skip_head\": unable to parse boolean: {v:?}"
            ))
        })?,
    };
    let name = snapshot_name(std::time::SystemTime::now(), random_u63());
    let dir = std::path::Path::new(&state.info().data_dir)
        .join("snapshots")
        .join(&name);
    blocking(move || {
        std::fs::create_dir_all(&dir)?;
        tsdb.snapshot(&dir, !skip_head)
    })
    .await?;
    Ok(success(SnapshotName { name }, &[], &[]))
}

#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct MetadataEntry {
    #[serde(rename = "type")]
    metric_type: String,
    help: String,
    unit: String,
}

async fn metadata(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let storage = state.services()?.storage.clone();
    let params = Params::from_request(query.as_deref(), &headers, &body);
    let limit = int_param(&params, "limit")?;
    let limit_per_metric = int_param(&params, "limit_per_metric")?;
    let metric = params.get("metric").map(str::to_string);
    let known = storage
        .metadata(metric)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut by_metric: BTreeMap<String, Vec<MetadataEntry>> = BTreeMap::new();
    for m in known {
        let entries = by_metric.entry(m.metric_family).or_default();
        let entry = MetadataEntry {
            metric_type: m.metric_type,
            help: m.help,
            unit: m.unit,
        };
        let full = limit_per_metric.is_some_and(|l| l > 0 && entries.len() as i64 >= l);
        if !full && !entries.contains(&entry) {
            entries.push(entry);
        }
    }
    if let Some(limit) = limit.filter(|l| *l >= 0) {
        by_metric = by_metric.into_iter().take(limit as usize).collect();
    }
    Ok(success(by_metric, &[], &[]))
}

fn int_param(params: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::bad_data(format!("{name} must be a number")))
        })
        .transpose()
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn time_param(params: &Params, name: &str, default: i64) -> Result<i64, ApiError> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => parse_time_ms(v).ok_or_else(|| {
            ApiError::bad_data(format!(
                "invalid parameter {name:?}: cannot parse {v:?} to a valid timestamp"
            ))
        }),
    }
}

/// Prometheus's API time: Unix seconds with an optional fraction, or RFC 3339.
fn parse_time_ms(v: &str) -> Option<i64> {
    if let Ok(seconds) = v.parse::<f64>() {
        let ms = (seconds * 1000.0).round();
        return (ms.is_finite() && ms.abs() < 9.2e18).then_some(ms as i64);
    }
    parse_rfc3339_ms(v)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` to Unix milliseconds.
fn parse_rfc3339_ms(v: &str) -> Option<i64> {
    let b = v.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| v.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &v[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            sign * (rest.get(1..3)?.parse::<i64>().ok()? * 60
                + rest.get(4..6)?.parse::<i64>().ok()?)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01 (inverse of `days_from_civil`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A non-negative random number, as Go's `rand.Int63` that Prometheus uses.
fn random_u63() -> u64 {
    use rand::{RngCore, SeedableRng};
    rand::rngs::SmallRng::from_os_rng().next_u64() >> 1
}

/// Prometheus's snapshot name: `20060102T150405Z-<16 hex digits>`.
fn snapshot_name(now: std::time::SystemTime, random: u64) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let in_day = secs.rem_euclid(86_400);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z-{random:016x}",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn snapshot_names_like_prometheus() {
        let t = UNIX_EPOCH + Duration::from_secs(1_763_737_200); // 2025-11-21T15:00:00Z
        assert_eq!(snapshot_name(t, 0xabc), "20251121T150000Z-0000000000000abc");
    }

    #[test]
    fn times_parse_like_the_api() {
        assert_eq!(parse_time_ms("1435781451.781"), Some(1_435_781_451_781));
        assert_eq!(
            parse_time_ms("2015-07-01T20:10:51.781Z"),
            Some(1_435_781_451_781)
        );
        assert_eq!(
            parse_time_ms("2015-07-01T22:10:51+02:00"),
            Some(1_435_781_451_000)
        );
        assert_eq!(parse_time_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time_ms("yesterday"), None);
        assert_eq!(parse_time_ms("2015-13-01T00:00:00Z"), None);
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000, -1, 0, 59, 365, 11_016, 20_413, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn params_merge_query_and_form_body() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let p = Params::from_request(Some("match[]=a&start="), &headers, b"match%5B%5D=b&end=5");
        assert_eq!(p.all("match[]").collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(p.get("start"), None);
        assert_eq!(p.get("end"), Some("5"));
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("yes"), None);
    }
}
