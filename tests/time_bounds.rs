//! Time bounds on ingest (ADR 0009) through the real binary: samples far ahead of the
//! node's clock or older than retention are refused with 400 naming the reason, current
//! data (new series too) keeps landing, also 20 s later and after a block cut and a
//! restart, with every earlier sample bit-exact; an owner refuses a routed far-future
//! write, and in a cluster no replica stores what the entry node refused; with the limit
//! off, far-future samples still cannot age out current data or history; and a data
//! directory already holding far-future samples (written through the library as the node
//! did before the limit) starts, keeps its history, moves exactly the far-future samples
//! to the quarantine, logs it, and accepts current data.

mod common;
#[path = "support/remote_read.rs"]
mod remote_read;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{free_port, get, metric_value, post, remote_write, ts, Node};
use remote_read::remote_read;
use timbala::model::{Labels, Sample, Series};
use timbala::proto::{self, MatcherType, ResponseType};
use timbala::storage::Storage;
use timbala::tsdb::block::BlockWriter;
use timbala::tsdb::head::encode_chunks;
use timbala::tsdb::{Tsdb, TsdbMetrics, TsdbOptions};

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
const YEAR: i64 = 365 * DAY;
const INTERVAL: i64 = 10 * SECOND;

/// Series name -> (ms, value bits), as stored or as read back.
type Stored = BTreeMap<String, Vec<(i64, u64)>>;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// The wall clock rounded down to the sample grid.
fn on_grid(t: i64) -> i64 {
    t - t.rem_euclid(INTERVAL)
}

fn value(series: &str, t: i64) -> f64 {
    // Distinct, non-round values so a wrong sample cannot match by accident.
    (t / INTERVAL) as f64 + series.len() as f64 / 7.0
}

/// Writes one sample per series at each time; returns status and body.
fn write(node: &Node, metric: &str, series: &[&str], times: &[i64]) -> (u16, String) {
    let timeseries = series
        .iter()
        .map(|s| {
            let samples: Vec<(i64, f64)> = times.iter().map(|&t| (t, value(s, t))).collect();
            ts(&[("__name__", metric), ("series", s)], &samples)
        })
        .collect();
    remote_write(
        node,
        &proto::WriteRequest {
            timeseries,
            metadata: vec![],
        },
    )
}

/// Writes and records what was sent as expected, asserting 204.
fn write_ok(node: &Node, expected: &mut Stored, metric: &str, series: &[&str], times: &[i64]) {
    let (status, body) = write(node, metric, series, times);
    assert_eq!(status, 204, "current data refused: {body}");
    for s in series {
        let stored = expected.entry(format!("{metric}/{s}")).or_default();
        stored.extend(times.iter().map(|&t| (t, value(s, t).to_bits())));
        // Writing the same sample twice stores it once.
        stored.sort();
        stored.dedup();
    }
}

/// Compares what was read with what is expected, naming the first series that differs
/// (the whole maps are too large to print).
fn assert_same(read: &Stored, expected: &Stored) {
    let names = read.keys().chain(expected.keys());
    for name in names {
        let (got, want) = (read.get(name), expected.get(name));
        assert!(
            got == want,
            "series {name}: read {} samples, expected {}; first difference at {:?}",
            got.map_or(0, Vec::len),
            want.map_or(0, Vec::len),
            got.into_iter()
                .flatten()
                .zip(want.into_iter().flatten())
                .find(|(a, b)| a != b)
        );
    }
}

