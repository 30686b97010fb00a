//! Binary operators at one evaluation step: arithmetic, comparison (filtering or `bool`),
//! set operators (`and`, `or`, `unless`) and vector matching (`on`/`ignoring`,
//! `group_left`/`group_right`, fill values) with Prometheus's cardinality errors.
//!
//! Owns: operator semantics and result labels. Called by `eval`; calls back into the
//! evaluator only to evaluate operands and drop metric names.

use std::collections::{HashMap, HashSet};

use promql_parser::parser::token::TokenId;
use promql_parser::parser::token::{
    T_ADD, T_ATAN2, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MOD,
    T_MUL, T_NEQ, T_POW, T_SUB,
};
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use std::sync::Arc;

use crate::model::histogram::{CounterResetHint, FloatHistogram};
use crate::model::{Labels, METRIC_NAME};
use crate::promql::functions::gofmt::go_quote;
use crate::promql::histogram_fns::{HistogramAnnotation, HistogramOperation};

use super::eval::{
    hash_labels_where, labels_where, remove_metric_identity, type_error, Evaluator, Value,
};
use super::value::InstantSample;
use super::QueryError;

/// How two vectors are matched, distilled from the parser's modifier.
struct Matching<'a> {
    card: &'a VectorMatchCardinality,
    on: bool,
    labels: Vec<&'a str>,
    fill_lhs: Option<f64>,
    fill_rhs: Option<f64>,
}

impl<'a> Matching<'a> {
    fn of(b: &'a BinaryExpr) -> Self {
        const ONE_TO_ONE: &VectorMatchCardinality = &VectorMatchCardinality::OneToOne;
        match &b.modifier {
            None => Matching {
                card: ONE_TO_ONE,
                on: false,
                labels: Vec::new(),
                fill_lhs: None,
                fill_rhs: None,
            },
            Some(m) => {
                let (on, labels) = match &m.matching {
                    Some(LabelModifier::Include(l)) => {
                        (true, l.labels.iter().map(String::as_str).collect())
                    }
                    Some(LabelModifier::Exclude(l)) => {
                        (false, l.labels.iter().map(String::as_str).collect())
                    }
                    None => (false, Vec::new()),
                };
                Matching {
                    card: &m.card,
                    on,
                    labels,
                    fill_lhs: m.fill_values.lhs,
                    fill_rhs: m.fill_values.rhs,
                }
            }
        }
    }

    fn include(&self) -> &[String] {
        match self.card {
            VectorMatchCardinality::ManyToOne(l) | VectorMatchCardinality::OneToMany(l) => {
                &l.labels
            }
            _ => &[],
        }
    }

    fn keeps(&self, name: &str) -> bool {
        if self.on {
            self.labels.contains(&name)
        } else {
            name != METRIC_NAME && !self.labels.contains(&name)
        }
    }

    /// The join signature of a label set: a 64-bit hash of the labels matching compares.
    fn signature(&self, labels: &Labels) -> u64 {
        hash_labels_where(labels, |name| self.keeps(name))
    }

    /// The labels matching compares, as a label set (for errors and fill values).
    fn matched_labels(&self, labels: &Labels) -> Labels {
        labels_where(labels, |name| self.keeps(name))
    }
}

pub(crate) fn eval_binary(
    ev: &mut Evaluator<'_>,
    b: &BinaryExpr,
    ts: i64,
) -> Result<Value, QueryError> {
    let lhs = ev.eval(&b.lhs, ts)?;
    let rhs = ev.eval(&b.rhs, ts)?;
    let op = b.op.id();
    let return_bool = b.return_bool();
    match (lhs, rhs) {
        (Value::Scalar(l), Value::Scalar(r)) => Ok(Value::Scalar(scalar_binop(op, l, r))),
        (Value::Vector(l), Value::Scalar(r)) => Ok(Value::Vector(vector_scalar(
            ev,
            op,
            l,
            r,
            false,
            return_bool,
            ts,
        ))),
        (Value::Scalar(l), Value::Vector(r)) => Ok(Value::Vector(vector_scalar(
            ev,
            op,
            r,
            l,
            true,
            return_bool,
            ts,
        ))),
        (Value::Vector(l), Value::Vector(r)) => {
            let matching = Matching::of(b);
            let out = match op {
                T_LAND => vector_and(&matching, l, r),
                T_LOR => vector_or(&matching, l, r),
                T_LUNLESS => vector_unless(&matching, l, r),
                _ => vector_binop(ev, op, &matching, return_bool, l, r, ts)?,
            };
            if !ev.delayed_name_removal() {
                ev.check_unique(b as *const BinaryExpr as usize, &out)?;
            }
            Ok(Value::Vector(out))
        }
        (l, Value::Vector(_)) | (Value::Vector(_), l) => {
            Err(type_error("scalar or instant vector", &l))
        }
        (l, _) => Err(type_error("scalar or instant vector", &l)),
    }
}

