//! Cross-cutting HTTP concerns: the access log and request metrics, problem
//! bodies for errors produced outside handlers, and panics.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use crate::app::AppState;
use crate::error::{Error, Problem};
use metrics::{Counter, Gauge, Histogram, Label, SharedString};
use tokio::sync::Semaphore;
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::telemetry::{
    BODY_TIMEOUTS, HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS, REQUESTS_SHED,
};

use super::REQUEST_ID;

/// Marks a response whose status and body were chosen on purpose (e.g. by a
/// Lua script), so [`problem_for_bare_errors`] leaves it alone.
#[derive(Debug, Clone, Copy)]
pub struct Verbatim;

/// Keeps the method label of the metrics bounded.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The request counter and latency histogram of one (method, route, status).
type RequestMetrics = (Counter, Histogram);
/// [`RequestMetrics`] by (method, status), then by route.
type RequestMetricsMap = HashMap<(&'static str, u16), HashMap<Box<str>, RequestMetrics>>;

thread_local! {
    /// Looking a metric up by name and labels builds a key and searches the
    /// recorder's registry on every call; a handle, once found, points
    /// straight at its atomics. Kept per thread, so no lock is shared
    /// between the runtime's workers. Routes are templates and methods a
    /// fixed set, so the maps stay small.
    static REQUEST_METRICS: RefCell<RequestMetricsMap> =
        RefCell::new(HashMap::new());
}

/// The handles of one (method, route, status), taken on first use (after
/// `telemetry` installed the recorder, at start-up).
fn request_metrics(method: &'static str, route: &str, status: u16) -> RequestMetrics {
    REQUEST_METRICS.with_borrow_mut(|map| {
        let by_route = map.entry((method, status)).or_default();
        if let Some(found) = by_route.get(route) {
            return found.clone();
        }
        let labels = [
            Label::from_static_parts("method", method),
            Label::new("route", SharedString::from(route.to_owned())),
            Label::new("status", status_label(status)),
        ];
        let found = (
            metrics::counter!(HTTP_REQUESTS, labels.iter()),
            metrics::histogram!(HTTP_DURATION, labels.iter()),
        );
        by_route.insert(route.into(), found.clone());
        found
    })
}

fn in_flight() -> &'static Gauge {
    static IN_FLIGHT: OnceLock<Gauge> = OnceLock::new();
    IN_FLIGHT.get_or_init(|| metrics::gauge!(HTTP_IN_FLIGHT))
}

struct InFlight;

impl InFlight {
    fn enter() -> Self {
        in_flight().increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        in_flight().decrement(1.0);
    }
}

/// One access log line and the request metrics, per request.
pub async fn observe(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let _in_flight = InFlight::enter();
    let method = method_label(request.method());
    // An `Arc<str>` inside: cloning it copies no text.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    // The access log's own fields, read only when it is on.
    let logged = tracing::enabled!(target: "skiff::access", tracing::Level::INFO).then(|| {
        let id = request.headers().get(&REQUEST_ID).cloned();
        (request.uri().path().to_owned(), id)
    });

    let response = next.run(request).await;

    let elapsed = start.elapsed();
    let status = response.status().as_u16();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let (requests, duration) = request_metrics(method, route, status);
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
    if let Some((path, request_id)) = logged {
        let request_id = request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        tracing::info!(
            target: "skiff::access",
            method,
            path,
            route,
            status,
            latency_us = elapsed.as_micros() as u64,
            request_id,
            "request"
        );
    }
    response
}

/// The status label, without formatting for the common ones.
fn status_label(status: u16) -> SharedString {
    let text = match status {
        200 => "200",
        201 => "201",
        204 => "204",
        304 => "304",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        412 => "412",
        413 => "413",
        415 => "415",
        422 => "422",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => return SharedString::from(status.to_string()),
    };
    SharedString::const_str(text)
}

