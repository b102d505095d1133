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
//! Every statement runs in its own read transaction, which sees every
//! transaction committed before it began: a read that starts after a write
//! was acknowledged sees that write (WAL).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row, params};

use crate::db::{DbError, Email, Millis, Name, PageQuery, User, UserId, user_columns};

pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
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
    ) -> Result<Readers, DbError> {
        let readers = Readers {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
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

    fn connect(&self) -> Result<Connection, DbError> {
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
        conn.set_prepared_statement_cache_capacity(8);
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    fn put_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle && !self.closed.load(Ordering::Relaxed) {
            idle.push(conn);
        } else {
            drop(idle);
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Runs `f` on an idle connection (or a new one), on this thread.
    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, DbError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(DbError::Unavailable("the database is closing".into()));
        }
        let taken = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match taken {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let out = f(&conn);
        self.put_back(conn);
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
