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
//!   order; the node's cursors are written together every [`CURSOR_FLUSH`] (one transaction,
//!   each write fenced by the lease and by replays). At-least-once: a crash
//!   redelivers what was sent after the last write.
//! - **The activation rule, at every attempt** ([`crate::access::Access::check_push`]): an
//!   inactive client ID gets no request (`skipped_client_inactive`, recorded; when it is
//!   active again the events accepted before are skipped too, until replayed); an event its
//!   scope no longer covers is skipped (`skipped_scope`). A deactivation wakes every wait at
//!   once: retries already scheduled and requests in flight stop within the registry's
//!   propagation (at once on this node, `registry_poll_ms` on others).
//! - **Attempts** are recorded through one writer task in batches, and counted
//!   (`scopecast_webhook_attempts_total`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use scopecast_protocol::{Pattern, encode_webhook_body};
use tokio::sync::watch;
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
use crate::registry::{
    CursorWrite, Registry, RegistryChange, StoredWebhook, WebhookAttempt, WebhookState,
};

/// How often the node writes its workers' cursors (all of them in one transaction).
pub(crate) const CURSOR_FLUSH: Duration = Duration::from_millis(250);

/// How often a worker sets its endpoint's lag gauges besides after each delivery.
const LAG_EVERY: Duration = Duration::from_secs(1);

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
    /// Not sent: the endpoint's cursor counted in another event log (one record for the
    /// range).
    pub(crate) const SKIPPED_LOG_REPLACED: &str = "skipped_log_replaced";
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
    pub(crate) environment: EnvironmentKind,
    pub(crate) kek: Arc<Kek>,
    sender: Sender,
    pub(crate) policy: AddressPolicy,
    pub(crate) lookup: Arc<dyn Lookup>,
    schedule: Schedule,
    pub(crate) settings: WebhooksConfig,
    metrics: Arc<Metrics>,
    holder: String,
    workers: parking_lot::Mutex<HashMap<String, Running>>,
    /// Endpoint versions this node disabled (410, schedule used up): not started again until
    /// an admin changes them (which makes a new version).
    disabled: parking_lot::Mutex<HashSet<(String, i64)>>,
    /// Endpoint versions whose secrets this node cannot open (another key-encryption key):
    /// their leases are left to the nodes that can.
    unreadable: parking_lot::Mutex<HashSet<(String, i64)>>,
    /// Attempt records waiting for the writer ([`record_loop`]), which takes them every
    /// [`RECORDS_LINGER`]: a worker only pushes (no wake-up per delivery).
    records: parking_lot::Mutex<Vec<WebhookAttempt>>,
    /// The FHIR service, for endpoints that deliver a rest-hook Subscription (set once the
    /// broker is assembled).
    pub(crate) fhir: std::sync::OnceLock<std::sync::Weak<crate::fhir::Inner>>,
    /// Cursors to write, by endpoint: every worker's newest, written together every
    /// [`CURSOR_FLUSH`] in one transaction (one commit per node, not one per endpoint).
    cursors: parking_lot::Mutex<HashMap<String, PendingCursor>>,
    /// Held while attempt records are taken and written, so a cursor flush waits for a batch
    /// another task has in flight.
    records_flush: tokio::sync::Mutex<()>,
}

/// A worker's newest cursor, not written yet.
struct PendingCursor {
    write: CursorWrite,
    /// Stops the worker when the write is refused (its lease moved or its endpoint changed).
    cancel: CancellationToken,
}

