//! Live sessions by client ID: the per-client connection cap (4029), and the link from
//! registry changes to sessions (deactivation closes them with 4003 at once; a changed scope
//! ceiling makes them re-check their subscriptions).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;
use scopecast_protocol::{CloseCode, Pattern, Timestamp};
use tokio::sync::Notify;

use crate::fanout::Subscriber;
use crate::metrics::Metrics;
use crate::registry::{Registry, RegistryChange};

/// One live, authenticated session as the table sees it.
#[derive(Debug)]
pub struct SessionEntry {
    /// The session's queue and identity.
    pub subscriber: Arc<Subscriber>,
    /// Its client's application.
    pub application_id: String,
    /// The peer's address.
    pub peer: SocketAddr,
    /// When it was authenticated.
    pub connected_since: Timestamp,
    /// Its live subscriptions' patterns (kept by the session task, read by the admin API).
    pub subscriptions: Mutex<Vec<Pattern>>,
    /// Set when the session must re-check its subscriptions against the registry.
    recheck: AtomicBool,
    /// Wakes the session's loop for a re-check.
    pub wake: Notify,
}

impl SessionEntry {
    /// Takes the re-check flag.
    pub fn take_recheck(&self) -> bool {
        self.recheck.swap(false, Ordering::AcqRel)
    }

    fn request_recheck(&self) {
        self.recheck.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// Sessions by client ID. Cheap to clone.
#[derive(Clone, Default)]
pub struct SessionTable {
    by_client: Arc<DashMap<Arc<str>, Vec<Arc<SessionEntry>>>>,
}

/// The client already has its most connections.
#[derive(Debug, Clone, Copy)]
pub struct TooManyConnections;

impl SessionTable {
    /// Number of live sessions of `client_id`.
    pub fn count(&self, client_id: &str) -> usize {
        self.by_client.get(client_id).map_or(0, |v| v.len())
    }

    /// Registers a session unless its client already has `max` of them.
    ///
    /// # Errors
    /// [`TooManyConnections`]; other sessions are untouched.
    pub fn register(
        &self,
        subscriber: &Arc<Subscriber>,
        application_id: &str,
        peer: SocketAddr,
        max: usize,
        metrics: &Metrics,
    ) -> Result<Arc<SessionEntry>, TooManyConnections> {
        let mut list = self
            .by_client
            .entry(subscriber.client_id.clone())
            .or_default();
        if list.len() >= max {
            return Err(TooManyConnections);
        }
        let entry = Arc::new(SessionEntry {
            subscriber: subscriber.clone(),
            application_id: application_id.to_owned(),
            peer,
            connected_since: Timestamp::now(),
            subscriptions: Mutex::new(Vec::new()),
            recheck: AtomicBool::new(false),
            wake: Notify::new(),
        });
        list.push(entry.clone());
        metrics
            .client_connections
            .with_label_values(&[&*subscriber.client_id])
            .set(list.len() as i64);
        Ok(entry)
    }

    /// Removes a session.
    pub fn unregister(&self, entry: &Arc<SessionEntry>, metrics: &Metrics) {
        let client_id = entry.subscriber.client_id.clone();
        if let dashmap::Entry::Occupied(mut list) = self.by_client.entry(client_id.clone()) {
            list.get_mut().retain(|e| !Arc::ptr_eq(e, entry));
            let n = list.get().len();
            if n == 0 {
                list.remove();
                let _ = metrics
                    .client_connections
                    .remove_label_values(&[&*client_id]);
            } else {
                metrics
                    .client_connections
                    .with_label_values(&[&*client_id])
                    .set(n as i64);
            }
        }
    }

    /// Every live session.
    pub fn all(&self) -> Vec<Arc<SessionEntry>> {
        self.by_client
            .iter()
            .flat_map(|e| e.value().clone())
            .collect()
    }

    /// The live session whose id (as its `welcome` shows it, hex) is `session`.
    pub fn find(&self, session: &str) -> Option<Arc<SessionEntry>> {
        let id = u64::from_str_radix(session, 16).ok()?;
        self.by_client.iter().find_map(|e| {
            e.value()
                .iter()
                .find(|s| s.subscriber.session_id == id)
                .cloned()
        })
    }

    /// Closes every session of `client_id` with `code` at once, dropping what is queued.
    pub fn close_client(&self, client_id: &str, code: CloseCode, reason: &str) -> usize {
        let list = self
            .by_client
            .get(client_id)
            .map(|v| v.clone())
            .unwrap_or_default();
        for e in &list {
            e.subscriber.outbox.close(code, reason, false);
        }
        list.len()
    }

    /// Follows registry changes until the registry is dropped: a deactivated (or deleted)
    /// client's sessions close with 4003; an application's narrowed ceiling makes its sessions
    /// re-check.
    pub async fn follow(self, registry: Registry) {
        let mut changes = registry.changes();
        loop {
            match changes.recv().await {
                Ok(RegistryChange::ClientDeactivated { client_id }) => {
                    let n =
                        self.close_client(&client_id, CloseCode::Forbidden, "client deactivated");
                    if n > 0 {
                        tracing::info!(%client_id, sessions = n, "client deactivated: sessions closed with 4003");
                    }
                }
                // Only an application whose client IDs are inactive can be deleted, and an
                // inactive client has no session; should one remain, it must not outlive its
                // client ID.
                Ok(RegistryChange::ApplicationDeleted { client_ids, .. }) => {
                    for client_id in client_ids {
                        let n =
                            self.close_client(&client_id, CloseCode::Forbidden, "client deleted");
                        if n > 0 {
                            tracing::warn!(%client_id, sessions = n, "client deleted: sessions closed with 4003");
                        }
                    }
                }
                Ok(RegistryChange::CeilingChanged { application_id }) => {
                    for e in self
                        .all()
                        .iter()
                        .filter(|e| e.application_id == application_id)
                    {
                        e.request_recheck();
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "registry change feed lagged; re-checking every session"
                    );
                    for e in self.all() {
                        e.request_recheck();
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
