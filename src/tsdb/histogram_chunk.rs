//! Native histogram chunks, byte-compatible with Prometheus's `EncHistogram` (2, integer
//! histograms) and `EncFloatHistogram` (3, float histograms) from `tsdb/chunkenc`, so
//! remote read can stream them and Prometheus's own chunks decode here.
//!
//! Owns: both encodings (one generic chunk, `HistogramChunk<H>`, over the two histogram
//! kinds; what differs per kind is `ChunkHistogram`'s sample coding), the counter-reset
//! header, the decision Prometheus's appender makes for each sample (append in place,
//! widen the chunk's bucket layout and re-encode it, or cut a new chunk and say why), and
//! the decoding iterator, which must survive any bytes (they come from disk or a peer).
//! Calls only `model` and the bit stream and XOR value coding of `chunk`.
//!
//! Layout (bit fields most significant bit first; "varbit" is Prometheus's `putVarbitInt`
//! bucketing: `0` for 0, else 1..=8 one bits, a zero bit after fewer than 8, then 3, 6,
//! 9, 12, 18, 25, 56 or 64 value bits):
//! - 2 bytes big-endian sample count; 1 byte whose top two bits are the counter-reset
//!   header (`10` reset, `01` no reset, `11` gauge, `00` unknown).
//! - The layout, once, from the first sample: zero threshold (1 byte: 0 for 0, 1..=254
//!   for the powers of two 2^-243..=2^10, or 255 + 64 bits), varbit schema, positive
//!   then negative spans (varbit-unsigned count, then per span varbit-unsigned length
//!   and varbit offset), and under schema -53 the custom bounds (varbit-unsigned count,
//!   then each as varbit-unsigned 1000 * bound + 1 when that is whole and at most
//!   33554431, else a 0 bit + 64 bits).
//! - Integer, first sample: varbit time, varbit-unsigned count and zero count, 64-bit
//!   sum, varbit bucket deltas. Later samples: varbit delta-of-delta of time, count,
//!   zero count, XOR sum, then each bucket's delta-of-delta.
//! - Float, first sample: varbit time, then count, zero count, sum and every bucket as
//!   64 raw bits. Later samples: time delta-of-delta, then each of those XOR-encoded
//!   against its own predecessor (each keeps its own bit window).
//! - A staleness marker (stale-NaN sum) is encoded as an empty histogram: no buckets;
//!   count and zero-count delta-of-deltas are 0 for integer chunks.

use std::fmt;
use std::sync::Arc;

use super::chunk::{
    fits_bucket, from_bucket, read_xor, write_xor, BitReader, BitWriter, ChunkError,
};
use crate::model::histogram::{
    span_buckets, CounterResetHint, FloatHistogram, Histogram, HistogramError, Side, Span,
    CUSTOM_BUCKETS_SCHEMA, EXPONENTIAL_SCHEMA_MAX, EXPONENTIAL_SCHEMA_MIN_RESERVED,
};
use crate::model::is_stale_nan;

/// Sample count (2 bytes) and the counter-reset byte.
const HEADER_SIZE: usize = 3;
/// The byte holding the counter-reset header.
const FLAG_POS: usize = 2;
const RESET_MASK: u8 = 0b1100_0000;

/// What a chunk's header says about the counter reset at its start (Prometheus's
/// `CounterResetHeader`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterResetHeader {
    /// Whether the first sample follows a reset must be found by comparing with the
    /// previous chunk.
    Unknown,
    /// The chunk was cut because the counter was reset.
    CounterReset,
    /// The chunk was cut for another reason; the counter continued.
    NotCounterReset,
    /// Every sample is a gauge histogram.
    Gauge,
}

impl CounterResetHeader {
    fn bits(self) -> u8 {
        match self {
            CounterResetHeader::Unknown => 0b0000_0000,
            CounterResetHeader::CounterReset => 0b1000_0000,
            CounterResetHeader::NotCounterReset => 0b0100_0000,
            CounterResetHeader::Gauge => 0b1100_0000,
        }
    }

    fn from_byte(b: u8) -> Self {
        match b & RESET_MASK {
            0b1000_0000 => CounterResetHeader::CounterReset,
            0b0100_0000 => CounterResetHeader::NotCounterReset,
            0b1100_0000 => CounterResetHeader::Gauge,
            _ => CounterResetHeader::Unknown,
        }
    }

    /// The hint a decoded sample carries: gauge in a gauge chunk; no reset after the
    /// first sample; unknown for the first, because the previous chunk may have been
    /// replaced since (out-of-order data, backfill), as Prometheus reasons.
    fn hint_at(self, nth: u16) -> CounterResetHint {
        match self {
            CounterResetHeader::Gauge => CounterResetHint::Gauge,
            _ if nth > 1 => CounterResetHint::NotCounterReset,
            _ => CounterResetHint::Unknown,
        }
    }
}

// ---- varbit integers (Prometheus's varbit.go) ----

/// Value widths of the varbit buckets after 1..=7 one bits (8 one bits: 64).
const VARBIT_SIZES: [u32; 7] = [3, 6, 9, 12, 18, 25, 56];

/// Writes the prefix of bucket `k` (k+1 one bits and a zero).
fn write_varbit_prefix(w: &mut BitWriter, k: usize) {
    let ones = k as u32 + 1;
    w.write_bits(((1u64 << ones) - 1) << 1, ones + 1);
}

fn put_varbit_int(w: &mut BitWriter, v: i64) {
    if v == 0 {
        w.write_bit(false);
        return;
    }
    match VARBIT_SIZES.iter().position(|&n| fits_bucket(v, n)) {
        Some(k) => {
            write_varbit_prefix(w, k);
            w.write_bits(v as u64, VARBIT_SIZES[k]);
        }
        None => {
            w.write_bits(0xff, 8);
            w.write_bits(v as u64, 64);
        }
    }
}

fn put_varbit_uint(w: &mut BitWriter, v: u64) {
    if v == 0 {
        w.write_bit(false);
        return;
    }
    match VARBIT_SIZES.iter().position(|&n| v < 1u64 << n) {
        Some(k) => {
            write_varbit_prefix(w, k);
            w.write_bits(v, VARBIT_SIZES[k]);
        }
        None => {
            w.write_bits(0xff, 8);
            w.write_bits(v, 64);
        }
    }
}

/// The value width a varbit prefix announces (0: the value is 0). None at the end.
fn read_varbit_size(r: &mut BitReader) -> Option<u32> {
    let mut ones = 0usize;
    while ones < 8 {
        if !r.read_bit()? {
            break;
        }
        ones += 1;
    }
    Some(match ones {
        0 => 0,
        8 => 64,
        k => VARBIT_SIZES[k - 1],
    })
}

fn read_varbit_int(r: &mut BitReader) -> Option<i64> {
    match read_varbit_size(r)? {
        0 => Some(0),
        64 => r.read_bits(64).map(|b| b as i64),
        n => r.read_bits(n).map(|b| from_bucket(b, n)),
    }
}

fn read_varbit_uint(r: &mut BitReader) -> Option<u64> {
    match read_varbit_size(r)? {
        0 => Some(0),
        n => r.read_bits(n),
    }
}

// ---- the layout ----

/// What the first sample of a chunk fixes for all of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layout {
    schema: i32,
    zero_threshold: f64,
    positive: Arc<[Span]>,
    negative: Arc<[Span]>,
    custom_values: Arc<[f64]>,
}

impl Layout {
    fn spans(&self, side: Side) -> &[Span] {
        match side {
            Side::Positive => &self.positive,
            Side::Negative => &self.negative,
        }
    }
}

/// Powers of two 2^-243..=2^10 take one byte (their IEEE exponent + 243, as
/// `math.Frexp` counts it); zero takes the byte 0; anything else 255 and 64 bits.
fn put_zero_threshold(w: &mut BitWriter, threshold: f64) {
    if threshold == 0.0 {
        w.write_byte(0);
        return;
    }
    let bits = threshold.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let mantissa = bits & ((1 << 52) - 1);
    // Frexp's exponent of a positive normal power of two 2^k is k + 1 (0.5 * 2^(k+1)).
    let frexp_exp = biased - 1022;
    let one_byte = threshold > 0.0 && biased != 0 && biased != 0x7ff && mantissa == 0;
    if one_byte && (-242..=11).contains(&frexp_exp) {
        w.write_byte((frexp_exp + 243) as u8);
    } else {
        w.write_byte(255);
        w.write_bits(bits, 64);
    }
}

fn read_zero_threshold(r: &mut BitReader) -> Option<f64> {
    match r.read_bits(8)? {
        0 => Some(0.0),
        255 => r.read_bits(64).map(f64::from_bits),
        // 0.5 * 2^(b - 243) = 2^(b - 244), a normal number for b in 1..=254.
        b => Some(f64::from_bits(((b as i64 - 244 + 1023) as u64) << 52)),
    }
}

/// Bounds that are whole multiples of 0.001 in 0..=33554.43 take a short varbit.
fn put_custom_bound(w: &mut BitWriter, bound: f64) {
    let scaled = bound * 1000.0;
    let whole = (scaled.round() as u64) as f64 / 1000.0 == bound;
    if !(0.0..=33_554_430.0).contains(&scaled) || !whole {
        w.write_bit(false);
        w.write_bits(bound.to_bits(), 64);
    } else {
        put_varbit_uint(w, scaled.round() as u64 + 1);
    }
}

fn read_custom_bound(r: &mut BitReader) -> Option<f64> {
    match read_varbit_uint(r)? {
        0 => r.read_bits(64).map(f64::from_bits),
        n => Some((n - 1) as f64 / 1000.0),
    }
}

fn put_spans(w: &mut BitWriter, spans: &[Span]) {
    put_varbit_uint(w, spans.len() as u64);
    for s in spans {
        put_varbit_uint(w, u64::from(s.length));
        put_varbit_int(w, i64::from(s.offset));
    }
}

fn write_layout(w: &mut BitWriter, layout: &Layout) {
    put_zero_threshold(w, layout.zero_threshold);
    put_varbit_int(w, i64::from(layout.schema));
    put_spans(w, &layout.positive);
    put_spans(w, &layout.negative);
    if layout.schema == CUSTOM_BUCKETS_SCHEMA {
        put_varbit_uint(w, layout.custom_values.len() as u64);
        for &b in layout.custom_values.iter() {
            put_custom_bound(w, b);
        }
    }
}

/// A count read from the stream, refused when the rest of the stream could not hold
/// that many items of at least `min_bits` each (so garbage cannot make us allocate).
fn bounded_count(r: &mut BitReader, min_bits: usize) -> Result<Option<usize>, ChunkError> {
    let Some(n) = read_varbit_uint(r) else {
        return Ok(None);
    };
    match usize::try_from(n) {
        Ok(n) if n <= r.bits_left() / min_bits => Ok(Some(n)),
        _ => Err(ChunkError::BadLayout),
    }
}

