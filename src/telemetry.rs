//! Logs (tracing, text or JSON lines on stdout) and metrics (a Prometheus
//! recorder installed once per process).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{Config, LogFormat};

mod access;
mod batched;

pub use access::{AccessLine, TARGET as ACCESS_TARGET};
pub use batched::BatchedWriter;

/// stdout, batched (see [`batched`]); one per process, made by the first
/// [`init_logging`].
static STDOUT: OnceLock<BatchedWriter> = OnceLock::new();

fn stdout() -> &'static BatchedWriter {
    STDOUT.get_or_init(|| {
        BatchedWriter::new(std::io::stdout()).expect("can spawn the log writer thread")
    })
}

/// Appends whole lines to stdout's batch (the access log's path).
fn append_log(lines: &[u8]) {
    use std::io::Write;
    use tracing_subscriber::fmt::MakeWriter;
    let _ = stdout().make_writer().write_all(lines);
}

/// Writes out every log line buffered so far. `main` calls it last.
pub fn flush_logs() {
    if let Some(stdout) = STDOUT.get() {
        stdout.flush();
    }
}

/// Installs the global log subscriber. Later calls are no-ops (tests build
/// many apps in one process).
pub fn init_logging(config: &Config) {
    let filter = config.log_filter.clone();
    access::set_format(config.log_format);
    let output = tracing_subscriber::fmt::layer().with_writer(stdout().clone());
    let logs = tracing_subscriber::registry().with(filter);
    let _ = match config.log_format {
        LogFormat::Json => logs
            .with(
                output
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Text => logs.with(output.with_ansi(false)).try_init(),
    };
}

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "http_requests_in_flight";
pub const CONNECTIONS_REFUSED: &str = "skiff_connections_refused_total";
pub const REQUESTS_SHED: &str = "skiff_requests_shed_total";
pub const BODY_TIMEOUTS: &str = "skiff_body_timeouts_total";
pub const SEND_TIMEOUTS: &str = "skiff_send_timeouts_total";
pub const IP_UPSTREAM_CALLS: &str = "skiff_ip_upstream_calls_total";
pub const IP_CACHE_HITS: &str = "skiff_ip_cache_hits_total";
pub const LUA_RUNS: &str = "skiff_lua_runs_total";
pub const LUA_ERRORS: &str = "skiff_lua_errors_total";
pub const LUA_LIMIT_HITS: &str = "skiff_lua_limit_hits_total";
pub const LUA_RELOADS: &str = "skiff_lua_reloads_total";
pub const LUA_DISPATCH: &str = "skiff_lua_dispatch_total";
pub const AUTH_FAILURES: &str = "skiff_auth_failures_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A histogram's samples wait in the recorder, 8 bytes each, until an
/// upkeep drains them into buckets: every [`UPKEEP_EVERY`], or sooner once
/// a thread has recorded [`DRAIN_AFTER`] request durations
/// ([`duration_recorded`]). Every 5 s alone let 5 s of samples pile up
/// under load (about 1.2 MB at 30k requests/s) and the allocator kept
/// their pages: private memory under `/hello` was 7.4 MiB, 4.7 now
/// (bench/NOTES.md).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
const DRAIN_AFTER: u32 = 4096;

/// The upkeep thread, to wake it early.
static UPKEEP: OnceLock<std::thread::Thread> = OnceLock::new();

/// Counts one request duration recorded on this thread and wakes the
/// upkeep every [`DRAIN_AFTER`] of them.
pub fn duration_recorded() {
    thread_local! {
        static RECORDED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    let n = (RECORDED.get() + 1) % DRAIN_AFTER;
    RECORDED.set(n);
    if n == 0
        && let Some(upkeep) = UPKEEP.get()
    {
        upkeep.unpark();
    }
}

/// The process-wide Prometheus recorder. The first call installs it, records
/// the build info and starts the periodic upkeep; later calls share it.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            register_at_zero();
            process_collector().describe();
            metrics::gauge!(
                "skiff_build_info",
                "version" => env!("CARGO_PKG_VERSION"),
                "commit" => crate::build_info::GIT_COMMIT,
                "target" => crate::build_info::TARGET,
            )
            .set(1.0);
            let upkeep = handle.clone();
            let thread = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::park_timeout(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                })
                .expect("can spawn the metrics upkeep thread");
            let _ = UPKEEP.set(thread.thread().clone());
            handle
        })
        .clone()
}

