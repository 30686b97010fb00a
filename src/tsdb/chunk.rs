//! XOR chunks: Gorilla compression of float samples, byte-compatible with Prometheus's
//! `chunkenc.XORChunk`, so remote read can stream our chunks unchanged.
//!
//! Owns: the bit stream writer/reader and the XOR encoding of one float against its
//! predecessor (`write_xor`, `read_xor`), which the histogram chunks
//! (`histogram_chunk`) share for their sums and float counts. Calls only `model`.
//!
//! Layout (all bit fields most significant bit first):
//! - 2 bytes: big-endian sample count.
//! - sample 0: zig-zag varint timestamp, then the 64 raw bits of the value.
//! - sample 1: uvarint timestamp delta, then the XOR-encoded value.
//! - sample n: delta-of-delta of the timestamp in one of the buckets
//!   `0` (dod = 0), `10`+14 bits, `110`+17 bits, `1110`+20 bits, `1111`+64 bits, where
//!   an n-bit bucket holds -(2^(n-1)-1) ..= 2^(n-1) (Prometheus's asymmetric range);
//!   then the XOR-encoded value.
//! - XOR value: `0` if equal to the previous value; else `1` then either `0` + the
//!   meaningful bits inside the previous leading/trailing-zero window, or `1` + 5 bits
//!   leading zeros (clamped to 31) + 6 bits meaningful-bit count (64 stored as 0) + bits.

use std::fmt;

use crate::model::Sample;

/// Bytes before the first sample: the big-endian sample count.
const HEADER_SIZE: usize = 2;
/// Initial capacity and growth step of a chunk's buffer (a 120-sample chunk of typical
/// data takes a few hundred bytes).
const GROWTH_STEP: usize = 64;

/// Why a chunk could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// Shorter than the 2-byte header.
    MissingHeader,
    /// The stream ended before the announced number of samples was read.
    Truncated { decoded: u16, announced: u16 },
    /// A varint was longer than 64 bits.
    VarintOverflow,
    /// A leading-zero count and meaningful-bit count that add up to more than 64.
    BadValueWindow,
    /// A histogram chunk's schema that Timbala cannot read: unknown to Prometheus, or
    /// one of the finer schemas (9..=52) Prometheus reserves for future writers.
    BadSchema(i64),
    /// A histogram chunk's layout with a field out of range, or announcing more spans,
    /// buckets or bounds than the rest of the chunk could hold.
    BadLayout,
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::MissingHeader => f.write_str("chunk shorter than its header"),
            ChunkError::Truncated { decoded, announced } => {
                write!(f, "chunk truncated after {decoded} of {announced} samples")
            }
            ChunkError::VarintOverflow => f.write_str("chunk varint overflows 64 bits"),
            ChunkError::BadValueWindow => f.write_str("chunk value bit window exceeds 64"),
            ChunkError::BadSchema(s) => write!(f, "histogram chunk has unreadable schema {s}"),
            ChunkError::BadLayout => f.write_str("histogram chunk layout is out of range"),
        }
    }
}

impl std::error::Error for ChunkError {}

/// Appends bit fields, most significant bit first, to a byte vector.
#[derive(Clone, Debug, Default)]
pub(super) struct BitWriter {
    bytes: Vec<u8>,
    /// Unused low bits in the last byte (0 when the last byte is full).
    free: u32,
}

