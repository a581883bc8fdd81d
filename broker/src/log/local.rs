//! [`LocalLog`]: the event log of a single node, over a [`Storage`] (memory or redb).
//!
//! One writer task owns `seq` assignment and the idempotency window. Front ends hand it
//! batches through a bounded intake ([`EventLog::submit`]); it takes every batch waiting at
//! once (up to [`MAX_BATCH`] events), checks their event ids, numbers the new events, writes
//! them in one storage transaction (group commit) and answers each submitter. Stored events go
//! into a window of recent events kept in memory, and the newest `seq` is published on a
//! `watch`: a tail (the fan-out's, a replay's) reads from that window, or from the storage when
//! it is further behind, and waits on the `watch` when it is at the head.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures_util::stream;
use parking_lot::RwLock;
use scopecast_protocol::{EventId, Timestamp};
use tokio::sync::{mpsc, oneshot, watch};

use super::dedupe::{Dedupe, Seen};
use super::{
    AppendFuture, Appended, Bounds, EventLog, LogError, LogSnapshot, NewEvent, StoredEvent, Tail,
    TailItem,
};

/// Most events the writer takes in one transaction.
pub(crate) const MAX_BATCH: usize = 512;

/// Recent events kept in memory for tails (a replay or a slow reader just behind the head):
/// at most this many... Small on purpose: a larger window cycles its payloads through the CPU
/// caches on every write (measured: a 16,384-event window cost durable publish ~18%,
/// BENCHMARKS.md); a tail further behind reads from the storage.
const RECENT_EVENTS: usize = 1_024;
/// ...and at most about this many bytes of payload.
const RECENT_BYTES: usize = 2 * 1024 * 1024;

/// Events a tail reads from the storage in one go when it is behind the recent window.
const TAIL_PAGE: usize = 512;

/// Where a local log keeps its events.
///
/// `write`, `read` and `probe` may block on I/O when [`Storage::blocks`] says so; the log then
/// calls them on a blocking thread.
pub trait Storage: Send + Sync + 'static {
    /// Stores `events` (consecutive `seq`s after the last stored one) in one transaction;
    /// when it returns `Ok` they are as durable as the storage promises.
    fn write(&self, events: &[Arc<StoredEvent>]) -> Result<(), LogError>;
    /// Up to `limit` retained events with `seq >= from`, in order.
    fn read(&self, from: u64, limit: usize) -> Result<Vec<Arc<StoredEvent>>, LogError>;
    /// The retained range now.
    fn bounds(&self) -> Bounds;
    /// Bytes of stored events.
    fn stored_bytes(&self) -> u64;
    /// The storage's identity (see [`EventLog::epoch`]).
    fn epoch(&self) -> &str;
    /// The retained events now, for a backup.
    fn snapshot(&self) -> Result<Box<dyn LogSnapshot>, LogError>;
    /// Whether a write would succeed now, storing nothing.
    fn probe(&self) -> Result<(), LogError>;
    /// True when the calls above block on I/O.
    fn blocks(&self) -> bool;
}

/// One front end's batch and where its answer goes.
struct Submission {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Vec<Result<Appended, LogError>>>,
}

/// The newest stored events, oldest first, for tails.
#[derive(Default)]
struct Recent {
    events: VecDeque<Arc<StoredEvent>>,
    bytes: usize,
}

impl Recent {
    fn push(&mut self, e: Arc<StoredEvent>) {
        self.bytes += e.data.get().len();
        self.events.push_back(e);
        while self.events.len() > RECENT_EVENTS || self.bytes > RECENT_BYTES {
            match self.events.pop_front() {
                Some(old) => self.bytes -= old.data.get().len(),
                None => break,
            }
        }
    }

    /// The events with `from <= seq <= to`, at most `limit`, when the window still holds
    /// `from`.
    fn range(&self, from: u64, to: u64, limit: usize) -> Option<Vec<Arc<StoredEvent>>> {
        let first = self.events.front()?.seq;
        if from < first {
            return None;
        }
        let start = (from - first) as usize;
        Some(
            self.events
                .iter()
                .skip(start)
                .take_while(|e| e.seq <= to)
                .take(limit)
                .cloned()
                .collect(),
        )
    }
}

