//! The publish path and fan-out (DESIGN section 1).
//!
//! One sequencer task owns `seq` assignment: publishers (WebSocket sessions and the HTTP
//! publish API) send it [`PublishRequest`]s over a bounded channel; it takes them in batches,
//! assigns consecutive `seq`s, appends the batch to the [`EventLog`], encodes each `event`
//! frame once, and offers the same shared bytes to every matching [`Subscriber`] without
//! awaiting any of them; then it acknowledges. One sequencer means events reach every session
//! in `seq` order, and a batch is one log append (group commit).
//!
//! - `index`: [`TopicIndex`], exact topics in a `DashMap` plus a wildcard trie.
//! - `outbox`: [`Outbox`], a session's byte-bounded outbound queue.

pub mod dedupe;
pub mod index;
pub mod outbox;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use scopecast_protocol::{
    EventId, Pattern, Published, RawJson, RequestId, ServerFrame, Timestamp, Topic, encode_event,
};
use tokio::sync::{mpsc, oneshot};

pub use index::TopicIndex;
pub use outbox::{Kind, Outbox, PushError, Queued};

use crate::log::{EventLog, StoredEvent};
use crate::metrics::{ClientStats, Metrics};

/// Most requests the sequencer takes in one batch.
const MAX_BATCH: usize = 512;

/// A session as the fan-out sees it: its outbound queue, and the newest `seq` queued to it
/// (so a session whose subscriptions overlap gets each event once).
#[derive(Debug)]
pub struct Subscriber {
    /// The session's id (for logs and tests).
    pub session_id: u64,
    /// The session's OAuth2 client ID.
    pub client_id: Arc<str>,
    /// Its outbound queue.
    pub outbox: Outbox,
    /// Its client ID's counters (shared by the client's sessions).
    pub stats: Arc<ClientStats>,
    /// Events written to this session's socket (by the session task).
    pub delivered: AtomicU64,
    /// Events this session published that were stored (by the sequencer).
    pub published: AtomicU64,
    /// Newest `seq` queued; written only by the sequencer.
    last_seq: AtomicU64,
    /// Events accepted after this instant (Unix ms) are not queued: the session's token has
    /// expired by then (its `exp` plus the leeway). Moved forward by each refresh.
    deadline_ms: AtomicI64,
    /// While a replay runs, live events wait here (in order, bounded by the outbox limit) so
    /// that the replayed ones go out first.
    holding: std::sync::atomic::AtomicBool,
    hold: Mutex<Option<(std::collections::VecDeque<Queued>, usize)>>,
}

impl Subscriber {
    /// A subscriber with an empty queue of at most `queue_bytes` bytes, counting into `stats`.
    pub fn new(
        session_id: u64,
        client_id: Arc<str>,
        queue_bytes: usize,
        stats: Arc<ClientStats>,
    ) -> Subscriber {
        Subscriber {
            session_id,
            client_id,
            outbox: Outbox::new(queue_bytes),
            stats,
            delivered: AtomicU64::new(0),
            published: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            deadline_ms: AtomicI64::new(i64::MAX),
            holding: std::sync::atomic::AtomicBool::new(false),
            hold: Mutex::new(None),
        }
    }

    /// Starts holding live events back (a replay is about to run).
    pub fn hold(&self) {
        *self.hold.lock() = Some((std::collections::VecDeque::new(), 0));
        self.holding.store(true, Ordering::Release);
    }

    /// Queues the live events held back, in order, and stops holding.
    pub fn release(&self) {
        let mut hold = self.hold.lock();
        if let Some((held, _)) = hold.take() {
            for frame in held {
                if self.outbox.push(frame).is_err() {
                    break;
                }
            }
        }
        self.holding.store(false, Ordering::Release);
    }

    /// Sets the instant (Unix ms) after which no event is queued to this session.
    pub fn set_deadline_ms(&self, ms: i64) {
        self.deadline_ms.store(ms, Ordering::Release);
    }

