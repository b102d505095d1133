//! Request bodies of the users API, checked in the contract's order:
//! `Content-Type` (415), JSON syntax, JSON types and unknown fields (400),
//! then values (422). Every problem found is listed in `errors`, one per
//! field; the status is that of the worst.
//!
//! `id`, `createdAt` and `updatedAt` are read-only: accepted and ignored, so
//! a client may send back a user it has read.

use std::borrow::Cow;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use utoipa::openapi::{RefOr, schema::SchemaType};

use crate::db::model::{EMAIL_PATTERN, MAX_EMAIL_CHARS, MAX_NAME_CHARS, NAME_PATTERN};
use crate::db::{Email, Name, UserFields, UserPatch};
use crate::error::{Error, FieldError, Problem};
use crate::state::AppState;

/// A body of type `T`, checked as this module says. As an extractor it
/// rejects with the finished problem response.
pub struct JsonBody<T>(pub T);

/// A body type of the users API.
pub trait FromJsonBody: Sized {
    /// The media types accepted in `Content-Type`.
    const MEDIA_TYPES: &'static [&'static str];
    fn from_json(bytes: &[u8]) -> Result<Self, Error>;
}

impl<T: FromJsonBody> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        if !accepts(request.headers(), T::MEDIA_TYPES) {
            return Err(unsupported_media_type(T::MEDIA_TYPES));
        }
        // A body over the limit is rejected here with 413.
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        T::from_json(&bytes)
            .map(JsonBody)
            .map_err(IntoResponse::into_response)
    }
}

/// Whether the `Content-Type` essence (parameters such as `charset` aside)
/// is one of `media_types`.
fn accepts(headers: &HeaderMap, media_types: &[&str]) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    media_types.iter().any(|m| m.eq_ignore_ascii_case(essence))
}

/// 415 with an `errors` entry, and `Accept-Patch` when merge patches are
/// what is expected (RFC 5789 §2.2).
fn unsupported_media_type(media_types: &[&str]) -> Response {
    let expected = media_types.join(" or ");
    let mut problem = Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("the body must be sent with Content-Type {expected}"),
    );
    problem.errors = vec![FieldError::new(
        "",
        format!("Content-Type must be {expected}"),
    )];
    let mut response = problem.into_response();
    if media_types.contains(&MERGE_PATCH) {
        let accept_patch = HeaderValue::from_str(&media_types.join(", "))
            .expect("media types are valid header text");
        response.headers_mut().insert("accept-patch", accept_patch);
    }
    response
}

pub const JSON: &str = "application/json";
pub const MERGE_PATCH: &str = "application/merge-patch+json";

/// A field as found in a body.
enum Found<T> {
    Absent,
    Null,
    Value(T),
}

/// The writable fields as found in a body, each of the right JSON type (or
/// `null`).
struct Raw {
    email: Found<String>,
    account_enabled: Found<bool>,
    display_name: Found<String>,
    given_name: Found<String>,
    surname: Found<String>,
    company_name: Found<String>,
}

/// What is wrong with a body so far.
#[derive(Default)]
struct Problems {
    /// Syntax, JSON types, unknown fields: 400.
    malformed: Vec<FieldError>,
    /// Values of the right type that are not acceptable: 422.
    invalid: Vec<FieldError>,
}

impl Problems {
    fn wrong_type(&mut self, field: &str, expected: &str, found: &Value) {
        self.malformed.push(FieldError::new(
            field,
            format!("must be {expected}, not {}", json_type(found)),
        ));
    }

    fn invalid(&mut self, field: &str, message: impl Into<String>) {
        self.invalid.push(FieldError::new(field, message));
    }

    /// The value, or `None` after recording why it is invalid.
    fn check<T>(&mut self, field: &str, parsed: Result<T, String>) -> Option<T> {
        parsed.map_err(|message| self.invalid(field, message)).ok()
    }

