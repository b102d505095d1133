//! One interpreter state and how a script runs in it.
//!
//! The state holds only the safe subset of the standard library (the base
//! functions, `string`, `table`, `math`, `utf8`, `coroutine`, and `os` for
//! its clock functions); `sandbox.lua` trims it further and builds a fresh
//! environment for each run. Scripts are compiled once, when the state is
//! created; a run points the script's `_ENV` at its own environment and
//! unhooks it afterwards, so nothing a run writes survives it.
//!
//! Limits: the memory limit is the state's allocation ceiling, set for each
//! run to what the state uses at rest plus the budget; what the host copies
//! out of a run (response body and headers, `json.encode`'s text, `gsub`'s
//! result) is charged to what is left of it. The time limit is a wall-clock
//! deadline checked by a hook that fires every few VM instructions and on
//! every function call, C functions included (so a C library loop that
//! calls a metamethod is seen too); once the deadline has passed it raises
//! an error each time it fires, so that `pcall` cannot swallow it (see
//! `sandbox.lua`). The C functions that could loop without calling
//! anything are bounded or replaced: the pattern matcher by a port with a
//! step budget (`patterns.rs`), `table.sort` by one that compares through
//! a Lua function, `load` by a size cap, and others in `sandbox.lua`.
//!
//! The hook is a plain C hook set through `mlua::ffi`, not mlua's hook API:
//! when an mlua hook callback fails, mlua truncates the stack of the
//! running Lua function before raising, which runs that function's pending
//! `__close` handlers while hooks are off, out of reach of the limit.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use mlua::{Function, Lua, LuaOptions, LuaString, StdLib, Table, Value, chunk::ChunkMode, ffi};

use super::clock::{Clock, time_limit_hook};
use super::errors::{error_message, first_line, is_memory_error, located};
use super::json;
use super::{LoadError, LuaRequest, LuaResponse, RunError, Scripts, Target};

/// How often (in VM instructions) the hook looks at the clock. Lua already
/// runs its hook check on every instruction once a count hook is set; this
/// is how often the check ends in a look at the clock. Small, because one
/// instruction can cost milliseconds (comparing or joining strings of
/// megabytes).
const HOOK_EVERY: i32 = 128;

/// The largest chunk `load` compiles, in bytes. Compiling is one C call
/// that no hook sees, and some sources compile in quadratic time: a chain
/// of `or` walks the jump list at each term (12,000 terms, 60 KB, took
/// 0.4 s on a loaded machine; 3,000 terms 20 ms). 16 KiB keeps the worst
/// case to a few milliseconds.
pub(super) const MAX_LOAD: usize = 16 * 1024;

/// What one response header costs the run beyond its name and value.
const HEADER_OVERHEAD: usize = 64;

/// Error details shown to clients are cut to this many characters.
const MAX_DETAIL: usize = 1024;

/// Log lines written by scripts are cut to this many bytes.
const MAX_LOG_LINE: usize = 8 * 1024;

/// What one run may write to the log, in bytes: a loop of `log` calls
/// would otherwise write hundreds of megabytes within its time limit, and
/// a blocked stdout would hold the worker where no hook reaches it.
const MAX_LOG_PER_RUN: usize = 64 * 1024;

/// The headers a script may not set: the server owns the message framing.
const FRAMING_HEADERS: [HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];

/// The limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes a run may allocate beyond what the state uses at rest.
    pub memory: usize,
    /// Wall-clock time a run may take.
    pub time: Duration,
}

/// What one run may use: its limits, or an inline attempt's smaller share
/// of them (see `inline.rs`). The memory limit is the same for both, so
/// that no allocation fails in an attempt that would succeed on a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub time: Duration,
    /// The largest chunk `load` compiles before the run counts as out of
    /// time (a chunk over [`MAX_LOAD`] is refused whatever this says).
    pub compile: usize,
    /// Bytes the run may hold (beyond the state at rest) before it counts
    /// as out of time, as the hook sees it: checked when the hook fires,
    /// so an allocation never fails for it.
    pub hold: Option<usize>,
}

