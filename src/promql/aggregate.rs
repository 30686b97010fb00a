//! Aggregation operators at one evaluation step: sum, avg, min, max, count, group,
//! stddev, stdvar, quantile, count_values, topk, bottomk, limitk and limit_ratio, each
//! with `by`/`without` grouping.
//!
//! Owns: grouping and the per-group arithmetic (Kahan sums, incremental means, Welford
//! variance), parameter validation and the warnings Prometheus raises for parameters.
//! Also the partial side of aggregation pushdown (ADR 0029): a share of the input
//! aggregated into per-group states (`PartialGroup`), states of several shares merged,
//! and a merged state finished into the group's value, by the same arithmetic.
//! Called by `eval` and `pushdown`; calls `functions::quantile` for the quantile rule and
//! `functions::gofmt` for numbers in warnings and `count_values` labels.

use std::cmp::Ordering;
use std::collections::HashMap;

use promql_parser::parser::token::TokenId;
use promql_parser::parser::token::{
    T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_GROUP, T_LIMITK, T_LIMIT_RATIO, T_MAX, T_MIN,
    T_QUANTILE, T_STDDEV, T_STDVAR, T_SUM, T_TOPK,
};
use promql_parser::parser::{AggregateExpr, LabelModifier};

use std::sync::Arc;

use crate::model::histogram::{CounterResetHint, FloatHistogram};
use crate::model::histogram_ops::{Combined, HistogramOpError};
use crate::model::{Labels, METRIC_NAME};
use crate::promql::histogram_fns::{histogram_text, HistogramAnnotation, HistogramOperation};

use super::eval::{hash_labels_where, labels_where, type_error, Evaluator, Value};
use super::functions;
use super::functions::gofmt::{go_f, go_g};
use super::functions::stats::kahan_inc;
use super::memo::{BuildWordHasher, LabelMemo};
use super::value::InstantSample;
use super::QueryError;

/// `by (...)` or `without (...)`.
struct Grouping<'a> {
    without: bool,
    labels: Vec<&'a str>,
}

impl<'a> Grouping<'a> {
    fn of(a: &'a AggregateExpr) -> Self {
        match &a.modifier {
            None => Grouping {
                without: false,
                labels: Vec::new(),
            },
            Some(LabelModifier::Include(l)) => Grouping {
                without: false,
                labels: l.labels.iter().map(String::as_str).collect(),
            },
            Some(LabelModifier::Exclude(l)) => Grouping {
                without: true,
                labels: l.labels.iter().map(String::as_str).collect(),
            },
        }
    }

    fn keeps(&self, name: &str) -> bool {
        if self.without {
            name != METRIC_NAME && !self.labels.contains(&name)
        } else {
            self.labels.contains(&name)
        }
    }

    /// A 64-bit hash of the grouping labels (Prometheus groups by such hashes too).
    fn key(&self, labels: &Labels) -> u64 {
        hash_labels_where(labels, |name| self.keeps(name))
    }

    fn group_labels(&self, labels: &Labels) -> Labels {
        labels_where(labels, |name| self.keeps(name))
    }
}

/// What one aggregation node derives from each series, kept for the whole query.
#[derive(Default)]
pub(crate) struct GroupingMemo {
    keys: LabelMemo<u64>,
    labels: LabelMemo<Labels>,
}

/// The group of each input sample, groups numbered in order of first appearance, and
/// each group's labels.
struct Groups {
    of: Vec<usize>,
    labels: Vec<Labels>,
}

/// Assigns each sample to its group. A series' group key and group labels are
/// computed once per query and aggregation node, not at every step.
fn assign_groups(
    ev: &mut Evaluator<'_>,
    a: &AggregateExpr,
    grouping: &Grouping<'_>,
    input: &[InstantSample],
) -> Groups {
    let memo = ev.grouping_memo(a as *const AggregateExpr as usize);
    let mut index: HashMap<u64, usize, BuildWordHasher> = HashMap::default();
    let mut groups = Groups {
        of: Vec::with_capacity(input.len()),
        labels: Vec::new(),
    };
    for s in input {
        let key = memo.keys.get_or_derive(&s.labels, |l| grouping.key(l));
        let group = *index.entry(key).or_insert_with(|| {
            let labels = memo
                .labels
                .get_or_derive(&s.labels, |l| grouping.group_labels(l));
            groups.labels.push(labels);
            groups.labels.len() - 1
        });
        groups.of.push(group);
    }
    groups
}

