//! The peer baseline: nats-server (the Debian package `nats-server`, found on `PATH`), started
//! on loopback with its WebSocket listener, driven by async-nats over WebSocket, with the same
//! subjects (NATS wildcards are spelled as Scopecast's), payloads and subscriber counts.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::Event;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::payload::Payload;
use crate::process::{self, Spawned};
use crate::stats::Recorder;
use crate::ws::{self, ConnectOptions, Ws};

/// A nats-server the harness started.
pub(crate) struct NatsServer {
    process: Spawned,
    /// Its WebSocket listener.
    pub(crate) ws_addr: SocketAddr,
    /// `nats-server --version`.
    pub(crate) version: String,
    /// Holds the configuration file; removed after the process (field order).
    _dir: TempDir,
}

impl NatsServer {
    /// The `nats-server` executable on `PATH`, if installed.
    pub(crate) fn find() -> Option<PathBuf> {
        process::find_on_path("nats-server")
    }

    /// Starts `bin` on loopback with a WebSocket listener (no TLS) and waits for it.
    ///
    /// # Errors
    /// It did not start or listen.
    pub(crate) async fn start(bin: &std::path::Path) -> anyhow::Result<NatsServer> {
        let dir = tempfile::Builder::new()
            .prefix("scopecast-bench-nats-")
            .tempdir()
            .context("temporary folder")?;
        let client_port = process::free_port()?;
        let ws_port = process::free_port()?;
        // Limits as generous as the broker's in the harness: up to 100,000 connections, 8 MiB
        // of pending writes per subscriber before it counts as slow (the broker's outbound
        // queue), payloads up to 1 MiB; server PINGs every 10 minutes (the harness's raw
        // publisher does not answer them).
        let config = format!(
            "listen: \"127.0.0.1:{client_port}\"\n\
             max_connections: 100000\n\
             max_payload: 1048576\n\
             max_pending: 8388608\n\
             ping_interval: \"10m\"\n\
             websocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n"
        );
        let file = dir.path().join("nats.conf");
        std::fs::write(&file, config).context("writing nats.conf")?;
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&file);
        let mut process = Spawned::start(cmd)?;
        let ws_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ws_port));
        if let Err(e) = process::wait_listening(ws_addr, Duration::from_secs(10)).await {
            process.check_alive().context("nats-server")?;
            return Err(e);
        }
        Ok(NatsServer {
            process,
            ws_addr,
            version,
            _dir: dir,
        })
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `ws://ADDR`.
    pub(crate) fn url(&self) -> String {
        format!("ws://{}", self.ws_addr)
    }
}