    /// Queues event `seq` unless this session already has it. Returns true when queued.
    fn offer(&self, seq: u64, time_ms: i64, frame: &Queued, metrics: &Metrics) -> bool {
        if time_ms > self.deadline_ms.load(Ordering::Acquire) {
            return false;
        }
        if self.last_seq.fetch_max(seq, Ordering::Relaxed) >= seq {
            return false;
        }
        if self.holding.load(Ordering::Acquire) {
            let mut hold = self.hold.lock();
            if let Some((held, bytes)) = hold.as_mut() {
                *bytes += frame.text.len();
                if *bytes > self.outbox.limit_bytes() {
                    drop(hold);
                    self.outbox.close(
                        scopecast_protocol::CloseCode::SlowConsumer,
                        "live events overflowed during a replay",
                        false,
                    );
                    metrics.slow_consumer_closes.inc();
                    return false;
                }
                held.push_back(frame.clone());
                return true;
            }
        }
        match self.outbox.push(frame.clone()) {
            Ok(()) => true,
            Err(PushError::Overflow) => {
                metrics.slow_consumer_closes.inc();
                tracing::info!(session = self.session_id, client_id = %self.client_id, "slow consumer: closing with 4008");
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    /// Queues a reply frame (not an event).
    ///
    /// # Errors
    /// As [`Outbox::push`].
    pub fn reply(&self, frame: &ServerFrame) -> Result<(), PushError> {
        self.outbox
            .push(Queued::reply(Utf8Bytes::from(frame.encode())))
    }

    /// Counts an event this session published that was stored.
    pub fn count_published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.stats.published.fetch_add(1, Ordering::Relaxed);
    }
}

/// Who is waiting for a publish acknowledgement.
pub enum Reply {
    /// A WebSocket session: the sequencer queues `published` (or `error`) to it directly.
    Session {
        /// The publishing session.
        subscriber: Arc<Subscriber>,
        /// The `publish` frame's id.
        id: RequestId,
        /// The publish rate it took a token from: a duplicate gives the token back.
        rate: crate::session::RateLimiter,
    },
    /// An HTTP request handler, waiting on a channel.
    Http(oneshot::Sender<Result<Ack, Refusal>>),
}

/// Why a publish was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The event log could not store the batch; nothing was stored.
    #[error("the event log cannot store events right now: {0}")]
    Unavailable(String),
    /// The `event_id` was seen within the idempotency window with another topic or payload.
    #[error("this event_id was already used for another topic or payload")]
    EventIdConflict,
}

/// A stored event's place.
#[derive(Debug, Clone)]
pub struct Ack {
    /// Its `seq`.
    pub seq: u64,
    /// Its event id.
    pub event_id: EventId,
    /// True when the event id was stored before (within the idempotency window): nothing
    /// was stored or delivered again.
    pub duplicate: bool,
}

/// One event to publish.
pub struct PublishRequest {
    /// The concrete topic, already authorised.
    pub topic: Topic,
    /// The payload, already checked.
    pub data: RawJson,
    /// The publisher's event id, if any.
    pub event_id: Option<EventId>,
    /// Where the acknowledgement goes.
    pub reply: Reply,
}

/// The sequencer has stopped (the broker is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the broker is shutting down")]
pub struct BusClosed;

/// Handle to the publish path and the topic index. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    tx: mpsc::Sender<PublishRequest>,
    index: Arc<TopicIndex>,
    /// The newest `seq` fanned out. The sequencer holds this lock while it fans a batch out;
    /// a subscribe holds it while it joins the index, so a new subscription gets exactly the
    /// events after the `head_seq` it is told.
    head: Arc<Mutex<u64>>,
    /// False from a failed append until the log takes writes again (`/readyz`).
    writable: Arc<std::sync::atomic::AtomicBool>,
}

impl Bus {
    /// Starts the sequencer over `log`; it runs until every `Bus` clone is dropped.
    /// `idempotency` is how long an `event_id` is remembered, and how many at most.
    pub fn start(
        log: Arc<dyn EventLog>,
        metrics: Arc<Metrics>,
        queue: usize,
        idempotency: (std::time::Duration, usize),
    ) -> (Bus, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let index = Arc::new(TopicIndex::default());
        let head = Arc::new(Mutex::new(log.last_seq()));
        let writable = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let seq = Sequencer {
            writable: writable.clone(),
            rx,
            log,
            index: index.clone(),
            head: head.clone(),
            dedupe: dedupe::Dedupe::new(idempotency.0, idempotency.1),
            window: idempotency.0,
            metrics,
        };
        let task = tokio::spawn(seq.run());
        (
            Bus {
                tx,
                index,
                head,
                writable,
            },
            task,
        )
    }

    /// False from a failed append until the log takes writes again.
    pub fn log_writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// Marks the log as taking writes again (a probe succeeded).
    pub fn set_log_writable(&self, metrics: &Metrics) {
        self.writable.store(true, Ordering::Release);
        metrics.log_writable.set(1);
    }