pub(crate) fn eval_aggregate(
    ev: &mut Evaluator<'_>,
    a: &AggregateExpr,
    ts: i64,
) -> Result<Value, QueryError> {
    let op = a.op.id();
    let grouping = Grouping::of(a);
    if op == T_COUNT_VALUES {
        let label = match a.param.as_deref().map(|p| ev.eval(p, ts)).transpose()? {
            Some(Value::String(s)) => s,
            Some(other) => return Err(type_error("string", &other)),
            None => {
                return Err(QueryError::BadData(
                    "count_values needs a label name".into(),
                ))
            }
        };
        let input = ev.eval_vector(&a.expr, ts)?;
        return count_values(&grouping, &label, input, ts).map(Value::Vector);
    }
    let param = match a.param.as_deref() {
        Some(p) => Some(ev.eval_scalar(p, ts)?),
        None => None,
    };
    let mut input = ev.eval_vector(&a.expr, ts)?;
    if input.iter().any(|s| s.h.is_some()) {
        if let Some(name) = ignores_histograms(op) {
            input.retain(|s| s.h.is_none());
            ev.annotations.info(format!(
                "PromQL info: ignored histogram in {name} aggregation"
            ));
        }
    }
    let groups = assign_groups(ev, a, &grouping, &input);
    let param = param.unwrap_or(f64::NAN);
    if matches!(op, T_SUM | T_AVG) && input.iter().any(|s| s.h.is_some()) {
        let out = sum_or_avg_with_histograms(ev, op, &groups, input, ts);
        ev.hold_samples(out.len())?;
        return Ok(Value::Vector(out));
    }
    let out = match op {
        T_TOPK | T_BOTTOMK | T_LIMITK => select_k(op, &groups, param, input, ts)?,
        T_LIMIT_RATIO => limit_ratio(ev, &groups, param, input, ts)?,
        _ => {
            if op == T_QUANTILE {
                warn_quantile(ev, param);
            }
            simple_aggregate(op, &groups, param, input, ts)?
        }
    };
    ev.hold_samples(out.len())?;
    Ok(Value::Vector(out))
}

/// The operators that leave native histograms out of their input (with an info), by
/// the name Prometheus's info gives them. count, group and limitk/limit_ratio take
/// them as they are; sum and avg add them up.
fn ignores_histograms(op: TokenId) -> Option<&'static str> {
    Some(match op {
        T_MIN => "min",
        T_MAX => "max",
        T_STDDEV => "stddev",
        T_STDVAR => "stdvar",
        T_QUANTILE => "quantile",
        T_TOPK => "topk",
        T_BOTTOMK => "bottomk",
        _ => return None,
    })
}

/// A group's native histograms summed (Kahan-compensated) or averaged, as Prometheus's
/// `aggregation` does: the mean by sums until a sum overflows, then incrementally.
#[derive(Default)]
pub(crate) struct HistogramGroup {
    sum: FloatHistogram,
    compensation: Option<FloatHistogram>,
    mean: Option<FloatHistogram>,
    count: f64,
    incompatible: bool,
    reset_seen: bool,
    not_reset_seen: bool,
}

impl HistogramGroup {
    pub(crate) fn first(h: &FloatHistogram) -> Self {
        let mut group = HistogramGroup {
            sum: h.clone(),
            count: 1.0,
            ..HistogramGroup::default()
        };
        group.note_hint(h);
        group
    }

