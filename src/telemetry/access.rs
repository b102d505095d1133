//! The access log line, formatted here rather than through tracing: one
//! line per request is most of a busy server's logging, and the generic
//! path formats every field through a visitor and `Debug` and the
//! timestamp from scratch, per line. The line is byte for byte what
//! tracing-subscriber's text and JSON formats write for the same event
//! (a test below holds the two side by side), so log readers see no
//! difference. Whether the line is written at all is still the log
//! filter's decision (`SKIFF_LOG`): the middleware asks tracing first.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// The target the log filter knows the access log by.
pub const TARGET: &str = "skiff::access";

/// The format the access log writes, set once with the subscriber.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

pub(super) fn set_format(format: LogFormat) {
    let _ = FORMAT.set(format);
}

/// The fields of one access log line, in the order they are written.
pub struct AccessLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub latency_us: u64,
    pub bytes: u64,
    pub client_addr: Option<IpAddr>,
    pub user_agent: Option<&'a str>,
    pub request_id: &'a str,
    pub trace_id: Option<&'a str>,
}

impl AccessLine<'_> {
    /// Appends the line to the batched stdout writer.
    pub fn write(&self) {
        thread_local! {
            static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
        }
        let format = FORMAT.get().copied().unwrap_or(LogFormat::Text);
        LINE.with_borrow_mut(|line| {
            line.clear();
            self.format(format, now(), line);
            super::append_log(line);
            // A huge user agent once must not keep a huge buffer per thread.
            line.shrink_to(4096);
        });
    }

    fn format(&self, format: LogFormat, at: Instant, out: &mut Vec<u8>) {
        match format {
            LogFormat::Text => self.text(at, out),
            LogFormat::Json => self.json(at, out),
        }
    }

    /// `TIME  INFO skiff::access: request method="GET" path="/" …`, strings
    /// quoted and escaped as `Debug` does, absent fields left out.
    fn text(&self, at: Instant, out: &mut Vec<u8>) {
        timestamp(at, out);
        out.extend_from_slice(b"  INFO ");
        out.extend_from_slice(TARGET.as_bytes());
        out.extend_from_slice(b": request method=");
        debug_str(self.method, out);
        out.extend_from_slice(b" path=");
        debug_str(self.path, out);
        out.extend_from_slice(b" route=");
        debug_str(self.route, out);
        number(b" status=", self.status.into(), out);
        number(b" latency_us=", self.latency_us, out);
        number(b" bytes=", self.bytes, out);
        if let Some(addr) = self.client_addr {
            let _ = write!(out, " client_addr={addr}");
        }
        if let Some(agent) = self.user_agent {
            out.extend_from_slice(b" user_agent=");
            debug_str(agent, out);
        }
        out.extend_from_slice(b" request_id=");
        debug_str(self.request_id, out);
        if let Some(trace) = self.trace_id {
            out.extend_from_slice(b" trace_id=");
            debug_str(trace, out);
        }
        out.push(b'\n');
    }

    /// One JSON object: timestamp, level, message, the fields, target.
    fn json(&self, at: Instant, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(at, out);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
        json_str(self.method, out);
        out.extend_from_slice(b",\"path\":");
        json_str(self.path, out);
        out.extend_from_slice(b",\"route\":");
        json_str(self.route, out);
        number(b",\"status\":", self.status.into(), out);
        number(b",\"latency_us\":", self.latency_us, out);
        number(b",\"bytes\":", self.bytes, out);
        if let Some(addr) = self.client_addr {
            let _ = write!(out, ",\"client_addr\":\"{addr}\"");
        }
        if let Some(agent) = self.user_agent {
            out.extend_from_slice(b",\"user_agent\":");
            json_str(agent, out);
        }
        out.extend_from_slice(b",\"request_id\":");
        json_str(self.request_id, out);
        if let Some(trace) = self.trace_id {
            out.extend_from_slice(b",\"trace_id\":");
            json_str(trace, out);
        }
        out.extend_from_slice(b",\"target\":\"");
        out.extend_from_slice(TARGET.as_bytes());
        out.extend_from_slice(b"\"}\n");
    }
}

/// Seconds and microseconds since the Unix epoch.
#[derive(Clone, Copy)]
struct Instant {
    secs: i64,
    micros: u32,
}

fn now() -> Instant {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Instant {
        secs: since.as_secs() as i64,
        micros: since.subsec_micros(),
    }
}

