//! Ingest: decoding and validating Prometheus remote-write (1.0 and 2.0) and OTLP metrics
//! requests.
//!
//! Owns: the path from an HTTP body (plus its `Content-Type` and `Content-Encoding`) to
//! validated `model::Series`, and the ingest self-metrics. Submodules: `otlp` (OTLP/HTTP
//! metrics translated into remote-write series, then validated like them), `wire` (header
//! negotiation, which picks the protocol version, and bounded snappy decompression),
//! `decode` (hand-written protobuf decoding of remote write 1.0 that borrows label
//! strings from the body, ADR 0025), `decode_v2` (the same for remote write 2.0, whose
//! symbol table resolves into 1.0's decoded shape so both meet one validation, ADR 0027),
//! `label_cache` (decoded labels to shared `Labels`, allocating only for label sets not
//! seen recently), `validate` (label and sample rules, decoded requests to model types),
//! `bounds` (the wall-clock time bounds applied where a
//! client's write enters, ADR 0009), `metrics` (counters under `timbala_ingest_`),
//! `fuzzing` (the invariant-checking entry point of the fuzz targets).
//! Calls `model`, `proto`, and `storage` for its shared vocabulary only (reject reasons,
//! time bounds); knows nothing about HTTP servers or where data is stored, so the same
//! decoder serves the HTTP edge, the fuzz target and peer-to-peer writes.
//!
//! A request is accepted or refused as a whole: one invalid series or native histogram
//! refuses the request, so a client never has to guess which part was stored.
//!
//! Two entry points decode remote write: `decode_write_request` for what clients send,
//! and `decode_internal_write_request` for the internal write between nodes, which may
//! carry the created-timestamp zero requests (`model::created_zero`) that a client's
//! request must not (the client-facing decoders turn those bits into a plain NaN).

mod bounds;
mod decode;
mod decode_v2;
#[doc(hidden)]
pub mod fuzzing;
mod label_cache;
mod metrics;
pub mod otlp;
mod validate;
mod wire;

use std::fmt;
use std::sync::LazyLock;

use prost::Message;

use crate::model::{HistogramSeries, MetricMetadata, Series, SeriesExemplars};
use crate::proto;

pub use bounds::enforce_time_bounds;
pub use metrics::IngestMetrics;
pub use wire::{decompress_snappy, Protocol};

/// Why a request was refused. Each reason maps to one HTTP status and one metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// `Content-Type` is not remote-write 1.0 protobuf (415).
    UnsupportedContentType,
    /// `Content-Encoding` is not snappy (415).
    UnsupportedEncoding,
    /// Compressed or decompressed body over the limit (413).
    TooLarge,
    /// Not valid snappy block format (400).
    BadSnappy,
    /// Not valid gzip (OTLP; 400).
    BadGzip,
    /// Not a valid `prometheus.WriteRequest` or OTLP export request (400).
    BadProtobuf,
    /// A label name or value is not valid UTF-8 (400).
    InvalidUtf8,
    /// A series breaks the label rules: empty, unsorted, duplicated, no metric name (400).
    InvalidLabels,
    /// A native histogram breaks Prometheus's rules (schema, spans, counts; 400).
    InvalidHistogram,
    /// Remote write 2.0 symbol references that do not resolve: `symbols[0]` not empty,
    /// an odd number of label references, a reference past the symbol table (400).
    InvalidSymbolRefs,
}

impl RejectReason {
    pub const ALL: [RejectReason; 10] = [
        RejectReason::UnsupportedContentType,
        RejectReason::UnsupportedEncoding,
        RejectReason::TooLarge,
        RejectReason::BadSnappy,
        RejectReason::BadGzip,
        RejectReason::BadProtobuf,
        RejectReason::InvalidUtf8,
        RejectReason::InvalidLabels,
        RejectReason::InvalidHistogram,
        RejectReason::InvalidSymbolRefs,
    ];

    /// The value of the `reason` label on the rejection metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::UnsupportedContentType => "unsupported_content_type",
            RejectReason::UnsupportedEncoding => "unsupported_encoding",
            RejectReason::TooLarge => "too_large",
            RejectReason::BadSnappy => "bad_snappy",
            RejectReason::BadGzip => "bad_gzip",
            RejectReason::BadProtobuf => "bad_protobuf",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::InvalidLabels => "invalid_labels",
            RejectReason::InvalidHistogram => "invalid_histogram",
            RejectReason::InvalidSymbolRefs => "invalid_symbol_refs",
        }
    }

    /// The HTTP status Prometheus's sender understands: 4xx is never retried.
    pub fn http_status(self) -> u16 {
        match self {
            RejectReason::UnsupportedContentType | RejectReason::UnsupportedEncoding => 415,
            RejectReason::TooLarge => 413,
            RejectReason::BadSnappy
            | RejectReason::BadGzip
            | RejectReason::BadProtobuf
            | RejectReason::InvalidUtf8
            | RejectReason::InvalidLabels
            | RejectReason::InvalidHistogram
            | RejectReason::InvalidSymbolRefs => 400,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A refused request: the reason (status, metric label) and a message for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestError {
    pub reason: RejectReason,
    pub message: String,
}

impl IngestError {
    pub(crate) fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        IngestError {
            reason,
            message: message.into(),
        }
    }

    pub fn http_status(&self) -> u16 {
        self.reason.http_status()
    }
}

impl fmt::Display for IngestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for IngestError {}

/// A valid remote-write request, ready for storage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecodedWrite {
    /// Series with at least one sample, labels sorted and unique, samples in time order.
    pub series: Vec<Series>,
    pub metadata: Vec<MetricMetadata>,
    /// Float samples in `series` as sent; the created-timestamp zero requests among
    /// them (`model::created_zero`, remote write 2.0) are not counted.
    pub num_samples: u64,
    /// Exemplars by series (series without samples included), each series' in time
    /// order.
    pub exemplars: Vec<SeriesExemplars>,
    /// Exemplars in `exemplars`.
    pub num_exemplars: u64,
    /// Exemplars carried by the request and dropped: their labels break the rules.
    pub exemplars_dropped: u64,
    /// Native histogram samples by series, each series' in time order, validated.
    pub histograms: Vec<HistogramSeries>,
    /// Histogram samples in `histograms`.
    pub num_histograms: u64,
}

