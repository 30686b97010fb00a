//! Native histograms in sealed blocks through the TSDB handle (ADR 0030): head cuts
//! move them into blocks, compaction merges them, retention drops them, deletions and
//! tombstone cleaning remove them, snapshots carry them, restarts and a crash between a
//! cut's block and the WAL's truncation lose nothing.
//!
//! Answers are compared by what was observed (`observed`): the kind, every count and
//! the sum bit for bit, the bucket bounds, and the non-empty buckets by index. A chunk
//! may widen a sample's layout with empty buckets and re-derives counter-reset hints
//! from its header (as Prometheus's do), so those two are left out; a gauge stays a
//! gauge.

use super::*;
use crate::model::histogram::{
    CounterResetHint, FloatHistogram, Histogram, HistogramSample, HistogramValue, Span,
};
use crate::model::{Sample, STALE_NAN_BITS};

use super::tests::{opts, MIN};

const STEP: i64 = 15_000;

fn span(offset: i32, length: u32) -> Span {
    Span { offset, length }
}

/// Integer deltas of absolute bucket counts.
fn deltas(counts: &[i64]) -> Vec<i64> {
    let mut prev = 0;
    counts
        .iter()
        .map(|&c| {
            let d = c - prev;
            prev = c;
            d
        })
        .collect()
}

/// Series `kind`'s integer histogram at scrape `i`: a counter that grows, is reset
/// every 37 scrapes, and gains a bucket every 11 (a layout the chunk widens to).
fn int_hist(kind: usize, i: i64) -> Histogram {
    let epoch = i % 37 + 1;
    let wide = i % 11 >= 5;
    let schema = [0, 3, -4, 8, crate::model::histogram::CUSTOM_BUCKETS_SCHEMA][kind % 5];
    let custom = schema == crate::model::histogram::CUSTOM_BUCKETS_SCHEMA;
    let (positive_spans, pos): (Vec<Span>, Vec<i64>) = if wide {
        (
            vec![span(0, 3), span(1, 2)],
            (0..5).map(|b| epoch * (b + 1) + b).collect(),
        )
    } else {
        (
            vec![span(0, 3)],
            (0..3).map(|b| epoch * (b + 1) + b).collect(),
        )
    };
    let (negative_spans, neg): (Vec<Span>, Vec<i64>) = if custom {
        (vec![], vec![])
    } else {
        (vec![span(-2, 2)], vec![epoch, 2 * epoch + 1])
    };
    let zero_count = if custom { 0 } else { epoch as u64 };
    let count = zero_count + pos.iter().chain(&neg).sum::<i64>() as u64;
    Histogram {
        counter_reset_hint: if kind == 3 {
            CounterResetHint::Gauge
        } else {
            CounterResetHint::Unknown
        },
        schema,
        zero_threshold: if custom { 0.0 } else { 0.001 },
        zero_count,
        count,
        sum: epoch as f64 * 1.37 + i as f64 * 0.1,
        positive_spans: positive_spans.into(),
        negative_spans: negative_spans.into(),
        positive_buckets: deltas(&pos),
        negative_buckets: deltas(&neg),
        custom_values: if custom {
            vec![0.1, 0.5, 1.0, 5.0, 10.0, 50.0].into()
        } else {
            Vec::new().into()
        },
    }
}

/// Series `kind`'s sample at scrape `i`: integer histograms, float histograms with
/// fractional counts, staleness markers now and then; kind 4 switches between the
/// kinds, and kind 5 holds floats at other times (returned as `None` here).
fn value(kind: usize, i: i64) -> Option<HistogramValue> {
    if i % 23 == 22 {
        let stale = f64::from_bits(STALE_NAN_BITS);
        return Some(if kind % 2 == 0 {
            HistogramValue::Int(Histogram {
                sum: stale,
                ..Histogram::default()
            })
        } else {
            HistogramValue::Float(FloatHistogram {
                sum: stale,
                ..FloatHistogram::default()
            })
        });
    }
    let h = int_hist(kind, i);
    let as_float = |h: &Histogram| {
        let mut f = h.to_float();
        f.positive_buckets.iter_mut().for_each(|c| *c += 0.25);
        f.count += 0.25 * f.positive_buckets.len() as f64;
        HistogramValue::Float(f)
    };
    match kind {
        1 | 3 => Some(as_float(&h)),
        4 if i % 30 >= 15 => Some(as_float(&h)),
        5 if i % 4 == 1 => None,
        _ => Some(HistogramValue::Int(h)),
    }
}

