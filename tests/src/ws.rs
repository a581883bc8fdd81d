//! A raw `scopecast.v1` WebSocket client for tests: JSON frames in, JSON frames out, close
//! codes observed, every wait bounded.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{TestBroker, WAIT};

/// An open test connection.
pub struct Ws {
    /// The socket.
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// A refused upgrade: its status and JSON body.
#[derive(Debug)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: tungstenite::http::HeaderMap,
    /// Body, as JSON when it is.
    pub body: Value,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code and reason.
    Close(u16, String),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl Ws {
    /// Opens `/v1/stream` with the subprotocol, with `token` in the Authorization header.
    ///
    /// # Errors
    /// The refusal when the upgrade is refused.
    pub async fn try_connect(
        broker: &TestBroker,
        token: Option<&str>,
        path: &str,
    ) -> Result<Ws, Refused> {
        let mut req = broker.ws_url(path).into_client_request().expect("request");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("scopecast.v1"),
        );
        if let Some(t) = token {
            req.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).expect("header"),
            );
        }
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timed out")
        {
            Ok((stream, resp)) => {
                assert_eq!(
                    resp.headers()
                        .get("sec-websocket-protocol")
                        .and_then(|v| v.to_str().ok()),
                    Some("scopecast.v1"),
                    "the server selects scopecast.v1"
                );
                Ok(Ws { stream })
            }
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err(Refused {
                    status,
                    headers,
                    body,
                })
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Opens a connection with `token` and reads its `welcome`.
    pub async fn connect(broker: &TestBroker, token: &str) -> (Ws, Value) {
        let mut ws = Ws::try_connect(broker, Some(token), "/v1/stream")
            .await
            .expect("upgrade accepted");
        let welcome = ws.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (ws, welcome)
    }

    /// Sends one JSON frame.
    pub async fn send(&mut self, frame: Value) {
        self.stream
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.expect("send");
    }

    /// The next JSON frame (pings skipped); panics on a close or after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("no frame in time");
            match msg {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("JSON frame"),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    /// The next frame, or `None` when none comes within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Some(serde_json::from_str(&t).expect("JSON frame"));
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    /// Frames until one of `type`, returning the ones skipped and that one.
    pub async fn recv_type(&mut self, kind: &str) -> (Vec<Value>, Value) {
        let mut skipped = Vec::new();
        loop {
            let f = self.recv().await;
            if f["type"] == kind {
                return (skipped, f);
            }
            skipped.push(f);
        }
    }

    /// Reads until the connection ends, returning the frames read and how it ended.
    pub async fn until_closed(&mut self, wait: Duration) -> (Vec<Value>, Ended) {
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("no close in time")
            {
                Some(Ok(Message::Text(t))) => {
                    frames.push(serde_json::from_str(&t).expect("JSON frame"))
                }
                Some(Ok(Message::Close(Some(c)))) => {
                    return (
                        frames,
                        Ended::Close(u16::from(c.code), c.reason.to_string()),
                    );
                }
                Some(Ok(Message::Close(None))) => {
                    return (frames, Ended::Close(1005, String::new()));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return (frames, Ended::Dropped),
            }
        }
    }

    /// Subscribes and returns the answer (`subscribed` or `error`).
    pub async fn subscribe(&mut self, id: &str, pattern: &str) -> Value {
        self.send(json!({"type": "subscribe", "id": id, "topic": pattern}))
            .await;
        let (_, f) = self.recv_answer(id).await;
        f
    }

    /// Reads frames until the answer to request `id`; returns the events skipped too.
    pub async fn recv_answer(&mut self, id: &str) -> (Vec<Value>, Value) {
        let mut skipped = Vec::new();
        loop {
            let f = self.recv().await;
            if f["id"] == id && f["type"] != "event" {
                return (skipped, f);
            }
            skipped.push(f);
        }
    }

    /// Publishes and returns the answer (`published` or `error`).
    pub async fn publish(&mut self, id: &str, topic: &str, data: Value) -> Value {
        self.send(json!({"type": "publish", "id": id, "topic": topic, "data": data}))
            .await;
        self.recv_answer(id).await.1
    }

    /// Sends a close frame.
    pub async fn close(&mut self) {
        let _ = self
            .stream
            .close(Some(tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }

    /// The TCP connection under the WebSocket (plain `ws://` only), to drop it without a
    /// close frame.
    ///
    /// # Panics
    /// On a TLS connection.
    pub fn into_tcp(self) -> TcpStream {
        match self.stream.into_inner() {
            MaybeTlsStream::Plain(tcp) => tcp,
            _ => panic!("into_tcp needs a plain ws:// connection"),
        }
    }
}
