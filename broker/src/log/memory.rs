//! [`MemoryLog`]: the event log in memory, keeping the newest `max_events` events.

use std::collections::VecDeque;

use async_trait::async_trait;
use parking_lot::RwLock;

use super::durable::{FileWriter, encode};
use super::{EventLog, LogError, LogRange, LogSnapshot, StoredEvent};

/// The memory log's events at one instant (a copy: the log keeps changing).
struct MemorySnapshot(Vec<StoredEvent>);

impl LogSnapshot for MemorySnapshot {
    fn write_to(self: Box<Self>, path: &std::path::Path) -> Result<LogRange, LogError> {
        let mut out = FileWriter::create(path)?;
        for e in &self.0 {
            out.push(e.seq, &encode(e))?;
        }
        out.finish()
    }
}

/// Events in memory, lost on restart. Keeps the newest `max_events`.
pub struct MemoryLog {
    max_events: usize,
    events: RwLock<VecDeque<StoredEvent>>,
    last: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
    epoch: String,
}

impl MemoryLog {
    /// An empty log keeping at most `max_events` events.
    pub fn new(max_events: usize) -> MemoryLog {
        MemoryLog {
            max_events: max_events.max(1),
            events: RwLock::new(VecDeque::new()),
            last: 0.into(),
            bytes: 0.into(),
            epoch: uuid::Uuid::new_v4().to_string(),
        }
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    async fn append(&self, batch: &[StoredEvent]) -> Result<(), LogError> {
        let mut events = self.events.write();
        let size = |e: &StoredEvent| (e.data.get().len() + e.topic.as_str().len()) as u64;
        let mut bytes = self.bytes.load(std::sync::atomic::Ordering::Relaxed);
        for e in batch {
            bytes += size(e);
            events.push_back(e.clone());
        }
        while events.len() > self.max_events {
            if let Some(e) = events.pop_front() {
                bytes -= size(&e);
            }
        }
        self.bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
        if let Some(last) = batch.last() {
            self.last
                .store(last.seq, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    fn last_seq(&self) -> u64 {
        self.last.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, LogError> {
        let events = self.events.read();
        let start = events.partition_point(|e| e.seq <= after);
        Ok(events.iter().skip(start).take(limit).cloned().collect())
    }

    fn first_seq(&self) -> u64 {
        self.events
            .read()
            .front()
            .map_or(self.last_seq() + 1, |e| e.seq)
    }

    fn stored_bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn snapshot(&self) -> Result<Box<dyn LogSnapshot>, LogError> {
        let events: Vec<StoredEvent> = self.events.read().iter().cloned().collect();
        Ok(Box::new(MemorySnapshot(events)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scopecast_protocol::{EventId, RawJson, Timestamp};

    fn ev(seq: u64) -> StoredEvent {
        StoredEvent {
            seq,
            topic: "a.b".parse().unwrap(),
            event_id: EventId::new(&format!("e{seq}")).unwrap(),
            time: Timestamp::now(),
            data: RawJson::from_string("1".into()).unwrap(),
        }
    }

    #[tokio::test]
    async fn finds_the_first_seq_at_a_time() {
        let log = MemoryLog::new(100);
        let at = |s: i64| Timestamp::from_unix_seconds(1_700_000_000 + s).unwrap();
        let batch: Vec<StoredEvent> = (1..=10)
            .map(|seq| StoredEvent {
                time: at(seq as i64 * 10),
                ..ev(seq)
            })
            .collect();
        log.append(&batch).await.unwrap();
        assert_eq!(log.seq_at(at(0)).await.unwrap(), 1);
        assert_eq!(log.seq_at(at(35)).await.unwrap(), 4);
        assert_eq!(log.seq_at(at(40)).await.unwrap(), 4);
        assert_eq!(log.seq_at(at(1000)).await.unwrap(), 11);
    }

    #[tokio::test]
    async fn keeps_the_newest_and_reads_in_order() {
        let log = MemoryLog::new(3);
        assert_eq!((log.last_seq(), log.first_seq()), (0, 1));
        log.append(&[ev(1), ev(2)]).await.unwrap();
        log.append(&[ev(3), ev(4)]).await.unwrap();
        assert_eq!((log.last_seq(), log.first_seq()), (4, 2));
        let seqs: Vec<u64> = log
            .read_after(2, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [3, 4]);
        assert_eq!(log.read_after(0, 1).await.unwrap()[0].seq, 2);
    }
}
