//! Connections, subscriptions and publishing over `scopecast.v1`, modelled on async-nats: a
//! `Client` is a cheap handle over a command channel; one task owns the WebSocket; replies come
//! back on oneshot channels; a `Subscription` is a `Stream` that unsubscribes when dropped.
//!
//! The connection task refreshes the token before it expires (an `auth` frame, so streams never
//! stop), reconnects with capped, jittered exponential backoff when the close code allows it,
//! and resumes every live subscription from the last `seq` it delivered. A gap that cannot be
//! filled (events gone past the broker's retention) is reported as [`Item::Gap`], never
//! silently.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use scopecast_protocol::{
    ClientFrame, CloseCode, ErrorCode, ErrorFrame, Event, EventId, Pattern, RawJson, Reason,
    RequestId, Retry, SUBPROTOCOL, ServerFrame, Since, Topic,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::token::{TokenError, TokenSource};

/// Where the connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connecting or reconnecting.
    Connecting,
    /// Authenticated; subscriptions are live.
    Connected,
    /// Stopped for good, with the reason.
    Closed(String),
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// One event.
    Event(Event),
    /// Events `from_seq..=to_seq` of this subscription could not be delivered (they are past
    /// the broker's retention); what follows continues after them.
    Gap {
        /// First missing `seq`.
        from_seq: u64,
        /// Last missing `seq`.
        to_seq: u64,
    },
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No token could be had.
    #[error("getting a token: {0}")]
    Token(#[from] TokenError),
    /// The broker refused the upgrade (401 invalid token, 403 inactive client, 429...).
    #[error("the broker refused the connection ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The broker's message.
        message: String,
    },
    /// The broker closed the connection during the handshake.
    #[error("the broker closed the connection: {0}")]
    Closed(String),
    /// A transport failure.
    #[error("connection failed: {0}")]
    Io(String),
}

/// Why a subscribe failed. Match on the variant; `Forbidden` names the scope that would allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The token's or the application's scope does not allow the pattern.
    #[error("forbidden: needs scope {required_scope}")]
    Forbidden {
        /// The scope that would allow it, e.g. `subscribe:adt.>`.
        required_scope: String,
    },
    /// The pattern breaks the topic grammar.
    #[error("invalid pattern: {0}")]
    InvalidTopic(String),
    /// The token is not valid.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The client ID is not active in this environment.
    #[error("client inactive: {0}")]
    ClientInactive(String),
    /// The token expired.
    #[error("token expired")]
    TokenExpired,
    /// A limit was reached (too many subscriptions).
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// The broker answered something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The connection is closed for good.
    #[error("the connection is closed")]
    Closed,
}

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The token's or the application's scope does not allow the topic.
    #[error("forbidden: needs scope {required_scope}")]
    Forbidden {
        /// The scope that would allow it, e.g. `publish:adt.x`.
        required_scope: String,
    },
    /// Over the client's publish rate.
    #[error("rate limited; retry after {retry_after_ms} ms")]
    RateLimited {
        /// How long to wait, in ms.
        retry_after_ms: u64,
    },
    /// The `event_id` was used before for another topic or payload.
    #[error("event_id conflict")]
    Conflict,
    /// The broker could not store the event; retry later (with the same `event_id`).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The topic or payload was refused.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The connection dropped before the acknowledgement: the event may or may not be stored;
    /// retry with the same `event_id` to be sure.
    #[error("disconnected before the acknowledgement")]
    Disconnected,
    /// The connection is closed for good.
    #[error("the connection is closed")]
    Closed,
}

type TokenFn = TokenSource;

/// Events buffered per subscription.
const SUBSCRIPTION_BUFFER: usize = 4096;

/// Options for [`ConnectOptions::connect`]. Builder methods take and return `self`.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    token: Option<TokenFn>,
    static_token: Option<String>,
    reconnect: bool,
    max_delay: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            token: None,
            static_token: None,
            reconnect: true,
            max_delay: Duration::from_secs(30),
        }
    }
}

impl ConnectOptions {
    /// Defaults: reconnect on, backoff capped at 30 s.
    pub fn new() -> ConnectOptions {
        ConnectOptions::default()
    }

    /// Gets (and refreshes) tokens from `source`.
    pub fn token_source(mut self, source: TokenSource) -> ConnectOptions {
        self.token = Some(source);
        self
    }

