//! PromQL conformance runner: executes Prometheus's promqltest scripts against Timbala's
//! engine and storage.
//!
//! Reads `*.test` files from `$CARGO_MANIFEST_DIR/../shared/promqltest/testdata` (or
//! `TIMBALA_PROMQLTEST_DIR`), loads data through the storage engine, evaluates every
//! `eval` with the test engine's settings (delayed name removal, experimental functions,
//! 5m lookback, 10,000 max samples, 1m default subquery step) and compares results and
//! annotations, once with aggregation pushdown (ADR 0029) and once without: an eval
//! passes when both answers are right. Native histograms are loaded and compared as Prometheus's
//! runner does; only evals over histograms `load_with_nhcb` would derive from classic ones are
//! counted as skipped. By default only the files
//! Timbala must pass are run (`TIMBALA_PROMQLTEST_ALL=1` runs all); the process exits
//! non-zero when any eval of a required file fails.

#[path = "support/promqltest_histograms.rs"]
mod promqltest_histograms;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use promqltest_histograms::{almost_equal, ScriptHistogram};
use timbala::model::histogram::{HistogramSample, HistogramValue};
use timbala::model::{stale_nan, HistogramSeries, Labels, MatchOp, Matcher, Sample, Series};
use timbala::promql::{Engine, EngineOptions, QueryError, QueryOutput, QueryValue};
use timbala::storage::Storage;
use timbala::tsdb::{Tsdb, TsdbMetrics, TsdbOptions};

use prometheus_client::registry::Registry;

const REQUIRED_FILES: &[&str] = &[
    "literals",
    "selectors",
    "staleness",
    "operators",
    "aggregators",
    "functions",
    "at_modifier",
    "subquery",
    "range_queries",
    "trig_functions",
    "collision",
    "limit",
    "name_label_dropping",
    "histograms",
];

/// Failures printed per file (`TIMBALA_PROMQLTEST_SHOW` overrides).
fn failures_shown() -> usize {
    std::env::var("TIMBALA_PROMQLTEST_SHOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// `TIMBALA_PROMQLTEST_DIR`, else `../shared/promqltest/testdata` next to the project
/// (looked up in the project's ancestors too, so git worktrees find it).
fn test_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TIMBALA_PROMQLTEST_DIR") {
        return PathBuf::from(dir);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let relative = "shared/promqltest/testdata";
    manifest
        .ancestors()
        .skip(1)
        .map(|a| a.join(relative))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| manifest.join("..").join(relative))
}

/// Prometheus's scripts are data that lives beside the repository, not in it: a clone
/// without them still runs the project's own tests, and says loudly what it skipped.
/// CI (and anyone who sets `TIMBALA_PROMQLTEST_REQUIRED=1`) must have them.
fn missing_test_dir(dir: &std::path::Path) -> ExitCode {
    let required = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("TIMBALA_PROMQLTEST_REQUIRED").is_ok_and(|v| v == "1");
    eprintln!(
        "promql conformance: Prometheus's test scripts were not found at {}.\n\
         Put Prometheus's promql/promqltest/testdata/*.test files at ../shared/promqltest/testdata \
         beside this repository, or point TIMBALA_PROMQLTEST_DIR at them.",
        dir.display()
    );
    if required {
        eprintln!("promql conformance: FAILED: the scripts are required under CI=true or TIMBALA_PROMQLTEST_REQUIRED=1");
        ExitCode::FAILURE
    } else {
        eprintln!("promql conformance: SKIPPED (set CI=true or TIMBALA_PROMQLTEST_REQUIRED=1 to make this a failure)");
        ExitCode::SUCCESS
    }
}

