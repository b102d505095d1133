//! `/lua` and `/lua/{name}` against the real server: the sandbox's escape
//! matrix, the limits, isolation between requests, the pool under load,
//! and start-up with good, broken or missing scripts.

mod hostile;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{TestApp, assert_problem, spawn_with, test_config};
use reqwest::header::HeaderValue;
use skiff::{App, Config, ServeOptions};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scripts")
}

/// The app serving `tests/fixtures/scripts`.
async fn spawn_fixtures() -> TestApp {
    spawn_fixtures_with(|_| {}).await
}

async fn spawn_fixtures_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let (mut config, dir) = test_config();
    config.scripts_dir = fixtures();
    config.scripts_dir_explicit = true;
    tweak(&mut config);
    spawn_with(config, dir).await
}

/// The app serving exactly `scripts` (name, source).
async fn spawn_scripts(scripts: &[(&str, &str)]) -> TestApp {
    let (mut config, dir) = test_config();
    config.scripts_dir = write_scripts(dir.path(), scripts);
    config.scripts_dir_explicit = true;
    spawn_with(config, dir).await
}

fn write_scripts(dir: &Path, scripts: &[(&str, &str)]) -> PathBuf {
    let scripts_dir = dir.join("scripts");
    std::fs::create_dir_all(&scripts_dir).unwrap();
    for (name, source) in scripts {
        std::fs::write(scripts_dir.join(format!("{name}.lua")), source).unwrap();
    }
    scripts_dir
}

/// Runs `source` as a script and returns its answer, which must be a 200.
async fn eval(source: &str) -> String {
    let app = spawn_scripts(&[("probe", source)]).await;
    let response = app.get("/lua/probe").await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{source}: {body}");
    body
}

async fn text(response: reqwest::Response) -> String {
    response.text().await.expect("a text body")
}

async fn assert_hello_still_answers(app: &TestApp) {
    let response = app.get("/hello").await;
    assert_eq!(response.status(), 200);
    assert_eq!(text(response).await, "hello");
}

// --- The routes ------------------------------------------------------------------

#[tokio::test]
async fn lua_says_hello_world() {
    let app = spawn_fixtures().await;
    let response = app.get("/lua").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "{:?}",
        response.headers()
    );
    assert_eq!(text(response).await, "hello world");
}

#[tokio::test]
async fn echo_receives_the_request_intact() {
    let app = spawn_fixtures().await;
    let response = app
        .client
        .post(app.url("/lua/echo?name=%E2%9C%93%20ok&a=first&a=second&empty="))
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header(
            "x-unicode",
            HeaderValue::from_bytes("héllo ✓".as_bytes()).unwrap(),
        )
        .header("content-type", "text/plain; charset=utf-8")
        .body("body with ünïcödé ✓ and\nnewlines")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-echo-method"], "POST");
    let echoed: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path"], "/lua/echo");
    assert_eq!(echoed["body"], "body with ünïcödé ✓ and\nnewlines");
    assert_eq!(echoed["query"]["name"], "✓ ok");
    assert_eq!(
        echoed["query"]["a"], "first",
        "the first value of a repeated key"
    );
    assert_eq!(echoed["query"]["empty"], "");
    assert_eq!(echoed["headers"]["x-multi"], "one, two");
    assert_eq!(echoed["headers"]["x-unicode"], "héllo ✓");
    assert_eq!(
        echoed["headers"]["content-type"],
        "text/plain; charset=utf-8"
    );
}

#[tokio::test]
async fn echo_sees_an_empty_body_and_any_method() {
    let app = spawn_fixtures().await;
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = app
            .client
            .request(method.clone(), app.url("/lua/echo"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method}");
        let echoed: serde_json::Value = response.json().await.unwrap();
        assert_eq!(echoed["method"], method.as_str());
        assert_eq!(echoed["body"], "");
        assert_eq!(echoed["query"], serde_json::json!({}));
    }
}

#[tokio::test]
async fn a_scripts_status_and_headers_go_out() {
    let app = spawn_fixtures().await;
    let response = app.get("/lua/echo?status=201").await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let list: Vec<_> = response.headers().get_all("x-echo-list").iter().collect();
    assert_eq!(list, ["first", "second"]);

    let response = app.get("/lua/teapot").await;
    assert_eq!(response.status(), 418);
    assert_eq!(response.headers()["content-type"], "text/x-tea");
    assert_eq!(response.headers()["x-brew"], "earl grey");
    assert_eq!(text(response).await, "I'm a teapot\n");
}

