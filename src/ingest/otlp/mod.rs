//! OTLP/HTTP metrics ingest: from an HTTP body (plus its `Content-Type` and
//! `Content-Encoding`) to the same validated series remote write produces.
//!
//! Owns: the OTLP envelope (protobuf only; gzip or no compression, decompressed within
//! the same bound as remote write's snappy), `translate` (OTLP metrics to remote-write
//! series the way Prometheus 3.x does by default; ADR 0021) and `naming` (metric, unit
//! and label names). The translated request then goes through remote write's own
//! validation (`validate`), so both paths store exactly the same kind of series under
//! the same label rules and limits. Calls `proto` and the rest of `ingest`.

mod naming;
mod translate;

use std::io::Read as _;

use prost::Message;

use super::{validate, DecodeLimits, DecodedWrite, IngestError, RejectReason};
use crate::proto::otlp;

pub use translate::{DropReason, DroppedPoints};

const PROTOBUF_MEDIA_TYPE: &str = "application/x-protobuf";
const JSON_MEDIA_TYPE: &str = "application/json";

/// A valid OTLP export request, translated and validated, ready for storage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecodedOtlp {
    /// What remote write would have carried: series, metadata, sample and exemplar counts.
    pub write: DecodedWrite,
    /// Data points in the request.
    pub data_points: u64,
    /// Data points dropped by the translation (the rest is stored).
    pub dropped: DroppedPoints,
}

impl DecodedOtlp {
    /// Data points that became samples.
    pub fn accepted_points(&self) -> u64 {
        self.data_points - self.dropped.total()
    }
}

/// Decodes, translates and validates one OTLP/HTTP metrics export request.
pub fn decode_otlp_request(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
    limits: &DecodeLimits,
) -> Result<DecodedOtlp, IngestError> {
    check_content_type(content_type)?;
    let decompressed;
    let raw = match content_encoding.map(str::trim) {
        None | Some("") => body,
        Some(enc) if enc.eq_ignore_ascii_case("identity") => body,
        Some(enc) if enc.eq_ignore_ascii_case("gzip") => {
            decompressed = gunzip(body, limits.max_decompressed_bytes)?;
            &decompressed
        }
        Some(enc) => {
            return Err(IngestError::new(
                RejectReason::UnsupportedEncoding,
                format!("unsupported Content-Encoding {enc:?}: OTLP accepts gzip or none"),
            ))
        }
    };
    if raw.len() > limits.max_decompressed_bytes {
        return Err(too_large(limits.max_decompressed_bytes));
    }
    let request = otlp::ExportMetricsServiceRequest::decode(raw).map_err(|e| {
        IngestError::new(
            RejectReason::BadProtobuf,
            format!("body is not a valid OTLP ExportMetricsServiceRequest: {e}"),
        )
    })?;
    let translated = translate::translate(request, limits.max_decompressed_bytes)?;
    let mut write = validate::into_decoded_write(translated.request)?;
    validate::make_values_plain(&mut write.series);
    write.exemplars_dropped += translated.exemplars;
    Ok(DecodedOtlp {
        write,
        data_points: translated.data_points,
        dropped: translated.dropped,
    })
}

fn check_content_type(content_type: Option<&str>) -> Result<(), IngestError> {
    let media_type = content_type
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if media_type.eq_ignore_ascii_case(PROTOBUF_MEDIA_TYPE) {
        return Ok(());
    }
    let message = if media_type.eq_ignore_ascii_case(JSON_MEDIA_TYPE) {
        format!(
            "OTLP/JSON is not supported; configure the exporter's protocol as http/protobuf \
             (Content-Type {PROTOBUF_MEDIA_TYPE})"
        )
    } else {
        format!(
            "unsupported Content-Type {:?}: OTLP/HTTP metrics expects {PROTOBUF_MEDIA_TYPE}",
            content_type.unwrap_or_default()
        )
    };
    Err(IngestError::new(
        RejectReason::UnsupportedContentType,
        message,
    ))
}

/// Decompresses a gzip body, refusing once it grows past `max_len` bytes.
fn gunzip(body: &[u8], max_len: usize) -> Result<Vec<u8>, IngestError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(max_len as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            IngestError::new(
                RejectReason::BadGzip,
                format!("body is not valid gzip: {e}"),
            )
        })?;
    if out.len() > max_len {
        return Err(too_large(max_len));
    }
    Ok(out)
}

fn too_large(max_len: usize) -> IngestError {
    IngestError::new(
        RejectReason::TooLarge,
        format!("decompressed body is over the limit of {max_len} bytes"),
    )
}

#[cfg(test)]
mod tests;