fn selected_files(dir: &PathBuf, all: bool) -> Result<Vec<(String, PathBuf)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .filter_map(|p| {
            let stem = p.file_stem()?.to_str()?.to_string();
            (all || REQUIRED_FILES.contains(&stem.as_str())).then_some((stem, p))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn main() -> ExitCode {
    // A panic inside the engine surfaces as a failed eval; its backtrace is noise here.
    std::panic::set_hook(Box::new(|_| {}));
    let all = std::env::var("TIMBALA_PROMQLTEST_ALL").is_ok_and(|v| v == "1");
    let filter = std::env::var("TIMBALA_PROMQLTEST_FILTER").ok();
    let dir = test_dir();
    if !dir.is_dir() {
        return missing_test_dir(&dir);
    }
    let files = match selected_files(&dir, all) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot read promqltest files: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut total = FileOutcome::default();
    let mut required_failed = false;
    for (name, path) in files {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let script = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{name}: cannot read: {e}");
                required_failed = true;
                continue;
            }
        };
        let outcome = runtime.block_on(run_file(&script));
        println!(
            "{name}: {} passed, {} failed, {} skipped{}",
            outcome.passed,
            outcome.failed,
            outcome.skipped.len(),
            skip_reasons(&outcome.skipped)
        );
        for failure in outcome.failures.iter().take(failures_shown()) {
            println!("    {failure}");
        }
        if outcome.failed > 0 && REQUIRED_FILES.contains(&name.as_str()) {
            required_failed = true;
        }
        total.passed += outcome.passed;
        total.failed += outcome.failed;
        total.skipped.extend(outcome.skipped);
    }
    println!(
        "{} passed, {} failed, {} skipped",
        total.passed,
        total.failed,
        total.skipped.len()
    );
    if required_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

// ---------------------------------------------------------------------------------
// Script model and parsing.
// ---------------------------------------------------------------------------------

/// Results of one test file.
#[derive(Default)]
struct FileOutcome {
    passed: usize,
    failed: usize,
    /// One reason per skipped eval.
    skipped: Vec<String>,
    failures: Vec<String>,
}

/// How an expected message is compared with an error or annotation.
enum TextMatch {
    Any,
    Exact(String),
    Pattern(regex::Regex),
}

impl TextMatch {
    fn matches(&self, text: &str) -> bool {
        match self {
            TextMatch::Any => true,
            TextMatch::Exact(m) => m == text,
            TextMatch::Pattern(re) => re.is_match(text),
        }
    }
}

enum EvalKind {
    Instant { at: i64 },
    Range { start: i64, end: i64, step: i64 },
}

#[derive(Default)]
struct Expectations {
    fail: Option<TextMatch>,
    warns: Vec<TextMatch>,
    infos: Vec<TextMatch>,
    no_warn: bool,
    no_info: bool,
    ordered: bool,
    string: Option<String>,
    range_vector: Option<(i64, i64, i64)>,
    /// Raw result lines: `series values...` or a bare value.
    results: Vec<String>,
}

struct EvalCmd {
    line: usize,
    query: String,
    kind: EvalKind,
    expect: Expectations,
}

enum Command {
    Load {
        interval: i64,
        lines: Vec<String>,
        /// `load_with_nhcb`: classic histograms also become native histograms.
        with_nhcb: bool,
    },
    Clear,
    Eval(Box<EvalCmd>),
}

/// Prometheus duration syntax (`1h30m`, `90s`, `1d`, `500ms`), or a bare number of seconds.
fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('-') {
        return parse_duration_ms(rest).map(|d| -d);
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Ok((secs * 1000.0).round() as i64);
    }
    let mut total = 0i64;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("bad duration {s:?}"));
        }
        let n: i64 = rest[..digits]
            .parse()
            .map_err(|_| format!("bad duration {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            other => return Err(format!("bad duration unit {other:?} in {s:?}")),
        };
        total += n * unit_ms;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Splits off the first whitespace-separated word.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

fn parse_text_match(kind: &str, text: &str) -> Result<TextMatch, String> {
    match kind {
        "msg" => Ok(TextMatch::Exact(text.trim().to_string())),
        "regex" => regex::Regex::new(text.trim())
            .map(TextMatch::Pattern)
            .map_err(|e| format!("bad regex {text:?}: {e}")),
        other => Err(format!("unknown match type {other:?}")),
    }
}

/// `expect <type> [msg|regex: <text>]`, `expect string "..."`, `expect range vector ...`.
fn parse_expect_line(line: &str, expect: &mut Expectations) -> Result<(), String> {
    let body = line.trim_start_matches("expect").trim();
    if let Some(rest) = body.strip_prefix("range vector") {
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.len() != 6 || words[0] != "from" || words[2] != "to" || words[4] != "step" {
            return Err(format!("bad range vector expectation {line:?}"));
        }
        expect.range_vector = Some((
            parse_duration_ms(words[1])?,
            parse_duration_ms(words[3])?,
            parse_duration_ms(words[5])?,
        ));
        return Ok(());
    }
    if let Some(rest) = body.strip_prefix("string") {
        let rest = rest.trim();
        let unquoted = rest
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .or_else(|| rest.strip_prefix('`').and_then(|r| r.strip_suffix('`')))
            .ok_or_else(|| format!("bad string expectation {line:?}"))?;
        expect.string = Some(unquoted.to_string());
        return Ok(());
    }
    let (kind, text) = match body.split_once(':') {
        Some((head, text)) => {
            let (kind, match_type) = split_word(head);
            (kind, Some(parse_text_match(match_type.trim(), text)?))
        }
        None => (body, None),
    };
    let matcher = text.unwrap_or(TextMatch::Any);
    match kind.trim() {
        "fail" => expect.fail = Some(matcher),
        "warn" => expect.warns.push(matcher),
        "info" => expect.infos.push(matcher),
        "no_warn" => expect.no_warn = true,
        "no_info" => expect.no_info = true,
        "ordered" => expect.ordered = true,
        other => return Err(format!("unknown expectation {other:?}")),
    }
    Ok(())
}

fn parse_eval_header(line_no: usize, line: &str) -> Result<EvalCmd, String> {
    let (command, rest) = split_word(line);
    let mut expect = Expectations::default();
    match command {
        "eval" => {}
        "eval_fail" => expect.fail = Some(TextMatch::Any),
        "eval_warn" => expect.warns.push(TextMatch::Any),
        "eval_info" => expect.infos.push(TextMatch::Any),
        "eval_ordered" => expect.ordered = true,
        other => return Err(format!("unknown command {other:?}")),
    }
    let (mode, rest) = split_word(rest);
    let (kind, query) = match mode {
        "instant" => {
            let (at_word, rest) = split_word(rest);
            if at_word != "at" {
                return Err(format!("expected 'at' in {line:?}"));
            }
            let (at, query) = split_word(rest);
            (
                EvalKind::Instant {
                    at: parse_duration_ms(at)?,
                },
                query,
            )
        }
        "range" => {
            let words: Vec<&str> = rest.splitn(7, char::is_whitespace).collect();
            if words.len() < 7 || words[0] != "from" || words[2] != "to" || words[4] != "step" {
                return Err(format!("bad range eval {line:?}"));
            }
            let kind = EvalKind::Range {
                start: parse_duration_ms(words[1])?,
                end: parse_duration_ms(words[3])?,
                step: parse_duration_ms(words[5])?,
            };
            (kind, words[6])
        }
        other => return Err(format!("unknown eval mode {other:?}")),
    };
    Ok(EvalCmd {
        line: line_no,
        query: query.trim().to_string(),
        kind,
        expect,
    })
}

fn is_command_start(line: &str) -> bool {
    let word = split_word(line).0;
    word == "clear" || word.starts_with("load") || word.starts_with("eval")
}

/// Splits a script into commands; each load or eval block ends at a blank line or at the
/// next command.
fn parse_script(script: &str) -> Result<Vec<Command>, String> {
    let lines: Vec<&str> = script.lines().collect();
    let mut commands = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let header_line = i;
        let mut block = Vec::new();
        while i < lines.len() {
            let next = lines[i].trim();
            if next.is_empty()
                || (is_command_start(next) && !lines[i].starts_with(char::is_whitespace))
            {
                break;
            }
            if !next.starts_with('#') {
                block.push(next.to_string());
            }
            i += 1;
        }
        let (command, rest) = split_word(line);
        if command == "clear" {
            commands.push(Command::Clear);
        } else if command.starts_with("load") {
            commands.push(Command::Load {
                interval: parse_duration_ms(rest)?,
                lines: block,
                with_nhcb: command == "load_with_nhcb",
            });
        } else if command.starts_with("eval") {
            let mut eval = parse_eval_header(header_line, line)
                .map_err(|e| format!("line {header_line}: {e}"))?;
            for l in block {
                if l.starts_with("expect ") || l == "expect" {
                    parse_expect_line(&l, &mut eval.expect)
                        .map_err(|e| format!("line {header_line}: {e}"))?;
                } else if let Some(msg) = l.strip_prefix("expected_fail_message") {
                    eval.expect.fail = Some(TextMatch::Exact(msg.trim().to_string()));
                } else if let Some(re) = l.strip_prefix("expected_fail_regexp") {
                    eval.expect.fail = Some(parse_text_match("regex", re)?);
                } else {
                    eval.expect.results.push(l);
                }
            }
            commands.push(Command::Eval(Box::new(eval)));
        } else {
            return Err(format!("line {header_line}: unknown command {line:?}"));
        }
    }
    Ok(commands)
}

