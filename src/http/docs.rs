//! `/docs`: the interactive API reference, Swagger UI rendering `/openapi.json`.
//!
//! Every file is embedded in the binary, gzip-compressed ahead of time by
//! `scripts/refresh-docs-assets` (`assets/docs/SOURCE.md` says where the
//! viewer comes from). A client that accepts gzip gets that copy; one that
//! does not gets the plain bytes, decoded from it the first time they are
//! needed, so the binary carries one copy. (Brotli copies were 20% smaller
//! on the wire but cost 383 KB of binary; the image's size won.)
//! Nothing on the page comes from elsewhere: it works offline, under a strict
//! Content-Security-Policy.

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{Error, Result};
use crate::http::headers::{if_none_match, weighted};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(page))
        // The page's URLs are relative to `/docs`; from `/docs/` they would miss.
        .route("/docs/", get(|| async { Redirect::permanent("/docs") }))
        .route("/docs/assets/{name}", get(asset))
}

/// What the page may load: scripts, styles and requests from this origin
/// only; no inline script or style, no plugins, frames, forms or `<base>`.
/// Swagger UI runs under it as is (`tests/browser` checks).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The Swagger UI release the vendored files come from. The page asks for
/// them as `…?v=<this>`, so such a URL always names the same bytes.
const VIEWER_VERSION: &str = include_str!("../../assets/docs/swagger-ui/VERSION").trim_ascii();

/// For a vendored file asked for by its current version.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// For everything else: cache, but revalidate (a cheap 304) before each use.
const REVALIDATE: &str = "no-cache";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    /// Comes from the viewer's npm package, so fixed by [`VIEWER_VERSION`].
    vendored: bool,
    gzip: &'static [u8],
    plain: OnceLock<Vec<u8>>,
    /// Hex SHA-256 of `gzip`, which names this content in ETags.
    digest: OnceLock<String>,
}

macro_rules! asset {
    ($name:literal, $content_type:expr, vendored: $vendored:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            vendored: $vendored,
            gzip: include_bytes!(concat!("../../assets/docs/dist/", $name, ".gz")),
            plain: OnceLock::new(),
            digest: OnceLock::new(),
        }
    };
}

static PAGE: Asset = asset!("index.html", HTML, vendored: false);

/// Everything under `/docs/assets/`: what the page loads, and the viewer's
/// licence texts (the bundle's header points at its `.LICENSE.txt`).
static ASSETS: [Asset; 6] = [
    asset!("docs.js", JS, vendored: false),
    asset!("swagger-ui-bundle.js", JS, vendored: true),
    asset!("swagger-ui.css", CSS, vendored: true),
    asset!("LICENSE", TEXT, vendored: true),
    asset!("NOTICE", TEXT, vendored: true),
    asset!("swagger-ui-bundle.js.LICENSE.txt", TEXT, vendored: true),
];

/// An interactive API reference rendering this document.
///
/// Swagger UI rendering `/openapi.json`, with every script and style served
/// by skiff itself (no CDN), so it works offline. "Try it out" sends real
/// requests to this server.
#[utoipa::path(get, path = "/docs", tag = "operations", operation_id = "docs",
    responses(
        (status = 200, description = "An HTML page that renders /openapi.json. Its scripts and styles are served under /docs/assets/, pre-compressed (gzip, when the client accepts it).",
            content_type = "text/html", body = String,
            headers(
                ("Content-Security-Policy" = String, description = "Only this origin's scripts, styles and requests; no inline script or style"),
                ("ETag" = String, description = "Strong; send it back in If-None-Match"),
            )),
        (status = 304, description = "Not modified: If-None-Match matched the current ETag"),
    ))]
pub async fn page(headers: HeaderMap) -> Result<Response> {
    let mut response = serve(&PAGE, &headers, REVALIDATE).await?;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(response)
}

#[derive(Deserialize)]
struct Version {
    v: Option<String>,
}

/// A script, style sheet or licence text of the page.
async fn asset(
    Path(name): Path<String>,
    Query(version): Query<Version>,
    headers: HeaderMap,
) -> Result<Response> {
    let asset = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| Error::NotFound(format!("no docs asset named {name:?}")))?;
    let cache_control = if asset.vendored && version.v.as_deref() == Some(VIEWER_VERSION) {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    serve(asset, &headers, cache_control).await
}

