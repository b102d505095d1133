//! The command line: `serve` (the default), `healthcheck`, `openapi`,
//! `version`, and with the users feature `migrate` and `db …`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::{App, ServeOptions, shutdown_signal};
use crate::config::{Config, ConfigFlags, parse_duration};

#[derive(Debug, Parser)]
#[command(
    name = "skiff",
    version,
    about = "A small web API in one static binary"
)]
pub struct Cli {
    #[command(flatten)]
    pub flags: ConfigFlags,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP (the default); applies pending migrations first.
    Serve {
        /// Do not apply pending migrations at start-up.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending migrations and list them.
    #[cfg(feature = "users")]
    Migrate,
    /// Manage the database.
    #[cfg(feature = "users")]
    Db {
        #[command(subcommand)]
        command: crate::db::cli::DbCommand,
    },
    /// Exit 0 if the server's /healthz answers 200 in time, else 1.
    Healthcheck {
        /// URL to check [default: http://127.0.0.1:$PORT/healthz]
        #[arg(long)]
        url: Option<String>,
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Print version, git commit, target triple and enabled features.
    Version,
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).ok_or_else(|| "expected a duration such as 3s or 500ms".into())
}

/// Parses the command line, runs the command, and gives the exit code: 0 on
/// success, 1 on failure, 2 for a bad argument or configuration value.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve { no_migrate: false });
    match command {
        Command::Openapi => {
            print!("{}", crate::http::openapi::document_json());
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("{}", version_line());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let config = match Config::load(&cli.flags) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("skiff: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skiff: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match command {
            Command::Serve { no_migrate } => serve(config, ServeOptions { no_migrate }).await,
            Command::Healthcheck { url, timeout } => {
                let url =
                    url.unwrap_or_else(|| format!("http://127.0.0.1:{}/healthz", config.port));
                match crate::healthcheck::check(&url, timeout).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("skiff healthcheck: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            #[cfg(feature = "users")]
            Command::Migrate => {
                crate::telemetry::init_logging(&config);
                crate::db::cli::migrate(&config).await
            }
            #[cfg(feature = "users")]
            Command::Db { command } => {
                crate::telemetry::init_logging(&config);
                crate::db::cli::run(command, &config).await
            }
            Command::Openapi | Command::Version => unreachable!("handled above"),
        }
    })
}

async fn serve(config: Config, options: ServeOptions) -> ExitCode {
    crate::telemetry::init_logging(&config);
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

/// `skiff 0.1.0 (commit 0123abcd4567, target x86_64-unknown-linux-musl, features: ip, lua, users)`
pub fn version_line() -> String {
    format!(
        "skiff {} (commit {}, target {}, features: {})",
        crate::build::VERSION,
        crate::build::GIT_COMMIT,
        crate::build::TARGET,
        if crate::build::FEATURES.is_empty() {
            "none".to_string()
        } else {
            crate::build::FEATURES.join(", ")
        }
    )
}
