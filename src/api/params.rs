//! Request parameters of the Prometheus HTTP API, parsed exactly as Prometheus parses them.
//!
//! Owns: the form extractor (`FormParams`: URL query plus a url-encoded POST body, body
//! values first, as Go's `r.Form`), time parameters (RFC 3339 or Unix seconds with
//! fractions, rounded to milliseconds), durations (float seconds or `1h30m`), `limit`,
//! `match[]` selectors turned into `model::Matcher`s, and label-name unescaping (`U__`).
//! Error texts are Prometheus's, so clients see the same messages.
//! Calls `model`, `timeutil`, `promql::limits` (every selector is parsed within the
//! query size and nesting limits) and `promql_parser`; used by the `query`, `admin`,
//! `status` and `federate` routers.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, Method};
use promql_parser::label::MatchOp as ParserMatchOp;
use promql_parser::parser::Expr;

use super::ApiError;
use crate::model::{MatchOp, Matcher, METRIC_NAME};
use crate::promql::limits;
use crate::timeutil::{days_from_civil, days_in_month};

/// Default start of optional time ranges, in milliseconds: Prometheus's `MinTime`
/// (`math.MinInt64/1000 + 62135596801` seconds).
pub const MIN_TIME_MS: i64 = (i64::MIN / 1000 + 62_135_596_801) * 1000;
/// Default end of optional time ranges, in milliseconds: Prometheus's `MaxTime`.
pub const MAX_TIME_MS: i64 = (i64::MAX / 1000 - 62_135_596_801) * 1000 + 999;
/// `MinTime` and `MaxTime` as Go formats them in RFC 3339.
const MIN_TIME_FORMATTED: &str = "-292273086-05-16T16:47:06Z";
const MAX_TIME_FORMATTED: &str = "292277025-08-18T07:12:54.999999999Z";

/// All form values of a request in Go's `r.Form` order: POST body values, then URL query.
#[derive(Debug, Default, Clone)]
pub struct FormParams {
    pairs: Vec<(String, String)>,
}

impl FormParams {
    /// Builds parameters from a URL query string and an optional url-encoded body.
    pub fn from_parts(query: Option<&str>, body: Option<&[u8]>) -> Self {
        let mut pairs = Vec::new();
        if let Some(body) = body {
            pairs.extend(form_urlencoded::parse(body).into_owned());
        }
        if let Some(query) = query {
            pairs.extend(form_urlencoded::parse(query.as_bytes()).into_owned());
        }
        FormParams { pairs }
    }

    /// The first value of `name`, or "" when absent (Go's `r.FormValue`).
    pub fn value(&self, name: &str) -> &str {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Every value of `name`, in order (Go's `r.Form[name]`).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl<S: Send + Sync> FromRequest<S> for FormParams {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let query = req.uri().query().map(str::to_owned);
        let has_form_body = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
            && req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(is_form_content_type);
        if !has_form_body {
            return Ok(FormParams::from_parts(query.as_deref(), None));
        }
        // `Bytes` applies axum's default body limit (2 MiB), plenty for queries.
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_data(format!("error parsing form values: {e}")))?;
        Ok(FormParams::from_parts(query.as_deref(), Some(&body)))
    }
}

/// Whether a Content-Type names a url-encoded form (parameters such as charset allowed).
fn is_form_content_type(content_type: &str) -> bool {
    content_type.split(';').next().is_some_and(|t| {
        t.trim()
            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    })
}

/// Prometheus's `invalid parameter "<name>": <reason>` error (bad_data, 400).
pub fn invalid_param(name: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::bad_data(format!("invalid parameter {name:?}: {reason}"))
}

