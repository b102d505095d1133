//! `/users` (placeholder; see the users issue).

use axum::Router;
use utoipa::OpenApi;

use crate::app::AppState;

#[derive(OpenApi)]
#[openapi()]
pub struct Api;

pub fn router(_state: &AppState) -> Router<AppState> {
    Router::new()
}
