//! `/users`: the users REST API (the `?id=` compatibility routes on `/` are
//! in `users/compat.rs`).
//!
//! Handlers are short: the edge parses (auth, id, body, conditions) into
//! domain types, [`crate::db::Db`] does the one atomic step, and the answer
//! carries the user with its ETag.

mod auth;
mod body;
pub(super) mod compat;
mod preconditions;
mod responses;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::db::{DbError, PageQuery, User, UserFields, UserId, UserPatch, WriteError, model};
use crate::error::{Error, FieldError};
use crate::state::AppState;

use auth::Authorized;
use body::{JsonBody, UserInput, UserMergePatch};
use preconditions::{etag, if_match_versions, none_match_fails};
use responses::{
    Created, Deleted, EmailTaken, Invalid, Malformed, NoSuchUser, NotJson, Stale, Stored, TooLarge,
    Unauthorized,
};

/// The tag and the security scheme of these routes.
#[derive(OpenApi)]
#[openapi(
    modifiers(&BasicAuth),
    tags((name = "users", description = "Users, stored in SQLite or PostgreSQL.\n\n\
        - When the server is configured with credentials (SKIFF_API_USER and SKIFF_API_PASSWORD), \
        every users route, the `?id=` routes on `/` included, requires them as HTTP Basic \
        authentication.\n\
        - Every answer carrying one user has a strong `ETag`, `\"{id}.{version}\"`; every write \
        (even one that changes no field) makes a new version. `If-Match` on PUT, PATCH and \
        DELETE is checked atomically with the write: `412` when it does not match.\n\
        - Bodies: `400` for malformed JSON, a wrong JSON type (including `null` for a field of \
        a create or replace) or an unknown field; `422` for a missing, bad or too long email \
        or a too long name; `415` without a JSON `Content-Type`. Each lists `errors`, one per \
        field. `id`, `createdAt` and `updatedAt` in a body are ignored.\n\
        - Lists are in creation order (UUIDv7 order; across replicas, up to their clock skew) \
        and paged with `?after=` and the `Link` header."))
)]
pub struct Api;

/// Declares the optional `basic` security scheme.
struct BasicAuth;

impl Modify for BasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "Required on the users routes when the server has credentials configured",
                    ))
                    .build(),
            ),
        );
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(Api::openapi())
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, replace_user, patch_user, delete_user))
        .merge(compat::router())
}

/// Default and largest page size of the list.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// A user id taken from the path; a malformed one is simply not found.
struct PathId(UserId);

impl FromRequestParts<AppState> for PathId {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let text = Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(text)| text)
            .unwrap_or_default();
        parse_id(&text).map(PathId)
    }
}

fn parse_id(text: &str) -> Result<UserId, Error> {
    UserId::parse(text).ok_or_else(|| Error::NotFound(format!("no user with id {text:?}")))
}

fn db_error(e: DbError) -> Error {
    tracing::error!(error = %e, "database error");
    match e {
        DbError::Unavailable(_) => Error::Unavailable {
            detail: "the database is unavailable; try again".into(),
            retry_after: Some(1),
        },
        // Not over in a second: no Retry-After.
        DbError::CannotWrite(why) => Error::Unavailable {
            detail: format!("{why}: nothing was written; try again once it is fixed"),
            retry_after: None,
        },
        _ => Error::Internal("a database error happened; it has been logged".into()),
    }
}

fn write_error(id: Option<UserId>, e: WriteError) -> Error {
    match e {
        WriteError::NotFound => Error::NotFound(match id {
            Some(id) => format!("no user with id {id}"),
            None => "no such user".into(),
        }),
        WriteError::PreconditionFailed => Error::PreconditionFailed(
            "the user has changed since: its ETag no longer matches If-Match".into(),
        ),
        WriteError::DuplicateEmail => {
            Error::Conflict("a user with this email already exists (ignoring case)".into())
        }
        WriteError::Db(e) => db_error(e),
    }
}

/// The user as the body, with its ETag.
fn with_user(status: StatusCode, user: User) -> Response {
    (status, [(header::ETAG, etag(&user))], Json(user)).into_response()
}

