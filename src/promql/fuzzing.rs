//! Fuzzing harness for PromQL, shared by the cargo-fuzz target (`fuzz/`) and the stable,
//! time-bounded mutation test (`tests/fuzz_promql.rs`).
//!
//! Owns: `Harness`, a tiny TSDB of a few series (gauges, a counter with a reset and a
//! staleness marker, histogram buckets) with an engine of small limits, and `check`,
//! which runs one text through the limits, the parser and the engine (instant and range
//! query) and panics on any broken promise. Calls `limits`, the `Engine`, `storage`, and
//! `tsdb` to build its store (the one promql module that does: it wires a store to an
//! engine as `server` wires a node).
//!
//! Promises checked: nothing panics (a panic in evaluation surfaces as a failed
//! evaluation task, one in the parser as `limits::parse`'s "parser failed"); text the
//! limits refuse is refused by the engine with the limit's bad_data message; a parsed
//! tree is never deeper than the limits' bound; an answer has unique label sets, and a
//! range answer's points lie on its steps in order.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::registry::Registry;

use super::{limits, Engine, EngineOptions, QueryError, QueryValue};
use crate::model::{stale_nan, Labels, Sample, Series};
use crate::storage::Storage;
use crate::tsdb::{Tsdb, TsdbMetrics, TsdbOptions};

/// What became of one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Refused by the size or nesting limits before parsing.
    OverLimits,
    /// Refused by the parser (or a check after it).
    Invalid,
    /// Evaluated; `answered` is false when evaluation failed (type errors, timeouts...).
    Evaluated { answered: bool },
}

/// A tiny TSDB and an engine over it, with its own runtime.
pub struct Harness {
    runtime: tokio::runtime::Runtime,
    engine: Engine,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    /// Evaluation time: the newest sample's timestamp.
    now_ms: i64,
}

const STEP_MS: i64 = 15_000;
const POINTS: i64 = 40;