    /// `Ok` when nothing is wrong; otherwise a 400 listing everything when
    /// anything is malformed, else a 422.
    fn finish(self) -> Result<(), Error> {
        if !self.malformed.is_empty() {
            let mut errors = self.malformed;
            errors.extend(self.invalid);
            return Err(Error::BadRequest {
                detail: "the body has fields of the wrong type or unknown fields".into(),
                errors,
            });
        }
        if !self.invalid.is_empty() {
            return Err(Error::Validation(self.invalid));
        }
        Ok(())
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses the JSON object and sorts its members into [`Raw`], recording
/// wrong types and unknown fields.
fn read(bytes: &[u8], problems: &mut Problems) -> Result<Raw, Error> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Error::BadRequest {
        detail: "the body is not valid JSON".into(),
        errors: vec![FieldError::new("", e.to_string())],
    })?;
    let Value::Object(object) = value else {
        return Err(Error::BadRequest {
            detail: "the body must be a JSON object".into(),
            errors: vec![FieldError::new(
                "",
                format!("must be an object, not {}", json_type(&value)),
            )],
        });
    };
    let mut raw = Raw {
        email: Found::Absent,
        account_enabled: Found::Absent,
        display_name: Found::Absent,
        given_name: Found::Absent,
        surname: Found::Absent,
        company_name: Found::Absent,
    };
    for (field, value) in object {
        let slot = match field.as_str() {
            "accountEnabled" => {
                raw.account_enabled = match value {
                    Value::Bool(b) => Found::Value(b),
                    Value::Null => Found::Null,
                    other => {
                        problems.wrong_type(&field, "a boolean", &other);
                        Found::Absent
                    }
                };
                continue;
            }
            "email" => &mut raw.email,
            "displayName" => &mut raw.display_name,
            "givenName" => &mut raw.given_name,
            "surname" => &mut raw.surname,
            "companyName" => &mut raw.company_name,
            "id" | "createdAt" | "updatedAt" => continue,
            _ => {
                problems
                    .malformed
                    .push(FieldError::new(&field, "unknown field"));
                continue;
            }
        };
        *slot = match value {
            Value::String(s) => Found::Value(s),
            Value::Null => Found::Null,
            other => {
                problems.wrong_type(&field, "a string", &other);
                Found::Absent
            }
        };
    }
    Ok(raw)
}

/// A field of a full body (create, replace): absent means the default;
/// `null` is not a value of its type.
fn full<R, T: Default>(
    problems: &mut Problems,
    field: &str,
    found: Found<R>,
    expected: &str,
    parse: impl FnOnce(R) -> Result<T, String>,
) -> T {
    match found {
        Found::Absent => T::default(),
        Found::Null => {
            problems.wrong_type(field, expected, &Value::Null);
            T::default()
        }
        Found::Value(v) => problems.check(field, parse(v)).unwrap_or_default(),
    }
}

/// A field of a merge patch (RFC 7396): absent leaves it, `null` resets it
/// to its default.
fn patched<R, T: Default>(
    problems: &mut Problems,
    field: &str,
    found: Found<R>,
    parse: impl FnOnce(R) -> Result<T, String>,
) -> Option<T> {
    match found {
        Found::Absent => None,
        Found::Null => Some(T::default()),
        Found::Value(v) => problems.check(field, parse(v)),
    }
}

fn name(text: String) -> Result<Name, String> {
    Name::parse(&text)
}

fn email(problems: &mut Problems, found: Found<String>, required: bool) -> Option<Email> {
    match found {
        Found::Value(text) => problems.check("email", Email::parse(&text)),
        Found::Null => {
            problems.invalid("email", "must not be null: every user has an email");
            None
        }
        Found::Absent => {
            if required {
                problems.invalid("email", "is required");
            }
            None
        }
    }
}

/// The body of `POST /users` and `PUT /users/{id}`: every field, with
/// defaults for the absent optional ones.
impl FromJsonBody for UserFields {
    const MEDIA_TYPES: &'static [&'static str] = &[JSON];

    fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        let mut p = Problems::default();
        let raw = read(bytes, &mut p)?;
        let email = email(&mut p, raw.email, true);
        let account_enabled = full(
            &mut p,
            "accountEnabled",
            raw.account_enabled,
            "a boolean",
            Ok,
        );
        let display_name = full(&mut p, "displayName", raw.display_name, "a string", name);
        let given_name = full(&mut p, "givenName", raw.given_name, "a string", name);
        let surname = full(&mut p, "surname", raw.surname, "a string", name);
        let company_name = full(&mut p, "companyName", raw.company_name, "a string", name);
        p.finish()?;
        Ok(UserFields {
            email: email.expect("no problem was found, so the email is there"),
            account_enabled,
            display_name,
            given_name,
            surname,
            company_name,
        })
    }
}

