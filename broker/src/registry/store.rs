//! The registry's storage, behind a small trait so that PostgreSQL (cluster mode) plugs in
//! without touching the broker: [`RegistryStore`], what it reads and writes, and its change
//! feed ([`Change`], [`ChangeKind`], [`Wakeups`]). The SQLite implementation is in `sqlite.rs`;
//! the checks every implementation must pass are in `conformance.rs`.

use std::path::Path;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

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
    /// The record's version after the change (`None`: the next one).
    pub version: Option<u64>,
    /// Whether the version after the change is frozen (`None`: as before).
    pub frozen: Option<bool>,
    /// The claims of the newest frozen version, when this change freezes one.
    pub frozen_record: Option<String>,
}

impl From<scopecast_protocol::admin::ApplicationPatch> for ApplicationPatch {
    /// The fields of an API patch (admin or developer); the version fields are the registry's.
    fn from(p: scopecast_protocol::admin::ApplicationPatch) -> Self {
        ApplicationPatch {
            name: p.name,
            vendor: p.vendor,
            description: p.description,
            scope: p.scope,
            ..ApplicationPatch::default()
        }
    }
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

/// What a [`Change`] was: one kind per write of [`RegistryStore`], named like the audit
/// actions. Stored as its [`ChangeKind::as_str`] text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// [`RegistryStore::insert_application`]: an application and its two client IDs.
    ApplicationCreated,
    /// [`RegistryStore::update_application`] without a new scope ceiling.
    ApplicationUpdated,
    /// [`RegistryStore::update_application`] with a scope ceiling (perhaps other fields too):
    /// live sessions of the application must re-check their subscriptions.
    CeilingChanged,
    /// [`RegistryStore::delete_application`]: the application and its client IDs are gone.
    ApplicationDeleted,
    /// [`RegistryStore::set_active`] with `true`.
    ClientActivated,
    /// [`RegistryStore::set_active`] with `false`: the client's live sessions must close.
    ClientDeactivated,
    /// [`RegistryStore::set_secret_hash`].
    SecretChanged,
    /// [`RegistryStore::set_keys`].
    KeysChanged,
    /// [`RegistryStore::set_client_id_header`].
    ClientIdHeaderChanged,
    /// [`RegistryStore::insert_credential`].
    CredentialCreated,
    /// [`RegistryStore::revoke_credential`].
    CredentialRevoked,
    /// [`RegistryStore::set_grant`]: the client's effective scope changed; live sessions of
    /// its application must re-check their subscriptions.
    GrantChanged,
    /// [`RegistryStore::put_record`]: an application record replaced as a whole (imported,
    /// retired); its sessions must re-check their subscriptions.
    RecordPut,
    /// [`RegistryStore::insert_webhook`], [`RegistryStore::update_webhook`] or
    /// [`RegistryStore::delete_webhook`]: a webhook endpoint was created, changed or deleted;
    /// whoever delivers to it reloads it.
    WebhookChanged,
    /// [`RegistryStore::insert_fhir_subscription`], [`RegistryStore::update_fhir_subscription`]
    /// or [`RegistryStore::delete_fhir_subscription`]: a FHIR Subscription of the client ID
    /// was created, changed or deleted; every node reloads them.
    FhirSubscriptionChanged,
    /// [`RegistryStore::put_state`]: the shared state blob named after `state.` changed
    /// (stored as `state.<name>`, e.g. `state.signing_keys`); nodes reload it.
    StateChanged(String),
    /// A kind this build does not know (written by a newer node sharing the database). A
    /// follower reloads everything for it.
    Unknown(String),
}

