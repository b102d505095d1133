//! The fast path: a run first goes on the request's own thread, with a
//! slice of its limits: a deadline of [`SLICE`] instead of the whole time
//! limit, [`SLICE_MEMORY`] of memory held, chunks of [`SLICE_COMPILE`] for
//! `load`; going over any of them is going over the slice.
//!
//! Handing a run to a worker thread costs two cross-thread wake-ups, each
//! more than a typical run itself. So each thread of the async runtime has
//! a sandbox of its own (a Lua state is not `Send`: it is born and dies on
//! its thread), built on its first run and again after a reload, and a run
//! starts there. The limit machinery that bounds a run to its limits on a
//! worker (the hook on every call and every few instructions, the pattern
//! matcher's budget, `load`'s size cap, the guarded `pcall` and `<close>`
//! handling) bounds it to the slice here; and while it holds little memory
//! and compiles only small chunks, no single step (an instruction or
//! library call on a huge string, a long compile) takes long, so a script
//! holds an event-loop thread for about one slice at most.
//!
//! - A run that ends within the slice is the answer: a response, a script
//!   error, a memory-limit error alike.
//! - A run that outgrows the slice
//!   is thrown away and the script runs again from the start on the worker
//!   pool, with the whole limits. Runs are pure: each gets a fresh
//!   environment, nothing it writes survives it, `math.random` is reseeded
//!   from the OS for each run, its log lines are held back until it is
//!   known to count, and the metrics count only the run that answers. So
//!   the first attempt leaves no trace, and the client waits at most the
//!   time limit plus one slice.
//! - A script that outgrew its slice twice within [`STRIKES_WITHIN`] goes
//!   straight to the pool for the next [`STRAIGHT_TO_POOL_FOR`] (a reload
//!   forgets this): a client that keeps sending it input that makes it
//!   spin costs the event loop two slices (and the rebuilding of a state)
//!   per script per that period, or one per script per second if it sends
//!   them one by one, not one per request. Twice, because on a busy
//!   machine a fast run is now and then pre-empted past its slice: once
//!   must not cost a script the fast path for seconds (measured: with
//!   one strike, a benchmark of `GET /lua` beside another one spent two
//!   thirds of its runs on the pool).

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::sandbox::{Allowance, Limits, Sandbox};
use super::{Current, LuaRequest, LuaResponse, RunError, Target};
use crate::telemetry::LUA_DISPATCH;

/// How long a run may hold an event-loop thread before it is moved to a
/// worker. A typical script (the hello chunk, an echo of the request, a
/// small JSON document) runs in 5 to 100 µs, so 1 ms leaves room for ten
/// times that on a loaded machine; and 1 ms is about what a request
/// already waits behind its neighbours on a busy event loop, so holding a
/// thread that long, once per slow script and period, is not felt. A
/// shorter slice would move scripts doing honest work (a larger JSON
/// document) to the pool for nothing.
pub const SLICE: Duration = Duration::from_millis(1);

/// What an inline attempt may hold before it counts as outgrowing its
/// slice. The hook sees calls and every 128th instruction, but one
/// instruction or library call on a string of megabytes (comparing,
/// concatenating, copying it out as a body or header, encoding it as JSON)
/// takes milliseconds: while a run holds less than this, no such string
/// exists, so its steps stay short. It is checked where the hook fires, so
/// no allocation fails for it (an allocation failure can be caught, or
/// turn into another error, such as `table.unpack`'s "too many results",
/// which a worker's run would not see): the memory limit stays whole.
/// Typical runs take a few KiB to a few tens (the environment, the
/// request, a JSON document); one that needs more goes to a worker.
pub const SLICE_MEMORY: usize = 256 * 1024;

/// The largest chunk `load` compiles in an inline attempt. Compiling is one
/// C call that no hook sees, and some sources compile in quadratic time: a
/// chunk of `MAX_LOAD` (16 KiB) can take tens of milliseconds, one of 2 KiB
/// a 64th of that. A larger chunk sends the run to a worker.
pub const SLICE_COMPILE: usize = 2 * 1024;

