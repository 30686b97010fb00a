//! How the driver talks to the stack: HTTP GETs (ureq), Prometheus's own client
//! (`promtool query`) and remote read of one node's local-only data.
//!
//! Owns: endpoint URLs of the published ports, result normalisation (series sorted by
//! their labels so answers compare as strings), and decoding remote-read responses.
//! Calls ureq, promtool (through `stack::output`) and the crate's `proto` types.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use serde_json::Value;
use timbala::proto;

use crate::http_client::read_body;
use crate::stack::output;

/// Prometheus's HTTP API as published on the host.
pub const PROMETHEUS: &str = "http://127.0.0.1:19090";

/// The nginx balancer in front of the three nodes, as published on the host.
pub const BALANCER: &str = "http://127.0.0.1:19080";

/// The Timbala nodes: compose service name and the host URL of its HTTP API.
pub const NODES: [(&str, &str); 3] = [
    ("timbala-1", "http://127.0.0.1:19081"),
    ("timbala-2", "http://127.0.0.1:19082"),
    ("timbala-3", "http://127.0.0.1:19083"),
];

/// The host URL of a node's HTTP API by its compose service name.
pub fn node_url(service: &str) -> Result<&'static str, String> {
    NODES
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, base)| *base)
        .ok_or_else(|| format!("{service} is not a Timbala node"))
}

/// A node's identity (`local` of its `/api/v1/status/cluster`).
pub fn node_id(base: &str) -> Result<String, String> {
    let status = get_json(&format!("{base}/api/v1/status/cluster"))?;
    status["data"]["local"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| format!("{base}: no local node id in the cluster status"))
}

/// Prometheus marks a series stale with this NaN; queries skip it, raw reads keep it.
const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// A series' labels in a canonical order.
pub type Labels = BTreeMap<String, String>;

/// Raw samples per series: timestamp (ms) and the value's bits (compared exactly).
pub type RawSeries = BTreeMap<Labels, Vec<(i64, u64)>>;

fn agent() -> ureq::Agent {
    crate::http_client::agent(Duration::from_secs(30))
}

