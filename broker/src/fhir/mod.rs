//! FHIR Subscriptions (issue 18, FHIR.md): R4B topic-based Subscriptions (Subscriptions
//! Backport IG STU 1.1) as a third front end on the one access check and the event log.
//!
//! - here: the service ([`Fhir`]): the topic catalogue, the Subscriptions of the registry, the
//!   **numbering** task, binding tokens, the sockets bound on this node, revocation.
//! - [`http`]: `/fhir/metadata`, `SubscriptionTopic`, `Subscription` CRUD and search,
//!   `$get-ws-binding-token`, `$status`, `$events`.
//! - [`ws`]: the websocket channel (`/fhir/ws`): `bind-with-token`, handshakes, heartbeats,
//!   notifications.
//!
//! **Event numbers.** Event number n of a Subscription is the n-th event, in `seq` order after
//! its start `seq`, that matches its topic and filters, whether or not a socket is bound: a
//! function of the shared log alone, so every node computes the same numbers. One task per
//! node tails the log and counts for every Subscription; `(count, seq)` checkpoints are written
//! every [`CHECKPOINT_EVERY`] (only forward), so after a restart the numbers are recomputed
//! from the last checkpoint and the log, never reused. `$events` and each notification use the
//! same counting.
//!
//! **Revocation.** On every registry change that can narrow a client (deactivation, a new
//! ceiling or grant, a deleted application), every active Subscription is checked again with
//! the activation rule; one its client may no longer receive goes `off` with an error, and its
//! bound sockets get an `OperationOutcome` (`forbidden`) and stop receiving it, within the
//! registry's propagation (at once on this node).

pub(crate) mod http;
pub(crate) mod ws;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use scopecast_protocol::fhir::subscription::{SubscriptionSpec, parse_subscription};
use scopecast_protocol::fhir::topics::{TopicDef, filter_matches};
use scopecast_protocol::{Pattern, Timestamp, Topic};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::access::{Access, Denied};
use crate::cluster::Kek;
use crate::config::EnvironmentKind;
use crate::log::{EventLog, StoredEvent, TailItem};
use crate::metrics::Metrics;
use crate::registry::{
    FhirCheckpoint, Registry, RegistryChange, RegistryError, StoredFhirSubscription,
};

/// How often the numbering writes its checkpoints.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// The longest a binding token lives, seconds (never past the access token's `exp`).
pub(crate) const BINDING_TOKEN_S: i64 = 60;
/// `(count, seq)` pairs kept per Subscription in memory, so `$events` and late numbering start
/// near where they are asked for rather than at the Subscription's start.
const RECENT: usize = 256;
/// A count unchanged is written again after the numbering moved this far past its checkpoint
/// (so a restart recounts at most this many events for it).
const CHECKPOINT_SPAN: u64 = 100_000;
/// Notifications queued for one socket at most; past it the socket is closed (4008) and the
/// client fills its gap with `$events`.
pub(crate) const SOCKET_QUEUE: usize = 1024;
/// The actor of the service's own audit entries (a Subscription turned off).
pub(crate) const FHIR_ACTOR: &str = "scopecast (FHIR subscriptions)";

/// A Subscription as this node holds it: the stored row and what it asks for.
#[derive(Debug, Clone)]
pub(crate) struct Sub {
    pub(crate) stored: StoredFhirSubscription,
    pub(crate) spec: SubscriptionSpec,
    pub(crate) topic: TopicDef,
    pub(crate) broker_topic: Topic,
}

impl Sub {
    /// Whether `resource` (the event's payload) passes every filter.
    pub(crate) fn matches(&self, resource: &Value) -> bool {
        self.spec.filters.iter().all(|c| {
            self.topic
                .filter(&c.name)
                .is_some_and(|f| filter_matches(f, &c.value, resource))
        })
    }
}

/// One Subscription's count on this node.
#[derive(Debug, Clone)]
struct Counter {
    /// Matching events so far.
    count: u64,
    /// Every event up to this `seq` was considered.
    seq: u64,
    /// Recent `(count, seq)` pairs: `count` matching events up to `seq`, oldest first.
    recent: VecDeque<(u64, u64)>,
    /// Changed since the last checkpoint write.
    dirty: bool,
    /// The `seq` of the last checkpoint written.
    written: u64,
}

impl Counter {
    fn note(&mut self) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((self.count, self.seq));
        self.dirty = true;
    }
}

/// What the numbering hands a bound socket.
#[derive(Debug, Clone)]
pub(crate) enum Notice {
    /// Event number `number` of Subscription `sub`.
    Event {
        sub: String,
        number: u64,
        event: Arc<StoredEvent>,
    },
    /// Subscription `sub` may no longer be delivered (`off`): why.
    Revoked { sub: String, why: String },
}

/// A socket bound to a Subscription on this node.
struct Binding {
    socket: u64,
    tx: mpsc::Sender<Notice>,
    /// Set when a notification did not fit the socket's queue: it closes with 4008.
    overflow: Arc<std::sync::atomic::AtomicBool>,
}

/// What a binding token carries, sealed (opaque to its holder).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BindingClaims {
    /// The client ID.
    pub(crate) c: String,
    /// Its environment kind.
    pub(crate) k: String,
    /// The Subscriptions it binds.
    pub(crate) s: Vec<String>,
    /// Expiry, Unix seconds.
    pub(crate) x: i64,
    /// A random nonce: the single-use key.
    pub(crate) n: String,
}

