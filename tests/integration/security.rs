//! Secrets stay secret: the API password, the credentials clients send and
//! the database password never appear in logs (at trace level, JSON, through
//! start-up, auth failures, database errors and shutdown), in error output,
//! or in `skiff version` / `--help`. Auth failures are logged (without the
//! credentials) and counted.

use std::process::Output;

use crate::support::pg_cluster::{PgCluster, StopMode};
use crate::support::process::{Server, skiff};
use base64::Engine as _;
use serde_json::{Value, json};

/// A value no log would contain by chance.
fn marker(kind: &str) -> String {
    format!("{kind}{}", uuid::Uuid::now_v7().simple())
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Panics if any of `secrets` (or its Basic encoding for `admin`) is in `text`.
fn assert_hidden(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        let encoded = basic("admin", secret);
        let encoded = encoded.trim_start_matches("Basic ");
        assert!(!text.contains(secret), "{what} shows the secret {secret}");
        assert!(
            !text.contains(encoded),
            "{what} shows {secret} base64-encoded"
        );
    }
}

fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The JSON log lines whose message is `message`.
fn events(log: &str, message: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_never_reach_the_log_and_refusals_are_logged_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("secure.db").display());
    let (password, guess) = (marker("password"), marker("guess"));
    let mut cmd = skiff(&url, dir.path());
    cmd.env("SKIFF_LOG", "trace")
        .env("SKIFF_API_USER", "admin")
        .env("SKIFF_API_PASSWORD", &password);
    let server = Server::start(cmd);
    let client = reqwest::Client::new();
    let users = server.url("/users");
    let create = |auth: Option<String>| {
        let mut r = client
            .post(&users)
            .json(&json!({"email": marker("e") + "@example.com"}));
        if let Some(auth) = auth {
            r = r.header("authorization", auth);
        }
        r.send()
    };

    let r = create(Some(basic("admin", &password))).await.unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = [
        create(Some(basic("admin", &guess))).await.unwrap(),
        create(Some(basic(&guess, &password))).await.unwrap(),
        create(Some(format!("Basic {guess}!"))).await.unwrap(),
        create(None).await.unwrap(),
        client
            .get(server.url(&format!("/?id={id}")))
            .header("authorization", basic("admin", &guess))
            .send()
            .await
            .unwrap(),
    ];
    for r in refused {
        assert_eq!(r.headers()["www-authenticate"], r#"Basic realm="skiff""#);
        let problem = crate::support::assert_problem(r, 401).await;
        assert_hidden("a 401 problem", &problem.to_string(), &[&password, &guess]);
    }
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |reason: &str| {
        crate::support::metric(
            &metrics,
            &format!("skiff_auth_failures_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(count("wrong"), Some(3.0), "{metrics}");
    assert_eq!(count("malformed"), Some(1.0));
    assert_eq!(count("missing"), Some(1.0));

    let log = server.stop();
    assert_hidden("the trace log", &log, &[&password, &guess]);
    let failures = events(&log, "authentication failed");
    let reasons: Vec<_> = failures
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["wrong", "wrong", "malformed", "missing", "wrong"]);
    for event in &failures {
        assert!(
            event["request_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty())
        );
        assert!(event["path"] == "/users" || event["path"] == "/");
    }
    assert_eq!(failures[0]["level"], "WARN");
}

#[test]
fn the_database_password_never_shows_in_error_output() {
    let dir = tempfile::tempdir().unwrap();
    let password = marker("dbpw");
    let closed = crate::support::pg_cluster::free_port();
    let urls = [
        // Nothing listens there.
        format!("postgres://skiff:{password}@127.0.0.1:{closed}/skiff"),
        // Not a URL sqlx can use.
        format!("postgres://skiff:{password}@127.0.0.1:notaport/skiff"),
        // Not a URL skiff accepts (a configuration error, exit 2).
        format!("mysql://skiff:{password}@127.0.0.1:{closed}/skiff"),
    ];
    let commands: &[&[&str]] = &[&["serve"], &["migrate"], &["db", "create"], &["db", "drop"]];
    for url in &urls {
        for args in commands {
            let out = skiff(url, dir.path())
                .env("SKIFF_LOG", "trace")
                .env("SKIFF_LOG_FORMAT", "json")
                .env("PORT", "0")
                .args(*args)
                .output()
                .unwrap();
            let text = all_output(&out);
            assert!(!out.status.success(), "{args:?} on {url} fails: {text}");
            assert_hidden(&format!("{args:?} on {url}"), &text, &[&password]);
            assert!(text.contains("skiff"), "{args:?} says what failed: {text}");
        }
        // The flag, too.
        let out = skiff("sqlite::memory:", dir.path())
            .args(["migrate", "--database-url", url])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert_hidden("--database-url", &all_output(&out), &[&password]);
    }
}

#[test]
fn version_and_help_show_no_configured_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (password, db_password) = (marker("password"), marker("dbpw"));
    let url = format!("postgres://skiff:{db_password}@127.0.0.1:9/skiff");
    let commands: &[&[&str]] = &[
        &["version"],
        &["--help"],
        &["serve", "--help"],
        &["db", "--help"],
        &["migrate", "--help"],
        &["healthcheck", "--url", "http://127.0.0.1:9/healthz"],
        &["serve", "--port", "eighty"],
    ];
    for args in commands {
        let out = skiff(&url, dir.path())
            .env("SKIFF_API_USER", "admin")
            .env("SKIFF_API_PASSWORD", &password)
            .args(*args)
            .output()
            .unwrap();
        let text = all_output(&out);
        assert!(!text.is_empty(), "{args:?} prints something");
        assert_hidden(&format!("{args:?}"), &text, &[&password, &db_password]);
    }
}

/// PostgreSQL refusing the password at start-up, then going away while
/// skiff serves: neither message shows the password (the cluster's own,
/// random one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_errors_at_start_and_at_run_time_never_show_the_password() {
    let test = "security::postgres_errors";
    let Some(mut pg) = tokio::task::spawn_blocking(move || PgCluster::start(test))
        .await
        .unwrap()
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let password = pg.password().to_owned();
    let wrong = marker("wrongpw");

    let out = skiff(&pg.url().replace(&password, &wrong), dir.path())
        .env("SKIFF_LOG", "trace")
        .env("SKIFF_LOG_FORMAT", "json")
        .env("PORT", "0")
        .arg("serve")
        .output()
        .unwrap();
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert_hidden("a refused start-up", &text, &[&password, &wrong]);

    let mut cmd = skiff(&pg.url(), dir.path());
    cmd.env("SKIFF_LOG", "trace");
    let server = Server::start(cmd);
    let client = reqwest::Client::new();
    let post = || {
        client
            .post(server.url("/users"))
            .json(&json!({"email": marker("e") + "@example.com"}))
            .send()
    };
    assert_eq!(post().await.unwrap().status(), 201);
    pg = tokio::task::spawn_blocking(move || {
        pg.stop(StopMode::Fast);
        pg
    })
    .await
    .unwrap();
    assert_eq!(post().await.unwrap().status(), 503);
    let log = server.stop();
    assert!(
        !events(&log, "database error").is_empty(),
        "the error is logged"
    );
    assert_hidden("the log of a database error", &log, &[&password]);
    drop(pg);
}
