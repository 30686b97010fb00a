//! The HTTP client shared by the acceptance tests, the benchmark harness and the
//! integration driver (each includes this file with `#[path]`, as separate cargo targets
//! cannot share a module otherwise). Owns only client configuration: a status is an
//! answer, not an error, and bodies are read whole up to 1 GiB. Calls ureq.

use std::time::Duration;

/// A client whose every request is bounded by `timeout`.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// The status and whole body of a response.
pub fn read_body(resp: ureq::http::Response<ureq::Body>) -> Result<(u16, Vec<u8>), String> {
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .map_err(|e| format!("reading body: {e}"))?;
    Ok((status, body))
}
