//! Issue 16, bars 1 and 3 (`GET /`): the built-in web UI, loaded by headless Chromium
//! (Debian's `chromium`, installed by scripts/install-chromium.sh) from the real binary.
//! The PromQL page draws `sum by (job)(rate(...[5m]))` as one SVG path and one legend
//! entry per job, its table shows the API's values, errors and infos appear as
//! Prometheus's UI shows them, the cluster page lists every member of a 3-node cluster
//! with its state, and the cardinality page lists the top metric; once a node is killed
//! the fan-out warning naming it, its `down` state and the hints held for it show; and
//! the pages work behind basic auth. prometheus-api-client's
//! `check_prometheus_connection()` (PyPI, in a venv under target/ made by
//! scripts/install-prometheus-api-client.sh) is true, and false without the password. Screenshots go to target/ui-screenshots/ (a test artifact, not asserted on).
//! Without chromium the browser tests are skipped with a message (failed under CI).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    remote_write, start_cluster_with, tool_available, ts, wait_converged, MemberSetup, Node,
};
use timbala::proto;

const COUNTER: &str = "ui_http_requests_total";
/// Jobs and the per-second increase of their counter.
const JOBS: [(&str, f64); 3] = [("api", 1.0), ("db", 2.5), ("web", 4.0)];
const GAUGE: &str = "ui_queue_depth";
/// How an error starts on the page (the `<noscript>` one aside).
const ERROR_ALERT: &str = "<div class=\"alert alert-danger\">Error";
/// A series whose label value is markup: the page must show it as text.
const HOSTILE: &str = "ui_hostile";
const HOSTILE_JOB: &str = "<img src=x onerror=\"document.title='owned'\">";
const CHROMIUM: &str = "chromium";
const PYTHON_CLIENT_SCRIPT: &str = "scripts/install-prometheus-api-client.sh";
const INSTALL_SCRIPT: &str = "scripts/install-chromium.sh";

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// 75 minutes of samples every 15 s: one counter series per job (two instances each, so
/// the sum has something to add) whose rate swings around the job's mean, and a gauge.
fn write_test_data(node: &Node, end_s: i64) {
    let times: Vec<i64> = (0..=300).map(|i| (end_s - 4500 + i * 15) * 1000).collect();
    let mut timeseries = Vec::new();
    for (phase, (job, per_second)) in JOBS.into_iter().enumerate() {
        for instance in ["a:9100", "b:9100"] {
            let mut value = 0.0;
            let samples: Vec<(i64, f64)> = times
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    let swing = 1.0 + 0.5 * ((i as f64 / 25.0) + phase as f64).sin();
                    value += (15.0 * per_second * swing).round();
                    (t, value)
                })
                .collect();
            timeseries.push(ts(
                &[("__name__", COUNTER), ("job", job), ("instance", instance)],
                &samples,
            ));
        }
    }
    let gauge: Vec<(i64, f64)> = times.iter().map(|&t| (t, (t % 7) as f64)).collect();
    timeseries.push(ts(&[("__name__", GAUGE), ("job", "api")], &gauge));
    timeseries.push(ts(&[("__name__", HOSTILE), ("job", HOSTILE_JOB)], &gauge));
    let (code, body) = remote_write(
        node,
        &proto::WriteRequest {
            timeseries,
            metadata: vec![],
        },
    );
    assert_eq!(code, 204, "remote write: {body}");
}

fn query_string(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Runs headless Chromium on `url` with its own profile directory: the DOM after the
/// page's scripts ran (virtual time lets fetches and rendering finish), and a
/// screenshot at `screenshot` when given. Killed after 120 s of wall-clock time.
fn chromium(url: &str, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut command = Command::new(CHROMIUM);
    command.args([
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        "--window-size=1280,1100",
        "--virtual-time-budget=15000",
    ]);
    command.arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    let child = command
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromium");
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: kill(2) with signal 0 only checks that our child still exists.
            if unsafe { libc::kill(pid as i32, 0) } != 0 {
                return false;
            }
        }
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        true
    });
    let output = child.wait_with_output().expect("wait for chromium");
    let timed_out = watchdog.join().expect("watchdog");
    assert!(!timed_out, "chromium did not finish within 120 s on {url}");
    assert!(output.status.success(), "chromium failed on {url}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).expect("create target/ui-screenshots");
    dir
}

/// Dumps the DOM of `url` and saves its screenshot as `name`.png.
fn load_page(url: &str, name: &str) -> String {
    let path = screenshot_dir().join(format!("{name}.png"));
    chromium(url, Some(&path));
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0, "no screenshot written at {}", path.display());
    eprintln!("screenshot: {} ({size} bytes)", path.display());
    chromium(url, None)
}