// ---------------------------------------------------------------------------------
// Series notation.
// ---------------------------------------------------------------------------------

/// One parsed `series values...` line. `None` points are missing (`_`).
struct SeriesLine {
    labels: Labels,
    points: Vec<Option<Point>>,
}

/// One value of a series line: a float or a native histogram.
#[derive(Clone, Debug)]
enum Point {
    Float(f64),
    Histogram(Box<ScriptHistogram>),
}

impl Point {
    fn float(&self) -> Option<f64> {
        match self {
            Point::Float(v) => Some(*v),
            Point::Histogram(_) => None,
        }
    }
}

#[derive(Debug)]
enum LineError {
    Invalid(String),
}

/// Where the series descriptor of a line ends (after its closing brace, if any).
fn descriptor_end(line: &str) -> usize {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if in_quotes {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_quotes = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '}' => return i + 1,
            c if c.is_whitespace() && !line[..i].contains('{') => return i,
            _ => {}
        }
    }
    line.len()
}

fn parse_descriptor(desc: &str) -> Result<Labels, LineError> {
    let desc = desc.trim();
    if desc == "{}" {
        return Ok(Labels::empty());
    }
    let expr = promql_parser::parser::parse(desc)
        .map_err(|e| LineError::Invalid(format!("series {desc:?}: {e}")))?;
    let promql_parser::parser::Expr::VectorSelector(vs) = expr else {
        return Err(LineError::Invalid(format!(
            "series {desc:?} is not a selector"
        )));
    };
    let mut pairs: Vec<(String, String)> = vs
        .matchers
        .matchers
        .iter()
        .map(|m| (m.name.clone(), m.value.clone()))
        .collect();
    if let Some(name) = vs.name {
        pairs.push(("__name__".to_string(), name));
    }
    Ok(Labels::from_pairs(pairs))
}

fn parse_float(s: &str) -> Result<f64, LineError> {
    s.parse::<f64>()
        .map_err(|_| LineError::Invalid(format!("bad number {s:?}")))
}

/// Splits `a+b` / `a-b` into start and increment, ignoring signs of exponents.
fn split_increment(head: &str) -> Result<(f64, f64), LineError> {
    let bytes = head.as_bytes();
    for i in 1..bytes.len() {
        let c = bytes[i];
        if (c == b'+' || c == b'-') && !matches!(bytes[i - 1], b'e' | b'E') {
            let start = parse_float(&head[..i])?;
            let incr = parse_float(&head[i..])?;
            return Ok((start, incr));
        }
    }
    Ok((parse_float(head)?, 0.0))
}

