//! The scenarios of the load harness, each run against Scopecast and the baselines:
//!
//! - `fanout`: 1 publisher, 1 topic, N subscribers;
//! - `topics`: 1,000 topics, each subscriber on one, several publishers;
//! - `wildcards`: `fhir.>`-style patterns mixed with exact subscriptions;
//! - `connect`: new authenticated connections per second (token verification included);
//! - `idle`: RSS per idle authenticated connection (see `idle.rs`);
//! - `tokens`: token endpoint requests per second (Scopecast only);
//! - `durable`: acknowledged publishes per second with fsync durability (Scopecast only);
//! - `cluster`: cluster mode (`cluster.rs`); `webhooks`: signed deliveries against a plain
//!   signed HTTP client on the same receiver (`webhooks.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use scopecast_protocol::{Pattern, Topic};
use serde_json::json;
use tokio::task::JoinSet;

use crate::ceiling::Ceiling;
use crate::load::{self, LoadOptions, Measure, Workload};
use crate::nats::NatsServer;
use crate::payload::{Clock, Payload, PayloadKind};
use crate::report::{PhaseReport, RunReport, SystemReport};
use crate::scopecast::{self, LogKind, Scopecast};
use crate::stats::{ProcSample, Recorder};
use crate::system::{SubSpec, System, SystemKind};
use crate::ws::{self, ConnectOptions};

/// A scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// (a) 1 publisher, 1 topic, N subscribers.
    Fanout,
    /// (b) many topics, each subscriber on one, several publishers.
    Topics,
    /// (c) wildcard patterns mixed with exact subscriptions.
    Wildcards,
    /// (d) new authenticated connections per second.
    Connect,
    /// (e) RSS per idle authenticated connection.
    Idle,
    /// (f) token endpoint requests per second.
    Tokens,
    /// (g) acknowledged publishes per second with fsync durability.
    Durable,
    /// (h) cluster mode against one node and against JetStream itself (`cluster.rs`).
    Cluster,
    /// (i) signed webhook deliveries against a plain signed HTTP client (`webhooks.rs`).
    Webhooks,
}

impl Scenario {
    /// Its name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Topics => "topics",
            Scenario::Wildcards => "wildcards",
            Scenario::Connect => "connect",
            Scenario::Idle => "idle",
            Scenario::Tokens => "tokens",
            Scenario::Durable => "durable",
            Scenario::Cluster => "cluster",
            Scenario::Webhooks => "webhooks",
        }
    }

    /// What the scenario's throughput counts.
    pub(crate) fn unit(self) -> &'static str {
        match self {
            Scenario::Fanout | Scenario::Topics | Scenario::Wildcards => "events delivered/s",
            Scenario::Connect => "authenticated connections/s",
            Scenario::Idle => "bytes of RSS per idle connection",
            Scenario::Tokens => "tokens issued/s",
            Scenario::Durable => "acknowledged events/s",
            Scenario::Cluster => "events delivered/s and acknowledged events/s",
            Scenario::Webhooks => "signed deliveries/s",
        }
    }

    /// Whether the baselines have an equivalent.
    fn has_baselines(self) -> bool {
        !matches!(
            self,
            Scenario::Tokens | Scenario::Durable | Scenario::Cluster | Scenario::Webhooks
        )
    }
}

/// The broker under test.
#[derive(Debug, Clone)]
pub(crate) enum BrokerTarget {
    /// Start this binary for each run (fresh data folder).
    Start(PathBuf),
    /// Use a running broker.
    Attach {
        /// `http://IP:PORT`.
        url: String,
        /// Its admin credential.
        admin_token: String,
        /// Its process id, for CPU and RSS.
        pid: Option<u32>,
    },
}