/// What a tail, a reader and the writer share (never the intake: a tail does not keep the
/// writer alive, so tails end when the log is dropped).
struct Shared<S> {
    storage: Arc<S>,
    recent: RwLock<Recent>,
    /// The fan-out, when it asked to be handed each stored batch (`attach_sink`).
    sink: std::sync::OnceLock<super::Sink>,
}

/// A single node's event log over `S`. Cheap to clone; the writer task stops when every clone
/// is dropped.
pub struct LocalLog<S: Storage> {
    shared: Arc<Shared<S>>,
    intake: mpsc::Sender<Submission>,
    /// The newest stored `seq`.
    last: watch::Receiver<u64>,
}

impl<S: Storage> Clone for LocalLog<S> {
    fn clone(&self) -> Self {
        LocalLog {
            shared: self.shared.clone(),
            intake: self.intake.clone(),
            last: self.last.clone(),
        }
    }
}

impl<S: Storage> std::fmt::Debug for LocalLog<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLog")
            .field("bounds", &self.shared.storage.bounds())
            .finish()
    }
}

impl<S: Storage> LocalLog<S> {
    /// Starts the writer over `storage`. `queue` is how many submissions may wait (further
    /// submitters wait); `idempotency` is how long an event id is remembered, and at most how
    /// many (a window of zero turns idempotency off). Ids stored within the window before a
    /// restart are remembered again first.
    pub fn start(
        storage: S,
        queue: usize,
        idempotency: (std::time::Duration, usize),
    ) -> LocalLog<S> {
        let storage = Arc::new(storage);
        let last_seq = storage.bounds().last;
        let (intake, rx) = mpsc::channel(queue.max(1));
        let (last_tx, last) = watch::channel(last_seq);
        let shared = Arc::new(Shared {
            storage,
            recent: RwLock::new(Recent::default()),
            sink: std::sync::OnceLock::new(),
        });
        let writer = Writer {
            shared: shared.clone(),
            rx,
            last: last_tx,
            next: last_seq + 1,
            dedupe: Dedupe::new(idempotency.0, idempotency.1),
        };
        tokio::spawn(writer.run());
        LocalLog {
            shared,
            intake,
            last,
        }
    }

    /// The storage underneath (retention, tests).
    pub fn storage(&self) -> &S {
        &self.shared.storage
    }
}

/// Runs `f` on `storage`, on a blocking thread when it blocks.
async fn on_storage<S: Storage, T: Send + 'static>(
    storage: &Arc<S>,
    f: impl FnOnce(&S) -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    if storage.blocks() {
        let storage = storage.clone();
        tokio::task::spawn_blocking(move || f(&storage))
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?
    } else {
        f(storage)
    }
}

#[async_trait]
impl<S: Storage> EventLog for LocalLog<S> {
    async fn submit(&self, events: Vec<NewEvent>) -> AppendFuture {
        let n = events.len();
        let (reply, answer) = oneshot::channel();
        let sent = self.intake.send(Submission { events, reply }).await;
        Box::pin(async move {
            let closed = || {
                vec![
                    Err(LogError::Unavailable(
                        "the event log has stopped".to_owned()
                    ));
                    n
                ]
            };
            if sent.is_err() {
                return closed();
            }
            answer.await.unwrap_or_else(|_| closed())
        })
    }

    async fn read_from(&self, from: u64, limit: usize) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        let last = *self.last.borrow();
        // The window may still hold events the storage's retention has let go of: a reader
        // sees the storage's bounds, as a tail does.
        let from = from.max(self.shared.storage.bounds().first);
        if let Some(events) = self.shared.recent.read().range(from, last, limit) {
            return Ok(events);
        }
        on_storage(&self.shared.storage, move |s| s.read(from, limit)).await
    }

    fn bounds(&self) -> Bounds {
        self.shared.storage.bounds()
    }

    fn attach_sink(&self, sink: super::Sink) -> bool {
        self.shared.sink.set(sink).is_ok()
    }

    fn tail(&self, from: u64) -> Tail {
        let state = TailState {
            shared: self.shared.clone(),
            last: self.last.clone(),
            cursor: from.max(1),
            ready: VecDeque::new(),
        };
        Box::pin(stream::unfold(state, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        }))
    }

    fn epoch(&self) -> &str {
        self.shared.storage.epoch()
    }

    fn stored_bytes(&self) -> u64 {
        self.shared.storage.stored_bytes()
    }

    fn snapshot(&self) -> Result<Box<dyn LogSnapshot>, LogError> {
        self.shared.storage.snapshot()
    }

    async fn probe(&self) -> Result<(), LogError> {
        on_storage(&self.shared.storage, |s| s.probe()).await
    }
}

