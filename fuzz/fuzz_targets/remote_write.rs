//! libFuzzer target: remote-write 1.0 and 2.0 bodies (or raw protobufs; the first byte
//! picks the layer and, by its bit 1, the protocol) through
//! Timbala's decoder and validator; see `timbala::ingest::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    timbala::ingest::fuzzing::decode_and_check(data);
});
