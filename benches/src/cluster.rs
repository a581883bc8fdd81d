//! The `cluster` scenario (issue 16): cluster mode against the single-node broker, and
//! against JetStream itself, in one run on one machine.
//!
//! 1. **Fan-out**: N subscribers on one topic, one publisher: a single node with the durable
//!    log (redb, fsync) against three broker nodes on a 3-node JetStream cluster (R3), with
//!    subscribers and publishers dealt over the nodes as a load balancer would.
//! 2. **Acknowledged publishes**: several publishers, one subscriber; the max phase, then 50%
//!    of it (publish-to-acknowledgement and publish-to-deliver p50/p99): single node redb with
//!    fsync, cluster R1, cluster R3, and the ceiling, a plain async-nats JetStream publisher to
//!    a stream of the same settings (R1 and R3) on the same servers.
//! 3. **Failover**: cluster R3 at a fixed rate, `kill -9` of the stream's leader: the longest
//!    wait for an acknowledgement, and whether every publish was acknowledged and delivered.
//!
//! The real parts (three `nats-server -js` with routes, PostgreSQL) are started on loopback
//! by `scopecast-testkit`, as in the tests. Every process shares the machine's cores: the
//! figures are ratios within the run, not capacities.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;

use crate::jetstream::JetStreamDirect;
use crate::load::{self, LoadOptions, Measure, Workload};
use crate::payload::{Clock, Payload};
use crate::report::{RunReport, SystemReport};
use crate::scenario::{BrokerTarget, Params};
use crate::scopecast::{ClusterSettings, LogKind, Scopecast};
use crate::stats::Recorder;
use crate::system::{SubSpec, System, SystemKind};

/// The topic of every part.
const TOPIC: &str = "bench.cluster";

/// Publish rate of the failover part, events/s.
const FAILOVER_RATE: f64 = 200.0;
/// Length of the failover part, and when in it the leader is killed.
const FAILOVER_SECONDS: u64 = 20;
const FAILOVER_KILL_AT: Duration = Duration::from_secs(5);

/// A part of the scenario (`--parts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Part {
    /// 1. Fan-out, three nodes against one.
    Fanout,
    /// 2. Acknowledged publishes against JetStream's own.
    Acked,
    /// 3. `kill -9` of the stream leader.
    Failover,
}

impl Part {
    /// Every part, in the order they run.
    pub(crate) const ALL: [Part; 3] = [Part::Fanout, Part::Acked, Part::Failover];
}

/// What the scenario adds to its run's report: the ratios and the failover.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ClusterSummary {
    /// NATS server version of the cluster.
    pub(crate) nats_version: Option<String>,
    /// Deliveries per second at max, three nodes R3 over one node (redb, fsync).
    pub(crate) fanout_cluster_over_single: Option<f64>,
    /// One row per set-up of the acknowledged-publish part.
    pub(crate) acked: Vec<AckedRow>,
    /// The `kill -9` of the stream leader.
    pub(crate) failover: Option<Failover>,
    /// What could not be measured, and why.
    pub(crate) failures: Vec<String>,
}

/// One set-up of the acknowledged-publish part.
#[derive(Debug, Serialize)]
pub(crate) struct AckedRow {
    /// `single-redb-fsync`, `cluster-r1`, `cluster-r3`, `jetstream-r1`, `jetstream-r3`.
    pub(crate) config: String,
    /// Acknowledged publishes per second at max.
    pub(crate) max_acked_per_s: f64,
    /// Over the JetStream publisher of the same replicas (the ceiling).
    pub(crate) over_jetstream: Option<f64>,
    /// Over the single node (redb, fsync).
    pub(crate) over_single: Option<f64>,
    /// At 50% load: publish-to-acknowledgement p50 and p99, microseconds.
    pub(crate) ack_p50_us: Option<f64>,
    /// See `ack_p50_us`.
    pub(crate) ack_p99_us: Option<f64>,
    /// At 50% load: publish-to-deliver p50 and p99, microseconds.
    pub(crate) deliver_p50_us: Option<f64>,
    /// See `deliver_p50_us`.
    pub(crate) deliver_p99_us: Option<f64>,
}

