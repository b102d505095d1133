//! The OpenAPI 3.1 document, generated from the handlers' annotations. Each
//! resource module contributes its own `Api`; they are merged here.

use axum::Router;
use axum::routing::get;
use axum::{Json, response::IntoResponse};
use utoipa::OpenApi;
use utoipa::openapi::OpenApi as Document;

use crate::app::AppState;
use crate::error::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "skiff",
        description = "A small, production-grade web API in one static binary. Every error is an RFC 9457 `application/problem+json` document.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    paths(openapi_json),
    components(schemas(Problem, FieldError)),
    tags(
        (name = "demo", description = "The demo routes"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
struct Base;

/// The whole document, for the features compiled in.
pub fn document() -> Document {
    let mut doc = Base::openapi();
    doc.info.version = crate::build::VERSION.into();
    doc.merge(super::demo::Api::openapi());
    doc.merge(super::time::Api::openapi());
    #[cfg(feature = "ip")]
    doc.merge(super::ip::Api::openapi());
    #[cfg(feature = "lua")]
    doc.merge(super::lua::Api::openapi());
    #[cfg(feature = "users")]
    doc.merge(super::users::Api::openapi());
    doc.merge(super::health::Api::openapi());
    doc.merge(super::metrics::Api::openapi());
    #[cfg(feature = "docs")]
    doc.merge(super::docs::Api::openapi());
    doc
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

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this service", content_type = "application/json")))]
pub async fn openapi_json() -> impl IntoResponse {
    Json(document())
}
