//! What the service does when the ground moves: SQLite storage faults,
//! PostgreSQL going away, and `kill -9` in the middle of writes.

mod crash;
mod durability;
mod postgres;
mod sqlite;
