//! Disk faults through the real binary (ADR 0010).
//!
//! - A data directory on a small tmpfs is filled to the last byte: writes get 5xx,
//!   `/-/ready` 503 (`/-/healthy` stays 200); once the space is freed, writes are
//!   accepted again without a restart. No sample of a refused request is ever returned
//!   by a query, and every acknowledged one is there, bit-exact, after a SIGKILL and a
//!   restart. Needs root (mount); skipped with a message otherwise.
//! - A second process on a data directory in use exits non-zero naming the holder and
//!   changes no file there; after a SIGKILL of the first, a restart succeeds.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{eq, free_port, get, metric_value, read_samples_at, remote_write, ts, Node};
use timbala::proto;

const METRIC: &str = "disk_fault_test";
const SERIES: usize = 50;
const SAMPLES_PER_SERIES: usize = 10;

/// The first sample's time: half an hour ago, so every batch a test writes (10 s of data
/// each) is current, neither older than retention nor ahead of the clock.
fn base_ms() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock after 1970");
        now.as_millis() as i64 - 30 * 60 * 1_000
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs mounted for one test; unmounted when dropped, also when the test fails.
struct Tmpfs {
    mountpoint: PathBuf,
}

impl Tmpfs {
    fn mount(mountpoint: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(mountpoint).expect("create the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(mountpoint)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Tmpfs {
            mountpoint: mountpoint.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.mountpoint)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file there: detach it anyway.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

/// A file that takes every free byte of its file system.
struct Filler {
    path: PathBuf,
}

impl Filler {
    /// Writes (or extends) the filler until the file system has no byte left.
    fn fill(path: &Path) -> (Filler, u64) {
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open the filler");
        let mut written = 0u64;
        for chunk in [1 << 20, 4096, 1] {
            let block = vec![0xa5u8; chunk];
            loop {
                match file.write(&block) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("writing the filler: {e}"),
                }
            }
        }
        (
            Filler {
                path: path.to_path_buf(),
            },
            written,
        )
    }

    fn free(self) {
        fs::remove_file(&self.path).expect("remove the filler");
    }
}

fn sample_time(batch: usize, j: usize) -> i64 {
    base_ms() + (batch * SAMPLES_PER_SERIES + j) as i64 * 1_000
}

/// Distinct finite values, so a sample can only match the request that sent it.
fn sample_value(batch: usize, j: usize, series: usize) -> f64 {
    (batch * 1_000_000 + j * 1_000 + series) as f64 * 0.125 + 0.001
}

/// One remote-write request: 10 consecutive samples of 50 series, at times no other
/// batch uses.
fn batch_request(batch: usize) -> proto::WriteRequest {
    common::numbered_series_request(METRIC, SERIES, |s| {
        (0..SAMPLES_PER_SERIES)
            .map(|j| (sample_time(batch, j), sample_value(batch, j, s)))
            .collect()
    })
}

/// What the writes so far were answered.
#[derive(Default)]
struct Ledger {
    acked: Vec<usize>,
    refused: Vec<usize>,
    next: usize,
}

impl Ledger {
    /// Sends the next batch; returns its status and body.
    fn write(&mut self, node: &Node) -> (u16, String) {
        let batch = self.next;
        self.next += 1;
        let (status, body) = remote_write(node, &batch_request(batch));
        match status {
            204 => self.acked.push(batch),
            500..=599 => self.refused.push(batch),
            other => panic!("batch {batch} answered {other}: {body}"),
        }
        (status, body)
    }
}

/// Reads every sample back (remote read) and checks: every acknowledged sample is
/// there bit-exact, and no sample of a refused request is.
fn check_samples(node: &Node, ledger: &Ledger, when: &str) {
    let series = read_samples_at(
        node,
        "/api/v1/read",
        vec![eq("__name__", METRIC)],
        base_ms(),
        sample_time(ledger.next + 1, 0),
    )
    .unwrap_or_else(|e| panic!("{when}: {e}"));
    let mut stored: HashMap<(usize, i64), u64> = HashMap::new();
    for (labels, samples) in series {
        let id: usize = labels
            .iter()
            .find(|(n, _)| n == "series")
            .and_then(|(_, v)| v.parse().ok())
            .expect("series label");
        for (t, v) in samples {
            stored.insert((id, t), v.to_bits());
        }
    }
    let mut missing = 0;
    for &batch in &ledger.acked {
        for s in 0..SERIES {
            for j in 0..SAMPLES_PER_SERIES {
                let want = sample_value(batch, j, s).to_bits();
                if stored.get(&(s, sample_time(batch, j))) != Some(&want) {
                    missing += 1;
                }
            }
        }
    }
    let mut leaked = 0;
    for &batch in &ledger.refused {
        for s in 0..SERIES {
            for j in 0..SAMPLES_PER_SERIES {
                leaked += usize::from(stored.contains_key(&(s, sample_time(batch, j))));
            }
        }
    }
    println!(
        "{when}: {} acknowledged batches ({} samples), {} refused; missing or wrong: \
         {missing}; refused samples visible: {leaked}",
        ledger.acked.len(),
        ledger.acked.len() * SERIES * SAMPLES_PER_SERIES,
        ledger.refused.len()
    );
    assert_eq!(missing, 0, "{when}: acknowledged samples missing");
    assert_eq!(leaked, 0, "{when}: samples of refused requests visible");
}

fn metric(node: &Node, name: &str) -> f64 {
    let (status, text) = get(&node.url("/metrics"));
    assert_eq!(status, 200);
    metric_value(&text, name).unwrap_or_else(|| panic!("no metric {name}"))
}

fn ready_status(node: &Node) -> (u16, String) {
    get(&node.url("/-/ready"))
}

/// One fault: fill the disk, see refusals and not-ready, free it, see recovery.
/// Returns the seconds from freeing the space to the first accepted write.
fn fill_and_free(node: &Node, mnt: &Path, ledger: &mut Ledger, round: usize) -> f64 {
    let (filler, bytes) = Filler::fill(&mnt.join("filler"));
    println!("round {round}: filler took {bytes} bytes");
    // The segment's last page may still take a write or two.
    let (status, body) = loop {
        let (status, body) = ledger.write(node);
        if status != 204 {
            break (status, body);
        }
        assert!(
            ledger.next < 120,
            "round {round}: no write refused on a full disk"
        );
    };
    assert_eq!(status, 503, "a refused write is retryable: {body}");
    assert!(body.contains("No space left on device"), "{body}");
    let (status, body) = ready_status(node);
    assert_eq!(status, 503, "not ready while the disk is full: {body}");
    assert!(body.contains("cannot accept writes"), "{body}");
    assert_eq!(get(&node.url("/-/healthy")).0, 200, "alive all the same");
    assert_eq!(metric(node, "timbala_tsdb_wal_failing"), 1.0);
    // Still full: retries (past the recovery pause) are refused, readiness stays 503.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1_100));
        let (status, body) = ledger.write(node);
        assert!(
            (500..600).contains(&status),
            "disk still full: {status} {body}"
        );
        assert_eq!(ready_status(node).0, 503);
    }
    check_samples(node, ledger, &format!("round {round}, disk full"));

