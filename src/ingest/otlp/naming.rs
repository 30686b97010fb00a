//! Prometheus names from OTLP names, as Prometheus 3.x does by default (translation
//! strategy `UnderscoreEscapingWithSuffixes`, from prometheus/otlptranslator): metric
//! names get unit and type suffixes and only `[a-zA-Z0-9:]` separated by single
//! underscores; label names only `[a-zA-Z0-9_]`, runs of invalid characters becoming
//! one underscore. Calls nothing else in the crate.

/// The kind of an OTLP metric, as far as naming cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NamingKind {
    Gauge,
    /// A monotonic sum: gets `_total`.
    MonotonicCounter,
    /// A non-monotonic sum (an UpDownCounter): a gauge, but without `_ratio`.
    NonMonotonicCounter,
    Histogram,
    Summary,
}

/// OTLP unit (UCUM) to Prometheus unit word; units not listed are kept as written.
fn unit_word(unit: &str) -> &str {
    match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "1" => "",
        "%" => "percent",
        other => other,
    }
}

/// The denominator of a `x/y` unit as a Prometheus word.
fn per_unit_word(unit: &str) -> &str {
    match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => other,
    }
}

fn is_metric_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == ':'
}

fn is_label_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// The main and the `per_` unit suffix of an OTLP unit, before clean-up. Annotations
/// (`{request}`) give no suffix.
fn unit_suffixes(unit: &str) -> (String, String) {
    let (main, per) = match unit.split_once('/') {
        Some((main, per)) => (main, Some(per)),
        None => (unit, None),
    };
    let usable = |u: &str| !u.is_empty() && !u.contains(['{', '}']);
    let main = main.trim();
    let main_suffix = if usable(main) {
        unit_word(main).to_string()
    } else {
        String::new()
    };
    let per_suffix = match per.map(str::trim) {
        Some(per) if usable(per) => format!("per_{}", per_unit_word(per)),
        _ => String::new(),
    };
    (main_suffix, per_suffix)
}

