//! The broker starts on port 0, answers health checks, and stops by itself.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use scopecast_tests::{TestBroker, WAIT, test_config};

#[tokio::test]
async fn healthz_and_readyz_answer_while_running() {
    let mut config = test_config();
    config.environment_name = "test-ward".to_owned();
    let broker = TestBroker::start(config).await;
    let http = reqwest::Client::new();
    let health = tokio::time::timeout(WAIT, http.get(broker.http_url("/healthz")).send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok");

    let ready = http.get(broker.http_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["environment"], "non-production");
    assert_eq!(body["environment_name"], "test-ward");
    assert_eq!(body["env"], "non-production/test-ward");
    // The same in the metrics, and in the access tokens this environment issues.
    let metrics = broker.metrics().await;
    assert!(
        metrics.contains(
            r#"scopecast_environment_info{env="non-production/test-ward",kind="non-production",name="test-ward"} 1"#
        ),
        "{metrics}"
    );
    let client = broker.active_client("Env", "subscribe:adt.>").await;
    let token = broker.token(&client, None).await;
    assert_eq!(
        TestBroker::claims_of(&token)["env"],
        "non-production/test-ward"
    );
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_paths_get_a_json_404() {
    let broker = TestBroker::start(test_config()).await;
    let resp = reqwest::get(broker.http_url("/nope")).await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    assert!(body["message"].is_string());
}

#[tokio::test]
async fn first_start_creates_the_data_folder_and_shutdown_stops_the_listener() {
    let broker = TestBroker::start(test_config()).await;
    let addr = broker.addr();
    // The data folder exists once the broker answers.
    reqwest::get(broker.http_url("/healthz")).await.unwrap();
    assert!(broker.data_dir().is_dir());
    broker.stop().await.unwrap();
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "listener still open after shutdown");
}
