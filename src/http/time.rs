//! `/time`: the current time in a time zone from the tz database compiled
//! into the binary (no `/usr/share/zoneinfo` needed).

use axum::extract::{Query, State};
use axum::{Json, extract::rejection::QueryRejection};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{Error, FieldError, Problem};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(time))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimeQuery {
    /// An IANA time zone name such as `Europe/Paris`; defaults to the configured zone (`Asia/Tokyo`).
    // Not an `enum` of the 598 zones compiled in: some differ only by `+`
    // and `-` (`Etc/GMT+1`, `Etc/GMT-1`), which clients generated from an
    // enum cannot tell apart (openapi-python-client stops on them).
    #[param(example = "Europe/Paris")]
    pub tz: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"timeZone":"Asia/Tokyo","time":"2026-11-23T15:04:05.123+09:00","utcOffset":"+09:00","abbreviation":"JST"}))]
pub struct TimeAnswer {
    /// The IANA name of the zone.
    pub time_zone: String,
    /// RFC 3339 with milliseconds and the zone's offset.
    pub time: String,
    /// The zone's UTC offset now, `±HH:MM`.
    pub utc_offset: String,
    /// The zone's abbreviation now, such as `JST` or `CET`.
    pub abbreviation: String,
}

/// The current time in a time zone.
#[utoipa::path(get, path = "/time", tag = "demo", params(TimeQuery),
    responses(
        (status = 200, description = "The current time", body = TimeAnswer),
        (status = 400, description = "Unknown time zone", body = Problem, content_type = "application/problem+json")))]
pub async fn time(
    State(state): State<AppState>,
    query: Result<Query<TimeQuery>, QueryRejection>,
) -> Result<Json<TimeAnswer>, Error> {
    let Query(query) = query.map_err(|e| Error::bad_request(e.body_text()))?;
    let (tz, name) = match query.tz {
        None => (
            state.config.time_zone.clone(),
            state.config.time_zone_name.clone(),
        ),
        Some(name) => match TimeZone::get(&name) {
            Ok(tz) => (tz, name),
            Err(_) => {
                return Err(Error::BadRequest {
                    detail: format!("unknown time zone {name:?}"),
                    errors: vec![FieldError::new(
                        "tz",
                        "must be an IANA time zone name such as Asia/Tokyo",
                    )],
                });
            }
        },
    };
    Ok(Json(now_in(Timestamp::now(), tz, name)))
}

fn now_in(now: Timestamp, tz: TimeZone, name: String) -> TimeAnswer {
    let info = tz.to_offset_info(now);
    let abbreviation = info.abbreviation().to_string();
    let zoned = now.to_zoned(tz);
    TimeAnswer {
        time_zone: name,
        time: zoned.strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string(),
        utc_offset: zoned.strftime("%:z").to_string(),
        abbreviation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_contract() {
        let ts: Timestamp = "2026-11-23T06:04:05.123Z".parse().unwrap();
        let a = now_in(
            ts,
            TimeZone::get("Asia/Tokyo").unwrap(),
            "Asia/Tokyo".into(),
        );
        assert_eq!(a.time, "2026-11-23T15:04:05.123+09:00");
        assert_eq!(a.utc_offset, "+09:00");
        assert_eq!(a.abbreviation, "JST");
        let a = now_in(
            ts,
            TimeZone::get("Europe/Paris").unwrap(),
            "Europe/Paris".into(),
        );
        assert_eq!(a.time, "2026-11-23T07:04:05.123+01:00");
        assert_eq!(a.abbreviation, "CET");
        let ts: Timestamp = "2026-07-01T00:00:00Z".parse().unwrap();
        let a = now_in(
            ts,
            TimeZone::get("America/St_Johns").unwrap(),
            "America/St_Johns".into(),
        );
        assert_eq!(a.utc_offset, "-02:30");
        assert_eq!(a.time, "2026-06-30T21:30:00.000-02:30");
    }
}