    filler.free();
    let freed = Instant::now();
    let recovered = loop {
        let (status, _) = ledger.write(node);
        if status == 204 {
            break freed.elapsed();
        }
        assert!(
            freed.elapsed() < Duration::from_secs(60),
            "round {round}: writes still refused 60 s after the space was freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (status, body) = ready_status(node);
    assert_eq!(status, 200, "ready again: {body}");
    assert_eq!(metric(node, "timbala_tsdb_wal_failing"), 0.0);
    println!(
        "round {round}: writes accepted and ready {:.2} s after the space was freed",
        recovered.as_secs_f64()
    );
    for _ in 0..5 {
        assert_eq!(ledger.write(node).0, 204);
    }
    check_samples(node, ledger, &format!("round {round}, recovered"));
    recovered.as_secs_f64()
}

#[test]
fn full_disk_refuses_writes_and_recovers_without_restart() {
    if !is_root() {
        println!("SKIPPED full_disk_refuses_writes_and_recovers_without_restart: needs root to mount a tmpfs");
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let mnt = tmp.path().join("mnt");
    let _tmpfs = Tmpfs::mount(&mnt, "8m");
    let data = mnt.join("data");
    let flags = ["--wal-segment-size", "1MiB"];
    let mut node = Node::start_in(&data, &flags);
    let mut ledger = Ledger::default();
    for _ in 0..20 {
        assert_eq!(ledger.write(&node).0, 204);
    }
    let mut times = Vec::new();
    for round in 1..=2 {
        times.push(fill_and_free(&node, &mnt, &mut ledger, round));
    }
    let refusals = metric(&node, "timbala_tsdb_appends_refused_total");
    let recoveries = metric(&node, "timbala_tsdb_wal_recoveries_total");
    let errors = metric(&node, "timbala_tsdb_wal_write_errors_total");
    println!(
        "refused requests {} (node counted {refusals}), recoveries {recoveries}, \
         WAL write errors {errors}, seconds to recover {times:?}",
        ledger.refused.len()
    );
    assert_eq!(recoveries, 2.0);
    assert_eq!(refusals, ledger.refused.len() as f64);

    node.kill();
    let node = Node::start_in(&data, &flags);
    check_samples(&node, &ledger, "after SIGKILL and restart");
    assert_eq!(metric(&node, "timbala_tsdb_wal_corruptions_total"), 0.0);
}

/// (size, mtime, content checksum) of every file under `dir`.
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read dir") {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(path.clone());
            }
            let crc = if meta.is_file() {
                let mut bytes = Vec::new();
                fs::File::open(&path)
                    .and_then(|mut f| f.read_to_end(&mut bytes))
                    .expect("read file");
                crc32c::crc32c(&bytes)
            } else {
                0
            };
            out.insert(path, (meta.len(), meta.modified().expect("mtime"), crc));
        }
    }
    out
}

