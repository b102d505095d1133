//! The crash harness: writers that record what the server acknowledged,
//! and the check that a restarted server (and the SQLite file itself) still
//! holds all of it. Used by the `kill -9` and storage-fault tests.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;

use crate::support::process::Server;

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
            .pool_idle_timeout(crate::support::CLIENT_IDLE)
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
