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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use scopecast_protocol::{
    ClientFrame, CloseCode, ErrorCode, ErrorFrame, Event, EventId, Pattern, Published, RawJson,
    Reason, RequestId, Retry, SUBPROTOCOL, ServerFrame, Topic,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::tls::{CertificateError, TlsConfig, TlsError};
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

/// Something that happened to the connection, told to the callback of
/// [`ConnectOptions::event_callback`] as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The connection dropped or the broker closed it; the client reconnects unless the
    /// close code says not to. Holds the close code and reason, when there were some.
    Disconnected(String),
    /// The client connected again after a drop; subscriptions resume from their last `seq`.
    Reconnected,
    /// Getting a fresh access token failed (the token endpoint is down or refused the
    /// credentials). The current token stays in force until it expires; the client tries
    /// again at the next `token_expiring` or reconnect.
    TokenRefreshFailed(String),
}

/// The callback of [`ConnectOptions::event_callback`].
type EventCallback = Arc<dyn Fn(ClientEvent) + Send + Sync>;

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
    /// The subscription ended without the reader asking, and why; nothing follows. It comes
    /// when a resubscribe after a reconnect is refused (say the application's scope was
    /// narrowed meanwhile: `Forbidden`), when the broker revokes it after a token refresh
    /// (`scope_revoked`: `Forbidden`), when the history it needs cannot be read, or when the
    /// connection closes for good (`Closed`, `ClientInactive`, `Unauthorized`).
    Ended(SubscribeError),
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
    /// The broker's TLS certificate was refused, for a reason the message explains (an
    /// organisation's own CA this client does not trust, a CA certificate served as the
    /// broker's own).
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The TLS configuration could not be used.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
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
    /// The broker could not read its event log for the history this subscription needs.
    #[error("unavailable: {0}")]
    Unavailable(String),
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

/// How long a connection must last for the reconnect backoff to start again from the shortest
/// wait.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// Shortest wait between two attempts, whatever `max_reconnect_delay` says.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Events buffered per subscription.
const SUBSCRIPTION_BUFFER: usize = 4096;

/// Options for [`ConnectOptions::connect`]. Builder methods take and return `self`.
#[derive(Clone)]
pub struct ConnectOptions {
    token: Option<TokenFn>,
    static_token: Option<String>,
    /// `None`: the bundled and system roots.
    tls: Option<TlsConfig>,
    reconnect: bool,
    max_delay: Duration,
    on_event: Option<EventCallback>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("token_source", &self.token)
            .field(
                "static_token",
                &self.static_token.as_ref().map(|_| "(hidden)"),
            )
            .field("reconnect", &self.reconnect)
            .field("max_delay", &self.max_delay)
            .field("event_callback", &self.on_event.is_some())
            .finish()
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            token: None,
            static_token: None,
            tls: None,
            reconnect: true,
            max_delay: Duration::from_secs(30),
            on_event: None,
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

    /// Trusts the CAs of `tls` for every connection this client makes: the WebSocket, the
    /// history reads, and the token endpoint (unless the token source has its own, from
    /// [`TokenSource::with_tls`]). Default: [`TlsConfig::new`], the bundled Mozilla roots and
    /// the system trust store.
    pub fn tls(mut self, tls: TlsConfig) -> ConnectOptions {
        self.tls = Some(tls);
        self
    }

