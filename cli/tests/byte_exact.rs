//! Every path that returns an event returns its payload byte for byte (PROTOCOL.md section 8):
//! live delivery, WebSocket replay (`since`), `GET /v1/events`, the SDK's history catch-up and
//! `scopecast sub --since`. Payloads are arbitrary JSON texts from a property strategy: numbers
//! with trailing zeros and exponents, 30-digit integers, escapes, non-ASCII, duplicate and
//! duplicate-looking keys, inner whitespace, deep nesting. The broker is the real binary with
//! its durable log, so the stored encoding is on the path too. (`scopecast sub` prints NDJSON,
//! one event per line, so a line break between a payload's tokens comes out as a space.)

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

mod support;

use support::BIN;

const WAIT: Duration = Duration::from_secs(20);

/// Whitespace that JSON allows between tokens, kept verbatim inside a payload.
fn ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![8 => Just(""), 1 => Just(" "), 1 => Just("\n\t "), 1 => Just("\r\n")]
}

fn number() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop_oneof![
            Just("0".to_owned()),
            "[1-9][0-9]{0,5}",
            // Beyond u64 and beyond f64's 17 significant digits.
            "[1-9][0-9]{19,29}",
        ],
        prop::option::of("[0-9]{0,4}0{1,3}"),
        prop::option::of(("[eE]", "[+-]?", "[0-9]{1,2}")),
    )
        .prop_map(|(neg, int, frac, exp)| {
            let mut s = String::new();
            if neg {
                s.push('-');
            }
            s.push_str(&int);
            if let Some(f) = frac {
                s.push('.');
                s.push_str(&f);
            }
            if let Some((e, sign, digits)) = exp {
                s.push_str(&e);
                s.push_str(&sign);
                s.push_str(&digits);
            }
            s
        })
}

/// A JSON string literal, quotes included, mixing raw and escaped forms of the same text.
fn string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z0-9 _.:-]{1,6}",
        Just("\\\"".to_owned()),
        Just("\\\\".to_owned()),
        Just("\\/".to_owned()),
        Just("\\b\\f\\n\\r\\t".to_owned()),
        Just("\\u0000\\u001f".to_owned()),
        Just("\\u00e9\\u00E9".to_owned()),
        Just("é".to_owned()),
        Just("中文".to_owned()),
        Just("🏥".to_owned()),
        Just("\\ud83c\\udfe5".to_owned()),
        Just("\u{7f}".to_owned()),
        Just("\u{2028}".to_owned()),
    ];
    prop::collection::vec(piece, 0..5).prop_map(|v| format!("\"{}\"", v.concat()))
}

/// Keys that look alike: the same text raw and escaped, case and trailing-space variants, and
/// real duplicates.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"a\"".to_owned()),
        Just("\"\\u0061\"".to_owned()),
        Just("\"A\"".to_owned()),
        Just("\"a \"".to_owned()),
        Just("\"resourceType\"".to_owned()),
        string(),
    ]
}

fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("null".to_owned()),
        number(),
        string(),
    ];
    leaf.prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec((ws(), inner.clone(), ws()), 0..5).prop_map(|items| {
                let parts: Vec<String> = items
                    .into_iter()
                    .map(|(a, v, b)| format!("{a}{v}{b}"))
                    .collect();
                format!("[{}]", parts.join(","))
            }),
            prop::collection::vec((ws(), key(), ws(), inner, ws()), 0..5).prop_map(|members| {
                let parts: Vec<String> = members
                    .into_iter()
                    .map(|(a, k, b, v, c)| format!("{a}{k}{b}:{v}{c}"))
                    .collect();
                format!("{{{}}}", parts.join(","))
            }),
        ]
    })
}

