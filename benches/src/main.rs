//! `scopecast-bench`: the load harness. It starts the broker (or targets a running one),
//! registers its applications through the admin API, drives the scenarios with real tokens,
//! and runs the same scenario against two baselines: nats-server over WebSocket (the peer) and
//! a minimal WebSocket fan-out server (the ceiling). It prints a table per run, writes JSON
//! and a latency-versus-load plot (SVG). See `benches/README.md`.
//!
//! Modules:
//! - `scenario`: the scenarios and their sizes; `load`: subscribers, paced publishers and the
//!   measurement phases; `idle`: idle connections held by child processes;
//! - `system`: the three systems behind one face; `scopecast`, `nats`, `ceiling`: each one's
//!   server process and clients; `ws`: WebSocket connections from chosen source addresses;
//! - `payload`: payloads that carry their send time; `stats`: histograms, counters, /proc;
//! - `report`, `plot`: the table, the JSON and the SVG; `process`: child processes;
//! - `ab`: two broker binaries compared on the same runs, in interleaved pairs;
//! - `cluster`, `jetstream`: the `cluster` scenario (three broker nodes on a JetStream
//!   cluster and PostgreSQL, against one node and against a plain JetStream publisher).

mod ab;
mod broker_metrics;
mod ceiling;
mod cluster;
mod idle;
mod jetstream;
mod load;
mod nats;
mod payload;
mod plot;
mod process;
mod report;
mod scenario;
mod scopecast;
mod stats;
mod system;
mod webhooks;
mod ws;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::load::LoadOptions;
use crate::payload::{Clock, PayloadKind};
use crate::report::{Machine, Report, RunReport};
use crate::scenario::{BrokerTarget, Params, Scenario};
use crate::scopecast::LogKind;
use crate::system::SystemKind;

#[derive(Parser)]
#[command(
    name = "scopecast-bench",
    version,
    about = "Load harness: Scopecast against nats-server and a minimal fan-out ceiling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario at one size against Scopecast and the baselines.
    Run(RunArgs),
    /// Run every scenario at the sizes of the benchmark issue; write results.json, results.md
    /// and one SVG plot per run into --out.
    All(AllArgs),
    /// Compare two broker binaries (e.g. the previous commit's and this one's) on the same
    /// runs: interleaved A/B pairs, the median ratio B/A of the max-phase throughput and its
    /// spread, and a verdict against a tolerance.
    Ab(AbArgs),
    /// Serve the ceiling baseline (the harness starts it by itself).
    CeilingServer {
        /// Address to listen on; prints `local=ADDR` on stdout.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Hold idle connections for the `idle` scenario (started by the harness).
    #[command(hide = true)]
    IdleChild {
        #[arg(long, value_enum)]
        system: SystemKind,
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        first: usize,
        #[arg(long, default_value = "127.0.0.2")]
        source_ip: Ipv4Addr,
    },
    /// Post signed requests to the `webhooks` scenario's receiver: its ceiling, in a process of
    /// its own as the broker is (started by the harness).
    #[command(hide = true)]
    WebhookCeilingChild {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        endpoints: usize,
        #[arg(long)]
        payload: PayloadKind,
        /// How long to post, in seconds.
        #[arg(long)]
        seconds: f64,
    },
}

