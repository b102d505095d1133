//! `skiff migrate` and `skiff db …` (placeholder; see the users issue).

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create the database.
    Create,
    /// Drop the database.
    Drop,
    /// Show applied and pending migrations.
    Status,
    /// Print the schema.
    Schema,
}

pub async fn migrate(_config: &Config) -> ExitCode {
    ExitCode::FAILURE
}

pub async fn run(_command: DbCommand, _config: &Config) -> ExitCode {
    ExitCode::FAILURE
}
