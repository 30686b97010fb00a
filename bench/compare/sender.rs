//! Sends a pre-encoded payload over several keep-alive HTTP/1.1 connections and measures
//! what the sender sees: samples/s, request latency, errors and retries.
//!
//! Owns: the send loop. Calls `payload` (the requests) and `ureq` (blocking HTTP, one
//! agent, hence one pooled connection, per sending thread).
//!
//! Connections stay within `SYNC_SCRAPES` scrapes of each other (a barrier per window):
//! Prometheus rejects samples more than an hour behind its head's newest sample, so a
//! connection running far ahead of another would turn scheduling luck into errors.
//! Prometheus's own remote-write shards advance together in the same way.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::payload::{Payload, Request};

/// Scrapes per synchronisation window (10 minutes of data).
const SYNC_SCRAPES: i64 = 40;
/// Attempts per request for retryable answers (5xx, 429, transport errors).
const MAX_ATTEMPTS: u32 = 5;
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

#[derive(Default)]
pub struct SendReport {
    pub samples: u64,
    pub wall: Duration,
    /// Latency of every attempt, in seconds.
    pub latencies: Vec<f64>,
    /// Requests refused for good (4xx) or still failing after `MAX_ATTEMPTS`.
    pub errors: u64,
    /// Attempts that were retried (5xx, 429, transport error).
    pub retries: u64,
    /// First error message, to show why.
    pub first_error: Option<String>,
}

impl SendReport {
    pub fn samples_per_second(&self) -> f64 {
        self.samples as f64 / self.wall.as_secs_f64()
    }
}

enum Outcome {
    Stored,
    Refused(String),
    Retry(String),
}

fn agent() -> ureq::Agent {
    crate::http_client::agent(Duration::from_secs(120))
}

fn attempt(agent: &ureq::Agent, url: &str, body: &[u8]) -> Outcome {
    let sent = agent
        .post(url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .send(body);
    match sent {
        Err(e) => Outcome::Retry(format!("transport: {e}")),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let text = resp.into_body().read_to_string().unwrap_or_default();
            match status {
                200..=299 => Outcome::Stored,
                429 | 500..=599 => Outcome::Retry(format!("{status}: {}", text.trim())),
                _ => Outcome::Refused(format!("{status}: {}", text.trim())),
            }
        }
    }
}

/// One connection's requests, in order, with per-window barriers shared by all senders.
fn send_connection(url: &str, requests: &[Request], barrier: &Barrier, windows: i64) -> SendReport {
    let agent = agent();
    let mut report = SendReport::default();
    let mut window = 0;
    for request in requests {
        while window < request.first_scrape / SYNC_SCRAPES {
            barrier.wait();
            window += 1;
        }
        send_one(&agent, url, request, &mut report);
    }
    while window < windows {
        barrier.wait();
        window += 1;
    }
    report
}

fn send_one(agent: &ureq::Agent, url: &str, request: &Request, report: &mut SendReport) {
    for attempt_no in 1..=MAX_ATTEMPTS {
        let started = Instant::now();
        let outcome = attempt(agent, url, &request.body);
        report.latencies.push(started.elapsed().as_secs_f64());
        let failure = match outcome {
            Outcome::Stored => {
                report.samples += request.samples as u64;
                return;
            }
            Outcome::Refused(why) => {
                report.errors += 1;
                report.first_error.get_or_insert(why);
                return;
            }
            Outcome::Retry(why) => why,
        };
        if attempt_no == MAX_ATTEMPTS {
            report.errors += 1;
            report.first_error.get_or_insert(failure);
            return;
        }
        report.retries += 1;
        std::thread::sleep(RETRY_BACKOFF);
    }
}

/// Sends connection `c` to `write_urls[c % len]` and merges the reports.
pub fn send(payload: &Payload, write_urls: &[String]) -> SendReport {
    let connections = payload.connections.len();
    let barrier = Barrier::new(connections);
    let windows = (payload.spec.scrapes + SYNC_SCRAPES - 1) / SYNC_SCRAPES;
    let started = Instant::now();
    let reports: Vec<SendReport> = std::thread::scope(|scope| {
        let handles: Vec<_> = payload
            .connections
            .iter()
            .enumerate()
            .map(|(c, requests)| {
                let url = &write_urls[c % write_urls.len()];
                let barrier = &barrier;
                scope.spawn(move || send_connection(url, requests, barrier, windows))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut total = SendReport {
        wall: started.elapsed(),
        ..SendReport::default()
    };
    for r in reports {
        total.samples += r.samples;
        total.latencies.extend(r.latencies);
        total.errors += r.errors;
        total.retries += r.retries;
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
    }
    total
}
