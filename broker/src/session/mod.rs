//! One WebSocket session of `scopecast.v1` (PROTOCOL.md): authentication (by the upgrade's
//! token or a first `auth` frame), subscribe, unsubscribe, publish, ping, refresh, heartbeats,
//! token expiry, and every close code. The only module that knows WebSocket message types.
//!
//! The loop is written over any `Sink`/`Stream` of axum WebSocket messages, one `select!` per
//! session over inbound frames, the outbound queue, timers, registry re-checks and shutdown.
//!
//! - `table`: [`SessionTable`], live sessions by client ID.
//! - `rate`: [`RateLimiter`], publish rates per client ID.

pub mod rate;
pub mod table;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use scopecast_protocol::{
    ClientFrame, CloseCode, ErrorFrame, FrameError, Limits, Pattern, Pong, Reason, Replay,
    RequestId, ServerFrame, Since, Subscribed, Timestamp, TokenExpiring, Unsubscribed, Welcome,
    encode_event,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use rate::RateLimiter;
pub use table::SessionTable;

use crate::auth::token::{Principal, TokenVerifier, VerifyError};
use crate::config::LimitsConfig;
use crate::fanout::{Bus, Kind, PublishRequest, Queued, Reply, Subscriber};
use crate::log::EventLog;
use crate::metrics::Metrics;
use crate::registry::Registry;
use table::SessionEntry;

/// What every session shares.
pub struct Hub {
    /// The publish path and topic index.
    pub bus: Bus,
    /// The event log, for replays.
    pub log: Arc<dyn EventLog>,
    /// Access token verification.
    pub verifier: TokenVerifier,
    /// The application registry.
    pub registry: Registry,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Limits.
    pub limits: LimitsConfig,
    /// Live sessions by client ID.
    pub sessions: SessionTable,
    /// Publish rates.
    pub rate: RateLimiter,
    /// Cancelled when the broker shuts down: sessions close with 1001.
    pub shutdown: CancellationToken,
    next_id: AtomicU64,
}

impl Hub {
    /// Everything sessions share.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        bus: Bus,
        log: Arc<dyn EventLog>,
        verifier: TokenVerifier,
        registry: Registry,
        metrics: Arc<Metrics>,
        limits: LimitsConfig,
        shutdown: CancellationToken,
    ) -> Hub {
        Hub {
            bus,
            log,
            verifier,
            registry,
            metrics,
            rate: RateLimiter::new(limits.publish_rate_per_sec),
            limits,
            sessions: SessionTable::default(),
            shutdown,
            next_id: AtomicU64::new(1),
        }
    }

    /// Counts and logs a refused connection or API call: `auth_failures_total` by reason,
    /// `refused_connections_total` by client ID and reason, and a line at `info` with the
    /// peer. The client ID is read from the (unverified) token only to label it, and only
    /// when it is registered here; otherwise it counts as `unknown`.
    pub fn note_refused(
        &self,
        token: Option<&str>,
        peer: std::net::SocketAddr,
        reason: &'static str,
        message: &str,
    ) {
        let claimed = token
            .and_then(|t| crate::auth::jwt::peek(t).ok())
            .and_then(|u| u.str_claim("client_id").map(str::to_owned));
        let label = claimed
            .as_deref()
            .filter(|id| self.registry.client(id).is_some())
            .unwrap_or(crate::metrics::UNKNOWN_CLIENT);
        self.metrics
            .auth_failures
            .with_label_values(&[reason])
            .inc();
        self.metrics
            .refused_connections
            .with_label_values(&[label, reason])
            .inc();
        tracing::info!(client_id = label, %peer, reason, message, "request refused");
    }

    fn limits_frame(&self) -> Limits {
        Limits {
            max_frame_bytes: self.limits.max_frame_bytes as u64,
            max_subscriptions: self.limits.max_subscriptions as u32,
            outbound_queue_bytes: self.limits.outbound_queue_bytes as u64,
            publish_rate_per_sec: self.limits.publish_rate_per_sec,
        }
    }
}

/// How long a close frame may wait for a peer that does not read before the connection is
/// simply dropped.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest close reason, in bytes (RFC 6455 section 5.5: control payloads are at most 125).
const MAX_CLOSE_REASON: usize = 120;

