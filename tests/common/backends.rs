//! Runs users tests against both back ends: SQLite on a temp file, and a
//! fresh database on the PostgreSQL server named by
//! `SKIFF_TEST_POSTGRES_URL` (which `scripts/with-postgres` starts).
//!
//! Without that variable the PostgreSQL runs print a loud SKIPPED line and
//! pass, unless `SKIFF_TEST_REQUIRE_POSTGRES=1`, when they fail.
//!
//! Included with `#[path]` by the users test files only: it needs the
//! `users` feature, the other test files do not.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Value, json};
use skiff::Config;
use sqlx::Connection;

use crate::common::{TestApp, spawn_with, test_config};

pub const POSTGRES_URL: &str = "SKIFF_TEST_POSTGRES_URL";
pub const REQUIRE_POSTGRES: &str = "SKIFF_TEST_REQUIRE_POSTGRES";

/// Defines `sqlite::NAME` and `postgres::NAME` tests for each `async fn
/// NAME(db: &TestDb)` named. (Include this file with `#[macro_use]`.)
#[allow(unused_macros)] // users_durability.rs does not use it
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = $crate::backends::TestDb::sqlite();
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let test = concat!(module_path!(), "::", stringify!($name));
                    if let Some(db) = $crate::backends::TestDb::postgres(test).await {
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

pub use crate::common::header;

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

/// A `skiff` command with a clean environment, on `database_url`.
pub fn skiff(database_url: &str, dir: &std::path::Path) -> Command {
    skiff_via(&[], database_url, dir)
}

/// [`skiff`] run by `wrapper` (e.g. `["setpriv", "--reuid=65534", …, "--"]`),
/// which must exec it (so killing the child kills skiff).
pub fn skiff_via(wrapper: &[&str], database_url: &str, dir: &std::path::Path) -> Command {
    let binary = env!("CARGO_BIN_EXE_skiff");
    let mut cmd = match wrapper {
        [] => Command::new(binary),
        [program, args @ ..] => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(binary);
            cmd
        }
    };
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SKIFF_BIND", "127.0.0.1")
        .env("SKIFF_LOG", "warn,skiff::app=info")
        .env("DATABASE_URL", database_url)
        .current_dir(dir);
    cmd
}

/// A `skiff serve` process and the address it announced.
pub struct Server {
    pub child: Child,
    pub addr: String,
    /// Every line it wrote on stdout (its log) so far.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// Starts `cmd serve` on a free port and waits for its "listening" line.
    pub fn start(cmd: Command) -> Server {
        Server::start_with(cmd, &[])
    }