/// RFC 3339 in UTC with microseconds, as tracing-subscriber writes it
/// (`2026-12-02T06:08:40.134933Z`). The date and time of day change once
/// a second: each thread keeps the last one it formatted.
fn timestamp(at: Instant, out: &mut Vec<u8>) {
    thread_local! {
        static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    SECOND.with_borrow_mut(|(secs, text)| {
        if *secs != at.secs {
            text.clear();
            match jiff::Timestamp::from_second(at.secs) {
                Ok(t) => {
                    let _ = write!(text, "{}", t.strftime("%Y-%m-%dT%H:%M:%S"));
                }
                Err(_) => text.push_str("0000-00-00T00:00:00"),
            }
            *secs = at.secs;
        }
        out.extend_from_slice(text.as_bytes());
    });
    let _ = write!(out, ".{:06}Z", at.micros);
}

fn number(name: &[u8], value: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(name);
    let _ = write!(out, "{value}");
}

/// Printable ASCII other than `"` and `\` is written as it is by both
/// `Debug` and JSON: the common case, copied without a formatter.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

fn debug_str(s: &str, out: &mut Vec<u8>) {
    if plain(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

fn json_str(s: &str, out: &mut Vec<u8>) {
    if plain(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing to a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What tracing-subscriber's fmt layer writes for the same event, the
    /// way `init_logging` sets it up.
    fn through_tracing(format: LogFormat, line: &AccessLine) -> String {
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let written = written.clone();
            move || Capture(written.clone())
        };
        let emit = || {
            tracing::info!(
                target: "skiff::access",
                method = line.method,
                path = line.path,
                route = line.route,
                status = line.status,
                latency_us = line.latency_us,
                bytes = line.bytes,
                client_addr = line.client_addr.as_ref().map(tracing::field::display),
                user_agent = line.user_agent,
                request_id = line.request_id,
                trace_id = line.trace_id,
                "request"
            )
        };
        let builder = tracing_subscriber::fmt().with_writer(sink).with_ansi(false);
        match format {
            LogFormat::Text => tracing::subscriber::with_default(builder.finish(), emit),
            LogFormat::Json => tracing::subscriber::with_default(
                builder
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .finish(),
                emit,
            ),
        }
        String::from_utf8(written.lock().unwrap().clone()).unwrap()
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn ours(format: LogFormat, line: &AccessLine) -> String {
        let mut out = Vec::new();
        line.format(format, now(), &mut out);
        String::from_utf8(out).unwrap()
    }

    /// The line without its timestamp (27 characters, at the start of a
    /// text line, after `{"timestamp":"` in JSON).
    fn untimed(format: LogFormat, line: &str) -> String {
        match format {
            LogFormat::Text => line[27..].to_owned(),
            LogFormat::Json => format!("{}{}", &line[..14], &line[14 + 27..]),
        }
    }

    #[test]
    fn lines_are_what_tracing_writes_for_the_same_fields() {
        let hostile = "a \"quoted\" \\ back\tslash\n\u{1b}[31m é 😀 \u{7f}";
        let lines = [
            AccessLine {
                method: "GET",
                path: "/hello",
                route: "/hello",
                status: 200,
                latency_us: 72,
                bytes: 5,
                client_addr: Some("127.0.0.1".parse().unwrap()),
                user_agent: Some("curl/7.88.1"),
                request_id: "459dec36-f005-4d96-8c20-0484fce03367",
                trace_id: Some("0af7651916cd43dd8448eb211c80319c"),
            },
            AccessLine {
                method: "POST",
                path: hostile,
                route: "unmatched",
                status: 404,
                latency_us: 0,
                bytes: u64::MAX,
                client_addr: Some("::1".parse().unwrap()),
                user_agent: Some(hostile),
                request_id: "",
                trace_id: None,
            },
            AccessLine {
                method: "DELETE",
                path: "/users/{id}",
                route: "/users/{id}",
                status: 503,
                latency_us: u64::MAX,
                bytes: 0,
                client_addr: None,
                user_agent: None,
                request_id: hostile,
                trace_id: None,
            },
        ];
        for format in [LogFormat::Text, LogFormat::Json] {
            for line in &lines {
                let theirs = through_tracing(format, line);
                let mine = ours(format, line);
                assert_eq!(
                    untimed(format, &mine),
                    untimed(format, &theirs),
                    "{format:?}"
                );
                assert_eq!(mine.matches('\n').count(), 1, "one line: {mine}");
            }
        }
    }

    #[test]
    fn the_timestamp_is_rfc3339_utc_with_microseconds() {
        let at = |secs, micros| {
            let mut out = Vec::new();
            timestamp(Instant { secs, micros }, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 123_456), "2000-02-29T00:00:00.123456Z");
        // The per-thread cache must not keep the last second's text.
        assert_eq!(at(951_782_401, 999_999), "2000-02-29T00:00:01.999999Z");
        assert_eq!(at(4_102_444_799, 7), "2099-12-31T23:59:59.000007Z");
    }
}
