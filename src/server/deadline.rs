//! Per-connection read deadlines for HTTP/1.1, kept apart by phase:
//!
//! - *head*: from the first byte of a request (or from accept) to the blank
//!   line that ends its head, a client has `header_timeout`. This cuts off
//!   slow-header (slowloris) clients.
//! - *idle*: from the last byte of an answer written to the next request's
//!   first byte, a kept-alive connection may wait `idle_timeout`.
//! - *busy*: while a request is being served, no deadline here; the request
//!   timeout and the body limit of the router apply.
//!
//! Writes have one deadline of their own, in every phase: once the peer
//! accepts no more bytes (a write would block), it has `send_timeout` to
//! accept some, else the write fails with `TimedOut` and hyper closes the
//! connection, dropping the rest of the answer (like nginx's
//! `send_timeout`). A stalled reader so pins an answer for that long at
//! most.
//!
//! hyper answers a request head over its limits (`MAX_HEADER_BYTES`, 100
//! header fields) with a bare `431`, while every error of the contract is
//! problem+json. This wrapper counts the bytes and lines of each head it
//! reads; when the head was that large and hyper writes a `431`, it sends a
//! problem+json `431` with `Connection: close` in its place (hyper closes
//! the connection after its error answers, and writes them only between
//! answers, so nothing else is interleaved).
//!
//! hyper has a single `header_read_timeout` that starts as soon as it waits
//! for a head, idle or not, so it would close a keep-alive connection after
//! the (short) header timeout. This wrapper replaces it: it watches the bytes
//! read (for the end of a head) and written (an answer going out), and fails
//! a read with `TimedOut` once the current phase's deadline has passed,
//! which makes hyper close the connection.
//!
//! Why hand-written: hyper has no idle, body or send timeout for HTTP/1
//! servers (hyperium/hyper#2355 and #1628, open; the h1 `idle_timeout` of
//! hyperium/hyper#3743 was closed unmerged). When hyper gains them, the
//! phases here can go.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::MAX_HEADER_BYTES;
use crate::error::{PROBLEM_JSON, Problem};

/// hyper's default cap on header fields in a request head.
const MAX_HEADERS: usize = 100;

/// The start of hyper's answer to a head over its limits.
const HYPER_431: &[u8] = b"HTTP/1.1 431 ";

/// What is sent instead of hyper's bare `431`.
static PROBLEM_431: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    let detail = format!(
        "the request head is over {} KiB or {MAX_HEADERS} header fields",
        MAX_HEADER_BYTES / 1024
    );
    let body = serde_json::to_string(&Problem::new(status, detail)).expect("a problem serializes");
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {PROBLEM_JSON}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// Replacing hyper's `431`: not (`Off`), `Sending` the problem (bytes of it
/// written so far), or `Sent` (whatever hyper writes after it is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    Off,
    Sending(usize),
    Sent,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    pub send: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head; `seen` is how far the search for its end
    /// has got (see [`scan_for_head_end`]).
    Head { deadline: Instant, seen: u8 },
    /// A request is being served, its answer not yet begun.
    Busy,
    /// Waiting for the next request on a kept-alive connection.
    Idle { deadline: Instant },
}

/// An I/O stream with the deadlines described in the module docs.
pub struct Deadlines<T> {
    inner: T,
    /// Armed for the current phase's deadline or an earlier one (see
    /// [`Self::poll_deadline`]).
    timer: Pin<Box<Sleep>>,
    phase: Phase,
    timeouts: Timeouts,
    /// Armed when a write blocks, for the send deadline; `None` while
    /// writes go through.
    send_timer: Option<Pin<Box<Sleep>>>,
    /// Bytes and line feeds read since the current head began: at least
    /// what hyper's limits count, so hyper's `431` comes only after a head
    /// found this large, and a handler's `431` after a smaller one is kept.
    head_bytes: usize,
    head_lines: usize,
    replace: Replace,
}

impl<T> Deadlines<T> {
    /// Starts in the head phase: a fresh connection must send its first
    /// request head within the header timeout.
    pub fn new(inner: T, timeouts: Timeouts) -> Self {
        let deadline = Instant::now() + timeouts.header;
        Self {
            inner,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            phase: Phase::Head {
                deadline,
                seen: HEAD_START,
            },
            timeouts,
            send_timer: None,
            head_bytes: 0,
            head_lines: 0,
            replace: Replace::Off,
        }
    }

