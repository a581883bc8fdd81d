//! The application registry (DESIGN section 2): applications, their two client IDs, credentials
//! and activations, with an audit trail.
//!
//! Reads on the hot path go to an in-memory [`Snapshot`] (never the database). Every change is
//! written to the [`RegistryStore`] with a row of its change feed in the same transaction; the
//! snapshot follows the feed: it keeps a cursor, applies the changes after it in id order
//! (reloading the rows they name) and broadcasts a [`RegistryChange`] for each, so live
//! sessions can be cut or narrowed. The writer applies the feed before it returns, and a
//! follower task (woken by the store, and polling) applies what others wrote: another node
//! sharing the database, or another process on the same file.
//!
//! - `store`: the storage trait and its change feed; `sqlite`: its SQLite implementation
//!   (sqlx, portable SQL); `conformance` (tests): the checks every store must pass.
//! - `validate`: input rules for names, ids and uploaded keys.
//! - `snapshot`: the in-memory view: applications, client entries, the [`Snapshot`].
//! - `follow`: applying the change feed to the snapshot by cursor, and the follower task.
//! - [`credential`]: the one credential store (admin API, metrics, console, developer API),
//!   and the registry's credential operations.

mod access;
#[cfg(test)]
mod conformance;
pub mod credential;
mod fhir;
mod follow;
pub mod migrate;
mod postgres;
mod record;
mod snapshot;
mod sql;
mod sqlite;
mod store;
pub mod validate;
mod webhooks;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::StreamExt;
use scopecast_protocol::ScopeSet;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;

use credential::{Credential, CredentialSet};
pub use postgres::PgStore;
pub use record::ImportOutcome;
pub use snapshot::{
    Application, ClientEntry, ClientKeys, ClientKeysSpec, Snapshot, StoredApplication,
    StoredClient, effective_scope,
};
pub use sqlite::SqliteStore;
pub use store::{
    AccessFilter, ApplicationPatch, AuditCheckpoint, AuditRow, Change, ChangeKind, ConsoleSession,
    CursorWrite, Deletion, FhirCheckpoint, NewApplication, RegistryStore, StoreError,
    StoredFhirSubscription, StoredWebhook, Wakeups, WebhookAttempt, WebhookState,
};
use validate::{ClientKey, InvalidInput, invalid};

use crate::auth::secret;
use crate::config::EnvironmentKind;

/// A change that live sessions may need to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryChange {
    /// A client ID was activated.
    ClientActivated {
        /// The client.
        client_id: String,
    },
    /// A client ID was deactivated: its sessions must close (4003).
    ClientDeactivated {
        /// The client.
        client_id: String,
    },
    /// An application's scope ceiling changed: its sessions must re-check subscriptions.
    CeilingChanged {
        /// The application.
        application_id: String,
    },
    /// A client's credentials changed (secret or keys).
    CredentialsChanged {
        /// The client.
        client_id: String,
    },
    /// An application was created or its descriptive fields changed.
    ApplicationChanged {
        /// The application.
        application_id: String,
    },
    /// An application and its client IDs were deleted. Only an application whose client IDs
    /// are both inactive can be, so none of them has a live session.
    ApplicationDeleted {
        /// The application.
        application_id: String,
        /// Its client IDs (production first).
        client_ids: Vec<String>,
    },
    /// A webhook endpoint was created, changed or deleted, by this node or another: whoever
    /// delivers to it reloads it.
    WebhookChanged {
        /// The endpoint.
        endpoint_id: String,
    },
    /// A FHIR Subscription of `client_id` was created, changed or deleted, by this node or
    /// another: the FHIR front end reloads them.
    FhirSubscriptionChanged {
        /// The owner.
        client_id: String,
    },
    /// A shared state blob (e.g. `signing_keys`) was written, by this node or another:
    /// whoever holds it reloads it ([`Registry::load_state`]).
    StateChanged {
        /// The blob's name.
        name: String,
    },
}

/// One audit trail entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// UUID v7 (time-ordered).
    pub id: String,
    /// When, Unix ms.
    pub at_ms: i64,
    /// Who (the admin's stated name, or `admin`).
    pub actor: String,
    /// What, e.g. `application.create`, `client.deactivate`.
    pub action: String,
    /// The application concerned.
    pub application_id: Option<String>,
    /// The client concerned.
    pub client_id: Option<String>,
    /// The environment (`<kind>/<name>`) of the deployment that wrote it; `None` for entries
    /// written before environments were recorded.
    pub environment: Option<String>,
    /// Details as JSON; never a secret.
    pub detail: Value,
}

