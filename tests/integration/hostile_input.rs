//! Hostile input: generated requests (proptest) through the whole router —
//! user bodies, merge patches, query strings, conditional headers, path
//! segments — and random bytes on a real socket. Nothing panics, nothing is
//! a `5xx`, every error is a deliberate `4xx` problem, and whatever is
//! accepted is stored exactly as sent.
//!
//! `PROPTEST_CASES` sets the cases per property (default 256). The users
//! properties run on SQLite, and on PostgreSQL too under
//! `scripts/with-postgres`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

/// The whole application router, called in-process (no socket): a request
/// goes through every layer a real one does.
struct Target {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

/// What came back.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl Target {
    fn new(rt: tokio::runtime::Runtime, config: skiff::Config, dir: tempfile::TempDir) -> Target {
        let router = rt.block_on(async {
            skiff::telemetry::init_logging(&config);
            let app = skiff::App::build(config, skiff::ServeOptions::default())
                .await
                .expect("the app starts");
            skiff::http::router(app.state().clone())
        });
        Target {
            rt,
            router,
            _dir: dir,
        }
    }

    fn send(&self, request: Request<Body>) -> Answer {
        self.rt.block_on(async {
            let response = self
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("infallible");
            let (parts, body) = response.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX)
                .await
                .expect("the body is read");
            Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        })
    }

    fn get(&self, uri: &str) -> Answer {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Runs `property` on `strategy`'s values, failing the test with the
/// smallest failing input proptest finds. No regression files are written.
fn check<S: Strategy>(strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let config = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, property) {
        panic!("{e}");
    }
}

/// A `4xx` is a problem document that says so.
fn assert_problem(answer: &Answer) -> Result<(), TestCaseError> {
    let status = answer.status.as_u16();
    prop_assert!(
        (400..500).contains(&status),
        "a deliberate 4xx, not {status}: {:?}",
        answer.body
    );
    prop_assert_eq!(
        answer.headers.get(header::CONTENT_TYPE),
        Some(&HeaderValue::from_static("application/problem+json"))
    );
    let problem = answer.json();
    prop_assert_eq!(&problem["status"], &Value::from(status), "{}", problem);
    prop_assert!(problem["title"].is_string() && problem["detail"].is_string());
    Ok(())
}

/// Percent-encodes every byte outside the unreserved set.
fn encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Text that probes the edges: any Unicode, control characters, lengths
/// around the limits, email-shaped strings, case-folding oddities.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "\\PC{0,16}",
        2 => "[a-zA-Z0-9.+_-]{1,12}@[a-z0-9.-]{1,12}",
        1 => "\\PC{0,6}@\\PC{0,6}",
        1 => "[\\x00-\\x20\\x7f\\u{85}\\u{a0}\\u{2028}\\u{feff}a@]{0,8}",
        1 => "x{250,260}",
        1 => "[a-z]{240,250}@[a-z]{1,10}",
        1 => prop::sample::select(vec![
            "", " ", "@", "a@", "@b", "a@@b", "a@b", "İSTANBUL@EXAMPLE.COM",
            "ß@straße.de", "\u{0}", "a\u{0}@b", "a@b\u{0}", "\u{1F600}@\u{1F600}",
        ])
        .prop_map(String::from),
    ]
    .boxed()
}

#[test]
fn domain_parsers_never_panic_and_accept_only_what_they_promise() {
    use skiff::config::{parse_duration, parse_size};
    #[cfg(feature = "users")]
    use skiff::db::{Email, Name, UserId, model::email_key};
    check("\\PC{0,300}|[\\x00-\\x7f]{0,20}", |s: String| {
        let _ = (parse_duration(&s), parse_size(&s));
        #[cfg(feature = "users")]
        {
            if let Ok(email) = Email::parse(&s) {
                prop_assert!(s.chars().count() <= 254);
                prop_assert_eq!(s.matches('@').count(), 1);
                prop_assert!(!s.chars().any(|c| c.is_whitespace() || c.is_control()));
                prop_assert_eq!(email.as_str(), s.as_str());
                prop_assert_eq!(email.key(), email_key(&s));
            }
            if Name::parse(&s).is_ok() {
                prop_assert!(s.chars().count() <= 256 && !s.contains('\0'));
            }
            if let Some(id) = UserId::parse(&s) {
                prop_assert_eq!(UserId::parse(&id.to_string()), Some(id));
            }
        }
        Ok(())
    });
}

