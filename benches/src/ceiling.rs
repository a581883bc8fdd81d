//! The ceiling: the least a WebSocket fan-out server can do. It accepts subscriber sockets
//! (`/sub?topics=a,b`, the concrete topics they want, no auth), and writes every text frame
//! that arrives on a publisher socket (`/pub`) as it is, one shared buffer, to the sockets of
//! its topic. No auth, no parsing but the topic, no storage, no patterns. A subscriber whose
//! queue fills is closed with 4008, as the broker does.
//!
//! It runs in its own process (`scopecast-bench ceiling-server`), so its CPU and memory are
//! measured as the broker's are.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::process::Spawned;

/// Frames queued per subscriber before it counts as slow (the broker's 8 MiB at 2 KiB frames).
const QUEUE_FRAMES: usize = 4096;

/// A subscriber as the hub sees it.
#[derive(Clone)]
struct Sub {
    /// Its queue.
    tx: mpsc::Sender<Message>,
    /// Told when its queue overflowed: the connection closes with 4008.
    kick: Arc<Notify>,
}

type Subscribers = HashMap<String, Vec<Sub>>;

/// Serves until the process ends.
///
/// # Errors
/// The listener failed.
pub(crate) async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let hub: Arc<RwLock<Subscribers>> = Arc::default();
    loop {
        let (stream, _) = listener.accept().await.context("accept")?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, Arc::clone(&hub)));
    }
}

// The handshake callback's error type is tungstenite's HTTP response, large by its nature.
#[expect(
    clippy::result_large_err,
    reason = "tungstenite's Callback fixes the error type"
)]
async fn connection(stream: TcpStream, hub: Arc<RwLock<Subscribers>>) {
    let mut path = String::new();
    let callback = |req: &Request, resp: Response| {
        path = req.uri().to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(WebSocketConfig::default().read_buffer_size(16 * 1024)),
    )
    .await
    else {
        return;
    };
    if path.starts_with("/pub") {
        publisher(ws, &hub).await;
    } else {
        let topics: Vec<String> = path
            .split_once("topics=")
            .map(|(_, t)| {
                t.split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        subscriber(ws, topics, &hub).await;
    }
}

async fn publisher(
    mut ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    hub: &RwLock<Subscribers>,
) {
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else {
            continue;
        };
        let Some(topic) = topic_of(text.as_str()) else {
            continue;
        };
        let frame = Message::Text(text.clone());
        let mut slow = Vec::new();
        {
            let subs = match hub.read() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some(list) = subs.get(topic) {
                for sub in list {
                    // A clone shares the frame's bytes.
                    match sub.tx.try_send(frame.clone()) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            sub.kick.notify_one();
                            slow.push(sub.tx.clone());
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => slow.push(sub.tx.clone()),
                    }
                }
            }
        }
        if !slow.is_empty() {
            let mut subs = match hub.write() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            for list in subs.values_mut() {
                list.retain(|sub| !slow.iter().any(|s| s.same_channel(&sub.tx)));
            }
        }
    }
}

async fn subscriber(
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    topics: Vec<String>,
    hub: &RwLock<Subscribers>,
) {
    let (tx, mut rx) = mpsc::channel(QUEUE_FRAMES);
    let kick = Arc::new(Notify::new());
    // Held until the connection ends, so the queue stays open even with no topic (an idle
    // connection) or after the hub let go of it.
    let sub = Sub {
        tx,
        kick: Arc::clone(&kick),
    };
    {
        let mut subs = match hub.write() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        for t in &topics {
            subs.entry(t.clone()).or_default().push(sub.clone());
        }
    }
    let (mut sink, mut stream) = ws.split();
    if sink
        .send(Message::text("{\"type\":\"welcome\"}"))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            () = kick.notified() => {
                let close = CloseFrame { code: CloseCode::from(4008), reason: "slow_consumer".into() };
                let _ = sink.send(Message::Close(Some(close))).await;
                break;
            }
            msg = rx.recv() => {
                let Some(msg) = msg else {
                    break;
                };
                if sink.feed(msg).await.is_err() {
                    break;
                }
                // Write what else is queued in the same flush.
                let mut ok = true;
                while let Ok(more) = rx.try_recv() {
                    if sink.feed(more).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                if !ok || sink.flush().await.is_err() {
                    break;
                }
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let mut subs = match hub.write() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    };
    for list in subs.values_mut() {
        list.retain(|other| !other.tx.same_channel(&sub.tx));
    }
}

/// The `topic` member of an event frame, read without decoding it.
fn topic_of(frame: &str) -> Option<&str> {
    let (_, rest) = frame.split_once("\"topic\":\"")?;
    rest.split('"').next()
}

/// A ceiling server in a child process.
pub(crate) struct Ceiling {
    process: Spawned,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
}

impl Ceiling {
    /// Starts `scopecast-bench ceiling-server` on `127.0.0.1:0`.
    ///
    /// # Errors
    /// It did not start.
    pub(crate) fn start() -> anyhow::Result<Ceiling> {
        let exe = std::env::current_exe().context("the harness's own path")?;
        let mut cmd = Command::new(exe);
        cmd.args(["ceiling-server", "--listen", "127.0.0.1:0"]);
        let (process, addr) = Spawned::start_and_read_addr(cmd, false, Duration::from_secs(10))?;
        Ok(Ceiling { process, addr })
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// The harness's side of a ceiling publisher: ready-made event frames over one WebSocket.
pub(crate) struct CeilingPublisher {
    sink: futures_util::stream::SplitSink<crate::ws::Ws, Message>,
}

impl CeilingPublisher {
    /// Connects to `/pub`.
    ///
    /// # Errors
    /// The connection failed.
    pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<CeilingPublisher> {
        let opts = crate::ws::ConnectOptions {
            buffered_writes: true,
            ..crate::ws::ConnectOptions::default()
        };
        let ws = crate::ws::connect(addr, "/pub", &opts).await?;
        let (sink, _stream) = ws.split();
        Ok(CeilingPublisher { sink })
    }

    /// Queues one event frame.
    ///
    /// # Errors
    /// The connection is gone.
    pub(crate) async fn feed(
        &mut self,
        payload: &crate::payload::Payload,
        topic: &str,
        t_ns: u64,
    ) -> anyhow::Result<()> {
        let frame = crate::payload::event_frame(payload, topic, t_ns);
        self.sink.feed(Message::text(frame)).await?;
        Ok(())
    }

    /// Writes what is queued.
    ///
    /// # Errors
    /// The connection is gone.
    pub(crate) async fn flush(&mut self) -> anyhow::Result<()> {
        self.sink.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_is_read_from_an_event_frame() {
        let frame = r#"{"type":"event","seq":1,"topic":"bench.t.7","id":"x","data":{"t":1}}"#;
        assert_eq!(topic_of(frame), Some("bench.t.7"));
        assert_eq!(topic_of("{}"), None);
    }
}