    fn note_hint(&mut self, h: &FloatHistogram) {
        match h.counter_reset_hint {
            CounterResetHint::CounterReset => self.reset_seen = true,
            CounterResetHint::NotCounterReset => self.not_reset_seen = true,
            _ => {}
        }
    }

    /// Whether both a counter reset and a not-counter-reset hint were seen.
    pub(crate) fn counter_reset_collision(&self) -> bool {
        self.reset_seen && self.not_reset_seen
    }

    /// Adds `h` (for `T_SUM` or `T_AVG`); Err when the histograms cannot combine.
    pub(crate) fn add(
        &mut self,
        op: TokenId,
        h: &FloatHistogram,
    ) -> Result<Combined, HistogramOpError> {
        self.note_hint(h);
        if op == T_SUM {
            return self.sum.kahan_add(h, &mut self.compensation);
        }
        self.count += 1.0;
        if self.mean.is_none() {
            let mut sum = self.sum.clone();
            let mut compensation = self.compensation.clone();
            let combined = sum.kahan_add(h, &mut compensation)?;
            if !sum.has_overflow() {
                (self.sum, self.compensation) = (sum, compensation);
                return Ok(combined);
            }
            let mut mean = self.sum.clone();
            mean.div(self.count - 1.0);
            if let Some(c) = self.compensation.as_mut() {
                c.div(self.count - 1.0);
            }
            self.mean = Some(mean);
        }
        let q = (self.count - 1.0) / self.count;
        if let Some(c) = self.compensation.as_mut() {
            c.mul(q);
        }
        let mut to_add = h.clone();
        to_add.div(self.count);
        let mean = self.mean.get_or_insert_with(FloatHistogram::default);
        mean.mul(q);
        mean.kahan_add(&to_add, &mut self.compensation)
    }

    /// The sum or mean, compacted.
    pub(crate) fn finish(mut self, op: TokenId) -> FloatHistogram {
        let mut out = match (op, self.mean.take()) {
            (T_AVG, Some(mean)) => {
                let mut mean = mean;
                if let Some(c) = &self.compensation {
                    let _ = mean.add(c);
                }
                mean
            }
            (T_AVG, None) => {
                let mut sum = self.sum;
                sum.div(self.count);
                if let Some(mut c) = self.compensation {
                    c.div(self.count);
                    let _ = sum.add(&c);
                }
                sum
            }
            _ => {
                let mut sum = self.sum;
                if let Some(c) = &self.compensation {
                    let _ = sum.add(c);
                }
                sum
            }
        };
        out.compact(0);
        out
    }
}

/// `sum` or `avg` over an input holding native histograms: per group, floats as
/// usual, histograms added up; a group holding both kinds, or histograms that cannot be
/// combined, gives nothing, with Prometheus's warnings.
fn sum_or_avg_with_histograms(
    ev: &mut Evaluator<'_>,
    op: TokenId,
    assignment: &Groups,
    input: Vec<InstantSample>,
    ts: i64,
) -> Vec<InstantSample> {
    struct Both {
        floats: Option<Group>,
        histograms: Option<HistogramGroup>,
        drop_name: bool,
    }
    let mut groups: Vec<Option<Both>> = (0..assignment.labels.len()).map(|_| None).collect();
    let operation = HistogramOperation::Aggregation;
    for (s, &g) in input.iter().zip(&assignment.of) {
        let both = groups[g].get_or_insert(Both {
            floats: None,
            histograms: None,
            drop_name: false,
        });
        both.drop_name |= s.drop_name;
        match &s.h {
            None => match &mut both.floats {
                Some(f) => f.add(op, s.v),
                slot => *slot = Some(Group::first(op, s.v, Labels::empty(), false)),
            },
            Some(h) => match &mut both.histograms {
                Some(hg) if hg.incompatible => {}
                Some(hg) => match hg.add(op, h) {
                    Ok(combined) => {
                        for a in HistogramAnnotation::from_combined(operation, combined) {
                            // The collision warning is raised once per group below.
                            if !matches!(a, HistogramAnnotation::CounterResetCollision { .. }) {
                                a.record(&mut ev.annotations);
                            }
                        }
                    }
                    Err(_) => {
                        hg.incompatible = true;
                        HistogramAnnotation::MixedExponentialCustom {
                            metric_name: s.labels.metric_name().unwrap_or("").to_string(),
                        }
                        .record(&mut ev.annotations);
                    }
                },
                slot => *slot = Some(HistogramGroup::first(h)),
            },
        }
    }
    let mut out = Vec::new();
    for (g, both) in groups.into_iter().enumerate() {
        let Some(both) = both else { continue };
        let (v, h) = match (both.floats, both.histograms) {
            (Some(_), Some(_)) => {
                ev.annotations.warn(
                    "PromQL warning: encountered a mix of histograms and floats for aggregation",
                );
                continue;
            }
            (Some(f), None) => (f.finish(op, f64::NAN), None),
            (None, Some(hg)) if hg.incompatible => continue,
            (None, Some(hg)) => {
                if hg.counter_reset_collision() {
                    HistogramAnnotation::CounterResetCollision { operation }
                        .record(&mut ev.annotations);
                }
                (0.0, Some(Arc::new(hg.finish(op))))
            }
            (None, None) => continue,
        };
        out.push(InstantSample {
            labels: assignment.labels[g].clone(),
            t: ts,
            v,
            h,
            drop_name: both.drop_name,
        });
    }
    out
}

