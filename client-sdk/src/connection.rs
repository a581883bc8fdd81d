//! The connection task: one task owns the WebSocket, takes commands from [`Client`]
//! handles, feeds subscriptions, refreshes the token, reconnects with capped jittered backoff
//! and resumes every subscription from its last `seq`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use scopecast_protocol::{
    ClientFrame, CloseCode, ErrorFrame, Pattern, Published, Reason, RequestId, Retry, ServerFrame,
    Welcome,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::client::Command;
use crate::dial::{Dial, WebSocket};
use crate::error::{publish_error, subscribe_error};
use crate::history::History;
use crate::options::{MIN_RETRY_DELAY, STABLE_CONNECTION};
use crate::{
    ClientEvent, ConnectError, ConnectOptions, ConnectionState, Item, PublishError, SubscribeError,
};

pub(crate) struct SubState {
    pub(crate) pattern: Pattern,
    /// Newest `seq` handed to the reader, or the resume point; `None` until the broker answered
    /// the first `subscribe`.
    pub(crate) last_seq: Option<u64>,
    /// With `subscribe_since`: where the history starts (the first `subscribed` sets it).
    pub(crate) since: Option<u64>,
    pub(crate) feed: Feed,
    /// Waiting for `subscribed` after (re)subscribing: the request id, and the caller to answer.
    pub(crate) pending: Option<(String, Option<SubscribeReply>)>,
    /// Set while the subscription is fed from the history endpoint instead of the socket.
    pub(crate) catch_up: Option<CatchUp>,
    /// Numbers catch-up rounds, so a report of an aborted round is ignored.
    pub(crate) rounds: u64,
    /// The newest matching `seq` the socket carried while `pending` (not handed over).
    pub(crate) held: u64,
}

/// A catch-up round in flight: a task reading `GET /v1/events` into the subscription.
pub(crate) struct CatchUp {
    pub(crate) round: u64,
    /// The newest matching `seq` the round must reach: the broker's head when the subscription
    /// went live, then every matching event the socket carried meanwhile (not handed over).
    pub(crate) target: u64,
    pub(crate) task: tokio::task::AbortHandle,
}

/// Where a subscribe's answer (its id, or why not) goes.
pub(crate) type SubscribeReply = oneshot::Sender<Result<u64, SubscribeError>>;

pub(crate) enum Pending {
    Publish(oneshot::Sender<Result<Published, PublishError>>),
    Unsubscribe,
}

/// Reports from the tasks the connection task spawns.
pub(crate) enum Internal {
    /// A catch-up round handed over every event up to `upto`.
    CaughtUp { sid: u64, round: u64, upto: u64 },
    /// A catch-up round cannot go on.
    CatchUpFailed {
        sid: u64,
        round: u64,
        error: SubscribeError,
    },
    /// A refreshed access token (after `token_expiring`), to send as `auth`, or why the
    /// refresh failed.
    Token(Result<String, String>),
}

pub(crate) struct Conn<D: Dial> {
    pub(crate) opts: ConnectOptions,
    /// Opens each WebSocket of this connection (the real broker, or channels in tests).
    pub(crate) dial: D,
    /// The broker's `log_epoch` from the first `welcome`: a different one later means its log
    /// was replaced, and every stored position is meaningless.
    pub(crate) epoch: Option<String>,
    pub(crate) history: History,
    pub(crate) subs: HashMap<u64, SubState>,
    pub(crate) pending: HashMap<String, Pending>,
    pub(crate) next: u64,
    pub(crate) internal: mpsc::UnboundedSender<Internal>,
    pub(crate) refreshing: bool,
}

/// Ends a subscription's stream with `why` as its last item. The reader may be behind (its
/// buffer full), so the item waits in a task of its own; the stream ends after it.
pub(crate) fn end_subscription(mut sub: SubState, why: SubscribeError) {
    if let Some(c) = sub.catch_up.take() {
        c.task.abort();
    }
    if let Some((_, Some(reply))) = sub.pending.take() {
        let _ = reply.send(Err(why));
        return;
    }
    let feed = sub.feed;
    tokio::spawn(feed.end(why));
}

/// A subscription's way to its reader, shared by the connection task (live events, with
/// `try_send`), a catch-up task (history, waiting for the reader) and the final
/// [`Item::Ended`]: once ended, nothing more goes in, whatever a task was doing.
#[derive(Clone)]
pub(crate) struct Feed {
    pub(crate) tx: mpsc::Sender<Item>,
    pub(crate) ended: Arc<tokio::sync::Mutex<bool>>,
}

