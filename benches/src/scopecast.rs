//! The system under test: a Scopecast broker, started by the harness (release binary, its own
//! data folder) or already running; its applications registered through the admin API, real
//! tokens from its token endpoint; and its `scopecast.v1` subscriber and publisher clients.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use scopecast_protocol::admin;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::payload::{self, Payload};
use crate::process::Spawned;
use crate::stats::Recorder;
use crate::ws::{self, ConnectOptions, Ws};

/// The subprotocol every scopecast connection offers.
const SUBPROTOCOL: &str = "scopecast.v1";

/// Connections per subscriber application: below the broker's default
/// `max_connections_per_client` (1,000), so an unmodified broker works too.
const CONNECTIONS_PER_APP: usize = 900;

/// The close code of a slow consumer (PROTOCOL.md section 7).
const SLOW_CONSUMER: u16 = 4008;

/// How long a handshake step (welcome, subscribed) may take.
const STEP: Duration = Duration::from_secs(20);

/// Scopes of the harness's applications.
const SUBSCRIBER_SCOPE: &str = "subscribe:bench.> subscribe:fhir.>";
const PUBLISHER_SCOPE: &str = "publish:bench.> publish:fhir.>";

/// Settings the harness gives a broker it starts, unless the environment sets them: no
/// publish rate limit, connection limits above the largest scenario, tokens that outlive a run.
const BROKER_ENV: &[(&str, &str)] = &[
    ("SCOPECAST_LIMITS__PUBLISH_RATE_PER_SEC", "0"),
    ("SCOPECAST_LIMITS__MAX_CONNECTIONS_PER_CLIENT", "100000"),
    ("SCOPECAST_OAUTH__TOKEN_LIFETIME_S", "3600"),
    ("RUST_LOG", "info"),
];

/// A client ID and secret.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    /// The client ID.
    pub(crate) client_id: String,
    /// Its secret.
    pub(crate) secret: String,
}

/// A broker the harness talks to.
pub(crate) struct Scopecast {
    /// `http://ADDR`.
    pub(crate) base: String,
    /// Its socket address.
    pub(crate) addr: SocketAddr,
    admin_token: String,
    http: reqwest::Client,
    /// Set when the harness started it.
    process: Option<Spawned>,
    /// Its data folder when the harness made it; removed when dropped (after the process).
    _data: Option<TempDir>,
    pid: Option<u32>,
    subscriber_tokens: Vec<String>,
    publisher: Option<(Credentials, String)>,
    /// In cluster mode, the other nodes (after `addr`'s): subscribers and publishers are
    /// dealt over every node in turn, as a load balancer would.
    others: Vec<ClusterNode>,
    /// Processes besides the broker's whose CPU and memory count as the system's (the NATS
    /// servers of a cluster).
    extra_pids: Vec<u32>,
    /// Publishers made so far (the next one goes to node `publishers % nodes`).
    publishers: usize,
}

/// Another node of a cluster the harness started.
struct ClusterNode {
    addr: SocketAddr,
    process: Spawned,
    _data: TempDir,
}

/// How to start a cluster of broker nodes ([`Scopecast::start_cluster`]).
#[derive(Debug, Clone)]
pub(crate) struct ClusterSettings {
    /// Broker nodes.
    pub(crate) nodes: usize,
    /// `SCOPECAST_CLUSTER__*` and other settings every node gets (node names are added).
    pub(crate) env: Vec<(String, String)>,
    /// Processes whose usage counts with the brokers' (the NATS servers).
    pub(crate) extra_pids: Vec<u32>,
}

/// Event log of a broker the harness starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogKind {
    /// `--log memory`.
    Memory,
    /// `--log durable`, fsync per batch.
    Durable,
}

impl Scopecast {
    /// Starts `bin serve` on `127.0.0.1:0` with a fresh data folder and `log`.
    ///
    /// # Errors
    /// The broker did not start or its admin credential is unreadable.
    pub(crate) async fn start(bin: &Path, log: LogKind) -> anyhow::Result<Scopecast> {
        Scopecast::start_with_env(bin, log, &[]).await
    }

