//! A local stand-in for the public-IP upstream (the only thing outside the
//! machine): answers like ipify, or fails in the ways a real one can.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::sync::watch;

#[derive(Clone)]
pub enum Behaviour {
    /// Answer with this status and body.
    Answer(u16, &'static str),
    /// Never answer.
    Hang,
    /// Answer `200` with this body once the gate is opened.
    Gated(&'static str),
}

pub struct Stub {
    pub addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
}

impl Stub {
    pub async fn start(behaviour: Behaviour) -> Stub {
        let calls = Arc::new(AtomicUsize::new(0));
        let (gate, gate_rx) = watch::channel(false);
        let counter = calls.clone();
        let handler = move || {
            let behaviour = behaviour.clone();
            let counter = counter.clone();
            let mut gate_rx = gate_rx.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                match behaviour {
                    Behaviour::Answer(status, body) => {
                        (StatusCode::from_u16(status).unwrap(), body)
                    }
                    Behaviour::Hang => std::future::pending().await,
                    Behaviour::Gated(body) => {
                        let _ = gate_rx.wait_for(|open| *open).await;
                        (StatusCode::OK, body)
                    }
                }
            }
        };
        let app = Router::new().route("/", get(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Stub { addr, calls, gate }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// Waits (up to 10 s) until the stub has been called `n` times.
    pub async fn wait_for_calls(&self, n: usize) {
        super::eventually("the upstream to be called", || async { self.calls() >= n }).await;
    }
}
