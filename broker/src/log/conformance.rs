//! The conformance suite of [`EventLog`]: every implementation runs it (`conformance_tests!`
//! in its module), so a new store starts green or red on its first day. Each check states one
//! rule of the trait's contract.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use scopecast_protocol::{EventId, RawJson, Timestamp};

use super::{EventLog, LogError, NewEvent, TailItem};

/// A fresh log under test, and how to make it apply its retention now.
pub(crate) struct Made {
    pub(crate) log: Arc<dyn EventLog>,
    /// Applies retention (keeping the newest `keep` events given to [`Maker::make`]); it also
    /// owns whatever the log needs to outlive (a temporary folder).
    pub(crate) retain: Box<dyn Fn() + Send + Sync>,
}

/// Makes fresh, empty logs of one implementation.
#[async_trait::async_trait]
pub(crate) trait Maker: Sync {
    /// A log whose retention keeps the newest `keep` events.
    async fn make(&self, keep: usize) -> Made;
}

fn new(topic: &str, n: usize, id: Option<&str>) -> NewEvent {
    NewEvent {
        topic: topic.parse().unwrap(),
        data: RawJson::from_string(format!("{{\"n\":{n}}}")).unwrap(),
        event_id: id.map(|i| EventId::new(i).unwrap()),
    }
}

async fn one(log: &dyn EventLog, e: NewEvent) -> Result<super::Appended, LogError> {
    log.append(vec![e]).await.pop().unwrap()
}

async fn next(tail: &mut super::Tail) -> TailItem {
    tokio::time::timeout(Duration::from_secs(10), tail.next())
        .await
        .expect("the tail yielded nothing within 10 s")
        .expect("the tail ended")
}