/// Parses a timestamp: Unix seconds (fractions rounded to milliseconds) or RFC 3339.
/// Returns milliseconds since the epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(seconds) = s.parse::<f64>() {
        if let Some(ms) = unix_seconds_to_ms(seconds) {
            return Ok(ms);
        }
    } else if let Some(ms) = parse_rfc3339_ms(s) {
        return Ok(ms);
    }
    // Go's RFC 3339 parser takes only 4-digit years, so Prometheus recognises the
    // formatted forms of its own range bounds (which clients send back) by name.
    match s {
        MIN_TIME_FORMATTED => return Ok(MIN_TIME_MS),
        MAX_TIME_FORMATTED => return Ok(MAX_TIME_MS),
        _ => {}
    }
    Err(format!("cannot parse {s:?} to a valid timestamp"))
}

/// A time parameter with a default when it is absent or empty, wrapped as Prometheus
/// does: `invalid parameter "start": invalid time value for 'start': ...`.
pub fn time_param(params: &FormParams, name: &str, default_ms: i64) -> Result<i64, ApiError> {
    let value = params.value(name);
    if value.is_empty() {
        return Ok(default_ms);
    }
    parse_time(value)
        .map_err(|e| invalid_param(name, format!("invalid time value for '{name}': {e}")))
}

/// Float seconds to milliseconds with Go's arithmetic: split into whole seconds and a
/// fraction rounded to milliseconds, then nanoseconds truncated, then floored to ms.
/// None when the milliseconds do not fit an i64.
fn unix_seconds_to_ms(t: f64) -> Option<i64> {
    // Far beyond i64 milliseconds; keeps the `as i64` below exact.
    const LIMIT_SECONDS: f64 = 1e17;
    if !t.is_finite() || t.abs() >= LIMIT_SECONDS {
        return None;
    }
    let whole = t.trunc();
    let fraction = ((t - whole) * 1000.0).round() / 1000.0;
    let nanos = i128::from(whole as i64) * 1_000_000_000 + i128::from((fraction * 1e9) as i64);
    i64::try_from(nanos.div_euclid(1_000_000)).ok()
}

/// RFC 3339 (`2015-07-01T20:10:51.781Z`, `...+02:00`) to milliseconds; None if invalid.
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0;
    if let Some((&(b'.' | b','), tail)) = rest.split_first() {
        let n = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        // Nanosecond precision is kept by Go; milliseconds truncate it.
        let mut scaled = 0;
        for (i, c) in tail[..n].iter().enumerate().take(3) {
            scaled += i64::from(c - b'0') * [100, 10, 1][i];
        }
        millis = scaled;
        rest = &tail[n..];
    }
    let offset_seconds = parse_zone_offset(rest)?;
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(seconds * 1000 + millis)
}

/// `Z` or `±hh:mm` to seconds east of UTC.
fn parse_zone_offset(b: &[u8]) -> Option<i64> {
    match b {
        [b'Z'] => Some(0),
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = digits(&[*h1, *h2])?;
            let minutes = digits(&[*m1, *m2])?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            Some(if *sign == b'-' { -offset } else { offset })
        }
        _ => None,
    }
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

/// Parses a duration as Prometheus does: float seconds, or a Prometheus duration string
/// (`1y2w3d4h5m6s7ms`, units largest first). Returns nanoseconds (Go's `time.Duration`).
pub fn parse_duration(s: &str) -> Result<i64, String> {
    if let Ok(seconds) = s.parse::<f64>() {
        let nanos = seconds * 1e9;
        if nanos.is_nan() {
            return Err(format!("cannot parse {s:?} to a valid duration"));
        }
        // i64::MAX as f64 rounds up to 2^63, so `>=` is the exact overflow test.
        if nanos >= i64::MAX as f64 || nanos < i64::MIN as f64 {
            return Err(format!(
                "cannot parse {s:?} to a valid duration. It overflows int64"
            ));
        }
        return Ok(nanos as i64);
    }
    prometheus_duration_ms(s)
        .and_then(|ms| ms.checked_mul(1_000_000))
        .ok_or_else(|| format!("cannot parse {s:?} to a valid duration"))
}

