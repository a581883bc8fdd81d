//! Interop with clients not written here: Python's authlib gets a token by `private_key_jwt`,
//! and PyJWT verifies it against our JWK Set. `.ci/run` installs both (`pip install authlib
//! pyjwt cryptography requests`).

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