impl Feed {
    pub(crate) fn new(tx: mpsc::Sender<Item>) -> Feed {
        Feed {
            tx,
            ended: Arc::new(tokio::sync::Mutex::new(false)),
        }
    }

    /// Waits for room and hands `item` over; false when the stream ended or the reader left.
    pub(crate) async fn send(&self, item: Item) -> bool {
        let ended = self.ended.lock().await;
        !*ended && self.tx.send(item).await.is_ok()
    }

    /// Hands over `Ended(why)` as the last item.
    pub(crate) async fn end(self, why: SubscribeError) {
        let mut ended = self.ended.lock().await;
        *ended = true;
        let _ = self.tx.send(Item::Ended(why)).await;
    }
}

/// The wait before retry number `attempt` (from 1): 100 ms doubling, capped at `max`, half of
/// it random.
pub(crate) fn backoff(attempt: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(2u32.saturating_pow(attempt.min(16)));
    let capped = base.min(max).max(MIN_RETRY_DELAY);
    capped / 2 + jitter(capped)
}

impl<D: Dial> Conn<D> {
    /// Why every stored position is void, when a new socket's `welcome` names another log
    /// than the first one did.
    pub(crate) fn epoch_changed(&mut self, welcome: &Welcome) -> Option<SubscribeError> {
        match (&self.epoch, &welcome.log_epoch) {
            (Some(was), Some(now)) if was != now => Some(SubscribeError::LogReplaced(format!(
                "log_epoch {was} became {now}"
            ))),
            (None, Some(now)) => {
                self.epoch = Some(now.clone());
                None
            }
            _ => None,
        }
    }

    pub(crate) fn id(&mut self, prefix: char) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    pub(crate) async fn send(socket: &mut D::Socket, frame: &ClientFrame) -> bool {
        socket.send(Message::text(frame.encode())).await.is_ok()
    }

    /// Sends a live `subscribe` (no `since`: history comes from the history endpoint, so a
    /// subscription never depends on what the connection's other subscriptions received).
    pub(crate) async fn resubscribe(&mut self, socket: &mut D::Socket, sid: u64) -> bool {
        let id = self.id('s');
        let Some(sub) = self.subs.get_mut(&sid) else {
            return true;
        };
        let reply = sub.pending.take().and_then(|(_, r)| r);
        sub.pending = Some((id.clone(), reply));
        let Ok(rid) = RequestId::new(&id) else {
            return true;
        };
        Self::send(
            socket,
            &ClientFrame::Subscribe {
                id: rid,
                topic: sub.pattern.clone(),
                since: None,
            },
        )
        .await
    }

    /// Starts (or extends) a catch-up of `sid` up to `target`.
    pub(crate) fn catch_up(&mut self, sid: u64, target: u64) {
        let Some(sub) = self.subs.get_mut(&sid) else {
            return;
        };
        if let Some(c) = &mut sub.catch_up {
            c.target = c.target.max(target);
            return;
        }
        let from = sub.last_seq.unwrap_or(0);
        if target <= from {
            return;
        }
        sub.rounds += 1;
        let round = sub.rounds;
        let history = self.history.clone();
        let pattern = sub.pattern.clone();
        let feed = sub.feed.clone();
        let report = self.internal.clone();
        let task = tokio::spawn(async move {
            let msg = match history.catch_up(pattern, from, target, feed).await {
                Ok(upto) => Internal::CaughtUp { sid, round, upto },
                Err(error) => Internal::CatchUpFailed { sid, round, error },
            };
            let _ = report.send(msg);
        });
        sub.catch_up = Some(CatchUp {
            round,
            target,
            task: task.abort_handle(),
        });
    }

