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
    /// What the state may hold before the run counts as out of time (an
    /// inline attempt's slice of memory), as Lua counts it.
    hold: Cell<Option<usize>>,
    /// Set by the hook when the run ended for holding more than that.
    over_hold: Cell<bool>,
}

thread_local! {
    static CLOCK: Clock = const {
        Clock {
            deadline: Cell::new(None),
            expired: Cell::new(false),
            hold: Cell::new(None),
            over_hold: Cell::new(false),
        }
    };
}

impl Clock {
    /// Starts a run of at most `limit`, holding at most `hold` bytes.
    pub fn start(limit: Duration, hold: Option<usize>) {
        CLOCK.with(|c| {
            c.expired.set(false);
            c.over_hold.set(false);
            c.hold.set(hold);
            c.deadline.set(Some(Instant::now() + limit));
        });
    }

    /// Whether the run ended for holding more than it may.
    pub fn over_hold() -> bool {
        CLOCK.with(|c| c.over_hold.get())
    }

    /// Whether the run may go on holding `used()` bytes (only asked when it
    /// has a `hold`); expires it if not.
    pub fn within_hold(used: impl FnOnce() -> usize) -> bool {
        CLOCK.with(|c| match c.hold.get() {
            Some(hold) if used() > hold => {
                c.over_hold.set(true);
                c.expired.set(true);
                c.deadline.set(Some(Instant::now()));
                false
            }
            _ => true,
        })
    }

    pub fn stop() {
        CLOCK.with(|c| {
            c.deadline.set(None);
            c.hold.set(None);
        });
    }

    /// Ends the run's time now: the hook raises from its next firing on.
    pub fn expire() {
        CLOCK.with(|c| {
            c.expired.set(true);
            c.deadline.set(Some(Instant::now()));
        });
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
    // SAFETY: `state` is the running Lua thread; LUA_GCCOUNT(B) only read
    // the collector's byte count.
    let used = || unsafe {
        let kib = ffi::lua_gc(state, ffi::LUA_GCCOUNT, 0) as usize;
        let bytes = ffi::lua_gc(state, ffi::LUA_GCCOUNTB, 0) as usize;
        kib * 1024 + bytes
    };
    if Clock::within_hold(used) && Clock::on_time() {
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
