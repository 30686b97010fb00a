//! Fuzzing entry points shared by the cargo-fuzz targets (`fuzz/`) and the stable,
//! time-bounded mutation tests (`tests/fuzz_remote_write.rs`, `tests/fuzz_otlp.rs`).
//! Calls only `ingest`.
//!
//! The first input byte picks the layer under test: even means the rest is an HTTP body
//! (exercises snappy), odd means the rest is a raw protobuf that is compressed first
//! (reaches prost and validation far more often); bit 1 picks the protocol (set: remote
//! write 2.0). Any panic is a bug; an accepted request must satisfy every promise
//! `DecodedWrite` makes to storage.
//!
//! `decode_matches_reference` and `decode_v2_matches_reference` are the differential
//! checks (ADR 0025, 0027): the hand-written remote-write decoders must accept and refuse
//! exactly what prost's decoding does, with the same reason, and produce the same series
//! and metadata.

use std::io::Write as _;

use super::otlp::decode_otlp_request;
use super::validate;
use super::{
    decode_protobuf, decode_protobuf_v2, decode_write_request, reference_decode_protobuf,
    reference_decode_protobuf_v2, DecodeLimits, DecodedWrite, IngestError,
};
use crate::model::{self, MAX_LABELS_PER_SERIES, MAX_LABEL_BYTES_PER_SERIES, METRIC_NAME};

const RW1_CONTENT_TYPE: &str = "application/x-protobuf";
const RW2_CONTENT_TYPE: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

/// Small enough that a fuzzer's "decompression bomb" inputs stay cheap.
const FUZZ_LIMITS: DecodeLimits = DecodeLimits {
    max_decompressed_bytes: 1 << 20,
};

/// Decodes `data` and panics if an accepted request breaks an invariant.
/// Returns whether the request was accepted.
pub fn decode_and_check(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let compressed;
    let body = if mode % 2 == 0 {
        rest
    } else {
        match snap::raw::Encoder::new().compress_vec(rest) {
            Ok(c) => {
                compressed = c;
                &compressed
            }
            Err(_) => return false,
        }
    };
    let content_type = if mode & 2 == 0 {
        RW1_CONTENT_TYPE
    } else {
        RW2_CONTENT_TYPE
    };
    match decode_write_request(Some(content_type), Some("snappy"), body, &FUZZ_LIMITS) {
        Ok(decoded) => {
            assert_invariants(&decoded);
            // What a client sends never carries a created-zero request unless the 2.0
            // decoder put it there, and then only before a sample of its series.
            for series in &decoded.series {
                let zeros = series
                    .samples
                    .iter()
                    .filter(|s| model::is_created_zero(s.v));
                assert!(mode & 2 != 0 || zeros.count() == 0);
            }
            true
        }
        Err(err) => {
            assert!(!err.message.is_empty(), "a refusal must say why");
            false
        }
    }
}

/// Decodes `data` as an OTLP/HTTP metrics body and panics if an accepted request breaks
/// an invariant (remote write's, plus Prometheus-valid names and a consistent count of
/// data points). The first byte picks the layer: 0 mod 3, the rest is the body as sent
/// uncompressed; 1, the rest is gzipped first (reaches prost and the translation); 2,
/// the rest is a gzip body as sent (exercises decompression). Returns whether the
/// request was accepted.
pub fn otlp_decode_and_check(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let gzipped;
    let (body, encoding) = match mode % 3 {
        0 => (rest, None),
        1 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            if gz.write_all(rest).is_err() {
                return false;
            }
            gzipped = match gz.finish() {
                Ok(g) => g,
                Err(_) => return false,
            };
            (gzipped.as_slice(), Some("gzip"))
        }
        _ => (rest, Some("gzip")),
    };
    match decode_otlp_request(Some("application/x-protobuf"), encoding, body, &FUZZ_LIMITS) {
        Ok(decoded) => {
            assert_invariants(&decoded.write);
            assert!(decoded.dropped.total() <= decoded.data_points);
            assert_eq!(
                decoded.dropped.first.is_some(),
                decoded.dropped.total() > 0,
                "dropped points must be described"
            );
            for series in &decoded.write.series {
                assert!(series.labels.len() <= MAX_LABELS_PER_SERIES);
                let bytes: usize = series
                    .labels
                    .iter()
                    .map(|l| l.name.len() + l.value.len())
                    .sum();
                assert!(bytes <= MAX_LABEL_BYTES_PER_SERIES);
                for label in series.labels.iter() {
                    let first_ok = |c: char| c.is_ascii_alphabetic() || c == '_';
                    assert!(
                        label.name.starts_with(first_ok)
                            && label
                                .name
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "label name {:?} is not a Prometheus name",
                        label.name
                    );
                }
                let name = series.labels.get(METRIC_NAME).unwrap_or_default();
                assert!(
                    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':')
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                    "metric name {name:?} is not a Prometheus name"
                );
            }
            true
        }
        Err(err) => {
            assert!(!err.message.is_empty(), "a refusal must say why");
            false
        }
    }
}

