//! Liveness (`/healthz`) and readiness (`/readyz`, `/health`).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(health))
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status":"UP","checks":{"database":"UP"}}))]
pub struct Health {
    /// `UP` or `DOWN`.
    pub status: &'static str,
    /// Each dependency checked, `UP` or `DOWN`; absent for liveness.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<BTreeMap<&'static str, &'static str>>,
}

/// Liveness: `UP` while the process serves.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process serves", body = Health, example = json!({"status":"UP"}))))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "UP",
        checks: None,
    })
}

/// Readiness: `UP` when the database answers and shutdown has not begun.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready for traffic", body = Health),
        (status = 503, description = "Not ready: the database does not answer, or shutdown has begun", body = Health,
            example = json!({"status":"DOWN","checks":{"database":"DOWN"}}))))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    // Shutdown has begun: no dependency is asked (the answer must come at
    // once, even when the database is slow), none is reported.
    if state.is_draining() {
        let health = Health {
            status: "DOWN",
            checks: Some(BTreeMap::new()),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(health));
    }
    let checks: BTreeMap<_, _> = [
        #[cfg(feature = "users")]
        (
            "database",
            if state.db.ping().await { "UP" } else { "DOWN" },
        ),
    ]
    .into_iter()
    .collect();
    let up = checks.values().all(|c| *c == "UP");
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let health = Health {
        status: if up { "UP" } else { "DOWN" },
        checks: Some(checks),
    };
    (status, Json(health))
}

/// Readiness, the same as `/readyz`.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "Ready for traffic", body = Health),
        (status = 503, description = "Not ready", body = Health)))]
pub async fn health(state: State<AppState>) -> (StatusCode, Json<Health>) {
    readyz(state).await
}