#[test]
fn query_strings_get_200_or_a_400_problem() {
    let (config, dir) = crate::support::test_config();
    query_strings_get_200_or_a_400_problem_from(&Target::new(runtime(), config, dir));
}

/// The query-string property against `target` (on both back ends from
/// `users::query_strings_get_200_or_a_400_problem_on_both_back_ends`).
fn query_strings_get_200_or_a_400_problem_from(target: &Target) {
    let names = prop_oneof![
        3 => prop::sample::select(vec!["limit", "after", "email", "id", "tz"]).prop_map(String::from),
        1 => "\\PC{0,6}",
    ];
    let pairs = prop::collection::vec((names, text()), 0..4).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k.as_bytes()), encode(v.as_bytes())))
            .collect::<Vec<_>>()
            .join("&")
    });
    // Raw query text: stray `%`, bad escapes, escapes of invalid UTF-8.
    let raw = "[a-zA-Z0-9%&=;+._~!$'()*,/:@?-]{0,40}|(limit|after|id|tz|email)=%[0-9a-fA-FzZ]{0,2}";
    // What PostgreSQL refuses in text: NUL, and invalid UTF-8 (an overlong
    // NUL, a UTF-16 surrogate, a lone continuation byte) around an address.
    let refused = (
        prop::sample::select(vec!["email", "after", "id", "limit"]),
        "[a-z0-9@.]{0,8}",
        prop::sample::select(vec!["%00", "%C0%80", "%ED%A0%80", "%80", "%FF"]),
        "[a-z0-9@.]{0,8}",
    )
        .prop_map(|(name, before, bad, after)| format!("{name}={before}{bad}{after}"));
    let routes = prop::sample::select(vec![
        #[cfg(feature = "users")]
        "/users",
        "/",
        "/time",
    ]);
    check(
        (routes, prop_oneof![pairs, raw, refused]),
        |(route, query)| {
            let answer = target.get(&format!("{route}?{query}"));
            let status = answer.status.as_u16();
            let allowed: &[u16] = match route {
                "/users" => &[200, 400],
                "/" => &[200, 400, 404],
                _ => &[200, 400],
            };
            prop_assert!(allowed.contains(&status), "{route}?{query}: {status}");
            if status >= 400 {
                assert_problem(&answer)?;
            }
            Ok(())
        },
    );
}