/// How long a script that outgrew its slice twice goes straight to the
/// pool. Long enough that a client making a script spin costs the event
/// loop a negligible share (two slices, plus rebuilding the state, per
/// 10 s per script), short enough that a script which was slow for a
/// moment, say when the machine was briefly overloaded, is soon back on
/// the fast path.
pub const STRAIGHT_TO_POOL_FOR: Duration = Duration::from_secs(10);

/// Within how long a second overrun counts with the first. A script that
/// outgrows its slice less often than this costs at most one slice per
/// this period: 0.1% of a thread.
pub const STRIKES_WITHIN: Duration = Duration::from_secs(1);

/// A script's recent overruns.
#[derive(Clone, Copy)]
struct Strikes {
    /// When it last outgrew its slice.
    last: Instant,
    /// Until when it goes straight to the pool.
    until: Option<Instant>,
}

/// Tells engines apart in the threads' sandboxes (tests run several
/// engines in one process; an address could be reused, a number is not).
static NEXT_ENGINE: AtomicU64 = AtomicU64::new(0);

/// This thread's sandbox, and which engine and script set it was built for.
struct Local {
    engine: u64,
    generation: u64,
    sandbox: Sandbox,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// How an inline attempt ended.
pub enum Attempt {
    /// The answer, counted in the metrics.
    Done(Result<LuaResponse, RunError>),
    /// Not run inline: the script outgrew its slice recently, or this
    /// thread has no sandbox to run it.
    Skipped,
    /// Stopped at the end of its slice (of time or memory); nothing of it
    /// is seen.
    Outgrown,
}

impl Attempt {
    /// The `path` label of the dispatch metric.
    pub fn path(&self) -> &'static str {
        match self {
            Attempt::Done(_) => "inline",
            Attempt::Skipped => "pool",
            Attempt::Outgrown => "fallback",
        }
    }
}

/// The label values of the dispatch metric, registered at zero.
pub const PATHS: [&str; 3] = ["inline", "fallback", "pool"];

pub struct Inline {
    id: u64,
    current: Arc<Current>,
    limits: Limits,
    /// The slice of time, memory and compiling, each bounded by the limit.
    slice: Allowance,
    /// The scripts that outgrew their slice lately; for the script set of
    /// that generation.
    slow: Mutex<(u64, HashMap<Target, Strikes>)>,
    /// Whether `slow` may hold anything: spares every run the lock in the
    /// normal case. (A stale answer costs one run the lock, or sends one
    /// more run inline: no harm either way.)
    any_slow: AtomicBool,
}

impl Inline {
    pub fn new(current: Arc<Current>, limits: Limits) -> Self {
        for path in PATHS {
            metrics::counter!(LUA_DISPATCH, "path" => path).absolute(0);
        }
        Self::with_slice(
            current,
            limits,
            Allowance {
                time: SLICE,
                compile: SLICE_COMPILE,
                hold: Some(SLICE_MEMORY),
            },
        )
    }

    fn with_slice(current: Arc<Current>, limits: Limits, slice: Allowance) -> Self {
        let whole = Allowance::whole(limits);
        Self {
            id: NEXT_ENGINE.fetch_add(1, Ordering::Relaxed),
            current,
            limits,
            slice: Allowance {
                time: slice.time.min(whole.time),
                compile: slice.compile.min(whole.compile),
                hold: slice.hold.filter(|&bytes| bytes < limits.memory),
            },
            slow: Mutex::new((0, HashMap::new())),
            any_slow: AtomicBool::new(false),
        }
    }

    /// Whether `result` only says that the run outgrew its slice: a worker,
    /// with the whole limits, may still answer otherwise. (Where the slice
    /// of time is the whole limit, as with a limit under 1 ms, running out
    /// of it is final.) `outgrown`: the sandbox stopped the run for going
    /// over the slice's `compile` or `hold`.
    fn outgrown(&self, result: &Result<LuaResponse, RunError>, outgrown: bool) -> bool {
        matches!(result, Err(RunError::TimeLimit { .. }))
            && (self.slice.time < self.limits.time || outgrown)
    }