    /// Whether the current (or last) head was over hyper's limits.
    fn head_too_large(&self) -> bool {
        self.head_bytes >= MAX_HEADER_BYTES || self.head_lines > MAX_HEADERS
    }

    /// A write made progress (`true`) or would block (`false`). Fails with
    /// `TimedOut` once writes have blocked for the send timeout.
    fn note_send(&mut self, progress: bool, cx: &mut Context<'_>) -> io::Result<()> {
        if progress {
            self.send_timer = None;
            return Ok(());
        }
        let send = self.timeouts.send;
        let timer = self
            .send_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::counter!(crate::telemetry::SEND_TIMEOUTS).increment(1);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client accepted no bytes within the send timeout",
                ))
            }
            Poll::Pending => Ok(()),
        }
    }

    /// Bytes of a request were read.
    fn note_read(&mut self, bytes: &[u8]) {
        let seen = match self.phase {
            Phase::Busy => return,
            Phase::Head { seen, .. } => seen,
            Phase::Idle { .. } => HEAD_START,
        };
        let deadline = match self.phase {
            Phase::Head { deadline, .. } => deadline,
            _ => {
                self.head_bytes = 0;
                self.head_lines = 0;
                Instant::now() + self.timeouts.header
            }
        };
        self.head_bytes += bytes.len();
        self.head_lines += bytes.iter().filter(|&&b| b == b'\n').count();
        self.phase = match scan_for_head_end(seen, bytes) {
            HEAD_END => Phase::Busy,
            seen => Phase::Head { deadline, seen },
        };
    }

    /// Bytes of an answer were written: the connection is idle from now
    /// (hyper waits for the next request on the socket's readiness, without
    /// reading again, so the idle deadline must start here). An interim
    /// `1xx` answer (such as `100 Continue`) leaves the request unanswered;
    /// a long answer still streaming pushes the idle deadline on.
    fn note_write(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || bytes.starts_with(b"HTTP/1.1 1") {
            return;
        }
        self.phase = Phase::Idle {
            deadline: Instant::now() + self.timeouts.idle,
        };
    }

    /// Ready once the current phase's deadline has passed; registers the
    /// task to be woken then. The timer is reset only to move it earlier:
    /// one armed for an earlier deadline fires early and is re-armed, which
    /// spares a timer reset on every request of a busy connection.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = match self.phase {
            Phase::Head { deadline, .. } | Phase::Idle { deadline } => deadline,
            Phase::Busy => return Poll::Pending,
        };
        loop {
            if self.timer.deadline() > deadline {
                self.timer.as_mut().reset(deadline);
            }
            ready!(self.timer.as_mut().poll(cx));
            if self.timer.deadline() == deadline {
                return Poll::Ready(());
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

/// States of [`scan_for_head_end`]: no byte of the request line yet (blank
/// lines before it are skipped, as hyper's parser does); inside a line; just
/// after a line feed; after a line feed and a carriage return; the head has
/// ended.
const HEAD_START: u8 = 0;
const IN_LINE: u8 = 1;
const AFTER_LF: u8 = 2;
const AFTER_LF_CR: u8 = 3;
const HEAD_END: u8 = 4;

/// Advances the search for the blank line that ends a request head over
/// `bytes`, from state `seen`. Lines may end in CRLF or a bare LF, as
/// hyper's parser allows.
fn scan_for_head_end(mut seen: u8, bytes: &[u8]) -> u8 {
    for &b in bytes {
        seen = match (seen, b) {
            (HEAD_START, b'\r' | b'\n') => HEAD_START,
            (AFTER_LF | AFTER_LF_CR, b'\n') => return HEAD_END,
            (_, b'\n') => AFTER_LF,
            (AFTER_LF, b'\r') => AFTER_LF_CR,
            _ => IN_LINE,
        };
    }
    seen
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadlines<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                self.note_read(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                ready!(self.poll_deadline(cx));
                Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> Deadlines<T> {
    /// Whether a write starting with `first` is hyper's `431` for a head
    /// over its limits, to be replaced (or its rest, after replacing).
    fn replacing(&mut self, first: &[u8]) -> bool {
        if self.replace == Replace::Off && self.head_too_large() && first.starts_with(HYPER_431) {
            self.replace = Replace::Sending(0);
        }
        self.replace != Replace::Off
    }

    /// Sends the problem `431` in place of hyper's write of `len` bytes,
    /// which is reported as written once the problem is all sent.
    fn poll_replace(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        while let Replace::Sending(sent) = self.replace {
            let rest = &PROBLEM_431[sent..];
            if rest.is_empty() {
                self.replace = Replace::Sent;
                break;
            }
            let Poll::Ready(written) = Pin::new(&mut self.inner).poll_write(cx, rest) else {
                self.note_send(false, cx)?;
                return Poll::Pending;
            };
            let written = written?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.note_send(true, cx)?;
            self.replace = Replace::Sending(sent + written);
        }
        Poll::Ready(Ok(len))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadlines<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.replacing(buf) {
            return self.poll_replace(cx, buf.len());
        }
        let Poll::Ready(written) = Pin::new(&mut self.inner).poll_write(cx, buf) else {
            self.note_send(false, cx)?;
            return Poll::Pending;
        };
        let written = written?;
        self.note_send(true, cx)?;
        self.note_write(&buf[..written]);
        let _ = self.poll_deadline(cx);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
        if self.replacing(first) {
            let len = bufs.iter().map(|b| b.len()).sum();
            return self.poll_replace(cx, len);
        }
        let Poll::Ready(written) = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) else {
            self.note_send(false, cx)?;
            return Poll::Pending;
        };
        let written = written?;
        self.note_send(true, cx)?;
        if written > 0 {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
            self.note_write(&first[..written.min(first.len())]);
        }
        let _ = self.poll_deadline(cx);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Poll::Ready(flushed) = Pin::new(&mut self.inner).poll_flush(cx) else {
            self.note_send(false, cx)?;
            return Poll::Pending;
        };
        Poll::Ready(flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::scan_for_head_end;

    /// What the peer receives when, after the server read `head`, hyper
    /// writes `answer`.
    async fn sent_after(head: &[u8], answer: &[u8]) -> Vec<u8> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let hour = std::time::Duration::from_secs(3600);
        let timeouts = super::Timeouts {
            header: hour,
            idle: hour,
            send: hour,
        };
        let mut server = super::Deadlines::new(server, timeouts);
        client.write_all(head).await.unwrap();
        let mut read = vec![0; head.len()];
        server.read_exact(&mut read).await.unwrap();
        server.write_all(answer).await.unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        let mut sent = Vec::new();
        client.read_to_end(&mut sent).await.unwrap();
        sent
    }

    #[tokio::test]
    async fn only_hypers_431_after_a_large_head_is_replaced() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        // After a small head, a 431 is a handler's answer: left alone.
        let small = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(sent_after(small, bare).await, bare);
        // After a head of hyper's limit in bytes or in lines: replaced.
        let big = format!("GET / HTTP/1.1\r\nX: {}", "x".repeat(32 * 1024));
        let many = format!("GET / HTTP/1.1\r\n{}", "X: v\r\n".repeat(101));
        for head in [big, many] {
            let sent = sent_after(head.as_bytes(), bare).await;
            assert_eq!(sent, *super::PROBLEM_431);
        }
        let text = String::from_utf8(super::PROBLEM_431.clone()).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 431);
    }

    #[test]
    fn finds_the_end_of_a_head_across_reads() {
        use super::{AFTER_LF, HEAD_END, HEAD_START, IN_LINE};
        let scan = |bytes: &[u8]| scan_for_head_end(HEAD_START, bytes);
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), HEAD_END);
        assert_eq!(scan(b"GET / HTTP/1.1\nHost: x\n\n"), HEAD_END);
        // Split anywhere, the end is still found.
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..head.len() {
            let seen = scan(&head[..cut]);
            assert_ne!(seen, HEAD_END, "cut at {cut}");
            assert_eq!(
                scan_for_head_end(seen, &head[cut..]),
                HEAD_END,
                "cut at {cut}"
            );
        }
        // Line ends with other bytes between them are no blank line.
        assert_eq!(scan(b"a\r\nb\r\nc"), IN_LINE);
        assert_eq!(scan(b"a\r\nb\r\n"), AFTER_LF);
        assert_eq!(scan_for_head_end(AFTER_LF, b"x\r\n"), AFTER_LF);
        // Blank lines before the request line do not end it (or a client
        // could send them first and then the head at leisure).
        assert_eq!(scan(b"\r\n\r\n\n"), HEAD_START);
        assert_eq!(scan(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), HEAD_END);
        assert_eq!(scan(b""), HEAD_START);
    }
}
