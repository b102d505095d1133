//! Optional HTTP Basic authentication of the `/users` routes (and the `?id=`
//! compatibility routes), enabled by `SKIFF_API_USER` with a password.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::config::Credentials;
use crate::error::Error;

/// Extracting this proves the request may use the users API: either no
/// credentials are configured, or the request carries the right ones.
/// Handlers take it first, so an unauthenticated request learns nothing
/// else (not even whether its body or id is valid).
pub struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        check(state.config.credentials.as_ref(), &parts.headers)
    }
}

/// `Ok` when `expected` is unset or `headers` carry exactly those Basic
/// credentials. Both halves are always compared, each in constant time, so
/// the time taken does not tell which half (or which byte) was wrong.
pub fn check(expected: Option<&Credentials>, headers: &HeaderMap) -> Result<Authorized, Error> {
    let Some(expected) = expected else {
        return Ok(Authorized);
    };
    let (user, password) = basic_credentials(headers).ok_or(Error::Unauthorized)?;
    let user_ok = user.as_bytes().ct_eq(expected.user.as_bytes());
    let password_ok = password
        .as_bytes()
        .ct_eq(expected.password.expose().as_bytes());
    if bool::from(user_ok & password_ok) {
        Ok(Authorized)
    } else {
        Err(Error::Unauthorized)
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
        assert!(check(Some(&c), &HeaderMap::new()).is_err());
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert!(check(Some(&c), &bearer).is_err());
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
