//! Test support shared by the acceptance tests: start the built `timbala` binary on free
//! ports with its own data directory, wait for readiness, and talk HTTP to it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use timbala::proto;

/// A running `timbala` process. Killed (SIGKILL) when dropped.
pub struct Node {
    child: Option<Child>,
    pub http_addr: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
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

    /// Starts a node on an existing (or new) data directory; the caller keeps it.
    pub fn start_in(data_dir: &Path, extra_args: &[&str]) -> Node {
        let http_addr = format!("127.0.0.1:{}", free_port());
        let gossip_addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_timbala"))
            .arg("--data-directory")
            .arg(data_dir)
            .args([
                "--http-bind-addr",
                &http_addr,
                "--gossip-bind-addr",
                &gossip_addr,
            ])
            .args(["--log-level", "warn"])
            .args(extra_args)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn timbala");
        let node = Node {
            child: Some(child),
            http_addr,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
        };
        node.wait_ready(Duration::from_secs(60));
        node
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

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn read_response(resp: ureq::http::Response<ureq::Body>) -> (u16, Vec<u8>) {
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap_or_default();
    (status, body)
}

pub fn try_get(url: &str) -> Result<(u16, Vec<u8>), ureq::Error> {
    agent().get(url).call().map(read_response)
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
    let body = proto::encode_snappy(req);
    let (status, body) = post(
        &node.url("/api/v1/write"),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        &body,
    );
    (status, String::from_utf8_lossy(&body).into_owned())
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