    /// As [`Scopecast::start`], with these settings (`SCOPECAST_*` variables) besides the
    /// harness's.
    ///
    /// # Errors
    /// As [`Scopecast::start`].
    pub(crate) async fn start_with_env(
        bin: &Path,
        log: LogKind,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Scopecast> {
        let data = tempfile::Builder::new()
            .prefix("scopecast-bench-")
            .tempdir()
            .context("temporary data folder")?;
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--log"])
            .arg(match log {
                LogKind::Memory => "memory",
                LogKind::Durable => "durable",
            })
            .arg("--data-dir")
            .arg(data.path())
            // The harness's own settings; the broker refuses unknown SCOPECAST_ variables.
            .env_remove("SCOPECAST_NATS_SERVER")
            .env_remove("SCOPECAST_BENCH_LOGS");
        for (k, v) in BROKER_ENV {
            if std::env::var_os(k).is_none() {
                cmd.env(k, v);
            }
        }
        cmd.envs(env.iter().copied());
        let (process, addr) = Spawned::start_and_read_addr(cmd, true, Duration::from_secs(30))
            .with_context(|| format!("starting {}", bin.display()))?;
        let token_file = data.path().join("admin.token");
        let admin_token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?
            .trim()
            .to_owned();
        let pid = Some(process.pid());
        let mut s = Scopecast::attach(&format!("http://{addr}"), admin_token, pid).await?;
        s.process = Some(process);
        s._data = Some(data);
        Ok(s)
    }

    /// Starts `settings.nodes` broker nodes of one cluster (`bin serve` on `127.0.0.1:0`,
    /// each with its own data folder and `cluster.node_name`); the first made the admin
    /// credential, the others find it in PostgreSQL.
    ///
    /// # Errors
    /// A node did not start.
    pub(crate) async fn start_cluster(
        bin: &Path,
        settings: &ClusterSettings,
    ) -> anyhow::Result<Scopecast> {
        let spawn = |name: &str| -> anyhow::Result<(Spawned, SocketAddr, TempDir)> {
            let data = tempfile::Builder::new()
                .prefix("scopecast-bench-")
                .tempdir()
                .context("temporary data folder")?;
            let mut cmd = Command::new(bin);
            cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(data.path())
                .env("SCOPECAST_CLUSTER__NODE_NAME", name)
                .env_remove("SCOPECAST_NATS_SERVER")
                .env_remove("SCOPECAST_BENCH_LOGS");
            for (k, v) in &settings.env {
                cmd.env(k, v);
            }
            for (k, v) in BROKER_ENV {
                if std::env::var_os(k).is_none() {
                    cmd.env(k, v);
                }
            }
            let (process, addr) = Spawned::start_and_read_addr(cmd, true, Duration::from_secs(60))
                .with_context(|| format!("starting cluster node {name} of {}", bin.display()))?;
            Ok((process, addr, data))
        };
        let (first, addr, data) = spawn("bench-1")?;
        let token_file = data.path().join("admin.token");
        let admin_token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?
            .trim()
            .to_owned();
        let mut s =
            Scopecast::attach(&format!("http://{addr}"), admin_token, Some(first.pid())).await?;
        s.process = Some(first);
        s._data = Some(data);
        s.extra_pids.clone_from(&settings.extra_pids);
        for i in 2..=settings.nodes {
            let (process, addr, data) = spawn(&format!("bench-{i}"))?;
            s.extra_pids.push(process.pid());
            s.others.push(ClusterNode {
                addr,
                process,
                _data: data,
            });
        }
        Ok(s)
    }

    /// The node subscriber `i` connects to (dealt in turn over the nodes).
    pub(crate) fn subscriber_addr(&self, i: usize) -> SocketAddr {
        let nodes = self.others.len() + 1;
        match i % nodes {
            0 => self.addr,
            k => self.others[k - 1].addr,
        }
    }

    /// A broker that is already running at `url` (`http://HOST:PORT`).
    ///
    /// # Errors
    /// The URL is not `http://` with a socket address, or the broker does not answer.
    pub(crate) async fn attach(
        url: &str,
        admin_token: String,
        pid: Option<u32>,
    ) -> anyhow::Result<Scopecast> {
        let base = url.trim_end_matches('/').to_owned();
        let addr: SocketAddr = base
            .strip_prefix("http://")
            .context("--broker-url must be http://IP:PORT (TLS is not benchmarked)")?
            .parse()
            .context("--broker-url must name an IP address and port")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("HTTP client")?;
        let health = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .with_context(|| format!("GET {base}/healthz"))?;
        if !health.status().is_success() {
            bail!("{base}/healthz answered {}", health.status());
        }
        Ok(Scopecast {
            base,
            addr,
            admin_token,
            http,
            process: None,
            _data: None,
            pid,
            subscriber_tokens: Vec::new(),
            publisher: None,
            others: Vec::new(),
            extra_pids: Vec::new(),
            publishers: 0,
        })
    }

    /// The broker's process id, when known (the first node's, in a cluster).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Every process whose CPU and memory count as this system's: the broker (every node of
    /// a cluster, and the NATS servers under it).
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.pid
            .into_iter()
            .chain(self.extra_pids.iter().copied())
            .collect()
    }

