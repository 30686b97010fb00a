//! Tests of the wall-clock time bounds (ADR 0009) through the TSDB's public handle, with
//! a clock the test moves: far-future samples refused, rules anchored to the clock,
//! start-up recovery of far-future data, and what clock jumps do.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use super::block::BlockWriter;
use super::head::encode_chunks;
use super::quarantine;
use super::*;
use crate::model::{Labels, Matcher, Sample, Series};
use crate::storage::{Clock, RejectReason, SelectRequest, Storage, TimeBounds};

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
const YEAR: i64 = 365 * DAY;
/// The test's "now": a whole hour, so block boundaries are easy to reason about.
const NOW: i64 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR;

/// A wall clock the test sets.
#[derive(Clone)]
struct TestClock(Arc<AtomicI64>);

impl TestClock {
    fn at(t: i64) -> TestClock {
        TestClock(Arc::new(AtomicI64::new(t)))
    }

    fn set(&self, t: i64) {
        self.0.store(t, Ordering::Relaxed);
    }

    fn clock(&self) -> Clock {
        let now = self.0.clone();
        Clock::from_fn(move || now.load(Ordering::Relaxed))
    }
}

fn opts(dir: &std::path::Path, clock: &TestClock, bounds: TimeBounds) -> TsdbOptions {
    TsdbOptions {
        dir: dir.to_path_buf(),
        block_duration_ms: 10 * MINUTE,
        retention_ms: 0,
        out_of_order_window_ms: 5 * MINUTE,
        wal_segment_bytes: 64 << 10,
        time_bounds: bounds,
        clock: clock.clock(),
        ..TsdbOptions::default()
    }
}

const LIMITED: TimeBounds = TimeBounds {
    max_future_ms: 10 * MINUTE,
    max_age_ms: 0,
};

fn series(name: &str, job: &str, samples: &[(i64, f64)]) -> Series {
    Series {
        labels: Labels::from_pairs([("__name__", name), ("job", job)]),
        samples: samples.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
    }
}

/// One sample every 15 s in `[from, to)`, value t/1000 + 0.25.
fn regular(name: &str, job: &str, from: i64, to: i64) -> Series {
    let samples: Vec<(i64, f64)> = (from..to)
        .step_by(15_000)
        .map(|t| (t, t as f64 / 1000.0 + 0.25))
        .collect();
    series(name, job, &samples)
}

/// Every stored sample, by series, as (t, value bits).
async fn everything(db: &Tsdb) -> Vec<(Labels, Vec<(i64, u64)>)> {
    let req = SelectRequest {
        matchers: vec![Matcher::new(crate::model::MatchOp::RegexMatch, "__name__", ".+").unwrap()],
        mint: i64::MIN,
        maxt: i64::MAX,
        max_samples: 0,
    };
    db.select(req)
        .await
        .unwrap()
        .into_iter()
        .map(|s| {
            let samples = s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect();
            (s.labels, samples)
        })
        .collect()
}

fn bits(s: &Series) -> (Labels, Vec<(i64, u64)>) {
    let samples = s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect();
    (s.labels.clone(), samples)
}

fn quarantined_blocks(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join(quarantine::DIR_NAME))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn far_future_samples_are_refused_and_current_ones_keep_landing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at(NOW);
    let db = Tsdb::open(opts(dir.path(), &clock, LIMITED), TsdbMetrics::default()).unwrap();
    let history = regular("up", "a", NOW - 40 * MINUTE, NOW);
    let out = db
        .append(vec![
            history.clone(),
            series("up", "a", &[(NOW + DAY, 1.0)]),
            series("up", "b", &[(NOW + 10 * MINUTE, 2.0), (NOW + YEAR, 3.0)]),
        ])
        .await
        .unwrap();
    assert_eq!(out.rejected, vec![(RejectReason::TooFarInFuture, 2)]);
    assert!(out
        .first_rejection
        .as_deref()
        .unwrap()
        .starts_with("too far in future"));
    db.maintain().unwrap();
    assert!(!db.blocks().is_empty());
    clock.set(NOW + 20 * SECOND);
    let out = db
        .append(vec![
            series("up", "a", &[(NOW + 15 * SECOND, 4.0)]),
            series("up", "new", &[(NOW + 15 * SECOND, 5.0)]),
        ])
        .await
        .unwrap();
    assert_eq!((out.appended, out.rejected_total()), (2, 0));
}