/// Sizes and settings of one scenario run.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Which.
    pub(crate) scenario: Scenario,
    /// Subscriber connections (fanout, topics, wildcards, durable).
    pub(crate) subscribers: usize,
    /// Payload.
    pub(crate) payload: PayloadKind,
    /// Topics (topics scenario).
    pub(crate) topics: usize,
    /// Publisher connections (topics, wildcards, durable).
    pub(crate) publishers: usize,
    /// Share of wildcard subscribers, percent (wildcards).
    pub(crate) wildcard_pct: u32,
    /// Idle connection levels (idle).
    pub(crate) connections: Vec<usize>,
    /// Idle connections per client process (idle).
    pub(crate) per_process: usize,
    /// Concurrent connectors or token requesters (connect, tokens).
    pub(crate) concurrency: usize,
    /// `connect`: every Scopecast connection brings a token of its own, never seen by the
    /// broker before (a fresh verification each), instead of sharing its application's.
    pub(crate) fresh_tokens: bool,
    /// Phase lengths, loads, windows, source addresses.
    pub(crate) load: LoadOptions,
    /// Baselines to run besides Scopecast.
    pub(crate) baselines: Vec<SystemKind>,
    /// The broker.
    pub(crate) broker: BrokerTarget,
    /// Settings (`SCOPECAST_*` variables) of a broker the harness starts, besides its own
    /// (`ab --a-env/--b-env`, e.g. `SCOPECAST_AUDIT__ENABLED=false`).
    pub(crate) broker_env: Vec<(String, String)>,
    /// Event log of a broker the harness starts (publish scenarios but `durable`).
    pub(crate) log: LogKind,
    /// Parts of the `cluster` scenario to run.
    pub(crate) cluster_parts: Vec<crate::cluster::Part>,
}

impl Params {
    /// A short name for tables and files.
    pub(crate) fn label(&self) -> String {
        match self.scenario {
            Scenario::Fanout => format!("fanout-n{}-{}", self.subscribers, self.payload.label()),
            Scenario::Topics => format!(
                "topics-t{}-n{}-p{}-{}",
                self.topics,
                self.subscribers,
                self.publishers,
                self.payload.label()
            ),
            Scenario::Wildcards => format!(
                "wildcards-n{}-w{}-{}",
                self.subscribers,
                self.wildcard_pct,
                self.payload.label()
            ),
            Scenario::Connect if self.fresh_tokens => {
                format!("connect-fresh-c{}", self.concurrency)
            }
            Scenario::Connect => format!("connect-c{}", self.concurrency),
            Scenario::Idle => format!(
                "idle-{}",
                self.connections
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join("-")
            ),
            Scenario::Tokens => format!("tokens-c{}", self.concurrency),
            Scenario::Cluster => format!(
                "cluster-n{}-p{}-{}",
                self.subscribers,
                self.publishers,
                self.payload.label()
            ),
            Scenario::Webhooks => format!("webhooks-{}", self.payload.label()),
            Scenario::Durable => format!(
                "durable-p{}-w{}-{}",
                self.publishers,
                self.load.window,
                self.payload.label()
            ),
        }
    }

    fn params_json(&self) -> serde_json::Value {
        json!({
            "subscribers": self.subscribers,
            "payload": self.payload.label(),
            "payload_bytes": Payload::new(&self.payload).size,
            "topics": self.topics,
            "publishers": self.publishers,
            "wildcard_pct": self.wildcard_pct,
            "connections": self.connections,
            "per_process": self.per_process,
            "concurrency": self.concurrency,
            "fresh_tokens": self.fresh_tokens,
            "seconds": self.load.seconds,
            "loads_pct": self.load.loads,
            "window": self.load.window,
            "inflight": self.load.inflight,
            "source_ips": self.load.source_ips,
            "log": match (self.scenario, self.log) {
                (Scenario::Durable, _) | (_, LogKind::Durable) => "durable (fsync)",
                _ => "memory",
            },
        })
    }
}

