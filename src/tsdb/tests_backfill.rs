//! Backfill (samples the head refuses as too old, stored as new blocks) and the window
//! digests anti-entropy compares (ADR 0016).

use super::*;
use crate::model::Sample;
use crate::storage::RejectReason;
use std::sync::atomic::{AtomicI64, Ordering};

const MIN: i64 = 60_000;
/// A wall clock far from the epoch, so retention and bounds are meaningful.
const NOW: i64 = 1_800_000_000_000;

fn opts(dir: &std::path::Path, clock: Arc<AtomicI64>) -> TsdbOptions {
    TsdbOptions {
        dir: dir.to_path_buf(),
        block_duration_ms: 10 * MIN,
        retention_ms: 24 * 60 * MIN,
        retention_bytes: 0,
        out_of_order_window_ms: 5 * MIN,
        wal_segment_bytes: 64 << 10,
        time_bounds: TimeBounds {
            max_future_ms: 10 * MIN,
            max_age_ms: 24 * 60 * MIN,
        },
        clock: Clock::from_fn(move || clock.load(Ordering::Relaxed)),
        exemplars_limit: 0,
    }
}

fn up(job: &str, samples: &[(i64, f64)]) -> Series {
    Series {
        labels: Labels::from_pairs([("__name__", "up"), ("job", job)]),
        samples: samples.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
    }
}

/// One sample a minute over `[from, to)`, value = minutes since the epoch.
fn minutes(job: &str, from: i64, to: i64) -> Series {
    let samples: Vec<(i64, f64)> = (from..to)
        .step_by(MIN as usize)
        .map(|t| (t, (t / MIN) as f64))
        .collect();
    up(job, &samples)
}

async fn samples_of(db: &Tsdb, job: &str) -> Vec<Sample> {
    db.select(SelectRequest {
        matchers: vec![Matcher::equal("job", job)],
        mint: i64::MIN,
        maxt: i64::MAX,
        max_samples: 0,
    })
    .await
    .unwrap()
    .into_iter()
    .next()
    .map(|s| s.samples)
    .unwrap_or_default()
}

/// A database whose head was cut: it refuses samples older than ~NOW - 15 min.
async fn cut_db(dir: &std::path::Path) -> (Tsdb, TsdbMetrics) {
    let clock = Arc::new(AtomicI64::new(NOW));
    let metrics = TsdbMetrics::default();
    let db = Tsdb::open(opts(dir, clock), metrics.clone()).unwrap();
    db.append(vec![minutes("live", NOW - 40 * MIN, NOW)])
        .await
        .unwrap();
    db.maintain().unwrap();
    assert!(!db.blocks().is_empty(), "the head was cut");
    let refused = db
        .append(vec![up("old", &[(NOW - 120 * MIN, 1.0)])])
        .await
        .unwrap();
    assert_eq!(refused.rejected, vec![(RejectReason::TooOld, 1)]);
    (db, metrics)
}

#[tokio::test]
async fn old_samples_the_head_refuses_are_stored_as_a_block_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (db, metrics) = cut_db(dir.path()).await;
    let blocks_before = db.blocks().len();
    let old = minutes("old", NOW - 600 * MIN, NOW - 100 * MIN);
    let out = db.backfill(vec![old.clone()]).await.unwrap().outcome;
    assert_eq!(out.appended, old.samples.len() as u64);
    assert_eq!(out.rejected_total(), 0);
    assert!(db.blocks().len() > blocks_before, "written as new blocks");
    assert_eq!(metrics.samples_backfilled.get(), old.samples.len() as u64);
    assert_eq!(samples_of(&db, "old").await, old.samples);
    // Offering the same samples again writes nothing.
    let blocks = db.blocks();
    let again = db.backfill(vec![old.clone()]).await.unwrap();
    assert_eq!((again.new_samples, again.new_series), (0, 0));
    let again = again.outcome;
    assert_eq!(again.appended, old.samples.len() as u64);
    assert_eq!(db.blocks(), blocks, "no block for samples already held");
    db.close().unwrap();
    drop(db);
    let clock = Arc::new(AtomicI64::new(NOW));
    let db = Tsdb::open(opts(dir.path(), clock), TsdbMetrics::default()).unwrap();
    assert_eq!(samples_of(&db, "old").await, old.samples);
}

