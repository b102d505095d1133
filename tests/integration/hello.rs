//! `GET /` and `GET /hello`.

use crate::support::{header, spawn};

#[tokio::test]
async fn root_says_hello_world_to_curl_and_a_page_to_browsers() {
    let app = spawn().await;
    let r = app.get("/").await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type").starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), "Hello World");

    let r = app
        .client
        .get(app.url("/"))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert!(header(&r, "content-type").starts_with("text/html"));
    let page = r.text().await.unwrap();
    for link in ["/docs", "/openapi.json", "/metrics"] {
        assert!(
            page.contains(&format!("href=\"{link}\"")),
            "landing page links {link}"
        );
    }
}

#[tokio::test]
async fn hello_says_hello() {
    let app = spawn().await;
    let r = app.get("/hello").await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type").starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), "hello");
}
