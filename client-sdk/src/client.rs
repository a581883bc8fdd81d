//! The client handle and subscriptions over `scopecast.v1`, modelled on async-nats: a
//! `Client` is a cheap handle over a command channel; one task owns the WebSocket; replies come
//! back on oneshot channels; a `Subscription` is a `Stream` that unsubscribes when dropped.
//!
//! The connection task refreshes the token before it expires (an `auth` frame, so streams never
//! stop), reconnects with capped, jittered exponential backoff when the close code allows it,
//! and resumes every live subscription from the last `seq` it delivered. A gap that cannot be
//! filled (events gone past the broker's retention) is reported as [`Item::Gap`], never
//! silently.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use scopecast_protocol::{Event, EventId, Pattern, Published, RawJson, Topic};
use tokio::sync::{mpsc, oneshot, watch};

use crate::options::SUBSCRIPTION_BUFFER;
use crate::{PublishError, SubscribeError};

/// Where the connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connecting or reconnecting.
    Connecting,
    /// Authenticated; subscriptions are live.
    Connected,
    /// Stopped for good, with the reason.
    Closed(String),
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// One event.
    Event(Event),
    /// Events `from_seq..=to_seq` of this subscription could not be delivered (they are past
    /// the broker's retention); what follows continues after them.
    Gap {
        /// First missing `seq`.
        from_seq: u64,
        /// Last missing `seq`.
        to_seq: u64,
    },
    /// The subscription ended without the reader asking, and why; nothing follows. It comes
    /// when a resubscribe after a reconnect is refused (say the application's scope was
    /// narrowed meanwhile: `Forbidden`), when the broker revokes it after a token refresh
    /// (`scope_revoked`: `Forbidden`), when the history it needs cannot be read, or when the
    /// connection closes for good (`Closed`, `ClientInactive`, `Unauthorized`).
    Ended(SubscribeError),
}

pub(crate) enum Command {
    Subscribe {
        pattern: Pattern,
        since: Option<u64>,
        events: mpsc::Sender<Item>,
        reply: oneshot::Sender<Result<u64, SubscribeError>>,
    },
    Unsubscribe {
        sid: u64,
    },
    Publish {
        topic: Topic,
        data: RawJson,
        event_id: Option<EventId>,
        reply: oneshot::Sender<Result<Published, PublishError>>,
    },
    /// Close the connection with 1000 and stop; `done` fires once the close handshake is over.
    Close {
        done: oneshot::Sender<()>,
    },
}