/// Which broker, and how it runs.
#[derive(Args, Clone)]
struct BrokerArgs {
    /// The `scopecast` binary to start for each run [default: `scopecast` next to this
    /// binary, e.g. target/release/scopecast].
    #[arg(long, conflicts_with = "broker_url")]
    broker_bin: Option<PathBuf>,
    /// A running broker, `http://IP:PORT`, instead of starting one. Give it no publish rate
    /// limit (SCOPECAST_LIMITS__PUBLISH_RATE_PER_SEC=0) and tokens that outlive the run.
    #[arg(long)]
    broker_url: Option<String>,
    /// The admin credential of --broker-url.
    #[arg(long, env = "SCOPECAST_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The process id of --broker-url, for its CPU and RSS.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Event log of a broker the harness starts, for all but the `durable` scenario (which
    /// always uses the durable log with fsync).
    #[arg(long, value_enum, default_value = "memory")]
    log: LogArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogArg {
    Memory,
    Durable,
}

/// How long and how hard.
#[derive(Args, Clone)]
struct LoadArgs {
    /// Length of each measured phase, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Fixed loads, in percent of the measured maximum.
    #[arg(long, value_delimiter = ',', default_value = "25,50,90")]
    loads: Vec<f64>,
    /// Fixed loads in events published per second, the same for every system, run after
    /// `--loads` (e.g. `--rates 350`: latency compared at one offered load).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Baselines to run too (`nats` is skipped with a message when nats-server is not
    /// installed).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "nats,ceiling"
    )]
    baselines: Vec<SystemKind>,
    /// Run Scopecast alone.
    #[arg(long)]
    no_baselines: bool,
    /// Unacknowledged publishes per Scopecast publisher.
    #[arg(long, default_value_t = 256)]
    window: u32,
    /// In the max phase, published events not yet delivered to every subscriber, at most.
    #[arg(long, default_value_t = 500)]
    inflight: u64,
    /// 127.0.0.x source addresses to spread client sockets over.
    #[arg(long, default_value_t = 4)]
    source_ips: u8,
    /// Pin the systems under test (broker, nats-server, ceiling) to these CPUs and the
    /// harness to the rest, with `taskset` (CPU list in its syntax, e.g. `1`): latency with
    /// the harness out of the way. On 2 cores, `--pin 1` gives each side a core.
    #[arg(long)]
    pin: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    /// Scenario.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Payload: a size in bytes (200, 1024, 1k) or `encounter` (a real FHIR Encounter, ~1.7 KB).
    #[arg(long, default_value = "200")]
    payload: PayloadKind,
    /// Topics (`topics`).
    #[arg(long, default_value_t = 1000)]
    topics: usize,
    /// Publisher connections [default: 4 for `topics` and `durable`, else 1].
    #[arg(long)]
    publishers: Option<usize>,
    /// Percent of subscribers on wildcard patterns (`wildcards`).
    #[arg(long, default_value_t = 50)]
    wildcard_pct: u32,
    /// Idle connection levels (`idle`).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,15000")]
    connections: Vec<usize>,
    /// Idle connections per client process (`idle`).
    #[arg(long, default_value_t = 5000)]
    per_process: usize,
    /// Concurrent connectors (`connect`) or token requesters (`tokens`) [default: 32 / 8].
    #[arg(long)]
    concurrency: Option<usize>,
    /// `connect`: a token of its own for every connection (each a new verification; made
    /// before the storm) instead of one per application. The run is `connect-fresh-cN`.
    #[arg(long)]
    fresh_tokens: bool,
    /// Parts of the `cluster` scenario.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fanout,acked,failover"
    )]
    parts: Vec<cluster::Part>,
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency-versus-load plot here [default: the JSON path with .svg].
    #[arg(long)]
    plot: Option<PathBuf>,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Args)]
