//! `/federate`: the latest sample of every matching series, in the text exposition
//! format, exactly as Prometheus's federation endpoint serves it.
//!
//! Owns: selecting the newest non-stale sample within the lookback window for each
//! series matching any `match[]`, ordering by metric name, and writing text format 0.0.4
//! (`# TYPE <name> untyped`, labels without empty values, `instance=""` when a series
//! has no instance, value with Go's 'g' formatting, timestamp in milliseconds).
//! Calls `params` (selectors), `json` (Go number formatting), `storage::Storage` and the
//! engine's lookback setting through `AppState`.

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::json::{append_go_float, GoFloat};
use super::params::{parse_match_param, FormParams};
use super::query::now_ms;
use super::{ApiError, AppState};
use crate::model::{is_stale_nan, Labels, Matcher, Sample, METRIC_NAME};
use crate::storage::{SelectError, SelectRequest, Storage};

/// Prometheus's default federation format (text 0.0.4, names escaped with underscores).
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8; escaping=underscores";
/// Federation adds this label, empty, to series that lack it (Prometheus always treats
/// `instance` as an external label).
const INSTANCE_LABEL: &str = "instance";

pub fn routes() -> Router<AppState> {
    Router::new().route("/federate", get(federate))
}

async fn federate(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let params = FormParams::from_parts(query.as_deref(), None);
    let sets = match params
        .values("match[]")
        .map(parse_match_param)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(sets) => sets,
        Err(e) => return plain_error(StatusCode::BAD_REQUEST, &e),
    };
    let services = match state.services() {
        Ok(services) => services,
        Err(e) => return plain_error(e.status, &e.message),
    };
    let maxt = now_ms();
    let mint = maxt.saturating_sub(state.engine().options().lookback_delta_ms);
    let latest = match latest_samples(services.storage.as_ref(), sets, mint, maxt).await {
        Ok(latest) => latest,
        Err(e) => {
            let e = ApiError::from(e);
            return plain_error(e.status, &e.message);
        }
    };
    let mut body = Vec::with_capacity(latest.len() * 64);
    write_text_exposition(&mut body, &latest);
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], body).into_response()
}

/// Go's `http.Error`: a text body ending in a newline.
fn plain_error(status: StatusCode, message: &str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (status, headers, format!("{message}\n")).into_response()
}

/// The newest sample in `[mint, maxt]` of each series matching any set, series counted
/// once, ordered by metric name (then by labels). Series whose newest sample is a
/// staleness marker are left out: the text format cannot carry one.
async fn latest_samples(
    storage: &dyn Storage,
    sets: Vec<Vec<Matcher>>,
    mint: i64,
    maxt: i64,
) -> Result<Vec<(Labels, Sample)>, SelectError> {
    let mut latest = Vec::new();
    let several_sets = sets.len() > 1;
    for matchers in sets {
        let request = SelectRequest {
            matchers,
            mint,
            maxt,
            max_samples: 0,
        };
        for series in storage.select(request).await? {
            if let Some(&newest) = series.samples.iter().rev().find(|s| s.t <= maxt) {
                latest.push((series.labels, newest));
            }
        }
    }
    if several_sets {
        latest.sort_by(|a, b| a.0.cmp(&b.0));
        latest.dedup_by(|a, b| a.0 == b.0);
    }
    latest.retain(|(_, sample)| !is_stale_nan(sample.v));
    // Stable: series of one metric keep their label order.
    latest.sort_by(|a, b| a.0.metric_name().cmp(&b.0.metric_name()));
    Ok(latest)
}

/// Text format 0.0.4: one `# TYPE` line per metric name, then its samples.
fn write_text_exposition(out: &mut Vec<u8>, samples: &[(Labels, Sample)]) {
    let mut current_name: Option<&str> = None;
    for (labels, sample) in samples {
        // Nameless series cannot be exposed; Prometheus skips them too.
        let Some(name) = labels.metric_name().filter(|n| !n.is_empty()) else {
            continue;
        };
        if current_name != Some(name) {
            out.extend_from_slice(b"# TYPE ");
            write_escaped_name(out, name);
            out.extend_from_slice(b" untyped\n");
            current_name = Some(name);
        }
        write_escaped_name(out, name);
        write_label_pairs(out, labels);
        out.push(b' ');
        append_go_float(out, sample.v, GoFloat::G);
        out.push(b' ');
        out.extend_from_slice(sample.t.to_string().as_bytes());
        out.push(b'\n');
    }
}

