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
pub use outbox::{Outbox, PushError, Queued};

use crate::log::{EventLog, LogError, StoredEvent};
use crate::metrics::Metrics;

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
    /// A subscriber with an empty queue of at most `queue_bytes` bytes.
    pub fn new(session_id: u64, client_id: Arc<str>, queue_bytes: usize) -> Subscriber {
        Subscriber {
            session_id,
            client_id,
            outbox: Outbox::new(queue_bytes),
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
        self.outbox.push(Queued {
            text: Utf8Bytes::from(frame.encode()),
            published_at: None,
        })
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
    },
    /// An HTTP request handler, waiting on a channel.
    Http(oneshot::Sender<Result<Ack, LogError>>),
}

/// A stored event's place.
#[derive(Debug, Clone)]
pub struct Ack {
    /// Its `seq`.
    pub seq: u64,
    /// Its event id.
    pub event_id: EventId,
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
}

impl Bus {
    /// Starts the sequencer over `log`; it runs until every `Bus` clone is dropped.
    pub fn start(
        log: Arc<dyn EventLog>,
        metrics: Arc<Metrics>,
        queue: usize,
    ) -> (Bus, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let index = Arc::new(TopicIndex::default());
        let head = Arc::new(Mutex::new(log.last_seq()));
        let seq = Sequencer {
            rx,
            log,
            index: index.clone(),
            head: head.clone(),
            metrics,
        };
        let task = tokio::spawn(seq.run());
        (Bus { tx, index, head }, task)
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
    log: Arc<dyn EventLog>,
    index: Arc<TopicIndex>,
    head: Arc<Mutex<u64>>,
    metrics: Arc<Metrics>,
}

impl Sequencer {
    async fn run(mut self) {
        let mut next = self.log.last_seq() + 1;
        let mut batch: Vec<PublishRequest> = Vec::with_capacity(MAX_BATCH);
        while self.rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let time = Timestamp::now();
            let accepted = Instant::now();
            let events: Vec<StoredEvent> = batch
                .iter()
                .enumerate()
                .map(|(i, r)| StoredEvent {
                    seq: next + i as u64,
                    topic: r.topic.clone(),
                    event_id: r.event_id.clone().unwrap_or_else(new_event_id),
                    time,
                    data: r.data.clone(),
                })
                .collect();
            if let Err(e) = self.log.append(&events).await {
                tracing::error!(error = %e, events = events.len(), "event log append failed; refusing the batch");
                for req in batch.drain(..) {
                    refuse(req, &e);
                }
                continue;
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
                        published_at: Some(accepted),
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
            for (req, e) in batch.drain(..).zip(&events) {
                acknowledge(req.reply, e);
            }
        }
        tracing::debug!("sequencer stopped");
    }
}

fn new_event_id() -> EventId {
    EventId::from_uuid(uuid::Uuid::new_v4().into_bytes())
}

fn acknowledge(reply: Reply, e: &StoredEvent) {
    match reply {
        Reply::Session { subscriber, id } => {
            let frame = ServerFrame::Published(Published {
                id,
                seq: e.seq,
                event_id: e.event_id.clone(),
            });
            let _ = subscriber.reply(&frame);
        }
        Reply::Http(tx) => {
            let _ = tx.send(Ok(Ack {
                seq: e.seq,
                event_id: e.event_id.clone(),
            }));
        }
    }
}

fn refuse(req: PublishRequest, e: &LogError) {
    match req.reply {
        Reply::Session { subscriber, id } => {
            let frame = ServerFrame::Error(scopecast_protocol::ErrorFrame::new(
                Some(id),
                scopecast_protocol::Reason::LogUnavailable,
                "the event log cannot store events right now; nothing was stored, retry later"
                    .to_owned(),
            ));
            let _ = subscriber.reply(&frame);
        }
        Reply::Http(tx) => {
            let _ = tx.send(Err(e.clone()));
        }
    }
}