/// The list's query, parsed: each bad parameter is named in `errors`.
fn page_query(pairs: &[(String, String)]) -> Result<(PageQuery, u32), Error> {
    let first = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut errors = Vec::new();
    let limit = match first("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                errors.push(FieldError::new(
                    "limit",
                    format!("must be an integer from 1 to {MAX_LIMIT}"),
                ));
                DEFAULT_LIMIT
            }
        },
    };
    let after = match first("after") {
        None => UserId::MIN,
        Some(text) => UserId::parse(text).unwrap_or_else(|| {
            errors.push(FieldError::new("after", "must be a user id (a UUID)"));
            UserId::MIN
        }),
    };
    if !errors.is_empty() {
        return Err(Error::BadRequest {
            detail: "the query has invalid parameters".into(),
            errors,
        });
    }
    let page = PageQuery {
        after,
        // One more than asked tells whether another page follows.
        limit: limit + 1,
        email_key: first("email").map(model::email_key),
    };
    Ok((page, limit))
}

/// List users in creation order, a page at a time.
#[utoipa::path(get, path = "/users", tag = "users",
    security((), ("basic" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000,
            description = "Page size, 1 to 1000 (default 100)"),
        ("after" = Option<String>, Query, format = "uuid",
            description = "Cursor: only users created after the user with this id, whether or not it still exists"),
        ("email" = Option<String>, Query,
            description = "Only the user with this email, compared ignoring case (a value no email can be, such as one with a control character, matches no one)"),
    ),
    responses(
        (status = 200, description = "Users in creation order. When more remain, a `Link` \
            header gives the next page", body = [User],
            headers(("Link" = String, description = "`</users?limit=N&after=ID>; rel=\"next\"` (RFC 8288), only when more users remain"))),
        (status = 400, description = "`limit` outside 1..1000 or a malformed `after`", body = crate::error::Problem, content_type = "application/problem+json"),
        Unauthorized,
    ))]