#[test]
fn path_segments_that_name_no_user_or_script_are_404() {
    let (config, dir) = crate::support::test_config();
    let target = Target::new(runtime(), config, dir);
    let segment = prop_oneof![
        prop::collection::vec(any::<u8>(), 1..40).prop_map(|b| encode(&b)),
        "[a-zA-Z0-9._~%-]{1,70}",
    ];
    let methods = prop::sample::select(vec![
        Method::GET,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ]);
    check((methods, segment), |(method, segment)| {
        let request = Request::builder()
            .method(method.clone())
            .uri(format!("/users/{segment}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"email":"a@b"}"#));
        let Ok(request) = request else {
            return Err(TestCaseError::reject("not a URI"));
        };
        let answer = target.send(request);
        prop_assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{} /users/{}",
            method,
            segment
        );
        assert_problem(&answer)?;
        // Scripts: whatever the name, never a 5xx; a malformed one is 404.
        let answer = target.get(&format!("/lua/{segment}"));
        prop_assert!(
            answer.status.as_u16() < 500,
            "/lua/{}: {}",
            segment,
            answer.status
        );
        let decoded = percent_decode(&segment);
        let well_formed = (1..=64).contains(&decoded.len())
            && decoded
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-');
        if !well_formed {
            prop_assert_eq!(answer.status, StatusCode::NOT_FOUND, "/lua/{}", segment);
        }
        Ok(())
    });
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(feature = "users")]
mod users {
    use super::*;
    use crate::support::backends::TestDb;

    const FIELDS: &[&str] = &[
        "email",
        "accountEnabled",
        "displayName",
        "givenName",
        "surname",
        "companyName",
        "id",
        "createdAt",
        "updatedAt",
    ];

    fn field_name() -> BoxedStrategy<String> {
        prop_oneof![
            6 => prop::sample::select(FIELDS).prop_map(String::from),
            1 => "\\PC{0,8}",
        ]
        .boxed()
    }

    fn json_leaf() -> BoxedStrategy<Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
                .map(Value::Number)),
            text().prop_map(Value::from),
        ]
        .boxed()
    }

    fn json_value() -> BoxedStrategy<Value> {
        json_leaf()
            .prop_recursive(3, 24, 5, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::btree_map(field_name(), inner, 0..5)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
            .boxed()
    }

    /// Any JSON object of user-ish fields: mostly wrong somewhere.
    fn loose_object() -> BoxedStrategy<Value> {
        let value = prop_oneof![
            4 => text().prop_map(Value::from),
            1 => any::<bool>().prop_map(Value::from),
            1 => json_value(),
        ];
        prop::collection::btree_map(field_name(), value, 0..8)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
            .boxed()
    }

    /// A user as a client would send one, mostly valid: an email of any
    /// script, names of any text (around the length limit too), read-only
    /// fields now and then, and sometimes one field too many.
    fn user_like() -> BoxedStrategy<Value> {
        let email = prop_oneof![
            4 => "[^@\\s\\pC]{1,12}@[^@\\s\\pC]{1,12}".prop_map(Value::from),
            1 => text().prop_map(Value::from),
            1 => Just(Value::Null),
        ];
        let name = || {
            prop::option::weighted(
                0.5,
                prop_oneof![
                    12 => "\\PC{0,24}".prop_map(Value::from),
                    2 => text().prop_map(Value::from),
                    1 => Just(Value::Null),
                ],
            )
        };
        let enabled = prop::option::weighted(
            0.5,
            prop_oneof![
                4 => any::<bool>().prop_map(Value::from),
                1 => json_leaf(),
            ],
        );
        let extra = prop::option::weighted(0.15, (field_name(), json_leaf()));
        (
            prop::option::weighted(0.95, email),
            enabled,
            [name(), name(), name(), name()],
            extra,
        )
            .prop_map(|(email, enabled, names, extra)| {
                let mut user = serde_json::Map::new();
                let fields = ["displayName", "givenName", "surname", "companyName"];
                let named = fields.iter().zip(names).filter_map(|(f, v)| Some((*f, v?)));
                let known = [("email", email), ("accountEnabled", enabled)];
                for (field, value) in known
                    .into_iter()
                    .filter_map(|(f, v)| Some((f, v?)))
                    .chain(named)
                {
                    user.insert(field.to_string(), value);
                }
                if let Some((field, value)) = extra {
                    user.insert(field, value);
                }
                Value::Object(user)
            })
            .boxed()
    }

    fn user_object() -> BoxedStrategy<Value> {
        prop_oneof![4 => user_like(), 1 => loose_object()].boxed()
    }

    /// A body: a user-like object, any JSON, a truncated object, random bytes.
    fn body() -> BoxedStrategy<Vec<u8>> {
        prop_oneof![
            10 => user_object().prop_map(|v| v.to_string().into_bytes()),
            1 => json_value().prop_map(|v| v.to_string().into_bytes()),
            1 => (user_object(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
                let bytes = v.to_string().into_bytes();
                bytes[..cut.index(bytes.len() + 1)].to_vec()
            }),
            1 => prop::collection::vec(any::<u8>(), 0..64),
        ]
        .boxed()
    }

    /// The `Content-Type` of a write: mostly the one its method takes.
    #[derive(Debug, Clone)]
    enum ContentType {
        Right,
        Given(Option<String>),
    }

    fn content_type() -> BoxedStrategy<ContentType> {
        prop_oneof![
            12 => Just(ContentType::Right),
            1 => Just(ContentType::Given(Some("application/merge-patch+json".into()))),
            1 => Just(ContentType::Given(Some("Application/JSON; charset=utf-8".into()))),
            1 => Just(ContentType::Given(None)),
            1 => "[ -~]{0,30}".prop_map(|t| ContentType::Given(Some(t))),
        ]
        .boxed()
    }

    #[derive(Debug, Clone, Copy)]
    enum Write {
        Create,
        CreateCompat,
        Replace,
        ReplaceCompat,
        Patch,
    }

    /// Runs `property` against a fresh SQLite database, then a fresh
    /// PostgreSQL one when a server is available.
    fn on_both(test: &str, property: impl Fn(&Target)) {
        let db = TestDb::sqlite();
        let (config, dir) = db.config();
        property(&Target::new(runtime(), config, dir));
        let rt = runtime();
        if let Some(db) = rt.block_on(TestDb::postgres(test)) {
            let (config, dir) = db.config();
            let target = Target::new(rt, config, dir);
            property(&target);
            target.rt.block_on(db.cleanup());
        }
    }

    fn create(target: &Target, email: &str) -> (String, String) {
        let answer = target.send(
            Request::post("/users")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    serde_json::json!({ "email": email }).to_string(),
                ))
                .unwrap(),
        );
        assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
        let etag = answer.headers[header::ETAG].to_str().unwrap().to_owned();
        (answer.json()["id"].as_str().unwrap().to_owned(), etag)
    }

    /// What a stored user must show for `field` after a write that sent
    /// `sent` (`None`: the field was absent).
    fn expected(field: &str, sent: Option<&Value>, patch: bool) -> Option<Value> {
        let default = match field {
            "accountEnabled" => Value::Bool(false),
            "email" => return sent.filter(|v| v.is_string()).cloned(),
            _ => Value::from(""),
        };
        match sent {
            None if patch => None, // unchanged: not checked
            None | Some(Value::Null) => Some(default),
            Some(v) => Some(v.clone()),
        }
    }

    #[test]
    fn user_bodies_get_a_user_or_a_4xx_problem_and_are_stored_as_sent() {
        on_both("hostile_input::users::user_bodies", |target| {
            let (id, _) = create(target, "target@example.com");
            let writes = prop::sample::select(vec![
                Write::Create,
                Write::CreateCompat,
                Write::Replace,
                Write::ReplaceCompat,
                Write::Patch,
            ]);
            check(
                (writes, content_type(), body()),
                |(write, content_type, body)| {
                    let (method, uri, allowed): (_, _, &[u16]) = match write {
                        Write::Create => (
                            Method::POST,
                            "/users".to_string(),
                            &[201, 400, 409, 413, 415, 422],
                        ),
                        Write::CreateCompat => (
                            Method::POST,
                            "/".to_string(),
                            &[201, 400, 409, 413, 415, 422],
                        ),
                        Write::Replace => (
                            Method::PUT,
                            format!("/users/{id}"),
                            &[200, 400, 409, 413, 415, 422],
                        ),
                        Write::ReplaceCompat => (
                            Method::PUT,
                            format!("/?id={id}"),
                            &[200, 400, 409, 413, 415, 422],
                        ),
                        Write::Patch => (
                            Method::PATCH,
                            format!("/users/{id}"),
                            &[200, 400, 409, 413, 415, 422],
                        ),
                    };
                    let mut request = Request::builder().method(method).uri(&uri);
                    let given = match &content_type {
                        ContentType::Right if matches!(write, Write::Patch) => {
                            Some("application/merge-patch+json")
                        }
                        ContentType::Right => Some("application/json"),
                        ContentType::Given(given) => given.as_deref(),
                    };
                    if let Some(ct) = given {
                        request = request.header(header::CONTENT_TYPE, ct);
                    }
                    let answer = target.send(request.body(Body::from(body.clone())).unwrap());
                    let status = answer.status.as_u16();
                    prop_assert!(
                        allowed.contains(&status),
                        "{:?} {:?} {}: {} {:?}",
                        write,
                        content_type,
                        String::from_utf8_lossy(&body),
                        status,
                        answer.body
                    );
                    if status >= 400 {
                        assert_problem(&answer)?;
                        if [400, 415, 422].contains(&status) {
                            let errors = &answer.json()["errors"];
                            prop_assert!(
                                errors.as_array().is_some_and(|e| !e.is_empty()),
                                "a {} lists its errors: {}",
                                status,
                                answer.json()
                            );
                        }
                        return Ok(());
                    }
                    // Accepted: stored exactly as sent, and read back the same.
                    let user = answer.json();
                    let sent: Value = serde_json::from_slice(&body).expect("accepted JSON");
                    for field in &FIELDS[..6] {
                        let want = expected(field, sent.get(*field), matches!(write, Write::Patch));
                        if let Some(want) = want {
                            prop_assert_eq!(&user[*field], &want, "{}", field);
                        }
                    }
                    let read = target.get(&format!("/users/{}", user["id"].as_str().unwrap()));
                    prop_assert_eq!(read.status, StatusCode::OK);
                    prop_assert_eq!(read.json(), user);
                    prop_assert_eq!(
                        read.headers.get(header::ETAG),
                        answer.headers.get(header::ETAG)
                    );
                    Ok(())
                },
            );
        });
    }

    #[test]
    fn query_strings_get_200_or_a_400_problem_on_both_back_ends() {
        on_both("hostile_input::users::query_strings", |target| {
            let (_, _) = create(target, "someone@example.com");
            query_strings_get_200_or_a_400_problem_from(target);
        });
    }

    /// Header values: random bytes a header may carry, lists of random
    /// tags, weak tags, stars with spaces.
    fn condition() -> BoxedStrategy<Vec<u8>> {
        prop_oneof![
            2 => prop::collection::vec(
                prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff],
                0..60,
            ),
            2 => prop::collection::vec("(W/)?\"[!#-~]{0,12}\"", 0..4)
                .prop_map(|tags| tags.join(", ").into_bytes()),
            1 => "[ \t]{0,2}\\*[ \t]{0,2}".prop_map(String::into_bytes),
        ]
        .boxed()
    }

    #[test]
    fn conditional_headers_never_let_a_write_through_without_the_current_etag() {
        on_both("hostile_input::users::conditional_headers", |target| {
            let methods = prop::sample::select(vec![
                Method::GET,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ]);
            let next = std::sync::atomic::AtomicU64::new(0);
            check((methods, condition()), |(method, value)| {
                let Ok(value) = HeaderValue::from_bytes(&value) else {
                    return Err(TestCaseError::reject("not a header value"));
                };
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (id, _) = create(target, &format!("cond-{n}@example.com"));
                let star = value.as_bytes().trim_ascii() == b"*";
                let (name, body, content_type) = match method {
                    Method::GET => (header::IF_NONE_MATCH, String::new(), "application/json"),
                    Method::PUT => (
                        header::IF_MATCH,
                        format!(r#"{{"email":"put-{n}@example.com"}}"#),
                        "application/json",
                    ),
                    Method::PATCH => (
                        header::IF_MATCH,
                        r#"{"surname":"Changed"}"#.to_string(),
                        "application/merge-patch+json",
                    ),
                    _ => (header::IF_MATCH, String::new(), "application/json"),
                };
                let answer = target.send(
                    Request::builder()
                        .method(method.clone())
                        .uri(format!("/users/{id}"))
                        .header(name, value.clone())
                        .header(header::CONTENT_TYPE, content_type)
                        .body(Body::from(body))
                        .unwrap(),
                );
                // No random tag can be this new user's ETag; only `*` matches.
                let expected = match (&method, star) {
                    (&Method::GET, true) => StatusCode::NOT_MODIFIED,
                    (&Method::GET, false) => StatusCode::OK,
                    (&Method::DELETE, true) => StatusCode::NO_CONTENT,
                    (_, true) => StatusCode::OK,
                    (_, false) => StatusCode::PRECONDITION_FAILED,
                };
                prop_assert_eq!(answer.status, expected, "{} with {:?}", method, value);
                if answer.status == StatusCode::PRECONDITION_FAILED {
                    assert_problem(&answer)?;
                    // And nothing changed.
                    let read = target.get(&format!("/users/{id}"));
                    prop_assert_eq!(read.status, StatusCode::OK);
                    prop_assert_eq!(&read.json()["surname"], &Value::from(""));
                }
                Ok(())
            });
        });
    }
}

