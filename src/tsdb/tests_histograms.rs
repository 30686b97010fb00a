//! Native histograms through the TSDB handle: validation, WAL durability across a
//! crash, and head cuts with their checkpoints (ADR 0030; blocks in
//! `tests_hist_blocks`).

use super::*;
use crate::model::histogram::{HistogramError, HistogramSample, HistogramValue, Span};
use crate::model::{histogram::Histogram, Sample};
use crate::storage::{RejectReason, SelectRequest};

use super::tests::{opts, MIN};

/// A valid integer histogram whose one bucket holds `n` (0 means no bucket).
fn hist(n: u64) -> HistogramValue {
    let (spans, buckets): (Vec<Span>, Vec<i64>) = if n == 0 {
        (vec![], vec![])
    } else {
        (
            vec![Span {
                offset: 0,
                length: 1,
            }],
            vec![n as i64],
        )
    };
    HistogramValue::Int(Histogram {
        count: n,
        sum: n as f64,
        positive_spans: spans.into(),
        positive_buckets: buckets,
        ..Histogram::default()
    })
}

fn float_hist(n: u64) -> HistogramValue {
    match hist(n) {
        HistogramValue::Int(h) => HistogramValue::Float(h.to_float()),
        HistogramValue::Float(_) => unreachable!(),
    }
}

fn hseries(job: &str, samples: &[(i64, HistogramValue)]) -> HistogramSeries {
    HistogramSeries {
        labels: Labels::from_pairs([("__name__", "h"), ("job", job)]),
        samples: samples
            .iter()
            .map(|(t, h)| HistogramSample {
                t: *t,
                h: h.clone(),
            })
            .collect(),
    }
}

/// Whether two answers hold the same observations (the counter-reset hint of a
/// stored sample is its chunk's; see `HistogramValue::same`).
fn same(got: &[HistogramSeries], want: &[HistogramSeries]) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| {
            g.labels == w.labels
                && g.samples.len() == w.samples.len()
                && g.samples
                    .iter()
                    .zip(&w.samples)
                    .all(|(a, b)| a.t == b.t && a.h.same(&b.h))
        })
}

async fn select_h(db: &Tsdb) -> Vec<HistogramSeries> {
    select_range(db, Matcher::equal("__name__", "h"), i64::MIN, i64::MAX).await
}

async fn select_range(db: &Tsdb, matcher: Matcher, mint: i64, maxt: i64) -> Vec<HistogramSeries> {
    let req = SelectRequest {
        matchers: vec![matcher],
        mint,
        maxt,
        max_samples: 0,
    };
    db.select_histograms(req).await.unwrap()
}

/// Samples growing by one each, switching kind halfway (a series may).
fn growing(from: i64, to: i64) -> Vec<(i64, HistogramValue)> {
    (from..to)
        .step_by(15_000)
        .enumerate()
        .map(|(i, t)| {
            let n = i as u64 + 1;
            (t, if i % 40 < 20 { hist(n) } else { float_hist(n) })
        })
        .collect()
}

#[tokio::test]
async fn an_invalid_histogram_refuses_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    let mut bad = hist(3);
    if let HistogramValue::Int(h) = &mut bad {
        h.count = 2; // the bucket holds 3
    }
    let err = db
        .append_histograms(vec![
            hseries("a", &[(1_000, hist(1))]),
            hseries("b", &[(1_000, bad)]),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            HistogramAppendError::Invalid {
                t: 1_000,
                error: HistogramError::CountMismatch { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        select_h(&db).await.is_empty(),
        "nothing of the batch stored"
    );
}

#[tokio::test]
async fn acknowledged_histograms_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    let samples = growing(0, 5 * MIN);
    let out = db
        .append_histograms(vec![hseries("a", &samples)])
        .await
        .unwrap();
    assert_eq!(out.appended, samples.len() as u64);
    // Out of order beyond the window, and a float at a histogram's time: refused.
    let late = db
        .append_histograms(vec![hseries("a", &[(-MIN, hist(1))])])
        .await
        .unwrap();
    assert_eq!(late.rejected, vec![(RejectReason::OutOfOrder, 1)]);
    let clash = db
        .append(vec![Series {
            labels: Labels::from_pairs([("__name__", "h"), ("job", "a")]),
            samples: vec![Sample::new(0, 1.0)],
        }])
        .await
        .unwrap();
    assert_eq!(clash.rejected, vec![(RejectReason::DuplicateTimestamp, 1)]);
    let before = select_h(&db).await;
    assert!(same(&before, &[hseries("a", &samples)]));
    drop(db); // like a kill: only what was fsynced remains
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    assert_eq!(select_h(&db).await, before);
    // A retry of the acknowledged batch is answered as appended, nothing doubled.
    let retry = db
        .append_histograms(vec![hseries("a", &samples)])
        .await
        .unwrap();
    assert_eq!(retry.appended, samples.len() as u64);
    assert!(retry.rejected.is_empty());
    assert_eq!(select_h(&db).await, before);
}

#[tokio::test]
async fn head_cuts_move_histograms_and_checkpoints_keep_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    let samples = growing(0, 25 * MIN);
    db.append_histograms(vec![hseries("a", &samples)])
        .await
        .unwrap();
    // The histograms alone span the head past a cut.
    db.maintain().unwrap();
    assert_eq!(db.blocks().len(), 1, "histograms are in the head's range");
    assert_eq!(
        db.blocks()[0].num_samples,
        40,
        "[0, 10 min) moved to the block"
    );
    let want = vec![hseries("a", &samples)];
    assert!(same(&select_h(&db).await, &want));
    // The cut truncated the WAL: its checkpoint carries the rest.
    drop(db);
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    assert!(same(&select_h(&db).await, &want));
    let in_range = select_range(&db, Matcher::equal("job", "a"), 9 * MIN, 11 * MIN).await;
    assert_eq!(
        in_range[0].samples.len(),
        9,
        "block and head, each sample once"
    );
}

#[tokio::test]
async fn a_failed_wal_write_leaves_no_histogram_of_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(opts(dir.path()), TsdbMetrics::default()).unwrap();
    db.inject_wal_failures(1);
    // Both kinds: two records, logged in one piece.
    let err = db
        .append_histograms(vec![
            hseries("a", &[(1_000, hist(1))]),
            hseries("b", &[(1_000, float_hist(1))]),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HistogramAppendError::Storage(StorageError::Unavailable(_))
        ),
        "{err}"
    );
    assert!(select_h(&db).await.is_empty(), "nothing of it visible");
    // (Whether its bytes reach the disk anyway is the WAL's business, as for floats.)
}