fn read_spans(r: &mut BitReader) -> Result<Option<Vec<Span>>, ChunkError> {
    // A span is at least two bits (two zero varbits).
    let Some(n) = bounded_count(r, 2)? else {
        return Ok(None);
    };
    let mut spans = Vec::with_capacity(n);
    for _ in 0..n {
        let (Some(length), Some(offset)) = (read_varbit_uint(r), read_varbit_int(r)) else {
            return Ok(None);
        };
        let (Ok(length), Ok(offset)) = (u32::try_from(length), i32::try_from(offset)) else {
            return Err(ChunkError::BadLayout);
        };
        spans.push(Span { offset, length });
    }
    Ok(Some(spans))
}

fn read_layout(r: &mut BitReader) -> Result<Option<Layout>, ChunkError> {
    let Some(zero_threshold) = read_zero_threshold(r) else {
        return Ok(None);
    };
    let Some(schema) = read_varbit_int(r) else {
        return Ok(None);
    };
    let known = i32::try_from(schema).ok().filter(|s| readable_schema(*s));
    let Some(schema) = known else {
        return Err(ChunkError::BadSchema(schema));
    };
    let Some(positive) = read_spans(r)? else {
        return Ok(None);
    };
    let Some(negative) = read_spans(r)? else {
        return Ok(None);
    };
    let mut custom_values = Vec::new();
    if schema == CUSTOM_BUCKETS_SCHEMA {
        let Some(n) = bounded_count(r, 1)? else {
            return Ok(None);
        };
        custom_values.reserve_exact(n);
        for _ in 0..n {
            let Some(b) = read_custom_bound(r) else {
                return Ok(None);
            };
            custom_values.push(b);
        }
    }
    Ok(Some(Layout {
        schema,
        zero_threshold,
        positive: positive.into(),
        negative: negative.into(),
        custom_values: custom_values.into(),
    }))
}

// ---- bucket layouts: comparing and widening (Prometheus's histogram_meta.go) ----

/// Yields the bucket indices spans cover, in order.
struct BucketIndices<'a> {
    spans: &'a [Span],
    span: usize,
    /// Position within the current span of the last yielded bucket (-1 before).
    bucket: i64,
    idx: i64,
}

impl<'a> BucketIndices<'a> {
    fn new(spans: &'a [Span]) -> Self {
        let idx = spans.first().map_or(-1, |s| i64::from(s.offset) - 1);
        BucketIndices {
            spans,
            span: 0,
            bucket: -1,
            idx,
        }
    }
}

impl Iterator for BucketIndices<'_> {
    type Item = i64;

    fn next(&mut self) -> Option<i64> {
        let current = self.spans.get(self.span)?;
        if self.bucket < i64::from(current.length) - 1 {
            self.bucket += 1;
            self.idx += 1;
            return Some(self.idx);
        }
        while self.span + 1 < self.spans.len() {
            self.span += 1;
            let s = self.spans[self.span];
            self.idx += i64::from(s.offset) + 1;
            self.bucket = 0;
            if s.length == 0 {
                self.idx -= 1;
                continue;
            }
            return Some(self.idx);
        }
        None
    }
}

/// `num` empty buckets to insert before the `pos`th bucket of a list; `bucket_idx` is
/// the first inserted bucket's index, for adjusting spans.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Insert {
    pos: usize,
    num: usize,
    bucket_idx: i64,
}

/// Extends the open run `inter` by bucket `idx`, closing it into `out` first when `idx`
/// does not continue it.
fn add_insert(out: &mut Vec<Insert>, inter: &mut Insert, idx: i64) {
    if inter.num == 0 {
        inter.bucket_idx = idx;
    } else if inter.bucket_idx + inter.num as i64 != idx {
        out.push(*inter);
        inter.num = 0;
        inter.bucket_idx = idx;
    }
    inter.num += 1;
}

/// Prometheus's `expand{Int,Float}SpansAndBuckets` over absolute counts: the inserts
/// that widen layout `a` to cover `b`'s buckets (forward) and those that widen `b` by
/// `a`'s buckets that `b` lacks (backward, allowed only where `a`'s count is 0). None
/// when a bucket's count went down or a used bucket vanished: a counter reset.
fn expand_spans<C: Copy + PartialOrd + Default>(
    a: &[Span],
    b: &[Span],
    a_counts: &[C],
    b_counts: &[C],
) -> Option<(Vec<Insert>, Vec<Insert>)> {
    let (mut ai, mut bi) = (BucketIndices::new(a), BucketIndices::new(b));
    let (mut forward, mut backward) = (Vec::new(), Vec::new());
    let (mut a_inter, mut b_inter) = (Insert::default(), Insert::default());
    let (mut a_next, mut b_next) = (ai.next(), bi.next());
    let (mut a_pos, mut b_pos) = (0usize, 0usize);
    let count = |counts: &[C], i: usize| counts.get(i).copied().unwrap_or_default();
    loop {
        // Which side to step: a (b lacks a's bucket), b (a lacks b's), or both.
        let (step_a, step_b) = match (a_next, b_next) {
            (Some(x), Some(y)) if x == y => {
                if count(a_counts, a_pos) > count(b_counts, b_pos) {
                    return None;
                }
                (true, true)
            }
            (Some(x), Some(y)) if x > y => {
                add_insert(&mut forward, &mut a_inter, y);
                (false, true)
            }
            (Some(x), _) => {
                if count(a_counts, a_pos) != C::default() {
                    return None;
                }
                add_insert(&mut backward, &mut b_inter, x);
                (true, false)
            }
            (None, Some(y)) => {
                add_insert(&mut forward, &mut a_inter, y);
                (false, true)
            }
            (None, None) => break,
        };
        if step_a {
            if a_inter.num > 0 {
                forward.push(a_inter);
                a_inter.num = 0;
            }
            a_next = ai.next();
            a_inter.pos += 1;
            a_pos += 1;
        }
        if step_b {
            if b_inter.num > 0 {
                backward.push(b_inter);
                b_inter.num = 0;
            }
            b_next = bi.next();
            b_inter.pos += 1;
            b_pos += 1;
        }
    }
    if a_inter.num > 0 {
        forward.push(a_inter);
    }
    if b_inter.num > 0 {
        backward.push(b_inter);
    }
    Some((forward, backward))
}

/// Appends bucket `b` to `spans` (built in index order; `last` is the previous bucket).
fn push_bucket(spans: &mut Vec<Span>, last: &mut i64, b: i64) {
    let mut offset = b - *last - 1;
    match spans.last_mut() {
        Some(s) if offset == 0 => s.length += 1,
        _ => {
            if spans.is_empty() {
                offset += 1;
            }
            spans.push(Span {
                offset: offset as i32,
                length: 1,
            });
        }
    }
    *last = b;
}

/// Prometheus's `expandSpansBothWays` (gauge histograms, no reset detection): forward
/// inserts widening `a` by `b`'s buckets, backward inserts widening `b` by `a`'s, and
/// the spans of the union.
fn expand_spans_both_ways(a: &[Span], b: &[Span]) -> (Vec<Insert>, Vec<Insert>, Vec<Span>) {
    let (mut ai, mut bi) = (BucketIndices::new(a), BucketIndices::new(b));
    let (mut forward, mut backward, mut merged) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = 0i64;
    let (mut f_inter, mut b_inter) = (Insert::default(), Insert::default());
    let (mut av, mut bv) = (ai.next(), bi.next());
    loop {
        match (av, bv) {
            (Some(x), Some(y)) if x == y => {
                for (inter, out) in [(&mut f_inter, &mut forward), (&mut b_inter, &mut backward)] {
                    if inter.num > 0 {
                        out.push(*inter);
                        inter.num = 0;
                    }
                }
                push_bucket(&mut merged, &mut last, x);
                av = ai.next();
                bv = bi.next();
                f_inter.pos += 1;
                b_inter.pos += 1;
            }
            (Some(x), Some(_)) if av < bv => {
                b_inter.num += 1;
                if f_inter.num > 0 {
                    forward.push(f_inter);
                    f_inter.num = 0;
                }
                push_bucket(&mut merged, &mut last, x);
                f_inter.pos += 1;
                av = ai.next();
            }
            (Some(_), Some(y)) => {
                f_inter.num += 1;
                if b_inter.num > 0 {
                    backward.push(b_inter);
                    b_inter.num = 0;
                }
                push_bucket(&mut merged, &mut last, y);
                b_inter.pos += 1;
                bv = bi.next();
            }
            (Some(x), None) => {
                b_inter.num += 1;
                push_bucket(&mut merged, &mut last, x);
                av = ai.next();
            }
            (None, Some(y)) => {
                f_inter.num += 1;
                push_bucket(&mut merged, &mut last, y);
                bv = bi.next();
            }
            (None, None) => break,
        }
    }
    if f_inter.num > 0 {
        forward.push(f_inter);
    }
    if b_inter.num > 0 {
        backward.push(b_inter);
    }
    (forward, backward, merged)
}

/// Prometheus's `adjustForInserts`: `spans` widened by the buckets `inserts` add.
fn adjust_for_inserts(spans: &[Span], inserts: &[Insert]) -> Vec<Span> {
    if inserts.is_empty() {
        return spans.to_vec();
    }
    let mut merged = Vec::new();
    let mut last = 0i64;
    let mut pending = inserts
        .iter()
        .flat_map(|i| (0..i.num as i64).map(move |k| i.bucket_idx + k))
        .peekable();
    for bucket in BucketIndices::new(spans) {
        while let Some(ins) = pending.next_if(|&ins| ins < bucket) {
            push_bucket(&mut merged, &mut last, ins);
        }
        push_bucket(&mut merged, &mut last, bucket);
    }
    for ins in pending {
        push_bucket(&mut merged, &mut last, ins);
    }
    merged
}

/// Arithmetic on bucket values: integer deltas wrap like Go's int64.
trait BucketValue: Copy + Default {
    fn plus(self, other: Self) -> Self;
    fn negated(self) -> Self;
}

