//! What handlers read from a request's head, parsed in one place: entity-tag
//! conditions (`If-Match`, `If-None-Match`), weighted lists (`Accept`,
//! `Accept-Encoding`) and the query string's pairs.
//!
//! Hand-written: the typed-header crate (`headers`) is not in the tree, and
//! tower-http's own `Accept-Encoding` parser is private; these are a few
//! dozen lines each, tested below.

use axum::extract::Query;
use axum::http::{HeaderMap, HeaderName, Uri, header};

/// One entity tag of a conditional header (RFC 9110 §8.8.3).
#[derive(Debug, PartialEq, Eq)]
pub struct Tag<'a> {
    pub weak: bool,
    /// The tag between its quotes.
    pub opaque: &'a str,
}

/// What a conditional header (`If-Match`, `If-None-Match`) says.
#[derive(Debug, PartialEq, Eq)]
pub enum Condition<'a> {
    /// `*`: any current representation.
    Any,
    Tags(Vec<Tag<'a>>),
}

/// Parses every `name` header into one condition; `None` when absent.
/// Unparsable parts are skipped (they can match nothing).
pub fn condition<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Condition<'a>> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let mut tags = Vec::new();
    for value in values {
        let Ok(text) = value.to_str() else { continue };
        if text.trim() == "*" {
            return Some(Condition::Any);
        }
        tags.extend(parse_tags(text));
    }
    Some(Condition::Tags(tags))
}

/// `W/"a", "b"` → the tags, in order. Commas inside quotes do not split.
fn parse_tags(mut text: &str) -> Vec<Tag<'_>> {
    let mut tags = Vec::new();
    loop {
        text = text.trim_start_matches([' ', '\t', ',']);
        if text.is_empty() {
            return tags;
        }
        let weak = text.starts_with("W/");
        if weak {
            text = &text[2..];
        }
        let Some(rest) = text.strip_prefix('"') else {
            return tags;
        };
        let Some(end) = rest.find('"') else {
            return tags;
        };
        tags.push(Tag {
            weak,
            opaque: &rest[..end],
        });
        text = &rest[end + 1..];
    }
}

/// Whether `If-None-Match` names the current representation, whose tag is
/// `opaque` (without quotes), or is `*`: weak comparison, as RFC 9110
/// §13.1.2 asks for this header. `false` when the header is absent.
pub fn if_none_match(headers: &HeaderMap, opaque: &str) -> bool {
    match condition(headers, &header::IF_NONE_MATCH) {
        None => false,
        Some(Condition::Any) => true,
        Some(Condition::Tags(tags)) => tags.iter().any(|t| t.opaque == opaque),
    }
}

/// One element of a weighted list such as `Accept` or `Accept-Encoding`.
#[derive(Debug, PartialEq)]
pub struct Weighted<'a> {
    /// The element without its parameters (`text/html`, `gzip`).
    pub value: &'a str,
    /// Its weight (RFC 9110 §12.4.2), 1 when not given.
    pub q: f32,
}

/// The elements of every `name` header, in order.
pub fn weighted<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = Weighted<'a>> + 'a {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|item| {
            let mut parts = item.split(';');
            let value = parts.next().unwrap_or_default().trim();
            let q = parts
                .filter_map(|p| {
                    let (name, value) = p.split_once('=')?;
                    name.trim().eq_ignore_ascii_case("q").then(|| value.trim())
                })
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            Weighted { value, q }
        })
        .filter(|w| !w.value.is_empty())
}

/// The weight `Accept` gives to `kind/sub`, by its most specific matching
/// range (RFC 9110 §12.5.1); 0 when nothing matches.
pub fn accept_quality(headers: &HeaderMap, kind: &str, sub: &str) -> f32 {
    let mut best: Option<(u8, f32)> = None;
    for Weighted { value, q } in weighted(headers, &header::ACCEPT) {
        let Some((k, s)) = value.split_once('/') else {
            continue;
        };
        let (k, s) = (k.trim(), s.trim());
        let specificity = if k.eq_ignore_ascii_case(kind) && s.eq_ignore_ascii_case(sub) {
            2
        } else if k.eq_ignore_ascii_case(kind) && s == "*" {
            1
        } else if (k, s) == ("*", "*") {
            0
        } else {
            continue;
        };
        if best.is_none_or(|(spec, _)| specificity > spec) {
            best = Some((specificity, q));
        }
    }
    best.map_or(0.0, |(_, q)| q)
}

