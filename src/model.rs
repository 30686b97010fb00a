//! The data model every box shares: labels, label sets, samples and label matchers.
//!
//! Owns: the in-memory representation of a series identity (`Labels` of `Label`s whose
//! names and values are shared `LabelStr`s, interned by `symbols`), a float sample,
//! `Matcher` with Prometheus's semantics (fully anchored regexes; a missing label
//! matches as the empty string), and the label-set hashes' shared mixer. Native
//! histograms and their validation live in `histogram`. Calls nothing else in the crate.

pub mod histogram;
pub mod histogram_ops;
pub mod label_hash;
pub mod symbols;

use std::fmt;
use std::sync::Arc;

/// SplitMix64's finalizer: spreads every input bit over all output bits. Placement's
/// replica key (pinned, ADR 0004) and the head's in-memory label hash finish with it.
pub fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The label that carries the metric name.
pub const METRIC_NAME: &str = "__name__";

/// Most labels one series may have. Ingest refuses more, and the node-to-node series
/// transfers (anti-entropy) accept no more, so every stored series can be repaired.
pub const MAX_LABELS_PER_SERIES: usize = 256;
/// Most bytes of label names and values one series may have (same reason).
pub const MAX_LABEL_BYTES_PER_SERIES: usize = 16 << 10;

/// The bit pattern Prometheus uses for a staleness marker (a special NaN).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Returns true when `v` is exactly Prometheus's staleness marker.
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// The staleness marker value.
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// A reserved NaN that never reaches disk: in a write batch it asks the owner of the
/// series to store 0 at that timestamp only if the series holds nothing at or after it
/// (the zero sample of a created or start timestamp, ADR 0027). Only the remote-write
/// 2.0 decoder puts it into a batch; the client-facing decoders turn the same bits sent
/// by a client into an ordinary NaN (`plain_value`), so a client cannot forge it. It
/// travels between nodes inside the internal write, whose floats keep their bits.
pub const CREATED_ZERO_BITS: u64 = 0x7ff0_0000_0000_0003;

/// Returns true when `v` is the created-timestamp zero request, not a value.
pub fn is_created_zero(v: f64) -> bool {
    v.to_bits() == CREATED_ZERO_BITS
}

/// The created-timestamp zero request (see `CREATED_ZERO_BITS`).
pub fn created_zero() -> f64 {
    f64::from_bits(CREATED_ZERO_BITS)
}

/// A client's value as it may be stored: the reserved `CREATED_ZERO_BITS` become
/// Prometheus's ordinary NaN (`0x7ff8_0000_0000_0001`); every other value keeps its bits.
pub fn plain_value(v: f64) -> f64 {
    if is_created_zero(v) {
        f64::from_bits(0x7ff8_0000_0000_0001)
    } else {
        v
    }
}

/// A label name or value: immutable text shared by reference count. The head interns
/// these (one copy of each distinct name and value) and the remote-write label-set cache
/// builds its label sets from the head's copies (ADR 0025, amended), so a label set
/// costs two pointers per label instead of two strings. Compares, orders and hashes as
/// its text.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelStr(Arc<str>);

impl LabelStr {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text, for an interner that keeps this very copy.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl Default for LabelStr {
    fn default() -> Self {
        LabelStr(Arc::from(""))
    }
}

impl std::ops::Deref for LabelStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for LabelStr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for LabelStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LabelStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl fmt::Debug for LabelStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<Arc<str>> for LabelStr {
    fn from(s: Arc<str>) -> Self {
        LabelStr(s)
    }
}

impl From<&Arc<str>> for LabelStr {
    fn from(s: &Arc<str>) -> Self {
        LabelStr(s.clone())
    }
}

impl From<String> for LabelStr {
    fn from(s: String) -> Self {
        LabelStr(Arc::from(s))
    }
}

impl From<&String> for LabelStr {
    fn from(s: &String) -> Self {
        LabelStr(Arc::from(s.as_str()))
    }
}

impl From<&str> for LabelStr {
    fn from(s: &str) -> Self {
        LabelStr(Arc::from(s))
    }
}

impl From<std::borrow::Cow<'_, str>> for LabelStr {
    fn from(s: std::borrow::Cow<'_, str>) -> Self {
        LabelStr(Arc::from(s))
    }
}

impl From<LabelStr> for String {
    fn from(s: LabelStr) -> Self {
        s.0.as_ref().to_owned()
    }
}

