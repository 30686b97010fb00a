//! The wall-clock time bounds at the edge (ADR 0009): samples (float or native
//! histogram) too far ahead of the node's clock or older than retention are taken out of
//! a write before it is routed, so no owner ever receives them. Calls `model` and `storage` (the shared rule).

use crate::model::histogram::HistogramSample;
use crate::model::{self, HistogramSeries, Labels, Sample, Series};
use crate::storage::{AppendOutcome, RejectReason, TimeBounds};

/// A series whose samples the bounds apply to: float samples or native histograms.
pub trait BoundedSeries {
    type Sample;
    /// The labels, and the samples in time order.
    fn parts(&mut self) -> (&Labels, &mut Vec<Self::Sample>);
    fn time(sample: &Self::Sample) -> i64;
    /// Whether `sample` is a created-timestamp zero request rather than the client's.
    fn is_request(sample: &Self::Sample) -> bool;
}

impl BoundedSeries for Series {
    type Sample = Sample;
    fn parts(&mut self) -> (&Labels, &mut Vec<Sample>) {
        (&self.labels, &mut self.samples)
    }
    fn time(sample: &Sample) -> i64 {
        sample.t
    }
    fn is_request(sample: &Sample) -> bool {
        model::is_created_zero(sample.v)
    }
}

impl BoundedSeries for HistogramSeries {
    type Sample = HistogramSample;
    fn parts(&mut self) -> (&Labels, &mut Vec<HistogramSample>) {
        (&self.labels, &mut self.samples)
    }
    fn time(sample: &HistogramSample) -> i64 {
        sample.t
    }
    fn is_request(_: &HistogramSample) -> bool {
        false
    }
}

/// Removes the samples outside `bounds` at wall-clock time `now_ms` from `series`
/// (dropping series left without samples) and reports them the way storage reports the
/// samples it refuses (ADR 0003): the rest of the write is stored, and the answer is 400
/// counting the refused samples by reason and naming the first. Each series' samples
/// must be in time order, as `decode_write_request` leaves them. Created-timestamp zero
/// requests (ADR 0027) outside the bounds are dropped without being counted, and a
/// series left with nothing else is dropped.
pub fn enforce_time_bounds<S: BoundedSeries>(
    series: &mut Vec<S>,
    bounds: &TimeBounds,
    now_ms: i64,
) -> AppendOutcome {
    let mut refused = AppendOutcome::default();
    if *bounds == TimeBounds::NONE {
        return refused;
    }
    let mut counts = [0u64; RejectReason::ALL.len()];
    let in_bounds = |t: i64| bounds.check(t, now_ms).is_ok();
    series.retain_mut(|s| {
        let (labels, samples) = s.parts();
        // Time order: the whole series is in bounds when its first and last samples are.
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            return false;
        };
        if in_bounds(S::time(first)) && in_bounds(S::time(last)) {
            return true;
        }
        samples.retain(|sample| match bounds.check(S::time(sample), now_ms) {
            Ok(()) => true,
            // A created-timestamp zero request is not the client's sample: it goes
            // quietly, as Prometheus ignores a zero sample it cannot store.
            Err(_) if S::is_request(sample) => false,
            Err(reason) => {
                counts[reason.index()] += 1;
                if refused.first_rejection.is_none() {
                    refused.first_rejection = Some(reason.describe(labels, S::time(sample)));
                }
                false
            }
        });
        samples.iter().any(|sample| !S::is_request(sample))
    });
    refused.rejected = RejectReason::ALL
        .into_iter()
        .zip(counts)
        .filter(|&(_, n)| n > 0)
        .collect();
    refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Labels, Sample};

    const NOW: i64 = 1_800_000_000_000;
    const MINUTE: i64 = 60_000;
    const DAY: i64 = 24 * 60 * MINUTE;

    fn series(name: &str, times: &[i64]) -> Series {
        Series {
            labels: Labels::from_pairs([("__name__", name)]),
            samples: times.iter().map(|&t| Sample::new(t, t as f64)).collect(),
        }
    }

    #[test]
    fn out_of_bounds_samples_are_taken_out_and_reported() {
        let bounds = TimeBounds {
            max_future_ms: 10 * MINUTE,
            max_age_ms: 15 * DAY,
        };
        let mut batch = vec![
            series("current", &[NOW - MINUTE, NOW, NOW + 10 * MINUTE]),
            series("mixed", &[NOW - 16 * DAY, NOW, NOW + DAY, NOW + 365 * DAY]),
            series("future", &[NOW + DAY]),
        ];
        let refused = enforce_time_bounds(&mut batch, &bounds, NOW);
        assert_eq!(batch.len(), 2);
        assert_eq!(
            batch[0],
            series("current", &[NOW - MINUTE, NOW, NOW + 10 * MINUTE])
        );
        assert_eq!(batch[1], series("mixed", &[NOW]));
        assert_eq!(refused.appended, 0);
        assert_eq!(
            refused.rejected,
            vec![(RejectReason::TooOld, 1), (RejectReason::TooFarInFuture, 3)]
        );
        let first = refused.first_rejection.expect("first named");
        assert!(first.starts_with("too old: series mixed"), "{first}");
    }

    #[test]
    fn created_zeros_out_of_bounds_go_quietly() {
        let bounds = TimeBounds {
            max_future_ms: 10 * MINUTE,
            max_age_ms: 15 * DAY,
        };
        let zero = |t: i64| Sample::new(t, model::created_zero());
        let mut batch = vec![
            Series {
                labels: Labels::from_pairs([("__name__", "kept")]),
                samples: vec![
                    zero(NOW - 20 * DAY),
                    zero(NOW - MINUTE),
                    Sample::new(NOW, 1.0),
                ],
            },
            Series {
                labels: Labels::from_pairs([("__name__", "gone")]),
                samples: vec![zero(NOW - 20 * DAY), Sample::new(NOW + DAY, 1.0)],
            },
        ];
        let refused = enforce_time_bounds(&mut batch, &bounds, NOW);
        assert_eq!(refused.rejected, vec![(RejectReason::TooFarInFuture, 1)]);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].samples.len(), 2);
        assert!(model::is_created_zero(batch[0].samples[0].v));
    }

    #[test]
    fn no_bounds_keep_everything() {
        let mut batch = vec![series("any", &[i64::MIN, 0, i64::MAX])];
        let refused = enforce_time_bounds(&mut batch, &TimeBounds::NONE, NOW);
        assert_eq!(refused, AppendOutcome::default());
        assert_eq!(batch[0].samples.len(), 3);
    }
}
