//! Rendering of API answers byte for byte as Prometheus renders them.
//!
//! Owns: the JSON success envelope, query results (vector, matrix, scalar, string),
//! label sets, string lists and exemplars, Go-compatible string escaping (HTML-safe, as Go's
//! encoding), and the choice of Go float format (`promql::functions::gofmt` does the formatting,
//! re-exported here for the text exposition of `/federate`).
//! Writes straight into a byte buffer: no allocation per sample.
//! Calls `model` and `promql::value`; used by the `query`, `status` and `federate` routers.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::header;
use axum::response::{IntoResponse, Response};

pub use crate::promql::functions::gofmt::{append_go_float, GoFloat};

use crate::model::histogram::FloatHistogram;
use crate::model::{Labels, SeriesExemplars};
use crate::promql::{QueryStats, QueryValue};
use crate::timeutil::civil_from_days;

/// A float sample value as Prometheus's JSON renders it: a string, 'f' format except
/// for magnitudes below 1e-6 or from 1e21 on, which use 'e' (`jsonutil.MarshalFloat`).
pub fn write_sample_value(out: &mut Vec<u8>, v: f64) {
    let abs = v.abs();
    let format = if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        GoFloat::E
    } else {
        GoFloat::F
    };
    out.push(b'"');
    append_go_float(out, v, format);
    out.push(b'"');
}

/// A scalar result's value: always 'f' format, as Prometheus's `Scalar.MarshalJSON`.
pub fn write_scalar_value(out: &mut Vec<u8>, v: f64) {
    out.push(b'"');
    append_go_float(out, v, GoFloat::F);
    out.push(b'"');
}

/// A sample timestamp in seconds with exactly the millisecond digits it has
/// (`1435781451.781`, `1435781451.5` is written `1435781451.500`), as
/// `jsonutil.MarshalTimestamp`.
pub fn write_timestamp(out: &mut Vec<u8>, t_ms: i64) {
    let abs = t_ms.unsigned_abs();
    if t_ms < 0 {
        out.push(b'-');
    }
    let _ = write!(out, "{}", abs / 1000);
    let fraction = abs % 1000;
    if fraction != 0 {
        let _ = write!(out, ".{fraction:03}");
    }
}

/// A timestamp as Go's JSON encoding of `float64(t)/1000` (scalar and string results).
fn write_seconds_float(out: &mut Vec<u8>, t_ms: i64) {
    append_go_float(out, t_ms as f64 / 1000.0, GoFloat::F);
}

/// A JSON string with Go's escaping: `"`, `\`, control characters, and the HTML-unsafe
/// `<`, `>`, `&`, U+2028 and U+2029 as `\u` escapes.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | b'<' | b'>' | b'&' => b"",
            // U+2028 and U+2029 are E2 80 A8 / E2 80 A9 in UTF-8.
            0xe2 if bytes.get(i + 1) == Some(&0x80)
                && matches!(bytes.get(i + 2), Some(0xa8 | 0xa9)) =>
            {
                out.extend_from_slice(&bytes[start..i]);
                let last = if bytes[i + 2] == 0xa8 { b'8' } else { b'9' };
                out.extend_from_slice(b"\\u202");
                out.push(last);
                start = i + 3;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A label set as a JSON object in label order: `{"__name__":"up","job":"api"}`.
pub fn write_labels(out: &mut Vec<u8>, labels: &Labels) {
    out.push(b'{');
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, &label.name);
        out.push(b':');
        write_str(out, &label.value);
    }
    out.push(b'}');
}

/// `["a","b"]`.
pub fn write_string_list<S: AsRef<str>>(out: &mut Vec<u8>, items: &[S]) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, item.as_ref());
    }
    out.push(b']');
}

/// `[{"__name__":"up",...},...]`, the data of `/api/v1/series`.
pub fn write_label_sets(out: &mut Vec<u8>, sets: &[Labels]) {
    out.push(b'[');
    for (i, labels) in sets.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_labels(out, labels);
    }
    out.push(b']');
}

/// The data of `/api/v1/query_exemplars`, as Prometheus writes it:
/// `[{"seriesLabels":{...},"exemplars":[{"labels":{...},"value":"6","timestamp":1600096945.479}]}]`.
pub fn write_exemplars(out: &mut Vec<u8>, found: &[SeriesExemplars]) {
    out.push(b'[');
    for (i, series) in found.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"seriesLabels\":");
        write_labels(out, &series.series);
        out.extend_from_slice(b",\"exemplars\":[");
        for (j, e) in series.exemplars.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"labels\":");
            write_labels(out, &e.labels);
            out.extend_from_slice(b",\"value\":");
            write_sample_value(out, e.value);
            out.extend_from_slice(b",\"timestamp\":");
            write_timestamp(out, e.t);
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
    }
    out.push(b']');
}