impl BucketValue for i64 {
    fn plus(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
    fn negated(self) -> Self {
        self.wrapping_neg()
    }
}

impl BucketValue for f64 {
    fn plus(self, other: Self) -> Self {
        self + other
    }
    fn negated(self) -> Self {
        -self
    }
}

/// Prometheus's `insert`: `buckets` with empty buckets added where `inserts` say. With
/// `deltas`, the first inserted bucket cancels the running count and the next original
/// bucket restores it, so every original bucket keeps its absolute count.
fn insert_empty<T: BucketValue>(buckets: &[T], inserts: &[Insert], deltas: bool) -> Vec<T> {
    let extra: usize = inserts.iter().map(|i| i.num).sum();
    let mut out = Vec::with_capacity(buckets.len() + extra);
    let mut v = T::default();
    let mut ii = 0;
    for (i, &d) in buckets.iter().enumerate() {
        let mut first = true;
        let mut inserted = false;
        while let Some(ins) = inserts.get(ii).filter(|ins| ins.pos == i) {
            for k in 0..ins.num {
                out.push(if deltas && first && k == 0 {
                    v.negated()
                } else {
                    T::default()
                });
            }
            first = false;
            inserted = true;
            ii += 1;
        }
        out.push(if deltas && inserted { d.plus(v) } else { d });
        v = v.plus(d);
    }
    for ins in &inserts[ii.min(inserts.len())..] {
        for k in 0..ins.num {
            out.push(if deltas && k == 0 {
                v.negated()
            } else {
                T::default()
            });
        }
        v = T::default();
    }
    out
}

// ---- the two histogram kinds ----

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::model::histogram::Histogram {}
    impl Sealed for crate::model::histogram::FloatHistogram {}
}

/// Why a sample cannot join the chunk (which header a chunk cut for it gets depends on
/// the kind, as in Prometheus).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misfit {
    /// A counter reset (explicit, or a count or bucket went down, or custom bounds
    /// changed).
    Reset,
    /// The layout changed (schema, zero threshold) or the chunk ended stale: whether
    /// the counter was reset is not worked out.
    Unknown,
    /// A counter histogram after a gauge chunk.
    GaugeChunk,
}

/// Opaque access to a chunk's bit stream for `ChunkHistogram`'s coding.
pub struct SampleWriter<'a>(&'a mut BitWriter);
/// Opaque access to a chunk's bit stream for `ChunkHistogram`'s decoding.
pub struct SampleReader<'a, 'b>(&'a mut BitReader<'b>);

/// A histogram kind a chunk can hold: `Histogram` (encoding 2) or `FloatHistogram`
/// (encoding 3). Sealed; the hidden methods are the per-kind sample coding.
pub trait ChunkHistogram: Clone + fmt::Debug + sealed::Sealed {
    /// Prometheus's chunk encoding number.
    const ENCODING: u8;
    /// A bucket count as counter-reset detection compares it.
    #[doc(hidden)]
    type Count: Copy + PartialOrd + Default + fmt::Debug;
    /// What one sample's coding is relative to (kept by the appender and the iterator).
    #[doc(hidden)]
    type State: Clone + Default + fmt::Debug;

    #[doc(hidden)]
    fn hint(&self) -> CounterResetHint;
    #[doc(hidden)]
    fn sum(&self) -> f64;
    #[doc(hidden)]
    fn layout(&self) -> Layout;
    #[doc(hidden)]
    fn count(&self) -> Self::Count;
    #[doc(hidden)]
    fn zero_count(&self) -> Self::Count;
    #[doc(hidden)]
    fn spans(&self, side: Side) -> &[Span];
    #[doc(hidden)]
    fn bucket_len(&self, side: Side) -> usize;
    /// Absolute counts of one side's buckets.
    #[doc(hidden)]
    fn absolute(&self, side: Side) -> Vec<Self::Count>;
    /// New spans for one side with empty buckets where `inserts` say.
    #[doc(hidden)]
    fn widen(&mut self, side: Side, spans: Arc<[Span]>, inserts: &[Insert]);
    /// The staleness marker as encoded: nothing but the sum.
    #[doc(hidden)]
    fn stale(sum: f64) -> Self;
    #[doc(hidden)]
    fn write_first(w: SampleWriter, st: &mut Self::State, h: &Self);
    #[doc(hidden)]
    fn write_next(w: SampleWriter, st: &mut Self::State, h: &Self);
    /// Reads the first sample after the time; `buckets` are the layout's sizes.
    #[doc(hidden)]
    fn read_first(
        r: SampleReader,
        st: &mut Self::State,
        buckets: [usize; 2],
    ) -> Result<Option<()>, ChunkError>;
    #[doc(hidden)]
    fn read_next(r: SampleReader, st: &mut Self::State) -> Result<Option<()>, ChunkError>;
    /// Count, zero count and sum of the last sample coded.
    #[doc(hidden)]
    fn last_counts(st: &Self::State) -> (Self::Count, Self::Count, f64);
    #[doc(hidden)]
    fn last_absolute(st: &Self::State, side: Side) -> Vec<Self::Count>;
    #[doc(hidden)]
    fn materialize(st: &Self::State, layout: &Layout, hint: CounterResetHint) -> Self;
    /// Header of a chunk cut for a sample that did not fit.
    #[doc(hidden)]
    fn cut_header(m: Misfit) -> CounterResetHeader;
    /// Header of a chunk cut for time or size, given how the sample fits the previous.
    #[doc(hidden)]
    fn continuation_header(fit: Result<(), Misfit>) -> CounterResetHeader;
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Positive => 0,
        Side::Negative => 1,
    }
}

/// Integer coding state: counts and their deltas, bucket values (in the histogram's
/// delta-between-buckets form) and their deltas, and the sum's XOR window.
#[derive(Clone, Debug, Default)]
pub struct IntState {
    cnt: u64,
    zcnt: u64,
    cnt_delta: i64,
    zcnt_delta: i64,
    buckets: [Vec<i64>; 2],
    bucket_deltas: [Vec<i64>; 2],
    sum: u64,
    leading: u8,
    trailing: u8,
}

/// The accessors both histogram kinds answer from their identically named fields (the
/// model keeps the two structs apart because their bucket counts differ in type).
macro_rules! shared_shape_accessors {
    ($count:ty) => {
        fn hint(&self) -> CounterResetHint {
            self.counter_reset_hint
        }
        fn sum(&self) -> f64 {
            self.sum
        }
        fn layout(&self) -> Layout {
            Layout {
                schema: self.schema,
                zero_threshold: self.zero_threshold,
                positive: self.positive_spans.clone(),
                negative: self.negative_spans.clone(),
                custom_values: self.custom_values.clone(),
            }
        }
        fn count(&self) -> $count {
            self.count
        }
        fn zero_count(&self) -> $count {
            self.zero_count
        }
        fn spans(&self, side: Side) -> &[Span] {
            match side {
                Side::Positive => &self.positive_spans,
                Side::Negative => &self.negative_spans,
            }
        }
        fn bucket_len(&self, side: Side) -> usize {
            match side {
                Side::Positive => self.positive_buckets.len(),
                Side::Negative => self.negative_buckets.len(),
            }
        }
    };
}

impl ChunkHistogram for Histogram {
    const ENCODING: u8 = 2;
    type Count = u64;
    type State = IntState;

    shared_shape_accessors!(u64);
    fn absolute(&self, side: Side) -> Vec<u64> {
        let deltas = match side {
            Side::Positive => &self.positive_buckets,
            Side::Negative => &self.negative_buckets,
        };
        absolute_counts(deltas)
    }
    fn widen(&mut self, side: Side, spans: Arc<[Span]>, inserts: &[Insert]) {
        let (s, b) = match side {
            Side::Positive => (&mut self.positive_spans, &mut self.positive_buckets),
            Side::Negative => (&mut self.negative_spans, &mut self.negative_buckets),
        };
        *s = spans;
        if !inserts.is_empty() {
            *b = insert_empty(b, inserts, true);
        }
    }
    fn stale(sum: f64) -> Self {
        Histogram {
            sum,
            ..Default::default()
        }
    }

    fn write_first(w: SampleWriter, st: &mut IntState, h: &Self) {
        let w = w.0;
        put_varbit_uint(w, h.count);
        put_varbit_uint(w, h.zero_count);
        w.write_bits(h.sum.to_bits(), 64);
        for &b in h.positive_buckets.iter().chain(&h.negative_buckets) {
            put_varbit_int(w, b);
        }
        *st = IntState {
            cnt: h.count,
            zcnt: h.zero_count,
            buckets: [h.positive_buckets.clone(), h.negative_buckets.clone()],
            bucket_deltas: [
                vec![0; h.positive_buckets.len()],
                vec![0; h.negative_buckets.len()],
            ],
            sum: h.sum.to_bits(),
            leading: 0xff,
            ..Default::default()
        };
    }

    fn write_next(w: SampleWriter, st: &mut IntState, h: &Self) {
        let w = w.0;
        let cnt_delta = (h.count as i64).wrapping_sub(st.cnt as i64);
        let zcnt_delta = (h.zero_count as i64).wrapping_sub(st.zcnt as i64);
        let (mut cnt_dod, mut zcnt_dod) = (
            cnt_delta.wrapping_sub(st.cnt_delta),
            zcnt_delta.wrapping_sub(st.zcnt_delta),
        );
        if h.is_stale() {
            (cnt_dod, zcnt_dod) = (0, 0);
        }
        put_varbit_int(w, cnt_dod);
        put_varbit_int(w, zcnt_dod);
        let prev_sum = f64::from_bits(st.sum);
        write_xor(w, h.sum, prev_sum, &mut st.leading, &mut st.trailing);
        for (side, new) in [&h.positive_buckets, &h.negative_buckets]
            .into_iter()
            .enumerate()
        {
            let olds = st.buckets[side].iter_mut().zip(&mut st.bucket_deltas[side]);
            for ((old, old_delta), &b) in olds.zip(new) {
                let delta = b.wrapping_sub(*old);
                put_varbit_int(w, delta.wrapping_sub(*old_delta));
                *old_delta = delta;
                *old = b;
            }
        }
        st.cnt = h.count;
        st.zcnt = h.zero_count;
        st.cnt_delta = cnt_delta;
        st.zcnt_delta = zcnt_delta;
        st.sum = h.sum.to_bits();
    }

    fn read_first(
        r: SampleReader,
        st: &mut IntState,
        buckets: [usize; 2],
    ) -> Result<Option<()>, ChunkError> {
        let r = r.0;
        let (Some(cnt), Some(zcnt), Some(sum)) =
            (read_varbit_uint(r), read_varbit_uint(r), r.read_bits(64))
        else {
            return Ok(None);
        };
        let mut values = [Vec::new(), Vec::new()];
        for (side, n) in buckets.into_iter().enumerate() {
            values[side].reserve_exact(n);
            for _ in 0..n {
                let Some(v) = read_varbit_int(r) else {
                    return Ok(None);
                };
                values[side].push(v);
            }
        }
        *st = IntState {
            cnt,
            zcnt,
            bucket_deltas: [vec![0; buckets[0]], vec![0; buckets[1]]],
            buckets: values,
            sum,
            ..Default::default()
        };
        Ok(Some(()))
    }

