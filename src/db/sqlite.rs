//! The SQLite back end.
//!
//! Reads go through a pool of connections; WAL lets them run while a write
//! commits. Every write goes through one writer task that owns the only
//! writing connection: it takes whatever writes are queued, runs them in one
//! `BEGIN IMMEDIATE` transaction and commits them together (group commit),
//! then answers each. So concurrent writers never meet "database is locked",
//! an answer is only sent after its write is on disk (`synchronous=FULL`
//! syncs the WAL on every commit), and one sync is shared by a whole batch.
//! Reads by id go through a cache that the writer keeps true (see
//! [`super::cache`]).

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Row};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::cache::UserCache;
use super::migrate::{self, Applied, AppliedRow, MigrationStatus};
use super::model::{self, EMAIL_KEY_VERSION};
use super::serve_lock::{self, ServeLock};
use super::sqlite_read::Readers;
use super::{
    ACQUIRE_TIMEOUT, DB_POOL_CONNECTIONS, DB_POOL_MAX, DB_WRITE_BATCH, DbError, Millis, PageQuery,
    User, UserId, UserPatch, UserRow, Versions, WriteError, is_unique_violation, record_pool,
    user_columns,
};

/// How long a connection waits on another process's lock (e.g. `skiff
/// migrate` while serving) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Writes waiting for the writer; senders wait when it is full.
const QUEUE_DEPTH: usize = 4096;
/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;
/// Most users held by the read cache (a few hundred bytes each).
const CACHED_USERS: usize = 4096;
/// Page cache of each read connection, in KiB (SQLite's default is 2000,
/// kept by the writer). Reads by id come from the user cache and the OS
/// caches the file too; with the default, four readers slowly filled up to
/// 8 MiB of heap under a long mixed load (bench/SOAK.md).
const READER_CACHE_KIB: u32 = 512;
/// Memory-mapped I/O for reads (`PRAGMA mmap_size`): off. Mapped pages of
/// the file count in the process's RSS as they are touched, up to the
/// whole database; reads through the page cache cost a `pread` per page
/// instead, which measured as a small part of a read (bench/NOTES.md).
const READER_MMAP_BYTES: u64 = 0;

/// The connection settings every SQLite connection of skiff uses.
pub fn options(url: &str) -> Result<SqliteConnectOptions, DbError> {
    let options =
        SqliteConnectOptions::from_str(url).map_err(|e| DbError::Config(format!("{url}: {e}")))?;
    Ok(options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        // Temporary tables and sort spills stay in memory: the image's root
        // is read-only and has no /tmp.
        .pragma("temp_store", "MEMORY"))
}

/// Whether `url` names an in-memory database (which lives only as long as
/// one of its connections stays open).
pub fn in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

fn open_error(options: &SqliteConnectOptions, e: sqlx::Error) -> DbError {
    let path = options.get_filename();
    let why = os_reason(path)
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    DbError::Unavailable(format!(
        "cannot open the SQLite database {}: {e}{why}",
        path.display()
    ))
}

/// Opens `pool` on `options`, waiting up to [`BUSY_TIMEOUT`] while another
/// process holds the lock. Opening runs pragmas (`journal_mode = WAL` on a
/// new file takes an exclusive lock) that SQLite can refuse with
/// `SQLITE_BUSY` at once instead of calling the busy handler: six `skiff
/// migrate` started together on a new file failed that way.
async fn open_pool(
    pool: SqlitePoolOptions,
    options: &SqliteConnectOptions,
) -> Result<SqlitePool, DbError> {
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(5);
    loop {
        match pool.clone().connect_with(options.clone()).await {
            Ok(pool) => return Ok(pool),
            Err(e) if is_busy(&e) && tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(open_error(options, e)),
        }
    }
}

/// `SQLITE_BUSY` (5) or one of its extended codes.
fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c & 0xff == 5)
}