/// `{"resultType":"vector","result":[...]}`, the data of `/api/v1/query(_range)`.
/// Vector samples are stamped with the evaluation time, as Prometheus answers: the
/// engine keeps a selected sample's own timestamp in `InstantSample::t` for
/// `timestamp()`, which is not what the API reports.
pub fn write_query_data(out: &mut Vec<u8>, value: &QueryValue, eval_time_ms: i64) {
    write_query_data_with_stats(out, value, eval_time_ms, None);
}

/// `write_query_data`, with Prometheus's `stats` member when `stats` is given:
/// `{"timings":{"evalTotalTime",...} (seconds),"samples":{"totalQueryableSamples",
/// "samplesRead","peakSamples"}}` (Prometheus's `util/stats` shape, without the
/// per-step lists it adds only behind a feature flag).
pub fn write_query_data_with_stats(
    out: &mut Vec<u8>,
    value: &QueryValue,
    eval_time_ms: i64,
    stats: Option<&QueryStats>,
) {
    write_query_value(out, value, eval_time_ms);
    if let Some(stats) = stats {
        out.pop(); // the closing brace of the data object
        out.extend_from_slice(b",\"stats\":{\"timings\":{");
        let timings = [
            ("evalTotalTime", stats.eval_total),
            ("resultSortTime", stats.result_sort),
            ("queryPreparationTime", stats.preparation),
            ("innerEvalTime", stats.inner_eval),
            ("execQueueTime", stats.exec_queue),
            ("execTotalTime", stats.exec_total),
        ];
        for (i, (name, duration)) in timings.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, name);
            out.push(b':');
            out.extend_from_slice(format!("{}", duration.as_secs_f64()).as_bytes());
        }
        out.extend_from_slice(
            format!(
                "}},\"samples\":{{\"totalQueryableSamples\":{},\"samplesRead\":{},\"peakSamples\":{}}}}}}}",
                stats.total_queryable_samples, stats.samples_read, stats.peak_samples
            )
            .as_bytes(),
        );
    }
}

fn write_query_value(out: &mut Vec<u8>, value: &QueryValue, eval_time_ms: i64) {
    out.extend_from_slice(b"{\"resultType\":");
    write_str(out, value.type_name());
    out.extend_from_slice(b",\"result\":");
    match value {
        QueryValue::Scalar { t, v } => {
            out.push(b'[');
            write_seconds_float(out, *t);
            out.push(b',');
            write_scalar_value(out, *v);
            out.push(b']');
        }
        QueryValue::String { t, s } => {
            out.push(b'[');
            write_seconds_float(out, *t);
            out.push(b',');
            write_str(out, s);
            out.push(b']');
        }
        QueryValue::Vector(samples) => {
            out.push(b'[');
            for (i, sample) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"metric\":");
                write_labels(out, &sample.labels);
                match &sample.h {
                    Some(h) => {
                        out.extend_from_slice(b",\"histogram\":[");
                        write_timestamp(out, eval_time_ms);
                        out.push(b',');
                        write_histogram(out, h);
                    }
                    None => {
                        out.extend_from_slice(b",\"value\":[");
                        write_timestamp(out, eval_time_ms);
                        out.push(b',');
                        write_sample_value(out, sample.v);
                    }
                }
                out.extend_from_slice(b"]}");
            }
            out.push(b']');
        }
        QueryValue::Matrix(series) => {
            out.push(b'[');
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"metric\":");
                write_labels(out, &s.labels);
                // Prometheus leaves "values" out of a series without float points.
                if !s.points.is_empty() {
                    out.extend_from_slice(b",\"values\":[");
                    for (j, p) in s.points.iter().enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        out.push(b'[');
                        write_timestamp(out, p.t);
                        out.push(b',');
                        write_sample_value(out, p.v);
                        out.push(b']');
                    }
                    out.push(b']');
                }
                if !s.histograms.is_empty() {
                    out.extend_from_slice(b",\"histograms\":[");
                    for (j, p) in s.histograms.iter().enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        out.push(b'[');
                        write_timestamp(out, p.t);
                        out.push(b',');
                        write_histogram(out, &p.h);
                        out.push(b']');
                    }
                    out.push(b']');
                }
                out.push(b'}');
            }
            out.push(b']');
        }
    }
    out.push(b'}');
}

