//! The write-ahead log: every accepted sample is on disk before its append returns.
//!
//! Owns: the files under `<data>/wal/`, record framing and encoding, group commit, segment
//! rolling, checkpoints and replay. Calls `model` only.
//!
//! Format. Segments are files named by an 8-digit sequence number (`00000001`, ...);
//! a new one starts at open and when the current one passes `segment_bytes`. A segment
//! is a sequence of records: `u32 LE payload length`, `u32 LE CRC32C of the payload`,
//! payload. The payload's first byte is the record kind:
//! - 1 series: uvarint id, uvarint label count, (uvarint len, bytes) name and value pairs
//! - 2 samples (read only, written before compact samples): repeated (uvarint series id,
//!   zig-zag varint t, u64 LE value bits)
//! - 5 compact samples (written now): a snappy block (raw format) holding zig-zag varint
//!   base time, then repeated (zig-zag varint id minus the previous sample's id, starting
//!   from 0; zig-zag varint t minus the base time; u64 LE value bits). A remote-write
//!   batch is one scrape of series created in order, so both deltas are usually one byte,
//!   and snappy folds repeated values and delta runs: 17 -> about 5 bytes per sample.
//! - 3 delete: zig-zag varint mint, maxt, then repeated uvarint series ids
//! - 4 metadata: repeated 4 strings (family, type, help, unit), each uvarint len + bytes
//! - 6 native histogram samples, 7 float histogram samples (ADR 0030; written by
//!   `Db::append_histograms` and checkpoints): a snappy block like kind 5's, each value a
//!   histogram: counter-reset hint byte (remote write's numbering), zig-zag schema, u64
//!   LE bits of zero threshold and of sum, positive then negative spans (uvarint count,
//!   then zig-zag offset and uvarint length each), custom bounds (uvarint count, u64 LE
//!   bits each); then for kind 6 uvarint zero count and count and the positive then
//!   negative bucket deltas (uvarint count, zig-zag each), for kind 7 the same as u64
//!   LE bits.
//!
//! A checkpoint `checkpoint.NNNNNNNN` holds, in the same framing, the head's state that
//! covers segments up to NNNNNNNN, which are then deleted. Replay reads the newest
//! checkpoint and the segments after it. A torn record at the end of the last segment
//! (a crash mid-write) is truncated; a bad record elsewhere is skipped and counted as
//! corruption.
//!
//! Group commit: appenders add framed records to a shared buffer (memory only, short
//! lock) and then wait for a sync covering their sequence number; whoever gets the sync
//! lock first writes and fsyncs everything buffered so far, for all of them.
//!
//! Failures (ADR 0010). When a write, fsync or segment roll fails (disk full, I/O
//! error), every record that write took is lost: each of its waiters gets an error
//! and must undo what it did in memory. Samples records are dropped; the other records
//! (series, deletions, metadata), whose effect is already in memory, are carried. The
//! WAL then refuses writes until a recovery succeeds (tried at most once a second, by
//! the next sync or `try_recover`): the failed segment is cut back to the length its
//! last successful fsync covered, through a fresh descriptor (the failed one is never
//! fsynced again), and a fresh segment is started with an empty metadata record and
//! the carried records, written and fsynced as proof that the disk takes data again.
//! Replay therefore never sees the failed write's bytes, except when the process dies
//! before the cut succeeded: that segment is then still the last one, and replay keeps
//! whichever complete records of the refused write reached the disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::head::lock;
use crate::model::histogram::{CounterResetHint, FloatHistogram, Histogram, Span};
use crate::model::{Label, Labels, MetricMetadata};
use crate::storage::StorageError;

const KIND_SERIES: u8 = 1;
const KIND_SAMPLES: u8 = 2;
const KIND_DELETE: u8 = 3;
const KIND_METADATA: u8 = 4;
const KIND_COMPACT_SAMPLES: u8 = 5;
const KIND_HISTOGRAMS: u8 = 6;
const KIND_FLOAT_HISTOGRAMS: u8 = 7;
const FRAME_HEADER: usize = 8;
/// Upper bound for one record, so a garbage length cannot make replay allocate wildly.
const MAX_RECORD: usize = 1 << 30;

/// A decoded WAL record.
#[derive(Debug, PartialEq)]
pub enum Record {
    Series {
        id: u64,
        labels: Labels,
    },
    Samples(Vec<(u64, i64, f64)>),
    Delete {
        mint: i64,
        maxt: i64,
        ids: Vec<u64>,
    },
    Metadata(Vec<MetricMetadata>),
    /// (series id, timestamp, histogram), as kind 6.
    Histograms(Vec<(u64, i64, Histogram)>),
    /// (series id, timestamp, histogram), as kind 7.
    FloatHistograms(Vec<(u64, i64, FloatHistogram)>),
}

// ---- encoding ----

pub fn put_uvarint(buf: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        buf.push((x as u8) | 0x80);
        x >>= 7;
    }
    buf.push(x as u8);
}

pub fn put_varint(buf: &mut Vec<u8>, x: i64) {
    put_uvarint(buf, ((x << 1) ^ (x >> 63)) as u64);
}

pub fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_uvarint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// Writes one framed record whose payload `write_payload` produces after `kind`.
pub fn frame(buf: &mut Vec<u8>, kind: u8, write_payload: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    buf.push(kind);
    write_payload(buf);
    seal_frame(buf, start);
}