    /// Fails when the broker (any node of it) the harness started has exited.
    ///
    /// # Errors
    /// It exited, with its last log lines.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(p) = &mut self.process {
            p.check_alive().context("the broker")?;
        }
        for (i, n) in self.others.iter_mut().enumerate() {
            n.process
                .check_alive()
                .with_context(|| format!("cluster node {}", i + 2))?;
        }
        Ok(())
    }

    /// Registers an application with `scope` and activates its non-production client ID.
    ///
    /// # Errors
    /// The admin API refused.
    pub(crate) async fn register(&self, name: &str, scope: &str) -> anyhow::Result<Credentials> {
        let created = self
            .admin(
                "/admin/v1/applications",
                &serde_json::to_value(admin::NewApplication {
                    name: name.to_owned(),
                    vendor: "scopecast-bench".to_owned(),
                    description: String::new(),
                    scope: scope.to_owned(),
                })?,
            )
            .await?;
        let created: admin::ApplicationView =
            serde_json::from_value(created).context("the broker's answer is not an application")?;
        let client = created.clients.non_production;
        let creds = Credentials {
            client_id: client.client_id,
            secret: client
                .client_secret
                .context("application without a client_secret")?,
        };
        self.admin(
            &format!("/admin/v1/clients/{}/activate", creds.client_id),
            &serde_json::to_value(admin::Reason {
                reason: "load harness".to_owned(),
            })?,
        )
        .await?;
        Ok(creds)
    }

    /// `POST <path>` on the admin API with `body`; the answer's JSON.
    ///
    /// # Errors
    /// The request failed or was refused.
    pub(crate) async fn admin_post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.admin(path, body).await
    }

    async fn admin(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin_token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST {path}: HTTP {status}: {text}");
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("POST {path}: not JSON"))
    }

    /// An access token for `creds` (client credentials grant).
    ///
    /// # Errors
    /// The token endpoint refused or failed.
    pub(crate) async fn token(&self, creds: &Credentials) -> anyhow::Result<String> {
        token(&self.http, &self.base, creds).await
    }

    /// Makes sure there are tokens for `connections` subscriber connections (one application
    /// per [`CONNECTIONS_PER_APP`]).
    ///
    /// # Errors
    /// Registration or a token request failed.
    pub(crate) async fn prepare_subscribers(&mut self, connections: usize) -> anyhow::Result<()> {
        let apps = connections.div_ceil(CONNECTIONS_PER_APP).max(1);
        while self.subscriber_tokens.len() < apps {
            let n = self.subscriber_tokens.len();
            let creds = self
                .register(&format!("bench subscribers {n}"), SUBSCRIBER_SCOPE)
                .await?;
            let token = self.token(&creds).await?;
            self.subscriber_tokens.push(token);
        }
        Ok(())
    }

    /// The token subscriber connection `i` uses ([`Scopecast::prepare_subscribers`] first).
    pub(crate) fn subscriber_token(&self, i: usize) -> String {
        let n = self.subscriber_tokens.len().max(1);
        self.subscriber_tokens
            .get((i / CONNECTIONS_PER_APP) % n)
            .cloned()
            .unwrap_or_default()
    }

    /// `count` tokens of one new subscriber application, each from its own token request
    /// (so each is new to the broker: its own `jti`), eight requests at a time.
    ///
    /// # Errors
    /// Registration or a token request failed.
    pub(crate) async fn fresh_subscriber_tokens(
        &self,
        count: usize,
    ) -> anyhow::Result<Vec<String>> {
        use futures_util::StreamExt;
        let creds = self
            .register("bench fresh tokens", SUBSCRIBER_SCOPE)
            .await?;
        let creds = &creds;
        futures_util::stream::iter(0..count)
            .map(|_| self.token(creds))
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// Every subscriber token made so far.
    pub(crate) fn subscriber_tokens(&self) -> &[String] {
        &self.subscriber_tokens
    }

    /// The node the next publisher connects to (dealt in turn over the nodes).
    pub(crate) fn next_publisher_addr(&mut self) -> SocketAddr {
        let addr = self.subscriber_addr(self.publishers);
        self.publishers += 1;
        addr
    }

    /// The publisher application's credentials and a token, registered on first use.
    ///
    /// # Errors
    /// Registration or the token request failed.
    pub(crate) async fn publisher(&mut self) -> anyhow::Result<(Credentials, String)> {
        if self.publisher.is_none() {
            let creds = self.register("bench publisher", PUBLISHER_SCOPE).await?;
            let token = self.token(&creds).await?;
            self.publisher = Some((creds, token));
        }
        self.publisher
            .clone()
            .context("publisher registered just above")
    }

    /// A client for the HTTP APIs.
    /// The admin credential (it may also read `/metrics`).
    pub(crate) fn admin_token(&self) -> &str {
        &self.admin_token
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// Asks `base/oauth2/token` for a token by the client credentials grant.
///
/// # Errors
/// The request failed or was refused.
pub(crate) async fn token(
    http: &reqwest::Client,
    base: &str,
    creds: &Credentials,
) -> anyhow::Result<String> {
    let resp = http
        .post(format!("{base}/oauth2/token"))
        .basic_auth(&creds.client_id, Some(&creds.secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .context("POST /oauth2/token")?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("token endpoint: HTTP {status}: {body}");
    }
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("token response without access_token")
}

/// How a session ended.
enum Ended {
    SlowConsumer,
    Error(anyhow::Error),
}

/// Decrements the connected count when a session ends, however it ends.
struct ConnectedGuard<'a>(&'a Recorder);

impl<'a> ConnectedGuard<'a> {
    fn new(rec: &'a Recorder) -> Self {
        rec.connected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ConnectedGuard(rec)
    }
}

impl Drop for ConnectedGuard<'_> {
    fn drop(&mut self) {
        self.0
            .connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where a WebSocket subscriber connects and how it subscribes: the same reading loop serves
/// the broker (token, subscribe frames) and the ceiling server (topics in the path).
#[derive(Debug, Clone)]
pub(crate) struct WsSubscriber {
    /// Server address.
    pub(crate) addr: SocketAddr,
    /// Request path.
    pub(crate) path: String,
    /// Bearer token, for the broker.
    pub(crate) token: Option<String>,
    /// Patterns to subscribe to with `subscribe` frames (broker); empty for the ceiling.
    pub(crate) patterns: Vec<String>,
    /// Source address.
    pub(crate) source: Ipv4Addr,
    /// Gather writes until a flush (for a publisher).
    pub(crate) buffered_writes: bool,
}

impl WsSubscriber {
    /// Runs until aborted: connects, subscribes, counts events into `rec` (histogram shard
    /// `shard`), and reconnects after a close, counting slow-consumer closes and errors.
    pub(crate) async fn run(self, shard: usize, rec: Arc<Recorder>) {
        loop {
            match self.session(shard, &rec).await {
                Ended::SlowConsumer => rec.slow_consumer(),
                Ended::Error(e) => rec.error(format!("subscriber: {e:#}")),
            }
            rec.reconnected();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn session(&self, shard: usize, rec: &Recorder) -> Ended {
        let mut ws = match self.open().await {
            Ok(ws) => ws,
            Err(e) => return Ended::Error(e),
        };
        let _up = ConnectedGuard::new(rec);
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(t)) => {
                    if t.starts_with("{\"type\":\"event\"") {
                        rec.delivered(shard, t.as_bytes());
                    } else if t.starts_with("{\"type\":\"error\"") {
                        rec.error(format!("error frame: {}", t.as_str()));
                    }
                }
                Ok(Message::Close(frame)) => {
                    return match frame {
                        Some(f) if u16::from(f.code) == SLOW_CONSUMER => Ended::SlowConsumer,
                        Some(f) => {
                            Ended::Error(anyhow!("closed {} {}", u16::from(f.code), f.reason))
                        }
                        None => Ended::Error(anyhow!("closed without a code")),
                    };
                }
                Ok(_) => {}
                Err(e) => return Ended::Error(anyhow!("read: {e}")),
            }
        }
        Ended::Error(anyhow!("connection ended"))
    }

    /// Connects, waits for `welcome`, and subscribes to every pattern.
    ///
    /// # Errors
    /// Any step failed or timed out.
    pub(crate) async fn open(&self) -> anyhow::Result<Ws> {
        let opts = ConnectOptions {
            source: Some(self.source),
            bearer: self.token.as_deref(),
            subprotocol: self.token.as_ref().map(|_| SUBPROTOCOL),
            buffered_writes: self.buffered_writes,
            ..ConnectOptions::default()
        };
        let mut ws = tokio::time::timeout(STEP, ws::connect(self.addr, &self.path, &opts))
            .await
            .context("connect timed out")??;
        let welcome = next_text(&mut ws).await.context("waiting for welcome")?;
        if !welcome.starts_with("{\"type\":\"welcome\"") {
            bail!("expected welcome, got {}", clip(&welcome));
        }
        for (i, p) in self.patterns.iter().enumerate() {
            let frame = json!({"type": "subscribe", "id": format!("s{i}"), "topic": p});
            ws.feed(Message::text(frame.to_string())).await?;
        }
        ws.flush().await?;
        let mut pending = self.patterns.len();
        while pending > 0 {
            let t = next_text(&mut ws).await.context("waiting for subscribed")?;
            if t.starts_with("{\"type\":\"subscribed\"") {
                pending -= 1;
            } else if t.starts_with("{\"type\":\"error\"") {
                bail!("subscribe refused: {}", clip(&t));
            }
        }
        Ok(ws)
    }
}

/// The next text frame, within [`STEP`].
async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("timed out")?
            .context("connection ended")??;
        match msg {
            Message::Text(t) => return Ok(t.as_str().to_owned()),
            Message::Close(f) => bail!("closed: {f:?}"),
            _ => {}
        }
    }
}