fn expand_token(token: &str, out: &mut Vec<Option<Point>>) -> Result<(), LineError> {
    if token.starts_with("{{") {
        let expanded = promqltest_histograms::expand(token).map_err(LineError::Invalid)?;
        out.extend(
            expanded
                .into_iter()
                .map(|h| Some(Point::Histogram(Box::new(h)))),
        );
        return Ok(());
    }
    match token {
        "_" => {
            out.push(None);
            return Ok(());
        }
        "stale" => {
            out.push(Some(Point::Float(stale_nan())));
            return Ok(());
        }
        _ => {}
    }
    if let Some(x) = token.rfind('x') {
        let (head, times) = (&token[..x], &token[x + 1..]);
        if !head.is_empty() && !times.is_empty() && times.bytes().all(|b| b.is_ascii_digit()) {
            let n: usize = times
                .parse()
                .map_err(|_| LineError::Invalid(format!("bad repeat {token:?}")))?;
            if head == "_" {
                out.extend(std::iter::repeat_n(None, n));
                return Ok(());
            }
            if head == "stale" {
                out.extend(std::iter::repeat_n(Some(Point::Float(stale_nan())), n + 1));
                return Ok(());
            }
            let (mut value, incr) = split_increment(head)?;
            for _ in 0..=n {
                out.push(Some(Point::Float(value)));
                value += incr;
            }
            return Ok(());
        }
    }
    out.push(Some(Point::Float(parse_float(token)?)));
    Ok(())
}

fn parse_values(text: &str) -> Result<Vec<Option<Point>>, LineError> {
    let mut out = Vec::new();
    for token in promqltest_histograms::tokens(text) {
        expand_token(token, &mut out)?;
    }
    Ok(out)
}

fn parse_series_line(line: &str) -> Result<SeriesLine, LineError> {
    let end = descriptor_end(line);
    let labels = parse_descriptor(&line[..end])?;
    let points = parse_values(&line[end..])?;
    Ok(SeriesLine { labels, points })
}

/// A result line is either `series values...` or bare values (a scalar result).
fn parse_result_line(line: &str) -> Result<SeriesLine, LineError> {
    let first = split_word(line).0;
    let mut probe = Vec::new();
    if first == "_" || expand_token(first, &mut probe).is_ok() {
        return Ok(SeriesLine {
            labels: Labels::empty(),
            points: parse_values(line)?,
        });
    }
    parse_series_line(line)
}

// ---------------------------------------------------------------------------------
// Storage for the scripts.
// ---------------------------------------------------------------------------------

/// The data of one script between `clear`s: a fresh TSDB in a temporary directory.
struct TestStore {
    storage: Arc<dyn Storage>,
    tsdb: Tsdb,
    _dir: tempfile::TempDir,
    /// Series `load_with_nhcb` would turn into native histograms, which this runner does
    /// not derive (evals that select them are skipped).
    histogram_series: Vec<Labels>,
}

impl TestStore {
    fn open() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let opts = TsdbOptions {
            dir: dir.path().to_path_buf(),
            // Script data lives around the Unix epoch: keep it all, accept any order.
            retention_ms: 0,
            out_of_order_window_ms: i64::MAX / 4,
            ..TsdbOptions::default()
        };
        let tsdb = Tsdb::open(opts, TsdbMetrics::register(&mut Registry::default()))
            .map_err(|e| format!("open tsdb: {e}"))?;
        Ok(TestStore {
            storage: Arc::new(tsdb.clone()),
            tsdb,
            _dir: dir,
            histogram_series: Vec::new(),
        })
    }

    async fn load(
        &mut self,
        interval: i64,
        lines: &[String],
        with_nhcb: bool,
    ) -> Result<(), String> {
        let mut batch = Vec::new();
        for line in lines {
            match parse_series_line(line) {
                Ok(s) => {
                    if with_nhcb {
                        self.note_nhcb(&s.labels);
                    }
                    let mut samples = Vec::new();
                    let mut histograms = Vec::new();
                    for (i, p) in s.points.into_iter().enumerate() {
                        let t = i as i64 * interval;
                        match p {
                            Some(Point::Float(v)) => samples.push(Sample::new(t, v)),
                            Some(Point::Histogram(h)) => histograms.push(HistogramSample {
                                t,
                                h: HistogramValue::Float(h.h),
                            }),
                            None => {}
                        }
                    }
                    batch.push((
                        Series {
                            labels: s.labels.clone(),
                            samples,
                        },
                        HistogramSeries {
                            labels: s.labels,
                            samples: histograms,
                        },
                    ));
                }
                Err(LineError::Invalid(e)) => return Err(format!("load: {e}")),
            }
        }
        // As in Prometheus's loader, a series defined twice in one block keeps the last.
        let mut seen = std::collections::HashSet::new();
        batch.reverse();
        batch.retain(|(s, _)| seen.insert(s.labels.clone()));
        batch.reverse();
        let (floats, histograms): (Vec<Series>, Vec<HistogramSeries>) = batch.into_iter().unzip();
        let histograms: Vec<HistogramSeries> = histograms
            .into_iter()
            .filter(|h| !h.samples.is_empty())
            .collect();
        let outcome = self
            .storage
            .append(floats)
            .await
            .map_err(|e| format!("append: {e}"))?;
        if let Some(why) = outcome.first_rejection {
            return Err(format!("append rejected samples: {why}"));
        }
        if histograms.is_empty() {
            return Ok(());
        }
        let outcome = self
            .storage
            .append_histograms(histograms)
            .await
            .map_err(|e| format!("append histograms: {e}"))?;
        match outcome.first_rejection {
            Some(why) => Err(format!("append rejected histograms: {why}")),
            None => Ok(()),
        }
    }

    /// Records the native histogram `load_with_nhcb` derives from a classic bucket series.
    fn note_nhcb(&mut self, labels: &Labels) {
        let Some(name) = labels.metric_name() else {
            return;
        };
        let Some(base) = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
        else {
            return;
        };
        let mut derived = labels.clone();
        derived.set("__name__", base);
        derived.remove("le");
        if !self.histogram_series.contains(&derived) {
            self.histogram_series.push(derived);
        }
    }

    /// Whether any selector of `query` selects a series `load_with_nhcb` derives.
    fn touches_histograms(&self, query: &str) -> bool {
        if self.histogram_series.is_empty() {
            return false;
        }
        let Ok(expr) = promql_parser::parser::parse(query) else {
            return false;
        };
        let mut selectors = Vec::new();
        collect_selectors(&expr, &mut selectors);
        selectors.iter().any(|matchers| {
            self.histogram_series
                .iter()
                .any(|labels| matchers.iter().all(|m| m.matches_labels(labels)))
        })
    }
}