    /// Uses a ready access token (no refresh: the connection ends when it expires).
    pub fn token(mut self, token: &str) -> ConnectOptions {
        self.static_token = Some(token.to_owned());
        self
    }

    /// Reconnect after a drop (default true).
    pub fn reconnect(mut self, on: bool) -> ConnectOptions {
        self.reconnect = on;
        self
    }

    /// Longest wait between reconnect attempts (default 30 s).
    pub fn max_reconnect_delay(mut self, d: Duration) -> ConnectOptions {
        self.max_delay = d;
        self
    }

    /// Connects to the broker at `url` (`http(s)://host:port` or `ws(s)://host:port`).
    ///
    /// # Errors
    /// [`ConnectError`] when the first connection cannot be made.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use scopecast_client::{ConnectOptions, TokenSource};
    /// let tokens = TokenSource::client_secret("http://127.0.0.1:7070", "CLIENT_ID", "SECRET");
    /// let client = ConnectOptions::new().token_source(tokens).connect("http://127.0.0.1:7070").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self, url: &str) -> Result<Client, ConnectError> {
        let ws_url = stream_url(url);
        let conn = Conn {
            opts: self,
            url: ws_url,
            subs: HashMap::new(),
            pending: HashMap::new(),
            next: 1,
        };
        let socket = conn.open().await?;
        let (tx, rx) = mpsc::channel(1024);
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connected);
        tokio::spawn(conn.run(socket, rx, state_tx));
        Ok(Client {
            tx,
            state: state_rx,
        })
    }
}

/// Shorthand for `ConnectOptions::new().token_source(tokens).connect(url)`.
///
/// # Errors
/// [`ConnectError`] when the first connection cannot be made.
pub async fn connect(url: &str, tokens: TokenSource) -> Result<Client, ConnectError> {
    ConnectOptions::new()
        .token_source(tokens)
        .connect(url)
        .await
}

fn stream_url(url: &str) -> String {
    let base = url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    if base.ends_with("/v1/stream") {
        base
    } else {
        format!("{base}/v1/stream")
    }
}

enum Command {
    Subscribe {
        pattern: Pattern,
        since: Option<u64>,
        events: mpsc::Sender<Item>,
        reply: oneshot::Sender<Result<u64, SubscribeError>>,
    },
    Unsubscribe {
        sid: u64,
    },
    Publish {
        topic: Topic,
        data: RawJson,
        event_id: Option<EventId>,
        reply: oneshot::Sender<Result<u64, PublishError>>,
    },
}

/// A connection handle: cheap to clone; the connection ends when every clone and
/// subscription is dropped.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    state: watch::Receiver<ConnectionState>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Client {
    /// Subscribes to live events of `pattern`.
    ///
    /// # Errors
    /// [`SubscribeError`]; `Forbidden { required_scope }` when the scope does not allow it.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example(client: scopecast_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use futures_util::StreamExt;
    /// let mut events = client.subscribe("fhir.encounter.>").await?;
    /// while let Some(scopecast_client::Item::Event(e)) = events.next().await {
    ///     println!("{} {}", e.seq, e.topic);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, SubscribeError> {
        self.subscribe_since(pattern, None).await
    }

    /// Subscribes to `pattern`, first replaying the stored events after `since` (a `seq`).
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub async fn subscribe_since(
        &self,
        pattern: &str,
        since: Option<u64>,
    ) -> Result<Subscription, SubscribeError> {
        let pattern: Pattern = pattern
            .parse()
            .map_err(|e: scopecast_protocol::TopicError| {
                SubscribeError::InvalidTopic(e.to_string())
            })?;
        // Events wait here for the reader; when it falls behind, the connection task waits, the
        // broker closes the connection as a slow consumer (4008), and the client resumes.
        let (events_tx, events_rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Subscribe {
                pattern: pattern.clone(),
                since,
                events: events_tx,
                reply,
            })
            .await
            .map_err(|_| SubscribeError::Closed)?;
        let sid = rx.await.map_err(|_| SubscribeError::Closed)??;
        Ok(Subscription {
            sid,
            pattern,
            rx: events_rx,
            tx: self.tx.clone(),
            done: false,
        })
    }

    /// Publishes `data` (any serializable value) to `topic`; returns its `seq` once stored.
    ///
    /// # Errors
    /// [`PublishError`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example(client: scopecast_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let seq = client.publish("adt.patient.admitted", &serde_json::json!({"resourceType": "Encounter"})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish<T: serde::Serialize + ?Sized>(
        &self,
        topic: &str,
        data: &T,
    ) -> Result<u64, PublishError> {
        let raw = RawJson::from_value(data).map_err(|e| PublishError::BadRequest(e.to_string()))?;
        self.publish_raw(topic, raw, None).await
    }

    /// Publishes raw JSON with an optional `event_id` (retries with the same id are idempotent).
    ///
    /// # Errors
    /// [`PublishError`].
    pub async fn publish_raw(
        &self,
        topic: &str,
        data: RawJson,
        event_id: Option<&str>,
    ) -> Result<u64, PublishError> {
        let topic: Topic = topic
            .parse()
            .map_err(|e: scopecast_protocol::TopicError| PublishError::BadRequest(e.to_string()))?;
        let event_id = event_id
            .map(EventId::new)
            .transpose()
            .map_err(|e| PublishError::BadRequest(e.to_string()))?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Publish {
                topic,
                data,
                event_id,
                reply,
            })
            .await
            .map_err(|_| PublishError::Closed)?;
        rx.await.map_err(|_| PublishError::Closed)?
    }

    /// The connection state, as a `watch` receiver (await changes with `changed()`).
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// Every change of the connection state from now on, as a `Stream` (ends when the
    /// connection task ends).
    pub fn state_changes(&self) -> impl Stream<Item = ConnectionState> + Send + 'static {
        let rx = self.state.clone();
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            let state = rx.borrow_and_update().clone();
            Some((state, rx))
        })
    }
}

