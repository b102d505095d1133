//! `skiff migrate` and `skiff db …` through the real binary, on SQLite and
//! PostgreSQL: concurrent migrators, and the database life cycle.

use std::process::Output;

use crate::support::backends::TestDb;
use crate::support::process::{Server, skiff};

both_backends!(
    several_migrators_at_once_apply_each_migration_once,
    create_status_schema_and_drop,
    serve_migrates_unless_told_not_to,
);

fn run(db: &TestDb, args: &[&str]) -> Output {
    skiff(&db.url, db.dir())
        .args(args)
        .output()
        .expect("skiff runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `args`, asserting success, and returns stdout.
fn ok(db: &TestDb, args: &[&str]) -> String {
    let output = run(db, args);
    assert!(
        output.status.success(),
        "skiff {args:?}: {}\n{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

/// The state column of `db status` for each migration.
fn states(status: &str) -> Vec<String> {
    status
        .lines()
        .skip_while(|l| !l.starts_with("VERSION"))
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_owned())
        .collect()
}

async fn several_migrators_at_once_apply_each_migration_once(db: &TestDb) {
    let migrators: Vec<_> = (0..6)
        .map(|_| {
            skiff(&db.url, db.dir())
                .arg("migrate")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("skiff migrate starts")
        })
        .collect();
    let mut applied_by = 0;
    for migrator in migrators {
        let output = migrator.wait_with_output().unwrap();
        let out = stdout(&output);
        assert!(
            output.status.success(),
            "{out}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        if out.contains("applied 1 create users") {
            applied_by += 1;
        } else {
            assert!(out.contains("no pending migrations"), "{out}");
        }
    }
    assert_eq!(applied_by, 1, "exactly one process applied the migrations");

    let status = ok(db, &["db", "status"]);
    assert_eq!(states(&status), ["applied", "applied"], "{status}");
    let schema = ok(db, &["db", "schema"]);
    assert_eq!(schema.matches("CREATE TABLE users").count(), 1, "{schema}");
    assert_eq!(
        schema
            .matches("CREATE UNIQUE INDEX users_email_key")
            .count(),
        1,
        "{schema}"
    );
    assert!(ok(db, &["migrate"]).contains("no pending migrations"));
}

async fn create_status_schema_and_drop(db: &TestDb) {
    // Start from nothing: the test database (made by the harness on
    // PostgreSQL, by `db create` here on SQLite) is dropped first.
    ok(db, &["db", "create"]);
    let dropped = ok(db, &["db", "drop"]);
    assert!(dropped.contains("dropped"), "{dropped}");
    assert!(ok(db, &["db", "drop"]).contains("does not exist"));
    let missing = run(db, &["db", "status"]);
    assert_eq!(
        missing.status.code(),
        Some(1),
        "status of a missing database fails"
    );
    assert!(!missing.stderr.is_empty());

    assert!(ok(db, &["db", "create"]).contains("created"));
    assert!(ok(db, &["db", "create"]).contains("already exists"));
    assert_eq!(states(&ok(db, &["db", "status"])), ["pending", "pending"]);
    let migrated = ok(db, &["migrate"]);
    assert!(migrated.contains("applied 1 create users"), "{migrated}");
    assert!(
        migrated.contains("applied 2 email key case folding"),
        "{migrated}"
    );
    assert_eq!(states(&ok(db, &["db", "status"])), ["applied", "applied"]);

    let schema = ok(db, &["db", "schema"]);
    for part in [
        "CREATE TABLE users",
        "email_key",
        "users_email_key",
        "version",
    ] {
        assert!(schema.contains(part), "{part} in\n{schema}");
    }
    assert!(ok(db, &["db", "drop"]).contains("dropped"));
    assert_eq!(run(db, &["db", "status"]).status.code(), Some(1));
}

async fn serve_migrates_unless_told_not_to(db: &TestDb) {
    ok(db, &["db", "create"]);
    let server = Server::start_with(skiff(&db.url, db.dir()), &["--no-migrate"]);
    let r = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        states(&ok(db, &["db", "status"])),
        ["pending", "pending"],
        "--no-migrate left it"
    );
    drop(server);

    let server = Server::start(skiff(&db.url, db.dir()));
    assert_eq!(
        states(&ok(db, &["db", "status"])),
        ["applied", "applied"],
        "serve migrated"
    );
    let r = reqwest::get(server.url("/users")).await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Runs `cmd serve` on a free port and waits (up to 30 s) for it to exit:
/// a server that starts anyway is killed and the test fails.
fn serve_expecting_exit(mut cmd: std::process::Command, args: &[&str]) -> Output {
    let mut child = cmd
        .env("PORT", "0")
        .arg("serve")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("skiff starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().expect("waitable").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("a second `skiff serve` on the same SQLite file kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A SQLite database takes one server: the second `skiff serve` on the
/// file refuses with one line naming it (and PostgreSQL for replicas),
/// while the admin commands keep working beside the first; once the first
/// is gone, even by `kill -9`, another starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_server_on_one_sqlite_file_refuses_to_start() {
    let db = TestDb::sqlite();
    let file = db.dir().join("users.db");
    let first = Server::start(skiff(&db.url, db.dir()));
    let client = reqwest::Client::new();
    let created = client
        .post(first.url("/users"))
        .json(&serde_json::json!({"email": "one@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    for args in [&[][..], &["--no-migrate"]] {
        let refused = serve_expecting_exit(skiff(&db.url, db.dir()), args);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        for part in [
            file.display().to_string().as_str(),
            "another skiff process",
            "PostgreSQL",
        ] {
            assert!(lines[0].contains(part), "{part:?} in {stderr}");
        }
    }

    // The admin commands work beside the server; `db drop` does not pull
    // the file from under it.
    assert!(ok(&db, &["migrate"]).contains("no pending migrations"));
    assert!(!states(&ok(&db, &["db", "status"])).is_empty());
    assert!(ok(&db, &["db", "schema"]).contains("CREATE TABLE users"));
    let dropped = run(&db, &["db", "drop"]);
    assert_eq!(dropped.status.code(), Some(1));
    assert!(file.exists(), "db drop left the served file");
    let r = client.get(first.url("/users")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("one@example.com"));

    first.stop();
    let second = Server::start(skiff(&db.url, db.dir()));
    let r = client.get(second.url("/users")).send().await.unwrap();
    assert!(r.text().await.unwrap().contains("one@example.com"));
    // SIGKILL: the kernel releases the lock with the process.
    drop(second);
    let third = Server::start(skiff(&db.url, db.dir()));
    assert_eq!(
        client
            .get(third.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
