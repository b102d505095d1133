//! The users API over real HTTP, run against SQLite and PostgreSQL alike:
//! every rule of the contract's Users section and each error status.

mod at_scale;
mod emails;

use std::collections::HashSet;

use crate::support::backends::*;
use crate::support::{TestApp, assert_problem};
use reqwest::Method;
use serde_json::{Value, json};

both_backends!(
    create_answers_201_with_location_etag_and_the_stored_user,
    defaults_apply_and_read_only_fields_are_ignored,
    get_with_a_matching_if_none_match_is_304,
    unknown_and_malformed_ids_are_404,
    other_spellings_of_an_id_are_not_the_user,
    malformed_bodies_are_400_naming_the_fields,
    invalid_values_are_422_naming_the_fields,
    lengths_count_characters_up_to_the_limits,
    missing_or_wrong_content_type_is_415,
    emails_are_unique_ignoring_case,
    put_replaces_the_whole_user_and_never_creates,
    patch_merges_and_null_resets_to_the_default,
    every_write_changes_the_etag_and_answers_agree,
    if_match_guards_put_patch_and_delete,
    rejected_writes_lose_nothing,
    delete_answers_204_and_the_user_is_gone,
    the_list_is_in_creation_order_and_filters_by_email,
    bad_list_queries_are_400,
    pagination_walks_every_user_exactly_once,
    long_pages_are_streamed_whole_and_in_order,
    the_cursor_works_after_a_deleted_or_unknown_id,
    compatibility_routes_act_as_the_users_routes,
    credentials_guard_the_users_routes_only,
    sixteen_clients_create_four_hundred_users,
    sixteen_clients_racing_on_one_email_get_one_201,
    two_writers_with_one_if_match_cannot_both_win,
    every_acknowledged_write_is_read_back_while_readers_hammer,
    a_user_is_sent_uncompressed_so_its_strong_etag_names_one_representation,
    a_body_over_the_limit_is_413,
    readiness_and_metrics_report_the_database,
    text_postgresql_cannot_store_gets_the_same_answer_on_both,
);

/// PostgreSQL only: a second server on one SQLite file refuses to start
/// (tests/integration/cli/db.rs, `a_second_server_on_one_sqlite_file_refuses_to_start`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_one_postgres_database() {
    if let Some(db) = TestDb::postgres("users::two_replicas_share_one_postgres_database").await {
        two_replicas_share_one_database(&db).await;
        db.cleanup().await;
    }
}

const ADA: &str = r#"{"email":"Ada@Example.com","accountEnabled":true,"displayName":"Ada Lovelace","givenName":"Ada","surname":"Lovelace","companyName":"Analytical Engines"}"#;

fn ada() -> Value {
    serde_json::from_str(ADA).unwrap()
}

/// `2026-11-23T06:00:00.123Z`: RFC 3339, UTC, exactly milliseconds.
fn assert_timestamp(value: &Value) {
    let text = value.as_str().expect("a timestamp string");
    let shape: String = text
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999-99-99T99:99:99.999Z", "{text}");
    text.parse::<jiff::Timestamp>().expect("a valid time");
}

async fn create_answers_201_with_location_etag_and_the_stored_user(db: &TestDb) {
    let app = db.spawn().await;
    let r = post(&app, ada()).await;
    assert_eq!(r.status(), 201);
    let location = header(&r, "location");
    let etag = header(&r, "etag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong: {etag}"
    );
    let user: Value = r.json().await.unwrap();
    for (field, sent) in ada().as_object().unwrap() {
        assert_eq!(&user[field], sent, "{field} is stored as sent");
    }
    let id = user["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(location, format!("/users/{id}"));
    assert_timestamp(&user["createdAt"]);
    assert_eq!(user["createdAt"], user["updatedAt"]);
    assert_eq!(user.as_object().unwrap().len(), 9, "{user}");

    let r = app.get(&location).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "etag"), etag);
    assert_eq!(r.json::<Value>().await.unwrap(), user);
}

