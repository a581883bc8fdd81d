//! The websocket channel (`GET /fhir/ws`, FHIR.md "Websocket channel"): a client connects,
//! binds Subscriptions with tokens from `$get-ws-binding-token` (several binds per socket),
//! and gets one `handshake` Bundle per bound Subscription, `heartbeat` Bundles every
//! `heartbeatPeriod`, and an `event-notification` Bundle per matching event.
//!
//! Client messages, as text: `bind-with-token <token>` (the IG's diagram, the Helios server)
//! or JSON `{"type":"bind-with-token","payload":{"token":"..."}}` (Medplum);
//! `unbind-from-token <token>` or its JSON form; `ping` or `{"type":"ping"}` (answered `pong` or
//! `{"type":"pong"}`). A refusal is an `OperationOutcome` on the socket, which stays open for
//! its other bindings. A socket with nothing bound for [`BIND_WITHIN`] is closed (1008); one
//! whose queue overflows is closed with 4008 (the client fills its gap with `$events`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use scopecast_protocol::Timestamp;
use scopecast_protocol::fhir::notify::{notification_bundle, operation_outcome};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::http::{Fhir as FhirAnswer, notification_event, status_info};
use super::{Notice, SOCKET_QUEUE, Sub};
use crate::state::Broker;

/// How long a socket may stay without a binding.
pub(crate) const BIND_WITHIN: Duration = Duration::from_secs(30);
/// Sockets with nothing bound yet, per node, at most: they come before any token, so their
/// number is capped (503 past it).
pub(crate) const MAX_UNBOUND: usize = 1024;
/// Largest client message, bytes.
const MAX_MESSAGE: usize = 16 * 1024;

/// `GET /fhir/ws`: the upgrade (no token here: binding tokens come in messages).
pub(crate) async fn upgrade(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(r) => {
            return FhirAnswer::refuse(
                StatusCode::UPGRADE_REQUIRED,
                "invalid",
                &format!(
                    "GET /fhir/ws is the FHIR websocket channel ({}): connect with a websocket client and send bind-with-token <token>",
                    r.body_text()
                ),
            )
            .into_response();
        }
    };
    if state.shutdown.is_cancelled() {
        return FhirAnswer::refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "the broker is shutting down",
        )
        .into_response();
    }
    if state.fhir.unbound.load(Ordering::Acquire) >= MAX_UNBOUND {
        return FhirAnswer::refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "too many FHIR websockets are waiting for a bind on this node; retry",
        )
        .into_response();
    }
    let tracker = state.session_tasks.clone();
    ws.max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| tracker.track_future(run(state, socket, peer)))
}

/// One bound Subscription of a socket.
struct Bound {
    sub: Arc<Sub>,
    heartbeat: Option<(Duration, Instant)>,
}

/// What one client message asks.
enum Ask {
    Bind(String),
    Unbind(String),
    Ping { json: bool },
    Bad(String),
}

fn read(text: &str) -> Ask {
    let t = text.trim();
    if let Some(token) = t.strip_prefix("bind-with-token ") {
        return Ask::Bind(token.trim().to_owned());
    }
    if let Some(token) = t.strip_prefix("unbind-from-token ") {
        return Ask::Unbind(token.trim().to_owned());
    }
    if t == "ping" {
        return Ask::Ping { json: false };
    }
    let Ok(v) = serde_json::from_str::<Value>(t) else {
        return Ask::Bad(
            "unknown message: send bind-with-token <token>, unbind-from-token <token> or ping (or their JSON forms)".to_owned(),
        );
    };
    let token = v["payload"]["token"].as_str().map(str::to_owned);
    match (v["type"].as_str(), token) {
        (Some("bind-with-token"), Some(t)) => Ask::Bind(t),
        (Some("unbind-from-token"), Some(t)) => Ask::Unbind(t),
        (Some("ping"), _) => Ask::Ping { json: true },
        (Some("bind-with-token" | "unbind-from-token"), None) => {
            Ask::Bad("payload.token (a string) is required".to_owned())
        }
        _ => Ask::Bad(
            "unknown message type: use bind-with-token, unbind-from-token or ping".to_owned(),
        ),
    }
}

async fn send(socket: &mut WebSocket, text: String) -> bool {
    socket.send(Message::Text(text.into())).await.is_ok()
}

async fn outcome(socket: &mut WebSocket, code: &str, message: &str) -> bool {
    send(socket, operation_outcome(code, message, None).to_string()).await
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        socket.send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))),
    )
    .await;
}

fn bundle(
    state: &Broker,
    s: &Sub,
    kind: &str,
    count: u64,
    events: &[(u64, &crate::log::StoredEvent, Value)],
) -> String {
    let f = &state.fhir;
    let list: Vec<_> = events
        .iter()
        .map(|(n, e, r)| notification_event(*n, e, r, &s.topic))
        .collect();
    let mut info = status_info(&f.base, s, kind, count, s.spec.content);
    // Bound and notified: active (the stored status may lag a reload).
    info.status = "active";
    notification_bundle(
        &info,
        &list,
        &uuid::Uuid::new_v4().to_string(),
        &uuid::Uuid::new_v4().to_string(),
        Timestamp::now(),
    )
}