/// The failover part's result.
#[derive(Debug, Serialize)]
pub(crate) struct Failover {
    /// The NATS node killed (the stream's leader at that moment).
    pub(crate) killed: String,
    /// Publishes sent.
    pub(crate) published: u64,
    /// Publishes acknowledged.
    pub(crate) acknowledged: u64,
    /// Events the subscriber got.
    pub(crate) delivered: u64,
    /// Refused publishes, closed connections.
    pub(crate) errors: u64,
    /// The longest publish-to-acknowledgement time, ms: the pause publishers see.
    pub(crate) longest_ack_wait_ms: f64,
    /// Publish-to-acknowledgement p99 over the part, ms.
    pub(crate) ack_p99_ms: f64,
}

impl ClusterSummary {
    /// The summary as Markdown, below the run's table.
    pub(crate) fn table(&self) -> String {
        let num =
            |v: Option<f64>, scale: f64| v.map_or("-".to_owned(), |v| format!("{:.0}", v / scale));
        let ratio = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        let mut out = format!(
            "\ncluster (NATS {}; every process shares this machine's cores):\n\
             fan-out, 3 nodes R3 / single node redb fsync, max deliveries/s: {}\n\n\
             | set-up | max acked/s | / jetstream | / single | ack p50 / p99 ms at 50% | deliver p50 / p99 ms at 50% |\n\
             |---|---|---|---|---|---|\n",
            self.nats_version.as_deref().unwrap_or("?"),
            ratio(self.fanout_cluster_over_single),
        );
        for r in &self.acked {
            out.push_str(&format!(
                "| {} | {:.0} | {} | {} | {} / {} | {} / {} |\n",
                r.config,
                r.max_acked_per_s,
                ratio(r.over_jetstream),
                ratio(r.over_single),
                num(r.ack_p50_us, 1000.0),
                num(r.ack_p99_us, 1000.0),
                num(r.deliver_p50_us, 1000.0),
                num(r.deliver_p99_us, 1000.0),
            ));
        }
        if let Some(f) = &self.failover {
            out.push_str(&format!(
                "\nfailover (kill -9 of stream leader {} at {:.0}/s): longest ack wait {:.0} ms, \
                 ack p99 {:.0} ms; published {}, acknowledged {}, delivered {}, errors {}\n",
                f.killed,
                FAILOVER_RATE,
                f.longest_ack_wait_ms,
                f.ack_p99_ms,
                f.published,
                f.acknowledged,
                f.delivered,
                f.errors
            ));
        }
        for f in &self.failures {
            out.push_str(&format!("failed: {f}\n"));
        }
        out
    }
}

/// The parts the cluster runs on, started once per harness process.
struct Parts {
    nats: &'static scopecast_testkit::NatsCluster,
    postgres: &'static scopecast_testkit::Postgres,
    kek: PathBuf,
    _dir: tempfile::TempDir,
}

/// Runs the scenario; `params.subscribers` is the fan-out's N, `params.publishers` the
/// acknowledged part's publishers.
pub(crate) async fn run(params: &Params, clock: Clock) -> RunReport {
    let mut report = RunReport {
        scenario: "cluster".to_owned(),
        label: params.label(),
        unit: "events delivered/s (fanout rows), acknowledged events/s (acked rows)",
        params: json!({
            "subscribers": params.subscribers,
            "publishers": params.publishers,
            "payload": params.payload.label(),
            "payload_bytes": Payload::new(&params.payload).size,
            "seconds": params.load.seconds,
            "window": params.load.window,
            "source_ips": params.load.source_ips,
            "failover_rate_per_s": FAILOVER_RATE,
        }),
        systems: Vec::new(),
        ratios: Default::default(),
        skipped: Vec::new(),
        plot: None,
        cluster: None,
        webhooks: None,
    };
    let BrokerTarget::Start(bin) = &params.broker else {
        report
            .skipped
            .push("cluster: the harness must start the brokers (not --broker-url)".to_owned());
        return report;
    };
    let mut summary = ClusterSummary::default();
    match parts(bin).await {
        Ok(parts) => measure(bin, &parts, params, clock, &mut report, &mut summary).await,
        Err(e) => report.skipped.push(format!("cluster: {e:#}")),
    }
    report.cluster = Some(summary);
    report
}