async fn defaults_apply_and_read_only_fields_are_ignored(db: &TestDb) {
    let app = db.spawn().await;
    let sent_id = "0192f0c4-8d3e-7c1a-9b7e-2f1d3c4b5a69";
    let r = post(
        &app,
        json!({"email":"a@example.com","id":sent_id,"createdAt":"1999-01-01T00:00:00.000Z","updatedAt":7}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let user: Value = r.json().await.unwrap();
    assert_ne!(user["id"], sent_id);
    assert_ne!(user["createdAt"], "1999-01-01T00:00:00.000Z");
    assert_eq!(user["accountEnabled"], false);
    for name in ["displayName", "givenName", "surname", "companyName"] {
        assert_eq!(user[name], "", "{name}");
    }
    let (status, _, _) = fetch(&app, sent_id).await;
    assert_eq!(status, 404, "the id sent was not used");
}

async fn get_with_a_matching_if_none_match_is_304(db: &TestDb) {
    let app = db.spawn().await;
    let u = create(&app, "a@example.com").await;
    let path = format!("/users/{}", u.id());
    for tag in [
        u.etag.clone(),
        format!("W/{}", u.etag),
        "*".into(),
        format!("\"x\", {}", u.etag),
    ] {
        let r = app
            .client
            .get(app.url(&path))
            .header("if-none-match", &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304, "If-None-Match: {tag}");
        assert_eq!(header(&r, "etag"), u.etag);
        assert!(r.bytes().await.unwrap().is_empty());
    }
    let r = app
        .client
        .get(app.url(&path))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn unknown_and_malformed_ids_are_404(db: &TestDb) {
    let app = db.spawn().await;
    create(&app, "a@example.com").await;
    let unknown = uuid::Uuid::now_v7().to_string();
    for id in [unknown.as_str(), "not-a-uuid", "42"] {
        let path = format!("/users/{id}");
        assert_problem(app.get(&path).await, 404).await;
        let r = put(&app, id, json!({"email":"b@example.com"})).await;
        assert_problem(r, 404).await;
        let r = patch(&app, id, json!({"surname":"X"})).await;
        assert_problem(r, 404).await;
        let r = app.client.delete(app.url(&path)).send().await.unwrap();
        assert_problem(r, 404).await;
    }
}

/// The uuid crate also reads an id upper-cased, braced, as a URN and without
/// hyphens; only the form the server writes names the user, so each user has
/// one URL. Other spellings are malformed ids: 404, and 400 as a cursor.
async fn other_spellings_of_an_id_are_not_the_user(db: &TestDb) {
    let app = db.spawn().await;
    let created = create(&app, "a@example.com").await;
    let id = created.id();
    let later = create(&app, "b@example.com").await;
    let spellings = [
        id.to_uppercase(),
        format!("%7B{id}%7D"),
        format!("urn:uuid:{id}"),
        id.replace('-', ""),
    ];
    for other in &spellings {
        let path = format!("/users/{other}");
        assert_problem(app.get(&path).await, 404).await;
        assert_problem(app.get(&format!("/?id={other}")).await, 404).await;
        let r = put(&app, other, json!({"email":"c@example.com"})).await;
        assert_problem(r, 404).await;
        let r = patch(&app, other, json!({"surname":"X"})).await;
        assert_problem(r, 404).await;
        let r = app.client.delete(app.url(&path)).send().await.unwrap();
        assert_problem(r, 404).await;
        let r = app.client.delete(app.url(&format!("/?id={other}")));
        assert_problem(r.send().await.unwrap(), 404).await;
        let problem = assert_problem(app.get(&format!("/users?after={other}")).await, 400).await;
        assert_eq!(fields(&problem), ["after"], "{other}");
    }
    // The canonical spelling still names the user, untouched by the above.
    let (status, etag, user) = fetch(&app, id).await;
    assert_eq!(
        (status, etag.as_deref()),
        (200, Some(created.etag.as_str()))
    );
    assert_eq!(user, created.user);
    assert_eq!(app.get(&format!("/?id={id}")).await.status(), 200);
    let r = app.get(&format!("/users?after={id}")).await;
    assert_eq!(r.status(), 200);
    let page: Vec<Value> = r.json().await.unwrap();
    assert_eq!(page, [later.user]);
}

/// The `errors[].field` values of a problem.
fn fields(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .expect("an errors list")
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect()
}

async fn malformed_bodies_are_400_naming_the_fields(db: &TestDb) {
    let app = db.spawn().await;
    let u = create(&app, "a@example.com").await;
    let cases = [
        (r#"{"email":"#, ""),
        ("", ""),
        ("[]", ""),
        (r#""a@b""#, ""),
        (r#"{"email":1}"#, "email"),
        (
            r#"{"email":"b@example.com","accountEnabled":"yes"}"#,
            "accountEnabled",
        ),
        (r#"{"email":"b@example.com","surname":["x"]}"#, "surname"),
        (r#"{"email":"b@example.com","surname":null}"#, "surname"),
        (r#"{"email":"b@example.com","nickname":"x"}"#, "nickname"),
    ];
    for (body, field) in cases {
        for (method, path) in [
            (Method::POST, "/users".to_string()),
            (Method::PUT, format!("/users/{}", u.id())),
        ] {
            let r = app
                .client
                .request(method.clone(), app.url(&path))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let problem = assert_problem(r, 400).await;
            assert_eq!(fields(&problem)[0], field, "{method} {body}");
        }
    }
    for (body, field) in [
        (r#"{"surname":1}"#, "surname"),
        (r#"{"x":1}"#, "x"),
        ("[]", ""),
    ] {
        let r = send(
            &app,
            Method::PATCH,
            &format!("/users/{}", u.id()),
            "application/merge-patch+json",
            &Value::Null,
        )
        .body(body)
        .send()
        .await
        .unwrap();
        let problem = assert_problem(r, 400).await;
        assert_eq!(fields(&problem)[0], field, "PATCH {body}");
    }
}

async fn invalid_values_are_422_naming_the_fields(db: &TestDb) {
    let app = db.spawn().await;
    let u = create(&app, "a@example.com").await;
    let long_name = "n".repeat(257);
    let long_email = format!("{}@example.com", "e".repeat(243));
    let cases = [
        (json!({"email":"nope"}), vec!["email"]),
        (json!({"email":"ada lovelace@example.com"}), vec!["email"]),
        (json!({"email":"@example.com"}), vec!["email"]),
        (json!({"email":null}), vec!["email"]),
        (json!({}), vec!["email"]),
        (json!({"email":long_email}), vec!["email"]),
        (
            json!({"email":"b@example.com","displayName":long_name}),
            vec!["displayName"],
        ),
        (
            json!({"email":"bad","givenName":long_name,"companyName":long_name}),
            vec!["email", "givenName", "companyName"],
        ),
    ];
    for (body, expected) in cases {
        let problem = assert_problem(post(&app, body.clone()).await, 422).await;
        let mut got = fields(&problem);
        got.sort();
        let mut expected = expected.clone();
        expected.sort();
        assert_eq!(got, expected, "POST {body}");
        let problem = assert_problem(put(&app, u.id(), body.clone()).await, 422).await;
        assert!(!fields(&problem).is_empty(), "PUT {body}");
    }
    for body in [
        json!({"email":null}),
        json!({"email":"nope"}),
        json!({"surname":long_name}),
    ] {
        assert_problem(patch(&app, u.id(), body.clone()).await, 422).await;
    }
}

async fn lengths_count_characters_up_to_the_limits(db: &TestDb) {
    let app = db.spawn().await;
    // 254 characters, many of them two or three bytes long.
    let email = format!("{}@例え.jp", "é".repeat(254 - 6));
    assert_eq!(email.chars().count(), 254);
    let name = "名".repeat(256);
    let r = post(&app, json!({"email":email,"displayName":name})).await;
    assert_eq!(r.status(), 201);
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["email"], email.as_str());
    assert_eq!(user["displayName"], name.as_str());
    let r = post(&app, json!({"email":format!("x{email}")})).await;
    assert_problem(r, 422).await;
}

async fn missing_or_wrong_content_type_is_415(db: &TestDb) {
    let app = db.spawn().await;
    let u = create(&app, "a@example.com").await;
    let user_path = format!("/users/{}", u.id());
    let body = json!({"email":"b@example.com"});
    let cases = [
        (Method::POST, "/users", Some("text/plain")),
        (Method::POST, "/users", None),
        (Method::POST, "/users", Some("application/merge-patch+json")),
        (
            Method::PUT,
            user_path.as_str(),
            Some("application/x-www-form-urlencoded"),
        ),
        (Method::PUT, user_path.as_str(), None),
        (Method::PATCH, user_path.as_str(), Some("text/plain")),
        (Method::PATCH, user_path.as_str(), None),
    ];
    for (method, path, content_type) in cases {
        let mut request = app
            .client
            .request(method.clone(), app.url(path))
            .body(body.to_string());
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let r = request.send().await.unwrap();
        let is_patch = method == Method::PATCH;
        let accept_patch = r.headers().get("accept-patch").cloned();
        let problem = assert_problem(r, 415).await;
        assert!(!fields(&problem).is_empty(), "{method} {content_type:?}");
        if is_patch {
            let accept_patch = accept_patch.expect("Accept-Patch on a PATCH 415");
            assert!(
                accept_patch
                    .to_str()
                    .unwrap()
                    .contains("application/merge-patch+json")
            );
        }
    }
    let r = send(
        &app,
        Method::PATCH,
        &user_path,
        "application/json; charset=utf-8",
        &json!({"surname":"S"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "PATCH takes application/json too");
}

async fn emails_are_unique_ignoring_case(db: &TestDb) {
    let app = db.spawn().await;
    let ada = create(&app, "ada@example.com").await;
    let r = post(&app, json!({"email":"ADA@Example.COM"})).await;
    assert_problem(r, 409).await;
    let bob = create(&app, "bob@example.com").await;
    assert_problem(
        put(&app, bob.id(), json!({"email":"Ada@example.com"})).await,
        409,
    )
    .await;
    assert_problem(
        patch(&app, bob.id(), json!({"email":"aDa@example.com"})).await,
        409,
    )
    .await;
    let (_, etag, stored) = fetch(&app, bob.id()).await;
    assert_eq!((stored, etag), (bob.user.clone(), Some(bob.etag.clone())));
    // A user may change the case of its own email.
    let r = patch(&app, ada.id(), json!({"email":"Ada@Example.com"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["email"], "Ada@Example.com");
    // Once a user is gone, its email is free again.
    let r = app
        .client
        .delete(app.url(&format!("/users/{}", bob.id())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    create(&app, "BOB@example.com").await;
}

async fn put_replaces_the_whole_user_and_never_creates(db: &TestDb) {
    let app = db.spawn().await;
    let r = post(&app, ada()).await;
    let before: Value = r.json().await.unwrap();
    let id = before["id"].as_str().unwrap();
    let r = put(
        &app,
        id,
        json!({"email":"new@example.com","givenName":"G","id":"ignored"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let after: Value = r.json().await.unwrap();
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["email"], "new@example.com");
    assert_eq!(after["givenName"], "G");
    assert_eq!(
        after["accountEnabled"], false,
        "absent fields get their defaults"
    );
    for name in ["displayName", "surname", "companyName"] {
        assert_eq!(after[name], "", "{name}");
    }
    assert_eq!(after["createdAt"], before["createdAt"]);
    assert!(after["updatedAt"].as_str() >= before["updatedAt"].as_str());

    let unknown = uuid::Uuid::now_v7().to_string();
    assert_problem(
        put(&app, &unknown, json!({"email":"x@example.com"})).await,
        404,
    )
    .await;
    assert_eq!(fetch(&app, &unknown).await.0, 404, "no upsert");
    let r = app.get("/users?email=x@example.com").await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]));
}

async fn patch_merges_and_null_resets_to_the_default(db: &TestDb) {
    let app = db.spawn().await;
    let r = post(&app, ada()).await;
    let before: Value = r.json().await.unwrap();
    let id = before["id"].as_str().unwrap();
    let r = patch(
        &app,
        id,
        json!({"surname":null,"accountEnabled":null,"givenName":"Augusta"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let after: Value = r.json().await.unwrap();
    assert_eq!(after["surname"], "");
    assert_eq!(after["accountEnabled"], false);
    assert_eq!(after["givenName"], "Augusta");
    for kept in ["email", "displayName", "companyName", "createdAt", "id"] {
        assert_eq!(after[kept], before[kept], "{kept} stays");
    }
    let r = patch(&app, id, json!({})).await;
    assert_eq!(r.status(), 200);
    let same: Value = r.json().await.unwrap();
    for field in [
        "email",
        "displayName",
        "givenName",
        "surname",
        "companyName",
        "accountEnabled",
    ] {
        assert_eq!(same[field], after[field]);
    }
    assert_problem(patch(&app, id, json!({"email":null})).await, 422).await;
}

async fn every_write_changes_the_etag_and_answers_agree(db: &TestDb) {
    let app = db.spawn().await;
    let u = create(&app, "a@example.com").await;
    let id = u.id().to_owned();
    let mut etags = vec![u.etag.clone()];
    let mut last = u.user.clone();
    for step in 0..6 {
        let r = if step % 2 == 0 {
            patch(&app, &id, json!({"surname": format!("S{step}")})).await
        } else {
            // Even a write that changes nothing is a new version.
            put(
                &app,
                &id,
                json!({"email":"a@example.com","surname":last["surname"]}),
            )
            .await
        };
        assert_eq!(r.status(), 200);
        let etag = header(&r, "etag");
        let written: Value = r.json().await.unwrap();
        assert_eq!(written["createdAt"], u.user["createdAt"]);
        assert!(written["updatedAt"].as_str() >= last["updatedAt"].as_str());
        assert_timestamp(&written["updatedAt"]);
        // Every answer about this version shows the very same text.
        let (status, fetched_etag, fetched) = fetch(&app, &id).await;
        assert_eq!(
            (status, fetched_etag.as_deref()),
            (200, Some(etag.as_str()))
        );
        assert_eq!(fetched, written);
        let listed: Value = app.get("/users").await.json().await.unwrap();
        assert_eq!(listed[0], written);
        etags.push(etag);
        last = written;
    }
    let distinct: HashSet<&String> = etags.iter().collect();
    assert_eq!(distinct.len(), etags.len(), "{etags:?}");
}

async fn if_match_guards_put_patch_and_delete(db: &TestDb) {
    let app = db.spawn().await;
    let u = create(&app, "a@example.com").await;
    let other = create(&app, "b@example.com").await;
    let path = format!("/users/{}", u.id());
    let r = patch(&app, u.id(), json!({"surname":"One"})).await;
    let current = header(&r, "etag");
    let stale = u.etag.clone();
    let current_user: Value = r.json().await.unwrap();

    for tag in [
        stale.clone(),
        other.etag.clone(),
        format!("W/{current}"),
        "\"garbage\"".into(),
    ] {
        let r = send(
            &app,
            Method::PUT,
            &path,
            "application/json",
            &json!({"email":"a@example.com"}),
        )
        .header("if-match", &tag)
        .send()
        .await
        .unwrap();
        assert_problem(r, 412).await;
        let r = send(
            &app,
            Method::PATCH,
            &path,
            "application/merge-patch+json",
            &json!({"surname":"Two"}),
        )
        .header("if-match", &tag)
        .send()
        .await
        .unwrap();
        assert_problem(r, 412).await;
        let r = app
            .client
            .delete(app.url(&path))
            .header("if-match", &tag)
            .send()
            .await
            .unwrap();
        assert_problem(r, 412).await;
        assert_eq!(
            fetch(&app, u.id()).await,
            (200, Some(current.clone()), current_user.clone())
        );
    }

    let r = send(
        &app,
        Method::PATCH,
        &path,
        "application/merge-patch+json",
        &json!({"surname":"Two"}),
    )
    .header("if-match", format!("{stale}, {current}"))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "one of the listed tags matches");
    let current = header(&r, "etag");
    let r = send(
        &app,
        Method::PUT,
        &path,
        "application/json",
        &json!({"email":"a@example.com"}),
    )
    .header("if-match", "*")
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "* matches any current user");
    assert_ne!(header(&r, "etag"), current);
    let current = header(&r, "etag");
    let r = app
        .client
        .delete(app.url(&path))
        .header("if-match", &current)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .client
        .delete(app.url(&path))
        .header("if-match", &current)
        .send()
        .await
        .unwrap();
    assert_problem(r, 404).await;
}

async fn rejected_writes_lose_nothing(db: &TestDb) {
    let app = db.spawn().await;
    let r = post(&app, ada()).await;
    let etag = header(&r, "etag");
    let original: Value = r.json().await.unwrap();
    let id = original["id"].as_str().unwrap();
    let path = format!("/users/{id}");
    create(&app, "taken@example.com").await;
    let long = "x".repeat(300);
    let bad_puts = [
        ("application/json", r#"{"email":"#.to_string(), None),
        (
            "application/json",
            r#"{"email":"new@example.com","surname":5}"#.into(),
            None,
        ),
        (
            "application/json",
            r#"{"email":"new@example.com","nickname":"x"}"#.into(),
            None,
        ),
        (
            "application/json",
            json!({"email":"new@example.com","surname":long}).to_string(),
            None,
        ),
        ("application/json", r#"{"email":null}"#.into(), None),
        (
            "application/json",
            r#"{"email":"Taken@example.com"}"#.into(),
            None,
        ),
        ("text/plain", r#"{"email":"new@example.com"}"#.into(), None),
        (
            "application/json",
            r#"{"email":"new@example.com"}"#.into(),
            Some("\"stale\""),
        ),
    ];
    for (content_type, body, if_match) in bad_puts {
        for method in [Method::PUT, Method::PATCH] {
            let content_type = if method == Method::PATCH && content_type == "application/json" {
                "application/merge-patch+json"
            } else {
                content_type
            };
            let mut request = app
                .client
                .request(method.clone(), app.url(&path))
                .header("content-type", content_type)
                .body(body.clone());
            if let Some(tag) = if_match {
                request = request.header("if-match", tag);
            }
            let status = request.send().await.unwrap().status().as_u16();
            assert!((400..500).contains(&status), "{method} {body}: {status}");
            let (now_status, now_etag, now) = fetch(&app, id).await;
            assert_eq!(now_status, 200);
            assert_eq!(now, original, "{method} {body} changed the user");
            assert_eq!(now_etag.as_deref(), Some(etag.as_str()));
        }
    }
}

async fn delete_answers_204_and_the_user_is_gone(db: &TestDb) {
    let app = db.spawn().await;
    let u = create(&app, "a@example.com").await;
    let keep = create(&app, "b@example.com").await;
    let path = format!("/users/{}", u.id());
    let r = app.client.delete(app.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.bytes().await.unwrap().is_empty());
    assert_problem(app.get(&path).await, 404).await;
    let r = app.client.delete(app.url(&path)).send().await.unwrap();
    assert_problem(r, 404).await;
    let listed: Value = app.get("/users").await.json().await.unwrap();
    assert_eq!(listed, json!([keep.user]));
}

async fn create_many(app: &TestApp, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            create(app, &format!("{prefix}{i}@example.com"))
                .await
                .id()
                .to_owned(),
        );
    }
    ids
}

fn ids_of(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn the_list_is_in_creation_order_and_filters_by_email(db: &TestDb) {
    let app = db.spawn().await;
    assert_eq!(
        app.get("/users").await.json::<Value>().await.unwrap(),
        json!([])
    );
    let ids = create_many(&app, "user", 5).await;
    let r = app.get("/users").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("link").is_none(),
        "everything fits: no next page"
    );
    assert_eq!(ids_of(&r.json().await.unwrap()), ids);
    let r = app.get("/users?email=USER3@Example.COM").await;
    assert!(r.headers().get("link").is_none());
    assert_eq!(ids_of(&r.json().await.unwrap()), vec![ids[3].clone()]);
    let r = app.get("/users?email=nobody@example.com").await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]));
}

async fn bad_list_queries_are_400(db: &TestDb) {
    let app = db.spawn().await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("limit=", "limit"),
        ("after=not-an-id", "after"),
        ("after=", "after"),
    ] {
        let problem = assert_problem(app.get(&format!("/users?{query}")).await, 400).await;
        assert_eq!(fields(&problem), [field], "{query}");
    }
    for query in [
        "limit=1",
        "limit=1000",
        "after=00000000-0000-0000-0000-000000000000",
    ] {
        assert_eq!(
            app.get(&format!("/users?{query}")).await.status(),
            200,
            "{query}"
        );
    }
}

async fn pagination_walks_every_user_exactly_once(db: &TestDb) {
    let app = db.spawn().await;
    let ids = create_many(&app, "page", 20).await;
    for (limit, pages) in [(5, 4), (7, 3), (20, 1), (1000, 1)] {
        let mut seen = Vec::new();
        let mut next = Some(format!("/users?limit={limit}"));
        let mut count = 0;
        while let Some(path) = next {
            let r = app.get(&path).await;
            assert_eq!(r.status(), 200);
            let link = r.headers().get("link").cloned();
            let page = ids_of(&r.json().await.unwrap());
            assert!(page.len() <= limit as usize);
            let last = page.last().expect("no empty page").clone();
            next = link.map(|l| {
                let l = l.to_str().unwrap();
                assert_eq!(
                    l,
                    format!("</users?limit={limit}&after={last}>; rel=\"next\"")
                );
                format!("/users?limit={limit}&after={last}")
            });
            seen.extend(page);
            count += 1;
        }
        assert_eq!(count, pages, "limit {limit}");
        assert_eq!(
            seen, ids,
            "limit {limit}: every user once, in creation order"
        );
    }
    let r = app.get("/users").await;
    assert!(
        r.headers().get("link").is_none(),
        "the default limit, 100, takes all 20"
    );
}

/// Pages longer than a chunk (32) are streamed: the same users, the
/// same `Link`, valid JSON, gzipped or not.
async fn long_pages_are_streamed_whole_and_in_order(db: &TestDb) {
    let app = db.spawn().await;
    let ids = create_many(&app, "long", 100).await;
    for (limit, pages) in [(33, 4), (64, 2), (99, 2), (100, 1), (1000, 1)] {
        let mut seen = Vec::new();
        let mut next = Some(format!("/users?limit={limit}"));
        let mut count = 0;
        while let Some(path) = next {
            let r = app.get(&path).await;
            assert_eq!(r.status(), 200);
            assert_eq!(
                crate::support::header(&r, "content-type"),
                "application/json"
            );
            let link = r.headers().get("link").cloned();
            let page = ids_of(&r.json().await.unwrap());
            let last = page.last().expect("no empty page").clone();
            next = link.map(|_| format!("/users?limit={limit}&after={last}"));
            seen.extend(page);
            count += 1;
        }
        assert_eq!(count, pages, "limit {limit}");
        assert_eq!(seen, ids, "limit {limit}: every user once, in order");
    }
    let plain = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = plain.get(app.url("/users?limit=50")).send().await.unwrap();
    let page: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(ids_of(&page), ids[..50]);
}

async fn the_cursor_works_after_a_deleted_or_unknown_id(db: &TestDb) {
    let app = db.spawn().await;
    let ids = create_many(&app, "c", 6).await;
    let r = app
        .client
        .delete(app.url(&format!("/users/{}", ids[2])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let page: Value = app
        .get(&format!("/users?after={}", ids[2]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids_of(&page), ids[3..].to_vec());
    let later = uuid::Uuid::now_v7().to_string();
    let page: Value = app
        .get(&format!("/users?after={later}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page, json!([]));
    let page: Value = app
        .get("/users?after=00000000-0000-0000-0000-000000000000&limit=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids_of(&page), ids[..2].to_vec());
}

async fn compatibility_routes_act_as_the_users_routes(db: &TestDb) {
    let app = db.spawn().await;
    let r = send(&app, Method::POST, "/", "application/json", &ada())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let location = header(&r, "location");
    let etag = header(&r, "etag");
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(location, format!("/users/{id}"));

    let r = app.get(&format!("/?id={id}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "etag"), etag);
    assert_eq!(r.json::<Value>().await.unwrap(), created);
    let r = app
        .client
        .get(app.url(&format!("/?id={id}")))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    let r = send(
        &app,
        Method::PUT,
        &format!("/?id={id}"),
        "application/json",
        &json!({"email":"b@example.com"}),
    )
    .header("if-match", "\"stale\"")
    .send()
    .await
    .unwrap();
    assert_problem(r, 412).await;
    let r = send(
        &app,
        Method::PUT,
        &format!("/?id={id}"),
        "application/json",
        &json!({"email":"b@example.com"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let replaced: Value = r.json().await.unwrap();
    assert_eq!(fetch(&app, id).await.2, replaced);

    let r = app
        .client
        .delete(app.url(&format!("/?id={id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_problem(app.get(&format!("/?id={id}")).await, 404).await;
    assert_problem(app.get("/?id=not-an-id").await, 404).await;
    let r = app
        .client
        .delete(app.url(&format!("/?id={id}")))
        .send()
        .await
        .unwrap();
    assert_problem(r, 404).await;
    let r = app.client.delete(app.url("/")).send().await.unwrap();
    assert_eq!(fields(&assert_problem(r, 400).await), ["id"]);
    let r = send(
        &app,
        Method::PUT,
        "/",
        "application/json",
        &json!({"email":"c@example.com"}),
    )
    .send()
    .await
    .unwrap();
    assert_problem(r, 400).await;

    // `/` without an id is still the demo route.
    let r = app.get("/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Hello World");
    let r = app
        .client
        .get(app.url("/"))
        .header("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert!(header(&r, "content-type").starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("/openapi.json"));
}

async fn credentials_guard_the_users_routes_only(db: &TestDb) {
    let app = db
        .spawn_with(|config| {
            config.credentials = Some(skiff::config::Credentials {
                user: "admin".into(),
                password: skiff::config::Secret::new("s3cret"),
            });
        })
        .await;
    let right = |rb: reqwest::RequestBuilder| rb.basic_auth("admin", Some("s3cret"));
    let r = right(send(
        &app,
        Method::POST,
        "/users",
        "application/json",
        &json!({"email":"a@example.com"}),
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let user = format!("/users/{id}");
    let compat = format!("/?id={id}");
    let body = json!({"email":"b@example.com"});
    let requests: Vec<(Method, &str, &str)> = vec![
        (Method::GET, "/users", ""),
        (Method::POST, "/users", "application/json"),
        (Method::GET, &user, ""),
        (Method::PUT, &user, "application/json"),
        (Method::PATCH, &user, "application/merge-patch+json"),
        (Method::DELETE, &user, ""),
        (Method::GET, &compat, ""),
        (Method::PUT, &compat, "application/json"),
        (Method::DELETE, &compat, ""),
        (Method::POST, "/", "application/json"),
    ];
    for (method, path, content_type) in &requests {
        for auth in [
            None,
            Some(("admin", "wrong")),
            Some(("Admin", "s3cret")),
            Some(("admin", "")),
        ] {
            let mut rb = send(&app, method.clone(), path, content_type, &body);
            if let Some((u, p)) = auth {
                rb = rb.basic_auth(u, Some(p));
            }
            let r = rb.send().await.unwrap();
            assert_eq!(header(&r, "www-authenticate"), r#"Basic realm="skiff""#);
            assert_problem(r, 401).await;
        }
    }
    let r = right(app.client.get(app.url(&user))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let stored: Value = r.json().await.unwrap();
    assert_eq!(
        stored["email"], "a@example.com",
        "no unauthenticated write got through"
    );
    for (method, path, content_type) in &requests {
        let r = right(send(&app, method.clone(), path, content_type, &body))
            .send()
            .await
            .unwrap();
        assert_ne!(
            r.status(),
            401,
            "{method} {path} with the right credentials"
        );
        assert!(r.status().as_u16() < 500, "{method} {path}: {}", r.status());
    }
    for open in [
        "/",
        "/hello",
        "/time",
        "/healthz",
        "/readyz",
        "/health",
        "/metrics",
        "/openapi.json",
    ] {
        assert_eq!(app.get(open).await.status(), 200, "{open} stays open");
    }
}

async fn sixteen_clients_create_four_hundred_users(db: &TestDb) {
    let app = db.spawn().await;
    let mut clients = Vec::new();
    for client in 0..16 {
        let http = app.client.clone();
        let url = app.url("/users");
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                let r = http
                    .post(&url)
                    .json(&json!({"email": format!("c{client}-{i}@example.com")}))
                    .send()
                    .await
                    .expect("answered");
                assert_eq!(r.status(), 201);
                ids.push(
                    r.json::<Value>().await.unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            ids
        }));
    }
    let mut created = HashSet::new();
    for client in clients {
        for id in client.await.expect("a client task") {
            assert!(created.insert(id), "ids are distinct");
        }
    }
    assert_eq!(created.len(), 400);
    let listed: Value = app.get("/users?limit=1000").await.json().await.unwrap();
    let listed: HashSet<String> = ids_of(&listed).into_iter().collect();
    assert_eq!(listed, created);
}

async fn sixteen_clients_racing_on_one_email_get_one_201(db: &TestDb) {
    let app = db.spawn().await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(16));
    let mut clients = Vec::new();
    for client in 0..16 {
        let http = app.client.clone();
        let url = app.url("/users");
        let barrier = barrier.clone();
        // The same address in sixteen spellings.
        let email = if client % 2 == 0 {
            "Race@Example.com"
        } else {
            "race@example.COM"
        };
        clients.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = http
                .post(&url)
                .json(&json!({"email": email, "surname": client.to_string()}))
                .send()
                .await
                .expect("answered");
            r.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for client in clients {
        statuses.push(client.await.unwrap());
    }
    statuses.sort();
    let mut expected = vec![201];
    expected.extend([409; 15]);
    assert_eq!(statuses, expected);
    let listed: Value = app
        .get("/users?email=RACE@example.com")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(
        app.get("/users")
            .await
            .json::<Value>()
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// SQLite serves reads by id from a cache: however many reads run beside
/// the writes, a read that starts after a write was acknowledged sees it.
async fn every_acknowledged_write_is_read_back_while_readers_hammer(db: &TestDb) {
    let app = std::sync::Arc::new(db.spawn().await);
    let created = create(&app, "cached@example.com").await;
    let id = created.id().to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (app, id, stop) = (app.clone(), id.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, _, _) = fetch(&app, &id).await;
                    assert_eq!(status, 200);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for i in 0..40 {
        let name = format!("Name {i}");
        let r = patch(&app, &id, json!({ "displayName": name })).await;
        assert_eq!(r.status(), 200);
        let etag = header(&r, "etag");
        let (status, read_etag, user) = fetch(&app, &id).await;
        assert_eq!(status, 200);
        assert_eq!(user["displayName"], name, "after write {i}");
        assert_eq!(read_etag.as_deref(), Some(etag.as_str()), "after write {i}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    assert!(reads > 0);
    // And a delete: gone at once.
    let r = app
        .client
        .delete(app.url(&format!("/users/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(fetch(&app, &id).await.0, 404);
}

async fn a_user_is_sent_uncompressed_so_its_strong_etag_names_one_representation(db: &TestDb) {
    let app = db.spawn().await;
    let created = create(&app, "plain@example.com").await;
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = raw
        .get(app.url(&format!("/users/{}", created.id())))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(header(&r, "etag"), created.etag);
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["email"], "plain@example.com");
    // The list carries no ETag: it is still compressed.
    let r = raw
        .get(app.url("/users"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
}

async fn two_writers_with_one_if_match_cannot_both_win(db: &TestDb) {
    let app = db.spawn().await;
    for round in 0..10 {
        let u = create(&app, &format!("r{round}@example.com")).await;
        let path = format!("/users/{}", u.id());
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let mut writers = Vec::new();
        for writer in 0..2 {
            let request = if writer == 0 || round % 2 == 0 {
                send(&app, Method::PATCH, &path, "application/merge-patch+json", &json!({"surname": format!("w{writer}")}))
            } else {
                send(&app, Method::PUT, &path, "application/json", &json!({"email": format!("r{round}@example.com"), "surname": format!("w{writer}")}))
            }
            .header("if-match", &u.etag);
            let barrier = barrier.clone();
            writers.push(tokio::spawn(async move {
                barrier.wait().await;
                let r = request.send().await.expect("answered");
                (r.status().as_u16(), writer)
            }));
        }
        let mut results = Vec::new();
        for w in writers {
            results.push(w.await.unwrap());
        }
        results.sort();
        let statuses: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
        assert_eq!(statuses, [200, 412], "round {round}");
        let winner = results[0].1;
        let (_, _, stored) = fetch(&app, u.id()).await;
        assert_eq!(
            stored["surname"],
            format!("w{winner}"),
            "round {round}: the winner's write stays"
        );
    }
}

async fn a_body_over_the_limit_is_413(db: &TestDb) {
    let app = db.spawn_with(|config| config.body_limit = 1024).await;
    let r = post(
        &app,
        json!({"email":"a@example.com","surname":"x".repeat(2000)}),
    )
    .await;
    assert_problem(r, 413).await;
    assert_eq!(
        app.get("/users").await.json::<Value>().await.unwrap(),
        json!([])
    );
}

async fn readiness_and_metrics_report_the_database(db: &TestDb) {
    let app = db.spawn().await;
    create(&app, "a@example.com").await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status":"UP","checks":{"database":"UP"}})
    );
    let text = app.get("/metrics").await.text().await.unwrap();
    let pool = match db.backend {
        Backend::Sqlite => "sqlite_read",
        Backend::Postgres => "postgres",
    };
    for sample in [
        format!("skiff_db_pool_connections{{pool=\"{pool}\",state=\"idle\"}}"),
        format!("skiff_db_pool_connections{{pool=\"{pool}\",state=\"in_use\"}}"),
        format!("skiff_db_pool_max_connections{{pool=\"{pool}\"}}"),
    ] {
        assert!(text.contains(&sample), "{sample} in\n{text}");
    }
}

async fn two_replicas_share_one_database(db: &TestDb) {
    // Both start (and migrate) at once.
    let (a, b) = tokio::join!(db.spawn(), db.spawn());
    let u = create(&a, "shared@example.com").await;
    assert_eq!(
        fetch(&b, u.id()).await,
        (200, Some(u.etag.clone()), u.user.clone())
    );
    assert_problem(post(&b, json!({"email":"SHARED@example.com"})).await, 409).await;
    let path = format!("/users/{}", u.id());
    let r = send(
        &b,
        Method::PATCH,
        &path,
        "application/merge-patch+json",
        &json!({"surname":"B"}),
    )
    .header("if-match", &u.etag)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = send(
        &a,
        Method::PATCH,
        &path,
        "application/merge-patch+json",
        &json!({"surname":"A"}),
    )
    .header("if-match", &u.etag)
    .send()
    .await
    .unwrap();
    assert_problem(r, 412).await;
    assert_eq!(fetch(&a, u.id()).await.2["surname"], "B");
}

#[tokio::test]
async fn an_in_memory_sqlite_database_works() {
    let (mut config, dir) = crate::support::test_config();
    config.database_url = "sqlite::memory:".into();
    let app = crate::support::spawn_with(config, dir).await;
    let u = create(&app, "mem@example.com").await;
    assert_eq!(fetch(&app, u.id()).await.0, 200);
    let r = patch(&app, u.id(), json!({"surname":"M"})).await;
    assert_eq!(r.status(), 200);
    let listed: Value = app.get("/users").await.json().await.unwrap();
    assert_eq!(listed[0]["surname"], "M");
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert_eq!(
        std::fs::read_dir(app.dir.path()).unwrap().count(),
        0,
        "no file is written"
    );
}

/// The OpenAPI document covers every users route, status and schema.
#[tokio::test]
async fn the_openapi_document_covers_the_users_api() {
    let doc: Value = serde_json::from_str(&skiff::http::openapi::document_json()).unwrap();
    let expect = [
        ("/users", "get", &["200", "400", "401"][..]),
        (
            "/users",
            "post",
            &["201", "400", "401", "409", "413", "415", "422"],
        ),
        ("/users/{id}", "get", &["200", "304", "401", "404"]),
        (
            "/users/{id}",
            "put",
            &[
                "200", "400", "401", "404", "409", "412", "413", "415", "422",
            ],
        ),
        (
            "/users/{id}",
            "patch",
            &[
                "200", "400", "401", "404", "409", "412", "413", "415", "422",
            ],
        ),
        ("/users/{id}", "delete", &["204", "401", "404", "412"]),
        ("/", "get", &["200", "304", "401", "404"]),
        (
            "/",
            "post",
            &["201", "400", "401", "409", "413", "415", "422"],
        ),
        (
            "/",
            "put",
            &[
                "200", "400", "401", "404", "409", "412", "413", "415", "422",
            ],
        ),
        ("/", "delete", &["204", "400", "401", "404", "412"]),
    ];
    for (path, method, statuses) in expect {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is documented");
        let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
        assert_eq!(documented, statuses.to_vec(), "{method} {path}");
    }
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["User"]["example"].is_object() || schemas["User"]["examples"].is_array());
    assert_eq!(schemas["UserInput"]["required"], json!(["email"]));
    assert_eq!(schemas["UserInput"]["additionalProperties"], false);
    assert_eq!(
        schemas["UserInput"]["properties"]["email"]["pattern"],
        skiff::db::model::EMAIL_PATTERN
    );
    assert!(doc["components"]["securitySchemes"]["basic"].is_object());
    let patch_types = doc["paths"]["/users/{id}"]["patch"]["requestBody"]["content"]
        .as_object()
        .unwrap();
    assert!(patch_types.contains_key("application/merge-patch+json"));
    assert!(patch_types.contains_key("application/json"));
}

#[test]
fn test_database_names_are_swapped_into_server_urls() {
    assert_eq!(
        crate::support::backends::with_database("postgres://u:p@127.0.0.1:5432/postgres", "t1"),
        "postgres://u:p@127.0.0.1:5432/t1"
    );
    assert_eq!(
        crate::support::backends::with_database("postgres://u@h:1/postgres?sslmode=disable", "t1"),
        "postgres://u@h:1/t1?sslmode=disable"
    );
    assert_eq!(
        crate::support::backends::with_database("postgres://h", "t1"),
        "postgres://h/t1"
    );
}

/// PostgreSQL refuses NUL in text (SQLite does not): whatever the back end,
/// request text that no user can hold gets the same clear answer, never a
/// 500. An email with a control character is no address, so an `?email=`
/// filter with one matches no one.
async fn text_postgresql_cannot_store_gets_the_same_answer_on_both(db: &TestDb) {
    let app = db.spawn().await;
    let ids = create_many(&app, "nul", 2).await;
    for email in [
        "%00",
        "a%00b%40x.io",
        "nul0%40example.com%00",
        "%00nul0%40example.com",
        // Invalid UTF-8 (an overlong NUL, a UTF-16 surrogate), decoded lossily.
        "%C0%80",
        "nul0%40example.com%ED%A0%80",
        "%01%1F%7F",
    ] {
        let r = app.get(&format!("/users?email={email}")).await;
        assert_eq!(r.status(), 200, "?email={email}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!([]),
            "?email={email}"
        );
    }
    for query in ["after=%00", "after=00000000-0000-0000-0000-00000000000%00"] {
        assert_problem(app.get(&format!("/users?{query}")).await, 400).await;
    }
    for path in ["/users/%00", "/?id=%00", "/users/a%00b"] {
        assert_problem(app.get(path).await, 404).await;
    }
    let id = &ids[0];
    for (method, path) in [
        (Method::POST, "/users".to_string()),
        (Method::PUT, format!("/users/{id}")),
        (Method::PATCH, format!("/users/{id}")),
    ] {
        for (field, value) in [
            ("email", "a\u{0}b@x.io"),
            ("email", "nul9@example.com\u{0}"),
            ("displayName", "\u{0}"),
            ("givenName", "Ada\u{0}"),
            ("surname", "\u{0}Lovelace"),
            ("companyName", "A\u{0}E"),
        ] {
            let mut body = json!({"email": "nul9@example.com"});
            body[field] = Value::from(value);
            let r = send(&app, method.clone(), &path, "application/json", &body)
                .send()
                .await
                .unwrap();
            let problem = assert_problem(r, 422).await;
            assert_eq!(fields(&problem), [field], "{method} {path} {body}");
        }
        // Lone UTF-16 surrogates are no text at all: malformed JSON.
        for raw in [
            r#"{"email":"a\ud800@x.io"}"#,
            r#"{"email":"nul9@example.com","surname":"\udc00"}"#,
        ] {
            let r = app
                .client
                .request(method.clone(), app.url(&path))
                .header("content-type", "application/json")
                .body(raw)
                .send()
                .await
                .unwrap();
            assert_problem(r, 400).await;
        }
    }
    // Nothing was stored or changed.
    let all: Value = app.get("/users").await.json().await.unwrap();
    assert_eq!(ids_of(&all), ids);
    assert_eq!(all[0]["email"], "nul0@example.com");
}