/// What the OS says about opening `path` for writing, when SQLite's own
/// message ("unable to open database file") does not: a read-only file
/// system, a missing directory, a permission. Opening for append changes
/// nothing.
fn os_reason(path: &Path) -> Option<String> {
    if path.exists() {
        let opened = std::fs::OpenOptions::new().append(true).open(path);
        return opened.err().map(|e| e.to_string());
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    (!dir.is_dir()).then(|| format!("the directory {} does not exist", dir.display()))
}

/// What the writer task is asked to do.
enum Op {
    Create(User),
    Update {
        id: UserId,
        versions: Option<String>,
        patch: UserPatch,
        now: Millis,
    },
    Delete {
        id: UserId,
        versions: Option<String>,
    },
}

/// The user as written, or `None` for a delete.
type Reply = Result<Option<User>, WriteError>;

struct Job {
    op: Op,
    reply: oneshot::Sender<Reply>,
}

/// Where reads go: rusqlite connections on the caller's thread for a
/// file, the writer's sqlx connection for an in-memory database (which only
/// that connection sees).
enum Reads {
    Direct(Readers),
    Shared(SqlitePool),
}

pub struct SqliteStore {
    reads: Reads,
    /// One connection, used by the writer task only (and by migrations
    /// before it starts). For an in-memory database it also serves reads.
    writes: SqlitePool,
    /// One connection of its own for readiness, so that a read pool busy
    /// with traffic (many clients pulling long pages) does not make the
    /// probe wait past its timeout and readiness flap.
    probe: SqlitePool,
    memory: bool,
    cache: Arc<UserCache>,
    queue: mpsc::Sender<Job>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Keeps a second server off the file (`None` in memory); released
    /// once closed.
    lock: Mutex<Option<ServeLock>>,
}

impl SqliteStore {
    pub async fn connect(url: &str, migrate: bool) -> Result<Self, DbError> {
        let options = options(url)?;
        let memory = in_memory(url);
        let writes = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(ACQUIRE_TIMEOUT);
        let writes = open_pool(writes, &options).await?;
        // Once the file is known to open (SQLite's own message names what
        // is wrong with it or its directory), before anything is served.
        let lock = if memory {
            None
        } else {
            match ServeLock::acquire(options.get_filename()) {
                Ok(lock) => Some(lock),
                Err(e) => {
                    writes.close().await;
                    return Err(e);
                }
            }
        };
        if migrate {
            apply_migrations(&writes).await?;
        } else {
            super::warn_if_not_migrated(migration_status(&writes).await?);
        }
        let reads = if memory {
            Reads::Shared(writes.clone())
        } else {
            let readers = std::thread::available_parallelism().map_or(4, |n| n.get().clamp(4, 16));
            Reads::Direct(Readers::open(
                options.get_filename(),
                readers,
                BUSY_TIMEOUT,
                READER_CACHE_KIB,
                READER_MMAP_BYTES,
            )?)
        };
        let probe = if memory {
            writes.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options.clone().pragma("query_only", "ON"))
                .await
                .map_err(|e| open_error(&options, e))?
        };
        let (queue, jobs) = mpsc::channel(QUEUE_DEPTH);
        let (stop, stopped) = oneshot::channel();
        let cache = Arc::new(UserCache::new(CACHED_USERS));
        let writer = tokio::spawn(write_loop(writes.clone(), cache.clone(), jobs, stopped));
        Ok(SqliteStore {
            reads,
            writes,
            probe,
            memory,
            cache,
            queue,
            stop: Mutex::new(Some(stop)),
            writer: Mutex::new(Some(writer)),
            lock: Mutex::new(lock),
        })
    }

    pub async fn ping(&self) -> bool {
        !self.queue.is_closed() && sqlx::query("SELECT 1").execute(&self.probe).await.is_ok()
    }

    pub fn record_pool_metrics(&self) {
        match &self.reads {
            Reads::Shared(pool) if self.memory => record_pool("sqlite", pool),
            Reads::Shared(pool) => {
                record_pool("sqlite_read", pool);
                record_pool("sqlite_write", &self.writes);
            }
            Reads::Direct(readers) => {
                let (idle, in_use) = readers.counts();
                let pool = "sqlite_read";
                metrics::gauge!(DB_POOL_CONNECTIONS, "pool" => pool, "state" => "idle")
                    .set(idle as f64);
                metrics::gauge!(DB_POOL_CONNECTIONS, "pool" => pool, "state" => "in_use")
                    .set(in_use as f64);
                metrics::gauge!(DB_POOL_MAX, "pool" => pool).set(readers.max_idle() as f64);
                record_pool("sqlite_write", &self.writes);
            }
        }
    }

    /// Lets the writer finish what is queued, then closes the connections.
    pub async fn close(&self) {
        if let Some(stop) = self.stop.lock().expect("not poisoned").take() {
            let _ = stop.send(());
        }
        let writer = self.writer.lock().expect("not poisoned").take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
        match &self.reads {
            Reads::Direct(readers) => readers.close(),
            Reads::Shared(pool) => pool.close().await,
        }
        self.probe.close().await;
        self.writes.close().await;
        self.lock.lock().expect("not poisoned").take();
    }

    async fn submit(&self, op: Op) -> Reply {
        let closing = || WriteError::Db(DbError::Unavailable("the database is closing".into()));
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { op, reply })
            .await
            .map_err(|_| closing())?;
        answer.await.map_err(|_| closing())?
    }

    pub async fn create(&self, user: User) -> Result<User, WriteError> {
        let written = self.submit(Op::Create(user)).await?;
        Ok(written.expect("a create answers with its user"))
    }

    pub async fn update(
        &self,
        id: UserId,
        versions: Versions<'_>,
        patch: UserPatch,
        now: Millis,
    ) -> Result<User, WriteError> {
        let versions = versions.map(json_array);
        let written = self
            .submit(Op::Update {
                id,
                versions,
                patch,
                now,
            })
            .await?;
        Ok(written.expect("an update answers with its user"))
    }

    pub async fn delete(&self, id: UserId, versions: Versions<'_>) -> Result<(), WriteError> {
        let versions = versions.map(json_array);
        self.submit(Op::Delete { id, versions }).await.map(|_| ())
    }

    pub async fn get(&self, id: UserId) -> Result<Option<User>, DbError> {
        let miss = match self.cache.get(id) {
            Ok(user) => return Ok(Some(user)),
            Err(miss) => miss,
        };
        let user = match &self.reads {
            Reads::Direct(readers) => readers.get(id)?,
            Reads::Shared(pool) => {
                let row: Option<UserRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users WHERE id = ?"
                ))
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await?;
                row.map(User::from)
            }
        };
        if let Some(user) = &user {
            self.cache.fill(miss, user);
        }
        Ok(user)
    }

    /// The ids of the `limit`-th and next users after `after`.
    pub async fn page_end(&self, after: UserId, limit: u32) -> Result<Vec<uuid::Uuid>, DbError> {
        let pool = match &self.reads {
            Reads::Direct(readers) => return readers.page_end(after, limit),
            Reads::Shared(pool) => pool,
        };
        Ok(
            sqlx::query_scalar("SELECT id FROM users WHERE id > ? ORDER BY id LIMIT 2 OFFSET ?")
                .bind(after.as_uuid())
                .bind(i64::from(limit.max(1) - 1))
                .fetch_all(pool)
                .await?,
        )
    }

    pub async fn list(&self, page: &PageQuery) -> Result<Vec<User>, DbError> {
        let pool = match &self.reads {
            Reads::Direct(readers) => return readers.list(page),
            Reads::Shared(pool) => pool,
        };
        let limit = i64::from(page.limit);
        let after = page.after.as_uuid();
        let rows: Vec<UserRow> = match &page.email_key {
            None => {
                sqlx::query_as(concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users WHERE id > ? ORDER BY id LIMIT ?"
                ))
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            Some(key) => {
                sqlx::query_as(concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users WHERE email_key = ? AND id > ? ORDER BY id LIMIT ?"
                ))
                .bind(key)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
        };
        Ok(rows.into_iter().map(User::from).collect())
    }
}