impl BitWriter {
    /// A writer whose bytes start with `header` zero bytes (a chunk's header).
    pub(super) fn with_header(header: usize) -> Self {
        let mut bytes = Vec::with_capacity(GROWTH_STEP.max(header));
        bytes.resize(header, 0);
        BitWriter { bytes, free: 0 }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes, for rewriting a header in place.
    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub(super) fn write_bit(&mut self, bit: bool) {
        self.write_bits(u64::from(bit), 1);
    }

    /// Writes the low `nbits` (<= 64) bits of `value`.
    pub(super) fn write_bits(&mut self, value: u64, mut nbits: u32) {
        while nbits > 0 {
            if self.free == 0 {
                if self.bytes.len() == self.bytes.capacity() {
                    // Grow in small steps: an open chunk lives as long as its series is
                    // active, and doubling would leave up to half of it unused.
                    self.bytes.reserve_exact(GROWTH_STEP);
                }
                self.bytes.push(0);
                self.free = 8;
            }
            let take = self.free.min(nbits);
            let part = (value >> (nbits - take)) & ((1u64 << take) - 1);
            if let Some(last) = self.bytes.last_mut() {
                *last |= (part as u8) << (self.free - take);
            }
            self.free -= take;
            nbits -= take;
        }
    }

    pub(super) fn write_byte(&mut self, b: u8) {
        self.write_bits(u64::from(b), 8);
    }
}

/// Reads bit fields, most significant bit first, from a byte slice.
pub(super) struct BitReader<'a> {
    bytes: &'a [u8],
    /// Position in bits from the start of `bytes`.
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        BitReader { bytes, pos: 0 }
    }

    /// Bits not read yet: an upper bound on how many fields can still follow, which
    /// decoders use to refuse announced sizes no stream of this length could hold.
    pub(super) fn bits_left(&self) -> usize {
        (self.bytes.len() * 8).saturating_sub(self.pos)
    }

    pub(super) fn read_bit(&mut self) -> Option<bool> {
        let byte = *self.bytes.get(self.pos / 8)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(bit == 1)
    }

    /// Reads `nbits` (<= 64) bits as an unsigned number.
    pub(super) fn read_bits(&mut self, nbits: u32) -> Option<u64> {
        if self.pos + nbits as usize > self.bytes.len() * 8 {
            return None;
        }
        // Fast path: the field lies within the 8 bytes from its first byte, so one
        // big-endian word load and two shifts read it. Byte by byte, decoding cost ~3x
        // more and was most of a dashboard query's select (RESULTS.md, issue 13).
        let first = self.pos / 8;
        let offset = (self.pos % 8) as u32;
        if nbits > 0 && nbits + offset <= 64 {
            if let Some(word) = self.bytes.get(first..first + 8) {
                let word = u64::from_be_bytes(word.try_into().expect("8 bytes"));
                self.pos += nbits as usize;
                return Some((word << offset) >> (64 - nbits));
            }
        }
        // The last 7 bytes of a chunk, and fields wider than what one load holds.
        let mut out = 0u64;
        let mut left = nbits;
        while left > 0 {
            let byte = self.bytes[self.pos / 8];
            let avail = 8 - (self.pos % 8) as u32;
            let take = avail.min(left);
            let part = (u64::from(byte) >> (avail - take)) & ((1u64 << take) - 1);
            // `take` may be 8 while `out` holds 56+ bits only when nbits == 64; a u64
            // shift by at most 8 never overflows.
            out = (out << take) | part;
            self.pos += take as usize;
            left -= take;
        }
        Some(out)
    }

    fn read_uvarint(&mut self) -> Result<Option<u64>, ChunkError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(b) = self.read_bits(8) else {
                return Ok(None);
            };
            if shift == 63 && b > 1 {
                return Err(ChunkError::VarintOverflow);
            }
            value |= (b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(Some(value));
            }
        }
        Err(ChunkError::VarintOverflow)
    }
}

fn put_uvarint(w: &mut BitWriter, mut x: u64) {
    while x >= 0x80 {
        w.write_byte((x as u8) | 0x80);
        x >>= 7;
    }
    w.write_byte(x as u8);
}

/// Zig-zag mapping of signed to unsigned integers (small magnitudes stay small); the
/// packed block columns use it too.
pub(super) fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

