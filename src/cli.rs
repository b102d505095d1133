//! The command line: `serve` (the default), `healthcheck`, `openapi`,
//! `version`, and with the users feature `migrate` and `db …`. Each command
//! offers the flags of the settings it uses (`config::Offer`) and reads
//! only their variables; a bad value exits 2 with one line naming it.

#[cfg(feature = "users")]
pub mod db;
pub mod healthcheck;
pub mod serve;

use std::io::{ErrorKind, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};

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
    pub serve: serve::ServeArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP (the default); applies pending migrations first.
    Serve(Box<serve::ServeArgs>),
    /// Apply pending migrations and list them.
    #[cfg(feature = "users")]
    Migrate(db::DatabaseArgs),
    /// Manage the database.
    #[cfg(feature = "users")]
    Db {
        #[command(flatten)]
        args: db::DatabaseArgs,
        #[command(subcommand)]
        command: db::DbCommand,
    },
    /// Exit 0 if the server's /healthz answers 200 in time, else 1.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Print the OpenAPI document.
    Openapi,
    /// Print version, git commit, target triple and enabled features.
    Version,
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    let command = cli.command.unwrap_or(Command::Serve(Box::new(cli.serve)));
    let loaded = match &command {
        Command::Openapi => return write_stdout(&crate::http::openapi::document_json()),
        Command::Version => return write_stdout(&format!("{}\n", version_line())),
        Command::Serve(args) => Config::load(&args.flags),
        #[cfg(feature = "users")]
        Command::Migrate(args) => Config::load(&args.flags),
        #[cfg(feature = "users")]
        Command::Db { args, .. } => Config::load(&args.flags),
        Command::Healthcheck(args) => Config::load(&args.flags),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(e) => return bad_configuration(&e),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // Lua runs start on the runtime's threads: the same stack as a worker.
    #[cfg(feature = "lua")]
    builder.thread_stack_size(crate::lua::pool::WORKER_STACK);
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skiff: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match command {
            Command::Serve(args) => serve::run(config, &args).await,
            Command::Healthcheck(args) => healthcheck::run(&config, &args).await,
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

/// One line naming the flag or variable, and exit code 2.
fn bad_configuration(e: &ConfigError) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "skiff: {e}");
    ExitCode::from(2)
}

/// clap's own outcome: help, version, or a usage error (exit 2). A bad
/// value of a flag clap parses itself (`healthcheck --timeout soon`) is one
/// line, like the settings'.
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ErrorKind};
    if e.kind() == ErrorKind::ValueValidation
        && let (Some(arg), Some(value)) = (
            e.get(ContextKind::InvalidArg),
            e.get(ContextKind::InvalidValue),
        )
    {
        // `--timeout <TIMEOUT>`: the flag.
        let arg = arg.to_string();
        return bad_configuration(&ConfigError {
            name: arg.split_whitespace().next().unwrap_or_default().into(),
            value: value.to_string(),
            expected: std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        });
    }
    e.exit()
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