fn seal_frame(buf: &mut [u8], start: usize) {
    let payload = &buf[start + FRAME_HEADER..];
    let len = payload.len() as u32;
    let crc = crc32c::crc32c(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

pub fn encode_series(buf: &mut Vec<u8>, id: u64, labels: &Labels) {
    frame(buf, KIND_SERIES, |p| {
        put_uvarint(p, id);
        put_uvarint(p, labels.len() as u64);
        for l in labels {
            put_str(p, &l.name);
            put_str(p, &l.value);
        }
    });
}

pub fn encode_delete(buf: &mut Vec<u8>, mint: i64, maxt: i64, ids: &[u64]) {
    frame(buf, KIND_DELETE, |p| {
        put_varint(p, mint);
        put_varint(p, maxt);
        for &id in ids {
            put_uvarint(p, id);
        }
    });
}

pub fn encode_metadata(buf: &mut Vec<u8>, metadata: &[MetricMetadata]) {
    frame(buf, KIND_METADATA, |p| {
        for m in metadata {
            for s in [&m.metric_family, &m.metric_type, &m.help, &m.unit] {
                put_str(p, s);
            }
        }
    });
}

/// The body every snappy samples record shares (kinds 5, 6, 7): base time, then per
/// sample the series id minus the previous one and the time minus the base, then the
/// value as the kind writes it.
#[derive(Default)]
struct KeyedBody {
    body: Vec<u8>,
    base_t: Option<i64>,
    previous_id: u64,
}

impl KeyedBody {
    /// Writes a sample's id and time; its value follows in `self.body`.
    fn push_key(&mut self, id: u64, t: i64) {
        let base_t = *self.base_t.get_or_insert_with(|| {
            put_varint(&mut self.body, t);
            t
        });
        put_varint(&mut self.body, id.wrapping_sub(self.previous_id) as i64);
        put_varint(&mut self.body, t.wrapping_sub(base_t));
        self.previous_id = id;
    }

    /// The framed, snappy-compressed record of `kind`.
    fn finish(self, kind: u8) -> Vec<u8> {
        let mut buf = Vec::new();
        frame(&mut buf, kind, |p| {
            let start = p.len();
            p.resize(start + snap::raw::max_compress_len(self.body.len()), 0);
            let written = snap::raw::Encoder::new()
                .compress(&self.body, &mut p[start..])
                .expect("the output buffer has snappy's maximum compressed length");
            p.truncate(start + written);
        });
        buf
    }
}

/// Builds one compact samples record incrementally, without allocating per sample.
#[derive(Default)]
pub struct SamplesRecord(KeyedBody);

impl SamplesRecord {
    pub fn push(&mut self, id: u64, t: i64, v: f64) {
        self.0.push_key(id, t);
        self.0.body.extend_from_slice(&v.to_bits().to_le_bytes());
    }

    pub fn is_empty(&self) -> bool {
        self.0.base_t.is_none()
    }

    /// The framed, snappy-compressed record, ready for `Wal::log`.
    pub fn finish(self) -> Vec<u8> {
        self.0.finish(KIND_COMPACT_SAMPLES)
    }
}

/// Builds one native histogram samples record (kind 6).
#[derive(Default)]
pub struct HistogramsRecord(KeyedBody);

impl HistogramsRecord {
    pub fn push(&mut self, id: u64, t: i64, h: &Histogram) {
        self.0.push_key(id, t);
        let p = &mut self.0.body;
        put_shape(p, h.counter_reset_hint, h.schema, h.zero_threshold, h.sum);
        put_layout(p, &h.positive_spans, &h.negative_spans, &h.custom_values);
        put_uvarint(p, h.zero_count);
        put_uvarint(p, h.count);
        for buckets in [&h.positive_buckets, &h.negative_buckets] {
            put_uvarint(p, buckets.len() as u64);
            for &d in buckets {
                put_varint(p, d);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.base_t.is_none()
    }

    pub fn finish(self) -> Vec<u8> {
        self.0.finish(KIND_HISTOGRAMS)
    }
}

/// Builds one float histogram samples record (kind 7).
#[derive(Default)]
pub struct FloatHistogramsRecord(KeyedBody);

impl FloatHistogramsRecord {
    pub fn push(&mut self, id: u64, t: i64, h: &FloatHistogram) {
        self.0.push_key(id, t);
        let p = &mut self.0.body;
        put_shape(p, h.counter_reset_hint, h.schema, h.zero_threshold, h.sum);
        put_layout(p, &h.positive_spans, &h.negative_spans, &h.custom_values);
        put_f64s(p, &[h.zero_count, h.count]);
        for buckets in [&h.positive_buckets, &h.negative_buckets] {
            put_uvarint(p, buckets.len() as u64);
            put_f64s(p, buckets);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.base_t.is_none()
    }

    pub fn finish(self) -> Vec<u8> {
        self.0.finish(KIND_FLOAT_HISTOGRAMS)
    }
}

fn put_f64s(p: &mut Vec<u8>, values: &[f64]) {
    for v in values {
        p.extend_from_slice(&v.to_bits().to_le_bytes());
    }
}

/// Remote write's numbering of the counter-reset hint.
fn hint_byte(hint: CounterResetHint) -> u8 {
    match hint {
        CounterResetHint::Unknown => 0,
        CounterResetHint::CounterReset => 1,
        CounterResetHint::NotCounterReset => 2,
        CounterResetHint::Gauge => 3,
    }
}

fn put_shape(p: &mut Vec<u8>, hint: CounterResetHint, schema: i32, zero_threshold: f64, sum: f64) {
    p.push(hint_byte(hint));
    put_varint(p, i64::from(schema));
    put_f64s(p, &[zero_threshold, sum]);
}

fn put_layout(p: &mut Vec<u8>, positive: &[Span], negative: &[Span], custom_values: &[f64]) {
    for spans in [positive, negative] {
        put_uvarint(p, spans.len() as u64);
        for s in spans {
            put_varint(p, i64::from(s.offset));
            put_uvarint(p, u64::from(s.length));
        }
    }
    put_uvarint(p, custom_values.len() as u64);
    put_f64s(p, custom_values);
}

/// What both histogram kinds' values start with.
struct Shape {
    hint: CounterResetHint,
    schema: i32,
    zero_threshold: f64,
    sum: f64,
    positive_spans: Vec<Span>,
    negative_spans: Vec<Span>,
    custom_values: Vec<f64>,
}

fn get_shape(c: &mut Cursor<'_>) -> Option<Shape> {
    let hint = match c.bytes(1)?[0] {
        0 => CounterResetHint::Unknown,
        1 => CounterResetHint::CounterReset,
        2 => CounterResetHint::NotCounterReset,
        3 => CounterResetHint::Gauge,
        _ => return None,
    };
    let schema = i32::try_from(c.varint()?).ok()?;
    let (zero_threshold, sum) = (c.f64()?, c.f64()?);
    let mut spans = [Vec::new(), Vec::new()];
    for side in &mut spans {
        // A span takes at least two bytes.
        for _ in 0..c.count(2)? {
            let offset = i32::try_from(c.varint()?).ok()?;
            let length = u32::try_from(c.uvarint()?).ok()?;
            side.push(Span { offset, length });
        }
    }
    let custom_values = c.f64s()?;
    let [positive_spans, negative_spans] = spans;
    Some(Shape {
        hint,
        schema,
        zero_threshold,
        sum,
        positive_spans,
        negative_spans,
        custom_values,
    })
}

fn get_histogram(c: &mut Cursor<'_>) -> Option<Histogram> {
    let shape = get_shape(c)?;
    let (zero_count, count) = (c.uvarint()?, c.uvarint()?);
    let mut buckets = [Vec::new(), Vec::new()];
    for side in &mut buckets {
        for _ in 0..c.count(1)? {
            side.push(c.varint()?);
        }
    }
    let [positive_buckets, negative_buckets] = buckets;
    Some(Histogram {
        counter_reset_hint: shape.hint,
        schema: shape.schema,
        zero_threshold: shape.zero_threshold,
        zero_count,
        count,
        sum: shape.sum,
        positive_spans: shape.positive_spans.into(),
        negative_spans: shape.negative_spans.into(),
        positive_buckets,
        negative_buckets,
        custom_values: shape.custom_values.into(),
    })
}

fn get_float_histogram(c: &mut Cursor<'_>) -> Option<FloatHistogram> {
    let shape = get_shape(c)?;
    let (zero_count, count) = (c.f64()?, c.f64()?);
    let (positive_buckets, negative_buckets) = (c.f64s()?, c.f64s()?);
    Some(FloatHistogram {
        counter_reset_hint: shape.hint,
        schema: shape.schema,
        zero_threshold: shape.zero_threshold,
        zero_count,
        count,
        sum: shape.sum,
        positive_spans: shape.positive_spans.into(),
        negative_spans: shape.negative_spans.into(),
        positive_buckets,
        negative_buckets,
        custom_values: shape.custom_values.into(),
    })
}

/// Decodes the body of a snappy samples record (after snappy), each value by `value`.
fn decode_keyed<T>(
    mut c: Cursor<'_>,
    mut value: impl FnMut(&mut Cursor<'_>) -> Option<T>,
) -> Option<Vec<(u64, i64, T)>> {
    let mut samples = Vec::new();
    if c.is_empty() {
        return Some(samples);
    }
    let base_t = c.varint()?;
    let mut id = 0u64;
    while !c.is_empty() {
        id = id.wrapping_add(c.varint()? as u64);
        let t = base_t.wrapping_add(c.varint()?);
        samples.push((id, t, value(&mut c)?));
    }
    Some(samples)
}

/// Decompresses a snappy block of at most `MAX_RECORD` bytes. None when malformed.
fn decompress_record_body(compressed: &[u8]) -> Option<Vec<u8>> {
    let len = snap::raw::decompress_len(compressed).ok()?;
    if len > MAX_RECORD {
        return None;
    }
    snap::raw::Decoder::new().decompress_vec(compressed).ok()
}

// ---- decoding ----

struct Cursor<'a> {
    b: &'a [u8],
}

impl Cursor<'_> {
    fn uvarint(&mut self) -> Option<u64> {
        let mut x = 0u64;
        for (i, &byte) in self.b.iter().enumerate().take(10) {
            x |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                self.b = &self.b[i + 1..];
                return Some(x);
            }
        }
        None
    }

    fn varint(&mut self) -> Option<i64> {
        let u = self.uvarint()?;
        Some(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        if self.b.len() < n {
            return None;
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Some(head)
    }

    fn string(&mut self) -> Option<String> {
        let n = usize::try_from(self.uvarint()?).ok()?;
        String::from_utf8(self.bytes(n)?.to_vec()).ok()
    }

    fn u64_le(&mut self) -> Option<u64> {
        let b: [u8; 8] = self.bytes(8)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    }

    fn f64(&mut self) -> Option<f64> {
        self.u64_le().map(f64::from_bits)
    }

    /// A uvarint count of items that take at least `min_bytes` each; None when the rest
    /// could not hold that many (so a garbage count cannot make us allocate).
    fn count(&mut self, min_bytes: usize) -> Option<usize> {
        let n = usize::try_from(self.uvarint()?).ok()?;
        (n <= self.b.len() / min_bytes).then_some(n)
    }

    /// A uvarint count, then that many u64 LE float bits.
    fn f64s(&mut self) -> Option<Vec<f64>> {
        let n = self.count(8)?;
        (0..n).map(|_| self.f64()).collect()
    }

    fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
}

/// Decodes a record payload (kind byte first). None when malformed.
pub fn decode_record(payload: &[u8]) -> Option<Record> {
    let (&kind, rest) = payload.split_first()?;
    let mut c = Cursor { b: rest };
    match kind {
        KIND_SERIES => {
            let id = c.uvarint()?;
            let n = c.uvarint()?;
            let mut labels = Vec::new();
            for _ in 0..n {
                labels.push(Label::new(c.string()?, c.string()?));
            }
            labels.sort();
            labels.dedup_by(|a, b| a.name == b.name);
            Some(Record::Series {
                id,
                labels: Labels::from_sorted(labels),
            })
        }
        KIND_SAMPLES => {
            let mut samples = Vec::new();
            while !c.is_empty() {
                samples.push((c.uvarint()?, c.varint()?, f64::from_bits(c.u64_le()?)));
            }
            Some(Record::Samples(samples))
        }
        KIND_COMPACT_SAMPLES => {
            let body = decompress_record_body(rest)?;
            decode_keyed(Cursor { b: &body }, |c| c.f64()).map(Record::Samples)
        }
        KIND_HISTOGRAMS => {
            let body = decompress_record_body(rest)?;
            decode_keyed(Cursor { b: &body }, get_histogram).map(Record::Histograms)
        }
        KIND_FLOAT_HISTOGRAMS => {
            let body = decompress_record_body(rest)?;
            decode_keyed(Cursor { b: &body }, get_float_histogram).map(Record::FloatHistograms)
        }
        KIND_DELETE => {
            let (mint, maxt) = (c.varint()?, c.varint()?);
            let mut ids = Vec::new();
            while !c.is_empty() {
                ids.push(c.uvarint()?);
            }
            Some(Record::Delete { mint, maxt, ids })
        }
        KIND_METADATA => {
            let mut out = Vec::new();
            while !c.is_empty() {
                out.push(MetricMetadata {
                    metric_family: c.string()?,
                    metric_type: c.string()?,
                    help: c.string()?,
                    unit: c.string()?,
                });
            }
            Some(Record::Metadata(out))
        }
        _ => None,
    }
}

/// How reading one file's records ended.
#[derive(Debug, PartialEq, Eq)]
enum ReadEnd {
    Clean,
    /// The file ends inside a record that starts at this offset.
    Torn(u64),
}

/// Reads all framed records of `bytes`, calling `on_record` for each good one.
/// Returns how reading ended and the number of corrupt records skipped.
fn read_records(bytes: &[u8], on_record: &mut dyn FnMut(Record)) -> (ReadEnd, u64) {
    let mut pos = 0usize;
    let mut corrupt = 0;
    while pos < bytes.len() {
        let Some(header) = bytes.get(pos..pos + FRAME_HEADER) else {
            return (ReadEnd::Torn(pos as u64), corrupt);
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let body_start = pos + FRAME_HEADER;
        if len == 0 && bytes[pos..].iter().all(|&b| b == 0) {
            // Preallocated or zero-filled tail after a crash: nothing more was written.
            return (ReadEnd::Torn(pos as u64), corrupt);
        }
        let Some(payload) = bytes
            .get(body_start..body_start + len)
            .filter(|_| len <= MAX_RECORD)
        else {
            return (ReadEnd::Torn(pos as u64), corrupt);
        };
        match (crc32c::crc32c(payload) == crc)
            .then(|| decode_record(payload))
            .flatten()
        {
            Some(rec) => on_record(rec),
            None => corrupt += 1,
        }
        pos = body_start + len;
    }
    (ReadEnd::Clean, corrupt)
}

// ---- files ----

fn segment_name(index: u64) -> String {
    format!("{index:08}")
}

fn checkpoint_name(index: u64) -> String {
    format!("checkpoint.{index:08}")
}

/// (checkpoint indexes, segment indexes) present in `dir`, each sorted.
fn list_dir(dir: &Path) -> io::Result<(Vec<u64>, Vec<u64>)> {
    let (mut checkpoints, mut segments) = (Vec::new(), Vec::new());
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name.strip_prefix("checkpoint.") {
            if let Ok(i) = n.parse() {
                checkpoints.push(i);
            }
        } else if name.len() == 8 {
            if let Ok(i) = name.parse() {
                segments.push(i);
            }
        }
    }
    checkpoints.sort_unstable();
    segments.sort_unstable();
    Ok((checkpoints, segments))
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What replay found, for logs and metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub records: u64,
    pub corrupt_records: u64,
    pub torn_tail_truncated: bool,
}

/// Observers of WAL events (the TSDB's metrics).
pub trait WalObserver: Send + Sync {
    fn fsync_done(&self, seconds: f64);
    fn segments(&self, count: u64);
    /// A write, fsync, segment roll or recovery attempt failed.
    fn write_error(&self);
    /// The WAL starts (true) or stops (false) refusing writes.
    fn failing(&self, failing: bool);
}

/// How long after a failed attempt the WAL waits before it tries to recover again, so
/// a failing disk is not hammered by every request.
const RECOVERY_RETRY: Duration = if cfg!(test) {
    Duration::from_millis(20)
} else {
    Duration::from_secs(1)
};

/// Lost ranges kept for waiters; consecutive losses merge, so this is only reached when
/// the disk flaps many times while some request still waits.
const MAX_LOST_RANGES: usize = 1024;

struct Pending {
    bytes: Vec<u8>,
    /// Sequence number of the newest buffered record.
    seq: u64,
}

/// Why the WAL refuses writes, and how far its recovery got.
struct Fault {
    error: Arc<str>,
    /// The failed segment was cut back to its last synced length.
    trimmed: bool,
    last_attempt: Instant,
}

struct SegmentWriter {
    file: File,
    index: u64,
    /// Length of the current segment that its last successful fsync covered.
    synced_len: u64,
    segments_on_disk: u64,
    /// Set by a failed write, fsync or roll; cleared by `Wal::recover`.
    fault: Option<Fault>,
    /// Records other than samples from writes that failed. What they describe (a new
    /// series, a deletion, metadata) is already in memory, so they are written first
    /// into the next segment; samples records are dropped with their requests.
    carried: Vec<u8>,
}

/// Records that were logged but never reached the disk; whoever waits for one fails.
struct LostRange {
    first: u64,
    last: u64,
    error: Arc<str>,
}

/// An open WAL.
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    pending: Mutex<Pending>,
    writer: Mutex<SegmentWriter>,
    /// Every record up to this sequence number is durable, or lost (then in `lost`).
    resolved_seq: AtomicU64,
    lost: Mutex<Vec<LostRange>>,
    any_lost: AtomicBool,
    /// Mirrors `SegmentWriter::fault.is_some()` for readers that must not block.
    failing: AtomicBool,
    observer: Box<dyn WalObserver>,
    /// Test hook: the number of upcoming writes (or recovery attempts) to fail.
    #[cfg(test)]
    injected_failures: std::sync::atomic::AtomicU32,
}

impl Wal {
    /// Opens the WAL in `dir`, replaying its checkpoint and segments into `on_record`,
    /// then starts a fresh segment for writing.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        observer: Box<dyn WalObserver>,
        on_record: &mut dyn FnMut(Record),
    ) -> Result<(Wal, ReplayReport), StorageError> {
        fs::create_dir_all(dir)?;
        remove_unfinished_checkpoints(dir)?;
        let report = replay(dir, on_record)?;
        let (checkpoints, segments) = list_dir(dir)?;
        // Past every segment and checkpoint: replay skips segments a checkpoint covers.
        let newest = segments
            .last()
            .max(checkpoints.last())
            .copied()
            .unwrap_or(0);
        let index = newest + 1;
        let file = create_segment(dir, index)?;
        observer.segments(segments.len() as u64 + 1);
        let wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(4096),
            pending: Mutex::new(Pending {
                bytes: Vec::new(),
                seq: 0,
            }),
            writer: Mutex::new(SegmentWriter {
                file,
                index,
                synced_len: 0,
                segments_on_disk: segments.len() as u64 + 1,
                fault: None,
                carried: Vec::new(),
            }),
            resolved_seq: AtomicU64::new(0),
            lost: Mutex::new(Vec::new()),
            any_lost: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            observer,
            #[cfg(test)]
            injected_failures: Default::default(),
        };
        Ok((wal, report))
    }

    /// Buffers framed records; returns the sequence number to pass to `sync`.
    pub fn log(&self, framed: &[u8]) -> u64 {
        let mut p = lock(&self.pending);
        p.bytes.extend_from_slice(framed);
        p.seq += 1;
        p.seq
    }

    /// Returns once the record `seq` is on disk (write + fdatasync), or fails when it
    /// never will be: then nothing of it is replayed, and the caller must roll back what
    /// it did in memory for it.
    pub fn sync(&self, seq: u64) -> Result<(), StorageError> {
        if self.resolved_seq.load(Ordering::Acquire) < seq {
            let mut w = lock(&self.writer);
            if self.resolved_seq.load(Ordering::Acquire) < seq {
                self.write_pending(&mut w);
            }
        }
        self.outcome(seq)
    }

    /// Writes and fsyncs everything logged so far, for every waiter (group commit),
    /// recovering first when an earlier write failed. When that fails, every record
    /// taken is lost: its waiters fail, and only its non-samples records are carried.
    fn write_pending(&self, w: &mut SegmentWriter) {
        let writable = self.recover(w, false);
        let (bytes, last) = {
            let mut p = lock(&self.pending);
            (std::mem::take(&mut p.bytes), p.seq)
        };
        let first = self.resolved_seq.load(Ordering::Acquire) + 1;
        let written = writable.and_then(|()| {
            self.append_durably(w, &bytes)
                .map_err(|e| self.fail(w, "WAL write", &e))
        });
        if let Err(error) = written {
            keep_non_sample_records(&bytes, &mut w.carried);
            self.mark_lost(first, last, error);
        }
        self.resolved_seq.store(last, Ordering::Release);
    }

    /// Appends `bytes` to the current segment, rolling first when it would overflow,
    /// and fsyncs them.
    fn append_durably(&self, w: &mut SegmentWriter, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if w.synced_len > 0 && w.synced_len + bytes.len() as u64 > self.segment_bytes {
            self.roll(w)?;
        }
        w.file.write_all(bytes)?;
        #[cfg(test)]
        self.injected_failure()?;
        let started = Instant::now();
        w.file.sync_data()?;
        self.observer.fsync_done(started.elapsed().as_secs_f64());
        w.synced_len += bytes.len() as u64;
        Ok(())
    }

    fn roll(&self, w: &mut SegmentWriter) -> io::Result<()> {
        w.file.sync_all()?;
        w.file = create_segment(&self.dir, w.index + 1)?;
        w.index += 1;
        w.synced_len = 0;
        w.segments_on_disk += 1;
        self.observer.segments(w.segments_on_disk);
        Ok(())
    }

    /// Enters (or stays in) the failing state after an I/O error; returns the reason
    /// waiters are given.
    fn fail(&self, w: &mut SegmentWriter, what: &str, e: &io::Error) -> Arc<str> {
        let error: Arc<str> = format!("{what}: {e}").into();
        self.observer.write_error();
        match &mut w.fault {
            Some(fault) => fault.error = error.clone(),
            None => {
                tracing::error!(
                    segment = w.index, error = %error,
                    "WAL failed; refusing writes until the disk takes data again"
                );
                w.fault = Some(Fault {
                    error: error.clone(),
                    trimmed: false,
                    last_attempt: Instant::now(),
                });
                self.failing.store(true, Ordering::Release);
                self.observer.failing(true);
            }
        }
        error
    }

    /// Makes a failed writer usable again: cuts the failed segment back to what its
    /// last successful fsync covered, then starts a fresh segment whose first bytes (an
    /// empty metadata record, then the carried records) are written and fsynced as the
    /// proof that the disk takes data again. At most one attempt per `RECOVERY_RETRY`
    /// unless `force`; Ok at once when nothing failed.
    fn recover(&self, w: &mut SegmentWriter, force: bool) -> Result<(), Arc<str>> {
        let Some(fault) = w.fault.as_mut() else {
            return Ok(());
        };
        if !force && fault.last_attempt.elapsed() < RECOVERY_RETRY {
            return Err(fault.error.clone());
        }
        fault.last_attempt = Instant::now();
        if !fault.trimmed {
            let failed = self.dir.join(segment_name(w.index));
            if let Err(e) = trim_segment(&failed, w.synced_len) {
                return Err(self.fail(w, "cutting the failed WAL segment back", &e));
            }
            if let Some(fault) = w.fault.as_mut() {
                fault.trimmed = true;
            }
        }
        let index = w.index + 1;
        let mut preamble = Vec::new();
        frame(&mut preamble, KIND_METADATA, |_| {});
        preamble.extend_from_slice(&w.carried);
        #[cfg(test)]
        if let Err(e) = self.injected_failure() {
            return Err(self.fail(w, "starting a fresh WAL segment", &e));
        }
        let file = match start_recovered_segment(&self.dir, index, &preamble) {
            Ok(file) => file,
            Err(e) => return Err(self.fail(w, "starting a fresh WAL segment", &e)),
        };
        w.file = file;
        w.index = index;
        w.synced_len = preamble.len() as u64;
        w.segments_on_disk += 1;
        w.carried.clear();
        w.fault = None;
        self.failing.store(false, Ordering::Release);
        self.observer.segments(w.segments_on_disk);
        self.observer.failing(false);
        tracing::warn!(
            segment = index,
            "WAL writable again; continuing in a fresh segment"
        );
        Ok(())
    }

    fn mark_lost(&self, first: u64, last: u64, error: Arc<str>) {
        if first > last {
            return;
        }
        let mut lost = lock(&self.lost);
        match lost.last_mut() {
            Some(previous) if previous.last + 1 == first => {
                previous.last = last;
                previous.error = error;
            }
            _ => lost.push(LostRange { first, last, error }),
        }
        if lost.len() > MAX_LOST_RANGES {
            lost.remove(0);
        }
        self.any_lost.store(true, Ordering::Release);
    }

    /// Whether the resolved record `seq` reached the disk.
    fn outcome(&self, seq: u64) -> Result<(), StorageError> {
        if !self.any_lost.load(Ordering::Acquire) {
            return Ok(());
        }
        let lost = lock(&self.lost);
        match lost
            .iter()
            .rev()
            .find(|r| (r.first..=r.last).contains(&seq))
        {
            Some(r) => Err(StorageError::Unavailable(format!(
                "the WAL cannot write ({}); nothing of this request was stored, retry later",
                r.error
            ))),
            None => Ok(()),
        }
    }

    /// Whether the WAL refuses writes now (an earlier write failed and no recovery has
    /// succeeded since). Never blocks.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Tries to make a failing WAL writable again (at most once per second; appends try
    /// too). Ok when the WAL accepts writes.
    pub fn try_recover(&self) -> Result<(), StorageError> {
        if !self.failing.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut w = lock(&self.writer);
        self.recover(&mut w, false).map_err(|e| refusal(&e))
    }

    /// Flushes what is buffered, then starts a new segment. Returns the index of the
    /// last segment before it: a checkpoint of the head taken now covers it.
    pub fn cut_segment(&self) -> Result<u64, StorageError> {
        let seq = lock(&self.pending).seq;
        self.sync(seq)?;
        let mut w = lock(&self.writer);
        self.recover(&mut w, false).map_err(|e| refusal(&e))?;
        let closed = w.index;
        if let Err(e) = self.roll(&mut w) {
            return Err(refusal(&self.fail(&mut w, "WAL segment roll", &e)));
        }
        Ok(closed)
    }

    /// Starts a checkpoint that will replace segments up to `upto` once committed.
    pub fn begin_checkpoint(&self, upto: u64) -> Result<CheckpointWriter<'_>, StorageError> {
        let tmp = self.dir.join(format!("{}.tmp", checkpoint_name(upto)));
        Ok(CheckpointWriter {
            wal: self,
            upto,
            out: Some(BufWriter::new(File::create(&tmp)?)),
            tmp,
            renamed: false,
        })
    }

    /// Deletes segments up to `upto` and checkpoints older than it.
    fn drop_covered(&self, upto: u64) -> Result<(), StorageError> {
        let (checkpoints, segments) = list_dir(&self.dir)?;
        for old in checkpoints.into_iter().filter(|&i| i < upto) {
            fs::remove_file(self.dir.join(checkpoint_name(old)))?;
        }
        let mut removed = 0;
        for old in segments.into_iter().filter(|&i| i <= upto) {
            fs::remove_file(self.dir.join(segment_name(old)))?;
            removed += 1;
        }
        let mut w = lock(&self.writer);
        w.segments_on_disk = w.segments_on_disk.saturating_sub(removed);
        self.observer.segments(w.segments_on_disk);
        Ok(())
    }

    /// Writes and fsyncs everything buffered. Later appends still work. A failing WAL
    /// has nothing acknowledged left to write: what it refused stays refused.
    pub fn flush(&self) -> Result<(), StorageError> {
        let seq = lock(&self.pending).seq;
        self.sync(seq)?;
        let mut w = lock(&self.writer);
        if let Some(fault) = &w.fault {
            tracing::warn!(error = %fault.error, "closing a failing WAL");
            return Ok(());
        }
        if let Err(e) = w.file.sync_all() {
            return Err(refusal(&self.fail(&mut w, "WAL fsync", &e)));
        }
        Ok(())
    }

    /// Test hook: fails the next `n` segment writes (after the bytes were written, as a
    /// failed fsync would) or recovery attempts.
    #[cfg(test)]
    pub(crate) fn inject_failures(&self, n: u32) {
        self.injected_failures.store(n, Ordering::SeqCst);
    }

    #[cfg(test)]
    fn injected_failure(&self) -> io::Result<()> {
        let left = self.injected_failures.load(Ordering::SeqCst);
        if left == 0 {
            return Ok(());
        }
        self.injected_failures.store(left - 1, Ordering::SeqCst);
        Err(io::Error::other("injected I/O error"))
    }
}

/// The error a refused write gets.
fn refusal(error: &str) -> StorageError {
    StorageError::Unavailable(format!(
        "the WAL cannot write ({error}); writes are refused until the disk takes data again"
    ))
}

/// Appends to `carried` every framed record of `bytes` that is not a samples record.
fn keep_non_sample_records(bytes: &[u8], carried: &mut Vec<u8>) {
    let mut pos = 0;
    while let Some(header) = bytes.get(pos..pos + FRAME_HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let end = pos + FRAME_HEADER + len;
        let Some(framed) = bytes.get(pos..end) else {
            break;
        };
        if !matches!(
            framed.get(FRAME_HEADER),
            Some(&KIND_SAMPLES | &KIND_COMPACT_SAMPLES | &KIND_HISTOGRAMS | &KIND_FLOAT_HISTOGRAMS)
        ) {
            carried.extend_from_slice(framed);
        }
        pos = end;
    }
}

/// Cuts a segment whose write or fsync failed back to `len`, the length its last
/// successful fsync covered. Through a fresh descriptor: after a failed fsync the
/// kernel may have dropped the dirty pages and a later fsync on the old descriptor can
/// succeed without writing them (the "fsyncgate" lesson), so nothing past `len` is
/// trusted, and the old descriptor is never fsynced again.
fn trim_segment(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// Creates segment `index` holding exactly `preamble`, durably; removes it on failure.
fn start_recovered_segment(dir: &Path, index: u64, preamble: &[u8]) -> io::Result<File> {
    let path = dir.join(segment_name(index));
    let started = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        file.write_all(preamble)?;
        file.sync_data()?;
        fsync_dir(dir)?;
        Ok(file)
    })();
    if started.is_err() {
        let _ = fs::remove_file(&path);
    }
    started
}