fn warn_quantile(ev: &mut Evaluator<'_>, q: f64) {
    if q.is_nan() || !(0.0..=1.0).contains(&q) {
        ev.annotations.warn(format!(
            "PromQL warning: quantile value should be between 0 and 1, got {}",
            go_g(q)
        ));
    }
}

/// Aggregation operators whose groups can be computed in shares and merged (ADR 0029).
pub(crate) const PUSHABLE_OPS: [TokenId; 6] = [T_SUM, T_COUNT, T_MIN, T_MAX, T_AVG, T_GROUP];

/// One group's aggregation state over a share of the input: what `Group` holds between
/// its inputs, without the label set (the caller keeps it) and without quantile's
/// values (not a pushable operator).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PartialGroup {
    pub value: f64,
    pub compensation: f64,
    pub mean: f64,
    pub count: f64,
    pub incremental_mean: bool,
    pub drop_name: bool,
}

impl PartialGroup {
    /// `g`'s state, with the fields `op` does not read zeroed (they cost nothing on
    /// the wire then).
    fn of(op: TokenId, g: Group) -> PartialGroup {
        PartialGroup {
            value: if op == T_COUNT { 0.0 } else { g.value },
            compensation: g.compensation,
            mean: if g.incremental_mean { g.mean } else { 0.0 },
            count: if matches!(op, T_AVG | T_COUNT) {
                g.count
            } else {
                0.0
            },
            incremental_mean: g.incremental_mean,
            drop_name: g.drop_name,
        }
    }

    /// Folds `other`, the state of the same group over another share, into this one:
    /// equal to aggregating both shares' inputs at once up to the order of float
    /// additions.
    pub(crate) fn merge(&mut self, op: TokenId, other: &PartialGroup) {
        self.drop_name |= other.drop_name;
        match op {
            T_SUM => {
                let (v, c) = kahan_inc(other.value, self.value, self.compensation);
                (self.value, self.compensation) = kahan_inc(other.compensation, v, c);
            }
            T_AVG => self.merge_mean(other),
            T_MAX if self.value < other.value || self.value.is_nan() => self.value = other.value,
            T_MIN if self.value > other.value || self.value.is_nan() => self.value = other.value,
            T_COUNT => self.count += other.count,
            _ => {}
        }
    }

