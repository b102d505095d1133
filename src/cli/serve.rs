//! `skiff serve` (and `skiff` alone): every setting, then the server until
//! SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Args;

use crate::app::{App, ServeOptions, shutdown_signal};
use crate::config::{ALL, Config, Flags, Offer};

/// The settings `serve` uses: all of them.
#[derive(Debug)]
pub struct Serve;

impl Offer for Serve {
    const SETTINGS: &'static [&'static str] = ALL;
}

/// `skiff serve`'s flags: every setting of the server.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Do not apply pending migrations at start-up.
    #[arg(long)]
    pub no_migrate: bool,
    #[command(flatten)]
    pub flags: Flags<Serve>,
}

pub async fn run(config: Config, args: &ServeArgs) -> ExitCode {
    crate::telemetry::init_logging(&config);
    let options = ServeOptions {
        no_migrate: args.no_migrate,
    };
    let app = match App::build(config, options).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            eprintln!("skiff: {e}");
            return ExitCode::FAILURE;
        }
    };
    match app.run(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff: server error: {e}");
            ExitCode::FAILURE
        }
    }
}