impl Allowance {
    /// All of `limits`.
    pub fn whole(limits: Limits) -> Self {
        Self {
            time: limits.time,
            compile: MAX_LOAD,
            hold: None,
        }
    }
}

/// What the host functions share with the sandbox during a run.
#[derive(Default)]
struct RunState {
    /// The display name of the running script, for its log lines.
    script: RefCell<String>,
    /// Bytes this run has written to the log.
    logged: Cell<usize>,
    response: RefCell<Option<LuaResponse>>,
    /// The state's allocation ceiling during the run (0 between runs).
    ceiling: Cell<usize>,
    /// The run's `Allowance::compile`.
    compile: Cell<usize>,
    /// Whether the run was stopped for a chunk over that.
    compile_refused: Cell<bool>,
    /// While set, the run's log lines are kept here instead of written:
    /// an inline attempt that runs out of its slice is run again on a
    /// worker, and only the run that answers may be seen in the log.
    held_log: RefCell<Option<Vec<LogLine>>>,
}

/// A log line a run wrote, kept until its run is known to count.
pub enum LogLine {
    Text(String),
    /// The run reached its log allowance: the rest of its lines dropped.
    Cut,
}

/// Writes one of a run's log lines.
fn write_log(script: &str, line: LogLine) {
    match line {
        LogLine::Text(text) => tracing::info!(target: "skiff::lua", script, "{text}"),
        LogLine::Cut => tracing::warn!(
            target: "skiff::lua",
            script,
            "this run wrote {MAX_LOG_PER_RUN} bytes to the log: the rest of its log lines are dropped"
        ),
    }
}

impl RunState {
    /// How many bytes the run may still take: what host copies are
    /// charged against.
    fn budget(&self, lua: &Lua, limits: Limits) -> usize {
        match self.ceiling.get() {
            0 => limits.memory,
            ceiling => ceiling.saturating_sub(lua.used_memory()),
        }
    }
}

/// One Lua state with the scripts compiled in it.
pub struct Sandbox {
    lua: Lua,
    /// `sandbox.lua`'s `new_env(request) -> env, string_metatable`.
    new_env: Function,
    chunks: HashMap<Target, Function>,
    run: Rc<RunState>,
    /// What a script's `_ENV` and the string metatable point to between
    /// runs, so that no run's tables stay reachable from the state.
    idle_env: Table,
    idle_string_mt: Table,
    limits: Limits,
    /// What the state held after its last full collection.
    at_rest: Cell<usize>,
}

