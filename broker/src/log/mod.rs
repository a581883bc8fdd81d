//! The event log: every accepted event with its broker-wide `seq` (DESIGN section 7), behind a
//! small trait so that durable stores (on disk, NATS JetStream) plug in without touching the
//! sessions or the fan-out.
//!
//! - `memory`: [`MemoryLog`], in memory with a retention by count (tests, `--log memory`).
//! - `durable`: [`DurableLog`], on disk (redb), group commit, `fsync` or `os` durability,
//!   retention by count, bytes and age; also the file format of a backup's events
//!   ([`LogSnapshot`]).

mod durable;
mod memory;

use std::path::Path;

use async_trait::async_trait;
use scopecast_protocol::{EventId, RawJson, Timestamp, Topic};

pub use durable::{DEFAULT_CACHE_BYTES, DurableLog, LOG_FORMAT, Retention, SyncMode};
pub use memory::MemoryLog;

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its place in the broker-wide sequence, from 1.
    pub seq: u64,
    /// The topic it was published to.
    pub topic: Topic,
    /// Its event id.
    pub event_id: EventId,
    /// When the broker accepted it.
    pub time: Timestamp,
    /// The payload, exactly as published.
    pub data: RawJson,
}

/// A failure of the log's store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// The store cannot take events now (disk full, I/O error); nothing was stored.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
}

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

/// An append-only log of events, ordered by `seq`.
///
/// Only the broker's sequencer appends, one batch at a time, with `seq`s it assigned:
/// contiguous and greater than [`EventLog::last_seq`].
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Stores a batch. When it returns `Ok`, the events are as durable as the log promises.
    async fn append(&self, events: &[StoredEvent]) -> Result<(), LogError>;
    /// The newest stored `seq` (0 when empty, and never lower after a restart).
    fn last_seq(&self) -> u64;
    /// Up to `limit` events with `seq` greater than `after`, in `seq` order.
    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, LogError>;
    /// The oldest `seq` still retained (`last_seq() + 1` when empty).
    fn first_seq(&self) -> u64;

    /// Bytes of stored events (as the store counts them), for the metrics.
    fn stored_bytes(&self) -> u64;

    /// The log's identity: a UUID made when the log was created (the memory log: when the
    /// process started). `welcome` and `subscribed` carry it, so a client tells a replaced log
    /// (its `seq`s start again) from one that went on.
    fn epoch(&self) -> &str;

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

    /// The first retained `seq` of an event accepted at or after `t` (`last_seq() + 1` when
    /// none is): a binary search over `seq`, since the sequencer stamps times in `seq` order.
    async fn seq_at(&self, t: scopecast_protocol::Timestamp) -> Result<u64, LogError> {
        let (mut lo, mut hi) = (self.first_seq(), self.last_seq() + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.read_after(mid - 1, 1).await?.first() {
                Some(e) if e.time < t => lo = e.seq + 1,
                Some(_) | None => hi = mid,
            }
        }
        Ok(lo)
    }
}
