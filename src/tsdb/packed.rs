//! Packed columns: the sample encoding of sealed blocks (chunks file version 2, ADR 0002
//! and 0026). The head and remote read keep Prometheus's XOR chunks (`chunk`); a block
//! stores a series' timestamps and values as two columns, each zstd-compressed when
//! that is smaller, so identical timestamp columns (every series of one scrape target)
//! can be stored once per block.
//!
//! Owns: encoding and decoding the timestamp and value columns. Calls zstd, and `chunk` for the zig-zag mapping.
//!
//! Bit-exactness is the contract: every value decodes to the bits it was given (NaN
//! payloads, stale markers, -0.0, infinities, subnormals). Values are written as
//! decimal mantissas only where `mantissa -> f64` was checked to give back the same
//! bits; any other value is an exception stored as its raw 64 bits.
//!
//! A column body is `byte compression (0 stored, 1 zstd), [uvarint raw length if zstd],
//! data`. Raw streams:
//! - timestamps: `uvarint n, varint t0, uvarint t1 - t0 (wrapping), zig-zag varint
//!   delta-of-delta*` (15 s scrapes on the grid cost a zero byte each before zstd);
//! - values: `uvarint n, byte mode`, then
//!   - mode 0, decimal: `byte scale K (0..=18), byte rule (0: m / 10^K, 1: m * 1e-K),
//!     byte order (1: delta, 2: delta-of-delta), varint m0, zig-zag varints (n - 1),
//!     uvarint exception count, (uvarint index gap, u64 LE raw bits)*`;
//!   - mode 1, raw: the XOR of each value's bits with the previous value's bits, as 8
//!     byte planes (all most significant bytes first), which zstd compresses where the
//!     sign and exponent repeat.
//!
//! Decoding never panics on damaged input: every length is bounded (`MAX_SAMPLES`) and
//! every read is checked, giving a `PackedError`.

use std::fmt;

use super::chunk::{unzigzag, zigzag};

/// Most samples one column may hold (a block chunk holds far fewer; the bound keeps a
/// damaged length from allocating without limit).
pub const MAX_SAMPLES: usize = 1 << 16;
/// Largest raw column: 10 bytes per varint plus headers, for `MAX_SAMPLES` values with
/// an exception each.
const MAX_RAW_LEN: usize = 64 + MAX_SAMPLES * 20;
/// zstd level: measured in bench/RESULTS.md ("Block encoding"); higher levels gained
/// little on columns of a few hundred samples.
const ZSTD_LEVEL: i32 = 3;

const STORED: u8 = 0;
const ZSTD: u8 = 1;
const MODE_DECIMAL: u8 = 0;
const MODE_RAW: u8 = 1;
const RULE_DIV: u8 = 0;
const RULE_MUL: u8 = 1;
const MAX_SCALE: usize = 18;

/// 10^k, exact in f64 for k <= 22.
const POW10: [f64; MAX_SCALE + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18,
];
/// The f64 nearest to 10^-k: exporters often compute `ticks * 0.01` rather than
/// `ticks / 100.0`, and the two differ in the last bit for some tick counts.
const INV10: [f64; MAX_SCALE + 1] = [
    1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12, 1e-13, 1e-14,
    1e-15, 1e-16, 1e-17, 1e-18,
];

/// Why a packed column could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PackedError {
    /// The data ended before the announced content.
    Truncated,
    /// A varint longer than 64 bits.
    VarintOverflow,
    /// An unknown compression, mode, rule or order byte, or a scale above 18.
    UnknownFormat(u8),
    /// More samples (or a larger raw stream) than a column may hold.
    TooLarge(u64),
    /// zstd refused the data or it decompressed to another length than announced.
    Decompress(String),
    /// Bytes left over after the announced content.
    TrailingBytes,
    /// An exception index outside the column.
    BadException,
}