pub(super) fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Whether `x` fits an n-bit delta-of-delta bucket (Prometheus's `bitRange`).
pub(super) fn fits_bucket(x: i64, nbits: u32) -> bool {
    let half = 1i64 << (nbits - 1);
    -(half - 1) <= x && x <= half
}

/// The signed number an n-bit bucket (`fits_bucket`) holds: values above the bucket's
/// positive limit are negative numbers in two's complement. `size` is 1..=63.
pub(super) fn from_bucket(bits: u64, size: u32) -> i64 {
    if bits > 1 << (size - 1) {
        bits as i64 - (1i64 << size)
    } else {
        bits as i64
    }
}

/// Writes `v` XOR-encoded against `prev` (Prometheus's `xorWrite`): `0` when equal;
/// else `1`, then `0` + the meaningful bits inside the current leading/trailing-zero
/// window, or `1` + 5 bits leading zeros (clamped to 31) + 6 bits meaningful-bit count
/// (64 stored as 0) + the bits. `leading` is 0xff while no window exists.
#[inline]
pub(super) fn write_xor(w: &mut BitWriter, v: f64, prev: f64, leading: &mut u8, trailing: &mut u8) {
    let delta = v.to_bits() ^ prev.to_bits();
    if delta == 0 {
        w.write_bit(false);
        return;
    }
    w.write_bit(true);
    let new_leading = (delta.leading_zeros() as u8).min(31);
    let new_trailing = delta.trailing_zeros() as u8;
    if *leading != 0xff && new_leading >= *leading && new_trailing >= *trailing {
        let sig = 64 - u32::from(*leading) - u32::from(*trailing);
        w.write_bit(false);
        w.write_bits(delta >> *trailing, sig);
        return;
    }
    *leading = new_leading;
    *trailing = new_trailing;
    let sig = 64 - u32::from(new_leading) - u32::from(new_trailing);
    w.write_bit(true);
    w.write_bits(u64::from(new_leading), 5);
    // 64 meaningful bits do not fit 6 bits; it is written as 0 (never a real count).
    w.write_bits(u64::from(sig) & 0x3f, 6);
    w.write_bits(delta >> new_trailing, sig);
}

/// Reads a value written by `write_xor` into `bits` (the previous value's bits).
/// `Ok(None)` when the stream ends first.
#[inline]
pub(super) fn read_xor(
    r: &mut BitReader,
    bits: &mut u64,
    leading: &mut u8,
    trailing: &mut u8,
) -> Result<Option<()>, ChunkError> {
    let Some(changed) = r.read_bit() else {
        return Ok(None);
    };
    if !changed {
        return Ok(Some(()));
    }
    let Some(new_window) = r.read_bit() else {
        return Ok(None);
    };
    if new_window {
        let (Some(lead), Some(sig)) = (r.read_bits(5), r.read_bits(6)) else {
            return Ok(None);
        };
        let sig = if sig == 0 { 64 } else { sig as u8 };
        if u32::from(lead as u8) + u32::from(sig) > 64 {
            return Err(ChunkError::BadValueWindow);
        }
        *leading = lead as u8;
        *trailing = 64 - *leading - sig;
    }
    // Windows are only ever set above (leading + trailing <= 63) or start at 0/0 in a
    // reader, so `sig` is 1..=64.
    let sig = 64 - u32::from(*leading) - u32::from(*trailing);
    let Some(x) = r.read_bits(sig) else {
        return Ok(None);
    };
    // sig >= 1 here, so trailing <= 63 and the shift is defined.
    *bits ^= x << *trailing;
    Ok(Some(()))
}

/// An appendable XOR chunk.
#[derive(Clone, Debug)]
pub struct XorChunk {
    w: BitWriter,
    num: u16,
    min_t: i64,
    t: i64,
    v: f64,
    t_delta: u64,
    /// Leading zeros of the current value window; 0xff before any window exists.
    leading: u8,
    trailing: u8,
}

impl Default for XorChunk {
    fn default() -> Self {
        Self::new()
    }
}

impl XorChunk {
    pub fn new() -> Self {
        XorChunk {
            w: BitWriter::with_header(HEADER_SIZE),
            num: 0,
            min_t: i64::MIN,
            t: i64::MIN,
            v: 0.0,
            t_delta: 0,
            leading: 0xff,
            trailing: 0,
        }
    }

    /// Appends a sample. Callers keep timestamps increasing and stay below 65535 samples.
    pub fn append(&mut self, t: i64, v: f64) {
        match self.num {
            0 => {
                put_uvarint(&mut self.w, zigzag(t));
                self.w.write_bits(v.to_bits(), 64);
                self.min_t = t;
            }
            1 => {
                self.t_delta = t.wrapping_sub(self.t) as u64;
                put_uvarint(&mut self.w, self.t_delta);
                self.write_value(v);
            }
            _ => {
                let t_delta = t.wrapping_sub(self.t) as u64;
                let dod = t_delta.wrapping_sub(self.t_delta) as i64;
                self.write_dod(dod);
                self.t_delta = t_delta;
                self.write_value(v);
            }
        }
        self.t = t;
        self.v = v;
        self.num = self.num.saturating_add(1);
        self.w.bytes[..HEADER_SIZE].copy_from_slice(&self.num.to_be_bytes());
    }

    fn write_dod(&mut self, dod: i64) {
        let w = &mut self.w;
        if dod == 0 {
            w.write_bit(false);
        } else if fits_bucket(dod, 14) {
            w.write_bits(0b10, 2);
            w.write_bits(dod as u64, 14);
        } else if fits_bucket(dod, 17) {
            w.write_bits(0b110, 3);
            w.write_bits(dod as u64, 17);
        } else if fits_bucket(dod, 20) {
            w.write_bits(0b1110, 4);
            w.write_bits(dod as u64, 20);
        } else {
            w.write_bits(0b1111, 4);
            w.write_bits(dod as u64, 64);
        }
    }

    fn write_value(&mut self, v: f64) {
        write_xor(
            &mut self.w,
            v,
            self.v,
            &mut self.leading,
            &mut self.trailing,
        );
    }

    pub fn num_samples(&self) -> usize {
        usize::from(self.num)
    }

    pub fn is_empty(&self) -> bool {
        self.num == 0
    }

    /// The encoded chunk, header included, exactly as Prometheus stores it.
    pub fn bytes(&self) -> &[u8] {
        &self.w.bytes
    }

    /// Consumes the chunk, returning its encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.w.bytes
    }

    /// Timestamp of the first sample (`i64::MIN` when empty).
    pub fn min_time(&self) -> i64 {
        self.min_t
    }

    /// Timestamp of the last sample (`i64::MIN` when empty).
    pub fn max_time(&self) -> i64 {
        self.t
    }

    /// Value of the last sample (0.0 when empty).
    pub fn last_value(&self) -> f64 {
        self.v
    }

    /// The samples in order. The chunk was built by `append`, so it always decodes.
    pub fn iter(&self) -> impl Iterator<Item = Sample> + '_ {
        decode_xor(self.bytes()).map_while(Result::ok)
    }
}