/// A live subscription: a `Stream` of [`Item`]s. Dropping it unsubscribes.
///
/// Read every subscription (each in its own task if need be): the connection task waits while
/// a subscription's buffer (4,096 items) is full, and meanwhile reads nothing else, acks
/// included. A subscription started with `since` while another subscription of the same
/// client overlaps it does not receive the events that one already delivered.
pub struct Subscription {
    sid: u64,
    pattern: Pattern,
    rx: mpsc::Receiver<Item>,
    tx: mpsc::Sender<Command>,
    done: bool,
}

impl Subscription {
    /// The pattern subscribed.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// Ends the subscription now.
    pub async fn unsubscribe(mut self) {
        self.done = true;
        let _ = self.tx.send(Command::Unsubscribe { sid: self.sid }).await;
    }
}

impl Stream for Subscription {
    type Item = Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tx.try_send(Command::Unsubscribe { sid: self.sid });
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct SubState {
    pattern: Pattern,
    /// Newest `seq` delivered to this subscription: the resume point (`None` until the
    /// broker answered the first subscribe without `since`).
    last_seq: Option<u64>,
    events: mpsc::Sender<Item>,
    /// Waiting for `subscribed` after (re)subscribing: the request id, and the caller to answer.
    pending: Option<(String, Option<SubscribeReply>)>,
}

/// Where a subscribe's answer (its `head_seq`, or why not) goes.
type SubscribeReply = oneshot::Sender<Result<u64, SubscribeError>>;

enum Pending {
    Publish(oneshot::Sender<Result<u64, PublishError>>),
    Unsubscribe,
}

struct Conn {
    opts: ConnectOptions,
    url: String,
    subs: HashMap<u64, SubState>,
    pending: HashMap<String, Pending>,
    next: u64,
}

fn subscribe_error(e: &ErrorFrame) -> SubscribeError {
    match e.error.known() {
        Some(Reason::InsufficientScope | Reason::ScopeRevoked) => SubscribeError::Forbidden {
            required_scope: e.required_scope.clone().unwrap_or_default(),
        },
        Some(Reason::InvalidTopic) => SubscribeError::InvalidTopic(e.message.clone()),
        Some(Reason::InvalidToken | Reason::AuthRequired) => {
            SubscribeError::Unauthorized(e.message.clone())
        }
        Some(Reason::ClientInactive) => SubscribeError::ClientInactive(e.message.clone()),
        Some(Reason::TokenExpired) => SubscribeError::TokenExpired,
        Some(Reason::TooManySubscriptions) => SubscribeError::RateLimited(e.message.clone()),
        // A reason this version does not know: fall back on the code (PROTOCOL.md section 6).
        _ => match e.code {
            ErrorCode::Forbidden => SubscribeError::Forbidden {
                required_scope: e.required_scope.clone().unwrap_or_default(),
            },
            ErrorCode::Unauthorized => SubscribeError::Unauthorized(e.message.clone()),
            ErrorCode::RateLimited => SubscribeError::RateLimited(e.message.clone()),
            _ => SubscribeError::Protocol(format!("{}: {}", e.error, e.message)),
        },
    }
}

fn publish_error(e: &ErrorFrame) -> PublishError {
    match e.error.known() {
        Some(Reason::InsufficientScope) => PublishError::Forbidden {
            required_scope: e.required_scope.clone().unwrap_or_default(),
        },
        Some(Reason::PublishRateExceeded) => PublishError::RateLimited {
            retry_after_ms: e.retry_after_ms.unwrap_or(1000),
        },
        Some(Reason::EventIdConflict) => PublishError::Conflict,
        Some(Reason::LogUnavailable | Reason::ShuttingDown) => {
            PublishError::Unavailable(e.message.clone())
        }
        _ => match e.code {
            ErrorCode::Forbidden => PublishError::Forbidden {
                required_scope: e.required_scope.clone().unwrap_or_default(),
            },
            ErrorCode::RateLimited => PublishError::RateLimited {
                retry_after_ms: e.retry_after_ms.unwrap_or(1000),
            },
            ErrorCode::Conflict => PublishError::Conflict,
            ErrorCode::Unavailable | ErrorCode::Internal => {
                PublishError::Unavailable(e.message.clone())
            }
            _ => PublishError::BadRequest(format!("{}: {}", e.error, e.message)),
        },
    }
}

impl Conn {
    async fn token(&self) -> Result<String, ConnectError> {
        match (&self.opts.token, &self.opts.static_token) {
            (Some(source), _) => Ok(source.token().await?.access_token),
            (None, Some(t)) => Ok(t.clone()),
            (None, None) => Err(ConnectError::Token(TokenError::Key(
                "no token source and no token".to_owned(),
            ))),
        }
    }

