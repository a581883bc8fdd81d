//! [`SessionHandle`]: the shared half of a WebSocket session: what the fan-out offers events
//! to (its [`Deliver`] side), what the session table and the admin API see, and what the
//! session task drains. The task owns everything else (the socket, the principal, its
//! subscriptions' resume points).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;
use scopecast_protocol::{CloseCode, Pattern, ServerFrame, Timestamp};
use tokio::sync::Notify;

use super::outbox::{Kind, Outbox, PushError, Queued};
use super::transport;
use crate::fanout::Deliver;
use crate::log::{Encodings, StoredEvent};
use crate::metrics::{ClientStats, Metrics};

/// One live, authenticated WebSocket session, shared by its task, the fan-out and the session
/// table. Lives as long as the task or the last `Arc`.
pub(crate) struct SessionHandle {
    /// The session's id (shown in hex in `welcome`, the logs and the admin API).
    pub id: u64,
    /// The session's OAuth2 client ID.
    pub client_id: Arc<str>,
    /// Its client's application.
    pub application_id: String,
    /// The peer's address.
    pub peer: SocketAddr,
    /// When it was authenticated.
    pub connected_since: Timestamp,
    /// Its outbound queue.
    pub outbox: Outbox,
    /// Its client ID's counters (shared by the client's sessions).
    pub stats: Arc<ClientStats>,
    /// Events written to its socket (by the session task).
    pub delivered: AtomicU64,
    /// The `seq` of the last event written to its socket (by the session task; the access
    /// audit reads it for live subscriptions).
    pub written_last: AtomicU64,
    /// Events it published that were stored.
    pub published: AtomicU64,
    /// Its live subscriptions' patterns (kept by the session task, read by the admin API).
    pub subscriptions: Mutex<Vec<Pattern>>,
    /// Wakes the session's loop for a re-check.
    pub wake: Notify,
    /// Set when the session must re-check its subscriptions against the registry.
    recheck: AtomicBool,
    /// Newest `seq` queued; written only by the fan-out task.
    last_seq: AtomicU64,
    /// Events accepted at or after this instant (Unix ms) are not queued: the session's token
    /// has expired by then (its `exp` plus the leeway). Moved forward by each refresh.
    deadline_ms: AtomicI64,
    /// While a replay runs, live events wait here (in order, bounded by the outbox limit) so
    /// that the replayed ones go out first.
    holding: AtomicBool,
    hold: Mutex<Option<(VecDeque<Queued>, usize)>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl SessionHandle {
    /// A handle with an empty queue of at most `queue_bytes` bytes, written at once from
    /// `flush_bytes` queued (see [`Outbox::new`]).
    pub(crate) fn new(
        id: u64,
        client_id: Arc<str>,
        application_id: String,
        peer: SocketAddr,
        (queue_bytes, flush_bytes): (usize, usize),
        metrics: Arc<Metrics>,
    ) -> SessionHandle {
        SessionHandle {
            stats: metrics.client(&client_id),
            id,
            client_id,
            application_id,
            peer,
            connected_since: Timestamp::now(),
            outbox: Outbox::new(queue_bytes, flush_bytes),
            delivered: AtomicU64::new(0),
            written_last: AtomicU64::new(0),
            published: AtomicU64::new(0),
            subscriptions: Mutex::new(Vec::new()),
            wake: Notify::new(),
            recheck: AtomicBool::new(false),
            last_seq: AtomicU64::new(0),
            deadline_ms: AtomicI64::new(i64::MAX),
            holding: AtomicBool::new(false),
            hold: Mutex::new(None),
            metrics,
        }
    }

    /// Takes the re-check flag.
    pub(crate) fn take_recheck(&self) -> bool {
        self.recheck.swap(false, Ordering::AcqRel)
    }

    /// Asks the session to re-check its subscriptions (a changed grant).
    pub(crate) fn request_recheck(&self) {
        self.recheck.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// True while a replay runs (live events are held back meanwhile).
    pub(crate) fn replaying(&self) -> bool {
        self.holding.load(Ordering::Acquire)
    }

    /// Starts holding live events back (a replay is about to run).
    pub(crate) fn hold(&self) {
        *self.hold.lock() = Some((VecDeque::new(), 0));
        self.holding.store(true, Ordering::Release);
    }

    /// Queues the live events held back, in order, and stops holding.
    pub(crate) fn release(&self) {
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

    /// Sets the instant (Unix ms) from which no event is queued to this session.
    pub(crate) fn set_deadline_ms(&self, ms: i64) {
        self.deadline_ms.store(ms, Ordering::Release);
    }

    /// Queues a reply frame (not an event).
    ///
    /// # Errors
    /// As [`Outbox::push`].
    pub(crate) fn reply(&self, frame: &ServerFrame) -> Result<(), PushError> {
        self.outbox.push(Queued::reply(transport::text(frame)))
    }

    /// Counts an event this session published that was stored.
    pub(crate) fn count_published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes the session with 4008 because live events overflowed its queue.
    fn slow_consumer(&self, why: &str) {
        self.outbox.close(CloseCode::SlowConsumer, why, false);
        self.metrics.slow_consumer_closes.inc();
        tracing::info!(session = self.id, client_id = %self.client_id, "slow consumer: closing with 4008");
    }
}

impl Deliver for SessionHandle {
    fn offer(&self, e: &Arc<StoredEvent>, encodings: &Encodings) -> bool {
        // An event accepted at or after the token's end is never delivered (PROTOCOL.md
        // section 3): the comparison is on whole milliseconds, so "at" counts as after.
        if e.time_ms() >= self.deadline_ms.load(Ordering::Acquire) {
            return false;
        }
        if self.last_seq.fetch_max(e.seq, Ordering::Relaxed) >= e.seq {
            return false;
        }
        let frame = Queued {
            text: transport::event_text(e, encodings),
            kind: Kind::Live(e.time),
            seq: e.seq,
        };
        if self.holding.load(Ordering::Acquire) {
            let mut hold = self.hold.lock();
            if let Some((held, bytes)) = hold.as_mut() {
                *bytes += frame.text.len();
                if *bytes > self.outbox.limit_bytes() {
                    drop(hold);
                    self.slow_consumer("live events overflowed during a replay");
                    return false;
                }
                held.push_back(frame);
                return true;
            }
        }
        match self.outbox.push(frame) {
            Ok(()) => true,
            Err(PushError::Overflow) => {
                self.metrics.slow_consumer_closes.inc();
                tracing::info!(session = self.id, client_id = %self.client_id, "slow consumer: closing with 4008");
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    fn gap(&self, from: u64, to: u64) {
        // The fan-out met a hole (events that left the log before it reached them): what
        // matched is lost for this session, which is told so explicitly (PROTOCOL.md "gap")
        // and goes on after it.
        let last = self.last_seq.load(Ordering::Relaxed);
        if last < to {
            let frame = ServerFrame::Gap(scopecast_protocol::Gap {
                id: None,
                from_seq: from.max(last + 1),
                to_seq: to,
            });
            if self.reply(&frame).is_err() {
                self.slow_consumer(&format!(
                    "events {from} to {to} left the log before they could be delivered"
                ));
            }
        }
    }
}