const KINDS: usize = 6;

fn labels(kind: usize) -> Labels {
    Labels::from_pairs([("__name__", "h"), ("kind", &kind.to_string())])
}

/// Every series' histograms and (kind 5) floats in `[from, to)`, one scrape each STEP.
fn data(from: i64, to: i64) -> (Vec<HistogramSeries>, Vec<Series>) {
    let mut hists = Vec::new();
    let mut floats = Vec::new();
    for kind in 0..KINDS {
        let mut h = Vec::new();
        let mut f = Vec::new();
        for t in (from..to).step_by(STEP as usize) {
            let i = t / STEP;
            match value(kind, i) {
                Some(v) => h.push(HistogramSample { t, h: v }),
                None => f.push(Sample::new(t, i as f64)),
            }
        }
        hists.push(HistogramSeries {
            labels: labels(kind),
            samples: h,
        });
        if !f.is_empty() {
            floats.push(Series {
                labels: labels(kind),
                samples: f,
            });
        }
    }
    (hists, floats)
}

/// Appends `data(from, to)` scrape by scrape, as a scraper would (kind 5's floats and
/// histograms are in time order even with no out-of-order window).
async fn append(db: &Tsdb, from: i64, to: i64) {
    for t in (from..to).step_by(STEP as usize) {
        let (hists, floats) = data(t, t + 1);
        let out = db.append_histograms(hists.clone()).await.unwrap();
        let n: usize = hists.iter().map(|s| s.samples.len()).sum();
        assert_eq!((out.appended, out.rejected), (n as u64, vec![]));
        if !floats.is_empty() {
            let out = db.append(floats).await.unwrap();
            assert_eq!((out.appended, out.rejected), (1, vec![]));
        }
    }
}

/// What a histogram observed (see the module comment).
#[derive(Debug, PartialEq)]
enum Observed {
    Stale {
        int: bool,
    },
    Hist {
        int: bool,
        gauge: bool,
        schema: i32,
        zero_threshold: u64,
        zero_count: u64,
        count: u64,
        sum: u64,
        custom_values: Vec<u64>,
        /// (index, count bits) of the non-empty buckets, positive then negative.
        buckets: [Vec<(i32, u64)>; 2],
    },
}

fn observed(h: &HistogramValue) -> Observed {
    let int = matches!(h, HistogramValue::Int(_));
    if h.is_stale() {
        return Observed::Stale { int };
    }
    let f = match h {
        HistogramValue::Int(h) => h.to_float(),
        HistogramValue::Float(h) => h.clone(),
    };
    let side = |spans: &[Span], counts: &[f64]| {
        let mut out = Vec::new();
        let (mut idx, mut i) = (0i32, 0);
        for s in spans {
            idx += s.offset;
            for _ in 0..s.length {
                if counts[i] != 0.0 {
                    out.push((idx, counts[i].to_bits()));
                }
                idx += 1;
                i += 1;
            }
        }
        out
    };
    Observed::Hist {
        int,
        gauge: f.counter_reset_hint == CounterResetHint::Gauge,
        schema: f.schema,
        zero_threshold: f.zero_threshold.to_bits(),
        zero_count: f.zero_count.to_bits(),
        count: f.count.to_bits(),
        sum: f.sum.to_bits(),
        custom_values: f.custom_values.iter().map(|v| v.to_bits()).collect(),
        buckets: [
            side(&f.positive_spans, &f.positive_buckets),
            side(&f.negative_spans, &f.negative_buckets),
        ],
    }
}

type Answer = Vec<(Labels, Vec<(i64, Observed)>)>;

fn answer(series: &[HistogramSeries]) -> Answer {
    series
        .iter()
        .map(|s| {
            (
                s.labels.clone(),
                s.samples.iter().map(|x| (x.t, observed(&x.h))).collect(),
            )
        })
        .collect()
}

