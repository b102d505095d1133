//! WAL checkpoints off the write path.
//!
//! By default SQLite checkpoints inside the commit that takes the WAL past
//! 1,000 pages: that commit copies the pages into the database file and
//! syncs it before it returns, and every write of its batch waits for it
//! (the tail of `POST /users`, issue 19). Here the writer's connection has
//! `wal_autocheckpoint = 0`, and a thread of its own runs a `PASSIVE`
//! checkpoint [`DELAY`] after a commit (the writer nudges it; an idle
//! server never wakes it): it copies what readers no longer need,
//! never waits for a lock, and takes no lock a writer needs, so commits
//! only ever sync the WAL. Durability is unchanged: a write is on disk
//! (in the WAL) when it is acknowledged, and a checkpoint that is cut short
//! leaves the WAL to recover from.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::db::DbError;

/// How long after a commit the WAL is copied back, so that the commits of
/// a busy moment share one checkpoint. At 10,000 writes/s the WAL grows by
/// about 3 MB/s: a few hundred pages a checkpoint.
const DELAY: Duration = Duration::from_millis(250);

#[derive(Default)]
struct State {
    /// A commit since the last checkpoint began.
    dirty: bool,
    stopping: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct Checkpointer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    /// Starts checkpointing the database file `path`; `before` runs before
    /// each checkpoint (the readers end their stale snapshots, which would
    /// hold it back).
    pub fn start(
        path: &Path,
        busy_timeout: Duration,
        before: impl Fn() + Send + 'static,
    ) -> Result<Self, DbError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|conn| {
            conn.busy_timeout(busy_timeout)?;
            Ok(conn)
        })
        .map_err(|e| {
            DbError::Unavailable(format!(
                "cannot open the SQLite database {} to checkpoint it: {e}",
                path.display()
            ))
        })?;
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn({
                let shared = shared.clone();
                move || run(&conn, &shared, before)
            })
            .map_err(|e| DbError::Unavailable(format!("cannot start the checkpointer: {e}")))?;
        Ok(Checkpointer {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Called after each commit: a checkpoint follows within [`DELAY`].
    pub fn nudge(&self) {
        let mut state = self.shared.lock();
        if !state.dirty {
            state.dirty = true;
            self.shared.changed.notify_one();
        }
    }

    /// Stops the thread after its current checkpoint and closes its
    /// connection (the last connection to close checkpoints what is left).
    pub fn stop(&self) {
        self.shared.lock().stopping = true;
        self.shared.changed.notify_one();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(conn: &Connection, shared: &Shared, before: impl Fn()) {
    loop {
        let mut state = shared.lock();
        while !state.dirty && !state.stopping {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        // Let the commits of the next moment join this checkpoint.
        let (mut state, _) = shared
            .changed
            .wait_timeout_while(state, DELAY, |s| !s.stopping)
            .unwrap_or_else(PoisonError::into_inner);
        if state.stopping {
            return;
        }
        state.dirty = false;
        drop(state);
        before();
        // A failure (e.g. a full disk) is tried again after the next
        // commit; the writes themselves report such errors.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "WAL checkpoint failed");
        }
    }
}