/// Runs one scenario against Scopecast and the baselines, one system at a time.
pub(crate) async fn run(params: &Params, clock: Clock) -> RunReport {
    if params.scenario == Scenario::Cluster {
        return crate::cluster::run(params, clock).await;
    }
    if params.scenario == Scenario::Webhooks {
        return crate::webhooks::run(params, clock).await;
    }
    let mut report = RunReport {
        scenario: params.scenario.name().to_owned(),
        label: params.label(),
        unit: params.scenario.unit(),
        params: params.params_json(),
        systems: Vec::new(),
        ratios: Default::default(),
        skipped: Vec::new(),
        plot: None,
        cluster: None,
        webhooks: None,
    };
    let mut kinds = vec![SystemKind::Scopecast];
    if params.scenario.has_baselines() {
        kinds.extend(
            params
                .baselines
                .iter()
                .copied()
                .filter(|k| *k != SystemKind::Scopecast),
        );
    } else if !params.baselines.is_empty() {
        report.skipped.push(format!(
            "baselines: {} has no equivalent in nats or the ceiling",
            params.scenario.name()
        ));
    }
    for kind in kinds {
        eprintln!("[{}] {} ...", report.label, kind.name());
        let mut system = match start(kind, params).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                let why = "nats: nats-server is not on PATH (Debian: apt-get install nats-server); skipped";
                eprintln!("{why}");
                report.skipped.push(why.to_owned());
                continue;
            }
            Err(e) => {
                report.systems.push(SystemReport {
                    system: kind,
                    config: None,
                    version: None,
                    phases: Vec::new(),
                    idle: Vec::new(),
                    failure: Some(format!("start: {e:#}")),
                });
                continue;
            }
        };
        let result = measure(&mut system, params, clock).await;
        report.systems.push(result);
    }
    report.compute_ratios();
    report
}

async fn start(kind: SystemKind, params: &Params) -> anyhow::Result<Option<System>> {
    Ok(Some(match kind {
        SystemKind::Scopecast => System::Scopecast(match &params.broker {
            BrokerTarget::Start(bin) => {
                let log = if params.scenario == Scenario::Durable {
                    LogKind::Durable
                } else {
                    params.log
                };
                let env: Vec<(&str, &str)> = params
                    .broker_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                Scopecast::start_with_env(bin, log, &env).await?
            }
            BrokerTarget::Attach {
                url,
                admin_token,
                pid,
            } => Scopecast::attach(url, admin_token.clone(), *pid).await?,
        }),
        SystemKind::Nats => match NatsServer::find() {
            Some(bin) => System::Nats(NatsServer::start(&bin).await?),
            None => return Ok(None),
        },
        SystemKind::Ceiling => System::Ceiling(Ceiling::start()?),
        SystemKind::JetStream => {
            anyhow::bail!("jetstream is a baseline of the cluster scenario only")
        }
    }))
}

async fn measure(system: &mut System, params: &Params, clock: Clock) -> SystemReport {
    match params.scenario {
        Scenario::Fanout | Scenario::Topics | Scenario::Wildcards | Scenario::Durable => {
            let work = workload(params);
            load::measure(system, &work, &params.load, clock).await
        }
        Scenario::Cluster | Scenario::Webhooks => with_failure(
            system,
            Err(anyhow::anyhow!(
                "the cluster and webhooks scenarios run in cluster.rs and webhooks.rs"
            )),
        ),
        Scenario::Connect => {
            let phases = connect_storm(system, params, clock).await;
            with_failure(system, phases)
        }
        Scenario::Tokens => {
            let phases = tokens(system, params, clock).await;
            with_failure(system, phases)
        }
        Scenario::Idle => {
            let mut report = with_failure(system, Ok(Vec::new()));
            match crate::idle::measure(system, params).await {
                Ok(levels) => report.idle = levels,
                Err(e) => report.failure = Some(format!("{e:#}")),
            }
            report
        }
    }
}

