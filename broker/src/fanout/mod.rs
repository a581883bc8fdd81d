//! Fan-out (DESIGN section 1): offers each stored event, shared (`Arc<StoredEvent>`), to every
//! local subscriber whose subscription matches its topic. It does not know any wire format: a
//! subscriber ([`Deliver`]) encodes the event its own way, through the event's [`Encodings`]
//! (so the `scopecast.v1` frame is made once however many sessions get it), and never makes
//! the fan-out wait.
//!
//! Whatever the log stores is fanned out, whoever appended it (this process, or in cluster
//! mode another node), so every node delivers in `seq` order: a log of this process hands each
//! stored batch to the fan-out from its writer ([`EventLog::attach_sink`], no task hop); any
//! other log is tailed by the fan-out's own task.
//!
//! - `index`: [`TopicIndex`], exact topics in a `DashMap` plus a wildcard trie.

pub(crate) mod index;

use std::sync::Arc;

use futures_util::StreamExt;
use parking_lot::Mutex;
use scopecast_protocol::Pattern;

pub(crate) use index::TopicIndex;

use crate::log::{Encodings, EventLog, StoredEvent, TailItem};
use crate::metrics::Metrics;

/// Most tail items handled under one hold of the head lock.
const MAX_CHUNK: usize = 512;

/// A local subscriber as the fan-out sees it (a WebSocket session; next, FHIR and webhook
/// front ends). Called from the log's writer or the fan-out's tail task: it must not block or
/// wait.
pub(crate) trait Deliver: Send + Sync + 'static {
    /// Offers an event that matches one of its subscriptions, with the event's encodings made
    /// so far (a front end takes its format from there, or makes it there for the next
    /// subscriber); true when it took it (a subscriber with overlapping subscriptions is
    /// offered an event once per subscription and takes it once).
    fn offer(&self, event: &Arc<StoredEvent>, encodings: &Encodings) -> bool;
    /// Events `from..=to` are gone from the log before the fan-out reached them (retention
    /// overtook it): whatever matched is lost for this subscriber, which must be told.
    fn gap(&self, from: u64, to: u64);
}

/// The topic index, and the `seq` the fan-out has reached. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Fanout {
    index: Arc<TopicIndex>,
    /// The newest `seq` fanned out. The fan-out holds this lock while it offers a chunk
    /// of events; a subscribe holds it while it joins the index, so a new subscription gets
    /// exactly the events after the `head_seq` it is told.
    head: Arc<Mutex<u64>>,
    /// Since when (ms on the process's monotonic clock, see [`Fanout::behind_ms`]) the head
    /// has been behind the log's newest `seq` without moving; 0 while it keeps up.
    behind_since: Arc<std::sync::atomic::AtomicU64>,
}

/// How long a tail may sit behind the log's newest `seq` without delivering before the
/// fan-out gives it up and tails again from the head (an ordered consumer that stalled).
const STALL: std::time::Duration = std::time::Duration::from_secs(5);

/// Milliseconds since the first call in this process (a monotonic clock for the watchdog).
fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("head", &*self.head.lock())
            .finish()
    }
}

impl Fanout {
    /// Starts fanning out `log` from its newest event on; the task runs until the log's tail
    /// ends (the log is dropped).
    pub(crate) fn start(
        log: Arc<dyn EventLog>,
        metrics: Arc<Metrics>,
    ) -> (Fanout, tokio::task::JoinHandle<()>) {
        let last = log.bounds().last;
        let index = Arc::new(TopicIndex::default());
        let head = Arc::new(Mutex::new(last));
        let behind_since = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let fanout = Fanout {
            index: index.clone(),
            head: head.clone(),
            behind_since: behind_since.clone(),
        };
        // A log of this process hands each stored batch over from its writer; any other log
        // (one that other nodes append to) is tailed by a task of our own.
        let sink: crate::log::Sink = {
            let (index, head, metrics) = (index.clone(), head.clone(), metrics.clone());
            Arc::new(move |batch: &[Arc<StoredEvent>]| {
                offer_all(&index, &head, &metrics, batch.iter().map(TailRef::Event));
            })
        };
        if log.attach_sink(sink) {
            tracing::debug!("fan-out: handed each batch by the log's writer");
            return (fanout, tokio::spawn(async {}));
        }
        let task = tokio::spawn(run(
            Arc::downgrade(&log),
            index,
            head,
            behind_since,
            metrics,
        ));
        (fanout, task)
    }

