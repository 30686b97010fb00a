//! Query planning: which samples each selector of a parsed query needs, and loading them.
//!
//! Owns: the walk over the AST that computes, for every vector and matrix selector, the
//! time range it reads (evaluation range, lookback delta, selector range, offset, `@`,
//! enclosing subqueries), and the `storage.select` calls that fetch those samples before
//! evaluation starts (range selectors' series without staleness markers, so the
//! evaluator borrows each step's window as a slice). Calls `storage` and `model`; the
//! evaluator reads the result.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use promql_parser::label::MatchOp as ParserMatchOp;
use promql_parser::parser::{AtModifier, Expr, Offset, VectorSelector};

use crate::model::{is_stale_nan, MatchOp, Matcher, Series, METRIC_NAME};
use crate::storage::{SelectError, SelectRequest, Storage};

use super::QueryError;

/// The series each selector of the query reads, keyed by the selector's address in the
/// AST (the AST is not moved between planning and evaluation).
#[derive(Default)]
pub(crate) struct LoadedSeries {
    by_selector: HashMap<usize, Vec<Series>>,
}

impl LoadedSeries {
    pub(crate) fn key(vs: &VectorSelector) -> usize {
        vs as *const VectorSelector as usize
    }

    /// Samples loaded for every selector, each series' once per selector.
    pub(crate) fn samples(&self) -> u64 {
        self.by_selector
            .values()
            .flatten()
            .map(|s| s.samples.len() as u64)
            .sum()
    }

    pub(crate) fn get(&self, vs: &VectorSelector) -> &[Series] {
        self.by_selector
            .get(&Self::key(vs))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// The query-level times every part of the plan and the evaluation agree on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueryTimes {
    pub start: i64,
    pub end: i64,
    /// Step of a range query; 0 for an instant query.
    pub step: i64,
    pub lookback: i64,
    pub default_subquery_step: i64,
}

/// One selector and the inclusive time range it must read.
struct SelectorNeed<'a> {
    vs: &'a VectorSelector,
    mint: i64,
    maxt: i64,
    /// A range selector never returns staleness markers: they are dropped at load, so
    /// each step's window is a plain slice of the loaded samples.
    drop_stale: bool,
}

pub(crate) fn duration_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn offset_ms(offset: &Option<Offset>) -> i64 {
    match offset {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(d),
        Some(Offset::Neg(d)) => -duration_ms(d),
    }
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => duration_ms(&d),
        Err(e) => -duration_ms(&e.duration()),
    }
}

/// The timestamp an `@` modifier pins evaluation to, if any.
pub(crate) fn at_ms(at: &Option<AtModifier>, times: &QueryTimes) -> Option<i64> {
    match at {
        None => None,
        Some(AtModifier::Start) => Some(times.start),
        Some(AtModifier::End) => Some(times.end),
        Some(AtModifier::At(t)) => Some(system_time_ms(t)),
    }
}

/// Range of reference times `[lo, hi]` a selector or subquery sees when its parent is
/// evaluated at times in `[lo, hi]`.
fn reference_range(
    at: &Option<AtModifier>,
    offset: &Option<Offset>,
    eval: (i64, i64),
    times: &QueryTimes,
) -> (i64, i64) {
    let off = offset_ms(offset);
    match at_ms(at, times) {
        Some(t) => (t.saturating_sub(off), t.saturating_sub(off)),
        None => (eval.0.saturating_sub(off), eval.1.saturating_sub(off)),
    }
}