impl fmt::Display for PackedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackedError::Truncated => f.write_str("packed column truncated"),
            PackedError::VarintOverflow => f.write_str("packed column varint overflows 64 bits"),
            PackedError::UnknownFormat(b) => write!(f, "packed column has unknown format byte {b}"),
            PackedError::TooLarge(n) => write!(f, "packed column announces {n}, above the limit"),
            PackedError::Decompress(e) => write!(f, "packed column does not decompress: {e}"),
            PackedError::TrailingBytes => f.write_str("packed column has trailing bytes"),
            PackedError::BadException => f.write_str("packed column exception index out of range"),
        }
    }
}

impl std::error::Error for PackedError {}

fn put_uvarint(buf: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        buf.push((x as u8) | 0x80);
        x >>= 7;
    }
    buf.push(x as u8);
}

fn uvarint_len(x: u64) -> usize {
    (64 - (x | 1).leading_zeros() as usize).div_ceil(7)
}

/// A checked reader over a raw column.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, PackedError> {
        let b = *self.b.get(self.pos).ok_or(PackedError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn uvarint(&mut self) -> Result<u64, PackedError> {
        let mut x = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(PackedError::VarintOverflow);
            }
            x |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(x);
            }
        }
        Err(PackedError::VarintOverflow)
    }

    fn varint(&mut self) -> Result<i64, PackedError> {
        self.uvarint().map(unzigzag)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], PackedError> {
        let end = self.pos.checked_add(n).ok_or(PackedError::Truncated)?;
        let s = self.b.get(self.pos..end).ok_or(PackedError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    /// A sample count, bounded by `MAX_SAMPLES`.
    fn count(&mut self) -> Result<usize, PackedError> {
        let n = self.uvarint()?;
        if n > MAX_SAMPLES as u64 {
            return Err(PackedError::TooLarge(n));
        }
        Ok(n as usize)
    }

    fn finish(&self) -> Result<(), PackedError> {
        if self.pos == self.b.len() {
            Ok(())
        } else {
            Err(PackedError::TrailingBytes)
        }
    }
}

/// Wraps a raw stream as a column body: zstd-compressed when that is smaller.
fn compress(raw: Vec<u8>) -> Vec<u8> {
    if let Ok(z) = zstd::bulk::compress(&raw, ZSTD_LEVEL) {
        if z.len() + 1 + uvarint_len(raw.len() as u64) < raw.len() + 1 {
            let mut out = Vec::with_capacity(z.len() + 6);
            out.push(ZSTD);
            put_uvarint(&mut out, raw.len() as u64);
            out.extend_from_slice(&z);
            return out;
        }
    }
    let mut out = Vec::with_capacity(raw.len() + 1);
    out.push(STORED);
    out.extend_from_slice(&raw);
    out
}

/// The raw stream of a column body (decompressed when needed).
fn decompress(body: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, PackedError> {
    let mut c = Cursor { b: body, pos: 0 };
    match c.byte()? {
        STORED => Ok(std::borrow::Cow::Borrowed(&body[1..])),
        ZSTD => {
            let len = c.uvarint()?;
            if len > MAX_RAW_LEN as u64 {
                return Err(PackedError::TooLarge(len));
            }
            let raw = zstd::bulk::decompress(&body[c.pos..], len as usize)
                .map_err(|e| PackedError::Decompress(e.to_string()))?;
            if raw.len() as u64 != len {
                return Err(PackedError::Decompress(format!(
                    "{} bytes instead of {len}",
                    raw.len()
                )));
            }
            Ok(std::borrow::Cow::Owned(raw))
        }
        other => Err(PackedError::UnknownFormat(other)),
    }
}

// ---- timestamps ----

/// Encodes a timestamp column (any order; blocks give increasing times).
pub fn encode_times(ts: &[i64]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(ts.len() + 16);
    put_uvarint(&mut raw, ts.len() as u64);
    let mut prev_t = 0i64;
    let mut prev_delta = 0i64;
    for (i, &t) in ts.iter().enumerate() {
        match i {
            0 => put_uvarint(&mut raw, zigzag(t)),
            1 => {
                prev_delta = t.wrapping_sub(prev_t);
                put_uvarint(&mut raw, prev_delta as u64);
            }
            _ => {
                let delta = t.wrapping_sub(prev_t);
                put_uvarint(&mut raw, zigzag(delta.wrapping_sub(prev_delta)));
                prev_delta = delta;
            }
        }
        prev_t = t;
    }
    compress(raw)
}

/// Decodes a timestamp column into `out` (cleared first).
pub fn decode_times(body: &[u8], out: &mut Vec<i64>) -> Result<(), PackedError> {
    let raw = decompress(body)?;
    let mut c = Cursor { b: &raw, pos: 0 };
    let n = c.count()?;
    out.clear();
    out.reserve(n);
    let mut t = 0i64;
    let mut delta = 0i64;
    for i in 0..n {
        match i {
            0 => t = c.varint()?,
            1 => {
                delta = c.uvarint()? as i64;
                t = t.wrapping_add(delta);
            }
            _ => {
                delta = delta.wrapping_add(c.varint()?);
                t = t.wrapping_add(delta);
            }
        }
        out.push(t);
    }
    c.finish()
}

// ---- values ----

/// How mantissas turn back into values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    Div,
    Mul,
}

impl Rule {
    fn value(self, m: i64, scale: usize) -> f64 {
        match self {
            Rule::Div => m as f64 / POW10[scale],
            Rule::Mul => m as f64 * INV10[scale],
        }
    }

    /// The mantissa of `v` at `scale` if it gives back exactly `v`'s bits.
    fn mantissa(self, v: f64, scale: usize) -> Option<i64> {
        let x = v * POW10[scale];
        // Beyond 2^62 the mantissa would not survive `as i64` (and is not exact anyway);
        // NaN and infinities have no mantissa.
        if !x.is_finite() || x.abs() >= 4.6e18 {
            return None;
        }
        let m = x.round() as i64;
        (self.value(m, scale).to_bits() == v.to_bits()).then_some(m)
    }

    /// The smallest scale at which `v` is an exact decimal, if any.
    fn min_scale(self, v: f64) -> Option<usize> {
        (0..=MAX_SCALE).find(|&k| self.mantissa(v, k).is_some())
    }
}

/// A decimal candidate for a value column.
struct Decimal {
    rule: Rule,
    scale: usize,
    mantissas: Vec<i64>,
    /// (index, raw bits) of values that are not exact at this scale.
    exceptions: Vec<(usize, u64)>,
}

impl Decimal {
    fn build(values: &[f64], rule: Rule, scale: usize) -> Decimal {
        let mut mantissas = Vec::with_capacity(values.len());
        let mut exceptions = Vec::new();
        let mut prev = 0i64;
        for (i, &v) in values.iter().enumerate() {
            match rule.mantissa(v, scale) {
                Some(m) => {
                    mantissas.push(m);
                    prev = m;
                }
                None => {
                    // Repeat the previous mantissa so the exception costs no delta.
                    mantissas.push(prev);
                    exceptions.push((i, v.to_bits()));
                }
            }
        }
        Decimal {
            rule,
            scale,
            mantissas,
            exceptions,
        }
    }

    /// Raw bytes this candidate takes with the given order (the choice's yardstick).
    fn cost(&self, order: u8) -> usize {
        let residuals: usize = residuals(&self.mantissas, order)
            .map(|r| uvarint_len(zigzag(r)))
            .sum();
        residuals + self.exceptions.len() * 10
    }

    fn write(&self, order: u8, raw: &mut Vec<u8>) {
        raw.push(MODE_DECIMAL);
        raw.push(self.scale as u8);
        raw.push(match self.rule {
            Rule::Div => RULE_DIV,
            Rule::Mul => RULE_MUL,
        });
        raw.push(order);
        if let Some(&m0) = self.mantissas.first() {
            put_uvarint(raw, zigzag(m0));
        }
        for r in residuals(&self.mantissas, order) {
            put_uvarint(raw, zigzag(r));
        }
        put_uvarint(raw, self.exceptions.len() as u64);
        let mut prev = 0;
        for &(i, bits) in &self.exceptions {
            put_uvarint(raw, (i - prev) as u64);
            raw.extend_from_slice(&bits.to_le_bytes());
            prev = i;
        }
    }
}

/// The residuals after the first mantissa: deltas (order 1) or deltas of deltas
/// (order 2, the first one a plain delta), all wrapping.
fn residuals(m: &[i64], order: u8) -> impl Iterator<Item = i64> + '_ {
    (1..m.len()).map(move |i| {
        let delta = m[i].wrapping_sub(m[i - 1]);
        if order == 2 && i >= 2 {
            delta.wrapping_sub(m[i - 1].wrapping_sub(m[i - 2]))
        } else {
            delta
        }
    })
}

