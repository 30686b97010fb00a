//! Element-wise math and the scalar/vector conversions.
//!
//! Owns: abs, ceil, floor, exp, sqrt, ln, log2, log10, sgn, the trigonometric family,
//! deg, rad, pi, clamp, clamp_min, clamp_max, round, max_of, min_of, scalar, vector,
//! time, timestamp, start_timestamp. Float edge cases follow Go's `math` package, which
//! Prometheus uses (e.g. `math.Max(+Inf, NaN)` is +Inf, `math.Max(NaN, 1)` is NaN).
//! Calls the parent's `map_floats` skeleton.

use super::{map_floats, FnCall, FnError, FnOutput};
use crate::model::Labels;
use crate::promql::value::InstantSample;

/// Defines functions that apply one `f64 -> f64` to every sample of argument 0.
macro_rules! element_wise {
    ($($name:ident => $f:expr),* $(,)?) => {
        $(
            pub fn $name(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
                map_floats(call, 0, $f)
            }
        )*
    };
}

element_wise! {
    abs => f64::abs,
    ceil => f64::ceil,
    floor => f64::floor,
    exp => f64::exp,
    sqrt => f64::sqrt,
    ln => f64::ln,
    log2 => f64::log2,
    log10 => f64::log10,
    sin => f64::sin,
    cos => f64::cos,
    tan => f64::tan,
    asin => f64::asin,
    acos => f64::acos,
    atan => f64::atan,
    sinh => f64::sinh,
    cosh => f64::cosh,
    tanh => f64::tanh,
    asinh => f64::asinh,
    acosh => f64::acosh,
    atanh => f64::atanh,
    deg => |v: f64| v * 180.0 / std::f64::consts::PI,
    rad => |v: f64| v * std::f64::consts::PI / 180.0,
    sgn => sign,
}

/// -1, 1, or the value itself for zeros and NaN.
fn sign(v: f64) -> f64 {
    if v < 0.0 {
        -1.0
    } else if v > 0.0 {
        1.0
    } else {
        v
    }
}

/// Go's `math.Max`: +Inf wins over NaN, NaN wins over numbers, +0 over -0.
fn go_max(a: f64, b: f64) -> f64 {
    if a == f64::INFINITY || b == f64::INFINITY {
        f64::INFINITY
    } else if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() {
            b
        } else {
            a
        }
    } else if a > b {
        a
    } else {
        b
    }
}

/// Go's `math.Min`: -Inf wins over NaN, NaN wins over numbers, -0 over +0.
fn go_min(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY || b == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() {
            a
        } else {
            b
        }
    } else if a < b {
        a
    } else {
        b
    }
}

pub fn clamp(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    let (min, max) = (call.scalar(1)?, call.scalar(2)?);
    clamp_between(call, min, max)
}

pub fn clamp_min(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    let min = call.scalar(1)?;
    clamp_between(call, min, f64::INFINITY)
}

pub fn clamp_max(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    let max = call.scalar(1)?;
    clamp_between(call, f64::NEG_INFINITY, max)
}

/// An empty result when max < min, as in Prometheus.
fn clamp_between(call: &FnCall<'_>, min: f64, max: f64) -> Result<FnOutput, FnError> {
    if max < min {
        return Ok(FnOutput::Vector(Vec::new()));
    }
    map_floats(call, 0, |v| go_max(min, go_min(max, v)))
}

/// round(v, to_nearest=1): half-way values round up (towards +Inf).
pub fn round(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    let to_nearest = if call.args.len() >= 2 {
        call.scalar(1)?
    } else {
        1.0
    };
    let inverse = 1.0 / to_nearest;
    map_floats(call, 0, |v| (v * inverse + 0.5).floor() / inverse)
}

pub fn max_of(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    Ok(FnOutput::Scalar(go_max(call.scalar(0)?, call.scalar(1)?)))
}

pub fn min_of(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    Ok(FnOutput::Scalar(go_min(call.scalar(0)?, call.scalar(1)?)))
}

