//! The delivery engine (WEBHOOKS.md "Delivery"): one worker per active endpoint whose lease
//! this node holds, tailing the event log from the endpoint's stored cursor.
//!
//! - **Supervisor** ([`Webhooks::run`]): reads the endpoints at start, on every change that
//!   concerns them (an endpoint written, a client ID activated or deleted) and every third of
//!   `webhooks.lease_ms`; takes the lease of each active endpoint nobody holds (or renews its
//!   own), starts a worker for it, and stops the worker of an endpoint that is gone, paused,
//!   disabled, changed (it restarts with the new settings) or whose lease was lost.
//! - **Worker**: the log's tail from `cursor + 1`, events of other topics passed over,
//!   `max_batch` events per request, `max_in_flight` requests at once, results taken in `seq`
//!   order; the cursor (fenced by the lease) is written at most every
//!   [`CURSOR_FLUSH`]. At-least-once: a crash redelivers what was sent after the last write.
//! - **The activation rule, at every attempt** ([`crate::access::Access::check_push`]): an
//!   inactive client ID gets no request (`skipped_client_inactive`, recorded; when it is
//!   active again the events accepted before are skipped too, until replayed); an event its
//!   scope no longer covers is skipped (`skipped_scope`). A deactivation wakes every wait at
//!   once: retries already scheduled and requests in flight stop within the registry's
//!   propagation (at once on this node, `registry_poll_ms` on others).
//! - **Attempts** are recorded through one writer task in batches, and counted
//!   (`scopecast_webhook_attempts_total`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use scopecast_protocol::{Pattern, encode_webhook_body};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::endpoint::Keys;
use super::policy::{Answer, DisableReason, Next, Schedule};
use super::send::{Delivery, Lookup, Sender};
use super::sign::message_id;
use super::ssrf::AddressPolicy;
use crate::access::{Access, Denied};
use crate::cluster::Kek;
use crate::config::{EnvironmentKind, WebhooksConfig};
use crate::log::{EventLog, StoredEvent, TailItem};
use crate::metrics::Metrics;
use crate::registry::{Registry, RegistryChange, StoredWebhook, WebhookAttempt, WebhookState};

/// How often a worker writes its cursor at most (and when idle, this long after its last
/// delivery).
pub(crate) const CURSOR_FLUSH: Duration = Duration::from_millis(250);

/// The actor of the engine's own audit entries (an endpoint disabled).
pub(crate) const ENGINE_ACTOR: &str = "scopecast (webhook delivery)";

/// Outcomes recorded for attempts and skips (`webhook_attempts.outcome`).
pub(crate) mod outcome {
    /// The receiver answered 2xx.
    pub(crate) const DELIVERED: &str = "delivered";
    /// No 2xx: retried, unless it was the last attempt.
    pub(crate) const FAILED: &str = "failed";
    /// The attempt that disabled the endpoint (410, or the last of the schedule).
    pub(crate) const DISABLED: &str = "disabled";
    /// Not sent: the client ID was not active in this environment.
    pub(crate) const SKIPPED_CLIENT_INACTIVE: &str = "skipped_client_inactive";
    /// Not sent: the client's scope no longer covers the event's topic.
    pub(crate) const SKIPPED_SCOPE: &str = "skipped_scope";
    /// Not sent: retention removed the events before they were delivered.
    pub(crate) const SKIPPED_RETENTION: &str = "skipped_retention";
}

/// What the engine needs from the broker.
pub(crate) struct EngineParts {
    pub(crate) registry: Registry,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) access: Access,
    pub(crate) environment: EnvironmentKind,
    pub(crate) kek: Arc<Kek>,
    pub(crate) sender: Sender,
    /// Where deliveries may go (registration checks it too).
    pub(crate) policy: AddressPolicy,
    /// Resolves endpoint host names (registration checks their addresses).
    pub(crate) lookup: Arc<dyn Lookup>,
    pub(crate) settings: WebhooksConfig,
    pub(crate) metrics: Arc<Metrics>,
    /// The lease holder's name: the node's name in cluster mode, `local` on one node (one
    /// process per data folder, so a restart takes its own lease back at once).
    pub(crate) holder: String,
}