fn with_failure(system: &System, phases: anyhow::Result<Vec<PhaseReport>>) -> SystemReport {
    let (phases, failure) = match phases {
        Ok(p) => (p, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    SystemReport {
        system: system.kind(),
        config: None,
        version: system.version(),
        phases,
        idle: Vec::new(),
        failure,
    }
}

/// FHIR-style topics for the wildcard scenario: `fhir.<resource>.<happening>`.
const FHIR_RESOURCES: [&str; 10] = [
    "encounter",
    "condition",
    "observation",
    "procedure",
    "medicationrequest",
    "immunization",
    "allergyintolerance",
    "diagnosticreport",
    "careplan",
    "claim",
];
const FHIR_HAPPENINGS: [&str; 5] = ["started", "finished", "recorded", "updated", "cancelled"];

/// The subscribers, publishers and expected fan-out of a publish scenario.
pub(crate) fn workload(params: &Params) -> Workload {
    let payload = Payload::new(&params.payload);
    let exact = |t: &str| SubSpec {
        patterns: vec![t.to_owned()],
        topics: vec![t.to_owned()],
    };
    let n = params.subscribers;
    match params.scenario {
        Scenario::Topics => {
            let topics: Vec<String> = (0..params.topics.max(1))
                .map(|i| format!("bench.t.{i}"))
                .collect();
            let publishers = deal(&topics, params.publishers);
            Workload {
                subscribers: (0..n).map(|i| exact(&topics[i % topics.len()])).collect(),
                publishers,
                payload,
                fanout: n as f64 / topics.len() as f64,
                measure: Measure::Delivered,
            }
        }
        Scenario::Wildcards => {
            let topics: Vec<String> = FHIR_RESOURCES
                .iter()
                .flat_map(|r| FHIR_HAPPENINGS.iter().map(move |h| format!("fhir.{r}.{h}")))
                .collect();
            let subscribers: Vec<SubSpec> = (0..n)
                .map(|i| {
                    let wild = (i % 100) < params.wildcard_pct as usize;
                    if !wild {
                        return exact(&topics[i % topics.len()]);
                    }
                    let pattern = match i % 3 {
                        0 => "fhir.>".to_owned(),
                        1 => format!("fhir.{}.*", FHIR_RESOURCES[i % FHIR_RESOURCES.len()]),
                        _ => format!("fhir.*.{}", FHIR_HAPPENINGS[i % FHIR_HAPPENINGS.len()]),
                    };
                    SubSpec {
                        topics: matching(&pattern, &topics),
                        patterns: vec![pattern],
                    }
                })
                .collect();
            let deliveries: usize = subscribers.iter().map(|s| s.topics.len()).sum();
            let publishers = deal(&topics, params.publishers);
            Workload {
                subscribers,
                publishers,
                payload,
                fanout: deliveries as f64 / topics.len() as f64,
                measure: Measure::Delivered,
            }
        }
        Scenario::Durable => {
            let topic = "bench.durable";
            Workload {
                subscribers: (0..n).map(|_| exact(topic)).collect(),
                publishers: vec![vec![topic.to_owned()]; params.publishers.max(1)],
                payload,
                fanout: n as f64,
                measure: Measure::Acknowledged,
            }
        }
        _ => {
            let topic = "bench.fanout";
            Workload {
                subscribers: (0..n).map(|_| exact(topic)).collect(),
                publishers: vec![vec![topic.to_owned()]],
                payload,
                fanout: n as f64,
                measure: Measure::Delivered,
            }
        }
    }
}

/// The topics of `topics` that `pattern` matches (with the broker's own matcher).
fn matching(pattern: &str, topics: &[String]) -> Vec<String> {
    let Ok(p) = Pattern::new(pattern) else {
        return Vec::new();
    };
    topics
        .iter()
        .filter(|t| Topic::new(t).is_ok_and(|t| p.matches(&t)))
        .cloned()
        .collect()
}

/// (d) `concurrency` tasks open a connection, wait for the first frame (Scopecast: `welcome`,
/// after token verification), and reset it, for the phase length.
async fn connect_storm(
    system: &mut System,
    params: &Params,
    clock: Clock,
) -> anyhow::Result<Vec<PhaseReport>> {
    system.prepare(params.concurrency).await?;
    let seconds = params.load.seconds;
    // Warm-up, not reported.
    let warm = (seconds / 3.0).clamp(0.5, 3.0);
    let fresh = match &*system {
        // One token per connection for the whole storm, made before it (the token endpoint
        // would otherwise compete with the storm for the broker's CPU): more than the
        // fastest storm measured (19 k/s with shared tokens) opens in the time.
        System::Scopecast(s) if params.fresh_tokens => {
            let count = ((warm + seconds) * 22_000.0).ceil() as usize;
            eprintln!("[connect] making {count} tokens, one per connection");
            Some(s.fresh_subscriber_tokens(count).await?)
        }
        _ => None,
    };
    let rec = Arc::new(Recorder::new(clock));
    let target = Arc::new(match &*system {
        System::Scopecast(s) => StormTarget::Ws {
            addr: s.addr,
            path: "/v1/stream",
            tokens: fresh.unwrap_or_else(|| s.subscriber_tokens().to_vec()),
            once: params.fresh_tokens,
            next: std::sync::atomic::AtomicUsize::new(0),
        },
        System::Ceiling(c) => StormTarget::Ws {
            addr: c.addr,
            path: "/sub?topics=",
            tokens: Vec::new(),
            once: false,
            next: std::sync::atomic::AtomicUsize::new(0),
        },
        System::Nats(n) => StormTarget::Nats(n.url()),
        System::JetStream(_) => {
            anyhow::bail!("jetstream is a baseline of the cluster scenario only")
        }
    });
    let pid = system.pid();
    storm_phase(&target, params, &rec, warm, pid).await;
    let phase = storm_phase(&target, params, &rec, seconds, pid).await;
    Ok(vec![phase])
}

enum StormTarget {
    Ws {
        addr: SocketAddr,
        path: &'static str,
        tokens: Vec<String>,
        /// Each token is used once, in turn (`next`); none left: the connector fails.
        once: bool,
        next: std::sync::atomic::AtomicUsize,
    },
    Nats(String),
}

async fn storm_phase(
    target: &Arc<StormTarget>,
    params: &Params,
    rec: &Arc<Recorder>,
    seconds: f64,
    pid: Option<u32>,
) -> PhaseReport {
    let before = pid.and_then(ProcSample::read);
    let me = ProcSample::read(std::process::id());
    rec.start();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut set = JoinSet::new();
    for w in 0..params.concurrency.max(1) {
        let target = Arc::clone(target);
        let rec = Arc::clone(rec);
        let source_ips = params.load.source_ips;
        set.spawn(async move {
            let clock = rec.clock();
            let mut i = w;
            while Instant::now() < end {
                let t0 = clock.now_ns();
                match connect_once(&target, i, source_ips).await {
                    Ok(()) => rec.completed(w, clock.now_ns().saturating_sub(t0)),
                    Err(e) => {
                        rec.error(format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                i += 1;
            }
        });
    }
    while set.join_next().await.is_some() {}
    let counted = rec.stop();
    phase_report("max", seconds, &counted, before, me, pid)
}

async fn connect_once(target: &StormTarget, i: usize, source_ips: u8) -> anyhow::Result<()> {
    match target {
        StormTarget::Ws {
            addr,
            path,
            tokens,
            once,
            next,
        } => {
            let token = if *once {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(
                    tokens
                        .get(n)
                        .context("the storm used every token made for it: make more")?
                        .as_str(),
                )
            } else {
                (!tokens.is_empty()).then(|| tokens[i % tokens.len()].as_str())
            };
            let opts = ConnectOptions {
                source: Some(ws::source_ip(i, source_ips)),
                bearer: token,
                subprotocol: token.map(|_| "scopecast.v1"),
                reset_on_drop: true,
                buffered_writes: false,
            };
            let mut ws =
                tokio::time::timeout(Duration::from_secs(10), ws::connect(*addr, path, &opts))
                    .await
                    .context("connect timed out")??;
            use futures_util::StreamExt;
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_)))) => Ok(()),
                other => anyhow::bail!("no first frame: {other:?}"),
            }
        }
        StormTarget::Nats(url) => {
            let client = crate::nats::connect(url, None).await?;
            client.flush().await.context("flush")?;
            Ok(())
        }
    }
}

