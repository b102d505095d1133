//! What PostgreSQL's SQLSTATE codes say about the database's state.

use crate::db::Class;

/// A server that shuts down ends the sessions of in-flight queries with
/// `57P01`, and one starting up refuses with `57P03`. 08: connection
/// exception; 53: insufficient resources (53100 is disk full); 57P0x:
/// shutdown, crash, starting up; 57014: query cancelled; 25006: a read-only
/// (standby) server.
pub fn classify(code: &str) -> Option<Class> {
    match code {
        "53100" => Some(Class::CannotWrite("the database server's disk is full")),
        "25006" => Some(Class::CannotWrite("the database server is read-only")),
        _ if code.starts_with("08") || code.starts_with("53") => Some(Class::Unavailable),
        "57P01" | "57P02" | "57P03" | "57014" => Some(Class::Unavailable),
        _ => None,
    }
}