async fn run(state: Broker, mut socket: WebSocket, peer: SocketAddr) {
    let f = state.fhir.clone();
    let id = f.next_socket();
    let (tx, mut rx) = mpsc::channel::<Notice>(SOCKET_QUEUE);
    let overflow = Arc::new(AtomicBool::new(false));
    let mut bound: HashMap<String, Bound> = HashMap::new();
    let mut by_token: HashMap<String, Vec<String>> = HashMap::new();
    let mut ever_bound = false;
    f.unbound.fetch_add(1, Ordering::AcqRel);
    let opened = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tracing::debug!(%peer, socket = id, "FHIR websocket opened");
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => {
                close(&mut socket, 1001, "the broker is shutting down").await;
                break;
            }
            msg = socket.recv() => {
                let text = match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        if !outcome(&mut socket, "invalid", "binary messages are not part of this channel: send text").await {
                            break;
                        }
                        continue;
                    }
                    Some(Ok(_)) => continue,
                };
                let ok = match read(text.as_str()) {
                    Ask::Ping { json: false } => send(&mut socket, "pong".to_owned()).await,
                    Ask::Ping { json: true } => send(&mut socket, r#"{"type":"pong"}"#.to_owned()).await,
                    Ask::Bad(why) => outcome(&mut socket, "invalid", &why).await,
                    Ask::Unbind(token) => {
                        match by_token.remove(&token) {
                            Some(ids) => {
                                for sid in ids {
                                    f.unbind(id, Some(&sid));
                                    bound.remove(&sid);
                                }
                                true
                            }
                            None => outcome(&mut socket, "not-found", "nothing is bound with that token on this socket").await,
                        }
                    }
                    Ask::Bind(token) => match f.redeem(&token).await {
                        Err(r) => outcome(&mut socket, r.code, &r.message).await,
                        Ok((_, subs)) if subs.iter().any(|s| f.count(&s.stored.id).is_none()) => {
                            outcome(&mut socket, "transient", "the Subscription's event numbers are being counted from the log; get a new token and bind again in a moment").await
                        }
                        Ok((client_id, subs)) => {
                            let mut ok = true;
                            let mut ids = Vec::new();
                            for s in subs {
                                let sid = s.stored.id.clone();
                                if bound.contains_key(&sid) {
                                    // Bound on this socket already: one stream per Subscription.
                                    continue;
                                }
                                f.bind(&sid, id, tx.clone(), overflow.clone());
                                let heartbeat = s.spec.heartbeat_s.map(|h| {
                                    let p = Duration::from_secs(h);
                                    (p, Instant::now() + p)
                                });
                                let text = bundle(&state, &s, "handshake", f.count(&sid).unwrap_or(0), &[]);
                                bound.insert(sid.clone(), Bound { sub: s, heartbeat });
                                ids.push(sid);
                                f.metrics
                                    .fhir_notifications
                                    .with_label_values(&[client_id.as_str(), "websocket", "handshake"])
                                    .inc();
                                if !send(&mut socket, text).await {
                                    ok = false;
                                    break;
                                }
                            }
                            if !ever_bound {
                                f.unbound.fetch_sub(1, Ordering::AcqRel);
                            }
                            ever_bound = true;
                            by_token.insert(token, ids);
                            ok
                        }
                    },
                };
                if !ok {
                    break;
                }
            }
            Some(notice) = rx.recv() => {
                let ok = match notice {
                    Notice::Event { sub, number, event } => {
                        // The Subscription as it is now (an update's payload content counts),
                        // checked again at the write: a notification queued before a
                        // revocation is not sent after it.
                        let now = f.sub(&sub).filter(|now| {
                            bound.contains_key(&sub)
                                && now.stored.status == "active"
                                && f.may_deliver(now).is_ok()
                        });
                        match now {
                            Some(now) => {
                                let resource: Value = serde_json::from_str(event.data.get()).unwrap_or(Value::Null);
                                let text = bundle(&state, &now, "event-notification", number, &[(number, &event, resource)]);
                                f.metrics
                                    .fhir_notifications
                                    .with_label_values(&[now.stored.client_id.as_str(), "websocket", "event-notification"])
                                    .inc();
                                send(&mut socket, text).await
                            }
                            None => true,
                        }
                    }
                    Notice::Revoked { sub, why } => {
                        if bound.remove(&sub).is_some() {
                            for ids in by_token.values_mut() {
                                ids.retain(|x| x != &sub);
                            }
                            outcome(&mut socket, "forbidden", &format!("Subscription/{sub} is no longer delivered: {why}")).await
                        } else {
                            true
                        }
                    }
                };
                if !ok {
                    break;
                }
            }
            _ = tick.tick() => {
                if overflow.load(Ordering::Acquire) {
                    close(&mut socket, 4008, "too slow: notifications were dropped; fill the gap with $events").await;
                    break;
                }
                if bound.is_empty() && !ever_bound && opened.elapsed() >= BIND_WITHIN {
                    close(&mut socket, 1008, "nothing was bound within 30 s: send bind-with-token <token>").await;
                    break;
                }
                let now = Instant::now();
                let mut due = Vec::new();
                for (sid, b) in &mut bound {
                    if let Some((period, next)) = &mut b.heartbeat
                        && now >= *next
                    {
                        *next = now + *period;
                        due.push((sid.clone(), b.sub.clone()));
                    }
                }
                let mut ok = true;
                for (sid, s) in due {
                    let Some(count) = f.count(&sid) else { continue };
                    let s = f.sub(&sid).unwrap_or(s);
                    let text = bundle(&state, &s, "heartbeat", count, &[]);
                    f.metrics
                        .fhir_notifications
                        .with_label_values(&[s.stored.client_id.as_str(), "websocket", "heartbeat"])
                        .inc();
                    if !send(&mut socket, text).await {
                        ok = false;
                        break;
                    }
                }
                if !ok {
                    break;
                }
            }
        }
    }
    f.unbind(id, None);
    if !ever_bound {
        f.unbound.fetch_sub(1, Ordering::AcqRel);
    }
    tracing::debug!(%peer, socket = id, "FHIR websocket closed");
}
