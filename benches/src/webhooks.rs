//! The `webhooks` scenario (issue 17): signed deliveries per second from the broker to a local
//! receiver, against a ceiling measured in the same run on the same receiver.
//!
//! - **Receiver**: an HTTP/1.1 server in this process (axum) that reads each request's body
//!   and answers 204; the payload carries the harness's send time, so each delivery gives the
//!   publish-to-delivered latency (enqueue to delivered).
//! - **Ceiling**: a plain HTTP client (reqwest, on hyper) posting the same kind of body, signed
//!   the same way (`webhook-id`, `webhook-timestamp`, `webhook-signature` v1 HMAC-SHA256), as
//!   fast as it can, one request at a time per endpoint, as the broker does with
//!   `max_in_flight = 1`: what the receiver and this machine allow. It runs in a process of
//!   its own (`webhook-ceiling-child`), as the broker does.
//! - **Broker**: `scopecast serve` (memory log) with endpoints on the receiver (`allow_private`
//!   for loopback); publishers over HTTP as fast as deliveries go (max), then at 50% of the max
//!   (latency p50/p99).
//!
//! With 1 endpoint and with 100 endpoints (each event goes to every endpoint: deliveries are
//! 100 per event). Target: at least 0.7 of the ceiling.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;

use crate::payload::{Clock, Payload, PayloadKind};
use crate::report::RunReport;
use crate::scenario::{BrokerTarget, Params};
use crate::scopecast::{LogKind, Scopecast};
use crate::stats::{Latency, ProcSample, Recorder};

/// The topic events are published to and endpoints receive.
const TOPIC: &str = "bench.webhooks";
/// Endpoint counts measured.
const ENDPOINTS: [usize; 2] = [1, 100];
/// HTTP publishers feeding the broker.
const PUBLISHERS: usize = 4;

/// One row of the scenario's table.
#[derive(Debug, Serialize)]
pub(crate) struct WebhookRow {
    /// Endpoints registered.
    pub(crate) endpoints: usize,
    /// The ceiling: signed requests/s of a plain client, one in flight per endpoint.
    pub(crate) ceiling_per_s: f64,
    /// Broker deliveries/s at max.
    pub(crate) max_per_s: f64,
    /// `max_per_s / ceiling_per_s`.
    pub(crate) over_ceiling: f64,
    /// Deliveries/s at 50% of max.
    pub(crate) half_per_s: Option<f64>,
    /// Publish-to-delivered latency at 50% load.
    pub(crate) half_latency: Option<Latency>,
    /// The broker's CPU at max, percent of one core.
    pub(crate) broker_cpu_pct: Option<f64>,
}

/// What the scenario adds to its run's report.
#[derive(Debug, Default, Serialize)]
pub(crate) struct WebhookSummary {
    /// One row per endpoint count.
    pub(crate) rows: Vec<WebhookRow>,
    /// What could not be measured, and why.
    pub(crate) failures: Vec<String>,
}

impl WebhookSummary {
    /// The summary as Markdown, below the run's table.
    pub(crate) fn table(&self) -> String {
        let mut out = String::from(
            "\nwebhooks (a receiver in the harness; the ceiling: a plain signed HTTP client on the same receiver):\n\n\
             | endpoints | ceiling req/s | broker max deliveries/s | / ceiling | at 50%: deliveries/s | p50 / p99 ms | broker CPU % at max |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {:.0} | {:.0} | {:.3} | {} | {} | {} |\n",
                r.endpoints,
                r.ceiling_per_s,
                r.max_per_s,
                r.over_ceiling,
                r.half_per_s.map_or("-".to_owned(), |v| format!("{v:.0}")),
                r.half_latency.map_or("-".to_owned(), |l| format!(
                    "{:.1} / {:.1}",
                    l.p50_us / 1000.0,
                    l.p99_us / 1000.0
                )),
                r.broker_cpu_pct
                    .map_or("-".to_owned(), |c| format!("{c:.0}")),
            ));
        }
        for f in &self.failures {
            out.push_str(&format!("failed: {f}\n"));
        }
        out
    }
}

