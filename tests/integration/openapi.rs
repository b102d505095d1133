//! The OpenAPI document as client generators read it: what
//! openapi-spec-validator and openapi-python-client rejected once
//! (scripts/check-openapi runs both on the served document).

use std::collections::HashMap;

use serde_json::Value;

fn document() -> Value {
    serde_json::from_str(&skiff::http::openapi::document_json()).unwrap()
}

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// `(path, method, operation)` for every operation.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(op) = item.get(*method) {
                all.push((path.clone(), method.to_string(), op.clone()));
            }
        }
    }
    all
}

#[test]
fn every_operation_has_an_id_of_its_own() {
    let doc = document();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (path, method, op) in operations(&doc) {
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has an operationId"))
            .to_string();
        if let Some(other) = seen.insert(id.clone(), format!("{method} {path}")) {
            panic!("{id} names both {other} and {method} {path}");
        }
    }
}

#[test]
fn path_parameters_are_in_the_path_and_the_rest_optional_where_optional() {
    let doc = document();
    for (path, method, op) in operations(&doc) {
        for param in op["parameters"].as_array().into_iter().flatten() {
            let name = param["name"].as_str().unwrap();
            if param["in"] == "path" {
                assert!(
                    path.contains(&format!("{{{name}}}")),
                    "{method} {path}: path parameter {name} is not in the path"
                );
                assert_eq!(param["required"], true, "{method} {path} {name}");
            }
        }
    }
    let tz = &doc["paths"]["/time"]["get"]["parameters"][0];
    assert_eq!(tz["name"], "tz");
    assert_eq!(tz["in"], "query");
    assert_ne!(tz["required"], true);
}

#[cfg(feature = "lua")]
#[test]
fn a_script_needs_no_request_body() {
    let doc = document();
    let item = doc["paths"]["/lua/{name}"].as_object().unwrap();
    for method in METHODS {
        let op = &item[*method];
        assert_ne!(
            op["requestBody"]["required"], true,
            "{method} /lua/{{name}}"
        );
    }
}

/// The documented `If-Match` pattern, as the server reads the header: a
/// value it matches is well formed, so only a stale tag gets a 412.
#[cfg(feature = "users")]
#[test]
fn if_match_is_documented_as_strong_tags_or_a_star() {
    let doc = document();
    let mut found = 0;
    for (path, method, op) in operations(&doc) {
        for param in op["parameters"].as_array().into_iter().flatten() {
            if param["name"] == "If-Match" {
                found += 1;
                let pattern = param["schema"]["pattern"].as_str();
                assert_eq!(
                    pattern,
                    Some(r#"^(\*|"[!#-~]*"( *, *"[!#-~]*")*)$"#),
                    "{method} {path}"
                );
            }
        }
    }
    assert_eq!(
        found, 5,
        "PUT, PATCH, DELETE /users/{{id}}; PUT, DELETE /?id="
    );
}

/// `docs/openapi.json` documents the default (full) build.
#[cfg(all(feature = "ip", feature = "lua", feature = "users", feature = "docs"))]
#[tokio::test]
async fn the_committed_openapi_document_is_the_generated_one() {
    let app = crate::support::spawn().await;
    let served: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .expect("docs/openapi.json is committed");
    assert_eq!(
        committed,
        skiff::http::openapi::document_json(),
        "docs/openapi.json is stale: regenerate it with `cargo run -- openapi > docs/openapi.json`"
    );
    let committed: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(served, committed);
    for path in [
        "/",
        "/hello",
        "/time",
        "/healthz",
        "/readyz",
        "/health",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(served["paths"][path].is_object(), "{path} is documented");
    }
}