    pub(crate) async fn run(
        mut self,
        mut socket: D::Socket,
        mut commands: mpsc::Receiver<Command>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
        state: watch::Sender<ConnectionState>,
    ) {
        let mut attempt = 0u32;
        let mut connected_at = tokio::time::Instant::now();
        loop {
            let ended = self.serve(&mut socket, &mut commands, &mut internal).await;
            // Publishes in flight may or may not be stored.
            for (_, p) in self.pending.drain() {
                if let Pending::Publish(tx) = p {
                    let _ = tx.send(Err(PublishError::Disconnected));
                }
            }
            self.refreshing = false;
            let retry = match ended {
                Ended::Commands => {
                    close_normally(&mut socket).await;
                    let _ = state.send(ConnectionState::Closed("client dropped".to_owned()));
                    return;
                }
                Ended::Closing(done) => {
                    close_normally(&mut socket).await;
                    let _ = state.send(ConnectionState::Closed("closed by the client".to_owned()));
                    self.end_all(SubscribeError::Closed);
                    let _ = done.send(());
                    return;
                }
                Ended::Closed(code, ref reason) => {
                    self.emit(ClientEvent::Disconnected(match code {
                        Some(c) => format!("{c}: {reason}"),
                        None => "the connection dropped".to_owned(),
                    }));
                    code.map_or(Retry::Reconnect, CloseCode::retry)
                }
            };
            // A fixed token cannot be renewed: a close that needs a new one is final.
            let renewable = self.opts.token.is_some();
            if retry == Retry::Never
                || (retry == Retry::WithNewToken && !renewable)
                || !self.opts.reconnect
            {
                let why = format!("closed by the broker ({ended:?})");
                let _ = state.send(ConnectionState::Closed(why));
                // The subscriptions end with the close code's meaning (PROTOCOL.md section 7).
                let why = match ended {
                    Ended::Closed(Some(CloseCode::Forbidden), reason) => {
                        SubscribeError::ClientInactive(reason)
                    }
                    Ended::Closed(Some(CloseCode::Unauthorized), reason) => {
                        SubscribeError::Unauthorized(reason)
                    }
                    Ended::Closed(Some(CloseCode::TokenExpired), _) => SubscribeError::TokenExpired,
                    _ => SubscribeError::Closed,
                };
                self.end_all(why);
                return;
            }
            // A connection that did not last does not reset the backoff: a broker that accepts
            // and closes at once is not hammered.
            if connected_at.elapsed() >= STABLE_CONNECTION {
                attempt = 0;
            }
            let _ = state.send(ConnectionState::Connecting);
            let mut refreshed = false;
            loop {
                attempt += 1;
                tokio::time::sleep(backoff(attempt, self.opts.max_delay)).await;
                let refused = match self.dial.dial(&self.opts).await {
                    Ok((s, welcome)) => {
                        socket = s;
                        if let Some(why) = self.epoch_changed(&welcome) {
                            let _ = state.send(ConnectionState::Closed(why.to_string()));
                            close_normally(&mut socket).await;
                            self.end_all(why);
                            return;
                        }
                        break;
                    }
                    Err(ConnectError::Refused {
                        status: 403,
                        message,
                    }) => Some(SubscribeError::ClientInactive(message)),
                    // A new token was refused too, or there is no way to get one.
                    Err(ConnectError::Refused {
                        status: 401,
                        message,
                    }) if refreshed || !renewable => Some(SubscribeError::Unauthorized(message)),
                    Err(ConnectError::Refused { status: 401, .. }) => {
                        // The cached token was refused: the next attempt gets a new one.
                        if let Some(source) = &self.opts.token {
                            match source.refresh().await {
                                Err(e) if e.is_permanent() => {
                                    self.emit(ClientEvent::TokenRefreshFailed(e.to_string()));
                                    Some(SubscribeError::Unauthorized(e.to_string()))
                                }
                                Err(e) => {
                                    self.emit(ClientEvent::TokenRefreshFailed(e.to_string()));
                                    None
                                }
                                Ok(_) => {
                                    refreshed = true;
                                    None
                                }
                            }
                        } else {
                            None
                        }
                    }
                    // The token endpoint refused the credentials (a rotated secret...).
                    Err(ConnectError::Token(e)) if e.is_permanent() => {
                        Some(SubscribeError::Unauthorized(e.to_string()))
                    }
                    Err(_) => None,
                };
                if let Some(why) = refused {
                    let _ = state.send(ConnectionState::Closed(why.to_string()));
                    self.end_all(why);
                    return;
                }
            }
            connected_at = tokio::time::Instant::now();
            let _ = state.send(ConnectionState::Connected);
            self.emit(ClientEvent::Reconnected);
            // Every subscription goes live again; those behind the new head catch up from
            // the history endpoint when `subscribed` says where the head is.
            let mut sids: Vec<u64> = self.subs.keys().copied().collect();
            sids.sort_unstable();
            for sid in sids {
                if !self.resubscribe(&mut socket, sid).await {
                    break;
                }
            }
        }
    }

    pub(crate) fn emit(&self, event: ClientEvent) {
        if let Some(f) = &self.opts.on_event {
            f(event);
        }
    }

    /// Ends every subscription with `why`.
    pub(crate) fn end_all(&mut self, why: SubscribeError) {
        for (_, sub) in self.subs.drain() {
            end_subscription(sub, why.clone());
        }
    }

