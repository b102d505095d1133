//! `/hello`, the demo route of the guides skiff learns from.

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(hello))
}

/// `hello`
#[utoipa::path(get, path = "/hello", tag = "demo",
    responses((status = 200, description = "The word hello", body = String, content_type = "text/plain", example = "hello")))]
pub async fn hello() -> &'static str {
    "hello"
}
