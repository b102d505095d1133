//! What an operator meets: log filter mistakes, the access log's fields (from
//! the real binary's JSON and text output), request ids a client sends,
//! CORS, and the shutdown delay.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use skiff::config::CorsOrigins;

use crate::support::process::{Server, skiff_command as skiff};
use crate::support::{
    eventually, eventually_within, fresh_connections, spawn, spawn_with, test_config,
};

fn is_uuid_v4(id: &str) -> bool {
    let groups: Vec<_> = id.split('-').map(str::len).collect();
    groups == [8, 4, 4, 4, 12]
        && id
            .chars()
            .all(|c| c == '-' || matches!(c, '0'..='9' | 'a'..='f'))
        && &id[14..15] == "4"
}

/// Runs `cmd` to its end; a server that starts instead (a bad value taken)
/// is killed and fails the test rather than hanging it.
fn exits(cmd: &mut Command) -> std::process::Output {
    let mut child = cmd
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} started instead of exiting: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

// --- SKIFF_LOG -------------------------------------------------------------

#[test]
fn a_mistyped_log_filter_exits_2_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("SKIFF_LOG", "inf"),
        ("SKIFF_LOG", "verbose"),
        ("SKIFF_LOG", "skiff=loud"),
        ("SKIFF_LOG", "info,skiff"),
        ("SKIFF_LOG", ""),
        ("RUST_LOG", "verbose"),
        ("SKIFF_CORS_ORIGINS", "app.example.com"),
        ("SKIFF_CORS_ORIGINS", "https://app.example.com/"),
        ("SKIFF_SHUTDOWN_DELAY", "soon"),
    ] {
        let out = exits(skiff(dir.path()).env(var, value).arg("serve"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(var) && stderr.contains("expected"),
            "{stderr}"
        );
    }
    let out = exits(skiff(dir.path()).args(["serve", "--log", "inf"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log"));
}

// --- the access log ----------------------------------------------------------

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn the_json_access_log_has_client_user_agent_bytes_and_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = skiff(dir.path());
    cmd.env("SKIFF_LOG", "info").env("SKIFF_LOG_FORMAT", "json");
    let server = Server::start(cmd);
    let client = fresh_connections();

    let r = client
        .get(server.url("/hello"))
        .header("user-agent", "ops-test/1.0")
        .header("x-request-id", "ops-hello-1")
        .header("traceparent", TRACEPARENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");
    let line: Value = serde_json::from_str(&server.line_with("ops-hello-1").await).unwrap();
    assert_eq!(line["target"], "skiff::access", "{line}");
    assert_eq!(line["client_addr"], "127.0.0.1", "{line}");
    assert_eq!(line["user_agent"], "ops-test/1.0", "{line}");
    assert_eq!(line["bytes"], 5, "{line}");
    assert_eq!(
        line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{line}"
    );
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["route"], "/hello", "{line}");

    // A streamed (gzip) answer: the bytes actually sent.
    let r = client
        .get(server.url("/openapi.json"))
        .header("accept-encoding", "gzip")
        .header("x-request-id", "ops-gzip-1")
        .header(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let sent = r.bytes().await.unwrap().len();
    let line: Value = serde_json::from_str(&server.line_with("ops-gzip-1").await).unwrap();
    assert_eq!(line["bytes"], sent, "{line}");
    assert!(
        line.get("trace_id").is_none(),
        "an all-zero trace id is not logged: {line}"
    );

    // A client's id that is too long, or holds a control character, is
    // replaced: neither echoed nor logged.
    let long = "x".repeat(8000);
    for (bad, tag) in [(long.as_str(), "long"), ("ops\tinjected", "tab")] {
        let r = client
            .get(server.url(&format!("/hello?{tag}")))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let echoed = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(echoed, bad);
        assert!(is_uuid_v4(&echoed), "{echoed}");
        let line: Value = serde_json::from_str(&server.line_with(&echoed).await).unwrap();
        assert_eq!(line["request_id"], echoed.as_str());
    }
    let log = server.log();
    assert!(!log.contains(&"x".repeat(200)), "the long id is not logged");
    assert!(!log.contains("injected"), "the tab id is not logged");
}

#[tokio::test]
async fn the_text_access_log_has_the_same_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = skiff(dir.path());
    cmd.env("SKIFF_LOG", "info").env("SKIFF_LOG_FORMAT", "text");
    let server = Server::start(cmd);
    let r = fresh_connections()
        .get(server.url("/hello"))
        .header("user-agent", "ops-text/2.0")
        .header("x-request-id", "ops-text-1")
        .header("traceparent", TRACEPARENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let line = server.line_with("ops-text-1").await;
    for field in [
        "client_addr=127.0.0.1",
        "ops-text/2.0",
        "bytes=5",
        "trace_id=",
        "4bf92f3577b34da6a3ce929d0e0e4736",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
}

#[tokio::test]
async fn every_access_line_is_written_before_the_process_exits() {
    // Lines are written in batches; the ones of the last batch must still
    // reach stdout when the server stops right after answering.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(skiff(dir.path()));
    let client = fresh_connections();
    for i in 0..300 {
        let r = client
            .get(server.url("/hello"))
            .header("x-request-id", format!("ops-batch-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let log = tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    for i in 0..300 {
        let id = format!("\"ops-batch-{i}\"");
        assert_eq!(
            log.lines().filter(|l| l.contains(&id)).count(),
            1,
            "one access line for request {i}"
        );
    }
}

// --- request ids -------------------------------------------------------------

#[tokio::test]
async fn unusable_client_request_ids_are_replaced() {
    let app = spawn().await;
    let send = |value: reqwest::header::HeaderValue| {
        app.client
            .get(app.url("/hello"))
            .header("x-request-id", value)
            .send()
    };
    let kept = send("0192f0c4-8d3e-7c1a-9b7e-2f1d3c4b5a69".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        kept.headers()["x-request-id"],
        "0192f0c4-8d3e-7c1a-9b7e-2f1d3c4b5a69"
    );
    let long = "a".repeat(8000);
    for bad in [
        reqwest::header::HeaderValue::from_str(&long).unwrap(),
        reqwest::header::HeaderValue::from_str(&"b".repeat(129)).unwrap(),
        reqwest::header::HeaderValue::from_static("a\tb"),
        reqwest::header::HeaderValue::from_static("a b"),
        reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        reqwest::header::HeaderValue::from_static("\"><script>"),
    ] {
        let r = send(bad.clone()).await.unwrap();
        assert_eq!(r.status(), 200);
        let echoed = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(echoed.as_bytes(), bad.as_bytes());
        assert!(is_uuid_v4(&echoed), "{echoed}");
    }
    // Two ids: neither is trusted.
    let r = app
        .client
        .get(app.url("/hello"))
        .header("x-request-id", "one")
        .header("x-request-id", "two")
        .send()
        .await
        .unwrap();
    let ids: Vec<_> = r.headers().get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1);
    assert!(is_uuid_v4(ids[0].to_str().unwrap()), "{:?}", ids[0]);
}

// --- CORS ----------------------------------------------------------------------

const APP_ORIGIN: &str = "https://app.example.com";

async fn spawn_with_cors() -> crate::support::TestApp {
    let (mut config, dir) = test_config();
    config.cors_origins = Some(CorsOrigins::List(vec![
        APP_ORIGIN.into(),
        "http://localhost:3000".into(),
    ]));
    spawn_with(config, dir).await
}

fn header_list(r: &reqwest::Response, name: &str) -> Vec<String> {
    r.headers()
        .get_all(name)
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap()
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn cors_preflights_are_answered_for_the_configured_origins() {
    let app = spawn_with_cors().await;
    let preflight = |origin: &'static str| {
        app.client
            .request(
                reqwest::Method::OPTIONS,
                app.url("/users/0192f0c4-8d3e-7c1a-9b7e-2f1d3c4b5a69"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "PATCH")
            .header(
                "access-control-request-headers",
                "content-type,if-match,authorization",
            )
            .send()
    };
    let r = preflight(APP_ORIGIN).await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["access-control-allow-origin"], APP_ORIGIN);
    let methods = header_list(&r, "access-control-allow-methods");
    for m in ["get", "post", "put", "patch", "delete", "options"] {
        assert!(methods.iter().any(|x| x == m), "{m} in {methods:?}");
    }
    let headers = header_list(&r, "access-control-allow-headers");
    for h in [
        "content-type",
        "if-match",
        "if-none-match",
        "authorization",
        "x-request-id",
        "traceparent",
    ] {
        assert!(headers.contains(&h.to_string()), "{h} in {headers:?}");
    }
    assert!(r.headers().contains_key("access-control-max-age"));

    // The second origin of the list, too; an origin differing in scheme or
    // port, or another site, gets no allow header.
    let r = preflight("http://localhost:3000").await.unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    for other in [
        "https://evil.example",
        "http://app.example.com",
        "https://app.example.com:8443",
        "null",
    ] {
        let r = preflight(other).await.unwrap();
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{other}: {:?}",
            r.headers()
        );
    }
}

#[tokio::test]
async fn cors_simple_requests_expose_the_api_headers_to_allowed_origins_only() {
    let app = spawn_with_cors().await;
    let r = app
        .client
        .get(app.url("/hello"))
        .header("origin", APP_ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], APP_ORIGIN);
    let exposed = header_list(&r, "access-control-expose-headers");
    for h in ["etag", "location", "link", "x-request-id", "retry-after"] {
        assert!(exposed.contains(&h.to_string()), "{h} in {exposed:?}");
    }
    assert!(header_list(&r, "vary").contains(&"origin".to_string()));

    let r = app
        .client
        .get(app.url("/hello"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn without_cors_origins_there_are_no_cors_headers_and_options_is_405() {
    let app = spawn().await;
    let r = app
        .client
        .get(app.url("/hello"))
        .header("origin", APP_ORIGIN)
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-")),
        "{:?}",
        r.headers()
    );
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/hello"))
        .header("origin", APP_ORIGIN)
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

// --- the shutdown delay -------------------------------------------------------------

#[tokio::test]
async fn during_the_shutdown_delay_new_connections_are_served_then_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = skiff(dir.path());
    cmd.env("SKIFF_LOG_FORMAT", "json")
        .env("SKIFF_SHUTDOWN_DELAY", "5s")
        .env("SKIFF_SHUTDOWN_GRACE", "5s");
    let server = Server::start(cmd);
    let client = fresh_connections();
    assert_eq!(
        client
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    server.signal("TERM");
    let readyz = server.url("/readyz");
    eventually("/readyz to answer 503", || async {
        let r = client.get(&readyz).send().await.unwrap();
        r.status() == 503
    })
    .await;
    // Readiness is down, but a brand-new connection is still served.
    let r = client.get(server.url("/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello");

    // Once the delay is over, connections are refused.
    let hello = server.url("/hello");
    eventually_within("the listener to close", Duration::from_secs(60), || async {
        client.get(&hello).send().await.is_err()
    })
    .await;
    let mut server = server;
    let status = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        (status, server)
    })
    .await
    .unwrap()
    .0;
    assert_eq!(status.code(), Some(0));
}
