//! [`JetStreamLog`]: the event log of cluster mode on NATS JetStream (issue 16;
//! `../shared/research/cluster.md` section 2). One stream holds every event; its sequence is
//! the broker-wide `seq`, so every node that tails it delivers in the same order.
//!
//! - **Append.** Each event is published to `<prefix>.<topic>` with the headers
//!   `Scopecast-Event-Id`, `Scopecast-Time` (Unix nanoseconds, the accepting node's clock),
//!   `Nats-Msg-Id` (the event id: JetStream's de-duplication within the stream's duplicate
//!   window, which makes a retry safe) and, for an event with the publisher's id,
//!   `Scopecast-Fingerprint` (SHA-256 of topic and payload): JetStream compares ids, never
//!   bodies, so a duplicate ack is checked against the stored fingerprint and answered as a
//!   conflict when the body differs. An event is acknowledged only on JetStream's ack; a
//!   publish whose ack never came is retried with its id for [`RETRY_FOR`], then is
//!   [`LogError::Unknown`] (it may be stored). Submissions are sent in order on one
//!   connection, so one submitter's events keep their order while nothing fails; an event
//!   whose first attempt was lost and that is retried lands after those sent behind it.
//! - **Tail.** An ordered push consumer from the asked `seq`; a jump in the stream sequence
//!   (retention went past the tail's start) is yielded as a [`TailItem::Gap`], never skipped.
//! - **Reads** fetch messages by sequence (`STREAM.MSG.GET`).
//! - **Bounds** are kept from acks and a stream-info refresh every 500 ms.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use scopecast_protocol::{EventId, RawJson, Timestamp, Topic};
use sha2::{Digest, Sha256};

use super::{
    AppendFuture, Appended, Bounds, EventLog, LogError, LogSnapshot, NewEvent, StoredEvent, Tail,
    TailItem,
};

const EVENT_ID: &str = "Scopecast-Event-Id";
const TIME: &str = "Scopecast-Time";
const FINGERPRINT: &str = "Scopecast-Fingerprint";
const MSG_ID: &str = "Nats-Msg-Id";

/// The stream of a [`JetStreamLog`].
#[derive(Debug, Clone)]
pub struct JetStreamSettings {
    /// The stream's name.
    pub stream: String,
    /// Subjects are `<subject_prefix>.<topic>`.
    pub subject_prefix: String,
    /// Replicas (1 to 5; 3 for a cluster that survives a node).
    pub replicas: usize,
    /// Most events kept (0: no limit).
    pub max_events: u64,
    /// Most bytes kept (0: no limit).
    pub max_bytes: u64,
    /// Oldest event kept (zero: no limit).
    pub max_age: Duration,
    /// How long an event id is remembered (JetStream's duplicate window).
    pub duplicate_window: Duration,
}

/// The event log on a JetStream stream. Cheap to clone.
#[derive(Clone)]
pub struct JetStreamLog {
    js: jetstream::Context,
    /// The stream's handle without its info (see [`JetStreamLog::stream`]).
    handle: stream::Stream<()>,
    client: async_nats::Client,
    settings: Arc<JetStreamSettings>,
    epoch: Arc<str>,
    first: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl std::fmt::Debug for JetStreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLog")
            .field("stream", &self.settings.stream)
            .field("last", &self.last.load(Ordering::Relaxed))
            .finish()
    }
}

/// How long after it was sent a publish is retried with its id before the publisher is told
/// the log is unavailable (the first attempt, the retries and the duplicate check all fit in
/// it; measured from the send, not from the first failure, so a publisher's answer never
/// takes longer, whatever async-nats's own request time-out): longer than a JetStream leader election (4-9 s after a `kill -9` of the
/// leader; 10.3 s when the leader was cut off by a partition, docs/FAULTS.md), far shorter
/// than the duplicate window (the idempotency window, 10 minutes by default).
const RETRY_FOR: Duration = Duration::from_secs(15);

/// How long one retry waits for its acknowledgement before it is sent again (with the same
/// id, so JetStream answers a repeat with the first `seq`). async-nats would wait 5 s: a
/// retry sent just before a new leader took over then held the publisher's answer up to 5 s
/// past the election (a CI run measured 12.5 s for an election of about 7 s).
const RETRY_ATTEMPT: Duration = Duration::from_secs(1);