fn as_float(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Go's `math.Mod`: the remainder takes the sign of the dividend (as Rust's `%`).
fn scalar_binop(op: TokenId, l: f64, r: f64) -> f64 {
    match op {
        T_EQLC => as_float(l == r),
        T_NEQ => as_float(l != r),
        T_GTR => as_float(l > r),
        T_LSS => as_float(l < r),
        T_GTE => as_float(l >= r),
        T_LTE => as_float(l <= r),
        _ => arithmetic(op, l, r),
    }
}

fn arithmetic(op: TokenId, l: f64, r: f64) -> f64 {
    match op {
        T_ADD => l + r,
        T_SUB => l - r,
        T_MUL => l * r,
        T_DIV => l / r,
        T_POW => l.powf(r),
        T_MOD => l % r,
        T_ATAN2 => l.atan2(r),
        _ => f64::NAN,
    }
}

fn is_comparison(op: TokenId) -> bool {
    matches!(op, T_EQLC | T_NEQ | T_GTR | T_LSS | T_GTE | T_LTE)
}

/// Operators whose result no longer has the meaning of the input metric.
fn changes_metric_schema(op: TokenId) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_POW | T_MOD | T_ATAN2)
}

/// One element-wise operation: the value and whether a comparison keeps the element.
fn elem_binop(op: TokenId, l: f64, r: f64) -> (f64, bool) {
    match op {
        T_EQLC => (l, l == r),
        T_NEQ => (l, l != r),
        T_GTR => (l, l > r),
        T_LSS => (l, l < r),
        T_GTE => (l, l >= r),
        T_LTE => (l, l <= r),
        _ => (arithmetic(op, l, r), true),
    }
}

/// Annotations binary operators raise over native histograms (all Prometheus infos
/// or warnings, in its wording).
#[derive(Default)]
struct Notes {
    infos: Vec<String>,
    warnings: Vec<String>,
}

impl Notes {
    fn record(self, ev: &mut Evaluator<'_>) {
        for info in self.infos {
            ev.annotations.info(info);
        }
        for warning in self.warnings {
            ev.annotations.warn(warning);
        }
    }
}

fn operator_text(op: TokenId) -> &'static str {
    match op {
        T_ADD => "+",
        T_SUB => "-",
        T_MUL => "*",
        T_DIV => "/",
        T_POW => "^",
        T_MOD => "%",
        T_ATAN2 => "atan2",
        T_EQLC => "==",
        T_NEQ => "!=",
        T_GTR => ">",
        T_LSS => "<",
        T_GTE => ">=",
        T_LTE => "<=",
        _ => "?",
    }
}

/// One operand of an element-wise operation: a float or a native histogram.
#[derive(Clone, Copy)]
struct Operand<'s> {
    v: f64,
    h: Option<&'s Arc<FloatHistogram>>,
}

impl<'s> Operand<'s> {
    fn of(s: &'s InstantSample) -> Self {
        Operand {
            v: s.v,
            h: s.h.as_ref(),
        }
    }

    fn kind(&self) -> &'static str {
        if self.h.is_some() {
            "histogram"
        } else {
            "float"
        }
    }
}

/// The result of an element-wise operation that involves a native histogram
/// (Prometheus's `vectorElemBinop`): value, histogram, whether a comparison keeps the
/// element, and an annotation. `Err`: the element is dropped, with the annotation.
type HistogramElem = Result<(f64, Option<Arc<FloatHistogram>>, bool, Option<Note>), Note>;

enum Note {
    Info(String),
    Warning(String),
}

impl Note {
    fn add_to(self, notes: &mut Notes) {
        match self {
            Note::Info(m) => notes.infos.push(m),
            Note::Warning(m) => notes.warnings.push(m),
        }
    }
}

