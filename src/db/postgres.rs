//! The PostgreSQL back end: a connection pool and one statement per request,
//! so any number of stateless replicas can share the database. Uniqueness
//! and `If-Match` are enforced by the database itself (a unique index and a
//! version-guarded `UPDATE`/`DELETE`), never by a read-then-write.
//! [`admin`] is what the `migrate` and `db` commands do, [`errors`]
//! PostgreSQL's SQLSTATE codes.

mod admin;
pub mod errors;

pub use admin::{apply_migrations, migration_status, schema};

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::model::EMAIL_KEY_VERSION;
use super::{
    ACQUIRE_TIMEOUT, DbError, Millis, PageQuery, User, UserId, UserPatch, UserRow, Versions,
    WriteError, is_unique_violation, record_pool, user_columns,
};

/// Connections per replica: PostgreSQL's own limit is shared by them all.
const MAX_CONNECTIONS: u32 = 10;

pub fn options(url: &str) -> Result<PgConnectOptions, DbError> {
    PgConnectOptions::from_str(url).map_err(|e| DbError::Config(e.to_string()))
}

/// `database NAME on HOST:PORT`, without the password, for messages.
pub fn describe(url: &str) -> String {
    match options(url) {
        Ok(o) => format!(
            "PostgreSQL database {} on {}:{}",
            o.get_database().unwrap_or(o.get_username()),
            o.get_host(),
            o.get_port()
        ),
        Err(_) => "PostgreSQL database (unparsable URL)".into(),
    }
}

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str, migrate: bool) -> Result<Self, DbError> {
        let options = options(url)?;
        if migrate {
            apply_migrations(&options).await?;
        }
        let pool = pool(&options, MAX_CONNECTIONS).await?;
        if !migrate {
            super::warn_if_not_migrated(migration_status(&pool).await?);
        }
        Ok(PgStore { pool })
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    pub fn record_pool_metrics(&self) {
        record_pool("postgres", &self.pool);
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn create(&self, user: User) -> Result<User, WriteError> {
        sqlx::query(
            "INSERT INTO users (id, email, email_key, account_enabled, display_name, given_name, \
             surname, company_name, version, created_at, updated_at, email_key_version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(user.id.as_uuid())
        .bind(user.email.as_str())
        .bind(user.email.key())
        .bind(user.account_enabled)
        .bind(user.display_name.as_str())
        .bind(user.given_name.as_str())
        .bind(user.surname.as_str())
        .bind(user.company_name.as_str())
        .bind(user.version)
        .bind(user.created_at.as_millis())
        .bind(user.updated_at.as_millis())
        .bind(EMAIL_KEY_VERSION as i32)
        .execute(&self.pool)
        .await
        .map_err(write_error)?;
        Ok(user)
    }

    pub async fn update(
        &self,
        id: UserId,
        versions: Versions<'_>,
        patch: UserPatch,
        now: Millis,
    ) -> Result<User, WriteError> {
        let row: Option<UserRow> = sqlx::query_as(concat!(
            "UPDATE users SET email = COALESCE($2, email), email_key = COALESCE($3, email_key), \
             email_twin = CASE WHEN $3::text IS NULL OR $3::text = email_key \
                 THEN email_twin ELSE 0 END, \
             email_key_version = CASE WHEN $3::text IS NULL THEN email_key_version ELSE $11 END, \
             account_enabled = COALESCE($4, account_enabled), \
             display_name = COALESCE($5, display_name), given_name = COALESCE($6, given_name), \
             surname = COALESCE($7, surname), company_name = COALESCE($8, company_name), \
             version = version + 1, updated_at = GREATEST($9, updated_at) \
             WHERE id = $1 AND ($10::int8[] IS NULL OR version = ANY($10::int8[])) \
             RETURNING ",
            user_columns!()
        ))
        .bind(id.as_uuid())
        .bind(patch.email.as_ref().map(|e| e.as_str()))
        .bind(patch.email.as_ref().map(|e| e.key()))
        .bind(patch.account_enabled)
        .bind(patch.display_name.as_ref().map(|n| n.as_str()))
        .bind(patch.given_name.as_ref().map(|n| n.as_str()))
        .bind(patch.surname.as_ref().map(|n| n.as_str()))
        .bind(patch.company_name.as_ref().map(|n| n.as_str()))
        .bind(now.as_millis())
        .bind(versions)
        .bind(EMAIL_KEY_VERSION as i32)
        .fetch_optional(&self.pool)
        .await
        .map_err(write_error)?;
        match row {
            Some(row) => Ok(row.into()),
            None => Err(self.missing_or_changed(id).await),
        }
    }

    pub async fn delete(&self, id: UserId, versions: Versions<'_>) -> Result<(), WriteError> {
        let done = sqlx::query(
            "DELETE FROM users \
             WHERE id = $1 AND ($2::int8[] IS NULL OR version = ANY($2::int8[]))",
        )
        .bind(id.as_uuid())
        .bind(versions)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(self.missing_or_changed(id).await)
        }
    }

    /// Why a guarded write touched no row. Asked after the fact: if the user
    /// changed again in between, the answer is still right (it did not match
    /// when the write was tried, or it is gone).
    async fn missing_or_changed(&self, id: UserId) -> WriteError {
        let exists = sqlx::query("SELECT 1 FROM users WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await;
        match exists {
            Ok(Some(_)) => WriteError::PreconditionFailed,
            Ok(None) => WriteError::NotFound,
            Err(e) => e.into(),
        }
    }

    pub async fn get(&self, id: UserId) -> Result<Option<User>, DbError> {
        let row: Option<UserRow> = sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(User::from))
    }

    /// The ids of the `limit`-th and next users after `after`.
    pub async fn page_end(&self, after: UserId, limit: u32) -> Result<Vec<uuid::Uuid>, DbError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM users WHERE id > $1 ORDER BY id LIMIT 2 OFFSET $2")
                .bind(after.as_uuid())
                .bind(i64::from(limit.max(1) - 1))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn list(&self, page: &PageQuery) -> Result<Vec<User>, DbError> {
        let limit = i64::from(page.limit);
        let after = page.after.as_uuid();
        let rows: Vec<UserRow> = match &page.email_key {
            None => {
                sqlx::query_as(concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users WHERE id > $1 ORDER BY id LIMIT $2"
                ))
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            Some(key) => {
                sqlx::query_as(concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users WHERE email_key = $1 AND id > $2 ORDER BY id LIMIT $3"
                ))
                .bind(key)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows.into_iter().map(User::from).collect())
    }
}

fn write_error(e: sqlx::Error) -> WriteError {
    if is_unique_violation(&e) {
        WriteError::DuplicateEmail
    } else {
        e.into()
    }
}

pub async fn pool(options: &PgConnectOptions, max: u32) -> Result<PgPool, DbError> {
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options.clone())
        .await?)
}
