//! Client secrets, admin credentials and access tokens never appear in a log line or in any
//! GET response. This file is its own test binary so it can own the process's log subscriber.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use reqwest::Method;
use scopecast_tests::{TestBroker, test_config};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_and_tokens_never_reach_logs_or_get_responses() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug,scopecast_broker=trace")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let broker = TestBroker::start(test_config()).await;
    let app = broker.create_app("Logged", "subscribe:adt.>").await;
    let client = app.non_production.clone();
    broker.activate(&client.client_id).await;
    let token = broker.token(&client, None).await;
    // Failures log too: a wrong secret, and a secret sent as a POST parameter.
    broker
        .token_request(
            &[("grant_type", "client_credentials")],
            Some((&client.client_id, "wrong-secret-value")),
        )
        .await;
    broker
        .token_request(
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &client.client_id),
                ("client_secret", &client.secret),
            ],
            None,
        )
        .await;
    let rotated = broker
        .admin(
            Method::POST,
            &format!("/clients/{}/rotate-secret", client.client_id),
            None,
        )
        .await;
    let new_secret = rotated.body["client_secret"].as_str().unwrap().to_owned();

    let mut gets = Vec::new();
    for path in [
        "/applications".to_owned(),
        format!("/applications/{}", app.id),
        format!("/clients/{}", client.client_id),
        "/audit".to_owned(),
    ] {
        gets.push(
            broker
                .admin(Method::GET, &path, None)
                .await
                .body
                .to_string(),
        );
    }
    let admin_token = broker.admin_token().to_owned();
    broker.stop().await.unwrap();

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("issued an access token"), "the capture works");
    let secrets = [
        ("client secret", client.secret.as_str()),
        ("production secret", app.production.secret.as_str()),
        ("rotated secret", new_secret.as_str()),
        ("wrong secret", "wrong-secret-value"),
        ("admin credential", admin_token.as_str()),
        ("access token", token.as_str()),
    ];
    for (what, secret) in secrets {
        assert!(!logs.contains(secret), "{what} found in the logs");
        for body in &gets {
            assert!(!body.contains(secret), "{what} found in a GET response");
        }
    }
    for body in &gets {
        assert!(
            !body.contains("$argon2"),
            "a secret hash in a GET response: {body}"
        );
    }
}
