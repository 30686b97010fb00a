//! The "bad client" scenario: mid-run, one misbehaving client sends what once stopped a
//! cluster (a sample from a clock a day and a year ahead, and queries nested deeply
//! enough to overflow a thread's stack) and the suite checks each is refused with 400
//! while every node stays up and keeps answering. The fault scenarios that follow, and
//! the final comparison, are the proof that nothing else was hurt: Prometheus's writes
//! keep succeeding and every answer still matches.
//!
//! Owns: the hostile requests and their expected refusals. Calls `api`.

use std::time::{Duration, Instant};

use timbala::proto;

use crate::api;
use crate::checks::now_s;

/// The probe series the hostile write uses; never scraped by Prometheus.
const PROBE: &str = "timbala_bad_client_probe";
/// A refusal slower than this counts as a failure (the node did the work it refuses).
const REFUSAL_BOUND: Duration = Duration::from_secs(1);

/// Runs the scenario; returns the failed checks.
pub fn run() -> Result<Vec<String>, String> {
    println!("\n== scenario: a bad client (far-future samples, nested queries)");
    let mut failures = Vec::new();
    failures.extend(far_future_write()?);
    for (name, base) in api::NODES {
        failures.extend(nested_queries(name, base)?);
    }
    for (name, base) in api::NODES {
        if let Err(e) = api::api_query(base, "count(up)") {
            failures.push(format!("bad client: {name} no longer answers a query: {e}"));
        }
    }
    if failures.is_empty() {
        println!("  every hostile request refused with 400; every node still answers");
    }
    Ok(failures)
}

/// Samples a day and a year ahead are refused through the balancer (as Prometheus would
/// send them), a current sample of the same series is accepted, and no node shows the
/// future samples.
fn far_future_write() -> Result<Vec<String>, String> {
    let now_ms = (now_s() * 1000.0) as i64;
    let mut failures = Vec::new();
    for (case, ahead_ms) in [("day", 86_400_000i64), ("year", 365 * 86_400_000)] {
        let request = probe_write(case, now_ms + ahead_ms);
        let started = Instant::now();
        let (status, body) = api::remote_write_answer(api::BALANCER, &request)?;
        let took = started.elapsed();
        println!(
            "  sample 1 {case} ahead: status {status} in {:.0} ms: {}",
            took.as_secs_f64() * 1e3,
            body.trim()
        );
        if status != 400 || !body.contains("future") {
            failures.push(format!(
                "bad client: a sample 1 {case} ahead answered {status} ({body}), want 400 naming the future"
            ));
        }
    }
    let (status, body) = api::remote_write_answer(api::BALANCER, &probe_write("now", now_ms))?;
    if !(200..300).contains(&status) {
        failures.push(format!(
            "bad client: a current sample after the future ones answered {status}: {body}"
        ));
    }
    // Queried just after each future sample's time, within the 5 m lookback: a stored
    // future sample would answer; the current one is days away.
    for (name, base) in api::NODES {
        for ahead_s in [86_400.0, 365.0 * 86_400.0] {
            let at = now_ms as f64 / 1000.0 + ahead_s + 10.0;
            let url = format!("{base}/api/v1/query?query={PROBE}&time={at:.3}");
            let answer = api::get_json(&url)?;
            if answer["data"]["result"]
                .as_array()
                .is_none_or(|r| !r.is_empty())
            {
                failures.push(format!(
                    "bad client: {name} shows a future sample of {PROBE}: {answer}"
                ));
            }
        }
    }
    Ok(failures)
}

fn probe_write(case: &str, timestamp_ms: i64) -> proto::WriteRequest {
    proto::WriteRequest {
        timeseries: vec![proto::TimeSeries {
            labels: vec![
                proto::Label {
                    name: "__name__".into(),
                    value: PROBE.into(),
                },
                proto::Label {
                    name: "case".into(),
                    value: case.into(),
                },
            ],
            samples: vec![proto::Sample {
                value: 1.0,
                timestamp: timestamp_ms,
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Queries nested past any stack are refused with 400 `bad_data`, quickly, and the node
/// stays healthy.
fn nested_queries(name: &str, base: &str) -> Result<Vec<String>, String> {
    let nested = |open: &str, inner: &str, close: &str, depth: usize| {
        format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
    };
    let cases = [
        ("100,000 nested parentheses", nested("(", "1", ")", 100_000)),
        ("20,000 nested sum(", nested("sum(", "up", ")", 20_000)),
        ("3,000-term up+up+...", vec!["up"; 3_000].join("+")),
    ];
    let mut failures = Vec::new();
    for (what, query) in cases {
        let url = format!("{base}/api/v1/query");
        let started = Instant::now();
        let (status, body) = api::post_form(&url, &[("query", &query)])?;
        let took = started.elapsed();
        println!(
            "  {name} {what}: status {status} in {:.0} ms",
            took.as_secs_f64() * 1e3
        );
        if status != 400 || !body.contains("bad_data") {
            failures.push(format!(
                "bad client: {name} answered {status} to {what}, want 400 bad_data: {}",
                body.chars().take(200).collect::<String>()
            ));
        }
        if took > REFUSAL_BOUND {
            failures.push(format!(
                "bad client: {name} took {took:?} to refuse {what} (bound {REFUSAL_BOUND:?})"
            ));
        }
        let healthy = api::get_json(&format!("{base}/api/v1/status/buildinfo"));
        if let Err(e) = healthy {
            failures.push(format!("bad client: {name} is down after {what}: {e}"));
        }
    }
    Ok(failures)
}