/// Waits for a child to exit (bounded); returns its exit code and stderr.
fn wait_exit(mut child: std::process::Child, timeout: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the second process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    (status.code(), stderr)
}

#[test]
fn a_second_process_on_a_directory_in_use_exits_and_changes_nothing() -> io::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let mut first = Node::start_in(&data, &[]);
    let probe = |t: i64| proto::WriteRequest {
        timeseries: vec![ts(&[("__name__", "lock_probe")], &[(t, 42.0)])],
        metadata: vec![],
    };
    assert_eq!(remote_write(&first, &probe(base_ms())).0, 204);
    let lock_text = fs::read_to_string(data.join("lock"))?;
    assert_eq!(lock_text.trim(), first.pid().to_string());

    let before = listing(&data);
    let started = Instant::now();
    let second = Command::new(env!("CARGO_BIN_EXE_timbala"))
        .arg("--data-directory")
        .arg(&data)
        .arg("--http-bind-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--gossip-bind-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let (code, stderr) = wait_exit(second, Duration::from_secs(30));
    println!(
        "second process: exit {code:?} after {:.2} s: {}",
        started.elapsed().as_secs_f64(),
        stderr.trim()
    );
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}");
    assert!(stderr.contains("is in use by process"), "{stderr}");
    assert!(stderr.contains(&first.pid().to_string()), "{stderr}");
    let after = listing(&data);
    assert_eq!(
        before, after,
        "the second process changed the data directory"
    );
    println!("{} files unchanged", after.len());

    first.kill();
    let restarted = Node::start_in(&data, &[]);
    let lock_text = fs::read_to_string(data.join("lock"))?;
    assert_eq!(lock_text.trim(), restarted.pid().to_string());
    let got = read_samples_at(
        &restarted,
        "/api/v1/read",
        vec![eq("__name__", "lock_probe")],
        base_ms(),
        base_ms(),
    )
    .expect("read");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, vec![(base_ms(), 42.0)]);
    Ok(())
}