impl Sandbox {
    pub fn new(scripts: &Scripts, limits: Limits) -> Result<Self, LoadError> {
        let interpreter = |e: mlua::Error| LoadError::Interpreter(e.to_string());
        let libs = StdLib::STRING
            | StdLib::TABLE
            | StdLib::MATH
            | StdLib::UTF8
            | StdLib::COROUTINE
            | StdLib::OS;
        let lua = Lua::new_with(libs, LuaOptions::new()).map_err(interpreter)?;
        let run = Rc::new(RunState::default());

        let host = host_functions(&lua, &run, limits).map_err(interpreter)?;
        let new_env: Function = lua
            .load(include_str!("sandbox.lua"))
            .set_name("=sandbox")
            .set_mode(ChunkMode::Text)
            .call(host)
            .map_err(interpreter)?;

        let mut chunks = HashMap::new();
        let compile = |file: String, source: &[u8]| {
            lua.load(source)
                // `=` makes the chunk name the file name as is: messages say
                // `echo.lua:3:`, never a host path.
                .set_name(format!("={file}"))
                .set_mode(ChunkMode::Text)
                .into_function()
                .map_err(|e| LoadError::Compile {
                    file,
                    message: first_line(&error_message(&e)).to_owned(),
                })
        };
        chunks.insert(
            Target::Hello,
            compile(Target::Hello.display_name(), Target::HELLO_CHUNK.as_bytes())?,
        );
        for (name, source) in scripts.iter() {
            let target = Target::Script(name.clone());
            chunks.insert(target, compile(name.file_name(), source)?);
        }
        // `point` sets a chunk's environment as its first upvalue, which is
        // `_ENV` in every chunk `load` returns.
        for chunk in chunks.values() {
            // SAFETY: reads the name of the chunk's first upvalue (at 1).
            let is_env = unsafe {
                lua.exec_raw::<bool>(chunk, |state| {
                    let name = ffi::lua_getupvalue(state, 1, 1);
                    let is_env = !name.is_null() && std::ffi::CStr::from_ptr(name) == c"_ENV";
                    ffi::lua_settop(state, 0);
                    ffi::lua_pushboolean(state, is_env.into());
                })
            }
            .map_err(interpreter)?;
            if !is_env {
                return Err(LoadError::Interpreter(
                    "a compiled chunk's first upvalue is not _ENV".into(),
                ));
            }
        }

        let idle_env = lua.create_table().map_err(interpreter)?;
        let idle_string_mt = lua
            .create_table_from([(
                "__index",
                lua.globals().get::<Table>("string").map_err(interpreter)?,
            )])
            .map_err(interpreter)?;
        lua.set_type_metatable::<LuaString>(Some(idle_string_mt.clone()));
        lua.gc_collect().map_err(interpreter)?;
        let at_rest = Cell::new(lua.used_memory());

        Ok(Self {
            lua,
            new_env,
            chunks,
            run,
            idle_env,
            idle_string_mt,
            limits,
            at_rest,
        })
    }

    /// Runs `target` with `request` and returns its response.
    pub fn run(&mut self, target: &Target, request: &LuaRequest) -> Result<LuaResponse, RunError> {
        self.run_within(target, request, Allowance::whole(self.limits))
    }

    /// Runs `target` within `allowance` instead of the whole limits: its
    /// limit errors then name the allowance's figures.
    pub fn run_within(
        &mut self,
        target: &Target,
        request: &LuaRequest,
        allowance: Allowance,
    ) -> Result<LuaResponse, RunError> {
        let script = target.display_name();
        let Some(chunk) = self.chunks.get(target).cloned() else {
            // A reload removed it after the route looked.
            return Err(RunError::Missing { script });
        };
        *self.run.script.borrow_mut() = script.clone();
        self.run.response.take();
        self.run.logged.set(0);

        self.run.compile.set(allowance.compile);
        self.run.compile_refused.set(false);
        if let Err(e) = self.prepare(&chunk, request) {
            self.finish(&chunk);
            tracing::error!(script, error = %e, "cannot prepare a Lua run");
            return Err(RunError::Internal { script });
        }
        let hold = allowance.hold.map(|bytes| self.lua.used_memory() + bytes);
        Clock::start(allowance.time, hold);
        let result = chunk.call::<()>(());
        Clock::stop();
        self.finish(&chunk);
        let response = self.run.response.take();

        match result {
            Ok(()) => response.ok_or(RunError::NoResponse { script }),
            Err(_) if Clock::expired() => Err(RunError::TimeLimit {
                script,
                limit: allowance.time,
            }),
            Err(e) if is_memory_error(&e) => Err(RunError::MemoryLimit {
                script,
                limit: self.limits.memory,
            }),
            Err(e) => {
                let message = error_message(&e);
                tracing::debug!(script, error = %message, "Lua script failed");
                Err(RunError::Script {
                    script,
                    message: truncate(first_line(&message), MAX_DETAIL),
                })
            }
        }
    }

    /// Whether the last run was stopped for going over its allowance's
    /// `compile` or `hold` rather than its time (its error is then a
    /// time-limit one).
    pub fn outgrown(&self) -> bool {
        self.run.compile_refused.get() || Clock::over_hold()
    }

