//! Crash safety through the real binary: SIGKILL the node while a writer streams, restart
//! it on the same data directory, and read back every sample that was acknowledged.
//! Three kill points: mid-stream, right after a WAL segment rollover, right after a
//! block cut.

mod common;
#[path = "support/remote_read.rs"]
mod remote_read;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{get, metric_value, try_post, Node};
use remote_read::remote_read;
use timbala::proto::{self, MatcherType, ResponseType};

const SERIES: usize = 100;
const SAMPLES_PER_SERIES: usize = 20;
const BASE_MS: i64 = 1_700_000_000_000;
/// Data-time step between samples: 100 batches span 2000 s of data.
const STEP_MS: i64 = 1_000;

fn sample_value(batch: usize, j: usize, series: usize) -> f64 {
    match (batch + j + series) % 97 {
        0 => f64::NAN,
        1 => f64::from_bits(timbala::model::STALE_NAN_BITS),
        _ => (batch * SAMPLES_PER_SERIES + j) as f64 * 0.25 + series as f64,
    }
}

fn sample_time(batch: usize, j: usize) -> i64 {
    BASE_MS + (batch * SAMPLES_PER_SERIES + j) as i64 * STEP_MS
}

/// One remote-write request of 2,000 samples: 20 consecutive samples of 100 series.
fn batch_request(batch: usize) -> proto::WriteRequest {
    common::numbered_series_request("crash_test", SERIES, |s| {
        (0..SAMPLES_PER_SERIES)
            .map(|j| (sample_time(batch, j), sample_value(batch, j, s)))
            .collect()
    })
}

/// Streams batches until stopped or the node goes away; records acknowledged batches.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<usize>>>,
    acked_count: Arc<AtomicUsize>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn start(write_url: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let acked_count = Arc::new(AtomicUsize::new(0));
        let (s, a, c) = (stop.clone(), acked.clone(), acked_count.clone());
        let handle = thread::spawn(move || {
            let headers = [
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", "snappy"),
            ];
            for batch in 0.. {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let body = proto::encode_snappy(&batch_request(batch));
                match try_post(&write_url, &headers, &body) {
                    Ok((code, _)) if (200..300).contains(&code) => {
                        a.lock().unwrap().push(batch);
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok((code, body)) => {
                        panic!(
                            "write of batch {batch} answered {code}: {}",
                            String::from_utf8_lossy(&body)
                        )
                    }
                    // The node was killed under us: the request was not acknowledged.
                    Err(_) => return,
                }
            }
        });
        Writer {
            stop,
            acked,
            acked_count,
            handle: Some(handle),
        }
    }

    fn acked(&self) -> usize {
        self.acked_count.load(Ordering::SeqCst)
    }

    fn finish(mut self) -> Vec<usize> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("writer thread");
        }
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn wal_segments(data: &Path) -> usize {
    std::fs::read_dir(data.join("wal"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .chars()
                        .all(|c| c.is_ascii_digit())
                })
                .count()
        })
        .unwrap_or(0)
}

fn blocks_on_disk(data: &Path) -> usize {
    std::fs::read_dir(data)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().join("meta.json").is_file())
                .count()
        })
        .unwrap_or(0)
}

/// Reads everything back and checks that every acknowledged sample is there, bit-exact.
fn assert_acked_samples_present(node: &Node, acked: &[usize]) {
    let matchers = [(MatcherType::Eq, "__name__", "crash_test")];
    let series = remote_read(
        node,
        &matchers,
        BASE_MS,
        i64::MAX / 2,
        ResponseType::Samples,
    );
    let mut stored: HashMap<(String, i64), u64> = HashMap::new();
    for read in series {
        let id = read
            .labels
            .iter()
            .find(|(n, _)| n == "series")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        for (t, bits) in read.samples {
            stored.insert((id.clone(), t), bits);
        }
    }
    let mut missing = 0;
    for &batch in acked {
        for s in 0..SERIES {
            for j in 0..SAMPLES_PER_SERIES {
                let want = sample_value(batch, j, s).to_bits();
                match stored.get(&(s.to_string(), sample_time(batch, j))) {
                    Some(&got) if got == want => {}
                    _ => missing += 1,
                }
            }
        }
    }
    let total = acked.len() * SERIES * SAMPLES_PER_SERIES;
    println!(
        "acknowledged {} batches ({total} samples); missing or wrong after restart: {missing}",
        acked.len()
    );
    assert_eq!(missing, 0);
}

fn assert_no_corruption(node: &Node) {
    let (status, metrics) = get(&node.url("/metrics"));
    assert_eq!(status, 200);
    let corruptions =
        metric_value(&metrics, "timbala_tsdb_wal_corruptions_total").expect("corruption counter");
    assert_eq!(
        corruptions, 0.0,
        "node reports WAL corruption after restart"
    );
}

/// Starts a node, streams writes until `kill_when` holds, SIGKILLs it, restarts and checks.
fn crash_and_recover(name: &str, kill_when: impl Fn(&Path, usize) -> bool) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let flags = [
        "--wal-segment-size",
        "64KiB",
        "--block-duration",
        "1m",
        "--out-of-order-window",
        "0s",
        // The data is from 2023: keep all of it (retention is measured from the clock).
        "--retention-time",
        "0s",
    ];
    let mut node = Node::start_in(&data, &flags);
    let writer = Writer::start(node.url("/api/v1/write"));
    wait_until(name, Duration::from_secs(120), || {
        kill_when(&data, writer.acked())
    });
    node.kill();
    let acked = writer.finish();
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged before the kill"
    );

    let node = Node::start_in(&data, &flags);
    assert_acked_samples_present(&node, &acked);
    assert_no_corruption(&node);
}

#[test]
fn sigkill_mid_stream_loses_no_acknowledged_sample() {
    crash_and_recover("10 acknowledged batches", |_, acked| acked >= 10);
}

#[test]
fn sigkill_after_wal_segment_rollover_loses_no_acknowledged_sample() {
    crash_and_recover("a second WAL segment", |data, acked| {
        acked >= 1 && wal_segments(data) >= 2
    });
}

#[test]
fn sigkill_after_block_cut_loses_no_acknowledged_sample() {
    crash_and_recover("a block cut", |data, _| blocks_on_disk(data) >= 1);
}
