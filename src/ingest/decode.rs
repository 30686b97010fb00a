//! Hand-written protobuf decoding of a remote-write 1.0 `prometheus.WriteRequest` that
//! borrows label names and values from the decompressed body instead of building a
//! `String` for each (ADR 0025). Calls `model` (samples) and `proto` (metadata structs).
//!
//! It accepts and refuses exactly what prost's decoding of `proto::WriteRequest` does,
//! and in the same order, so the reasons agree too (`tests/fuzz_remote_write.rs` checks
//! both on random and mutated inputs): one cursor runs over the whole body and a nested
//! message only sets where it must end, as prost's `merge_loop` does, so a field that
//! runs past its message's end is read first and refused after (a string there is still
//! checked for UTF-8 first); unknown fields are skipped by wire type, groups included,
//! with prost's recursion limit of 100; the last occurrence of a scalar field wins;
//! every string, exemplar labels and metadata included, must be UTF-8.
//!
//! The UTF-8 check of series labels is left to the caller (`RawWrite::first_non_utf8`):
//! a label set found byte for byte in the label-set cache is known to be UTF-8, so only
//! new ones need checking. To keep prost's order of refusals, a structural error found
//! after a label that is not UTF-8 is reported as the UTF-8 error prost would have
//! stopped at first.
//!
//! Native histograms are decoded into `proto::Histogram` (owned: they are few next to
//! samples, and their bucket vectors become the model's); exemplars are kept (their
//! labels borrowed too). `Reader::histogram` serves both protocol versions, whose
//! histogram messages are the same.
//! `Reader`, the wire cursor, is shared with the 2.0 decoder (`decode_v2`).

use std::fmt;
use std::ops::Range;

use crate::model::Sample;
use crate::proto;
use crate::proto::histogram::{BucketSpan, Count, ZeroCount};

/// prost's recursion limit: how deeply messages and groups may nest.
pub(super) const RECURSION_LIMIT: u32 = 100;

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_START_GROUP: u8 = 3;
const WIRE_END_GROUP: u8 = 4;
const WIRE_FIXED32: u8 = 5;

/// Why a body is not a valid `WriteRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum WireError {
    BufferUnderflow,
    InvalidVarint,
    InvalidKey(u64),
    InvalidWireType(u64),
    InvalidTag,
    UnexpectedWireType {
        field: &'static str,
        actual: u8,
        expected: u8,
    },
    UnexpectedEndGroup,
    DelimitedLengthExceeded,
    RecursionLimit,
    /// A string field (`field`) is not UTF-8.
    NotUtf8 {
        field: &'static str,
    },
}

impl WireError {
    pub(super) fn is_utf8(&self) -> bool {
        matches!(self, WireError::NotUtf8 { .. })
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BufferUnderflow => f.write_str("a field runs past the end of the body"),
            WireError::InvalidVarint => f.write_str("invalid varint"),
            WireError::InvalidKey(key) => write!(f, "invalid field key {key}"),
            WireError::InvalidWireType(t) => write!(f, "invalid wire type {t}"),
            WireError::InvalidTag => f.write_str("invalid field number 0"),
            WireError::UnexpectedWireType {
                field,
                actual,
                expected,
            } => write!(f, "{field}: wire type {actual}, expected {expected}"),
            WireError::UnexpectedEndGroup => f.write_str("unexpected end-group tag"),
            WireError::DelimitedLengthExceeded => {
                f.write_str("a field runs past the end of its message")
            }
            WireError::RecursionLimit => f.write_str("messages or groups nested too deeply"),
            WireError::NotUtf8 { field } => {
                write!(
                    f,
                    "{field}: invalid string value: data is not UTF-8 encoded"
                )
            }
        }
    }
}

/// A label as sent, borrowed from the body; not yet checked for UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RawLabel<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
}