async fn parts(bin: &Path) -> anyhow::Result<Parts> {
    if crate::process::find_on_path(&scopecast_testkit::nats_server()).is_none()
        && !Path::new(&scopecast_testkit::nats_server()).is_file()
    {
        bail!("nats-server is not installed (Debian: apt-get install nats-server)");
    }
    let has_postgres = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("bin/initdb").exists());
    if !has_postgres {
        bail!("PostgreSQL is not installed (Debian: apt-get install postgresql)");
    }
    // The test kit panics when a part does not start: a thread of its own turns that into
    // an error.
    let (nats, postgres) = tokio::task::spawn_blocking(|| {
        (
            scopecast_testkit::NatsCluster::shared(),
            scopecast_testkit::Postgres::shared(),
        )
    })
    .await
    .context("starting nats-server (3 nodes) and PostgreSQL")?;
    let dir = tempfile::Builder::new()
        .prefix("scopecast-bench-kek-")
        .tempdir()
        .context("temporary folder")?;
    let kek = dir.path().join("kek");
    let out = std::process::Command::new(bin)
        .args(["cluster", "kek"])
        .arg(&kek)
        .output()
        .with_context(|| format!("{} cluster kek", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} cluster kek: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Parts {
        nats,
        postgres,
        kek,
        _dir: dir,
    })
}

/// A set-up of the broker.
#[derive(Debug, Clone, Copy)]
enum Setup {
    /// One node, redb with fsync.
    Single,
    /// Three nodes on the JetStream cluster, stream replicas 1 or 3.
    Cluster(usize),
    /// The JetStream publisher, replicas 1 or 3.
    JetStream(usize),
}

impl Setup {
    fn name(self) -> String {
        match self {
            Setup::Single => "single-redb-fsync".to_owned(),
            Setup::Cluster(r) => format!("cluster-r{r}"),
            Setup::JetStream(r) => format!("jetstream-r{r}"),
        }
    }
}

async fn start(bin: &Path, parts: &Parts, setup: Setup) -> anyhow::Result<(System, String)> {
    let nats_pids: Vec<u32> = parts.nats.nodes.iter().filter_map(|n| n.pid()).collect();
    let stream = format!(
        "BENCH_{}_{}",
        setup.name().replace('-', "_").to_uppercase(),
        unique()
    );
    Ok(match setup {
        Setup::Single => (
            System::Scopecast(Scopecast::start(bin, LogKind::Durable).await?),
            stream,
        ),
        Setup::Cluster(replicas) => {
            let database = parts.postgres.database().await;
            let settings = ClusterSettings {
                nodes: 3,
                env: vec![
                    (
                        "SCOPECAST_OAUTH__PUBLIC_URL".into(),
                        "http://scopecast-bench.cluster".into(),
                    ),
                    ("SCOPECAST_CLUSTER__NATS_URL".into(), parts.nats.url()),
                    ("SCOPECAST_CLUSTER__POSTGRES_URL".into(), database),
                    (
                        "SCOPECAST_CLUSTER__KEY_ENCRYPTION_KEY_FILE".into(),
                        parts.kek.display().to_string(),
                    ),
                    ("SCOPECAST_CLUSTER__STREAM".into(), stream.clone()),
                    (
                        "SCOPECAST_CLUSTER__SUBJECT_PREFIX".into(),
                        stream.to_lowercase(),
                    ),
                    ("SCOPECAST_CLUSTER__REPLICAS".into(), replicas.to_string()),
                    (
                        "SCOPECAST_CLUSTER__NATS_PING_INTERVAL_MS".into(),
                        "1000".into(),
                    ),
                    (
                        "SCOPECAST_RETENTION__MAX_BYTES".into(),
                        (1u64 << 30).to_string(),
                    ),
                ],
                extra_pids: nats_pids,
            };
            (
                System::Scopecast(Scopecast::start_cluster(bin, &settings).await?),
                stream,
            )
        }
        Setup::JetStream(replicas) => {
            let client = parts.nats.connect().await.context("connecting to NATS")?;
            (
                System::JetStream(
                    JetStreamDirect::create(client, &stream, replicas, nats_pids).await?,
                ),
                stream,
            )
        }
    })
}

/// A number that differs between runs of the harness and between calls.
fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

async fn measure(
    bin: &Path,
    parts: &Parts,
    params: &Params,
    clock: Clock,
    report: &mut RunReport,
    summary: &mut ClusterSummary,
) {
    summary.nats_version = match parts.nats.connect().await {
        Ok(c) => Some(c.server_info().version),
        Err(e) => {
            summary.failures.push(format!("connecting to NATS: {e}"));
            return;
        }
    };
    let payload = Payload::new(&params.payload);
    let parts_wanted = &params.cluster_parts;
    if parts_wanted.contains(&Part::Fanout) {
        fanout_part(bin, parts, params, clock, report, summary, &payload).await;
    }
    if parts_wanted.contains(&Part::Acked) {
        acked_part(bin, parts, params, clock, report, summary, payload).await;
    }
    if parts_wanted.contains(&Part::Failover) {
        eprintln!("[{}] failover cluster-r3 ...", report.label);
        match failover(bin, parts, params, clock).await {
            Ok(f) => summary.failover = Some(f),
            Err(e) => summary.failures.push(format!("failover: {e:#}")),
        }
    }
}

