//! The access audit's rows and the console's sessions in the registry store (SECURITY.md "Access audit"): appended by
//! this node's audit writer, read by the audit queries and the verifier.

use super::{AccessFilter, AuditCheckpoint, AuditRow, ConsoleSession, Registry, RegistryError};

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

    /// Rows of `chain` numbered above `after`, in order (at most `limit`).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn access_audit_rows(
        &self,
        chain: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, RegistryError> {
        Ok(self
            .inner
            .store
            .access_audit_rows(chain, after, limit)
            .await?)
    }

    /// The newest checkpoint of `chain` signed before `before_ms` of a row below `below_seq`.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn access_audit_prune_point(
        &self,
        chain: &str,
        before_ms: i64,
        below_seq: u64,
    ) -> Result<Option<u64>, RegistryError> {
        Ok(self
            .inner
            .store
            .access_audit_prune_point(chain, before_ms, below_seq)
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

    /// Stores a new console session.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn insert_console_session(&self, s: &ConsoleSession) -> Result<(), RegistryError> {
        Ok(self.inner.store.insert_console_session(s).await?)
    }

    /// The console session whose cookie hashes to `id_hash`.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn console_session(
        &self,
        id_hash: &str,
    ) -> Result<Option<ConsoleSession>, RegistryError> {
        Ok(self.inner.store.console_session(id_hash).await?)
    }

    /// Moves a console session's `last_seen` forward.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn touch_console_session(
        &self,
        id_hash: &str,
        at_ms: i64,
    ) -> Result<(), RegistryError> {
        Ok(self
            .inner
            .store
            .touch_console_session(id_hash, at_ms)
            .await?)
    }

    /// Ends a console session (sign-out).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn end_console_session(&self, id_hash: &str) -> Result<bool, RegistryError> {
        Ok(self.inner.store.end_console_session(id_hash).await?)
    }

    /// Deletes expired console sessions.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn prune_console_sessions(
        &self,
        created_before_ms: i64,
        seen_before_ms: i64,
    ) -> Result<u64, RegistryError> {
        Ok(self
            .inner
            .store
            .prune_console_sessions(created_before_ms, seen_before_ms)
            .await?)
    }
}
