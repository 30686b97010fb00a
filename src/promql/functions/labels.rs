//! Functions about series identity and order: label_replace, label_join, absent, sort,
//! sort_desc, sort_by_label, sort_by_label_desc.
//!
//! Owns: the labels `absent`/`absent_over_time` derive from a selector's equality
//! matchers, Prometheus's error texts for bad regexes and label names, and the natural
//! string order Prometheus sorts label values in (github.com/facette/natsort's rules,
//! quirks included). Calls the parent and `gofmt`.

use std::cmp::Ordering;

use promql_parser::label::MatchOp;
use promql_parser::parser::Expr;
use regex::Regex;

use super::{FnCall, FnError, FnOutput};
use crate::model::{Labels, METRIC_NAME};
use crate::promql::value::InstantSample;

/// 1 with the selector's labels when the vector is empty, nothing otherwise.
pub fn absent(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    if !call.vector(0)?.is_empty() {
        return Ok(FnOutput::Vector(Vec::new()));
    }
    Ok(FnOutput::Vector(vec![InstantSample {
        labels: absent_labels(call.arg_exprs.first().map(|e| &**e)),
        t: call.ts,
        v: 1.0,
        h: None,
        drop_name: false,
    }]))
}

/// The labels `absent(sel)` reports: one per equality matcher on a label other than the
/// name, unless the same label is matched more than once (then it is unknowable and
/// left out). Anything but a plain selector gives no labels.
pub fn absent_labels(expr: Option<&Expr>) -> Labels {
    let matchers = match expr {
        Some(Expr::VectorSelector(vs)) => &vs.matchers.matchers,
        Some(Expr::MatrixSelector(ms)) => &ms.vs.matchers.matchers,
        _ => return Labels::empty(),
    };
    let mut labels = Labels::empty();
    let mut seen: Vec<&str> = Vec::with_capacity(matchers.len());
    for m in matchers.iter().filter(|m| m.name != METRIC_NAME) {
        if matches!(m.op, MatchOp::Equal) && !seen.contains(&m.name.as_str()) {
            labels.set(&m.name, &m.value);
            seen.push(&m.name);
        } else {
            labels.remove(&m.name);
        }
    }
    labels
}

