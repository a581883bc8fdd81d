//! The registry's FHIR Subscriptions (FHIR.md): written by the FHIR front end with the
//! application's own token (each write with an audit entry and a change every node sees), and
//! the numbering's checkpoints.

use serde_json::Value;

use super::{FhirCheckpoint, Registry, RegistryError, StoredFhirSubscription};

impl Registry {
    /// Every FHIR Subscription, as stored now.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn fhir_subscriptions(&self) -> Result<Vec<StoredFhirSubscription>, RegistryError> {
        Ok(self.inner.store.load_fhir_subscriptions().await?)
    }

    /// Stores a new Subscription of an existing client ID, with `fhir.subscription.create` in
    /// the audit trail by `actor` (the client ID itself).
    ///
    /// # Errors
    /// [`RegistryError::NotFound`] for an unknown client ID, or a storage failure.
    pub async fn create_fhir_subscription(
        &self,
        s: &StoredFhirSubscription,
        actor: &str,
        detail: Value,
    ) -> Result<(), RegistryError> {
        let client = self.existing_client(&s.client_id)?;
        let entry = self.audit_entry(
            actor,
            "fhir.subscription.create",
            Some(&client.application_id),
            Some(&client.client_id),
            detail,
        );
        let _guard = self.inner.writes.lock().await;
        self.inner.store.insert_fhir_subscription(s, &entry).await?;
        self.catch_up().await
    }

    /// Writes `s` over the stored Subscription when its `version` is still `s.version`, with
    /// `action` (`fhir.subscription.update`, `fhir.subscription.off`) in the audit trail; false
    /// when another write came first.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn update_fhir_subscription(
        &self,
        s: &StoredFhirSubscription,
        actor: &str,
        action: &str,
        detail: Value,
    ) -> Result<bool, RegistryError> {
        let application = self.client(&s.client_id).map(|c| c.application_id.clone());
        let entry = self.audit_entry(
            actor,
            action,
            application.as_deref(),
            Some(&s.client_id),
            detail,
        );
        let _guard = self.inner.writes.lock().await;
        let written = self.inner.store.update_fhir_subscription(s, &entry).await?;
        self.catch_up().await?;
        Ok(written)
    }

    /// Deletes the Subscription `s`, with `fhir.subscription.delete` in the audit trail.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`] when it is gone already, or a storage failure.
    pub async fn delete_fhir_subscription(
        &self,
        s: &StoredFhirSubscription,
        actor: &str,
    ) -> Result<(), RegistryError> {
        let application = self.client(&s.client_id).map(|c| c.application_id.clone());
        let entry = self.audit_entry(
            actor,
            "fhir.subscription.delete",
            application.as_deref(),
            Some(&s.client_id),
            serde_json::json!({"subscription_id": s.id}),
        );
        let _guard = self.inner.writes.lock().await;
        let deleted = self
            .inner
            .store
            .delete_fhir_subscription(&s.id, &entry)
            .await?;
        self.catch_up().await?;
        if deleted {
            Ok(())
        } else {
            Err(RegistryError::NotFound {
                what: "FHIR Subscription",
                id: s.id.clone(),
            })
        }
    }

    /// Moves the numbering's checkpoints forward (no audit, no change: every node computes
    /// the same numbers from the log).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn checkpoint_fhir_subscriptions(
        &self,
        checkpoints: &[FhirCheckpoint],
    ) -> Result<(), RegistryError> {
        Ok(self
            .inner
            .store
            .checkpoint_fhir_subscriptions(checkpoints)
            .await?)
    }
}
