//! `GET /time`: the default zone, any IANA zone, and a configured default.

use crate::support::{assert_problem, spawn, spawn_with, test_config};

#[tokio::test]
async fn time_defaults_to_tokyo_and_takes_any_iana_zone() {
    let app = spawn().await;
    let body: serde_json::Value = app.get("/time").await.json().await.unwrap();
    assert_eq!(body["timeZone"], "Asia/Tokyo");
    assert_eq!(body["utcOffset"], "+09:00");
    assert_eq!(body["abbreviation"], "JST");
    let time = body["time"].as_str().unwrap();
    assert!(time.ends_with("+09:00") && time.len() == 29, "{time}");
    let parsed: jiff::Timestamp = time.parse().unwrap();
    let skew = jiff::Timestamp::now().duration_since(parsed).abs();
    assert!(skew < jiff::SignedDuration::from_secs(60), "{time} is now");

    let body: serde_json::Value = app
        .get("/time?tz=America/New_York")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["timeZone"], "America/New_York");
    assert!(["EST", "EDT"].contains(&body["abbreviation"].as_str().unwrap()));

    let problem = assert_problem(app.get("/time?tz=Mars/Olympus_Mons").await, 400).await;
    assert_eq!(problem["errors"][0]["field"], "tz");
}

#[tokio::test]
async fn time_zone_default_follows_the_configuration() {
    let (mut config, dir) = test_config();
    config.time_zone = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
    config.time_zone_name = "Europe/Paris".into();
    let app = spawn_with(config, dir).await;
    let body: serde_json::Value = app.get("/time").await.json().await.unwrap();
    assert_eq!(body["timeZone"], "Europe/Paris");
}
