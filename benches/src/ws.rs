//! WebSocket client connections, each bound to a chosen 127.0.0.x source address before it
//! connects: one source address has about 28,000 ephemeral ports, so tens of thousands of
//! sockets to one listener need several.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::{Context, anyhow};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A client WebSocket over plain TCP.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// The source address for client number `i` when clients spread over `count` addresses
/// (127.0.0.1, 127.0.0.2, ...).
pub(crate) fn source_ip(i: usize, count: u8) -> Ipv4Addr {
    let n = u8::try_from(i % usize::from(count.max(1))).unwrap_or(0);
    Ipv4Addr::new(127, 0, 0, 1 + n)
}

/// Small buffers: a subscriber reads frames of a few KiB, and there may be 15,000 of them
/// (tungstenite's default read buffer is 128 KiB per socket).
pub(crate) fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
}

/// Options of one connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectOptions<'a> {
    /// Source address to bind before connecting.
    pub(crate) source: Option<Ipv4Addr>,
    /// `Authorization: Bearer` token.
    pub(crate) bearer: Option<&'a str>,
    /// `Sec-WebSocket-Protocol`.
    pub(crate) subprotocol: Option<&'a str>,
    /// Close with a reset instead of a handshake when dropped (connect storms: leaves no
    /// TIME_WAIT socket behind on the client side).
    pub(crate) reset_on_drop: bool,
    /// Gather writes until a flush (publishers); subscribers write at once.
    pub(crate) buffered_writes: bool,
}

/// Connects to `ws://addr{path}`.
///
/// # Errors
/// The socket, TCP connect or WebSocket upgrade failed; a refused upgrade names its status.
pub(crate) async fn connect(
    addr: SocketAddr,
    path: &str,
    opts: &ConnectOptions<'_>,
) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4().context("socket")?;
    if let Some(ip) = opts.source {
        socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
        socket
            .bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))
            .with_context(|| format!("bind {ip}"))?;
    }
    if opts.reset_on_drop {
        socket.set_zero_linger().context("SO_LINGER")?;
    }
    socket.set_nodelay(true).context("TCP_NODELAY")?;
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("TCP connect to {addr}"))?;
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .context("WebSocket request")?;
    if let Some(token) = opts.bearer {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).context("token header")?,
        );
    }
    if let Some(proto) = opts.subprotocol {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(proto).context("subprotocol header")?,
        );
    }
    let mut config = client_config();
    if opts.buffered_writes {
        config = config.write_buffer_size(128 * 1024);
    }
    match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| {
                    String::from_utf8_lossy(b)
                        .chars()
                        .take(200)
                        .collect::<String>()
                })
                .unwrap_or_default();
            Err(anyhow!("upgrade refused: HTTP {} {body}", resp.status()))
        }
        Err(e) => Err(anyhow!("WebSocket upgrade: {e}")),
    }
}
