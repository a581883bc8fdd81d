//! The session loop over an in-memory socket with paused time (`tokio::time::pause`): token
//! expiry and its warning, heartbeats and their timeout, and a refresh that moves the expiry,
//! each in virtual time, without a real sleep. The broker's services are real (SQLite registry,
//! signing keys, memory log) in a temporary folder.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::Message;
use futures_util::{Sink, Stream};
use scopecast_protocol::{CloseCode, ScopeSet};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Start, run};
use crate::config::{Config, LogMode};
use crate::registry::CreateApplication;
use crate::server::{Assembled, assemble};
use crate::state::Broker;

/// The session's side of an in-memory WebSocket: what the test sends arrives as messages,
/// what the session sends goes to the test.
struct Pipe {
    from_test: mpsc::UnboundedReceiver<Message>,
    to_test: mpsc::UnboundedSender<Message>,
}

impl Stream for Pipe {
    type Item = Result<Message, axum::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.from_test.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for Pipe {
    type Error = axum::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.to_test
            .send(item)
            .map_err(|_| axum::Error::new("the test hung up"))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// The test's side: sends frames, reads what the session wrote.
struct Peer {
    send: mpsc::UnboundedSender<Message>,
    recv: mpsc::UnboundedReceiver<Message>,
}

/// What the session wrote, as the test sees it.
#[derive(Debug)]
enum Seen {
    Frame(Value),
    Ping,
    Close(u16),
}

impl Peer {
    async fn next(&mut self) -> Seen {
        loop {
            match self
                .recv
                .recv()
                .await
                .expect("the session ended without a close")
            {
                Message::Text(t) => return Seen::Frame(serde_json::from_str(&t).unwrap()),
                Message::Ping(_) => return Seen::Ping,
                Message::Close(f) => return Seen::Close(f.map_or(1005, |f| f.code)),
                _ => {}
            }
        }
    }

    /// The next frame, answering pings on the way (a live client).
    async fn frame(&mut self) -> Value {
        loop {
            match self.next().await {
                Seen::Frame(v) => return v,
                Seen::Ping => self.send.send(Message::Pong(Default::default())).unwrap(),
                Seen::Close(code) => panic!("closed with {code}"),
            }
        }
    }

    /// The close code, answering pings on the way; frames are collected.
    async fn close(&mut self, frames: &mut Vec<Value>) -> u16 {
        loop {
            match self.next().await {
                Seen::Frame(v) => frames.push(v),
                Seen::Ping => self.send.send(Message::Pong(Default::default())).unwrap(),
                Seen::Close(code) => return code,
            }
        }
    }

    /// Stays connected until `deadline` (virtual time), answering pings; frames are collected.
    async fn idle_until(&mut self, deadline: Instant, frames: &mut Vec<Value>) {
        loop {
            match tokio::time::timeout_at(deadline, self.next()).await {
                Err(_) => return,
                Ok(Seen::Frame(v)) => frames.push(v),
                Ok(Seen::Ping) => self.send.send(Message::Pong(Default::default())).unwrap(),
                Ok(Seen::Close(code)) => panic!("closed with {code}: {frames:?}"),
            }
        }
    }

    fn text(&self, v: Value) {
        self.send.send(Message::Text(v.to_string().into())).unwrap();
    }
}

struct Fixture {
    broker: Broker,
    client_id: String,
    scope: ScopeSet,
    _assembled: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// A broker's services with one active client, before time is paused (SQLite and the
/// signing keys work on real threads).
async fn fixture(limits: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        log: LogMode::Memory,
        ..Config::default()
    };
    limits(&mut config);
    crate::data_dir::prepare(&config.data_dir).unwrap();
    let Assembled {
        state,
        fanout_task,
        mut background,
        deliveries,
        ..
    } = assemble(config, "http://127.0.0.1:1".to_owned(), 1)
        .await
        .unwrap();
    background.push(fanout_task);
    background.push(deliveries);
    let (app, _) = state
        .registry
        .create_application(
            CreateApplication {
                name: "Loop".to_owned(),
                vendor: "Test".to_owned(),
                description: String::new(),
                scope: "subscribe:adt.> publish:adt.>".to_owned(),
            },
            "test",
        )
        .await
        .unwrap();
    let client_id = app
        .record
        .clients
        .iter()
        .find(|c| c.kind == crate::config::EnvironmentKind::NonProduction)
        .unwrap()
        .client_id
        .clone();
    state
        .registry
        .set_active(&client_id, true, "test", "unit test")
        .await
        .unwrap();
    Fixture {
        broker: state,
        client_id,
        scope: ScopeSet::parse("subscribe:adt.>").unwrap(),
        _assembled: background,
        _dir: dir,
    }
}

impl Fixture {
    async fn token(&self) -> String {
        self.broker
            .issuer
            .issue(&self.client_id, &self.scope)
            .unwrap()
            .access_token
    }

    /// A token of this broker's issuer and keys that lives `lifetime_s`.
    fn short_token(&self, lifetime_s: u64) -> String {
        let issuer = crate::auth::token::TokenIssuer::new(
            self.broker.issuer.issuer().to_owned(),
            lifetime_s,
            self.broker.issuer.keys().clone(),
            self.broker.issuer.env().to_owned(),
        );
        issuer
            .issue(&self.client_id, &self.scope)
            .unwrap()
            .access_token
    }

    /// Starts a session authenticated with a fresh token (as a token on the upgrade does).
    async fn session(&self) -> Peer {
        let token = self.token().await;
        self.session_with(&token).await
    }

    /// Starts a session authenticated with `token`.
    async fn session_with(&self, token: &str) -> Peer {
        let principal = self.broker.verifier.verify(token).await.unwrap();
        let (send, from_test) = mpsc::unbounded_channel();
        let (to_test, recv) = mpsc::unbounded_channel();
        let start = Start {
            broker: self.broker.clone(),
            principal: Some(principal),
            peer: "127.0.0.1:9".parse().unwrap(),
        };
        tokio::spawn(run(Box::new(Pipe { from_test, to_test }), Box::new(start)));
        Peer { send, recv }
    }
}

#[tokio::test]
async fn an_expiring_token_is_warned_about_then_the_session_closes_with_4002() {
    let f = fixture(|_| {}).await;
    let (lifetime, leeway, warning) = {
        let c = &f.broker.config;
        (
            c.oauth.token_lifetime_s,
            c.oauth.leeway_s,
            c.limits.token_warning_ms,
        )
    };
    let mut peer = f.session().await;
    tokio::time::pause();
    let t0 = Instant::now();
    let welcome = peer.frame().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let warned = peer.frame().await;
    assert_eq!(warned["type"], "token_expiring", "{warned}");
    let at = t0.elapsed();
    let due = Duration::from_secs(lifetime) - Duration::from_millis(warning);
    // Virtual time: the warning comes when due (give a second for the token's whole-second
    // `exp`), not after a real wait.
    assert!(
        at + Duration::from_secs(1) >= due && at <= due,
        "{at:?} vs {due:?}"
    );
    let mut frames = Vec::new();
    let code = peer.close(&mut frames).await;
    assert_eq!(code, CloseCode::TokenExpired.as_u16(), "{frames:?}");
    let closed = t0.elapsed();
    let deadline = Duration::from_secs(lifetime + leeway);
    assert!(
        closed + Duration::from_secs(1) >= deadline && closed <= deadline,
        "{closed:?} vs {deadline:?}"
    );
}

#[tokio::test]
async fn a_refresh_moves_the_expiry() {
    let f = fixture(|_| {}).await;
    let lifetime = Duration::from_secs(f.broker.config.oauth.token_lifetime_s);
    let leeway = Duration::from_secs(f.broker.config.oauth.leeway_s);
    // The session starts with a token of 60 s; without the refresh it would close at 90 s.
    let short = Duration::from_secs(60);
    let mut peer = f.session_with(&f.short_token(short.as_secs())).await;
    let fresh = f.token().await;
    tokio::time::pause();
    let t0 = Instant::now();
    let welcome = peer.frame().await;
    assert_eq!(welcome["type"], "welcome");
    let mut frames = Vec::new();
    peer.idle_until(t0 + Duration::from_secs(20), &mut frames)
        .await;
    assert!(frames.is_empty(), "nothing yet: {frames:?}");
    peer.text(serde_json::json!({"type": "auth", "token": fresh}));
    peer.idle_until(t0 + short + leeway + Duration::from_secs(5), &mut frames)
        .await;
    let code = peer.close(&mut frames).await;
    assert_eq!(code, CloseCode::TokenExpired.as_u16(), "{frames:?}");
    // The fresh token's expiry counts now: the session measures what is left of it by the
    // wall clock, which stands still while tokio's time is paused, so it lives its whole
    // lifetime and leeway from the refresh at 20 s.
    let closed = t0.elapsed();
    let due = Duration::from_secs(20) + lifetime + leeway;
    assert!(
        closed + Duration::from_secs(1) >= due && closed <= due,
        "{closed:?} vs {due:?}"
    );
    // The refresh was accepted (a new `welcome` with the later expiry), then one warning, for
    // the token in force.
    let types: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
    assert_eq!(types, ["welcome", "token_expiring"], "{frames:?}");
    assert_ne!(frames[0]["expires_at"], welcome["expires_at"]);
}

#[tokio::test]
async fn a_silent_peer_is_closed_with_4008_after_two_heartbeats() {
    let f = fixture(|c| c.limits.heartbeat_ms = 1_000).await;
    let mut peer = f.session().await;
    tokio::time::pause();
    let t0 = Instant::now();
    let mut pings = 0;
    let code = loop {
        match peer.next().await {
            Seen::Ping => pings += 1,
            Seen::Frame(_) => {}
            Seen::Close(code) => break code,
        }
    };
    assert_eq!(code, CloseCode::HeartbeatTimeout.as_u16());
    assert!(pings >= 1, "{pings} pings before the close");
    // Closed on a heartbeat once two intervals passed in silence, in virtual time.
    let at = t0.elapsed();
    assert!(
        at >= Duration::from_secs(2) && at <= Duration::from_secs(3),
        "{at:?} after {pings} pings"
    );
}

#[tokio::test]
async fn a_peer_that_answers_heartbeats_stays() {
    let f = fixture(|c| c.limits.heartbeat_ms = 1_000).await;
    let mut peer = f.session().await;
    tokio::time::pause();
    let mut pings = 0;
    while pings < 20 {
        match peer.next().await {
            Seen::Ping => {
                pings += 1;
                peer.send.send(Message::Pong(Default::default())).unwrap();
            }
            Seen::Frame(v) => assert_ne!(v["type"], "error", "{v}"),
            Seen::Close(code) => panic!("closed with {code} after {pings} pings"),
        }
    }
    // A ping frame of the protocol is answered too.
    peer.text(serde_json::json!({"type": "ping", "id": "p"}));
    let pong = peer.frame().await;
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_str()),
        (Some("pong"), Some("p"))
    );
}

