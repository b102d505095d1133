//! The public-IP upstream behind `/ip`: an HTTP(S) client with TLS roots
//! compiled in (plus any in `SSL_CERT_FILE`), a cache of good answers, and
//! one shared upstream call for concurrent misses.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::config::Config;
use crate::telemetry::{IP_CACHE_HITS, IP_UPSTREAM_CALLS};

/// The upstream answers a few dozen bytes; anything much longer is garbage.
const MAX_BODY: usize = 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("the IP upstream could not be reached: {0}")]
    Unreachable(String),
    #[error("the IP upstream answered HTTP {0}")]
    Status(u16),
    #[error("the IP upstream answered something that is not an IP address")]
    Garbage,
    #[error("the IP upstream did not answer within {0:?}")]
    Timeout(Duration),
}

type Pending = Shared<BoxFuture<'static, Result<IpAddr, UpstreamError>>>;

enum Cache {
    Empty,
    Fresh { ip: IpAddr, until: Instant },
    InFlight(Pending),
}

struct Inner {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
    ttl: Duration,
    cache: Mutex<Cache>,
}

#[derive(Clone)]
pub struct IpService(Arc<Inner>);

impl IpService {
    pub fn new(config: &Config) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("skiff/", env!("CARGO_PKG_VERSION")))
            .timeout(config.ip_timeout)
            .connect_timeout(config.ip_timeout)
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(path) = &config.ssl_cert_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read SSL_CERT_FILE {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                format!(
                    "SSL_CERT_FILE {} holds no PEM certificates: {e}",
                    path.display()
                )
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self(Arc::new(Inner {
            client,
            url: config.ip_upstream.clone(),
            timeout: config.ip_timeout,
            ttl: config.ip_cache_ttl,
            cache: Mutex::new(Cache::Empty),
        })))
    }

    /// The public address: from the cache while fresh, else from the
    /// upstream. Concurrent misses wait for the same single upstream call.
    pub async fn public_ip(&self) -> Result<IpAddr, UpstreamError> {
        let pending = {
            let mut cache = self
                .0
                .cache
                .lock()
                .expect("the cache lock is never poisoned");
            match &*cache {
                Cache::Fresh { ip, until } if Instant::now() < *until => {
                    metrics::counter!(IP_CACHE_HITS).increment(1);
                    return Ok(*ip);
                }
                Cache::InFlight(pending) => pending.clone(),
                _ => {
                    // The call runs in its own task, so it completes and
                    // fills the cache even if every waiting client goes away.
                    let this = self.clone();
                    let task = tokio::spawn(async move {
                        let result = this.fetch().await;
                        this.settle(&result);
                        result
                    });
                    let pending = async move {
                        task.await
                            .unwrap_or_else(|e| Err(UpstreamError::Unreachable(e.to_string())))
                    }
                    .boxed()
                    .shared();
                    *cache = Cache::InFlight(pending.clone());
                    pending
                }
            }
        };
        pending.await
    }

    /// Caches a good answer; forgets a failure so the next request retries.
    fn settle(&self, result: &Result<IpAddr, UpstreamError>) {
        let mut cache = self
            .0
            .cache
            .lock()
            .expect("the cache lock is never poisoned");
        *cache = match result {
            Ok(ip) if !self.0.ttl.is_zero() => Cache::Fresh {
                ip: *ip,
                until: Instant::now() + self.0.ttl,
            },
            _ => Cache::Empty,
        };
    }

    async fn fetch(&self) -> Result<IpAddr, UpstreamError> {
        let result = self.call().await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(UpstreamError::Timeout(_)) => "timeout",
            Err(_) => "error",
        };
        metrics::counter!(IP_UPSTREAM_CALLS, "outcome" => outcome).increment(1);
        if let Err(e) = &result {
            tracing::warn!(error = %e, upstream = %self.0.url, "IP upstream failed");
        }
        result
    }

    async fn call(&self) -> Result<IpAddr, UpstreamError> {
        let timeout = self.0.timeout;
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                UpstreamError::Timeout(timeout)
            } else {
                UpstreamError::Unreachable(error_chain(&e))
            }
        };
        let mut response = self
            .0
            .client
            .get(&self.0.url)
            .send()
            .await
            .map_err(classify)?;
        if !response.status().is_success() {
            return Err(UpstreamError::Status(response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                return Err(UpstreamError::Garbage);
            }
        }
        std::str::from_utf8(&body)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or(UpstreamError::Garbage)
    }
}

/// The error with its causes, e.g. "error sending request: connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