async fn list_users(
    _: Authorized,
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Error> {
    let Query(pairs) = query.map_err(|e| Error::bad_request(e.body_text()))?;
    let (page, limit) = page_query(&pairs)?;
    // No stored email holds a control character (`Email::parse` refuses
    // them), and PostgreSQL refuses NUL in text: such a filter matches no
    // one, on either back end, without asking the database.
    if page
        .email_key
        .as_deref()
        .is_some_and(|k| k.contains(char::is_control))
    {
        return Ok(Json(Vec::<User>::new()).into_response());
    }
    if page.email_key.is_none() && limit > CHUNK {
        return stream_page(state, page.after, limit).await;
    }
    let mut users = state.db.users(&page).await.map_err(db_error)?;
    let more = users.len() > limit as usize;
    users.truncate(limit as usize);
    let mut response = Json(&users).into_response();
    // The email filter matches one user at most, so it never has a next page.
    if let (true, Some(last)) = (more, users.last()) {
        let link = format!("</users?limit={limit}&after={}>; rel=\"next\"", last.id);
        response.headers_mut().insert(
            header::LINK,
            HeaderValue::from_str(&link).expect("a link of ASCII parts"),
        );
    }
    Ok(response)
}

/// Users fetched and serialized at a time when a long page is streamed.
/// At the longest fields a user is about 7.4 KB of JSON, so a chunk is at
/// most about 240 KB: what a client that stops reading can pin in memory
/// (besides the socket's buffers), however long its page.
const CHUNK: u32 = 32;

/// A page longer than [`CHUNK`], streamed: the page's end (for `Link`)
/// and its first chunk are read before answering; each further chunk is
/// read from the database only when the client has taken the one before,
/// with a pooled connection held just for that query. A client that stops
/// reading so holds no connection and one chunk of memory, for at most
/// `SKIFF_SEND_TIMEOUT`. (Users written while a page streams may or may
/// not appear in it, as if the page were read a chunk at a time.)
async fn stream_page(state: AppState, after: UserId, limit: u32) -> Result<Response, Error> {
    let (last, more) = state.db.page_end(after, limit).await.map_err(db_error)?;
    let first = state
        .db
        .users(&PageQuery {
            after,
            limit: CHUNK,
            email_key: None,
        })
        .await
        .map_err(db_error)?;
    let mut stream = PageStream {
        state,
        cursor: after,
        last,
        left: limit,
        opened: false,
        any: false,
        done: false,
    };
    let head = stream.chunk(first);
    let rest = futures_util::stream::unfold(stream, |mut s| async move {
        if s.done {
            return None;
        }
        let users = s
            .state
            .db
            .users(&PageQuery {
                after: s.cursor,
                limit: CHUNK,
                email_key: None,
            })
            .await;
        match users {
            Ok(users) => {
                let bytes = s.chunk(users);
                Some((Ok(bytes), s))
            }
            Err(e) => {
                // The status is sent: all that is left is to cut the answer
                // short, which the client sees as a broken transfer.
                tracing::warn!(error = %e, "a streamed list of users broke off");
                s.done = true;
                Some((Err(e), s))
            }
        }
    });
    // Fused: a body may be polled again after its end (the compression
    // layer does), which `unfold` does not allow.
    let body = futures_util::StreamExt::fuse(futures_util::StreamExt::chain(
        futures_util::stream::once(async move { Ok(head) }),
        rest,
    ));
    let mut response = Response::new(axum::body::Body::from_stream(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let (true, Some(last)) = (more, last) {
        let link = format!("</users?limit={limit}&after={last}>; rel=\"next\"");
        response.headers_mut().insert(
            header::LINK,
            HeaderValue::from_str(&link).expect("a link of ASCII parts"),
        );
    }
    Ok(response)
}

/// Where a streamed page is.
struct PageStream {
    state: AppState,
    /// The last user sent.
    cursor: UserId,
    /// The page's last user, when it was full when the stream began.
    last: Option<UserId>,
    /// Users the page may still hold.
    left: u32,
    /// Whether `[` was sent.
    opened: bool,
    /// Whether a user was sent (the next needs a comma).
    any: bool,
    done: bool,
}

impl PageStream {
    /// The JSON of `users` (a chunk read after `cursor`), with the array's
    /// opening and closing brackets where they belong.
    fn chunk(&mut self, users: Vec<User>) -> axum::body::Bytes {
        let full = users.len() == CHUNK as usize;
        let mut out = Vec::with_capacity(users.len() * 512 + 2);
        if !self.opened {
            out.push(b'[');
            self.opened = true;
        }
        for user in users {
            if self.left == 0 || self.last.is_some_and(|last| user.id > last) {
                self.done = true;
                break;
            }
            if self.any {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, &user).expect("a user serializes");
            self.any = true;
            self.cursor = user.id;
            self.left -= 1;
        }
        if !full || self.left == 0 || self.last == Some(self.cursor) {
            self.done = true;
        }
        if self.done {
            out.push(b']');
        }
        axum::body::Bytes::from(out)
    }
}

async fn create(state: &AppState, fields: UserFields) -> Result<Response, Error> {
    let user = state
        .db
        .create_user(fields)
        .await
        .map_err(|e| write_error(None, e))?;
    let location =
        HeaderValue::from_str(&format!("/users/{}", user.id)).expect("a path of ASCII parts");
    let mut response = with_user(StatusCode::CREATED, user);
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// Create a user.
#[utoipa::path(post, path = "/users", tag = "users",
    security((), ("basic" = [])),
    request_body(content = UserInput, content_type = "application/json"),
    responses(
        Created, Malformed, Unauthorized, EmailTaken, TooLarge, NotJson, Invalid,
    ))]
async fn create_user(
    _: Authorized,
    State(state): State<AppState>,
    JsonBody(fields): JsonBody<UserFields>,
) -> Result<Response, Error> {
    create(&state, fields).await
}

async fn show(state: &AppState, id: UserId, headers: &HeaderMap) -> Result<Response, Error> {
    let user = state
        .db
        .user(id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| write_error(Some(id), WriteError::NotFound))?;
    if none_match_fails(headers, &user) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag(&user))]).into_response());
    }
    Ok(with_user(StatusCode::OK, user))
}