    /// Runs `target` on this thread within the slice, unless it outgrew
    /// its slice lately.
    pub fn attempt(&self, target: &Target, request: &LuaRequest) -> Attempt {
        let attempt = if self.was_slow(target) {
            Attempt::Skipped
        } else {
            LOCAL
                .try_with(|local| self.run(&mut local.borrow_mut(), target, request))
                .unwrap_or(Attempt::Skipped)
        };
        metrics::counter!(LUA_DISPATCH, "path" => attempt.path()).increment(1);
        attempt
    }

    fn run(&self, local: &mut Option<Local>, target: &Target, request: &LuaRequest) -> Attempt {
        let generation = self.current.generation();
        if !local
            .as_ref()
            .is_some_and(|l| l.engine == self.id && l.generation == generation)
        {
            // The old state goes first: never two at once on a thread.
            *local = None;
            let (generation, scripts) = self.current.get();
            match Sandbox::new(&scripts, self.limits) {
                Ok(sandbox) => {
                    *local = Some(Local {
                        engine: self.id,
                        generation,
                        sandbox,
                    })
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot build a Lua state on this thread: running on a worker");
                    return Attempt::Skipped;
                }
            }
        }
        let Some(Local {
            sandbox,
            generation,
            ..
        }) = local.as_mut()
        else {
            return Attempt::Skipped;
        };
        let generation = *generation;

        sandbox.hold_log();
        let start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            sandbox.run_within(target, request, self.slice)
        }));
        let lines = sandbox.take_log();
        let outgrown = sandbox.outgrown();
        match outcome {
            Ok(result) if self.outgrown(&result, outgrown) => {
                // Cut somewhere: the next run here starts from a new state.
                *local = None;
                self.mark_slow(target, generation);
                // Once per script per period at most: how long the event
                // loop was held is worth knowing.
                tracing::info!(
                    script = %target.display_name(),
                    held_us = start.elapsed().as_micros() as u64,
                    time = !outgrown,
                    "a Lua run outgrew its slice: running it again on a worker"
                );
                Attempt::Outgrown
            }
            Ok(result) => {
                Sandbox::write_log(target, lines);
                super::pool::record(&target.display_name(), &result);
                if matches!(&result, Err(e) if e.limit().is_some()) {
                    // As on a worker: a run stopped by a limit may have
                    // been cut anywhere. Rebuilding costs the event loop
                    // more than a run: counted as an overrun.
                    *local = None;
                    self.mark_slow(target, generation);
                } else {
                    // The answer is waiting: a full collection only now
                    // and then (a worker makes one after answering).
                    sandbox.tidy_if_grown();
                }
                Attempt::Done(result)
            }
            Err(_) => {
                *local = None;
                self.mark_slow(target, generation);
                Sandbox::write_log(target, lines);
                let script = target.display_name();
                tracing::error!(script, "a Lua run panicked");
                let result = Err(RunError::Internal { script });
                super::pool::record(&target.display_name(), &result);
                Attempt::Done(result)
            }
        }
    }

    /// Whether `target` outgrew its slice within the last period, under
    /// the script set being served.
    fn was_slow(&self, target: &Target) -> bool {
        if !self.any_slow.load(Ordering::Relaxed) {
            return false;
        }
        let mut slow = self.slow.lock().unwrap_or_else(PoisonError::into_inner);
        if slow.1.is_empty() {
            self.any_slow.store(false, Ordering::Relaxed);
            return false;
        }
        let generation = self.current.generation();
        if slow.0 != generation {
            *slow = (generation, HashMap::new());
            return false;
        }
        let now = Instant::now();
        match slow.1.get(target).copied() {
            Some(Strikes {
                until: Some(until), ..
            }) if now < until => true,
            Some(strikes) => {
                if strikes.until.is_some() || now >= strikes.last + STRIKES_WITHIN {
                    slow.1.remove(target);
                }
                false
            }
            None => false,
        }
    }

    /// Counts an overrun of `target`, as the set of `generation` has it:
    /// the second within `STRIKES_WITHIN` sends it straight to the pool
    /// for a while. Forgotten if that set is no longer served.
    fn mark_slow(&self, target: &Target, generation: u64) {
        let mut slow = self.slow.lock().unwrap_or_else(PoisonError::into_inner);
        if slow.0 != generation {
            if generation != self.current.generation() {
                return;
            }
            *slow = (generation, HashMap::new());
        }
        let now = Instant::now();
        let until = match slow.1.get(target) {
            Some(strikes) if now < strikes.last + STRIKES_WITHIN => {
                Some(now + STRAIGHT_TO_POOL_FOR)
            }
            _ => None,
        };
        slow.1.insert(target.clone(), Strikes { last: now, until });
        self.any_slow.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::super::pool::{Pool, PoolSize};
    use super::super::{ScriptName, Scripts};
    use super::*;

    const LIMITS: Limits = Limits {
        memory: 1024 * 1024,
        time: Duration::from_secs(10),
    };

    /// A slice of time no script of these tests but a spinning one
    /// outlasts, even on a loaded machine, so that the tests do not depend
    /// on timing.
    const WIDE: Allowance = Allowance {
        time: Duration::from_secs(5),
        compile: SLICE_COMPILE,
        hold: Some(SLICE_MEMORY),
    };

    fn slice() -> Allowance {
        Allowance {
            time: SLICE,
            ..WIDE
        }
    }

    fn current(scripts: &[(&str, &str)]) -> Arc<Current> {
        Arc::new(Current::new(Scripts::from_sources(scripts.iter().copied())))
    }

    fn target(name: &str) -> Target {
        Target::Script(ScriptName::parse(name).unwrap())
    }

    fn body(attempt: Attempt) -> String {
        match attempt {
            Attempt::Done(Ok(response)) => String::from_utf8(response.body).unwrap(),
            Attempt::Done(Err(e)) => panic!("failed: {e}"),
            Attempt::Skipped => panic!("skipped"),
            Attempt::Outgrown => panic!("outgrew its slice"),
        }
    }

    fn attempt(inline: &Inline, name: &str) -> Attempt {
        inline.attempt(&target(name), &LuaRequest::default())
    }

    #[test]
    fn a_fast_run_is_answered_inline_and_leaves_nothing_behind() {
        let inline = Inline::with_slice(
            current(&[
                (
                    "set",
                    "x = 'secret' string.upper = nil response(tostring(x))",
                ),
                (
                    "get",
                    "response(tostring(x) .. ' ' .. tostring(string.upper))",
                ),
            ]),
            LIMITS,
            WIDE,
        );
        assert_eq!(
            body(inline.attempt(&Target::Hello, &LuaRequest::default())),
            "hello world"
        );
        assert_eq!(body(attempt(&inline, "set")), "secret");
        assert!(body(attempt(&inline, "get")).starts_with("nil function"));
    }

    #[test]
    fn a_spinning_script_outlasts_its_slice_then_goes_straight_to_the_pool_until_a_reload() {
        let scripts = [("spin", "while true do end"), ("ok", "response 'ok'")];
        let current = current(&scripts);
        let inline = Inline::with_slice(current.clone(), LIMITS, slice());
        let start = Instant::now();
        assert!(matches!(attempt(&inline, "spin"), Attempt::Outgrown));
        // A generous bound: the slice is 1 ms.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        // Twice within a second (the first could be a pre-emption).
        assert!(matches!(attempt(&inline, "spin"), Attempt::Outgrown));
        assert!(matches!(attempt(&inline, "spin"), Attempt::Skipped));
        // Other scripts are not held back.
        assert!(!matches!(attempt(&inline, "ok"), Attempt::Skipped));

        current.replace(Scripts::from_sources(scripts));
        assert!(matches!(attempt(&inline, "spin"), Attempt::Outgrown));
    }

    #[test]
    fn errors_within_the_slice_are_answers_and_outgrowing_it_is_not() {
        let scripts = [
            ("boom", "error('boom')"),
            ("hog", "local s = ('x'):rep(2 << 20) response(s .. s)"),
            (
                "big",
                "local t = {} for i = 1, 30000 do t[i] = {} end response('big')",
            ),
            (
                "compile",
                "local f = load('return 1' .. (' '):rep(4096)) response(tostring(f()))",
            ),
            // No allocation fails for the slice: what the script sees is
            // what it would see on a worker.
            (
                "unpack",
                "local t = {} for i = 1, 20000 do t[i] = i end response(tostring(select('#', table.unpack(t))))",
            ),
            // One call that would build far more than the slice holds.
            ("rep", "response(tostring(#('x'):rep(800 * 1024)))"),
            (
                "gsub",
                "response(tostring(#(('x'):rep(100)):gsub('x', ('y'):rep(8000))))",
            ),
            ("ok", "response 'ok'"),
        ];
        let inline = Inline::with_slice(current(&scripts), LIMITS, WIDE);
        assert!(matches!(attempt(&inline, "rep"), Attempt::Outgrown));
        assert!(matches!(attempt(&inline, "gsub"), Attempt::Outgrown));
        assert!(matches!(
            attempt(&inline, "boom"),
            Attempt::Done(Err(RunError::Script { .. }))
        ));
        // Over the slice, under the limits: for a worker.
        assert!(matches!(attempt(&inline, "big"), Attempt::Outgrown));
        assert!(matches!(attempt(&inline, "compile"), Attempt::Outgrown));
        assert!(matches!(attempt(&inline, "unpack"), Attempt::Outgrown));
        // Over the memory limit too: that is for the worker to find.
        assert!(matches!(attempt(&inline, "hog"), Attempt::Outgrown));
        // The state was rebuilt, and at its second overrun the hog goes
        // to the pool for a while.
        assert_eq!(body(attempt(&inline, "ok")), "ok");
        assert!(matches!(attempt(&inline, "hog"), Attempt::Outgrown));
        assert!(matches!(attempt(&inline, "hog"), Attempt::Skipped));

        // Where the memory limit is no more than the slice, only it counts,
        // and its error is an answer.
        let small = Limits {
            memory: 128 * 1024,
            ..LIMITS
        };
        let inline = Inline::with_slice(current(&scripts), small, WIDE);
        for _ in 0..2 {
            assert!(matches!(
                attempt(&inline, "big"),
                Attempt::Done(Err(RunError::MemoryLimit { .. }))
            ));
        }
        assert!(matches!(attempt(&inline, "big"), Attempt::Skipped));
        assert_eq!(body(attempt(&inline, "ok")), "ok");
    }

    #[test]
    fn a_time_limit_shorter_than_the_slice_is_final() {
        let limits = Limits {
            time: Duration::from_micros(500),
            ..LIMITS
        };
        let inline = Inline::with_slice(current(&[("spin", "while true do end")]), limits, slice());
        assert!(matches!(
            attempt(&inline, "spin"),
            Attempt::Done(Err(RunError::TimeLimit { .. }))
        ));
    }

    #[test]
    fn engines_on_one_thread_keep_to_their_own_scripts() {
        let a = Inline::with_slice(current(&[("x", "response 'a'")]), LIMITS, WIDE);
        let b = Inline::with_slice(current(&[("x", "response 'b'")]), LIMITS, WIDE);
        assert_eq!(body(attempt(&a, "x")), "a");
        assert_eq!(body(attempt(&b, "x")), "b");
        assert_eq!(body(attempt(&a, "x")), "a");
    }

    #[tokio::test]
    async fn a_reload_between_the_attempts_is_seen_whole_by_the_pooled_run() {
        let current = current(&[("flip", "while true do end")]);
        let inline = Inline::with_slice(current.clone(), LIMITS, slice());
        let size = PoolSize {
            workers: 1,
            queue: 4,
        };
        let pool = Pool::start(current.clone(), LIMITS, size).unwrap();

        assert!(matches!(attempt(&inline, "flip"), Attempt::Outgrown));
        current.replace(Scripts::from_sources([("flip", "response 'v2'")]));
        let response = pool
            .run(target("flip"), LuaRequest::default())
            .await
            .unwrap();
        assert_eq!(response.body, b"v2");
        // The thread's state follows the reload too, and the reload
        // forgot that the script was slow.
        assert!(!matches!(attempt(&inline, "flip"), Attempt::Skipped));
        assert_eq!(
            body(
                Inline::with_slice(current, LIMITS, WIDE)
                    .attempt(&target("flip"), &LuaRequest::default())
            ),
            "v2"
        );
    }
}
