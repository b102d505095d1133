//! The built `skiff` binary as a user runs it: exit codes, the health check
//! command, and graceful shutdown on SIGTERM.

#[cfg(feature = "ip")]
use crate::support::stub::{Behaviour, Stub};

use crate::support::process::{Server, skiff_command as skiff};

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("PORT", "eighty"),
        ("SKIFF_REQUEST_TIMEOUT", "soon"),
        ("SKIFF_BODY_LIMIT", "big"),
        ("SKIFF_LOG_FORMAT", "xml"),
        ("SKIFF_TIME_ZONE", "Mars/Olympus_Mons"),
    ] {
        let out = skiff(dir.path())
            .env(var, value)
            .arg("serve")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(var) && stderr.contains("expected"),
            "{stderr}"
        );
    }
    let out = skiff(dir.path())
        .args(["serve", "--port", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port"));
}

#[test]
fn a_bad_value_of_a_command_flag_is_one_line_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = skiff(dir.path())
        .args(["healthcheck", "--timeout", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("--timeout") && stderr.contains("expected"),
        "{stderr}"
    );
}

#[test]
fn version_names_commit_target_and_features() {
    let dir = tempfile::tempdir().unwrap();
    let out = skiff(dir.path()).arg("version").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        line.starts_with(&format!("skiff {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(line.contains("target x86_64-unknown-linux"), "{line}");
    assert!(line.contains("features: "), "{line}");
}

#[test]
fn openapi_prints_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let out = skiff(dir.path()).arg("openapi").output().unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
}

#[test]
fn healthcheck_passes_against_a_live_server_and_fails_against_a_closed_port() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(skiff(dir.path()));
    let out = skiff(dir.path())
        .args(["healthcheck", "--url", &server.url("/healthz")])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The default URL follows PORT.
    let port = server.addr.rsplit(':').next().unwrap();
    let out = skiff(dir.path())
        .env("PORT", port)
        .arg("healthcheck")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    // A 404 is not healthy.
    let out = skiff(dir.path())
        .args(["healthcheck", "--url", &server.url("/nope")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = skiff(dir.path())
        .args(["healthcheck", "--url", &format!("http://{closed}/healthz")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[cfg(feature = "ip")]
#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_and_exits_0() {
    let stub = Stub::start(Behaviour::Gated("203.0.113.9")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = skiff(dir.path());
    cmd.env("SKIFF_IP_UPSTREAM", stub.url())
        .env("SKIFF_SHUTDOWN_GRACE", "20s");
    let server = Server::start(cmd);
    let client = reqwest::Client::new();
    let slow = tokio::spawn(client.get(server.url("/ip")).send());
    stub.wait_for_calls(1).await;

    server.signal("TERM");
    // The listener closes once shutdown begins.
    let url = server.url("/hello");
    crate::support::eventually("the listener to close", || async {
        reqwest::Client::new().get(&url).send().await.is_err()
    })
    .await;
    stub.open_gate();

    let response = slow
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["ip"], "203.0.113.9");
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigint_on_an_idle_server_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(skiff(dir.path()));
    server.signal("INT");
    assert_eq!(server.wait().code(), Some(0));
}
