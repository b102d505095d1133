//! The answers several users routes share, each declared once here and
//! listed by type in the routes' `responses(...)` (utoipa inlines them, so
//! the document reads as if each route spelled them out).

// These types only describe answers; the handlers build `User`s and
// `Error`s, never these.
#![allow(dead_code)]

use utoipa::IntoResponses;

use crate::db::User;
use crate::error::Problem;

/// `200` after PUT or PATCH.
#[derive(IntoResponses)]
#[response(status = 200, description = "The stored user",
    headers(("ETag" = String, description = "Strong entity tag of the new version")))]
pub struct Stored(User);

/// `201` after POST.
#[derive(IntoResponses)]
#[response(status = 201, description = "Created: the stored user",
    headers(("Location" = String, description = "`/users/{id}` of the new user"),
            ("ETag" = String, description = "Strong entity tag of this version")))]
pub struct Created(User);

/// `204` after DELETE.
#[derive(IntoResponses)]
#[response(status = 204, description = "Deleted")]
pub struct Deleted;

/// `400` for a body that is not the JSON asked for (`body.rs`).
#[derive(IntoResponses)]
#[response(status = 400, description = "Malformed JSON, a wrong JSON type or an unknown field",
    content_type = "application/problem+json",
    example = json!({"type":"about:blank","title":"Bad Request","status":400,"detail":"the body has fields of the wrong type or unknown fields","errors":[{"field":"nickname","message":"unknown field"}]}))]
pub struct Malformed(Problem);

/// `401` (`auth.rs`).
#[derive(IntoResponses)]
#[response(
    status = 401,
    description = "Credentials are required and missing or wrong",
    content_type = "application/problem+json"
)]
pub struct Unauthorized(Problem);

/// `404` for an id no user has.
#[derive(IntoResponses)]
#[response(
    status = 404,
    description = "No user has this id",
    content_type = "application/problem+json"
)]
pub struct NoSuchUser(Problem);

/// `409`: emails are unique, ignoring case.
#[derive(IntoResponses)]
#[response(
    status = 409,
    description = "Another user has this email (ignoring case)",
    content_type = "application/problem+json"
)]
pub struct EmailTaken(Problem);

/// `412` (`preconditions.rs`).
#[derive(IntoResponses)]
#[response(
    status = 412,
    description = "`If-Match` does not match the user's current ETag",
    content_type = "application/problem+json"
)]
pub struct Stale(Problem);

/// `413`, from the body limit (`SKIFF_BODY_LIMIT`).
#[derive(IntoResponses)]
#[response(
    status = 413,
    description = "The body is larger than the limit",
    content_type = "application/problem+json"
)]
pub struct TooLarge(Problem);

/// `415` for POST and PUT (PATCH also takes a merge patch, and says so).
#[derive(IntoResponses)]
#[response(
    status = 415,
    description = "Content-Type is missing or not application/json",
    content_type = "application/problem+json"
)]
pub struct NotJson(Problem);

/// `422` for POST and PUT, whose body is a whole user.
#[derive(IntoResponses)]
#[response(status = 422, description = "A well-typed but invalid value: a missing, bad or too long email, a too long name, `email: null`",
    content_type = "application/problem+json",
    example = json!({"type":"about:blank","title":"Unprocessable Entity","status":422,"detail":"the request has invalid fields","errors":[{"field":"email","message":"must look like an address: local@domain, without spaces"}]}))]
pub struct Invalid(Problem);