// Random bytes on a real socket.

/// Sends `bytes` on a new connection, closes the sending half, and returns
/// the status line of the answer, if any (`None`: closed unanswered).
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the server answers or closes within 10 s: {:?}",
        String::from_utf8_lossy(bytes)
    );
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .next()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

/// A status line with a deliberate status: a `4xx`, or `505` for a
/// protocol version HTTP/1.1 cannot speak (anything else `< 500` is fine).
fn deliberate(status_line: &Option<String>) -> bool {
    let Some(line) = status_line else { return true };
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    line.starts_with("HTTP/1.") && (code < 500 || code == 505)
}

/// No request so far ended in a 500 (the metrics see even those whose
/// answer the client never read).
async fn assert_no_500(app: &crate::support::TestApp) {
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let bad: Vec<_> = metrics
        .lines()
        .filter(|l| l.starts_with("http_requests_total") && l.contains("status=\"500\""))
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
}

const VALID: &[u8] = b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
Content-Length: 23\r\nIf-Match: \"a\"\r\n\r\n{\"email\":\"a@example.com\"}";

#[test]
fn random_bytes_on_the_socket_get_no_5xx_and_the_server_lives_on() {
    let rt = runtime();
    let app = rt.block_on(crate::support::spawn());
    let addr = app.addr;
    let garbage = prop_oneof![
        // Random bytes.
        prop::collection::vec(any::<u8>(), 0..200),
        // A valid request with bytes flipped, inserted or cut.
        (
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            any::<prop::sample::Index>()
        )
            .prop_map(|(edits, cut)| {
                let mut bytes = VALID.to_vec();
                for (at, byte) in edits {
                    let i = at.index(bytes.len());
                    if byte % 2 == 0 {
                        bytes[i] = byte;
                    } else {
                        bytes.insert(i, byte);
                    }
                }
                bytes.truncate(cut.index(bytes.len()) + 1);
                bytes
            }),
    ];
    let config = ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&garbage, |bytes| {
        let status = rt.block_on(exchange(addr, &bytes));
        prop_assert!(
            deliberate(&status),
            "{:?} → {:?}",
            String::from_utf8_lossy(&bytes),
            status
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(async {
        assert_eq!(app.get("/hello").await.status(), 200);
        assert_no_500(&app).await;
    });
}

#[tokio::test]
async fn malformed_requests_get_4xx_or_are_closed_and_the_server_lives_on() {
    let app = crate::support::spawn().await;
    let cases: &[&[u8]] = &[
        b"GET /users/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /\xc3\x28 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /users/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /users?email=%ff&limit=%c3%28 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Bad: \xff\xfe\x80\r\n\r\n",
        b"GET /users/0192f0c4-8d3e-7c1a-9b7e-2f1d3c4b5a69 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \xff\"\r\n\r\n",
        b"DELETE /users/0192f0c4-8d3e-7c1a-9b7e-2f1d3c4b5a69 HTTP/1.1\r\nHost: x\r\nIf-Match: \"\xff\r\n\r\n",
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: \xff/json\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":",
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"email\":\"\xff@x\"}",
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n{}",
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
        b"GET /hello HTTP/1.1\r\nHost: x\r\n folded: header\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET /\0 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /hello HTTP/1.1\nHost: x\n\n",
        b"GET /hello HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /hello\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"G\xc3\xa9T /hello HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://evil.example/hello HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /users HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \xff\xfe==\r\n\r\n",
        b"\r\n\r\n\r\n",
        b"",
    ];
    for case in cases {
        let status = exchange(app.addr, case).await;
        assert!(
            deliberate(&status),
            "{:?} → {status:?}",
            String::from_utf8_lossy(case)
        );
    }
    assert_eq!(app.get("/hello").await.status(), 200);
    assert_no_500(&app).await;
}

/// Sends `bytes` on a new connection, closes the sending half, and returns
/// the whole answer: status code, `Content-Type` and body.
async fn raw_answer(addr: std::net::SocketAddr, bytes: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    stream.write_all(bytes).await.expect("sends");
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answered and closed within 10 s")
        .expect("reads");
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("a whole head: {:?}", String::from_utf8_lossy(&answer)));
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    let content_type = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.trim().to_owned())
        .unwrap_or_default();
    (status, content_type, answer[end + 4..].to_vec())
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or any request with
/// two, is a `400` problem; HTTP/1.0 may leave `Host` out.
#[tokio::test]
async fn a_missing_or_repeated_host_header_is_400() {
    let app = crate::support::spawn().await;
    let bad: &[&[u8]] = &[
        b"GET /hello HTTP/1.1\r\n\r\n",
        b"GET http://x/hello HTTP/1.1\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nhOST: b\r\n\r\n",
        b"GET /hello HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /no-such-route HTTP/1.1\r\n\r\n",
        b"POST /users HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    ];
    for case in bad {
        let (status, content_type, body) = raw_answer(app.addr, case).await;
        let shown = String::from_utf8_lossy(case);
        assert_eq!(status, 400, "{shown:?}");
        assert_eq!(content_type, "application/problem+json", "{shown:?}");
        let problem: Value = serde_json::from_slice(&body).expect("a JSON body");
        assert_eq!(problem["status"], 400, "{shown:?}");
    }
    let good: &[&[u8]] = &[
        b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET /hello HTTP/1.0\r\n\r\n",
        b"GET /hello HTTP/1.0\r\nHost: x\r\n\r\n",
    ];
    for case in good {
        let (status, _, _) = raw_answer(app.addr, case).await;
        assert_eq!(status, 200, "{:?}", String::from_utf8_lossy(case));
    }
}

/// A client that sends its body too slowly is answered (`503`, as any
/// request past the timeout) and cut off at the request timeout, while
/// everyone else is served.
#[cfg(feature = "users")] // the route that reads a body
#[tokio::test]
async fn a_client_too_slow_to_send_its_body_is_cut_off_at_the_request_timeout() {
    let (mut config, dir) = crate::support::test_config();
    config.request_timeout = Duration::from_millis(500);
    let app = crate::support::spawn_with(config, dir).await;
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{\"email\":",
    )
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    // Drip a byte now and then; the server must end it regardless.
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        tokio::select! {
            read = slow.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                let _ = slow.write_all(b" ").await;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the slow body is cut off"
        );
        assert_eq!(app.get("/hello").await.status(), 200);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 503") || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}