/// Which audit entries to read.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this application's entries.
    pub application_id: Option<String>,
    /// Only this client's entries.
    pub client_id: Option<String>,
    /// At most this many, newest first (1 to 1,000; default 100).
    pub limit: u32,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Bad input, naming the field.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// No such application or client.
    #[error("{what} {id} not found")]
    NotFound {
        /// `application` or `client`.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// A uniqueness rule would break.
    #[error("{0}")]
    Conflict(String),
    /// Storage failed.
    #[error(transparent)]
    Store(StoreError),
    /// Randomness or hashing failed.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => RegistryError::Conflict(m),
            other => RegistryError::Store(other),
        }
    }
}

/// Who changes an application record: an admin (admin API, CLI `app`), or a developer
/// (developer API, CLI `dev app`) who may change only the applications they registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Editor {
    /// An admin: changes are frozen versions at once.
    Admin,
    /// The developer account (a `developer` credential's name): changes are drafts until
    /// marked ready.
    Developer(String),
}

impl Editor {
    /// The developer account, if a developer.
    pub fn developer(&self) -> Option<&str> {
        match self {
            Editor::Admin => None,
            Editor::Developer(name) => Some(name),
        }
    }

    /// True for an admin.
    pub fn is_admin(&self) -> bool {
        matches!(self, Editor::Admin)
    }
}

/// What `create_application` needs.
#[derive(Debug, Clone)]
pub struct CreateApplication {
    /// Display name, unique.
    pub name: String,
    /// Vendor.
    pub vendor: String,
    /// Free text.
    pub description: String,
    /// Scope ceiling.
    pub scope: String,
}

/// A new client's one-time view: its id and secret in clear.
#[derive(Debug, Clone)]
pub struct IssuedSecret {
    /// The client.
    pub client_id: String,
    /// The kind.
    pub kind: EnvironmentKind,
    /// The secret: shown once, never stored in clear.
    pub client_secret: String,
}

/// What [`Registry::delete_application`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedApplication {
    /// Its id.
    pub id: String,
    /// Its name (free for another application from now on).
    pub name: String,
    /// Its client IDs (production first); they no longer authenticate.
    pub client_ids: Vec<String>,
}

/// Handle to the registry: cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    store: Box<dyn RegistryStore>,
    snapshot: ArcSwap<Snapshot>,
    /// The credential store's valid and revoked credentials, and the configured one.
    credentials: ArcSwap<CredentialSet>,
    /// The `admin_token` setting as a credential (not in the store).
    config_credential: ArcSwapOption<Credential>,
    changes: broadcast::Sender<RegistryChange>,
    /// Serialises writes, so that a writer that checked the snapshot (e.g. the last admin
    /// credential) writes before anyone else changes it. Held across the store's await on
    /// purpose: writes are admin actions, rare and short.
    writes: Mutex<()>,
    /// The id of the last change of the store's feed applied to `snapshot` and `credentials`.
    /// Whoever applies the feed (a writer catching up, the follower task) holds it across the
    /// store's awaits on purpose: changes are applied by one at a time, in id order, once.
    cursor: Mutex<u64>,
    /// Stops the follower task; cancelled when the last handle goes (see `Drop`) or by
    /// [`Registry::stop_following`].
    follower: CancellationToken,
    /// The deployment's environment, stamped on audit entries.
    environment: ArcSwapOption<String>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.follower.cancel();
    }
}

/// How many changes the feed is read in at a time.
const FEED_BATCH: usize = 256;

/// How often the follower reads the feed when nothing wakes it, by default.
pub const DEFAULT_FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Registry {
    /// An audit entry written now in this deployment's environment.
    fn audit_entry(
        &self,
        actor: &str,
        action: &str,
        application_id: Option<&str>,
        client_id: Option<&str>,
        detail: Value,
    ) -> AuditEntry {
        AuditEntry {
            id: uuid::Uuid::now_v7().to_string(),
            at_ms: now_ms(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            application_id: application_id.map(str::to_owned),
            client_id: client_id.map(str::to_owned),
            environment: self.inner.environment.load_full().map(|e| e.to_string()),
            detail,
        }
    }

    /// Names the environment (`<kind>/<name>`) every audit entry written from now on is
    /// stamped with (the deployment's, set once at start).
    pub fn set_environment(&self, environment: &str) {
        self.inner
            .environment
            .store(Some(Arc::new(environment.to_owned())));
    }
}

async fn hash(secret: String) -> Result<String, RegistryError> {
    tokio::task::spawn_blocking(move || secret::hash_secret(&secret))
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))?
        .map_err(|e| RegistryError::Internal(e.to_string()))
}

/// Validates a scope ceiling as an admin sets it: every token of a known family
/// ([`ScopeSet::parse_ceiling`]), at least one. Returns its canonical text.
fn scope_ceiling(scope: &str) -> Result<String, InvalidInput> {
    let set = ScopeSet::parse_ceiling(scope.trim()).map_err(|e| invalid("scope", e.to_string()))?;
    if set.is_empty() {
        return Err(invalid(
            "scope",
            "must grant at least one scope, e.g. subscribe:adt.>",
        ));
    }
    Ok(set.to_string())
}

