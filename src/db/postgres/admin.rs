//! What the `migrate` and `db` commands do to a PostgreSQL database:
//! migrations (under an advisory lock), status and schema.

use std::fmt::Write as _;

use sqlx::migrate::Migrate;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use sqlx::{Connection, Row};

use crate::db::DbError;
use crate::db::migrate::{self, Applied, AppliedRow, MigrationStatus};
use crate::db::model::{EMAIL_KEY_VERSION, UserId};

/// Applies pending migrations on a connection of its own, under sqlx's
/// session advisory lock: concurrent migrators (replicas starting together,
/// several `skiff migrate`) wait for it, then find nothing left to do.
/// Closing the connection releases the lock even if a migration failed.
pub async fn apply_migrations(options: &PgConnectOptions) -> Result<Vec<Applied>, DbError> {
    let mut conn = PgConnection::connect_with(options).await?;
    conn.lock().await?;
    let applied = migrate::apply_pending(&mut conn, &migrate::POSTGRES).await;
    if applied.is_ok()
        && let Err(e) = rekey(&mut conn).await
    {
        let _ = conn.close().await;
        return Err(e);
    }
    if applied.is_ok() {
        conn.unlock().await?;
    }
    let _ = conn.close().await;
    Ok(applied?)
}

/// Recomputes the email keys made by an older [`crate::db::model::email_key`], in
/// creation order and in one transaction, keeping every account (see
/// `migrate::note_twin`). As SQLite's (`sqlite::admin::rekey`): batches walk
/// the primary key, and rows whose key comes out the same only have their
/// version bumped, one statement per batch.
async fn rekey(conn: &mut PgConnection) -> Result<(), DbError> {
    let mut tx = conn.begin().await?;
    let mut rekeyed = 0u64;
    // Walks the primary key, as list pages do: each batch starts after the
    // last one, the first after `UserId::MIN`.
    let mut after = UserId::MIN.as_uuid();
    loop {
        let stale: Vec<(uuid::Uuid, String, String)> = sqlx::query_as(
            "SELECT id, email, email_key FROM users \
             WHERE email_key_version < $1 AND id > $2 ORDER BY id LIMIT 1000",
        )
        .bind(EMAIL_KEY_VERSION as i32)
        .bind(after)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = stale.last() else { break };
        after = last.0;
        let (same, changed) = migrate::rekey_batch(&stale);
        for (id, key) in changed {
            let twin: i32 = sqlx::query_scalar(
                "UPDATE users SET email_key = $2, email_key_version = $3, email_twin = \
                 CASE WHEN EXISTS (SELECT 1 FROM users \
                   WHERE email_key = $2 AND email_twin = 0 AND id <> $1) \
                 THEN (SELECT MAX(email_twin) + 1 FROM users \
                   WHERE email_key = $2 AND id <> $1) \
                 ELSE 0 END \
                 WHERE id = $1 RETURNING email_twin",
            )
            .bind(id)
            .bind(key)
            .bind(EMAIL_KEY_VERSION as i32)
            .fetch_one(&mut *tx)
            .await?;
            migrate::note_twin(id, i64::from(twin));
        }
        if !same.is_empty() {
            sqlx::query("UPDATE users SET email_key_version = $1 WHERE id = ANY($2)")
                .bind(EMAIL_KEY_VERSION as i32)
                .bind(&same)
                .execute(&mut *tx)
                .await?;
        }
        rekeyed += stale.len() as u64;
    }
    tx.commit().await?;
    migrate::note_rekeyed(rekeyed);
    Ok(())
}

pub async fn migration_status(pool: &PgPool) -> Result<Vec<MigrationStatus>, DbError> {
    let has_table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let rows: Vec<AppliedRow> = if has_table {
        sqlx::query_as(
            "SELECT version, description, installed_on::text AS installed_on, success, checksum \
             FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(pool)
        .await?
    } else {
        Vec::new()
    };
    Ok(migrate::status(&migrate::POSTGRES, &rows))
}

/// The tables of the current schema as `CREATE` statements, read from the
/// catalogs (there is no `pg_dump` in the image).
pub async fn schema(pool: &PgPool) -> Result<String, DbError> {
    let tables = sqlx::query(
        "SELECT c.oid::int8 AS oid, c.relname::text AS name, \
                obj_description(c.oid, 'pg_class') AS comment \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') ORDER BY c.relname",
    )
    .fetch_all(pool)
    .await?;
    let mut out = String::new();
    for table in tables {
        let oid: i64 = table.try_get("oid")?;
        let name: String = table.try_get("name")?;
        let columns = sqlx::query(
            "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type, \
                    a.attnotnull AS not_null, pg_get_expr(d.adbin, d.adrelid) AS default, \
                    col_description(a.attrelid, a.attnum) AS comment \
             FROM pg_attribute a \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
        )
        .bind(oid)
        .fetch_all(pool)
        .await?;
        let constraints = sqlx::query(
            "SELECT conname::text AS name, pg_get_constraintdef(oid) AS def FROM pg_constraint \
             WHERE conrelid = $1::int8::oid ORDER BY contype, conname",
        )
        .bind(oid)
        .fetch_all(pool)
        .await?;
        let indexes = sqlx::query(
            "SELECT pg_get_indexdef(i.indexrelid) AS def FROM pg_index i \
             WHERE i.indrelid = $1::int8::oid \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) \
             ORDER BY 1",
        )
        .bind(oid)
        .fetch_all(pool)
        .await?;

        let mut lines = Vec::new();
        let mut comments = Vec::new();
        for column in &columns {
            let col: String = column.try_get("name")?;
            let ty: String = column.try_get("type")?;
            let mut line = format!("    {col} {ty}");
            if column.try_get::<bool, _>("not_null")? {
                line.push_str(" NOT NULL");
            }
            if let Some(default) = column.try_get::<Option<String>, _>("default")? {
                let _ = write!(line, " DEFAULT {default}");
            }
            lines.push(line);
            if let Some(comment) = column.try_get::<Option<String>, _>("comment")? {
                comments.push(format!(
                    "COMMENT ON COLUMN {name}.{col} IS '{}';",
                    comment.replace('\'', "''")
                ));
            }
        }
        for constraint in &constraints {
            let cname: String = constraint.try_get("name")?;
            let def: String = constraint.try_get("def")?;
            lines.push(format!("    CONSTRAINT {cname} {def}"));
        }
        let _ = writeln!(out, "CREATE TABLE {name} (\n{}\n);", lines.join(",\n"));
        for index in &indexes {
            let def: String = index.try_get("def")?;
            let _ = writeln!(out, "{def};");
        }
        if let Some(comment) = table.try_get::<Option<String>, _>("comment")? {
            comments.insert(
                0,
                format!(
                    "COMMENT ON TABLE {name} IS '{}';",
                    comment.replace('\'', "''")
                ),
            );
        }
        for comment in comments {
            let _ = writeln!(out, "{comment}");
        }
        out.push('\n');
    }
    Ok(out)
}
