//! SQLite storage faults: a full disk, a read-only database file, a
//! read-only file system. Each gives a clear answer — a `503` problem that
//! says why, or a start-up that stops naming the file — loses nothing that
//! was acknowledged, and leaves a database that passes `PRAGMA
//! integrity_check`.
//!
//! The disk is a small tmpfs the test mounts (it needs root, or
//! `CAP_SYS_ADMIN`; without, the test says loudly it is skipped). The
//! read-only file is made by running skiff as `nobody` on a file it may not
//! write (root ignores file modes).

use std::path::Path;
use std::process::Command;

use crate::support::crash::{id_of, inspect_sqlite};
use crate::support::process::{Server, skiff, skiff_via};
use crate::support::{TestApp, spawn_with, test_config};
use serde_json::{Value, json};

/// A tmpfs of `size` mounted on a temp dir; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str, test: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0777"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                skipped(test, &String::from_utf8_lossy(&o.stderr));
                None
            }
            Err(e) => {
                skipped(test, &e.to_string());
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `mode`: `ro` or `rw`.
    fn remount(&self, mode: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.path())
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "remount {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).output();
    }
}

fn skipped(test: &str, why: &str) {
    eprintln!(
        "\n*** SKIPPED {test}: cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {} ***\n",
        why.trim()
    );
}

fn long_name(c: char) -> String {
    std::iter::repeat_n(c, 256).collect()
}

/// A user body of about 1 KiB, so the disk fills in a few hundred writes.
fn big_user(email: &str) -> Value {
    json!({
        "email": email,
        "displayName": long_name('d'),
        "givenName": long_name('g'),
        "surname": long_name('s'),
        "companyName": long_name('c'),
    })
}

async fn post(app: &TestApp, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/users"))
        .json(body)
        .send()
        .await
        .expect("answered")
}

/// Fills the file system of `dir` with a ballast file until it is full.
fn fill(ballast: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(ballast).expect("room for a ballast file");
    let chunk = vec![0xa5u8; 16 * 1024];
    loop {
        if let Err(e) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "ENOSPC, not {e}");
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_gives_503_loses_nothing_and_recovers_when_space_is_freed() {
    let Some(disk) = Tmpfs::mount("2m", "reliability_sqlite::a_full_disk") else {
        return;
    };
    let url = format!("sqlite://{}", disk.path().join("full.db").display());
    let (mut config, dir) = test_config();
    config.database_url = url.clone();
    let app = spawn_with(config, dir).await;

    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let r = post(&app, &big_user(&format!("before-{i}@example.com"))).await;
        assert_eq!(r.status(), 201);
        acknowledged.push(r.json::<Value>().await.unwrap());
    }
    let ballast = disk.path().join("ballast");
    fill(&ballast);

    // Writes go on while the WAL has room, then are refused, clearly.
    let mut refused = None;
    for i in 0..5000 {
        let r = post(&app, &big_user(&format!("during-{i}@example.com"))).await;
        match r.status().as_u16() {
            201 => acknowledged.push(r.json::<Value>().await.unwrap()),
            _ => {
                refused = Some(r);
                break;
            }
        }
    }
    let refused = refused.expect("the disk fills up within 5000 writes");
    assert!(!refused.headers().contains_key("retry-after"));
    let problem = crate::support::assert_problem(refused, 503).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("disk"),
        "the detail says the disk is full: {problem}"
    );
    // It stays refused while the disk is full, and reads go on meanwhile.
    let r = post(&app, &big_user("still-full@example.com")).await;
    crate::support::assert_problem(r, 503).await;
    let some = &acknowledged[acknowledged.len() / 2];
    let r = app.get(&format!("/users/{}", id_of(some))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.json::<Value>().await.unwrap(), some);
    assert_eq!(app.get("/users?limit=5").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200, "reads still work");
    let during_full = acknowledged.len();

    // Space comes back: writes work again, without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let r = post(&app, &big_user("after@example.com")).await;
    assert_eq!(r.status(), 201, "writes work again once there is room");
    acknowledged.push(r.json::<Value>().await.unwrap());
    eprintln!(
        "full disk: {during_full} writes acknowledged before the disk filled, then 503s; \
         writes resumed as soon as space was freed"
    );
    app.shutdown().await.unwrap();

    let (verdict, stored) = inspect_sqlite(&url).await;
    assert_eq!(verdict, "ok");
    for user in &acknowledged {
        assert!(
            stored.contains(&id_of(user)),
            "acknowledged {user} is stored"
        );
    }
    assert_eq!(
        stored.len(),
        acknowledged.len(),
        "nothing refused was stored"
    );
}