impl Registry {
    /// Opens the registry over `store`, loads the snapshot and starts following the store's
    /// change feed, polling every [`DEFAULT_FOLLOW_INTERVAL`]. See [`Registry::open_following`].
    ///
    /// # Errors
    /// [`RegistryError::Store`] when the store cannot be read.
    pub async fn open(store: impl RegistryStore) -> Result<Registry, RegistryError> {
        Registry::open_following(store, DEFAULT_FOLLOW_INTERVAL).await
    }

    /// Opens the registry over `store` and loads the snapshot, then spawns the follower task
    /// (on the current Tokio runtime): it applies the store's changes after the loaded state
    /// whenever [`RegistryStore::wakeups`] fires, and every `poll` in any case (so a lost
    /// wake-up, or a write by another process or node, is applied within `poll`). The task
    /// stops when the last handle is dropped or at [`Registry::stop_following`].
    ///
    /// # Errors
    /// [`RegistryError::Store`] when the store cannot be read.
    pub async fn open_following(
        store: impl RegistryStore,
        poll: Duration,
    ) -> Result<Registry, RegistryError> {
        // The cursor first: a change that lands between it and the loads is applied again
        // later, which is harmless; the other way round it could be missed.
        let cursor = store.latest_change().await?;
        let apps = store.load().await?;
        let credentials = store.load_credentials().await?;
        let wakeups = store.wakeups();
        let (changes, _) = broadcast::channel(1024);
        let registry = Registry {
            inner: Arc::new(Inner {
                store: Box::new(store),
                snapshot: ArcSwap::from_pointee(Snapshot::build(apps)),
                credentials: ArcSwap::from_pointee(CredentialSet::new(credentials)),
                config_credential: ArcSwapOption::empty(),
                changes,
                writes: Mutex::new(()),
                cursor: Mutex::new(cursor),
                follower: CancellationToken::new(),
                environment: ArcSwapOption::empty(),
            }),
        };
        tokio::spawn(follow::follow(
            Arc::downgrade(&registry.inner),
            registry.inner.follower.clone(),
            wakeups,
            poll,
        ));
        Ok(registry)
    }

    /// Stops the follower task: from now on only this handle's own writes update the
    /// snapshot. For shutdown; dropping the last handle does the same.
    pub fn stop_following(&self) {
        self.inner.follower.cancel();
    }

    /// The id of the last change of the store's feed this registry has applied.
    pub async fn applied_change(&self) -> u64 {
        *self.inner.cursor.lock().await
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.load_full()
    }

    /// A client by `client_id`, from the snapshot (no database access).
    pub fn client(&self, client_id: &str) -> Option<Arc<ClientEntry>> {
        self.inner.snapshot.load().client(client_id).cloned()
    }

    /// A receiver of every change from now on.
    pub fn changes(&self) -> broadcast::Receiver<RegistryChange> {
        self.inner.changes.subscribe()
    }

    /// Applies every change of the feed not applied yet: after a write, so that the writer
    /// returns with its change in the snapshot (and its [`RegistryChange`] sent).
    async fn catch_up(&self) -> Result<(), RegistryError> {
        self.inner.catch_up().await
    }