/// How long the first attempt waits for its acknowledgement before it is retried with the
/// same id. async-nats would wait 5 s: a publish sent to a leader that had lost its quorum
/// (it still takes proposals for a moment) then held the publisher's answer 5 s past the
/// new leader's election (measured on 2.15.1 after two of three nodes came back: 7.5 s
/// where the stream had a leader again after about 2 s). Long enough for an ack under load
/// (milliseconds); a retry of a stored event is answered as a duplicate, with its `seq`.
const FIRST_ATTEMPT: Duration = Duration::from_secs(2);

/// The longest pause between two retries (they start at 100 ms and double).
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(500);

/// How long a "no message" answer for a `seq` inside the retained range is checked before the
/// read fails when JetStream does not answer well (see `JetStreamLog::confirm_gone`): short
/// enough for a subscriber's history request; every request inside it is bounded by it.
const GONE_CHECK: Duration = Duration::from_secs(5);

/// How long every answer must say a message inside the retained range is not there before a
/// read goes past it as a hole (about 2.2 s with the pauses, no `gap` frame): about 8x the
/// longest a resumed former leader was seen answering from its own copy (251 ms;
/// docs/FAULTS.md). A former leader cut off by a partition cannot answer the majority's
/// clients until the heal, and then learns of the new term as a resumed one does (not
/// measured). Each lasting hole costs a read this long, every time: holes are expected only
/// in a stream made by hand without `deny_delete` or after a server lost acknowledged writes
/// (lazy fsync), and each is logged.
const HOLE_CONFIRM: Duration = Duration::from_secs(2);

/// A publish sent and not yet answered: its acknowledgement (or why it could not be sent),
/// the message to send again with the same id (subject, headers, payload), the event's id
/// and time, the body's fingerprint (empty without a publisher's id), and whether the id is
/// the publisher's.
type Sent = (
    Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>,
    (String, HeaderMap, bytes::Bytes),
    EventId,
    Timestamp,
    String,
    bool,
);

fn unavailable(e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(e.to_string())
}