    /// Hands an event to the sequencer, waiting only while its queue is full.
    ///
    /// # Errors
    /// [`BusClosed`] when the broker is shutting down.
    pub async fn publish(&self, req: PublishRequest) -> Result<(), BusClosed> {
        self.tx.send(req).await.map_err(|_| BusClosed)
    }

    /// Adds `sub` under `pattern` and returns the newest `seq` already fanned out: every
    /// matching event after it will be offered to `sub`. `on_joined` runs under the same lock
    /// (to queue `subscribed` before any of those events).
    pub fn subscribe(
        &self,
        pattern: &Pattern,
        sub: &Arc<Subscriber>,
        on_joined: impl FnOnce(u64),
    ) -> u64 {
        let head = self.head.lock();
        self.index.insert(pattern, sub);
        on_joined(*head);
        *head
    }

    /// Removes `sub` from under `pattern`. Events being fanned out right now finish first.
    pub fn unsubscribe(&self, pattern: &Pattern, sub: &Arc<Subscriber>) {
        let _head = self.head.lock();
        self.index.remove(pattern, sub);
    }

    /// The newest `seq` fanned out.
    pub fn head_seq(&self) -> u64 {
        *self.head.lock()
    }

    /// The index (for metrics and tests).
    pub fn index(&self) -> &TopicIndex {
        &self.index
    }
}

struct Sequencer {
    rx: mpsc::Receiver<PublishRequest>,
    writable: Arc<std::sync::atomic::AtomicBool>,
    log: Arc<dyn EventLog>,
    index: Arc<TopicIndex>,
    head: Arc<Mutex<u64>>,
    metrics: Arc<Metrics>,
    dedupe: dedupe::Dedupe,
    window: std::time::Duration,
}

impl Sequencer {
    /// After a restart, remembers the event ids stored within the idempotency window.
    async fn remember_recent(&mut self) {
        if self.window.is_zero() || self.log.last_seq() == 0 {
            return;
        }
        let now_t = Timestamp::now();
        let now = Instant::now();
        let window_ns = self.window.as_nanos() as i128;
        let Ok(start_t) = Timestamp::from_unix_nanos(now_t.unix_nanos() - window_ns) else {
            return;
        };
        let Ok(mut cursor) = self.log.seq_at(start_t).await.map(|s| s.saturating_sub(1)) else {
            return;
        };
        while let Ok(page) = self.log.read_after(cursor, 1024).await {
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            for e in page {
                let age = std::time::Duration::from_nanos(
                    (now_t.unix_nanos() - e.time.unix_nanos()).max(0) as u64,
                );
                let at = now.checked_sub(age).unwrap_or(now);
                let seen = dedupe::Seen {
                    seq: e.seq,
                    fingerprint: dedupe::fingerprint(&e.topic, &e.data),
                };
                self.dedupe.insert(e.event_id, seen, at);
            }
            cursor = last;
        }
    }