/// Runs skiff as `nobody` (when root: root writes read-only files anyway).
fn as_nobody(database_url: &str, dir: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let wrapper: &[&str] = if root {
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ]
    } else {
        &[]
    };
    skiff_via(wrapper, database_url, dir)
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_database_file_refuses_writes_with_503_and_keeps_serving_reads() {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o777);
    let db = dir.path().join("ro.db");
    let url = format!("sqlite://{}", db.display());
    let client = reqwest::Client::new();

    let server = Server::start(skiff(&url, dir.path()));
    let mut users = Vec::new();
    for i in 0..3 {
        let r = client
            .post(server.url("/users"))
            .json(&json!({"email": format!("ro-{i}@example.com")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        users.push(r.json::<Value>().await.unwrap());
    }
    server.stop();
    chmod(&db, 0o444);

    // It starts (no migration is pending, so nothing to write), serves
    // reads, and refuses writes with a 503 that says why.
    let server = Server::start(as_nobody(&url, dir.path()));
    let path = format!("/users/{}", id_of(&users[0]));
    let r = client.get(server.url(&path)).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), users[0]);
    assert_eq!(
        client
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let writes = [
        client
            .post(server.url("/users"))
            .json(&json!({"email": "new@example.com"})),
        client
            .patch(server.url(&path))
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"surname":"Changed"}"#),
        client.delete(server.url(&path)),
    ];
    for write in writes {
        let problem = crate::support::assert_problem(write.send().await.unwrap(), 503).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("read-only"),
            "{problem}"
        );
    }
    server.stop();

    chmod(&db, 0o644);
    let (verdict, stored) = inspect_sqlite(&url).await;
    assert_eq!(verdict, "ok");
    let expected: std::collections::HashSet<_> = users.iter().map(id_of).collect();
    assert_eq!(stored, expected, "nothing lost, nothing added");
    // And unchanged: the refused PATCH did not apply.
    let server = Server::start(skiff(&url, dir.path()));
    let r = client.get(server.url(&path)).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), users[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_file_system_stops_start_up_with_a_clear_message() {
    let Some(disk) = Tmpfs::mount("2m", "reliability_sqlite::a_read_only_file_system") else {
        return;
    };
    let url = format!("sqlite://{}", disk.path().join("ro.db").display());
    let server = Server::start(skiff(&url, disk.path()));
    let r = reqwest::Client::new()
        .post(server.url("/users"))
        .json(&json!({"email": "kept@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let user: Value = r.json().await.unwrap();
    server.stop();
    disk.remount("ro");

    for args in [&["serve"][..], &["serve", "--no-migrate"]] {
        let out = skiff(&url, Path::new("/"))
            .args(args)
            .env("PORT", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.contains("ro.db") && last.contains("Read-only file system"),
            "{args:?}: the message names the file and the cause: {last}"
        );
    }
    disk.remount("rw");
    let (verdict, stored) = inspect_sqlite(&url).await;
    assert_eq!(verdict, "ok");
    assert!(stored.contains(&id_of(&user)));
}

/// Checkpoints run off the write path (the writer's connection has
/// `wal_autocheckpoint = 0`), so something else must copy the WAL back into
/// the database file while the server runs: without it the WAL grows for
/// as long as the server lives and every read walks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wal_is_copied_into_the_database_file_while_serving() {
    let (config, dir) = test_config();
    let file = dir.path().join("skiff.db");
    let app = spawn_with(config, dir).await;
    let size = || std::fs::metadata(&file).map_or(0, |m| m.len());
    let before = size();
    // Readers keep their snapshots between reads: reads from several
    // connections at once, before the writes, leave idle connections whose
    // snapshots would hold every later checkpoint back.
    let read = || async {
        let r = app
            .client
            .get(app.url("/users?limit=5"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    for _ in 0..5 {
        futures_util::future::join_all((0..16).map(|_| read())).await;
    }
    // About 600 KiB of users: 150 pages and more, all first in the WAL.
    for i in 0..600 {
        let r = post(&app, &big_user(&format!("wal-{i}@example.com"))).await;
        assert_eq!(r.status(), 201);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while size() < before + 500 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "the database file is still {} bytes (was {before}) 20 s after 600 writes",
            size()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // And what was copied is what was written.
    let r = app
        .client
        .get(app.url("/users?email=wal-599@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap().as_array().unwrap().len(),
        1
    );
}