/// Decodes the serialized `WriteRequest` `raw` with the hand-written decoder and with
/// prost (the reference), and panics unless both accept with equal results or both
/// refuse for the same reason. Returns whether it was accepted.
pub fn decode_matches_reference(raw: &[u8]) -> bool {
    same_outcome(
        raw,
        decode_protobuf(raw),
        reference_decode_protobuf(raw),
        true,
    )
}

/// `decode_matches_reference` for a serialized `io.prometheus.write.v2.Request`.
pub fn decode_v2_matches_reference(raw: &[u8]) -> bool {
    same_outcome(
        raw,
        decode_protobuf_v2(raw),
        reference_decode_protobuf_v2(raw),
        false,
    )
}

fn same_outcome(
    raw: &[u8],
    ours: Result<DecodedWrite, IngestError>,
    reference: Result<DecodedWrite, IngestError>,
    peers_decoder: bool,
) -> bool {
    match (ours, reference) {
        (Ok(ours), Ok(reference)) => {
            assert_eq!(ours, reference, "decoders disagree on {raw:?}");
            // The 1.0 decoder here is the one peers' writes take, whose created-zero
            // bits are requests counted as samples; check it as a client's edge sees it.
            let mut checked = ours;
            if peers_decoder {
                validate::make_values_plain(&mut checked.series);
            }
            assert_invariants(&checked);
            true
        }
        (Err(ours), Err(reference)) => {
            assert_eq!(
                ours.reason, reference.reason,
                "refused for other reasons: {ours} vs prost's {reference} on {raw:?}"
            );
            false
        }
        (ours, reference) => panic!(
            "only one decoder accepted {raw:?}: ours {:?}, prost {:?}",
            ours.map(|d| d.num_samples),
            reference.map(|d| d.num_samples)
        ),
    }
}

fn assert_invariants(decoded: &DecodedWrite) {
    let mut samples = 0;
    for series in &decoded.series {
        let labels = series.labels.as_slice();
        assert!(!labels.is_empty(), "series without labels");
        assert!(
            labels.windows(2).all(|w| w[0].name < w[1].name),
            "labels not sorted and unique: {:?}",
            series.labels
        );
        assert!(labels
            .iter()
            .all(|l| !l.name.is_empty() && !l.value.is_empty()));
        assert!(series.labels.get(METRIC_NAME).is_some(), "no metric name");
        assert!(!series.samples.is_empty(), "series without samples");
        assert!(series.samples.windows(2).all(|w| w[0].t <= w[1].t));
        let sent = series
            .samples
            .iter()
            .filter(|s| !model::is_created_zero(s.v));
        let sent = sent.count() as u64;
        assert!(sent > 0, "series with only created-zero requests");
        samples += sent;
    }
    assert_eq!(samples, decoded.num_samples);
    let mut exemplars = 0;
    for series in &decoded.exemplars {
        assert!(series.exemplars.windows(2).all(|w| w[0].t <= w[1].t));
        for e in &series.exemplars {
            let chars: usize = e
                .labels
                .iter()
                .map(|l| l.name.chars().count() + l.value.chars().count())
                .sum();
            assert!(chars <= model::MAX_EXEMPLAR_LABEL_CHARS);
            assert!(e
                .labels
                .iter()
                .all(|l| !l.name.is_empty() && !l.value.is_empty()));
        }
        exemplars += series.exemplars.len() as u64;
    }
    assert_eq!(exemplars, decoded.num_exemplars);
    let mut histograms = 0;
    for series in &decoded.histograms {
        assert!(series.labels.get(METRIC_NAME).is_some(), "no metric name");
        assert!(
            !series.samples.is_empty(),
            "histogram series without samples"
        );
        assert!(series.samples.windows(2).all(|w| w[0].t <= w[1].t));
        for sample in &series.samples {
            assert!(sample.h.validate().is_ok(), "invalid histogram accepted");
        }
        histograms += series.samples.len() as u64;
    }
    assert_eq!(histograms, decoded.num_histograms);
}
