//! Acceptance tests of degraded reads (ADR 0012) on clusters of real processes on
//! 127.0.0.1: a SIGSTOPped node under query load (no stalled query, every answer
//! complete, a warning naming the node), a gossip partition made with iptables on
//! loopback (answers missing acknowledged samples say so), and a read refused with 503
//! when more nodes are missing than a series has replicas.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use timbala::proto;

const PROBE: &str = "degraded_probe";
const PROBE_SERIES: usize = 40;
/// Samples per probe series, 15 s apart.
const PROBE_SAMPLES: i64 = 21;
/// The bar: 3 s, with room for a loaded 2-core machine.
const LATENCY_BOUND: Duration = Duration::from_secs(5);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Status, JSON body and latency of one GET.
fn get_json(node: &Node, path: &str) -> (u16, serde_json::Value, Duration) {
    let started = Instant::now();
    let (status, body) = get(&node.url(path));
    let elapsed = started.elapsed();
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    (status, json, elapsed)
}

/// Member states by HTTP address, as `node` sees the cluster.
fn states(node: &Node) -> Vec<(String, String)> {
    let Ok((200, body)) = try_get(&node.url("/api/v1/status/cluster")) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    v["data"]["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter(|m| m["joinSeq"].is_u64())
                .map(|m| {
                    let addr = m["httpAddr"].as_str().unwrap_or("").to_string();
                    let state = m["state"].as_str().unwrap_or("").to_string();
                    (addr, state)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn state_of(node: &Node, addr: &str) -> Option<String> {
    states(node)
        .into_iter()
        .find(|(a, _)| a == addr)
        .map(|(_, s)| s)
}

/// Polls `check` every 100 ms until it holds; panics with `what` after `limit`.
fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// Every node sees `n` placed members alive.
fn wait_all_alive(nodes: &[&Node], n: usize) {
    wait_until(
        "every node to see every member alive",
        Duration::from_secs(90),
        || {
            nodes.iter().all(|node| {
                let seen = states(node);
                seen.len() == n && seen.iter().all(|(_, s)| s == "alive")
            })
        },
    );
}

fn write(node: &Node, series: Vec<proto::TimeSeries>) {
    let (status, body) = remote_write(
        node,
        &proto::WriteRequest {
            timeseries: series,
            ..Default::default()
        },
    );
    assert_eq!(status, 204, "write through {}: {body}", node.http_addr);
}

fn metric(node: &Node, series: &str) -> f64 {
    let (_, text) = get(&node.url("/metrics"));
    metric_value(&text, series).unwrap_or_else(|| panic!("{series} missing from /metrics"))
}

/// The probe data: `PROBE_SERIES` series, value = series number, `PROBE_SAMPLES`
/// samples 15 s apart ending at `end_ms`.
fn probe_series(end_ms: i64) -> Vec<proto::TimeSeries> {
    (0..PROBE_SERIES)
        .map(|i| {
            let samples: Vec<(i64, f64)> = (0..PROBE_SAMPLES)
                .rev()
                .map(|k| (end_ms - k * 15_000, i as f64))
                .collect();
            ts(&[("__name__", PROBE), ("series", &i.to_string())], &samples)
        })
        .collect()
}

/// One request of the query load and what makes its answer complete.
#[derive(Clone, Copy, Debug)]
enum Ask {
    /// Every probe sample counted: `PROBE_SERIES * PROBE_SAMPLES`.
    SampleCount,
    /// `sum(probe)` over the probe's range: the sum of the series numbers at each step.
    RangeSum,
    Series,
    Labels,
    LabelValues,
}

const ASKS: [Ask; 5] = [
    Ask::SampleCount,
    Ask::RangeSum,
    Ask::Series,
    Ask::Labels,
    Ask::LabelValues,
];

impl Ask {
    fn path(self, end_ms: i64) -> String {
        let end_s = end_ms as f64 / 1000.0;
        let start_s = end_s - 300.0;
        let matcher = format!("match[]={PROBE}");
        match self {
            Ask::SampleCount => format!(
                "/api/v1/query?query={}&time={end_s}",
                encode(&format!("sum(count_over_time({PROBE}[6m]))"))
            ),
            Ask::RangeSum => format!(
                "/api/v1/query_range?query={}&start={start_s}&end={end_s}&step=30",
                encode(&format!("sum({PROBE})"))
            ),
            Ask::Series => format!("/api/v1/series?{matcher}&start={start_s}&end={end_s}"),
            Ask::Labels => format!("/api/v1/labels?{matcher}&start={start_s}&end={end_s}"),
            Ask::LabelValues => {
                format!("/api/v1/label/series/values?{matcher}&start={start_s}&end={end_s}")
            }
        }
    }

    /// Whether `data` is the complete answer.
    fn complete(self, data: &serde_json::Value) -> bool {
        let series_sum: usize = (0..PROBE_SERIES).sum();
        match self {
            Ask::SampleCount => {
                let want = (PROBE_SERIES as i64 * PROBE_SAMPLES).to_string();
                data["result"][0]["value"][1].as_str() == Some(want.as_str())
            }
            Ask::RangeSum => {
                let want = series_sum.to_string();
                let values = data["result"][0]["values"].as_array();
                values.is_some_and(|points| {
                    points.len() == 11 && points.iter().all(|p| p[1].as_str() == Some(&want))
                })
            }
            Ask::Series => data.as_array().is_some_and(|s| s.len() == PROBE_SERIES),
            Ask::Labels => strings(data) == ["__name__", "series"],
            Ask::LabelValues => strings(data).len() == PROBE_SERIES,
        }
    }
}

/// One answered request of the load.
#[derive(Debug)]
struct Probe {
    node: String,
    ask: Ask,
    /// Since the load started.
    sent_at: Duration,
    latency: Duration,
    status: u16,
    complete: bool,
    warnings: Vec<String>,
}

fn run_load(
    node: Node,
    end_ms: i64,
    origin: Instant,
    stop: Arc<AtomicBool>,
    probes: Arc<Mutex<Vec<Probe>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for ask in ASKS.iter().cycle() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let sent_at = origin.elapsed();
            let (status, json, latency) = get_json(&node, &ask.path(end_ms));
            let probe = Probe {
                node: node.http_addr.clone(),
                ask: *ask,
                sent_at,
                latency,
                status,
                complete: status == 200 && ask.complete(&json["data"]),
                warnings: strings(&json["warnings"]),
            };
            probes.lock().expect("probes").push(probe);
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// `count min p50 p90 p99 max` of latencies, in seconds.
fn distribution(latencies: &mut [Duration]) -> String {
    if latencies.is_empty() {
        return "none".into();
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    format!(
        "n={} min={:.3}s p50={:.3}s p90={:.3}s p99={:.3}s max={:.3}s",
        latencies.len(),
        at(0.0).as_secs_f64(),
        at(0.5).as_secs_f64(),
        at(0.9).as_secs_f64(),
        at(0.99).as_secs_f64(),
        at(1.0).as_secs_f64()
    )
}

/// `n` nodes with the default (LAN) gossip timings, once each sees every member alive.
/// With these timings a stopped node stays alive, then suspect, in the others' views for
/// a few seconds, which is when reads used to wait for it.
fn start_lan_cluster(n: usize) -> Vec<ClusterNode> {
    let cluster = start_cluster_with(n, &[], |_| MemberSetup {
        args: vec!["--gossip-profile".into(), "lan".into()],
        gid: None,
    });
    wait_all_alive(&nodes_of(&cluster), n);
    cluster
}

fn nodes_of(cluster: &[ClusterNode]) -> Vec<&Node> {
    cluster.iter().map(|c| &c.node).collect()
}

#[test]
fn a_stopped_node_neither_stalls_nor_hides_queries() {
    let cluster = start_lan_cluster(3);
    let nodes = nodes_of(&cluster);
    let end_ms = now_ms() / 1000 * 1000 - 30_000;
    write(nodes[0], probe_series(end_ms));
    for node in &nodes {
        for ask in ASKS {
            let (status, json, _) = get_json(node, &ask.path(end_ms));
            assert_eq!(status, 200, "{ask:?} on {}: {json}", node.http_addr);
            assert!(ask.complete(&json["data"]), "{ask:?}: {json}");
            assert!(json["warnings"].is_null(), "{ask:?}: {json}");
        }
    }
    for series in [
        "timbala_fanout_peer_timeouts_total",
        "timbala_fanout_cancelled_requests_total{reason=\"member_down\"}",
        "timbala_fanout_cancelled_requests_total{reason=\"read_ended\"}",
        "timbala_fanout_requests_total{outcome=\"degraded\"}",
        "timbala_fanout_requests_total{outcome=\"failed\"}",
    ] {
        assert_eq!(metric(nodes[0], series), 0.0, "{series} exists at zero");
    }

    let stopped = nodes[2];
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let probes = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = [nodes[0], nodes[1]]
        .iter()
        .map(|n| {
            let handle = Node::handle(&n.http_addr);
            run_load(handle, end_ms, origin, stop.clone(), probes.clone())
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));

    send_signal(stopped, libc::SIGSTOP);
    let resume = Resume(stopped);
    let stopped_at = origin.elapsed();
    std::thread::sleep(Duration::from_secs(30));
    send_signal(stopped, libc::SIGCONT);
    drop(resume);
    let resumed_at = origin.elapsed();

    // Recovered: gossip sees the node alive again and answers carry no warning.
    let recovered = |p: &Probe| p.sent_at > resumed_at && p.warnings.is_empty() && p.complete;
    wait_until(
        "answers without warnings after SIGCONT",
        Duration::from_secs(60),
        || {
            let probes = probes.lock().expect("probes");
            [nodes[0], nodes[1]]
                .iter()
                .all(|n| probes.iter().any(|p| p.node == n.http_addr && recovered(p)))
        },
    );
    let recovered_at = origin.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().expect("load thread");
    }
    for node in &nodes {
        assert_eq!(state_of(node, &stopped.http_addr).as_deref(), Some("alive"));
    }

    let probes = probes.lock().expect("probes");
    let grace = Duration::from_millis(200);
    let mut before = Vec::new();
    let mut during = Vec::new();
    let mut after = Vec::new();
    let mut slowest_while_stopped = std::collections::BTreeMap::new();
    let (mut warned, mut reasons) = (0, std::collections::BTreeMap::new());
    for p in probes.iter() {
        assert_eq!(p.status, 200, "{p:?}");
        assert!(p.complete, "incomplete answer: {p:?}");
        assert!(p.latency < LATENCY_BOUND, "answer too slow: {p:?}");
        let names_stopped = p.warnings.iter().any(|w| w.contains(&stopped.http_addr));
        if p.sent_at + p.latency < stopped_at {
            assert!(p.warnings.is_empty(), "warning before the stop: {p:?}");
            before.push(p.latency);
        } else if p.sent_at > stopped_at + grace && p.sent_at < resumed_at {
            assert!(
                names_stopped,
                "answered without a stopped node, no warning: {p:?}"
            );
            during.push(p.latency);
            let slowest = slowest_while_stopped
                .entry(format!("{:?}", p.ask))
                .or_insert(Duration::ZERO);
            *slowest = (*slowest).max(p.latency);
        } else {
            after.push(p.latency);
        }
        if names_stopped {
            warned += 1;
            for w in &p.warnings {
                let reason = w
                    .split_once('(')
                    .and_then(|(_, r)| r.split_once(')'))
                    .map_or(w.as_str(), |(r, _)| r);
                *reasons.entry(reason.to_string()).or_insert(0) += 1;
            }
        }
    }
    let peer_timeouts = metric(nodes[0], "timbala_fanout_peer_timeouts_total")
        + metric(nodes[1], "timbala_fanout_peer_timeouts_total");
    let degraded = metric(
        nodes[0],
        "timbala_fanout_requests_total{outcome=\"degraded\"}",
    ) + metric(
        nodes[1],
        "timbala_fanout_requests_total{outcome=\"degraded\"}",
    );
    println!(
        "SIGSTOP at {:.1}s, SIGCONT at {:.1}s, answers without warnings again at {:.1}s",
        stopped_at.as_secs_f64(),
        resumed_at.as_secs_f64(),
        recovered_at.as_secs_f64()
    );
    println!("latency before the stop: {}", distribution(&mut before));
    println!("latency while stopped:   {}", distribution(&mut during));
    println!("latency after SIGCONT:   {}", distribution(&mut after));
    println!("slowest answer while stopped, by request: {slowest_while_stopped:?}");
    println!("answers naming the stopped node: {warned}; warnings by reason: {reasons:?}");
    println!("fan-out metrics (two query nodes): {peer_timeouts} peer timeouts, {degraded} degraded reads");
    assert!(!during.is_empty());
    assert!(degraded > 0.0);
}

/// iptables rules that drop traffic between nodes on loopback, removed on drop.
/// Packets are told apart by the group of the socket's owner (`-m owner --gid-owner`):
/// every node runs under a group of its own, so the test's client (root's group)
/// still reaches all of them.
#[derive(Default)]
struct Partition {
    rules: Vec<Vec<String>>,
}

fn iptables(action: &str, rule: &[String]) -> Result<(), String> {
    let output = std::process::Command::new("iptables")
        .args(["-w", "5", action, "OUTPUT"])
        .args(rule)
        .output()
        .map_err(|e| format!("iptables: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

impl Partition {
    /// Drops every packet of `protocols` a process of group `from` sends to one of
    /// `ports` over loopback.
    fn drop_traffic(&mut self, from: u32, protocols: &[&str], ports: &[u16]) {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        for protocol in protocols {
            let rule: Vec<String> = [
                "-o",
                "lo",
                "-p",
                protocol,
                "-m",
                "multiport",
                "--dports",
                &ports.join(","),
                "-m",
                "owner",
                "--gid-owner",
                &from.to_string(),
                "-j",
                "DROP",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            iptables("-I", &rule).expect("insert an iptables rule");
            self.rules.push(rule);
        }
    }

    fn heal(&mut self) {
        for rule in self.rules.drain(..) {
            if let Err(e) = iptables("-D", &rule) {
                eprintln!("could not remove iptables rule {rule:?}: {e}");
            }
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

fn can_use_iptables() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::process::Command::new("iptables")
        .args(["-w", "5", "-L", "OUTPUT", "-n"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// An instant `count by (side) (partition_probe)` on one node.
struct SideCount {
    /// (side, series count), sorted.
    sides: Vec<(String, String)>,
    warnings: Vec<String>,
    infos: Vec<String>,
    latency: Duration,
}

fn count_by_side(node: &Node, t_s: f64) -> SideCount {
    let query = encode("count by (side) (partition_probe)");
    let path = format!("/api/v1/query?query={query}&time={t_s}");
    let (status, json, latency) = get_json(node, &path);
    assert_eq!(status, 200, "{json}");
    let mut sides: Vec<(String, String)> = json["data"]["result"]
        .as_array()
        .expect("vector")
        .iter()
        .map(|s| {
            (
                s["metric"]["side"].as_str().unwrap_or("").to_string(),
                s["value"][1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    sides.sort();
    SideCount {
        sides,
        warnings: strings(&json["warnings"]),
        infos: strings(&json["infos"]),
        latency,
    }
}

fn side_series(side: &str, t_ms: i64) -> Vec<proto::TimeSeries> {
    (0..10)
        .map(|i| {
            ts(
                &[
                    ("__name__", "partition_probe"),
                    ("side", side),
                    ("i", &i.to_string()),
                ],
                &[(t_ms, 1.0)],
            )
        })
        .collect()
}

fn names(notes: &[String], addr: &str) -> bool {
    notes.iter().any(|n| n.contains(addr))
}

#[test]
fn a_gossip_partition_is_named_in_warnings() {
    if !can_use_iptables() {
        eprintln!("SKIPPED: needs root and iptables (scripts/install-iptables.sh)");
        return;
    }
    let group_base = 0x5eed_0000 + (std::process::id() % 0x4000) * 4;
    let group = |i: usize| group_base + i as u32;
    let cluster = start_cluster_with(3, &[], |i| MemberSetup {
        args: Vec::new(),
        gid: Some(group(i)),
    });
    let nodes = nodes_of(&cluster);
    wait_all_alive(&nodes, 3);
    let http_port = |i: usize| port_of(&cluster[i].node.http_addr);
    let ports = |i: usize| [http_port(i), port_of(&cluster[i].gossip_addr)];
    let (a, b, c) = (nodes[0], nodes[1], nodes[2]);

    // Cut c off (gossip and HTTP, both ways) from a and b.
    let mut partition = Partition::default();
    partition.drop_traffic(group(0), &["tcp", "udp"], &ports(2));
    partition.drop_traffic(group(1), &["tcp", "udp"], &ports(2));
    partition.drop_traffic(group(2), &["tcp", "udp"], &[ports(0), ports(1)].concat());
    wait_until(
        "both sides to see the other down",
        Duration::from_secs(30),
        || {
            state_of(a, &c.http_addr).as_deref() == Some("down")
                && state_of(b, &c.http_addr).as_deref() == Some("down")
                && state_of(c, &a.http_addr).as_deref() == Some("down")
                && state_of(c, &b.http_addr).as_deref() == Some("down")
        },
    );

    // Each side acknowledges a write the other cannot see (ADR 0006: hints count).
    let t_ms = now_ms();
    write(c, side_series("c", t_ms));
    write(a, side_series("ab", t_ms));
    let t_s = t_ms as f64 / 1000.0;
    let pair = |side: &str| (side.to_string(), "10".to_string());
    let everything = vec![pair("ab"), pair("c")];

    let majority = count_by_side(a, t_s);
    println!(
        "cut: a answers {:?}, warnings {:?}",
        majority.sides, majority.warnings
    );
    assert_eq!(majority.sides, [pair("ab")]);
    assert!(
        names(&majority.warnings, &c.http_addr),
        "an answer missing acknowledged samples must say so: {:?}",
        majority.warnings
    );
    let cut_off = count_by_side(c, t_s);
    println!(
        "cut: c answers {:?}, warnings {:?}",
        cut_off.sides, cut_off.warnings
    );
    assert_eq!(cut_off.sides, [pair("c")]);
    assert!(names(&cut_off.warnings, &a.http_addr) && names(&cut_off.warnings, &b.http_addr));
    for path in [
        "/api/v1/series?match[]=partition_probe",
        "/api/v1/labels",
        "/api/v1/label/side/values",
    ] {
        let (status, json, _) = get_json(a, path);
        assert_eq!(status, 200, "{path}: {json}");
        assert!(
            names(&strings(&json["warnings"]), &c.http_addr),
            "{path}: {json}"
        );
    }

    // Gossip heals, but a still cannot reach c's HTTP port: a's hints for c stay
    // pending, and a's reads wait for c in vain although gossip shows it alive.
    let mut a_to_c = Partition::default();
    a_to_c.drop_traffic(group(0), &["tcp"], &[http_port(2)]);
    partition.heal();
    wait_all_alive(&nodes, 3);
    wait_until(
        "c's hints to reach a and b",
        Duration::from_secs(30),
        || count_by_side(b, t_s).sides == everything,
    );
    let from_a = count_by_side(a, t_s);
    println!(
        "half-open: a answers {:?} in {:?}, warnings {:?}",
        from_a.sides, from_a.latency, from_a.warnings
    );
    assert_eq!(from_a.sides, everything, "a and b hold every series");
    assert!(
        names(&from_a.warnings, &c.http_addr),
        "answered without c: {:?}",
        from_a.warnings
    );
    assert!(from_a.latency < LATENCY_BOUND, "{:?}", from_a.latency);
    // b hears from everyone, a reports its hints for c, and b itself holds c's side:
    // complete, and the lagging replica is an info rather than a warning.
    let from_b = count_by_side(b, t_s);
    println!(
        "half-open: b answers {:?}, warnings {:?}, infos {:?}",
        from_b.sides, from_b.warnings, from_b.infos
    );
    assert_eq!(from_b.sides, everything);
    assert!(from_b.warnings.is_empty(), "{:?}", from_b.warnings);
    assert!(
        from_b
            .infos
            .iter()
            .any(|i| i.contains(&c.http_addr) && i.contains(&a.http_addr)),
        "c lags behind hints held by a: {:?}",
        from_b.infos
    );

    a_to_c.heal();
    wait_until(
        "complete answers without notes after healing",
        Duration::from_secs(60),
        || {
            nodes.iter().all(|node| {
                let answer = count_by_side(node, t_s);
                answer.sides == everything && answer.warnings.is_empty() && answer.infos.is_empty()
            })
        },
    );
}

#[test]
fn too_many_missing_nodes_refuse_the_read() {
    // LAN gossip: the stopped nodes stay alive in the view for seconds, so the read
    // starts waiting for them and is cancelled when gossip declares them down.
    let cluster = start_lan_cluster(4);
    let nodes = nodes_of(&cluster);
    let t_ms = now_ms();
    write(
        nodes[0],
        vec![ts(&[("__name__", "refusal_probe")], &[(t_ms, 1.0)])],
    );
    let path = format!(
        "/api/v1/query?query=refusal_probe&time={}",
        t_ms as f64 / 1000.0
    );
    let (status, json, _) = get_json(nodes[0], &path);
    assert_eq!(
        (status, json["data"]["result"][0]["value"][1].as_str()),
        (200, Some("1"))
    );

    let _resume: Vec<Resume> = nodes[1..]
        .iter()
        .map(|n| {
            send_signal(n, libc::SIGSTOP);
            Resume(n)
        })
        .collect();
    let (status, json, latency) = get_json(nodes[0], &path);
    println!("with 3 of 4 nodes stopped: {status} after {latency:?}: {json}");
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["errorType"], "unavailable");
    let error = json["error"].as_str().unwrap_or("");
    for n in &nodes[1..] {
        assert!(
            error.contains(&n.http_addr),
            "{} not named: {error}",
            n.http_addr
        );
    }
    assert!(
        latency < Duration::from_secs(30),
        "not refused promptly: {latency:?}"
    );
    let cancelled = metric(
        nodes[0],
        "timbala_fanout_cancelled_requests_total{reason=\"member_down\"}",
    );
    assert!(
        cancelled >= 1.0,
        "requests to nodes declared down are cancelled"
    );
    assert_eq!(
        metric(
            nodes[0],
            "timbala_fanout_requests_total{outcome=\"failed\"}"
        ),
        1.0
    );
    // The label endpoints refuse the same way.
    let (status, json, _) = get_json(nodes[0], "/api/v1/labels");
    assert_eq!(
        (status, json["errorType"].as_str()),
        (503, Some("unavailable"))
    );
}