    async fn run(mut self) {
        let mut next = self.log.last_seq() + 1;
        let mut batch: Vec<PublishRequest> = Vec::with_capacity(MAX_BATCH);
        self.remember_recent().await;
        while self.rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let time = Timestamp::now();
            let accepted = Instant::now();
            let mut events: Vec<StoredEvent> = Vec::with_capacity(batch.len());
            let mut fresh: Vec<PublishRequest> = Vec::with_capacity(batch.len());
            let mut deferred: Vec<(Reply, u64, EventId)> = Vec::new();
            for req in batch.drain(..) {
                let fp = dedupe::fingerprint(&req.topic, &req.data);
                if let Some(id) = &req.event_id
                    && let Some(seen) = self.dedupe.get(id, accepted)
                {
                    if seen.fingerprint != fp {
                        refuse(req, &Refusal::EventIdConflict);
                    } else if seen.seq >= next {
                        // A repeat within this very batch: its answer waits for the append.
                        deferred.push((req.reply, seen.seq, id.clone()));
                    } else {
                        acknowledge_seq(req.reply, seen.seq, id.clone(), true);
                    }
                    continue;
                }

                let seq = next + events.len() as u64;
                let event_id = req.event_id.clone().unwrap_or_else(new_event_id);
                if req.event_id.is_some() {
                    self.dedupe.insert(
                        event_id.clone(),
                        dedupe::Seen {
                            seq,
                            fingerprint: fp,
                        },
                        accepted,
                    );
                }
                events.push(StoredEvent {
                    seq,
                    topic: req.topic.clone(),
                    event_id,
                    time,
                    data: req.data.clone(),
                });
                fresh.push(req);
            }
            if events.is_empty() {
                continue;
            }
            let mut batch_reqs = fresh;
            if let Err(e) = self.log.append(&events).await {
                self.writable.store(false, Ordering::Release);
                self.metrics.log_writable.set(0);
                tracing::error!(error = %e, events = events.len(), "event log append failed; refusing the batch");
                for req in batch_reqs.drain(..) {
                    if let Some(id) = &req.event_id {
                        self.dedupe.remove(id);
                    }
                    refuse(req, &Refusal::Unavailable(e.to_string()));
                }
                for (reply, _, _) in deferred.drain(..) {
                    refuse_reply(reply, &Refusal::Unavailable(e.to_string()));
                }
                continue;
            }
            if !self.writable.swap(true, Ordering::AcqRel) {
                self.metrics.log_writable.set(1);
                tracing::info!("event log takes writes again");
            }
            next += events.len() as u64;
            let frames: Vec<Queued> = events
                .iter()
                .map(|e| {
                    let bytes = encode_event(e.seq, &e.topic, &e.event_id, e.time, e.data.as_raw());
                    // The encoder writes UTF-8 only (JSON text); a failure here would be a bug
                    // in the encoder, and the frame is then skipped rather than sent broken.
                    let text =
                        Utf8Bytes::try_from(bytes).unwrap_or_else(|_| Utf8Bytes::from_static("{}"));
                    Queued {
                        text,
                        kind: Kind::Live(accepted),
                    }
                })
                .collect();
            let mut delivered = 0u64;
            {
                let mut head = self.head.lock();
                let time_ms = time.unix_ms();
                for (e, frame) in events.iter().zip(&frames) {
                    self.index.for_each_match(&e.topic, |s| {
                        if s.offer(e.seq, time_ms, frame, &self.metrics) {
                            delivered += 1;
                        }
                    });
                    *head = e.seq;
                }
            }
            self.metrics.events_published.inc_by(events.len() as u64);
            self.metrics.events_delivered.inc_by(delivered);
            for (req, e) in batch_reqs.drain(..).zip(&events) {
                acknowledge(req.reply, e);
            }
            for (reply, seq, id) in deferred.drain(..) {
                acknowledge_seq(reply, seq, id, true);
            }
        }
        tracing::debug!("sequencer stopped");
    }
}

fn new_event_id() -> EventId {
    EventId::from_uuid(uuid::Uuid::new_v4().into_bytes())
}

fn acknowledge(reply: Reply, e: &StoredEvent) {
    acknowledge_seq(reply, e.seq, e.event_id.clone(), false);
}

fn acknowledge_seq(reply: Reply, seq: u64, event_id: EventId, duplicate: bool) {
    match reply {
        Reply::Session {
            subscriber,
            id,
            rate,
        } => {
            if duplicate {
                rate.refund(&subscriber.client_id);
            } else {
                subscriber.count_published();
            }
            let _ = subscriber.reply(&ServerFrame::Published(Published {
                id,
                seq,
                event_id,
                duplicate,
            }));
        }
        Reply::Http(tx) => {
            let _ = tx.send(Ok(Ack {
                seq,
                event_id,
                duplicate,
            }));
        }
    }
}

fn refuse(req: PublishRequest, why: &Refusal) {
    refuse_reply(req.reply, why);
}

