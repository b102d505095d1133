//! The HTTP surface: one file per resource, each with its `router()`
//! declaring its routes once (handler and OpenAPI operation together, with
//! `utoipa_axum::routes!`), put together here under the shared middleware.

pub mod headers;
mod health;
mod hello;
mod metrics;
pub mod middleware;
pub mod openapi;
mod root;
mod time;

#[cfg(feature = "docs")]
mod docs;
#[cfg(feature = "ip")]
mod ip;
#[cfg(feature = "lua")]
mod lua;
#[cfg(feature = "users")]
mod users;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::body::Limited;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, Predicate};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use utoipa_axum::router::OpenApiRouter;

use crate::config::{Config, CorsOrigins};
use crate::state::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The API's routes, for the features compiled in, with their OpenAPI
/// operations: the routes that shed load under overload.
fn api() -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::with_openapi(openapi::base())
        .merge(root::router())
        .merge(hello::router())
        .merge(time::router());
    #[cfg(feature = "ip")]
    let api = api.merge(ip::router());
    #[cfg(feature = "lua")]
    let api = api.merge(lua::router());
    #[cfg(feature = "users")]
    let api = api.merge(users::router());
    #[cfg(feature = "docs")]
    let api = api.merge(docs::router());
    api.merge(openapi::router())
}

/// Probes and metrics: they always answer, even under overload.
fn operations() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(health::router())
        .merge(metrics::router())
}

/// Every route and its operation (for [`openapi::document`]).
fn routes() -> OpenApiRouter<AppState> {
    api().merge(operations())
}

/// The whole application router with its middleware.
pub fn router(state: AppState) -> Router {
    let config = &state.config;
    let api = api();
    // Under overload the API sheds load; probes and metrics always answer.
    let api = if config.max_concurrency > 0 {
        let slots = Arc::new(Semaphore::new(config.max_concurrency));
        api.route_layer(axum::middleware::from_fn_with_state(
            slots,
            middleware::shed_load,
        ))
    } else {
        api
    };
    let (routes, _document) = api.merge(operations()).split_for_parts();
    layered(
        routes
            .fallback(middleware::not_found)
            .with_state(state.clone()),
        config,
        Some(state.clone()),
    )
}

/// A response with an `ETag` (a user) is not compressed: a strong tag names
/// one representation, so the gzip one would need a tag of its own, and
/// `If-Match` (strong comparison) would then fail for clients that read the
/// user gzipped. A user is a few hundred bytes; /docs sends its own
/// pre-compressed files with a tag per encoding.
fn no_etag(_: StatusCode, _: axum::http::Version, headers: &HeaderMap, _: &Extensions) -> bool {
    !headers.contains_key(header::ETAG)
}

/// Wraps `routes` in the shared middleware, outermost first: every response,
/// even a panic's, gets a request id, an access log line and the request
/// metrics, compression, and a problem body when it is a bare error; a
/// matched route's body is read in full before the request timeout starts
/// and before the concurrency slot is taken ([`middleware::read_body`]). Each
/// `Router::layer` boxes a service per route, so the layers are grouped into
/// three concrete stacks rather than applied one by one.
pub fn with_middleware(routes: Router, config: &Config) -> Router {
    layered(routes, config, None)
}

/// [`with_middleware`], with the application's state when there is one
/// (for [`middleware::read_body`] to refuse unknown Lua scripts).
fn layered(routes: Router, config: &Config, app: Option<AppState>) -> Router {
    let reading = middleware::BodyReading {
        gap: config.body_timeout,
        total: config.request_timeout,
        app,
    };
    let inner = ServiceBuilder::new()
        .layer(CompressionLayer::new().compress_when(DefaultPredicate::new().and(no_etag)))
        .layer(CatchPanicLayer::custom(middleware::panic_to_problem))
        .map_response(middleware::problem_for_bare_errors)
        .layer(RequestBodyLimitLayer::new(config.body_limit))
        .map_request(|r: axum::http::Request<Limited<Body>>| r.map(Body::new))
        .layer(axum::middleware::from_fn_with_state(
            reading,
            middleware::read_body,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            config.request_timeout,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable());
    let ids = ServiceBuilder::new()
        .map_request(middleware::drop_unusable_request_id)
        .layer(SetRequestIdLayer::new(REQUEST_ID, middleware::MakeId))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID));
    let routes = routes.layer(inner);
    // Inside the access log and metrics, so that preflights are logged and
    // counted too; outside the routes' method dispatch, so that a preflight
    // `OPTIONS` is answered on every route.
    let routes = match &config.cors_origins {
        Some(origins) => routes.layer(cors(origins)),
        None => routes,
    };
    routes
        .layer(axum::middleware::from_fn(middleware::observe))
        .layer(ids)
}

/// How long a browser may cache a preflight answer.
const CORS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// CORS for `SKIFF_CORS_ORIGINS`: the methods and request headers the API
/// uses, and the response headers a client needs to read (`ETag` for
/// `If-Match`, `Location` of a created user, `Link` to the next page,
/// `x-request-id`, `Retry-After`). Credentials (cookies) are not allowed:
/// the API uses none; an `Authorization` header is allowed.
fn cors(origins: &CorsOrigins) -> CorsLayer {
    let allow_origin = match origins {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(
            list.iter()
                .map(|o| HeaderValue::from_str(o).expect("config checked the origin")),
        ),
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::AUTHORIZATION,
            REQUEST_ID,
            HeaderName::from_static("traceparent"),
        ])
        .expose_headers([
            header::ETAG,
            header::LOCATION,
            header::LINK,
            REQUEST_ID,
            header::RETRY_AFTER,
        ])
        .max_age(CORS_MAX_AGE)
}