/// With the limit off (as for data written before it existed), far-future samples are
/// stored, yet neither the head cut, the lower bound, the out-of-order window nor
/// retention moves past the clock: current data keeps landing and history stays.
#[tokio::test]
async fn far_future_data_cannot_age_out_current_data() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at(NOW);
    let mut o = opts(dir.path(), &clock, TimeBounds::NONE);
    o.retention_ms = HOUR;
    let db = Tsdb::open(o.clone(), TsdbMetrics::default()).unwrap();
    let history = regular("up", "a", NOW - 50 * MINUTE, NOW);
    db.append(vec![
        history.clone(),
        series("up", "a", &[(NOW + DAY, 1.0)]),
        series("up", "future", &[(NOW + YEAR, 2.0)]),
    ])
    .await
    .unwrap();
    db.maintain().unwrap();
    let blocks = db.blocks();
    assert!(!blocks.is_empty());
    assert!(blocks.iter().all(|b| b.max_time <= NOW), "{blocks:?}");
    // Behind the day-ahead sample of its own series, but inside the window of the clock.
    let out = db
        .append(vec![
            series(
                "up",
                "a",
                &[(NOW - 4 * MINUTE + 1, 4.0), (NOW + SECOND, 3.0)],
            ),
            series("up", "new", &[(NOW + SECOND, 5.0)]),
        ])
        .await
        .unwrap();
    assert_eq!(out.rejected_total(), 0, "{out:?}");
    // Still true after a restart: the start-up lower bound is anchored too.
    drop(db);
    let db = Tsdb::open(o, TsdbMetrics::default()).unwrap();
    db.maintain().unwrap();
    let out = db
        .append(vec![series("up", "new", &[(NOW + 2 * SECOND, 6.0)])])
        .await
        .unwrap();
    assert_eq!(out.rejected_total(), 0, "{out:?}");
    let all = everything(&db).await;
    let a = &all
        .iter()
        .find(|(l, _)| l.get("job") == Some("a"))
        .unwrap()
        .1;
    for sample in bits(&history).1 {
        assert!(a.contains(&sample), "history sample {sample:?} lost");
    }
}

/// A data directory holding far-future samples in the WAL and in blocks (as the node
/// wrote it before the limit existed) starts with the limit: exactly those samples move
/// to the quarantine, history stays bit-exact, current data lands, and a second start
/// changes nothing.
#[tokio::test]
async fn start_up_moves_far_future_samples_to_the_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at(NOW);
    let wal_history = regular("wal", "a", NOW - 20 * MINUTE, NOW);
    let wal_future = [
        series("wal", "a", &[(NOW + DAY, 1.5)]),
        series("wal", "future", &[(NOW + YEAR, 2.5)]),
    ];
    let block_history = regular("blk", "a", NOW - 3 * HOUR, NOW - 2 * HOUR);
    let mixed_history = regular("blk", "mixed", NOW - 3 * HOUR, NOW - 2 * HOUR);
    let mixed_future = regular("blk", "mixed", NOW + DAY, NOW + DAY + 2 * MINUTE);
    let only_future = regular("blk", "year", NOW + YEAR, NOW + YEAR + MINUTE);
    {
        let old = Tsdb::open(
            opts(dir.path(), &clock, TimeBounds::NONE),
            TsdbMetrics::default(),
        )
        .unwrap();
        let mut batch = vec![wal_history.clone()];
        batch.extend(wal_future.iter().cloned());
        old.append(batch).await.unwrap();
        old.close().unwrap();
        // Blocks as the old cut and compaction left them: history, history mixed with
        // far-future samples, and a block of far-future samples only.
        let mut mixed = mixed_history.samples.clone();
        mixed.extend(mixed_future.samples.iter().copied());
        for content in [
            vec![(block_history.labels.clone(), block_history.samples.clone())],
            vec![(mixed_history.labels.clone(), mixed)],
            vec![(only_future.labels.clone(), only_future.samples.clone())],
        ] {
            let mut writer = BlockWriter::new(dir.path()).unwrap();
            for (labels, samples) in content {
                writer.add_series(labels, &encode_chunks(&samples)).unwrap();
            }
            writer.finish(2, Vec::new()).unwrap();
        }
    }
    let metrics = TsdbMetrics::default();
    let db = Tsdb::open(opts(dir.path(), &clock, LIMITED), metrics.clone()).unwrap();
    let removed = 2 + mixed_future.samples.len() + only_future.samples.len();
    assert_eq!(metrics.future_samples_removed.get(), removed as u64);
    let mut expected = vec![
        bits(&block_history),
        bits(&mixed_history),
        bits(&wal_history),
    ];
    expected.sort();
    assert_eq!(everything(&db).await, expected);
    assert!(db
        .blocks()
        .iter()
        .all(|b| b.max_time <= NOW + LIMITED.max_future_ms + 1));
    // The quarantine holds exactly the removed samples, as a block.
    let copies = quarantined_blocks(dir.path());
    assert_eq!(copies.len(), 1);
    let copy = super::block::Block::open(&copies[0]).unwrap();
    assert_eq!(copy.meta.stats.num_samples, removed as u64);
    assert_eq!(copy.meta.min_time, NOW + DAY);
    // Current data lands, in old and new series.
    let out = db
        .append(vec![
            series("wal", "a", &[(NOW + SECOND, 7.0)]),
            series("wal", "future", &[(NOW + SECOND, 8.0)]),
            series("blk", "new", &[(NOW, 9.0)]),
        ])
        .await
        .unwrap();
    assert_eq!(out.rejected_total(), 0, "{out:?}");
    let after = everything(&db).await;
    db.close().unwrap();
    drop(db);
    // A second start finds nothing more to move, and the WAL deletion keeps the
    // removed samples gone even once the clock has reached them.
    clock.set(NOW + DAY + HOUR);
    let metrics = TsdbMetrics::default();
    let db = Tsdb::open(opts(dir.path(), &clock, LIMITED), metrics.clone()).unwrap();
    assert_eq!(metrics.future_samples_removed.get(), 0);
    assert_eq!(quarantined_blocks(dir.path()).len(), 1);
    assert_eq!(everything(&db).await, after);
}