fn close_message(code: CloseCode, reason: &str) -> Message {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code: code.as_u16(),
        reason: Utf8Bytes::from(&reason[..end]),
    }))
}

fn text(frame: &ServerFrame) -> Message {
    Message::Text(Utf8Bytes::from(frame.encode()))
}

fn error_frame(id: Option<RequestId>, reason: Reason, message: String) -> ServerFrame {
    ServerFrame::Error(ErrorFrame::new(id, reason, message))
}

/// The close code for a transport-level read failure (PROTOCOL.md section 7).
fn close_for(err: &axum::Error) -> Option<(CloseCode, &'static str)> {
    use tungstenite::error::{CapacityError, Error as WsError};
    let inner = err.to_string();
    let boxed: &(dyn std::error::Error + 'static) = err;
    let ws = std::iter::successors(Some(boxed), |e| e.source())
        .find_map(|e| e.downcast_ref::<WsError>());
    match ws {
        Some(WsError::Utf8(_)) => {
            Some((CloseCode::InvalidPayload, "invalid UTF-8 in a text message"))
        }
        Some(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
            Some((CloseCode::MessageTooBig, "message over max_frame_bytes"))
        }
        Some(WsError::Capacity(_)) => {
            Some((CloseCode::MessageTooBig, "frame over max_frame_bytes"))
        }
        // A peer that drops TCP without a close frame disconnected abruptly: no protocol
        // error to answer, nobody to answer it to.
        Some(WsError::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => None,
        Some(WsError::Protocol(_)) => Some((CloseCode::ProtocolError, "WebSocket protocol error")),
        Some(WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_)) => None,
        _ if inner.contains("UTF-8") || inner.contains("utf-8") => {
            Some((CloseCode::InvalidPayload, "invalid UTF-8 in a text message"))
        }
        _ => None,
    }
}

/// What a session starts from, besides its socket: made when the upgrade is accepted.
pub struct Start {
    /// The broker's shared state.
    pub hub: Arc<Hub>,
    /// Set when the upgrade request carried a valid token; `None`: the first frame must be
    /// `auth`.
    pub principal: Option<Principal>,
    /// The peer's socket address.
    pub peer: std::net::SocketAddr,
}

/// Runs one session to its end.
///
/// The socket and the [`Start`] come boxed and are moved out at once: a future keeps its
/// arguments for its whole life, so unboxed they would be stored twice per connection (as
/// arguments and inside the running session), about 0.5 KiB of every idle connection's
/// memory (BENCHMARKS.md, idle connections).
pub async fn run<S>(socket: Box<S>, start: Box<Start>)
where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send,
{
    let Start {
        hub,
        principal,
        peer,
    } = *start;
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("session", session = %format_args!("{id:x}"), %peer, client_id = tracing::field::Empty);
    let fut = async move {
        let mut socket = *socket;
        let principal = match principal {
            Some(p) => p,
            // Boxed, like `inbound` below: the task of an idle session keeps no room for
            // the states of paths it is not in.
            None => match Box::pin(first_auth(&mut socket, &hub, peer)).await {
                Some(p) => p,
                None => return,
            },
        };
        tracing::Span::current().record("client_id", principal.client_id.as_str());
        let client_id: Arc<str> = principal.client_id.as_str().into();
        let stats = hub.metrics.client(&client_id);
        let subscriber = Arc::new(Subscriber::new(
            id,
            client_id,
            hub.limits.outbound_queue_bytes,
            stats,
        ));
        let entry = match hub.sessions.register(
            &subscriber,
            &principal.application_id,
            peer,
            hub.limits.max_connections_per_client,
            &hub.metrics,
        ) {
            Ok(e) => e,
            Err(_) => {
                hub.metrics
                    .refused_connections
                    .with_label_values(&[principal.client_id.as_str(), "too_many_connections"])
                    .inc();
                tracing::info!(
                    reason = "too_many_connections",
                    "connection refused: the client ID holds its most connections; closing with 4029"
                );
                let reason = format!(
                    "client {} already has its most connections",
                    principal.client_id
                );
                let _ = tokio::time::timeout(
                    CLOSE_WRITE_TIMEOUT,
                    socket.send(close_message(CloseCode::TooManyConnections, &reason)),
                )
                .await;
                return;
            }
        };
        hub.metrics.connections.inc();
        // The span carries the session, peer and client ID.
        tracing::info!("session opened");
        let opened = Instant::now();
        let mut session = Session {
            socket,
            hub: hub.clone(),
            id,
            subscriber,
            entry,
            principal,
            subs: HashMap::new(),
            bad_frames: 0,
            last_heard: Instant::now(),
            warned: false,
            refreshed: false,
            ended: Ended::Abrupt,
        };
        session.serve().await;
        session.finish();
        let duration_ms = opened.elapsed().as_millis() as u64;
        let delivered = session.subscriber.delivered.load(Ordering::Relaxed);
        match session.ended {
            Ended::Server(code) | Ended::Client(code) => tracing::info!(
                close_code = code,
                closed_by = if matches!(session.ended, Ended::Server(_)) {
                    "broker"
                } else {
                    "client"
                },
                duration_ms,
                delivered,
                "session closed"
            ),
            Ended::Abrupt => tracing::info!(
                duration_ms,
                delivered,
                "session closed: abrupt disconnect (TCP closed without a close frame)"
            ),
        }
    };
    tracing::Instrument::instrument(fut, span).await;
}

/// Waits for the first frame, which must be `auth`, within the auth timeout.
async fn first_auth<S>(socket: &mut S, hub: &Hub, peer: std::net::SocketAddr) -> Option<Principal>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let deadline = Duration::from_millis(hub.limits.auth_timeout_ms);
    let msg = loop {
        match tokio::time::timeout(deadline, socket.next()).await {
            Err(_) => {
                hub.note_refused(None, peer, "auth_timeout", "no auth frame in time");
                return refuse(
                    socket,
                    None,
                    CloseCode::Unauthorized,
                    format!("no auth frame within {} ms", deadline.as_millis()),
                )
                .await;
            }
            Ok(None) => return None,
            Ok(Some(Err(e))) => {
                return match close_for(&e) {
                    Some((code, why)) => refuse(socket, None, code, why.to_owned()).await,
                    None => None,
                };
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Close(_)))) => {
                let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, socket.flush()).await;
                return None;
            }
            Ok(Some(Ok(Message::Binary(_)))) => {
                return refuse(
                    socket,
                    None,
                    CloseCode::UnsupportedData,
                    "binary messages are not part of scopecast.v1".into(),
                )
                .await;
            }
            Ok(Some(Ok(Message::Text(t)))) => break t,
        }
    };
    match ClientFrame::decode(&msg, hub.limits.max_frame_bytes) {
        Ok(ClientFrame::Auth { token }) => match hub.verifier.verify(&token).await {
            Ok(p) => Some(p),
            Err(e) => {
                hub.note_refused(Some(&token), peer, e.label(), &e.to_string());
                let code = if e.reason() == Reason::ClientInactive {
                    CloseCode::Forbidden
                } else {
                    CloseCode::Unauthorized
                };
                let frame = error_frame(None, e.reason(), e.to_string());
                refuse(socket, Some(frame), code, e.to_string()).await
            }
        },
        Ok(other) => {
            let frame = error_frame(
                other.id().cloned(),
                Reason::AuthRequired,
                "authenticate first: send an `auth` frame".into(),
            );
            refuse(
                socket,
                Some(frame),
                CloseCode::Unauthorized,
                "authenticate first".into(),
            )
            .await
        }
        Err(e) => {
            refuse(
                socket,
                Some(e.to_frame()),
                CloseCode::Unauthorized,
                "authenticate first".into(),
            )
            .await
        }
    }
}

