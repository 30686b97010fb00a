//! Native histograms as Prometheus defines them (`model/histogram`): the integer
//! histogram (bucket counts as deltas between neighbouring buckets) and the float
//! histogram (absolute bucket counts), with exponential schemas -4..=8 and the
//! custom-buckets schema -53 whose bucket bounds travel with the histogram.
//!
//! Owns: the types, the schema constants, and validation of untrusted histograms with
//! Prometheus's rules (`Histogram::validate`, `FloatHistogram::validate`) returning a
//! typed `HistogramError`, and merging two sources' samples of one series
//! (`merge_sorted_histograms`). Ingest is to call validation before anything reaches storage;
//! storage's encoders rely on it only for meaning, never for memory safety. Calls
//! nothing else in the crate.

use std::fmt;
use std::sync::Arc;

use super::is_stale_nan;

/// Lowest exponential schema Prometheus accepts (each bucket spans a factor of 2^16).
pub const EXPONENTIAL_SCHEMA_MIN: i32 = -4;
/// Highest exponential schema Prometheus accepts (a factor of 2^(1/256) per bucket).
pub const EXPONENTIAL_SCHEMA_MAX: i32 = 8;
/// Highest exponential schema a chunk may carry: Prometheus reserves 9..=52 for finer
/// resolutions a newer writer could store and reduces them to 8 when reading.
pub const EXPONENTIAL_SCHEMA_MAX_RESERVED: i32 = 52;
/// Lowest reserved exponential schema (see `EXPONENTIAL_SCHEMA_MAX_RESERVED`).
pub const EXPONENTIAL_SCHEMA_MIN_RESERVED: i32 = -9;
/// The schema whose bucket upper bounds are listed in `custom_values` (classic
/// histograms stored natively, "NHCB").
pub const CUSTOM_BUCKETS_SCHEMA: i32 = -53;

/// Whether `schema` is one Prometheus accepts on ingest.
pub fn is_valid_schema(schema: i32) -> bool {
    schema == CUSTOM_BUCKETS_SCHEMA
        || (EXPONENTIAL_SCHEMA_MIN..=EXPONENTIAL_SCHEMA_MAX).contains(&schema)
}

/// A run of consecutive buckets: `offset` is the gap (in bucket indices) to the end of
/// the previous span, or the index of the first bucket for the first span (which alone
/// may be negative); `length` buckets follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    pub offset: i32,
    pub length: u32,
}

/// What the writer knows about a counter reset at this histogram; chunks carry it in
/// their header (Prometheus's `CounterResetHint`, same numbering as remote write's
/// `ResetHint`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CounterResetHint {
    /// Whether the counter reset here must be found by comparing with the previous one.
    #[default]
    Unknown,
    /// The counter was reset just before this histogram.
    CounterReset,
    /// There was no counter reset since the previous histogram.
    NotCounterReset,
    /// A gauge histogram: counts may go down; resets do not exist.
    Gauge,
}

/// An integer native histogram. Bucket counts are stored as Prometheus stores them:
/// the first bucket of each side absolute, every later one as the difference to its
/// predecessor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub counter_reset_hint: CounterResetHint,
    pub schema: i32,
    /// Observations of absolute value at most this fall into the zero bucket.
    pub zero_threshold: f64,
    pub zero_count: u64,
    pub count: u64,
    /// Sum of observations; Prometheus's staleness marker when it has its bit pattern.
    pub sum: f64,
    /// Spans and custom bounds are shared (every sample of a chunk has the same ones;
    /// Prometheus interns custom bounds likewise), so copying a histogram costs its
    /// buckets only.
    pub positive_spans: Arc<[Span]>,
    pub negative_spans: Arc<[Span]>,
    pub positive_buckets: Vec<i64>,
    pub negative_buckets: Vec<i64>,
    /// Upper bounds of the buckets under `CUSTOM_BUCKETS_SCHEMA` (the last bucket's
    /// +Inf bound implied); empty under exponential schemas.
    pub custom_values: Arc<[f64]>,
}

/// A float native histogram: the same shape with absolute float counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FloatHistogram {
    pub counter_reset_hint: CounterResetHint,
    pub schema: i32,
    pub zero_threshold: f64,
    pub zero_count: f64,
    pub count: f64,
    pub sum: f64,
    pub positive_spans: Arc<[Span]>,
    pub negative_spans: Arc<[Span]>,
    pub positive_buckets: Vec<f64>,
    pub negative_buckets: Vec<f64>,
    pub custom_values: Arc<[f64]>,
}

