//! Cross-cutting HTTP concerns: the access log and request metrics, problem
//! bodies for errors produced outside handlers, and panics.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};

use crate::error::{Error, Problem, Verbatim};
use crate::state::AppState;
use metrics::{Counter, Gauge, Histogram, Label, SharedString};
use tokio::sync::Semaphore;
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::telemetry::{
    self, AccessLine, BODY_TIMEOUTS, HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS, REQUESTS_SHED,
};

use super::REQUEST_ID;

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
    let logged = tracing::enabled!(target: telemetry::ACCESS_TARGET, tracing::Level::INFO)
        .then(|| AccessEntry::from_request(method, &request));

    let response = next.run(request).await;

    let elapsed = start.elapsed();
    let status = response.status().as_u16();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let (requests, duration) = request_metrics(method, route, status);
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
    telemetry::duration_recorded();
    let Some(mut entry) = logged else {
        return response;
    };
    entry.route = matched;
    entry.status = status;
    entry.latency_us = elapsed.as_micros() as u64;
    // A body of known size (most answers) is logged now with that size; a
    // streamed one (gzip, a long file) once its last byte has been handed
    // to the connection, or the client has gone, with the bytes sent.
    if let Some(bytes) = hyper::body::Body::size_hint(response.body()).exact() {
        entry.emit(bytes);
        return response;
    }
    response.map(|body| {
        Body::new(CountedBody {
            inner: body,
            sent: 0,
            entry: Some(Box::new(entry)),
        })
    })
}

/// The fields of one access log line.
struct AccessEntry {
    method: &'static str,
    path: String,
    route: Option<MatchedPath>,
    status: u16,
    latency_us: u64,
    request_id: Option<HeaderValue>,
    client: Option<IpAddr>,
    user_agent: Option<HeaderValue>,
    traceparent: Option<HeaderValue>,
}

/// User agents are cut to this many bytes in the log.
const MAX_LOGGED_USER_AGENT: usize = 256;

impl AccessEntry {
    fn from_request(method: &'static str, request: &Request) -> Self {
        let headers = request.headers();
        // Header values are reference-counted: these clones copy no bytes.
        let only = |name| {
            let mut values = headers.get_all(name).iter();
            match (values.next(), values.next()) {
                (Some(v), None) => Some(v.clone()),
                _ => None,
            }
        };
        AccessEntry {
            method,
            path: request.uri().path().to_owned(),
            route: None,
            status: 0,
            latency_us: 0,
            request_id: headers.get(&REQUEST_ID).cloned(),
            client: request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
            user_agent: headers.get(header::USER_AGENT).cloned(),
            traceparent: only(TRACEPARENT),
        }
    }

    /// Writes the line, `bytes` being the size of the response body.
    fn emit(&self, bytes: u64) {
        let request_id = self
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // `to_str` admits visible ASCII only, so any cut is a char boundary.
        let user_agent = self
            .user_agent
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(|ua| &ua[..ua.len().min(MAX_LOGGED_USER_AGENT)]);
        AccessLine {
            method: self.method,
            path: &self.path,
            route: self.route.as_ref().map_or("unmatched", MatchedPath::as_str),
            status: self.status,
            latency_us: self.latency_us,
            bytes,
            client_addr: self.client,
            user_agent,
            request_id,
            trace_id: self.traceparent.as_ref().and_then(trace_id),
        }
        .write();
    }
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The trace id of a W3C Trace Context `traceparent` header
/// (`version-traceid-parentid-flags`, lower-case hex), or `None` when the
/// header is not valid: a version `ff`, an all-zero trace or parent id, a
/// version-00 header with anything after the flags.
pub fn trace_id(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let b = text.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |s: &[u8]| s.iter().all(|&c| c == b'0');
    let (version, trace, parent, flags) = (&b[0..2], &b[3..35], &b[36..52], &b[53..55]);
    let valid = hex(version)
        && version != b"ff"
        && hex(trace)
        && !zero(trace)
        && hex(parent)
        && !zero(parent)
        && hex(flags)
        // Later versions may add fields after the flags, behind a '-'.
        && (b.len() == 55 || (version != b"00" && b[55] == b'-'));
    valid.then(|| &text[3..35])
}

/// A response body that counts the bytes handed to the connection and
/// writes the access log line when it ends or is dropped.
struct CountedBody {
    inner: Body,
    sent: u64,
    entry: Option<Box<AccessEntry>>,
}

impl CountedBody {
    fn finish(&mut self) {
        if let Some(entry) = self.entry.take() {
            entry.emit(self.sent);
        }
    }
}

impl hyper::body::Body for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Ready(None | Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        self.finish();
    }
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

/// Longest client `x-request-id` kept (see [`usable_request_id`]).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether a client's `x-request-id` is kept: 1 to 128 characters of
/// `A-Z a-z 0-9 - _ . : + / =` (UUIDs, hex, base64, ULIDs, dotted ids).
/// Anything else (control characters, spaces, quotes, non-ASCII, a long
/// value) is replaced by a fresh id, so it is neither echoed nor logged.
pub fn usable_request_id(value: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b))
}