/// Most samples one chunk can count (its header is a big-endian u16).
pub const MAX_SAMPLES_PER_CHUNK: usize = u16::MAX as usize - 1;

/// Time-sorted, deduplicated samples as XOR chunks of at most `per_chunk` samples each
/// (clamped to `1..=MAX_SAMPLES_PER_CHUNK`): remote read cuts at 120 as Prometheus's head
/// does; the fan-out's internal answers use long chunks, which cost fewer bytes.
pub fn encode_xor_chunks(
    samples: &[Sample],
    per_chunk: usize,
) -> impl Iterator<Item = XorChunk> + '_ {
    samples
        .chunks(per_chunk.clamp(1, MAX_SAMPLES_PER_CHUNK))
        .map(|window| {
            let mut chunk = XorChunk::new();
            for s in window {
                chunk.append(s.t, s.v);
            }
            chunk
        })
}

/// Decodes an XOR chunk (header included). Yields an error once and stops on garbage.
pub fn decode_xor(bytes: &[u8]) -> XorIter<'_> {
    match bytes.get(..HEADER_SIZE) {
        Some(header) => XorIter {
            r: BitReader::new(&bytes[HEADER_SIZE..]),
            announced: u16::from_be_bytes([header[0], header[1]]),
            decoded: 0,
            t: 0,
            v: 0,
            t_delta: 0,
            leading: 0,
            trailing: 0,
            failed: None,
        },
        None => XorIter {
            r: BitReader::new(&[]),
            announced: 0,
            decoded: 0,
            t: 0,
            v: 0,
            t_delta: 0,
            leading: 0,
            trailing: 0,
            failed: Some(ChunkError::MissingHeader),
        },
    }
}

/// Iterator over the samples of an encoded XOR chunk.
pub struct XorIter<'a> {
    r: BitReader<'a>,
    announced: u16,
    decoded: u16,
    t: i64,
    v: u64,
    t_delta: u64,
    leading: u8,
    trailing: u8,
    /// An error waiting to be yielded (then the iterator is exhausted).
    failed: Option<ChunkError>,
}

