//! Applying the change feed: the registry keeps the cursor of the last change it applied and
//! applies those after it in id order, each once, reloading the rows a change names and
//! broadcasting the [`RegistryChange`]s live sessions act on; the follower task does it when
//! the store wakes it and on an interval (another node's or process's writes).

use super::*;

impl Inner {
    /// Applies every change after the cursor, in id order, each once; see [`Inner::apply`].
    /// On a storage failure the cursor stays after the last change applied, and the next call
    /// goes on from there.
    pub(super) async fn catch_up(&self) -> Result<(), RegistryError> {
        let mut cursor = self.cursor.lock().await;
        loop {
            let batch = self.store.changes_after(*cursor, FEED_BATCH).await?;
            let full = batch.len() == FEED_BATCH;
            for change in batch {
                if change.id != *cursor + 1 {
                    // The store's contract rules this out; applying what is there is still
                    // the best that can be done.
                    tracing::warn!(
                        after = *cursor,
                        got = change.id,
                        "registry change feed skipped ids"
                    );
                }
                self.apply(&change).await?;
                *cursor = change.id;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Applies one change: reloads the rows it names from the store into the snapshot (or the
    /// credential set), then broadcasts what live sessions need to know, as the local writer
    /// used to. The rows read are the store's current ones, which may be newer than the
    /// change; the changes after it reload them again.
    pub(super) async fn apply(&self, change: &Change) -> Result<(), RegistryError> {
        let app_id = change.application_id.clone().or_else(|| {
            let client_id = change.client_id.as_deref()?;
            Some(
                self.snapshot
                    .load()
                    .client(client_id)?
                    .application_id
                    .clone(),
            )
        });
        let client_id = change.client_id.clone().unwrap_or_default();
        let mut events = Vec::new();
        match &change.kind {
            ChangeKind::CredentialCreated | ChangeKind::CredentialRevoked => {
                return self.reload_credentials().await;
            }
            ChangeKind::WebhookChanged => {
                let endpoint_id = change.webhook_id.clone().unwrap_or_default();
                let _ = self
                    .changes
                    .send(RegistryChange::WebhookChanged { endpoint_id });
                return Ok(());
            }
            ChangeKind::FhirSubscriptionChanged => {
                let _ = self
                    .changes
                    .send(RegistryChange::FhirSubscriptionChanged { client_id });
                return Ok(());
            }
            ChangeKind::StateChanged(kind) => {
                let name = kind.strip_prefix("state.").unwrap_or(kind).to_owned();
                let _ = self.changes.send(RegistryChange::StateChanged { name });
                return Ok(());
            }
            ChangeKind::Unknown(kind) => {
                tracing::warn!(
                    id = change.id,
                    kind,
                    "registry change of a kind this build does not know; reloading everything"
                );
                let apps = self.store.load().await?;
                self.snapshot.store(Arc::new(Snapshot::build(apps)));
                return self.reload_credentials().await;
            }
            ChangeKind::ApplicationDeleted => {
                // A deleted application's client IDs are no longer in the store: take them
                // from the snapshot (none there: it was created and deleted before this
                // registry saw it, so it has no session here).
                let application_id = app_id.clone().unwrap_or_default();
                let client_ids = self
                    .snapshot
                    .load()
                    .application(&application_id)
                    .map(|a| {
                        a.record
                            .clients
                            .iter()
                            .map(|c| c.client_id.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                events.push(RegistryChange::ApplicationDeleted {
                    application_id,
                    client_ids,
                });
            }
            ChangeKind::ApplicationCreated | ChangeKind::ApplicationUpdated => {
                events.push(RegistryChange::ApplicationChanged {
                    application_id: app_id.clone().unwrap_or_default(),
                });
            }
            ChangeKind::CeilingChanged | ChangeKind::GrantChanged | ChangeKind::RecordPut => {
                let application_id = app_id.clone().unwrap_or_default();
                events.push(RegistryChange::ApplicationChanged {
                    application_id: application_id.clone(),
                });
                events.push(RegistryChange::CeilingChanged { application_id });
            }
            ChangeKind::ClientActivated => {
                events.push(RegistryChange::ClientActivated { client_id });
            }
            ChangeKind::ClientDeactivated => {
                events.push(RegistryChange::ClientDeactivated { client_id });
            }
            ChangeKind::SecretChanged
            | ChangeKind::KeysChanged
            | ChangeKind::ClientIdHeaderChanged => {
                events.push(RegistryChange::CredentialsChanged { client_id });
            }
        }
        match app_id {
            Some(id) => {
                let app = self.store.load_application(&id).await?;
                let next = self.snapshot.load().with_application(&id, app);
                self.snapshot.store(Arc::new(next));
            }
            None => {
                // A client change for a client this registry never saw and the store no
                // longer has: nothing to update, but stay exact.
                let apps = self.store.load().await?;
                self.snapshot.store(Arc::new(Snapshot::build(apps)));
            }
        }
        for event in events {
            // No receiver is fine: nobody is connected.
            let _ = self.changes.send(event);
        }
        Ok(())
    }

    pub(super) async fn reload_credentials(&self) -> Result<(), RegistryError> {
        let mut all = self.store.load_credentials().await?;
        if let Some(c) = self.config_credential.load_full() {
            all.push((*c).clone());
        }
        self.credentials.store(Arc::new(CredentialSet::new(all)));
        Ok(())
    }
}

/// The follower task: applies the feed whenever `wakeups` fires, and every `poll` in any case,
/// until `stop` is cancelled or the registry is gone. It holds the registry only while
/// applying, so dropping the last handle ends it.
pub(super) async fn follow(
    inner: Weak<Inner>,
    stop: CancellationToken,
    mut wakeups: Wakeups,
    poll: Duration,
) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
            woke = wakeups.next() => {
                if woke.is_none() {
                    // The store stopped signalling: polling alone from now on.
                    wakeups = futures_util::stream::pending().boxed();
                }
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.catch_up().await {
            tracing::warn!(error = %e, "registry change feed: applying changes failed; retrying");
        }
    }
}
