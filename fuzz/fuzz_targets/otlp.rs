//! libFuzzer target: OTLP/HTTP metrics bodies (plain, gzipped by the harness, or gzip as
//! sent, by the first byte) through Timbala's decoder, translator and validator; see
//! `timbala::ingest::fuzzing::otlp_decode_and_check`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    timbala::ingest::fuzzing::otlp_decode_and_check(data);
});
