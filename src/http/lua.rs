//! `/lua` and `/lua/{name}`: Lua scripts run in the sandbox (see
//! `crate::lua`). A script's response goes out as the script made it, even
//! a 4xx or 5xx; failures of the run itself are problems.

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::error::{Error, Problem, Verbatim};
use crate::http::headers::query_pairs;
use crate::lua::{LuaRequest, LuaResponse, RunError, ScriptName, Target};
use crate::state::AppState;

/// The tag of these routes.
#[derive(OpenApi)]
#[openapi(tags((name = "lua", description = "Lua scripts run in a sandbox with memory and time limits")))]
struct Tag;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(Tag::openapi())
        .routes(routes!(hello))
        // Documented for the methods OpenAPI knows; any other reaches the
        // script too (as `axum::routing::any` did).
        .routes(routes!(script).map(|methods| methods.fallback(script)))
}

/// `hello world`, answered by the Lua chunk `response 'hello world'` run in the sandbox.
#[utoipa::path(get, path = "/lua", tag = "lua", operation_id = "lua_hello",
    responses(
        (status = 200, description = "The chunk's answer", body = String, content_type = "text/plain", example = "hello world"),
        (status = 503, description = "Every Lua worker is busy (see `Retry-After`)", body = Problem, content_type = "application/problem+json")))]
pub async fn hello(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
) -> Result<Response, Error> {
    let request = LuaRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        ..LuaRequest::default()
    };
    let response = state.lua.run(Target::Hello, request).await?;
    Ok(verbatim(response))
}

/// Runs the script `{name}.lua` of the scripts directory, with any method.
///
/// The script sees a global `request` table: `method`, `path` (the full
/// path, e.g. `/lua/echo`), `query` (name → first value), `headers`
/// (lower-case names; repeated headers joined with `, `) and `body`. It
/// answers with `response(body [, status [, headers]])`: status 200–599
/// (default 200), `content-type` defaulting to `text/plain; charset=utf-8`.
/// That response is passed through as is, whatever its status. Each run
/// has its own globals and is limited in memory (`SKIFF_LUA_MEMORY`) and
/// time (`SKIFF_LUA_TIMEOUT`).
#[utoipa::path(method(get, post, put, patch, delete, head, options, trace), path = "/lua/{name}", tag = "lua",
    // One id per method: `lua_script_get`, `lua_script_post`… (openapi::document).
    operation_id = "lua_script",
    params(("name" = String, Path, description = "The script name, `[A-Za-z0-9_-]{1,64}`", example = "echo")),
    request_body(content = serde_json::Value, description = "Any body, of any media type, or none; the script sees it as `request.body`", content_type = "*/*"),
    responses(
        (status = 200, description = "What the script answered: any status, headers and body it chose (any media type, any content)", body = serde_json::Value, content_type = "*/*"),
        (status = 404, description = "No script by that name (or not a valid script name)", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The script failed (the detail names its file and line), exceeded its memory limit, or never called `response`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The script exceeded its time limit, or every Lua worker is busy (then with `Retry-After`)", body = Problem, content_type = "application/problem+json")))]
pub async fn script(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let not_found = || Error::NotFound(format!("no Lua script at {}", uri.path()));
    let name = name
        .ok()
        .and_then(|Path(name)| ScriptName::parse(&name))
        .ok_or_else(not_found)?;
    if !state.lua.has_script(&name) {
        return Err(not_found());
    }
    let request = LuaRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: query_pairs(&uri),
        headers: headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect(),
        body: body.to_vec(),
    };
    let response = state.lua.run(Target::Script(name), request).await?;
    Ok(verbatim(response))
}

/// A request for `/lua/{name}` naming no script: answered `404` before its
/// body is read (see `middleware::read_body`). `None` for any other request.
pub async fn refuse_unknown_script(
    state: &AppState,
    parts: &mut axum::http::request::Parts,
) -> Option<Response> {
    use axum::extract::{FromRequestParts, MatchedPath};
    use axum::response::IntoResponse;
    let matched = parts.extensions.get::<MatchedPath>()?;
    if matched.as_str() != "/lua/{name}" {
        return None;
    }
    let known = Path::<String>::from_request_parts(parts, state)
        .await
        .ok()
        .and_then(|Path(name)| ScriptName::parse(&name))
        .is_some_and(|name| state.lua.has_script(&name));
    (!known)
        .then(|| Error::NotFound(format!("no Lua script at {}", parts.uri.path())).into_response())
}

/// The script's response, marked so that the problem mapper leaves it be.
fn verbatim(response: LuaResponse) -> Response {
    let mut out = Response::new(Body::from(response.body));
    *out.status_mut() = axum::http::StatusCode::from_u16(response.status)
        .expect("the sandbox only accepts statuses 200-599");
    let headers = out.headers_mut();
    for (name, value) in response.headers {
        headers.append(name, value);
    }
    out.extensions_mut().insert(Verbatim);
    out
}

impl From<RunError> for Error {
    fn from(e: RunError) -> Self {
        let detail = e.to_string();
        match e {
            RunError::Busy => Error::Unavailable {
                detail,
                retry_after: Some(1),
            },
            RunError::TimeLimit { .. } => Error::unavailable(detail),
            RunError::Missing { .. } => Error::NotFound(detail),
            RunError::MemoryLimit { .. }
            | RunError::Script { .. }
            | RunError::NoResponse { .. }
            | RunError::Internal { .. } => Error::Internal(detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    #[test]
    fn limit_and_busy_errors_map_to_their_statuses() {
        let busy = Error::from(RunError::Busy).into_response();
        assert_eq!(busy.status(), 503);
        assert_eq!(busy.headers()["retry-after"], "1");
        let time = RunError::TimeLimit {
            script: "spin.lua".into(),
            limit: std::time::Duration::from_millis(100),
        };
        assert_eq!(Error::from(time).status(), 503);
        let memory = RunError::MemoryLimit {
            script: "hog.lua".into(),
            limit: 16 << 20,
        };
        let err = Error::from(memory);
        assert_eq!(err.status(), 500);
        assert!(err.to_string().contains("16 MiB"), "{err}");
    }
}
