//! [`DurableLog`]: the event log on disk, on redb (an embedded, crash-safe B-tree store with
//! ACID transactions). One write transaction per sequencer batch (group commit); with
//! `fsync` durability each commit is flushed to the disk before it returns, so an
//! acknowledged event survives a crash of the broker process and of the machine.
//!
//! Layout: table `events` maps `seq` (u64) to an encoded event; table `meta` keeps the byte
//! total for retention. The newest `seq` is the last key; it is never reused, because retention
//! only removes from the front and the last event is always kept.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use scopecast_protocol::{EventId, RawJson, Timestamp, Topic};

use super::local::{LocalLog, Storage};
use super::{Bounds, LogError, LogRange, LogSnapshot, StoredEvent};

/// The version of this file layout (tables and record encoding), recorded in backups: a
/// change to either is a new version, with its conversion.
pub const LOG_FORMAT: u32 = 1;

const EVENTS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
const BYTES_KEY: &str = "bytes";
/// The log's identity (a UUID's 128 bits as two u64s, high then low), written when the file is
/// created (or, for a file from before epochs existed, at its first open since).
const EPOCH_HI: &str = "epoch_hi";
const EPOCH_LO: &str = "epoch_lo";

/// How durable an acknowledged event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Each batch is flushed to the disk before it is acknowledged.
    Fsync,
    /// Batches are written without a flush; a background flush runs every 100 ms. An
    /// acknowledged event can be lost if the broker or the machine crashes within that time.
    Os,
}

/// Retention limits; an event goes when any is exceeded. `0` disables a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most events kept.
    pub max_events: u64,
    /// Most bytes of encoded events kept.
    pub max_bytes: u64,
    /// Oldest event kept, in seconds.
    pub max_age_s: u64,
}

/// The event log in a redb file.
pub struct DurableLog {
    store: Arc<Store>,
    sync: SyncMode,
    last: AtomicU64,
    first: AtomicU64,
    /// Bytes of encoded events, as the `meta` table counts them.
    bytes: AtomicU64,
    /// The log's identity.
    epoch: String,
}

impl std::fmt::Debug for DurableLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableLog")
            .field("sync", &self.sync)
            .field("first", &self.first)
            .field("last", &self.last)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// The open database, and how to open it again after a failed write.
///
/// After a write fails (a full disk, an I/O error), redb refuses every later transaction
/// until the file is opened again; opening it repairs it from its last commit. So a failed
/// write marks the store broken, and the next use reopens it (at most once a second): the log
/// recovers on its own once the disk has room again, and nothing committed is lost.
struct Store {
    path: PathBuf,
    open: Opener,
    db: Mutex<Option<Arc<Database>>>,
    broken: AtomicBool,
    last_reopen: Mutex<Option<Instant>>,
}

/// Opens the database (the file at `Store::path`; tests open other backends).
type Opener = Box<dyn Fn(&Path) -> Result<Database, redb::DatabaseError> + Send + Sync>;

/// The page cache of [`DurableLog::open`], in bytes. redb's own default (1 GiB) would keep
/// most recently written events in memory.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Longest wait for readers to let go of the database before a reopen.
const REOPEN_WAIT: Duration = Duration::from_secs(2);

impl Store {
    fn db(&self) -> Result<Arc<Database>, LogError> {
        self.db
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| LogError::Unavailable("the event log is closed for repair".to_owned()))
    }

    /// Runs `f` on the database, reopening it first if a write failed before; a failed `f`
    /// marks the store broken. Blocking: call from a blocking thread.
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T, LogError>) -> Result<T, LogError> {
        if self.broken.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let db = self.db()?;
        let out = f(&db);
        if out.is_err() {
            self.broken.store(true, Ordering::Release);
        }
        out
    }

    fn reopen(&self) -> Result<(), LogError> {
        {
            let mut last = self
                .last_reopen
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Err(LogError::Unavailable(
                    "the event log failed a write and is waiting to reopen".to_owned(),
                ));
            }
            *last = Some(Instant::now());
        }
        let old = self
            .db
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut old) = old {
            // Readers in flight hold the database; redb allows one open handle per file.
            let deadline = Instant::now() + REOPEN_WAIT;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(shared) if Instant::now() < deadline => {
                        old = shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(shared) => {
                        *self.db.lock().unwrap_or_else(PoisonError::into_inner) = Some(shared);
                        return Err(LogError::Unavailable(
                            "the event log is busy; reopening later".to_owned(),
                        ));
                    }
                }
            }
        }
        let db = (self.open)(&self.path).map_err(io)?;
        *self.db.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(db));
        self.broken.store(false, Ordering::Release);
        tracing::warn!(path = %self.path.display(), "event log reopened after a failed write");
        Ok(())
    }
}

