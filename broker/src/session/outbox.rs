//! A session's outbound queue: bounded in bytes, shared by the fan-out (which pushes without
//! ever waiting) and the session task (which drains everything queued, writes it all, then
//! flushes once). Frames are `scopecast.v1` WebSocket text, shared between sessions.
//!
//! Overflow policy (DESIGN section 5, "Back-pressure"): a push that would take the queue past
//! its byte limit drops the whole queue and marks the session closed with 4008 (slow
//! consumer); publishers and other sessions never wait for it.

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use scopecast_protocol::{CloseCode, Timestamp};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

/// One queued frame: its text, and what it is.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    /// The frame's text, shared between sessions.
    pub text: Utf8Bytes,
    /// An event or a reply.
    pub kind: Kind,
    /// The event's `seq` (0 for a reply): the access audit's first and last `seq` written.
    pub seq: u64,
}

/// What a queued frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A reply or notice (not an event).
    Reply,
    /// A live event, accepted by the broker at this time (for the latency metric).
    Live(Timestamp),
    /// A replayed (stored) event.
    Replayed,
}

impl Queued {
    /// A reply or notice frame.
    pub(crate) fn reply(text: Utf8Bytes) -> Queued {
        Queued {
            text,
            kind: Kind::Reply,
            seq: 0,
        }
    }

    /// True for event frames (live or replayed).
    pub(crate) fn is_event(&self) -> bool {
        self.kind != Kind::Reply
    }
}

/// What the session task takes from the outbox in one go.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    /// Frames to write, in order.
    pub frames: VecDeque<Queued>,
    /// Set when the session must close after writing `frames`.
    pub close: Option<(CloseCode, String)>,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Queued>,
    bytes: usize,
    close: Option<(CloseCode, String)>,
    /// A reply (not an event) is queued: it goes out without waiting for a coalescing
    /// window (a publisher waiting for its `published` must not wait for one).
    reply: bool,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The session is closing; the frame was dropped.
    Closed,
    /// This push overflowed the queue: the session is now closing with 4008.
    Overflow,
}

/// A bounded outbound queue. Owned by a [`SessionHandle`](super::SessionHandle); lives as long
/// as the session.
#[derive(Debug)]
pub(crate) struct Outbox {
    limit_bytes: usize,
    /// From this many bytes queued, what is queued is urgent (a full write's worth).
    flush_bytes: usize,
    state: Mutex<State>,
    /// True once a close is decided: later pushes are dropped without taking the lock.
    closed: AtomicBool,
    notify: Notify,
    /// Signalled when what is queued becomes urgent (a reply, a close, `flush_bytes`): wakes
    /// a session holding events for a coalescing window.
    urgent: Notify,
    /// True once a close that drops queued frames is decided (overflow, deactivation,
    /// expiry): a write stalled on a peer that does not read is then abandoned.
    aborted: AtomicBool,
    abort: Notify,
}

impl Outbox {
    /// An empty queue holding at most `limit_bytes` bytes of frames, urgent from `flush_bytes`
    /// (`limits.write_buffer_bytes`: a write's worth need not wait for more).
    pub(crate) fn new(limit_bytes: usize, flush_bytes: usize) -> Outbox {
        Outbox {
            limit_bytes,
            flush_bytes,
            urgent: Notify::new(),
            state: Mutex::new(State::default()),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
            aborted: AtomicBool::new(false),
            abort: Notify::new(),
        }
    }

