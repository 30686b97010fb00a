//! Native histograms in Prometheus's promqltest scripts: the `{{schema:1 sum:3 ...}}`
//! notation of series values (SERIES-NOTATION.md), its expansions (`{{...}}x3`,
//! `{{...}}+{{...}}x3`, `{{...}}-{{...}}x3`), and the comparison Prometheus's runner
//! makes between an expected and a computed histogram (`compareNativeHistogram`: both
//! compacted, floats almost equal, the counter-reset hint only when the script sets
//! it). Calls `timbala::model::histogram` and `histogram_ops`.
#![allow(dead_code)]

use timbala::model::histogram::{CounterResetHint, FloatHistogram, Span};

/// One histogram of a script, and whether its counter-reset hint was written out.
#[derive(Clone, Debug)]
pub struct ScriptHistogram {
    pub h: FloatHistogram,
    pub hint_set: bool,
}

/// Parses the inside of `{{...}}`: space-separated `key:value` pairs, lists in `[...]`.
pub fn parse_desc(desc: &str) -> Result<ScriptHistogram, String> {
    let mut h = FloatHistogram::default();
    let mut hint_set = false;
    let (mut buckets, mut n_buckets, mut custom) = (Vec::new(), Vec::new(), Vec::new());
    let (mut offset, mut n_offset) = (0i32, 0i32);
    let mut rest = desc.trim();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once(':')
            .ok_or_else(|| format!("histogram field without ':' in {desc:?}"))?;
        let after = after.trim_start();
        let (value, next) = if let Some(list) = after.strip_prefix('[') {
            let end = list
                .find(']')
                .ok_or_else(|| format!("unclosed list in {desc:?}"))?;
            (&list[..end], &list[end + 1..])
        } else {
            after.split_at(after.find(char::is_whitespace).unwrap_or(after.len()))
        };
        let float =
            |v: &str| parse_number(v).ok_or_else(|| format!("bad number {v:?} in {desc:?}"));
        let int = |v: &str| {
            v.parse::<i32>()
                .map_err(|_| format!("bad integer {v:?} in {desc:?}"))
        };
        let list = |v: &str| {
            v.split_whitespace()
                .map(float)
                .collect::<Result<Vec<f64>, _>>()
        };
        match key.trim() {
            "schema" => h.schema = int(value)?,
            "sum" => h.sum = float(value)?,
            "count" => h.count = float(value)?,
            "z_bucket" => h.zero_count = float(value)?,
            "z_bucket_w" => h.zero_threshold = float(value)?,
            "buckets" => buckets = list(value)?,
            "n_buckets" => n_buckets = list(value)?,
            "offset" => offset = int(value)?,
            "n_offset" => n_offset = int(value)?,
            "custom_values" => custom = list(value)?,
            "counter_reset_hint" => {
                hint_set = true;
                h.counter_reset_hint = match value {
                    "unknown" => CounterResetHint::Unknown,
                    "reset" => CounterResetHint::CounterReset,
                    "not_reset" => CounterResetHint::NotCounterReset,
                    "gauge" => CounterResetHint::Gauge,
                    other => return Err(format!("bad counter_reset_hint {other:?}")),
                }
            }
            other => return Err(format!("unknown histogram field {other:?} in {desc:?}")),
        }
        rest = next.trim_start();
    }
    let spans = |offset: i32, n: usize| -> std::sync::Arc<[Span]> {
        if n == 0 {
            std::sync::Arc::from([])
        } else {
            vec![Span {
                offset,
                length: n as u32,
            }]
            .into()
        }
    };
    h.positive_spans = spans(offset, buckets.len());
    h.negative_spans = spans(n_offset, n_buckets.len());
    h.positive_buckets = buckets;
    h.negative_buckets = n_buckets;
    h.custom_values = custom.into();
    Ok(ScriptHistogram { h, hint_set })
}