impl RawLabel<'_> {
    pub fn is_utf8(&self) -> bool {
        std::str::from_utf8(self.name).is_ok() && std::str::from_utf8(self.value).is_ok()
    }
}

/// One exemplar as sent: its labels are a range of `RawWrite::exemplar_labels`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct RawExemplar {
    pub labels: Range<usize>,
    pub value: f64,
    pub timestamp: i64,
}

/// One `TimeSeries` of the request.
#[derive(Debug)]
pub(super) struct RawSeries {
    /// Its labels, in the order sent: a range of `RawWrite::labels`.
    pub labels: Range<usize>,
    pub samples: Vec<Sample>,
    /// How many of `samples` are created-timestamp zero requests (`model::created_zero`;
    /// only the 2.0 decoder adds them), which are not counted as samples received.
    pub created_zeros: usize,
    pub exemplars: Vec<RawExemplar>,
    /// Native histograms as sent, not yet validated.
    pub histograms: Vec<proto::Histogram>,
}

/// A decoded `WriteRequest` whose label strings point into the body.
#[derive(Debug, Default)]
pub(super) struct RawWrite<'a> {
    /// The labels of every series, one series' labels after the other.
    pub labels: Vec<RawLabel<'a>>,
    /// The labels of every exemplar (UTF-8 checked), likewise.
    pub exemplar_labels: Vec<RawLabel<'a>>,
    pub series: Vec<RawSeries>,
    pub metadata: Vec<proto::MetricMetadata>,
}

impl<'a> RawWrite<'a> {
    pub fn labels_of(&self, series: &RawSeries) -> &[RawLabel<'a>] {
        &self.labels[series.labels.clone()]
    }
}

/// prost's `sint32`: the varint truncated to 32 bits, then zigzag-decoded.
fn zigzag32(v: u64) -> i32 {
    let v = v as u32;
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

/// prost's `sint64`.
fn zigzag64(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The error for labels that are not UTF-8 (prost names the field; so do we, roughly).
pub(super) fn not_utf8() -> WireError {
    WireError::NotUtf8 {
        field: "TimeSeries.labels",
    }
}

/// `new`, once `old` (the string it replaces) is known to be UTF-8.
fn replace_checked<'a>(old: &[u8], new: &'a [u8]) -> Result<&'a [u8], WireError> {
    match std::str::from_utf8(old) {
        Ok(_) => Ok(new),
        Err(_) => Err(not_utf8()),
    }
}

/// Decodes `body`, a serialized `prometheus.WriteRequest`. Series labels are not yet
/// checked for UTF-8 (see the module comment); everything else is.
pub(super) fn decode_write_request(body: &[u8]) -> Result<RawWrite<'_>, WireError> {
    let mut write = RawWrite::default();
    match decode_into(body, &mut write) {
        Ok(()) => Ok(write),
        // prost checks each string as it reads it, so it would have stopped at a label
        // read before this error.
        Err(err) if !err.is_utf8() && !write.labels.iter().all(RawLabel::is_utf8) => {
            Err(not_utf8())
        }
        Err(err) => Err(err),
    }
}

fn decode_into<'a>(body: &'a [u8], write: &mut RawWrite<'a>) -> Result<(), WireError> {
    let mut reader = Reader::new(body);
    while reader.pos < body.len() {
        let (tag, wire) = reader.key()?;
        match tag {
            1 => {
                let end = reader.enter("WriteRequest.timeseries", wire, RECURSION_LIMIT)?;
                let series = reader.time_series(
                    end,
                    RECURSION_LIMIT - 1,
                    &mut write.labels,
                    &mut write.exemplar_labels,
                )?;
                write.series.push(series);
            }
            3 => {
                let end = reader.enter("WriteRequest.metadata", wire, RECURSION_LIMIT)?;
                let metadata = reader.metadata(end, RECURSION_LIMIT - 1)?;
                write.metadata.push(metadata);
            }
            _ => reader.skip(wire, tag, RECURSION_LIMIT)?,
        }
    }
    Ok(())
}