/// The body of `PATCH /users/{id}`: a JSON merge patch.
impl FromJsonBody for UserPatch {
    const MEDIA_TYPES: &'static [&'static str] = &[MERGE_PATCH, JSON];

    fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        let mut p = Problems::default();
        let raw = read(bytes, &mut p)?;
        let patch = UserPatch {
            email: email(&mut p, raw.email, false),
            account_enabled: patched(&mut p, "accountEnabled", raw.account_enabled, Ok),
            display_name: patched(&mut p, "displayName", raw.display_name, name),
            given_name: patched(&mut p, "givenName", raw.given_name, name),
            surname: patched(&mut p, "surname", raw.surname, name),
            company_name: patched(&mut p, "companyName", raw.company_name, name),
        };
        p.finish()?;
        Ok(patch)
    }
}

/// The OpenAPI schema of a create or replace body.
pub struct UserInput;

/// The OpenAPI schema of a merge patch body.
pub struct UserMergePatch;

const NAME_FIELDS: [(&str, &str); 4] = [
    ("displayName", "Ada Lovelace"),
    ("givenName", "Ada"),
    ("surname", "Lovelace"),
    ("companyName", "Analytical Engines"),
];

/// The body schema; in a patch every field may be `null` (reset to its
/// default) and none is required.
fn body_schema(patch: bool) -> Schema {
    let types = |t: Type| -> SchemaType {
        if patch {
            SchemaType::from_iter([t, Type::Null])
        } else {
            SchemaType::from(t)
        }
    };
    // In a patch an absent field stays as it is: a `default` there would
    // tell clients (generated ones fill defaults in) to reset it.
    let default = |value: Value| (!patch).then_some(value);
    let reset = |value: &str| patch.then(|| format!("`null` resets it to `{value}`"));
    let mut object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "email",
            ObjectBuilder::new()
                .schema_type(SchemaType::from(Type::String))
                .min_length(Some(3))
                .max_length(Some(MAX_EMAIL_CHARS))
                .pattern(Some(EMAIL_PATTERN))
                .description(Some(
                    "`local@domain` without spaces or control characters; unique ignoring case",
                )),
        )
        .property(
            "accountEnabled",
            ObjectBuilder::new()
                .schema_type(types(Type::Boolean))
                .default(default(json!(false)))
                .description(reset("false")),
        );
    for (field, _) in NAME_FIELDS {
        object = object.property(
            field,
            ObjectBuilder::new()
                .schema_type(types(Type::String))
                .max_length(Some(MAX_NAME_CHARS))
                .pattern(Some(NAME_PATTERN))
                .default(default(json!("")))
                .description(reset("\"\"")),
        );
    }
    for field in ["id", "createdAt", "updatedAt"] {
        object = object.property(
            field,
            ObjectBuilder::new()
                .read_only(true)
                .description(Some("Read-only: ignored when sent")),
        );
    }
    let mut example = json!({"email": "ada@example.com", "accountEnabled": true});
    for (field, value) in NAME_FIELDS {
        example[field] = json!(value);
    }
    if patch {
        example = json!({"accountEnabled": false, "companyName": null});
        object = object.description(Some(
            "A JSON merge patch (RFC 7396): absent fields stay, `null` resets a field to its default",
        ));
    } else {
        object = object.required("email");
    }
    object
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .examples([example])
        .into()
}

impl utoipa::PartialSchema for UserInput {
    fn schema() -> RefOr<Schema> {
        body_schema(false).into()
    }
}

impl utoipa::ToSchema for UserInput {
    fn name() -> Cow<'static, str> {
        "UserInput".into()
    }
}

impl utoipa::PartialSchema for UserMergePatch {
    fn schema() -> RefOr<Schema> {
        body_schema(true).into()
    }
}