/// How large a request may get. The compressed body limit is enforced by the caller
/// while reading; this bounds the memory that decompression may allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_decompressed_bytes: usize,
}

impl DecodeLimits {
    /// Snappy on remote-write protobuf compresses about 5-10x; allowing a decompressed
    /// size of 16x the body limit (and at least 32 MiB, Prometheus's remote-read limit)
    /// never refuses an honest request and still bounds a decompression bomb.
    pub fn for_body_limit(max_body_bytes: usize) -> Self {
        DecodeLimits {
            max_decompressed_bytes: max_body_bytes.saturating_mul(16).max(32 << 20),
        }
    }
}

/// The label sets of recently decoded series, shared by every decoder in the process
/// (the HTTP edge, peers' forwarded writes, hint replay): a pure memo of immutable
/// values, bounded in size (see `label_cache`).
static LABEL_SETS: LazyLock<label_cache::LabelSetCache> = LazyLock::new(Default::default);

/// The protocol version of a client's remote-write request, from its `Content-Type`
/// (absent: 1.0, as Prometheus's receiver reads old senders); `Err` is the 415.
pub fn write_protocol(content_type: Option<&str>) -> Result<Protocol, IngestError> {
    wire::check_content_type(content_type)
}

/// Decodes and validates one remote-write request from a client, 1.0 or 2.0 by its
/// `Content-Type` (`write_protocol`).
///
/// `content_type` and `content_encoding` are the raw header values (None when absent).
/// Absent headers are read as remote write 1.0 with snappy, as Prometheus's receiver
/// does for old senders.
pub fn decode_write_request(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
    limits: &DecodeLimits,
) -> Result<DecodedWrite, IngestError> {
    let protocol = wire::check_content_type(content_type)?;
    wire::check_content_encoding(content_encoding)?;
    let raw = decompress_snappy(body, limits.max_decompressed_bytes)?;
    match protocol {
        Protocol::V1 => {
            let mut decoded = decode_protobuf(&raw)?;
            validate::make_values_plain(&mut decoded.series);
            Ok(decoded)
        }
        Protocol::V2 => decode_protobuf_v2(&raw),
    }
}

/// Decodes and validates the internal write between nodes: a snappy remote-write 1.0
/// body whose samples may be created-timestamp zero requests (`model::created_zero`),
/// kept as they are for the owner's TSDB.
pub fn decode_internal_write_request(
    body: &[u8],
    limits: &DecodeLimits,
) -> Result<DecodedWrite, IngestError> {
    let raw = decompress_snappy(body, limits.max_decompressed_bytes)?;
    decode_protobuf(&raw)
}

fn wire_error(err: decode::WireError, message: &str) -> IngestError {
    let detail = err.to_string();
    if err.is_utf8() {
        utf8_error(&detail)
    } else {
        IngestError::new(
            RejectReason::BadProtobuf,
            format!("body is not a valid {message} protobuf: {detail}"),
        )
    }
}

/// Decodes and validates a decompressed `prometheus.WriteRequest`.
fn decode_protobuf(raw: &[u8]) -> Result<DecodedWrite, IngestError> {
    let request = decode::decode_write_request(raw)
        .map_err(|err| wire_error(err, "prometheus.WriteRequest"))?;
    validate::raw_into_decoded_write(request, &LABEL_SETS)
}

/// Decodes and validates a decompressed `io.prometheus.write.v2.Request`.
fn decode_protobuf_v2(raw: &[u8]) -> Result<DecodedWrite, IngestError> {
    let request = decode_v2::decode_request(raw)
        .map_err(|err| wire_error(err, "io.prometheus.write.v2.Request"))?;
    let request = decode_v2::into_raw_write(request)?;
    validate::raw_into_decoded_write(request, &LABEL_SETS)
}

