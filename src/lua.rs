//! Sandboxed Lua scripting: `/lua` and `/lua/{name}`.
//!
//! - [`scripts`] reads the scripts directory, at start-up and on reload
//!   (`SIGHUP`, or a change seen by the opt-in watch).
//! - [`sandbox`] is one interpreter state: the safe library subset, a fresh
//!   environment per run, and the memory and time limits.
//! - [`inline`] runs a script first on the request's own thread, within a
//!   short slice of its limits: the normal case, with no thread hop.
//! - [`pool`] runs sandboxes on dedicated worker threads fed by a bounded
//!   queue: where a run that outgrows its slice starts again with the
//!   whole limits, so Lua never holds the async runtime for more than a
//!   slice and overload is a quick `503`, not an unbounded backlog.
//!
//! [`LuaEngine`] is what the rest of the service holds: cheap to clone,
//! `start`ed by `App::build`.

mod clock;
mod errors;
mod inline;
mod json;
mod patterns;
pub mod pool;
mod sandbox;
mod scripts;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};

use crate::config::Config;
use crate::telemetry::LUA_RELOADS;

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
    /// A reload removed the script between the route's check and the run.
    #[error("no script named {script}")]
    Missing { script: String },
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
            RunError::Missing { .. } => "missing",
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

/// The script set being served, with a generation number that each reload
/// bumps: workers compare it before each job, and rebuild their state from
/// the new set when it changed.
pub struct Current {
    generation: AtomicU64,
    set: RwLock<(u64, Arc<Scripts>)>,
}

