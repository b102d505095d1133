//! The users store: one small interface, [`Db`], over two real back ends
//! chosen by `DATABASE_URL`:
//!
//! - SQLite (`sqlite://FILE`, `sqlite::memory:`): WAL, `synchronous=FULL`,
//!   many readers and one writer task that commits concurrent writes together
//!   (group commit), so writers never see "database is locked" and every
//!   acknowledged write has been synced to disk.
//! - PostgreSQL (`postgres://…`): a connection pool, so many stateless
//!   replicas can share one database.
//!
//! Conditional writes (`If-Match`) are single statements guarded by the
//! row's version (`UPDATE … WHERE id = ? AND version IN (…)`), so the check
//! and the write are atomic on both back ends.

mod migrate;
pub mod model;
pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::time::Duration;

pub use migrate::{Applied, MigrationState, MigrationStatus};
pub use model::{Email, Millis, Name, User, UserFields, UserId, UserPatch};

/// Why the database could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// `DATABASE_URL` does not name a usable database.
    #[error("DATABASE_URL: {0}")]
    Config(String),
    /// The database does not answer (refused, pool exhausted, closed): the
    /// same request may succeed later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The storage refuses writes for a reason outside skiff that an
    /// operator fixes (disk full, read-only): says which, in words fit for
    /// a client. Nothing was written.
    #[error("the database cannot store writes: {0}")]
    CannotWrite(String),
    /// Another process serves this SQLite database (the whole message).
    #[error("{0}")]
    InUse(String),
    /// Migrations failed, or the database's do not match this binary's.
    #[error("migrations: {0}")]
    Migration(String),
    /// Anything else: a bug or a broken database.
    #[error("database error: {0}")]
    Failed(String),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match e {
            // A protocol error is a connection that broke mid-conversation:
            // e.g. a server dying while it answers a new connection's
            // SSLRequest ("unexpected response from SSLRequest: 0x00").
            E::PoolTimedOut
            | E::PoolClosed
            | E::Io(_)
            | E::Tls(_)
            | E::Protocol(_)
            | E::WorkerCrashed => DbError::Unavailable(e.to_string()),
            E::Database(ref db) => match classify(db.as_ref()) {
                Some(Class::Unavailable) => DbError::Unavailable(e.to_string()),
                Some(Class::CannotWrite(why)) => DbError::CannotWrite(why.into()),
                None => DbError::Failed(e.to_string()),
            },
            E::Migrate(m) => DbError::Migration(m.to_string()),
            other => DbError::Failed(other.to_string()),
        }
    }
}

/// What a database's own error code says about retrying.
pub(crate) enum Class {
    /// The server is going away, restarting, overloaded or locked: the
    /// same request may succeed later.
    Unavailable,
    /// The storage refuses writes (the reason, for the client to read).
    CannotWrite(&'static str),
}

/// Sorts the errors that are about the database's state rather than the
/// request, by each back end's own codes.
fn classify(db: &dyn sqlx::error::DatabaseError) -> Option<Class> {
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return postgres::errors::classify(pg.code());
    }
    sqlite::errors::classify(db.code()?.parse().ok()?)
}

impl From<sqlx::migrate::MigrateError> for DbError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(e) => DbError::from(e),
            other => DbError::Migration(other.to_string()),
        }
    }
}

/// Why a write was not made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("no such user")]
    NotFound,
    #[error("the user's current version does not match If-Match")]
    PreconditionFailed,
    #[error("another user has this email")]
    DuplicateEmail,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        WriteError::Db(e.into())
    }
}

/// Whether a sqlx error is the unique index on `email_key` (the only unique
/// constraint besides the random primary key).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// What a page of the list asks for.
#[derive(Debug, Clone)]
pub struct PageQuery {
    /// Users created after this one ([`UserId::MIN`] for the first page).
    pub after: UserId,
    /// How many rows to fetch.
    pub limit: u32,
    /// Only the user whose [`Email::key`] is this.
    pub email_key: Option<String>,
}

/// The versions an `If-Match` accepts; `None` means no condition.
pub type Versions<'a> = Option<&'a [i64]>;

/// How long readiness waits for the database.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a request waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

pub const DB_POOL_CONNECTIONS: &str = "skiff_db_pool_connections";
pub const DB_POOL_MAX: &str = "skiff_db_pool_max_connections";
pub const DB_WRITE_BATCH: &str = "skiff_db_write_batch_size";

fn describe_metrics() {
    metrics::describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Database pool connections, by pool and state (idle or in_use)"
    );
    metrics::describe_gauge!(DB_POOL_MAX, "Most connections a database pool opens");
    metrics::describe_histogram!(
        DB_WRITE_BATCH,
        "Writes committed together in one SQLite transaction (group commit)"
    );
}

fn record_pool<D: sqlx::Database>(name: &'static str, pool: &sqlx::Pool<D>) {
    let size = pool.size() as f64;
    let idle = pool.num_idle() as f64;
    metrics::gauge!(DB_POOL_CONNECTIONS, "pool" => name, "state" => "idle").set(idle);
    metrics::gauge!(DB_POOL_CONNECTIONS, "pool" => name, "state" => "in_use").set(size - idle);
    metrics::gauge!(DB_POOL_MAX, "pool" => name).set(pool.options().get_max_connections() as f64);
}

/// Which back end a `DATABASE_URL` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> Result<Self, DbError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(DbError::Config(
                "expected sqlite://FILE, sqlite::memory: or postgres://…".into(),
            ))
        }
    }
}