#[tokio::test]
async fn only_missing_samples_are_written_and_the_merge_keeps_the_conflict_winner() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = cut_db(dir.path()).await;
    // "live" has blocks for NOW-40..NOW-~10 min. Offer a copy of one old minute with a
    // larger value (wins the conflict rule), one with a smaller value (loses), the rest
    // identical, plus samples older than anything held.
    let held = samples_of(&db, "live").await;
    let block_end = db.blocks().iter().map(|b| b.max_time).max().unwrap();
    let in_block: Vec<Sample> = held.iter().copied().filter(|s| s.t < block_end).collect();
    assert!(in_block.len() >= 3);
    let mut offered: Vec<Sample> = (NOW - 90 * MIN..NOW - 60 * MIN)
        .step_by(MIN as usize)
        .map(|t| Sample::new(t, 7.0))
        .collect();
    offered.extend(in_block.iter().copied());
    offered[30].v = in_block[0].v + 1.0; // wins: the larger bit pattern
    offered[31].v = in_block[1].v - 1.0; // loses
    let out = db
        .backfill(vec![Series {
            labels: Labels::from_pairs([("__name__", "up"), ("job", "live")]),
            samples: offered.clone(),
        }])
        .await
        .unwrap();
    assert_eq!(
        (out.new_samples, out.new_series),
        (31, 1),
        "30 older, 1 conflict won"
    );
    let out = out.outcome;
    assert_eq!(out.rejected_total(), 0);
    assert_eq!(out.appended, offered.len() as u64);
    let mut expected = held.clone();
    expected[0].v = in_block[0].v + 1.0;
    let mut want: Vec<Sample> = offered[..30].to_vec();
    want.extend(expected);
    assert_eq!(samples_of(&db, "live").await, want);
    // Compaction merges the overlapping blocks with the same answer.
    db.maintain().unwrap();
    let metas = db.blocks();
    for pair in metas.windows(2) {
        assert!(
            pair[0].max_time <= pair[1].min_time,
            "overlaps merged: {metas:?}"
        );
    }
    assert_eq!(samples_of(&db, "live").await, want);
    let total: u64 = metas.iter().map(|b| b.num_samples).sum();
    assert!(
        total <= want.len() as u64,
        "no duplicate sample kept in blocks"
    );
}

#[tokio::test]
async fn backfill_keeps_the_time_bounds_and_sends_recent_samples_through_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = cut_db(dir.path()).await;
    let blocks = db.blocks();
    let out = db
        .backfill(vec![up(
            "bounds",
            &[
                (NOW - 25 * 60 * MIN, 1.0), // below retention
                (NOW + 11 * MIN, 2.0),      // too far in the future
                (NOW - MIN / 2, 3.0),       // recent: the head takes it
                (NOW + MIN, 4.0),           // ahead, within the future limit
            ],
        )])
        .await
        .unwrap()
        .outcome;
    assert_eq!(out.appended, 2);
    let mut rejected = out.rejected.clone();
    rejected.sort();
    assert_eq!(
        rejected,
        vec![(RejectReason::TooOld, 1), (RejectReason::TooFarInFuture, 1)]
    );
    assert_eq!(
        db.blocks(),
        blocks,
        "recent samples went to the head, not a block"
    );
    db.close().unwrap();
    drop(db);
    let clock = Arc::new(AtomicI64::new(NOW));
    let db = Tsdb::open(opts(dir.path(), clock), TsdbMetrics::default()).unwrap();
    assert_eq!(
        samples_of(&db, "bounds").await,
        vec![Sample::new(NOW - MIN / 2, 3.0), Sample::new(NOW + MIN, 4.0)],
        "replayed from the WAL"
    );
}