fn histogram_elem_binop(op: TokenId, l: Operand<'_>, r: Operand<'_>) -> HistogramElem {
    let incompatible = || {
        Note::Info(format!(
            "PromQL info: incompatible sample types encountered for binary operator {}: {} {} {}",
            go_quote(operator_text(op)),
            l.kind(),
            operator_text(op),
            r.kind()
        ))
    };
    let scaled = |h: &FloatHistogram, f: &dyn Fn(&mut FloatHistogram)| {
        let mut h = h.clone();
        f(&mut h);
        h.compact(0);
        Some(Arc::new(h))
    };
    match (l.h, r.h) {
        (None, Some(h)) if op == T_MUL => Ok((0.0, scaled(h, &|h| h.mul(l.v)), true, None)),
        (Some(h), None) if op == T_MUL => Ok((0.0, scaled(h, &|h| h.mul(r.v)), true, None)),
        (Some(h), None) if op == T_DIV => Ok((0.0, scaled(h, &|h| h.div(r.v)), true, None)),
        (Some(a), Some(b)) if matches!(op, T_ADD | T_SUB) => {
            let mut sum = (**a).clone();
            let (combined, operation) = if op == T_ADD {
                (sum.add(b), HistogramOperation::Addition)
            } else {
                (sum.sub(b), HistogramOperation::Subtraction)
            };
            let combined = combined.map_err(|_| {
                Note::Warning(format!(
                    "PromQL warning: incompatible bucket layout encountered for binary operator {}",
                    operator_text(op)
                ))
            })?;
            if op == T_SUB {
                sum.counter_reset_hint = CounterResetHint::Gauge;
            }
            sum.compact(0);
            let mut note = None;
            for a in HistogramAnnotation::from_combined(operation, combined) {
                if matches!(a, HistogramAnnotation::CounterResetCollision { .. }) {
                    // Prometheus drops the element with this warning.
                    return Err(Note::Warning(a.message()));
                }
                note = Some(Note::Info(a.message()));
            }
            Ok((0.0, Some(Arc::new(sum)), true, note))
        }
        (Some(a), Some(b)) if op == T_EQLC => Ok((0.0, Some(a.clone()), a.equals(b), None)),
        (Some(a), Some(b)) if op == T_NEQ => Ok((0.0, Some(a.clone()), !a.equals(b), None)),
        _ => Err(incompatible()),
    }
}

fn vector_scalar(
    ev: &mut Evaluator<'_>,
    op: TokenId,
    vector: Vec<InstantSample>,
    scalar: f64,
    scalar_on_left: bool,
    return_bool: bool,
    ts: i64,
) -> Vec<InstantSample> {
    let mut out = Vec::with_capacity(vector.len());
    let mut notes = Notes::default();
    for mut s in vector {
        if s.h.is_some() {
            let (sample, other) = (Operand::of(&s), Operand { v: scalar, h: None });
            let (l, r) = if scalar_on_left {
                (other, sample)
            } else {
                (sample, other)
            };
            // As Prometheus: an info drops the element, other annotations are not raised.
            // Comparisons with a histogram are never defined, so none keeps a value here.
            let (mut value, mut h, mut keep) = match histogram_elem_binop(op, l, r) {
                Ok((v, h, keep, _)) => (v, h, keep),
                Err(note) => {
                    note.add_to(&mut notes);
                    continue;
                }
            };
            if return_bool {
                (value, h) = (as_float(keep), None);
                keep = true;
            }
            if !keep {
                continue;
            }
            (s.v, s.h, s.t) = (value, h, ts);
            if changes_metric_schema(op) || return_bool {
                ev.drop_name(&mut s);
            }
            out.push(s);
            continue;
        }
        let (l, r) = if scalar_on_left {
            (scalar, s.v)
        } else {
            (s.v, scalar)
        };
        let (mut value, mut keep) = elem_binop(op, l, r);
        if is_comparison(op) {
            // A comparison filters the vector element and keeps its value.
            value = s.v;
        }
        if return_bool {
            value = as_float(keep);
            keep = true;
        }
        if !keep {
            continue;
        }
        s.v = value;
        s.t = ts;
        if changes_metric_schema(op) || return_bool {
            ev.drop_name(&mut s);
        }
        out.push(s);
    }
    notes.record(ev);
    out
}

fn signatures(matching: &Matching<'_>, v: &[InstantSample]) -> Vec<u64> {
    v.iter().map(|s| matching.signature(&s.labels)).collect()
}

