//! `skiff migrate` and `skiff db create|drop|status|schema`, for either back
//! end. Each gives the text for stdout or the error; `cli::run` prints them
//! (errors on stderr with exit code 1).

use clap::{Args, Subcommand};
use sqlx::migrate::MigrateDatabase;

use crate::config::{Config, Flags, Offer};
use crate::db::{Applied, Backend, DbError, MigrationState, MigrationStatus, postgres, sqlite};

/// The settings `skiff migrate` and `skiff db …` use.
#[derive(Debug)]
pub struct Database;

impl Offer for Database {
    const SETTINGS: &'static [&'static str] = &["database_url", "log_filter", "log_format"];
    const GLOBAL: bool = true;
}

/// The flags of `migrate` and of `db` (before or after its command).
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    #[command(flatten)]
    pub flags: Flags<Database>,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create the database (SQLite: the file; PostgreSQL: the database).
    Create,
    /// Drop the database (SQLite: the file and its WAL; PostgreSQL: the database).
    Drop,
    /// Show applied and pending migrations.
    Status,
    /// Print the schema.
    Schema,
}

/// Applies pending migrations and lists the ones this run applied.
pub async fn migrate(config: &Config) -> Result<String, DbError> {
    let url = &config.database_url;
    apply(url).await.map(|applied| {
        let mut out = String::new();
        for a in &applied {
            out += &format!(
                "applied {} {} ({} ms)\n",
                a.version,
                a.description,
                a.elapsed.as_millis()
            );
        }
        if applied.is_empty() {
            out += &format!("{}: no pending migrations\n", describe(url));
        } else {
            out += &format!(
                "{}: {} migration(s) applied\n",
                describe(url),
                applied.len()
            );
        }
        out
    })
}

impl DbCommand {
    /// The command as typed, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            DbCommand::Create => "db create",
            DbCommand::Drop => "db drop",
            DbCommand::Status => "db status",
            DbCommand::Schema => "db schema",
        }
    }
}

pub async fn run(command: DbCommand, config: &Config) -> Result<String, DbError> {
    let url = &config.database_url;
    match command {
        DbCommand::Create => create(url).await.map(|created| {
            let state = if created { "created" } else { "already exists" };
            format!("{}: {state}\n", describe(url))
        }),
        DbCommand::Drop => drop(url).await.map(|dropped| {
            let state = if dropped { "dropped" } else { "does not exist" };
            format!("{}: {state}\n", describe(url))
        }),
        DbCommand::Status => status(url)
            .await
            .map(|rows| format!("{}\n{}", describe(url), status_table(&rows))),
        DbCommand::Schema => schema(url).await,
    }
}

/// What the database is, without a password.
fn describe(url: &str) -> String {
    match Backend::of(url) {
        Ok(Backend::Postgres) => postgres::describe(url),
        Ok(Backend::Sqlite) => match sqlite::file(url) {
            Ok(Some(path)) => format!("SQLite database {}", path.display()),
            _ => "in-memory SQLite database".into(),
        },
        Err(_) => "database".into(),
    }
}

async fn apply(url: &str) -> Result<Vec<Applied>, DbError> {
    match Backend::of(url)? {
        Backend::Sqlite => {
            let pool = sqlite::admin_pool(url, true).await?;
            let applied = sqlite::apply_migrations(&pool).await;
            pool.close().await;
            applied
        }
        Backend::Postgres => postgres::apply_migrations(&postgres::options(url)?).await,
    }
}

async fn create(url: &str) -> Result<bool, DbError> {
    match Backend::of(url)? {
        Backend::Sqlite => sqlite::create(url).await,
        Backend::Postgres => {
            if sqlx::Postgres::database_exists(url).await? {
                return Ok(false);
            }
            sqlx::Postgres::create_database(url).await?;
            Ok(true)
        }
    }
}

async fn drop(url: &str) -> Result<bool, DbError> {
    match Backend::of(url)? {
        Backend::Sqlite => sqlite::drop(url),
        Backend::Postgres => {
            if !sqlx::Postgres::database_exists(url).await? {
                return Ok(false);
            }
            sqlx::Postgres::drop_database(url).await?;
            Ok(true)
        }
    }
}

async fn status(url: &str) -> Result<Vec<MigrationStatus>, DbError> {
    match Backend::of(url)? {
        Backend::Sqlite => {
            let pool = sqlite::admin_pool(url, false).await?;
            let status = sqlite::migration_status(&pool).await;
            pool.close().await;
            status
        }
        Backend::Postgres => {
            let pool = postgres::pool(&postgres::options(url)?, 1).await?;
            let status = postgres::migration_status(&pool).await;
            pool.close().await;
            status
        }
    }
}

async fn schema(url: &str) -> Result<String, DbError> {
    match Backend::of(url)? {
        Backend::Sqlite => {
            let pool = sqlite::admin_pool(url, false).await?;
            let schema = sqlite::schema(&pool).await;
            pool.close().await;
            schema
        }
        Backend::Postgres => {
            let pool = postgres::pool(&postgres::options(url)?, 1).await?;
            let schema = postgres::schema(&pool).await;
            pool.close().await;
            schema
        }
    }
}

/// One line per migration: version, state, when it was applied, description.
fn status_table(rows: &[MigrationStatus]) -> String {
    let mut out = format!(
        "{:<8} {:<9} {:<26} {}\n",
        "VERSION", "STATE", "APPLIED AT", "DESCRIPTION"
    );
    for row in rows {
        let (state, at) = match &row.state {
            MigrationState::Applied { installed_on } => ("applied", installed_on.as_str()),
            MigrationState::Pending => ("pending", "-"),
            MigrationState::Modified { installed_on } => ("MODIFIED", installed_on.as_str()),
            MigrationState::Failed => ("FAILED", "-"),
            MigrationState::Unknown { installed_on } => ("UNKNOWN", installed_on.as_str()),
        };
        out.push_str(&format!(
            "{:<8} {:<9} {:<26} {}\n",
            row.version, state, at, row.description
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_shows_each_state() {
        let row = |version, state| MigrationStatus {
            version,
            description: format!("step {version}"),
            state,
        };
        let table = status_table(&[
            row(
                1,
                MigrationState::Applied {
                    installed_on: "2026-11-23 06:00:00".into(),
                },
            ),
            row(2, MigrationState::Pending),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[1].starts_with("1 ") && lines[1].contains("applied"),
            "{table}"
        );
        assert!(
            lines[2].contains("pending") && lines[2].ends_with("step 2"),
            "{table}"
        );
    }
}