/// A Prometheus duration string in milliseconds: one or more `<digits><unit>` with units
/// y, w, d, h, m, s, ms, each at most once and largest first; "0" alone is allowed.
pub fn prometheus_duration_ms(s: &str) -> Option<i64> {
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    if s == "0" {
        return Some(0);
    }
    let mut rest = s.as_bytes();
    let mut next_unit = 0;
    let mut total: i64 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        let number: i64 = std::str::from_utf8(&rest[..n]).ok()?.parse().ok()?;
        rest = &rest[n..];
        let unit_len = rest.iter().take_while(|c| !c.is_ascii_digit()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let offset = UNITS[next_unit..]
            .iter()
            .position(|(name, _)| name.as_bytes() == unit)?;
        let (_, unit_ms) = UNITS[next_unit + offset];
        next_unit += offset + 1;
        total = total.checked_add(number.checked_mul(unit_ms)?)?;
    }
    Some(total)
}

/// Parses `limit` as Go's `strconv.Atoi` plus Prometheus's check; 0 means no limit.
pub fn parse_limit(s: &str) -> Result<usize, String> {
    if s.is_empty() {
        return Ok(0);
    }
    let limit: i64 = s.parse().map_err(|e: std::num::ParseIntError| {
        let why = match e.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                "value out of range"
            }
            _ => "invalid syntax",
        };
        format!("strconv.Atoi: parsing {s:?}: {why}")
    })?;
    usize::try_from(limit).map_err(|_| "limit must be non-negative".to_string())
}

/// The `limit` parameter, as an API error when invalid.
pub fn limit_param(params: &FormParams) -> Result<usize, ApiError> {
    parse_limit(params.value("limit")).map_err(|e| invalid_param("limit", e))
}

/// Parses one series selector (`up{job="api"}`, `{__name__=~"x.*"}`) into matchers.
/// Anything but a plain vector selector is rejected, as Prometheus's
/// `ParseMetricSelector` does; text over the query limits is refused before parsing.
pub fn parse_match_param(selector: &str) -> Result<Vec<Matcher>, String> {
    let expr = limits::parse(selector)?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(format!(
            "parse error: expected a series selector, got {selector:?}"
        ));
    };
    if vs.offset.is_some() || vs.at.is_some() || !vs.matchers.or_matchers.is_empty() {
        return Err(format!(
            "parse error: a series selector takes only label matchers, got {selector:?}"
        ));
    }
    selector_matchers(vs.name.as_deref(), &vs.matchers.matchers)
}

/// A selector's metric name and label matchers (parsed by promql-parser) as matchers.
pub fn selector_matchers(
    name: Option<&str>,
    parsed: &[promql_parser::label::Matcher],
) -> Result<Vec<Matcher>, String> {
    let mut matchers = Vec::with_capacity(parsed.len() + 1);
    if let Some(name) = name {
        matchers.push(Matcher::equal(METRIC_NAME, name));
    }
    for m in parsed {
        let op = match m.op {
            ParserMatchOp::Equal => MatchOp::Equal,
            ParserMatchOp::NotEqual => MatchOp::NotEqual,
            ParserMatchOp::Re(_) => MatchOp::RegexMatch,
            ParserMatchOp::NotRe(_) => MatchOp::RegexNoMatch,
        };
        let matcher = Matcher::new(op, m.name.clone(), m.value.clone())
            .map_err(|e| format!("parse error: invalid regular expression: {e}"))?;
        matchers.push(matcher);
    }
    Ok(matchers)
}

/// Parses every `match[]` value. Each set must have a matcher that does not match the
/// empty string, or it would select every series.
pub fn parse_match_params<'a>(
    selectors: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Vec<Matcher>>, String> {
    let mut sets = Vec::new();
    for selector in selectors {
        let matchers = parse_match_param(selector)?;
        if matchers.iter().all(Matcher::matches_empty) {
            return Err("match[] must contain at least one non-empty matcher".to_string());
        }
        sets.push(matchers);
    }
    Ok(sets)
}

