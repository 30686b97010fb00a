//! libFuzzer target: PromQL text through the query limits, the parser and the engine on
//! a tiny TSDB (see `timbala::promql::fuzzing`), and through the HTTP API's
//! series-selector parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    timbala::promql::fuzzing::check_bytes(data);
    let _ = timbala::api::params::parse_match_param(&String::from_utf8_lossy(data));
});
