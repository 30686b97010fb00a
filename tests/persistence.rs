//! Persistence through the real binary with a 1-minute block duration: blocks are cut,
//! reloaded after a restart, compacted into larger blocks and removed by retention;
//! deleted series stay gone after a restart; a snapshot serves as another node's data.

mod common;
#[path = "support/remote_read.rs"]
mod remote_read;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::thread;
use std::time::{Duration, Instant};

use common::{get, metric_value, post, remote_write, Node};
use remote_read::remote_read;
use timbala::proto::{self, MatcherType, ResponseType};

const SERIES: usize = 50;
/// The first sample's time: an hour before the test started, on the 10 s grid. Samples
/// are measured against the wall clock (future limit, retention; ADR 0009).
static BASE_MS: LazyLock<i64> = LazyLock::new(|| on_grid(wall_clock_ms() - 60 * MINUTE_MS));

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn on_grid(t: i64) -> i64 {
    t - t.rem_euclid(INTERVAL_MS)
}
const INTERVAL_MS: i64 = 10_000;
/// 12 minutes of data at a 10 s interval.
const SAMPLES_PER_SERIES: usize = 72;
const MINUTE_MS: i64 = 60_000;

type Stored = BTreeMap<String, Vec<(i64, u64)>>;

fn value(series: usize, i: usize) -> f64 {
    (series * 1000 + i) as f64 + 0.5
}

/// Writes the data minute by minute (6 samples of every series per request), starting
/// `offset_ms` after `BASE_MS`.
fn write_all(node: &Node, offset_ms: i64) {
    for minute in 0..SAMPLES_PER_SERIES / 6 {
        let timeseries = (0..SERIES)
            .map(|s| {
                let samples: Vec<(i64, f64)> = (minute * 6..minute * 6 + 6)
                    .map(|i| (*BASE_MS + offset_ms + i as i64 * INTERVAL_MS, value(s, i)))
                    .collect();
                common::ts(
                    &[("__name__", "persist"), ("series", &s.to_string())],
                    &samples,
                )
            })
            .collect();
        let (status, body) = remote_write(
            node,
            &proto::WriteRequest {
                timeseries,
                metadata: vec![],
            },
        );
        assert!(
            (200..300).contains(&status),
            "write answered {status}: {body}"
        );
    }
}

fn expected(without_series: Option<usize>) -> Stored {
    (0..SERIES)
        .filter(|&s| Some(s) != without_series)
        .map(|s| {
            let samples = (0..SAMPLES_PER_SERIES)
                .map(|i| (*BASE_MS + i as i64 * INTERVAL_MS, value(s, i).to_bits()))
                .collect();
            (s.to_string(), samples)
        })
        .collect()
}

fn read_all(node: &Node) -> Stored {
    let matchers = [(MatcherType::Eq, "__name__", "persist")];
    remote_read(node, &matchers, 0, i64::MAX / 2, ResponseType::Samples)
        .into_iter()
        .map(|read| {
            let id = read
                .labels
                .into_iter()
                .find(|(n, _)| n == "series")
                .map(|(_, v)| v)
                .unwrap_or_default();
            (id, read.samples)
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct BlockOnDisk {
    min_time: i64,
    max_time: i64,
    level: u64,
    id: String,
}

fn blocks(data: &Path) -> Vec<BlockOnDisk> {
    let mut out: Vec<BlockOnDisk> = std::fs::read_dir(data)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .collect::<Vec<PathBuf>>()
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|dir| dir.extension().is_none_or(|ext| ext != "tmp"))
        .filter_map(|dir| {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("meta.json")).ok()?).ok()?;
            Some(BlockOnDisk {
                min_time: meta["minTime"].as_i64()?,
                max_time: meta["maxTime"].as_i64()?,
                level: meta["compaction"]["level"].as_u64()?,
                id: dir.file_name()?.to_string_lossy().into_owned(),
            })
        })
        .collect();
    out.sort();
    out
}

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

fn restart(node: &mut Node, data: &Path, flags: &[&str]) -> Node {
    assert_eq!(node.terminate(), Some(0), "clean exit on SIGTERM");
    Node::start_in(data, flags)
}

