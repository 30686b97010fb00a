//! Bar 5, a highly available write path: the README's "Production" section run as
//! written on one machine. Its commands start three nodes (the built binary, on the
//! `PATH` as `timbala`) and Debian's nginx with the repository's
//! `deploy/nginx/timbala.conf`; a Prometheus (Debian's) with the README's
//! `remote_write`/`remote_read` block scrapes itself every second and writes through
//! nginx. One node is restarted (SIGTERM, then the README's command again on the same
//! data directory) while Prometheus writes. Then Prometheus must count no failed and no
//! dropped sample, every sample it scraped over the restart must be readable through
//! nginx and held by the restarted node itself, and remote read through nginx must
//! answer. Free ports replace the README's (9080-9083, 7947-7949); nothing else changes
//! but a 1 s `batch_send_deadline`. Without nginx or Prometheus the test is skipped
//! (failed under `CI=true`), like the other tests that need a Debian package.

#[rustfmt::skip]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    eq, free_port, get, local_id, now_ms, prometheus_available, read_samples_as, readme_blocks,
    remote_write, start_prometheus, tool_with_flag_available, ts, wait_converged, wait_until, Node,
    LOCAL_READ,
};
use timbala::cluster::keys::ClusterKeys;
use timbala::proto;

const RUN_MARK: &str = "<!-- tests/production.rs runs this block -->";
const PROMETHEUS_MARK: &str = "<!-- tests/production.rs uses this block in prometheus.yml -->";