impl From<&LabelStr> for String {
    fn from(s: &LabelStr) -> Self {
        s.0.as_ref().to_owned()
    }
}

impl PartialEq<str> for LabelStr {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for LabelStr {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for LabelStr {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<LabelStr> for str {
    fn eq(&self, other: &LabelStr) -> bool {
        *self == *other.0
    }
}

impl PartialEq<LabelStr> for &str {
    fn eq(&self, other: &LabelStr) -> bool {
        **self == *other.0
    }
}

impl PartialEq<LabelStr> for String {
    fn eq(&self, other: &LabelStr) -> bool {
        **self == *other.0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    pub name: LabelStr,
    pub value: LabelStr,
}

impl Label {
    pub fn new(name: impl Into<LabelStr>, value: impl Into<LabelStr>) -> Self {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A label set sorted by name with unique names: the identity of a series.
/// Ordering compares label by label (name, then value), as Prometheus's `labels.Compare`.
///
/// Shared behind an `Arc`: a series' labels are copied into every sample of every step
/// of a query, so a clone must be a reference-count increment, not an allocation per
/// label. Changing a label set copies it first (copy on write).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Arc<Vec<Label>>);

impl Labels {
    /// Builds a label set from pairs, sorting by name. Later duplicates of a name win;
    /// callers that must reject duplicates validate before building.
    pub fn from_pairs<N: Into<LabelStr>, V: Into<LabelStr>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        let mut labels: Vec<Label> = pairs.into_iter().map(|(n, v)| Label::new(n, v)).collect();
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        labels.dedup_by(|later, earlier| {
            if later.name == earlier.name {
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        Labels(Arc::new(labels))
    }

    /// Wraps labels that the caller guarantees are sorted by name and unique.
    pub fn from_sorted(labels: Vec<Label>) -> Self {
        debug_assert!(labels.windows(2).all(|w| w[0].name < w[1].name));
        Labels(Arc::new(labels))
    }

    pub fn empty() -> Self {
        Labels::default()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].value.as_str())
    }

    pub fn metric_name(&self) -> Option<&str> {
        // `__name__` sorts before every name that starts with a lower-case letter or
        // `__[o-z]`, so it is nearly always first: check there before searching.
        match self.0.first() {
            Some(l) if l.name == METRIC_NAME => Some(l.value.as_str()),
            _ => self.get(METRIC_NAME),
        }
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[Label] {
        &self.0
    }

    /// The address of the shared storage: equal for clones of one label set, so a
    /// per-query memo can key on it (while it holds a clone, the address is not reused).
    pub fn identity(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// Whether other clones of this label set exist (changing it would copy it first).
    pub fn is_shared(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }

    pub fn into_vec(self) -> Vec<Label> {
        Arc::try_unwrap(self.0).unwrap_or_else(|shared| (*shared).clone())
    }

    /// Sets (or replaces) one label; an empty value removes it, as in Prometheus.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Ok(i) if value.is_empty() => {
                Arc::make_mut(&mut self.0).remove(i);
            }
            Ok(i) if self.0[i].value == value => {}
            Ok(i) => Arc::make_mut(&mut self.0)[i].value = value.into(),
            Err(_) if value.is_empty() => {}
            Err(i) => Arc::make_mut(&mut self.0).insert(i, Label::new(name, value)),
        }
    }

    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.0.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Arc::make_mut(&mut self.0).remove(i);
        }
    }

    /// Keeps only the labels whose names satisfy `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&Label) -> bool) {
        if !self.0.iter().all(&mut keep) {
            Arc::make_mut(&mut self.0).retain(|l| keep(l));
        }
    }

    /// A stable 64-bit hash of the label set (FNV-1a over name, 0xff, value, 0xff ...).
    /// Stable across processes and versions: usable as an on-disk or on-wire key.
    pub fn stable_hash(&self) -> u64 {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h = OFFSET;
        for l in self.0.iter() {
            for b in l
                .name
                .bytes()
                .chain([0xff])
                .chain(l.value.bytes())
                .chain([0xff])
            {
                h ^= u64::from(b);
                h = h.wrapping_mul(PRIME);
            }
        }
        h
    }
}

impl fmt::Display for Labels {
    /// Prometheus's text form: `name{a="b", c="d"}`, or `{a="b"}` without a name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = self.metric_name() {
            f.write_str(name)?;
        }
        f.write_str("{")?;
        let mut first = true;
        for l in self.0.iter().filter(|l| l.name != METRIC_NAME) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{}={:?}", l.name, l.value)?;
        }
        f.write_str("}")
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a Label;
    type IntoIter = std::slice::Iter<'a, Label>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One float sample: milliseconds since the Unix epoch and a value (NaN bit patterns kept).
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub t: i64,
    pub v: f64,
}