fn io(e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(e.to_string())
}

/// Encodes an event: `u16 topic len, topic, u16 id len, id, i64 unix nanos, data`.
pub(super) fn encode(e: &StoredEvent) -> Vec<u8> {
    let (topic, id, data) = (
        e.topic.as_str().as_bytes(),
        e.event_id.as_str().as_bytes(),
        e.data.get().as_bytes(),
    );
    let mut v = Vec::with_capacity(12 + topic.len() + id.len() + data.len());
    v.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    v.extend_from_slice(topic);
    v.extend_from_slice(&(id.len() as u16).to_le_bytes());
    v.extend_from_slice(id);
    v.extend_from_slice(&(e.time.unix_nanos() as i64).to_le_bytes());
    v.extend_from_slice(data);
    v
}

fn decode(seq: u64, b: &[u8]) -> Result<StoredEvent, LogError> {
    let bad = || LogError::Unavailable(format!("event {seq} is corrupt"));
    let take =
        |b: &[u8], at: usize, n: usize| b.get(at..at + n).ok_or_else(bad).map(<[u8]>::to_vec);
    let tl = u16::from_le_bytes(take(b, 0, 2)?.try_into().map_err(|_| bad())?) as usize;
    let topic = String::from_utf8(take(b, 2, tl)?).map_err(|_| bad())?;
    let il = u16::from_le_bytes(take(b, 2 + tl, 2)?.try_into().map_err(|_| bad())?) as usize;
    let id = String::from_utf8(take(b, 4 + tl, il)?).map_err(|_| bad())?;
    let at = 4 + tl + il;
    let nanos = i64::from_le_bytes(take(b, at, 8)?.try_into().map_err(|_| bad())?);
    let data = String::from_utf8(b.get(at + 8..).ok_or_else(bad)?.to_vec()).map_err(|_| bad())?;
    Ok(StoredEvent::new(
        seq,
        Topic::new(&topic).map_err(|_| bad())?,
        EventId::new(&id).map_err(|_| bad())?,
        Timestamp::from_unix_nanos(i128::from(nanos)).map_err(|_| bad())?,
        RawJson::from_string(data).map_err(|_| bad())?,
    ))
}