    /// Also trusts the CA certificates in the PEM file at `path`, such as a hospital's own CA
    /// that signed the broker's certificate: shorthand for
    /// `tls(TlsConfig::new().add_root_certificates(path)?)`, adding to a `TlsConfig` given
    /// before.
    ///
    /// # Errors
    /// [`TlsError`] when the file cannot be read or holds no usable certificate.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use scopecast_client::{ConnectOptions, TokenSource};
    /// let url = "https://scopecast.hospital.example";
    /// let client = ConnectOptions::new()
    ///     .add_root_certificates("/etc/hospital/ca.pem")?
    ///     .token_source(TokenSource::client_secret(url, "CLIENT_ID", "SECRET"))
    ///     .connect(url)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn add_root_certificates(
        mut self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<ConnectOptions, TlsError> {
        let tls = self.tls.take().unwrap_or_default();
        self.tls = Some(tls.add_root_certificates(path)?);
        Ok(self)
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

    /// Calls `callback` with every [`ClientEvent`] as it happens (from the connection's task:
    /// keep it short, do not block).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use scopecast_client::{ClientEvent, ConnectOptions, TokenSource};
    /// let tokens = TokenSource::client_secret("http://127.0.0.1:7070", "CLIENT_ID", "SECRET");
    /// let client = ConnectOptions::new()
    ///     .token_source(tokens)
    ///     .event_callback(|e| {
    ///         if let ClientEvent::TokenRefreshFailed(why) = e {
    ///             eprintln!("token refresh failed: {why}");
    ///         }
    ///     })
    ///     .connect("http://127.0.0.1:7070")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn event_callback(
        mut self,
        callback: impl Fn(ClientEvent) + Send + Sync + 'static,
    ) -> ConnectOptions {
        self.on_event = Some(Arc::new(callback));
        self
    }

    /// Connects to the broker at `url` (`http(s)://host:port` or `ws(s)://host:port`).
    ///
    /// # Errors
    /// [`ConnectError`] when the first connection cannot be made;
    /// [`ConnectError::Certificate`] when the broker's certificate is refused, saying what to
    /// do (for an organisation's own CA: [`ConnectOptions::add_root_certificates`]).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use scopecast_client::{ConnectOptions, TokenSource};
    /// let tokens = TokenSource::client_secret("http://127.0.0.1:7070", "CLIENT_ID", "SECRET");
    /// let client = ConnectOptions::new().token_source(tokens).connect("http://127.0.0.1:7070").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(mut self, url: &str) -> Result<Client, ConnectError> {
        let ws_url = stream_url(url);
        // One trust for every connection: the WebSocket, history reads and tokens.
        let tls = self.tls.take().unwrap_or_default();
        let tls_config = tls.client_config()?;
        let http = tls.http_client(Duration::from_secs(30))?;
        self.token = self.token.map(|t| t.with_tls_unless_set(&tls));
        let (internal, internal_rx) = mpsc::unbounded_channel();
        let conn = Conn {
            history: History {
                http,
                url: history_url(&ws_url),
                opts: self.clone(),
            },
            opts: self,
            tls: tls_config,
            url: ws_url,
            subs: HashMap::new(),
            pending: HashMap::new(),
            next: 1,
            internal,
            refreshing: false,
        };
        let socket = conn.open().await?;
        let (tx, rx) = mpsc::channel(1024);
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connected);
        tokio::spawn(conn.run(socket, rx, internal_rx, state_tx));
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

