//! skiff: a small, production-grade web API in one static binary.
//!
//! `main.rs` calls [`cli::run`] (and writes the last log lines). The service
//! itself is an [`app::App`] built from a [`config::Config`]; its routes live
//! in [`http`], one file per resource. The README's code map lists every
//! module.

pub mod app;
pub mod build_info;
pub mod cli;
pub mod config;
pub mod error;
pub mod http;
pub mod server;
pub mod state;
pub mod telemetry;

#[cfg(feature = "users")]
pub mod db;
#[cfg(feature = "lua")]
pub mod lua;
#[cfg(feature = "ip")]
pub mod public_ip;

pub use app::{App, ServeOptions};
pub use config::Config;
pub use state::AppState;