/// The answer `data(from, to)` should give, without the samples of `deleted` kinds in
/// `[del_from, del_to]`.
fn expected(from: i64, to: i64, deleted: Option<(usize, i64, i64)>) -> Answer {
    let (hists, _) = data(from, to);
    let mut want = answer(&hists);
    if let Some((kind, a, b)) = deleted {
        let l = labels(kind);
        for (labels, samples) in &mut want {
            if *labels == l {
                samples.retain(|(t, _)| *t < a || *t > b);
            }
        }
    }
    want.retain(|(_, s)| !s.is_empty());
    want
}

async fn read(db: &Tsdb, mint: i64, maxt: i64) -> Answer {
    let got = db
        .select_histograms(SelectRequest {
            matchers: vec![Matcher::equal("__name__", "h")],
            mint,
            maxt,
            max_samples: 0,
        })
        .await
        .unwrap();
    for s in &got {
        assert!(
            s.samples.windows(2).all(|w| w[0].t < w[1].t),
            "{}: not in time order or duplicated",
            s.labels
        );
    }
    answer(&got)
}

async fn floats(db: &Tsdb) -> Vec<Series> {
    db.select(SelectRequest {
        matchers: vec![Matcher::equal("kind", "5")],
        mint: i64::MIN,
        maxt: i64::MAX,
        max_samples: 0,
    })
    .await
    .unwrap()
}

fn block_histograms(db: &Tsdb) -> u64 {
    db.inner
        .db
        .blocks_for_tests()
        .iter()
        .map(|b| b.meta.stats.num_histogram_samples)
        .sum()
}

#[tokio::test]
async fn cut_histograms_move_into_blocks_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    append(&db, 0, 25 * MIN).await;
    let want = expected(0, 25 * MIN, None);
    assert_eq!(read(&db, i64::MIN, i64::MAX).await, want);
    let head_chunks = || db.head_cardinality(&|_| true).chunk_count;
    // 15 of 25 minutes stay: about 60% of the chunks (all but one float chunk, were
    // the histograms kept).
    let chunks_before = head_chunks();
    // Histograms alone span the head past a cut.
    db.maintain().unwrap();
    let blocks = db.blocks();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(
        (blocks[0].min_time, blocks[0].max_time),
        (0, 10 * MIN - STEP + 1)
    );
    let (cut, cut_floats) = data(0, 10 * MIN);
    let cut_hists: usize = cut.iter().map(|s| s.samples.len()).sum();
    let cut_float_n: usize = cut_floats.iter().map(|s| s.samples.len()).sum();
    assert_eq!(block_histograms(&db), cut_hists as u64);
    assert_eq!(blocks[0].num_samples, (cut_hists + cut_float_n) as u64);
    assert!(
        head_chunks() < chunks_before * 3 / 4,
        "the cut histograms left the head: {} of {chunks_before} chunks",
        head_chunks()
    );
    assert_eq!(read(&db, i64::MIN, i64::MAX).await, want);
    // A range inside the block only, and one across block and head.
    assert_eq!(
        read(&db, 2 * MIN, 4 * MIN).await,
        expected(2 * MIN, 4 * MIN + 1, None)
    );
    assert_eq!(
        read(&db, 9 * MIN, 11 * MIN).await,
        expected(9 * MIN, 11 * MIN + 1, None)
    );
    let floats_before = floats(&db).await;
    assert!(floats_before[0].samples.len() > 20);
    // Series lookups find the histogram-only series by their chunks, in the block and
    // in the head, as the float ones by theirs.
    for (mint, maxt) in [(0, 5 * MIN), (20 * MIN, 25 * MIN)] {
        let found = db
            .series(LabelRequest {
                matchers: vec![Matcher::equal("__name__", "h")],
                mint,
                maxt,
            })
            .await
            .unwrap();
        let want: Vec<Labels> = (0..KINDS).map(labels).collect();
        assert_eq!(found, want, "[{mint}, {maxt}]");
    }

    // A restart reads the block and the checkpoint, which no longer holds them.
    drop(db);
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    assert_eq!(read(&db, i64::MIN, i64::MAX).await, want);
    assert_eq!(floats(&db).await, floats_before);
    drop(db);
    // The block alone holds exactly the cut histograms.
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    assert_eq!(read(&db, i64::MIN, i64::MAX).await, answer(&cut));
}

