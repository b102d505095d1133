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
//! [`cache`]).
//!
//! The store is here; [`writer`] is the writer task, [`read`] the read
//! connections, [`cache`] the read cache, [`checkpoint`] the WAL
//! checkpoints, [`lock`] the one-server lock,
//! [`admin`] what the `migrate` and `db` commands do, [`errors`] SQLite's
//! result codes.

mod admin;
mod cache;
mod checkpoint;
pub mod errors;
mod lock;
mod read;
mod writer;

pub use admin::{admin_pool, apply_migrations, create, drop, file, migration_status, schema};

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use self::cache::UserCache;
use self::checkpoint::Checkpointer;
use self::lock::ServeLock;
use self::read::{Commits, Readers};
use self::writer::{Job, Op, Reply, json_array, write_loop};
use super::{
    ACQUIRE_TIMEOUT, DB_POOL_CONNECTIONS, DB_POOL_MAX, DbError, Millis, PageQuery, User, UserId,
    UserPatch, UserRow, Versions, WriteError, record_pool, user_columns,
};

/// How long a connection waits on another process's lock (e.g. `skiff
/// migrate` while serving) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Writes waiting for the writer; senders wait when it is full.
const QUEUE_DEPTH: usize = 4096;
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
            Err(e) if errors::is_busy(&e) && tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(open_error(options, e)),
        }
    }
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

/// Where reads go: rusqlite connections on the caller's thread for a
/// file, the writer's sqlx connection for an in-memory database (which only
/// that connection sees).
enum Reads {
    Direct(Arc<Readers>),
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
    /// Copies the WAL back into the file, off the write path (`None` in
    /// memory).
    checkpointer: Option<Arc<Checkpointer>>,
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
        // Checkpoints run on a thread of their own (see [`checkpoint`]).
        let write_options = options.clone().pragma("wal_autocheckpoint", "0");
        let writes = open_pool(writes, if memory { &options } else { &write_options }).await?;
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
        let commits = Commits::default();
        let reads = if memory {
            Reads::Shared(writes.clone())
        } else {
            let readers = std::thread::available_parallelism().map_or(4, |n| n.get().clamp(4, 16));
            Reads::Direct(Arc::new(Readers::open(
                options.get_filename(),
                readers,
                BUSY_TIMEOUT,
                READER_CACHE_KIB,
                READER_MMAP_BYTES,
                commits.clone(),
            )?))
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
        let checkpointer = match &reads {
            Reads::Direct(readers) => {
                let readers = readers.clone();
                Some(Arc::new(Checkpointer::start(
                    options.get_filename(),
                    BUSY_TIMEOUT,
                    move || readers.release_stale(),
                )?))
            }
            Reads::Shared(_) => None,
        };
        let (queue, jobs) = mpsc::channel(QUEUE_DEPTH);
        let (stop, stopped) = oneshot::channel();
        let cache = Arc::new(UserCache::new(CACHED_USERS));
        let writer = tokio::spawn(write_loop(
            writes.clone(),
            cache.clone(),
            commits,
            checkpointer.clone(),
            jobs,
            stopped,
        ));
        Ok(SqliteStore {
            reads,
            writes,
            probe,
            memory,
            cache,
            queue,
            stop: Mutex::new(Some(stop)),
            writer: Mutex::new(Some(writer)),
            checkpointer,
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
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.stop();
        }
        self.probe.close().await;
        // The last connection to close checkpoints what is left.
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
