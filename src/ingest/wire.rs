//! The wire envelope of remote write: `Content-Type`/`Content-Encoding` negotiation (which
//! also picks the protocol version, 1.0 or 2.0) and bounded snappy (block format)
//! decompression. Calls nothing else in the crate.

use super::{IngestError, RejectReason};

const PROTOBUF_MEDIA_TYPE: &str = "application/x-protobuf";
const RW1_MESSAGE: &str = "prometheus.WriteRequest";
const RW2_MESSAGE: &str = "io.prometheus.write.v2.Request";

/// The remote-write protocol version a request is sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `prometheus.WriteRequest`.
    V1,
    /// `io.prometheus.write.v2.Request` (ADR 0027).
    V2,
}

/// Picks the protocol: `application/x-protobuf` is 1.0 unless its `proto=` parameter
/// names the 2.0 message; any other media type or message is 415. An absent header is
/// 1.0, as in Prometheus.
pub(super) fn check_content_type(content_type: Option<&str>) -> Result<Protocol, IngestError> {
    let Some(content_type) = content_type.filter(|v| !v.trim().is_empty()) else {
        return Ok(Protocol::V1);
    };
    let mut parts = content_type.split(';');
    let media_type = parts.next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case(PROTOBUF_MEDIA_TYPE) {
        return Err(unsupported_type(format!(
            "unsupported Content-Type {content_type:?}: remote write expects {PROTOBUF_MEDIA_TYPE}"
        )));
    }
    let mut protocol = Protocol::V1;
    for param in parts {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("proto") {
            continue;
        }
        protocol = match value.trim().trim_matches('"') {
            RW1_MESSAGE => Protocol::V1,
            RW2_MESSAGE => Protocol::V2,
            other => {
                return Err(unsupported_type(format!(
                    "unsupported protobuf message {other:?} in Content-Type; \
                     this server accepts {RW1_MESSAGE} and {RW2_MESSAGE}"
                )))
            }
        };
    }
    Ok(protocol)
}

fn unsupported_type(message: String) -> IngestError {
    IngestError::new(RejectReason::UnsupportedContentType, message)
}

/// Accepts snappy. An absent header means snappy, as Prometheus's receiver assumes for
/// remote write 1.0 senders that predate the header.
pub(super) fn check_content_encoding(content_encoding: Option<&str>) -> Result<(), IngestError> {
    match content_encoding.map(str::trim) {
        None | Some("") => Ok(()),
        Some(enc) if enc.eq_ignore_ascii_case("snappy") => Ok(()),
        Some(enc) => Err(IngestError::new(
            RejectReason::UnsupportedEncoding,
            format!("unsupported Content-Encoding {enc:?}: only snappy is accepted"),
        )),
    }
}

/// Decompresses a snappy block, refusing before allocation when the length in the
/// block's header exceeds `max_len`.
pub fn decompress_snappy(body: &[u8], max_len: usize) -> Result<Vec<u8>, IngestError> {
    let len = snap::raw::decompress_len(body).map_err(bad_snappy)?;
    if len > max_len {
        return Err(IngestError::new(
            RejectReason::TooLarge,
            format!("decompressed body would be {len} bytes, over the limit of {max_len} bytes"),
        ));
    }
    let mut raw = vec![0u8; len];
    let written = snap::raw::Decoder::new()
        .decompress(body, &mut raw)
        .map_err(bad_snappy)?;
    raw.truncate(written);
    Ok(raw)
}

fn bad_snappy(err: snap::Error) -> IngestError {
    IngestError::new(
        RejectReason::BadSnappy,
        format!("body is not valid snappy (block format): {err}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(check_content_type(None), Ok(Protocol::V1));
        assert_eq!(
            check_content_type(Some("application/x-protobuf")),
            Ok(Protocol::V1)
        );
        assert_eq!(
            check_content_type(Some(
                "application/x-protobuf; proto=prometheus.WriteRequest"
            )),
            Ok(Protocol::V1)
        );
        assert_eq!(
            check_content_type(Some(
                "application/x-protobuf;proto=io.prometheus.write.v2.Request"
            )),
            Ok(Protocol::V2)
        );
        assert_eq!(
            check_content_type(Some(
                "Application/X-Protobuf; proto=\"io.prometheus.write.v2.Request\""
            )),
            Ok(Protocol::V2)
        );
        let unknown = check_content_type(Some(
            "application/x-protobuf;proto=io.prometheus.write.v3.Request",
        ))
        .unwrap_err();
        assert_eq!(unknown.http_status(), 415);
        assert!(unknown.message.contains("v3"), "{}", unknown.message);
        assert_eq!(
            check_content_type(Some("application/json"))
                .unwrap_err()
                .http_status(),
            415
        );
        assert!(check_content_type(Some("application/x-protobuf; proto=foo.Bar")).is_err());
    }

    #[test]
    fn encodings() {
        assert!(check_content_encoding(None).is_ok());
        assert!(check_content_encoding(Some("snappy")).is_ok());
        let err = check_content_encoding(Some("gzip")).unwrap_err();
        assert_eq!(err.reason, RejectReason::UnsupportedEncoding);
        assert!(err.message.contains("gzip"));
    }

    #[test]
    fn snappy_round_trip_and_limit() {
        let body = snap::raw::Encoder::new()
            .compress_vec(b"hello hello")
            .unwrap();
        assert_eq!(decompress_snappy(&body, 11).unwrap(), b"hello hello");
        assert_eq!(
            decompress_snappy(&body, 10).unwrap_err().reason,
            RejectReason::TooLarge
        );
        // A header promising 5 bytes followed by a truncated literal.
        assert_eq!(
            decompress_snappy(&[0x05, 0x10, b'a'], 100)
                .unwrap_err()
                .reason,
            RejectReason::BadSnappy
        );
    }
}