/// Which bucket side an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Positive,
    Negative,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Positive => "positive side",
            Side::Negative => "negative side",
        })
    }
}

/// Why a histogram is not valid (Prometheus's `ErrHistogram*` errors). Numbers of spans
/// and buckets are 1-based, as Prometheus words them.
#[derive(Clone, Debug, PartialEq)]
pub enum HistogramError {
    /// The schema is neither exponential (-4..=8) nor custom buckets (-53).
    InvalidSchema(i32),
    /// A span after the first has a negative offset (under custom buckets, any span).
    NegativeSpanOffset {
        side: Side,
        span: usize,
        offset: i32,
    },
    /// The spans' lengths add up to another number than the buckets given.
    SpansBucketsMismatch {
        side: Side,
        spans_need: u64,
        have: usize,
    },
    /// A bucket's count (absolute, after adding up deltas) is negative.
    NegativeBucketCount { side: Side, bucket: usize },
    /// A float histogram's zero bucket count is negative.
    NegativeZeroCount,
    /// A float histogram's count is negative.
    NegativeCount,
    /// Adding up an integer histogram's deltas or counts leaves 64 bits (Prometheus
    /// would wrap around; a histogram this large is refused instead).
    CountOverflow,
    /// An integer histogram whose sum is not NaN counts other than the observations in
    /// its buckets.
    CountMismatch { in_buckets: u64, count: u64 },
    /// An integer histogram with a NaN sum counts fewer observations than its buckets.
    CountNotBigEnough { in_buckets: u64, count: u64 },
    /// A custom bound is NaN.
    CustomBoundNaN,
    /// Custom bounds are not strictly increasing (1-based index of the offender).
    CustomBoundsNotIncreasing { bound: usize },
    /// The last custom bound is +Inf (implied, so it must not be listed).
    CustomBoundInfinite,
    /// Fewer custom bounds than the spans reach.
    CustomBoundsTooFew { bounds: usize, spans_reach: u64 },
    /// Custom buckets with a non-zero zero count.
    CustomZeroCount,
    /// Custom buckets with a non-zero zero threshold.
    CustomZeroThreshold,
    /// Custom buckets with negative spans.
    CustomNegativeSpans,
    /// Custom buckets with negative buckets.
    CustomNegativeBuckets,
    /// An exponential schema with custom bounds.
    ExponentialWithCustomBounds,
}

impl fmt::Display for HistogramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HistogramError::*;
        match self {
            InvalidSchema(s) => write!(
                f,
                "histogram has an invalid schema, which must be between \
                 {EXPONENTIAL_SCHEMA_MIN} and {EXPONENTIAL_SCHEMA_MAX} for exponential \
                 buckets, or {CUSTOM_BUCKETS_SCHEMA} for custom buckets, got schema {s}"
            ),
            NegativeSpanOffset { side, span, offset } => write!(
                f,
                "{side}: span number {span} with offset {offset}: histogram has a span \
                 whose offset is negative"
            ),
            SpansBucketsMismatch {
                side,
                spans_need,
                have,
            } => write!(
                f,
                "{side}: spans need {spans_need} buckets, have {have} buckets: histogram \
                 spans specify different number of buckets than provided"
            ),
            NegativeBucketCount { side, bucket } => write!(
                f,
                "{side}: bucket number {bucket} has a negative observation count"
            ),
            NegativeZeroCount => f.write_str("zero bucket has a negative observation count"),
            NegativeCount => f.write_str("histogram's observation count is negative"),
            CountOverflow => f.write_str("histogram's bucket counts overflow 64 bits"),
            CountMismatch { in_buckets, count } => write!(
                f,
                "{in_buckets} observations found in buckets, but the Count field is \
                 {count}: histogram's observation count should equal the number of \
                 observations found in the buckets (in absence of NaN)"
            ),
            CountNotBigEnough { in_buckets, count } => write!(
                f,
                "{in_buckets} observations found in buckets, but the Count field is \
                 {count}: histogram's observation count should be at least the number \
                 of observations found in the buckets"
            ),
            CustomBoundNaN => f.write_str("custom buckets: custom bounds must not be NaN"),
            CustomBoundsNotIncreasing { bound } => write!(
                f,
                "custom buckets: bound number {bound} is not above its predecessor: \
                 custom bounds must be in strictly increasing order"
            ),
            CustomBoundInfinite => {
                f.write_str("custom buckets: last +Inf bound must not be explicitly defined")
            }
            CustomBoundsTooFew {
                bounds,
                spans_reach,
            } => write!(
                f,
                "custom buckets: only {bounds} custom bounds defined which is \
                 insufficient to cover total span length of {spans_reach}"
            ),
            CustomZeroCount => f.write_str("custom buckets: must have zero count of 0"),
            CustomZeroThreshold => f.write_str("custom buckets: must have zero threshold of 0"),
            CustomNegativeSpans => f.write_str("custom buckets: must not have negative spans"),
            CustomNegativeBuckets => f.write_str("custom buckets: must not have negative buckets"),
            ExponentialWithCustomBounds => {
                f.write_str("histogram with exponential schema must not have custom bounds")
            }
        }
    }
}