/// `[1,2]`: how a version list is bound, for `json_each`.
fn json_array(versions: &[i64]) -> String {
    let items: Vec<String> = versions.iter().map(i64::to_string).collect();
    format!("[{}]", items.join(","))
}

/// The writer task: batches queued writes into transactions until stopped,
/// then drains what is left and ends. The users a batch changed leave the
/// cache after its commit and before anyone hears of it.
async fn write_loop(
    pool: SqlitePool,
    cache: Arc<UserCache>,
    mut jobs: mpsc::Receiver<Job>,
    stop: oneshot::Receiver<()>,
) {
    let mut stop = Some(stop);
    loop {
        let first = match stop.as_mut() {
            Some(signal) => tokio::select! {
                biased;
                job = jobs.recv() => job,
                _ = signal => {
                    // Refuse new writes; the queued ones still get done.
                    stop = None;
                    jobs.close();
                    continue;
                }
            },
            None => jobs.recv().await,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!(DB_WRITE_BATCH).record(batch.len() as f64);
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|j| (j.op, j.reply)).unzip();
        let changed: Vec<UserId> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Create(_) => None,
                Op::Update { id, .. } | Op::Delete { id, .. } => Some(*id),
            })
            .collect();
        match run_batch(&pool, ops).await {
            Ok(answers) => {
                cache.forget(changed);
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
            }
            Err(e) => {
                // Rolled back, or a COMMIT whose outcome is unknown.
                cache.clear();
                tracing::error!(error = %e, writes = replies.len(), "SQLite write batch rolled back");
                for reply in replies {
                    let _ = reply.send(Err(WriteError::Db(e.clone())));
                }
            }
        }
    }
}