/// A connection handle: cheap to clone; the connection ends when every clone and
/// subscription is dropped.
#[derive(Clone)]
pub struct Client {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) state: watch::Receiver<ConnectionState>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Client {
    /// Subscribes to live events of `pattern`.
    ///
    /// # Errors
    /// [`SubscribeError`]; `Forbidden { required_scope }` when the scope does not allow it.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example(client: scopecast_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use futures_util::StreamExt;
    /// let mut events = client.subscribe("fhir.encounter.>").await?;
    /// while let Some(scopecast_client::Item::Event(e)) = events.next().await {
    ///     println!("{} {}", e.seq, e.topic);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, SubscribeError> {
        self.subscribe_since(pattern, None).await
    }

    /// Subscribes to `pattern`, first delivering the stored events with a `seq` after `since`
    /// (then live ones, with no gap and no duplicate). The stored events are read from the
    /// history endpoint (`GET /v1/events`, PROTOCOL.md section 8), so they do not depend on
    /// what the connection's other subscriptions received; events gone past the broker's
    /// retention are one [`Item::Gap`].
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub async fn subscribe_since(
        &self,
        pattern: &str,
        since: Option<u64>,
    ) -> Result<Subscription, SubscribeError> {
        let pattern: Pattern = pattern
            .parse()
            .map_err(|e: scopecast_protocol::TopicError| {
                SubscribeError::InvalidTopic(e.to_string())
            })?;
        // Events wait here for the reader; when it is full, the connection task hands the
        // subscription to a catch-up task that reads the missed events from the history
        // endpoint at the reader's pace, so nothing else on the connection waits.
        let (events_tx, events_rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Subscribe {
                pattern: pattern.clone(),
                since,
                events: events_tx,
                reply,
            })
            .await
            .map_err(|_| SubscribeError::Closed)?;
        let sid = rx.await.map_err(|_| SubscribeError::Closed)??;
        Ok(Subscription {
            sid,
            pattern,
            rx: events_rx,
            tx: self.tx.clone(),
            done: false,
        })
    }

    /// Publishes `data` (any serializable value) to `topic`; returns its `seq` once stored.
    ///
    /// # Errors
    /// [`PublishError`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example(client: scopecast_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let seq = client.publish("adt.patient.admitted", &serde_json::json!({"resourceType": "Encounter"})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish<T: serde::Serialize + ?Sized>(
        &self,
        topic: &str,
        data: &T,
    ) -> Result<u64, PublishError> {
        let raw = RawJson::from_value(data).map_err(|e| PublishError::BadRequest(e.to_string()))?;
        self.publish_raw(topic, raw, None).await
    }

    /// Publishes raw JSON with an optional `event_id` (retries with the same id are idempotent);
    /// returns the event's `seq`.
    ///
    /// # Errors
    /// [`PublishError`].
    pub async fn publish_raw(
        &self,
        topic: &str,
        data: RawJson,
        event_id: Option<&str>,
    ) -> Result<u64, PublishError> {
        self.publish_acked(topic, data, event_id)
            .await
            .map(|p| p.seq)
    }

    /// Closes the connection with a close frame (1000) and waits for the broker's answer (at
    /// most a few seconds); subscriptions end with [`SubscribeError::Closed`]. Call it before
    /// a program exits: a task still running when the runtime stops cannot send the frame,
    /// and the broker then logs an abrupt disconnect.
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::Close { done }).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    /// As [`Client::publish_raw`], returning the whole `published` answer: `seq`, the event id
    /// (the broker's UUID when none was given) and `duplicate` (true when the `event_id` was
    /// already stored within the idempotency window, so nothing was stored again).
    ///
    /// # Errors
    /// [`PublishError`].
    pub async fn publish_acked(
        &self,
        topic: &str,
        data: RawJson,
        event_id: Option<&str>,
    ) -> Result<Published, PublishError> {
        let topic: Topic = topic
            .parse()
            .map_err(|e: scopecast_protocol::TopicError| PublishError::BadRequest(e.to_string()))?;
        let event_id = event_id
            .map(EventId::new)
            .transpose()
            .map_err(|e| PublishError::BadRequest(e.to_string()))?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Publish {
                topic,
                data,
                event_id,
                reply,
            })
            .await
            .map_err(|_| PublishError::Closed)?;
        rx.await.map_err(|_| PublishError::Closed)?
    }

    /// The connection state, as a `watch` receiver (await changes with `changed()`).
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// Every change of the connection state from now on, as a `Stream` (ends when the
    /// connection task ends).
    pub fn state_changes(&self) -> impl Stream<Item = ConnectionState> + Send + 'static {
        let rx = self.state.clone();
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            let state = rx.borrow_and_update().clone();
            Some((state, rx))
        })
    }
}

/// A live subscription: a `Stream` of [`Item`]s, each matching event once and in `seq`
/// order. Dropping it unsubscribes.
///
/// A reader may be slow: when its buffer (4,096 items) is full, the events it misses are
/// fetched again from the broker's history endpoint at its pace, while the connection and the
/// other subscriptions go on. The stream ends after [`Item::Ended`], which says why.
pub struct Subscription {
    pub(crate) sid: u64,
    pub(crate) pattern: Pattern,
    pub(crate) rx: mpsc::Receiver<Item>,
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) done: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.pattern)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The pattern subscribed.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// Ends the subscription now.
    pub async fn unsubscribe(mut self) {
        self.done = true;
        let _ = self.tx.send(Command::Unsubscribe { sid: self.sid }).await;
    }
}

impl Stream for Subscription {
    type Item = Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tx.try_send(Command::Unsubscribe { sid: self.sid });
        }
    }
}
