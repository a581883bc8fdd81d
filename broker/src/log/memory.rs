//! [`MemoryLog`]: the event log's storage in memory, keeping the newest `max_events` events;
//! lost on restart (`--log memory`, tests). Run it as a [`LocalLog`](super::LocalLog) with
//! [`MemoryLog::start`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use super::durable::{FileWriter, encode};
use super::local::{LocalLog, Storage};
use super::{Bounds, LogError, LogRange, LogSnapshot, StoredEvent};

/// The memory log's events at one instant (a copy of the pointers: the log keeps changing).
struct MemorySnapshot(Vec<Arc<StoredEvent>>);

impl LogSnapshot for MemorySnapshot {
    fn write_to(self: Box<Self>, path: &std::path::Path) -> Result<LogRange, LogError> {
        let mut out = FileWriter::create(path)?;
        for e in &self.0 {
            out.push(e.seq, &encode(e))?;
        }
        out.finish()
    }
}

/// Events in memory. Keeps the newest `max_events`.
#[derive(Debug)]
pub struct MemoryLog {
    max_events: usize,
    events: RwLock<VecDeque<Arc<StoredEvent>>>,
    last: AtomicU64,
    first: AtomicU64,
    bytes: AtomicU64,
    epoch: String,
}

impl MemoryLog {
    /// An empty log keeping at most `max_events` events.
    pub fn new(max_events: usize) -> MemoryLog {
        MemoryLog {
            max_events: max_events.max(1),
            events: RwLock::new(VecDeque::new()),
            last: AtomicU64::new(0),
            first: AtomicU64::new(1),
            bytes: AtomicU64::new(0),
            epoch: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// A running log over a new memory storage of at most `max_events` events (see
    /// [`LocalLog::start`] for `queue` and `idempotency`).
    pub fn start(
        max_events: usize,
        queue: usize,
        idempotency: (std::time::Duration, usize),
    ) -> LocalLog<MemoryLog> {
        LocalLog::start(MemoryLog::new(max_events), queue, idempotency)
    }
}

fn size(e: &StoredEvent) -> u64 {
    (e.data.get().len() + e.topic.as_str().len()) as u64
}

impl Storage for MemoryLog {
    fn write(&self, batch: &[Arc<StoredEvent>]) -> Result<(), LogError> {
        let mut events = self.events.write();
        let mut bytes = self.bytes.load(Ordering::Relaxed);
        for e in batch {
            bytes += size(e);
            events.push_back(e.clone());
        }
        while events.len() > self.max_events {
            if let Some(e) = events.pop_front() {
                bytes -= size(&e);
            }
        }
        self.bytes.store(bytes, Ordering::Relaxed);
        if let Some(front) = events.front() {
            self.first.store(front.seq, Ordering::Release);
        }
        if let Some(last) = batch.last() {
            self.last.store(last.seq, Ordering::Release);
        }
        Ok(())
    }

    fn read(&self, from: u64, limit: usize) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        let events = self.events.read();
        let start = events.partition_point(|e| e.seq < from);
        Ok(events.iter().skip(start).take(limit).cloned().collect())
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            first: self.first.load(Ordering::Acquire),
            last: self.last.load(Ordering::Acquire),
        }
    }

    fn stored_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn snapshot(&self) -> Result<Box<dyn LogSnapshot>, LogError> {
        let events: Vec<Arc<StoredEvent>> = self.events.read().iter().cloned().collect();
        Ok(Box::new(MemorySnapshot(events)))
    }

    fn probe(&self) -> Result<(), LogError> {
        Ok(())
    }

    fn blocks(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::conformance::{Made, Maker, conformance_tests};

    struct Memory;

    #[async_trait::async_trait]
    impl Maker for Memory {
        async fn make(&self, keep: usize) -> Made {
            Made {
                log: Arc::new(MemoryLog::start(
                    keep,
                    64,
                    (std::time::Duration::from_secs(600), 10_000),
                )),
                retain: Box::new(|| {}),
            }
        }
    }

    conformance_tests!(Memory);
}