#[tokio::test]
async fn a_scripts_own_404_is_not_rewritten() {
    let app = spawn_fixtures().await;
    let response = app.get("/lua/missing").await;
    assert_eq!(response.status(), 404);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(text(response).await, "nothing here");
}

#[tokio::test]
async fn names_that_are_not_scripts_are_404() {
    let app = spawn_fixtures().await;
    for path in [
        "/lua/..%2Fx",
        "/lua/..%2F..%2Fetc%2Fpasswd",
        "/lua/x.lua",
        "/lua/echo.lua",
        "/lua/",
        "/lua/echo%00",
        "/lua/%FF",
        "/lua/not%20a%20script",
        "/lua/dotted.name",
        "/lua/nope",
        "/lua/echo/more",
    ] {
        let body = assert_problem(app.get(path).await, 404).await;
        assert!(
            !body["detail"].as_str().unwrap().contains("fixtures"),
            "{body}"
        );
    }
    let long = format!("/lua/{}", "a".repeat(65));
    assert_problem(app.get(&long).await, 404).await;

    // Paths an HTTP client would normalize before sending.
    for path in [
        "/lua/%2e%2e",
        "/lua/%2E%2E/lua/echo",
        "/lua/../lua/echo",
        "/lua/./echo",
    ] {
        assert_eq!(raw_status(&app, path).await, 404, "{path}");
    }
}

/// The status of `GET path` sent byte for byte, as no HTTP client would.
async fn raw_status(app: &TestApp, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: skiff\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let status_line = answer.lines().next().unwrap_or_default();
    status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

#[tokio::test]
async fn the_shipped_examples_answer() {
    let (mut config, dir) = test_config();
    config.scripts_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("lua");
    config.scripts_dir_explicit = true;
    let app = spawn_with(config, dir).await;
    assert_eq!(
        text(app.get("/lua/hello?name=Ada").await).await,
        "Hello, Ada!\n"
    );
    let response = app.get("/lua/echo?status=202").await;
    assert_eq!(response.status(), 202);
    let echoed: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echoed["path"], "/lua/echo");
}

#[tokio::test]
async fn the_openapi_document_lists_the_lua_routes() {
    let app = spawn_fixtures().await;
    let doc: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["paths"]["/lua"]["get"].is_object(), "{}", doc["paths"]);
    let script = &doc["paths"]["/lua/{name}"];
    for method in ["get", "post", "put", "patch", "delete"] {
        assert!(script[method].is_object(), "{method}: {script}");
    }
    assert!(script["get"]["responses"]["503"].is_object());
}

// --- Failures of a script ------------------------------------------------------------

#[tokio::test]
async fn a_script_error_is_a_500_naming_the_script_and_line() {
    let app = spawn_fixtures().await;
    let body = assert_problem(app.get("/lua/boom").await, 500).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("boom.lua:3:"), "{detail}");
    assert!(!detail.contains(fixtures().to_str().unwrap()), "{detail}");
    assert!(!detail.contains('/'), "no path at all: {detail}");
    assert_hello_still_answers(&app).await;
}

#[tokio::test]
async fn a_script_that_never_responds_is_a_500() {
    let app = spawn_fixtures().await;
    let body = assert_problem(app.get("/lua/silent").await, 500).await;
    assert!(
        body["detail"].as_str().unwrap().contains("response"),
        "{body}"
    );
}

#[tokio::test]
async fn an_endless_loop_is_a_503_within_about_the_limit() {
    let app = spawn_fixtures().await;
    let start = Instant::now();
    let body = assert_problem(app.get("/lua/spin").await, 503).await;
    let elapsed = start.elapsed();
    // The limit is 100 ms; the bound is generous for a shared machine.
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("spin.lua") && detail.contains("time limit"),
        "{detail}"
    );
    assert_hello_still_answers(&app).await;
    assert_eq!(text(app.get("/lua/ok").await).await, "ok");
}

#[tokio::test]
async fn a_memory_hog_is_a_500() {
    // Filling 16 MiB takes tens of milliseconds on a loaded machine: a time
    // limit it cannot meet first.
    let app = spawn_fixtures_with(|c| c.lua_timeout = Duration::from_secs(2)).await;
    let body = assert_problem(app.get("/lua/hog").await, 500).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("hog.lua") && detail.contains("memory limit of 16 MiB"),
        "{detail}"
    );
    assert_hello_still_answers(&app).await;
    assert_eq!(text(app.get("/lua/ok").await).await, "ok");
}