fn phase_report(
    label: &str,
    seconds: f64,
    counted: &crate::stats::Counted,
    before: Option<ProcSample>,
    me: Option<ProcSample>,
    pid: Option<u32>,
) -> PhaseReport {
    let server = match (before, pid.and_then(ProcSample::read)) {
        (Some(a), Some(b)) => Some(a.usage_until(&b)),
        _ => None,
    };
    let harness_cpu_pct = match (me, ProcSample::read(std::process::id())) {
        (Some(a), Some(b)) => Some(a.usage_until(&b).cpu_pct),
        _ => None,
    };
    PhaseReport {
        phase: label.to_owned(),
        seconds,
        offered_per_s: None,
        published_per_s: None,
        throughput_per_s: counted.delivered as f64 / seconds,
        latency: counted.latency,
        ack_latency: None,
        deliver_latency: None,
        server,
        harness_cpu_pct,
        errors: counted.errors,
        slow_consumer_closes: counted.slow_consumer,
        reconnects: counted.reconnects,
        error_samples: counted.error_samples.clone(),
        broker_deliver: None,
    }
}

/// (f) `concurrency` tasks ask the token endpoint for tokens (client credentials, secret
/// checked with argon2id) for the phase length.
async fn tokens(
    system: &mut System,
    params: &Params,
    clock: Clock,
) -> anyhow::Result<Vec<PhaseReport>> {
    let System::Scopecast(s) = &*system else {
        anyhow::bail!("the token endpoint is Scopecast's only");
    };
    let creds = s
        .register("bench token client", "subscribe:bench.>")
        .await?;
    let base = s.base.clone();
    let http = s.http().clone();
    let pid = system.pid();
    let rec = Arc::new(Recorder::new(clock));
    let run = |seconds: f64| {
        let rec = Arc::clone(&rec);
        let base = base.clone();
        let http = http.clone();
        let creds = creds.clone();
        async move {
            let before = pid.and_then(ProcSample::read);
            let me = ProcSample::read(std::process::id());
            rec.start();
            let end = Instant::now() + Duration::from_secs_f64(seconds);
            let mut set = JoinSet::new();
            for w in 0..params.concurrency.max(1) {
                let (rec, base, http, creds) =
                    (Arc::clone(&rec), base.clone(), http.clone(), creds.clone());
                set.spawn(async move {
                    let clock = rec.clock();
                    while Instant::now() < end {
                        let t0 = clock.now_ns();
                        match scopecast::token(&http, &base, &creds).await {
                            Ok(_) => rec.completed(w, clock.now_ns().saturating_sub(t0)),
                            Err(e) => rec.error(format!("{e:#}")),
                        }
                    }
                });
            }
            while set.join_next().await.is_some() {}
            let counted = rec.stop();
            phase_report("max", seconds, &counted, before, me, pid)
        }
    };
    run((params.load.seconds / 3.0).clamp(0.5, 3.0)).await;
    Ok(vec![run(params.load.seconds).await])
}