/// The history endpoint next to a stream URL: `ws://h:1/v1/stream` -> `http://h:1/v1/events`.
fn history_url(stream_url: &str) -> String {
    let base = stream_url.trim_end_matches("/v1/stream");
    let base = if let Some(rest) = base.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = base.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}/v1/events")
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
        reply: oneshot::Sender<Result<Published, PublishError>>,
    },
    /// Close the connection with 1000 and stop; `done` fires once the close handshake is over.
    Close {
        done: oneshot::Sender<()>,
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

    /// Subscribes to `pattern`, first delivering the stored events with a `seq` after `since`
    /// (then live ones, with no gap and no duplicate). The stored events are read from the
    /// history endpoint (`GET /v1/events`, PROTOCOL.md section 8), so they do not depend on
    /// what the connection's other subscriptions received; events gone past the broker's
    /// retention are one [`Item::Gap`].
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
        // Events wait here for the reader; when it is full, the connection task hands the
        // subscription to a catch-up task that reads the missed events from the history
        // endpoint at the reader's pace, so nothing else on the connection waits.
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

    /// Publishes raw JSON with an optional `event_id` (retries with the same id are idempotent);
    /// returns the event's `seq`.
    ///
    /// # Errors
    /// [`PublishError`].
    pub async fn publish_raw(
        &self,
        topic: &str,
        data: RawJson,
        event_id: Option<&str>,
    ) -> Result<u64, PublishError> {
        self.publish_acked(topic, data, event_id)
            .await
            .map(|p| p.seq)
    }

    /// Closes the connection with a close frame (1000) and waits for the broker's answer (at
    /// most a few seconds); subscriptions end with [`SubscribeError::Closed`]. Call it before
    /// a program exits: a task still running when the runtime stops cannot send the frame,
    /// and the broker then logs an abrupt disconnect.
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::Close { done }).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    /// As [`Client::publish_raw`], returning the whole `published` answer: `seq`, the event id
    /// (the broker's UUID when none was given) and `duplicate` (true when the `event_id` was
    /// already stored within the idempotency window, so nothing was stored again).
    ///
    /// # Errors
    /// [`PublishError`].
    pub async fn publish_acked(
        &self,
        topic: &str,
        data: RawJson,
        event_id: Option<&str>,
    ) -> Result<Published, PublishError> {
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

/// A live subscription: a `Stream` of [`Item`]s, each matching event once and in `seq`
/// order. Dropping it unsubscribes.
///
/// A reader may be slow: when its buffer (4,096 items) is full, the events it misses are
/// fetched again from the broker's history endpoint at its pace, while the connection and the
/// other subscriptions go on. The stream ends after [`Item::Ended`], which says why.
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
    /// Newest `seq` handed to the reader, or the resume point; `None` until the broker answered
    /// the first `subscribe`.
    last_seq: Option<u64>,
    /// With `subscribe_since`: where the history starts (the first `subscribed` sets it).
    since: Option<u64>,
    feed: Feed,
    /// Waiting for `subscribed` after (re)subscribing: the request id, and the caller to answer.
    pending: Option<(String, Option<SubscribeReply>)>,
    /// Set while the subscription is fed from the history endpoint instead of the socket.
    catch_up: Option<CatchUp>,
    /// Numbers catch-up rounds, so a report of an aborted round is ignored.
    rounds: u64,
    /// The newest matching `seq` the socket carried while `pending` (not handed over).
    held: u64,
}

/// A catch-up round in flight: a task reading `GET /v1/events` into the subscription.
struct CatchUp {
    round: u64,
    /// The newest matching `seq` the round must reach: the broker's head when the subscription
    /// went live, then every matching event the socket carried meanwhile (not handed over).
    target: u64,
    task: tokio::task::AbortHandle,
}

/// Where a subscribe's answer (its id, or why not) goes.
type SubscribeReply = oneshot::Sender<Result<u64, SubscribeError>>;

enum Pending {
    Publish(oneshot::Sender<Result<Published, PublishError>>),
    Unsubscribe,
}

