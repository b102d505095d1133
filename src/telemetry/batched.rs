//! Log lines written off the request path, in batches: a request's thread
//! only appends its line to a buffer; one thread writes the buffer to
//! stdout [`INTERVAL`] after its first line, or at once when it holds
//! [`EAGER`] bytes. With nothing to write the thread sleeps until a line
//! comes (an idle server does not wake ten times a second).
//! A reader that stops reading (a full pipe) makes writers wait once the
//! buffer holds [`MAX`] bytes: memory stays bounded and no line is dropped.
//! [`BatchedWriter::flush`] writes out everything before the process exits.
//!
//! Why not tracing-appender's non-blocking writer: its worker is woken for
//! every line (a futex wake and a context switch per request when it is
//! idle), and it drops lines or blocks per line rather than by bytes.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the buffer (the contract: within a second).
pub const INTERVAL: Duration = Duration::from_millis(100);
/// A buffer this full is written at once.
const EAGER: usize = 64 * 1024;
/// A buffer this full makes writers wait for the writer thread.
const MAX: usize = 1024 * 1024;

struct Buffer {
    bytes: Vec<u8>,
    stopping: bool,
    /// The writer thread waits for a first line, with no deadline.
    asleep: bool,
    /// How many times the writer thread woke (for the tests).
    wakeups: u64,
}

struct Shared {
    buffer: Mutex<Buffer>,
    /// Wakes the writer thread (a full buffer, or stopping).
    full: Condvar,
    /// Wakes writers waiting for room.
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The [`MakeWriter`] for the log subscriber; cheap to clone.
#[derive(Clone)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl BatchedWriter {
    /// Starts the thread that writes batches to `sink`.
    pub fn new<W: Write + Send + 'static>(sink: W) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                bytes: Vec::with_capacity(EAGER),
                stopping: false,
                asleep: false,
                wakeups: 0,
            }),
            full: Condvar::new(),
            drained: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let shared = shared.clone();
                move || write_batches(&shared, sink)
            })?;
        Ok(BatchedWriter {
            shared,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Writes out every line appended so far and stops the writer thread;
    /// lines appended later are written at once, unbatched. Call before the
    /// process exits.
    pub fn flush(&self) {
        self.shared.lock().stopping = true;
        self.shared.full.notify_one();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// The writer thread: waits for a first line, then for a full buffer, the
/// interval or a stop, then writes everything buffered in one call.
fn write_batches<W: Write>(shared: &Shared, mut sink: W) {
    let mut out = Vec::with_capacity(EAGER);
    loop {
        let mut buffer = shared.lock();
        if buffer.bytes.is_empty() && !buffer.stopping {
            buffer.asleep = true;
            buffer = shared
                .full
                .wait_while(buffer, |b| b.asleep && !b.stopping)
                .unwrap_or_else(PoisonError::into_inner);
        }
        buffer.wakeups += 1;
        if buffer.bytes.len() < EAGER && !buffer.stopping {
            buffer = shared
                .full
                .wait_timeout(buffer, INTERVAL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        std::mem::swap(&mut out, &mut buffer.bytes);
        let stopping = buffer.stopping;
        drop(buffer);
        shared.drained.notify_all();
        if !out.is_empty() {
            // Nowhere to report a failed write: stdout is where reports go.
            let _ = sink.write_all(&out).and_then(|()| sink.flush());
            out.clear();
            // A burst can leave a large allocation behind; keep a modest one.
            out.shrink_to(EAGER);
        }
        if stopping {
            return;
        }
    }
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(&self.shared)
    }
}

/// Appends what the formatter writes (one whole line per event).
pub struct LineWriter<'a>(&'a Shared);

impl Write for LineWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let shared = self.0;
        let mut buffer = shared.lock();
        if buffer.stopping {
            // After the final flush: straight to stdout, in order.
            drop(buffer);
            return io::stdout().lock().write(data);
        }
        while buffer.bytes.len() >= MAX && !buffer.stopping {
            shared.full.notify_one();
            buffer = shared
                .drained
                .wait(buffer)
                .unwrap_or_else(PoisonError::into_inner);
        }
        buffer.bytes.extend_from_slice(data);
        if buffer.asleep || buffer.bytes.len() >= EAGER {
            // The first line starts the interval; a full buffer ends it.
            buffer.asleep = false;
            shared.full.notify_one();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A sink that records what reached it, and can be held shut.
    #[derive(Clone, Default)]
    struct Sink {
        written: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
        shut: Arc<AtomicBool>,
    }

    impl Write for Sink {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            while self.shut.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            self.written.lock().unwrap().extend_from_slice(data);
            *self.writes.lock().unwrap() += 1;
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(writer: &BatchedWriter, text: &str) {
        writer.make_writer().write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn every_line_from_every_thread_is_written_by_the_flush_in_batches() {
        let sink = Sink::default();
        let writer = BatchedWriter::new(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        line(&writer, &format!("t{t} line {i}\n"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        writer.flush();
        let written = String::from_utf8(sink.written.lock().unwrap().clone()).unwrap();
        assert_eq!(written.lines().count(), 20_000);
        for t in 0..4 {
            let mine: Vec<&str> = written
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let expected: Vec<String> = (0..5_000).map(|i| format!("t{t} line {i}")).collect();
            assert_eq!(mine, expected, "thread {t}'s lines, in order");
        }
        let writes = *sink.writes.lock().unwrap();
        assert!(writes < 20_000 / 10, "{writes} writes for 20,000 lines");
    }

    #[test]
    fn a_line_reaches_the_sink_without_a_flush() {
        let sink = Sink::default();
        let writer = BatchedWriter::new(sink.clone()).unwrap();
        line(&writer, "alone\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.written.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the line is written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*sink.written.lock().unwrap(), b"alone\n");
        writer.flush();
    }

    #[test]
    fn an_idle_writer_thread_sleeps_until_a_line_comes() {
        let sink = Sink::default();
        let writer = BatchedWriter::new(sink.clone()).unwrap();
        // Three intervals with nothing to write: no wake-up (it was one per
        // interval when the thread polled).
        std::thread::sleep(INTERVAL * 3);
        assert_eq!(writer.shared.lock().wakeups, 0, "asleep while idle");
        line(&writer, "one\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.written.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the line is written");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(INTERVAL * 3);
        assert_eq!(
            writer.shared.lock().wakeups,
            1,
            "one batch, then asleep again"
        );
        writer.flush();
        assert_eq!(&*sink.written.lock().unwrap(), b"one\n");
    }

    #[test]
    fn a_stalled_sink_bounds_the_buffer_and_loses_nothing() {
        let sink = Sink::default();
        sink.shut.store(true, Ordering::SeqCst);
        let writer = BatchedWriter::new(sink.clone()).unwrap();
        let filler = {
            let writer = writer.clone();
            std::thread::spawn(move || {
                let text = format!("{}\n", "x".repeat(1023));
                for _ in 0..4096 {
                    line(&writer, &text);
                }
            })
        };
        // The writers wait once the buffer is full, while the sink is shut.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while writer.shared.lock().bytes.len() < MAX {
            assert!(std::time::Instant::now() < deadline, "the buffer fills");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!filler.is_finished(), "the writer waits for room");
        assert!(writer.shared.lock().bytes.len() <= MAX + 1024);
        sink.shut.store(false, Ordering::SeqCst);
        filler.join().unwrap();
        writer.flush();
        assert_eq!(sink.written.lock().unwrap().len(), 4096 * 1024);
    }
}
