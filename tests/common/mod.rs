//! Test support shared by the acceptance tests: start the built `timbala` binary on free
//! ports with its own data directory, wait for readiness, and talk HTTP to it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use timbala::cluster::identity::unix_millis;
use timbala::cluster::keys::{ClusterKeys, CLUSTER_AUTH_HEADER};
use timbala::proto;

#[path = "../support/http_client.rs"]
mod http_client;

/// A running `timbala` process. Killed (SIGKILL) when dropped.
pub struct Node {
    child: Option<Child>,
    pub http_addr: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// The `timbala` binary the tests start: cargo's build of this crate, or the one
/// `TIMBALA_TEST_BINARY` names (a release build, to print release timings; see
/// bench/RESULTS.md).
pub fn binary_under_test() -> PathBuf {
    std::env::var_os("TIMBALA_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_timbala")))
}

/// A port that was free a moment ago on 127.0.0.1, for TCP and UDP alike (a node binds
/// both on its gossip port), and never handed out before in this test process: tests run
/// side by side, and a port one test released may otherwise reach another while the first
/// test's node is about to bind it (a node then fails to start, or joins a stranger's
/// cluster).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        if HANDED_OUT.lock().expect("port set").insert(port) {
            return port;
        }
    }
}

impl Node {
    /// Starts a node with a fresh temporary data directory and extra flags.
    pub fn start(extra_args: &[&str]) -> Node {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let mut node = Node::start_in(&dir, extra_args);
        node._tmp = Some(tmp);
        node
    }

