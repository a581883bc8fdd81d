//! The registry's storage, behind a small trait so that PostgreSQL (cluster mode) plugs in
//! without touching the broker. The SQLite implementation is in `sqlite.rs`.

use std::path::Path;

use async_trait::async_trait;

use super::credential::Credential;
use super::{AuditEntry, AuditQuery, ClientKeysSpec, StoredApplication};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was broken (e.g. an application name already taken).
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("registry database: {0}")]
    Database(String),
}

/// Rows of a new application: the application, its two client IDs and their secret hashes.
#[derive(Debug, Clone)]
pub struct NewApplication {
    /// The application with both clients; `clients[i].secret_hash` holds the hashes.
    pub application: StoredApplication,
}

/// Fields an update may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ApplicationPatch {
    /// New name.
    pub name: Option<String>,
    /// New vendor.
    pub vendor: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New scope ceiling, as its canonical string.
    pub scope: Option<String>,
}

/// What [`RegistryStore::delete_application`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// The application, its client IDs and their credentials are gone; the audit entry is in.
    Deleted,
    /// There is no application with that id.
    NotFound,
    /// Nothing was changed: these client IDs of the application are active.
    Active(Vec<String>),
}

/// Durable registry storage. Every write also appends its audit entry in the same transaction.
#[async_trait]
pub trait RegistryStore: Send + Sync + 'static {
    /// Every application with its clients.
    async fn load(&self) -> Result<Vec<StoredApplication>, StoreError>;
    /// Inserts a new application and its two clients.
    async fn insert_application(
        &self,
        new: &NewApplication,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Applies `patch`; false when the application does not exist.
    async fn update_application(
        &self,
        id: &str,
        patch: &ApplicationPatch,
        at_ms: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Replaces a client's secret hash; false when the client does not exist.
    async fn set_secret_hash(
        &self,
        client_id: &str,
        hash: &str,
        at_ms: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Replaces a client's public keys; false when the client does not exist.
    async fn set_keys(
        &self,
        client_id: &str,
        keys: &ClientKeysSpec,
        at_ms: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Activates or deactivates a client and records who and why; false when it does not exist.
    async fn set_active(
        &self,
        client_id: &str,
        active: bool,
        actor: &str,
        reason: &str,
        at_ms: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Sets whether the client may be identified by header; false when it does not exist.
    async fn set_client_id_header(
        &self,
        client_id: &str,
        enabled: bool,
        at_ms: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Deletes an application with its client IDs and their credentials, and appends `audit`,
    /// in one transaction, unless one of its client IDs is active (checked in that
    /// transaction). The audit trail and the activation history are kept: they name client
    /// IDs as text.
    async fn delete_application(
        &self,
        id: &str,
        audit: &AuditEntry,
    ) -> Result<Deletion, StoreError>;
    /// Writes a transactionally consistent copy of the whole store, as it is at one instant,
    /// to the file `path` (which must not exist yet, or be empty), in the store's own format
    /// (SQLite: a database file that [`super::SqliteStore::open`] opens).
    async fn copy_to(&self, path: &Path) -> Result<(), StoreError>;
    /// Appends an audit entry for a change outside the registry (e.g. key rotation).
    async fn append_audit(&self, audit: &AuditEntry) -> Result<(), StoreError>;
    /// Audit entries, newest first.
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
    /// Every credential, valid and revoked.
    async fn load_credentials(&self) -> Result<Vec<Credential>, StoreError>;
    /// Stores a new credential; [`StoreError::Conflict`] when a valid one has its name.
    async fn insert_credential(
        &self,
        credential: &Credential,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Revokes a valid credential; false when there is no valid credential with that id.
    async fn revoke_credential(
        &self,
        id: &str,
        at_ms: i64,
        by: &str,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
}