#[tokio::test]
async fn compaction_merges_histogram_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.out_of_order_window_ms = 0;
    let db = Tsdb::open(o.clone(), TsdbMetrics::default()).unwrap();
    append(&db, 0, 60 * MIN).await;
    db.maintain().unwrap();
    let blocks = db.blocks();
    assert!(blocks.iter().any(|b| b.compaction_level == 2), "{blocks:?}");
    let want = expected(0, 60 * MIN, None);
    assert_eq!(read(&db, i64::MIN, i64::MAX).await, want);
    let (older, _) = data(0, 30 * MIN);
    let compacted = db
        .inner
        .db
        .blocks_for_tests()
        .into_iter()
        .find(|b| b.meta.compaction.level == 2)
        .unwrap();
    assert_eq!(
        compacted.meta.stats.num_histogram_samples,
        older.iter().map(|s| s.samples.len() as u64).sum::<u64>()
    );
    drop(db);
    let db = Tsdb::open(o, TsdbMetrics::default()).unwrap();
    assert_eq!(read(&db, i64::MIN, i64::MAX).await, want);
}

#[tokio::test]
async fn retention_drops_histogram_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.out_of_order_window_ms = 0;
    let db = Tsdb::open(o.clone(), TsdbMetrics::default()).unwrap();
    append(&db, 0, 60 * MIN).await;
    db.maintain().unwrap();
    drop(db);
    o.retention_ms = 20 * MIN;
    let db = Tsdb::open(o, TsdbMetrics::default()).unwrap();
    db.maintain().unwrap();
    let oldest = db.blocks().iter().map(|b| b.min_time).min().unwrap();
    assert!(oldest >= 20 * MIN, "{:?}", db.blocks());
    let got = read(&db, i64::MIN, i64::MAX).await;
    assert_eq!(got, expected(oldest, 60 * MIN, None));
}

#[tokio::test]
async fn deleted_histograms_stay_deleted_in_head_blocks_and_cleaned_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    append(&db, 0, 25 * MIN).await;
    db.maintain().unwrap();
    assert_eq!(db.blocks().len(), 1);
    // Across the block (ends before 10 min) and the head.
    let (a, b) = (5 * MIN, 15 * MIN);
    db.delete_series(&[Matcher::equal("kind", "1")], a, b)
        .unwrap();
    let want = expected(0, 25 * MIN, Some((1, a, b)));
    assert_eq!(read(&db, i64::MIN, i64::MAX).await, want);
    drop(db);
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    assert_eq!(read(&db, i64::MIN, i64::MAX).await, want);
    let before = block_histograms(&db);
    db.clean_tombstones().unwrap();
    let (removed, _) = data(a, 10 * MIN);
    assert_eq!(
        block_histograms(&db),
        before - removed[1].samples.len() as u64
    );
    assert_eq!(read(&db, i64::MIN, i64::MAX).await, want);
    drop(db);
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    assert_eq!(read(&db, i64::MIN, i64::MAX).await, want);
}

#[tokio::test]
async fn snapshots_carry_histograms_with_and_without_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let snap = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    append(&db, 0, 25 * MIN).await;
    db.maintain().unwrap();
    db.snapshot(&snap.path().join("all"), true).unwrap();
    db.snapshot(&snap.path().join("blocks"), false).unwrap();
    let all = Tsdb::open(opts(&snap.path().join("all")), TsdbMetrics::default()).unwrap();
    assert_eq!(all.blocks().len(), 2);
    assert_eq!(
        read(&all, i64::MIN, i64::MAX).await,
        expected(0, 25 * MIN, None)
    );
    assert_eq!(floats(&all).await, floats(&db).await);
    let blocks = Tsdb::open(opts(&snap.path().join("blocks")), TsdbMetrics::default()).unwrap();
    assert_eq!(
        read(&blocks, i64::MIN, i64::MAX).await,
        expected(0, 10 * MIN, None)
    );
}

/// Copies the files of `src` (one level, as the WAL directory is) to `dst`.
fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dst.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
}

