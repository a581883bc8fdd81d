//! Publish-and-deliver load: subscribers connected and counting, publishers paced at a fixed
//! rate or as fast as the system goes, and the phases of a measurement (warm-up, `max`, then
//! each fixed load as a share of the measured maximum).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::task::JoinSet;

use crate::payload::{Clock, Payload};
use crate::report::{PhaseReport, SystemReport};
use crate::stats::{GroupSample, ProcSample, Recorder};
use crate::system::{Publisher, SubSpec, System};

/// Subscribers connecting at once.
const CONNECT_BATCH: usize = 250;

/// What a publish scenario runs on each system.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// One entry per subscriber connection.
    pub(crate) subscribers: Vec<SubSpec>,
    /// One entry per publisher: the topics it publishes to, in turn.
    pub(crate) publishers: Vec<Vec<String>>,
    /// The payload.
    pub(crate) payload: Payload,
    /// Deliveries expected per published event (subscribers matching, on average).
    pub(crate) fanout: f64,
    /// What the headline counts: deliveries, or acknowledged publishes (durable).
    pub(crate) measure: Measure,
}

/// What a phase's throughput and latency are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Measure {
    /// Events delivered to subscribers; publish-to-deliver latency.
    Delivered,
    /// Publishes acknowledged; publish-to-ack latency.
    Acknowledged,
}

/// How long and how hard.
#[derive(Debug, Clone)]
pub(crate) struct LoadOptions {
    /// Length of each measured phase.
    pub(crate) seconds: f64,
    /// Fixed loads, in percent of the measured maximum.
    pub(crate) loads: Vec<f64>,
    /// Fixed loads in events published per second, the same for every system (after the
    /// percentages): latency compared at one offered load rather than at each system's own.
    pub(crate) rates: Vec<f64>,
    /// Unacknowledged publishes per Scopecast publisher.
    pub(crate) window: u32,
    /// In `max` phases, published events not yet delivered everywhere, at most.
    pub(crate) inflight: u64,
    /// 127.0.0.x source addresses to spread subscribers over.
    pub(crate) source_ips: u8,
}

