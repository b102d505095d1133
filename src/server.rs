//! The accept loop: HTTP/1.1 connections served by hyper, with the limits
//! `axum::serve` does not expose — a header read timeout against slow-header
//! clients and a longer idle timeout for kept-alive connections (see
//! [`deadline`]), a header size cap (`431`), a cap on open connections
//! (further ones are closed at once) — and graceful draining on shutdown.

mod deadline;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use deadline::{Deadlines, Timeouts};

/// Largest request head (request line and headers) accepted; past it: `431`.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// hyper's read and write buffer cap (above the head cap, which must fit).
const MAX_BUF_BYTES: usize = 2 * MAX_HEADER_BYTES;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A client must send its whole request head within this time.
    pub header_read_timeout: Duration,
    /// A kept-alive connection may wait this long for its next request.
    pub idle_timeout: Duration,
    /// Connections open at once; more are closed as soon as accepted.
    pub max_connections: u32,
    /// A client that accepts no bytes of an answer for this long is cut off.
    pub send_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting, lets every connection finish its in-flight request, and
/// returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let router = router.layer(axum::middleware::from_fn(
        crate::http::middleware::require_host,
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead
                    // of spinning; the listener itself stays usable.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(crate::telemetry::CONNECTIONS_REFUSED).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // The peer address, for the access log (`ConnectInfo`, as axum's
        // own server would give it).
        let service = TowerToHyperService::new(router.clone().map_request(
            move |request: hyper::Request<Incoming>| {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        ));
        let mut drain = drain_rx.clone();
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                // Replaced by `Deadlines`, which tells idle from slow.
                .header_read_timeout(None)
                .max_header_size(MAX_HEADER_BYTES)
                // What hyper queues of an answer ahead of the socket: with
                // streamed lists, what a stalled reader pins is about this
                // plus one chunk.
                .max_buf_size(MAX_BUF_BYTES);
            let stream = Deadlines::new(
                stream,
                Timeouts {
                    header: limits.header_read_timeout,
                    idle: limits.idle_timeout,
                    send: limits.send_timeout,
                },
            );
            let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { drain.wait_for(|draining| *draining).await.is_ok() } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    drain_tx.send_replace(true);
    // Every connection holds a slot until it closes.
    let _ = slots.acquire_many(limits.max_connections).await;
}
