//! TLS (HTTPS and WSS with rustls), heartbeats, and handshake limits: oversized or slow
//! request heads are refused quickly.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use scopecast_tests::ws::{Ended, Ws};
use scopecast_tests::{TestBroker, test_config};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn tls_serves_https_and_wss() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mut config = test_config();
    config.tls.cert_file = Some(cert_path);
    config.tls.key_file = Some(key_path);
    let broker = TestBroker::start_tls(config, &cert.cert.pem()).await;

    let ca = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let port = broker.addr().port();
    let health = http
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let meta: serde_json::Value = http
        .get(format!(
            "https://localhost:{port}/.well-known/oauth-authorization-server"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(meta["issuer"].as_str().unwrap().starts_with("https://"));

    // WSS with a client that trusts the test certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = broker.active_client("TLS", "subscribe:adt.>").await;
    let token: serde_json::Value = http
        .post(format!("https://localhost:{port}/oauth2/token"))
        .basic_auth(&client.client_id, Some(&client.secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("wss://localhost:{port}/v1/stream")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token["access_token"].as_str().unwrap())
            .parse()
            .unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        req,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(Arc::new(tls))),
    )
    .await
    .unwrap();
    use futures_util::StreamExt;
    let welcome = ws.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("\"welcome\""));
}

#[tokio::test]
async fn a_peer_that_never_answers_heartbeats_is_closed_4009() {
    let mut config = test_config();
    config.limits.heartbeat_ms = 200;
    let broker = TestBroker::start(config).await;
    let client = broker.active_client("Silent", "subscribe:adt.>").await;
    let (mut ws, _) = Ws::connect(&broker, &broker.token(&client, None).await).await;
    // Do not read (so no pong is sent) for a while, then read what is left.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (_, ended) = ws.until_closed(Duration::from_secs(5)).await;
    assert!(
        matches!(ended, Ended::Close(4009, _) | Ended::Dropped),
        "{ended:?}"
    );

    // A peer that reads (and so answers pings) stays.
    let (mut ws, _) = Ws::connect(&broker, &broker.token(&client, None).await).await;
    let got = ws.recv_within(Duration::from_millis(900)).await;
    assert!(got.is_none(), "{got:?}");
    ws.send(json!({"type": "ping", "id": "still"})).await;
    assert_eq!(ws.recv().await["type"], "pong");
}

#[tokio::test]
async fn oversized_and_slow_request_heads_are_refused_quickly() {
    let mut config = test_config();
    config.limits.handshake_timeout_ms = 500;
    let broker = TestBroker::start(config).await;

    // 64 KiB of headers: refused (431) or cut off, never served.
    let mut tcp = tokio::net::TcpStream::connect(broker.addr()).await.unwrap();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = tcp.write_all(big.as_bytes()).await;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || head.starts_with("HTTP/1.1 431"), "{head}");

    // A slow drip of a request head: cut off after the handshake time-out.
    let mut tcp = tokio::net::TcpStream::connect(broker.addr()).await.unwrap();
    let start = Instant::now();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let mut closed = false;
    for _ in 0..40 {
        if tcp.write_all(b"X-Drip: 1\r\n").await.is_err() {
            closed = true;
            break;
        }
        let mut b = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut b)).await
        {
            let _ = n;
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow client was not cut off");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "cut off after {:?}",
        start.elapsed()
    );

    // The broker still serves.
    assert_eq!(
        reqwest::get(broker.http_url("/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
}