/// A native histogram as Prometheus's JSON renders it (`jsonutil.MarshalHistogram`):
/// count and sum, then every bucket with a count as `[rule, "lower", "upper",
/// "count"]` (`Bucket::boundary_rule`), left out entirely when there is none.
pub fn write_histogram(out: &mut Vec<u8>, h: &FloatHistogram) {
    out.extend_from_slice(b"{\"count\":");
    write_sample_value(out, h.count);
    out.extend_from_slice(b",\"sum\":");
    write_sample_value(out, h.sum);
    let mut any = false;
    for bucket in h.all_buckets().iter().filter(|b| b.count != 0.0) {
        out.extend_from_slice(if any { b",[" } else { b",\"buckets\":[[" });
        any = true;
        out.push(b'0' + bucket.boundary_rule());
        for v in [bucket.lower, bucket.upper, bucket.count] {
            out.push(b',');
            write_sample_value(out, v);
        }
        out.push(b']');
    }
    if any {
        out.push(b']');
    }
    out.push(b'}');
}

/// Prometheus's success envelope around data written by `write_data`, with warnings
/// and infos only when present: `{"status":"success","data":...,"warnings":[...]}`.
pub fn success_body(
    warnings: &[String],
    infos: &[String],
    write_data: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"status\":\"success\",\"data\":");
    write_data(&mut out);
    if !warnings.is_empty() {
        out.extend_from_slice(b",\"warnings\":");
        write_string_list(&mut out, warnings);
    }
    if !infos.is_empty() {
        out.extend_from_slice(b",\"infos\":");
        write_string_list(&mut out, infos);
    }
    out.push(b'}');
    out
}

