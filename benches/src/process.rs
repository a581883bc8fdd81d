//! Child processes the harness starts (the broker, nats-server, the ceiling server, its own
//! idle-connection workers): killed when dropped, their output drained so they never block
//! on a full pipe.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

/// Lines of a child's output kept for error messages.
const KEPT_LINES: usize = 20;

/// The CPUs the systems under test are pinned to (`--pin`), once set.
static PINNED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Pins every system started from now on to `cpus` (a `taskset` CPU list) and this harness,
/// all its threads, to the other CPUs.
///
/// # Errors
/// `taskset` is missing or refused the list, or no CPU is left for the harness.
pub(crate) fn pin(cpus: &str) -> anyhow::Result<()> {
    let online = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let systems = parse_cpu_list(cpus)
        .with_context(|| format!("--pin {cpus}: a CPU list such as 1 or 2-3"))?;
    let harness: Vec<String> = (0..online)
        .filter(|c| !systems.contains(c))
        .map(|c| c.to_string())
        .collect();
    if harness.is_empty() || systems.iter().any(|c| *c >= online) {
        bail!(
            "--pin {cpus}: this machine has CPUs 0-{}; the harness needs one of them",
            online - 1
        );
    }
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &harness.join(",")])
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    if !status.success() {
        bail!("taskset could not pin the harness: {status}");
    }
    let _ = PINNED.set(cpus.to_owned());
    Ok(())
}

fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.trim().parse::<usize>().ok()?..=b.trim().parse().ok()?),
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// `cmd` as given, or run through `taskset -c CPUS` when the systems are pinned.
fn pinned(cmd: Command) -> Command {
    let Some(cpus) = PINNED.get() else {
        return cmd;
    };
    let mut t = Command::new("taskset");
    t.arg("-c")
        .arg(cpus)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        t.current_dir(dir);
    }
    t
}

/// A running child process, killed when dropped.
pub(crate) struct Spawned {
    child: Child,
    /// What it said last, for error messages.
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Spawned {
    /// Starts `cmd` with its stdout or stderr (`from_stderr`) piped, and waits up to `wait`
    /// for a line containing `local=ADDR`.
    ///
    /// # Errors
    /// It could not start, or exited or stayed silent before saying its address.
    pub(crate) fn start_and_read_addr(
        cmd: Command,
        from_stderr: bool,
        wait: Duration,
    ) -> anyhow::Result<(Spawned, SocketAddr)> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut cmd = pinned(cmd);
        if from_stderr {
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        }
        cmd.stdin(Stdio::null());
        let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
        let out: Box<dyn Read + Send> = if from_stderr {
            Box::new(child.stderr.take().context("child stderr")?)
        } else {
            Box::new(child.stdout.take().context("child stdout")?)
        };
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = Arc::clone(&tail);
        // `SCOPECAST_BENCH_LOGS=DIR`: every line also goes to DIR/<program>-<pid>.log.
        let mut copy = std::env::var_os("SCOPECAST_BENCH_LOGS").and_then(|dir| {
            let name = Path::new(&program)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            std::fs::File::create(Path::new(&dir).join(format!("{name}-{}.log", child.id()))).ok()
        });
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(f) = copy.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if let Some(rest) = line.split("local=").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
                if let Ok(mut kept) = kept.lock() {
                    if kept.len() == KEPT_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            }
        });
        let spawned = Spawned { child, tail };
        let addr = match rx.recv_timeout(wait) {
            Ok(addr) => addr,
            Err(_) => bail!(
                "{program} did not print its address within {wait:?}; it said:\n{}",
                spawned.tail()
            ),
        };
        let addr = addr
            .parse()
            .with_context(|| format!("{program} printed address {addr:?}"))?;
        Ok((spawned, addr))
    }

    /// Starts `cmd` with its output in the harness's log tail only.
    ///
    /// # Errors
    /// It could not start.
    pub(crate) fn start(cmd: Command) -> anyhow::Result<Spawned> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut cmd = pinned(cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
        let err = child.stderr.take().context("child stderr")?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let kept = Arc::clone(&tail);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut kept) = kept.lock() {
                    if kept.len() == KEPT_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            }
        });
        Ok(Spawned { child, tail })
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited.
    ///
    /// # Errors
    /// It exited, with what it said last.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(anyhow!("exited ({status}); it said:\n{}", self.tail())),
            Err(e) => Err(anyhow!("cannot check the process: {e}")),
        }
    }

    /// Its last lines of output.
    pub(crate) fn tail(&self) -> String {
        match self.tail.lock() {
            Ok(t) => t.iter().cloned().collect::<Vec<_>>().join("\n"),
            Err(_) => String::new(),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The executable `name` on `PATH`, if there is one.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for programs that cannot listen on
/// port 0 and say which port they got).
///
/// # Errors
/// No port could be bound.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `addr` accepts TCP connections, at most `wait`.
///
/// # Errors
/// It did not within `wait`.
pub(crate) async fn wait_listening(addr: SocketAddr, wait: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("nothing listens on {addr} after {wait:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