/// `{a="1",b="2",instance=""}`: labels with values, in order, then an empty `instance`
/// if the series has none.
fn write_label_pairs(out: &mut Vec<u8>, labels: &Labels) {
    out.push(b'{');
    let mut first = true;
    let mut has_instance = false;
    for label in labels
        .iter()
        .filter(|l| l.name != METRIC_NAME && !l.value.is_empty())
    {
        has_instance |= label.name == INSTANCE_LABEL;
        write_label_pair(out, &mut first, &label.name, &label.value);
    }
    if !has_instance {
        write_label_pair(out, &mut first, INSTANCE_LABEL, "");
    }
    out.push(b'}');
}

fn write_label_pair(out: &mut Vec<u8>, first: &mut bool, name: &str, value: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    write_escaped_name(out, name);
    out.extend_from_slice(b"=\"");
    for b in value.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// A metric or label name in the legacy character set, other characters replaced by `_`
/// (the `escaping=underscores` scheme that text format 0.0.4 is served with).
fn write_escaped_name(out: &mut Vec<u8>, name: &str) {
    for (i, c) in name.char_indices() {
        let legacy =
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (c.is_ascii_digit() && i > 0);
        if legacy {
            out.push(c as u8);
        } else {
            out.push(b'_');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(samples: &[(Labels, Sample)]) -> String {
        let mut out = Vec::new();
        write_text_exposition(&mut out, samples);
        String::from_utf8(out).unwrap()
    }

    fn series(pairs: &[(&str, &str)], t: i64, v: f64) -> (Labels, Sample) {
        (Labels::from_pairs(pairs.iter().copied()), Sample::new(t, v))
    }

    #[test]
    fn text_format_like_prometheus_federation() {
        let samples = [
            series(
                &[
                    ("__name__", "test_metric1"),
                    ("foo", "bar"),
                    ("instance", "i"),
                ],
                6_000_000,
                10000.0,
            ),
            series(
                &[
                    ("__name__", "test_metric1"),
                    ("foo", "boo"),
                    ("instance", "i"),
                ],
                6_000_000,
                1.0,
            ),
            series(
                &[("__name__", "test_metric_without_labels")],
                6_000_000,
                1001.0,
            ),
            series(&[("foo", "nameless")], 6_000_000, 1.0),
        ];
        assert_eq!(
            render(&samples),
            "# TYPE test_metric1 untyped\n\
             test_metric1{foo=\"bar\",instance=\"i\"} 10000 6000000\n\
             test_metric1{foo=\"boo\",instance=\"i\"} 1 6000000\n\
             # TYPE test_metric_without_labels untyped\n\
             test_metric_without_labels{instance=\"\"} 1001 6000000\n"
        );
    }

    #[test]
    fn values_names_and_label_values_are_escaped() {
        let samples = [series(
            &[("__name__", "my.metric"), ("a", "q\"b\\s\nn"), ("job", "x")],
            -5,
            1e6,
        )];
        assert_eq!(
            render(&samples),
            "# TYPE my_metric untyped\n\
             my_metric{a=\"q\\\"b\\\\s\\nn\",job=\"x\",instance=\"\"} 1e+06 -5\n"
        );
        let special = [
            series(&[("__name__", "m")], 1, f64::NAN),
            series(&[("__name__", "m"), ("k", "v")], 1, f64::NEG_INFINITY),
        ];
        assert_eq!(
            render(&special),
            "# TYPE m untyped\nm{instance=\"\"} NaN 1\nm{k=\"v\",instance=\"\"} -Inf 1\n"
        );
    }
}
