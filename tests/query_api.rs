//! Acceptance tests of the Prometheus HTTP query API through the built binary: data is
//! written by remote write, then read back through every query, metadata, status and
//! federation endpoint and checked against Prometheus's JSON shapes, value formatting,
//! error types and status codes.

#[rustfmt::skip]
mod common;

use common::{get, post_form, remote_write, ts, Node};
use serde_json::{json, Value};
use timbala::proto;

/// Data written by `fixture`: every series has samples every 15 s over the three minutes
/// ending 20 s before the test started, so the newest samples are inside the default
/// 5-minute lookback of "now" (used by /federate).
struct Fixture {
    node: Node,
    /// Timestamp (ms) of the first sample; the last is at `base + 180_000`.
    base: i64,
}

const STEP_MS: i64 = 15_000;
const POINTS: i64 = 13;

impl Fixture {
    fn start(extra_args: &[&str]) -> Fixture {
        let node = Node::start(extra_args);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as i64;
        let base = now / 1000 * 1000 - 200_000;
        let fixture = Fixture { node, base };
        fixture.write_data();
        fixture
    }

    fn last(&self) -> i64 {
        self.base + (POINTS - 1) * STEP_MS
    }

    fn samples(&self, value: impl Fn(i64) -> f64) -> Vec<(i64, f64)> {
        (0..POINTS)
            .map(|i| (self.base + i * STEP_MS, value(i)))
            .collect()
    }

    fn write_data(&self) {
        let stale = f64::from_bits(timbala::model::STALE_NAN_BITS);
        let mut gone = self.samples(|_| 7.0);
        gone.last_mut().expect("samples").1 = stale;
        let request = proto::WriteRequest {
            timeseries: vec![
                ts(
                    &[
                        ("__name__", "http_requests_total"),
                        ("job", "api"),
                        ("instance", "a:1"),
                        ("method", "GET"),
                    ],
                    &self.samples(|i| (i * 10) as f64),
                ),
                ts(
                    &[
                        ("__name__", "http_requests_total"),
                        ("job", "api"),
                        ("instance", "b:1"),
                        ("method", "POST"),
                    ],
                    &self.samples(|i| (i * 5) as f64),
                ),
                ts(
                    &[("__name__", "up"), ("job", "api"), ("instance", "a:1")],
                    &self.samples(|_| 1.0),
                ),
                ts(
                    &[("__name__", "extremes"), ("kind", "tiny")],
                    &self.samples(|_| 1e-7),
                ),
                ts(
                    &[("__name__", "extremes"), ("kind", "huge")],
                    &self.samples(|_| 1e21),
                ),
                ts(
                    &[("__name__", "extremes"), ("kind", "inf")],
                    &self.samples(|_| f64::INFINITY),
                ),
                ts(&[("__name__", "gone"), ("job", "batch")], &gone),
            ],
            ..Default::default()
        };
        let (status, body) = remote_write(&self.node, &request);
        assert!(
            (200..300).contains(&status),
            "remote write: {status} {body}"
        );
    }

    fn get_json(&self, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let url = self.node.url(&format!("{path}?{}", encode(params)));
        let (status, body) = get(&url);
        (status, parse(&body, &url))
    }

    fn post_json(&self, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let url = self.node.url(path);
        let (status, body) = post_form(&url, params);
        (status, parse(&body, &url))
    }

    /// GET that must succeed; returns the whole body.
    fn ok(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let (status, body) = self.get_json(path, params);
        assert_eq!(status, 200, "{path} {params:?}: {body}");
        assert_eq!(body["status"], "success", "{body}");
        body
    }

    /// GET that must fail with this status and error type; returns the error text.
    fn error(&self, path: &str, params: &[(&str, &str)], status: u16, kind: &str) -> String {
        let (got, body) = self.get_json(path, params);
        assert_eq!(got, status, "{path} {params:?}: {body}");
        assert_eq!(body["status"], "error", "{body}");
        assert_eq!(body["errorType"], kind, "{body}");
        body["error"].as_str().expect("error text").to_string()
    }
}

fn encode(params: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

fn parse(body: &str, url: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {body}"))
}

/// Milliseconds as the float seconds a client sends (`1435781451.781`).
fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Milliseconds as the JSON number Prometheus writes for a sample timestamp: whole
/// seconds as an integer, otherwise with the millisecond digits.
fn ts_json(ms: i64) -> Value {
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        serde_json::from_str(&secs(ms)).expect("number")
    }
}