    /// Opens the WebSocket with a token in the header and reads `welcome`.
    async fn open(&self) -> Result<Socket, ConnectError> {
        let token = self.token().await?;
        let mut req = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Io(e.to_string()))?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| ConnectError::Io(e.to_string()))?;
        req.headers_mut().insert("authorization", bearer);
        let (mut socket, _) = match tokio_tungstenite::connect_async(req).await {
            Ok(s) => s,
            Err(tungstenite::Error::Http(resp)) => {
                let message = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                return Err(ConnectError::Refused {
                    status: resp.status().as_u16(),
                    message,
                });
            }
            Err(e) => return Err(ConnectError::Io(e.to_string())),
        };
        loop {
            match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => match ServerFrame::decode(&t) {
                    Ok(ServerFrame::Welcome(_)) => return Ok(socket),
                    Ok(ServerFrame::Error(e)) => return Err(ConnectError::Closed(e.message)),
                    _ => continue,
                },
                Ok(Some(Ok(Message::Close(c)))) => {
                    return Err(ConnectError::Closed(
                        c.map(|c| format!("{} {}", u16::from(c.code), c.reason))
                            .unwrap_or_default(),
                    ));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Err(ConnectError::Io(e.to_string())),
                Ok(None) | Err(_) => {
                    return Err(ConnectError::Io("no welcome from the broker".to_owned()));
                }
            }
        }
    }

    fn id(&mut self, prefix: char) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    async fn send(socket: &mut Socket, frame: &ClientFrame) -> bool {
        socket.send(Message::text(frame.encode())).await.is_ok()
    }

    /// Sends `subscribe` for `sid`, resuming after its last delivered `seq` when it has one.
    async fn resubscribe(&mut self, socket: &mut Socket, sid: u64, since: Option<u64>) -> bool {
        let id = self.id('s');
        let Some(sub) = self.subs.get_mut(&sid) else {
            return true;
        };
        let since = since.or(sub.last_seq).map(Since::Seq);
        let reply = sub.pending.take().and_then(|(_, r)| r);
        sub.pending = Some((id.clone(), reply));
        let Ok(rid) = RequestId::new(&id) else {
            return true;
        };
        Conn::send(
            socket,
            &ClientFrame::Subscribe {
                id: rid,
                topic: sub.pattern.clone(),
                since,
            },
        )
        .await
    }

    async fn run(
        mut self,
        mut socket: Socket,
        mut commands: mpsc::Receiver<Command>,
        state: watch::Sender<ConnectionState>,
    ) {
        let mut attempt = 0u32;
        loop {
            let ended = self.serve(&mut socket, &mut commands).await;
            // Publishes in flight may or may not be stored.
            for (_, p) in self.pending.drain() {
                if let Pending::Publish(tx) = p {
                    let _ = tx.send(Err(PublishError::Disconnected));
                }
            }
            let retry = match &ended {
                Ended::Commands => {
                    let _ = socket.close(None).await;
                    let _ = state.send(ConnectionState::Closed("client dropped".to_owned()));
                    return;
                }
                Ended::Closed(code) => code.map_or(Retry::Reconnect, CloseCode::retry),
            };
            if retry == Retry::Never || !self.opts.reconnect {
                let why = format!("closed by the broker ({ended:?})");
                let _ = state.send(ConnectionState::Closed(why));
                self.fail_all(SubscribeError::Closed);
                return;
            }
            let _ = state.send(ConnectionState::Connecting);
            loop {
                attempt += 1;
                let base =
                    Duration::from_millis(100).saturating_mul(2u32.saturating_pow(attempt.min(16)));
                let capped = base.min(self.opts.max_delay);
                let jitter = jitter(capped);
                tokio::time::sleep(capped / 2 + jitter).await;
                match self.open().await {
                    Ok(s) => {
                        socket = s;
                        break;
                    }
                    Err(ConnectError::Refused { status, message })
                        if status == 401 || status == 403 =>
                    {
                        if self.opts.token.is_none() || status == 403 {
                            let _ =
                                state.send(ConnectionState::Closed(format!("{status}: {message}")));
                            self.fail_all(SubscribeError::Unauthorized(message));
                            return;
                        }
                    }
                    Err(_) => {}
                }
            }
            attempt = 0;
            let _ = state.send(ConnectionState::Connected);
            // Resume the subscription that is furthest behind first: each replay then also
            // feeds the later subscriptions the events the broker will not send twice on this
            // connection (PROTOCOL.md section 8), so no subscription misses one.
            let mut sids: Vec<(Option<u64>, u64)> = self
                .subs
                .iter()
                .map(|(sid, s)| (s.last_seq, *sid))
                .collect();
            sids.sort_by_key(|(last, sid)| (last.is_none(), *last, *sid));
            let sids: Vec<u64> = sids.into_iter().map(|(_, sid)| sid).collect();
            for sid in sids {
                if !self.resubscribe(&mut socket, sid, None).await {
                    break;
                }
            }
        }
    }

    fn fail_all(&mut self, why: SubscribeError) {
        for (_, mut sub) in self.subs.drain() {
            if let Some((_, Some(reply))) = sub.pending.take() {
                let _ = reply.send(Err(why.clone()));
            }
        }
    }

    async fn serve(
        &mut self,
        socket: &mut Socket,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Ended {
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    None => return Ended::Commands,
                    Some(cmd) => {
                        if !self.command(socket, cmd).await {
                            return Ended::Closed(None);
                        }
                    }
                },
                msg = socket.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(frame) = ServerFrame::decode(&t) {
                            self.frame(socket, frame).await;
                        }
                    }
                    Some(Ok(Message::Close(c))) => return Ended::Closed(c.and_then(|c| CloseCode::from_u16(u16::from(c.code)))),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Ended::Closed(None),
                },
            }
        }
    }

    async fn command(&mut self, socket: &mut Socket, cmd: Command) -> bool {
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
                        last_seq: since,
                        events,
                        pending: Some((String::new(), Some(reply))),
                    },
                );
                self.resubscribe(socket, sid, since).await
            }
            Command::Unsubscribe { sid } => {
                let Some(sub) = self.subs.remove(&sid) else {
                    return true;
                };
                // Another subscription may hold the same pattern on this connection.
                if self.subs.values().any(|s| s.pattern == sub.pattern) {
                    return true;
                }
                let id = self.id('u');
                self.pending.insert(id.clone(), Pending::Unsubscribe);
                let Ok(rid) = RequestId::new(&id) else {
                    return true;
                };
                Conn::send(
                    socket,
                    &ClientFrame::Unsubscribe {
                        id: rid,
                        topic: sub.pattern,
                    },
                )
                .await
            }
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
                Conn::send(
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

    async fn frame(&mut self, socket: &mut Socket, frame: ServerFrame) {
        match frame {
            ServerFrame::Event(e) => {
                for sub in self.subs.values_mut() {
                    // A subscription still waiting for its first `subscribed` has no events yet.
                    if sub.last_seq.is_some_and(|last| e.seq > last)
                        && sub.pattern.matches(&e.topic)
                    {
                        sub.last_seq = Some(e.seq);
                        let _ = sub.events.send(Item::Event(e.clone())).await;
                    }
                }
            }
            ServerFrame::Subscribed(s) => {
                let Some((&sid, sub)) = self.subs.iter_mut().find(|(_, x)| {
                    x.pending
                        .as_ref()
                        .is_some_and(|(id, _)| id == s.id.as_str())
                }) else {
                    return;
                };
                let (_, reply) = sub.pending.take().unwrap_or_default();
                if let Some(r) = s.replay
                    && r.truncated
                {
                    let from = sub.last_seq.map_or(1, |l| l + 1);
                    let _ = sub
                        .events
                        .send(Item::Gap {
                            from_seq: from,
                            to_seq: r.from_seq.saturating_sub(1),
                        })
                        .await;
                }
                if sub.last_seq.is_none() {
                    sub.last_seq = Some(
                        s.replay
                            .map_or(s.head_seq, |r| r.from_seq.saturating_sub(1)),
                    );
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(sid));
                }
            }
            ServerFrame::Published(p) => {
                if let Some(Pending::Publish(tx)) = self.pending.remove(p.id.as_str()) {
                    let _ = tx.send(Ok(p.seq));
                }
            }
            ServerFrame::Error(e) => self.error(e),
            ServerFrame::TokenExpiring(_) => {
                if let Some(source) = &self.opts.token
                    && let Ok(t) = source.fetch().await
                {
                    let _ = Conn::send(
                        socket,
                        &ClientFrame::Auth {
                            token: t.access_token,
                        },
                    )
                    .await;
                }
            }
            ServerFrame::Unsubscribed(u) => {
                self.pending.remove(u.id.as_str());
            }
            ServerFrame::Welcome(_) | ServerFrame::Pong(_) => {}
        }
    }

    fn error(&mut self, e: ErrorFrame) {
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
            if let Some(sid) = found
                && let Some(mut sub) = self.subs.remove(&sid)
                && let Some((_, Some(reply))) = sub.pending.take()
            {
                let _ = reply.send(Err(subscribe_error(&e)));
            }
            return;
        }
        if e.error == Reason::ScopeRevoked
            && let Some(topic) = &e.topic
        {
            // The subscription ended on the broker: end it here too (its stream finishes).
            self.subs.retain(|_, s| &s.pattern != topic);
        }
    }
}

