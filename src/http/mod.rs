//! The HTTP surface: one file per resource, each with its `router()`, put
//! together here under the shared middleware.

mod demo;
mod health;
mod metrics;
pub mod middleware;
pub mod openapi;
mod time;

#[cfg(feature = "docs")]
mod docs;
#[cfg(feature = "ip")]
mod ip;
#[cfg(feature = "lua")]
mod lua;
#[cfg(feature = "users")]
mod users;

use axum::Router;
use axum::http::{HeaderName, StatusCode};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;

use crate::app::AppState;
use crate::config::Config;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole application router with its middleware.
pub fn router(state: AppState) -> Router {
    let config = &state.config;
    let routes = Router::new()
        .merge(demo::router())
        .merge(time::router())
        .merge(health::router())
        .merge(metrics::router())
        .merge(openapi::router());
    #[cfg(feature = "ip")]
    let routes = routes.merge(ip::router());
    #[cfg(feature = "lua")]
    let routes = routes.merge(lua::router());
    #[cfg(feature = "users")]
    let routes = routes.merge(users::router(&state));
    #[cfg(feature = "docs")]
    let routes = routes.merge(docs::router());

    with_middleware(
        routes
            .fallback(middleware::not_found)
            .with_state(state.clone()),
        config,
    )
}

/// Wraps `routes` in the shared middleware. Each `layer` wraps the ones
/// before it, so the last is the outermost: every response, even a panic's,
/// gets a request id, an access log line, compression, and a problem body
/// when it is a bare error.
pub fn with_middleware(routes: Router, config: &Config) -> Router {
    routes
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(config.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            config.request_timeout,
        ))
        .layer(CatchPanicLayer::custom(middleware::panic_to_problem))
        .layer(axum::middleware::map_response(
            middleware::problem_for_bare_errors,
        ))
        .layer(CompressionLayer::new())
        .layer(axum::middleware::from_fn(middleware::observe))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}
