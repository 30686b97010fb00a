//! End-to-end tests of the TSDB through its public handle and the `Storage` trait.

use super::*;
use crate::model::{stale_nan, MatchOp, Sample};
use crate::storage::RejectReason;

pub(super) const MIN: i64 = 60_000;

pub(super) fn opts(dir: &std::path::Path) -> TsdbOptions {
    TsdbOptions {
        dir: dir.to_path_buf(),
        block_duration_ms: 10 * MIN,
        retention_ms: 0,
        retention_bytes: 0,
        out_of_order_window_ms: 5 * MIN,
        wal_segment_bytes: 64 << 10,
        ..TsdbOptions::default()
    }
}

fn series(pairs: &[(&str, &str)], samples: &[(i64, f64)]) -> Series {
    Series {
        labels: Labels::from_pairs(pairs.iter().copied()),
        samples: samples.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
    }
}

fn up(job: &str, samples: &[(i64, f64)]) -> Series {
    series(&[("__name__", "up"), ("job", job)], samples)
}

fn select_req(matchers: Vec<Matcher>, mint: i64, maxt: i64) -> SelectRequest {
    SelectRequest {
        matchers,
        mint,
        maxt,
        max_samples: 0,
    }
}

async fn select_all(db: &Tsdb, name: &str) -> Vec<Series> {
    db.select(select_req(
        vec![Matcher::equal("__name__", name)],
        i64::MIN,
        i64::MAX,
    ))
    .await
    .unwrap()
}

/// A series with one sample every 15s from `from` to `to` (exclusive), value = t/1000.
fn regular(job: &str, from: i64, to: i64) -> Series {
    let samples: Vec<(i64, f64)> = (from..to)
        .step_by(15_000)
        .map(|t| (t, t as f64 / 1000.0))
        .collect();
    up(job, &samples)
}

#[tokio::test]
async fn append_and_select_with_matchers() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    let out = db
        .append(vec![
            up("api", &[(1_000, 1.0), (2_000, 2.0)]),
            up("db", &[(1_000, 3.0)]),
            series(&[("__name__", "other")], &[(1_000, 4.0)]),
        ])
        .await
        .unwrap();
    assert_eq!(out.appended, 4);
    let got = select_all(&db, "up").await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].labels.get("job"), Some("api"));
    assert_eq!(got[0].samples.len(), 2);
    let not_api = db
        .select(select_req(
            vec![
                Matcher::equal("__name__", "up"),
                Matcher::new(MatchOp::NotEqual, "job", "api").unwrap(),
            ],
            0,
            10_000,
        ))
        .await
        .unwrap();
    assert_eq!(not_api.len(), 1);
    let ranged = db
        .select(select_req(vec![Matcher::equal("job", "api")], 1_500, 2_000))
        .await
        .unwrap();
    assert_eq!(ranged[0].samples, vec![Sample::new(2_000, 2.0)]);
    let mut limited = select_req(vec![Matcher::equal("__name__", "up")], 0, 10_000);
    limited.max_samples = 2;
    assert!(matches!(
        db.select(limited).await,
        Err(SelectError::TooManySamples)
    ));
    let req = LabelRequest {
        matchers: vec![],
        mint: 0,
        maxt: 10_000,
    };
    assert_eq!(
        db.label_names(req.clone()).await.unwrap(),
        vec!["__name__", "job"]
    );
    assert_eq!(
        db.label_values("job".into(), req.clone()).await.unwrap(),
        vec!["api", "db"]
    );
    let with_job = LabelRequest {
        matchers: vec![Matcher::equal("job", "db")],
        ..req
    };
    assert_eq!(db.series(with_job).await.unwrap().len(), 1);
}

