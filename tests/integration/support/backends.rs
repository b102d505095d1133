//! Runs users tests against both back ends: SQLite on a temp file, and a
//! fresh database on the PostgreSQL server named by
//! `SKIFF_TEST_POSTGRES_URL` (which `scripts/with-postgres` starts).
//!
//! Without that variable the PostgreSQL runs print a loud SKIPPED line and
//! pass, unless `SKIFF_TEST_REQUIRE_POSTGRES=1`, when they fail.
//!
//! `both_backends!` turns each `async fn NAME(db: &TestDb)` into a
//! `sqlite::NAME` and a `postgres::NAME` test.

use serde_json::{Value, json};
use skiff::Config;
use sqlx::Connection;

use crate::support::{TestApp, spawn_with, test_config};

pub const POSTGRES_URL: &str = "SKIFF_TEST_POSTGRES_URL";
pub const REQUIRE_POSTGRES: &str = "SKIFF_TEST_REQUIRE_POSTGRES";

/// Defines `sqlite::NAME` and `postgres::NAME` tests for each `async fn
/// NAME(db: &TestDb)` named.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = $crate::support::backends::TestDb::sqlite();
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let test = concat!(module_path!(), "::", stringify!($name));
                    if let Some(db) = $crate::support::backends::TestDb::postgres(test).await {
                        super::$name(&db).await;
                        db.cleanup().await;
                    }
                }
            )*
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database for one test.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    /// Holds the SQLite file.
    dir: tempfile::TempDir,
    /// PostgreSQL: the server's URL and the database's name, to drop it.
    postgres: Option<(String, String)>,
}

/// The PostgreSQL server URL, or `None` after saying loudly that `test`
/// is skipped. Panics when PostgreSQL is required.
pub fn postgres_server(test: &str) -> Option<String> {
    match std::env::var(POSTGRES_URL) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var(REQUIRE_POSTGRES).as_deref() != Ok("1"),
                "{test}: {REQUIRE_POSTGRES}=1 but {POSTGRES_URL} is not set"
            );
            eprintln!(
                "\n*** SKIPPED {test}: no PostgreSQL ({POSTGRES_URL} is unset); \
                 run the tests under scripts/with-postgres to include it ***\n"
            );
            None
        }
    }
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("a temp dir");
        let url = format!("sqlite://{}", dir.path().join("users.db").display());
        TestDb {
            backend: Backend::Sqlite,
            url,
            dir,
            postgres: None,
        }
    }

    /// A new database on the test server, or `None` when skipped.
    pub async fn postgres(test: &str) -> Option<TestDb> {
        let server = postgres_server(test)?;
        let name = format!("skiff_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&server)
            .await
            .expect("the test PostgreSQL server answers");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("can create a test database");
        let _ = conn.close().await;
        Some(TestDb {
            backend: Backend::Postgres,
            url: with_database(&server, &name),
            dir: tempfile::tempdir().expect("a temp dir"),
            postgres: Some((server, name)),
        })
    }

    /// Drops the PostgreSQL database (connections still open are ended).
    pub async fn cleanup(&self) {
        if let Some((server, name)) = &self.postgres
            && let Ok(mut conn) = sqlx::PgConnection::connect(server).await
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await;
            let _ = conn.close().await;
        }
    }

    /// The test configuration pointed at this database.
    pub fn config(&self) -> (Config, tempfile::TempDir) {
        let (mut config, dir) = test_config();
        config.database_url = self.url.clone();
        (config, dir)
    }

    pub async fn spawn(&self) -> TestApp {
        let (config, dir) = self.config();
        spawn_with(config, dir).await
    }

    /// Spawns with a configuration changed by `change`.
    pub async fn spawn_with(&self, change: impl FnOnce(&mut Config)) -> TestApp {
        let (mut config, dir) = self.config();
        change(&mut config);
        spawn_with(config, dir).await
    }

    /// The directory of the SQLite file (also a scratch dir for PostgreSQL).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// A request of the users API, with a JSON body sent as `content_type`.
pub fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    content_type: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    app.client
        .request(method, app.url(path))
        .header("content-type", content_type)
        .body(body.to_string())
}

pub async fn post(app: &TestApp, body: Value) -> reqwest::Response {
    send(
        app,
        reqwest::Method::POST,
        "/users",
        "application/json",
        &body,
    )
    .send()
    .await
    .expect("answered")
}

pub async fn put(app: &TestApp, id: &str, body: Value) -> reqwest::Response {
    send(
        app,
        reqwest::Method::PUT,
        &format!("/users/{id}"),
        "application/json",
        &body,
    )
    .send()
    .await
    .expect("answered")
}

pub async fn patch(app: &TestApp, id: &str, body: Value) -> reqwest::Response {
    send(
        app,
        reqwest::Method::PATCH,
        &format!("/users/{id}"),
        "application/merge-patch+json",
        &body,
    )
    .send()
    .await
    .expect("answered")
}

/// A created user and its ETag.
pub struct Created {
    pub user: Value,
    pub etag: String,
}

impl Created {
    pub fn id(&self) -> &str {
        self.user["id"].as_str().expect("an id")
    }
}

/// Creates a user with `email`, asserting the 201.
pub async fn create(app: &TestApp, email: &str) -> Created {
    let r = post(app, json!({ "email": email })).await;
    assert_eq!(r.status(), 201, "creating {email}");
    let etag = header(&r, "etag");
    Created {
        user: r.json().await.expect("a user"),
        etag,
    }
}

pub use crate::support::header;

/// GET `/users/{id}`: its status, ETag (if any) and body.
pub async fn fetch(app: &TestApp, id: &str) -> (u16, Option<String>, Value) {
    let r = app.get(&format!("/users/{id}")).await;
    let status = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, etag, r.json().await.unwrap_or(Value::Null))
}