/// Reports from the tasks the connection task spawns.
enum Internal {
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

struct Conn {
    opts: ConnectOptions,
    /// The rustls config of every WebSocket this connection opens (the history client and the
    /// token source use the same trust).
    tls: Arc<rustls::ClientConfig>,
    url: String,
    history: History,
    subs: HashMap<u64, SubState>,
    pending: HashMap<String, Pending>,
    next: u64,
    internal: mpsc::UnboundedSender<Internal>,
    refreshing: bool,
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
        Some(Reason::LogUnavailable) => SubscribeError::Unavailable(e.message.clone()),
        // A reason this version does not know: fall back on the code (PROTOCOL.md section 6).
        _ => match e.code {
            ErrorCode::Forbidden => SubscribeError::Forbidden {
                required_scope: e.required_scope.clone().unwrap_or_default(),
            },
            ErrorCode::Unauthorized => SubscribeError::Unauthorized(e.message.clone()),
            ErrorCode::RateLimited => SubscribeError::RateLimited(e.message.clone()),
            ErrorCode::Unavailable => SubscribeError::Unavailable(e.message.clone()),
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

/// Ends a subscription's stream with `why` as its last item. The reader may be behind (its
/// buffer full), so the item waits in a task of its own; the stream ends after it.
fn end_subscription(mut sub: SubState, why: SubscribeError) {
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
struct Feed {
    tx: mpsc::Sender<Item>,
    ended: Arc<tokio::sync::Mutex<bool>>,
}

impl Feed {
    fn new(tx: mpsc::Sender<Item>) -> Feed {
        Feed {
            tx,
            ended: Arc::new(tokio::sync::Mutex::new(false)),
        }
    }

    /// Waits for room and hands `item` over; false when the stream ended or the reader left.
    async fn send(&self, item: Item) -> bool {
        let ended = self.ended.lock().await;
        !*ended && self.tx.send(item).await.is_ok()
    }

    /// Hands over `Ended(why)` as the last item.
    async fn end(self, why: SubscribeError) {
        let mut ended = self.ended.lock().await;
        *ended = true;
        let _ = self.tx.send(Item::Ended(why)).await;
    }
}

/// The access token to present: from the token source (cached, refreshed near expiry), or the
/// fixed one.
async fn current_token(opts: &ConnectOptions) -> Result<String, ConnectError> {
    match (&opts.token, &opts.static_token) {
        (Some(source), _) => Ok(source.token().await?.access_token),
        (None, Some(t)) => Ok(t.clone()),
        (None, None) => Err(ConnectError::Token(TokenError::Key(
            "no token source and no token".to_owned(),
        ))),
    }
}

/// Reads `GET /v1/events` (PROTOCOL.md section 8) for subscriptions that must catch up: after
/// `subscribe_since`, after a reconnect, or after the reader fell behind.
#[derive(Clone)]
struct History {
    http: reqwest::Client,
    /// `http(s)://host:port/v1/events`.
    url: String,
    opts: ConnectOptions,
}

/// One page of `GET /v1/events`.
#[derive(serde::Deserialize)]
struct HistoryPage {
    events: Vec<Event>,
    next_since: u64,
    first_seq: u64,
    truncated: bool,
}

/// The JSON body of a refused HTTP request.
#[derive(serde::Deserialize)]
struct HttpError {
    error: ErrorCode,
    reason: scopecast_protocol::ErrorReason,
    #[serde(default)]
    message: String,
    #[serde(default)]
    required_scope: Option<String>,
}

/// Why a history page could not be had.
enum PageError {
    /// Worth another try later (network, 429, 5xx, a token to refresh).
    Retry,
    /// The subscription cannot be served.
    Fatal(SubscribeError),
}

/// Events per history page (the broker's maximum; it also bounds a page's bytes).
const HISTORY_PAGE: usize = 1000;

/// Transient history failures in a row (with backoff, minutes) before a catch-up gives up
/// and ends its subscription with [`SubscribeError::Unavailable`].
const MAX_HISTORY_FAILURES: u32 = 20;

impl History {
    async fn page(
        &self,
        pattern: &Pattern,
        since: u64,
        refreshed: &mut bool,
    ) -> Result<HistoryPage, PageError> {
        let token = match current_token(&self.opts).await {
            Ok(t) => t,
            Err(ConnectError::Token(e)) if e.is_permanent() => {
                return Err(PageError::Fatal(SubscribeError::Unauthorized(
                    e.to_string(),
                )));
            }
            Err(_) => return Err(PageError::Retry),
        };
        let resp = self
            .http
            .get(&self.url)
            .query(&[
                ("topic", pattern.as_str()),
                ("since", &since.to_string()),
                ("limit", &HISTORY_PAGE.to_string()),
            ])
            .bearer_auth(token)
            .send()
            .await
            .map_err(|_| PageError::Retry)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|_| PageError::Retry)?;
        if status == 200 {
            return serde_json::from_slice(&body).map_err(|e| {
                PageError::Fatal(SubscribeError::Protocol(format!("history page: {e}")))
            });
        }
        if status == 429 || status >= 500 {
            return Err(PageError::Retry);
        }
        let refused = serde_json::from_slice::<HttpError>(&body)
            .map(|h| ErrorFrame {
                id: None,
                code: h.error,
                error: h.reason,
                message: h.message,
                required_scope: h.required_scope,
                topic: None,
                retry_after_ms: None,
            })
            .map(|f| subscribe_error(&f))
            .unwrap_or_else(|_| SubscribeError::Protocol(format!("history: HTTP {status}")));
        match (&refused, &self.opts.token) {
            // A token the broker no longer takes (its keys rotated): get a new one, once.
            (SubscribeError::Unauthorized(_) | SubscribeError::TokenExpired, Some(source))
                if !*refreshed =>
            {
                *refreshed = true;
                let _ = source.refresh().await;
                Err(PageError::Retry)
            }
            _ => Err(PageError::Fatal(refused)),
        }
    }

    /// Hands the matching events with `seq` > `from` to `events`, in order, until `target` is
    /// reached; a range gone past retention becomes one [`Item::Gap`]. Returns the `seq` the
    /// subscription has reached. Waits for the reader, and retries transient failures with
    /// capped, jittered backoff.
    async fn catch_up(
        self,
        pattern: Pattern,
        from: u64,
        target: u64,
        feed: Feed,
    ) -> Result<u64, SubscribeError> {
        let mut cursor = from;
        let mut failures = 0u32;
        let mut refreshed = false;
        while cursor < target {
            let page = match self.page(&pattern, cursor, &mut refreshed).await {
                Ok(p) if p.next_since > cursor || !p.events.is_empty() => p,
                Ok(_) | Err(PageError::Retry) => {
                    failures += 1;
                    if failures > MAX_HISTORY_FAILURES {
                        return Err(SubscribeError::Unavailable(format!(
                            "the history endpoint failed {MAX_HISTORY_FAILURES} times in a row"
                        )));
                    }
                    tokio::time::sleep(backoff(failures, self.opts.max_delay)).await;
                    continue;
                }
                Err(PageError::Fatal(e)) => return Err(e),
            };
            failures = 0;
            refreshed = false;
            // What is gone: up to the oldest retained event, and never past one this page holds
            // (retention may have moved on while the broker read the page).
            let gone_to = page
                .events
                .first()
                .map_or(page.first_seq, |e| e.seq.min(page.first_seq))
                .saturating_sub(1);
            if page.truncated && gone_to > cursor {
                let gap = Item::Gap {
                    from_seq: cursor + 1,
                    to_seq: gone_to,
                };
                if !feed.send(gap).await {
                    return Err(SubscribeError::Closed);
                }
            }
            for e in page.events {
                if e.seq <= cursor {
                    continue;
                }
                cursor = e.seq;
                if !feed.send(Item::Event(e)).await {
                    return Err(SubscribeError::Closed);
                }
            }
            cursor = cursor.max(page.next_since);
        }
        Ok(cursor)
    }
}

/// The wait before retry number `attempt` (from 1): 100 ms doubling, capped at `max`, half of
/// it random.
fn backoff(attempt: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(2u32.saturating_pow(attempt.min(16)));
    let capped = base.min(max).max(MIN_RETRY_DELAY);
    capped / 2 + jitter(capped)
}

impl Conn {
    /// Opens the WebSocket with a token in the header and reads `welcome`.
    async fn open(&self) -> Result<Socket, ConnectError> {
        let token = current_token(&self.opts).await?;
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
        let connector = tokio_tungstenite::Connector::Rustls(self.tls.clone());
        let connecting =
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector));
        let (mut socket, _) = match connecting.await {
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
            Err(e) => {
                return Err(match CertificateError::find(&e) {
                    Some(certificate) => ConnectError::Certificate(certificate),
                    None => ConnectError::Io(e.to_string()),
                });
            }
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

    /// Sends a live `subscribe` (no `since`: history comes from the history endpoint, so a
    /// subscription never depends on what the connection's other subscriptions received).
    async fn resubscribe(&mut self, socket: &mut Socket, sid: u64) -> bool {
        let id = self.id('s');
        let Some(sub) = self.subs.get_mut(&sid) else {
            return true;
        };
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
                since: None,
            },
        )
        .await
    }