/// Runs `work` on `system`: connects everything, then the phases.
pub(crate) async fn measure(
    system: &mut System,
    work: &Workload,
    opts: &LoadOptions,
    clock: Clock,
) -> SystemReport {
    let mut report = SystemReport {
        system: system.kind(),
        config: None,
        version: system.version(),
        phases: Vec::new(),
        idle: Vec::new(),
        failure: None,
    };
    let me = std::process::id();
    let fds_before = crate::stats::open_files(me).unwrap_or(0);
    let mut subscribers = JoinSet::new();
    if let Err(e) = phases(
        system,
        work,
        opts,
        clock,
        &mut report.phases,
        &mut subscribers,
    )
    .await
    {
        report.failure = Some(format!("{e:#}"));
    }
    // Every subscriber's socket is closed before the next system starts: aborted tasks are
    // only dropped when the runtime gets to them, and an async-nats client's connection task
    // ends only when its last handle is gone. Without this, 10,000-subscriber runs left
    // thousands of sockets open and the next run hit the open-file limit.
    subscribers.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::stats::open_files(me).unwrap_or(0) > fds_before + 16 {
        if Instant::now() > deadline {
            eprintln!(
                "  warning: {} of the harness's files still open 30 s after the subscribers \
                 stopped (were {fds_before}); the next system may hit the open-file limit",
                crate::stats::open_files(me).unwrap_or(0)
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report
}

async fn phases(
    system: &mut System,
    work: &Workload,
    opts: &LoadOptions,
    clock: Clock,
    out: &mut Vec<PhaseReport>,
    subscribers: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let rec = Arc::new(Recorder::new(clock));
    let acks = Arc::new(Recorder::new(clock));
    system.prepare(work.subscribers.len()).await?;
    start_subscribers(system, work, opts.source_ips, &rec, subscribers).await?;
    let mut publishers = Vec::with_capacity(work.publishers.len());
    for _ in &work.publishers {
        publishers.push(system.publisher(opts.window, &acks).await?);
    }
    let metrics = match &*system {
        System::Scopecast(s) => {
            Some((s.http().clone(), s.base.clone(), s.admin_token().to_owned()))
        }
        _ => None,
    };
    let run = Run {
        metrics,
        pids: system.pids(),
        work,
        opts,
        rec: &rec,
        acks: &acks,
    };
    // Warm-up (connections, allocator, caches), not reported.
    let warm = (opts.seconds / 3.0).clamp(0.5, 3.0);
    publishers = run.phase("warm-up", None, warm, publishers).await?.1;
    system.check_alive()?;
    let (max, back) = run.phase("max", None, opts.seconds, publishers).await?;
    publishers = back;
    let events_per_s = match work.measure {
        Measure::Delivered => max.throughput_per_s / work.fanout.max(1e-9),
        Measure::Acknowledged => max.throughput_per_s,
    };
    out.push(max);
    system.check_alive()?;
    if events_per_s < 1.0 {
        bail!("nothing got through in the max phase");
    }
    let phases = opts
        .loads
        .iter()
        .map(|pct| (format!("{pct}%"), events_per_s * pct / 100.0))
        .chain(opts.rates.iter().map(|r| (format!("{r}/s"), *r)));
    for (name, rate) in phases {
        let (p, back) = run
            .phase(&name, Some(rate), opts.seconds, publishers)
            .await?;
        publishers = back;
        out.push(p);
        system.check_alive()?;
    }
    Ok(())
}

/// Connects every subscriber, `CONNECT_BATCH` at a time, and waits until they are all up.
async fn start_subscribers(
    system: &System,
    work: &Workload,
    source_ips: u8,
    rec: &Arc<Recorder>,
    set: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let total = work.subscribers.len();
    for (batch_start, batch) in work.subscribers.chunks(CONNECT_BATCH).enumerate() {
        for (j, spec) in batch.iter().enumerate() {
            let i = batch_start * CONNECT_BATCH + j;
            system.spawn_subscriber(set, i, spec, source_ips, rec);
        }
        let want = (batch_start * CONNECT_BATCH + batch.len()).min(total);
        wait_connected(rec, want, Duration::from_secs(60)).await?;
    }
    Ok(())
}

/// Waits until `want` subscribers are up.
///
/// # Errors
/// They were not within `limit`; says how many were and the first error.
pub(crate) async fn wait_connected(
    rec: &Recorder,
    want: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let up = rec.connected.load(Ordering::Relaxed);
        if up >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            let first = rec
                .stop()
                .error_samples
                .into_iter()
                .next()
                .unwrap_or_default();
            bail!("{up} of {want} subscribers connected after {limit:?}; first error: {first}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What every phase of one system shares.
struct Run<'a> {
    /// Scopecast's HTTP client, base URL and admin credential, to read its `/metrics`.
    metrics: Option<(reqwest::Client, String, String)>,
    /// The system's processes (every node of a cluster): their CPU and RSS are summed.
    pids: Vec<u32>,
    work: &'a Workload,
    opts: &'a LoadOptions,
    rec: &'a Arc<Recorder>,
    acks: &'a Arc<Recorder>,
}

/// Publishers in `max` phases wait while this many deliveries are outstanding, so a system is
/// driven as fast as it delivers rather than until its queues overflow.
struct InFlight {
    rec: Arc<Recorder>,
    fanout: f64,
    limit: u64,
    published: AtomicU64,
    delivered_base: u64,
}

impl InFlight {
    async fn wait_for_room(&self) {
        let start = Instant::now();
        loop {
            let published = self.published.load(Ordering::Relaxed) as f64 * self.fanout;
            let delivered = self
                .rec
                .delivered_total()
                .saturating_sub(self.delivered_base) as f64;
            if published - delivered <= self.limit as f64 * self.fanout.max(1.0) {
                return;
            }
            // Subscribers that went away never catch up: do not wait for them for ever.
            if start.elapsed() > Duration::from_millis(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Run<'_> {
    /// One phase: publishers at `rate` events/s in all (`None`: as fast as possible) for
    /// `seconds`, then the drain; gives the publishers back.
    /// Scopecast's publish-to-deliver histogram now; `None` for the baselines.
    async fn broker_histogram(&self) -> Option<crate::broker_metrics::Buckets> {
        let (http, base, token) = self.metrics.as_ref()?;
        crate::broker_metrics::Buckets::scrape(http, base, token).await
    }

    async fn phase(
        &self,
        label: &str,
        rate: Option<f64>,
        seconds: f64,
        publishers: Vec<Publisher>,
    ) -> anyhow::Result<(PhaseReport, Vec<Publisher>)> {
        let server_before = GroupSample::read(&self.pids);
        let me_before = ProcSample::read(std::process::id());
        let inflight = Arc::new(InFlight {
            rec: Arc::clone(self.rec),
            fanout: self.work.fanout,
            // Acknowledged publishes are bounded by the publisher's window alone.
            limit: match self.work.measure {
                Measure::Delivered => self.opts.inflight,
                Measure::Acknowledged => u64::MAX,
            },
            published: AtomicU64::new(0),
            delivered_base: self.rec.delivered_total(),
        });
        let histogram_before = self.broker_histogram().await;
        self.rec.start();
        self.acks.start();
        let started = Instant::now();
        let duration = Duration::from_secs_f64(seconds);
        let per_publisher = rate.map(|r| r / publishers.len().max(1) as f64);
        let mut tasks = JoinSet::new();
        for (mut p, topics) in publishers
            .into_iter()
            .zip(self.work.publishers.iter().cloned())
        {
            let payload = self.work.payload.clone();
            let clock = self.rec.clock();
            let inflight = Arc::clone(&inflight);
            tasks.spawn(async move {
                let sent = pace(
                    &mut p,
                    &topics,
                    &payload,
                    clock,
                    per_publisher,
                    duration,
                    &inflight,
                )
                .await;
                p.drain(Duration::from_secs(10)).await;
                (p, sent)
            });
        }
        let mut back = Vec::new();
        let mut published = 0;
        let mut publish_errors = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (p, sent) = joined.context("publisher task")?;
            back.push(p);
            match sent {
                Ok(n) => published += n,
                Err((n, e)) => {
                    published += n;
                    publish_errors.push(format!("publisher: {e:#}"));
                }
            }
        }
        let published_secs = started.elapsed().as_secs_f64();
        self.rec
            .settle(Duration::from_millis(300), Duration::from_secs(5))
            .await;
        let delivered = self.rec.stop();
        let acked = self.acks.stop();
        let broker_deliver = match (histogram_before, self.broker_histogram().await) {
            (Some(before), Some(after)) => Some(after.since(&before).summary()),
            _ => None,
        };
        let server = match (server_before, GroupSample::read(&self.pids)) {
            (Some(a), Some(b)) => Some(a.usage_until(&b)),
            _ => None,
        };
        let harness_cpu_pct = match (me_before, ProcSample::read(std::process::id())) {
            (Some(a), Some(b)) => Some(a.usage_until(&b).cpu_pct),
            _ => None,
        };
        let (main, ack_latency, deliver_latency) = match self.work.measure {
            Measure::Delivered => (&delivered, acked.latency, None),
            Measure::Acknowledged => (&acked, acked.latency, delivered.latency),
        };
        let mut error_samples = publish_errors.clone();
        error_samples.extend(delivered.error_samples.iter().cloned());
        error_samples.extend(acked.error_samples.iter().cloned());
        error_samples.truncate(8);
        let report = PhaseReport {
            phase: label.to_owned(),
            seconds,
            offered_per_s: rate,
            published_per_s: Some(published as f64 / published_secs),
            throughput_per_s: main.delivered as f64 / seconds,
            latency: main.latency,
            ack_latency,
            deliver_latency,
            server,
            harness_cpu_pct,
            errors: delivered.errors + acked.errors + publish_errors.len() as u64,
            slow_consumer_closes: delivered.slow_consumer,
            reconnects: delivered.reconnects,
            error_samples,
            broker_deliver,
        };
        if !publish_errors.is_empty() && published == 0 {
            bail!("{}", publish_errors.join("; "));
        }
        Ok((report, back))
    }
}

/// Publishes for `duration`: at `rate` events/s (in bursts each timer tick), or as fast as
/// the system takes them within the in-flight limit. Returns how many were sent.
async fn pace(
    p: &mut Publisher,
    topics: &[String],
    payload: &Payload,
    clock: Clock,
    rate: Option<f64>,
    duration: Duration,
    inflight: &InFlight,
) -> Result<u64, (u64, anyhow::Error)> {
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut k = 0;
    while start.elapsed() < duration {
        let burst = match rate {
            Some(r) => {
                let due = (r * start.elapsed().as_secs_f64()) as u64;
                if due <= sent {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    continue;
                }
                (due - sent).min(4096)
            }
            None => {
                inflight.wait_for_room().await;
                32
            }
        };
        for _ in 0..burst {
            let topic = &topics[k];
            k = (k + 1) % topics.len();
            if let Err(e) = p.feed(payload, topic, clock.now_ns()).await {
                return Err((sent, e));
            }
            sent += 1;
        }
        inflight.published.fetch_add(burst, Ordering::Relaxed);
        if let Err(e) = p.flush().await {
            return Err((sent, e));
        }
    }
    Ok(sent)
}
