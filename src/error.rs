//! One error type for every handler. Each variant maps to an HTTP status and
//! turns into an RFC 9457 `application/problem+json` body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Marks a response whose status and body were chosen on purpose (e.g. by a
/// Lua script), so that `http::middleware::problem_for_bare_errors` does not
/// turn it into a problem.
#[derive(Debug, Clone, Copy)]
pub struct Verbatim;

/// One invalid field of a request body or query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The JSON field (or query parameter) at fault; empty for the body as a whole.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An RFC 9457 problem document. `type` is always `about:blank`, so `title` is
/// the status's reason phrase and `detail` says what went wrong this time.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"type":"about:blank","title":"Not Found","status":404,"detail":"no route for GET /nope"}))]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).expect("a problem always serializes");
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    /// Malformed syntax: bad JSON, a wrong JSON type, an unknown field, a bad query.
    #[error("{detail}")]
    BadRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// Well-formed but invalid values.
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("credentials are missing or wrong")]
    Unauthorized,
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The client was too slow sending its request body.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    GatewayTimeout(String),
    /// Temporarily unable: overload, a limit, a dependency down. Optionally
    /// tells the client when to retry (seconds).
    #[error("{detail}")]
    Unavailable {
        detail: String,
        retry_after: Option<u32>,
    },
    /// A bug or an unexpected failure: logged in full, shown to the client
    /// only as the given public detail.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Error::BadRequest {
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Error::Unavailable {
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Error::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Error::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn to_problem(&self) -> Problem {
        let mut problem = Problem::new(self.status(), self.to_string());
        match self {
            Error::BadRequest { errors, .. } | Error::Validation(errors) => {
                problem.errors = errors.clone();
            }
            _ => {}
        }
        problem
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(detail) = &self {
            tracing::error!(detail = %detail, "internal error");
        }
        let mut response = self.to_problem().into_response();
        let headers = response.headers_mut();
        match &self {
            Error::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Basic realm="skiff""#),
                );
            }
            Error::Unavailable {
                retry_after: Some(secs),
                ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            _ => {}
        }
        response
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_problem_carries_its_fields() {
        let err = Error::Validation(vec![FieldError::new("email", "must look like an address")]);
        let p = err.to_problem();
        assert_eq!(p.status, 422);
        assert_eq!(p.title, "Unprocessable Entity");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["type"], "about:blank");
        assert_eq!(json["errors"][0]["field"], "email");
    }

    #[test]
    fn plain_problems_have_no_errors_member() {
        let json = serde_json::to_value(Error::NotFound("nope".into()).to_problem()).unwrap();
        assert!(json.get("errors").is_none());
        assert_eq!(json["detail"], "nope");
    }

    #[test]
    fn unauthorized_challenges_basic() {
        let r = Error::Unauthorized.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            r#"Basic realm="skiff""#
        );
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