/// The webhook service: the engine, and what the admin API needs of it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Webhooks(Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) registry: Registry,
    pub(crate) log: Arc<dyn EventLog>,
    access: Access,
    environment: EnvironmentKind,
    pub(crate) kek: Arc<Kek>,
    sender: Sender,
    pub(crate) policy: AddressPolicy,
    pub(crate) lookup: Arc<dyn Lookup>,
    schedule: Schedule,
    pub(crate) settings: WebhooksConfig,
    metrics: Arc<Metrics>,
    holder: String,
    workers: parking_lot::Mutex<HashMap<String, Running>>,
    records: mpsc::UnboundedSender<WebhookAttempt>,
    records_rx: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<WebhookAttempt>>>,
}

impl std::ops::Deref for Webhooks {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// A worker this node runs.
struct Running {
    /// The endpoint's `version` it started from.
    version: i64,
    /// Stops it.
    cancel: CancellationToken,
    /// When this node last took or renewed the lease, Unix ms: a worker whose lease was not
    /// renewed within `lease_ms` stops before its next attempt.
    renewed_ms: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Webhooks {
    /// The service; [`Webhooks::run`] starts delivering.
    pub(crate) fn new(parts: EngineParts) -> Webhooks {
        let (records, records_rx) = mpsc::unbounded_channel();
        Webhooks(Arc::new(Inner {
            schedule: Schedule::new(parts.settings.retry_schedule_ms.clone()),
            registry: parts.registry,
            log: parts.log,
            access: parts.access,
            environment: parts.environment,
            kek: parts.kek,
            sender: parts.sender,
            policy: parts.policy,
            lookup: parts.lookup,
            settings: parts.settings,
            metrics: parts.metrics,
            holder: parts.holder,
            workers: parking_lot::Mutex::new(HashMap::new()),
            records,
            records_rx: parking_lot::Mutex::new(Some(records_rx)),
        }))
    }

    /// The supervisor: runs until `shutdown`, then stops every worker.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut changes = self.registry.changes();
        if let Some(rx) = self.records_rx.lock().take() {
            tokio::spawn(record_loop(self.registry.clone(), rx));
        }
        tokio::spawn(prune_loop(
            self.registry.clone(),
            self.settings.attempts_retention_s,
            shutdown.clone(),
        ));
        let every = Duration::from_millis(self.settings.lease_ms / 3);
        loop {
            self.reconcile().await;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(every) => {}
                change = changes.recv() => match change {
                    Ok(
                        RegistryChange::WebhookChanged { .. }
                        | RegistryChange::ClientActivated { .. }
                        | RegistryChange::ApplicationDeleted { .. },
                    )
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        for (_, w) in self.workers.lock().drain() {
            w.cancel.cancel();
        }
    }

    /// Brings the workers in line with the stored endpoints and renews this node's leases.
    async fn reconcile(&self) {
        let endpoints = match self.registry.webhooks().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "webhook endpoints could not be read; retrying");
                return;
            }
        };
        let lease_ms = i64::try_from(self.settings.lease_ms).unwrap_or(i64::MAX);
        // Stop what must not run: gone, not active, changed, or ended by itself.
        {
            let mut workers = self.workers.lock();
            workers.retain(|id, w| {
                let keep = !w.task.is_finished()
                    && endpoints.iter().any(|e| {
                        e.id == *id && e.state == WebhookState::Active && e.version == w.version
                    });
                if !keep {
                    w.cancel.cancel();
                }
                keep
            });
        }
        for ep in endpoints
            .into_iter()
            .filter(|e| e.state == WebhookState::Active)
        {
            let held = self
                .workers
                .lock()
                .get(&ep.id)
                .map(|w| w.renewed_ms.clone());
            let leased = match self
                .registry
                .lease_webhook(&ep.id, &self.holder, lease_ms)
                .await
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(endpoint = %ep.id, error = %e, "webhook lease not renewed");
                    continue;
                }
            };
            match (held, leased) {
                (Some(renewed), true) => renewed.store(now_ms(), Ordering::Release),
                (Some(_), false) => {
                    // Another node took it over (this one was too slow to renew).
                    if let Some(w) = self.workers.lock().remove(&ep.id) {
                        tracing::warn!(endpoint = %ep.id, "webhook lease lost; another node delivers");
                        w.cancel.cancel();
                    }
                }
                (None, true) => self.start(ep),
                (None, false) => {}
            }
        }
    }

    fn start(&self, ep: StoredWebhook) {
        let cancel = CancellationToken::new();
        let renewed_ms = Arc::new(AtomicI64::new(now_ms()));
        let worker = Worker::new(self.0.clone(), &ep, cancel.clone(), renewed_ms.clone());
        let id = ep.id.clone();
        let version = ep.version;
        tracing::info!(endpoint = %id, client_id = %ep.client_id, cursor = ep.cursor, "webhook deliveries start");
        let task = tokio::spawn(worker.run(ep));
        self.workers.lock().insert(
            id,
            Running {
                version,
                cancel,
                renewed_ms,
                task,
            },
        );
    }
}