fn vector_and(
    matching: &Matching<'_>,
    lhs: Vec<InstantSample>,
    rhs: Vec<InstantSample>,
) -> Vec<InstantSample> {
    if lhs.is_empty() || rhs.is_empty() {
        return Vec::new();
    }
    let right: HashSet<u64> = signatures(matching, &rhs).into_iter().collect();
    lhs.into_iter()
        .filter(|s| right.contains(&matching.signature(&s.labels)))
        .collect()
}

fn vector_or(
    matching: &Matching<'_>,
    mut lhs: Vec<InstantSample>,
    rhs: Vec<InstantSample>,
) -> Vec<InstantSample> {
    if lhs.is_empty() {
        return rhs;
    }
    if rhs.is_empty() {
        return lhs;
    }
    let left: HashSet<u64> = signatures(matching, &lhs).into_iter().collect();
    lhs.extend(
        rhs.into_iter()
            .filter(|s| !left.contains(&matching.signature(&s.labels))),
    );
    lhs
}

fn vector_unless(
    matching: &Matching<'_>,
    lhs: Vec<InstantSample>,
    rhs: Vec<InstantSample>,
) -> Vec<InstantSample> {
    if lhs.is_empty() || rhs.is_empty() {
        return lhs;
    }
    let right: HashSet<u64> = signatures(matching, &rhs).into_iter().collect();
    lhs.into_iter()
        .filter(|s| !right.contains(&matching.signature(&s.labels)))
        .collect()
}

/// Tracks which match groups produced results, to enforce cardinality rules.
enum MatchedGroups {
    OneToOne(HashSet<u64>),
    Grouped(HashMap<u64, HashSet<Labels>>),
}

impl MatchedGroups {
    fn was_matched(&self, sig: u64) -> bool {
        match self {
            MatchedGroups::OneToOne(set) => set.contains(&sig),
            MatchedGroups::Grouped(map) => map.get(&sig).is_some_and(|s| !s.is_empty()),
        }
    }

