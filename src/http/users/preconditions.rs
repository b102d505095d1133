//! Entity tags and conditional requests (RFC 9110 §8.8.3, §13).
//!
//! A user's ETag is `"{id}.{version}"`: strong, different for every write
//! (the version grows by one each time), and never equal to another user's,
//! so a tag sent to the wrong user cannot match by accident.

use axum::http::{HeaderMap, HeaderValue, header};

use crate::db::{User, UserId};
use crate::http::headers::{Condition, condition, if_none_match};

/// The strong ETag of this version of `user`.
pub fn etag(user: &User) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}.{}\"", user.id, user.version))
        .expect("a uuid and a number make a valid header value")
}

/// The versions of user `id` that `If-Match` accepts: `None` when there is
/// no condition (absent, or `*`, which any existing user meets), otherwise
/// those of its strong tags that name this user (maybe none: then only a
/// 412 or a 404 can follow).
pub fn if_match_versions(headers: &HeaderMap, id: UserId) -> Option<Vec<i64>> {
    match condition(headers, &header::IF_MATCH)? {
        Condition::Any => None,
        Condition::Tags(tags) => {
            let prefix = format!("{id}.");
            Some(
                tags.iter()
                    .filter(|t| !t.weak)
                    .filter_map(|t| t.opaque.strip_prefix(&prefix)?.parse().ok())
                    .collect(),
            )
        }
    }
}

/// Whether `If-None-Match` matches the current `user` (weak comparison), so
/// a GET answers 304.
pub fn none_match_fails(headers: &HeaderMap, user: &User) -> bool {
    let current = etag(user);
    let current = current
        .to_str()
        .expect("an etag is ASCII")
        .trim_matches('"');
    if_none_match(headers, current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Email, Millis, UserFields};

    fn user(version: i64) -> User {
        let mut u = User::new(
            UserFields::with_email(Email::parse("a@b").unwrap()),
            Millis::from_millis(0),
        );
        u.version = version;
        u
    }

    fn headers(name: axum::http::HeaderName, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name.clone(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn etags_differ_by_version_and_by_user() {
        let u = user(1);
        let mut v2 = u.clone();
        v2.version = 2;
        assert_ne!(etag(&u), etag(&v2));
        assert_ne!(etag(&u), etag(&user(1)));
        assert!(etag(&u).to_str().unwrap().starts_with('"'));
    }

    #[test]
    fn if_match_keeps_strong_tags_of_this_user_only() {
        let u = user(3);
        let other = user(3);
        let mine = etag(&u).to_str().unwrap().to_owned();
        let theirs = etag(&other).to_str().unwrap().to_owned();
        assert_eq!(if_match_versions(&HeaderMap::new(), u.id), None);
        assert_eq!(
            if_match_versions(&headers(header::IF_MATCH, &["*"]), u.id),
            None
        );
        assert_eq!(
            if_match_versions(&headers(header::IF_MATCH, &[&mine]), u.id),
            Some(vec![3])
        );
        assert_eq!(
            if_match_versions(&headers(header::IF_MATCH, &[&theirs]), u.id),
            Some(vec![])
        );
        let weak = format!("W/{mine}");
        assert_eq!(
            if_match_versions(&headers(header::IF_MATCH, &[&weak]), u.id),
            Some(vec![])
        );
        let list = format!("\"x\", {mine}");
        assert_eq!(
            if_match_versions(&headers(header::IF_MATCH, &[&list, "\"y\""]), u.id),
            Some(vec![3])
        );
    }

    #[test]
    fn if_none_match_compares_weakly_and_takes_star() {
        let u = user(1);
        let tag = etag(&u).to_str().unwrap().to_owned();
        assert!(none_match_fails(
            &headers(header::IF_NONE_MATCH, &[&tag]),
            &u
        ));
        assert!(none_match_fails(
            &headers(header::IF_NONE_MATCH, &[&format!("W/{tag}")]),
            &u
        ));
        assert!(none_match_fails(
            &headers(header::IF_NONE_MATCH, &["*"]),
            &u
        ));
        assert!(!none_match_fails(
            &headers(header::IF_NONE_MATCH, &["\"other\""]),
            &u
        ));
        assert!(!none_match_fails(&HeaderMap::new(), &u));
    }
}
