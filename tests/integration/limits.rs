//! Limits that keep one client from tying up the server: load shedding,
//! slow request heads, oversized heads, and the connection cap.

use std::time::Duration;

use crate::support::{spawn_with, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or 10 s pass) and returns
/// what it sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .ok();
    answer
}

fn status_of(answer: &[u8]) -> String {
    String::from_utf8_lossy(answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[cfg(feature = "ip")]
#[tokio::test]
async fn past_the_concurrency_limit_requests_are_shed_with_retry_after() {
    use crate::support::stub::{Behaviour, Stub};
    let stub = Stub::start(Behaviour::Gated("203.0.113.1")).await;
    let (mut config, dir) = test_config();
    config.max_concurrency = 2;
    config.ip_upstream = stub.url();
    config.ip_cache_ttl = Duration::ZERO;
    let app = spawn_with(config, dir).await;
    // Two requests hold both slots while the upstream is gated.
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(app.client.get(app.url("/ip")).send()))
        .collect();
    stub.wait_for_calls(1).await;
    crate::support::eventually("both slots taken", || async {
        let r = app.get("/hello").await;
        r.status() == 503
    })
    .await;
    let r = app.get("/hello").await;
    assert_eq!(r.headers()["retry-after"], "1");
    crate::support::assert_problem(r, 503).await;
    // Probes and metrics are never shed.
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(crate::support::metric(&metrics, "skiff_requests_shed_total").unwrap() >= 2.0);

    stub.open_gate();
    for request in held {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(app.get("/hello").await.status(), 200);
}

#[tokio::test]
async fn a_client_too_slow_to_send_its_headers_is_cut_off() {
    let (mut config, dir) = test_config();
    config.header_timeout = Duration::from_millis(300);
    let app = spawn_with(config, dir).await;
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The head never completes: the server closes the connection.
    let answer = read_to_close(&mut slow).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    // Others are served all along.
    assert_eq!(app.get("/hello").await.status(), 200);
}

/// Sends a `GET /hello` on `stream` and reads its answer (head and a body
/// of `Content-Length` bytes), leaving the connection open.
async fn hello_on(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .expect("a Content-Length")
                .parse()
                .unwrap();
            if body.len() >= length {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "connection closed mid-answer: {text:?}");
        answer.extend_from_slice(&chunk[..n]);
    }
}

/// An app configured by `change`, and a connection to it that has had one
/// `200` and stays open.
async fn kept_alive(
    change: impl FnOnce(&mut skiff::Config),
) -> (crate::support::TestApp, TcpStream) {
    let (mut config, dir) = test_config();
    change(&mut config);
    let app = spawn_with(config, dir).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    assert!(status_of(hello_on(&mut stream).await.as_bytes()).contains("200"));
    (app, stream)
}

#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_header_timeout() {
    let (_app, mut stream) = kept_alive(|c| c.header_timeout = Duration::from_millis(200)).await;
    // Idle for several header timeouts (the idle timeout is 75 s): the time
    // passing is what is tested here, nothing waits on the server.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(status_of(hello_on(&mut stream).await.as_bytes()).contains("200"));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (_app, mut stream) = kept_alive(|c| c.idle_timeout = Duration::from_millis(300)).await;
    // Nothing more is sent: the server closes the connection by itself.
    assert!(read_to_close(&mut stream).await.is_empty());
}

#[tokio::test]
async fn a_slow_head_on_a_kept_alive_connection_is_cut_off() {
    let (_app, mut stream) = kept_alive(|c| c.header_timeout = Duration::from_millis(300)).await;
    // Blank lines first, then a head that never ends: the header timeout
    // runs from the first byte, and blank lines do not stop it.
    stream
        .write_all(b"\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut stream).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
}

/// Sends `request` on a new connection and asserts that the answer is a
/// `431` problem and that the server then closes the connection.
async fn assert_431_problem(addr: std::net::SocketAddr, request: &[u8]) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let answer = read_to_close(&mut stream).await;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 431 "), "{head}");
    assert!(
        head.contains("\r\ncontent-type: application/problem+json"),
        "{head}"
    );
    assert!(head.contains("\r\nconnection: close"), "{head}");
    let length: usize = head
        .split_once("\r\ncontent-length: ")
        .and_then(|(_, rest)| rest.lines().next()?.parse().ok())
        .expect("a content-length");
    assert_eq!(body.len(), length, "the body is whole and nothing follows");
    let problem: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(problem["status"], 431);
    assert_eq!(problem["type"], "about:blank");
    assert!(problem["detail"].as_str().unwrap().contains("32 KiB"));
}

/// hyper's own `431` has no body; every error of the contract is a problem.
#[tokio::test]
async fn oversized_heads_get_a_431_problem_and_the_connection_closes() {
    let app = crate::support::spawn().await;
    // One field just over the 32 KiB head limit, one far over it.
    for size in [32 * 1024, 60 * 1024] {
        let big = "x".repeat(size);
        let request = format!("GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        assert_431_problem(app.addr, request.as_bytes()).await;
    }
    // A head that never ends but keeps growing.
    let request = format!(
        "GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: {}",
        "x".repeat(40 * 1024)
    );
    assert_431_problem(app.addr, request.as_bytes()).await;
    // More than 100 small fields, and many fields as a POST with a body.
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET /hello HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_431_problem(app.addr, request.as_bytes()).await;
    let request = format!(
        "POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 2\r\n{many}\r\n{{}}"
    );
    assert_431_problem(app.addr, request.as_bytes()).await;
    // The second request of a kept-alive connection.
    let request = format!(
        "GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n{many}\r\n"
    );
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let second = &answer[answer.find("HTTP/1.1 431 ").expect("a 431 second")..];
    assert!(second.contains("application/problem+json"), "{second}");

    // Heads within the limits are served as before.
    // 97 fields with Host, Connection and X-Big: 100 fields, the most.
    let fields: String = (0..97).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!(
        "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n{fields}\r\n",
        "x".repeat(24 * 1024)
    );
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let status = status_of(&read_to_close(&mut stream).await);
    assert!(status.contains("200"), "{status}");
    assert_eq!(app.get("/hello").await.status(), 200);
}

#[tokio::test]
async fn oversized_request_heads_get_431_and_the_server_lives_on() {
    let app = crate::support::spawn().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let big = "x".repeat(64 * 1024);
    let request = format!("GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    assert!(status_of(&read_to_close(&mut stream).await).contains("431"));

    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET /hello HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    assert!(status_of(&read_to_close(&mut stream).await).contains("431"));

    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let request = format!("GET /hello?{big} HTTP/1.1\r\nHost: x\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let status = status_of(&read_to_close(&mut stream).await);
    assert!(status.contains("431") || status.contains("414"), "{status}");

    assert_eq!(app.get("/hello").await.status(), 200);
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let (mut config, dir) = test_config();
    config.max_connections = 2;
    config.header_timeout = Duration::from_secs(60);
    let app = spawn_with(config, dir).await;
    let idle_a = TcpStream::connect(app.addr).await.unwrap();
    let idle_b = TcpStream::connect(app.addr).await.unwrap();
    // A third connection is accepted by the kernel, then closed unanswered.
    crate::support::eventually("a third connection to be refused", || async {
        let mut third = TcpStream::connect(app.addr).await.unwrap();
        let _ = third
            .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        read_to_close(&mut third).await.is_empty()
    })
    .await;
    drop((idle_a, idle_b));
    // Once the idle ones go, there is room again.
    crate::support::eventually("a slot to free up", || async {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        let _ = s
            .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        status_of(&read_to_close(&mut s).await).contains("200")
    })
    .await;
}
