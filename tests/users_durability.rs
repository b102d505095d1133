//! Writes are durable when acknowledged: users created through the real
//! binary on a SQLite file survive a `kill -9` in the middle of a stream of
//! concurrent writes.
#![cfg(feature = "users")]

#[path = "common/backends.rs"]
mod backends;
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backends::{Server, skiff};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_users_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("durable.db").display());
    let mut server = Server::start(skiff(&url, dir.path()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // Eight writers create users until the server dies under them; each
    // keeps the users it saw acknowledged.
    let acknowledged = Arc::new(Mutex::new(Vec::<Value>::new()));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let client = client.clone();
        let url = server.url("/users");
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let sent = client
                    .post(&url)
                    .json(&json!({"email": format!("w{writer}-{i}@example.com"), "surname": "Durable"}))
                    .send()
                    .await;
                let Ok(response) = sent else { return };
                assert_eq!(response.status(), 201, "the server answers 201 or nothing");
                let Ok(user) = response.json::<Value>().await else { return };
                acknowledged.lock().unwrap().push(user);
            }
        }));
    }

    // Kill it mid-stream, once a good number of writes were acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() < 300 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes are acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
    for writer in writers {
        writer.await.expect("a writer ends when the server is gone");
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    drop(server);

    let server = Server::start(skiff(&url, dir.path()));
    for user in &acknowledged {
        let r = client
            .get(server.url(&format!("/users/{}", user["id"].as_str().unwrap())))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged user {} is there", user["id"]);
        assert_eq!(&r.json::<Value>().await.unwrap(), user);
    }
    // Walk the whole list: nothing is there twice, nothing acknowledged is missing.
    let mut listed = std::collections::HashSet::new();
    let mut next = Some("/users?limit=1000".to_string());
    while let Some(path) = next {
        let r = client.get(server.url(&path)).send().await.unwrap();
        next = r.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            l[1..l.find('>').unwrap()].to_string()
        });
        for user in r.json::<Value>().await.unwrap().as_array().unwrap() {
            assert!(listed.insert(user["id"].as_str().unwrap().to_string()));
        }
    }
    for user in &acknowledged {
        assert!(listed.contains(user["id"].as_str().unwrap()));
    }
}