impl Harness {
    /// Opens a TSDB in a fresh temporary directory (removed on drop) and writes the data.
    pub fn new() -> Harness {
        let dir = std::env::temp_dir().join(format!(
            "timbala-fuzz-promql-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the harness");
        let opts = TsdbOptions {
            dir: dir.clone(),
            retention_ms: 0,
            ..TsdbOptions::default()
        };
        let tsdb = Tsdb::open(opts, TsdbMetrics::register(&mut Registry::default()))
            .expect("open the harness TSDB");
        // Near the wall clock, so ingest's time bounds accept every sample.
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let now_ms = wall_ms / STEP_MS * STEP_MS;
        runtime
            .block_on(tsdb.append(series(now_ms)))
            .expect("write the harness data");
        let engine = Engine::new(EngineOptions {
            max_samples: 100_000,
            timeout: Duration::from_millis(200),
            ..EngineOptions::default()
        });
        Harness {
            runtime,
            engine,
            storage: Arc::new(tsdb),
            dir,
            now_ms,
        }
    }

    /// Runs `text` through limits, parser and engine; panics on a broken promise.
    pub fn check(&self, text: &str) -> Outcome {
        let instant = self.runtime.block_on(self.engine.instant_query(
            Arc::clone(&self.storage),
            text,
            self.now_ms,
        ));
        let bound = match limits::check_text(text) {
            Err(message) => {
                assert!(
                    message.contains("limit"),
                    "refusal names no limit: {message}"
                );
                assert_eq!(instant, Err(QueryError::BadData(message)), "{text:.200}");
                return Outcome::OverLimits;
            }
            Ok(bound) => bound,
        };
        let expr = match limits::parse(text) {
            Ok(expr) => expr,
            Err(message) => {
                // A panic the limits' checks did not foresee is a finding, though caught.
                assert!(
                    !message.contains("parser failed"),
                    "{text:.200}: the parser panicked"
                );
                assert!(
                    matches!(instant, Err(QueryError::BadData(_))),
                    "{text:.200}: unparsable text gave {instant:?}"
                );
                return Outcome::Invalid;
            }
        };
        let depth = limits::tree_depth(&expr);
        assert!(
            depth <= bound,
            "{text:.200}: depth {depth} above the bound {bound}"
        );
        let (start, end) = (self.now_ms - 4 * STEP_MS, self.now_ms);
        let range = self.runtime.block_on(self.engine.range_query(
            Arc::clone(&self.storage),
            text,
            start,
            end,
            STEP_MS,
        ));
        let mut answered = false;
        for (result, steps) in [(&instant, None), (&range, Some((start, end)))] {
            match result {
                Ok(out) => {
                    answered = true;
                    check_answer(text, &out.value, steps);
                }
                Err(QueryError::Execution(m)) => {
                    assert!(!m.contains("query evaluation failed"), "{text:.200}: {m}");
                }
                Err(QueryError::BadData(_) | QueryError::TooManySamples) => {}
                Err(QueryError::Timeout(_)) => {}
                Err(QueryError::Storage(m)) => {
                    panic!("{text:.200}: storage failed: {m}")
                }
            }
        }
        Outcome::Evaluated { answered }
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `Harness::check` on bytes (lossy UTF-8) with one harness per process: the libFuzzer
/// entry point. The process's harness directory stays behind in the temp dir.
pub fn check_bytes(data: &[u8]) -> Outcome {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS
        .get_or_init(Harness::new)
        .check(&String::from_utf8_lossy(data))
}

/// The harness data: `POINTS` samples every `STEP_MS` up to `now_ms`.
fn series(now_ms: i64) -> Vec<Series> {
    let make = |pairs: &[(&str, &str)], value: &dyn Fn(i64) -> f64| Series {
        labels: Labels::from_pairs(pairs.iter().map(|&(n, v)| (n, v.to_string()))),
        samples: (0..POINTS)
            .map(|i| Sample::new(now_ms - (POINTS - 1 - i) * STEP_MS, value(i)))
            .collect(),
    };
    let mut out = vec![
        make(
            &[("__name__", "up"), ("job", "api"), ("instance", "a:1")],
            &|_| 1.0,
        ),
        make(
            &[("__name__", "up"), ("job", "db"), ("instance", "b:1")],
            &|i| (i % 2) as f64,
        ),
        make(
            &[
                ("__name__", "http_requests_total"),
                ("job", "api"),
                ("code", "200"),
            ],
            // A counter that resets halfway.
            &|i| ((i % (POINTS / 2)) * 10) as f64,
        ),
        make(
            &[
                ("__name__", "temperature"),
                ("room", "a\"b\\c"),
                ("unit", "°C"),
            ],
            &|i| (i as f64 * 0.7).sin() * 1e3,
        ),
    ];
    for (le, share) in [("0.1", 0.2), ("1", 0.7), ("+Inf", 1.0)] {
        out.push(make(
            &[
                ("__name__", "latency_seconds_bucket"),
                ("job", "api"),
                ("le", le),
            ],
            &move |i| (i as f64 * 100.0 * share).floor(),
        ));
    }
    let mut gone = make(&[("__name__", "gone"), ("job", "batch")], &|_| 7.0);
    if let Some(last) = gone.samples.last_mut() {
        last.v = stale_nan();
    }
    out.push(gone);
    out
}

/// An answer's shape promises: unique label sets; points in time order, and for a range
/// query (`steps`: its start and end) on its steps.
fn check_answer(text: &str, value: &QueryValue, steps: Option<(i64, i64)>) {
    match value {
        QueryValue::Vector(v) => {
            let mut labels: Vec<&Labels> = v.iter().map(|s| &s.labels).collect();
            labels.sort();
            assert!(
                labels.windows(2).all(|w| w[0] != w[1]),
                "{text:.200}: duplicate label sets in {v:?}"
            );
        }
        QueryValue::Matrix(m) => {
            assert!(
                m.windows(2).all(|w| w[0].labels != w[1].labels),
                "{text:.200}: duplicate series"
            );
            for s in m {
                assert!(
                    s.points.windows(2).all(|w| w[0].t < w[1].t),
                    "{text:.200}: unordered"
                );
                if let Some((start, end)) = steps {
                    let on_step = |t: i64| t >= start && t <= end && (t - start) % STEP_MS == 0;
                    assert!(
                        s.points.iter().all(|p| on_step(p.t)),
                        "{text:.200}: off-step point"
                    );
                }
            }
        }
        QueryValue::Scalar { .. } | QueryValue::String { .. } => {}
    }
}