/// Request ids for requests that come without one: UUID-shaped, unique within
/// the process (a counter through a bijective mix) and unpredictable across
/// processes (a random seed), without a `getrandom` system call per request.
#[derive(Clone, Copy, Default)]
pub struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        static SEED: std::sync::LazyLock<(u64, u64)> = std::sync::LazyLock::new(|| {
            let state = std::collections::hash_map::RandomState::new();
            (state.hash_one(1u8), state.hash_one(2u8))
        });
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let (high, low) = *SEED;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let low = mix(n ^ low);
        let id = format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            high >> 32,
            (high >> 16) & 0xffff,
            high & 0xfff,
            0x8000 | ((low >> 48) & 0x3fff),
            low & 0xffff_ffff_ffff,
        );
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// splitmix64's finalizer: a bijection on u64, so distinct counters give
/// distinct ids.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Sheds load: past `SKIFF_MAX_CONCURRENCY` requests in flight, answers
/// `503` with `Retry-After` at once instead of queueing.
pub async fn shed_load(
    State(slots): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    match slots.try_acquire() {
        Ok(_slot) => next.run(request).await,
        Err(_) => {
            metrics::counter!(REQUESTS_SHED).increment(1);
            Error::Unavailable {
                detail: "the server is at its concurrency limit; retry shortly".into(),
                retry_after: Some(1),
            }
            .into_response()
        }
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or any request with
/// more than one, is `400`. HTTP/1.0 may leave `Host` out. Applied to
/// requests read from a socket (`server::serve`), not to the router itself,
/// so requests built in-process need not name a host.
pub async fn require_host(request: Request, next: Next) -> Response {
    let hosts = request.headers().get_all(header::HOST).iter().count();
    let required = request.version() == axum::http::Version::HTTP_11;
    match hosts {
        0 if required => {
            Error::bad_request("an HTTP/1.1 request needs a Host header").into_response()
        }
        0 | 1 => next.run(request).await,
        _ => Error::bad_request("a request may have only one Host header").into_response(),
    }
}

/// What [`read_body`] needs: `SKIFF_BODY_TIMEOUT`, `SKIFF_REQUEST_TIMEOUT`
/// and the application (when serving it; to know its Lua scripts).
#[derive(Clone)]
pub struct BodyReading {
    pub gap: Duration,
    pub total: Duration,
    pub app: Option<AppState>,
}

/// Reads a matched route's request body in full before anything scarce is
/// taken for it (the concurrency slot of [`shed_load`], a database
/// connection, a Lua worker: all come after this), so a client trickling
/// its body holds only its own connection. The next piece of the body must
/// come within `SKIFF_BODY_TIMEOUT` and the whole body within
/// `SKIFF_REQUEST_TIMEOUT` (which starts counting for the handler only
/// after this), else `408` and the connection is closed.
///
/// A request that matched no route (a `404`), or a script that does not
/// exist, is answered without reading its body.
pub async fn read_body(
    State(reading): State<BodyReading>,
    request: Request,
    next: Next,
) -> Response {
    if request.extensions().get::<MatchedPath>().is_none() {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    #[cfg(feature = "lua")]
    if let Some(app) = &reading.app
        && let Some(refused) = super::lua::refuse_unknown_script(app, &mut parts).await
    {
        return refused;
    }
    #[cfg(not(feature = "lua"))]
    let _ = (&mut parts, &reading.app);
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    match collect_body(body, reading.gap, reading.total).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => {
            let mut response = e.into_response();
            // The rest of the body is not read: the connection cannot carry
            // another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

/// The whole body, each piece within `gap` of the one before and all of it
/// within `total`.
async fn collect_body(mut body: Body, gap: Duration, total: Duration) -> Result<Bytes, Error> {
    let start = tokio::time::Instant::now();
    let deadline = start + total;
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        let wait = (tokio::time::Instant::now() + gap).min(deadline);
        match tokio::time::timeout_at(wait, body.frame()).await {
            Err(_) => {
                metrics::counter!(BODY_TIMEOUTS).increment(1);
                return Err(Error::RequestTimeout(if wait == deadline {
                    format!("the request body took longer than {total:?} to arrive")
                } else {
                    format!("no more of the request body came for {gap:?}")
                }));
            }
            Ok(None) => break,
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    chunks.push(data);
                }
            }
            Ok(Some(Err(e))) => {
                return Err(if is_over_limit(&e) {
                    Error::PayloadTooLarge("the request body is larger than the limit".into())
                } else {
                    Error::bad_request("the request body could not be read")
                });
            }
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => Bytes::from(chunks.concat()),
    })
}

/// Whether a body error is the body limit's.
fn is_over_limit(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Gives every bare error response made outside a handler (405 from the
/// router, 413 from the body limit, 503 from the timeout, axum's plain-text
/// rejections) a problem+json body, keeping its headers (such as `Allow`).
/// Error responses with a body of another type (the readiness JSON, a Lua
/// script's own answer marked [`Verbatim`]) are left as they are.
pub fn problem_for_bare_errors<B>(response: axum::http::Response<B>) -> Response
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let status = response.status();
    let bare = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if status.as_u16() < 400 || !bare || response.extensions().get::<Verbatim>().is_some() {
        return response.map(axum::body::Body::new);
    }
    let detail = match status {
        StatusCode::METHOD_NOT_ALLOWED => "the method is not allowed on this route; see Allow",
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is larger than the limit",
        StatusCode::SERVICE_UNAVAILABLE => "the request took longer than the timeout",
        StatusCode::REQUEST_TIMEOUT => "the request took longer than the timeout",
        _ => status.canonical_reason().unwrap_or("error"),
    };
    let (mut parts, _) = response.into_parts();
    let problem = Problem::new(status, detail).into_response();
    let (problem_parts, body) = problem.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        problem_parts.headers[header::CONTENT_TYPE].clone(),
    );
    Response::from_parts(parts, body)
}

/// The fallback route: a 404 problem naming what was asked for.
pub async fn not_found(method: Method, uri: axum::http::Uri) -> Error {
    Error::NotFound(format!("no route for {method} {}", uri.path()))
}

/// A panic in a handler becomes a 500 problem and an error log line; the
/// connection and the server live on.
pub fn panic_to_problem(payload: Box<dyn Any + Send + 'static>) -> Response {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into());
    tracing::error!(panic = %message, "handler panicked");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "an unexpected error happened; it has been logged",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_distinct_and_uuid_shaped() {
        let request = axum::http::Request::new(());
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| {
                let id = MakeId.make_request_id(&request).unwrap();
                id.header_value().to_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            let groups: Vec<_> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(
                id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
                "{id}"
            );
        }
    }
}
