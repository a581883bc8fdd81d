//! Hostile input, table by table: each row is one input and the exact outcome it must get (a
//! close code, an error frame's code and reason, an HTTP status and reason), against a real
//! broker over real sockets. After every refused row the broker must still serve.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use scopecast_broker::{EnvironmentKind, ExternalIssuer};
use scopecast_tests::keys::{TestKey, forged, now, signed_with_header};
use scopecast_tests::raw::{RawFrame, RawWs, op};
use scopecast_tests::ws::{Ended, Ws};
use scopecast_tests::{TestBroker, test_config};
use serde_json::{Value, json};

/// The frame limit of the frame tables, in bytes.
const MAX_FRAME: usize = 128 * 1024;

/// What a row must get.
#[derive(Debug)]
enum Expect {
    /// The connection is closed with this code.
    Close(u16),
    /// The broker answers with a text frame of this `type` (and stays open).
    Answer(&'static str),
}

async fn broker_with_client(scope: &str) -> (TestBroker, String) {
    let mut config = test_config();
    config.limits.max_frame_bytes = MAX_FRAME;
    config.limits.publish_rate_per_sec = 0;
    let broker = TestBroker::start(config).await;
    let c = broker.active_client("Hostile", scope).await;
    let token = broker.token(&c, None).await;
    (broker, token)
}

fn frag(opcode: u8, fin: bool, payload: &[u8]) -> RawFrame {
    RawFrame {
        fin,
        opcode,
        payload: payload.to_vec(),
        ..RawFrame::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_framing_table() {
    let (broker, token) = broker_with_client("subscribe:adt.>").await;
    let ping = "{\"type\":\"ping\",\"id\":\"k\",\"note\":\"café\"}".as_bytes();
    let split = ping.iter().position(|&b| b == 0xc3).unwrap() + 1;
    let rows: Vec<(&str, Vec<RawFrame>, Expect)> = vec![
        (
            "a text frame declaring 2^62 bytes, none sent",
            vec![RawFrame {
                declared_len: Some(1 << 62),
                ..RawFrame::default()
            }],
            Expect::Close(1009),
        ),
        (
            "a text frame one byte over the limit",
            vec![RawFrame::text(&"x".repeat(MAX_FRAME + 1))],
            Expect::Close(1009),
        ),
        (
            "endless fragments",
            (0..400)
                .map(|i| {
                    frag(
                        if i == 0 { op::TEXT } else { op::CONTINUATION },
                        false,
                        &[b' '; 1024],
                    )
                })
                .collect(),
            Expect::Close(1009),
        ),
        (
            "invalid UTF-8 in a text frame",
            vec![frag(
                op::TEXT,
                true,
                b"{\"type\":\"ping\",\"id\":\"\xff\xfe\"}",
            )],
            Expect::Close(1007),
        ),
        (
            "invalid UTF-8 in a close reason",
            vec![frag(op::CLOSE, true, b"\x03\xe8\xff\xfe")],
            Expect::Close(1007),
        ),
        (
            "valid UTF-8 split across two fragments",
            vec![
                frag(op::TEXT, false, &ping[..split]),
                frag(op::CONTINUATION, true, &ping[split..]),
            ],
            Expect::Answer("pong"),
        ),
        (
            "a binary frame",
            vec![frag(op::BINARY, true, b"{}")],
            Expect::Close(1003),
        ),
        (
            "an unmasked client frame",
            vec![RawFrame {
                mask: false,
                ..RawFrame::text(r#"{"type":"ping","id":"u"}"#)
            }],
            Expect::Close(1002),
        ),
        (
            "RSV1 set (permessage-deflate is not negotiated)",
            vec![RawFrame {
                rsv: 0b100,
                ..RawFrame::text(r#"{"type":"ping","id":"r"}"#)
            }],
            Expect::Close(1002),
        ),
        (
            "RSV2 and RSV3 set",
            vec![RawFrame {
                rsv: 0b011,
                ..RawFrame::text(r#"{"type":"ping","id":"r"}"#)
            }],
            Expect::Close(1002),
        ),
        (
            "a ping of 126 bytes (control frames carry at most 125)",
            vec![frag(op::PING, true, &[b'p'; 126])],
            Expect::Close(1002),
        ),
        (
            "a fragmented ping",
            vec![frag(op::PING, false, b"p")],
            Expect::Close(1002),
        ),
        (
            "a continuation without a start",
            vec![frag(op::CONTINUATION, true, b"{}")],
            Expect::Close(1002),
        ),
        (
            "a new text frame inside a fragmented message",
            vec![frag(op::TEXT, false, b"{"), frag(op::TEXT, true, b"}")],
            Expect::Close(1002),
        ),
        (
            "a reserved opcode",
            vec![frag(op::RESERVED, true, b"{}")],
            Expect::Close(1002),
        ),
    ];
    for (name, frames, expect) in rows {
        let mut ws = RawWs::connect(&broker, &token).await;
        for f in &frames {
            if !ws.send(f).await {
                break;
            }
        }
        let (texts, ended) = ws.first_text_or_end(Duration::from_secs(5)).await;
        match expect {
            Expect::Close(code) => assert!(
                matches!(ended, Some(Ended::Close(c, _)) if c == code),
                "{name}: wanted close {code}, got {ended:?} after {texts:?}"
            ),
            Expect::Answer(kind) => {
                let f: Value = serde_json::from_str(texts.first().unwrap()).unwrap();
                assert_eq!(f["type"], kind, "{name}");
                assert_eq!(f["id"], "k", "{name}");
            }
        }
    }
    // Refused rows left the broker serving.
    let _ = RawWs::connect(&broker, &token).await;
}

#[tokio::test]
async fn upgrade_table() {
    let (broker, token) = broker_with_client("subscribe:adt.>").await;
    let many: Vec<String> = (0..200).map(|i| format!("X-Header-{i}: {i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let huge = format!("X-Big: {}", "a".repeat(64 * 1024));
    let rows: Vec<(&str, Vec<&str>, u16)> = vec![
        (
            "permessage-deflate offered: not negotiated (off)",
            vec!["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"],
            101,
        ),
        ("200 upgrade headers", many, 431),
        ("a 64 KiB upgrade header", vec![huge.as_str()], 431),
    ];
    for (name, extra, status) in rows {
        let up = RawWs::upgrade(&broker, Some(&token), &extra).await;
        assert_eq!(up.status, status, "{name}: {}", up.head);
        assert!(
            !up.head.contains("sec-websocket-extensions"),
            "{name}: no extension is ever accepted: {}",
            up.head
        );
    }
}

/// One JSON-level row: the text sent, and the error `code`, `error` (reason) and echoed `id`
/// it must get, or the answer `type` when it is accepted.
struct FrameRow {
    name: &'static str,
    text: String,
    expect: FrameExpect,
}

enum FrameExpect {
    Error {
        code: &'static str,
        reason: &'static str,
        id: Option<&'static str>,
    },
    Answer(&'static str),
}

fn refused(code: &'static str, reason: &'static str, id: Option<&'static str>) -> FrameExpect {
    FrameExpect::Error { code, reason, id }
}

fn row(name: &'static str, text: impl Into<String>, expect: FrameExpect) -> FrameRow {
    FrameRow {
        name,
        text: text.into(),
        expect,
    }
}

fn publish_topic(topic: &str) -> String {
    json!({"type": "publish", "id": "p", "topic": topic, "data": {}}).to_string()
}

fn subscribe_topic(topic: &str) -> String {
    json!({"type": "subscribe", "id": "s", "topic": topic}).to_string()
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn frame_table() {
    let (broker, token) = broker_with_client("subscribe:adt.> publish:adt.>").await;
    let bad = |reason| refused("bad_request", reason, None);
    let rows = vec![
        row("not JSON", "{not json", bad("malformed_json")),
        row("a JSON array", "[]", bad("malformed_json")),
        row("a JSON string", "\"ping\"", bad("malformed_json")),
        row("an empty frame", "", bad("malformed_json")),
        row(
            "an unknown type",
            r#"{"type":"launch","id":"x"}"#,
            refused("bad_request", "unknown_type", Some("x")),
        ),
        row(
            "a type that is not a string",
            r#"{"type":5,"id":"x"}"#,
            refused("bad_request", "invalid_field", Some("x")),
        ),
        row(
            "no type",
            r#"{"id":"x"}"#,
            refused("bad_request", "missing_field", Some("x")),
        ),
        row(
            "no id",
            r#"{"type":"subscribe","topic":"adt.>"}"#,
            bad("missing_field"),
        ),
        row(
            "an id over 64 bytes",
            subscribe_topic("adt.>").replace("\"s\"", &format!("\"{}\"", "i".repeat(65))),
            bad("invalid_field"),
        ),
        row(
            "a 1 MB-ish id within the frame limit",
            subscribe_topic("adt.>").replace("\"s\"", &format!("\"{}\"", "i".repeat(100_000))),
            bad("invalid_field"),
        ),
        row(
            "an id that is a number",
            r#"{"type":"subscribe","id":7,"topic":"adt.>"}"#,
            bad("invalid_field"),
        ),
        row(
            "a topic that is an array",
            r#"{"type":"subscribe","id":"a","topic":["adt"]}"#,
            refused("bad_request", "invalid_field", Some("a")),
        ),
        row(
            "a duplicate key",
            r#"{"type":"subscribe","id":"d","topic":"adt.x","topic":"lab.x"}"#,
            refused("bad_request", "invalid_field", Some("d")),
        ),
        row(
            "a negative since",
            r#"{"type":"subscribe","id":"n","topic":"adt.x","since":{"seq":-1}}"#,
            refused("bad_request", "invalid_field", Some("n")),
        ),
        row(
            "data nested 65 levels",
            format!(
                r#"{{"type":"publish","id":"p","topic":"adt.x","data":{}}}"#,
                nested(65)
            ),
            refused("bad_request", "invalid_field", Some("p")),
        ),
        row(
            "data nested 64 levels (allowed)",
            format!(
                r#"{{"type":"publish","id":"p","topic":"adt.x","data":{}}}"#,
                nested(64)
            ),
            FrameExpect::Answer("published"),
        ),
        row(
            "data nested 100,000 levels",
            format!(
                r#"{{"type":"publish","id":"p","topic":"adt.x","data":{}}}"#,
                nested(50_000)
            ),
            refused("bad_request", "invalid_field", Some("p")),
        ),
        row(
            "data null",
            r#"{"type":"publish","id":"p","topic":"adt.x","data":null}"#,
            refused("bad_request", "missing_field", Some("p")),
        ),
        row(
            "data with a lone surrogate",
            r#"{"type":"publish","id":"p","topic":"adt.x","data":"\ud800"}"#,
            refused("bad_request", "invalid_field", Some("p")),
        ),
        row(
            "data with a number beyond f64",
            r#"{"type":"publish","id":"p","topic":"adt.x","data":1e400}"#,
            refused("bad_request", "invalid_field", Some("p")),
        ),
        row(
            "an event_id over 128 bytes",
            json!({"type": "publish", "id": "p", "topic": "adt.x", "data": 1,
                   "event_id": "e".repeat(129)})
            .to_string(),
            refused("bad_request", "invalid_field", Some("p")),
        ),
        row(
            "an upper-case topic",
            publish_topic("Adt.x"),
            refused("bad_request", "invalid_topic", Some("p")),
        ),
        row(
            "a Cyrillic look-alike",
            publish_topic("\u{0430}dt.x"),
            refused("bad_request", "invalid_topic", Some("p")),
        ),
        row(
            "a zero-width space",
            subscribe_topic("adt.\u{200b}x"),
            refused("bad_request", "invalid_topic", Some("s")),
        ),
        row(
            "a NUL",
            subscribe_topic("adt.\u{0}x"),
            refused("bad_request", "invalid_topic", Some("s")),
        ),
        row(
            "an empty segment",
            publish_topic("adt..x"),
            refused("bad_request", "invalid_topic", Some("p")),
        ),
        row(
            "a trailing dot",
            subscribe_topic("adt."),
            refused("bad_request", "invalid_topic", Some("s")),
        ),
        row(
            "65,000 dots",
            subscribe_topic(&".".repeat(65_000)),
            refused("bad_request", "invalid_topic", Some("s")),
        ),
        row(
            "17 segments",
            subscribe_topic(&["a"; 17].join(".")),
            refused("bad_request", "invalid_topic", Some("s")),
        ),
        row(
            "a 65-byte segment",
            subscribe_topic(&format!("adt.{}", "a".repeat(65))),
            refused("bad_request", "invalid_topic", Some("s")),
        ),
        row(
            "a wildcard inside a segment",
            subscribe_topic("adt.a*"),
            refused("bad_request", "invalid_topic", Some("s")),
        ),
        row(
            "`>` before the last segment",
            subscribe_topic("adt.>.x"),
            refused("bad_request", "invalid_topic", Some("s")),
        ),
        row(
            "a `*` in a publish",
            publish_topic("adt.*"),
            refused("bad_request", "invalid_topic", Some("p")),
        ),
        row(
            "a `>` in a publish",
            publish_topic("adt.>"),
            refused("bad_request", "invalid_topic", Some("p")),
        ),
        row(
            "a subscribe outside the scope",
            subscribe_topic("lab.>"),
            refused("forbidden", "insufficient_scope", Some("s")),
        ),
        row(
            "a subscribe wider than the scope",
            subscribe_topic(">"),
            refused("forbidden", "insufficient_scope", Some("s")),
        ),
        row(
            "an unsubscribe of a pattern not held",
            r#"{"type":"unsubscribe","id":"u","topic":"adt.nothing"}"#,
            refused("not_found", "subscription_not_found", Some("u")),
        ),
        row(
            "unknown members are ignored",
            r#"{"type":"ping","id":"k","extra":{"deep":[1,2,3]},"n":null}"#,
            FrameExpect::Answer("pong"),
        ),
    ];
    let (mut ws, _) = Ws::connect(&broker, &token).await;
    for r in rows {
        ws.send_text(&r.text).await;
        let got = ws.recv().await;
        match r.expect {
            FrameExpect::Error { code, reason, id } => {
                assert_eq!(
                    (
                        got["type"].as_str(),
                        got["code"].as_str(),
                        got["error"].as_str()
                    ),
                    (Some("error"), Some(code), Some(reason)),
                    "{}: {got}",
                    r.name
                );
                assert_eq!(got["id"].as_str(), id, "{}: {got}", r.name);
                assert!(
                    got["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{}: a message for a human: {got}",
                    r.name
                );
            }
            FrameExpect::Answer(kind) => assert_eq!(got["type"], kind, "{}: {got}", r.name),
        }
        // A good frame between rows: the connection is still served, and the run of bad
        // frames (PROTOCOL.md section 9: 8 in a row close with 4000) starts again.
        ws.send(json!({"type": "ping", "id": "alive"})).await;
        assert_eq!(ws.recv().await["type"], "pong", "{}", r.name);
    }
}

/// Tokens that must be refused at the upgrade, on a production broker whose good token is a
/// production client's.
#[tokio::test]
async fn token_table() {
    let mut config = test_config();
    config.environment = EnvironmentKind::Production;
    config.oauth.leeway_s = 30;
    let broker = TestBroker::start(config).await;
    let app = broker.create_app("Tokens", "subscribe:adt.>").await;
    broker.activate(&app.production.client_id).await;
    // The non-production client ID stays inactive: a production broker refuses to activate it.
    let good = broker.token(&app.production, None).await;
    let claims = TestBroker::claims_of(&good);
    let key = broker.signing_key();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        f(&mut c);
        key.sign(&c, Some("at+jwt"))
    };
    let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": key.kid});
    let with_header = |f: &dyn Fn(&mut Value)| {
        let mut h = header.clone();
        f(&mut h);
        signed_with_header(&h, &claims, &key)
    };
    let jwks = reqwest::get(broker.http_url("/.well-known/jwks.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let inactive = broker.create_app("Inactive", "subscribe:adt.>").await;
    broker.activate(&inactive.production.client_id).await;
    let inactive_token = broker.token(&inactive.production, None).await;
    broker.deactivate(&inactive.production.client_id).await;

    let t = now();
    let rows: Vec<(&str, String, u16, &str)> = vec![
        ("the good token", good.clone(), 101, ""),
        (
            "alg none",
            forged(
                &json!({"alg": "none", "typ": "at+jwt", "kid": key.kid}),
                &claims,
                None,
            ),
            401,
            "invalid_token",
        ),
        (
            "HS256 keyed with the public JWK Set",
            forged(
                &json!({"alg": "HS256", "typ": "at+jwt", "kid": key.kid}),
                &claims,
                Some(jwks.as_bytes()),
            ),
            401,
            "invalid_token",
        ),
        (
            "an unknown kid",
            with_header(&|h| h["kid"] = json!("no-such-key")),
            401,
            "invalid_token",
        ),
        (
            "a path as kid",
            with_header(&|h| h["kid"] = json!("../../keys.json")),
            401,
            "invalid_token",
        ),
        (
            "a number as kid",
            with_header(&|h| h["kid"] = json!(5)),
            401,
            "invalid_token",
        ),
        (
            "no kid",
            with_header(&|h| {
                h.as_object_mut().unwrap().remove("kid");
            }),
            401,
            "invalid_token",
        ),
        (
            "a jku header pointing elsewhere",
            with_header(&|h| h["jku"] = json!("http://127.0.0.1:9/evil.json")),
            101,
            "",
        ),
        (
            "typ JWT instead of at+jwt",
            with_header(&|h| h["typ"] = json!("JWT")),
            401,
            "invalid_token",
        ),
        (
            "expired beyond the leeway",
            with(&|c| c["exp"] = json!(t - 31 - 60)),
            401,
            "token_expired",
        ),
        (
            "expired within the leeway",
            with(&|c| c["exp"] = json!(t - 5)),
            101,
            "",
        ),
        (
            "nbf in the future",
            with(&|c| c["nbf"] = json!(t + 600)),
            401,
            "invalid_token",
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            401,
            "invalid_token",
        ),
        (
            "no aud",
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            401,
            "invalid_token",
        ),
        (
            "an empty aud array",
            with(&|c| c["aud"] = json!([])),
            401,
            "invalid_token",
        ),
        (
            "a wrong aud",
            with(&|c| c["aud"] = json!("https://elsewhere.example")),
            401,
            "invalid_token",
        ),
        (
            "no iss",
            with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            401,
            "invalid_token",
        ),
        (
            "a wrong iss",
            with(&|c| c["iss"] = json!("https://evil.example")),
            401,
            "invalid_token",
        ),
        (
            "a 10 KB token",
            with(&|c| c["pad"] = json!("x".repeat(10_000))),
            401,
            "invalid_token",
        ),
        (
            "a signature from another key",
            TestKey::es256(&key.kid).sign(&claims, Some("at+jwt")),
            401,
            "invalid_token",
        ),
        ("garbage", "a.b.c".to_owned(), 401, "invalid_token"),
        (
            "a deactivated client's token",
            inactive_token,
            403,
            "client_inactive",
        ),
        (
            // The token endpoint refuses it one; a token signed anyway must not pass either.
            "a non-production client ID on a production broker",
            with(&|c| {
                c["client_id"] = json!(app.non_production.client_id);
                c["sub"] = json!(app.non_production.client_id);
            }),
            403,
            "client_inactive",
        ),
    ];
    for (name, token, status, reason) in rows {
        match Ws::try_connect(&broker, Some(&token), "/v1/stream").await {
            Ok(_) => assert_eq!(status, 101, "{name}: accepted"),
            Err(r) => {
                assert_eq!(
                    (r.status, r.body["reason"].as_str().unwrap_or_default()),
                    (status, reason),
                    "{name}: {:?}",
                    r.body
                );
                if status == 401 {
                    let challenge = r.headers["www-authenticate"].to_str().unwrap();
                    assert!(
                        challenge.contains("error=\"invalid_token\""),
                        "{name}: {challenge}"
                    );
                }
            }
        }
    }
    // A token in the URL is refused before it is even read.
    let r = Ws::try_connect(&broker, None, &format!("/v1/stream?access_token={good}"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (400, Some("token_in_url"))
    );
}

/// Refreshes (`auth` on a live connection) that must be refused, and how.
#[tokio::test]
async fn refresh_table() {
    let (broker, token) = broker_with_client("subscribe:adt.>").await;
    let other = broker.active_client("Other", "subscribe:adt.>").await;
    let other_token = broker.token(&other, None).await;
    let key = broker.signing_key();
    let mut expired = TestBroker::claims_of(&token);
    expired["exp"] = json!(now() - 600);
    let expired = key.sign(&expired, Some("at+jwt"));
    // PROTOCOL.md section 3, step 4: another client's token ends the connection; an invalid
    // or expired one is refused and the connection carries on with the token in force.
    let rows: Vec<(&str, String, &str, Option<u16>)> = vec![
        (
            "another client's token",
            other_token,
            "client_mismatch",
            Some(4003),
        ),
        ("an expired token", expired, "token_expired", None),
        ("garbage", "x.y.z".to_owned(), "invalid_token", None),
    ];
    for (name, bad, reason, close) in rows {
        let (mut ws, _) = Ws::connect(&broker, &token).await;
        assert_eq!(ws.subscribe("s", "adt.>").await["type"], "subscribed");
        ws.send(json!({"type": "auth", "token": bad})).await;
        let f = ws.recv().await;
        assert_eq!(
            (f["code"].as_str(), f["error"].as_str()),
            (
                Some(if close.is_some() {
                    "forbidden"
                } else {
                    "unauthorized"
                }),
                Some(reason)
            ),
            "{name}: {f}"
        );
        match close {
            Some(code) => {
                let (_, ended) = ws.until_closed(Duration::from_secs(5)).await;
                assert!(
                    matches!(ended, Ended::Close(c, _) if c == code),
                    "{name}: {ended:?}"
                );
            }
            None => {
                ws.send(json!({"type": "ping", "id": "still"})).await;
                assert_eq!(ws.recv().await["type"], "pong", "{name}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_subscribes_on_one_connection_hit_the_cap_and_nothing_else() {
    let (broker, token) = broker_with_client("subscribe:adt.>").await;
    let (ws, _) = Ws::connect(&broker, &token).await;
    let (mut tx, mut rx) = ws.stream.split();
    const N: usize = 100_000;
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let f =
                json!({"type": "subscribe", "id": format!("s{i}"), "topic": format!("adt.t{i}")});
            tx.feed(tokio_tungstenite::tungstenite::Message::text(f.to_string()))
                .await
                .unwrap();
        }
        tx.flush().await.unwrap();
        tx
    });
    let (mut subscribed, mut capped) = (0usize, 0usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while subscribed + capped < N {
        let msg = tokio::time::timeout_at(deadline, rx.next())
            .await
            .expect("answers in time")
            .unwrap()
            .unwrap();
        let f: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        match (f["type"].as_str(), f["error"].as_str()) {
            (Some("subscribed"), _) => subscribed += 1,
            (Some("error"), Some("too_many_subscriptions")) => capped += 1,
            _ => panic!("unexpected {f}"),
        }
    }
    assert_eq!((subscribed, capped), (1000, N - 1000));
    let mut tx = writer.await.unwrap();
    tx.send(tokio_tungstenite::tungstenite::Message::text(
        json!({"type": "ping", "id": "after"}).to_string(),
    ))
    .await
    .unwrap();
    let msg = rx.next().await.unwrap().unwrap();
    assert!(msg.to_text().unwrap().contains("pong"));
    assert_eq!(broker.metric("scopecast_subscriptions").await, 1000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_capped_per_client_and_leave_others_and_the_metrics_alone() {
    let mut config = test_config();
    config.limits.max_connections_per_client = 2000;
    config.limits.publish_rate_per_sec = 200;
    let broker = TestBroker::start(config).await;
    let flood = broker
        .active_client("Flood", "subscribe:adt.> publish:adt.>")
        .await;
    let bystander = broker.active_client("Bystander", "subscribe:adt.>").await;
    let token = broker.token(&flood, None).await;
    let series_before = series(&broker.metrics().await);

    // 2,100 connections under one client ID: 2,000 served, the rest refused with 429.
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..2100 {
        match Ws::try_connect(&broker, Some(&token), "/v1/stream").await {
            Ok(ws) => open.push(ws),
            Err(r) => {
                assert_eq!(
                    (r.status, r.body["reason"].as_str()),
                    (429, Some("too_many_connections"))
                );
                refused += 1;
            }
        }
    }
    assert_eq!((open.len(), refused), (2000, 100));
    let (mut other, _) = Ws::connect(&broker, &broker.token(&bystander, None).await).await;
    assert_eq!(other.subscribe("b", "adt.>").await["type"], "subscribed");

    // A publish flood: refused past the rate with a retry time, the bystander gets exactly the
    // accepted events.
    let ws = &mut open[0];
    let _ = ws.recv().await; // welcome
    let mut accepted = 0;
    let mut limited = 0;
    for i in 0..1000 {
        let f = ws
            .publish(&format!("p{i}"), &format!("adt.flood{i}"), json!(i))
            .await;
        match f["type"].as_str() {
            Some("published") => accepted += 1,
            _ => {
                assert_eq!(f["error"], "publish_rate_exceeded", "{f}");
                assert!(f["retry_after_ms"].as_u64().is_some(), "{f}");
                limited += 1;
            }
        }
    }
    assert!(accepted >= 200 && limited > 0, "{accepted} {limited}");
    let mut got = 0;
    while got < accepted {
        if other.recv().await["type"] == "event" {
            got += 1;
        }
    }
    // 1,000 distinct topics and 2,100 connections later: no new metric series (no topic or
    // connection labels), only the per-client-ID gauge's two client IDs.
    let series_after = series(&broker.metrics().await);
    let new: Vec<&String> = series_after.difference(&series_before).collect();
    assert!(
        new.iter().all(|s| !s.contains("flood")) && new.len() <= 20,
        "{new:?}"
    );
    drop(open);
}

/// The metric series (name and labels) of a Prometheus text exposition.
fn series(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_storm_with_random_kids_fetches_no_keys_per_request() {
    let fetches = Arc::new(AtomicUsize::new(0));
    let foreign = TestKey::es256("foreign-1");
    let jwks = foreign.jwks();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = {
        let fetches = fetches.clone();
        axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let fetches = fetches.clone();
                let jwks = jwks.clone();
                async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    axum::Json(jwks)
                }
            }),
        )
    };
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut config = test_config();
    config.oauth.external_issuers = vec![ExternalIssuer {
        jwks_uri: Some(format!("http://{addr}/jwks.json")),
        require_typ: false,
        ..ExternalIssuer::new("https://login.hospital.example", "scopecast")
    }];
    let broker = TestBroker::start(config).await;
    let claims = json!({"iss": "https://login.hospital.example", "aud": "scopecast",
        "client_id": "nobody", "scope": "subscribe:adt.>", "exp": now() + 300, "iat": now()});
    for i in 0..500 {
        let stranger = TestKey {
            kid: format!("random-{i}-{}", uuid::Uuid::new_v4()),
            ..TestKey::es256("x")
        };
        let r = Ws::try_connect(&broker, Some(&stranger.sign(&claims, None)), "/v1/stream")
            .await
            .err()
            .unwrap();
        assert_eq!(
            (r.status, r.body["reason"].as_str()),
            (401, Some("invalid_token"))
        );
    }
    let n = fetches.load(Ordering::SeqCst);
    assert!(n <= 2, "{n} JWKS fetches for 500 unknown kids");
    server.abort();
}
