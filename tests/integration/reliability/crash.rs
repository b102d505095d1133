//! Crash consistency: rounds of concurrent writes through the real binary on
//! a SQLite file, each ended by `kill -9` at a random moment. After every
//! restart the database passes `PRAGMA integrity_check`, holds every user
//! whose create was acknowledged (as answered) and none whose delete was.
//! `SKIFF_CRASH_ROUNDS=100` runs more rounds (a longer run, not in the suite).

use std::hash::BuildHasher;
use std::time::Duration;

use crate::support::crash::{Acknowledged, Writers, assert_durable, id_of};
use crate::support::process::{Server, skiff};

/// Rounds of the test (`SKIFF_CRASH_ROUNDS` overrides, for longer runs).
const ROUNDS: usize = 5;

/// A random delay up to `max_ms`, different in every process and call.
fn random_ms(max_ms: u64) -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now()) % max_ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_at_random_moments() {
    let rounds = std::env::var("SKIFF_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("crash.db").display());
    let mut server = Server::start(skiff(&url, dir.path()));
    let mut acknowledged = Acknowledged::default();
    for round in 0..rounds {
        let writers = Writers::start(&server, &format!("r{round}"), 8);
        // Some writes first, so there is something to lose, then a random
        // moment: mid-batch, mid-commit, mid-checkpoint, whatever it hits.
        writers.wait_for(5).await;
        let delay = random_ms(500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.child.kill().expect("SIGKILL");
        server.child.wait().unwrap();
        let acked = writers.join().await;
        eprintln!(
            "round {round}: kill -9 {delay} ms into the burst, after {} creates and {} deletes \
             were acknowledged",
            acked.created.len() + acked.deleted.len(),
            acked.deleted.len()
        );
        acknowledged
            .created
            .retain(|u| !acked.deleted.contains(&id_of(u)));
        acknowledged.created.extend(acked.created);
        acknowledged.deleted.extend(acked.deleted);

        // Restarting recovers the WAL; then everything acknowledged in
        // every round so far is there.
        server = Server::start(skiff(&url, dir.path()));
        assert_durable(&url, &server, &acknowledged).await;
    }
    eprintln!(
        "{rounds} rounds of kill -9: {} users and {} deletes acknowledged, none lost; integrity_check ok after every restart",
        acknowledged.created.len(),
        acknowledged.deleted.len()
    );
}
