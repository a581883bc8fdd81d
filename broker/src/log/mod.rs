//! The event log: every accepted event with its broker-wide `seq` (DESIGN section 7). The log
//! assigns `seq` and the acceptance time, deduplicates by event id, and can be tailed: the
//! fan-out offers to local subscribers whatever the tail yields, whoever appended it (this
//! process, or in cluster mode another node).
//!
//! - `event`: [`StoredEvent`] (with its per-format [`Encodings`]), [`NewEvent`], [`Appended`].
//! - `local`: [`LocalLog`], the core of the single-node logs: a writer task with group commit
//!   and the idempotency window (`dedupe`), and a tail fed from recent events in memory.
//! - `memory`: [`MemoryLog`], events in memory, retention by count (`--log memory`, tests).
//! - `durable`: [`DurableLog`], events on disk (redb), `fsync` or `os` durability, retention by
//!   count, bytes and age; also the file format of a backup's events ([`LogSnapshot`]).
//! - `history`: [`History`], the one history reader (replay, `GET /v1/events`).

#[cfg(test)]
pub(crate) mod conformance;
mod dedupe;
mod durable;
mod event;
mod history;
mod jetstream;
mod local;
mod memory;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::Stream;
use scopecast_protocol::Timestamp;

pub use durable::{DEFAULT_CACHE_BYTES, DurableLog, LOG_FORMAT, Retention, SyncMode};
pub use event::{Appended, Encodings, Format, NewEvent, StoredEvent};
pub use history::{History, HistoryPage, HistoryQuery};
pub use jetstream::{JetStreamLog, JetStreamSettings};
pub use local::{LocalLog, Storage};
pub use memory::MemoryLog;

/// Why an append or a read failed. An append answers one of these per event: a remote log's
/// batch is not atomic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The store cannot take (or give) events now (disk full, no quorum); nothing was
    /// stored. Retry later.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// The outcome is unknown (a time-out after the store may have stored it): retry with the
    /// same event id, which the idempotency window answers with the original `seq` if it was
    /// stored.
    #[error("event log outcome unknown: {0}")]
    Unknown(String),
    /// The event id was stored within the idempotency window with another topic or payload.
    #[error("event id already stored (seq {seq}) with another topic or payload")]
    Conflict {
        /// The `seq` stored under that id.
        seq: u64,
    },
}

/// The retained range: `first..=last` (`first == last + 1` when nothing is retained; `last`
/// is 0 for a log that never had an event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The oldest retained `seq`.
    pub first: u64,
    /// The newest stored `seq`.
    pub last: u64,
}

/// What a tail yields, in `seq` order.
#[derive(Debug, Clone)]
pub enum TailItem {
    /// The next event.
    Event(Arc<StoredEvent>),
    /// Events `from..=to` are gone (past retention) and will never be yielded: the reader
    /// was that far behind. The next item follows `to`.
    Gap {
        /// The first missing `seq`.
        from: u64,
        /// The last missing `seq`.
        to: u64,
    },
}

/// The outcome of a submitted batch: one result per event, in the batch's order.
pub type AppendFuture = Pin<Box<dyn Future<Output = Vec<Result<Appended, LogError>>> + Send>>;

/// A tail of the log: every event from a `seq` on, then each new one as it is stored.
pub type Tail = Pin<Box<dyn Stream<Item = TailItem> + Send>>;

/// The events a [`LogSnapshot`] held: `first_seq..=last_seq`, `events` of them (0 events:
/// `first_seq` is `last_seq + 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRange {
    /// The oldest `seq` in it.
    pub first_seq: u64,
    /// The newest `seq` in it (0 for a log that never had an event).
    pub last_seq: u64,
    /// How many events.
    pub events: u64,
}

/// A log's retained events, fixed at the instant [`EventLog::snapshot`] was called: appends
/// and retention that come later are not in it.
pub trait LogSnapshot: Send {
    /// Writes every event of the snapshot, byte for byte and with its `seq`, to a new
    /// durable log file at `path` (which must not exist yet, or be empty): the format of
    /// `events.redb`, which [`DurableLog::open`] opens. Blocking: call it on a blocking thread.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when reading the log or writing the file fails.
    fn write_to(self: Box<Self>, path: &Path) -> Result<LogRange, LogError>;
}