    fn read_next(r: SampleReader, st: &mut IntState) -> Result<Option<()>, ChunkError> {
        let r = r.0;
        let (Some(cnt_dod), Some(zcnt_dod)) = (read_varbit_int(r), read_varbit_int(r)) else {
            return Ok(None);
        };
        st.cnt_delta = st.cnt_delta.wrapping_add(cnt_dod);
        st.cnt = st.cnt.wrapping_add(st.cnt_delta as u64);
        st.zcnt_delta = st.zcnt_delta.wrapping_add(zcnt_dod);
        st.zcnt = st.zcnt.wrapping_add(st.zcnt_delta as u64);
        if read_xor(r, &mut st.sum, &mut st.leading, &mut st.trailing)?.is_none() {
            return Ok(None);
        }
        if is_stale_nan(f64::from_bits(st.sum)) {
            return Ok(Some(()));
        }
        for side in 0..2 {
            let values = st.buckets[side].iter_mut().zip(&mut st.bucket_deltas[side]);
            for (value, delta) in values {
                let Some(dod) = read_varbit_int(r) else {
                    return Ok(None);
                };
                *delta = delta.wrapping_add(dod);
                *value = value.wrapping_add(*delta);
            }
        }
        Ok(Some(()))
    }

    fn last_counts(st: &IntState) -> (u64, u64, f64) {
        (st.cnt, st.zcnt, f64::from_bits(st.sum))
    }
    fn last_absolute(st: &IntState, side: Side) -> Vec<u64> {
        absolute_counts(&st.buckets[side_index(side)])
    }
    fn materialize(st: &IntState, layout: &Layout, hint: CounterResetHint) -> Self {
        let sum = f64::from_bits(st.sum);
        if is_stale_nan(sum) {
            return Self::stale(sum);
        }
        Histogram {
            counter_reset_hint: hint,
            schema: layout.schema,
            zero_threshold: layout.zero_threshold,
            zero_count: st.zcnt,
            count: st.cnt,
            sum,
            positive_spans: layout.positive.clone(),
            negative_spans: layout.negative.clone(),
            positive_buckets: st.buckets[0].clone(),
            negative_buckets: st.buckets[1].clone(),
            custom_values: layout.custom_values.clone(),
        }
    }
    fn cut_header(m: Misfit) -> CounterResetHeader {
        match m {
            Misfit::Reset => CounterResetHeader::CounterReset,
            Misfit::Unknown => CounterResetHeader::Unknown,
            // Prometheus's integer appender keeps its "no reset" default here.
            Misfit::GaugeChunk => CounterResetHeader::NotCounterReset,
        }
    }
    fn continuation_header(fit: Result<(), Misfit>) -> CounterResetHeader {
        fit.map_or_else(Self::cut_header, |()| CounterResetHeader::NotCounterReset)
    }
}

/// Absolute counts from deltas (wrapping like Go: only reset detection reads them, and
/// a validated histogram never wraps).
fn absolute_counts(deltas: &[i64]) -> Vec<u64> {
    let mut c = 0i64;
    deltas
        .iter()
        .map(|d| {
            c = c.wrapping_add(*d);
            c as u64
        })
        .collect()
}

/// One XOR-coded float with its own bit window.
#[derive(Clone, Copy, Debug, Default)]
pub struct XorValue {
    bits: u64,
    leading: u8,
    trailing: u8,
}

impl XorValue {
    /// As the appender starts it: no window yet.
    fn fresh(v: f64) -> Self {
        XorValue {
            bits: v.to_bits(),
            leading: 0xff,
            trailing: 0,
        }
    }

    fn write(&mut self, w: &mut BitWriter, v: f64) {
        write_xor(
            w,
            v,
            f64::from_bits(self.bits),
            &mut self.leading,
            &mut self.trailing,
        );
        self.bits = v.to_bits();
    }

    fn read(&mut self, r: &mut BitReader) -> Result<Option<()>, ChunkError> {
        read_xor(r, &mut self.bits, &mut self.leading, &mut self.trailing)
    }

    fn value(self) -> f64 {
        f64::from_bits(self.bits)
    }
}

/// Float coding state: every field XOR-coded against its predecessor.
#[derive(Clone, Debug, Default)]
pub struct FloatState {
    cnt: XorValue,
    zcnt: XorValue,
    sum: XorValue,
    buckets: [Vec<XorValue>; 2],
}

impl ChunkHistogram for FloatHistogram {
    const ENCODING: u8 = 3;
    type Count = f64;
    type State = FloatState;

    shared_shape_accessors!(f64);
    fn absolute(&self, side: Side) -> Vec<f64> {
        match side {
            Side::Positive => self.positive_buckets.clone(),
            Side::Negative => self.negative_buckets.clone(),
        }
    }
    fn widen(&mut self, side: Side, spans: Arc<[Span]>, inserts: &[Insert]) {
        let (s, b) = match side {
            Side::Positive => (&mut self.positive_spans, &mut self.positive_buckets),
            Side::Negative => (&mut self.negative_spans, &mut self.negative_buckets),
        };
        *s = spans;
        if !inserts.is_empty() {
            *b = insert_empty(b, inserts, false);
        }
    }
    fn stale(sum: f64) -> Self {
        FloatHistogram {
            sum,
            ..Default::default()
        }
    }

    fn write_first(w: SampleWriter, st: &mut FloatState, h: &Self) {
        let w = w.0;
        let buckets = [&h.positive_buckets, &h.negative_buckets];
        for v in [h.count, h.zero_count, h.sum]
            .iter()
            .chain(buckets.into_iter().flatten())
        {
            w.write_bits(v.to_bits(), 64);
        }
        *st = FloatState {
            cnt: XorValue::fresh(h.count),
            zcnt: XorValue::fresh(h.zero_count),
            sum: XorValue::fresh(h.sum),
            buckets: buckets.map(|b| b.iter().map(|v| XorValue::fresh(*v)).collect()),
        };
    }

    fn write_next(w: SampleWriter, st: &mut FloatState, h: &Self) {
        let w = w.0;
        st.cnt.write(w, h.count);
        st.zcnt.write(w, h.zero_count);
        st.sum.write(w, h.sum);
        for (side, new) in [&h.positive_buckets, &h.negative_buckets]
            .into_iter()
            .enumerate()
        {
            for (old, &v) in st.buckets[side].iter_mut().zip(new) {
                old.write(w, v);
            }
        }
    }

    fn read_first(
        r: SampleReader,
        st: &mut FloatState,
        buckets: [usize; 2],
    ) -> Result<Option<()>, ChunkError> {
        let r = r.0;
        // Each bucket of the first sample takes 64 bits.
        if (buckets[0] + buckets[1]) as u64 * 64 > r.bits_left() as u64 {
            return Err(ChunkError::BadLayout);
        }
        let read = |r: &mut BitReader| {
            r.read_bits(64).map(|bits| XorValue {
                bits,
                ..Default::default()
            })
        };
        let (Some(cnt), Some(zcnt), Some(sum)) = (read(r), read(r), read(r)) else {
            return Ok(None);
        };
        let mut values = [Vec::new(), Vec::new()];
        for (side, n) in buckets.into_iter().enumerate() {
            values[side].reserve_exact(n);
            for _ in 0..n {
                let Some(v) = read(r) else {
                    return Ok(None);
                };
                values[side].push(v);
            }
        }
        *st = FloatState {
            cnt,
            zcnt,
            sum,
            buckets: values,
        };
        Ok(Some(()))
    }

    fn read_next(r: SampleReader, st: &mut FloatState) -> Result<Option<()>, ChunkError> {
        let r = r.0;
        for v in [&mut st.cnt, &mut st.zcnt, &mut st.sum] {
            if v.read(r)?.is_none() {
                return Ok(None);
            }
        }
        if is_stale_nan(st.sum.value()) {
            return Ok(Some(()));
        }
        for v in st.buckets.iter_mut().flatten() {
            if v.read(r)?.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    }

    fn last_counts(st: &FloatState) -> (f64, f64, f64) {
        (st.cnt.value(), st.zcnt.value(), st.sum.value())
    }
    fn last_absolute(st: &FloatState, side: Side) -> Vec<f64> {
        st.buckets[side_index(side)]
            .iter()
            .map(|v| v.value())
            .collect()
    }
    fn materialize(st: &FloatState, layout: &Layout, hint: CounterResetHint) -> Self {
        let sum = st.sum.value();
        if is_stale_nan(sum) {
            return Self::stale(sum);
        }
        let values = |side: usize| st.buckets[side].iter().map(|v| v.value()).collect();
        FloatHistogram {
            counter_reset_hint: hint,
            schema: layout.schema,
            zero_threshold: layout.zero_threshold,
            zero_count: st.zcnt.value(),
            count: st.cnt.value(),
            sum,
            positive_spans: layout.positive.clone(),
            negative_spans: layout.negative.clone(),
            positive_buckets: values(0),
            negative_buckets: values(1),
            custom_values: layout.custom_values.clone(),
        }
    }
    fn cut_header(m: Misfit) -> CounterResetHeader {
        match m {
            Misfit::Reset => CounterResetHeader::CounterReset,
            // Prometheus's float appender sets the header only for a reset.
            Misfit::Unknown | Misfit::GaugeChunk => CounterResetHeader::Unknown,
        }
    }
    fn continuation_header(fit: Result<(), Misfit>) -> CounterResetHeader {
        match fit {
            Err(Misfit::Reset) => CounterResetHeader::CounterReset,
            _ => CounterResetHeader::NotCounterReset,
        }
    }
}

// ---- the chunk ----

/// What `HistogramChunk::append` did with a sample.
#[derive(Debug)]
pub enum Appended<H: ChunkHistogram> {
    /// Added at the end of the chunk.
    InPlace,
    /// The sample brought buckets the chunk did not have: the chunk was re-encoded with
    /// them (empty in its earlier samples), then the sample added. Bytes before the end
    /// changed.
    Recoded,
    /// The sample does not belong in this chunk (counter reset, schema or zero
    /// threshold change, buckets that cannot be widened, after a staleness marker, or
    /// the chunk is full): it starts the returned chunk, whose header says why. This
    /// chunk is unchanged and complete.
    Cut(HistogramChunk<H>),
}

/// An appendable native histogram chunk.
#[derive(Clone, Debug)]
pub struct HistogramChunk<H: ChunkHistogram> {
    w: BitWriter,
    num: u16,
    layout: Layout,
    min_t: i64,
    t: i64,
    t_delta: i64,
    st: H::State,
}

/// An integer histogram chunk (`EncHistogram`).
pub type IntHistogramChunk = HistogramChunk<Histogram>;
/// A float histogram chunk (`EncFloatHistogram`).
pub type FloatHistogramChunk = HistogramChunk<FloatHistogram>;

impl<H: ChunkHistogram> Default for HistogramChunk<H> {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a chunk with this schema decodes here (`read_layout`).
fn readable_schema(schema: i32) -> bool {
    schema == CUSTOM_BUCKETS_SCHEMA
        || (EXPONENTIAL_SCHEMA_MIN_RESERVED..=EXPONENTIAL_SCHEMA_MAX).contains(&schema)
}

/// Buckets of each side must be as many as the spans describe, or coding would read
/// past one of them, and the schema must be one the decoder reads back, or re-encoding
/// the chunk would lose it. (The rest of validity is meaning: `validate`.)
fn check_structure<H: ChunkHistogram>(h: &H) -> Result<(), HistogramError> {
    if is_stale_nan(h.sum()) {
        // Encoded empty: its buckets are never read.
        return Ok(());
    }
    let schema = h.layout().schema;
    if !readable_schema(schema) {
        return Err(HistogramError::InvalidSchema(schema));
    }
    for side in [Side::Positive, Side::Negative] {
        let spans_need = span_buckets(h.spans(side));
        let have = h.bucket_len(side);
        if spans_need != have as u64 {
            return Err(HistogramError::SpansBucketsMismatch {
                side,
                spans_need,
                have,
            });
        }
    }
    Ok(())
}

impl<H: ChunkHistogram> HistogramChunk<H> {
    pub fn new() -> Self {
        HistogramChunk {
            w: BitWriter::with_header(HEADER_SIZE),
            num: 0,
            layout: Layout::default(),
            min_t: i64::MIN,
            t: i64::MIN,
            t_delta: 0,
            st: H::State::default(),
        }
    }