fn refuse_reply(reply: Reply, why: &Refusal) {
    match reply {
        Reply::Session { subscriber, id, .. } => {
            let (reason, message) = match why {
                Refusal::Unavailable(_) => (
                    scopecast_protocol::Reason::LogUnavailable,
                    "the event log cannot store events right now; nothing was stored, retry later".to_owned(),
                ),
                Refusal::EventIdConflict => (
                    scopecast_protocol::Reason::EventIdConflict,
                    "this event_id was already used within the idempotency window for another topic or payload".to_owned(),
                ),
            };
            let _ = subscriber.reply(&ServerFrame::Error(scopecast_protocol::ErrorFrame::new(
                Some(id),
                reason,
                message,
            )));
        }
        Reply::Http(tx) => {
            let _ = tx.send(Err(why.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogError, MemoryLog};
    use std::sync::atomic::AtomicBool;

    /// A log whose store can be made to fail, as a full disk would.
    struct FailingLog {
        inner: MemoryLog,
        failing: AtomicBool,
    }

    #[async_trait::async_trait]
    impl EventLog for FailingLog {
        async fn append(&self, events: &[StoredEvent]) -> Result<(), crate::log::LogError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(LogError::Unavailable("No space left on device".into()));
            }
            self.inner.append(events).await
        }
        fn last_seq(&self) -> u64 {
            self.inner.last_seq()
        }
        async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, LogError> {
            self.inner.read_after(after, limit).await
        }
        fn first_seq(&self) -> u64 {
            self.inner.first_seq()
        }
        fn stored_bytes(&self) -> u64 {
            self.inner.stored_bytes()
        }
        fn epoch(&self) -> &str {
            self.inner.epoch()
        }
        fn snapshot(&self) -> Result<Box<dyn crate::log::LogSnapshot>, LogError> {
            self.inner.snapshot()
        }
    }

    async fn publish(bus: &Bus, topic: &str) -> Result<Ack, Refusal> {
        let (tx, rx) = oneshot::channel();
        let req = PublishRequest {
            topic: topic.parse().unwrap(),
            data: RawJson::from_string("{}".into()).unwrap(),
            event_id: None,
            reply: Reply::Http(tx),
        };
        bus.publish(req).await.unwrap();
        rx.await.unwrap()
    }

    #[tokio::test]
    async fn a_repeated_event_id_in_one_failed_batch_is_refused_too() {
        let log = Arc::new(FailingLog {
            inner: MemoryLog::new(100),
            failing: AtomicBool::new(true),
        });
        let metrics = Arc::new(Metrics::new().unwrap());
        let (bus, _task) = Bus::start(
            log.clone(),
            metrics,
            16,
            (std::time::Duration::from_secs(60), 100),
        );
        let mut replies = Vec::new();
        // Both requests wait in the channel, so the sequencer takes them in one batch.
        for _ in 0..2 {
            let (tx, rx) = oneshot::channel();
            let req = PublishRequest {
                topic: "a.b".parse().unwrap(),
                data: RawJson::from_string("{}".into()).unwrap(),
                event_id: Some(EventId::new("same").unwrap()),
                reply: Reply::Http(tx),
            };
            bus.publish(req).await.unwrap();
            replies.push(rx);
        }
        for rx in replies {
            assert!(
                matches!(rx.await.unwrap(), Err(Refusal::Unavailable(_))),
                "acknowledged an event that was not stored"
            );
        }
        log.failing.store(false, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        let req = PublishRequest {
            topic: "a.b".parse().unwrap(),
            data: RawJson::from_string("{}".into()).unwrap(),
            event_id: Some(EventId::new("same").unwrap()),
            reply: Reply::Http(tx),
        };
        bus.publish(req).await.unwrap();
        assert_eq!(
            rx.await.unwrap().unwrap().seq,
            1,
            "the retry is stored with the first seq"
        );
    }

    #[tokio::test]
    async fn a_failing_store_refuses_publishes_then_recovers_without_losing_a_seq() {
        let log = Arc::new(FailingLog {
            inner: MemoryLog::new(100),
            failing: AtomicBool::new(false),
        });
        let metrics = Arc::new(Metrics::new().unwrap());
        let (bus, _task) = Bus::start(log.clone(), metrics, 16, (std::time::Duration::ZERO, 0));
        let sub = Arc::new(Subscriber::new(
            1,
            "c".into(),
            1 << 20,
            Arc::new(ClientStats::default()),
        ));
        bus.subscribe(&"a.>".parse().unwrap(), &sub, |_| {});

        assert_eq!(publish(&bus, "a.b").await.unwrap().seq, 1);
        assert!(bus.log_writable());
        log.failing.store(true, Ordering::SeqCst);
        assert!(
            matches!(publish(&bus, "a.b").await, Err(Refusal::Unavailable(m)) if m.contains("No space"))
        );
        assert!(!bus.log_writable(), "readiness follows a failed append");
        log.failing.store(false, Ordering::SeqCst);
        assert_eq!(
            publish(&bus, "a.b").await.unwrap().seq,
            2,
            "the refused batch used no seq"
        );
        assert!(bus.log_writable(), "and the next stored batch ends it");

        let queued = sub.outbox.drain().frames;
        let texts: Vec<String> = queued.iter().map(|q| q.text.to_string()).collect();
        assert_eq!(
            texts.len(),
            2,
            "the subscriber got the stored events only: {texts:?}"
        );
        assert!(texts[1].contains("\"seq\":2"));
    }
}