struct AllArgs {
    /// Folder for results.json, results.md and the plots.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Leave out subscriber counts and idle levels above this (a shorter run).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Only these scenarios [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Args)]
struct AbArgs {
    /// The baseline broker binary ("before").
    #[arg(long)]
    a: PathBuf,
    /// The candidate broker binary ("after").
    #[arg(long)]
    b: PathBuf,
    /// A's name in the table (e.g. its commit).
    #[arg(long, default_value = "A")]
    a_name: String,
    /// A setting of A's broker, `SCOPECAST_NAME=VALUE` (repeatable): the same binary on both
    /// sides with one setting changed, e.g. `--b-env SCOPECAST_AUDIT__ENABLED=false`.
    #[arg(long = "a-env", value_parser = setting)]
    a_env: Vec<(String, String)>,
    /// A setting of B's broker, as `--a-env`.
    #[arg(long = "b-env", value_parser = setting)]
    b_env: Vec<(String, String)>,
    /// B's name in the table.
    #[arg(long, default_value = "B")]
    b_name: String,
    /// A/B pairs per run; the order within a pair alternates (A B, B A, ...).
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// Runs to compare, named as the harness names them (`fanout-n1000-200B`,
    /// `fanout-n1-encounter`, `durable-p4-w256-1024B`, `topics-t1000-n1000-p4-1024B`,
    /// `wildcards-n1000-w50-1024B`, `connect-c32`, `tokens-c8`).
    #[arg(long, value_delimiter = ',', default_value = ab::DEFAULT_RUNS)]
    runs: Vec<String>,
    /// A median ratio B/A within this many percent of 1 is "within"; beyond, "faster" or
    /// "slower".
    #[arg(long, default_value_t = 5.0)]
    tolerance: f64,
    /// Length of each run's max phase, in seconds (after a warm-up of a third of it).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Unacknowledged publishes per publisher (a `durable-...-w<W>-...` name sets its own).
    #[arg(long, default_value_t = 256)]
    window: u32,
    /// In the max phase, published events not yet delivered to every subscriber, at most.
    #[arg(long, default_value_t = 500)]
    inflight: u64,
    /// 127.0.0.x source addresses to spread client sockets over.
    #[arg(long, default_value_t = 4)]
    source_ips: u8,
    /// Event log of both brokers, for all but `durable` runs (always the durable log).
    #[arg(long, value_enum, default_value = "memory")]
    log: LogArg,
    /// Write the results here as JSON (every run of every pair).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    match main_inner(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scopecast-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main_inner(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CeilingServer { listen } => runtime()?.block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            println!("local={}", listener.local_addr()?);
            ceiling::serve(listener).await
        }),
        Command::IdleChild {
            system,
            addr,
            count,
            first,
            source_ip,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(idle::child(system, addr, count, first, source_ip)),
        Command::WebhookCeilingChild {
            addr,
            endpoints,
            payload,
            seconds,
        } => runtime()?.block_on(webhooks::ceiling_child(
            addr,
            endpoints,
            &payload,
            std::time::Duration::from_secs_f64(seconds.clamp(0.0, 3600.0)),
        )),
        Command::Run(args) => runtime()?.block_on(run_one(args)),
        Command::All(args) => runtime()?.block_on(run_all(args)),
        Command::Ab(args) => runtime()?.block_on(run_ab(args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn broker_target(args: &BrokerArgs) -> anyhow::Result<BrokerTarget> {
    if let Some(url) = &args.broker_url {
        let admin_token = args
            .admin_token
            .clone()
            .context("--broker-url needs --admin-token (or SCOPECAST_ADMIN_TOKEN)")?;
        return Ok(BrokerTarget::Attach {
            url: url.clone(),
            admin_token,
            pid: args.broker_pid,
        });
    }
    let bin = match &args.broker_bin {
        Some(b) => b.clone(),
        None => scopecast::sibling_binary().context(
            "no `scopecast` binary next to scopecast-bench: build it (cargo build --release -p \
             scopecast-cli) or pass --broker-bin or --broker-url",
        )?,
    };
    if !bin.is_file() {
        bail!("--broker-bin {}: no such file", bin.display());
    }
    Ok(BrokerTarget::Start(bin))
}

fn load_options(args: &LoadArgs) -> anyhow::Result<LoadOptions> {
    if !args.seconds.is_finite() || args.seconds <= 0.0 {
        bail!("--seconds must be positive");
    }
    if args
        .loads
        .iter()
        .any(|l| !l.is_finite() || *l <= 0.0 || *l > 100.0)
    {
        bail!("--loads are percentages in (0, 100]");
    }
    if args.rates.iter().any(|r| !r.is_finite() || *r <= 0.0) {
        bail!("--rates are events per second, above 0");
    }
    if args.window == 0 || args.source_ips == 0 || args.source_ips > 250 {
        bail!("--window must be at least 1, --source-ips 1 to 250");
    }
    if let Some(cpus) = &args.pin {
        process::pin(cpus)?;
    }
    Ok(LoadOptions {
        seconds: args.seconds,
        loads: args.loads.clone(),
        rates: args.rates.clone(),
        window: args.window,
        inflight: args.inflight.max(1),
        source_ips: args.source_ips,
    })
}

fn baselines(args: &LoadArgs) -> Vec<SystemKind> {
    if args.no_baselines {
        Vec::new()
    } else {
        args.baselines.clone()
    }
}

fn log_kind(log: LogArg) -> LogKind {
    match log {
        LogArg::Memory => LogKind::Memory,
        LogArg::Durable => LogKind::Durable,
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

fn new_report() -> Report {
    Report {
        command: command_line(),
        date: now(),
        machine: Machine::read(),
        runs: Vec::new(),
    }
}

async fn run_one(args: RunArgs) -> anyhow::Result<()> {
    let params = Params {
        scenario: args.scenario,
        subscribers: args.subscribers,
        payload: args.payload.clone(),
        topics: args.topics,
        publishers: args.publishers.unwrap_or(match args.scenario {
            Scenario::Topics | Scenario::Durable | Scenario::Cluster => 4,
            _ => 1,
        }),
        wildcard_pct: args.wildcard_pct.min(100),
        connections: args.connections.clone(),
        per_process: args.per_process,
        concurrency: args.concurrency.unwrap_or(match args.scenario {
            Scenario::Tokens => 8,
            _ => 32,
        }),
        load: load_options(&args.load)?,
        baselines: baselines(&args.load),
        broker: broker_target(&args.broker)?,
        broker_env: Vec::new(),
        log: log_kind(args.broker.log),
        cluster_parts: args.parts.clone(),
        fresh_tokens: args.fresh_tokens,
    };
    let mut report = new_report();
    let mut run = scenario::run(&params, Clock::new()).await;
    let plot_path = args
        .plot
        .clone()
        .or_else(|| args.json.as_ref().map(|j| j.with_extension("svg")));
    if let Some(path) = plot_path {
        draw(&mut run, &path);
    }
    print!("{}", run.table());
    report.runs.push(run);
    if let Some(path) = &args.json {
        write_json(&report, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn draw(run: &mut RunReport, path: &Path) {
    match plot::latency_vs_load(run, path) {
        Ok(true) => run.plot = Some(path.display().to_string()),
        Ok(false) => {}
        Err(e) => eprintln!("plot: {e:#}"),
    }
}

fn write_json(report: &impl serde::Serialize, path: &Path) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report).context("encoding the results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// The runs of `all`: every scenario at the sizes.
fn all_params(args: &AllArgs) -> anyhow::Result<Vec<Params>> {
    let base = Params {
        scenario: Scenario::Fanout,
        subscribers: 1,
        payload: PayloadKind::Bytes(200),
        topics: 1000,
        publishers: 1,
        wildcard_pct: 50,
        connections: vec![1000, 5000, 15000],
        per_process: 5000,
        concurrency: 32,
        load: load_options(&args.load)?,
        baselines: baselines(&args.load),
        broker: broker_target(&args.broker)?,
        broker_env: Vec::new(),
        log: log_kind(args.broker.log),
        cluster_parts: cluster::Part::ALL.to_vec(),
        fresh_tokens: false,
    };
    let cap = args.max_connections.unwrap_or(usize::MAX);
    let payloads = [
        PayloadKind::Bytes(200),
        PayloadKind::Bytes(1024),
        PayloadKind::Encounter,
    ];
    let mut runs = Vec::new();
    for n in [1, 100, 1_000, 10_000].into_iter().filter(|n| *n <= cap) {
        for payload in &payloads {
            runs.push(Params {
                subscribers: n,
                payload: payload.clone(),
                ..base.clone()
            });
        }
    }
    for n in [1_000, 10_000].into_iter().filter(|n| *n <= cap) {
        runs.push(Params {
            scenario: Scenario::Topics,
            subscribers: n,
            publishers: 4,
            payload: PayloadKind::Bytes(1024),
            ..base.clone()
        });
        runs.push(Params {
            scenario: Scenario::Wildcards,
            subscribers: n,
            payload: PayloadKind::Bytes(1024),
            ..base.clone()
        });
    }
    runs.push(Params {
        scenario: Scenario::Connect,
        concurrency: 32,
        ..base.clone()
    });
    runs.push(Params {
        scenario: Scenario::Idle,
        connections: base
            .connections
            .iter()
            .copied()
            .filter(|c| *c <= cap)
            .collect(),
        ..base.clone()
    });
    runs.push(Params {
        scenario: Scenario::Tokens,
        concurrency: 8,
        ..base.clone()
    });
    runs.push(Params {
        scenario: Scenario::Durable,
        subscribers: 1,
        publishers: 4,
        payload: PayloadKind::Bytes(1024),
        ..base.clone()
    });
    runs.push(Params {
        scenario: Scenario::Webhooks,
        payload: PayloadKind::Bytes(1024),
        ..base.clone()
    });
    runs.push(Params {
        scenario: Scenario::Cluster,
        subscribers: 1_000.min(cap),
        publishers: 4,
        payload: PayloadKind::Bytes(1024),
        ..base
    });
    if !args.only.is_empty() {
        runs.retain(|p| args.only.contains(&p.scenario));
    }
    Ok(runs)
}

async fn run_all(args: AllArgs) -> anyhow::Result<()> {
    let runs = all_params(&args)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json = args.out.join("results.json");
    let md = args.out.join("results.md");
    let mut report = new_report();
    let clock = Clock::new();
    let total = runs.len();
    for (i, params) in runs.iter().enumerate() {
        eprintln!("== run {} of {total}: {}", i + 1, params.label());
        let mut run = scenario::run(params, clock).await;
        let svg = args.out.join(format!("{}.svg", run.label));
        draw(&mut run, &svg);
        print!("{}", run.table());
        report.runs.push(run);
        // After every run, so an interrupted `all` keeps what it measured.
        write_json(&report, &json)?;
        let tables: Vec<String> = report.runs.iter().map(RunReport::table).collect();
        std::fs::write(&md, tables.join("\n"))
            .with_context(|| format!("writing {}", md.display()))?;
    }
    eprintln!("wrote {} and {}", json.display(), md.display());
    Ok(())
}

/// A `SCOPECAST_NAME=VALUE` setting of `ab --a-env/--b-env`.
fn setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if k.starts_with("SCOPECAST_") && k.len() > 10 => {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(format!("{s:?}: expected SCOPECAST_NAME=VALUE")),
    }
}

async fn run_ab(args: AbArgs) -> anyhow::Result<()> {
    for (flag, bin) in [("--a", &args.a), ("--b", &args.b)] {
        if !bin.is_file() {
            bail!("{flag} {}: no such file", bin.display());
        }
    }
    if args.pairs == 0 {
        bail!("--pairs must be at least 1");
    }
    if !args.tolerance.is_finite() || args.tolerance < 0.0 {
        bail!("--tolerance is a percentage, 0 or more");
    }
    let load = load_options(&LoadArgs {
        seconds: args.seconds,
        loads: Vec::new(),
        rates: Vec::new(),
        baselines: Vec::new(),
        no_baselines: true,
        window: args.window,
        inflight: args.inflight,
        source_ips: args.source_ips,
        pin: None,
    })?;
    let base = ab::base_params(load, log_kind(args.log));
    let runs = args
        .runs
        .iter()
        .map(|name| ab::parse_run(name.trim(), &base))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plan = ab::AbPlan {
        a: ab::Side {
            name: args.a_name,
            bin: args.a,
            env: args.a_env,
        },
        b: ab::Side {
            name: args.b_name,
            bin: args.b,
            env: args.b_env,
        },
        pairs: args.pairs,
        runs,
        tolerance_pct: args.tolerance,
    };
    let report = ab::run(&plan, command_line(), now()).await;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        write_json(&report, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