/// Why a binding token was refused: the `OperationOutcome` code and message.
#[derive(Debug, Clone)]
pub(crate) struct BindRefused {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

/// The FHIR service. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Fhir(Arc<Inner>);

impl std::ops::Deref for Fhir {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub(crate) struct Inner {
    pub(crate) registry: Registry,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) access: Access,
    pub(crate) environment: EnvironmentKind,
    pub(crate) metrics: Arc<Metrics>,
    kek: Arc<Kek>,
    /// The topic catalogue.
    pub(crate) topics: Vec<TopicDef>,
    /// The FHIR base URL (`{public_url}/fhir`).
    pub(crate) base: String,
    /// The websocket channel's URL (`ws(s)://.../fhir/ws`).
    pub(crate) ws_url: String,
    /// Every Subscription, by id, as last loaded.
    subs: parking_lot::RwLock<HashMap<String, Arc<Sub>>>,
    /// Counts by Subscription id (the numbering task writes; readers copy).
    counters: parking_lot::Mutex<HashMap<String, Counter>>,
    /// Sockets bound on this node, by Subscription id.
    bindings: parking_lot::Mutex<HashMap<String, Vec<Binding>>>,
    /// The numbering task's position: every event up to it was counted.
    position: AtomicU64,
    /// Woken to reload the Subscriptions (a change this node made).
    reload: tokio::sync::Notify,
    /// Sockets open on this node with nothing bound yet (capped at [`ws::MAX_UNBOUND`]).
    pub(crate) unbound: std::sync::atomic::AtomicUsize,
    /// One reload at a time, so an older read never replaces a newer one.
    loading: tokio::sync::Mutex<()>,
    /// The webhook service: rest-hook Subscriptions are delivered by its engine.
    pub(crate) webhooks: crate::webhooks::Webhooks,
    next_socket: AtomicU64,
}

/// What [`Fhir::new`] takes.
pub(crate) struct FhirParts {
    pub(crate) registry: Registry,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) access: Access,
    pub(crate) environment: EnvironmentKind,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) kek: Arc<Kek>,
    pub(crate) topics: Vec<TopicDef>,
    pub(crate) public_url: String,
    pub(crate) webhooks: crate::webhooks::Webhooks,
}

fn now_s() -> i64 {
    Timestamp::now().unix_seconds()
}