    /// avg: sums while both shares summed and their total stays finite (as `Group`
    /// does), else the count-weighted mean of the shares' means.
    fn merge_mean(&mut self, other: &PartialGroup) {
        let total = self.count + other.count;
        if !self.incremental_mean && !other.incremental_mean {
            let (v, c) = kahan_inc(other.value, self.value, self.compensation);
            let (v, c) = kahan_inc(other.compensation, v, c);
            if !v.is_infinite() {
                (self.value, self.compensation, self.count) = (v, c, total);
                return;
            }
        }
        let (mine, theirs) = (self.mean_so_far(), other.mean_so_far());
        self.mean = mine * (self.count / total) + theirs * (other.count / total);
        self.compensation = 0.0;
        self.incremental_mean = true;
        self.count = total;
    }

    fn mean_so_far(&self) -> f64 {
        if self.incremental_mean {
            self.mean + self.compensation
        } else {
            self.value / self.count + self.compensation / self.count
        }
    }

    /// The group's value, as `eval_aggregate` would give it.
    pub(crate) fn finish(&self, op: TokenId) -> f64 {
        let group = Group {
            value: self.value,
            compensation: self.compensation,
            mean: self.mean,
            count: self.count,
            incremental_mean: self.incremental_mean,
            ..Group::default()
        };
        group.finish(op, f64::NAN)
    }
}

/// The aggregation `a` (a pushable operator, no parameter) of `input` as one state per
/// group, with the group's labels, in order of first appearance.
pub(crate) fn partial_groups(
    ev: &mut Evaluator<'_>,
    a: &AggregateExpr,
    input: Vec<InstantSample>,
) -> Vec<(Labels, PartialGroup)> {
    let op = a.op.id();
    let grouping = Grouping::of(a);
    let assignment = assign_groups(ev, a, &grouping, &input);
    fold_groups(op, &assignment, &input)
        .into_iter()
        .flatten()
        .map(|mut g| (std::mem::take(&mut g.labels), PartialGroup::of(op, g)))
        .collect()
}

#[derive(Default)]
struct Group {
    value: f64,
    compensation: f64,
    mean: f64,
    count: f64,
    incremental_mean: bool,
    values: Vec<f64>,
    drop_name: bool,
    labels: Labels,
}

impl Group {
    fn first(op: TokenId, v: f64, labels: Labels, drop_name: bool) -> Self {
        let value = match op {
            T_GROUP => 1.0,
            T_STDDEV | T_STDVAR if v.is_nan() || v.is_infinite() => f64::NAN,
            T_STDDEV | T_STDVAR => 0.0,
            _ => v,
        };
        Group {
            value,
            mean: v,
            count: 1.0,
            values: if op == T_QUANTILE {
                vec![v]
            } else {
                Vec::new()
            },
            drop_name,
            labels,
            ..Group::default()
        }
    }

    fn add(&mut self, op: TokenId, v: f64) {
        match op {
            T_SUM => (self.value, self.compensation) = kahan_inc(v, self.value, self.compensation),
            T_AVG => self.add_to_mean(v),
            T_MAX if self.value < v || self.value.is_nan() => self.value = v,
            T_MIN if self.value > v || self.value.is_nan() => self.value = v,
            T_COUNT => self.count += 1.0,
            T_STDDEV | T_STDVAR => {
                self.count += 1.0;
                let delta = v - self.mean;
                self.mean += delta / self.count;
                self.value += delta * (v - self.mean);
            }
            T_QUANTILE => self.values.push(v),
            _ => {}
        }
    }

    /// Sums while the sum stays finite, then switches to an incremental mean.
    fn add_to_mean(&mut self, v: f64) {
        self.count += 1.0;
        if !self.incremental_mean {
            let (sum, c) = kahan_inc(v, self.value, self.compensation);
            if !sum.is_infinite() {
                (self.value, self.compensation) = (sum, c);
                return;
            }
            self.incremental_mean = true;
            self.mean = self.value / (self.count - 1.0);
            self.compensation /= self.count - 1.0;
        }
        let q = (self.count - 1.0) / self.count;
        (self.mean, self.compensation) =
            kahan_inc(v / self.count, q * self.mean, q * self.compensation);
    }

