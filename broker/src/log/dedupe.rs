//! Idempotent publishing, behind the local logs: an `event_id` (or HTTP `Idempotency-Key`)
//! stored within the window is answered with the original `seq` and not stored or delivered
//! again; the same id with another topic or payload is a conflict. Owned by the log's writer
//! task alone, so no lock. (JetStream does the same with `Nats-Msg-Id`.)

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use scopecast_protocol::{EventId, RawJson, Timestamp, Topic};

/// What an earlier event with the same id was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    /// Its `seq`.
    pub(crate) seq: u64,
    /// When it was accepted.
    pub(crate) time: Timestamp,
    /// A hash of its topic and payload.
    pub(crate) fingerprint: u64,
}

/// Event ids seen within the window, oldest first.
pub(crate) struct Dedupe {
    window: Duration,
    max_keys: usize,
    seen: HashMap<EventId, (Seen, Instant)>,
    order: VecDeque<(Instant, EventId)>,
    /// Keyed at random per process: which bodies share a fingerprint cannot be worked out
    /// from outside, so another body cannot pass for a duplicate.
    keys: std::collections::hash_map::RandomState,
}

impl Dedupe {
    /// Remembers ids for `window`, at most `max_keys` of them (the oldest go first).
    pub(crate) fn new(window: Duration, max_keys: usize) -> Dedupe {
        Dedupe {
            window,
            max_keys,
            seen: HashMap::new(),
            order: VecDeque::new(),
            keys: std::collections::hash_map::RandomState::new(),
        }
    }

    /// A hash of what makes two publishes "the same event": the topic and the payload bytes.
    pub(crate) fn fingerprint(&self, topic: &Topic, data: &RawJson) -> u64 {
        let mut h = self.keys.build_hasher();
        topic.as_str().hash(&mut h);
        data.get().hash(&mut h);
        h.finish()
    }

    /// True when ids are remembered at all (a window of zero turns idempotency off).
    pub(crate) fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// How long ids are remembered.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, id)) = self.order.front() {
            let too_old = now.saturating_duration_since(*at) > self.window;
            if !too_old && self.order.len() <= self.max_keys {
                break;
            }
            // Forget it only if this entry is the current one for the id.
            if self.seen.get(id).is_some_and(|(_, t)| t == at) {
                self.seen.remove(id);
            }
            self.order.pop_front();
        }
    }

    /// The earlier event with `id`, if one was seen within the window.
    pub(crate) fn get(&mut self, id: &EventId, now: Instant) -> Option<Seen> {
        if self.window.is_zero() {
            return None;
        }
        self.expire(now);
        self.seen.get(id).map(|(s, _)| *s)
    }

    /// Remembers `id` as accepted at `at`.
    pub(crate) fn insert(&mut self, id: EventId, seen: Seen, at: Instant) {
        if self.window.is_zero() {
            return;
        }
        self.seen.insert(id.clone(), (seen, at));
        self.order.push_back((at, id));
    }

    /// Forgets `id` (its batch was not stored).
    pub(crate) fn remove(&mut self, id: &EventId) {
        self.seen.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> EventId {
        EventId::new(s).unwrap()
    }

    #[test]
    fn remembers_within_the_window_and_forgets_after() {
        let mut d = Dedupe::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        d.insert(
            id("a"),
            Seen {
                seq: 1,
                time: Timestamp::now(),
                fingerprint: 7,
            },
            t0,
        );
        assert_eq!(
            d.get(&id("a"), t0 + Duration::from_secs(5)).map(|s| s.seq),
            Some(1)
        );
        assert_eq!(d.get(&id("a"), t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn keeps_at_most_max_keys() {
        let mut d = Dedupe::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            d.insert(
                id(k),
                Seen {
                    seq: i as u64,
                    time: Timestamp::now(),
                    fingerprint: 0,
                },
                t0,
            );
        }
        assert_eq!(d.get(&id("a"), t0), None);
        assert!(d.get(&id("c"), t0).is_some());
    }

    #[test]
    fn fingerprints_differ_by_topic_and_payload() {
        let t: Topic = "a.b".parse().unwrap();
        let u: Topic = "a.c".parse().unwrap();
        let x = RawJson::from_string("1".into()).unwrap();
        let y = RawJson::from_string("2".into()).unwrap();
        let d = Dedupe::new(Duration::from_secs(1), 1);
        assert_ne!(d.fingerprint(&t, &x), d.fingerprint(&u, &x));
        assert_ne!(d.fingerprint(&t, &x), d.fingerprint(&t, &y));
        assert_eq!(d.fingerprint(&t, &x), d.fingerprint(&t, &x));
    }
}