/// Text as the DOM serializer writes it inside an element.
fn html_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

/// `{job="api"}` (with the metric name first, if any) as the page prints a series.
fn series_name(metric: &serde_json::Value) -> String {
    let object = metric.as_object().expect("metric object");
    let name = object
        .get("__name__")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let labels: Vec<String> = object
        .iter()
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| format!("{k}={}", serde_json::to_string(v).expect("json")))
        .collect();
    format!("{name}{{{}}}", labels.join(", "))
}

/// The rows (series, value) of the page's result table.
fn table_rows(dom: &str) -> Vec<(String, String)> {
    let table = element(dom, "result-table").unwrap_or_else(|| panic!("no result table: {dom}"));
    let row = regex::Regex::new(
        r#"<tr><td><span class="series-name">([^<]*)</span></td><td class="num">([^<]*)</td></tr>"#,
    )
    .expect("regex");
    row.captures_iter(table)
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect()
}

/// The outer HTML of the element with id `id` (up to its first closing tag of the same
/// name: the pages do not nest tables or lists).
fn element<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let open = dom[..start].rfind('<')?;
    let tag: String = dom[open + 1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let end = dom[open..].find(&format!("</{tag}>"))? + open + tag.len() + 3;
    Some(&dom[open..end])
}

fn api_data(node: &Node, path_and_query: &str) -> serde_json::Value {
    let (code, body) = common::get(&node.url(path_and_query));
    assert_eq!(code, 200, "{path_and_query}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v
}

/// Bar 3's `GET /`: the root redirects (302, relative, query kept) to the PromQL page,
/// which answers 200 HTML with a CSP allowing only this origin; following the redirect
/// as prometheus-api-client's `check_prometheus_connection()` does ends at a 200 page.
/// The assets are embedded, typed and served; unknown UI paths stay 404.
#[test]
fn root_redirects_to_the_graph_page_and_assets_are_served() {
    let node = Node::start(&[]);
    let no_redirects: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let root = no_redirects.get(&node.url("/")).call().expect("GET /");
    assert_eq!(root.status(), 302);
    assert_eq!(root.headers()["location"], "graph");
    let linked = no_redirects
        .get(&node.url("/?g0.expr=up&g0.tab=1"))
        .call()
        .expect("GET /?g0...");
    assert_eq!(linked.status(), 302);
    assert_eq!(linked.headers()["location"], "graph?g0.expr=up&g0.tab=1");

    // What check_prometheus_connection() does: GET the root, follow, check `ok`.
    let (code, body) = common::get(&node.url("/"));
    assert_eq!(code, 200);
    assert!(body.contains("<body data-page=\"graph\">"), "{body}");

    for (path, content_type) in [
        ("/graph", "text/html; charset=utf-8"),
        ("/query", "text/html; charset=utf-8"),
        ("/cluster", "text/html; charset=utf-8"),
        ("/tsdb-status", "text/html; charset=utf-8"),
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/app.css", "text/css; charset=utf-8"),
    ] {
        let resp = no_redirects.get(&node.url(path)).call().expect("GET");
        assert_eq!(resp.status(), 200, "{path}");
        let headers = resp.headers();
        assert_eq!(headers["content-type"], content_type, "{path}");
        let csp = headers["content-security-policy"].to_str().expect("csp");
        assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"));
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    for path in [
        "/graph/",
        "/static/",
        "/static/../Cargo.toml",
        "/static/app.js.map",
    ] {
        let resp = no_redirects.get(&node.url(path)).call().expect("GET");
        assert_eq!(resp.status(), 404, "{path}");
    }

    // The Python client itself.
    if let Some(connected) = python_client_connects(&node.url(""), None) {
        assert!(connected, "check_prometheus_connection() is false");
    }
}

/// Bar 1: one 3-node cluster; data written to node 0, every page loaded from node 1.
#[test]
fn pages_render_in_headless_chromium() {
    if !tool_available(CHROMIUM, INSTALL_SCRIPT) {
        return;
    }
    // A cluster key of its own: on a machine running other clusters' tests, no node of
    // theirs that reuses a port ours had can join ours.
    let keys_dir = tempfile::tempdir().expect("temp dir");
    let key_file = keys_dir.path().join("cluster.key");
    std::fs::write(&key_file, format!("{}\n", random_key())).expect("write the key");
    let key_arg = key_file.display().to_string();
    let mut cluster = start_cluster_with(3, &[], |_| MemberSetup {
        args: vec!["--cluster-key-file".into(), key_arg.clone()],
        ..MemberSetup::default()
    });
    let nodes: Vec<&Node> = cluster.iter().map(|m| &m.node).collect();
    let join_order = wait_converged(&nodes, 3, Duration::from_secs(60));
    let end_s = now_s();
    write_test_data(nodes[0], end_s);
    let viewer = nodes[1];
    let expr = format!("sum by (job)(rate({COUNTER}[5m]))");

    // Graph tab from a Prometheus-style link: one path and one legend entry per job.
    let url = viewer.url(&format!(
        "/graph?{}",
        query_string(&[
            ("g0.expr", &expr),
            ("g0.tab", "0"),
            ("g0.range_input", "1h")
        ])
    ));
    let dom = load_page(&url, "graph");
    assert!(!dom.contains(ERROR_ALERT), "error on the graph: {dom}");
    let chart = element(&dom, "chart").unwrap_or_else(|| panic!("no chart: {dom}"));
    assert_eq!(
        chart.matches("<path class=\"series\"").count(),
        3,
        "{chart}"
    );
    let legend = element(&dom, "legend").unwrap_or_else(|| panic!("no legend: {dom}"));
    assert_eq!(
        legend.matches("class=\"legend-item\"").count(),
        3,
        "{legend}"
    );
    for (job, _) in JOBS {
        let name = format!("{{job=\"{job}\"}}");
        assert!(legend.contains(&html_text(&name)), "{name} not in {legend}");
        assert!(
            chart.contains(&format!("data-series=\"{{job=&quot;{job}&quot;}}\"")),
            "no path for {job}: {chart}"
        );
        // Every path has points: 1 h at a 14 s resolution, drawn as one line.
        let path = regex::Regex::new(&format!(
            r#"d="(M[^"]*)" stroke="[^"]*" data-series="\{{job=&quot;{job}&quot;\}}""#
        ))
        .expect("regex");
        let d = &path.captures(chart).expect("path data")[1];
        assert_eq!(d.matches('M').count(), 1, "a gap in {job}'s line: {d}");
        assert!(
            d.matches('L').count() > 200,
            "too few points for {job}: {d}"
        );
    }

    // Table tab at a fixed evaluation time: the same series and values as the API.
    let moment = end_s - 600;
    let moment_input = utc_input(moment);
    let url = viewer.url(&format!(
        "/graph?{}",
        query_string(&[
            ("g0.expr", &expr),
            ("g0.tab", "1"),
            ("g0.moment_input", &moment_input)
        ])
    ));
    let dom = load_page(&url, "table");
    let mut shown = table_rows(&dom);
    shown.sort();
    let answer = api_data(
        viewer,
        &format!(
            "/api/v1/query?{}",
            query_string(&[("query", &expr), ("time", &moment.to_string())])
        ),
    );
    let mut expected: Vec<(String, String)> = answer["data"]["result"]
        .as_array()
        .expect("vector")
        .iter()
        .map(|s| {
            (
                html_text(&series_name(&s["metric"])),
                s["value"][1].as_str().expect("value").to_string(),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(expected.len(), 3, "{answer}");
    assert_eq!(shown, expected);
    assert!(
        dom.contains(&format!("Evaluated at: {moment_input} UTC")),
        "{dom}"
    );

    // A parse error as Prometheus's UI shows it, with the API's message.
    let url = viewer.url(&format!(
        "/graph?{}",
        query_string(&[("g0.expr", "sum(rate("), ("g0.tab", "1")])
    ));
    let dom = load_page(&url, "error");
    let (code, body) = common::get(&viewer.url("/api/v1/query?query=sum(rate("));
    assert_eq!(code, 400, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("json");
    let message = error["error"].as_str().expect("error message");
    let shown = format!(
        "<div class=\"alert alert-danger\">Error executing query: {}</div>",
        html_text(message)
    );
    assert!(dom.contains(&shown), "{shown} not in {dom}");

    // An info annotation (rate of a gauge) is shown beside the result, not as an error.
    let url = viewer.url(&format!(
        "/graph?{}",
        query_string(&[("g0.expr", &format!("rate({GAUGE}[5m])")), ("g0.tab", "1")])
    ));
    let dom = load_page(&url, "info");
    assert!(
        dom.contains(
            "<div class=\"alert alert-info\">Info: PromQL info: metric might not be a counter"
        ),
        "{dom}"
    );
    assert!(!dom.contains(ERROR_ALERT), "{dom}");
    assert_eq!(table_rows(&dom).len(), 1, "{dom}");

    // Markup in a label value is text on the page, never an element.
    let url = viewer.url(&format!(
        "/graph?{}",
        query_string(&[("g0.expr", HOSTILE), ("g0.tab", "1")])
    ));
    let dom = chromium(&url, None);
    let shown = format!(
        "{HOSTILE}{{job={}}}",
        serde_json::to_string(HOSTILE_JOB).expect("json")
    );
    assert_eq!(table_rows(&dom).len(), 1, "{dom}");
    assert_eq!(table_rows(&dom)[0].0, html_text(&shown), "{dom}");
    assert!(!dom.contains("<img"), "{dom}");
    assert!(dom.contains("<title>Query - Timbala</title>"), "{dom}");

    // Cluster page: every member, alive, in join order.
    let dom = load_page(&viewer.url("/cluster"), "cluster");
    let members = element(&dom, "members").unwrap_or_else(|| panic!("no members: {dom}"));
    let rows: Vec<&str> = members.split("<tr>").skip(2).collect();
    assert_eq!(rows.len(), 3, "{members}");
    for id in &join_order {
        let row = rows
            .iter()
            .find(|r| r.contains(id.as_str()))
            .unwrap_or_else(|| panic!("member {id} not listed: {members}"));
        assert!(
            row.contains("<span class=\"badge state-alive\">alive</span>"),
            "{row}"
        );
    }
    let order = element(&dom, "join-order").expect("join order");
    let positions: Vec<usize> = join_order
        .iter()
        .map(|id| order.find(id.as_str()).expect("id in join order"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{order}");
    let repair = element(&dom, "repair").expect("repair progress");
    assert!(repair.contains("class=\"badge state-"), "{repair}");

    // Cardinality page: the counter (6 series) is the top metric.
    let dom = load_page(&viewer.url("/tsdb-status"), "cardinality");
    let by_metric = element(&dom, "by-metric").unwrap_or_else(|| panic!("no top list: {dom}"));
    let first_row = by_metric
        .split("<tr>")
        .nth(2)
        .unwrap_or_else(|| panic!("empty top list: {by_metric}"));
    assert!(
        first_row.contains(&format!("<td>{COUNTER}</td><td class=\"num\">6</td>")),
        "{first_row}"
    );
    let pairs = element(&dom, "by-pair").expect("label-value pairs");
    assert!(
        pairs.contains(&format!("<td>__name__={COUNTER}</td>")),
        "{pairs}"
    );

    // A node dies: the API's warning naming it is on the table, and the cluster page
    // shows it as no longer alive.
    let dead_addr = cluster[2].node.http_addr.clone();
    let dead_id = common::status(&cluster[2].node).expect("status")["local"]
        .as_str()
        .expect("local id")
        .to_string();
    cluster[2].node.kill();
    let viewer = &cluster[1].node;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = api_data(viewer, &format!("/api/v1/query?query={COUNTER}"));
        let warned = answer["warnings"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w.as_str().is_some_and(|w| w.contains(&dead_addr)))
        });
        let listed_down = common::status(viewer).is_some_and(|s| {
            s["members"].as_array().is_some_and(|m| {
                m.iter()
                    .any(|m| m["id"] == dead_id.as_str() && m["state"] != "alive")
            })
        });
        if warned && listed_down {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no warning naming {dead_addr} and no state change within 60 s: {answer}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // A write through the viewer while a replica is down leaves hints for it there.
    let (code, body) = remote_write(
        viewer,
        &proto::WriteRequest {
            timeseries: vec![ts(
                &[("__name__", "ui_after_the_death"), ("job", "api")],
                &[(now_s() * 1000, 1.0)],
            )],
            metadata: vec![],
        },
    );
    assert_eq!(code, 204, "write with a replica down: {body}");
    let url = viewer.url(&format!(
        "/graph?{}",
        query_string(&[("g0.expr", COUNTER), ("g0.tab", "1")])
    ));
    let dom = load_page(&url, "warning");
    let warning = regex::Regex::new(r#"<div class="alert alert-warning">Warning: ([^<]*)</div>"#)
        .expect("regex");
    let shown: Vec<String> = warning
        .captures_iter(&dom)
        .map(|c| c[1].to_string())
        .collect();
    assert!(shown.iter().any(|w| w.contains(&dead_addr)), "{dom}");
    assert_eq!(table_rows(&dom).len(), 6, "{dom}");
    let dom = load_page(&viewer.url("/cluster"), "cluster-node-down");
    let members = element(&dom, "members").unwrap_or_else(|| panic!("no members: {dom}"));
    let row = members
        .split("<tr>")
        .find(|r| r.contains(dead_id.as_str()))
        .unwrap_or_else(|| panic!("dead member not listed: {members}"));
    assert!(
        row.contains("badge state-suspect") || row.contains("badge state-down"),
        "{row}"
    );
    let backlog = element(&dom, "backlog").unwrap_or_else(|| panic!("no backlog: {dom}"));
    assert!(
        backlog.contains(&format!("<td>{dead_id}</td>")),
        "no hints listed for {dead_id}: {backlog}"
    );
}

/// A fresh random cluster key, base64, as `head -c 32 /dev/urandom | base64` makes one.
fn random_key() -> String {
    use base64::Engine as _;
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The UI behind the web config's basic auth: pages, assets and the API calls the page
/// makes all need the password; a browser that has it (URL credentials) gets results.
#[test]
fn pages_work_behind_basic_auth() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("web.yml");
    let hash = bcrypt::hash("wonderland", 4).expect("bcrypt");
    std::fs::write(&config, format!("basic_auth_users:\n  alice: {hash}\n")).expect("write");
    let http_addr = format!("127.0.0.1:{}", common::free_port());
    let gossip_addr = format!("127.0.0.1:{}", common::free_port());
    let node = Node::spawn_at(
        &dir.path().join("data"),
        &http_addr,
        &gossip_addr,
        &["--web-config-file", config.to_str().expect("utf-8")],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready_status_as_alice(&node) != Some(200) {
        assert!(Instant::now() < deadline, "node not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    for path in [
        "/",
        "/graph",
        "/static/app.js",
        "/static/app.css",
        "/cluster",
    ] {
        let (code, _) = common::get(&node.url(path));
        assert_eq!(code, 401, "{path} without a password");
    }
    if let Some(connected) = python_client_connects(&node.url(""), None) {
        assert!(
            !connected,
            "check_prometheus_connection() without the password"
        );
        let with_password = python_client_connects(&node.url(""), Some(("alice", "wonderland")));
        assert_eq!(with_password, Some(true), "with the password");
    }
    if !tool_available(CHROMIUM, INSTALL_SCRIPT) {
        return;
    }
    // Prometheus 3.x's path and tab name.
    let url = format!(
        "http://alice:wonderland@{}/query?{}",
        node.http_addr,
        query_string(&[("g0.expr", "vector(42)"), ("g0.tab", "table")])
    );
    let dom = load_page(&url, "basic-auth");
    assert!(!dom.contains(ERROR_ALERT), "{dom}");
    assert_eq!(
        table_rows(&dom),
        vec![("{}".to_string(), "42".to_string())],
        "{dom}"
    );
}

/// prometheus-api-client's `check_prometheus_connection()` on `url` (with basic auth
/// when given), or None when the client could not be installed (the test is then skipped
/// with a message, or failed under CI).
fn python_client_connects(url: &str, auth: Option<(&str, &str)>) -> Option<bool> {
    static PYTHON: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    // Installed once per test binary: the tests run in parallel and share the venv.
    let python = PYTHON.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let output = Command::new("bash")
            .arg(root.join(PYTHON_CLIENT_SCRIPT))
            .stderr(Stdio::inherit())
            .output()
            .ok()?;
        let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
        (output.status.success() && !path.is_empty()).then(|| root.join(path))
    });
    let name = python
        .as_ref()
        .map_or("prometheus-api-client".to_string(), |p| {
            p.display().to_string()
        });
    if !tool_available(&name, PYTHON_CLIENT_SCRIPT) {
        return None;
    }
    let check = "import sys\n\
        from prometheus_api_client import PrometheusConnect\n\
        auth = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else None\n\
        print(PrometheusConnect(url=sys.argv[1], auth=auth).check_prometheus_connection())\n";
    let mut command = Command::new(&name);
    command.args(["-c", check, url]);
    if let Some((user, password)) = auth {
        command.args([user, password]);
    }
    let output = command.output().expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    match stdout.trim() {
        "True" => Some(true),
        "False" => Some(false),
        other => panic!("check_prometheus_connection() printed {other:?}"),
    }
}

/// Status of `/-/ready` with alice's password, None while the node does not answer.
fn ready_status_as_alice(node: &Node) -> Option<u16> {
    use base64::Engine as _;
    let credentials = base64::engine::general_purpose::STANDARD.encode("alice:wonderland");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    agent
        .get(&node.url("/-/ready"))
        .header("Authorization", &format!("Basic {credentials}"))
        .call()
        .ok()
        .map(|r| r.status().as_u16())
}

/// "YYYY-MM-DD HH:MM:SS" in UTC, the format of Prometheus's `g0.moment_input`.
fn utc_input(unix_s: i64) -> String {
    let (year, month, day) = timbala::timeutil::civil_from_days(unix_s.div_euclid(86_400));
    let secs = unix_s.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}