/// label_replace(v, dst, replacement, src, regex): where the fully anchored regex
/// matches the value of `src`, sets `dst` to the expanded replacement.
pub fn label_replace(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    let input = call.vector(0)?;
    let dst = call.string(1)?;
    let replacement = call.string(2)?;
    let src = call.string(3)?;
    let pattern = call.string(4)?;
    let regex = Regex::new(&format!("^(?s:{pattern})$")).map_err(|_| {
        FnError::Execution(format!(
            "invalid regular expression in label_replace(): {pattern}"
        ))
    })?;
    if !is_valid_label_name(dst) {
        return Err(FnError::Execution(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    let mut expanded = String::new();
    let out = input
        .iter()
        .map(|s| {
            let mut out = s.clone();
            out.t = call.ts;
            let value = s.labels.get(src).unwrap_or("");
            if let Some(captures) = regex.captures(value) {
                expanded.clear();
                captures.expand(replacement, &mut expanded);
                set_label(&mut out, dst, &expanded);
            }
            out
        })
        .collect();
    unique_label_sets(out)
}

/// label_join(v, dst, separator, src...): sets `dst` to the values of the source labels
/// joined by the separator.
pub fn label_join(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    let input = call.vector(0)?;
    let dst = call.string(1)?;
    let separator = call.string(2)?;
    let sources = (3..call.args.len())
        .map(|i| call.string(i))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(bad) = sources.iter().find(|s| !is_valid_label_name(s)) {
        return Err(FnError::Execution(format!(
            "invalid source label name in label_join(): {bad}"
        )));
    }
    if !is_valid_label_name(dst) {
        return Err(FnError::Execution(format!(
            "invalid destination label name in label_join(): {dst}"
        )));
    }
    let mut joined = String::new();
    let out = input
        .iter()
        .map(|s| {
            joined.clear();
            for (i, src) in sources.iter().enumerate() {
                if i > 0 {
                    joined.push_str(separator);
                }
                joined.push_str(s.labels.get(src).unwrap_or(""));
            }
            let mut out = s.clone();
            out.t = call.ts;
            set_label(&mut out, dst, &joined);
            out
        })
        .collect();
    unique_label_sets(out)
}

/// Prometheus accepts any non-empty UTF-8 label name (UTF-8 validation scheme); Rust
/// strings are UTF-8 already.
fn is_valid_label_name(name: &str) -> bool {
    !name.is_empty()
}

/// Sets (or, with an empty value, removes) a label. Writing `__name__` explicitly brings
/// the name back even if an earlier function asked to drop it.
fn set_label(sample: &mut InstantSample, name: &str, value: &str) {
    sample.labels.set(name, value);
    if name == METRIC_NAME {
        sample.drop_name = false;
    }
}

/// Two results with the same labels at the same step are an error, as in Prometheus.
fn unique_label_sets(out: Vec<InstantSample>) -> Result<FnOutput, FnError> {
    let mut order: Vec<&Labels> = out.iter().map(|s| &s.labels).collect();
    order.sort_unstable();
    if order.windows(2).any(|w| w[0] == w[1]) {
        return Err(FnError::Execution(
            "vector cannot contain metrics with the same labelset".to_string(),
        ));
    }
    Ok(FnOutput::Vector(out))
}

/// Ascending by value, NaN last.
pub fn sort(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    sorted(call, |a, b| a.partial_cmp(&b).unwrap_or(Ordering::Equal))
}

/// Descending by value, NaN last.
pub fn sort_desc(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    sorted(call, |a, b| b.partial_cmp(&a).unwrap_or(Ordering::Equal))
}

fn sorted(call: &FnCall<'_>, by_value: impl Fn(f64, f64) -> Ordering) -> Result<FnOutput, FnError> {
    let mut out = restamped(call)?;
    // Histograms have no order by value: Prometheus leaves them out.
    out.retain(|s| s.h.is_none());
    out.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => by_value(a.v, b.v),
    });
    Ok(FnOutput::Vector(out))
}

/// By the given labels' values in natural order, then by the full label set.
pub fn sort_by_label(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    sorted_by_labels(call, false)
}

pub fn sort_by_label_desc(call: &mut FnCall<'_>) -> Result<FnOutput, FnError> {
    sorted_by_labels(call, true)
}

fn sorted_by_labels(call: &FnCall<'_>, descending: bool) -> Result<FnOutput, FnError> {
    let names = (1..call.args.len())
        .map(|i| call.string(i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = restamped(call)?;
    out.sort_by(|a, b| {
        let ord = names
            .iter()
            .map(|n| natural_cmp(a.labels.get(n).unwrap_or(""), b.labels.get(n).unwrap_or("")))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| a.labels.cmp(&b.labels));
        if descending {
            ord.reverse()
        } else {
            ord
        }
    });
    Ok(FnOutput::Vector(out))
}

/// The input vector (argument 0) with the step's timestamp.
fn restamped(call: &FnCall<'_>) -> Result<Vec<InstantSample>, FnError> {
    let ts = call.ts;
    Ok(call
        .vector(0)?
        .iter()
        .map(|s| InstantSample { t: ts, ..s.clone() })
        .collect())
}

/// Natural order: runs of digits compare as numbers (leading zeros skipped, longer runs
/// are bigger), everything else byte by byte. Follows facette/natsort exactly, including
/// its quirk of skipping a leading '0' even when a non-digit follows it.
///
/// Strings natsort ranks neither way (e.g. "1" and "01") compare equal here, so the sort
/// stays a total order and falls through to the next key.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    if natural_less(a.as_bytes(), b.as_bytes()) {
        Ordering::Less
    } else if natural_less(b.as_bytes(), a.as_bytes()) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

fn natural_less(a: &[u8], b: &[u8]) -> bool {
    let (mut pa, mut pb) = (0, 0);
    loop {
        if pa >= a.len() {
            return pb < b.len();
        }
        if pb >= b.len() {
            return false;
        }
        let (ca, cb) = (a[pa], b[pb]);
        if ca.is_ascii_digit() && cb.is_ascii_digit() {
            let (start_a, len_a) = digit_run(a, pa);
            let (start_b, len_b) = digit_run(b, pb);
            if len_a != len_b {
                return len_a < len_b;
            }
            match a[start_a..start_a + len_a].cmp(&b[start_b..start_b + len_b]) {
                Ordering::Less => return true,
                Ordering::Greater => return false,
                Ordering::Equal => {}
            }
            pa = start_a + len_a;
            pb = start_b + len_b;
            continue;
        }
        if ca != cb {
            return ca < cb;
        }
        pa += 1;
        pb += 1;
    }
}

/// natsort's numeric run starting at `pos` (a digit): leading '0's are skipped while
/// more bytes follow (whatever they are); returns the run's start and length.
fn digit_run(s: &[u8], mut pos: usize) -> (usize, usize) {
    let mut len = 1;
    let mut current = s[pos];
    while pos + len < s.len() {
        let next = s[pos + len];
        if current == b'0' {
            pos += 1;
            current = next;
            continue;
        }
        if next.is_ascii_digit() {
            len += 1;
        } else {
            break;
        }
    }
    (pos, len)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::FnArg;
    use super::*;

    fn strings<'a>(input: &'a [InstantSample], s: &[&'a str]) -> Vec<FnArg<'a>> {
        let mut args = vec![FnArg::Vector(input)];
        args.extend(s.iter().map(|s| FnArg::String(s)));
        args
    }

    #[test]
    fn absent_labels_follow_prometheus() {
        let cases = [
            (r#"nonexistent"#, vec![]),
            (
                r#"nonexistent{job="testjob", instance="testinstance", method=~".x"}"#,
                vec![("instance", "testinstance"), ("job", "testjob")],
            ),
            (
                r#"nonexistent{job="testjob",job="testjob2",foo="bar"}"#,
                vec![("foo", "bar")],
            ),
            (
                r#"nonexistent{job="testjob",job="testjob2",job="three",foo="bar"}"#,
                vec![("foo", "bar")],
            ),
            (
                r#"nonexistent{job="testjob",job=~"testjob2",foo="bar"}"#,
                vec![("foo", "bar")],
            ),
            (r#"{__name__="x", a="b"}[5m]"#, vec![("a", "b")]),
            (r#"sum(nonexistent{job="testjob"})"#, vec![]),
        ];
        for (query, want) in cases {
            let expr = promql_parser::parser::parse(query).unwrap();
            assert_eq!(absent_labels(Some(&expr)), labels(&want), "{query}");
        }
    }

    #[test]
    fn absent_only_for_empty_input() {
        let expr = [Box::new(
            promql_parser::parser::parse(r#"x{a="b"}"#).unwrap(),
        )];
        let (out, _) = eval_with("absent", vec![FnArg::Vector(&[])], &expr, 0, 0, false);
        let out = out_vector(out.unwrap());
        assert_eq!(out[0].labels, labels(&[("a", "b")]));
        let input = [sample(&[("__name__", "x")], 1.0)];
        let (out, _) = eval_with("absent", vec![FnArg::Vector(&input)], &expr, 0, 0, false);
        assert!(out_vector(out.unwrap()).is_empty());
    }

    #[test]
    fn label_replace_expands_captures() {
        let input = [sample(
            &[("__name__", "m"), ("src", "source-value-10")],
            1.0,
        )];
        let args = strings(
            &input,
            &["dst", "destination-value-$1", "src", "source-value-(.*)"],
        );
        let out = out_vector(eval("label_replace", args, 0, 0));
        assert_eq!(out[0].labels.get("dst"), Some("destination-value-10"));
        assert!(!out[0].drop_name);
        // No match: unchanged. The regex is anchored.
        let args = strings(&input, &["dst", "x", "src", "value-(.*)"]);
        let out = out_vector(eval("label_replace", args, 0, 0));
        assert_eq!(out[0].labels, input[0].labels);
        // Empty replacement deletes the label.
        let args = strings(&input, &["src", "", "src", ".*"]);
        let out = out_vector(eval("label_replace", args, 0, 0));
        assert_eq!(out[0].labels.get("src"), None);
        // Named groups and ${1} forms.
        let args = strings(&input, &["dst", "${1}-$name", "src", "(?P<name>source)-.*"]);
        let out = out_vector(eval("label_replace", args, 0, 0));
        assert_eq!(out[0].labels.get("dst"), Some("source-source"));
    }

    #[test]
    fn label_replace_of_name_revives_it() {
        let mut s = sample(&[("__name__", "m"), ("a", "b")], 1.0);
        s.drop_name = true;
        let input = [s];
        let args = strings(&input, &["__name__", "new_$1", "a", "(.*)"]);
        let out = out_vector(eval("label_replace", args, 0, 0));
        assert_eq!(out[0].labels.metric_name(), Some("new_b"));
        assert!(!out[0].drop_name);
        let args = strings(&input, &["other", "x", "a", "(.*)"]);
        assert!(out_vector(eval("label_replace", args, 0, 0))[0].drop_name);
    }

    #[test]
    fn label_replace_errors() {
        let input = [sample(&[("src", "a")], 1.0), sample(&[("src", "b")], 1.0)];
        let run = |s: &[&str]| eval_with("label_replace", strings(&input, s), &[], 0, 0, false).0;
        assert_eq!(
            run(&["dst", "value-$1", "src", "(.*"]),
            Err(FnError::Execution(
                "invalid regular expression in label_replace(): (.*".into()
            ))
        );
        assert_eq!(
            run(&["", "", "src", "(.*)"]),
            Err(FnError::Execution(
                "invalid destination label name in label_replace(): ".into()
            ))
        );
        assert_eq!(
            run(&["src", "", "", ""]),
            Err(FnError::Execution(
                "vector cannot contain metrics with the same labelset".into()
            ))
        );
    }

    #[test]
    fn label_join_joins() {
        let input = [sample(&[("src", "a"), ("src1", "b"), ("src2", "c")], 1.0)];
        let args = strings(&input, &["dst", "-", "src", "src1", "src2"]);
        let out = out_vector(eval("label_join", args, 0, 0));
        assert_eq!(out[0].labels.get("dst"), Some("a-b-c"));
        let args = strings(&input, &["dst", "-", "missing", "src"]);
        assert_eq!(
            out_vector(eval("label_join", args, 0, 0))[0]
                .labels
                .get("dst"),
            Some("-a")
        );
        // Joining nothing removes the destination.
        let args = strings(&input, &["src", ","]);
        assert_eq!(
            out_vector(eval("label_join", args, 0, 0))[0]
                .labels
                .get("src"),
            None
        );
        let (out, _) = eval_with(
            "label_join",
            strings(&input, &["dst", ",", ""]),
            &[],
            0,
            0,
            false,
        );
        assert_eq!(
            out,
            Err(FnError::Execution(
                "invalid source label name in label_join(): ".into()
            ))
        );
    }

    #[test]
    fn sort_puts_nan_last_both_ways() {
        let input = [
            sample(&[("i", "a")], 3.0),
            sample(&[("i", "b")], f64::NAN),
            sample(&[("i", "c")], 1.0),
            sample(&[("i", "d")], 2.0),
        ];
        let order = |name| -> Vec<String> {
            out_vector(eval(name, vec![FnArg::Vector(&input)], 0, 0))
                .iter()
                .map(|s| s.labels.get("i").unwrap().to_string())
                .collect()
        };
        assert_eq!(order("sort"), ["c", "d", "a", "b"]);
        assert_eq!(order("sort_desc"), ["a", "d", "c", "b"]);
    }

    #[test]
    fn natural_order_matches_natsort() {
        use Ordering::*;
        let cases = [
            ("a2", "a10", Less),
            ("a10", "a2", Greater),
            ("1", "01", Equal), // natsort: neither precedes the other
            ("abc", "abd", Less),
            ("", "a", Less),
            ("x9y", "x10", Less),
            ("0a", "0b", Less),
        ];
        for (a, b, want) in cases {
            let got = if natural_less(a.as_bytes(), b.as_bytes()) {
                Less
            } else if natural_less(b.as_bytes(), a.as_bytes()) {
                Greater
            } else {
                Equal
            };
            assert_eq!(got, want, "{a} vs {b}");
        }
    }

    #[test]
    fn sort_by_label_uses_natural_order_then_labels() {
        let input = [
            sample(&[("instance", "10"), ("g", "a")], 1.0),
            sample(&[("instance", "2"), ("g", "b")], 1.0),
            sample(&[("instance", "2"), ("g", "a")], 1.0),
        ];
        let got = |name| -> Vec<(String, String)> {
            out_vector(eval(name, strings(&input, &["instance"]), 0, 0))
                .iter()
                .map(|s| {
                    (
                        s.labels.get("instance").unwrap().to_string(),
                        s.labels.get("g").unwrap().to_string(),
                    )
                })
                .collect()
        };
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            got("sort_by_label"),
            [pair("2", "a"), pair("2", "b"), pair("10", "a")]
        );
        assert_eq!(
            got("sort_by_label_desc"),
            [pair("10", "a"), pair("2", "b"), pair("2", "a")]
        );
    }
}