impl DurableLog {
    /// Opens (or creates) the log at `path`.
    ///
    /// # Errors
    /// [`LogError`] when the file cannot be opened or is not a redb database.
    pub fn open(path: &Path, sync: SyncMode) -> Result<DurableLog, LogError> {
        DurableLog::open_cached(path, sync, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the log at `path` with a page cache of at most `cache_bytes`.
    ///
    /// # Errors
    /// As [`DurableLog::open`].
    pub fn open_cached(
        path: &Path,
        sync: SyncMode,
        cache_bytes: usize,
    ) -> Result<DurableLog, LogError> {
        DurableLog::open_with(
            path,
            sync,
            Box::new(move |p| Database::builder().set_cache_size(cache_bytes).create(p)),
        )
    }

    fn open_with(path: &Path, sync: SyncMode, open: Opener) -> Result<DurableLog, LogError> {
        let db = open(path).map_err(io)?;
        let (first, last, bytes, epoch) = {
            let mut w = db.begin_write().map_err(io)?;
            w.set_durability(Durability::Immediate).map_err(io)?;
            let epoch = {
                w.open_table(EVENTS).map_err(io)?;
                let mut meta = w.open_table(META).map_err(io)?;
                let hi = meta.get(EPOCH_HI).map_err(io)?.map(|v| v.value());
                let lo = meta.get(EPOCH_LO).map_err(io)?.map(|v| v.value());
                match (hi, lo) {
                    (Some(hi), Some(lo)) => uuid::Uuid::from_u64_pair(hi, lo),
                    _ => {
                        let id = uuid::Uuid::new_v4();
                        let (hi, lo) = id.as_u64_pair();
                        meta.insert(EPOCH_HI, hi).map_err(io)?;
                        meta.insert(EPOCH_LO, lo).map_err(io)?;
                        id
                    }
                }
            };
            w.commit().map_err(io)?;
            let r = db.begin_read().map_err(io)?;
            let t = r.open_table(EVENTS).map_err(io)?;
            let first = t.first().map_err(io)?.map(|(k, _)| k.value());
            let last = t.last().map_err(io)?.map(|(k, _)| k.value()).unwrap_or(0);
            let meta = r.open_table(META).map_err(io)?;
            let bytes = meta.get(BYTES_KEY).map_err(io)?.map_or(0, |v| v.value());
            (first.unwrap_or(last + 1), last, bytes, epoch.to_string())
        };
        let log = DurableLog {
            store: Arc::new(Store {
                path: path.to_owned(),
                open,
                db: Mutex::new(Some(Arc::new(db))),
                broken: AtomicBool::new(false),
                last_reopen: Mutex::new(None),
            }),
            sync,
            last: AtomicU64::new(last),
            first: AtomicU64::new(first),
            bytes: AtomicU64::new(bytes),
            epoch,
        };
        if sync == SyncMode::Os {
            log.spawn_flusher();
        }
        Ok(log)
    }

    fn spawn_flusher(&self) {
        let store = Arc::downgrade(&self.store);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(store) = store.upgrade() else { return };
                let flush = tokio::task::spawn_blocking(move || -> Result<(), LogError> {
                    store.with(|db| {
                        let mut w = db.begin_write().map_err(io)?;
                        w.set_durability(Durability::Immediate).map_err(io)?;
                        w.commit().map_err(io)
                    })
                })
                .await;
                if let Ok(Err(e)) = flush {
                    tracing::warn!(error = %e, "event log flush failed");
                }
            }
        });
    }

    /// Removes the oldest events past `retention`; never the newest one. Returns how many.
    ///
    /// # Errors
    /// [`LogError`] when the store fails.
    pub fn enforce(&self, retention: Retention) -> Result<u64, LogError> {
        let last = self.last.load(Ordering::Acquire);
        if last == 0 {
            return Ok(0);
        }
        let now_ns = Timestamp::now().unix_nanos();
        let (removed, new_first, bytes) = self
            .store
            .with(|db| DurableLog::enforce_sync(db, last, now_ns, retention))?;
        if let Some(first) = new_first {
            self.first.store(first, Ordering::Release);
            self.bytes.store(bytes, Ordering::Relaxed);
        }
        Ok(removed)
    }

    /// Removes the events past `retention` in one transaction: (how many, the new first seq,
    /// the bytes left).
    fn enforce_sync(
        db: &Database,
        last: u64,
        now_ns: i128,
        retention: Retention,
    ) -> Result<(u64, Option<u64>, u64), LogError> {
        let mut w = db.begin_write().map_err(io)?;
        w.set_durability(Durability::Immediate).map_err(io)?;
        let removed;
        let new_first;
        let left;
        {
            let mut events = w.open_table(EVENTS).map_err(io)?;
            let mut meta = w.open_table(META).map_err(io)?;
            let mut bytes = meta.get(BYTES_KEY).map_err(io)?.map_or(0, |v| v.value());
            let count = events.len().map_err(io)?;
            let mut excess = if retention.max_events > 0 {
                count.saturating_sub(retention.max_events)
            } else {
                0
            };
            let mut cutoff = 0u64;
            let mut dropped_bytes = 0u64;
            for item in events.range(..last).map_err(io)? {
                let (k, v) = item.map_err(io)?;
                let len = v.value().len() as u64;
                let old = retention.max_age_s > 0 && {
                    let e = decode(k.value(), v.value())?;
                    now_ns - e.time.unix_nanos() > i128::from(retention.max_age_s) * 1_000_000_000
                };
                let over_bytes =
                    retention.max_bytes > 0 && bytes - dropped_bytes > retention.max_bytes;
                if excess == 0 && !old && !over_bytes {
                    break;
                }
                excess = excess.saturating_sub(1);
                dropped_bytes += len;
                cutoff = k.value();
            }
            if cutoff == 0 {
                return Ok((0, None, bytes));
            }
            removed = events
                .extract_from_if(..=cutoff, |_, _| true)
                .map_err(io)?
                .count() as u64;
            bytes -= dropped_bytes;
            meta.insert(BYTES_KEY, bytes).map_err(io)?;
            new_first = cutoff + 1;
            left = bytes;
        }
        w.commit().map_err(io)?;
        Ok((removed, Some(new_first), left))
    }

    fn read_sync(
        db: &Database,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        let r = db.begin_read().map_err(io)?;
        let t = r.open_table(EVENTS).map_err(io)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in t.range(from..).map_err(io)?.take(limit) {
            let (k, v) = item.map_err(io)?;
            out.push(Arc::new(decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// A running log over this file (see [`LocalLog::start`] for `queue` and `idempotency`).
    pub fn start(
        self,
        queue: usize,
        idempotency: (std::time::Duration, usize),
    ) -> LocalLog<DurableLog> {
        LocalLog::start(self, queue, idempotency)
    }
}

impl Storage for DurableLog {
    fn write(&self, batch: &[Arc<StoredEvent>]) -> Result<(), LogError> {
        let Some(last) = batch.last().map(|e| e.seq) else {
            return Ok(());
        };
        let encoded: Vec<(u64, Vec<u8>)> = batch.iter().map(|e| (e.seq, encode(e))).collect();
        let added: u64 = encoded.iter().map(|(_, b)| b.len() as u64).sum();
        let durability = match self.sync {
            SyncMode::Fsync => Durability::Immediate,
            SyncMode::Os => Durability::None,
        };
        self.store
            .with(|db| DurableLog::append_sync(db, durability, &encoded))?;
        self.last.store(last, Ordering::Release);
        self.bytes.fetch_add(added, Ordering::Relaxed);
        Ok(())
    }

    fn read(&self, from: u64, limit: usize) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        if self.store.broken.load(Ordering::Acquire) {
            self.store.reopen()?;
        }
        let db = self.store.db()?;
        DurableLog::read_sync(&db, from, limit)
    }

    fn bounds(&self) -> Bounds {
        let last = self.last.load(Ordering::Acquire);
        Bounds {
            first: self.first.load(Ordering::Acquire).max(1),
            last,
        }
    }

    fn stored_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn snapshot(&self) -> Result<Box<dyn LogSnapshot>, LogError> {
        let db = self.store.db()?;
        let read = db.begin_read().map_err(io)?;
        Ok(Box::new(DurableSnapshot { read, _db: db }))
    }

    fn probe(&self) -> Result<(), LogError> {
        self.store.with(|db| {
            let mut w = db.begin_write().map_err(io)?;
            w.set_durability(Durability::Immediate).map_err(io)?;
            w.commit().map_err(io)
        })
    }

    fn blocks(&self) -> bool {
        true
    }
}

/// Bytes of records a [`FileWriter`] collects before it commits them.
const WRITE_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Writes records, in `seq` order, into a new log file (a backup's `events.redb`), committing
/// every [`WRITE_CHUNK_BYTES`] so memory stays bounded whatever the log's size; the last
/// commit flushes the file to the disk.
pub(super) struct FileWriter {
    db: Database,
    pending: Vec<(u64, Vec<u8>)>,
    pending_bytes: usize,
    total_bytes: u64,
    first: Option<u64>,
    last: u64,
    events: u64,
}

impl FileWriter {
    /// Creates the log file at `path` (mode 0600; it must not exist yet, or be empty).
    pub(super) fn create(path: &Path) -> Result<FileWriter, LogError> {
        crate::data_dir::private_file(path).map_err(io)?;
        let db = Database::builder()
            .set_cache_size(16 * 1024 * 1024)
            .create(path)
            .map_err(io)?;
        Ok(FileWriter {
            db,
            pending: Vec::new(),
            pending_bytes: 0,
            total_bytes: 0,
            first: None,
            last: 0,
            events: 0,
        })
    }

    /// Adds the record of event `seq` (as [`encode`] makes it).
    pub(super) fn push(&mut self, seq: u64, record: &[u8]) -> Result<(), LogError> {
        self.first.get_or_insert(seq);
        self.last = seq;
        self.events += 1;
        self.pending_bytes += record.len();
        self.pending.push((seq, record.to_vec()));
        if self.pending_bytes >= WRITE_CHUNK_BYTES {
            self.commit(Durability::None)?;
        }
        Ok(())
    }

    fn commit(&mut self, durability: Durability) -> Result<(), LogError> {
        let mut w = self.db.begin_write().map_err(io)?;
        w.set_durability(durability).map_err(io)?;
        {
            let mut t = w.open_table(EVENTS).map_err(io)?;
            for (seq, bytes) in self.pending.drain(..) {
                t.insert(seq, bytes.as_slice()).map_err(io)?;
                self.total_bytes += bytes.len() as u64;
            }
            let mut meta = w.open_table(META).map_err(io)?;
            meta.insert(BYTES_KEY, self.total_bytes).map_err(io)?;
        }
        self.pending_bytes = 0;
        w.commit().map_err(io)
    }

    /// Commits the rest, flushed to the disk, and says what the file holds.
    pub(super) fn finish(mut self) -> Result<LogRange, LogError> {
        self.commit(Durability::Immediate)?;
        Ok(LogRange {
            first_seq: self.first.unwrap_or(self.last + 1),
            last_seq: self.last,
            events: self.events,
        })
    }
}

/// A read transaction on the log: the events committed when it began, whatever is appended
/// or removed by retention later.
struct DurableSnapshot {
    /// Dropped first: redb wants its transactions gone before the database.
    read: ReadTransaction,
    /// Keeps the database open meanwhile (a reopen after a failed write waits for it).
    _db: Arc<Database>,
}

impl LogSnapshot for DurableSnapshot {
    fn write_to(self: Box<Self>, path: &Path) -> Result<LogRange, LogError> {
        let events = self.read.open_table(EVENTS).map_err(io)?;
        let mut out = FileWriter::create(path)?;
        for item in events.iter().map_err(io)? {
            let (k, v) = item.map_err(io)?;
            out.push(k.value(), v.value())?;
        }
        out.finish()
    }
}

impl DurableLog {
    /// Writes one batch in one transaction.
    fn append_sync(
        db: &Database,
        durability: Durability,
        encoded: &[(u64, Vec<u8>)],
    ) -> Result<(), LogError> {
        let mut w = db.begin_write().map_err(io)?;
        w.set_durability(durability).map_err(io)?;
        {
            let mut t = w.open_table(EVENTS).map_err(io)?;
            let mut added = 0u64;
            for (seq, bytes) in encoded {
                t.insert(*seq, bytes.as_slice()).map_err(io)?;
                added += bytes.len() as u64;
            }
            let mut meta = w.open_table(META).map_err(io)?;
            let total = meta.get(BYTES_KEY).map_err(io)?.map_or(0, |v| v.value());
            meta.insert(BYTES_KEY, total + added).map_err(io)?;
        }
        w.commit().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::conformance::{Made, Maker, conformance_tests};

    struct Redb;

    #[async_trait::async_trait]
    impl Maker for Redb {
        async fn make(&self, keep: usize) -> Made {
            let dir = tempfile::tempdir().unwrap();
            let storage =
                DurableLog::open(&dir.path().join("events.redb"), SyncMode::Fsync).unwrap();
            let log = storage.start(64, (Duration::from_secs(600), 10_000));
            let kept = log.clone();
            Made {
                log: Arc::new(log),
                retain: Box::new(move || {
                    let _folder = &dir;
                    kept.storage()
                        .enforce(Retention {
                            max_events: keep as u64,
                            max_bytes: 0,
                            max_age_s: 0,
                        })
                        .unwrap();
                }),
            }
        }
    }

    conformance_tests!(Redb);

    fn at(seq: u64, topic: &str, time: Timestamp) -> Arc<StoredEvent> {
        Arc::new(StoredEvent::new(
            seq,
            topic.parse().unwrap(),
            EventId::new(&format!("e{seq}")).unwrap(),
            time,
            RawJson::from_string(format!("{{\"n\":{seq}}}")).unwrap(),
        ))
    }

    fn ev(seq: u64, topic: &str) -> Arc<StoredEvent> {
        at(seq, topic, Timestamp::now())
    }

    /// A disk that can be made to fail every write (as a full one does), shared by every
    /// database opened on it, so a reopen sees what was committed before.
    #[derive(Debug, Clone)]
    struct FlakyDisk {
        bytes: Arc<redb::backends::InMemoryBackend>,
        full: Arc<AtomicBool>,
    }

    impl FlakyDisk {
        fn check(&self) -> std::io::Result<()> {
            if self.full.load(Ordering::SeqCst) {
                return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
            }
            Ok(())
        }
    }

    impl redb::StorageBackend for FlakyDisk {
        fn len(&self) -> std::io::Result<u64> {
            self.bytes.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.bytes.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.bytes.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.bytes.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.bytes.write(offset, data)
        }
    }

    #[tokio::test]
    async fn a_failed_write_is_refused_and_the_log_recovers_when_the_disk_does() {
        let disk = FlakyDisk {
            bytes: Arc::new(redb::backends::InMemoryBackend::new()),
            full: Arc::new(AtomicBool::new(false)),
        };
        let opener = {
            let disk = disk.clone();
            Box::new(move |_: &Path| Database::builder().create_with_backend(disk.clone()))
        };
        let log = DurableLog::open_with(Path::new("flaky"), SyncMode::Fsync, opener).unwrap();
        log.write(&[ev(1, "a.b"), ev(2, "a.b")]).unwrap();
        disk.full.store(true, Ordering::SeqCst);
        assert!(matches!(
            log.write(&[ev(3, "a.b")]),
            Err(LogError::Unavailable(_))
        ));
        assert_eq!(log.bounds().last, 2, "nothing counted as stored");
        // Still full: refused again, never a panic; the readiness probe says so too.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(log.write(&[ev(3, "a.b")]).is_err());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(log.probe().is_err(), "the probe writes too");
        // Room again: after the reopen pause the same batch goes in, and nothing is lost.
        disk.full.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        log.probe()
            .expect("room again: the probe passes without storing an event");
        assert_eq!(log.bounds().last, 2);
        log.write(&[ev(3, "a.b")]).unwrap();
        let got = log.read(1, 10).unwrap();
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[tokio::test]
    async fn survives_reopen_and_never_reuses_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.redb");
        {
            let log = DurableLog::open(&path, SyncMode::Fsync).unwrap();
            log.write(&[ev(1, "a.b"), ev(2, "a.c")]).unwrap();
            log.write(&[ev(3, "a.b")]).unwrap();
        }
        let epoch = DurableLog::open(&path, SyncMode::Fsync)
            .unwrap()
            .epoch()
            .to_owned();
        let log = DurableLog::open(&path, SyncMode::Fsync).unwrap();
        assert_eq!(
            log.epoch(),
            epoch,
            "the epoch is the file's, kept across opens"
        );
        assert_eq!((log.bounds().first, log.bounds().last), (1, 3));
        let got = log.read(2, 10).unwrap();
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(got[0], at(2, "a.c", got[0].time));
        // Retention keeps the newest event, so the next seq is never reused.
        let removed = log
            .enforce(Retention {
                max_events: 1,
                max_bytes: 0,
                max_age_s: 0,
            })
            .unwrap();
        assert_eq!(removed, 2);
        assert_eq!((log.bounds().first, log.bounds().last), (3, 3));
        drop(log);
        let log = DurableLog::open(&path, SyncMode::Fsync).unwrap();
        assert_eq!((log.bounds().first, log.bounds().last), (3, 3));
    }

    #[tokio::test]
    async fn retention_by_bytes_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let log = DurableLog::open(&dir.path().join("e.redb"), SyncMode::Fsync).unwrap();
        let batch: Vec<_> = (1..=10).map(|s| ev(s, "a")).collect();
        log.write(&batch).unwrap();
        let one = encode(&batch[0]).len() as u64;
        log.enforce(Retention {
            max_events: 0,
            max_bytes: one * 4,
            max_age_s: 0,
        })
        .unwrap();
        // Event 10 is two bytes longer than the others ("e10", 10): keeping events 8 to 10 fits.
        assert_eq!(log.bounds().first, 8);
        // Age: old events go from the front; the newest stays even when it is old.
        let dir2 = tempfile::tempdir().unwrap();
        let aged = DurableLog::open(&dir2.path().join("e.redb"), SyncMode::Fsync).unwrap();
        let old = |seq| {
            at(
                seq,
                "a",
                Timestamp::from_unix_seconds(1_000_000_000).unwrap(),
            )
        };
        aged.write(&[old(1), old(2), ev(3, "a")]).unwrap();
        aged.enforce(Retention {
            max_events: 0,
            max_bytes: 0,
            max_age_s: 60,
        })
        .unwrap();
        assert_eq!(aged.bounds().first, 3);
        aged.write(&[old(4)]).unwrap();
        aged.enforce(Retention {
            max_events: 0,
            max_bytes: 0,
            max_age_s: 60,
        })
        .unwrap();
        // Removal stops at the first event young enough, scanning from the front.
        assert_eq!((aged.bounds().first, aged.bounds().last), (3, 4));
    }

    #[tokio::test]
    async fn a_snapshot_holds_the_events_of_its_instant_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let log = DurableLog::open(&dir.path().join("events.redb"), SyncMode::Fsync).unwrap();
        let first: Vec<_> = (1..=5).map(|s| ev(s, "a.b")).collect();
        log.write(&first).unwrap();
        log.enforce(Retention {
            max_events: 4,
            max_bytes: 0,
            max_age_s: 0,
        })
        .unwrap();
        let snapshot = log.snapshot().unwrap();
        // After the snapshot: neither new events nor retention reach it.
        log.write(&[ev(6, "a.c")]).unwrap();
        log.enforce(Retention {
            max_events: 1,
            max_bytes: 0,
            max_age_s: 0,
        })
        .unwrap();
        let out = dir.path().join("backup.redb");
        let range = tokio::task::spawn_blocking({
            let out = out.clone();
            move || snapshot.write_to(&out)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            range,
            LogRange {
                first_seq: 2,
                last_seq: 5,
                events: 4
            }
        );
        let copy = DurableLog::open(&out, SyncMode::Fsync).unwrap();
        assert_eq!((copy.bounds().first, copy.bounds().last), (2, 5));
        assert_eq!(copy.read(1, 10).unwrap(), first[1..].to_vec());
        assert_eq!(
            copy.stored_bytes(),
            first[1..]
                .iter()
                .map(|e| encode(e).len() as u64)
                .sum::<u64>()
        );
    }

    #[tokio::test]
    async fn the_memory_log_backs_up_in_the_same_format() {
        let dir = tempfile::tempdir().unwrap();
        let log = crate::log::MemoryLog::new(3);
        use crate::log::local::Storage as _;
        let events: Vec<_> = (1..=4).map(|s| ev(s, "m.n")).collect();
        log.write(&events).unwrap();
        let snapshot = log.snapshot().unwrap();
        log.write(&[ev(5, "m.n")]).unwrap();
        let out = dir.path().join("events.redb");
        let range = snapshot.write_to(&out).unwrap();
        assert_eq!((range.first_seq, range.last_seq, range.events), (2, 4, 3));
        let copy = DurableLog::open(&out, SyncMode::Fsync).unwrap();
        assert_eq!(copy.read(1, 10).unwrap(), events[1..].to_vec());
        // A restored broker goes on after the backup's last seq.
        assert_eq!(copy.bounds().last, 4);
        let empty = crate::log::MemoryLog::new(3).snapshot().unwrap();
        let range = empty.write_to(&dir.path().join("empty.redb")).unwrap();
        assert_eq!((range.first_seq, range.last_seq, range.events), (1, 0, 0));
    }
}