impl XorIter<'_> {
    fn truncated(&self) -> ChunkError {
        ChunkError::Truncated {
            decoded: self.decoded,
            announced: self.announced,
        }
    }

    fn read_next(&mut self) -> Result<Sample, ChunkError> {
        match self.decoded {
            0 => {
                let t = self.r.read_uvarint()?.ok_or_else(|| self.truncated())?;
                self.t = unzigzag(t);
                self.v = self.r.read_bits(64).ok_or_else(|| self.truncated())?;
            }
            1 => {
                self.t_delta = self.r.read_uvarint()?.ok_or_else(|| self.truncated())?;
                self.t = self.t.wrapping_add(self.t_delta as i64);
                self.read_value()?;
            }
            _ => {
                let dod = self.read_dod().ok_or_else(|| self.truncated())?;
                self.t_delta = self.t_delta.wrapping_add(dod as u64);
                self.t = self.t.wrapping_add(self.t_delta as i64);
                self.read_value()?;
            }
        }
        self.decoded += 1;
        Ok(Sample::new(self.t, f64::from_bits(self.v)))
    }

    fn read_dod(&mut self) -> Option<i64> {
        let mut prefix = 0u8;
        for _ in 0..4 {
            let bit = self.r.read_bit()?;
            prefix = (prefix << 1) | u8::from(bit);
            if !bit {
                break;
            }
        }
        let size = match prefix {
            0b0 => return Some(0),
            0b10 => 14,
            0b110 => 17,
            0b1110 => 20,
            _ => return self.r.read_bits(64).map(|b| b as i64),
        };
        self.r.read_bits(size).map(|bits| from_bucket(bits, size))
    }

    fn read_value(&mut self) -> Result<(), ChunkError> {
        read_xor(
            &mut self.r,
            &mut self.v,
            &mut self.leading,
            &mut self.trailing,
        )?
        .ok_or_else(|| self.truncated())
    }
}