fn now_ms() -> i64 {
    i64::try_from(Timestamp::now().unix_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl Fhir {
    pub(crate) fn new(parts: FhirParts) -> Fhir {
        let base = format!("{}/fhir", parts.public_url);
        let ws_url = format!(
            "{}/fhir/ws",
            parts
                .public_url
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1)
        );
        Fhir(Arc::new(Inner {
            registry: parts.registry,
            log: parts.log,
            access: parts.access,
            environment: parts.environment,
            metrics: parts.metrics,
            kek: parts.kek,
            topics: parts.topics,
            base,
            ws_url,
            subs: parking_lot::RwLock::new(HashMap::new()),
            counters: parking_lot::Mutex::new(HashMap::new()),
            bindings: parking_lot::Mutex::new(HashMap::new()),
            position: AtomicU64::new(0),
            reload: tokio::sync::Notify::new(),
            loading: tokio::sync::Mutex::new(()),
            unbound: std::sync::atomic::AtomicUsize::new(0),
            next_socket: AtomicU64::new(1),
            webhooks: parts.webhooks,
        }))
    }

    /// A handle that does not keep the service alive (the webhook engine's).
    pub(crate) fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.0)
    }

    /// The service again, while it lives.
    pub(crate) fn upgrade(weak: &std::sync::Weak<Inner>) -> Option<Fhir> {
        weak.upgrade().map(Fhir)
    }

    /// Reads a stored row into what it asks for; `None` (logged) when it no longer reads
    /// (a topic removed from the configuration).
    pub(crate) fn sub_of(&self, stored: StoredFhirSubscription) -> Option<Sub> {
        let resource: Value = serde_json::from_str(&stored.resource).ok()?;
        match parse_subscription(&resource, &self.topics) {
            Ok((spec, topic)) => {
                let broker_topic = Topic::new(&topic.broker_topic).ok()?;
                Some(Sub {
                    topic: topic.clone(),
                    spec,
                    broker_topic,
                    stored,
                })
            }
            Err(r) => {
                tracing::warn!(subscription = %stored.id, reason = %r.message, "a stored FHIR Subscription no longer reads; it is not served");
                None
            }
        }
    }

    /// The activation rule for a Subscription, at every delivery: its client ID active in this
    /// environment, its application's grant covering `subscribe:<topic>`, and for
    /// `full-resource` content the SMART read scope of the focus resource.
    pub(crate) fn may_deliver(&self, s: &Sub) -> Result<(), Denied> {
        self.access
            .check_push(&s.stored.client_id, self.environment, &s.broker_topic)?;
        if s.spec.content == scopecast_protocol::fhir::subscription::PayloadContent::FullResource {
            let read = read_scope(&s.topic.resource_type);
            if !read
                .as_ref()
                .is_some_and(|r| self.access.grant_covers(&s.stored.client_id, r))
            {
                return Err(Denied::Scope {
                    required_scope: format!("system/{}.rs", s.topic.resource_type),
                    whose: crate::access::Whose::Application,
                });
            }
        }
        Ok(())
    }

    /// The Subscription `id` as this node last loaded it.
    pub(crate) fn sub(&self, id: &str) -> Option<Arc<Sub>> {
        self.subs.read().get(id).cloned()
    }

    /// The Subscriptions of `client_id`, oldest first.
    pub(crate) fn subs_of(&self, client_id: &str) -> Vec<Arc<Sub>> {
        let mut out: Vec<Arc<Sub>> = self
            .subs
            .read()
            .values()
            .filter(|s| s.stored.client_id == client_id)
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            (a.stored.created_at_ms, &a.stored.id).cmp(&(b.stored.created_at_ms, &b.stored.id))
        });
        out
    }

    /// The current count of Subscription `id`; `None` until the numbering has counted it
    /// (just after a start, or a creation on another node).
    pub(crate) fn count(&self, id: &str) -> Option<u64> {
        self.counters.lock().get(id).map(|c| c.count)
    }

    /// Reloads the Subscriptions now (after a write of this node), and wakes the numbering.
    ///
    /// # Errors
    /// A storage failure.
    pub(crate) async fn refresh(&self) -> Result<(), RegistryError> {
        self.load_subs().await?;
        self.reload.notify_one();
        Ok(())
    }

    async fn load_subs(&self) -> Result<Vec<Arc<Sub>>, RegistryError> {
        let _one = self.loading.lock().await;
        let stored = self.registry.fhir_subscriptions().await?;
        let mut map = HashMap::new();
        let mut per_status: HashMap<(String, String), i64> = HashMap::new();
        for s in stored {
            *per_status
                .entry((s.client_id.clone(), s.status.clone()))
                .or_default() += 1;
            if let Some(sub) = self.sub_of(s) {
                map.insert(sub.stored.id.clone(), Arc::new(sub));
            }
        }
        self.metrics.fhir_subscriptions.reset();
        for ((client, status), n) in per_status {
            self.metrics
                .fhir_subscriptions
                .with_label_values(&[client.as_str(), status.as_str()])
                .set(n);
        }
        let subs: Vec<Arc<Sub>> = map.values().cloned().collect();
        let (gone, stopped): (Vec<String>, Vec<(String, String)>) = {
            let mut current = self.subs.write();
            let gone = current
                .keys()
                .filter(|k| !map.contains_key(*k))
                .cloned()
                .collect();
            // Active before, not now: turned off (by its client, or revoked on another node),
            // or its handshake failed.
            let stopped = current
                .iter()
                .filter(|(_, old)| old.stored.status == "active")
                .filter_map(|(id, _)| {
                    let new = map.get(id)?;
                    (new.stored.status != "active").then(|| {
                        let why = new.stored.error.clone().unwrap_or_else(|| {
                            format!("the Subscription is {}", new.stored.status)
                        });
                        (id.clone(), why)
                    })
                })
                .collect();
            *current = map;
            (gone, stopped)
        };
        for id in gone {
            self.revoke(&id, "the Subscription was deleted");
        }
        for (id, why) in stopped {
            self.revoke(&id, &why);
        }
        Ok(subs)
    }

    /// Registers a socket's binding to `sub`; the socket's id.
    pub(crate) fn bind(
        &self,
        sub: &str,
        socket: u64,
        tx: mpsc::Sender<Notice>,
        overflow: Arc<std::sync::atomic::AtomicBool>,
    ) {
        self.bindings
            .lock()
            .entry(sub.to_owned())
            .or_default()
            .push(Binding {
                socket,
                tx,
                overflow,
            });
    }

    /// Removes socket `socket`'s bindings (of `sub`, or all when `None`).
    pub(crate) fn unbind(&self, socket: u64, sub: Option<&str>) {
        let mut b = self.bindings.lock();
        b.retain(|id, list| {
            if sub.is_none_or(|s| s == id) {
                list.retain(|x| x.socket != socket);
            }
            !list.is_empty()
        });
    }

    /// A new socket id.
    pub(crate) fn next_socket(&self) -> u64 {
        self.next_socket.fetch_add(1, Ordering::Relaxed)
    }

    fn revoke(&self, sub: &str, why: &str) {
        let list = self.bindings.lock().remove(sub).unwrap_or_default();
        for b in list {
            let sent = b.tx.try_send(Notice::Revoked {
                sub: sub.to_owned(),
                why: why.to_owned(),
            });
            if let Err(mpsc::error::TrySendError::Full(_)) = sent {
                // A socket too far behind to be told is closed (4008).
                b.overflow.store(true, Ordering::Release);
            }
        }
    }

    /// Mints a binding token for `subs` of `client_id`, expiring at `expires` (Unix
    /// seconds, at most [`BINDING_TOKEN_S`] from now and never past the access token's `exp`).
    ///
    /// # Errors
    /// When sealing fails (the random source).
    pub(crate) fn mint_binding_token(
        &self,
        client_id: &str,
        subs: &[String],
        expires: i64,
    ) -> Result<String, String> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
        let claims = BindingClaims {
            c: client_id.to_owned(),
            k: self.environment.as_str().to_owned(),
            s: subs.to_vec(),
            x: expires,
            n: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nonce),
        };
        let plain = serde_json::to_vec(&claims).map_err(|e| e.to_string())?;
        let sealed = self.kek.seal(BINDING_AAD, &plain)?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
    }

    /// Redeems a binding token (once, on any node): the Subscriptions it binds, each checked
    /// again (it exists, belongs to the token's client ID, is `active`, and the client may
    /// still receive its topic).
    ///
    /// # Errors
    /// [`BindRefused`]: `security` for a token that does not open or was used already,
    /// `expired` past its expiry, `forbidden` when the client may no longer receive.
    pub(crate) async fn redeem(&self, token: &str) -> Result<(String, Vec<Arc<Sub>>), BindRefused> {
        let refused = |code, message: &str| BindRefused {
            code,
            message: message.to_owned(),
        };
        let claims: BindingClaims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim())
            .ok()
            .and_then(|b| self.kek.unseal(BINDING_AAD, &b).ok())
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or_else(|| {
                refused(
                    "security",
                    "the binding token is not valid here (get one with $get-ws-binding-token)",
                )
            })?;
        if claims.x <= now_s() {
            return Err(refused(
                "expired",
                "the binding token has expired: get a new one with $get-ws-binding-token",
            ));
        }
        if claims.k != self.environment.as_str() {
            return Err(refused(
                "security",
                "the binding token is of another environment",
            ));
        }
        match self
            .registry
            .remember_jti(&format!("fhir-bind {}", claims.n), claims.x, now_s())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return Err(refused(
                    "security",
                    "the binding token was used already: a token binds once (get a new one with $get-ws-binding-token)",
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "a binding token could not be checked");
                return Err(refused(
                    "transient",
                    "the binding token could not be checked now; retry",
                ));
            }
        }
        let mut subs = Vec::new();
        for id in &claims.s {
            let Some(sub) = self.sub(id).filter(|s| s.stored.client_id == claims.c) else {
                return Err(refused("not-found", &format!("Subscription {id} is gone")));
            };
            if let Err(d) = self.may_deliver(&sub) {
                return Err(refused("forbidden", &denied_words(&d)));
            }
            if sub.stored.status != "active" {
                return Err(refused(
                    "processing",
                    &format!(
                        "Subscription {id} is {} ({}): update it to status requested to start it again",
                        sub.stored.status,
                        sub.stored.error.as_deref().unwrap_or("no reason given")
                    ),
                ));
            }
            subs.push(sub);
        }
        Ok((claims.c, subs))
    }

    /// Runs the numbering and the revocation checks until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut changes = self.registry.changes();
        loop {
            match self.numbering(&mut changes, &shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "FHIR numbering stopped; starting again in 1 s");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    async fn numbering(
        &self,
        changes: &mut broadcast::Receiver<RegistryChange>,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let epoch = self.log.epoch().to_owned();
        // Every count starts again from its stored checkpoint (also after this task stopped
        // on an error: counts it held may have missed events since).
        self.counters.lock().clear();
        self.load_subs().await.map_err(|e| e.to_string())?;
        // The log is tailed only while there is a Subscription to count for (a JetStream tail
        // is a consumer on the servers).
        let mut tail: Option<crate::log::Tail> = None;
        self.follow(&epoch, &mut tail).await?;
        self.recheck().await;
        let mut checkpoint = tokio::time::interval(CHECKPOINT_EVERY);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut index = self.topic_index();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.write_checkpoints(&epoch).await;
                    return Ok(());
                }
                item = async { tail.as_mut()?.next().await }, if tail.is_some() => match item {
                    Some(TailItem::Event(e)) => {
                        self.count_event(&index, &e);
                        self.position.store(e.seq, Ordering::Release);
                    }
                    Some(TailItem::Gap { from, to }) => {
                        // This node cannot count events that left the log before it read
                        // them: every count starts again from its stored checkpoint (another
                        // node may have counted them) and the retained log.
                        tracing::warn!(from, to, "FHIR numbering: events left the log before this node counted them; counts reloaded from their checkpoints");
                        self.position.store(to, Ordering::Release);
                        self.counters.lock().clear();
                        self.sync_counters(&epoch).await?;
                    }
                    None => return Err("the event log's tail ended".to_owned()),
                },
                () = self.reload.notified() => {
                    self.follow(&epoch, &mut tail).await?;
                    index = self.topic_index();
                }
                change = changes.recv() => {
                    let (reload, recheck) = match &change {
                        Ok(RegistryChange::FhirSubscriptionChanged { .. }) => (true, false),
                        Ok(RegistryChange::ClientDeactivated { .. }
                            | RegistryChange::CeilingChanged { .. }
                            | RegistryChange::ApplicationDeleted { .. }) => (false, true),
                        Ok(_) => (false, false),
                        Err(broadcast::error::RecvError::Lagged(_)) => (true, true),
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    };
                    if reload {
                        self.load_subs().await.map_err(|e| e.to_string())?;
                        self.follow(&epoch, &mut tail).await?;
                        index = self.topic_index();
                    }
                    if recheck {
                        self.recheck().await;
                    }
                }
                _ = checkpoint.tick(), if tail.is_some() => self.write_checkpoints(&epoch).await,
            }
        }
    }

    /// After the Subscriptions were (re)loaded: with none, no tail; with some, a tail (from
    /// the log's head when a new one starts) and every new Subscription counted up to the
    /// numbering's position.
    async fn follow(&self, epoch: &str, tail: &mut Option<crate::log::Tail>) -> Result<(), String> {
        if self.subs.read().is_empty() {
            if tail.take().is_some() {
                self.counters.lock().clear();
            }
            return Ok(());
        }
        if tail.is_none() {
            let head = self.log.fresh_bounds().await.last;
            self.position.store(head, Ordering::Release);
            self.sync_counters(epoch).await?;
            *tail = Some(self.log.tail(head + 1));
            return Ok(());
        }
        self.sync_counters(epoch).await
    }

    /// Subscription ids by broker topic.
    fn topic_index(&self) -> HashMap<Topic, Vec<Arc<Sub>>> {
        let mut out: HashMap<Topic, Vec<Arc<Sub>>> = HashMap::new();
        for s in self.subs.read().values() {
            out.entry(s.broker_topic.clone())
                .or_default()
                .push(s.clone());
        }
        out
    }

    /// Counts `e` for every Subscription of its topic that has not considered it yet, and
    /// hands its notification to the sockets bound here.
    fn count_event(&self, index: &HashMap<Topic, Vec<Arc<Sub>>>, e: &Arc<StoredEvent>) {
        let Some(subs) = index.get(&e.topic) else {
            return;
        };
        // The payload is parsed once per event, and only when a filter needs it.
        let resource: Value = if subs.iter().any(|s| !s.spec.filters.is_empty()) {
            serde_json::from_str(e.data.get()).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        let mut notify = Vec::new();
        {
            let mut counters = self.counters.lock();
            for s in subs {
                let Some(c) = counters.get_mut(&s.stored.id) else {
                    continue;
                };
                if c.seq >= e.seq {
                    continue;
                }
                c.seq = e.seq;
                if s.matches(&resource) {
                    c.count += 1;
                    c.note();
                    notify.push((s.clone(), c.count));
                }
            }
        }
        for (s, number) in notify {
            self.dispatch(&s, number, e);
        }
    }

    fn dispatch(&self, s: &Sub, number: u64, e: &Arc<StoredEvent>) {
        if s.stored.status != "active" || self.may_deliver(s).is_err() {
            return;
        }
        let bindings = self.bindings.lock();
        for b in bindings.get(&s.stored.id).into_iter().flatten() {
            let sent = b.tx.try_send(Notice::Event {
                sub: s.stored.id.clone(),
                number,
                event: e.clone(),
            });
            if let Err(mpsc::error::TrySendError::Full(_)) = sent {
                // The socket closes with 4008; its client fills the gap with `$events`.
                b.overflow.store(true, Ordering::Release);
            }
        }
    }

    /// Brings the counters in line with the loaded Subscriptions: new ones start from their
    /// checkpoint and count the log up to the numbering's position; deleted ones go.
    async fn sync_counters(&self, epoch: &str) -> Result<(), String> {
        let subs: Vec<Arc<Sub>> = self.subs.read().values().cloned().collect();
        let position = self.position.load(Ordering::Acquire);
        {
            let mut counters = self.counters.lock();
            counters.retain(|id, _| subs.iter().any(|s| &s.stored.id == id));
        }
        for s in subs {
            if self.counters.lock().contains_key(&s.stored.id) {
                continue;
            }
            let st = &s.stored;
            let (count, seq) = if st.epoch == epoch {
                // `count_seq` is of `epoch`'s log (the start, or the last checkpoint).
                (st.count, st.count_seq)
            } else {
                // Another log (a new stream, a restored backup): its `seq`s mean nothing here.
                // Numbers go on from the stored count, never reused.
                (st.count, position)
            };
            let mut c = Counter {
                count,
                seq,
                recent: VecDeque::new(),
                dirty: st.epoch != epoch,
                written: seq,
            };
            c.recent.push_back((count, seq));
            if c.seq < position {
                self.catch_up(&s, &mut c, position).await?;
            }
            self.counters.lock().insert(st.id.clone(), c);
        }
        Ok(())
    }

    /// Counts the log's events `c.seq + 1 ..= until` for `s`.
    async fn catch_up(&self, s: &Sub, c: &mut Counter, until: u64) -> Result<(), String> {
        while c.seq < until {
            let batch = self
                .log
                .read_from(c.seq + 1, 1024)
                .await
                .map_err(|e| e.to_string())?;
            if batch.is_empty() {
                c.seq = until;
                break;
            }
            for e in batch {
                if e.seq > until {
                    c.seq = until;
                    break;
                }
                c.seq = e.seq;
                if e.topic == s.broker_topic
                    && s.matches(&serde_json::from_str(e.data.get()).unwrap_or(Value::Null))
                {
                    c.count += 1;
                    c.note();
                }
            }
        }
        c.dirty = true;
        Ok(())
    }

    async fn write_checkpoints(&self, epoch: &str) {
        let position = self.position.load(Ordering::Acquire);
        let writes: Vec<FhirCheckpoint> = {
            let mut counters = self.counters.lock();
            counters
                .iter_mut()
                .filter_map(|(id, c)| {
                    c.seq = c.seq.max(position);
                    if !c.dirty && c.seq < c.written + CHECKPOINT_SPAN {
                        return None;
                    }
                    c.dirty = false;
                    c.written = c.seq;
                    Some(FhirCheckpoint {
                        id: id.clone(),
                        epoch: epoch.to_owned(),
                        count: c.count,
                        seq: c.seq,
                    })
                })
                .collect()
        };
        if let Err(e) = self.registry.checkpoint_fhir_subscriptions(&writes).await {
            tracing::warn!(error = %e, "FHIR numbering checkpoints could not be written; they are written again later");
            let mut counters = self.counters.lock();
            for w in writes {
                if let Some(c) = counters.get_mut(&w.id) {
                    c.dirty = true;
                }
            }
        }
    }

    /// Checks every active Subscription with the activation rule; turns `off` the ones whose
    /// client may no longer receive their topic.
    async fn recheck(&self) {
        let subs: Vec<Arc<Sub>> = self.subs.read().values().cloned().collect();
        // Every socket is told first; the writes follow.
        let mut refused = Vec::new();
        for s in subs {
            if s.stored.status == "off" {
                continue;
            }
            let Err(d) = self.may_deliver(&s) else {
                continue;
            };
            let why = denied_words(&d);
            self.revoke(&s.stored.id, &why);
            refused.push((s, why));
        }
        for (s, why) in refused {
            if s.spec.channel == scopecast_protocol::fhir::subscription::ChannelType::RestHook {
                self.pause_endpoint(&s.stored.id, &why).await;
            }
            let mut row = s.stored.clone();
            row.status = "off".to_owned();
            row.error = Some(why.clone());
            row.updated_at_ms = now_ms();
            match self
                .registry
                .update_fhir_subscription(
                    &row,
                    FHIR_ACTOR,
                    "fhir.subscription.off",
                    serde_json::json!({"subscription_id": row.id, "reason": why}),
                )
                .await
            {
                // Written here, or by another node first: either way reloaded from the feed.
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(subscription = %row.id, error = %e, "a revoked FHIR Subscription could not be marked off; its deliveries are stopped on this node");
                }
            }
        }
    }

    /// The count of Subscription `s` now, through which `seq` (every event up to it counted),
    /// and its recent `(count, seq)` pairs: a snapshot to count from.
    fn snapshot(&self, s: &Sub) -> Option<Snapshot> {
        // Every event up to the numbering's position was counted: read it before the counts.
        let position = self.position.load(Ordering::Acquire);
        let counters = self.counters.lock();
        let c = counters.get(&s.stored.id)?;
        Some((
            c.count,
            c.seq.max(position),
            c.recent.iter().copied().collect(),
        ))
    }

    /// Calls `each` for every event of the log in `from..=to` that `s` counts (its topic, its
    /// filters), in `seq` order, until `each` says stop.
    async fn scan(
        &self,
        s: &Sub,
        from: u64,
        to: u64,
        mut each: impl FnMut(Arc<StoredEvent>) -> bool,
    ) -> Result<(), String> {
        let mut next = from;
        while next <= to {
            let batch = self
                .log
                .read_from(next, 1024)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = batch.last().map(|e| e.seq) else {
                return Ok(());
            };
            for e in batch {
                if e.seq > to {
                    return Ok(());
                }
                if e.topic == s.broker_topic
                    && s.matches(&serde_json::from_str(e.data.get()).unwrap_or(Value::Null))
                    && !each(e)
                {
                    return Ok(());
                }
            }
            next = last + 1;
        }
        Ok(())
    }

    /// A `(count, seq)` pair of `s` with `count < number` (so counting forward from it reaches
    /// `number`): the nearest recent one; else one worked out backwards from the current count
    /// over the retained log (`count - matches in first..=upto`, at `first - 1`), which needs
    /// no event that retention removed.
    async fn anchor_below(
        &self,
        s: &Sub,
        number: u64,
        count: u64,
        upto: u64,
        recent: &[(u64, u64)],
    ) -> Result<(u64, u64), String> {
        if let Some(p) = recent.iter().rev().find(|(n, _)| *n < number) {
            return Ok(*p);
        }
        let first = self.log.fresh_bounds().await.first;
        let mut matches = 0u64;
        self.scan(s, first, upto, |_| {
            matches += 1;
            true
        })
        .await?;
        Ok((count.saturating_sub(matches), first.saturating_sub(1)))
    }

    /// The events numbered `since..=until` of Subscription `s` (at most `limit`), with their
    /// numbers, counted from the log as the numbering counts them.
    ///
    /// # Errors
    /// A sentence when the Subscription is not counted yet, the events asked for left the log
    /// (retention), or the log cannot be read.
    pub(crate) async fn events(
        &self,
        s: &Sub,
        since: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Arc<StoredEvent>)>, String> {
        let (count, upto, recent) = self
            .snapshot(s)
            .ok_or_else(|| "the Subscription is still being counted; retry".to_owned())?;
        let until = until.min(count);
        if since > until {
            return Ok(Vec::new());
        }
        let (mut n, seq) = self.anchor_below(s, since, count, upto, &recent).await?;
        if n >= since {
            return Err(format!(
                "events numbered {since} to {} have left the event log (retention); the oldest still listed is number {}",
                n.min(until),
                n + 1
            ));
        }
        let mut out = Vec::new();
        self.scan(s, seq + 1, upto, |e| {
            n += 1;
            if n >= since {
                out.push((n, e));
            }
            n < until && out.len() < limit
        })
        .await?;
        Ok(out)
    }

    /// The number of the matching event at `seq` of Subscription `s` (the webhook engine
    /// delivering a rest-hook Subscription asks it), once the numbering has counted that far:
    /// counted forward from the nearest recent pair below it, else backwards from the current
    /// count (events after `seq` are retained, since `seq` is).
    ///
    /// # Errors
    /// [`NumberError::NotYet`] when the numbering has not reached `seq` within 30 s (ask
    /// again later); [`NumberError::Failed`] when the log cannot be read or the event does not
    /// match.
    pub(crate) async fn number_at(&self, s: &Sub, seq: u64) -> Result<u64, NumberError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (count, upto, recent) = loop {
            if let Some(snap) = self.snapshot(s)
                && snap.1 >= seq
            {
                break snap;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NumberError::NotYet);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if let Some((n, _)) = recent.iter().rev().find(|(_, q)| *q == seq) {
            return Ok(*n);
        }
        let failed = |why: String| NumberError::Failed(why);
        let mut number = None;
        if let Some(&(n0, q0)) = recent.iter().rev().find(|(_, q)| *q < seq) {
            let mut n = n0;
            self.scan(s, q0 + 1, seq, |e| {
                n += 1;
                if e.seq == seq {
                    number = Some(n);
                }
                true
            })
            .await
            .map_err(failed)?;
        } else {
            let mut after = 0u64;
            let mut found = false;
            self.scan(s, seq, upto, |e| {
                if e.seq == seq {
                    found = true;
                } else {
                    after += 1;
                }
                true
            })
            .await
            .map_err(failed)?;
            if found {
                number = Some(count.saturating_sub(after));
            }
        }
        number.ok_or_else(|| {
            failed(format!(
                "the event at seq {seq} does not match the Subscription"
            ))
        })
    }

    /// The notification Bundle of the event `e` for the rest-hook Subscription `s`.
    ///
    /// # Errors
    /// As [`Fhir::number_at`].
    pub(crate) async fn rest_hook_body(
        &self,
        s: &Sub,
        e: &Arc<StoredEvent>,
    ) -> Result<String, NumberError> {
        let number = self.number_at(s, e.seq).await?;
        let resource: Value = serde_json::from_str(e.data.get()).unwrap_or(Value::Null);
        let event = http::notification_event(number, e, &resource, &s.topic);
        let mut info =
            http::status_info(&self.base, s, "event-notification", number, s.spec.content);
        info.status = "active";
        Ok(scopecast_protocol::fhir::notify::notification_bundle(
            &info,
            &[event],
            &uuid::Uuid::new_v4().to_string(),
            &uuid::Uuid::new_v4().to_string(),
            Timestamp::now(),
        ))
    }

    /// The webhook endpoint delivering the rest-hook Subscription `id`.
    ///
    /// # Errors
    /// A storage failure.
    pub(crate) async fn endpoint_of(
        &self,
        id: &str,
    ) -> Result<Option<crate::registry::StoredWebhook>, RegistryError> {
        Ok(self
            .registry
            .webhooks()
            .await?
            .into_iter()
            .find(|w| w.fhir_subscription_id.as_deref() == Some(id)))
    }

    /// The status and error of `s` as a client sees them: a rest-hook Subscription whose
    /// endpoint the engine disabled (410, failing past the retry window) is `error`.
    pub(crate) async fn effective_status(&self, s: &Sub) -> (String, Option<String>) {
        if s.spec.channel != scopecast_protocol::fhir::subscription::ChannelType::RestHook
            || s.stored.status != "active"
        {
            return (s.stored.status.clone(), s.stored.error.clone());
        }
        let endpoints = self.registry.webhooks().await.unwrap_or_default();
        effective_status_in(s, &endpoints)
    }

    /// Sends the handshake of the rest-hook Subscription `id` (a `handshake` Bundle, signed
    /// as every delivery) and sets its status: `active`, its endpoint resumed, when the
    /// endpoint answers 2xx; `error` otherwise (FHIR.md "Rest-hook channel").
    pub(crate) async fn handshake(&self, id: &str) {
        // The Subscription as the request that asked for the handshake wrote it: the outcome
        // is written only over that version, so an `off` written meanwhile (by its client, or
        // a revocation) wins, and the endpoint stays paused.
        let Some(asked) = self.sub(id) else { return };
        let outcome = match self.try_handshake(&asked).await {
            Ok(()) => self
                .may_deliver(&asked)
                .map_err(|d| format!("{} (after the handshake)", denied_words(&d))),
            Err(why) => Err(why),
        };
        let mut row = asked.stored.clone();
        match &outcome {
            Ok(()) => {
                row.status = "active".to_owned();
                row.error = None;
            }
            Err(why) => {
                row.status = "error".to_owned();
                row.error = Some(format!("handshake failed: {why}"));
            }
        }
        row.updated_at_ms = now_ms();
        let detail = serde_json::json!({"subscription_id": id, "status": row.status});
        match self
            .registry
            .update_fhir_subscription(&row, FHIR_ACTOR, "fhir.subscription.handshake", detail)
            .await
        {
            Ok(true) => {
                let _ = self.refresh().await;
                if outcome.is_ok()
                    && let Ok(Some(w)) = self.endpoint_of(id).await
                    && let Err(e) = self.webhooks.set_paused(&w.id, false, "", FHIR_ACTOR).await
                {
                    tracing::warn!(subscription = %id, error = %e, "the rest-hook endpoint could not be resumed after its handshake");
                }
            }
            Ok(false) => {
                tracing::info!(subscription = %id, "the Subscription changed during its handshake; the handshake's outcome is dropped");
            }
            Err(e) => {
                tracing::warn!(subscription = %id, error = %e, "the handshake's outcome could not be stored");
            }
        }
    }

    async fn try_handshake(&self, sub: &Sub) -> Result<(), String> {
        use crate::webhooks::endpoint::Keys;
        use crate::webhooks::policy::Answer;
        let id = sub.stored.id.as_str();
        let w = self
            .endpoint_of(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("its webhook endpoint is gone")?;
        if let Err(d) =
            self.access
                .check_push(&sub.stored.client_id, self.environment, &sub.broker_topic)
        {
            return Err(denied_words(&d));
        }
        let keys = Keys::unseal(&self.kek, &w.id, &w.sealed)?;
        let count = self.count(id).unwrap_or(sub.stored.count);
        let mut info = http::status_info(&self.base, sub, "handshake", count, sub.spec.content);
        info.status = "requested";
        info.error = None;
        let body = scopecast_protocol::fhir::notify::notification_bundle(
            &info,
            &[],
            &uuid::Uuid::new_v4().to_string(),
            &uuid::Uuid::new_v4().to_string(),
            Timestamp::now(),
        );
        let message_id = format!("msg_{}_handshake_{}", w.id, uuid::Uuid::new_v4().simple());
        let signers = keys.signing(now_ms());
        let delivery = crate::webhooks::send::Delivery {
            url: &w.url,
            message_id: &message_id,
            body: bytes::Bytes::from(body),
            signers: &signers,
            headers: &keys.headers,
            content_type: &sub.spec.mime,
        };
        let attempted = self.webhooks.sender().send(&delivery).await;
        match attempted.answer {
            Answer::Status { code, .. } if (200..300).contains(&code) => {
                self.metrics
                    .fhir_notifications
                    .with_label_values(&[sub.stored.client_id.as_str(), "rest-hook", "handshake"])
                    .inc();
                Ok(())
            }
            Answer::Status { code, .. } => Err(format!("the endpoint answered {code}")),
            Answer::NoAnswer => Err(attempted.error.unwrap_or_else(|| "no answer".to_owned())),
        }
    }

    /// Pauses the endpoint of the rest-hook Subscription `id` (it went off).
    pub(crate) async fn pause_endpoint(&self, id: &str, why: &str) {
        if let Ok(Some(w)) = self.endpoint_of(id).await
            && w.state == crate::registry::WebhookState::Active
            && let Err(e) = self.webhooks.set_paused(&w.id, true, why, FHIR_ACTOR).await
        {
            tracing::warn!(subscription = %id, error = %e, "the rest-hook endpoint could not be paused");
        }
    }

    /// A Subscription resource as the server shows it: the stored resource with the server's
    /// `id`, `status` and `error`.
    pub(crate) fn resource_of(&self, stored: &StoredFhirSubscription) -> Value {
        let mut v: Value = serde_json::from_str(&stored.resource).unwrap_or(Value::Null);
        v["id"] = Value::String(stored.id.clone());
        v["status"] = Value::String(stored.status.clone());
        match &stored.error {
            Some(e) => v["error"] = Value::String(e.clone()),
            None => {
                if let Some(o) = v.as_object_mut() {
                    o.remove("error");
                }
            }
        }
        v["meta"] = serde_json::json!({
            "versionId": stored.version.to_string(),
            "lastUpdated": Timestamp::from_unix_ms(stored.updated_at_ms)
                .unwrap_or_else(|_| Timestamp::now())
                .to_string(),
            "profile": [scopecast_protocol::fhir::subscription::SUBSCRIPTION_PROFILE],
        });
        v
    }
}

