//! The log lines an operator needs to see why a client fails, at `info`, with the client ID
//! and the peer's address: a refused token request, a refused upgrade with its reason, a
//! session opened and closed with its close code, and an abrupt disconnect told apart from a
//! protocol error. This file is its own test binary so it can own the process's log
//! subscriber.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scopecast_tests::ws::Ws;
use scopecast_tests::{TestBroker, test_config};
use tokio::io::AsyncWriteExt;

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

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits until a line contains every one of `parts`; returns it.
    async fn line_with(&self, parts: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self
                .text()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.to_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {parts:?} in:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn refusals_sessions_and_abrupt_disconnects_are_logged_at_info_with_client_and_peer() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let broker = TestBroker::start(test_config()).await;
    let client = broker.active_client("Logged", "subscribe:adt.>").await;

    // A token request with a wrong secret: the claimed client ID and the peer.
    broker
        .token_request(
            &[("grant_type", "client_credentials")],
            Some((&client.client_id, "wrong-secret")),
        )
        .await;
    let line = capture
        .line_with(&["token request refused", &client.client_id])
        .await;
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    assert!(line.contains("error=\"invalid_client\""), "{line}");
    assert!(!line.contains("wrong-secret"), "{line}");

    // An upgrade refused for its token, and one that is no upgrade at all.
    let forged = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln";
    let _ = Ws::try_connect(&broker, Some(forged), "/v1/stream").await;
    let line = capture
        .line_with(&["request refused", "unknown_issuer"])
        .await;
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    let plain = reqwest::get(broker.http_url("/v1/stream")).await.unwrap();
    assert_eq!(plain.status(), 400);
    let body: serde_json::Value = plain.json().await.unwrap();
    assert_eq!(body["reason"], "upgrade_required", "{body}");
    capture
        .line_with(&["upgrade refused", "upgrade_required", "peer=127.0.0.1:"])
        .await;

    // A session opened and closed by the client with 1000.
    let token = broker.token(&client, None).await;
    let (mut ws, welcome) = Ws::connect(&broker, &token).await;
    let session = welcome["session"].as_str().unwrap().to_owned();
    let opened = capture
        .line_with(&["session opened", &format!("session={session}")])
        .await;
    assert!(opened.contains(&client.client_id), "{opened}");
    assert!(opened.contains("peer=127.0.0.1:"), "{opened}");
    ws.close().await;
    let closed = capture
        .line_with(&["session closed", &format!("session={session}")])
        .await;
    assert!(closed.contains("close_code=1000"), "{closed}");
    assert!(closed.contains("closed_by=\"client\""), "{closed}");

    // The SDK closes with 1000 when told to (the CLI does when it finishes).
    let sdk = scopecast_client::ConnectOptions::new()
        .token(&token)
        .connect(&broker.base_url())
        .await
        .unwrap();
    let sdk_session = broker
        .admin(reqwest::Method::GET, "/sessions", None)
        .await
        .body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session"].as_str().unwrap().to_owned())
        .max_by_key(|s| u64::from_str_radix(s, 16).unwrap())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), sdk.close())
        .await
        .unwrap();
    let closed = capture
        .line_with(&["session closed", &format!("session={sdk_session}")])
        .await;
    assert!(
        closed.contains("close_code=1000") && closed.contains("closed_by=\"client\""),
        "{closed}"
    );

    // A client that drops TCP without a close frame: an abrupt disconnect, not a 1002.
    let (ws2, welcome2) = Ws::connect(&broker, &token).await;
    let session2 = welcome2["session"].as_str().unwrap().to_owned();
    let mut tcp = ws2.into_tcp();
    tcp.shutdown().await.unwrap();
    drop(tcp);
    let abrupt = capture
        .line_with(&["session closed", &format!("session={session2}")])
        .await;
    assert!(abrupt.contains("abrupt disconnect"), "{abrupt}");
    assert!(!abrupt.contains("1002"), "{abrupt}");
}
