//! Emails are unique under Unicode case folding (issue 17), on both back
//! ends, and a database made before that keeps every account when migrated.

use crate::support::backends::*;
use crate::support::{TestApp, assert_problem};
use serde_json::{Value, json};

both_backends!(
    each_twin_of_a_taken_email_is_409,
    the_email_filter_finds_a_user_by_any_twin_form,
    twins_made_before_case_folding_both_survive_the_migration,
    rekeying_covers_every_row_across_batches,
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

/// Makes `db` a database at the first migration holding `emails`, keyed
/// as then (lower-cased), and gives their ids in creation order.
async fn at_first_migration(db: &TestDb, emails: &[&str]) -> Vec<uuid::Uuid> {
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
    let ids: Vec<uuid::Uuid> = emails.iter().map(|_| uuid::Uuid::now_v7()).collect();
    let distinct = "distinct lower-casings were distinct keys";
    match db.backend {
        Backend::Sqlite => {
            let options = db
                .url
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .unwrap()
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            migrator.run(&pool).await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            for (id, email) in ids.iter().zip(emails) {
                sqlx::query(
                    "INSERT INTO users (id, email, email_key, created_at, updated_at) \
                     VALUES (?, ?, ?, 0, 0)",
                )
                .bind(id)
                .bind(email)
                .bind(email.to_lowercase())
                .execute(&mut *tx)
                .await
                .expect(distinct);
            }
            tx.commit().await.unwrap();
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            migrator.run(&pool).await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            for (id, email) in ids.iter().zip(emails) {
                sqlx::query(
                    "INSERT INTO users (id, email, email_key, created_at, updated_at) \
                     VALUES ($1, $2, $3, 0, 0)",
                )
                .bind(id)
                .bind(email)
                .bind(email.to_lowercase())
                .execute(&mut *tx)
                .await
                .expect(distinct);
            }
            tx.commit().await.unwrap();
            pool.close().await;
        }
    }
    ids
}

/// A database at the first migration, with accounts whose emails were
/// distinct when keys were lower-casings and are twins now.
async fn twins_made_before_case_folding_both_survive_the_migration(db: &TestDb) {
    let pairs = [("ΑΣ@x.gr", "Ασ@x.gr"), ("straße@x.de", "STRASSE@x.de")];
    let emails: Vec<&str> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    let ids: Vec<(uuid::Uuid, &str)> = at_first_migration(db, &emails)
        .await
        .into_iter()
        .zip(emails.iter().copied())
        .collect();

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

/// More rows than one re-keying batch (1,000), most of them ASCII (their
/// keys stay: only the version changes) and every tenth one a form whose
/// key changes. After serving, each is found by its folded form and no
/// row is left with an old key.
async fn rekeying_covers_every_row_across_batches(db: &TestDb) {
    let emails: Vec<String> = (0..2_345)
        .map(|i| match i % 10 {
            0 => format!("STRAßE{i}@x.de"),
            _ => format!("User{i}@x.org"),
        })
        .collect();
    let refs: Vec<&str> = emails.iter().map(String::as_str).collect();
    let ids = at_first_migration(db, &refs).await;

    let app = db.spawn().await;
    for i in [0, 1, 999, 1_000, 1_001, 1_990, 2_000, 2_344] {
        let folded = refs[i].replace('ß', "ss").to_uppercase();
        let found = list(&app, &folded).await;
        assert_eq!(found.len(), 1, "?email={folded} finds row {i}");
        assert_eq!(found[0]["id"], ids[i].to_string());
        assert_eq!(found[0]["email"], refs[i], "stored as sent");
    }
    app.shutdown().await.unwrap();

    let stale = "SELECT COUNT(*) FROM users WHERE email_key_version < 2";
    let left: i64 = match db.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            sqlx::query_scalar(stale).fetch_one(&pool).await.unwrap()
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            sqlx::query_scalar(stale).fetch_one(&pool).await.unwrap()
        }
    };
    assert_eq!(left, 0, "every row has the current key version");
}