/// GET returning a 200 body parsed as JSON.
pub fn get_json(url: &str) -> Result<Value, String> {
    let resp = agent()
        .get(url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let (status, body) = read_body(resp)?;
    if status != 200 {
        return Err(format!("GET {url}: status {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {url}: {e}"))
}

/// Posts one remote-write 1.0 request (snappy protobuf), as Prometheus's sender does.
pub fn remote_write(base: &str, request: &proto::WriteRequest) -> Result<(), String> {
    let (status, body) = remote_write_answer(base, request)?;
    if !(200..300).contains(&status) {
        return Err(format!("POST {base}/api/v1/write: status {status}: {body}"));
    }
    Ok(())
}

/// Posts one remote-write 1.0 request and returns the status and body, whatever they are.
pub fn remote_write_answer(
    base: &str,
    request: &proto::WriteRequest,
) -> Result<(u16, String), String> {
    let url = format!("{base}/api/v1/write");
    let resp = agent()
        .post(&url)
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .send(&proto::encode_snappy(request)[..])
        .map_err(|e| format!("POST {url}: {e}"))?;
    let (status, body) = read_body(resp)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// POSTs an HTML form and returns the status and body, whatever they are.
pub fn post_form(url: &str, fields: &[(&str, &str)]) -> Result<(u16, String), String> {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let resp = agent()
        .post(url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(body.as_bytes())
        .map_err(|e| format!("POST {url}: {e}"))?;
    let (status, body) = read_body(resp)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One instant query through Prometheus's HTTP API (for the driver's own bookkeeping;
/// the answers under test go through promtool).
pub fn api_query(base: &str, query: &str) -> Result<Vec<Value>, String> {
    let url = format!(
        "{base}/api/v1/query?query={}",
        form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>()
    );
    let answer = get_json(&url)?;
    answer["data"]["result"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("{url}: no result array"))
}

/// The single value of an instant query's scalar-like answer (first series).
pub fn api_value(base: &str, query: &str) -> Result<f64, String> {
    let result = api_query(base, query)?;
    let value = result
        .first()
        .and_then(|s| s["value"][1].as_str())
        .ok_or_else(|| format!("{query} on {base}: empty answer"))?;
    value
        .parse()
        .map_err(|e| format!("{query} on {base}: {value}: {e}"))
}

/// The sum of every series of one counter in a server's own `/metrics` exposition
/// (0 when the counter has no series yet).
pub fn exposed_sum(base: &str, name: &str) -> Result<f64, String> {
    let url = format!("{base}/metrics");
    let resp = agent()
        .get(&url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let (status, body) = read_body(resp)?;
    if status != 200 {
        return Err(format!("GET {url}: status {status}"));
    }
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// What promtool prints for one query, as JSON.
fn promtool(args: &[&str]) -> Result<Value, String> {
    let mut all = vec!["query"];
    all.extend_from_slice(args);
    let out = output("promtool", &all)?;
    serde_json::from_str(&out).map_err(|e| format!("promtool output: {e}"))
}

/// `promtool query instant` at `time_s`, normalised (see `canonical`).
pub fn promtool_instant(base: &str, query: &str, time_s: f64) -> Result<String, String> {
    let time = format!("{time_s:.3}");
    promtool(&["instant", "-o", "json", "--time", &time, base, query]).map(canonical)
}

/// `promtool query range` over `[start_s, end_s]` with `step_s`, normalised.
pub fn promtool_range(
    base: &str,
    query: &str,
    start_s: f64,
    end_s: f64,
    step_s: u32,
) -> Result<String, String> {
    let (start, end, step) = (
        format!("{start_s:.3}"),
        format!("{end_s:.3}"),
        format!("{step_s}s"),
    );
    promtool(&[
        "range", "-o", "json", "--start", &start, "--end", &end, "--step", &step, base, query,
    ])
    .map(canonical)
}

/// A query answer with its series sorted by labels (JSON objects already serialise
/// with sorted keys), so two servers' answers compare as strings.
fn canonical(answer: Value) -> String {
    match answer {
        Value::Array(mut series) if series.iter().all(|s| s.get("metric").is_some()) => {
            series.sort_by_cached_key(|s| s["metric"].to_string());
            Value::Array(series).to_string()
        }
        other => other.to_string(),
    }
}

/// Every series' raw samples in `(end_s - range_s, end_s]` as a query answers them (an
/// instant query of a range selector; stale markers are not returned), via promtool.
pub fn query_raw(base: &str, range_s: u64, end_s: f64) -> Result<RawSeries, String> {
    let query = format!("{{__name__=~\".+\"}}[{range_s}s]");
    let time = format!("{end_s:.3}");
    let answer = promtool(&["instant", "-o", "json", "--time", &time, base, &query])?;
    let mut out = RawSeries::new();
    for series in answer.as_array().into_iter().flatten() {
        let labels = labels_of(&series["metric"]);
        let mut samples = Vec::new();
        for pair in series["values"].as_array().into_iter().flatten() {
            let ts = pair[0].as_f64().ok_or("sample without a timestamp")?;
            let value: f64 = pair[1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .ok_or("sample without a value")?;
            samples.push(((ts * 1000.0).round() as i64, value.to_bits()));
        }
        out.insert(labels, samples);
    }
    Ok(out)
}

fn labels_of(metric: &Value) -> Labels {
    metric
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// A node's own data only (`/internal/v1/read-local`, no fan-out) for every series in
/// `[start_ms, end_ms]`, stale markers dropped so counts match a query's.
pub fn read_local(base: &str, start_ms: i64, end_ms: i64) -> Result<RawSeries, String> {
    let request = proto::ReadRequest {
        queries: vec![proto::Query {
            start_timestamp_ms: start_ms,
            end_timestamp_ms: end_ms,
            matchers: vec![proto::LabelMatcher {
                r#type: proto::MatcherType::Re as i32,
                name: "__name__".into(),
                value: ".+".into(),
            }],
            hints: None,
        }],
        accepted_response_types: vec![proto::ResponseType::Samples as i32],
    };
    let url = format!("{base}{}", timbala::peer::READ_LOCAL_PATH);
    let resp = agent()
        .post(&url)
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Read-Version", "0.1.0")
        .send(&proto::encode_snappy(&request)[..])
        .map_err(|e| format!("POST {url}: {e}"))?;
    let (status, body) = read_body(resp)?;
    if status != 200 {
        return Err(format!("POST {url}: status {status}"));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&body)
        .map_err(|e| format!("{url}: snappy: {e}"))?;
    let response =
        proto::ReadResponse::decode(raw.as_slice()).map_err(|e| format!("{url}: {e}"))?;
    let mut out = RawSeries::new();
    for result in response.results {
        for series in result.timeseries {
            let labels = series
                .labels
                .into_iter()
                .map(|l| (l.name, l.value))
                .collect();
            let samples = series
                .samples
                .into_iter()
                .map(|s| (s.timestamp, s.value.to_bits()))
                .filter(|&(_, bits)| bits != STALE_NAN_BITS)
                .collect();
            out.insert(labels, samples);
        }
    }
    Ok(out)
}