    fn finish(mut self, op: TokenId, param: f64) -> f64 {
        match op {
            T_SUM => self.value + self.compensation,
            T_AVG if self.incremental_mean => self.mean + self.compensation,
            T_AVG => self.value / self.count + self.compensation / self.count,
            T_COUNT => self.count,
            T_STDVAR => self.value / self.count,
            T_STDDEV => (self.value / self.count).sqrt(),
            T_QUANTILE => functions::quantile(param, &mut self.values),
            _ => self.value,
        }
    }
}

/// Each group's state over `input`, by group number (`None`: no input fell in it).
fn fold_groups(op: TokenId, assignment: &Groups, input: &[InstantSample]) -> Vec<Option<Group>> {
    let mut groups: Vec<Option<Group>> = (0..assignment.labels.len()).map(|_| None).collect();
    for (s, &g) in input.iter().zip(&assignment.of) {
        match &mut groups[g] {
            Some(group) => {
                group.drop_name |= s.drop_name;
                group.add(op, s.v);
            }
            slot => {
                *slot = Some(Group::first(
                    op,
                    s.v,
                    assignment.labels[g].clone(),
                    s.drop_name,
                ))
            }
        }
    }
    groups
}

fn simple_aggregate(
    op: TokenId,
    assignment: &Groups,
    param: f64,
    input: Vec<InstantSample>,
    ts: i64,
) -> Result<Vec<InstantSample>, QueryError> {
    Ok(fold_groups(op, assignment, &input)
        .into_iter()
        .flatten()
        .map(|mut g| {
            let labels = std::mem::take(&mut g.labels);
            let drop_name = g.drop_name;
            InstantSample {
                labels,
                t: ts,
                v: g.finish(op, param),
                h: None,
                drop_name,
            }
        })
        .collect())
}