fn clip(s: &str) -> String {
    s.chars().take(300).collect()
}

/// A `scopecast.v1` publisher: `publish` frames over one WebSocket, at most `window` of them
/// waiting for `published`.
pub(crate) struct WsPublisher {
    sink: SplitSink<Ws, Message>,
    window: Arc<Semaphore>,
    size: u32,
    reader: JoinHandle<()>,
}

impl WsPublisher {
    /// Connects with `token` and waits for `welcome`; acknowledgements go to `acks`.
    ///
    /// # Errors
    /// The connection failed.
    pub(crate) async fn connect(
        addr: SocketAddr,
        token: &str,
        window: u32,
        acks: Arc<Recorder>,
    ) -> anyhow::Result<WsPublisher> {
        let sub = WsSubscriber {
            addr,
            path: "/v1/stream".to_owned(),
            token: Some(token.to_owned()),
            patterns: Vec::new(),
            source: Ipv4Addr::LOCALHOST,
            buffered_writes: true,
        };
        let ws = sub.open().await?;
        let (sink, stream) = ws.split();
        let permits = Arc::new(Semaphore::new(window as usize));
        let reader = tokio::spawn(read_acks(stream, Arc::clone(&permits), acks));
        Ok(WsPublisher {
            sink,
            window: permits,
            size: window,
            reader,
        })
    }

