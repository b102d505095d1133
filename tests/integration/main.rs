//! skiff's integration tests: one binary, which starts the real app (in
//! process, or the built `skiff` binary as a child) on a random loopback
//! port and talks HTTP to it.
//!
//! A route's tests are in the module named for it (`/time` in `time`,
//! `/users` in `users`, `/lua` in `lua`); what all routes share is in
//! `http`, `limits`, `slow_clients`, `hostile_input` and `security`; the
//! command line in `cli`; storage faults and crashes in `reliability`.
//! `support` is the harness. Run one module with
//! `cargo nextest run -E 'test(/^time::/)'`.
//!
//! The users tests run on SQLite and, under `scripts/with-postgres`, on
//! PostgreSQL too (`support::backends`).

#[macro_use]
mod support;

mod cli;
#[cfg(feature = "docs")]
mod docs;
mod health;
mod hello;
mod hostile_input;
mod http;
#[cfg(feature = "ip")]
mod ip;
mod limits;
#[cfg(feature = "lua")]
mod lua;
mod metrics;
mod openapi;
mod ops;
#[cfg(feature = "users")]
mod reliability;
#[cfg(feature = "users")]
mod security;
#[cfg(feature = "users")]
mod slow_clients;
mod time;
#[cfg(feature = "users")]
mod users;