    /// From now on, keeps the runs' log lines (see [`Sandbox::take_log`])
    /// instead of writing them.
    pub fn hold_log(&self) {
        self.run.held_log.replace(Some(Vec::new()));
    }

    /// The log lines the last run wrote, and writes them from now on.
    pub fn take_log(&self) -> Vec<LogLine> {
        self.run.held_log.take().unwrap_or_default()
    }

    /// Writes what [`Sandbox::take_log`] returned, as the run would have.
    pub fn write_log(target: &Target, lines: Vec<LogLine>) {
        if lines.is_empty() {
            return;
        }
        let script = target.display_name();
        for line in lines {
            write_log(&script, line);
        }
    }

    /// Frees what the last run left behind. Call between runs.
    pub fn tidy(&self) {
        if let Err(e) = self.lua.gc_collect() {
            tracing::warn!(error = %e, "Lua garbage collection failed");
        }
        self.at_rest.set(self.lua.used_memory());
    }

    /// [`Sandbox::tidy`], if the state holds more than a 64th of the
    /// memory limit beyond what it held after its last one; otherwise the
    /// incremental collector, which runs as runs allocate, frees the
    /// garbage. A full collection walks every live object, the libraries
    /// and compiled scripts included, and costs more than a small run.
    /// What a following run may allocate is then larger by at most that
    /// 64th (its ceiling counts the garbage as used, and the collector may
    /// free it), never smaller: its host copies are charged against what
    /// it has left, garbage included, as on a tidied state.
    pub fn tidy_if_grown(&self) {
        if self.lua.used_memory() > self.at_rest.get() + self.limits.memory / 64 {
            self.tidy();
        }
    }

    /// Builds the run's environment, points the chunk and the string
    /// metatable at it, sets the memory ceiling and the time-limit hook.
    fn prepare(&self, chunk: &Function, request: &LuaRequest) -> mlua::Result<()> {
        let request = request_table(&self.lua, request)?;
        let (env, string_mt): (Table, Table) = self.new_env.call(request)?;
        self.point(chunk, &env, &string_mt, true)?;
        let ceiling = self.lua.used_memory() + self.limits.memory;
        self.lua.set_memory_limit(ceiling)?;
        self.run.ceiling.set(ceiling);
        Ok(())
    }

    /// Lifts the memory ceiling and the hook, and unhooks the run's tables
    /// from the state.
    fn finish(&self, chunk: &Function) {
        let _ = self.lua.set_memory_limit(0);
        self.run.ceiling.set(0);
        if let Err(e) = self.point(chunk, &self.idle_env, &self.idle_string_mt, false) {
            tracing::error!(error = %e, "cannot reset a Lua state after a run");
        }
    }

    /// Points `chunk`'s `_ENV` at `env` and the string metatable at
    /// `string_mt`, and sets (`hook`) or removes the time-limit hook, in
    /// one raw call. (mlua's `Function::set_environment` compiles a helper
    /// chunk on each call: with `set_type_metatable`, 7% of a small run's
    /// CPU.) The hook is on only while a script runs: with a count hook
    /// set, Lua checks it at every instruction, the sandbox's own
    /// included.
    fn point(
        &self,
        chunk: &Function,
        env: &Table,
        string_mt: &Table,
        hook: bool,
    ) -> mlua::Result<()> {
        // SAFETY: the stack holds 1: chunk, 2: env, 3: string_mt. Upvalue 1
        // of every chunk is its `_ENV` (checked in `new`); the hook is a
        // plain C function, set on the state that runs the scripts.
        unsafe {
            self.lua.exec_raw::<()>((chunk, env, string_mt), |state| {
                ffi::lua_pushliteral(state, c"");
                ffi::lua_pushvalue(state, 3);
                ffi::lua_setmetatable(state, -2);
                ffi::lua_pop(state, 1);
                ffi::lua_pushvalue(state, 2);
                ffi::lua_setupvalue(state, 1, 1);
                if hook {
                    ffi::lua_sethook(
                        state,
                        Some(time_limit_hook),
                        ffi::LUA_MASKCOUNT | ffi::LUA_MASKCALL,
                        HOOK_EVERY,
                    );
                } else {
                    ffi::lua_sethook(state, None, 0, 0);
                }
            })
        }
    }
}

