//! Opening the WebSocket: [`Dial`] gives the connection task each new socket and the broker's
//! `welcome`. [`WsDial`] dials the broker (token in the upgrade's `Authorization` header,
//! subprotocol `scopecast.v1`, the client's TLS trust); tests give sockets made of channels,
//! so the connection task runs without a broker.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, Stream, StreamExt};
use scopecast_protocol::{SUBPROTOCOL, ServerFrame, Welcome};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::ConnectError;
use crate::ConnectOptions;
use crate::history::current_token;
use crate::tls::CertificateError;

/// A WebSocket as the connection task uses it: messages in, messages out.
pub(crate) trait WebSocket:
    Stream<Item = Result<Message, tungstenite::Error>>
    + Sink<Message, Error = tungstenite::Error>
    + Unpin
    + Send
    + 'static
{
}

impl<S> WebSocket for S where
    S: Stream<Item = Result<Message, tungstenite::Error>>
        + Sink<Message, Error = tungstenite::Error>
        + Unpin
        + Send
        + 'static
{
}

/// A future that opens one socket.
pub(crate) type Dialing<'a, S> =
    Pin<Box<dyn Future<Output = Result<(S, Welcome), ConnectError>> + Send + 'a>>;

/// Opens the connection's sockets, each authenticated (its `welcome` read).
pub(crate) trait Dial: Send + Sync + 'static {
    /// The socket type.
    type Socket: WebSocket;
    /// Opens a socket with a token from `opts` and reads its `welcome`.
    fn dial<'a>(&'a self, opts: &'a ConnectOptions) -> Dialing<'a, Self::Socket>;
}

/// Longest one node may take to accept the WebSocket and send `welcome`.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker over the network: one node, or several nodes of a cluster to fail over
/// between.
pub(crate) struct WsDial {
    /// `ws(s)://host:port/v1/stream` of each node, in the order given.
    pub(crate) urls: Vec<String>,
    /// The node to try first: the one connected last (a dial that fails moves on).
    pub(crate) current: std::sync::atomic::AtomicUsize,
    /// The history endpoint of the node connected to, moved with each successful dial.
    pub(crate) history_url: Arc<std::sync::Mutex<String>>,
    /// The rustls config of every WebSocket (the history client and the token source use the
    /// same trust).
    pub(crate) tls: Arc<rustls::ClientConfig>,
}

/// The socket [`WsDial`] opens.
pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Dial for WsDial {
    type Socket = Socket;

    fn dial<'a>(&'a self, opts: &'a ConnectOptions) -> Dialing<'a, Socket> {
        Box::pin(self.open_any(opts))
    }
}

impl WsDial {
    /// Tries each node once, from the one connected last on: the first that welcomes us is
    /// the connection (and the history endpoint). A refusal that no other node would answer
    /// differently (a bad token, an inactive client, a refused certificate) is returned at
    /// once; otherwise the last node's error when none answers.
    async fn open_any(&self, opts: &ConnectOptions) -> Result<(Socket, Welcome), ConnectError> {
        use std::sync::atomic::Ordering;
        let n = self.urls.len().max(1);
        let start = self.current.load(Ordering::Relaxed);
        let mut last = ConnectError::Io("no broker URL".to_owned());
        for i in 0..n {
            let at = (start + i) % n;
            let Some(url) = self.urls.get(at) else { break };
            // A node that accepts TCP but never answers (hung) must not hold the failover.
            let attempt = tokio::time::timeout(DIAL_TIMEOUT, self.open(url, opts))
                .await
                .unwrap_or_else(|_| {
                    Err(ConnectError::Io(format!(
                        "{url} did not answer within {} s",
                        DIAL_TIMEOUT.as_secs()
                    )))
                });
            match attempt {
                Ok(done) => {
                    self.current.store(at, Ordering::Relaxed);
                    if let Ok(mut h) = self.history_url.lock() {
                        *h = crate::options::history_url(url);
                    }
                    return Ok(done);
                }
                Err(e @ (ConnectError::Certificate(_) | ConnectError::Token(_))) => return Err(e),
                Err(ConnectError::Refused { status, message })
                    if matches!(status, 400 | 401 | 403) =>
                {
                    return Err(ConnectError::Refused { status, message });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Opens the WebSocket at `url` with a token in the header and reads `welcome`.
    async fn open(
        &self,
        url: &str,
        opts: &ConnectOptions,
    ) -> Result<(Socket, Welcome), ConnectError> {
        let token = current_token(opts).await?;
        let mut req = url
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
                    Ok(ServerFrame::Welcome(w)) => return Ok((socket, w)),
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
}
