//! Stable-toolchain fuzzing of the PromQL entry points: queries from the seed corpus
//! (`fuzz/seeds/promql.txt`) mutated, nested, chained, decorated and mixed with token
//! soup for a bounded time (TIMBALA_FUZZ_SECONDS, default 2), each run through
//! `timbala::promql::fuzzing::Harness::check` (limits, parser, instant and range
//! evaluation on a tiny TSDB) and the HTTP API's series-selector parser; any broken
//! promise panics. Complements the libFuzzer target in `fuzz/` (nightly).

#[path = "support/fuzz_input.rs"]
mod fuzz_input;

use std::time::Instant;

use rand::rngs::SmallRng;
use rand::Rng;
use timbala::api::params::parse_match_param;
use timbala::promql::fuzzing::{Harness, Outcome};
use timbala::promql::limits::MAX_DEPTH;

const SEEDS: &str = include_str!("../fuzz/seeds/promql.txt");

/// Tokens and near-tokens a mutation inserts: operators, keywords, names, and numbers,
/// durations and strings at and past the edges of what the parser converts.
const VOCABULARY: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "@",
    "+",
    "-",
    "*",
    "/",
    "%",
    "^",
    "==",
    "!=",
    ">",
    "<",
    ">=",
    "<=",
    "=~",
    "!~",
    "=",
    "!",
    "and",
    "or",
    "unless",
    "atan2",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "start()",
    "end()",
    "sum",
    "avg",
    "count",
    "topk",
    "quantile",
    "count_values",
    "limitk",
    "rate",
    "abs",
    "vector",
    "scalar",
    "time()",
    "label_replace",
    "histogram_quantile",
    "up",
    "temperature",
    "http_requests_total",
    "latency_seconds_bucket",
    "__name__",
    "le",
    "job",
    "\"api\"",
    "'x'",
    "`y`",
    "\"\\xff\"",
    "\"\\u00e9\"",
    "\"\\",
    "1",
    "0",
    "-1",
    "1e308",
    "-1e308",
    "1e309",
    "1e-320",
    "0x7fffffffffffffff",
    "0xffffffffffffffffff",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    "Inf",
    "-Inf",
    "NaN",
    ".5",
    "5.",
    "0.0000001",
    "5m",
    "1ms",
    "0s",
    "0",
    "1y",
    "292277025y",
    "9999999999999999999d",
    "1h30m",
    "5m1h",
    "1.5h",
    "1e3s",
    "-5m",
    "#",
    "\n",
    "ü",
    "\u{0}",
    "\u{feff}",
];

/// Wrappers for deep nesting: (opening, closing) around an operand.
const WRAPPERS: &[(&str, &str)] = &[
    ("(", ")"),
    ("abs(", ")"),
    ("sum(", ")"),
    ("sum by (job) (", ")"),
    ("topk(1, ", ")"),
    ("vector(scalar(", "))"),
    ("max_over_time((", ")[1m:15s])"),
    ("-", ""),
    ("label_replace(", ", \"a\", \"$1\", \"job\", \"(.*)\")"),
];

const OPERATORS: &[&str] = &[
    "+", "-", "*", "/", "%", "^", " and ", " or ", " unless ", " atan2 ", " > bool ", "==",
];

fn pick<'a>(rng: &mut SmallRng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

/// Splits a query into pieces at character-class boundaries (names, numbers,
/// punctuation, space): close enough to tokens for mutations.
fn pieces(text: &str) -> Vec<String> {
    let class = |c: char| {
        if c.is_alphanumeric() || c == '_' || c == '.' {
            0
        } else if c.is_whitespace() {
            1
        } else {
            2 + c as u32
        }
    };
    let mut out: Vec<String> = Vec::new();
    let mut last = None;
    for c in text.chars() {
        let k = class(c);
        match out.last_mut() {
            Some(piece) if last == Some(k) && k < 2 => piece.push(c),
            _ => out.push(c.to_string()),
        }
        last = Some(k);
    }
    out
}

fn mutate_pieces(rng: &mut SmallRng, text: &str) -> String {
    let mut p = pieces(text);
    for _ in 0..rng.random_range(1..5) {
        let at = rng.random_range(0..=p.len());
        let token = pick(rng, VOCABULARY).to_string();
        match rng.random_range(0..4) {
            0 => p.insert(at, token),
            1 if at < p.len() => p[at] = token,
            2 if at < p.len() => {
                p.remove(at);
            }
            _ if at < p.len() => {
                let copy = p[at].clone();
                p.insert(at, copy);
            }
            _ => p.push(token),
        }
    }
    p.concat()
}