impl std::error::Error for HistogramError {}

/// Number of buckets `spans` describe.
pub fn span_buckets(spans: &[Span]) -> u64 {
    spans.iter().map(|s| u64::from(s.length)).sum()
}

/// Prometheus's `checkHistogramSpans`: offsets after the first not negative, lengths
/// adding up to the number of buckets.
fn check_spans(side: Side, spans: &[Span], buckets: usize) -> Result<(), HistogramError> {
    if let Some((n, s)) = spans.iter().enumerate().skip(1).find(|(_, s)| s.offset < 0) {
        return Err(HistogramError::NegativeSpanOffset {
            side,
            span: n + 1,
            offset: s.offset,
        });
    }
    let spans_need = span_buckets(spans);
    if spans_need != buckets as u64 {
        return Err(HistogramError::SpansBucketsMismatch {
            side,
            spans_need,
            have: buckets,
        });
    }
    Ok(())
}

/// Prometheus's `checkHistogramCustomBounds`: bounds strictly increasing, not NaN, the
/// last not +Inf; every span offset non-negative; spans match the buckets and stay
/// within the bounds (plus the implied +Inf bucket).
fn check_custom_bounds(
    bounds: &[f64],
    spans: &[Span],
    buckets: usize,
) -> Result<(), HistogramError> {
    for (i, b) in bounds.iter().enumerate() {
        if b.is_nan() {
            return Err(HistogramError::CustomBoundNaN);
        }
        if i > 0 && *b <= bounds[i - 1] {
            return Err(HistogramError::CustomBoundsNotIncreasing { bound: i + 1 });
        }
    }
    if bounds.last() == Some(&f64::INFINITY) {
        return Err(HistogramError::CustomBoundInfinite);
    }
    let mut spans_reach = 0u64;
    for (n, s) in spans.iter().enumerate() {
        if s.offset < 0 {
            return Err(HistogramError::NegativeSpanOffset {
                side: Side::Positive,
                span: n + 1,
                offset: s.offset,
            });
        }
        spans_reach += u64::from(s.length) + s.offset as u64;
    }
    let spans_need = span_buckets(spans);
    if spans_need != buckets as u64 {
        return Err(HistogramError::SpansBucketsMismatch {
            side: Side::Positive,
            spans_need,
            have: buckets,
        });
    }
    if (bounds.len() as u64) + 1 < spans_reach {
        return Err(HistogramError::CustomBoundsTooFew {
            bounds: bounds.len(),
            spans_reach,
        });
    }
    Ok(())
}

/// Sum of the absolute counts of integer buckets given as deltas; each must be >= 0.
fn check_int_buckets(side: Side, deltas: &[i64]) -> Result<u64, HistogramError> {
    let mut last = 0i64;
    let mut total = 0u64;
    for (i, d) in deltas.iter().enumerate() {
        let c = last.checked_add(*d).ok_or(HistogramError::CountOverflow)?;
        if c < 0 {
            return Err(HistogramError::NegativeBucketCount {
                side,
                bucket: i + 1,
            });
        }
        total = total
            .checked_add(c as u64)
            .ok_or(HistogramError::CountOverflow)?;
        last = c;
    }
    Ok(total)
}

/// Absolute float bucket counts must not be negative (NaN passes, as in Prometheus).
fn check_float_buckets(side: Side, counts: &[f64]) -> Result<(), HistogramError> {
    match counts.iter().position(|c| *c < 0.0) {
        Some(i) => Err(HistogramError::NegativeBucketCount {
            side,
            bucket: i + 1,
        }),
        None => Ok(()),
    }
}

