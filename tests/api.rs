//! The foundation's routes and middleware, over real HTTP.

mod common;

#[cfg(feature = "ip")]
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
#[cfg(feature = "ip")]
use common::stub::{Behaviour, Stub};
use common::{assert_problem, eventually, header, metric, spawn, spawn_with, test_config};
use tower::ServiceExt;

#[tokio::test]
async fn root_says_hello_world_to_curl_and_a_page_to_browsers() {
    let app = spawn().await;
    let r = app.get("/").await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type").starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), "Hello World");

    let r = app
        .client
        .get(app.url("/"))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert!(header(&r, "content-type").starts_with("text/html"));
    let page = r.text().await.unwrap();
    for link in ["/docs", "/openapi.json", "/metrics"] {
        assert!(
            page.contains(&format!("href=\"{link}\"")),
            "landing page links {link}"
        );
    }
}

#[tokio::test]
async fn hello_says_hello() {
    let app = spawn().await;
    let r = app.get("/hello").await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type").starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), "hello");
}

#[tokio::test]
async fn time_defaults_to_tokyo_and_takes_any_iana_zone() {
    let app = spawn().await;
    let body: serde_json::Value = app.get("/time").await.json().await.unwrap();
    assert_eq!(body["timeZone"], "Asia/Tokyo");
    assert_eq!(body["utcOffset"], "+09:00");
    assert_eq!(body["abbreviation"], "JST");
    let time = body["time"].as_str().unwrap();
    assert!(time.ends_with("+09:00") && time.len() == 29, "{time}");
    let parsed: jiff::Timestamp = time.parse().unwrap();
    let skew = jiff::Timestamp::now().duration_since(parsed).abs();
    assert!(skew < jiff::SignedDuration::from_secs(60), "{time} is now");

    let body: serde_json::Value = app
        .get("/time?tz=America/New_York")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["timeZone"], "America/New_York");
    assert!(["EST", "EDT"].contains(&body["abbreviation"].as_str().unwrap()));

    let problem = assert_problem(app.get("/time?tz=Mars/Olympus_Mons").await, 400).await;
    assert_eq!(problem["errors"][0]["field"], "tz");
}

#[tokio::test]
async fn time_zone_default_follows_the_configuration() {
    let (mut config, dir) = test_config();
    config.time_zone = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
    config.time_zone_name = "Europe/Paris".into();
    let app = spawn_with(config, dir).await;
    let body: serde_json::Value = app.get("/time").await.json().await.unwrap();
    assert_eq!(body["timeZone"], "Europe/Paris");
}

#[tokio::test]
async fn health_and_readiness_are_up() {
    let app = spawn().await;
    let r = app.get("/healthz").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status": "UP"})
    );
    for path in ["/readyz", "/health"] {
        let r = app.get(path).await;
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["status"], "UP");
        #[cfg(feature = "users")]
        assert_eq!(body["checks"]["database"], "UP");
    }
}

#[tokio::test]
async fn readiness_goes_down_once_shutdown_begins() {
    let mut app = spawn().await;
    let state = app.state.clone();
    app.begin_shutdown();
    eventually("shutdown to begin", || async { state.is_draining() }).await;
    // New connections are no longer accepted, so ask the router directly.
    let router = skiff::http::router(state);
    let response = router
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["status"], "DOWN");
}

#[tokio::test]
async fn unknown_routes_are_404_problems() {
    let app = spawn().await;
    let body = assert_problem(app.get("/no/such/thing").await, 404).await;
    assert!(body["detail"].as_str().unwrap().contains("/no/such/thing"));
}

