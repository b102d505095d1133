//! `/ip`: the server's public address, asked of an upstream.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{Error, Problem};
use crate::public_ip::UpstreamError;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ip))
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"ip":"203.0.113.7"}))]
pub struct IpAnswer {
    /// The server's public IPv4 or IPv6 address.
    pub ip: String,
}

/// The server's public IP address, as an upstream (ipify by default) sees it.
/// Good answers are cached; concurrent misses share one upstream call.
#[utoipa::path(get, path = "/ip", tag = "demo",
    responses(
        (status = 200, description = "The public address", body = IpAnswer),
        (status = 502, description = "The upstream is unreachable, answered non-2xx, or not an IP address", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The upstream did not answer within the timeout", body = Problem, content_type = "application/problem+json")))]
pub async fn ip(State(state): State<AppState>) -> Result<Json<IpAnswer>, Error> {
    match state.ip.public_ip().await {
        Ok(ip) => Ok(Json(IpAnswer { ip: ip.to_string() })),
        Err(e @ UpstreamError::Timeout(_)) => Err(Error::GatewayTimeout(e.to_string())),
        Err(e) => Err(Error::BadGateway(e.to_string())),
    }
}
