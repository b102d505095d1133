//! The users API on a table of 20,000 users, on both back ends: ordering
//! and cursors across many pages, reads by id and email lookups ignoring
//! case, each checked against what the creates answered. Correctness only,
//! no timings (the figures are bench/run scale's).

use std::collections::HashSet;

use crate::support::TestApp;
use crate::support::backends::*;
use serde_json::{Value, json};
use skiff::db::{Email, Millis, Name, User, UserFields};
use sqlx::Connection;

both_backends!(a_table_of_twenty_thousand_users_pages_reads_and_finds_every_one);

const USERS: usize = 20_000;

/// `Scale-{i}@Example.COM`: emails in mixed case.
fn email(i: usize) -> String {
    format!("Scale-{i}@Example.COM")
}

/// The columns of a user, in the order both inserts bind them.
const INSERT_COLUMNS: &str = "id, email, email_key, account_enabled, display_name, given_name, \
     surname, company_name, version, created_at, updated_at";

/// Inserts users 0..n straight into the database (through the API they
/// took minutes in a debug build on a busy machine), with the email key
/// skiff itself computes, and returns them as the API shows a user, in id
/// (creation) order.
async fn insert_all(db: &TestDb, n: usize) -> Vec<Value> {
    let users: Vec<User> = (0..n)
        .map(|i| {
            let mut fields = UserFields::with_email(Email::parse(&email(i)).unwrap());
            fields.display_name = Name::parse(&format!("User {i}")).unwrap();
            User::new(fields, Millis::now())
        })
        .collect();
    macro_rules! insert {
        ($conn:expr, $sql:expr) => {{
            let mut tx = $conn.begin().await.unwrap();
            for u in &users {
                sqlx::query(sqlx::AssertSqlSafe($sql.clone()))
                    .bind(u.id.as_uuid())
                    .bind(u.email.as_str())
                    .bind(u.email.key())
                    .bind(u.account_enabled)
                    .bind(u.display_name.as_str())
                    .bind(u.given_name.as_str())
                    .bind(u.surname.as_str())
                    .bind(u.company_name.as_str())
                    .bind(u.version)
                    .bind(u.created_at.as_millis())
                    .bind(u.updated_at.as_millis())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
        }};
    }
    match db.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            let sql =
                format!("INSERT INTO users ({INSERT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)");
            insert!(conn, sql);
            conn.close().await.unwrap();
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            let sql = format!(
                "INSERT INTO users ({INSERT_COLUMNS}) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)"
            );
            insert!(conn, sql);
            conn.close().await.unwrap();
        }
    }
    let mut users: Vec<Value> = users
        .iter()
        .map(|u| serde_json::to_value(u).unwrap())
        .collect();
    users.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    users
}

/// Walks every page of `/users?limit={limit}` from `after` through its
/// `Link` headers, returning the users and the number of pages.
async fn walk(app: &TestApp, limit: usize, after: Option<&str>) -> (Vec<Value>, usize) {
    let mut next = Some(match after {
        Some(id) => format!("/users?limit={limit}&after={id}"),
        None => format!("/users?limit={limit}"),
    });
    let (mut seen, mut pages) = (Vec::new(), 0);
    while let Some(path) = next {
        let r = app.get(&path).await;
        assert_eq!(r.status(), 200, "{path}");
        let link = r
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned());
        let page: Vec<Value> = serde_json::from_value(r.json().await.unwrap()).unwrap();
        assert!(page.len() <= limit, "{path}: {} users", page.len());
        next = link.map(|l| {
            let last = page.last().expect("a page with a next link is not empty")["id"]
                .as_str()
                .unwrap();
            assert_eq!(
                l,
                format!("</users?limit={limit}&after={last}>; rel=\"next\"")
            );
            format!("/users?limit={limit}&after={last}")
        });
        seen.extend(page);
        pages += 1;
    }
    (seen, pages)
}

async fn a_table_of_twenty_thousand_users_pages_reads_and_finds_every_one(db: &TestDb) {
    // The server migrates; the users go in beside it before any read, so
    // none can be in its read cache.
    let app = db.spawn().await;
    let users = insert_all(db, USERS).await;
    let ids: Vec<&str> = users.iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        USERS,
        "distinct ids"
    );

    // Every user once, in id order, whatever the page size; a full last
    // page has no next link only when nothing follows.
    for (limit, pages) in [(1000, 20), (333, USERS.div_ceil(333))] {
        let (seen, walked) = walk(&app, limit, None).await;
        assert_eq!(walked, pages, "limit {limit}");
        assert!(seen == users, "limit {limit}: every user once, as created");
    }
    // A cursor in the middle of the table starts right after it.
    for start in [0, 1, 9_999, USERS - 2] {
        let (seen, _) = walk(&app, 1000, Some(ids[start])).await;
        assert!(seen == users[start + 1..], "after user {start}");
    }
    let (rest, pages) = walk(&app, 1000, Some(ids[USERS - 1])).await;
    assert!(rest.is_empty() && pages == 1, "nothing after the last user");

    // Reads by id and lookups by email (any case) across the table find
    // exactly the user created.
    let step = 97;
    for i in (0..USERS).step_by(step) {
        let user = &users[i];
        let (status, _, body) = fetch(&app, ids[i]).await;
        assert_eq!(status, 200);
        assert_eq!(&body, user);
        let stored = user["email"].as_str().unwrap();
        for asked in [stored.to_lowercase(), stored.to_uppercase()] {
            let r = app.get(&format!("/users?email={asked}")).await;
            assert_eq!(r.status(), 200);
            let found: Value = r.json().await.unwrap();
            assert_eq!(found, json!([user]), "?email={asked}");
        }
    }
    // A near miss finds nobody; a taken email in another case is refused.
    let r = app.get("/users?email=scale-20000@example.com").await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]));
    let r = post(&app, json!({"email": "SCALE-12345@example.com"})).await;
    assert_eq!(r.status(), 409);
}