async fn digests(db: &Tsdb, upto: i64) -> Vec<digest::SeriesDigests> {
    db.series_digests(10 * MIN, upto, Box::new(|_| true))
        .await
        .unwrap()
        .series
}

#[tokio::test]
async fn digests_match_across_different_block_splits_and_see_every_difference() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    // Same data: on `a` cut into blocks with a head, on `b` all backfilled at once.
    let (a, _) = cut_db(a_dir.path()).await;
    let clock = Arc::new(AtomicI64::new(NOW));
    let b = Tsdb::open(opts(b_dir.path(), clock), TsdbMetrics::default()).unwrap();
    let old = minutes("old", NOW - 300 * MIN, NOW - 100 * MIN);
    a.backfill(vec![old.clone()]).await.unwrap();
    let live = Series {
        labels: Labels::from_pairs([("__name__", "up"), ("job", "live")]),
        samples: samples_of(&a, "live").await,
    };
    b.backfill(vec![live, old.clone()]).await.unwrap();
    assert!(
        !b.blocks().is_empty(),
        "an empty head does not take samples older than the out-of-order window"
    );
    let upto = NOW - MIN;
    let da = digests(&a, upto).await;
    assert_eq!(da, digests(&b, upto).await);
    assert_eq!(da.len(), 2);
    // A second pass is served from the cache and gives the same answer.
    let report = a
        .series_digests(10 * MIN, upto, Box::new(|_| true))
        .await
        .unwrap();
    assert!(report.blocks_cached > 0);
    assert_eq!(report.series, da);
    // Samples after `upto` are not compared.
    a.append(vec![up("live", &[(NOW - MIN / 2, 9.0)])])
        .await
        .unwrap();
    assert_eq!(digests(&a, upto).await, da);
    // One sample deleted on `b`: exactly that series and window differ.
    let gone = old.samples[17].t;
    b.delete_series(&[Matcher::equal("job", "old")], gone, gone)
        .unwrap();
    let db = digests(&b, upto).await;
    let differing: Vec<(String, i64)> = da
        .iter()
        .zip(&db)
        .flat_map(|(x, y)| {
            x.windows
                .iter()
                .zip(&y.windows)
                .filter(|(p, q)| p != q)
                .map(|(p, _)| (x.labels.get("job").unwrap().to_string(), p.window))
        })
        .collect();
    assert_eq!(
        differing,
        vec![("old".to_string(), gone / (10 * MIN) * (10 * MIN))]
    );
    // Filtered series are left out.
    let only_live = b
        .series_digests(10 * MIN, upto, Box::new(|l| l.get("job") == Some("live")))
        .await
        .unwrap();
    assert_eq!(only_live.series.len(), 1);
}

#[tokio::test]
async fn late_writes_are_timed_for_anti_entropy_and_live_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(AtomicI64::new(NOW));
    let db = Tsdb::open(opts(dir.path(), clock.clone()), TsdbMetrics::default()).unwrap();
    db.append(vec![up("live", &[(NOW - 1_000, 1.0)])])
        .await
        .unwrap();
    assert_eq!(db.since_late_write(), None, "live samples are not late");
    db.append(vec![up("replayed", &[(NOW - 3 * MIN, 1.0)])])
        .await
        .unwrap();
    assert_eq!(db.since_late_write(), Some(std::time::Duration::ZERO));
    clock.store(NOW + 7_000, Ordering::Relaxed);
    assert_eq!(
        db.since_late_write(),
        Some(std::time::Duration::from_secs(7))
    );
    // A repair is a late write too (a replica is still catching up).
    db.backfill(vec![up("repaired", &[(NOW - 2 * MIN, 1.0)])])
        .await
        .unwrap();
    assert_eq!(db.since_late_write(), Some(std::time::Duration::ZERO));
}