/// A cursor over the whole body. Reads are bounded by the body, not by the enclosing
/// message: each message checks that it ended exactly where its length said (prost's
/// order of checks).
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Whether the cursor is before `end`.
    pub(super) fn before(&self, end: usize) -> bool {
        self.pos < end
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(super) fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for count in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(WireError::InvalidVarint);
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (count * 7);
            if byte < 0x80 {
                // The tenth byte may only carry the top bit of a u64.
                if count == 9 && byte >= 0x02 {
                    return Err(WireError::InvalidVarint);
                }
                return Ok(value);
            }
        }
        Err(WireError::InvalidVarint)
    }

    pub(super) fn key(&mut self) -> Result<(u32, u8), WireError> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(WireError::InvalidKey(key));
        }
        let wire = key & 0x07;
        if wire > 5 {
            return Err(WireError::InvalidWireType(wire));
        }
        let tag = (key as u32) >> 3;
        if tag == 0 {
            return Err(WireError::InvalidTag);
        }
        Ok((tag, wire as u8))
    }

    fn expect_wire(field: &'static str, actual: u8, expected: u8) -> Result<(), WireError> {
        if actual == expected {
            Ok(())
        } else {
            Err(WireError::UnexpectedWireType {
                field,
                actual,
                expected,
            })
        }
    }

    /// Starts an embedded message field at nesting budget `depth`; returns where it ends.
    pub(super) fn enter(
        &mut self,
        field: &'static str,
        wire: u8,
        depth: u32,
    ) -> Result<usize, WireError> {
        Self::expect_wire(field, wire, WIRE_LEN)?;
        if depth == 0 {
            return Err(WireError::RecursionLimit);
        }
        let len = self.varint()?;
        if len > self.remaining() as u64 {
            return Err(WireError::BufferUnderflow);
        }
        Ok(self.pos + len as usize)
    }

    /// Ends an embedded message: its fields must have stopped exactly at `end`.
    pub(super) fn leave(&self, end: usize) -> Result<(), WireError> {
        if self.pos == end {
            Ok(())
        } else {
            Err(WireError::DelimitedLengthExceeded)
        }
    }

    pub(super) fn bytes(&mut self, field: &'static str, wire: u8) -> Result<&'a [u8], WireError> {
        Self::expect_wire(field, wire, WIRE_LEN)?;
        let len = self.varint()?;
        if len > self.remaining() as u64 {
            return Err(WireError::BufferUnderflow);
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.buf[start..self.pos])
    }

    pub(super) fn string(&mut self, field: &'static str, wire: u8) -> Result<&'a str, WireError> {
        let bytes = self.bytes(field, wire)?;
        std::str::from_utf8(bytes).map_err(|_| WireError::NotUtf8 { field })
    }

    pub(super) fn double(&mut self, field: &'static str, wire: u8) -> Result<f64, WireError> {
        Self::expect_wire(field, wire, WIRE_FIXED64)?;
        let Some(bytes) = self.buf.get(self.pos..self.pos + 8) else {
            return Err(WireError::BufferUnderflow);
        };
        self.pos += 8;
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        Ok(f64::from_le_bytes(word))
    }

    /// An `int64` (or, truncated by the caller, `int32`/enum) field.
    pub(super) fn int64(&mut self, field: &'static str, wire: u8) -> Result<i64, WireError> {
        Self::expect_wire(field, wire, WIRE_VARINT)?;
        Ok(self.varint()? as i64)
    }

    /// A `uint64` (or, truncated or zigzag-decoded by the caller, `uint32`/`sint`) field.
    pub(super) fn uint64(&mut self, field: &'static str, wire: u8) -> Result<u64, WireError> {
        Self::expect_wire(field, wire, WIRE_VARINT)?;
        self.varint()
    }

    /// A `repeated uint32` field, packed or not (a decoder must accept both), appended to
    /// `out`. Values are truncated to 32 bits as prost does.
    pub(super) fn uint32s(
        &mut self,
        field: &'static str,
        wire: u8,
        out: &mut Vec<u32>,
    ) -> Result<(), WireError> {
        self.packed_varints(field, wire, |v| out.push(v as u32))
    }

    /// A repeated varint field, packed or not, each value handed to `push`; a packed run
    /// is bounded by its length the way a message is (read past, then refused).
    fn packed_varints(
        &mut self,
        field: &'static str,
        wire: u8,
        mut push: impl FnMut(u64),
    ) -> Result<(), WireError> {
        if wire != WIRE_LEN {
            push(self.uint64(field, wire)?);
            return Ok(());
        }
        let end = self.packed_end()?;
        while self.pos < end {
            push(self.varint()?);
        }
        self.leave(end)
    }

    /// A `repeated double` field, packed or not, appended to `out`.
    fn doubles(
        &mut self,
        field: &'static str,
        wire: u8,
        out: &mut Vec<f64>,
    ) -> Result<(), WireError> {
        if wire != WIRE_LEN {
            out.push(self.double(field, wire)?);
            return Ok(());
        }
        let end = self.packed_end()?;
        while self.pos < end {
            out.push(self.double(field, WIRE_FIXED64)?);
        }
        self.leave(end)
    }

    /// Where a packed run that starts here ends.
    fn packed_end(&mut self) -> Result<usize, WireError> {
        let len = self.varint()?;
        if len > self.remaining() as u64 {
            return Err(WireError::BufferUnderflow);
        }
        Ok(self.pos + len as usize)
    }

    /// Skips an unknown field as prost does, groups included (each nested group level
    /// spends one unit of the recursion budget).
    pub(super) fn skip(&mut self, wire: u8, tag: u32, depth: u32) -> Result<(), WireError> {
        if depth == 0 {
            return Err(WireError::RecursionLimit);
        }
        let len = match wire {
            WIRE_VARINT => {
                self.varint()?;
                0
            }
            WIRE_FIXED64 => 8,
            WIRE_LEN => self.varint()?,
            WIRE_START_GROUP => loop {
                let (inner_tag, inner_wire) = self.key()?;
                if inner_wire == WIRE_END_GROUP {
                    if inner_tag != tag {
                        return Err(WireError::UnexpectedEndGroup);
                    }
                    break 0;
                }
                self.skip(inner_wire, inner_tag, depth - 1)?;
            },
            WIRE_END_GROUP => return Err(WireError::UnexpectedEndGroup),
            WIRE_FIXED32 => 4,
            other => return Err(WireError::InvalidWireType(u64::from(other))),
        };
        if len > self.remaining() as u64 {
            return Err(WireError::BufferUnderflow);
        }
        self.pos += len as usize;
        Ok(())
    }

    /// The fields of a `TimeSeries` up to `end`; its labels are appended to `labels`,
    /// its exemplars' to `exemplar_labels`.
    fn time_series(
        &mut self,
        end: usize,
        depth: u32,
        labels: &mut Vec<RawLabel<'a>>,
        exemplar_labels: &mut Vec<RawLabel<'a>>,
    ) -> Result<RawSeries, WireError> {
        let first_label = labels.len();
        let mut series = RawSeries {
            labels: first_label..first_label,
            samples: Vec::new(),
            created_zeros: 0,
            exemplars: Vec::new(),
            histograms: Vec::new(),
        };
        while self.pos < end {
            let (tag, wire) = self.key()?;
            match tag {
                1 => {
                    let label_end = self.enter("TimeSeries.labels", wire, depth)?;
                    labels.push(self.series_label(label_end, depth - 1)?);
                }
                2 => {
                    let sample_end = self.enter("TimeSeries.samples", wire, depth)?;
                    series.samples.push(self.sample(sample_end, depth - 1)?);
                }
                3 => {
                    let exemplar_end = self.enter("TimeSeries.exemplars", wire, depth)?;
                    let exemplar = self.exemplar(exemplar_end, depth - 1, exemplar_labels)?;
                    series.exemplars.push(exemplar);
                }
                4 => {
                    let histogram_end = self.enter("TimeSeries.histograms", wire, depth)?;
                    series
                        .histograms
                        .push(self.histogram(histogram_end, depth - 1)?);
                }
                _ => self.skip(wire, tag, depth)?,
            }
        }
        self.leave(end)?;
        series.labels.end = labels.len();
        Ok(series)
    }

    /// A series label; its strings are checked for UTF-8 later, or now when the label
    /// is malformed (prost would have checked the strings read before the error).
    fn series_label(&mut self, end: usize, depth: u32) -> Result<RawLabel<'a>, WireError> {
        let mut label = RawLabel {
            name: b"",
            value: b"",
        };
        self.label_fields(&mut label, end, depth).map_err(|err| {
            if err.is_utf8() || label.is_utf8() {
                err
            } else {
                not_utf8()
            }
        })?;
        Ok(label)
    }

    fn label_fields(
        &mut self,
        label: &mut RawLabel<'a>,
        end: usize,
        depth: u32,
    ) -> Result<(), WireError> {
        while self.pos < end {
            let (tag, wire) = self.key()?;
            // A repeated field replaces the string read before, which prost checked
            // for UTF-8 when it read it: check it now, before it is gone.
            match tag {
                1 => label.name = replace_checked(label.name, self.bytes("Label.name", wire)?)?,
                2 => label.value = replace_checked(label.value, self.bytes("Label.value", wire)?)?,
                _ => self.skip(wire, tag, depth)?,
            }
        }
        self.leave(end)
    }

    /// An exemplar's label, checked for UTF-8 at once (exemplars are few).
    fn checked_label(&mut self, end: usize, depth: u32) -> Result<RawLabel<'a>, WireError> {
        let (mut name, mut value): (&'a str, &'a str) = ("", "");
        while self.pos < end {
            let (tag, wire) = self.key()?;
            match tag {
                1 => name = self.string("Label.name", wire)?,
                2 => value = self.string("Label.value", wire)?,
                _ => self.skip(wire, tag, depth)?,
            }
        }
        self.leave(end)?;
        Ok(RawLabel {
            name: name.as_bytes(),
            value: value.as_bytes(),
        })
    }

    pub(super) fn sample(&mut self, end: usize, depth: u32) -> Result<Sample, WireError> {
        let mut sample = Sample::new(0, 0.0);
        while self.pos < end {
            let (tag, wire) = self.key()?;
            match tag {
                1 => sample.v = self.double("Sample.value", wire)?,
                2 => sample.t = self.int64("Sample.timestamp", wire)?,
                _ => self.skip(wire, tag, depth)?,
            }
        }
        self.leave(end)?;
        Ok(sample)
    }

    fn exemplar(
        &mut self,
        end: usize,
        depth: u32,
        labels: &mut Vec<RawLabel<'a>>,
    ) -> Result<RawExemplar, WireError> {
        let mut exemplar = RawExemplar {
            labels: labels.len()..labels.len(),
            value: 0.0,
            timestamp: 0,
        };
        while self.pos < end {
            let (tag, wire) = self.key()?;
            match tag {
                1 => {
                    let label_end = self.enter("Exemplar.labels", wire, depth)?;
                    labels.push(self.checked_label(label_end, depth - 1)?);
                }
                2 => exemplar.value = self.double("Exemplar.value", wire)?,
                3 => exemplar.timestamp = self.int64("Exemplar.timestamp", wire)?,
                _ => self.skip(wire, tag, depth)?,
            }
        }
        self.leave(end)?;
        exemplar.labels.end = labels.len();
        Ok(exemplar)
    }

    /// A native histogram (`proto::Histogram`, the same message in both protocol
    /// versions), with prost's rules: a oneof's last field wins, repeated numbers come
    /// packed or not, `sint` fields are zigzag-decoded from the truncated varint.
    pub(super) fn histogram(
        &mut self,
        end: usize,
        depth: u32,
    ) -> Result<proto::Histogram, WireError> {
        let mut h = proto::Histogram::default();
        while self.pos < end {
            let (tag, wire) = self.key()?;
            match tag {
                1 => h.count = Some(Count::Int(self.uint64("Histogram.count_int", wire)?)),
                2 => h.count = Some(Count::Float(self.double("Histogram.count_float", wire)?)),
                3 => h.sum = self.double("Histogram.sum", wire)?,
                4 => h.schema = zigzag32(self.uint64("Histogram.schema", wire)?),
                5 => h.zero_threshold = self.double("Histogram.zero_threshold", wire)?,
                6 => {
                    let n = self.uint64("Histogram.zero_count_int", wire)?;
                    h.zero_count = Some(ZeroCount::Int(n));
                }
                7 => {
                    let x = self.double("Histogram.zero_count_float", wire)?;
                    h.zero_count = Some(ZeroCount::Float(x));
                }
                8 => {
                    let span_end = self.enter("Histogram.negative_spans", wire, depth)?;
                    h.negative_spans
                        .push(self.bucket_span(span_end, depth - 1)?);
                }
                9 => self.packed_varints("Histogram.negative_deltas", wire, |v| {
                    h.negative_deltas.push(zigzag64(v))
                })?,
                10 => self.doubles("Histogram.negative_counts", wire, &mut h.negative_counts)?,
                11 => {
                    let span_end = self.enter("Histogram.positive_spans", wire, depth)?;
                    h.positive_spans
                        .push(self.bucket_span(span_end, depth - 1)?);
                }
                12 => self.packed_varints("Histogram.positive_deltas", wire, |v| {
                    h.positive_deltas.push(zigzag64(v))
                })?,
                13 => self.doubles("Histogram.positive_counts", wire, &mut h.positive_counts)?,
                // An enum is an int32: the varint truncated, as prost reads it.
                14 => h.reset_hint = self.int64("Histogram.reset_hint", wire)? as i32,
                15 => h.timestamp = self.int64("Histogram.timestamp", wire)?,
                16 => self.doubles("Histogram.custom_values", wire, &mut h.custom_values)?,
                17 => h.start_timestamp = self.int64("Histogram.start_timestamp", wire)?,
                _ => self.skip(wire, tag, depth)?,
            }
        }
        self.leave(end)?;
        Ok(h)
    }

    fn bucket_span(&mut self, end: usize, depth: u32) -> Result<BucketSpan, WireError> {
        let mut span = BucketSpan::default();
        while self.pos < end {
            let (tag, wire) = self.key()?;
            match tag {
                1 => span.offset = zigzag32(self.uint64("BucketSpan.offset", wire)?),
                2 => span.length = self.uint64("BucketSpan.length", wire)? as u32,
                _ => self.skip(wire, tag, depth)?,
            }
        }
        self.leave(end)?;
        Ok(span)
    }

    fn metadata(&mut self, end: usize, depth: u32) -> Result<proto::MetricMetadata, WireError> {
        let mut type_ = 0i32;
        let (mut family, mut help, mut unit) = ("", "", "");
        while self.pos < end {
            let (tag, wire) = self.key()?;
            match tag {
                // An enum is an int32: the varint truncated, as prost reads it.
                1 => type_ = self.int64("MetricMetadata.type", wire)? as i32,
                2 => family = self.string("MetricMetadata.metric_family_name", wire)?,
                4 => help = self.string("MetricMetadata.help", wire)?,
                5 => unit = self.string("MetricMetadata.unit", wire)?,
                _ => self.skip(wire, tag, depth)?,
            }
        }
        self.leave(end)?;
        Ok(proto::MetricMetadata {
            r#type: type_,
            metric_family_name: family.to_string(),
            help: help.to_string(),
            unit: unit.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::model::stale_nan;

    fn label(name: &str, value: &str) -> proto::Label {
        proto::Label {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn decodes_what_prost_encodes() {
        let request = proto::WriteRequest {
            timeseries: vec![
                proto::TimeSeries {
                    labels: vec![label("__name__", "up"), label("job", "ünï")],
                    samples: vec![
                        proto::Sample {
                            value: stale_nan(),
                            timestamp: -5,
                        },
                        proto::Sample {
                            value: 1.5,
                            timestamp: 1_700_000_000_000,
                        },
                    ],
                    exemplars: vec![proto::Exemplar {
                        labels: vec![label("trace_id", "abc")],
                        value: 1.0,
                        timestamp: 3,
                    }],
                    histograms: vec![],
                },
                proto::TimeSeries {
                    labels: vec![label("__name__", "h")],
                    histograms: vec![
                        proto::Histogram {
                            count: Some(Count::Float(6.5)),
                            sum: -2.5,
                            schema: -53,
                            zero_count: Some(ZeroCount::Float(0.5)),
                            positive_spans: vec![BucketSpan {
                                offset: 0,
                                length: 2,
                            }],
                            positive_counts: vec![1.0, 5.0],
                            custom_values: vec![0.25],
                            reset_hint: 3,
                            timestamp: 9,
                            start_timestamp: 4,
                            ..Default::default()
                        },
                        proto::Histogram {
                            count: Some(Count::Int(u64::MAX)),
                            schema: -4,
                            zero_threshold: 1e-9,
                            zero_count: Some(ZeroCount::Int(1)),
                            negative_spans: vec![
                                BucketSpan {
                                    offset: i32::MIN,
                                    length: u32::MAX,
                                },
                                BucketSpan {
                                    offset: 3,
                                    length: 1,
                                },
                            ],
                            negative_deltas: vec![i64::MIN, -1, 0, i64::MAX],
                            negative_counts: vec![f64::NAN],
                            positive_deltas: vec![7],
                            timestamp: -9,
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
            ],
            metadata: vec![proto::MetricMetadata {
                r#type: -3,
                metric_family_name: "up".into(),
                help: "Up.".into(),
                unit: "s".into(),
            }],
        };
        let body = request.encode_to_vec();
        let got = decode_write_request(&body).unwrap();
        assert_eq!(got.series.len(), 2);
        assert_eq!(
            got.labels_of(&got.series[0]),
            &[
                RawLabel {
                    name: b"__name__",
                    value: b"up"
                },
                RawLabel {
                    name: b"job",
                    value: "ünï".as_bytes()
                }
            ]
        );
        assert_eq!(
            got.series[0].samples,
            vec![
                Sample::new(-5, stale_nan()),
                Sample::new(1_700_000_000_000, 1.5)
            ]
        );
        assert_eq!(got.series[0].exemplars.len(), 1);
        assert_eq!(got.series[0].exemplars[0].timestamp, 3);
        assert_eq!(
            got.exemplar_labels,
            vec![RawLabel {
                name: b"trace_id",
                value: b"abc"
            }]
        );
        // NaN != NaN: compare the encodings.
        let histograms = |hs: &[proto::Histogram]| -> Vec<Vec<u8>> {
            hs.iter().map(Message::encode_to_vec).collect()
        };
        assert_eq!(
            histograms(&got.series[1].histograms),
            histograms(&request.timeseries[1].histograms)
        );
        assert_eq!(got.labels_of(&got.series[1]).len(), 1);
        assert_eq!(got.metadata, request.metadata);
    }

    #[test]
    fn refusals_match_prost() {
        let cases: &[&[u8]] = &[
            // timeseries whose length runs past the body
            &[0x0a, 0x05, 0x0a],
            // a label whose value runs past its message but not the body
            &[0x0a, 0x06, 0x0a, 0x02, 0x12, 0x03, b'a', b'b'],
            // field number 0
            &[0x00],
            // wire type 7
            &[0x0f],
            // end group without a start
            &[0x0c],
            // timeseries sent as a varint
            &[0x08, 0x01],
            // an 11-byte varint
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            // a tenth varint byte above 1
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ],
            // a group of unknown field 5 closed by field 6
            &[0x2b, 0x34],
            // a group where the metadata message belongs
            &[0x1b, 0x1c],
            // a sample value with 4 of its 8 bytes
            &[0x0a, 0x07, 0x12, 0x05, 0x09, 0, 0, 0, 0],
        ];
        for body in cases {
            let prost = proto::WriteRequest::decode(*body);
            let ours = decode_write_request(body);
            assert!(prost.is_err(), "prost accepted {body:?}");
            assert!(ours.is_err(), "accepted {body:?}");
        }
        // A properly closed group in an unknown field is skipped by both.
        let group: &[u8] = &[0x2b, 0x08, 0x01, 0x2c];
        assert!(proto::WriteRequest::decode(group).is_ok());
        assert!(decode_write_request(group).unwrap().series.is_empty());
    }

    #[test]
    fn invalid_utf8_labels_are_left_to_the_caller_unless_an_error_follows() {
        // TimeSeries{labels: [{name: "a", value: 0xff}]}: decoded, the caller checks.
        let body: &[u8] = &[0x0a, 0x08, 0x0a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, 0xff];
        assert!(proto::WriteRequest::decode(body).is_err());
        let got = decode_write_request(body).unwrap();
        assert!(!got.labels.iter().all(RawLabel::is_utf8));
        // The same followed by a truncated field: prost stops at the label; so do we.
        let mut truncated = body.to_vec();
        truncated.extend_from_slice(&[0x0a, 0x05]);
        let prost = proto::WriteRequest::decode(truncated.as_slice()).unwrap_err();
        assert!(prost.to_string().contains("UTF-8"), "{prost}");
        assert!(decode_write_request(&truncated).unwrap_err().is_utf8());
    }

    #[test]
    fn a_replaced_string_that_is_not_utf8_is_refused() {
        // Label {name: 0xff, name: "a"} then a bad wire type: prost stops at the first name.
        let body: &[u8] = &[
            0x0a, 0x0b, 0x0a, 0x09, 0x0a, 0x01, 0xff, 0x0a, 0x01, b'a', 0x12, 0x01, b'v',
        ];
        let prost = proto::WriteRequest::decode(body).unwrap_err();
        assert!(prost.to_string().contains("UTF-8"), "{prost}");
        assert!(decode_write_request(body).unwrap_err().is_utf8());
    }

    #[test]
    fn invalid_utf8_is_found_even_past_the_message_end() {
        // Label {value: 3 bytes} whose message length says 2: the string is read from the
        // body first, so its UTF-8 is checked before the length overrun, as prost does.
        let body: &[u8] = &[0x0a, 0x06, 0x0a, 0x02, 0x12, 0x03, 0xff, 0xfe, 0xfd];
        let prost = proto::WriteRequest::decode(body).unwrap_err();
        assert!(prost.to_string().contains("UTF-8"), "{prost}");
        assert!(decode_write_request(body).unwrap_err().is_utf8());
    }

    #[test]
    fn deep_groups_hit_the_recursion_limit_where_prost_does() {
        for depth in [98usize, 99, 100, 101, 102] {
            // `depth` nested groups of field 5 at the top level.
            let mut body = vec![0x2b; depth];
            body.extend(std::iter::repeat_n(0x2c, depth));
            let prost = proto::WriteRequest::decode(body.as_slice()).is_ok();
            let ours = decode_write_request(&body).is_ok();
            assert_eq!(prost, ours, "depth {depth}");
        }
    }
}