/// The structural checks both kinds share; `negative` checks the negative side's
/// counts (which differ in kind) once its spans are known to match.
fn check_shape<Z: PartialEq + Default>(
    schema: i32,
    zero_threshold: f64,
    zero_count: Z,
    positive: (&[Span], usize),
    negative: (&[Span], usize),
    custom_values: &[f64],
) -> Result<(), HistogramError> {
    if schema == CUSTOM_BUCKETS_SCHEMA {
        check_custom_bounds(custom_values, positive.0, positive.1)?;
        if zero_count != Z::default() {
            return Err(HistogramError::CustomZeroCount);
        }
        if zero_threshold != 0.0 {
            return Err(HistogramError::CustomZeroThreshold);
        }
        if !negative.0.is_empty() {
            return Err(HistogramError::CustomNegativeSpans);
        }
        if negative.1 > 0 {
            return Err(HistogramError::CustomNegativeBuckets);
        }
        return Ok(());
    }
    if !(EXPONENTIAL_SCHEMA_MIN..=EXPONENTIAL_SCHEMA_MAX).contains(&schema) {
        return Err(HistogramError::InvalidSchema(schema));
    }
    check_spans(Side::Positive, positive.0, positive.1)?;
    check_spans(Side::Negative, negative.0, negative.1)?;
    if !custom_values.is_empty() {
        return Err(HistogramError::ExponentialWithCustomBounds);
    }
    Ok(())
}

/// A native histogram sample's value, of either kind: a series may switch between
/// them (and to floats) over time, as Prometheus allows.
#[derive(Clone, Debug, PartialEq)]
pub enum HistogramValue {
    Int(Histogram),
    Float(FloatHistogram),
}

impl HistogramValue {
    /// Prometheus's validation of the histogram's kind.
    pub fn validate(&self) -> Result<(), HistogramError> {
        match self {
            HistogramValue::Int(h) => h.validate(),
            HistogramValue::Float(h) => h.validate(),
        }
    }

    pub fn is_stale(&self) -> bool {
        match self {
            HistogramValue::Int(h) => h.is_stale(),
            HistogramValue::Float(h) => h.is_stale(),
        }
    }

    /// Whether `other` is the same observation: the same kind with the same fields,
    /// floats compared by bits (so a NaN sum equals itself), the counter-reset hint
    /// ignored (a chunk re-derives it from its header, as Prometheus's `Equals` does);
    /// two staleness markers are the same whatever else they carry.
    pub fn same(&self, other: &HistogramValue) -> bool {
        fn bits(xs: &[f64]) -> impl Iterator<Item = u64> + '_ {
            xs.iter().map(|x| x.to_bits())
        }
        fn floats_same(a: &[f64], b: &[f64]) -> bool {
            a.len() == b.len() && bits(a).eq(bits(b))
        }
        if self.is_stale() && other.is_stale() {
            return true;
        }
        match (self, other) {
            (HistogramValue::Int(a), HistogramValue::Int(b)) => {
                a.schema == b.schema
                    && a.zero_threshold.to_bits() == b.zero_threshold.to_bits()
                    && a.zero_count == b.zero_count
                    && a.count == b.count
                    && a.sum.to_bits() == b.sum.to_bits()
                    && a.positive_spans == b.positive_spans
                    && a.negative_spans == b.negative_spans
                    && a.positive_buckets == b.positive_buckets
                    && a.negative_buckets == b.negative_buckets
                    && floats_same(&a.custom_values, &b.custom_values)
            }
            (HistogramValue::Float(a), HistogramValue::Float(b)) => {
                a.schema == b.schema
                    && floats_same(
                        &[a.zero_threshold, a.zero_count, a.count, a.sum],
                        &[b.zero_threshold, b.zero_count, b.count, b.sum],
                    )
                    && a.positive_spans == b.positive_spans
                    && a.negative_spans == b.negative_spans
                    && floats_same(&a.positive_buckets, &b.positive_buckets)
                    && floats_same(&a.negative_buckets, &b.negative_buckets)
                    && floats_same(&a.custom_values, &b.custom_values)
            }
            _ => false,
        }
    }
}

/// One native histogram sample.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSample {
    pub t: i64,
    pub h: HistogramValue,
}