#[derive(Debug)]
enum Ended {
    Commands,
    Closed(Option<CloseCode>),
}

fn jitter(max: Duration) -> Duration {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    let r = u32::from_le_bytes(b) as u64;
    Duration::from_millis(r % (max.as_millis() as u64 / 2 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_urls_from_http_and_ws_bases() {
        assert_eq!(stream_url("http://h:1"), "ws://h:1/v1/stream");
        assert_eq!(stream_url("https://h/"), "wss://h/v1/stream");
        assert_eq!(stream_url("ws://h:1/v1/stream"), "ws://h:1/v1/stream");
    }

    #[test]
    fn unknown_reasons_fall_back_on_the_code() {
        let frame = ServerFrame::decode(r#"{"type":"error","code":"forbidden","error":"new_in_v1_9","message":"m","required_scope":"subscribe:x"}"#).unwrap();
        let ServerFrame::Error(e) = frame else {
            panic!()
        };
        assert_eq!(
            subscribe_error(&e),
            SubscribeError::Forbidden {
                required_scope: "subscribe:x".into()
            }
        );
        let frame = ServerFrame::decode(
            r#"{"type":"error","code":"unavailable","error":"disk_on_fire","message":"m"}"#,
        )
        .unwrap();
        let ServerFrame::Error(e) = frame else {
            panic!()
        };
        assert_eq!(publish_error(&e), PublishError::Unavailable("m".into()));
    }

    #[test]
    fn forbidden_names_the_required_scope() {
        let mut e = ErrorFrame::new(None, Reason::InsufficientScope, "no".into());
        e.required_scope = Some("subscribe:adt.>".into());
        assert_eq!(
            subscribe_error(&e),
            SubscribeError::Forbidden {
                required_scope: "subscribe:adt.>".into()
            }
        );
        assert_eq!(
            publish_error(&e),
            PublishError::Forbidden {
                required_scope: "subscribe:adt.>".into()
            }
        );
    }
}
