//! Calendar functions: day_of_month, day_of_week, day_of_year, days_in_month, hour,
//! minute, month, year.
//!
//! Owns: UTC calendar arithmetic on Unix seconds (proleptic Gregorian, no leap seconds,
//! as Go's `time` package). With no argument a function reads the step time; with a
//! vector it reads each sample's value as Unix seconds (truncated toward zero, like
//! Go's `int64(f)`). Calls the parent's `map_floats` skeleton.

use super::{map_floats, FnCall, FnError, FnOutput};
use crate::model::Labels;
use crate::promql::value::InstantSample;

/// A UTC civil date and time of day.
#[derive(Debug, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u32,
    day: u32,
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

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a civil date (inverse of `civil_from_days`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
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
            drop_name: false,
        }]));
    }
    map_floats(call, 0, |v| f(&DateTime::from_unix(v as i64)))
}

pub fn day_of_month(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    on_date(call, |d| f64::from(d.day))
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
    on_date(call, |d| f64::from(days_in(d.year, d.month)))
}

pub fn hour(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    on_date(call, |d| (d.seconds_of_day / 3600) as f64)
}

pub fn minute(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    on_date(call, |d| (d.seconds_of_day % 3600 / 60) as f64)
}

pub fn month(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    on_date(call, |d| f64::from(d.month))
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

    #[test]
    fn civil_round_trip() {
        for days in [-719_468, -1, 0, 59, 10_957, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
