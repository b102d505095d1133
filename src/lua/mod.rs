//! Sandboxed Lua scripting: `/lua` and `/lua/{name}`.
//!
//! - [`scripts`] reads the scripts directory once, at start-up.
//! - [`sandbox`] is one interpreter state: the safe library subset, a fresh
//!   environment per run, and the memory and time limits.
//! - [`pool`] runs sandboxes on dedicated worker threads fed by a bounded
//!   queue, so Lua never blocks the async runtime and overload is a quick
//!   `503`, not an unbounded backlog.
//!
//! [`LuaEngine`] is what the rest of the service holds: cheap to clone,
//! `start`ed by `App::build`.

mod json;
pub mod pool;
mod sandbox;
mod scripts;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};

use crate::config::Config;

pub use sandbox::Limits;
pub use scripts::{ScriptName, Scripts};

/// Why the Lua engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the scripts directory {}: {source}", dir.display())]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read Lua script {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    /// `message` is Lua's, e.g. `broken.lua:3: '=' expected near 'x'`.
    #[error("Lua script {file} does not compile: {message}")]
    Compile { file: String, message: String },
    #[error("cannot start the Lua interpreter: {0}")]
    Interpreter(String),
}

/// What a run executes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The built-in chunk of `GET /lua`.
    Hello,
    Script(ScriptName),
}

impl Target {
    /// The chunk of `GET /lua`.
    pub const HELLO_CHUNK: &str = "response 'hello world'";

    /// How the target is named in messages, logs and metrics.
    pub fn display_name(&self) -> String {
        match self {
            Target::Hello => "(inline)".into(),
            Target::Script(name) => name.file_name(),
        }
    }
}

/// The HTTP request as the script sees it, before it is shaped into the
/// `request` table (first query value wins, repeated headers joined).
#[derive(Debug, Clone, Default)]
pub struct LuaRequest {
    pub method: String,
    /// The full path, e.g. `/lua/echo`.
    pub path: String,
    /// Decoded query pairs in order, repeats included.
    pub query: Vec<(String, String)>,
    /// Header names (lower case) and raw values in order, repeats included.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// What a script answered with `response(body, status, headers)`.
#[derive(Debug, Clone)]
pub struct LuaResponse {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

/// Why a run gave no response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunError {
    /// Every worker is busy and the queue is full.
    #[error("all Lua workers are busy; retry shortly")]
    Busy,
    #[error("script {script} ran longer than its time limit of {limit:?}")]
    TimeLimit { script: String, limit: Duration },
    #[error("script {script} used more than its memory limit of {}", human_size(*limit))]
    MemoryLimit { script: String, limit: usize },
    /// `message` names the script file and line, e.g. `echo.lua:3: boom`.
    #[error("script {script} failed: {message}")]
    Script { script: String, message: String },
    #[error("script {script} finished without calling response()")]
    NoResponse { script: String },
    /// A failure of skiff itself (logged where it happened).
    #[error("script {script} could not run because of an internal error")]
    Internal { script: String },
}

impl RunError {
    /// The `kind` label of the error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            RunError::Busy => "busy",
            RunError::TimeLimit { .. } => "time",
            RunError::MemoryLimit { .. } => "memory",
            RunError::Script { .. } => "script",
            RunError::NoResponse { .. } => "no_response",
            RunError::Internal { .. } => "internal",
        }
    }

    /// The `limit` label of the limit-hit metric, for limit hits.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            RunError::TimeLimit { .. } => Some("time"),
            RunError::MemoryLimit { .. } => Some("memory"),
            _ => None,
        }
    }
}

fn human_size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    match bytes {
        b if b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} bytes"),
    }
}

/// The scripts and the worker pool that runs them. Cheap to clone; the
/// workers stop when the last clone is dropped.
#[derive(Clone)]
pub struct LuaEngine {
    scripts: Arc<Scripts>,
    pool: Arc<pool::Pool>,
}

impl LuaEngine {
    /// Reads and compiles the scripts and starts the workers. A script that
    /// does not compile stops start-up, naming its file and line.
    pub fn start(config: &Config) -> Result<Self, LoadError> {
        let scripts = Scripts::load(&config.scripts_dir, config.scripts_dir_explicit)?;
        let limits = Limits {
            memory: config.lua_memory,
            time: config.lua_timeout,
        };
        let scripts = Arc::new(scripts);
        let size = pool::PoolSize::new(config.request_timeout, config.lua_timeout);
        let pool = pool::Pool::start(scripts.clone(), limits, size)?;
        Ok(Self {
            scripts,
            pool: Arc::new(pool),
        })
    }

    pub fn has_script(&self, name: &ScriptName) -> bool {
        self.scripts.contains(name)
    }

    /// Runs `target` on a worker and waits for its response, without
    /// blocking the async runtime.
    pub async fn run(&self, target: Target, request: LuaRequest) -> Result<LuaResponse, RunError> {
        self.pool.run(target, request).await
    }

    /// How many worker threads run scripts, and how many jobs may wait.
    pub fn pool_size(&self) -> pool::PoolSize {
        self.pool.size()
    }

    /// How many workers are running a script right now.
    pub fn busy(&self) -> usize {
        self.pool.busy()
    }
}