/// Runs the scenario.
pub(crate) async fn run(params: &Params, clock: Clock) -> RunReport {
    let mut report = RunReport {
        scenario: "webhooks".to_owned(),
        label: params.label(),
        unit: "signed deliveries/s",
        params: json!({
            "endpoints": ENDPOINTS,
            "publishers": PUBLISHERS,
            "payload": params.payload.label(),
            "payload_bytes": Payload::new(&params.payload).size,
            "seconds": params.load.seconds,
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
            .push("webhooks: the harness must start the broker (not --broker-url)".to_owned());
        return report;
    };
    let mut summary = WebhookSummary::default();
    for n in ENDPOINTS {
        match row(bin, params, clock, n).await {
            Ok(r) => {
                eprintln!(
                    "webhooks, {n} endpoint(s): ceiling {:.0}/s, broker {:.0}/s ({:.3})",
                    r.ceiling_per_s, r.max_per_s, r.over_ceiling
                );
                summary.rows.push(r);
            }
            Err(e) => summary.failures.push(format!("{n} endpoint(s): {e:#}")),
        }
    }
    report.webhooks = Some(summary);
    report
}

/// The receiver: counts each request's body in `rec` (shard = endpoint), answers 204.
async fn receiver(rec: Arc<Recorder>) -> anyhow::Result<SocketAddr> {
    use axum::extract::{Path as UrlPath, State};
    let app = axum::Router::new()
        .route(
            "/hook/{n}",
            axum::routing::post(
                |State(rec): State<Arc<Recorder>>,
                 UrlPath(n): UrlPath<usize>,
                 body: bytes::Bytes| async move {
                    rec.delivered(n, &body);
                    axum::http::StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(rec);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("the receiver's port")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, as Standard Webhooks signs.
fn sign(key: &ring::hmac::Key, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut ctx = ring::hmac::Context::with_key(key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
    )
}

/// Measures the ceiling: `n` sequential signed posters, for `seconds`.
async fn ceiling(
    addr: SocketAddr,
    rec: &Arc<Recorder>,
    payload: &PayloadKind,
    n: usize,
    seconds: Duration,
) -> anyhow::Result<f64> {
    // In a process of its own, as the broker is: a client in this process could share a
    // runtime thread with the receiver and skip the cross-process hop every delivery of the
    // broker pays (one endpoint measured 12 k/s or 30 k/s from run to run that way).
    let exe = std::env::current_exe().context("the harness's own path")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["webhook-ceiling-child", "--addr", &addr.to_string()])
        .args(["--endpoints", &n.to_string(), "--payload", &payload.label()])
        .args(["--seconds", &(seconds.as_secs_f64() + 2.0).to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the webhook ceiling's client")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    rec.start();
    let started = Instant::now();
    tokio::time::sleep(seconds).await;
    let counted = rec.stop();
    let rate = counted.delivered as f64 / started.elapsed().as_secs_f64();
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(status) => {
            let status = status.context("waiting for the webhook ceiling's client")?;
            if !status.success() {
                bail!("the webhook ceiling's client failed: {status}");
            }
        }
        Err(_) => {
            let _ = child.kill().await;
        }
    }
    Ok(rate)
}

/// The ceiling's client (`scopecast-bench webhook-ceiling-child`): posts signed bodies to
/// `/hook/0..n` at `addr`, one request in flight per endpoint, for `run_for`.
///
/// # Errors
/// None in practice: failed requests are retried by the loop; the receiver counts what
/// arrives.
pub(crate) async fn ceiling_child(
    addr: SocketAddr,
    n: usize,
    payload: &PayloadKind,
    run_for: Duration,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(n)
        .build()
        .unwrap_or_default();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]);
    let payload = Payload::new(payload);
    let clock = Clock::new();
    let deadline = Instant::now() + run_for;
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (http, key, payload) = (http.clone(), key.clone(), payload.clone());
        let url = format!("http://{addr}/hook/{i}");
        tasks.spawn(async move {
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let data = payload.data(clock.now_ns());
                let body = format!(
                    "{{\"id\":\"ceiling-{i}-{seq}\",\"seq\":{seq},\"topic\":\"{TOPIC}\",\"time\":\"2026-12-03T00:00:00Z\",\"data\":{data}}}"
                );
                let id = format!("msg_ceiling_{i}_{seq}");
                let ts = time::OffsetDateTime::now_utc().unix_timestamp();
                let sig = sign(&key, &id, ts, body.as_bytes());
                let _ = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", sig)
                    .body(body)
                    .send()
                    .await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Publishes to the broker over HTTP from [`PUBLISHERS`] tasks until `stop`, each at
/// `per_task_rate` events/s (`None`: as fast as answers come).
fn publishers(
    broker: &Scopecast,
    token: &str,
    payload: &Payload,
    clock: Clock,
    per_task_rate: Option<f64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> JoinSet<u64> {
    let mut tasks = JoinSet::new();
    for _ in 0..PUBLISHERS {
        let http = broker.http().clone();
        let url = format!("{}/v1/events/{TOPIC}", broker.base);
        let (token, payload, stop) = (token.to_owned(), payload.clone(), stop.clone());
        tasks.spawn(async move {
            let mut sent = 0u64;
            let mut tick = per_task_rate.map(|r| {
                let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r.max(0.1)));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(payload.data(clock.now_ns()))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    sent += 1;
                }
            }
            sent
        });
    }
    tasks
}

/// The broker's newest `seq` (`/readyz`'s or the metric's view is not needed: the history
/// endpoint's `head_seq` would need a token; the metrics endpoint needs the admin credential).
async fn broker_last_seq(broker: &Scopecast) -> anyhow::Result<u64> {
    let text = broker
        .http()
        .get(format!("{}/metrics", broker.base))
        .bearer_auth(broker.admin_token())
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("scopecast_event_log_last_seq "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

/// One endpoint count: the ceiling, then the broker at max and at 50%.
async fn row(bin: &Path, params: &Params, clock: Clock, n: usize) -> anyhow::Result<WebhookRow> {
    let seconds = Duration::from_secs_f64(params.load.seconds.max(2.0));
    let payload = Payload::new(&params.payload);
    let rec = Arc::new(Recorder::new(clock));
    let addr = receiver(rec.clone()).await?;
    let ceiling_per_s = ceiling(addr, &rec, &params.payload, n, seconds).await?;
    if ceiling_per_s <= 0.0 {
        bail!("the ceiling delivered nothing");
    }
    rec.settle(Duration::from_millis(300), Duration::from_secs(5))
        .await;

    let broker = Scopecast::start_with_env(
        bin,
        LogKind::Memory,
        &[
            ("SCOPECAST_WEBHOOKS__ALLOW_PRIVATE", "[\"127.0.0.1/32\"]"),
            ("SCOPECAST_WEBHOOKS__ALLOW_HTTP", "true"),
            ("SCOPECAST_WEBHOOKS__MAX_ENDPOINTS_PER_CLIENT", "1000"),
        ],
    )
    .await?;
    let creds = broker
        .register("webhooks-bench", "subscribe:bench.> publish:bench.>")
        .await?;
    let mut endpoints = Vec::with_capacity(n);
    for i in 0..n {
        let made = broker
            .admin_post(
                &format!("/admin/v1/clients/{}/webhooks", creds.client_id),
                &json!({"url": format!("http://{addr}/hook/{i}"), "topics": [TOPIC]}),
            )
            .await
            .with_context(|| format!("registering endpoint {i}"))?;
        endpoints.push(made["id"].as_str().unwrap_or_default().to_owned());
    }
    let token = broker.token(&creds).await?;
    let pids: Vec<u32> = broker.pid().into_iter().collect();

    // Max: a backlog stored while the endpoints are paused, then delivered as fast as the
    // broker goes (publishing does not compete for the cores while it is measured).
    let backlog = ((ceiling_per_s * (seconds.as_secs_f64() + 2.0) * 1.5) / n as f64).ceil() as u64;
    for id in &endpoints {
        broker
            .admin_post(&format!("/admin/v1/webhooks/{id}/pause"), &json!({}))
            .await?;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = publishers(&broker, &token, &payload, clock, None, stop.clone());
    let mut published = 0u64;
    while published < backlog {
        tokio::time::sleep(Duration::from_millis(100)).await;
        published = broker_last_seq(&broker).await?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    for id in &endpoints {
        broker
            .admin_post(&format!("/admin/v1/webhooks/{id}/resume"), &json!({}))
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = pids.first().and_then(|p| ProcSample::read(*p));
    rec.start();
    let started = Instant::now();
    tokio::time::sleep(seconds).await;
    let counted = rec.stop();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = pids.first().and_then(|p| ProcSample::read(*p));
    let max_per_s = counted.delivered as f64 / elapsed;
    let broker_cpu_pct = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some(a.usage_until(&b).cpu_pct),
        _ => None,
    };
    // The backlog of the max phase goes out before the next phase measures.
    rec.settle(Duration::from_secs(1), Duration::from_secs(120))
        .await;

    // 50%: events at half the max delivery rate (over the endpoints), paced.
    let events_per_s = (max_per_s / 2.0 / n as f64).max(1.0);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = publishers(
        &broker,
        &token,
        &payload,
        clock,
        Some(events_per_s / PUBLISHERS as f64),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    rec.start();
    let started = Instant::now();
    tokio::time::sleep(seconds).await;
    let half = rec.stop();
    let half_elapsed = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    Ok(WebhookRow {
        endpoints: n,
        ceiling_per_s,
        max_per_s,
        over_ceiling: max_per_s / ceiling_per_s,
        half_per_s: Some(half.delivered as f64 / half_elapsed),
        half_latency: half.latency,
        broker_cpu_pct,
    })
}
