//! Embedded migrations, one set per back end, and a runner that applies the
//! pending ones and says which it applied (sqlx's `Migrator::run` does not).

use std::collections::HashMap;
use std::time::Duration;

use sqlx::migrate::{Migrate, MigrateError, Migrator};

pub static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
pub static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// sqlx's bookkeeping table.
pub const TABLE: &str = "_sqlx_migrations";

/// A migration this process applied.
#[derive(Debug, Clone)]
pub struct Applied {
    pub version: i64,
    pub description: String,
    pub elapsed: Duration,
}

/// Applies the pending migrations on `conn`. The caller makes `conn`
/// exclusive first (an advisory lock on PostgreSQL, `BEGIN IMMEDIATE` on
/// SQLite), so that several processes migrating at once apply each
/// migration exactly once: the later ones find nothing left to do.
pub async fn apply_pending<C: Migrate>(
    conn: &mut C,
    migrator: &Migrator,
) -> Result<Vec<Applied>, MigrateError> {
    conn.ensure_migrations_table(TABLE).await?;
    if let Some(version) = conn.dirty_version(TABLE).await? {
        return Err(MigrateError::Dirty(version));
    }
    let applied: HashMap<i64, _> = conn
        .list_applied_migrations(TABLE)
        .await?
        .into_iter()
        .map(|m| (m.version, m.checksum))
        .collect();
    if let Some(&unknown) = applied.keys().find(|v| !migrator.version_exists(**v)) {
        return Err(MigrateError::VersionMissing(unknown));
    }
    let mut done = Vec::new();
    for migration in migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        match applied.get(&migration.version) {
            Some(checksum) if checksum[..] != migration.checksum[..] => {
                return Err(MigrateError::VersionMismatch(migration.version));
            }
            Some(_) => {}
            None => {
                let elapsed = conn.apply(TABLE, migration).await?;
                tracing::info!(
                    version = migration.version,
                    description = %migration.description,
                    ?elapsed,
                    "migration applied"
                );
                done.push(Applied {
                    version: migration.version,
                    description: migration.description.to_string(),
                    elapsed,
                });
            }
        }
    }
    Ok(done)
}

/// Splits a batch of rows keyed by an older [`crate::db::model::email_key`]
/// (id, email, old key) for a back end's `rekey`: the ids whose key comes
/// out the same (every ASCII email), which only need the new version (each
/// holds `(key, 0)` already, what the per-row update would give it), and
/// the rows whose key changes, with their new key.
pub fn rekey_batch(
    stale: &[(uuid::Uuid, String, String)],
) -> (Vec<uuid::Uuid>, Vec<(uuid::Uuid, String)>) {
    let mut same = Vec::new();
    let mut changed = Vec::new();
    for (id, email, old_key) in stale {
        let key = crate::db::model::email_key(email);
        if key == *old_key {
            same.push(*id);
        } else {
            changed.push((*id, key));
        }
    }
    (same, changed)
}

/// Logs one row re-keyed by a back end's `rekey`: a twin (`twin > 0`) is
/// an account whose email now has the key of an older account's. Both are
/// kept as they are; the warning tells an operator to look at them.
pub fn note_twin(id: uuid::Uuid, twin: i64) {
    if twin > 0 {
        tracing::warn!(
            %id,
            twin,
            "this user's email equals another user's under Unicode case folding; \
             both accounts are kept (find them with ?email=)"
        );
    }
}

/// Logs how many email keys a `rekey` recomputed (nothing when none).
pub fn note_rekeyed(count: u64) {
    if count > 0 {
        tracing::info!(count, "email keys recomputed (Unicode case folding)");
    }
}

/// A row of the bookkeeping table.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AppliedRow {
    pub version: i64,
    pub description: String,
    pub installed_on: String,
    pub success: bool,
    pub checksum: Vec<u8>,
}

/// Where one migration stands in a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationState {
    Applied {
        installed_on: String,
    },
    Pending,
    /// Applied, but this binary's copy differs.
    Modified {
        installed_on: String,
    },
    /// Started and failed part-way: needs a human.
    Failed,
    /// Applied by another (newer) binary.
    Unknown {
        installed_on: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub state: MigrationState,
}

/// Every migration of `migrator` and every row of `rows`, by version.
pub fn status(migrator: &Migrator, rows: &[AppliedRow]) -> Vec<MigrationStatus> {
    let by_version: HashMap<i64, &AppliedRow> = rows.iter().map(|r| (r.version, r)).collect();
    let mut out: Vec<MigrationStatus> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| {
            let state = match by_version.get(&m.version) {
                None => MigrationState::Pending,
                Some(r) if !r.success => MigrationState::Failed,
                Some(r) if r.checksum[..] != m.checksum[..] => MigrationState::Modified {
                    installed_on: r.installed_on.clone(),
                },
                Some(r) => MigrationState::Applied {
                    installed_on: r.installed_on.clone(),
                },
            };
            MigrationStatus {
                version: m.version,
                description: m.description.to_string(),
                state,
            }
        })
        .collect();
    for r in rows.iter().filter(|r| !migrator.version_exists(r.version)) {
        out.push(MigrationStatus {
            version: r.version,
            description: r.description.clone(),
            state: MigrationState::Unknown {
                installed_on: r.installed_on.clone(),
            },
        });
    }
    out.sort_by_key(|s| s.version);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rekey_batch_marks_unchanged_keys_and_recomputes_the_rest() {
        let (a, b, c) = (
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7(),
        );
        let row = |id, email: &str| (id, email.to_string(), email.to_lowercase());
        let (same, changed) = rekey_batch(&[
            row(a, "Ada@X.org"),
            row(b, "STRAßE@x.de"),
            row(c, "ﬁ@x.org"),
        ]);
        assert_eq!(same, [a]);
        assert_eq!(
            changed,
            [(b, "strasse@x.de".to_string()), (c, "fi@x.org".to_string())]
        );
    }

    #[test]
    fn both_back_ends_ship_the_same_migrations() {
        let versions = |m: &Migrator| m.iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(versions(&SQLITE), versions(&POSTGRES));
        assert!(
            !SQLITE
                .iter()
                .next()
                .expect("one migration at least")
                .sql
                .as_str()
                .is_empty()
        );
    }

    #[test]
    fn status_tells_applied_pending_modified_and_unknown_apart() {
        let first = SQLITE.iter().next().unwrap();
        let row = |version, checksum: Vec<u8>, success| AppliedRow {
            version,
            description: "x".into(),
            installed_on: "2026-11-23 06:00:00".into(),
            success,
            checksum,
        };
        let s = status(&SQLITE, &[]);
        assert_eq!(s[0].state, MigrationState::Pending);
        let s = status(
            &SQLITE,
            &[row(first.version, first.checksum.to_vec(), true)],
        );
        assert!(matches!(s[0].state, MigrationState::Applied { .. }));
        let s = status(&SQLITE, &[row(first.version, vec![1, 2, 3], true)]);
        assert!(matches!(s[0].state, MigrationState::Modified { .. }));
        let s = status(
            &SQLITE,
            &[row(first.version, first.checksum.to_vec(), false)],
        );
        assert_eq!(s[0].state, MigrationState::Failed);
        let s = status(&SQLITE, &[row(99_999, vec![], true)]);
        assert!(matches!(
            s.last().unwrap().state,
            MigrationState::Unknown { .. }
        ));
    }
}
