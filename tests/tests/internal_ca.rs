//! The SDK against a broker whose certificate comes from a hospital's own CA: a root, an
//! intermediate and a server certificate for `localhost`, made by the test, the broker serving
//! the server certificate and the intermediate. Without the CA, tokens and the WebSocket fail
//! with a typed error that says what to do; with it (one `TlsConfig`), tokens, the WebSocket
//! and the history endpoint all work; a broker serving the CA certificate itself is named.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use scopecast_broker::Config;
use scopecast_client::{
    CertificateError, ConnectError, ConnectOptions, Item, TlsConfig, TokenError, TokenSource,
};
use scopecast_tests::pki::InternalPki;
use scopecast_tests::{TestBroker, WAIT, test_config};
use serde_json::json;
use tokio::time::timeout;

/// The test configuration, serving the server certificate and the intermediate.
fn tls_config(pki: &InternalPki) -> Config {
    let mut config = test_config();
    config.tls.cert_file = Some(pki.chain_file.clone());
    config.tls.key_file = Some(pki.key_file.clone());
    config
}

async fn next(events: &mut scopecast_client::Subscription) -> scopecast_client::protocol::Event {
    match timeout(WAIT, events.next()).await.unwrap() {
        Some(Item::Event(e)) => e,
        other => panic!("{other:?}"),
    }
}

fn is_unknown_issuer(e: &TokenError) -> bool {
    matches!(
        e,
        TokenError::Certificate {
            source: CertificateError::UnknownIssuer(_),
            ..
        }
    )
}

#[tokio::test]
async fn without_the_hospital_ca_tokens_and_the_websocket_fail_saying_how_to_trust_it() {
    let pki = InternalPki::new();
    let broker = TestBroker::start_tls(tls_config(&pki), &pki.root_pem).await;
    let base = broker.base_url();
    let client = broker.active_client("Ward Board", "subscribe:adt.>").await;
    let tokens = TokenSource::client_secret(&base, &client.client_id, &client.secret);

    // The token endpoint.
    let err = timeout(WAIT, tokens.fetch()).await.unwrap().unwrap_err();
    assert!(is_unknown_issuer(&err), "{err:?}");
    assert!(!err.is_permanent(), "a certificate can be replaced");
    let message = err.to_string();
    assert!(
        message.contains("signed by a CA this client does not trust")
            && message.contains("--cacert FILE")
            && message.contains("ConnectOptions::add_root_certificates"),
        "{message}"
    );

    // Connecting gets its token first: the same error, inside `ConnectError::Token`.
    let connecting = ConnectOptions::new()
        .reconnect(false)
        .token_source(tokens)
        .connect(&base);
    match timeout(WAIT, connecting).await.unwrap() {
        Err(ConnectError::Token(e)) => assert!(is_unknown_issuer(&e), "{e:?}"),
        other => panic!("{other:?}"),
    }

    // With a ready token, the WebSocket's own handshake is refused.
    let token = broker.token(&client, None).await;
    let connecting = ConnectOptions::new()
        .reconnect(false)
        .token(&token)
        .connect(&base);
    match timeout(WAIT, connecting).await.unwrap() {
        Err(ConnectError::Certificate(e @ CertificateError::UnknownIssuer(_))) => {
            assert!(
                e.to_string().contains("add it to the system trust store"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn with_the_hospital_root_ca_tokens_the_websocket_and_history_all_work() {
    let pki = InternalPki::new();
    let broker = TestBroker::start_tls(tls_config(&pki), &pki.root_pem).await;
    let base = broker.base_url();
    let reader = broker.active_client("Ward Board", "subscribe:adt.>").await;
    let feed = broker.active_client("ADT Feed", "publish:adt.>").await;

    // A token source of its own, trusting the CA given as PEM bytes.
    let tls = TlsConfig::new()
        .add_root_certificates_pem(pki.root_pem.as_bytes())
        .unwrap();
    let tokens = TokenSource::client_secret(&base, &reader.client_id, &reader.secret).with_tls(tls);
    let token = timeout(WAIT, tokens.fetch()).await.unwrap().unwrap();
    assert_eq!(token.scope, "subscribe:adt.>");

    // One stored event, read back through the history endpoint.
    let publisher = broker.token(&feed, None).await;
    let stored = broker
        .publish_http(&publisher, "adt.patient.admitted", &json!({"bed": 1}))
        .await;
    assert_eq!(stored.status, 201, "{:?}", stored.body);

    // The CA file given to the connection also reaches its token source, which has none.
    let client = ConnectOptions::new()
        .add_root_certificates(&pki.root_file)
        .unwrap()
        .reconnect(false)
        .token_source(TokenSource::client_secret(
            &base,
            &reader.client_id,
            &reader.secret,
        ))
        .connect(&base);
    let client = timeout(WAIT, client).await.unwrap().unwrap();
    let mut events = timeout(WAIT, client.subscribe_since("adt.>", Some(0)))
        .await
        .unwrap()
        .unwrap();
    let first = next(&mut events).await;
    assert_eq!(first.seq, stored.body["seq"].as_u64().unwrap());

    // A live event, over the WebSocket.
    let live = broker
        .publish_http(&publisher, "adt.patient.discharged", &json!({"bed": 1}))
        .await;
    assert_eq!(live.status, 201, "{:?}", live.body);
    let second = next(&mut events).await;
    assert_eq!(
        (second.seq, second.topic.as_str()),
        (live.body["seq"].as_u64().unwrap(), "adt.patient.discharged")
    );
}

#[tokio::test]
async fn a_broker_serving_its_ca_certificate_is_told_to_serve_a_server_certificate() {
    let pki = InternalPki::new();
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.data_dir = data.path().join("data");
    config.tls.cert_file = Some(pki.root_file.clone());
    config.tls.key_file = Some(pki.root_key_file.clone());
    // The test harness's own client would refuse this broker too: run it directly.
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let base = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let broker = tokio::spawn(scopecast_broker::run(listener, config, async move {
        let _ = stopped.await;
    }));

    let connecting = ConnectOptions::new()
        .add_root_certificates(&pki.root_file)
        .unwrap()
        .reconnect(false)
        .token("any token: the handshake fails first")
        .connect(&base);
    match timeout(WAIT, connecting).await.unwrap() {
        Err(ConnectError::Certificate(e @ CertificateError::CaUsedAsEndEntity(_))) => {
            let message = e.to_string();
            assert!(
                message.contains("presents a CA certificate as its server certificate")
                    && message.contains("tls.cert_file"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let tls = TlsConfig::new()
        .add_root_certificates(&pki.root_file)
        .unwrap();
    let tokens = TokenSource::client_secret(&base, "client", "secret").with_tls(tls);
    match timeout(WAIT, tokens.fetch()).await.unwrap() {
        Err(TokenError::Certificate {
            source: CertificateError::CaUsedAsEndEntity(_),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }

    let _ = stop.send(());
    timeout(WAIT, broker).await.unwrap().unwrap().unwrap();
}
