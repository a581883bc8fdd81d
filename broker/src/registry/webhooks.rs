//! The registry's webhook endpoints (WEBHOOKS.md): the admin API's and the developer API's
//! changes (each with an audit entry and a change every node sees), and the delivery
//! engine's reads and lease-fenced writes.

use serde_json::Value;

use super::{CursorWrite, Registry, RegistryError, StoredWebhook, WebhookAttempt, now_ms};

impl Registry {
    /// Every endpoint, as stored now (not cached: the delivery engine and the admin API read
    /// the store).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn webhooks(&self) -> Result<Vec<StoredWebhook>, RegistryError> {
        Ok(self.inner.store.load_webhooks().await?)
    }

    /// The endpoint `id`.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`], or a storage failure.
    pub async fn webhook(&self, id: &str) -> Result<StoredWebhook, RegistryError> {
        self.webhooks()
            .await?
            .into_iter()
            .find(|w| w.id == id)
            .ok_or_else(|| RegistryError::NotFound {
                what: "webhook endpoint",
                id: id.to_owned(),
            })
    }

    /// Stores a new endpoint of an existing client ID, with `action` (`webhook.create`) in
    /// the audit trail by `actor`; `detail` must hold no secret.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`] for an unknown client ID, [`RegistryError::Conflict`], or
    /// a storage failure.
    pub async fn create_webhook(
        &self,
        w: &StoredWebhook,
        actor: &str,
        detail: Value,
    ) -> Result<(), RegistryError> {
        let client = self.existing_client(&w.client_id)?;
        let entry = self.audit_entry(
            actor,
            "webhook.create",
            Some(&client.application_id),
            Some(&client.client_id),
            detail,
        );
        let _guard = self.inner.writes.lock().await;
        self.inner.store.insert_webhook(w, &entry).await?;
        self.catch_up().await
    }

    /// Writes `w` over the stored endpoint when its `version` is still `w.version`, with
    /// `action` in the audit trail; false when another write came first (read it again).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn update_webhook(
        &self,
        w: &StoredWebhook,
        actor: &str,
        action: &str,
        detail: Value,
    ) -> Result<bool, RegistryError> {
        let application = self.client(&w.client_id).map(|c| c.application_id.clone());
        let entry = self.audit_entry(
            actor,
            action,
            application.as_deref(),
            Some(&w.client_id),
            detail,
        );
        let _guard = self.inner.writes.lock().await;
        let written = self.inner.store.update_webhook(w, &entry).await?;
        self.catch_up().await?;
        Ok(written)
    }

    /// Deletes the endpoint `w` and its attempt records.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`] when it is gone already, or a storage failure.
    pub async fn delete_webhook(
        &self,
        w: &StoredWebhook,
        actor: &str,
    ) -> Result<(), RegistryError> {
        let application = self.client(&w.client_id).map(|c| c.application_id.clone());
        let entry = self.audit_entry(
            actor,
            "webhook.delete",
            application.as_deref(),
            Some(&w.client_id),
            serde_json::json!({"endpoint_id": w.id, "url": w.url}),
        );
        let _guard = self.inner.writes.lock().await;
        let deleted = self.inner.store.delete_webhook(&w.id, &entry).await?;
        self.catch_up().await?;
        if deleted {
            Ok(())
        } else {
            Err(RegistryError::NotFound {
                what: "webhook endpoint",
                id: w.id.clone(),
            })
        }
    }

    /// Sets the cursor of endpoint `w` to `cursor` of the log `epoch` (an admin's replay:
    /// deliveries go on after it; events up to `through` go out even if accepted while the
    /// client ID was inactive), with `webhook.replay` in the audit trail.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`], or a storage failure.
    pub async fn replay_webhook(
        &self,
        w: &StoredWebhook,
        epoch: &str,
        cursor: u64,
        through: u64,
        actor: &str,
    ) -> Result<(), RegistryError> {
        let application = self.client(&w.client_id).map(|c| c.application_id.clone());
        let entry = self.audit_entry(
            actor,
            "webhook.replay",
            application.as_deref(),
            Some(&w.client_id),
            serde_json::json!({"endpoint_id": w.id, "since_seq": cursor + 1}),
        );
        let _guard = self.inner.writes.lock().await;
        let done = self
            .inner
            .store
            .replay_webhook(&w.id, epoch, cursor, through, &entry)
            .await?;
        self.catch_up().await?;
        if done {
            Ok(())
        } else {
            Err(RegistryError::NotFound {
                what: "webhook endpoint",
                id: w.id.clone(),
            })
        }
    }

    /// Takes or renews the leases of endpoints `ids` for `holder` for `lease_ms` from now, in
    /// one transaction ([`super::RegistryStore::lease_webhooks`]); `lease_ms` 0 gives them
    /// back. One answer per id, in order.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn lease_webhooks(
        &self,
        ids: &[String],
        holder: &str,
        lease_ms: i64,
    ) -> Result<Vec<bool>, RegistryError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        Ok(self
            .inner
            .store
            .lease_webhooks(ids, holder, now, now + lease_ms)
            .await?)
    }

    /// Several endpoints' cursors in one transaction
    /// ([`super::RegistryStore::advance_webhook_cursors`]).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn advance_webhook_cursors(
        &self,
        holder: &str,
        writes: &[CursorWrite],
    ) -> Result<Vec<bool>, RegistryError> {
        Ok(self
            .inner
            .store
            .advance_webhook_cursors(holder, writes)
            .await?)
    }

    /// When the client ID's current active period began (Unix ms), read from the store
    /// ([`super::RegistryStore::client_active_since`]).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn client_active_since(&self, client_id: &str) -> Result<Option<i64>, RegistryError> {
        Ok(self.inner.store.client_active_since(client_id).await?)
    }

    /// Records attempts and skips.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn record_webhook_attempts(
        &self,
        attempts: &[WebhookAttempt],
    ) -> Result<(), RegistryError> {
        Ok(self.inner.store.append_webhook_attempts(attempts).await?)
    }

    /// An endpoint's attempts, newest first (at most `limit`, 1000 at most; below row id
    /// `before` when given).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn webhook_attempts(
        &self,
        endpoint_id: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<WebhookAttempt>, RegistryError> {
        Ok(self
            .inner
            .store
            .webhook_attempts(endpoint_id, before, limit.clamp(1, 1000))
            .await?)
    }

    /// Forgets attempts older than `before_ms`; how many went.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn prune_webhook_attempts(&self, before_ms: i64) -> Result<u64, RegistryError> {
        Ok(self.inner.store.prune_webhook_attempts(before_ms).await?)
    }
}
