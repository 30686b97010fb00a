//! The `timbala` binary: parse flags, set up logging, run the node.

use std::process::ExitCode;

use clap::Parser;
use timbala::config::Config;

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(e) = timbala::telemetry::init_logging(&config.log_level, config.log_format) {
        eprintln!("timbala: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = config.validate() {
        eprintln!("timbala: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("timbala: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(timbala::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("timbala: {e}");
            ExitCode::FAILURE
        }
    }
}
