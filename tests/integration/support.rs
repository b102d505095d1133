//! The test harness: spawns the real app on a random loopback port, with a
//! fresh SQLite file, and gives a real HTTP client to talk to it.

#[cfg(feature = "users")]
#[macro_use]
pub mod backends;
#[cfg(feature = "users")]
pub mod crash;
#[cfg(feature = "users")]
pub mod pg_cluster;
pub mod process;
#[cfg(feature = "ip")]
pub mod stub;

use std::net::SocketAddr;
use std::time::Duration;

use skiff::{App, AppState, Config, ServeOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    /// Holds the SQLite file and any scripts until the app is dropped.
    #[cfg_attr(not(feature = "users"), allow(dead_code))] // read by users tests only
    pub dir: tempfile::TempDir,
}

/// A configuration for tests: loopback, port 0, a fresh SQLite file in its
/// own temp dir, and an `/ip` upstream that refuses connections.
pub fn test_config() -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("can make a temp dir");
    let config = Config {
        port: 0,
        bind: [127, 0, 0, 1].into(),
        database_url: format!("sqlite://{}", dir.path().join("skiff.db").display()),
        ip_upstream: "http://127.0.0.1:9/".into(),
        log_filter: "warn".parse().unwrap(),
        ..Config::default()
    };
    (config, dir)
}

/// How long test clients keep an idle connection for reuse: less than the
/// server keeps it (`SKIFF_IDLE_TIMEOUT`). A client that reuses a connection
/// at the very moment the server closes it sees its request fail, as any
/// HTTP/1.1 client would, so a test that shortens the idle timeout keeps it
/// above this.
pub const CLIENT_IDLE: Duration = Duration::from_secs(1);

/// Spawns the app with the test configuration.
pub async fn spawn() -> TestApp {
    let (config, dir) = test_config();
    spawn_with(config, dir).await
}

/// Spawns the app with `config` (whose port should be 0) and keeps `dir`
/// alive as long as the app.
pub async fn spawn_with(config: Config, dir: tempfile::TempDir) -> TestApp {
    skiff::telemetry::init_logging(&config);
    let app = App::build(config, ServeOptions::default())
        .await
        .expect("the app starts");
    let addr = app.local_addr();
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(CLIENT_IDLE)
        .build()
        .expect("a client builds");
    TestApp {
        addr,
        client,
        state,
        shutdown: Some(tx),
        server: Some(server),
        dir,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("the request is answered")
    }

    /// Begins graceful shutdown and waits for the server to stop.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let server = self.server.take().expect("the server runs");
        server.await.expect("the server task does not panic")
    }

    /// Begins graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("{name} header on {} {}", r.status(), r.url()))
        .to_str()
        .expect("ASCII")
        .to_owned()
}

/// Asserts that `response` is an RFC 9457 problem with `status`, and returns
/// its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "status of {}",
        response.url()
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "content type of a {status}"
    );
    let body: serde_json::Value = response.json().await.expect("a problem is JSON");
    assert_eq!(body["status"], status);
    assert_eq!(body["type"], "about:blank");
    assert!(body["title"].is_string(), "{body}");
    assert!(body["detail"].is_string(), "{body}");
    body
}

/// Polls `condition` every 10 ms until it holds; panics after 10 s.
pub async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, Duration::from_secs(10), condition).await;
}

/// Polls `condition` every 10 ms until it holds; panics after `timeout`.
pub async fn eventually_within<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of a metric sample (`name{labels}` exactly as rendered), if present.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A client that opens a new connection for every request.
pub fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .no_gzip()
        .build()
        .unwrap()
}
