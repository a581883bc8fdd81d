//! The registry's in-memory view, read on the hot path without touching the database:
//! applications as stored, client entries with their parsed ceilings and keys, and the
//! [`Snapshot`] that indexes them by id and client ID.

use super::*;

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
    /// This environment's grant, canonical string: set when the client ID is first activated
    /// here (to the record's scope then), narrowed by `set-scope`, widened by `approve`.
    /// `None`: never activated here; the record's scope applies.
    pub granted_scope: Option<String>,
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
    /// The record's version, from 1: every change makes the next one.
    pub version: u64,
    /// `None`: registered here. Imported: the `kid` of the catalog key that signed it.
    pub origin: Option<String>,
    /// The signed record as imported (exported again unchanged); `None` for a local record.
    pub record_jws: Option<String>,
    /// When it was retired, Unix ms: its client IDs cannot be activated any more.
    pub retired_at_ms: Option<i64>,
    /// The developer account (a `developer` credential's name) that registered it; `None`
    /// when an admin did.
    pub owner: Option<String>,
    /// True when the current version is frozen ("ready for production"); false while it is a
    /// developer's draft.
    pub frozen: bool,
    /// The claims of the newest frozen version (an `ApplicationRecord` as JSON, without `iss`
    /// and `iat`): what the catalog signs and hands out. `None` before the first freeze.
    pub frozen_record: Option<String>,
    /// Its client IDs: one production, one non-production.
    pub clients: Vec<StoredClient>,
}

/// A client's effective scope here (its record's `ceiling` intersected with its grant; the
/// ceiling itself before a grant) and the record's scopes the grant does not include yet.
pub fn effective_scope(
    ceiling: &Arc<ScopeSet>,
    client: &StoredClient,
) -> (Arc<ScopeSet>, Arc<ScopeSet>) {
    match &client.granted_scope {
        None => (ceiling.clone(), Arc::new(ScopeSet::default())),
        Some(g) => {
            let grant = ScopeSet::parse(g).unwrap_or_else(|e| {
                tracing::error!(client_id = %client.client_id, error = %e, "stored grant does not parse; granting nothing");
                ScopeSet::default()
            });
            (
                Arc::new(ceiling.intersection(&grant)),
                Arc::new(ceiling.not_covered_by(&grant)),
            )
        }
    }
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
    /// Its effective scope: its application's current scope ceiling intersected with this
    /// environment's grant ([`ScopeSet::intersection`]); the ceiling alone before the first
    /// activation.
    pub ceiling: Arc<ScopeSet>,
    /// The record's scopes this environment's grant does not include yet (waiting for an
    /// admin's approval); empty when nothing waits.
    pub pending: Arc<ScopeSet>,
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
    pub(super) fn build(apps: Vec<StoredApplication>) -> Snapshot {
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
                let (effective, pending) = effective_scope(&ceiling, c);
                snap.clients.insert(
                    c.client_id.clone(),
                    Arc::new(ClientEntry {
                        client_id: c.client_id.clone(),
                        application_id: app.id.clone(),
                        kind: c.kind,
                        active: c.active,
                        ceiling: effective,
                        pending,
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
    pub(super) fn with_application(&self, id: &str, app: Option<StoredApplication>) -> Snapshot {
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