impl utoipa::ToSchema for UserMergePatch {
    fn name() -> Cow<'static, str> {
        "UserMergePatch".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: &Error) -> u16 {
        e.status().as_u16()
    }

    fn fields(e: &Error) -> Vec<String> {
        e.to_problem().errors.into_iter().map(|f| f.field).collect()
    }

    #[test]
    fn a_full_body_gets_defaults_and_ignores_read_only_fields() {
        let f = UserFields::from_json(
            br#"{"email":"Ada@Example.com","id":"x","createdAt":1,"updatedAt":null}"#,
        )
        .unwrap();
        assert_eq!(f.email.as_str(), "Ada@Example.com");
        assert!(!f.account_enabled);
        assert_eq!(f.display_name.as_str(), "");
    }

    #[test]
    fn syntax_types_and_unknown_fields_are_400() {
        for (body, field) in [
            (&br#"{"email":"#[..], ""),
            (br#"[]"#, ""),
            (br#""a@b""#, ""),
            (
                br#"{"email":"a@b","accountEnabled":"yes"}"#,
                "accountEnabled",
            ),
            (br#"{"email":"a@b","surname":3}"#, "surname"),
            (br#"{"email":"a@b","surname":null}"#, "surname"),
            (br#"{"email":"a@b","nickname":"x"}"#, "nickname"),
            (br#"{"email":7}"#, "email"),
        ] {
            let e = UserFields::from_json(body).unwrap_err();
            assert_eq!(status(&e), 400, "{}", String::from_utf8_lossy(body));
            assert_eq!(fields(&e)[0], field, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn well_typed_invalid_values_are_422_with_every_field() {
        let long = "x".repeat(257);
        let body = format!(r#"{{"email":"nope","givenName":"{long}","surname":"{long}"}}"#);
        let e = UserFields::from_json(body.as_bytes()).unwrap_err();
        assert_eq!(status(&e), 422);
        assert_eq!(fields(&e), ["email", "givenName", "surname"]);
        for body in [&br#"{"email":null}"#[..], br#"{}"#] {
            let e = UserFields::from_json(body).unwrap_err();
            assert_eq!((status(&e), fields(&e)), (422, vec!["email".to_string()]));
        }
    }

    #[test]
    fn a_malformed_field_makes_the_whole_answer_400_listing_all() {
        let e = UserFields::from_json(br#"{"email":"nope","surname":1}"#).unwrap_err();
        assert_eq!(status(&e), 400);
        assert_eq!(fields(&e), ["surname", "email"]);
    }

    #[test]
    fn a_merge_patch_leaves_absent_fields_and_resets_nulls() {
        let p =
            UserPatch::from_json(br#"{"surname":null,"accountEnabled":true,"id":"x"}"#).unwrap();
        assert_eq!(p.surname, Some(Name::default()));
        assert_eq!(p.account_enabled, Some(true));
        assert_eq!(p.email, None);
        assert_eq!(p.given_name, None);
        assert_eq!(UserPatch::from_json(b"{}").unwrap(), UserPatch::default());
    }

    #[test]
    fn a_merge_patch_cannot_remove_the_email() {
        let e = UserPatch::from_json(br#"{"email":null}"#).unwrap_err();
        assert_eq!((status(&e), fields(&e)), (422, vec!["email".to_string()]));
        let e = UserPatch::from_json(br#"{"email":"bad address@x"}"#).unwrap_err();
        assert_eq!(status(&e), 422);
        let e = UserPatch::from_json(br#"{"surname":false}"#).unwrap_err();
        assert_eq!(status(&e), 400);
    }

    #[test]
    fn content_types_are_matched_on_their_essence() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            h
        };
        assert!(accepts(&with("application/json"), &[JSON]));
        assert!(accepts(&with("Application/JSON; charset=utf-8"), &[JSON]));
        assert!(!accepts(&with("text/plain"), &[JSON]));
        assert!(!accepts(&with("application/merge-patch+json"), &[JSON]));
        assert!(accepts(
            &with("application/merge-patch+json"),
            &[MERGE_PATCH, JSON]
        ));
        assert!(!accepts(&HeaderMap::new(), &[JSON]));
    }
}
