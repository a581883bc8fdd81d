//! [`ConnectOptions`]: how to connect (token source, TLS trust, reconnect policy, event
//! callback), and [`connect`]. Builder methods take and return `self`, as async-nats does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::connection::Conn;
use crate::dial::{Dial, WsDial};
use crate::history::History;
use crate::tls::{TlsConfig, TlsError};
use crate::token::TokenSource;
use crate::{Client, ConnectError, ConnectionState};

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
pub(crate) type EventCallback = Arc<dyn Fn(ClientEvent) + Send + Sync>;

pub(crate) type TokenFn = TokenSource;

/// How long a connection must last for the reconnect backoff to start again from the shortest
/// wait.
pub(crate) const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// Shortest wait between two attempts, whatever `max_reconnect_delay` says.
pub(crate) const MIN_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Events buffered per subscription.
pub(crate) const SUBSCRIPTION_BUFFER: usize = 4096;

/// Options for [`ConnectOptions::connect`]. Builder methods take and return `self`.
#[derive(Clone)]
pub struct ConnectOptions {
    pub(crate) token: Option<TokenFn>,
    pub(crate) static_token: Option<String>,
    /// `None`: the bundled and system roots.
    pub(crate) tls: Option<TlsConfig>,
    pub(crate) reconnect: bool,
    pub(crate) max_delay: Duration,
    pub(crate) on_event: Option<EventCallback>,
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

    /// Connects to the broker at `url` (`http(s)://host:port` or `ws(s)://host:port`), or to
    /// any node of a cluster given as several URLs, comma-separated
    /// (`http://node-a:7070,http://node-b:7070`): the first node that answers is used, and a
    /// reconnect tries the node it was on first, then the others in turn, resuming every
    /// subscription by `seq` on whichever node answers (nodes of one cluster share the log:
    /// no gap, no duplicate).
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
        let ws_urls: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(stream_url)
            .collect();
        let ws_url = ws_urls.first().cloned().unwrap_or_default();
        // One trust for every connection: the WebSocket, history reads and tokens.
        let tls = self.tls.take().unwrap_or_default();
        let tls_config = tls.client_config()?;
        let http = tls.http_client(Duration::from_secs(30))?;
        self.token = self.token.map(|t| t.with_tls_unless_set(&tls));
        let (internal, internal_rx) = mpsc::unbounded_channel();
        let history_at = Arc::new(std::sync::Mutex::new(history_url(&ws_url)));
        let history = History {
            http,
            url: history_at.clone(),
            opts: self.clone(),
        };
        let dial = WsDial {
            urls: ws_urls,
            current: std::sync::atomic::AtomicUsize::new(0),
            history_url: history_at,
            tls: tls_config,
        };
        let (socket, welcome) = dial.dial(&self).await?;
        let conn = Conn {
            history,
            dial,
            epoch: welcome.log_epoch,
            opts: self,
            subs: HashMap::new(),
            pending: HashMap::new(),
            next: 1,
            internal,
            refreshing: false,
        };
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

pub(crate) fn stream_url(url: &str) -> String {
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
pub(crate) fn history_url(stream_url: &str) -> String {
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
}