/// The matchers of every selector in `expr` (metric name included).
fn collect_selectors(expr: &promql_parser::parser::Expr, out: &mut Vec<Vec<Matcher>>) {
    use promql_parser::parser::Expr;
    let mut selector = |vs: &promql_parser::parser::VectorSelector| {
        let mut matchers: Vec<Matcher> = vs
            .matchers
            .matchers
            .iter()
            .filter_map(|m| {
                let op = match m.op {
                    promql_parser::label::MatchOp::Equal => MatchOp::Equal,
                    promql_parser::label::MatchOp::NotEqual => MatchOp::NotEqual,
                    promql_parser::label::MatchOp::Re(_) => MatchOp::RegexMatch,
                    promql_parser::label::MatchOp::NotRe(_) => MatchOp::RegexNoMatch,
                };
                Matcher::new(op, m.name.clone(), m.value.clone()).ok()
            })
            .collect();
        if let Some(name) = &vs.name {
            matchers.push(Matcher::equal("__name__", name.clone()));
        }
        out.push(matchers);
    };
    match expr {
        Expr::VectorSelector(vs) => selector(vs),
        Expr::MatrixSelector(ms) => selector(&ms.vs),
        Expr::Aggregate(a) => {
            collect_selectors(&a.expr, out);
            if let Some(p) = &a.param {
                collect_selectors(p, out);
            }
        }
        Expr::Unary(u) => collect_selectors(&u.expr, out),
        Expr::Binary(b) => {
            collect_selectors(&b.lhs, out);
            collect_selectors(&b.rhs, out);
        }
        Expr::Paren(p) => collect_selectors(&p.expr, out),
        Expr::Subquery(s) => collect_selectors(&s.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|a| collect_selectors(a, out)),
        _ => {}
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Err(e) = self.tsdb.close() {
            eprintln!("closing test tsdb: {e}");
        }
    }
}

/// The engine with aggregation pushdown on or off.
fn test_engine(pushdown: bool) -> Engine {
    Engine::new(EngineOptions {
        pushdown,
        lookback_delta_ms: 5 * 60 * 1000,
        max_samples: 10_000,
        timeout: Duration::from_secs(100),
        max_concurrent: 4,
        delayed_name_removal: true,
        experimental_functions: true,
        default_subquery_step_ms: 60_000,
    })
}

// ---------------------------------------------------------------------------------
// Running evals and comparing results.
// ---------------------------------------------------------------------------------

async fn run_file(script: &str) -> FileOutcome {
    let mut outcome = FileOutcome::default();
    let commands = match parse_script(script) {
        Ok(c) => c,
        Err(e) => {
            outcome.failed += 1;
            outcome.failures.push(format!("script does not parse: {e}"));
            return outcome;
        }
    };
    let engines = [
        (test_engine(true), "pushdown on"),
        (test_engine(false), "pushdown off"),
    ];
    let mut store = match TestStore::open() {
        Ok(s) => s,
        Err(e) => {
            outcome.failed += 1;
            outcome.failures.push(e);
            return outcome;
        }
    };
    for command in commands {
        match command {
            Command::Clear => match TestStore::open() {
                Ok(s) => store = s,
                Err(e) => {
                    outcome.failed += 1;
                    outcome.failures.push(e);
                    return outcome;
                }
            },
            Command::Load {
                interval,
                lines,
                with_nhcb,
            } => {
                if let Err(e) = store.load(interval, &lines, with_nhcb).await {
                    outcome.failed += 1;
                    outcome.failures.push(e);
                }
            }
            Command::Eval(eval) => {
                if let Some(reason) = skip_reason(&eval, &store) {
                    outcome
                        .skipped
                        .push(format!("line {}: {reason}", eval.line));
                    continue;
                }
                let mut failures = Vec::new();
                for (engine, mode) in &engines {
                    if let Err(e) = run_eval(engine, &store, &eval).await {
                        failures.push(format!("line {} ({mode}): {}: {e}", eval.line, eval.query));
                    }
                }
                if failures.is_empty() {
                    outcome.passed += 1;
                } else {
                    outcome.failed += 1;
                    outcome.failures.extend(failures);
                }
            }
        }
    }
    outcome
}