    fn record(&mut self, sig: u64, metric: &Labels) -> Result<(), QueryError> {
        match self {
            MatchedGroups::OneToOne(set) => {
                if !set.insert(sig) {
                    return Err(QueryError::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                    ));
                }
            }
            MatchedGroups::Grouped(map) => {
                if !map.entry(sig).or_default().insert(metric.clone()) {
                    return Err(QueryError::Execution(
                        "multiple matches for labels: grouping labels must ensure unique matches"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Prometheus's text form of a label set, every label inside the braces.
pub(crate) fn labels_string(labels: &Labels) -> String {
    let parts: Vec<String> = labels
        .iter()
        .map(|l| format!("{}={:?}", l.name, l.value))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

struct BinopContext<'m, 'a> {
    op: TokenId,
    matching: &'m Matching<'a>,
    return_bool: bool,
    swapped: bool,
    drop_metric_name: bool,
    ts: i64,
}

impl BinopContext<'_, '_> {
    /// Labels of a result: the "many" side's, minus what matching says, plus the
    /// `group_x` labels taken from the "one" side.
    fn result_metric(&self, many: &Labels, one: &Labels) -> Labels {
        let mut out = many.clone();
        if self.drop_metric_name || changes_metric_schema(self.op) {
            remove_metric_identity(&mut out);
        }
        if matches!(self.matching.card, VectorMatchCardinality::OneToOne) {
            if self.matching.on {
                out.retain(|l| self.matching.labels.contains(&l.name.as_str()));
            } else {
                out.retain(|l| !self.matching.labels.contains(&l.name.as_str()));
            }
        }
        for name in self.matching.include() {
            match one.get(name) {
                Some(v) if !v.is_empty() => {
                    let v = v.to_string();
                    out.set(name, &v);
                }
                _ => out.remove(name),
            }
        }
        out
    }

    fn apply(
        &self,
        ls: &InstantSample,
        rs: &InstantSample,
        sig: u64,
        matched: &mut MatchedGroups,
        out: &mut Vec<InstantSample>,
        notes: &mut Notes,
    ) -> Result<(), QueryError> {
        let (l, r) = if self.swapped {
            (Operand::of(rs), Operand::of(ls))
        } else {
            (Operand::of(ls), Operand::of(rs))
        };
        let (mut value, mut h, keep) = if l.h.is_none() && r.h.is_none() {
            let (value, keep) = elem_binop(self.op, l.v, r.v);
            (value, None, keep)
        } else {
            match histogram_elem_binop(self.op, l, r) {
                Ok((value, h, keep, note)) => {
                    if let Some(note) = note {
                        note.add_to(notes);
                    }
                    (value, h, keep)
                }
                Err(note) => {
                    note.add_to(notes);
                    return Ok(());
                }
            }
        };
        if self.return_bool {
            value = as_float(keep);
            h = None;
        }
        let metric = self.result_metric(&ls.labels, &rs.labels);
        matched.record(sig, &metric)?;
        if !keep && !self.return_bool {
            return Ok(());
        }
        out.push(InstantSample {
            labels: metric,
            t: self.ts,
            v: value,
            h,
            drop_name: self.return_bool,
        });
        Ok(())
    }
}

fn fill_sample(matching: &Matching<'_>, other: &InstantSample, v: f64) -> InstantSample {
    InstantSample {
        labels: matching.matched_labels(&other.labels),
        t: other.t,
        v,
        h: None,
        drop_name: false,
    }
}

fn vector_binop(
    ev: &mut Evaluator<'_>,
    op: TokenId,
    matching: &Matching<'_>,
    return_bool: bool,
    lhs: Vec<InstantSample>,
    rhs: Vec<InstantSample>,
    ts: i64,
) -> Result<Vec<InstantSample>, QueryError> {
    let no_fill = matching.fill_lhs.is_none() && matching.fill_rhs.is_none();
    if (lhs.is_empty() && rhs.is_empty()) || ((lhs.is_empty() || rhs.is_empty()) && no_fill) {
        return Ok(Vec::new());
    }
    let swapped = matches!(matching.card, VectorMatchCardinality::OneToMany(_));
    let (many, one) = if swapped { (rhs, lhs) } else { (lhs, rhs) };
    // As in Prometheus, the fill values keep their sides even when group_right swaps
    // the operands: fill_right stands in for a missing "one"-side partner of the many side.
    let (fill_many, fill_one) = (matching.fill_lhs, matching.fill_rhs);

    let one_sigs = signatures(matching, &one);
    let mut one_by_sig: HashMap<u64, usize> = HashMap::with_capacity(one.len());
    for (i, sig) in one_sigs.iter().enumerate() {
        if let Some(&prev) = one_by_sig.get(sig) {
            return Err(duplicate_series_error(
                matching, swapped, &one[i], &one[prev],
            ));
        }
        one_by_sig.insert(*sig, i);
    }

    let ctx = BinopContext {
        op,
        matching,
        return_bool,
        swapped,
        drop_metric_name: !ev.delayed_name_removal() && return_bool,
        ts,
    };
    let mut matched = if matches!(matching.card, VectorMatchCardinality::OneToOne) {
        MatchedGroups::OneToOne(HashSet::new())
    } else {
        MatchedGroups::Grouped(HashMap::new())
    };
    let mut out = Vec::with_capacity(many.len());
    let mut notes = Notes::default();
    for ms in &many {
        let sig = matching.signature(&ms.labels);
        match one_by_sig.get(&sig) {
            Some(&i) => ctx.apply(ms, &one[i], sig, &mut matched, &mut out, &mut notes)?,
            None => {
                if let Some(fill) = fill_one {
                    let filled = fill_sample(matching, ms, fill);
                    ctx.apply(ms, &filled, sig, &mut matched, &mut out, &mut notes)?;
                }
            }
        }
    }
    if let Some(fill) = fill_many {
        for (os, sig) in one.iter().zip(&one_sigs) {
            if matched.was_matched(*sig) {
                continue;
            }
            let filled = fill_sample(matching, os, fill);
            ctx.apply(&filled, os, *sig, &mut matched, &mut out, &mut notes)?;
        }
    }
    notes.record(ev);
    Ok(out)
}

fn duplicate_series_error(
    matching: &Matching<'_>,
    swapped: bool,
    a: &InstantSample,
    b: &InstantSample,
) -> QueryError {
    let side = if swapped { "left" } else { "right" };
    let group = labels_string(&matching.matched_labels(&a.labels));
    let (mut d1, mut d2) = (labels_string(&a.labels), labels_string(&b.labels));
    if d1 > d2 {
        std::mem::swap(&mut d1, &mut d2);
    }
    QueryError::Execution(format!(
        "found duplicate series for the match group {group} on the {side} hand-side of the operation: [{d1}, {d2}];many-to-many matching not allowed: matching labels must be unique on one side"
    ))
}