    /// Starts `cmd serve ARGS…`.
    pub fn start_with(mut cmd: Command, args: &[&str]) -> Server {
        let mut child = cmd
            .env("PORT", "0")
            .env("SKIFF_LOG_FORMAT", "json")
            .arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("skiff starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut kept = kept.lock().unwrap();
                kept.push_str(&line);
                kept.push('\n');
                drop(kept);
                if !sent && line.contains("skiff listening") {
                    let v: Value = serde_json::from_str(&line).expect("a JSON log line");
                    let _ = tx.send(v["addr"].as_str().expect("addr").to_owned());
                    sent = true;
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("skiff logs the address it listens on");
        Server { child, addr, log }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM, waits for the exit (which must be clean), and returns
    /// the whole log.
    pub fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let status = self.child.wait().expect("skiff exits");
        assert!(status.success(), "skiff exits 0 on SIGTERM: {status}");
        // The reader thread sees the pipe close once the process is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::sync::Arc::strong_count(&self.log) > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the log is read to its end"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.log()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What is in the SQLite file of `url`, read directly (opening it recovers
/// its WAL, as skiff would on start): `PRAGMA integrity_check`'s verdict
/// (`"ok"` when sound) and the ids of the users stored.
pub async fn inspect_sqlite(url: &str) -> (String, HashSet<uuid::Uuid>) {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .expect("a SQLite URL")
        .create_if_missing(false);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("the database file opens");
    let verdict: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .expect("integrity_check runs");
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM users")
        .fetch_all(&mut conn)
        .await
        .expect("the users table reads");
    let _ = conn.close().await;
    (verdict.join("\n"), ids.into_iter().collect())
}

/// The id of a user as the API returned it.
pub fn id_of(user: &Value) -> uuid::Uuid {
    user["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("a user with an id: {user}"))
}

/// What a crash test's writers saw acknowledged.
#[derive(Debug, Default, Clone)]
pub struct Acknowledged {
    /// Users whose create was answered `201`, as answered, minus those
    /// a delete was sent for.
    pub created: Vec<Value>,
    /// Users whose delete was answered `204`.
    pub deleted: HashSet<uuid::Uuid>,
}

/// Writers hammering one server with creates, and deletes of some of their
/// own users, until the server dies under them (any answer but `201`/`204`
/// fails the writer; no answer ends it).
pub struct Writers {
    acknowledged: std::sync::Arc<std::sync::Mutex<Acknowledged>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// `count` writers on `server`; `tag` keeps emails unique across runs.
    pub fn start(server: &Server, tag: &str, count: usize) -> Writers {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(crate::common::CLIENT_IDLE)
            .build()
            .expect("a client");
        let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Acknowledged::default()));
        let tasks = (0..count)
            .map(|w| {
                let (client, acknowledged) = (client.clone(), acknowledged.clone());
                let (users, tag) = (server.url("/users"), tag.to_owned());
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    for i in 0.. {
                        // Every fourth write deletes one of this writer's users.
                        if i % 4 == 3
                            && let Some(user) = mine.pop()
                        {
                            // Unanswered, it may or may not be deleted: from
                            // now on the user is not checked, unless a 204 comes.
                            let id = id_of(&user);
                            acknowledged
                                .lock()
                                .unwrap()
                                .created
                                .retain(|u| id_of(u) != id);
                            let Ok(r) = client.delete(format!("{users}/{id}")).send().await else {
                                return;
                            };
                            assert_eq!(r.status(), 204, "the server answers 204 or nothing");
                            acknowledged.lock().unwrap().deleted.insert(id);
                            continue;
                        }
                        let body = json!({"email": format!("{tag}-w{w}-{i}@example.com"), "surname": "Durable"});
                        let Ok(r) = client.post(&users).json(&body).send().await else {
                            return;
                        };
                        assert_eq!(r.status(), 201, "the server answers 201 or nothing");
                        let Ok(user) = r.json::<Value>().await else {
                            return;
                        };
                        acknowledged.lock().unwrap().created.push(user.clone());
                        mine.push(user);
                    }
                })
            })
            .collect();
        Writers {
            acknowledged,
            tasks,
        }
    }

    /// Writes acknowledged so far.
    pub fn count(&self) -> usize {
        let acked = self.acknowledged.lock().unwrap();
        acked.created.len() + acked.deleted.len()
    }

    /// Waits until `n` writes were acknowledged (panics after 60 s).
    pub async fn wait_for(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.count() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} writes are acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits for the writers to end (the server must be gone) and returns
    /// what they saw acknowledged.
    pub async fn join(self) -> Acknowledged {
        for task in self.tasks {
            task.await.expect("a writer ends when the server is gone");
        }
        self.acknowledged.lock().unwrap().clone()
    }
}

/// Every user the server lists, walking the pages by their `Link` header;
/// panics if one is listed twice.
pub async fn list_all(client: &reqwest::Client, server: &Server) -> Vec<Value> {
    let mut seen = HashSet::new();
    let mut listed = Vec::new();
    let mut next = Some("/users?limit=1000".to_string());
    while let Some(path) = next {
        let r = client
            .get(server.url(&path))
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), 200);
        next = r.headers().get("link").map(|l| {
            let l = l.to_str().expect("ASCII");
            l[1..l.find('>').expect("<…>")].to_string()
        });
        for user in r.json::<Vec<Value>>().await.expect("a list") {
            assert!(seen.insert(id_of(&user)), "{user} is listed once");
            listed.push(user);
        }
    }
    listed
}

/// Checks a restarted server's database against what was acknowledged: it
/// passes `integrity_check`, lists every acknowledged user exactly as
/// answered, and none of the acknowledged deletes.
pub async fn assert_durable(url: &str, server: &Server, acked: &Acknowledged) {
    let (verdict, stored) = inspect_sqlite(url).await;
    assert_eq!(verdict, "ok", "PRAGMA integrity_check");
    let client = reqwest::Client::new();
    let listed: std::collections::HashMap<uuid::Uuid, Value> = list_all(&client, server)
        .await
        .into_iter()
        .map(|u| (id_of(&u), u))
        .collect();
    for user in &acked.created {
        let id = id_of(user);
        assert!(stored.contains(&id), "acknowledged user {id} is stored");
        assert_eq!(
            listed.get(&id),
            Some(user),
            "acknowledged user {id} as answered"
        );
    }
    for id in &acked.deleted {
        assert!(!stored.contains(id), "acknowledged delete of {id} holds");
    }
}