/// The users store.
pub enum Db {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl Db {
    /// Opens the database named by `url` (creating a missing SQLite file)
    /// and, when `migrate` is set, applies pending migrations first.
    pub async fn connect(url: &str, migrate: bool) -> Result<Self, DbError> {
        describe_metrics();
        Ok(match Backend::of(url)? {
            Backend::Sqlite => Db::Sqlite(sqlite::SqliteStore::connect(url, migrate).await?),
            Backend::Postgres => Db::Postgres(postgres::PgStore::connect(url, migrate).await?),
        })
    }

    /// Whether the database answers, within a short timeout.
    pub async fn ping(&self) -> bool {
        let answered = match self {
            Db::Sqlite(s) => tokio::time::timeout(PING_TIMEOUT, s.ping()).await,
            Db::Postgres(s) => tokio::time::timeout(PING_TIMEOUT, s.ping()).await,
        };
        answered.unwrap_or(false)
    }

    /// Sets the pool gauges (called on each `/metrics` scrape).
    pub fn record_pool_metrics(&self) {
        match self {
            Db::Sqlite(s) => s.record_pool_metrics(),
            Db::Postgres(s) => s.record_pool_metrics(),
        }
    }

    /// Finishes queued writes and closes every connection.
    pub async fn close(&self) {
        match self {
            Db::Sqlite(s) => s.close().await,
            Db::Postgres(s) => s.close().await,
        }
    }

    /// Stores a new user made of `fields`.
    pub async fn create_user(&self, fields: UserFields) -> Result<User, WriteError> {
        let user = User::new(fields, Millis::now());
        match self {
            Db::Sqlite(s) => s.create(user).await,
            Db::Postgres(s) => s.create(user).await,
        }
    }

    pub async fn user(&self, id: UserId) -> Result<Option<User>, DbError> {
        match self {
            Db::Sqlite(s) => s.get(id).await,
            Db::Postgres(s) => s.get(id).await,
        }
    }

    /// Users in creation order, as `page` asks.
    pub async fn users(&self, page: &PageQuery) -> Result<Vec<User>, DbError> {
        match self {
            Db::Sqlite(s) => s.list(page).await,
            Db::Postgres(s) => s.list(page).await,
        }
    }

    /// Where a page of `limit` users after `after` ends: the id of its last
    /// user, and whether another user follows. `(None, false)` when fewer
    /// than `limit` remain. Lets a long page be streamed a chunk at a time.
    pub async fn page_end(
        &self,
        after: UserId,
        limit: u32,
    ) -> Result<(Option<UserId>, bool), DbError> {
        let ids = match self {
            Db::Sqlite(s) => s.page_end(after, limit).await?,
            Db::Postgres(s) => s.page_end(after, limit).await?,
        };
        Ok(match ids.as_slice() {
            [] => (None, false),
            [last] => (Some(UserId::from_uuid(*last)), false),
            [last, ..] => (Some(UserId::from_uuid(*last)), true),
        })
    }

    /// Applies `patch` to the user if its version is one of `versions` (or
    /// unconditionally), in one atomic step.
    pub async fn update_user(
        &self,
        id: UserId,
        versions: Versions<'_>,
        patch: UserPatch,
    ) -> Result<User, WriteError> {
        let now = Millis::now();
        match self {
            Db::Sqlite(s) => s.update(id, versions, patch, now).await,
            Db::Postgres(s) => s.update(id, versions, patch, now).await,
        }
    }

    /// Deletes the user if its version is one of `versions` (or
    /// unconditionally), in one atomic step.
    pub async fn delete_user(&self, id: UserId, versions: Versions<'_>) -> Result<(), WriteError> {
        match self {
            Db::Sqlite(s) => s.delete(id, versions).await,
            Db::Postgres(s) => s.delete(id, versions).await,
        }
    }
}

/// A row of `users` as both back ends return it.
#[derive(sqlx::FromRow)]
struct UserRow {
    id: uuid::Uuid,
    email: String,
    account_enabled: bool,
    display_name: String,
    given_name: String,
    surname: String,
    company_name: String,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: UserId::from_uuid(r.id),
            email: Email::from_stored(r.email),
            account_enabled: r.account_enabled,
            display_name: Name::from_stored(r.display_name),
            given_name: Name::from_stored(r.given_name),
            surname: Name::from_stored(r.surname),
            company_name: Name::from_stored(r.company_name),
            created_at: Millis::from_millis(r.created_at),
            updated_at: Millis::from_millis(r.updated_at),
            version: r.version,
        }
    }
}

/// The columns of [`UserRow`], for `concat!` into every `SELECT` and
/// `RETURNING` (sqlx takes only static SQL text).
macro_rules! user_columns {
    () => {
        "id, email, account_enabled, display_name, given_name, surname, company_name, \
         version, created_at, updated_at"
    };
}
pub(crate) use user_columns;

/// Logs a warning when serving without migrating (`--no-migrate`) on a
/// database that is behind this binary.
fn warn_if_not_migrated(status: Vec<MigrationStatus>) {
    let behind: Vec<String> = status
        .iter()
        .filter(|s| !matches!(s.state, MigrationState::Applied { .. }))
        .map(|s| format!("{} {} ({:?})", s.version, s.description, s.state))
        .collect();
    if !behind.is_empty() {
        tracing::warn!(
            migrations = %behind.join(", "),
            "the database is not at this binary's schema; run `skiff migrate`"
        );
    }
}