/// Merges two time-ordered histogram sample lists of one series; at a time both hold,
/// `newer`'s sample is kept. There is no conflict rule between histograms (unlike
/// floats, ADR 0011): storage ranks its sources instead (ADR 0030).
pub fn merge_sorted_histograms(
    older: Vec<HistogramSample>,
    newer: Vec<HistogramSample>,
) -> Vec<HistogramSample> {
    if older.is_empty() {
        return newer;
    }
    if newer.is_empty() {
        return older;
    }
    let mut out = Vec::with_capacity(older.len().max(newer.len()));
    let mut newer = newer.into_iter().peekable();
    for s in older {
        while let Some(n) = newer.next_if(|n| n.t < s.t) {
            out.push(n);
        }
        if newer.peek().is_none_or(|n| n.t != s.t) {
            out.push(s);
        }
    }
    out.extend(newer);
    out
}

impl Histogram {
    /// Whether this is Prometheus's staleness marker (its sum has the stale NaN bits;
    /// the rest does not matter).
    pub fn is_stale(&self) -> bool {
        is_stale_nan(self.sum)
    }

    /// Prometheus's `Histogram.Validate`, in the same order, so the first problem
    /// reported is the one Prometheus would report.
    pub fn validate(&self) -> Result<(), HistogramError> {
        check_shape(
            self.schema,
            self.zero_threshold,
            self.zero_count,
            (&self.positive_spans, self.positive_buckets.len()),
            (&self.negative_spans, self.negative_buckets.len()),
            &self.custom_values,
        )?;
        let negative = check_int_buckets(Side::Negative, &self.negative_buckets)?;
        let positive = check_int_buckets(Side::Positive, &self.positive_buckets)?;
        let in_buckets = negative
            .checked_add(positive)
            .and_then(|n| n.checked_add(self.zero_count))
            .ok_or(HistogramError::CountOverflow)?;
        if self.sum.is_nan() {
            if in_buckets > self.count {
                return Err(HistogramError::CountNotBigEnough {
                    in_buckets,
                    count: self.count,
                });
            }
        } else if in_buckets != self.count {
            return Err(HistogramError::CountMismatch {
                in_buckets,
                count: self.count,
            });
        }
        Ok(())
    }

    /// The same histogram with float counts (deltas added up).
    pub fn to_float(&self) -> FloatHistogram {
        let absolute = |deltas: &[i64]| {
            let mut c = 0i64;
            deltas
                .iter()
                .map(|d| {
                    c = c.wrapping_add(*d);
                    c as f64
                })
                .collect()
        };
        FloatHistogram {
            counter_reset_hint: self.counter_reset_hint,
            schema: self.schema,
            zero_threshold: self.zero_threshold,
            zero_count: self.zero_count as f64,
            count: self.count as f64,
            sum: self.sum,
            positive_spans: self.positive_spans.clone(),
            negative_spans: self.negative_spans.clone(),
            positive_buckets: absolute(&self.positive_buckets),
            negative_buckets: absolute(&self.negative_buckets),
            custom_values: self.custom_values.clone(),
        }
    }
}

impl FloatHistogram {
    /// Whether this is Prometheus's staleness marker.
    pub fn is_stale(&self) -> bool {
        is_stale_nan(self.sum)
    }

