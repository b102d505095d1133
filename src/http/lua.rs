//! `/lua` and `/lua/{name}` (placeholder; see the Lua issue).

use axum::Router;
use axum::routing::get;
use utoipa::OpenApi;

use crate::app::AppState;

#[derive(OpenApi)]
#[openapi()]
pub struct Api;

pub fn router() -> Router<AppState> {
    Router::new().route("/lua", get(|| async { "hello world" }))
}
