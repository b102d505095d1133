//! `/docs` over real HTTP: the page, its CSP, and every asset it loads in
//! each encoding, with ETags and cache headers. The page itself is tried in a
//! real browser by `scripts/test-browser`.

use crate::support::{TestApp, assert_problem, spawn};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Client, Url};

/// A client that neither asks for nor decodes compression by itself.
fn raw() -> Client {
    Client::builder()
        .no_gzip()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get(url: &str, headers: &[(&'static str, &str)]) -> reqwest::Response {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    raw().get(url).headers(map).send().await.unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("{} has no {name} header", r.url()))
        .to_str()
        .unwrap()
}

/// The values of the `src` and `href` attributes in `html`.
fn references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for (i, _) in html.match_indices(attr) {
            let rest = &html[i + attr.len()..];
            found.push(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    found
}

async fn page_html(app: &TestApp) -> String {
    get(&app.url("/docs"), &[]).await.text().await.unwrap()
}

#[tokio::test]
async fn the_page_is_html_under_a_strict_content_security_policy() {
    let app = spawn().await;
    let r = get(&app.url("/docs"), &[("accept", "text/html")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    let csp = header(&r, "content-security-policy").to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe-"), "no unsafe-inline/eval: {csp}");
    assert_eq!(header(&r, "cache-control"), "no-cache");
    assert!(header(&r, "etag").starts_with('"'), "a strong ETag");

    // No inline script or style, which the policy would block anyway.
    let html = r.text().await.unwrap();
    assert!(html.contains("<div id=\"swagger-ui\">"), "{html}");
    let scripts: Vec<_> = html.match_indices("<script").collect();
    assert_eq!(scripts.len(), 2, "the viewer and its init: {html}");
    for (i, _) in scripts {
        assert!(html[i..].starts_with("<script src=\""), "{}", &html[i..]);
        assert!(html[i..].contains("></script>"));
    }
    assert!(
        !html.contains("<style") && !html.contains("style="),
        "{html}"
    );
    // Nothing from another host.
    for url in references(&html) {
        assert!(!url.contains("//"), "{url} is served by skiff");
    }
}

#[tokio::test]
async fn every_asset_the_page_loads_is_served_compressed_plain_and_revalidatable() {
    let app = spawn().await;
    let base = Url::parse(&app.url("/docs")).unwrap();
    let html = page_html(&app).await;
    let assets: Vec<Url> = references(&html)
        .iter()
        .filter(|r| !r.starts_with("data:"))
        .map(|r| base.join(r).unwrap())
        .filter(|u| u.path().starts_with("/docs/assets/"))
        .collect();
    assert_eq!(
        assets.len(),
        3,
        "style sheet, viewer and init script: {html}"
    );

    for url in assets {
        let url = url.as_str();
        let expected_type = if url.contains(".css") {
            "text/css; charset=utf-8"
        } else {
            "text/javascript; charset=utf-8"
        };

        // Plain, for a client that accepts no compression.
        let plain = get(url, &[]).await;
        assert_eq!(plain.status(), 200, "{url}");
        assert_eq!(header(&plain, "content-type"), expected_type, "{url}");
        assert!(plain.headers().get("content-encoding").is_none(), "{url}");
        assert_eq!(header(&plain, "vary"), "accept-encoding");
        assert_eq!(header(&plain, "x-content-type-options"), "nosniff");
        let plain_tag = header(&plain, "etag").to_owned();
        let cache = header(&plain, "cache-control").to_owned();
        if url.contains("?v=") {
            assert_eq!(cache, "public, max-age=31536000, immutable", "{url}");
        } else {
            assert_eq!(cache, "no-cache", "{url}");
        }
        let plain = plain.bytes().await.unwrap();
        assert!(plain.len() > 100, "{url}");

        // gzip: the embedded copy, compressed once (the CompressionLayer
        // leaves it alone), decoding to the plain bytes.
        let gz = get(url, &[("accept-encoding", "gzip")]).await;
        assert_eq!(gz.status(), 200);
        assert_eq!(gz.headers().get_all("content-encoding").iter().count(), 1);
        assert_eq!(header(&gz, "content-encoding"), "gzip", "{url}");
        assert_eq!(gz.headers().get_all("vary").iter().count(), 1, "{url}");
        assert_eq!(header(&gz, "content-type"), expected_type);
        let gz_tag = header(&gz, "etag").to_owned();
        let gz_bytes = gz.bytes().await.unwrap();
        assert_eq!(&gz_bytes[..2], &[0x1f, 0x8b], "{url} is a gzip stream");
        assert!(gz_bytes.len() < plain.len(), "{url}");
        // (This client asks for gzip and decodes it.)
        let decoded = app.client.get(url).send().await.unwrap();
        assert!(
            decoded.bytes().await.unwrap() == plain,
            "{url} decodes to the plain bytes"
        );

        // What a browser asks for (brotli first) gets the gzip copy.
        let browser = get(url, &[("accept-encoding", "gzip, deflate, br, zstd")]).await;
        assert_eq!(header(&browser, "content-encoding"), "gzip", "{url}");
        assert_eq!(header(&browser, "etag"), gz_tag, "{url}");
        assert!(browser.bytes().await.unwrap() == gz_bytes, "{url}");

        // One strong ETag per representation, each revalidating to a 304.
        assert!(plain_tag != gz_tag);
        for (encoding, tag) in [("", &plain_tag), ("gzip", &gz_tag)] {
            assert!(tag.starts_with('"') && tag.ends_with('"'), "strong: {tag}");
            let r = get(
                url,
                &[("accept-encoding", encoding), ("if-none-match", tag)],
            )
            .await;
            assert_eq!(r.status(), 304, "{url} {encoding}");
            assert_eq!(header(&r, "etag"), tag);
            assert_eq!(header(&r, "cache-control"), cache);
            assert!(r.bytes().await.unwrap().is_empty());
        }
        // Another representation's tag is not a match.
        let r = get(
            url,
            &[("accept-encoding", "gzip"), ("if-none-match", &plain_tag)],
        )
        .await;
        assert_eq!(r.status(), 200, "{url}");
    }
}

#[tokio::test]
async fn the_page_itself_revalidates_by_etag() {
    let app = spawn().await;
    let r = get(&app.url("/docs"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(header(&r, "content-encoding"), "gzip");
    let tag = header(&r, "etag").to_owned();
    assert_eq!(&r.bytes().await.unwrap()[..2], &[0x1f, 0x8b]);
    let r = get(
        &app.url("/docs"),
        &[("accept-encoding", "gzip"), ("if-none-match", &tag)],
    )
    .await;
    assert_eq!(r.status(), 304);
    assert!(r.headers().get("content-security-policy").is_some());
    let r = get(
        &app.url("/docs"),
        &[("accept-encoding", "gzip"), ("if-none-match", "\"stale\"")],
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn vendored_files_are_immutable_only_under_their_current_version() {
    let app = spawn().await;
    for query in ["", "?v=0.0.1", "?v="] {
        let r = get(
            &app.url(&format!("/docs/assets/swagger-ui.css{query}")),
            &[],
        )
        .await;
        assert_eq!(r.status(), 200, "{query}");
        assert_eq!(header(&r, "cache-control"), "no-cache", "{query}");
    }
}

#[tokio::test]
async fn the_viewers_licence_is_served_beside_it() {
    let app = spawn().await;
    let r = get(&app.url("/docs/assets/LICENSE"), &[]).await;
    assert_eq!(header(&r, "content-type"), "text/plain; charset=utf-8");
    assert!(r.text().await.unwrap().contains("Apache License"));
    let r = get(
        &app.url("/docs/assets/swagger-ui-bundle.js.LICENSE.txt"),
        &[],
    )
    .await;
    assert!(r.text().await.unwrap().contains("MIT"));
}

#[tokio::test]
async fn unknown_assets_are_404_problems() {
    let app = spawn().await;
    for path in [
        "/docs/assets/nope.js",
        "/docs/assets/index.html",
        "/docs/assets/..%2FCargo.toml",
        "/docs/assets/swagger-ui.css/more",
    ] {
        assert_problem(app.get(path).await, 404).await;
    }
}

#[tokio::test]
async fn a_trailing_slash_redirects_to_the_page() {
    let app = spawn().await;
    let r = get(&app.url("/docs/"), &[]).await;
    assert_eq!(r.status(), 308);
    assert_eq!(header(&r, "location"), "/docs");
}

#[tokio::test]
async fn the_page_is_in_the_openapi_document() {
    let app = spawn().await;
    let doc: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    let op = &doc["paths"]["/docs"]["get"];
    assert!(
        op["responses"]["200"]["content"]["text/html"].is_object(),
        "{op}"
    );
}