impl Sample {
    pub fn new(t: i64, v: f64) -> Self {
        Sample { t, v }
    }
}

impl PartialEq for Sample {
    /// Bit-exact comparison, so NaN equals the same NaN and stale markers are distinct.
    fn eq(&self, other: &Self) -> bool {
        self.t == other.t && self.v.to_bits() == other.v.to_bits()
    }
}

/// The conflict rule (ADR 0011): which of two values stored for one series and timestamp
/// is kept. A real value beats a staleness marker; otherwise the larger IEEE-754 bit
/// pattern (read as `u64`) wins. It is a total order on bit patterns, so every replica
/// and every merge keeps the same value whatever order the values arrived in.
pub fn conflict_winner(a: f64, b: f64) -> f64 {
    /// The rank the rule compares: (not a staleness marker, bit pattern).
    fn rank(v: f64) -> (bool, u64) {
        (!is_stale_nan(v), v.to_bits())
    }
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// Merges two time-sorted sample lists; at equal timestamps the value chosen by
/// `conflict_winner` is kept, so the result does not depend on which list is `a`.
pub fn merge_sorted_samples(a: Vec<Sample>, b: Vec<Sample>) -> Vec<Sample> {
    if a == b {
        // Replicas and overlapping blocks usually hold the very same samples.
        return a;
    }
    if b.is_empty() {
        return a;
    }
    if a.is_empty() {
        return b;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].t.cmp(&b[j].t) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(Sample::new(a[i].t, conflict_winner(a[i].v, b[j].v)));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// A series with its samples in time order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// A series with its native histogram samples in time order (the TSDB keeps them
/// apart from float samples; a series may hold both, at different times).
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSeries {
    pub labels: Labels,
    pub samples: Vec<histogram::HistogramSample>,
}

/// An exemplar: one traced observation (labels such as `trace_id`) of a series.
#[derive(Clone, Debug, PartialEq)]
pub struct Exemplar {
    pub labels: Labels,
    pub value: f64,
    pub t: i64,
}

/// Exemplars of one series.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesExemplars {
    pub series: Labels,
    pub exemplars: Vec<Exemplar>,
}

/// Most characters (Unicode scalar values) of an exemplar's label names and values
/// together, as Prometheus's `exemplar.ExemplarMaxLabelSetLength`.
pub const MAX_EXEMPLAR_LABEL_CHARS: usize = 128;

/// Metric metadata carried by remote write (type, help, unit) for one metric family.
/// Ordered by family, then type, help and unit: the order the metadata API lists them in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetricMetadata {
    pub metric_family: String,
    pub metric_type: String,
    pub help: String,
    pub unit: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatchOp {
    Equal,
    NotEqual,
    RegexMatch,
    RegexNoMatch,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::RegexMatch => "=~",
            MatchOp::RegexNoMatch => "!~",
        }
    }
}

