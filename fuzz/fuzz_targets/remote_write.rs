//! libFuzzer target: remote-write bodies (or raw protobufs, by the first byte) through
//! Timbala's decoder and validator; see `timbala::ingest::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    timbala::ingest::fuzzing::decode_and_check(data);
});
