//! `/`: `Hello World`, or a small landing page for a browser. With the users
//! feature, `GET /?id=` also answers as `GET /users/{id}` (for clients of
//! the original `?id=` API; its other methods are in `users/compat.rs`).

use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::headers::accept_quality;
use crate::state::AppState;
#[cfg(feature = "users")]
use {
    crate::error::Error,
    crate::http::headers::first_query_param,
    axum::{extract::State, http::Uri},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(root))
}

const LANDING: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>skiff</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><h1>skiff</h1><p>Hello World</p>
<ul><li><a href="/docs">API reference</a></li>
<li><a href="/openapi.json">OpenAPI document</a></li>
<li><a href="/metrics">Metrics</a></li></ul></body></html>
"#;

/// `Hello World`, or a small landing page for a browser.
#[cfg(not(feature = "users"))]
#[utoipa::path(get, path = "/", tag = "demo",
    responses((status = 200, description = "`Hello World` as text/plain; an HTML landing page when the Accept header prefers text/html",
        content((String = "text/plain", example = "Hello World"), (String = "text/html")))))]
pub async fn root(headers: HeaderMap) -> Response {
    landing(&headers)
}

/// `Hello World` (a landing page for browsers); with `?id=`, the user, as
/// `GET /users/{id}` (for clients of the original `?id=` API).
#[cfg(feature = "users")]
#[utoipa::path(get, path = "/", tag = "demo", operation_id = "root_get",
    security((), ("basic" = [])),
    params(
        ("id" = Option<String>, Query, description = "A user id: answers as GET /users/{id} (credentials needed when configured)"),
        ("If-None-Match" = Option<String>, Header, description = "With `id`: ETags the client has; a match gives 304"),
    ),
    responses(
        (status = 200, description = "Without `id`: `Hello World` as text/plain, or an HTML landing page when the Accept header prefers text/html. With `id`: the user, with its ETag",
            content((String = "text/plain", example = "Hello World"), (String = "text/html"), (crate::db::User = "application/json")),
            headers(("ETag" = String, description = "With `id`: strong entity tag of this version"))),
        (status = 304, description = "With `id`: not modified, `If-None-Match` matched"),
        (status = 401, description = "With `id`: credentials are required and missing or wrong", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "With `id`: no user has this id", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn root(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Error> {
    match first_query_param(&uri, "id") {
        Some(id) => super::users::compat::get(&state, &id, &uri, &headers).await,
        None => Ok(landing(&headers)),
    }
}

fn landing(headers: &HeaderMap) -> Response {
    if prefers_html(headers) {
        Html(LANDING).into_response()
    } else {
        "Hello World".into_response()
    }
}

/// Whether the `Accept` header ranks `text/html` above `text/plain`
/// (a browser does; `curl`'s `*/*` does not).
fn prefers_html(headers: &HeaderMap) -> bool {
    accept_quality(headers, "text", "html") > accept_quality(headers, "text", "plain")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, value.parse().unwrap());
        h
    }

    #[test]
    fn browsers_get_html_and_curl_gets_text() {
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(prefers_html(&accept(firefox)));
        assert!(!prefers_html(&accept("*/*")));
        assert!(!prefers_html(&HeaderMap::new()));
        assert!(!prefers_html(&accept("text/plain, text/html;q=0.5")));
        assert!(!prefers_html(&accept("text/html;q=0.5, text/*")));
        assert!(prefers_html(&accept("text/html, text/plain;q=0.9")));
    }
}
