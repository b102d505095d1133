//! What the `migrate` and `db` commands do to a SQLite database:
//! migrations, status, schema, create and drop.

use std::path::Path;

use sqlx::sqlite::{SqliteConnection, SqlitePool, SqlitePoolOptions};
use sqlx::{Connection, Row};

use super::lock::{self, ServeLock};
use super::{in_memory, open_error, open_pool, options};
use crate::db::migrate::{self, Applied, AppliedRow, MigrationStatus};
use crate::db::model::{EMAIL_KEY_VERSION, UserId};
use crate::db::{ACQUIRE_TIMEOUT, DbError};

/// Applies pending migrations. `BEGIN IMMEDIATE` takes SQLite's write lock
/// for the whole run, so concurrent migrators queue behind it (busy
/// timeout) and then find nothing left to do.
pub async fn apply_migrations(pool: &SqlitePool) -> Result<Vec<Applied>, DbError> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let applied = migrate::apply_pending(&mut *tx, &migrate::SQLITE).await?;
    rekey(&mut tx).await?;
    tx.commit().await?;
    Ok(applied)
}

/// Recomputes the email keys made by an older [`crate::db::model::email_key`], in
/// creation order, keeping every account (see `migrate::note_twin`).
/// Batches walk the primary key; rows whose key stays only have their
/// version bumped, one statement per batch (`migrate::rekey_batch`). 16 s
/// at 1M users (bench/NOTES.md).
async fn rekey(conn: &mut SqliteConnection) -> Result<(), DbError> {
    let mut rekeyed = 0u64;
    // Walks the primary key, as list pages do: each batch starts after the
    // last one, the first after `UserId::MIN`.
    let mut after = UserId::MIN.as_uuid();
    loop {
        let stale: Vec<(uuid::Uuid, String, String)> = sqlx::query_as(
            "SELECT id, email, email_key FROM users \
             WHERE email_key_version < ?1 AND id > ?2 ORDER BY id LIMIT 1000",
        )
        .bind(EMAIL_KEY_VERSION)
        .bind(after)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = stale.last() else { break };
        after = last.0;
        let (same, changed) = migrate::rekey_batch(&stale);
        for (id, key) in changed {
            let twin: i64 = sqlx::query_scalar(
                "UPDATE users SET email_key = ?2, email_key_version = ?3, email_twin = \
                 CASE WHEN EXISTS (SELECT 1 FROM users \
                   WHERE email_key = ?2 AND email_twin = 0 AND id <> ?1) \
                 THEN (SELECT MAX(email_twin) + 1 FROM users \
                   WHERE email_key = ?2 AND id <> ?1) \
                 ELSE 0 END \
                 WHERE id = ?1 RETURNING email_twin",
            )
            .bind(id)
            .bind(key)
            .bind(EMAIL_KEY_VERSION)
            .fetch_one(&mut *conn)
            .await?;
            migrate::note_twin(id, twin);
        }
        if !same.is_empty() {
            let mut bump = sqlx::QueryBuilder::new("UPDATE users SET email_key_version = ");
            bump.push_bind(EMAIL_KEY_VERSION).push(" WHERE id IN (");
            let mut ids = bump.separated(", ");
            for id in same {
                ids.push_bind(id);
            }
            ids.push_unseparated(")");
            bump.build().execute(&mut *conn).await?;
        }
        rekeyed += stale.len() as u64;
    }
    migrate::note_rekeyed(rekeyed);
    Ok(())
}

pub async fn migration_status(pool: &SqlitePool) -> Result<Vec<MigrationStatus>, DbError> {
    let has_table = sqlx::query(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(pool)
    .await?
    .is_some();
    let rows: Vec<AppliedRow> = if has_table {
        sqlx::query_as(
            "SELECT version, description, CAST(installed_on AS TEXT) AS installed_on, success, \
             checksum FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(pool)
        .await?
    } else {
        Vec::new()
    };
    Ok(migrate::status(&migrate::SQLITE, &rows))
}

/// The schema as the `CREATE` statements SQLite keeps.
pub async fn schema(pool: &SqlitePool) -> Result<String, DbError> {
    let rows = sqlx::query(
        "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' \
         ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, tbl_name, name",
    )
    .fetch_all(pool)
    .await?;
    let mut out = String::new();
    for row in rows {
        let sql: String = row.try_get(0)?;
        out.push_str(&sql);
        out.push_str(";\n\n");
    }
    Ok(out)
}

/// A pool for the `db` commands: one connection, creating the file if
/// `create` is set.
pub async fn admin_pool(url: &str, create: bool) -> Result<SqlitePool, DbError> {
    if let Some(path) = file(url)?.filter(|p| !create && !p.exists()) {
        return Err(DbError::Config(format!(
            "{} does not exist (create it with `skiff db create` or `skiff migrate`)",
            path.display()
        )));
    }
    let options = options(url)?.create_if_missing(create);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT);
    open_pool(pool, &options).await
}

/// The database file of `url` (`None` for an in-memory database).
pub fn file(url: &str) -> Result<Option<std::path::PathBuf>, DbError> {
    if in_memory(url) {
        return Ok(None);
    }
    Ok(Some(options(url)?.get_filename().to_path_buf()))
}

/// Creates the database file (in WAL mode); false when it already existed.
pub async fn create(url: &str) -> Result<bool, DbError> {
    let Some(path) = file(url)? else {
        return Ok(false);
    };
    if path.exists() {
        return Ok(false);
    }
    let options = options(url)?;
    let conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| open_error(&options, e))?;
    conn.close().await?;
    Ok(true)
}

/// Removes the database file, its WAL companions and its serve lock; false
/// when there was no file. Refused while a server holds the lock.
pub fn drop(url: &str) -> Result<bool, DbError> {
    let Some(path) = file(url)? else {
        return Ok(false);
    };
    let existed = path.exists();
    let _held = if existed {
        Some(ServeLock::acquire(&path)?)
    } else {
        None
    };
    for suffix in ["", "-wal", "-shm", "-journal", lock::SUFFIX] {
        let mut name = path.clone().into_os_string();
        name.push(suffix);
        match std::fs::remove_file(Path::new(&name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(DbError::Failed(format!(
                    "cannot remove {}: {e}",
                    Path::new(&name).display()
                )));
            }
        }
    }
    Ok(existed)
}
