//! The SQLite read path: `GET /users/{id}` and the list, run on the
//! request's own thread through rusqlite.
//!
//! sqlx's SQLite driver runs each connection on a worker thread of its own
//! and reaches it through channels, so every query costs two thread
//! wake-ups, and it prepares its statements through a per-connection cache
//! behind that hop. A lookup by primary key takes a few microseconds in
//! SQLite itself; past the user cache the hops were most of a read's cost
//! (bench/NOTES.md, "Reads past the cache"). Here a read takes an idle
//! read-only connection from a stack (an uncontended mutex), runs its cached
//! prepared statement, decodes the row and puts the connection back: no
//! thread hop, no waiting for a connection (one is opened when none is idle;
//! at most [`Readers::max_idle`] are kept).
//!
//! A connection keeps its read transaction (its snapshot) open from one
//! read to the next for as long as nothing has been committed: the writer
//! counts its commits ([`Commits`]) before it acknowledges them, and a read
//! that finds the count moved on starts a new transaction, which sees every
//! commit before it. So a read that starts after a write was acknowledged
//! sees that write (WAL), and a run of reads between two writes skips the
//! two `fcntl` locks, the `fstat` and the WAL header check that beginning
//! and ending a read transaction cost (about a tenth of a read past the
//! cache at 1M users, bench/NOTES.md). An idle connection's snapshot would
//! hold back checkpoints: [`Readers::release_stale`] ends them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, Row, params};

use crate::db::{DbError, Email, Millis, Name, PageQuery, User, UserId, user_columns};

/// Commits made by the writer, counted after each commit and before its
/// writes are acknowledged.
pub type Commits = Arc<AtomicU64>;

/// A connection and the commit count its open read transaction started
/// after (`None`: no transaction open).
struct Reader {
    conn: Connection,
    snapshot: Option<u64>,
}

impl Reader {
    /// Ends the read transaction, if one is open.
    fn release(&mut self) -> rusqlite::Result<()> {
        self.snapshot = None;
        if self.conn.is_autocommit() {
            return Ok(());
        }
        self.conn.execute_batch("COMMIT")
    }

    /// Makes sure the open transaction sees every commit up to `commits`.
    fn renew(&mut self, commits: u64) -> rusqlite::Result<()> {
        if self.snapshot == Some(commits) && !self.conn.is_autocommit() {
            return Ok(());
        }
        self.release()?;
        // Deferred: the snapshot is taken by the first read, which comes
        // after `commits` was read.
        self.conn.execute_batch("BEGIN")?;
        self.snapshot = Some(commits);
        Ok(())
    }
}

pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Reader>>,
    commits: Commits,
    max_idle: usize,
    /// Connections open now (idle and in use).
    open: AtomicUsize,
    closed: AtomicBool,
    busy_timeout: Duration,
    cache_kib: u32,
    mmap_bytes: u64,
}

const GET: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE id = ?1");
const PAGE: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users WHERE id > ?1 ORDER BY id LIMIT ?2"
);
const PAGE_END: &str = "SELECT id FROM users WHERE id > ?1 ORDER BY id LIMIT 2 OFFSET ?2";
const BY_EMAIL: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users WHERE email_key = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
);

impl Readers {
    /// Readers of the database file `path`; opens one connection now, so
    /// a file that cannot be read stops start-up.
    pub fn open(
        path: &Path,
        max_idle: usize,
        busy_timeout: Duration,
        cache_kib: u32,
        mmap_bytes: u64,
        commits: Commits,
    ) -> Result<Readers, DbError> {
        let readers = Readers {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            commits,
            max_idle,
            open: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            busy_timeout,
            cache_kib,
            mmap_bytes,
        };
        let first = readers.connect()?;
        readers.put_back(first);
        Ok(readers)
    }

