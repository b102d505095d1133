//! What every route shares, over real HTTP: 404 and 405 problems, the body
//! limit, the request timeout, request ids, compression, panics.

#[cfg(feature = "ip")]
use std::time::Duration;

#[cfg(feature = "ip")]
use crate::support::stub::{Behaviour, Stub};
use crate::support::{assert_problem, spawn, spawn_with, test_config};

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