impl Current {
    fn new(scripts: Scripts) -> Self {
        Self {
            generation: AtomicU64::new(0),
            set: RwLock::new((0, Arc::new(scripts))),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn get(&self) -> (u64, Arc<Scripts>) {
        self.set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, scripts: Scripts) {
        let mut set = self.set.write().unwrap_or_else(PoisonError::into_inner);
        let generation = set.0 + 1;
        *set = (generation, Arc::new(scripts));
        self.generation.store(generation, Ordering::Release);
    }
}

/// Where the scripts come from, for reloads.
struct Source {
    dir: PathBuf,
    explicit: bool,
    limits: Limits,
    /// One reload at a time.
    reloading: Mutex<()>,
    /// The directory as it was just before the scripts were read at start:
    /// the watch's first reference, so no change after it is missed.
    at_start: Fingerprint,
}

/// The scripts and the worker pool that runs them. Cheap to clone; the
/// workers stop when the last clone is dropped.
#[derive(Clone)]
pub struct LuaEngine {
    current: Arc<Current>,
    inline: Arc<inline::Inline>,
    pool: Arc<pool::Pool>,
    source: Arc<Source>,
}

impl LuaEngine {
    /// Reads and compiles the scripts and starts the workers. A script that
    /// does not compile stops start-up, naming its file and line.
    pub fn start(config: &Config) -> Result<Self, LoadError> {
        let at_start = fingerprint(&config.scripts_dir);
        let scripts = Scripts::load(&config.scripts_dir, config.scripts_dir_explicit)?;
        let limits = Limits {
            memory: config.lua_memory,
            time: config.lua_timeout,
        };
        let current = Arc::new(Current::new(scripts));
        let size = pool::PoolSize::new(config.request_timeout, config.lua_timeout);
        let pool = pool::Pool::start(current.clone(), limits, size)?;
        for outcome in ["ok", "error"] {
            metrics::counter!(LUA_RELOADS, "outcome" => outcome).absolute(0);
        }
        Ok(Self {
            inline: Arc::new(inline::Inline::new(current.clone(), limits)),
            current,
            pool: Arc::new(pool),
            source: Arc::new(Source {
                dir: config.scripts_dir.clone(),
                explicit: config.scripts_dir_explicit,
                limits,
                reloading: Mutex::new(()),
                at_start,
            }),
        })
    }

    pub fn has_script(&self, name: &ScriptName) -> bool {
        self.current.get().1.contains(name)
    }

    /// Reads and compiles the scripts directory again and, if every script
    /// compiles, swaps the new set in at once; otherwise the running set
    /// stays, and the error names the file and line. Blocking: call it off
    /// the async runtime.
    pub fn reload(&self) -> Result<usize, LoadError> {
        let _one_at_a_time = self
            .source
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = Scripts::load(&self.source.dir, self.source.explicit).and_then(|scripts| {
            // Compiles every script, as each worker will.
            sandbox::Sandbox::new(&scripts, self.source.limits)?;
            Ok(scripts)
        });
        match result {
            Ok(scripts) => {
                let count = scripts.len();
                self.current.replace(scripts);
                metrics::counter!(LUA_RELOADS, "outcome" => "ok").increment(1);
                tracing::info!(count, "Lua scripts reloaded");
                Ok(count)
            }
            Err(e) => {
                metrics::counter!(LUA_RELOADS, "outcome" => "error").increment(1);
                tracing::error!(error = %e, "Lua scripts not reloaded: the running set stays");
                Err(e)
            }
        }
    }

    /// Reloads on `SIGHUP` and, with `watch`, when the scripts directory
    /// changes, until the returned guard is dropped. The signal handler is
    /// in place when this returns.
    pub fn spawn_reloaders(&self, watch: bool) -> Reloaders {
        use tokio::signal::unix::{SignalKind, signal};
        let mut tasks = Vec::new();
        match signal(SignalKind::hangup()) {
            Ok(mut hangups) => {
                let engine = self.clone();
                tasks.push(tokio::spawn(async move {
                    while hangups.recv().await.is_some() {
                        tracing::info!("SIGHUP received: reloading the Lua scripts");
                        engine.reload_off_runtime().await;
                    }
                }));
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP: no script reloads"),
        }
        if watch {
            let engine = self.clone();
            tasks.push(tokio::spawn(async move { engine.watch().await }));
        }
        Reloaders(tasks)
    }

    async fn reload_off_runtime(&self) {
        let engine = self.clone();
        let _ = tokio::task::spawn_blocking(move || engine.reload()).await;
    }

    /// Polls the directory every second: the names, sizes, times and inodes
    /// of its entries, links followed. Polling needs no dependency, works on
    /// every file system, and sees a Kubernetes ConfigMap update (a symlink
    /// swap, which inotify reports only on the hidden `..data` link).
    async fn watch(&self) {
        let dir = self.source.dir.clone();
        let listing = move || fingerprint(&dir);
        let mut last = self.source.at_start.clone();
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = tokio::task::spawn_blocking(listing.clone())
                .await
                .unwrap_or_default();
            if now != last {
                tracing::info!("the scripts directory changed: reloading the Lua scripts");
                self.reload_off_runtime().await;
                last = now;
            }
        }
    }

    /// Runs `target` and returns its response: on this thread if it ends
    /// within a slice, otherwise on a worker, without blocking the async
    /// runtime.
    pub async fn run(&self, target: Target, request: LuaRequest) -> Result<LuaResponse, RunError> {
        if let inline::Attempt::Done(result) = self.inline.attempt(&target, &request) {
            return result;
        }
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

/// How often the watch looks at the scripts directory.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The reload tasks; dropping this stops them.
pub struct Reloaders(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Reloaders {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// What the watch compares: each entry's name, device, inode, modification
/// time and size, following links.
type Fingerprint = Vec<(std::ffi::OsString, u64, u64, i64, i64, u64)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let mut entries: Fingerprint = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.path().metadata() {
            Ok(m) => (
                entry.file_name(),
                m.dev(),
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
                m.len(),
            ),
            Err(_) => (entry.file_name(), 0, 0, 0, 0, 0),
        })
        .collect();
    entries.sort();
    entries
}