/// A tail's position and what it read ahead.
struct TailState<S> {
    shared: Arc<Shared<S>>,
    last: watch::Receiver<u64>,
    /// The next `seq` to yield.
    cursor: u64,
    ready: VecDeque<TailItem>,
}

impl<S: Storage> TailState<S> {
    async fn next(&mut self) -> Option<TailItem> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            let last = *self.last.borrow_and_update();
            if self.cursor > last {
                // At the head: wait for the next stored batch (or the log's end).
                self.last.changed().await.ok()?;
                continue;
            }
            let first = self.shared.storage.bounds().first;
            if self.cursor < first {
                self.ready.push_back(TailItem::Gap {
                    from: self.cursor,
                    to: first - 1,
                });
                self.cursor = first;
                continue;
            }
            let recent = self
                .shared
                .recent
                .read()
                .range(self.cursor, last, TAIL_PAGE);
            let page = match recent {
                Some(page) => page,
                None => {
                    let from = self.cursor;
                    match on_storage(&self.shared.storage, move |s| s.read(from, TAIL_PAGE)).await {
                        Ok(page) => page,
                        Err(e) => {
                            // The storage is failing (a full disk being repaired): the tail
                            // waits and reads again, it never skips.
                            tracing::warn!(error = %e, from, "tail cannot read the event log; retrying");
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                            continue;
                        }
                    }
                }
            };
            if page.is_empty() {
                // Retention moved past the cursor meanwhile: the next round says so.
                tokio::task::yield_now().await;
                continue;
            }
            for e in page {
                if e.seq < self.cursor {
                    continue;
                }
                self.cursor = e.seq + 1;
                self.ready.push_back(TailItem::Event(e));
            }
        }
    }
}

/// Where each event of a taken batch stands while the writer works on it.
enum Slot {
    /// Answered already (a duplicate of an older event, or a conflict).
    Done(Result<Appended, LogError>),
    /// A new event: its index among the batch's new events.
    New(usize),
    /// A repeat of the batch's new event at this index: answered after the write.
    RepeatOf(usize),
}

/// The task that numbers and writes events.
struct Writer<S> {
    shared: Arc<Shared<S>>,
    rx: mpsc::Receiver<Submission>,
    last: watch::Sender<u64>,
    /// The `seq` the next new event gets.
    next: u64,
    dedupe: Dedupe,
}

impl<S: Storage> Writer<S> {
    /// After a restart, remembers the event ids stored within the idempotency window.
    async fn remember_recent(&mut self) {
        if !self.dedupe.enabled() || self.next == 1 {
            return;
        }
        let now_t = Timestamp::now();
        let now = Instant::now();
        let window_ns = self.dedupe.window().as_nanos() as i128;
        let Ok(start_t) = Timestamp::from_unix_nanos(now_t.unix_nanos() - window_ns) else {
            return;
        };
        let storage = self.shared.storage.clone();
        let Ok(mut cursor) = first_at(&storage, start_t).await else {
            return;
        };
        loop {
            let from = cursor;
            let Ok(page) = on_storage(&storage, move |s| s.read(from, 1024)).await else {
                return;
            };
            let Some(last) = page.last().map(|e| e.seq) else {
                return;
            };
            for e in page {
                let age = std::time::Duration::from_nanos(
                    (now_t.unix_nanos() - e.time.unix_nanos()).max(0) as u64,
                );
                let seen = Seen {
                    seq: e.seq,
                    time: e.time,
                    fingerprint: self.dedupe.fingerprint(&e.topic, &e.data),
                };
                self.dedupe.insert(
                    e.event_id.clone(),
                    seen,
                    now.checked_sub(age).unwrap_or(now),
                );
            }
            cursor = last + 1;
        }
    }

    async fn run(mut self) {
        self.remember_recent().await;
        let mut taken: Vec<Submission> = Vec::new();
        while self.rx.recv_many(&mut taken, MAX_BATCH).await > 0 {
            self.batch(&mut taken).await;
        }
        tracing::debug!("event log writer stopped");
    }

