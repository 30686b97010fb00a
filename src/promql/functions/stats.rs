//! Numeric kernels shared by the function families.
//!
//! Owns: Kahan-Neumaier sums (the step itself is `model::histogram_ops::kahan_inc`), Prometheus's quantile interpolation, the mean with
//! overflow fallback, the (Kahan-compensated) running variance and the least-squares
//! line fit behind deriv/predict_linear. All work on plain `f64` slices or iterators and
//! never allocate. Calls only `model`.

use std::cmp::Ordering;

use crate::model::Sample;

/// One step of Kahan-Neumaier summation (the model's, shared with histogram sums).
pub use crate::model::histogram_ops::kahan_inc;

/// The compensated sum of `values`; an infinite sum is returned as is.
pub fn kahan_sum(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, c) = values.fold((0.0, 0.0), |(s, c), v| kahan_inc(v, s, c));
    if sum.is_infinite() {
        sum
    } else {
        sum + c
    }
}

/// The mean of a non-empty sequence as Prometheus's avg_over_time computes it: a
/// compensated sum divided by the count, switching to an incremental mean once the sum
/// would overflow to infinity. Empty input gives NaN.
pub fn mean(mut values: impl Iterator<Item = f64>) -> f64 {
    let Some(first) = values.next() else {
        return f64::NAN;
    };
    let (mut sum, mut c, mut count) = (first, 0.0, 1.0);
    let mut mean = 0.0;
    let mut incremental = false;
    for v in values {
        count += 1.0;
        if !incremental {
            let (new_sum, new_c) = kahan_inc(v, sum, c);
            if !new_sum.is_infinite() {
                sum = new_sum;
                c = new_c;
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, c) = kahan_inc(v / count, q * mean, q * c);
    }
    if incremental {
        mean + c
    } else {
        sum / count + c / count
    }
}

/// The population variance (Welford's algorithm with compensated accumulators).
pub fn variance(values: impl Iterator<Item = f64>) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for v in values {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// Ascending order with NaN first, the order Prometheus sorts quantile inputs in.
fn nan_first(a: &f64, b: &f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
    }
}

/// The q-quantile of `values` (sorted in place) with linear interpolation between the
/// closest ranks; NaN for no values or a NaN q, -Inf for q < 0, +Inf for q > 1.
pub fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_unstable_by(nan_first);
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Least-squares fit of the points against time in seconds relative to
/// `intercept_time_ms`: returns (slope per second, value at the intercept time).
/// A constant series has slope 0 (NaN, NaN when the constant is infinite).
pub fn linear_regression(points: &[Sample], intercept_time_ms: i64) -> (f64, f64) {
    let first = points.first().map_or(f64::NAN, |p| p.v);
    let constant = points.iter().all(|p| p.v == first);
    if constant {
        return if first.is_infinite() {
            (f64::NAN, f64::NAN)
        } else {
            (0.0, first)
        };
    }
    let mut n = 0.0;
    let (mut sum_x, mut c_x) = (0.0, 0.0);
    let (mut sum_y, mut c_y) = (0.0, 0.0);
    let (mut sum_xy, mut c_xy) = (0.0, 0.0);
    let (mut sum_x2, mut c_x2) = (0.0, 0.0);
    for p in points {
        n += 1.0;
        let x = (p.t - intercept_time_ms) as f64 / 1e3;
        (sum_x, c_x) = kahan_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_inc(p.v, sum_y, c_y);
        (sum_xy, c_xy) = kahan_inc(x * p.v, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_inc(x * x, sum_x2, c_x2);
    }
    let (sum_x, sum_y, sum_xy, sum_x2) = (sum_x + c_x, sum_y + c_y, sum_xy + c_xy, sum_x2 + c_x2);
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kahan_sum_recovers_lost_precision() {
        // Naive summation returns 0 here; compensated summation keeps the 2.
        let vals = [1e100, 1.0, -1e100, 1.0];
        assert_eq!(kahan_sum(vals.into_iter()), 2.0);
        assert_eq!(kahan_sum([f64::INFINITY, 1.0].into_iter()), f64::INFINITY);
    }

    #[test]
    fn mean_survives_overflow() {
        // A plain sum would be +Inf; the incremental mean stays (within rounding) at MAX.
        let m = mean([f64::MAX, f64::MAX, f64::MAX].into_iter());
        assert!(m.is_finite() && (f64::MAX - m) / f64::MAX < 1e-15, "{m}");
        assert_eq!(mean([1.0, 2.0, 3.0, 4.0].into_iter()), 2.5);
        assert!(mean(std::iter::empty()).is_nan());
    }

    #[test]
    fn variance_of_known_values() {
        let v = variance([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0].into_iter());
        assert_eq!(v, 4.0);
        assert_eq!(variance([5.0].into_iter()), 0.0);
    }

    #[test]
    fn quantile_interpolates_and_bounds() {
        let mut v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(0.0, &mut v), 1.0);
        assert_eq!(quantile(1.0, &mut v), 5.0);
        assert_eq!(quantile(0.5, &mut v), 3.0);
        assert_eq!(quantile(0.1, &mut v), 1.4);
        assert!(quantile(f64::NAN, &mut v).is_nan());
        // NaN sorts first.
        let mut v = [3.0, f64::NAN, 1.0];
        assert!(quantile(0.0, &mut v).is_nan());
        assert_eq!(quantile(1.0, &mut v), 3.0);
    }

    #[test]
    fn regression_fits_a_line() {
        let pts: Vec<Sample> = (0..5)
            .map(|i| Sample::new(i * 1000, 3.0 + 2.0 * i as f64))
            .collect();
        let (slope, intercept) = linear_regression(&pts, 0);
        assert!((slope - 2.0).abs() < 1e-12);
        assert!((intercept - 3.0).abs() < 1e-12);
        let (slope, intercept) = linear_regression(&pts, 10_000);
        assert!((slope - 2.0).abs() < 1e-12);
        assert!((intercept - 23.0).abs() < 1e-12);
    }

    #[test]
    fn regression_of_constants() {
        let pts = [Sample::new(0, 7.0), Sample::new(1000, 7.0)];
        assert_eq!(linear_regression(&pts, 0), (0.0, 7.0));
        let pts = [
            Sample::new(0, f64::INFINITY),
            Sample::new(1000, f64::INFINITY),
        ];
        let (s, i) = linear_regression(&pts, 0);
        assert!(s.is_nan() && i.is_nan());
    }
}