/// A payload: any value but `null` at the top, sometimes nested 40 to 64 levels deep (the
/// broker's limit is 64).
fn payload() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => value().prop_filter("null is not a payload", |v| v != "null"),
        1 => (40usize..=63, number()).prop_map(|(depth, n)| {
            let mut s = n;
            for i in 0..depth {
                s = if i % 2 == 0 { format!("[{s}]") } else { format!("{{\"k\":{s}}}") };
            }
            s
        }),
        1 => Just(r#"{"z":1.50,"a":12345678901234567890123}"#.to_owned()),
    ]
}

/// An `event` frame with `data` kept as the exact text received.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    seq: Option<u64>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// A history page with `data` kept as the exact text received.
#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    events: Vec<PageEvent<'a>>,
    next_since: u64,
}

#[derive(Deserialize)]
struct PageEvent<'a> {
    seq: u64,
    #[serde(borrow)]
    data: &'a RawValue,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str, token: &str) -> Socket {
    let mut req = format!("{}/v1/stream", url.replacen("http", "ws", 1))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let welcome = next_text(&mut socket).await;
    assert!(welcome.contains("\"welcome\""), "{welcome}");
    socket
}

async fn next_text(socket: &mut Socket) -> String {
    loop {
        match tokio::time::timeout(WAIT, socket.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("socket: {other:?}"),
        }
    }
}

/// Reads `event` frames until `last` has arrived; returns their payloads by `seq`.
async fn read_events(socket: &mut Socket, last: u64, out: &mut BTreeMap<u64, String>) {
    loop {
        let text = next_text(socket).await;
        let frame: Frame<'_> = serde_json::from_str(&text).unwrap();
        match frame.kind {
            "event" => {
                let seq = frame.seq.unwrap();
                out.insert(seq, frame.data.unwrap().get().to_owned());
                if seq >= last {
                    return;
                }
            }
            "subscribed" | "published" | "token_expiring" => {}
            other => panic!("unexpected frame {other}: {text}"),
        }
    }
}