pub fn pi(_: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    Ok(FnOutput::Scalar(std::f64::consts::PI))
}

pub fn time(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    Ok(FnOutput::Scalar(call.ts as f64 / 1000.0))
}

/// The value of the only element, NaN for zero or several elements.
pub fn scalar(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    // The value of the only float sample; histograms are not counted, as in Prometheus.
    let mut floats = call.vector(0)?.iter().filter(|s| s.h.is_none());
    match (floats.next(), floats.next()) {
        (Some(only), None) => Ok(FnOutput::Scalar(only.v)),
        _ => Ok(FnOutput::Scalar(f64::NAN)),
    }
}

/// A one-element vector without labels.
pub fn vector(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    Ok(FnOutput::Vector(vec![InstantSample {
        labels: Labels::empty(),
        t: call.ts,
        v: call.scalar(0)?,
        h: None,
        drop_name: false,
    }]))
}

/// The time (seconds) of each sample: the stored sample's for a bare selector.
pub fn timestamp(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    let out = call
        .vector(0)?
        .iter()
        .map(|s| InstantSample {
            labels: s.labels.clone(),
            t: call.ts,
            v: s.t as f64 / 1000.0,
            h: None,
            drop_name: true,
        })
        .collect();
    Ok(FnOutput::Vector(out))
}