/// Sends an optional error frame, then a close frame; the session ends.
async fn refuse<S>(
    socket: &mut S,
    frame: Option<ServerFrame>,
    code: CloseCode,
    reason: String,
) -> Option<Principal>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    if let Some(f) = frame {
        let _ = socket.feed(text(&f)).await;
    }
    let _ = tokio::time::timeout(
        CLOSE_WRITE_TIMEOUT,
        socket.send(close_message(code, &reason)),
    )
    .await;
    None
}

struct Session<S> {
    socket: S,
    hub: Arc<Hub>,
    id: u64,
    subscriber: Arc<Subscriber>,
    entry: Arc<SessionEntry>,
    principal: Principal,
    /// Live subscriptions (each also in the topic index).
    /// Live subscriptions, each with the `seq` after which it delivers every matching event
    /// (its `head_seq`, or where its replay started).
    subs: HashMap<Pattern, u64>,
    bad_frames: u32,
    last_heard: Instant,
    warned: bool,
    /// Set by an accepted refresh, so the loop re-arms its expiry timers.
    refreshed: bool,
    /// How the session ended, for its last log line.
    ended: Ended,
}

/// How a session ended.
#[derive(Debug, Clone, Copy)]
enum Ended {
    /// The broker sent this close code.
    Server(u16),
    /// The client sent this close code (1005: a close frame without one).
    Client(u16),
    /// The connection dropped without a close frame.
    Abrupt,
}