/// `success_body` as an HTTP 200 `application/json` response.
pub fn success_response(
    warnings: &[String],
    infos: &[String],
    write_data: impl FnOnce(&mut Vec<u8>),
) -> Response {
    let body = success_body(warnings, infos, write_data);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A wall-clock time as Go's `time.Time` JSON (RFC 3339 with nanoseconds, trailing
/// zeros trimmed), in UTC: `2026-11-21T14:59:37.1234Z`.
pub fn format_rfc3339_nano(time: SystemTime) -> String {
    let (seconds, nanos) = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
            if n == 0 {
                (-s, 0)
            } else {
                (-s - 1, 1_000_000_000 - n)
            }
        }
    };
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let second_of_day = seconds.rem_euclid(86_400);
    let mut s = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    );
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        let _ = write!(s, ".{}", fraction.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sample;
    use crate::promql::{InstantSample, RangeSeries};

    fn text(write: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn sample_values_switch_to_exponent_outside_1e_minus_6_to_1e21() {
        assert_eq!(text(|o| write_sample_value(o, 1.0)), r#""1""#);
        assert_eq!(
            text(|o| write_sample_value(o, 1e20)),
            r#""100000000000000000000""#
        );
        assert_eq!(text(|o| write_sample_value(o, 1e21)), r#""1e+21""#);
        assert_eq!(text(|o| write_sample_value(o, 0.000001)), r#""0.000001""#);
        assert_eq!(text(|o| write_sample_value(o, 1e-7)), r#""1e-07""#);
        assert_eq!(text(|o| write_sample_value(o, 0.0)), r#""0""#);
        assert_eq!(text(|o| write_sample_value(o, f64::NAN)), r#""NaN""#);
        assert_eq!(
            text(|o| write_scalar_value(o, 1e21)),
            r#""1000000000000000000000""#
        );
    }

    #[test]
    fn timestamps_keep_millisecond_digits() {
        assert_eq!(
            text(|o| write_timestamp(o, 1_435_781_451_781)),
            "1435781451.781"
        );
        assert_eq!(
            text(|o| write_timestamp(o, 1_435_781_451_000)),
            "1435781451"
        );
        assert_eq!(text(|o| write_timestamp(o, 1_500)), "1.500");
        assert_eq!(text(|o| write_timestamp(o, 1_005)), "1.005");
        assert_eq!(text(|o| write_timestamp(o, -1_500)), "-1.500");
        assert_eq!(text(|o| write_seconds_float(o, 1_500)), "1.5");
    }

    #[test]
    fn strings_escape_like_go() {
        assert_eq!(text(|o| write_str(o, "plain")), r#""plain""#);
        assert_eq!(
            text(|o| write_str(o, "a\"b\\c\nd\te\u{1}<&>")),
            r#""a\"b\\c\nd\te\u0001\u003c\u0026\u003e""#
        );
        assert_eq!(
            text(|o| write_str(o, "x\u{2028}y\u{2029}zé")),
            "\"x\\u2028y\\u2029zé\""
        );
    }

    #[test]
    fn native_histograms_render_as_prometheus_does() {
        use crate::model::histogram::Span;
        use crate::promql::value::HPoint;
        let h = std::sync::Arc::new(FloatHistogram {
            schema: 0,
            zero_threshold: 0.001,
            zero_count: 1.0,
            count: 5.0,
            sum: 10.5,
            positive_spans: vec![Span {
                offset: 0,
                length: 3,
            }]
            .into(),
            positive_buckets: vec![2.0, 0.0, 2.0],
            negative_spans: vec![Span {
                offset: 1,
                length: 1,
            }]
            .into(),
            negative_buckets: vec![1e-7],
            ..Default::default()
        });
        let labels = Labels::from_pairs([("__name__", "h")]);
        let vector = QueryValue::Vector(vec![InstantSample {
            labels: labels.clone(),
            t: 1_000,
            v: 0.0,
            h: Some(h.clone()),
            drop_name: false,
        }]);
        // Negative buckets first, highest magnitude first; empty buckets left out.
        let rendered = r#"{"count":"5","sum":"10.5","buckets":[[1,"-2","-1","1e-07"],[3,"-0.001","0.001","1"],[0,"0.5","1","2"],[0,"2","4","2"]]}"#;
        assert_eq!(
            text(|o| write_query_data(o, &vector, 1_000)),
            format!(
                r#"{{"resultType":"vector","result":[{{"metric":{{"__name__":"h"}},"histogram":[1,{rendered}]}}]}}"#
            )
        );
        let matrix = QueryValue::Matrix(vec![RangeSeries {
            labels,
            points: vec![Sample::new(1000, 1.0)],
            histograms: vec![HPoint { t: 2000, h }],
            drop_name: false,
        }]);
        assert_eq!(
            text(|o| write_query_data(o, &matrix, 0)),
            format!(
                r#"{{"resultType":"matrix","result":[{{"metric":{{"__name__":"h"}},"values":[[1,"1"]],"histograms":[[2,{rendered}]]}}]}}"#
            )
        );
        let empty = FloatHistogram::default();
        assert_eq!(
            text(|o| write_histogram(o, &empty)),
            r#"{"count":"0","sum":"0"}"#
        );
    }

    #[test]
    fn vector_and_matrix_shapes() {
        let labels = Labels::from_pairs([("__name__", "up"), ("job", "a")]);
        let vector = QueryValue::Vector(vec![InstantSample {
            labels: labels.clone(),
            t: 999_000,
            v: 1.0,
            h: None,
            drop_name: false,
        }]);
        assert_eq!(
            text(|o| write_query_data(o, &vector, 1_000_500)),
            r#"{"resultType":"vector","result":[{"metric":{"__name__":"up","job":"a"},"value":[1000.500,"1"]}]}"#
        );
        let matrix = QueryValue::Matrix(vec![
            RangeSeries {
                labels: Labels::empty(),
                points: vec![Sample::new(1000, 2.5), Sample::new(2000, f64::INFINITY)],
                histograms: Vec::new(),
                drop_name: false,
            },
            RangeSeries {
                labels,
                points: vec![],
                histograms: Vec::new(),
                drop_name: false,
            },
        ]);
        assert_eq!(
            text(|o| write_query_data(o, &matrix, 0)),
            r#"{"resultType":"matrix","result":[{"metric":{},"values":[[1,"2.5"],[2,"+Inf"]]},{"metric":{"__name__":"up","job":"a"}}]}"#
        );
        let scalar = QueryValue::Scalar { t: 1_500, v: 1e21 };
        assert_eq!(
            text(|o| write_query_data(o, &scalar, 0)),
            r#"{"resultType":"scalar","result":[1.5,"1000000000000000000000"]}"#
        );
        let string = QueryValue::String {
            t: 2_000,
            s: "hi".into(),
        };
        assert_eq!(
            text(|o| write_query_data(o, &string, 0)),
            r#"{"resultType":"string","result":[2,"hi"]}"#
        );
        assert_eq!(
            text(|o| write_query_data(o, &QueryValue::Vector(vec![]), 0)),
            r#"{"resultType":"vector","result":[]}"#
        );
    }

    #[test]
    fn envelope_with_and_without_annotations() {
        let body = success_body(&[], &[], |o| write_string_list::<&str>(o, &[]));
        assert_eq!(body, br#"{"status":"success","data":[]}"#);
        let body = success_body(&["w".into()], &["i".into()], |o| {
            write_string_list(o, &["a", "b"])
        });
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"status":"success","data":["a","b"],"warnings":["w"],"infos":["i"]}"#
        );
    }

    #[test]
    fn rfc3339_nano_like_go() {
        let t = UNIX_EPOCH + std::time::Duration::new(1_435_781_451, 781_000_000);
        assert_eq!(format_rfc3339_nano(t), "2015-07-01T20:10:51.781Z");
        assert_eq!(format_rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let before = UNIX_EPOCH - std::time::Duration::from_millis(500);
        assert_eq!(format_rfc3339_nano(before), "1969-12-31T23:59:59.5Z");
    }
}