    fn connect(&self) -> Result<Reader, DbError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| {
            DbError::Unavailable(format!(
                "cannot open the SQLite database {} for reading: {e}",
                self.path.display()
            ))
        })?;
        conn.busy_timeout(self.busy_timeout).map_err(failed)?;
        conn.execute_batch(&format!(
            "PRAGMA cache_size = -{}; PRAGMA mmap_size = {}; PRAGMA temp_store = MEMORY;",
            self.cache_kib, self.mmap_bytes
        ))
        .map_err(failed)?;
        // Without the query planner stability guarantee SQLite recompiles a
        // statement whenever a parameter its plan looked at is bound again
        // (here: every `LIMIT ?`, even to the same value), which was a
        // quarter of a `?email=` lookup's CPU (bench/NOTES.md).
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(failed)?;
        conn.set_prepared_statement_cache_capacity(8);
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Reader {
            conn,
            snapshot: None,
        })
    }

    /// Keeps `reader` for the next read, its snapshot too while it is
    /// current; a connection that cannot end its transaction is closed.
    fn put_back(&self, mut reader: Reader) {
        let current = self.commits.load(Ordering::SeqCst);
        let usable = reader.snapshot == Some(current) || reader.release().is_ok();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if usable && idle.len() < self.max_idle && !self.closed.load(Ordering::Relaxed) {
            idle.push(reader);
        } else {
            drop(idle);
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Ends the snapshots of idle connections that a commit has made
    /// stale, so that a checkpoint can copy the whole WAL back and the WAL
    /// can start over (the checkpointer calls it first).
    pub fn release_stale(&self) {
        let current = self.commits.load(Ordering::SeqCst);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let before = idle.len();
        idle.retain_mut(|r| r.snapshot.is_none_or(|s| s == current) || r.release().is_ok());
        self.open.fetch_sub(before - idle.len(), Ordering::Relaxed);
    }

    /// Runs `f` on an idle connection (or a new one), on this thread, in a
    /// read transaction that sees every commit acknowledged so far.
    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, DbError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(DbError::Unavailable("the database is closing".into()));
        }
        let taken = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut reader = match taken {
            Some(reader) => reader,
            None => self.connect()?,
        };
        let commits = self.commits.load(Ordering::SeqCst);
        let out = reader.renew(commits).and_then(|()| f(&reader.conn));
        if out.is_err() {
            // Whatever state the failure left, the next read starts afresh.
            let _ = reader.release();
        }
        self.put_back(reader);
        out.map_err(failed)
    }

    pub fn get(&self, id: UserId) -> Result<Option<User>, DbError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(GET)?;
            let mut rows = stmt.query(params![id.as_uuid().as_bytes()])?;
            rows.next()?.map(user).transpose()
        })
    }

    pub fn list(&self, page: &PageQuery) -> Result<Vec<User>, DbError> {
        let after = page.after.as_uuid();
        let after = after.as_bytes();
        let limit = i64::from(page.limit);
        self.with(|conn| {
            let mut users = Vec::with_capacity(page.limit.min(1000) as usize);
            match &page.email_key {
                None => {
                    let mut stmt = conn.prepare_cached(PAGE)?;
                    let mut rows = stmt.query(params![after, limit])?;
                    while let Some(row) = rows.next()? {
                        users.push(user(row)?);
                    }
                }
                Some(key) => {
                    let mut stmt = conn.prepare_cached(BY_EMAIL)?;
                    let mut rows = stmt.query(params![key, after, limit])?;
                    while let Some(row) = rows.next()? {
                        users.push(user(row)?);
                    }
                }
            }
            Ok(users)
        })
    }

    /// The ids of the `limit`-th and next users after `after`.
    pub fn page_end(&self, after: UserId, limit: u32) -> Result<Vec<uuid::Uuid>, DbError> {
        let after = after.as_uuid();
        let offset = i64::from(limit.max(1) - 1);
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(PAGE_END)?;
            let ids = stmt.query_map(params![after.as_bytes(), offset], |row| id(row, 0))?;
            ids.collect()
        })
    }

    /// Connections idle and in use.
    pub fn counts(&self) -> (usize, usize) {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).len();
        let open = self.open.load(Ordering::Relaxed);
        (idle, open.saturating_sub(idle))
    }

    pub fn max_idle(&self) -> usize {
        self.max_idle
    }

    /// Refuses new reads and closes the idle connections (those in use
    /// close when their read ends).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        self.open.fetch_sub(idle.len(), Ordering::Relaxed);
    }
}

/// Column `i` of `row`, a UUID stored as 16 bytes.
fn id(row: &Row<'_>, i: usize) -> rusqlite::Result<uuid::Uuid> {
    let bytes = row.get_ref(i)?.as_blob()?;
    uuid::Uuid::from_slice(bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(e))
    })
}

/// A row of [`user_columns!`] as a [`User`].
fn user(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: UserId::from_uuid(id(row, 0)?),
        email: Email::from_stored(row.get(1)?),
        account_enabled: row.get(2)?,
        display_name: Name::from_stored(row.get(3)?),
        given_name: Name::from_stored(row.get(4)?),
        surname: Name::from_stored(row.get(5)?),
        company_name: Name::from_stored(row.get(6)?),
        version: row.get(7)?,
        created_at: Millis::from_millis(row.get(8)?),
        updated_at: Millis::from_millis(row.get(9)?),
    })
}

/// Busy or locked past the timeout is "try again"; anything else is a
/// failure.
fn failed(e: rusqlite::Error) -> DbError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::CannotOpen) => {
            DbError::Unavailable(e.to_string())
        }
        _ => DbError::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;

    /// Readers on a fresh file with skiff's schema and two users.
    fn readers(dir: &Path) -> Readers {
        let path = dir.join("read.db");
        let setup = Connection::open(&path).unwrap();
        setup
            .execute_batch(concat!(
                "PRAGMA journal_mode = WAL;",
                include_str!("../../../migrations/sqlite/0001_create_users.sql"),
                include_str!("../../../migrations/sqlite/0002_email_key_case_folding.sql"),
            ))
            .unwrap();
        for (i, email) in ["a@example.com", "b@example.com"].iter().enumerate() {
            setup
                .execute(
                    "INSERT INTO users (id, email, email_key, created_at, updated_at) \
                     VALUES (?1, ?2, ?2, 0, 0)",
                    params![uuid::Uuid::now_v7().as_bytes(), email],
                )
                .unwrap_or_else(|e| panic!("user {i}: {e}"));
        }
        Readers::open(&path, 1, Duration::from_secs(1), 512, 0, Commits::default()).unwrap()
    }

    #[test]
    fn statements_are_not_recompiled_when_their_limit_is_bound_again() {
        let dir = tempfile::tempdir().unwrap();
        let readers = readers(dir.path());
        for limit in [101, 101, 5, 101] {
            for key in ["a@example.com", "b@example.com"] {
                let page = PageQuery {
                    after: UserId::MIN,
                    limit,
                    email_key: Some(key.into()),
                };
                assert_eq!(readers.list(&page).unwrap().len(), 1);
            }
            let all = PageQuery {
                after: UserId::MIN,
                limit,
                email_key: None,
            };
            assert_eq!(readers.list(&all).unwrap().len(), 2);
        }
        let reprepared = readers
            .with(|conn| {
                let by_email = conn.prepare_cached(BY_EMAIL)?;
                let page = conn.prepare_cached(PAGE)?;
                Ok(by_email.get_status(StatementStatus::RePrepare)
                    + page.get_status(StatementStatus::RePrepare))
            })
            .unwrap();
        assert_eq!(reprepared, 0, "recompiled on a new binding");
    }
}
