//! `skiff healthcheck`: `GET` over hyper's client connection with a
//! deadline, so the image needs neither curl nor a shell for its
//! `HEALTHCHECK`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{HOST, USER_AGENT};
use hyper::http::uri::Authority;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
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
    let uri: Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    // Only plain HTTP: the check runs against the server's own port.
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url:?} is not an http:// URL"));
    }
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| format!("{url:?} has no host"))?;
    let status = tokio::time::timeout(timeout, get_status(&uri, authority))
        .await
        .map_err(|_| format!("no answer from {url} within {timeout:?}"))??;
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("{url} answered HTTP {}", status.as_u16()))
    }
}

async fn get_status(uri: &Uri, authority: &Authority) -> Result<StatusCode, String> {
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("cannot talk HTTP to {authority}: {e}"))?;
    // Drives the connection; it ends with the answer (or the deadline).
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::get(path)
        .header(HOST, authority.as_str())
        .header(USER_AGENT, "skiff-healthcheck")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    Ok(response.status())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every connection with `answer`.
    async fn stub(answer: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://{addr}/healthz")
    }

    #[tokio::test]
    async fn only_a_200_in_time_is_healthy() {
        let second = Duration::from_secs(1);
        let ok = stub("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(check(&ok, second).await, Ok(()));
        let down = stub("HTTP/1.0 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        assert!(check(&down, second).await.unwrap_err().contains("503"));
        let ssh = stub("SSH-2.0-OpenSSH\r\n").await;
        assert!(check(&ssh, second).await.is_err());
        let silent = stub("").await;
        assert!(check(&silent, second).await.is_err());
    }

    #[tokio::test]
    async fn only_plain_http_urls_with_a_host() {
        let second = Duration::from_secs(1);
        assert!(
            check("https://x/", second)
                .await
                .unwrap_err()
                .contains("http://")
        );
        assert!(check("http:///x", second).await.is_err());
        assert!(check("not a url", second).await.is_err());
    }
}