#[tokio::test]
async fn append_rules_and_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = TsdbMetrics::default();
    let db = Tsdb::open(opts(dir.path()), metrics.clone()).unwrap();
    db.append(vec![up("a", &[(10 * MIN, 1.0)])]).await.unwrap();
    let out = db
        .append(vec![up(
            "a",
            &[
                (10 * MIN, 1.0), // identical duplicate: accepted, not stored
                (10 * MIN, 2.0), // different value at the same time
                (9 * MIN, 0.5),  // within the out-of-order window
                (4 * MIN, 0.1),  // beyond it
                (11 * MIN, stale_nan()),
            ],
        )])
        .await
        .unwrap();
    assert_eq!(out.appended, 3);
    assert_eq!(out.rejected_total(), 2);
    assert!(out
        .rejected
        .contains(&(RejectReason::DuplicateTimestamp, 1)));
    assert!(out.rejected.contains(&(RejectReason::OutOfOrder, 1)));
    assert!(out.first_rejection.is_some());
    assert_eq!(metrics.rejected_count(RejectReason::OutOfOrder), 1);
    let got = select_all(&db, "up").await;
    let ts: Vec<i64> = got[0].samples.iter().map(|s| s.t).collect();
    assert_eq!(ts, vec![9 * MIN, 10 * MIN, 11 * MIN]);
    assert_eq!(got[0].samples[2].v.to_bits(), stale_nan().to_bits());
}

#[tokio::test]
async fn created_zero_is_stored_only_before_everything_the_series_holds() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    let zero = crate::model::created_zero();
    // A new series: the zero lands at the created time, and is not counted.
    let out = db
        .append(vec![up("a", &[(10 * MIN, zero), (11 * MIN, 4.0)])])
        .await
        .unwrap();
    assert_eq!((out.appended, out.rejected_total()), (1, 0));
    // The same created time again, and an older one within the out-of-order window:
    // the series holds later samples, so neither is stored, and neither is refused.
    let out = db
        .append(vec![up(
            "a",
            &[(9 * MIN, zero), (10 * MIN, zero), (12 * MIN, 6.0)],
        )])
        .await
        .unwrap();
    assert_eq!((out.appended, out.rejected_total()), (1, 0));
    // A restart of the counter: its new created time is after what the series holds.
    let out = db
        .append(vec![up("a", &[(13 * MIN, zero), (14 * MIN, 1.0)])])
        .await
        .unwrap();
    assert_eq!((out.appended, out.rejected_total()), (1, 0));
    let got = select_all(&db, "up").await;
    let a: Vec<(i64, f64)> = got[0].samples.iter().map(|s| (s.t, s.v)).collect();
    assert_eq!(
        a,
        vec![
            (10 * MIN, 0.0),
            (11 * MIN, 4.0),
            (12 * MIN, 6.0),
            (13 * MIN, 0.0),
            (14 * MIN, 1.0)
        ]
    );
}

#[tokio::test]
async fn acknowledged_samples_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
        db.append(vec![regular("a", 0, 5 * MIN), up("b", &[(1, f64::NAN)])])
            .await
            .unwrap();
        db.record_metadata(vec![MetricMetadata {
            metric_family: "up".into(),
            metric_type: "gauge".into(),
            help: "Up".into(),
            unit: String::new(),
        }])
        .await
        .unwrap();
        db.delete_series(&[Matcher::equal("job", "a")], 0, MIN)
            .unwrap();
        // Dropped without close: like a killed process, only fsynced data remains.
    }
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    let got = select_all(&db, "up").await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].samples.len(), 20 - 5);
    assert!(got[1].samples[0].v.is_nan());
    assert_eq!(db.metadata(Some("up".into())).await.unwrap().len(), 1);
    db.append(vec![up("c", &[(1, 1.0)])]).await.unwrap();
    db.close().unwrap();
    assert!(db.append(vec![up("c", &[(2, 1.0)])]).await.is_err());
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    assert_eq!(select_all(&db, "up").await.len(), 3);
}