/// The cheapest decimal encoding of `values`: for each rule, every scale some value
/// needs (usually one or two), with deltas or deltas of deltas.
fn best_decimal(values: &[f64]) -> Option<(Decimal, u8, usize)> {
    let mut best: Option<(Decimal, u8, usize)> = None;
    for rule in [Rule::Div, Rule::Mul] {
        let mut scales: Vec<usize> = values.iter().filter_map(|&v| rule.min_scale(v)).collect();
        scales.sort_unstable();
        scales.dedup();
        for scale in scales {
            let d = Decimal::build(values, rule, scale);
            let (c1, c2) = (d.cost(1), d.cost(2));
            let (order, cost) = if c2 < c1 { (2, c2) } else { (1, c1) };
            if best.as_ref().is_none_or(|b| cost < b.2) {
                best = Some((d, order, cost));
            }
        }
    }
    best
}

fn raw_xor(values: &[f64], raw: &mut Vec<u8>) {
    raw.push(MODE_RAW);
    let mut prev = 0u64;
    let xors: Vec<u64> = values
        .iter()
        .map(|v| {
            let x = v.to_bits() ^ prev;
            prev = v.to_bits();
            x
        })
        .collect();
    for plane in (0..8).rev() {
        raw.extend(xors.iter().map(|x| (x >> (plane * 8)) as u8));
    }
}