/// The Rust side of the sandbox, handed to `sandbox.lua`.
fn host_functions(lua: &Lua, run: &Rc<RunState>, limits: Limits) -> mlua::Result<Table> {
    let host = lua.create_table()?;

    // No run can fill more table slots (16 bytes each) than this.
    host.set("max_elements", limits.memory / 16)?;

    host.set("max_load", MAX_LOAD)?;

    // Called by `string.rep` with the size of what it is about to build:
    // beyond an inline attempt's slice of memory, the run is out of time
    // (one call builds megabytes out of a short string).
    host.set(
        "may_hold",
        lua.create_function(|lua, bytes: f64| {
            if Clock::within_hold(|| (lua.used_memory() as f64 + bytes) as usize) {
                return Ok(());
            }
            Err(mlua::Error::runtime("time limit exceeded"))
        })?,
    )?;

    // Called by `load` with a chunk's size before it compiles it: over the
    // run's allowance, the run is out of time (compiling is one C call that
    // no hook sees, and an inline attempt must not hold its thread long).
    let state = run.clone();
    host.set(
        "may_compile",
        lua.create_function(move |_, size: usize| {
            if size <= state.compile.get() {
                return Ok(());
            }
            state.compile_refused.set(true);
            Clock::expire();
            Err(mlua::Error::runtime("time limit exceeded"))
        })?,
    )?;

    host.set(
        "expired",
        lua.create_function(|_, ()| Ok(Clock::expired()))?,
    )?;

    // Two 64-bit seeds for math.randomseed, from the operating system, in
    // one call (one system call per run).
    host.set(
        "seed",
        lua.create_function(|_, ()| {
            let mut seed = [0u8; 16];
            getrandom::fill(&mut seed).map_err(|e| {
                mlua::Error::runtime(format!("no random seed from the operating system: {e}"))
            })?;
            let (a, b) = seed.split_at(8);
            let half = |bytes: &[u8]| i64::from_ne_bytes(bytes.try_into().expect("8 bytes"));
            Ok((half(a), half(b)))
        })?,
    )?;

    let state = run.clone();
    super::patterns::install(lua, &host, move |lua: &Lua| state.budget(lua, limits))?;

    let state = run.clone();
    host.set(
        "log",
        lua.create_function(move |_, message: LuaString| {
            let bytes = message.as_bytes();
            let line = &bytes[..bytes.len().min(MAX_LOG_LINE)];
            let logged = state.logged.get();
            if logged >= MAX_LOG_PER_RUN {
                return Ok(());
            }
            state.logged.set(logged + line.len().max(1));
            let text = String::from_utf8_lossy(line).into_owned();
            let mut lines = vec![LogLine::Text(text)];
            if logged + line.len() >= MAX_LOG_PER_RUN {
                lines.push(LogLine::Cut);
            }
            match state.held_log.borrow_mut().as_mut() {
                Some(held) => held.extend(lines),
                None => {
                    let script = state.script.borrow();
                    lines.into_iter().for_each(|line| write_log(&script, line));
                }
            }
            Ok(())
        })?,
    )?;

    let state = run.clone();
    host.set(
        "response",
        lua.create_function(move |lua, (body, status, headers): (Value, Value, Value)| {
            let budget = state.budget(lua, limits);
            let response =
                parse_response(lua, body, status, headers, budget).map_err(|e| match e {
                    ResponseError::Invalid(message) => {
                        located(lua, &format!("response: {message}"))
                    }
                    ResponseError::Memory => mlua::Error::MemoryError(
                        "response: the body and headers are larger than the memory left to the run"
                            .into(),
                    ),
                })?;
            let mut slot = state.response.borrow_mut();
            if slot.is_some() {
                return Err(located(lua, "response: already called"));
            }
            *slot = Some(response);
            Ok(())
        })?,
    )?;

    // Arrays decoded from JSON carry this metatable, so that they encode as
    // arrays even when empty. `__metatable` hides it: scripts can neither
    // read nor replace it, so it cannot carry anything between runs.
    let array_mt = lua.create_table()?;
    array_mt.raw_set("__metatable", "json.array")?;

    let mt = array_mt.clone();
    let state = run.clone();
    host.set(
        "json_encode",
        lua.create_function(move |lua, value: Value| {
            // The text is copied into Lua afterwards: half the budget each.
            let budget = state.budget(lua, limits) / 2;
            let text = json::encode(value, &mt, budget).map_err(|e| match e {
                json::EncodeError::TooLarge(_) => mlua::Error::MemoryError(format!(
                    "json.encode: {e} (what is left of the memory limit)"
                )),
                e => located(lua, &format!("json.encode: {e}")),
            })?;
            lua.create_string(text)
        })?,
    )?;

    let mt = array_mt;
    host.set(
        "json_decode",
        lua.create_function(move |lua, text: Value| {
            let Value::String(text) = text else {
                let kind = text.type_name();
                return Err(located(
                    lua,
                    &format!("json.decode: expected a string, got {kind}"),
                ));
            };
            json::decode(lua, &text.as_bytes(), &mt).map_err(|e| match e {
                json::DecodeError::Invalid(message) => {
                    located(lua, &format!("json.decode: {message}"))
                }
                json::DecodeError::Lua(e) => e,
            })
        })?,
    )?;
    host.set("json_null", Value::NULL)?;
    Ok(host)
}