fn mutate_bytes(rng: &mut SmallRng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    fuzz_input::mutate_bytes(rng, &mut bytes, b"()[]{}\"'`\\,:@#~!=<>+-*/%^ 0x.e\n\xff");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// How deep to nest: mostly shallow, often right at the limit, sometimes far past it.
fn nesting(rng: &mut SmallRng) -> usize {
    match rng.random_range(0..4) {
        0 => rng.random_range(1..64),
        1 => rng.random_range(MAX_DEPTH / 3..MAX_DEPTH / 3 + 8),
        2 => rng.random_range(MAX_DEPTH - 8..MAX_DEPTH + 8),
        _ => rng.random_range(1_000..20_000),
    }
}

fn nest(rng: &mut SmallRng, inner: &str) -> String {
    let (open, close) = WRAPPERS[rng.random_range(0..WRAPPERS.len())];
    let n = nesting(rng);
    format!("{}{inner}{}", open.repeat(n), close.repeat(n))
}

fn chain(rng: &mut SmallRng, term: &str) -> String {
    let n = match rng.random_range(0..3) {
        0 => rng.random_range(2..50),
        1 => rng.random_range(MAX_DEPTH - 4..MAX_DEPTH + 4),
        _ => rng.random_range(1_000..100_000),
    };
    let term = if term.len() > 40 { "1" } else { term };
    let same = rng.random_bool(0.5);
    let op = pick(rng, OPERATORS);
    let mut out = String::from(term);
    for _ in 1..n {
        out.push_str(if same { op } else { pick(rng, OPERATORS) });
        out.push_str(term);
    }
    out
}

fn decorate(rng: &mut SmallRng, inner: &str) -> String {
    let durations = [
        "1ms",
        "0s",
        "1m",
        "5m",
        "1y",
        "292277025y",
        "9999999999999999999d",
        "1h30m",
    ];
    let numbers = [
        "0",
        "-1",
        "1e308",
        "9223372036854775807",
        "-9223372036854775",
        "NaN",
        "Inf",
    ];
    let d = |rng: &mut SmallRng| pick(rng, &durations);
    match rng.random_range(0..4) {
        0 => format!("({inner})[{}:{}]", d(rng), d(rng)),
        1 => format!("{inner} offset {}", d(rng)),
        2 => format!("{inner} @ {}", pick(rng, &numbers)),
        _ => format!("sum_over_time(({inner})[{}:])", d(rng)),
    }
}

fn soup(rng: &mut SmallRng) -> String {
    let glue = if rng.random_bool(0.5) { " " } else { "" };
    (0..rng.random_range(1..40))
        .map(|_| pick(rng, VOCABULARY))
        .collect::<Vec<_>>()
        .join(glue)
}

fn generate(rng: &mut SmallRng, seeds: &[&str]) -> String {
    let seed = pick(rng, seeds);
    match rng.random_range(0..9) {
        0 => seed.to_string(),
        1 | 2 => mutate_pieces(rng, seed),
        3 => mutate_bytes(rng, seed),
        4 => nest(rng, seed),
        5 => chain(rng, seed),
        6 => decorate(rng, seed),
        7 => soup(rng),
        _ => {
            let other = pick(rng, seeds);
            let half = |s: &str| (0..=s.len() / 2).rev().find(|&i| s.is_char_boundary(i));
            let (a, b) = (half(seed).unwrap_or(0), half(other).unwrap_or(0));
            format!("{}{}", &seed[..a], &other[b..])
        }
    }
}

#[test]
fn promql_entry_points_survive_mutated_queries() {
    let run_for = fuzz_input::duration();
    let mut rng = fuzz_input::rng();
    let seeds: Vec<&str> = SEEDS.lines().filter(|l| !l.trim().is_empty()).collect();
    let harness = Harness::new();
    // Every seed first: each must keep the promises as written.
    let mut inputs: Vec<String> = seeds.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + run_for;
    let (mut runs, mut over_limits, mut invalid, mut answered) = (0u64, 0u64, 0u64, 0u64);
    while Instant::now() < deadline || !inputs.is_empty() {
        let text = inputs.pop().unwrap_or_else(|| generate(&mut rng, &seeds));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // The selector parser of /api/v1/series, /federate, delete_series...: an
            // answer either way, never a panic.
            let _ = parse_match_param(&text);
            harness.check(&text)
        }));
        let outcome = outcome.unwrap_or_else(|panic| {
            eprintln!(
                "input that broke a promise ({} bytes): {text:?}",
                text.len()
            );
            std::panic::resume_unwind(panic)
        });
        match outcome {
            Outcome::OverLimits => over_limits += 1,
            Outcome::Invalid => invalid += 1,
            Outcome::Evaluated { answered: true } => answered += 1,
            Outcome::Evaluated { answered: false } => {}
        }
        runs += 1;
    }
    println!(
        "{runs} inputs: {over_limits} over the limits, {invalid} invalid, {answered} answered"
    );
    assert!(
        runs > seeds.len() as u64,
        "too few inputs in {run_for:?}: {runs}"
    );
    assert!(
        over_limits > 0 && invalid > 0 && answered > 0,
        "inputs must reach every outcome"
    );
}
