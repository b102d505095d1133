//! Optional HTTP Basic authentication of the `/users` routes (and the `?id=`
//! compatibility routes), enabled by `SKIFF_API_USER` with a password.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Uri, header};
use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::config::Credentials;
use crate::error::Error;
use crate::state::AppState;

/// Extracting this proves the request may use the users API: either no
/// credentials are configured, or the request carries the right ones.
/// Handlers take it first, so an unauthenticated request learns nothing
/// else (not even whether its body or id is valid).
pub struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        authorize(state, &parts.method, &parts.uri, &parts.headers)
    }
}

/// [`check`], with a refusal recorded and turned into the `401`.
pub fn authorize(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Authorized, Error> {
    check(state.config.credentials.as_ref(), headers).map_err(|refused| {
        refused.record(method, uri, headers);
        Error::Unauthorized
    })
}

/// Why credentials were refused: logged and counted, never shown to the
/// client (who gets the same `401` whatever the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No `Authorization` header: a client's first try, usually.
    Missing,
    /// Not `Basic` credentials that decode to `user:password`.
    Malformed,
    /// Well-formed credentials that do not match.
    Wrong,
}

impl Refused {
    fn as_str(self) -> &'static str {
        match self {
            Refused::Missing => "missing",
            Refused::Malformed => "malformed",
            Refused::Wrong => "wrong",
        }
    }

    /// One log line (never with the credentials themselves) and the
    /// `skiff_auth_failures_total` counter, by reason. Missing credentials
    /// are how Basic authentication starts, so they are only logged at
    /// debug level; malformed and wrong ones are warnings.
    fn record(self, method: &Method, uri: &Uri, headers: &HeaderMap) {
        metrics::counter!(crate::telemetry::AUTH_FAILURES, "reason" => self.as_str()).increment(1);
        let request_id = headers
            .get(crate::http::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let (method, path) = (method.as_str(), uri.path());
        if self == Refused::Missing {
            tracing::debug!(
                reason = self.as_str(),
                method,
                path,
                request_id,
                "authentication failed"
            );
        } else {
            tracing::warn!(
                reason = self.as_str(),
                method,
                path,
                request_id,
                "authentication failed"
            );
        }
    }
}

/// `Ok` when `expected` is unset or `headers` carry exactly those Basic
/// credentials. Both halves are always compared, each in constant time, so
/// the time taken does not tell which half (or which byte) was wrong.
pub fn check(expected: Option<&Credentials>, headers: &HeaderMap) -> Result<Authorized, Refused> {
    let Some(expected) = expected else {
        return Ok(Authorized);
    };
    if !headers.contains_key(header::AUTHORIZATION) {
        return Err(Refused::Missing);
    }
    let (user, password) = basic_credentials(headers).ok_or(Refused::Malformed)?;
    let user_ok = user.as_bytes().ct_eq(expected.user.as_bytes());
    let password_ok = password
        .as_bytes()
        .ct_eq(expected.password.expose().as_bytes());
    if bool::from(user_ok & password_ok) {
        Ok(Authorized)
    } else {
        Err(Refused::Wrong)
    }
}

/// The user and password of an `Authorization: Basic …` header (RFC 7617).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn creds() -> Credentials {
        Credentials {
            user: "admin".into(),
            password: Secret::new("s3:cret"),
        }
    }

    fn basic(user_colon_password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_colon_password);
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {encoded}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn without_configured_credentials_everything_passes() {
        assert!(check(None, &HeaderMap::new()).is_ok());
    }

    #[test]
    fn only_the_exact_credentials_pass() {
        let c = creds();
        assert!(check(Some(&c), &basic("admin:s3:cret")).is_ok());
        for wrong in [
            "admin:s3:cre",
            "admin:s3:cretX",
            "Admin:s3:cret",
            "admin",
            ":",
            "",
        ] {
            assert!(check(Some(&c), &basic(wrong)).is_err(), "{wrong}");
        }
        assert_eq!(
            check(Some(&c), &basic("admin:nope")).err(),
            Some(Refused::Wrong)
        );
        assert_eq!(
            check(Some(&c), &HeaderMap::new()).err(),
            Some(Refused::Missing)
        );
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(check(Some(&c), &bearer).err(), Some(Refused::Malformed));
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("admin:s3:cret");
        h.insert(
            header::AUTHORIZATION,
            format!("basic {encoded}").parse().unwrap(),
        );
        assert!(check(Some(&creds()), &h).is_ok());
    }
}
