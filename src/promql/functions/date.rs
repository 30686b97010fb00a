//! Calendar functions: day_of_month, day_of_week, day_of_year, days_in_month, hour,
//! minute, month, year.
//!
//! Owns: the UTC calendar fields of Unix seconds (proleptic Gregorian, no leap seconds,
//! as Go's `time` package). With no argument a function reads the step time; with a
//! vector it reads each sample's value as Unix seconds (truncated toward zero, like
//! Go's `int64(f)`). Calls the parent's `map_floats` skeleton and
//! `crate::timeutil` for the civil-date arithmetic.

use super::{map_floats, FnCall, FnError, FnOutput};
use crate::model::Labels;
use crate::promql::value::InstantSample;
use crate::timeutil::{civil_from_days, days_from_civil, days_in_month as month_length};

/// A UTC civil date and time of day.
#[derive(Debug, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: i64,
    day: i64,
    /// Days since 1970-01-01.
    days: i64,
    seconds_of_day: i64,
}

impl DateTime {
    fn from_unix(seconds: i64) -> Self {
        let days = seconds.div_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year,
            month,
            day,
            days,
            seconds_of_day: seconds.rem_euclid(86_400),
        }
    }
}

/// Applies `f` to the step time (no argument) or to each sample's value.
fn on_date(call: &mut FnCall<'_>, f: fn(&DateTime) -> f64) -> Result<FnOutput, FnError> {
    if call.args.is_empty() {
        // Go's integer division truncates toward zero, like Rust's.
        let now = DateTime::from_unix(call.ts / 1000);
        return Ok(FnOutput::Vector(vec![InstantSample {
            labels: Labels::empty(),
            t: call.ts,
            v: f(&now),
            h: None,
            drop_name: false,
        }]));
    }
    map_floats(call, 0, |v| f(&DateTime::from_unix(v as i64)))
}

pub fn day_of_month(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    on_date(call, |d| d.day as f64)
}

/// 0 for Sunday .. 6 for Saturday.
pub fn day_of_week(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    // 1970-01-01 was a Thursday (4).
    on_date(call, |d| (d.days + 4).rem_euclid(7) as f64)
}

pub fn day_of_year(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    on_date(call, |d| {
        (d.days - days_from_civil(d.year, 1, 1) + 1) as f64
    })
}

pub fn days_in_month(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    on_date(call, |d| month_length(d.year, d.month) as f64)
}

pub fn hour(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    on_date(call, |d| (d.seconds_of_day / 3600) as f64)
}

pub fn minute(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    on_date(call, |d| (d.seconds_of_day % 3600 / 60) as f64)
}

pub fn month(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    on_date(call, |d| d.month as f64)
}

pub fn year(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    on_date(call, |d| d.year as f64)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::FnArg;
    use super::*;

    fn at(name: &str, unix_seconds: f64) -> f64 {
        let input = [sample(&[("__name__", "m")], unix_seconds)];
        out_values(&eval(name, vec![FnArg::Vector(&input)], 0, 0))[0]
    }

    #[test]
    fn without_argument_uses_step_time() {
        // 1970-01-01 00:00 was a Thursday.
        let cases = [
            ("year", 1970.0),
            ("month", 1.0),
            ("day_of_month", 1.0),
            ("day_of_year", 1.0),
            ("day_of_week", 4.0),
            ("hour", 0.0),
            ("minute", 0.0),
            ("days_in_month", 31.0),
        ];
        for (name, want) in cases {
            let out = out_vector(eval(name, vec![], 0, 0));
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].v, want, "{name}");
            assert_eq!(out[0].labels, Labels::empty());
        }
    }

    #[test]
    fn prometheus_test_dates() {
        // From functions.test (2006-01-02 22:04:05 UTC is 1136239445).
        assert_eq!(at("year", 1136239445.0), 2006.0);
        assert_eq!(at("month", 1136239445.0), 1.0);
        assert_eq!(at("day_of_month", 1136239445.0), 2.0);
        assert_eq!(at("day_of_year", 1136239445.0), 2.0);
        assert_eq!(at("day_of_week", 1136239445.0), 1.0);
        assert_eq!(at("hour", 1136239445.0), 22.0);
        assert_eq!(at("minute", 1136239445.0), 4.0);
        assert_eq!(at("year", 1230767999.0), 2008.0);
        assert_eq!(at("year", 1230768000.0), 2009.0);
        assert_eq!(at("month", 1456790399.0), 2.0);
        assert_eq!(at("day_of_month", 1456790399.0), 29.0);
        assert_eq!(at("month", 1456790400.0), 3.0);
        assert_eq!(at("day_of_month", 1456790400.0), 1.0);
        assert_eq!(at("day_of_year", 1483191420.0), 366.0);
        assert_eq!(at("day_of_year", 1672493820.0), 365.0);
        assert_eq!(at("days_in_month", 1454284800.0), 29.0);
        assert_eq!(at("days_in_month", 1485907200.0), 28.0);
    }

    #[test]
    fn before_the_epoch() {
        // 1969-12-31 23:59:59, a Wednesday.
        assert_eq!(at("year", -1.0), 1969.0);
        assert_eq!(at("day_of_month", -1.0), 31.0);
        assert_eq!(at("hour", -1.0), 23.0);
        assert_eq!(at("minute", -1.0), 59.0);
        assert_eq!(at("day_of_week", -1.0), 3.0);
        assert_eq!(at("day_of_year", -1.0), 365.0);
    }
}
