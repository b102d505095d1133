//! The OpenAPI 3.1 document. Each route's `#[utoipa::path]` is registered
//! with its handler by `routes!` in its module's `router()`; `http::routes`
//! gathers them on top of [`base`] (title, licence, shared tags and schemas)
//! and [`document`] finishes what utoipa cannot say.

use std::sync::OnceLock;

use axum::{Json, response::IntoResponse};
use utoipa::OpenApi;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{FieldError, Problem};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "skiff",
        description = "A small, production-grade web API in one static binary. Every error is an RFC 9457 `application/problem+json` document.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    components(schemas(Problem, FieldError)),
    tags(
        (name = "demo", description = "The demo routes"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
struct Base;

/// What the document says besides its routes.
pub fn base() -> Document {
    let mut doc = Base::openapi();
    doc.info.version = crate::build_info::VERSION.into();
    doc
}

/// The whole document, for the features compiled in.
pub fn document() -> Document {
    let mut doc = super::routes().into_openapi();
    one_operation_id_per_method(&mut doc);
    #[cfg(feature = "lua")]
    if let Some(item) = doc.paths.paths.get_mut("/lua/{name}") {
        // A script reads `request.body` if it wants one; no method needs it.
        for (_, operation) in operations(item) {
            if let Some(utoipa::openapi::RefOr::T(body)) = operation.request_body.as_mut() {
                body.required = Some(utoipa::openapi::Required::False);
            }
        }
    }
    doc
}

/// The operations of a path item, with their method names.
fn operations(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", &mut item.get),
        ("put", &mut item.put),
        ("post", &mut item.post),
        ("delete", &mut item.delete),
        ("options", &mut item.options),
        ("head", &mut item.head),
        ("patch", &mut item.patch),
        ("trace", &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(method, operation)| Some((method, operation.as_mut()?)))
}

/// utoipa gives every method of a multi-method path (`/lua/{name}`) the
/// same `operationId`, which OpenAPI forbids and client generators reject:
/// those get their method appended (`lua_script_get`, `lua_script_post`…).
fn one_operation_id_per_method(doc: &mut Document) {
    for item in doc.paths.paths.values_mut() {
        let ids: Vec<String> = operations(item)
            .filter_map(|(_, op)| op.operation_id.clone())
            .collect();
        for (method, operation) in operations(item) {
            if let Some(id) = operation.operation_id.as_mut()
                && ids.iter().filter(|other| *other == id).count() > 1
            {
                *id = format!("{id}_{method}");
            }
        }
    }
}

/// The document as pretty-printed JSON (what `skiff openapi` prints and
/// `docs/openapi.json` holds).
pub fn document_json() -> String {
    let mut text = document()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this service", content_type = "application/json")))]
pub async fn openapi_json() -> impl IntoResponse {
    static DOCUMENT: OnceLock<Document> = OnceLock::new();
    Json(DOCUMENT.get_or_init(document))
}