/// Every sample of metrics matching `tb_.*`, from the beginning of time to far beyond
/// any future sample written.
fn read_everything(node: &Node) -> Stored {
    let matchers = [(MatcherType::Re, "__name__", "tb_.*")];
    remote_read(node, &matchers, 0, i64::MAX / 2, ResponseType::Samples)
        .into_iter()
        .map(|read| {
            let label = |name: &str| {
                read.labels
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            (
                format!("{}/{}", label("__name__"), label("series")),
                read.samples,
            )
        })
        .collect()
}

fn metric(node: &Node, name: &str) -> f64 {
    let (_, text) = get(&node.url("/metrics"));
    metric_value(&text, name).unwrap_or(0.0)
}

fn block_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("meta.json").exists())
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn far_future_samples_are_refused_and_current_data_survives_cut_and_restart() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let flags = ["--block-duration", "1m"];
    let mut node = Node::start_in(&data, &flags);
    let mut expected = Stored::new();
    let series: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let series: Vec<&str> = series.iter().map(String::as_str).collect();

    // Ten minutes of history, in two requests.
    let start = on_grid(now_ms()) - 10 * MINUTE;
    let history: Vec<i64> = (0..60).map(|i| start + i * INTERVAL).collect();
    write_ok(&node, &mut expected, "tb_current", &series, &history[..30]);
    write_ok(&node, &mut expected, "tb_current", &series, &history[30..]);

    // Far-future samples next to a current one: the current one is stored, the others
    // are refused with 400 naming the reason (ADR 0003's per-sample contract).
    let now = now_ms();
    let current = on_grid(now) + INTERVAL;
    let mixed = proto::WriteRequest {
        timeseries: vec![
            ts(
                &[("__name__", "tb_current"), ("series", "0")],
                &[(now + DAY, 1.0)],
            ),
            ts(
                &[("__name__", "tb_future"), ("series", "year")],
                &[(now + YEAR, 2.0)],
            ),
            ts(
                &[("__name__", "tb_current"), ("series", "1")],
                &[(current, value("1", current))],
            ),
        ],
        metadata: vec![],
    };
    let (status, body) = remote_write(&node, &mixed);
    println!("mixed write: {status} {body}");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("too_far_in_future: 2"), "{body}");
    assert!(body.contains("1 samples stored"), "{body}");
    assert!(body.contains("too far in future: series"), "{body}");
    expected
        .get_mut("tb_current/1")
        .expect("series 1")
        .push((current, value("1", current).to_bits()));
    let (status, body) = write(&node, "tb_future", &["day"], &[now_ms() + DAY]);
    println!("far-future write: {status} {body}");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("too_far_in_future: 1") && body.contains("0 samples stored"));

    // Older than retention (15d by default): too_old.
    let (status, body) = write(&node, "tb_old", &["a"], &[now_ms() - 16 * DAY]);
    println!("expired write: {status} {body}");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("too_old: 1"), "{body}");
    let rejected = |reason: &str| {
        metric(
            &node,
            &format!("timbala_ingest_samples_rejected_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(rejected("too_far_in_future"), 3.0);
    assert_eq!(rejected("too_old"), 1.0);

    // An owner does not trust a routed write either.
    let routed = proto::WriteRequest {
        timeseries: vec![ts(
            &[("__name__", "tb_routed"), ("series", "r")],
            &[(current, value("r", current)), (now_ms() + DAY, 3.0)],
        )],
        metadata: vec![],
    };
    let (status, answer) = post(
        &node.url("/internal/v1/write"),
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "snappy"),
            (timbala::peer::ROUTED_HEADER, "1"),
        ],
        &proto::encode_snappy(&routed),
    );
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("JSON outcome");
    println!("routed write: {status} {answer}");
    assert_eq!(status, 200);
    assert_eq!(answer["appended"], 1);
    assert_eq!(
        answer["rejected"],
        serde_json::json!([["too_far_in_future", 1]])
    );
    expected.insert(
        "tb_routed/r".into(),
        vec![(current, value("r", current).to_bits())],
    );

    // Current data keeps landing, brand-new series included, now and 20+ s later.
    let t = on_grid(now_ms()) + 2 * INTERVAL;
    write_ok(&node, &mut expected, "tb_current", &series, &[t]);
    write_ok(&node, &mut expected, "tb_new", &["a", "b"], &[t]);
    thread::sleep(Duration::from_secs(21));
    let t = on_grid(now_ms()) + 2 * INTERVAL;
    write_ok(&node, &mut expected, "tb_current", &series, &[t]);
    write_ok(&node, &mut expected, "tb_late", &["c"], &[t]);
    assert_same(&read_everything(&node), &expected);

    // A block cut (1m blocks, ten minutes of data) and a restart lose nothing.
    wait_for("a block cut", Duration::from_secs(90), || {
        !block_dirs(&data).is_empty()
    });
    println!("blocks before restart: {}", block_dirs(&data).len());
    assert_eq!(node.terminate(), Some(0), "clean exit on SIGTERM");
    let node = Node::start_in(&data, &flags);
    assert_same(&read_everything(&node), &expected);
    let t = on_grid(now_ms()) + 2 * INTERVAL;
    write_ok(&node, &mut expected, "tb_current", &series, &[t]);
    write_ok(&node, &mut expected, "tb_after_restart", &["d"], &[t]);
    assert_same(&read_everything(&node), &expected);
}