    pub(crate) async fn serve(
        &mut self,
        socket: &mut D::Socket,
        commands: &mut mpsc::Receiver<Command>,
        internal: &mut mpsc::UnboundedReceiver<Internal>,
    ) -> Ended {
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    None => return Ended::Commands,
                    Some(Command::Close { done }) => return Ended::Closing(done),
                    Some(cmd) => {
                        if !self.command(socket, cmd).await {
                            return Ended::Closed(None, String::new());
                        }
                    }
                },
                Some(msg) = internal.recv() => {
                    if !self.internal(socket, msg).await {
                        return Ended::Closed(None, String::new());
                    }
                }
                msg = socket.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(frame) = ServerFrame::decode(&t) {
                            // Subscriptions nobody reads any more (dropped while an unsubscribe
                            // could not be queued, or a subscribe whose caller gave up).
                            for pattern in self.frame(frame) {
                                if !self.unsubscribe(socket, pattern).await {
                                    return Ended::Closed(None, String::new());
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Close(c))) => {
                        let reason = c.as_ref().map(|c| c.reason.to_string()).unwrap_or_default();
                        return Ended::Closed(c.and_then(|c| CloseCode::from_u16(u16::from(c.code))), reason);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Ended::Closed(None, String::new()),
                },
            }
        }
    }

    pub(crate) async fn internal(&mut self, socket: &mut D::Socket, msg: Internal) -> bool {
        match msg {
            Internal::CaughtUp { sid, round, upto } => {
                let Some(sub) = self.subs.get_mut(&sid) else {
                    return true;
                };
                let Some(c) = sub.catch_up.take_if(|c| c.round == round) else {
                    return true;
                };
                sub.last_seq = Some(upto);
                // Matching events went by on the socket during the round: another round.
                if c.target > upto {
                    self.catch_up(sid, c.target);
                }
                true
            }
            Internal::CatchUpFailed { sid, round, error } => {
                let current = self
                    .subs
                    .get(&sid)
                    .and_then(|s| s.catch_up.as_ref())
                    .is_some_and(|c| c.round == round);
                // Stop the broker's side too, unless another subscription shares it.
                if current && let Some(pattern) = self.forget(sid, Some(error)) {
                    return self.unsubscribe(socket, pattern).await;
                }
                true
            }
            Internal::Token(token) => {
                self.refreshing = false;
                match token {
                    Ok(token) => Self::send(socket, &ClientFrame::Auth { token }).await,
                    Err(why) => {
                        // The current token stays in force until it expires; the next
                        // `token_expiring` tries again. Say so now, not when the socket closes.
                        self.emit(ClientEvent::TokenRefreshFailed(why));
                        true
                    }
                }
            }
        }
    }

    /// Removes subscription `sid`, ending its stream with `why` if given; returns its pattern
    /// when the broker should be told to unsubscribe (no other subscription holds it).
    pub(crate) fn forget(&mut self, sid: u64, why: Option<SubscribeError>) -> Option<Pattern> {
        let mut sub = self.subs.remove(&sid)?;
        let pattern = sub.pattern.clone();
        match why {
            Some(why) => end_subscription(sub, why),
            None => {
                if let Some(c) = sub.catch_up.take() {
                    c.task.abort();
                }
            }
        }
        (!self.subs.values().any(|s| s.pattern == pattern)).then_some(pattern)
    }

    pub(crate) async fn unsubscribe(&mut self, socket: &mut D::Socket, pattern: Pattern) -> bool {
        let id = self.id('u');
        self.pending.insert(id.clone(), Pending::Unsubscribe);
        let Ok(rid) = RequestId::new(&id) else {
            return true;
        };
        Self::send(
            socket,
            &ClientFrame::Unsubscribe {
                id: rid,
                topic: pattern,
            },
        )
        .await
    }

    pub(crate) async fn command(&mut self, socket: &mut D::Socket, cmd: Command) -> bool {
        match cmd {
            Command::Subscribe {
                pattern,
                since,
                events,
                reply,
            } => {
                let sid = self.next;
                self.next += 1;
                self.subs.insert(
                    sid,
                    SubState {
                        pattern,
                        last_seq: None,
                        since,
                        feed: Feed::new(events),
                        pending: Some((String::new(), Some(reply))),
                        catch_up: None,
                        rounds: 0,
                        held: 0,
                    },
                );
                self.resubscribe(socket, sid).await
            }
            // Handled by the loop before it gets here.
            Command::Close { done } => {
                let _ = done.send(());
                true
            }
            Command::Unsubscribe { sid } => match self.forget(sid, None) {
                Some(pattern) => self.unsubscribe(socket, pattern).await,
                // Unknown, or another subscription holds the same pattern on this connection.
                None => true,
            },
            Command::Publish {
                topic,
                data,
                event_id,
                reply,
            } => {
                let id = self.id('p');
                let Ok(rid) = RequestId::new(&id) else {
                    return true;
                };
                self.pending.insert(id, Pending::Publish(reply));
                Self::send(
                    socket,
                    &ClientFrame::Publish {
                        id: rid,
                        topic,
                        data,
                        event_id,
                    },
                )
                .await
            }
        }
    }

    /// Handles one server frame. Never waits: a reader that is behind is caught up from the
    /// history endpoint by a task of its own, so acks and other subscriptions flow meanwhile.
    /// Returns the patterns to unsubscribe: of subscriptions found abandoned or ended here,
    /// when no other subscription holds the same pattern.
    pub(crate) fn frame(&mut self, frame: ServerFrame) -> Vec<Pattern> {
        let mut abandoned = Vec::new();
        match frame {
            ServerFrame::Event(e) => {
                let mut behind = Vec::new();
                let mut gone = Vec::new();
                for (&sid, sub) in &mut self.subs {
                    if !sub.pattern.matches(&e.topic) {
                        continue;
                    }
                    // Waiting for `subscribed` (after a reconnect, while another subscription
                    // already gets events): remember how far to catch up, deliver nothing yet.
                    if sub.pending.is_some() {
                        sub.held = sub.held.max(e.seq);
                        continue;
                    }
                    let Some(last) = sub.last_seq else { continue };
                    if e.seq <= last {
                        continue;
                    }
                    if let Some(c) = &mut sub.catch_up {
                        c.target = c.target.max(e.seq);
                        continue;
                    }
                    match sub.feed.tx.try_send(Item::Event(e.clone())) {
                        Ok(()) => sub.last_seq = Some(e.seq),
                        // The reader is behind: this event and the next ones come from history.
                        Err(mpsc::error::TrySendError::Full(_)) => behind.push((sid, e.seq)),
                        // Dropped; its unsubscribe may not have made it into the queue.
                        Err(mpsc::error::TrySendError::Closed(_)) => gone.push(sid),
                    }
                }
                for (sid, seq) in behind {
                    self.catch_up(sid, seq);
                }
                abandoned.extend(gone.into_iter().filter_map(|sid| self.forget(sid, None)));
            }
            ServerFrame::Gap(g) => {
                // Events that left the broker's log before they reached this connection: each
                // subscription concerned reports them once and moves its position past them
                // (a resume must not ask for them again). A subscription catching up from
                // history learns of them there. The SDK subscribes live (history comes from
                // the history endpoint), so only a connection's gap (no `id`) reaches it.
                let mut gone = Vec::new();
                let mut behind = Vec::new();
                for (&sid, sub) in &mut self.subs {
                    if g.id.is_some() || sub.pending.is_some() {
                        continue;
                    }
                    let Some(last) = sub.last_seq else { continue };
                    if g.to_seq <= last || sub.catch_up.is_some() {
                        continue;
                    }
                    let item = Item::Gap {
                        from_seq: g.from_seq.max(last + 1),
                        to_seq: g.to_seq,
                    };
                    match sub.feed.tx.try_send(item) {
                        Ok(()) => sub.last_seq = Some(g.to_seq),
                        // The reader is behind: catch up from history, which reports the
                        // same range as gone.
                        Err(mpsc::error::TrySendError::Full(_)) => behind.push((sid, g.to_seq)),
                        Err(mpsc::error::TrySendError::Closed(_)) => gone.push(sid),
                    }
                }
                for (sid, seq) in behind {
                    self.catch_up(sid, seq);
                }
                abandoned.extend(gone.into_iter().filter_map(|sid| self.forget(sid, None)));
            }
            ServerFrame::Subscribed(s) => {
                let Some((&sid, sub)) = self.subs.iter_mut().find(|(_, x)| {
                    x.pending
                        .as_ref()
                        .is_some_and(|(id, _)| id == s.id.as_str())
                }) else {
                    return abandoned;
                };
                let (_, reply) = sub.pending.take().unwrap_or_default();
                // A broker without `log_epoch` (older than it): a head that went back is the
                // only sign that its log was replaced. With epochs, `welcome` tells.
                if s.log_epoch.is_none()
                    && let Some(last) = sub.last_seq
                    && s.head_seq < last
                {
                    let why = SubscribeError::LogReplaced(format!(
                        "its newest seq went back from {last} to {}",
                        s.head_seq
                    ));
                    abandoned.extend(self.forget(sid, Some(why)));
                    return abandoned;
                }
                if sub.last_seq.is_none() {
                    sub.last_seq = Some(sub.since.take().unwrap_or(s.head_seq));
                }
                if let Some(reply) = reply
                    && reply.send(Ok(sid)).is_err()
                {
                    // The caller stopped waiting (a time-out, a `select!`): nobody holds it.
                    abandoned.extend(self.forget(sid, None));
                    return abandoned;
                }
                // Live after `head_seq`; what lies between the resume point and it is history.
                let target = s.head_seq.max(std::mem::take(&mut sub.held));
                self.catch_up(sid, target);
            }
            ServerFrame::Published(p) => {
                if let Some(Pending::Publish(tx)) = self.pending.remove(p.id.as_str()) {
                    let _ = tx.send(Ok(p));
                }
            }
            ServerFrame::Error(e) => self.error(e),
            ServerFrame::TokenExpiring(_) => {
                if let Some(source) = &self.opts.token
                    && !self.refreshing
                {
                    // The token endpoint may be slow: the refresh runs beside the connection.
                    self.refreshing = true;
                    let source = source.clone();
                    let report = self.internal.clone();
                    tokio::spawn(async move {
                        let token = source
                            .refresh()
                            .await
                            .map(|t| t.access_token)
                            .map_err(|e| e.to_string());
                        let _ = report.send(Internal::Token(token));
                    });
                }
            }
            ServerFrame::Unsubscribed(u) => {
                self.pending.remove(u.id.as_str());
            }
            ServerFrame::Welcome(_) | ServerFrame::Pong(_) => {}
        }
        abandoned
    }

    pub(crate) fn error(&mut self, e: ErrorFrame) {
        let id = e.id.as_ref().map(|i| i.as_str().to_owned());
        if let Some(id) = &id {
            if let Some(Pending::Publish(tx)) = self.pending.remove(id) {
                let _ = tx.send(Err(publish_error(&e)));
                return;
            }
            let found = self
                .subs
                .iter()
                .find(|(_, s)| s.pending.as_ref().is_some_and(|(pid, _)| pid == id))
                .map(|(k, _)| *k);
            // A refused subscribe: the caller gets the error, or, after a reconnect, the
            // stream ends with it.
            if let Some(sid) = found
                && let Some(sub) = self.subs.remove(&sid)
            {
                end_subscription(sub, subscribe_error(&e));
            }
            return;
        }
        if e.error == Reason::ScopeRevoked
            && let Some(topic) = &e.topic
        {
            // The subscription ended on the broker: end it here too, saying why.
            let gone: Vec<u64> = self
                .subs
                .iter()
                .filter(|(_, s)| &s.pattern == topic)
                .map(|(k, _)| *k)
                .collect();
            for sid in gone {
                if let Some(sub) = self.subs.remove(&sid) {
                    end_subscription(sub, subscribe_error(&e));
                }
            }
        }
    }
}