/// Attempt records waiting for the writer at most; past it records are dropped (and said so)
/// rather than memory growing without bound while the registry is slow.
const RECORDS_QUEUE: usize = 65_536;

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
    /// Stops it at once (requests in flight abandoned).
    cancel: CancellationToken,
    /// Stops it gracefully: no new request, the ones in flight finish and their cursor is
    /// kept.
    drain: CancellationToken,
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
            disabled: parking_lot::Mutex::new(HashSet::new()),
            unreadable: parking_lot::Mutex::new(HashSet::new()),
            records: parking_lot::Mutex::new(Vec::new()),
            cursors: parking_lot::Mutex::new(HashMap::new()),
            records_flush: tokio::sync::Mutex::new(()),
            fhir: std::sync::OnceLock::new(),
        }))
    }

    /// Hands the engine the FHIR service (once, when the broker is assembled): endpoints of
    /// rest-hook Subscriptions get notification Bundles.
    /// Stops this node's worker of endpoint `id` at once (a pause answered to an admin: no
    /// attempt starts after the answer; one already sent completes). The supervisor would stop
    /// it too when the change reaches it, a moment later.
    pub(crate) fn stop_local(&self, id: &str) {
        if let Some(w) = self.0.workers.lock().remove(id) {
            w.cancel.cancel();
        }
    }

    pub(crate) fn set_fhir(&self, fhir: &crate::fhir::Fhir) {
        let _ = self.fhir.set(fhir.downgrade());
    }

    /// The HTTP sender (a rest-hook Subscription's handshake goes through it too).
    pub(crate) fn sender(&self) -> &Sender {
        &self.sender
    }

    /// The supervisor: runs until `shutdown`, then stops every worker.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut changes = self.registry.changes();
        tokio::spawn(record_loop(self.clone(), shutdown.clone()));
        tokio::spawn(self.clone().cursor_loop(shutdown.clone()));
        tokio::spawn(prune_loop(
            self.registry.clone(),
            self.settings.attempts_retention_s,
            shutdown.clone(),
        ));
        let every = Duration::from_millis(self.settings.lease_ms / 3);
        let mut renew_at = tokio::time::Instant::now();
        'supervise: loop {
            // Leases are renewed on the lease's clock; a change only starts and stops workers
            // (a burst of changes, 100 endpoints resumed, then costs no lease writes).
            let renew = tokio::time::Instant::now() >= renew_at;
            if renew {
                renew_at = tokio::time::Instant::now() + every;
            }
            self.reconcile(renew).await;
            let next = tokio::time::sleep_until(renew_at);
            tokio::pin!(next);
            loop {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break 'supervise,
                    () = &mut next => break,
                    change = changes.recv() => match change {
                        Ok(
                            RegistryChange::WebhookChanged { .. }
                            | RegistryChange::ClientActivated { .. }
                            | RegistryChange::ApplicationDeleted { .. },
                        )
                        | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break 'supervise,
                    },
                }
            }
        }
        // Stop every worker: requests in flight may finish (for at most SHUTDOWN_DRAIN; a
        // delivery whose answer came is then not made again after the restart), then each
        // saves its cursor, and the leases are given back so another node (a rolling
        // restart) takes over at once rather than after `lease_ms`.
        let running: Vec<(String, Running)> = self.workers.lock().drain().collect();
        for (_, w) in &running {
            w.drain.cancel();
        }
        let ids: Vec<String> = running.iter().map(|(id, _)| id.clone()).collect();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
        let mut left = Vec::new();
        for (_, mut w) in running {
            if tokio::time::timeout_at(deadline, &mut w.task)
                .await
                .is_err()
            {
                w.cancel.cancel();
                left.push(w.task);
            }
        }
        for task in left {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        self.flush_cursors().await;
        self.flush_records().await;
        let _ = self.registry.lease_webhooks(&ids, &self.holder, 0).await;
    }

    /// Writes the pending cursors every [`CURSOR_FLUSH`] until `shutdown`.
    async fn cursor_loop(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(CURSOR_FLUSH) => self.flush_cursors().await,
            }
        }
    }

    /// Writes the gathered attempt records in one transaction; true when they are stored. A
    /// batch the store refused goes back in front of newer records, to be tried again (at most
    /// [`RECORDS_QUEUE`] are kept: beyond, the oldest are dropped, with a warning).
    async fn flush_records(&self) -> bool {
        let _writing = self.records_flush.lock().await;
        let batch = std::mem::take(&mut *self.records.lock());
        if batch.is_empty() {
            return true;
        }
        let Err(e) = self.registry.record_webhook_attempts(&batch).await else {
            return true;
        };
        let mut records = self.records.lock();
        let lost = (batch.len() + records.len()).saturating_sub(RECORDS_QUEUE);
        let mut kept: Vec<WebhookAttempt> = batch.into_iter().skip(lost).collect();
        kept.append(&mut records);
        *records = kept;
        if lost > 0 {
            tracing::warn!(error = %e, lost, kept = records.len(), "webhook attempt records not written and the queue is full: the oldest were dropped");
        } else {
            tracing::warn!(error = %e, kept = records.len(), "webhook attempt records not written; trying again");
        }
        false
    }

    /// Writes every pending cursor in one transaction; stops the workers whose write was
    /// refused. A failed write is tried again at the next flush (unless newer ones came).
    ///
    /// The cursors are taken first, then the attempt records gathered so far are written
    /// (after any batch another task is writing), and the cursors wait while the records
    /// cannot be: a cursor is not stored ahead of the records (skips among them) of the events
    /// it passes, so a crash does not leave a skipped event without the record an admin replays
    /// from (unless the record queue overflowed during a long store outage: then records are
    /// dropped, with a warning).
    async fn flush_cursors(&self) {
        // The cursors first: every record of the events they pass was pushed before them, so
        // the records flush below (which waits for a batch in flight elsewhere) covers them.
        let pending: Vec<PendingCursor> = {
            let mut map = self.cursors.lock();
            if map.is_empty() {
                return;
            }
            map.drain().map(|(_, p)| p).collect()
        };
        if !self.flush_records().await {
            let mut map = self.cursors.lock();
            for p in pending {
                map.entry(p.write.endpoint_id.clone()).or_insert(p);
            }
            return;
        }
        let writes: Vec<CursorWrite> = pending.iter().map(|p| p.write.clone()).collect();
        match self
            .registry
            .advance_webhook_cursors(&self.holder, &writes)
            .await
        {
            Ok(results) => {
                for (p, ok) in pending.iter().zip(results) {
                    if !ok {
                        tracing::info!(endpoint = %p.write.endpoint_id, "webhook endpoint changed or its lease moved; its worker stops");
                        p.cancel.cancel();
                    }
                }
            }
            Err(e) => {
                // Delivered again after a restart at worst (at-least-once).
                tracing::warn!(error = %e, endpoints = writes.len(), "webhook cursors not saved; trying again");
                let mut map = self.cursors.lock();
                for p in pending {
                    map.entry(p.write.endpoint_id.clone()).or_insert(p);
                }
            }
        }
    }

    /// Brings the workers in line with the stored endpoints and, with `renew`, renews this
    /// node's leases.
    async fn reconcile(&self, renew: bool) {
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
        // Every lease this node takes or renews now, in one transaction (one commit per
        // round, not one per endpoint).
        let mut asks = Vec::new();
        for ep in endpoints
            .into_iter()
            .filter(|e| e.state == WebhookState::Active)
        {
            let key = (ep.id.clone(), ep.version);
            if self.disabled.lock().contains(&key) || !self.readable(&ep) {
                continue;
            }
            let held = self
                .workers
                .lock()
                .get(&ep.id)
                .map(|w| w.renewed_ms.clone());
            if held.is_some() && !renew {
                continue;
            }
            asks.push((ep, held));
        }
        if asks.is_empty() {
            return;
        }
        let ids: Vec<String> = asks.iter().map(|(ep, _)| ep.id.clone()).collect();
        // The lease runs from before the call: a slow answer shortens it, never lengthens it.
        let asked_at = now_ms();
        let leased = match self
            .registry
            .lease_webhooks(&ids, &self.holder, lease_ms)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(endpoints = ids.len(), error = %e, "webhook leases not taken or renewed; retrying");
                return;
            }
        };
        for ((ep, held), leased) in asks.into_iter().zip(leased) {
            match (held, leased) {
                (Some(renewed), true) => renewed.store(asked_at, Ordering::Release),
                (Some(_), false) => {
                    // Another node took it over (this one was too slow to renew).
                    if let Some(w) = self.workers.lock().remove(&ep.id) {
                        tracing::warn!(endpoint = %ep.id, "webhook lease lost; another node delivers");
                        w.cancel.cancel();
                    }
                }
                (None, true) => self.start(ep, asked_at),
                (None, false) => {}
            }
        }
    }

    /// True when this node can open `ep`'s secrets; said once per endpoint version when not.
    fn readable(&self, ep: &StoredWebhook) -> bool {
        let key = (ep.id.clone(), ep.version);
        if self.unreadable.lock().contains(&key) {
            return false;
        }
        match Keys::unseal(&self.kek, &ep.id, &ep.sealed) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(endpoint = %ep.id, error = %e, "webhook endpoint's secrets cannot be opened with this node's key-encryption key; left to other nodes");
                self.unreadable.lock().insert(key);
                false
            }
        }
    }

    fn start(&self, ep: StoredWebhook, leased_at: i64) {
        let cancel = CancellationToken::new();
        let drain = CancellationToken::new();
        let renewed_ms = Arc::new(AtomicI64::new(leased_at));
        let Ok(keys) = Keys::unseal(&self.kek, &ep.id, &ep.sealed) else {
            return;
        };
        let worker = Worker::new(
            self.0.clone(),
            &ep,
            keys,
            cancel.clone(),
            drain.clone(),
            renewed_ms.clone(),
        );
        let id = ep.id.clone();
        let version = ep.version;
        tracing::info!(endpoint = %id, client_id = %ep.client_id, cursor = ep.cursor, "webhook deliveries start");
        let task = tokio::spawn(worker.run(ep));
        self.workers.lock().insert(
            id,
            Running {
                version,
                cancel,
                drain,
                renewed_ms,
                task,
            },
        );
    }
}