    /// Queues one publish (waits for room in the window); [`WsPublisher::flush`] sends.
    ///
    /// # Errors
    /// The connection is gone.
    pub(crate) async fn feed(
        &mut self,
        payload: &Payload,
        topic: &str,
        t_ns: u64,
    ) -> anyhow::Result<()> {
        match self.window.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::Closed) => {
                anyhow::bail!("the publisher's connection ended")
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                // The window is full: the frames fed but not yet flushed must go out first,
                // or their acknowledgements (the permits awaited here) never come.
                self.sink.flush().await?;
                self.window
                    .acquire()
                    .await
                    .context("the publisher's connection ended")?
                    .forget();
            }
        }
        let frame = payload::publish_frame(payload, topic, t_ns);
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

    /// Waits until every publish is acknowledged, at most `limit`.
    pub(crate) async fn drain(&mut self, limit: Duration) {
        let _ = self.flush().await;
        if let Ok(Ok(all)) = tokio::time::timeout(limit, self.window.acquire_many(self.size)).await
        {
            drop(all);
        }
    }
}

impl Drop for WsPublisher {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_acks(mut stream: SplitStream<Ws>, window: Arc<Semaphore>, acks: Arc<Recorder>) {
    let clock = acks.clock();
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(Message::Text(t)) => {
                if let Some(sent) = payload::acked_at(t.as_bytes()) {
                    acks.completed(0, clock.now_ns().saturating_sub(sent));
                    window.add_permits(1);
                } else if t.starts_with("{\"type\":\"error\"") {
                    acks.error(format!("publish refused: {}", clip(t.as_str())));
                    window.add_permits(1);
                }
            }
            Ok(Message::Close(f)) => {
                acks.error(format!("publisher closed: {f:?}"));
                break;
            }
            Ok(_) => {}
            Err(e) => {
                acks.error(format!("publisher read: {e}"));
                break;
            }
        }
    }
    // Wake a publisher waiting for room: its next send fails instead of hanging.
    window.close();
}

/// The `scopecast` binary next to this one (both built into the same target folder), if any.
pub(crate) fn sibling_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.with_file_name("scopecast");
    bin.is_file().then_some(bin)
}
