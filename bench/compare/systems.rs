//! The four systems under test as processes on 127.0.0.1: how each is started with a fresh
//! data directory, when it is ready, where it takes writes and queries, how its data is
//! flushed to its on-disk format, and how it is stopped.
//!
//! Owns: command lines, ports (`Ports`: ten from a base, checked free before a start),
//! readiness and flush protocols of Timbala (one node and a 3-node cluster), Prometheus
//! and VictoriaMetrics. Calls `procstat` and `ureq`.
//!
//! "Blocks" is each system's flushed, query-ready format with its index: Prometheus's and
//! Timbala's admin snapshot (which writes the in-memory head as a block, the same writer as
//! a head cut) and VictoriaMetrics's data directory after `/internal/force_flush`
//! (VictoriaMetrics has no WAL; its `cache/` is left out). "Whole data dir" is the data
//! directory before that flush, write-ahead logs included.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procstat;

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SystemKind {
    Timbala,
    TimbalaCluster,
    Prometheus,
    VictoriaMetrics,
}

impl SystemKind {
    pub const ALL: [SystemKind; 4] = [
        SystemKind::Timbala,
        SystemKind::TimbalaCluster,
        SystemKind::Prometheus,
        SystemKind::VictoriaMetrics,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SystemKind::Timbala => "Timbala",
            SystemKind::TimbalaCluster => "Timbala 3-node",
            SystemKind::Prometheus => "Prometheus",
            SystemKind::VictoriaMetrics => "VictoriaMetrics",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            SystemKind::Timbala => "timbala",
            SystemKind::TimbalaCluster => "cluster",
            SystemKind::Prometheus => "prometheus",
            SystemKind::VictoriaMetrics => "victoria-metrics",
        }
    }
}

/// One process of a running system.
struct Proc {
    child: Child,
    data_dir: PathBuf,
    http: String,
}

pub struct Running {
    pub kind: SystemKind,
    procs: Vec<Proc>,
}

fn agent() -> ureq::Agent {
    crate::http_client::agent(Duration::from_secs(300))
}

/// GET or POST `url`; the status and body, or why not.
pub fn http(method: &str, url: &str) -> Result<(u16, String), String> {
    let agent = agent();
    let resp = match method {
        "POST" => agent.post(url).send_empty(),
        _ => agent.get(url).call(),
    }
    .map_err(|e| format!("{method} {url}: {e}"))?;
    let (status, body) =
        crate::http_client::read_body(resp).map_err(|e| format!("{method} {url}: {e}"))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn spawn(program: &Path, args: &[String], log: &Path) -> Result<Child, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", program.display()))
}

fn fresh_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// The ports of one harness run: `base` and the `Ports::COUNT - 1` after it, one per
/// process and protocol, so that runs given bases at least `COUNT` apart never share one.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    base: u16,
}

impl Ports {
    /// Ports a run takes from its base: HTTP for the single node, the three cluster nodes,
    /// Prometheus and VictoriaMetrics, then gossip (UDP) for the four Timbala nodes.
    pub const COUNT: u16 = 10;
    /// Away from the systems' defaults, so a local Prometheus or Timbala is left alone.
    pub const DEFAULT_BASE: u16 = 29080;

    /// `None` when the range would pass port 65535.
    pub fn new(base: u16) -> Option<Ports> {
        base.checked_add(Self::COUNT - 1).map(|_| Ports { base })
    }

    fn timbala_http(self) -> u16 {
        self.base
    }

    fn cluster_http(self, node: usize) -> u16 {
        self.base + 1 + node as u16
    }

    fn prometheus_http(self) -> u16 {
        self.base + 4
    }

    fn victoria_http(self) -> u16 {
        self.base + 5
    }

    fn timbala_gossip(self) -> u16 {
        self.base + 6
    }

    fn cluster_gossip(self, node: usize) -> u16 {
        self.base + 7 + node as u16
    }

    /// The (port, protocol) pairs `kind` listens on.
    fn of(self, kind: SystemKind) -> Vec<(u16, Protocol)> {
        match kind {
            SystemKind::Timbala => vec![
                (self.timbala_http(), Protocol::Tcp),
                (self.timbala_gossip(), Protocol::Udp),
            ],
            SystemKind::TimbalaCluster => (0..3)
                .flat_map(|n| {
                    [
                        (self.cluster_http(n), Protocol::Tcp),
                        (self.cluster_gossip(n), Protocol::Udp),
                    ]
                })
                .collect(),
            SystemKind::Prometheus => vec![(self.prometheus_http(), Protocol::Tcp)],
            SystemKind::VictoriaMetrics => vec![(self.victoria_http(), Protocol::Tcp)],
        }
    }