/// Runs `ops` in one transaction, in order. A rejected write (duplicate
/// email, no such user, precondition) only fails itself; a database error
/// rolls the whole batch back and fails every write in it, so nothing
/// unsynced is ever acknowledged.
///
/// The transaction is plain `BEGIN`/`COMMIT`/`ROLLBACK` statements, not
/// sqlx's `Transaction`: after `SQLITE_FULL` or an I/O error SQLite may
/// have rolled back by itself, sqlx's own `ROLLBACK` then fails and its
/// bookkeeping stays "in a transaction" for good, so every later write
/// failed (found by tests/integration/reliability/sqlite.rs, disk full). SQLite's
/// advice is an explicit `ROLLBACK` whose failure is ignored.
async fn run_batch(pool: &SqlitePool, ops: Vec<Op>) -> Result<Vec<Reply>, DbError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let written = write_batch(&mut conn, ops).await;
    if written.is_err() {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    }
    written
}

/// The body of [`run_batch`], inside its transaction; commits at the end.
async fn write_batch(tx: &mut SqliteConnection, ops: Vec<Op>) -> Result<Vec<Reply>, DbError> {
    let mut answers: Vec<Option<Reply>> = ops.iter().map(|_| None).collect();
    // Consecutive creates are inserted by one statement.
    let mut creates: Vec<(usize, User)> = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        let answer = match op {
            Op::Create(user) => {
                creates.push((i, user));
                continue;
            }
            Op::Update {
                id,
                versions,
                patch,
                now,
            } => {
                insert_all(tx, &mut creates, &mut answers).await?;
                update(tx, id, versions.as_deref(), &patch, now)
                    .await
                    .map(Some)
            }
            Op::Delete { id, versions } => {
                insert_all(tx, &mut creates, &mut answers).await?;
                delete(tx, id, versions.as_deref()).await.map(|()| None)
            }
        };
        if let Err(WriteError::Db(e)) = &answer {
            return Err(e.clone());
        }
        answers[i] = Some(answer);
    }
    insert_all(tx, &mut creates, &mut answers).await?;
    sqlx::query("COMMIT").execute(&mut *tx).await?;
    Ok(answers
        .into_iter()
        .map(|a| a.expect("every write of the batch is answered"))
        .collect())
}