/// A node restarted while its own clock is an hour behind takes its newest real samples
/// for future ones: they go to the quarantine, and come back once the clock is right and
/// the block is moved into the data directory.
#[tokio::test]
async fn quarantined_samples_come_back_when_the_clock_is_right() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at(NOW);
    let data = regular("up", "a", NOW - 3 * HOUR, NOW);
    {
        let db = Tsdb::open(opts(dir.path(), &clock, LIMITED), TsdbMetrics::default()).unwrap();
        db.append(vec![data.clone()]).await.unwrap();
        db.maintain().unwrap();
        db.close().unwrap();
    }
    clock.set(NOW - HOUR);
    {
        let db = Tsdb::open(opts(dir.path(), &clock, LIMITED), TsdbMetrics::default()).unwrap();
        let kept = everything(&db).await;
        let newest = kept[0].1.last().unwrap().0;
        assert!(newest <= NOW - HOUR + LIMITED.max_future_ms, "{newest}");
        assert!(kept[0].1.len() < data.samples.len());
        // While the clock is behind, current samples are refused, not stored.
        let out = db
            .append(vec![series("up", "a", &[(NOW, 1.0)])])
            .await
            .unwrap();
        assert_eq!(out.rejected, vec![(RejectReason::TooFarInFuture, 1)]);
        db.close().unwrap();
    }
    clock.set(NOW);
    for copy in quarantined_blocks(dir.path()) {
        std::fs::rename(&copy, dir.path().join(copy.file_name().unwrap())).unwrap();
    }
    let db = Tsdb::open(opts(dir.path(), &clock, LIMITED), TsdbMetrics::default()).unwrap();
    assert_eq!(everything(&db).await, vec![bits(&data)]);
}

/// Clock jumps on the node: a year ahead, retention (bounded by the newest block) keeps
/// the history and only the refusals change; back by a day, nothing is cut or lost.
#[tokio::test]
async fn clock_jumps_do_not_delete_history() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at(NOW);
    let mut o = opts(
        dir.path(),
        &clock,
        TimeBounds {
            max_future_ms: 10 * MINUTE,
            max_age_ms: 3 * HOUR,
        },
    );
    o.retention_ms = 3 * HOUR;
    let db = Tsdb::open(o, TsdbMetrics::default()).unwrap();
    let history = regular("up", "a", NOW - 2 * HOUR, NOW);
    db.append(vec![history.clone()]).await.unwrap();
    db.maintain().unwrap();
    let blocks = db.blocks();
    assert!(blocks.len() >= 2, "{blocks:?}");

    clock.set(NOW + YEAR);
    db.maintain().unwrap();
    assert_eq!(
        db.blocks().len(),
        blocks.len(),
        "retention followed the clock"
    );
    let out = db
        .append(vec![series("up", "a", &[(NOW + SECOND, 1.0)])])
        .await
        .unwrap();
    assert_eq!(out.rejected, vec![(RejectReason::TooOld, 1)]);

    clock.set(NOW - DAY);
    db.maintain().unwrap();
    assert_eq!(
        db.blocks(),
        blocks,
        "a clock behind the data cut or deleted blocks"
    );
    let out = db
        .append(vec![series("up", "a", &[(NOW + SECOND, 1.0)])])
        .await
        .unwrap();
    assert_eq!(out.rejected, vec![(RejectReason::TooFarInFuture, 1)]);

    clock.set(NOW + 2 * SECOND);
    let out = db
        .append(vec![series("up", "a", &[(NOW + SECOND, 1.0)])])
        .await
        .unwrap();
    assert_eq!(out.rejected_total(), 0, "{out:?}");
    let all = everything(&db).await;
    assert_eq!(all[0].1.len(), history.samples.len() + 1);
}