/// Label values of the counters registered at zero, so that each series
/// exists (at 0) from start-up rather than from its first event: a rate or
/// an alert on a series that is absent sees nothing. They mirror the values
/// the code uses (`RunError::kind`, `RunError::limit` in src/lua/, `Refused`
/// in src/http/users/auth.rs).
#[cfg(feature = "lua")]
pub const LUA_ERROR_KINDS: &[&str] = &[
    "busy",
    "time",
    "memory",
    "script",
    "no_response",
    "internal",
];
#[cfg(feature = "lua")]
pub const LUA_LIMITS: &[&str] = &["time", "memory"];
#[cfg(feature = "users")]
pub const AUTH_FAILURE_REASONS: &[&str] = &["missing", "malformed", "wrong"];

fn register_at_zero() {
    metrics::counter!(REQUESTS_SHED).absolute(0);
    metrics::counter!(CONNECTIONS_REFUSED).absolute(0);
    #[cfg(feature = "lua")]
    {
        for kind in LUA_ERROR_KINDS {
            metrics::counter!(LUA_ERRORS, "kind" => *kind).absolute(0);
        }
        for limit in LUA_LIMITS {
            metrics::counter!(LUA_LIMIT_HITS, "limit" => *limit).absolute(0);
        }
    }
    #[cfg(feature = "users")]
    for reason in AUTH_FAILURE_REASONS {
        metrics::counter!(AUTH_FAILURES, "reason" => *reason).absolute(0);
    }
}

/// The standard `process_*` series (resident and virtual memory, CPU
/// seconds, open and maximum file descriptors, start time, threads), read
/// from `/proc` by metrics-process.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Updates the `process_*` series; called at each scrape of `/metrics`.
pub fn collect_process_metrics() {
    process_collector().collect();
}

fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route template and status"
    );
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "HTTP request latency, by method, route template and status"
    );
    metrics::describe_gauge!(HTTP_IN_FLIGHT, "HTTP requests being served now");
    metrics::describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed at accept because SKIFF_MAX_CONNECTIONS were open"
    );
    metrics::describe_counter!(
        REQUESTS_SHED,
        "Requests answered 503 because SKIFF_MAX_CONCURRENCY were in flight"
    );
    metrics::describe_counter!(
        BODY_TIMEOUTS,
        "Requests answered 408 because their body came too slowly (SKIFF_BODY_TIMEOUT)"
    );
    metrics::describe_counter!(
        SEND_TIMEOUTS,
        "Connections closed because the client accepted no bytes for SKIFF_SEND_TIMEOUT"
    );
    metrics::describe_counter!(IP_UPSTREAM_CALLS, "Calls to the /ip upstream, by outcome");
    metrics::describe_counter!(IP_CACHE_HITS, "/ip answers served from the cache");
    metrics::describe_counter!(
        AUTH_FAILURES,
        "Requests refused for missing, malformed or wrong credentials, by reason"
    );
    metrics::describe_counter!(LUA_RUNS, "Lua script runs");
    metrics::describe_counter!(LUA_ERRORS, "Lua script runs that failed, by kind");
    metrics::describe_counter!(
        LUA_LIMIT_HITS,
        "Lua runs stopped by a limit (time or memory)"
    );
    metrics::describe_counter!(
        LUA_DISPATCH,
        "Lua runs by where they ran: inline (answered on the request's thread within the slice), fallback (outgrew the slice, run again on a worker), pool (sent straight to a worker)"
    );
    metrics::describe_counter!(
        LUA_RELOADS,
        "Reloads of the Lua scripts directory, by outcome (ok, or error: the running set stays)"
    );
    metrics::describe_gauge!(
        "skiff_build_info",
        "Build information; the value is always 1"
    );
}
