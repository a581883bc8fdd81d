//! Events as the log keeps them: [`StoredEvent`] (shared by `Arc` between the log's recent
//! events, the fan-out and every session it reaches), [`NewEvent`] (what a publisher hands in)
//! and [`Appended`] (where it went).

use std::any::Any;
use std::fmt;
use std::sync::OnceLock;

use scopecast_protocol::{EventId, RawJson, Timestamp, Topic};

/// An event to store; the log assigns its `seq`, its time and (without an `event_id`) its id.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The concrete topic, already authorised.
    pub topic: Topic,
    /// The payload, already checked, kept byte for byte.
    pub data: RawJson,
    /// The publisher's idempotency key (`event_id`, HTTP `Idempotency-Key`); `None`: the log
    /// makes a UUID and the event is not deduplicated.
    pub event_id: Option<EventId>,
}

/// Where a stored event went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Its `seq`.
    pub seq: u64,
    /// When the log accepted it (for a duplicate: the original's time).
    pub time: Timestamp,
    /// Its event id: the publisher's, or the UUID the log made.
    pub event_id: EventId,
    /// True when the event id was stored before, within the idempotency window: `seq` is the
    /// original one and nothing was stored or delivered again.
    pub duplicate: bool,
}

/// One stored event.
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
    /// `time` in whole Unix milliseconds, computed once (each delivery compares it with the
    /// receiver's token deadline).
    time_ms: i64,
}

impl StoredEvent {
    /// An event.
    pub fn new(
        seq: u64,
        topic: Topic,
        event_id: EventId,
        time: Timestamp,
        data: RawJson,
    ) -> StoredEvent {
        StoredEvent {
            seq,
            topic,
            event_id,
            time,
            data,
            time_ms: time.unix_ms(),
        }
    }

    /// When the broker accepted it, in whole Unix milliseconds (`time`, truncated).
    pub fn time_ms(&self) -> i64 {
        self.time_ms
    }
}

impl Clone for StoredEvent {
    /// A copy (the payload is copied).
    fn clone(&self) -> Self {
        StoredEvent::new(
            self.seq,
            self.topic.clone(),
            self.event_id.clone(),
            self.time,
            self.data.clone(),
        )
    }
}

impl PartialEq for StoredEvent {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
            && self.topic == other.topic
            && self.event_id == other.event_id
            && self.time == other.time
            && self.data == other.data
    }
}

impl Eq for StoredEvent {}

impl fmt::Debug for StoredEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredEvent")
            .field("seq", &self.seq)
            .field("topic", &self.topic)
            .field("event_id", &self.event_id)
            .field("time", &self.time)
            .field("data", &self.data)
            .finish()
    }
}

/// A wire format whose encoding of an event is the same for every receiver, so it is cached on
/// the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The `event` frame of `scopecast.v1` (the WebSocket front end's text).
    ScopecastV1,
    /// The JSON body of an outgoing webhook.
    Webhook,
}

const FORMATS: usize = 2;

/// The encodings of one event while the fan-out offers it, one slot per [`Format`], each made
/// by the first front end that needs it and then shared by every session or endpoint it goes
/// to: however many subscribers an event reaches, each format is encoded once. A slot holds
/// the type its front end writes (`scopecast.v1`: the WebSocket text, reference-counted, so
/// each outbox keeps its share after the fan-out drops the cache), which the fan-out never
/// needs to know. Kept beside the event, not in it: a stored event retained for hours must not
/// carry its frames too.
#[derive(Default)]
pub struct Encodings {
    slots: [OnceLock<Box<dyn Any + Send + Sync>>; FORMATS],
}

impl fmt::Debug for Encodings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let made: Vec<usize> = (0..FORMATS)
            .filter(|i| self.slots[*i].get().is_some())
            .collect();
        f.debug_struct("Encodings").field("made", &made).finish()
    }
}

impl Encodings {
    /// The encoding of `format`, made by `make` the first time. `None` only if the slot holds
    /// another type than `T` (two front ends disagreeing on a format's type: a bug), in which
    /// case the caller encodes without the cache.
    pub fn get_or_make<T: Any + Send + Sync>(
        &self,
        format: Format,
        make: impl FnOnce() -> T,
    ) -> Option<&T> {
        let slot = match format {
            Format::ScopecastV1 => &self.slots[0],
            Format::Webhook => &self.slots[1],
        };
        slot.get_or_init(|| Box::new(make())).downcast_ref::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_is_made_once_and_shared() {
        let encodings = Encodings::default();
        let mut made = 0;
        for _ in 0..3 {
            let v = encodings.get_or_make(Format::ScopecastV1, || {
                made += 1;
                String::from("frame")
            });
            assert_eq!(v.map(String::as_str), Some("frame"));
        }
        assert_eq!(made, 1);
        assert!(
            encodings
                .get_or_make(Format::ScopecastV1, || 7u32)
                .is_none(),
            "another type in the same slot is refused, not mistaken"
        );
    }
}