impl ChangeKind {
    /// The stored spelling, e.g. `client.deactivate`.
    pub fn as_str(&self) -> &str {
        match self {
            ChangeKind::ApplicationCreated => "application.create",
            ChangeKind::ApplicationUpdated => "application.update",
            ChangeKind::CeilingChanged => "application.set_scope",
            ChangeKind::ApplicationDeleted => "application.delete",
            ChangeKind::ClientActivated => "client.activate",
            ChangeKind::ClientDeactivated => "client.deactivate",
            ChangeKind::SecretChanged => "client.rotate_secret",
            ChangeKind::KeysChanged => "client.set_keys",
            ChangeKind::ClientIdHeaderChanged => "client.set_client_id_header",
            ChangeKind::CredentialCreated => "credential.create",
            ChangeKind::CredentialRevoked => "credential.revoke",
            ChangeKind::GrantChanged => "client.set_grant",
            ChangeKind::RecordPut => "application.put_record",
            ChangeKind::WebhookChanged => "webhook.change",
            ChangeKind::FhirSubscriptionChanged => "fhir.subscription.change",
            ChangeKind::StateChanged(s) | ChangeKind::Unknown(s) => s,
        }
    }

    /// The kind spelled `s`; never fails: an unknown spelling is [`ChangeKind::Unknown`].
    pub fn parse(s: &str) -> ChangeKind {
        match s {
            "application.create" => ChangeKind::ApplicationCreated,
            "application.update" => ChangeKind::ApplicationUpdated,
            "application.set_scope" => ChangeKind::CeilingChanged,
            "application.delete" => ChangeKind::ApplicationDeleted,
            "client.activate" => ChangeKind::ClientActivated,
            "client.deactivate" => ChangeKind::ClientDeactivated,
            "client.rotate_secret" => ChangeKind::SecretChanged,
            "client.set_keys" => ChangeKind::KeysChanged,
            "client.set_client_id_header" => ChangeKind::ClientIdHeaderChanged,
            "credential.create" => ChangeKind::CredentialCreated,
            "credential.revoke" => ChangeKind::CredentialRevoked,
            "client.set_grant" => ChangeKind::GrantChanged,
            "application.put_record" => ChangeKind::RecordPut,
            "webhook.change" => ChangeKind::WebhookChanged,
            "fhir.subscription.change" => ChangeKind::FhirSubscriptionChanged,
            other if other.starts_with("state.") => ChangeKind::StateChanged(other.to_owned()),
            other => ChangeKind::Unknown(other.to_owned()),
        }
    }
}

/// One row of the change feed: which write happened and which keys it concerns. It names rows,
/// it does not carry them: a follower reloads the named rows from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The cursor: consecutive from 1, in commit order (see [`RegistryStore`]).
    pub id: u64,
    /// What was written.
    pub kind: ChangeKind,
    /// The application concerned: set for every application and client kind.
    pub application_id: Option<String>,
    /// The client ID concerned: set for client kinds.
    pub client_id: Option<String>,
    /// The credential concerned: set for credential kinds.
    pub credential_id: Option<String>,
    /// The webhook endpoint concerned: set for [`ChangeKind::WebhookChanged`].
    pub webhook_id: Option<String>,
    /// When, Unix ms (the write's audit time).
    pub at_ms: i64,
}

/// Wake-ups of a change feed: an item some time after one or more writes committed. Items
/// carry nothing and may be merged or lost (a follower also polls); the stream ends only
/// when the store is gone.
pub type Wakeups = BoxStream<'static, ()>;

