//! `GET /metrics`: request counters by route template, latency, build
//! info; the process metrics and zeroed counters of a fresh binary.

use crate::support::process::{Server, skiff_command as skiff};
use crate::support::{fresh_connections, header, metric, spawn};

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let app = spawn().await;
    app.get("/hello").await;
    app.get("/hello").await;
    app.get("/time?tz=Nope").await;
    app.get("/missing").await;
    let r = app.get("/metrics").await;
    assert!(header(&r, "content-type").starts_with("text/plain"));
    let text = r.text().await.unwrap();
    let sample = |labels: &str| metric(&text, &format!("http_requests_total{{{labels}}}"));
    assert_eq!(
        sample(r#"method="GET",route="/hello",status="200""#),
        Some(2.0)
    );
    assert_eq!(
        sample(r#"method="GET",route="/time",status="400""#),
        Some(1.0)
    );
    assert_eq!(
        sample(r#"method="GET",route="unmatched",status="404""#),
        Some(1.0)
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket{"),
        "latency histogram"
    );
    assert!(text.contains("http_requests_in_flight"));
    assert!(text.contains("skiff_build_info{version=\""));
}

#[tokio::test]
async fn a_fresh_server_exposes_process_metrics_and_zeroed_counters() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = skiff(dir.path());
    cmd.env("SKIFF_LOG_FORMAT", "json");
    let server = Server::start(cmd);
    let text = fresh_connections()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        let value = metric(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
        assert!(value > 0.0, "{series} = {value}");
    }
    assert!(
        metric(&text, "process_cpu_seconds_total").is_some(),
        "{text}"
    );
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter"),
        "{text}"
    );
    assert_eq!(
        metric(&text, "skiff_requests_shed_total"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(metric(&text, "skiff_connections_refused_total"), Some(0.0));
    #[cfg(feature = "lua")]
    for kind in [
        "busy",
        "time",
        "memory",
        "script",
        "no_response",
        "internal",
    ] {
        let series = format!("skiff_lua_errors_total{{kind=\"{kind}\"}}");
        assert_eq!(metric(&text, &series), Some(0.0), "{series} in\n{text}");
    }
    #[cfg(feature = "users")]
    for reason in ["missing", "malformed", "wrong"] {
        let series = format!("skiff_auth_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &series), Some(0.0), "{series} in\n{text}");
    }
}