/// A crash after the cut's block is durable but before the WAL is truncated: the
/// replayed head holds the block's histograms again. Reads answer each once, and the
/// next cut and compaction fold the repeat away.
#[tokio::test]
async fn a_crash_between_the_cut_block_and_the_wal_truncation_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    append(&db, 0, 25 * MIN).await;
    // Every record is fsynced: this is the WAL a crash right after the block leaves.
    copy_dir(&dir.path().join("wal"), &saved.path().join("wal"));
    db.maintain().unwrap();
    assert_eq!(db.blocks().len(), 1);
    drop(db);
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    copy_dir(&saved.path().join("wal"), &dir.path().join("wal"));
    let want = expected(0, 25 * MIN, None);
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    assert_eq!(read(&db, i64::MIN, i64::MAX).await, want);
    let in_block = block_histograms(&db);
    // The repeat is cut again (an overlapping block) and compacted away.
    db.maintain().unwrap();
    assert_eq!(read(&db, i64::MIN, i64::MAX).await, want);
    assert_eq!(block_histograms(&db), in_block, "{:?}", db.blocks());
    drop(db);
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    assert_eq!(read(&db, i64::MIN, i64::MAX).await, want);
}

/// A histogram appended after its time was cut into a block (within the out-of-order
/// window) differs from the block's: reads keep the newest source's, and compaction
/// keeps the same one.
#[tokio::test]
async fn the_newest_source_wins_a_shared_timestamp_in_reads_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    append(&db, 0, 25 * MIN).await;
    // A series that ends before the cut boundary: after the cut the head holds none
    // of it, so its out-of-order window does not refuse the late histogram.
    let probe = Labels::from_pairs([("__name__", "h"), ("kind", "probe")]);
    let probe_samples: Vec<HistogramSample> = (0..10 * MIN)
        .step_by(STEP as usize)
        .map(|t| HistogramSample {
            t,
            h: HistogramValue::Int(int_hist(0, t / STEP)),
        })
        .collect();
    db.append_histograms(vec![HistogramSeries {
        labels: probe.clone(),
        samples: probe_samples.clone(),
    }])
    .await
    .unwrap();
    db.maintain().unwrap();
    assert_eq!(db.blocks().len(), 1);
    let t = 10 * MIN - STEP; // the block's last scrape, inside the head's bound
    let newer = HistogramValue::Int(int_hist(0, 999));
    let out = db
        .append_histograms(vec![HistogramSeries {
            labels: probe.clone(),
            samples: vec![HistogramSample {
                t,
                h: newer.clone(),
            }],
        }])
        .await
        .unwrap();
    assert_eq!((out.appended, out.rejected), (1, vec![]));
    let check = |got: Answer| {
        let (_, got) = got.into_iter().find(|(l, _)| *l == probe).unwrap();
        let mut want: Vec<(i64, Observed)> = probe_samples
            .iter()
            .map(|s| (s.t, observed(&s.h)))
            .collect();
        want.last_mut().unwrap().1 = observed(&newer);
        assert_eq!(got, want);
    };
    check(read(&db, i64::MIN, i64::MAX).await);
    // More data, so the head is cut again: its block overlaps the first and is
    // compacted with it.
    append(&db, 25 * MIN, 35 * MIN).await;
    db.maintain().unwrap();
    assert!(db.blocks().len() >= 2);
    check(read(&db, i64::MIN, i64::MAX).await);
    drop(db);
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    check(read(&db, i64::MIN, i64::MAX).await);
}

#[tokio::test]
async fn a_tsdb_knows_whether_it_may_hold_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let may_hold = |db: &Tsdb| db.inner.db.may_hold_histograms();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    assert!(!may_hold(&db));
    let (_, floats_only) = data(0, MIN);
    db.append(floats_only).await.unwrap();
    assert!(!may_hold(&db), "float samples are not histograms");
    drop(db);
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    assert!(!may_hold(&db), "a WAL of floats only");
    append(&db, 0, 25 * MIN).await;
    assert!(may_hold(&db));
    drop(db);
    // From the WAL, then from a block alone.
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    assert!(may_hold(&db));
    db.maintain().unwrap();
    assert_eq!(db.blocks().len(), 1);
    drop(db);
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    assert!(may_hold(&db));
    assert_eq!(read(&db, 0, 5 * MIN).await, expected(0, 5 * MIN + 1, None));
}
