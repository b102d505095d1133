//! The `?id=` compatibility routes on `/`, for clients of the original API:
//! `POST /`, `PUT /?id=` and `DELETE /?id=` answer as their `/users`
//! counterparts. (`GET /?id=` is answered through `GET /`, in `http/root.rs`.)

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Authorized, authorize};
use super::body::{JsonBody, UserInput};
use super::responses::{
    Created, Deleted, EmailTaken, Invalid, Malformed, NoSuchUser, NotJson, Stale, Stored, TooLarge,
    Unauthorized,
};
use super::{create, parse_id, remove, show, update};
use crate::db::{UserFields, UserId};
use crate::error::{Error, FieldError};
use crate::http::headers::first_query_param;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(root_post, root_put, root_delete))
}

/// A user id taken from `?id=` (the compatibility routes): required.
struct QueryId(UserId);

impl FromRequestParts<AppState> for QueryId {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Error> {
        match first_query_param(&parts.uri, "id") {
            Some(text) => parse_id(&text).map(QueryId),
            None => Err(Error::BadRequest {
                detail: "the id query parameter is required".into(),
                errors: vec![FieldError::new("id", "is required")],
            }),
        }
    }
}

/// `GET /?id=`, called by `GET /` when it has an `id`: the user, as
/// `GET /users/{id}` answers.
pub(in crate::http) async fn get(
    state: &AppState,
    id: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, Error> {
    authorize(state, &Method::GET, uri, headers)?;
    show(state, parse_id(id)?, headers).await
}

/// Create a user, as `POST /users` (for clients of the original API).
#[utoipa::path(post, path = "/", tag = "users",
    security((), ("basic" = [])),
    request_body(content = UserInput, content_type = "application/json"),
    responses(
        Created, Malformed, Unauthorized, EmailTaken, TooLarge, NotJson, Invalid,
    ))]
async fn root_post(
    _: Authorized,
    State(state): State<AppState>,
    JsonBody(fields): JsonBody<UserFields>,
) -> Result<Response, Error> {
    create(&state, fields).await
}

/// Replace a user, as `PUT /users/{id}` (for clients of the original API).
#[utoipa::path(put, path = "/", tag = "users",
    security((), ("basic" = [])),
    params(
        ("id" = String, Query, description = "The user's id"),
        ("If-Match" = Option<String>, Header, pattern = r#"^(\*|"[!#-~]*"( *, *"[!#-~]*")*)$"#, description = "Only replace if the user's current ETag is one of these strong tags, or `*` for any"),
    ),
    request_body(content = UserInput, content_type = "application/json"),
    responses(
        Stored,
        (status = 400, description = "No `id`, malformed JSON, a wrong JSON type or an unknown field", body = crate::error::Problem, content_type = "application/problem+json"),
        Unauthorized, NoSuchUser, EmailTaken, Stale, TooLarge, NotJson, Invalid,
    ))]
async fn root_put(
    _: Authorized,
    State(state): State<AppState>,
    QueryId(id): QueryId,
    headers: HeaderMap,
    JsonBody(fields): JsonBody<UserFields>,
) -> Result<Response, Error> {
    update(&state, id, &headers, fields.into()).await
}

/// Delete a user, as `DELETE /users/{id}` (for clients of the original API).
#[utoipa::path(delete, path = "/", tag = "users",
    security((), ("basic" = [])),
    params(
        ("id" = String, Query, description = "The user's id"),
        ("If-Match" = Option<String>, Header, pattern = r#"^(\*|"[!#-~]*"( *, *"[!#-~]*")*)$"#, description = "Only delete if the user's current ETag is one of these strong tags, or `*` for any"),
    ),
    responses(
        Deleted,
        (status = 400, description = "No `id`", body = crate::error::Problem, content_type = "application/problem+json"),
        Unauthorized, NoSuchUser, Stale,
    ))]
async fn root_delete(
    _: Authorized,
    State(state): State<AppState>,
    QueryId(id): QueryId,
    headers: HeaderMap,
) -> Result<Response, Error> {
    remove(&state, id, &headers).await
}
