//! The worker pool: a fixed number of threads, each owning one sandbox (a
//! Lua state is not `Send`, so it is born and dies on its thread), fed by a
//! bounded queue.
//!
//! A full queue is refused at once (`RunError::Busy`, a quick `503`), so a
//! flood of slow scripts costs at most `queue` waiting jobs, never an
//! unbounded backlog; and since the async side only awaits a oneshot
//! channel, Lua never blocks the runtime's threads.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use super::sandbox::{Limits, Sandbox};
use super::{Current, LoadError, LuaRequest, LuaResponse, RunError, Target};
use crate::telemetry::{LUA_ERRORS, LUA_LIMIT_HITS, LUA_RUNS};

/// Lua runs use the C stack for nested calls through C (pcall, metamethods,
/// string.gsub callbacks…), up to Lua's own limit of 200 levels.
pub const WORKER_STACK: usize = 4 * 1024 * 1024;

/// How many workers, and how many jobs may wait for one.
#[derive(Debug, Clone, Copy)]
pub struct PoolSize {
    pub workers: usize,
    pub queue: usize,
}

impl PoolSize {
    /// One worker per CPU (scripts are CPU-bound: no I/O in the sandbox),
    /// at least 2, at most 16. The queue holds as many jobs as can still
    /// start within half the request timeout if every run ahead of them
    /// takes the whole Lua time limit (between 4 and 256 per worker): with
    /// the defaults (10 s, 100 ms) 50 per worker, enough for a burst as
    /// wide as a benchmark's 64 connections, where 8 per worker turned
    /// most of them away.
    pub fn new(request_timeout: Duration, lua_timeout: Duration) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = cpus.clamp(2, 16);
        let per_worker = request_timeout.as_secs_f64() / lua_timeout.as_secs_f64() / 2.0;
        Self {
            workers,
            queue: workers * (per_worker as usize).clamp(4, 256),
        }
    }
}

struct Job {
    target: Target,
    request: LuaRequest,
    reply: oneshot::Sender<Result<LuaResponse, RunError>>,
}

pub struct Pool {
    queue: SyncSender<Job>,
    size: PoolSize,
    busy: Arc<AtomicUsize>,
}

impl Pool {
    /// Starts the workers and waits until each has built its sandbox, so
    /// that a script that does not compile stops start-up.
    pub fn start(current: Arc<Current>, limits: Limits, size: PoolSize) -> Result<Self, LoadError> {
        let (queue, jobs) = sync_channel::<Job>(size.queue);
        let jobs = Arc::new(Mutex::new(jobs));
        let busy = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for i in 0..size.workers {
            let worker = Worker {
                current: current.clone(),
                limits,
                jobs: jobs.clone(),
                busy: busy.clone(),
            };
            let ready = ready_tx.clone();
            std::thread::Builder::new()
                .name(format!("lua-{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || worker.run(ready))
                .map_err(|e| LoadError::Interpreter(format!("cannot spawn a Lua worker: {e}")))?;
        }
        drop(ready_tx);
        // One worker's interpreter proves that the sandbox and the scripts
        // build; the others finish theirs while start-up goes on (at their
        // lower priority they leave the CPU to it), and log if they cannot.
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(LoadError::Interpreter(
                    "a Lua worker died while starting".into(),
                ));
            }
        }
        tracing::debug!(
            workers = size.workers,
            queue = size.queue,
            "Lua workers started"
        );
        Ok(Self { queue, size, busy })
    }

    pub async fn run(&self, target: Target, request: LuaRequest) -> Result<LuaResponse, RunError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            target,
            request,
            reply,
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!(LUA_ERRORS, "kind" => "busy").increment(1);
                return Err(RunError::Busy);
            }
            Err(TrySendError::Disconnected(job)) => {
                tracing::error!("the Lua workers are gone");
                return Err(RunError::Internal {
                    script: job.target.display_name(),
                });
            }
        }
        answer.await.unwrap_or_else(|_| {
            // The worker dropped the job without answering: it panicked
            // outside the guarded run, which is a bug (already logged).
            Err(RunError::Internal {
                script: "(unknown)".into(),
            })
        })
    }

    pub fn size(&self) -> PoolSize {
        self.size
    }

    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }
}

struct Worker {
    /// The script set being served; a reload swaps it.
    current: Arc<Current>,
    limits: Limits,
    jobs: Arc<Mutex<Receiver<Job>>>,
    busy: Arc<AtomicUsize>,
}