    /// Creates an application with a production and a non-production client ID, each with a
    /// fresh secret (returned once, stored as an argon2id hash). Both start inactive.
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] naming the field, [`RegistryError::Conflict`] when the name
    /// is taken, or a storage failure.
    pub async fn create_application(
        &self,
        req: CreateApplication,
        actor: &str,
    ) -> Result<(Arc<Application>, Vec<IssuedSecret>), RegistryError> {
        self.create_application_by(req, actor, &Editor::Admin).await
    }

    /// As [`Registry::create_application`], by `editor`: an admin's application is frozen at
    /// once (version 1 is ready); a developer's is owned by the developer and starts as a
    /// draft of version 1 until marked ready ([`Registry::ready`]).
    ///
    /// # Errors
    /// As [`Registry::create_application`].
    pub async fn create_application_by(
        &self,
        req: CreateApplication,
        actor: &str,
        editor: &Editor,
    ) -> Result<(Arc<Application>, Vec<IssuedSecret>), RegistryError> {
        let name = validate::name("name", &req.name)?;
        let vendor = validate::name("vendor", &req.vendor)?;
        let description = validate::description(&req.description)?;
        let scope = scope_ceiling(&req.scope)?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let mut clients = Vec::new();
        let mut secrets = Vec::new();
        for kind in [EnvironmentKind::Production, EnvironmentKind::NonProduction] {
            let client_id = uuid::Uuid::new_v4().to_string();
            // A developer's application gets no secret here: nobody would ever see it. The
            // first activation in each environment (the catalog's too) makes one and shows it
            // to that environment's admin.
            let secret_hash = if editor.is_admin() {
                let client_secret =
                    secret::new_secret().map_err(|e| RegistryError::Internal(e.to_string()))?;
                let secret_hash = hash(client_secret.clone()).await?;
                secrets.push(IssuedSecret {
                    client_id: client_id.clone(),
                    kind,
                    client_secret,
                });
                Some(secret_hash)
            } else {
                None
            };
            clients.push(StoredClient {
                client_id: client_id.clone(),
                kind,
                active: false,
                secret_hash,
                keys: ClientKeysSpec::None,
                client_id_header: false,
                granted_scope: None,
                created_at_ms: now,
                updated_at_ms: now,
            });
        }
        let app = StoredApplication {
            id: id.clone(),
            name: name.clone(),
            vendor: vendor.clone(),
            description,
            scope: scope.clone(),
            created_at_ms: now,
            updated_at_ms: now,
            version: 1,
            origin: None,
            record_jws: None,
            retired_at_ms: None,
            owner: editor.developer().map(str::to_owned),
            frozen: editor.is_admin(),
            frozen_record: None,
            clients,
        };
        let mut app = app;
        if app.frozen {
            app.frozen_record = Some(record::frozen_json(&app)?);
        }
        let entry = self.audit_entry(
            actor,
            "application.create",
            Some(&id),
            None,
            serde_json::json!({"name": name, "vendor": vendor, "scope": scope,
                "client_ids": secrets.iter().map(|s| &s.client_id).collect::<Vec<_>>()}),
        );
        let _guard = self.inner.writes.lock().await;
        self.inner
            .store
            .insert_application(&NewApplication { application: app }, &entry)
            .await?;
        self.catch_up().await?;
        let app = self
            .snapshot()
            .application(&id)
            .cloned()
            .ok_or_else(|| RegistryError::Internal("created application vanished".into()))?;
        Ok((app, secrets))
    }

    /// Updates an application's name, vendor, description or scope ceiling.
    ///
    /// A narrower ceiling takes effect at once: a [`RegistryChange::CeilingChanged`] tells live
    /// sessions to end the subscriptions it no longer covers.
    ///
    /// # Errors
    /// As [`Registry::create_application`], or [`RegistryError::NotFound`].
    pub async fn update_application(
        &self,
        id: &str,
        patch: ApplicationPatch,
        actor: &str,
    ) -> Result<Arc<Application>, RegistryError> {
        self.update_application_by(id, patch, actor, &Editor::Admin)
            .await
    }

    /// As [`Registry::update_application`], by `editor`. A change to a frozen version makes
    /// the next version; an admin's change is frozen at once, a developer's stays a draft
    /// until [`Registry::ready`]. A developer may change only their own applications (any
    /// other is [`RegistryError::NotFound`], so that others' applications stay unseen), and a
    /// developer's scope change waits for each environment's approval, the catalog's too.
    ///
    /// # Errors
    /// As [`Registry::update_application`].
    pub async fn update_application_by(
        &self,
        id: &str,
        patch: ApplicationPatch,
        actor: &str,
        editor: &Editor,
    ) -> Result<Arc<Application>, RegistryError> {
        let id = validate::uuid_id("id", id)?;
        // Held from the read of the record to its write: two changes never both make the
        // same next version.
        let _guard = self.inner.writes.lock().await;
        let held = self.editable(&id, editor)?;
        self.changeable(&held)?;
        let patch = ApplicationPatch {
            name: patch.name.map(|v| validate::name("name", &v)).transpose()?,
            vendor: patch
                .vendor
                .map(|v| validate::name("vendor", &v))
                .transpose()?,
            description: patch
                .description
                .map(|v| validate::description(&v))
                .transpose()?,
            scope: patch.scope.map(|v| scope_ceiling(&v)).transpose()?,
            ..ApplicationPatch::default()
        };
        let mut detail = serde_json::Map::new();
        for (k, v) in [
            ("name", &patch.name),
            ("vendor", &patch.vendor),
            ("description", &patch.description),
            ("scope", &patch.scope),
        ] {
            if let Some(v) = v {
                detail.insert(k.to_owned(), Value::String(v.clone()));
            }
        }
        if detail.is_empty() {
            return Err(invalid(
                "body",
                "give at least one of name, vendor, description, scope",
            )
            .into());
        }
        let mut patch = patch;
        let mut next = held.record.clone();
        if let Some(v) = &patch.name {
            next.name = v.clone();
        }
        if let Some(v) = &patch.vendor {
            next.vendor = v.clone();
        }
        if let Some(v) = &patch.description {
            next.description = v.clone();
        }
        if let Some(v) = &patch.scope {
            next.scope = v.clone();
        }
        self.next_version(&mut next, editor)?;
        patch.version = Some(next.version);
        patch.frozen = Some(next.frozen);
        patch.frozen_record = next.frozen_record.clone();
        detail.insert("version".to_owned(), Value::from(next.version));
        detail.insert("ready".to_owned(), Value::from(next.frozen));
        let entry = self.audit_entry(
            actor,
            "application.update",
            Some(&id),
            None,
            Value::Object(detail),
        );
        if !self
            .inner
            .store
            .update_application(&id, &patch, now_ms(), &entry)
            .await?
        {
            return Err(RegistryError::NotFound {
                what: "application",
                id,
            });
        }
        self.catch_up().await?;
        if let Some(scope) = &patch.scope
            && editor.is_admin()
        {
            self.regrant_after_update(&id, scope, actor).await?;
        }
        self.snapshot()
            .application(&id)
            .cloned()
            .ok_or(RegistryError::NotFound {
                what: "application",
                id,
            })
    }

    /// Deletes an application, its two client IDs and their credentials (secret hash, keys)
    /// in one transaction with an `application.delete` audit entry naming it, its client IDs
    /// and `reason`. The audit trail and the activation history stay. Refused while either
    /// client ID is active: a deletion never cuts a live session.
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] for a malformed id or reason, [`RegistryError::NotFound`]
    /// (also when it was deleted before), [`RegistryError::Conflict`] naming the active
    /// client IDs, or a storage failure.
    pub async fn delete_application(
        &self,
        id: &str,
        actor: &str,
        reason: &str,
    ) -> Result<DeletedApplication, RegistryError> {
        let id = validate::uuid_id("id", id)?;
        let reason = validate::note("reason", reason)?;
        let not_found = || RegistryError::NotFound {
            what: "application",
            id: id.clone(),
        };
        // Under the write lock the snapshot is the store's current state: no activation can
        // slip in between the check below and the deletion.
        let _guard = self.inner.writes.lock().await;
        let app = self
            .snapshot()
            .application(&id)
            .cloned()
            .ok_or_else(not_found)?;
        let deleted = DeletedApplication {
            id: id.clone(),
            name: app.record.name.clone(),
            client_ids: app
                .record
                .clients
                .iter()
                .map(|c| c.client_id.clone())
                .collect(),
        };
        let entry = self.audit_entry(
            actor,
            "application.delete",
            Some(&id),
            None,
            serde_json::json!({"name": deleted.name, "client_ids": deleted.client_ids, "reason": reason}),
        );
        match self.inner.store.delete_application(&id, &entry).await? {
            Deletion::Deleted => {}
            Deletion::NotFound => return Err(not_found()),
            Deletion::Active(active) => {
                let (noun, verb, them) = if active.len() == 1 {
                    ("client ID", "is", "it")
                } else {
                    ("client IDs", "are", "them")
                };
                let list = active.join(", ");
                return Err(RegistryError::Conflict(format!(
                    "application {:?} cannot be deleted while its {noun} {list} {verb} active: deactivate {them} first (scopecast app deactivate CLIENT_ID)",
                    deleted.name
                )));
            }
        }
        self.catch_up().await?;
        Ok(deleted)
    }

    /// Writes a consistent copy of the registry (applications, client IDs, credentials,
    /// activations, audit trail) to the file `path` (which must not exist yet, or be empty)
    /// while every registry change is held off, then runs `at_the_same_instant` before letting
    /// changes go on: what it captures (the event log's read transaction, for a backup) and
    /// the copy describe the same instant. Keep `at_the_same_instant` short: admin changes
    /// wait for it.
    ///
    /// # Errors
    /// A storage failure; `at_the_same_instant` then does not run.
    pub async fn copy_to<T>(
        &self,
        path: &std::path::Path,
        at_the_same_instant: impl FnOnce() -> T,
    ) -> Result<T, RegistryError> {
        // Held across the copy on purpose: no registry change may land in between.
        let _guard = self.inner.writes.lock().await;
        self.inner.store.copy_to(path).await?;
        Ok(at_the_same_instant())
    }

    fn existing_client(&self, client_id: &str) -> Result<Arc<ClientEntry>, RegistryError> {
        let client_id = validate::uuid_id("client_id", client_id)?;
        self.client(&client_id).ok_or(RegistryError::NotFound {
            what: "client",
            id: client_id,
        })
    }

    /// Gives a client a new secret (returned once); the old one stops working at once.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`], or a storage failure.
    pub async fn rotate_secret(
        &self,
        client_id: &str,
        actor: &str,
    ) -> Result<IssuedSecret, RegistryError> {
        let client = self.existing_client(client_id)?;
        let client_secret =
            secret::new_secret().map_err(|e| RegistryError::Internal(e.to_string()))?;
        let secret_hash = hash(client_secret.clone()).await?;
        let entry = self.audit_entry(
            actor,
            "client.rotate_secret",
            Some(&client.application_id),
            Some(&client.client_id),
            serde_json::json!({}),
        );
        let _guard = self.inner.writes.lock().await;
        self.inner
            .store
            .set_secret_hash(&client.client_id, &secret_hash, now_ms(), &entry)
            .await?;
        self.catch_up().await?;
        Ok(IssuedSecret {
            client_id: client.client_id.clone(),
            kind: client.kind,
            client_secret,
        })
    }

    /// Sets a client's public keys for `private_key_jwt`: an inline JWK Set (validated: see
    /// [`validate::jwk_set`]) or a JWK Set URL, or none.
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] naming the key member at fault, [`RegistryError::NotFound`],
    /// or a storage failure.
    pub async fn set_keys(
        &self,
        client_id: &str,
        keys: ClientKeysSpec,
        actor: &str,
    ) -> Result<(), RegistryError> {
        self.set_keys_by(client_id, keys, actor, &Editor::Admin)
            .await
    }

    /// As [`Registry::set_keys`], by `editor` (a developer: only on their own application's
    /// client IDs). The keys are part of the record: on an application registered here the
    /// change makes the next version, as [`Registry::update_application_by`] does.
    ///
    /// # Errors
    /// As [`Registry::set_keys`].
    pub async fn set_keys_by(
        &self,
        client_id: &str,
        keys: ClientKeysSpec,
        actor: &str,
        editor: &Editor,
    ) -> Result<(), RegistryError> {
        let client = self.existing_client(client_id)?;
        let _guard = self.inner.writes.lock().await;
        let held = self.editable(&client.application_id, editor)?;
        self.changeable(&held)?;
        let (keys, detail) = match keys {
            ClientKeysSpec::None => (ClientKeysSpec::None, serde_json::json!({"keys": "none"})),
            ClientKeysSpec::Jwks(v) => {
                let parsed = validate::jwk_set(&v)?;
                let kids: Vec<_> = parsed.iter().map(|k| k.kid.clone()).collect();
                (
                    ClientKeysSpec::Jwks(v),
                    serde_json::json!({"jwks_kids": kids}),
                )
            }
            ClientKeysSpec::JwksUri(u) => {
                // A developer's URL goes into a record that other environments fetch.
                let u = if editor.is_admin() && held.record.owner.is_none() {
                    validate::jwks_uri(&u)?
                } else {
                    validate::public_jwks_uri(&u)?
                };
                (
                    ClientKeysSpec::JwksUri(u.clone()),
                    serde_json::json!({"jwks_uri": u}),
                )
            }
        };
        let entry = self.audit_entry(
            actor,
            "client.set_keys",
            Some(&client.application_id),
            Some(&client.client_id),
            detail,
        );
        self.inner
            .store
            .set_keys(&client.client_id, &keys, now_ms(), &entry)
            .await?;
        self.catch_up().await?;
        if held.record.origin.is_none() {
            self.record_changed(&held.record.id, actor, editor, "client.set_keys")
                .await?;
        }
        Ok(())
    }

    /// Activates or deactivates a client ID, recording who and why. Deactivation is broadcast
    /// at once so live sessions close (4003).
    ///
    /// # Errors
    /// [`RegistryError::Invalid`], [`RegistryError::NotFound`], or a storage failure.
    pub async fn set_active(
        &self,
        client_id: &str,
        active: bool,
        actor: &str,
        reason: &str,
    ) -> Result<Arc<ClientEntry>, RegistryError> {
        let client = self.existing_client(client_id)?;
        let reason = validate::note("reason", reason)?;
        if active
            && let Some(app) = self.snapshot().application(&client.application_id)
            && app.record.retired_at_ms.is_some()
        {
            return Err(RegistryError::Conflict(format!(
                "application {} is retired: its client IDs cannot be activated",
                app.record.name
            )));
        }
        let action = if active {
            "client.activate"
        } else {
            "client.deactivate"
        };
        let entry = self.audit_entry(
            actor,
            action,
            Some(&client.application_id),
            Some(&client.client_id),
            serde_json::json!({"reason": reason}),
        );
        let _guard = self.inner.writes.lock().await;
        self.inner
            .store
            .set_active(&client.client_id, active, actor, &reason, now_ms(), &entry)
            .await?;
        self.catch_up().await?;
        self.existing_client(&client.client_id)
    }

    /// The shared state blob `name` and its version (see [`RegistryStore::load_state`]).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn load_state(&self, name: &str) -> Result<Option<(Vec<u8>, i64)>, RegistryError> {
        Ok(self.inner.store.load_state(name).await?)
    }

    /// Writes the shared state blob `name` over version `expected` (0: the first write), with
    /// an audit entry by `actor` for `action` (`detail` must hold no secret); false when
    /// another writer came first (read it again and retry). Every node, this one first,
    /// then gets [`RegistryChange::StateChanged`].
    ///
    /// # Errors
    /// A storage failure.
    pub async fn put_state(
        &self,
        name: &str,
        value: &[u8],
        expected: i64,
        actor: &str,
        action: &str,
        detail: Value,
    ) -> Result<bool, RegistryError> {
        let entry = self.audit_entry(actor, action, None, None, detail);
        let _guard = self.inner.writes.lock().await;
        let written = self
            .inner
            .store
            .put_state(name, value, expected, &entry)
            .await?;
        self.catch_up().await?;
        Ok(written)
    }

    /// Remembers a client assertion's key (hex SHA-256 of its client ID and `jti`) until `until` (Unix s), for the
    /// whole deployment and across restarts (RFC 7523 section 3 item 7: a `jti` is used once);
    /// false when it was already used and has not expired.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn remember_jti(
        &self,
        key: &str,
        until: i64,
        now: i64,
    ) -> Result<bool, RegistryError> {
        Ok(self.inner.store.remember_jti(key, until, now).await?)
    }

    /// Records a change made outside the registry (such as a signing key rotation).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn record(
        &self,
        actor: &str,
        action: &str,
        detail: Value,
    ) -> Result<(), RegistryError> {
        let entry = self.audit_entry(actor, action, None, None, detail);
        // Under the write lock like every change, so a backup's copy never splits it.
        let _guard = self.inner.writes.lock().await;
        Ok(self.inner.store.append_audit(&entry).await?)
    }

    /// Allows or forbids identifying a client by the `Scopecast-Client-Id` header on the
    /// HTTP APIs (effective only where the broker's `http.client_id_header` is on).
    ///
    /// # Errors
    /// [`RegistryError::NotFound`], or a storage failure.
    pub async fn set_client_id_header(
        &self,
        client_id: &str,
        enabled: bool,
        actor: &str,
    ) -> Result<(), RegistryError> {
        let client = self.existing_client(client_id)?;
        let entry = self.audit_entry(
            actor,
            "client.set_client_id_header",
            Some(&client.application_id),
            Some(&client.client_id),
            serde_json::json!({"enabled": enabled}),
        );
        let _guard = self.inner.writes.lock().await;
        self.inner
            .store
            .set_client_id_header(&client.client_id, enabled, now_ms(), &entry)
            .await?;
        self.catch_up().await
    }

    /// Reads the audit trail, newest first.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn audit(&self, mut query: AuditQuery) -> Result<Vec<AuditEntry>, RegistryError> {
        if query.limit == 0 {
            query.limit = 100;
        }
        query.limit = query.limit.min(1000);
        Ok(self.inner.store.audit(&query).await?)
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("applications", &self.snapshot().applications().len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scopecast_protocol::admin::Role;

    async fn sqlite(path: &std::path::Path) -> SqliteStore {
        SqliteStore::open(path).await.unwrap()
    }

    fn app(name: &str) -> CreateApplication {
        CreateApplication {
            name: name.to_owned(),
            vendor: "Vendor".to_owned(),
            description: String::new(),
            scope: "subscribe:adt.>".to_owned(),
        }
    }

    async fn next(rx: &mut broadcast::Receiver<RegistryChange>) -> RegistryChange {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a registry change within 5 s")
            .unwrap()
    }

    /// Waits (at most 5 s) until `done` holds for `registry`.
    async fn until(registry: &Registry, done: impl Fn(&Registry) -> bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !done(registry) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("applied within 5 s");
    }

    #[tokio::test]
    async fn a_writer_returns_with_its_change_applied_and_broadcast_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(sqlite(&dir.path().join("r.sqlite")).await)
            .await
            .unwrap();
        let mut rx = registry.changes();
        let (a, _) = registry.create_application(app("One"), "t").await.unwrap();
        let id = a.record.id.clone();
        assert_eq!(
            next(&mut rx).await,
            RegistryChange::ApplicationChanged {
                application_id: id.clone()
            }
        );
        let patch = ApplicationPatch {
            scope: Some("subscribe:lab.>".to_owned()),
            ..ApplicationPatch::default()
        };
        let updated = registry.update_application(&id, patch, "t").await.unwrap();
        assert_eq!(updated.record.scope, "subscribe:lab.>");
        assert_eq!(
            next(&mut rx).await,
            RegistryChange::ApplicationChanged {
                application_id: id.clone()
            }
        );
        assert_eq!(
            next(&mut rx).await,
            RegistryChange::CeilingChanged {
                application_id: id.clone()
            }
        );
        let c = a.record.clients[1].client_id.clone();
        assert!(
            registry
                .set_active(&c, true, "t", "pilot")
                .await
                .unwrap()
                .active
        );
        assert_eq!(
            next(&mut rx).await,
            RegistryChange::ClientActivated {
                client_id: c.clone()
            }
        );
        registry.set_active(&c, false, "t", "done").await.unwrap();
        assert_eq!(
            next(&mut rx).await,
            RegistryChange::ClientDeactivated {
                client_id: c.clone()
            }
        );
        registry.rotate_secret(&c, "t").await.unwrap();
        assert_eq!(
            next(&mut rx).await,
            RegistryChange::CredentialsChanged {
                client_id: c.clone()
            }
        );
        let deleted = registry.delete_application(&id, "t", "gone").await.unwrap();
        assert_eq!(
            next(&mut rx).await,
            RegistryChange::ApplicationDeleted {
                application_id: id.clone(),
                client_ids: deleted.client_ids.clone(),
            }
        );
        assert_eq!(deleted.client_ids.len(), 2);
        assert!(registry.snapshot().application(&id).is_none());
        assert!(registry.client(&c).is_none());
        assert_eq!(registry.applied_change().await, 6);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err(),
            "each change is applied once: the follower, woken too, finds nothing new"
        );
    }

    #[tokio::test]
    async fn a_change_made_through_one_node_is_applied_by_the_other_nodes_follower() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        // Two registries over one file, each with its own store (its own pool and in-process
        // signal): as two nodes sharing a database, they learn of each other by polling.
        let poll = Duration::from_millis(50);
        let one = Registry::open_following(sqlite(&path).await, poll)
            .await
            .unwrap();
        let two = Registry::open_following(sqlite(&path).await, poll)
            .await
            .unwrap();
        let mut seen_by_two = two.changes();
        let (a, _) = one.create_application(app("Shared"), "t").await.unwrap();
        let c = a.record.clients[0].client_id.clone();
        let started = tokio::time::Instant::now();
        until(&two, |r| r.client(&c).is_some()).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "within a few polls: {:?}",
            started.elapsed()
        );
        one.set_active(&c, true, "t", "pilot").await.unwrap();
        one.set_active(&c, false, "t", "done").await.unwrap();
        // The other node's sessions hear of it, in order, though the client ends inactive.
        let mut got = Vec::new();
        while got.len() < 3 {
            got.push(next(&mut seen_by_two).await);
        }
        assert_eq!(
            got,
            [
                RegistryChange::ApplicationChanged {
                    application_id: a.record.id.clone()
                },
                RegistryChange::ClientActivated {
                    client_id: c.clone()
                },
                RegistryChange::ClientDeactivated {
                    client_id: c.clone()
                },
            ]
        );
        assert!(!two.client(&c).unwrap().active);
        // Credentials follow too: one made through `two` authenticates on `one`.
        let (cred, token) = two
            .create_credential("ops", Role::Viewer, "t")
            .await
            .unwrap();
        until(&one, |r| r.authenticate(&token).is_some()).await;
        two.bootstrap_admin("scc_admin").await.unwrap();
        one.revoke_credential(&cred.id, "t").await.unwrap();
        until(&two, |r| r.authenticate(&token).is_none()).await;
        assert_eq!(one.applied_change().await, two.applied_change().await);
    }

    #[tokio::test]
    async fn a_follower_that_missed_its_wakeup_catches_up_by_polling() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        let registry = Registry::open_following(sqlite(&path).await, Duration::from_millis(50))
            .await
            .unwrap();
        // Written behind the registry's back, through a store whose signal it never hears.
        let other = Registry::open_following(sqlite(&path).await, Duration::from_secs(3600))
            .await
            .unwrap();
        other.stop_following();
        let mut ids = Vec::new();
        for n in 0..5 {
            let (a, _) = other
                .create_application(app(&format!("Quiet {n}")), "t")
                .await
                .unwrap();
            ids.push(a.record.id.clone());
        }
        until(&registry, |r| {
            ids.iter().all(|id| r.snapshot().application(id).is_some())
        })
        .await;
        assert_eq!(registry.applied_change().await, 5);
    }

    #[tokio::test]
    async fn the_follower_stops_when_the_last_handle_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(&dir.path().join("r.sqlite")).await;
        let registry = Registry::open_following(store.clone(), Duration::from_millis(20))
            .await
            .unwrap();
        assert_eq!(store.wake_listeners(), 1, "the follower listens");
        let clone = registry.clone();
        drop(registry);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.wake_listeners(), 1, "a handle is left");
        drop(clone);
        tokio::time::timeout(Duration::from_secs(5), async {
            while store.wake_listeners() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the follower ends with the registry");
    }
}