/// A label matcher. Regexes are anchored at both ends, as in Prometheus; a label that a
/// series lacks is matched as the empty string.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<regex::Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl Matcher {
    pub fn new(
        op: MatchOp,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, regex::Error> {
        let value = value.into();
        let regex = match op {
            MatchOp::RegexMatch | MatchOp::RegexNoMatch => {
                Some(regex::Regex::new(&format!("^(?s:{value})$"))?)
            }
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Matcher {
            name: name.into(),
            op,
            value,
            regex,
        })
    }

    /// Shorthand for an equality matcher, which cannot fail.
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Matcher {
            name: name.into(),
            op: MatchOp::Equal,
            value: value.into(),
            regex: None,
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => value == self.value,
            (MatchOp::NotEqual, _) => value != self.value,
            (MatchOp::RegexMatch, Some(re)) => re.is_match(value),
            (MatchOp::RegexNoMatch, Some(re)) => !re.is_match(value),
            (_, None) => unreachable!("regex matchers are built with their regex"),
        }
    }

    /// Whether a series with these labels satisfies the matcher (absent label = "").
    pub fn matches_labels(&self, labels: &Labels) -> bool {
        self.matches(labels.get(&self.name).unwrap_or(""))
    }

    /// True when the matcher also matches series that lack the label entirely.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.as_str(), self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_name_found_when_not_first() {
        let l = Labels::from_pairs([("Zone", "eu"), ("__a", "1"), ("__name__", "up")]);
        assert_eq!(l.metric_name(), Some("up"));
        assert_eq!(Labels::from_pairs([("a", "1")]).metric_name(), None);
    }

    #[test]
    fn labels_sort_and_lookup() {
        let l = Labels::from_pairs([("job", "api"), ("__name__", "up"), ("instance", "a:1")]);
        assert_eq!(l.metric_name(), Some("up"));
        assert_eq!(l.get("job"), Some("api"));
        assert_eq!(l.get("nope"), None);
        assert_eq!(l.to_string(), r#"up{instance="a:1", job="api"}"#);
    }

    #[test]
    fn regex_matchers_are_anchored() {
        let m = Matcher::new(MatchOp::RegexMatch, "job", "ap").unwrap();
        assert!(!m.matches("api"));
        let m = Matcher::new(MatchOp::RegexMatch, "job", "ap.*").unwrap();
        assert!(m.matches("api"));
        let m = Matcher::new(MatchOp::RegexNoMatch, "job", "a|b").unwrap();
        assert!(m.matches("ab"));
        assert!(!m.matches("a"));
    }

    #[test]
    fn missing_label_matches_as_empty() {
        let l = Labels::from_pairs([("__name__", "up")]);
        assert!(Matcher::equal("job", "").matches_labels(&l));
        assert!(!Matcher::new(MatchOp::NotEqual, "job", "")
            .unwrap()
            .matches_labels(&l));
    }

    #[test]
    fn stable_hash_is_pinned() {
        let l = Labels::from_pairs([("__name__", "up"), ("job", "api")]);
        assert_eq!(l.stable_hash(), l.clone().stable_hash());
        assert_ne!(
            l.stable_hash(),
            Labels::from_pairs([("__name__", "up")]).stable_hash()
        );
    }

    #[test]
    fn stale_marker_is_bit_exact() {
        assert!(is_stale_nan(stale_nan()));
        assert!(!is_stale_nan(f64::NAN));
        assert_ne!(Sample::new(1, stale_nan()), Sample::new(1, f64::NAN));
    }

    #[test]
    fn conflict_rule_is_a_total_order_independent_of_arrival() {
        let values = [
            0.0,
            -0.0,
            1.0,
            2.0,
            -1.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::from_bits(0x7ff8_0000_0000_0001), // Prometheus's NaN
            f64::from_bits(u64::MAX),
            stale_nan(),
        ];
        for &a in &values {
            for &b in &values {
                let ab = conflict_winner(a, b).to_bits();
                assert_eq!(ab, conflict_winner(b, a).to_bits(), "{a} vs {b}");
                assert!(ab == a.to_bits() || ab == b.to_bits());
                for &c in &values {
                    let left = conflict_winner(conflict_winner(a, b), c).to_bits();
                    let right = conflict_winner(a, conflict_winner(b, c)).to_bits();
                    assert_eq!(left, right, "associative for {a}, {b}, {c}");
                }
            }
        }
        // Positive values: the larger wins; a negative value's sign bit outranks them.
        assert_eq!(conflict_winner(1.0, 2.0), 2.0);
        assert_eq!(conflict_winner(2.0, -1.0), -1.0);
        // A real value, even 0 or a plain NaN, beats a staleness marker.
        assert_eq!(
            conflict_winner(stale_nan(), 0.0).to_bits(),
            0.0f64.to_bits()
        );
        assert!(!is_stale_nan(conflict_winner(f64::NAN, stale_nan())));
        assert!(is_stale_nan(conflict_winner(stale_nan(), stale_nan())));
    }

    #[test]
    fn merge_resolves_equal_timestamps_by_the_conflict_rule() {
        let a = vec![
            Sample::new(1, 1.0),
            Sample::new(3, 3.0),
            Sample::new(4, 7.0),
        ];
        let b = vec![
            Sample::new(1, 9.0),
            Sample::new(2, 2.0),
            Sample::new(4, 5.0),
        ];
        let want = vec![
            Sample::new(1, 9.0),
            Sample::new(2, 2.0),
            Sample::new(3, 3.0),
            Sample::new(4, 7.0),
        ];
        assert_eq!(merge_sorted_samples(a.clone(), b.clone()), want);
        assert_eq!(merge_sorted_samples(b, a), want);
    }
}