/// What a log hands each stored batch to ([`EventLog::attach_sink`]): the fan-out. Called
/// from the log's writer: it must not block or wait.
pub type Sink = Arc<dyn Fn(&[Arc<StoredEvent>]) + Send + Sync>;

/// An append-only log of events, ordered by `seq`, which it assigns.
///
/// The contract every implementation keeps (checked by the conformance suite, `conformance`):
/// `seq`s are consecutive from 1, never reused (also after a restart); a rejected event takes
/// no `seq`; an event id stored within the idempotency window is answered with the original
/// `seq` and `duplicate`, or [`LogError::Conflict`] when its topic or payload differ; a tail
/// yields every retained event once, in order, with a [`TailItem::Gap`] for what retention took.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Hands `batch` to the log, in order with other submissions from the same caller; the
    /// returned future resolves once each event is stored with the log's durability (or
    /// refused). Waits only while the log's intake is full, so a front end can submit without
    /// waiting for the store and answer its client when the future resolves.
    async fn submit(&self, batch: Vec<NewEvent>) -> AppendFuture;

    /// Stores `batch` and waits for the outcome: one result per event.
    async fn append(&self, batch: Vec<NewEvent>) -> Vec<Result<Appended, LogError>> {
        self.submit(batch).await.await
    }

    /// Up to `limit` retained events with `seq >= from`, in `seq` order.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when the store cannot be read.
    async fn read_from(&self, from: u64, limit: usize) -> Result<Vec<Arc<StoredEvent>>, LogError>;

    /// The retained range now.
    fn bounds(&self) -> Bounds;

    /// The retained range as the store has it at this instant: the same as
    /// [`EventLog::bounds`] for a log of this process; a log other nodes append to and
    /// retention trims (JetStream) asks its store, so a replay knows exactly which events are
    /// gone. Falls back to [`EventLog::bounds`] when the store does not answer.
    async fn fresh_bounds(&self) -> Bounds {
        self.bounds()
    }

    /// Every event with `seq >= from`, then each new one as it is stored; a [`TailItem::Gap`]
    /// for events that retention removed before the tail reached them. Never ends while the
    /// log lives.
    fn tail(&self, from: u64) -> Tail;

    /// Asks the log to hand each batch it stores from now on to `sink`, in `seq` order, from
    /// its writer (after the batch is stored and before its submitters are answered), instead
    /// of the fan-out tailing it: one task hop less per batch, which a single process's log
    /// can offer and a remote one (whose events other nodes append) cannot. True when the log
    /// took the sink (only the first one is taken); the caller then does not tail it. Call it
    /// before events are submitted.
    fn attach_sink(&self, _sink: Sink) -> bool {
        false
    }

    /// The log's identity: a UUID made when the log was created (the memory log: when the
    /// process started). `welcome` and `subscribed` carry it, so a client tells a replaced log
    /// (its `seq`s start again) from one that went on.
    fn epoch(&self) -> &str;

    /// Bytes of stored events (as the store counts them), for the metrics.
    fn stored_bytes(&self) -> u64;

    /// Fixes the retained events as they are now, for a backup. Quick (nothing is copied
    /// here, or only what the memory log holds), so it can run while registry changes are held
    /// off; the copy is made later by [`LogSnapshot::write_to`].
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when the store cannot be read.
    fn snapshot(&self) -> Result<Box<dyn LogSnapshot>, LogError>;

    /// Checks that the store takes writes again after a failed append, without storing an
    /// event (readiness, `/readyz`).
    ///
    /// # Errors
    /// [`LogError::Unavailable`] while it still refuses them.
    async fn probe(&self) -> Result<(), LogError> {
        Ok(())
    }

    /// The first retained `seq` of an event accepted at or after `t` (`last + 1` when none
    /// is): a binary search over `seq`, since a log stamps times in `seq` order.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when the store cannot be read.
    async fn seq_at(&self, t: Timestamp) -> Result<u64, LogError> {
        let b = self.bounds();
        let (mut lo, mut hi) = (b.first, b.last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.read_from(mid, 1).await?.first() {
                Some(e) if e.time < t => lo = e.seq + 1,
                Some(_) | None => hi = mid,
            }
        }
        Ok(lo)
    }
}
