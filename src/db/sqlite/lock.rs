//! One SQLite file, one server: the lock a serving process holds.
//!
//! The read path and its cache rely on this process's writer being the only
//! one (see [`super::cache`]), so a second `skiff serve` on the same file
//! must not start. The serving process holds an exclusive advisory lock
//! (`flock`, through [`std::fs::File::try_lock`]) on `FILE.serve-lock`
//! beside the database: the kernel drops it when the process ends however
//! it ends (`kill -9` included), and it is independent of the `fcntl` locks
//! SQLite takes on the database file itself, so `skiff migrate` and `skiff
//! db status|schema` keep working beside a server. A file of its own rather
//! than the database file: SQLite drops all of a process's `fcntl` locks on
//! a file when any descriptor of it is closed, so skiff keeps no extra
//! descriptor of the database open.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::db::DbError;

/// Held while serving; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
}

/// What the lock file's name adds to the database file's.
pub const SUFFIX: &str = ".serve-lock";

/// `FILE.serve-lock` for the database `FILE`.
pub fn path_for(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(SUFFIX);
    PathBuf::from(name)
}

impl ServeLock {
    /// Takes the lock of `database`, or says which file another server
    /// holds. The lock file is created when missing; one that exists but
    /// cannot be written (a server run as another user made it) is locked
    /// through a read-only descriptor, which `flock` allows.
    pub fn acquire(database: &Path) -> Result<ServeLock, DbError> {
        let path = path_for(database);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .or_else(|e| match e.kind() {
                ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
                    File::open(&path).map_err(|_| e)
                }
                _ => Err(e),
            })
            .map_err(|e| {
                DbError::Unavailable(format!(
                    "cannot open {}, the lock that keeps a second server off the SQLite \
                     database {}: {e}",
                    path.display(),
                    database.display()
                ))
            })?;
        match file.try_lock() {
            Ok(()) => Ok(ServeLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(DbError::InUse(format!(
                "the SQLite database {} is already served by another skiff process (it holds \
                 {}); a SQLite database takes one server at a time, so run replicas on \
                 PostgreSQL (DATABASE_URL=postgres://…)",
                database.display(),
                path.display()
            ))),
            Err(TryLockError::Error(e)) => Err(DbError::Unavailable(format!(
                "cannot lock {} for the SQLite database {}: {e}",
                path.display(),
                database.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_database_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("users.db");
        let first = ServeLock::acquire(&db).unwrap();
        // flock locks belong to the open file description, so a second
        // open in the same process conflicts as another process's would.
        let refused = ServeLock::acquire(&db).unwrap_err();
        let message = refused.to_string();
        assert!(matches!(refused, DbError::InUse(_)), "{message}");
        assert!(message.contains(&db.display().to_string()), "{message}");
        assert!(message.contains("PostgreSQL"), "{message}");
        drop(first);
        ServeLock::acquire(&db).unwrap();
    }

    #[test]
    fn another_database_in_the_same_directory_is_not_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _a = ServeLock::acquire(&dir.path().join("a.db")).unwrap();
        ServeLock::acquire(&dir.path().join("b.db")).unwrap();
    }
}