    /// Numbers, writes and answers the submissions taken at once.
    async fn batch(&mut self, taken: &mut Vec<Submission>) {
        let time = Timestamp::now();
        let now = Instant::now();
        let mut fresh: Vec<Arc<StoredEvent>> = Vec::new();
        let mut slots: Vec<Vec<Slot>> = Vec::with_capacity(taken.len());
        let mut remembered: Vec<EventId> = Vec::new();
        for sub in taken.iter_mut() {
            let mut these = Vec::with_capacity(sub.events.len());
            for ev in sub.events.drain(..) {
                let fingerprint = match &ev.event_id {
                    Some(_) if self.dedupe.enabled() => {
                        self.dedupe.fingerprint(&ev.topic, &ev.data)
                    }
                    _ => 0,
                };
                if let Some(id) = &ev.event_id
                    && let Some(seen) = self.dedupe.get(id, now)
                {
                    these.push(if seen.fingerprint != fingerprint {
                        Slot::Done(Err(LogError::Conflict { seq: seen.seq }))
                    } else if seen.seq >= self.next {
                        Slot::RepeatOf((seen.seq - self.next) as usize)
                    } else {
                        Slot::Done(Ok(Appended {
                            seq: seen.seq,
                            time: seen.time,
                            event_id: id.clone(),
                            duplicate: true,
                        }))
                    });
                    continue;
                }
                let seq = self.next + fresh.len() as u64;
                let event_id = match ev.event_id {
                    Some(id) => {
                        if self.dedupe.enabled() {
                            self.dedupe.insert(
                                id.clone(),
                                Seen {
                                    seq,
                                    time,
                                    fingerprint,
                                },
                                now,
                            );
                            remembered.push(id.clone());
                        }
                        id
                    }
                    None => EventId::from_uuid(uuid::Uuid::new_v4().into_bytes()),
                };
                these.push(Slot::New(fresh.len()));
                fresh.push(Arc::new(StoredEvent::new(
                    seq, ev.topic, event_id, time, ev.data,
                )));
            }
            slots.push(these);
        }
        let written = if fresh.is_empty() {
            Ok(())
        } else {
            let events = fresh.clone();
            on_storage(&self.shared.storage, move |s| s.write(&events)).await
        };
        if let Err(e) = &written {
            tracing::error!(error = %e, events = fresh.len(), "event log write failed; refusing the batch");
            // Not stored: a retry with the same id must be stored, not called a duplicate.
            for id in &remembered {
                self.dedupe.remove(id);
            }
        } else if let Some(newest) = fresh.last().map(|e| e.seq) {
            {
                let mut recent = self.shared.recent.write();
                for e in &fresh {
                    recent.push(e.clone());
                }
            }
            self.next = newest + 1;
            // Fanned out here, in the writer, when the fan-out asked for it: no task hop
            // between storing a batch and offering it to subscribers.
            if let Some(sink) = self.shared.sink.get() {
                sink(&fresh);
            }
            // After the window holds them: a tail that sees the new head finds them there.
            let _ = self.last.send(newest);
        }
        let answer = |i: usize, duplicate: bool| match &written {
            Ok(()) => {
                let e = &fresh[i];
                Ok(Appended {
                    seq: e.seq,
                    time: e.time,
                    event_id: e.event_id.clone(),
                    duplicate,
                })
            }
            Err(e) => Err(e.clone()),
        };
        for (sub, these) in taken.drain(..).zip(slots) {
            let results = these
                .into_iter()
                .map(|slot| match slot {
                    Slot::Done(r) => r,
                    Slot::New(i) => answer(i, false),
                    Slot::RepeatOf(i) => answer(i, true),
                })
                .collect();
            let _ = sub.reply.send(results);
        }
    }
}

/// The first retained `seq` of an event accepted at or after `t`, by binary search.
async fn first_at<S: Storage>(storage: &Arc<S>, t: Timestamp) -> Result<u64, LogError> {
    let b = storage.bounds();
    let (mut lo, mut hi) = (b.first, b.last + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let page = on_storage(storage, move |s| s.read(mid, 1)).await?;
        match page.first() {
            Some(e) if e.time < t => lo = e.seq + 1,
            Some(_) | None => hi = mid,
        }
    }
    Ok(lo)
}
