//! The `timbala` binary: parse flags, set up logging, run the node.

use std::process::ExitCode;

use clap::Parser;
use timbala::config::Config;

fn main() -> ExitCode {
    // Before any thread exists: arenas created earlier would stay.
    let arenas_capped = timbala::heap::limit_arenas();
    let config = Config::parse();
    if let Err(e) = timbala::telemetry::init_logging(&config.log_level, config.log_format) {
        report_before_logging(&e);
        return ExitCode::from(2);
    }
    tracing::debug!(arenas_capped, "malloc arenas");
    if let Err(e) = config.validate() {
        report_before_logging(&e);
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(timbala::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, through the logger: it writes to stderr in the operator's format.
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// An error from before the logger exists. A closed stderr is ignored: `eprintln!`
/// would panic on it.
fn report_before_logging(error: &dyn std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "timbala: {error}");
}