/// Get a user.
#[utoipa::path(get, path = "/users/{id}", tag = "users",
    security((), ("basic" = [])),
    params(
        ("id" = String, Path, description = "The user's id"),
        ("If-None-Match" = Option<String>, Header, description = "ETags the client has; a match gives 304"),
    ),
    responses(
        (status = 200, description = "The user", body = User,
            headers(("ETag" = String, description = "Strong entity tag of this version"))),
        (status = 304, description = "Not modified: `If-None-Match` matched",
            headers(("ETag" = String, description = "Strong entity tag of this version"))),
        Unauthorized,
        (status = 404, description = "No user has this id (or it is malformed)", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn get_user(
    _: Authorized,
    State(state): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
) -> Result<Response, Error> {
    show(&state, id, &headers).await
}

async fn update(
    state: &AppState,
    id: UserId,
    headers: &HeaderMap,
    patch: UserPatch,
) -> Result<Response, Error> {
    let versions = if_match_versions(headers, id);
    let user = state
        .db
        .update_user(id, versions.as_deref(), patch)
        .await
        .map_err(|e| write_error(Some(id), e))?;
    Ok(with_user(StatusCode::OK, user))
}

/// Replace a user (all its fields; absent optional ones get their defaults).
#[utoipa::path(put, path = "/users/{id}", tag = "users",
    security((), ("basic" = [])),
    params(
        ("id" = String, Path, description = "The user's id"),
        ("If-Match" = Option<String>, Header, pattern = r#"^(\*|"[!#-~]*"( *, *"[!#-~]*")*)$"#, description = "Only replace if the user's current ETag is one of these strong tags, or `*` for any"),
    ),
    request_body(content = UserInput, content_type = "application/json"),
    responses(
        Stored, Malformed, Unauthorized,
        (status = 404, description = "No user has this id: PUT never creates", body = crate::error::Problem, content_type = "application/problem+json"),
        EmailTaken, Stale, TooLarge, NotJson, Invalid,
    ))]
async fn replace_user(
    _: Authorized,
    State(state): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
    JsonBody(fields): JsonBody<UserFields>,
) -> Result<Response, Error> {
    update(&state, id, &headers, fields.into()).await
}

/// Change some fields of a user with a JSON merge patch (RFC 7396).
#[utoipa::path(patch, path = "/users/{id}", tag = "users",
    security((), ("basic" = [])),
    params(
        ("id" = String, Path, description = "The user's id"),
        ("If-Match" = Option<String>, Header, pattern = r#"^(\*|"[!#-~]*"( *, *"[!#-~]*")*)$"#, description = "Only change if the user's current ETag is one of these strong tags, or `*` for any"),
    ),
    request_body(content(
        (UserMergePatch = "application/merge-patch+json"),
        (UserMergePatch = "application/json"),
    )),
    responses(
        Stored, Malformed, Unauthorized, NoSuchUser, EmailTaken, Stale, TooLarge,
        (status = 415, description = "Content-Type is missing or not a JSON (merge patch) type; see Accept-Patch", body = crate::error::Problem, content_type = "application/problem+json",
            headers(("Accept-Patch" = String, description = "The media types PATCH accepts"))),
        (status = 422, description = "A well-typed but invalid value: a bad or too long email, a too long name, `email: null`", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn patch_user(
    _: Authorized,
    State(state): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
    JsonBody(patch): JsonBody<UserPatch>,
) -> Result<Response, Error> {
    update(&state, id, &headers, patch).await
}

async fn remove(state: &AppState, id: UserId, headers: &HeaderMap) -> Result<Response, Error> {
    let versions = if_match_versions(headers, id);
    state
        .db
        .delete_user(id, versions.as_deref())
        .await
        .map_err(|e| write_error(Some(id), e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Delete a user.
#[utoipa::path(delete, path = "/users/{id}", tag = "users",
    security((), ("basic" = [])),
    params(
        ("id" = String, Path, description = "The user's id"),
        ("If-Match" = Option<String>, Header, pattern = r#"^(\*|"[!#-~]*"( *, *"[!#-~]*")*)$"#, description = "Only delete if the user's current ETag is one of these strong tags, or `*` for any"),
    ),
    responses(
        Deleted, Unauthorized, NoSuchUser, Stale,
    ))]
async fn delete_user(
    _: Authorized,
    State(state): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
) -> Result<Response, Error> {
    remove(&state, id, &headers).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::headers::query_pairs;

    fn pairs(query: &str) -> Vec<(String, String)> {
        query_pairs(&format!("/?{query}").parse().unwrap())
    }

    #[test]
    fn the_page_query_has_defaults_and_bounds() {
        let (page, limit) = page_query(&pairs("")).unwrap();
        assert_eq!((limit, page.limit, page.after), (100, 101, UserId::MIN));
        assert_eq!(page_query(&pairs("limit=1000")).unwrap().1, 1000);
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=-1",
            "limit=ten",
            "limit=",
            "after=nope",
        ] {
            let e = page_query(&pairs(bad)).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        let (page, _) = page_query(&pairs("email=Ada%40Example.COM")).unwrap();
        assert_eq!(page.email_key.as_deref(), Some("ada@example.com"));
    }
}