/// Encodes a value column: the smaller of the best decimal encoding and the raw bits.
pub fn encode_values(values: &[f64]) -> Vec<u8> {
    let mut head = Vec::with_capacity(4);
    put_uvarint(&mut head, values.len() as u64);
    let mut raw = head.clone();
    raw_xor(values, &mut raw);
    let raw = compress(raw);
    match best_decimal(values) {
        // Exact decimals without exceptions beat the raw bits nearly always; compare
        // compressed sizes only when exceptions or wide residuals make it a contest.
        Some((d, order, cost)) => {
            let mut dec = head;
            d.write(order, &mut dec);
            let dec = compress(dec);
            if d.exceptions.is_empty() && cost <= 4 * values.len() || dec.len() <= raw.len() {
                dec
            } else {
                raw
            }
        }
        None => raw,
    }
}

/// Decodes a value column into `out` (cleared first).
pub fn decode_values(body: &[u8], out: &mut Vec<f64>) -> Result<(), PackedError> {
    let raw = decompress(body)?;
    let mut c = Cursor { b: &raw, pos: 0 };
    let n = c.count()?;
    out.clear();
    out.reserve(n);
    match c.byte()? {
        MODE_RAW => {
            let planes = c.bytes(n * 8)?;
            let mut prev = 0u64;
            for i in 0..n {
                let mut x = 0u64;
                for p in 0..8 {
                    x = (x << 8) | u64::from(planes[p * n + i]);
                }
                prev ^= x;
                out.push(f64::from_bits(prev));
            }
        }
        MODE_DECIMAL => {
            let scale = c.byte()?;
            if usize::from(scale) > MAX_SCALE {
                return Err(PackedError::UnknownFormat(scale));
            }
            let scale = usize::from(scale);
            let rule = match c.byte()? {
                RULE_DIV => Rule::Div,
                RULE_MUL => Rule::Mul,
                other => return Err(PackedError::UnknownFormat(other)),
            };
            let order = c.byte()?;
            if order != 1 && order != 2 {
                return Err(PackedError::UnknownFormat(order));
            }
            let mut m = 0i64;
            let mut delta = 0i64;
            for i in 0..n {
                if i == 0 {
                    m = c.varint()?;
                } else {
                    let r = c.varint()?;
                    delta = if order == 2 && i >= 2 {
                        delta.wrapping_add(r)
                    } else {
                        r
                    };
                    m = m.wrapping_add(delta);
                }
                out.push(rule.value(m, scale));
            }
            let exceptions = c.uvarint()?;
            let mut at = 0usize;
            for _ in 0..exceptions {
                let gap = usize::try_from(c.uvarint()?).map_err(|_| PackedError::BadException)?;
                at = at.checked_add(gap).ok_or(PackedError::BadException)?;
                let bits: [u8; 8] = c.bytes(8)?.try_into().map_err(|_| PackedError::Truncated)?;
                *out.get_mut(at).ok_or(PackedError::BadException)? =
                    f64::from_bits(u64::from_le_bytes(bits));
            }
        }
        other => return Err(PackedError::UnknownFormat(other)),
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::STALE_NAN_BITS;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn round_trip_values(values: &[f64]) -> Vec<u8> {
        let body = encode_values(values);
        let mut back = Vec::new();
        decode_values(&body, &mut back).expect("decodes");
        let want: Vec<u64> = values.iter().map(|v| v.to_bits()).collect();
        let got: Vec<u64> = back.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want);
        body
    }

    fn round_trip_times(ts: &[i64]) {
        let body = encode_times(ts);
        let mut back = Vec::new();
        decode_times(&body, &mut back).expect("decodes");
        assert_eq!(back, ts);
    }

    /// Values that break naive decimal conversions, mixed into ordinary ones.
    fn adversarial() -> Vec<f64> {
        vec![
            0.0,
            -0.0,
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7ff8_0000_0000_0001),
            f64::from_bits(0xfff0_0000_dead_beef),
            f64::from_bits(STALE_NAN_BITS),
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::from_bits(1),
            -f64::from_bits(1),
            f64::from_bits(0x000f_ffff_ffff_ffff),
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            0.1,
            0.2,
            0.30000000000000004,
            1e18,
            4.6e18,
            9.2e18,
            -9.3e18,
            2f64.powi(53) + 2.0,
            1.7e308,
            123.456,
            1e-18,
            1.5e-19,
            0.07,
            1.0 / 3.0,
        ]
    }

    #[test]
    fn adversarial_values_are_bit_exact_in_every_order() {
        let base = adversarial();
        round_trip_values(&base);
        round_trip_values(&base.iter().rev().copied().collect::<Vec<_>>());
        for v in &base {
            round_trip_values(&[*v]);
            round_trip_values(&[*v, *v, 1.0, *v]);
            round_trip_values(&[0.01, 0.02, *v, 0.04, 0.05]);
        }
        round_trip_values(&[]);
    }

    #[test]
    fn random_values_round_trip() {
        let mut rng = SmallRng::seed_from_u64(14);
        for round in 0..300 {
            let n = rng.random_range(1..600);
            let values: Vec<f64> = (0..n)
                .map(|i| match round % 6 {
                    0 => f64::from_bits(rng.random::<u64>()),
                    1 => (rng.random_range(-1_000_000i64..1_000_000) as f64) * 0.01,
                    2 => (rng.random_range(0i64..1 << 40) as f64) / 1000.0,
                    3 => i as f64 * 1024.0 + rng.random_range(0..3) as f64,
                    4 => {
                        if rng.random_bool(0.1) {
                            adversarial()[rng.random_range(0..adversarial().len())]
                        } else {
                            rng.random::<f64>()
                        }
                    }
                    _ => rng.random_range(-5.0..5.0f64).round() * 0.1,
                })
                .collect();
            round_trip_values(&values);
        }
    }

    #[test]
    fn counters_in_hundredths_take_little_space() {
        // Both ways exporters build such values: ticks / 100 and ticks * 0.01.
        let mut ticks = 123_456_789i64;
        let mut div = Vec::new();
        let mut mul = Vec::new();
        for i in 0..480 {
            ticks += 100 + (i * 7) % 30;
            div.push(ticks as f64 / 100.0);
            mul.push(ticks as f64 * 0.01);
        }
        for values in [div, mul] {
            let body = round_trip_values(&values);
            assert!(body.len() < 480, "{} bytes", body.len());
        }
    }

    #[test]
    fn times_round_trip_with_jitter_and_extremes() {
        let mut rng = SmallRng::seed_from_u64(7);
        let grid: Vec<i64> = (0..480).map(|i| 1_700_000_000_000 + i * 15_000).collect();
        round_trip_times(&grid);
        assert!(encode_times(&grid).len() < 40);
        let jittered: Vec<i64> = grid.iter().map(|t| t + rng.random_range(-2..=2)).collect();
        round_trip_times(&jittered);
        round_trip_times(&[]);
        round_trip_times(&[i64::MIN]);
        round_trip_times(&[i64::MIN, i64::MAX, 0, -1, i64::MAX, i64::MIN]);
        let random: Vec<i64> = (0..300).map(|_| rng.random()).collect();
        round_trip_times(&random);
    }

    #[test]
    fn damaged_columns_give_errors_not_panics() {
        let mut rng = SmallRng::seed_from_u64(99);
        let values: Vec<f64> = (0..200).map(|i| i as f64 * 0.25).collect();
        let noisy: Vec<f64> = (0..200).map(|_| rng.random::<f64>()).collect();
        let times: Vec<i64> = (0..200).map(|i| i * 15_000 + (i % 3)).collect();
        let bodies = [
            encode_values(&values),
            encode_values(&noisy),
            encode_times(&times),
        ];
        let mut vs = Vec::new();
        let mut ts = Vec::new();
        for body in &bodies {
            for cut in 0..body.len() {
                let _ = decode_values(&body[..cut], &mut vs);
                let _ = decode_times(&body[..cut], &mut ts);
            }
            for _ in 0..2_000 {
                let mut bad = body.clone();
                let i = rng.random_range(0..bad.len());
                bad[i] ^= 1 << rng.random_range(0..8);
                let _ = decode_values(&bad, &mut vs);
                let _ = decode_times(&bad, &mut ts);
            }
        }
        for len in 0..200 {
            let garbage: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = decode_values(&garbage, &mut vs);
            let _ = decode_times(&garbage, &mut ts);
        }
        assert_eq!(decode_values(&[], &mut vs), Err(PackedError::Truncated));
        assert_eq!(
            decode_values(&[STORED, 0x80, 0x80, 0x80, 0x80, 0x01], &mut vs),
            Err(PackedError::TooLarge(1 << 28))
        );
        assert_eq!(
            decode_values(&[7], &mut vs),
            Err(PackedError::UnknownFormat(7))
        );
        assert_eq!(
            decode_values(&[STORED, 1, MODE_RAW, 0, 0, 0, 0, 0, 0, 0, 0, 9], &mut vs),
            Err(PackedError::TrailingBytes)
        );
        // A decimal column whose exception points past the end.
        assert_eq!(
            decode_values(
                &[
                    STORED,
                    1,
                    MODE_DECIMAL,
                    0,
                    0,
                    1,
                    2,
                    1,
                    5,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0
                ],
                &mut vs
            ),
            Err(PackedError::BadException)
        );
    }
}