impl Iterator for XorIter<'_> {
    type Item = Result<Sample, ChunkError>;

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
    use super::*;
    use crate::model::{stale_nan, STALE_NAN_BITS};

    fn round_trip(samples: &[(i64, f64)]) -> XorChunk {
        let mut c = XorChunk::new();
        for &(t, v) in samples {
            c.append(t, v);
        }
        let back: Vec<(i64, u64)> = decode_xor(c.bytes())
            .map(|s| s.map(|s| (s.t, s.v.to_bits())))
            .collect::<Result<_, _>>()
            .expect("decodes");
        let want: Vec<(i64, u64)> = samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
        assert_eq!(back, want);
        c
    }

    /// Bytes hand-derived from Prometheus's chunkenc/xor.go for four samples:
    /// (1000, 1.0), (2000, 1.0), (3000, 2.0), (4000, 8.0).
    /// - header 00 04
    /// - varint(1000) zig-zag = 2000 = d0 0f; 1.0 = 3f f0 00 00 00 00 00 00
    /// - uvarint(1000) = e8 07, then value unchanged: `0`
    /// - dod 0: `0`; 2.0 ^ 1.0 = 0x7ff0_0000_0000_0000: `1` `1` (new window),
    ///   leading 1 `00001`, 11 meaningful bits `001011`, `11111111111`
    /// - dod 0: `0`; 8.0 ^ 2.0 = 0x0020_0000_0000_0000 fits the window (leading 10 >= 1,
    ///   trailing 53 >= 52): `1` `0` then 11 bits `00000000010`
    /// - bits: 0 0 1 1 00001 001011 11111111111 0 1 0 00000000010 -> 30 97 ff d0 02
    #[test]
    fn matches_prometheus_test_vector() {
        let c = round_trip(&[(1000, 1.0), (2000, 1.0), (3000, 2.0), (4000, 8.0)]);
        assert_eq!(
            c.bytes(),
            &[
                0x00, 0x04, 0xd0, 0x0f, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0xe8, 0x07, 0x30, 0x97, 0xff,
                0xd0, 0x02
            ]
        );
    }

    /// dod of +8192 fits the 14-bit bucket (upper bound inclusive), -8192 does not.
    #[test]
    fn dod_bucket_bounds_match_prometheus() {
        assert!(fits_bucket(8192, 14));
        assert!(fits_bucket(-8191, 14));
        assert!(!fits_bucket(-8192, 14));
        assert!(!fits_bucket(8193, 14));
        let mut c = XorChunk::new();
        c.append(0, 0.0);
        c.append(10, 0.0);
        c.append(20 + 8192, 0.0);
        // header (2) + varint 0 (1) + 8 value bytes, then uvarint 10 = 0a; then value
        // bit `0`, `10` + 14 bits of 8192 (10000000000000), value bit `0`:
        // 0101 0000 0000 0000 00(pad) -> 50 00 00.
        assert_eq!(&c.bytes()[11..], &[0x0a, 0x50, 0x00, 0x00]);
        round_trip(&[
            (0, 0.0),
            (10, 0.0),
            (20 + 8192, 0.0),
            (30 + 8192 - 8191, 1.0),
        ]);
    }

    #[test]
    fn round_trips_all_buckets_and_negative_times() {
        let mut samples = vec![(-5_000i64, -1.5f64)];
        let deltas = [
            1i64,
            15_000,
            15_001,
            14_000,
            100_000,
            600_000,
            1 << 40,
            3,
            3,
            7,
        ];
        let mut t = -5_000;
        for (i, d) in deltas.iter().enumerate() {
            t += d;
            samples.push((t, i as f64 * 0.1 + 1e300));
        }
        round_trip(&samples);
    }

    #[test]
    fn nan_and_stale_markers_are_bit_exact() {
        let odd_nan = f64::from_bits(0x7ff8_0000_0000_0001);
        let c = round_trip(&[
            (1, f64::NAN),
            (2, stale_nan()),
            (3, 0.0),
            (4, -0.0),
            (5, odd_nan),
            (6, f64::INFINITY),
            (7, stale_nan()),
        ]);
        let stale: Vec<bool> = c.iter().map(|s| s.v.to_bits() == STALE_NAN_BITS).collect();
        assert_eq!(stale, [false, true, false, false, false, false, true]);
    }

    #[test]
    fn full_width_xor_uses_zero_for_64_bits() {
        // 0.0 ^ -NaN with all bits set -> no leading or trailing zeros.
        round_trip(&[(1, 0.0), (2, f64::from_bits(u64::MAX)), (3, 0.0), (4, 1.0)]);
    }

    #[test]
    fn tracks_times_and_counts() {
        let mut c = XorChunk::new();
        assert!(c.is_empty());
        for i in 0..120 {
            c.append(1_000 + i * 15_000, i as f64);
        }
        assert_eq!(c.num_samples(), 120);
        assert_eq!(c.min_time(), 1_000);
        assert_eq!(c.max_time(), 1_000 + 119 * 15_000);
        assert_eq!(c.iter().count(), 120);
        assert_eq!(u16::from_be_bytes([c.bytes()[0], c.bytes()[1]]), 120);
    }

    #[test]
    fn bit_fields_of_every_width_at_every_offset_read_back() {
        // Each width after a lead-in of every length, so fields start at every bit
        // offset, near the end of the bytes (the bytewise path) and away from it.
        for lead in 0..8u32 {
            let mut w = BitWriter::default();
            w.write_bits(0, lead);
            let fields: Vec<(u64, u32)> = (1..=64u32)
                .map(|n| (0xa5c3_9f17_e4d2_b681u64.rotate_left(n) >> (64 - n), n))
                .collect();
            for &(v, n) in &fields {
                w.write_bits(v, n);
            }
            let mut r = BitReader::new(&w.bytes);
            assert_eq!(r.read_bits(lead), Some(0));
            for &(v, n) in &fields {
                assert_eq!(r.read_bits(n), Some(v), "width {n} after {lead}");
            }
            let rest = w.bytes.len() as u32 * 8 - r.pos as u32;
            assert_eq!(r.read_bits(rest + 1), None);
            assert_eq!(r.read_bits(rest), Some(0));
        }
    }

    #[test]
    fn garbage_never_panics() {
        assert_eq!(
            decode_xor(&[1]).next(),
            Some(Err(ChunkError::MissingHeader))
        );
        assert!(matches!(
            decode_xor(&[0, 5, 0x02]).last(),
            Some(Err(ChunkError::Truncated { .. }))
        ));
        // Deterministic pseudo-random garbage of many lengths.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let n = decode_xor(&bytes).count();
            assert!(n <= 65_536);
        }
        // A valid chunk cut short reports truncation.
        let c = round_trip(&[(1, 1.0), (2, 2.0), (3, 3.0)]);
        let cut = &c.bytes()[..c.bytes().len() - 2];
        assert!(decode_xor(cut).any(|s| s.is_err()));
    }
}
