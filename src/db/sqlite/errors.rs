//! What SQLite's result codes say about the database's state. The primary
//! result code is the low byte of the extended one.

use crate::db::Class;

const BUSY: i32 = 5;
const LOCKED: i32 = 6;
const READONLY: i32 = 8;
const FULL: i32 = 13;

/// `SQLITE_FULL` when the disk is full, `SQLITE_READONLY` when the file or
/// its directory cannot be written; BUSY and LOCKED when another process
/// holds the lock past the busy timeout.
pub fn classify(code: i32) -> Option<Class> {
    match code & 0xff {
        FULL => Some(Class::CannotWrite("the disk holding the database is full")),
        READONLY => Some(Class::CannotWrite("the database file is read-only")),
        BUSY | LOCKED => Some(Class::Unavailable),
        _ => None,
    }
}

/// `SQLITE_BUSY` or one of its extended codes.
pub fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c & 0xff == BUSY)
}