/// The query's name/value pairs, percent-decoded, in order, repeats
/// included; none when the query cannot be decoded.
pub fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    Query::try_from_uri(uri)
        .map(|Query(pairs)| pairs)
        .unwrap_or_default()
}

/// The first value of query parameter `name`.
pub fn first_query_param(uri: &Uri, name: &str) -> Option<String> {
    query_pairs(uri)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: HeaderName, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name.clone(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn tags_parse_with_weakness_lists_and_commas_inside_quotes() {
        assert_eq!(
            parse_tags(r#"W/"a", "b,c" ,"d""#),
            vec![
                Tag {
                    weak: true,
                    opaque: "a"
                },
                Tag {
                    weak: false,
                    opaque: "b,c"
                },
                Tag {
                    weak: false,
                    opaque: "d"
                },
            ]
        );
        assert_eq!(parse_tags("garbage"), vec![]);
    }

    #[test]
    fn conditions_join_repeated_headers_and_take_star() {
        let h = headers(header::IF_MATCH, &[r#""a""#, r#"W/"b""#]);
        let Some(Condition::Tags(tags)) = condition(&h, &header::IF_MATCH) else {
            panic!("two tags")
        };
        assert_eq!(tags.len(), 2);
        assert_eq!(
            condition(&headers(header::IF_MATCH, &[" * "]), &header::IF_MATCH),
            Some(Condition::Any)
        );
        assert_eq!(condition(&HeaderMap::new(), &header::IF_MATCH), None);
    }

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_star() {
        let matches = |v: &str| if_none_match(&headers(header::IF_NONE_MATCH, &[v]), "abc-gzip");
        assert!(matches("\"abc-gzip\""));
        assert!(matches("\"x\", W/\"abc-gzip\""));
        assert!(matches("*"));
        assert!(!matches("\"abc\""));
        assert!(!matches("\"abc-deflate\""));
        assert!(!matches("abc-gzip"));
        assert!(!if_none_match(&HeaderMap::new(), "abc-gzip"));
    }

    #[test]
    fn weighted_lists_read_q_in_any_case_and_default_to_one() {
        let h = headers(
            header::ACCEPT_ENCODING,
            &["gzip;q=0.5, br", "x;Q=0 , y; q = 0.1, ,z;q=nope"],
        );
        let items: Vec<_> = weighted(&h, &header::ACCEPT_ENCODING)
            .map(|w| (w.value, w.q))
            .collect();
        assert_eq!(
            items,
            [
                ("gzip", 0.5),
                ("br", 1.0),
                ("x", 0.0),
                ("y", 0.1),
                ("z", 1.0)
            ]
        );
    }

    #[test]
    fn accept_quality_takes_the_most_specific_range() {
        let q =
            |accept: &str, sub| accept_quality(&headers(header::ACCEPT, &[accept]), "text", sub);
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert_eq!(q(firefox, "html"), 1.0);
        assert_eq!(q(firefox, "plain"), 0.8);
        assert_eq!(q("text/html;q=0.5, text/*", "html"), 0.5);
        assert_eq!(q("text/html;q=0.5, text/*", "plain"), 1.0);
        assert_eq!(q("image/png", "plain"), 0.0);
        assert_eq!(accept_quality(&HeaderMap::new(), "text", "html"), 0.0);
    }

    #[test]
    fn query_pairs_are_decoded_in_order_with_repeats_and_the_first_wins() {
        let uri: Uri = "/lua/echo?a=1&b=%E2%9C%93&a=2&empty=&flag".parse().unwrap();
        let pairs = query_pairs(&uri);
        let expected = [
            ("a", "1"),
            ("b", "✓"),
            ("a", "2"),
            ("empty", ""),
            ("flag", ""),
        ];
        assert_eq!(pairs.len(), expected.len());
        for ((name, value), (en, ev)) in pairs.iter().zip(expected) {
            assert_eq!((name.as_str(), value.as_str()), (en, ev));
        }
        let uri: Uri = "/?a=1&id=x%2Dy&id=z".parse().unwrap();
        assert_eq!(first_query_param(&uri, "id").as_deref(), Some("x-y"));
        assert_eq!(first_query_param(&"/?idx=1".parse().unwrap(), "id"), None);
    }
}
