//! `/ip` against a local stub upstream: success, caching, failures, timeouts,
//! and one shared upstream call for concurrent misses.

use std::time::Duration;

use crate::support::stub::{Behaviour, Stub};
use crate::support::{assert_problem, eventually, metric, spawn_with, test_config};

async fn app_with_upstream(stub: &Stub, timeout: Duration) -> crate::support::TestApp {
    let (mut config, dir) = test_config();
    config.ip_upstream = stub.url();
    config.ip_timeout = timeout;
    spawn_with(config, dir).await
}

#[tokio::test]
async fn answers_the_upstream_address_and_caches_it() {
    let stub = Stub::start(Behaviour::Answer(200, "203.0.113.7\n")).await;
    let app = app_with_upstream(&stub, Duration::from_secs(3)).await;
    for _ in 0..3 {
        let r = app.get("/ip").await;
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body, serde_json::json!({"ip": "203.0.113.7"}));
    }
    assert_eq!(
        stub.calls(),
        1,
        "answers within the TTL come from the cache"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(metric(&metrics, "skiff_ip_cache_hits_total"), Some(2.0));
    assert_eq!(
        metric(&metrics, r#"skiff_ip_upstream_calls_total{outcome="ok"}"#),
        Some(1.0)
    );
}

#[tokio::test]
async fn ipv6_answers_are_accepted() {
    let stub = Stub::start(Behaviour::Answer(200, "2001:db8::1")).await;
    let app = app_with_upstream(&stub, Duration::from_secs(3)).await;
    let body: serde_json::Value = app.get("/ip").await.json().await.unwrap();
    assert_eq!(body["ip"], "2001:db8::1");
}

#[tokio::test]
async fn unreachable_upstream_is_a_502() {
    // Nothing listens on the discard port of loopback.
    let (config, dir) = test_config();
    assert_eq!(config.ip_upstream, "http://127.0.0.1:9/");
    let app = spawn_with(config, dir).await;
    let body = assert_problem(app.get("/ip").await, 502).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("could not be reached")
    );
}

#[tokio::test]
async fn non_2xx_upstream_is_a_502() {
    let stub = Stub::start(Behaviour::Answer(503, "busy")).await;
    let app = app_with_upstream(&stub, Duration::from_secs(3)).await;
    let body = assert_problem(app.get("/ip").await, 502).await;
    assert!(body["detail"].as_str().unwrap().contains("503"), "{body}");
}

#[tokio::test]
async fn garbage_from_upstream_is_a_502() {
    for garbage in ["<html>hello</html>", "", "999.1.1.1", "203.0.113.7 extra"] {
        let stub = Stub::start(Behaviour::Answer(200, garbage)).await;
        let app = app_with_upstream(&stub, Duration::from_secs(3)).await;
        let body = assert_problem(app.get("/ip").await, 502).await;
        assert!(
            body["detail"].as_str().unwrap().contains("not an IP"),
            "{garbage:?}: {body}"
        );
    }
}

#[tokio::test]
async fn slow_upstream_is_a_504_and_failures_are_not_cached() {
    let stub = Stub::start(Behaviour::Hang).await;
    let app = app_with_upstream(&stub, Duration::from_millis(200)).await;
    assert_problem(app.get("/ip").await, 504).await;
    assert_problem(app.get("/ip").await, 504).await;
    assert_eq!(
        stub.calls(),
        2,
        "a failure is not cached: the next request asks again"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric(
            &metrics,
            r#"skiff_ip_upstream_calls_total{outcome="timeout"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn concurrent_misses_share_one_upstream_call() {
    let stub = Stub::start(Behaviour::Gated("198.51.100.4")).await;
    let app = app_with_upstream(&stub, Duration::from_secs(10)).await;
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url("/ip"));
            tokio::spawn(async move { client.get(url).send().await.unwrap() })
        })
        .collect();
    // Hold the upstream answer until all 50 requests are inside skiff.
    stub.wait_for_calls(1).await;
    eventually("50 requests in flight", || async {
        let text = app.get("/metrics").await.text().await.unwrap();
        // The /metrics request itself is in flight too.
        metric(&text, "http_requests_in_flight").unwrap_or(0.0) >= 51.0
    })
    .await;
    stub.open_gate();
    for request in requests {
        let response = request.await.unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["ip"], "198.51.100.4");
    }
    assert_eq!(stub.calls(), 1);
}
