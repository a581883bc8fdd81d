//! A byte-level WebSocket client (RFC 6455 section 5) for hostile-input tests: it writes frames
//! that no well-behaved library would (unmasked, RSV bits, oversized control frames, lying
//! lengths, stray continuations) and reads what the broker answers, every wait bounded.
//!
//! [`http_exchange`] does the same for plain HTTP: a request written byte for byte, as no HTTP
//! library would send it (an unencoded `>` in the URL, as curl sends it).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TestBroker;
use crate::ws::Ended;

/// WebSocket opcodes (RFC 6455 section 5.2).
pub mod op {
    /// Continuation frame.
    pub const CONTINUATION: u8 = 0x0;
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Binary frame.
    pub const BINARY: u8 = 0x2;
    /// A reserved non-control opcode.
    pub const RESERVED: u8 = 0x3;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping frame.
    pub const PING: u8 = 0x9;
}

/// One frame to write. `Default` is a final, masked, empty text frame.
#[derive(Debug, Clone)]
pub struct RawFrame {
    /// FIN bit.
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits.
    pub rsv: u8,
    /// Opcode (see [`op`]).
    pub opcode: u8,
    /// Whether to mask (clients must, RFC 6455 section 5.3).
    pub mask: bool,
    /// The payload.
    pub payload: Vec<u8>,
    /// A payload length to declare instead of the real one (the payload is then not sent).
    pub declared_len: Option<u64>,
}

impl Default for RawFrame {
    fn default() -> Self {
        RawFrame {
            fin: true,
            rsv: 0,
            opcode: op::TEXT,
            mask: true,
            payload: Vec::new(),
            declared_len: None,
        }
    }
}

impl RawFrame {
    /// A final masked text frame carrying `text`.
    pub fn text(text: &str) -> RawFrame {
        RawFrame {
            payload: text.as_bytes().to_vec(),
            ..RawFrame::default()
        }
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push(u8::from(self.fin) << 7 | (self.rsv & 7) << 4 | (self.opcode & 0xf));
        let len = self.declared_len.unwrap_or(self.payload.len() as u64);
        let mask_bit = u8::from(self.mask) << 7;
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= u64::from(u16::MAX) {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        let key = [0x37, 0xfa, 0x21, 0x3d];
        if self.mask {
            out.extend_from_slice(&key);
        }
        if self.declared_len.is_none() {
            out.extend(
                self.payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| if self.mask { b ^ key[i % 4] } else { *b }),
            );
        }
        out
    }
}

/// An HTTP answer read off a raw socket: for requests no HTTP library would send as they are
/// (an unencoded `>` in the URL).
#[derive(Debug)]
pub struct RawAnswer {
    /// Status of the first response.
    pub status: u16,
    /// Head of the first response (status line and headers), lower-cased.
    pub head: String,
    /// Everything after the first head: its body, then any later responses.
    pub body: String,
}