/// The fingerprint of an event's body: SHA-256 of topic, a NUL, and the payload, hex. The same
/// on every node (a keyed in-process hash would not be).
fn fingerprint(topic: &Topic, data: &RawJson) -> String {
    let mut h = Sha256::new();
    h.update(topic.as_str().as_bytes());
    h.update([0]);
    h.update(data.get().as_bytes());
    let mut hex = String::with_capacity(64);
    for b in h.finalize() {
        use std::fmt::Write;
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

impl JetStreamLog {
    /// Creates the stream (or takes it as it is) on the JetStream of `client`, and starts the
    /// bounds refresher (it stops when every clone is dropped).
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when JetStream does not answer or refuses the stream.
    pub async fn open(
        client: async_nats::Client,
        settings: JetStreamSettings,
    ) -> Result<JetStreamLog, LogError> {
        let js = jetstream::new(client.clone());
        let config = stream::Config {
            name: settings.stream.clone(),
            subjects: vec![format!("{}.>", settings.subject_prefix)],
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            max_messages: if settings.max_events == 0 {
                -1
            } else {
                settings.max_events as i64
            },
            max_bytes: if settings.max_bytes == 0 {
                -1
            } else {
                settings.max_bytes as i64
            },
            max_age: settings.max_age,
            duplicate_window: settings.duplicate_window,
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        };
        let mut stream = js
            .get_or_create_stream(config.clone())
            .await
            .map_err(unavailable)?;
        let mut info = stream.info().await.map_err(unavailable)?.clone();
        // A stream made before with other settings (retention, replicas, subjects changed in
        // the configuration since) is brought to them: the bounds and the durability this
        // node reports are computed from the settings, so they must be the stream's.
        let have = &info.config;
        if have.num_replicas != config.num_replicas
            || have.max_messages != config.max_messages
            || have.max_bytes != config.max_bytes
            || have.max_age != config.max_age
            || have.duplicate_window != config.duplicate_window
            || have.subjects != config.subjects
        {
            tracing::warn!(
                stream = %settings.stream,
                "the stream's settings differ from the configuration; updating the stream"
            );
            js.update_stream(config).await.map_err(|e| {
                LogError::Unavailable(format!(
                    "the stream {} exists with other settings and cannot be updated to the configuration's: {e}",
                    settings.stream
                ))
            })?;
            info = stream.info().await.map_err(unavailable)?.clone();
        }
        let created = Timestamp::from_unix_nanos(info.created.unix_timestamp_nanos())
            .map(|t| t.unix_nanos())
            .unwrap_or_default();
        let handle = js
            .get_stream_no_info(&settings.stream)
            .await
            .map_err(unavailable)?;
        let log = JetStreamLog {
            js,
            handle,
            client,
            epoch: format!("jetstream:{}:{created}", settings.stream).into(),
            settings: Arc::new(settings),
            first: Arc::new(AtomicU64::new(info.state.first_sequence)),
            last: Arc::new(AtomicU64::new(info.state.last_sequence)),
            bytes: Arc::new(AtomicU64::new(info.state.bytes)),
        };
        let weak = (
            Arc::downgrade(&log.first),
            Arc::downgrade(&log.last),
            Arc::downgrade(&log.bytes),
        );
        let js = log.js.clone();
        let name = log.settings.stream.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let (Some(first), Some(last), Some(bytes)) =
                    (weak.0.upgrade(), weak.1.upgrade(), weak.2.upgrade())
                else {
                    return;
                };
                if let Ok(mut s) = js.get_stream(&name).await
                    && let Ok(info) = s.info().await
                {
                    first.fetch_max(info.state.first_sequence, Ordering::AcqRel);
                    last.fetch_max(info.state.last_sequence, Ordering::AcqRel);
                    bytes.store(info.state.bytes, Ordering::Relaxed);
                }
            }
        });
        Ok(log)
    }

    /// Publishes `message` again, with its `Nats-Msg-Id`, until JetStream answers or
    /// `deadline` (the first send plus [`RETRY_FOR`]) has passed; `first` is why the first
    /// attempt failed: during a leader
    /// election async-nats reports a time-out or "no responders" for 4-9 s, neither a final
    /// answer. A retry whose first attempt was stored is answered `duplicate` with the first
    /// `seq` (the caller tells a broker-made id's duplicate from a publisher's).
    async fn retry(
        &self,
        (subject, headers, payload): (String, HeaderMap, bytes::Bytes),
        first: String,
        deadline: tokio::time::Instant,
    ) -> Result<jetstream::publish::PublishAck, String> {
        let mut last = first;
        let mut pause = Duration::from_millis(100);
        while tokio::time::Instant::now() < deadline {
            tracing::debug!(error = %last, "JetStream publish unanswered; retrying with the same id");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
            let attempt = async {
                match self
                    .js
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                    .await
                {
                    Ok(future) => match tokio::time::timeout(RETRY_ATTEMPT, future).await {
                        Ok(answer) => answer.map_err(|e| e.to_string()),
                        Err(_) => Err("no acknowledgement within the retry's wait".to_owned()),
                    },
                    Err(e) => Err(e.to_string()),
                }
            };
            // No attempt outlives the deadline: the publisher gets its answer by then.
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(a)) => return Ok(a),
                Ok(Err(e)) => last = e,
                Err(_) => break,
            }
        }
        Err(last)
    }

    /// Reads the message JetStream answered a publish of `event_id` with as a duplicate at
    /// `seq`: the same body (by `print`) is that event, stored; another body under the
    /// publisher's id is a [`LogError::Conflict`]. It is a duplicate to the publisher
    /// (`has_id`) unless it is this very submission, stored by an attempt whose answer was
    /// lost: its stored time is this submission's `time` (every attempt carries the same
    /// header), where a publisher's earlier publish has its own. Without a readable time
    /// (the message aged out), `retried` decides: our own retry found our first attempt.
    async fn confirm_duplicate(
        &self,
        seq: u64,
        time: Timestamp,
        event_id: EventId,
        print: String,
        (has_id, retried): (bool, bool),
    ) -> Result<Appended, LogError> {
        let stream = self.stream();
        let mut pause = Duration::from_millis(50);
        loop {
            match stream.get_raw_message(seq).await {
                Ok(m) => {
                    let stored_print = m
                        .headers
                        .get(FINGERPRINT)
                        .map(|v| v.as_str().to_owned())
                        .unwrap_or_default();
                    let stored_nanos = m
                        .headers
                        .get(TIME)
                        .and_then(|v| v.as_str().parse::<i128>().ok());
                    let stored_time = stored_nanos
                        .and_then(|n| Timestamp::from_unix_nanos(n).ok())
                        .unwrap_or(time);
                    let ours = stored_nanos.map_or(retried, |n| n == time.unix_nanos());
                    return if stored_print == print {
                        self.note_stored(seq);
                        Ok(Appended {
                            seq,
                            time: stored_time,
                            event_id,
                            duplicate: has_id && !ours,
                        })
                    } else {
                        Err(LogError::Conflict { seq })
                    };
                }
                // The original left the stream (retention) within the
                // duplicate window: a duplicate whose body cannot be compared.
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                    return Ok(Appended {
                        seq,
                        time,
                        event_id,
                        duplicate: has_id && !retried,
                    });
                }
                // After an election JetStream's API can answer "temporarily unavailable"
                // (10008: no meta leader yet), "not leader", or not at all, for seconds
                // (measured: 3.5 s on 2.9.10 after a majority came back, while the publish
                // itself was already answered): not an answer about the event. Asked again
                // until the caller's deadline; any other error is final.
                Err(e)
                    if !matches!(e.kind(), stream::RawMessageErrorKind::Other)
                        && !matches!(
                            e.kind(),
                            stream::RawMessageErrorKind::JetStream(j)
                                if [
                                    jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE,
                                    jetstream::ErrorCode::CLUSTER_NOT_LEADER,
                                ]
                                .contains(&j.error_code())
                        ) =>
                {
                    return Err(LogError::Unknown(e.to_string()));
                }
                Err(e) => {
                    tracing::debug!(error = %e, seq, "reading a duplicate's stored body; again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_PAUSE_MAX);
                }
            }
        }
    }

    fn note_stored(&self, seq: u64) {
        let last = self.last.fetch_max(seq, Ordering::AcqRel).max(seq);
        // Retention by count is known here at once; by age and bytes the refresher tells.
        if self.settings.max_events > 0 && last >= self.settings.max_events {
            self.first
                .fetch_max(last - self.settings.max_events + 1, Ordering::AcqRel);
        }
        self.first.fetch_max(1, Ordering::AcqRel);
    }

    /// The stream's handle, without asking for its info: a read or a consumer then costs one
    /// request, not a `STREAM.INFO` first. After an outage JetStream's API refuses both with
    /// 10008 ("JetStream system temporarily unavailable") until a meta leader is elected
    /// again, seconds after the stream has a leader (measured: 3.5 s on 2.9.10, up to 4 s on
    /// 2.15.1; docs/FAULTS.md): the duplicate check retries, within the publish's deadline.
    fn stream(&self) -> stream::Stream<()> {
        stream::Stream::clone(&self.handle)
    }

    /// The stream with its info (`STREAM.INFO`: the meta leader answers).
    async fn stream_info(&self) -> Result<stream::Stream, LogError> {
        self.js
            .get_stream(&self.settings.stream)
            .await
            .map_err(unavailable)
    }

    /// The stored event of a stream message.
    fn event(
        seq: u64,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        prefix: &str,
    ) -> Option<StoredEvent> {
        let topic: Topic = subject
            .strip_prefix(prefix)?
            .strip_prefix('.')?
            .parse()
            .ok()?;
        let h = headers?;
        let event_id = EventId::new(h.get(EVENT_ID)?.as_str()).ok()?;
        let nanos: i128 = h.get(TIME)?.as_str().parse().ok()?;
        let time = Timestamp::from_unix_nanos(nanos).ok()?;
        let data = RawJson::from_string(String::from_utf8(payload.to_vec()).ok()?).ok()?;
        Some(StoredEvent::new(seq, topic, event_id, time, data))
    }

    /// The stored event of a message read by `seq` (`None`: not an event).
    fn stored(&self, m: &jetstream::message::StreamMessage) -> Option<StoredEvent> {
        Self::event(
            m.sequence,
            m.subject.as_str(),
            Some(&m.headers),
            &m.payload,
            &self.settings.subject_prefix,
        )
    }

    /// The event at `seq` (`None`: not an event, or gone; see [`JetStreamLog::confirm_gone`],
    /// which lowers `end` to the stream's last `seq` when the stream ends before `seq`).
    async fn message(
        &self,
        stream: &stream::Stream<()>,
        seq: u64,
        end: &mut u64,
    ) -> Result<Option<StoredEvent>, LogError> {
        match stream.get_raw_message(seq).await {
            Ok(m) => Ok(self.stored(&m)),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                self.confirm_gone(stream, seq, end).await
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// After JetStream answered "no message" for `seq`, a `seq` this node knows was stored:
    /// the event itself when a read finds it after all; `Ok(None)` once the stream's state says
    /// retention took it (its first `seq` is past it), or once every answer for
    /// [`HOLE_CONFIRM`] has said it is not there (a hole: logged as a warning); an error when
    /// JetStream did not answer that well within [`GONE_CHECK`].
    ///
    /// A stream never loses a message inside its retained range (`deny_delete`, no purge,
    /// retention only moves the head), so one "no message" there is not an answer about the
    /// event. A server that led the stream before a pause answers from its own copy until it
    /// learns of the new term: measured for `STREAM.INFO` (last `seq` 40 where the stream
    /// held 60, on 2.9.10 and 2.15.1, for up to 250 ms after the resume; docs/FAULTS.md); a
    /// read answered from such a copy would say "no message", and a history read that took
    /// it would hand a resuming subscriber a page without the event and without a gap.
    /// Asked again, with pauses of 100 ms to 500 ms. A stale `STREAM.INFO` names a first
    /// `seq` at or below the true one, so it never makes a stored event look taken by
    /// retention. A hole that lasts (a stream made by hand without `deny_delete`, events a
    /// server lost in a crash with lazy fsync) is skipped after [`HOLE_CONFIRM`], not an error
    /// on every read for ever: readers such as the FHIR event numbering must get past it.
    async fn confirm_gone(
        &self,
        stream: &stream::Stream<()>,
        seq: u64,
        end: &mut u64,
    ) -> Result<Option<StoredEvent>, LogError> {
        let started = tokio::time::Instant::now();
        let deadline = started + GONE_CHECK;
        let mut pause = Duration::from_millis(100);
        let mut read = String::from("no message");
        // Since when every answer has said the message is not there (`None` after an error
        // or no answer: absence is not known then).
        let mut absent_since = Some(started);
        let mut stream_last = None;
        loop {
            let state = match tokio::time::timeout_at(deadline, self.stream_info()).await {
                Ok(Ok(info)) if info.cached_info().state.first_sequence > seq => {
                    self.first
                        .fetch_max(info.cached_info().state.first_sequence, Ordering::AcqRel);
                    return Ok(None);
                }
                Ok(Ok(info)) => {
                    let state = &info.cached_info().state;
                    stream_last = Some(state.last_sequence);
                    format!(
                        "the stream's state says first {} last {}",
                        state.first_sequence, state.last_sequence
                    )
                }
                Ok(Err(e)) => {
                    absent_since = None;
                    format!("its state could not be read: {e}")
                }
                Err(_) => {
                    absent_since = None;
                    "its state was not answered in time".to_owned()
                }
            };
            if absent_since.is_some_and(|since| since.elapsed() >= HOLE_CONFIRM) {
                tracing::warn!(
                    seq,
                    state = %state,
                    "a message inside the stream's retained range has been missing for every \
                     answer for 2 s (a stream without deny_delete, or events a NATS server lost \
                     in a crash with lazy fsync): read past it"
                );
                // The stream ends before it: so does this read (one check, not one per `seq`).
                if let Some(last) = stream_last.filter(|last| *last < seq) {
                    *end = (*end).min(last);
                }
                return Ok(None);
            }
            if tokio::time::Instant::now() + pause >= deadline {
                return Err(LogError::Unavailable(format!(
                    "stream message {seq} could not be read: {read}, and {state} (a server \
                     that led the stream before a fault may still be answering; read again)"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
            match tokio::time::timeout_at(deadline, stream.get_raw_message(seq)).await {
                Ok(Ok(m)) => return Ok(self.stored(&m)),
                Ok(Err(e)) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                    read = "no message".to_owned();
                    absent_since.get_or_insert_with(tokio::time::Instant::now);
                }
                Ok(Err(e)) => {
                    read = e.to_string();
                    absent_since = None;
                }
                Err(_) => {
                    read = "no answer in time".to_owned();
                    absent_since = None;
                }
            }
        }
    }
}

#[async_trait]
impl EventLog for JetStreamLog {
    async fn submit(&self, batch: Vec<NewEvent>) -> AppendFuture {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let mut sent: Vec<Sent> = Vec::with_capacity(batch.len());
        for ev in batch {
            let has_id = ev.event_id.is_some();
            let event_id = ev
                .event_id
                .unwrap_or_else(|| EventId::from_uuid(uuid::Uuid::new_v4().into_bytes()));
            let time = Timestamp::now();
            let mut headers = HeaderMap::new();
            headers.insert(EVENT_ID, event_id.as_str());
            headers.insert(TIME, time.unix_nanos().to_string().as_str());
            // Only a publisher's id can come back as a duplicate: only then is the body's
            // fingerprint needed (a hash of the payload is not free on the publish path).
            // Every event carries its id as `Nats-Msg-Id`, so a publish whose answer was lost
            // (a leader election, a server that went away) is retried safely: JetStream
            // answers a retry within its duplicate window with the first `seq`.
            headers.insert(MSG_ID, event_id.as_str());
            // Only a publisher's id can come back as another body's duplicate: only then is
            // the body's fingerprint needed (a hash of the payload is not free here).
            let print = if has_id {
                let print = fingerprint(&ev.topic, &ev.data);
                headers.insert(FINGERPRINT, print.as_str());
                print
            } else {
                String::new()
            };
            let subject = format!("{}.{}", self.settings.subject_prefix, ev.topic.as_str());
            let payload = bytes::Bytes::from(ev.data.get().to_owned());
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await;
            sent.push((
                ack,
                (subject, headers, payload),
                event_id,
                time,
                print,
                has_id,
            ));
        }
        let log = self.clone();
        let count = sent.len();
        // The answers are awaited (and, when lost, retried) by a task of their own, every
        // event at once, whether or not the caller polls: a session polls only its oldest
        // pending publish, so a lazy future retried a window of publishes one after the
        // other after a leader election (measured: a 30 s pause with 256 in flight over one
        // WebSocket, where the election took 5-7 s; docs/FAULTS.md).
        let answers = tokio::spawn(async move {
            let log = &log;
            let settle = |(ack, message, event_id, time, print, has_id): Sent| async move {
                let ack = match ack {
                    Ok(future) => {
                        let until = deadline.min(tokio::time::Instant::now() + FIRST_ATTEMPT);
                        match tokio::time::timeout_at(until, future).await {
                            Ok(a) => a.map_err(|e| e.to_string()),
                            Err(_) => Err("no acknowledgement within the first wait".to_owned()),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                let (ack, retried) = match ack {
                    Ok(a) => (Ok(a), false),
                    Err(first) => (log.retry(message, first, deadline).await, true),
                };
                // A lost answer may hide a stored event: never "nothing was stored".
                let ack = ack.map_err(LogError::Unknown);
                match ack {
                    Err(e) => Err(e),
                    Ok(a) if !a.duplicate => {
                        log.note_stored(a.sequence);
                        Ok(Appended {
                            seq: a.sequence,
                            time,
                            event_id,
                            duplicate: false,
                        })
                    }
                    // The duplicate check reads the stored message: bounded like the rest
                    // (a second at least, so an answer that came just in time is checked).
                    Ok(a) => {
                        let until =
                            deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
                        let check = log.confirm_duplicate(
                            a.sequence,
                            time,
                            event_id,
                            print,
                            (has_id, retried),
                        );
                        tokio::time::timeout_at(until, check)
                            .await
                            .unwrap_or_else(|_| {
                                Err(LogError::Unknown(
                                    "the stored duplicate could not be read before the deadline"
                                        .into(),
                                ))
                            })
                    }
                }
            };
            futures_util::future::join_all(sent.into_iter().map(settle)).await
        });
        Box::pin(async move {
            answers.await.unwrap_or_else(|e| {
                // The task panicked or the runtime is shutting down: what was stored is
                // unknown.
                (0..count)
                    .map(|_| Err(LogError::Unknown(format!("the publish task ended: {e}"))))
                    .collect()
            })
        })
    }

    async fn read_from(&self, from: u64, limit: usize) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        let b = self.bounds();
        let mut seq = from.max(b.first).max(1);
        let mut out = Vec::new();
        if seq > b.last || limit == 0 {
            return Ok(out);
        }
        let stream = self.stream();
        let mut end = b.last;
        while seq <= end && out.len() < limit {
            if let Some(e) = self.message(&stream, seq, &mut end).await? {
                out.push(Arc::new(e));
            }
            // Past what retention took, if a read found the head moved (one check, not one
            // per message taken).
            seq = (seq + 1).max(self.first.load(Ordering::Acquire));
        }
        Ok(out)
    }

    fn bounds(&self) -> Bounds {
        let last = self.last.load(Ordering::Acquire);
        Bounds {
            first: self.first.load(Ordering::Acquire).max(1),
            last,
        }
    }

    async fn fresh_bounds(&self) -> Bounds {
        if let Ok(mut stream) = self.stream_info().await
            && let Ok(info) = stream.info().await
        {
            // Retention only moves the head up; a purge is denied on this stream.
            self.first
                .fetch_max(info.state.first_sequence, Ordering::AcqRel);
            self.last
                .fetch_max(info.state.last_sequence, Ordering::AcqRel);
        }
        self.bounds()
    }

    fn tail(&self, from: u64) -> Tail {
        let log = self.clone();
        let from = from.max(1);
        let start = futures_util::stream::once(async move {
            let stream = log.stream();
            let consumer = stream
                .create_consumer(consumer::push::OrderedConfig {
                    deliver_subject: log.client.new_inbox(),
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: from,
                    },
                    ..Default::default()
                })
                .await
                .map_err(unavailable)?;
            let messages = consumer.messages().await.map_err(unavailable)?;
            Ok::<_, LogError>((messages, log))
        });
        Box::pin(
            start
                .filter_map(|r| async move {
                    match r {
                        Ok(v) => Some(v),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot tail the JetStream log");
                            None
                        }
                    }
                })
                .flat_map(move |(messages, log)| {
                    let prefix = log.settings.subject_prefix.clone();
                    let last = log.last;
                    messages
                        .scan(from, move |expected, m| {
                            let items = match m {
                                Err(e) => {
                                    tracing::warn!(error = %e, "JetStream tail ended");
                                    return futures_util::future::ready(None);
                                }
                                Ok(m) => {
                                    let Ok(info) = m.info() else {
                                        return futures_util::future::ready(Some(Vec::new()));
                                    };
                                    let seq = info.stream_sequence;
                                    let mut items = Vec::new();
                                    if seq > *expected {
                                        items.push(TailItem::Gap {
                                            from: *expected,
                                            to: seq - 1,
                                        });
                                    }
                                    *expected = seq + 1;
                                    // Whatever the fan-out offers, a history read finds.
                                    last.fetch_max(seq, Ordering::AcqRel);
                                    match JetStreamLog::event(
                                        seq,
                                        m.subject.as_str(),
                                        m.headers.as_ref(),
                                        &m.payload,
                                        &prefix,
                                    ) {
                                        Some(e) => items.push(TailItem::Event(Arc::new(e))),
                                        // Not an event (another NATS client wrote to the
                                        // stream's subjects): its `seq` will never be one.
                                        None => items.push(TailItem::Gap { from: seq, to: seq }),
                                    }
                                    items
                                }
                            };
                            futures_util::future::ready(Some(items))
                        })
                        .flat_map(futures_util::stream::iter)
                }),
        )
    }

    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn stored_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> Result<Box<dyn LogSnapshot>, LogError> {
        Err(LogError::Unavailable(
            "a JetStream log is backed up with JetStream's own tools (`nats stream backup`)"
                .to_owned(),
        ))
    }

    async fn probe(&self) -> Result<(), LogError> {
        let mut stream = self.stream_info().await?;
        stream.info().await.map(|_| ()).map_err(unavailable)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::log::conformance::{Made, Maker, conformance_tests};

    struct JetStream;

    #[async_trait]
    impl Maker for JetStream {
        async fn make(&self, keep: usize) -> Made {
            let nats = scopecast_testkit::Nats::shared();
            static NEXT: AtomicU64 = AtomicU64::new(1);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let client = async_nats::connect(&nats.url).await.unwrap();
            let log = JetStreamLog::open(
                client,
                JetStreamSettings {
                    stream: format!("T{}_{n}", std::process::id()),
                    subject_prefix: format!("t{}_{n}", std::process::id()),
                    replicas: 1,
                    max_events: keep as u64,
                    max_bytes: 0,
                    max_age: Duration::ZERO,
                    duplicate_window: Duration::from_secs(120),
                },
            )
            .await
            .unwrap();
            Made {
                log: Arc::new(log),
                retain: Box::new(|| {}),
            }
        }
    }

    conformance_tests!(JetStream);

    /// A log of its own on the shared test server, with a stream keeping `keep` messages.
    async fn own_log(name: &str, keep: u64) -> JetStreamLog {
        let nats = scopecast_testkit::Nats::shared();
        let client = async_nats::connect(&nats.url).await.unwrap();
        JetStreamLog::open(
            client,
            JetStreamSettings {
                stream: format!("G{}_{name}", std::process::id()),
                subject_prefix: format!("g{}{name}", std::process::id()),
                replicas: 1,
                max_events: keep,
                max_bytes: 0,
                max_age: Duration::ZERO,
                duplicate_window: Duration::from_secs(60),
            },
        )
        .await
        .unwrap()
    }

    async fn append_one(log: &JetStreamLog, n: u32) -> u64 {
        let stored = log
            .append(vec![NewEvent {
                topic: "adt.a01".parse().unwrap(),
                data: RawJson::payload(&format!(r#"{{"n":{n}}}"#)).unwrap(),
                event_id: None,
            }])
            .await;
        stored[0].as_ref().unwrap().seq
    }

    /// A "no message" answer for a `seq` this node knows was stored, inside the stream's
    /// retained range, is not taken as an answer (a former leader back from a pause answers
    /// from its own copy): the read asks again and returns the event once it is there, where
    /// it used to return a page without it. Played by telling the log of a `seq` one past
    /// the stream's end (what such a server's answers look like) and storing it 300 ms later.
    /// A hole that lasts is read past after [`HOLE_CONFIRM`], not an error for ever.
    #[tokio::test]
    async fn a_message_missing_at_first_is_asked_again_and_a_lasting_hole_is_read_past() {
        let log = Arc::new(own_log("gone", 100).await);
        let seq = append_one(&log, 1).await;
        log.last.fetch_max(seq + 1, Ordering::AcqRel);
        let read = tokio::spawn({
            let log = log.clone();
            async move { log.read_from(seq, 10).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(append_one(&log, 2).await, seq + 1);
        let page = read.await.unwrap().unwrap();
        assert_eq!(
            page.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![seq, seq + 1],
            "the event stored during the check is in the page"
        );

        log.last.fetch_max(seq + 3, Ordering::AcqRel);
        let started = tokio::time::Instant::now();
        let page = log.read_from(seq, 10).await.unwrap();
        assert_eq!(
            page.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![seq, seq + 1]
        );
        let took = started.elapsed();
        assert!(
            // Two checks (one per missing `seq`) would take twice as long.
            took >= HOLE_CONFIRM && took < 2 * HOLE_CONFIRM,
            "a lasting hole is read past after {HOLE_CONFIRM:?}, once (took {took:?})"
        );
    }

    /// Retention's own answer is believed at once, and the read goes on from the new head
    /// (one check, not one per message retention took).
    #[tokio::test]
    async fn a_read_below_the_head_goes_on_from_what_retention_kept() {
        let log = own_log("kept", 2).await;
        for n in 1..=3 {
            append_one(&log, n).await;
        }
        // As a node that has not heard of the retention yet.
        log.first.store(1, Ordering::Release);
        let started = tokio::time::Instant::now();
        let page = log.read_from(1, 10).await.unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(log.bounds().first, 2);
    }

    #[tokio::test]
    async fn a_stream_made_with_other_settings_is_brought_to_the_configured_ones() {
        let nats = scopecast_testkit::Nats::shared();
        let name = format!("S{}_settings", std::process::id());
        let settings = |max_events: u64| JetStreamSettings {
            stream: name.clone(),
            subject_prefix: format!("s{}settings", std::process::id()),
            replicas: 1,
            max_events,
            max_bytes: 0,
            max_age: Duration::ZERO,
            duplicate_window: Duration::from_secs(60),
        };
        let client = async_nats::connect(&nats.url).await.unwrap();
        JetStreamLog::open(client.clone(), settings(100))
            .await
            .unwrap();
        JetStreamLog::open(client.clone(), settings(10))
            .await
            .unwrap();
        let js = jetstream::new(client);
        let mut stream = js.get_stream(&name).await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.max_messages, 10);
        assert_eq!(info.config.duplicate_window, Duration::from_secs(60));
    }
}
