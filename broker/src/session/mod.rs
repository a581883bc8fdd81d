//! One WebSocket session of `scopecast.v1` (PROTOCOL.md), split by job:
//!
//! - here: [`run`] and the session loop: one `select!` over inbound frames, the outbound
//!   queue, publish acknowledgements, timers, registry re-checks and shutdown.
//! - `transport`: the WebSocket (the only code that knows its message types): writes,
//!   heartbeats, close frames and codes.
//! - `auth`: the first `auth` frame, refreshes, the token's expiry and its warning.
//! - `subscribe`: subscribe (with replay), unsubscribe, and the re-check after a change.
//! - `publish`: publish through the one admission, and its acknowledgements.
//! - `handle`: [`SessionHandle`], the half the fan-out and the session table share.
//! - `outbox`: the byte-bounded outbound queue.
//! - [`table`]: [`SessionTable`], live sessions by client ID.

mod audit;
mod auth;
mod handle;
mod outbox;
mod publish;
mod subscribe;
pub(crate) mod table;
#[cfg(test)]
mod tests;
mod transport;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use scopecast_protocol::{
    ClientFrame, CloseCode, ErrorFrame, FrameError, Limits, Pattern, Pong, Reason, RequestId,
    ServerFrame, Timestamp, TokenExpiring, Welcome,
};
use tokio::time::Instant;

pub(crate) use handle::SessionHandle;
pub(crate) use table::SessionTable;
pub(crate) use transport::Socket;

use crate::access::PendingAck;
use crate::auth::token::Principal;
use crate::fanout::Deliver;
use crate::state::Broker;
use outbox::Kind;
use transport::Incoming;

fn error_frame(id: Option<RequestId>, reason: Reason, message: String) -> ServerFrame {
    ServerFrame::Error(ErrorFrame::new(id, reason, message))
}

/// What a session starts from, besides its socket: made when the upgrade is accepted.
pub(crate) struct Start {
    /// The broker's services.
    pub(crate) broker: Broker,
    /// Set when the upgrade request carried a valid token; `None`: the first frame must be
    /// `auth`.
    pub(crate) principal: Option<Principal>,
    /// The peer's socket address.
    pub(crate) peer: SocketAddr,
}