/// A Subscription's count now, the `seq` it counts through, and its recent `(count, seq)`
/// pairs.
type Snapshot = (u64, u64, Vec<(u64, u64)>);

/// Why [`Fhir::number_at`] has no number.
#[derive(Debug, Clone)]
pub(crate) enum NumberError {
    /// The numbering has not counted that far yet: ask again later.
    NotYet,
    /// It cannot be numbered (the log cannot be read, the event does not match).
    Failed(String),
}

/// The status and error of `s` as a client sees them, with the webhook endpoints `endpoints`
/// (read once for many Subscriptions): `error` when its rest-hook endpoint was disabled.
pub(crate) fn effective_status_in(
    s: &Sub,
    endpoints: &[crate::registry::StoredWebhook],
) -> (String, Option<String>) {
    let stored = (s.stored.status.clone(), s.stored.error.clone());
    if s.stored.status != "active" {
        return stored;
    }
    match endpoints
        .iter()
        .find(|w| w.fhir_subscription_id.as_deref() == Some(s.stored.id.as_str()))
    {
        Some(w) if w.state == crate::registry::WebhookState::Disabled => (
            "error".to_owned(),
            Some(format!(
                "deliveries failed: {}",
                w.state_reason
                    .as_deref()
                    .unwrap_or("the endpoint was disabled")
            )),
        ),
        _ => stored,
    }
}

/// The associated data binding tokens are sealed with.
const BINDING_AAD: &str = "fhir-binding-token";

/// A refusal of the activation rule in words.
pub(crate) fn denied_words(d: &Denied) -> String {
    match d {
        Denied::Inactive => "the client ID is not active in this environment".to_owned(),
        Denied::Scope {
            required_scope,
            whose,
        } => format!("{} does not include {required_scope}", whose.words()),
    }
}

/// The SMART v2 system read scope of a resource type (`system/Encounter.rs`).
pub(crate) fn read_scope(resource_type: &str) -> Option<scopecast_protocol::Scope> {
    scopecast_protocol::ScopeSet::parse_ceiling(&format!("system/{resource_type}.rs"))
        .ok()
        .and_then(|set| set.iter().next().cloned())
}

/// `subscribe:<topic>` as a pattern.
pub(crate) fn pattern_of(topic: &Topic) -> Pattern {
    Pattern::from(topic.clone())
}