/// Durable registry storage. Every write also appends its audit entry, and one [`Change`] row,
/// in the same transaction: a write that fails leaves neither.
///
/// # The change feed
/// [`RegistryStore::changes_after`] reads the changes after a cursor in id order, and
/// [`RegistryStore::wakeups`] says when to read (a hint, never the data). Whoever holds a view
/// of the registry (this broker's snapshot, another node sharing the database) keeps a cursor
/// and applies every change after it, in id order, once.
///
/// That only works if a reader never sees a change while one with a lower id can still appear.
/// An implementation must guarantee: change ids are consecutive from 1 (a failed write gives
/// its id back) and become visible in id order, so that once id N is readable every id below
/// N is readable too. SQLite has it for free: one writer at a time, and an `AUTOINCREMENT` id
/// given inside the write transaction. PostgreSQL sequences give neither (ids are taken before
/// commit, and a rollback leaves a hole), so the PostgreSQL store takes a transaction-level
/// advisory lock (`pg_advisory_xact_lock`, one key for the registry) before it inserts its
/// change row, and assigns `MAX(id) + 1` under it: change-writing transactions then commit one
/// after the other, in id order, without holes, and readers need no look-back window.
/// `LISTEN/NOTIFY` only wakes readers there, like [`Wakeups`] here.
#[async_trait]
pub trait RegistryStore: Send + Sync + 'static {
    /// Every application with its clients.
    async fn load(&self) -> Result<Vec<StoredApplication>, StoreError>;
    /// One application with its clients; `None` when there is none with that id.
    async fn load_application(&self, id: &str) -> Result<Option<StoredApplication>, StoreError>;
    /// Up to `limit` changes with an id above `cursor`, in id order (none when the feed has
    /// nothing after `cursor`). Cursor 0 reads from the first change.
    async fn changes_after(&self, cursor: u64, limit: usize) -> Result<Vec<Change>, StoreError>;
    /// The id of the newest committed change; 0 when there is none. Read it before
    /// [`RegistryStore::load`] to start following from a loaded state.
    async fn latest_change(&self) -> Result<u64, StoreError>;
    /// Wake-ups after committed writes made through this store (SQLite: an in-process signal,
    /// so writes by another process arrive only by polling).
    fn wakeups(&self) -> Wakeups;
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
    /// Sets this environment's grant for a client ID (a canonical scope string); false when
    /// the client does not exist.
    async fn set_grant(
        &self,
        client_id: &str,
        grant: &str,
        at_ms: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Writes a whole application record in one transaction: inserts it with its clients
    /// (`insert`, for an imported record new here: clients without secrets, inactive), or
    /// replaces its record fields (name, vendor, description, scope, version, origin,
    /// signed record, retirement) and its clients' public keys, leaving secrets, activation
    /// and grants as they are; then deactivates the client IDs in `deactivate` (recording
    /// `actor` and `reason` in their activation history), and appends `audit`.
    async fn put_record(
        &self,
        app: &StoredApplication,
        insert: bool,
        deactivate: &[String],
        actor: &str,
        reason: &str,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
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
    /// Appends an audit entry for a change outside the registry (e.g. key rotation). Adds no
    /// [`Change`]: nothing a follower holds changes.
    async fn append_audit(&self, audit: &AuditEntry) -> Result<(), StoreError>;
    /// Audit entries, newest first.
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
    /// The shared state blob `name` and its version (writes counted from 1); `None` when
    /// it was never written.
    async fn load_state(&self, name: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError>;
    /// Writes the shared state blob `name` if its stored version is still `expected` (0: not
    /// written yet), as version `expected + 1`, with a [`ChangeKind::StateChanged`] row and
    /// `audit`, in one transaction; false (nothing written) when another writer came first.
    async fn put_state(
        &self,
        name: &str,
        value: &[u8],
        expected: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Remembers the client assertion key `key` (hex SHA-256 of `client_id \0 jti`) until `until` (Unix s);
    /// true when it was not already remembered with an `until` at or after `now` (so the
    /// assertion may be accepted), false when it was (a replay). Also forgets keys whose
    /// `until` passed.
    async fn remember_jti(&self, key: &str, until: i64, now: i64) -> Result<bool, StoreError>;
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
    /// When the client ID's current active period began (Unix ms): its first activation
    /// after its last deactivation; `None` when it has none (never activated, or deactivated
    /// last). Events accepted before it are not pushed (WEBHOOKS.md section 1).
    async fn client_active_since(&self, client_id: &str) -> Result<Option<i64>, StoreError>;
    /// Every FHIR Subscription.
    async fn load_fhir_subscriptions(&self) -> Result<Vec<StoredFhirSubscription>, StoreError>;
    /// Stores a new FHIR Subscription (its `version` is 1), with a
    /// [`ChangeKind::FhirSubscriptionChanged`] row and `audit`.
    async fn insert_fhir_subscription(
        &self,
        s: &StoredFhirSubscription,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Replaces a FHIR Subscription's `resource`, `status`, `error` and `updated_at` when its
    /// stored `version` is still `s.version` (writing `version + 1`), with a change row and
    /// `audit`; false when another write came first or it is gone. Checkpoints are untouched.
    async fn update_fhir_subscription(
        &self,
        s: &StoredFhirSubscription,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Deletes a FHIR Subscription, with a change row and `audit`; false when it is gone.
    async fn delete_fhir_subscription(
        &self,
        id: &str,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Moves checkpoints forward (a checkpoint of the same log with a lower `seq` is
    /// replaced; one of another log too); no change row, no audit (every node computes the same
    /// numbers). In one transaction.
    async fn checkpoint_fhir_subscriptions(
        &self,
        checkpoints: &[FhirCheckpoint],
    ) -> Result<(), StoreError>;
    /// Every webhook endpoint (lease columns included).
    async fn load_webhooks(&self) -> Result<Vec<StoredWebhook>, StoreError>;
    /// Stores a new endpoint (its `version` is 1), with a [`ChangeKind::WebhookChanged`] row
    /// and `audit`; [`StoreError::Conflict`] when its id exists, [`StoreError::Database`]
    /// when its client ID does not (the foreign key).
    async fn insert_webhook(&self, w: &StoredWebhook, audit: &AuditEntry)
    -> Result<(), StoreError>;
    /// Replaces an endpoint's settings (url, topics, sealed secrets and headers, state, limits,
    /// `updated_at`) when its stored `version` is still `w.version`, writing `version + 1`;
    /// false (nothing written) when another write came first or the endpoint is gone. The
    /// cursor and the lease are not touched.
    async fn update_webhook(
        &self,
        w: &StoredWebhook,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Deletes an endpoint and its attempts; false when there is none with that id.
    async fn delete_webhook(&self, id: &str, audit: &AuditEntry) -> Result<bool, StoreError>;
    /// Moves an endpoint's cursor forward to `seq` of the log `epoch` (never back within one
    /// epoch; to `seq` when the stored cursor counts in another log), when `holder` holds its
    /// lease and no replay happened after `version` (the one its worker started from); false
    /// (nothing written) otherwise: the lease went to another node, or an admin replayed (an
    /// older worker's last write must not undo it; other changes, a pause or a rotation, leave
    /// its progress to be saved). No change row: the lease holder is the only writer.
    async fn advance_webhook_cursor(
        &self,
        id: &str,
        holder: &str,
        version: i64,
        epoch: &str,
        seq: u64,
    ) -> Result<bool, StoreError> {
        let write = CursorWrite {
            endpoint_id: id.to_owned(),
            version,
            epoch: epoch.to_owned(),
            seq,
        };
        Ok(self
            .advance_webhook_cursors(holder, &[write])
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }
    /// [`RegistryStore::advance_webhook_cursor`] for several endpoints in one transaction
    /// (one commit for every endpoint a node delivers to): one answer per write, in order.
    async fn advance_webhook_cursors(
        &self,
        holder: &str,
        writes: &[CursorWrite],
    ) -> Result<Vec<bool>, StoreError>;
    /// Sets an endpoint's cursor to `cursor` of the log `epoch`, back or forward (an admin's
    /// replay: deliveries go on after it), and its `replay_through` to `through` (events up to
    /// it are delivered although accepted while the client ID was inactive), with a
    /// [`ChangeKind::WebhookChanged`] row (the holder restarts from it) and `audit`; false when
    /// there is no such endpoint.
    async fn replay_webhook(
        &self,
        id: &str,
        epoch: &str,
        cursor: u64,
        through: u64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Takes or renews the lease of endpoint `id` for `holder` until `until_ms`: true when it
    /// had no holder, its lease ran out before `now_ms`, or `holder` held it already.
    async fn lease_webhook(
        &self,
        id: &str,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .lease_webhooks(&[id.to_owned()], holder, now_ms, until_ms)
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }
    /// [`RegistryStore::lease_webhook`] for several endpoints in one transaction (a node
    /// renews every lease it holds with one commit): one answer per id, in order.
    async fn lease_webhooks(
        &self,
        ids: &[String],
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<bool>, StoreError>;
    /// Records attempts (and skips), in order.
    async fn append_webhook_attempts(&self, attempts: &[WebhookAttempt]) -> Result<(), StoreError>;
    /// An endpoint's attempts, newest first: at most `limit`, with a row id below `before`
    /// when given (paging).
    async fn webhook_attempts(
        &self,
        endpoint_id: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<WebhookAttempt>, StoreError>;
    /// Forgets attempts made before `before_ms` (retention); how many went.
    async fn prune_webhook_attempts(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// Appends rows of the access audit (each to its chain, in order) and, when given, a
    /// signed checkpoint, in one transaction. [`StoreError::Conflict`] when a row's place in
    /// its chain is taken (another writer with the same chain name).
    async fn append_access_audit(
        &self,
        rows: &[AuditRow],
        checkpoint: Option<&AuditCheckpoint>,
    ) -> Result<(), StoreError>;
    /// The newest row of `chain`: its number and hash; `None` when it has none.
    async fn access_audit_head(&self, chain: &str) -> Result<Option<(u64, String)>, StoreError>;
    /// The newest snapshot of each record that matches `filter` (see [`AccessFilter`]),
    /// ordered by `from_ms`, at most `filter.limit`.
    async fn access_audit_latest(&self, filter: &AccessFilter)
    -> Result<Vec<AuditRow>, StoreError>;
    /// Rows of `chain` numbered above `after`, in order, at most `limit` (the verifier's
    /// pages; it starts below 1, so rows numbered 0 or less are seen too).
    async fn access_audit_rows(
        &self,
        chain: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError>;
    /// Where retention may prune `chain` to: the newest checkpoint signed before `before_ms`
    /// of a row below `below_seq`; `None` when there is none.
    async fn access_audit_prune_point(
        &self,
        chain: &str,
        before_ms: i64,
        below_seq: u64,
    ) -> Result<Option<u64>, StoreError>;
    /// Every chain that has rows or checkpoints.
    async fn access_audit_chains(&self) -> Result<Vec<String>, StoreError>;
    /// The signed checkpoints of `chain`, in order.
    async fn access_audit_checkpoints(
        &self,
        chain: &str,
    ) -> Result<Vec<AuditCheckpoint>, StoreError>;
    /// Retention: deletes the rows of `chain` up to `through` and its checkpoints below
    /// `through` (the one at `through` stays: it anchors the first row left); how many rows
    /// went.
    async fn prune_access_audit(&self, chain: &str, through: u64) -> Result<u64, StoreError>;
    /// Stores a new console session.
    async fn insert_console_session(&self, s: &ConsoleSession) -> Result<(), StoreError>;
    /// The console session whose cookie hashes to `id_hash`, if any.
    async fn console_session(&self, id_hash: &str) -> Result<Option<ConsoleSession>, StoreError>;
    /// Moves a session's `last_seen` forward to `at_ms`.
    async fn touch_console_session(&self, id_hash: &str, at_ms: i64) -> Result<(), StoreError>;
    /// Ends a session (sign-out); false when there was none.
    async fn end_console_session(&self, id_hash: &str) -> Result<bool, StoreError>;
    /// Deletes the sessions created before `created_before_ms` or idle since before
    /// `seen_before_ms`; how many went.
    async fn prune_console_sessions(
        &self,
        created_before_ms: i64,
        seen_before_ms: i64,
    ) -> Result<u64, StoreError>;
}

/// A signed-in console session as stored (`console_sessions`).
#[derive(Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// SHA-256 (hex) of the cookie's value.
    pub id_hash: String,
    /// The credential signed in with.
    pub credential_id: String,
    /// The CSRF token of its forms.
    pub csrf: String,
    /// Signed in at, Unix ms.
    pub created_ms: i64,
    /// Last request, Unix ms.
    pub last_seen_ms: i64,
}

impl std::fmt::Debug for ConsoleSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSession")
            .field("credential_id", &self.credential_id)
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

/// One row of the access audit as stored (`access_audit`): a record's JSON text in its
/// node's hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// The chain (the writing node: `local`, or its cluster name).
    pub chain: String,
    /// The row's number in its chain, from 1 (0 stands for a stored number below 1, which no
    /// writer makes).
    pub chain_seq: u64,
    /// `subscription`, `refusal` or `webhook_attempt`.
    pub kind: String,
    /// The record's id (several rows for one subscription: its snapshots).
    pub record_id: String,
    /// The client ID (`unknown` for refusals of unregistered callers).
    pub client_id: String,
    /// The start of what it covers, Unix ms (granted at; the minute; the attempt).
    pub from_ms: i64,
    /// The end of what it covers, Unix ms (ended at, or the snapshot's time while it lives).
    pub to_ms: i64,
    /// The first `seq` it covers (a subscription's `from_seq`; an attempt's `seq`).
    pub first_seq: Option<u64>,
    /// The last `seq` it covers (the last written; an attempt's `seq`).
    pub last_seq: Option<u64>,
    /// True while a subscription's record has not ended.
    pub live: bool,
    /// When the writer chained it, Unix ms (not covered by the hash).
    pub written_ms: i64,
    /// The record (`scopecast_protocol::audit::AccessRecord` as JSON): what the hash covers.
    pub body: String,
    /// The previous row's hash (64 zeros for row 1), hex.
    pub prev_hash: String,
    /// SHA-256 of (`prev_hash`, `chain`, `chain_seq`, `body`), hex.
    pub hash: String,
}

/// A signed checkpoint of a chain (`access_audit_checkpoints`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheckpoint {
    /// The chain.
    pub chain: String,
    /// The row it signs.
    pub chain_seq: u64,
    /// That row's hash, hex.
    pub hash: String,
    /// When it was signed, Unix ms.
    pub at_ms: i64,
    /// The audit key that signed it.
    pub key_id: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

/// What [`RegistryStore::access_audit_latest`] selects, applied to each record's newest
/// snapshot; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessFilter {
    /// Only this chain.
    pub chain: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this client ID.
    pub client_id: Option<String>,
    /// Only records that cover time at or after this (Unix ms; a live record covers now).
    pub from_ms: Option<i64>,
    /// Only records that began at or before this (Unix ms).
    pub to_ms: Option<i64>,
    /// Only records whose `first_seq..=last_seq` holds this `seq`, and live records that
    /// began at or before it (their `last_seq` moves on after their last snapshot).
    pub seq: Option<u64>,
    /// Only live ones.
    pub live_only: bool,
    /// Newest first (by when the record began) instead of oldest first.
    pub newest_first: bool,
    /// At most this many.
    pub limit: usize,
}

/// One cursor write of [`RegistryStore::advance_webhook_cursors`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorWrite {
    /// The endpoint.
    pub endpoint_id: String,
    /// The endpoint's version the writer delivers for.
    pub version: i64,
    /// The event log the `seq` counts in.
    pub epoch: String,
    /// The last `seq` delivered or skipped.
    pub seq: u64,
}

/// A webhook endpoint as stored (WEBHOOKS.md): where a client ID's events are pushed.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredWebhook {
    /// Its id: `ep_` and 32 lowercase hex digits, made by the broker (no `.`).
    pub id: String,
    /// The client ID it belongs to.
    pub client_id: String,
    /// Where events are POSTed (https unless the operator allows http).
    pub url: String,
    /// The topic patterns it receives, each within the client's scope.
    pub topics: Vec<String>,
    /// Its signing secrets and extra headers, sealed with the key-encryption key (opaque
    /// here).
    pub sealed: Vec<u8>,
    /// `active`, `paused` or `disabled`.
    pub state: WebhookState,
    /// Why it is paused or disabled.
    pub state_reason: Option<String>,
    /// The last `seq` delivered or skipped.
    pub cursor: u64,
    /// The event log `cursor` counts in ([`crate::log::EventLog::epoch`]).
    pub cursor_epoch: String,
    /// Events up to this `seq` (of `cursor_epoch`'s log) go out even if they were accepted
    /// while the client ID was inactive: an admin replayed them.
    pub replay_through: u64,
    /// Deliveries in flight at once (1: in `seq` order).
    pub max_in_flight: u32,
    /// Events per request (1: one event per request, no array).
    pub max_batch: u32,
    /// Created, Unix ms.
    pub created_at_ms: i64,
    /// Last changed, Unix ms.
    pub updated_at_ms: i64,
    /// Writes so far, from 1 (compare-and-set).
    pub version: i64,
    /// The node delivering to it now, and until when (Unix ms).
    pub lease: Option<(String, i64)>,
    /// The rest-hook FHIR Subscription it delivers (notification Bundles), if any.
    pub fhir_subscription_id: Option<String>,
}

impl std::fmt::Debug for StoredWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredWebhook")
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .field("url", &self.url)
            .field("topics", &self.topics)
            .field("state", &self.state)
            .field("cursor", &self.cursor)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// An endpoint's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookState {
    /// Deliveries go out (while its client ID is active).
    Active,
    /// Paused by an admin: nothing goes out, the cursor stays.
    Paused,
    /// Disabled: the receiver answered 410, or failed past the retry window.
    Disabled,
}

impl WebhookState {
    /// Its stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookState::Active => "active",
            WebhookState::Paused => "paused",
            WebhookState::Disabled => "disabled",
        }
    }

    /// The state spelled `s`.
    ///
    /// # Errors
    /// An unknown spelling.
    pub fn parse(s: &str) -> Result<WebhookState, StoreError> {
        match s {
            "active" => Ok(WebhookState::Active),
            "paused" => Ok(WebhookState::Paused),
            "disabled" => Ok(WebhookState::Disabled),
            other => Err(StoreError::Database(format!(
                "unknown webhook state {other:?}"
            ))),
        }
    }
}

/// One delivery attempt, or a skip, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAttempt {
    /// Row id (0 before it is stored).
    pub id: i64,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event's `seq`.
    pub seq: u64,
    /// The event's id.
    pub event_id: String,
    /// 1 for the first attempt; 0 for a skip.
    pub attempt: u32,
    /// When, Unix ms.
    pub at_ms: i64,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// What went wrong (connect, timeout, refused address), when it did.
    pub error: Option<String>,
    /// Request to response, ms, when a request was sent.
    pub latency_ms: Option<i64>,
    /// `delivered`, `failed`, `disabled`, `skipped_client_inactive`, `skipped_scope`.
    pub outcome: String,
}

/// A FHIR Subscription as stored (FHIR.md): an R4B topic-based Subscription owned by the client
/// ID that created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFhirSubscription {
    /// Its id: 32 lowercase hex digits, made by the broker.
    pub id: String,
    /// The client ID that created it (the only one that may read, change or bind it).
    pub client_id: String,
    /// The Subscription resource as the client sent it (JSON text); its `id`, `status` and
    /// `error` are the server's.
    pub resource: String,
    /// `requested`, `active`, `error` or `off`.
    pub status: String,
    /// Why it is `error` or `off`.
    pub error: Option<String>,
    /// The event log its numbers count in ([`crate::log::EventLog::epoch`]).
    pub epoch: String,
    /// The last `seq` before it began: event number 1 is the first matching event after it.
    pub start_seq: u64,
    /// Checkpoint: `count` matching events have `seq <= count_seq`.
    pub count: u64,
    /// See `count`.
    pub count_seq: u64,
    /// Created, Unix ms.
    pub created_at_ms: i64,
    /// Last changed, Unix ms.
    pub updated_at_ms: i64,
    /// Writes so far, from 1 (compare-and-set).
    pub version: i64,
}

/// One checkpoint of [`RegistryStore::checkpoint_fhir_subscriptions`]: `count` matching
/// events up to `seq` of log `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirCheckpoint {
    /// The Subscription.
    pub id: String,
    /// The event log.
    pub epoch: String,
    /// Matching events so far.
    pub count: u64,
    /// Up to this `seq`.
    pub seq: u64,
}
