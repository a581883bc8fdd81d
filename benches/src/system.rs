//! The three systems a scenario runs against, behind one face: Scopecast (under test), NATS
//! (the peer) and the ceiling (the least a fan-out server can do).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::ceiling::{Ceiling, CeilingPublisher};
use crate::jetstream::{JetStreamDirect, JetStreamPublisher};
use crate::nats::{self, NatsPublisher, NatsServer};
use crate::payload::Payload;
use crate::scopecast::{Scopecast, WsPublisher, WsSubscriber};
use crate::stats::Recorder;

/// Which system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SystemKind {
    /// The broker under test.
    Scopecast,
    /// nats-server over WebSocket (the peer).
    Nats,
    /// The minimal fan-out server in this crate.
    Ceiling,
    /// A plain async-nats JetStream publisher (the `cluster` scenario's ceiling for
    /// acknowledged publishes; no other scenario has it).
    #[value(name = "jetstream")]
    JetStream,
}

impl SystemKind {
    /// Its name in tables and JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SystemKind::Scopecast => "scopecast",
            SystemKind::Nats => "nats",
            SystemKind::Ceiling => "ceiling",
            SystemKind::JetStream => "jetstream",
        }
    }
}

/// What one subscriber connection listens to.
#[derive(Debug, Clone)]
pub(crate) struct SubSpec {
    /// Patterns (Scopecast and NATS spell them alike).
    pub(crate) patterns: Vec<String>,
    /// The concrete topics those patterns match among the scenario's topics (the ceiling has
    /// no patterns).
    pub(crate) topics: Vec<String>,
}

/// A running system.
pub(crate) enum System {
    /// Scopecast.
    Scopecast(Scopecast),
    /// nats-server.
    Nats(NatsServer),
    /// The ceiling server.
    Ceiling(Ceiling),
    /// A JetStream stream, published to directly.
    JetStream(JetStreamDirect),
}

impl System {
    /// Which one.
    pub(crate) fn kind(&self) -> SystemKind {
        match self {
            System::Scopecast(_) => SystemKind::Scopecast,
            System::Nats(_) => SystemKind::Nats,
            System::Ceiling(_) => SystemKind::Ceiling,
            System::JetStream(_) => SystemKind::JetStream,
        }
    }

    /// Its server process, when known.
    pub(crate) fn pid(&self) -> Option<u32> {
        match self {
            System::Scopecast(s) => s.pid(),
            System::Nats(n) => Some(n.pid()),
            System::Ceiling(c) => Some(c.pid()),
            System::JetStream(j) => j.pids.first().copied(),
        }
    }

    /// Every process whose CPU and memory count as the system's (all nodes of a cluster).
    pub(crate) fn pids(&self) -> Vec<u32> {
        match self {
            System::Scopecast(s) => s.pids(),
            System::JetStream(j) => j.pids.clone(),
            other => other.pid().into_iter().collect(),
        }
    }

    /// Its version, when known.
    pub(crate) fn version(&self) -> Option<String> {
        match self {
            System::Nats(n) => Some(n.version.clone()),
            System::JetStream(j) => Some(j.version.clone()),
            _ => None,
        }
    }

    /// Registers what `subscribers` connections need (tokens, for Scopecast).
    ///
    /// # Errors
    /// Registration failed.
    pub(crate) async fn prepare(&mut self, subscribers: usize) -> anyhow::Result<()> {
        if let System::Scopecast(s) = self {
            s.prepare_subscribers(subscribers).await?;
        }
        Ok(())
    }