#[tokio::test]
async fn metrics_count_runs_errors_and_limit_hits() {
    // As in a_memory_hog_is_a_500: the hog meets the memory limit first.
    let app = spawn_fixtures_with(|c| c.lua_timeout = Duration::from_secs(2)).await;
    let metric = |text: &str, sample: &str| crate::support::metric(text, sample).unwrap_or(0.0);
    let before = text(app.get("/metrics").await).await;
    for path in [
        "/lua/ok",
        "/lua/ok",
        "/lua/boom",
        "/lua/spin",
        "/lua/hog",
        "/lua/silent",
    ] {
        app.get(path).await;
    }
    let after = text(app.get("/metrics").await).await;
    for (sample, increase) in [
        (r#"skiff_lua_runs_total{script="ok.lua"}"#, 2.0),
        (r#"skiff_lua_runs_total{script="spin.lua"}"#, 1.0),
        (r#"skiff_lua_errors_total{kind="script"}"#, 1.0),
        (r#"skiff_lua_errors_total{kind="no_response"}"#, 1.0),
        (r#"skiff_lua_errors_total{kind="time"}"#, 1.0),
        (r#"skiff_lua_errors_total{kind="memory"}"#, 1.0),
        (r#"skiff_lua_limit_hits_total{limit="time"}"#, 1.0),
        (r#"skiff_lua_limit_hits_total{limit="memory"}"#, 1.0),
    ] {
        assert_eq!(
            metric(&after, sample) - metric(&before, sample),
            increase,
            "{sample}\n{after}"
        );
    }
}

// --- Isolation between requests -------------------------------------------------------

/// Enough sequential runs that every worker runs the first script before
/// the second (the workers take jobs in turn).
fn rounds(app: &TestApp) -> usize {
    4 * app.state.lua.pool_size().workers
}

#[tokio::test]
async fn globals_do_not_leak_between_requests() {
    let app = spawn_fixtures().await;
    for _ in 0..rounds(&app) {
        assert_eq!(text(app.get("/lua/set_global").await).await, "secret");
    }
    for _ in 0..rounds(&app) {
        assert_eq!(text(app.get("/lua/read_global").await).await, "nil");
    }
}

#[tokio::test]
async fn tampering_with_shared_tables_does_not_carry_over() {
    let app = spawn_fixtures().await;
    for _ in 0..rounds(&app) {
        assert_eq!(
            text(app.get("/lua/tamper").await).await,
            "pwnedpwned",
            "tampering works within its own run"
        );
    }
    for _ in 0..rounds(&app) {
        assert_eq!(text(app.get("/lua/check_tamper").await).await, "X y 1 nil");
    }
}

// --- The pool under load -----------------------------------------------------------

#[tokio::test]
async fn the_service_answers_while_every_worker_spins() {
    let app = spawn_fixtures_with(|c| {
        c.lua_timeout = Duration::from_millis(300);
        // 5 queued per worker: every queued spin starts within 1.5 s.
        c.request_timeout = Duration::from_secs(3);
    })
    .await;
    let size = app.state.lua.pool_size();
    // 64 at once, and more than can run or wait: some are turned away.
    let spinners: Vec<_> = (0..(size.workers + size.queue + 16).max(64))
        .map(|_| {
            let request = app.client.get(app.url("/lua/spin")).send();
            tokio::spawn(request)
        })
        .collect();

    // Wait (polling) until every worker is inside a spin.
    let workers = size.workers;
    crate::support::eventually("every worker to be inside a spin", || async {
        app.state.lua.busy() >= workers
    })
    .await;
    for path in ["/hello", "/healthz"] {
        let start = Instant::now();
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let elapsed = start.elapsed();
        assert!(elapsed < Duration::from_secs(1), "{path} took {elapsed:?}");
    }

    let (mut limited, mut busy) = (0, 0);
    for spinner in spinners {
        let response = spinner.await.unwrap().unwrap();
        let retry_after = response.headers().get("retry-after").cloned();
        let body = assert_problem(response, 503).await;
        if body["detail"].as_str().unwrap().contains("time limit") {
            limited += 1;
        } else {
            assert_eq!(retry_after.unwrap(), "1", "{body}");
            busy += 1;
        }
    }
    // The queue is bounded: not all of them waited for a worker.
    assert!(limited >= workers, "{limited} runs hit the limit");
    assert!(busy > 0, "none was turned away");
    assert_hello_still_answers(&app).await;
}

// --- Inline runs and the fallback to the pool ------------------------------------------

/// How many runs went each way (`inline`, `fallback`, `pool`) so far.
async fn dispatch(app: &TestApp) -> [f64; 3] {
    let text = text(app.get("/metrics").await).await;
    ["inline", "fallback", "pool"].map(|path| {
        let sample = format!(r#"skiff_lua_dispatch_total{{path="{path}"}}"#);
        crate::support::metric(&text, &sample).unwrap_or(0.0)
    })
}

fn increase(after: [f64; 3], before: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|i| after[i] - before[i])
}

async fn reload(app: &TestApp) {
    let engine = app.state.lua.clone();
    tokio::task::spawn_blocking(move || engine.reload())
        .await
        .unwrap()
        .expect("the scripts reload");
}

#[tokio::test]
async fn fast_scripts_are_answered_inline() {
    let names = ["a", "b", "c", "d", "e"];
    let scripts: Vec<_> = names.iter().map(|n| (*n, "response 'ok'")).collect();
    let app = spawn_scripts(&scripts).await;
    let before = dispatch(&app).await;
    assert_eq!(text(app.get("/lua").await).await, "hello world");
    for name in names {
        assert_eq!(text(app.get(&format!("/lua/{name}")).await).await, "ok");
    }
    let [inline, fallback, pool] = increase(dispatch(&app).await, before);
    assert_eq!(inline + fallback + pool, 6.0, "each run is counted once");
    // A run could be pre-empted past its slice on a loaded machine, but not
    // six of them: before the inline path, every run went to the pool.
    assert!(
        inline >= 1.0,
        "{inline} inline, {fallback} fallback, {pool} pool"
    );
}

#[tokio::test]
async fn a_script_slow_on_some_inputs_falls_back_then_goes_to_the_pool_until_a_reload() {
    let app = spawn_scripts(&[(
        "mixed",
        "if request.query.spin then while true do end end response('fast')",
    )])
    .await;
    let runs = r#"skiff_lua_runs_total{script="mixed.lua"}"#;
    let metric = |text: &str| crate::support::metric(text, runs).unwrap_or(0.0);

    // The slow input outlasts its slice and runs again on a worker, which
    // stops it at the time limit; each run is counted once. Two at once:
    // a second overrun within a second sends the script to the pool.
    let before = dispatch(&app).await;
    let runs_before = metric(&text(app.get("/metrics").await).await);
    let start = Instant::now();
    let (first, second) = tokio::join!(app.get("/lua/mixed?spin=1"), app.get("/lua/mixed?spin=1"));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    for response in [first, second] {
        let body = assert_problem(response, 503).await;
        assert!(
            body["detail"].as_str().unwrap().contains("time limit"),
            "{body}"
        );
    }
    assert_eq!(increase(dispatch(&app).await, before), [0.0, 2.0, 0.0]);
    assert_eq!(
        metric(&text(app.get("/metrics").await).await) - runs_before,
        2.0
    );

    // For a while, even its fast input goes straight to the pool.
    let before = dispatch(&app).await;
    assert_eq!(text(app.get("/lua/mixed").await).await, "fast");
    assert_problem(app.get("/lua/mixed?spin=1").await, 503).await;
    assert_eq!(increase(dispatch(&app).await, before), [0.0, 0.0, 2.0]);

    // A reload forgets it: the next run is tried inline again.
    reload(&app).await;
    let before = dispatch(&app).await;
    assert_eq!(text(app.get("/lua/mixed").await).await, "fast");
    let [_, _, pool] = increase(dispatch(&app).await, before);
    assert_eq!(pool, 0.0);
    assert_hello_still_answers(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_scripts_hold_no_event_loop_thread() {
    // Eight scripts, each of which may take two slices of an event-loop
    // thread before it goes to the pool, and eight spinning requests each.
    let names: Vec<String> = (0..8).map(|i| format!("spin{i}")).collect();
    let scripts: Vec<_> = names
        .iter()
        .map(|n| (n.as_str(), "while true do end"))
        .collect();
    let app = spawn_scripts(&scripts).await;
    let spinners: Vec<_> = names
        .iter()
        .cycle()
        .take(64)
        .map(|name| tokio::spawn(app.client.get(app.url(&format!("/lua/{name}"))).send()))
        .collect();
    let workers = app.state.lua.pool_size().workers;
    crate::support::eventually("every worker to be inside a spin", || async {
        app.state.lua.busy() >= workers
    })
    .await;
    // Had the spins run on the event loop for their whole limit, 64 of
    // 100 ms on two threads would hold it for over three seconds.
    for _ in 0..3 {
        let start = Instant::now();
        assert_hello_still_answers(&app).await;
        let elapsed = start.elapsed();
        assert!(elapsed < Duration::from_secs(1), "/hello took {elapsed:?}");
    }
    for spinner in spinners {
        let response = spinner.await.unwrap().unwrap();
        assert_problem(response, 503).await;
    }
}

// --- Start-up ---------------------------------------------------------------------

/// The nice value in a `/proc/…/stat` file.
fn nice_in(stat: &Path) -> i64 {
    let stat = std::fs::read_to_string(stat).unwrap();
    // After "pid (comm) ", nice is the 17th field (proc(5): field 19).
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[16].parse().unwrap()
}

/// The nice values of this process's threads named `lua-…`.
fn lua_worker_nice_values() -> Vec<i64> {
    let mut values = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        match std::fs::read_to_string(task.join("comm")) {
            Ok(comm) if comm.starts_with("lua-") => values.push(nice_in(&task.join("stat"))),
            _ => {}
        }
    }
    values
}

/// Spinning scripts cannot starve the HTTP routes: the workers yield the
/// CPU to the rest of the process (the bench's hello-under-lua scenario
/// measures the effect).
#[tokio::test]
async fn lua_workers_run_at_a_lower_priority_than_the_rest() {
    let app = spawn_scripts(&[]).await;
    let process = nice_in(Path::new("/proc/self/stat"));
    let expected = (process + 10).min(19);
    // Start-up waits for one worker only; the others lower theirs as they start.
    crate::support::eventually("every Lua worker runs at +10", || async {
        let workers = lua_worker_nice_values();
        workers.len() >= 2 && workers.iter().all(|&n| n == expected)
    })
    .await;
    assert_hello_still_answers(&app).await;
}

#[tokio::test]
async fn a_script_that_does_not_compile_stops_start_up() {
    let (mut config, dir) = test_config();
    config.scripts_dir = write_scripts(
        dir.path(),
        &[("fine", "response 'ok'"), ("broken", "local x = 1\nx +\n")],
    );
    config.scripts_dir_explicit = true;
    let err = App::build(config, ServeOptions::default())
        .await
        .err()
        .expect("start-up fails");
    let message = err.to_string();
    assert!(message.contains("broken.lua:"), "{message}");
    assert!(
        message.contains(":3:") || message.contains(":2:"),
        "a line: {message}"
    );
    assert!(!message.contains(dir.path().to_str().unwrap()), "{message}");
}

#[tokio::test]
async fn files_that_are_not_script_names_are_ignored() {
    // The fixtures hold two such files that do not compile.
    let app = spawn_fixtures().await;
    assert_eq!(text(app.get("/lua/ok").await).await, "ok");
}

#[tokio::test]
async fn a_missing_explicit_scripts_dir_stops_start_up() {
    let (mut config, dir) = test_config();
    config.scripts_dir = dir.path().join("no-such-dir");
    config.scripts_dir_explicit = true;
    let err = App::build(config, ServeOptions::default())
        .await
        .err()
        .expect("start-up fails");
    assert!(err.to_string().contains("no-such-dir"), "{err}");
}

#[tokio::test]
async fn a_missing_default_scripts_dir_is_fine() {
    let (mut config, dir) = test_config();
    config.scripts_dir = dir.path().join("no-such-dir");
    config.scripts_dir_explicit = false;
    let app = spawn_with(config, dir).await;
    assert_eq!(text(app.get("/lua").await).await, "hello world");
    assert_problem(app.get("/lua/echo").await, 404).await;
}

// --- The escape matrix: one test each ------------------------------------------------
//
// Each forbidden thing is looked for directly, through _G and _ENV, through
// a chunk made by load, through rawget, and through the string metatable.
// The probe answers the routes by which it was found: none.

async fn routes_to(path: &str) -> String {
    let (top, leaf) = path.rsplit_once('.').unwrap_or(("", path));
    let in_env = |env: &str| {
        if top.is_empty() {
            format!("{env}.{leaf}")
        } else {
            format!("{env}.{top}.{leaf}")
        }
    };
    let raw = if top.is_empty() {
        format!("rawget(_ENV, '{leaf}')")
    } else {
        format!("rawget({top}, '{leaf}')")
    };
    eval(&format!(
        "local routes = {{
           direct = function() return {path} end,
           _G = function() return {g} end,
           _ENV = function() return {env} end,
           load = function() return load('return {path}')() end,
           rawget = function() return {raw} end,
           string_metatable = function() return getmetatable('').__index.{leaf} end,
         }}
         local found = {{}}
         for name, get in pairs(routes) do
           local ok, value = pcall(get)
           if ok and value ~= nil then found[#found + 1] = name end
         end
         table.sort(found)
         response(table.concat(found, ','))",
        g = in_env("_G"),
        env = in_env("_ENV"),
    ))
    .await
}

#[tokio::test]
async fn the_probe_finds_what_is_reachable() {
    // The control: if the probe could not find things, the tests below
    // would pass for nothing.
    assert_eq!(
        routes_to("string.rep").await,
        "_ENV,_G,direct,load,rawget,string_metatable"
    );
    assert_eq!(routes_to("os.time").await, "_ENV,_G,direct,load,rawget");
}

#[tokio::test]
async fn io_is_unreachable() {
    assert_eq!(routes_to("io").await, "");
    assert_eq!(routes_to("io.open").await, "");
}

#[tokio::test]
async fn os_execute_is_unreachable() {
    assert_eq!(routes_to("os.execute").await, "");
}

#[tokio::test]
async fn os_exit_is_unreachable() {
    assert_eq!(routes_to("os.exit").await, "");
}

#[tokio::test]
async fn os_getenv_is_unreachable() {
    assert_eq!(routes_to("os.getenv").await, "");
}

#[tokio::test]
async fn os_remove_is_unreachable() {
    assert_eq!(routes_to("os.remove").await, "");
    assert_eq!(routes_to("os.rename").await, "");
    assert_eq!(routes_to("os.tmpname").await, "");
}

#[tokio::test]
async fn package_is_unreachable() {
    assert_eq!(routes_to("package").await, "");
    assert_eq!(routes_to("package.loaded").await, "");
}

#[tokio::test]
async fn require_is_unreachable() {
    assert_eq!(routes_to("require").await, "");
}

#[tokio::test]
async fn debug_is_unreachable() {
    assert_eq!(routes_to("debug").await, "");
    assert_eq!(routes_to("debug.getregistry").await, "");
}

#[tokio::test]
async fn dofile_is_unreachable() {
    assert_eq!(routes_to("dofile").await, "");
}

#[tokio::test]
async fn loadfile_is_unreachable() {
    assert_eq!(routes_to("loadfile").await, "");
}

#[tokio::test]
async fn collectgarbage_is_unreachable() {
    assert_eq!(routes_to("collectgarbage").await, "");
}

#[tokio::test]
async fn string_dump_is_unreachable() {
    // string_metatable is the route of ("").dump.
    assert_eq!(routes_to("string.dump").await, "");
}

#[tokio::test]
async fn load_refuses_binary_chunks() {
    // The header of a Lua 5.4 binary chunk: refused before it is read.
    let expected = "nil|attempt to load a binary chunk (mode is 't')";
    assert_eq!(
        eval("local f, err = load('\\27Lua\\84\\0\\25\\147\\r\\n\\26\\n') response(tostring(f) .. '|' .. err)")
            .await,
        expected
    );
    assert_eq!(
        eval("local f, err = load('\\27Lua\\84\\0', 'chunk', 'b') response(tostring(f) .. '|' .. err)")
            .await,
        expected,
        "asking for binary mode does not help"
    );
}

#[tokio::test]
async fn the_string_metatable_leads_nowhere() {
    // The metatable holds __index, the run's own copy of `string`, and
    // nothing else; that copy holds no dump.
    assert_eq!(
        eval(
            "local names = {}
             for k in pairs(getmetatable('')) do names[#names + 1] = k end
             response(table.concat(names, ',') .. ' ' .. tostring(getmetatable('').__index == string)
               .. ' ' .. tostring(string.dump))"
        )
        .await,
        "__index true nil"
    );
}

#[tokio::test]
async fn the_request_table_has_no_metatable() {
    assert_eq!(
        eval(
            "response(tostring(getmetatable(request)) .. tostring(getmetatable(request.query))
               .. tostring(getmetatable(request.headers)))"
        )
        .await,
        "nilnilnil"
    );
}

#[tokio::test]
async fn finalizers_are_refused() {
    let app = spawn_scripts(&[(
        "gc",
        "setmetatable({}, {__gc = function() end}) response('x')",
    )])
    .await;
    let body = assert_problem(app.get("/lua/gc").await, 500).await;
    assert!(body["detail"].as_str().unwrap().contains("__gc"), "{body}");
}
