//! The writer task: the only connection that writes. It takes whatever
//! writes are queued, runs them in one `BEGIN IMMEDIATE` transaction and
//! commits them together (group commit), then answers each.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::cache::UserCache;
use super::checkpoint::Checkpointer;
use super::read::Commits;
use crate::db::model::EMAIL_KEY_VERSION;
use crate::db::{
    DB_WRITE_BATCH, DbError, Millis, User, UserId, UserPatch, UserRow, WriteError,
    is_unique_violation, user_columns,
};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

/// What the writer task is asked to do.
pub(super) enum Op {
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
pub(super) type Reply = Result<Option<User>, WriteError>;

pub(super) struct Job {
    pub(super) op: Op,
    pub(super) reply: oneshot::Sender<Reply>,
}

/// `[1,2]`: how a version list is bound, for `json_each`.
pub(super) fn json_array(versions: &[i64]) -> String {
    let items: Vec<String> = versions.iter().map(i64::to_string).collect();
    format!("[{}]", items.join(","))
}

/// The writer task: batches queued writes into transactions until stopped,
/// then drains what is left and ends. The users a batch changed leave the
/// cache after its commit and before anyone hears of it.
pub(super) async fn write_loop(
    pool: SqlitePool,
    cache: Arc<UserCache>,
    commits: Commits,
    checkpointer: Option<Arc<Checkpointer>>,
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
        let outcome = run_batch(&pool, ops).await;
        // Counted before anyone hears of the batch, also when its outcome
        // is unknown: the readers' next snapshot must include it.
        commits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match outcome {
            Ok(answers) => {
                if let Some(checkpointer) = &checkpointer {
                    checkpointer.nudge();
                }
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