    /// A new chunk continuing `prev` (cut for time or size), holding `h`; its header
    /// says whether `h` follows a counter reset, as Prometheus's head decides it.
    pub fn continuing(prev: &Self, t: i64, h: &H) -> Result<Self, HistogramError> {
        check_structure(h)?;
        let mut c = Self::new();
        let header = match h.hint() {
            CounterResetHint::Gauge => CounterResetHeader::Gauge,
            CounterResetHint::CounterReset => CounterResetHeader::CounterReset,
            _ => H::continuation_header(prev.appendable(h).map(|_| ())),
        };
        c.encode(t, h);
        c.set_header(header);
        Ok(c)
    }

    /// Appends `h` at `t` (callers keep timestamps increasing) the way Prometheus's
    /// appender does, or says that a new chunk starts with it. Errors only when the
    /// buckets do not match the spans.
    pub fn append(&mut self, t: i64, h: &H) -> Result<Appended<H>, HistogramError> {
        check_structure(h)?;
        if self.num == 0 {
            self.encode(t, h);
            match h.hint() {
                CounterResetHint::Gauge => self.set_header(CounterResetHeader::Gauge),
                CounterResetHint::CounterReset => self.set_header(CounterResetHeader::CounterReset),
                _ => {}
            }
            return Ok(Appended::InPlace);
        }
        if self.num == u16::MAX {
            return Self::continuing(self, t, h).map(Appended::Cut);
        }
        let gauge = h.hint() == CounterResetHint::Gauge;
        let fit = if gauge {
            self.appendable_gauge(h).ok_or(CounterResetHeader::Gauge)
        } else {
            self.appendable(h).map_err(H::cut_header)
        };
        let widening = match fit {
            Ok(w) => w,
            Err(header) => {
                let mut c = Self::new();
                c.encode(t, h);
                c.set_header(header);
                return Ok(Appended::Cut(c));
            }
        };
        let mut h = h.clone();
        if widening.backward.iter().any(|b| !b.is_empty()) {
            for (i, side) in [Side::Positive, Side::Negative].into_iter().enumerate() {
                let spans: Arc<[Span]> = match &widening.merged {
                    Some(merged) => merged[i].clone().into(),
                    None if widening.forward.iter().all(|f| f.is_empty()) => {
                        self.layout.spans(side).into()
                    }
                    None => adjust_for_inserts(h.spans(side), &widening.backward[i]).into(),
                };
                h.widen(side, spans, &widening.backward[i]);
            }
        }
        if widening.forward.iter().any(|f| !f.is_empty()) {
            let spans = [Side::Positive, Side::Negative].map(|side| Arc::from(h.spans(side)));
            self.recode(&widening.forward, spans);
            self.encode(t, &h);
            return Ok(Appended::Recoded);
        }
        self.encode(t, &h);
        Ok(Appended::InPlace)
    }

    /// Prometheus's `appendable`: whether a counter histogram fits, with the inserts
    /// widening the chunk (forward) and the sample (backward).
    fn appendable(&self, h: &H) -> Result<Widening, Misfit> {
        if self.num > 0 && self.header() == CounterResetHeader::Gauge {
            return Err(Misfit::GaugeChunk);
        }
        if h.hint() == CounterResetHint::CounterReset {
            return Err(Misfit::Reset);
        }
        if is_stale_nan(h.sum()) {
            return Ok(Widening::default());
        }
        let (cnt, zcnt, sum) = H::last_counts(&self.st);
        if is_stale_nan(sum) {
            return Err(Misfit::Unknown);
        }
        if h.count() < cnt {
            return Err(Misfit::Reset);
        }
        let layout = h.layout();
        if layout.schema != self.layout.schema
            || layout.zero_threshold != self.layout.zero_threshold
        {
            return Err(Misfit::Unknown);
        }
        if layout.schema == CUSTOM_BUCKETS_SCHEMA
            && !bounds_match(&layout.custom_values, &self.layout.custom_values)
        {
            return Err(Misfit::Reset);
        }
        if h.zero_count() < zcnt {
            return Err(Misfit::Reset);
        }
        let mut w = Widening::default();
        for (i, side) in [Side::Positive, Side::Negative].into_iter().enumerate() {
            let (forward, backward) = expand_spans(
                self.layout.spans(side),
                h.spans(side),
                &H::last_absolute(&self.st, side),
                &h.absolute(side),
            )
            .ok_or(Misfit::Reset)?;
            w.forward[i] = forward;
            w.backward[i] = backward;
        }
        Ok(w)
    }

    /// Prometheus's `appendableGauge`: gauges never reset, so any buckets fit as long
    /// as the schema, zero threshold and custom bounds stay (and the chunk is a gauge
    /// chunk that did not end stale).
    fn appendable_gauge(&self, h: &H) -> Option<Widening> {
        if self.num > 0 && self.header() != CounterResetHeader::Gauge {
            return None;
        }
        if is_stale_nan(h.sum()) {
            return Some(Widening::default());
        }
        if is_stale_nan(H::last_counts(&self.st).2) {
            return None;
        }
        let layout = h.layout();
        if layout.schema != self.layout.schema
            || layout.zero_threshold != self.layout.zero_threshold
            || (layout.schema == CUSTOM_BUCKETS_SCHEMA
                && !bounds_match(&layout.custom_values, &self.layout.custom_values))
        {
            return None;
        }
        let mut w = Widening::default();
        let mut merged: [Vec<Span>; 2] = Default::default();
        for (i, side) in [Side::Positive, Side::Negative].into_iter().enumerate() {
            let (forward, backward, spans) =
                expand_spans_both_ways(self.layout.spans(side), h.spans(side));
            w.forward[i] = forward;
            w.backward[i] = backward;
            merged[i] = spans;
        }
        w.merged = Some(merged);
        Some(w)
    }

    /// Re-encodes every sample with `spans` (the chunk's buckets plus those `forward`
    /// inserts), keeping the header. Prometheus does the same: decode, widen, encode.
    fn recode(&mut self, forward: &[Vec<Insert>; 2], spans: [Arc<[Span]>; 2]) {
        let header = self.header();
        let mut out = Self::new();
        for (t, mut h) in self.iter() {
            if !is_stale_nan(h.sum()) {
                for (i, side) in [Side::Positive, Side::Negative].into_iter().enumerate() {
                    h.widen(side, spans[i].clone(), &forward[i]);
                }
            }
            out.encode(t, &h);
        }
        out.set_header(header);
        *self = out;
    }

    /// Writes the sample (no fit checks). A staleness marker is written empty.
    fn encode(&mut self, t: i64, h: &H) {
        let stale;
        let h = if is_stale_nan(h.sum()) {
            stale = H::stale(h.sum());
            &stale
        } else {
            h
        };
        if self.num == 0 {
            self.layout = h.layout();
            write_layout(&mut self.w, &self.layout);
            put_varbit_int(&mut self.w, t);
            H::write_first(SampleWriter(&mut self.w), &mut self.st, h);
            self.min_t = t;
            self.t_delta = 0;
        } else {
            let t_delta = t.wrapping_sub(self.t);
            put_varbit_int(&mut self.w, t_delta.wrapping_sub(self.t_delta));
            self.t_delta = t_delta;
            H::write_next(SampleWriter(&mut self.w), &mut self.st, h);
        }
        self.t = t;
        self.num = self.num.saturating_add(1);
        self.w.bytes_mut()[..2].copy_from_slice(&self.num.to_be_bytes());
    }

    fn set_header(&mut self, header: CounterResetHeader) {
        let b = &mut self.w.bytes_mut()[FLAG_POS];
        *b = (*b & !RESET_MASK) | header.bits();
    }

    /// What the chunk's header says about a counter reset at its start.
    pub fn header(&self) -> CounterResetHeader {
        CounterResetHeader::from_byte(self.w.bytes()[FLAG_POS])
    }

    pub fn num_samples(&self) -> usize {
        usize::from(self.num)
    }

    pub fn is_empty(&self) -> bool {
        self.num == 0
    }

    /// The encoded chunk, header included, exactly as Prometheus stores it.
    pub fn bytes(&self) -> &[u8] {
        self.w.bytes()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.w.into_bytes()
    }

    /// Timestamp of the first sample (`i64::MIN` when empty).
    pub fn min_time(&self) -> i64 {
        self.min_t
    }

    /// Timestamp of the last sample (`i64::MIN` when empty).
    pub fn max_time(&self) -> i64 {
        self.t
    }

    /// The samples in order. The chunk was built by `append`, so it always decodes.
    pub fn iter(&self) -> impl Iterator<Item = (i64, H)> + '_ {
        decode_histogram_chunk::<H>(self.bytes()).map_while(Result::ok)
    }
}

fn bounds_match(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// How a fitting sample widens the chunk (`forward`) and itself (`backward`), per side
/// (positive, negative); gauge samples bring the spans of the union.
#[derive(Clone, Debug, Default)]
struct Widening {
    forward: [Vec<Insert>; 2],
    backward: [Vec<Insert>; 2],
    merged: Option<[Vec<Span>; 2]>,
}

/// Decodes a histogram chunk of kind `H` (header included). Yields an error once and
/// stops on garbage; never allocates more than the bytes could describe.
pub fn decode_histogram_chunk<H: ChunkHistogram>(bytes: &[u8]) -> HistogramIter<'_, H> {
    let (r, announced, header, failed) = match bytes.get(..HEADER_SIZE) {
        Some(h) => (
            BitReader::new(&bytes[HEADER_SIZE..]),
            u16::from_be_bytes([h[0], h[1]]),
            CounterResetHeader::from_byte(h[FLAG_POS]),
            None,
        ),
        None => (
            BitReader::new(&[]),
            0,
            CounterResetHeader::Unknown,
            Some(ChunkError::MissingHeader),
        ),
    };
    HistogramIter {
        r,
        announced,
        decoded: 0,
        header,
        layout: Layout::default(),
        t: 0,
        t_delta: 0,
        st: H::State::default(),
        failed,
    }
}

/// Iterator over the (timestamp, histogram) samples of an encoded histogram chunk.
pub struct HistogramIter<'a, H: ChunkHistogram> {
    r: BitReader<'a>,
    announced: u16,
    decoded: u16,
    header: CounterResetHeader,
    layout: Layout,
    t: i64,
    t_delta: i64,
    st: H::State,
    /// An error waiting to be yielded (then the iterator is exhausted).
    failed: Option<ChunkError>,
}