impl Worker {
    fn run(self, ready: std::sync::mpsc::Sender<Result<(), LoadError>>) {
        lower_priority();
        let (mut generation, mut scripts) = self.current.get();
        let mut sandbox = match Sandbox::new(&scripts, self.limits) {
            Ok(sandbox) => {
                let _ = ready.send(Ok(()));
                sandbox
            }
            Err(e) => {
                // Nobody waits any more once one worker has started.
                if let Err(std::sync::mpsc::SendError(Err(e))) = ready.send(Err(e)) {
                    tracing::error!(error = %e, "a Lua worker cannot start");
                }
                return;
            }
        };
        drop(ready);
        // Ends when the engine, and with it the sending side, is dropped.
        while let Some(job) = self.next_job() {
            // The caller gave up (client gone, request timeout): skip the run.
            if job.reply.is_closed() {
                continue;
            }
            // A reload swapped the script set (compiled once already, so
            // this does not fail but for lack of memory): the next run
            // sees the new set whole.
            if self.current.generation() != generation {
                let (new_generation, new_scripts) = self.current.get();
                match Sandbox::new(&new_scripts, self.limits) {
                    Ok(new) => {
                        sandbox = new;
                        (generation, scripts) = (new_generation, new_scripts);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot load the reloaded scripts; keeping the old ones")
                    }
                }
            }
            self.busy.fetch_add(1, Ordering::Relaxed);
            let script = job.target.display_name();
            let outcome = catch_unwind(AssertUnwindSafe(|| sandbox.run(&job.target, &job.request)));
            self.busy.fetch_sub(1, Ordering::Relaxed);
            let (result, fresh_state) = match outcome {
                Ok(result) => {
                    // A run stopped by a limit may have been cut anywhere:
                    // start the next one from a brand-new state.
                    let hit_limit = matches!(&result, Err(e) if e.limit().is_some());
                    (result, hit_limit)
                }
                Err(_) => {
                    tracing::error!(script, "a Lua run panicked");
                    (
                        Err(RunError::Internal {
                            script: script.clone(),
                        }),
                        true,
                    )
                }
            };
            record(&script, &result);
            let _ = job.reply.send(result);
            // After answering, off the request's critical path.
            if fresh_state {
                match Sandbox::new(&scripts, self.limits) {
                    Ok(new) => sandbox = new,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot renew a Lua state; keeping the old one")
                    }
                }
            } else {
                sandbox.tidy();
            }
        }
    }

    fn next_job(&self) -> Option<Job> {
        // The lock is held only while waiting, never while running a job.
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        jobs.recv().ok()
    }
}

/// How much higher the Lua workers' nice value is than the process's
/// (whose event-loop threads keep it). When both want the CPU, the scheduler
/// then gives a worker about a tenth of what it gives an event-loop thread,
/// so scripts spinning to their limits cannot starve the HTTP routes.
/// Measured with 50 `while true do end` runs in flight and the server on one
/// CPU: `GET /hello` p99 13.2 ms (2.0 idle) at +0, 5.8 ms (2.2) at +10,
/// 4.7 ms (2.0) at +19. 10, because a worker that gets less CPU also
/// overshoots its wall-clock limit by more (the spinners got 19, 17 and 11
/// answers a second).
const WORKER_NICENESS: libc::c_int = 10;

/// Raises the calling worker thread's nice value by [`WORKER_NICENESS`], to
/// at most 19. On Linux each thread has its own, and raising it needs no
/// privilege.
fn lower_priority() {
    // SAFETY: getpriority and setpriority on this thread's own id.
    let rc = unsafe {
        let tid = libc::gettid() as libc::id_t;
        // -1 is also a valid nice value; errno tells the two apart.
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
        if nice == -1 && *libc::__errno_location() != 0 {
            -1
        } else {
            libc::setpriority(libc::PRIO_PROCESS, tid, (nice + WORKER_NICENESS).min(19))
        }
    };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower a Lua worker's priority");
    }
}

/// Counts a run that answered, once, wherever it ran.
pub(super) fn record(script: &str, result: &Result<LuaResponse, RunError>) {
    metrics::counter!(LUA_RUNS, "script" => script.to_owned()).increment(1);
    if let Err(e) = result {
        metrics::counter!(LUA_ERRORS, "kind" => e.kind()).increment(1);
        if let Some(limit) = e.limit() {
            metrics::counter!(LUA_LIMIT_HITS, "limit" => limit).increment(1);
            tracing::warn!(script, limit, "Lua run stopped by a limit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_what_can_start_within_half_the_request_timeout() {
        let per_worker = |request: u64, lua: u64| {
            let size = PoolSize::new(Duration::from_millis(request), Duration::from_millis(lua));
            size.queue / size.workers
        };
        assert_eq!(per_worker(10_000, 100), 50);
        assert_eq!(per_worker(3_000, 300), 5);
        // Bounded both ways.
        assert_eq!(per_worker(1_000, 10_000), 4);
        assert_eq!(per_worker(3_600_000, 1), 256);
    }
}