/// Streams framed records into a new checkpoint file. Unless committed, the file is
/// removed when the writer is dropped, so a failed checkpoint leaves nothing behind on
/// a full disk.
pub struct CheckpointWriter<'a> {
    wal: &'a Wal,
    upto: u64,
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    renamed: bool,
}

impl CheckpointWriter<'_> {
    pub fn write(&mut self, framed: &[u8]) -> Result<(), StorageError> {
        match &mut self.out {
            Some(out) => Ok(out.write_all(framed)?),
            None => Err(StorageError::Other("checkpoint already committed".into())),
        }
    }

    /// Makes the checkpoint durable and visible, then drops what it covers.
    pub fn commit(mut self) -> Result<(), StorageError> {
        let Some(out) = self.out.take() else {
            return Err(StorageError::Other("checkpoint already committed".into()));
        };
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&self.tmp, self.wal.dir.join(checkpoint_name(self.upto)))?;
        self.renamed = true;
        fsync_dir(&self.wal.dir)?;
        self.wal.drop_covered(self.upto)
    }
}

impl Drop for CheckpointWriter<'_> {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn create_segment(dir: &Path, index: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(segment_name(index)))?;
    fsync_dir(dir)?;
    Ok(file)
}

/// Deletes checkpoint files a crash left half-written (they were never renamed).
fn remove_unfinished_checkpoints(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            tracing::warn!(file = %path.display(), "removing unfinished WAL checkpoint");
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Replays the newest checkpoint and every later segment.
fn replay(dir: &Path, on_record: &mut dyn FnMut(Record)) -> Result<ReplayReport, StorageError> {
    let (checkpoints, segments) = list_dir(dir)?;
    let mut report = ReplayReport::default();
    let mut count = |rec: Record| {
        report.records += 1;
        on_record(rec)
    };
    let after = match checkpoints.last() {
        Some(&cp) => {
            let bytes = read_file(&dir.join(checkpoint_name(cp)))?;
            let (end, corrupt) = read_records(&bytes, &mut count);
            if end != ReadEnd::Clean || corrupt > 0 {
                // A checkpoint is renamed into place only when complete.
                return Err(StorageError::Corruption(format!(
                    "WAL checkpoint {cp} is damaged"
                )));
            }
            cp
        }
        None => 0,
    };
    let mut corrupt_total = 0;
    let mut torn = false;
    let to_read: Vec<u64> = segments.into_iter().filter(|&i| i > after).collect();
    for (n, &index) in to_read.iter().enumerate() {
        let path = dir.join(segment_name(index));
        let bytes = read_file(&path)?;
        let (end, corrupt) = read_records(&bytes, &mut count);
        corrupt_total += corrupt;
        if let ReadEnd::Torn(at) = end {
            if n + 1 == to_read.len() {
                tracing::warn!(segment = index, offset = at, "truncating torn WAL tail");
                OpenOptions::new().write(true).open(&path)?.set_len(at)?;
                torn = true;
            } else {
                tracing::error!(segment = index, offset = at, "WAL segment ends mid-record");
                corrupt_total += 1;
            }
        }
    }
    if corrupt_total > 0 {
        tracing::error!(records = corrupt_total, "corrupt WAL records skipped");
    }
    report.corrupt_records = corrupt_total;
    report.torn_tail_truncated = torn;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stale_nan;

    struct NoObserver;
    impl WalObserver for NoObserver {
        fn fsync_done(&self, _: f64) {}
        fn segments(&self, _: u64) {}
        fn write_error(&self) {}
        fn failing(&self, _: bool) {}
    }

    fn open(dir: &Path, seg: u64) -> (Wal, Vec<Record>, ReplayReport) {
        let mut recs = Vec::new();
        let (wal, report) =
            Wal::open(dir, seg, Box::new(NoObserver), &mut |r| recs.push(r)).unwrap();
        (wal, recs, report)
    }

    fn samples_record(items: &[(u64, i64, f64)]) -> Vec<u8> {
        let mut r = SamplesRecord::default();
        for &(id, t, v) in items {
            r.push(id, t, v);
        }
        r.finish()
    }

    #[test]
    fn records_round_trip_through_replay() {
        let dir = tempfile::tempdir().unwrap();
        let labels = Labels::from_pairs([("__name__", "up"), ("job", "a")]);
        let meta = MetricMetadata {
            metric_family: "up".into(),
            metric_type: "gauge".into(),
            help: "h".into(),
            unit: String::new(),
        };
        {
            let (wal, recs, _) = open(dir.path(), 1 << 20);
            assert!(recs.is_empty());
            let mut buf = Vec::new();
            encode_series(&mut buf, 7, &labels);
            encode_delete(&mut buf, -5, 10, &[7, 8]);
            encode_metadata(&mut buf, std::slice::from_ref(&meta));
            wal.log(&buf);
            let seq = wal.log(&samples_record(&[(7, 1, 1.5), (7, 2, stale_nan())]));
            wal.sync(seq).unwrap();
        }
        let (_, recs, report) = open(dir.path(), 1 << 20);
        assert_eq!(report.corrupt_records, 0);
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[0], Record::Series { id: 7, labels });
        assert_eq!(
            recs[1],
            Record::Delete {
                mint: -5,
                maxt: 10,
                ids: vec![7, 8]
            }
        );
        assert_eq!(recs[2], Record::Metadata(vec![meta]));
        match &recs[3] {
            Record::Samples(s) => {
                assert_eq!(s.len(), 2);
                assert_eq!(s[1].2.to_bits(), stale_nan().to_bits());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn torn_tail_is_truncated_and_middle_corruption_counted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _, _) = open(dir.path(), 1 << 20);
            for i in 0..3 {
                let seq = wal.log(&samples_record(&[(1, i, 1.0)]));
                wal.sync(seq).unwrap();
            }
        }
        let seg = dir.path().join(segment_name(1));
        let mut bytes = fs::read(&seg).unwrap();
        let one = bytes.len() / 3;
        bytes[one + FRAME_HEADER + 2] ^= 0xff; // corrupt the middle record
        bytes.extend_from_slice(&samples_record(&[(1, 9, 9.0)])[..5]); // torn tail
        fs::write(&seg, &bytes).unwrap();
        let (_, recs, report) = open(dir.path(), 1 << 20);
        assert_eq!(recs.len(), 2);
        assert_eq!(report.corrupt_records, 1);
        assert!(report.torn_tail_truncated);
        assert_eq!(fs::metadata(&seg).unwrap().len() as usize, one * 3);
    }

    #[test]
    fn segments_roll_and_checkpoint_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _, _) = open(dir.path(), 4096);
            for i in 0..400 {
                // Values that snappy cannot fold, so the records fill several segments.
                let items: Vec<_> = (0..10)
                    .map(|j| {
                        (
                            j,
                            i,
                            (i as u64 * 10 + j).wrapping_mul(0x9e37_79b9_7f4a_7c15) as f64,
                        )
                    })
                    .collect();
                let seq = wal.log(&samples_record(&items));
                wal.sync(seq).unwrap();
            }
            let (_, segments) = list_dir(dir.path()).unwrap();
            assert!(segments.len() > 3);
            let upto = wal.cut_segment().unwrap();
            let mut cp = Vec::new();
            encode_series(&mut cp, 1, &Labels::from_pairs([("a", "b")]));
            let mut writer = wal.begin_checkpoint(upto).unwrap();
            writer.write(&cp).unwrap();
            writer.commit().unwrap();
            let seq = wal.log(&samples_record(&[(1, 500, 2.0)]));
            wal.sync(seq).unwrap();
        }
        let (_, recs, _) = open(dir.path(), 4096);
        assert_eq!(recs.len(), 2);
        assert!(matches!(recs[0], Record::Series { id: 1, .. }));
        // Even with every segment gone, new segments are numbered past the checkpoint.
        let (checkpoints, segments) = list_dir(dir.path()).unwrap();
        for s in segments {
            fs::remove_file(dir.path().join(segment_name(s))).unwrap();
        }
        {
            let (wal, _, _) = open(dir.path(), 4096);
            let seq = wal.log(&samples_record(&[(1, 600, 3.0)]));
            wal.sync(seq).unwrap();
        }
        let (_, recs, _) = open(dir.path(), 4096);
        assert_eq!(
            recs.len(),
            2,
            "checkpoint {checkpoints:?} plus the new sample"
        );
    }

    #[test]
    fn concurrent_appenders_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _, _) = open(dir.path(), 1 << 20);
        let wal = std::sync::Arc::new(wal);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let wal = wal.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let seq = wal.log(&samples_record(&[(t, i, 1.0)]));
                        wal.sync(seq).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(wal);
        let (_, recs, _) = open(dir.path(), 1 << 20);
        assert_eq!(recs.len(), 200);
    }

    #[test]
    fn compact_samples_round_trip_any_order_and_earlier_format_still_reads() {
        let items = [
            (5, 1_000, 1.0),
            (6, 1_000, 0.0),
            (2, 1_015, -3.5),
            (u64::MAX, i64::MIN, f64::MAX),
            (0, i64::MAX, stale_nan()),
        ];
        let framed = samples_record(&items);
        let decoded = decode_record(&framed[FRAME_HEADER..]).unwrap();
        let expect: Vec<(u64, i64, u64)> =
            items.iter().map(|&(i, t, v)| (i, t, v.to_bits())).collect();
        match decoded {
            Record::Samples(got) => {
                let got: Vec<(u64, i64, u64)> = got
                    .into_iter()
                    .map(|(i, t, v)| (i, t, v.to_bits()))
                    .collect();
                assert_eq!(got, expect);
            }
            other => panic!("unexpected {other:?}"),
        }
        // A samples record as written before compact records (kind 2).
        let mut legacy = vec![KIND_SAMPLES];
        put_uvarint(&mut legacy, 7);
        put_varint(&mut legacy, -2);
        legacy.extend_from_slice(&1.5f64.to_bits().to_le_bytes());
        assert_eq!(
            decode_record(&legacy),
            Some(Record::Samples(vec![(7, -2, 1.5)]))
        );
    }

    fn segment_len(dir: &Path, index: u64) -> u64 {
        fs::metadata(dir.join(segment_name(index))).unwrap().len()
    }

    fn wait_for_retry() {
        std::thread::sleep(RECOVERY_RETRY + Duration::from_millis(5));
    }

    #[test]
    fn a_failed_write_is_cut_off_and_the_wal_recovers_in_a_fresh_segment() {
        let dir = tempfile::tempdir().unwrap();
        let one = Labels::from_pairs([("__name__", "one")]);
        let two = Labels::from_pairs([("__name__", "two")]);
        {
            let (wal, _, _) = open(dir.path(), 1 << 20);
            let mut buf = Vec::new();
            encode_series(&mut buf, 1, &one);
            wal.log(&buf);
            wal.sync(wal.log(&samples_record(&[(1, 10, 1.0)]))).unwrap();
            let good_len = segment_len(dir.path(), 1);

            // The fsync of series 2 and its samples fails after the bytes were written.
            wal.inject_failures(1);
            buf.clear();
            encode_series(&mut buf, 2, &two);
            let series_seq = wal.log(&buf);
            let lost_seq = wal.log(&samples_record(&[(2, 20, 2.0)]));
            let err = wal.sync(lost_seq).unwrap_err();
            assert!(err.to_string().contains("injected I/O error"), "{err}");
            assert!(
                wal.sync(series_seq).is_err(),
                "same group commit, same fate"
            );
            assert!(wal.is_failing());
            assert!(
                segment_len(dir.path(), 1) > good_len,
                "failed bytes reached the file"
            );

            wait_for_retry();
            wal.try_recover().unwrap();
            assert!(!wal.is_failing());
            assert_eq!(
                segment_len(dir.path(), 1),
                good_len,
                "cut back to the last sync"
            );
            wal.sync(wal.log(&samples_record(&[(2, 30, 3.0)]))).unwrap();
        }
        let (_, recs, report) = open(dir.path(), 1 << 20);
        assert_eq!(report.corrupt_records, 0);
        assert!(!report.torn_tail_truncated);
        assert_eq!(
            recs,
            vec![
                Record::Series { id: 1, labels: one },
                Record::Samples(vec![(1, 10, 1.0)]),
                Record::Metadata(vec![]),
                Record::Series { id: 2, labels: two },
                Record::Samples(vec![(2, 30, 3.0)]),
            ],
            "the refused sample is gone; the series record it carried is kept"
        );
    }

    #[test]
    fn a_failed_recovery_keeps_refusing_and_leaves_no_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _, _) = open(dir.path(), 1 << 20);
        wal.inject_failures(2);
        assert!(wal.sync(wal.log(&samples_record(&[(1, 1, 1.0)]))).is_err());
        wait_for_retry();
        assert!(wal.try_recover().is_err(), "the injected recovery failure");
        assert!(wal.is_failing());
        let (_, segments) = list_dir(dir.path()).unwrap();
        assert_eq!(segments, vec![1]);
        wait_for_retry();
        let later = wal.log(&samples_record(&[(1, 3, 1.0)]));
        wal.sync(later).unwrap();
        drop(wal);
        let (_, recs, _) = open(dir.path(), 1 << 20);
        assert_eq!(
            recs,
            vec![Record::Metadata(vec![]), Record::Samples(vec![(1, 3, 1.0)])]
        );
    }

    #[test]
    fn a_failed_checkpoint_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _, _) = open(dir.path(), 1 << 20);
        let upto = wal.cut_segment().unwrap();
        let mut cp = wal.begin_checkpoint(upto).unwrap();
        cp.write(&samples_record(&[(1, 1, 1.0)])).unwrap();
        drop(cp);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains("checkpoint")), "{names:?}");
    }

    #[test]
    fn garbage_records_do_not_panic() {
        for payload in [
            &[][..],
            &[1],
            &[1, 0xff],
            &[2, 1, 2],
            &[4, 200],
            &[9, 1, 2],
            &[5, 0xff, 0xff],
            &[5, 3, 8, 1],
        ] {
            let _ = decode_record(payload);
        }
        let (end, _) = read_records(&[5, 0, 0, 0, 1, 2, 3, 4, 1], &mut |_| {});
        assert_eq!(end, ReadEnd::Torn(0));
    }

    /// Histograms of every shape the records carry: exponential and custom schemas,
    /// negative offsets, NaN and stale sums, extreme counts, every hint.
    fn histograms() -> Vec<(u64, i64, Histogram)> {
        let span = |offset, length| Span { offset, length };
        let hints = [
            CounterResetHint::Unknown,
            CounterResetHint::CounterReset,
            CounterResetHint::NotCounterReset,
            CounterResetHint::Gauge,
        ];
        let mut out = Vec::new();
        for i in 0..40u64 {
            let mut h = Histogram {
                counter_reset_hint: hints[i as usize % 4],
                schema: (i % 13) as i32 - 4,
                zero_threshold: 2f64.powi(-128),
                zero_count: i,
                count: i * 7 + u64::from(i == 39) * (u64::MAX - 300),
                sum: [1.5, f64::NAN, stale_nan(), -0.0][i as usize % 4],
                positive_spans: vec![span(-(i as i32), 2), span(3, 1)].into(),
                negative_spans: vec![span(i as i32, 1)].into(),
                positive_buckets: vec![i as i64, -1, i64::MIN + i as i64],
                negative_buckets: vec![i64::MAX],
                ..Default::default()
            };
            if i % 5 == 0 {
                h.schema = -53;
                h.zero_threshold = 0.0;
                h.negative_spans = Vec::new().into();
                h.negative_buckets.clear();
                h.custom_values = vec![0.5, 1.0, 1e300].into();
            }
            out.push((i * 3 % 7, 1_700_000_000_000 - 15_000 * i as i64, h));
        }
        out
    }

    /// Equal, with sums (and float counts) compared by their bits.
    fn same_floats(a: &FloatHistogram, b: &FloatHistogram) -> bool {
        let bits = |h: &FloatHistogram| {
            let mut v = vec![h.sum.to_bits(), h.count.to_bits(), h.zero_count.to_bits()];
            v.extend(
                h.positive_buckets
                    .iter()
                    .chain(&h.negative_buckets)
                    .map(|c| c.to_bits()),
            );
            v
        };
        let plain = |h: &FloatHistogram| FloatHistogram {
            sum: 0.0,
            count: 0.0,
            zero_count: 0.0,
            positive_buckets: vec![],
            negative_buckets: vec![],
            ..h.clone()
        };
        bits(a) == bits(b) && plain(a) == plain(b)
    }

    fn histogram_records() -> (Vec<u8>, Vec<u8>) {
        let mut ints = HistogramsRecord::default();
        let mut floats = FloatHistogramsRecord::default();
        assert!(ints.is_empty() && floats.is_empty());
        for (id, t, h) in histograms() {
            ints.push(id, t, &h);
            floats.push(id, t, &h.to_float());
        }
        assert!(!ints.is_empty() && !floats.is_empty());
        (ints.finish(), floats.finish())
    }

    fn check_histograms(recs: &[Record]) {
        let want = histograms();
        match recs {
            [Record::Histograms(ints), Record::FloatHistograms(floats)] => {
                assert_eq!(ints.len(), want.len());
                assert_eq!(floats.len(), want.len());
                for (((id, t, h), got), fgot) in want.iter().zip(ints).zip(floats) {
                    assert_eq!((*id, *t), (got.0, got.1));
                    assert_eq!((*id, *t), (fgot.0, fgot.1));
                    assert!(
                        same_floats(&h.to_float(), &got.2.to_float()),
                        "{h:?} {got:?}"
                    );
                    assert_eq!(h.positive_buckets, got.2.positive_buckets);
                    assert_eq!((h.count, h.zero_count), (got.2.count, got.2.zero_count));
                    assert!(same_floats(&h.to_float(), &fgot.2), "{h:?} {fgot:?}");
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn histogram_records_round_trip_through_replay() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _, _) = open(dir.path(), 1 << 20);
            let (ints, floats) = histogram_records();
            wal.log(&ints);
            let seq = wal.log(&floats);
            wal.sync(seq).unwrap();
        }
        let (_, recs, report) = open(dir.path(), 1 << 20);
        assert_eq!(report.corrupt_records, 0);
        check_histograms(&recs);
        // An empty record decodes to no samples.
        let empty = HistogramsRecord::default().finish();
        assert_eq!(
            decode_record(&empty[FRAME_HEADER..]),
            Some(Record::Histograms(vec![]))
        );
    }

    #[test]
    fn torn_and_damaged_histogram_records() {
        let dir = tempfile::tempdir().unwrap();
        let (ints, floats) = histogram_records();
        {
            let (wal, _, _) = open(dir.path(), 1 << 20);
            wal.log(&ints);
            wal.log(&floats);
            let seq = wal.log(&ints);
            wal.sync(seq).unwrap();
        }
        let seg = dir.path().join(segment_name(1));
        let whole = fs::read(&seg).unwrap();
        let two = whole.len() - ints.len();
        // A crash in the middle of the third record: it is cut off, the others stay.
        for cut in [1, FRAME_HEADER, ints.len() / 2, ints.len() - 1] {
            fs::write(&seg, &whole[..two + cut]).unwrap();
            let (wal, recs, report) = open(dir.path(), 1 << 20);
            drop(wal);
            assert!(report.torn_tail_truncated, "cut at {cut}");
            assert_eq!(report.corrupt_records, 0);
            check_histograms(&recs);
            // Opening wrote a fresh segment; start over from the single damaged one.
            for entry in fs::read_dir(dir.path()).unwrap() {
                fs::remove_file(entry.unwrap().path()).unwrap();
            }
        }
        // A flipped byte inside the first record: skipped and counted.
        let mut bad = whole.clone();
        bad[FRAME_HEADER + 3] ^= 0x40;
        fs::write(&seg, &bad).unwrap();
        let (_, recs, report) = open(dir.path(), 1 << 20);
        assert_eq!(report.corrupt_records, 1);
        assert!(matches!(
            &recs[..],
            [Record::FloatHistograms(_), Record::Histograms(_)]
        ));
    }

    #[test]
    fn hostile_histogram_payloads_are_refused() {
        let framed = |kind: u8, body: &[u8]| {
            let mut payload = vec![kind];
            payload.extend_from_slice(&snap::raw::Encoder::new().compress_vec(body).unwrap());
            payload
        };
        // base t, id, t, hint 0, schema 0, threshold and sum, then a span count of 2^40.
        let mut body = vec![0, 2, 0, 0, 0];
        body.extend_from_slice(&[0; 16]);
        put_uvarint(&mut body, 1 << 40);
        assert_eq!(decode_record(&framed(KIND_HISTOGRAMS, &body)), None);
        assert_eq!(decode_record(&framed(KIND_FLOAT_HISTOGRAMS, &body)), None);
        // An unknown hint byte.
        let mut body = vec![0, 2, 0, 9];
        body.extend_from_slice(&[0; 30]);
        assert_eq!(decode_record(&framed(KIND_HISTOGRAMS, &body)), None);
        // Every prefix of a valid record is refused or decodes fewer samples, never panics.
        let (ints, floats) = histogram_records();
        for record in [&ints, &floats] {
            let payload = &record[FRAME_HEADER..];
            let body = decompress_record_body(&payload[1..]).unwrap();
            for cut in 0..body.len() {
                let _ = decode_record(&framed(payload[0], &body[..cut]));
            }
        }
    }
}