impl<H: ChunkHistogram> HistogramIter<'_, H> {
    /// The counter-reset header of the chunk.
    pub fn header(&self) -> CounterResetHeader {
        self.header
    }

    fn truncated(&self) -> ChunkError {
        ChunkError::Truncated {
            decoded: self.decoded,
            announced: self.announced,
        }
    }

    fn read_next(&mut self) -> Result<(i64, H), ChunkError> {
        let read = if self.decoded == 0 {
            self.layout = read_layout(&mut self.r)?.ok_or_else(|| self.truncated())?;
            let t = read_varbit_int(&mut self.r).ok_or_else(|| self.truncated())?;
            self.t = t;
            let buckets = [
                span_buckets(&self.layout.positive),
                span_buckets(&self.layout.negative),
            ];
            // Every bucket of the first sample takes at least one bit.
            let total = buckets[0].saturating_add(buckets[1]);
            if total > self.r.bits_left() as u64 {
                return Err(ChunkError::BadLayout);
            }
            let buckets = buckets.map(|n| n as usize);
            H::read_first(SampleReader(&mut self.r), &mut self.st, buckets)?
        } else {
            let dod = read_varbit_int(&mut self.r).ok_or_else(|| self.truncated())?;
            self.t_delta = self.t_delta.wrapping_add(dod);
            self.t = self.t.wrapping_add(self.t_delta);
            H::read_next(SampleReader(&mut self.r), &mut self.st)?
        };
        read.ok_or_else(|| self.truncated())?;
        self.decoded += 1;
        let hint = self.header.hint_at(self.decoded);
        Ok((self.t, H::materialize(&self.st, &self.layout, hint)))
    }
}