fn exact() -> SubSpec {
    SubSpec {
        patterns: vec![TOPIC.to_owned()],
        topics: vec![TOPIC.to_owned()],
    }
}

/// 1. Fan-out: the max phase only.
async fn fanout_part(
    bin: &Path,
    parts: &Parts,
    params: &Params,
    clock: Clock,
    report: &mut RunReport,
    summary: &mut ClusterSummary,
    payload: &Payload,
) {
    let fanout = Workload {
        subscribers: (0..params.subscribers).map(|_| exact()).collect(),
        publishers: vec![vec![TOPIC.to_owned()]],
        payload: payload.clone(),
        fanout: params.subscribers as f64,
        measure: Measure::Delivered,
    };
    let max_only = LoadOptions {
        loads: Vec::new(),
        rates: Vec::new(),
        ..params.load.clone()
    };
    let mut fanout_max = Vec::new();
    for setup in [Setup::Single, Setup::Cluster(3)] {
        let label = format!("fanout {}", setup.name());
        eprintln!("[{}] {label} ...", report.label);
        let r = run_setup(bin, parts, setup, &fanout, &max_only, clock, &label).await;
        fanout_max.push(max_of(&r));
        report.systems.push(r);
    }
    summary.fanout_cluster_over_single = ratio(fanout_max[1], fanout_max[0]);
}

/// 2. Acknowledged publishes: max, then 50%.
async fn acked_part(
    bin: &Path,
    parts: &Parts,
    params: &Params,
    clock: Clock,
    report: &mut RunReport,
    summary: &mut ClusterSummary,
    payload: Payload,
) {
    let acked = Workload {
        subscribers: vec![exact()],
        publishers: vec![vec![TOPIC.to_owned()]; params.publishers.max(1)],
        payload,
        fanout: 1.0,
        measure: Measure::Acknowledged,
    };
    let half = LoadOptions {
        loads: vec![50.0],
        rates: Vec::new(),
        ..params.load.clone()
    };
    let setups = [
        Setup::JetStream(1),
        Setup::JetStream(3),
        Setup::Single,
        Setup::Cluster(1),
        Setup::Cluster(3),
    ];
    let mut rows = Vec::new();
    for setup in setups {
        let label = format!("acked {}", setup.name());
        eprintln!("[{}] {label} ...", report.label);
        let r = run_setup(bin, parts, setup, &acked, &half, clock, &label).await;
        // Every acknowledged event must reach the subscriber: fewer deliveries than
        // acknowledgements means acknowledged duplicates (or losses), and a wrong measure.
        for p in &r.phases {
            let acked = (p.throughput_per_s * p.seconds).round() as u64;
            let delivered = p.deliver_latency.map_or(0, |l| l.count);
            if delivered * 100 < acked * 99 {
                summary.failures.push(format!(
                    "{label} {}: {acked} acknowledged but {delivered} delivered",
                    p.phase
                ));
            }
        }
        let at_half = r.phases.iter().find(|p| p.phase == "50%");
        rows.push((
            setup,
            AckedRow {
                config: setup.name(),
                max_acked_per_s: max_of(&r).unwrap_or(0.0),
                over_jetstream: None,
                over_single: None,
                ack_p50_us: at_half.and_then(|p| p.latency).map(|l| l.p50_us),
                ack_p99_us: at_half.and_then(|p| p.latency).map(|l| l.p99_us),
                deliver_p50_us: at_half.and_then(|p| p.deliver_latency).map(|l| l.p50_us),
                deliver_p99_us: at_half.and_then(|p| p.deliver_latency).map(|l| l.p99_us),
            },
        ));
        report.systems.push(r);
    }
    let max = |want: &str| {
        rows.iter()
            .find(|(s, _)| s.name() == want)
            .map(|(_, r)| r.max_acked_per_s)
    };
    let single = max("single-redb-fsync");
    let js = [max("jetstream-r1"), max("jetstream-r3")];
    for (setup, row) in &mut rows {
        row.over_single = ratio(Some(row.max_acked_per_s), single);
        row.over_jetstream = match setup {
            Setup::Cluster(1) | Setup::JetStream(1) => ratio(Some(row.max_acked_per_s), js[0]),
            Setup::Cluster(_) | Setup::JetStream(_) => ratio(Some(row.max_acked_per_s), js[1]),
            Setup::Single => None,
        };
    }
    summary.acked = rows.into_iter().map(|(_, r)| r).collect();
}