/// Start timestamps (created timestamps) are not stored by Timbala; Prometheus returns
/// nothing for samples without one, and so do we.
pub fn start_timestamp(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    call.vector(0)?;
    Ok(FnOutput::Vector(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::FnArg;
    use super::*;

    fn apply(name: &str, input: &[f64], extra: &[f64]) -> Vec<f64> {
        let vec: Vec<_> = input
            .iter()
            .map(|v| sample(&[("__name__", "m")], *v))
            .collect();
        let mut args = vec![FnArg::Vector(&vec)];
        args.extend(extra.iter().map(|v| FnArg::Scalar(*v)));
        out_values(&eval(name, args, 0, 0))
    }

    fn assert_all(got: Vec<f64>, want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.into_iter().zip(want) {
            assert_close(g, *w);
        }
    }

    #[test]
    fn trig_matches_prometheus_test_values() {
        // From trig_functions.test.
        assert_all(
            apply("sin", &[10.0, 20.0, f64::NAN], &[]),
            &[-0.5440211108893699, 0.9129452507276277, f64::NAN],
        );
        assert_all(
            apply("cos", &[10.0, 20.0], &[]),
            &[-0.8390715290764524, 0.40808206181339196],
        );
        assert_all(
            apply("tan", &[10.0, 20.0], &[]),
            &[0.6483608274590867, 2.2371609442247427],
        );
        assert_all(
            apply("asin", &[-0.1, 9.9], &[]),
            &[-0.10016742116155944, f64::NAN],
        );
        assert_all(apply("acos", &[-0.1], &[]), &[1.670963747956456]);
        assert_all(apply("deg", &[std::f64::consts::PI], &[]), &[180.0]);
        assert_all(apply("rad", &[180.0], &[]), &[std::f64::consts::PI]);
    }

    #[test]
    fn simple_math() {
        assert_all(apply("abs", &[-2.5, 2.0], &[]), &[2.5, 2.0]);
        assert_all(apply("ceil", &[2.5, -2.5], &[]), &[3.0, -2.0]);
        assert_all(apply("floor", &[2.5, -2.5], &[]), &[2.0, -3.0]);
        assert_all(apply("sqrt", &[4.0, -1.0], &[]), &[2.0, f64::NAN]);
        assert_all(
            apply("ln", &[1.0, 0.0, -1.0], &[]),
            &[0.0, f64::NEG_INFINITY, f64::NAN],
        );
        assert_all(apply("log2", &[8.0], &[]), &[3.0]);
        assert_all(apply("log10", &[1000.0], &[]), &[3.0]);
        assert_all(apply("exp", &[0.0], &[]), &[1.0]);
        assert_all(
            apply("sgn", &[-3.0, 0.0, 4.0, f64::NAN], &[]),
            &[-1.0, 0.0, 1.0, f64::NAN],
        );
    }

    #[test]
    fn round_to_nearest() {
        assert_all(
            apply("round", &[2.5, 2.0, -2.5, -2.0, -2.6], &[]),
            &[3.0, 2.0, -2.0, -2.0, -3.0],
        );
        assert_all(apply("round", &[2.6, 2.4], &[0.5]), &[2.5, 2.5]);
        assert_all(apply("round", &[1234.0], &[100.0]), &[1200.0]);
    }

    #[test]
    fn clamp_follows_go_math() {
        let data = [-50.0, 0.0, 100.0];
        assert_all(apply("clamp_max", &data, &[75.0]), &[-50.0, 0.0, 75.0]);
        assert_all(apply("clamp_min", &data, &[-25.0]), &[-25.0, 0.0, 100.0]);
        assert_all(apply("clamp", &data, &[-25.0, 75.0]), &[-25.0, 0.0, 75.0]);
        assert_all(apply("clamp", &data, &[0.0, f64::NAN]), &[f64::NAN; 3]);
        assert_all(apply("clamp", &data, &[f64::NAN, 0.0]), &[f64::NAN; 3]);
        assert!(apply("clamp", &data, &[5.0, -5.0]).is_empty());
        assert_eq!(go_max(f64::INFINITY, f64::NAN), f64::INFINITY);
        assert!(go_max(1.0, f64::NAN).is_nan());
        assert!(go_max(-0.0, 0.0).is_sign_positive());
        assert!(go_min(-0.0, 0.0).is_sign_negative());
    }

    #[test]
    fn element_wise_drops_name_and_restamps() {
        let input = [sample(&[("__name__", "m"), ("a", "b")], -1.0)];
        let out = out_vector(eval("abs", vec![FnArg::Vector(&input)], 5000, 0));
        assert!(out[0].drop_name);
        assert_eq!(out[0].t, 5000);
        assert_eq!(out[0].labels, input[0].labels);
    }

    #[test]
    fn scalar_conversions() {
        let one = [sample(&[("a", "b")], 3.0)];
        let two = [sample(&[("a", "b")], 3.0), sample(&[("a", "c")], 4.0)];
        let out = eval("scalar", vec![FnArg::Vector(&one)], 0, 0);
        assert_eq!(out, FnOutput::Scalar(3.0));
        let out = eval("scalar", vec![FnArg::Vector(&two)], 0, 0);
        assert!(matches!(out, FnOutput::Scalar(v) if v.is_nan()));
        let out = eval("scalar", vec![FnArg::Vector(&[])], 0, 0);
        assert!(matches!(out, FnOutput::Scalar(v) if v.is_nan()));
        let out = out_vector(eval("vector", vec![FnArg::Scalar(7.0)], 1000, 0));
        assert_eq!(out[0].labels, Labels::empty());
        assert_eq!(out[0].v, 7.0);
        assert_eq!(eval("time", vec![], 1500, 0), FnOutput::Scalar(1.5));
        assert_eq!(
            eval("pi", vec![], 0, 0),
            FnOutput::Scalar(std::f64::consts::PI)
        );
        assert_eq!(
            eval("max_of", vec![FnArg::Scalar(1.0), FnArg::Scalar(2.0)], 0, 0),
            FnOutput::Scalar(2.0)
        );
        assert_eq!(
            eval("min_of", vec![FnArg::Scalar(1.0), FnArg::Scalar(2.0)], 0, 0),
            FnOutput::Scalar(1.0)
        );
    }

    #[test]
    fn timestamp_reports_sample_time() {
        let mut s = sample(&[("__name__", "m")], 9.0);
        s.t = 12_345;
        let out = out_vector(eval("timestamp", vec![FnArg::Vector(&[s])], 60_000, 0));
        assert_eq!(out[0].v, 12.345);
        assert_eq!(out[0].t, 60_000);
        assert!(out[0].drop_name);
    }
}
