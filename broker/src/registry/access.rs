//! The access audit's rows in the registry store (SECURITY.md "Access audit"): appended by
//! this node's audit writer, read by the audit queries and the verifier.

use super::{AccessFilter, AuditCheckpoint, AuditRow, Registry, RegistryError};

impl Registry {
    /// Appends audit rows and, when given, a signed checkpoint, in one transaction.
    ///
    /// # Errors
    /// A storage failure; a conflict when a row's place in its chain is taken.
    pub async fn append_access_audit(
        &self,
        rows: &[AuditRow],
        checkpoint: Option<&AuditCheckpoint>,
    ) -> Result<(), RegistryError> {
        Ok(self
            .inner
            .store
            .append_access_audit(rows, checkpoint)
            .await?)
    }

    /// The newest row of `chain` (its number and hash).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn access_audit_head(
        &self,
        chain: &str,
    ) -> Result<Option<(u64, String)>, RegistryError> {
        Ok(self.inner.store.access_audit_head(chain).await?)
    }

    /// The newest snapshot of each matching record.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn access_audit_latest(
        &self,
        filter: &AccessFilter,
    ) -> Result<Vec<AuditRow>, RegistryError> {
        Ok(self.inner.store.access_audit_latest(filter).await?)
    }

    /// Rows of `chain` after `after`, in order (at most `limit`).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn access_audit_rows(
        &self,
        chain: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, RegistryError> {
        Ok(self
            .inner
            .store
            .access_audit_rows(chain, after, limit)
            .await?)
    }

    /// Every chain.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn access_audit_chains(&self) -> Result<Vec<String>, RegistryError> {
        Ok(self.inner.store.access_audit_chains().await?)
    }

    /// A chain's signed checkpoints, in order.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn access_audit_checkpoints(
        &self,
        chain: &str,
    ) -> Result<Vec<AuditCheckpoint>, RegistryError> {
        Ok(self.inner.store.access_audit_checkpoints(chain).await?)
    }

    /// Deletes a chain's rows up to `through` (retention).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn prune_access_audit(
        &self,
        chain: &str,
        through: u64,
    ) -> Result<u64, RegistryError> {
        Ok(self.inner.store.prune_access_audit(chain, through).await?)
    }
}
