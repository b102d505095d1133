//! The database going away: PostgreSQL stopped under a running load (first
//! cleanly, then like a crash) turns `/readyz` to `503` and every write
//! into a `503` problem answered within the request timeout — never a
//! `500`, never a hang — and the service recovers by itself when the
//! database comes back, with every acknowledged write still there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::pg_cluster::{PgCluster, StopMode};
use crate::support::{TestApp, spawn_with, test_config};
use serde_json::{Value, json};

/// What one request of the load got.
#[derive(Debug, Clone)]
struct Outcome {
    sent: Instant,
    took: Duration,
    /// The status, or the transport error when there was no answer.
    status: Result<u16, String>,
    content_type: String,
}

/// Writers that create users until stopped, keeping every outcome and
/// every acknowledged user.
struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    acknowledged: Arc<Mutex<Vec<Value>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(app: &TestApp, round: &str, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..writers)
            .map(|w| {
                let (client, url) = (app.client.clone(), app.url("/users"));
                let (stop, outcomes, acknowledged) =
                    (stop.clone(), outcomes.clone(), acknowledged.clone());
                let round = round.to_owned();
                tokio::spawn(async move {
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let sent = Instant::now();
                        let email = format!("{round}-w{w}-{i}@example.com");
                        let answer = client
                            .post(&url)
                            .json(&json!({ "email": email }))
                            .send()
                            .await;
                        let mut outcome = Outcome {
                            sent,
                            took: sent.elapsed(),
                            status: Err(String::new()),
                            content_type: String::new(),
                        };
                        match answer {
                            Ok(r) => {
                                outcome.status = Ok(r.status().as_u16());
                                outcome.content_type = r
                                    .headers()
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned();
                                if r.status() == 201 {
                                    let user: Value = r.json().await.expect("a created user");
                                    acknowledged.lock().unwrap().push(user);
                                }
                            }
                            Err(e) => outcome.status = Err(e.to_string()),
                        }
                        outcomes.lock().unwrap().push(outcome);
                    }
                })
            })
            .collect();
        Load {
            stop,
            outcomes,
            acknowledged,
            tasks,
        }
    }

    fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    fn acknowledged(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// Waits (up to 60 s) until `what` holds of the outcomes so far.
    async fn wait_for(&self, what: &str, condition: impl Fn(&[Outcome]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !condition(&self.outcomes()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> (Vec<Outcome>, Vec<Value>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a writer does not panic");
        }
        let outcomes = self.outcomes.lock().unwrap().clone();
        let acknowledged = self.acknowledged.lock().unwrap().clone();
        (outcomes, acknowledged)
    }
}

/// A fresh PostgreSQL cluster for `test` and skiff serving on it (`None`
/// when PostgreSQL is not available: the test is skipped, loudly).
async fn serve_on_a_fresh_cluster(test: &'static str) -> Option<(PgCluster, TestApp)> {
    let pg = tokio::task::spawn_blocking(move || PgCluster::start(test))
        .await
        .unwrap()?;
    let (mut config, dir) = test_config();
    config.database_url = pg.url();
    let app = spawn_with(config, dir).await;
    Some((pg, app))
}

async fn readiness(app: &TestApp) -> (u16, Value) {
    let r = app.get("/readyz").await;
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_mid_run_gives_503s_and_the_service_recovers_by_itself() {
    let test = "reliability_postgres::postgres_stopped_mid_run";
    let Some((mut pg, app)) = serve_on_a_fresh_cluster(test).await else {
        return;
    };
    let request_timeout = app.state.config.request_timeout;
    assert_eq!(readiness(&app).await.0, 200);

    let mut acknowledged = Vec::new();
    for (round, mode) in [("fast", StopMode::Fast), ("crash", StopMode::Immediate)] {
        let load = Load::start(&app, round, 4);
        let enough = |o: &[Outcome]| o.iter().filter(|o| o.status == Ok(201)).count() >= 20;
        load.wait_for("writes acknowledged before the stop", enough)
            .await;

        pg = tokio::task::spawn_blocking(move || {
            pg.stop(mode);
            pg
        })
        .await
        .unwrap();
        let stopped = Instant::now();

        // Readiness notices…
        let deadline = stopped + Duration::from_secs(15);
        loop {
            let (status, body) = readiness(&app).await;
            if status == 503 {
                assert_eq!(
                    body,
                    json!({"status": "DOWN", "checks": {"database": "DOWN"}})
                );
                break;
            }
            assert!(Instant::now() < deadline, "/readyz is still {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let noticed = stopped.elapsed();
        // …and writes sent while the database is down are refused with 503.
        load.wait_for("writes refused while the database is down", |o| {
            o.iter()
                .filter(|o| o.sent > stopped && o.status == Ok(503))
                .count()
                >= 4
        })
        .await;
        let during = load.acknowledged();

        pg = tokio::task::spawn_blocking(move || {
            pg.restart();
            pg
        })
        .await
        .unwrap();
        let restarted = Instant::now();
        load.wait_for("a write acknowledged after the restart", |o| {
            o.iter().any(|o| o.sent > restarted && o.status == Ok(201))
        })
        .await;
        let recovered = restarted.elapsed();
        let (status, body) = readiness(&app).await;
        assert_eq!((status, &body["status"]), (200, &json!("UP")));
        let (outcomes, acked) = load.finish().await;

        let refused = outcomes.iter().filter(|o| o.status == Ok(503)).count();
        let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
        eprintln!(
            "round {round}: {} requests, {} acknowledged ({during} before the database was back), \
             {refused} refused with 503, slowest answer {slowest:?}; \
             /readyz down {noticed:?} after the stop; \
             writes succeed {recovered:?} after the database is back",
            outcomes.len(),
            acked.len()
        );
        for o in &outcomes {
            match &o.status {
                Ok(201) => {}
                Ok(503) => assert_eq!(o.content_type, "application/problem+json", "{o:?}"),
                other => panic!("round {round}: a write got {other:?}, not 201 or 503: {o:?}"),
            }
            assert!(
                o.took <= request_timeout + Duration::from_secs(2),
                "round {round}: a write took {:?}, past the request timeout",
                o.took
            );
        }
        acknowledged.extend(acked);
    }

    // Nothing acknowledged was lost, through a clean stop and a crash.
    for user in &acknowledged {
        let r = app
            .get(&format!("/users/{}", user["id"].as_str().unwrap()))
            .await;
        assert_eq!(r.status(), 200, "acknowledged user {user} is there");
        assert_eq!(&r.json::<Value>().await.unwrap(), user);
    }
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_and_lists_are_503_too_while_postgres_is_down() {
    let test = "reliability_postgres::reads_and_lists_are_503_too";
    let Some((mut pg, app)) = serve_on_a_fresh_cluster(test).await else {
        return;
    };
    let r = app
        .client
        .post(app.url("/users"))
        .json(&json!({"email": "kept@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let user: Value = r.json().await.unwrap();
    let path = format!("/users/{}", user["id"].as_str().unwrap());

    pg = tokio::task::spawn_blocking(move || {
        pg.stop(StopMode::Fast);
        pg
    })
    .await
    .unwrap();
    let patch = app
        .client
        .patch(app.url(&path))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"surname":"Lost"}"#);
    let delete = app.client.delete(app.url(&path));
    let (get, list, patch, delete) = tokio::join!(
        app.client.get(app.url(&path)).send(),
        app.client.get(app.url("/users?limit=5")).send(),
        patch.send(),
        delete.send(),
    );
    for r in [get, list, patch, delete] {
        let r = r.expect("answered");
        assert!(r.headers().contains_key("retry-after"), "{r:?}");
        crate::support::assert_problem(r, 503).await;
    }

    pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    crate::support::eventually_within(
        "the user to be readable again",
        Duration::from_secs(20),
        || async { app.get(&path).await.status() == 200 },
    )
    .await;
    // The refused PATCH and DELETE changed nothing.
    assert_eq!(app.get(&path).await.json::<Value>().await.unwrap(), user);
    drop(pg);
}

/// A write waiting in the database whose session PostgreSQL ends (as a
/// fast shutdown ends every session, with `57P01 admin_shutdown`) is the
/// database going away: `503`, not a `500`. A table lock held by another
/// session keeps the write waiting; `pg_terminate_backend` then ends its
/// session while the lock is still held, so the write cannot slip through
/// first and the case is hit every time. (Stopping the server instead ends
/// the lock holder too, and the write sometimes commits first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_session_postgres_ends_gets_503_and_is_not_made() {
    use sqlx::Connection;
    let test = "reliability_postgres::a_write_whose_session_postgres_ends";
    let Some((pg, app)) = serve_on_a_fresh_cluster(test).await else {
        return;
    };

    let mut admin = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut admin).await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut admin)
        .await
        .unwrap();
    let write = tokio::spawn(
        app.client
            .post(app.url("/users"))
            .json(&json!({"email": "in-flight@example.com"}))
            .send(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let waiting: i32 = loop {
        let waiting: Option<i32> =
            sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                .fetch_optional(&mut admin)
                .await
                .unwrap();
        if let Some(pid) = waiting {
            break pid;
        }
        assert!(Instant::now() < deadline, "the write waits on the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(waiting)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(ended);
    let r = write.await.unwrap().expect("the write is answered");
    assert!(r.headers().contains_key("retry-after"), "{r:?}");
    crate::support::assert_problem(r, 503).await;
    sqlx::query("ROLLBACK").execute(&mut admin).await.unwrap();

    // It was not made: the email is still free.
    let again = app
        .client
        .post(app.url("/users"))
        .json(&json!({"email": "in-flight@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 201);
    drop(pg);
}

/// A TCP proxy in front of PostgreSQL that can turn hostile: then it cuts
/// every connection it carries and answers new ones with one byte of
/// nonsense, as a server dying mid-handshake does.
struct ChaosProxy {
    addr: std::net::SocketAddr,
    hostile: Arc<AtomicBool>,
    carried: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    async fn start(upstream: String) -> ChaosProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hostile = Arc::new(AtomicBool::new(false));
        let carried = Arc::new(Mutex::new(Vec::new()));
        let (h, c) = (hostile.clone(), carried.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if h.load(Ordering::SeqCst) {
                    use tokio::io::AsyncWriteExt;
                    let _ = client.write_all(b"\0").await;
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        ChaosProxy {
            addr,
            hostile,
            carried,
            accept,
        }
    }

    fn turn_hostile(&self) {
        self.hostile.store(true, Ordering::SeqCst);
        for task in self.carried.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn turn_friendly(&self) {
        self.hostile.store(false, Ordering::SeqCst);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.turn_hostile();
    }
}

/// `url` with its `host:port` replaced by `addr`.
fn via(url: &str, addr: std::net::SocketAddr) -> (String, String) {
    let start = url.find('@').expect("user info in the URL") + 1;
    let end = start + url[start..].find('/').expect("a database in the URL");
    let upstream = url[start..end].to_string();
    (format!("{}{addr}{}", &url[..start], &url[end..]), upstream)
}

/// New connections answered with garbage (a server dying while it answers
/// the TLS probe sqlx sends first) are the database being unavailable:
/// `503`, not a `500`, and the service recovers once the database answers
/// properly again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_from_the_database_connection_gives_503_and_recovers() {
    let test = "reliability_postgres::garbage_from_the_database_connection";
    let Some(db) = crate::support::backends::TestDb::postgres(test).await else {
        return;
    };
    let placeholder: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let (_, upstream) = via(&db.url, placeholder);
    let proxy = ChaosProxy::start(upstream).await;
    let (mut config, dir) = test_config();
    config.database_url = via(&db.url, proxy.addr).0;
    let app = spawn_with(config, dir).await;
    let post = |email: &str| {
        app.client
            .post(app.url("/users"))
            .json(&json!({ "email": email }))
            .send()
    };
    assert_eq!(post("before@example.com").await.unwrap().status(), 201);

    proxy.turn_hostile();
    let (a, b, c) = tokio::join!(
        post("a@example.com"),
        post("b@example.com"),
        app.client.get(app.url("/users")).send()
    );
    for r in [a, b, c] {
        crate::support::assert_problem(r.unwrap(), 503).await;
    }
    assert_eq!(readiness(&app).await.0, 503);

    proxy.turn_friendly();
    crate::support::eventually("writes to work again", || async {
        post(&format!("{}@example.com", uuid::Uuid::now_v7()))
            .await
            .is_ok_and(|r| r.status() == 201)
    })
    .await;
    app.shutdown().await.unwrap();
    db.cleanup().await;
}