/// Removes a client's `x-request-id` that is not [usable](usable_request_id)
/// (or sent more than once), so that a fresh one is made in its place.
pub fn drop_unusable_request_id<B>(mut request: axum::http::Request<B>) -> axum::http::Request<B> {
    let headers = request.headers_mut();
    let usable = {
        let mut values = headers.get_all(&REQUEST_ID).iter();
        match (values.next(), values.next()) {
            (None, _) => return request,
            (Some(v), None) => usable_request_id(v.as_bytes()),
            (Some(_), Some(_)) => false,
        }
    };
    if !usable {
        headers.remove(&REQUEST_ID);
    }
    request
}

/// Request ids for requests that come without a usable one: random UUIDs
/// (version 4), 122 bits from rand's thread-local generator (ChaCha12,
/// seeded from the operating system), without a system call per request.
#[derive(Clone, Copy, Default)]
pub struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&random_uuid())
            .ok()
            .map(RequestId::new)
    }
}

/// A random (version 4, RFC 9562) UUID in its hyphenated form.
pub fn random_uuid() -> String {
    let bits: u128 = rand::random();
    let uuid = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        uuid >> 96,
        (uuid >> 80) & 0xffff,
        (uuid >> 64) & 0xffff,
        (uuid >> 48) & 0xffff,
        uuid & 0xffff_ffff_ffff,
    )
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

    fn generated_id() -> String {
        let request = axum::http::Request::new(());
        let id = MakeId.make_request_id(&request).unwrap();
        id.header_value().to_str().unwrap().to_owned()
    }

    #[test]
    fn generated_request_ids_are_distinct_random_uuid_v4s() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| generated_id()).collect();
        assert_eq!(ids.len(), 10_000);
        // No two share their first 64 bits (the old ids shared them for the
        // life of the process): these are random, not a counter behind a
        // fixed prefix.
        let prefixes: std::collections::HashSet<&str> = ids.iter().map(|id| &id[..18]).collect();
        assert_eq!(prefixes.len(), 10_000);
        for id in ids.iter().take(100) {
            let groups: Vec<_> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(
                id.chars()
                    .all(|c| c == '-' || matches!(c, '0'..='9' | 'a'..='f')),
                "{id}"
            );
            assert_eq!(&id[14..15], "4", "version 4: {id}");
            assert!(
                matches!(&id[19..20], "8" | "9" | "a" | "b"),
                "RFC variant: {id}"
            );
        }
    }

    #[test]
    fn client_request_ids_are_kept_only_when_short_and_plain() {
        for good in [
            "abc",
            "0192f0c4-8d3e-7c1a-9b7e-2f1d3c4b5a69",
            "a.b:c_d+e/f=",
            &"x".repeat(128),
        ] {
            assert!(usable_request_id(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "",
            &"x".repeat(129),
            "a b",
            "a\tb",
            "a\nb",
            "a\u{0}b",
            "\"quoted\"",
            "a<script>",
            "caf\u{e9}",
            "a,b",
            "a;b",
        ] {
            assert!(!usable_request_id(bad.as_bytes()), "{bad:?}");
        }
        let mut two = axum::http::Request::new(());
        two.headers_mut()
            .append(&REQUEST_ID, HeaderValue::from_static("a"));
        two.headers_mut()
            .append(&REQUEST_ID, HeaderValue::from_static("b"));
        assert!(
            drop_unusable_request_id(two)
                .headers()
                .get(&REQUEST_ID)
                .is_none()
        );
    }

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        let id = |v: &'static str| trace_id(&HeaderValue::from_static(v)).map(str::to_owned);
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            id(good).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // A later version may carry more fields.
        assert!(id("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(id(bad), None, "{bad:?}");
        }
    }
}