/// Go's `strconv.ParseFloat` as the script parser uses it (Inf, NaN, hex floats aside).
fn parse_number(s: &str) -> Option<f64> {
    match s {
        "Inf" | "+Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Expands one histogram token: `{{a}}`, `{{a}}xN` (N+1 copies) or `{{a}}+{{b}}xN` /
/// `{{a}}-{{b}}xN` (a, then N more each adding or subtracting b, as Prometheus's
/// `histogramsSeries`).
pub fn expand(token: &str) -> Result<Vec<ScriptHistogram>, String> {
    let (first, rest) = braced(token)?;
    let base = parse_desc(first)?;
    if rest.is_empty() {
        return Ok(vec![base]);
    }
    if let Some(times) = rest.strip_prefix('x') {
        let n = repeat_count(times, token)?;
        return Ok(vec![base; n + 1]);
    }
    let subtract = match rest.as_bytes()[0] {
        b'+' => false,
        b'-' => true,
        _ => return Err(format!("bad histogram expansion {token:?}")),
    };
    let (inc_desc, tail) = braced(&rest[1..])?;
    let inc = parse_desc(inc_desc)?;
    let times = tail
        .strip_prefix('x')
        .ok_or_else(|| format!("histogram increment without a count in {token:?}"))?;
    let n = repeat_count(times, token)?;
    let mut out = vec![base.clone()];
    let mut current = base;
    for _ in 0..n {
        if current.h.schema > inc.h.schema {
            return Err(format!(
                "cannot merge from schema {} to {}",
                inc.h.schema, current.h.schema
            ));
        }
        let mut next = current.h.clone();
        let combined = if subtract {
            next.sub(&inc.h)
        } else {
            next.add(&inc.h)
        };
        combined.map_err(|e| format!("expanding {token:?}: {e}"))?;
        current = ScriptHistogram {
            h: next,
            hint_set: current.hint_set,
        };
        out.push(current.clone());
    }
    Ok(out)
}

fn repeat_count(times: &str, token: &str) -> Result<usize, String> {
    times
        .parse()
        .map_err(|_| format!("bad repeat count in {token:?}"))
}

/// Splits `{{inside}}rest` into `inside` and `rest`.
fn braced(s: &str) -> Result<(&str, &str), String> {
    let inner = s
        .strip_prefix("{{")
        .ok_or_else(|| format!("expected '{{{{' in {s:?}"))?;
    let end = inner
        .find("}}")
        .ok_or_else(|| format!("unclosed histogram in {s:?}"))?;
    Ok((&inner[..end], &inner[end + 2..]))
}

/// Splits a values text into tokens: whitespace-separated, except that `{{...}}` (which
/// holds spaces) belongs to the token it starts or continues.
pub fn tokens(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            if bytes[i..].starts_with(b"{{") {
                match text[i..].find("}}") {
                    Some(end) => i += end + 2,
                    None => i = bytes.len(),
                }
            } else {
                i += 1;
            }
        }
        out.push(&text[start..i]);
    }
    out
}

/// Prometheus's `almost.Equal` with the runner's epsilon.
pub fn almost_equal(a: f64, b: f64) -> bool {
    const EPSILON: f64 = 1e-6;
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < f64::MIN_POSITIVE {
        return diff < EPSILON * f64::MIN_POSITIVE;
    }
    diff / abs_sum.min(f64::MAX) < EPSILON
}

/// Prometheus's `compareNativeHistogram` over both histograms compacted: schema,
/// count, sum, custom bounds, zero bucket, and every non-empty bucket (index and
/// count) on both sides; the hint only when the script set it.
pub fn matches(expected: &ScriptHistogram, got: &FloatHistogram) -> bool {
    let (mut exp, mut cur) = (expected.h.clone(), got.clone());
    exp.compact(0);
    cur.compact(0);
    let buckets = |h: &FloatHistogram, negative: bool| -> Vec<(i32, f64)> {
        let all = if negative {
            h.negative_buckets()
        } else {
            h.positive_buckets()
        };
        all.into_iter()
            .filter(|b| b.count != 0.0)
            .map(|b| (b.index, b.count))
            .collect()
    };
    let same_buckets = |a: Vec<(i32, f64)>, b: Vec<(i32, f64)>| {
        a.len() == b.len()
            && a.iter()
                .zip(&b)
                .all(|(x, y)| x.0 == y.0 && almost_equal(x.1, y.1))
    };
    exp.schema == cur.schema
        && almost_equal(exp.count, cur.count)
        && almost_equal(exp.sum, cur.sum)
        && (!exp.uses_custom_buckets() || exp.custom_values == cur.custom_values)
        && exp.zero_threshold == cur.zero_threshold
        && almost_equal(exp.zero_count, cur.zero_count)
        && same_buckets(buckets(&exp, true), buckets(&cur, true))
        && same_buckets(buckets(&exp, false), buckets(&cur, false))
        && (!expected.hint_set || exp.counter_reset_hint == cur.counter_reset_hint)
}

/// A short text of a histogram for failure messages.
pub fn show(h: &FloatHistogram) -> String {
    let mut h = h.clone();
    h.compact(0);
    format!(
        "{{{{schema:{} count:{} sum:{} z:{}@{} pos:{:?} neg:{:?} hint:{:?}}}}}",
        h.schema,
        h.count,
        h.sum,
        h.zero_count,
        h.zero_threshold,
        h.positive_buckets()
            .iter()
            .map(|b| (b.index, b.count))
            .collect::<Vec<_>>(),
        h.negative_buckets()
            .iter()
            .map(|b| (b.index, b.count))
            .collect::<Vec<_>>(),
        h.counter_reset_hint
    )
}