#[derive(Debug)]
pub(crate) enum Ended {
    Commands,
    /// [`Client::close`] asked to stop.
    Closing(oneshot::Sender<()>),
    /// The socket closed: the close code when there was one, and the close reason.
    Closed(Option<CloseCode>, String),
}

/// Ends the WebSocket as RFC 6455 section 7 asks: a close frame with 1000, then the broker's
/// close frame, waited for at most two seconds.
pub(crate) async fn close_normally<S: WebSocket>(socket: &mut S) {
    let frame = tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "client finished".into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

pub(crate) fn jitter(max: Duration) -> Duration {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    let r = u32::from_le_bytes(b) as u64;
    Duration::from_millis(r % (max.as_millis() as u64 / 2 + 1))
}

#[cfg(test)]
mod tests {
    //! The connection task over in-memory sockets, with paused time: subscribing, events,
    //! reconnecting after a close that allows it, and a replaced log.

    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use futures_util::{Sink, Stream};
    use scopecast_protocol::{Limits, ScopeSet, Timestamp};
    use serde_json::{Value, json};
    use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

    use super::*;
    use crate::Client;
    use crate::dial::Dialing;

    /// The client's end of an in-memory WebSocket.
    struct FakeSocket {
        rx: UnboundedReceiver<Message>,
        tx: UnboundedSender<Message>,
    }

    /// The broker's end.
    struct BrokerEnd {
        rx: UnboundedReceiver<Message>,
        tx: UnboundedSender<Message>,
    }

    impl BrokerEnd {
        /// The next text frame the client sent, as JSON.
        async fn recv(&mut self) -> Value {
            loop {
                match tokio::time::timeout(Duration::from_secs(30), self.rx.recv()).await {
                    Ok(Some(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
                    Ok(Some(_)) => continue,
                    other => panic!("the client sent nothing: {other:?}"),
                }
            }
        }

        fn send(&self, v: Value) {
            self.tx.send(Message::text(v.to_string())).unwrap();
        }

        fn close(&self, code: u16) {
            self.tx
                .send(Message::Close(Some(CloseFrame {
                    code: WsCloseCode::from(code),
                    reason: "".into(),
                })))
                .unwrap();
        }
    }

    fn pair() -> (FakeSocket, BrokerEnd) {
        let (to_client, from_broker) = unbounded_channel();
        let (to_broker, from_client) = unbounded_channel();
        (
            FakeSocket {
                rx: from_broker,
                tx: to_broker,
            },
            BrokerEnd {
                rx: from_client,
                tx: to_client,
            },
        )
    }

    impl Stream for FakeSocket {
        type Item = Result<Message, tungstenite::Error>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.rx.poll_recv(cx).map(|m| m.map(Ok))
        }
    }

    impl Sink<Message> for FakeSocket {
        type Error = tungstenite::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            self.tx
                .send(item)
                .map_err(|_| tungstenite::Error::ConnectionClosed)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    fn welcome(epoch: &str) -> Welcome {
        Welcome {
            session: "1".into(),
            client_id: "c".into(),
            scope: ScopeSet::parse("subscribe:>").unwrap(),
            expires_at: Timestamp::from_unix_seconds(4_000_000_000).unwrap(),
            heartbeat_ms: 20_000,
            limits: Limits {
                max_frame_bytes: 1 << 20,
                max_subscriptions: 100,
                outbound_queue_bytes: 1 << 20,
                publish_rate_per_sec: 0,
            },
            log_epoch: Some(epoch.to_owned()),
        }
    }

    /// Hands out the sockets queued for it, in order; counts the dials.
    struct FakeDial {
        sockets: std::sync::Mutex<VecDeque<(FakeSocket, Welcome)>>,
        dials: Arc<AtomicUsize>,
    }

    impl Dial for FakeDial {
        type Socket = FakeSocket;
        fn dial<'a>(&'a self, _: &'a ConnectOptions) -> Dialing<'a, FakeSocket> {
            self.dials.fetch_add(1, Ordering::SeqCst);
            let next = self.sockets.lock().ok().and_then(|mut s| s.pop_front());
            Box::pin(async move { next.ok_or_else(|| ConnectError::Io("no broker".into())) })
        }
    }

    /// A client on a first socket (already welcomed, epoch `e1`) whose later dials get `later`.
    fn start(later: Vec<(FakeSocket, Welcome)>) -> (Client, BrokerEnd, Arc<AtomicUsize>) {
        let (socket, broker) = pair();
        let dials = Arc::new(AtomicUsize::new(0));
        let opts = ConnectOptions::new().token("static-token");
        let (internal, internal_rx) = mpsc::unbounded_channel();
        let conn = Conn {
            history: History {
                http: reqwest::Client::new(),
                url: Arc::new(std::sync::Mutex::new("http://127.0.0.1:9/v1/events".into())),
                opts: opts.clone(),
            },
            dial: FakeDial {
                sockets: std::sync::Mutex::new(later.into()),
                dials: dials.clone(),
            },
            epoch: Some("e1".into()),
            opts,
            subs: HashMap::new(),
            pending: HashMap::new(),
            next: 1,
            internal,
            refreshing: false,
        };
        let (tx, rx) = mpsc::channel(16);
        let (state_tx, state) = watch::channel(ConnectionState::Connected);
        tokio::spawn(conn.run(socket, rx, internal_rx, state_tx));
        (Client { tx, state }, broker, dials)
    }

    fn event(seq: u64) -> Value {
        json!({"type": "event", "seq": seq, "topic": "a.b", "id": format!("e{seq}"),
               "time": "2026-12-02T10:00:00Z", "data": {"n": seq}})
    }

    /// Answers the next `subscribe` with `subscribed` at `head`.
    async fn answer_subscribe(broker: &mut BrokerEnd, head: u64, epoch: &str) {
        let sub = broker.recv().await;
        assert_eq!(sub["type"], "subscribe", "{sub}");
        assert!(
            sub.get("since").is_none(),
            "live only: history comes over HTTP"
        );
        broker.send(
            json!({"type": "subscribed", "id": sub["id"], "topic": sub["topic"],
            "head_seq": head, "replay": null, "log_epoch": epoch}),
        );
    }

    async fn next(stream: &mut crate::Subscription) -> Item {
        tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("an item")
            .expect("the stream goes on")
    }

    #[tokio::test(start_paused = true)]
    async fn subscribes_and_delivers_events_in_order() {
        let (client, mut broker, _) = start(vec![]);
        let subscribing = tokio::spawn({
            let client = client.clone();
            async move { client.subscribe("a.>").await }
        });
        answer_subscribe(&mut broker, 5, "e1").await;
        let mut stream = subscribing.await.unwrap().unwrap();
        broker.send(event(6));
        broker.send(event(7));
        for seq in [6, 7] {
            match next(&mut stream).await {
                Item::Event(e) => assert_eq!(e.seq, seq),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_frame_is_one_gap_item_and_moves_the_resume_point_past_it() {
        let (second, mut broker2) = pair();
        let (client, mut broker, _) = start(vec![(second, welcome("e1"))]);
        let subscribing = tokio::spawn({
            let client = client.clone();
            async move { client.subscribe("a.>").await }
        });
        answer_subscribe(&mut broker, 5, "e1").await;
        let mut stream = subscribing.await.unwrap().unwrap();
        broker.send(event(6));
        broker.send(json!({"type": "gap", "from_seq": 7, "to_seq": 9}));
        broker.send(event(10));
        assert!(matches!(next(&mut stream).await, Item::Event(e) if e.seq == 6));
        assert_eq!(
            next(&mut stream).await,
            Item::Gap {
                from_seq: 7,
                to_seq: 9
            }
        );
        assert!(matches!(next(&mut stream).await, Item::Event(e) if e.seq == 10));
        // A gap it already passed is not reported again.
        broker.send(json!({"type": "gap", "from_seq": 8, "to_seq": 9}));
        broker.send(event(11));
        assert!(matches!(next(&mut stream).await, Item::Event(e) if e.seq == 11));
        // After a reconnect it resumes from its position past the gap: a broker whose head is
        // there has nothing to catch up (no history read, which this test could not serve).
        broker.close(4010);
        answer_subscribe(&mut broker2, 11, "e1").await;
        broker2.send(event(12));
        assert!(matches!(next(&mut stream).await, Item::Event(e) if e.seq == 12));
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_that_allows_it_reconnects_and_resumes_after_the_last_seq() {
        let (second, mut broker2) = pair();
        let (client, mut broker, dials) = start(vec![(second, welcome("e1"))]);
        let subscribing = tokio::spawn({
            let client = client.clone();
            async move { client.subscribe("a.>").await }
        });
        answer_subscribe(&mut broker, 5, "e1").await;
        let mut stream = subscribing.await.unwrap().unwrap();
        broker.send(event(6));
        assert!(matches!(next(&mut stream).await, Item::Event(e) if e.seq == 6));
        // An operator closed the session (4010): reconnect with backoff (paused time runs it).
        broker.close(4010);
        answer_subscribe(&mut broker2, 6, "e1").await;
        assert_eq!(dials.load(Ordering::SeqCst), 1);
        broker2.send(event(7));
        assert!(matches!(next(&mut stream).await, Item::Event(e) if e.seq == 7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_log_ends_the_subscriptions_instead_of_resuming_into_it() {
        let (second, _broker2) = pair();
        let (client, mut broker, _) = start(vec![(second, welcome("e2"))]);
        let subscribing = tokio::spawn({
            let client = client.clone();
            async move { client.subscribe("a.>").await }
        });
        answer_subscribe(&mut broker, 5, "e1").await;
        let mut stream = subscribing.await.unwrap().unwrap();
        broker.close(1001);
        match next(&mut stream).await {
            Item::Ended(SubscribeError::LogReplaced(why)) => {
                assert!(why.contains("e1") && why.contains("e2"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&*client.state.borrow(), ConnectionState::Closed(_)),
            "the connection stops"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn close_sends_1000_and_ends_the_streams() {
        let (client, mut broker, _) = start(vec![]);
        let subscribing = tokio::spawn({
            let client = client.clone();
            async move { client.subscribe("a.>").await }
        });
        answer_subscribe(&mut broker, 0, "e1").await;
        let mut stream = subscribing.await.unwrap().unwrap();
        let closing = tokio::spawn({
            let client = client.clone();
            async move { client.close().await }
        });
        loop {
            match tokio::time::timeout(Duration::from_secs(5), broker.rx.recv())
                .await
                .unwrap()
            {
                Some(Message::Close(Some(f))) => {
                    assert_eq!(u16::from(f.code), 1000);
                    break;
                }
                Some(_) => continue,
                None => panic!("no close frame"),
            }
        }
        drop(broker);
        closing.await.unwrap();
        assert!(matches!(
            next(&mut stream).await,
            Item::Ended(SubscribeError::Closed)
        ));
    }
}