/// " (reason: count, ...)" for a file's skipped evals, or nothing when none were skipped.
fn skip_reasons(skipped: &[String]) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for skip in skipped {
        // Entries read "line N: reason"; tally by reason.
        let reason = skip.split_once(": ").map_or(skip.as_str(), |(_, r)| r);
        *counts.entry(reason).or_default() += 1;
    }
    if counts.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{r}: {n}")).collect();
    format!(" ({})", parts.join(", "))
}

fn skip_reason(eval: &EvalCmd, store: &TestStore) -> Option<&'static str> {
    if store.touches_histograms(&eval.query) {
        return Some("native histograms derived from classic ones (load_with_nhcb)");
    }
    None
}

async fn run_eval(engine: &Engine, store: &TestStore, eval: &EvalCmd) -> Result<(), String> {
    match eval.kind {
        EvalKind::Range { start, end, step } => {
            let storage = Arc::clone(&store.storage);
            let result = engine
                .range_query(storage, &eval.query, start, end, step)
                .await;
            check_outcome(eval, result).map(|_| ())
        }
        EvalKind::Instant { at } => {
            // As Prometheus's runner: the query as written, then with `@ <eval time>` on
            // its selectors evaluated at other times, must all give the expected answer.
            let mut cases = vec![(eval.query.clone(), at)];
            cases.extend(at_modifier_variants(&eval.query, at));
            for (query, t) in cases {
                let storage = Arc::clone(&store.storage);
                let result = engine.instant_query(storage, &query, t).await;
                let context = |e: String| {
                    if query == eval.query {
                        e
                    } else {
                        format!("as {query:?} at {t}ms: {e}")
                    }
                };
                if let Some(value) = check_outcome(eval, result).map_err(context)? {
                    check_range_mode(engine, store, eval, &query, t, &value)
                        .await
                        .map_err(context)?;
                }
            }
            Ok(())
        }
    }
}

/// Checks a query's error or annotations and value; returns the value when it succeeded.
fn check_outcome(
    eval: &EvalCmd,
    result: Result<QueryOutput, QueryError>,
) -> Result<Option<QueryValue>, String> {
    let expect = &eval.expect;
    let output = match (result, &expect.fail) {
        (Err(e), Some(m)) => return check_error(&e, m).map(|()| None),
        (Ok(_), Some(_)) => return Err("expected failure, query succeeded".into()),
        (Err(e), None) => return Err(format!("unexpected error: {e}")),
        (Ok(out), None) => out,
    };
    check_annotations(
        "warn",
        &output.annotations.warnings,
        &expect.warns,
        expect.no_warn,
    )?;
    check_annotations(
        "info",
        &output.annotations.infos,
        &expect.infos,
        expect.no_info,
    )?;
    check_value(eval, &output)?;
    Ok(Some(output.value))
}

/// Functions whose result depends on the evaluation time even with step-invariant
/// arguments (Prometheus's `AtModifierUnsafeFunctions`).
const AT_MODIFIER_UNSAFE_FUNCTIONS: &[&str] = &[
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "end",
    "hour",
    "minute",
    "month",
    "year",
    "predict_linear",
    "range",
    "start",
    "step",
    "time",
    "timestamp",
];

/// Prometheus's `atModifierTestCases`: `query` with `@ at` on every selector and
/// subquery outside subqueries that carry `@`, to be evaluated at other times.
fn at_modifier_variants(query: &str, at: i64) -> Vec<(String, i64)> {
    // The parser renders `\xNN` escapes as characters, changing what Go would see.
    if query.contains("\\x") {
        return Vec::new();
    }
    let Ok(mut expr) = promql_parser::parser::parse(query) else {
        return Vec::new();
    };
    let Ok(modifier) = promql_parser::parser::AtModifier::try_from(at as f64 / 1000.0) else {
        return Vec::new();
    };
    if !pin_selectors(&mut expr, &modifier) {
        return Vec::new();
    }
    let pinned = expr.to_string();
    // A rendering the parser does not read back is the parser's problem, not the engine's.
    if promql_parser::parser::parse(&pinned).is_err() {
        return Vec::new();
    }
    let times: &[i64] = if at == 0 {
        &[-1000, 0, 1000]
    } else {
        &[-10 * at, 0, at / 5, at, 10 * at]
    };
    times.iter().map(|&t| (pinned.clone(), t)).collect()
}

/// Sets `@` on selectors and subqueries without one; false when the expression calls a
/// function that makes the variants meaningless.
fn pin_selectors(
    expr: &mut promql_parser::parser::Expr,
    at: &promql_parser::parser::AtModifier,
) -> bool {
    use promql_parser::parser::Expr;
    match expr {
        Expr::VectorSelector(vs) => {
            vs.at.get_or_insert_with(|| at.clone());
            true
        }
        Expr::MatrixSelector(ms) => {
            ms.vs.at.get_or_insert_with(|| at.clone());
            true
        }
        Expr::Subquery(sq) => {
            // Selectors inside a subquery that has `@` are left alone.
            sq.at.get_or_insert_with(|| at.clone());
            !has_unsafe_call(&sq.expr)
        }
        Expr::Call(c) => {
            !AT_MODIFIER_UNSAFE_FUNCTIONS.contains(&c.func.name)
                && c.args.args.iter_mut().all(|a| pin_selectors(a, at))
        }
        Expr::Aggregate(a) => {
            pin_selectors(&mut a.expr, at) && a.param.as_mut().is_none_or(|p| pin_selectors(p, at))
        }
        Expr::Unary(u) => pin_selectors(&mut u.expr, at),
        Expr::Binary(b) => pin_selectors(&mut b.lhs, at) && pin_selectors(&mut b.rhs, at),
        Expr::Paren(p) => pin_selectors(&mut p.expr, at),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => true,
    }
}

