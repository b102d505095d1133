//! Emails are unique under Unicode case folding (issue 17), on both back
//! ends, and a database made before that keeps every account when migrated.

use crate::support::backends::*;
use crate::support::{TestApp, assert_problem};
use serde_json::{Value, json};

both_backends!(
    each_twin_of_a_taken_email_is_409,
    the_email_filter_finds_a_user_by_any_twin_form,
    twins_made_before_case_folding_both_survive_the_migration,
);

/// Pairs that differ only by case or compatibility form; the second of
/// each pair is the same email as the first.
const TWINS: &[(&str, &str)] = &[
    ("ΑΣ@x.gr", "Ασ@x.gr"),
    ("STRASSE@x.de", "straße@x.de"),
    ("ſ@x.org", "s@x.org"),
    ("Μ2@x.org", "µ2@x.org"),
    ("ＡＤＡ@x.jp", "ada@x.jp"),
    ("e\u{301}@x.fr", "é@x.fr"),
];

async fn list(app: &TestApp, email: &str) -> Vec<Value> {
    let r = app
        .client
        .get(app.url("/users"))
        .query(&[("email", email)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn each_twin_of_a_taken_email_is_409(db: &TestDb) {
    let app = db.spawn().await;
    for (first, second) in TWINS {
        create(&app, first).await;
        let r = post(&app, json!({ "email": second })).await;
        assert_problem(r, 409).await;
    }
    // Changing another user's email to a twin is refused as well.
    let other = create(&app, "other@x.org").await;
    let r = patch(&app, other.id(), json!({"email":"ΑΣ@X.GR"})).await;
    assert_problem(r, 409).await;
    let r = patch(&app, other.id(), json!({"email":"ſtrasse@x.de"})).await;
    assert_problem(r, 409).await;
}

async fn the_email_filter_finds_a_user_by_any_twin_form(db: &TestDb) {
    let app = db.spawn().await;
    for (first, second) in TWINS {
        let user = create(&app, first).await;
        for form in [first, second] {
            let found = list(&app, form).await;
            assert_eq!(found.len(), 1, "{form}");
            assert_eq!(found[0]["id"], user.user["id"], "{form}");
            assert_eq!(found[0]["email"], *first, "stored as sent");
        }
    }
}

/// A database at the first migration, with accounts whose emails were
/// distinct when keys were lower-casings and are twins now.
async fn twins_made_before_case_folding_both_survive_the_migration(db: &TestDb) {
    let pairs = [("ΑΣ@x.gr", "Ασ@x.gr"), ("straße@x.de", "STRASSE@x.de")];
    let mut ids = Vec::new();
    {
        let migrations = tempfile::tempdir().unwrap();
        let backend = match db.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        let first = format!(
            "{}/migrations/{backend}/0001_create_users.sql",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::copy(&first, migrations.path().join("0001_create_users.sql")).unwrap();
        let migrator = sqlx::migrate::Migrator::new(migrations.path())
            .await
            .unwrap();
        let insert = |id: uuid::Uuid, email: &str| {
            let sql = match db.backend {
                Backend::Sqlite => {
                    "INSERT INTO users (id, email, email_key, created_at, updated_at) \
                     VALUES (?, ?, ?, 0, 0)"
                }
                Backend::Postgres => {
                    "INSERT INTO users (id, email, email_key, created_at, updated_at) \
                     VALUES ($1, $2, $3, 0, 0)"
                }
            };
            (sql, id, email.to_owned(), email.to_lowercase())
        };
        let mut rows = Vec::new();
        for (a, b) in pairs {
            for email in [a, b] {
                let id = uuid::Uuid::now_v7();
                ids.push((id, email));
                rows.push(insert(id, email));
            }
        }
        match db.backend {
            Backend::Sqlite => {
                let options = db
                    .url
                    .parse::<sqlx::sqlite::SqliteConnectOptions>()
                    .unwrap()
                    .create_if_missing(true);
                let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
                migrator.run(&pool).await.unwrap();
                for (sql, id, email, key) in rows {
                    sqlx::query(sql)
                        .bind(id)
                        .bind(email)
                        .bind(key)
                        .execute(&pool)
                        .await
                        .expect("distinct lower-casings were distinct keys");
                }
                pool.close().await;
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                migrator.run(&pool).await.unwrap();
                for (sql, id, email, key) in rows {
                    sqlx::query(sql)
                        .bind(id)
                        .bind(email)
                        .bind(key)
                        .execute(&pool)
                        .await
                        .expect("distinct lower-casings were distinct keys");
                }
                pool.close().await;
            }
        }
    }

    // Serving migrates and re-keys.
    let app = db.spawn().await;
    for (id, email) in &ids {
        let (status, _, user) = fetch(&app, &id.to_string()).await;
        assert_eq!(status, 200, "{email} survived");
        assert_eq!(user["email"], *email, "{email} unchanged");
    }
    for (a, b) in pairs {
        for form in [a, b, &a.to_uppercase()] {
            let found = list(&app, form).await;
            let emails: Vec<&str> = found.iter().map(|u| u["email"].as_str().unwrap()).collect();
            assert_eq!(emails, [a, b], "?email={form} finds both twins");
        }
        // A third one is refused.
        let r = post(&app, json!({ "email": a.to_lowercase() })).await;
        assert_problem(r, 409).await;
    }
    // A twin can still be written in full (PUT repeats its own email) and
    // can move to a free email, which frees nothing of the other twin's.
    let (id, email) = ids[1];
    let r = put(&app, &id.to_string(), json!({ "email": email })).await;
    assert_eq!(r.status(), 200, "a twin can PUT its own email");
    let r = patch(&app, &id.to_string(), json!({"email":"moved@x.gr"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(list(&app, "ασ@x.gr").await.len(), 1);
    // Serving again re-keys nothing and loses nothing.
    app.shutdown().await.unwrap();
    let app = db.spawn().await;
    for (id, _) in &ids {
        assert_eq!(fetch(&app, &id.to_string()).await.0, 200);
    }
}
