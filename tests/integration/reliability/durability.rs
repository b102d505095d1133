//! Writes are durable when acknowledged: users created through the real
//! binary on a SQLite file survive a `kill -9` in the middle of a stream of
//! concurrent writes. (`reliability/crash.rs` repeats this at random
//! moments.)

use crate::support::crash::{Writers, assert_durable};
use crate::support::process::{Server, skiff};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_users_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("durable.db").display());
    let mut server = Server::start(skiff(&url, dir.path()));

    // Eight writers create users until the server dies under them; kill it
    // mid-stream, once a good number of writes were acknowledged.
    let writers = Writers::start(&server, "once", 8);
    writers.wait_for(300).await;
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
    let acknowledged = writers.join().await;
    drop(server);

    let server = Server::start(skiff(&url, dir.path()));
    assert_durable(&url, &server, &acknowledged).await;
}
