//! Cross-cutting HTTP concerns: the access log and request metrics, problem
//! bodies for errors produced outside handlers, and panics.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{Error, Problem};
use tokio::sync::Semaphore;

use crate::telemetry::{HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS, REQUESTS_SHED};

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

struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!(HTTP_IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(HTTP_IN_FLIGHT).decrement(1.0);
    }
}

/// One access log line and the request metrics, per request.
pub async fn observe(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let _in_flight = InFlight::enter();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let path = request.uri().path().to_owned();
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();

    let response = next.run(request).await;

    let elapsed = start.elapsed();
    let status = response.status().as_u16();
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(elapsed.as_secs_f64());
    tracing::info!(
        target: "skiff::access",
        method,
        path,
        route = labels[1].1,
        status,
        latency_us = elapsed.as_micros() as u64,
        request_id,
        "request"
    );
    response
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

/// Gives every bare error response made outside a handler (405 from the
/// router, 413 from the body limit, 503 from the timeout, axum's plain-text
/// rejections) a problem+json body, keeping its headers (such as `Allow`).
/// Error responses with a body of another type (the readiness JSON, a Lua
/// script's own answer marked [`Verbatim`]) are left as they are.
pub async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    let bare = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if status.as_u16() < 400 || !bare || response.extensions().get::<Verbatim>().is_some() {
        return response;
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