/// With the future limit turned off (`0s`, e.g. for forecasts), far-future samples are
/// stored, yet they cannot make current samples too old or age out history: the head
/// cut, its lower bound, the out-of-order window and retention follow the wall clock.
#[test]
fn with_the_limit_off_far_future_samples_cannot_age_out_history() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let flags = [
        "--block-duration",
        "1m",
        "--ingest-max-future",
        "0s",
        "--retention-time",
        "1h",
    ];
    let mut node = Node::start_in(&data, &flags);
    let mut expected = Stored::new();
    let series = ["0", "1", "2"];
    let start = on_grid(now_ms()) - 10 * MINUTE;
    let history: Vec<i64> = (0..60).map(|i| start + i * INTERVAL).collect();
    write_ok(&node, &mut expected, "tb_history", &series, &history);
    let now = on_grid(now_ms());
    write_ok(&node, &mut expected, "tb_history", &["0"], &[now + DAY]);
    write_ok(
        &node,
        &mut expected,
        "tb_forecast",
        &["x"],
        &[now + DAY, now + YEAR],
    );

    thread::sleep(Duration::from_secs(21));
    let t = on_grid(now_ms()) + INTERVAL;
    write_ok(&node, &mut expected, "tb_history", &series, &[t]);
    write_ok(&node, &mut expected, "tb_new", &["n"], &[t]);
    wait_for("a block cut", Duration::from_secs(90), || {
        !block_dirs(&data).is_empty()
    });
    // Let maintenance (cuts, compaction, retention) run a few more rounds.
    thread::sleep(Duration::from_secs(6));
    assert_same(&read_everything(&node), &expected);
    assert_eq!(node.terminate(), Some(0), "clean exit on SIGTERM");
    let node = Node::start_in(&data, &flags);
    assert_same(&read_everything(&node), &expected);
    let t = on_grid(now_ms()) + 2 * INTERVAL;
    write_ok(&node, &mut expected, "tb_history", &series, &[t]);
    write_ok(&node, &mut expected, "tb_after_restart", &["r"], &[t]);
    assert_same(&read_everything(&node), &expected);
}

/// Whether `node` sees `n` alive members and a join order of `n`.
fn sees_cluster_of(node: &Node, n: usize) -> bool {
    let Ok((200, body)) = common::try_get(&node.url("/api/v1/status/cluster")) else {
        return false;
    };
    let Ok(status) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return false;
    };
    let data = &status["data"];
    let alive = data["members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
    let order = data["joinOrder"].as_array().map_or(0, Vec::len);
    alive == n && order == n
}