#[tokio::test]
async fn wrong_methods_are_405_problems_with_allow() {
    let app = spawn().await;
    let r = app.client.delete(app.url("/hello")).send().await.unwrap();
    let allow = r.headers()["allow"].to_str().unwrap().to_string();
    assert!(allow.contains("GET"), "{allow}");
    assert_problem(r, 405).await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_problems() {
    let (mut config, dir) = test_config();
    config.body_limit = 1024;
    let app = spawn_with(config, dir).await;
    let r = app
        .client
        .post(app.url("/hello"))
        .body(vec![b'x'; 1025])
        .send()
        .await
        .unwrap();
    assert_problem(r, 413).await;
}

#[cfg(feature = "ip")]
#[tokio::test]
async fn requests_over_the_timeout_are_503_problems() {
    let stub = Stub::start(Behaviour::Hang).await;
    let (mut config, dir) = test_config();
    config.ip_upstream = stub.url();
    config.ip_timeout = Duration::from_secs(30);
    config.request_timeout = Duration::from_millis(200);
    let app = spawn_with(config, dir).await;
    let body = assert_problem(app.get("/ip").await, 503).await;
    assert!(
        body["detail"].as_str().unwrap().contains("timeout"),
        "{body}"
    );
    // The server is fine afterwards.
    assert_eq!(app.get("/hello").await.status(), 200);
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn().await;
    let r = app
        .client
        .get(app.url("/hello"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let a = app.get("/hello").await.headers()["x-request-id"].clone();
    let b = app.get("/nope").await.headers()["x-request-id"].clone();
    assert_ne!(a, b);
    assert_eq!(a.len(), 36, "a generated id is a UUID");
}

#[tokio::test]
async fn json_and_text_are_gzipped_when_the_client_accepts_it() {
    let app = spawn().await;
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = raw
        .get(app.url("/openapi.json"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let bytes = r.bytes().await.unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "a gzip stream");

    let r = raw.get(app.url("/openapi.json")).send().await.unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    assert!(r.json::<serde_json::Value>().await.is_ok());

    // A client that decompresses sees the same document.
    let body: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(body["paths"]["/hello"].is_object());
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let app = spawn().await;
    app.get("/hello").await;
    app.get("/hello").await;
    app.get("/time?tz=Nope").await;
    app.get("/missing").await;
    let r = app.get("/metrics").await;
    assert!(header(&r, "content-type").starts_with("text/plain"));
    let text = r.text().await.unwrap();
    let sample = |labels: &str| metric(&text, &format!("http_requests_total{{{labels}}}"));
    assert_eq!(
        sample(r#"method="GET",route="/hello",status="200""#),
        Some(2.0)
    );
    assert_eq!(
        sample(r#"method="GET",route="/time",status="400""#),
        Some(1.0)
    );
    assert_eq!(
        sample(r#"method="GET",route="unmatched",status="404""#),
        Some(1.0)
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket{"),
        "latency histogram"
    );
    assert!(text.contains("http_requests_in_flight"));
    assert!(text.contains("skiff_build_info{version=\""));
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_problem_and_the_server_lives_on() {
    use axum::routing::get;
    async fn boom() -> &'static str {
        panic!("deliberate test panic")
    }
    let (config, _dir) = test_config();
    let routes = axum::Router::new()
        .route("/boom", get(boom))
        .route("/fine", get(|| async { "fine" }));
    let app = skiff::http::with_middleware(routes, &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let r = client
        .get(format!("http://{addr}/boom"))
        .send()
        .await
        .unwrap();
    let body = assert_problem(r, 500).await;
    assert!(
        !body["detail"].as_str().unwrap().contains("deliberate"),
        "no internals leak"
    );
    let r = client
        .get(format!("http://{addr}/fine"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "fine");
}

/// `docs/openapi.json` documents the default (full) build.
#[cfg(all(feature = "ip", feature = "lua", feature = "users", feature = "docs"))]
#[tokio::test]
async fn the_committed_openapi_document_is_the_generated_one() {
    let app = spawn().await;
    let served: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .expect("docs/openapi.json is committed");
    assert_eq!(
        committed,
        skiff::http::openapi::document_json(),
        "docs/openapi.json is stale: regenerate it with `cargo run -- openapi > docs/openapi.json`"
    );
    let committed: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(served, committed);
    for path in [
        "/",
        "/hello",
        "/time",
        "/healthz",
        "/readyz",
        "/health",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(served["paths"][path].is_object(), "{path} is documented");
    }
}