fn count_values(
    grouping: &Grouping<'_>,
    label: &str,
    input: Vec<InstantSample>,
    ts: i64,
) -> Result<Vec<InstantSample>, QueryError> {
    if label.is_empty() {
        return Err(QueryError::Execution(format!(
            "invalid label name {label:?}"
        )));
    }
    let by_value = Grouping {
        without: grouping.without,
        labels: if grouping.without {
            grouping.labels.clone()
        } else {
            grouping.labels.iter().copied().chain([label]).collect()
        },
    };
    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut out: Vec<InstantSample> = Vec::new();
    for s in input {
        let mut labels = s.labels;
        let value = match &s.h {
            Some(h) => histogram_text(h),
            None => go_f(s.v),
        };
        labels.set(label, &value);
        let key = by_value.key(&labels);
        match index.get(&key) {
            Some(&i) => out[i].v += 1.0,
            None => {
                index.insert(key, out.len());
                out.push(InstantSample {
                    labels: by_value.group_labels(&labels),
                    t: ts,
                    v: 1.0,
                    h: None,
                    drop_name: false,
                });
            }
        }
    }
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

/// NaN sorts below every number, as in Prometheus's value heaps.
fn value_less(a: f64, b: f64) -> bool {
    if a.is_nan() {
        return !b.is_nan();
    }
    a < b
}

fn check_k(k: f64) -> Result<(), QueryError> {
    if k.is_nan() {
        return Err(QueryError::Execution("Parameter value is NaN".into()));
    }
    if k <= i64::MIN as f64 {
        return Err(QueryError::Execution(format!(
            "Scalar value {} underflows int64",
            go_g(k)
        )));
    }
    if k >= i64::MAX as f64 {
        return Err(QueryError::Execution(format!(
            "Scalar value {} overflows int64",
            go_g(k)
        )));
    }
    Ok(())
}

/// topk, bottomk and limitk: at most k samples per group.
fn select_k(
    op: TokenId,
    assignment: &Groups,
    k: f64,
    input: Vec<InstantSample>,
    ts: i64,
) -> Result<Vec<InstantSample>, QueryError> {
    if k < 1.0 {
        return Ok(Vec::new());
    }
    check_k(k)?;
    let k = (k as i64).min(input.len() as i64).max(0) as usize;
    if k == 0 {
        return Ok(Vec::new());
    }
    let mut groups: Vec<Vec<InstantSample>> =
        (0..assignment.labels.len()).map(|_| Vec::new()).collect();
    for (s, &g) in input.into_iter().zip(&assignment.of) {
        let group = &mut groups[g];
        if group.len() < k {
            group.push(s);
            continue;
        }
        if op == T_LIMITK {
            continue;
        }
        // Replace the current worst element when the new one is strictly better.
        let worst = worst_index(op, group);
        let w = group[worst].v;
        let better = if op == T_TOPK {
            value_less(w, s.v)
        } else {
            !s.v.is_nan() && (w.is_nan() || s.v < w)
        };
        if better {
            group[worst] = s;
        }
    }
    let mut out = Vec::new();
    for mut group in groups {
        match op {
            T_TOPK => group.sort_by(|a, b| rank_desc(a.v, b.v)),
            T_BOTTOMK => group.sort_by(|a, b| rank_asc(a.v, b.v)),
            _ => {}
        }
        for mut s in group {
            s.t = ts;
            out.push(s);
        }
    }
    Ok(out)
}

/// Index of the element topk/bottomk would evict next.
fn worst_index(op: TokenId, group: &[InstantSample]) -> usize {
    let mut worst = 0;
    for (i, s) in group.iter().enumerate().skip(1) {
        let w = group[worst].v;
        let is_worse = if op == T_TOPK {
            value_less(s.v, w)
        } else {
            // For bottomk the largest value is evicted first; NaN counts as largest.
            (s.v.is_nan() && !w.is_nan()) || (!w.is_nan() && s.v > w)
        };
        if is_worse {
            worst = i;
        }
    }
    worst
}

/// topk's order: larger values first, NaN last.
fn rank_desc(a: f64, b: f64) -> Ordering {
    nan_last(a, b, || b.partial_cmp(&a).unwrap_or(Ordering::Equal))
}

/// bottomk's order: smaller values first, NaN last.
fn rank_asc(a: f64, b: f64) -> Ordering {
    nan_last(a, b, || a.partial_cmp(&b).unwrap_or(Ordering::Equal))
}

/// Puts NaN after every number (in both topk and bottomk); `by_value` orders numbers.
fn nan_last(a: f64, b: f64, by_value: impl FnOnce() -> Ordering) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => by_value(),
    }
}

/// limit_ratio: a deterministic, label-hash based sample of each group.
fn limit_ratio(
    ev: &mut Evaluator<'_>,
    assignment: &Groups,
    ratio: f64,
    input: Vec<InstantSample>,
    ts: i64,
) -> Result<Vec<InstantSample>, QueryError> {
    if ratio == 0.0 {
        return Ok(Vec::new());
    }
    if ratio.is_nan() {
        return Err(QueryError::Execution("Ratio value is NaN".into()));
    }
    if ratio > 1.0 {
        ev.annotations.warn(format!(
            "PromQL warning: ratio value should be between -1 and 1, got {}, capping to 1",
            go_g(ratio)
        ));
    }
    if ratio < -1.0 {
        ev.annotations.warn(format!(
            "PromQL warning: ratio value should be between -1 and 1, got {}, capping to -1",
            go_g(ratio)
        ));
    }
    let r = ratio.clamp(-1.0, 1.0);
    let mut groups: Vec<Vec<InstantSample>> =
        (0..assignment.labels.len()).map(|_| Vec::new()).collect();
    for (s, &g) in input.into_iter().zip(&assignment.of) {
        let offset = s.labels.stable_hash() as f64 / u64::MAX as f64;
        if (r >= 0.0 && offset < r) || (r < 0.0 && offset >= 1.0 + r) {
            groups[g].push(s);
        }
    }
    Ok(groups
        .into_iter()
        .flatten()
        .map(|mut s| {
            s.t = ts;
            s
        })
        .collect())
}