#[tokio::test]
async fn head_cut_writes_blocks_and_reads_merge() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    db.append(vec![regular("a", 0, 25 * MIN), regular("b", 0, 5 * MIN)])
        .await
        .unwrap();
    db.maintain().unwrap();
    let blocks = db.blocks();
    assert_eq!(blocks.len(), 1);
    assert_eq!(
        (blocks[0].min_time, blocks[0].max_time),
        (0, 10 * MIN - 15_000 + 1)
    );
    assert_eq!(blocks[0].num_series, 2);
    assert_eq!(blocks[0].num_samples, 40 + 20);
    let got = select_all(&db, "up").await;
    assert_eq!(got[0].samples.len(), 100);
    assert!(got[0].samples.windows(2).all(|w| w[0].t < w[1].t));
    assert_eq!(got[1].samples.len(), 20);
    // After a restart the WAL checkpoint and the block give the same answer.
    drop(db);
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    let again = select_all(&db, "up").await;
    assert_eq!(again, got);
    // Too old for the head now: before the cut boundary minus the OOO window.
    let out = db.append(vec![up("a", &[(MIN, 1.0)])]).await.unwrap();
    assert_eq!(out.rejected, vec![(RejectReason::TooOld, 1)]);
}

#[tokio::test]
async fn compaction_merges_and_retention_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.out_of_order_window_ms = 0;
    let db = Tsdb::open(o.clone(), TsdbMetrics::default()).unwrap();
    db.append(vec![regular("a", 0, 60 * MIN)]).await.unwrap();
    db.maintain().unwrap();
    let blocks = db.blocks();
    // Cuts at 10, 20, 30, 40 minutes; [0,30) compacted to one level-2 block.
    assert!(blocks.iter().any(|b| b.compaction_level == 2), "{blocks:?}");
    let total: u64 = blocks.iter().map(|b| b.num_samples).sum();
    let got = select_all(&db, "up").await;
    assert_eq!(got[0].samples.len(), 240);
    assert!(total < 240);
    drop(db);

    o.retention_ms = 20 * MIN;
    let db = Tsdb::open(o, TsdbMetrics::default()).unwrap();
    db.maintain().unwrap();
    let left = db.blocks();
    assert!(left.len() < blocks.len(), "{left:?}");
    let newest = left.iter().map(|b| b.max_time).max().unwrap();
    assert!(left.iter().all(|b| b.max_time > newest - 20 * MIN));
}

#[tokio::test]
async fn deletion_survives_restart_and_cleaning() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    db.append(vec![regular("a", 0, 25 * MIN), regular("b", 0, 25 * MIN)])
        .await
        .unwrap();
    db.maintain().unwrap();
    assert_eq!(db.blocks().len(), 1);
    db.delete_series(&[Matcher::equal("job", "a")], 0, 12 * MIN)
        .unwrap();
    let check = |got: Vec<Series>| {
        assert_eq!(got[0].samples.len(), 100 - 49);
        assert_eq!(got[1].samples.len(), 100);
    };
    check(select_all(&db, "up").await);
    let early = LabelRequest {
        matchers: vec![Matcher::equal("__name__", "up")],
        mint: 0,
        maxt: 9 * MIN,
    };
    let listed = db.series(early.clone()).await.unwrap();
    assert_eq!(listed.len(), 1, "fully deleted in range: {listed:?}");
    drop(db);
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    check(select_all(&db, "up").await);
    assert_eq!(db.series(early).await.unwrap().len(), 1);
    let before = db.blocks()[0].num_samples;
    db.clean_tombstones().unwrap();
    assert_eq!(db.blocks()[0].num_samples, before - 40);
    check(select_all(&db, "up").await);
}

#[tokio::test]
async fn snapshot_is_a_usable_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let snap = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    db.append(vec![regular("a", 0, 25 * MIN)]).await.unwrap();
    db.maintain().unwrap();
    db.snapshot(&snap.path().join("s"), true).unwrap();
    let copy = Tsdb::open(opts(&snap.path().join("s")), TsdbMetrics::default()).unwrap();
    assert_eq!(copy.blocks().len(), 2);
    assert_eq!(select_all(&copy, "up").await, select_all(&db, "up").await);
}

#[tokio::test]
async fn stats_count_head_cardinality() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    db.append(vec![
        up("a", &[(1, 1.0)]),
        up("b", &[(1, 1.0)]),
        series(&[("__name__", "x"), ("job", "a")], &[(5, 1.0)]),
    ])
    .await
    .unwrap();
    let s = db.stats(1);
    assert_eq!(s.num_series, 3);
    assert_eq!(s.num_label_pairs, 4);
    assert_eq!((s.min_time, s.max_time), (1, 5));
    assert_eq!(s.series_count_by_metric_name, vec![("up".to_string(), 2)]);
    assert_eq!(s.label_value_count_by_label_name.len(), 1);
    assert_eq!(s.series_count_by_label_value_pair.len(), 1);
}