    /// Queues a frame without waiting.
    ///
    /// # Errors
    /// [`PushError::Closed`] when the session is closing, [`PushError::Overflow`] when this
    /// push overflowed the byte limit (the session now closes with 4008).
    pub(crate) fn push(&self, frame: Queued) -> Result<(), PushError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed);
        }
        let mut st = self.state.lock();
        if st.close.is_some() {
            return Err(PushError::Closed);
        }
        let len = frame.text.len();
        if st.bytes + len > self.limit_bytes {
            st.frames.clear();
            st.bytes = 0;
            st.close = Some((
                CloseCode::SlowConsumer,
                format!("outbound queue over {} bytes", self.limit_bytes),
            ));
            self.closed.store(true, Ordering::Release);
            drop(st);
            self.signal_abort();
            self.notify.notify_one();
            self.urgent.notify_one();
            return Err(PushError::Overflow);
        }
        let crossed = st.bytes < self.flush_bytes && st.bytes + len >= self.flush_bytes;
        st.bytes += len;
        let reply = frame.kind == Kind::Reply;
        st.reply |= reply;
        let was_empty = st.frames.is_empty();
        st.frames.push_back(frame);
        drop(st);
        if was_empty {
            self.notify.notify_one();
        }
        if reply || crossed {
            self.urgent.notify_one();
        }
        Ok(())
    }

    /// Asks the session to close with `code` after what is already queued (`flush: true`), or
    /// at once, dropping what is queued (`flush: false`). The first close decided wins.
    pub(crate) fn close(&self, code: CloseCode, reason: &str, flush: bool) {
        let mut st = self.state.lock();
        let first = st.close.is_none() && !self.closed.load(Ordering::Acquire);
        if first {
            if !flush {
                st.frames.clear();
                st.bytes = 0;
            }
            st.close = Some((code, reason.to_owned()));
            self.closed.store(true, Ordering::Release);
        }
        drop(st);
        if first && !flush {
            self.signal_abort();
        }
        self.notify.notify_one();
        self.urgent.notify_one();
    }

    fn signal_abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.abort.notify_waiters();
        self.abort.notify_one();
    }

    /// Completes once a close that drops queued frames has been decided.
    pub(crate) async fn aborted(&self) {
        loop {
            let notified = self.abort.notified();
            if self.aborted.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// The byte limit.
    pub(crate) fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    /// True once a close has been decided.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Bytes queued now.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Waits until something is queued or a close is decided; says whether it is urgent
    /// (see [`Outbox::pending`]).
    pub(crate) async fn ready(&self) -> bool {
        loop {
            let notified = self.notify.notified();
            if let Some(urgent) = self.pending() {
                return urgent;
            }
            notified.await;
        }
    }

    /// `None` when nothing is queued and no close is decided; else whether what is queued is
    /// urgent: a reply or a close among it, or `flush_bytes` queued, so it is written without
    /// waiting for a coalescing window.
    pub(crate) fn pending(&self) -> Option<bool> {
        let st = self.state.lock();
        (!st.frames.is_empty() || st.close.is_some())
            .then_some(st.reply || st.close.is_some() || st.bytes >= self.flush_bytes)
    }

    /// Waits until what is queued is urgent: the wake-up of a session that holds events for
    /// a coalescing window, whoever queued the reply or decided the close (the session
    /// itself, the fan-out, a deactivation).
    pub(crate) async fn urgent(&self) {
        loop {
            let notified = self.urgent.notified();
            if self.pending() == Some(true) {
                return;
            }
            notified.await;
        }
    }

    /// Takes everything queued (and the close decision, if any).
    pub(crate) fn drain(&self) -> Drained {
        let mut st = self.state.lock();
        st.bytes = 0;
        st.reply = false;
        Drained {
            frames: std::mem::take(&mut st.frames),
            close: st.close.take(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Queued {
        Queued::reply(Utf8Bytes::from(s))
    }

    #[test]
    fn drains_in_order_and_counts_bytes() {
        let o = Outbox::new(100, usize::MAX);
        o.push(q("ab")).unwrap();
        o.push(q("cde")).unwrap();
        assert_eq!(o.queued_bytes(), 5);
        let d = o.drain();
        let texts: Vec<&str> = d.frames.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(texts, ["ab", "cde"]);
        assert!(d.close.is_none());
        assert_eq!(o.queued_bytes(), 0);
    }

    #[test]
    fn overflow_drops_the_queue_and_closes_with_4008() {
        let o = Outbox::new(10, usize::MAX);
        o.push(q("12345")).unwrap();
        assert_eq!(o.push(q("1234567")), Err(PushError::Overflow));
        assert_eq!(o.push(q("1")), Err(PushError::Closed));
        let d = o.drain();
        assert!(d.frames.is_empty());
        assert_eq!(d.close.unwrap().0, CloseCode::SlowConsumer);
    }

    #[test]
    fn close_with_flush_keeps_what_is_queued() {
        let o = Outbox::new(100, usize::MAX);
        o.push(q("last words")).unwrap();
        o.close(CloseCode::GoingAway, "shutdown", true);
        o.close(CloseCode::Forbidden, "ignored: the first close wins", false);
        let d = o.drain();
        assert_eq!(d.frames.len(), 1);
        assert_eq!(d.close.unwrap().0, CloseCode::GoingAway);
    }

    #[test]
    fn a_queued_reply_or_close_is_urgent_and_events_are_not() {
        let o = Outbox::new(1_000, 12);
        assert_eq!(o.pending(), None);
        let event = Queued {
            text: Utf8Bytes::from("event"),
            kind: Kind::Replayed,
            seq: 1,
        };
        o.push(event.clone()).unwrap();
        assert_eq!(o.pending(), Some(false));
        o.push(q("ack")).unwrap();
        assert_eq!(o.pending(), Some(true));
        o.drain();
        o.push(event.clone()).unwrap();
        assert_eq!(o.pending(), Some(false), "drained: the reply is gone");
        o.push(event.clone()).unwrap();
        assert_eq!(o.pending(), Some(false), "10 bytes, under flush_bytes (12)");
        o.push(event.clone()).unwrap();
        assert_eq!(o.pending(), Some(true), "15 bytes: a write's worth");
        o.drain();
        o.push(event).unwrap();
        o.close(CloseCode::GoingAway, "shutdown", true);
        assert_eq!(o.pending(), Some(true));
    }

    #[tokio::test]
    async fn urgent_wakes_on_a_reply_from_another_task_and_not_on_events() {
        let o = std::sync::Arc::new(Outbox::new(1_000, 1_000));
        let event = || Queued {
            text: Utf8Bytes::from("event"),
            kind: Kind::Replayed,
            seq: 1,
        };
        o.push(event()).unwrap();
        let o2 = o.clone();
        let t = tokio::spawn(async move { o2.urgent().await });
        tokio::task::yield_now().await;
        o.push(event()).unwrap();
        tokio::task::yield_now().await;
        assert!(!t.is_finished(), "events alone are not urgent");
        o.push(q("gap notice")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), t)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn ready_wakes_on_push() {
        let o = std::sync::Arc::new(Outbox::new(100, usize::MAX));
        let o2 = o.clone();
        let t = tokio::spawn(async move { o2.ready().await });
        tokio::task::yield_now().await;
        o.push(q("x")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), t)
            .await
            .unwrap()
            .unwrap();
    }
}
