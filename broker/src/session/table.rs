//! Live sessions by client ID: the per-client connection cap (4029), and the link from
//! registry changes to sessions (deactivation closes them with 4003 at once; a changed scope
//! ceiling makes them re-check their subscriptions).

use std::sync::Arc;

use dashmap::DashMap;
use scopecast_protocol::CloseCode;

use super::SessionHandle;
use crate::metrics::Metrics;
use crate::registry::{Registry, RegistryChange};

/// Sessions by client ID. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct SessionTable {
    by_client: Arc<DashMap<Arc<str>, Vec<Arc<SessionHandle>>>>,
}

/// The client already has its most connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TooManyConnections;

impl SessionTable {
    /// Number of live sessions of `client_id`.
    pub(crate) fn count(&self, client_id: &str) -> usize {
        self.by_client.get(client_id).map_or(0, |v| v.len())
    }

    /// Registers a session unless its client already has `max` of them.
    ///
    /// # Errors
    /// [`TooManyConnections`]; other sessions are untouched.
    pub(crate) fn register(
        &self,
        handle: &Arc<SessionHandle>,
        max: usize,
        metrics: &Metrics,
    ) -> Result<(), TooManyConnections> {
        let mut list = self.by_client.entry(handle.client_id.clone()).or_default();
        if list.len() >= max {
            return Err(TooManyConnections);
        }
        list.push(handle.clone());
        metrics
            .client_connections
            .with_label_values(&[&*handle.client_id])
            .set(list.len() as i64);
        Ok(())
    }

    /// Removes a session.
    pub(crate) fn unregister(&self, entry: &Arc<SessionHandle>, metrics: &Metrics) {
        let client_id = entry.client_id.clone();
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
    pub(crate) fn all(&self) -> Vec<Arc<SessionHandle>> {
        self.by_client
            .iter()
            .flat_map(|e| e.value().clone())
            .collect()
    }

    /// The live session whose id (as its `welcome` shows it, hex) is `session`.
    pub(crate) fn find(&self, session: &str) -> Option<Arc<SessionHandle>> {
        let id = u64::from_str_radix(session, 16).ok()?;
        self.by_client
            .iter()
            .find_map(|e| e.value().iter().find(|s| s.id == id).cloned())
    }

    /// Closes every session of `client_id` with `code` at once, dropping what is queued.
    pub(crate) fn close_client(&self, client_id: &str, code: CloseCode, reason: &str) -> usize {
        let list = self
            .by_client
            .get(client_id)
            .map(|v| v.clone())
            .unwrap_or_default();
        for e in &list {
            e.outbox.close(code, reason, false);
        }
        list.len()
    }

    /// Follows registry changes until the registry is dropped: a deactivated (or deleted)
    /// client's sessions close with 4003; an application's narrowed ceiling makes its sessions
    /// re-check.
    pub(crate) async fn follow(self, registry: Registry) {
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