/// `asset` in the best encoding the client accepts, or a 304 when its
/// `If-None-Match` names what it would get.
async fn serve(
    asset: &'static Asset,
    request: &HeaderMap,
    cache_control: &'static str,
) -> Result<Response> {
    let encoding = Encoding::negotiate(request);
    let tag = format!("{}{}", asset.digest().await?, encoding.etag_suffix());
    let mut response = if if_none_match(request, &tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = match encoding {
            Encoding::Gzip => Body::from(asset.gzip),
            Encoding::Identity => Body::from(asset.plain().await?),
        };
        let mut response = Response::new(body);
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        // Also what keeps the CompressionLayer from compressing it again.
        if let Some(coding) = encoding.content_encoding() {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
        }
        response
    };
    let h = response.headers_mut();
    h.insert(
        header::ETAG,
        format!("\"{tag}\"")
            .parse()
            .expect("a hex digest is a valid header"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

impl Asset {
    /// The uncompressed bytes, for a client that accepts no compression.
    async fn plain(&'static self) -> Result<&'static [u8]> {
        let plain = once(&self.plain, || {
            gunzip(self.gzip)
                .expect("the embedded gzip copies are valid (scripts/refresh-docs-assets checks)")
        })
        .await?;
        Ok(plain)
    }

    /// The first 16 hex digits of SHA-256 over the gzip copy: the same for
    /// every replica running the same binary, and new whenever a file changes.
    async fn digest(&'static self) -> Result<&'static str> {
        let digest = once(&self.digest, || {
            Sha256::digest(self.gzip)[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .await?;
        Ok(digest)
    }
}

fn gunzip(compressed: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(compressed), &mut plain)?;
    Ok(plain)
}

/// `cell`'s value, computed off the async worker threads the first time:
/// decoding or hashing the 1.7 MB bundle takes a while in a debug build.
async fn once<T: Send + Sync>(
    cell: &'static OnceLock<T>,
    make: impl FnOnce() -> T + Send + 'static,
) -> Result<&'static T> {
    if let Some(value) = cell.get() {
        return Ok(value);
    }
    tokio::task::spawn_blocking(move || cell.get_or_init(make))
        .await
        .map_err(|e| Error::Internal(format!("preparing a docs asset failed: {e}")))
}

/// The content codings skiff has copies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Gzip,
    Identity,
}

impl Encoding {
    /// What `Accept-Encoding` allows (RFC 9110 §12.5.3): gzip unless its
    /// q-value is 0 or it is not named (`*` stands for codings not named),
    /// else identity.
    fn negotiate(request: &HeaderMap) -> Self {
        let (mut gzip, mut any) = (None, None);
        for item in weighted(request, &header::ACCEPT_ENCODING) {
            if item.value.eq_ignore_ascii_case("gzip") || item.value.eq_ignore_ascii_case("x-gzip")
            {
                gzip = Some(item.q);
            } else if item.value == "*" {
                any = Some(item.q);
            }
        }
        if gzip.or(any).unwrap_or(0.0) > 0.0 {
            Encoding::Gzip
        } else {
            Encoding::Identity
        }
    }

    fn content_encoding(self) -> Option<&'static str> {
        match self {
            Encoding::Gzip => Some("gzip"),
            Encoding::Identity => None,
        }
    }

    /// Each representation has its own strong ETag (RFC 9110 §8.8.3).
    fn etag_suffix(self) -> &'static str {
        match self {
            Encoding::Gzip => "-gzip",
            Encoding::Identity => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), value.parse().unwrap()))
            .collect()
    }

    fn negotiate(accept_encoding: &str) -> Encoding {
        Encoding::negotiate(&headers(&[(header::ACCEPT_ENCODING, accept_encoding)]))
    }

    #[test]
    fn negotiation_follows_the_clients_q_values() {
        assert_eq!(negotiate("gzip, deflate, br, zstd"), Encoding::Gzip);
        assert_eq!(negotiate("gzip"), Encoding::Gzip);
        assert_eq!(negotiate("br;q=0.5, gzip"), Encoding::Gzip);
        assert_eq!(negotiate("br;q=0, gzip;q=0.1"), Encoding::Gzip);
        assert_eq!(negotiate("GZIP;Q=0.3"), Encoding::Gzip);
        assert_eq!(negotiate("gzip;q=0, br"), Encoding::Identity);
        assert_eq!(negotiate("br"), Encoding::Identity);
        assert_eq!(negotiate("identity"), Encoding::Identity);
        assert_eq!(negotiate("deflate"), Encoding::Identity);
        assert_eq!(negotiate("*"), Encoding::Gzip);
        assert_eq!(negotiate("*;q=0, gzip"), Encoding::Gzip);
        assert_eq!(Encoding::negotiate(&HeaderMap::new()), Encoding::Identity);
    }

    /// skiff embeds only the compressed copies of its own page and script:
    /// they must be those of the sources in `assets/docs/`.
    #[test]
    fn the_embedded_page_and_script_are_the_current_sources() {
        let sources: [(&Asset, &[u8]); 2] = [
            (&PAGE, include_bytes!("../../assets/docs/index.html")),
            (&ASSETS[0], include_bytes!("../../assets/docs/docs.js")),
        ];
        for (asset, source) in sources {
            assert!(
                gunzip(asset.gzip).unwrap() == source,
                "assets/docs/dist/{}.gz is stale: run scripts/refresh-docs-assets",
                asset.name
            );
        }
    }

    #[test]
    fn the_page_asks_for_the_vendored_files_by_the_embedded_version() {
        let page = String::from_utf8(gunzip(PAGE.gzip).unwrap()).unwrap();
        for name in ["swagger-ui-bundle.js", "swagger-ui.css"] {
            let url = format!("docs/assets/{name}?v={VIEWER_VERSION}\"");
            assert!(page.contains(&url), "the page loads {url}");
        }
        assert!(!VIEWER_VERSION.is_empty());
    }
}