/// `seq`s are consecutive from 1; each batch gets one result per event, in its order.
pub(crate) async fn seqs_are_consecutive_and_answered_in_order(m: &dyn Maker) {
    let made = m.make(1000).await;
    let log = made.log.clone();
    assert_eq!(log.bounds().last, 0);
    let first = log
        .append((0..3).map(|n| new("a.b", n, None)).collect())
        .await;
    let second = log.append(vec![new("a.c", 3, None)]).await;
    let seqs: Vec<u64> = first
        .iter()
        .chain(&second)
        .map(|r| r.as_ref().unwrap().seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert!(first.iter().all(|r| !r.as_ref().unwrap().duplicate));
    let b = log.bounds();
    assert_eq!((b.first, b.last), (1, 4));
    let read = log.read_from(2, 10).await.unwrap();
    assert_eq!(read.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(read[2].topic.as_str(), "a.c");
    assert_eq!(read[0].data.get(), r#"{"n":1}"#, "payloads byte for byte");
}

/// A repeated event id is answered with the original `seq` and `duplicate`, stores nothing;
/// the same id with another body is a conflict; inside one batch too.
pub(crate) async fn event_ids_are_idempotent_and_conflicts_refused(m: &dyn Maker) {
    let made = m.make(1000).await;
    let log = made.log.clone();
    let a = one(&*log, new("a.b", 1, Some("id-1"))).await.unwrap();
    let again = one(&*log, new("a.b", 1, Some("id-1"))).await.unwrap();
    assert_eq!((again.seq, again.duplicate), (a.seq, true));
    assert_eq!(again.event_id.as_str(), "id-1");
    assert_eq!(
        one(&*log, new("a.b", 2, Some("id-1"))).await,
        Err(LogError::Conflict { seq: a.seq })
    );
    assert_eq!(
        one(&*log, new("a.x", 1, Some("id-1"))).await,
        Err(LogError::Conflict { seq: a.seq }),
        "another topic is another event"
    );
    let batch = log
        .append(vec![
            new("a.b", 5, Some("id-2")),
            new("a.b", 5, Some("id-2")),
            new("a.b", 6, Some("id-2")),
        ])
        .await;
    let fresh = batch[0].as_ref().unwrap();
    assert!(!fresh.duplicate);
    assert_eq!(batch[1].as_ref().unwrap().seq, fresh.seq);
    assert!(batch[1].as_ref().unwrap().duplicate);
    assert_eq!(batch[2], Err(LogError::Conflict { seq: fresh.seq }));
    assert_eq!(log.bounds().last, fresh.seq, "duplicates took no seq");
}

/// Concurrent submitters each keep their own order, and no `seq` is given twice.
pub(crate) async fn concurrent_submitters_keep_their_order(m: &dyn Maker) {
    let made = m.make(10_000).await;
    let log = made.log.clone();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            for n in 0..100 {
                pending.push(log.submit(vec![new("c.d", t * 1000 + n, None)]).await);
            }
            let mut seqs = Vec::new();
            for p in pending {
                seqs.push(p.await[0].as_ref().unwrap().seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "submission order kept"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<u64>>());
}

/// A tail yields every event from its start once, in order, then each new one as it is
/// stored.
pub(crate) async fn a_tail_yields_every_event_once_then_live_ones(m: &dyn Maker) {
    let made = m.make(10_000).await;
    let log = made.log.clone();
    for n in 0..5 {
        one(&*log, new("t.a", n, None)).await.unwrap();
    }
    let mut tail = log.tail(3);
    for seq in [3, 4, 5] {
        match next(&mut tail).await {
            TailItem::Event(e) => assert_eq!(e.seq, seq),
            other => panic!("{other:?}"),
        }
    }
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for n in 0..600 {
                one(&*log, new("t.b", n, None)).await.unwrap();
            }
        })
    };
    for seq in 6..=605 {
        match next(&mut tail).await {
            TailItem::Event(e) => assert_eq!(e.seq, seq),
            other => panic!("{other:?}"),
        }
    }
    writer.await.unwrap();
    // A second tail from the start reads the same.
    let mut again = log.tail(1);
    for seq in 1..=605 {
        match next(&mut again).await {
            TailItem::Event(e) => assert_eq!(e.seq, seq),
            other => panic!("{other:?}"),
        }
    }
}

/// A tail that starts below what retention kept gets an explicit gap, never silence.
pub(crate) async fn a_tail_below_retention_gets_a_gap(m: &dyn Maker) {
    let made = m.make(3).await;
    let log = made.log.clone();
    for n in 0..10 {
        one(&*log, new("g.a", n, None)).await.unwrap();
    }
    (made.retain)();
    let b = log.bounds();
    assert_eq!(b.last, 10);
    assert!(b.first > 1);
    // A reader asking below retention gets what is kept, never an event retention let go of
    // (the memory window of recent events may still hold them).
    let read = log.read_from(1, 100).await.unwrap();
    assert_eq!(read.first().map(|e| e.seq), Some(b.first));
    assert_eq!(read.len() as u64, b.last - b.first + 1);
    let mut tail = log.tail(1);
    match next(&mut tail).await {
        TailItem::Gap { from, to } => assert_eq!((from, to), (1, b.first - 1)),
        other => panic!("{other:?}"),
    }
    match next(&mut tail).await {
        TailItem::Event(e) => assert_eq!(e.seq, b.first),
        other => panic!("{other:?}"),
    }
}

/// `seq_at` finds the first event accepted at or after an instant; the epoch stays put.
pub(crate) async fn times_are_in_seq_order_and_the_epoch_is_stable(m: &dyn Maker) {
    let made = m.make(1000).await;
    let log = made.log.clone();
    let before = Timestamp::now();
    let a = one(&*log, new("s.a", 0, None)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let middle = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let b = one(&*log, new("s.a", 1, None)).await.unwrap();
    assert!(a.time <= b.time);
    assert_eq!(log.seq_at(before).await.unwrap(), a.seq);
    assert_eq!(log.seq_at(middle).await.unwrap(), b.seq);
    assert!(!log.epoch().is_empty());
    assert_eq!(log.epoch(), log.epoch());
}

/// Generates one `#[tokio::test]` per check for the maker `$maker`.
macro_rules! conformance_tests {
    ($maker:expr) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            use crate::log::conformance as c;

            #[tokio::test]
            async fn seqs_are_consecutive_and_answered_in_order() {
                c::seqs_are_consecutive_and_answered_in_order(&$maker).await;
            }
            #[tokio::test]
            async fn event_ids_are_idempotent_and_conflicts_refused() {
                c::event_ids_are_idempotent_and_conflicts_refused(&$maker).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_submitters_keep_their_order() {
                c::concurrent_submitters_keep_their_order(&$maker).await;
            }
            #[tokio::test]
            async fn a_tail_yields_every_event_once_then_live_ones() {
                c::a_tail_yields_every_event_once_then_live_ones(&$maker).await;
            }
            #[tokio::test]
            async fn a_tail_below_retention_gets_a_gap() {
                c::a_tail_below_retention_gets_a_gap(&$maker).await;
            }
            #[tokio::test]
            async fn times_are_in_seq_order_and_the_epoch_is_stable() {
                c::times_are_in_seq_order_and_the_epoch_is_stable(&$maker).await;
            }
        }
    };
}
pub(crate) use conformance_tests;