/// How often the writer of attempt records takes what the workers gathered, for one
/// transaction: a commit per delivery would cost the registry (SQLite commits with fsync)
/// more than the delivery.
const RECORDS_LINGER: Duration = Duration::from_millis(100);

/// Writes the gathered attempt records every [`RECORDS_LINGER`] until `shutdown` (the engine
/// writes the last ones after its workers stop).
async fn record_loop(engine: Webhooks, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RECORDS_LINGER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                engine.flush_records().await;
            }
        }
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
    /// The endpoint's version this worker started from: its cursor writes are fenced by it.
    version: i64,
    /// Events up to this `seq` go out although accepted while the client ID was inactive.
    replay_through: u64,
    /// The rest-hook FHIR Subscription this endpoint delivers, if any.
    fhir_sub: Option<String>,
    epoch: String,
    /// Its secrets and extra headers (a change, a rotation among them, restarts the worker).
    keys: Keys,
    cancel: CancellationToken,
    /// The node shuts down: take no more events, let the requests in flight finish.
    drain: CancellationToken,
    renewed_ms: Arc<AtomicI64>,
    /// Bumped on every registry change that concerns the client ID: waits and requests in
    /// flight re-check the activation rule at once.
    client_changed: watch::Sender<u64>,
    /// The start of the client ID's current active period (Unix ms) as read from the store,
    /// and the registry change it was read at.
    active_since: tokio::sync::Mutex<Option<(u64, Option<i64>)>>,
}

