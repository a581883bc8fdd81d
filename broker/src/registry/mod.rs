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
//! - [`credential`]: the one credential store (admin API, metrics, console, developer API).

#[cfg(test)]
mod conformance;
pub mod credential;
mod sqlite;
mod store;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::StreamExt;
use scopecast_protocol::ScopeSet;
use scopecast_protocol::admin::Role;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;

use credential::{Credential, CredentialSet, CredentialSource};
pub use sqlite::SqliteStore;
pub use store::{
    ApplicationPatch, Change, ChangeKind, Deletion, NewApplication, RegistryStore, StoreError,
    Wakeups,
};
use validate::{ClientKey, InvalidInput, invalid};

use crate::auth::secret;
use crate::config::EnvironmentKind;

/// The public keys a client registered for `private_key_jwt`, as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientKeysSpec {
    /// None: the client authenticates with its secret only.
    None,
    /// An inline JWK Set (public keys only, validated).
    Jwks(Value),
    /// A JWK Set URL, fetched and cached.
    JwksUri(String),
}

/// A client ID as stored.
#[derive(Debug, Clone)]
pub struct StoredClient {
    /// The OAuth2 `client_id` (UUID v4).
    pub client_id: String,
    /// Which environment kind it is for.
    pub kind: EnvironmentKind,
    /// Whether an admin has activated it.
    pub active: bool,
    /// argon2id PHC hash of its secret.
    pub secret_hash: Option<String>,
    /// Its public keys.
    pub keys: ClientKeysSpec,
    /// May the HTTP APIs identify it by the `Scopecast-Client-Id` header instead of a token.
    pub client_id_header: bool,
    /// Creation time, Unix ms.
    pub created_at_ms: i64,
    /// Last change, Unix ms.
    pub updated_at_ms: i64,
}

/// An application as stored.
#[derive(Debug, Clone)]
pub struct StoredApplication {
    /// Its id (UUID v4).
    pub id: String,
    /// Display name, unique.
    pub name: String,
    /// The vendor (developer).
    pub vendor: String,
    /// Free text.
    pub description: String,
    /// The scope ceiling, canonical string.
    pub scope: String,
    /// Creation time, Unix ms.
    pub created_at_ms: i64,
    /// Last change, Unix ms.
    pub updated_at_ms: i64,
    /// Its client IDs: one production, one non-production.
    pub clients: Vec<StoredClient>,
}

/// A client's verified public keys, ready for signature checks.
#[derive(Debug, Clone)]
pub enum ClientKeys {
    /// No keys registered.
    None,
    /// Inline keys, parsed once when loaded.
    Inline(Arc<Vec<ClientKey>>),
    /// A JWK Set URL; keys are fetched and cached by the authorization server.
    Uri(String),
}

/// A client ID as the hot path sees it.
#[derive(Debug, Clone)]
pub struct ClientEntry {
    /// The OAuth2 `client_id`.
    pub client_id: String,
    /// Its application's id.
    pub application_id: String,
    /// Its environment kind.
    pub kind: EnvironmentKind,
    /// Whether it is active.
    pub active: bool,
    /// Its application's current scope ceiling.
    pub ceiling: Arc<ScopeSet>,
    /// argon2id hash of its secret, if it has one.
    pub secret_hash: Option<String>,
    /// Its public keys.
    pub keys: ClientKeys,
    /// May the HTTP APIs identify it by the `Scopecast-Client-Id` header instead of a token.
    pub client_id_header: bool,
}

/// An application as the admin API shows it (never with secret hashes).
#[derive(Debug, Clone)]
pub struct Application {
    /// The stored record.
    pub record: StoredApplication,
    /// Its parsed scope ceiling.
    pub ceiling: Arc<ScopeSet>,
}

/// The registry's state at one instant, shared read-only by every reader.
#[derive(Debug, Default)]
pub struct Snapshot {
    applications: HashMap<String, Arc<Application>>,
    clients: HashMap<String, Arc<ClientEntry>>,
}

impl Snapshot {
    fn build(apps: Vec<StoredApplication>) -> Snapshot {
        let mut snap = Snapshot::default();
        for app in apps {
            // Stored scopes were validated on the way in, and are read back with the token
            // parser: a ceiling saved before the scope families were closed may hold a foreign
            // token, kept and granting nothing. A row edited by hand that no longer parses
            // grants nothing rather than stopping the broker.
            let ceiling = Arc::new(ScopeSet::parse(&app.scope).unwrap_or_else(|e| {
                tracing::error!(application_id = %app.id, error = %e, "stored scope ceiling does not parse; granting nothing");
                ScopeSet::default()
            }));
            for c in &app.clients {
                let keys = match &c.keys {
                    ClientKeysSpec::None => ClientKeys::None,
                    ClientKeysSpec::JwksUri(u) => ClientKeys::Uri(u.clone()),
                    ClientKeysSpec::Jwks(v) => match validate::jwk_set(v) {
                        Ok(keys) => ClientKeys::Inline(Arc::new(keys)),
                        Err(e) => {
                            tracing::error!(client_id = %c.client_id, error = %e, "stored JWK Set is invalid; ignoring it");
                            ClientKeys::None
                        }
                    },
                };
                snap.clients.insert(
                    c.client_id.clone(),
                    Arc::new(ClientEntry {
                        client_id: c.client_id.clone(),
                        application_id: app.id.clone(),
                        kind: c.kind,
                        active: c.active,
                        ceiling: ceiling.clone(),
                        secret_hash: c.secret_hash.clone(),
                        keys,
                        client_id_header: c.client_id_header,
                    }),
                );
            }
            snap.applications.insert(
                app.id.clone(),
                Arc::new(Application {
                    record: app,
                    ceiling,
                }),
            );
        }
        snap
    }

