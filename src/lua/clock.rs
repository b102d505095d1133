//! The deadline of a Lua run: a thread-local clock, and the hook that
//! raises "time limit exceeded" once it has passed.

use std::cell::Cell;
use std::time::{Duration, Instant};

use mlua::ffi;

/// The deadline of the run going on in this thread. A Lua state never
/// leaves the thread that made it and runs one script at a time, so the
/// C hook finds its run's deadline here.
pub struct Clock {
    deadline: Cell<Option<Instant>>,
    /// Set by the hook once the deadline has passed.
    expired: Cell<bool>,
}

thread_local! {
    static CLOCK: Clock = const {
        Clock {
            deadline: Cell::new(None),
            expired: Cell::new(false),
        }
    };
}

impl Clock {
    pub fn start(limit: Duration) {
        CLOCK.with(|c| {
            c.expired.set(false);
            c.deadline.set(Some(Instant::now() + limit));
        });
    }

    pub fn stop() {
        CLOCK.with(|c| c.deadline.set(None));
    }

    pub fn expired() -> bool {
        CLOCK.with(|c| c.expired.get())
    }

    /// Whether the run may go on; marks it expired once the deadline passed.
    pub fn on_time() -> bool {
        CLOCK.with(|c| match c.deadline.get() {
            Some(deadline) if Instant::now() >= deadline => {
                c.expired.set(true);
                false
            }
            _ => true,
        })
    }
}

/// The count and call hook: raises "time limit exceeded" once the deadline
/// passed. Coroutines inherit it from the thread that creates them.
pub unsafe extern "C-unwind" fn time_limit_hook(
    state: *mut ffi::lua_State,
    _: *mut ffi::lua_Debug,
) {
    if Clock::on_time() {
        return;
    }
    // SAFETY: `state` is the running Lua thread. The hook fires only while
    // Lua code runs or a function is being called; host functions that call
    // back into Lua (gsub, json) do so through mlua's protected calls, so
    // lua_error's longjmp crosses no Rust frame but this one, which owns
    // nothing that needs dropping; the protected call of the run (or a
    // pcall in the script) catches it.
    unsafe {
        ffi::lua_pushliteral(state, c"time limit exceeded");
        ffi::lua_error(state);
    }
}
