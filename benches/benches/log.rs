//! Event log candidates side by side: append throughput by batch size and durability, and
//! replay throughput, for the durable log on redb (what the broker uses), SQLite in WAL mode
//! (the other candidate, written here only to be measured), and the memory log (baseline).
//!
//! Run: `cargo bench -p scopecast-bench --bench log`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use scopecast_broker::log::{
    DurableLog, EventLog, MemoryLog, NewEvent, Storage, StoredEvent, SyncMode,
};
use scopecast_protocol::{EventId, RawJson, Timestamp, Topic};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// A ~1 KiB FHIR-like payload.
fn payload() -> RawJson {
    let text = "x".repeat(900);
    RawJson::from_string(format!(
        r#"{{"resourceType":"Encounter","status":"finished","text":"{text}"}}"#
    ))
    .expect("json")
}

fn batch(next: &AtomicU64, n: usize, data: &RawJson, topic: &Topic) -> Vec<Arc<StoredEvent>> {
    let first = next.fetch_add(n as u64, Ordering::Relaxed);
    (0..n as u64)
        .map(|i| {
            Arc::new(StoredEvent::new(
                first + i,
                topic.clone(),
                EventId::from_uuid([7; 16]),
                Timestamp::now(),
                data.clone(),
            ))
        })
        .collect()
}

/// SQLite in WAL mode, one transaction per batch: the second candidate.
struct SqliteLog {
    pool: sqlx::SqlitePool,
}

impl SqliteLog {
    async fn open(path: &std::path::Path, full_sync: bool) -> SqliteLog {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if full_sync {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            });
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .expect("sqlite");
        sqlx::query("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, id TEXT NOT NULL, time INTEGER NOT NULL, data TEXT NOT NULL)")
            .execute(&pool)
            .await
            .expect("table");
        SqliteLog { pool }
    }

    async fn append(&self, events: &[Arc<StoredEvent>]) {
        let mut tx = self.pool.begin().await.expect("begin");
        for e in events {
            sqlx::query(
                "INSERT INTO events (seq, topic, id, time, data) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(e.seq as i64)
            .bind(e.topic.as_str())
            .bind(e.event_id.as_str())
            .bind(e.time.unix_nanos() as i64)
            .bind(e.data.get())
            .execute(&mut *tx)
            .await
            .expect("insert");
        }
        tx.commit().await.expect("commit");
    }

    async fn read_after(&self, after: u64, limit: usize) -> usize {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT seq, topic, id, time, data FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .expect("select");
        rows.iter()
            .map(|r| r.get::<String, _>("data").len())
            .filter(|n| *n > 0)
            .count()
    }
}

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let data = payload();
    let topic: Topic = "fhir.encounter.finished".parse().expect("topic");
    let mut group = c.benchmark_group("log_append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for size in [1usize, 64, 512] {
        group.throughput(Throughput::Elements(size as u64));
        let memory = MemoryLog::new(1_000_000);
        let next = AtomicU64::new(1);
        group.bench_with_input(BenchmarkId::new("memory", size), &size, |b, &n| {
            b.iter(|| {
                memory
                    .write(&batch(&next, n, &data, &topic))
                    .expect("append")
            })
        });
        // The whole local log: the writer task numbers the events (idempotency on), stores
        // them and answers, as a publish goes.
        let local = rt.block_on(async {
            MemoryLog::start(1_000_000, 8192, (Duration::from_secs(600), 200_000))
        });
        let new_events = |n: usize| -> Vec<NewEvent> {
            (0..n)
                .map(|_| NewEvent {
                    topic: topic.clone(),
                    data: data.clone(),
                    event_id: None,
                })
                .collect()
        };
        group.bench_with_input(
            BenchmarkId::new("local_log_memory", size),
            &size,
            |b, &n| b.iter(|| rt.block_on(local.append(new_events(n)))),
        );
        for (name, sync) in [("redb_fsync", SyncMode::Fsync), ("redb_os", SyncMode::Os)] {
            let path = dir.path().join(format!("{name}-{size}.redb"));
            let log = rt
                .block_on(async { DurableLog::open(&path, sync) })
                .expect("open");
            let next = AtomicU64::new(1);
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, &n| {
                b.iter(|| {
                    let events = batch(&next, n, &data, &topic);
                    rt.block_on(async { log.write(&events) }).expect("append")
                })
            });
        }
        for (name, full) in [("sqlite_wal_full", true), ("sqlite_wal_normal", false)] {
            let path = dir.path().join(format!("{name}-{size}.sqlite"));
            let log = rt.block_on(SqliteLog::open(&path, full));
            let next = AtomicU64::new(1);
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, &n| {
                b.iter(|| rt.block_on(log.append(&batch(&next, n, &data, &topic))))
            });
        }
    }
    group.finish();
}

fn replay(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let data = payload();
    let topic: Topic = "fhir.encounter.finished".parse().expect("topic");
    const EVENTS: usize = 20_000;
    let redb = rt
        .block_on(async { DurableLog::open(&dir.path().join("replay.redb"), SyncMode::Os) })
        .expect("open");
    let sqlite = rt.block_on(SqliteLog::open(&dir.path().join("replay.sqlite"), false));
    let next = AtomicU64::new(1);
    for _ in 0..EVENTS / 500 {
        let b = batch(&next, 500, &data, &topic);
        redb.write(&b).expect("append");
        rt.block_on(sqlite.append(&b));
    }
    let mut group = c.benchmark_group("log_replay");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("redb_pages_of_512", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut cursor = 0;
                let mut n = 0;
                loop {
                    let page = redb.read(cursor + 1, 512).expect("read");
                    let Some(last) = page.last() else { break };
                    cursor = last.seq;
                    n += page.len();
                }
                assert_eq!(n, EVENTS);
            })
        })
    });
    group.bench_function("sqlite_pages_of_512", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut cursor = 0u64;
                let mut n = 0;
                loop {
                    let got = sqlite.read_after(cursor, 512).await;
                    if got == 0 {
                        break;
                    }
                    cursor += got as u64;
                    n += got;
                }
                assert_eq!(n, EVENTS);
            })
        })
    });
    group.finish();
}

criterion_group!(benches, append, replay);
criterion_main!(benches);