/// How a step of the loop ended.
enum Step {
    Continue,
    Stop,
}

impl<S> Session<S>
where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send,
{
    /// When the token's validity ends (its `exp` plus the leeway), as a timer instant.
    fn expiry(&self) -> Instant {
        let left = self.principal.expires_at.unix_ms() - Timestamp::now().unix_ms();
        let leeway = self.hub.verifier.leeway_s() as i64 * 1000;
        // The fan-out stops queueing events accepted after this instant, to the millisecond.
        self.subscriber
            .set_deadline_ms(self.principal.expires_at.unix_ms() + leeway);
        Instant::now() + Duration::from_millis((left + leeway).max(0) as u64)
    }

    /// When `token_expiring` is due: before `exp` by `token_warning_ms`, or by half of what
    /// is left when that is shorter.
    fn warning(&self) -> Instant {
        let left = (self.principal.expires_at.unix_ms() - Timestamp::now().unix_ms()).max(0) as u64;
        let before = self.hub.limits.token_warning_ms.min(left / 2);
        Instant::now() + Duration::from_millis(left - before)
    }

    fn reply(&self, frame: &ServerFrame) {
        let _ = self.subscriber.reply(frame);
    }

    fn welcome(&self) {
        let w = ServerFrame::Welcome(Welcome {
            session: format!("{:x}", self.id),
            client_id: self.principal.client_id.clone(),
            scope: (*self.principal.scope).clone(),
            expires_at: self.principal.expires_at,
            heartbeat_ms: self.hub.limits.heartbeat_ms,
            limits: self.hub.limits_frame(),
            log_epoch: Some(self.hub.log.epoch().to_owned()),
        });
        self.reply(&w);
    }

    async fn serve(&mut self) {
        self.welcome();
        let heartbeat = Duration::from_millis(self.hub.limits.heartbeat_ms);
        let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.hub.shutdown.clone();
        let mut expiry = self.expiry();
        let mut warning = self.warning();
        loop {
            let step = tokio::select! {
                biased;
                () = shutdown.cancelled(), if !self.subscriber.outbox.is_closed() => {
                    self.subscriber.outbox.close(CloseCode::GoingAway, "the broker is shutting down", true);
                    Step::Continue
                }
                () = self.subscriber.outbox.ready() => self.write().await,
                msg = self.socket.next() => {
                    // Boxed: a subscribe with replay, a publish or a refresh needs about 1.2 KiB
                    // of future state while it runs, which an idle session would otherwise
                    // hold for its whole life (one allocation per frame received).
                    let step = Box::pin(self.inbound(msg)).await;
                    if std::mem::take(&mut self.refreshed) {
                        // A refresh moved the token's expiry.
                        expiry = self.expiry();
                        warning = self.warning();
                    }
                    step
                }
                () = self.entry.wake.notified() => {
                    if self.entry.take_recheck() { self.recheck(); }
                    Step::Continue
                }
                _ = ping.tick() => self.heartbeat(heartbeat).await,
                () = tokio::time::sleep_until(warning), if !self.warned => {
                    self.warned = true;
                    let left = (self.principal.expires_at.unix_ms() - Timestamp::now().unix_ms()).max(0) as u64;
                    self.reply(&ServerFrame::TokenExpiring(TokenExpiring { expires_in_ms: left }));
                    Step::Continue
                }
                () = tokio::time::sleep_until(expiry) => {
                    // Nothing is delivered after this instant: what is queued is dropped.
                    self.subscriber.outbox.close(CloseCode::TokenExpired, "the access token expired", false);
                    Step::Continue
                }
            };
            if let Step::Stop = step {
                return;
            }
        }
    }

    /// Writes everything queued, then flushes once; abandons a write stalled on a peer that
    /// does not read when a dropping close (4008, 4003, 4002) is decided meanwhile.
    async fn write(&mut self) -> Step {
        let drained = self.subscriber.outbox.drain();
        let oldest = drained.frames.iter().find_map(|q| match q.kind {
            Kind::Live(at) => Some(at),
            _ => None,
        });
        let events = drained.frames.iter().filter(|q| q.is_event()).count() as u64;
        let outbox_sub = self.subscriber.clone();
        let socket = &mut self.socket;
        let wrote = tokio::select! {
            r = async {
                for q in drained.frames {
                    socket.feed(Message::Text(q.text)).await?;
                }
                socket.flush().await
            } => r.is_ok(),
            () = outbox_sub.outbox.aborted() => true,
        };
        if let Some(t) = oldest {
            self.hub
                .metrics
                .publish_to_deliver
                .observe(t.elapsed().as_secs_f64());
        }
        if !wrote {
            return Step::Stop;
        }
        if events > 0 {
            // Written to the socket: what "delivered" means (the access audit counts the same).
            self.subscriber
                .delivered
                .fetch_add(events, Ordering::Relaxed);
            self.subscriber
                .stats
                .delivered
                .fetch_add(events, Ordering::Relaxed);
        }
        let close = drained.close.or_else(|| {
            // An abort decided during the write: take its close now.
            if self.subscriber.outbox.is_closed() {
                self.subscriber.outbox.drain().close
            } else {
                None
            }
        });
        match close {
            Some((code, reason)) => {
                tracing::debug!(code = code.as_u16(), %reason, "closing");
                self.ended = Ended::Server(code.as_u16());
                let _ = tokio::time::timeout(
                    CLOSE_WRITE_TIMEOUT,
                    self.socket.send(close_message(code, &reason)),
                )
                .await;
                Step::Stop
            }
            None => Step::Continue,
        }
    }

    async fn heartbeat(&mut self, interval: Duration) -> Step {
        if self.last_heard.elapsed() > interval * 2 {
            self.subscriber.outbox.close(
                CloseCode::HeartbeatTimeout,
                "no answer to heartbeats",
                false,
            );
            return Step::Continue;
        }
        match tokio::time::timeout(
            CLOSE_WRITE_TIMEOUT,
            self.socket.send(Message::Ping(axum::body::Bytes::new())),
        )
        .await
        {
            Ok(Ok(())) => Step::Continue,
            _ => Step::Stop,
        }
    }

    async fn inbound(&mut self, msg: Option<Result<Message, axum::Error>>) -> Step {
        let msg = match msg {
            None => return Step::Stop,
            Some(Err(e)) => {
                return match close_for(&e) {
                    Some((code, why)) => {
                        self.subscriber.outbox.close(code, why, false);
                        Step::Continue
                    }
                    None => Step::Stop,
                };
            }
            Some(Ok(m)) => m,
        };
        self.last_heard = Instant::now();
        match msg {
            Message::Text(t) => self.text(&t).await,
            Message::Binary(_) => {
                self.subscriber.outbox.close(
                    CloseCode::UnsupportedData,
                    "binary messages are not part of scopecast.v1",
                    true,
                );
                Step::Continue
            }
            Message::Ping(_) | Message::Pong(_) => Step::Continue,
            Message::Close(frame) => {
                self.ended = Ended::Client(frame.map_or(1005, |f| f.code));
                // The WebSocket layer queued the closing handshake's reply: send it.
                let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.socket.flush()).await;
                Step::Stop
            }
        }
    }

    fn bad_frame(&mut self, e: FrameError) {
        self.reply(&e.to_frame());
        self.bad_frames += 1;
        if self.bad_frames >= self.hub.limits.max_bad_frames {
            self.subscriber.outbox.close(
                CloseCode::BadFrames,
                "too many malformed frames in a row",
                true,
            );
        }
    }

    async fn text(&mut self, t: &str) -> Step {
        let frame = match ClientFrame::decode(t, self.hub.limits.max_frame_bytes) {
            Ok(f) => f,
            Err(e) => {
                self.bad_frame(e);
                return Step::Continue;
            }
        };
        self.bad_frames = 0;
        match frame {
            ClientFrame::Auth { token } => self.refresh(&token).await,
            ClientFrame::Subscribe { id, topic, since } => {
                return self.subscribe(id, topic, since).await;
            }
            ClientFrame::Unsubscribe { id, topic } => self.unsubscribe(id, &topic),
            ClientFrame::Publish {
                id,
                topic,
                data,
                event_id,
            } => self.publish(id, topic, data, event_id).await,
            ClientFrame::Ping { id } => self.reply(&ServerFrame::Pong(Pong { id })),
        }
        Step::Continue
    }

    /// The registry's current view of this client: `None` when it may no longer connect.
    fn client_ceiling(&self) -> Option<Arc<scopecast_protocol::ScopeSet>> {
        let c = self.hub.registry.client(&self.principal.client_id)?;
        (c.active && c.kind == self.principal.kind).then(|| c.ceiling.clone())
    }

    fn inactive(&self) {
        self.subscriber.outbox.close(
            CloseCode::Forbidden,
            "client ID is not active in this environment",
            false,
        );
    }

    async fn subscribe(&mut self, id: RequestId, pattern: Pattern, since: Option<Since>) -> Step {
        let Some(ceiling) = self.client_ceiling() else {
            self.inactive();
            return Step::Continue;
        };
        let metrics = self.hub.metrics.clone();
        if self.subs.contains_key(&pattern) {
            // Idempotent: the subscription already runs; nothing is replayed again.
            metrics.subscribe_results.with_label_values(&["ok"]).inc();
            let head_seq = self.hub.bus.head_seq();
            self.reply(&ServerFrame::Subscribed(Subscribed {
                id,
                topic: pattern,
                head_seq,
                replay: None,
                log_epoch: Some(self.hub.log.epoch().to_owned()),
            }));
            return Step::Continue;
        }
        let in_token = self.principal.scope.allows_subscribe(&pattern);
        if !in_token || !ceiling.allows_subscribe(&pattern) {
            metrics
                .subscribe_results
                .with_label_values(&["forbidden"])
                .inc();
            let whose = if in_token {
                "the application's scope"
            } else {
                "the token's scope"
            };
            let mut e = ErrorFrame::new(
                Some(id),
                Reason::InsufficientScope,
                format!(
                    "client {} may not subscribe to {pattern}: {whose} does not include subscribe:{pattern}",
                    self.principal.client_id
                ),
            );
            e.required_scope = Some(format!("subscribe:{pattern}"));
            self.reply(&ServerFrame::Error(e));
            return Step::Continue;
        }
        if self.subs.len() >= self.hub.limits.max_subscriptions {
            metrics
                .subscribe_results
                .with_label_values(&["limit"])
                .inc();
            let msg = format!(
                "this connection already holds {} subscriptions",
                self.subs.len()
            );
            self.reply(&error_frame(Some(id), Reason::TooManySubscriptions, msg));
            return Step::Continue;
        }
        // Where the replay starts: after `seq` N, or from the first event at or after a time.
        let after = match since {
            None => None,
            Some(Since::Seq(n)) => Some(n),
            Some(Since::Time(t)) => match self.hub.log.seq_at(t).await {
                Ok(first) => Some(first.saturating_sub(1)),
                Err(e) => {
                    self.reply(&error_frame(
                        Some(id),
                        Reason::LogUnavailable,
                        format!("cannot read the event log: {e}"),
                    ));
                    return Step::Continue;
                }
            },
        };
        let replay = after.map(|after| {
            let first = self.hub.log.first_seq();
            Replay {
                from_seq: after.saturating_add(1).max(first),
                truncated: after.saturating_add(1) < first,
            }
        });
        if replay.is_some() {
            // Live events wait until the replayed ones are queued.
            self.subscriber.hold();
        }
        let sub = self.subscriber.clone();
        let topic = pattern.clone();
        let log_epoch = Some(self.hub.log.epoch().to_owned());
        let head = self
            .hub
            .bus
            .subscribe(&pattern, &self.subscriber, move |head_seq| {
                let _ = sub.reply(&ServerFrame::Subscribed(Subscribed {
                    id,
                    topic,
                    head_seq,
                    replay,
                    log_epoch,
                }));
            });
        // This subscription delivers every matching event after `after` (replayed) or after
        // `head` (live only): later replays on this connection skip those.
        self.subs
            .insert(pattern.clone(), after.map_or(head, |a| a.min(head)));
        self.entry.subscriptions.lock().push(pattern.clone());
        metrics.subscriptions.inc();
        metrics.subscribe_results.with_label_values(&["ok"]).inc();
        let mut step = match after {
            Some(after) => self.replay(&pattern, after, head).await,
            None => Step::Continue,
        };
        if after.is_some()
            && matches!(step, Step::Continue)
            && self.subscriber.outbox.queued_bytes() > 0
        {
            // Send the replay before the held live events join the queue.
            step = self.write().await;
        }
        self.subscriber.release();
        step
    }

    /// Queues the stored events of `pattern` with `after < seq <= head`, writing as it goes so
    /// a long replay never overflows the queue. An event already delivered on this connection
    /// (through another subscription that was live when it was published) is skipped.
    async fn replay(&mut self, pattern: &Pattern, after: u64, head: u64) -> Step {
        const PAGE: usize = 512;
        let mut cursor = after;
        while cursor < head {
            let page = match self.hub.log.read_after(cursor, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    let mut err = ErrorFrame::new(
                        None,
                        Reason::LogUnavailable,
                        format!("replay of {pattern} stopped: {e}"),
                    );
                    err.topic = Some(pattern.clone());
                    self.reply(&ServerFrame::Error(err));
                    return Step::Continue;
                }
            };
            let full = page.len() == PAGE;
            for e in page {
                if e.seq > head {
                    cursor = head;
                    break;
                }
                cursor = e.seq;
                let elsewhere = self
                    .subs
                    .iter()
                    .any(|(p, start)| p != pattern && *start < e.seq && p.matches(&e.topic));
                if !pattern.matches(&e.topic) || elsewhere {
                    continue;
                }
                let bytes = encode_event(e.seq, &e.topic, &e.event_id, e.time, e.data.as_raw());
                let text =
                    Utf8Bytes::try_from(bytes).unwrap_or_else(|_| Utf8Bytes::from_static("{}"));
                // Write out before this event could overflow the queue: a replay never makes a
                // reader that keeps up a slow consumer.
                if self.subscriber.outbox.queued_bytes() + text.len()
                    > self.hub.limits.outbound_queue_bytes / 2
                    && let Step::Stop = self.write().await
                {
                    return Step::Stop;
                }
                if self
                    .subscriber
                    .outbox
                    .push(Queued {
                        text,
                        kind: Kind::Replayed,
                    })
                    .is_err()
                {
                    return Step::Continue;
                }
            }
            if self.subscriber.outbox.queued_bytes() > self.hub.limits.outbound_queue_bytes / 2
                && let Step::Stop = self.write().await
            {
                return Step::Stop;
            }
            if !full {
                break;
            }
        }
        Step::Continue
    }

    fn unsubscribe(&mut self, id: RequestId, pattern: &Pattern) {
        if self.subs.remove(pattern).is_none() {
            let msg = format!("this connection holds no subscription to {pattern}");
            return self.reply(&error_frame(Some(id), Reason::SubscriptionNotFound, msg));
        }
        self.hub.bus.unsubscribe(pattern, &self.subscriber);
        self.entry.subscriptions.lock().retain(|p| p != pattern);
        self.hub.metrics.subscriptions.dec();
        self.reply(&ServerFrame::Unsubscribed(Unsubscribed { id }));
    }

    async fn publish(
        &mut self,
        id: RequestId,
        topic: scopecast_protocol::Topic,
        data: scopecast_protocol::RawJson,
        event_id: Option<scopecast_protocol::EventId>,
    ) {
        let Some(ceiling) = self.client_ceiling() else {
            return self.inactive();
        };
        let in_token = self.principal.scope.allows_publish(&topic);
        if !in_token || !ceiling.allows_publish(&topic) {
            let whose = if in_token {
                "the application's scope"
            } else {
                "the token's scope"
            };
            let mut e = ErrorFrame::new(
                Some(id),
                Reason::InsufficientScope,
                format!(
                    "client {} may not publish to {topic}: {whose} does not include publish:{topic}",
                    self.principal.client_id
                ),
            );
            e.required_scope = Some(format!("publish:{topic}"));
            return self.reply(&ServerFrame::Error(e));
        }
        if let Err(wait) = self.hub.rate.take(&self.subscriber.client_id) {
            self.hub.metrics.publish_rate_limited.inc();
            let mut e = ErrorFrame::new(
                Some(id),
                Reason::PublishRateExceeded,
                format!(
                    "over {} publishes per second for this client ID",
                    self.hub.limits.publish_rate_per_sec
                ),
            );
            e.retry_after_ms = Some(wait.as_millis().max(1) as u64);
            return self.reply(&ServerFrame::Error(e));
        }
        let req = PublishRequest {
            topic,
            data,
            event_id,
            reply: Reply::Session {
                subscriber: self.subscriber.clone(),
                id: id.clone(),
                rate: self.hub.rate.clone(),
            },
        };
        if self.hub.bus.publish(req).await.is_err() {
            self.reply(&error_frame(
                Some(id),
                Reason::ShuttingDown,
                "the broker is shutting down".into(),
            ));
        }
    }

    async fn refresh(&mut self, token: &str) {
        match self.hub.verifier.verify(token).await {
            Err(e) => {
                self.hub
                    .metrics
                    .auth_failures
                    .with_label_values(&[e.label()])
                    .inc();
                self.reply(&error_frame(
                    None,
                    e.reason(),
                    format!("refresh refused: {e}; the current token stays in force"),
                ));
                if matches!(
                    e,
                    VerifyError::ClientInactive | VerifyError::WrongEnvironment
                ) {
                    self.inactive();
                }
            }
            Ok(p) if p.client_id != self.principal.client_id => {
                self.hub
                    .metrics
                    .auth_failures
                    .with_label_values(&["client_mismatch"])
                    .inc();
                let msg = format!(
                    "a refresh must carry a token of client {}",
                    self.principal.client_id
                );
                self.reply(&error_frame(None, Reason::ClientMismatch, msg));
                self.subscriber.outbox.close(
                    CloseCode::Forbidden,
                    "refresh with another client's token",
                    true,
                );
            }
            Ok(p) => {
                self.principal = p;
                self.warned = false;
                self.refreshed = true;
                self.recheck();
                self.welcome();
            }
        }
    }

    /// Ends exactly the subscriptions the token's scope and the application's ceiling no
    /// longer allow, each with `scope_revoked`; closes with 4003 if the client is inactive.
    fn recheck(&mut self) {
        let Some(ceiling) = self.client_ceiling() else {
            return self.inactive();
        };
        let lost: Vec<Pattern> = self
            .subs
            .keys()
            .filter(|p| !(self.principal.scope.allows_subscribe(p) && ceiling.allows_subscribe(p)))
            .cloned()
            .collect();
        for p in lost {
            self.subs.remove(&p);
            self.entry.subscriptions.lock().retain(|x| *x != p);
            self.hub.bus.unsubscribe(&p, &self.subscriber);
            self.hub.metrics.subscriptions.dec();
            let mut e = ErrorFrame::new(
                None,
                Reason::ScopeRevoked,
                format!("the subscription to {p} ended: subscribe:{p} is no longer granted"),
            );
            e.required_scope = Some(format!("subscribe:{p}"));
            e.topic = Some(p);
            self.reply(&ServerFrame::Error(e));
        }
    }

    /// Leaves the index and the session table.
    fn finish(&mut self) {
        for p in self.subs.keys() {
            self.hub.bus.unsubscribe(p, &self.subscriber);
        }
        self.hub.metrics.subscriptions.sub(self.subs.len() as i64);
        self.subs.clear();
        self.subscriber
            .outbox
            .close(CloseCode::Normal, "session ended", false);
        self.hub.sessions.unregister(&self.entry, &self.hub.metrics);
        self.hub.metrics.connections.dec();
    }
}
