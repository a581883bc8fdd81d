//! (e) Idle connections: the server's RSS per idle authenticated connection at several levels
//! (1k, 5k, 15k). The connections come from child processes of the harness
//! (`scopecast-bench idle-child`, at most `per_process` each, each from its own 127.0.0.x
//! source address), so no process holds more sockets than its open-file limit allows.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::report::IdleLevel;
use crate::scenario::Params;
use crate::stats::{self, ProcSample, Recorder};
use crate::system::{System, SystemKind};

/// Environment variable that hands the tokens to a child (never on its command line).
const TOKENS_ENV: &str = "SCOPECAST_BENCH_TOKENS";

/// How long the server gets to settle before its RSS is read.
const SETTLE: Duration = Duration::from_secs(2);

/// A child holding connections, killed when dropped.
struct Holder {
    child: Child,
    /// Closing it tells the child to let go.
    _stdin: Option<ChildStdin>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds connections level by level and reads the server's RSS at each.
///
/// # Errors
/// A child failed to start, or the server has no known process to measure.
pub(crate) async fn measure(
    system: &mut System,
    params: &Params,
) -> anyhow::Result<Vec<IdleLevel>> {
    let mut levels = params.connections.clone();
    levels.sort_unstable();
    let most = levels.last().copied().unwrap_or(0);
    let pid = system
        .pid()
        .context("the server's process id is unknown (pass --broker-pid with --broker-url)")?;
    // Before the token requests: their argon2 work areas are freed, but not at once.
    tokio::time::sleep(SETTLE).await;
    let base = ProcSample::read(pid)
        .context("reading the server's RSS")?
        .rss_bytes;
    system.prepare(most).await?;
    let (kind, addr, tokens) = match &*system {
        System::Scopecast(s) => (
            SystemKind::Scopecast,
            s.addr,
            s.subscriber_tokens().to_vec(),
        ),
        System::Nats(n) => (SystemKind::Nats, n.ws_addr, Vec::new()),
        System::Ceiling(c) => (SystemKind::Ceiling, c.addr, Vec::new()),
        System::JetStream(_) => bail!("jetstream is a baseline of the cluster scenario only"),
    };
    let exe = std::env::current_exe().context("the harness's own path")?;
    let per_process = params.per_process.max(1);
    let mut holders: Vec<Holder> = Vec::new();
    let mut held = 0usize;
    let mut up = 0usize;
    let mut out = Vec::new();
    // (RSS, connections up) at the level before.
    let mut last = (base, 0usize);
    for level in levels {
        while held < level {
            let count = (level - held).min(per_process);
            let source = Ipv4Addr::new(127, 0, 0, 2 + (holders.len() % 200) as u8);
            let mut cmd = Command::new(&exe);
            cmd.args(["idle-child", "--system", kind.name(), "--addr"])
                .arg(addr.to_string())
                .args(["--count", &count.to_string(), "--first", &held.to_string()])
                .args(["--source-ip", &source.to_string()])
                .env(TOKENS_ENV, tokens.join(","))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = cmd.spawn().context("starting an idle-child")?;
            let stdin = child.stdin.take();
            let stdout = child.stdout.take().context("idle-child stdout")?;
            let mut holder = Holder {
                child,
                _stdin: stdin,
            };
            // The child says `up N` once its connections are open (or it gave up).
            let line = tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                line
            })
            .await
            .context("reading an idle-child")?;
            let n: usize = line
                .strip_prefix("up ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if n == 0 && count > 0 {
                let status = holder.child.try_wait().ok().flatten();
                bail!("an idle-child opened no connection ({line:?}, {status:?})");
            }
            up += n;
            held += count;
            holders.push(holder);
        }
        tokio::time::sleep(SETTLE).await;
        let sample = ProcSample::read(pid).context("reading the server's RSS")?;
        let (prev_rss, prev_up) = last;
        last = (sample.rss_bytes, up);
        out.push(IdleLevel {
            connections: level,
            connected: up,
            rss_bytes: sample.rss_bytes,
            rss_per_connection: (sample.rss_bytes as f64 - prev_rss as f64)
                / up.saturating_sub(prev_up).max(1) as f64,
            rss_per_connection_overall: (sample.rss_bytes as f64 - base as f64) / up.max(1) as f64,
            open_files: stats::open_files(pid),
            processes: holders.len(),
        });
        eprintln!(
            "  {} idle connections ({up} up): RSS {:.1} MiB",
            level,
            sample.rss_bytes as f64 / 1048576.0
        );
    }
    Ok(out)
}

/// The child: opens `count` connections to `addr` from `source`, prints `up N`, and holds
/// them (answering pings) until its stdin closes.
///
/// # Errors
/// The runtime failed.
pub(crate) async fn child(
    system: SystemKind,
    addr: SocketAddr,
    count: usize,
    first: usize,
    source: Ipv4Addr,
) -> anyhow::Result<()> {
    let tokens: Vec<String> = std::env::var(TOKENS_ENV)
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let rec = Arc::new(Recorder::new(crate::payload::Clock::new()));
    let mut set = tokio::task::JoinSet::new();
    let mut nats_clients = Vec::new();
    let url = format!("ws://{addr}");
    for k in 0..count {
        match system {
            SystemKind::Nats => {
                // async-nats cannot bind a source address.
                match crate::nats::connect(&url, None).await {
                    Ok(c) => {
                        nats_clients.push(c);
                        rec.connected
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => rec.error(format!("{e:#}")),
                }
            }
            SystemKind::JetStream => {
                rec.error("jetstream is a baseline of the cluster scenario only");
            }
            SystemKind::Scopecast | SystemKind::Ceiling => {
                let g = first + k;
                let token = match system {
                    SystemKind::Scopecast if !tokens.is_empty() => {
                        Some(tokens[(g / 900) % tokens.len()].clone())
                    }
                    _ => None,
                };
                let sub = crate::scopecast::WsSubscriber {
                    addr,
                    path: if token.is_some() {
                        "/v1/stream".to_owned()
                    } else {
                        "/sub?topics=".to_owned()
                    },
                    token,
                    patterns: Vec::new(),
                    source,
                    buffered_writes: false,
                };
                set.spawn(sub.run(k, Arc::clone(&rec)));
                // A few hundred handshakes in flight at most.
                if k % 200 == 199 {
                    let _ = crate::load::wait_connected(&rec, k + 1, Duration::from_secs(30)).await;
                }
            }
        }
    }
    let _ = crate::load::wait_connected(&rec, count, Duration::from_secs(60)).await;
    let up = rec.connected.load(std::sync::atomic::Ordering::Relaxed);
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "up {up} errors {}", rec.errors())?;
        stdout.flush()?;
    }
    // Hold until the parent closes stdin (or kills this process).
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
    })
    .await
    .context("waiting on stdin")?;
    drop(nats_clients);
    set.abort_all();
    Ok(())
}