    /// Prometheus's `FloatHistogram.Validate`: no count is checked against the
    /// buckets (float counts need not add up exactly), but none may be negative.
    pub fn validate(&self) -> Result<(), HistogramError> {
        check_shape(
            self.schema,
            self.zero_threshold,
            self.zero_count,
            (&self.positive_spans, self.positive_buckets.len()),
            (&self.negative_spans, self.negative_buckets.len()),
            &self.custom_values,
        )?;
        if self.schema != CUSTOM_BUCKETS_SCHEMA {
            check_float_buckets(Side::Negative, &self.negative_buckets)?;
            if self.zero_count < 0.0 {
                return Err(HistogramError::NegativeZeroCount);
            }
        }
        if self.count < 0.0 {
            return Err(HistogramError::NegativeCount);
        }
        check_float_buckets(Side::Positive, &self.positive_buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(offset: i32, length: u32) -> Span {
        Span { offset, length }
    }

    /// 2 observations in the zero bucket, buckets 0,1 (counts 2,1) and 3 (count 3).
    fn valid() -> Histogram {
        Histogram {
            schema: 0,
            zero_threshold: 0.001,
            zero_count: 2,
            count: 8,
            sum: 18.4,
            positive_spans: vec![span(0, 2), span(1, 1)].into(),
            positive_buckets: vec![2, -1, 2],
            ..Default::default()
        }
    }

    fn custom() -> Histogram {
        Histogram {
            schema: CUSTOM_BUCKETS_SCHEMA,
            count: 5,
            sum: 10.0,
            positive_spans: vec![span(0, 2), span(1, 1)].into(),
            positive_buckets: vec![1, 1, 0],
            custom_values: vec![0.5, 1.0, 5.0].into(),
            ..Default::default()
        }
    }

    #[test]
    fn valid_histograms_pass() {
        assert_eq!(valid().validate(), Ok(()));
        assert_eq!(valid().to_float().validate(), Ok(()));
        assert_eq!(custom().validate(), Ok(()));
        assert_eq!(custom().to_float().validate(), Ok(()));
        assert_eq!(Histogram::default().validate(), Ok(()));
        // A negative first offset is fine (buckets below 1).
        let mut h = valid();
        h.positive_spans = vec![span(-3, 2), span(1, 1)].into();
        assert_eq!(h.validate(), Ok(()));
    }

    #[test]
    fn schemas_outside_the_ranges_are_refused() {
        for schema in [-5, 9, 52, -53 + 1, i32::MIN] {
            let mut h = valid();
            h.schema = schema;
            assert_eq!(h.validate(), Err(HistogramError::InvalidSchema(schema)));
        }
        for schema in [-4, 8] {
            let mut h = valid();
            h.schema = schema;
            assert_eq!(h.validate(), Ok(()));
        }
    }

    #[test]
    fn spans_must_match_buckets() {
        let mut h = valid();
        h.positive_buckets.push(0);
        assert_eq!(
            h.validate(),
            Err(HistogramError::SpansBucketsMismatch {
                side: Side::Positive,
                spans_need: 3,
                have: 4
            })
        );
        let mut h = valid();
        h.negative_spans = vec![span(0, 1)].into();
        assert!(matches!(
            h.validate(),
            Err(HistogramError::SpansBucketsMismatch {
                side: Side::Negative,
                ..
            })
        ));
        let mut h = valid();
        h.positive_spans = vec![span(0, 2), span(-1, 1)].into();
        assert_eq!(
            h.validate(),
            Err(HistogramError::NegativeSpanOffset {
                side: Side::Positive,
                span: 2,
                offset: -1
            })
        );
    }

    #[test]
    fn negative_counts_are_refused() {
        let mut h = valid();
        h.positive_buckets = vec![2, -3, 2];
        assert_eq!(
            h.validate(),
            Err(HistogramError::NegativeBucketCount {
                side: Side::Positive,
                bucket: 2
            })
        );
        let mut f = valid().to_float();
        f.positive_buckets[2] = -1.0;
        assert_eq!(
            f.validate(),
            Err(HistogramError::NegativeBucketCount {
                side: Side::Positive,
                bucket: 3
            })
        );
        let mut f = valid().to_float();
        f.zero_count = -0.5;
        assert_eq!(f.validate(), Err(HistogramError::NegativeZeroCount));
        let mut f = valid().to_float();
        f.count = -1.0;
        assert_eq!(f.validate(), Err(HistogramError::NegativeCount));
        let mut h = valid();
        h.positive_buckets = vec![i64::MAX, 1, 0];
        assert_eq!(h.validate(), Err(HistogramError::CountOverflow));
    }

    #[test]
    fn count_must_match_buckets_unless_the_sum_is_nan() {
        let mut h = valid();
        h.count = 9;
        assert_eq!(
            h.validate(),
            Err(HistogramError::CountMismatch {
                in_buckets: 8,
                count: 9
            })
        );
        h.sum = f64::NAN;
        assert_eq!(h.validate(), Ok(()));
        h.count = 7;
        assert_eq!(
            h.validate(),
            Err(HistogramError::CountNotBigEnough {
                in_buckets: 8,
                count: 7
            })
        );
        // The staleness marker is a NaN sum: an empty stale histogram is valid.
        let stale = Histogram {
            sum: super::super::stale_nan(),
            ..Default::default()
        };
        assert!(stale.is_stale());
        assert_eq!(stale.validate(), Ok(()));
    }

    #[test]
    fn custom_bucket_rules() {
        /// How to break a valid custom-bucket histogram, and the error it then gives.
        type Breakage = (fn(&mut Histogram), HistogramError);
        let cases: Vec<Breakage> = vec![
            (
                |h| h.custom_values = vec![0.5, f64::NAN, 5.0].into(),
                HistogramError::CustomBoundNaN,
            ),
            (
                |h| h.custom_values = vec![0.5, 1.0, 1.0].into(),
                HistogramError::CustomBoundsNotIncreasing { bound: 3 },
            ),
            (
                |h| h.custom_values = vec![0.5, 1.0, 5.0, f64::INFINITY].into(),
                HistogramError::CustomBoundInfinite,
            ),
            (
                |h| h.custom_values = vec![0.5, 1.0].into(),
                HistogramError::CustomBoundsTooFew {
                    bounds: 2,
                    spans_reach: 4,
                },
            ),
            (
                |h| h.positive_spans = vec![span(-1, 2), span(1, 1)].into(),
                HistogramError::NegativeSpanOffset {
                    side: Side::Positive,
                    span: 1,
                    offset: -1,
                },
            ),
            (|h| h.zero_count = 1, HistogramError::CustomZeroCount),
            (
                |h| h.zero_threshold = 0.1,
                HistogramError::CustomZeroThreshold,
            ),
            (
                |h| h.negative_spans = vec![span(0, 0)].into(),
                HistogramError::CustomNegativeSpans,
            ),
            (
                |h| h.negative_buckets = vec![0],
                HistogramError::CustomNegativeBuckets,
            ),
        ];
        for (break_it, want) in cases {
            let mut h = custom();
            break_it(&mut h);
            assert_eq!(h.validate(), Err(want.clone()), "{want}");
        }
        // Three bounds cover four buckets (the last up to +Inf): reaching 4 is fine.
        assert_eq!(custom().custom_values.len(), 3);
        let mut h = valid();
        h.custom_values = vec![1.0].into();
        assert_eq!(
            h.validate(),
            Err(HistogramError::ExponentialWithCustomBounds)
        );
    }

    #[test]
    fn same_compares_observations_by_bits_and_ignores_the_hint() {
        let int = HistogramValue::Int(valid());
        let mut hinted = valid();
        hinted.counter_reset_hint = CounterResetHint::CounterReset;
        assert!(int.same(&HistogramValue::Int(hinted)));
        let mut more = valid();
        more.sum += 1.0;
        assert!(!int.same(&HistogramValue::Int(more)));
        // Another kind is another observation, even with equal counts.
        let float = HistogramValue::Float(valid().to_float());
        assert!(!int.same(&float));
        assert!(float.same(&float.clone()));
        let mut nan = valid().to_float();
        nan.sum = f64::NAN;
        let nan = HistogramValue::Float(nan);
        assert!(nan.same(&nan.clone()), "a NaN sum equals itself by bits");
        assert_ne!(nan, nan.clone(), "unlike PartialEq");
        let mut stale = valid();
        stale.sum = f64::from_bits(crate::model::STALE_NAN_BITS);
        let other_stale = Histogram {
            sum: stale.sum,
            ..Histogram::default()
        };
        assert!(HistogramValue::Int(stale).same(&HistogramValue::Int(other_stale)));
    }

    #[test]
    fn merging_keeps_each_time_once_and_the_newer_sample_there() {
        let at = |t: i64, n: u64| HistogramSample {
            t,
            h: HistogramValue::Int(Histogram {
                count: n,
                ..Histogram::default()
            }),
        };
        let older = vec![at(1, 1), at(3, 1), at(5, 1), at(9, 1)];
        let newer = vec![at(0, 2), at(3, 2), at(4, 2), at(9, 2), at(10, 2)];
        let got: Vec<(i64, u64)> = merge_sorted_histograms(older.clone(), newer.clone())
            .into_iter()
            .map(|s| match s.h {
                HistogramValue::Int(h) => (s.t, h.count),
                HistogramValue::Float(_) => unreachable!(),
            })
            .collect();
        assert_eq!(
            got,
            [(0, 2), (1, 1), (3, 2), (4, 2), (5, 1), (9, 2), (10, 2)]
        );
        assert_eq!(merge_sorted_histograms(older.clone(), vec![]), older);
        assert_eq!(merge_sorted_histograms(vec![], newer.clone()), newer);
    }
}