/// Publishes an event to `topic` as the fixture's client (with a `publish:` token), as a
/// publisher on another connection would.
async fn publish(f: &Fixture, topic: &str, n: u64) {
    let token = f
        .broker
        .issuer
        .issue(&f.client_id, &ScopeSet::parse("publish:adt.>").unwrap())
        .unwrap()
        .access_token;
    let principal = f.broker.verifier.verify(&token).await.unwrap();
    let pending = f
        .broker
        .admission
        .submit(
            &principal,
            topic.parse().unwrap(),
            scopecast_protocol::RawJson::from_string(format!("{{\"n\":{n}}}")).unwrap(),
            None,
        )
        .await
        .unwrap();
    pending.await.unwrap();
}

#[tokio::test]
async fn events_wait_out_the_coalescing_window_and_replies_do_not() {
    let window = Duration::from_millis(50);
    let f = fixture(|c| {
        c.limits.write_coalesce_us = window.as_micros() as u64;
        // One subscriber here: coalesce from a fan-out of one.
        c.limits.write_coalesce_min_fanout = 1;
    })
    .await;
    let mut peer = f.session().await;
    tokio::time::pause();
    assert_eq!(peer.frame().await["type"], "welcome");
    peer.text(serde_json::json!({"type": "subscribe", "id": "s", "topic": "adt.>"}));
    assert_eq!(peer.frame().await["type"], "subscribed");
    let replied = Instant::now();

    // Right after a write, an event waits for the rest of the window (virtual time; the
    // timer's resolution is 1 ms).
    publish(&f, "adt.a01", 1).await;
    let first = peer.frame().await;
    assert_eq!(first["data"]["n"], 1, "{first}");
    let waited = replied.elapsed();
    assert!(
        waited >= window - Duration::from_millis(1) && waited <= window + Duration::from_millis(2),
        "the first event went out after {waited:?}"
    );

    // Events that come meanwhile go out together, at the end of the next window.
    let written = Instant::now();
    for n in 2..=4 {
        publish(&f, "adt.a01", n).await;
    }
    for n in 2..=4 {
        let e = peer.frame().await;
        assert_eq!(e["data"]["n"], n, "{e}");
        let at = written.elapsed();
        assert!(
            at >= window - Duration::from_millis(1) && at <= window + Duration::from_millis(2),
            "event {n} went out after {at:?}"
        );
    }

    // A reply does not wait: it takes the waiting event with it, in order.
    publish(&f, "adt.a01", 5).await;
    let asked = Instant::now();
    peer.text(serde_json::json!({"type": "ping", "id": "p"}));
    let e = peer.frame().await;
    assert_eq!(e["data"]["n"], 5, "{e}");
    let pong = peer.frame().await;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert!(
        asked.elapsed() < Duration::from_millis(5),
        "the reply waited {:?}",
        asked.elapsed()
    );

    // After a quiet window, an event goes out at once.
    tokio::time::sleep(window * 2).await;
    let quiet = Instant::now();
    publish(&f, "adt.a01", 6).await;
    let e = peer.frame().await;
    assert_eq!(e["data"]["n"], 6, "{e}");
    assert!(
        quiet.elapsed() < Duration::from_millis(5),
        "after a quiet window the event waited {:?}",
        quiet.elapsed()
    );

    // A close decided by another task (a deactivation) does not wait for the window: the
    // event held meanwhile is dropped with it, as a deactivation drops what is queued.
    publish(&f, "adt.a01", 7).await;
    let deactivated = Instant::now();
    f.broker
        .sessions
        .close_client(&f.client_id, CloseCode::Forbidden, "client deactivated");
    let mut frames = Vec::new();
    let code = peer.close(&mut frames).await;
    assert_eq!(code, CloseCode::Forbidden.as_u16(), "{frames:?}");
    assert!(
        deactivated.elapsed() < Duration::from_millis(5),
        "the close waited {:?}",
        deactivated.elapsed()
    );
}

#[tokio::test]
async fn a_narrow_fan_out_is_written_at_once_whatever_the_window() {
    // The defaults: a window, from a fan-out of 64 connections per event; here it is one.
    let f = fixture(|_| {}).await;
    assert!(f.broker.config.limits.write_coalesce_us > 0);
    let mut peer = f.session().await;
    tokio::time::pause();
    assert_eq!(peer.frame().await["type"], "welcome");
    peer.text(serde_json::json!({"type": "subscribe", "id": "s", "topic": "adt.>"}));
    assert_eq!(peer.frame().await["type"], "subscribed");
    for n in 1..=3 {
        let sent = Instant::now();
        publish(&f, "adt.a01", n).await;
        let e = peer.frame().await;
        assert_eq!(e["data"]["n"], n, "{e}");
        assert!(
            sent.elapsed() < Duration::from_millis(1),
            "event {n} waited {:?}",
            sent.elapsed()
        );
    }
}