/// How long a shutdown lets requests in flight finish before it abandons them.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// How long a shutdown waits for the engine: the drain, a second for abandoned requests, and
/// the cursor and lease writes.
pub(crate) const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// How often a request in flight or a wait checks that this node still holds the lease.
const LEASE_CHECK: Duration = Duration::from_millis(500);

impl Worker {
    fn new(
        inner: Arc<Inner>,
        ep: &StoredWebhook,
        keys: Keys,
        cancel: CancellationToken,
        drain: CancellationToken,
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
            version: ep.version,
            replay_through: if ep.cursor_epoch == epoch {
                ep.replay_through
            } else {
                0
            },
            fhir_sub: ep.fhir_subscription_id.clone(),
            epoch,
            keys,
            cancel,
            drain,
            renewed_ms,
            client_changed: watch::channel(0).0,
            active_since: tokio::sync::Mutex::new(None),
            inner,
        })
    }

    async fn run(self: Arc<Self>, ep: StoredWebhook) {
        let from = if ep.cursor_epoch == self.epoch {
            ep.cursor + 1
        } else {
            // Another log (a new stream, a restored backup of another deployment): its `seq`s
            // mean nothing here, and delivering this log from its start would push events
            // from before the endpoint existed. Deliveries go on with what comes next; the
            // rest is an admin's replay.
            let last = self.inner.log.fresh_bounds().await.last;
            tracing::warn!(
                endpoint = %ep.id,
                stored = %ep.cursor_epoch,
                log = %self.epoch,
                from = last + 1,
                "the endpoint's cursor counts in another event log; deliveries go on from this log's next event (replay for earlier ones)"
            );
            self.record(
                last,
                "",
                "",
                0,
                (
                    None,
                    Some(format!(
                        "the cursor ({}) counted in another event log; this log's events up to {last} were not delivered",
                        ep.cursor
                    )),
                    None,
                    outcome::SKIPPED_LOG_REPLACED,
                ),
            );
            last + 1
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
        let drain = self.drain.clone();
        let steps = self
            .inner
            .log
            .tail(from)
            // At shutdown the tail ends: the chunks in flight finish, no new one starts.
            .take_until(async move { drain.cancelled().await })
            .map(|item| match item {
                TailItem::Event(e) => Item::Event(e),
                TailItem::Gap { from, to } => Item::Gap { from, to },
            })
            .ready_chunks(self.max_batch)
            .map(move |chunk| worker.clone().deliver(chunk))
            .buffered(self.max_in_flight);
        tokio::pin!(steps);
        // The lag is worked out after every delivery and once a second besides, so that an
        // endpoint stuck in retries (or waiting on a resumed client) shows its lag growing.
        // `delivered`: the last `seq` done and its event's time (before the first: the
        // cursor, timed from when this worker started). `waiting_since`: when events were
        // first seen waiting since the endpoint was last caught up. The oldest waiting event
        // came after the last delivered one and has waited at most since the later of the two
        // times (after an idle hour, a new event's lag starts at 0, not at an hour).
        let mut delivered = (from.saturating_sub(1), now_ms());
        let mut waiting_since: Option<i64> = None;
        let mut tick = tokio::time::interval(LAG_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut set_lag = |(seq, time_ms): (u64, i64)| {
            let behind = self.inner.log.bounds().last.saturating_sub(seq);
            lag_events.set(i64::try_from(behind).unwrap_or(i64::MAX));
            let now = now_ms();
            if behind == 0 {
                waiting_since = None;
                lag_seconds.set(0);
            } else {
                let since = *waiting_since.get_or_insert(now);
                lag_seconds.set((now - time_ms.max(since)).max(0) / 1000);
            }
        };
        loop {
            let step = tokio::select! {
                biased;
                () = self.cancel.cancelled() => Step::Stop,
                step = steps.next() => step.unwrap_or(Step::Stop),
                _ = tick.tick() => {
                    set_lag(delivered);
                    continue;
                }
            };
            match step {
                Step::Done(seq, time_ms) => {
                    self.note_cursor(seq);
                    delivered = (seq, time_ms);
                    set_lag(delivered);
                }
                Step::Disable(reason, seq) => {
                    // The event that disabled it stays undelivered: the cursor stops before it.
                    self.disable(reason, seq).await;
                    break;
                }
                Step::Stop => break,
            }
        }
        self.cancel.cancel();
        let _ = self
            .inner
            .metrics
            .webhook_lag_events
            .remove_label_values(&labels);
        let _ = self
            .inner
            .metrics
            .webhook_lag_seconds
            .remove_label_values(&labels);
        tracing::info!(endpoint = %self.id, "webhook deliveries stop on this node");
    }

    /// Hands the cursor to the node's cursor writer (written within [`CURSOR_FLUSH`], fenced
    /// by the lease and this worker's endpoint version).
    fn note_cursor(&self, seq: u64) {
        self.inner.cursors.lock().insert(
            self.id.clone(),
            PendingCursor {
                write: CursorWrite {
                    endpoint_id: self.id.clone(),
                    version: self.version,
                    epoch: self.epoch.clone(),
                    seq,
                },
                cancel: self.cancel.clone(),
            },
        );
    }

    /// Follows the registry for changes of this client ID, and wakes every wait and request
    /// in flight to re-check the activation rule.
    async fn watch_client(self: Arc<Self>) {
        let mut changes = self.inner.registry.changes();
        loop {
            let change = tokio::select! {
                () = self.cancel.cancelled() => return,
                c = changes.recv() => c,
            };
            let concerns = match &change {
                Ok(
                    RegistryChange::ClientActivated { client_id }
                    | RegistryChange::ClientDeactivated { client_id },
                ) => *client_id == self.client_id,
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

    /// True while this node may still deliver: not stopped, and its lease renewed within
    /// `lease_ms` (less a sixth, for the time a request takes to be abandoned).
    fn may_deliver(&self) -> bool {
        let lease = i64::try_from(self.inner.settings.lease_ms).unwrap_or(i64::MAX);
        if now_ms() - self.renewed_ms.load(Ordering::Acquire) > lease - lease / 6 {
            self.cancel.cancel();
        }
        !self.cancel.is_cancelled()
    }

    /// Records an attempt (or a skip) of event `seq` (`topic` empty when no event is known:
    /// a gap, a change of log), and gives it to the access audit.
    fn record(&self, seq: u64, event_id: &str, topic: &str, attempt: u32, result: Recorded<'_>) {
        let (status, error, latency_ms, outcome) = result;
        let audit = self.inner.access.audit();
        if !topic.is_empty() && audit.enabled() {
            audit.webhook_attempts(vec![scopecast_protocol::audit::WebhookAttemptRecord {
                id: crate::audit::record_id("wha_"),
                client_id: self.client_id.to_string(),
                environment: audit.environment().to_owned(),
                node: audit.node().to_owned(),
                endpoint_id: self.id.to_string(),
                seq,
                event_id: event_id.to_owned(),
                topic: topic.to_owned(),
                attempt,
                at: scopecast_protocol::Timestamp::now(),
                status,
                outcome: outcome.to_owned(),
            }]);
        }
        self.inner
            .metrics
            .webhook_attempts
            .with_label_values(&[self.client_id.as_str(), outcome])
            .inc();
        let record = WebhookAttempt {
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
        };
        let dropped = {
            let mut records = self.inner.records.lock();
            let full = records.len() >= RECORDS_QUEUE;
            if !full {
                records.push(record);
            }
            full
        };
        if dropped {
            tracing::warn!(endpoint = %self.id, seq, outcome, "the delivery log is behind; an attempt record was dropped (the metric counts it)");
        }
    }

    fn skip(&self, events: &[Arc<StoredEvent>], outcome: &'static str, why: &str) {
        for e in events {
            self.record(
                e.seq,
                e.event_id.as_str(),
                e.topic.as_str(),
                0,
                (None, Some(why.to_owned()), None, outcome),
            );
        }
    }

    /// When the client ID's current active period began, as of registry change `at`: read
    /// from the store once per change.
    async fn active_since(&self, at: u64) -> Result<Option<i64>, crate::registry::RegistryError> {
        let mut cached = self.active_since.lock().await;
        if let Some((change, since)) = *cached
            && change == at
        {
            return Ok(since);
        }
        let since = self
            .inner
            .registry
            .client_active_since(&self.client_id)
            .await?;
        *cached = Some((at, since));
        Ok(since)
    }

    /// Applies the activation rule to `events`: the ones that may go now. `None` when the
    /// client ID is inactive (all were recorded as skipped). An event accepted before the
    /// client ID's current active period began (while it was inactive, or queued before a
    /// deactivation) is skipped unless an admin replayed it.
    async fn admit(&self, events: Vec<Arc<StoredEvent>>) -> Option<Vec<Arc<StoredEvent>>> {
        // The snapshot and the stored activation history must be of the same registry state:
        // read the change number before and after, and again when a change came between.
        let (since, verdicts) = loop {
            let before = self.inner.registry.applied_change().await;
            let since = match self.active_since(before).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(endpoint = %self.id, error = %e, "the client's activation history could not be read; retrying");
                    tokio::select! {
                        () = self.cancel.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let verdicts: Vec<Result<(), Denied>> = events
                .iter()
                .map(|e| {
                    self.inner
                        .access
                        .check_push(&self.client_id, self.inner.environment, &e.topic)
                })
                .collect();
            if self.inner.registry.applied_change().await == before {
                break (since, verdicts);
            }
        };
        if verdicts.contains(&Err(Denied::Inactive)) {
            self.skip(
                &events,
                outcome::SKIPPED_CLIENT_INACTIVE,
                "the client ID is not active in this environment",
            );
            return None;
        }
        let mut out = Vec::with_capacity(events.len());
        for (e, verdict) in events.into_iter().zip(verdicts) {
            match verdict {
                Ok(())
                    // Activations are stamped in whole ms: an event of the activation's own
                    // millisecond may have come before it, so it counts as before (skipped,
                    // replayable); pushing an event of the inactive period is the worse error.
                    if e.seq <= self.replay_through || since.is_none_or(|s| e.time_ms() > s) =>
                {
                    out.push(e);
                }
                Ok(()) => self.skip(
                    &[e],
                    outcome::SKIPPED_CLIENT_INACTIVE,
                    "accepted before the client ID's current activation (replay to deliver it)",
                ),
                Err(Denied::Inactive) => {}
                Err(Denied::Scope { required_scope, .. }) => self.skip(
                    &[e],
                    outcome::SKIPPED_SCOPE,
                    &format!("the client's scope no longer includes {required_scope}"),
                ),
            }
        }
        Some(out)
    }

    /// Waits for `fut` unless the worker stops, loses its lease, or the client ID is
    /// deactivated (re-checked at every change of it): `Err(true)` for the deactivation,
    /// `Err(false)` to stop.
    async fn guarded<T>(
        &self,
        fut: impl std::future::Future<Output = T>,
        topic: &scopecast_protocol::Topic,
        changed: &mut watch::Receiver<u64>,
    ) -> Result<T, bool> {
        tokio::pin!(fut);
        let mut lease = tokio::time::interval(LEASE_CHECK);
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Err(false),
                _ = changed.changed() => {
                    if self.inner.access.check_push(&self.client_id, self.inner.environment, topic)
                        == Err(Denied::Inactive)
                    {
                        return Err(true);
                    }
                }
                _ = lease.tick() => {
                    if !self.may_deliver() {
                        return Err(false);
                    }
                }
                out = &mut fut => return Ok(out),
            }
        }
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
        let fhir = match self.fhir_subscription().await {
            Ok(f) => f,
            Err(()) => return Step::Stop,
        };
        if let Some((_, sub)) = &fhir {
            // Only the events its filters match are its notifications.
            events.retain(|e| {
                sub.matches(&serde_json::from_str(e.data.get()).unwrap_or(serde_json::Value::Null))
            });
        }
        if events.is_empty() {
            return Step::Done(last, newest_ms);
        }
        let mut changed = self.client_changed.subscribe();
        let mut attempt = 1u32;
        let mut fhir_body: Option<Bytes> = None;
        loop {
            if !self.may_deliver() {
                return Step::Stop;
            }
            let Some(admitted) = self.admit(std::mem::take(&mut events)).await else {
                return if self.cancel.is_cancelled() {
                    Step::Stop
                } else {
                    Step::Done(last, newest_ms)
                };
            };
            events = admitted;
            if events.is_empty() {
                return Step::Done(last, newest_ms);
            }
            let (first_seq, last_seq) = (events[0].seq, events[events.len() - 1].seq);
            let (body, content_type) = match &fhir {
                None => (body_of(&events, self.max_batch > 1), "application/json"),
                Some((f, sub)) if f.may_deliver(sub).is_err() => {
                    // Its grant no longer holds the resource scope full-resource content needs.
                    let why = f
                        .may_deliver(sub)
                        .err()
                        .map(|d| crate::fhir::denied_words(&d))
                        .unwrap_or_default();
                    self.skip(&events, outcome::SKIPPED_SCOPE, &why);
                    return Step::Done(last, newest_ms);
                }
                Some((f, sub)) => {
                    // Numbered once: every retry sends the same Bundle.
                    if fhir_body.is_none() {
                        match f.rest_hook_body(sub, &events[0]).await {
                            Ok(b) => fhir_body = Some(Bytes::from(b)),
                            // Not counted yet: the worker stops before the event and starts
                            // again with the next lease round.
                            Err(crate::fhir::NumberError::NotYet) => return Step::Stop,
                            Err(crate::fhir::NumberError::Failed(why)) => {
                                tracing::warn!(endpoint = %self.id, seq = first_seq, %why, "a FHIR notification could not be numbered; skipped");
                                self.skip(&events, outcome::SKIPPED_RETENTION, &why);
                                return Step::Done(last, newest_ms);
                            }
                        }
                    }
                    (
                        fhir_body.clone().unwrap_or_default(),
                        sub.spec.mime.as_str(),
                    )
                }
            };
            let id = message_id(&self.id, &self.epoch, first_seq, last_seq);
            let signers = self.keys.signing(now_ms());
            let delivery = Delivery {
                url: &self.url,
                message_id: &id,
                body,
                signers: &signers,
                headers: &self.keys.headers,
                content_type,
            };
            let topic = events[0].topic.clone();
            let attempted = match self
                .guarded(self.inner.sender.send(&delivery), &topic, &mut changed)
                .await
            {
                Ok(a) => a,
                Err(true) => {
                    self.skip(
                        &events,
                        outcome::SKIPPED_CLIENT_INACTIVE,
                        "the client ID was deactivated while the request was on its way; abandoned",
                    );
                    return Step::Done(last, newest_ms);
                }
                Err(false) => return Step::Stop,
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
                    e.topic.as_str(),
                    attempt,
                    (status, attempted.error.clone(), latency, result),
                );
            }
            match next {
                Next::Delivered => {
                    if fhir.is_some() {
                        self.inner
                            .metrics
                            .fhir_notifications
                            .with_label_values(&[
                                self.client_id.as_str(),
                                "rest-hook",
                                "event-notification",
                            ])
                            .inc();
                    }
                    return Step::Done(last, newest_ms);
                }
                Next::Disable(reason) => return Step::Disable(reason, first_seq),
                Next::Retry(_) if self.drain.is_cancelled() => return Step::Stop,
                Next::Retry(wait) => {
                    // A deactivation ends the wait at once; the next round of the loop then
                    // records the events as skipped and sends nothing. A shutdown ends it
                    // too (the events stay after the cursor).
                    let wait = async {
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = self.drain.cancelled() => {}
                        }
                    };
                    if let Err(false) = self.guarded(wait, &topic, &mut changed).await {
                        return Step::Stop;
                    }
                    if self.drain.is_cancelled() {
                        return Step::Stop;
                    }
                }
            }
            attempt += 1;
        }
    }

    /// The FHIR service and the rest-hook Subscription this endpoint delivers (`None` for a
    /// plain endpoint), waiting until this node has loaded it (it reaches another node through
    /// the registry) and while it is not `active`; `Err` when the worker stops meanwhile.
    #[allow(clippy::type_complexity)]
    async fn fhir_subscription(
        &self,
    ) -> Result<Option<(crate::fhir::Fhir, Arc<crate::fhir::Sub>)>, ()> {
        let Some(id) = &self.fhir_sub else {
            return Ok(None);
        };
        loop {
            // Held (not skipped) while the Subscription is not active: `requested` until its
            // handshake, `off` or `error` until its client starts it again.
            if let Some(f) = self.inner.fhir.get().and_then(crate::fhir::Fhir::upgrade)
                && let Some(sub) = f.sub(id)
                && sub.stored.status == "active"
            {
                return Ok(Some((f, sub)));
            }
            tokio::select! {
                () = self.cancel.cancelled() => return Err(()),
                () = self.drain.cancelled() => return Err(()),
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Disables the endpoint (410, or the schedule used up), with an audit entry and the
    /// metric; the event that failed, `seq`, and what follows stay undelivered (replay).
    async fn disable(&self, reason: DisableReason, seq: u64) {
        self.inner
            .disabled
            .lock()
            .insert((self.id.clone(), self.version));
        let Ok(mut w) = self.inner.registry.webhook(&self.id).await else {
            return;
        };
        // Only the version this worker delivered for: an admin's change since wins.
        if w.state != WebhookState::Active || w.version != self.version {
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
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(endpoint = %self.id, error = %e, "webhook endpoint could not be disabled; it is not delivered to by this node until it changes");
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
    let one = |e: &StoredEvent| encode_webhook_body(e.seq, &e.topic, &e.event_id, e.time, &e.data);
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