fn has_unsafe_call(expr: &promql_parser::parser::Expr) -> bool {
    use promql_parser::parser::Expr;
    match expr {
        Expr::Call(c) => {
            AT_MODIFIER_UNSAFE_FUNCTIONS.contains(&c.func.name)
                || c.args.args.iter().any(|a| has_unsafe_call(a))
        }
        Expr::Aggregate(a) => {
            has_unsafe_call(&a.expr) || a.param.as_deref().is_some_and(has_unsafe_call)
        }
        Expr::Unary(u) => has_unsafe_call(&u.expr),
        Expr::Binary(b) => has_unsafe_call(&b.lhs) || has_unsafe_call(&b.rhs),
        Expr::Paren(p) => has_unsafe_call(&p.expr),
        Expr::Subquery(sq) => has_unsafe_call(&sq.expr),
        _ => false,
    }
}

/// As Prometheus's test runner: an instant query must give the same answer as the middle
/// step of a range query around it (unless it asks for ordering or uses query-context
/// functions, which resolve differently).
async fn check_range_mode(
    engine: &Engine,
    store: &TestStore,
    eval: &EvalCmd,
    query: &str,
    at: i64,
    instant: &QueryValue,
) -> Result<(), String> {
    const MINUTE: i64 = 60_000;
    let uses_context_fn = ["start()", "end()", "range()", "step()"]
        .iter()
        .any(|f| query.contains(f));
    let is_scalar = match instant {
        QueryValue::Scalar { .. } => true,
        QueryValue::Vector(_) => false,
        QueryValue::String { .. } | QueryValue::Matrix(_) => return Ok(()),
    };
    if eval.expect.ordered || uses_context_fn {
        return Ok(());
    }
    let storage = Arc::clone(&store.storage);
    let ranged = engine
        .range_query(storage, query, at - MINUTE, at + MINUTE, MINUTE)
        .await
        .map_err(|e| format!("range mode: {e}"))?;
    let QueryValue::Matrix(series) = ranged.value else {
        return Err("range mode: result is not a matrix".into());
    };
    if series.windows(2).any(|w| w[0].labels >= w[1].labels) {
        return Err("range mode: matrix is not sorted by labels".into());
    }
    let at_step: Vec<timbala::promql::InstantSample> = series
        .iter()
        .filter_map(|s| {
            let float = s.points.iter().find(|p| p.t == at).map(|p| (p.v, None));
            let histogram = || {
                s.histograms
                    .iter()
                    .find(|p| p.t == at)
                    .map(|p| (0.0, Some(p.h.clone())))
            };
            float
                .or_else(histogram)
                .map(|(v, h)| timbala::promql::InstantSample {
                    labels: s.labels.clone(),
                    t: at,
                    v,
                    h,
                    drop_name: false,
                })
        })
        .collect();
    let output = QueryOutput {
        step_annotations: Default::default(),
        value: if is_scalar {
            let v = at_step.first().map_or(f64::NAN, |s| s.v);
            QueryValue::Scalar { t: at, v }
        } else {
            QueryValue::Vector(at_step)
        },
        annotations: ranged.annotations,
        stats: ranged.stats,
    };
    check_value(eval, &output).map_err(|e| format!("range mode: {e}"))
}

fn check_error(e: &QueryError, m: &TextMatch) -> Result<(), String> {
    let text = e.to_string();
    if m.matches(&text) {
        Ok(())
    } else {
        Err(format!(
            "error {text:?} does not match the expected message"
        ))
    }
}

fn check_annotations(
    kind: &str,
    got: &std::collections::BTreeSet<String>,
    expected: &[TextMatch],
    expect_none: bool,
) -> Result<(), String> {
    if expect_none && !got.is_empty() {
        return Err(format!("unexpected {kind} annotations: {got:?}"));
    }
    if expected.is_empty() {
        return Ok(());
    }
    if got.is_empty() {
        return Err(format!("expected {kind} annotation, got none"));
    }
    for (i, m) in expected.iter().enumerate() {
        if !got.iter().any(|g| m.matches(g)) {
            return Err(format!(
                "{kind} expectation #{} matched none of {got:?}",
                i + 1
            ));
        }
    }
    for g in got {
        if !expected.iter().any(|m| m.matches(g)) {
            return Err(format!("unexpected {kind} annotation {g:?}"));
        }
    }
    Ok(())
}

fn expected_lines(eval: &EvalCmd) -> Result<Vec<SeriesLine>, String> {
    eval.expect
        .results
        .iter()
        .map(|l| parse_result_line(l).map_err(|e| format!("expected line {l:?}: {e:?}")))
        .collect()
}