/// The `request` table: first query value wins, repeated headers are joined
/// with `, ` (RFC 9110 §5.3).
fn request_table(lua: &Lua, request: &LuaRequest) -> mlua::Result<Table> {
    let query = lua.create_table()?;
    for (name, value) in &request.query {
        if query.raw_get::<Value>(name.as_str())?.is_nil() {
            query.raw_set(name.as_str(), value.as_str())?;
        }
    }
    let mut joined: Vec<(&str, Vec<u8>)> = Vec::new();
    for (name, value) in &request.headers {
        match joined.iter_mut().find(|(n, _)| n == name) {
            Some((_, all)) => {
                all.extend_from_slice(b", ");
                all.extend_from_slice(value);
            }
            None => joined.push((name, value.clone())),
        }
    }
    let headers = lua.create_table()?;
    for (name, value) in joined {
        headers.raw_set(name, lua.create_string(value)?)?;
    }
    let table = lua.create_table()?;
    table.raw_set("method", request.method.as_str())?;
    table.raw_set("path", request.path.as_str())?;
    table.raw_set("query", query)?;
    table.raw_set("headers", headers)?;
    table.raw_set("body", lua.create_string(&request.body)?)?;
    Ok(table)
}

/// Why `response(...)` was refused.
enum ResponseError {
    Invalid(String),
    /// Copying it out would take more than the run has left.
    Memory,
}

impl From<String> for ResponseError {
    fn from(message: String) -> Self {
        ResponseError::Invalid(message)
    }
}

impl From<&str> for ResponseError {
    fn from(message: &str) -> Self {
        ResponseError::Invalid(message.to_owned())
    }
}

/// Counts the bytes copied out of the run against what it has left.
struct Charge(usize);

impl Charge {
    fn take(&mut self, bytes: usize) -> Result<(), ResponseError> {
        self.0 = self.0.checked_sub(bytes).ok_or(ResponseError::Memory)?;
        Ok(())
    }
}

