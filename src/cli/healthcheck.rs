//! `skiff healthcheck`: a plain HTTP/1.1 GET with a deadline, so the image
//! needs neither curl nor a shell for its `HEALTHCHECK`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Config, Flags, Offer};

/// The setting `healthcheck` uses: the port of its default URL.
#[derive(Debug)]
pub struct Port;

impl Offer for Port {
    const SETTINGS: &'static [&'static str] = &["port"];
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// URL to check [default: http://127.0.0.1:$PORT/healthz]
    #[arg(long)]
    pub url: Option<String>,
    /// How long to wait for the answer.
    #[arg(long, default_value = "3s", value_parser = duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub flags: Flags<Port>,
}

fn duration(text: &str) -> Result<Duration, &'static str> {
    crate::config::parse::duration(text)
}

pub async fn run(config: &Config, args: &HealthcheckArgs) -> ExitCode {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => format!("http://127.0.0.1:{}/healthz", config.port),
    };
    match check(&url, args.timeout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `GET url` answered `200` within `timeout`? The error says why not.
pub async fn check(url: &str, timeout: Duration) -> Result<(), String> {
    let (authority, path) = split_http_url(url)?;
    tokio::time::timeout(timeout, get_status(authority, path))
        .await
        .map_err(|_| format!("no answer from {url} within {timeout:?}"))?
        .and_then(|status| {
            if status == 200 {
                Ok(())
            } else {
                Err(format!("{url} answered HTTP {status}"))
            }
        })
}

/// `http://host:port/path` into (`host:port`, `/path`). Only plain HTTP:
/// the check runs against the server's own port.
fn split_http_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return Err(format!("{url:?} has no host"));
    }
    Ok((authority, path))
}

async fn get_status(authority: &str, path: &str) -> Result<u16, String> {
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut stream = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: skiff-healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&head).ok_or_else(|| "the answer is not HTTP".to_string())
}

fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_http_url("http://127.0.0.1:8080/healthz"),
            Ok(("127.0.0.1:8080", "/healthz"))
        );
        assert_eq!(split_http_url("http://localhost"), Ok(("localhost", "/")));
        assert!(split_http_url("https://x/").is_err());
        assert!(split_http_url("http:///x").is_err());
    }

    #[test]
    fn reads_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
    }
}