impl<H: ChunkHistogram> Iterator for HistogramIter<'_, H> {
    type Item = Result<(i64, H), ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(err) = self.failed.take() {
            self.decoded = self.announced;
            return Some(Err(err));
        }
        if self.decoded >= self.announced {
            return None;
        }
        match self.read_next() {
            Ok(s) => Some(Ok(s)),
            Err(e) => {
                self.decoded = self.announced;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::model::stale_nan;

    fn span(offset: i32, length: u32) -> Span {
        Span { offset, length }
    }

    /// Bucket index -> absolute count of the non-empty buckets of one side, with the
    /// rest of the histogram: how two encodings of the same observations compare when
    /// one of them had empty buckets added by a layout change.
    #[derive(Debug, PartialEq)]
    struct Observed {
        schema: i32,
        zero_threshold: u64,
        zero_count: u64,
        count: u64,
        sum: u64,
        buckets: [BTreeMap<i64, u64>; 2],
        custom_values: Vec<u64>,
    }

    fn observed_counts(spans: &[Span], counts: &[u64]) -> BTreeMap<i64, u64> {
        BucketIndices::new(spans)
            .zip(counts)
            .filter(|(_, c)| **c != 0)
            .map(|(i, c)| (i, *c))
            .collect()
    }

    fn observed(h: &Histogram) -> Observed {
        if h.is_stale() {
            return Observed {
                schema: 0,
                zero_threshold: 0,
                zero_count: 0,
                count: 0,
                sum: h.sum.to_bits(),
                buckets: Default::default(),
                custom_values: vec![],
            };
        }
        Observed {
            schema: h.schema,
            zero_threshold: h.zero_threshold.to_bits(),
            zero_count: h.zero_count,
            count: h.count,
            sum: h.sum.to_bits(),
            buckets: [Side::Positive, Side::Negative]
                .map(|s| observed_counts(h.spans(s), &h.absolute(s))),
            custom_values: h.custom_values.iter().map(|v| v.to_bits()).collect(),
        }
    }

    fn observed_float(h: &FloatHistogram) -> Observed {
        let bits = |spans: &[Span], v: &[f64]| {
            let counts: Vec<u64> = v.iter().map(|c| c.to_bits()).collect();
            observed_counts(spans, &counts)
        };
        if h.is_stale() {
            return observed(&Histogram::stale(h.sum));
        }
        Observed {
            schema: h.schema,
            zero_threshold: h.zero_threshold.to_bits(),
            zero_count: h.zero_count.to_bits(),
            count: h.count.to_bits(),
            sum: h.sum.to_bits(),
            buckets: [
                bits(&h.positive_spans, &h.positive_buckets),
                bits(&h.negative_spans, &h.negative_buckets),
            ],
            custom_values: h.custom_values.iter().map(|v| v.to_bits()).collect(),
        }
    }

    /// Deltas from absolute counts.
    fn deltas(counts: &[u64]) -> Vec<i64> {
        let mut prev = 0i64;
        counts
            .iter()
            .map(|&c| {
                let d = c as i64 - prev;
                prev = c as i64;
                d
            })
            .collect()
    }

    /// A valid integer histogram over `spans` with the given absolute counts.
    fn hist(schema: i32, pos: &[Span], p: &[u64], neg: &[Span], n: &[u64], zero: u64) -> Histogram {
        Histogram {
            schema,
            zero_threshold: if schema == CUSTOM_BUCKETS_SCHEMA {
                0.0
            } else {
                2f64.powi(-128)
            },
            zero_count: zero,
            count: p.iter().chain(n).sum::<u64>() + zero,
            sum: p.iter().sum::<u64>() as f64 * 1.5,
            positive_spans: pos.to_vec().into(),
            negative_spans: neg.to_vec().into(),
            positive_buckets: deltas(p),
            negative_buckets: deltas(n),
            ..Default::default()
        }
    }

    /// Appends `samples` in order, cutting chunks as told; returns the chunks.
    fn append_all<H: ChunkHistogram>(samples: &[(i64, H)]) -> Vec<HistogramChunk<H>> {
        let mut chunks = vec![HistogramChunk::<H>::new()];
        for (t, h) in samples {
            let last = chunks.last_mut().unwrap();
            if let Appended::Cut(next) = last.append(*t, h).expect("well-formed") {
                chunks.push(next);
            }
        }
        chunks
    }

    fn decoded<H: ChunkHistogram>(chunks: &[HistogramChunk<H>]) -> Vec<(i64, H)> {
        chunks
            .iter()
            .flat_map(|c| decode_histogram_chunk::<H>(c.bytes()))
            .collect::<Result<_, _>>()
            .expect("own chunks decode")
    }

    /// A growing counter histogram with new buckets now and then, occasional resets,
    /// schema changes, NaN sums and staleness markers.
    fn random_series(rng: &mut SmallRng, len: usize) -> Vec<(i64, Histogram)> {
        let mut t = rng.random_range(-1_000_000..1_000_000_000_000i64);
        let mut schema = rng.random_range(-4..=8);
        let mut counts: [BTreeMap<i64, u64>; 2] = Default::default();
        let mut zero = 0u64;
        let mut out = Vec::new();
        for _ in 0..len {
            t += match rng.random_range(0..4) {
                0 => 15_000,
                1 => rng.random_range(1..100_000),
                2 => rng.random_range(1..1 << 40),
                _ => 15_000 + rng.random_range(-50..50),
            };
            match rng.random_range(0..20) {
                0 => {
                    out.push((t, Histogram::stale(stale_nan())));
                    continue;
                }
                1 => counts = Default::default(),
                2 => schema = rng.random_range(-4..=8),
                _ => {}
            }
            for side in &mut counts {
                for _ in 0..rng.random_range(0..3) {
                    *side.entry(rng.random_range(-30..30)).or_default() +=
                        rng.random_range(0..1 << 20);
                }
                for c in side.values_mut() {
                    *c += rng.random_range(0..10);
                }
            }
            zero += rng.random_range(0..5);
            let layout = |m: &BTreeMap<i64, u64>| {
                let mut spans = Vec::new();
                let mut last = 0;
                for &i in m.keys() {
                    push_bucket(&mut spans, &mut last, i);
                }
                (spans, m.values().copied().collect::<Vec<_>>())
            };
            let (ps, pc) = layout(&counts[0]);
            let (ns, nc) = layout(&counts[1]);
            let mut h = hist(schema, &ps, &pc, &ns, &nc, zero);
            if rng.random_range(0..10) == 0 {
                h.sum = f64::NAN;
            }
            assert_eq!(h.validate(), Ok(()));
            out.push((t, h));
        }
        out
    }

    #[test]
    fn varbit_bucket_edges_round_trip_in_their_widths() {
        // (value, bits) at the edges of every bucket, as Prometheus's bitRange cuts them.
        let cases: &[(i64, u32)] = &[
            (0, 1),
            (1, 5),
            (-3, 5),
            (4, 5),
            (-4, 9),
            (5, 9),
            (32, 9),
            (-31, 9),
            (33, 13),
            (256, 13),
            (257, 17),
            (2048, 17),
            (2049, 24),
            (131_072, 24),
            (131_073, 32),
            (16_777_216, 32),
            (16_777_217, 64),
            (1 << 55, 64),
            ((1 << 55) + 1, 72),
            (i64::MIN, 72),
            (i64::MAX, 72),
        ];
        for &(v, bits) in cases {
            let mut w = BitWriter::default();
            put_varbit_int(&mut w, v);
            w.write_bits(0b101, 3);
            let mut r = BitReader::new(w.bytes());
            assert_eq!(read_varbit_int(&mut r), Some(v), "{v}");
            assert_eq!(r.read_bits(3), Some(0b101), "{v} takes {bits} bits");
            assert_eq!(r.bits_left(), w.bytes().len() * 8 - bits as usize - 3);
        }
        for (v, bits) in [
            (0u64, 1u32),
            (7, 5),
            (8, 9),
            (63, 9),
            (64, 13),
            (33_554_431, 32),
        ] {
            let mut w = BitWriter::default();
            put_varbit_uint(&mut w, v);
            let mut r = BitReader::new(w.bytes());
            assert_eq!(read_varbit_uint(&mut r), Some(v));
            assert_eq!(r.bits_left(), w.bytes().len() * 8 - bits as usize);
        }
        for v in [u64::MAX, 1 << 56, (1 << 56) - 1] {
            let mut w = BitWriter::default();
            put_varbit_uint(&mut w, v);
            assert_eq!(read_varbit_uint(&mut BitReader::new(w.bytes())), Some(v));
        }
    }

    #[test]
    fn zero_thresholds_and_custom_bounds_encode_as_prometheus_documents() {
        // Prometheus's default zero threshold 2^-128 is the single byte 116.
        for (threshold, bytes) in [
            (2f64.powi(-128), vec![116u8]),
            (0.0, vec![0]),
            (1024.0, vec![254]),
            (2f64.powi(-243), vec![1]),
        ] {
            let mut w = BitWriter::default();
            put_zero_threshold(&mut w, threshold);
            assert_eq!(w.bytes(), &bytes[..], "{threshold}");
            assert_eq!(
                read_zero_threshold(&mut BitReader::new(w.bytes())),
                Some(threshold)
            );
        }
        for threshold in [
            2048.0,
            0.001,
            2f64.powi(-244),
            -0.5,
            f64::NAN,
            f64::INFINITY,
        ] {
            let mut w = BitWriter::default();
            put_zero_threshold(&mut w, threshold);
            assert_eq!(w.bytes()[0], 255);
            assert_eq!(w.bytes().len(), 9);
            let back = read_zero_threshold(&mut BitReader::new(w.bytes())).unwrap();
            assert_eq!(back.to_bits(), threshold.to_bits());
        }
        // 0.25 -> 251 as an unsigned varbit of 9 value bits (bucket 3: `1110` + 9 bits).
        let mut w = BitWriter::default();
        put_custom_bound(&mut w, 0.25);
        let mut r = BitReader::new(w.bytes());
        assert_eq!(r.read_bits(4), Some(0b1110));
        assert_eq!(r.read_bits(9), Some(251));
        for bound in [
            0.25,
            0.0,
            33_554.43,
            33_554.431,
            -1.0,
            0.0001,
            1e300,
            f64::NEG_INFINITY,
        ] {
            let mut w = BitWriter::default();
            put_custom_bound(&mut w, bound);
            let back = read_custom_bound(&mut BitReader::new(w.bytes())).unwrap();
            assert_eq!(back.to_bits(), bound.to_bits(), "{bound}");
        }
    }

    #[test]
    fn layout_and_first_sample_bytes_by_hand() {
        // Schema 0, threshold 2^-128, one positive span [0, 2] with counts 2, 3 (deltas
        // 2, 1), count 5, sum 0.0, no zero count, at t = 0.
        let h = hist(0, &[span(0, 2)], &[2, 3], &[], &[], 0);
        let h = Histogram { sum: 0.0, ..h };
        let mut c = IntHistogramChunk::new();
        assert!(matches!(c.append(0, &h), Ok(Appended::InPlace)));
        // 00 01 00 | 116 | schema 0: `0` | 1 span: `10 001` | length 2: `10 010` |
        // offset 0: `0` | no negative spans: `0` | t 0: `0` | count 5: `10 101` |
        // zero count `0` | 64 zero bits | deltas 2: `10 010`, 1: `10 001`.
        let mut w = BitWriter::default();
        for (v, n) in [
            (0u64, 1u32),
            (0b10001, 5),
            (0b10010, 5),
            (0, 1),
            (0, 1),
            (0, 1),
            (0b10101, 5),
            (0, 1),
            (0, 64),
            (0b10010, 5),
            (0b10001, 5),
        ] {
            w.write_bits(v, n);
        }
        let mut want = vec![0, 1, 0, 116];
        want.extend_from_slice(w.bytes());
        assert_eq!(c.bytes(), &want[..]);
        assert_eq!(c.header(), CounterResetHeader::Unknown);
        let (t, back) = c.iter().next().unwrap();
        assert_eq!((t, &back), (0, &h));
    }

    #[test]
    fn random_integer_series_round_trip() {
        let mut rng = SmallRng::seed_from_u64(7);
        for round in 0..200 {
            let len = rng.random_range(1..150);
            let samples = random_series(&mut rng, len);
            let chunks = append_all(&samples);
            let back = decoded(&chunks);
            assert_eq!(back.len(), samples.len(), "round {round}");
            for ((t, h), (bt, bh)) in samples.iter().zip(&back) {
                assert_eq!(t, bt);
                assert_eq!(observed(h), observed(bh), "round {round} at {t}");
            }
            // Within a chunk after the first sample, Prometheus's hint is "no reset".
            for c in &chunks {
                let hints: Vec<_> = c.iter().map(|(_, h)| h.counter_reset_hint).collect();
                for (i, hint) in hints.iter().enumerate() {
                    let stale = c.iter().nth(i).unwrap().1.is_stale();
                    let want = match (i, stale) {
                        (_, true) | (0, _) => CounterResetHint::Unknown,
                        _ => CounterResetHint::NotCounterReset,
                    };
                    assert_eq!(*hint, want);
                }
            }
            // The same samples as float histograms round trip through float chunks.
            let floats: Vec<(i64, FloatHistogram)> =
                samples.iter().map(|(t, h)| (*t, h.to_float())).collect();
            let back = decoded(&append_all(&floats));
            assert_eq!(back.len(), floats.len());
            for ((_, h), (_, bh)) in floats.iter().zip(&back) {
                assert_eq!(observed_float(h), observed_float(bh));
            }
        }
    }

    #[test]
    fn unchanged_layout_appends_in_place_and_decodes_identically() {
        let spans = [span(-2, 2), span(3, 1)];
        let samples: Vec<(i64, Histogram)> = (0..120u64)
            .map(|i| {
                let h = hist(
                    3,
                    &spans,
                    &[i, 2 * i, 5 * i],
                    &[span(1, 1)],
                    &[i / 2],
                    2 * i,
                );
                (1_700_000_000_000 + 15_000 * i as i64, h)
            })
            .collect();
        let mut c = IntHistogramChunk::new();
        for (t, h) in &samples {
            assert!(matches!(c.append(*t, h), Ok(Appended::InPlace)));
        }
        assert_eq!(c.num_samples(), 120);
        assert_eq!(c.min_time(), samples[0].0);
        assert_eq!(c.max_time(), samples[119].0);
        let back: Vec<_> = c.iter().collect();
        for (i, ((t, h), (bt, bh))) in samples.iter().zip(&back).enumerate() {
            let mut want = h.clone();
            want.counter_reset_hint = if i == 0 {
                CounterResetHint::Unknown
            } else {
                CounterResetHint::NotCounterReset
            };
            assert_eq!((t, &want), (bt, bh));
        }
    }

    #[test]
    fn new_buckets_recode_and_vanished_empty_buckets_are_filled_in() {
        let mut c = IntHistogramChunk::new();
        let first = hist(0, &[span(0, 2)], &[1, 2], &[], &[], 0);
        c.append(0, &first).unwrap();
        // A bucket at index 3 and an empty negative bucket appear: the chunk is
        // re-encoded.
        let second = hist(
            0,
            &[span(0, 2), span(1, 1)],
            &[1, 3, 4],
            &[span(0, 1)],
            &[0],
            0,
        );
        assert!(matches!(c.append(10, &second), Ok(Appended::Recoded)));
        let back: Vec<_> = c.iter().collect();
        assert_eq!(observed(&back[0].1), observed(&first));
        assert_eq!(&back[0].1.positive_spans[..], &[span(0, 2), span(1, 1)]);
        assert_eq!(back[0].1.positive_buckets, vec![1, 1, -2]);
        assert_eq!(back[0].1.negative_buckets, vec![0]);
        assert_eq!(observed(&back[1].1), observed(&second));
        // The empty negative bucket vanishes: the sample is widened with it (current
        // Prometheus; 2.42 cut a chunk). Bucket 1 was never empty, so its vanishing
        // is a reset.
        let third = hist(
            0,
            &[span(0, 2), span(1, 1)],
            &[1, 3, 5],
            &[span(0, 1)],
            &[0],
            0,
        );
        assert!(matches!(c.append(20, &third), Ok(Appended::InPlace)));
        let fourth = hist(0, &[span(0, 2), span(1, 1)], &[2, 3, 5], &[], &[], 0);
        assert!(matches!(c.append(30, &fourth), Ok(Appended::InPlace)));
        let back: Vec<_> = c.iter().collect();
        assert_eq!(&back[3].1.negative_spans[..], &[span(0, 1)]);
        assert_eq!(observed(&back[3].1), observed(&fourth));
        let gone = hist(0, &[span(0, 1), span(2, 1)], &[2, 5], &[], &[], 0);
        match c.append(40, &gone) {
            Ok(Appended::Cut(next)) => {
                assert_eq!(next.header(), CounterResetHeader::CounterReset);
            }
            other => panic!("expected a cut, got {other:?}"),
        }
        assert_eq!(c.num_samples(), 4);
    }

    #[test]
    fn cuts_carry_the_reason_in_the_header() {
        let base = hist(1, &[span(0, 2)], &[5, 5], &[], &[], 3);
        let mut c = IntHistogramChunk::new();
        c.append(0, &base).unwrap();
        let cut = |c: &mut IntHistogramChunk, h: &Histogram| match c.append(1, h) {
            Ok(Appended::Cut(next)) => next.header(),
            other => panic!("expected a cut, got {other:?}"),
        };
        let lower = hist(1, &[span(0, 2)], &[5, 4], &[], &[], 3);
        assert_eq!(cut(&mut c, &lower), CounterResetHeader::CounterReset);
        let zero_lower = hist(1, &[span(0, 2)], &[6, 6], &[], &[], 1);
        assert_eq!(cut(&mut c, &zero_lower), CounterResetHeader::CounterReset);
        let other_schema = Histogram {
            schema: 2,
            ..base.clone()
        };
        assert_eq!(cut(&mut c, &other_schema), CounterResetHeader::Unknown);
        let other_threshold = Histogram {
            zero_threshold: 0.5,
            ..base.clone()
        };
        assert_eq!(cut(&mut c, &other_threshold), CounterResetHeader::Unknown);
        let told = Histogram {
            counter_reset_hint: CounterResetHint::CounterReset,
            ..base.clone()
        };
        assert_eq!(cut(&mut c, &told), CounterResetHeader::CounterReset);
        // The float appender marks only resets (as Prometheus's does).
        let mut f = FloatHistogramChunk::new();
        f.append(0, &base.to_float()).unwrap();
        match f.append(1, &other_schema.to_float()) {
            Ok(Appended::Cut(next)) => assert_eq!(next.header(), CounterResetHeader::Unknown),
            other => panic!("{other:?}"),
        }
        match f.append(1, &lower.to_float()) {
            Ok(Appended::Cut(next)) => {
                assert_eq!(next.header(), CounterResetHeader::CounterReset)
            }
            other => panic!("{other:?}"),
        }
        // A chunk cut for time or size: "no reset" when the sample continues the counter.
        let more = hist(1, &[span(0, 2)], &[6, 6], &[], &[], 3);
        let next = IntHistogramChunk::continuing(&c, 5, &more).unwrap();
        assert_eq!(next.header(), CounterResetHeader::NotCounterReset);
        let next = IntHistogramChunk::continuing(&c, 5, &lower).unwrap();
        assert_eq!(next.header(), CounterResetHeader::CounterReset);
        // Custom bounds that change are a reset.
        let nhcb = Histogram {
            custom_values: vec![1.0, 2.0].into(),
            ..hist(CUSTOM_BUCKETS_SCHEMA, &[span(0, 2)], &[1, 1], &[], &[], 0)
        };
        let mut c = IntHistogramChunk::new();
        c.append(0, &nhcb).unwrap();
        let moved = Histogram {
            custom_values: vec![1.0, 3.0].into(),
            ..nhcb.clone()
        };
        assert_eq!(cut(&mut c, &moved), CounterResetHeader::CounterReset);
        let same = Histogram {
            count: 3,
            positive_buckets: vec![1, 1],
            sum: 4.0,
            ..nhcb.clone()
        };
        assert!(matches!(c.append(2, &same), Ok(Appended::InPlace)));
        let back: Vec<_> = c.iter().collect();
        assert_eq!(&back[1].1.custom_values[..], &[1.0, 2.0]);
    }

    #[test]
    fn custom_bounds_of_both_encodings_survive_a_chunk() {
        // Short varbits (whole thousandths up to 33554.43) and raw 64-bit bounds mixed.
        let bounds: Vec<f64> = vec![-1.0, 0.0, 0.0001, 0.25, 1.0, 33_554.43, 33_554.431, 1e300];
        let h = Histogram {
            custom_values: bounds.clone().into(),
            zero_threshold: 0.0,
            ..hist(
                CUSTOM_BUCKETS_SCHEMA,
                &[span(0, 3), span(4, 2)],
                &[1, 2, 3, 4, 5],
                &[],
                &[],
                0,
            )
        };
        assert_eq!(h.validate(), Ok(()));
        let later = Histogram {
            count: h.count + 1,
            positive_buckets: vec![2, 1, 1, 1, 1],
            ..h.clone()
        };
        let ints = append_all(&[(1, h.clone()), (2, later.clone())]);
        let floats = append_all(&[(1, h.to_float()), (2, later.to_float())]);
        assert_eq!((ints.len(), floats.len()), (1, 1));
        for (_, back) in decoded(&ints) {
            assert_eq!(&back.custom_values[..], &bounds[..]);
        }
        for (_, back) in decoded(&floats) {
            assert_eq!(&back.custom_values[..], &bounds[..]);
        }
        assert_eq!(observed(&decoded(&ints)[1].1), observed(&later));
    }

    #[test]
    fn staleness_markers_are_empty_and_only_stale_may_follow() {
        let h = hist(0, &[span(0, 1)], &[4], &[], &[], 0);
        let mut c = IntHistogramChunk::new();
        c.append(0, &h).unwrap();
        // A stale marker from a client may carry anything else; it is encoded empty.
        let marker = Histogram {
            sum: stale_nan(),
            ..h.clone()
        };
        assert!(matches!(c.append(1, &marker), Ok(Appended::InPlace)));
        assert!(matches!(c.append(2, &marker), Ok(Appended::InPlace)));
        match c.append(3, &h) {
            Ok(Appended::Cut(next)) => assert_eq!(next.header(), CounterResetHeader::Unknown),
            other => panic!("{other:?}"),
        }
        let back: Vec<_> = c.iter().collect();
        assert_eq!(back.len(), 3);
        for (_, s) in &back[1..] {
            assert!(s.is_stale());
            // Nothing but the sum (NaN, so compared apart).
            assert_eq!(
                &Histogram {
                    sum: 0.0,
                    ..s.clone()
                },
                &Histogram::default()
            );
        }
        // A chunk may start stale; its layout is then empty.
        let mut c = FloatHistogramChunk::new();
        c.append(0, &marker.to_float()).unwrap();
        assert!(matches!(
            c.append(1, &marker.to_float()),
            Ok(Appended::InPlace)
        ));
        assert!(matches!(c.append(2, &h.to_float()), Ok(Appended::Cut(_))));
        assert!(c.iter().all(|(_, s)| s.is_stale()));
    }

    #[test]
    fn gauge_histograms_go_down_and_change_buckets_both_ways() {
        let gauge = |pos: &[Span], p: &[u64]| Histogram {
            counter_reset_hint: CounterResetHint::Gauge,
            ..hist(0, pos, p, &[], &[], 0)
        };
        let mut c = IntHistogramChunk::new();
        let samples = [
            gauge(&[span(0, 2)], &[5, 5]),
            gauge(&[span(0, 1)], &[1]),
            gauge(&[span(1, 2)], &[0, 9]),
            gauge(&[span(0, 3)], &[0, 0, 0]),
        ];
        for (t, h) in samples.iter().enumerate() {
            assert!(!matches!(c.append(t as i64, h), Ok(Appended::Cut(_))));
        }
        assert_eq!(c.header(), CounterResetHeader::Gauge);
        let back: Vec<_> = c.iter().collect();
        for (h, (_, b)) in samples.iter().zip(&back) {
            assert_eq!(observed(h), observed(b));
            assert_eq!(b.counter_reset_hint, CounterResetHint::Gauge);
        }
        // A counter histogram after a gauge chunk starts a new chunk.
        let counter = hist(0, &[span(0, 1)], &[1], &[], &[], 0);
        match c.append(9, &counter) {
            Ok(Appended::Cut(next)) => {
                assert_eq!(next.header(), CounterResetHeader::NotCounterReset)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_histograms_are_refused_not_encoded() {
        let mut h = hist(0, &[span(0, 2)], &[1, 1], &[], &[], 0);
        h.positive_buckets.pop();
        let mut c = IntHistogramChunk::new();
        assert!(matches!(
            c.append(0, &h),
            Err(HistogramError::SpansBucketsMismatch { .. })
        ));
        assert!(c.is_empty());
        // A schema the decoder would not read back is refused too.
        for schema in [9, 52, -10, i32::MAX] {
            let h = Histogram {
                schema,
                ..hist(0, &[span(0, 1)], &[1], &[], &[], 0)
            };
            assert_eq!(
                c.append(0, &h).err(),
                Some(HistogramError::InvalidSchema(schema))
            );
        }
        assert!(c.is_empty());
    }

    #[test]
    fn nan_sums_and_float_specials_are_bit_exact() {
        let odd_nan = f64::from_bits(0x7ff8_0000_0000_0001);
        let mut samples = Vec::new();
        for (i, sum) in [f64::NAN, 1.0, odd_nan, -0.0, f64::INFINITY, 1e-300]
            .iter()
            .enumerate()
        {
            let mut h = hist(0, &[span(0, 1)], &[i as u64], &[], &[], 0).to_float();
            h.sum = *sum;
            h.positive_buckets[0] = [0.5, f64::NAN, 1e300, 0.0, 3.25, 4.0][i];
            samples.push((i as i64, h));
        }
        let chunks = append_all(&samples);
        let back = decoded(&chunks);
        for ((_, h), (_, b)) in samples.iter().zip(&back) {
            assert_eq!(b.sum.to_bits(), h.sum.to_bits());
            assert_eq!(
                b.positive_buckets[0].to_bits(),
                h.positive_buckets[0].to_bits()
            );
        }
    }

    /// Chunks that announce more than their bytes hold, or layouts out of range.
    #[test]
    fn hostile_layouts_are_errors() {
        // A huge span count with no bytes behind it.
        let mut w = BitWriter::with_header(HEADER_SIZE);
        w.bytes_mut()[1] = 1;
        put_zero_threshold(&mut w, 0.0);
        put_varbit_int(&mut w, 0);
        put_varbit_uint(&mut w, u64::MAX);
        let first = decode_histogram_chunk::<Histogram>(w.bytes()).next();
        assert_eq!(first, Some(Err(ChunkError::BadLayout)));
        // One span of 2^32 - 1 buckets: more than the rest could hold.
        let mut w = BitWriter::with_header(HEADER_SIZE);
        w.bytes_mut()[1] = 1;
        put_zero_threshold(&mut w, 0.0);
        put_varbit_int(&mut w, 0);
        put_spans(&mut w, &[span(0, u32::MAX)]);
        put_spans(&mut w, &[]);
        put_varbit_int(&mut w, 0);
        w.write_bits(0, 64);
        let first = decode_histogram_chunk::<FloatHistogram>(w.bytes()).next();
        assert_eq!(first, Some(Err(ChunkError::BadLayout)));
        // A reserved schema and one Prometheus does not know.
        for schema in [9i64, 52, 53, -10, 1 << 40] {
            let mut w = BitWriter::with_header(HEADER_SIZE);
            w.bytes_mut()[1] = 1;
            put_zero_threshold(&mut w, 0.0);
            put_varbit_int(&mut w, schema);
            let first = decode_histogram_chunk::<Histogram>(w.bytes()).next();
            assert_eq!(first, Some(Err(ChunkError::BadSchema(schema))));
        }
        assert_eq!(
            decode_histogram_chunk::<Histogram>(&[0, 1]).next(),
            Some(Err(ChunkError::MissingHeader))
        );
    }

    /// Any bytes, and damaged real chunks: no panic, never more samples than announced.
    #[test]
    fn garbage_never_panics() {
        let mut rng = SmallRng::seed_from_u64(11);
        let mut seeds = Vec::new();
        for _ in 0..20 {
            let len = rng.random_range(1..40);
            let samples = random_series(&mut rng, len);
            for c in append_all(&samples) {
                seeds.push(c.bytes().to_vec());
            }
            let floats: Vec<_> = samples.iter().map(|(t, h)| (*t, h.to_float())).collect();
            for c in append_all(&floats) {
                seeds.push(c.bytes().to_vec());
            }
        }
        for round in 0..20_000 {
            let mut bytes = if round % 4 == 0 {
                (0..rng.random_range(0..200))
                    .map(|_| rng.random())
                    .collect()
            } else {
                seeds[rng.random_range(0..seeds.len())].clone()
            };
            for _ in 0..rng.random_range(1..4) {
                if bytes.is_empty() {
                    break;
                }
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..4) {
                    0 => bytes[at] ^= 1 << rng.random_range(0..8),
                    1 => bytes[at] = rng.random(),
                    2 => bytes.truncate(at),
                    _ => {
                        bytes.insert(at, rng.random());
                    }
                }
            }
            let announced = bytes
                .get(..2)
                .map_or(0, |h| u16::from_be_bytes([h[0], h[1]]));
            let ints = decode_histogram_chunk::<Histogram>(&bytes).count();
            let floats = decode_histogram_chunk::<FloatHistogram>(&bytes).count();
            assert!(ints <= usize::from(announced).max(1));
            assert!(floats <= usize::from(announced).max(1));
        }
    }
}
