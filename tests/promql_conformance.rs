//! PromQL conformance runner. Implemented on the engine branch.
fn main() {}