fn admin(url: &str, token: &str, path: &str, body: Value) -> Value {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{url}/admin/v1{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().unwrap()
}

#[test]
fn every_read_path_returns_each_payload_byte_for_byte() {
    let data = tempfile::tempdir().unwrap();
    let served = support::serve(data.path(), "durable");
    let url = served.url.clone();
    let admin_token = std::fs::read_to_string(data.path().join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let app = admin(
        &url,
        &admin_token,
        "/applications",
        json!({"name": "Exact", "vendor": "V", "scope": "subscribe:> publish:>"}),
    );
    let np = &app["clients"]["non_production"];
    let client_id = np["client_id"].as_str().unwrap().to_owned();
    let secret = np["client_secret"].as_str().unwrap().to_owned();
    admin(
        &url,
        &admin_token,
        &format!("/clients/{client_id}/activate"),
        json!({}),
    );
    let http = reqwest::blocking::Client::new();
    let token: String = {
        let v: Value = http
            .post(format!("{url}/oauth2/token"))
            .basic_auth(&client_id, Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    let strategy = prop::collection::vec(payload(), 1..20);
    // Every payload published, by seq, as sent.
    let mut sent: BTreeMap<u64, String> = BTreeMap::new();
    let mut live_got: BTreeMap<u64, String> = BTreeMap::new();
    rt.block_on(async {
        let mut live = open(&url, &token).await;
        live.send(Message::text(
            r#"{"type":"subscribe","id":"l","topic":">"}"#,
        ))
        .await
        .unwrap();
        let mut publisher = open(&url, &token).await;
        let sdk = scopecast_client::ConnectOptions::new()
            .token(&token)
            .connect(&url)
            .await
            .unwrap();
        let hclient = reqwest::Client::new();
        for case in 0..runner.config().cases {
            let payloads = strategy.new_tree(&mut runner).unwrap().current();
            let mut case_seqs = Vec::new();
            for (n, p) in payloads.iter().enumerate() {
                // Half over WebSocket, half over HTTP: both front ends store the same bytes.
                let seq = if n % 2 == 0 {
                    let frame =
                        format!(r#"{{"type":"publish","id":"p{n}","topic":"exact.t","data":{p}}}"#);
                    publisher.send(Message::text(frame)).await.unwrap();
                    let reply = next_text(&mut publisher).await;
                    let v: Value = serde_json::from_str(&reply).unwrap();
                    assert_eq!(v["type"], "published", "case {case}: {reply}\npayload: {p}");
                    v["seq"].as_u64().unwrap()
                } else {
                    let resp = hclient
                        .post(format!("{url}/v1/events/exact.t"))
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(p.clone())
                        .send()
                        .await
                        .unwrap();
                    let status = resp.status();
                    let v: Value = resp.json().await.unwrap();
                    assert_eq!(status, 201, "case {case}: {v}\npayload: {p}");
                    v["seq"].as_u64().unwrap()
                };
                sent.insert(seq, p.clone());
                case_seqs.push(seq);
            }
            let (first, last) = (case_seqs[0], *case_seqs.last().unwrap());
            let expect: BTreeMap<u64, String> = sent
                .range(first..=last)
                .map(|(k, v)| (*k, v.clone()))
                .collect();

            // Live.
            read_events(&mut live, last, &mut live_got).await;

            // Replay over WebSocket.
            let mut replay = open(&url, &token).await;
            let sub = format!(
                r#"{{"type":"subscribe","id":"r","topic":">","since":{{"seq":{}}}}}"#,
                first - 1
            );
            replay.send(Message::text(sub)).await.unwrap();
            let mut replayed = BTreeMap::new();
            read_events(&mut replay, last, &mut replayed).await;
            let _ = replay.close(None).await;
            assert_eq!(replayed, expect, "replay, case {case}");

            // History over HTTP, page by page.
            let mut history = BTreeMap::new();
            let mut since = first - 1;
            while since < last {
                let body = hclient
                    .get(format!("{url}/v1/events"))
                    .query(&[
                        ("topic", ">"),
                        ("since", &since.to_string()),
                        ("limit", "7"),
                    ])
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                let page: Page<'_> = serde_json::from_str(&body).unwrap();
                for e in page.events.iter().filter(|e| e.seq <= last) {
                    history.insert(e.seq, e.data.get().to_owned());
                }
                assert!(page.next_since > since, "history made no progress");
                since = page.next_since;
            }
            assert_eq!(history, expect, "history, case {case}");

            // The SDK: `subscribe_since` reads its history through the catch-up path.
            let mut stream = sdk.subscribe_since(">", Some(first - 1)).await.unwrap();
            let mut caught = BTreeMap::new();
            while caught.len() < expect.len() {
                match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
                    Some(scopecast_client::Item::Event(e)) => {
                        caught.insert(e.seq, e.data.get().to_owned());
                    }
                    other => panic!("SDK: {other:?}"),
                }
            }
            drop(stream);
            assert_eq!(caught, expect, "SDK catch-up, case {case}");
        }
        assert_eq!(live_got, sent, "live delivery");
    });

    // `scopecast sub --since 0` prints each event as one NDJSON line, `data` verbatim.
    let mut sub = Command::new(BIN)
        .args(["sub", ">", "--since", "0", "--url", &url, "--token", &token])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = sub.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut printed = BTreeMap::new();
    while printed.len() < sent.len() {
        let line = rx.recv_timeout(WAIT).expect("sub printed every event");
        #[derive(Deserialize)]
        struct Line<'a> {
            seq: u64,
            #[serde(borrow)]
            data: &'a RawValue,
        }
        let l: Line<'_> = serde_json::from_str(&line).unwrap();
        printed.insert(l.seq, l.data.get().to_owned());
    }
    let _ = sub.kill();
    let _ = sub.wait();
    // NDJSON keeps one event per line: a line break, which JSON allows only as whitespace
    // between tokens, is printed as a space; every other byte is as published.
    let one_line: BTreeMap<u64, String> = sent
        .iter()
        .map(|(k, v)| (*k, v.replace(['\n', '\r'], " ")))
        .collect();
    assert_eq!(printed, one_line, "scopecast sub --since 0");
}