/// The result element whose metric has `label=value`.
fn by_label<'a>(result: &'a Value, label: &str, value: &str) -> &'a Value {
    result
        .as_array()
        .expect("result array")
        .iter()
        .find(|e| e["metric"][label] == value)
        .unwrap_or_else(|| panic!("no {label}={value} in {result}"))
}

#[test]
fn instant_queries_in_prometheus_shapes() {
    let f = Fixture::start(&[]);
    let at = secs(f.last());
    let body = f.ok(
        "/api/v1/query",
        &[("query", "http_requests_total"), ("time", &at)],
    );
    let data = &body["data"];
    assert_eq!(data["resultType"], "vector");
    assert_eq!(data["result"].as_array().map(Vec::len), Some(2), "{data}");
    let get = by_label(&data["result"], "method", "GET");
    assert_eq!(
        get["metric"],
        json!({"__name__": "http_requests_total", "instance": "a:1", "job": "api", "method": "GET"})
    );
    assert_eq!(get["value"], json!([ts_json(f.last()), "120"]));
    assert!(body.get("warnings").is_none() && body.get("infos").is_none());

    // POST form answers the same, and RFC 3339 names the same instant.
    let rfc3339 = timbala::api::json::format_rfc3339_nano(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(f.last() as u64),
    );
    let (status, posted) = f.post_json(
        "/api/v1/query",
        &[("query", "http_requests_total"), ("time", &rfc3339)],
    );
    assert_eq!(status, 200, "{posted}");
    assert_eq!(
        by_label(&posted["data"]["result"], "method", "GET"),
        get,
        "POST with RFC 3339 time"
    );

    // Values: 'f' format inside [1e-6, 1e21), exponent outside, +Inf spelled out.
    let body = f.ok("/api/v1/query", &[("query", "extremes"), ("time", &at)]);
    let result = &body["data"]["result"];
    assert_eq!(by_label(result, "kind", "tiny")["value"][1], "1e-07");
    assert_eq!(by_label(result, "kind", "huge")["value"][1], "1e+21");
    assert_eq!(by_label(result, "kind", "inf")["value"][1], "+Inf");

    // Scalars always use 'f' format; strings come back as strings.
    let body = f.ok("/api/v1/query", &[("query", "1e21"), ("time", "1000.5")]);
    assert_eq!(
        body["data"],
        json!({"resultType": "scalar", "result": [1000.5, "1000000000000000000000"]})
    );
    let body = f.ok("/api/v1/query", &[("query", "\"hello\""), ("time", "1000")]);
    assert_eq!(
        body["data"],
        json!({"resultType": "string", "result": [1000, "hello"]})
    );

    // An aggregation drops the name; `limit` truncates with Prometheus's warning.
    let body = f.ok(
        "/api/v1/query",
        &[
            ("query", "sum by (job) (http_requests_total)"),
            ("time", &at),
        ],
    );
    assert_eq!(
        body["data"]["result"],
        json!([{"metric": {"job": "api"}, "value": [ts_json(f.last()), "180"]}])
    );
    let body = f.ok(
        "/api/v1/query",
        &[
            ("query", "http_requests_total"),
            ("time", &at),
            ("limit", "1"),
        ],
    );
    assert_eq!(body["data"]["result"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["warnings"], json!(["results truncated due to limit"]));
}

#[test]
fn range_queries_in_prometheus_shapes() {
    let f = Fixture::start(&[]);
    let (start, end) = (secs(f.base + 60_000), secs(f.last()));
    let params = |step| {
        [
            ("query", r#"http_requests_total{method="GET"}"#),
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("step", step),
        ]
    };
    let body = f.ok("/api/v1/query_range", &params("15s"));
    assert_eq!(body["data"]["resultType"], "matrix");
    let series = &body["data"]["result"][0];
    assert_eq!(series["metric"]["method"], "GET");
    let values = series["values"].as_array().expect("values");
    assert_eq!(values.len(), 9, "{series}");
    assert_eq!(values[0], json!([ts_json(f.base + 60_000), "40"]));
    assert_eq!(values[8], json!([ts_json(f.last()), "120"]));

    // Step as float seconds, and POST form, give the same matrix.
    assert_eq!(
        f.ok("/api/v1/query_range", &params("15"))["data"],
        body["data"]
    );
    let (status, posted) = f.post_json("/api/v1/query_range", &params("15"));
    assert_eq!(status, 200, "{posted}");
    assert_eq!(posted["data"], body["data"]);
}

#[test]
fn query_errors_match_prometheus() {
    let f = Fixture::start(&[]);
    let message = f.error(
        "/api/v1/query",
        &[("query", "sum(http_requests_total"), ("time", "1000")],
        400,
        "bad_data",
    );
    assert!(
        message.starts_with("invalid parameter \"query\": "),
        "{message}"
    );
    assert_eq!(
        f.error(
            "/api/v1/query",
            &[("query", "up"), ("time", "yesterday")],
            400,
            "bad_data"
        ),
        "invalid parameter \"time\": invalid time value for 'time': cannot parse \"yesterday\" to a valid timestamp"
    );
    let range = |start: &str, end: &str, step: &str| {
        f.error(
            "/api/v1/query_range",
            &[
                ("query", "up"),
                ("start", start),
                ("end", end),
                ("step", step),
            ],
            400,
            "bad_data",
        )
    };
    assert_eq!(
        range("100", "50", "15s"),
        "invalid parameter \"end\": end timestamp must not be before start time"
    );
    assert_eq!(
        range("0", "100", "0"),
        "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer"
    );
    assert_eq!(
        range("0", "100000", "1"),
        "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
    );
    assert_eq!(
        range("", "100", "15s"),
        "invalid parameter \"start\": cannot parse \"\" to a valid timestamp"
    );
    assert_eq!(
        range("0", "100", "fast"),
        "invalid parameter \"step\": cannot parse \"fast\" to a valid duration"
    );
    assert_eq!(
        f.error(
            "/api/v1/query",
            &[("query", "up"), ("limit", "-1")],
            400,
            "bad_data"
        ),
        "invalid parameter \"limit\": limit must be non-negative"
    );
}

#[test]
fn query_limits_give_prometheus_errors_and_the_node_stays_healthy() {
    let f = Fixture::start(&["--query-max-samples", "10"]);
    let message = f.error(
        "/api/v1/query",
        &[
            ("query", "count_over_time(http_requests_total[10m])"),
            ("time", &secs(f.last())),
        ],
        422,
        "execution",
    );
    assert_eq!(
        message,
        "query processing would load too many samples into memory in query execution"
    );
    // A query within the limit still works afterwards.
    let body = f.ok(
        "/api/v1/query",
        &[("query", "up"), ("time", &secs(f.last()))],
    );
    assert_eq!(body["data"]["result"][0]["value"][1], "1");

    let f = Fixture::start(&["--query-timeout", "1ms"]);
    // Millions of inner steps: far more than a millisecond of work.
    let heavy = "sum(sum_over_time(rate(http_requests_total[5m])[6h:100ms]))";
    let message = f.error(
        "/api/v1/query_range",
        &[
            ("query", heavy),
            ("start", &secs(f.base)),
            ("end", &secs(f.last())),
            ("step", "1s"),
        ],
        503,
        "timeout",
    );
    assert!(message.starts_with("query timed out in "), "{message}");
    let (status, _) = get(&f.node.url("/-/healthy"));
    assert_eq!(status, 200);

    // The per-request `timeout` parameter cuts a query on a node with the default 2m.
    let f = Fixture::start(&[]);
    let message = f.error(
        "/api/v1/query_range",
        &[
            ("query", heavy),
            ("start", &secs(f.base)),
            ("end", &secs(f.last())),
            ("step", "1s"),
            ("timeout", "0.001"),
        ],
        503,
        "timeout",
    );
    assert!(message.starts_with("query timed out in "), "{message}");
    let body = f.ok(
        "/api/v1/query",
        &[
            ("query", "up"),
            ("time", &secs(f.last())),
            ("timeout", "1m"),
        ],
    );
    assert_eq!(body["data"]["result"][0]["value"][1], "1");
}

#[test]
fn series_and_label_endpoints() {
    let f = Fixture::start(&[]);
    let body = f.ok("/api/v1/series", &[("match[]", "http_requests_total")]);
    assert_eq!(
        body["data"],
        json!([
            {"__name__": "http_requests_total", "instance": "a:1", "job": "api", "method": "GET"},
            {"__name__": "http_requests_total", "instance": "b:1", "job": "api", "method": "POST"},
        ])
    );
    // Several match[] are a union, each series once, sorted.
    let body = f.ok(
        "/api/v1/series",
        &[("match[]", "up"), ("match[]", r#"{job="api"}"#)],
    );
    let names: Vec<&str> = body["data"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| s["__name__"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["http_requests_total", "http_requests_total", "up"]);
    let body = f.ok(
        "/api/v1/series",
        &[("match[]", "http_requests_total"), ("limit", "1")],
    );
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["warnings"], json!(["results truncated due to limit"]));
    // A range before any data has no series.
    let body = f.ok(
        "/api/v1/series",
        &[("match[]", "up"), ("start", "1000"), ("end", "2000")],
    );
    assert_eq!(body["data"], json!([]));
    assert_eq!(
        f.error("/api/v1/series", &[], 400, "bad_data"),
        "no match[] parameter provided"
    );
    let message = f.error(
        "/api/v1/series",
        &[("match[]", "rate(up[5m])")],
        400,
        "bad_data",
    );
    assert!(
        message.starts_with("invalid parameter \"match[]\": "),
        "{message}"
    );
    let (status, posted) = f.post_json("/api/v1/series", &[("match[]", "up")]);
    assert_eq!(status, 200);
    assert_eq!(
        posted["data"],
        json!([{"__name__": "up", "instance": "a:1", "job": "api"}])
    );

    let body = f.ok("/api/v1/labels", &[]);
    assert_eq!(
        body["data"],
        json!(["__name__", "instance", "job", "kind", "method"])
    );
    let body = f.ok("/api/v1/labels", &[("match[]", "up")]);
    assert_eq!(body["data"], json!(["__name__", "instance", "job"]));
    let body = f.ok("/api/v1/labels", &[("limit", "2")]);
    assert_eq!(body["data"], json!(["__name__", "instance"]));
    assert_eq!(body["warnings"], json!(["results truncated due to limit"]));

    let body = f.ok("/api/v1/label/__name__/values", &[]);
    assert_eq!(
        body["data"],
        json!(["extremes", "gone", "http_requests_total", "up"])
    );
    let body = f.ok("/api/v1/label/job/values", &[("match[]", "up")]);
    assert_eq!(body["data"], json!(["api"]));
    // `U__` escaping: `_6f_` is "o", so this asks for the values of `job`.
    let body = f.ok("/api/v1/label/U__j_6f_b/values", &[]);
    assert_eq!(body["data"], json!(["api", "batch"]));
    let body = f.ok("/api/v1/label/nonexistent/values", &[]);
    assert_eq!(body["data"], json!([]));
}

#[test]
fn exemplars_rules_and_alerts_are_empty_in_prometheus_shapes() {
    let f = Fixture::start(&[]);
    assert_eq!(
        f.ok("/api/v1/query_exemplars", &[("query", "up")]),
        json!({"status": "success", "data": []})
    );
    let (status, body) = get(&f.node.url("/api/v1/query_exemplars?query=1%2B1"));
    assert_eq!((status, body.as_str()), (204, ""));
    f.error(
        "/api/v1/query_exemplars",
        &[("query", "up"), ("start", "10"), ("end", "5")],
        400,
        "bad_data",
    );
    assert_eq!(
        f.ok("/api/v1/rules", &[]),
        json!({"status": "success", "data": {"groups": []}})
    );
    assert_eq!(
        f.ok("/api/v1/alerts", &[]),
        json!({"status": "success", "data": {"alerts": []}})
    );
}

#[test]
fn status_endpoints() {
    let f = Fixture::start(&["--query-timeout", "90s"]);
    let build = f.ok("/api/v1/status/buildinfo", &[]);
    assert_eq!(build["data"]["version"], env!("CARGO_PKG_VERSION"));
    for key in ["revision", "branch", "buildUser", "buildDate", "goVersion"] {
        assert!(build["data"][key].is_string(), "{key} in {build}");
    }

    let runtime = f.ok("/api/v1/status/runtimeinfo", &[])["data"].clone();
    let start = runtime["startTime"].as_str().expect("startTime");
    assert!(
        start.len() >= 20 && start.ends_with('Z') && &start[10..11] == "T",
        "{start}"
    );
    assert!(runtime["CWD"].as_str().is_some_and(|d| d.starts_with('/')));
    assert_eq!(runtime["reloadConfigSuccess"], true);
    assert!(runtime["GOMAXPROCS"].as_u64().is_some_and(|n| n >= 1));
    assert!(runtime["goroutineCount"].as_u64().is_some_and(|n| n >= 1));
    assert_eq!(runtime["storageRetention"], "15d");
    for key in [
        "hostname",
        "serverTime",
        "lastConfigTime",
        "corruptionCount",
        "GOMEMLIMIT",
        "GOGC",
        "GODEBUG",
    ] {
        assert!(runtime.get(key).is_some(), "{key} in {runtime}");
    }

    let flags = f.ok("/api/v1/status/flags", &[])["data"].clone();
    assert_eq!(flags["query-timeout"], "1m30s");
    assert_eq!(flags["http-bind-addr"], f.node.http_addr.as_str());

    let tsdb = f.ok("/api/v1/status/tsdb", &[])["data"].clone();
    assert_eq!(tsdb["headStats"]["numSeries"], 7, "{tsdb}");
    assert_eq!(tsdb["headStats"]["minTime"], f.base);
    assert_eq!(tsdb["headStats"]["maxTime"], f.last());
    assert!(tsdb["seriesCountByMetricName"]
        .as_array()
        .expect("list")
        .contains(&json!({"name": "extremes", "value": 3})));
    for list in [
        "labelValueCountByLabelName",
        "memoryInBytesByLabelName",
        "seriesCountByLabelValuePair",
    ] {
        assert!(tsdb[list].is_array(), "{list} in {tsdb}");
    }
    let top = f.ok("/api/v1/status/tsdb", &[("limit", "1")])["data"].clone();
    assert_eq!(
        top["seriesCountByMetricName"],
        json!([{"name": "extremes", "value": 3}])
    );
    assert_eq!(
        f.error("/api/v1/status/tsdb", &[("limit", "0")], 400, "bad_data"),
        "limit must be a positive number"
    );
}

#[test]
fn federation_serves_latest_samples_as_text() {
    let f = Fixture::start(&[]);
    let federate =
        |params: &[(&str, &str)]| get(&f.node.url(&format!("/federate?{}", encode(params))));
    let (status, body) = federate(&[("match[]", "http_requests_total"), ("match[]", "up")]);
    assert_eq!(status, 200, "{body}");
    let body_of_api_job = body.clone();
    let t = f.last();
    assert_eq!(
        body,
        format!(
            "# TYPE http_requests_total untyped\n\
             http_requests_total{{instance=\"a:1\",job=\"api\",method=\"GET\"}} 120 {t}\n\
             http_requests_total{{instance=\"b:1\",job=\"api\",method=\"POST\"}} 60 {t}\n\
             # TYPE up untyped\n\
             up{{instance=\"a:1\",job=\"api\"}} 1 {t}\n"
        )
    );
    // Go's 'g' number format and `instance=""` for series without an instance.
    let (_, body) = federate(&[("match[]", "extremes")]);
    assert_eq!(
        body,
        format!(
            "# TYPE extremes untyped\n\
             extremes{{kind=\"huge\",instance=\"\"}} 1e+21 {t}\n\
             extremes{{kind=\"inf\",instance=\"\"}} +Inf {t}\n\
             extremes{{kind=\"tiny\",instance=\"\"}} 1e-07 {t}\n"
        )
    );
    // Overlapping selectors still federate each series once.
    let (_, overlapping) = federate(&[("match[]", "up"), ("match[]", r#"{job="api"}"#)]);
    assert_eq!(overlapping, body_of_api_job);
    // A series whose newest sample is a staleness marker is not federated.
    assert_eq!(federate(&[("match[]", "gone")]), (200, String::new()));
    // No match[] selects nothing; a bad selector is a plain-text 400.
    assert_eq!(federate(&[]), (200, String::new()));
    let (status, body) = federate(&[("match[]", "-not-a-metric")]);
    assert_eq!(status, 400);
    assert!(body.ends_with('\n') && !body.starts_with('{'), "{body}");
}

/// `stats` on query and query_range: Prometheus's `data.stats` shape (timings in
/// seconds, sample counts), present for any non-empty value, absent otherwise, with
/// Prometheus's deprecation warning for values other than `true` and `all`.
#[test]
fn query_stats_in_prometheus_shape() {
    let f = Fixture::start(&[]);
    let time = secs(f.last());
    // Two series of 13 samples, all inside the 10m window: each counted once.
    let query = [
        ("query", "count_over_time(http_requests_total[10m])"),
        ("time", time.as_str()),
    ];
    let plain = f.ok("/api/v1/query", &query);
    assert!(plain["data"].get("stats").is_none(), "{plain}");

    let check_shape = |stats: &Value| {
        let timings = stats["timings"].as_object().expect("timings");
        let names = [
            "evalTotalTime",
            "resultSortTime",
            "queryPreparationTime",
            "innerEvalTime",
            "execQueueTime",
            "execTotalTime",
        ];
        assert_eq!(timings.len(), names.len(), "{stats}");
        for name in names {
            let seconds = timings[name].as_f64().expect(name);
            assert!((0.0..60.0).contains(&seconds), "{name}: {stats}");
        }
        let total = timings["execTotalTime"].as_f64().unwrap_or(0.0);
        assert!(total >= timings["evalTotalTime"].as_f64().unwrap_or(f64::MAX));
        let samples = stats["samples"].as_object().expect("samples");
        assert_eq!(samples.len(), 3, "{stats}");
    };
    let with_stats = [query[0], query[1], ("stats", "all")];
    let body = f.ok("/api/v1/query", &with_stats);
    assert_eq!(body["data"]["result"][0]["value"][1], "13", "{body}");
    let stats = &body["data"]["stats"];
    check_shape(stats);
    assert_eq!(
        stats["samples"]["totalQueryableSamples"],
        2 * POINTS,
        "{stats}"
    );
    assert_eq!(stats["samples"]["samplesRead"], 2 * POINTS, "{stats}");
    let peak = stats["samples"]["peakSamples"].as_i64().expect("peak");
    assert!((POINTS..=2 * POINTS).contains(&peak), "{stats}");
    assert!(body.get("warnings").is_none(), "{body}");

    // A range query: the instant selector reads one sample per series per step.
    let (start, end) = (secs(f.base + 60_000), secs(f.last()));
    let range = [
        ("query", "http_requests_total"),
        ("start", start.as_str()),
        ("end", end.as_str()),
        ("step", "15s"),
        ("stats", "true"),
    ];
    let body = f.ok("/api/v1/query_range", &range);
    let stats = &body["data"]["stats"];
    check_shape(stats);
    assert_eq!(stats["samples"]["totalQueryableSamples"], 2 * 9, "{stats}");

    // Any other value: stats, and Prometheus's warning.
    let odd = [query[0], query[1], ("stats", "yes please")];
    let body = f.ok("/api/v1/query", &odd);
    check_shape(&body["data"]["stats"]);
    let warnings = body["warnings"].as_array().expect("warnings");
    assert!(
        warnings.iter().any(|w| w.as_str().is_some_and(
            |w| w.starts_with("value \"yes please\" for parameter \"stats\" is deprecated")
        )),
        "{body}"
    );
}

/// `--query-log-slow`: a query over the threshold is logged as one JSON line (with
/// `--log-format json`) naming the query, its duration, samples and the nodes asked.
#[test]
fn slow_queries_are_logged_as_json_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("timbala.log");
    let http = format!("127.0.0.1:{}", common::free_port());
    let gossip = format!("127.0.0.1:{}", common::free_port());
    let node = Node::spawn_logged(
        &dir.path().join("data"),
        &http,
        &gossip,
        &["--query-log-slow", "1ms", "--log-format", "json"],
        None,
        Some(&log),
    );
    node.wait_ready(std::time::Duration::from_secs(60));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let samples: Vec<(i64, f64)> = (1..=20).map(|i| (now_ms - i * 15_000, 1.0)).collect();
    let request = proto::WriteRequest {
        timeseries: vec![ts(&[("__name__", "slow_probe")], &samples)],
        ..Default::default()
    };
    let (status, body) = remote_write(&node, &request);
    assert!(
        (200..300).contains(&status),
        "remote write: {status} {body}"
    );
    // 10,001 steps of a one-hour subquery at 1 s: far more than a millisecond of work.
    let query = "count_over_time(slow_probe[1h:1s])";
    let (start, end) = (secs(now_ms - 10_000_000), secs(now_ms));
    let url = node.url(&format!(
        "/api/v1/query_range?{}",
        encode(&[
            ("query", query),
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("step", "1s")
        ])
    ));
    let (status, body) = get(&url);
    assert_eq!(status, 200, "{body}");
    let logged = std::fs::read_to_string(&log).expect("log file");
    let line = logged
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "slow query")
        .unwrap_or_else(|| panic!("no slow-query line in {logged}"));
    assert_eq!(line["target"], "timbala::slow_query", "{line}");
    let fields = &line["fields"];
    assert_eq!(fields["query"], query, "{line}");
    assert_eq!(fields["endpoint"], "query_range", "{line}");
    assert_eq!(fields["outcome"], "ok", "{line}");
    assert_eq!(fields["nodes_asked"], http.as_str(), "{line}");
    assert!(
        fields["duration_seconds"]
            .as_f64()
            .is_some_and(|d| d >= 0.001),
        "{line}"
    );
    assert!(fields["samples"].as_u64().is_some_and(|s| s > 0), "{line}");
}