/// The addresses the README's commands use, and the free ones the test puts in their
/// place: the balancer, the nodes' HTTP and the nodes' gossip.
struct Ports {
    substitutions: Vec<(&'static str, String)>,
}

impl Ports {
    const README_BALANCER: &'static str = "127.0.0.1:9080";
    const README_HTTP: [&'static str; 3] = ["127.0.0.1:9081", "127.0.0.1:9082", "127.0.0.1:9083"];
    const README_GOSSIP: [&'static str; 3] = ["127.0.0.1:7947", "127.0.0.1:7948", "127.0.0.1:7949"];

    fn free() -> Ports {
        let readme = [Self::README_BALANCER]
            .into_iter()
            .chain(Self::README_HTTP)
            .chain(Self::README_GOSSIP);
        Ports {
            substitutions: readme
                .map(|addr| (addr, format!("127.0.0.1:{}", free_port())))
                .collect(),
        }
    }

    fn of(&self, readme_addr: &str) -> &str {
        let (_, free) = self
            .substitutions
            .iter()
            .find(|(r, _)| *r == readme_addr)
            .expect("a README address");
        free
    }

    fn balancer(&self) -> &str {
        self.of(Self::README_BALANCER)
    }

    fn http(&self, node: usize) -> &str {
        self.of(Self::README_HTTP[node])
    }

    /// `text` with every README address replaced; each must occur in it (a README that
    /// changed its addresses would otherwise run on ports the test does not know).
    fn substitute(&self, text: &str, expected: &[&str]) -> String {
        for addr in expected {
            assert!(text.contains(addr), "the README block lost {addr}:\n{text}");
        }
        self.substitutions
            .iter()
            .fold(text.to_string(), |t, (readme, free)| {
                t.replace(readme, free)
            })
    }
}

/// A process started from one of the README's `... &` lines, run through bash in the
/// work directory. Stopped with SIGTERM (nginx's master then stops its workers), then
/// SIGKILL, when dropped.
struct Background {
    command: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Background {
    fn spawn(command: &str, work: &Path, path_env: &str, log: PathBuf) -> Background {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open a log file");
        let child = Command::new("bash")
            .args(["-c", &format!("exec {command}")])
            .current_dir(work)
            .env("PATH", path_env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("start `{command}`: {e}"));
        Background {
            command: command.to_string(),
            child: Some(child),
            log,
        }
    }

    /// SIGTERM and wait for the exit (at most a minute, then SIGKILL); the exit code.
    fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Runs the README's script in `work`: each `... &` line is started as a `Background`
/// (so the test can stop and restart it), everything between them runs through
/// `bash -euo pipefail` in order.
fn run_script(script: &str, work: &Path, path_env: &str) -> Vec<Background> {
    let run_foreground = |text: &str| {
        if text.trim().is_empty() {
            return;
        }
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", text])
            .current_dir(work)
            .env("PATH", path_env)
            .stdin(Stdio::null())
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "README commands failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut started = Vec::new();
    let mut pending = String::new();
    for line in script.lines() {
        match line.strip_suffix(" &") {
            Some(command) => {
                run_foreground(&pending);
                pending.clear();
                let log = work.join(format!("background-{}.log", started.len()));
                started.push(Background::spawn(command, work, path_env, log));
            }
            None => {
                pending.push_str(line);
                pending.push('\n');
            }
        }
    }
    run_foreground(&pending);
    started
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `data.result` of an instant query at `at_ms` against `base` (a node, the balancer or
/// Prometheus), or the status and body when it did not succeed.
fn instant(base: &str, promql: &str, at_ms: i64) -> Result<serde_json::Value, String> {
    let url = format!(
        "http://{base}/api/v1/query?query={}&time={}.{:03}",
        encode(promql),
        at_ms.div_euclid(1000),
        at_ms.rem_euclid(1000)
    );
    let (status, body) = get(&url);
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{status} {body}: {e}"))?;
    if status != 200 || json["status"] != "success" {
        return Err(format!("{status} {body}"));
    }
    Ok(json["data"]["result"].clone())
}

/// A series' labels.
type SeriesKey = BTreeMap<String, String>;

/// The series of a range-vector answer: labels -> (ms, value as the API writes it).
fn range_samples(result: &serde_json::Value) -> BTreeMap<SeriesKey, Vec<(i64, String)>> {
    let Some(series) = result.as_array() else {
        return BTreeMap::new();
    };
    series
        .iter()
        .map(|s| {
            let labels = s["metric"]
                .as_object()
                .expect("metric")
                .iter()
                .map(|(n, v)| (n.clone(), v.as_str().expect("label value").to_string()))
                .collect();
            let samples = s["values"]
                .as_array()
                .expect("values")
                .iter()
                .map(|p| {
                    let t = (p[0].as_f64().expect("time") * 1000.0).round() as i64;
                    (t, p[1].as_str().expect("value").to_string())
                })
                .collect();
            (labels, samples)
        })
        .collect()
}

/// Prometheus's staleness marker (a NaN with this bit pattern), which range selectors
/// hide and raw reads return.
const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Value of `name` in a text exposition, summed over its label sets.
fn summed(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn readme_production_setup_keeps_writes_flowing_through_a_node_restart() {
    if !tool_with_flag_available("nginx", "-v", "scripts/install-nginx.sh")
        || !prometheus_available()
    {
        return;
    }
    let script = readme_blocks(RUN_MARK);
    assert_eq!(
        script.len(),
        1,
        "one production command block in the README"
    );
    let prometheus_block = readme_blocks(PROMETHEUS_MARK);
    assert_eq!(prometheus_block.len(), 1, "one prometheus.yml block");

    // The work directory stands for a clone's root: the repository's deploy/ in it,
    // and the built binary on the PATH as `timbala`.
    let work = tempfile::tempdir().expect("temp dir");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::os::unix::fs::symlink(repo.join("deploy"), work.path().join("deploy")).expect("link");
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_timbala"), bin.join("timbala"))
        .expect("link the binary");
    let path_env = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let ports = Ports::free();
    let all_addrs: Vec<&str> = [Ports::README_BALANCER]
        .into_iter()
        .chain(Ports::README_HTTP)
        .chain(Ports::README_GOSSIP)
        .collect();
    let script = ports.substitute(&script[0], &all_addrs);
    let mut started = run_script(&script, work.path(), &path_env);
    let lb_conf = std::fs::read_to_string(work.path().join("lb/timbala.conf")).expect("lb conf");
    for node in 0..3 {
        assert!(
            lb_conf.contains(&format!("server {} ", ports.http(node))),
            "the balancer's upstreams are the nodes:\n{lb_conf}"
        );
    }
    let is_node = |b: &Background| b.command.starts_with("timbala ");
    assert_eq!(started.iter().filter(|b| is_node(b)).count(), 3);
    let lb_index = started
        .iter()
        .position(|b| b.command.starts_with("nginx "))
        .expect("the README starts nginx");
    let node_index: Vec<usize> = (0..started.len())
        .filter(|&i| is_node(&started[i]))
        .collect();

    let nodes: Vec<Node> = (0..3).map(|i| Node::handle(ports.http(i))).collect();
    let balancer = Node::handle(ports.balancer());
    for node in &nodes {
        node.wait_ready(Duration::from_secs(60));
    }
    let node_refs: Vec<&Node> = nodes.iter().collect();
    wait_converged(&node_refs, 3, Duration::from_secs(60));
    wait_until("nginx answers", Duration::from_secs(30), || {
        common::try_get(&balancer.url("/-/ready")).is_ok_and(|(s, _)| s == 200)
    });

    // Prometheus with the README's block, writing through the balancer.
    let write_url = "/api/v1/write\n";
    let block = ports.substitute(&prometheus_block[0], &[Ports::README_BALANCER]);
    assert!(block.contains(write_url), "{block}");
    let block = block.replacen(
        write_url,
        "/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n",
        1,
    );
    let prometheus = start_prometheus(work.path(), &block);
    let prometheus_addr = format!("127.0.0.1:{}", prometheus.port);
    let self_up = "up{job=\"self\"}";
    let took = wait_until(
        "Prometheus's samples through the balancer",
        Duration::from_secs(90),
        || instant(ports.balancer(), self_up, now_ms()).is_ok_and(|r| r[0]["value"][1] == "1"),
    );
    println!("Prometheus's samples queryable through nginx after {took:?}");
    let window_start_ms = now_ms();
    std::thread::sleep(Duration::from_secs(5));

    // Restart the second node as an operator would: SIGTERM, then the same command.
    let restarted = node_index[1];
    let command = started[restarted].command.clone();
    let exit = started[restarted].terminate();
    assert_eq!(exit, Some(0), "a clean exit on SIGTERM");
    let down_since = Instant::now();
    let mut answered_while_down = 0;
    while down_since.elapsed() < Duration::from_secs(5) {
        let answer = instant(ports.balancer(), &format!("count({self_up})"), now_ms());
        assert!(
            answer.is_ok(),
            "a query through nginx with a node down: {answer:?}"
        );
        answered_while_down += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = started[restarted].log.clone();
    started[restarted] = Background::spawn(&command, work.path(), &path_env, log);
    nodes[1].wait_ready(Duration::from_secs(60));
    wait_converged(&node_refs, 3, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(5));

    // The window: from before the restart to now, its ends between two scrapes (half a
    // second after one), so no sample sits on a boundary.
    let last_up = range_samples(
        &instant(&prometheus_addr, &format!("{self_up}[10s]"), now_ms()).expect("Prometheus"),
    );
    let last_scrape = last_up
        .values()
        .next()
        .and_then(|s| s.last())
        .expect("a scrape")
        .0;
    let window_end_ms = last_scrape + 500;
    let window_s = (window_end_ms - window_start_ms) / 1000 + 1;
    let everything = format!("{{job=\"self\"}}[{window_s}s]");
    let in_prometheus =
        range_samples(&instant(&prometheus_addr, &everything, window_end_ms).expect("Prometheus"));
    let total: usize = in_prometheus.values().map(Vec::len).sum();
    assert!(total > 0);
    // Remote write runs behind the scrapes by up to a batch deadline plus retries.
    let mut in_cluster = BTreeMap::new();
    let caught_up = wait_until(
        "every scraped sample through nginx",
        Duration::from_secs(60),
        || {
            in_cluster = instant(ports.balancer(), &everything, window_end_ms)
                .map(|r| range_samples(&r))
                .unwrap_or_default();
            in_cluster == in_prometheus
        },
    );
    println!(
        "window {window_s} s around the restart: {} series, {total} samples in Prometheus, \
         the same (timestamps and values) through nginx {caught_up:?} after the window",
        in_prometheus.len()
    );
    // No gap: Prometheus scraped itself every second throughout, and the cluster has
    // every one of those samples (above).
    let up = in_prometheus
        .iter()
        .find(|(labels, _)| labels.get("__name__").is_some_and(|n| n == "up"))
        .map(|(_, samples)| samples)
        .expect("up{job=\"self\"}");
    let widest_step = up.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap_or(0);
    assert!(
        widest_step < 2_000,
        "Prometheus's own scrapes have a gap: {widest_step} ms"
    );
    println!(
        "up{{job=\"self\"}}: {} samples over the restart, widest step {widest_step} ms",
        up.len()
    );

    // The restarted node holds every one of them itself (hints replayed to it,
    // anti-entropy for anything else).
    let timestamps: BTreeMap<&SeriesKey, Vec<i64>> = in_prometheus
        .iter()
        .map(|(labels, samples)| (labels, samples.iter().map(|(t, _)| *t).collect()))
        .collect();
    let keys = ClusterKeys::load(&work.path().join("cluster.key")).expect("the README's key");
    let mut held = 0;
    let healed = wait_until(
        "the restarted node's own copies",
        Duration::from_secs(120),
        || {
            let Ok(series) = read_samples_as(
                &nodes[1],
                Some(&keys),
                LOCAL_READ,
                vec![eq("job", "self")],
                window_end_ms - window_s * 1000 + 1,
                window_end_ms,
            ) else {
                return false;
            };
            let local: BTreeMap<SeriesKey, Vec<i64>> = series
                .into_iter()
                .map(|(labels, samples)| {
                    let live = samples
                        .into_iter()
                        .filter(|(_, v)| v.to_bits() != STALE_NAN_BITS)
                        .map(|(t, _)| t);
                    (labels.into_iter().collect(), live.collect::<Vec<_>>())
                })
                .filter(|(_, samples)| !samples.is_empty())
                .collect();
            held = local.values().map(Vec::len).sum();
            local.len() == timestamps.len()
                && local
                    .iter()
                    .all(|(labels, t)| timestamps.get(labels) == Some(t))
        },
    );
    println!(
        "the restarted node holds all {held} samples itself ({healed:?} after the check began)"
    );

    // Remote read through the balancer: a probe written (through nginx) ten minutes
    // before Prometheus's own data, where Prometheus asks the cluster.
    let probe_ms = window_start_ms - 600_000;
    let probe = proto::WriteRequest {
        timeseries: vec![ts(&[("__name__", "production_probe")], &[(probe_ms, 42.0)])],
        metadata: vec![],
    };
    let (status, body) = remote_write(&balancer, &probe);
    assert_eq!(status, 204, "{body}");
    let via_remote_read =
        instant(&prometheus_addr, "production_probe", probe_ms).expect("Prometheus");
    assert_eq!(via_remote_read[0]["value"][1], "42", "{via_remote_read}");

    let metrics = get(&prometheus.url("/metrics")).1;
    let figure = |name: &str| summed(&metrics, name);
    let sent = figure("prometheus_remote_storage_samples_total");
    let failed = figure("prometheus_remote_storage_samples_failed_total");
    let dropped = figure("prometheus_remote_storage_samples_dropped_total");
    let retried = figure("prometheus_remote_storage_samples_retried_total");
    let nginx_log = started[lb_index].log();
    let nginx_upstream_errors = nginx_log.lines().filter(|l| l.contains("upstream")).count();
    let (mut hinted, mut delivered) = (0.0, 0.0);
    for node in [&nodes[0], &nodes[2]] {
        let exposition = get(&node.url("/metrics")).1;
        hinted += summed(&exposition, "timbala_handoff_stored_total");
        delivered += summed(&exposition, "timbala_handoff_delivered_total");
    }
    println!(
        "Prometheus: {sent} samples sent, {failed} failed, {dropped} dropped, {retried} retried; \
         nginx logged {nginx_upstream_errors} upstream errors (each retried on another node); \
         {hinted} batches hinted for the restarted node by the others, {delivered} \
         delivered to it; {answered_while_down} \
         queries answered through nginx while it was down"
    );
    assert!(sent > 0.0);
    assert_eq!(failed, 0.0, "Prometheus failed samples");
    assert_eq!(dropped, 0.0, "Prometheus dropped samples");

    // Writes went on while the node was down, so the others hinted them for it, and
    // the log line that says they were all delivered names the node it is about.
    assert!(
        hinted > 0.0 && delivered > 0.0,
        "hints for the restarted node"
    );
    let restarted_id = local_id(&nodes[1]);
    let drained = node_index
        .iter()
        .filter(|&&i| i != restarted)
        .flat_map(|&i| {
            let log = started[i].log();
            log.lines()
                .filter(|l| l.contains("hinted handoff: every queued hint delivered"))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>();
    assert!(!drained.is_empty(), "no node logged delivering its hints");
    for line in &drained {
        assert!(
            line.contains(&format!("target_node={restarted_id}"))
                && line.contains(&format!("peer={}", ports.http(1))),
            "the handoff line names the node it is about: {line}"
        );
    }
    println!("{}", drained[0]);
}