    /// Starts a node on an existing (or new) data directory; the caller keeps it. A node
    /// that exits before it is ready (a port taken by something outside this process
    /// between the choice and the bind) is started again on other ports, a few times.
    pub fn start_in(data_dir: &Path, extra_args: &[&str]) -> Node {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            let http_addr = format!("127.0.0.1:{}", free_port());
            let gossip_addr = format!("127.0.0.1:{}", free_port());
            let mut node = Node::spawn_at(data_dir, &http_addr, &gossip_addr, extra_args);
            match node.wait_ready_or_exit(Duration::from_secs(60)) {
                Ok(()) => return node,
                Err(status) if attempt < ATTEMPTS => eprintln!(
                    "node at {http_addr} exited before it was ready ({status}); starting it again on other ports"
                ),
                Err(status) => panic!("node at {http_addr} exited before it was ready ({status})"),
            }
            attempt += 1;
        }
    }

    /// Starts a node at given addresses without waiting for readiness.
    pub fn spawn_at(
        data_dir: &Path,
        http_addr: &str,
        gossip_addr: &str,
        extra_args: &[&str],
    ) -> Node {
        Node::spawn_as(data_dir, http_addr, gossip_addr, extra_args, None)
    }

    /// `spawn_at`, with the process running under group `gid` when given (root only):
    /// tests tell a node's packets apart by it (iptables' owner match).
    pub fn spawn_as(
        data_dir: &Path,
        http_addr: &str,
        gossip_addr: &str,
        extra_args: &[&str],
        gid: Option<u32>,
    ) -> Node {
        Node::spawn_logged(data_dir, http_addr, gossip_addr, extra_args, gid, None)
    }

    /// `spawn_as`, with the process's stderr (its log) appended to `log_file` when given.
    pub fn spawn_logged(
        data_dir: &Path,
        http_addr: &str,
        gossip_addr: &str,
        extra_args: &[&str],
        gid: Option<u32>,
        log_file: Option<&Path>,
    ) -> Node {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(binary_under_test());
        if let Some(gid) = gid {
            command.gid(gid);
        }
        if let Some(path) = log_file {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open the node's log file");
            command.stderr(file);
        }
        let child = command
            .arg("--data-directory")
            .arg(data_dir)
            .args([
                "--http-bind-addr",
                http_addr,
                "--gossip-bind-addr",
                gossip_addr,
            ])
            .args(["--log-level", "warn"])
            .args(extra_args)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn timbala");
        Node {
            child: Some(child),
            http_addr: http_addr.to_string(),
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
        }
    }

    /// A handle on a node some other `Node` runs: talks HTTP to it, owns no process.
    pub fn handle(http_addr: &str) -> Node {
        Node {
            child: None,
            http_addr: http_addr.to_string(),
            data_dir: PathBuf::new(),
            _tmp: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, path)
    }

    /// Waits until `/-/ready` answers 200, panicking after `timeout`.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok((200, _)) = try_get(&self.url("/-/ready")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node {} not ready within {timeout:?}", self.http_addr);
    }

    /// `wait_ready`, but returns the exit status if the process ends first.
    fn wait_ready_or_exit(&mut self, timeout: Duration) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok((200, _)) = try_get(&self.url("/-/ready")) {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let running = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        panic!(
            "node {} not ready within {timeout:?} (process {})",
            self.http_addr,
            if running { "still running" } else { "gone" }
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().expect("wait for timbala");
        status.code()
    }

    /// Keeps the data directory alive beyond this node (for restarts).
    pub fn take_tempdir(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Requests from the tests: bounded, statuses as answers.
fn agent() -> ureq::Agent {
    http_client::agent(Duration::from_secs(60))
}

/// Status and body; a body that cannot be read counts as empty (the status decides).
fn read_response(resp: ureq::http::Response<ureq::Body>) -> (u16, Vec<u8>) {
    let status = resp.status().as_u16();
    http_client::read_body(resp).unwrap_or((status, Vec::new()))
}

pub fn try_get(url: &str) -> Result<(u16, Vec<u8>), ureq::Error> {
    agent().get(url).call().map(read_response)
}

/// GET with one request header; returns the value of one response header.
pub fn get_response_header(url: &str, header: (&str, &str), wanted: &str) -> Option<String> {
    let resp = agent()
        .get(url)
        .header(header.0, header.1)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    resp.headers()
        .get(wanted)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// GET returning status and body as text.
pub fn get(url: &str) -> (u16, String) {
    let (status, body) = try_get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// POST with explicit headers; returns status and raw body, or the transport error.
pub fn try_post(
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>), ureq::Error> {
    let mut req = agent().post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send(body).map(read_response)
}

/// POST with explicit headers; returns status and raw body.
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    try_post(url, headers, body).unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// POST with explicit headers; returns status, body as text and the response headers
/// (names lower-case, as `http` keeps them).
pub fn post_with_response_headers(
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<(String, String)>) {
    let mut req = agent().post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send(body).unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let response_headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let (status, body) = read_response(resp);
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        response_headers,
    )
}

/// POST an application/x-www-form-urlencoded body; returns status and text.
pub fn post_form(url: &str, form: &[(&str, &str)]) -> (u16, String) {
    let resp = agent()
        .post(url)
        .send_form(form.iter().copied())
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let (status, body) = read_response(resp);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends a remote-write 1.0 request the way Prometheus does; returns status and text.
pub fn remote_write(node: &Node, req: &proto::WriteRequest) -> (u16, String) {
    try_remote_write(node, req).unwrap_or_else(|e| panic!("POST to {}: {e}", node.http_addr))
}

/// Like `remote_write`, with transport errors returned instead of panicking.
pub fn try_remote_write(node: &Node, req: &proto::WriteRequest) -> Result<(u16, String), String> {
    let body = proto::encode_snappy(req);
    try_post(
        &node.url("/api/v1/write"),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        &body,
    )
    .map(|(code, body)| (code, String::from_utf8_lossy(&body).into_owned()))
    .map_err(|e| e.to_string())
}

/// Builds one remote-write series from label pairs and (timestamp ms, value) samples.
pub fn ts(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> proto::TimeSeries {
    let mut labels: Vec<proto::Label> = labels
        .iter()
        .map(|(n, v)| proto::Label {
            name: n.to_string(),
            value: v.to_string(),
        })
        .collect();
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    proto::TimeSeries {
        labels,
        samples: samples
            .iter()
            .map(|&(timestamp, value)| proto::Sample { value, timestamp })
            .collect(),
        ..Default::default()
    }
}

/// One remote-write request of `series` series of metric `name`, told apart by a
/// `series` label `0..series`, each holding the samples `samples_of(series)` gives.
pub fn numbered_series_request(
    name: &str,
    series: usize,
    samples_of: impl Fn(usize) -> Vec<(i64, f64)>,
) -> proto::WriteRequest {
    let timeseries = (0..series)
        .map(|s| {
            ts(
                &[("__name__", name), ("series", &s.to_string())],
                &samples_of(s),
            )
        })
        .collect();
    proto::WriteRequest {
        timeseries,
        metadata: vec![],
    }
}

/// A series as remote read returns it: sorted (name, value) labels and (ms, value) samples.
pub type ReadSeries = (Vec<(String, String)>, Vec<(i64, f64)>);

/// Remote read (SAMPLES response) of one query at `path` (`/api/v1/read`, or a node's
/// local-only `/internal/v1/read-local`); series come back as the server orders them.
pub fn read_samples_at(
    node: &Node,
    path: &str,
    matchers: Vec<proto::LabelMatcher>,
    start_ms: i64,
    end_ms: i64,
) -> Result<Vec<ReadSeries>, String> {
    read_samples_as(node, None, path, matchers, start_ms, end_ms)
}

/// The cluster credential header of an internal POST of `body` to `path`.
pub fn cluster_credential(keys: &ClusterKeys, path: &str, body: &[u8]) -> (String, String) {
    let value = keys.sign_request("POST", path, body, unix_millis());
    (CLUSTER_AUTH_HEADER.to_string(), value)
}

/// Like `read_samples_at`, with the cluster credential of `keys` (for
/// `/internal/v1/read-local` on a node with a cluster key).
pub fn read_samples_as(
    node: &Node,
    keys: Option<&ClusterKeys>,
    path: &str,
    matchers: Vec<proto::LabelMatcher>,
    start_ms: i64,
    end_ms: i64,
) -> Result<Vec<ReadSeries>, String> {
    use prost::Message;
    let req = proto::ReadRequest {
        queries: vec![proto::Query {
            start_timestamp_ms: start_ms,
            end_timestamp_ms: end_ms,
            matchers,
            hints: None,
        }],
        accepted_response_types: vec![proto::ResponseType::Samples as i32],
    };
    let body = proto::encode_snappy(&req);
    let credential = keys.map(|k| cluster_credential(k, path, &body));
    let mut headers = vec![
        ("Content-Type", "application/x-protobuf"),
        ("Content-Encoding", "snappy"),
        ("X-Prometheus-Remote-Read-Version", "0.1.0"),
    ];
    if let Some((name, value)) = &credential {
        headers.push((name.as_str(), value.as_str()));
    }
    let (status, body) = post(&node.url(path), &headers, &body);
    if status != 200 {
        return Err(format!(
            "remote read answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&body)
        .map_err(|e| format!("snappy: {e}"))?;
    let resp = proto::ReadResponse::decode(raw.as_slice()).map_err(|e| format!("protobuf: {e}"))?;
    let result = resp.results.into_iter().next().ok_or("no query result")?;
    Ok(result
        .timeseries
        .into_iter()
        .map(|ts| {
            let labels = ts.labels.into_iter().map(|l| (l.name, l.value)).collect();
            let samples = ts
                .samples
                .into_iter()
                .map(|s| (s.timestamp, s.value))
                .collect();
            (labels, samples)
        })
        .collect())
}

/// An equality matcher for remote read.
pub fn eq(name: &str, value: &str) -> proto::LabelMatcher {
    proto::LabelMatcher {
        r#type: proto::MatcherType::Eq as i32,
        name: name.into(),
        value: value.into(),
    }
}

/// How one member of a test cluster is started beyond its addresses and peers.
#[derive(Clone, Debug, Default)]
pub struct MemberSetup {
    /// Extra flags; `--gossip-profile fast` is added unless they name a profile.
    pub args: Vec<String>,
    /// Group the process runs under (see `Node::spawn_as`).
    pub gid: Option<u32>,
}

/// A cluster member: a node plus the addresses it was started at, so it can be restarted
/// at the same place.
pub struct ClusterNode {
    pub node: Node,
    pub gossip_addr: String,
    pub peers: Vec<String>,
    pub dir: tempfile::TempDir,
    pub setup: MemberSetup,
    /// Where the process's stderr goes (`start_cluster_logged`); None: inherited.
    pub log_file: Option<PathBuf>,
}

impl ClusterNode {
    fn args(&self) -> Vec<String> {
        let mut args = vec!["--peers".into(), self.peers.join(",")];
        if !self.setup.args.iter().any(|a| a == "--gossip-profile") {
            args.extend(["--gossip-profile".into(), "fast".into()]);
        }
        args.extend(self.setup.args.iter().cloned());
        args
    }

    /// Starts (or restarts) the process at the same addresses and data directory.
    pub fn spawn(&mut self) {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let http = self.node.http_addr.clone();
        self.node = Node::spawn_logged(
            &self.dir.path().join("data"),
            &http,
            &self.gossip_addr,
            &args,
            self.setup.gid,
            self.log_file.as_deref(),
        );
    }

    /// What the process logged so far (empty unless started by `start_cluster_logged`).
    pub fn log(&self) -> String {
        self.log_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

/// Starts `n` nodes on 127.0.0.1 with fast gossip, each listing the others (and any
/// `existing` gossip addresses) as peers; waits until all are ready.
pub fn start_cluster(n: usize, existing: &[String]) -> Vec<ClusterNode> {
    start_cluster_with(n, existing, |_| MemberSetup::default())
}

/// `start_cluster` with member `i` started as `setup(i)` says.
pub fn start_cluster_with(
    n: usize,
    existing: &[String],
    setup: impl Fn(usize) -> MemberSetup,
) -> Vec<ClusterNode> {
    start_members(n, existing, setup, false)
}

/// `start_cluster_with`, each member's log (stderr) kept in `<its dir>/timbala.log` for
/// `ClusterNode::log`.
pub fn start_cluster_logged(
    n: usize,
    existing: &[String],
    setup: impl Fn(usize) -> MemberSetup,
) -> Vec<ClusterNode> {
    start_members(n, existing, setup, true)
}

fn start_members(
    n: usize,
    existing: &[String],
    setup: impl Fn(usize) -> MemberSetup,
    logged: bool,
) -> Vec<ClusterNode> {
    let addrs: Vec<(String, String)> = (0..n)
        .map(|_| {
            (
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
            )
        })
        .collect();
    let mut nodes = Vec::new();
    for (i, (http, gossip)) in addrs.iter().enumerate() {
        let mut peers: Vec<String> = existing.to_vec();
        peers.extend(
            addrs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, g))| g.clone()),
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let mut member = ClusterNode {
            node: Node {
                child: None,
                http_addr: http.clone(),
                data_dir: dir.path().join("data"),
                _tmp: None,
            },
            gossip_addr: gossip.clone(),
            peers,
            log_file: logged.then(|| dir.path().join("timbala.log")),
            dir,
            setup: setup(i),
        };
        member.spawn();
        nodes.push(member);
    }
    for member in &nodes {
        member.node.wait_ready(Duration::from_secs(60));
    }
    nodes
}

/// Whether the program `name` (from a Debian package that `install_script` installs) can
/// be run. Under CI (`CI` set) its absence fails the test; elsewhere the test is skipped
/// with a message on stderr.
pub fn tool_available(name: &str, install_script: &str) -> bool {
    tool_with_flag_available(name, "--version", install_script)
}

/// `tool_available` for a program that reports its version with `version_flag` (nginx:
/// `-v`) and fails on `--version`.
pub fn tool_with_flag_available(name: &str, version_flag: &str, install_script: &str) -> bool {
    use std::io::Write as _;
    let found = Command::new(name)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    let under_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    assert!(
        !under_ci,
        "{name} is missing under CI: {install_script} should have installed it"
    );
    // Written to the process's stderr directly: the test harness captures `eprintln!`
    // of passing tests, and a skip must be visible.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {name} not found (install with {install_script})"
    );
    false
}

/// Prometheus must be installed (scripts/install-prometheus.sh); under CI its absence
/// is a failure, elsewhere the test is skipped with a message.
pub fn prometheus_available() -> bool {
    tool_available("prometheus", "scripts/install-prometheus.sh")
}

/// A Prometheus server (Debian's `prometheus`) on 127.0.0.1, killed when dropped.
pub struct Prometheus {
    child: Child,
    /// Its HTTP port: its API, and its own metrics at `/metrics`.
    pub port: u16,
    _data: tempfile::TempDir,
}

impl Prometheus {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus with a `prometheus.yml` written into `config_dir` (where relative
/// paths in it resolve): scraping itself every second as job `self`, followed by
/// `remote_config` (its `remote_write`/`remote_read` sections).
pub fn start_prometheus(config_dir: &Path, remote_config: &str) -> Prometheus {
    start_prometheus_with(config_dir, remote_config, &[])
}

/// `start_prometheus` with extra command-line flags (feature flags, receivers).
pub fn start_prometheus_with(config_dir: &Path, remote_config: &str, flags: &[&str]) -> Prometheus {
    let port = free_port();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n    \
         static_configs:\n      - targets: ['127.0.0.1:{port}']\n{remote_config}"
    );
    let path = config_dir.join("prometheus.yml");
    std::fs::write(&path, config).expect("write prometheus.yml");
    let data = tempfile::tempdir().expect("temp dir");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", path.display()))
        .arg(format!("--storage.tsdb.path={}", data.path().display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .args(flags)
        .stdin(Stdio::null())
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        port,
        _data: data,
    }
}

/// Value of an unlabelled metric line (`name value`) or of the first line starting with
/// `prefix` in a text exposition.
pub fn metric_value(exposition: &str, prefix: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `data` of a node's `/api/v1/status/cluster`, or None while it cannot answer.
pub fn status(node: &Node) -> Option<serde_json::Value> {
    let (code, body) = try_get(&node.url("/api/v1/status/cluster")).ok()?;
    if code != 200 {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .map(|v| v["data"].clone())
}

/// (local id, join order, alive member ids) as one node sees the cluster.
pub fn seen(node: &Node) -> Option<(String, Vec<String>, BTreeSet<String>)> {
    let s = status(node)?;
    let local = s["local"].as_str()?.to_string();
    let order = s["joinOrder"]
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let alive = s["members"]
        .as_array()?
        .iter()
        .filter(|m| m["state"] == "alive")
        .filter_map(|m| m["id"].as_str().map(String::from))
        .collect();
    Some((local, order, alive))
}

/// Waits until every node sees `n` alive members and the same join order of `n`.
/// Returns the join order.
pub fn wait_converged(nodes: &[&Node], n: usize, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let views: Vec<_> = nodes.iter().map(|node| seen(node)).collect();
        if let Some(Some((_, order, _))) = views.first() {
            let agree = views.iter().all(|v| {
                v.as_ref()
                    .is_some_and(|(_, o, alive)| o == order && o.len() == n && alive.len() == n)
            });
            if agree {
                return order.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no convergence within {limit:?}: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- cluster checks shared by the self-healing tests ----

/// Now as Unix milliseconds (sample timestamps).
pub fn now_ms() -> i64 {
    unix_millis() as i64
}

/// Polls `ok` every 200 ms until it holds; panics naming `what` after `limit`. Returns
/// how long it took (reported by the tests, never asserted).
pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    started.elapsed()
}

/// The node id a node reports for itself.
pub fn local_id(node: &Node) -> String {
    status(node).expect("status")["local"]
        .as_str()
        .expect("local id")
        .to_string()
}

/// The state (`alive`, `suspect`, `down`) `node` sees member `id` in.
pub fn member_state(node: &Node, id: &str) -> Option<String> {
    status(node)?["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"] == id)
        .and_then(|m| m["state"].as_str().map(String::from))
}

/// Whether every node's last re-replication pass ran for the ring it sees now.
pub fn repair_idle(nodes: &[&Node]) -> bool {
    nodes
        .iter()
        .all(|n| status(n).is_some_and(|s| s["repair"]["state"] == "idle"))
}

/// The numbering jump hash uses, as a node reports it: (node id, removed) per slot.
pub fn slots_of(node: &Node) -> Vec<(String, bool)> {
    status(node).expect("status")["slots"]
        .as_array()
        .expect("slots")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().expect("id").to_string(),
                s["removed"].as_bool().expect("removed"),
            )
        })
        .collect()
}

/// Owner ids of a series by placement over reported slots (tombstones kept), 3 replicas.
pub fn owners_by_slots(
    slots: &[(String, bool)],
    labels: &timbala::model::Labels,
) -> BTreeSet<String> {
    ordered_owners_by_slots(slots, labels).into_iter().collect()
}

/// The same owners in placement order (replica 0 first).
pub fn ordered_owners_by_slots(
    slots: &[(String, bool)],
    labels: &timbala::model::Labels,
) -> Vec<String> {
    let key = timbala::cluster::placement::partition_key(labels);
    timbala::cluster::placement::owners_among_slots(key, slots.len(), 3, |i| slots[i].1)
        .into_iter()
        .map(|i| slots[i].0.clone())
        .collect()
}

/// Stores series on one node only, as an already-routed internal write (as a replica
/// that got a forwarded write does), so tests can make replicas disagree.
pub fn write_to_one(node: &Node, batch: &[timbala::model::Series]) {
    let body = timbala::replication::encode_series(batch);
    let (code, answer) = post(
        &node.url("/internal/v1/write"),
        &[("X-Timbala-Routed", "1")],
        &body,
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&answer));
}

/// Labels from the (name, value) pairs a read answers with.
pub fn labels_from_pairs(pairs: &[(String, String)]) -> timbala::model::Labels {
    timbala::model::Labels::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
}

/// The internal read of a node's own copies only (no fan-out).
pub const LOCAL_READ: &str = "/internal/v1/read-local";

/// A node's own copies of one metric's series, by label pairs.
pub type Copies = std::collections::BTreeMap<Vec<(String, String)>, Vec<(i64, f64)>>;

/// Every series of `metric` a node holds itself, with all its samples; signed with
/// `keys` when the cluster has them.
pub fn local_copies_of(node: &Node, keys: Option<&ClusterKeys>, metric: &str) -> Copies {
    read_samples_as(
        node,
        keys,
        LOCAL_READ,
        vec![eq("__name__", metric)],
        0,
        i64::MAX / 2,
    )
    .expect("local read")
    .into_iter()
    .collect()
}

/// The fenced blocks that follow `mark` (an HTML comment naming the test) in the
/// README, in order: the commands and configuration the README shows, for tests that
/// run them as written.
pub fn readme_blocks(mark: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let mut blocks = Vec::new();
    let mut rest = readme.as_str();
    while let Some(at) = rest.find(mark) {
        rest = &rest[at + mark.len()..];
        let open = rest.find("```").expect("a fenced block after the mark");
        let body_start = open + rest[open..].find('\n').expect("fence line") + 1;
        let close = rest[body_start..].find("\n```").expect("closing fence");
        blocks.push(rest[body_start..body_start + close + 1].to_string());
        rest = &rest[body_start + close..];
    }
    blocks
}

/// A cluster whose members all hold one cluster key, with the keys (to sign internal
/// requests such as `LOCAL_READ`) and the directory holding the key file.
pub struct KeyedCluster {
    pub members: Vec<ClusterNode>,
    pub keys: ClusterKeys,
    pub key_dir: tempfile::TempDir,
}

impl KeyedCluster {
    pub fn nodes(&self) -> Vec<&Node> {
        self.members.iter().map(|m| &m.node).collect()
    }
}

/// `n` nodes sharing a fresh random cluster key, each started with `args` too; waits
/// until every node sees all `n` alive in one join order.
pub fn start_keyed_cluster(n: usize, args: &[&str]) -> KeyedCluster {
    let (key_dir, key_file, keys) = new_cluster_key();
    let mut member_args = vec![
        "--cluster-key-file".to_string(),
        key_file.display().to_string(),
    ];
    member_args.extend(args.iter().map(|a| a.to_string()));
    let members = start_cluster_with(n, &[], |_| MemberSetup {
        args: member_args.clone(),
        ..MemberSetup::default()
    });
    let cluster = KeyedCluster {
        members,
        keys,
        key_dir,
    };
    wait_converged(&cluster.nodes(), n, Duration::from_secs(60));
    cluster
}

/// A fresh random cluster key: its file in a new directory, and the parsed keys.
pub fn new_cluster_key() -> (tempfile::TempDir, PathBuf, ClusterKeys) {
    use base64::Engine as _;
    use rand::{RngCore, SeedableRng};
    let mut key = [0u8; 32];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut key);
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("cluster.key");
    std::fs::write(&file, format!("{key}\n")).expect("key file");
    (dir, file, ClusterKeys::parse(&key).expect("key"))
}

/// The strings of a JSON array (warnings, infos, label values); empty for anything else.
pub fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends `signal` to a node's process (SIGSTOP to make it hang rather than die).
pub fn send_signal(node: &Node, signal: i32) {
    // SAFETY: kill(2) on a child process this test started and has not reaped.
    let rc = unsafe { libc::kill(node.pid() as i32, signal) };
    assert_eq!(rc, 0, "kill({}, {signal})", node.pid());
}

/// Resumes a stopped node even when an assertion fails while it is stopped.
pub struct Resume<'a>(pub &'a Node);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        // SAFETY: as in `send_signal`; SIGCONT to a running process does nothing.
        unsafe { libc::kill(self.0.pid() as i32, libc::SIGCONT) };
    }
}
