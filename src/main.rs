//! `courier`: runs any tier, all of them together, or the tools.

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = courier::cli::Cli::parse();
    courier_telemetry::init_logging(cli.log_json);
    match courier::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("courier: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