/// Writes attempt records in batches.
async fn record_loop(registry: Registry, mut rx: mpsc::UnboundedReceiver<WebhookAttempt>) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        if let Err(e) = registry.record_webhook_attempts(&batch).await {
            tracing::warn!(error = %e, records = batch.len(), "webhook attempt records lost");
        }
        batch.clear();
    }
}

/// Forgets attempt records past retention, hourly.
async fn prune_loop(registry: Registry, retention_s: u64, shutdown: CancellationToken) {
    let keep = i64::try_from(retention_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    loop {
        match registry
            .prune_webhook_attempts(now_ms().saturating_sub(keep))
            .await
        {
            Ok(n) if n > 0 => tracing::info!(removed = n, "old webhook attempt records removed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "webhook attempt records not pruned"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// What one batch came to.
enum Step {
    /// Delivered or skipped up to this `seq` (and the time of the newest event, Unix ms).
    Done(u64, i64),
    /// The endpoint must be disabled.
    Disable(DisableReason, u64),
    /// The worker stops (cancelled, lease lost).
    Stop,
}

/// One item of the tail as a worker sees it.
enum Item {
    Event(Arc<StoredEvent>),
    Gap { from: u64, to: u64 },
}

impl Item {
    fn seq(&self) -> u64 {
        match self {
            Item::Event(e) => e.seq,
            Item::Gap { to, .. } => *to,
        }
    }
}

/// One endpoint's deliveries.
struct Worker {
    inner: Arc<Inner>,
    id: String,
    client_id: String,
    url: String,
    patterns: Vec<Pattern>,
    max_batch: usize,
    max_in_flight: usize,
    epoch: String,
    /// Its secrets and extra headers (a change, a rotation among them, restarts the worker),
    /// or why they cannot be opened.
    keys: Result<Keys, String>,
    cancel: CancellationToken,
    renewed_ms: Arc<AtomicI64>,
    /// Bumped on every registry change that concerns the client ID: waits and requests in
    /// flight re-check the activation rule at once.
    client_changed: watch::Sender<u64>,
    /// Set when the client ID was seen inactive; cleared on its activation.
    suspended: AtomicBool,
    /// Events up to this `seq` were accepted while the client ID was inactive: skipped.
    skip_through: AtomicU64,
}

impl Worker {
    fn new(
        inner: Arc<Inner>,
        ep: &StoredWebhook,
        cancel: CancellationToken,
        renewed_ms: Arc<AtomicI64>,
    ) -> Arc<Worker> {
        let epoch = inner.log.epoch().to_owned();
        Arc::new(Worker {
            id: ep.id.clone(),
            client_id: ep.client_id.clone(),
            url: ep.url.clone(),
            patterns: ep.topics.iter().filter_map(|t| t.parse().ok()).collect(),
            max_batch: ep.max_batch.max(1) as usize,
            max_in_flight: ep.max_in_flight.max(1) as usize,
            epoch,
            keys: Keys::unseal(&inner.kek, &ep.id, &ep.sealed),
            cancel,
            renewed_ms,
            client_changed: watch::channel(0).0,
            suspended: AtomicBool::new(false),
            skip_through: AtomicU64::new(0),
            inner,
        })
    }

    async fn run(self: Arc<Self>, ep: StoredWebhook) {
        match &self.keys {
            Ok(_) => {}
            Err(e) => {
                // Another key-encryption key than the one that sealed it: nothing can be
                // signed. Said once; the worker idles until the endpoint changes.
                tracing::error!(endpoint = %ep.id, error = %e, "webhook endpoint's secrets cannot be opened; no deliveries");
                self.cancel.cancelled().await;
                return;
            }
        }
        let from = if ep.cursor_epoch == self.epoch {
            ep.cursor + 1
        } else {
            let first = self.inner.log.bounds().first;
            tracing::warn!(
                endpoint = %ep.id,
                stored = %ep.cursor_epoch,
                log = %self.epoch,
                from = first,
                "the endpoint's cursor counts in another event log; delivering this log from its first retained event"
            );
            first
        };
        tokio::spawn(self.clone().watch_client());
        let labels = [self.client_id.as_str(), self.id.as_str()];
        let lag_events = self
            .inner
            .metrics
            .webhook_lag_events
            .with_label_values(&labels);
        let lag_seconds = self
            .inner
            .metrics
            .webhook_lag_seconds
            .with_label_values(&labels);
        let worker = self.clone();
        let steps = self
            .inner
            .log
            .tail(from)
            .map(|item| match item {
                TailItem::Event(e) => Item::Event(e),
                TailItem::Gap { from, to } => Item::Gap { from, to },
            })
            .ready_chunks(self.max_batch)
            .map(move |chunk| worker.clone().deliver(chunk))
            .buffered(self.max_in_flight);
        tokio::pin!(steps);
        let mut pending: Option<u64> = None;
        let mut flush = tokio::time::interval(CURSOR_FLUSH);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                () = self.cancel.cancelled() => Step::Stop,
                _ = flush.tick() => {
                    if let Some(seq) = pending.take()
                        && !self.save_cursor(seq).await
                    {
                        break;
                    }
                    continue;
                }
                step = steps.next() => step.unwrap_or(Step::Stop),
            };
            match step {
                Step::Done(seq, time_ms) => {
                    pending = Some(seq);
                    let behind = self.inner.log.bounds().last.saturating_sub(seq);
                    lag_events.set(i64::try_from(behind).unwrap_or(i64::MAX));
                    lag_seconds.set(if behind == 0 {
                        0
                    } else {
                        (now_ms() - time_ms).max(0) / 1000
                    });
                }
                Step::Disable(reason, seq) => {
                    // The event that disabled it stays undelivered: the cursor stops before it.
                    if let Some(seq) = pending.take() {
                        self.save_cursor(seq).await;
                    }
                    self.disable(reason, seq).await;
                    break;
                }
                Step::Stop => break,
            }
        }
        if let Some(seq) = pending.take() {
            self.save_cursor(seq).await;
        }
        self.cancel.cancel();
        tracing::info!(endpoint = %self.id, "webhook deliveries stop on this node");
    }

    /// Writes the cursor; false when this node no longer holds the lease (it stops).
    async fn save_cursor(&self, seq: u64) -> bool {
        match self
            .inner
            .registry
            .advance_webhook_cursor(&self.id, &self.inner.holder, &self.epoch, seq)
            .await
        {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(endpoint = %self.id, "webhook lease lost; this node stops delivering to it");
                self.cancel.cancel();
                false
            }
            Err(e) => {
                // Delivered again after a restart at worst (at-least-once); tried again at
                // the next write.
                tracing::warn!(endpoint = %self.id, error = %e, "webhook cursor not saved");
                true
            }
        }
    }

    /// Follows the registry for changes of this client ID: wakes waits, notes suspension.
    async fn watch_client(self: Arc<Self>) {
        let mut changes = self.inner.registry.changes();
        loop {
            let change = tokio::select! {
                () = self.cancel.cancelled() => return,
                c = changes.recv() => c,
            };
            let concerns = match &change {
                Ok(RegistryChange::ClientActivated { client_id })
                    if *client_id == self.client_id =>
                {
                    if self.suspended.swap(false, Ordering::AcqRel) {
                        // Events accepted while it was inactive stay skipped (WEBHOOKS.md).
                        let last = self.inner.log.fresh_bounds().await.last;
                        self.skip_through.fetch_max(last, Ordering::AcqRel);
                    }
                    true
                }
                Ok(RegistryChange::ClientDeactivated { client_id }) => *client_id == self.client_id,
                Ok(RegistryChange::ApplicationDeleted { client_ids, .. }) => {
                    client_ids.contains(&self.client_id)
                }
                Ok(RegistryChange::CeilingChanged { .. }) => true,
                Ok(_) => false,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if concerns {
                self.client_changed.send_modify(|n| *n += 1);
            }
        }
    }

    /// True while this node may still deliver: not stopped, and its lease renewed recently.
    fn may_deliver(&self) -> bool {
        let lease = i64::try_from(self.inner.settings.lease_ms).unwrap_or(i64::MAX);
        if now_ms() - self.renewed_ms.load(Ordering::Acquire) > lease {
            self.cancel.cancel();
        }
        !self.cancel.is_cancelled()
    }

    fn record(&self, seq: u64, event_id: &str, attempt: u32, result: Recorded<'_>) {
        let (status, error, latency_ms, outcome) = result;
        self.inner
            .metrics
            .webhook_attempts
            .with_label_values(&[self.client_id.as_str(), outcome])
            .inc();
        let _ = self.inner.records.send(WebhookAttempt {
            id: 0,
            endpoint_id: self.id.clone(),
            seq,
            event_id: event_id.to_owned(),
            attempt,
            at_ms: now_ms(),
            status,
            error,
            latency_ms,
            outcome: outcome.to_owned(),
        });
    }

    fn skip(&self, events: &[Arc<StoredEvent>], outcome: &'static str, why: &str) {
        for e in events {
            self.record(
                e.seq,
                e.event_id.as_str(),
                0,
                (None, Some(why.to_owned()), None, outcome),
            );
        }
    }

    /// Applies the activation rule to `events`: the ones that may go now. `None` when the
    /// client ID is inactive (all were recorded as skipped).
    fn admit(&self, events: Vec<Arc<StoredEvent>>) -> Option<Vec<Arc<StoredEvent>>> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            match self
                .inner
                .access
                .check_push(&self.client_id, self.inner.environment, &e.topic)
            {
                Ok(()) if e.seq > self.skip_through.load(Ordering::Acquire) => out.push(e),
                Ok(()) => self.skip(
                    &[e],
                    outcome::SKIPPED_CLIENT_INACTIVE,
                    "accepted while the client ID was inactive (replay to deliver it)",
                ),
                Err(Denied::Inactive) => {
                    self.suspended.store(true, Ordering::Release);
                    let rest: Vec<_> = std::iter::once(e).chain(out.drain(..)).collect();
                    self.skip(
                        &rest,
                        outcome::SKIPPED_CLIENT_INACTIVE,
                        "the client ID is not active in this environment",
                    );
                    return None;
                }
                Err(Denied::Scope { required_scope, .. }) => self.skip(
                    &[e],
                    outcome::SKIPPED_SCOPE,
                    &format!("the client's scope no longer includes {required_scope}"),
                ),
            }
        }
        Some(out)
    }

    /// Delivers one chunk of the tail (retrying as the schedule says).
    async fn deliver(self: Arc<Self>, chunk: Vec<Item>) -> Step {
        let last = chunk.last().map_or(0, Item::seq);
        let mut events = Vec::with_capacity(chunk.len());
        for item in chunk {
            match item {
                Item::Gap { from, to } => {
                    tracing::warn!(endpoint = %self.id, from, to, "events left the log before they were delivered to a webhook endpoint");
                    self.record(
                        from,
                        "",
                        0,
                        (
                            None,
                            Some(format!(
                                "events {from}..={to} left the log (retention) before delivery"
                            )),
                            None,
                            outcome::SKIPPED_RETENTION,
                        ),
                    );
                }
                Item::Event(e) if self.patterns.iter().any(|p| p.matches(&e.topic)) => {
                    events.push(e);
                }
                Item::Event(_) => {}
            }
        }
        let newest_ms = events.last().map_or_else(now_ms, |e| e.time_ms());
        if events.is_empty() {
            return Step::Done(last, newest_ms);
        }
        let Ok(keys) = &self.keys else {
            return Step::Stop;
        };
        let mut changed = self.client_changed.subscribe();
        let mut attempt = 1u32;
        loop {
            if !self.may_deliver() {
                return Step::Stop;
            }
            let Some(admitted) = self.admit(std::mem::take(&mut events)) else {
                return Step::Done(last, newest_ms);
            };
            events = admitted;
            if events.is_empty() {
                return Step::Done(last, newest_ms);
            }
            let (first_seq, last_seq) = (events[0].seq, events[events.len() - 1].seq);
            let body = body_of(&events, self.max_batch > 1);
            let id = message_id(&self.id, &self.epoch, first_seq, last_seq);
            let secrets = keys.signing(now_ms());
            let delivery = Delivery {
                url: &self.url,
                message_id: &id,
                body,
                secrets: &secrets,
                headers: &keys.headers,
            };
            let send = self.inner.sender.send(&delivery);
            tokio::pin!(send);
            let attempted = loop {
                tokio::select! {
                    a = &mut send => break Some(a),
                    () = self.cancel.cancelled() => return Step::Stop,
                    _ = changed.changed() => {
                        // Deactivated while the request was on its way: abandoned.
                        if self.inner.access.check_push(&self.client_id, self.inner.environment, &events[0].topic) == Err(Denied::Inactive) {
                            break None;
                        }
                    }
                }
            };
            let Some(attempted) = attempted else {
                self.suspended.store(true, Ordering::Release);
                self.skip(
                    &events,
                    outcome::SKIPPED_CLIENT_INACTIVE,
                    "the client ID was deactivated while the request was on its way; abandoned",
                );
                return Step::Done(last, newest_ms);
            };
            let next =
                self.inner
                    .schedule
                    .next(attempt, &attempted.answer, SystemTime::now(), jitter());
            let status = match &attempted.answer {
                Answer::Status { code, .. } => Some(*code),
                Answer::NoAnswer => None,
            };
            let latency = attempted
                .latency
                .map(|l| i64::try_from(l.as_millis()).unwrap_or(i64::MAX));
            let result = match next {
                Next::Delivered => outcome::DELIVERED,
                Next::Retry(_) => outcome::FAILED,
                Next::Disable(_) => outcome::DISABLED,
            };
            for e in &events {
                self.record(
                    e.seq,
                    e.event_id.as_str(),
                    attempt,
                    (status, attempted.error.clone(), latency, result),
                );
            }
            match next {
                Next::Delivered => return Step::Done(last, newest_ms),
                Next::Disable(reason) => return Step::Disable(reason, first_seq),
                Next::Retry(wait) => {
                    let until = tokio::time::Instant::now() + wait;
                    loop {
                        tokio::select! {
                            () = tokio::time::sleep_until(until) => break,
                            () = self.cancel.cancelled() => return Step::Stop,
                            _ = changed.changed() => {
                                // Re-checked now: an inactive client ID's retry never goes.
                                if self.inner.access.check_push(&self.client_id, self.inner.environment, &events[0].topic) == Err(Denied::Inactive) {
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            attempt += 1;
        }
    }

    /// Disables the endpoint (410, or the schedule used up), with an audit entry and the
    /// metric; the event that failed, `seq`, and what follows stay undelivered (replay).
    async fn disable(&self, reason: DisableReason, seq: u64) {
        for _ in 0..5 {
            let Ok(mut w) = self.inner.registry.webhook(&self.id).await else {
                return;
            };
            if w.state != WebhookState::Active {
                return;
            }
            w.state = WebhookState::Disabled;
            w.state_reason = Some(format!("{} (at seq {seq})", reason.as_str()));
            w.updated_at_ms = now_ms();
            match self
                .inner
                .registry
                .update_webhook(
                    &w,
                    ENGINE_ACTOR,
                    "webhook.disable",
                    serde_json::json!({"endpoint_id": w.id, "reason": reason.as_str(), "seq": seq}),
                )
                .await
            {
                Ok(true) => {
                    self.inner
                        .metrics
                        .webhooks_disabled
                        .with_label_values(&[self.client_id.as_str()])
                        .inc();
                    tracing::warn!(endpoint = %self.id, client_id = %self.client_id, reason = reason.as_str(), seq, "webhook endpoint disabled");
                    return;
                }
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(endpoint = %self.id, error = %e, "webhook endpoint could not be disabled; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// A number in [0, 1) from the system's random source, to spread retries.
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// An attempt's record: status, error, latency (ms), outcome.
type Recorded<'a> = (Option<u16>, Option<String>, Option<i64>, &'a str);

/// The request body: the event's body (WEBHOOKS.md "Body"), or for an endpoint with
/// `max_batch > 1` a JSON array of them (even of one).
fn body_of(events: &[Arc<StoredEvent>], batched: bool) -> Bytes {
    let one = |e: &StoredEvent| {
        encode_webhook_body(e.seq, &e.topic, &e.event_id, e.time, e.data.as_raw())
    };
    if !batched {
        return Bytes::from(one(&events[0]));
    }
    let mut out = String::from("[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&one(e));
    }
    out.push(']');
    Bytes::from(out)
}
