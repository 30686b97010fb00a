//! Fuzzing entry point shared by the cargo-fuzz target (`fuzz/`) and the stable,
//! time-bounded mutation test (`tests/fuzz_remote_write.rs`). Calls only `ingest`.
//!
//! The first input byte picks the layer under test: even means the rest is an HTTP body
//! (exercises snappy), odd means the rest is a raw protobuf that is compressed first
//! (reaches prost and validation far more often). Any panic is a bug; an accepted request
//! must satisfy every promise `DecodedWrite` makes to storage.

use super::{decode_write_request, DecodeLimits, DecodedWrite};
use crate::model::METRIC_NAME;

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
    match decode_write_request(
        Some("application/x-protobuf"),
        Some("snappy"),
        body,
        &FUZZ_LIMITS,
    ) {
        Ok(decoded) => {
            assert_invariants(&decoded);
            true
        }
        Err(err) => {
            assert!(!err.message.is_empty(), "a refusal must say why");
            false
        }
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
        samples += series.samples.len() as u64;
    }
    assert_eq!(samples, decoded.num_samples);
}