/// Invalid characters to `_`, runs of `_` to one, no leading `_`.
fn clean_up_unit(unit: &str) -> String {
    let mut out = String::with_capacity(unit.len());
    for c in unit.chars() {
        let c = if is_metric_name_char(c) { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    out.trim_start_matches('_').to_string()
}

/// The unit as Prometheus's metadata carries it (`ms` -> `milliseconds`, `By/s` ->
/// `bytes_per_second`).
pub(super) fn unit_name(unit: &str) -> String {
    let (main, per) = unit_suffixes(unit);
    let (main, per) = (clean_up_unit(&main), clean_up_unit(&per));
    let joined = match (main.is_empty(), per.is_empty()) {
        (false, false) => format!("{main}_{per}"),
        (false, true) => main,
        _ => per,
    };
    joined.trim_matches('_').to_string()
}

/// The Prometheus metric family name of an OTLP metric: name tokens, unit suffixes,
/// `_total` for monotonic counters, `_ratio` for gauges of unit `1`.
pub(super) fn metric_name(name: &str, unit: &str, kind: NamingKind) -> Result<String, String> {
    let mut tokens: Vec<&str> = name
        .split(|c: char| !is_metric_name_char(c))
        .filter(|t| !t.is_empty())
        .collect();
    let (main, per) = unit_suffixes(unit);
    let (mut main, per) = (clean_up_unit(&main), clean_up_unit(&per));
    if tokens.contains(&main.as_str()) {
        main.clear();
    }
    let per = if per == "per_" {
        String::new()
    } else {
        let trimmed = per.trim_end_matches('_');
        if tokens.contains(&trimmed) {
            String::new()
        } else {
            trimmed.to_string()
        }
    };
    if !per.is_empty() {
        main = main.trim_end_matches('_').to_string();
    }
    if !main.is_empty() {
        tokens.push(&main);
    }
    if !per.is_empty() {
        tokens.push(&per);
    }
    if kind == NamingKind::MonotonicCounter {
        tokens.retain(|t| *t != "total");
        tokens.push("total");
    }
    if unit == "1" && kind == NamingKind::Gauge {
        tokens.retain(|t| *t != "ratio");
        tokens.push("ratio");
    }
    let mut normalized = tokens.join("_");
    if normalized.starts_with(|c: char| c.is_ascii_digit()) {
        normalized.insert(0, '_');
    }
    if normalized.is_empty() {
        return Err(format!("metric name {name:?} normalizes to an empty name"));
    }
    if normalized != name && normalized.chars().all(|c| c == '_') {
        return Err(format!(
            "metric name {name:?} normalizes to the invalid name {normalized:?}"
        ));
    }
    Ok(normalized)
}

/// The Prometheus label name of an attribute key. `__x__` keeps its underscores; a
/// leading digit gets `key_`.
pub(super) fn label_name(key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("attribute key is empty".into());
    }
    let reserved = key.len() >= 4 && key.starts_with("__") && key.ends_with("__");
    let inner = if reserved {
        &key[2..key.len() - 2]
    } else {
        key
    };
    let mut out = String::with_capacity(key.len() + 4);
    if reserved {
        out.push_str("__");
    }
    let mut previous_underscore = false;
    for c in inner.chars() {
        if is_label_name_char(c) {
            out.push(c);
            previous_underscore = false;
        } else if !previous_underscore {
            out.push('_');
            previous_underscore = true;
        }
    }
    if reserved {
        out.push_str("__");
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "key_");
    }
    if out.chars().all(|c| c == '_') {
        return Err(format!(
            "attribute key {key:?} normalizes to the invalid label name {out:?}"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use NamingKind::*;

    #[test]
    fn metric_names_follow_prometheus_defaults() {
        let cases = [
            (
                "http.server.request.duration",
                "s",
                Histogram,
                "http_server_request_duration_seconds",
            ),
            (
                "http.server.requests",
                "{request}",
                MonotonicCounter,
                "http_server_requests_total",
            ),
            ("requests_total", "1", MonotonicCounter, "requests_total"),
            (
                "system.memory.utilization",
                "1",
                Gauge,
                "system_memory_utilization_ratio",
            ),
            ("queue.size", "1", NonMonotonicCounter, "queue_size"),
            (
                "network.io",
                "By",
                MonotonicCounter,
                "network_io_bytes_total",
            ),
            ("throughput", "By/s", Gauge, "throughput_bytes_per_second"),
            ("latency_milliseconds", "ms", Gauge, "latency_milliseconds"),
            ("cpu.time", "s", MonotonicCounter, "cpu_time_seconds_total"),
            ("total.requests", "", MonotonicCounter, "requests_total"),
            ("temp", "Cel", Gauge, "temp_celsius"),
            ("rpc.duration", "ms", Summary, "rpc_duration_milliseconds"),
            ("2xx.count", "", Gauge, "_2xx_count"),
            ("weird__name!!x", "", Gauge, "weird_name_x"),
            ("ns:metric", "", Gauge, "ns:metric"),
            ("load", "%", Gauge, "load_percent"),
            ("events", "{event}/s", Gauge, "events_per_second"),
        ];
        for (name, unit, kind, want) in cases {
            assert_eq!(
                metric_name(name, unit, kind).unwrap(),
                want,
                "{name} {unit} {kind:?}"
            );
        }
        assert!(metric_name("", "", Gauge).is_err());
        assert!(metric_name("...", "", Gauge).is_err());
    }

    #[test]
    fn unit_names() {
        assert_eq!(unit_name("ms"), "milliseconds");
        assert_eq!(unit_name("By/s"), "bytes_per_second");
        assert_eq!(unit_name("1"), "");
        assert_eq!(unit_name("{request}"), "");
    }

    #[test]
    fn label_names_are_sanitized() {
        assert_eq!(label_name("http.method").unwrap(), "http_method");
        assert_eq!(
            label_name("deployment.environment").unwrap(),
            "deployment_environment"
        );
        assert_eq!(label_name("a..b__c").unwrap(), "a_b_c");
        assert_eq!(label_name("0day").unwrap(), "key_0day");
        assert_eq!(label_name("__meta.x__").unwrap(), "__meta_x__");
        assert_eq!(label_name("_private").unwrap(), "_private");
        assert_eq!(label_name("ünï").unwrap(), "_n_");
        assert!(label_name("").is_err());
        assert!(label_name("...").is_err());
        assert!(label_name("____").is_err());
    }
}