    /// Starts (or extends) a catch-up of `sid` up to `target`.
    fn catch_up(&mut self, sid: u64, target: u64) {
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

    async fn run(
        mut self,
        mut socket: Socket,
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
                let refused = match self.open().await {
                    Ok(s) => {
                        socket = s;
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

    fn emit(&self, event: ClientEvent) {
        if let Some(f) = &self.opts.on_event {
            f(event);
        }
    }

    /// Ends every subscription with `why`.
    fn end_all(&mut self, why: SubscribeError) {
        for (_, sub) in self.subs.drain() {
            end_subscription(sub, why.clone());
        }
    }

    async fn serve(
        &mut self,
        socket: &mut Socket,
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

    async fn internal(&mut self, socket: &mut Socket, msg: Internal) -> bool {
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
                    Ok(token) => Conn::send(socket, &ClientFrame::Auth { token }).await,
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
    fn forget(&mut self, sid: u64, why: Option<SubscribeError>) -> Option<Pattern> {
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

    async fn unsubscribe(&mut self, socket: &mut Socket, pattern: Pattern) -> bool {
        let id = self.id('u');
        self.pending.insert(id.clone(), Pending::Unsubscribe);
        let Ok(rid) = RequestId::new(&id) else {
            return true;
        };
        Conn::send(
            socket,
            &ClientFrame::Unsubscribe {
                id: rid,
                topic: pattern,
            },
        )
        .await
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

    /// Handles one server frame. Never waits: a reader that is behind is caught up from the
    /// history endpoint by a task of its own, so acks and other subscriptions flow meanwhile.
    /// Returns the patterns to unsubscribe: of subscriptions found abandoned or ended here,
    /// when no other subscription holds the same pattern.
    fn frame(&mut self, frame: ServerFrame) -> Vec<Pattern> {
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
            ServerFrame::Subscribed(s) => {
                let Some((&sid, sub)) = self.subs.iter_mut().find(|(_, x)| {
                    x.pending
                        .as_ref()
                        .is_some_and(|(id, _)| id == s.id.as_str())
                }) else {
                    return abandoned;
                };
                let (_, reply) = sub.pending.take().unwrap_or_default();
                if let Some(last) = sub.last_seq
                    && s.head_seq < last
                {
                    // The broker's sequence went back (a memory log that restarted, a restored
                    // data folder): its seqs no longer name the events this one delivered.
                    let why = SubscribeError::Protocol(format!(
                        "the broker's newest seq went back from {last} to {}: its event log was \
                         reset; subscribe again",
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
enum Ended {
    Commands,
    /// [`Client::close`] asked to stop.
    Closing(oneshot::Sender<()>),
    /// The socket closed: the close code when there was one, and the close reason.
    Closed(Option<CloseCode>, String),
}

/// Ends the WebSocket as RFC 6455 section 7 asks: a close frame with 1000, then the broker's
/// close frame, waited for at most two seconds.
async fn close_normally(socket: &mut Socket) {
    let frame = tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "client finished".into(),
    };
    if socket.close(Some(frame)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
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
        assert_eq!(history_url("ws://h:1/v1/stream"), "http://h:1/v1/events");
        assert_eq!(history_url("wss://h/v1/stream"), "https://h/v1/events");
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