/// In a 3-node cluster the node a write enters takes the far-future samples out before
/// routing: the client gets one 400 counting each refused sample once, and every replica
/// holds exactly the current samples (local-only reads).
#[test]
fn in_a_cluster_far_future_samples_reach_no_replica() {
    let cluster = common::start_cluster(3, &[]);
    wait_for(
        "a converged 3-node cluster",
        Duration::from_secs(60),
        || cluster.iter().all(|c| sees_cluster_of(&c.node, 3)),
    );
    let now = now_ms();
    let current = on_grid(now);
    let mut timeseries: Vec<proto::TimeSeries> = (0..10)
        .map(|i| {
            let s = i.to_string();
            ts(
                &[("__name__", "tb_cluster"), ("series", &s)],
                &[(current, value(&s, current)), (now + DAY, 1.0)],
            )
        })
        .collect();
    timeseries.push(ts(
        &[("__name__", "tb_cluster"), ("series", "year")],
        &[(now + YEAR, 2.0)],
    ));
    let (status, body) = remote_write(
        &cluster[1].node,
        &proto::WriteRequest {
            timeseries,
            metadata: vec![],
        },
    );
    println!("cluster write: {status} {body}");
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("11 samples rejected (too_far_in_future: 11)"),
        "{body}"
    );
    assert!(body.contains("10 samples stored"), "{body}");
    for member in &cluster {
        let held = common::read_samples_at(
            &member.node,
            "/internal/v1/read-local",
            vec![common::eq("__name__", "tb_cluster")],
            0,
            i64::MAX / 2,
        )
        .expect("local read");
        assert_eq!(held.len(), 10, "{}: {held:?}", member.node.http_addr);
        for (labels, samples) in held {
            let series = &labels.iter().find(|(n, _)| n == "series").expect("label").1;
            let want = vec![(current, value(series, current))];
            assert_eq!(samples, want, "{}: {series}", member.node.http_addr);
        }
    }
}

/// A `timbala` process started by this test with its log captured in a file.
struct LoggedNode {
    child: Child,
    node: Node,
    log: PathBuf,
}

impl LoggedNode {
    fn start(data: &Path, log: &Path) -> LoggedNode {
        let http_addr = format!("127.0.0.1:{}", free_port());
        let log_file = std::fs::File::create(log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_timbala"))
            .arg("--data-directory")
            .arg(data)
            .args(["--http-bind-addr", &http_addr])
            .args(["--gossip-bind-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn timbala");
        let node = Node::handle(&http_addr);
        node.wait_ready(Duration::from_secs(60));
        LoggedNode {
            child,
            node,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for timbala");
        assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
    }
}

impl Drop for LoggedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lib_series(metric: &str, series: &str, times: &[i64]) -> Series {
    Series {
        labels: Labels::from_pairs([("__name__", metric), ("series", series)]),
        samples: times
            .iter()
            .map(|&t| Sample::new(t, value(series, t)))
            .collect(),
    }
}

fn record(expected: &mut Stored, s: &Series) {
    let key = format!(
        "{}/{}",
        s.labels.get("__name__").unwrap_or_default(),
        s.labels.get("series").unwrap_or_default()
    );
    let stored = expected.entry(key).or_default();
    stored.extend(s.samples.iter().map(|x| (x.t, x.v.to_bits())));
    stored.sort();
}

/// Writes a data directory the way a node without the future limit left it: far-future
/// samples in the WAL (through the library's TSDB with no time bounds) and in blocks
/// (one mixing history with far-future samples, one of far-future samples only).
/// Returns the history (what must survive) and the number of far-future samples.
fn poisoned_data_directory(data: &Path, now: i64) -> (Stored, u64) {
    let mut history = Stored::new();
    let mut future = 0u64;
    let grid = |from: i64, to: i64| -> Vec<i64> { (from..to).step_by(INTERVAL as usize).collect() };
    let base = on_grid(now);

    let wal_history: Vec<Series> = (0..5)
        .map(|i| {
            lib_series(
                "tb_wal",
                &i.to_string(),
                &grid(base - 30 * MINUTE, base - MINUTE),
            )
        })
        .collect();
    let wal_future = vec![
        lib_series("tb_wal", "0", &[base + DAY]),
        lib_series(
            "tb_wal_future",
            "year",
            &[base + YEAR, base + YEAR + INTERVAL],
        ),
    ];
    future += 3;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let opts = TsdbOptions {
            dir: data.to_path_buf(),
            ..TsdbOptions::default()
        };
        let tsdb = Tsdb::open(opts, TsdbMetrics::default()).expect("open the TSDB");
        let mut batch = wal_history.clone();
        batch.extend(wal_future);
        let outcome = tsdb.append(batch).await.expect("append");
        assert_eq!(outcome.rejected_total(), 0, "{outcome:?}");
        tsdb.close().expect("close the TSDB");
    });
    for s in &wal_history {
        record(&mut history, s);
    }

    let block_history = lib_series("tb_block", "a", &grid(base - 3 * HOUR, base - 2 * HOUR));
    let mixed_history = lib_series("tb_block", "mixed", &grid(base - 2 * HOUR, base - HOUR));
    let mixed_future = grid(base + DAY, base + DAY + 5 * MINUTE);
    future += mixed_future.len() as u64;
    let mut mixed = mixed_history.clone();
    mixed
        .samples
        .extend(lib_series("tb_block", "mixed", &mixed_future).samples);
    let only_future = lib_series("tb_block", "year", &grid(base + YEAR, base + YEAR + MINUTE));
    future += only_future.samples.len() as u64;
    for block in [vec![block_history.clone(), mixed], vec![only_future]] {
        let mut writer = BlockWriter::new(data).expect("block writer");
        for s in block {
            writer
                .add_series(s.labels.clone(), &encode_chunks(&s.samples))
                .expect("add series");
        }
        writer.finish(2, Vec::new()).expect("finish block");
    }
    record(&mut history, &block_history);
    record(&mut history, &mixed_history);
    (history, future)
}

#[test]
fn a_data_directory_with_far_future_samples_recovers_at_start() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let (mut expected, future) = poisoned_data_directory(&data, now_ms());
    let blocks_before = block_dirs(&data).len();
    assert_eq!(blocks_before, 2);