/// Runs one session to its end.
///
/// The socket and the [`Start`] come boxed and are moved out at once: a future keeps its
/// arguments for its whole life, so unboxed they would be stored twice per connection (as
/// arguments and inside the running session), about 0.5 KiB of every idle connection's
/// memory (BENCHMARKS.md, idle connections).
pub(crate) async fn run<S: Socket>(socket: Box<S>, start: Box<Start>) {
    let Start {
        broker,
        principal,
        peer,
    } = *start;
    let id = broker.next_session_id();
    let span = tracing::info_span!("session", session = %format_args!("{id:x}"), %peer, client_id = tracing::field::Empty);
    let fut = async move {
        let mut socket = *socket;
        let principal = match principal {
            Some(p) => p,
            // Boxed, like `inbound` below: the task of an idle session keeps no room for
            // the states of paths it is not in.
            None => match Box::pin(auth::first_auth(&mut socket, &broker, peer)).await {
                Some(p) => p,
                None => return,
            },
        };
        tracing::Span::current().record("client_id", principal.client_id.as_str());
        let limits = &broker.config.limits;
        let handle = Arc::new(SessionHandle::new(
            id,
            principal.client_id.as_str().into(),
            principal.application_id.clone(),
            peer,
            (limits.outbound_queue_bytes, limits.write_buffer_bytes),
            broker.metrics.clone(),
        ));
        if broker
            .sessions
            .register(&handle, limits.max_connections_per_client, &broker.metrics)
            .is_err()
        {
            broker
                .access
                .refused_client(&principal.client_id, peer, "too_many_connections");
            let reason = format!(
                "client {} already has its most connections",
                principal.client_id
            );
            transport::close(&mut socket, CloseCode::TooManyConnections, &reason).await;
            return;
        }
        broker.metrics.connections.inc();
        // The span carries the session, peer and client ID.
        tracing::info!("session opened");
        let opened = Instant::now();
        let mut session = Session {
            socket,
            deliver: handle.clone(),
            handle,
            broker,
            principal,
            subs: HashMap::new(),
            audits: HashMap::new(),
            acks: VecDeque::new(),
            bad_frames: 0,
            last_heard: Instant::now(),
            warned: false,
            refreshed: false,
            ended: Ended::Abrupt,
        };
        session.serve().await;
        session.finish();
        let duration_ms = opened.elapsed().as_millis() as u64;
        let delivered = session.handle.delivered.load(Ordering::Relaxed);
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

/// A running session: what its task owns.
pub(crate) struct Session<S> {
    socket: S,
    broker: Broker,
    /// The shared half: outbox, counters, identity.
    handle: Arc<SessionHandle>,
    /// The same handle as the fan-out holds it.
    deliver: Arc<dyn Deliver>,
    principal: Principal,
    /// Live subscriptions (each also in the topic index), each with the `seq` after which it
    /// delivers every matching event (its `head_seq`, or where its replay started).
    subs: HashMap<Pattern, u64>,
    /// The access audit's record of each live subscription (empty when the audit is off).
    audits: HashMap<Pattern, audit::SubAudit>,
    /// Publishes handed to the log, answered in order as they complete.
    acks: VecDeque<(RequestId, PendingAck)>,
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

/// The oldest pending acknowledgement, once it completes.
async fn front_ack(
    acks: &mut VecDeque<(RequestId, PendingAck)>,
) -> Option<(
    RequestId,
    Result<crate::access::Ack, crate::access::PublishRefused>,
)> {
    let (_, pending) = acks.front_mut()?;
    let result = pending.await;
    let (id, _) = acks.pop_front()?;
    Some((id, result))
}

impl<S: Socket> Session<S> {
    /// The oldest pending acknowledgement if the log has answered it already (never waits).
    fn ready_ack(
        &mut self,
    ) -> Option<(
        RequestId,
        Result<crate::access::Ack, crate::access::PublishRefused>,
    )> {
        let (_, pending) = self.acks.front_mut()?;
        let result = futures_util::FutureExt::now_or_never(pending)?;
        let (id, _) = self.acks.pop_front()?;
        Some((id, result))
    }

    fn reply(&self, frame: &ServerFrame) {
        let _ = self.handle.reply(frame);
    }

    fn limits_frame(&self) -> Limits {
        let l = &self.broker.config.limits;
        Limits {
            max_frame_bytes: l.max_frame_bytes as u64,
            max_subscriptions: l.max_subscriptions as u32,
            outbound_queue_bytes: l.outbound_queue_bytes as u64,
            publish_rate_per_sec: l.publish_rate_per_sec,
        }
    }

    fn welcome(&self) {
        let w = ServerFrame::Welcome(Welcome {
            session: format!("{:x}", self.handle.id),
            client_id: self.principal.client_id.clone(),
            scope: (*self.principal.scope).clone(),
            expires_at: self.principal.expires_at,
            heartbeat_ms: self.broker.config.limits.heartbeat_ms,
            limits: self.limits_frame(),
            log_epoch: Some(self.broker.log.epoch().to_owned()),
        });
        self.reply(&w);
    }

    async fn serve(&mut self) {
        self.welcome();
        let heartbeat = Duration::from_millis(self.broker.config.limits.heartbeat_ms);
        let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.broker.shutdown.clone();
        let mut expiry = self.expiry();
        let mut warning = self.warning();
        let limits = &self.broker.config.limits;
        let window = Duration::from_micros(limits.write_coalesce_us);
        let wide = limits.write_coalesce_min_fanout as i64;
        // When the last write of events began, and until when queued events wait for more to
        // join them (limits.write_coalesce_us).
        let mut last_write = Instant::now()
            .checked_sub(window)
            .unwrap_or_else(Instant::now);
        let mut hold: Option<Instant> = None;
        let handle = Arc::clone(&self.handle);
        loop {
            let step = tokio::select! {
                biased;
                () = shutdown.cancelled(), if !self.handle.outbox.is_closed() => {
                    self.handle.outbox.close(CloseCode::GoingAway, "the broker is shutting down", true);
                    Step::Continue
                }
                urgent = self.handle.outbox.ready(), if hold.is_none() => {
                    let now = Instant::now();
                    let due = last_write + window;
                    if urgent || now >= due || self.broker.metrics.fanout_width.get() < wide {
                        last_write = now;
                        self.write().await
                    } else {
                        hold = Some(due);
                        Step::Continue
                    }
                }
                // Held events go out at the window's end, or at once when a reply or close is
                // queued meanwhile (by this session, the fan-out or a deactivation) or a
                // write's worth of events is.
                () = async {
                    tokio::select! {
                        () = tokio::time::sleep_until(hold.unwrap_or(expiry)) => {}
                        () = handle.outbox.urgent() => {}
                    }
                }, if hold.is_some() => {
                    hold = None;
                    last_write = Instant::now();
                    self.write().await
                }
                Some((id, result)) = front_ack(&mut self.acks), if !self.acks.is_empty() => {
                    self.acknowledge(id, result);
                    // The log answers a whole batch at once: every answer already in is
                    // queued now, so that one socket write carries them all (the outbox
                    // comes first in this loop and would otherwise write each alone).
                    while let Some((id, result)) = self.ready_ack() {
                        self.acknowledge(id, result);
                    }
                    Step::Continue
                }
                msg = self.socket.next() => {
                    // Boxed: a subscribe with replay, a publish or a refresh needs about 1.2 KiB
                    // of future state while it runs, which an idle session would otherwise
                    // hold for its whole life (one allocation per frame received).
                    let step = Box::pin(self.inbound(transport::incoming(msg))).await;
                    if std::mem::take(&mut self.refreshed) {
                        // A refresh moved the token's expiry.
                        expiry = self.expiry();
                        warning = self.warning();
                    }
                    step
                }
                () = self.handle.wake.notified() => {
                    if self.handle.take_recheck() { self.recheck(); }
                    Step::Continue
                }
                _ = ping.tick() => {
                    // The access audit's checkpoints ride on the heartbeat: no timer of their
                    // own in every session.
                    if !self.audits.is_empty() {
                        self.audit_checkpoint();
                    }
                    self.heartbeat(heartbeat).await
                }
                () = tokio::time::sleep_until(warning), if !self.warned => {
                    self.warned = true;
                    let left = (self.principal.expires_at.unix_ms() - Timestamp::now().unix_ms()).max(0) as u64;
                    self.reply(&ServerFrame::TokenExpiring(TokenExpiring { expires_in_ms: left }));
                    Step::Continue
                }
                () = tokio::time::sleep_until(expiry) => {
                    // Events held for a coalescing window were accepted before the token's
                    // end (the fan-out offers none after it): they go out first.
                    let step = if hold.take().is_some() {
                        last_write = Instant::now();
                        self.write().await
                    } else {
                        Step::Continue
                    };
                    // Nothing is delivered after this instant: what is queued is dropped.
                    self.handle.outbox.close(CloseCode::TokenExpired, "the access token expired", false);
                    step
                }
            };
            if let Step::Stop = step {
                return;
            }
        }
    }

    /// Writes everything queued, then flushes once; sends the close frame when a close was
    /// decided.
    async fn write(&mut self) -> Step {
        let drained = self.handle.outbox.drain();
        let oldest = drained.frames.iter().find_map(|q| match q.kind {
            Kind::Live(at) => Some(at),
            _ => None,
        });
        let (events, last_seq, replayed) = drained.frames.iter().filter(|q| q.is_event()).fold(
            (0u64, 0u64, 0u64),
            |(n, last, replayed), q| {
                let r = if q.kind == Kind::Replayed { q.seq } else { 0 };
                (n + 1, last.max(q.seq), replayed.max(r))
            },
        );
        // Each new subscription's first `seq` in this write, read before the frames go (only
        // until each subscription has one), kept once they are written.
        let (firsts, tally) = if events > 0 && !self.audits.is_empty() {
            (
                audit::first_candidates(&self.audits, &drained.frames),
                audit::tally(&self.audits, &drained.frames),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let wrote =
            transport::write_all(&mut self.socket, drained.frames, &self.handle.outbox).await;
        if let Some(t) = oldest {
            let ns = (Timestamp::now().unix_nanos() - t.unix_nanos()).max(0);
            self.broker
                .metrics
                .publish_to_deliver
                .observe(ns as f64 / 1e9);
        }
        if wrote == transport::Wrote::Failed {
            return Step::Stop;
        }
        if events > 0 && wrote == transport::Wrote::All {
            // Written to the socket: what "delivered" means (the access audit counts the same).
            self.handle.delivered.fetch_add(events, Ordering::Relaxed);
            self.handle
                .stats
                .delivered
                .fetch_add(events, Ordering::Relaxed);
            self.handle
                .written_last
                .fetch_max(last_seq, Ordering::Relaxed);
            let mut firsts_now = audit::set_firsts(&mut self.audits, firsts, replayed);
            firsts_now.extend(audit::add_tally(&mut self.audits, tally));
            if !firsts_now.is_empty() {
                self.audit_snapshot(&firsts_now);
            }
        }
        let close = drained.close.or_else(|| {
            // An abort decided during the write: take its close now.
            if self.handle.outbox.is_closed() {
                self.handle.outbox.drain().close
            } else {
                None
            }
        });
        match close {
            Some((code, reason)) => {
                tracing::debug!(code = code.as_u16(), %reason, "closing");
                self.ended = Ended::Server(code.as_u16());
                transport::close(&mut self.socket, code, &reason).await;
                Step::Stop
            }
            None => Step::Continue,
        }
    }

    async fn heartbeat(&mut self, interval: Duration) -> Step {
        if self.last_heard.elapsed() > interval * 2 {
            self.handle.outbox.close(
                CloseCode::HeartbeatTimeout,
                "no answer to heartbeats",
                false,
            );
            return Step::Continue;
        }
        if transport::ping(&mut self.socket).await {
            Step::Continue
        } else {
            Step::Stop
        }
    }

    async fn inbound(&mut self, incoming: Incoming) -> Step {
        match incoming {
            Incoming::Gone => return Step::Stop,
            Incoming::Fault(code, why) => {
                self.handle.outbox.close(code, why, false);
                return Step::Continue;
            }
            _ => {}
        }
        self.last_heard = Instant::now();
        match incoming {
            Incoming::Text(t) => self.text(&t).await,
            Incoming::Binary => {
                self.handle.outbox.close(
                    CloseCode::UnsupportedData,
                    "binary messages are not part of scopecast.v1",
                    true,
                );
                Step::Continue
            }
            Incoming::Close(code) => {
                self.ended = Ended::Client(code);
                // The WebSocket layer queued the closing handshake's reply: send it.
                transport::flush(&mut self.socket).await;
                Step::Stop
            }
            Incoming::Control | Incoming::Gone | Incoming::Fault(..) => Step::Continue,
        }
    }

    fn bad_frame(&mut self, e: FrameError) {
        self.reply(&e.to_frame());
        self.bad_frames += 1;
        if self.bad_frames >= self.broker.config.limits.max_bad_frames {
            self.handle.outbox.close(
                CloseCode::BadFrames,
                "too many malformed frames in a row",
                true,
            );
        }
    }

    async fn text(&mut self, t: &str) -> Step {
        let frame = match ClientFrame::decode(t, self.broker.config.limits.max_frame_bytes) {
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

    /// Closes with 4003: the client ID is not active here (any more).
    fn inactive(&self) {
        self.handle.outbox.close(
            CloseCode::Forbidden,
            "client ID is not active in this environment",
            false,
        );
    }

    /// Leaves the index and the session table.
    fn finish(&mut self) {
        let why = match self.ended {
            Ended::Server(code) => format!("closed_by_broker:{code}"),
            Ended::Client(_) => "closed_by_client".to_owned(),
            Ended::Abrupt => "disconnected".to_owned(),
        };
        self.audit_end_all(&why);
        for p in self.subs.keys() {
            self.broker.fanout.unsubscribe(p, &self.deliver);
        }
        self.broker
            .metrics
            .subscriptions
            .sub(self.subs.len() as i64);
        self.subs.clear();
        self.handle
            .outbox
            .close(CloseCode::Normal, "session ended", false);
        self.broker
            .sessions
            .unregister(&self.handle, &self.broker.metrics);
        self.broker.metrics.connections.dec();
    }
}