    /// This snapshot with the application `id` replaced by `app` (removed when `None`), its
    /// client IDs with it.
    fn with_application(&self, id: &str, app: Option<StoredApplication>) -> Snapshot {
        let mut applications = self.applications.clone();
        let mut clients = self.clients.clone();
        if let Some(old) = applications.remove(id) {
            for c in &old.record.clients {
                clients.remove(&c.client_id);
            }
        }
        if let Some(app) = app {
            let part = Snapshot::build(vec![app]);
            applications.extend(part.applications);
            clients.extend(part.clients);
        }
        Snapshot {
            applications,
            clients,
        }
    }

    /// A client by `client_id`.
    pub fn client(&self, client_id: &str) -> Option<&Arc<ClientEntry>> {
        self.clients.get(client_id)
    }

    /// An application by id.
    pub fn application(&self, id: &str) -> Option<&Arc<Application>> {
        self.applications.get(id)
    }

    /// Every application, sorted by name.
    pub fn applications(&self) -> Vec<Arc<Application>> {
        let mut v: Vec<_> = self.applications.values().cloned().collect();
        v.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        v
    }
}

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

impl Inner {
    /// Applies every change after the cursor, in id order, each once; see [`Inner::apply`].
    /// On a storage failure the cursor stays after the last change applied, and the next call
    /// goes on from there.
    async fn catch_up(&self) -> Result<(), RegistryError> {
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
    async fn apply(&self, change: &Change) -> Result<(), RegistryError> {
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
            ChangeKind::CeilingChanged => {
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

    async fn reload_credentials(&self) -> Result<(), RegistryError> {
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
async fn follow(inner: Weak<Inner>, stop: CancellationToken, mut wakeups: Wakeups, poll: Duration) {
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

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn audit(
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
        detail,
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
            }),
        };
        tokio::spawn(follow(
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
            let client_secret =
                secret::new_secret().map_err(|e| RegistryError::Internal(e.to_string()))?;
            let secret_hash = hash(client_secret.clone()).await?;
            clients.push(StoredClient {
                client_id: client_id.clone(),
                kind,
                active: false,
                secret_hash: Some(secret_hash),
                keys: ClientKeysSpec::None,
                client_id_header: false,
                created_at_ms: now,
                updated_at_ms: now,
            });
            secrets.push(IssuedSecret {
                client_id,
                kind,
                client_secret,
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
            clients,
        };
        let entry = audit(
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
        let id = validate::uuid_id("id", id)?;
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
        let entry = audit(
            actor,
            "application.update",
            Some(&id),
            None,
            Value::Object(detail),
        );
        let _guard = self.inner.writes.lock().await;
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
        let entry = audit(
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
        let entry = audit(
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
        let client = self.existing_client(client_id)?;
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
                let u = validate::jwks_uri(&u)?;
                (
                    ClientKeysSpec::JwksUri(u.clone()),
                    serde_json::json!({"jwks_uri": u}),
                )
            }
        };
        let entry = audit(
            actor,
            "client.set_keys",
            Some(&client.application_id),
            Some(&client.client_id),
            detail,
        );
        let _guard = self.inner.writes.lock().await;
        self.inner
            .store
            .set_keys(&client.client_id, &keys, now_ms(), &entry)
            .await?;
        self.catch_up().await
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
        let action = if active {
            "client.activate"
        } else {
            "client.deactivate"
        };
        let entry = audit(
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
        let entry = audit(actor, action, None, None, detail);
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
        let entry = audit(
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

    /// The valid credential whose bearer token is `token` (from the store, or the configured
    /// `admin_token`).
    pub fn authenticate(&self, token: &str) -> Option<Arc<Credential>> {
        self.inner.credentials.load().authenticate(token)
    }

    /// Every credential at this instant.
    pub fn credentials(&self) -> Arc<CredentialSet> {
        self.inner.credentials.load_full()
    }

    /// Makes the `admin_token` setting a valid admin credential named `admin (config)`, kept in
    /// memory only.
    ///
    /// # Errors
    /// A storage failure while reloading the store's credentials.
    pub async fn set_config_credential(&self, token: &str) -> Result<(), RegistryError> {
        self.inner
            .config_credential
            .store(Some(Arc::new(Credential {
                id: "config".to_owned(),
                name: "admin (config)".to_owned(),
                role: Role::Admin,
                token_hash: credential::token_hash(token),
                created_at_ms: now_ms(),
                created_by: "config".to_owned(),
                revoked_at_ms: None,
                revoked_by: None,
                source: CredentialSource::Config,
            })));
        // Under the feed's cursor, so that a credential change applied meanwhile cannot put
        // back a set read before this one.
        let _cursor = self.inner.cursor.lock().await;
        self.inner.reload_credentials().await
    }

    /// Stores `token` as the admin credential named `admin` unless the store already knows it
    /// (valid or revoked): the first start's `admin.token`, and the upgrade of a data folder
    /// made before the credential store existed. True when it was added.
    ///
    /// # Errors
    /// [`RegistryError::Conflict`] when a valid credential is already named `admin`, or a
    /// storage failure.
    pub async fn bootstrap_admin(&self, token: &str) -> Result<bool, RegistryError> {
        let hash = credential::token_hash(token);
        let _guard = self.inner.writes.lock().await;
        if self
            .inner
            .store
            .load_credentials()
            .await?
            .iter()
            .any(|c| c.token_hash == hash)
        {
            return Ok(false);
        }
        let c = Credential {
            id: uuid::Uuid::new_v4().to_string(),
            name: "admin".to_owned(),
            role: Role::Admin,
            token_hash: hash,
            created_at_ms: now_ms(),
            created_by: "bootstrap".to_owned(),
            revoked_at_ms: None,
            revoked_by: None,
            source: CredentialSource::Store,
        };
        let entry = audit(
            "bootstrap",
            "credential.create",
            None,
            None,
            serde_json::json!({"credential_id": c.id, "name": c.name, "role": c.role.as_str()}),
        );
        self.inner.store.insert_credential(&c, &entry).await?;
        self.catch_up().await?;
        Ok(true)
    }

    /// Makes a credential named `name` with `role`; returns it and its token, which is shown
    /// this once (only its SHA-256 is stored).
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] for a bad name, [`RegistryError::Conflict`] when a valid
    /// credential has that name, or a storage failure.
    pub async fn create_credential(
        &self,
        name: &str,
        role: Role,
        actor: &str,
    ) -> Result<(Arc<Credential>, String), RegistryError> {
        let name = validate::name("name", name)?;
        let token = format!(
            "{}{}",
            credential::TOKEN_PREFIX,
            secret::random_token(secret::SECRET_BYTES)
                .map_err(|e| RegistryError::Internal(e.to_string()))?
        );
        let c = Credential {
            id: uuid::Uuid::new_v4().to_string(),
            name,
            role,
            token_hash: credential::token_hash(&token),
            created_at_ms: now_ms(),
            created_by: actor.to_owned(),
            revoked_at_ms: None,
            revoked_by: None,
            source: CredentialSource::Store,
        };
        let entry = audit(
            actor,
            "credential.create",
            None,
            None,
            serde_json::json!({"credential_id": c.id, "name": c.name, "role": c.role.as_str()}),
        );
        let _guard = self.inner.writes.lock().await;
        self.inner.store.insert_credential(&c, &entry).await?;
        self.catch_up().await?;
        let stored = self
            .credentials()
            .find(&c.id)
            .ok_or_else(|| RegistryError::Internal("created credential vanished".into()))?;
        Ok((stored, token))
    }

    /// Revokes the valid credential named (or with id) `name_or_id`; it stops working at once.
    /// The last valid admin credential of the store cannot be revoked (nobody could make
    /// another), nor the configured one.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`], [`RegistryError::Conflict`] for the last admin or a
    /// configured credential, or a storage failure.
    pub async fn revoke_credential(
        &self,
        name_or_id: &str,
        actor: &str,
    ) -> Result<Arc<Credential>, RegistryError> {
        let _guard = self.inner.writes.lock().await;
        let set = self.credentials();
        let c = set
            .find(name_or_id)
            .filter(|c| c.is_valid())
            .ok_or_else(|| RegistryError::NotFound {
                what: "credential",
                id: name_or_id.to_owned(),
            })?;
        if c.source == CredentialSource::Config {
            return Err(RegistryError::Conflict(
                "this credential is the broker's admin_token setting: remove it from the configuration".into(),
            ));
        }
        let store_admins = set
            .all()
            .iter()
            .filter(|x| {
                x.is_valid() && x.role == Role::Admin && x.source == CredentialSource::Store
            })
            .count();
        if c.role == Role::Admin && store_admins <= 1 {
            return Err(RegistryError::Conflict(format!(
                "{:?} is the last admin credential: create another admin credential first",
                c.name
            )));
        }
        let entry = audit(
            actor,
            "credential.revoke",
            None,
            None,
            serde_json::json!({"credential_id": c.id, "name": c.name, "role": c.role.as_str()}),
        );
        if !self
            .inner
            .store
            .revoke_credential(&c.id, now_ms(), actor, &entry)
            .await?
        {
            return Err(RegistryError::NotFound {
                what: "credential",
                id: name_or_id.to_owned(),
            });
        }
        self.catch_up().await?;
        self.credentials()
            .find(&c.id)
            .ok_or_else(|| RegistryError::Internal("revoked credential vanished".into()))
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
