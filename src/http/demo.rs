//! The demo routes of the guides skiff learns from: `/` and `/hello`.

use axum::Router;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use utoipa::OpenApi;

use crate::http::headers::accept_quality;
use crate::state::AppState;

// With the users feature, `GET /` also serves the `?id=` compatibility
// route, so `http::users` routes and documents it (and calls [`root`]).
#[derive(OpenApi)]
#[cfg_attr(not(feature = "users"), openapi(paths(root, hello)))]
#[cfg_attr(feature = "users", openapi(paths(hello)))]
pub struct Api;

pub fn router() -> Router<AppState> {
    let router = Router::new().route("/hello", get(hello));
    #[cfg(not(feature = "users"))]
    let router = router.route("/", get(root));
    router
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
#[utoipa::path(get, path = "/", tag = "demo",
    responses((status = 200, description = "`Hello World` as text/plain; an HTML landing page when the Accept header prefers text/html",
        content((String = "text/plain", example = "Hello World"), (String = "text/html")))))]
pub async fn root(headers: HeaderMap) -> Response {
    if prefers_html(&headers) {
        Html(LANDING).into_response()
    } else {
        "Hello World".into_response()
    }
}

/// `hello`
#[utoipa::path(get, path = "/hello", tag = "demo",
    responses((status = 200, description = "The word hello", body = String, content_type = "text/plain", example = "hello")))]
pub async fn hello() -> &'static str {
    "hello"
}

/// Whether the `Accept` header ranks `text/html` above `text/plain`
/// (a browser does; `curl`'s `*/*` does not).
pub fn prefers_html(headers: &HeaderMap) -> bool {
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