/// `decode_protobuf` done with prost and owned strings: the reference that the
/// differential fuzz test holds the hand-written decoder to (`fuzzing`).
fn reference_decode_protobuf(raw: &[u8]) -> Result<DecodedWrite, IngestError> {
    let request = proto::WriteRequest::decode(raw).map_err(protobuf_error)?;
    validate::into_decoded_write(request)
}

/// `decode_protobuf_v2` with prost's decoding (the reference for `fuzzing`); the steps
/// after decoding are shared, so the comparison is about the wire decoding.
fn reference_decode_protobuf_v2(raw: &[u8]) -> Result<DecodedWrite, IngestError> {
    let request = proto::write_v2::Request::decode(raw).map_err(protobuf_error)?;
    let request = decode_v2::into_raw_write(decode_v2::from_reference(&request))?;
    validate::raw_into_decoded_write(request, &label_cache::LabelSetCache::default())
}

/// Describes a prost decode error for the client. prost rejects invalid UTF-8 in string
/// fields while decoding; that case gets its own reason and says so plainly.
fn protobuf_error(err: prost::DecodeError) -> IngestError {
    let detail = err.to_string();
    if detail.contains("UTF-8") {
        utf8_error(&detail)
    } else {
        bad_protobuf(&detail)
    }
}

pub(super) fn utf8_error(detail: &str) -> IngestError {
    IngestError::new(
        RejectReason::InvalidUtf8,
        format!("label names and values must be valid UTF-8: {detail}"),
    )
}

fn bad_protobuf(detail: &str) -> IngestError {
    IngestError::new(
        RejectReason::BadProtobuf,
        format!("body is not a valid prometheus.WriteRequest protobuf: {detail}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;

    fn label(name: &str, value: &str) -> proto::Label {
        proto::Label {
            name: name.into(),
            value: value.into(),
        }
    }

    fn one_series(labels: Vec<proto::Label>, samples: &[(i64, f64)]) -> proto::WriteRequest {
        proto::WriteRequest {
            timeseries: vec![proto::TimeSeries {
                labels,
                samples: samples
                    .iter()
                    .map(|&(timestamp, value)| proto::Sample { value, timestamp })
                    .collect(),
                ..Default::default()
            }],
            metadata: vec![],
        }
    }

    fn decode(body: &[u8]) -> Result<DecodedWrite, IngestError> {
        decode_write_request(
            Some("application/x-protobuf"),
            Some("snappy"),
            body,
            &DecodeLimits::for_body_limit(1 << 20),
        )
    }

    #[test]
    fn valid_request_decodes_to_sorted_series() {
        let req = one_series(
            vec![label("__name__", "up"), label("job", "api")],
            &[(20, 1.0), (10, 0.0)],
        );
        let got = decode(&proto::encode_snappy(&req)).unwrap();
        assert_eq!(got.num_samples, 2);
        assert_eq!(
            got.series[0].labels,
            Labels::from_pairs([("__name__", "up"), ("job", "api")])
        );
        let times: Vec<i64> = got.series[0].samples.iter().map(|s| s.t).collect();
        assert_eq!(times, vec![10, 20]);
    }

    #[test]
    fn empty_request_is_valid() {
        let got = decode(&proto::encode_snappy(&proto::WriteRequest::default())).unwrap();
        assert!(got.series.is_empty());
        let got = decode(b"").unwrap_err();
        assert_eq!(got.reason, RejectReason::BadSnappy);
    }

    #[test]
    fn garbage_is_refused_with_reason() {
        assert_eq!(
            decode(b"\xff\xff\xff\xff\xff").unwrap_err().reason,
            RejectReason::BadSnappy
        );
        let not_proto = snap::raw::Encoder::new()
            .compress_vec(b"\x0a\xff\xff\xff\xff\x0f")
            .unwrap();
        assert_eq!(
            decode(&not_proto).unwrap_err().reason,
            RejectReason::BadProtobuf
        );
    }

    #[test]
    fn invalid_utf8_is_named() {
        // WriteRequest{timeseries[0].labels[0] = {name: "a", value: 0xff}} by hand.
        let label = [0x0a, 0x01, b'a', 0x12, 0x01, 0xff];
        let mut series = vec![0x0a, label.len() as u8];
        series.extend_from_slice(&label);
        let mut raw = vec![0x0a, series.len() as u8];
        raw.extend_from_slice(&series);
        let body = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
        let err = decode(&body).unwrap_err();
        assert_eq!(err.reason, RejectReason::InvalidUtf8);
        assert!(err.message.contains("UTF-8"), "{}", err.message);
    }

    #[test]
    fn decompression_bomb_is_too_large() {
        let raw = vec![0u8; 4 << 20];
        let body = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
        let limits = DecodeLimits {
            max_decompressed_bytes: 1 << 20,
        };
        let err = decode_write_request(None, None, &body, &limits).unwrap_err();
        assert_eq!(err.reason, RejectReason::TooLarge);
        assert_eq!(err.http_status(), 413);
    }

    #[test]
    fn statuses_match_prometheus_sender_expectations() {
        for reason in RejectReason::ALL {
            assert_eq!(RejectReason::ALL[reason.index()], reason);
            let status = reason.http_status();
            assert!((400..500).contains(&status) && status != 429);
        }
    }
}
