//! The ceiling of the `cluster` scenario's acknowledged publishes: a plain async-nats
//! JetStream publisher to a stream set up as the broker sets up its own (file storage, the
//! same replicas, a `Nats-Msg-Id` on every message), on the same NATS servers in the same run,
//! and an ordered push consumer as its subscriber (what each broker node tails with).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::payload::Payload;
use crate::stats::Recorder;

/// A stream on a NATS cluster, published to directly.
pub(crate) struct JetStreamDirect {
    client: async_nats::Client,
    /// The stream's name.
    pub(crate) stream: String,
    /// Subjects are `<prefix>.<topic>`.
    prefix: String,
    /// The NATS servers' process ids (their CPU and memory are this system's).
    pub(crate) pids: Vec<u32>,
    /// The NATS server version.
    pub(crate) version: String,
}

impl JetStreamDirect {
    /// Makes stream `name` with `replicas` on the servers `client` is connected to (deleting
    /// one of that name first).
    ///
    /// # Errors
    /// JetStream refused.
    pub(crate) async fn create(
        client: async_nats::Client,
        name: &str,
        replicas: usize,
        pids: Vec<u32>,
    ) -> anyhow::Result<JetStreamDirect> {
        let js = jetstream::new(client.clone());
        let _ = js.delete_stream(name).await;
        let prefix = format!("benchjs{}", name.to_lowercase());
        js.create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{prefix}.>")],
            num_replicas: replicas,
            storage: stream::StorageType::File,
            max_bytes: 1 << 30,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating stream {name}"))?;
        let version = client.server_info().version;
        Ok(JetStreamDirect {
            client,
            stream: name.to_owned(),
            prefix,
            pids,
            version,
        })
    }

    /// Runs until aborted: an ordered push consumer from the stream's end, counting each
    /// message into `rec` (re-made when it fails).
    pub(crate) fn subscriber(
        &self,
        shard: usize,
        rec: Arc<Recorder>,
    ) -> impl Future<Output = ()> + use<> {
        let js = jetstream::new(self.client.clone());
        let (name, client) = (self.stream.clone(), self.client.clone());
        async move {
            loop {
                if let Err(e) = follow(&js, &client, &name, shard, &rec).await {
                    rec.error(format!("jetstream consumer: {e:#}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// A publisher with at most `window` unacknowledged publishes; acknowledgements count
    /// into `acks`.
    pub(crate) fn publisher(&self, window: u32, acks: &Arc<Recorder>) -> JetStreamPublisher {
        let (tx, rx) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(window as usize));
        let reader = tokio::spawn(await_acks(rx, Arc::clone(&permits), Arc::clone(acks)));
        JetStreamPublisher {
            js: jetstream::new(self.client.clone()),
            prefix: self.prefix.clone(),
            window: permits,
            size: window,
            pending: tx,
            reader,
        }
    }
}

async fn follow(
    js: &jetstream::Context,
    client: &async_nats::Client,
    name: &str,
    shard: usize,
    rec: &Recorder,
) -> anyhow::Result<()> {
    let stream = js.get_stream(name).await.context("get stream")?;
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .context("ordered consumer")?;
    let mut messages = consumer.messages().await.context("messages")?;
    rec.connected.fetch_add(1, Ordering::Relaxed);
    let result = loop {
        match messages.next().await {
            Some(Ok(m)) => rec.delivered(shard, &m.payload),
            Some(Err(e)) => break Err(anyhow::anyhow!("{e}")),
            None => break Err(anyhow::anyhow!("ended")),
        }
    };
    rec.connected.fetch_sub(1, Ordering::Relaxed);
    result
}

/// An acknowledgement on its way, and when its publish was stamped.
type Pending = (jetstream::context::PublishAckFuture, u64);

/// Publishes to the stream, at most `size` unacknowledged.
pub(crate) struct JetStreamPublisher {
    js: jetstream::Context,
    prefix: String,
    window: Arc<Semaphore>,
    size: u32,
    pending: mpsc::UnboundedSender<Pending>,
    reader: JoinHandle<()>,
}

/// The next `Nats-Msg-Id` number, shared by every publisher.
static NEXT_MSG_ID: AtomicU64 = AtomicU64::new(1);

impl JetStreamPublisher {
    /// Publishes one message on `topic` with a unique `Nats-Msg-Id` (waits for room in the
    /// window).
    ///
    /// # Errors
    /// The client is gone.
    pub(crate) async fn feed(
        &mut self,
        payload: &Payload,
        topic: &str,
        t_ns: u64,
    ) -> anyhow::Result<()> {
        self.window
            .acquire()
            .await
            .context("the publisher stopped")?
            .forget();
        // One counter for every publisher of the process: ids that repeat would be
        // JetStream duplicates, acknowledged but not stored.
        let n = NEXT_MSG_ID.fetch_add(1, Ordering::Relaxed);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("bench-{}-{n}", std::process::id()).as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(
                format!("{}.{topic}", self.prefix),
                headers,
                payload.data(t_ns).into_bytes().into(),
            )
            .await
            .context("jetstream publish")?;
        self.pending
            .send((ack, t_ns))
            .map_err(|_| anyhow::anyhow!("the acknowledgement reader stopped"))
    }

    /// Nothing is buffered here (async-nats writes by itself).
    pub(crate) fn flush(&mut self) {}

    /// Waits until every publish is acknowledged, at most `limit`.
    pub(crate) async fn drain(&mut self, limit: Duration) {
        if let Ok(Ok(all)) = tokio::time::timeout(limit, self.window.acquire_many(self.size)).await
        {
            drop(all);
        }
    }
}

impl Drop for JetStreamPublisher {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn await_acks(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    window: Arc<Semaphore>,
    acks: Arc<Recorder>,
) {
    let clock = acks.clock();
    let mut waiting = FuturesUnordered::new();
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some((ack, t_ns)) => waiting.push(async move { (ack.await, t_ns) }),
                None => break,
            },
            Some((result, t_ns)) = waiting.next(), if !waiting.is_empty() => {
                match result {
                    Ok(_) => acks.completed(0, clock.now_ns().saturating_sub(t_ns)),
                    Err(e) => acks.error(format!("jetstream publish: {e}")),
                }
                window.add_permits(1);
            }
        }
    }
}