impl RawAnswer {
    /// The body as JSON, or `Null`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Writes `request` byte for byte on a new connection and reads until the broker closes it
/// (so send `Connection: close`) or [`crate::WAIT`] ends.
///
/// # Panics
/// When the broker cannot be reached or answers no HTTP head.
pub async fn http_exchange(broker: &TestBroker, request: &str) -> RawAnswer {
    let mut tcp = TcpStream::connect(broker.addr()).await.expect("connect");
    tcp.write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(crate::WAIT, tcp.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    let head = head.to_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    RawAnswer {
        status,
        head,
        body: body.to_owned(),
    }
}

/// A raw connection after a successful upgrade.
pub struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// The answer to an upgrade request: status, the response head, and the connection if it was
/// upgraded (status 101).
pub struct Upgrade {
    /// HTTP status.
    pub status: u16,
    /// The response head (status line and headers), lower-cased.
    pub head: String,
    /// The response body read so far (for refusals).
    pub body: String,
    /// The upgraded connection.
    pub ws: Option<RawWs>,
}

impl RawWs {
    /// Sends an upgrade request for `/v1/stream` with `token` (if any) and `extra` header lines
    /// (`"Name: value"`), and reads the response head.
    pub async fn upgrade(broker: &TestBroker, token: Option<&str>, extra: &[&str]) -> Upgrade {
        let mut tcp = TcpStream::connect(broker.addr()).await.expect("connect");
        let mut req = format!(
            "GET /v1/stream HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: scopecast.v1\r\n",
            broker.addr()
        );
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for line in extra {
            req.push_str(line);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await.expect("write request");
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + crate::WAIT;
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
                .await
                .expect("a response head in time")
                .expect("read");
            assert!(n > 0, "closed before a response head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status code");
        let rest = buf[end..].to_vec();
        if status != 101 {
            // The body of a refusal: read what comes within a short while.
            let mut body = rest;
            let mut chunk = [0u8; 4096];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut chunk)).await
            {
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            return Upgrade {
                status,
                head,
                body: String::from_utf8_lossy(&body).into_owned(),
                ws: None,
            };
        }
        Upgrade {
            status,
            head,
            body: String::new(),
            ws: Some(RawWs { tcp, buf: rest }),
        }
    }

    /// Upgrades with `token` and reads the `welcome` frame.
    pub async fn connect(broker: &TestBroker, token: &str) -> RawWs {
        let up = RawWs::upgrade(broker, Some(token), &[]).await;
        assert_eq!(up.status, 101, "{}", up.head);
        let mut ws = up.ws.expect("upgraded");
        let (opcode, payload) = ws.read_frame(crate::WAIT).await.expect("welcome");
        assert_eq!(opcode, op::TEXT);
        assert!(
            String::from_utf8_lossy(&payload).contains("\"welcome\""),
            "{}",
            String::from_utf8_lossy(&payload)
        );
        ws
    }

    /// Writes raw bytes; false when the broker has closed the connection.
    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        self.tcp.write_all(bytes).await.is_ok()
    }

    /// Writes one frame; false when the broker has closed the connection.
    pub async fn send(&mut self, frame: &RawFrame) -> bool {
        self.write(&frame.encode()).await
    }

    /// Reads one server frame (opcode, payload) within `wait`; `None` when the connection ends
    /// or nothing comes.
    pub async fn read_frame(&mut self, wait: Duration) -> Option<(u8, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Reads until a close frame or the end of the connection; the text frames read on the way
    /// are returned too.
    pub async fn until_closed(&mut self, wait: Duration) -> (Vec<String>, Ended) {
        self.read_until(wait, false).await
    }

    /// Reads until the first text frame (returned, with `None`) or the end of the connection.
    pub async fn first_text_or_end(&mut self, wait: Duration) -> (Vec<String>, Option<Ended>) {
        let (texts, ended) = self.read_until(wait, true).await;
        if texts.is_empty() {
            (texts, Some(ended))
        } else {
            (texts, None)
        }
    }

    async fn read_until(&mut self, wait: Duration, first_text: bool) -> (Vec<String>, Ended) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut texts = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Some((op::CLOSE, payload)) if payload.len() >= 2 => {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    let reason = String::from_utf8_lossy(&payload[2..]).into_owned();
                    return (texts, Ended::Close(code, reason));
                }
                Some((op::CLOSE, _)) => return (texts, Ended::Close(1005, String::new())),
                Some((op::TEXT, payload)) => {
                    texts.push(String::from_utf8_lossy(&payload).into_owned());
                    if first_text {
                        return (texts, Ended::Dropped);
                    }
                }
                Some(_) => continue,
                None => return (texts, Ended::Dropped),
            }
        }
    }
}

/// Parses one unmasked server frame from the front of `buf`: ((opcode, payload), bytes used).
fn parse_server_frame(buf: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0xf;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    if buf[1] & 0x80 != 0 {
        at += 4;
    }
    let end = at + usize::try_from(len).ok()?;
    if buf.len() < end {
        return None;
    }
    Some(((opcode, buf[at..end].to_vec()), end))
}