/// Undoes Prometheus's `U__` label-name escaping (`U__my_2e_label` is `my.label`, `__` is
/// `_`). A name that is not validly escaped is returned unchanged, as Prometheus does.
pub fn unescape_label_name(name: &str) -> String {
    let Some(escaped) = name.strip_prefix("U__") else {
        return name.to_string();
    };
    decode_escaped(escaped).unwrap_or_else(|| name.to_string())
}

fn decode_escaped(escaped: &str) -> Option<String> {
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c != '_' {
            out.push(c);
            continue;
        }
        let mut code: u32 = 0;
        let mut hex_digits = 0;
        loop {
            match chars.next()? {
                '_' if hex_digits == 0 => {
                    out.push('_');
                    break;
                }
                '_' => {
                    out.push(char::from_u32(code)?);
                    break;
                }
                h if hex_digits < 6 => {
                    code = code * 16 + h.to_digit(16)?;
                    hex_digits += 1;
                }
                _ => return None,
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeutil::civil_from_days;

    #[test]
    fn unix_seconds_round_to_milliseconds() {
        assert_eq!(parse_time("1435781451.781"), Ok(1_435_781_451_781));
        assert_eq!(parse_time("1435781451"), Ok(1_435_781_451_000));
        assert_eq!(parse_time("0.0004"), Ok(0));
        assert_eq!(parse_time("0.0005"), Ok(1));
        assert_eq!(parse_time("-1.5"), Ok(-1500));
        assert_eq!(parse_time("1e3"), Ok(1_000_000));
        assert!(parse_time("NaN").is_err());
        assert!(parse_time("1e300").is_err());
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_time("2015-07-01T20:10:51.781Z"),
            Ok(1_435_781_451_781)
        );
        assert_eq!(
            parse_time("2015-07-01T22:10:51.781999999+02:00"),
            Ok(1_435_781_451_781)
        );
        assert_eq!(parse_time("1969-12-31T23:59:59.5Z"), Ok(-500));
        assert_eq!(parse_time("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        for bad in [
            "2023-02-29T00:00:00Z",
            "2015-07-01 20:10:51Z",
            "2015-07-01T20:10:51",
            "2015-07-01T24:00:00Z",
            "2015-07-01T20:10:60Z",
            "2015-07-01T20:10:51.Z",
            "2015-13-01T20:10:51Z",
            "tomorrow",
            "",
        ] {
            assert_eq!(
                parse_time(bad),
                Err(format!("cannot parse {bad:?} to a valid timestamp")),
                "{bad}"
            );
        }
    }

    #[test]
    fn default_range_is_prometheus_min_and_max_time() {
        assert_eq!(MIN_TIME_MS, -9_223_309_901_257_974_000);
        assert_eq!(MAX_TIME_MS, 9_223_309_901_257_974_999);
    }

    #[test]
    fn range_bounds_parse_in_every_form_clients_send() {
        assert_eq!(parse_time(MIN_TIME_FORMATTED), Ok(MIN_TIME_MS));
        assert_eq!(parse_time(MAX_TIME_FORMATTED), Ok(MAX_TIME_MS));
        // client_golang sends the bounds as float seconds.
        assert_eq!(parse_time("-9223309901257974"), Ok(MIN_TIME_MS));
        assert_eq!(parse_time("9223309901257974.999"), Ok(MAX_TIME_MS - 999));
        // The formatted strings name the same instants.
        let (y, m, d) = civil_from_days((MIN_TIME_MS / 1000).div_euclid(86_400));
        assert_eq!((y, m, d), (-292_273_086, 5, 16));
        let (y, m, d) = civil_from_days((MAX_TIME_MS / 1000).div_euclid(86_400));
        assert_eq!((y, m, d), (292_277_025, 8, 18));
        assert_eq!(
            (MAX_TIME_MS / 1000).rem_euclid(86_400),
            7 * 3600 + 12 * 60 + 54
        );
        assert_eq!(
            (MIN_TIME_MS / 1000).rem_euclid(86_400),
            16 * 3600 + 47 * 60 + 6
        );
    }

    #[test]
    fn durations_as_float_seconds_or_units() {
        assert_eq!(parse_duration("15"), Ok(15_000_000_000));
        assert_eq!(parse_duration("0.5"), Ok(500_000_000));
        assert_eq!(parse_duration("15s"), Ok(15_000_000_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(parse_duration("1d2h3m4s5ms"), Ok(93_784_005_000_000));
        assert_eq!(parse_duration("-2"), Ok(-2_000_000_000));
        assert_eq!(parse_duration("0"), Ok(0));
        for bad in ["", "5x", "30m1h", "1.5h", "1hh", "h", "1s1s", "NaN"] {
            assert_eq!(
                parse_duration(bad),
                Err(format!("cannot parse {bad:?} to a valid duration")),
                "{bad}"
            );
        }
        assert_eq!(
            parse_duration("1e20"),
            Err("cannot parse \"1e20\" to a valid duration. It overflows int64".into())
        );
    }

    #[test]
    fn limits_as_atoi() {
        assert_eq!(parse_limit(""), Ok(0));
        assert_eq!(parse_limit("10"), Ok(10));
        assert_eq!(parse_limit("-1"), Err("limit must be non-negative".into()));
        assert_eq!(
            parse_limit("ten"),
            Err("strconv.Atoi: parsing \"ten\": invalid syntax".into())
        );
        assert_eq!(
            parse_limit("99999999999999999999"),
            Err("strconv.Atoi: parsing \"99999999999999999999\": value out of range".into())
        );
    }

    #[test]
    fn match_params_become_matchers() {
        let m = parse_match_param(r#"up{job="api",instance=~"a.*",env!="dev"}"#).unwrap();
        let rendered: Vec<String> = m.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                r#"__name__="up""#,
                r#"job="api""#,
                r#"instance=~"a.*""#,
                r#"env!="dev""#
            ]
        );
        assert!(m[2].matches("abc") && !m[2].matches("xa"));
        let by_name = parse_match_param(r#"{__name__=~"node_.*"}"#).unwrap();
        assert_eq!(by_name.len(), 1);
        assert!(by_name[0].matches("node_load1"));
    }

    #[test]
    fn match_params_reject_non_selectors() {
        assert!(parse_match_param("rate(up[5m])").is_err());
        assert!(parse_match_param("up[5m]").is_err());
        assert!(parse_match_param("up offset 5m").is_err());
        assert!(parse_match_param("-not-a-metric").is_err());
        assert!(parse_match_param(r#"{job=~".*"}"#).is_err());
        assert!(parse_match_params(["up", "node_load1"]).is_ok_and(|s| s.len() == 2));
    }

    #[test]
    fn form_values_body_first_then_query() {
        let p = FormParams::from_parts(
            Some("match[]=a&time=1&query=q%20url"),
            Some(b"match[]=b&query=up%7Bjob%3D%22x%22%7D"),
        );
        assert_eq!(p.value("query"), r#"up{job="x"}"#);
        assert_eq!(p.values("match[]").collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(p.value("time"), "1");
        assert_eq!(p.value("missing"), "");
    }

    #[test]
    fn time_param_defaults_and_errors() {
        let p = FormParams::from_parts(Some("start=&end=nope"), None);
        assert_eq!(time_param(&p, "start", 7), Ok(7));
        assert_eq!(
            time_param(&p, "end", 7).unwrap_err().message,
            "invalid parameter \"end\": invalid time value for 'end': cannot parse \"nope\" to a valid timestamp"
        );
    }

    #[test]
    fn label_names_unescape() {
        assert_eq!(unescape_label_name("job"), "job");
        assert_eq!(unescape_label_name("U__my_2e_label"), "my.label");
        assert_eq!(unescape_label_name("U__a__b"), "a_b");
        assert_eq!(unescape_label_name("U___1f600_"), "\u{1f600}");
        assert_eq!(unescape_label_name("U__bad_zz_"), "U__bad_zz_");
        assert_eq!(unescape_label_name("U__open_2e"), "U__open_2e");
        assert_eq!(unescape_label_name("U__long_1234567_"), "U__long_1234567_");
    }
}
