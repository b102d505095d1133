//! The command line: `serve` (the default), `healthcheck`, `openapi`,
//! `version`, and with the users feature `migrate` and `db …`.

#[cfg(feature = "users")]
pub mod db;
pub mod healthcheck;

use std::io::{ErrorKind, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::app::{App, ServeOptions, shutdown_signal};
use crate::config::{Config, ConfigError, ConfigFlags, Sources, parse_duration};

#[derive(Debug, Parser)]
#[command(
    name = "skiff",
    version,
    about = "A small web API in one static binary",
    // `skiff --port 9000` serves (no command is `serve`); the server flags
    // belong to that, not to the other commands.
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `skiff serve`'s flags: every setting of the server.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Do not apply pending migrations at start-up.
    #[arg(long)]
    pub no_migrate: bool,
    #[command(flatten)]
    pub flags: ConfigFlags,
}

/// The settings `skiff migrate` and `skiff db …` use.
#[cfg(feature = "users")]
#[derive(Debug, Clone, Default, Args)]
pub struct DatabaseFlags {
    /// Database URL: sqlite://FILE, sqlite::memory: or postgres://… [env: DATABASE_URL]
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    /// Log filter, e.g. `info` or `skiff=debug` [env: SKIFF_LOG or RUST_LOG]
    #[arg(long, global = true)]
    pub log: Option<String>,
    /// Log format: text or json [env: SKIFF_LOG_FORMAT]
    #[arg(long, global = true)]
    pub log_format: Option<String>,
}

#[cfg(feature = "users")]
impl DatabaseFlags {
    /// The variables these flags stand for: the only ones the command reads.
    const VARS: &'static [&'static str] =
        &["DATABASE_URL", "SKIFF_LOG", "RUST_LOG", "SKIFF_LOG_FORMAT"];

    fn config_flags(&self) -> ConfigFlags {
        ConfigFlags {
            database_url: self.database_url.clone(),
            log: self.log.clone(),
            log_format: self.log_format.clone(),
            ..ConfigFlags::default()
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP (the default); applies pending migrations first.
    Serve(Box<ServeArgs>),
    /// Apply pending migrations and list them.
    #[cfg(feature = "users")]
    Migrate(DatabaseFlags),
    /// Manage the database.
    #[cfg(feature = "users")]
    Db {
        #[command(subcommand)]
        command: db::DbCommand,
        #[command(flatten)]
        flags: DatabaseFlags,
    },
    /// Exit 0 if the server's /healthz answers 200 in time, else 1.
    Healthcheck {
        /// URL to check [default: http://127.0.0.1:$PORT/healthz]
        #[arg(long)]
        url: Option<String>,
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s", value_parser = duration_arg)]
        timeout: Duration,
        /// Port of the default URL [env: PORT or SKIFF_PORT] [default: 8080]
        #[arg(long)]
        port: Option<String>,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Print version, git commit, target triple and enabled features.
    Version,
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).ok_or_else(|| "expected a duration such as 3s or 500ms".into())
}

/// The configuration from `flags` and, of the environment, only `vars`: a
/// command reads the settings it uses and no others, so a Lua setting
/// cannot stop `skiff migrate`. Unread settings keep their defaults.
fn load_only(flags: &ConfigFlags, vars: &[&str]) -> Result<Config, ConfigError> {
    let env = |name: &str| {
        vars.contains(&name)
            .then(|| std::env::var(name).ok())
            .flatten()
    };
    Config::from_sources(&Sources { flags, env: &env })
}

/// Writes `text` to stdout. A reader that has gone (`skiff openapi | head`)
/// ends the command quietly and successfully: it has read what it wanted.
pub fn write_stdout(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "skiff: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line, runs the command, and gives the exit code: 0 on
/// success, 1 on failure, 2 for a bad argument or configuration value.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(Box::new(cli.serve)));
    let loaded = match &command {
        Command::Openapi => return write_stdout(&crate::http::openapi::document_json()),
        Command::Version => return write_stdout(&format!("{}\n", version_line())),
        Command::Serve(args) => Config::load(&args.flags),
        #[cfg(feature = "users")]
        Command::Migrate(flags) | Command::Db { flags, .. } => {
            load_only(&flags.config_flags(), DatabaseFlags::VARS)
        }
        Command::Healthcheck { port, .. } => {
            let flags = ConfigFlags {
                port: port.clone(),
                ..ConfigFlags::default()
            };
            load_only(&flags, &["PORT", "SKIFF_PORT"])
        }
    };
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "skiff: {e}");
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
            Command::Serve(args) => {
                let options = ServeOptions {
                    no_migrate: args.no_migrate,
                };
                serve(config, options).await
            }
            Command::Healthcheck { url, timeout, .. } => {
                let url =
                    url.unwrap_or_else(|| format!("http://127.0.0.1:{}/healthz", config.port));
                match healthcheck::check(&url, timeout).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("skiff healthcheck: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            #[cfg(feature = "users")]
            Command::Migrate(_) => {
                crate::telemetry::init_logging(&config);
                print_or_fail("migrate", db::migrate(&config).await)
            }
            #[cfg(feature = "users")]
            Command::Db { command, .. } => {
                crate::telemetry::init_logging(&config);
                let name = command.name();
                print_or_fail(name, db::run(command, &config).await)
            }
            Command::Openapi | Command::Version => unreachable!("handled above"),
        }
    })
}

/// Prints what a command produced (a closed pipe ends it quietly), or its
/// error on stderr with exit code 1.
#[cfg(feature = "users")]
fn print_or_fail(command: &str, result: Result<String, impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(text) => write_stdout(&text),
        Err(e) => {
            eprintln!("skiff {command}: {e}");
            ExitCode::FAILURE
        }
    }
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
        crate::build_info::VERSION,
        crate::build_info::GIT_COMMIT,
        crate::build_info::TARGET,
        if crate::build_info::FEATURES.is_empty() {
            "none".to_string()
        } else {
            crate::build_info::FEATURES.join(", ")
        }
    )
}
