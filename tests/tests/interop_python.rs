//! Interop with software not written here: Python's authlib gets a token by `private_key_jwt`
//! and PyJWT verifies it against our JWK Set; Python's `websockets` subscribes, receives, and is
//! refused. `.ci/run` installs them from `tests/python/requirements.txt`.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use reqwest::Method;
use scopecast_tests::keys::TestKey;
use scopecast_tests::{TestBroker, test_config};
use serde_json::{Value, json};

#[tokio::test]
async fn authlib_private_key_jwt_token_verifies_with_pyjwt() {
    let broker = TestBroker::start(test_config()).await;
    let client = broker
        .active_client("Python interop", "subscribe:fhir.> publish:lab.*")
        .await;
    let key = TestKey::es256("py-1");
    let a = broker
        .admin(
            Method::PUT,
            &format!("/clients/{}/keys", client.client_id),
            Some(json!({"jwks": key.jwks()})),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("client.pem");
    std::fs::write(&pem, &key.pem).unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/oauth_interop.py");
    let url = broker.base_url();
    let client_id = client.client_id.clone();
    let pem_path = pem.display().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([
                script,
                "--url",
                &url,
                "--client-id",
                &client_id,
                "--private-key",
                &pem_path,
                "--kid",
                "py-1",
            ])
            .args(["--scope", "subscribe:fhir.encounter.>"])
            .output()
    })
    .await
    .unwrap()
    .expect("python3 must be installed (see .ci/run)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python interop script failed:\n{stderr}"
    );
    let line: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    assert_eq!(line["ok"], true);
    assert_eq!(line["scope"], "subscribe:fhir.encounter.>");
    assert_eq!(line["token_type"], "Bearer");
}

#[tokio::test]
async fn python_websockets_client_subscribes_receives_and_is_refused() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let broker = TestBroker::start(test_config()).await;
    let sub = broker
        .active_client("Python subscriber", "subscribe:adt.>")
        .await;
    let publisher = broker
        .active_client("Rust publisher", "publish:adt.>")
        .await;
    let token = broker.token(&sub, None).await;
    let pub_token = broker.token(&publisher, None).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/ws_interop.py");
    let mut child = tokio::process::Command::new("python3")
        .args([
            script,
            "--url",
            &broker.ws_url("/v1/stream"),
            "--token",
            &token,
            "--allowed",
            "adt.>",
            "--forbidden",
            "lab.>",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 must be installed (see .ci/run)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(scopecast_tests::WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    if ready.as_deref() != Some("READY") {
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "the Python client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let a = broker
        .publish_http(
            &pub_token,
            "adt.patient.admitted",
            &json!({"resourceType": "Encounter"}),
        )
        .await;
    assert_eq!(a.status, 201);
    let summary = tokio::time::timeout(scopecast_tests::WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let status = child.wait().await.unwrap();
    assert!(status.success());
    let v: Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(v["welcome_client_id"], sub.client_id.as_str());
    assert_eq!(v["refused"]["error"], "insufficient_scope");
    assert_eq!(v["refused"]["required_scope"], "subscribe:lab.>");
    assert_eq!(v["event"]["topic"], "adt.patient.admitted");
    assert_eq!(v["event"]["data"]["resourceType"], "Encounter");
}