/// Deals `topics` round-robin to `publishers` (at least one) publishers; none gets an empty
/// list.
fn deal(topics: &[String], publishers: usize) -> Vec<Vec<String>> {
    let p = publishers.max(1);
    (0..p)
        .map(|j| {
            topics
                .iter()
                .skip(j)
                .step_by(p)
                .cloned()
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(scenario: Scenario, subscribers: usize) -> Params {
        Params {
            scenario,
            subscribers,
            payload: PayloadKind::Bytes(200),
            topics: 1000,
            publishers: 4,
            wildcard_pct: 50,
            connections: vec![1000],
            per_process: 5000,
            concurrency: 8,
            load: LoadOptions {
                seconds: 1.0,
                loads: vec![50.0],
                rates: Vec::new(),
                window: 256,
                inflight: 500,
                source_ips: 4,
            },
            baselines: Vec::new(),
            broker: BrokerTarget::Start(PathBuf::from("scopecast")),
            broker_env: Vec::new(),
            log: LogKind::Memory,
            cluster_parts: crate::cluster::Part::ALL.to_vec(),
            fresh_tokens: false,
        }
    }

    #[test]
    fn topics_workload_spreads_subscribers_and_publishers_over_every_topic() {
        let w = workload(&params(Scenario::Topics, 2000));
        assert_eq!(w.subscribers.len(), 2000);
        assert_eq!(w.publishers.len(), 4);
        assert_eq!(w.publishers.iter().map(Vec::len).sum::<usize>(), 1000);
        assert!((w.fanout - 2.0).abs() < 1e-9);
    }

    #[test]
    fn wildcard_fanout_counts_every_matching_subscriber() {
        let w = workload(&params(Scenario::Wildcards, 100));
        // Over the 50 topics: 50 exact subscribers (1 each), 17 on `fhir.>` (50 each), 17 on
        // `fhir.<resource>.*` (5 each), 16 on `fhir.*.<happening>` (10 each).
        let deliveries = 50 + 17 * 50 + 17 * 5 + 16 * 10;
        assert!(
            (w.fanout - deliveries as f64 / 50.0).abs() < 1e-9,
            "{}",
            w.fanout
        );
        assert!(
            w.subscribers
                .iter()
                .any(|s| s.patterns == ["fhir.>"] && s.topics.len() == 50)
        );
    }
}