#[tokio::test]
async fn concurrent_appenders_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let job = format!("w{w}");
                    db.append(vec![up(&job, &[(i * 1000, i as f64)])])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    drop(db);
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    let got = select_all(&db, "up").await;
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|s| s.samples.len() == 25));
}

/// Runs inside the child process of `sigkill_loses_no_acknowledged_sample`: appends one
/// sample per batch forever, printing each acknowledged timestamp.
fn crash_child(dir: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    rt.block_on(async {
        let db = Tsdb::open(opts(std::path::Path::new(dir)), TsdbMetrics::default()).unwrap();
        for t in 0.. {
            let out = db
                .append(vec![up("crash", &[(t, t as f64)])])
                .await
                .unwrap();
            assert_eq!(out.appended, 1);
            println!("ack {t}");
        }
    });
}

#[test]
fn sigkill_loses_no_acknowledged_sample() {
    use std::io::BufRead;
    const CHILD_ENV: &str = "TIMBALA_TSDB_CRASH_CHILD";
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        crash_child(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tsdb::tests::sigkill_loses_no_acknowledged_sample",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut last_ack = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let Some(t) = line
            .unwrap()
            .strip_prefix("ack ")
            .map(|t| t.parse::<i64>().unwrap())
        else {
            continue;
        };
        last_ack = Some(t);
        if t >= 200 {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no flush
    child.wait().unwrap();
    let last_ack = last_ack.expect("child acknowledged samples");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got = rt.block_on(async {
        let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
        select_all(&db, "up").await
    });
    let stored = &got[0].samples;
    assert!(stored.len() as i64 > last_ack, "lost acknowledged samples");
    assert!(stored.iter().enumerate().all(|(i, s)| s.t == i as i64));
}

#[tokio::test]
async fn out_of_order_data_behind_a_cut_is_merged_by_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    db.append(vec![regular("a", 0, 25 * MIN), regular("b", 0, 12 * MIN)])
        .await
        .unwrap();
    db.maintain().unwrap();
    assert_eq!(db.blocks().len(), 1);
    // Older than the cut boundary (10m) but inside b's out-of-order window.
    let late = 8 * MIN + 7_500;
    let out = db.append(vec![up("b", &[(late, -1.0)])]).await.unwrap();
    assert_eq!(out.appended, 1, "{out:?}");
    db.maintain().unwrap();
    let blocks = db.blocks();
    assert_eq!(blocks.len(), 1, "overlapping blocks compacted: {blocks:?}");
    assert_eq!(blocks[0].compaction_level, 2);
    let got = select_all(&db, "up").await;
    assert_eq!(got[1].samples.len(), 49);
    assert!(got[1].samples.windows(2).all(|w| w[0].t < w[1].t));
    assert!(got[1].samples.iter().any(|s| s.t == late && s.v == -1.0));
}

/// (timestamp, value bits) of one `up` series.
async fn stored_bits(db: &Tsdb, job: &str) -> Vec<(i64, u64)> {
    let got = db
        .select(select_req(
            vec![Matcher::equal("job", job)],
            i64::MIN,
            i64::MAX,
        ))
        .await
        .unwrap();
    got.iter()
        .flat_map(|s| s.samples.iter().map(|x| (x.t, x.v.to_bits())))
        .collect()
}

#[tokio::test]
async fn conflicts_resolve_one_way_in_head_wal_blocks_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    let at = 20 * MIN;
    // The same two values in both orders: 3.0 outranks 1.0 (ADR 0011). Each second
    // write is a conflict (counted as rejected) whether or not it won.
    for (job, first, second) in [("x", 1.0, 3.0), ("y", 3.0, 1.0)] {
        db.append(vec![up(job, &[(at, first)])]).await.unwrap();
        let out = db.append(vec![up(job, &[(at, second)])]).await.unwrap();
        assert_eq!(out.rejected, vec![(RejectReason::DuplicateTimestamp, 1)]);
        assert_eq!(out.appended, 0);
        let same = db.append(vec![up(job, &[(at, 3.0)])]).await.unwrap();
        assert_eq!((same.appended, same.rejected_total()), (1, 0));
    }
    let winner = vec![(at, 3.0f64.to_bits())];
    assert_eq!(stored_bits(&db, "x").await, winner);
    assert_eq!(stored_bits(&db, "y").await, winner);
    // Dropped without close: the WAL replays the conflicts to the same state.
    drop(db);
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    assert_eq!(stored_bits(&db, "x").await, winner);
    assert_eq!(stored_bits(&db, "y").await, winner);

    // Into a block: the cut at 10m puts z's samples up to 9m45s on disk.
    db.append(vec![regular("a", 0, 25 * MIN), regular("z", 0, 12 * MIN)])
        .await
        .unwrap();
    db.maintain().unwrap();
    assert_eq!(db.blocks().len(), 1);
    // The head cannot see the block's values (as in Prometheus these writes are
    // accepted); head and block are merged by the rule when read: 1e6 outranks the
    // block's 540 at 9m, and 0.0 does not outrank its 525 at 8m45s.
    let (win_t, lose_t) = (9 * MIN, 9 * MIN - 15_000);
    let out = db
        .append(vec![up("z", &[(win_t, 1e6), (lose_t, 0.0)])])
        .await
        .unwrap();
    assert_eq!(out.appended, 2, "{out:?}");
    let check = |got: Vec<(i64, u64)>| {
        assert_eq!(got.len(), 48);
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
        let value_at = |t| got.iter().find(|s| s.0 == t).map(|s| f64::from_bits(s.1));
        assert_eq!(value_at(win_t), Some(1e6));
        assert_eq!(value_at(lose_t), Some(525.0));
    };
    check(stored_bits(&db, "z").await);
    // The next cut writes the head's copies into an overlapping block; compaction
    // merges the two by the same rule.
    db.maintain().unwrap();
    let blocks = db.blocks();
    assert_eq!(blocks.len(), 1, "overlapping blocks compacted: {blocks:?}");
    assert_eq!(blocks[0].compaction_level, 2);
    check(stored_bits(&db, "z").await);
    drop(db);
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    check(stored_bits(&db, "z").await);
    assert_eq!(stored_bits(&db, "x").await, winner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_racing_maintenance_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.block_duration_ms = MIN;
    let db = Tsdb::open(o.clone(), TsdbMetrics::default()).unwrap();
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                let job = format!("w{w}");
                for batch in 0..60i64 {
                    let samples: Vec<(i64, f64)> = (0..10)
                        .map(|i| ((batch * 10 + i) * 1_000, i as f64))
                        .collect();
                    let out = db.append(vec![up(&job, &samples)]).await.unwrap();
                    assert_eq!(out.appended, 10);
                }
            })
        })
        .collect();
    let maintainer = {
        let db = db.clone();
        std::thread::spawn(move || {
            for _ in 0..40 {
                db.maintain().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    maintainer.join().unwrap();
    db.maintain().unwrap();
    assert!(!db.blocks().is_empty());
    let check = |got: Vec<Series>| {
        assert_eq!(got.len(), 3);
        for s in got {
            assert_eq!(s.samples.len(), 600, "{}", s.labels);
            assert!(s.samples.windows(2).all(|w| w[0].t < w[1].t));
        }
    };
    check(select_all(&db, "up").await);
    drop(db);
    let db = Tsdb::open(o, TsdbMetrics::default()).unwrap();
    check(select_all(&db, "up").await);
}

/// (job, [(t, value bits)]) of every `up` series, for comparing what queries see.
async fn visible_up(db: &Tsdb) -> Vec<(String, Vec<(i64, u64)>)> {
    select_all(db, "up")
        .await
        .into_iter()
        .map(|s| {
            let job = s.labels.get("job").unwrap_or_default().to_string();
            let samples = s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect();
            (job, samples)
        })
        .collect()
}

/// Longer than the WAL's pause between recovery attempts in tests.
const AFTER_RETRY: std::time::Duration = std::time::Duration::from_millis(30);

#[tokio::test]
async fn a_refused_append_is_never_visible_and_the_wal_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = TsdbMetrics::default();
    let db = Tsdb::open(opts(dir.path()), metrics.clone()).unwrap();
    db.append(vec![up("a", &[(1_000, 1.0)])]).await.unwrap();
    db.inject_wal_failures(1);
    let err = db
        .append(vec![up("a", &[(2_000, 2.0)]), up("new", &[(2_000, 2.0)])])
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err}");
    assert_eq!(metrics.wal_failing.get(), 1);
    assert_eq!(metrics.appends_refused.get(), 1);
    let before = vec![("a".to_string(), vec![(1_000, 1f64.to_bits())])];
    assert_eq!(visible_up(&db).await, before);

    std::thread::sleep(AFTER_RETRY);
    db.writable().await.unwrap();
    assert_eq!(metrics.wal_failing.get(), 0);
    assert_eq!(metrics.wal_recoveries.get(), 1);
    // Another value at the refused timestamp is no conflict: the refused one is gone.
    db.append(vec![up("a", &[(2_000, 2.5)]), up("new", &[(3_000, 3.0)])])
        .await
        .unwrap();
    let after = vec![
        (
            "a".to_string(),
            vec![(1_000, 1f64.to_bits()), (2_000, 2.5f64.to_bits())],
        ),
        ("new".to_string(), vec![(3_000, 3f64.to_bits())]),
    ];
    assert_eq!(visible_up(&db).await, after);
    drop(db); // like a kill: only what was fsynced remains
    let metrics = TsdbMetrics::default();
    let db = Tsdb::open(opts(dir.path()), metrics.clone()).unwrap();
    assert_eq!(visible_up(&db).await, after);
    assert_eq!(metrics.wal_corruptions.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_through_wal_failures_expose_exactly_what_was_acknowledged() {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let metrics = TsdbMetrics::default();
    let db = Tsdb::open(opts(dir.path()), metrics.clone()).unwrap();
    let injecting = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (db, injecting) = (db.clone(), injecting.clone());
            tokio::spawn(async move {
                let mut acked = BTreeSet::new();
                let mut acked_after_injection = 0;
                let mut i = 0i64;
                while acked_after_injection < 20 {
                    let injection_over = !injecting.load(Ordering::SeqCst);
                    let t = i * 1_000;
                    // Every writer also writes one shared series with the same samples,
                    // so requests stage identical samples concurrently.
                    let batch = vec![up(&format!("w{w}"), &[(t, 1.0)]), up("shared", &[(t, 1.0)])];
                    match db.append(batch).await {
                        Ok(_) => {
                            acked.insert(t);
                            acked_after_injection += u32::from(injection_over);
                        }
                        // Refused at once until the WAL's next recovery attempt.
                        Err(StorageError::Unavailable(_)) => {
                            tokio::time::sleep(std::time::Duration::from_millis(2)).await
                        }
                        Err(e) => panic!("{e}"),
                    }
                    i += 1;
                }
                (format!("w{w}"), acked)
            })
        })
        .collect();
    for round in 1..=5u64 {
        db.inject_wal_failures(1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while metrics.wal_write_errors.get() < round {
            assert!(
                std::time::Instant::now() < deadline,
                "no refusal in round {round}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    injecting.store(false, Ordering::SeqCst);
    let mut expected = Vec::new();
    let mut shared = BTreeSet::new();
    for w in writers {
        let (job, acked) = w.await.unwrap();
        shared.extend(acked.iter().copied());
        expected.push((job, acked));
    }
    expected.push(("shared".to_string(), shared));
    expected.sort();
    let check = |got: Vec<(String, Vec<(i64, u64)>)>| {
        let got: Vec<(String, BTreeSet<i64>)> = got
            .into_iter()
            .map(|(job, samples)| (job, samples.into_iter().map(|(t, _)| t).collect()))
            .collect();
        assert_eq!(got, expected);
    };
    check(visible_up(&db).await);
    drop(db);
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    check(visible_up(&db).await);
}
