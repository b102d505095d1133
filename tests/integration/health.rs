//! `GET /healthz`, `GET /readyz` and `GET /health`.

use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

use crate::support::{eventually, spawn};

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
    app.shutdown().await.expect("the server stops cleanly");
}