fn collect_needs<'a>(
    expr: &'a Expr,
    eval: (i64, i64),
    times: &QueryTimes,
    out: &mut Vec<SelectorNeed<'a>>,
) {
    match expr {
        Expr::VectorSelector(vs) => {
            let (lo, hi) = reference_range(&vs.at, &vs.offset, eval, times);
            out.push(SelectorNeed {
                vs,
                mint: lo.saturating_sub(times.lookback) + 1,
                maxt: hi,
                drop_stale: false,
            });
        }
        Expr::MatrixSelector(ms) => {
            let (lo, hi) = reference_range(&ms.vs.at, &ms.vs.offset, eval, times);
            out.push(SelectorNeed {
                vs: &ms.vs,
                mint: lo.saturating_sub(duration_ms(&ms.range)) + 1,
                maxt: hi,
                drop_stale: true,
            });
        }
        Expr::Subquery(sq) => {
            let (lo, hi) = reference_range(&sq.at, &sq.offset, eval, times);
            collect_needs(
                &sq.expr,
                (lo.saturating_sub(duration_ms(&sq.range)), hi),
                times,
                out,
            );
        }
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                collect_needs(p, eval, times, out);
            }
            collect_needs(&a.expr, eval, times, out);
        }
        Expr::Unary(u) => collect_needs(&u.expr, eval, times, out),
        Expr::Binary(b) => {
            collect_needs(&b.lhs, eval, times, out);
            collect_needs(&b.rhs, eval, times, out);
        }
        Expr::Paren(p) => collect_needs(&p.expr, eval, times, out),
        Expr::Call(c) => {
            for a in &c.args.args {
                collect_needs(a, eval, times, out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Converts a parser matcher into the storage's matcher (regexes anchored with `(?s)`).
fn to_storage_matcher(m: &promql_parser::label::Matcher) -> Result<Matcher, QueryError> {
    let op = match m.op {
        ParserMatchOp::Equal => MatchOp::Equal,
        ParserMatchOp::NotEqual => MatchOp::NotEqual,
        ParserMatchOp::Re(_) => MatchOp::RegexMatch,
        ParserMatchOp::NotRe(_) => MatchOp::RegexNoMatch,
    };
    Matcher::new(op, m.name.clone(), m.value.clone())
        .map_err(|e| QueryError::BadData(format!("invalid regular expression {:?}: {e}", m.value)))
}

/// The matcher sets of a selector: one set normally, several for `{a="x" or b="y"}`.
fn matcher_sets(vs: &VectorSelector) -> Result<Vec<Vec<Matcher>>, QueryError> {
    let name = vs
        .name
        .as_ref()
        .map(|n| Matcher::equal(METRIC_NAME, n.clone()));
    let groups: Vec<&Vec<promql_parser::label::Matcher>> = if vs.matchers.or_matchers.is_empty() {
        vec![&vs.matchers.matchers]
    } else {
        vs.matchers.or_matchers.iter().collect()
    };
    groups
        .into_iter()
        .map(|group| {
            let mut set: Vec<Matcher> = name.iter().cloned().collect();
            for m in group {
                set.push(to_storage_matcher(m)?);
            }
            Ok(set)
        })
        .collect()
}

/// Loads, for every selector in `expr`, the samples evaluation over `[start, end]` needs.
/// `max_samples` bounds what one select may return (0 = unbounded).
pub(crate) async fn load(
    storage: &dyn Storage,
    expr: &Expr,
    times: &QueryTimes,
    max_samples: usize,
) -> Result<LoadedSeries, QueryError> {
    let mut needs = Vec::new();
    collect_needs(expr, (times.start, times.end), times, &mut needs);
    let mut loaded = LoadedSeries::default();
    for need in needs {
        let mut series = Vec::new();
        let sets = matcher_sets(need.vs)?;
        let several = sets.len() > 1;
        for matchers in sets {
            let req = SelectRequest {
                matchers,
                mint: need.mint,
                maxt: need.maxt,
                max_samples,
            };
            let found = storage.select(req).await.map_err(|e| match e {
                SelectError::TooManySamples => QueryError::TooManySamples,
                SelectError::Storage(e) => QueryError::Storage(e),
            })?;
            series.extend(found);
        }
        if several {
            series.sort_by(|a, b| a.labels.cmp(&b.labels));
            series.dedup_by(|a, b| a.labels == b.labels);
        }
        if need.drop_stale {
            for s in &mut series {
                s.samples.retain(|p| !is_stale_nan(p.v));
            }
        }
        loaded
            .by_selector
            .insert(LoadedSeries::key(need.vs), series);
    }
    Ok(loaded)
}