    /// Refuses to start `kind` when one of its ports is taken: another run, or a process
    /// an earlier one left behind, would otherwise take the writes and be measured.
    fn check_free(self, kind: SystemKind) -> Result<(), String> {
        for (port, protocol) in self.of(kind) {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let bound = match protocol {
                Protocol::Tcp => std::net::TcpListener::bind(addr).map(drop),
                Protocol::Udp => std::net::UdpSocket::bind(addr).map(drop),
            };
            if let Err(e) = bound {
                return Err(format!(
                    "{} cannot start: {protocol:?} port {port} is taken ({e}); another \
                     bench_compare may be running: give each run its own --port-base",
                    kind.name()
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum Protocol {
    Tcp,
    Udp,
}

fn timbala_args(data: &Path, http: u16, gossip: u16, peers: &[u16]) -> Vec<String> {
    let mut args = vec![
        format!("--data-directory={}", data.display()),
        format!("--http-bind-addr=127.0.0.1:{http}"),
        format!("--gossip-bind-addr=127.0.0.1:{gossip}"),
        "--log-level=warn".to_string(),
        // The flushed-blocks figure takes a snapshot, an admin endpoint.
        "--web-enable-admin-api".to_string(),
        // Answer from the data, not the result cache (ADR 0024), like the others: the
        // dashboard passes repeat identical windows.
        "--query-cache-max-bytes=0".to_string(),
    ];
    if !peers.is_empty() {
        let peers: Vec<String> = peers.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        args.push(format!("--peers={}", peers.join(",")));
    }
    args
}

/// Start commands of one system: (program, args, data dir, HTTP port) per process.
fn commands(
    kind: SystemKind,
    root: &Path,
    timbala: &Path,
    ports: Ports,
) -> Vec<(PathBuf, Vec<String>, PathBuf, u16)> {
    let data = |name: &str| root.join(name);
    match kind {
        SystemKind::Timbala => {
            let d = data("timbala");
            let http = ports.timbala_http();
            let args = timbala_args(&d, http, ports.timbala_gossip(), &[]);
            vec![(timbala.into(), args, d, http)]
        }
        SystemKind::TimbalaCluster => (0..3)
            .map(|n| {
                let d = data(&format!("cluster-{n}"));
                let peers: Vec<u16> = (0..3)
                    .filter(|&p| p != n)
                    .map(|p| ports.cluster_gossip(p))
                    .collect();
                let http = ports.cluster_http(n);
                let args = timbala_args(&d, http, ports.cluster_gossip(n), &peers);
                (timbala.into(), args, d, http)
            })
            .collect(),
        SystemKind::Prometheus => {
            let d = data("prometheus");
            let args = vec![
                format!("--config.file={}", root.join("prometheus.yml").display()),
                format!("--storage.tsdb.path={}", d.display()),
                format!("--web.listen-address=127.0.0.1:{}", ports.prometheus_http()),
                "--web.enable-remote-write-receiver".to_string(),
                "--web.enable-admin-api".to_string(),
                "--log.level=warn".to_string(),
            ];
            vec![("prometheus".into(), args, d, ports.prometheus_http())]
        }
        SystemKind::VictoriaMetrics => {
            let d = data("victoria-metrics");
            let args = vec![
                format!("-storageDataPath={}", d.display()),
                format!("-httpListenAddr=127.0.0.1:{}", ports.victoria_http()),
                "-retentionPeriod=10y".to_string(),
                // Answer queries up to the newest sample and from the data, not a cache,
                // so that every run measures the same work as the other systems.
                "-search.latencyOffset=0s".to_string(),
                "-search.disableCache".to_string(),
                "-loggerLevel=WARN".to_string(),
            ];
            vec![("victoria-metrics".into(), args, d, ports.victoria_http())]
        }
    }
}

fn ready_path(kind: SystemKind) -> &'static str {
    match kind {
        SystemKind::VictoriaMetrics => "/health",
        _ => "/-/ready",
    }
}

impl Running {
    /// Starts `kind` on `ports` with fresh data directories under `root` and waits until
    /// it is ready (for the cluster: until every node sees three alive members and has
    /// finished its formation re-replication). Nothing is wiped or started when one of
    /// its ports is taken.
    pub fn start(
        kind: SystemKind,
        root: &Path,
        timbala: &Path,
        ports: Ports,
    ) -> Result<Running, String> {
        ports.check_free(kind)?;
        std::fs::write(
            root.join("prometheus.yml"),
            "global:\n  scrape_interval: 15s\n",
        )
        .map_err(|e| e.to_string())?;
        let mut running = Running {
            kind,
            procs: Vec::new(),
        };
        for (program, args, data_dir, port) in commands(kind, root, timbala, ports) {
            fresh_dir(&data_dir)?;
            let log = root.join(format!("{}-{port}.log", kind.slug()));
            let child = spawn(&program, &args, &log)?;
            running.procs.push(Proc {
                child,
                data_dir,
                http: format!("http://127.0.0.1:{port}"),
            });
        }
        running.wait_ready()?;
        Ok(running)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let path = ready_path(self.kind);
        for i in 0..self.procs.len() {
            let url = format!("{}{path}", self.procs[i].http);
            while !matches!(http("GET", &url), Ok((200, _))) {
                if let Ok(Some(status)) = self.procs[i].child.try_wait() {
                    return Err(format!("{} exited early: {status}", self.kind.name()));
                }
                if Instant::now() > deadline {
                    return Err(format!("{url} not ready within {READY_TIMEOUT:?}"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if self.kind == SystemKind::TimbalaCluster {
            self.wait_cluster_converged(deadline)?;
        }
        Ok(())
    }

    /// Members the node at `http_base` sees alive and placed, and whether its
    /// re-replication caught up with its ring (`idle`).
    fn membership(&self, http_base: &str) -> (usize, bool) {
        let Ok((200, body)) = http("GET", &format!("{http_base}/api/v1/status/cluster")) else {
            return (0, false);
        };
        let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let alive = status["data"]["members"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
        let joined = status["data"]["joinOrder"].as_array().map_or(0, Vec::len);
        let repaired = status["data"]["repair"]["state"] == "idle";
        (alive.min(joined), repaired)
    }

    /// Waits until every node sees all members alive and has finished the
    /// re-replication pass the cluster's formation started (each node first placed
    /// itself in a smaller ring: after a grace period it copies what it holds to the
    /// owners it gained, ADR 0015). A pass started after the payload began would copy
    /// the samples written so far once more and count them as ingest work; with empty
    /// nodes it copies nothing.
    fn wait_cluster_converged(&self, deadline: Instant) -> Result<(), String> {
        let n = self.procs.len();
        while !self
            .procs
            .iter()
            .all(|p| self.membership(&p.http) == (n, true))
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "cluster did not converge to {n} members with re-replication idle"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Remote-write URLs; a sender spreads its connections over them round-robin.
    pub fn write_urls(&self) -> Vec<String> {
        self.procs
            .iter()
            .map(|p| format!("{}/api/v1/write", p.http))
            .collect()
    }

    /// Where queries go (the first node of a cluster, which fans out).
    pub fn query_base(&self) -> &str {
        &self.procs[0].http
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.child.id()).collect()
    }

    /// CPU-seconds used so far, summed over the processes.
    pub fn cpu_seconds(&self) -> f64 {
        self.pids()
            .into_iter()
            .filter_map(procstat::cpu_seconds)
            .sum()
    }

    /// Peak RSS, summed over the processes.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(procstat::peak_rss_bytes)
            .sum()
    }

    /// RSS now, summed over the processes.
    pub fn rss_bytes(&self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(procstat::rss_bytes)
            .sum()
    }

    /// Size of the data directories as they are (write-ahead logs included, snapshots and
    /// VictoriaMetrics's cache not).
    pub fn data_dir_bytes(&self) -> u64 {
        self.procs
            .iter()
            .map(|p| procstat::dir_size(&p.data_dir, &["snapshots", "cache"]))
            .sum()
    }

    /// Writes everything in memory to the system's block format; the bytes of those blocks.
    pub fn flush_to_blocks(&self) -> Result<u64, String> {
        let mut total = 0;
        for p in &self.procs {
            total += match self.kind {
                SystemKind::VictoriaMetrics => {
                    http("GET", &format!("{}/internal/force_flush", p.http))?;
                    procstat::dir_size(&p.data_dir, &["snapshots", "cache", "flock.lock"])
                }
                _ => snapshot_bytes(p)?,
            };
        }
        Ok(total)
    }

    /// SIGTERM, then SIGKILL if the processes are still there after `STOP_TIMEOUT`.
    pub fn stop(mut self) {
        for p in &self.procs {
            // SAFETY: kill(2) with a pid this harness spawned and still owns (not reaped).
            unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for p in &mut self.procs {
            while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if matches!(p.child.try_wait(), Ok(None)) {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}

/// Prometheus's and Timbala's `POST /api/v1/admin/tsdb/snapshot` (head included): the
/// size of the snapshot it wrote.
fn snapshot_bytes(p: &Proc) -> Result<u64, String> {
    let url = format!("{}/api/v1/admin/tsdb/snapshot", p.http);
    let (status, body) = http("POST", &url)?;
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let name = answer["data"]["name"]
        .as_str()
        .filter(|_| status == 200)
        .ok_or_else(|| format!("snapshot failed: {status} {body}"))?;
    Ok(procstat::dir_size(
        &p.data_dir.join("snapshots").join(name),
        &[],
    ))
}