    /// How long the fan-out has been behind the log without moving, in ms (0: keeping up).
    /// Readiness uses it: a node that delivers nothing is not healthy.
    pub(crate) fn behind_ms(&self) -> u64 {
        match self.behind_since.load(std::sync::atomic::Ordering::Acquire) {
            0 => 0,
            since => mono_ms().saturating_sub(since),
        }
    }

    /// Adds `sub` under `pattern` and returns the newest `seq` already fanned out: every
    /// matching event after it will be offered to `sub`. `on_joined` runs under the same lock
    /// (to queue `subscribed` before any of those events).
    pub(crate) fn subscribe(
        &self,
        pattern: &Pattern,
        sub: &Arc<dyn Deliver>,
        on_joined: impl FnOnce(u64),
    ) -> u64 {
        let head = self.head.lock();
        self.index.insert(pattern, sub);
        on_joined(*head);
        *head
    }

    /// Removes `sub` from under `pattern`. Events being fanned out right now finish first.
    pub(crate) fn unsubscribe(&self, pattern: &Pattern, sub: &Arc<dyn Deliver>) {
        let _head = self.head.lock();
        self.index.remove(pattern, sub);
    }

    /// The newest `seq` fanned out.
    pub(crate) fn head_seq(&self) -> u64 {
        *self.head.lock()
    }

    /// The index (tests).
    #[cfg(test)]
    pub(crate) fn index(&self) -> &TopicIndex {
        &self.index
    }
}

/// Tails the log from the head on and offers what comes, with a watchdog: when the tail ends
/// (a consumer lost) or sits behind the log's newest `seq` for [`STALL`] without delivering
/// (an ordered consumer that stalled after a majority loss), it tails again from `head + 1`.
/// Stops when the log is dropped.
async fn run(
    log: std::sync::Weak<dyn EventLog>,
    index: Arc<TopicIndex>,
    head: Arc<Mutex<u64>>,
    behind_since: Arc<std::sync::atomic::AtomicU64>,
    metrics: Arc<Metrics>,
) {
    use std::sync::atomic::Ordering;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(strong) = log.upgrade() else {
            tracing::debug!("fan-out stopped: the log is gone");
            return;
        };
        let from = *head.lock() + 1;
        let mut chunks = strong.tail(from).ready_chunks(MAX_CHUNK);
        drop(strong);
        let mut moved_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                chunk = chunks.next() => {
                    let Some(chunk) = chunk else {
                        tracing::warn!(from = *head.lock() + 1, "fan-out: the log's tail ended; tailing again");
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                        break;
                    };
                    offer_all(
                        &index,
                        &head,
                        &metrics,
                        chunk.iter().map(|item| match item {
                            TailItem::Event(e) => TailRef::Event(e),
                            TailItem::Gap { from, to } => TailRef::Gap(*from, *to),
                        }),
                    );
                    moved_at = tokio::time::Instant::now();
                    behind_since.store(0, Ordering::Release);
                }
                _ = tick.tick() => {
                    let Some(strong) = log.upgrade() else { return };
                    let last = strong.bounds().last;
                    drop(strong);
                    let at = *head.lock();
                    metrics.fanout_lag_events.set(last.saturating_sub(at) as i64);
                    if last <= at {
                        behind_since.store(0, Ordering::Release);
                        moved_at = tokio::time::Instant::now();
                        continue;
                    }
                    let _ = behind_since.compare_exchange(0, mono_ms(), Ordering::AcqRel, Ordering::Acquire);
                    if moved_at.elapsed() >= STALL {
                        tracing::warn!(head = at, last, "fan-out: the tail stalled behind the log; tailing again");
                        metrics.fanout_restarts.inc();
                        break;
                    }
                }
            }
        }
    }
}

/// A tail item, borrowed.
enum TailRef<'a> {
    Event(&'a Arc<StoredEvent>),
    Gap(u64, u64),
}