fn check_value(eval: &EvalCmd, output: &QueryOutput) -> Result<(), String> {
    let expected = expected_lines(eval)?;
    match (&output.value, &eval.kind) {
        (QueryValue::String { s, .. }, _) => match &eval.expect.string {
            Some(want) if want == s => Ok(()),
            want => Err(format!("string {s:?}, expected {want:?}")),
        },
        (QueryValue::Scalar { v, .. }, _) => {
            let want = match expected.as_slice() {
                [line] if line.labels.is_empty() && line.points.len() == 1 => {
                    line.points[0].as_ref().and_then(Point::float)
                }
                _ => return Err(format!("scalar {v}, expected {:?}", eval.expect.results)),
            };
            match want {
                Some(w) if almost_equal(*v, w) => Ok(()),
                _ => Err(format!("scalar {v}, expected {want:?}")),
            }
        }
        (QueryValue::Vector(samples), _) => check_vector(samples, &expected, eval.expect.ordered),
        (QueryValue::Matrix(series), EvalKind::Range { start, step, .. }) => {
            check_matrix(series, &expected, *start, *step)
        }
        (QueryValue::Matrix(series), EvalKind::Instant { .. }) => match eval.expect.range_vector {
            Some((start, _end, step)) => check_matrix(series, &expected, start, step),
            None => Err("range vector result without 'expect range vector'".into()),
        },
    }
}

/// A sample's value for messages.
fn show_sample(s: &timbala::promql::InstantSample) -> String {
    match &s.h {
        Some(h) => format!("{} {}", s.labels, promqltest_histograms::show(h)),
        None => format!("{} {}", s.labels, s.v),
    }
}

/// Whether a computed sample has the expected value, float or histogram.
fn value_matches(got: &timbala::promql::InstantSample, want: &Point) -> bool {
    match (want, &got.h) {
        (Point::Float(w), None) => almost_equal(got.v, *w),
        (Point::Histogram(w), Some(h)) => promqltest_histograms::matches(w, h),
        _ => false,
    }
}

fn check_vector(
    got: &[timbala::promql::InstantSample],
    expected: &[SeriesLine],
    ordered: bool,
) -> Result<(), String> {
    if got.len() != expected.len() {
        let shown: Vec<String> = got.iter().map(show_sample).collect();
        return Err(format!(
            "got {} samples, expected {}: {shown:?}",
            got.len(),
            expected.len()
        ));
    }
    for (i, want) in expected.iter().enumerate() {
        let want_value = match want.points.as_slice() {
            [Some(v)] => v,
            _ => return Err(format!("expected line for {} needs one value", want.labels)),
        };
        let found = if ordered {
            Some(i).filter(|&i| got[i].labels == want.labels)
        } else {
            got.iter().position(|s| s.labels == want.labels)
        };
        match found {
            Some(j) if value_matches(&got[j], want_value) => {}
            Some(j) => {
                return Err(format!(
                    "got {}, expected {want_value:?}",
                    show_sample(&got[j])
                ))
            }
            None => {
                let shown: Vec<String> = got.iter().map(show_sample).collect();
                return Err(format!(
                    "{} {want_value:?} not found{}: {shown:?}",
                    want.labels,
                    if ordered { " at its position" } else { "" }
                ));
            }
        }
    }
    Ok(())
}

fn check_matrix(
    got: &[timbala::promql::RangeSeries],
    expected: &[SeriesLine],
    start: i64,
    step: i64,
) -> Result<(), String> {
    if got.len() != expected.len() {
        let shown: Vec<String> = got.iter().map(|s| s.labels.to_string()).collect();
        return Err(format!(
            "got {} series, expected {}: {shown:?}",
            got.len(),
            expected.len()
        ));
    }
    for want in expected {
        let Some(series) = got.iter().find(|s| s.labels == want.labels) else {
            return Err(format!("series {} not in result", want.labels));
        };
        let at = |i: usize| start + i as i64 * step;
        let want_points: Vec<(i64, f64)> = want
            .points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref()?.float().map(|v| (at(i), v)))
            .collect();
        let want_histograms: Vec<(i64, &ScriptHistogram)> = want
            .points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p {
                Some(Point::Histogram(h)) => Some((at(i), &**h)),
                _ => None,
            })
            .collect();
        let matches = series.points.len() == want_points.len()
            && series
                .points
                .iter()
                .zip(&want_points)
                .all(|(p, (t, v))| p.t == *t && almost_equal(p.v, *v))
            && series.histograms.len() == want_histograms.len()
            && series
                .histograms
                .iter()
                .zip(&want_histograms)
                .all(|(p, (t, h))| p.t == *t && promqltest_histograms::matches(h, &p.h));
        if !matches {
            let got_points: Vec<(i64, f64)> = series.points.iter().map(|p| (p.t, p.v)).collect();
            let got_histograms: Vec<(i64, String)> = series
                .histograms
                .iter()
                .map(|p| (p.t, promqltest_histograms::show(&p.h)))
                .collect();
            let want_shown: Vec<(i64, String)> = want_histograms
                .iter()
                .map(|(t, h)| (*t, promqltest_histograms::show(&h.h)))
                .collect();
            return Err(format!(
                "{}: got {got_points:?} {got_histograms:?}, expected {want_points:?} {want_shown:?}",
                want.labels
            ));
        }
    }
    Ok(())
}