/// Connects an async-nats client over WebSocket; server events count into `rec`.
///
/// # Errors
/// The connection failed.
pub(crate) async fn connect(
    url: &str,
    rec: Option<Arc<Recorder>>,
) -> anyhow::Result<async_nats::Client> {
    let opts = async_nats::ConnectOptions::new()
        .read_buffer_capacity(16 * 1024)
        .subscription_capacity(16 * 1024)
        .event_callback(move |event| {
            let rec = rec.clone();
            async move {
                let Some(rec) = rec else {
                    return;
                };
                match event {
                    Event::SlowConsumer(_) => rec.slow_consumer(),
                    Event::Disconnected => rec.reconnected(),
                    Event::ServerError(e) => rec.error(format!("nats server error: {e}")),
                    Event::ClientError(e) => rec.error(format!("nats client error: {e}")),
                    _ => {}
                }
            }
        });
    opts.connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Runs until aborted: one client subscribed to `subjects`, counting messages into `rec`.
pub(crate) async fn subscriber(
    url: String,
    subjects: Vec<String>,
    shard: usize,
    rec: Arc<Recorder>,
) {
    loop {
        if let Err(e) = session(&url, &subjects, shard, &rec).await {
            rec.error(format!("nats subscriber: {e:#}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn session(
    url: &str,
    subjects: &[String],
    shard: usize,
    rec: &Arc<Recorder>,
) -> anyhow::Result<()> {
    let client = connect(url, Some(Arc::clone(rec))).await?;
    let mut subs = Vec::with_capacity(subjects.len());
    for s in subjects {
        subs.push(client.subscribe(s.clone()).await.context("subscribe")?);
    }
    client.flush().await.context("flush")?;
    rec.connected
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut all = futures_util::stream::select_all(subs);
    while let Some(msg) = all.next().await {
        rec.delivered(shard, &msg.payload);
    }
    rec.connected
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    anyhow::bail!("subscription ended")
}

/// A NATS publisher: core `PUB`s written straight over a WebSocket to nats-server.
///
/// Not async-nats: its WebSocket transport leaves Nagle's algorithm on (no `TCP_NODELAY`), so
/// a publisher's small writes wait for the peer's delayed ACK, tens of milliseconds on
/// loopback, which would be measured as nats-server's latency. The subscribers use async-nats
/// (they only read).
pub(crate) struct NatsPublisher {
    sink: SplitSink<Ws, Message>,
    /// `PONG`s from the server, for [`NatsPublisher::drain`].
    pongs: mpsc::Receiver<()>,
    reader: JoinHandle<()>,
    buf: Vec<u8>,
}

impl NatsPublisher {
    /// Connects to the WebSocket listener at `addr`, reads `INFO`, sends `CONNECT` and waits
    /// for the `PONG` that follows it.
    ///
    /// # Errors
    /// The connection or the handshake failed.
    pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<NatsPublisher> {
        let opts = ConnectOptions {
            buffered_writes: true,
            ..ConnectOptions::default()
        };
        let ws = ws::connect(addr, "/", &opts).await?;
        let (mut sink, mut stream) = ws.split();
        let info = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .context("waiting for INFO")?
            .context("connection ended before INFO")??;
        if !info.into_data().starts_with(b"INFO") {
            bail!("nats-server did not start with INFO");
        }
        let connect = "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"protocol\":1,\"name\":\"scopecast-bench\",\"lang\":\"rust\",\"version\":\"0\"}\r\nPING\r\n";
        sink.send(Message::binary(connect.as_bytes().to_vec()))
            .await?;
        let (tx, pongs) = mpsc::channel(64);
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let data = msg.into_data();
                for _ in 0..count(&data, b"PONG") {
                    let _ = tx.try_send(());
                }
            }
        });
        let mut publisher = NatsPublisher {
            sink,
            pongs,
            reader,
            buf: Vec::new(),
        };
        tokio::time::timeout(Duration::from_secs(10), publisher.pongs.recv())
            .await
            .context("waiting for the PONG after CONNECT")?
            .context("connection ended before PONG")?;
        Ok(publisher)
    }

    /// Queues one `PUB`.
    ///
    /// # Errors
    /// The connection is gone.
    pub(crate) async fn feed(
        &mut self,
        payload: &Payload,
        subject: &str,
        t_ns: u64,
    ) -> anyhow::Result<()> {
        let data = payload.data(t_ns);
        self.buf.clear();
        self.buf.extend_from_slice(b"PUB ");
        self.buf.extend_from_slice(subject.as_bytes());
        self.buf.push(b' ');
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(data.len()).as_bytes());
        self.buf.extend_from_slice(b"\r\n");
        self.buf.extend_from_slice(data.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
        self.sink
            .feed(Message::binary(self.buf.clone()))
            .await
            .context("nats publish")
    }

    /// Writes what is queued.
    ///
    /// # Errors
    /// The connection is gone.
    pub(crate) async fn flush(&mut self) -> anyhow::Result<()> {
        self.sink.flush().await.context("nats publish")
    }

    /// Waits until the server has read everything published (a `PING` round trip), at most
    /// `limit`.
    pub(crate) async fn drain(&mut self, limit: Duration) {
        while self.pongs.try_recv().is_ok() {}
        if self
            .sink
            .send(Message::binary(b"PING\r\n".to_vec()))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(limit, self.pongs.recv()).await;
        }
    }
}

impl Drop for NatsPublisher {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Occurrences of `needle` in `hay`.
fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}