/// Offers `items` in order under one hold of the head lock: each event to every matching
/// subscriber, each gap to every subscriber. Events at or below the head (already fanned
/// out) are skipped.
fn offer_all<'a>(
    index: &TopicIndex,
    head: &Mutex<u64>,
    metrics: &Metrics,
    items: impl Iterator<Item = TailRef<'a>>,
) {
    let mut delivered = 0u64;
    let mut events = 0u64;
    {
        let mut head = head.lock();
        for item in items {
            match item {
                TailRef::Event(e) => {
                    if e.seq <= *head {
                        continue;
                    }
                    events += 1;
                    let encodings = Encodings::default();
                    index.for_each_match(&e.topic, |s| {
                        if s.offer(e, &encodings) {
                            delivered += 1;
                        }
                    });
                    *head = e.seq;
                }
                TailRef::Gap(from, to) => {
                    tracing::warn!(
                        from,
                        to,
                        "the fan-out fell behind retention: events lost for every subscriber"
                    );
                    index.for_each(|s| s.gap(from, to));
                    *head = to;
                }
            }
        }
    }
    metrics.events_published.inc_by(events);
    metrics.events_delivered.inc_by(delivered);
    if let Some(width) = delivered.checked_div(events) {
        // One atomic read and write per batch, not per event.
        let width = width as i64;
        let old = metrics.fanout_width.get();
        let next = if (width - old).abs() < 8 {
            width
        } else {
            old + (width - old) / 8
        };
        metrics.fanout_width.set(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{MemoryLog, NewEvent};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[derive(Default)]
    struct Counting {
        last: AtomicU64,
        taken: AtomicU64,
    }

    impl Deliver for Counting {
        fn offer(&self, e: &Arc<StoredEvent>, _: &Encodings) -> bool {
            if self.last.fetch_max(e.seq, Ordering::Relaxed) >= e.seq {
                return false;
            }
            self.taken.fetch_add(1, Ordering::Relaxed);
            true
        }
        fn gap(&self, _: u64, _: u64) {}
    }

    /// A log that takes no sink, as a remote one: the fan-out tails it with its own task.
    struct Tailed(crate::log::LocalLog<MemoryLog>);

    #[async_trait::async_trait]
    impl EventLog for Tailed {
        async fn submit(&self, batch: Vec<NewEvent>) -> crate::log::AppendFuture {
            self.0.submit(batch).await
        }
        async fn read_from(
            &self,
            from: u64,
            limit: usize,
        ) -> Result<Vec<Arc<StoredEvent>>, crate::log::LogError> {
            self.0.read_from(from, limit).await
        }
        fn bounds(&self) -> crate::log::Bounds {
            self.0.bounds()
        }
        fn tail(&self, from: u64) -> crate::log::Tail {
            self.0.tail(from)
        }
        fn epoch(&self) -> &str {
            self.0.epoch()
        }
        fn stored_bytes(&self) -> u64 {
            self.0.stored_bytes()
        }
        fn snapshot(&self) -> Result<Box<dyn crate::log::LogSnapshot>, crate::log::LogError> {
            self.0.snapshot()
        }
    }

    #[tokio::test]
    async fn a_subscriber_gets_exactly_the_events_after_its_head_in_order() {
        let log: Arc<dyn EventLog> =
            Arc::new(MemoryLog::start(1000, 16, (Duration::from_secs(60), 100)));
        exactly_after_head(log).await;
    }

    #[tokio::test]
    async fn a_tailed_log_gives_the_same_as_one_that_hands_batches_over() {
        let log: Arc<dyn EventLog> = Arc::new(Tailed(MemoryLog::start(
            1000,
            16,
            (Duration::from_secs(60), 100),
        )));
        exactly_after_head(log).await;
    }

    async fn exactly_after_head(log: Arc<dyn EventLog>) {
        let publish = |n: usize| {
            let log = log.clone();
            async move {
                log.append(vec![NewEvent {
                    topic: format!("a.t{}", n % 3).parse().unwrap(),
                    data: scopecast_protocol::RawJson::from_string(n.to_string()).unwrap(),
                    event_id: None,
                }])
                .await
            }
        };
        publish(0).await;
        let metrics = Arc::new(Metrics::new().unwrap());
        let (fanout, _task) = Fanout::start(log.clone(), metrics);
        let sub: Arc<dyn Deliver> = Arc::new(Counting::default());
        let counting = Arc::new(Counting::default());
        let as_deliver: Arc<dyn Deliver> = counting.clone();
        let head = fanout.subscribe(&"a.>".parse().unwrap(), &as_deliver, |_| {});
        // Overlapping subscriptions: offered twice, taken once.
        fanout.subscribe(&"a.t1".parse().unwrap(), &as_deliver, |_| {});
        fanout.subscribe(&"b.>".parse().unwrap(), &sub, |_| {});
        assert_eq!(head, 1, "the event before the subscription is not offered");
        for n in 1..=30 {
            publish(n).await;
        }
        tokio::time::timeout(Duration::from_secs(5), async {
            while counting.last.load(Ordering::Relaxed) < 31 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(counting.taken.load(Ordering::Relaxed), 30);
        assert_eq!(fanout.head_seq(), 31);
        fanout.unsubscribe(&"a.>".parse().unwrap(), &as_deliver);
        fanout.unsubscribe(&"a.t1".parse().unwrap(), &as_deliver);
        assert_eq!(fanout.index().sizes(), (0, 1));
    }
}