#[test]
fn blocks_compaction_retention_deletion_and_snapshots_survive_restarts() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let flags = [
        "--block-duration",
        "1m",
        "--retention-time",
        "0s",
        "--web-enable-admin-api",
    ];
    let mut node = Node::start_in(&data, &flags);
    write_all(&node, 0);

    // Blocks are cut from the head and adjacent ones compacted into a larger block.
    let on_disk = wait_for(
        "blocks with a compacted one",
        Duration::from_secs(90),
        || {
            let b = blocks(&data);
            (b.len() >= 2 && b.iter().any(|b| b.level >= 2)).then_some(b)
        },
    );
    println!("blocks after writing: {on_disk:?}");
    // A 1m block holds at most 50 s of 10 s samples; a compacted one spans more.
    assert!(on_disk
        .iter()
        .any(|b| b.level >= 2 && b.max_time - b.min_time > MINUTE_MS));
    assert_eq!(read_all(&node), expected(None));

    // Blocks are reloaded after a restart.
    let mut node = restart(&mut node, &data, &flags);
    // The head was checkpointed behind the cut blocks, so the old data can only come back
    // from blocks; compaction may go on meanwhile, so block ids are not compared.
    let (_, metrics) = get(&node.url("/metrics"));
    let loaded = metric_value(&metrics, "timbala_tsdb_blocks_loaded").expect("blocks gauge");
    assert!(loaded >= 1.0, "no blocks loaded at start");
    assert_eq!(read_all(&node), expected(None));

    // Deleted series stay gone after a restart.
    let (status, body) = post(
        &node.url("/api/v1/admin/tsdb/delete_series?match[]=persist%7Bseries%3D%227%22%7D"),
        &[],
        b"",
    );
    assert_eq!(
        status,
        204,
        "delete_series: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(read_all(&node), expected(Some(7)));
    let mut node = restart(&mut node, &data, &flags);
    assert_eq!(read_all(&node), expected(Some(7)));

    // A snapshot directory is a complete data directory for a new node.
    let (status, body) = post(&node.url("/api/v1/admin/tsdb/snapshot"), &[], b"");
    assert_eq!(status, 200, "snapshot: {}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("snapshot JSON");
    let name = answer["data"]["name"].as_str().expect("snapshot name");
    let snapshot_dir = data.join("snapshots").join(name);
    let copy_tmp = tempfile::tempdir().expect("temp dir");
    let copy_dir = copy_tmp.path().join("copy");
    copy_recursively(&snapshot_dir, &copy_dir);
    let mut copy = Node::start_in(&copy_dir, &flags);
    assert_eq!(read_all(&copy), expected(Some(7)));
    copy.terminate();

    // Retention: with 30m, blocks that ended more than 30m before the newest block's end
    // (which is before the wall clock) go. Write 12 more minutes of data starting 20
    // minutes before now, more than half an hour after the first data, so the old blocks
    // fall out while the new data is inside the window (older samples would be refused).
    let retained_flags = ["--block-duration", "1m", "--retention-time", "30m"];
    let node = restart(&mut node, &data, &retained_flags);
    let later_ms = on_grid(wall_clock_ms() - 20 * MINUTE_MS) - *BASE_MS;
    assert!(later_ms >= 40 * MINUTE_MS);
    write_all(&node, later_ms);
    let remaining = wait_for(
        "retention to delete old blocks",
        Duration::from_secs(60),
        || {
            let b = blocks(&data);
            let newest_end = b.iter().map(|b| b.max_time).max()?;
            let cutoff = newest_end - 30 * MINUTE_MS;
            let old_data_gone = b.iter().all(|b| b.min_time >= *BASE_MS + later_ms);
            (newest_end > *BASE_MS + later_ms
                && old_data_gone
                && b.iter().all(|b| b.max_time > cutoff))
            .then_some(b)
        },
    );
    println!("blocks after retention: {remaining:?}");
    let stored = read_all(&node);
    let first = stored
        .values()
        .flat_map(|s| s.first())
        .map(|(t, _)| *t)
        .min()
        .expect("data remains");
    let last = stored
        .values()
        .flat_map(|s| s.last())
        .map(|(t, _)| *t)
        .min()
        .expect("data remains");
    assert!(
        first >= *BASE_MS + later_ms,
        "samples from before the retention window remain"
    );
    assert_eq!(
        last,
        *BASE_MS + later_ms + (SAMPLES_PER_SERIES as i64 - 1) * INTERVAL_MS
    );
    assert_eq!(stored.len(), SERIES, "every series has its recent data");
}

/// Conflicts on one node (ADR 0011): (case, first value, second value, value kept).
/// 3.0 outranks 1.0 (larger bit pattern), and a real value outranks a staleness marker.
fn conflict_cases() -> [(&'static str, f64, f64, f64); 4] {
    let stale = f64::from_bits(timbala::model::STALE_NAN_BITS);
    [
        ("rising", 1.0, 3.0, 3.0),
        ("falling", 3.0, 1.0, 3.0),
        ("stale_first", stale, 0.0, 0.0),
        ("stale_last", 0.0, stale, 0.0),
    ]
}

fn write_case(node: &Node, case: &str, samples: &[(i64, f64)]) -> (u16, String) {
    let series = common::ts(&[("__name__", "conflict"), ("case", case)], samples);
    remote_write(
        node,
        &proto::WriteRequest {
            timeseries: vec![series],
            metadata: vec![],
        },
    )
}

/// case -> value bits stored at `t`.
fn values_at(node: &Node, t: i64) -> BTreeMap<String, u64> {
    let matchers = [(MatcherType::Eq, "__name__", "conflict")];
    remote_read(node, &matchers, t, t, ResponseType::Samples)
        .into_iter()
        .filter_map(|read| {
            let case = read.labels.into_iter().find(|(n, _)| n == "case")?.1;
            let (_, bits) = read.samples.into_iter().find(|&(st, _)| st == t)?;
            Some((case, bits))
        })
        .collect()
}

#[test]
fn conflicting_writes_are_refused_and_resolved_by_the_rule_through_restart_and_compaction() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let flags = ["--block-duration", "1m"];
    let mut node = Node::start_in(&data, &flags);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    // Mid-minute, ten minutes back: well inside the out-of-order window (1h).
    let t0 = (now - 10 * MINUTE_MS) / MINUTE_MS * MINUTE_MS + MINUTE_MS / 2;

    // As in Prometheus: an identical duplicate is harmless, a different value is a 400
    // conflict, whether or not the rule then keeps it.
    for (case, first, second, _) in conflict_cases() {
        assert_eq!(write_case(&node, case, &[(t0, first)]).0, 204, "{case}");
        assert_eq!(write_case(&node, case, &[(t0, first)]).0, 204, "{case}");
        let (status, body) = write_case(&node, case, &[(t0, second)]);
        assert_eq!(status, 400, "{case}: {body}");
        assert!(body.contains("duplicate_timestamp"), "{case}: {body}");
    }
    let mut kept: BTreeMap<String, u64> = conflict_cases()
        .iter()
        .map(|&(case, _, _, kept)| (case.to_string(), kept.to_bits()))
        .collect();
    assert_eq!(values_at(&node, t0), kept, "in the head");

    // The WAL replays to the same values after a SIGKILL.
    node.kill();
    let node = Node::start_in(&data, &flags);
    assert_eq!(values_at(&node, t0), kept, "after WAL replay");

    // Nine more minutes of samples: the head is cut into 1m blocks and compacted.
    let later: Vec<(i64, f64)> = (1..=54).map(|i| (t0 + i * INTERVAL_MS, 1.0)).collect();
    for (case, ..) in conflict_cases() {
        assert_eq!(write_case(&node, case, &later).0, 204, "{case}");
    }
    wait_for("a block holding t0", Duration::from_secs(60), || {
        blocks(&data)
            .iter()
            .any(|b| b.min_time <= t0 && t0 < b.max_time)
            .then_some(())
    });
    assert_eq!(values_at(&node, t0), kept, "from a block");

    // The head cannot see the block's values, so (as in Prometheus) these are accepted;
    // reads merge head and block by the rule: 5.0 outranks 3.0, 2.0 does not.
    assert_eq!(write_case(&node, "rising", &[(t0, 2.0)]).0, 204);
    assert_eq!(write_case(&node, "falling", &[(t0, 5.0)]).0, 204);
    kept.insert("falling".to_string(), 5.0f64.to_bits());
    assert_eq!(values_at(&node, t0), kept, "head merged with a block");

    // The next cut writes them into a block overlapping the first; compaction merges
    // the two by the same rule.
    wait_for(
        "the late samples cut and compacted",
        Duration::from_secs(60),
        || {
            let (_, status) = get(&node.url("/api/v1/status/tsdb"));
            let status: serde_json::Value = serde_json::from_str(&status).ok()?;
            let head_min = status["data"]["headStats"]["minTime"].as_i64()?;
            let holding_t0 = blocks(&data)
                .into_iter()
                .filter(|b| b.min_time <= t0 && t0 < b.max_time)
                .count();
            (head_min > t0 && holding_t0 == 1).then_some(())
        },
    );
    assert_eq!(values_at(&node, t0), kept, "after compaction");
    let mut node = node;
    let node = restart(&mut node, &data, &flags);
    assert_eq!(values_at(&node, t0), kept, "after compaction and a restart");
}

fn copy_recursively(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for entry in std::fs::read_dir(from).expect("read snapshot dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_recursively(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}