/// Inserts `creates` (and empties it) with one statement: the rows travel
/// as one JSON array, so a batch of creates costs one round trip to the
/// SQLite thread, not one each. A row whose email is taken (by a stored
/// user or an earlier row of the batch) is skipped by `ON CONFLICT DO
/// NOTHING` and missing from `RETURNING`: that create gets a 409.
async fn insert_all(
    conn: &mut SqliteConnection,
    creates: &mut Vec<(usize, User)>,
    answers: &mut [Option<Reply>],
) -> Result<(), DbError> {
    if creates.is_empty() {
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = creates
        .iter()
        .map(|(_, u)| {
            serde_json::json!({
                "id": u.id.as_uuid().simple().to_string(),
                "email": u.email.as_str(),
                "key": u.email.key(),
                "enabled": u.account_enabled,
                "displayName": u.display_name.as_str(),
                "givenName": u.given_name.as_str(),
                "surname": u.surname.as_str(),
                "companyName": u.company_name.as_str(),
                "version": u.version,
                "createdAt": u.created_at.as_millis(),
                "updatedAt": u.updated_at.as_millis(),
            })
        })
        .collect();
    // `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join clause.
    let inserted: Vec<uuid::Uuid> = sqlx::query_scalar(
        "INSERT INTO users (id, email, email_key, account_enabled, display_name, given_name, \
         surname, company_name, version, created_at, updated_at, email_key_version) \
         SELECT unhex(value ->> 'id'), value ->> 'email', value ->> 'key', \
                value ->> 'enabled', value ->> 'displayName', value ->> 'givenName', \
                value ->> 'surname', value ->> 'companyName', value ->> 'version', \
                value ->> 'createdAt', value ->> 'updatedAt', ?2 \
         FROM json_each(?1) WHERE true \
         ON CONFLICT DO NOTHING \
         RETURNING id",
    )
    .bind(serde_json::Value::Array(rows).to_string())
    .bind(EMAIL_KEY_VERSION)
    .fetch_all(&mut *conn)
    .await?;
    let inserted: HashSet<uuid::Uuid> = inserted.into_iter().collect();
    for (i, user) in creates.drain(..) {
        answers[i] = Some(if inserted.contains(&user.id.as_uuid()) {
            Ok(Some(user))
        } else {
            Err(WriteError::DuplicateEmail)
        });
    }
    Ok(())
}

fn write_error(e: sqlx::Error) -> WriteError {
    if is_unique_violation(&e) {
        WriteError::DuplicateEmail
    } else {
        e.into()
    }
}

async fn update(
    conn: &mut SqliteConnection,
    id: UserId,
    versions: Option<&str>,
    patch: &UserPatch,
    now: Millis,
) -> Result<User, WriteError> {
    let row: Option<UserRow> = sqlx::query_as(concat!(
        "UPDATE users SET email = COALESCE(?2, email), email_key = COALESCE(?3, email_key), \
         email_twin = CASE WHEN ?3 IS NULL OR ?3 = email_key THEN email_twin ELSE 0 END, \
         email_key_version = CASE WHEN ?3 IS NULL THEN email_key_version ELSE ?11 END, \
         account_enabled = COALESCE(?4, account_enabled), \
         display_name = COALESCE(?5, display_name), given_name = COALESCE(?6, given_name), \
         surname = COALESCE(?7, surname), company_name = COALESCE(?8, company_name), \
         version = version + 1, updated_at = MAX(?9, updated_at) \
         WHERE id = ?1 AND (?10 IS NULL OR version IN (SELECT value FROM json_each(?10))) \
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
    .bind(EMAIL_KEY_VERSION)
    .fetch_optional(&mut *conn)
    .await
    .map_err(write_error)?;
    match row {
        Some(row) => Ok(row.into()),
        None => Err(missing_or_changed(conn, id).await),
    }
}

async fn delete(
    conn: &mut SqliteConnection,
    id: UserId,
    versions: Option<&str>,
) -> Result<(), WriteError> {
    let done = sqlx::query(
        "DELETE FROM users \
         WHERE id = ?1 AND (?2 IS NULL OR version IN (SELECT value FROM json_each(?2)))",
    )
    .bind(id.as_uuid())
    .bind(versions)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(missing_or_changed(conn, id).await)
    }
}

/// Why a guarded write touched no row: the user is gone, or its version
/// did not match.
async fn missing_or_changed(conn: &mut SqliteConnection, id: UserId) -> WriteError {
    let exists = sqlx::query("SELECT 1 FROM users WHERE id = ?")
        .bind(id.as_uuid())
        .fetch_optional(conn)
        .await;
    match exists {
        Ok(Some(_)) => WriteError::PreconditionFailed,
        Ok(None) => WriteError::NotFound,
        Err(e) => e.into(),
    }
}

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

/// Recomputes the email keys made by an older [`model::email_key`], in
/// creation order, keeping every account (see `migrate::note_twin`).
async fn rekey(conn: &mut SqliteConnection) -> Result<(), DbError> {
    let mut rekeyed = 0u64;
    loop {
        let stale: Vec<(uuid::Uuid, String)> = sqlx::query_as(
            "SELECT id, email FROM users WHERE email_key_version < ?1 ORDER BY id LIMIT 1000",
        )
        .bind(EMAIL_KEY_VERSION)
        .fetch_all(&mut *conn)
        .await?;
        if stale.is_empty() {
            break;
        }
        for (id, email) in stale {
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
            .bind(model::email_key(&email))
            .bind(EMAIL_KEY_VERSION)
            .fetch_one(&mut *conn)
            .await?;
            migrate::note_twin(id, twin);
            rekeyed += 1;
        }
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
    for suffix in ["", "-wal", "-shm", "-journal", serve_lock::SUFFIX] {
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