    /// Spawns subscriber `i` into `set`: it connects from source address number `i` of
    /// `source_ips`, listens to `spec` and counts into `rec` until aborted.
    pub(crate) fn spawn_subscriber(
        &self,
        set: &mut JoinSet<()>,
        i: usize,
        spec: &SubSpec,
        source_ips: u8,
        rec: &Arc<Recorder>,
    ) {
        let rec = Arc::clone(rec);
        let source = crate::ws::source_ip(i, source_ips);
        match self {
            System::Scopecast(s) => {
                let sub = WsSubscriber {
                    addr: s.subscriber_addr(i),
                    path: "/v1/stream".to_owned(),
                    token: Some(s.subscriber_token(i)),
                    patterns: spec.patterns.clone(),
                    source,
                    buffered_writes: false,
                };
                set.spawn(sub.run(i, rec));
            }
            System::Ceiling(c) => {
                let sub = WsSubscriber {
                    addr: c.addr,
                    path: format!("/sub?topics={}", spec.topics.join(",")),
                    token: None,
                    patterns: Vec::new(),
                    source,
                    buffered_writes: false,
                };
                set.spawn(sub.run(i, rec));
            }
            System::Nats(n) => {
                // async-nats cannot bind a source address; one address has ports enough for
                // the scenarios' 10,000 subscribers.
                set.spawn(nats::subscriber(n.url(), spec.patterns.clone(), i, rec));
            }
            System::JetStream(j) => {
                set.spawn(j.subscriber(i, rec));
            }
        }
    }

    /// A publisher with at most `window` unacknowledged publishes (Scopecast), whose
    /// acknowledgements count into `acks`.
    ///
    /// # Errors
    /// It could not connect.
    pub(crate) async fn publisher(
        &mut self,
        window: u32,
        acks: &Arc<Recorder>,
    ) -> anyhow::Result<Publisher> {
        Ok(match self {
            System::Scopecast(s) => {
                let (_, token) = s.publisher().await?;
                let addr = s.next_publisher_addr();
                Publisher::Scopecast(
                    WsPublisher::connect(addr, &token, window, Arc::clone(acks)).await?,
                )
            }
            System::Nats(n) => Publisher::Nats(NatsPublisher::connect(n.ws_addr).await?),
            System::Ceiling(c) => Publisher::Ceiling(CeilingPublisher::connect(c.addr).await?),
            System::JetStream(j) => Publisher::JetStream(j.publisher(window, acks)),
        })
    }

    /// Fails when the server the harness started has died.
    ///
    /// # Errors
    /// It exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        match self {
            System::Scopecast(s) => s.check_alive(),
            _ => Ok(()),
        }
    }
}

/// A publisher connection of any system.
pub(crate) enum Publisher {
    /// `publish` frames, acknowledged.
    Scopecast(WsPublisher),
    /// Core NATS publishes.
    Nats(NatsPublisher),
    /// Event frames to the ceiling.
    Ceiling(CeilingPublisher),
    /// JetStream publishes, acknowledged.
    JetStream(JetStreamPublisher),
}

impl Publisher {
    /// Queues one event on `topic`, stamped `t_ns`.
    ///
    /// # Errors
    /// The connection is gone.
    pub(crate) async fn feed(
        &mut self,
        payload: &Payload,
        topic: &str,
        t_ns: u64,
    ) -> anyhow::Result<()> {
        match self {
            Publisher::Scopecast(p) => p.feed(payload, topic, t_ns).await,
            Publisher::Nats(p) => p.feed(payload, topic, t_ns).await,
            Publisher::Ceiling(p) => p.feed(payload, topic, t_ns).await,
            Publisher::JetStream(p) => p.feed(payload, topic, t_ns).await,
        }
    }

    /// Writes what is queued.
    ///
    /// # Errors
    /// The connection is gone.
    pub(crate) async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Publisher::Scopecast(p) => p.flush().await,
            Publisher::Nats(p) => p.flush().await,
            Publisher::Ceiling(p) => p.flush().await,
            Publisher::JetStream(p) => {
                p.flush();
                Ok(())
            }
        }
    }

    /// Waits until the server has everything (acknowledged, for Scopecast), at most `limit`.
    pub(crate) async fn drain(&mut self, limit: Duration) {
        match self {
            Publisher::Scopecast(p) => p.drain(limit).await,
            Publisher::Nats(p) => p.drain(limit).await,
            Publisher::Ceiling(p) => {
                let _ = p.flush().await;
            }
            Publisher::JetStream(p) => p.drain(limit).await,
        }
    }
}
