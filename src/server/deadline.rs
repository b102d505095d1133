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
//! hyper has a single `header_read_timeout` that starts as soon as it waits
//! for a head, idle or not, so it would close a keep-alive connection after
//! the (short) header timeout. This wrapper replaces it: it watches the bytes
//! read (for the end of a head) and written (an answer going out), and fails
//! a read with `TimedOut` once the current phase's deadline has passed,
//! which makes hyper close the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

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
        }
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
            _ => Instant::now() + self.timeouts.header,
        };
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

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadlines<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
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