/// Checks the arguments of `response(body [, status [, headers]])` and
/// copies them out, charging each copy to `budget` before it is made.
fn parse_response(
    lua: &Lua,
    body: Value,
    status: Value,
    headers: Value,
    budget: usize,
) -> Result<LuaResponse, ResponseError> {
    let mut charge = Charge(budget);
    let body = match body {
        Value::Nil => Vec::new(),
        other => {
            let text = text_string(lua, other).map_err(|kind| {
                format!(
                    "the body must be a string, not a {kind} (json.encode makes one from a table)"
                )
            })?;
            charge.take(text.as_bytes().len())?;
            text.as_bytes().to_vec()
        }
    };
    let status = match status {
        Value::Nil => 200,
        Value::Integer(n) => n,
        Value::Number(n) if n.fract() == 0.0 => n as i64,
        _ => i64::MIN,
    };
    let status = u16::try_from(status)
        .ok()
        .filter(|s| (200..=599).contains(s))
        .ok_or("the status must be an integer from 200 to 599")?;

    let mut out = Vec::new();
    match headers {
        Value::Nil => {}
        Value::Table(table) => {
            for pair in table.pairs::<Value, Value>() {
                let (name, value) = pair.map_err(|e| e.to_string())?;
                add_header(lua, &mut out, name, value, &mut charge)?;
            }
        }
        other => {
            return Err(format!("the headers must be a table, not a {}", other.type_name()).into());
        }
    }
    // Table order is arbitrary: sort for a stable answer (a repeated
    // header's values keep their order).
    out.sort_by(|a: &(HeaderName, HeaderValue), b| a.0.as_str().cmp(b.0.as_str()));
    if !out.iter().any(|(name, _)| name == header::CONTENT_TYPE) {
        out.push((
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ));
    }
    debug_assert!(StatusCode::from_u16(status).is_ok());
    Ok(LuaResponse {
        status,
        headers: out,
        body,
    })
}

/// One header of the response's header table: a string (or number) value,
/// or a list of them for a repeated header.
fn add_header(
    lua: &Lua,
    out: &mut Vec<(HeaderName, HeaderValue)>,
    name: Value,
    value: Value,
    charge: &mut Charge,
) -> Result<(), ResponseError> {
    let Value::String(name) = name else {
        return Err(format!("header names must be strings, not {}", name.type_name()).into());
    };
    let name = HeaderName::from_bytes(&name.as_bytes())
        .map_err(|_| format!("invalid header name {:?}", name.to_string_lossy()))?;
    if FRAMING_HEADERS.contains(&name) {
        return Err(format!("the {name} header is set by the server").into());
    }
    let mut add = |value: Value| -> Result<(), ResponseError> {
        let text = text_string(lua, value)
            .map_err(|kind| format!("the value of header {name} must be a string, not a {kind}"))?;
        let text = text.as_bytes();
        charge.take(HEADER_OVERHEAD + name.as_str().len() + text.len())?;
        let value = HeaderValue::from_bytes(&text)
            .map_err(|_| format!("invalid value for header {name}"))?;
        out.push((name.clone(), value));
        Ok(())
    };
    match value {
        // One at a time: each is charged before the next is looked at.
        Value::Table(list) => {
            for value in list.sequence_values::<Value>() {
                add(value.map_err(|e| e.to_string())?)?;
            }
            Ok(())
        }
        single => add(single),
    }
}

/// A string, or a number as Lua writes it; for any other value, its type
/// name. Nothing is copied out of Lua yet.
fn text_string(lua: &Lua, value: Value) -> Result<LuaString, &'static str> {
    match value {
        Value::String(s) => Ok(s),
        Value::Integer(_) | Value::Number(_) => {
            lua.coerce_string(value).ok().flatten().ok_or("number")
        }
        other => Err(other.type_name()),
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests;