    let node = LoggedNode::start(&data, &tmp.path().join("first.log"));
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("removed samples beyond the future limit"))
        .unwrap_or_else(|| panic!("no recovery log line in:\n{log}"));
    println!("recovery log line: {line}");
    assert!(line.contains(&format!("samples={future}")), "{line}");
    assert!(line.contains("series=4"), "{line}");
    assert_eq!(
        metric(&node.node, "timbala_tsdb_future_samples_removed_total"),
        future as f64
    );
    // History is all there, bit-exact; no far-future sample is.
    assert_same(&read_everything(&node.node), &expected);
    // The removed samples are kept, as one block outside the loaded ones.
    let quarantined = block_dirs(&data.join("quarantine"));
    assert_eq!(quarantined.len(), 1);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(quarantined[0].join("meta.json")).expect("meta"))
            .expect("meta JSON");
    assert_eq!(meta["stats"]["numSamples"], future);

    // Current data lands, in old and new series, now and after maintenance has run.
    let t = on_grid(now_ms());
    write_ok(&node.node, &mut expected, "tb_wal", &["0", "1"], &[t]);
    write_ok(&node.node, &mut expected, "tb_wal_future", &["year"], &[t]);
    write_ok(&node.node, &mut expected, "tb_fresh", &["x"], &[t]);
    thread::sleep(Duration::from_secs(16));
    let t = on_grid(now_ms()) + INTERVAL;
    write_ok(&node.node, &mut expected, "tb_wal", &["0", "1"], &[t]);
    write_ok(&node.node, &mut expected, "tb_fresh", &["y"], &[t]);
    assert_same(&read_everything(&node.node), &expected);
    node.stop();

    // A second start finds nothing more to remove and keeps everything.
    let node = LoggedNode::start(&data, &tmp.path().join("second.log"));
    assert_eq!(
        metric(&node.node, "timbala_tsdb_future_samples_removed_total"),
        0.0
    );
    assert_eq!(block_dirs(&data.join("quarantine")).len(), 1);
    assert_same(&read_everything(&node.node), &expected);
    node.stop();
}