/// Starts `setup`, measures `work` on it, stops it.
async fn run_setup(
    bin: &Path,
    parts: &Parts,
    setup: Setup,
    work: &Workload,
    opts: &LoadOptions,
    clock: Clock,
    label: &str,
) -> SystemReport {
    let kind = match setup {
        Setup::JetStream(_) => SystemKind::JetStream,
        _ => SystemKind::Scopecast,
    };
    let mut r = match start(bin, parts, setup).await {
        Ok((mut system, stream)) => {
            let r = load::measure(&mut system, work, opts, clock).await;
            drop(system);
            remove_stream(parts, &stream).await;
            r
        }
        Err(e) => SystemReport {
            system: kind,
            config: None,
            version: None,
            phases: Vec::new(),
            idle: Vec::new(),
            failure: Some(format!("start: {e:#}")),
        },
    };
    r.config = Some(label.to_owned());
    r
}

/// Deletes a stream a set-up made (its messages would otherwise fill the NATS store).
async fn remove_stream(parts: &Parts, stream: &str) {
    if let Ok(client) = parts.nats.connect().await {
        let _ = async_nats::jetstream::new(client)
            .delete_stream(stream)
            .await;
    }
}

fn max_of(r: &SystemReport) -> Option<f64> {
    r.phases
        .iter()
        .find(|p| p.phase == "max")
        .map(|p| p.throughput_per_s)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some((a / b * 1000.0).round() / 1000.0),
        _ => None,
    }
}

/// Three nodes R3, one subscriber, one publisher at [`FAILOVER_RATE`]; the stream's leader is
/// killed with `kill -9` [`FAILOVER_KILL_AT`] in, and started again at the end.
async fn failover(
    bin: &Path,
    parts: &Parts,
    params: &Params,
    clock: Clock,
) -> anyhow::Result<Failover> {
    let (mut system, stream) = start(bin, parts, Setup::Cluster(3)).await?;
    let rec = Arc::new(Recorder::new(clock));
    let acks = Arc::new(Recorder::new(clock));
    system.prepare(1).await?;
    let mut subscribers = JoinSet::new();
    system.spawn_subscriber(&mut subscribers, 0, &exact(), 1, &rec);
    load::wait_connected(&rec, 1, Duration::from_secs(30)).await?;
    let mut publisher = system.publisher(params.load.window, &acks).await?;
    let payload = Payload::new(&params.payload);
    rec.start();
    acks.start();
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut killed = None;
    while started.elapsed() < Duration::from_secs(FAILOVER_SECONDS) {
        if killed.is_none() && started.elapsed() >= FAILOVER_KILL_AT {
            let leader = parts
                .nats
                .stream_leader(&stream)
                .await
                .context("the stream has no leader")?;
            parts.nats.node(&leader).kill9();
            killed = Some(leader);
        }
        let due = (FAILOVER_RATE * started.elapsed().as_secs_f64()) as u64;
        while sent < due {
            publisher.feed(&payload, TOPIC, clock.now_ns()).await?;
            sent += 1;
        }
        publisher.flush().await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publisher.drain(Duration::from_secs(30)).await;
    rec.settle(Duration::from_millis(500), Duration::from_secs(10))
        .await;
    let delivered = rec.stop();
    let acked = acks.stop();
    subscribers.shutdown().await;
    drop(publisher);
    drop(system);
    // The killed node comes back, and the cluster is whole again for what follows.
    let killed = killed.context("the run ended before the kill")?;
    let nats = parts.nats;
    let name = killed.clone();
    tokio::task::spawn_blocking(move || {
        nats.node(&name).start();
        nats.wait_for_jetstream(Duration::from_secs(60));
    })
    .await
    .context("restarting the killed NATS node")?;
    remove_stream(parts, &stream).await;
    let latency = acked.latency.context("no publish was acknowledged")?;
    Ok(Failover {
        killed,
        published: sent,
        acknowledged: acked.delivered,
        delivered: delivered.delivered,
        errors: delivered.errors + acked.errors,
        longest_ack_wait_ms: latency.max_us / 1000.0,
        ack_p99_ms: latency.p99_us / 1000.0,
    })
}
